//! The wire contract (`proto/prepaid.proto`) and its conversions: protobuf
//! messages to validated ledger requests, replies back to protobuf.
//!
//! Every field is checked here before it reaches an account: ids, keys and
//! texts by their constructors, amounts by `Amount::parse` (exact, at most 12
//! places), enums against the values this node knows. What depends on the
//! account or on configuration (zero, negative, beyond the maximum) is the
//! ledger's `validate`, which runs next.

use crate::config::Role;
use crate::error::Error;
use crate::ledger::{
    AccountId, Amount, BalanceView, Command, Currency, DebitMode, Detail, EventRecord, IdemKey, Mode, Reply, Request,
    Service, Status, Text,
};

/// The generated protobuf types, client and server (`prepaid.v1`).
pub mod pb {
    tonic::include_proto!("prepaid.v1");

    /// The contract's descriptors, as gRPC reflection serves them.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("prepaid_descriptor");
}

use pb::request::Op;

fn account(s: &str) -> Result<AccountId, Error> {
    Ok(AccountId::new(s)?)
}

fn key(s: &str) -> Result<Option<IdemKey>, Error> {
    if s.is_empty() { Ok(None) } else { Ok(Some(IdemKey::new(s)?)) }
}

fn amount(s: &str) -> Result<Amount, Error> {
    Ok(Amount::parse(s).map_err(crate::ledger::Reason::from)?)
}

fn opt_amount(s: &Option<String>) -> Result<Option<Amount>, Error> {
    s.as_deref().map(amount).transpose()
}

fn text(field: &'static str, s: &str) -> Result<Text, Error> {
    Ok(Text::new(field, s)?)
}

fn opt_text(field: &'static str, s: &Option<String>) -> Result<Option<Text>, Error> {
    s.as_deref().map(|s| text(field, s)).transpose()
}

fn mode(v: i32) -> Result<Mode, Error> {
    match pb::Mode::try_from(v) {
        Ok(pb::Mode::Prepaid) => Ok(Mode::Prepaid),
        Ok(pb::Mode::Contract) => Ok(Mode::Contract),
        Err(_) => Err(Error::InvalidRequest(format!("mode {v} is not a known value"))),
    }
}

fn service(v: i32) -> Result<Service, Error> {
    match pb::Service::try_from(v) {
        Ok(pb::Service::ApiRequest) => Ok(Service::ApiRequest),
        Ok(pb::Service::DedicatedEndpoint) => Ok(Service::DedicatedEndpoint),
        Ok(pb::Service::FineTuning) => Ok(Service::FineTuning),
        Ok(pb::Service::Evaluation) => Ok(Service::Evaluation),
        Ok(pb::Service::Other) => Ok(Service::Other),
        Err(_) => Err(Error::InvalidRequest(format!("service {v} is not a known value"))),
    }
}

fn debit_mode(v: i32) -> Result<DebitMode, Error> {
    match pb::DebitMode::try_from(v) {
        Ok(pb::DebitMode::Strict) => Ok(DebitMode::Strict),
        Ok(pb::DebitMode::Metered) => Ok(DebitMode::Metered),
        Err(_) => Err(Error::InvalidRequest(format!("debit mode {v} is not a known value"))),
    }
}

/// The account the operation is for, as given (unchecked).
pub fn account_of(op: &Op) -> &str {
    match op {
        Op::OpenAccount(m) => &m.account,
        Op::CheckAccess(m) => &m.account,
        Op::Debit(m) => &m.account,
        Op::Hold(m) => &m.account,
        Op::Capture(m) => &m.account,
        Op::Release(m) => &m.account,
        Op::Purchase(m) => &m.account,
        Op::Grant(m) => &m.account,
        Op::SetAutoRecharge(m) => &m.account,
        Op::SetGrantExpiry(m) => &m.account,
        Op::ClosePeriod(m) => &m.account,
        Op::PayInvoice(m) => &m.account,
        Op::Freeze(m) => &m.account,
        Op::Unfreeze(m) => &m.account,
        Op::Close(m) => &m.account,
        Op::Adjust(m) => &m.account,
        Op::Balance(m) => &m.account,
    }
}

/// The operation's name, for metrics and role checks, before conversion.
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::OpenAccount(_) => "open_account",
        Op::CheckAccess(_) => "check_access",
        Op::Debit(_) => "debit",
        Op::Hold(_) => "hold",
        Op::Capture(_) => "capture",
        Op::Release(_) => "release",
        Op::Purchase(_) => "purchase",
        Op::Grant(_) => "grant",
        Op::SetAutoRecharge(_) => "set_auto_recharge",
        Op::SetGrantExpiry(_) => "set_grant_expiry",
        Op::ClosePeriod(_) => "close_period",
        Op::PayInvoice(_) => "pay_invoice",
        Op::Freeze(_) => "freeze",
        Op::Unfreeze(_) => "unfreeze",
        Op::Close(_) => "close",
        Op::Adjust(_) => "adjust",
        Op::Balance(_) => "balance",
    }
}

