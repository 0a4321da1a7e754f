//! The embedded node: the one entry point a platform service needs.
//!
//! `Node::start` opens the store, starts the journal writer, the timer and
//! recharge tasks, and serves requests: each goes to its shard
//! (`stable_hash(id) mod shards`), then to its account's actor, activated on
//! first use from its stored row. A batch is split by account, so an actor
//! gets one message per batch. `shutdown` stops taking requests, drains what
//! is in flight, makes it durable and stops every task.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::actor::{AccountActor, AccountMsg, ActivateArgs, Job, Shared, internal};
use crate::clock::{Clock, SystemClock};
use crate::config::NodeConfig;
use crate::error::Error;
use crate::gateway::PaymentGateway;
use crate::health::Health;
use crate::journal::{self, AccountEvent, ChargeOrder, Submission, WriterConfig};
use crate::ledger::hash::stable_hash;
use crate::ledger::{AccountId, Command, EventRecord, Reply, Request};
use crate::recharge;
use crate::stats::NodeStats;
use crate::store::Store;

/// How long shutdown waits (in 5 ms steps) for stopped actors to let go.
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

struct Resident {
    actor: ActorRef<AccountMsg>,
    pending: Arc<AtomicUsize>,
    last_used_ms: AtomicU64,
}

#[derive(Default)]
struct Shard {
    accounts: Mutex<Accounts>,
}

#[derive(Default)]
struct Accounts {
    resident: HashMap<AccountId, Arc<Resident>>,
    /// Accounts being passivated: a request for one waits until its last
    /// writes are durable, then activates it afresh from the store.
    stopping: HashMap<AccountId, watch::Receiver<bool>>,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    shards: Vec<Shard>,
    resident: AtomicUsize,
    events: broadcast::Sender<AccountEvent>,
    stopping: AtomicBool,
    /// Requests taken by `execute`/`execute_batch` and not yet answered.
    in_flight: AtomicUsize,
    /// The runtime the node was started on: its actors and tasks run there
    /// whichever runtime a caller is on (`prepaid serve` runs the network
    /// side on a runtime of its own).
    runtime: tokio::runtime::Handle,
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

pub struct Node {
    inner: Arc<Inner>,
    writer: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// A temporary data directory, removed on shutdown.
    temp_dir: Option<PathBuf>,
}

impl Node {
    #[cfg(feature = "rocksdb")]
    /// Starts a node on RocksDB in `config.node.data_dir` (a new temporary
    /// directory if empty), with the system clock and the given gateway.
    pub async fn start(config: NodeConfig, gateway: Arc<dyn PaymentGateway>) -> Result<Node, StartError> {
        config.validate()?;
        let (dir, temp_dir) = if config.node.data_dir.as_os_str().is_empty() {
            // Unique within the process too: two nodes may start in the same
            // millisecond.
            static STARTED: AtomicU64 = AtomicU64::new(0);
            let n = STARTED.fetch_add(1, Ordering::Relaxed);
            let name = format!("prepaid-{}-{}-{n}", std::process::id(), SystemClock.now_ms());
            let dir = std::env::temp_dir().join(name);
            (dir.clone(), Some(dir))
        } else {
            (config.node.data_dir.clone(), None)
        };
        std::fs::create_dir_all(&dir)?;
        let store: Arc<dyn Store> = Arc::new(crate::store::RocksStore::open_with(&dir, config.node.memtable_mb)?);
        let mut node = Node::start_with(config, store, Arc::new(SystemClock), gateway).await?;
        node.temp_dir = temp_dir;
        Ok(node)
    }

