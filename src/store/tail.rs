//! The log tail in memory: what groups wrote since the last checkpoint.
//!
//! A store that logs groups and checkpoints state behind them (see
//! `rocks/`) must still answer reads with everything written: the tail
//! holds, per account written since the last checkpoint, the newest
//! snapshot, the journal records and the idempotency records not yet in
//! tables. It has two generations: `active`, which groups merge into, and
//! `pending`, which a checkpoint is writing to tables. A read looks in the
//! tail first, then in the tables; a checkpoint drops `pending` only after
//! its write has landed, so a read never misses what was written.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ledger::hash::SeededState;
use crate::ledger::{AccountId, AccountState, DedupRecord, EventRecord, IdemKey};

use super::AccountWrite;

/// One account's writes since the last checkpoint.
#[derive(Clone, Debug)]
pub struct Dirty {
    /// The state after the newest record.
    pub snapshot: Arc<AccountState>,
    /// Journal records not yet in tables, in order.
    pub records: Vec<EventRecord>,
    /// Idempotency records not yet in tables, by key (a lookup of an
    /// evicted key comes here first).
    pub dedup: DedupMap,
}

pub type DedupMap = HashMap<IdemKey, DedupRecord, SeededState>;

/// Keyed with the stable hash (several times faster than SipHash on short
/// ids), seeded per store.
pub type Generation = HashMap<AccountId, Dirty, SeededState>;

#[derive(Default)]
pub struct Tail {
    pub active: Generation,
    /// Log bytes behind `active`, and per shard the newest log sequence
    /// number merged into it.
    pub active_bytes: u64,
    pub active_lsn: HashMap<u32, u64>,
    /// The generation a checkpoint is writing, with what it covers.
    pub pending: Option<Arc<Generation>>,
    pub pending_bytes: u64,
    pub pending_lsn: HashMap<u32, u64>,
    /// Why the last checkpoint failed, until one succeeds.
    pub failure: Option<String>,
}

impl Tail {
    /// An empty tail whose maps hash with `seed`.
    pub fn with_seed(seed: u64) -> Tail {
        Tail { active: Generation::with_hasher(SeededState(seed)), ..Tail::default() }
    }

    /// Merges one account's write (its log entry has landed), keeping its
    /// records.
    pub fn merge(&mut self, w: AccountWrite) {
        let hasher = *self.active.hasher();
        match self.active.get_mut(&w.id) {
            Some(dirty) => {
                dirty.snapshot = w.snapshot;
                dirty.records.extend(w.records);
                dirty.dedup.extend(w.dedup);
            }
            None => {
                let mut dedup = DedupMap::with_hasher(hasher);
                dedup.extend(w.dedup);
                self.active.insert(w.id, Dirty { snapshot: w.snapshot, records: w.records, dedup });
            }
        }
    }

    /// Log bytes not yet covered by a durable checkpoint.
    pub fn bytes(&self) -> u64 {
        self.active_bytes + self.pending_bytes
    }

    /// Moves `active` to `pending` for a checkpoint; `None` if a checkpoint
    /// is already pending (it is retried first) or there is nothing to write.
    pub fn start_checkpoint(&mut self) -> Option<(Arc<Generation>, HashMap<u32, u64>)> {
        if let Some(pending) = &self.pending {
            return Some((Arc::clone(pending), self.pending_lsn.clone()));
        }
        if self.active.is_empty() && self.active_lsn.is_empty() {
            return None;
        }
        let fresh = Generation::with_hasher(*self.active.hasher());
        let generation = Arc::new(std::mem::replace(&mut self.active, fresh));
        self.pending = Some(Arc::clone(&generation));
        self.pending_bytes = std::mem::take(&mut self.active_bytes);
        self.pending_lsn = std::mem::take(&mut self.active_lsn);
        Some((generation, self.pending_lsn.clone()))
    }

    /// The pending checkpoint landed: its accounts are read from tables.
    pub fn finish_checkpoint(&mut self) {
        self.pending = None;
        self.pending_bytes = 0;
        self.pending_lsn.clear();
        self.failure = None;
    }

    /// The account's newest snapshot in the tail, if it was written since
    /// the last checkpoint.
    pub fn snapshot(&self, id: &AccountId) -> Option<Arc<AccountState>> {
        self.newest_first().find_map(|generation| generation.get(id)).map(|d| Arc::clone(&d.snapshot))
    }

    /// The generations, `active` (the newest) first.
    fn newest_first(&self) -> impl Iterator<Item = &Generation> {
        [Some(&self.active), self.pending.as_deref()].into_iter().flatten()
    }

    /// The account's idempotency record for `key` in the tail (the newest
    /// generation first).
    pub fn dedup(&self, id: &AccountId, key: &IdemKey) -> Option<DedupRecord> {
        self.newest_first().find_map(|generation| generation.get(id)?.dedup.get(key).cloned())
    }

    /// The account's largest idempotency key in the tail.
    pub fn dedup_max(&self, id: &AccountId) -> Option<IdemKey> {
        self.newest_first().filter_map(|generation| generation.get(id)?.dedup.keys().max()).max().cloned()
    }

    /// The account's idempotency records in the tail, older generation
    /// first.
    pub fn dedup_all(&self, id: &AccountId) -> Vec<(IdemKey, DedupRecord)> {
        let generations = self.pending.iter().map(|p| p.as_ref()).chain([&self.active]);
        generations
            .filter_map(|g| g.get(id))
            .flat_map(|d| d.dedup.iter().map(|(k, r)| (k.clone(), r.clone())))
            .collect()
    }

    /// Every account in the tail that `keep` picks.
    pub fn accounts(&self, mut keep: impl FnMut(&AccountId) -> bool) -> Vec<AccountId> {
        self.newest_first().flat_map(|g| g.keys()).filter(|id| keep(id)).cloned().collect()
    }

    /// The account's journal records in the tail after `after_seq`, at most
    /// `limit`, oldest first.
    pub fn history(&self, id: &AccountId, after_seq: u64, limit: usize) -> Vec<EventRecord> {
        let mut out = Vec::new();
        for generation in self.pending.iter().map(|p| p.as_ref()).chain([&self.active]) {
            if let Some(dirty) = generation.get(id) {
                let room = limit.saturating_sub(out.len());
                out.extend(dirty.records.iter().filter(|r| r.seq > after_seq).take(room).cloned());
            }
        }
        out
    }
}
