//! A clustered node's shard groups: its member of every group it belongs
//! to, which of them it leads and serves, and the commit of a group write
//! through them (what the journal writer does instead of writing the store
//! itself when the node is clustered).
//!
//! Shards go to groups `shards_per_group` at a time (shard `s` in group
//! `s / shards_per_group`). A node **serves** a group — its shard workers
//! host the group's accounts and take their requests — only while it leads
//! the group and has applied everything committed before its term (a read
//! index at the start of the term); every change of that moves the health
//! epoch (`Health::moved`), so cells reload from the store and nothing made
//! from older memory is written. A request for a group the node does not
//! serve is forwarded to the leader (`node/mod.rs`), or answered
//! `wrong_node` (with the leader when known) or `shard_unavailable`.
//!
//! A group write is split by group into one `ShardEntry` each, proposed
//! with the term the node serves the group in (the state machine fences an
//! entry committed in another term, `apply.rs`); the round is acknowledged
//! when every group applied its entry, and otherwise answered
//! `outcome_unknown` (a resend under the same idempotency key applies
//! once), or `shard_unavailable` when nothing was applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Instant as _, RaftNetworkFactory, ReadPolicy, ServerState};

use super::apply::{Placement, StoreShard};
use super::control::ShardMap;
use super::{Applied, ShardEntry, ShardRaft};
use crate::codec::LogItem;
use crate::error::Error;
use crate::health::Health;
use crate::ledger::AccountId;
use crate::store::{AccountWrite, Store};

type C = ShardRaft;
/// A node's member of one group, on the node's store.
pub type GroupRaft = openraft::Raft<C, StoreShard>;

/// How the node's groups are laid out and timed.
#[derive(Clone, Debug)]
pub struct GroupsConfig {
    /// This node's id in every group.
    pub node_id: u64,
    /// `node.shards`: fixed for the cluster.
    pub shards: u32,
    /// Shards per Raft group; divides `shards`.
    pub shards_per_group: u32,
    /// How long a commit waits for its groups before the round is answered
    /// `outcome_unknown`.
    pub commit_timeout: Duration,
    /// Raft timing (`heartbeat_interval`, election timeouts); the snapshot
    /// settings below replace its own.
    pub raft: openraft::Config,
    /// A group's log is purged to its applied state every this many
    /// entries, keeping this many behind it (`cluster.snapshot_log_entries`).
    pub snapshot_log_entries: u64,
    /// How long sending a group's snapshot to a member may take
    /// (`cluster.snapshot_timeout_ms`).
    pub snapshot_timeout: Duration,
    /// `ledger.expiry_notice_ms`, for the timer index.
    pub notice_ms: u64,
    /// Webhook marks are written with each account's records.
    pub webhooks: bool,
    /// Whether the node hands each group it leads to the group's
    /// preferred voter (`Groups::balance`).
    pub balance_leaders: bool,
}

pub struct Groups {
    cfg: GroupsConfig,
    /// The Raft settings every member runs with (the controller's too).
    raft_config: Arc<openraft::Config>,
    rafts: Vec<GroupRaft>,
    /// Each group's state machine on this node (what it installed).
    machines: Vec<StoreShard>,
    /// Per group: the term this node serves it in, 0 when it does not.
    serving: Vec<AtomicU64>,
    /// Moves on every change of `serving` (what `routable` waits on).
    served: tokio::sync::watch::Sender<u64>,
    /// The controller's shard map, once the node follows one: a group this
    /// node holds no member of is routed by it (`leader_of`).
    directory: std::sync::OnceLock<tokio::sync::watch::Receiver<Arc<ShardMap>>>,
}

/// What a request to replace a member found in one group, on the node asked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Replaced {
    /// The member is replaced (now, or before: asking again is harmless).
    Done,
    /// This node does not lead the group (the leader it knows, if any).
    NotLeader(Option<u64>),
    /// This node led the group and is the member to replace: it handed the
    /// lead to another voter; ask that one.
    HandedOff(u64),
    /// The leader this node knows could not be reached (it may have just
    /// been lost): ask again once the group has another.
    Unreachable(String),
    /// A change of the group's membership left half made (its leader lost
    /// between the joint step and the last) was finished first: ask again.
    Again,
}

