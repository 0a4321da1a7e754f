//! One request, start to finish, on one account: validate, look up the
//! idempotency key, settle what is due, decide, fold the events, follow up,
//! check the invariants, reply. This is what an account actor calls; it is
//! still pure (no I/O, no clock), and its result says exactly what a store
//! must persist: the event records and the idempotency record.
//!
//! Nothing is half-applied: a refused command adds no events of its own.
//! Deadlines settled before it (an expired hold, say) are facts of their own
//! and are returned, and persisted, even when the command is refused.

use super::command::{Command, Request};
use super::config::LedgerConfig;
use super::decide::{self, Before};
use super::dedup::{Dedup, DedupRecord, Lookup};
use super::event::{Event, EventRecord};
use super::id::IdemKey;
use super::reason::Reason;
use super::reply::{Detail, Reply};
use super::state::AccountState;

/// An account as its actor holds it: the state (`None` until opened) and its
/// idempotency records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub state: Option<AccountState>,
    pub dedup: Dedup,
    /// Reused between requests so deciding allocates nothing; always empty
    /// between calls.
    scratch: Vec<Event>,
}

/// What one request did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<Reply, Reason>,
    /// New journal records, in order; empty for most refusals and queries.
    pub records: Vec<EventRecord>,
    /// The key whose first result this request recorded, if it did: the
    /// store persists `dedup.get(key)` with the records.
    pub recorded: Option<IdemKey>,
    /// The reply is the first result of this key, given again.
    pub replayed: bool,
}

impl Outcome {
    fn refused(reason: Reason) -> Outcome {
        Outcome { result: Err(reason), records: Vec::new(), recorded: None, replayed: false }
    }
}

impl Account {
    /// An account as read back from storage.
    pub fn restore(state: Option<AccountState>, dedup: Dedup) -> Account {
        Account { state, dedup, scratch: Vec::new() }
    }

    pub fn execute(&mut self, req: &Request, now_ms: u64, cfg: &LedgerConfig) -> Outcome {
        // 1. Validation: the request alone.
        if let Err(reason) = decide::validate(req, cfg) {
            return Outcome::refused(reason);
        }
        // 2. Idempotency: a key seen before answers without running.
        self.dedup.prune(now_ms, cfg.idempotency_window_ms);
        let key = req.idempotency_key();
        // The table is the account's own, so the command alone identifies
        // the request.
        let mut new_key = None;
        if let Some(key) = key {
            let fingerprint = req.command.fingerprint();
            match self.dedup.lookup(key, fingerprint) {
                Lookup::Seen(first) => {
                    let replayed = first.is_ok();
                    let result = first.map(|reply| Reply { replayed: true, ..reply });
                    return Outcome { result, records: Vec::new(), recorded: None, replayed };
                }
                Lookup::New(slot) => new_key = Some((key, fingerprint, slot)),
            }
        }
        // 2b. Deadlines against the clock: only for requests not seen before.
        if let Err(reason) = decide::check_deadlines(&req.command, now_ms, cfg) {
            return Outcome::refused(reason);
        }
        // 3. The account's state.
        let mut records = Vec::with_capacity(2);
        let result = match &mut self.state {
            None => open(&mut self.state, req, now_ms, cfg, &mut records),
            Some(state) => run(state, &req.command, now_ms, cfg, &mut self.scratch, &mut records),
        };
        let recorded = match (&result, new_key) {
            (Ok(reply), Some((key, fingerprint, slot))) => {
                slot.record(DedupRecord { fingerprint, at_ms: now_ms, reply: reply.clone() });
                Some(key.clone())
            }
            _ => None,
        };
        Outcome { result, records, recorded, replayed: false }
    }
}

fn open(
    slot: &mut Option<AccountState>,
    req: &Request,
    now_ms: u64,
    cfg: &LedgerConfig,
    records: &mut Vec<EventRecord>,
) -> Result<Reply, Reason> {
    let Some(event) = decide::open_event(&req.command, cfg) else {
        return Err(Reason::UnknownAccount);
    };
    let record = EventRecord { seq: 1, at_ms: now_ms, balance_after: Default::default(), event };
    let state = AccountState::open(req.account.clone(), &record).expect("ledger bug: an opening record must open");
    records.push(record);
    Ok(reply(slot.insert(state), Detail::None))
}

fn run(
    state: &mut AccountState,
    cmd: &Command,
    now_ms: u64,
    cfg: &LedgerConfig,
    events: &mut Vec<Event>,
    records: &mut Vec<EventRecord>,
) -> Result<Reply, Reason> {
    let before = Before::of(state);
    decide::settle(state, now_ms, cfg, events);
    fold(state, events, now_ms, records);
    let result = decide::decide(state, cmd, now_ms, cfg, events);
    if result.is_ok() {
        fold(state, events, now_ms, records);
    }
    events.clear();
    decide::follow_up(before, state, now_ms, cfg, events);
    fold(state, events, now_ms, records);
    debug_assert_eq!(state.check_invariants(), Ok(()), "after {cmd:?}");
    result.map(|detail| reply(state, detail))
}

/// Numbers the events, folds them into the state and keeps their records.
/// Each record's `balance_after` is predicted from the event's own delta and
/// then checked by `replay` against what the grants say: a disagreement is a
/// bug in the ledger, and stops it.
fn fold(state: &mut AccountState, events: &mut Vec<Event>, now_ms: u64, records: &mut Vec<EventRecord>) {
    for event in events.drain(..) {
        let balance_after = state.balance() + event.balance_delta();
        let record = EventRecord { seq: state.next_seq, at_ms: now_ms, balance_after, event };
        if let Err(e) = state.replay(&record) {
            panic!("ledger bug: a decided event does not fold: {e}");
        }
        records.push(record);
    }
}

fn reply(state: &AccountState, detail: Detail) -> Reply {
    Reply { status: state.status(), balance: state.balance(), available: state.available(), detail, replayed: false }
}
