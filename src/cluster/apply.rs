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
//! **Snapshots.** The state a group's log folds into is already in the
//! store, so a snapshot that lets the log be purged (`build_snapshot`)
//! copies nothing: it syncs the store, so everything applied up to the
//! mark outlives the log entries openraft then drops, and names the mark.
//! The bytes are made only when a member needs them — a follower behind
//! what its leader's log still holds, a new member (`get_current_snapshot`,
//! asked by openraft between two applies, so they are the state at the
//! mark): an `Image` of every account of the group's shards, whole (its
//! state, every journal record from the first, its idempotency records).
//! The member that receives it checks each account's records replay to its
//! state, then replaces everything its store holds for those shards with
//! the image and the mark in one synced write (`Store::replace_shards`).
//! While its node opens (`Raft::new`), a member offers no snapshot
//! (`ready`): openraft asks for one at start, and an image of the whole
//! group there would be made for nothing.

use std::collections::HashMap;
use std::io;
use std::io::Cursor;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::{Applied, ShardEntry, ShardRaft};
use crate::codec::LogItem;
use crate::ledger::{AccountId, AccountState, DedupRecord, EventRecord, IdemKey};
use crate::store::{AccountWrite, Replacement, Store, WriteSet};

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

/// The version byte an image starts with.
const IMAGE_VERSION: u8 = 1;

/// Journal records read per `Store::history` call while an image is made.
const IMAGE_HISTORY_PAGE: u32 = 4_096;

/// A group's snapshot: every account of its shards, whole.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Image {
    group: u32,
    accounts: Vec<ImageAccount>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct ImageAccount {
    state: AccountState,
    /// Every journal record, from the first: they replay to `state`.
    records: Vec<EventRecord>,
    dedup: Vec<(IdemKey, DedupRecord)>,
    /// How far webhooks delivered its events (its cursor; 0: none).
    delivered: u64,
}

/// An image made, and the mark it was made at.
type Made = (Option<LogIdOf<C>>, Arc<Vec<u8>>);

/// Where a group's accounts live: its shards, of the node's `total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub shards: Range<u32>,
    pub total: u32,
}

/// One group's state machine over the node's store. Clones share it.
#[derive(Clone)]
pub struct StoreShard {
    group: u32,
    placement: Placement,
    store: Arc<dyn Store>,
    /// `ledger.expiry_notice_ms`: an account's next deadline, for the
    /// timer index, depends on it.
    notice_ms: u64,
    webhooks: bool,
    mark: Arc<Mutex<Mark>>,
    /// Whether `get_current_snapshot` makes images (not while the node
    /// opens the group).
    ready: Arc<AtomicBool>,
    /// The last image made, and the mark it was made at, until the group
    /// applies past it.
    image: Arc<Mutex<Option<Made>>>,
    /// Snapshots installed since the member opened.
    installed: Arc<AtomicU64>,
}

impl StoreShard {
    /// The group's state machine, as far as the store says it is applied.
    /// It offers no snapshot until `ready`.
    pub fn open(
        group: u32,
        placement: Placement,
        store: Arc<dyn Store>,
        notice_ms: u64,
        webhooks: bool,
    ) -> Result<StoreShard, crate::store::StoreError> {
        let mark = match store.raft_mark(group)? {
            Some(bytes) => postcard::from_bytes(&bytes)
                .map_err(|e| crate::store::StoreError::Corrupt(format!("group {group}'s raft mark: {e}")))?,
            None => (None, StoredMembershipOf::<C>::default()),
        };
        let (mark, ready) = (Arc::new(Mutex::new(mark)), Arc::new(AtomicBool::new(false)));
        let (image, installed) = (Arc::default(), Arc::default());
        Ok(StoreShard { group, placement, store, notice_ms, webhooks, mark, ready, image, installed })
    }

    /// The member is open: from now on it makes an image for whoever asks
    /// for the group's snapshot.
    pub fn ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Snapshots this member installed since it opened.
    pub fn installed(&self) -> u64 {
        self.installed.load(Ordering::Relaxed)
    }

