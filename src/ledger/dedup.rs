//! Idempotency: the first result of each key, kept for a window.
//!
//! A request that moves money carries a client-chosen key. The first accepted
//! request under a key is recorded with its fingerprint and reply; the same
//! key with the same request gets that reply again, whatever happened since;
//! the same key with a different request is `idempotency_conflict`. Records
//! older than the window are pruned by the time argument.
//!
//! This table is what is resident: the shell keeps it bounded (`evict`
//! the oldest once they are durable) and puts back a record it found on disk
//! (`remember`) before a request with that key runs.
//!
//! Refusals are not recorded: a refused request changed nothing, so running
//! it again is safe, and not writing them keeps a flood of refused requests
//! (an account out of credit) off the journal. A key whose request was refused
//! may therefore succeed later, for example after a purchase.

use std::collections::hash_map::{Entry, VacantEntry};
use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::hash::SeededState;
use super::id::IdemKey;
use super::reason::Reason;
use super::reply::Reply;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupRecord {
    pub fingerprint: u64,
    pub at_ms: u64,
    pub reply: Reply,
}

/// One account's idempotency records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dedup {
    /// Keyed with the stable hash (fast on short keys), seeded so that keys
    /// crafted to collide on one process do not collide on another.
    records: HashMap<IdemKey, DedupRecord, SeededState>,
    /// Keys in the order they were recorded, for pruning.
    order: VecDeque<(u64, IdemKey)>,
}

impl Dedup {
    /// An empty table whose hash is seeded with `seed` (the shell passes a
    /// per-process random number; `Default` uses 0).
    pub fn with_seed(seed: u64) -> Dedup {
        Dedup { records: HashMap::with_hasher(SeededState(seed)), order: VecDeque::new() }
    }

    /// What a request with this key and fingerprint gets without running —
    /// the recorded reply or a conflict — or, for a new key, the place to
    /// record its first result (one hash and probe for both).
    pub fn lookup(&mut self, key: &IdemKey, fingerprint: u64) -> Lookup<'_> {
        let Dedup { records, order } = self;
        match records.entry(key.clone()) {
            Entry::Occupied(seen) => Lookup::Seen(if seen.get().fingerprint == fingerprint {
                Ok(seen.get().reply.clone())
            } else {
                Err(Reason::IdempotencyConflict)
            }),
            Entry::Vacant(entry) => Lookup::New(NewKey { entry, order }),
        }
    }

    /// A table rebuilt from stored records, given oldest first.
    pub fn restore(seed: u64, records: impl IntoIterator<Item = (IdemKey, DedupRecord)>) -> Dedup {
        let mut dedup = Dedup::with_seed(seed);
        for (key, record) in records {
            dedup.order.push_back((record.at_ms, key.clone()));
            dedup.records.insert(key, record);
        }
        dedup
    }

    pub fn get(&self, key: &IdemKey) -> Option<&DedupRecord> {
        self.records.get(key)
    }

    /// Forgets records at or past the window (the store keeps its own copy
    /// and stops answering with it at the same age). Keys arrive in time
    /// order per account, so this looks at the front only.
    pub fn prune(&mut self, now_ms: u64, window_ms: u64) {
        while let Some((at_ms, _)) = self.order.front() {
            if at_ms.saturating_add(window_ms) > now_ms {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.records.remove(&key);
            }
        }
    }

    /// Forgets the oldest record and returns its key (the store holds it).
    pub fn evict_oldest(&mut self) -> Option<IdemKey> {
        let (_, key) = self.order.pop_front()?;
        self.records.remove(&key);
        Some(key)
    }

    /// Puts back a record read from the store, as the oldest (it is: only
    /// evicted records are read back), so it is the first evicted again.
    pub fn remember(&mut self, key: IdemKey, record: DedupRecord) {
        if self.records.contains_key(&key) {
            return;
        }
        self.order.push_front((record.at_ms, key.clone()));
        self.records.insert(key, record);
    }

    pub fn contains(&self, key: &IdemKey) -> bool {
        self.records.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records, oldest first: what a store persists and reloads.
    pub fn iter(&self) -> impl Iterator<Item = (&IdemKey, &DedupRecord)> {
        self.order.iter().filter_map(|(_, k)| self.records.get_key_value(k))
    }
}

pub enum Lookup<'a> {
    /// The key was used before: its first result, or a conflict.
    Seen(Result<Reply, Reason>),
    /// A new key; record the request's result here if it is accepted.
    New(NewKey<'a>),
}

pub struct NewKey<'a> {
    entry: VacantEntry<'a, IdemKey, DedupRecord>,
    order: &'a mut VecDeque<(u64, IdemKey)>,
}

impl NewKey<'_> {
    pub fn record(self, record: DedupRecord) {
        self.order.push_back((record.at_ms, self.entry.key().clone()));
        self.entry.insert(record);
    }
}
