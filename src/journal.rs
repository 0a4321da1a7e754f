//! The journal writer: group commit.
//!
//! Shard workers apply requests in memory and hand their writes here
//! without waiting (pipelining), one submission per worker message. The writer takes whatever has arrived while the
//! previous group was being written, writes it as one `WriteSet` (one RocksDB
//! WriteBatch) with one sync, and only then sends that group's replies, in
//! order, publishes its events and hands its recharge requests to the
//! recharge worker. Because the queue is ordered, no reply can depend on an
//! effect that is not yet durable.
//!
//! After a failed write or sync nothing more is written or acknowledged:
//! memory is ahead of disk. The failure moves the health epoch (see
//! `health.rs`); every submission made in an older epoch is refused, so
//! nothing built on lost memory reaches the disk. While failed, the writer
//! asks the store every `storage_retry` whether it works again, and on
//! success marks recovery; cells reload from the store and go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::Durability;
use crate::error::Error;
use crate::health::Health;
use crate::ledger::{AccountId, Event, EventRecord};
use crate::shard::{Answer, ReplyTo};
use crate::stats::NodeStats;
use crate::store::{AccountWrite, Store, WriteSet};

/// An event, durable, as subscribers receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountEvent {
    pub account: AccountId,
    pub record: EventRecord,
}

/// A recharge the ledger decided on, durable, for the recharge worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeOrder {
    pub account: AccountId,
    pub attempt_id: u64,
    pub amount: crate::ledger::Amount,
}

/// What a shard worker hands the writer for one message.
pub struct Submission {
    /// One write per account the message wrote to.
    pub writes: Vec<AccountWrite>,
    /// Sent once the writes (and everything before them) are durable.
    pub replies: Vec<(ReplyTo, Answer)>,
    /// Sync this group even in `async` mode (money in, recharge requests).
    pub force_sync: bool,
    /// Each written account's durable mark, and the last sequence number
    /// this submission makes durable for it.
    pub durable: Vec<(Arc<AtomicU64>, u64)>,
    /// Completed once everything before it is durable (passivation,
    /// shutdown).
    pub barrier: Option<oneshot::Sender<()>>,
    /// The writer stops after this submission's group (shutdown).
    pub stop: bool,
    /// The health epoch the cells' memory belongs to: a submission from an
    /// older epoch is refused, never written.
    pub epoch: u64,
}

impl Submission {
    /// An empty submission for memory of health epoch `epoch`.
    pub fn new(epoch: u64) -> Submission {
        Submission {
            writes: Vec::new(),
            replies: Vec::new(),
            force_sync: false,
            durable: Vec::new(),
            barrier: None,
            stop: false,
            epoch,
        }
    }

    /// Nothing to write and nobody to answer.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.replies.is_empty() && self.barrier.is_none() && !self.stop
    }

    pub fn barrier(done: oneshot::Sender<()>) -> Submission {
        Submission { force_sync: true, barrier: Some(done), ..Submission::new(0) }
    }

    /// The last submission: everything before it is made durable, then the
    /// writer thread ends.
    pub fn stop(done: oneshot::Sender<()>) -> Submission {
        Submission { stop: true, ..Submission::barrier(done) }
    }
}

pub struct WriterConfig {
    pub durability: Durability,
    pub flush_interval: Duration,
    pub group_max_accounts: usize,
    /// Mark writes for webhook delivery.
    pub webhooks: bool,
    /// While storage is failed: how often to ask the store whether it works
    /// again.
    pub storage_retry: Duration,
}

/// Runs the writer on its own thread until every sender is dropped.
pub fn spawn(
    store: Arc<dyn Store>,
    cfg: WriterConfig,
    rx: mpsc::Receiver<Submission>,
    events: broadcast::Sender<AccountEvent>,
    charges: mpsc::UnboundedSender<ChargeOrder>,
    health: Arc<Health>,
    stats: Arc<NodeStats>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("prepaid-journal".into())
        .spawn(move || Writer { store, cfg, events, charges, health, stats, runtime }.run(rx))
}

struct Writer {
    store: Arc<dyn Store>,
    cfg: WriterConfig,
    events: broadcast::Sender<AccountEvent>,
    charges: mpsc::UnboundedSender<ChargeOrder>,
    health: Arc<Health>,
    stats: Arc<NodeStats>,
    runtime: tokio::runtime::Handle,
}

