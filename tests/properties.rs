//! Random command sequences against a small reference model.
//!
//! The model is plain numbers and maps, written from the SPEC without looking
//! at the ledger's code. For every generated sequence it predicts which
//! requests are accepted, the balance and the status after each one, and the
//! harness checks after every request that the invariants hold and that
//! replaying the journal gives the same state. Properties:
//! - conservation: the ledger sum equals the balance, which equals the model's;
//! - no double spend: a strict debit or hold is accepted only when the model's
//!   available balance covers it;
//! - idempotent replays: a resent request gets the first reply and writes
//!   nothing; a different request under a used key is a conflict;
//! - no recharge attempt is credited twice;
//! - replay(events) == state.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use prepaid::ledger::*;
use proptest::prelude::*;

const UNIT: i128 = 1_000_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    Purchase(i128),
    Grant(i128),
    Strict(i128),
    Metered(i128),
    Hold(i128, u64),
    Capture(usize, i128),
    Release(usize),
    SetAuto(bool, i128, i128),
    RechargeOk,
    RechargeFail,
    Freeze,
    Unfreeze,
    Adjust(i128),
    ClosePeriod,
    PayInvoice(usize, i128),
    Advance(u64),
    ResendLast,
    ConflictLast,
}

/// Money in steps of 10⁻⁸, so sub-cent prices are exercised.
fn money(max_dollars: i128) -> impl Strategy<Value = i128> {
    (1..=max_dollars * 100_000_000).prop_map(|n| n * 10_000)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (4 * UNIT..=60 * UNIT).prop_map(|u| Op::Purchase(u - u % (UNIT / 100))),
        1 => money(20).prop_map(Op::Grant),
        6 => money(15).prop_map(Op::Strict),
        3 => money(15).prop_map(Op::Metered),
        2 => (money(30), 1u64..300_000).prop_map(|(a, t)| Op::Hold(a, t)),
        2 => (0usize..8, money(40)).prop_map(|(i, a)| Op::Capture(i, a)),
        1 => (0usize..8).prop_map(Op::Release),
        1 => (any::<bool>(), 5i128..30, 0i128..60).prop_map(|(e, a, t)| Op::SetAuto(e, a * UNIT, t * UNIT)),
        2 => Just(Op::RechargeOk),
        1 => Just(Op::RechargeFail),
        1 => Just(Op::Freeze),
        1 => Just(Op::Unfreeze),
        1 => (-10_000i128..10_000).prop_filter("nonzero", |c| *c != 0).prop_map(|c| Op::Adjust(c * UNIT / 100)),
        1 => Just(Op::ClosePeriod),
        1 => (0usize..4, money(30)).prop_map(|(i, a)| Op::PayInvoice(i, a)),
        2 => (0u64..400_000).prop_map(Op::Advance),
        2 => Just(Op::ResendLast),
        1 => Just(Op::ConflictLast),
    ]
}

#[derive(Default)]
struct Model {
    balance: i128,
    holds: BTreeMap<u64, (i128, u64)>,
    ended: BTreeMap<u64, &'static str>,
    activated: bool,
    frozen: bool,
    /// invoice id -> (outstanding, due_at_ms)
    invoices: BTreeMap<u64, (i128, u64)>,
    next_invoice: u64,
    credited_attempts: BTreeSet<u64>,
    /// The time of the last request that reached the account: deadlines are
    /// settled by requests, so a request refused by validation settles none.
    settled_at: u64,
}

impl Model {
    fn held(&self) -> i128 {
        self.holds.values().map(|(a, _)| a).sum()
    }
    fn past_due(&self) -> bool {
        self.invoices.values().any(|(_, due)| *due <= self.settled_at)
    }
    fn access(&self) -> Result<(), &'static str> {
        if self.frozen {
            Err("frozen")
        } else if !self.activated {
            Err("not_activated")
        } else if self.past_due() {
            Err("past_due")
        } else if self.balance <= 0 {
            Err("suspended")
        } else {
            Ok(())
        }
    }
    fn status(&self) -> Status {
        match self.access() {
            Ok(()) => Status::Active,
            Err("frozen") => Status::Frozen,
            Err("not_activated") => Status::Inactive,
            Err(_) => Status::Suspended,
        }
    }
    fn settle(&mut self, now: u64) {
        self.settled_at = now;
        let expired: Vec<u64> = self.holds.iter().filter(|(_, (_, at))| *at <= now).map(|(id, _)| *id).collect();
        for id in expired {
            self.holds.remove(&id);
            self.ended.insert(id, "hold_expired");
        }
    }
    fn hold_refusal(&self, id: u64) -> &'static str {
        self.ended.get(&id).copied().unwrap_or("hold_not_found")
    }
}

