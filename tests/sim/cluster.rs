//! The cluster under the seeded simulation: four clustered nodes in one
//! process, each on a memory store and Raft logs of its own, each shard
//! group with three voters among them, the members of each group (and of
//! the controller) reaching each other through a `LocalNet` (a network of
//! their own per group), and the controller's calls to other nodes made
//! in-process (`LocalPeers`). The driver (`Sim`, in cluster mode) sends
//! its workload to any node, following `wrong_node` to the leader, while
//! the seed cuts a node off and heals it, crashes a node (its group members
//! and node stopped at once: what was in flight goes unanswered) and
//! restarts it from its store and logs, hands a group's lead to another
//! voter, and plans a move of a group's member to a node outside it (the
//! controller's mover runs it, under the other faults). Logs are purged
//! every 4 entries, so a node that was down or joins a group catches up
//! from snapshots as well as from the log.
//!
//! Checked, besides the auditor's checks of the single node: at most one
//! leader per group per term, the controller included (every member's view,
//! sampled at every step), and after the faults stop and node 1 is moved
//! into every group, every voter of a group holds the same state and
//! journal of every account of it.
//!
//! Not byte for byte: a seed fixes the workload and the fault schedule, but
//! openraft draws its election timeouts from a generator of its own, so two
//! runs of one seed may elect differently.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;

use openraft::BasicNode;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use prepaid::cluster::apply::StoreShard;
use prepaid::cluster::control::{
    Ask, Asked, Change, ControlMachine, Controller, MemoryDisk, Peers, Proposed, ShardMap, placement,
};
use prepaid::cluster::groups::{Groups, GroupsConfig, REPLACE_WAIT, Replaced};
use prepaid::cluster::local::LocalNet;
use prepaid::cluster::memory::MemoryLog;
use prepaid::store::MemoryStore;

use super::*;

pub const NODES: u64 = 4;
/// Voters per group.
const REPLICAS: usize = 3;
/// How many times the end of a run asks for node 1 to be moved into a
/// group before it calls that a finding.
const MOVE_TRIES: u32 = 12;
const SHARDS: u32 = 8;
const PER_GROUP: u32 = 4;
const GROUPS: u32 = SHARDS / PER_GROUP;
/// Bounded waits for the cluster to get somewhere: steps of 50 ms of
/// simulated time.
const WAIT_STEPS: u32 = 1_200;

pub struct Member {
    store: Arc<MemoryStore>,
    logs: Vec<MemoryLog>,
    /// Its member of the controller: its log and its map.
    control_log: MemoryLog,
    control_disk: MemoryDisk,
    /// The node, its groups and its controller while it runs.
    up: Option<(Node, Arc<Groups>, Arc<Controller>)>,
}

fn addr(id: u64) -> String {
    format!("sim-{id}:1")
}

/// A running node as the controller's calls reach it.
type Reached = (Weak<dyn Asked>, Weak<Groups>);

/// The nodes as the controller's calls reach them: in-process, by address;
/// a node cut off neither calls nor is called.
#[derive(Default)]
pub struct LocalPeers {
    nodes: Mutex<BTreeMap<String, Reached>>,
    cut: Mutex<Option<String>>,
}

/// `LocalPeers` as node `me` sees them.
struct PeersOf {
    me: String,
    all: Arc<LocalPeers>,
}

impl PeersOf {
    fn reach(&self, addr: &str) -> Result<(Arc<dyn Asked>, Arc<Groups>), String> {
        let cut = self.all.cut.lock().unwrap().clone();
        if cut.as_deref() == Some(addr) || cut.as_deref() == Some(self.me.as_str()) {
            return Err(format!("{addr} is cut off"));
        }
        let nodes = self.all.nodes.lock().unwrap();
        let (asked, groups) = nodes.get(addr).ok_or_else(|| format!("nobody at {addr}"))?;
        Ok((asked.upgrade().ok_or("stopped")?, groups.upgrade().ok_or("stopped")?))
    }
}

impl Peers for PeersOf {
    fn control<'a>(
        &'a self,
        addr: &'a str,
        ask: &'a Ask,
    ) -> Pin<Box<dyn Future<Output = Result<Proposed, String>> + Send + 'a>> {
        Box::pin(async move {
            let (asked, _) = self.reach(addr)?;
            Ok(asked.asked(ask.clone()).await)
        })
    }

    fn replace<'a>(
        &'a self,
        addr: &'a str,
        group: u32,
        from: u64,
        to: u64,
        to_addr: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Replaced, String>> + Send + 'a>> {
        Box::pin(async move {
            // Not reached: as over the node link, asked again once the
            // group has another leader.
            let groups = match self.reach(addr) {
                Ok((_, groups)) => groups,
                Err(why) => return Ok(Replaced::Unreachable(why)),
            };
            groups.replace_here(group, from, to, to_addr, REPLACE_WAIT).await
        })
    }
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Faults {
    pub crashes: u64,
    pub cuts: u64,
    pub transfers: u64,
    /// Group snapshots installed by members behind their leader's log.
    pub installs: u64,
    /// Moves of a group member planned (the controller refuses one that
    /// does not fit the map), and run to the end.
    pub moves: u64,
    pub moved: u64,
}

