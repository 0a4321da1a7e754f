//! The controller group (issue 13): a Raft group of its own, beside the
//! shard groups, that holds the **shard map** — the cluster's nodes and
//! their addresses, each group's voters and a hint of its leader, the
//! planned moves and a version that moves with every change — and the
//! mover that runs the planned moves one at a time.
//!
//! Every node of the cluster is a member: the first `CONTROL_VOTERS`
//! nodes (in id order, leaving ones last) vote, the others follow as
//! learners, so every node holds the map and routes by it. The map changes
//! only through the controller's log (`Change`), applied alike on every
//! member (`ShardMap::apply`); a change that no longer fits the map when it
//! is applied changes nothing, on every member.
//!
//! It runs on the shard groups' type config (its entries are `ShardEntry`s
//! with `control` set) so that the node link and the Raft disk carry it as
//! one more group, `CONTROL`. Its state machine is the map itself, written
//! whole (it is small) to the Raft disk after every apply, so it is also
//! its own snapshot.
//!
//! - **Join**: a node started empty, with itself as its only member, is
//!   named to the controller (`prepaid cluster join`); the controller
//!   plans moves of group members onto it until it holds its share, and
//!   takes it as a learner of its own.
//! - **Leave**: every group member on the node is planned to move to the
//!   node that holds fewest; once the last has moved the node is dropped
//!   from the map and from the controller.
//! - **Move**: an operator's move of one group member (`move-shard`).
//!
//! A move is the group's own membership change, run by the group's leader
//! (`Groups::replace_here`): the target catches up as a learner, one joint
//! change gives it the vote of the member that leaves (who hands the lead
//! off first if it leads). The mover on the controller's leader asks the
//! group's leader for it over the node link and records the outcome.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, ServerState};
use serde::{Deserialize, Serialize};

use super::{Applied, ShardEntry, ShardRaft};

type C = ShardRaft;
type Snap = Cursor<Vec<u8>>;

/// The controller's group id on the node link and the Raft disk.
pub const CONTROL: u32 = u32::MAX;
/// How many of the cluster's nodes vote in the controller.
pub const CONTROL_VOTERS: usize = 3;
/// How many finished moves the map remembers (`prepaid cluster status`).
pub const MOVES_REMEMBERED: usize = 32;
/// How long the mover works on one move (asking the group's leader again
/// while it elects or a change is in flight) before it records it failed.
pub const MOVE_WAIT: Duration = Duration::from_secs(300);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One planned move: group `group`'s member on node `from` goes to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub group: u32,
    pub from: u64,
    pub to: u64,
}

/// A change of the map: what the controller's log holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A new cluster: its nodes (id → link address) and each group's
    /// voters.
    Init { nodes: BTreeMap<u64, String>, groups: Vec<Vec<u64>> },
    /// A node comes in: moves onto it are planned until it holds its
    /// share of the group members.
    Join { node: u64, addr: String },
    /// A node goes: every member it holds is planned to move off it.
    Leave { node: u64 },
    /// Node `to` (at `addr`, new) takes node `from`'s place in every
    /// group `from` is in (a lost node's replacement); `from` leaves.
    Replace { from: u64, to: u64, addr: String },
    /// An operator's move.
    Move(Move),
    /// The mover ran the first planned move (or gave it up, why).
    Moved { planned: Move, outcome: Result<(), String> },
    /// A node leads a group in a term (the map's leader hint).
    Led { group: u32, node: u64, term: u64 },
}

/// A node as the map holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Its gRPC address (the node link).
    pub addr: String,
    /// Asked to leave: moves off it are planned, none onto it.
    pub leaving: bool,
}

/// A group as the map holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// Its voters once every recorded move finished.
    pub voters: BTreeSet<u64>,
    /// The node that last said it leads the group, and in which term (a
    /// hint: the group's own log decides who leads).
    pub leader: Option<u64>,
    pub term: u64,
}

/// The shard map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// Moves with every change applied; 0: no cluster made yet.
    pub version: u64,
    pub nodes: BTreeMap<u64, NodeEntry>,
    pub groups: Vec<GroupEntry>,
    /// The moves planned, run one at a time in this order.
    pub moves: VecDeque<Move>,
    /// The last `MOVES_REMEMBERED` moves run, and how each ended.
    pub done: VecDeque<(Move, Result<(), String>)>,
}

