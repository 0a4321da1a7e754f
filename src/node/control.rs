//! A clustered node's part in the controller (`cluster::control`): making
//! a new cluster, joining and leaving nodes, moving group members, the
//! mover that runs the planned moves while this node leads the controller,
//! and the leader hints it records for the groups it serves.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::BasicNode;

use super::{Inner, Node};
use crate::cluster::control::{Ask, Asked, Change, Controller, MOVE_WAIT, Move, Peers, Proposed, ShardMap, placement};
use crate::cluster::groups::{REPLACE_WAIT, Replaced, Route};
use crate::error::Error;

/// How many times a proposal looks for the controller's leader (a pause of
/// `PROPOSE_PAUSE` each: an election, a leader handing over).
const PROPOSE_TRIES: u32 = 100;
const PROPOSE_PAUSE: Duration = Duration::from_millis(100);
/// How many times one group's replacement looks for the group's leader.
const REPLACE_TRIES: u32 = 200;
/// The mover and the hints look again at least this often.
const LOOK_EVERY: Duration = Duration::from_millis(500);

fn not_clustered() -> Error {
    Error::InvalidRequest("this node is not clustered (cluster.node_id is 0)".into())
}

fn no_controller() -> Error {
    Error::InvalidRequest("this node runs no controller (it was started without one)".into())
}

impl Node {
    /// Makes this node a member of the controller `controller` (started on
    /// its link and Raft disk): the groups it holds no member of are routed
    /// by the controller's map, and the mover and the leader hints run.
    pub fn attach_controller(&mut self, controller: Arc<Controller>) {
        if let Some(groups) = &self.inner.groups {
            groups.follow(controller.subscribe());
        }
        if self.inner.controller.set(Arc::clone(&controller)).is_err() {
            return;
        }
        self.tasks.push(tokio::spawn(mover(Arc::downgrade(&self.inner), Arc::clone(&controller))));
        self.tasks.push(tokio::spawn(hints(Arc::downgrade(&self.inner), controller)));
    }

    /// Reaches the other nodes through `peers` instead of the node link (a
    /// node started without one: the simulation). Set once.
    pub fn reach_peers_by(&self, peers: Arc<dyn Peers>) {
        let _ = self.inner.peers.set(peers);
    }

    /// What answers the node link's `Control` calls on this node.
    pub fn asked(&self) -> Weak<dyn Asked> {
        Arc::downgrade(&self.inner) as Weak<dyn Asked>
    }

    /// The controller's map as this node applied it (`None`: no
    /// controller).
    pub fn shard_map(&self) -> Option<Arc<ShardMap>> {
        self.inner.controller.get().map(|c| c.map())
    }

    /// Makes a new cluster of `cluster.members`: the controller (its first
    /// voters the first three nodes in id order; run on one of them), the
    /// map, and every group with `cluster.replicas` voters spread over the
    /// nodes. Without a controller (tests), every node votes in every
    /// group. Once, on one node, with every node started.
    pub async fn cluster_init(&self) -> Result<(), Error> {
        let Some(groups) = &self.inner.groups else { return Err(not_clustered()) };
        let c = &self.inner.shared.cfg.cluster;
        let nodes = c.member_addrs().map_err(|e| Error::InvalidRequest(e.to_string()))?;
        let Some(controller) = self.inner.controller.get() else {
            let members = nodes.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
            return groups
                .initialize(&members)
                .await
                .map_err(|e| Error::InvalidRequest(format!("cannot initialize: {e}")));
        };
        // A cluster whose map is written is refused. An init that stopped
        // before it wrote the map (the controller made) is gone on with.
        // Groups are made only now, from the map just written: a group is
        // never made again on a node that could have lost it (that would
        // start a second history of it).
        if controller.map().version > 0 {
            return Err(Error::InvalidRequest("the cluster is made already".into()));
        }
        controller.initialize(&nodes).await.map_err(|e| Error::InvalidRequest(format!("cannot initialize: {e}")))?;
        let ids: Vec<u64> = nodes.keys().copied().collect();
        let voters = placement(&ids, groups.count(), c.replicas as usize);
        self.inner.propose(Change::Init { nodes: nodes.clone(), groups: voters }).await?;
        // The map's placement, once this node applied it (bounded).
        let mut changes = controller.subscribe();
        let mut map = controller.map();
        for _ in 0..PROPOSE_TRIES {
            if map.version > 0 {
                break;
            }
            let _ = tokio::time::timeout(PROPOSE_PAUSE, changes.changed()).await;
            map = controller.map();
        }
        if map.version == 0 {
            return Err(Error::ShardUnavailable(
                "the controller took the map, this node has not seen it yet; retry".into(),
            ));
        }
        let nodes: BTreeMap<u64, String> = map.nodes.iter().map(|(id, n)| (*id, n.addr.clone())).collect();
        let voters: Vec<Vec<u64>> = map.groups.iter().map(|g| g.voters.iter().copied().collect()).collect();
        for (group, voters) in voters.into_iter().enumerate() {
            let members: BTreeMap<u64, String> = voters.iter().map(|id| (*id, nodes[id].clone())).collect();
            let made_group = if members.contains_key(&c.node_id) {
                let basic = members.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
                initialize_once(groups, group as u32, basic).await
            } else {
                let first = voters[0];
                let peers = self.inner.peers().ok_or_else(no_controller)?;
                let ask = Ask::InitGroup { group: group as u32, voters: members };
                match peers.control(&nodes[&first], &ask).await {
                    Ok(Proposed::Done(_)) => Ok(()),
                    Ok(other) => Err(format!("node {first}: {other:?}")),
                    Err(e) => Err(format!("node {first}: {e}")),
                }
            };
            made_group.map_err(|e| Error::InvalidRequest(format!("cannot make group {group}: {e}")))?;
        }
        Ok(())
    }