/// One group as a node sees it (`prepaid cluster status`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupStatus {
    pub group: u32,
    /// The shards it holds: `first..=last`.
    pub first_shard: u32,
    pub last_shard: u32,
    /// Whether this node holds a member of it (the map's voters); the
    /// rest is then as its member sees it, else as the map has it.
    pub member: bool,
    /// Whether this node serves it now (leads it, caught up).
    pub serving: bool,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// Its voters.
    pub voters: Vec<u64>,
}

/// Where a shard's requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This node serves the shard's group (in this term).
    Here(u64),
    /// Another node leads it (its id and address, when known).
    Leader(u64, String),
    /// No leader is known.
    Nobody,
}

impl Groups {
    /// The node's member of every group, each opened from the store's mark
    /// and given its log and network by `member(group)`.
    pub async fn start<LS, N>(
        cfg: GroupsConfig,
        store: Arc<dyn Store>,
        mut member: impl FnMut(u32) -> (LS, N),
    ) -> Result<Arc<Groups>, String>
    where
        LS: RaftLogStorage<C>,
        N: RaftNetworkFactory<C>,
        N::Network: openraft::network::NetSnapshot<C, SnapshotData = std::io::Cursor<Vec<u8>>>,
    {
        if cfg.shards_per_group == 0 || !cfg.shards.is_multiple_of(cfg.shards_per_group) {
            return Err(format!(
                "cluster.shards_per_group ({}) must divide node.shards ({})",
                cfg.shards_per_group, cfg.shards
            ));
        }
        if cfg.snapshot_log_entries == 0 {
            return Err("cluster.snapshot_log_entries must be at least 1".into());
        }
        // Every `snapshot_log_entries` applied, the log is purged to the
        // applied state, keeping as many entries for a follower a little
        // behind (`apply.rs`: the snapshot is the store itself).
        let raft = openraft::Config {
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_log_entries),
            max_in_snapshot_log_to_keep: cfg.snapshot_log_entries,
            install_snapshot_timeout: cfg.snapshot_timeout.as_millis() as u64,
            ..cfg.raft.clone()
        };
        let raft = Arc::new(raft.validate().map_err(|e| format!("raft settings: {e}"))?);
        let (mut rafts, mut machines) = (Vec::new(), Vec::new());
        for group in 0..cfg.shards / cfg.shards_per_group {
            let per = cfg.shards_per_group;
            let placement = Placement { shards: group * per..(group + 1) * per, total: cfg.shards };
            let sm = StoreShard::open(group, placement, Arc::clone(&store), cfg.notice_ms, cfg.webhooks)
                .map_err(|e| format!("group {group}: {e}"))?;
            let (log, network) = member(group);
            let r = GroupRaft::new(cfg.node_id, Arc::clone(&raft), network, log, sm.clone())
                .await
                .map_err(|e| format!("group {group}: {e}"))?;
            sm.ready();
            rafts.push(r);
            machines.push(sm);
        }
        let serving = rafts.iter().map(|_| AtomicU64::new(0)).collect();
        let (served, _) = tokio::sync::watch::channel(0);
        let directory = std::sync::OnceLock::new();
        Ok(Arc::new(Groups { cfg, raft_config: raft, rafts, machines, serving, served, directory }))
    }

    /// The Raft settings the groups run with.
    pub fn raft_config(&self) -> Arc<openraft::Config> {
        Arc::clone(&self.raft_config)
    }

    pub fn count(&self) -> u32 {
        self.rafts.len() as u32
    }

    pub fn shards_per_group(&self) -> u32 {
        self.cfg.shards_per_group
    }

    /// Each group's leader as this node knows it, with its address (this
    /// node's own among them), in group order.
    pub fn leaders(&self) -> Vec<Option<(u64, String)>> {
        (0..self.count())
            .map(|group| match self.leader_of(group) {
                Route::Here(_) => {
                    let addr = self.map().and_then(|m| m.addr(self.cfg.node_id).map(str::to_string));
                    let metrics = self.raft(group).metrics();
                    let m = metrics.borrow_watched();
                    let addr = addr.or_else(|| Some(m.membership_config.get_node(&self.cfg.node_id)?.addr.clone()));
                    Some((self.cfg.node_id, addr?))
                }
                Route::Leader(id, addr) if !addr.is_empty() => Some((id, addr)),
                _ => None,
            })
            .collect()
    }

    pub fn group_of_shard(&self, shard: u32) -> u32 {
        shard / self.cfg.shards_per_group
    }

    pub fn group_of(&self, id: &AccountId) -> u32 {
        self.group_of_shard(id.shard(u64::from(self.cfg.shards)) as u32)
    }

    /// The node's member of `group`.
    pub fn raft(&self, group: u32) -> &GroupRaft {
        &self.rafts[group as usize]
    }

    /// Makes `members` the voters of every group (a new cluster, from one
    /// of its nodes).
    pub async fn initialize(&self, members: &BTreeMap<u64, BasicNode>) -> Result<(), String> {
        for group in 0..self.count() {
            self.initialize_group(group, members.clone()).await?;
        }
        Ok(())
    }

    /// Makes `voters` (this node among them) the voters of `group`, new.
    pub async fn initialize_group(&self, group: u32, voters: BTreeMap<u64, BasicNode>) -> Result<(), String> {
        let raft = self.rafts.get(group as usize).ok_or_else(|| format!("there is no group {group}"))?;
        raft.initialize(voters).await.map_err(|e| format!("group {group}: {e}"))
    }

    /// Routes the groups this node holds no member of by `map` (the
    /// controller's, as this node applies it). Set once, at start.
    pub fn follow(&self, map: tokio::sync::watch::Receiver<Arc<ShardMap>>) {
        let _ = self.directory.set(map);
    }

    /// The map this node follows, if any and once made.
    fn map(&self) -> Option<Arc<ShardMap>> {
        let map = self.directory.get()?.borrow().clone();
        (map.version > 0).then_some(map)
    }

    /// Whether this node holds a member of `group`: as the map has it, or
    /// (no controller: tests) every node does. A node that follows a
    /// controller and has no map yet (a node just joined) holds none.
    pub fn holds(&self, group: u32) -> bool {
        match self.directory.get() {
            None => true,
            Some(map) => {
                let map = map.borrow();
                map.version > 0 && map.holds(group, self.cfg.node_id)
            }
        }
    }

    /// The term this node serves `group` in, if it does.
    pub fn serving(&self, group: u32) -> Option<u64> {
        Some(self.serving[group as usize].load(Ordering::Acquire)).filter(|&t| t != 0)
    }

    /// Serves `group` in `term` (0: no more), and says so to whoever waits.
    fn set_serving(&self, group: u32, term: u64) {
        self.serving[group as usize].store(term, Ordering::Release);
        self.served.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Snapshots this node's member of `group` installed since it started.
    pub fn snapshots_installed(&self, group: u32) -> u64 {
        self.machines[group as usize].installed()
    }

    /// Moves whenever this node starts or stops serving a group.
    pub fn serving_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.served.subscribe()
    }

    /// Records, through each group this node serves, how far webhooks
    /// delivered the accounts in `cursors` (an entry of deliveries alone,
    /// not fenced: the account states do not depend on it). Groups not
    /// served here are skipped; what a failed proposal carried is delivered
    /// again by the next leader (at least once).
    pub async fn record_deliveries(&self, cursors: Vec<(AccountId, u64)>) {
        let mut by_group: BTreeMap<u32, Vec<(AccountId, u64)>> = BTreeMap::new();
        for (id, seq) in cursors {
            by_group.entry(self.group_of(&id)).or_default().push((id, seq));
        }
        for (group, cursors) in by_group {
            if self.serving(group).is_none() {
                continue;
            }
            let entry = ShardEntry { cursors, ..ShardEntry::default() };
            let written = tokio::time::timeout(self.cfg.commit_timeout, self.raft(group).client_write(entry)).await;
            if !matches!(written, Ok(Ok(_))) {
                tracing::warn!(group, "webhook deliveries not recorded in the group; the next leader repeats them");
            }
        }
    }

    /// Waits at most `wait` for `group` to have a leader a request can go
    /// to: this node serving it, or another node whose address is known
    /// (and is not `avoid`: a leader found gone). Whether it has one.
    pub async fn routable(&self, group: u32, avoid: Option<&str>, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribed before looking: a change after the look is seen.
        let mut metrics = self.raft(group).metrics();
        let mut served = self.served.subscribe();
        let mut map = self.directory.get().cloned();
        loop {
            let routed = self.serving(group).is_some()
                || matches!(self.leader_of(group), Route::Leader(_, addr) if !addr.is_empty() && Some(addr.as_str()) != avoid);
            if routed {
                return true;
            }
            let map_changed = async {
                match map.as_mut() {
                    Some(m) => m.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return false },
                changed = served.changed() => if changed.is_err() { return false },
                changed = map_changed => if !changed { return false },
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Where requests for `id` go now.
    pub fn route(&self, id: &AccountId) -> Route {
        let group = self.group_of(id);
        if let Some(term) = self.serving(group) {
            return Route::Here(term);
        }
        match self.leader_of(group) {
            // Leading, not yet serving (catching up): nobody for now.
            Route::Here(_) => Route::Nobody,
            other => other,
        }
    }

    /// The answer for a request for `id` this node does not serve, routed
    /// `route`.
    pub fn elsewhere(&self, id: &AccountId, route: Route) -> Error {
        let shard = id.shard(u64::from(self.cfg.shards)) as u32;
        match route {
            Route::Leader(leader, addr) => Error::WrongNode {
                shard,
                leader: Some(leader),
                sentence: format!("node {leader} ({addr}) leads shard {shard}; nothing was applied, send it there"),
            },
            Route::Here(_) | Route::Nobody => Error::ShardUnavailable(format!(
                "shard {shard} has no leader this node can serve it with; nothing was applied, retry"
            )),
        }
    }

    /// Confirms, by the leader lease, that this node still leads `group`
    /// (before its cells answer requests: reads, and refusals or writes
    /// that change nothing, are answered without a commit).
    pub async fn confirm(&self, group: u32) -> Result<(), Error> {
        match self.raft(group).ensure_linearizable(ReadPolicy::LeaseRead).await {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::ShardUnavailable(format!(
                "this node could not confirm it leads group {group} ({e}); nothing was applied, retry"
            ))),
        }
    }

    /// The health epoch and the term served in each group, read together:
    /// every takeover moves the epoch before it publishes its term, so
    /// terms read between two equal epochs all belong to that epoch.
    /// Memory made in the returned epoch was made under these terms (or
    /// while a group was not served: its term is then 0, and nothing is
    /// proposed for it).
    pub fn terms(&self, health: &Health) -> (u64, Vec<u64>) {
        loop {
            let epoch = health.epoch();
            let terms = self.serving.iter().map(|t| t.load(Ordering::Acquire)).collect();
            if health.epoch() == epoch {
                return (epoch, terms);
            }
        }
    }

    /// Commits a group write: one entry per group it touches, each
    /// proposed for the term in `terms` (as read when the writes were
    /// checked against the epoch). `Ok` once every entry is applied.
    pub(crate) async fn commit(&self, writes: Vec<AccountWrite>, terms: &[u64]) -> Result<(), Error> {
        let mut entries: BTreeMap<u32, ShardEntry> = BTreeMap::new();
        for w in writes {
            let group = self.group_of(&w.id);
            let term = terms[group as usize];
            if term == 0 {
                return Err(Error::ShardUnavailable(format!(
                    "this node stopped leading group {group} while the request was being applied; nothing was \
                     applied, retry"
                )));
            }
            let entry =
                entries.entry(group).or_insert_with(|| ShardEntry { term: Some(term), ..ShardEntry::default() });
            entry.items.push(LogItem { id: w.id, records: w.records, dedup: w.dedup });
        }
        let proposed = entries.len();
        // Each group's failure, and whether it is known to have applied
        // nothing (fenced: every member refused the entry).
        let proposals = entries.into_iter().map(|(group, entry)| async move {
            let outcome = tokio::time::timeout(self.cfg.commit_timeout, self.raft(group).client_write(entry)).await;
            let unknown =
                !matches!(outcome, Ok(Ok(_)) | Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))));
            if unknown && self.serving(group).is_some() {
                // The entry may still commit: the group is not served
                // (its cells reloaded from a store that may yet take the
                // entry) until this node's log is applied (`watch`).
                self.set_serving(group, 0);
                tracing::info!(group, "stopped serving the group until its log is applied");
            }
            match outcome {
                Ok(Ok(written)) if written.data == Applied::Yes => Ok(()),
                Ok(Ok(_fenced)) => Err((format!("group {group} refused the entry (made from outdated memory)"), true)),
                // Refused before it was appended (this node no longer
                // leads, hands the lead off, or its lease ran out): the
                // entry is nowhere.
                Ok(Err(e @ RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                    Err((format!("group {group}: {e}"), true))
                }
                Ok(Err(e)) => Err((format!("group {group}: {e}"), false)),
                Err(_) => Err((format!("group {group} did not commit within {:?}", self.cfg.commit_timeout), false)),
            }
        });
        let failed: Vec<(String, bool)> =
            futures_util::future::join_all(proposals).await.into_iter().filter_map(Result::err).collect();
        if failed.is_empty() {
            return Ok(());
        }
        let what = failed.iter().map(|(why, _)| why.as_str()).collect::<Vec<_>>().join("; ");
        // Groups that did apply their entries keep them: only when every
        // entry proposed was refused is nothing applied.
        if failed.len() == proposed && failed.iter().all(|(_, nothing)| *nothing) {
            return Err(Error::ShardUnavailable(format!("{what}; nothing was applied, retry")));
        }
        Err(Error::OutcomeUnknown(format!("{what}; the outcome is unknown, resend under the same idempotency key")))
    }

    /// Waits until everything this node's member of `group` was given to
    /// propose so far is applied here, while the node serves the group in
    /// `term`: whether it still does, with all of it applied. `false` as
    /// soon as it no longer serves the group in `term` (the next leader
    /// applies what was committed before it serves).
    pub async fn settled(&self, group: u32, term: u64) -> bool {
        let raft = self.raft(group);
        // Asked through the member's own queue: after every write handed
        // to it before (a write whose wait timed out included).
        let Ok(last) = raft.with_raft_state(|st| st.log_ids.last().map(|l| l.index)).await else {
            return false;
        };
        loop {
            if self.serving(group) != Some(term) {
                return false;
            }
            let applied = raft.wait(Some(self.cfg.commit_timeout)).applied_index_at_least(last, "settled").await;
            match applied {
                Ok(_) => return self.serving(group) == Some(term),
                Err(openraft::metrics::WaitError::Timeout(..)) => {}
                Err(_) => return false,
            }
        }
    }

    /// Whether everything in this node's log of `group` (as it is now) is
    /// applied here within `commit_timeout`.
    async fn applied_own_log(&self, group: u32) -> bool {
        let raft = self.raft(group);
        let Ok(last) = raft.with_raft_state(|st| st.log_ids.last().map(|l| l.index)).await else {
            return false;
        };
        raft.wait(Some(self.cfg.commit_timeout)).applied_index_at_least(last, "own log applied").await.is_ok()
    }

    /// Watches every group's leadership: serves a group from the moment it
    /// leads it and has applied what came before its term, stops at once
    /// when it does not, and moves `health`'s epoch each time. `taken(group)`
    /// runs after each takeover (resume what the group's leader owns).
    pub fn watch(
        self: &Arc<Self>,
        health: Arc<Health>,
        taken: Arc<dyn Fn(u32) + Send + Sync>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = (0..self.count())
            .map(|group| {
                let groups = Arc::clone(self);
                let health = Arc::clone(&health);
                let taken = Arc::clone(&taken);
                tokio::spawn(async move {
                    let mut metrics = groups.raft(group).metrics();
                    // A commit whose outcome is unknown stops the serving
                    // (`commit`): looked at again then, too.
                    let mut served_changed = groups.served.subscribe();
                    loop {
                        let (leads, term) = {
                            let m = metrics.borrow_watched();
                            (
                                m.state == ServerState::Leader && m.current_leader == Some(groups.cfg.node_id),
                                m.current_term,
                            )
                        };
                        let served = groups.serving[group as usize].load(Ordering::Acquire);
                        if !leads && served != 0 {
                            groups.set_serving(group, 0);
                            health.moved();
                            tracing::info!(group, term = served, "stopped serving the group");
                        } else if leads && served != term {
                            if served != 0 {
                                groups.set_serving(group, 0);
                                health.moved();
                            }
                            // Everything committed before the term
                            // applied, and everything in this node's log:
                            // an entry of a commit that timed out, if it
                            // commits, is in the store the cells reload.
                            let read = groups.raft(group).ensure_linearizable(ReadPolicy::ReadIndex).await;
                            let level = read.is_ok() && groups.applied_own_log(group).await;
                            if level && metrics.borrow_watched().current_term == term {
                                // The epoch moves before the term is
                                // published: a writer that sees the term
                                // sees the new epoch too (`Groups::terms`),
                                // and cells reload from a store that holds
                                // everything before the term.
                                health.moved();
                                groups.set_serving(group, term);
                                tracing::info!(group, term, "serving the group");
                                taken(group);
                            } else if !level {
                                // No quorum confirmed it yet: look again
                                // when something changes, or soon.
                                let retry = Duration::from_millis(groups.cfg.raft.heartbeat_interval);
                                let _ = tokio::time::timeout(retry, metrics.changed()).await;
                            }
                            continue;
                        }
                        tokio::select! {
                            changed = metrics.changed() => if changed.is_err() { return },
                            _ = served_changed.changed() => {}
                        }
                    }
                })
            })
            .collect();
        if self.cfg.balance_leaders {
            tasks.push(tokio::spawn(Arc::clone(self).balance()));
        }
        tasks
    }

    /// Spreads the lead: every `BALANCE_EVERY`, each group this node
    /// serves whose preferred voter is another node (`preferred`) is handed
    /// to it once that voter has every entry of this node's log and
    /// answered within an election timeout. A group is not handed to the
    /// same voter again for `BALANCE_BACKOFF` (a voter that cannot keep
    /// the lead).
    async fn balance(self: Arc<Self>) {
        // Per group: the voter it was last handed to, and when.
        let mut handed: Vec<Option<(u64, tokio::time::Instant)>> = vec![None; self.count() as usize];
        loop {
            tokio::time::sleep(BALANCE_EVERY).await;
            for group in 0..self.count() {
                let Some(to) = self.handoff(group) else { continue };
                let last = &mut handed[group as usize];
                if last.is_some_and(|(before, at)| before == to && at.elapsed() < BALANCE_BACKOFF) {
                    continue;
                }
                if self.raft(group).trigger().transfer_leader(to).await.is_err() {
                    return; // The member stopped: the node is stopping.
                }
                *last = Some((to, tokio::time::Instant::now()));
                tracing::info!(group, to, "handed the group's lead to its preferred voter");
            }
        }
    }

    /// The voter this node should hand `group` to now, if any: the
    /// group's preferred voter, when this node serves the group, is not
    /// that voter, the membership is not changing (no joint change, no
    /// learner catching up: a replacement in progress), and the voter has
    /// every entry of this node's log and was heard from lately (a voter
    /// behind the log ignores a handoff, and the group then waits an
    /// election timeout for a new leader; under a steady load the handoff
    /// waits for a moment the voter is level).
    fn handoff(&self, group: u32) -> Option<u64> {
        self.serving(group)?;
        let metrics = self.raft(group).metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        if m.current_leader != Some(self.cfg.node_id)
            || membership.get_joint_config().len() != 1
            || membership.learner_ids().next().is_some()
        {
            return None;
        }
        let voters: Vec<u64> = membership.voter_ids().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let to = preferred(group, &voters)?;
        if to == self.cfg.node_id {
            return None;
        }
        let matched = m.replication.as_ref()?.get(&to)?.as_ref()?.index;
        let heard = m.heartbeat.as_ref()?.get(&to)?.as_ref()?;
        let recent = Duration::from_millis(self.cfg.raft.election_timeout_min);
        (Some(matched) == m.last_log_index && heard.elapsed() < recent).then_some(to)
    }

    /// Replaces the group's voter on node `from` with node `to` (at
    /// `to_addr`), if this node leads the group: `to` joins as a learner
    /// and catches up from this node's log (waiting at most `wait`), then
    /// one joint change makes it a voter in `from`'s place. A node being
    /// replaced that leads hands the lead off first.
    pub async fn replace_here(
        &self,
        group: u32,
        from: u64,
        to: u64,
        to_addr: &str,
        wait: Duration,
    ) -> Result<Replaced, String> {
        if group >= self.count() {
            return Err(format!("there is no group {group} (there are {})", self.count()));
        }
        let raft = self.raft(group);
        let (leads, leader, voters, unfinished) = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            let membership = m.membership_config.membership();
            let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
            let configs = membership.get_joint_config();
            let unfinished = (configs.len() > 1).then(|| configs[configs.len() - 1].clone());
            let leads = m.state == ServerState::Leader && m.current_leader == Some(self.cfg.node_id);
            (leads, m.current_leader, voters, unfinished)
        };
        if !leads {
            return Ok(Replaced::NotLeader(leader));
        }
        if let Some(last) = unfinished {
            // A joint change whose leader was lost before its last step
            // (this node leads with it): finished to where it was going.
            let change = raft.change_membership(last, false);
            return match tokio::time::timeout(wait, change).await {
                Ok(Ok(_)) => Ok(Replaced::Again),
                Ok(Err(e)) => match e.forward_to_leader() {
                    Some(to) => Ok(Replaced::NotLeader(to.leader_id)),
                    None => Err(e.to_string()),
                },
                Err(_) => Err(format!("group {group}: finishing a joint change did not finish within {wait:?}")),
            };
        }
        match (voters.contains(&from), voters.contains(&to)) {
            (false, true) => return Ok(Replaced::Done),
            (false, false) => return Err(format!("node {from} is not a voter of group {group} ({voters:?})")),
            (true, true) => return Err(format!("node {to} is already a voter of group {group}")),
            (true, false) => {}
        }
        if from == self.cfg.node_id {
            if !voters.iter().any(|v| *v != from) {
                return Err(format!("node {from} is group {group}'s only voter: nobody to hand the lead to"));
            }
            // To a voter that has every entry and answered lately: one that
            // is down or behind would not take it, and the group would be
            // handed to it again and again.
            let Some(other) = self.caught_up_voter(group, from) else {
                return Ok(Replaced::Unreachable(format!(
                    "no other voter of group {group} is caught up to take its lead from node {from}"
                )));
            };
            raft.trigger().transfer_leader(other).await.map_err(|e| e.to_string())?;
            return Ok(Replaced::HandedOff(other));
        }
        let late = |step: &str| format!("group {group}: {step} did not finish within {wait:?}");
        // Leadership may move while a step runs: the step is asked again of
        // the new leader (a change already made is made once).
        let moved =
            |e: openraft::errors::RaftError<C, openraft::errors::ClientWriteError<C>>| match e.forward_to_leader() {
                Some(to) => Ok(Replaced::NotLeader(to.leader_id)),
                None => Err(e.to_string()),
            };
        let learner = raft.add_learner(to, BasicNode { addr: to_addr.to_string() }, true);
        if let Err(e) = tokio::time::timeout(wait, learner).await.map_err(|_| late("catching up"))? {
            return moved(e);
        }
        let mut now = voters;
        now.remove(&from);
        now.insert(to);
        let change = raft.change_membership(now, false);
        if let Err(e) = tokio::time::timeout(wait, change).await.map_err(|_| late("the change"))? {
            return moved(e);
        }
        tracing::info!(group, from, to, "replaced a member");
        Ok(Replaced::Done)
    }

    /// The voter of `group` other than `not` to hand its lead to (this
    /// node leads it): of those that answered within an election timeout,
    /// the one furthest in this node's log (the lowest id of equals).
    fn caught_up_voter(&self, group: u32, not: u64) -> Option<u64> {
        let metrics = self.raft(group).metrics();
        let m = metrics.borrow_watched();
        let recent = Duration::from_millis(self.cfg.raft.election_timeout_min);
        let replication = m.replication.as_ref()?;
        let heartbeat = m.heartbeat.as_ref()?;
        let voters: std::collections::BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        voters
            .into_iter()
            .filter(|v| *v != not && *v != self.cfg.node_id)
            .filter(|v| heartbeat.get(v).and_then(|h| h.as_ref()).is_some_and(|h| h.elapsed() < recent))
            .filter_map(|v| Some((replication.get(&v)?.as_ref()?.index, v)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, v)| v)
    }

    /// Whether this node's member of `group` leads it now (as its own Raft
    /// state says, whatever the map says).
    pub fn leads(&self, group: u32) -> bool {
        let Some(raft) = self.rafts.get(group as usize) else { return false };
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.cfg.node_id)
    }

    /// The leader of `group` as this node knows it: itself, or another
    /// node and its address.
    pub fn leader_of(&self, group: u32) -> Route {
        if let Some(map) = self.map()
            && !map.holds(group, self.cfg.node_id)
        {
            // Not a member here: the map's hint (a node that no longer
            // leads answers `wrong_node` with the one that does).
            let Some(g) = map.groups.get(group as usize) else { return Route::Nobody };
            let leader = g.leader.or_else(|| g.voters.iter().next().copied());
            return match leader.and_then(|id| Some((id, map.addr(id)?.to_string()))) {
                Some((id, addr)) if id != self.cfg.node_id => Route::Leader(id, addr),
                _ => Route::Nobody,
            };
        }
        let metrics = self.raft(group).metrics();
        let m = metrics.borrow_watched();
        match m.current_leader {
            Some(id) if id == self.cfg.node_id => Route::Here(m.current_term),
            Some(id) => {
                Route::Leader(id, m.membership_config.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default())
            }
            None => Route::Nobody,
        }
    }

    /// Every group as this node sees it.
    pub fn status(&self) -> Vec<GroupStatus> {
        (0..self.count())
            .map(|group| {
                let metrics = self.raft(group).metrics();
                let m = metrics.borrow_watched();
                let mut status = GroupStatus {
                    group,
                    first_shard: group * self.cfg.shards_per_group,
                    last_shard: (group + 1) * self.cfg.shards_per_group - 1,
                    member: true,
                    serving: self.serving(group).is_some(),
                    leader: m.current_leader,
                    term: m.current_term,
                    last_log_index: m.last_log_index,
                    last_applied: m.last_applied.map(|l| l.index),
                    voters: m.membership_config.membership().voter_ids().collect(),
                };
                if let Some(map) = self.map()
                    && !map.holds(group, self.cfg.node_id)
                    && let Some(g) = map.groups.get(group as usize)
                {
                    // Not a member here: what the map says.
                    status = GroupStatus {
                        member: false,
                        leader: g.leader,
                        term: g.term,
                        last_log_index: None,
                        last_applied: None,
                        voters: g.voters.iter().copied().collect(),
                        ..status
                    };
                }
                status
            })
            .collect()
    }

    /// Stops every member (the node is stopping).
    pub async fn shutdown(&self) {
        for group in 0..self.count() {
            self.set_serving(group, 0);
        }
        for raft in &self.rafts {
            let _ = raft.shutdown().await;
        }
    }
}

/// How often a node looks for groups to hand to their preferred voters.
pub const BALANCE_EVERY: Duration = Duration::from_secs(1);
/// How long a node waits before it hands one group to its preferred voter
/// again.
pub const BALANCE_BACKOFF: Duration = Duration::from_secs(30);

/// The voter that should lead `group`: the voters, in id order, take the
/// groups round the ring (group `g` to the `g mod n`-th), so each of `n`
/// voters leads its share and a group's lead comes back to the same node
/// after it failed over.
pub fn preferred(group: u32, voters: &[u64]) -> Option<u64> {
    if voters.is_empty() {
        return None;
    }
    Some(voters[group as usize % voters.len()])
}

/// How long a replacement waits for the new member to catch up, and then
/// for the change, in one group.
pub const REPLACE_WAIT: Duration = Duration::from_secs(120);

impl super::link::Members for Groups {
    fn replace<'a>(
        &'a self,
        group: u32,
        from: u64,
        to: u64,
        to_addr: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Replaced, String>> + Send + 'a>> {
        Box::pin(self.replace_here(group, from, to, to_addr, REPLACE_WAIT))
    }
}
