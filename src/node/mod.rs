//! The embedded node: the one entry point a platform service needs.
//!
//! `Node::start` opens the store, starts the journal writer, the shard
//! workers (`shard/`), the timer and recharge tasks, and serves requests: a
//! batch is split by worker (`stable_hash(id) mod shards`, shard `s` on
//! worker `s mod workers`), one message each, and the caller waits on one
//! completion for the whole batch. `shutdown` stops taking requests, drains
//! what is in flight, makes it durable and stops every task.

#[cfg(all(test, feature = "rocksdb"))]
pub(crate) mod clustered;
mod control;
mod ops;
pub mod reads;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::cluster::groups::{Groups, Route};
use crate::cluster::link::{Forwarded, LinkFactory};
use crate::config::NodeConfig;
use crate::error::Error;
use crate::health::Health;
use crate::journal::{self, AccountEvent, ChargeOrder, Submission, WriterConfig};
use crate::ledger::hash::stable_hash;
use crate::ledger::{AccountId, Command, EventRecord, Reply, Request};
use crate::recharge::gateway::PaymentGateway;
use crate::recharge::{self, Accounts};
use crate::shard::{Completion, Job, ShardWorker, Shared, WorkerMsg, internal};
use crate::stats::NodeStats;
use crate::store::Store;

/// How long shutdown waits (in 5 ms steps) for stopped workers to let go.
const SHUTDOWN_WAIT_STEPS: u32 = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot start: {0}")]
    Io(#[from] std::io::Error),
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    workers: Vec<ActorRef<WorkerMsg>>,
    shards: u64,
    events: broadcast::Sender<AccountEvent>,
    stopping: AtomicBool,
    /// Requests taken by `execute`/`execute_batch` and not yet answered.
    in_flight: AtomicUsize,
    /// Clustered: the node's shard groups (only the groups it serves take
    /// requests).
    groups: Option<Arc<Groups>>,
    /// Clustered: channels to the other nodes, over which requests for
    /// groups they lead are forwarded (`None`: answered `wrong_node`).
    link: Option<LinkFactory>,
    /// Requests forwarded so far.
    forwarded: std::sync::atomic::AtomicU64,
    /// Requests waiting for their group to have a leader
    /// (`cluster.leaderless_buffer` at most).
    waiting: AtomicUsize,
    /// The node itself, for the tasks that wait for a leader.
    me: Weak<Inner>,
    /// Clustered: the node's member of the controller (`node/control.rs`).
    controller: std::sync::OnceLock<Arc<crate::cluster::control::Controller>>,
    /// Clustered without a node link (the simulation): how the controller's
    /// work reaches the other nodes.
    peers: std::sync::OnceLock<Arc<dyn crate::cluster::control::Peers>>,
}

/// Where a job may still go from the node that has it.
#[derive(Clone, Copy)]
struct Hops {
    /// To its group's leader over the node link (one hop: not a job that
    /// was forwarded here).
    forward: bool,
    /// Wait here, once, for its group to have a leader.
    wait: bool,
}

impl Hops {
    /// A caller's request, or one the node makes itself.
    const FIRST: Hops = Hops { forward: true, wait: true };
    /// A request another node forwarded here.
    const FORWARDED: Hops = Hops { forward: false, wait: true };
}

/// Counts requests against `node.max_in_flight` while they are in the node.
struct Admitted<'a> {
    count: &'a AtomicUsize,
    n: usize,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// The hash seed of a simulated node (`Node::start_simulated`).
const SIMULATED_SEED: u64 = 0x5eed_5eed_5eed_5eed;

pub struct Node {
    inner: Arc<Inner>,
    writer: Option<journal::WriterHandle>,
    tasks: Vec<JoinHandle<()>>,
    /// A temporary data directory, removed on shutdown (or when the node
    /// is dropped).
    temp_dir: Option<tempfile::TempDir>,
    /// Clustered from the configuration (`cluster.node_id`): the link
    /// service that serves its groups' members to the other nodes, and the
    /// disk of their logs (closed after the groups stop).
    #[cfg(feature = "rocksdb")]
    member: Option<Member>,
}

/// What a node started clustered by `Node::start` holds besides the node.
#[cfg(feature = "rocksdb")]
struct Member {
    link: Arc<crate::cluster::link::LinkService<crate::cluster::apply::StoreShard>>,
    _disk: crate::cluster::rocks::RaftDisk,
}

