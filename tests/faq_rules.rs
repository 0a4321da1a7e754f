//! The billing FAQ's rules (shared/SPEC.md, "The rules from the FAQ"), one
//! test or more per rule, named like the rule.

mod common;

use common::*;
use prepaid::ledger::*;

// ---- Rule 1: fully prepaid.

#[test]
fn api_calls_need_a_positive_balance() {
    let mut h = Harness::active("5.00");
    assert!(h.run(Command::CheckAccess).is_ok());
    h.ok(strict("5.00"));
    assert_eq!(h.balance(), Amount::ZERO);
    let refusal = h.refused(Command::CheckAccess);
    assert_eq!(refusal.code(), "suspended");
    assert_eq!(h.state().status(), Status::Suspended);
}

#[test]
fn balance_reaching_zero_suspends_until_credits_are_added() {
    let mut h = Harness::active("10.00");
    let mark = h.journal.len();
    h.ok(strict("10.00"));
    assert!(h.event_names_since(mark).contains(&"suspended"));
    assert_eq!(h.refused(strict("0.01")).code(), "suspended");
    let mark = h.journal.len();
    let reply = h.ok(purchase_cmd("5.00"));
    assert_eq!(reply.status, Status::Active, "adding credits reactivates at once");
    assert!(h.event_names_since(mark).contains(&"reactivated"));
    h.ok(strict("1.00"));
}

#[test]
fn free_credits_reactivate_an_activated_account() {
    let mut h = Harness::active("5.00");
    h.ok(strict("5.00"));
    assert_eq!(h.ok(grant_cmd("3.00")).status, Status::Active);
}

// ---- Rule 2: no free trial; minimum purchase.

#[test]
fn free_credits_alone_do_not_activate() {
    let mut h = Harness::open(Mode::Prepaid);
    let reply = h.ok(grant_cmd("100.00"));
    assert_eq!(reply.status, Status::Inactive);
    assert_eq!(reply.balance, amt("100"));
    let refusal = h.refused(Command::CheckAccess);
    assert_eq!(refusal.code(), "not_activated");
    assert!(refusal.to_string().contains("free credits alone do not activate"), "{refusal}");
    assert_eq!(h.refused(strict("1.00")).code(), "not_activated");
    let view = h.view();
    assert_eq!(view.refusal.as_deref(), Some("not_activated"), "the reply says why");
    assert_eq!(view.free, amt("100"));
    assert_eq!(view.lifetime_purchased, Amount::ZERO);
}

#[test]
fn purchase_below_minimum_is_rejected() {
    let mut h = Harness::open(Mode::Prepaid);
    let refusal = h.refused(purchase_cmd("4.99"));
    assert_eq!(refusal.code(), "below_minimum_purchase");
    assert!(refusal.to_string().contains("5.00"));
    assert_eq!(h.state().status(), Status::Inactive);
    assert_eq!(h.journal.len(), 1, "nothing but the opening was written");
}

#[test]
fn minimum_purchase_activates_at_once() {
    let mut h = Harness::open(Mode::Prepaid);
    let mark = h.journal.len();
    let reply = h.ok(purchase_cmd("5.00"));
    assert_eq!(reply.status, Status::Active);
    assert!(h.event_names_since(mark).contains(&"activated"));
    assert!(h.run(Command::CheckAccess).is_ok());
}

#[test]
fn minimum_purchase_is_configurable() {
    let mut h = Harness::open(Mode::Prepaid);
    h.cfg.min_purchase = amt("20");
    assert_eq!(h.refused(purchase_cmd("19.99")).code(), "below_minimum_purchase");
    h.ok(purchase_cmd("20"));
}

#[test]
fn free_credits_burn_once_activated() {
    let mut h = Harness::open(Mode::Prepaid);
    h.ok(grant_cmd("100.00"));
    h.ok(purchase_cmd("5.00"));
    h.ok(strict("50.00"));
    let view = h.view();
    assert_eq!(view.free, amt("50"), "free credits burn before purchased");
    assert_eq!(view.purchased, amt("5"));
}

// ---- Rule 3: sufficient balance for jobs.

