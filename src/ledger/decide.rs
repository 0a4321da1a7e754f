//! The rules: given an account's state, a command and the time, what
//! happens. Nothing here changes state; it returns events (facts) for
//! `AccountState::replay` to fold, or the reason for a refusal.
//!
//! Three steps run for every request on an existing account, in this order:
//! `settle` (deadlines that have come: hold and grant expiry, expiry notices,
//! past-due invoices), `decide` (the command itself), and `follow_up`
//! (notices of status changes, the low-balance notice, and the auto-recharge
//! decision). `validate` runs before all of them and reads no state.

use super::amount::Amount;
use super::command::{Command, DebitMode, Mode, Request};
use super::config::LedgerConfig;
use super::event::{Event, GrantSource, HoldEnd, InvoiceSource, PauseCause};
use super::reason::Reason;
use super::reply::{BalanceView, Detail};
use super::state::{AccountState, Status};

/// Checks what the request alone can tell: keys, amounts against the
/// configured bounds, timeouts. Reads no state and no clock: a request
/// valid once is valid when resent (deadlines against the clock are
/// `check_deadlines`, after the idempotency lookup).
pub fn validate(req: &Request, cfg: &LedgerConfig) -> Result<(), Reason> {
    let cmd = &req.command;
    if cmd.needs_key() && req.key.is_none() {
        return Err(Reason::MissingIdempotencyKey);
    }
    let positive = |a: Amount| -> Result<(), Reason> {
        if !a.is_positive() {
            return Err(Reason::InvalidAmount("it must be greater than zero"));
        }
        within_max(a, cfg)
    };
    match cmd {
        Command::Open { mode, credit_limit, .. } => {
            if let Some(limit) = credit_limit {
                if *mode != Mode::Contract {
                    return Err(Reason::InvalidAmount("a credit limit applies to contract accounts only"));
                }
                if limit.is_negative() || *limit > cfg.max_balance {
                    return Err(Reason::InvalidAmount(
                        "a credit limit is between zero and the configured maximum balance",
                    ));
                }
            }
        }
        Command::Debit { amount, .. } | Command::PayInvoice { amount, .. } => positive(*amount)?,
        Command::Hold { amount, timeout_ms, .. } => {
            positive(*amount)?;
            if let Some(t) = timeout_ms
                && (*t == 0 || *t > cfg.hold_timeout_max_ms)
            {
                return Err(Reason::InvalidTimeout { max_ms: cfg.hold_timeout_max_ms });
            }
        }
        Command::Capture { amount, .. } => {
            if amount.is_negative() {
                return Err(Reason::InvalidAmount("a capture is zero or more"));
            }
            within_max(*amount, cfg)?;
        }
        Command::Purchase { amount, .. } => {
            positive(*amount)?;
            if *amount < cfg.min_purchase {
                return Err(Reason::BelowMinimumPurchase { minimum: cfg.min_purchase });
            }
        }
        Command::Grant { amount, .. } => positive(*amount)?,
        Command::SetAutoRecharge { amount, threshold, .. } => {
            let amount = amount.unwrap_or(cfg.recharge_amount_default);
            positive(amount)?;
            if amount < cfg.min_purchase {
                return Err(Reason::BelowMinimumPurchase { minimum: cfg.min_purchase });
            }
            if threshold.is_negative() {
                return Err(Reason::InvalidAmount("the threshold is zero or more"));
            }
            within_max(*threshold, cfg)?;
        }
        Command::Adjust { amount, .. } => {
            if amount.is_zero() {
                return Err(Reason::InvalidAmount("an adjustment is not zero"));
            }
            within_max(amount.abs(), cfg)?;
        }
        Command::CheckAccess
        | Command::Release { .. }
        | Command::RechargeSucceeded { .. }
        | Command::RechargeFailed { .. }
        | Command::Freeze { .. }
        | Command::Unfreeze { .. }
        | Command::Close { .. }
        | Command::SetGrantExpiry { .. }
        | Command::ClosePeriod { .. }
        | Command::Balance
        | Command::Tick => {}
    }
    Ok(())
}

/// Deadlines a new request sets, against the clock: an expiry or a due
/// date not in the future, an expiry notice shorter than configured. Run
/// after the idempotency lookup, so a request applied before is answered
/// with its first result however late it is resent.
pub fn check_deadlines(cmd: &Command, now_ms: u64, cfg: &LedgerConfig) -> Result<(), Reason> {
    match cmd {
        Command::Grant { expires_at_ms: Some(at), .. } | Command::ClosePeriod { due_at_ms: Some(at) }
            if *at <= now_ms =>
        {
            Err(Reason::InvalidExpiry)
        }
        Command::SetGrantExpiry { expires_at_ms, .. }
            if *expires_at_ms < now_ms.saturating_add(cfg.expiry_notice_ms) =>
        {
            Err(Reason::NoticeTooShort { notice_ms: cfg.expiry_notice_ms })
        }
        _ => Ok(()),
    }
}