/// What a role may do, by operation name (`Command::name`).
pub fn allowed(role: Role, op: &str) -> bool {
    match role {
        Role::Admin => true,
        Role::Authorize => {
            matches!(
                op,
                "check_access"
                    | "debit"
                    | "hold"
                    | "capture"
                    | "release"
                    | "balance"
                    | "history"
                    | "statement"
                    | "items"
                    | "cluster_map"
            )
        }
    }
}

/// A wire request as a ledger request, or why not.
pub fn request(req: &pb::Request) -> Result<Request, Error> {
    let Some(op) = &req.op else {
        return Err(Error::InvalidRequest("the request names no operation".into()));
    };
    let (acct, k, command) = match op {
        Op::OpenAccount(m) => {
            let currency = if m.currency.is_empty() { Currency::USD } else { Currency::new(&m.currency)? };
            let command = Command::Open {
                mode: mode(m.mode)?,
                currency,
                past_due_suspends: m.past_due_suspends,
                credit_limit: opt_amount(&m.credit_limit)?,
            };
            (&m.account, &m.idempotency_key, command)
        }
        Op::CheckAccess(m) => (&m.account, &String::new(), Command::CheckAccess),
        Op::Debit(m) => {
            let command = Command::Debit {
                amount: amount(&m.amount)?,
                mode: debit_mode(m.mode)?,
                service: service(m.service)?,
                reference: opt_text("reference", &m.reference)?,
            };
            (&m.account, &m.idempotency_key, command)
        }
        Op::Hold(m) => {
            let command = Command::Hold {
                amount: amount(&m.amount)?,
                service: service(m.service)?,
                reference: opt_text("reference", &m.reference)?,
                timeout_ms: m.timeout_ms,
            };
            (&m.account, &m.idempotency_key, command)
        }
        Op::Capture(m) => {
            (&m.account, &m.idempotency_key, Command::Capture { hold_id: m.hold_id, amount: amount(&m.amount)? })
        }
        Op::Release(m) => (&m.account, &m.idempotency_key, Command::Release { hold_id: m.hold_id }),
        Op::Purchase(m) => {
            let command =
                Command::Purchase { amount: amount(&m.amount)?, reference: opt_text("reference", &m.reference)? };
            (&m.account, &m.idempotency_key, command)
        }
        Op::Grant(m) => {
            let priority = match m.priority {
                None => None,
                Some(p) => {
                    Some(u8::try_from(p).map_err(|_| Error::InvalidRequest(format!("priority {p} is not 0 to 255")))?)
                }
            };
            let command = Command::Grant {
                amount: amount(&m.amount)?,
                expires_at_ms: m.expires_at_ms,
                priority,
                reference: opt_text("reference", &m.reference)?,
            };
            (&m.account, &m.idempotency_key, command)
        }
        Op::SetAutoRecharge(m) => {
            let command = Command::SetAutoRecharge {
                enabled: m.enabled,
                amount: opt_amount(&m.amount)?,
                threshold: amount(&m.threshold)?,
            };
            (&m.account, &m.idempotency_key, command)
        }
        Op::SetGrantExpiry(m) => {
            let command = Command::SetGrantExpiry { grant_id: m.grant_id, expires_at_ms: m.expires_at_ms };
            (&m.account, &m.idempotency_key, command)
        }
        Op::ClosePeriod(m) => (&m.account, &m.idempotency_key, Command::ClosePeriod { due_at_ms: m.due_at_ms }),
        Op::PayInvoice(m) => {
            let command = Command::PayInvoice { invoice_id: m.invoice_id, amount: amount(&m.amount)? };
            (&m.account, &m.idempotency_key, command)
        }
        Op::Freeze(m) => (&m.account, &m.idempotency_key, Command::Freeze { reason: text("reason", &m.reason)? }),
        Op::Unfreeze(m) => (&m.account, &m.idempotency_key, Command::Unfreeze { reason: text("reason", &m.reason)? }),
        Op::Close(m) => (&m.account, &m.idempotency_key, Command::Close { reason: text("reason", &m.reason)? }),
        Op::Adjust(m) => {
            let command = Command::Adjust { amount: amount(&m.amount)?, reason: text("reason", &m.reason)? };
            (&m.account, &m.idempotency_key, command)
        }
        Op::Balance(m) => (&m.account, &String::new(), Command::Balance),
    };
    Ok(Request { account: account(acct)?, key: key(k)?, command })
}

