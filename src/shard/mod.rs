//! Shard workers: the hosts of account cells.
//!
//! Accounts are actors — one writer each, its requests applied one at a
//! time in arrival order, activated from storage on first use, passivated
//! when idle — but an account is a cell inside the worker that owns its
//! shard (virtual actors, as Orleans hosts grains), not a task of its own.
//! A node runs `node.workers` workers (ractor actors); shard `s` belongs to
//! worker `s mod workers`. A caller's batch costs one message per worker it
//! touches and one completion (`journal/completion.rs`) for the whole batch.
//!
//! A worker handles one message at a time: it applies each account's
//! requests through its cell and hands everything the message wrote — the
//! writes of every account, the replies that wait for them — to the journal
//! writer as one submission. A cold account is loaded off the worker (a
//! blocking task); its requests wait in the cell's mailbox meanwhile, so
//! activation never blocks the shard.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};

pub mod cell;

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::error::Error;
use crate::health::Health;
use crate::journal::Submission;
pub use crate::journal::completion::{Completion, ReplyTo};
use crate::ledger::hash::SeededState;
use crate::ledger::{AccountId, Command, Request};
use crate::store::{Loaded, Store, StoreError};
use cell::Cell;

/// What every worker of a node shares.
pub struct Shared {
    pub cfg: NodeConfig,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub writer: mpsc::Sender<Submission>,
    pub health: Arc<Health>,
    pub stats: Arc<crate::stats::NodeStats>,
    /// Seeds the idempotency tables' hash (see `ledger::hash`).
    pub dedup_seed: u64,
    /// Accounts resident in memory, over every worker.
    pub resident: AtomicUsize,
    /// The simulation's node (`Node::start_simulated`): accounts are read
    /// in a task of the runtime instead of on its blocking pool.
    pub simulated: bool,
}

/// One request and where its answer goes (`None`: the node's own request,
/// a timer tick, answered to nobody).
pub struct Job {
    pub req: Request,
    pub reply: Option<ReplyTo>,
}

/// A request the node makes of an account on its own behalf.
pub fn internal(id: &AccountId, command: Command) -> Job {
    Job { req: Request { account: id.clone(), key: None, command }, reply: None }
}

pub enum WorkerMsg {
    /// Requests for accounts of the worker's shards, in arrival order.
    Batch(Vec<Job>),
    /// A cold account's stored state, read off the worker.
    Loaded { id: AccountId, loaded: Result<Option<Box<Loaded>>, StoreError>, epoch: u64 },
    /// Passivate settled cells: those idle for `idle_passivate_ms` (when
    /// `idle`), and the `lru` least recently used.
    Sweep { idle: bool, lru: usize },
    /// Confirmed once every load in progress has ended and its requests
    /// were handed on (shutdown; the node takes no new requests by then).
    Drain(oneshot::Sender<()>),
}

enum Slot {
    /// Being read from the store; requests wait here in order.
    Loading(Vec<Job>),
    Ready(Box<Cell>),
}

pub struct ShardWorker;

/// Account maps hash with the stable hash, seeded per process: several
/// times faster than SipHash on short ids, and ids crafted to collide on one
/// process do not collide on another.
type AccountMap<V> = HashMap<AccountId, V, SeededState>;

pub struct WorkerState {
    shared: Arc<Shared>,
    cells: AccountMap<Slot>,
    loading: usize,
    drains: Vec<oneshot::Sender<()>>,
}

impl Actor for ShardWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _me: ActorRef<WorkerMsg>,
        shared: Arc<Shared>,
    ) -> Result<WorkerState, ActorProcessingErr> {
        let cells = HashMap::with_hasher(SeededState(shared.dedup_seed));
        Ok(WorkerState { shared, cells, loading: 0, drains: Vec::new() })
    }

    async fn handle(
        &self,
        me: ActorRef<WorkerMsg>,
        message: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Batch(jobs) => state.batch(&me, jobs).await,
            WorkerMsg::Loaded { id, loaded, epoch } => state.loaded(id, loaded, epoch).await,
            WorkerMsg::Sweep { idle, lru } => state.sweep(idle, lru),
            WorkerMsg::Drain(done) => {
                if state.loading == 0 {
                    let _ = done.send(());
                } else {
                    state.drains.push(done);
                }
            }
        }
        Ok(())
    }
}

/// The health epoch and failure, read consistently.
fn health_now(health: &Health) -> (u64, Option<String>) {
    loop {
        let epoch = health.epoch();
        let failure = health.failure();
        if health.epoch() == epoch {
            return (epoch, failure);
        }
    }
}

fn refuse(jobs: Vec<Job>, error: &Error) {
    for job in jobs {
        if let Some(reply) = job.reply {
            reply.send(Err(error.clone()));
        }
    }
}

impl WorkerState {
    async fn batch(&mut self, me: &ActorRef<WorkerMsg>, jobs: Vec<Job>) {
        let max = self.shared.cfg.node.account_queue_max;
        let mut groups: Vec<(AccountId, Vec<Job>)> = Vec::new();
        if jobs.len() == 1 {
            let job = jobs.into_iter().next().expect("one job");
            groups.push((job.req.account.clone(), vec![job]));
        } else {
            let mut index: AccountMap<usize> =
                HashMap::with_capacity_and_hasher(jobs.len(), SeededState(self.shared.dedup_seed));
            for job in jobs {
                let at = *index.entry(job.req.account.clone()).or_insert_with(|| {
                    groups.push((job.req.account.clone(), Vec::new()));
                    groups.len() - 1
                });
                groups[at].1.push(job);
            }
        }
        let mut ready = Vec::with_capacity(groups.len());
        for (id, jobs) in groups {
            match self.cells.get_mut(&id) {
                Some(Slot::Ready(_)) if jobs.len() > max => refuse(jobs, &Error::Overloaded),
                Some(Slot::Ready(_)) => ready.push((id, jobs)),
                Some(Slot::Loading(mailbox)) if mailbox.len() + jobs.len() > max => refuse(jobs, &Error::Overloaded),
                Some(Slot::Loading(mailbox)) => mailbox.extend(jobs),
                None if jobs.len() > max => refuse(jobs, &Error::Overloaded),
                None => self.activate(me, id, jobs),
            }
        }
        self.apply(ready).await;
    }

