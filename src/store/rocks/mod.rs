//! The store on RocksDB: one database per node, a column family per kind of
//! record, every value in the versioned codec (`crate::codec`).
//!
//! A group is durable once its **log** entries are: one entry per shard the
//! group touched, holding what each account wrote (journal records and
//! idempotency records; the snapshot is their fold). The tables — snapshots,
//! journal pages, idempotency pages — are written behind, by the
//! checkpointer (`checkpoint.rs`), which deletes a shard's log entries in
//! the same atomic write that puts the state they produced in tables. Until
//! then reads see the log tail in memory (`super::tail`); at open the tail
//! is rebuilt from the log by the same `replay` fold live operation uses.
//! The small indexes (timers, recharges in flight, webhook marks) are
//! written with the log, in the group's own write.
//!
//! Key layout. Every key starts with its shard (`shard`, u32 BE, as
//! `AccountId::shard` places the account), so one shard's whole state is
//! one key range of each family — what a shard's move between nodes copies.
//! Ids never contain a zero byte, so `shard id 0x00 …` is unambiguous and a
//! prefix scan of it reads exactly one account.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `log` | shard lsn(u64 BE) | one shard's entry for one group (`Stored::Log`) |
//! | `accounts` | shard id | snapshot (`Stored::Snapshot`) |
//! | `journal` | shard id 0x00 first seq(u64 BE) | a page of consecutive records (`Stored::History`) |
//! | `dedup` | shard id 0x00 idempotency key | its first result (`Stored::Dedup`) |
//! | `timers` | shard deadline(u64 BE) id | empty |
//! | `inflight` | shard id | attempt id (u64 BE), amount (i128 BE) |
//! | `webhooks` | shard `p` id | last sequence written (u64 BE), when webhooks are on |
//! | `webhooks` | shard `c` id | last sequence delivered to webhooks (u64 BE) |
//! | `meta` | `format` | the format version byte |
//! | `meta` | `shards` | the shard count the data dir was made with (u32 BE): fixed |
//! | `meta` | `probe` | written by recovery probes after a storage failure |
//! | `meta` | `ckpt` shard | the newest lsn of the shard its checkpoint covers (u64 BE) |
//! | `meta` | `dedup_newest` | the newest idempotency record's time when the last checkpoint ended (u64 BE) |
//! | `meta` | `raft` group(u32 BE) | a clustered node's Raft mark for the group: how far it is applied (opaque) |
//!
//! `meta` is the node's own, not a shard's. Idempotency records are one key
//! each, found by a point lookup (the family has bloom filters, so a key
//! that was never used costs no disk read); records past the window are
//! dropped by a compaction filter, and a lookup ignores one that is older
//! than the window but not yet compacted away.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, CompactionDecision, DB, IteratorMode, Options, WriteBatch, WriteOptions,
};

use super::tail::Tail;
use super::{Loaded, Replacement, Store, StoreError, WriteSet};
use crate::codec::{self, FORMAT_VERSION, LogItemRef, Stored, StoredRef};
use crate::ledger::hash::stable_hash;
use crate::ledger::{AccountId, AccountState, Amount, DedupRecord, EventRecord, IdemKey};

mod checkpoint;

const CF_LOG: &str = "log";
const CF_ACCOUNTS: &str = "accounts";
const CF_JOURNAL: &str = "journal";
const CF_DEDUP: &str = "dedup";
const CF_TIMERS: &str = "timers";
const CF_INFLIGHT: &str = "inflight";
const CF_META: &str = "meta";
const CF_WEBHOOKS: &str = "webhooks";
const ALL_CFS: [&str; 8] = [CF_LOG, CF_ACCOUNTS, CF_JOURNAL, CF_DEDUP, CF_TIMERS, CF_INFLIGHT, CF_META, CF_WEBHOOKS];

/// The shard count of a data dir made without one asked for.
const DEFAULT_SHARDS: u32 = 256;

/// How long a write waits for the checkpointer when the log tail is full
/// before it fails (storage then counts as failed and is probed).
const TAIL_FULL_WAIT: Duration = Duration::from_secs(30);

