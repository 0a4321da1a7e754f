//! `Account::execute` on arbitrary command sequences: after every request
//! the invariants hold, the journal sums to the balance, and replaying the
//! journal gives the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prepaid::ledger::*;

const T0: u64 = 1_767_225_600_000;

fn amount(b: &[u8]) -> Amount {
    let raw = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    // Cents and fractions of a cent, up to about 43,000.00; 1 in 16 negative.
    let units = (raw as i128 % 4_300_000) * 10_000_000_000 / 100 + (b[4] as i128);
    Amount::from_units(if b[5] % 16 == 0 { -units } else { units })
}

fuzz_target!(|data: &[u8]| {
    let cfg = LedgerConfig::default();
    let id = AccountId::new("fuzz").unwrap();
    let mut account = Account::default();
    let mut journal: Vec<EventRecord> = Vec::new();
    let mut now = T0;
    let service = Service::ApiRequest;
    for (n, chunk) in data.chunks_exact(8).enumerate() {
        now += (chunk[6] as u64) * 60_000;
        let a = amount(chunk);
        let small = chunk[7] as u64 % 8;
        let command = match chunk[0] % 16 {
            0 => Command::Open {
                mode: if chunk[1] % 4 == 0 { Mode::Contract } else { Mode::Prepaid },
                currency: Currency::USD,
                past_due_suspends: None,
                credit_limit: None,
            },
            1 | 2 => Command::Debit { amount: a, mode: DebitMode::Strict, service, reference: None },
            3 => Command::Debit { amount: a, mode: DebitMode::Metered, service, reference: None },
            4 => Command::Hold { amount: a, service, reference: None, timeout_ms: Some(1 + small * 600_000) },
            5 => Command::Capture { hold_id: small, amount: a },
            6 => Command::Release { hold_id: small },
            7 => Command::Purchase { amount: a, reference: None },
            8 => Command::Grant { amount: a, expires_at_ms: Some(now + small * 3_600_000), priority: None, reference: None },
            9 => Command::SetAutoRecharge { enabled: chunk[1] % 2 == 0, amount: None, threshold: a },
            10 => Command::RechargeSucceeded { attempt_id: small },
            11 => Command::ClosePeriod { due_at_ms: Some(now + small * 86_400_000) },
            12 => Command::PayInvoice { invoice_id: small, amount: a },
            13 => Command::Adjust { amount: a, reason: Text::new("reason", "fuzz").unwrap() },
            14 => Command::Tick,
            _ => Command::Balance,
        };
        // Every eighth request reuses an earlier key: idempotency is fuzzed too.
        let key_n = if chunk[1] % 8 == 0 { n / 2 } else { n };
        let req = Request { account: id.clone(), key: IdemKey::new(&format!("k{key_n}")).ok(), command };
        let outcome = account.execute(&req, now, &cfg);
        journal.extend(outcome.records);
        if let Some(state) = &account.state {
            state.check_invariants().unwrap_or_else(|e| panic!("after {req:?}: {e}"));
            let sum: Amount = journal.iter().map(|r| r.event.balance_delta()).sum();
            assert_eq!(sum, state.balance(), "the journal sums to the balance");
            let replayed = AccountState::from_records(id.clone(), &journal).expect("the journal replays");
            assert_eq!(replayed.as_ref(), Some(state), "replay gives the same state");
        }
    }
});