impl ShardMap {
    /// Each group's voters once every planned move has run.
    fn projected(&self) -> Vec<BTreeSet<u64>> {
        let mut voters: Vec<BTreeSet<u64>> = self.groups.iter().map(|g| g.voters.clone()).collect();
        for m in &self.moves {
            if let Some(v) = voters.get_mut(m.group as usize) {
                v.remove(&m.from);
                v.insert(m.to);
            }
        }
        voters
    }

    /// Group members per node (every node, 0 for none), of `voters`.
    fn load(&self, voters: &[BTreeSet<u64>]) -> BTreeMap<u64, usize> {
        let mut load: BTreeMap<u64, usize> = self.nodes.keys().map(|n| (*n, 0)).collect();
        for v in voters {
            for n in v {
                *load.entry(*n).or_default() += 1;
            }
        }
        load
    }

    /// Whether `change` fits the map now (`Err`: why not, as a sentence).
    /// `apply` changes the map only with changes that fit.
    pub fn check(&self, change: &Change) -> Result<(), String> {
        let made = self.version > 0;
        match change {
            Change::Init { nodes, groups } => {
                if made {
                    return Err("the cluster is made already".into());
                }
                if nodes.is_empty() || groups.is_empty() {
                    return Err("a cluster needs nodes and groups".into());
                }
                if groups.iter().flatten().any(|n| !nodes.contains_key(n)) || groups.iter().any(|g| g.is_empty()) {
                    return Err("every group needs voters among the nodes".into());
                }
                let addrs: BTreeSet<&String> = nodes.values().collect();
                if addrs.len() != nodes.len() {
                    return Err("two nodes have one address".into());
                }
                Ok(())
            }
            _ if !made => Err("the cluster is not made yet: run `prepaid cluster init` first".into()),
            Change::Join { node, addr } if self.addr_taken(addr, *node) => {
                Err(format!("{addr} is the address of another node of the cluster"))
            }
            Change::Join { node, addr } => match self.nodes.get(node) {
                Some(n) if n.addr == *addr && !n.leaving => Ok(()),
                Some(n) if n.leaving => Err(format!("node {node} is leaving the cluster; it cannot join again")),
                Some(n) => Err(format!("node {node} is in the cluster already, at {}", n.addr)),
                None if *node == 0 => Err("node ids start at 1".into()),
                None => Ok(()),
            },
            Change::Leave { node } => {
                if !self.nodes.contains_key(node) {
                    return Err(format!("node {node} is not in the cluster"));
                }
                let staying: Vec<u64> =
                    self.nodes.iter().filter(|(id, n)| **id != *node && !n.leaving).map(|(id, _)| *id).collect();
                for (group, voters) in self.projected().iter().enumerate() {
                    if voters.contains(node) && !staying.iter().any(|s| !voters.contains(s)) {
                        return Err(format!(
                            "group {group} has no node to move node {node}'s member to (its voters are \
                             {voters:?}): join a node first"
                        ));
                    }
                }
                Ok(())
            }
            Change::Replace { from, to, addr } => {
                if from == to || *to == 0 {
                    return Err(format!("replace node {from} with another node, not {to}"));
                }
                if self.addr_taken(addr, *to) {
                    return Err(format!("{addr} is the address of another node of the cluster"));
                }
                match (self.nodes.get(from), self.nodes.get(to)) {
                    (_, Some(n)) if n.addr != *addr || n.leaving => {
                        Err(format!("node {to} is in the cluster already, at {}", n.addr))
                    }
                    // Replacing onto a node already in it would leave the
                    // groups that hold both with one voter less.
                    (Some(f), Some(_)) if !f.leaving => Err(format!(
                        "node {to} is in the cluster already: replace onto a new node, or use leave and move-shard"
                    )),
                    (Some(_), _) | (None, Some(_)) => Ok(()),
                    (None, None) => Err(format!("node {from} is not in the cluster")),
                }
            }
            Change::Move(m) => {
                let Some(group) = self.projected().get(m.group as usize).cloned() else {
                    return Err(format!("there is no group {} (there are {})", m.group, self.groups.len()));
                };
                if !group.contains(&m.from) {
                    return Err(format!("node {} is not a voter of group {} ({group:?})", m.from, m.group));
                }
                if group.contains(&m.to) {
                    return Err(format!("node {} is a voter of group {} already", m.to, m.group));
                }
                match self.nodes.get(&m.to) {
                    None => Err(format!("node {} is not in the cluster: join it first", m.to)),
                    Some(n) if n.leaving => Err(format!("node {} is leaving the cluster", m.to)),
                    Some(_) => Ok(()),
                }
            }
            Change::Moved { planned, .. } => match self.moves.front() {
                Some(first) if first == planned => Ok(()),
                _ => Err(format!("{planned:?} is not the next planned move")),
            },
            Change::Led { group, term, .. } => match self.groups.get(*group as usize) {
                Some(g) if *term >= g.term => Ok(()),
                Some(_) => Err("an older term".into()),
                None => Err(format!("there is no group {group}")),
            },
        }
    }

