//! `prepaid serve` and `prepaid account …`: the served node and the command
//! line against it (over gRPC with `prepaid::Client`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use prepaid::wire::pb;
use prepaid::wire::pb::request::Op;
use prepaid::{Client, ClientError, HttpGateway, Node, NodeConfig, PaymentGateway, SimulatedGateway};
use serde_json::{Value, json};

use crate::Failure;

pub fn serve(
    config_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    gateway_url: Option<String>,
    simulated_gateway: bool,
    ephemeral: bool,
) -> Result<(), Failure> {
    let mut config = match config_file {
        Some(path) => NodeConfig::load(&path),
        None => {
            let mut c = NodeConfig::default();
            c.apply_env(|name| std::env::var(name).ok()).map(|_| c)
        }
    }
    .map_err(|e| Failure::Run(e.to_string()))?;
    if let Some(dir) = data_dir {
        config.node.data_dir = dir;
    }
    if let Some(url) = gateway_url {
        config.recharge.gateway_url = url;
    }
    if simulated_gateway {
        config.recharge.simulated_gateway = true;
    }
    config.validate().map_err(|e| Failure::Run(e.to_string()))?;
    let gateway = serve_gateway(&config, ephemeral)?;
    if config.server.tokens.is_empty() {
        tracing::warn!("no API tokens configured ([[server.tokens]] or PREPAID_TOKENS): every call is refused");
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
            say!("prepaid: serving gRPC on {} and HTTP on {}", bound.grpc, bound.http);
        })
        .await
        .map_err(|e| Failure::Run(e.to_string()))
    })?;
    say!("prepaid: stopped cleanly");
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
        (true, true) => tracing::warn!("--ephemeral: balances live in a temporary directory deleted at stop"),
        (false, false) => {}
    }
    let r = &config.recharge;
    if !r.enabled {
        tracing::info!("auto-recharge is off (recharge.enabled = false): no payment gateway");
        return Ok(Arc::new(prepaid::gateway::NoGateway));
    }
    if !r.gateway_url.is_empty() {
        let timeout = std::time::Duration::from_millis(config.node.recharge_charge_timeout_ms);
        let client = prepaid::httpc::Outbound::new(config.tls.ca_path()).map_err(Failure::Run)?;
        return Ok(Arc::new(HttpGateway::with_client(&r.gateway_url, timeout, &client).map_err(Failure::Run)?));
    }
    if r.simulated_gateway {
        tracing::warn!("simulated gateway: every auto-recharge succeeds and no money moves");
        return Ok(Arc::new(SimulatedGateway::new()));
    }
    Err(Failure::Run(
        "no payment gateway: set recharge.gateway_url, PREPAID_GATEWAY_URL or --gateway-url, or turn auto-recharge off (recharge.enabled = false, PREPAID_RECHARGE_ENABLED=false); --simulated-gateway is for demos and tests (it grants credits for nothing)".into(),
    ))
}

/// `prepaid account <operation>`: where the node is, and what to do.
#[derive(Args)]
pub struct AccountArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    op: AccountOp,
}

