//! `prepaid` — the command line.
//!
//! Today: `prepaid demo`, a walk through every rule of the billing FAQ on the
//! ledger core, then a short load with a conservation check. The node
//! (`prepaid serve`) and the client commands build on this.

mod tour;

use std::process::ExitCode;

const USAGE: &str = "\
usage: prepaid <command>

commands:
  demo [--accounts N] [--debits N]   walk through the billing FAQ's rules, then run
                                     N strict debits over N accounts in-process
                                     (defaults: 10000 accounts, 1000000 debits)
  help                               this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => match parse_demo(&args[1..]) {
            Ok((accounts, debits)) => {
                let mut out = std::io::stdout().lock();
                match tour::run(&mut out, accounts, debits) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("prepaid demo: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("prepaid demo: {e}\n\n{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("prepaid: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Bounds on the demo load: enough to show throughput, never enough to run
/// for long or exhaust memory.
const MAX_DEMO_ACCOUNTS: u64 = 1_000_000;
const MAX_DEMO_DEBITS: u64 = 100_000_000;

fn parse_demo(args: &[String]) -> Result<(u64, u64), String> {
    let (mut accounts, mut debits) = (10_000u64, 1_000_000u64);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = value.parse().map_err(|_| format!("{flag} takes a whole number, not {value:?}"))?;
        match flag.as_str() {
            "--accounts" if (1..=MAX_DEMO_ACCOUNTS).contains(&n) => accounts = n,
            "--debits" if n <= MAX_DEMO_DEBITS => debits = n,
            "--accounts" => return Err(format!("--accounts is 1 to {MAX_DEMO_ACCOUNTS}")),
            "--debits" => return Err(format!("--debits is 0 to {MAX_DEMO_DEBITS}")),
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Ok((accounts, debits))
}