pub struct Cluster {
    members: BTreeMap<u64, Member>,
    nets: Vec<LocalNet<StoreShard>>,
    control_net: LocalNet<ControlMachine>,
    peers: Arc<LocalPeers>,
    clock: ManualClock,
    gateway: Arc<SimGateway>,
    cut: Option<u64>,
    /// Each (group, term) and the leader seen in it.
    leaders: BTreeMap<(u32, u64), u64>,
    pub faults: Faults,
}

fn node_config() -> NodeConfig {
    let mut cfg = config(Durability::Sync);
    cfg.node.shards = SHARDS;
    cfg.node.workers = 2;
    cfg
}

impl Cluster {
    /// Four nodes, each group with three voters among them (as `prepaid
    /// cluster init` places them), led by whoever the elections pick.
    pub async fn start(clock: ManualClock, gateway: Arc<SimGateway>) -> Cluster {
        let mut cluster = Cluster {
            members: BTreeMap::new(),
            nets: (0..GROUPS).map(|_| LocalNet::default()).collect(),
            control_net: LocalNet::default(),
            peers: Arc::new(LocalPeers::default()),
            clock,
            gateway,
            cut: None,
            leaders: BTreeMap::new(),
            faults: Faults::default(),
        };
        for id in 1..=NODES {
            let member = Member {
                store: Arc::new(MemoryStore::new()),
                logs: (0..GROUPS).map(|_| MemoryLog::default()).collect(),
                control_log: MemoryLog::default(),
                control_disk: MemoryDisk::default(),
                up: None,
            };
            cluster.members.insert(id, member);
            cluster.boot(id).await;
        }
        // What `Node::cluster_init` does: the controller, the map, each
        // group on its voters.
        let nodes: BTreeMap<u64, String> = (1..=NODES).map(|id| (id, addr(id))).collect();
        let (_, _, controller) = cluster.members[&1].up.as_ref().unwrap();
        controller.initialize(&nodes).await.unwrap();
        let ids: Vec<u64> = nodes.keys().copied().collect();
        let voters = placement(&ids, GROUPS, REPLICAS);
        let init = Change::Init { nodes: nodes.clone(), groups: voters.clone() };
        let mut made = false;
        for _ in 0..WAIT_STEPS {
            if controller.propose_local(init.clone()).await == Proposed::Done(1) {
                made = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(made, "the controller never took the map");
        for (group, voters) in voters.iter().enumerate() {
            let members: BTreeMap<u64, BasicNode> =
                voters.iter().map(|id| (*id, BasicNode { addr: addr(*id) })).collect();
            let (_, groups, _) = cluster.members[&voters[0]].up.as_ref().unwrap();
            groups.initialize_group(group as u32, members).await.unwrap();
        }
        cluster
    }

    /// Starts node `id` on what it has: its store, its logs.
    async fn boot(&mut self, id: u64) {
        let cfg = GroupsConfig {
            node_id: id,
            shards: SHARDS,
            shards_per_group: PER_GROUP,
            commit_timeout: Duration::from_secs(1),
            raft: openraft::Config {
                heartbeat_interval: 50,
                election_timeout_min: 150,
                election_timeout_max: 300,
                ..Default::default()
            },
            notice_ms: node_config().ledger.expiry_notice_ms,
            webhooks: false,
            balance_leaders: false,
            snapshot_log_entries: 4,
            snapshot_timeout: Duration::from_secs(10),
        };
        let member = &self.members[&id];
        let store: Arc<dyn Store> = member.store.clone();
        let (logs, nets) = (member.logs.clone(), self.nets.clone());
        let groups =
            Groups::start(cfg, Arc::clone(&store), |g| (logs[g as usize].clone(), nets[g as usize].factory(id)))
                .await
                .unwrap();
        for (g, net) in self.nets.iter().enumerate() {
            net.add(id, groups.raft(g as u32).clone());
        }
        let controller = Controller::start(
            id,
            groups.raft_config(),
            member.control_log.clone(),
            self.control_net.factory(id),
            Arc::new(member.control_disk.clone()),
        )
        .await
        .unwrap();
        self.control_net.add(id, controller.raft().clone());
        let clock = Arc::new(self.clock.clone());
        let mut node =
            Node::start_clustered_simulated(node_config(), store, clock, self.gateway.clone(), Arc::clone(&groups))
                .await
                .unwrap();
        node.attach_controller(Arc::clone(&controller));
        node.reach_peers_by(Arc::new(PeersOf { me: addr(id), all: Arc::clone(&self.peers) }));
        self.peers.nodes.lock().unwrap().insert(addr(id), (node.asked(), Arc::downgrade(&groups)));
        self.members.get_mut(&id).unwrap().up = Some((node, groups, controller));
    }

    /// Stops node `id` at once: its members first (nothing more commits
    /// through it), then the node (what it had taken is answered with
    /// errors, as a client of a dead node learns nothing).
    async fn crash(&mut self, id: u64) {
        let Some((node, groups, controller)) = self.members.get_mut(&id).unwrap().up.take() else { return };
        for net in &self.nets {
            net.remove(id);
        }
        self.control_net.remove(id);
        self.peers.nodes.lock().unwrap().remove(&addr(id));
        controller.shutdown().await;
        self.faults.installs += (0..GROUPS).map(|g| groups.snapshots_installed(g)).sum::<u64>();
        groups.shutdown().await;
        node.shutdown().await;
    }

    fn cut_off(&mut self, id: Option<u64>) {
        for net in &self.nets {
            if let Some(was) = self.cut {
                net.cut(was, false);
            }
            if let Some(id) = id {
                net.cut(id, true);
            }
        }
        if let Some(was) = self.cut {
            self.control_net.cut(was, false);
        }
        if let Some(id) = id {
            self.control_net.cut(id, true);
        }
        *self.peers.cut.lock().unwrap() = id.map(addr);
        self.cut = id;
    }

    /// The node a client reaches first: a running node not cut off.
    pub fn entry(&self) -> &Node {
        let up = self.members.iter().filter(|(id, m)| m.up.is_some() && Some(**id) != self.cut);
        let (_, m) = up.chain(self.members.iter().filter(|(_, m)| m.up.is_some())).next().unwrap();
        &m.up.as_ref().unwrap().0
    }

    /// Node `id`, if it runs.
    pub fn node(&self, id: u64) -> Option<&Node> {
        self.members.get(&id).and_then(|m| m.up.as_ref()).map(|(n, _, _)| n)
    }

    /// The map as the first running node not cut off applied it.
    fn map(&self) -> Arc<ShardMap> {
        self.entry().shard_map().expect("a controller")
    }

    /// One fault, picked by `roll`: a node down comes back, or one goes
    /// down; a node cut off is healed, or one is cut off; a group's lead is
    /// handed to another voter.
    pub async fn fault(&mut self, roll: u64, pick: u64, trace: &mut String) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        let down: Vec<u64> = ids.iter().copied().filter(|id| self.members[id].up.is_none()).collect();
        let target = ids[(pick % ids.len() as u64) as usize];
        match roll % 4 {
            0 => match down.first() {
                Some(&id) => {
                    trace.push_str(&format!("restart node {id}\n"));
                    self.boot(id).await;
                }
                // At most one node out at a time, cut or down: a majority
                // always remains.
                None if self.cut.is_none() => {
                    trace.push_str(&format!("crash node {target}\n"));
                    self.faults.crashes += 1;
                    self.crash(target).await;
                }
                None => {}
            },
            1 => match self.cut {
                Some(id) => {
                    trace.push_str(&format!("heal node {id}\n"));
                    self.cut_off(None);
                }
                None if down.is_empty() => {
                    trace.push_str(&format!("cut node {target} off\n"));
                    self.faults.cuts += 1;
                    self.cut_off(Some(target));
                }
                None => {}
            },
            3 => {
                // A planned move: a voter of a group to a node outside it,
                // asked of the node a client reaches (the controller refuses
                // one that no longer fits the map).
                let map = self.map();
                let group = (pick % u64::from(GROUPS)) as u32;
                let Some(g) = map.groups.get(group as usize) else { return };
                let voters: Vec<u64> = g.voters.iter().copied().collect();
                let outside: Vec<u64> = ids.iter().copied().filter(|id| !g.voters.contains(id)).collect();
                if voters.is_empty() || outside.is_empty() {
                    return;
                }
                let from = voters[((pick >> 8) % voters.len() as u64) as usize];
                let to = outside[((pick >> 16) % outside.len() as u64) as usize];
                let planned = self.entry().cluster_move(group, from, to).await;
                trace.push_str(&format!("group {group}: move from {from} to {to}: {planned:?}\n"));
                self.faults.moves += u64::from(planned.is_ok());
            }
            _ => {
                let group = (pick % u64::from(GROUPS)) as u32;
                // The leader of the latest term (one cut off may still
                // think it leads an older one).
                let leader = self
                    .members
                    .iter()
                    .filter_map(|(id, m)| {
                        let (_, groups, _) = m.up.as_ref()?;
                        let metrics = groups.raft(group).metrics();
                        let m = metrics.borrow_watched();
                        (m.state == ServerState::Leader).then_some((m.current_term, *id, groups.raft(group).clone()))
                    })
                    .max_by_key(|(term, id, _)| (*term, *id))
                    .map(|(_, id, raft)| (id, raft));
                let from = leader.as_ref().map(|l| l.0);
                let others: Vec<u64> = ids.iter().copied().filter(|id| Some(*id) != from).collect();
                let to = others.get(((pick >> 8) % others.len().max(1) as u64) as usize).copied();
                if let (Some((from, raft)), Some(to)) = (leader, to) {
                    trace.push_str(&format!("group {group}: lead from {from} to {to}\n"));
                    self.faults.transfers += 1;
                    let _ = raft.trigger().transfer_leader(to).await;
                }
            }
        }
    }

    /// Every member's view of who leads: two leaders in one term of one
    /// group is the one thing Raft must never allow.
    pub fn observe(&mut self) {
        for (id, m) in &self.members {
            let Some((_, groups, controller)) = &m.up else { continue };
            // The controller is group CONTROL here.
            let control = (prepaid::cluster::control::CONTROL, controller.raft().metrics());
            let all = (0..GROUPS).map(|g| (g, groups.raft(g).metrics())).chain(std::iter::once(control));
            for (group, metrics) in all {
                let m = metrics.borrow_watched();
                if m.state != ServerState::Leader {
                    continue;
                }
                let seen = *self.leaders.entry((group, m.current_term)).or_insert(*id);
                assert_eq!(seen, *id, "group {group}, term {}: led by node {seen} and node {id}", m.current_term);
            }
        }
    }

    /// Faults off: the node cut off is healed and every node down comes
    /// back.
    pub async fn heal(&mut self) {
        self.cut_off(None);
        let down: Vec<u64> = self.members.iter().filter(|(_, m)| m.up.is_none()).map(|(id, _)| *id).collect();
        for id in down {
            self.boot(id).await;
        }
    }

    /// Waits (bounded) until every node applied the same map and it plans
    /// no more moves (a node's own map may be behind the controller's: a
    /// move just planned not in it yet): that map.
    async fn settled_map(&self) -> Option<Arc<ShardMap>> {
        for _ in 0..WAIT_STEPS {
            let maps: Vec<Arc<ShardMap>> =
                self.members.values().filter_map(|m| m.up.as_ref()).map(|(_, _, c)| c.map()).collect();
            if maps.iter().all(|m| m.version == maps[0].version && m.moves.is_empty()) {
                return Some(Arc::clone(&maps[0]));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Waits until the planned moves have run, moves node 1 into every
    /// group (its store then holds every account, for the audit), and
    /// waits until every voter of every group has applied what the group's
    /// leader holds; then stops every node. Every voter of a group then
    /// holds the same state and journal of every account of it in
    /// `accounts`; the store of node 1, for the audit.
    pub async fn converge_and_stop(mut self, accounts: &[AccountId], seed: u64) -> (Arc<MemoryStore>, Faults) {
        let settled = self.settled_map().await;
        assert!(settled.is_some(), "seed {seed}: planned moves never ran: {:?}", self.map());
        for group in 0..GROUPS {
            // Asked again while the map it was read from is behind the
            // controller's (a move already planned or run), or a move
            // failed: a few times at most (each is up to the mover's wait),
            // then a finding, with every node's view of the group.
            let mut planned = Err(Error::ShuttingDown);
            for _ in 0..MOVE_TRIES {
                let map = self.settled_map().await.expect("the maps settle");
                let voters = &map.groups[group as usize].voters;
                if voters.contains(&1) {
                    planned = Ok(map.version);
                    break;
                }
                let from = *voters.iter().next().unwrap();
                planned = self.node(1).unwrap().cluster_move(group, from, 1).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let map = self.map();
            if planned.is_err() || !map.groups[group as usize].voters.contains(&1) {
                let mut views = String::new();
                for (id, m) in &self.members {
                    let (_, groups, _) = m.up.as_ref().unwrap();
                    let x = groups.raft(group).metrics().borrow_watched().clone();
                    views.push_str(&format!(
                        "\n  node {id}: {:?} term {} leader {:?} last {:?} applied {:?} {:?}",
                        x.state,
                        x.current_term,
                        x.current_leader,
                        x.last_log_index,
                        x.last_applied.map(|l| l.index),
                        x.membership_config.membership()
                    ));
                }
                panic!("seed {seed}: node 1 not moved into group {group}: {planned:?}; moves {:?}{views}", map.done);
            }
        }
        let map = self.settled_map().await.expect("the maps settle");
        for g in &map.groups {
            assert!(g.voters.contains(&1) && g.voters.len() == REPLICAS, "seed {seed}: {map:?}");
        }
        self.faults.moved = map.done.iter().filter(|(_, outcome)| outcome.is_ok()).count() as u64;
        for group in 0..GROUPS {
            let voters: Vec<u64> = map.groups[group as usize].voters.iter().copied().collect();
            // Level: every voter follows one leader in one term and has
            // applied all of that leader's log (a member just healed may
            // still think it leads, with a shorter log, for a moment).
            let mut level = false;
            let mut seen = String::new();
            for _ in 0..WAIT_STEPS {
                self.observe();
                let views: BTreeMap<u64, _> = voters
                    .iter()
                    .map(|id| {
                        let (_, groups, _) = self.members[id].up.as_ref().unwrap();
                        let metrics = groups.raft(group).metrics();
                        let m = metrics.borrow_watched();
                        let v = (m.current_term, m.current_leader, m.last_log_index, m.last_applied.map(|l| l.index));
                        (*id, v)
                    })
                    .collect();
                let (term, leader, _, _) = views[&voters[0]];
                let last = leader.and_then(|l| views.get(&l)).and_then(|v| v.2);
                level = leader.is_some()
                    && views.values().all(|v| v.0 == term && v.1 == leader && v.3 == last && v.2 == last);
                if level {
                    break;
                }
                seen = format!("{views:?}");
                for id in &voters {
                    let (_, groups, _) = self.members[id].up.as_ref().unwrap();
                    let m = groups.raft(group).metrics().borrow_watched().membership_config.clone();
                    seen.push_str(&format!("\n  node {id}: {m:?}"));
                }
                for (id, m) in &self.members {
                    let (_, _, controller) = m.up.as_ref().unwrap();
                    let c = controller.raft().metrics().borrow_watched().clone();
                    let map = controller.map();
                    seen.push_str(&format!(
                        "\n  controller on node {id}: term {} leader {:?} applied {:?} log {:?}; map version {} \
                         groups {:?} moves {:?} voters {:?}",
                        c.current_term,
                        c.current_leader,
                        c.last_applied.map(|l| l.index),
                        c.last_log_index,
                        map.version,
                        map.groups.iter().map(|g| &g.voters).collect::<Vec<_>>(),
                        map.moves,
                        c.membership_config.membership()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(level, "seed {seed}: group {group}'s voters {voters:?} never applied the same log: {seen}");
            // The map says what the group's own log says: its voters, no
            // change left half made.
            let (_, groups, _) = self.members[&voters[0]].up.as_ref().unwrap();
            let m = groups.raft(group).metrics().borrow_watched().membership_config.clone();
            let committed: BTreeSet<u64> = m.membership().voter_ids().collect();
            assert_eq!(m.membership().get_joint_config().len(), 1, "seed {seed}: group {group} left joint: {m:?}");
            assert_eq!(
                committed.into_iter().collect::<Vec<_>>(),
                voters,
                "seed {seed}: group {group}'s voters in its log differ from the map's"
            );
        }
        for id in self.members.keys().copied().collect::<Vec<_>>() {
            self.crash(id).await;
        }
        let first = Arc::clone(&self.members[&1].store);
        for account in accounts {
            let group = account.shard(u64::from(SHARDS)) as u32 / PER_GROUP;
            let voters: BTreeSet<u64> = map.groups[group as usize].voters.clone();
            let state = first.load(account).unwrap().map(|l| l.state);
            let journal = first.history(account, 0, u32::MAX).unwrap();
            for (id, m) in self.members.iter().filter(|(id, _)| voters.contains(id)) {
                assert_eq!(
                    m.store.load(account).unwrap().map(|l| l.state),
                    state,
                    "seed {seed}: {account} on node {id}"
                );
                assert_eq!(
                    m.store.history(account, 0, u32::MAX).unwrap(),
                    journal,
                    "seed {seed}: {account}'s journal on node {id}"
                );
            }
        }
        (first, self.faults)
    }
}