fn within_max(a: Amount, cfg: &LedgerConfig) -> Result<(), Reason> {
    if a > cfg.max_amount {
        return Err(Reason::InvalidAmount("it exceeds the configured maximum amount"));
    }
    Ok(())
}

/// Checks a history page size.
pub fn check_page(limit: u32, cfg: &LedgerConfig) -> Result<(), Reason> {
    if limit == 0 || limit > cfg.history_page_max {
        return Err(Reason::InvalidPage { max: cfg.history_page_max });
    }
    Ok(())
}

/// The event that opens an account.
pub fn open_event(cmd: &Command, cfg: &LedgerConfig) -> Option<Event> {
    let Command::Open { mode, currency, past_due_suspends, credit_limit } = cmd else {
        return None;
    };
    Some(Event::Opened {
        mode: *mode,
        currency: *currency,
        past_due_suspends: past_due_suspends.unwrap_or(cfg.past_due_suspends_default),
        credit_limit: *credit_limit,
    })
}

/// Deadlines that have come by `now_ms`: holds expire, grants give notice
/// and expire, invoices fall past due. Emits nothing when nothing is due.
pub fn settle(state: &AccountState, now_ms: u64, cfg: &LedgerConfig, out: &mut Vec<Event>) {
    if state.next_deadline_ms(cfg.expiry_notice_ms).is_none_or(|at| at > now_ms) {
        return;
    }
    for hold in state.holds.iter().filter(|h| h.expires_at_ms <= now_ms) {
        out.push(Event::HoldReleased { hold_id: hold.id, amount: hold.amount, expired: true });
    }
    for grant in &state.grants {
        let Some(expires_at_ms) = grant.expires_at_ms else {
            continue;
        };
        if expires_at_ms <= now_ms {
            out.push(Event::GrantExpired { grant_id: grant.id, amount: grant.remaining });
        } else if !grant.notice_sent && expires_at_ms.saturating_sub(cfg.expiry_notice_ms) <= now_ms {
            out.push(Event::GrantExpiring { grant_id: grant.id, expires_at_ms, amount: grant.remaining });
        }
    }
    for invoice in state.invoices.iter().filter(|i| !i.past_due && i.due_at_ms <= now_ms) {
        out.push(Event::InvoicePastDue { invoice_id: invoice.id });
    }
}