#[test]
fn job_hold_needs_the_available_balance() {
    let mut h = Harness::active("100.00");
    let held = h.ok(hold_cmd("60.00", Service::FineTuning));
    assert_eq!(held.available, amt("40"));
    assert_eq!(held.balance, amt("100"), "a hold does not debit");
    let refusal = h.refused(hold_cmd("40.01", Service::DedicatedEndpoint));
    assert_eq!(refusal.code(), "insufficient_funds");
    assert_eq!(h.refused(strict("40.01")).code(), "insufficient_funds", "holds reduce what strict debits may use");
    h.ok(hold_cmd("40.00", Service::Evaluation));
}

#[test]
fn capture_debits_the_final_cost_and_releases_the_rest() {
    let mut h = Harness::active("100.00");
    let id = hold_id(&h.ok(hold_cmd("60.00", Service::FineTuning)));
    let reply = h.ok(Command::Capture { hold_id: id, amount: amt("45.50") });
    assert_eq!(reply.detail, Detail::Captured { hold_id: id, captured: amt("45.50"), released: amt("14.50") });
    assert_eq!(reply.balance, amt("54.50"));
    assert_eq!(reply.available, amt("54.50"));
    assert_eq!(h.refused(Command::Capture { hold_id: id, amount: amt("1") }).code(), "hold_already_captured");
}

#[test]
fn capture_above_the_hold_charges_the_excess_like_metered_usage() {
    let mut h = Harness::active("50.00");
    let id = hold_id(&h.ok(hold_cmd("50.00", Service::FineTuning)));
    let reply = h.ok(Command::Capture { hold_id: id, amount: amt("70.00") });
    assert_eq!(reply.balance, amt("-20"), "the job ran: its whole cost is charged");
    assert_eq!(reply.status, Status::Suspended);
    assert_eq!(h.state().debt, amt("20"));
}

#[test]
fn release_frees_the_held_credits() {
    let mut h = Harness::active("30.00");
    let id = hold_id(&h.ok(hold_cmd("30.00", Service::DedicatedEndpoint)));
    assert_eq!(h.ok(Command::Release { hold_id: id }).available, amt("30"));
    assert_eq!(h.refused(Command::Release { hold_id: id }).code(), "hold_already_released");
    assert_eq!(h.refused(Command::Release { hold_id: 99 }).code(), "hold_not_found");
}

#[test]
fn hold_expires_by_itself_after_its_timeout() {
    let mut h = Harness::active("30.00");
    let reply = h.ok(Command::Hold {
        amount: amt("30"),
        service: Service::Evaluation,
        reference: Some(text("eval-7")),
        timeout_ms: Some(60_000),
    });
    let id = hold_id(&reply);
    h.advance(59_999);
    assert_eq!(h.ok(Command::Tick).available, Amount::ZERO, "not yet");
    h.advance(1);
    let mark = h.journal.len();
    assert_eq!(h.ok(Command::Tick).available, amt("30"));
    assert_eq!(h.event_names_since(mark), ["hold_expired"]);
    assert_eq!(h.refused(Command::Capture { hold_id: id, amount: amt("1") }).code(), "hold_expired");
    assert_eq!(h.count("hold_expired"), 1, "expires exactly once");
}

#[test]
fn an_expired_hold_is_settled_before_any_command_even_without_a_timer() {
    let mut h = Harness::active("30.00");
    h.ok(Command::Hold { amount: amt("30"), service: Service::FineTuning, reference: None, timeout_ms: Some(1_000) });
    h.advance(1_000);
    // No Tick: the debit itself settles the expiry first.
    h.ok(strict("30.00"));
}

// ---- Rule 4: usage debits, strict or metered.

#[test]
fn strict_debit_is_declined_unless_the_available_balance_covers_it() {
    let mut h = Harness::active("5.00");
    let refusal = h.refused(strict("5.01"));
    assert_eq!(refusal, Reason::InsufficientFunds { available: amt("5"), requested: amt("5.01") });
    assert_eq!(h.balance(), amt("5"), "nothing applied");
    h.ok(strict("0.00000018"));
    assert_eq!(h.balance(), amt("4.99999982"), "per-token prices are exact");
}