fn status(s: Status) -> i32 {
    (match s {
        Status::Inactive => pb::Status::Inactive,
        Status::Active => pb::Status::Active,
        Status::Suspended => pb::Status::Suspended,
        Status::Frozen => pb::Status::Frozen,
        Status::Closed => pb::Status::Closed,
    }) as i32
}

/// A refusal as the wire carries it.
pub fn refusal(e: &Error) -> pb::Refusal {
    pb::Refusal { code: e.code().to_string(), message: e.to_string() }
}

/// One result as a tagged wire reply.
pub fn reply(id: u64, result: Result<Reply, Error>) -> pb::Reply {
    let result = match result {
        Ok(r) => pb::reply::Result::Accepted(accepted(r)),
        Err(e) => pb::reply::Result::Refusal(refusal(&e)),
    };
    pb::Reply { id, result: Some(result) }
}

fn accepted(r: Reply) -> pb::Accepted {
    use pb::accepted::Detail as D;
    let s = |a: Amount| a.to_string();
    let detail = match r.detail {
        Detail::None => None,
        Detail::Debited { amount, debt_added } => {
            Some(D::Debited(pb::Debited { amount: s(amount), debt_added: s(debt_added) }))
        }
        Detail::HoldPlaced { hold_id, expires_at_ms } => Some(D::HoldPlaced(pb::HoldPlaced { hold_id, expires_at_ms })),
        Detail::Captured { hold_id, captured, released } => {
            Some(D::Captured(pb::Captured { hold_id, captured: s(captured), released: s(released) }))
        }
        Detail::Released { hold_id, released } => Some(D::Released(pb::Released { hold_id, released: s(released) })),
        Detail::Credited { grant_id, debt_paid } => {
            Some(D::Credited(pb::Credited { grant_id, debt_paid: s(debt_paid) }))
        }
        Detail::AutoRecharge { purchases_planned } => Some(D::AutoRecharge(pb::AutoRechargePlan { purchases_planned })),
        Detail::Invoiced { invoice_id, amount } => Some(D::Invoiced(pb::Invoiced { invoice_id, amount: s(amount) })),
        Detail::InvoicePaid { invoice_id, outstanding } => {
            Some(D::InvoicePaid(pb::InvoicePaid { invoice_id, outstanding: s(outstanding) }))
        }
        Detail::ExpirySet { grants } => Some(D::ExpirySet(pb::ExpirySet { grants })),
        Detail::Balance(view) => Some(D::BalanceView(balance_view(&view))),
    };
    pb::Accepted {
        status: status(r.status),
        balance: s(r.balance),
        available: s(r.available),
        replayed: r.replayed,
        detail,
    }
}

