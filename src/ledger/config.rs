//! The ledger's rules and bounds, in one place.
//!
//! Every number a billing rule or a bound depends on is a field here, with its
//! default; `config/default.toml` mirrors this struct field for field (a test
//! proves it). Durations are milliseconds. The ledger reads this struct and
//! nothing else: replay never does, so changing a setting never changes the
//! meaning of events already written.

use serde::{Deserialize, Serialize};

use super::amount::Amount;

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Smallest purchase that is accepted, and that activates an account.
    pub min_purchase: Amount,
    /// Auto-recharge amount when `set_auto_recharge` names none.
    pub recharge_amount_default: Amount,
    /// Largest amount any single operation may carry.
    pub max_amount: Amount,
    /// Largest balance, debt or amount owed an account may reach.
    pub max_balance: Amount,
    /// Grants with credit left per account (auto-recharge may pass it: money
    /// already charged is never refused).
    pub max_grants: u32,
    /// Open holds per account.
    pub max_holds: u32,
    /// Unpaid invoices per account.
    pub max_open_invoices: u32,
    /// Hold lifetime when a hold names none.
    pub hold_timeout_default_ms: u64,
    /// Longest hold lifetime a request may ask for.
    pub hold_timeout_max_ms: u64,
    /// How long an idempotency key and its first result are kept.
    pub idempotency_window_ms: u64,
    /// Notice given before a grant's expiry (the `grant_expiring` event), and
    /// the least notice a policy expiry (`set_grant_expiry`) may give.
    pub expiry_notice_ms: u64,
    /// Time from closing a period to the invoice's due date.
    pub invoice_due_ms: u64,
    /// Whether a past-due invoice suspends access, for accounts that do not
    /// choose when they are opened.
    pub past_due_suspends_default: bool,
    /// Consecutive failed recharge charges before auto-recharge pauses.
    pub recharge_max_failures: u32,
    /// Wait before the first retry of a failed charge; doubles per failure.
    pub recharge_backoff_base_ms: u64,
    /// Longest wait between retries.
    pub recharge_backoff_max_ms: u64,
    /// Most recharge purchases in one chain (from the balance dropping below
    /// the threshold to reaching it again). Reaching it pauses auto-recharge,
    /// so runaway usage never turns into unbounded card charges.
    pub recharge_chain_max: u32,
    /// Largest page `history` returns.
    pub history_page_max: u32,
    /// Auto-recharge is off on this node (`recharge.enabled = false`, set
    /// by the node, not a `[ledger]` setting): it cannot be turned on and
    /// never starts a charge.
    #[serde(skip)]
    pub auto_recharge_off: bool,
}

impl Default for LedgerConfig {
    fn default() -> LedgerConfig {
        LedgerConfig {
            min_purchase: Amount::cents(500),
            recharge_amount_default: Amount::cents(2_500),
            max_amount: Amount::whole(1_000_000_000),
            max_balance: Amount::whole(1_000_000_000_000),
            max_grants: 1_024,
            max_holds: 1_024,
            max_open_invoices: 64,
            hold_timeout_default_ms: DAY_MS,
            hold_timeout_max_ms: 30 * DAY_MS,
            idempotency_window_ms: DAY_MS,
            expiry_notice_ms: 30 * DAY_MS,
            invoice_due_ms: 30 * DAY_MS,
            past_due_suspends_default: true,
            recharge_max_failures: 3,
            recharge_backoff_base_ms: MINUTE_MS,
            recharge_backoff_max_ms: HOUR_MS,
            recharge_chain_max: 100,
            history_page_max: 1_000,
            auto_recharge_off: false,
        }
    }
}

impl LedgerConfig {
    /// Wait before retrying after the `failures`-th consecutive failure
    /// (1-based): base, 2×base, 4×base, … capped at the maximum.
    pub fn recharge_backoff_ms(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(32);
        self.recharge_backoff_base_ms.saturating_mul(1u64 << doublings).min(self.recharge_backoff_max_ms)
    }
}

/// The least idempotency window a node accepts: a key must outlive any
/// client's retry loop. Never 0 — a window of 0 forgets every key at once
/// and applies one order as many times as it is sent.
pub const IDEMPOTENCY_WINDOW_MIN_MS: u64 = SECOND_MS;
/// The longest idempotency window: keys cost memory and disk for as long.
pub const IDEMPOTENCY_WINDOW_MAX_MS: u64 = 90 * DAY_MS;
/// The largest count any per-account bound (grants, holds, invoices,
/// recharge chain, history page) may be set to.
pub const COUNT_BOUND_MAX: u32 = 1_000_000;

