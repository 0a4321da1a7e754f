//! The auditor: an independent, plain model of accounts that checks what a
//! running system told its clients against what it wrote.
//!
//! Tests that drive a real node (the seeded simulation, the crash torture,
//! the disk-full test) tag every request that moves money with a unique
//! `reference`, and tell the auditor what the client heard: applied (with
//! the reply's balance), refused by the ledger, or unknown (a timeout, a
//! crash, `storage_unavailable`). The auditor then folds each account's
//! journal with its own arithmetic — plain integers and maps, written from
//! the SPEC, not from `ledger::state` — and reports the first finding:
//! - a record's `balance_after` that is not the running sum (conservation),
//!   or a final balance or amount held that differs from the account's;
//! - a strict debit or hold that left less than nothing available on a
//!   prepaid account without credit (a double spend);
//! - a reference applied twice, an applied one missing (a lost
//!   acknowledgement), a refused one present, or an applied reply whose
//!   balance is not the balance its record left;
//! - a hold ended twice or expired before its deadline; a grant expired
//!   twice, expired before its deadline, or for more than it held;
//! - a recharge attempt started twice, ended twice, or credited an amount
//!   other than the one requested;
//! - and, when asked after the clock passed every deadline and the accounts
//!   were settled, a hold or a grant past its deadline still open.
//!
//! Across accounts, `recharges_match` compares the attempts the ledger
//! credited with the charges a payment gateway made: each once, the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::ledger::{AccountId, AccountState, Amount, DebitMode, Event, EventRecord, InvoiceSource, Mode};

/// What a client heard about one referenced request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Told {
    /// Accepted; the reply carried this balance.
    Applied { balance: Amount },
    /// Refused by the ledger: nothing was written.
    Refused,
    /// No answer, or a node error: applied once or not at all.
    Unknown,
}

/// Something the system did that it must not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding(pub String);

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Finding {}

/// What the audit of one account found correct, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountAudit {
    pub records: usize,
    pub balance: Amount,
    pub held: Amount,
    /// References the clients heard were applied, each found once.
    pub applied: usize,
    /// Unknown outcomes found applied, and found not applied.
    pub unknown_applied: usize,
    pub unknown_absent: usize,
    /// Attempt ids credited (`recharge_succeeded`).
    pub credited: Vec<u64>,
    pub holds_expired: usize,
    pub grants_expired: usize,
}

#[derive(Default)]
pub struct Auditor {
    told: BTreeMap<AccountId, BTreeMap<String, Vec<Told>>>,
    /// Each account's journal folded so far (`check_more` goes on from it).
    folds: BTreeMap<AccountId, Fold>,
}

/// One account's journal, folded by the model.
#[derive(Default)]
struct Fold {
    balance: i128,
    strict_floor: bool,
    holds: BTreeMap<u64, (i128, u64)>,
    holds_ended: BTreeSet<u64>,
    grants: BTreeMap<u64, (i128, Option<u64>)>,
    grants_expired: BTreeSet<u64>,
    attempts: BTreeMap<u64, (i128, bool)>,
    /// reference → balance after each record that carried it.
    refs: BTreeMap<String, Vec<i128>>,
    credited: Vec<u64>,
    holds_expired: usize,
    /// Records folded so far.
    records: u64,
}

fn units(a: Amount) -> i128 {
    a.units()
}

impl Fold {
    fn held(&self) -> i128 {
        self.holds.values().map(|(amount, _)| amount).sum()
    }