    /// Applies `change` if it fits (`check`): whether it did. Every member
    /// decides alike.
    pub fn apply(&mut self, change: &Change) -> bool {
        if self.check(change).is_err() {
            return false;
        }
        match change {
            Change::Init { nodes, groups } => {
                self.nodes =
                    nodes.iter().map(|(id, addr)| (*id, NodeEntry { addr: addr.clone(), leaving: false })).collect();
                self.groups = groups
                    .iter()
                    .map(|v| GroupEntry { voters: v.iter().copied().collect(), leader: None, term: 0 })
                    .collect();
            }
            Change::Join { node, addr } => {
                if self.nodes.contains_key(node) {
                    return true; // joined already: nothing more to plan
                }
                self.nodes.insert(*node, NodeEntry { addr: addr.clone(), leaving: false });
                self.plan_join(*node);
            }
            Change::Leave { node } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.leaving = true;
                }
                self.plan_leave(*node);
                self.drop_gone();
            }
            Change::Replace { from, to, addr } => {
                if let Some(n) = self.nodes.get_mut(from) {
                    n.leaving = true;
                    self.nodes.entry(*to).or_insert(NodeEntry { addr: addr.clone(), leaving: false });
                    let voters = self.projected();
                    for (group, v) in voters.iter().enumerate() {
                        if v.contains(from) && !v.contains(to) {
                            self.moves.push_back(Move { group: group as u32, from: *from, to: *to });
                        }
                    }
                    self.drop_gone();
                }
            }
            Change::Move(m) => self.moves.push_back(m.clone()),
            Change::Moved { planned, outcome } => {
                self.moves.pop_front();
                if outcome.is_ok() {
                    let g = &mut self.groups[planned.group as usize];
                    g.voters.remove(&planned.from);
                    g.voters.insert(planned.to);
                    if g.leader == Some(planned.from) {
                        g.leader = None;
                    }
                }
                self.done.push_back((planned.clone(), outcome.clone()));
                while self.done.len() > MOVES_REMEMBERED {
                    self.done.pop_front();
                }
                self.drop_gone();
            }
            Change::Led { group, node, term } => {
                let g = &mut self.groups[*group as usize];
                g.leader = Some(*node);
                g.term = *term;
            }
        }
        self.version += 1;
        true
    }

    /// Plans moves onto a node that joined until it holds its share of
    /// the members (their number over the nodes that stay, rounded down),
    /// each from the node that would hold most, of a group the joining
    /// node is not in.
    fn plan_join(&mut self, node: u64) {
        let mut voters = self.projected();
        let staying = self.nodes.values().filter(|n| !n.leaving).count().max(1);
        let members: usize = voters.iter().map(BTreeSet::len).sum();
        let share = members / staying;
        for _ in 0..voters.len() {
            let load = self.load(&voters);
            if load[&node] >= share {
                break;
            }
            // The fullest node that holds a group the joining one does not.
            let mut donors: Vec<(usize, u64)> =
                load.iter().map(|(n, l)| (*l, *n)).filter(|(_, n)| *n != node).collect();
            donors.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let Some((group, from)) = donors.iter().find_map(|(_, from)| {
                let group =
                    (0..voters.len()).rev().find(|g| voters[*g].contains(from) && !voters[*g].contains(&node))?;
                Some((group, *from))
            }) else {
                break;
            };
            voters[group].remove(&from);
            voters[group].insert(node);
            self.moves.push_back(Move { group: group as u32, from, to: node });
        }
    }

    /// Plans a move of every member a leaving node would still hold to the
    /// staying node that would hold fewest and is not in the group.
    fn plan_leave(&mut self, node: u64) {
        let mut voters = self.projected();
        for group in 0..voters.len() {
            if !voters[group].contains(&node) {
                continue;
            }
            let load = self.load(&voters);
            let to = self
                .nodes
                .iter()
                .filter(|(id, n)| !n.leaving && !voters[group].contains(id))
                .min_by_key(|(id, _)| (load[id], **id))
                .map(|(id, _)| *id);
            if let Some(to) = to {
                voters[group].remove(&node);
                voters[group].insert(to);
                self.moves.push_back(Move { group: group as u32, from: node, to });
            }
        }
    }

    /// Drops the leaving nodes that hold no member and no planned move.
    fn drop_gone(&mut self) {
        let gone: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(id, n)| {
                n.leaving
                    && !self.groups.iter().any(|g| g.voters.contains(id))
                    && !self.moves.iter().any(|m| m.from == **id || m.to == **id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.nodes.remove(&id);
        }
    }

    /// The controller's voters this map asks for: the first
    /// `CONTROL_VOTERS` nodes in id order, those staying before those
    /// leaving.
    pub fn control_voters(&self) -> BTreeSet<u64> {
        let mut ids: Vec<(bool, u64)> = self.nodes.iter().map(|(id, n)| (n.leaving, *id)).collect();
        ids.sort();
        ids.into_iter().take(CONTROL_VOTERS).map(|(_, id)| id).collect()
    }

    /// Whether `addr` is the address of a node other than `node`.
    fn addr_taken(&self, addr: &str, node: u64) -> bool {
        self.nodes.iter().any(|(id, n)| *id != node && n.addr == addr)
    }

    /// Whether `node` is a voter of `group` as the map has it.
    pub fn holds(&self, group: u32, node: u64) -> bool {
        self.groups.get(group as usize).is_some_and(|g| g.voters.contains(&node))
    }

    /// Node `id`'s address.
    pub fn addr(&self, id: u64) -> Option<&str> {
        self.nodes.get(&id).map(|n| n.addr.as_str())
    }
}

