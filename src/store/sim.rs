//! A simulated disk for the fault-injection tests: the store contract in
//! memory, with faults decided by a seed.
//!
//! A `SimDisk` is laid out as the real store is (`rocks/`): a **log** of
//! groups and **tables** a checkpoint writes the log into behind it. What a
//! write put in the "page cache" (`current`, what reads see) is kept apart
//! from what is durable: the synced log and the tables. The groups written
//! since the last sync (`pending`) are the log's unsynced suffix. Faults,
//! each chosen per call from the seed and the call's number, so a seed gives
//! the same schedule for the same sequence of calls:
//! - a **failed write** applies nothing and returns an error;
//! - a **failed sync** leaves the writes it covered in the cache but not
//!   durable (as after a real failed `fsync`: they may or may not survive);
//! - a **slow sync** sleeps up to `slow_sync_us`;
//! - a **failed recovery probe** keeps the store failed a while longer;
//! - a **checkpoint** after a sync (`checkpoint` per 1,000 syncs) writes the
//!   synced log into the tables and truncates it.
//!
//! And one fault set by hand: a **stalled disk** (`stall(true)`) holds every
//! write until it is let go — a disk that hangs, so a test can keep
//! requests in the node for as long as it needs.
//!
//! `crash` is the power going out: every handle (`SimStore`) of the running
//! node dies (its calls fail from then on). Of the log's unsynced suffix a
//! seeded prefix survives — a torn log keeps a prefix, never a hole — and
//! its last entry may be torn (cut mid-entry: its checksum fails, so it is
//! dropped). The crash may come in the middle of a checkpoint, seeded too:
//! the tables part of the way through it, or all of it written and the log
//! not yet truncated, or an older checkpoint under a longer log. A new node
//! starts on what recovery makes of it: the tables, then the log replayed
//! over them, each account's records that the tables already hold skipped
//! (`replay`) — as the real store restarts.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::{Loaded, MemoryStore, Store, StoreError, WriteSet};
use crate::ledger::{AccountId, Amount, DedupRecord, EventRecord, IdemKey};

/// Fault rates, in calls per 1,000.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    pub write_fail: u32,
    pub sync_fail: u32,
    /// A sync takes up to this long (0: instant).
    pub slow_sync_us: u64,
    pub recover_fail: u32,
    /// Checkpoints, per 1,000 syncs that succeed.
    pub checkpoint: u32,
}

/// What the disk saw, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub writes: u64,
    pub syncs: u64,
    pub failed_writes: u64,
    pub failed_syncs: u64,
    pub crashes: u64,
    /// Unsynced groups dropped by crashes.
    pub lost_groups: u64,
    /// Unsynced groups kept by crashes (the torn log's prefix).
    pub kept_groups: u64,
    /// Kept groups whose last entry was torn, and so dropped.
    pub torn_entries: u64,
    /// Checkpoints finished (log written into tables and truncated).
    pub checkpoints: u64,
    /// Crashes in the middle of a checkpoint: (tables part of the way,
    /// tables written but log not truncated, an older checkpoint).
    pub interrupted_checkpoints: (u64, u64, u64),
}

struct DiskState {
    seed: u64,
    calls: u64,
    faults: Faults,
    generation: u64,
    /// What reads see: everything written, synced or not.
    current: MemoryStore,
    /// Checkpointed state.
    tables: MemoryStore,
    /// Synced groups the tables may not hold yet, oldest first.
    log: Vec<WriteSet>,
    /// Written, not synced: the log's unsynced suffix.
    pending: Vec<WriteSet>,
    stats: SimStats,
}

pub struct SimDisk {
    state: Mutex<DiskState>,
    /// True while writes are held (`stall`).
    stalled: Mutex<bool>,
    unstalled: Condvar,
}

/// One node's handle on the disk; dead after a crash.
pub struct SimStore {
    disk: Arc<SimDisk>,
    generation: u64,
}