/// The command's own decision: its events go to `out`, and the reply detail
/// comes back; or the reason it is refused, with nothing in `out`.
pub fn decide(
    state: &AccountState,
    cmd: &Command,
    now_ms: u64,
    cfg: &LedgerConfig,
    out: &mut Vec<Event>,
) -> Result<Detail, Reason> {
    let contract = state.mode == Mode::Contract;
    let refuse_closed = || {
        if state.closed.is_some() { Err(Reason::Closed) } else { Ok(()) }
    };
    let refuse_contract = || {
        if contract { Err(Reason::NotForContract) } else { Ok(()) }
    };
    let access = || match state.access_refusal(cfg.min_purchase) {
        Some(reason) => Err(reason),
        None => Ok(()),
    };
    match cmd {
        Command::Open { .. } => {
            let Some(Event::Opened { mode, currency, past_due_suspends, credit_limit }) = open_event(cmd, cfg) else {
                return Err(Reason::AccountExists);
            };
            let explicit_past_due = matches!(cmd, Command::Open { past_due_suspends: Some(_), .. });
            let same = mode == state.mode
                && currency == state.currency
                && credit_limit == state.credit_limit
                && (!explicit_past_due || past_due_suspends == state.past_due_suspends);
            if same { Ok(Detail::None) } else { Err(Reason::AccountExists) }
        }
        Command::CheckAccess => access().map(|()| Detail::None),
        Command::Debit { amount, mode, service, reference } => {
            refuse_closed()?;
            if *mode == DebitMode::Strict {
                access()?;
                check_funds(state, *amount, cfg)?;
            }
            check_charge_bound(state, *amount, cfg)?;
            let (service, reference, amount, mode) = (*service, reference.clone(), *amount, *mode);
            out.push(if contract {
                Event::UsageAccrued { amount, mode, service, reference }
            } else {
                Event::Debited { amount, mode, service, reference }
            });
            Ok(Detail::Debited { amount, debt_added: debt_added(state, amount) })
        }
        Command::Hold { amount, service, reference, timeout_ms } => {
            access()?;
            if state.holds.len() >= cfg.max_holds as usize {
                return Err(Reason::TooManyHolds { max: cfg.max_holds });
            }
            check_funds(state, *amount, cfg)?;
            let hold_id = state.next_hold_id;
            let expires_at_ms = now_ms.saturating_add(timeout_ms.unwrap_or(cfg.hold_timeout_default_ms));
            out.push(Event::HoldPlaced {
                hold_id,
                amount: *amount,
                service: *service,
                reference: reference.clone(),
                expires_at_ms,
            });
            Ok(Detail::HoldPlaced { hold_id, expires_at_ms })
        }
        Command::Capture { hold_id, amount } => {
            refuse_closed()?;
            let hold = find_hold(state, *hold_id)?;
            // Beyond the held amount the excess is charged like metered usage.
            if *amount > hold.amount {
                check_charge_bound(state, *amount - hold.amount, cfg)?;
            }
            out.push(Event::HoldCaptured {
                hold_id: hold.id,
                amount: *amount,
                service: hold.service,
                reference: hold.reference.clone(),
                to_period: contract,
            });
            let released = (hold.amount - *amount).max(Amount::ZERO);
            Ok(Detail::Captured { hold_id: hold.id, captured: *amount, released })
        }
        Command::Release { hold_id } => {
            refuse_closed()?;
            let hold = find_hold(state, *hold_id)?;
            out.push(Event::HoldReleased { hold_id: hold.id, amount: hold.amount, expired: false });
            Ok(Detail::Released { hold_id: hold.id, released: hold.amount })
        }
        Command::Purchase { amount, reference } => {
            refuse_closed()?;
            refuse_contract()?;
            check_credit(state, *amount, cfg)?;
            out.push(Event::Credited {
                grant_id: state.next_grant_id,
                source: GrantSource::Purchase,
                amount: *amount,
                expires_at_ms: None,
                priority: 0,
                reference: reference.clone(),
            });
            Ok(credited(state, *amount))
        }
        Command::Grant { amount, expires_at_ms, priority, reference } => {
            refuse_closed()?;
            refuse_contract()?;
            check_credit(state, *amount, cfg)?;
            out.push(Event::Credited {
                grant_id: state.next_grant_id,
                source: GrantSource::Free,
                amount: *amount,
                expires_at_ms: *expires_at_ms,
                priority: priority.unwrap_or(0),
                reference: reference.clone(),
            });
            Ok(credited(state, *amount))
        }
        Command::SetAutoRecharge { enabled, amount, threshold } => {
            refuse_closed()?;
            refuse_contract()?;
            if *enabled && cfg.auto_recharge_off {
                return Err(Reason::InvalidAutoRecharge(
                    "auto-recharge is off on this node (recharge.enabled = false): buy credits instead",
                ));
            }
            let amount = amount.unwrap_or(cfg.recharge_amount_default);
            let planned = if *enabled { purchases_needed(state.balance(), *threshold, amount) } else { 0 };
            if planned > cfg.recharge_chain_max {
                return Err(Reason::InvalidAutoRecharge(
                    "reaching the threshold would take more purchases than recharge_chain_max allows; raise the amount",
                ));
            }
            out.push(Event::AutoRechargeSet { enabled: *enabled, amount, threshold: *threshold });
            Ok(Detail::AutoRecharge { purchases_planned: planned })
        }
        Command::RechargeSucceeded { attempt_id } => {
            // Money already charged is never refused: no status or bound
            // check here.
            let attempt = in_flight(state, *attempt_id)?;
            out.push(Event::RechargeSucceeded {
                attempt_id: attempt.id,
                grant_id: state.next_grant_id,
                amount: attempt.amount,
            });
            Ok(credited(state, attempt.amount))
        }
        Command::RechargeFailed { attempt_id, error } => {
            let attempt = in_flight(state, *attempt_id)?;
            let failures = state.auto_recharge.failures + 1;
            let pause = failures >= cfg.recharge_max_failures;
            let retry_at_ms = (!pause).then(|| now_ms.saturating_add(cfg.recharge_backoff_ms(failures)));
            out.push(Event::RechargeFailed { attempt_id: attempt.id, failures, retry_at_ms, error: error.clone() });
            if pause {
                out.push(Event::RechargePaused { cause: PauseCause::Failures });
            }
            Ok(Detail::None)
        }
        Command::SetGrantExpiry { grant_id, expires_at_ms } => {
            refuse_closed()?;
            let before = out.len();
            for grant in state.grants.iter().filter(|g| grant_id.is_none_or(|id| id == g.id)) {
                out.push(Event::GrantExpirySet { grant_id: grant.id, expires_at_ms: *expires_at_ms });
            }
            let grants = (out.len() - before) as u32;
            if grant_id.is_some() && grants == 0 {
                return Err(Reason::GrantNotFound);
            }
            Ok(Detail::ExpirySet { grants })
        }
        Command::ClosePeriod { due_at_ms } => {
            let (amount, source) =
                if contract { (state.period_usage, InvoiceSource::Period) } else { (state.debt, InvoiceSource::Debt) };
            if amount.is_zero() {
                return Ok(Detail::Invoiced { invoice_id: None, amount });
            }
            if state.invoices.len() >= cfg.max_open_invoices as usize {
                return Err(Reason::TooManyInvoices { max: cfg.max_open_invoices });
            }
            let invoice_id = state.next_invoice_id;
            let due_at_ms = due_at_ms.unwrap_or(now_ms.saturating_add(cfg.invoice_due_ms));
            out.push(Event::Invoiced { invoice_id, amount, source, due_at_ms });
            Ok(Detail::Invoiced { invoice_id: Some(invoice_id), amount })
        }
        Command::PayInvoice { invoice_id, amount } => {
            let Some(i) = state.invoice_index(*invoice_id) else {
                // Invoices leave the state only when fully paid.
                let was_issued = *invoice_id >= 1 && *invoice_id < state.next_invoice_id;
                return Err(if was_issued { Reason::InvoiceAlreadyPaid } else { Reason::InvoiceNotFound });
            };
            let outstanding = state.invoices[i].outstanding();
            if *amount > outstanding {
                return Err(Reason::PaymentExceedsInvoice { amount: *amount, outstanding });
            }
            out.push(Event::InvoicePaid { invoice_id: *invoice_id, amount: *amount });
            Ok(Detail::InvoicePaid { invoice_id: *invoice_id, outstanding: outstanding - *amount })
        }
        Command::Freeze { reason } => {
            refuse_closed()?;
            if state.frozen.is_none() {
                out.push(Event::Frozen { reason: reason.clone() });
            }
            Ok(Detail::None)
        }
        Command::Unfreeze { reason } => {
            refuse_closed()?;
            if state.frozen.is_some() {
                out.push(Event::Unfrozen { reason: reason.clone() });
            }
            Ok(Detail::None)
        }
        Command::Close { reason } => {
            if state.closed.is_none() {
                for hold in &state.holds {
                    out.push(Event::HoldReleased { hold_id: hold.id, amount: hold.amount, expired: false });
                }
                out.push(Event::Closed { reason: reason.clone() });
            }
            Ok(Detail::None)
        }
        Command::Adjust { amount, reason } => {
            refuse_closed()?;
            refuse_contract()?;
            if amount.is_positive() {
                check_credit(state, *amount, cfg)?;
                out.push(Event::Adjusted {
                    amount: *amount,
                    grant_id: Some(state.next_grant_id),
                    reason: reason.clone(),
                });
                Ok(credited(state, *amount))
            } else {
                let charge = -*amount;
                check_charge_bound(state, charge, cfg)?;
                out.push(Event::Adjusted { amount: *amount, grant_id: None, reason: reason.clone() });
                Ok(Detail::Debited { amount: charge, debt_added: debt_added(state, charge) })
            }
        }
        Command::Balance => Ok(Detail::Balance(Box::new(BalanceView::of(state, cfg.min_purchase)))),
        Command::Tick => Ok(Detail::None),
    }
}