    /// Starts a node on any store and clock (tests use a manual clock and an
    /// in-memory store).
    pub async fn start_with(
        config: NodeConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        gateway: Arc<dyn PaymentGateway>,
    ) -> Result<Node, StartError> {
        config.validate()?;
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
        // running.
        let in_flight = store.in_flight_recharges()?;
        let writer = journal::spawn(
            Arc::clone(&store),
            writer_cfg,
            writer_rx,
            events.clone(),
            charges_tx.clone(),
            Arc::clone(&health),
            Arc::clone(&stats),
        )?;
        // Recharges requested before a restart and never answered resume with
        // their attempt ids.
        for (account, attempt_id, amount) in in_flight {
            let _ = charges_tx.send(ChargeOrder { account, attempt_id, amount });
        }
        let shards = (0..config.node.shards).map(|_| Shard::default()).collect();
        let shared = Arc::new(Shared {
            cfg: config,
            store,
            clock,
            writer: writer_tx,
            health,
            stats,
            dedup_seed: stable_hash(&SystemClock.now_ms().to_le_bytes()),
        });
        let inner = Arc::new(Inner {
            shared,
            shards,
            resident: AtomicUsize::new(0),
            events,
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            runtime: tokio::runtime::Handle::current(),
        });
        let timing = recharge::Timing {
            charge_timeout: Duration::from_millis(inner.shared.cfg.node.recharge_charge_timeout_ms),
            retry_unknown: Duration::from_millis(inner.shared.cfg.node.recharge_retry_unknown_ms),
        };
        let tasks = vec![
            tokio::spawn(timers(Arc::clone(&inner))),
            tokio::spawn(recharge::worker(Arc::downgrade(&inner), charges_rx, gateway, timing)),
        ];
        Ok(Node { inner, writer: Some(writer), tasks, temp_dir: None })
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
        let mut receivers = Vec::with_capacity(reqs.len());
        let mut by_account: HashMap<AccountId, Vec<Job>> = HashMap::new();
        let mut reqs = reqs;
        reqs.truncate(admitted.n);
        for req in reqs {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            by_account.entry(req.account.clone()).or_default().push(Job { req, reply: Some(tx) });
        }
        for (id, jobs) in by_account {
            self.inner.send(&id, jobs).await;
        }
        let mut out = Vec::with_capacity(receivers.len() + shed);
        for rx in receivers {
            out.push(rx.await.unwrap_or_else(|_| Err(Error::Internal("the account's actor stopped".into()))));
        }
        out.extend((0..shed).map(|_| Err(Error::Overloaded)));
        Ok(out)
    }

    /// A page of the account's durable ledger, oldest first.
    pub fn history(&self, id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<EventRecord>, Error> {
        crate::ledger::decide::check_page(limit, &self.inner.shared.cfg.ledger)?;
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
    pub(crate) fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.inner.shared.store)
    }

    /// The node's settings.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.shared.cfg
    }

    /// Accounts held in memory now.
    pub fn resident_accounts(&self) -> usize {
        self.inner.resident.load(Ordering::Relaxed)
    }