    fn record(&mut self, r: &EventRecord) -> Result<(), String> {
        let mut reference = None;
        match &r.event {
            Event::Opened { mode, credit_limit, .. } => {
                self.strict_floor = *mode == Mode::Prepaid && credit_limit.is_none();
            }
            Event::Credited { grant_id, amount, expires_at_ms, reference: text, .. } => {
                self.balance += units(*amount);
                self.grants.insert(*grant_id, (units(*amount), *expires_at_ms));
                reference = text.as_ref().map(|t| t.as_str().to_string());
            }
            Event::Debited { amount, mode, reference: text, .. } => {
                self.balance -= units(*amount);
                if *mode == DebitMode::Strict && self.strict_floor && self.balance - self.held() < 0 {
                    return Err(format!("a strict debit of {amount} left {} available", self.available()));
                }
                reference = text.as_ref().map(|t| t.as_str().to_string());
            }
            Event::UsageAccrued { reference: text, .. } => {
                reference = text.as_ref().map(|t| t.as_str().to_string());
            }
            Event::HoldPlaced { hold_id, amount, expires_at_ms, reference: text, .. } => {
                if self.holds.contains_key(hold_id) || self.holds_ended.contains(hold_id) {
                    return Err(format!("hold {hold_id} placed twice"));
                }
                self.holds.insert(*hold_id, (units(*amount), *expires_at_ms));
                if self.strict_floor && self.balance - self.held() < 0 {
                    return Err(format!("hold {hold_id} of {amount} left {} available", self.available()));
                }
                reference = text.as_ref().map(|t| t.as_str().to_string());
            }
            Event::HoldCaptured { hold_id, amount, to_period, .. } => {
                self.end_hold(*hold_id)?;
                if !to_period {
                    self.balance -= units(*amount);
                }
            }
            Event::HoldReleased { hold_id, expired, .. } => {
                let (_, expires_at) = self.end_hold(*hold_id)?;
                if *expired {
                    if r.at_ms < expires_at {
                        return Err(format!("hold {hold_id} expired at {} before its deadline {expires_at}", r.at_ms));
                    }
                    self.holds_expired += 1;
                }
            }
            Event::GrantExpired { grant_id, amount } => {
                let Some((granted, expires_at)) = self.grants.get(grant_id).copied() else {
                    return Err(format!("grant {grant_id} expired but was never credited"));
                };
                if !self.grants_expired.insert(*grant_id) {
                    return Err(format!("grant {grant_id} expired twice"));
                }
                if units(*amount) > granted {
                    return Err(format!("grant {grant_id} expired {amount}, more than it was credited"));
                }
                if expires_at.is_none_or(|at| r.at_ms < at) {
                    return Err(format!("grant {grant_id} expired at {} before its deadline {expires_at:?}", r.at_ms));
                }
                self.balance -= units(*amount);
            }
            Event::GrantExpirySet { grant_id, expires_at_ms } => {
                if let Some(grant) = self.grants.get_mut(grant_id) {
                    grant.1 = Some(*expires_at_ms);
                }
            }
            Event::Adjusted { amount, grant_id, .. } => {
                self.balance += units(*amount);
                if let Some(id) = grant_id {
                    self.grants.insert(*id, (units(*amount), None));
                }
            }
            Event::RechargeRequested { attempt_id, amount } => {
                let before = self.attempts.insert(*attempt_id, (units(*amount), false));
                if before.is_some() {
                    return Err(format!("recharge attempt {attempt_id} started twice"));
                }
            }
            Event::RechargeSucceeded { attempt_id, grant_id, amount } => {
                let requested = self.end_attempt(*attempt_id)?;
                if requested != units(*amount) {
                    return Err(format!("attempt {attempt_id} credited {amount}, not the amount requested"));
                }
                self.balance += units(*amount);
                self.grants.insert(*grant_id, (units(*amount), None));
                self.credited.push(*attempt_id);
            }
            Event::RechargeFailed { attempt_id, .. } => {
                self.end_attempt(*attempt_id)?;
            }
            Event::Invoiced { amount, source: InvoiceSource::Debt, .. } => {
                // Debt moved off the credit balance onto an invoice.
                self.balance += units(*amount);
            }
            _ => {}
        }
        if let Some(reference) = reference {
            self.refs.entry(reference).or_default().push(self.balance);
        }
        if units(r.balance_after) != self.balance {
            return Err(format!(
                "record {} ({}) says the balance is {}, the sum of the ledger is {}",
                r.seq,
                r.event.name(),
                r.balance_after,
                Amount::from_units(self.balance)
            ));
        }
        Ok(())
    }

    fn available(&self) -> Amount {
        Amount::from_units(self.balance - self.held())
    }

    fn end_hold(&mut self, id: u64) -> Result<(i128, u64), String> {
        if !self.holds_ended.insert(id) {
            return Err(format!("hold {id} ended twice"));
        }
        self.holds.remove(&id).ok_or_else(|| format!("hold {id} ended but was never placed"))
    }

    fn end_attempt(&mut self, id: u64) -> Result<i128, String> {
        match self.attempts.get_mut(&id) {
            None => Err(format!("recharge attempt {id} ended but was never started")),
            Some((_, true)) => Err(format!("recharge attempt {id} ended twice")),
            Some((amount, ended)) => {
                *ended = true;
                Ok(*amount)
            }
        }
    }
}

impl Auditor {
    pub fn new() -> Auditor {
        Auditor::default()
    }

    /// What a client heard about the request tagged `reference`. A request
    /// resent under its idempotency key may be told several times.
    pub fn told(&mut self, account: &AccountId, reference: &str, told: Told) {
        self.told.entry(account.clone()).or_default().entry(reference.to_string()).or_default().push(told);
    }

    /// Records of the account folded by checks so far.
    pub fn records_seen(&self, id: &AccountId) -> u64 {
        self.folds.get(id).map_or(0, |f| f.records)
    }

    /// Accounts the clients touched.
    pub fn accounts(&self) -> impl Iterator<Item = &AccountId> {
        self.told.keys()
    }

