//! What callers ask of an account: one `Request` per operation.
//!
//! A request names its account, carries an idempotency key when it moves
//! money, and holds one `Command`. Its fields are already typed (ids, amounts
//! and texts were checked when built); `validate` then checks what depends on
//! configuration and on the operation, before any state is read.

use serde::{Deserialize, Serialize};

use super::amount::Amount;
use super::hash::Fingerprint;
use super::id::{AccountId, Currency, IdemKey, Text};

/// How an account pays: prepaid credits, or postpaid under a contract.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Prepaid,
    Contract,
}

/// What a debit or hold pays for; usage is summed by service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    #[default]
    ApiRequest,
    DedicatedEndpoint,
    FineTuning,
    Evaluation,
    Other,
}

impl Service {
    pub const ALL: [Service; 5] =
        [Service::ApiRequest, Service::DedicatedEndpoint, Service::FineTuning, Service::Evaluation, Service::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::ApiRequest => "api_request",
            Service::DedicatedEndpoint => "dedicated_endpoint",
            Service::FineTuning => "fine_tuning",
            Service::Evaluation => "evaluation",
            Service::Other => "other",
        }
    }
}

/// `Strict`: declined unless the available balance covers it. `Metered`: the
/// usage already happened, so it is applied even past zero (the shortfall
/// becomes debt and the account is suspended).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DebitMode {
    #[default]
    Strict,
    Metered,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub account: AccountId,
    /// Required on every command that moves money (`Command::needs_key`).
    /// JSON also takes `idempotency_key`, the proto's name.
    #[serde(alias = "idempotency_key")]
    pub key: Option<IdemKey>,
    pub command: Command,
}

impl Request {
    /// The key idempotency is decided under: none for a query (a read
    /// needs no first result), whatever it carries.
    pub fn idempotency_key(&self) -> Option<&IdemKey> {
        self.key.as_ref().filter(|_| !self.command.is_query())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Create the account. Opening again with the same settings is a no-op
    /// that returns the account; with other settings, `account_exists`.
    /// JSON also takes the proto's name, `open_account`.
    #[serde(alias = "open_account")]
    Open {
        /// JSON may leave these out, as the proto may: `prepaid`, `USD`.
        #[serde(default)]
        mode: Mode,
        #[serde(default)]
        currency: Currency,
        /// Whether a past-due invoice suspends access; `None` takes the
        /// configured default.
        past_due_suspends: Option<bool>,
        /// Contract accounts only: the most the open period plus unpaid
        /// invoices plus holds may reach for strict debits and holds.
        credit_limit: Option<Amount>,
    },
    /// May the account make API calls now? Refused with the reason if not.
    CheckAccess,
    Debit {
        amount: Amount,
        /// JSON may leave `mode` and `service` out, as the proto may:
        /// `strict` and `api_request`.
        #[serde(default)]
        mode: DebitMode,
        #[serde(default)]
        service: Service,
        reference: Option<Text>,
    },
    /// Reserve credits for a job; expires by itself after the timeout.
    Hold {
        amount: Amount,
        #[serde(default)]
        service: Service,
        reference: Option<Text>,
        timeout_ms: Option<u64>,
    },
    /// Settle a hold at the final cost. Up to the held amount, the rest is
    /// released; beyond it, the excess is charged like a metered debit (the
    /// job already ran).
    Capture {
        hold_id: u64,
        amount: Amount,
    },
    Release {
        hold_id: u64,
    },
    /// A credit pack paid for: at least the minimum purchase; activates.
    Purchase {
        amount: Amount,
        reference: Option<Text>,
    },
    /// Free credits (promotional, trial, goodwill): never activate.
    Grant {
        amount: Amount,
        expires_at_ms: Option<u64>,
        /// Lower burns first among grants with the same expiry; default 0.
        priority: Option<u8>,
        reference: Option<Text>,
    },
    SetAutoRecharge {
        enabled: bool,
        /// Purchase size; `None` takes the configured default (25.00).
        amount: Option<Amount>,
        threshold: Amount,
    },
    /// The payment gateway charged the attempt: credit it.
    RechargeSucceeded {
        attempt_id: u64,
    },
    /// The payment gateway declined the attempt for good.
    RechargeFailed {
        attempt_id: u64,
        error: Text,
    },
    /// Policy expiry of one grant (`Some(id)`) or of all (`None`), with at
    /// least `expiry_notice_ms` of notice.
    SetGrantExpiry {
        grant_id: Option<u64>,
        expires_at_ms: u64,
    },
    /// Invoice the open period (contract usage, or a prepaid account's debt).
    ClosePeriod {
        due_at_ms: Option<u64>,
    },
    PayInvoice {
        invoice_id: u64,
        amount: Amount,
    },
    Freeze {
        reason: Text,
    },
    Unfreeze {
        reason: Text,
    },
    /// Close the account: open holds are released; credits stay on the ledger.
    Close {
        reason: Text,
    },
    /// Operator correction: positive credits an `adjustment` grant, negative
    /// debits like metered usage.
    Adjust {
        amount: Amount,
        reason: Text,
    },
    Balance,
    /// Settle whatever is due (expiries, notices, past-due invoices, recharge
    /// retries). Every command does this first; timers send `Tick` when
    /// nothing else would.
    Tick,
}

impl Command {
    /// Commands that move money must carry an idempotency key.
    pub fn needs_key(&self) -> bool {
        matches!(
            self,
            Command::Debit { .. }
                | Command::Hold { .. }
                | Command::Capture { .. }
                | Command::Release { .. }
                | Command::Purchase { .. }
                | Command::Grant { .. }
                | Command::SetGrantExpiry { .. }
                | Command::ClosePeriod { .. }
                | Command::PayInvoice { .. }
                | Command::Adjust { .. }
        )
    }

