//! An account cell: the account actor's state, hosted by its shard worker.
//!
//! A cell is the single writer of one account: the worker hands it that
//! account's requests in arrival order and it applies them through the
//! ledger, in memory. What a batch wrote (journal records, the snapshot,
//! idempotency records, the timer change) and the replies that must wait for
//! it go into the worker's submission to the journal writer; the cell does
//! not wait for the disk (pipelining).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Durability;
use crate::error::Error;
use crate::journal::Submission;
use crate::ledger::{Account, AccountId, Command, Dedup, Event, IdemKey};
use crate::shard::{Job, Shared};
use crate::stats::NodeStats;
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
    /// Above every idempotency key the store may hold and memory does not
    /// (`None`: there is none): a key above it is new without a lookup.
    dedup_max: Option<IdemKey>,
    /// Writes not yet durable: (last sequence, idempotency records it
    /// carries), oldest first, and their records in all. Those records are
    /// the newest in memory and are not evicted before they are durable.
    unsettled: VecDeque<(u64, usize)>,
    unsettled_keys: usize,
    /// Resident idempotency records as last counted in the node's gauge.
    resident_keys: usize,
    stats: Arc<NodeStats>,
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
            dedup_max: None,
            unsettled: VecDeque::new(),
            unsettled_keys: 0,
            resident_keys: 0,
            stats: Arc::clone(&shared.stats),
            epoch,
            last_used_ms: shared.clock.now_ms(),
        };
        cell.restore(loaded, shared);
        cell
    }

    fn restore(&mut self, loaded: Option<Loaded>, shared: &Shared) {
        let ledger = &shared.cfg.ledger;
        let dedup = Dedup::with_seed(shared.dedup_seed);
        (self.account, self.dedup_max) = match loaded {
            Some(loaded) => (Account::restore(Some(loaded.state), dedup), loaded.dedup_max),
            None => (Account::restore(None, dedup), None),
        };
        let last_seq = self.account.state.as_ref().map_or(0, |s| s.next_seq - 1);
        self.timer_written = self.account.state.as_ref().and_then(|s| s.next_deadline_ms(ledger.expiry_notice_ms));
        self.in_flight_written = self.account.state.as_ref().and_then(in_flight);
        self.submitted_seq = last_seq;
        // A new durable mark: a late confirmation for the old memory must
        // not count.
        self.durable_seq = Arc::new(AtomicU64::new(last_seq));
        self.unsettled.clear();
        self.unsettled_keys = 0;
        self.count_resident();
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
            let loaded = shared.store.load(&self.id)?;
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
        self.evict(shared.cfg.node.idempotency_resident_keys);
        for job in jobs {
            debug_assert_eq!(job.req.account, self.id);
            if let Err(e) = self.recall(&job, now, shared) {
                if let Some(reply) = job.reply {
                    reply.send(Err(Error::StorageUnavailable(e.to_string())));
                }
                continue;
            }
            let outcome = self.account.execute(&job.req, now, ledger);
            if let Some(key) = &outcome.recorded
                && let Some(record) = self.account.dedup.get(key)
            {
                dedup.push((key.clone(), record.clone()));
            }
            for record in &outcome.records {
                if let Event::RechargePaused { cause } = &record.event {
                    tracing::warn!(account = %self.id, ?cause, "auto-recharge paused: the account's owner must act (buy, or set it again)");
                }
            }
            let money_in = job.req.command.is_money_in() && !outcome.records.is_empty();
            let starts_recharge = outcome.records.iter().any(|r| matches!(r.event, Event::RechargeRequested { .. }));
            out.force_sync |= money_in || starts_recharge;
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
                let keys = dedup.len();
                out.writes.push(AccountWrite {
                    id: self.id.clone(),
                    records,
                    snapshot: Arc::new(account.clone()),
                    dedup,
                    timer_before: self.timer_written,
                    timer_after,
                    in_flight_changed,
                });
                self.timer_written = timer_after;
                self.submitted_seq = account.next_seq - 1;
                if keys > 0 {
                    self.unsettled.push_back((self.submitted_seq, keys));
                    self.unsettled_keys += keys;
                }
                out.durable.push((Arc::clone(&self.durable_seq), self.submitted_seq));
                true
            }
            _ => false,
        };
        self.evict(shared.cfg.node.idempotency_resident_keys);
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