/// How the store is opened. `Default` is what tests and tools use; a node
/// passes its settings.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// Memtable size per column family, MiB.
    pub memtable_mb: u32,
    /// Shards accounts are placed in (`AccountId::shard`); every key starts
    /// with its shard, so the count is fixed when a data dir is made and a
    /// different one is refused. `None`: the data dir's own (256 for a new
    /// one) — what tools that inspect a data dir use.
    pub shards: Option<u32>,
    /// The log tail not yet checkpointed, bytes: a checkpoint starts at
    /// half of it, writes wait at all of it. Bounds restart time.
    pub checkpoint_log_bytes_max: u64,
    /// A checkpoint starts at least this often while anything is dirty.
    pub checkpoint_interval_ms: u64,
    /// Idempotency records older than this (against the newest record
    /// written) are not answered with and are dropped by compaction.
    pub idempotency_window_ms: u64,
    /// Checkpoint a tail rebuilt at open at once, in the background (a
    /// node that restarts often must not replay a longer log each time).
    /// Tests that inspect the replayed log turn it off.
    pub checkpoint_on_open: bool,
}

impl Default for RocksOptions {
    fn default() -> RocksOptions {
        RocksOptions {
            memtable_mb: 64,
            shards: None,
            checkpoint_log_bytes_max: 64 << 20,
            checkpoint_interval_ms: 30_000,
            idempotency_window_ms: 24 * 3_600_000,
            checkpoint_on_open: true,
        }
    }
}

fn be_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| corrupt("a stored number is not 8 bytes"))?))
}

