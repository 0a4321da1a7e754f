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

fn scenarios() -> Vec<(&'static str, Reason)> {
    let mut table: Vec<(&'static str, Reason)> = Vec::new();
    let mut row = |name, reason| table.push((name, reason));

    // Validation.
    row(
        "account id with a space",
        AccountId::new("org 1").unwrap_err(),
    );
    row(
        "amount with 13 decimals",
        Amount::parse("0.0000000000001")
            .map_err(Reason::from)
            .unwrap_err(),
    );
    row("negative debit", Harness::active("5").refused(strict("-1")));
    row("empty key", IdemKey::new("").unwrap_err());
    row(
        "debit without key",
        Harness::active("5")
            .run_keyed(None, strict("1"))
            .result
            .unwrap_err(),
    );
    row(
        "reference with a newline",
        Text::new("reference", "a\nb").unwrap_err(),
    );
    row("lowercase currency", Currency::new("usd").unwrap_err());
    row(
        "zero hold timeout",
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
        h.refused(Command::Grant {
            amount: amt("1"),
            expires_at_ms: Some(past),
            priority: None,
            reference: None,
        }),
    );
    let mut h = Harness::active("5");
    let soon = h.now + 1;
    row(
        "policy expiry tomorrow",
        h.refused(Command::SetGrantExpiry {
            grant_id: None,
            expires_at_ms: soon,
        }),
    );
    let mut h = Harness::active("5");
    h.cfg.recharge_chain_max = 1;
    row("threshold 3 purchases away", h.refused(auto_cmd("5", "20")));
    row(
        "purchase of 4.99",
        Harness::open(Mode::Prepaid).refused(purchase_cmd("4.99")),
    );
    row(
        "history page of 0",
        decide::check_page(0, &LedgerConfig::default()).unwrap_err(),
    );

    // Idempotency.
    let mut h = Harness::active("5");
    let key = IdemKey::new("k-1").unwrap();
    h.run_keyed(Some(key.clone()), strict("1")).result.unwrap();
    row(
        "key reused for another amount",
        h.run_keyed(Some(key), strict("2")).result.unwrap_err(),
    );

    // The account and its state.
    row(
        "balance of an unknown account",
        Harness::unopened().refused(Command::Balance),
    );
    row(
        "reopen as contract",
        Harness::open(Mode::Prepaid).refused(open_cmd(Mode::Contract)),
    );
    let mut h = Harness::active("5");
    h.ok(Command::Close {
        reason: reason("bye"),
    });
    row("debit a closed account", h.refused(strict("1")));
    let mut h = Harness::active("5");
    h.ok(Command::Freeze {
        reason: reason("review"),
    });
    row("debit a frozen account", h.refused(strict("1")));
    let mut h = Harness::open(Mode::Prepaid);
    h.ok(grant_cmd("100"));
    row("debit with free credits only", h.refused(strict("1")));
    let mut h = Harness::active("5");
    h.ok(metered("6"));
    h.ok(Command::ClosePeriod { due_at_ms: None });
    h.ok(purchase_cmd("50"));
    h.advance(h.cfg.invoice_due_ms);
    row("debit with a past-due invoice", h.refused(strict("1")));
    let mut h = Harness::active("5");
    h.ok(strict("5"));
    row("debit at zero balance", h.refused(strict("1")));
    row(
        "purchase on a contract account",
        Harness::open(Mode::Contract).refused(purchase_cmd("5")),
    );
    let mut h = small_limits();
    row("second grant", h.refused(grant_cmd("1")));
    let mut h = small_limits();
    h.ok(hold_cmd("1", Service::FineTuning));
    row("second hold", h.refused(hold_cmd("1", Service::FineTuning)));
    let mut h = small_limits();
    h.ok(metered("20"));
    h.ok(Command::ClosePeriod { due_at_ms: None });
    h.ok(metered("1"));
    row(
        "second open invoice",
        h.refused(Command::ClosePeriod { due_at_ms: None }),
    );
    let mut h = Harness::active("5");
    h.cfg.max_balance = amt("100");
    row(
        "purchase past max balance",
        h.refused(purchase_cmd("95.01")),
    );
    row(
        "capture an unknown hold",
        Harness::active("5").refused(Command::Capture {
            hold_id: 7,
            amount: amt("1"),
        }),
    );
    let mut h = Harness::active("5");
    h.ok(Command::Hold {
        amount: amt("1"),
        service: Service::FineTuning,
        reference: None,
        timeout_ms: Some(10),
    });
    h.advance(10);
    row(
        "capture an expired hold",
        h.refused(Command::Capture {
            hold_id: 1,
            amount: amt("1"),
        }),
    );
    let mut h = Harness::active("5");
    h.ok(hold_cmd("1", Service::FineTuning));
    h.ok(Command::Capture {
        hold_id: 1,
        amount: amt("1"),
    });
    row(
        "capture twice",
        h.refused(Command::Capture {
            hold_id: 1,
            amount: amt("1"),
        }),
    );
    let mut h = Harness::active("5");
    h.ok(hold_cmd("1", Service::FineTuning));
    h.ok(Command::Release { hold_id: 1 });
    row(
        "capture after release",
        h.refused(Command::Capture {
            hold_id: 1,
            amount: amt("1"),
        }),
    );
    let mut h = Harness::active("5");
    let far = h.now + 400 * DAY_MS;
    row(
        "expire an unknown grant",
        h.refused(Command::SetGrantExpiry {
            grant_id: Some(9),
            expires_at_ms: far,
        }),
    );
    row(
        "pay an unknown invoice",
        Harness::active("5").refused(Command::PayInvoice {
            invoice_id: 1,
            amount: amt("1"),
        }),
    );
    let mut h = Harness::active("5");
    h.ok(metered("6"));
    h.ok(Command::ClosePeriod { due_at_ms: None });
    h.ok(Command::PayInvoice {
        invoice_id: 1,
        amount: amt("1"),
    });
    row(
        "pay a paid invoice",
        h.refused(Command::PayInvoice {
            invoice_id: 1,
            amount: amt("1"),
        }),
    );
    let mut h = Harness::active("5");
    h.ok(metered("6"));
    h.ok(Command::ClosePeriod { due_at_ms: None });
    row(
        "overpay an invoice",
        h.refused(Command::PayInvoice {
            invoice_id: 1,
            amount: amt("1.01"),
        }),
    );
    row(
        "succeed an unknown attempt",
        Harness::active("5").refused(Command::RechargeSucceeded { attempt_id: 1 }),
    );

    // Funds.
    row(
        "debit past the available balance",
        Harness::active("5").refused(strict("5.01")),
    );
    let mut h = Harness::unopened();
    h.ok(Command::Open {
        mode: Mode::Contract,
        currency: Currency::USD,
        past_due_suspends: None,
        credit_limit: Some(amt("10")),
    });
    row("debit past the credit limit", h.refused(strict("10.01")));
    table
}

#[test]
fn every_reason_code_is_reachable() {
    let table = scenarios();
    for (name, reason) in &table {
        assert!(!reason.to_string().is_empty(), "{name}: a sentence");
        assert!(
            Reason::ALL_CODES.contains(&reason.code()),
            "{name}: {} is not listed",
            reason.code()
        );
    }
    let reached: BTreeSet<&str> = table.iter().map(|(_, r)| r.code()).collect();
    let all: BTreeSet<&str> = Reason::ALL_CODES.iter().copied().collect();
    let missing: Vec<_> = all.difference(&reached).collect();
    assert!(missing.is_empty(), "codes no scenario reaches: {missing:?}");
}

#[test]
fn each_scenario_gives_the_code_it_is_named_for() {
    let expected = [
        "invalid_account_id",
        "invalid_amount",
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
    let got: Vec<_> = scenarios()
        .iter()
        .map(|(name, r)| (*name, r.code()))
        .collect();
    assert_eq!(got.len(), expected.len());
    for ((name, code), want) in got.iter().zip(expected) {
        assert_eq!(*code, want, "{name}");
    }
}

#[test]
fn docs_errors_lists_exactly_the_codes() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/errors.md")).unwrap();
    let documented: BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let in_code: BTreeSet<&str> = Reason::ALL_CODES.iter().copied().collect();
    assert_eq!(documented, in_code);
}