    /// Brings node `node` (at `addr`, started empty with itself as its only
    /// member) into the cluster: moves of group members onto it are
    /// planned until it holds its share; the mover runs them. The map's
    /// version after the change.
    pub async fn cluster_join(&self, node: u64, addr: &str) -> Result<u64, Error> {
        check_addr(addr)?;
        self.inner.propose(Change::Join { node, addr: addr.to_string() }).await
    }

    /// Takes node `node` out of the cluster: every group member it holds is
    /// planned to move to the node that holds fewest; once the last has
    /// moved, it is dropped from the map. The map's version after the
    /// change.
    pub async fn cluster_leave(&self, node: u64) -> Result<u64, Error> {
        self.inner.propose(Change::Leave { node }).await
    }

    /// Plans the move of `group`'s member on node `from` to node `to` (after
    /// the moves planned before it). The map's version after the change.
    pub async fn cluster_move(&self, group: u32, from: u64, to: u64) -> Result<u64, Error> {
        self.inner.propose(Change::Move(Move { group, from, to })).await
    }

    /// Replaces node `from` with node `to` (at `to_addr`, started with an
    /// empty data dir, its own id and itself as its only member) in every
    /// group `from` is in: the controller plans a move of each, the mover
    /// runs them one at a time (on the group's leader `to` catches up as a
    /// learner, then takes `from`'s vote), and `from` leaves the map. Waits
    /// for the moves; what happened in each group, in order. Without a
    /// controller (tests), each group is asked directly.
    pub async fn cluster_replace(&self, from: u64, to: u64, to_addr: &str) -> Result<Vec<(u32, String)>, Error> {
        let Some(groups) = &self.inner.groups else { return Err(not_clustered()) };
        if from == to || to == 0 {
            return Err(Error::InvalidRequest(format!("replace node {from} with another node, not {to}")));
        }
        check_addr(to_addr)?;
        let Some(controller) = self.inner.controller.get() else {
            let mut out = Vec::new();
            for group in 0..groups.count() {
                let outcome = self.inner.replace_group(group, from, to, to_addr).await;
                out.push((group, outcome.map_or_else(|e| e, |()| "replaced".to_string())));
            }
            return Ok(out);
        };
        let version = self.inner.propose(Change::Replace { from, to, addr: to_addr.to_string() }).await?;
        // Bounded: every group's move, each at most its two steps.
        let deadline = tokio::time::Instant::now() + REPLACE_WAIT * 2 * groups.count();
        let mut changes = controller.subscribe();
        loop {
            let map = controller.map();
            if map.version < version && tokio::time::Instant::now() < deadline {
                // This node's map is behind the controller's leader: the
                // moves planned are not in it yet.
                if let Ok(Err(_)) = tokio::time::timeout(LOOK_EVERY, changes.changed()).await {
                    return Err(Error::ShuttingDown);
                }
                continue;
            }
            let pending = map.moves.iter().any(|m| m.from == from && m.to == to);
            if !pending || tokio::time::Instant::now() >= deadline {
                let out = (0..groups.count())
                    .map(|group| {
                        let held = map.holds(group, from);
                        let why = map.done.iter().rev().find(|(m, _)| m.group == group && m.from == from);
                        let outcome = match (held, why) {
                            (false, _) => "replaced".to_string(),
                            (true, Some((_, Err(e)))) => e.clone(),
                            (true, _) if pending => "still moving".to_string(),
                            (true, _) => "not replaced".to_string(),
                        };
                        (group, outcome)
                    })
                    .collect();
                return Ok(out);
            }
            if let Ok(Err(_)) = tokio::time::timeout(LOOK_EVERY, changes.changed()).await {
                return Err(Error::ShuttingDown);
            }
        }
    }
}