fn io(e: rocksdb::Error) -> StoreError {
    StoreError::Io(e.into_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A key of `cap` more bytes after the shard.
fn shard_key(shard: u32, cap: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + cap);
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

/// `shard id`: the account's key in `accounts` and `inflight`.
fn account_key(shard: u32, id: &AccountId) -> Vec<u8> {
    let mut key = shard_key(shard, id.as_str().len());
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// `shard id 0x00`: every journal page and idempotency record of the account.
fn account_prefix(shard: u32, id: &AccountId) -> Vec<u8> {
    let mut key = shard_key(shard, id.as_str().len() + 1 + 16);
    key.extend_from_slice(id.as_str().as_bytes());
    key.push(0);
    key
}

fn journal_key(shard: u32, id: &AccountId, seq: u64) -> Vec<u8> {
    let mut key = account_prefix(shard, id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn dedup_key(shard: u32, id: &AccountId, idem: &IdemKey) -> Vec<u8> {
    let mut key = account_prefix(shard, id);
    key.extend_from_slice(idem.as_str().as_bytes());
    key
}

fn log_key(shard: u32, lsn: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&shard.to_be_bytes());
    key[4..].copy_from_slice(&lsn.to_be_bytes());
    key
}

fn checkpoint_key(shard: u32) -> Vec<u8> {
    let mut key = b"ckpt".to_vec();
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

fn timer_key(shard: u32, at_ms: u64, id: &AccountId) -> Vec<u8> {
    let mut key = shard_key(shard, 8 + id.as_str().len());
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

fn raft_mark_key(group: u32) -> [u8; 8] {
    let mut key = *b"raft\0\0\0\0";
    key[4..].copy_from_slice(&group.to_be_bytes());
    key
}

fn webhook_key(shard: u32, kind: u8, id: &AccountId) -> Vec<u8> {
    let mut key = shard_key(shard, 1 + id.as_str().len());
    key.push(kind);
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// The key without its shard.
fn after_shard(key: &[u8]) -> Result<&[u8], StoreError> {
    key.get(4..).ok_or_else(|| corrupt("a key is shorter than its shard"))
}

fn account_id(bytes: &[u8]) -> Result<AccountId, StoreError> {
    let text = std::str::from_utf8(bytes).map_err(corrupt)?;
    AccountId::new(text).map_err(|_| corrupt(format!("bad account id in a key: {text:?}")))
}

/// What one group put in the log: (shard, lsn) per entry, and its bytes.
struct Logged {
    entries: Vec<(u32, u64)>,
    bytes: u64,
}

/// What only the group writer touches.
#[derive(Default)]
struct LogWriter {
    /// Per shard: the last log sequence number used.
    lsn: HashMap<u32, u64>,
    /// Reused for every entry's bytes.
    buf: Vec<u8>,
    /// (shard, index into the set), sorted: the set's accounts by shard.
    order: Vec<(u32, usize)>,
}

pub(crate) struct Inner {
    db: DB,
    /// The data dir's shard count.
    shards: u32,
    opts: RocksOptions,
    tail: Mutex<Tail>,
    /// Signalled when the tail grows (the checkpointer may start) and when
    /// a checkpoint ends (a waiting write may go on).
    tail_changed: Condvar,
    writer: Mutex<LogWriter>,
    /// Seeds the tail's hash maps (per store).
    seed: u64,
    /// Serializes checkpoints and tail rebuilds.
    checkpoints: Mutex<()>,
    /// The newest idempotency record's time written since open: the
    /// compaction filter drops records a window older than it.
    dedup_newest_ms: Arc<AtomicU64>,
    stop: AtomicBool,
}

pub struct RocksStore {
    inner: Arc<Inner>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data whole: a panic elsewhere does
    // not make it unusable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RocksStore {
    /// Opens (creating if missing) the database under `path` with the
    /// default options.
    pub fn open(path: &Path) -> Result<RocksStore, StoreError> {
        RocksStore::open_with(path, RocksOptions::default())
    }

    /// Opens with `opts`, rebuilds the log tail and starts the
    /// checkpointer. After a full disk RocksDB resumes writing by itself
    /// once a memtable's worth of space is free (its SstFileManager checks
    /// every 5 s); `recover` then succeeds.
    pub fn open_with(path: &Path, opts: RocksOptions) -> Result<RocksStore, StoreError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        let write_buffer = opts.memtable_mb as usize * 1024 * 1024;
        db_opts.set_write_buffer_size(write_buffer);
        // Point lookups (activation, idempotency) skip tables that cannot
        // hold the key.
        let mut lookups = BlockBasedOptions::default();
        lookups.set_bloom_filter(10.0, false);
        let dedup_newest_ms = Arc::new(AtomicU64::new(0));
        let window = opts.idempotency_window_ms;
        // The unused `default` family too: left out, the binding would open
        // it with RocksDB's default 64 MiB.
        let cfs = ALL_CFS.iter().chain(&["default"]).map(|&name| {
            let mut cf = Options::default();
            cf.set_write_buffer_size(write_buffer);
            if name == CF_ACCOUNTS || name == CF_DEDUP {
                cf.set_block_based_table_factory(&lookups);
            }
            if name == CF_DEDUP {
                let newest = Arc::clone(&dedup_newest_ms);
                cf.set_compaction_filter("prepaid-idempotency-window", move |_, _: &[u8], value: &[u8]| {
                    // A record at or before the horizon has expired by every
                    // clock that has seen the newest record.
                    let newest = newest.load(Ordering::Relaxed);
                    let horizon = newest.checked_sub(window).filter(|_| newest > 0);
                    match (codec::decode(value), horizon) {
                        (Ok(Stored::Dedup(_, record)), Some(horizon)) if record.at_ms <= horizon => {
                            CompactionDecision::Remove
                        }
                        _ => CompactionDecision::Keep,
                    }
                });
            }
            ColumnFamilyDescriptor::new(name, cf)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(io)?;
        let seed = stable_hash(
            &std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                .to_le_bytes(),
        );
        let mut inner = Inner {
            shards: DEFAULT_SHARDS,
            db,
            opts,
            seed,
            tail: Mutex::new(Tail::with_seed(seed)),
            tail_changed: Condvar::new(),
            writer: Mutex::new(LogWriter::default()),
            checkpoints: Mutex::new(()),
            dedup_newest_ms,
            stop: AtomicBool::new(false),
        };
        let meta = inner.cf(CF_META)?;
        match inner.db.get_cf(meta, b"format").map_err(io)? {
            None => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                inner.db.put_cf_opt(meta, b"format", [FORMAT_VERSION], &wo).map_err(io)?;
            }
            Some(v) if v.as_slice() == [FORMAT_VERSION] => {}
            Some(v) => return Err(corrupt(format!("data format {v:?}; this build reads {FORMAT_VERSION}"))),
        }
        // Keys start with their shard: the count is fixed for a data dir.
        let shards = match (inner.db.get_cf(meta, b"shards").map_err(io)?, inner.opts.shards) {
            (None, wanted) => {
                let shards = wanted.unwrap_or(DEFAULT_SHARDS);
                inner.db.put_cf(meta, b"shards", shards.to_be_bytes()).map_err(io)?;
                shards
            }
            (Some(v), wanted) => {
                let made = v
                    .as_slice()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| corrupt("meta shards is not 4 bytes"))?;
                match wanted {
                    Some(wanted) if wanted != made => {
                        return Err(StoreError::Incompatible(format!(
                            "the data dir was made with {made} shards and node.shards is {wanted}; the number is fixed for a data dir"
                        )));
                    }
                    _ => made,
                }
            }
        };
        if shards == 0 {
            return Err(corrupt("meta shards is 0"));
        }
        // The compaction filter's clock goes on from where it was.
        if let Some(v) = inner.db.get_cf(meta, b"dedup_newest").map_err(io)? {
            inner.dedup_newest_ms.store(be_u64(&v)?, Ordering::Relaxed);
        }
        inner.shards = shards;
        let replay = std::time::Instant::now();
        inner.rebuild()?;
        tracing::info!(
            data_dir = %path.display(),
            log_tail_bytes = lock(&inner.tail).bytes(),
            replay_ms = replay.elapsed().as_millis() as u64,
            "store opened: the log tail replayed over the checkpoints"
        );
        let inner = Arc::new(inner);
        let runner = Arc::clone(&inner);
        let checkpointer = std::thread::Builder::new()
            .name("prepaid-checkpoint".into())
            .spawn(move || runner.run_checkpointer())
            .map_err(|e| StoreError::Io(format!("cannot start the checkpointer: {e}")))?;
        Ok(RocksStore { inner, checkpointer: Some(checkpointer) })
    }

    /// Log bytes not yet covered by a checkpoint (tests, metrics).
    pub fn log_tail_bytes(&self) -> u64 {
        lock(&self.inner.tail).bytes()
    }

    /// Writes a checkpoint now (tests; `flush` before a clean stop).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.inner.checkpoint()
    }

    /// Compacts every column family now, which also drops idempotency
    /// records past the window (tests, maintenance).
    pub fn compact(&self) -> Result<(), StoreError> {
        for name in ALL_CFS {
            self.inner.db.compact_range_cf(self.inner.cf(name)?, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }
}

impl Drop for RocksStore {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.tail_changed.notify_all();
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
        }
    }
}

impl Inner {
    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or_else(|| corrupt(format!("column family {name} is missing")))
    }

    /// `total` is the data dir's shard count (a group's shards are
    /// counted in it).
    fn same_shards(&self, total: u32) -> Result<(), StoreError> {
        match total == self.shards {
            true => Ok(()),
            false => Err(StoreError::Incompatible(format!("{total} shards asked of a data dir of {}", self.shards))),
        }
    }

    fn shard_of(&self, id: &AccountId) -> u32 {
        id.shard(u64::from(self.shards)) as u32
    }

    /// Waits while the tail is at its bound, for the checkpointer.
    fn wait_for_room(&self) -> Result<(), StoreError> {
        let max = self.opts.checkpoint_log_bytes_max;
        let started = Instant::now();
        let mut tail = lock(&self.tail);
        while tail.bytes() >= max {
            if let Some(reason) = &tail.failure
                && started.elapsed() >= TAIL_FULL_WAIT
            {
                return Err(StoreError::Io(format!("the log tail is full and checkpoints fail: {reason}")));
            }
            self.tail_changed.notify_all();
            tail =
                self.tail_changed.wait_timeout(tail, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(())
    }

    fn write(&self, set: &WriteSet, sync: bool) -> Result<(), StoreError> {
        let logged = self.append(set, sync)?;
        self.merge(logged, |tail| set.accounts.iter().for_each(|w| tail.merge(w.clone())));
        Ok(())
    }

    fn write_owned(&self, set: WriteSet, sync: bool) -> Result<(), StoreError> {
        let logged = self.append(&set, sync)?;
        self.merge(logged, |tail| set.accounts.into_iter().for_each(|w| tail.merge(w)));
        Ok(())
    }

    /// Logs the set (one entry per shard) with its index changes; returns
    /// the entries written and their bytes.
    fn append(&self, set: &WriteSet, sync: bool) -> Result<Logged, StoreError> {
        self.wait_for_room()?;
        let (log, timers, inflight) = (self.cf(CF_LOG)?, self.cf(CF_TIMERS)?, self.cf(CF_INFLIGHT)?);
        let mut guard = lock(&self.writer);
        let LogWriter { lsn, buf, order } = &mut *guard;
        order.clear();
        order.extend(set.accounts.iter().enumerate().map(|(i, w)| (self.shard_of(&w.id), i)));
        order.sort_unstable();
        let mut batch = WriteBatch::default();
        let mut entries: Vec<(u32, u64)> = Vec::new();
        let mut bytes = 0u64;
        let mut items: Vec<LogItemRef<'_>> = Vec::new();
        for run in order.chunk_by(|a, b| a.0 == b.0) {
            let shard = run[0].0;
            items.clear();
            items.extend(run.iter().map(|&(_, i)| {
                let w = &set.accounts[i];
                LogItemRef { id: &w.id, records: &w.records, dedup: &w.dedup }
            }));
            let next = lsn.get(&shard).copied().unwrap_or(0) + 1;
            codec::encode_into(&StoredRef::Log(&items), buf);
            batch.put_cf(log, log_key(shard, next), &buf[..]);
            bytes += buf.len() as u64;
            entries.push((shard, next));
        }
        let mut newest_dedup = 0;
        for w in &set.accounts {
            let shard = self.shard_of(&w.id);
            if w.timer_before != w.timer_after {
                if let Some(at) = w.timer_before {
                    batch.delete_cf(timers, timer_key(shard, at, &w.id));
                }
                if let Some(at) = w.timer_after {
                    batch.put_cf(timers, timer_key(shard, at, &w.id), []);
                }
            }
            match w.in_flight() {
                _ if !w.in_flight_changed => {}
                Some((attempt, amount)) => {
                    let mut value = attempt.to_be_bytes().to_vec();
                    value.extend_from_slice(&amount.units().to_be_bytes());
                    batch.put_cf(inflight, account_key(shard, &w.id), value);
                }
                None => batch.delete_cf(inflight, account_key(shard, &w.id)),
            }
            if set.webhooks
                && let Some(last) = w.records.last()
            {
                batch.put_cf(self.cf(CF_WEBHOOKS)?, webhook_key(shard, b'p', &w.id), last.seq.to_be_bytes());
            }
            newest_dedup = w.dedup.iter().map(|(_, d)| d.at_ms).fold(newest_dedup, u64::max);
        }
        if let Some((group, mark)) = &set.raft_mark {
            batch.put_cf(self.cf(CF_META)?, raft_mark_key(*group), mark);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        // On failure the tail is left as it was; `recover` rebuilds it from
        // what the log holds.
        self.db.write_opt(batch, &wo).map_err(io)?;
        for &(shard, next) in &entries {
            lsn.insert(shard, next);
        }
        self.dedup_newest_ms.fetch_max(newest_dedup, Ordering::Relaxed);
        Ok(Logged { entries, bytes })
    }

    /// Adds what just landed in the log to the tail (`add` merges the
    /// accounts); wakes the checkpointer at half the bound.
    fn merge(&self, logged: Logged, add: impl FnOnce(&mut Tail)) {
        let start = {
            let mut tail = lock(&self.tail);
            add(&mut tail);
            for (shard, next) in logged.entries {
                tail.active_lsn.insert(shard, next);
            }
            tail.active_bytes += logged.bytes;
            tail.active_bytes >= self.opts.checkpoint_log_bytes_max / 2
        };
        if start {
            self.tail_changed.notify_all();
        }
    }

    fn load_snapshot(&self, id: &AccountId) -> Result<Option<AccountState>, StoreError> {
        let key = account_key(self.shard_of(id), id);
        let Some(bytes) = self.db.get_cf(self.cf(CF_ACCOUNTS)?, key).map_err(io)? else {
            return Ok(None);
        };
        let Stored::Snapshot(state) = codec::decode(&bytes).map_err(corrupt)? else {
            return Err(corrupt(format!("account {id} does not hold a snapshot")));
        };
        if &state.id != id {
            return Err(corrupt(format!("account {id} holds the snapshot of {}", state.id)));
        }
        state.check_invariants().map_err(|e| corrupt(format!("account {id}: {e}")))?;
        Ok(Some(*state))
    }

    /// The account's idempotency record for `key` in tables, of any age.
    fn dedup_record(&self, id: &AccountId, key: &IdemKey) -> Result<Option<DedupRecord>, StoreError> {
        let Some(bytes) = self.db.get_cf(self.cf(CF_DEDUP)?, dedup_key(self.shard_of(id), id, key)).map_err(io)? else {
            return Ok(None);
        };
        match codec::decode(&bytes).map_err(corrupt)? {
            Stored::Dedup(stored, record) if &stored == key => Ok(Some(record)),
            _ => Err(corrupt(format!("account {id}: idempotency key {key} holds something else"))),
        }
    }

    /// The account's largest idempotency key in tables, of any age.
    fn dedup_max(&self, id: &AccountId) -> Result<Option<IdemKey>, StoreError> {
        let prefix = account_prefix(self.shard_of(id), id);
        let mut end = prefix.clone();
        // Past every key of the account: its prefix with the zero byte
        // raised to one.
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        let mut it = self.db.raw_iterator_cf(self.cf(CF_DEDUP)?);
        it.seek_for_prev(&end);
        it.status().map_err(io)?;
        match it.key() {
            Some(key) if key.starts_with(&prefix) && key.len() > prefix.len() => {
                let text = std::str::from_utf8(&key[prefix.len()..]).map_err(corrupt)?;
                IdemKey::new(text).map(Some).map_err(|_| corrupt(format!("bad idempotency key in a key: {text:?}")))
            }
            _ => Ok(None),
        }
    }

    /// Journal records in tables after `after_seq`, at most `limit`.
    fn history_pages(&self, id: &AccountId, after_seq: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let shard = self.shard_of(id);
        let prefix = account_prefix(shard, id);
        let first = after_seq.saturating_add(1);
        let mut it = self.db.raw_iterator_cf(self.cf(CF_JOURNAL)?);
        // The page holding `first` starts at or before it.
        it.seek_for_prev(journal_key(shard, id, first));
        if !it.valid() || !it.key().is_some_and(|k| k.starts_with(&prefix)) {
            it.seek(&prefix);
        }
        let mut out = Vec::new();
        while out.len() < limit {
            let (Some(key), Some(value)) = (it.key(), it.value()) else { break };
            if !key.starts_with(&prefix) {
                break;
            }
            let Stored::History(page) = codec::decode(value).map_err(corrupt)? else {
                return Err(corrupt(format!("account {id}: a journal key holds something else")));
            };
            let room = limit - out.len();
            out.extend(page.into_iter().filter(|r| r.seq >= first).take(room));
            it.next();
        }
        it.status().map_err(io)?;
        Ok(out)
    }
}

impl Store for RocksStore {
    fn write(&self, set: &WriteSet, sync: bool) -> Result<(), StoreError> {
        self.inner.write(set, sync)
    }

    fn write_owned(&self, set: WriteSet, sync: bool) -> Result<(), StoreError> {
        self.inner.write_owned(set, sync)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.inner.db.flush_wal(true).map_err(io)
    }

    /// A synced write to `meta`: RocksDB refuses writes after an I/O error
    /// until its own recovery clears the error (for a full disk, once space
    /// returns), so a probe that lands means writing works again. Then the
    /// tail is rebuilt from the log: a group whose write failed may have
    /// landed after all, and reads must agree with what the log holds.
    fn recover(&self) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.inner.db.put_cf_opt(self.inner.cf(CF_META)?, b"probe", [1u8], &wo).map_err(io)?;
        self.inner.rebuild()
    }

    /// Checkpoints the whole tail, then moves tables out of the memtables.
    fn flush(&self) -> Result<(), StoreError> {
        // A pending checkpoint first, then the active generation.
        self.inner.checkpoint()?;
        self.inner.checkpoint()?;
        for name in ALL_CFS {
            self.inner.db.flush_cf(self.inner.cf(name)?).map_err(io)?;
        }
        Ok(())
    }

    fn load(&self, id: &AccountId) -> Result<Option<Loaded>, StoreError> {
        // The tail first, then tables: a checkpoint that lands in between
        // only moves records from one to the other.
        let (snapshot, tail_max) = {
            let tail = lock(&self.inner.tail);
            (tail.snapshot(id), tail.dedup_max(id))
        };
        let state = match snapshot {
            Some(state) => AccountState::clone(&state),
            None => match self.inner.load_snapshot(id)? {
                Some(state) => state,
                None => return Ok(None),
            },
        };
        let dedup_max = tail_max.max(self.inner.dedup_max(id)?);
        Ok(Some(Loaded { state, dedup_max }))
    }

    fn dedup(&self, id: &AccountId, key: &IdemKey, since_ms: u64) -> Result<Option<DedupRecord>, StoreError> {
        let found = match lock(&self.inner.tail).dedup(id, key) {
            Some(record) => Some(record),
            None => self.inner.dedup_record(id, key)?,
        };
        Ok(found.filter(|record| record.at_ms > since_ms))
    }

    fn history(&self, id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        let limit = limit as usize;
        let tail = lock(&self.inner.tail).history(id, after_seq, limit);
        let mut out = self.inner.history_pages(id, after_seq, limit)?;
        let last = out.last().map_or(after_seq, |r| r.seq);
        let room = limit.saturating_sub(out.len());
        out.extend(tail.into_iter().filter(|r| r.seq > last).take(room));
        Ok(out)
    }

    fn due(&self, until_ms: u64, limit: usize) -> Result<Vec<(u64, AccountId)>, StoreError> {
        // Each shard's timers are in deadline order: the soonest `limit` of
        // each, merged.
        let mut out = Vec::new();
        let mut it = self.inner.db.raw_iterator_cf(self.inner.cf(CF_TIMERS)?);
        for shard in 0..self.inner.shards {
            let prefix = shard.to_be_bytes();
            it.seek(prefix);
            let mut taken = 0;
            while let Some(key) = it.key() {
                if !key.starts_with(&prefix) || taken >= limit {
                    break;
                }
                let rest = after_shard(key)?;
                if rest.len() < 8 {
                    return Err(corrupt("a timer key is shorter than its deadline"));
                }
                let at = u64::from_be_bytes(rest[..8].try_into().map_err(corrupt)?);
                if at > until_ms {
                    break;
                }
                out.push((at, account_id(&rest[8..])?));
                taken += 1;
                it.next();
            }
            it.status().map_err(io)?;
        }
        out.sort_unstable();
        out.truncate(limit);
        Ok(out)
    }

    fn in_flight_recharges(&self) -> Result<Vec<(AccountId, u64, Amount)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.db.iterator_cf(self.inner.cf(CF_INFLIGHT)?, IteratorMode::Start) {
            let (key, value) = item.map_err(io)?;
            if value.len() != 24 {
                return Err(corrupt("an in-flight recharge value is not 24 bytes"));
            }
            let attempt = u64::from_be_bytes(value[..8].try_into().map_err(corrupt)?);
            let units = i128::from_be_bytes(value[8..].try_into().map_err(corrupt)?);
            out.push((account_id(after_shard(&key)?)?, attempt, Amount::from_units(units)));
        }
        Ok(out)
    }

    fn webhook_pending(&self) -> Result<Vec<(AccountId, u64, u64)>, StoreError> {
        let db = &self.inner.db;
        let cf = self.inner.cf(CF_WEBHOOKS)?;
        let mut out = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item.map_err(io)?;
            let rest = after_shard(&key)?;
            if rest.first() != Some(&b'p') {
                continue;
            }
            let id = account_id(&rest[1..])?;
            let written = be_u64(&value)?;
            let delivered = match db.get_cf(cf, webhook_key(self.inner.shard_of(&id), b'c', &id)).map_err(io)? {
                Some(v) => be_u64(&v)?,
                None => 0,
            };
            if written > delivered {
                out.push((id, written, delivered));
            }
        }
        Ok(out)
    }

    fn set_webhook_cursor(&self, id: &AccountId, seq: u64) -> Result<(), StoreError> {
        let key = webhook_key(self.inner.shard_of(id), b'c', id);
        self.inner.db.put_cf(self.inner.cf(CF_WEBHOOKS)?, key, seq.to_be_bytes()).map_err(io)
    }

    fn webhook_cursor(&self, id: &AccountId) -> Result<u64, StoreError> {
        let key = webhook_key(self.inner.shard_of(id), b'c', id);
        match self.inner.db.get_cf(self.inner.cf(CF_WEBHOOKS)?, key).map_err(io)? {
            Some(v) => be_u64(&v),
            None => Ok(0),
        }
    }

    fn raft_mark(&self, group: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.db.get_cf(self.inner.cf(CF_META)?, raft_mark_key(group)).map_err(io)
    }

    fn all_accounts(&self) -> Result<Vec<AccountId>, StoreError> {
        self.accounts_in(0..self.inner.shards, self.inner.shards)
    }

    fn accounts_in(&self, shards: Range<u32>, total: u32) -> Result<Vec<AccountId>, StoreError> {
        self.inner.same_shards(total)?;
        // The tail first, then tables: an account a checkpoint moves in
        // between is in the one or the other.
        let mut out: BTreeSet<AccountId> =
            lock(&self.inner.tail).accounts(|id| shards.contains(&self.inner.shard_of(id))).into_iter().collect();
        let mut it = self.inner.db.raw_iterator_cf(self.inner.cf(CF_ACCOUNTS)?);
        it.seek(shards.start.to_be_bytes());
        while let Some(key) = it.key() {
            if key[..4.min(key.len())] >= shards.end.to_be_bytes()[..] {
                break;
            }
            out.insert(account_id(after_shard(key)?)?);
            it.next();
        }
        it.status().map_err(io)?;
        Ok(out.into_iter().collect())
    }

    fn dedup_all(&self, id: &AccountId) -> Result<Vec<(IdemKey, DedupRecord)>, StoreError> {
        let tail = lock(&self.inner.tail).dedup_all(id);
        let prefix = account_prefix(self.inner.shard_of(id), id);
        let mut out: BTreeMap<IdemKey, DedupRecord> = BTreeMap::new();
        let mut it = self.inner.db.raw_iterator_cf(self.inner.cf(CF_DEDUP)?);
        it.seek(&prefix);
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if !key.starts_with(&prefix) {
                break;
            }
            match codec::decode(value).map_err(corrupt)? {
                Stored::Dedup(key, record) => out.insert(key, record),
                _ => return Err(corrupt(format!("account {id}: an idempotency key holds something else"))),
            };
            it.next();
        }
        it.status().map_err(io)?;
        out.extend(tail);
        Ok(out.into_iter().collect())
    }

    /// Written straight into tables, past the log: the tail is first
    /// checkpointed (it then holds nothing of these shards, whose only
    /// writer waits for this install), and no checkpoint runs meanwhile.
    fn replace_shards(&self, r: Replacement) -> Result<(), StoreError> {
        let Replacement { shards, total, accounts, webhooks, delivered, raft_mark } = r;
        let inner = &self.inner;
        inner.same_shards(total)?;
        let outside = accounts
            .iter()
            .map(|w| &w.id)
            .chain(delivered.iter().map(|(id, _)| id))
            .find(|id| !shards.contains(&inner.shard_of(id)));
        if let Some(id) = outside {
            return Err(corrupt(format!("account {id} is not in shards {shards:?}")));
        }
        // A pending generation first, then the active one.
        inner.checkpoint()?;
        inner.checkpoint()?;
        let _one = lock(&inner.checkpoints);
        if !lock(&inner.tail).accounts(|id| shards.contains(&inner.shard_of(id))).is_empty() {
            return Err(StoreError::Io(format!("shards {shards:?} were written while their snapshot was installed")));
        }
        let (start, end) = (shards.start.to_be_bytes(), shards.end.to_be_bytes());
        let mut batch = WriteBatch::default();
        for name in [CF_LOG, CF_ACCOUNTS, CF_JOURNAL, CF_DEDUP, CF_TIMERS, CF_INFLIGHT, CF_WEBHOOKS] {
            batch.delete_range_cf(inner.cf(name)?, start, end);
        }
        let (cf_accounts, journal, dedup) = (inner.cf(CF_ACCOUNTS)?, inner.cf(CF_JOURNAL)?, inner.cf(CF_DEDUP)?);
        let (timers, inflight) = (inner.cf(CF_TIMERS)?, inner.cf(CF_INFLIGHT)?);
        let mut buf = Vec::new();
        let mut newest_dedup = 0;
        for w in &accounts {
            let shard = inner.shard_of(&w.id);
            codec::encode_into(&StoredRef::Snapshot(&w.snapshot), &mut buf);
            batch.put_cf(cf_accounts, account_key(shard, &w.id), &buf[..]);
            for page in w.records.chunks(checkpoint::HISTORY_PAGE_RECORDS) {
                codec::encode_into(&StoredRef::History(page), &mut buf);
                batch.put_cf(journal, journal_key(shard, &w.id, page[0].seq), &buf[..]);
            }
            for (key, record) in &w.dedup {
                codec::encode_into(&StoredRef::Dedup(key, record), &mut buf);
                batch.put_cf(dedup, dedup_key(shard, &w.id, key), &buf[..]);
                newest_dedup = newest_dedup.max(record.at_ms);
            }
            if let Some(at) = w.timer_after {
                batch.put_cf(timers, timer_key(shard, at, &w.id), []);
            }
            if let Some((attempt, amount)) = w.in_flight() {
                let mut value = attempt.to_be_bytes().to_vec();
                value.extend_from_slice(&amount.units().to_be_bytes());
                batch.put_cf(inflight, account_key(shard, &w.id), value);
            }
            if webhooks && let Some(last) = w.records.last() {
                batch.put_cf(inner.cf(CF_WEBHOOKS)?, webhook_key(shard, b'p', &w.id), last.seq.to_be_bytes());
            }
        }
        for (id, seq) in &delivered {
            batch.put_cf(inner.cf(CF_WEBHOOKS)?, webhook_key(inner.shard_of(id), b'c', id), seq.to_be_bytes());
        }
        batch.put_cf(inner.cf(CF_META)?, raft_mark_key(raft_mark.0), raft_mark.1);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        inner.db.write_opt(batch, &wo).map_err(io)?;
        inner.dedup_newest_ms.fetch_max(newest_dedup, Ordering::Relaxed);
        Ok(())
    }
}
