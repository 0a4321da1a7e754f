//! The cluster under the seeded simulation: three clustered nodes in one
//! process, each on a memory store and Raft logs of its own, the members of
//! each shard group reaching each other through a `LocalNet` (a network of
//! their own per group). The driver (`Sim`, in cluster mode) sends its
//! workload to any node, following `wrong_node` to the leader, while the
//! seed cuts a node off and heals it, crashes a node (its group members and
//! node stopped at once: what was in flight goes unanswered) and restarts
//! it from its store and logs, and hands a group's lead to another voter.
//! Logs are purged every 4 entries, so a node that was down catches up
//! from snapshots as well as from the log.
//!
//! Checked, besides the auditor's checks of the single node: at most one
//! leader per group per term (every member's view, sampled at every step),
//! and after the faults stop, every node holds the same state and journal
//! of every account.
//!
//! Not byte for byte: a seed fixes the workload and the fault schedule, but
//! openraft draws its election timeouts from a generator of its own, so two
//! runs of one seed may elect differently.

use openraft::BasicNode;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use prepaid::cluster::apply::StoreShard;
use prepaid::cluster::groups::{Groups, GroupsConfig};
use prepaid::cluster::local::LocalNet;
use prepaid::cluster::memory::MemoryLog;
use prepaid::store::MemoryStore;

use super::*;

pub const NODES: u64 = 3;
const SHARDS: u32 = 8;
const PER_GROUP: u32 = 4;
const GROUPS: u32 = SHARDS / PER_GROUP;
/// Bounded waits for the cluster to get somewhere: steps of 50 ms of
/// simulated time.
const WAIT_STEPS: u32 = 1_200;

pub struct Member {
    store: Arc<MemoryStore>,
    logs: Vec<MemoryLog>,
    /// The node and its groups while it runs.
    up: Option<(Node, Arc<Groups>)>,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Faults {
    pub crashes: u64,
    pub cuts: u64,
    pub transfers: u64,
    /// Group snapshots installed by members behind their leader's log.
    pub installs: u64,
}

pub struct Cluster {
    members: BTreeMap<u64, Member>,
    nets: Vec<LocalNet<StoreShard>>,
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
    /// Three nodes, every group's voters, led by whoever the elections
    /// pick.
    pub async fn start(clock: ManualClock, gateway: Arc<SimGateway>) -> Cluster {
        let mut cluster = Cluster {
            members: BTreeMap::new(),
            nets: (0..GROUPS).map(|_| LocalNet::default()).collect(),
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
                up: None,
            };
            cluster.members.insert(id, member);
            cluster.boot(id).await;
        }
        let voters: BTreeMap<u64, BasicNode> = (1..=NODES).map(|id| (id, BasicNode::default())).collect();
        cluster.members[&1].up.as_ref().unwrap().1.initialize(&voters).await.unwrap();
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
        let clock = Arc::new(self.clock.clone());
        let node =
            Node::start_clustered_simulated(node_config(), store, clock, self.gateway.clone(), Arc::clone(&groups))
                .await
                .unwrap();
        self.members.get_mut(&id).unwrap().up = Some((node, groups));
    }

    /// Stops node `id` at once: its members first (nothing more commits
    /// through it), then the node (what it had taken is answered with
    /// errors, as a client of a dead node learns nothing).
    async fn crash(&mut self, id: u64) {
        let Some((node, groups)) = self.members.get_mut(&id).unwrap().up.take() else { return };
        for net in &self.nets {
            net.remove(id);
        }
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
        self.members.get(&id).and_then(|m| m.up.as_ref()).map(|(n, _)| n)
    }

    /// One fault, picked by `roll`: a node down comes back, or one goes
    /// down; a node cut off is healed, or one is cut off; a group's lead is
    /// handed to another voter.
    pub async fn fault(&mut self, roll: u64, pick: u64, trace: &mut String) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        let down: Vec<u64> = ids.iter().copied().filter(|id| self.members[id].up.is_none()).collect();
        let target = ids[(pick % ids.len() as u64) as usize];
        match roll % 3 {
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
            _ => {
                let group = (pick % u64::from(GROUPS)) as u32;
                // The leader of the latest term (one cut off may still
                // think it leads an older one).
                let leader = self
                    .members
                    .iter()
                    .filter_map(|(id, m)| {
                        let (_, groups) = m.up.as_ref()?;
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
            let Some((_, groups)) = &m.up else { continue };
            for group in 0..GROUPS {
                let metrics = groups.raft(group).metrics();
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

    /// Waits until every member of every group has applied what the
    /// group's leader holds, then stops every node. Every node then holds
    /// the same state and journal of every account in `accounts`; the
    /// store of node 1, for the audit.
    pub async fn converge_and_stop(mut self, accounts: &[AccountId], seed: u64) -> (Arc<MemoryStore>, Faults) {
        for group in 0..GROUPS {
            // Level: every member follows one leader in one term and has
            // applied all of that leader's log (a member just healed may
            // still think it leads, with a shorter log, for a moment).
            let mut level = false;
            for _ in 0..WAIT_STEPS {
                self.observe();
                let views: Vec<_> = self
                    .members
                    .values()
                    .map(|m| {
                        let (_, groups) = m.up.as_ref().unwrap();
                        let metrics = groups.raft(group).metrics();
                        let m = metrics.borrow_watched();
                        (m.current_term, m.current_leader, m.last_log_index, m.last_applied.map(|l| l.index))
                    })
                    .collect();
                let (term, leader, _, _) = views[0];
                let last = leader.and_then(|l| views.get(l as usize - 1)).and_then(|v| v.2);
                level = leader.is_some()
                    && views.iter().all(|v| v.0 == term && v.1 == leader && v.3 == last && v.2 == last);
                if level {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(level, "seed {seed}: group {group}'s members never applied the same log");
        }
        for id in self.members.keys().copied().collect::<Vec<_>>() {
            self.crash(id).await;
        }
        let first = Arc::clone(&self.members[&1].store);
        for account in accounts {
            let state = first.load(account).unwrap().map(|l| l.state);
            let journal = first.history(account, 0, u32::MAX).unwrap();
            for (id, m) in &self.members {
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
