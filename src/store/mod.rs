//! Storage behind a small trait: what a shard needs from disk, and nothing
//! about actors or rules.
//!
//! A node writes in groups: one `WriteSet` holds, for every account a group
//! touched, its new journal records, its new snapshot, the idempotency records
//! it made and the change to its timer. `Store::write` applies a set
//! atomically and, when asked, durably (one sync); `RocksStore` logs it (one
//! entry per shard) and checkpoints the state behind (`rocks/`), and reads
//! see everything written either way.
//! Reads are for activation (`load`), `history`, timers (`due`) and recovery
//! (`in_flight_recharges`).
//!
//! `RocksStore` is the real implementation; `MemoryStore` keeps the same
//! contract in memory for tests; `SimStore` (over a `SimDisk`) is the memory
//! store with faults injected from a seed — failed writes and syncs, slow
//! syncs, crashes that lose what was not synced — for the simulation tests.

use std::ops::Range;

use crate::ledger::{AccountId, AccountState, Amount, DedupRecord, EventRecord, IdemKey};

mod memory;
#[cfg(feature = "rocksdb")]
mod rocks;
mod sim;
mod tail;

pub use memory::MemoryStore;
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksOptions, RocksStore};
pub use sim::{Faults, SimDisk, SimStats, SimStore};

/// Everything one group writes for one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountWrite {
    pub id: AccountId,
    /// New journal records, in order.
    pub records: Vec<EventRecord>,
    /// The account's state after them.
    pub snapshot: std::sync::Arc<AccountState>,
    /// Idempotency records made by the group's requests. A store keeps each
    /// for the idempotency window and no longer answers with it after (it
    /// deletes them in its own time).
    pub dedup: Vec<(IdemKey, DedupRecord)>,
    /// The account's next deadline as last written, and as it is now: the
    /// timer index moves from one to the other.
    pub timer_before: Option<u64>,
    pub timer_after: Option<u64>,
    /// Whether the recharge attempt in flight (`in_flight`) differs from
    /// what was last written: the `inflight` index is touched only then.
    pub in_flight_changed: bool,
}

impl AccountWrite {
    /// The recharge attempt this account has in flight after the write.
    pub fn in_flight(&self) -> Option<(u64, Amount)> {
        self.snapshot.auto_recharge.in_flight.as_ref().map(|a| (a.id, a.amount))
    }
}

/// One group: written atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSet {
    pub accounts: Vec<AccountWrite>,
    /// Mark each account's last written sequence for webhook delivery, in
    /// the same atomic write (so a crash cannot lose an event's delivery).
    pub webhooks: bool,
    /// A clustered node's state machine: how far its Raft group is applied
    /// (group, opaque bytes), in the same atomic write as what it applied,
    /// so after a crash the mark never runs ahead of the state.
    pub raft_mark: Option<(u32, Vec<u8>)>,
}

/// An account as activation reads it back. Its idempotency records stay
/// in the store (`Store::dedup` finds one): only the largest key is read,
/// so a cell knows that a key above it was never used (keys that grow per
/// account need no lookup at all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub state: AccountState,
    /// The largest idempotency key the store holds for the account, of any
    /// age (`None`: none).
    pub dedup_max: Option<IdemKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage failed: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the data dir does not fit this node: {0}")]
    Incompatible(String),
}

