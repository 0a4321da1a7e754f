//! `prepaid serve` and `prepaid account …`: the served node and the command
//! line against it (over gRPC with `prepaid::Client`).

use std::sync::Arc;

use prepaid::wire::pb;
use prepaid::wire::pb::request::Op;
use prepaid::{Client, ClientError, HttpGateway, Node, NodeConfig, PaymentGateway, SimulatedGateway};
use serde_json::{Value, json};

use crate::{Failure, Flags};

pub fn serve(f: &Flags) -> Result<(), Failure> {
    let mut config = match f.text("--config") {
        Some(path) => NodeConfig::load(std::path::Path::new(&path)),
        None => {
            let mut c = NodeConfig::default();
            c.apply_env(|name| std::env::var(name).ok()).map(|_| c)
        }
    }
    .map_err(|e| Failure::Run(e.to_string()))?;
    if let Some(dir) = f.text("--data-dir") {
        config.node.data_dir = dir.into();
    }
    if let Some(url) = f.text("--gateway-url") {
        config.recharge.gateway_url = url;
    }
    if f.flag("--simulated-gateway") {
        config.recharge.simulated_gateway = true;
    }
    let ephemeral = f.flag("--ephemeral");
    f.done()?;
    config.validate().map_err(|e| Failure::Run(e.to_string()))?;
    let gateway = serve_gateway(&config, ephemeral)?;
    if config.server.tokens.is_empty() {
        eprintln!(
            "prepaid: warning: no API tokens configured ([[server.tokens]] or PREPAID_TOKENS): every call is refused"
        );
    }
    // Two runtimes: the node's actors on one, the network side (HTTP/2,
    // decoding, the overload door) on another with `server.io_threads`
    // threads, so a node busy to its bound still reads calls and sheds them
    // at once instead of after its own queue.
    let node_runtime = crate::runtime()?;
    let io_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.io_threads)
        .thread_name("prepaid-io")
        .enable_all()
        .build()
        .map_err(|e| Failure::Run(e.to_string()))?;
    let node = node_runtime.block_on(Node::start(config.clone(), gateway)).map_err(|e| Failure::Run(e.to_string()))?;
    io_runtime.block_on(async move {
        prepaid::server::run(config, node, prepaid::server::termination(), |bound| {
            // Tests and scripts read this line for the ports.
            println!("prepaid: serving gRPC on {} and HTTP on {}", bound.grpc, bound.http);
        })
        .await
        .map_err(|e| Failure::Run(e.to_string()))
    })?;
    println!("prepaid: stopped cleanly");
    Ok(())
}

/// The safe defaults of a served node: balances go to a data dir that
/// outlives the process unless `--ephemeral` says otherwise, and
/// auto-recharge charges a real gateway unless the simulated one is named.
fn serve_gateway(config: &NodeConfig, ephemeral: bool) -> Result<Arc<dyn PaymentGateway>, Failure> {
    let no_dir = config.node.data_dir.as_os_str().is_empty();
    match (no_dir, ephemeral) {
        (true, false) => {
            return Err(Failure::Run(
                "no data dir: set node.data_dir, PREPAID_DATA_DIR or --data-dir (or --ephemeral to keep balances in a temporary directory deleted at stop)".into(),
            ));
        }
        (false, true) => {
            return Err(Failure::Run("--ephemeral and a data dir exclude each other: choose one".into()));
        }
        (true, true) => eprintln!("prepaid: --ephemeral: balances live in a temporary directory deleted at stop"),
        (false, false) => {}
    }
    let r = &config.recharge;
    if !r.gateway_url.is_empty() {
        let timeout = std::time::Duration::from_millis(config.node.recharge_charge_timeout_ms);
        return Ok(Arc::new(HttpGateway::new(&r.gateway_url, timeout).map_err(Failure::Run)?));
    }
    if r.simulated_gateway {
        tracing::warn!("simulated gateway: every auto-recharge succeeds and no money moves");
        return Ok(Arc::new(SimulatedGateway::new()));
    }
    Err(Failure::Run(
        "no payment gateway: set recharge.gateway_url, PREPAID_GATEWAY_URL or --gateway-url (or --simulated-gateway for demos and tests, which grants credits for nothing)".into(),
    ))
}

