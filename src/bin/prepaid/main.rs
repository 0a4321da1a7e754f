//! `prepaid` — the command line.
//!
//! `prepaid demo` walks through every rule of the billing FAQ on the ledger
//! core, then runs a short load on an embedded node. `prepaid bench
//! --embedded` measures the authorization workload in-process.

/// `println!` that survives a closed stdout. SIGPIPE stays ignored (as Rust
/// sets it) for every command: a peer that closes a socket must be an
/// error, not a signal that kills a node or a client. So a closed stdout
/// (`prepaid account history | head -1`) ends a short-lived command here,
/// by SIGPIPE as Unix tools end (after removing its temporary directory),
/// never by a panic; `serve` ignores it and goes on serving.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say_line(format_args!($($arg)*))
    };
}

mod cli;
mod cluster;
mod load;
mod raft;
mod torture;
mod tour;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum, value_parser};
use prepaid::Durability;

/// Threads free what others allocated all the time here (records made by
/// shard workers are dropped by the journal writer and the checkpointer);
/// glibc's malloc serializes that on its arena locks, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bounds on what the command line accepts: enough to measure, never
/// enough to exhaust the machine by a typo.
const MAX_ACCOUNTS: u64 = 10_000_000;
const MAX_DEBITS: u64 = 1_000_000_000;
const MAX_CALLERS: u64 = 4_096;
/// Calls in flight per connection (`bench --in-flight`).
const MAX_IN_FLIGHT: u64 = 1_024;
const MAX_BATCH: u64 = 10_000;

/// A balance cluster for prepaid credits: an exact ledger, authorization in
/// microseconds, auto-recharge exactly once.
#[derive(Parser)]
#[command(name = "prepaid", version, propagate_version = true, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Walk through the billing FAQ's rules, then run strict debits on an
    /// embedded node with RocksDB
    Demo(DemoArgs),
    /// The authorization workload: on an embedded node (--embedded) or
    /// against a served one (--addr)
    Bench(BenchCli),
    /// What shard Raft groups cost in this process, idle and busy (the
    /// cluster's groups, every member here, no network)
    BenchRaft(BenchRaftArgs),
    /// A served node: the gRPC API and the HTTP ops side (SIGTERM stops it
    /// cleanly)
    ///
    /// Settings come from --config (see config/default.toml) and PREPAID_*
    /// variables. It refuses to start without a data dir or a payment
    /// gateway unless told (--ephemeral, --simulated-gateway).
    Serve(ServeArgs),
    /// Operate on an account of a served node, over gRPC
    Account(cli::AccountArgs),
    /// A clustered node: make a new cluster, or see its groups (the HTTP
    /// admin API)
    Cluster(cluster::ClusterArgs),
    /// Load for the crash test, until killed (internal)
    #[command(hide = true)]
    CrashChild(CrashChildArgs),
    /// One client of the crash torture (internal)
    #[command(hide = true)]
    TortureClient(TortureCli),
}

#[derive(Args)]
struct DemoArgs {
    /// Accounts the load runs on
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = value_parser!(u64).range(1..=1_000_000))]
    accounts: u64,
    /// Strict debits the load makes
    #[arg(long, value_name = "N", default_value_t = 200_000, value_parser = value_parser!(u64).range(1..=100_000_000))]
    debits: u64,
    /// Where the node keeps its data (default: a temporary directory,
    /// removed at the end or on Ctrl-C)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The load's figures as one JSON object on stdout (the walk through
    /// the rules goes to stderr)
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Sync,
    Async,
}

