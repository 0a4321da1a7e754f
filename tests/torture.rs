//! Crash torture: `prepaid serve` under load from several client processes
//! (`prepaid torture-client`), killed with SIGKILL at a random moment, again
//! and again on the same data directory. After every kill the auditor reads
//! what is on disk — only the records written since the last cycle, so a
//! long run stays linear — and checks it against every line the clients
//! printed: each acknowledged operation is in the ledger once with the
//! balance its client was told, nothing refused is there, nothing is there
//! twice, the ledger sums to the balance. After the restart, every request
//! whose outcome a client never learned is resent under its key, and what
//! comes back is audited in turn.
//!
//! 20 cycles by default; `PREPAID_TORTURE_CYCLES=1000` for the long run.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prepaid::audit::{Auditor, Told};
use prepaid::ledger::{AccountId, Amount};
use prepaid::store::{RocksStore, Store};

#[path = "support/serve.rs"]
mod serve;

use serve::{ADMIN, Server, sigterm, start};

const CLIENTS: u64 = 3;
const ACCOUNTS: u64 = 6;

fn cycles() -> u64 {
    std::env::var("PREPAID_TORTURE_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

/// `prepaid torture-client` with `args`, its output piped.
fn client(server: &Server, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_prepaid"))
        .args(["torture-client", "--addr", &server.grpc, "--token", ADMIN])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A request a client never learned the outcome of.
struct Unknown {
    account: String,
    kind: String,
    amount: String,
    key: String,
}

struct Torture {
    dir: std::path::PathBuf,
    auditor: Auditor,
    unknown: Vec<Unknown>,
    acked: u64,
    refused: u64,
    resent: u64,
    accounts: BTreeSet<String>,
}

impl Torture {
    fn told(&mut self, account: &str, reference: &str, told: Told) {
        self.accounts.insert(account.to_string());
        self.auditor.told(&AccountId::new(account).unwrap(), reference, told);
    }

    fn read_client_line(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["ok", account, reference, balance] => {
                self.acked += 1;
                self.told(account, reference, Told::Applied { balance: Amount::parse(balance).unwrap() });
            }
            ["no", account, reference, _code] => {
                self.refused += 1;
                self.told(account, reference, Told::Refused);
            }
            ["unknown", account, reference, kind, amount, key] => {
                self.told(account, reference, Told::Unknown);
                self.unknown.push(Unknown {
                    account: account.to_string(),
                    kind: kind.to_string(),
                    amount: amount.to_string(),
                    key: key.to_string(),
                });
            }
            _ => panic!("a client printed {line:?}"),
        }
    }

    /// Resends every unknown request under its key (the node is up), and
    /// learns what became of each.
    fn resend(&mut self, server: &Server) {
        if self.unknown.is_empty() {
            return;
        }
        let list = self.dir.with_extension("resend");
        let lines: Vec<String> =
            self.unknown.iter().map(|u| format!("{} {} {} {}\n", u.account, u.kind, u.amount, u.key)).collect();
        std::fs::write(&list, lines.concat()).unwrap();
        self.resent += self.unknown.len() as u64;
        self.unknown.clear();
        let out = client(server, &["--resend", list.to_str().unwrap()]).wait_with_output().unwrap();
        assert!(out.status.success(), "the resend ran");
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            self.read_client_line(line);
        }
        let _ = std::fs::remove_file(&list);
    }

    /// Reads what is on disk (the server is down) and audits the records
    /// written since the last audit.
    fn audit(&mut self, cycle: u64) -> u64 {
        let store = RocksStore::open(&self.dir).unwrap();
        let mut records = 0;
        for name in self.accounts.clone() {
            let id = AccountId::new(&name).unwrap();
            let state = store.load(&id).unwrap().map(|l| l.state);
            let seen = self.seen(&id);
            let new = store.history(&id, seen, u32::MAX).unwrap();
            let audit = self
                .auditor
                .check_more(&id, &new, state.as_ref(), None)
                .unwrap_or_else(|finding| panic!("cycle {cycle}: {finding}"));
            records += audit.records as u64;
        }
        records
    }

    fn seen(&self, id: &AccountId) -> u64 {
        // The auditor's fold knows; a fresh account starts at 0.
        self.auditor.records_seen(id)
    }
}

fn open_accounts(server: &Server) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = prepaid::Client::connect(&server.grpc, ADMIN).await.unwrap();
        for i in 0..ACCOUNTS {
            client.open_account(&format!("t_{i}")).await.unwrap();
        }
    });
}

#[test]
fn sigkill_under_load_from_several_clients_loses_nothing_acknowledged() {
    let dir = std::env::temp_dir().join(format!("prepaid-torture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut t = Torture {
        dir: dir.clone(),
        auditor: Auditor::new(),
        unknown: Vec::new(),
        acked: 0,
        refused: 0,
        resent: 0,
        accounts: BTreeSet::new(),
    };
    let mut rng: u64 = 0x005e_ed0f_7027_u64;
    let cycles = cycles();
    let started = Instant::now();
    let mut records = 0;
    for cycle in 0..cycles {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut server = start(&dir, &[]);
        if cycle == 0 {
            open_accounts(&server);
        }
        t.resend(&server);
        let (tx, rx) = mpsc::channel::<String>();
        let mut clients: Vec<Child> = Vec::new();
        let mut readers = Vec::new();
        for k in 0..CLIENTS {
            let seed = (cycle + 1).to_string();
            let mut child =
                client(&server, &["--client", &k.to_string(), "--seed", &seed, "--accounts", &ACCOUNTS.to_string()]);
            let stdout = child.stdout.take().unwrap();
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            }));
            clients.push(child);
        }
        drop(tx);
        // Let the load run a random 50–600 ms, then pull the plug.
        std::thread::sleep(Duration::from_millis(50 + rng % 550));
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        // The clients notice the node is gone and exit (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        for c in &mut clients {
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in readers {
            r.join().unwrap();
        }
        for line in rx.try_iter() {
            t.read_client_line(&line);
        }
        records = t.audit(cycle);
    }
    // A last start: every unknown outcome is learned, and audited.
    let server = start(&dir, &[]);
    t.resend(&server);
    assert!(t.unknown.is_empty(), "every outcome is known once the node is up: {}", t.unknown.len());
    assert_eq!(sigterm(server), 0, "SIGTERM stops the node cleanly");
    records = records.max(t.audit(cycles));
    assert!(t.acked >= cycles, "the clients were acknowledged work: {}", t.acked);
    eprintln!(
        "torture: {cycles} SIGKILL cycles under {CLIENTS} client processes in {:.0} s; {} acknowledged, {} refused, \
         {} unknown resent; every acknowledgement found once; {ACCOUNTS} ledgers of {records} records in all sum to \
         their balances",
        started.elapsed().as_secs_f64(),
        t.acked,
        t.refused,
        t.resent
    );
    let _ = std::fs::remove_dir_all(&dir);
}
