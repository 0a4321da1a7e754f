//! Using the ledger core directly: open an account, buy credits, debit usage,
//! resend a request, and read the journal records a store would persist.
//!
//! Run: `cargo run --example embed_core`

use prepaid::ledger::*;

fn main() -> Result<(), Reason> {
    let cfg = LedgerConfig::default();
    let now_ms = 1_767_225_600_000; // time is an argument: the core reads no clock
    let id = AccountId::new("org_8f2c")?;
    let mut account = Account::default();
    let request = |key: Option<&str>, command| -> Result<Request, Reason> {
        Ok(Request { account: id.clone(), key: key.map(IdemKey::new).transpose()?, command })
    };

    let open =
        Command::Open { mode: Mode::Prepaid, currency: Currency::USD, past_due_suspends: None, credit_limit: None };
    account.execute(&request(None, open)?, now_ms, &cfg).result?;

    let buy =
        Command::Purchase { amount: Amount::parse("20.00")?, reference: Some(Text::new("reference", "pay_123")?) };
    let bought = account.execute(&request(Some("pay_123"), buy)?, now_ms, &cfg);
    println!("purchase: {:?}, {} journal records", bought.result?.status, bought.records.len());

    let debit = Command::Debit {
        amount: Amount::parse("0.00000018")?,
        mode: DebitMode::Strict,
        service: Service::ApiRequest,
        reference: Some(Text::new("reference", "req_1 llama-3-70b")?),
    };
    let first = account.execute(&request(Some("req_1"), debit.clone())?, now_ms + 1, &cfg);
    let again = account.execute(&request(Some("req_1"), debit)?, now_ms + 2, &cfg);
    println!(
        "debit: balance {}; resent: replayed={} with the same reply={}",
        first.result.clone()?.balance,
        again.replayed,
        again.result == first.result
    );

    let too_much = Command::Debit {
        amount: Amount::parse("100")?,
        mode: DebitMode::Strict,
        service: Service::ApiRequest,
        reference: None,
    };
    match account.execute(&request(Some("req_2"), too_much)?, now_ms + 3, &cfg).result {
        Ok(_) => println!("unexpected: accepted"),
        Err(reason) => println!("refused: {} — {reason}", reason.code()),
    }
    for record in &first.records {
        println!("journal: #{} {} balance_after {}", record.seq, record.event.name(), record.balance_after);
    }
    Ok(())
}