pub trait Store: Send + Sync + 'static {
    /// Applies the whole set or nothing; with `sync`, durable on return.
    fn write(&self, set: &WriteSet, sync: bool) -> Result<(), StoreError>;

    /// `write`, for a caller that is done with the set: a store may keep
    /// its records instead of copying them.
    fn write_owned(&self, set: WriteSet, sync: bool) -> Result<(), StoreError> {
        self.write(&set, sync)
    }

    /// Makes everything written so far durable.
    fn sync(&self) -> Result<(), StoreError>;

    /// After a failed write or sync: whether writing works again. Succeeds
    /// only when a probe write has been made durable; may reopen the
    /// database. Reads go on working meanwhile where the store allows.
    fn recover(&self) -> Result<(), StoreError> {
        self.sync()
    }

    /// Before a clean stop: moves what is only in the write-ahead log into
    /// tables, so the next start need not replay it.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The account's snapshot and its largest idempotency key, or `None` if
    /// the account was never written.
    fn load(&self, id: &AccountId) -> Result<Option<Loaded>, StoreError>;

    /// The account's idempotency record for `key`, if one was written after
    /// `since_ms` (now less the window: a record at it has expired, as the
    /// ledger counts).
    fn dedup(&self, id: &AccountId, key: &IdemKey, since_ms: u64) -> Result<Option<DedupRecord>, StoreError>;

    /// Journal records after `after_seq`, at most `limit`, oldest first.
    fn history(&self, id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError>;

    /// Accounts whose next deadline is at or before `until_ms`, soonest
    /// first, at most `limit`.
    fn due(&self, until_ms: u64, limit: usize) -> Result<Vec<(u64, AccountId)>, StoreError>;

    /// Accounts with a recharge attempt requested and not yet answered:
    /// recovery resumes them with the same attempt id.
    fn in_flight_recharges(&self) -> Result<Vec<(AccountId, u64, Amount)>, StoreError>;

    /// Accounts whose events are not all delivered to webhooks: (account,
    /// last sequence written, last sequence delivered).
    fn webhook_pending(&self) -> Result<Vec<(AccountId, u64, u64)>, StoreError>;

    /// Webhooks delivered (or dead-lettered) the account's events up to
    /// `seq`. Not synced: after a crash, delivery resumes from an earlier
    /// point (at least once).
    fn set_webhook_cursor(&self, id: &AccountId, seq: u64) -> Result<(), StoreError>;

    /// The last sequence delivered to webhooks for the account (0: none).
    fn webhook_cursor(&self, id: &AccountId) -> Result<u64, StoreError>;

    /// The group's Raft mark as last written (`WriteSet::raft_mark`).
    fn raft_mark(&self, group: u32) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every account placed in `shards` (of `total` shards), in no
    /// particular order: what a group's snapshot holds (a clustered node).
    fn accounts_in(&self, shards: Range<u32>, total: u32) -> Result<Vec<AccountId>, StoreError>;

    /// Every account the store holds, in no particular order (an account
    /// list reads it; a store of a fixed shard count answers with its own).
    fn all_accounts(&self) -> Result<Vec<AccountId>, StoreError> {
        self.accounts_in(0..u32::MAX, u32::MAX)
    }

    /// Every idempotency record the store holds for the account, of any
    /// age, in key order (a group's snapshot carries them).
    fn dedup_all(&self, id: &AccountId) -> Result<Vec<(IdemKey, DedupRecord)>, StoreError>;

    /// A clustered node installing a group's snapshot: everything stored
    /// for the replacement's shards is replaced by its accounts, with their
    /// webhook marks and the group's Raft mark, in one atomic, synced
    /// write. Nothing else may write those shards meanwhile (the group's
    /// state machine is the only writer).
    fn replace_shards(&self, replacement: Replacement) -> Result<(), StoreError>;
}

/// What installing a group's snapshot writes (`Store::replace_shards`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    /// The group's shards, of `total`.
    pub shards: Range<u32>,
    pub total: u32,
    /// Every account of the shards, each written whole: its records from
    /// the first (`timer_before` none: the shards' timers are replaced too).
    pub accounts: Vec<AccountWrite>,
    /// Webhooks are on: each account's written mark is its last record.
    pub webhooks: bool,
    /// Per account, how far webhooks delivered it (its cursor), where
    /// they did.
    pub delivered: Vec<(AccountId, u64)>,
    /// The group's Raft mark (group, bytes).
    pub raft_mark: (u32, Vec<u8>),
}