/// SplitMix64: a few lines, good enough to spread a seed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl DiskState {
    /// The next random number of this disk's schedule.
    fn roll(&mut self) -> u64 {
        self.calls += 1;
        mix(self.seed ^ mix(self.calls))
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        let r = self.roll();
        per_mille > 0 && r % 1_000 < u64::from(per_mille)
    }

    /// Everything pending becomes durable: the log's synced part.
    fn settle(&mut self) {
        self.log.append(&mut self.pending);
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.stats.syncs += 1;
        if self.faults.slow_sync_us > 0 {
            let us = self.roll() % self.faults.slow_sync_us;
            std::thread::sleep(Duration::from_micros(us));
        }
        let rate = self.faults.sync_fail;
        if self.chance(rate) {
            self.stats.failed_syncs += 1;
            return Err(StoreError::Io("simulated: fsync failed".into()));
        }
        self.settle();
        let rate = self.faults.checkpoint;
        if self.chance(rate) {
            self.checkpoint_into_tables(self.log.len(), None);
            self.log.clear();
            self.stats.checkpoints += 1;
        }
        Ok(())
    }

    /// Writes the first `entries` groups of the log into the tables, and
    /// of the next one the first `partial` accounts (a checkpoint cut off).
    fn checkpoint_into_tables(&mut self, entries: usize, partial: Option<usize>) {
        for set in &self.log[..entries] {
            replay(&self.tables, set);
        }
        if let (Some(accounts), Some(set)) = (partial, self.log.get(entries)) {
            let cut = WriteSet {
                accounts: set.accounts[..accounts.min(set.accounts.len())].to_vec(),
                webhooks: set.webhooks,
                // Part of a group: not yet as far as its mark says.
                raft_mark: None,
            };
            replay(&self.tables, &cut);
        }
    }

    /// What a restart reads: the tables with the log replayed over them.
    fn recovered(&self) -> MemoryStore {
        let store = self.tables.snapshot();
        for set in &self.log {
            replay(&store, set);
        }
        store
    }
}

/// Applies a logged group over tables that may already hold part of it (a
/// checkpoint covered it, or part of it): each account's records the
/// tables hold are skipped, and a write older than what the tables hold is
/// skipped whole. A write the tables hold exactly is applied again, which
/// changes nothing (the same snapshot, records and keys; its timer move is
/// undone by the account's next write, which the log also holds).
fn replay(tables: &MemoryStore, set: &WriteSet) {
    let mut fresh = WriteSet {
        accounts: Vec::with_capacity(set.accounts.len()),
        webhooks: set.webhooks,
        raft_mark: set.raft_mark.clone(),
    };
    for w in &set.accounts {
        // The memory store cannot fail.
        let next = tables.load(&w.id).ok().flatten().map(|l| l.state.next_seq);
        match next {
            Some(next) if w.snapshot.next_seq < next => continue,
            Some(next) => {
                let mut w = w.clone();
                w.records.retain(|r| r.seq >= next);
                fresh.accounts.push(w);
            }
            None => fresh.accounts.push(w.clone()),
        }
    }
    let _ = tables.write(&fresh, true);
}