const ACCOUNT_USAGE: &str = "\
usage: prepaid account <operation> --account ID [flags] [--addr HOST:PORT] [--token T] [--json]

  --addr defaults to $PREPAID_ADDR or 127.0.0.1:7070; --token to $PREPAID_TOKEN.
  Operations that move money take --key K (default: a new key, printed so you
  can retry with it).

operations:
  open [--mode prepaid|contract] [--currency USD] [--credit-limit X]
  show | check
  history [--after SEQ] [--limit N]
  purchase --amount X [--reference R]
  grant --amount X [--expires-at-ms T] [--priority P] [--reference R]
  debit --amount X [--metered] [--service S] [--reference R]
  hold --amount X [--timeout-ms T] [--service S] [--reference R]
  capture --hold ID --amount X
  release --hold ID
  auto-recharge (--enable --threshold X [--amount Y] | --disable)
  expire-grants --at-ms T [--grant ID]
  close-period [--due-at-ms T]
  pay-invoice --invoice ID --amount X
  freeze | unfreeze | close --reason TEXT
  adjust --amount X --reason TEXT
services: api_request (default), dedicated_endpoint, fine_tuning, evaluation, other";

/// `prepaid account …`; a usage error shows the account usage only, not
/// the top-level one.
pub fn account(args: &[String]) -> Result<(), Failure> {
    account_op(args).map_err(|f| match f {
        Failure::Usage(m) if m.contains(ACCOUNT_USAGE) => Failure::Shown(m),
        Failure::Usage(m) => {
            Failure::Shown(format!("{m}\n\n`prepaid account help` lists every operation and its flags"))
        }
        other => other,
    })
}