impl Node {
    #[cfg(feature = "rocksdb")]
    /// Starts a node on RocksDB in `config.node.data_dir` (a new temporary
    /// directory if empty), with the system clock and the given gateway.
    pub async fn start(config: NodeConfig, gateway: Arc<dyn PaymentGateway>) -> Result<Node, StartError> {
        config.validate()?;
        let (dir, temp_dir) = if config.node.data_dir.as_os_str().is_empty() {
            // A new directory of its own (tempfile makes it unique and
            // private), removed when the node stops.
            let temp = tempfile::Builder::new().prefix("prepaid-").tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        } else {
            (config.node.data_dir.clone(), None)
        };
        std::fs::create_dir_all(&dir)?;
        let n = &config.node;
        let opts = crate::store::RocksOptions {
            memtable_mb: n.memtable_mb,
            shards: Some(n.shards),
            checkpoint_log_bytes_max: n.checkpoint_log_bytes_max,
            checkpoint_interval_ms: n.checkpoint_interval_ms,
            idempotency_window_ms: config.ledger.idempotency_window_ms,
            checkpoint_on_open: true,
        };
        let store: Arc<dyn Store> = Arc::new(crate::store::RocksStore::open_with(&dir, opts)?);
        let mut node = if config.cluster.enabled() {
            Node::start_member(config, store, &dir, gateway).await?
        } else {
            Node::start_with(config, store, Arc::new(SystemClock), gateway).await?
        };
        node.temp_dir = temp_dir;
        Ok(node)
    }

    /// `start`, clustered (`cluster.node_id`): the groups' logs on a RocksDB
    /// of their own in `dir/raft`, their members reached over the node link
    /// with the cluster secret. A new cluster is made by `cluster_init` on
    /// one of its nodes.
    #[cfg(feature = "rocksdb")]
    async fn start_member(
        config: NodeConfig,
        store: Arc<dyn Store>,
        dir: &std::path::Path,
        gateway: Arc<dyn PaymentGateway>,
    ) -> Result<Node, StartError> {
        use crate::cluster::groups::GroupsConfig;
        use crate::cluster::link::LinkService;
        let c = &config.cluster;
        let disk = crate::cluster::rocks::RaftDisk::open(&dir.join("raft"))?;
        let link = LinkFactory::new(&c.secret);
        let raft = openraft::Config {
            cluster_name: "prepaid".into(),
            heartbeat_interval: c.heartbeat_ms,
            election_timeout_min: c.election_timeout_min_ms,
            election_timeout_max: c.election_timeout_max_ms,
            ..Default::default()
        };
        let cfg = GroupsConfig {
            node_id: c.node_id,
            shards: config.node.shards,
            shards_per_group: c.shards_per_group,
            commit_timeout: Duration::from_millis(c.commit_timeout_ms),
            raft,
            notice_ms: config.ledger.expiry_notice_ms,
            webhooks: !config.webhooks.urls.is_empty(),
            balance_leaders: c.balance_leaders,
            snapshot_log_entries: c.snapshot_log_entries,
            snapshot_timeout: Duration::from_millis(c.snapshot_timeout_ms),
        };
        let groups = Groups::start(cfg, Arc::clone(&store), |g| (disk.log(g), link.group(g)))
            .await
            .map_err(|e| StartError::Io(std::io::Error::other(e)))?;
        let service = LinkService::new(&c.secret);
        for g in 0..groups.count() {
            service.host(g, groups.raft(g).clone());
        }
        let control = crate::cluster::control::CONTROL;
        let controller = crate::cluster::control::Controller::start(
            c.node_id,
            groups.raft_config(),
            disk.log(control),
            link.group(control),
            Arc::new(disk.log(control)),
        )
        .await;
        let controller = match controller {
            Ok(controller) => controller,
            Err(e) => {
                groups.shutdown().await;
                return Err(StartError::Io(std::io::Error::other(e)));
            }
        };
        match Node::start_clustered(config, store, Arc::new(SystemClock), gateway, Arc::clone(&groups), Some(link))
            .await
        {
            Ok(mut node) => {
                node.attach_controller(Arc::clone(&controller));
                service.host_control(controller.raft().clone(), node.asked());
                service.forward_to(node.forwarded());
                service.members_of(Arc::downgrade(&groups) as Weak<dyn crate::cluster::link::Members>);
                node.member = Some(Member { link: service, _disk: disk });
                Ok(node)
            }
            Err(e) => {
                groups.shutdown().await;
                controller.shutdown().await;
                Err(e)
            }
        }
    }

