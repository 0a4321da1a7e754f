//! A test harness around one account: a manual clock, automatic idempotency
//! keys, the journal kept in memory, and after every request the checks that
//! must always hold (invariants, and replay of the whole journal gives the
//! same state).
#![allow(dead_code)]

use prepaid::ledger::*;

pub const DAY_MS: u64 = 86_400_000;
pub const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

pub fn amt(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

pub fn text(s: &str) -> Text {
    Text::new("reference", s).unwrap()
}

pub struct Harness {
    pub id: AccountId,
    pub account: Account,
    pub cfg: LedgerConfig,
    pub now: u64,
    pub journal: Vec<EventRecord>,
    next_key: u64,
}

impl Harness {
    /// A harness on an account that does not exist yet.
    pub fn unopened() -> Harness {
        Harness {
            id: AccountId::new("org_test").unwrap(),
            account: Account::default(),
            cfg: LedgerConfig::default(),
            now: T0,
            journal: Vec::new(),
            next_key: 0,
        }
    }

    pub fn open(mode: Mode) -> Harness {
        let mut h = Harness::unopened();
        h.ok(open_cmd(mode));
        h
    }

    /// A prepaid account with one purchase: active.
    pub fn active(purchase: &str) -> Harness {
        let mut h = Harness::open(Mode::Prepaid);
        h.ok(purchase_cmd(purchase));
        h
    }

    pub fn fresh_key(&mut self) -> IdemKey {
        self.next_key += 1;
        IdemKey::new(&format!("k{}", self.next_key)).unwrap()
    }

    /// Runs a command with a fresh key when it needs one.
    pub fn run(&mut self, command: Command) -> Result<Reply, Reason> {
        let key = command.needs_key().then(|| self.fresh_key());
        self.run_keyed(key, command).result
    }

    pub fn run_keyed(&mut self, key: Option<IdemKey>, command: Command) -> Outcome {
        let req = Request { account: self.id.clone(), key, command };
        let outcome = self.account.execute(&req, self.now, &self.cfg);
        self.journal.extend(outcome.records.iter().cloned());
        self.check();
        outcome
    }

    pub fn ok(&mut self, command: Command) -> Reply {
        let name = command.name();
        self.run(command).unwrap_or_else(|r| panic!("{name} refused: {} ({r})", r.code()))
    }

    pub fn refused(&mut self, command: Command) -> Reason {
        let name = command.name();
        match self.run(command) {
            Ok(reply) => panic!("{name} accepted: {reply:?}"),
            Err(reason) => reason,
        }
    }

    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    pub fn state(&self) -> &AccountState {
        self.account.state.as_ref().expect("account is open")
    }

    pub fn balance(&self) -> Amount {
        self.state().balance()
    }

    pub fn view(&mut self) -> BalanceView {
        match self.ok(Command::Balance).detail {
            Detail::Balance(view) => *view,
            other => panic!("balance gave {other:?}"),
        }
    }

    /// Names of the events since journal position `from`.
    pub fn event_names_since(&self, from: usize) -> Vec<&'static str> {
        self.journal[from..].iter().map(|r| r.event.name()).collect()
    }

    pub fn all_event_names(&self) -> Vec<&'static str> {
        self.event_names_since(0)
    }

    pub fn count(&self, name: &str) -> usize {
        self.journal.iter().filter(|r| r.event.name() == name).count()
    }

    /// The attempt id of the recharge in flight.
    pub fn attempt(&self) -> u64 {
        self.state().auto_recharge.in_flight.as_ref().expect("a recharge is in flight").id
    }

    fn check(&self) {
        let Some(state) = &self.account.state else {
            assert!(self.journal.is_empty());
            return;
        };
        state.check_invariants().unwrap();
        let sum: Amount = self.journal.iter().map(|r| r.event.balance_delta()).sum();
        assert_eq!(sum, state.balance(), "ledger sum != balance");
        let replayed = AccountState::from_records(self.id.clone(), &self.journal).unwrap().unwrap();
        assert_eq!(&replayed, state, "replay(journal) != state");
        for (i, r) in self.journal.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1, "journal numbering");
        }
    }
}

pub fn open_cmd(mode: Mode) -> Command {
    Command::Open { mode, currency: Currency::USD, past_due_suspends: None, credit_limit: None }
}

pub fn purchase_cmd(a: &str) -> Command {
    Command::Purchase { amount: amt(a), reference: None }
}

pub fn grant_cmd(a: &str) -> Command {
    Command::Grant { amount: amt(a), expires_at_ms: None, priority: None, reference: None }
}

pub fn strict(a: &str) -> Command {
    Command::Debit { amount: amt(a), mode: DebitMode::Strict, service: Service::ApiRequest, reference: None }
}

pub fn metered(a: &str) -> Command {
    Command::Debit { amount: amt(a), mode: DebitMode::Metered, service: Service::ApiRequest, reference: None }
}

pub fn hold_cmd(a: &str, service: Service) -> Command {
    Command::Hold { amount: amt(a), service, reference: None, timeout_ms: None }
}

pub fn auto_cmd(amount: &str, threshold: &str) -> Command {
    Command::SetAutoRecharge { enabled: true, amount: Some(amt(amount)), threshold: amt(threshold) }
}

pub fn reason(s: &str) -> Text {
    Text::new("reason", s).unwrap()
}

pub fn hold_id(reply: &Reply) -> u64 {
    match reply.detail {
        Detail::HoldPlaced { hold_id, .. } => hold_id,
        ref other => panic!("not a hold: {other:?}"),
    }
}

/// A file of the checkout under test. Read at run time (cargo sets
/// CARGO_MANIFEST_DIR for tests): a test binary reused from another clone
/// through a shared target directory must not read that clone's files.
pub fn repo_file(path: &str) -> std::path::PathBuf {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    std::path::Path::new(&root).join(path)
}