    /// Checks one account from scratch: its whole journal, oldest first,
    /// and its state as the system holds it (`None`: the account does not
    /// exist). With `settled_at`, every deadline at or before it must have
    /// been settled.
    pub fn check_account(
        &mut self,
        id: &AccountId,
        journal: &[EventRecord],
        state: Option<&AccountState>,
        settled_at: Option<u64>,
    ) -> Result<AccountAudit, Finding> {
        self.folds.remove(id);
        self.check_more(id, journal, state, settled_at)
    }

    /// Goes on from the last check of the account: `new` are the records
    /// after those already folded (a journal only grows: what an earlier
    /// check read from disk is durable). For audits after every restart of
    /// a long run, without reading whole journals again.
    pub fn check_more(
        &mut self,
        id: &AccountId,
        new: &[EventRecord],
        state: Option<&AccountState>,
        settled_at: Option<u64>,
    ) -> Result<AccountAudit, Finding> {
        let fail = |what: String| Finding(format!("{id}: {what}"));
        let fold = self.folds.entry(id.clone()).or_default();
        for r in new {
            if r.seq != fold.records + 1 {
                return Err(fail(format!(
                    "record {} where {} was expected: the journal has a hole",
                    r.seq,
                    fold.records + 1
                )));
            }
            fold.record(r).map_err(&fail)?;
            fold.records += 1;
        }
        let fold = &self.folds[id];
        for (reference, after) in &fold.refs {
            if after.len() > 1 {
                return Err(fail(format!("{reference} applied {} times", after.len())));
            }
        }
        match state {
            None if fold.records == 0 => {}
            None => return Err(fail("has a journal but no state".into())),
            Some(s) => {
                if units(s.balance()) != fold.balance {
                    return Err(fail(format!(
                        "balance {} but the ledger sums to {}",
                        s.balance(),
                        Amount::from_units(fold.balance)
                    )));
                }
                if units(s.held) != fold.held() {
                    return Err(fail(format!(
                        "holds {} but the model holds {}",
                        s.held,
                        Amount::from_units(fold.held())
                    )));
                }
                if s.next_seq != fold.records + 1 {
                    return Err(fail(format!(
                        "state is at seq {} but the journal has {}",
                        s.next_seq - 1,
                        fold.records
                    )));
                }
                if let Some(now) = settled_at {
                    if let Some(h) = s.holds.iter().find(|h| h.expires_at_ms <= now) {
                        return Err(fail(format!("hold {} past its deadline is still open", h.id)));
                    }
                    if let Some(g) = s.grants.iter().find(|g| g.expires_at_ms.is_some_and(|at| at <= now)) {
                        return Err(fail(format!("grant {} past its deadline still holds {}", g.id, g.remaining)));
                    }
                }
            }
        }
        let mut audit = AccountAudit {
            records: fold.records as usize,
            balance: Amount::from_units(fold.balance),
            held: Amount::from_units(fold.held()),
            credited: fold.credited.clone(),
            holds_expired: fold.holds_expired,
            grants_expired: fold.grants_expired.len(),
            ..AccountAudit::default()
        };
        for (reference, told) in self.told.get(id).into_iter().flatten() {
            let found = fold.refs.get(reference).map(|after| after[0]);
            let applied: Vec<Amount> = told
                .iter()
                .filter_map(|t| match t {
                    Told::Applied { balance } => Some(*balance),
                    _ => None,
                })
                .collect();
            match (found, applied.first()) {
                (None, Some(_)) => return Err(fail(format!("{reference} was acknowledged but is not in the ledger"))),
                (Some(after), Some(_)) => {
                    if let Some(b) = applied.iter().find(|b| units(**b) != after) {
                        return Err(fail(format!(
                            "{reference}: the client was told balance {b}, its record left {}",
                            Amount::from_units(after)
                        )));
                    }
                    audit.applied += 1;
                }
                (Some(_), None) if told.contains(&Told::Refused) => {
                    return Err(fail(format!("{reference} was refused but is in the ledger")));
                }
                (Some(_), None) => audit.unknown_applied += 1,
                (None, None) => audit.unknown_absent += usize::from(told.contains(&Told::Unknown)),
            }
        }
        Ok(audit)
    }
}

