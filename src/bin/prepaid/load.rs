//! Load on an embedded node: `prepaid bench --embedded`, and the crash
//! child the crash test kills at random moments.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prepaid::ledger::*;
use prepaid::wire::pb;
use prepaid::{Client, ClientError, ClusterClient, Durability, Node, NodeConfig, SimulatedGateway};

pub struct BenchArgs {
    pub accounts: u64,
    pub debits: u64,
    pub hot: u64,
    pub callers: u64,
    pub batch: u64,
    pub durability: Durability,
    pub data_dir: PathBuf,
    /// Every account stays in memory for the whole run (no passivation):
    /// what resident accounts cost.
    pub keep_resident: bool,
    /// The figures as one JSON object at the end instead of lines.
    pub json: bool,
}

fn amount_units(n: u64) -> Amount {
    // 1..100 units of 10⁻⁶ (a token's price, say).
    Amount::from_units((1 + (n % 100) as i128) * 1_000_000)
}

fn open(id: &AccountId) -> Request {
    let command =
        Command::Open { mode: Mode::Prepaid, currency: Currency::USD, past_due_suspends: None, credit_limit: None };
    Request { account: id.clone(), key: None, command }
}

fn keyed(id: &AccountId, key: String, command: Command) -> Request {
    Request { account: id.clone(), key: IdemKey::new(&key).ok(), command }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Latencies in nanoseconds, kept as an HDR histogram (3 significant
/// digits, up to an hour) instead of every sample: constant memory
/// whatever the number of debits.
struct Latencies(hdrhistogram::Histogram<u64>);

impl Latencies {
    fn new() -> Latencies {
        Latencies(hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds"))
    }

    fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    fn add(&mut self, other: &Latencies) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `p` quantile (0.5, 0.99…) in microseconds; 0 when empty.
    fn percentile(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(p) as f64 / 1_000.0
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1_000.0
}

/// The disk's fsync latency where the node writes, measured beside every
/// benchmark (it moves several-fold between runs on a shared machine): 200
/// appends of 4 KiB to a scratch file, each followed by `fdatasync`.
/// Returns (p50, p99) in milliseconds.
pub fn fsync_latency(dir: &std::path::Path) -> Result<(f64, f64), String> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let path = dir.join(format!("fsync-probe-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let block = [0x5au8; 4096];
    let mut times: Vec<u32> = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        file.write_all(&block).map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
        times.push((t.elapsed().as_nanos() as u64).min(u32::MAX as u64) as u32);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    times.sort_unstable();
    Ok((percentile(&times, 0.50) / 1e3, percentile(&times, 0.99) / 1e3))
}

/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
pub const INTERRUPTED: i32 = 130;

/// `bench`, until Ctrl-C: then its temporary data directory (when it made
/// one) is removed before the process ends, instead of being left behind;
/// so it is when stdout closes (`crate::closed_stdout`).
pub async fn bench_until_interrupted(mut args: BenchArgs) -> Result<(), String> {
    // A data directory of our own when none is given (unique and private:
    // tempfile), so the restart at the end finds the data; removed at the
    // end when the handle drops, and on Ctrl-C or a closed stdout.
    let own = match args.data_dir.as_os_str().is_empty() {
        true => {
            let dir = tempfile::Builder::new()
                .prefix("prepaid-bench-")
                .tempdir()
                .map_err(|e| format!("cannot make a temporary data directory: {e}"))?;
            args.data_dir = dir.path().to_path_buf();
            crate::remove_on_exit(Some(dir.path().to_path_buf()));
            Some(dir)
        }
        false => None,
    };
    // Listening before the bench starts: the handler is in place before
    // the node runs (a listener made inside `select!` is only registered
    // once polled, and the bench may run a while first).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("cannot listen for Ctrl-C: {e}"))?;
    let result = tokio::select! {
        done = bench(args) => done,
        _ = interrupt.recv() => {
            let removed = crate::remove_registered_dir();
            match removed {
                Some(dir) => eprintln!("\nprepaid: interrupted; removed {}", dir.display()),
                None => eprintln!("\nprepaid: interrupted"),
            }
            std::process::exit(INTERRUPTED);
        }
    };
    crate::remove_on_exit(None);
    drop(own);
    result
}

/// A debit's idempotency key: the debit's number, zero-padded, so that
/// each account's keys grow (and sort above its `fund-…` key) — the shape
/// the node serves without a store lookup (ARCHITECTURE.md, "Idempotency in
/// bounded memory"), as a client numbering its requests would.
fn debit_key(n: u64) -> String {
    format!("u{n:016}")
}

/// The authorization workload in-process: accounts funded, then strict
/// debits of 1..100 µ$ from `callers` concurrent callers, optionally in
/// batches, `hot` accounts taking half the traffic when set.
pub async fn bench(args: BenchArgs) -> Result<(), String> {
    let data_dir = args.data_dir.clone();
    let mut cfg = NodeConfig::default();
    cfg.node.durability = args.durability;
    cfg.node.data_dir = data_dir.clone();
    if args.keep_resident {
        cfg.node.max_resident_accounts = cfg.node.max_resident_accounts.max(args.accounts as usize);
        // The longest idle time the setting allows (30 days).
        cfg.node.idle_passivate_ms = 2_592_000_000;
    }
    let (fsync_p50, fsync_p99) = fsync_latency(&data_dir)?;
    let fsync_before = (fsync_p50, fsync_p99);
    if !args.json {
        say!("fsync before: p50 {fsync_p50:.2} ms p99 {fsync_p99:.2} ms (4 KiB appends + fdatasync, in the data dir)");
    }
    let node = Arc::new(Node::start(cfg.clone(), Arc::new(SimulatedGateway::new())).await.map_err(|e| e.to_string())?);
    let ids: Vec<AccountId> =
        (0..args.accounts).map(|i| AccountId::new(&format!("acct_{i:08}")).expect("valid id")).collect();
    eprintln!("prepaid bench: funding {} accounts ({:?} durability)", args.accounts, args.durability);
    let rss_before = rss_bytes();
    for chunk in ids.chunks(1_000) {
        let mut batch = Vec::with_capacity(chunk.len() * 2);
        for id in chunk {
            batch.push(open(id));
            batch.push(keyed(
                id,
                format!("fund-{id}"),
                Command::Purchase { amount: Amount::whole(1_000_000), reference: None },
            ));
        }
        for r in node.execute_batch(batch).await.map_err(|e| e.to_string())? {
            r.map_err(|e| format!("funding failed: {} ({e})", e.code()))?;
        }
    }
    let rss_per_account = rss_bytes().saturating_sub(rss_before) / args.accounts.max(1);
    eprintln!("prepaid bench: {} debits, {} callers, batch {}", args.debits, args.callers, args.batch);
    let next = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(ids);
    let started = Instant::now();
    let mut callers = Vec::new();
    for c in 0..args.callers {
        let (node, next, ids) = (Arc::clone(&node), Arc::clone(&next), Arc::clone(&ids));
        let (debits, batch, hot) = (args.debits, args.batch.max(1), args.hot);
        callers.push(tokio::spawn(async move {
            let mut latencies = Latencies::new();
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (c + 1);
            let mut refused = 0u64;
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= debits {
                    break;
                }
                let requests: Vec<Request> = (first..(first + batch).min(debits))
                    .map(|n| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let slot = if hot > 0 && rng & 1 == 0 { rng % hot } else { rng % ids.len() as u64 };
                        let id = &ids[slot as usize];
                        let command = Command::Debit {
                            amount: amount_units(n),
                            mode: DebitMode::Strict,
                            service: Service::ApiRequest,
                            reference: None,
                        };
                        keyed(id, debit_key(n), command)
                    })
                    .collect();
                let t = Instant::now();
                let results = if requests.len() == 1 {
                    let req = requests.into_iter().next().expect("one");
                    vec![node.execute(req).await]
                } else {
                    node.execute_batch(requests).await.unwrap_or_else(|e| vec![Err(e)])
                };
                let per_request = t.elapsed().as_nanos() as u64;
                for r in results {
                    refused += r.is_err() as u64;
                    latencies.record(per_request);
                }
            }
            (latencies, refused)
        }));
    }
    let progress = {
        let next = Arc::clone(&next);
        let total = args.debits;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let done = next.load(Ordering::Relaxed).min(total);
                eprint!("\r  {:>3}% {done:>12} debits", done * 100 / total.max(1));
                if done >= total {
                    break;
                }
            }
        })
    };
    let mut latencies = Latencies::new();
    let mut refused = 0;
    for c in callers {
        let (l, r) = c.await.map_err(|e| e.to_string())?;
        latencies.add(&l);
        refused += r;
    }
    let elapsed = started.elapsed();
    progress.abort();
    eprintln!();
    // What the accounts in memory cost once the load is over.
    let resident = node.resident_accounts();
    let rss_per_resident = rss_bytes().saturating_sub(rss_before) / (resident as u64).max(1);
    let (fsync_p50, fsync_p99) = fsync_latency(&data_dir)?;
    let throughput = args.debits as f64 / elapsed.as_secs_f64().max(1e-9);
    if !args.json {
        say!("fsync after: p50 {fsync_p50:.2} ms p99 {fsync_p99:.2} ms");
        say!(
            "debits {}  refused {}  elapsed {:.2} s  throughput {:.0}/s  latency µs p50 {:.1} p99 {:.1} p999 {:.1}  rss/account {} B  durability {:?}",
            args.debits,
            refused,
            elapsed.as_secs_f64(),
            throughput,
            latencies.percentile(0.50),
            latencies.percentile(0.99),
            latencies.percentile(0.999),
            rss_per_account,
            args.durability
        );
        say!("resident accounts {resident}  rss per resident account {rss_per_resident} B (after the load)");
    }
    // Conservation: every account's balance is what was bought minus what was debited.
    let mut total = Amount::ZERO;
    for chunk in ids.chunks(1_000) {
        let batch =
            chunk.iter().map(|id| Request { account: id.clone(), key: None, command: Command::Balance }).collect();
        for r in node.execute_batch(batch).await.map_err(|e| e.to_string())? {
            total += r.map_err(|e| e.to_string())?.balance;
        }
    }
    let debited: Amount = (0..args.debits).map(amount_units).sum();
    let funded = Amount::whole(1_000_000).checked_mul_int(args.accounts as u32).unwrap_or(Amount::ZERO);
    let expected = funded - debited;
    if !args.json {
        say!(
            "conservation: total balance {total}, expected {expected}: {}",
            if total == expected { "ok" } else { "MISMATCH" }
        );
    }
    let node = Arc::into_inner(node).ok_or("node still shared")?;
    node.shutdown().await;
    // Restart: open the data directory again and serve one request.
    let started = Instant::now();
    let node = Node::start(cfg, Arc::new(SimulatedGateway::new())).await.map_err(|e| e.to_string())?;
    let first = Request { account: ids[ids.len() / 2].clone(), key: None, command: Command::Balance };
    node.execute(first).await.map_err(|e| e.to_string())?;
    let restart_ms = started.elapsed().as_secs_f64() * 1e3;
    if args.json {
        let round = |x: f64| (x * 100.0).round() / 100.0;
        say!(
            "{}",
            serde_json::json!({
                "accounts": args.accounts,
                "debits": args.debits,
                "refused": refused,
                "callers": args.callers,
                "batch": args.batch,
                "durability": match args.durability { Durability::Sync => "sync", Durability::Async => "async" },
                "elapsed_s": round(elapsed.as_secs_f64()),
                "throughput_per_s": throughput.round(),
                "latency_us": {
                    "p50": round(latencies.percentile(0.50)),
                    "p99": round(latencies.percentile(0.99)),
                    "p999": round(latencies.percentile(0.999)),
                },
                "rss_per_account_bytes": rss_per_account,
                "resident_accounts": resident,
                "rss_per_resident_account_bytes": rss_per_resident,
                "fsync_ms": {
                    "before": { "p50": round(fsync_before.0), "p99": round(fsync_before.1) },
                    "after": { "p50": round(fsync_p50), "p99": round(fsync_p99) },
                },
                "conservation": if total == expected { "ok" } else { "mismatch" },
                "total_balance": total.to_string(),
                "expected_balance": expected.to_string(),
                "restart_first_request_ms": round(restart_ms),
            })
        );
    } else {
        say!("restart: first request served {restart_ms:.1} ms after start, with {} accounts on disk", args.accounts);
    }
    node.shutdown().await;
    if total != expected || refused > 0 {
        return Err(format!("{refused} debits refused; conservation {}", total == expected));
    }
    Ok(())
}

