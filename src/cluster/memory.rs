//! A shard's Raft log and state machine in memory: the store the
//! deterministic cluster simulation runs on (RocksDB cannot run under a
//! simulated network and clock), and the reference the RocksDB store is
//! held to. Both pass openraft's storage suite (`Suite::test_all`).
//!
//! The state machine applies a normal entry as the store's recovery does:
//! each account's records are replayed onto its state (`AccountState::open`,
//! `replay`), records it already holds skipped, and its idempotency records
//! kept. A snapshot is the whole shard state, postcard-encoded.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{Stream, TryStreamExt};
use openraft::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::{ShardEntry, ShardRaft};
use crate::codec::LogItem;
use crate::ledger::{AccountId, AccountState, DedupRecord, EventRecord, IdemKey};

type C = ShardRaft;
/// A snapshot's bytes: the shard state, postcard-encoded.
type Snap = Cursor<Vec<u8>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change is made whole under the lock: a panic elsewhere leaves
    // consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A shard's Raft log in memory. Clones share it (the log reader is one).
#[derive(Clone, Default)]
pub struct MemoryLog {
    inner: Arc<Mutex<LogInner>>,
}

#[derive(Default)]
struct LogInner {
    purged: Option<LogIdOf<C>>,
    entries: BTreeMap<u64, EntryOf<C>>,
    committed: Option<LogIdOf<C>>,
    vote: Option<VoteOf<C>>,
}

impl RaftLogReader<C> for MemoryLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        Ok(lock(&self.inner).entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(lock(&self.inner).vote)
    }
}

impl RaftLogStorage<C> for MemoryLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let s = lock(&self.inner);
        let last = s.entries.values().next_back().map(|e| e.log_id()).or(s.purged);
        Ok(LogState { last_purged_log_id: s.purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        lock(&self.inner).vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        lock(&self.inner).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(lock(&self.inner).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut s = lock(&self.inner);
            for entry in entries {
                s.entries.insert(entry.index(), entry);
            }
        }
        // Memory is as durable as this store gets.
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last.map_or(0, |id| id.index() + 1);
        lock(&self.inner).entries.split_off(&from);
        Ok(())
    }

    async fn purge(&mut self, upto: LogIdOf<C>) -> Result<(), io::Error> {
        let mut s = lock(&self.inner);
        let kept = s.entries.split_off(&(upto.index() + 1));
        s.entries = kept;
        s.purged = Some(upto);
        Ok(())
    }
}

/// What a shard's state machine holds: each account's state and journal,
/// and the idempotency records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    pub accounts: BTreeMap<AccountId, (AccountState, Vec<EventRecord>)>,
    pub dedup: BTreeMap<(AccountId, IdemKey), DedupRecord>,
}

impl ShardState {
    /// Applies one entry's items whole, as `apply::StoreShard` does, or
    /// nothing (`Applied::Fenced`): each account's records must continue
    /// its state exactly (the first is its next sequence, every one
    /// replays), and an account's first item must open it.
    fn apply(&mut self, items: &[LogItem]) -> super::Applied {
        let mut staged: BTreeMap<AccountId, (AccountState, Vec<EventRecord>)> = BTreeMap::new();
        for item in items {
            let mut account = match staged.remove(&item.id).or_else(|| self.accounts.get(&item.id).cloned()) {
                Some(account) => Some(account),
                None => match item.records.first().map(|first| AccountState::open(item.id.clone(), first)) {
                    Some(Ok(state)) => Some((state, Vec::new())),
                    _ => return super::Applied::Fenced,
                },
            };
            if let Some((state, journal)) = account.as_mut() {
                let opened = journal.is_empty();
                for (n, record) in item.records.iter().enumerate() {
                    let continues = if opened && n == 0 {
                        record.seq == 1
                    } else {
                        record.seq == state.next_seq && state.replay(record).is_ok()
                    };
                    if !continues {
                        return super::Applied::Fenced;
                    }
                    journal.push(record.clone());
                }
            }
            if let Some(account) = account {
                staged.insert(item.id.clone(), account);
            }
        }
        self.accounts.extend(staged);
        for item in items {
            for (key, record) in &item.dedup {
                self.dedup.insert((item.id.clone(), key.clone()), record.clone());
            }
        }
        super::Applied::Yes
    }
}

/// A shard's state machine in memory. Clones share it (the snapshot
/// builder is one).
#[derive(Clone, Default)]
pub struct MemoryShard {
    inner: Arc<Mutex<ShardInner>>,
}

#[derive(Default)]
struct ShardInner {
    applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    state: ShardState,
    /// The last snapshot built or installed: its meta and its bytes.
    snapshot: Option<(SnapshotMetaOf<C>, Vec<u8>)>,
}

impl MemoryShard {
    /// The state applied so far (tests, the simulation's audit).
    pub fn state(&self) -> ShardState {
        lock(&self.inner).state.clone()
    }
}

fn encode(state: &ShardState) -> Result<Vec<u8>, io::Error> {
    postcard::to_allocvec(state).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl RaftSnapshotBuilder<C> for MemoryShard {
    type SnapshotData = Snap;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Snap>, io::Error> {
        let mut s = lock(&self.inner);
        let data = encode(&s.state)?;
        let meta = SnapshotMetaOf::<C> { last_log_id: s.applied, last_membership: s.membership.clone() };
        s.snapshot = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<C, Snap> { meta, snapshot: Cursor::new(data) })
    }
}