fn account_op(args: &[String]) -> Result<(), Failure> {
    let Some(op) = args.first() else {
        return Err(Failure::Usage(format!("account needs an operation\n\n{ACCOUNT_USAGE}")));
    };
    if op == "help" {
        println!("{ACCOUNT_USAGE}");
        return Ok(());
    }
    let f = crate::parse(&args[1..])?;
    let addr = f.text("--addr").or_else(|| std::env::var("PREPAID_ADDR").ok()).unwrap_or("127.0.0.1:7070".into());
    let token = f.text("--token").or_else(|| std::env::var("PREPAID_TOKEN").ok()).unwrap_or_default();
    let as_json = f.flag("--json");
    let account =
        f.text("--account").ok_or_else(|| Failure::Usage(format!("--account is required\n\n{ACCOUNT_USAGE}")))?;
    let mut generated_key = None;
    let mut key = || {
        f.text("--key").unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let k = format!("cli-{}-{nanos}", std::process::id());
            generated_key = Some(k.clone());
            k
        })
    };
    let need = |name: &str| f.text(name).ok_or_else(|| Failure::Usage(format!("{op} needs {name}")));
    let number = |name: &str| -> Result<Option<u64>, Failure> {
        f.text(name).map(|v| v.parse().map_err(|_| Failure::Usage(format!("{name} takes a whole number")))).transpose()
    };
    let service = |f: &Flags| -> Result<i32, Failure> {
        let s = match f.text("--service").as_deref() {
            None | Some("api_request") => pb::Service::ApiRequest,
            Some("dedicated_endpoint") => pb::Service::DedicatedEndpoint,
            Some("fine_tuning") => pb::Service::FineTuning,
            Some("evaluation") => pb::Service::Evaluation,
            Some("other") => pb::Service::Other,
            Some(other) => return Err(Failure::Usage(format!("unknown service {other:?}"))),
        };
        Ok(s as i32)
    };
    let a = account.clone();
    let operation = match op.as_str() {
        "history" => None,
        "open" => Some(Op::OpenAccount(pb::OpenAccount {
            account: a,
            idempotency_key: String::new(),
            mode: match f.text("--mode").as_deref() {
                None | Some("prepaid") => pb::Mode::Prepaid as i32,
                Some("contract") => pb::Mode::Contract as i32,
                Some(other) => return Err(Failure::Usage(format!("--mode is prepaid or contract, not {other:?}"))),
            },
            currency: f.text("--currency").unwrap_or_default(),
            past_due_suspends: None,
            credit_limit: f.text("--credit-limit"),
        })),
        "show" => Some(Op::Balance(pb::Balance { account: a })),
        "check" => Some(Op::CheckAccess(pb::CheckAccess { account: a })),
        "purchase" => Some(Op::Purchase(pb::Purchase {
            account: a,
            idempotency_key: key(),
            amount: need("--amount")?,
            reference: f.text("--reference"),
        })),
        "grant" => Some(Op::Grant(pb::Grant {
            account: a,
            idempotency_key: key(),
            amount: need("--amount")?,
            expires_at_ms: number("--expires-at-ms")?,
            priority: number("--priority")?.map(|p| p.min(u32::MAX as u64) as u32),
            reference: f.text("--reference"),
        })),
        "debit" => Some(Op::Debit(pb::Debit {
            account: a,
            idempotency_key: key(),
            amount: need("--amount")?,
            mode: if f.flag("--metered") { pb::DebitMode::Metered } else { pb::DebitMode::Strict } as i32,
            service: service(&f)?,
            reference: f.text("--reference"),
        })),
        "hold" => Some(Op::Hold(pb::Hold {
            account: a,
            idempotency_key: key(),
            amount: need("--amount")?,
            service: service(&f)?,
            reference: f.text("--reference"),
            timeout_ms: number("--timeout-ms")?,
        })),
        "capture" => Some(Op::Capture(pb::Capture {
            account: a,
            idempotency_key: key(),
            hold_id: number("--hold")?.ok_or_else(|| Failure::Usage("capture needs --hold".into()))?,
            amount: need("--amount")?,
        })),
        "release" => Some(Op::Release(pb::Release {
            account: a,
            idempotency_key: key(),
            hold_id: number("--hold")?.ok_or_else(|| Failure::Usage("release needs --hold".into()))?,
        })),
        "auto-recharge" => {
            let enabled = match (f.flag("--enable"), f.flag("--disable")) {
                (true, false) => true,
                (false, true) => false,
                _ => return Err(Failure::Usage("auto-recharge takes --enable or --disable".into())),
            };
            // Enabling without a threshold used to mean a threshold of 0
            // (recharge only once the balance is gone): say it instead.
            let threshold = match (enabled, f.text("--threshold")) {
                (_, Some(t)) => t,
                (false, None) => "0".into(),
                (true, None) => {
                    return Err(Failure::Usage(
                        "auto-recharge --enable needs --threshold (buy when the balance falls below it)".into(),
                    ));
                }
            };
            Some(Op::SetAutoRecharge(pb::SetAutoRecharge {
                account: a,
                idempotency_key: key(),
                enabled,
                amount: f.text("--amount"),
                threshold,
            }))
        }
        "expire-grants" => Some(Op::SetGrantExpiry(pb::SetGrantExpiry {
            account: a,
            idempotency_key: key(),
            grant_id: number("--grant")?,
            expires_at_ms: number("--at-ms")?.ok_or_else(|| Failure::Usage("expire-grants needs --at-ms".into()))?,
        })),
        "close-period" => Some(Op::ClosePeriod(pb::ClosePeriod {
            account: a,
            idempotency_key: key(),
            due_at_ms: number("--due-at-ms")?,
        })),
        "pay-invoice" => Some(Op::PayInvoice(pb::PayInvoice {
            account: a,
            idempotency_key: key(),
            invoice_id: number("--invoice")?.ok_or_else(|| Failure::Usage("pay-invoice needs --invoice".into()))?,
            amount: need("--amount")?,
        })),
        "freeze" => Some(Op::Freeze(pb::Freeze { account: a, idempotency_key: key(), reason: need("--reason")? })),
        "unfreeze" => {
            Some(Op::Unfreeze(pb::Unfreeze { account: a, idempotency_key: key(), reason: need("--reason")? }))
        }
        "close" => Some(Op::Close(pb::Close { account: a, idempotency_key: key(), reason: need("--reason")? })),
        "adjust" => Some(Op::Adjust(pb::Adjust {
            account: a,
            idempotency_key: key(),
            amount: need("--amount")?,
            reason: need("--reason")?,
        })),
        other => return Err(Failure::Usage(format!("unknown account operation {other:?}\n\n{ACCOUNT_USAGE}"))),
    };
    let (after, limit) = if operation.is_none() { (number("--after")?, number("--limit")?) } else { (None, None) };
    f.done()?;
    let generated_key = generated_key;
    crate::runtime()?.block_on(async move {
        let client = Client::connect(&addr, &token).await.map_err(|e| Failure::Run(e.to_string()))?;
        let Some(operation) = operation else {
            let limit = u32::try_from(limit.unwrap_or(100)).unwrap_or(u32::MAX);
            let records = client
                .history(&account, after.unwrap_or(0), limit)
                .await
                .map_err(|e| read_failed(e, &addr, as_json))?;
            print_history(&records, as_json);
            return Ok(());
        };
        let read = matches!(operation, Op::Balance(_) | Op::CheckAccess(_));
        let accepted = client.call(operation).await.map_err(|e| {
            if read {
                return read_failed(e, &addr, as_json);
            }
            match (&generated_key, &e) {
                // The message says to retry with the same key: say which.
                (Some(k), ClientError::OutcomeUnknown(detail)) => {
                    let detail = detail.split("; retry with the same idempotency key").next().unwrap_or(detail);
                    Failure::Run(format!(
                        "outcome unknown ({detail}); retry with --key {k}: the same key applies it at most once"
                    ))
                }
                _ => refused(e, as_json),
            }
        })?;
        if as_json {
            println!("{}", accepted_json(&accepted));
        } else {
            print_accepted(&accepted);
            if let Some(k) = generated_key {
                println!("key          {k}");
            }
        }
        Ok(())
    })
}

