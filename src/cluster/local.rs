//! Raft groups in one process: the members of a shard's group reach each
//! other through a shared registry instead of a network, and a test can cut
//! a member off (partition) and let it back. The deterministic cluster
//! simulation grows from this; the node link over gRPC has the same shape
//! (`RaftNetworkV2`, one client per target).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, OptionalSend};

use super::ShardRaft;
use super::memory::MemoryShard;

type C = ShardRaft;

/// What a local group's members run: any state machine whose snapshots are
/// bytes (`MemoryShard`, or `StoreShard` on a node's store).
pub trait LocalMachine: RaftStateMachine<C, SnapshotData = std::io::Cursor<Vec<u8>>> {}
impl<SM: RaftStateMachine<C, SnapshotData = std::io::Cursor<Vec<u8>>>> LocalMachine for SM {}

/// One member of a shard's group, on the in-memory store.
pub type LocalRaft = openraft::Raft<C, MemoryShard>;

/// Every member of a group in this process, by node id, and which of them
/// are cut off.
pub struct LocalNet<SM: LocalMachine = MemoryShard> {
    inner: Arc<Mutex<NetInner<SM>>>,
}

impl<SM: LocalMachine> Clone for LocalNet<SM> {
    fn clone(&self) -> Self {
        LocalNet { inner: Arc::clone(&self.inner) }
    }
}

impl<SM: LocalMachine> Default for LocalNet<SM> {
    fn default() -> Self {
        let inner = NetInner { members: BTreeMap::new(), cut: BTreeSet::new(), messages: 0 };
        LocalNet { inner: Arc::new(Mutex::new(inner)) }
    }
}

struct NetInner<SM: LocalMachine> {
    members: BTreeMap<u64, openraft::Raft<C, SM>>,
    cut: BTreeSet<u64>,
    /// Messages passed (appends and heartbeats, votes, snapshots, transfers).
    messages: u64,
}

fn lock<T>(net: &Mutex<T>) -> MutexGuard<'_, T> {
    net.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, thiserror::Error)]
#[error("node {0} cannot be reached")]
struct NoRoute(u64);

impl<SM: LocalMachine> LocalNet<SM> {
    pub fn add(&self, id: u64, raft: openraft::Raft<C, SM>) {
        lock(&self.inner).members.insert(id, raft);
    }

    pub fn remove(&self, id: u64) -> Option<openraft::Raft<C, SM>> {
        lock(&self.inner).members.remove(&id)
    }

    /// Cuts `id` off from every other member (`true`) or lets it back.
    pub fn cut(&self, id: u64, cut: bool) {
        let mut net = lock(&self.inner);
        if cut {
            net.cut.insert(id);
        } else {
            net.cut.remove(&id);
        }
    }

    /// Messages passed so far.
    pub fn messages(&self) -> u64 {
        lock(&self.inner).messages
    }

    /// The member `to` as seen from `from`, if a message can pass.
    fn route(&self, from: u64, to: u64) -> Result<openraft::Raft<C, SM>, RPCError<C>> {
        let mut net = lock(&self.inner);
        let raft = match net.members.get(&to) {
            Some(raft) if !net.cut.contains(&from) && !net.cut.contains(&to) => raft.clone(),
            _ => return Err(RPCError::Unreachable(Unreachable::new(&NoRoute(to)))),
        };
        net.messages += 1;
        Ok(raft)
    }

    /// The network factory of member `id`.
    pub fn factory(&self, id: u64) -> LocalFactory<SM> {
        LocalFactory { net: self.clone(), from: id }
    }
}

/// For tests: find the leader and write through it as a client would.
#[cfg(test)]
impl LocalNet<MemoryShard> {
    /// The member (not cut off) that says it leads, of the latest term if
    /// several do (a deposed one may not know it yet).
    pub(crate) async fn leading(&self) -> Option<LocalRaft> {
        let members: Vec<(u64, LocalRaft)> = {
            let net = lock(&self.inner);
            net.members.iter().filter(|(id, _)| !net.cut.contains(id)).map(|(id, r)| (*id, r.clone())).collect()
        };
        let mut best: Option<(u64, LocalRaft)> = None;
        for (id, raft) in members {
            if raft.current_leader().await == Some(id) {
                let term = raft.wait(None).metrics(|_| true, "term").await.map_or(0, |m| m.current_term);
                if best.as_ref().is_none_or(|(t, _)| term > *t) {
                    best = Some((term, raft));
                }
            }
        }
        best.map(|(_, raft)| raft)
    }

