//! Why a request was refused: one stable code per case, and a sentence.
//!
//! The code (`Reason::code`) is the contract: clients branch on it, docs list
//! it (`docs/errors.md`), and it never changes meaning. The sentence is for
//! people and may improve. Variants are grouped in the order they are checked
//! (validation, then idempotency, then the account's state, then funds), which
//! is also the precedence when several apply: the first failing check decides.

use super::amount::{Amount, AmountError};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    // ---- validation: the request alone is wrong; state is never consulted.
    #[error("account ids are 1 to 64 bytes of letters, digits, '.', '_', ':' or '-'")]
    InvalidAccountId,
    #[error("invalid amount: {0}")]
    InvalidAmount(&'static str),
    #[error("idempotency keys are 1 to 128 bytes of printable ASCII without spaces")]
    InvalidIdempotencyKey,
    #[error("this operation moves money and needs an idempotency key")]
    MissingIdempotencyKey,
    #[error("{field} must be 1 to 256 bytes of text without control characters")]
    InvalidText { field: &'static str },
    #[error("currencies are three capital letters, such as USD")]
    InvalidCurrency,
    #[error("hold timeouts are between 1 ms and the configured maximum of {max_ms} ms")]
    InvalidTimeout { max_ms: u64 },
    #[error("the expiry must be in the future")]
    InvalidExpiry,
    #[error("expiry by policy needs at least {notice_ms} ms of notice before it takes effect")]
    NoticeTooShort { notice_ms: u64 },
    #[error("invalid auto-recharge setting: {0}")]
    InvalidAutoRecharge(&'static str),
    #[error("a purchase must be at least {minimum}")]
    BelowMinimumPurchase { minimum: Amount },
    #[error("a history page holds 1 to {max} entries")]
    InvalidPage { max: u32 },

    // ---- idempotency
    #[error("this idempotency key was already used for a different request")]
    IdempotencyConflict,

    // ---- the account and its state
    #[error("no account has this id")]
    UnknownAccount,
    #[error("an account with this id already exists with different settings")]
    AccountExists,
    #[error("the account is closed")]
    Closed,
    #[error("the account is frozen by an operator")]
    Frozen,
    #[error(
        "the account is not activated: it needs a purchase of at least {minimum}; free credits alone do not activate it"
    )]
    NotActivated { minimum: Amount },
    #[error("access is suspended: an invoice is past due and must be paid; credits cannot pay it")]
    PastDue,
    #[error("access is suspended: the balance is {balance}; add credits to reactivate")]
    Suspended { balance: Amount },
    #[error("this operation is not available on contract accounts")]
    NotForContract,
    #[error("the account already has {max} grants with credit left")]
    TooManyGrants { max: u32 },
    #[error("the account already has {max} open holds")]
    TooManyHolds { max: u32 },
    #[error("the account already has {max} unpaid invoices")]
    TooManyInvoices { max: u32 },
    #[error("this would take the account past the configured limit of {max}")]
    BalanceLimitExceeded { max: Amount },
    #[error("no such hold on this account")]
    HoldNotFound,
    #[error("the hold has expired and its credits were released")]
    HoldExpired,
    #[error("the hold was already captured")]
    HoldAlreadyCaptured,
    #[error("the hold was already released")]
    HoldAlreadyReleased,
    #[error("no grant with this id has credit left on this account")]
    GrantNotFound,
    #[error("no such invoice on this account")]
    InvoiceNotFound,
    #[error("the invoice is already paid")]
    InvoiceAlreadyPaid,
    #[error("the payment of {amount} exceeds the {outstanding} outstanding on the invoice")]
    PaymentExceedsInvoice { amount: Amount, outstanding: Amount },
    #[error("no auto-recharge attempt with this id is in flight")]
    RechargeNotInFlight,

    // ---- funds
    #[error("insufficient funds: {requested} requested, {available} available")]
    InsufficientFunds { available: Amount, requested: Amount },
    #[error("the contract credit limit of {limit} would be exceeded")]
    CreditLimitExceeded { limit: Amount },
}

