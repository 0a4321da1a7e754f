//! The writer thread: takes what has arrived while the previous group was
//! being written, writes it as one `WriteSet` with one sync, then answers,
//! publishes and hands on recharge orders (see the module above).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{broadcast, mpsc};
// The runtime's clock: paused time in the simulation moves it.
use tokio::time::Instant;

use super::{AccountEvent, ChargeOrder, Submission, WriterConfig};
use crate::cluster::groups::Groups;
use crate::config::Durability;
use crate::error::Error;
use crate::health::Health;
use crate::ledger::Event;
use crate::stats::NodeStats;
use crate::store::{Store, WriteSet};

/// Where the writer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// On a thread of its own, its store calls off the runtime.
    Thread,
    /// As a task of the caller's runtime, its store calls on it: with a
    /// current-thread runtime and paused time (the simulation), every run
    /// of one seed interleaves the same way.
    Task,
}

/// The running writer, to wait for at stop.
pub enum WriterHandle {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

impl WriterHandle {
    /// Waits until the writer has stopped.
    pub async fn join(self) {
        match self {
            WriterHandle::Thread(thread) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            WriterHandle::Task(task) => {
                let _ = task.await;
            }
        }
    }
}

/// Runs the writer until every sender is dropped.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    runs: Runs,
    store: Arc<dyn Store>,
    cfg: WriterConfig,
    rx: mpsc::Receiver<Submission>,
    events: broadcast::Sender<AccountEvent>,
    charges: mpsc::UnboundedSender<ChargeOrder>,
    health: Arc<Health>,
    stats: Arc<NodeStats>,
    groups: Option<Arc<Groups>>,
) -> std::io::Result<WriterHandle> {
    let writer = Writer { store, cfg, events, charges, health, stats, groups };
    match runs {
        Runs::Task => Ok(WriterHandle::Task(tokio::spawn(writer.run(rx)))),
        Runs::Thread => {
            // The thread waits on the channel and the timers through the
            // runtime it was started from.
            let runtime = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name("prepaid-journal".into())
                .spawn(move || runtime.block_on(writer.run(rx)))
                .map(WriterHandle::Thread)
        }
    }
}

struct Writer {
    store: Arc<dyn Store>,
    cfg: WriterConfig,
    events: broadcast::Sender<AccountEvent>,
    charges: mpsc::UnboundedSender<ChargeOrder>,
    health: Arc<Health>,
    stats: Arc<NodeStats>,
    /// Clustered: groups are committed through the node's Raft groups,
    /// whose state machines write the store.
    groups: Option<Arc<Groups>>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Submission>) {
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
                None => rx.recv().await,
                Some(wait) => match tokio::time::timeout(wait, rx.recv()).await {
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
            self.commit(&mut group, sync).await;
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

    async fn commit(&self, group: &mut Vec<Submission>, sync: bool) {
        // Only submissions made in the current epoch, while storage works,
        // may be written; the rest are refused whole. Clustered, the terms
        // the groups are served in are read with the epoch (`Groups::terms`):
        // the submissions of that epoch were made under them, and an entry
        // committed in another term is refused by its state machine.
        let (epoch, terms) = match &self.groups {
            Some(groups) => {
                let (epoch, terms) = groups.terms(&self.health);
                (epoch, Some(terms))
            }
            None => (self.health.epoch(), None),
        };
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
        // What to publish once durable, taken before the store takes the
        // set: recharge orders, and the events if anyone listens (cloning
        // every record for nobody would be most of this loop's cost).
        let subscribed = self.events.receiver_count() > 0;
        let mut orders = Vec::new();
        let mut published = Vec::new();
        for w in &set.accounts {
            for record in &w.records {
                if let Event::RechargeRequested { attempt_id, amount } = record.event {
                    orders.push(ChargeOrder { account: w.id.clone(), attempt_id, amount });
                }
                if subscribed {
                    published.push(AccountEvent { account: w.id.clone(), record: record.clone() });
                }
            }
        }
        let result = match (&failure, &self.groups) {
            (Some(reason), _) => Err(Error::StorageUnavailable(reason.clone())),
            (None, _) if set.accounts.is_empty() && (!sync || self.groups.is_some()) => Ok(()),
            (None, Some(groups)) => {
                let terms = terms.as_deref().unwrap_or_default();
                let committed = groups.commit(set.accounts, terms).await;
                if committed.is_err() {
                    // Memory may be ahead of what the groups applied.
                    self.health.moved();
                    if !orders.is_empty() {
                        // The entries may commit yet: their recharges
                        // would then wait in flight for the next leader.
                        let (groups, store) = (Arc::clone(groups), Arc::clone(&self.store));
                        tokio::spawn(settle(groups, store, self.charges.clone(), orders.clone(), terms.to_vec()));
                    }
                }
                committed
            }
            (None, None) => {
                let written =
                    if set.accounts.is_empty() { self.store.sync() } else { self.store.write_owned(set, sync) };
                written.map_err(|e| {
                    self.health.fail(&e.to_string());
                    Error::StorageUnavailable(e.to_string())
                })
            }
        };
        // Publish what became durable, then answer, in order.
        if result.is_ok() {
            for order in orders {
                // The worker is gone only when the node is stopping;
                // recovery resumes the attempt from the store.
                let _ = self.charges.send(order);
            }
            for event in published {
                // A subscriber that left meanwhile is not an error.
                let _ = self.events.send(event);
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
                    Ok(()) if self.groups.is_some() && failure.is_none() => Err(Error::ShardUnavailable(
                        "leadership of a shard group moved while this request was being applied; nothing was \
                         applied, retry"
                            .into(),
                    )),
                    Ok(()) => Err(Error::StorageUnavailable(
                        "storage failed while this request was being applied; it was not recorded".into(),
                    )),
                    Err(e) => Err(e.clone()),
                };
                reply_to.send(answer);
            }
            if let Some(done) = s.barrier {
                let _ = done.send(());
            }
        }
    }
}

/// Recharges requested by a round whose commit failed with its outcome
/// unknown: each group's entry may still commit in the term it was made
/// in. Once everything the group's member was given is applied here, an
/// attempt the store holds in flight is handed to the recharge worker (its
/// attempt id is the gateway key: a second order is harmless). If the
/// node stops serving the group first — a group whose own entry's outcome
/// is unknown is not served until this node's log of it is applied
/// (`Groups::commit`) — the group's attempts are resumed when it is served
/// again, here or by the next leader (`Groups::watch`).
async fn settle(
    groups: Arc<Groups>,
    store: Arc<dyn Store>,
    charges: mpsc::UnboundedSender<ChargeOrder>,
    orders: Vec<ChargeOrder>,
    terms: Vec<u64>,
) {
    let mut by_group: std::collections::BTreeMap<u32, Vec<ChargeOrder>> = Default::default();
    for order in orders {
        by_group.entry(groups.group_of(&order.account)).or_default().push(order);
    }
    for (group, orders) in by_group {
        let term = terms.get(group as usize).copied().unwrap_or(0);
        if term == 0 || !groups.settled(group, term).await {
            continue;
        }
        for order in orders {
            let loaded = store.load(&order.account).ok().flatten();
            if loaded.and_then(|l| l.state.auto_recharge.in_flight).is_some_and(|a| a.id == order.attempt_id) {
                let _ = charges.send(order);
            }
        }
    }
}