    /// Writes `entry` through whoever leads, again (the same entry: one
    /// applied twice changes nothing) until one commits it; its log index.
    pub(crate) async fn write(&self, entry: &super::ShardEntry) -> u64 {
        use std::time::Duration;
        for _ in 0..2_000 {
            if let Some(leader) = self.leading().await {
                let attempt = tokio::time::timeout(Duration::from_secs(2), leader.client_write(entry.clone()));
                if let Ok(Ok(written)) = attempt.await {
                    return written.log_id.index();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no leader committed the entry");
    }
}

pub struct LocalFactory<SM: LocalMachine = MemoryShard> {
    net: LocalNet<SM>,
    from: u64,
}

impl<SM: LocalMachine> RaftNetworkFactory<C> for LocalFactory<SM> {
    type Network = LocalLink<SM>;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> LocalLink<SM> {
        LocalLink { net: self.net.clone(), from: self.from, to: target }
    }
}

/// What member `from` sends to member `to`.
pub struct LocalLink<SM: LocalMachine = MemoryShard> {
    net: LocalNet<SM>,
    from: u64,
    to: u64,
}

fn unreachable(to: u64) -> impl Fn(openraft::errors::RaftError<C>) -> RPCError<C> {
    move |_| RPCError::Unreachable(Unreachable::new(&NoRoute(to)))
}

impl<SM: LocalMachine> RaftNetworkV2<C> for LocalLink<SM> {
    type SnapshotData = std::io::Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let target = self.net.route(self.from, self.to)?;
        target.append_entries(rpc).await.map_err(unreachable(self.to))
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, _option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        let target = self.net.route(self.from, self.to)?;
        target.vote(rpc).await.map_err(unreachable(self.to))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Self::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let target = self.net.route(self.from, self.to)?;
        target
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|_| StreamingError::Unreachable(Unreachable::new(&NoRoute(self.to))))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        let target = self.net.route(self.from, self.to)?;
        target.handle_transfer_leader(req).await.map_err(|_| RPCError::Unreachable(Unreachable::new(&NoRoute(self.to))))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cluster::memory::{MemoryLog, MemoryShard};
    use crate::cluster::testing::{Ledger, Members, agreed_leader, balance, config};
    use crate::ledger::Amount;

    /// Waits are bounded and generous: they end as soon as the group gets
    /// there, and only fail a test that would otherwise hang.
    const WAIT: Duration = Duration::from_secs(20);

    pub(super) async fn group(net: &LocalNet, ids: &[u64]) -> Members {
        let config = config(50);
        let mut members = BTreeMap::new();
        for &id in ids {
            let shard = MemoryShard::default();
            let raft = LocalRaft::new(id, Arc::clone(&config), net.factory(id), MemoryLog::default(), shard.clone())
                .await
                .unwrap();
            net.add(id, raft.clone());
            members.insert(id, (raft, shard));
        }
        members
    }

    async fn leader(members: &Members, among: &[u64]) -> u64 {
        agreed_leader(members, among).await
    }

    async fn applied(raft: &LocalRaft, index: u64) {
        raft.wait(Some(WAIT)).applied_index_at_least(Some(index), "applied").await.unwrap();
    }

    /// Three members of one shard's group: entries a leader commits reach
    /// every member's state; a leader cut off commits nothing (a write to it
    /// is never acknowledged), the other two elect a leader of a later term
    /// and go on; healed, the old leader takes the new log — its own
    /// uncommitted entry truncated — and all three states are equal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shard_group_replicates_fences_a_cut_off_leader_and_heals() {
        let net = LocalNet::default();
        let members = group(&net, &[1, 2, 3]).await;
        let nodes: BTreeMap<u64, BasicNode> = [1, 2, 3].into_iter().map(|id| (id, BasicNode::default())).collect();
        members[&1].0.initialize(nodes).await.unwrap();
        leader(&members, &[1, 2, 3]).await;
        let mut ledger = Ledger::new("acme");
        let mut last = 0;
        for entry in [ledger.open(), ledger.purchase("p1", 5), ledger.purchase("p2", 5), ledger.purchase("p3", 5)] {
            last = net.write(&entry).await;
        }
        // Leadership may have moved under load meanwhile: the leader now.
        let first = leader(&members, &[1, 2, 3]).await;
        for (raft, shard) in members.values() {
            applied(raft, last).await;
            assert_eq!(balance(shard, &ledger), Amount::whole(15));
        }
        let term = members[&first].0.wait(Some(WAIT)).metrics(|_| true, "term").await.unwrap().current_term;

        // Cut the leader off: what it is asked to write cannot commit.
        net.cut(first, true);
        // A purchase made on the ledger as the old leader holds it.
        let mut fenced = Ledger::new("acme");
        fenced.account = ledger.account.clone();
        let stale = members[&first].0.client_write(fenced.purchase("stale", 700));
        let stale = tokio::time::timeout(Duration::from_secs(2), stale).await;
        assert!(!matches!(stale, Ok(Ok(_))), "a leader cut off acknowledged a write: {stale:?}");
        let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != first).collect();
        let second = leader(&members, &rest).await;
        let now = members[&second].0.wait(Some(WAIT)).metrics(|_| true, "term").await.unwrap().current_term;
        assert!(now > term, "a new leader has a later term: {now} after {term}");
        let at = net.write(&ledger.purchase("p4", 5)).await;
        for id in &rest {
            applied(&members[id].0, at).await;
            assert_eq!(balance(&members[id].1, &ledger), Amount::whole(20));
        }
        assert_eq!(balance(&members[&first].1, &ledger), Amount::whole(15), "the cut-off member applied nothing new");

        // Healed: the old leader follows and converges on the new log.
        net.cut(first, false);
        applied(&members[&first].0, at).await;
        let state = members[&second].1.state();
        for (id, (_, shard)) in &members {
            assert_eq!(shard.state(), state, "member {id} holds the same state");
        }
        assert_eq!(balance(&members[&first].1, &ledger), Amount::whole(20), "the stale write was never applied");
        assert!(net.messages() > 0);
        for (raft, _) in members.values() {
            raft.shutdown().await.unwrap();
        }
    }
}