#[derive(Args)]
struct Conn {
    /// The node's gRPC address (https://HOST:PORT, or --ca-cert, for TLS)
    #[arg(long, global = true, value_name = "HOST:PORT", env = "PREPAID_ADDR", default_value = "127.0.0.1:7070")]
    addr: String,
    /// API token
    #[arg(long, global = true, env = "PREPAID_TOKEN", hide_env_values = true, default_value = "")]
    token: String,
    /// PEM file of the CA the node's TLS certificate chains to (implies TLS)
    #[arg(long, global = true, value_name = "FILE", env = "PREPAID_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Print the result as JSON
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
struct Who {
    /// The account id
    #[arg(long, value_name = "ID")]
    account: String,
}

#[derive(Args)]
struct Key {
    /// Idempotency key: the same key applies the operation at most once
    /// (default: a new key, printed so you can retry with it)
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Prepaid,
    Contract,
}

/// Named as in the proto and the JSON API (`api_request`, …).
#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
enum ServiceArg {
    ApiRequest,
    DedicatedEndpoint,
    FineTuning,
    Evaluation,
    Other,
}

impl ServiceArg {
    fn pb(self) -> i32 {
        (match self {
            ServiceArg::ApiRequest => pb::Service::ApiRequest,
            ServiceArg::DedicatedEndpoint => pb::Service::DedicatedEndpoint,
            ServiceArg::FineTuning => pb::Service::FineTuning,
            ServiceArg::Evaluation => pb::Service::Evaluation,
            ServiceArg::Other => pb::Service::Other,
        }) as i32
    }
}

/// What every operation that moves money names: the account, its key,
/// the amount (passed on as written: the node says what is wrong with it).
#[derive(Args)]
struct Move {
    #[command(flatten)]
    who: Who,
    #[command(flatten)]
    key: Key,
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    amount: String,
}

/// An operator's change of status, with its reason.
#[derive(Args)]
struct Reasoned {
    #[command(flatten)]
    who: Who,
    #[command(flatten)]
    key: Key,
    #[arg(long, value_name = "TEXT")]
    reason: String,
}

#[derive(Subcommand)]
enum AccountOp {
    /// Create the account (again with the same settings: nothing changes)
    Open {
        #[command(flatten)]
        who: Who,
        #[arg(long, value_enum, default_value = "prepaid")]
        mode: ModeArg,
        /// Three capital letters [default: USD]
        #[arg(long)]
        currency: Option<String>,
        /// Contract accounts: the most usage may reach before invoices are paid
        #[arg(long, value_name = "X")]
        credit_limit: Option<String>,
    },
    /// The balance with its parts, status and auto-recharge
    Show(Who),
    /// May the account make API calls now?
    Check(Who),
    /// A page of the ledger, oldest first
    History {
        #[command(flatten)]
        who: Who,
        /// Records after this sequence number
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
        /// Records in the page (at most ledger.history_page_max)
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
    },
    /// Usage by service over a time range, and the balance at evenly
    /// spaced instants (JSON)
    Statement {
        #[command(flatten)]
        who: Who,
        /// The range's start, Unix milliseconds [default: 30 days before --to-ms]
        #[arg(long, value_name = "MS")]
        from_ms: Option<u64>,
        /// The range's end (excluded), Unix milliseconds [default: now]
        #[arg(long, value_name = "MS")]
        to_ms: Option<u64>,
        /// Instants of the balance series (1 to 1000)
        #[arg(long, value_name = "N", default_value_t = 30)]
        points: u32,
    },
    /// A page of the open holds, grants with credit left, or unpaid
    /// invoices (JSON)
    Items {
        #[command(flatten)]
        who: Who,
        #[arg(long, value_parser = ["holds", "grants", "invoices"])]
        kind: String,
        /// Items with an id above this one
        #[arg(long, value_name = "ID", default_value_t = 0)]
        after: u64,
        /// Items in the page (at most ledger.history_page_max)
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
    },
    /// A credit pack paid for (at least the minimum purchase; activates)
    Purchase {
        #[command(flatten)]
        m: Move,
        #[arg(long)]
        reference: Option<String>,
    },
    /// Free credits (never activate)
    Grant {
        #[command(flatten)]
        m: Move,
        /// When the grant expires, in Unix milliseconds
        #[arg(long, value_name = "MS")]
        expires_at_ms: Option<u64>,
        /// Lower burns first among grants with the same expiry
        #[arg(long, value_name = "P")]
        priority: Option<u8>,
        #[arg(long)]
        reference: Option<String>,
    },
    /// Usage: strict (declined unless covered) or --metered (applied even past zero)
    Debit {
        #[command(flatten)]
        m: Move,
        #[arg(long)]
        metered: bool,
        #[arg(long, value_enum, default_value = "api_request")]
        service: ServiceArg,
        #[arg(long)]
        reference: Option<String>,
    },
    /// Reserve credits for a job (released by itself after the timeout)
    Hold {
        #[command(flatten)]
        m: Move,
        /// Hold lifetime in milliseconds [default: ledger.hold_timeout_default_ms]
        #[arg(long, value_name = "MS")]
        timeout_ms: Option<u64>,
        #[arg(long, value_enum, default_value = "api_request")]
        service: ServiceArg,
        #[arg(long)]
        reference: Option<String>,
    },
    /// Settle a hold at the final cost
    Capture {
        #[command(flatten)]
        m: Move,
        #[arg(long, value_name = "ID")]
        hold: u64,
    },
    /// Release a hold unused
    Release {
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        key: Key,
        #[arg(long, value_name = "ID")]
        hold: u64,
    },
    /// Turn auto-recharge on (buy --amount when the balance falls below
    /// --threshold) or off
    AutoRecharge {
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        key: Key,
        #[arg(long, conflicts_with = "disable", required_unless_present = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        /// Buy when the balance falls below this (needed with --enable)
        #[arg(long, value_name = "X", required_if_eq("enable", "true"))]
        threshold: Option<String>,
        /// Purchase size [default: ledger.recharge_amount_default]
        #[arg(long, value_name = "Y")]
        amount: Option<String>,
    },
    /// Set when grants expire (one with --grant, or all), with notice
    ExpireGrants {
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        key: Key,
        /// When, in Unix milliseconds
        #[arg(long, value_name = "MS")]
        at_ms: u64,
        #[arg(long, value_name = "ID")]
        grant: Option<u64>,
    },
    /// Invoice the open period
    ClosePeriod {
        #[command(flatten)]
        who: Who,
        #[command(flatten)]
        key: Key,
        /// Due date in Unix milliseconds [default: now + ledger.invoice_due_ms]
        #[arg(long, value_name = "MS")]
        due_at_ms: Option<u64>,
    },
    /// Pay an invoice (credits never pay invoices)
    PayInvoice {
        #[command(flatten)]
        m: Move,
        #[arg(long, value_name = "ID")]
        invoice: u64,
    },
    /// Stop all use of the account
    Freeze(Reasoned),
    /// Lift a freeze
    Unfreeze(Reasoned),
    /// Close the account (open holds are released)
    Close(Reasoned),
    /// Operator correction: positive credits, negative debits
    Adjust {
        #[command(flatten)]
        m: Move,
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
}

/// `prepaid account …`.
pub fn account(args: AccountArgs) -> Result<(), Failure> {
    let Conn { addr, token, ca_cert, json: as_json } = args.conn;
    let ca = crate::read_ca(ca_cert.as_deref())?;
    let mut generated_key = None;
    let mut key = |k: Key| {
        k.key.unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let k = format!("cli-{}-{nanos}", std::process::id());
            generated_key = Some(k.clone());
            k
        })
    };
    use AccountOp as A;
    let operation = match args.op {
        A::History { who, after, limit } => Err(Read::History(who.account, after, limit)),
        A::Statement { who, from_ms, to_ms, points } => {
            let to_ms = to_ms.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
            });
            let from_ms = from_ms.unwrap_or(to_ms.saturating_sub(30 * 86_400_000));
            Err(Read::Statement(who.account, from_ms, to_ms, points))
        }
        A::Items { who, kind, after, limit } => Err(Read::Items(who.account, kind, after, limit)),
        A::Open { who, mode, currency, credit_limit } => Ok(Op::OpenAccount(pb::OpenAccount {
            account: who.account,
            idempotency_key: String::new(),
            mode: match mode {
                ModeArg::Prepaid => pb::Mode::Prepaid,
                ModeArg::Contract => pb::Mode::Contract,
            } as i32,
            currency: currency.unwrap_or_default(),
            past_due_suspends: None,
            credit_limit,
        })),
        A::Show(who) => Ok(Op::Balance(pb::Balance { account: who.account })),
        A::Check(who) => Ok(Op::CheckAccess(pb::CheckAccess { account: who.account })),
        A::Purchase { m, reference } => Ok(Op::Purchase(pb::Purchase {
            idempotency_key: key(m.key),
            account: m.who.account,
            amount: m.amount,
            reference,
        })),
        A::Grant { m, expires_at_ms, priority, reference } => Ok(Op::Grant(pb::Grant {
            idempotency_key: key(m.key),
            account: m.who.account,
            amount: m.amount,
            expires_at_ms,
            priority: priority.map(u32::from),
            reference,
        })),
        A::Debit { m, metered, service, reference } => Ok(Op::Debit(pb::Debit {
            idempotency_key: key(m.key),
            account: m.who.account,
            amount: m.amount,
            mode: if metered { pb::DebitMode::Metered } else { pb::DebitMode::Strict } as i32,
            service: service.pb(),
            reference,
        })),
        A::Hold { m, timeout_ms, service, reference } => Ok(Op::Hold(pb::Hold {
            idempotency_key: key(m.key),
            account: m.who.account,
            amount: m.amount,
            service: service.pb(),
            reference,
            timeout_ms,
        })),
        A::Capture { m, hold } => Ok(Op::Capture(pb::Capture {
            idempotency_key: key(m.key),
            account: m.who.account,
            amount: m.amount,
            hold_id: hold,
        })),
        A::Release { who, key: k, hold } => {
            Ok(Op::Release(pb::Release { account: who.account, idempotency_key: key(k), hold_id: hold }))
        }
        A::AutoRecharge { who, key: k, enable, disable: _, threshold, amount } => {
            Ok(Op::SetAutoRecharge(pb::SetAutoRecharge {
                account: who.account,
                idempotency_key: key(k),
                enabled: enable,
                amount,
                // Required with --enable (clap says so); off needs none.
                threshold: threshold.unwrap_or_else(|| "0".into()),
            }))
        }
        A::ExpireGrants { who, key: k, at_ms, grant } => Ok(Op::SetGrantExpiry(pb::SetGrantExpiry {
            account: who.account,
            idempotency_key: key(k),
            grant_id: grant,
            expires_at_ms: at_ms,
        })),
        A::ClosePeriod { who, key: k, due_at_ms } => {
            Ok(Op::ClosePeriod(pb::ClosePeriod { account: who.account, idempotency_key: key(k), due_at_ms }))
        }
        A::PayInvoice { m, invoice } => Ok(Op::PayInvoice(pb::PayInvoice {
            idempotency_key: key(m.key),
            account: m.who.account,
            amount: m.amount,
            invoice_id: invoice,
        })),
        A::Freeze(r) => {
            Ok(Op::Freeze(pb::Freeze { idempotency_key: key(r.key), account: r.who.account, reason: r.reason }))
        }
        A::Unfreeze(r) => {
            Ok(Op::Unfreeze(pb::Unfreeze { idempotency_key: key(r.key), account: r.who.account, reason: r.reason }))
        }
        A::Close(r) => {
            Ok(Op::Close(pb::Close { idempotency_key: key(r.key), account: r.who.account, reason: r.reason }))
        }
        A::Adjust { m, reason } => {
            Ok(Op::Adjust(pb::Adjust { idempotency_key: key(m.key), account: m.who.account, amount: m.amount, reason }))
        }
    };
    let generated_key = generated_key;
    crate::runtime()?.block_on(async move {
        let client =
            Client::connect_with(&addr, &token, ca.as_deref()).await.map_err(|e| no_node(e, &addr, as_json))?;
        let operation = match operation {
            Ok(operation) => operation,
            Err(Read::History(account, after, limit)) => {
                let records = client.history(&account, after, limit).await.map_err(|e| refused(e, as_json))?;
                print_history(&records, as_json);
                return Ok(());
            }
            Err(Read::Statement(account, from_ms, to_ms, points)) => {
                let st = client.statement(&account, from_ms, to_ms, points).await.map_err(|e| refused(e, as_json))?;
                let usage: Vec<Value> = st
                    .usage
                    .iter()
                    .map(|u| json!({ "service": service_name(u.service), "amount": u.amount }))
                    .collect();
                let series: Vec<Value> =
                    st.series.iter().map(|p| json!({ "at_ms": p.at_ms, "balance": p.balance })).collect();
                say!(
                    "{}",
                    json!({ "from_ms": st.from_ms, "to_ms": st.to_ms, "usage": usage, "usage_total": st.usage_total,
                            "series": series, "records_read": st.records_read })
                );
                return Ok(());
            }
            Err(Read::Items(account, kind, after, limit)) => {
                let it = client.items(&account, &kind, after, limit).await.map_err(|e| refused(e, as_json))?;
                let list: Vec<Value> = match kind.as_str() {
                    "holds" => it
                        .holds
                        .iter()
                        .map(|h| {
                            json!({ "id": h.id, "amount": h.amount, "service": service_name(h.service),
                                          "reference": h.reference, "created_at_ms": h.created_at_ms,
                                          "expires_at_ms": h.expires_at_ms })
                        })
                        .collect(),
                    "grants" => it
                        .grants
                        .iter()
                        .map(|g| {
                            json!({ "id": g.id, "source": g.source, "original": g.original,
                                          "remaining": g.remaining, "created_at_ms": g.created_at_ms,
                                          "expires_at_ms": g.expires_at_ms, "priority": g.priority,
                                          "reference": g.reference })
                        })
                        .collect(),
                    _ => it
                        .invoices
                        .iter()
                        .map(|i| {
                            json!({ "id": i.id, "amount": i.amount, "paid": i.paid, "source": i.source,
                                          "issued_at_ms": i.issued_at_ms, "due_at_ms": i.due_at_ms,
                                          "past_due": i.past_due })
                        })
                        .collect(),
                };
                say!("{}", json!({ kind.as_str(): list, "next_after": it.next_after }));
                return Ok(());
            }
        };
        let accepted = client.call(operation).await.map_err(|e| match (&generated_key, &e) {
            // The message says to retry with the same key: say which.
            (Some(k), ClientError::OutcomeUnknown(detail)) => {
                let detail = detail.split("; retry with the same idempotency key").next().unwrap_or(detail);
                let message =
                    format!("outcome unknown ({detail}); retry with --key {k}: the same key applies it at most once");
                if as_json {
                    say!("{}", json!({ "error": { "code": "outcome_unknown", "message": message } }));
                }
                Failure::Run(message)
            }
            _ => refused(e, as_json),
        })?;
        if as_json {
            say!("{}", accepted_json(&accepted));
        } else {
            print_accepted(&accepted);
            if let Some(k) = generated_key {
                say!("key          {k}");
            }
        }
        Ok(())
    })
}