pub fn balance_view(v: &BalanceView) -> pb::BalanceView {
    let s = |a: Amount| a.to_string();
    let a = &v.auto_recharge;
    pb::BalanceView {
        account: v.account.as_str().to_string(),
        mode: match v.mode {
            Mode::Prepaid => pb::Mode::Prepaid as i32,
            Mode::Contract => pb::Mode::Contract as i32,
        },
        currency: v.currency.as_str().to_string(),
        status: status(v.status),
        refusal: v.refusal.clone(),
        refusal_message: v.refusal_message.clone(),
        balance: s(v.balance),
        available: s(v.available),
        held: s(v.held),
        debt: s(v.debt),
        free: s(v.free),
        purchased: s(v.purchased),
        adjusted: s(v.adjusted),
        lifetime_purchased: s(v.lifetime_purchased),
        period_usage: s(v.period_usage),
        invoiced_outstanding: s(v.invoiced_outstanding),
        past_due: v.past_due,
        credit_limit: v.credit_limit.map(s),
        open_holds: v.open_holds,
        grants: v.grants,
        auto_recharge_enabled: a.enabled,
        auto_recharge_amount: s(a.amount),
        auto_recharge_threshold: s(a.threshold),
        auto_recharge_paused: a
            .paused
            .map(|p| serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
        auto_recharge_failures: a.failures,
        auto_recharge_attempt_in_flight: a.attempt_in_flight,
        auto_recharge_retry_at_ms: a.retry_at_ms,
    }
}

/// An event's name and fields, as history and webhooks show them. The name
/// is `Event::name` — the one vocabulary of docs/events.md, the demo and
/// the rules (`recharge_started`, `hold_expired`, `invoice_generated`) —
/// not the Rust variant's; the fields are the variant's.
pub fn event_json(record: &EventRecord) -> (String, serde_json::Value) {
    let kind = record.event.name().to_string();
    match serde_json::to_value(&record.event) {
        Ok(serde_json::Value::Object(map)) if map.len() == 1 => {
            let fields = map.into_iter().next().map(|(_, f)| f).unwrap_or_default();
            (kind, fields)
        }
        Ok(serde_json::Value::String(_)) => (kind, serde_json::Value::Object(Default::default())),
        Ok(other) => (kind, other),
        Err(e) => (kind, serde_json::Value::String(e.to_string())),
    }
}

fn service_code(s: Service) -> i32 {
    (match s {
        Service::ApiRequest => pb::Service::ApiRequest,
        Service::DedicatedEndpoint => pb::Service::DedicatedEndpoint,
        Service::FineTuning => pb::Service::FineTuning,
        Service::Evaluation => pb::Service::Evaluation,
        Service::Other => pb::Service::Other,
    }) as i32
}

/// A wire status as the ledger's.
pub fn status_of(v: i32) -> Result<Status, Error> {
    match pb::Status::try_from(v) {
        Ok(pb::Status::Inactive) => Ok(Status::Inactive),
        Ok(pb::Status::Active) => Ok(Status::Active),
        Ok(pb::Status::Suspended) => Ok(Status::Suspended),
        Ok(pb::Status::Frozen) => Ok(Status::Frozen),
        Ok(pb::Status::Closed) => Ok(Status::Closed),
        Err(_) => Err(Error::InvalidRequest(format!("status {v} is not a known value"))),
    }
}

/// A value's serde name (`GrantSource::Free` → "free").
fn name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

pub fn statement(st: &crate::node::reads::Statement) -> pb::StatementReply {
    pb::StatementReply {
        from_ms: st.from_ms,
        to_ms: st.to_ms,
        usage: st
            .usage
            .by_service
            .iter()
            .map(|(s, a)| pb::ServiceUsage { service: service_code(*s), amount: a.to_string() })
            .collect(),
        usage_total: st.usage.total.to_string(),
        series: st.series.iter().map(|(at, b)| pb::BalancePoint { at_ms: *at, balance: b.to_string() }).collect(),
        records_read: st.records_read,
    }
}

pub fn items(it: &crate::node::reads::Items) -> pb::ItemsReply {
    let text = |t: &Option<crate::ledger::Text>| t.as_ref().map(|t| t.as_str().to_string()).unwrap_or_default();
    pb::ItemsReply {
        holds: it
            .holds
            .iter()
            .map(|h| pb::HoldItem {
                id: h.id,
                amount: h.amount.to_string(),
                service: service_code(h.service),
                reference: text(&h.reference),
                created_at_ms: h.created_at_ms,
                expires_at_ms: h.expires_at_ms,
            })
            .collect(),
        grants: it
            .grants
            .iter()
            .map(|g| pb::GrantItem {
                id: g.id,
                source: name(&g.source),
                original: g.original.to_string(),
                remaining: g.remaining.to_string(),
                created_at_ms: g.created_at_ms,
                expires_at_ms: g.expires_at_ms,
                priority: u32::from(g.priority),
                reference: text(&g.reference),
            })
            .collect(),
        invoices: it
            .invoices
            .iter()
            .map(|i| pb::InvoiceItem {
                id: i.id,
                amount: i.amount.to_string(),
                paid: i.paid.to_string(),
                source: name(&i.source),
                issued_at_ms: i.issued_at_ms,
                due_at_ms: i.due_at_ms,
                past_due: i.past_due,
            })
            .collect(),
        next_after: it.next_after,
    }
}

pub fn accounts(page: &crate::node::reads::AccountPage) -> pb::AccountsReply {
    pb::AccountsReply {
        accounts: page
            .accounts
            .iter()
            .map(|l| pb::AccountLine {
                account: l.account.as_str().to_string(),
                status: status(l.status),
                balance: l.balance.to_string(),
                lifetime_purchased: l.lifetime_purchased.to_string(),
            })
            .collect(),
        next_after: page.next_after.as_ref().map(|a| a.as_str().to_string()),
    }
}

pub fn history_record(record: &EventRecord) -> pb::HistoryRecord {
    let (kind, fields) = event_json(record);
    pb::HistoryRecord {
        seq: record.seq,
        at_ms: record.at_ms,
        balance_after: record.balance_after.to_string(),
        kind,
        json: fields.to_string(),
    }
}
