//! A Raft group's state machine on the node's own store: what a clustered
//! node applies its groups' committed entries to. Every member — the
//! leader, whose cells made the entry, and the followers — applies an entry
//! the same way: each account's records are replayed onto its state as the
//! store holds it, and the result is written to the store as one group
//! write, with the group's Raft mark (how far it is applied) in the same
//! atomic write. The write is not synced: the entry is durable in the Raft
//! log, and after a crash openraft applies again what comes after the mark,
//! which never runs ahead of the state it describes.
//!
//! An entry applies whole or not at all, and every member decides alike
//! (`Applied::Fenced`):
//! - proposed for a term it was not committed in: made from a deposed
//!   leader's memory;
//! - an account's records do not continue its state exactly (a first
//!   sequence other than the next, or records that do not replay onto
//!   it): made from memory that missed an entry.
//!
//! Snapshots are not built yet: the log is never purged (the groups run
//! with `SnapshotPolicy::Never`), so a new member catches up from the log.

use std::collections::HashMap;
use std::io;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};

use super::{Applied, ShardEntry, ShardRaft};
use crate::codec::LogItem;
use crate::ledger::{AccountId, AccountState};
use crate::store::{AccountWrite, Store, WriteSet};

type C = ShardRaft;
type Snap = Cursor<Vec<u8>>;

