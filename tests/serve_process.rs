//! `prepaid serve` as a process: the CLI against it, `bench --addr`, and a
//! clean stop on SIGTERM (exit 0, data on disk, found again on restart).

use std::process::Command;

#[path = "support/serve.rs"]
mod serve;

use serve::{ADMIN, Server, sigterm};

fn start(dir: &std::path::Path) -> Server {
    serve::start(dir, &[])
}

fn cli(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
        .arg("account")
        .args(args)
        .args(["--addr", &server.grpc, "--token", ADMIN])
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn cli_against_a_served_node_then_sigterm_stops_it_cleanly() {
    let dir = std::env::temp_dir().join(format!("prepaid-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = start(&dir);
    let (code, out, err) = cli(&server, &["open", "--account", "acme"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("status       inactive"), "{out}");
    let (code, out, err) = cli(&server, &["purchase", "--account", "acme", "--amount", "25", "--key", "p1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("balance      25.00"), "{out}");
    let (code, out, err) = cli(&server, &["debit", "--account", "acme", "--amount", "0.25", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"]["balance"], "24.75");
    assert_eq!(v["ok"]["detail"]["debited"]["amount"], "0.25");
    let (code, out, _) = cli(&server, &["debit", "--account", "acme", "--amount", "100", "--key", "big", "--json"]);
    assert_eq!(code, 1);
    assert!(out.contains("\"code\":\"insufficient_funds\""), "{out}");
    let (code, out, err) = cli(&server, &["show", "--account", "acme"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("purchased 24.75"), "{out}");
    let (code, out, err) = cli(&server, &["history", "--account", "acme"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("debited"), "{out}");
    let (code, _, err) = cli(&server, &["mint", "--account", "acme"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown account operation"), "{err}");
    // Without a token the node refuses.
    let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
        .args(["account", "show", "--account", "acme", "--addr", &server.grpc])
        .env_remove("PREPAID_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"));
    // The load generator against it, with conservation checked at the end.
    let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
        .args(["bench", "--addr", &server.grpc, "--token", ADMIN, "--accounts", "20", "--debits", "3000"])
        .args(["--conns", "2", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!((v["debits"].as_u64(), v["refused"].as_u64()), (Some(3000), Some(0)));
    assert_eq!(v["conservation"], "ok");
    let _ = &server.http;
    // SIGTERM: stops accepting, drains, flushes, exits 0.
    assert_eq!(sigterm(server), 0);
    // Everything acknowledged is there after a restart.
    let server = start(&dir);
    let (code, out, err) = cli(&server, &["show", "--account", "acme", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"]["detail"]["balance_view"]["balance"], "24.75");
    assert_eq!(sigterm(server), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn python_client_generated_from_the_proto_works() {
    let dir = std::env::temp_dir().join(format!("prepaid-serve-py-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = start(&dir);
    let script = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("examples/python/client.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--addr", &server.grpc, "--token", ADMIN])
        .output()
        .expect("python3 runs (grpcio and grpcio-tools are installed by .ci/setup)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("balance 9.00 (free 0.00, purchased 9.00)"), "{stdout}");
    assert!(stdout.contains("refused as expected: insufficient_funds"), "{stdout}");
    assert_eq!(sigterm(server), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `prepaid serve` with the given flags and environment; (exit code, or
/// `None` when a signal ended it; stderr).
fn serve_once(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prepaid"));
    cmd.arg("serve").args(args);
    for name in ["PREPAID_DATA_DIR", "PREPAID_GATEWAY_URL", "PREPAID_SIMULATED_GATEWAY"] {
        cmd.env_remove(name);
    }
    cmd.env("PREPAID_GRPC_ADDR", "127.0.0.1:0").env("PREPAID_HTTP_ADDR", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn serve_refuses_to_start_without_a_data_dir_or_a_gateway_unless_told() {
    let (code, err) = serve_once(&["--simulated-gateway"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no data dir") && err.contains("--ephemeral"), "{err}");
    let dir = std::env::temp_dir().join(format!("prepaid-serve-safe-{}", std::process::id()));
    let dir_arg = dir.to_str().unwrap();
    // A plain serve used to grant paid credits through a simulated gateway.
    let (code, err) = serve_once(&["--data-dir", dir_arg], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no payment gateway") && err.contains("--simulated-gateway"), "{err}");
    let (code, err) = serve_once(&["--ephemeral", "--data-dir", dir_arg, "--simulated-gateway"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("exclude each other"), "{err}");
    // A gateway named in the environment counts as much as the flag; the
    // start then gets as far as the (taken) port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let env = [("PREPAID_GATEWAY_URL", "http://127.0.0.1:9/charge"), ("PREPAID_GRPC_ADDR", port.as_str())];
    let (code, err) = serve_once(&["--data-dir", dir_arg], &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot listen"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_start_stops_the_node_cleanly_every_time() {
    // A failed bind used to return while the node ran: SIGSEGV or a
    // corrupted heap in about one start of seven.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    for i in 0..50 {
        let which = if i % 2 == 0 { "PREPAID_GRPC_ADDR" } else { "PREPAID_HTTP_ADDR" };
        let (code, err) = serve_once(&["--ephemeral", "--simulated-gateway"], &[(which, port.as_str())]);
        assert_eq!(code, Some(1), "start {i} ({which} taken) ended by a signal or another code: {err}");
        assert!(err.contains(&format!("cannot listen on {port}")), "{err}");
    }
}

/// `prepaid serve` with its stderr read: logs filtered by `RUST_LOG`.
/// The log is complete once the returned thread ends (the child exited).
fn start_logged(dir: &std::path::Path, rust_log: Option<&str>) -> (Server, std::thread::JoinHandle<String>) {
    start_logged_with(dir, rust_log, &[])
}

fn start_logged_with(
    dir: &std::path::Path,
    rust_log: Option<&str>,
    env: &[(&str, &str)],
) -> (Server, std::thread::JoinHandle<String>) {
    use std::io::BufRead;
    // A short grace period: the test leaves a client connection open.
    let config = dir.with_extension("toml");
    std::fs::write(&config, "[server]\nshutdown_grace_ms = 300\n").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_prepaid"));
    command
        .args(["serve", "--simulated-gateway", "--config", config.to_str().unwrap()])
        .env("PREPAID_DATA_DIR", dir)
        .env("PREPAID_GRPC_ADDR", "127.0.0.1:0")
        .env("PREPAID_HTTP_ADDR", "127.0.0.1:0")
        .env("PREPAID_TOKENS", format!("ops:admin:{ADMIN}"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    assert!(line.starts_with("prepaid: serving gRPC on"), "{line}");
    let words: Vec<&str> = line.split_whitespace().collect();
    let (grpc, http) = (words[4].to_string(), words[8].to_string());
    std::thread::spawn(move || for _ in lines {});
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&(line + "\n"));
        }
        text
    });
    (Server { child, grpc, http }, log)
}

/// One HTTP/1.1 GET: (head, body).
fn get(http: &str, path: &str, headers: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(http).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_string())
}

#[test]
fn logs_request_ids_version_and_uptime() {
    let dir = std::env::temp_dir().join(format!("prepaid-serve-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (server, log) = start_logged(&dir, None);
    // /health: the version and the uptime; the request id echoed.
    let (head, body) = get(&server.http, "/health", "x-request-id: probe-7\r\n");
    assert!(head.contains("x-request-id: probe-7"), "{head}");
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| {
        // A chunked body: the JSON is the line between the sizes.
        serde_json::from_str(body.lines().nth(1).unwrap()).unwrap()
    });
    assert_eq!(v["version"], prepaid::VERSION);
    assert!(v["uptime_seconds"].as_u64().is_some(), "{v}");
    // No id given: one is made up.
    let (head, _) = get(&server.http, "/health", "");
    assert!(head.contains("x-request-id: "), "{head}");
    let (_, metrics) = get(&server.http, "/metrics", "");
    assert!(metrics.contains(&format!("prepaid_build_info{{version=\"{}\"}} 1", prepaid::VERSION)), "{metrics}");
    assert!(metrics.contains("prepaid_uptime_seconds "), "{metrics}");
    // gRPC echoes the id too.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let echoed = runtime.block_on(async {
        use prepaid::wire::pb;
        let mut client = pb::ledger_client::LedgerClient::connect(format!("http://{}", server.grpc)).await.unwrap();
        let mut req = tonic::Request::new(pb::Batch { requests: vec![] });
        req.metadata_mut().insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
        req.metadata_mut().insert("x-request-id", "grpc-call-1".parse().unwrap());
        let reply = client.execute(req).await.unwrap();
        reply.metadata().get("x-request-id").map(|v| v.to_str().unwrap().to_string())
    });
    assert_eq!(echoed.as_deref(), Some("grpc-call-1"));
    // The client's connection stays open and unread (its runtime is not
    // driven): the server still stops cleanly after its grace period,
    // node and all.
    let code = sigterm(server);
    drop(runtime);
    let text = log.join().unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("without its final sync"), "an idle connection held the node:\n{text}");
    for says in ["node started", "serving", prepaid::VERSION, "node stopped"] {
        assert!(text.contains(says), "the info log says {says:?}:\n{text}");
    }
    // RUST_LOG decides: at `warn` none of that is printed.
    let (server, log) = start_logged(&dir, Some("warn"));
    assert_eq!(sigterm(server), 0);
    let text = log.join().unwrap();
    assert!(!text.contains("node started"), "RUST_LOG=warn:\n{text}");
    // JSON on request: every line one object, the message in its fields.
    let (server, log) = start_logged_with(&dir, None, &[("PREPAID_LOG_FORMAT", "json")]);
    assert_eq!(sigterm(server), 0);
    let text = log.join().unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "node started" && l["level"] == "INFO"), "{text}");
    // A format it does not know is refused before anything starts.
    let refused = Command::new(env!("CARGO_BIN_EXE_prepaid"))
        .args(["serve", "--ephemeral", "--simulated-gateway"])
        .env("PREPAID_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PREPAID_LOG_FORMAT is text or json"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(dir.with_extension("toml"));
}

/// The account CLI says each thing once, and what to do.
#[test]
fn the_account_cli_says_each_thing_once() {
    let dir = std::env::temp_dir().join(format!("prepaid-serve-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = start(&dir);
    assert_eq!(cli(&server, &["open", "--account", "acme"]).0, 0);
    assert_eq!(cli(&server, &["purchase", "--account", "acme", "--amount", "10", "--key", "p1"]).0, 0);
    // A refusal's code once, not twice.
    let (code, _, err) = cli(&server, &["debit", "--account", "acme", "--amount", "100", "--key", "big"]);
    assert_eq!(code, 1);
    assert_eq!(err.matches("insufficient_funds").count(), 1, "{err}");
    // Enabling auto-recharge without a threshold is refused, not a threshold of 0.
    let (code, _, err) = cli(&server, &["auto-recharge", "--account", "acme", "--enable", "--amount", "25"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--threshold"), "{err}");
    // An account usage error points at the account help, not the 40-line
    // top-level usage with internal commands.
    let (code, _, err) = cli(&server, &["mint", "--account", "acme"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown account operation") && !err.contains("torture-client"), "{err}");
    // The CLI pointed at the HTTP port, for a read: no retry-with-key advice.
    let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
        .args(["account", "show", "--account", "acme", "--addr", &server.http, "--token", ADMIN])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("gRPC address") && !err.contains("idempotency key"), "{err}");
    assert_eq!(sigterm(server), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
