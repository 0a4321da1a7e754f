//! What an accepted request returns, and the read-side views: the balance
//! with its parts, history pages and usage by service.

use serde::{Deserialize, Serialize};

use super::amount::Amount;
use super::command::{Mode, Service};
use super::event::{EventRecord, PauseCause};
use super::id::{AccountId, Currency};
use super::state::{AccountState, Status};

/// Every accepted request returns the account's status and figures after it,
/// plus what is particular to the operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub status: Status,
    pub balance: Amount,
    pub available: Amount,
    pub detail: Detail,
    /// This is the first result of the request's idempotency key, given
    /// again: the request did not run now (figures are as they were then).
    /// Never stored: a record holds the first reply as it was.
    #[serde(skip)]
    pub replayed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// Nothing particular: the figures say it all.
    None,
    Debited {
        amount: Amount,
        debt_added: Amount,
    },
    HoldPlaced {
        hold_id: u64,
        expires_at_ms: u64,
    },
    Captured {
        hold_id: u64,
        captured: Amount,
        released: Amount,
    },
    Released {
        hold_id: u64,
        released: Amount,
    },
    /// `grant_id` is `None` when the whole amount paid debt.
    Credited {
        grant_id: Option<u64>,
        debt_paid: Amount,
    },
    /// How many purchases of `amount` the current gap needs (0 when the
    /// balance is at or above the threshold or auto-recharge is off).
    AutoRecharge {
        purchases_planned: u32,
    },
    /// `invoice_id` is `None` when there was nothing to invoice.
    Invoiced {
        invoice_id: Option<u64>,
        amount: Amount,
    },
    InvoicePaid {
        invoice_id: u64,
        outstanding: Amount,
    },
    ExpirySet {
        grants: u32,
    },
    Balance(Box<BalanceView>),
}

/// The balance with its parts (SPEC rule 9: free and purchased always shown).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceView {
    pub account: AccountId,
    pub mode: Mode,
    pub currency: Currency,
    pub status: Status,
    /// The reason code access is refused with, if it is.
    pub refusal: Option<String>,
    /// The sentence for `refusal`.
    pub refusal_message: Option<String>,
    pub balance: Amount,
    pub available: Amount,
    pub held: Amount,
    pub debt: Amount,
    pub free: Amount,
    pub purchased: Amount,
    pub adjusted: Amount,
    pub lifetime_purchased: Amount,
    pub period_usage: Amount,
    pub invoiced_outstanding: Amount,
    pub past_due: bool,
    pub credit_limit: Option<Amount>,
    pub open_holds: u32,
    pub grants: u32,
    pub auto_recharge: AutoRechargeView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoRechargeView {
    pub enabled: bool,
    pub amount: Amount,
    pub threshold: Amount,
    pub paused: Option<PauseCause>,
    pub failures: u32,
    pub attempt_in_flight: Option<u64>,
    pub retry_at_ms: Option<u64>,
}

impl BalanceView {
    pub fn of(state: &AccountState, min_purchase: Amount) -> BalanceView {
        use super::event::GrantSource;
        let refusal = state.access_refusal(min_purchase);
        let auto = &state.auto_recharge;
        BalanceView {
            account: state.id.clone(),
            mode: state.mode,
            currency: state.currency,
            status: state.status(),
            refusal: refusal.as_ref().map(|r| r.code().to_string()),
            refusal_message: refusal.as_ref().map(|r| r.to_string()),
            balance: state.balance(),
            available: state.available(),
            held: state.held(),
            debt: state.debt,
            free: state.credits_from(|s| s == GrantSource::Free),
            purchased: state.credits_from(GrantSource::is_paid),
            adjusted: state.credits_from(|s| s == GrantSource::Adjustment),
            lifetime_purchased: state.lifetime_purchased,
            period_usage: state.period_usage,
            invoiced_outstanding: state.invoiced_outstanding(),
            past_due: state.has_past_due(),
            credit_limit: state.credit_limit,
            open_holds: state.holds.len() as u32,
            grants: state.grants.len() as u32,
            auto_recharge: AutoRechargeView {
                enabled: auto.enabled,
                amount: auto.amount,
                threshold: auto.threshold,
                paused: auto.paused,
                failures: auto.failures,
                attempt_in_flight: auto.in_flight.as_ref().map(|a| a.id),
                retry_at_ms: auto.retry_at_ms,
            },
        }
    }
}

/// One page of an account's ledger: the records after `after_seq`, at most
/// `limit` of them, oldest first. `records` is the account's journal in order.
pub fn history_page(records: &[EventRecord], after_seq: u64, limit: u32) -> &[EventRecord] {
    let start = records.partition_point(|r| r.seq <= after_seq);
    let end = records.len().min(start + limit as usize);
    &records[start..end]
}

/// Usage by service over `[from_ms, to_ms)`, as a statement shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSummary {
    pub by_service: Vec<(Service, Amount)>,
    pub total: Amount,
}

pub fn usage_by_service(records: &[EventRecord], from_ms: u64, to_ms: u64) -> UsageSummary {
    let mut sums = [Amount::ZERO; Service::ALL.len()];
    for record in records.iter().filter(|r| r.at_ms >= from_ms && r.at_ms < to_ms) {
        if let Some((service, amount)) = record.event.usage() {
            sums[service as usize] += amount;
        }
    }
    UsageSummary {
        by_service: Service::ALL.iter().copied().zip(sums).filter(|(_, a)| !a.is_zero()).collect(),
        total: sums.into_iter().sum(),
    }
}
