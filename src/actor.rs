//! The account actor: one per resident account, the single writer of its
//! state. It applies each batch of requests through the ledger, in order, in
//! memory, and hands the resulting writes and replies to the journal writer
//! without waiting for the disk (pipelining): a hot account is limited by CPU,
//! not by fsync latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::config::{Durability, NodeConfig};
use crate::error::Error;
use crate::health::Health;
use crate::journal::{ReplyTo, Submission};
use crate::ledger::{Account, AccountId, Command, Dedup, Event, Request};
use crate::store::{AccountWrite, Store};

/// What every actor of a node shares.
pub struct Shared {
    pub cfg: NodeConfig,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub writer: mpsc::Sender<Submission>,
    pub health: Arc<Health>,
    pub stats: Arc<crate::stats::NodeStats>,
    /// Seeds the idempotency tables' hash (see `ledger::hash`).
    pub dedup_seed: u64,
}

pub struct Job {
    pub req: Request,
    pub reply: Option<ReplyTo>,
}

pub enum AccountMsg {
    /// Requests for this account, applied in order.
    Batch(Vec<Job>),
    /// Stop after everything before this message is durable; then confirm.
    Passivate(oneshot::Sender<()>),
}

pub struct ActivateArgs {
    pub id: AccountId,
    pub shared: Arc<Shared>,
    /// Requests sent and not yet taken: the router's bound on the queue.
    pub pending: Arc<AtomicUsize>,
}

pub struct AccountActor;

pub struct ActorState {
    id: AccountId,
    account: Account,
    shared: Arc<Shared>,
    pending: Arc<AtomicUsize>,
    /// The next deadline as the timer index has it.
    timer_written: Option<u64>,
    /// The last sequence number handed to the writer, and the last one it
    /// made durable.
    submitted_seq: u64,
    durable_seq: Arc<AtomicU64>,
    /// Idempotency keys past the window, to delete with the next write.
    dedup_expired: Vec<crate::ledger::IdemKey>,
    /// The health epoch this memory belongs to (see `health.rs`).
    epoch: u64,
}

impl Actor for AccountActor {
    type Msg = AccountMsg;
    type State = ActorState;
    type Arguments = ActivateArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AccountMsg>,
        args: ActivateArgs,
    ) -> Result<ActorState, ActorProcessingErr> {
        let epoch = args.shared.health.epoch();
        let mut state = ActorState {
            id: args.id,
            account: Account::default(),
            shared: args.shared,
            pending: args.pending,
            timer_written: None,
            submitted_seq: 0,
            durable_seq: Arc::new(AtomicU64::new(0)),
            dedup_expired: Vec::new(),
            epoch,
        };
        state.load()?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<AccountMsg>,
        message: AccountMsg,
        state: &mut ActorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AccountMsg::Batch(jobs) => {
                state.pending.fetch_sub(jobs.len(), Ordering::AcqRel);
                state.apply(jobs).await;
            }
            AccountMsg::Passivate(done) => {
                let (tx, rx) = oneshot::channel();
                if state.shared.writer.send(Submission::barrier(tx)).await.is_ok() {
                    let _ = rx.await;
                }
                myself.stop(None);
                let _ = done.send(());
            }
        }
        Ok(())
    }
}

impl ActorState {
    /// (Re)reads the account from the store: on activation, and whenever
    /// the health epoch moved (memory may be ahead of, or behind, the disk).
    fn load(&mut self) -> Result<(), crate::store::StoreError> {
        let shared = &self.shared;
        let ledger = &shared.cfg.ledger;
        let since = shared.clock.now_ms().saturating_sub(ledger.idempotency_window_ms);
        self.account = match shared.store.load(&self.id, since)? {
            Some(loaded) => Account::restore(Some(loaded.state), Dedup::restore(shared.dedup_seed, loaded.dedup)),
            None => Account::restore(None, Dedup::with_seed(shared.dedup_seed)),
        };
        let last_seq = self.account.state.as_ref().map_or(0, |s| s.next_seq - 1);
        self.timer_written = self.account.state.as_ref().and_then(|s| s.next_deadline_ms(ledger.expiry_notice_ms));
        self.submitted_seq = last_seq;
        // A new cell: a late confirmation for the old memory must not count.
        self.durable_seq = Arc::new(AtomicU64::new(last_seq));
        self.dedup_expired.clear();
        Ok(())
    }