/// For the crash test: four concurrent callers run mixed money operations
/// on a few accounts until the process is killed, printing
/// `ack <account> <key>` once each operation is acknowledged (durable).
/// The first five accounts auto-recharge through a simulated gateway whose
/// record of charges (`gateway.log` in the data dir) outlives the process,
/// as a real gateway's would. With `settle`, it runs no load: it lets
/// recovery finish the recharges left in flight, then stops cleanly.
pub async fn crash_child(data_dir: PathBuf, seed: u64, settle: bool) -> Result<(), String> {
    let gateway = SimulatedGateway::new().with_declines(100).with_timeouts(200);
    let gateway = gateway.with_log(&data_dir.join("gateway.log")).map_err(|e| e.to_string())?;
    let mut cfg = NodeConfig::default();
    cfg.node.data_dir = data_dir;
    cfg.node.shards = 16;
    cfg.node.recharge_retry_unknown_ms = 5;
    let node = Arc::new(Node::start(cfg, Arc::new(gateway)).await.map_err(|e| e.to_string())?);
    let ids: Arc<Vec<AccountId>> =
        Arc::new((0..20).map(|i| AccountId::new(&format!("org_{i}")).expect("valid")).collect());
    for (i, id) in ids.iter().enumerate() {
        node.execute(open(id)).await.map_err(|e| e.to_string())?;
        if i < 5 && !settle {
            let auto = Command::SetAutoRecharge {
                enabled: true,
                amount: Some(Amount::whole(25)),
                threshold: Amount::whole(50),
            };
            node.execute(Request { account: id.clone(), key: None, command: auto }).await.map_err(|e| e.to_string())?;
        }
    }
    if settle {
        // Recovery resumed the in-flight attempts; wait (bounded) until none is left.
        for _ in 0..1_000 {
            let mut in_flight = 0;
            for id in ids.iter() {
                let reply = node.execute(Request { account: id.clone(), key: None, command: Command::Balance }).await;
                if let Ok(Reply { detail: Detail::Balance(view), .. }) = reply {
                    in_flight += view.auto_recharge.attempt_in_flight.is_some() as u32;
                }
            }
            if in_flight == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let node = Arc::into_inner(node).ok_or("node still shared")?;
        node.shutdown().await;
        say!("settled");
        return Ok(());
    }
    say!("ready");
    let callers: Vec<_> = (0..4u64)
        .map(|caller| {
            let (node, ids) = (Arc::clone(&node), Arc::clone(&ids));
            tokio::spawn(async move {
                let mut rng = (seed ^ (caller << 32)) | 1;
                for n in 0u64.. {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let id = &ids[(rng % ids.len() as u64) as usize];
                    let amount = Amount::cents((1 + (rng >> 8) % 2_000) as i64);
                    let command = match (rng >> 20) % 5 {
                        0 => Command::Purchase { amount: Amount::whole(5) + amount, reference: None },
                        1 => Command::Debit {
                            amount,
                            mode: DebitMode::Metered,
                            service: Service::ApiRequest,
                            reference: None,
                        },
                        2 => Command::Hold { amount, service: Service::FineTuning, reference: None, timeout_ms: None },
                        _ => Command::Debit {
                            amount,
                            mode: DebitMode::Strict,
                            service: Service::ApiRequest,
                            reference: None,
                        },
                    };
                    let key = format!("s{seed}c{caller}-{n}");
                    if node.execute(keyed(id, key.clone(), command)).await.is_ok() {
                        say!("ack {id} {key}");
                    }
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub struct RemoteArgs {
    pub addr: String,
    pub token: String,
    /// PEM of a private CA for a node with TLS.
    pub ca: Option<Vec<u8>>,
    pub accounts: u64,
    pub debits: u64,
    pub hot: u64,
    pub conns: u64,
    pub batch: u64,
    /// Calls in flight per connection when unbatched.
    pub in_flight: u64,
    /// Debits per second to offer (0: as fast as the node answers).
    pub rate: u64,
    pub json: bool,
}

/// `bench --addr`'s connection: to one node, or (several addresses) to a
/// cluster through `ClusterClient`, each request to its group's leader.
#[derive(Clone)]
enum Conn {
    One(Box<Client>),
    Cluster(ClusterClient),
}

impl Conn {
    async fn execute(&self, requests: Vec<pb::Request>) -> Result<Vec<pb::Reply>, ClientError> {
        match self {
            Conn::One(c) => c.execute(requests).await,
            Conn::Cluster(c) => Ok(c.execute(requests).await),
        }
    }

    async fn call(&self, account: &str, op: pb::request::Op) -> Result<pb::Accepted, ClientError> {
        match self {
            Conn::One(c) => c.call(op).await,
            Conn::Cluster(c) => c.call(account, op).await,
        }
    }
}

/// Tries of one request whose outcome stayed unknown (same key each time).
const RETRIES: u32 = 5;

fn remote_debit(account: &str, key: String, n: u64) -> pb::request::Op {
    pb::request::Op::Debit(pb::Debit {
        account: account.to_string(),
        idempotency_key: key,
        amount: amount_units(n).to_string(),
        ..Default::default()
    })
}

/// The same authorization workload as `bench --embedded`, from this process
/// to a served node over loopback: `conns` connections; unbatched calls
/// (batch 1) go over each connection's stream, batches as unary calls.
/// Accounts get names of their own per run (the time and this process's
/// id: loads started at once, as `bench/cluster.sh` starts three, must not
/// share accounts, or each one's conservation check counts the others'
/// debits), so runs do not collide.
pub async fn remote(args: RemoteArgs) -> Result<(), String> {
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let pid = std::process::id();
    let ids: Arc<Vec<String>> = Arc::new((0..args.accounts).map(|i| format!("b{run}_{pid}_{i:08}")).collect());
    let mut clients = Vec::new();
    let seeds: Vec<&str> = args.addr.split(',').map(str::trim).collect();
    for _ in 0..args.conns {
        let conn = if let [one] = seeds[..] {
            let client = Client::connect_with(one, &args.token, args.ca.as_deref()).await.map_err(|e| e.to_string())?;
            Conn::One(Box::new(client))
        } else {
            let deadline = Duration::from_secs(10);
            let cluster = ClusterClient::connect_with(&seeds, &args.token, args.ca.as_deref(), deadline).await;
            Conn::Cluster(cluster.map_err(|e| e.to_string())?)
        };
        clients.push(conn);
    }
    eprintln!("prepaid bench: funding {} accounts at {}", args.accounts, args.addr);
    for chunk in ids.chunks(1_000) {
        let mut requests = Vec::with_capacity(chunk.len() * 2);
        for id in chunk {
            let n = requests.len() as u64;
            requests.push(pb::Request {
                id: n,
                op: Some(pb::request::Op::OpenAccount(pb::OpenAccount { account: id.clone(), ..Default::default() })),
            });
            requests.push(pb::Request {
                id: n + 1,
                op: Some(pb::request::Op::Purchase(pb::Purchase {
                    account: id.clone(),
                    idempotency_key: format!("fund-{id}"),
                    amount: "1000000".into(),
                    reference: None,
                })),
            });
        }
        for reply in clients[0].execute(requests).await.map_err(|e| e.to_string())? {
            if let Some(pb::reply::Result::Refusal(r)) = reply.result {
                return Err(format!("funding failed: {} ({})", r.message, r.code));
            }
        }
    }
    // Unbatched calls share each connection's stream; batches go two at a
    // time per connection.
    let callers_per_conn = if args.batch == 1 { args.in_flight } else { 2 };
    eprintln!(
        "prepaid bench: {} debits, {} connections, batch {}, {callers_per_conn} in flight per connection",
        args.debits, args.conns, args.batch
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for k in 0..callers_per_conn {
            let (client, next, ids) = (client.clone(), Arc::clone(&next), Arc::clone(&ids));
            let (debits, batch, hot, rate) = (args.debits, args.batch, args.hot, args.rate);
            tasks.push(tokio::spawn(async move {
                let mut latencies = Latencies::new();
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((c as u64) << 20 | k);
                let mut debited = Amount::ZERO;
                let mut refused = 0u64;
                // Answered `overloaded`: how many, and how fast.
                let mut shed = Latencies::new();
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= debits {
                        break;
                    }
                    if rate > 0 {
                        // Open loop: debit n is due n/rate seconds after the start.
                        let due = started + Duration::from_secs_f64(first as f64 / rate as f64);
                        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                    }
                    // Which account each debit goes to; the requests are
                    // built from this (again only for a retry), so the
                    // generator spends little on load the node will shed.
                    let picks: Vec<(u64, usize)> = (first..(first + batch).min(debits))
                        .map(|n| {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            let slot = if hot > 0 && rng & 1 == 0 { rng % hot } else { rng % ids.len() as u64 };
                            (n, slot as usize)
                        })
                        .collect();
                    let op = |&(n, slot): &(u64, usize)| remote_debit(&ids[slot], debit_key(n), n);
                    let t = Instant::now();
                    let mut outcomes: Vec<(u64, Result<(), ClientError>)> = Vec::with_capacity(picks.len());
                    if let [pick] = picks[..] {
                        let account = &ids[pick.1];
                        let mut result = client.call(account, op(&pick)).await.map(|_| ());
                        for _ in 0..RETRIES {
                            if !matches!(result, Err(ClientError::OutcomeUnknown(_))) {
                                break;
                            }
                            result = client.call(account, op(&pick)).await.map(|_| ());
                        }
                        outcomes.push((pick.0, result));
                    } else {
                        let requests = || picks.iter().map(|p| pb::Request { id: p.0, op: Some(op(p)) }).collect();
                        let mut replies = client.execute(requests()).await;
                        for _ in 0..RETRIES {
                            if !matches!(replies, Err(ClientError::OutcomeUnknown(_))) {
                                break;
                            }
                            replies = client.execute(requests()).await;
                        }
                        match replies {
                            Ok(replies) => {
                                for r in replies {
                                    let mut result = match r.result {
                                        Some(pb::reply::Result::Accepted(_)) => Ok(()),
                                        Some(pb::reply::Result::Refusal(x)) => {
                                            Err(ClientError::Refused { code: x.code, message: x.message })
                                        }
                                        None => Err(ClientError::OutcomeUnknown("empty".into())),
                                    };
                                    // One request of the batch with its outcome
                                    // unknown, or not applied for want of a
                                    // leader (a cluster): sent again alone,
                                    // under its key.
                                    let again = |code: &str| {
                                        matches!(code, "outcome_unknown" | "unavailable" | "shard_unavailable")
                                    };
                                    if matches!(&result, Err(ClientError::Refused { code, .. }) if again(code))
                                        && let Some(pick) = picks.iter().find(|p| p.0 == r.id)
                                    {
                                        for _ in 0..RETRIES {
                                            result = client.call(&ids[pick.1], op(pick)).await.map(|_| ());
                                            let unknown = matches!(
                                                result,
                                                Err(ClientError::OutcomeUnknown(_) | ClientError::Unavailable(_))
                                            );
                                            if !unknown {
                                                break;
                                            }
                                        }
                                    }
                                    outcomes.push((r.id, result));
                                }
                            }
                            // The whole call refused (a node that shed it
                            // at the door answers `overloaded`).
                            Err(e) => outcomes.extend(picks.iter().map(|(n, _)| (*n, Err(e.clone())))),
                        }
                    }
                    let per_request = t.elapsed().as_nanos() as u64;
                    for (n, result) in outcomes {
                        match result {
                            Ok(()) => {
                                latencies.record(per_request);
                                debited += amount_units(n)
                            }
                            Err(ClientError::Refused { code, .. }) if code == "overloaded" => shed.record(per_request),
                            Err(ClientError::Refused { .. }) => {
                                latencies.record(per_request);
                                refused += 1
                            }
                            Err(e) => return Err(format!("debit d{n}: {e}")),
                        }
                    }
                }
                Ok((latencies, debited, refused, shed))
            }));
        }
    }
    let mut latencies = Latencies::new();
    let mut debited = Amount::ZERO;
    let mut refused = 0;
    let mut shed = Latencies::new();
    for t in tasks {
        let (l, d, r, o) = t.await.map_err(|e| e.to_string())??;
        latencies.add(&l);
        debited += d;
        refused += r;
        shed.add(&o);
    }
    let elapsed = started.elapsed();
    let overloaded = shed.count();
    // Conservation: what was bought minus what was accepted is what is left.
    let mut total = Amount::ZERO;
    for chunk in ids.chunks(1_000) {
        let requests = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| pb::Request {
                id: i as u64,
                op: Some(pb::request::Op::Balance(pb::Balance { account: id.clone() })),
            })
            .collect();
        for r in clients[0].execute(requests).await.map_err(|e| e.to_string())? {
            match r.result {
                Some(pb::reply::Result::Accepted(a)) => {
                    total += Amount::parse(&a.balance).map_err(|e| e.to_string())?
                }
                other => return Err(format!("balance failed: {other:?}")),
            }
        }
    }
    let funded = Amount::whole(1_000_000).checked_mul_int(args.accounts as u32).unwrap_or(Amount::ZERO);
    let expected = funded - debited;
    let throughput = args.debits as f64 / elapsed.as_secs_f64().max(1e-9);
    let accepted_per_s = (args.debits - overloaded - refused) as f64 / elapsed.as_secs_f64().max(1e-9);
    let (shed_p50, shed_p99) = (shed.percentile(0.50), shed.percentile(0.99));
    let (p50, p99, p999) = (latencies.percentile(0.50), latencies.percentile(0.99), latencies.percentile(0.999));
    let max = latencies.percentile(1.0);
    let ok = total == expected;
    if args.json {
        say!(
            "{}",
            serde_json::json!({
                "debits": args.debits, "refused": refused, "elapsed_s": elapsed.as_secs_f64(),
                "overloaded": overloaded, "accepted_per_s": accepted_per_s,
                "overloaded_p50_us": shed_p50, "overloaded_p99_us": shed_p99,
                "throughput_per_s": throughput, "p50_us": p50, "p99_us": p99, "p999_us": p999, "max_us": max,
                "conns": args.conns, "batch": args.batch, "in_flight": callers_per_conn,
                "accounts": args.accounts, "hot": args.hot,
                "conservation": if ok { "ok" } else { "mismatch" },
            })
        );
    } else {
        say!(
            "debits {}  refused {}  elapsed {:.2} s  throughput {:.0}/s  latency µs p50 {:.1} p99 {:.1} p999 {:.1} max {:.1}  conns {}  batch {}",
            args.debits,
            refused,
            elapsed.as_secs_f64(),
            throughput,
            p50,
            p99,
            p999,
            max,
            args.conns,
            args.batch
        );
        if overloaded > 0 {
            say!(
                "overloaded {overloaded} (answered in p50 {shed_p50:.1} µs, p99 {shed_p99:.1} µs)  accepted {:.0}/s",
                accepted_per_s
            );
        }
        say!("conservation: total balance {total}, expected {expected}: {}", if ok { "ok" } else { "MISMATCH" });
    }
    if ok { Ok(()) } else { Err("conservation failed".into()) }
}

#[cfg(test)]
mod tests {
    use super::Latencies;

    #[test]
    fn latency_percentiles_come_from_the_histogram_within_its_precision() {
        let (mut a, mut b) = (Latencies::new(), Latencies::new());
        for us in 1..=1_000u64 {
            let half = if us % 2 == 0 { &mut a } else { &mut b };
            half.record(us * 1_000);
        }
        a.add(&b);
        assert_eq!(a.count(), 1_000);
        for (p, want) in [(0.5, 500.0), (0.99, 990.0), (0.999, 999.0)] {
            let got = a.percentile(p);
            assert!((got - want).abs() <= want * 0.001 + 1.0, "p{p}: {got} µs, not {want}");
        }
        assert_eq!(Latencies::new().percentile(0.99), 0.0, "empty");
        // Past the top bound it saturates instead of failing.
        a.record(u64::MAX);
        assert_eq!(a.count(), 1_001);
    }
}
