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
        (vec!["demo", "--accounts", "0"], "--accounts is 1 to"),
        (vec!["demo", "--debits", "lots"], "takes a whole number"),
        (vec!["demo", "--debits"], "needs a value"),
        (vec!["demo", "--fast", "1"], "unknown flag"),
        (vec!["mint"], "unknown command"),
        (vec!["serve", "--port", "1"], "unknown flag"),
        (vec!["bench", "--addr"], "--addr needs HOST:PORT"),
        (vec!["bench"], "needs --embedded or --addr"),
        (vec!["bench", "--addr", "127.0.0.1:1", "--rate", "lots"], "takes a whole number"),
        (vec!["bench", "--addr", "127.0.0.1:1", "--rate", "100000001"], "--rate is 0 to 100000000"),
        (vec!["account"], "account needs an operation"),
        (vec!["account", "show"], "--account is required"),
        (vec!["account", "debit", "--account", "a"], "debit needs --amount"),
        (vec![], "usage: prepaid"),
    ] {
        let (code, _, err) = prepaid(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, out, _) = prepaid(&["help"]);
    assert_eq!((code, out.contains("demo")), (0, true));
}