    /// Clustered from the configuration: the gRPC service of the node link,
    /// for the server to serve beside the ledger.
    pub fn link_service(&self) -> Option<Arc<crate::cluster::link::LinkService<crate::cluster::apply::StoreShard>>> {
        #[cfg(feature = "rocksdb")]
        return self.member.as_ref().map(|m| Arc::clone(&m.link));
        #[cfg(not(feature = "rocksdb"))]
        None
    }

    /// Requests this node forwarded to the leaders of their groups.
    pub fn forwarded_count(&self) -> u64 {
        self.inner.forwarded.load(Ordering::Relaxed)
    }

    /// The node's shard count, shards per group (0 alone) and each group's
    /// leader as this node knows it (its id and address): where a client
    /// sends an account's requests.
    pub fn cluster_map(&self) -> (u32, u32, Vec<Option<(u64, String)>>) {
        let shards = self.inner.shared.cfg.node.shards;
        match &self.inner.groups {
            None => (shards, 0, Vec::new()),
            Some(groups) => (shards, groups.shards_per_group(), groups.leaders()),
        }
    }

    /// Requests waiting now for their group to have a leader.
    pub fn waiting_count(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Clustered: each group's leader, term and progress as this node
    /// sees them; `None` when the node runs alone.
    pub fn cluster_status(&self) -> Option<Vec<crate::cluster::groups::GroupStatus>> {
        self.inner.groups.as_ref().map(|g| g.status())
    }

    /// Starts a node on any store and clock (tests use a manual clock and an
    /// in-memory store).
    pub async fn start_with(
        config: NodeConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        gateway: Arc<dyn PaymentGateway>,
    ) -> Result<Node, StartError> {
        Node::start_on(config, store, clock, gateway, false, None, None).await
    }

    /// Starts a clustered node: its writes are committed through `groups`
    /// (the node's members of its shard groups, on the same `store`), and
    /// it serves only the groups it leads. See `cluster::groups`. With
    /// `link`, requests for groups another node leads are forwarded there
    /// (one hop); without, they are answered `wrong_node`.
    pub async fn start_clustered(
        config: NodeConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        gateway: Arc<dyn PaymentGateway>,
        groups: Arc<Groups>,
        link: Option<LinkFactory>,
    ) -> Result<Node, StartError> {
        Node::start_on(config, store, clock, gateway, false, Some(groups), link).await
    }

    /// `start_clustered` for the cluster simulation: everything the node
    /// runs is a task of the caller's runtime (`start_simulated`), and it
    /// does not forward.
    #[doc(hidden)]
    pub async fn start_clustered_simulated(
        config: NodeConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        gateway: Arc<dyn PaymentGateway>,
        groups: Arc<Groups>,
    ) -> Result<Node, StartError> {
        Node::start_on(config, store, clock, gateway, true, Some(groups), None).await
    }

    /// What runs requests forwarded to this node (for its link service).
    pub fn forwarded(&self) -> Weak<dyn Forwarded> {
        Arc::downgrade(&self.inner) as Weak<dyn Forwarded>
    }

    /// `start_with` for the deterministic simulation: everything the node
    /// runs is a task of the caller's runtime — the journal writer, reads
    /// of cold accounts — and its hash maps have a fixed seed. On a
    /// current-thread runtime with paused time, over a store that does not
    /// block (`SimStore`), a run is a function of its inputs: the same
    /// requests give the same replies and the same disk, byte for byte.
    #[doc(hidden)]
    pub async fn start_simulated(
        config: NodeConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        gateway: Arc<dyn PaymentGateway>,
    ) -> Result<Node, StartError> {
        Node::start_on(config, store, clock, gateway, true, None, None).await
    }

    async fn start_on(
        config: NodeConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        gateway: Arc<dyn PaymentGateway>,
        simulated: bool,
        groups: Option<Arc<Groups>>,
        link: Option<LinkFactory>,
    ) -> Result<Node, StartError> {
        config.validate()?;
        let mut config = config;
        // `recharge.enabled = false` reaches the rules as a flag of theirs.
        config.ledger.auto_recharge_off = !config.recharge.enabled;
        let health = Arc::new(Health::default());
        let stats = Arc::new(NodeStats::default());
        let (writer_tx, writer_rx) = mpsc::channel(config.node.writer_queue);
        let (events, _) = broadcast::channel(config.node.event_buffer);
        let (charges_tx, charges_rx) = mpsc::unbounded_channel::<ChargeOrder>();
        let writer_cfg = WriterConfig {
            durability: config.node.durability,
            flush_interval: Duration::from_millis(config.node.flush_interval_ms),
            group_max_accounts: config.node.group_max_accounts,
            webhooks: !config.webhooks.urls.is_empty(),
            storage_retry: Duration::from_millis(config.node.storage_retry_ms),
        };
        // Read before the writer starts: an error here must leave nothing
        // running. Clustered, a group's attempts resume when the node
        // takes the group's lead instead.
        let in_flight = if groups.is_some() { Vec::new() } else { store.in_flight_recharges()? };
        let runs = if simulated { journal::Runs::Task } else { journal::Runs::Thread };
        let writer = journal::spawn(
            runs,
            Arc::clone(&store),
            writer_cfg,
            writer_rx,
            events.clone(),
            charges_tx.clone(),
            Arc::clone(&health),
            Arc::clone(&stats),
            groups.clone(),
        )?;
        // Recharges requested before a restart and never answered resume with
        // their attempt ids.
        for (account, attempt_id, amount) in in_flight {
            let _ = charges_tx.send(ChargeOrder { account, attempt_id, amount });
        }
        let shared = Arc::new(Shared {
            cfg: config,
            store,
            clock,
            writer: writer_tx,
            health,
            stats,
            dedup_seed: if simulated { SIMULATED_SEED } else { stable_hash(&SystemClock.now_ms().to_le_bytes()) },
            resident: AtomicUsize::new(0),
            simulated,
        });
        let mut workers = Vec::new();
        for _ in 0..shared.cfg.node.worker_count() {
            match ShardWorker::spawn(None, ShardWorker, Arc::clone(&shared)).await {
                Ok((worker, _)) => workers.push(worker),
                Err(e) => {
                    for worker in &workers {
                        worker.stop(None);
                    }
                    let (tx, rx) = oneshot::channel();
                    if shared.writer.send(Submission::stop(tx)).await.is_ok() {
                        let _ = rx.await;
                    }
                    writer.join().await;
                    return Err(StartError::Io(std::io::Error::other(format!("cannot start a shard worker: {e}"))));
                }
            }
        }
        let inner = Arc::new_cyclic(|me| Inner {
            shards: u64::from(shared.cfg.node.shards),
            shared,
            workers,
            events,
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            groups,
            link,
            forwarded: std::sync::atomic::AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            me: me.clone(),
            controller: std::sync::OnceLock::new(),
            peers: std::sync::OnceLock::new(),
        });
        let timing = recharge::Timing {
            charge_timeout: Duration::from_millis(inner.shared.cfg.node.recharge_charge_timeout_ms),
            retry_unknown: Duration::from_millis(inner.shared.cfg.node.recharge_retry_unknown_ms),
        };
        let mut tasks = vec![
            tokio::spawn(timers(Arc::clone(&inner))),
            tokio::spawn(recharge::worker(Arc::downgrade(&inner) as Weak<dyn Accounts>, charges_rx, gateway, timing)),
        ];
        if let Some(groups) = &inner.groups {
            // A new leader resumes the group's recharge attempts in flight
            // with their attempt ids (the gateway key): none is charged twice.
            let store = Arc::clone(&inner.shared.store);
            let of = Arc::clone(groups);
            let taken = move |group: u32| match store.in_flight_recharges() {
                Ok(attempts) => {
                    for (account, attempt_id, amount) in attempts {
                        if of.group_of(&account) == group {
                            let _ = charges_tx.send(ChargeOrder { account, attempt_id, amount });
                        }
                    }
                }
                Err(e) => tracing::error!(group, error = %e, "cannot read the group's recharges in flight"),
            };
            tasks.extend(groups.watch(Arc::clone(&inner.shared.health), Arc::new(taken)));
        }
        let n = &inner.shared.cfg.node;
        tracing::info!(
            shards = n.shards,
            workers = inner.workers.len(),
            durability = ?n.durability,
            "node started"
        );
        Ok(Node {
            inner,
            writer: Some(writer),
            tasks,
            temp_dir: None,
            #[cfg(feature = "rocksdb")]
            member: None,
        })
    }

    /// One request; the reply once it is durable (in `sync` mode).
    pub async fn execute(&self, req: Request) -> Result<Reply, Error> {
        let admitted = self.inner.admit(1);
        if admitted.n == 0 {
            return Err(Error::Overloaded);
        }
        self.inner.execute(req).await
    }

    /// Many requests, one result each, in order. Requests for the same
    /// account are applied in the order given.
    pub async fn execute_batch(&self, reqs: Vec<Request>) -> Result<Vec<Result<Reply, Error>>, Error> {
        let max = self.inner.shared.cfg.node.max_batch;
        if reqs.len() > max {
            return Err(Error::BatchTooLarge { max });
        }
        // As many as the bound has room for, from the front: the rest of the
        // batch is answered `overloaded` (later requests of an account are
        // shed, never earlier ones).
        let admitted = self.inner.admit(reqs.len());
        let shed = reqs.len() - admitted.n;
        let mut reqs = reqs;
        reqs.truncate(admitted.n);
        let (completion, replies) = Completion::new(reqs.len());
        let jobs = reqs.into_iter().zip(replies).map(|(req, reply)| Job { req, reply: Some(reply) }).collect();
        self.inner.dispatch(jobs).await;
        let mut out = completion.wait().await;
        out.extend((0..shed).map(|_| Err(Error::Overloaded)));
        Ok(out)
    }

    /// A page of the account's durable ledger, oldest first.
    pub fn history(&self, id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<EventRecord>, Error> {
        crate::ledger::decide::check_page(limit, &self.inner.shared.cfg.ledger)?;
        if let Some(groups) = &self.inner.groups {
            // This node's store holds only the groups it is a member of
            // (what it held of others is stale).
            let group = groups.group_of(id);
            if !groups.holds(group) {
                return Err(groups.elsewhere(id, groups.leader_of(group)));
            }
        }
        self.inner.shared.store.history(id, after_seq, limit).map_err(|e| Error::StorageUnavailable(e.to_string()))
    }

    /// Every durable event, in order per account. A subscriber that falls
    /// more than `node.event_buffer` events behind is told how many it
    /// missed (`RecvError::Lagged`) and goes on from the oldest kept.
    pub fn subscribe(&self) -> broadcast::Receiver<AccountEvent> {
        self.inner.events.subscribe()
    }

    /// Why storage is failed, if it is: writes are refused (reads are
    /// served from what is durable) until a probe write succeeds.
    pub fn storage_failure(&self) -> Option<String> {
        self.inner.shared.health.failure()
    }

    /// Storage failures and recoveries since start.
    pub fn storage_events(&self) -> (u64, u64) {
        self.inner.shared.health.counts()
    }

    /// Requests in the node now (bounded by `node.max_in_flight`).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Group commit sizes and recharge outcomes so far.
    pub fn stats(&self) -> crate::stats::StatsSnapshot {
        self.inner.shared.stats.snapshot()
    }

    /// The store (webhook cursors; read-only uses).
    /// Clustered: the node's shard groups.
    pub(crate) fn groups(&self) -> Option<Arc<Groups>> {
        self.inner.groups.clone()
    }

    pub(crate) fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.inner.shared.store)
    }