    /// The snapshot's meta at `mark`.
    fn meta(mark: &Mark) -> SnapshotMetaOf<C> {
        SnapshotMetaOf::<C> { last_log_id: mark.0, last_membership: mark.1.clone() }
    }

    /// Every account of the group's shards as the store holds it now.
    fn image(&self) -> Result<Vec<u8>, crate::store::StoreError> {
        let Placement { shards, total } = self.placement.clone();
        let mut accounts = Vec::new();
        for id in self.store.accounts_in(shards, total)? {
            let Some(loaded) = self.store.load(&id)? else { continue };
            let mut records: Vec<EventRecord> = Vec::new();
            loop {
                let after = records.last().map_or(0, |r| r.seq);
                let page = self.store.history(&id, after, IMAGE_HISTORY_PAGE)?;
                let full = page.len() == IMAGE_HISTORY_PAGE as usize;
                records.extend(page);
                if !full {
                    break;
                }
            }
            let (dedup, delivered) = (self.store.dedup_all(&id)?, self.store.webhook_cursor(&id)?);
            accounts.push(ImageAccount { state: loaded.state, records, dedup, delivered });
        }
        postcard::to_extend(&Image { group: self.group, accounts }, vec![IMAGE_VERSION])
            .map_err(|e| crate::store::StoreError::Corrupt(format!("group {}'s image: {e}", self.group)))
    }

    /// What installing an image writes, each account checked: in the
    /// group's shards, its records from the first replaying to its state.
    fn read_image(&self, bytes: &[u8], raft_mark: Vec<u8>) -> Result<Replacement, io::Error> {
        let Some((&IMAGE_VERSION, rest)) = bytes.split_first() else {
            return Err(broken(format!("group {}: a snapshot of another format", self.group)));
        };
        let image: Image = postcard::from_bytes(rest).map_err(broken)?;
        if image.group != self.group {
            return Err(broken(format!("group {}: given the snapshot of group {}", self.group, image.group)));
        }
        let mut writes = Vec::with_capacity(image.accounts.len());
        let mut delivered = Vec::new();
        for ImageAccount { state, records, dedup, delivered: cursor } in image.accounts {
            let id = state.id.clone();
            let shard = id.shard(u64::from(self.placement.total)) as u32;
            if !self.placement.shards.contains(&shard) {
                return Err(broken(format!("group {}: the snapshot holds account {id} of shard {shard}", self.group)));
            }
            let mut folded: Option<AccountState> = None;
            for record in &records {
                match folded.as_mut() {
                    Some(s) => s.replay(record),
                    None => AccountState::open(id.clone(), record).map(|s| folded = Some(s)),
                }
                .map_err(|e| broken(format!("account {id} in group {}'s snapshot: {e}", self.group)))?;
            }
            if folded.as_ref() != Some(&state) {
                return Err(broken(format!(
                    "account {id} in group {}'s snapshot: its records do not make its state",
                    self.group
                )));
            }
            if cursor > 0 {
                delivered.push((id.clone(), cursor));
            }
            writes.push(AccountWrite {
                id,
                records,
                timer_before: None,
                timer_after: state.next_deadline_ms(self.notice_ms),
                in_flight_changed: true,
                snapshot: Arc::new(state),
                dedup,
            });
        }
        let Placement { shards, total } = self.placement.clone();
        Ok(Replacement {
            shards,
            total,
            accounts: writes,
            webhooks: self.webhooks,
            delivered,
            raft_mark: (self.group, raft_mark),
        })
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

    /// The webhook deliveries an entry carries: each account's cursor
    /// moves forward to it, never back. Written before the entry's mark: a
    /// crash in between applies them again.
    fn deliveries(&self, cursors: &[(AccountId, u64)]) -> Result<(), io::Error> {
        let failed = |e: crate::store::StoreError| io::Error::other(e.to_string());
        for (id, seq) in cursors {
            if self.store.webhook_cursor(id).map_err(failed)? < *seq {
                self.store.set_webhook_cursor(id, *seq).map_err(failed)?;
            }
        }
        Ok(())
    }

    /// Writes `accounts` and the mark, atomically (not synced: the log is).
    fn write(&self, accounts: Vec<AccountWrite>, mark: &Mark) -> Result<(), io::Error> {
        let bytes = postcard::to_allocvec(mark).map_err(broken)?;
        let set = WriteSet { accounts, webhooks: self.webhooks, raft_mark: Some((self.group, bytes)) };
        self.store.write_owned(set, false).map_err(|e| io::Error::other(e.to_string()))
    }
}

/// A snapshot to purge the log by: the mark when openraft asked for it.
pub struct MarkBuilder {
    shard: StoreShard,
    mark: Mark,
}

impl RaftSnapshotBuilder<C> for MarkBuilder {
    type SnapshotData = Snap;

