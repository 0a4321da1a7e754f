//! Every refusal code is reachable, and documented: a table of scenarios,
//! one per code, and a check that docs/errors.md lists exactly the codes.

mod common;

use std::collections::BTreeSet;

use common::*;
use prepaid::ledger::*;

fn small_limits() -> Harness {
    let mut h = Harness::active("10");
    h.cfg.max_grants = 1;
    h.cfg.max_holds = 1;
    h.cfg.max_open_invoices = 1;
    h
}

/// (scenario, the code it must give, the reason it gave)
fn scenarios() -> Vec<(&'static str, &'static str, Reason)> {
    let mut table = Vec::new();
    let mut row = |name: &'static str, code: &'static str, reason: Reason| table.push((name, code, reason));

    // Validation.
    row("account id with a space", "invalid_account_id", AccountId::new("org 1").unwrap_err());
    row(
        "amount with 13 decimals",
        "invalid_amount",
        Amount::parse("0.0000000000001").map_err(Reason::from).unwrap_err(),
    );
    row("negative debit", "invalid_amount", Harness::active("5").refused(strict("-1")));
    row("empty key", "invalid_idempotency_key", IdemKey::new("").unwrap_err());
    row(
        "debit without key",
        "missing_idempotency_key",
        Harness::active("5").run_keyed(None, strict("1")).result.unwrap_err(),
    );
    row("reference with a newline", "invalid_text", Text::new("reference", "a\nb").unwrap_err());
    row("lowercase currency", "invalid_currency", Currency::new("usd").unwrap_err());
    row(
        "zero hold timeout",
        "invalid_timeout",
        Harness::active("5").refused(Command::Hold {
            amount: amt("1"),
            service: Service::FineTuning,
            reference: None,
            timeout_ms: Some(0),
        }),
    );
    let mut h = Harness::active("5");
    let past = h.now;
    row(
        "grant expiring now",
        "invalid_expiry",
        h.refused(Command::Grant { amount: amt("1"), expires_at_ms: Some(past), priority: None, reference: None }),
    );
    let mut h = Harness::active("5");
    let soon = h.now + 1;
    row(
        "policy expiry tomorrow",
        "notice_too_short",
        h.refused(Command::SetGrantExpiry { grant_id: None, expires_at_ms: soon }),
    );
    let mut h = Harness::active("5");
    h.cfg.recharge_chain_max = 1;
    row("threshold 3 purchases away", "invalid_auto_recharge", h.refused(auto_cmd("5", "20")));
    row("purchase of 4.99", "below_minimum_purchase", Harness::open(Mode::Prepaid).refused(purchase_cmd("4.99")));
    row("history page of 0", "invalid_page", decide::check_page(0, &LedgerConfig::default()).unwrap_err());

    // Idempotency.
    let mut h = Harness::active("5");
    let key = IdemKey::new("k-1").unwrap();
    h.run_keyed(Some(key.clone()), strict("1")).result.unwrap();
    row(
        "key reused for another amount",
        "idempotency_conflict",
        h.run_keyed(Some(key), strict("2")).result.unwrap_err(),
    );

    // The account and its state.
    row("balance of an unknown account", "unknown_account", Harness::unopened().refused(Command::Balance));
    row("reopen as contract", "account_exists", Harness::open(Mode::Prepaid).refused(open_cmd(Mode::Contract)));
    let mut h = Harness::active("5");
    h.ok(Command::Close { reason: reason("bye") });
    row("debit a closed account", "closed", h.refused(strict("1")));
    let mut h = Harness::active("5");
    h.ok(Command::Freeze { reason: reason("review") });
    row("debit a frozen account", "frozen", h.refused(strict("1")));
    let mut h = Harness::open(Mode::Prepaid);
    h.ok(grant_cmd("100"));
    row("debit with free credits only", "not_activated", h.refused(strict("1")));
    let mut h = Harness::active("5");
    h.ok(metered("6"));
    h.ok(Command::ClosePeriod { due_at_ms: None });
    h.ok(purchase_cmd("50"));
    h.advance(h.cfg.invoice_due_ms);
    row("debit with a past-due invoice", "past_due", h.refused(strict("1")));
    let mut h = Harness::active("5");
    h.ok(strict("5"));
    row("debit at zero balance", "suspended", h.refused(strict("1")));
    row("purchase on a contract account", "not_for_contract", Harness::open(Mode::Contract).refused(purchase_cmd("5")));
    let mut h = small_limits();
    row("second grant", "too_many_grants", h.refused(grant_cmd("1")));
    let mut h = small_limits();
    h.ok(hold_cmd("1", Service::FineTuning));
    row("second hold", "too_many_holds", h.refused(hold_cmd("1", Service::FineTuning)));
    let mut h = small_limits();
    h.ok(metered("20"));
    h.ok(Command::ClosePeriod { due_at_ms: None });
    h.ok(metered("1"));
    row("second open invoice", "too_many_invoices", h.refused(Command::ClosePeriod { due_at_ms: None }));
    let mut h = Harness::active("5");
    h.cfg.max_balance = amt("100");
    row("purchase past max balance", "balance_limit_exceeded", h.refused(purchase_cmd("95.01")));
    row(
        "capture an unknown hold",
        "hold_not_found",
        Harness::active("5").refused(Command::Capture { hold_id: 7, amount: amt("1") }),
    );
    let mut h = Harness::active("5");
    h.ok(Command::Hold { amount: amt("1"), service: Service::FineTuning, reference: None, timeout_ms: Some(10) });
    h.advance(10);
    row("capture an expired hold", "hold_expired", h.refused(Command::Capture { hold_id: 1, amount: amt("1") }));
    let mut h = Harness::active("5");
    h.ok(hold_cmd("1", Service::FineTuning));
    h.ok(Command::Capture { hold_id: 1, amount: amt("1") });
    row("capture twice", "hold_already_captured", h.refused(Command::Capture { hold_id: 1, amount: amt("1") }));
    let mut h = Harness::active("5");
    h.ok(hold_cmd("1", Service::FineTuning));
    h.ok(Command::Release { hold_id: 1 });
    row("capture after release", "hold_already_released", h.refused(Command::Capture { hold_id: 1, amount: amt("1") }));
    let mut h = Harness::active("5");
    let far = h.now + 400 * DAY_MS;
    row(
        "expire an unknown grant",
        "grant_not_found",
        h.refused(Command::SetGrantExpiry { grant_id: Some(9), expires_at_ms: far }),
    );
    row(
        "pay an unknown invoice",
        "invoice_not_found",
        Harness::active("5").refused(Command::PayInvoice { invoice_id: 1, amount: amt("1") }),
    );
    let mut h = Harness::active("5");
    h.ok(metered("6"));
    h.ok(Command::ClosePeriod { due_at_ms: None });
    h.ok(Command::PayInvoice { invoice_id: 1, amount: amt("1") });
    row(
        "pay a paid invoice",
        "invoice_already_paid",
        h.refused(Command::PayInvoice { invoice_id: 1, amount: amt("1") }),
    );
    let mut h = Harness::active("5");
    h.ok(metered("6"));
    h.ok(Command::ClosePeriod { due_at_ms: None });
    row(
        "overpay an invoice",
        "payment_exceeds_invoice",
        h.refused(Command::PayInvoice { invoice_id: 1, amount: amt("1.01") }),
    );
    row(
        "succeed an unknown attempt",
        "recharge_not_in_flight",
        Harness::active("5").refused(Command::RechargeSucceeded { attempt_id: 1 }),
    );

    // Funds.
    row("debit past the available balance", "insufficient_funds", Harness::active("5").refused(strict("5.01")));
    let mut h = Harness::unopened();
    h.ok(Command::Open {
        mode: Mode::Contract,
        currency: Currency::USD,
        past_due_suspends: None,
        credit_limit: Some(amt("10")),
    });
    row("debit past the credit limit", "credit_limit_exceeded", h.refused(strict("10.01")));
    table
}