    /// The node's settings.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.shared.cfg
    }

    /// Accounts held in memory now.
    pub fn resident_accounts(&self) -> usize {
        self.inner.shared.resident.load(Ordering::Relaxed)
    }

    /// Stops taking requests, lets every worker finish what it holds, makes
    /// it durable, and stops every task.
    pub async fn shutdown(mut self) {
        self.inner.stopping.store(true, Ordering::Release);
        for task in self.tasks.drain(..) {
            task.abort();
            // Returns once the task is gone and has let go of the node.
            let _ = task.await;
        }
        // Every request taken is in a worker's mailbox: once each worker has
        // handed on what it holds (cold accounts loaded and applied), the
        // writer's stop makes all of it durable.
        for worker in &self.inner.workers {
            let (tx, rx) = oneshot::channel();
            if worker.send_message(WorkerMsg::Drain(tx)).is_ok() {
                let _ = rx.await;
            }
        }
        let (tx, rx) = oneshot::channel();
        if self.inner.shared.writer.send(Submission::stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(writer) = self.writer.take() {
            writer.join().await;
        }
        if let Some(groups) = &self.inner.groups {
            groups.shutdown().await;
        }
        if let Some(controller) = self.inner.controller.get() {
            controller.shutdown().await;
        }
        // Everything is durable in the log; putting it in tables makes the
        // next start fast. A failure here loses nothing.
        if self.inner.shared.health.failure().is_none() {
            let store = Arc::clone(&self.inner.shared.store);
            if self.inner.shared.simulated {
                let _ = store.flush();
            } else {
                let _ = tokio::task::spawn_blocking(move || store.flush()).await;
            }
        }
        for worker in &self.inner.workers {
            worker.stop(None);
        }
        // Stopped workers drop their state (and with it the store) as their
        // tasks end; wait for that, boundedly, so the data directory is free
        // for the next node when this returns.
        for _ in 0..SHUTDOWN_WAIT_STEPS {
            if Arc::strong_count(&self.inner.shared) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::info!("node stopped");
        let temp_dir = self.temp_dir.take();
        drop(self);
        // Removed once the store is closed.
        drop(temp_dir);
    }
}

impl Inner {
    /// Counts in as many of `n` requests as the bound has room for (`.n`,
    /// possibly 0); they count until the returned guard is dropped.
    fn admit(&self, n: usize) -> Admitted<'_> {
        let max = self.shared.cfg.node.max_in_flight;
        let mut now = self.in_flight.load(Ordering::Acquire);
        loop {
            let room = n.min(max.saturating_sub(now));
            match self.in_flight.compare_exchange_weak(now, now + room, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Admitted { count: &self.in_flight, n: room },
                Err(actual) => now = actual,
            }
        }
    }

    async fn execute(&self, req: Request) -> Result<Reply, Error> {
        let (completion, mut replies) = Completion::new(1);
        self.dispatch(vec![Job { req, reply: replies.pop() }]).await;
        completion.wait().await.pop().unwrap_or_else(|| Err(Error::Internal("no answer".into())))
    }

    /// The worker hosting the account: its shard's owner.
    fn worker_of(&self, id: &AccountId) -> usize {
        (id.shard(self.shards) % self.workers.len() as u64) as usize
    }

    /// `send`, for callers' requests: clustered, the requests for a group
    /// this node serves are taken only after the leader lease of the group
    /// confirms this node still leads it. Not only reads (`balance`,
    /// `check_access`): a refusal, or a write that changes nothing, is
    /// answered from the cells without a commit, and a deposed leader that
    /// does not know it yet (cut off, paused) would answer it from old
    /// memory (the cluster simulation found one refusing debits of an
    /// account it held as newly opened).
    async fn dispatch(&self, jobs: Vec<Job>) {
        self.dispatch_with(jobs, Hops::FIRST).await
    }

    async fn dispatch_with(&self, jobs: Vec<Job>, hops: Hops) {
        let Some(groups) = &self.groups else { return self.send(jobs) };
        let mut confirmed: Vec<(u32, Result<(), Error>)> = Vec::new();
        for job in &jobs {
            let group = groups.group_of(&job.req.account);
            if groups.serving(group).is_some() && !confirmed.iter().any(|(g, _)| *g == group) {
                confirmed.push((group, groups.confirm(group).await));
            }
        }
        let mut send = Vec::with_capacity(jobs.len());
        for job in jobs {
            let group = groups.group_of(&job.req.account);
            match confirmed.iter().find(|(g, _)| *g == group) {
                Some((_, Err(e))) => {
                    if let Some(reply) = job.reply {
                        reply.send(Err(e.clone()));
                    }
                }
                _ => send.push(job),
            }
        }
        self.send_or_forward(send, hops);
    }

    /// How long a forwarded call may take: a wait there for the group's
    /// leader, the leader's commit, and a second for the hop.
    fn forward_timeout(&self) -> Duration {
        let c = &self.shared.cfg.cluster;
        Duration::from_millis(c.leaderless_wait_ms.saturating_add(c.commit_timeout_ms).saturating_add(1_000))
    }

    /// Hands jobs to their workers, one message per worker; answers them at
    /// once if the node is stopping. Clustered, a job for a group this
    /// node does not serve is forwarded to its leader (or answered
    /// `wrong_node`), or waits for its group to have a leader (or is
    /// answered `shard_unavailable`). A job whose worker is gone is
    /// answered `internal` when it is dropped.
    pub(crate) fn send(&self, jobs: Vec<Job>) {
        self.send_or_forward(jobs, Hops::FIRST)
    }

    /// `send`; clustered, a job for a group another node leads goes there
    /// over the node link when `hops.forward` (one hop: a forwarded job is
    /// not forwarded again), and a job for a group without a leader waits
    /// for one, up to `cluster.leaderless_wait_ms`, when `hops.wait`
    /// (`cluster.leaderless_buffer` jobs at most wait at once).
    fn send_or_forward(&self, jobs: Vec<Job>, hops: Hops) {
        if self.stopping.load(Ordering::Acquire) {
            for job in jobs {
                if let Some(reply) = job.reply {
                    reply.send(Err(Error::ShuttingDown));
                }
            }
            return;
        }
        let jobs = match &self.groups {
            None => jobs,
            Some(groups) => {
                let mut here = Vec::with_capacity(jobs.len());
                let mut there: BTreeMap<String, Vec<Job>> = BTreeMap::new();
                let mut waiting: Vec<Job> = Vec::new();
                let c = &self.shared.cfg.cluster;
                for job in jobs {
                    if groups.serving(groups.group_of(&job.req.account)).is_some() {
                        here.push(job);
                        continue;
                    }
                    // Timers fire where their group is led; a job nobody
                    // waits for is not forwarded.
                    if job.reply.is_none() {
                        continue;
                    }
                    match groups.route(&job.req.account) {
                        Route::Leader(_, addr) if hops.forward && self.link.is_some() && !addr.is_empty() => {
                            there.entry(addr).or_default().push(job);
                        }
                        Route::Nobody if hops.wait && c.leaderless_wait_ms > 0 => waiting.push(job),
                        route => {
                            let error = groups.elsewhere(&job.req.account, route);
                            if let Some(reply) = job.reply {
                                reply.send(Err(error));
                            }
                        }
                    }
                }
                self.wait_for_leader(waiting, None, hops);
                if let Some(link) = &self.link {
                    for (addr, jobs) in there {
                        self.forwarded.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                        let timeout = self.forward_timeout();
                        tokio::spawn(forward_to(self.me.clone(), link.clone(), addr, jobs, timeout, hops));
                    }
                }
                here
            }
        };
        if self.workers.len() == 1 {
            let _ = self.workers[0].send_message(WorkerMsg::Batch(jobs));
            return;
        }
        let mut per_worker: Vec<Vec<Job>> = (0..self.workers.len()).map(|_| Vec::new()).collect();
        for job in jobs {
            per_worker[self.worker_of(&job.req.account)].push(job);
        }
        for (worker, jobs) in self.workers.iter().zip(per_worker) {
            if !jobs.is_empty() {
                let _ = worker.send_message(WorkerMsg::Batch(jobs));
            }
        }
    }

    /// Jobs whose groups have no leader to send them to (or only `avoid`,
    /// a leader found gone): each waits for its group to have one, up to
    /// `cluster.leaderless_wait_ms`, then is sent on once more (without
    /// waiting again). Past `cluster.leaderless_buffer` jobs waiting, a
    /// job is answered `shard_unavailable` at once.
    fn wait_for_leader(&self, jobs: Vec<Job>, avoid: Option<String>, hops: Hops) {
        let Some(groups) = &self.groups else { return self.send_or_forward(jobs, Hops { wait: false, ..hops }) };
        let max = self.shared.cfg.cluster.leaderless_buffer;
        let mut per_group: BTreeMap<u32, Vec<Job>> = BTreeMap::new();
        for job in jobs {
            let room = self.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
            if room.is_ok() {
                per_group.entry(groups.group_of(&job.req.account)).or_default().push(job);
            } else if let Some(reply) = job.reply {
                reply.send(Err(groups.elsewhere(&job.req.account, Route::Nobody)));
            }
        }
        let wait = Duration::from_millis(self.shared.cfg.cluster.leaderless_wait_ms);
        for (group, jobs) in per_group {
            let (me, groups, avoid) = (self.me.clone(), Arc::clone(groups), avoid.clone());
            tokio::spawn(async move {
                groups.routable(group, avoid.as_deref(), wait).await;
                let Some(inner) = me.upgrade() else {
                    for job in jobs {
                        if let Some(reply) = job.reply {
                            reply.send(Err(Error::ShuttingDown));
                        }
                    }
                    return;
                };
                inner.waiting.fetch_sub(jobs.len(), Ordering::AcqRel);
                inner.dispatch_with(jobs, Hops { wait: false, ..hops }).await;
            });
        }
    }

    /// Asks every worker to passivate settled accounts: idle ones (when
    /// `idle`), and while more than `max_resident_accounts` are resident,
    /// the least recently used. Their state is on disk; the next request
    /// reloads it.
    fn passivate_some(&self, idle: bool) {
        let over =
            self.shared.resident.load(Ordering::Relaxed).saturating_sub(self.shared.cfg.node.max_resident_accounts);
        if !idle && over == 0 {
            return;
        }
        let lru = over.div_ceil(self.workers.len());
        for worker in &self.workers {
            let _ = worker.send_message(WorkerMsg::Sweep { idle, lru });
        }
    }

    /// Sends a command the node makes on its own behalf (timers, recharge
    /// outcomes) and waits for its result.
    pub(crate) async fn command(
        &self,
        id: &AccountId,
        key: Option<crate::ledger::IdemKey>,
        command: Command,
    ) -> Result<Reply, Error> {
        self.execute(Request { account: id.clone(), key, command }).await
    }
}