fn a(units: i128) -> Amount {
    Amount::from_units(units)
}

fn run_sequence(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::open(Mode::Prepaid);
    h.cfg.invoice_due_ms = 500_000;
    let mut m = Model::default();
    let mut last: Option<(IdemKey, Command, Reply)> = None;
    let mut hold_ids: Vec<u64> = Vec::new();

    for op in ops {
        // Deadlines are settled by requests that reach the account: not by
        // the clock alone, not by a refusal in validation, not by a resend
        // answered from the idempotency table.
        let reaches_account = match op {
            Op::Advance(_) | Op::ResendLast | Op::ConflictLast => false,
            Op::RechargeOk | Op::RechargeFail => h.state().auto_recharge.in_flight.is_some(),
            Op::Purchase(u) => *u >= 5 * UNIT,
            _ => true,
        };
        if reaches_account {
            m.settle(h.now);
        }
        let expect: Result<(), &str>;
        let cmd = match op {
            Op::Purchase(u) => {
                expect = if *u >= 5 * UNIT { Ok(()) } else { Err("below_minimum_purchase") };
                Command::Purchase { amount: a(*u), reference: None }
            }
            Op::Grant(u) => {
                expect = Ok(());
                Command::Grant { amount: a(*u), expires_at_ms: None, priority: None, reference: None }
            }
            Op::Strict(u) => {
                expect = m
                    .access()
                    .and_then(|()| if m.balance - m.held() >= *u { Ok(()) } else { Err("insufficient_funds") });
                Command::Debit { amount: a(*u), mode: DebitMode::Strict, service: Service::ApiRequest, reference: None }
            }
            Op::Metered(u) => {
                expect = Ok(());
                Command::Debit {
                    amount: a(*u),
                    mode: DebitMode::Metered,
                    service: Service::ApiRequest,
                    reference: None,
                }
            }
            Op::Hold(u, t) => {
                expect = m
                    .access()
                    .and_then(|()| if m.balance - m.held() >= *u { Ok(()) } else { Err("insufficient_funds") });
                Command::Hold { amount: a(*u), service: Service::FineTuning, reference: None, timeout_ms: Some(*t) }
            }
            Op::Capture(i, u) => {
                let id = hold_ids.get(*i).copied().unwrap_or(1000 + *i as u64);
                expect = if m.holds.contains_key(&id) { Ok(()) } else { Err(m.hold_refusal(id)) };
                Command::Capture { hold_id: id, amount: a(*u) }
            }
            Op::Release(i) => {
                let id = hold_ids.get(*i).copied().unwrap_or(1000 + *i as u64);
                expect = if m.holds.contains_key(&id) { Ok(()) } else { Err(m.hold_refusal(id)) };
                Command::Release { hold_id: id }
            }
            Op::SetAuto(enabled, amount, threshold) => {
                let planned = decide::purchases_needed(a(m.balance), a(*threshold), a(*amount));
                expect =
                    if *enabled && planned > h.cfg.recharge_chain_max { Err("invalid_auto_recharge") } else { Ok(()) };
                Command::SetAutoRecharge { enabled: *enabled, amount: Some(a(*amount)), threshold: a(*threshold) }
            }
            Op::RechargeOk | Op::RechargeFail => {
                let Some(attempt) = h.state().auto_recharge.in_flight.clone() else {
                    continue;
                };
                expect = Ok(());
                if matches!(op, Op::RechargeOk) {
                    prop_assert!(m.credited_attempts.insert(attempt.id), "attempt {} credited twice", attempt.id);
                    Command::RechargeSucceeded { attempt_id: attempt.id }
                } else {
                    Command::RechargeFailed { attempt_id: attempt.id, error: text("card_declined") }
                }
            }
            Op::Freeze => {
                expect = Ok(());
                Command::Freeze { reason: reason("review") }
            }
            Op::Unfreeze => {
                expect = Ok(());
                Command::Unfreeze { reason: reason("cleared") }
            }
            Op::Adjust(u) => {
                expect = Ok(());
                Command::Adjust { amount: a(*u), reason: reason("correction") }
            }
            Op::ClosePeriod => {
                expect = Ok(());
                Command::ClosePeriod { due_at_ms: None }
            }
            Op::PayInvoice(i, u) => {
                let id = *i as u64 + 1;
                expect = match m.invoices.get(&id) {
                    Some((outstanding, _)) if *u <= *outstanding => Ok(()),
                    Some(_) => Err("payment_exceeds_invoice"),
                    None if id <= m.next_invoice => Err("invoice_already_paid"),
                    None => Err("invoice_not_found"),
                };
                Command::PayInvoice { invoice_id: id, amount: a(*u) }
            }
            Op::Advance(ms) => {
                h.advance(*ms);
                continue;
            }
            Op::ResendLast => {
                let Some((key, cmd, reply)) = last.clone() else {
                    continue;
                };
                let before = h.journal.len();
                let outcome = h.run_keyed(Some(key), cmd);
                prop_assert!(outcome.replayed);
                prop_assert_eq!(outcome.result, Ok(Reply { replayed: true, ..reply }));
                prop_assert_eq!(h.journal.len(), before, "a resend writes nothing");
                continue;
            }
            Op::ConflictLast => {
                let Some((key, _, _)) = last.clone() else {
                    continue;
                };
                let other =
                    Command::Debit { amount: a(1), mode: DebitMode::Metered, service: Service::Other, reference: None };
                let outcome = h.run_keyed(Some(key), other);
                prop_assert_eq!(outcome.result.map_err(|r| r.code()), Err("idempotency_conflict"));
                continue;
            }
        };

        let key = h.fresh_key();
        let outcome = h.run_keyed(Some(key.clone()), cmd.clone());
        let got = outcome.result.as_ref().map(|_| ()).map_err(|r| r.code());
        prop_assert_eq!(got, expect, "{:?}", op);

        // The model applies what was accepted.
        if let Ok(reply) = &outcome.result {
            match op {
                Op::Purchase(u) => {
                    m.balance += u;
                    m.activated = true;
                }
                Op::Grant(u) | Op::Adjust(u) => m.balance += u,
                Op::Strict(u) | Op::Metered(u) => m.balance -= u,
                Op::Hold(u, t) => {
                    let id = hold_id(reply);
                    m.holds.insert(id, (*u, h.now + t));
                    hold_ids.push(id);
                }
                Op::Capture(_, u) => {
                    let Command::Capture { hold_id, .. } = cmd else { unreachable!() };
                    m.holds.remove(&hold_id);
                    m.ended.insert(hold_id, "hold_already_captured");
                    m.balance -= u;
                }
                Op::Release(_) => {
                    let Command::Release { hold_id } = cmd else { unreachable!() };
                    m.holds.remove(&hold_id);
                    m.ended.insert(hold_id, "hold_already_released");
                }
                Op::RechargeOk => {
                    let credited = outcome.records.iter().find_map(|r| match r.event {
                        Event::RechargeSucceeded { amount, .. } => Some(amount.units()),
                        _ => None,
                    });
                    m.balance += credited.expect("a recharge_succeeded record");
                    m.activated = true;
                }
                Op::Freeze => m.frozen = true,
                Op::Unfreeze => m.frozen = false,
                Op::ClosePeriod if m.balance < 0 => {
                    m.next_invoice += 1;
                    m.invoices.insert(m.next_invoice, (-m.balance, h.now + h.cfg.invoice_due_ms));
                    m.balance = 0;
                }
                Op::PayInvoice(i, u) => {
                    let id = *i as u64 + 1;
                    let entry = m.invoices.get_mut(&id).unwrap();
                    entry.0 -= u;
                    if entry.0 == 0 {
                        m.invoices.remove(&id);
                    }
                }
                _ => {}
            }
            last = Some((key, cmd, reply.clone()));
        }
        prop_assert_eq!(h.balance().units(), m.balance, "balance after {:?}", op);
        prop_assert_eq!(h.state().held().units(), m.held(), "held after {:?}", op);
        prop_assert_eq!(h.state().status(), m.status(), "status after {:?}", op);
        prop_assert!(h.state().auto_recharge.in_flight.iter().count() <= 1);
    }
    Ok(())
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=100000 for a long run.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn random_sequences_agree_with_the_model(ops in prop::collection::vec(op(), 1..80)) {
        run_sequence(&ops)?;
    }
}

#[test]
fn a_long_fixed_sequence_agrees_with_the_model() {
    use Op::*;
    let u = UNIT;
    let ops = [
        Grant(100 * u),
        Strict(u),
        Purchase(5 * u),
        Hold(20 * u, 1000),
        Strict(80 * u),
        Strict(6 * u),
        SetAuto(true, 25 * u, 50 * u),
        RechargeFail,
        Advance(60_000),
        RechargeOk,
        Capture(0, 30 * u),
        Metered(200 * u),
        ClosePeriod,
        Purchase(10 * u),
        Advance(600_000),
        Strict(u),
        PayInvoice(0, 100 * u),
        ResendLast,
        ConflictLast,
        Freeze,
        RechargeOk,
        Unfreeze,
        Adjust(-u),
        Release(0),
    ];
    run_sequence(&ops).unwrap();
}