    /// The state up to the mark is in the store; synced here, it outlives
    /// the log entries openraft drops once this returns. The bytes are
    /// left empty: a member that needs the state gets an image
    /// (`get_current_snapshot`).
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Snap>, io::Error> {
        self.shard.store.sync().map_err(|e| io::Error::other(e.to_string()))?;
        Ok(SnapshotOf::<C, Snap> { meta: StoreShard::meta(&self.mark), snapshot: Cursor::new(Vec::new()) })
    }
}

impl RaftStateMachine<C> for StoreShard {
    type SnapshotData = Snap;
    type SnapshotBuilder = MarkBuilder;

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
                EntryPayload::Normal(ShardEntry { term, items, cursors, .. }) => {
                    self.deliveries(cursors)?;
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
        // The group moved past the image kept for it: let it go (an image
        // is up to 256 MiB) rather than hold it until the next is asked for.
        lock(&self.image).take();
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MarkBuilder { shard: self.clone(), mark: lock(&self.mark).clone() }
    }

    /// Replaces the group's accounts with the image's, whole, and takes its
    /// mark (one synced write). Refused, with nothing written, when the
    /// image is not this group's or an account's records do not make its
    /// state.
    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<C>, snapshot: Snap) -> Result<(), io::Error> {
        let mark: Mark = (meta.last_log_id, meta.last_membership.clone());
        let bytes = postcard::to_allocvec(&mark).map_err(broken)?;
        let replacement = self.read_image(snapshot.get_ref(), bytes)?;
        let count = replacement.accounts.len();
        self.store.replace_shards(replacement).map_err(|e| io::Error::other(e.to_string()))?;
        *lock(&self.mark) = mark;
        self.installed.fetch_add(1, Ordering::Relaxed);
        let at = meta.last_log_id.as_ref().map(|l| l.index);
        tracing::info!(group = self.group, accounts = count, at, "installed the group's snapshot");
        Ok(())
    }

    /// An image of the group at the mark (asked between two applies, so
    /// nothing moves under it). openraft stops the group's member if this
    /// fails or offers none while a member waits for it, so an image past
    /// what the node link carries is still offered: its sending fails and
    /// is tried again, and the error says why.
    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Snap>>, io::Error> {
        if !self.ready.load(Ordering::Acquire) {
            return Ok(None);
        }
        let mark = lock(&self.mark).clone();
        // The same mark, the same image: a member that asks again (a send
        // that failed, another member behind) does not make it again.
        let cached = lock(&self.image).as_ref().filter(|(at, _)| *at == mark.0).map(|(_, bytes)| Arc::clone(bytes));
        let bytes = match cached {
            Some(bytes) => bytes,
            None => {
                let bytes = Arc::new(self.image().map_err(|e| io::Error::other(e.to_string()))?);
                *lock(&self.image) = Some((mark.0, Arc::clone(&bytes)));
                bytes
            }
        };
        if bytes.len() > IMAGE_MAX_BYTES {
            tracing::error!(
                group = self.group,
                bytes = bytes.len(),
                max = IMAGE_MAX_BYTES,
                "the group's snapshot is larger than the node link carries: a member behind the log cannot catch up"
            );
        }
        Ok(Some(SnapshotOf::<C, Snap> { meta: StoreShard::meta(&mark), snapshot: Cursor::new(bytes.to_vec()) }))
    }
}