/// The attempts a gateway charged (`account:attempt` keys, with repeats as
/// the gateway saw them) against the attempts the ledgers credited: every
/// charge once, credited once; nothing credited that was not charged.
pub fn recharges_match(charged: &[String], credited: &BTreeSet<String>) -> Result<(), Finding> {
    let mut once = BTreeSet::new();
    for key in charged {
        if !once.insert(key.clone()) {
            return Err(Finding(format!("the gateway charged {key} twice")));
        }
    }
    if &once != credited {
        let missing: Vec<_> = once.difference(credited).collect();
        let extra: Vec<_> = credited.difference(&once).collect();
        return Err(Finding(format!("charged but not credited: {missing:?}; credited but not charged: {extra:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Currency, GrantSource, Service, Text};

    fn rec(seq: u64, balance: &str, event: Event) -> EventRecord {
        EventRecord { seq, at_ms: 10 * seq, balance_after: Amount::parse(balance).unwrap(), event }
    }

    fn account() -> (AccountId, Vec<EventRecord>) {
        let id = AccountId::new("org_a").unwrap();
        let opened = Event::Opened {
            mode: Mode::Prepaid,
            currency: Currency::new("USD").unwrap(),
            past_due_suspends: false,
            credit_limit: None,
        };
        let credited = Event::Credited {
            grant_id: 1,
            source: GrantSource::Purchase,
            amount: Amount::parse("10").unwrap(),
            expires_at_ms: None,
            priority: 0,
            reference: Some(Text::new("reference", "buy-1").unwrap()),
        };
        let debited = Event::Debited {
            amount: Amount::parse("4").unwrap(),
            mode: DebitMode::Strict,
            service: Service::ApiRequest,
            reference: Some(Text::new("reference", "use-1").unwrap()),
        };
        (id, vec![rec(1, "0", opened), rec(2, "10", credited), rec(3, "6", debited)])
    }

    #[test]
    fn a_clean_journal_passes_and_what_was_acknowledged_is_found() {
        let (id, journal) = account();
        let mut auditor = Auditor::new();
        auditor.told(&id, "use-1", Told::Unknown);
        auditor.told(&id, "use-1", Told::Applied { balance: Amount::parse("6").unwrap() });
        auditor.told(&id, "buy-1", Told::Unknown);
        auditor.told(&id, "use-2", Told::Refused);
        let audit = auditor.check_account(&id, &journal, None, None);
        assert!(audit.is_err(), "a journal without state is a finding");
        let state = AccountState::from_records(id.clone(), &journal).unwrap().unwrap();
        let audit = auditor.check_account(&id, &journal, Some(&state), None).unwrap();
        assert_eq!((audit.applied, audit.unknown_applied, audit.balance), (1, 1, Amount::parse("6").unwrap()));
    }

    #[test]
    fn every_kind_of_wrong_is_a_finding() {
        let (id, journal) = account();
        let state = AccountState::from_records(id.clone(), &journal).unwrap().unwrap();
        let check =
            |auditor: &mut Auditor, journal: &[EventRecord]| auditor.check_account(&id, journal, Some(&state), None);
        // Lost acknowledgement.
        let mut a = Auditor::new();
        a.told(&id, "use-9", Told::Applied { balance: Amount::ZERO });
        assert!(check(&mut a, &journal).unwrap_err().0.contains("not in the ledger"));
        // Refused but applied.
        let mut a = Auditor::new();
        a.told(&id, "use-1", Told::Refused);
        assert!(check(&mut a, &journal).unwrap_err().0.contains("refused"));
        // Told a different balance.
        let mut a = Auditor::new();
        a.told(&id, "use-1", Told::Applied { balance: Amount::parse("7").unwrap() });
        assert!(check(&mut a, &journal).unwrap_err().0.contains("told balance"));
        // Applied twice.
        let mut twice = journal.clone();
        let mut again = twice[2].clone();
        again.seq = 4;
        again.balance_after = Amount::parse("2").unwrap();
        twice.push(again);
        assert!(check(&mut Auditor::new(), &twice).unwrap_err().0.contains("applied 2 times"));
        // A wrong running balance, a hole, a double spend.
        let mut wrong = journal.clone();
        wrong[2].balance_after = Amount::parse("5").unwrap();
        assert!(check(&mut Auditor::new(), &wrong).unwrap_err().0.contains("sum of the ledger"));
        let hole = vec![journal[0].clone(), journal[2].clone()];
        assert!(check(&mut Auditor::new(), &hole).unwrap_err().0.contains("hole"));
        let mut overdrawn = journal.clone();
        overdrawn[2].event = Event::Debited {
            amount: Amount::parse("11").unwrap(),
            mode: DebitMode::Strict,
            service: Service::ApiRequest,
            reference: None,
        };
        overdrawn[2].balance_after = Amount::parse("-1").unwrap();
        assert!(check(&mut Auditor::new(), &overdrawn).unwrap_err().0.contains("strict debit"));
    }

    #[test]
    fn recharges_compare_charges_and_credits() {
        let credited: BTreeSet<String> = ["a:1".to_string()].into();
        assert!(recharges_match(&["a:1".into()], &credited).is_ok());
        assert!(recharges_match(&["a:1".into(), "a:1".into()], &credited).unwrap_err().0.contains("twice"));
        assert!(recharges_match(&[], &credited).is_err());
    }
}
