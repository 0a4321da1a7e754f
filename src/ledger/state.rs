//! One account's state, and how events change it.
//!
//! `AccountState` is what an account actor holds in memory and what a
//! snapshot stores. It changes in exactly one way: `replay` of an event
//! record. Deciding what should happen is `decide`'s job; this file only
//! folds facts, so recovery (replaying the journal) and live operation run the
//! same code.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::amount::Amount;
use super::command::{Mode, Service};
use super::event::{Event, EventRecord, GrantSource, HoldEnd, InvoiceSource, PauseCause, SuspendCause};
use super::id::{AccountId, Currency, Text};
use super::reason::Reason;

/// How many ended holds an account remembers, to answer `hold_expired`,
/// `hold_already_captured` or `hold_already_released` rather than
/// `hold_not_found`. Older ones answer `hold_not_found`.
pub const ENDED_HOLDS_KEPT: usize = 32;

/// Credits from one source, burned in the documented order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: u64,
    pub source: GrantSource,
    /// The amount credited (before any debt it paid).
    pub original: Amount,
    pub remaining: Amount,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub priority: u8,
    /// Whether the "grant expiring" notice went out for the current expiry.
    pub notice_sent: bool,
    pub reference: Option<Text>,
}

impl Grant {
    /// The burn order, as one sortable key: soonest expiry first (never
    /// expiring last), then lower priority value, then free before paid,
    /// then oldest, then lowest id. Total: ids are unique.
    pub fn burn_key(&self) -> (u64, u8, u8, u64, u64) {
        (self.expires_at_ms.unwrap_or(u64::MAX), self.priority, self.source.burn_rank(), self.created_at_ms, self.id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: u64,
    pub amount: Amount,
    pub service: Service,
    pub reference: Option<Text>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub id: u64,
    pub amount: Amount,
    pub paid: Amount,
    pub source: InvoiceSource,
    pub issued_at_ms: u64,
    pub due_at_ms: u64,
    pub past_due: bool,
}

impl Invoice {
    pub fn outstanding(&self) -> Amount {
        self.amount - self.paid
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub id: u64,
    pub amount: Amount,
    pub requested_at_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoRecharge {
    pub enabled: bool,
    pub amount: Amount,
    pub threshold: Amount,
    pub paused: Option<PauseCause>,
    /// Consecutive failed charges.
    pub failures: u32,
    /// Purchases requested since the balance was last at the threshold.
    pub chain: u32,
    /// At most one attempt per account is in flight.
    pub in_flight: Option<Attempt>,
    /// When the next attempt may start after a failure.
    pub retry_at_ms: Option<u64>,
}

impl AutoRecharge {
    /// Whether a new attempt may start now (the balance test is the caller's).
    pub fn may_start(&self, now_ms: u64) -> bool {
        self.enabled
            && self.paused.is_none()
            && self.in_flight.is_none()
            && self.retry_at_ms.is_none_or(|at| at <= now_ms)
    }
}

/// The derived status, reported on every reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Inactive,
    Active,
    Suspended,
    Frozen,
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub id: AccountId,
    pub mode: Mode,
    pub currency: Currency,
    pub past_due_suspends: bool,
    pub credit_limit: Option<Amount>,
    pub opened_at_ms: u64,
    /// Set by the first purchase (or recharge); free credits never set it.
    pub activated_at_ms: Option<u64>,
    pub frozen: Option<Text>,
    pub closed: Option<Text>,
    /// Grants with credit left, in burn order.
    pub grants: Vec<Grant>,
    pub holds: Vec<Hold>,
    /// Unpaid invoices (paid ones leave; the journal keeps them).
    pub invoices: Vec<Invoice>,
    /// The last few holds that ended, newest last.
    pub ended_holds: VecDeque<(u64, HoldEnd)>,
    /// Metered usage past zero. While there is debt there are no grants: new
    /// money pays debt first.
    pub debt: Amount,
    /// Σ of the grants' `remaining`, kept as they change: the balance is read
    /// several times per request. The invariants check it against the sum.
    pub credits: Amount,
    /// Σ of the open holds, kept likewise.
    pub held: Amount,
    /// Contract usage in the open period.
    pub period_usage: Amount,
    /// Sum of all purchases and recharges: what activation is decided on.
    pub lifetime_purchased: Amount,
    pub auto_recharge: AutoRecharge,
    pub next_seq: u64,
    pub next_grant_id: u64,
    pub next_hold_id: u64,
    pub next_invoice_id: u64,
    pub next_attempt_id: u64,
    /// Sum of every event's `balance_delta`: the ledger's own total, kept
    /// apart from the grants so the invariants can compare the two.
    pub posted: Amount,
    /// Sum of every event's `owed_delta`.
    pub owed_posted: Amount,
}

/// A journal that does not fold: wrong order, or an event that does not fit
/// the state. Recovery reports it; it is never a customer's error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("journal record {seq} does not replay: {what}")]
pub struct ReplayError {
    pub seq: u64,
    pub what: String,
}

impl AccountState {
    /// The state an `Opened` record creates.
    pub fn open(id: AccountId, record: &EventRecord) -> Result<AccountState, ReplayError> {
        let Event::Opened { mode, currency, past_due_suspends, credit_limit } = &record.event else {
            return Err(ReplayError { seq: record.seq, what: "the first record must open the account".into() });
        };
        if record.seq != 1 {
            return Err(ReplayError { seq: record.seq, what: "the opening record must be number 1".into() });
        }
        Ok(AccountState {
            id,
            mode: *mode,
            currency: *currency,
            past_due_suspends: *past_due_suspends,
            credit_limit: *credit_limit,
            opened_at_ms: record.at_ms,
            activated_at_ms: None,
            frozen: None,
            closed: None,
            grants: Vec::new(),
            holds: Vec::new(),
            invoices: Vec::new(),
            ended_holds: VecDeque::new(),
            debt: Amount::ZERO,
            credits: Amount::ZERO,
            held: Amount::ZERO,
            period_usage: Amount::ZERO,
            lifetime_purchased: Amount::ZERO,
            auto_recharge: AutoRecharge::default(),
            next_seq: 2,
            next_grant_id: 1,
            next_hold_id: 1,
            next_invoice_id: 1,
            next_attempt_id: 1,
            posted: Amount::ZERO,
            owed_posted: Amount::ZERO,
        })
    }

    /// Rebuilds an account from its whole journal.
    pub fn from_records<'a>(
        id: AccountId,
        records: impl IntoIterator<Item = &'a EventRecord>,
    ) -> Result<Option<AccountState>, ReplayError> {
        let mut records = records.into_iter();
        let Some(first) = records.next() else {
            return Ok(None);
        };
        let mut state = AccountState::open(id, first)?;
        for record in records {
            state.replay(record)?;
        }
        Ok(Some(state))
    }

    /// Folds one record into the state. Checks order and the recorded
    /// balance; on error the state may be partly changed and must be dropped.
    pub fn replay(&mut self, record: &EventRecord) -> Result<(), ReplayError> {
        let fail = |what: &str| ReplayError { seq: record.seq, what: what.to_string() };
        if record.seq != self.next_seq {
            return Err(fail(&format!("expected record {}", self.next_seq)));
        }
        let at = record.at_ms;
        match &record.event {
            Event::Opened { .. } => return Err(fail("the account is already open")),
            Event::Credited { grant_id, source, amount, expires_at_ms, priority, reference } => {
                self.credit(*grant_id, *source, *amount, at, *expires_at_ms, *priority, reference.clone());
            }
            Event::Debited { amount, .. } => self.burn(*amount),
            Event::UsageAccrued { amount, .. } => self.period_usage += *amount,
            Event::HoldPlaced { hold_id, amount, service, reference, expires_at_ms } => {
                self.held += *amount;
                self.holds.push(Hold {
                    id: *hold_id,
                    amount: *amount,
                    service: *service,
                    reference: reference.clone(),
                    created_at_ms: at,
                    expires_at_ms: *expires_at_ms,
                });
                self.next_hold_id = self.next_hold_id.max(hold_id + 1);
            }
            Event::HoldCaptured { hold_id, amount, to_period, .. } => {
                self.end_hold(*hold_id, HoldEnd::Captured).ok_or_else(|| fail("no such hold"))?;
                if *to_period {
                    self.period_usage += *amount;
                } else {
                    self.burn(*amount);
                }
            }
            Event::HoldReleased { hold_id, expired, .. } => {
                let end = if *expired { HoldEnd::Expired } else { HoldEnd::Released };
                self.end_hold(*hold_id, end).ok_or_else(|| fail("no such hold"))?;
            }
            Event::GrantExpired { grant_id, amount } => {
                let i = self.grant_index(*grant_id).ok_or_else(|| fail("no such grant"))?;
                if self.grants[i].remaining != *amount {
                    return Err(fail("expired amount differs from what the grant had left"));
                }
                self.grants.remove(i);
                self.credits -= *amount;
            }
            Event::GrantExpiring { grant_id, .. } => {
                let i = self.grant_index(*grant_id).ok_or_else(|| fail("no such grant"))?;
                self.grants[i].notice_sent = true;
            }
            Event::GrantExpirySet { grant_id, expires_at_ms } => {
                let i = self.grant_index(*grant_id).ok_or_else(|| fail("no such grant"))?;
                let mut grant = self.grants.remove(i);
                grant.expires_at_ms = Some(*expires_at_ms);
                grant.notice_sent = false;
                self.insert_grant(grant);
            }
            Event::Adjusted { amount, grant_id, reason } => match grant_id {
                Some(id) if amount.is_positive() => {
                    self.credit(*id, GrantSource::Adjustment, *amount, at, None, 0, Some(reason.clone()))
                }
                None if amount.is_negative() => self.burn(-*amount),
                _ => {
                    return Err(fail("an adjustment credits with a grant id or debits without one"));
                }
            },
            Event::AutoRechargeSet { enabled, amount, threshold } => {
                let auto = &mut self.auto_recharge;
                auto.enabled = *enabled;
                auto.amount = *amount;
                auto.threshold = *threshold;
                auto.paused = None;
                auto.failures = 0;
                auto.chain = 0;
                auto.retry_at_ms = None;
            }
            Event::RechargeRequested { attempt_id, amount } => {
                let auto = &mut self.auto_recharge;
                if auto.in_flight.is_some() {
                    return Err(fail("a recharge attempt is already in flight"));
                }
                auto.in_flight = Some(Attempt { id: *attempt_id, amount: *amount, requested_at_ms: at });
                auto.retry_at_ms = None;
                auto.chain += 1;
                self.next_attempt_id = self.next_attempt_id.max(attempt_id + 1);
            }
            Event::RechargeSucceeded { attempt_id, grant_id, amount } => {
                self.take_attempt(*attempt_id).ok_or_else(|| fail("no such attempt in flight"))?;
                self.auto_recharge.failures = 0;
                self.credit(*grant_id, GrantSource::Recharge, *amount, at, None, 0, None);
                if self.balance() >= self.auto_recharge.threshold {
                    self.auto_recharge.chain = 0;
                }
            }
            Event::RechargeFailed { attempt_id, failures, retry_at_ms, .. } => {
                self.take_attempt(*attempt_id).ok_or_else(|| fail("no such attempt in flight"))?;
                self.auto_recharge.failures = *failures;
                self.auto_recharge.retry_at_ms = *retry_at_ms;
            }
            Event::RechargePaused { cause } => {
                self.auto_recharge.paused = Some(*cause);
                self.auto_recharge.retry_at_ms = None;
            }
            Event::Frozen { reason } => self.frozen = Some(reason.clone()),
            Event::Unfrozen { .. } => self.frozen = None,
            Event::Closed { reason } => self.closed = Some(reason.clone()),
            Event::Invoiced { invoice_id, amount, source, due_at_ms } => {
                match source {
                    InvoiceSource::Period => self.period_usage -= *amount,
                    InvoiceSource::Debt => self.debt -= *amount,
                }
                self.invoices.push(Invoice {
                    id: *invoice_id,
                    amount: *amount,
                    paid: Amount::ZERO,
                    source: *source,
                    issued_at_ms: at,
                    due_at_ms: *due_at_ms,
                    past_due: false,
                });
                self.next_invoice_id = self.next_invoice_id.max(invoice_id + 1);
            }
            Event::InvoicePastDue { invoice_id } => {
                let i = self.invoice_index(*invoice_id).ok_or_else(|| fail("no such invoice"))?;
                self.invoices[i].past_due = true;
            }
            Event::InvoicePaid { invoice_id, amount } => {
                let i = self.invoice_index(*invoice_id).ok_or_else(|| fail("no such invoice"))?;
                let invoice = &mut self.invoices[i];
                invoice.paid += *amount;
                if invoice.outstanding().is_zero() {
                    self.invoices.remove(i);
                }
            }
            Event::Activated | Event::Suspended { .. } | Event::Reactivated | Event::LowBalance { .. } => {}
        }
        self.posted += record.event.balance_delta();
        self.owed_posted += record.event.owed_delta();
        self.next_seq = record.seq + 1;
        if record.balance_after != self.balance() {
            return Err(fail(&format!(
                "recorded balance {} but replay gives {}",
                record.balance_after,
                self.balance()
            )));
        }
        Ok(())
    }

    /// Money in: pays debt first; what is left becomes a grant.
    #[allow(clippy::too_many_arguments)]
    fn credit(
        &mut self,
        id: u64,
        source: GrantSource,
        amount: Amount,
        at_ms: u64,
        expires_at_ms: Option<u64>,
        priority: u8,
        reference: Option<Text>,
    ) {
        let pays_debt = amount.min(self.debt);
        self.debt -= pays_debt;
        let remaining = amount - pays_debt;
        if remaining.is_positive() {
            self.credits += remaining;
            self.insert_grant(Grant {
                id,
                source,
                original: amount,
                remaining,
                created_at_ms: at_ms,
                expires_at_ms,
                priority,
                notice_sent: false,
                reference,
            });
        }
        if source.is_paid() {
            self.lifetime_purchased += amount;
            self.activated_at_ms.get_or_insert(at_ms);
        }
        self.next_grant_id = self.next_grant_id.max(id + 1);
    }

    /// Usage out: grants in burn order, the shortfall becomes debt.
    fn burn(&mut self, amount: Amount) {
        let mut left = amount;
        let mut used_up = 0;
        for grant in &mut self.grants {
            if left.is_zero() {
                break;
            }
            let take = grant.remaining.min(left);
            grant.remaining -= take;
            left -= take;
            if grant.remaining.is_zero() {
                used_up += 1;
            }
        }
        // Burning goes front to back, so the used-up grants are the first ones.
        self.grants.drain(..used_up);
        self.credits -= amount - left;
        self.debt += left;
    }

    fn insert_grant(&mut self, grant: Grant) {
        let key = grant.burn_key();
        let at = self.grants.partition_point(|g| g.burn_key() < key);
        self.grants.insert(at, grant);
    }

    fn end_hold(&mut self, hold_id: u64, end: HoldEnd) -> Option<Hold> {
        let i = self.holds.iter().position(|h| h.id == hold_id)?;
        if self.ended_holds.len() == ENDED_HOLDS_KEPT {
            self.ended_holds.pop_front();
        }
        self.ended_holds.push_back((hold_id, end));
        let hold = self.holds.remove(i);
        self.held -= hold.amount;
        Some(hold)
    }

    fn take_attempt(&mut self, attempt_id: u64) -> Option<Attempt> {
        match &self.auto_recharge.in_flight {
            Some(a) if a.id == attempt_id => self.auto_recharge.in_flight.take(),
            _ => None,
        }
    }

    pub fn grant_index(&self, grant_id: u64) -> Option<usize> {
        self.grants.iter().position(|g| g.id == grant_id)
    }

    pub fn invoice_index(&self, invoice_id: u64) -> Option<usize> {
        self.invoices.iter().position(|i| i.id == invoice_id)
    }

    pub fn hold(&self, hold_id: u64) -> Option<&Hold> {
        self.holds.iter().find(|h| h.id == hold_id)
    }

    /// How a hold that is no longer open ended, if it is still remembered.
    pub fn hold_end(&self, hold_id: u64) -> Option<HoldEnd> {
        self.ended_holds.iter().rev().find(|(id, _)| *id == hold_id).map(|(_, end)| *end)
    }

    // ---- figures

    /// Credits left minus debt.
    pub fn balance(&self) -> Amount {
        self.credits() - self.debt
    }

    pub fn credits(&self) -> Amount {
        self.credits
    }

    pub fn held(&self) -> Amount {
        self.held
    }

    /// The balance minus open holds: what a strict debit or a hold may use.
    pub fn available(&self) -> Amount {
        self.balance() - self.held()
    }

    /// Remaining credits of the sources `pick` selects.
    pub fn credits_from(&self, pick: impl Fn(GrantSource) -> bool) -> Amount {
        self.grants.iter().filter(|g| pick(g.source)).map(|g| g.remaining).sum()
    }

    /// Unpaid invoices.
    pub fn invoiced_outstanding(&self) -> Amount {
        self.invoices.iter().map(Invoice::outstanding).sum()
    }

    /// What the customer owes outside credits: the open period plus unpaid
    /// invoices.
    pub fn owed(&self) -> Amount {
        self.period_usage + self.invoiced_outstanding()
    }

    pub fn has_past_due(&self) -> bool {
        self.invoices.iter().any(|i| i.past_due)
    }

    // ---- status

    pub fn status(&self) -> Status {
        match self.access_refusal(Amount::ZERO) {
            None => Status::Active,
            Some(Reason::Closed) => Status::Closed,
            Some(Reason::Frozen) => Status::Frozen,
            Some(Reason::NotActivated { .. }) => Status::Inactive,
            Some(_) => Status::Suspended,
        }
    }

    pub fn suspend_cause(&self) -> Option<SuspendCause> {
        match self.access_refusal(Amount::ZERO) {
            Some(Reason::PastDue) => Some(SuspendCause::PastDue),
            Some(Reason::Suspended { .. }) => Some(SuspendCause::Balance),
            _ => None,
        }
    }

    /// Why the account may not make API calls now, in order of precedence:
    /// closed, frozen, not activated, past due, suspended for balance.
    /// `min_purchase` only words the `not_activated` sentence.
    pub fn access_refusal(&self, min_purchase: Amount) -> Option<Reason> {
        if self.closed.is_some() {
            return Some(Reason::Closed);
        }
        if self.frozen.is_some() {
            return Some(Reason::Frozen);
        }
        if self.mode == Mode::Prepaid && self.activated_at_ms.is_none() {
            return Some(Reason::NotActivated { minimum: min_purchase });
        }
        if self.past_due_suspends && self.has_past_due() {
            return Some(Reason::PastDue);
        }
        if self.mode == Mode::Prepaid && !self.balance().is_positive() {
            return Some(Reason::Suspended { balance: self.balance() });
        }
        None
    }

    /// The earliest deadline that `settle` would act on, if any.
    pub fn next_deadline_ms(&self, notice_ms: u64) -> Option<u64> {
        // Plain loops: this runs before every request. A recharge retry
        // counts only while it would start one (else a timer would fire for
        // nothing, again and again).
        let auto = &self.auto_recharge;
        let retry_would_start = auto.enabled
            && auto.paused.is_none()
            && self.closed.is_none()
            && self.frozen.is_none()
            && self.balance() < auto.threshold;
        let mut next = if retry_would_start { auto.retry_at_ms.unwrap_or(u64::MAX) } else { u64::MAX };
        for hold in &self.holds {
            next = next.min(hold.expires_at_ms);
        }
        for grant in &self.grants {
            if let Some(at) = grant.expires_at_ms {
                next = next.min(if grant.notice_sent { at } else { at.saturating_sub(notice_ms) });
            }
        }
        for invoice in &self.invoices {
            if !invoice.past_due {
                next = next.min(invoice.due_at_ms);
            }
        }
        (next != u64::MAX).then_some(next)
    }

    /// The invariants that hold after every applied command. A failure is a
    /// bug in the ledger, never a customer's error.
    pub fn check_invariants(&self) -> Result<(), String> {
        let credits: Amount = self.grants.iter().map(|g| g.remaining).sum();
        if credits != self.credits {
            return Err(format!("kept credits {} != sum of grants {credits}", self.credits));
        }
        let held: Amount = self.holds.iter().map(|h| h.amount).sum();
        if held != self.held {
            return Err(format!("kept held {} != sum of holds {held}", self.held));
        }
        if self.available() != credits - self.debt - held {
            return Err("available != balance - open holds".into());
        }
        if self.posted != self.balance() {
            return Err(format!("ledger sum {} != balance {}", self.posted, self.balance()));
        }
        if self.owed_posted != self.owed() {
            return Err(format!("owed sum {} != period + invoices {}", self.owed_posted, self.owed()));
        }
        if self.debt.is_negative() || self.period_usage.is_negative() || self.lifetime_purchased.is_negative() {
            return Err("a negative debt, period usage or lifetime total".into());
        }
        if self.debt.is_positive() && !self.grants.is_empty() {
            return Err("debt while grants have credit left: new money must pay debt first".into());
        }
        if let Some(g) = self.grants.iter().find(|g| !g.remaining.is_positive() || g.remaining > g.original) {
            return Err(format!("grant {} has {} left of {}", g.id, g.remaining, g.original));
        }
        if self.grants.windows(2).any(|w| w[0].burn_key() >= w[1].burn_key()) {
            return Err("grants are out of burn order".into());
        }
        if let Some(h) = self.holds.iter().find(|h| !h.amount.is_positive()) {
            return Err(format!("hold {} holds {}", h.id, h.amount));
        }
        if let Some(i) = self.invoices.iter().find(|i| !i.outstanding().is_positive() || i.paid.is_negative()) {
            return Err(format!("invoice {} has {} outstanding", i.id, i.outstanding()));
        }
        Ok(())
    }
}