/// The largest image sent: one node link message, less room for its
/// envelope (the vote and the meta).
pub const IMAGE_MAX_BYTES: usize = super::link::LINK_MESSAGE_BYTES - 64 * 1024;

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

    /// The whole store, one group.
    fn placement() -> Placement {
        Placement { shards: 0..8, total: 8 }
    }

    /// A one-member group on `sm`, led and ready for writes.
    async fn alone(sm: StoreShard) -> openraft::Raft<C, StoreShard> {
        let raft = openraft::Raft::<C, StoreShard>::new(
            1,
            config(50),
            LocalNet::<StoreShard>::default().factory(1),
            MemoryLog::default(),
            sm,
        )
        .await
        .unwrap();
        raft.initialize(BTreeMap::from([(1u64, BasicNode::default())])).await.unwrap();
        raft.wait(None).current_leader(1, "leads").await.unwrap();
        raft
    }

    /// What a store would hold after `entries` of one ledger, as one write.
    fn written(ledger: &Ledger, entries: &[ShardEntry]) -> AccountWrite {
        let items = entries.iter().flat_map(|e| e.items.iter());
        AccountWrite {
            id: ledger.id.clone(),
            records: items.clone().flat_map(|i| i.records.clone()).collect(),
            snapshot: Arc::new(ledger.account.state.clone().unwrap()),
            dedup: items.flat_map(|i| i.dedup.clone()).collect(),
            timer_before: None,
            timer_after: None,
            in_flight_changed: false,
        }
    }

    /// A group's image, made from one member's store and installed on
    /// another's, replaces exactly the group's accounts there — state,
    /// every journal record, idempotency records — and leaves other
    /// groups' shards alone; the mark comes with it. An image whose
    /// records do not make an account's state, or another group's image,
    /// is refused and changes nothing.
    #[tokio::test]
    async fn a_group_image_replaces_the_groups_accounts_on_another_member() {
        let half = Placement { shards: 0..4, total: 8 };
        let shard = |name: &String| AccountId::new(name).unwrap().shard(8) as u32;
        let names = |prefix: &str, inside: bool| -> Vec<String> {
            (0..)
                .map(|i| format!("{prefix}-{i}"))
                .filter(|n| half.shards.contains(&shard(n)) == inside)
                .take(3)
                .collect()
        };
        let (inside, outside) = (names("in", true), names("out", false));

        // Webhooks on: each account's written mark comes with its records.
        let store = Arc::new(MemoryStore::new());
        let sm = StoreShard::open(0, half.clone(), store.clone(), 3_600_000, true).unwrap();
        let raft = alone(sm.clone()).await;
        for name in &inside {
            let mut ledger = Ledger::new(name);
            for entry in [ledger.open(), ledger.purchase("b1", 10), ledger.purchase("b2", 5)] {
                assert_eq!(raft.client_write(entry).await.unwrap().data, Applied::Yes);
            }
        }
        store.set_webhook_cursor(&AccountId::new(&inside[0]).unwrap(), 2).unwrap();
        let mut asked = sm.clone();
        assert!(asked.get_current_snapshot().await.unwrap().is_none(), "no image while the member opens");
        sm.ready();
        let snap = asked.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(snap.meta.last_log_id, raft.metrics().borrow_watched().last_applied);
        raft.shutdown().await.unwrap();

        // The other member holds an older state of one of the group's
        // accounts, an account the group no longer has, and an account of
        // another group's shards.
        let other = Arc::new(MemoryStore::new());
        let mut behind = Ledger::new(&inside[0]);
        let behind_entries = [behind.open(), behind.purchase("old", 99)];
        let mut gone = Ledger::new(&names("gone", true)[0]);
        let gone_entries = [gone.open()];
        let mut elsewhere = Ledger::new(&outside[0]);
        let elsewhere_entries = [elsewhere.open(), elsewhere.purchase("e", 6)];
        let accounts = vec![
            written(&behind, &behind_entries),
            written(&gone, &gone_entries),
            written(&elsewhere, &elsewhere_entries),
        ];
        other.write(&WriteSet { accounts, ..WriteSet::default() }, true).unwrap();
        let before = |id: &AccountId| other.load(id).unwrap().map(|l| l.state);
        let (behind_before, elsewhere_before) = (before(&behind.id), before(&elsewhere.id));
        let elsewhere_history = other.history(&elsewhere.id, 0, 10).unwrap();

        // Refused whole: an account whose records do not make its state,
        // and another group's image.
        let mut image: Image = postcard::from_bytes(&snap.snapshot.get_ref()[1..]).unwrap();
        image.accounts[0].records.pop();
        let forged = postcard::to_extend(&image, vec![IMAGE_VERSION]).unwrap();
        let mut target = StoreShard::open(0, half.clone(), other.clone(), 3_600_000, true).unwrap();
        assert!(target.install_snapshot(&snap.meta, Cursor::new(forged)).await.is_err());
        let mut stranger = StoreShard::open(1, half.clone(), other.clone(), 3_600_000, false).unwrap();
        assert!(stranger.install_snapshot(&snap.meta, snap.snapshot.clone()).await.is_err());
        assert_eq!(before(&behind.id), behind_before, "nothing written");
        assert!(before(&gone.id).is_some());
        assert_eq!(target.applied_state().await.unwrap().0, None);

        target.install_snapshot(&snap.meta, snap.snapshot.clone()).await.unwrap();
        for name in &inside {
            let id = AccountId::new(name).unwrap();
            let (there, here) = (store.load(&id).unwrap().unwrap(), other.load(&id).unwrap().unwrap());
            assert_eq!(here, there, "account {id}");
            assert_eq!(other.history(&id, 0, 1_000).unwrap(), store.history(&id, 0, 1_000).unwrap());
            assert_eq!(other.dedup_all(&id).unwrap(), store.dedup_all(&id).unwrap());
            assert_eq!(other.dedup_all(&id).unwrap().len(), 2);
        }
        assert_ne!(before(&behind.id), behind_before, "the older state is replaced");
        assert_eq!(target.installed(), 1);
        // Webhook marks came with the accounts: what was delivered, and
        // what is still to deliver.
        let pending = |s: &MemoryStore| {
            let mut p: Vec<_> = s
                .webhook_pending()
                .unwrap()
                .into_iter()
                .filter(|(id, ..)| half.shards.contains(&(id.shard(8) as u32)))
                .collect();
            p.sort();
            p
        };
        assert_eq!(pending(&other), pending(&store));
        assert_eq!(pending(&other).len(), inside.len());
        assert_eq!(other.webhook_cursor(&AccountId::new(&inside[0]).unwrap()).unwrap(), 2);
        assert_eq!(before(&gone.id), None, "an account the group does not have is gone");
        assert_eq!(other.history(&gone.id, 0, 10).unwrap(), vec![]);
        assert_eq!(before(&elsewhere.id), elsewhere_before, "another group's shards are untouched");
        assert_eq!(other.history(&elsewhere.id, 0, 10).unwrap(), elsewhere_history);
        assert!(!elsewhere_history.is_empty());
        // The mark came with the state.
        let (mark, membership) = target.applied_state().await.unwrap();
        assert_eq!(mark, snap.meta.last_log_id);
        let mut reopened = StoreShard::open(0, half, other.clone(), 3_600_000, false).unwrap();
        assert_eq!(reopened.applied_state().await.unwrap(), (mark, membership));
    }

    /// A group of one member on a memory store: each entry's answer comes
    /// from this state machine.
    #[tokio::test]
    async fn an_entry_applies_whole_only_in_its_term_and_where_it_continues_the_state() {
        let store = Arc::new(MemoryStore::new());
        let sm = StoreShard::open(3, placement(), store.clone(), 3_600_000, false).unwrap();
        let raft = alone(sm).await;
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
        let mut again = StoreShard::open(3, placement(), store.clone(), 3_600_000, false).unwrap();
        let (mark, membership) = again.applied_state().await.unwrap();
        assert_eq!(mark, applied);
        assert!(membership.membership().get_node(&1).is_some());
        let mut other = StoreShard::open(4, placement(), store, 3_600_000, false).unwrap();
        assert_eq!(other.applied_state().await.unwrap().0, None, "marks are per group");
    }
}