impl Accounts for Inner {
    fn command<'a>(
        &'a self,
        id: &'a AccountId,
        key: Option<crate::ledger::IdemKey>,
        command: Command,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, Error>> + Send + 'a>> {
        Box::pin(Inner::command(self, id, key, command))
    }

    fn stats(&self) -> &NodeStats {
        &self.shared.stats
    }
}

/// Wakes accounts whose deadlines have come: the persisted timer index says
/// which, so deadlines that passed while the node was down fire on start.
async fn timers(inner: Arc<Inner>) {
    let poll = Duration::from_millis(inner.shared.cfg.node.timer_poll_ms);
    let idle_sweep_ms = (inner.shared.cfg.node.idle_passivate_ms / 2).max(1);
    let mut last_idle_sweep = inner.shared.clock.now_ms();
    loop {
        let sweep_idle = inner.shared.clock.now_ms().saturating_sub(last_idle_sweep) >= idle_sweep_ms;
        if sweep_idle {
            last_idle_sweep = inner.shared.clock.now_ms();
        }
        inner.passivate_some(sweep_idle);
        let now = inner.shared.clock.now_ms();
        match inner.shared.store.due(now, 1_024) {
            Ok(due) => inner.send(due.into_iter().map(|(_, id)| internal(&id, Command::Tick)).collect()),
            Err(e) => inner.shared.health.fail(&e.to_string()),
        }
        tokio::time::sleep(poll).await;
    }
}