/// Each group's voters for a new cluster of `nodes` (in id order):
/// `replicas` of them (all when fewer), group `g` starting at the
/// `g mod n`-th node and going round, so every node holds about as many
/// and the first voter differs from group to group.
pub fn placement(nodes: &[u64], groups: u32, replicas: usize) -> Vec<Vec<u64>> {
    let n = nodes.len();
    let r = replicas.clamp(1, n.max(1));
    (0..groups as usize)
        .map(|g| {
            let mut v: Vec<u64> = (0..r).map(|i| nodes[(g + i) % n]).collect();
            v.sort();
            v
        })
        .collect()
}

/// Where the controller's state machine keeps the map between restarts.
pub trait MachineDisk: Send + Sync + 'static {
    fn load(&self) -> io::Result<Option<Vec<u8>>>;
    /// Written and synced before it returns.
    fn save(&self, bytes: &[u8]) -> io::Result<()>;
}

/// A `MachineDisk` in memory (the simulation, tests): clones share it.
#[derive(Clone, Default)]
pub struct MemoryDisk(Arc<Mutex<Option<Vec<u8>>>>);

impl MachineDisk for MemoryDisk {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(lock(&self.0).clone())
    }

    fn save(&self, bytes: &[u8]) -> io::Result<()> {
        *lock(&self.0) = Some(bytes.to_vec());
        Ok(())
    }
}

/// What the controller's state machine keeps: the map, and the point of
/// the log it stands for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Machine {
    applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    map: ShardMap,
}

fn bad_data(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The controller's state machine: the map, written whole to its disk
/// after every apply (which is also its snapshot), and published to the
/// node. Clones share it.
#[derive(Clone)]
pub struct ControlMachine {
    state: Arc<Mutex<Machine>>,
    disk: Arc<dyn MachineDisk>,
    published: Arc<tokio::sync::watch::Sender<Arc<ShardMap>>>,
}

impl ControlMachine {
    /// The machine as `disk` last held it.
    pub fn open(disk: Arc<dyn MachineDisk>) -> io::Result<ControlMachine> {
        let state: Machine = match disk.load()? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(bad_data)?,
            None => Machine::default(),
        };
        let (published, _) = tokio::sync::watch::channel(Arc::new(state.map.clone()));
        Ok(ControlMachine { state: Arc::new(Mutex::new(state)), disk, published: Arc::new(published) })
    }

    /// The map as applied here, and every change of it.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<ShardMap>> {
        self.published.subscribe()
    }

    pub fn map(&self) -> Arc<ShardMap> {
        self.published.borrow().clone()
    }

    /// Saves and publishes `s` (held under the lock: saves are in order).
    fn save(&self, s: &Machine) -> io::Result<()> {
        self.disk.save(&postcard::to_allocvec(s).map_err(bad_data)?)?;
        self.published.send_replace(Arc::new(s.map.clone()));
        Ok(())
    }
}