/// Nothing answered as a node: nothing was sent, so nothing to retry with
/// a key; most likely the wrong address.
fn no_node(e: ClientError, addr: &str, as_json: bool) -> Failure {
    let message = format!(
        "unavailable: no node answered at {addr} ({e}); is it the node's gRPC address (server.grpc_addr, not the HTTP one)? Nothing was sent"
    );
    if as_json {
        say!("{}", json!({ "error": { "code": "unavailable", "message": message } }));
    }
    Failure::Run(message)
}

/// A refusal: printed (as JSON with --json), exit 1. A refusal's message
/// already starts with its code.
fn refused(e: ClientError, as_json: bool) -> Failure {
    if as_json {
        say!("{}", json!({ "error": { "code": e.code(), "message": e.to_string() } }));
    }
    match e {
        ClientError::Refused { .. } => Failure::Run(e.to_string()),
        other => Failure::Run(format!("{} ({})", other, other.code())),
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
        say!("account      {} ({}, {})", v.account, status_name(v.status), v.currency);
        say!("balance      {}   available {}   held {}   debt {}", v.balance, v.available, v.held, v.debt);
        say!("credits      free {}   purchased {}   adjusted {}", v.free, v.purchased, v.adjusted);
        if let (Some(code), Some(msg)) = (&v.refusal, &v.refusal_message) {
            say!("access       refused: {msg} ({code})");
        }
        say!(
            "auto-recharge {} (amount {}, threshold {})",
            if v.auto_recharge_enabled { "on" } else { "off" },
            v.auto_recharge_amount,
            v.auto_recharge_threshold
        );
        if let Some(at) = v.auto_recharge_retry_at_ms {
            say!("              next try {}", human_time(at));
        }
        return;
    }
    if a.replayed {
        say!("replayed     the first result of this key, given again: nothing ran now");
    }
    say!("status       {}", status_name(a.status));
    say!("balance      {}", a.balance);
    say!("available    {}", a.available);
    if let Value::Object(map) = detail_json(&a.detail) {
        for (name, fields) in map {
            let parts: Vec<String> = match fields {
                Value::Object(fields) => fields.iter().map(|(k, v)| human_field(k, v)).collect(),
                other => vec![other.to_string()],
            };
            say!("{name:<12} {}", parts.join("   "));
        }
    }
}