/// Jobs for groups the node at `addr` leads: sent there as one call; each
/// job answered with its result there. A call that never left (the
/// leader's address refused it: that node is gone) waits for the groups'
/// next leaders, once (`hops.wait`); any other failure is answered with
/// its outcome unknown.
async fn forward_to(me: Weak<Inner>, link: LinkFactory, addr: String, jobs: Vec<Job>, timeout: Duration, hops: Hops) {
    let reqs: Vec<Request> = jobs.iter().map(|j| j.req.clone()).collect();
    let answered = link.forward(&addr, &reqs, timeout).await;
    if let Err(failed) = &answered
        && failed.unsent
        && hops.wait
        && let Some(inner) = me.upgrade()
    {
        return inner.wait_for_leader(jobs, Some(addr), hops);
    }
    match answered {
        Ok(answers) => {
            for (job, answer) in jobs.into_iter().zip(answers) {
                if let Some(reply) = job.reply {
                    reply.send(answer);
                }
            }
        }
        Err(failed) => {
            let error = if failed.unsent {
                Error::ShardUnavailable(format!(
                    "the leader at {addr} could not be reached ({}); nothing was applied, retry",
                    failed.why
                ))
            } else {
                Error::OutcomeUnknown(format!(
                    "forwarded to the leader at {addr}, which did not answer ({}); the outcome is unknown, resend \
                     under the same idempotency key",
                    failed.why
                ))
            };
            for job in jobs {
                if let Some(reply) = job.reply {
                    reply.send(Err(error.clone()));
                }
            }
        }
    }
}

impl Forwarded for Inner {
    fn run(&self, reqs: Vec<Request>) -> crate::cluster::link::Ran<'_> {
        Box::pin(async move {
            let max = self.shared.cfg.node.max_batch;
            if reqs.len() > max {
                return reqs.iter().map(|_| Err(Error::BatchTooLarge { max })).collect();
            }
            // Counted against `node.max_in_flight` here, as a caller's.
            let admitted = self.admit(reqs.len());
            let shed = reqs.len() - admitted.n;
            let mut reqs = reqs;
            reqs.truncate(admitted.n);
            let (completion, replies) = Completion::new(reqs.len());
            let jobs = reqs.into_iter().zip(replies).map(|(req, reply)| Job { req, reply: Some(reply) }).collect();
            self.dispatch_with(jobs, Hops::FORWARDED).await;
            let mut out = completion.wait().await;
            out.extend((0..shed).map(|_| Err(Error::Overloaded)));
            out
        })
    }
}