impl RaftSnapshotBuilder<C> for ControlMachine {
    type SnapshotData = Snap;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Snap>, io::Error> {
        let s = lock(&self.state);
        let meta = SnapshotMetaOf::<C> { last_log_id: s.applied, last_membership: s.membership.clone() };
        Ok(SnapshotOf::<C, Snap> { meta, snapshot: Cursor::new(postcard::to_allocvec(&s.map).map_err(bad_data)?) })
    }
}

impl RaftStateMachine<C> for ControlMachine {
    type SnapshotData = Snap;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let s = lock(&self.state);
        Ok((s.applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        let mut answers = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let mut s = lock(&self.state);
            let mut applied = Applied::Yes;
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(ShardEntry { control: Some(change), .. }) => {
                    if !s.map.apply(change) {
                        applied = Applied::Fenced;
                    }
                }
                EntryPayload::Normal(_) => {}
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembershipOf::<C>::new(Some(entry.log_id), m.clone());
                }
            }
            s.applied = Some(entry.log_id);
            answers.push((responder, applied));
        }
        {
            let s = lock(&self.state);
            self.save(&s)?;
        }
        for (responder, applied) in answers {
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
        let map: ShardMap = postcard::from_bytes(&snapshot.into_inner()).map_err(bad_data)?;
        let mut s = lock(&self.state);
        *s = Machine { applied: meta.last_log_id, membership: meta.last_membership.clone(), map };
        self.save(&s)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Snap>>, io::Error> {
        if lock(&self.state).applied.is_none() {
            return Ok(None);
        }
        Ok(Some(self.build_snapshot().await?))
    }
}

/// The node's member of the controller.
pub type ControlRaft = openraft::Raft<C, ControlMachine>;

/// What a proposal to the controller came to on the node asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposed {
    /// Applied: the map's version after it.
    Done(u64),
    /// Refused: why, as a sentence (nothing changed).
    Refused(String),
    /// This node does not lead the controller (the leader it knows).
    NotLeader(Option<(u64, String)>),
}

/// What a node asks another over the link's `Control` call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    /// A change of the map, for the controller's leader.
    Propose(Change),
    /// Make shard group `group` with these voters (id → address), for one
    /// of them (a new cluster).
    InitGroup { group: u32, voters: BTreeMap<u64, String> },
}

/// Answers the link's `Control` calls on this node (the node implements
/// it).
pub trait Asked: Send + Sync + 'static {
    fn asked(&self, ask: Ask) -> Pin<Box<dyn Future<Output = Proposed> + Send + '_>>;
}

/// The other nodes as the controller's work reaches them: the node link
/// (`LinkFactory`), or nodes in one process (the simulation).
pub trait Peers: Send + Sync + 'static {
    /// `ask` of the node at `addr` (not reached: `Err`).
    fn control<'a>(
        &'a self,
        addr: &'a str,
        ask: &'a Ask,
    ) -> Pin<Box<dyn Future<Output = Result<Proposed, String>> + Send + 'a>>;
    /// Asks the node at `addr` (which leads `group`) to replace its voter
    /// `from` with `to` (at `to_addr`).
    fn replace<'a>(
        &'a self,
        addr: &'a str,
        group: u32,
        from: u64,
        to: u64,
        to_addr: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<super::groups::Replaced, String>> + Send + 'a>>;
}

/// The node's member of the controller and the map it applied.
pub struct Controller {
    node_id: u64,
    raft: ControlRaft,
    machine: ControlMachine,
}

impl Controller {
    /// The node's member, from the map its disk holds and the log `log`.
    pub async fn start<LS, N>(
        node_id: u64,
        raft: Arc<openraft::Config>,
        log: LS,
        network: N,
        disk: Arc<dyn MachineDisk>,
    ) -> Result<Arc<Controller>, String>
    where
        LS: openraft::storage::RaftLogStorage<C>,
        N: openraft::RaftNetworkFactory<C>,
        N::Network: openraft::network::NetSnapshot<C, SnapshotData = Snap>,
    {
        let machine = ControlMachine::open(disk).map_err(|e| format!("the controller's map: {e}"))?;
        let raft = ControlRaft::new(node_id, raft, network, log, machine.clone())
            .await
            .map_err(|e| format!("the controller: {e}"))?;
        Ok(Arc::new(Controller { node_id, raft, machine }))
    }