    /// Starts reading a cold account off the worker; its requests wait in
    /// the slot.
    fn activate(&mut self, me: &ActorRef<WorkerMsg>, id: AccountId, jobs: Vec<Job>) {
        self.cells.insert(id.clone(), Slot::Loading(jobs));
        self.loading += 1;
        let shared = &self.shared;
        let store = Arc::clone(&shared.store);
        // The epoch before the read: if storage fails meanwhile, the cell
        // rereads before its first write.
        let epoch = shared.health.epoch();
        let me = me.clone();
        let load = move || {
            let loaded = store.load(&id).map(|found| found.map(Box::new));
            // The worker is gone only when the node stopped.
            let _ = me.send_message(WorkerMsg::Loaded { id, loaded, epoch });
        };
        if shared.simulated {
            // Still after this message, as a read off the worker would be.
            tokio::spawn(async move { load() });
        } else {
            tokio::task::spawn_blocking(load);
        }
    }

    async fn loaded(&mut self, id: AccountId, loaded: Result<Option<Box<Loaded>>, StoreError>, epoch: u64) {
        self.loading -= 1;
        let Some(Slot::Loading(jobs)) = self.cells.remove(&id) else {
            // Cannot happen: only `activate` starts a load.
            return;
        };
        match loaded {
            Ok(loaded) => {
                let cell = Cell::new(id.clone(), loaded.map(|found| *found), &self.shared, epoch);
                self.cells.insert(id.clone(), Slot::Ready(Box::new(cell)));
                self.shared.resident.fetch_add(1, Ordering::Relaxed);
                self.apply(vec![(id, jobs)]).await;
            }
            Err(e) => refuse(jobs, &Error::StorageUnavailable(format!("activating {id}: {e}"))),
        }
        if self.loading == 0 {
            for done in self.drains.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// Applies each account's requests through its (ready) cell and hands
    /// what they wrote to the journal writer as one submission.
    async fn apply(&mut self, groups: Vec<(AccountId, Vec<Job>)>) {
        let shared = Arc::clone(&self.shared);
        let (epoch, failure) = health_now(&shared.health);
        let now = shared.clock.now_ms();
        let mut out = Submission::new(epoch);
        for (id, jobs) in groups {
            let Some(Slot::Ready(cell)) = self.cells.get_mut(&id) else {
                refuse(jobs, &Error::Internal(format!("{id} is not active")));
                continue;
            };
            if let Err(e) = cell.catch_up(&shared, epoch) {
                // The store cannot even be read: nothing can be answered.
                refuse(jobs, &Error::StorageUnavailable(e.to_string()));
                continue;
            }
            if let Some(reason) = &failure {
                cell.serve_reads_only(jobs, reason, now, &shared);
                continue;
            }
            // A bug in the ledger must not stop the whole shard: the cell
            // is dropped (its requests are answered `internal`; the account
            // reloads from what is durable on its next request).
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                cell.apply(jobs, now, &shared, &mut out);
            }));
            if applied.is_err() {
                self.cells.remove(&id);
                shared.resident.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if out.is_empty() {
            return;
        }
        if let Err(mpsc::error::SendError(lost)) = shared.writer.send(out).await {
            // The writer is gone: the node is stopping.
            for (reply, _) in lost.replies {
                reply.send(Err(Error::ShuttingDown));
            }
        }
    }

    fn sweep(&mut self, idle: bool, lru: usize) {
        let now = self.shared.clock.now_ms();
        let idle_ms = self.shared.cfg.node.idle_passivate_ms;
        let mut passivate: Vec<AccountId> = Vec::new();
        let settled = |slot: &Slot| match slot {
            Slot::Ready(cell) if cell.settled() => Some(cell.last_used_ms),
            _ => None,
        };
        if idle {
            // Cells that stay: idempotency records that became durable since
            // each last ran go down to the cap.
            let cap = self.shared.cfg.node.idempotency_resident_keys;
            for slot in self.cells.values_mut() {
                if let Slot::Ready(cell) = slot {
                    cell.trim(cap);
                }
            }
            passivate.extend(
                self.cells
                    .iter()
                    .filter(|(_, slot)| settled(slot).is_some_and(|used| now.saturating_sub(used) >= idle_ms))
                    .map(|(id, _)| id.clone()),
            );
        }
        if lru > 0 {
            let mut candidates: Vec<(u64, &AccountId)> =
                self.cells.iter().filter_map(|(id, slot)| settled(slot).map(|used| (used, id))).collect();
            let lru = lru.min(candidates.len());
            if lru > 0 {
                candidates.select_nth_unstable(lru - 1);
                passivate.extend(candidates[..lru].iter().map(|(_, id)| (*id).clone()));
            }
        }
        for id in passivate {
            // Settled: everything it wrote is in the store, so the next
            // request reloads exactly this state.
            if self.cells.remove(&id).is_some() {
                self.shared.resident.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