/// What a strict debit or a hold needs: available credits on a prepaid
/// account, room under the credit limit on a contract one.
fn check_funds(state: &AccountState, amount: Amount, cfg: &LedgerConfig) -> Result<(), Reason> {
    if state.mode == Mode::Contract {
        if let Some(limit) = state.credit_limit
            && state.owed() + state.held() + amount > limit
        {
            return Err(Reason::CreditLimitExceeded { limit });
        }
        return check_charge_bound(state, amount, cfg);
    }
    let available = state.available();
    if available < amount {
        return Err(Reason::InsufficientFunds { available, requested: amount });
    }
    Ok(())
}

/// A charge may not take debt or what is owed past `max_balance`.
fn check_charge_bound(state: &AccountState, amount: Amount, cfg: &LedgerConfig) -> Result<(), Reason> {
    let exposure =
        if state.mode == Mode::Contract { state.owed() + state.held() + amount } else { amount - state.balance() };
    if exposure > cfg.max_balance {
        return Err(Reason::BalanceLimitExceeded { max: cfg.max_balance });
    }
    Ok(())
}

/// Money in may not take the balance past `max_balance`, nor add a grant
/// past `max_grants`.
fn check_credit(state: &AccountState, amount: Amount, cfg: &LedgerConfig) -> Result<(), Reason> {
    if state.balance() + amount > cfg.max_balance {
        return Err(Reason::BalanceLimitExceeded { max: cfg.max_balance });
    }
    let adds_grant = amount > state.debt;
    if adds_grant && state.grants.len() >= cfg.max_grants as usize {
        return Err(Reason::TooManyGrants { max: cfg.max_grants });
    }
    Ok(())
}