/// Each named setting is 1 to `max`.
fn within<const N: usize>(settings: [(&str, u64); N], max: u64) -> Result<(), String> {
    match settings.into_iter().find(|(_, value)| !(1..=max).contains(value)) {
        Some((name, value)) => Err(format!("ledger.{name} is 1 to {max}, not {value}")),
        None => Ok(()),
    }
}
/// The longest duration any ledger setting may be: about 100 years.
pub const DURATION_MAX_MS: u64 = 100 * 365 * DAY_MS;

impl LedgerConfig {
    /// Every rule's number within its bounds and consistent with the others;
    /// the error names the setting (`ledger.…`) and what it must be.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("min_purchase", self.min_purchase),
            ("recharge_amount_default", self.recharge_amount_default),
            ("max_amount", self.max_amount),
            ("max_balance", self.max_balance),
        ];
        for (name, value) in positive {
            if !value.is_positive() {
                return Err(format!("ledger.{name} is more than 0, not {value}"));
            }
        }
        if self.min_purchase > self.max_amount {
            return Err(format!(
                "ledger.min_purchase ({}) is at most ledger.max_amount ({})",
                self.min_purchase, self.max_amount
            ));
        }
        if self.max_amount > self.max_balance {
            return Err(format!(
                "ledger.max_amount ({}) is at most ledger.max_balance ({})",
                self.max_amount, self.max_balance
            ));
        }
        if self.recharge_amount_default < self.min_purchase || self.recharge_amount_default > self.max_amount {
            return Err(format!(
                "ledger.recharge_amount_default ({}) is between ledger.min_purchase ({}) and ledger.max_amount ({}): a recharge is a purchase",
                self.recharge_amount_default, self.min_purchase, self.max_amount
            ));
        }
        let counts = [
            ("max_grants", self.max_grants),
            ("max_holds", self.max_holds),
            ("max_open_invoices", self.max_open_invoices),
            ("recharge_max_failures", self.recharge_max_failures),
            ("recharge_chain_max", self.recharge_chain_max),
            ("history_page_max", self.history_page_max),
        ];
        within(counts.map(|(name, n)| (name, u64::from(n))), u64::from(COUNT_BOUND_MAX))?;
        if !(IDEMPOTENCY_WINDOW_MIN_MS..=IDEMPOTENCY_WINDOW_MAX_MS).contains(&self.idempotency_window_ms) {
            return Err(format!(
                "ledger.idempotency_window_ms is {IDEMPOTENCY_WINDOW_MIN_MS} to {IDEMPOTENCY_WINDOW_MAX_MS} (1 s to 90 days), not {}: a shorter window applies a resent request again",
                self.idempotency_window_ms
            ));
        }
        let durations = [
            ("hold_timeout_default_ms", self.hold_timeout_default_ms),
            ("hold_timeout_max_ms", self.hold_timeout_max_ms),
            ("invoice_due_ms", self.invoice_due_ms),
            ("recharge_backoff_base_ms", self.recharge_backoff_base_ms),
            ("recharge_backoff_max_ms", self.recharge_backoff_max_ms),
        ];
        within(durations, DURATION_MAX_MS)?;
        if self.expiry_notice_ms > DURATION_MAX_MS {
            return Err(format!("ledger.expiry_notice_ms is 0 to {DURATION_MAX_MS}, not {}", self.expiry_notice_ms));
        }
        if self.hold_timeout_default_ms > self.hold_timeout_max_ms {
            return Err(format!(
                "ledger.hold_timeout_default_ms ({}) is at most ledger.hold_timeout_max_ms ({})",
                self.hold_timeout_default_ms, self.hold_timeout_max_ms
            ));
        }
        if self.recharge_backoff_base_ms > self.recharge_backoff_max_ms {
            return Err(format!(
                "ledger.recharge_backoff_base_ms ({}) is at most ledger.recharge_backoff_max_ms ({})",
                self.recharge_backoff_base_ms, self.recharge_backoff_max_ms
            ));
        }
        Ok(())
    }
}
