//! The checkpointer: state written behind the log.
//!
//! A checkpoint takes the tail's `active` generation (every account written
//! since the last checkpoint) and writes each account's snapshot, its new
//! journal records as pages, its new idempotency records as a page
//! (deleting pages past the window) — in writes of a bounded size, so that
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
    CF_ACCOUNTS, CF_DEDUP, CF_JOURNAL, CF_LOG, CF_META, Inner, StoreError, account_prefix, be_u64, checkpoint_key,
    corrupt, dedup_key, io, journal_key, lock,
};
use crate::codec::{self, Stored, StoredRef};
use crate::ledger::{AccountId, AccountState, DedupRecord, EventRecord, IdemKey};
use crate::store::tail::{Dirty, Generation, Tail};

/// One account's records and idempotency records as the log holds them.
type Logged = (Vec<EventRecord>, Vec<(IdemKey, DedupRecord)>);

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
        let mut count = lock(&self.checkpoints);
        let Some((generation, covered)) = lock(&self.tail).start_checkpoint() else {
            return Ok(());
        };
        let result = self.write_checkpoint(&generation, &covered, *count + 1);
        let mut tail = lock(&self.tail);
        match &result {
            Ok(()) => {
                *count += 1;
                tail.finish_checkpoint();
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed; the log keeps everything, retrying");
                tail.failure = Some(e.to_string());
            }
        }
        drop(tail);
        self.tail_changed.notify_all();
        result
    }

    fn write_checkpoint(
        &self,
        generation: &Generation,
        covered: &HashMap<u32, u64>,
        number: u64,
    ) -> Result<(), StoreError> {
        let (accounts, journal, dedup, log, meta) =
            (self.cf(CF_ACCOUNTS)?, self.cf(CF_JOURNAL)?, self.cf(CF_DEDUP)?, self.cf(CF_LOG)?, self.cf(CF_META)?);
        let window = self.opts.idempotency_window_ms;
        let mut batch = WriteBatch::default();
        let mut buf = Vec::new();
        // In key order: RocksDB's memtable skip list inserts a key next to
        // the one before it for almost nothing, a random one costs a search
        // through cold memory (the largest cost of a checkpoint unsorted).
        let mut accounts_in_order: Vec<(&AccountId, &Dirty)> = generation.iter().collect();
        accounts_in_order.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (id, dirty) in accounts_in_order {
            codec::encode_into(&StoredRef::Snapshot(&dirty.snapshot), &mut buf);
            batch.put_cf(accounts, id.as_str(), &buf[..]);
            for page in dirty.records.chunks(HISTORY_PAGE_RECORDS) {
                codec::encode_into(&StoredRef::History(page), &mut buf);
                batch.put_cf(journal, journal_key(id, page[0].seq), &buf[..]);
            }
            if let Some(newest) = dirty.dedup.iter().map(|(_, d)| d.at_ms).max() {
                // Pages whose newest record left the window, on the
                // account's own clock, are deleted (the ledger forgets a
                // key once its age reaches the window).
                let live = |at_ms: u64| at_ms.saturating_add(window) > newest;
                let prefix = account_prefix(id);
                // An account younger than the window has no page past it:
                // no seek.
                let young = live(dirty.snapshot.opened_at_ms);
                let pages = if young {
                    None
                } else {
                    Some(self.db.iterator_cf(dedup, IteratorMode::From(&prefix, Direction::Forward)))
                };
                for item in pages.into_iter().flatten() {
                    let (key, _) = item.map_err(io)?;
                    if !key.starts_with(&prefix) || key.len() < prefix.len() + 8 {
                        break;
                    }
                    if live(be_u64(&key[prefix.len()..prefix.len() + 8])?) {
                        break;
                    }
                    batch.delete_cf(dedup, &key);
                }
                let page: Vec<(IdemKey, DedupRecord)> =
                    dirty.dedup.iter().filter(|(_, d)| live(d.at_ms)).cloned().collect();
                codec::encode_into(&StoredRef::DedupPage(&page), &mut buf);
                batch.put_cf(dedup, dedup_key(id, newest, number), &buf[..]);
            }
            // State goes in chunks, so a group write never waits behind one
            // huge write; only the last write, below, drops the log.
            if batch.len() >= CHECKPOINT_CHUNK_OPS {
                self.db.write(std::mem::take(&mut batch)).map_err(io)?;
            }
        }
        for (&shard, &lsn) in covered {
            batch.put_cf(meta, checkpoint_key(shard), lsn.to_be_bytes());
            batch.delete_range_cf(log, super::log_key(shard, 0), super::log_key(shard, lsn + 1));
        }
        batch.put_cf(meta, b"checkpoints", number.to_be_bytes());
        self.db.write(batch).map_err(io)
    }

    /// Makes the tail what the log holds: every entry folded over the
    /// snapshot in tables. Sets each shard's next lsn past everything used.
    pub(super) fn rebuild(&self) -> Result<(), StoreError> {
        let mut count = lock(&self.checkpoints);
        let mut writer = lock(&self.writer);
        let meta = self.cf(CF_META)?;
        *count = match self.db.get_cf(meta, b"checkpoints").map_err(io)? {
            Some(v) => be_u64(&v)?,
            None => 0,
        };
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
                let (records, dedup) = logged.entry(item.id).or_default();
                records.extend(item.records);
                dedup.extend(item.dedup);
            }
            let used = lsn.entry(shard).or_default();
            *used = (*used).max(entry);
            tail.active_lsn.insert(shard, entry);
            tail.active_bytes += value.len() as u64;
        }
        for (id, (mut records, dedup)) in logged {
            // An account's entries are in one shard unless `shards` changed
            // between runs: order by sequence, not by log position.
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
        drop(count);
        self.tail_changed.notify_all();
        Ok(())
    }
}