fn credited(state: &AccountState, amount: Amount) -> Detail {
    let debt_paid = amount.min(state.debt);
    let grant_id = (amount > debt_paid).then_some(state.next_grant_id);
    Detail::Credited { grant_id, debt_paid }
}

fn debt_added(state: &AccountState, charge: Amount) -> Amount {
    if state.mode == Mode::Contract {
        return Amount::ZERO;
    }
    (charge - state.credits()).max(Amount::ZERO)
}

fn find_hold(state: &AccountState, hold_id: u64) -> Result<&super::state::Hold, Reason> {
    state.hold(hold_id).ok_or(match state.hold_end(hold_id) {
        Some(HoldEnd::Captured) => Reason::HoldAlreadyCaptured,
        Some(HoldEnd::Released) => Reason::HoldAlreadyReleased,
        Some(HoldEnd::Expired) => Reason::HoldExpired,
        None => Reason::HoldNotFound,
    })
}

fn in_flight(state: &AccountState, attempt_id: u64) -> Result<&super::state::Attempt, Reason> {
    match &state.auto_recharge.in_flight {
        Some(a) if a.id == attempt_id => Ok(a),
        _ => Err(Reason::RechargeNotInFlight),
    }
}

/// How many purchases of `amount` bring `balance` up to `threshold`: none
/// when it is already there, else the gap divided by the amount, rounded up.
pub fn purchases_needed(balance: Amount, threshold: Amount, amount: Amount) -> u32 {
    if balance >= threshold || !amount.is_positive() {
        return 0;
    }
    let (gap, step) = ((threshold - balance).units(), amount.units());
    // 64-bit division is several times faster than 128-bit, and fits every
    // realistic gap (up to 18 million in 10⁻¹² units).
    let n = match (u64::try_from(gap), u64::try_from(step)) {
        (Ok(gap), Ok(step)) => gap.div_ceil(step) as i128,
        _ => (gap + step - 1) / step,
    };
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What an account looked like before a request, for `follow_up` to compare.
#[derive(Clone, Copy, Debug)]
pub struct Before {
    pub status: Status,
    pub balance: Amount,
    pub activated: bool,
}

impl Before {
    pub fn of(state: &AccountState) -> Before {
        Before { status: state.status(), balance: state.balance(), activated: state.activated_at_ms.is_some() }
    }
}

/// After the request's own events: notices of what changed (activated,
/// suspended, reactivated, low balance), then the auto-recharge decision —
/// start one attempt if the balance is below the threshold and none is in
/// flight, or pause when the chain is too long.
pub fn follow_up(before: Before, state: &AccountState, now_ms: u64, cfg: &LedgerConfig, out: &mut Vec<Event>) {
    let status = state.status();
    if !before.activated && state.activated_at_ms.is_some() {
        out.push(Event::Activated);
    }
    if status == Status::Suspended
        && before.status != Status::Suspended
        && let Some(cause) = state.suspend_cause()
    {
        out.push(Event::Suspended { cause });
    }
    if before.status == Status::Suspended && status == Status::Active {
        out.push(Event::Reactivated);
    }
    let auto = &state.auto_recharge;
    let balance = state.balance();
    if state.mode != Mode::Prepaid || auto.threshold.is_zero() {
        return;
    }
    if before.balance >= auto.threshold && balance < auto.threshold {
        out.push(Event::LowBalance { balance, threshold: auto.threshold });
    }
    let blocked = matches!(status, Status::Closed | Status::Frozen) || cfg.auto_recharge_off;
    if blocked || balance >= auto.threshold || !auto.may_start(now_ms) {
        return;
    }
    if auto.chain >= cfg.recharge_chain_max {
        out.push(Event::RechargePaused { cause: PauseCause::ChainLimit });
    } else {
        out.push(Event::RechargeRequested { attempt_id: state.next_attempt_id, amount: auto.amount });
    }
}