#[test]
fn metered_debit_applies_past_zero_and_suspends() {
    let mut h = Harness::active("5.00");
    let mark = h.journal.len();
    let reply = h.ok(metered("7.25"));
    assert_eq!(reply.detail, Detail::Debited { amount: amt("7.25"), debt_added: amt("2.25") });
    assert_eq!(reply.balance, amt("-2.25"));
    assert_eq!(reply.status, Status::Suspended);
    assert!(h.event_names_since(mark).contains(&"suspended"));
    assert_eq!(h.state().debt, amt("2.25"));
}

#[test]
fn metered_usage_is_recorded_even_when_access_would_be_refused() {
    let mut h = Harness::open(Mode::Prepaid);
    h.ok(metered("1.00"));
    assert_eq!(h.balance(), amt("-1"));
    h.ok(Command::Freeze { reason: reason("fraud review") });
    h.ok(metered("1.00"));
    assert_eq!(h.balance(), amt("-2"));
}

#[test]
fn new_money_pays_debt_first() {
    let mut h = Harness::active("5.00");
    h.ok(metered("8.00"));
    let reply = h.ok(purchase_cmd("10.00"));
    assert_eq!(reply.detail, Detail::Credited { grant_id: Some(2), debt_paid: amt("3") });
    assert_eq!(reply.balance, amt("7"));
    assert_eq!(h.state().debt, Amount::ZERO);
    let view = h.view();
    assert_eq!(view.purchased, amt("7"));
    assert_eq!(view.lifetime_purchased, amt("15"));
}

#[test]
fn money_that_only_pays_debt_makes_no_grant() {
    let mut h = Harness::active("5.00");
    h.ok(metered("20.00"));
    let reply = h.ok(purchase_cmd("10.00"));
    assert_eq!(reply.detail, Detail::Credited { grant_id: None, debt_paid: amt("10") });
    assert_eq!(reply.status, Status::Suspended);
    assert!(h.state().grants.is_empty());
}

#[test]
fn debit_service_and_reference_show_in_history_and_usage() {
    let mut h = Harness::active("100.00");
    let cmd = |a: &str, service| Command::Debit {
        amount: amt(a),
        mode: DebitMode::Strict,
        service,
        reference: Some(text("req_1 llama-3-70b")),
    };
    h.ok(cmd("1.50", Service::ApiRequest));
    h.ok(cmd("2.50", Service::ApiRequest));
    h.advance(DAY_MS);
    h.ok(cmd("10", Service::Other));
    let id = hold_id(&h.ok(hold_cmd("20", Service::FineTuning)));
    h.ok(Command::Capture { hold_id: id, amount: amt("12") });
    let usage = usage_by_service(&h.journal, T0, T0 + 2 * DAY_MS);
    assert_eq!(
        usage.by_service,
        vec![(Service::ApiRequest, amt("4")), (Service::FineTuning, amt("12")), (Service::Other, amt("10"))]
    );
    assert_eq!(usage.total, amt("26"));
    let first_day = usage_by_service(&h.journal, T0, T0 + DAY_MS);
    assert_eq!(first_day.total, amt("4"));
    let debited = h.journal.iter().find(|r| r.event.name() == "debited").unwrap();
    match &debited.event {
        Event::Debited { service, reference, .. } => {
            assert_eq!(*service, Service::ApiRequest);
            assert_eq!(reference.as_ref().unwrap().as_str(), "req_1 llama-3-70b");
        }
        other => panic!("{other:?}"),
    }
}

// ---- Rule 5: auto-recharge.

fn succeed(h: &mut Harness) -> Reply {
    let attempt_id = h.attempt();
    h.ok(Command::RechargeSucceeded { attempt_id })
}