impl RaftStateMachine<C> for MemoryShard {
    type SnapshotData = Snap;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let s = lock(&self.inner);
        Ok((s.applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let mut applied = super::Applied::Yes;
            {
                let mut s = lock(&self.inner);
                match &entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(ShardEntry { term, items, .. }) => {
                        // Proposed for another term: made from a deposed
                        // leader's memory.
                        applied = if term.is_some_and(|t| t != entry.log_id.leader_id.term) {
                            super::Applied::Fenced
                        } else {
                            s.state.apply(items)
                        };
                    }
                    EntryPayload::Membership(m) => {
                        s.membership = StoredMembershipOf::<C>::new(Some(entry.log_id), m.clone());
                    }
                }
                s.applied = Some(entry.log_id);
            }
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<C>, snapshot: Snap) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let state: ShardState =
            postcard::from_bytes(&data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut s = lock(&self.inner);
        s.applied = meta.last_log_id;
        s.membership = meta.last_membership.clone();
        s.state = state;
        s.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Snap>>, io::Error> {
        let s = lock(&self.inner);
        Ok(s.snapshot
            .as_ref()
            .map(|(meta, data)| SnapshotOf::<C, Snap> { meta: meta.clone(), snapshot: Cursor::new(data.clone()) }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};

    use super::*;

    struct Fresh;

    impl StoreBuilder<C, MemoryLog, MemoryShard> for Fresh {
        async fn build(&self) -> Result<((), MemoryLog, MemoryShard), StorageError<C>> {
            Ok(((), MemoryLog::default(), MemoryShard::default()))
        }
    }

    /// openraft's own storage suite: 44 cases of log state, votes, reads,
    /// truncation, purging, initial state and snapshot transfer.
    #[tokio::test]
    async fn the_memory_log_and_shard_pass_openraft_s_storage_suite() {
        Suite::test_all(Fresh).await.unwrap();
    }

    /// What the suite cannot write: a normal entry of real ledger records,
    /// applied, applied again (a restart replays), sent as a snapshot to
    /// another state machine.
    #[tokio::test]
    async fn a_shard_entry_of_ledger_records_applies_once_and_travels_in_a_snapshot() {
        let mut ledger = crate::cluster::testing::Ledger::new("acme");
        let id = ledger.id.clone();
        let mut items = ledger.open().items;
        items.extend(ledger.purchase("buy-1", 25).items);
        let entry = |index: u64, items: Vec<LogItem>| {
            EntryOf::<C>::new_normal(
                openraft::testing::log_id::<C>(1, 0, index),
                ShardEntry { term: None, items, ..ShardEntry::default() },
            )
        };
        let membership = EntryOf::<C>::new_membership(
            openraft::testing::log_id::<C>(1, 0, 0),
            openraft::Membership::new_with_defaults(vec![BTreeSet::from([0u64])], []),
        );
        let mut shard = MemoryShard::default();
        let run = |entries: Vec<EntryOf<C>>| futures_util::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
        shard.apply(run(vec![membership, entry(1, items.clone())])).await.unwrap();
        let expected = ledger.account.state.clone().unwrap();
        let state = shard.state();
        assert_eq!(state.accounts[&id].0, expected, "the entry replays to the ledger's own state");
        assert_eq!(state.accounts[&id].1.len(), expected.next_seq as usize - 1, "every record once");
        assert!(state.dedup.contains_key(&(id.clone(), IdemKey::new("buy-1").unwrap())));
        // Applied again at a later index (records the state holds
        // already: made from memory behind it): fenced, nothing applied
        // twice.
        shard.apply(run(vec![entry(2, items.clone())])).await.unwrap();
        assert_eq!(shard.state(), state, "nothing applied twice");
        assert_eq!(shard.applied_state().await.unwrap().0.map(|l| l.index()), Some(2));
        // Proposed for a term other than the one it is committed in (log
        // id term 1): fenced, whatever it holds.
        let buy = ledger.purchase("buy-2", 5).items;
        let stale = EntryOf::<C>::new_normal(
            openraft::testing::log_id::<C>(1, 0, 3),
            ShardEntry { term: Some(2), items: buy.clone(), ..ShardEntry::default() },
        );
        shard.apply(run(vec![stale])).await.unwrap();
        assert_eq!(shard.state(), state, "an entry of another term applies nothing");
        // In its term it applies.
        let fresh = EntryOf::<C>::new_normal(
            openraft::testing::log_id::<C>(1, 0, 4),
            ShardEntry { term: Some(1), items: buy, ..ShardEntry::default() },
        );
        shard.apply(run(vec![fresh])).await.unwrap();
        assert_eq!(shard.state().accounts[&id].0.balance(), crate::ledger::Amount::whole(30));
        let state = shard.state();
        // A snapshot installs the same state on another member.
        let snapshot = shard.build_snapshot().await.unwrap();
        let mut other = MemoryShard::default();
        other.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        assert_eq!(other.state(), state);
        assert_eq!(other.applied_state().await.unwrap(), shard.applied_state().await.unwrap());
    }
}
