//! `prepaid torture-client`: one client process of the crash torture
//! (tests/torture.rs). It runs money operations against a served node over
//! one connection until the node goes away, and prints one line per
//! request as soon as it knows what became of it:
//!
//! ```text
//! ok <account> <reference> <balance>       applied; the reply's balance
//! no <account> <reference> <code>          refused by the ledger: not applied
//! unknown <account> <reference> <op> <amount> <key>
//!                                          no answer: applied once or not at all
//! ```
//!
//! An `unknown` line carries what the driver needs to resend the request
//! under the same key after the restart. The process exits once the node
//! is unreachable (after the SIGKILL), or after `--ops` requests.
//!
//! With `--resend FILE` it runs no load: it sends each request listed in
//! the file (`<account> <op> <amount> <key>` per line, from earlier
//! `unknown` lines) under its key, retrying node errors for a while, and
//! prints what became of each in the same format.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prepaid::wire::pb;
use prepaid::wire::pb::request::Op;
use prepaid::{Client, ClientError};

pub struct TortureArgs {
    pub addr: String,
    pub token: String,
    pub client: u64,
    pub seed: u64,
    pub accounts: u64,
    pub ops: u64,
    pub resend: Option<std::path::PathBuf>,
}

/// Callers sharing the connection.
const CALLERS: u64 = 8;

/// The request for `op` ("buy", "use", "meter", "hold") as the wire has it.
pub fn op(kind: &str, account: &str, key: &str, amount: &str) -> Option<Op> {
    let reference = Some(key.to_string());
    Some(match kind {
        "buy" => Op::Purchase(pb::Purchase {
            account: account.into(),
            idempotency_key: key.into(),
            amount: amount.into(),
            reference,
        }),
        "use" | "meter" => Op::Debit(pb::Debit {
            account: account.into(),
            idempotency_key: key.into(),
            amount: amount.into(),
            mode: if kind == "use" { pb::DebitMode::Strict } else { pb::DebitMode::Metered } as i32,
            reference,
            ..Default::default()
        }),
        "hold" => Op::Hold(pb::Hold {
            account: account.into(),
            idempotency_key: key.into(),
            amount: amount.into(),
            reference,
            ..Default::default()
        }),
        _ => return None,
    })
}

fn outcome(account: &str, kind: &str, amount: &str, key: &str, result: &Result<pb::Accepted, ClientError>) -> String {
    match result {
        Ok(a) => format!("ok {account} {key} {}", a.balance),
        Err(ClientError::Refused { code, .. }) if !is_node_error(code) => format!("no {account} {key} {code}"),
        Err(_) => format!("unknown {account} {key} {kind} {amount} {key}"),
    }
}

fn print(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Each listed request again, under its key, until it has an answer (or
/// 50 tries 20 ms apart).
async fn resend(client: &Client, file: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [account, kind, amount, key] = words[..] else { return Err(format!("a bad line: {line:?}")) };
        let op = op(kind, account, key, amount).ok_or_else(|| format!("an unknown operation: {line:?}"))?;
        let mut result = client.call(op.clone()).await;
        for _ in 0..50 {
            if result.is_ok() || matches!(&result, Err(ClientError::Refused { code, .. }) if !is_node_error(code)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            result = client.call(op.clone()).await;
        }
        print(&outcome(account, kind, amount, key, &result));
    }
    Ok(())
}

pub async fn client(args: TortureArgs) -> Result<(), String> {
    let client = Client::connect(&args.addr, &args.token)
        .await
        .map_err(|e| e.to_string())?
        .with_deadline(Duration::from_secs(5));
    if let Some(file) = &args.resend {
        return resend(&client, file).await;
    }
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let (client, next, stop) = (client.clone(), Arc::clone(&next), Arc::clone(&stop));
        let (id, seed, accounts, ops) = (args.client, args.seed, args.accounts, args.ops);
        tasks.push(tokio::spawn(async move {
            let mut rng = (seed ^ (id << 40) ^ (caller << 20)) | 1;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ops || stop.load(Ordering::Relaxed) {
                    return;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let account = format!("t_{}", rng % accounts);
                let cents = 1 + (rng >> 8) % 3_000;
                let kind = match (rng >> 24) % 10 {
                    0 | 1 => "buy",
                    2 => "meter",
                    3 => "hold",
                    _ => "use",
                };
                let cents = if kind == "buy" { cents + 500 } else { cents };
                let amount = format!("{}.{:02}", cents / 100, cents % 100);
                let key = format!("s{seed}c{id}n{n}");
                let op = op(kind, &account, &key, &amount).expect("a known kind");
                let line = outcome(&account, kind, &amount, &key, &client.call(op).await);
                if line.starts_with("unknown") {
                    // The node is going away (or refusing writes): stop.
                    stop.store(true, Ordering::Relaxed);
                }
                print(&line);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Codes that say nothing about the request itself: it may be retried.
pub fn is_node_error(code: &str) -> bool {
    matches!(code, "storage_unavailable" | "overloaded" | "shutting_down" | "internal")
}