#[test]
fn threshold_above_balance_recharges_at_once_in_increments() {
    let mut h = Harness::active("10.00");
    let reply = h.ok(auto_cmd("25.00", "60.00"));
    assert_eq!(reply.detail, Detail::AutoRecharge { purchases_planned: 2 }, "(60-10)/25 = 2 purchases");
    assert_eq!(h.count("recharge_started"), 1, "one purchase at a time");
    succeed(&mut h);
    assert_eq!(h.count("recharge_started"), 2, "the next increment follows the first");
    let reply = succeed(&mut h);
    assert_eq!(reply.balance, amt("60"));
    assert_eq!(h.count("recharge_started"), 2, "the threshold is reached: no more");
    assert!(h.state().auto_recharge.in_flight.is_none());
    assert_eq!(h.view().lifetime_purchased, amt("60"));
}

#[test]
fn gap_not_a_multiple_of_the_amount_rounds_up() {
    let mut h = Harness::active("10.00");
    assert_eq!(h.ok(auto_cmd("25", "61")).detail, Detail::AutoRecharge { purchases_planned: 3 });
    for _ in 0..3 {
        succeed(&mut h);
    }
    assert_eq!(h.balance(), amt("85"));
    assert_eq!(h.count("recharge_started"), 3);
}

/// A node with auto-recharge off (`recharge.enabled = false`): it cannot
/// be turned on, and an account that had it on buys nothing (the low
/// balance is still told).
#[test]
fn with_auto_recharge_off_nothing_is_bought() {
    let mut h = Harness::active("30.00");
    h.ok(auto_cmd("25", "10"));
    h.cfg.auto_recharge_off = true;
    match h.refused(auto_cmd("25", "10")) {
        Reason::InvalidAutoRecharge(why) => assert!(why.contains("recharge.enabled = false"), "{why}"),
        other => panic!("{other:?}"),
    }
    let mark = h.journal.len();
    h.ok(strict("20.01"));
    assert_eq!(h.event_names_since(mark), ["debited", "low_balance"], "no recharge started");
    // Turning it off is still allowed.
    h.ok(Command::SetAutoRecharge { enabled: false, amount: None, threshold: amt("0") });
}

#[test]
fn recharge_starts_when_the_balance_falls_below_the_threshold() {
    let mut h = Harness::active("30.00");
    h.ok(auto_cmd("25", "10"));
    assert_eq!(h.count("recharge_started"), 0);
    h.ok(strict("20.00"));
    assert_eq!(h.count("recharge_started"), 0, "at the threshold is not below it");
    let mark = h.journal.len();
    h.ok(strict("0.01"));
    assert_eq!(h.event_names_since(mark), ["debited", "low_balance", "recharge_started"]);
    h.ok(strict("1.00"));
    assert_eq!(h.count("recharge_started"), 1, "at most one recharge in flight");
    succeed(&mut h);
    assert_eq!(h.balance(), amt("33.99"));
}

#[test]
fn default_recharge_amount_is_25() {
    let mut h = Harness::active("5.00");
    h.ok(Command::SetAutoRecharge { enabled: true, amount: None, threshold: amt("10") });
    assert_eq!(h.state().auto_recharge.amount, amt("25"));
    assert_eq!(h.state().auto_recharge.in_flight.as_ref().unwrap().amount, amt("25"));
}

#[test]
fn each_attempt_is_credited_exactly_once() {
    let mut h = Harness::active("5.00");
    h.ok(auto_cmd("25", "10"));
    let attempt_id = h.attempt();
    let key = h.fresh_key();
    let first = h.run_keyed(Some(key.clone()), Command::RechargeSucceeded { attempt_id });
    assert!(first.result.is_ok());
    let again = h.run_keyed(Some(key), Command::RechargeSucceeded { attempt_id });
    assert!(again.replayed && again.records.is_empty(), "same key: the first result, nothing applied");
    let unkeyed = h.run(Command::RechargeSucceeded { attempt_id });
    assert_eq!(unkeyed.unwrap_err().code(), "recharge_not_in_flight");
    assert_eq!(h.balance(), amt("30"));
    assert_eq!(h.count("recharge_succeeded"), 1);
}

