//! The checkpointer: state written behind the log.
//!
//! A checkpoint takes the tail's `active` generation (every account written
//! since the last checkpoint) and writes each account's snapshot, its new
//! journal records as pages, its new idempotency records one key each
//! (the compaction filter drops them past the window) — in writes of a
//! bounded size, so that
//! group writes interleave — and then, in a last write, for every shard the
//! newest lsn covered with the deletion of that shard's log entries up to
//! it. After a crash either the log is gone and the tables hold everything
//! it held, or the log is still there and the tables hold the state before
//! it or part of the way after it: `rebuild` skips the records the tables
//! already hold, so nothing is applied twice. No write is synced on its
//! own: RocksDB's WAL is one sequence, so the next synced group makes every
//! earlier write durable first.
//!
//! `rebuild` is the way back from the log: at open (and after a storage
//! failure) it folds every log entry still present into the snapshot in
//! tables with the same `AccountState::replay` live operation uses,
//! skipping records the tables already hold, and makes that the tail.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::{
    CF_ACCOUNTS, CF_DEDUP, CF_JOURNAL, CF_LOG, CF_META, Inner, StoreError, account_key, be_u64, checkpoint_key,
    corrupt, dedup_key, io, journal_key, lock,
};
use crate::codec::{self, Stored, StoredRef};
use crate::ledger::hash::SeededState;
use crate::ledger::{AccountId, AccountState, DedupRecord, EventRecord, IdemKey};
use crate::store::tail::{DedupMap, Dirty, Generation, Tail};

/// One account's records and idempotency records as the log holds them.
type Logged = (Vec<EventRecord>, DedupMap);

/// Puts per checkpoint write before the last: a checkpoint of 100k
/// accounts is ~300k puts, and one write of them all would hold every
/// group write behind it for a few hundred milliseconds.
const CHECKPOINT_CHUNK_OPS: usize = 8_192;

/// Records per journal page.
pub const HISTORY_PAGE_RECORDS: usize = 256;