#[test]
fn every_scenario_gives_its_code_with_a_sentence() {
    for (name, code, reason) in scenarios() {
        assert_eq!(reason.code(), code, "{name}");
        assert!(!reason.to_string().is_empty(), "{name}: a sentence");
    }
}

#[test]
fn every_reason_code_is_reached_and_listed() {
    let reached: BTreeSet<&str> = scenarios().iter().map(|(_, code, _)| *code).collect();
    let listed: BTreeSet<&str> = Reason::ALL_CODES.iter().copied().collect();
    assert_eq!(reached, listed, "a code no scenario reaches, or a reached code ALL_CODES does not list");
    assert_eq!(listed.len(), Reason::ALL_CODES.len(), "ALL_CODES has no duplicates");
}

/// The codes in the table of one section of docs/errors.md.
fn documented(section: &str) -> BTreeSet<String> {
    let doc = std::fs::read_to_string(common::repo_file("docs/errors.md")).unwrap();
    let start = doc.find(&format!("## {section}\n")).unwrap_or_else(|| panic!("no section {section}"));
    let body = &doc[start + section.len() + 4..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    body.lines().filter_map(|l| l.strip_prefix("| `")).filter_map(|l| l.split('`').next()).map(str::to_string).collect()
}

#[test]
fn docs_errors_lists_exactly_the_codes() {
    let ledger: BTreeSet<String> = Reason::ALL_CODES.iter().map(|c| c.to_string()).collect();
    assert_eq!(documented("Codes"), ledger);
    let node: BTreeSet<String> = prepaid::Error::NODE_CODES.iter().map(|c| c.to_string()).collect();
    assert_eq!(documented("Node codes"), node);
}
