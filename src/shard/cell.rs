//! An account cell: the account actor's state, hosted by its shard worker.
//!
//! A cell is the single writer of one account: the worker hands it that
//! account's requests in arrival order and it applies them through the
//! ledger, in memory. What a batch wrote (journal records, the snapshot,
//! idempotency records, the timer change) and the replies that must wait for
//! it go into the worker's submission to the journal writer; the cell does
//! not wait for the disk (pipelining).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Durability;
use crate::error::Error;
use crate::journal::Submission;
use crate::ledger::{Account, AccountId, Command, Dedup, Event, IdemKey};
use crate::shard::{Job, Shared};
use crate::store::{AccountWrite, Loaded, StoreError};

pub struct Cell {
    id: AccountId,
    account: Account,
    /// The next deadline as the timer index has it.
    timer_written: Option<u64>,
    /// The recharge attempt in flight as the `inflight` index has it.
    in_flight_written: Option<(u64, crate::ledger::Amount)>,
    /// The last sequence number handed to the writer, and the last one it
    /// made durable.
    submitted_seq: u64,
    durable_seq: Arc<AtomicU64>,
    /// Idempotency keys past the window, to delete with the next write.
    dedup_expired: Vec<IdemKey>,
    /// The health epoch this memory belongs to (see `health.rs`).
    epoch: u64,
    pub last_used_ms: u64,
}

impl Cell {
    /// A cell from what the store holds for the account (`None`: never
    /// written), belonging to health epoch `epoch`.
    pub fn new(id: AccountId, loaded: Option<Loaded>, shared: &Shared, epoch: u64) -> Cell {
        let mut cell = Cell {
            id,
            account: Account::default(),
            timer_written: None,
            in_flight_written: None,
            submitted_seq: 0,
            durable_seq: Arc::new(AtomicU64::new(0)),
            dedup_expired: Vec::new(),
            epoch,
            last_used_ms: shared.clock.now_ms(),
        };
        cell.restore(loaded, shared);
        cell
    }

    fn restore(&mut self, loaded: Option<Loaded>, shared: &Shared) {
        let ledger = &shared.cfg.ledger;
        self.account = match loaded {
            Some(loaded) => Account::restore(Some(loaded.state), Dedup::restore(shared.dedup_seed, loaded.dedup)),
            None => Account::restore(None, Dedup::with_seed(shared.dedup_seed)),
        };
        let last_seq = self.account.state.as_ref().map_or(0, |s| s.next_seq - 1);
        self.timer_written = self.account.state.as_ref().and_then(|s| s.next_deadline_ms(ledger.expiry_notice_ms));
        self.in_flight_written = self.account.state.as_ref().and_then(in_flight);
        self.submitted_seq = last_seq;
        // A new durable mark: a late confirmation for the old memory must
        // not count.
        self.durable_seq = Arc::new(AtomicU64::new(last_seq));
        self.dedup_expired.clear();
    }

    /// Whether everything the cell wrote is durable: only then may it be
    /// passivated (the store then holds all of it).
    pub fn settled(&self) -> bool {
        self.durable_seq.load(Ordering::Acquire) >= self.submitted_seq
    }

    /// Rereads the account from the store when the health epoch moved
    /// (memory may be ahead of, or behind, the disk).
    pub fn catch_up(&mut self, shared: &Shared, epoch: u64) -> Result<(), StoreError> {
        if self.epoch != epoch {
            let since = shared.clock.now_ms().saturating_sub(shared.cfg.ledger.idempotency_window_ms);
            let loaded = shared.store.load(&self.id, since)?;
            self.restore(loaded, shared);
            self.epoch = epoch;
        }
        Ok(())
    }

    /// While storage is failed: reads are answered from the durable state
    /// (on a copy, so settling deadlines changes nothing in memory); every
    /// write is refused.
    pub fn serve_reads_only(&self, jobs: Vec<Job>, reason: &str, now: u64, shared: &Shared) {
        for job in jobs {
            let Some(reply) = job.reply else { continue };
            let answer = if job.req.command.is_query() && job.req.command != Command::Tick {
                let mut scratch = self.account.clone();
                scratch.execute(&job.req, now, &shared.cfg.ledger).result.map_err(Error::Refused)
            } else {
                Err(Error::StorageUnavailable(reason.to_string()))
            };
            reply.send(answer);
        }
    }

    /// Applies the account's requests in order and adds what they wrote,
    /// and the replies that wait for it, to `out`.
    pub fn apply(&mut self, jobs: Vec<Job>, now: u64, shared: &Shared, out: &mut Submission) {
        let ledger = &shared.cfg.ledger;
        let async_mode = shared.cfg.node.durability == Durability::Async;
        self.last_used_ms = now;
        let mut records = Vec::new();
        let mut dedup = Vec::new();
        let mut waiting = Vec::with_capacity(jobs.len());
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
            out.force_sync |= money_in || starts_recharge;
            self.dedup_expired.extend(outcome.expired);
            records.extend(outcome.records);
            let result = outcome.result.map_err(Error::Refused);
            match job.reply {
                // Async mode answers at once, except money in, which waits
                // for its sync.
                Some(reply) if async_mode && !money_in => reply.send(result),
                Some(reply) => waiting.push((reply, result)),
                None => {}
            }
        }
        let wrote = match &self.account.state {
            Some(account) if !records.is_empty() => {
                let timer_after = account.next_deadline_ms(ledger.expiry_notice_ms);
                let in_flight_now = in_flight(account);
                let in_flight_changed = in_flight_now != self.in_flight_written;
                self.in_flight_written = in_flight_now;
                out.writes.push(AccountWrite {
                    id: self.id.clone(),
                    records,
                    snapshot: Arc::new(account.clone()),
                    dedup,
                    // Kept until a write carries them: a batch that writes
                    // nothing leaves them for the next one.
                    dedup_expired: std::mem::take(&mut self.dedup_expired),
                    timer_before: self.timer_written,
                    timer_after,
                    in_flight_changed,
                });
                self.timer_written = timer_after;
                self.submitted_seq = account.next_seq - 1;
                out.durable.push((Arc::clone(&self.durable_seq), self.submitted_seq));
                true
            }
            _ => false,
        };
        // Nothing written and everything before is durable: answer now.
        // Otherwise the replies wait behind the account's writes.
        if !wrote && self.settled() {
            for (reply, result) in waiting {
                reply.send(result);
            }
        } else {
            out.replies.extend(waiting);
        }
    }
}

/// The account's recharge attempt in flight, as the `inflight` index keeps it.
fn in_flight(state: &crate::ledger::AccountState) -> Option<(u64, crate::ledger::Amount)> {
    state.auto_recharge.in_flight.as_ref().map(|a| (a.id, a.amount))
}