impl Inner {
    /// The checkpointer thread: a checkpoint when the tail reaches half its
    /// bound, or every `checkpoint_interval_ms` while anything is dirty.
    pub(super) fn run_checkpointer(self: Arc<Self>) {
        let interval = Duration::from_millis(self.opts.checkpoint_interval_ms);
        let half = self.opts.checkpoint_log_bytes_max / 2;
        // A tail rebuilt at open is checkpointed at once: a node that
        // restarts often (a crash loop) must not replay a longer log at
        // every start.
        let mut last = match self.opts.checkpoint_on_open {
            true => Instant::now().checked_sub(interval).unwrap_or_else(Instant::now),
            false => Instant::now(),
        };
        loop {
            {
                let mut tail = lock(&self.tail);
                loop {
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let dirty = !tail.active.is_empty() || tail.pending.is_some();
                    if tail.active_bytes >= half || tail.pending.is_some() || dirty && last.elapsed() >= interval {
                        break;
                    }
                    let wait = interval.saturating_sub(last.elapsed()).max(Duration::from_millis(1));
                    tail = self.tail_changed.wait_timeout(tail, wait).unwrap_or_else(|e| e.into_inner()).0;
                    if !dirty && last.elapsed() >= interval {
                        last = Instant::now();
                    }
                }
            }
            let failed = self.checkpoint().is_err();
            last = Instant::now();
            if failed {
                // The failure is kept in the tail; try again a little later.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Writes the pending generation (or, if none, the active one) to
    /// tables and drops the log entries it covers.
    pub(super) fn checkpoint(&self) -> Result<(), StoreError> {
        let _one = lock(&self.checkpoints);
        let Some((generation, covered)) = lock(&self.tail).start_checkpoint() else {
            return Ok(());
        };
        let result = self.write_checkpoint(&generation, &covered);
        let mut tail = lock(&self.tail);
        match &result {
            Ok(()) => tail.finish_checkpoint(),
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed; the log keeps everything, retrying");
                tail.failure = Some(e.to_string());
            }
        }
        drop(tail);
        self.tail_changed.notify_all();
        result
    }

    fn write_checkpoint(&self, generation: &Generation, covered: &HashMap<u32, u64>) -> Result<(), StoreError> {
        let (accounts, journal, dedup, log, meta) =
            (self.cf(CF_ACCOUNTS)?, self.cf(CF_JOURNAL)?, self.cf(CF_DEDUP)?, self.cf(CF_LOG)?, self.cf(CF_META)?);
        let mut batch = WriteBatch::default();
        let mut buf = Vec::new();
        // In key order: RocksDB's memtable skip list inserts a key next to
        // the one before it for almost nothing, a random one costs a search
        // through cold memory (the largest cost of a checkpoint unsorted).
        let mut accounts_in_order: Vec<(u32, &AccountId, &Dirty)> =
            generation.iter().map(|(id, dirty)| (self.shard_of(id), id, dirty)).collect();
        accounts_in_order.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut keys: Vec<(&IdemKey, &DedupRecord)> = Vec::new();
        for (shard, id, dirty) in accounts_in_order {
            codec::encode_into(&StoredRef::Snapshot(&dirty.snapshot), &mut buf);
            batch.put_cf(accounts, account_key(shard, id), &buf[..]);
            for page in dirty.records.chunks(HISTORY_PAGE_RECORDS) {
                codec::encode_into(&StoredRef::History(page), &mut buf);
                batch.put_cf(journal, journal_key(shard, id, page[0].seq), &buf[..]);
            }
            keys.clear();
            keys.extend(dirty.dedup.iter());
            keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for &(key, record) in &keys {
                codec::encode_into(&StoredRef::Dedup(key, record), &mut buf);
                batch.put_cf(dedup, dedup_key(shard, id, key), &buf[..]);
            }
            // State goes in chunks, so a group write never waits behind one
            // huge write; only the last write, below, drops the log.
            if batch.len() >= CHECKPOINT_CHUNK_OPS {
                self.db.write(std::mem::take(&mut batch)).map_err(io)?;
            }
        }
        batch.put_cf(meta, b"dedup_newest", self.dedup_newest_ms.load(Ordering::Relaxed).to_be_bytes());
        for (&shard, &lsn) in covered {
            batch.put_cf(meta, checkpoint_key(shard), lsn.to_be_bytes());
            batch.delete_range_cf(log, super::log_key(shard, 0), super::log_key(shard, lsn + 1));
        }
        self.db.write(batch).map_err(io)
    }

    /// Makes the tail what the log holds: every entry folded over the
    /// snapshot in tables. Sets each shard's next lsn past everything used.
    pub(super) fn rebuild(&self) -> Result<(), StoreError> {
        let one = lock(&self.checkpoints);
        let mut writer = lock(&self.writer);
        let meta = self.cf(CF_META)?;
        let mut lsn: HashMap<u32, u64> = HashMap::new();
        for item in self.db.iterator_cf(meta, IteratorMode::From(b"ckpt", Direction::Forward)) {
            let (key, value) = item.map_err(io)?;
            if !key.starts_with(b"ckpt") {
                break;
            }
            let shard =
                u32::from_be_bytes(key[4..].try_into().map_err(|_| corrupt("a checkpoint key is not 8 bytes"))?);
            lsn.insert(shard, be_u64(&value)?);
        }
        // What the log holds, per account, in log order.
        let mut logged: HashMap<AccountId, Logged> = HashMap::new();
        let mut tail = Tail::with_seed(self.seed);
        for item in self.db.iterator_cf(self.cf(CF_LOG)?, IteratorMode::Start) {
            let (key, value) = item.map_err(io)?;
            if key.len() != 12 {
                return Err(corrupt("a log key is not 12 bytes"));
            }
            let shard = u32::from_be_bytes(key[..4].try_into().map_err(corrupt)?);
            let entry = u64::from_be_bytes(key[4..].try_into().map_err(corrupt)?);
            let Stored::Log(items) = codec::decode(&value).map_err(corrupt)? else {
                return Err(corrupt(format!("log entry {shard}/{entry} holds something else")));
            };
            for item in items {
                let (records, dedup) = logged
                    .entry(item.id)
                    .or_insert_with(|| (Vec::new(), DedupMap::with_hasher(SeededState(self.seed))));
                records.extend(item.records);
                dedup.extend(item.dedup);
            }
            let used = lsn.entry(shard).or_default();
            *used = (*used).max(entry);
            tail.active_lsn.insert(shard, entry);
            tail.active_bytes += value.len() as u64;
        }
        // In key order: each account's checkpointed snapshot is read once,
        // and in this order the reads walk the tables forward instead of
        // jumping about them (a restart reads one per account in the tail).
        let mut logged: Vec<(AccountId, Logged)> = logged.into_iter().collect();
        logged.sort_by_cached_key(|(id, _)| super::account_key(self.shard_of(id), id));
        for (id, (mut records, dedup)) in logged {
            // An account's entries are in its shard, in log order; sorting
            // by sequence costs nothing then and is what replay needs.
            records.sort_by_key(|r| r.seq);
            records.dedup_by_key(|r| r.seq);
            let mut state = self.load_snapshot(&id)?;
            let held = state.as_ref().map_or(1, |s| s.next_seq);
            records.retain(|r| r.seq >= held);
            for record in &records {
                let folded = match state.as_mut() {
                    Some(s) => s.replay(record),
                    None => AccountState::open(id.clone(), record).map(|s| state = Some(s)),
                };
                folded.map_err(|e| corrupt(format!("account {id}: the log does not replay: {e}")))?;
            }
            let Some(state) = state else {
                if records.is_empty() {
                    continue;
                }
                return Err(corrupt(format!("account {id}: the log holds records of an account never opened")));
            };
            state.check_invariants().map_err(|e| corrupt(format!("account {id} after its log: {e}")))?;
            tail.active.insert(id, Dirty { snapshot: Arc::new(state), records, dedup });
        }
        writer.lsn = lsn;
        *lock(&self.tail) = tail;
        drop(writer);
        drop(one);
        self.tail_changed.notify_all();
        Ok(())
    }
}