/// A refusal: printed (as JSON with --json), exit 1. A refusal's message
/// already starts with its code.
fn refused(e: ClientError, as_json: bool) -> Failure {
    if as_json {
        println!("{}", json!({ "error": { "code": e.code(), "message": e.to_string() } }));
    }
    match e {
        ClientError::Refused { .. } => Failure::Run(e.to_string()),
        other => Failure::Run(format!("{} ({})", other, other.code())),
    }
}

/// A read that got no answer: nothing to retry with a key, and most likely
/// the wrong address.
fn read_failed(e: ClientError, addr: &str, as_json: bool) -> Failure {
    match e {
        ClientError::OutcomeUnknown(detail) => {
            // The client's own advice (retry with the same key) is for writes.
            let detail = detail.split("; retry with the same idempotency key").next().unwrap_or(&detail);
            let message = format!(
                "no answer from {addr} ({detail}); is it the node's gRPC address (server.grpc_addr, not the HTTP one)? A read is safe to repeat"
            );
            if as_json {
                println!("{}", json!({ "error": { "code": "outcome_unknown", "message": message } }));
            }
            Failure::Run(message)
        }
        other => refused(other, as_json),
    }
}

fn status_name(s: i32) -> &'static str {
    match pb::Status::try_from(s) {
        Ok(pb::Status::Inactive) => "inactive",
        Ok(pb::Status::Active) => "active",
        Ok(pb::Status::Suspended) => "suspended",
        Ok(pb::Status::Frozen) => "frozen",
        Ok(pb::Status::Closed) => "closed",
        Err(_) => "unknown",
    }
}