#[test]
fn failed_recharge_is_retried_with_backoff_then_pauses() {
    let mut h = Harness::active("5.00");
    h.ok(auto_cmd("25", "10"));
    let fail = |h: &mut Harness| {
        let attempt_id = h.attempt();
        h.ok(Command::RechargeFailed { attempt_id, error: text("card_declined") })
    };
    fail(&mut h);
    assert!(h.state().auto_recharge.in_flight.is_none());
    assert_eq!(h.state().auto_recharge.retry_at_ms, Some(h.now + 60_000), "first retry after the base backoff");
    h.advance(59_999);
    h.ok(Command::Tick);
    assert!(h.state().auto_recharge.in_flight.is_none(), "not before the backoff");
    h.advance(1);
    h.ok(Command::Tick);
    let second = h.attempt();
    assert_ne!(second, 1, "a retry after a decline is a new attempt with a new key");
    fail(&mut h);
    assert_eq!(h.state().auto_recharge.retry_at_ms, Some(h.now + 120_000), "the backoff doubles");
    h.advance(120_000);
    h.ok(Command::Tick);
    let mark = h.journal.len();
    fail(&mut h);
    assert_eq!(h.event_names_since(mark), ["recharge_failed", "recharge_paused"]);
    assert_eq!(h.state().auto_recharge.paused, Some(PauseCause::Failures));
    h.advance(DAY_MS);
    h.ok(strict("1.00"));
    assert_eq!(h.count("recharge_started"), 3, "paused: no more attempts");
    // Setting auto-recharge again resumes it.
    h.ok(auto_cmd("25", "10"));
    assert_eq!(h.count("recharge_started"), 4);
}

#[test]
fn recharge_chain_is_bounded() {
    let mut h = Harness::active("5.00");
    h.cfg.recharge_chain_max = 3;
    assert_eq!(h.refused(auto_cmd("5", "20.01")).code(), "invalid_auto_recharge", "4 purchases > 3");
    h.ok(auto_cmd("5", "20"));
    // Usage outruns every recharge: the chain pauses instead of charging forever.
    for _ in 0..3 {
        h.ok(metered("100"));
        succeed(&mut h);
    }
    assert_eq!(h.state().auto_recharge.paused, Some(PauseCause::ChainLimit));
    assert_eq!(h.count("recharge_started"), 3);
}

#[test]
fn a_charge_that_went_through_is_credited_even_after_freeze_or_close() {
    let mut h = Harness::active("5.00");
    h.ok(auto_cmd("25", "10"));
    h.ok(Command::Close { reason: reason("customer left") });
    succeed(&mut h);
    assert_eq!(h.balance(), amt("30"));
    assert_eq!(h.count("recharge_started"), 1, "a closed account starts no recharge");
}

#[test]
fn disabled_auto_recharge_never_charges() {
    let mut h = Harness::active("50.00");
    h.ok(Command::SetAutoRecharge { enabled: false, amount: None, threshold: amt("40") });
    let mark = h.journal.len();
    h.ok(strict("20"));
    assert_eq!(h.event_names_since(mark), ["debited", "low_balance"]);
}

// ---- Rule 6: credits do not expire by default.

#[test]
fn credits_do_not_expire_by_default() {
    let mut h = Harness::active("5.00");
    h.ok(grant_cmd("5.00"));
    h.advance(10 * 365 * DAY_MS);
    assert_eq!(h.ok(Command::Tick).balance, amt("10"));
    assert!(h.state().grants.iter().all(|g| g.expires_at_ms.is_none()));
}

#[test]
fn an_expiring_grant_gives_notice_then_expires_exactly_once() {
    let mut h = Harness::active("5.00");
    let expires = h.now + 40 * DAY_MS;
    h.ok(Command::Grant { amount: amt("3"), expires_at_ms: Some(expires), priority: None, reference: None });
    h.advance(10 * DAY_MS - 1);
    h.ok(Command::Tick);
    assert_eq!(h.count("grant_expiring"), 0, "notice comes 30 days before");
    h.advance(1);
    h.ok(Command::Tick);
    assert_eq!(h.count("grant_expiring"), 1);
    h.ok(strict("1"));
    h.advance(30 * DAY_MS);
    let reply = h.ok(Command::Tick);
    assert_eq!(h.count("grant_expired"), 1);
    assert_eq!(reply.balance, amt("5"), "the expiring grant burned first; its remaining 2.00 expired");
    h.advance(DAY_MS);
    h.ok(Command::Tick);
    assert_eq!(h.count("grant_expired"), 1, "exactly once");
    assert_eq!(h.count("grant_expiring"), 1, "one notice");
}