/// `hold_id 3`, `expires 2026-12-03 07:44:03.120 UTC (in 1d 0h)`: times as
/// dates, not Unix milliseconds; nothing for a field that is absent.
fn human_field(name: &str, value: &Value) -> String {
    match (name.strip_suffix("_at_ms"), value) {
        (Some(what), Value::Number(n)) => match n.as_u64() {
            Some(ms) => format!("{what} {}", human_time(ms)),
            None => format!("{name} {n}"),
        },
        (_, Value::String(text)) => format!("{name} {text}"),
        (_, Value::Null) => format!("{name} -"),
        (_, other) => format!("{name} {other}"),
    }
}

/// Unix milliseconds as `YYYY-MM-DD hh:mm:ss.mmm UTC`, and how far from now.
fn human_time(ms: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let when = if ms >= now {
        format!("in {}", human_duration(ms - now))
    } else {
        format!("{} ago", human_duration(now - ms))
    };
    format!("{} ({when})", utc(ms))
}

/// A calendar date and time in UTC (Howard Hinnant's days-to-civil).
fn utc(ms: u64) -> String {
    let secs = ms / 1_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        ms % 1_000
    )
}

/// `2d 3h`, `5h 12m`, `3m 20s`, `850 ms`: the two largest units.
fn human_duration(ms: u64) -> String {
    let s = ms / 1_000;
    match s {
        0 => format!("{ms} ms"),
        1..60 => format!("{s}s"),
        60..3_600 => format!("{}m {}s", s / 60, s % 60),
        3_600..86_400 => format!("{}h {}m", s / 3_600, s % 3_600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// A read the command makes instead of an operation.
enum Read {
    History(String, u64, u32),
    Statement(String, u64, u64, u32),
    Items(String, String, u64, u32),
}

/// A wire service's name as the ledger spells it.
fn service_name(v: i32) -> &'static str {
    match pb::Service::try_from(v) {
        Ok(pb::Service::ApiRequest) => "api_request",
        Ok(pb::Service::DedicatedEndpoint) => "dedicated_endpoint",
        Ok(pb::Service::FineTuning) => "fine_tuning",
        Ok(pb::Service::Evaluation) => "evaluation",
        Ok(pb::Service::Other) | Err(_) => "other",
    }
}

fn print_history(records: &[pb::HistoryRecord], as_json: bool) {
    for r in records {
        if as_json {
            let event: Value = serde_json::from_str(&r.json).unwrap_or(Value::Null);
            let line = json!({ "seq": r.seq, "at_ms": r.at_ms, "balance_after": r.balance_after, "kind": r.kind, "event": event });
            say!("{line}");
        } else {
            // The event's fields as `name value`, times as dates.
            let fields = match serde_json::from_str::<Value>(&r.json) {
                Ok(Value::Object(fields)) => {
                    fields.iter().map(|(k, v)| human_field(k, v)).collect::<Vec<_>>().join("   ")
                }
                _ => r.json.clone(),
            };
            say!("{:>6}  {}  {:<22} balance {:<14} {fields}", r.seq, utc(r.at_ms), r.kind, r.balance_after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_dates_and_durations_in_human_output() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20.123 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
        assert_eq!(human_duration(850), "850 ms");
        assert_eq!(human_duration(200_000), "3m 20s");
        assert_eq!(human_duration(86_400_000 + 3 * 3_600_000), "1d 3h");
        assert_eq!(human_field("hold_id", &json!(3)), "hold_id 3");
        assert!(human_field("expires_at_ms", &json!(0)).starts_with("expires 1970-01-01 00:00:00.000 UTC ("));
    }
}