/// How far a group is applied, as its mark in the store holds it.
type Mark = (Option<LogIdOf<C>>, StoredMembershipOf<C>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn broken(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// One group's state machine over the node's store. Clones share it.
#[derive(Clone)]
pub struct StoreShard {
    group: u32,
    store: Arc<dyn Store>,
    /// `ledger.expiry_notice_ms`: an account's next deadline, for the
    /// timer index, depends on it.
    notice_ms: u64,
    webhooks: bool,
    mark: Arc<Mutex<Mark>>,
}

impl StoreShard {
    /// The group's state machine, as far as the store says it is applied.
    pub fn open(
        group: u32,
        store: Arc<dyn Store>,
        notice_ms: u64,
        webhooks: bool,
    ) -> Result<StoreShard, crate::store::StoreError> {
        let mark = match store.raft_mark(group)? {
            Some(bytes) => postcard::from_bytes(&bytes)
                .map_err(|e| crate::store::StoreError::Corrupt(format!("group {group}'s raft mark: {e}")))?,
            None => (None, StoredMembershipOf::<C>::default()),
        };
        Ok(StoreShard { group, store, notice_ms, webhooks, mark: Arc::new(Mutex::new(mark)) })
    }

    /// The accounts' writes for one entry, or `None` if the entry is
    /// fenced.
    fn writes(&self, items: &[LogItem]) -> Result<Option<Vec<AccountWrite>>, io::Error> {
        // An account may have several items in one entry (several worker
        // messages in one group commit): each continues the one before.
        let mut at: HashMap<AccountId, usize> = HashMap::new();
        let mut writes: Vec<AccountWrite> = Vec::with_capacity(items.len());
        for item in items {
            let (before, in_flight_before) = match at.get(&item.id) {
                Some(&i) => (Some((*writes[i].snapshot).clone()), writes[i].in_flight_changed),
                None => (self.store.load(&item.id).map_err(broken)?.map(|l| l.state), false),
            };
            let next = before.as_ref().map_or(1, |s| s.next_seq);
            if item.records.first().is_some_and(|r| r.seq != next) {
                return Ok(None);
            }
            let timer_before = before.as_ref().and_then(|s| s.next_deadline_ms(self.notice_ms));
            let attempt_before = before.as_ref().and_then(|s| s.auto_recharge.in_flight.clone());
            let mut state = before;
            for record in &item.records {
                let folded = match state.as_mut() {
                    Some(s) => s.replay(record),
                    None => AccountState::open(item.id.clone(), record).map(|s| state = Some(s)),
                };
                if let Err(e) = folded {
                    // Records that do not replay onto the state (made from
                    // memory that differs from it): refused, alike on every
                    // member, and the group goes on.
                    tracing::error!(account = %item.id, group = self.group, error = %e, "an entry does not replay");
                    return Ok(None);
                }
            }
            let Some(state) = state else {
                // Idempotency records alone, for an account never opened:
                // nothing the ledger makes. Refused, not applied.
                tracing::error!(account = %item.id, group = self.group, "an entry for an account never opened");
                return Ok(None);
            };
            let write = AccountWrite {
                id: item.id.clone(),
                records: item.records.clone(),
                timer_before: match at.get(&item.id) {
                    Some(&i) => writes[i].timer_before,
                    None => timer_before,
                },
                timer_after: state.next_deadline_ms(self.notice_ms),
                in_flight_changed: in_flight_before || attempt_before != state.auto_recharge.in_flight,
                snapshot: Arc::new(state),
                dedup: item.dedup.clone(),
            };
            match at.get(&item.id) {
                Some(&i) => {
                    let earlier = &mut writes[i];
                    earlier.records.extend(write.records);
                    earlier.dedup.extend(write.dedup);
                    earlier.snapshot = write.snapshot;
                    earlier.timer_after = write.timer_after;
                    earlier.in_flight_changed = write.in_flight_changed;
                }
                None => {
                    at.insert(item.id.clone(), writes.len());
                    writes.push(write);
                }
            }
        }
        Ok(Some(writes))
    }

    /// Writes `accounts` and the mark, atomically (not synced: the log is).
    fn write(&self, accounts: Vec<AccountWrite>, mark: &Mark) -> Result<(), io::Error> {
        let bytes = postcard::to_allocvec(mark).map_err(broken)?;
        let set = WriteSet { accounts, webhooks: self.webhooks, raft_mark: Some((self.group, bytes)) };
        self.store.write_owned(set, false).map_err(|e| io::Error::other(e.to_string()))
    }
}

impl RaftSnapshotBuilder<C> for StoreShard {
    type SnapshotData = Snap;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Snap>, io::Error> {
        Err(io::Error::other("a store-backed group does not build snapshots: its log is kept whole"))
    }
}

impl RaftStateMachine<C> for StoreShard {
    type SnapshotData = Snap;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<Mark, io::Error> {
        Ok(lock(&self.mark).clone())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let mut mark = lock(&self.mark).clone();
            mark.0 = Some(entry.log_id);
            let mut applied = Applied::Yes;
            let accounts = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    mark.1 = StoredMembershipOf::<C>::new(Some(entry.log_id), m.clone());
                    Vec::new()
                }
                EntryPayload::Normal(ShardEntry { term, items }) => {
                    let fenced = term.is_some_and(|t| t != entry.log_id.leader_id.term);
                    match if fenced { None } else { self.writes(items)? } {
                        Some(writes) => writes,
                        None => {
                            applied = Applied::Fenced;
                            Vec::new()
                        }
                    }
                }
            };
            self.write(accounts, &mark)?;
            *lock(&self.mark) = mark;
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, _meta: &SnapshotMetaOf<C>, _snapshot: Snap) -> Result<(), io::Error> {
        Err(io::Error::other("a store-backed group does not install snapshots: its log is kept whole"))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Snap>>, io::Error> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::BasicNode;
    use openraft::async_runtime::watch::WatchReceiver;

    use super::*;
    use crate::cluster::local::LocalNet;
    use crate::cluster::memory::MemoryLog;
    use crate::cluster::testing::{Ledger, config};
    use crate::store::MemoryStore;

    /// A group of one member on a memory store: each entry's answer comes
    /// from this state machine.
    #[tokio::test]
    async fn an_entry_applies_whole_only_in_its_term_and_where_it_continues_the_state() {
        let store = Arc::new(MemoryStore::new());
        let sm = StoreShard::open(3, store.clone(), 3_600_000, false).unwrap();
        let raft = openraft::Raft::<C, StoreShard>::new(
            1,
            config(50),
            LocalNet::default().factory(1),
            MemoryLog::default(),
            sm,
        )
        .await
        .unwrap();
        raft.initialize(BTreeMap::from([(1u64, BasicNode::default())])).await.unwrap();
        raft.wait(None).current_leader(1, "leads").await.unwrap();
        let term = raft.metrics().borrow_watched().current_term;
        let write = |entry: ShardEntry, fence: u64| {
            let raft = raft.clone();
            async move { raft.client_write(ShardEntry { term: Some(fence), ..entry }).await.unwrap().data }
        };
        let mut ledger = Ledger::new("acme");
        let (open, buy, buy2) = (ledger.open(), ledger.purchase("b1", 10), ledger.purchase("b2", 5));
        let id = ledger.id.clone();
        let stored = |store: &MemoryStore| store.load(&id).unwrap().map(|l| l.state);

        // Made in another term: nothing applied.
        assert_eq!(write(open.clone(), term + 1).await, Applied::Fenced);
        assert_eq!(stored(&store), None);
        assert_eq!(write(open, term).await, Applied::Yes);
        // A gap (made from memory ahead of what was applied): nothing.
        let opened = stored(&store);
        assert!(opened.is_some());
        assert_eq!(write(buy2.clone(), term).await, Applied::Fenced);
        assert_eq!(stored(&store), opened);
        assert_eq!(write(buy.clone(), term).await, Applied::Yes);
        assert_eq!(write(buy2, term).await, Applied::Yes);
        assert_eq!(stored(&store).as_ref(), ledger.account.state.as_ref(), "the ledger's own state");
        // Records the state already holds (made from memory behind it):
        // nothing, the state stays.
        assert_eq!(write(buy, term).await, Applied::Fenced);
        assert_eq!(stored(&store).as_ref(), ledger.account.state.as_ref());
        // Records at the right sequence that do not replay onto the state
        // (memory that differs from it): refused, and the group goes on.
        let mut forged = ledger.purchase("b3", 7);
        forged.items[0].records[0].balance_after = crate::ledger::Amount::whole(1_000);
        assert_eq!(write(forged, term).await, Applied::Fenced);
        assert_eq!(stored(&store).map(|s| s.balance()), Some(crate::ledger::Amount::whole(15)));
        let mut next = Ledger::new("other");
        assert_eq!(write(next.open(), term).await, Applied::Yes, "the group still applies entries");
        let applied = raft.metrics().borrow_watched().last_applied;
        raft.shutdown().await.unwrap();

        // The mark came with the state: a state machine opened on the same
        // store starts where this one stopped.
        let mut again = StoreShard::open(3, store.clone(), 3_600_000, false).unwrap();
        let (mark, membership) = again.applied_state().await.unwrap();
        assert_eq!(mark, applied);
        assert!(membership.membership().get_node(&1).is_some());
        let mut other = StoreShard::open(4, store, 3_600_000, false).unwrap();
        assert_eq!(other.applied_state().await.unwrap().0, None, "marks are per group");
    }
}
