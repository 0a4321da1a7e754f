//! Disk trouble: a served node on a small tmpfs the test mounts, filled
//! until RocksDB's writes fail. The node must stop acknowledging writes,
//! say so in `/health`, keep answering reads from what is durable, and when
//! space returns resume on its own — with every acknowledged debit in the
//! ledger once, every unanswered one applied once or not at all when resent
//! under its key, and the ledger summing to the balance (the auditor).
//!
//! Mounting needs root (CI and the dev machine run as root); the test fails,
//! rather than skip, where it cannot mount.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use prepaid::audit::{Auditor, Told};
use prepaid::ledger::{AccountId, Amount};
use prepaid::store::{RocksStore, Store};
use prepaid::wire::pb;
use prepaid::wire::pb::request::Op;

use super::harness::*;

struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size_mb: u32) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("prepaid-tmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root: this test makes its own small disk to fill");
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Writes until the file system says it is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 256 * 1024];
    let mut written = 0;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    // Whatever is left, byte by byte in small pieces.
    while file.write_all(&chunk[..512]).is_ok() {
        written += 512;
    }
    let _ = file.sync_all();
    written
}

fn debit(id: u64, account: &str, key: &str) -> pb::Request {
    pb::Request {
        id,
        op: Some(Op::Debit(pb::Debit {
            account: account.into(),
            idempotency_key: key.into(),
            amount: "0.01".into(),
            // Large journal records fill the disk sooner.
            reference: Some(format!("{key}-{}", "x".repeat(200))),
            ..Default::default()
        })),
    }
}

fn reference_of(key: &str) -> String {
    format!("{key}-{}", "x".repeat(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_serves_reads_and_resumes_without_loss() {
    crate::logs::capture();
    // RocksDB resumes by itself once free space is at least its memtable
    // size (checked every 5 s), and preallocates its log by about as much:
    // small memtables make a small disk fill, and come back, quickly.
    let fs = Tmpfs::mount(48);
    let data = fs.dir.join("data");
    let s = Served::start(|cfg| {
        cfg.node.data_dir = data.clone();
        cfg.node.storage_retry_ms = 20;
        cfg.node.memtable_mb = 4;
    })
    .await;
    let c = s.admin().await;
    let id = AccountId::new("disk").unwrap();
    let mut auditor = Auditor::new();
    c.open_account("disk").await.unwrap();
    c.purchase("disk", "buy", "100000").await.unwrap();

    // Debits while there is room, then fill the disk and go on until it
    // refuses them (bounded: the write-ahead log runs out of room long
    // before this).
    let filler = fs.dir.join("filler");
    let mut filled = 0;
    let mut unknown: Vec<String> = Vec::new();
    let mut acked = 0u64;
    let mut last_balance = String::new();
    let mut n = 0u64;
    while unknown.is_empty() && n < 200_000 {
        if n == 1_000 {
            filled = fill(&filler);
            assert!(filled > 0, "the filler took the free space");
        }
        let keys: Vec<String> = (0..500).map(|i| format!("d{}", n + i)).collect();
        let batch = keys.iter().enumerate().map(|(i, k)| debit(i as u64, "disk", k)).collect();
        let replies = c.execute(batch).await.unwrap();
        for (key, reply) in keys.iter().zip(replies) {
            match reply.result {
                Some(pb::reply::Result::Accepted(a)) => {
                    auditor.told(
                        &id,
                        &reference_of(key),
                        Told::Applied { balance: Amount::parse(&a.balance).unwrap() },
                    );
                    last_balance = a.balance;
                    acked += 1;
                }
                Some(pb::reply::Result::Refusal(r)) => {
                    assert_eq!(r.code, "storage_unavailable", "{key}: {r:?}");
                    auditor.told(&id, &reference_of(key), Told::Unknown);
                    unknown.push(key.clone());
                }
                None => panic!("an empty reply"),
            }
        }
        n += 500;
    }
    assert!(!unknown.is_empty(), "the full disk failed a write within {n} debits");
    assert!(acked > 0);

    // Failed: /health says so; reads are served from what is durable; writes
    // are refused.
    let (status, body) = http_get(s.http, "/health", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage_failed") && body.contains("\"reads\":\"served\""), "{body}");
    let view = c.balance("disk").await.expect("reads are served while the disk is full");
    assert_eq!(view.balance, last_balance, "the balance read is the last acknowledged one");
    c.check_access("disk").await.expect("access checks are reads");
    assert!(!c.history("disk", 0, 10).await.unwrap().is_empty());
    let refused = c.debit("disk", "while-full", "0.01").await.unwrap_err();
    assert_eq!(refused.code(), "storage_unavailable");
    auditor.told(&id, "while-full", Told::Unknown);

    // Space returns: the node resumes by itself (a probe write succeeds).
    std::fs::remove_file(&filler).unwrap();
    let mut healthy = false;
    for _ in 0..600 {
        if http_get(s.http, "/health", None).await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !healthy {
        let (_, body) = http_get(s.http, "/health", None).await;
        let log = std::fs::read_to_string(data.join("LOG")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "the node did not recover within a minute of space returning: {body}\nRocksDB LOG (last lines, newest first):\n{}",
            tail.join("\n")
        );
    }
    // Resent under their keys, the unanswered debits apply once or were
    // applied already (the first result comes back).
    for key in &unknown {
        let reply = c.execute(vec![debit(0, "disk", key)]).await.unwrap().remove(0);
        let Some(pb::reply::Result::Accepted(a)) = reply.result else { panic!("{key} after recovery: {reply:?}") };
        auditor.told(&id, &reference_of(key), Told::Applied { balance: Amount::parse(&a.balance).unwrap() });
    }
    let after = c.debit("disk", "after", "0.01").await.unwrap();
    assert_ne!(after.balance, last_balance);
    assert_eq!(s.metric("prepaid_storage_failures_total").await, 1);
    assert_eq!(s.metric("prepaid_storage_recoveries_total").await, 1);
    // Both are logged (other tests' nodes are healthy: these lines are ours).
    assert!(!crate::logs::lines_with("storage failed: writes are refused").is_empty());
    assert!(!crate::logs::lines_with("storage recovered: writing again").is_empty());
    s.stop().await;

    // The auditor reads what is on disk.
    let store = RocksStore::open(&data).unwrap();
    let journal = store.history(&id, 0, u32::MAX).unwrap();
    let state = store.load(&id).unwrap().map(|l| l.state);
    let audit = auditor.check_account(&id, &journal, state.as_ref(), None).unwrap();
    assert_eq!(audit.applied as u64, acked + unknown.len() as u64);
    eprintln!(
        "disk full: {acked} debits acknowledged until writes failed ({filled} bytes of filler), {} unanswered and \
         resent, ledger of {} records sums to {}",
        unknown.len(),
        audit.records,
        audit.balance
    );
}
