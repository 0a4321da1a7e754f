//! What happened to an account: facts, in order, never changed.
//!
//! Events are the ledger. `AccountState::replay` folds them into state and
//! reads nothing else (no configuration, no clock), so the same events always
//! give the same state. Each event also states its own effect on the balance
//! (`balance_delta`) and on what the customer owes (`owed_delta`) without
//! looking at state: replay keeps those sums beside the state it builds, and
//! the invariants compare the two — double entry in miniature.
//!
//! Some events are notices (activated, suspended, reactivated, low balance):
//! replay does nothing with them; they exist so subscribers and webhooks hear
//! about changes of status.

use serde::{Deserialize, Serialize};

use super::amount::Amount;
use super::command::{DebitMode, Mode, Service};
use super::id::{Currency, Text};

/// Where a grant's credits came from. Burn order puts `Free` before the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantSource {
    Purchase,
    Recharge,
    Free,
    Adjustment,
}

impl GrantSource {
    /// Rank in the burn order: free credits burn before paid ones.
    pub fn burn_rank(self) -> u8 {
        match self {
            GrantSource::Free => 0,
            GrantSource::Purchase | GrantSource::Recharge | GrantSource::Adjustment => 1,
        }
    }

    pub fn is_paid(self) -> bool {
        matches!(self, GrantSource::Purchase | GrantSource::Recharge)
    }
}

/// How a hold ended without being captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldEnd {
    Captured,
    Released,
    Expired,
}

/// Why a suspended account is suspended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuspendCause {
    Balance,
    PastDue,
}

/// Why auto-recharge paused itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseCause {
    /// `recharge_max_failures` charges in a row failed.
    Failures,
    /// `recharge_chain_max` purchases did not bring the balance back to the
    /// threshold.
    ChainLimit,
}

/// Where an invoice's amount came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceSource {
    /// A contract account's usage in the period.
    Period,
    /// A prepaid account's debt (metered usage past zero), moved off the
    /// credit balance: later credits no longer pay it.
    Debt,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Opened {
        mode: Mode,
        currency: Currency,
        past_due_suspends: bool,
        credit_limit: Option<Amount>,
    },
    /// Money in: a purchase, free credits or a positive adjustment. Pays
    /// debt first; what is left becomes grant `grant_id`.
    Credited {
        grant_id: u64,
        source: GrantSource,
        amount: Amount,
        expires_at_ms: Option<u64>,
        priority: u8,
        reference: Option<Text>,
    },
    /// Usage on a prepaid account: burns grants in order, the rest is debt.
    Debited {
        amount: Amount,
        mode: DebitMode,
        service: Service,
        reference: Option<Text>,
    },
    /// Usage on a contract account: added to the open period.
    UsageAccrued {
        amount: Amount,
        mode: DebitMode,
        service: Service,
        reference: Option<Text>,
    },
    HoldPlaced {
        hold_id: u64,
        amount: Amount,
        service: Service,
        reference: Option<Text>,
        expires_at_ms: u64,
    },
    /// The hold is gone and `amount` (its final cost) is charged: burned from
    /// grants on a prepaid account, accrued to the period on a contract one.
    HoldCaptured {
        hold_id: u64,
        amount: Amount,
        service: Service,
        reference: Option<Text>,
        to_period: bool,
    },
    /// The hold is gone and nothing is charged; `expired` tells a timeout
    /// (the "hold expired" notice) from a caller's release.
    HoldReleased {
        hold_id: u64,
        amount: Amount,
        expired: bool,
    },
    /// A grant's expiry came: what was left of it is gone.
    GrantExpired {
        grant_id: u64,
        amount: Amount,
    },
    /// Notice ahead of a grant's expiry ("grant expiring soon").
    GrantExpiring {
        grant_id: u64,
        expires_at_ms: u64,
        amount: Amount,
    },
    /// A policy set (or moved) a grant's expiry.
    GrantExpirySet {
        grant_id: u64,
        expires_at_ms: u64,
    },
    /// Operator correction. Positive: a grant of source `adjustment`
    /// (`grant_id` is `Some`); negative: burned like usage.
    Adjusted {
        amount: Amount,
        grant_id: Option<u64>,
        reason: Text,
    },
    AutoRechargeSet {
        enabled: bool,
        amount: Amount,
        threshold: Amount,
    },
    /// "Recharge started": durable before anything is charged; the attempt id
    /// is the payment gateway's idempotency key.
    RechargeRequested {
        attempt_id: u64,
        amount: Amount,
    },
    /// The charge went through: a `recharge` grant of `amount`.
    RechargeSucceeded {
        attempt_id: u64,
        grant_id: u64,
        amount: Amount,
    },
    RechargeFailed {
        attempt_id: u64,
        failures: u32,
        retry_at_ms: Option<u64>,
        error: Text,
    },
    RechargePaused {
        cause: PauseCause,
    },
    Frozen {
        reason: Text,
    },
    Unfrozen {
        reason: Text,
    },
    Closed {
        reason: Text,
    },
    /// "Invoice generated".
    Invoiced {
        invoice_id: u64,
        amount: Amount,
        source: InvoiceSource,
        due_at_ms: u64,
    },
    InvoicePastDue {
        invoice_id: u64,
    },
    InvoicePaid {
        invoice_id: u64,
        amount: Amount,
    },
    // ---- notices: replay ignores them.
    Activated,
    Suspended {
        cause: SuspendCause,
    },
    Reactivated,
    LowBalance {
        balance: Amount,
        threshold: Amount,
    },
}