/// Makes `group` with `voters` on this node, unless it is made already
/// (an init asked again after it stopped part way).
async fn initialize_once(
    groups: &crate::cluster::groups::Groups,
    group: u32,
    voters: BTreeMap<u64, BasicNode>,
) -> Result<(), String> {
    if group >= groups.count() {
        return Err(format!("there is no group {group}"));
    }
    if groups.raft(group).is_initialized().await.unwrap_or(false) {
        return Ok(());
    }
    groups.initialize_group(group, voters).await
}

fn check_addr(addr: &str) -> Result<(), Error> {
    if addr.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
        return Err(Error::InvalidRequest(format!("address {addr:?} is not host:port")));
    }
    Ok(())
}

impl Inner {
    /// How this node reaches the others: its node link, or what it was
    /// given (`Node::reach_peers_by`).
    fn peers(&self) -> Option<Arc<dyn Peers>> {
        match &self.link {
            Some(link) => Some(Arc::new(link.clone())),
            None => self.peers.get().cloned(),
        }
    }

    /// Proposes `change` to the controller's leader, wherever it is: the
    /// map's version after it, or why it was refused.
    async fn propose(&self, change: Change) -> Result<u64, Error> {
        let controller = self.controller.get().ok_or_else(no_controller)?;
        let me = controller.node_id();
        let peers = self.peers();
        let mut last = "no leader".to_string();
        for _ in 0..PROPOSE_TRIES {
            if self.stopping.load(Ordering::Acquire) {
                return Err(Error::ShuttingDown);
            }
            let outcome = match (controller.leader(), &peers) {
                (Some((id, _)), _) if id == me => controller.propose_local(change.clone()).await,
                (Some((_, addr)), Some(peers)) => peers
                    .control(&addr, &Ask::Propose(change.clone()))
                    .await
                    .unwrap_or_else(|e| Proposed::NotLeader(Some((0, e)))),
                _ => Proposed::NotLeader(None),
            };
            match outcome {
                Proposed::Done(version) => return Ok(version),
                Proposed::Refused(why) => return Err(Error::InvalidRequest(why)),
                Proposed::NotLeader(hint) => last = format!("{hint:?}"),
            }
            tokio::time::sleep(PROPOSE_PAUSE).await;
        }
        Err(Error::ShardUnavailable(format!(
            "the controller has no leader this node can reach ({last}); nothing was changed, retry"
        )))
    }

    /// Replaces `group`'s voter on node `from` with node `to` (at
    /// `to_addr`), on the node that leads the group (asked again as the
    /// lead moves, boundedly): first where this node would route the
    /// group, then the node each answer names, or (none named) the group's
    /// voters in the map in turn.
    async fn replace_group(&self, group: u32, from: u64, to: u64, to_addr: &str) -> Result<(), String> {
        let groups = self.groups.as_ref().ok_or("not clustered")?;
        let peers = self.peers();
        let map = || self.controller.get().map(|c| c.map());
        let me = self.controller.get().map_or(0, |c| c.node_id());
        let (mut next, mut turn): (Option<u64>, usize) = (None, 0);
        let mut last = "no leader".to_string();
        for _ in 0..REPLACE_TRIES {
            if self.stopping.load(Ordering::Acquire) {
                return Err("the node is stopping".into());
            }
            // This node's own member first when it leads the group (a
            // node the map does not count in the group may lead it: a move
            // onto it half made).
            let route = match next.take() {
                Some(id) if id == me => Route::Here(0),
                _ if groups.leads(group) => Route::Here(0),
                Some(id) => match map().and_then(|m| m.addr(id).map(str::to_string)) {
                    Some(addr) => Route::Leader(id, addr),
                    None => groups.leader_of(group),
                },
                None => groups.leader_of(group),
            };
            let asked = match (route, &peers) {
                (Route::Here(_), _) => groups.replace_here(group, from, to, to_addr, REPLACE_WAIT).await,
                (Route::Leader(_, addr), Some(peers)) if !addr.is_empty() => {
                    peers.replace(&addr, group, from, to, to_addr).await
                }
                _ => Ok(Replaced::NotLeader(None)),
            };
            tracing::debug!(group, from, to, ?asked, "a replacement asked");
            match asked {
                Ok(Replaced::Done) => return Ok(()),
                Ok(Replaced::NotLeader(Some(id)) | Replaced::HandedOff(id)) => next = Some(id),
                Ok(Replaced::Again) => {}
                Ok(other) => {
                    // Nobody named: the group's voters in turn.
                    if let Some(m) = map()
                        && let Some(g) = m.groups.get(group as usize)
                        && !g.voters.is_empty()
                    {
                        next = g.voters.iter().nth(turn % g.voters.len()).copied();
                        turn += 1;
                    }
                    last = format!("{other:?}");
                }
                // A change in flight (openraft's InProgress), a step that
                // timed out, a call that failed: the group may yet get
                // there; asked again (a replacement made is found done).
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last)
    }
}

impl Asked for Inner {
    fn asked(&self, ask: Ask) -> std::pin::Pin<Box<dyn std::future::Future<Output = Proposed> + Send + '_>> {
        Box::pin(async move {
            match ask {
                Ask::Propose(change) => match self.controller.get() {
                    Some(controller) => controller.propose_local(change).await,
                    None => Proposed::Refused("this node runs no controller".into()),
                },
                Ask::InitGroup { group, voters } => {
                    let Some(groups) = &self.groups else { return Proposed::Refused("not clustered".into()) };
                    let voters = voters.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
                    match initialize_once(groups, group, voters).await {
                        Ok(()) => Proposed::Done(0),
                        Err(e) => Proposed::Refused(e),
                    }
                }
            }
        })
    }
}

