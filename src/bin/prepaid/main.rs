//! `prepaid` — the command line.
//!
//! `prepaid demo` walks through every rule of the billing FAQ on the ledger
//! core, then runs a short load on an embedded node. `prepaid bench
//! --embedded` measures the authorization workload in-process.

mod cli;
mod load;
mod torture;
mod tour;

use std::path::PathBuf;
use std::process::ExitCode;

use prepaid::Durability;

/// Threads free what others allocated all the time here (records made by
/// shard workers are dropped by the journal writer and the checkpointer);
/// glibc's malloc serializes that on its arena locks, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage: prepaid <command>

commands:
  demo [--accounts N] [--debits N] [--data-dir DIR]
                                     walk through the billing FAQ's rules, then run
                                     strict debits on an embedded node with RocksDB
                                     (defaults: 10000 accounts, 200000 debits,
                                     a temporary data dir)
  bench --embedded [--accounts N] [--debits N] [--hot N] [--callers N]
        [--batch N] [--durability sync|async] [--data-dir DIR]
                                     the authorization workload on an embedded node
                                     (defaults: 100000 accounts, 1000000 debits,
                                     64 callers, batch 1, sync, a temporary dir)
  serve [--config FILE] [--data-dir DIR | --ephemeral]
        [--gateway-url http://HOST:PORT/PATH | --simulated-gateway]
                                     a served node: gRPC API and HTTP ops side
                                     (config/default.toml; SIGTERM stops it cleanly;
                                     refuses to start without a data dir or a
                                     gateway unless told by the flags after |)
  account <operation> --account ID [--addr HOST:PORT] [--token T] [--json] ...
                                     operate on an account of a served node
                                     (`prepaid account help` lists operations)
  bench --addr HOST:PORT --token T [--accounts N] [--debits N] [--hot N]
        [--conns N] [--batch N] [--rate PER_S] [--json]
                                     the same workload against a served node
  crash-child --data-dir DIR --seed N [--settle]
                                     load for the crash test, until killed
                                     (--settle: finish in-flight recharges, stop)
  torture-client --addr HOST:PORT --token T --client K --seed N [--accounts N] [--ops N]
                 [--resend FILE]     one client of the crash torture: money operations
                                     until the node goes away, one line per outcome
                                     (--resend: the requests listed, under their keys)
  help, <command> --help             this text (`prepaid account help`: the account operations)
  --version                          the version";

/// Bounds on what the command line accepts: enough to measure, never
/// enough to exhaust the machine by a typo.
const MAX_ACCOUNTS: u64 = 10_000_000;
const MAX_DEBITS: u64 = 1_000_000_000;
const MAX_CALLERS: u64 = 4_096;
const MAX_BATCH: u64 = 10_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serving = args.first().map(String::as_str) == Some("serve");
    if !serving {
        quiet_on_closed_stdout();
    }
    if let Err(e) = logs(if serving { "info" } else { "warn" }) {
        eprintln!("prepaid: {e}");
        return ExitCode::from(2);
    }
    let asks_help = args.iter().skip(1).any(|a| a == "--help" || a == "-h");
    let result = match args.first().map(String::as_str) {
        Some("--version" | "-V" | "version") => {
            println!("prepaid {}", prepaid::VERSION);
            Ok(())
        }
        // `prepaid account … --help` is the account usage; any other
        // command's `--help` the whole usage.
        Some("account") if asks_help => cli::account(&["help".to_string()]),
        Some(_) if asks_help => {
            println!("{USAGE}");
            Ok(())
        }
        Some("demo") => parse(&args[1..]).and_then(|f| {
            let bench = load::BenchArgs {
                accounts: f.number("--accounts", 10_000, 1, 1_000_000)?,
                debits: f.number("--debits", 200_000, 1, 100_000_000)?,
                hot: 0,
                callers: 64,
                batch: 1,
                durability: Durability::Sync,
                data_dir: f.text("--data-dir").map(PathBuf::from).unwrap_or_default(),
            };
            f.done()?;
            tour::run(&mut std::io::stdout().lock()).map_err(|e| Failure::Run(e.to_string()))?;
            println!("\nLoad on an embedded node (RocksDB, sync durability: every debit durable before its reply)");
            runtime()?.block_on(load::bench_until_interrupted(bench)).map_err(Failure::Run)
        }),
        Some("serve") => parse(&args[1..]).and_then(|f| cli::serve(&f)),
        Some("account") => cli::account(&args[1..]),
        Some("bench") if args.iter().any(|a| a == "--addr") => parse(&args[1..]).and_then(|f| {
            let bench = load::RemoteArgs {
                addr: f.text("--addr").ok_or_else(|| Failure::Usage("--addr needs HOST:PORT".into()))?,
                token: f.text("--token").or_else(|| std::env::var("PREPAID_TOKEN").ok()).unwrap_or_default(),
                accounts: f.number("--accounts", 10_000, 1, MAX_ACCOUNTS)?,
                debits: f.number("--debits", 1_000_000, 1, MAX_DEBITS)?,
                hot: f.number("--hot", 0, 0, MAX_ACCOUNTS)?,
                conns: f.number("--conns", 64, 1, MAX_CALLERS)?,
                batch: f.number("--batch", 1, 1, MAX_BATCH)?,
                rate: f.number("--rate", 0, 0, 100_000_000)?,
                json: f.flag("--json"),
            };
            f.done()?;
            runtime()?.block_on(load::remote(bench)).map_err(Failure::Run)
        }),
        Some("bench") => parse(&args[1..]).and_then(|f| {
            if !f.flag("--embedded") {
                return Err(Failure::Usage("bench needs --embedded or --addr HOST:PORT".into()));
            }
            let bench = load::BenchArgs {
                accounts: f.number("--accounts", 100_000, 1, MAX_ACCOUNTS)?,
                debits: f.number("--debits", 1_000_000, 1, MAX_DEBITS)?,
                hot: f.number("--hot", 0, 0, MAX_ACCOUNTS)?,
                callers: f.number("--callers", 64, 1, MAX_CALLERS)?,
                batch: f.number("--batch", 1, 1, MAX_BATCH)?,
                durability: match f.text("--durability").as_deref() {
                    None | Some("sync") => Durability::Sync,
                    Some("async") => Durability::Async,
                    Some(other) => return Err(Failure::Usage(format!("--durability is sync or async, not {other:?}"))),
                },
                data_dir: f.text("--data-dir").map(PathBuf::from).unwrap_or_default(),
            };
            f.done()?;
            runtime()?.block_on(load::bench_until_interrupted(bench)).map_err(Failure::Run)
        }),
        Some("crash-child") => parse(&args[1..]).and_then(|f| {
            let dir = f.text("--data-dir").ok_or_else(|| Failure::Usage("crash-child needs --data-dir".into()))?;
            let seed = f.number("--seed", 1, 0, u64::MAX)?;
            let settle = f.flag("--settle");
            f.done()?;
            runtime()?.block_on(load::crash_child(PathBuf::from(dir), seed, settle)).map_err(Failure::Run)
        }),
        Some("torture-client") => parse(&args[1..]).and_then(|f| {
            let args = torture::TortureArgs {
                addr: f.text("--addr").ok_or_else(|| Failure::Usage("torture-client needs --addr".into()))?,
                token: f.text("--token").ok_or_else(|| Failure::Usage("torture-client needs --token".into()))?,
                client: f.number("--client", 0, 0, 1_000)?,
                seed: f.number("--seed", 1, 0, u64::MAX)?,
                accounts: f.number("--accounts", 6, 1, MAX_ACCOUNTS)?,
                ops: f.number("--ops", 1_000_000, 1, MAX_DEBITS)?,
                resend: f.text("--resend").map(PathBuf::from),
            };
            f.done()?;
            runtime()?.block_on(torture::client(args)).map_err(Failure::Run)
        }),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(Failure::Usage(format!("unknown command {other:?}"))),
        None => Err(Failure::Usage("no command given".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("prepaid: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Shown(e)) => {
            eprintln!("prepaid: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            eprintln!("prepaid: {e}");
            ExitCode::FAILURE
        }
    }
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

/// Rust ignores SIGPIPE, so printing to a closed pipe (`prepaid help |
/// head -1`) is an error every `println!` turns into a panic. A command
/// that only prints ends the way Unix tools do instead: quietly, by the
/// signal. `serve` keeps ignoring it (a closed stdout must not stop a node).
fn quiet_on_closed_stdout() {
    // SAFETY: called first in `main`, before any thread exists; SIG_DFL is
    // a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

enum Failure {
    /// A usage error: the message, then the top-level usage; exit 2.
    Usage(String),
    /// A usage error whose message already says what to do; exit 2.
    Shown(String),
    /// The command ran and failed; exit 1.
    Run(String),
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Failure::Run(e.to_string()))
}

/// `--name value` pairs and bare `--flag`s, each used at most once.
struct Flags(std::cell::RefCell<Vec<(String, Option<String>)>>);

fn parse(args: &[String]) -> Result<Flags, Failure> {
    let mut out = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        if !arg.starts_with("--") {
            return Err(Failure::Usage(format!("unexpected argument {arg:?}")));
        }
        // `--amount=1` as well as `--amount 1`.
        if let Some((name, value)) = arg.split_once('=') {
            out.push((name.to_string(), Some(value.to_string())));
            continue;
        }
        let value = match it.peek() {
            Some(v) if !v.starts_with("--") => it.next().cloned(),
            _ => None,
        };
        out.push((arg.clone(), value));
    }
    Ok(Flags(std::cell::RefCell::new(out)))
}

impl Flags {
    fn take(&self, name: &str) -> Option<Option<String>> {
        let mut flags = self.0.borrow_mut();
        let i = flags.iter().position(|(n, _)| n == name)?;
        Some(flags.remove(i).1)
    }

    fn flag(&self, name: &str) -> bool {
        self.take(name).is_some()
    }

    fn text(&self, name: &str) -> Option<String> {
        self.take(name).flatten()
    }

    fn number(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, Failure> {
        match self.take(name) {
            None => Ok(default),
            Some(None) => Err(Failure::Usage(format!("{name} needs a value"))),
            Some(Some(v)) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                Ok(_) => Err(Failure::Usage(format!("{name} is {min} to {max}"))),
                Err(_) => Err(Failure::Usage(format!("{name} takes a whole number, not {v:?}"))),
            },
        }
    }

    /// Anything not taken is a mistake.
    fn done(&self) -> Result<(), Failure> {
        match self.0.borrow().first() {
            Some((name, _)) => Err(Failure::Usage(format!("unknown flag {name:?}"))),
            None => Ok(()),
        }
    }
}