    /// Reads nothing but state: never recorded under a key, never journaled
    /// beyond what settling due deadlines writes.
    /// Commands only the node itself sends (the recharge worker reporting
    /// a gateway's answer, timers): no API takes them — a caller that
    /// could send `RechargeSucceeded` could credit a charge that never
    /// happened.
    pub fn is_internal(&self) -> bool {
        matches!(self, Command::RechargeSucceeded { .. } | Command::RechargeFailed { .. } | Command::Tick)
    }

    pub fn is_query(&self) -> bool {
        matches!(self, Command::CheckAccess | Command::Balance | Command::Tick)
    }

    /// Money in is always made durable before it is acknowledged, whatever
    /// the node's durability mode (SPEC: Guarantees).
    pub fn is_money_in(&self) -> bool {
        matches!(
            self,
            Command::Purchase { .. }
                | Command::Grant { .. }
                | Command::PayInvoice { .. }
                | Command::RechargeSucceeded { .. }
        ) || matches!(self, Command::Adjust { amount, .. } if amount.is_positive())
    }

    /// The operation's name as the SPEC spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Open { .. } => "open_account",
            Command::CheckAccess => "check_access",
            Command::Debit { .. } => "debit",
            Command::Hold { .. } => "hold",
            Command::Capture { .. } => "capture",
            Command::Release { .. } => "release",
            Command::Purchase { .. } => "purchase",
            Command::Grant { .. } => "grant",
            Command::SetAutoRecharge { .. } => "set_auto_recharge",
            Command::RechargeSucceeded { .. } => "recharge_succeeded",
            Command::RechargeFailed { .. } => "recharge_failed",
            Command::SetGrantExpiry { .. } => "set_grant_expiry",
            Command::ClosePeriod { .. } => "close_period",
            Command::PayInvoice { .. } => "pay_invoice",
            Command::Freeze { .. } => "freeze",
            Command::Unfreeze { .. } => "unfreeze",
            Command::Close { .. } => "close",
            Command::Adjust { .. } => "adjust",
            Command::Balance => "balance",
            Command::Tick => "tick",
        }
    }
}