#[test]
fn policy_expiry_needs_advance_notice() {
    let mut h = Harness::active("50.00");
    let notice = h.cfg.expiry_notice_ms;
    let too_soon = Command::SetGrantExpiry { grant_id: None, expires_at_ms: h.now + notice - 1 };
    assert_eq!(h.refused(too_soon).code(), "notice_too_short");
    let at = h.now + notice;
    assert_eq!(
        h.ok(Command::SetGrantExpiry { grant_id: None, expires_at_ms: at }).detail,
        Detail::ExpirySet { grants: 1 }
    );
    h.ok(Command::Tick);
    assert_eq!(h.count("grant_expiring"), 1, "notice goes out as soon as the policy is set");
    h.advance(notice);
    assert_eq!(h.ok(Command::Tick).balance, Amount::ZERO);
    assert_eq!(
        h.refused(Command::SetGrantExpiry { grant_id: Some(1), expires_at_ms: h.now + notice }).code(),
        "grant_not_found"
    );
}

// ---- Rule 7: contract accounts.

#[test]
fn contract_accounts_are_never_suspended_for_balance() {
    let mut h = Harness::open(Mode::Contract);
    assert!(h.run(Command::CheckAccess).is_ok(), "no purchase needed under contract");
    let reply = h.ok(strict("1000.00"));
    assert_eq!(reply.status, Status::Active);
    h.ok(metered("5000"));
    assert!(h.run(Command::CheckAccess).is_ok());
    assert_eq!(h.state().period_usage, amt("6000"));
    assert_eq!(h.balance(), Amount::ZERO, "usage never touches credits");
}

#[test]
fn contract_usage_is_invoiced_when_the_period_closes() {
    let mut h = Harness::open(Mode::Contract);
    h.ok(strict("120"));
    let id = hold_id(&h.ok(hold_cmd("50", Service::FineTuning)));
    h.ok(Command::Capture { hold_id: id, amount: amt("30") });
    let reply = h.ok(Command::ClosePeriod { due_at_ms: None });
    assert_eq!(reply.detail, Detail::Invoiced { invoice_id: Some(1), amount: amt("150") });
    assert_eq!(h.state().period_usage, Amount::ZERO);
    assert_eq!(h.view().invoiced_outstanding, amt("150"));
    let empty = h.ok(Command::ClosePeriod { due_at_ms: None });
    assert_eq!(empty.detail, Detail::Invoiced { invoice_id: None, amount: Amount::ZERO });
}

#[test]
fn contract_credit_limit_bounds_strict_usage_but_not_metered() {
    let mut h = Harness::unopened();
    h.ok(Command::Open {
        mode: Mode::Contract,
        currency: Currency::USD,
        past_due_suspends: None,
        credit_limit: Some(amt("100")),
    });
    h.ok(strict("60"));
    h.ok(hold_cmd("30", Service::DedicatedEndpoint));
    assert_eq!(h.refused(strict("10.01")).code(), "credit_limit_exceeded");
    h.ok(metered("50"));
    assert_eq!(h.state().period_usage, amt("110"));
}

#[test]
fn contract_accounts_take_no_credits() {
    let mut h = Harness::open(Mode::Contract);
    assert_eq!(h.refused(purchase_cmd("10")).code(), "not_for_contract");
    assert_eq!(h.refused(grant_cmd("10")).code(), "not_for_contract");
    assert_eq!(h.refused(auto_cmd("25", "10")).code(), "not_for_contract");
}

// ---- Rule 8: invoices and past-due balances are separate from credits.