    /// Stops taking requests, lets every actor finish what it holds, makes
    /// it durable, and stops every task.
    pub async fn shutdown(mut self) {
        self.inner.stopping.store(true, Ordering::Release);
        for task in self.tasks.drain(..) {
            task.abort();
            // Returns once the task is gone and has let go of the node.
            let _ = task.await;
        }
        for shard in &self.inner.shards {
            let residents: Vec<_> = shard.accounts.lock().await.resident.drain().map(|(_, r)| r).collect();
            for resident in residents {
                let (tx, rx) = oneshot::channel();
                if resident.actor.send_message(AccountMsg::Passivate(tx)).is_ok() {
                    let _ = rx.await;
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        if self.inner.shared.writer.send(Submission::stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        // Everything is durable in the log; putting it in tables makes the
        // next start fast. A failure here loses nothing.
        if self.inner.shared.health.failure().is_none() {
            let store = Arc::clone(&self.inner.shared.store);
            let _ = tokio::task::spawn_blocking(move || store.flush()).await;
        }
        // Stopped actors drop their state (and with it the store) as their
        // tasks end; wait for that, boundedly, so the data directory is free
        // for the next node when this returns.
        for _ in 0..SHUTDOWN_WAIT_STEPS {
            if Arc::strong_count(&self.inner.shared) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let temp_dir = self.temp_dir.take();
        drop(self);
        if let Some(dir) = temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
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
        let (tx, rx) = oneshot::channel();
        let id = req.account.clone();
        self.send(&id, vec![Job { req, reply: Some(tx) }]).await;
        rx.await.unwrap_or_else(|_| Err(Error::Internal("the account's actor stopped".into())))
    }

    /// Hands jobs to the account's actor, activating it if needed; answers
    /// them at once if the node is stopping or the account's queue is full.
    pub(crate) async fn send(&self, id: &AccountId, jobs: Vec<Job>) {
        let refuse = |jobs: Vec<Job>, error: Error| {
            for job in jobs {
                if let Some(reply) = job.reply {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        };
        if self.stopping.load(Ordering::Acquire) {
            return refuse(jobs, Error::ShuttingDown);
        }
        let shard = &self.shards[(stable_hash(id.as_str().as_bytes()) % self.shards.len() as u64) as usize];
        let mut jobs = jobs;
        // At most two tries: an actor that stopped between lookup and send is
        // replaced by a fresh one.
        for _ in 0..2 {
            let resident = match self.claim(shard, id, jobs.len()).await {
                Ok(r) => r,
                Err(e) => return refuse(jobs, e),
            };
            match resident.actor.send_message(AccountMsg::Batch(jobs)) {
                Ok(()) => return,
                Err(e) => {
                    let ractor::MessagingErr::SendErr(AccountMsg::Batch(back)) = e else { return };
                    resident.pending.fetch_sub(back.len(), Ordering::AcqRel);
                    jobs = back;
                    let mut accounts = shard.accounts.lock().await;
                    if accounts.resident.get(id).is_some_and(|r| Arc::ptr_eq(r, &resident)) {
                        accounts.resident.remove(id);
                        self.resident.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
        refuse(jobs, Error::Internal("the account's actor could not be started".into()))
    }

    /// The account's actor, activated if needed, with `n` more requests
    /// counted against its queue. Counting under the shard lock is what lets
    /// passivation (which only stops actors with nothing pending) never drop
    /// a request.
    async fn claim(&self, shard: &Shard, id: &AccountId, n: usize) -> Result<Arc<Resident>, Error> {
        loop {
            let mut accounts = shard.accounts.lock().await;
            if let Some(mut stopping) = accounts.stopping.get(id).cloned() {
                drop(accounts);
                // Set once the old actor's writes are durable (or dropped if
                // it died): either way the wait is over.
                let _ = stopping.wait_for(|done| *done).await;
                shard.accounts.lock().await.stopping.remove(id);
                continue;
            }
            let resident = match accounts.resident.get(id) {
                Some(r) => Arc::clone(r),
                None => {
                    let pending = Arc::new(AtomicUsize::new(0));
                    let args = ActivateArgs {
                        id: id.clone(),
                        shared: Arc::clone(&self.shared),
                        pending: Arc::clone(&pending),
                    };
                    let activate = AccountActor::spawn(None, AccountActor, args);
                    let spawned = if tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == self.runtime.id()) {
                        activate.await
                    } else {
                        // A caller on another runtime: the actor is
                        // spawned on the node's.
                        self.runtime
                            .spawn(activate)
                            .await
                            .map_err(|e| Error::Internal(format!("activating {id}: {e}")))?
                    };
                    let (actor, _) = spawned.map_err(|e| Error::StorageUnavailable(format!("activating {id}: {e}")))?;
                    let now = self.shared.clock.now_ms();
                    let resident = Arc::new(Resident { actor, pending, last_used_ms: AtomicU64::new(now) });
                    accounts.resident.insert(id.clone(), Arc::clone(&resident));
                    self.resident.fetch_add(1, Ordering::Relaxed);
                    resident
                }
            };
            if resident.pending.load(Ordering::Acquire) + n > self.shared.cfg.node.account_queue_max {
                return Err(Error::Overloaded);
            }
            resident.pending.fetch_add(n, Ordering::AcqRel);
            resident.last_used_ms.store(self.shared.clock.now_ms(), Ordering::Relaxed);
            return Ok(resident);
        }
    }

    /// Passivates accounts with nothing pending: those untouched for
    /// `idle_passivate_ms` (unless `only_over_cap`), and while more than
    /// `max_resident_accounts` are resident, the least recently used. Their
    /// state is on disk; the next request reloads it.
    async fn passivate_some(&self, only_over_cap: bool) {
        let cfg = &self.shared.cfg.node;
        let now = self.shared.clock.now_ms();
        for shard in &self.shards {
            let over = self.resident.load(Ordering::Relaxed).saturating_sub(cfg.max_resident_accounts);
            if only_over_cap && over == 0 {
                return;
            }
            let mut accounts = shard.accounts.lock().await;
            let mut candidates: Vec<(u64, AccountId)> = accounts
                .resident
                .iter()
                .filter(|(_, r)| r.pending.load(Ordering::Acquire) == 0)
                .map(|(id, r)| (r.last_used_ms.load(Ordering::Relaxed), id.clone()))
                .collect();
            candidates.sort_unstable();
            let per_shard = over.div_ceil(self.shards.len()).max(1);
            for (n, (last_used, id)) in candidates.into_iter().enumerate() {
                let idle = !only_over_cap && now.saturating_sub(last_used) >= cfg.idle_passivate_ms;
                let over_cap = over > 0 && n < per_shard;
                if !idle && !over_cap {
                    continue;
                }
                let Some(resident) = accounts.resident.remove(&id) else { continue };
                self.resident.fetch_sub(1, Ordering::Relaxed);
                let (done_tx, done_rx) = watch::channel(false);
                accounts.stopping.insert(id, done_rx);
                let (tx, rx) = oneshot::channel();
                if resident.actor.send_message(AccountMsg::Passivate(tx)).is_ok() {
                    self.runtime.spawn(async move {
                        let _ = rx.await;
                        let _ = done_tx.send(true);
                    });
                }
            }
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
        inner.passivate_some(!sweep_idle).await;
        let now = inner.shared.clock.now_ms();
        match inner.shared.store.due(now, 1_024) {
            Ok(due) => {
                for (_, id) in due {
                    inner.send(&id, vec![internal(&id, Command::Tick)]).await;
                }
            }
            Err(e) => inner.shared.health.fail(&e.to_string()),
        }
        tokio::time::sleep(poll).await;
    }
}