/// The mover: while this node leads the controller, it brings the
/// controller's membership to the map's nodes and runs the first planned
/// move, then records how it ended. A move a deposed mover left half done
/// is run again by the next (a replacement already made is found done).
async fn mover(me: Weak<Inner>, controller: Arc<Controller>) {
    let mut changes = controller.subscribe();
    loop {
        if let Ok(Err(_)) = tokio::time::timeout(LOOK_EVERY, changes.changed()).await {
            return; // The controller stopped (its map is gone).
        }
        let Some(inner) = me.upgrade() else { return };
        if inner.stopping.load(Ordering::Acquire) {
            return;
        }
        if !controller.leads() {
            continue;
        }
        // Everything committed before this lead applied here: a move the
        // last leader recorded is not run again from an older map.
        if controller.raft().ensure_linearizable(openraft::ReadPolicy::ReadIndex).await.is_err() {
            continue;
        }
        if let Err(e) = controller.reconcile().await {
            tracing::warn!(error = %e, "the controller's membership did not change");
        }
        let map = controller.map();
        let Some(planned) = map.moves.front().cloned() else { continue };
        let Some(to_addr) = map.addr(planned.to).map(str::to_string) else { continue };
        tracing::info!(?planned, "moving a group member");
        let started = std::time::Instant::now();
        let run = inner.replace_group(planned.group, planned.from, planned.to, &to_addr);
        let outcome = match tokio::time::timeout(MOVE_WAIT, run).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("the move did not finish within {MOVE_WAIT:?}")),
        };
        drop(inner);
        tracing::info!(?planned, ?outcome, took_ms = started.elapsed().as_millis() as u64, "moved");
        if !controller.leads() {
            // Deposed meanwhile: the next leader runs it again (a
            // replacement already made is found done), and records it.
            continue;
        }
        match controller.propose_local(Change::Moved { planned, outcome }).await {
            Proposed::Done(_) => {}
            other => tracing::warn!(?other, "the move's outcome was not recorded; the next mover runs it again"),
        }
        // At most one move every MOVE_PAUSE, whatever wakes the mover.
        tokio::time::sleep(MOVE_PAUSE).await;
    }
}

/// The least time between two moves the mover runs.
const MOVE_PAUSE: Duration = Duration::from_millis(50);

/// Records in the map, for every group this node serves, that it leads it
/// (the hint a node that holds no member of the group routes by).
async fn hints(me: Weak<Inner>, controller: Arc<Controller>) {
    let Some(groups) = me.upgrade().and_then(|inner| inner.groups.clone()) else { return };
    let mut changes = groups.serving_changes();
    loop {
        if let Ok(Err(_)) = tokio::time::timeout(LOOK_EVERY * 2, changes.changed()).await {
            return; // The groups stopped.
        }
        let Some(inner) = me.upgrade() else { return };
        if inner.stopping.load(Ordering::Acquire) {
            return;
        }
        let map = controller.map();
        if map.version == 0 {
            continue;
        }
        let node = controller.node_id();
        for group in 0..groups.count() {
            let Some(term) = groups.serving(group) else { continue };
            let known = map.groups.get(group as usize).is_some_and(|g| g.leader == Some(node) && g.term == term);
            if !known && let Err(e) = inner.propose(Change::Led { group, node, term }).await {
                tracing::debug!(group, error = %e, "leader hint not recorded");
            }
        }
    }
}