impl Cell {
    /// Before a request with a key runs: a key that is not resident but may
    /// be stored is read back from the store, so the ledger sees its first
    /// result.
    fn recall(&mut self, job: &Job, now: u64, shared: &Shared) -> Result<(), StoreError> {
        let Some(key) = job.req.idempotency_key() else {
            return Ok(());
        };
        if self.account.dedup.contains(key) || self.dedup_max.as_ref().is_none_or(|max| key > max) {
            return Ok(());
        }
        shared.stats.idempotency_lookups.fetch_add(1, Ordering::Relaxed);
        let since = now.saturating_sub(shared.cfg.ledger.idempotency_window_ms);
        if let Some(record) = shared.store.dedup(&self.id, key, since)? {
            self.account.dedup.remember(key.clone(), record);
        }
        Ok(())
    }

    /// Between requests (the idle sweep): what became durable since the
    /// cell last ran is evicted down to `cap`.
    pub fn trim(&mut self, cap: usize) {
        self.evict(cap);
    }

    /// Keeps at most `cap` idempotency records resident, oldest out first,
    /// but never one whose write is not yet durable (the store would not
    /// have it yet).
    fn evict(&mut self, cap: usize) {
        let durable = self.durable_seq.load(Ordering::Acquire);
        while let Some(&(seq, keys)) = self.unsettled.front() {
            if seq > durable {
                break;
            }
            self.unsettled.pop_front();
            self.unsettled_keys -= keys;
        }
        let dedup = &mut self.account.dedup;
        while dedup.len() > cap && dedup.len() > self.unsettled_keys {
            let Some(key) = dedup.evict_oldest() else { break };
            if self.dedup_max.as_ref().is_none_or(|max| &key > max) {
                self.dedup_max = Some(key);
            }
        }
        self.count_resident();
    }

    /// Brings the node's gauge of resident idempotency records up to date.
    fn count_resident(&mut self) {
        let now = self.account.dedup.len();
        // Most batches leave the count as it was: no shared write then.
        if now == self.resident_keys {
            return;
        }
        if now > self.resident_keys {
            self.stats.idempotency_resident.fetch_add((now - self.resident_keys) as u64, Ordering::Relaxed);
        } else {
            self.stats.idempotency_resident.fetch_sub((self.resident_keys - now) as u64, Ordering::Relaxed);
        }
        self.resident_keys = now;
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        self.stats.idempotency_resident.fetch_sub(self.resident_keys as u64, Ordering::Relaxed);
    }
}

/// The account's recharge attempt in flight, as the `inflight` index keeps it.
fn in_flight(state: &crate::ledger::AccountState) -> Option<(u64, crate::ledger::Amount)> {
    state.auto_recharge.in_flight.as_ref().map(|a| (a.id, a.amount))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a resident account costs before its heap parts (grants, holds,
    /// idempotency records): the figures docs/BENCHMARKS.md breaks the
    /// per-account memory down with, kept from growing unnoticed.
    #[test]
    fn a_resident_cell_is_small_before_its_heap_parts() {
        use std::mem::size_of;
        let sizes = [
            ("Cell", size_of::<Cell>()),
            ("AccountState", size_of::<crate::ledger::AccountState>()),
            ("Dedup", size_of::<Dedup>()),
            ("DedupRecord", size_of::<crate::ledger::DedupRecord>()),
            ("Reply", size_of::<crate::ledger::Reply>()),
        ];
        eprintln!("{sizes:?}");
        assert!(sizes[0].1 <= 1_024, "{sizes:?}");
        assert!(sizes[1].1 <= 640, "{sizes:?}");
    }
}