#[test]
fn credits_bought_after_invoice_do_not_pay_it() {
    let mut h = Harness::active("5.00");
    h.ok(metered("25.00"));
    assert_eq!(h.state().debt, amt("20"));
    let reply = h.ok(Command::ClosePeriod { due_at_ms: None });
    assert_eq!(reply.detail, Detail::Invoiced { invoice_id: Some(1), amount: amt("20") });
    assert_eq!(reply.balance, Amount::ZERO, "the debt moved to the invoice");
    let reply = h.ok(purchase_cmd("50.00"));
    assert_eq!(reply.detail, Detail::Credited { grant_id: Some(2), debt_paid: Amount::ZERO });
    assert_eq!(reply.balance, amt("50"), "the credits stay credits");
    assert_eq!(h.view().invoiced_outstanding, amt("20"), "the invoice is still owed");
    let paid = h.ok(Command::PayInvoice { invoice_id: 1, amount: amt("20") });
    assert_eq!(paid.detail, Detail::InvoicePaid { invoice_id: 1, outstanding: Amount::ZERO });
    assert_eq!(paid.balance, amt("50"), "paying the invoice does not touch credits");
    assert_eq!(h.refused(Command::PayInvoice { invoice_id: 1, amount: amt("1") }).code(), "invoice_already_paid");
}

#[test]
fn past_due_invoice_suspends_access_whatever_the_credit_balance() {
    let mut h = Harness::active("5.00");
    h.ok(metered("10.00"));
    h.ok(Command::ClosePeriod { due_at_ms: Some(h.now + DAY_MS) });
    h.ok(purchase_cmd("100"));
    assert!(h.run(Command::CheckAccess).is_ok(), "not yet due");
    h.advance(DAY_MS);
    let mark = h.journal.len();
    assert_eq!(h.refused(Command::CheckAccess).code(), "past_due");
    assert_eq!(h.event_names_since(mark), ["invoice_past_due", "suspended"]);
    assert_eq!(h.refused(strict("1")).code(), "past_due");
    h.ok(Command::PayInvoice { invoice_id: 1, amount: amt("2") });
    assert_eq!(h.refused(strict("1")).code(), "past_due", "a partial payment leaves it past due");
    let mark = h.journal.len();
    h.ok(Command::PayInvoice { invoice_id: 1, amount: amt("3") });
    assert_eq!(h.event_names_since(mark), ["invoice_paid", "reactivated"]);
    h.ok(strict("1"));
}

#[test]
fn past_due_does_not_suspend_when_the_policy_says_not() {
    let mut h = Harness::unopened();
    h.ok(Command::Open {
        mode: Mode::Contract,
        currency: Currency::USD,
        past_due_suspends: Some(false),
        credit_limit: None,
    });
    h.ok(metered("10"));
    h.ok(Command::ClosePeriod { due_at_ms: None });
    h.advance(h.cfg.invoice_due_ms);
    h.ok(Command::Tick);
    assert_eq!(h.count("invoice_past_due"), 1);
    assert!(h.run(Command::CheckAccess).is_ok());
}

#[test]
fn contract_past_due_suspends_by_default() {
    let mut h = Harness::open(Mode::Contract);
    h.ok(metered("10"));
    h.ok(Command::ClosePeriod { due_at_ms: None });
    h.advance(h.cfg.invoice_due_ms);
    assert_eq!(h.refused(strict("1")).code(), "past_due");
    assert_eq!(h.state().status(), Status::Suspended);
}

// ---- Rule 9: free vs purchased always visible.

#[test]
fn balance_shows_free_and_purchased_and_lifetime_total() {
    let mut h = Harness::open(Mode::Prepaid);
    h.ok(grant_cmd("7.50"));
    h.ok(purchase_cmd("20"));
    let id = hold_id(&h.ok(hold_cmd("4", Service::FineTuning)));
    let view = h.view();
    assert_eq!((view.free, view.purchased, view.held), (amt("7.5"), amt("20"), amt("4")));
    assert_eq!((view.balance, view.available), (amt("27.5"), amt("23.5")));
    assert_eq!(view.lifetime_purchased, amt("20"));
    assert_eq!(view.status, Status::Active);
    assert_eq!(view.refusal, None);
    h.ok(Command::Release { hold_id: id });
    let json = serde_json::to_value(h.view()).unwrap();
    assert_eq!(json["free"], "7.50");
    assert_eq!(json["purchased"], "20.00");
    assert_eq!(json["lifetime_purchased"], "20.00");
}