    pub fn raft(&self) -> &ControlRaft {
        &self.raft
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The map as this node applied it.
    pub fn map(&self) -> Arc<ShardMap> {
        self.machine.map()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<ShardMap>> {
        self.machine.subscribe()
    }

    /// Makes the controller of a new cluster of `nodes`: its first voters
    /// (`ShardMap::control_voters` of the map it starts), the others join
    /// as learners by the mover.
    pub async fn initialize(&self, nodes: &BTreeMap<u64, String>) -> Result<(), String> {
        let voters: BTreeMap<u64, BasicNode> =
            nodes.iter().take(CONTROL_VOTERS).map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
        if !voters.contains_key(&self.node_id) {
            return Err(format!("run init on one of nodes {:?} (the controller's first voters)", voters.keys()));
        }
        // Made already by an init that stopped before the map was written:
        // go on from there.
        if self.raft.is_initialized().await.unwrap_or(false) {
            return Ok(());
        }
        self.raft.initialize(voters).await.map_err(|e| format!("the controller: {e}"))
    }

    /// Whether this node leads the controller now.
    pub fn leads(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// The controller's leader as this node knows it, with its address.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let id = m.current_leader?;
        Some((id, m.membership_config.get_node(&id)?.addr.clone()))
    }

    /// Proposes `change` here, if this node leads the controller.
    pub async fn propose_local(&self, change: Change) -> Proposed {
        if !self.leads() {
            return Proposed::NotLeader(self.leader());
        }
        if let Err(why) = self.map().check(&change) {
            return Proposed::Refused(why);
        }
        let entry = ShardEntry { control: Some(change), ..ShardEntry::default() };
        match tokio::time::timeout(Duration::from_secs(10), self.raft.client_write(entry)).await {
            Ok(Ok(w)) if w.data == Applied::Yes => Proposed::Done(self.map().version),
            Ok(Ok(_)) => {
                Proposed::Refused("the map changed meanwhile and the change no longer fits it; ask again".into())
            }
            Ok(Err(e)) => match e.forward_to_leader() {
                Some(f) => Proposed::NotLeader(f.leader_id.zip(f.leader_node.as_ref().map(|n| n.addr.clone()))),
                None => Proposed::Refused(format!("the controller: {e}")),
            },
            Err(_) => Proposed::Refused("the controller did not commit the change within 10 s; ask again".into()),
        }
    }

    /// Brings the controller's own membership to what the map asks for
    /// (on its leader): every node of the map a member, the first
    /// `CONTROL_VOTERS` voters, nodes gone from the map dropped. One step
    /// per call.
    pub async fn reconcile(&self) -> Result<(), String> {
        let map = self.map();
        if map.version == 0 || !self.leads() {
            return Ok(());
        }
        let (voters, known, unfinished): (BTreeSet<u64>, BTreeSet<u64>, Option<BTreeSet<u64>>) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let membership = m.membership_config.membership();
            let configs = membership.get_joint_config();
            let unfinished = (configs.len() != 1).then(|| configs[configs.len() - 1].clone());
            (membership.voter_ids().collect(), membership.nodes().map(|(id, _)| *id).collect(), unfinished)
        };
        if let Some(last) = unfinished {
            // Left joint by a leader lost between the two steps (this
            // leader awaits its own changes): finished first.
            tracing::info!(?last, "finishing the controller's joint change");
            let change = openraft::ChangeMembers::ReplaceAllVoters(last);
            self.raft.change_membership(change, true).await.map_err(|e| format!("a joint change: {e}"))?;
            return Ok(());
        }
        for (id, node) in &map.nodes {
            if !known.contains(id) {
                tracing::info!(node = id, "adding a node to the controller");
                let added = self.raft.add_learner(*id, BasicNode { addr: node.addr.clone() }, false).await;
                added.map_err(|e| format!("adding node {id} to the controller: {e}"))?;
                return Ok(());
            }
        }
        let want = map.control_voters();
        let drop: BTreeSet<u64> = known.iter().filter(|id| !map.nodes.contains_key(id)).copied().collect();
        if want != voters || !drop.is_empty() {
            tracing::info!(?want, ?voters, ?drop, "changing the controller's voters");
            let change = openraft::ChangeMembers::ReplaceAllVoters(want.clone());
            self.raft.change_membership(change, true).await.map_err(|e| format!("the controller's voters: {e}"))?;
            if !drop.is_empty() {
                let change = openraft::ChangeMembers::RemoveNodes(drop.clone());
                self.raft.change_membership(change, false).await.map_err(|e| format!("dropping {drop:?}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Stops the node's member.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};

    use super::*;
    use crate::cluster::memory::MemoryLog;

    struct Fresh;

    impl StoreBuilder<C, MemoryLog, ControlMachine> for Fresh {
        async fn build(&self) -> Result<((), MemoryLog, ControlMachine), StorageError<C>> {
            let machine = ControlMachine::open(Arc::new(MemoryDisk::default())).unwrap();
            Ok(((), MemoryLog::default(), machine))
        }
    }

    /// openraft's own storage suite, with the controller's state machine.
    #[tokio::test]
    async fn the_controller_s_state_machine_passes_openraft_s_storage_suite() {
        Suite::test_all(Fresh).await.unwrap();
    }

    /// What the map applied is on its disk: a machine opened again from it
    /// has the same map and the same point of the log.
    #[tokio::test]
    async fn the_map_outlives_a_restart_and_travels_in_a_snapshot() {
        use openraft::entry::RaftEntry;
        let disk = Arc::new(MemoryDisk::default());
        let mut machine = ControlMachine::open(disk.clone()).unwrap();
        let init =
            Change::Init { nodes: BTreeMap::from([(1, "a:1".into()), (2, "b:1".into())]), groups: vec![vec![1, 2]] };
        let entries = vec![
            openraft::alias::EntryOf::<C>::new_normal(
                openraft::testing::log_id::<C>(1, 0, 1),
                ShardEntry { control: Some(init), ..ShardEntry::default() },
            ),
            openraft::alias::EntryOf::<C>::new_normal(
                openraft::testing::log_id::<C>(1, 0, 2),
                ShardEntry { control: Some(Change::Leave { node: 9 }), ..ShardEntry::default() },
            ),
        ];
        machine.apply(futures_util::stream::iter(entries.into_iter().map(|e| Ok((e, None))))).await.unwrap();
        let map = machine.map();
        assert_eq!(map.version, 1, "the refused leave changed nothing");
        assert_eq!(map.groups[0].voters, BTreeSet::from([1, 2]));
        let mut again = ControlMachine::open(disk).unwrap();
        assert_eq!(*again.map(), *map);
        assert_eq!(again.applied_state().await.unwrap().0.map(|l| l.index()), Some(2));
        let snapshot = machine.build_snapshot().await.unwrap();
        let mut other = ControlMachine::open(Arc::new(MemoryDisk::default())).unwrap();
        other.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        assert_eq!(*other.map(), *map);
    }

    fn made(nodes: &[u64], groups: u32, replicas: usize) -> ShardMap {
        let mut map = ShardMap::default();
        let init = Change::Init {
            nodes: nodes.iter().map(|n| (*n, format!("127.0.0.1:{}", 7000 + n))).collect(),
            groups: placement(nodes, groups, replicas),
        };
        assert!(map.apply(&init));
        map
    }

    fn load(map: &ShardMap) -> BTreeMap<u64, usize> {
        map.load(&map.projected())
    }

    /// Runs every planned move (as the mover would, each succeeding).
    fn run_moves(map: &mut ShardMap) {
        while let Some(planned) = map.moves.front().cloned() {
            assert!(map.apply(&Change::Moved { planned, outcome: Ok(()) }));
        }
    }

    #[test]
    fn a_new_cluster_places_each_group_on_replicas_nodes_evenly() {
        let map = made(&[1, 2, 3, 4], 16, 3);
        assert!(map.groups.iter().all(|g| g.voters.len() == 3));
        assert_eq!(load(&map).values().copied().collect::<Vec<_>>(), vec![12, 12, 12, 12]);
        // Fewer nodes than replicas: every node in every group.
        let small = made(&[1, 2], 4, 3);
        assert!(small.groups.iter().all(|g| g.voters == BTreeSet::from([1, 2])));
        // A second init is refused.
        let mut again = map.clone();
        let init = Change::Init { nodes: BTreeMap::from([(9, "x:1".into())]), groups: vec![vec![9]] };
        assert!(again.check(&init).unwrap_err().contains("made already"));
        assert!(!again.apply(&init));
        assert_eq!(again, map, "a refused change changes nothing");
    }

    #[test]
    fn a_node_that_joins_gets_its_share_and_one_that_leaves_hands_all_of_it_on() {
        let mut map = made(&[1, 2, 3], 16, 3);
        assert_eq!(load(&map).values().copied().collect::<Vec<_>>(), vec![16, 16, 16]);
        let v = map.version;
        assert!(map.apply(&Change::Join { node: 4, addr: "127.0.0.1:7004".into() }));
        assert_eq!(map.version, v + 1);
        assert_eq!(map.moves.len(), 12, "48 members over 4 nodes: 12 move to the new one");
        assert!(map.moves.iter().all(|m| m.to == 4 && !map.groups[m.group as usize].voters.contains(&4)));
        // Joining again is harmless and plans nothing more.
        assert!(map.apply(&Change::Join { node: 4, addr: "127.0.0.1:7004".into() }));
        assert_eq!(map.moves.len(), 12);
        assert!(map.check(&Change::Join { node: 4, addr: "elsewhere:1".into() }).is_err());
        run_moves(&mut map);
        assert_eq!(load(&map).values().copied().collect::<Vec<_>>(), vec![12, 12, 12, 12]);
        assert!(map.groups.iter().all(|g| g.voters.len() == 3));

        assert!(map.apply(&Change::Leave { node: 2 }));
        assert!(map.nodes[&2].leaving);
        assert!(map.check(&Change::Move(Move { group: 0, from: 1, to: 2 })).is_err(), "nothing moves onto it");
        run_moves(&mut map);
        assert!(!map.nodes.contains_key(&2), "dropped once its last member moved");
        assert_eq!(load(&map).values().copied().collect::<Vec<_>>(), vec![16, 16, 16]);
        assert!(map.groups.iter().all(|g| g.voters.len() == 3));
        // Three nodes left, three replicas: none can leave.
        assert!(map.check(&Change::Leave { node: 1 }).unwrap_err().contains("join a node first"));
    }

    #[test]
    fn a_replacement_moves_every_member_of_the_lost_node_to_the_new_one() {
        let mut map = made(&[1, 2, 3], 4, 3);
        let replace = Change::Replace { from: 3, to: 4, addr: "127.0.0.1:7004".into() };
        assert!(map.apply(&replace));
        assert_eq!(map.moves.len(), 4);
        assert!(map.moves.iter().all(|m| (m.from, m.to) == (3, 4)));
        assert_eq!(map.control_voters(), BTreeSet::from([1, 2, 4]), "the leaving node votes last");
        run_moves(&mut map);
        assert!(!map.nodes.contains_key(&3));
        assert!(map.groups.iter().all(|g| g.voters == BTreeSet::from([1, 2, 4])));
        // Asked again: done already, nothing planned.
        assert!(map.apply(&replace));
        assert!(map.moves.is_empty());
        assert!(map.check(&Change::Replace { from: 3, to: 4, addr: "elsewhere:1".into() }).is_err());
        // One address, one node; no replacement onto a node in the cluster.
        assert!(
            map.check(&Change::Join { node: 5, addr: "127.0.0.1:7004".into() }).unwrap_err().contains("another node")
        );
        assert!(
            map.check(&Change::Replace { from: 1, to: 2, addr: "127.0.0.1:7002".into() })
                .unwrap_err()
                .contains("already")
        );
        assert!(map.check(&Change::Replace { from: 9, to: 8, addr: "x:1".into() }).is_err());
    }

    #[test]
    fn a_move_that_fails_leaves_the_group_as_it_was() {
        let mut map = made(&[1, 2, 3, 4], 4, 3);
        let group = map.groups[0].voters.clone();
        let from = *group.iter().next().unwrap();
        let to = *[1, 2, 3, 4].iter().find(|n| !group.contains(n)).unwrap();
        let m = Move { group: 0, from, to };
        assert!(map.check(&Change::Move(Move { group: 0, from: to, to: from })).is_err());
        assert!(map.check(&Change::Move(Move { group: 9, from, to })).is_err());
        assert!(map.apply(&Change::Move(m.clone())));
        // Only the first planned move can finish.
        assert!(!map.apply(&Change::Moved { planned: Move { group: 1, from, to }, outcome: Ok(()) }));
        assert!(map.apply(&Change::Moved { planned: m.clone(), outcome: Err("unreachable".into()) }));
        assert_eq!(map.groups[0].voters, group);
        assert_eq!(map.done.back(), Some(&(m, Err("unreachable".into()))));
        // Leader hints go forward only.
        assert!(map.apply(&Change::Led { group: 0, node: from, term: 5 }));
        assert!(!map.apply(&Change::Led { group: 0, node: to, term: 4 }));
        assert_eq!(map.groups[0].leader, Some(from));
    }
}