impl Mode {
    /// Stable number for fingerprints; never reuse one.
    fn code(self) -> u8 {
        match self {
            Mode::Prepaid => 0,
            Mode::Contract => 1,
        }
    }
}

impl Service {
    /// Stable number for fingerprints; never reuse one.
    fn code(self) -> u8 {
        match self {
            Service::ApiRequest => 0,
            Service::DedicatedEndpoint => 1,
            Service::FineTuning => 2,
            Service::Evaluation => 3,
            Service::Other => 4,
        }
    }
}

impl DebitMode {
    /// Stable number for fingerprints; never reuse one.
    fn code(self) -> u8 {
        match self {
            DebitMode::Strict => 0,
            DebitMode::Metered => 1,
        }
    }
}

impl Command {
    /// What identifies the request under its idempotency key: a stable hash
    /// of the operation and every one of its fields, written explicitly (tags
    /// and field order are part of the stored format: add, never renumber).
    pub fn fingerprint(&self) -> u64 {
        let amount = |a: &Amount| a.units();
        match self {
            Command::Open { mode, currency, past_due_suspends, credit_limit } => Fingerprint::new(1)
                .byte(mode.code())
                .text(Some(currency.as_str()))
                .byte(match past_due_suspends {
                    None => 0,
                    Some(false) => 1,
                    Some(true) => 2,
                })
                .opt_i128(credit_limit.as_ref().map(amount)),
            Command::CheckAccess => Fingerprint::new(2),
            Command::Debit { amount: a, mode, service, reference } => Fingerprint::new(3)
                .i128(a.units())
                .byte(mode.code())
                .byte(service.code())
                .text(reference.as_ref().map(Text::as_str)),
            Command::Hold { amount: a, service, reference, timeout_ms } => Fingerprint::new(4)
                .i128(a.units())
                .byte(service.code())
                .text(reference.as_ref().map(Text::as_str))
                .opt_u64(*timeout_ms),
            Command::Capture { hold_id, amount: a } => Fingerprint::new(5).u64(*hold_id).i128(a.units()),
            Command::Release { hold_id } => Fingerprint::new(6).u64(*hold_id),
            Command::Purchase { amount: a, reference } => {
                Fingerprint::new(7).i128(a.units()).text(reference.as_ref().map(Text::as_str))
            }
            Command::Grant { amount: a, expires_at_ms, priority, reference } => Fingerprint::new(8)
                .i128(a.units())
                .opt_u64(*expires_at_ms)
                .opt_u64(priority.map(u64::from))
                .text(reference.as_ref().map(Text::as_str)),
            Command::SetAutoRecharge { enabled, amount: a, threshold } => {
                Fingerprint::new(9).byte(*enabled as u8).opt_i128(a.as_ref().map(amount)).i128(threshold.units())
            }
            Command::RechargeSucceeded { attempt_id } => Fingerprint::new(10).u64(*attempt_id),
            Command::RechargeFailed { attempt_id, error } => {
                Fingerprint::new(11).u64(*attempt_id).text(Some(error.as_str()))
            }
            Command::SetGrantExpiry { grant_id, expires_at_ms } => {
                Fingerprint::new(12).opt_u64(*grant_id).u64(*expires_at_ms)
            }
            Command::ClosePeriod { due_at_ms } => Fingerprint::new(13).opt_u64(*due_at_ms),
            Command::PayInvoice { invoice_id, amount: a } => Fingerprint::new(14).u64(*invoice_id).i128(a.units()),
            Command::Freeze { reason } => Fingerprint::new(15).text(Some(reason.as_str())),
            Command::Unfreeze { reason } => Fingerprint::new(16).text(Some(reason.as_str())),
            Command::Close { reason } => Fingerprint::new(17).text(Some(reason.as_str())),
            Command::Adjust { amount: a, reason } => Fingerprint::new(18).i128(a.units()).text(Some(reason.as_str())),
            Command::Balance => Fingerprint::new(19),
            Command::Tick => Fingerprint::new(20),
        }
        .finish()
    }
}