impl Reason {
    /// The stable snake_case code.
    pub fn code(&self) -> &'static str {
        use Reason::*;
        match self {
            InvalidAccountId => "invalid_account_id",
            InvalidAmount(_) => "invalid_amount",
            InvalidIdempotencyKey => "invalid_idempotency_key",
            MissingIdempotencyKey => "missing_idempotency_key",
            InvalidText { .. } => "invalid_text",
            InvalidCurrency => "invalid_currency",
            InvalidTimeout { .. } => "invalid_timeout",
            InvalidExpiry => "invalid_expiry",
            NoticeTooShort { .. } => "notice_too_short",
            InvalidAutoRecharge(_) => "invalid_auto_recharge",
            BelowMinimumPurchase { .. } => "below_minimum_purchase",
            InvalidPage { .. } => "invalid_page",
            IdempotencyConflict => "idempotency_conflict",
            UnknownAccount => "unknown_account",
            AccountExists => "account_exists",
            Closed => "closed",
            Frozen => "frozen",
            NotActivated { .. } => "not_activated",
            PastDue => "past_due",
            Suspended { .. } => "suspended",
            NotForContract => "not_for_contract",
            TooManyGrants { .. } => "too_many_grants",
            TooManyHolds { .. } => "too_many_holds",
            TooManyInvoices { .. } => "too_many_invoices",
            BalanceLimitExceeded { .. } => "balance_limit_exceeded",
            HoldNotFound => "hold_not_found",
            HoldExpired => "hold_expired",
            HoldAlreadyCaptured => "hold_already_captured",
            HoldAlreadyReleased => "hold_already_released",
            GrantNotFound => "grant_not_found",
            InvoiceNotFound => "invoice_not_found",
            InvoiceAlreadyPaid => "invoice_already_paid",
            PaymentExceedsInvoice { .. } => "payment_exceeds_invoice",
            RechargeNotInFlight => "recharge_not_in_flight",
            InsufficientFunds { .. } => "insufficient_funds",
            CreditLimitExceeded { .. } => "credit_limit_exceeded",
        }
    }

    /// Every code, in declaration order: `docs/errors.md` lists exactly these
    /// (a test checks it).
    pub const ALL_CODES: &'static [&'static str] = &[
        "invalid_account_id",
        "invalid_amount",
        "invalid_idempotency_key",
        "missing_idempotency_key",
        "invalid_text",
        "invalid_currency",
        "invalid_timeout",
        "invalid_expiry",
        "notice_too_short",
        "invalid_auto_recharge",
        "below_minimum_purchase",
        "invalid_page",
        "idempotency_conflict",
        "unknown_account",
        "account_exists",
        "closed",
        "frozen",
        "not_activated",
        "past_due",
        "suspended",
        "not_for_contract",
        "too_many_grants",
        "too_many_holds",
        "too_many_invoices",
        "balance_limit_exceeded",
        "hold_not_found",
        "hold_expired",
        "hold_already_captured",
        "hold_already_released",
        "grant_not_found",
        "invoice_not_found",
        "invoice_already_paid",
        "payment_exceeds_invoice",
        "recharge_not_in_flight",
        "insufficient_funds",
        "credit_limit_exceeded",
    ];
}

/// Text that is not an amount is `invalid_amount`, with the parser's reason.
impl From<AmountError> for Reason {
    fn from(e: AmountError) -> Reason {
        Reason::InvalidAmount(match e {
            AmountError::Empty => "it is empty",
            AmountError::TooLong => "it is longer than 64 characters",
            AmountError::NotANumber => "it is not a decimal number",
            AmountError::TooManyDecimals => "it has more than 12 decimal places",
            AmountError::Overflow => "it is too large",
        })
    }
}