#[cfg(test)]
mod move_tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::cluster::memory::MemoryShard;
    use crate::cluster::testing::Ledger;
    use crate::ledger::Amount;

    /// A planned move of the leader's member to a fourth node while a
    /// writer keeps writing: every write acknowledged is applied once on
    /// every member of the group that results, the new member included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_planned_move_of_the_leader_loses_no_acknowledged_write() {
        let net = LocalNet::default();
        let shards: BTreeMap<u64, MemoryShard> =
            super::tests::group(&net, &[1, 2, 3, 4]).await.into_iter().map(|(id, (_, shard))| (id, shard)).collect();
        let handle = {
            let net = net.clone();
            move |id: u64| lock(&net.inner).members.get(&id).cloned()
        };
        let nodes: BTreeMap<u64, BasicNode> = (1..=3).map(|id| (id, BasicNode::default())).collect();
        handle(1).unwrap().initialize(nodes).await.unwrap();
        let mut from = None;
        for _ in 0..400 {
            from = handle(1).unwrap().current_leader().await;
            if from.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let from = from.expect("a leader");
        // The writer: one account, purchases of $5 in order; a write that
        // fails is sent again, the same entry, to whoever leads (an entry
        // applied twice changes nothing: its records are skipped).
        let writer = {
            let net = net.clone();
            tokio::spawn(async move {
                let mut ledger = Ledger::new("acme");
                let mut entries = vec![ledger.open()];
                entries.extend((0..300).map(|n| ledger.purchase(&format!("p{n}"), 5)));
                let (mut acked, mut gap, mut last) = (0u64, Duration::ZERO, Instant::now());
                let mut index = 0;
                for entry in entries {
                    index = net.write(&entry).await;
                    acked += 1;
                    gap = gap.max(last.elapsed());
                    last = Instant::now();
                }
                (acked, gap, ledger, index)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let moving = Instant::now();
        crate::cluster::moves::move_member(handle.clone(), from, 4, BasicNode::default()).await.unwrap();
        let moved_in = moving.elapsed();
        let (acked, gap, ledger, index) = writer.await.unwrap();
        assert_eq!(acked, 301);
        let leader = net.leading().await.expect("a leader after the move");
        let metrics = leader.wait(Some(Duration::from_secs(10))).metrics(|_| true, "m").await.unwrap();
        let voters: BTreeSet<u64> = metrics.membership_config.voter_ids().collect();
        let expected: BTreeSet<u64> = (1..=4).filter(|id| *id != from).collect();
        assert_eq!(voters, expected, "the moved member left, the new one votes");
        // Every member applies up to the last acknowledged write.
        for id in &expected {
            let member = handle(*id).unwrap();
            member.wait(Some(Duration::from_secs(10))).applied_index_at_least(Some(index), "applied").await.unwrap();
            let state = shards[id].state();
            let balance = state.accounts.get(&ledger.id).map_or(Amount::ZERO, |(s, _)| s.balance());
            assert_eq!(balance, Amount::whole(1_500), "member {id}: every acknowledged purchase, once");
            assert_eq!(state.accounts[&ledger.id].0, ledger.account.state.clone().unwrap(), "member {id}");
        }
        eprintln!("move of the leader's member: {moved_in:?}; longest wait between two acknowledged writes {gap:?}");
        for id in 1..=4 {
            if let Some(raft) = handle(id) {
                raft.shutdown().await.unwrap();
            }
        }
    }
}