#[derive(Args)]
#[command(group(ArgGroup::new("target").required(true).args(["embedded", "addr"])))]
struct BenchCli {
    /// On a node embedded in this process (RocksDB in --data-dir or a
    /// temporary directory)
    #[arg(long)]
    embedded: bool,
    /// Against a served node's gRPC address (https://HOST:PORT, or
    /// --ca-cert, for TLS); several, comma separated, for a cluster: each
    /// request goes straight to its group's leader (ClusterClient)
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT…]")]
    addr: Option<String>,
    /// API token (--addr)
    #[arg(long, env = "PREPAID_TOKEN", hide_env_values = true, default_value = "")]
    token: String,
    /// PEM file of the CA the node's TLS certificate chains to (--addr)
    #[arg(long, value_name = "FILE", env = "PREPAID_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Accounts funded and debited [default: 100000 embedded, 10000 with --addr]
    #[arg(long, value_name = "N", value_parser = value_parser!(u64).range(1..=MAX_ACCOUNTS))]
    accounts: Option<u64>,
    /// Strict debits in all
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = value_parser!(u64).range(1..=MAX_DEBITS))]
    debits: u64,
    /// Hot accounts that take half the traffic (0: uniform)
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = value_parser!(u64).range(0..=MAX_ACCOUNTS))]
    hot: u64,
    /// Concurrent callers (--embedded)
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = value_parser!(u64).range(1..=MAX_CALLERS), conflicts_with = "addr")]
    callers: u64,
    /// Connections (--addr)
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = value_parser!(u64).range(1..=MAX_CALLERS), conflicts_with = "embedded")]
    conns: u64,
    /// Calls in flight per connection when unbatched: the client gathers
    /// them into stream messages (--addr, batch 1)
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = value_parser!(u64).range(1..=MAX_IN_FLIGHT), conflicts_with = "embedded")]
    in_flight: u64,
    /// Debits per call (1: unbatched)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = value_parser!(u64).range(1..=MAX_BATCH))]
    batch: u64,
    /// Debits per second offered (0: as fast as the node answers; --addr)
    #[arg(long, value_name = "PER_S", default_value_t = 0, value_parser = value_parser!(u64).range(0..=100_000_000), conflicts_with = "embedded")]
    rate: u64,
    /// When a write is acknowledged (--embedded)
    #[arg(long, value_enum, default_value = "sync", conflicts_with = "addr")]
    durability: DurabilityArg,
    /// Where the embedded node keeps its data (default: a temporary
    /// directory, removed at the end or on Ctrl-C)
    #[arg(long, value_name = "DIR", conflicts_with = "addr")]
    data_dir: Option<PathBuf>,
    /// Keep every account in memory for the whole run, however many
    /// (no passivation; --embedded): what resident accounts cost
    #[arg(long, conflicts_with = "addr")]
    keep_resident: bool,
    /// The figures as one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchRaftArgs {
    /// Raft groups (a group per shard: 256)
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = value_parser!(u64).range(1..=1024))]
    groups: u64,
    /// Members of each group
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = value_parser!(u64).range(1..=7))]
    members: u64,
    /// Seconds idle, then as many busy
    #[arg(long, value_name = "S", default_value_t = 5, value_parser = value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Heartbeat interval (elections time out at 3 to 6 times it)
    #[arg(long, value_name = "MS", default_value_t = 50, value_parser = value_parser!(u64).range(10..=10_000))]
    heartbeat_ms: u64,
    /// The figures as one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// A configuration file (every setting: config/default.toml)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the node keeps its data (node.data_dir, PREPAID_DATA_DIR)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep balances in a temporary directory deleted at stop (demos, tests)
    #[arg(long)]
    ephemeral: bool,
    /// The payment gateway auto-recharge charges (recharge.gateway_url,
    /// PREPAID_GATEWAY_URL)
    #[arg(long, value_name = "URL", conflicts_with = "simulated_gateway")]
    gateway_url: Option<String>,
    /// A simulated gateway that charges without moving money: it grants paid
    /// credits for nothing (demos and tests only)
    #[arg(long)]
    simulated_gateway: bool,
}

#[derive(Args)]
struct CrashChildArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Finish in-flight recharges, then stop
    #[arg(long)]
    settle: bool,
}

