//! The demo's first part: every FAQ rule, shown on the ledger core.
//!
//! Each step runs real requests through `Account::execute` and prints what a
//! customer would see: the balance, its parts, and the reason code of every
//! refusal.

use std::collections::HashMap;
use std::io::{self, Write};

use prepaid::ledger::*;

const T0: u64 = 1_767_225_600_000;
const DAY_MS: u64 = 86_400_000;

struct Tour<'a, W: Write> {
    out: &'a mut W,
    cfg: LedgerConfig,
    accounts: HashMap<AccountId, Account>,
    journal: HashMap<AccountId, Vec<EventRecord>>,
    now: u64,
    keys: u64,
}

fn amt(s: &str) -> Amount {
    Amount::parse(s).expect("demo amounts are valid")
}

fn text(s: &str) -> Text {
    Text::new("reference", s).expect("demo texts are valid")
}

impl<W: Write> Tour<'_, W> {
    fn id(&self, name: &str) -> AccountId {
        AccountId::new(name).expect("demo ids are valid")
    }

    /// Runs one request and prints one line: what was asked, what came back.
    fn ask(&mut self, account: &str, what: &str, command: Command) -> io::Result<Option<Reply>> {
        let id = self.id(account);
        self.keys += 1;
        let key = IdemKey::new(&format!("demo-{}", self.keys)).expect("demo keys are valid");
        let req = Request { account: id.clone(), key: Some(key), command };
        let outcome = self.accounts.entry(id.clone()).or_default().execute(&req, self.now, &self.cfg);
        let events: Vec<&str> = outcome.records.iter().map(|r| r.event.name()).collect();
        self.journal.entry(id).or_default().extend(outcome.records);
        match &outcome.result {
            Ok(reply) => writeln!(
                self.out,
                "  {what:<44} ok    balance {:>9}  available {:>9}  {:<9} {}",
                reply.balance.to_string(),
                reply.available.to_string(),
                format!("{:?}", reply.status).to_lowercase(),
                if events.is_empty() { String::new() } else { format!("[{}]", events.join(", ")) },
            )?,
            Err(reason) => writeln!(self.out, "  {what:<44} refused  {}: {reason}", reason.code())?,
        }
        Ok(outcome.result.ok())
    }

    fn section(&mut self, title: &str) -> io::Result<()> {
        writeln!(self.out, "\n{title}")
    }

    fn attempt(&self, account: &str) -> u64 {
        let state = self.accounts[&self.id(account)].state.as_ref().expect("open");
        state.auto_recharge.in_flight.as_ref().map_or(0, |a| a.id)
    }

    fn view(&mut self, account: &str) -> io::Result<()> {
        if let Some(Reply { detail: Detail::Balance(v), .. }) = self.ask(account, "balance", Command::Balance)? {
            writeln!(
                self.out,
                "    free {}  purchased {}  held {}  debt {}  lifetime purchased {}  status {:?}{}",
                v.free,
                v.purchased,
                v.held,
                v.debt,
                v.lifetime_purchased,
                v.status,
                v.refusal.map(|r| format!(" ({r})")).unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

fn open(mode: Mode) -> Command {
    Command::Open { mode, currency: Currency::USD, past_due_suspends: None, credit_limit: None }
}

fn purchase(a: &str) -> Command {
    Command::Purchase { amount: amt(a), reference: None }
}

fn debit(a: &str, mode: DebitMode) -> Command {
    Command::Debit { amount: amt(a), mode, service: Service::ApiRequest, reference: Some(text("req llama-3-70b")) }
}

pub fn run<W: Write>(out: &mut W) -> io::Result<()> {
    let mut t =
        Tour { out, cfg: LedgerConfig::default(), accounts: HashMap::new(), journal: HashMap::new(), now: T0, keys: 0 };
    writeln!(t.out, "prepaid demo — the billing FAQ's rules on the ledger core (amounts in USD)")?;

    t.section("Rule 2: no free trial; access needs a purchase of at least $5.00")?;
    t.ask("org_alice", "open_account org_alice", open(Mode::Prepaid))?;
    t.ask(
        "org_alice",
        "grant $100.00 free credits",
        Command::Grant {
            amount: amt("100"),
            expires_at_ms: None,
            priority: None,
            reference: Some(text("launch promo")),
        },
    )?;
    t.ask("org_alice", "check_access", Command::CheckAccess)?;
    t.ask("org_alice", "purchase $4.99", purchase("4.99"))?;
    t.ask("org_alice", "purchase $5.00", purchase("5"))?;
    t.ask("org_alice", "check_access", Command::CheckAccess)?;
    t.view("org_alice")?;

    t.section("Rule 1 and 4: fully prepaid; strict and metered usage")?;
    t.ask("org_bob", "open_account org_bob", open(Mode::Prepaid))?;
    t.ask("org_bob", "purchase $10.00", purchase("10"))?;
    t.ask("org_bob", "strict debit $0.00000018 (one token)", debit("0.00000018", DebitMode::Strict))?;
    t.ask("org_bob", "strict debit $20.00", debit("20", DebitMode::Strict))?;
    t.ask("org_bob", "metered debit $12.00 (usage already ran)", debit("12", DebitMode::Metered))?;
    t.ask("org_bob", "check_access", Command::CheckAccess)?;
    t.ask("org_bob", "purchase $25.00 (pays the debt first)", purchase("25"))?;
    t.view("org_bob")?;

    t.section("Rule 3: jobs hold their estimated cost; holds capture, release or expire")?;
    t.ask("org_carol", "open_account org_carol", open(Mode::Prepaid))?;
    t.ask("org_carol", "purchase $100.00", purchase("100"))?;
    let hold = |a: &str, service, timeout_ms| Command::Hold {
        amount: amt(a),
        service,
        reference: Some(text("job ft-42")),
        timeout_ms,
    };
    t.ask("org_carol", "hold $80.00 for a fine-tuning job", hold("80", Service::FineTuning, None))?;
    t.ask("org_carol", "hold $30.00 for a dedicated endpoint", hold("30", Service::DedicatedEndpoint, None))?;
    t.ask("org_carol", "capture hold 1 at $61.40", Command::Capture { hold_id: 1, amount: amt("61.40") })?;
    t.ask("org_carol", "hold $20.00 for an evaluation, 1 h", hold("20", Service::Evaluation, Some(3_600_000)))?;
    t.now += 3_600_000;
    t.ask("org_carol", "one hour later: capture hold 2", Command::Capture { hold_id: 2, amount: amt("5") })?;

    t.section("Rule 5: auto-recharge, exactly once per purchase")?;
    t.ask("org_dave", "open_account org_dave", open(Mode::Prepaid))?;
    t.ask("org_dave", "purchase $10.00", purchase("10"))?;
    t.ask(
        "org_dave",
        "auto-recharge $25.00 below $60.00",
        Command::SetAutoRecharge { enabled: true, amount: Some(amt("25")), threshold: amt("60") },
    )?;
    for _ in 0..2 {
        let attempt_id = t.attempt("org_dave");
        t.ask("org_dave", &format!("gateway charged attempt {attempt_id}"), Command::RechargeSucceeded { attempt_id })?;
    }
    t.ask("org_dave", "gateway reports attempt 1 again", Command::RechargeSucceeded { attempt_id: 1 })?;
    t.ask("org_dave", "strict debit $40.00", debit("40", DebitMode::Strict))?;
    let attempt_id = t.attempt("org_dave");
    t.ask(
        "org_dave",
        &format!("gateway declined attempt {attempt_id}"),
        Command::RechargeFailed { attempt_id, error: text("card_declined") },
    )?;
    t.now += 60_000;
    t.ask("org_dave", "a minute later (retry with backoff)", Command::Tick)?;

    t.section("Rule 6: credits do not expire by default; a policy expiry gives notice")?;
    t.ask("org_erin", "open_account org_erin", open(Mode::Prepaid))?;
    t.ask("org_erin", "purchase $50.00", purchase("50"))?;
    t.now += 3650 * DAY_MS;
    t.ask("org_erin", "ten years later", Command::Tick)?;
    let at = t.now + 29 * DAY_MS;
    t.ask("org_erin", "policy expiry in 29 days", Command::SetGrantExpiry { grant_id: None, expires_at_ms: at })?;
    let at = t.now + 30 * DAY_MS;
    t.ask("org_erin", "policy expiry in 30 days", Command::SetGrantExpiry { grant_id: None, expires_at_ms: at })?;
    t.now += 30 * DAY_MS;
    t.ask("org_erin", "30 days later", Command::Tick)?;

    t.section("Rule 7: contract accounts keep access and are invoiced per period")?;
    t.ask("org_acme", "open_account org_acme (contract)", open(Mode::Contract))?;
    t.ask("org_acme", "strict debit $5000.00", debit("5000", DebitMode::Strict))?;
    t.ask("org_acme", "check_access", Command::CheckAccess)?;
    t.ask("org_acme", "close_period", Command::ClosePeriod { due_at_ms: None })?;

    t.section("Rule 8: credits never pay invoices; past due suspends")?;
    t.ask("org_frank", "open_account org_frank", open(Mode::Prepaid))?;
    t.ask("org_frank", "purchase $5.00", purchase("5"))?;
    t.ask("org_frank", "metered debit $30.00", debit("30", DebitMode::Metered))?;
    t.ask("org_frank", "close_period (the debt becomes invoice 1)", Command::ClosePeriod { due_at_ms: None })?;
    t.ask("org_frank", "purchase $100.00", purchase("100"))?;
    t.now += 30 * DAY_MS;
    t.ask("org_frank", "30 days later: strict debit $1.00", debit("1", DebitMode::Strict))?;
    t.ask("org_frank", "pay_invoice 1 $25.00", Command::PayInvoice { invoice_id: 1, amount: amt("25") })?;
    t.ask("org_frank", "strict debit $1.00", debit("1", DebitMode::Strict))?;

    t.section("Rule 9: free and purchased credits are always shown apart")?;
    t.view("org_alice")
}
