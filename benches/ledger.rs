//! The ledger core's hot paths, in-process, no I/O.
//!
//! Run: `cargo bench --bench ledger`. Figures go in docs/BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use prepaid::codec::{self, Stored};
use prepaid::ledger::decide::{self, Before};
use prepaid::ledger::*;

const T0: u64 = 1_767_225_600_000;

fn amt(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

fn req(account: &AccountId, key: &str, command: Command) -> Request {
    Request { account: account.clone(), key: Some(IdemKey::new(key).unwrap()), command }
}

/// An active account with 3 grants (free with expiry, free, purchased) and 2
/// open holds: the shape the issue names.
fn busy_account(cfg: &LedgerConfig) -> (AccountId, Account) {
    let id = AccountId::new("org_8f2c").unwrap();
    let mut account = Account::default();
    let open =
        Command::Open { mode: Mode::Prepaid, currency: Currency::USD, past_due_suspends: None, credit_limit: None };
    let setup = [
        open,
        Command::Purchase { amount: amt("100000000"), reference: None },
        Command::Grant {
            amount: amt("100000000"),
            expires_at_ms: Some(T0 + 365 * 86_400_000),
            priority: None,
            reference: None,
        },
        Command::Grant { amount: amt("100000000"), expires_at_ms: None, priority: Some(1), reference: None },
        Command::Hold {
            amount: amt("50"),
            service: Service::FineTuning,
            reference: None,
            timeout_ms: Some(cfg.hold_timeout_max_ms),
        },
        Command::Hold {
            amount: amt("20"),
            service: Service::DedicatedEndpoint,
            reference: None,
            timeout_ms: Some(cfg.hold_timeout_max_ms),
        },
    ];
    for (i, command) in setup.into_iter().enumerate() {
        let outcome = account.execute(&req(&id, &format!("setup-{i}"), command), T0, cfg);
        assert!(outcome.result.is_ok(), "{outcome:?}");
    }
    assert_eq!((account.state.as_ref().unwrap().grants.len(), account.state.as_ref().unwrap().holds.len()), (3, 2));
    (id, account)
}

fn strict_debit(id: &AccountId) -> Request {
    let command = Command::Debit {
        amount: amt("0.00000018"),
        mode: DebitMode::Strict,
        service: Service::ApiRequest,
        reference: None,
    };
    req(id, "req-0001", command)
}

fn benches(c: &mut Criterion) {
    // A 1 ms idempotency window and a clock that moves 1 ms per request: each
    // request's key is pruned before the next, so one request object serves
    // as an endless stream of new ones, and the table stays at one record.
    let cfg = LedgerConfig { idempotency_window_ms: 1, ..LedgerConfig::default() };

    let (id, mut account) = busy_account(&cfg);
    let request = strict_debit(&id);
    let mut now = T0 + 1;
    c.bench_function("execute/strict_debit_3_grants_2_holds", |b| {
        b.iter(|| {
            now += 1;
            let outcome = account.execute(black_box(&request), now, &cfg);
            debug_assert!(outcome.result.is_ok());
            black_box(outcome);
        })
    });

    let (id, account) = busy_account(&cfg);
    let state = account.state.clone().unwrap();
    let command = strict_debit(&id).command;
    let mut events = Vec::with_capacity(4);
    c.bench_function("decide/strict_debit_3_grants_2_holds", |b| {
        b.iter(|| {
            let detail = decide::decide(black_box(&state), black_box(&command), T0 + 1, &cfg, &mut events);
            black_box(detail).ok();
            events.clear();
        })
    });

    let (id, mut account) = busy_account(&cfg);
    let request = strict_debit(&id);
    account.execute(&request, T0, &cfg).result.unwrap();
    c.bench_function("execute/idempotent_replay_lookup", |b| {
        b.iter(|| {
            let outcome = account.execute(black_box(&request), T0, &cfg);
            debug_assert!(outcome.replayed);
            black_box(outcome);
        })
    });

    let (_, account) = busy_account(&cfg);
    let mut low = account.state.clone().unwrap();
    low.auto_recharge.enabled = true;
    low.auto_recharge.amount = amt("25");
    low.auto_recharge.threshold = amt("1000000000");
    let before = Before::of(&low);
    c.bench_function("follow_up/recharge_decision", |b| {
        b.iter(|| {
            decide::follow_up(before, black_box(&low), T0 + 1, &cfg, &mut events);
            debug_assert!(matches!(events.last(), Some(Event::RechargeRequested { .. })));
            events.clear();
        })
    });
    let (balance, threshold, step) = (amt("3.17"), amt("500"), amt("25"));
    c.bench_function("purchases_needed", |b| {
        b.iter(|| decide::purchases_needed(black_box(balance), black_box(threshold), black_box(step)))
    });
    let command = strict_debit(&id).command;
    c.bench_function("fingerprint/strict_debit", |b| b.iter(|| black_box(&command).fingerprint()));

    let (_, account) = busy_account(&cfg);
    let snapshot = Stored::Snapshot(Box::new(account.state.clone().unwrap()));
    let bytes = codec::encode(&snapshot);
    c.bench_function(&format!("codec/encode_snapshot_{}_bytes", bytes.len()), |b| {
        b.iter(|| black_box(codec::encode(black_box(&snapshot))))
    });
    c.bench_function("codec/decode_snapshot", |b| b.iter(|| black_box(codec::decode(black_box(&bytes)).unwrap())));
}

criterion_group!(ledger, benches);
criterion_main!(ledger);