fn view_json(v: &pb::BalanceView) -> Value {
    json!({
        "account": v.account, "currency": v.currency, "status": status_name(v.status),
        "mode": if v.mode == pb::Mode::Contract as i32 { "contract" } else { "prepaid" },
        "refusal": v.refusal, "refusal_message": v.refusal_message,
        "balance": v.balance, "available": v.available, "held": v.held, "debt": v.debt,
        "free": v.free, "purchased": v.purchased, "adjusted": v.adjusted,
        "lifetime_purchased": v.lifetime_purchased, "period_usage": v.period_usage,
        "invoiced_outstanding": v.invoiced_outstanding, "past_due": v.past_due, "credit_limit": v.credit_limit,
        "open_holds": v.open_holds, "grants": v.grants,
        "auto_recharge": {
            "enabled": v.auto_recharge_enabled, "amount": v.auto_recharge_amount,
            "threshold": v.auto_recharge_threshold, "paused": v.auto_recharge_paused,
            "failures": v.auto_recharge_failures, "attempt_in_flight": v.auto_recharge_attempt_in_flight,
            "retry_at_ms": v.auto_recharge_retry_at_ms,
        },
    })
}

fn detail_json(d: &Option<pb::accepted::Detail>) -> Value {
    use pb::accepted::Detail as D;
    match d {
        None => Value::Null,
        Some(D::Debited(x)) => json!({ "debited": { "amount": x.amount, "debt_added": x.debt_added } }),
        Some(D::HoldPlaced(x)) => json!({ "hold_placed": { "hold_id": x.hold_id, "expires_at_ms": x.expires_at_ms } }),
        Some(D::Captured(x)) => {
            json!({ "captured": { "hold_id": x.hold_id, "captured": x.captured, "released": x.released } })
        }
        Some(D::Released(x)) => json!({ "released": { "hold_id": x.hold_id, "released": x.released } }),
        Some(D::Credited(x)) => json!({ "credited": { "grant_id": x.grant_id, "debt_paid": x.debt_paid } }),
        Some(D::AutoRecharge(x)) => json!({ "auto_recharge": { "purchases_planned": x.purchases_planned } }),
        Some(D::Invoiced(x)) => json!({ "invoiced": { "invoice_id": x.invoice_id, "amount": x.amount } }),
        Some(D::InvoicePaid(x)) => {
            json!({ "invoice_paid": { "invoice_id": x.invoice_id, "outstanding": x.outstanding } })
        }
        Some(D::ExpirySet(x)) => json!({ "expiry_set": { "grants": x.grants } }),
        Some(D::BalanceView(v)) => json!({ "balance_view": view_json(v) }),
    }
}

fn accepted_json(a: &pb::Accepted) -> Value {
    json!({
        "ok": { "status": status_name(a.status), "balance": a.balance, "available": a.available,
                "detail": detail_json(&a.detail) },
        "replayed": a.replayed
    })
}

fn print_accepted(a: &pb::Accepted) {
    if let Some(pb::accepted::Detail::BalanceView(v)) = &a.detail {
        println!("account      {} ({}, {})", v.account, status_name(v.status), v.currency);
        println!("balance      {}   available {}   held {}   debt {}", v.balance, v.available, v.held, v.debt);
        println!("credits      free {}   purchased {}   adjusted {}", v.free, v.purchased, v.adjusted);
        if let (Some(code), Some(msg)) = (&v.refusal, &v.refusal_message) {
            println!("access       refused: {msg} ({code})");
        }
        println!(
            "auto-recharge {} (amount {}, threshold {})",
            if v.auto_recharge_enabled { "on" } else { "off" },
            v.auto_recharge_amount,
            v.auto_recharge_threshold
        );
        return;
    }
    if a.replayed {
        println!("replayed     the first result of this key, given again: nothing ran now");
    }
    println!("status       {}", status_name(a.status));
    println!("balance      {}", a.balance);
    println!("available    {}", a.available);
    if let Value::Object(map) = detail_json(&a.detail) {
        for (name, fields) in map {
            println!("{name:<12} {fields}");
        }
    }
}

fn print_history(records: &[pb::HistoryRecord], as_json: bool) {
    for r in records {
        if as_json {
            let event: Value = serde_json::from_str(&r.json).unwrap_or(Value::Null);
            let line = json!({ "seq": r.seq, "at_ms": r.at_ms, "balance_after": r.balance_after, "kind": r.kind, "event": event });
            println!("{line}");
        } else {
            println!("{:>6}  {:>14}  {:<22} balance {:<14} {}", r.seq, r.at_ms, r.kind, r.balance_after, r.json);
        }
    }
}
