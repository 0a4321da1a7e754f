//! The crash test: a child process runs load against an embedded node on a
//! data directory and is killed with SIGKILL at a random moment, again and
//! again on the same directory. After every kill the store must hold every
//! operation the child acknowledged, each account's journal must sum to its
//! balance and replay to its snapshot (nothing half-applied), and the next
//! child must start on it.
//!
//! Each cycle checks what that cycle acknowledged, and folds only the
//! records written since the last cycle into the auditor
//! (`prepaid::audit`), so a long run stays linear; the last check reads
//! every acknowledgement of the run again.
//!
//! 20 cycles by default; `PREPAID_CRASH_CYCLES=1000` for the long run.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use prepaid::audit::Auditor;
use prepaid::ledger::*;
use prepaid::store::{RocksStore, Store};

fn cycles() -> u64 {
    std::env::var("PREPAID_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let dir = std::env::temp_dir().join(format!("prepaid-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut acked: HashMap<String, (String, u64)> = HashMap::new(); // key -> (account, cycle)
    let mut auditor = Auditor::new();
    let mut rng: u64 = 0x00c0_ffee;
    let cycles = cycles();
    for cycle in 0..cycles {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child = Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["crash-child", "--data-dir", dir.to_str().unwrap(), "--seed", &(cycle + 1).to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child serves (bounded), then let it run a random
        // 20–300 ms before the kill.
        let ready = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        assert_eq!(ready, "ready", "cycle {cycle}: the child started on the data left by the last kill");
        std::thread::sleep(Duration::from_millis(20 + rng % 280));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let mut this_cycle = 0;
        for line in rx.try_iter() {
            let mut parts = line.split(' ');
            if let (Some("ack"), Some(account), Some(key)) = (parts.next(), parts.next(), parts.next()) {
                acked.insert(key.to_string(), (account.to_string(), cycle));
                this_cycle += 1;
            }
        }
        verify(&dir, &mut auditor, &acked, cycle, Some(cycle), this_cycle);
    }
    verify(&dir, &mut auditor, &acked, cycles, None, 0);
    assert!(acked.len() as u64 >= cycles, "the children acknowledged work: {}", acked.len());
    let (charged, credited) = settle_and_compare_recharges(&dir);
    eprintln!(
        "crash test: {cycles} SIGKILL cycles, {} acknowledged operations all found, {charged} recharges charged and {credited} credited",
        acked.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Checks the store after a kill: the records written since the last check
/// fold into the auditor (the running balance is each record's, the sum is
/// the balance, no hole), and every key acknowledged in `only_cycle` (all
/// of them with `None`) has its idempotency record.
fn verify(
    dir: &std::path::Path,
    auditor: &mut Auditor,
    acked: &HashMap<String, (String, u64)>,
    cycle: u64,
    only_cycle: Option<u64>,
    this_cycle: usize,
) {
    let store = RocksStore::open(dir).unwrap();
    let mut by_account: HashMap<&str, Vec<&str>> = HashMap::new();
    for (key, (account, at)) in acked {
        if only_cycle.is_none_or(|c| c == *at) {
            by_account.entry(account).or_default().push(key);
        }
    }
    for i in 0..20 {
        let name = format!("org_{i}");
        let id = AccountId::new(&name).unwrap();
        let Some(loaded) = store.load(&id).unwrap() else {
            assert!(!by_account.contains_key(name.as_str()), "cycle {cycle}: {name} acknowledged work but is gone");
            continue;
        };
        let new = store.history(&id, auditor.records_seen(&id), u32::MAX).unwrap();
        auditor
            .check_more(&id, &new, Some(&loaded.state), None)
            .unwrap_or_else(|finding| panic!("cycle {cycle}: {finding}"));
        for key in by_account.get(name.as_str()).into_iter().flatten() {
            let found = store.dedup(&id, &IdemKey::new(key).unwrap(), 0).unwrap();
            assert!(
                found.is_some(),
                "cycle {cycle}: acknowledged {key} on {name} was lost ({this_cycle} acks this cycle)"
            );
        }
    }
    if only_cycle.is_none() {
        // Once, at the end: the whole journal replays to the snapshot.
        for i in 0..20 {
            let id = AccountId::new(&format!("org_{i}")).unwrap();
            if let Some(loaded) = store.load(&id).unwrap() {
                let journal = store.history(&id, 0, u32::MAX).unwrap();
                let replayed = AccountState::from_records(id.clone(), &journal).unwrap().unwrap();
                assert_eq!(replayed, loaded.state, "{id}: journal and snapshot agree");
            }
        }
    }
}

/// One last child lets recovery finish every recharge left in flight; then
/// what the gateway charged and what the ledger credited must be the same
/// attempts, each once. Returns (charged, credited).
fn settle_and_compare_recharges(dir: &std::path::Path) -> (usize, usize) {
    let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
        .args(["crash-child", "--data-dir", dir.to_str().unwrap(), "--settle"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("settled"), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
    let mut charged: Vec<String> = Vec::new();
    for line in log.lines() {
        let mut parts = line.split('\t');
        if let (Some(key), Some(_), Some("charged")) = (parts.next(), parts.next(), parts.next()) {
            charged.push(key.to_string());
        }
    }
    let unique: std::collections::BTreeSet<&String> = charged.iter().collect();
    assert_eq!(unique.len(), charged.len(), "the gateway charged a key twice");
    let store = RocksStore::open(dir).unwrap();
    let mut credited = std::collections::BTreeSet::new();
    for i in 0..20 {
        let id = AccountId::new(&format!("org_{i}")).unwrap();
        for record in store.history(&id, 0, u32::MAX).unwrap() {
            if let Event::RechargeSucceeded { attempt_id, .. } = record.event {
                assert!(credited.insert(format!("{id}:{attempt_id}")), "{id}:{attempt_id} credited twice");
            }
        }
        if let Some(loaded) = store.load(&id).unwrap() {
            assert_eq!(loaded.state.auto_recharge.in_flight, None, "{id}: a recharge still in flight after settling");
        }
    }
    let charged: std::collections::BTreeSet<String> = charged.into_iter().collect();
    assert_eq!(charged, credited, "every charge credited exactly once, and nothing credited that was not charged");
    (charged.len(), credited.len())
}