impl SimDisk {
    pub fn new(seed: u64, faults: Faults) -> Arc<SimDisk> {
        Arc::new(SimDisk {
            state: Mutex::new(DiskState {
                seed,
                calls: 0,
                faults,
                generation: 0,
                current: MemoryStore::new(),
                tables: MemoryStore::new(),
                log: Vec::new(),
                pending: Vec::new(),
                stats: SimStats::default(),
            }),
            stalled: Mutex::new(false),
            unstalled: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle for the next node to run on this disk.
    pub fn store(self: &Arc<SimDisk>) -> SimStore {
        SimStore { disk: Arc::clone(self), generation: self.lock().generation }
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The power goes out: handles die, and of the unsynced writes a seeded
    /// prefix survives (its last entry perhaps torn); a checkpoint may be
    /// cut off. Returns (groups kept, groups lost).
    pub fn crash(&self) -> (usize, usize) {
        let mut s = self.lock();
        s.generation += 1;
        s.stats.crashes += 1;
        // A checkpoint under way when the power went, over the synced log.
        let logged = s.log.len();
        match s.roll() % 8 {
            _ if logged == 0 => {}
            0 => {
                // Part of the way: some groups whole, then some accounts of
                // the next.
                let entries = (s.roll() % logged as u64) as usize;
                let accounts = s.log[entries].accounts.len() as u64;
                let partial = (s.roll() % (accounts + 1)) as usize;
                s.checkpoint_into_tables(entries, Some(partial));
                s.stats.interrupted_checkpoints.0 += 1;
            }
            1 => {
                // Written whole, the crash before the log was truncated.
                s.checkpoint_into_tables(logged, None);
                s.stats.interrupted_checkpoints.1 += 1;
            }
            2 => {
                // An older checkpoint: the log goes on past what it covers.
                let entries = (s.roll() % logged as u64) as usize;
                s.checkpoint_into_tables(entries, None);
                s.stats.interrupted_checkpoints.2 += 1;
            }
            _ => {}
        }
        let pending = std::mem::take(&mut s.pending);
        let mut keep = if pending.is_empty() { 0 } else { (s.roll() % (pending.len() as u64 + 1)) as usize };
        // The last entry kept may be torn: cut mid-entry, its checksum fails
        // and recovery drops it.
        if keep > 0 && s.roll().is_multiple_of(4) {
            keep -= 1;
            s.stats.torn_entries += 1;
        }
        let lost = pending.len() - keep;
        s.log.extend(pending.into_iter().take(keep));
        s.stats.kept_groups += keep as u64;
        s.stats.lost_groups += lost as u64;
        s.current = s.recovered();
        (keep, lost)
    }

    /// Holds every write from now on (`true`) until let go (`false`).
    pub fn stall(&self, on: bool) {
        *self.stalled.lock().unwrap_or_else(|e| e.into_inner()) = on;
        self.unstalled.notify_all();
    }

    fn wait_while_stalled(&self) {
        let mut stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        while *stalled {
            stalled = self.unstalled.wait(stalled).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// A read-only view of what survives a crash right now: the tables
    /// with the synced log replayed over them.
    pub fn durable(&self) -> MemoryStore {
        self.lock().recovered()
    }
}

impl SimStore {
    fn state(&self) -> Result<MutexGuard<'_, DiskState>, StoreError> {
        let s = self.disk.lock();
        if s.generation != self.generation {
            return Err(StoreError::Io("simulated: the node crashed".into()));
        }
        Ok(s)
    }
}

impl Store for SimStore {
    fn write(&self, set: &WriteSet, sync: bool) -> Result<(), StoreError> {
        self.disk.wait_while_stalled();
        let mut s = self.state()?;
        s.stats.writes += 1;
        let rate = s.faults.write_fail;
        if s.chance(rate) {
            s.stats.failed_writes += 1;
            return Err(StoreError::Io("simulated: write failed".into()));
        }
        s.current.write(set, sync)?;
        s.pending.push(set.clone());
        if sync { s.sync() } else { Ok(()) }
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.state()?.sync()
    }

    fn recover(&self) -> Result<(), StoreError> {
        let mut s = self.state()?;
        let rate = s.faults.recover_fail;
        if s.chance(rate) {
            return Err(StoreError::Io("simulated: still failing".into()));
        }
        s.settle();
        Ok(())
    }

    fn load(&self, id: &AccountId) -> Result<Option<Loaded>, StoreError> {
        self.state()?.current.load(id)
    }

    fn dedup(&self, id: &AccountId, key: &IdemKey, since_ms: u64) -> Result<Option<DedupRecord>, StoreError> {
        self.state()?.current.dedup(id, key, since_ms)
    }

    fn history(&self, id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        self.state()?.current.history(id, after_seq, limit)
    }

    fn due(&self, until_ms: u64, limit: usize) -> Result<Vec<(u64, AccountId)>, StoreError> {
        self.state()?.current.due(until_ms, limit)
    }

    fn in_flight_recharges(&self) -> Result<Vec<(AccountId, u64, Amount)>, StoreError> {
        self.state()?.current.in_flight_recharges()
    }

    fn webhook_pending(&self) -> Result<Vec<(AccountId, u64, u64)>, StoreError> {
        self.state()?.current.webhook_pending()
    }

    fn set_webhook_cursor(&self, id: &AccountId, seq: u64) -> Result<(), StoreError> {
        let s = self.state()?;
        s.current.set_webhook_cursor(id, seq)?;
        s.tables.set_webhook_cursor(id, seq)
    }

    fn webhook_cursor(&self, id: &AccountId) -> Result<u64, StoreError> {
        self.state()?.current.webhook_cursor(id)
    }

    fn raft_mark(&self, group: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.state()?.current.raft_mark(group)
    }

    fn accounts_in(&self, shards: std::ops::Range<u32>, total: u32) -> Result<Vec<AccountId>, StoreError> {
        self.state()?.current.accounts_in(shards, total)
    }

    fn dedup_all(&self, id: &AccountId) -> Result<Vec<(IdemKey, DedupRecord)>, StoreError> {
        self.state()?.current.dedup_all(id)
    }

    /// The simulated disk models one node's log of group writes; it holds
    /// no clustered groups, so it has no snapshot to install.
    fn replace_shards(&self, _replacement: super::Replacement) -> Result<(), StoreError> {
        Err(StoreError::Io("the simulated disk holds no clustered groups: no snapshot to install".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_a_prefix_of_what_was_not_synced_and_kills_old_handles() {
        let disk = SimDisk::new(7, Faults::default());
        let store = disk.store();
        for _ in 0..10 {
            store.write(&WriteSet::default(), false).unwrap();
        }
        let (kept, lost) = disk.crash();
        assert_eq!(kept + lost, 10);
        assert!(store.sync().is_err(), "the crashed node's handle is dead");
        let next = disk.store();
        next.write(&WriteSet::default(), true).unwrap();
        assert_eq!(disk.stats().crashes, 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_fault_schedule() {
        let run = |seed| {
            let disk = SimDisk::new(seed, Faults { write_fail: 300, sync_fail: 300, ..Faults::default() });
            let store = disk.store();
            (0..200).map(|_| store.write(&WriteSet::default(), true).is_ok()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        assert!(run(42).iter().any(|ok| !ok) && run(42).iter().any(|ok| *ok));
    }
}
