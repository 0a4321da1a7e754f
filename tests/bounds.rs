//! Every bound, at its limit and one past it.

mod common;

use common::*;
use prepaid::ledger::*;

#[test]
fn account_id_at_and_past_64_bytes() {
    assert!(AccountId::new(&"a".repeat(64)).is_ok());
    assert_eq!(AccountId::new(&"a".repeat(65)).unwrap_err().code(), "invalid_account_id");
}

#[test]
fn idempotency_key_at_and_past_128_bytes() {
    assert!(IdemKey::new(&"k".repeat(128)).is_ok());
    assert_eq!(IdemKey::new(&"k".repeat(129)).unwrap_err().code(), "invalid_idempotency_key");
}

#[test]
fn reference_at_and_past_256_bytes() {
    assert!(Text::new("reference", &"é".repeat(128)).is_ok(), "256 bytes of UTF-8");
    assert_eq!(Text::new("reference", &"x".repeat(257)).unwrap_err().code(), "invalid_text");
}

#[test]
fn amounts_at_and_past_12_decimal_places() {
    let mut h = Harness::active("5");
    assert!(h.run(strict("0.000000000001")).is_ok());
    assert_eq!(Reason::from(Amount::parse("0.0000000000001").unwrap_err()).code(), "invalid_amount");
}

#[test]
fn amounts_at_and_past_the_configured_maximum() {
    let mut h = Harness::active("5");
    h.cfg.max_amount = amt("1000");
    h.ok(purchase_cmd("1000"));
    assert_eq!(h.refused(purchase_cmd("1000.000000000001")).code(), "invalid_amount");
    h.ok(strict("1000"));
    assert_eq!(h.refused(metered("1000.01")).code(), "invalid_amount");
    assert_eq!(h.refused(hold_cmd("1000.01", Service::FineTuning)).code(), "invalid_amount");
    assert_eq!(h.refused(Command::Adjust { amount: amt("-1000.01"), reason: reason("x") }).code(), "invalid_amount");
    assert_eq!(h.refused(auto_cmd("1000.01", "10")).code(), "invalid_amount");
}

#[test]
fn balance_at_and_past_the_configured_maximum() {
    let mut h = Harness::active("5");
    h.cfg.max_balance = amt("100");
    h.ok(purchase_cmd("95"));
    assert_eq!(h.balance(), amt("100"));
    assert_eq!(h.refused(grant_cmd("0.000000000001")).code(), "balance_limit_exceeded");
    // Debt is bounded the same way: 100 of credits, then at most 100 of debt.
    h.ok(metered("200"));
    assert_eq!(h.refused(metered("0.01")).code(), "balance_limit_exceeded");
    assert_eq!(h.balance(), amt("-100"));
}

#[test]
fn grants_at_and_past_the_maximum_but_recharges_always_land() {
    let mut h = Harness::active("5");
    h.cfg.max_grants = 3;
    h.ok(grant_cmd("1"));
    h.ok(grant_cmd("1"));
    assert_eq!(h.state().grants.len(), 3);
    assert_eq!(h.refused(grant_cmd("1")).code(), "too_many_grants");
    assert_eq!(h.refused(purchase_cmd("5")).code(), "too_many_grants");
    h.ok(auto_cmd("25", "10"));
    let attempt_id = h.attempt();
    h.ok(Command::RechargeSucceeded { attempt_id });
    assert_eq!(h.state().grants.len(), 4, "money already charged is never refused");
}

#[test]
fn holds_at_and_past_the_maximum() {
    let mut h = Harness::active("100");
    h.cfg.max_holds = 2;
    h.ok(hold_cmd("1", Service::FineTuning));
    h.ok(hold_cmd("1", Service::Evaluation));
    assert_eq!(h.refused(hold_cmd("1", Service::DedicatedEndpoint)).code(), "too_many_holds");
    h.ok(Command::Release { hold_id: 1 });
    h.ok(hold_cmd("1", Service::DedicatedEndpoint));
}

#[test]
fn open_invoices_at_and_past_the_maximum() {
    let mut h = Harness::open(Mode::Contract);
    h.cfg.max_open_invoices = 2;
    for _ in 0..2 {
        h.ok(metered("1"));
        h.ok(Command::ClosePeriod { due_at_ms: None });
    }
    h.ok(metered("1"));
    assert_eq!(h.refused(Command::ClosePeriod { due_at_ms: None }).code(), "too_many_invoices");
    h.ok(Command::PayInvoice { invoice_id: 1, amount: amt("1") });
    h.ok(Command::ClosePeriod { due_at_ms: None });
}

#[test]
fn hold_timeout_at_and_past_the_maximum() {
    let mut h = Harness::active("100");
    let max = h.cfg.hold_timeout_max_ms;
    let hold =
        |t| Command::Hold { amount: amt("1"), service: Service::FineTuning, reference: None, timeout_ms: Some(t) };
    h.ok(hold(max));
    h.ok(hold(1));
    assert_eq!(h.refused(hold(max + 1)).code(), "invalid_timeout");
    assert_eq!(h.refused(hold(0)).code(), "invalid_timeout");
}

#[test]
fn ended_holds_are_remembered_up_to_the_bound() {
    let mut h = Harness::active("100");
    for _ in 0..=state::ENDED_HOLDS_KEPT {
        let id = hold_id(&h.ok(hold_cmd("1", Service::ApiRequest)));
        h.ok(Command::Release { hold_id: id });
    }
    assert_eq!(h.state().ended_holds.len(), state::ENDED_HOLDS_KEPT);
    assert_eq!(h.refused(Command::Release { hold_id: 1 }).code(), "hold_not_found", "the oldest is forgotten");
    assert_eq!(h.refused(Command::Release { hold_id: 2 }).code(), "hold_already_released");
}

#[test]
fn amount_text_at_and_past_64_characters() {
    let sixty_four = format!("{}.{}", "1".repeat(51), "1".repeat(12));
    assert_eq!(sixty_four.len(), 64);
    assert!(Amount::parse(&sixty_four).is_err(), "too large for i128, refused cleanly");
    assert!(Amount::parse(&format!("{}.5", "0".repeat(62))).is_ok());
    assert_eq!(Amount::parse(&"0".repeat(65)), Err(AmountError::TooLong));
}