#[derive(Args)]
struct TortureCli {
    #[arg(long)]
    addr: String,
    #[arg(long)]
    token: String,
    #[arg(long, default_value_t = 0, value_parser = value_parser!(u64).range(0..=1_000))]
    client: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 6, value_parser = value_parser!(u64).range(1..=MAX_ACCOUNTS))]
    accounts: u64,
    #[arg(long, default_value_t = 1_000_000, value_parser = value_parser!(u64).range(1..=MAX_DEBITS))]
    ops: u64,
    /// Send again the requests listed, under their keys
    #[arg(long)]
    resend: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Usage errors, --help and --version print and exit here (2 for an
    // error, with the command's own usage; 0 for help and the version; a
    // closed stdout is ignored).
    let cli = Cli::parse();
    let serving = matches!(cli.command, Cmd::Serve(_));
    SERVING.store(serving, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = logs(if serving { "info" } else { "warn" }) {
        eprintln!("prepaid: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Cmd::Demo(a) => {
            let bench = load::BenchArgs {
                accounts: a.accounts,
                debits: a.debits,
                hot: 0,
                callers: 64,
                batch: 1,
                durability: Durability::Sync,
                data_dir: a.data_dir.unwrap_or_default(),
                keep_resident: false,
                json: a.json,
            };
            const LOAD: &str =
                "\nLoad on an embedded node (RocksDB, sync durability: every debit durable before its reply)";
            let walked = match a.json {
                true => tour::run(&mut std::io::stderr().lock()).map(|()| eprintln!("{LOAD}")),
                false => tour::run(&mut std::io::stdout().lock()).map(|()| say!("{LOAD}")),
            };
            walked
                .map_err(stdout_failed)
                .and_then(|()| runtime()?.block_on(load::bench_until_interrupted(bench)).map_err(Failure::Run))
        }
        Cmd::BenchRaft(a) => {
            let args = raft::RaftArgs {
                groups: a.groups,
                members: a.members,
                seconds: a.seconds,
                heartbeat_ms: a.heartbeat_ms,
                json: a.json,
            };
            runtime().and_then(|rt| rt.block_on(raft::run(args)).map_err(Failure::Run))
        }
        Cmd::Serve(a) => cli::serve(a.config, a.data_dir, a.gateway_url, a.simulated_gateway, a.ephemeral),
        Cmd::Account(a) => cli::account(a),
        Cmd::Cluster(a) => cluster::run(a),
        Cmd::Bench(a) => match a.addr {
            Some(addr) => read_ca(a.ca_cert.as_deref()).and_then(|ca| {
                let bench = load::RemoteArgs {
                    addr,
                    token: a.token,
                    ca,
                    accounts: a.accounts.unwrap_or(10_000),
                    debits: a.debits,
                    hot: a.hot,
                    conns: a.conns,
                    batch: a.batch,
                    in_flight: a.in_flight,
                    rate: a.rate,
                    json: a.json,
                };
                runtime()?.block_on(load::remote(bench)).map_err(Failure::Run)
            }),
            None => {
                let bench = load::BenchArgs {
                    accounts: a.accounts.unwrap_or(100_000),
                    debits: a.debits,
                    hot: a.hot,
                    callers: a.callers,
                    batch: a.batch,
                    durability: match a.durability {
                        DurabilityArg::Sync => Durability::Sync,
                        DurabilityArg::Async => Durability::Async,
                    },
                    data_dir: a.data_dir.unwrap_or_default(),
                    keep_resident: a.keep_resident,
                    json: a.json,
                };
                runtime().and_then(|rt| rt.block_on(load::bench_until_interrupted(bench)).map_err(Failure::Run))
            }
        },
        Cmd::CrashChild(a) => {
            runtime().and_then(|rt| rt.block_on(load::crash_child(a.data_dir, a.seed, a.settle)).map_err(Failure::Run))
        }
        Cmd::TortureClient(a) => {
            let args = torture::TortureArgs {
                addr: a.addr,
                token: a.token,
                client: a.client,
                seed: a.seed,
                accounts: a.accounts,
                ops: a.ops,
                resend: a.resend,
            };
            runtime().and_then(|rt| rt.block_on(torture::client(args)).map_err(Failure::Run))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A served node's failure is a log line like the rest of its logs
        // (one JSON object with PREPAID_LOG_FORMAT=json).
        Err(Failure::Run(e)) if serving => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
        Err(Failure::Run(e)) => {
            eprintln!("prepaid: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The PEM of `--ca-cert FILE`: a private CA the node's TLS certificate
/// chains to.
fn read_ca(path: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, Failure> {
    let Some(path) = path else { return Ok(None) };
    std::fs::read(path).map(Some).map_err(|e| Failure::Run(format!("cannot read --ca-cert {}: {e}", path.display())))
}

/// Logs go to stderr, filtered by `RUST_LOG` (e.g. `RUST_LOG=debug`,
/// `RUST_LOG=prepaid=debug,tonic=warn`); without it, `default` (`info`
/// for `serve`: starts, stops, storage failures and recoveries, declined or
/// unanswered recharges, failed webhooks; `warn` for the other commands).
/// `PREPAID_LOG_FORMAT=json` prints one JSON object a line (for a log
/// pipeline); anything else but `text` (the default) is refused.
fn logs(default: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match std::env::var("PREPAID_LOG_FORMAT").as_deref() {
        Ok("json") => {
            let _ = logs.json().with_current_span(true).try_init();
        }
        Ok("text") | Err(_) => {
            // Colours only on a terminal: a log file or journald gets plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let _ = logs.with_ansi(ansi).try_init();
        }
        Ok(other) => return Err(format!("PREPAID_LOG_FORMAT is text or json, not {other:?}")),
    }
    Ok(())
}

/// Whether this process is `serve` (a closed stdout is no reason to stop).
static SERVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A directory of the process's own (the bench's temporary data dir) to
/// remove when it ends early: Ctrl-C, a closed stdout.
static REMOVE_ON_EXIT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Registers (or, with `None`, forgets) the directory to remove on an
/// early exit.
fn remove_on_exit(dir: Option<PathBuf>) {
    *REMOVE_ON_EXIT.lock().unwrap_or_else(|e| e.into_inner()) = dir;
}

/// Removes the registered directory, if any; which one it was.
fn remove_registered_dir() -> Option<PathBuf> {
    let dir = REMOVE_ON_EXIT.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    // RocksDB's threads may still create a file while it goes: a few tries.
    for _ in 0..5 {
        if std::fs::remove_dir_all(&dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Some(dir)
}

/// One line to stdout; see `say!`.
fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if out.write_fmt(args).and_then(|()| out.write_all(b"\n")).is_err()
        && !SERVING.load(std::sync::atomic::Ordering::Relaxed)
    {
        drop(out);
        closed_stdout();
    }
}

/// A write to stdout failed: a closed stdout ends the command (see
/// `closed_stdout`); any other failure is the command's.
fn stdout_failed(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        closed_stdout();
    }
    Failure::Run(format!("cannot write to stdout: {e}"))
}

/// Stdout is closed: remove what the command made, then end by SIGPIPE,
/// as Unix tools end when their reader goes away.
fn closed_stdout() -> ! {
    remove_registered_dir();
    quiet_on_closed_stdout();
    // SAFETY: raising a signal whose disposition is now the default.
    unsafe {
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141);
}

/// SIGPIPE back to its default disposition (Rust ignores it).
fn quiet_on_closed_stdout() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE; the disposition is
    // process-wide and may be set from any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Usage errors never get here (clap prints them with the command's usage
/// and exits 2).
enum Failure {
    /// The command ran and failed; exit 1.
    Run(String),
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Failure::Run(e.to_string()))
}