    /// Brings memory to the current epoch; returns why storage is failed,
    /// if it is (then only reads are served, from what is durable).
    fn catch_up(&mut self) -> Result<Option<String>, String> {
        loop {
            let epoch = self.shared.health.epoch();
            if epoch != self.epoch {
                self.load().map_err(|e| e.to_string())?;
                self.epoch = epoch;
            }
            let failure = self.shared.health.failure();
            if self.shared.health.epoch() == epoch {
                return Ok(failure);
            }
        }
    }

    /// While storage is failed: reads are answered from the durable state
    /// (on a copy, so settling deadlines changes nothing in memory); every
    /// write is refused.
    fn serve_reads_only(&self, jobs: Vec<Job>, reason: &str) {
        let now = self.shared.clock.now_ms();
        for job in jobs {
            let Some(reply) = job.reply else { continue };
            let answer = if job.req.command.is_query() && job.req.command != Command::Tick {
                let mut scratch = self.account.clone();
                scratch.execute(&job.req, now, &self.shared.cfg.ledger).result.map_err(Error::Refused)
            } else {
                Err(Error::StorageUnavailable(reason.to_string()))
            };
            let _ = reply.send(answer);
        }
    }

    async fn apply(&mut self, jobs: Vec<Job>) {
        let shared = Arc::clone(&self.shared);
        match self.catch_up() {
            Ok(None) => {}
            Ok(Some(reason)) => return self.serve_reads_only(jobs, &reason),
            Err(reason) => {
                // The store cannot even be read: nothing can be answered.
                for job in jobs {
                    if let Some(reply) = job.reply {
                        let _ = reply.send(Err(Error::StorageUnavailable(reason.clone())));
                    }
                }
                return;
            }
        }
        let now = shared.clock.now_ms();
        let ledger = &shared.cfg.ledger;
        let mut records = Vec::new();
        let mut dedup = Vec::new();
        let mut replies = Vec::with_capacity(jobs.len());
        let mut force_sync = false;
        let mut immediate = Vec::new();
        let async_mode = shared.cfg.node.durability == Durability::Async;
        for job in jobs {
            debug_assert_eq!(job.req.account, self.id);
            let outcome = self.account.execute(&job.req, now, ledger);
            if let Some(key) = &outcome.recorded
                && let Some(record) = self.account.dedup.get(key)
            {
                dedup.push((key.clone(), record.clone()));
            }
            let money_in = job.req.command.is_money_in() && !outcome.records.is_empty();
            let starts_recharge = outcome.records.iter().any(|r| matches!(r.event, Event::RechargeRequested { .. }));
            force_sync |= money_in || starts_recharge;
            self.dedup_expired.extend(outcome.expired);
            records.extend(outcome.records);
            let result = outcome.result.map_err(Error::Refused);
            match job.reply {
                // Async mode answers at once, except money in, which waits
                // for its sync.
                Some(reply) if async_mode && !money_in => immediate.push((reply, result)),
                Some(reply) => replies.push((reply, result)),
                None => {}
            }
        }
        for (reply, result) in immediate {
            let _ = reply.send(result);
        }
        let write = match &self.account.state {
            Some(account) if !records.is_empty() => {
                let timer_after = account.next_deadline_ms(ledger.expiry_notice_ms);
                let write = AccountWrite {
                    id: self.id.clone(),
                    records,
                    snapshot: Box::new(account.clone()),
                    dedup,
                    // Kept until a write carries them: a batch that writes
                    // nothing leaves them for the next one.
                    dedup_expired: std::mem::take(&mut self.dedup_expired),
                    timer_before: self.timer_written,
                    timer_after,
                };
                self.timer_written = timer_after;
                self.submitted_seq = account.next_seq - 1;
                Some(write)
            }
            _ => None,
        };
        // Nothing to write and everything before is durable: answer now.
        if write.is_none() && self.durable_seq.load(Ordering::Acquire) >= self.submitted_seq {
            for (reply, result) in replies {
                let _ = reply.send(result);
            }
            return;
        }
        if write.is_none() && replies.is_empty() {
            return;
        }
        let durable = write.as_ref().map(|_| (Arc::clone(&self.durable_seq), self.submitted_seq));
        let submission =
            Submission { write, replies, force_sync, durable, barrier: None, stop: false, epoch: self.epoch };
        if let Err(mpsc::error::SendError(lost)) = shared.writer.send(submission).await {
            // The writer is gone: the node is stopping.
            for (reply, _) in lost.replies {
                let _ = reply.send(Err(Error::ShuttingDown));
            }
        }
    }
}

/// A request the node makes of an account on its own behalf.
pub fn internal(id: &AccountId, command: Command) -> Job {
    Job { req: Request { account: id.clone(), key: None, command }, reply: None }
}