impl Event {
    /// This event's effect on the balance (credits minus debt), read from the
    /// event alone.
    pub fn balance_delta(&self) -> Amount {
        match self {
            Event::Credited { amount, .. } | Event::RechargeSucceeded { amount, .. } => *amount,
            Event::Adjusted { amount, .. } => *amount,
            Event::Debited { amount, .. } | Event::GrantExpired { amount, .. } => -*amount,
            Event::HoldCaptured { amount, to_period: false, .. } => -*amount,
            Event::Invoiced { amount, source: InvoiceSource::Debt, .. } => *amount,
            _ => Amount::ZERO,
        }
    }

    /// This event's effect on what the customer owes outside credits (the
    /// open period plus unpaid invoices).
    pub fn owed_delta(&self) -> Amount {
        match self {
            Event::UsageAccrued { amount, .. } => *amount,
            Event::HoldCaptured { amount, to_period: true, .. } => *amount,
            Event::Invoiced { amount, source: InvoiceSource::Debt, .. } => *amount,
            Event::InvoicePaid { amount, .. } => -*amount,
            _ => Amount::ZERO,
        }
    }

    /// Usage this event charges, by service: what a statement sums.
    pub fn usage(&self) -> Option<(Service, Amount)> {
        match self {
            Event::Debited { amount, service, .. }
            | Event::UsageAccrued { amount, service, .. }
            | Event::HoldCaptured { amount, service, .. } => Some((*service, *amount)),
            _ => None,
        }
    }

    /// The event's name, as subscribers and webhooks see it.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Opened { .. } => "opened",
            Event::Credited { .. } => "credited",
            Event::Debited { .. } => "debited",
            Event::UsageAccrued { .. } => "usage_accrued",
            Event::HoldPlaced { .. } => "hold_placed",
            Event::HoldCaptured { .. } => "hold_captured",
            Event::HoldReleased { expired: true, .. } => "hold_expired",
            Event::HoldReleased { .. } => "hold_released",
            Event::GrantExpired { .. } => "grant_expired",
            Event::GrantExpiring { .. } => "grant_expiring",
            Event::GrantExpirySet { .. } => "grant_expiry_set",
            Event::Adjusted { .. } => "adjusted",
            Event::AutoRechargeSet { .. } => "auto_recharge_set",
            Event::RechargeRequested { .. } => "recharge_started",
            Event::RechargeSucceeded { .. } => "recharge_succeeded",
            Event::RechargeFailed { .. } => "recharge_failed",
            Event::RechargePaused { .. } => "recharge_paused",
            Event::Frozen { .. } => "frozen",
            Event::Unfrozen { .. } => "unfrozen",
            Event::Closed { .. } => "closed",
            Event::Invoiced { .. } => "invoice_generated",
            Event::InvoicePastDue { .. } => "invoice_past_due",
            Event::InvoicePaid { .. } => "invoice_paid",
            Event::Activated => "activated",
            Event::Suspended { .. } => "suspended",
            Event::Reactivated => "reactivated",
            Event::LowBalance { .. } => "low_balance",
        }
    }
}

/// An event as the journal keeps it: numbered per account, timed, and with
/// the balance after it (checked again on replay, and what `history` pages
/// show without folding from the start).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// 1, 2, 3, … per account, without gaps.
    pub seq: u64,
    pub at_ms: u64,
    pub balance_after: Amount,
    pub event: Event,
}
