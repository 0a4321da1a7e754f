//! The `prepaid` binary: the demo walks every FAQ rule and checks
//! conservation; bad arguments get a clear error and exit code 2.

use std::process::Command;

fn prepaid(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_prepaid")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn demo_walks_every_rule_and_checks_conservation() {
    let (code, out, err) = prepaid(&["demo", "--accounts", "50", "--debits", "2000"]);
    assert_eq!(code, 0, "{err}");
    for rule in 1..=9 {
        assert!(
            out.contains(&format!("Rule {rule}")) || out.contains(&format!("and {rule}:")),
            "rule {rule} missing:\n{out}"
        );
    }
    for code in [
        "not_activated",
        "below_minimum_purchase",
        "insufficient_funds",
        "suspended",
        "hold_expired",
        "recharge_not_in_flight",
        "notice_too_short",
        "past_due",
    ] {
        assert!(out.contains(code), "{code} not shown:\n{out}");
    }
    assert!(out.contains("free 100.00  purchased 5.00"), "free and purchased apart:\n{out}");
    assert!(out.contains("debits 2000  refused 0"), "{out}");
    assert!(out.contains("conservation: total balance") && out.contains(": ok"), "{out}");
}

#[test]
fn bad_arguments_are_refused_with_a_sentence() {
    for (args, says) in [
        (vec!["demo", "--accounts", "0"], "0 is not in 1..=1000000"),
        (vec!["demo", "--debits", "lots"], "invalid value 'lots' for '--debits <N>'"),
        (vec!["demo", "--debits"], "a value is required for '--debits <N>'"),
        (vec!["demo", "--fast", "1"], "unexpected argument '--fast'"),
        (vec!["mint"], "unrecognized subcommand 'mint'"),
        (vec!["serve", "--port", "1"], "unexpected argument '--port'"),
        (vec!["serve", "--gateway-url", "http://x", "--simulated-gateway"], "cannot be used with"),
        (vec!["bench", "--addr"], "a value is required for '--addr <HOST:PORT[,HOST:PORT…]>'"),
        (vec!["bench"], "--embedded|--addr"),
        (vec!["bench", "--embedded", "--addr", "127.0.0.1:1"], "cannot be used with"),
        (vec!["bench", "--embedded", "--conns", "2"], "cannot be used with"),
        (vec!["bench", "--addr", "127.0.0.1:1", "--rate", "lots"], "invalid value 'lots' for '--rate <PER_S>'"),
        (vec!["bench", "--addr", "127.0.0.1:1", "--rate", "100000001"], "100000001 is not in 0..=100000000"),
        (vec!["bench", "--embedded", "--batch", "10001"], "10001 is not in 1..=10000"),
        (vec!["bench", "--embedded", "--in-flight", "2"], "cannot be used with"),
        (vec!["bench", "--addr", "127.0.0.1:1", "--keep-resident"], "cannot be used with"),
        (vec!["bench-raft", "--groups", "0"], "0 is not in 1..=1024"),
        (vec!["bench-raft", "--groups", "1025"], "1025 is not in 1..=1024"),
        (vec!["bench-raft", "--members", "8"], "8 is not in 1..=7"),
        (vec!["bench-raft", "--heartbeat-ms", "9"], "9 is not in 10..=10000"),
        (vec!["bench", "--addr", "127.0.0.1:1", "--in-flight", "0"], "0 is not in 1..=1024"),
        (vec!["bench", "--addr", "127.0.0.1:1", "--in-flight", "1025"], "1025 is not in 1..=1024"),
        (vec!["bench", "--embedded", "--durability", "eventually"], "[possible values: sync, async]"),
        (vec!["account"], "Usage: prepaid account"),
        (vec!["cluster"], "Usage: prepaid cluster"),
        (vec!["cluster", "move"], "unrecognized subcommand"),
        (vec!["account", "show"], "--account <ID>"),
        (vec!["account", "debit", "--account", "a"], "--amount <X>"),
        (
            vec!["account", "capture", "--account", "a", "--amount", "1", "--hold", "x"],
            "invalid value 'x' for '--hold <ID>'",
        ),
        (
            vec!["account", "debit", "--account", "a", "--amount", "1", "--service", "gpu"],
            "possible values: api_request",
        ),
        (vec![], "Usage: prepaid"),
    ] {
        let (code, out, err) = prepaid(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
        // Every error names the command's own usage, not the whole CLI's.
        assert!(!err.contains("torture-client") && !err.contains("crash-child"), "{args:?}: {err}");
    }
    // An error shows the usage of the command it is about.
    let (_, _, err) = prepaid(&["account", "debit", "--account", "a"]);
    assert!(err.contains("Usage: prepaid account debit"), "{err}");
    // Help: every command answers --help with its own flags; internal
    // commands are not listed.
    let (code, out, _) = prepaid(&["help"]);
    assert_eq!((code, out.contains("demo")), (0, true));
    assert!(!out.contains("torture-client") && !out.contains("crash-child"), "{out}");
    for (args, usage) in [
        (&["serve", "--help"][..], "Usage: prepaid serve"),
        (&["demo", "--help"], "Usage: prepaid demo"),
        (&["bench", "-h"], "Usage: prepaid bench"),
        (&["account", "debit", "--help"], "Usage: prepaid account debit"),
        (&["help", "account", "hold"], "Usage: prepaid account hold"),
    ] {
        let (code, out, err) = prepaid(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains(usage), "{args:?}: {out}");
    }
    let (code, out, _) = prepaid(&["--version"]);
    assert_eq!((code, out.trim()), (0, format!("prepaid {}", prepaid::VERSION).as_str()));
    let (code, out, _) = prepaid(&["account", "--version"]);
    assert_eq!((code, out.trim()), (0, format!("prepaid-account {}", prepaid::VERSION).as_str()));
    // No node there: a sentence and exit 1, nothing else.
    let (code, _, err) = prepaid(&["cluster", "status", "--http", "http://127.0.0.1:1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("http://127.0.0.1:1/admin/v1/cluster"), "{err}");
    let (code, _, err) = prepaid(&["cluster", "init", "--http", "ftp://127.0.0.1:1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("only http:// and https://"), "{err}");
    // `--name=value` is read as `--name value`.
    let (code, _, err) = prepaid(&["demo", "--accounts=0"]);
    assert_eq!(code, 2);
    assert!(err.contains("0 is not in 1..=1000000"), "{err}");
}

/// `demo --json`: the walk through the rules on stderr, the load's figures
/// as one JSON object on stdout.
#[test]
fn demo_prints_json_on_request() {
    let (code, out, err) = prepaid(&["demo", "--accounts", "20", "--debits", "300", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((v["debits"].as_u64(), v["conservation"].as_str()), (Some(300), Some("ok")), "{v}");
    assert!(err.contains("Rule 1"), "the walk goes to stderr: {err}");
}

/// `bench --embedded --json`: the figures as one JSON object, nothing else
/// on stdout.
#[test]
fn bench_embedded_prints_json_on_request() {
    let (code, out, err) = prepaid(&["bench", "--embedded", "--accounts", "20", "--debits", "500", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((v["debits"].as_u64(), v["refused"].as_u64()), (Some(500), Some(0)));
    assert_eq!(v["conservation"], "ok");
    assert_eq!(v["durability"], "sync");
    for figure in ["throughput_per_s", "elapsed_s", "restart_first_request_ms"] {
        assert!(v[figure].as_f64().is_some(), "{figure}: {v}");
    }
    assert!(v["latency_us"]["p99"].as_f64().is_some() && v["fsync_ms"]["after"]["p50"].as_f64().is_some(), "{v}");
    // `--keep-resident`: every account is still in memory after the load.
    let (code, out, err) =
        prepaid(&["bench", "--embedded", "--accounts", "30", "--debits", "300", "--keep-resident", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["resident_accounts"], 30, "{v}");
    assert!(v["rss_per_resident_account_bytes"].as_u64().is_some(), "{v}");
}

/// `bench-raft`: shard groups in this process elect, replicate and report
/// what they cost.
#[test]
fn bench_raft_reports_what_groups_cost() {
    let (code, out, err) = prepaid(&["bench-raft", "--groups", "2", "--seconds", "1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((v["groups"].as_u64(), v["members"].as_u64()), (Some(2), Some(3)));
    assert!(v["busy_entries_per_s"].as_f64().is_some_and(|n| n > 0.0), "entries were committed: {v}");
    assert!(v["idle_messages_per_s"].as_f64().is_some_and(|n| n > 0.0), "heartbeats went out: {v}");
}

/// `prepaid help | head -1`: a closed stdout ends the command quietly (by
/// SIGPIPE, as Unix tools end), never with a panic.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    for args in [&["help"][..], &["account", "help"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(args)
            .stdout(std::process::Stdio::from(writer))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(13) || out.status.code() == Some(2),
            "{args:?} ended {:?}: {stderr}",
            out.status
        );
    }
}

/// Ctrl-C during `bench` (and `demo`, which runs it) removes the temporary
/// data directory it made.
#[test]
fn ctrl_c_during_bench_removes_its_temporary_directory() {
    let tmp = std::env::temp_dir().join(format!("prepaid-test-ctrlc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prepaid"))
        .args(["bench", "--embedded", "--accounts", "1000", "--debits", "1000000000"])
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The node is up once RocksDB has written its CURRENT file in the
    // bench's own directory (prepaid-bench-*).
    let mut dir = None;
    for _ in 0..3_000 {
        dir = bench_dirs(&tmp).into_iter().find(|d| d.join("CURRENT").exists());
        if dir.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let dir = dir.expect("the bench started its node in a prepaid-bench-* directory");
    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let mut status = None;
    for _ in 0..6_000 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("bench did not stop after Ctrl-C");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted; removed"), "{stderr}");
    assert!(!dir.exists(), "{} is left behind", dir.display());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The bench's own data directories under `tmp`.
fn bench_dirs(tmp: &std::path::Path) -> Vec<std::path::PathBuf> {
    let entries =
        std::fs::read_dir(tmp).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_else(|_| Vec::new());
    entries
        .into_iter()
        .filter(|p: &std::path::PathBuf| {
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("prepaid-bench-"))
        })
        .collect()
}

/// `prepaid bench --embedded | head -1`: the bench ends by SIGPIPE once
/// its reader is gone, and removes its temporary data directory first (it
/// used to be left behind, 75 MB a time).
#[test]
fn a_closed_stdout_ends_the_bench_and_removes_its_directory() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = std::env::temp_dir().join(format!("prepaid-test-pipe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
        .args(["bench", "--embedded", "--accounts", "10", "--debits", "100"])
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "{:?}: {stderr}", out.status);
    assert_eq!(bench_dirs(&tmp), Vec::<std::path::PathBuf>::new(), "the bench's directory is left behind");
    let _ = std::fs::remove_dir_all(&tmp);
}