impl Writer {
    fn run(self, mut rx: mpsc::Receiver<Submission>) {
        let mut group: Vec<Submission> = Vec::new();
        let mut last_sync = Instant::now();
        let mut last_probe = Instant::now();
        let mut unsynced = false;
        loop {
            // Wait for the first submission; wake up to sync (async mode) or
            // to probe a failed store.
            let failed = self.health.failure().is_some();
            let wait = if failed {
                Some(self.cfg.storage_retry.saturating_sub(last_probe.elapsed()))
            } else if self.cfg.durability == Durability::Async {
                Some(self.cfg.flush_interval.saturating_sub(last_sync.elapsed()))
            } else {
                None
            };
            let first = match wait {
                None => rx.blocking_recv(),
                // The timer must be made inside the runtime's context.
                Some(wait) => match self.runtime.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                    Ok(next) => next,
                    Err(_elapsed) => {
                        if failed {
                            self.probe();
                            last_probe = Instant::now();
                            unsynced = false;
                        } else if unsynced {
                            self.sync();
                            unsynced = false;
                        }
                        last_sync = Instant::now();
                        continue;
                    }
                },
            };
            let Some(first) = first else { break };
            group.push(first);
            let mut writes = group[0].writes.len();
            while writes < self.cfg.group_max_accounts {
                match rx.try_recv() {
                    Ok(next) => {
                        writes += next.writes.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            let due = last_sync.elapsed() >= self.cfg.flush_interval;
            let sync = self.cfg.durability == Durability::Sync || group.iter().any(|s| s.force_sync) || due;
            let stop = group.iter().any(|s| s.stop);
            self.commit(&mut group, sync);
            if stop {
                return;
            }
            if sync {
                last_sync = Instant::now();
                unsynced = false;
            } else {
                unsynced = true;
            }
            if self.health.failure().is_some() && last_probe.elapsed() >= self.cfg.storage_retry {
                self.probe();
                last_probe = Instant::now();
            }
        }
        if unsynced {
            self.sync();
        }
    }

    /// Asks a failed store whether it works again; on success the node
    /// recovers (and cells reload from the store before writing).
    fn probe(&self) {
        if self.health.failure().is_none() || self.store.recover().is_err() {
            return;
        }
        self.health.recover();
        // A group whose sync failed may have reached the disk after all,
        // with a recharge request in it that was never handed over: resume
        // every attempt the store has in flight, as a restart would (the
        // gateway key makes a second order for a live attempt harmless).
        match self.store.in_flight_recharges() {
            Ok(attempts) => {
                for (account, attempt_id, amount) in attempts {
                    let _ = self.charges.send(ChargeOrder { account, attempt_id, amount });
                }
            }
            Err(e) => self.health.fail(&e.to_string()),
        }
    }

    fn sync(&self) {
        if self.health.failure().is_some() {
            return;
        }
        if let Err(e) = self.store.sync() {
            self.health.fail(&e.to_string());
        }
    }

    fn commit(&self, group: &mut Vec<Submission>, sync: bool) {
        // Only submissions made in the current epoch, while storage works,
        // may be written; the rest are refused whole.
        let epoch = self.health.epoch();
        let failure = self.health.failure();
        let current =
            |s: &Submission| failure.is_none() && (s.epoch == epoch || s.writes.is_empty() && s.replies.is_empty());
        let mut set = WriteSet { webhooks: self.cfg.webhooks, ..WriteSet::default() };
        for s in group.iter_mut() {
            if current(s) {
                set.accounts.append(&mut s.writes);
            }
        }
        if !set.accounts.is_empty() {
            self.stats.record_group(set.accounts.len());
        }
        let result = match &failure {
            Some(reason) => Err(reason.clone()),
            None if set.accounts.is_empty() && !sync => Ok(()),
            None if set.accounts.is_empty() => self.store.sync().map_err(|e| e.to_string()),
            None => self.store.write(&set, sync).map_err(|e| e.to_string()),
        };
        if let Err(reason) = &result {
            self.health.fail(reason);
        }
        // Publish what became durable, then answer, in order.
        if result.is_ok() {
            // Cloning every record for nobody is most of this loop's cost.
            let subscribed = self.events.receiver_count() > 0;
            for w in &set.accounts {
                for record in &w.records {
                    if let Event::RechargeRequested { attempt_id, amount } = record.event {
                        let order = ChargeOrder { account: w.id.clone(), attempt_id, amount };
                        // The worker is gone only when the node is stopping;
                        // recovery resumes the attempt from the store.
                        let _ = self.charges.send(order);
                    }
                    if subscribed {
                        // A subscriber that left meanwhile is not an error.
                        let _ = self.events.send(AccountEvent { account: w.id.clone(), record: record.clone() });
                    }
                }
            }
        }
        for s in group.drain(..) {
            let accepted = result.is_ok() && current(&s);
            if accepted {
                for (mark, seq) in &s.durable {
                    mark.fetch_max(*seq, Ordering::Release);
                }
            }
            for (reply_to, reply) in s.replies {
                let answer = match &result {
                    Ok(()) if accepted => reply,
                    Ok(()) => Err(Error::StorageUnavailable(
                        "storage failed while this request was being applied; it was not recorded".into(),
                    )),
                    Err(reason) => Err(Error::StorageUnavailable(reason.clone())),
                };
                reply_to.send(answer);
            }
            if let Some(done) = s.barrier {
                let _ = done.send(());
            }
        }
    }
}
