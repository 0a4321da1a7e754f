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
    // A node alone says so, and refuses to make a cluster.
    let cluster = |what: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["cluster", what, "--http", &format!("http://{}", server.http), "--token", ADMIN])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, out, err) = cluster("status");
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["clustered"], false, "{out}");
    let (code, _, err) = cluster("init");
    assert_eq!(code, 1);
    assert!(err.contains("invalid_request") && err.contains("not clustered"), "{err}");
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
    // The read side: a statement of the last 30 days (the debit of 0.25 is
    // its usage, the balance now its last point), the open holds, and the
    // accounts by prefix over HTTP.
    let (code, out, err) = cli(&server, &["hold", "--account", "acme", "--amount", "2", "--service", "fine_tuning"]);
    assert_eq!(code, 0, "{err}{out}");
    let (code, out, err) = cli(&server, &["statement", "--account", "acme", "--points", "3"]);
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(st["usage"], serde_json::json!([{ "service": "api_request", "amount": "0.25" }]), "{st}");
    assert_eq!(st["usage_total"], "0.25");
    assert_eq!(st["series"].as_array().unwrap().len(), 3);
    let (code, out, err) = cli(&server, &["statement", "--account", "acme", "--points", "1001"]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("invalid_request") && err.contains("points is 1 to 1000"), "{err}");
    let (code, out, err) = cli(&server, &["items", "--account", "acme", "--kind", "holds", "--json"]);
    assert_eq!(code, 0, "{err}");
    let items: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(items["holds"][0]["amount"], "2.00", "{items}");
    assert_eq!(items["holds"][0]["service"], "fine_tuning", "{items}");
    let (head, body) =
        get(&server.http, "/admin/v1/accounts?prefix=ac&limit=10", &format!("Authorization: Bearer {ADMIN}\r\n"));
    assert!(head.starts_with("http/1.1 200"), "{head}{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["accounts"][0]["account"], "acme", "{page}");
    assert_eq!(page["accounts"][0]["status"], "active", "{page}");
    assert_eq!(page["next_after"], serde_json::Value::Null);
    let (head, _) = get(
        &server.http,
        "/admin/v1/accounts/acme/items?kind=holds&limit=0",
        &format!("Authorization: Bearer {ADMIN}\r\n"),
    );
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let (code, _, err) = cli(&server, &["mint", "--account", "acme"]);
    assert_eq!(code, 2);
    assert!(err.contains("unrecognized subcommand 'mint'"), "{err}");
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
    assert_eq!(v["in_flight"], 32);
    // One call in flight per connection (Redis's unpipelined shape), at
    // the bound.
    let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
        .args(["bench", "--addr", &server.grpc, "--token", ADMIN, "--accounts", "5", "--debits", "300"])
        .args(["--conns", "2", "--in-flight", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(
        (v["in_flight"].as_u64(), v["refused"].as_u64(), v["conservation"].as_str()),
        (Some(1), Some(0), Some("ok"))
    );
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
    // With auto-recharge off no gateway is needed: the start gets as far as
    // the (taken) port.
    {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().to_string();
        let env = [("PREPAID_RECHARGE_ENABLED", "false"), ("PREPAID_GRPC_ADDR", port.as_str())];
        let (code, err) = serve_once(&["--data-dir", dir_arg], &env);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("cannot listen") && err.contains("auto-recharge is off"), "{err}");
    }
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
    // The start-up summary names the data dir, durability and gateway; the
    // shutdown summary what was served and that the final sync happened.
    let serving = text.lines().find(|l| l.contains("serving")).unwrap();
    for field in [format!("data_dir={}", dir.display()), "durability=Sync".into(), "gateway=simulated".into()] {
        assert!(serving.contains(&field), "{field} in {serving}");
    }
    let stopped = text.lines().find(|l| l.contains("server stopped")).unwrap_or_else(|| panic!("{text}"));
    assert!(stopped.contains("requests=") && stopped.contains("final_sync=true"), "{stopped}");
    // Secrets are never logged, not even at trace (every crate's).
    let (server, log) = start_logged(&dir, Some("trace"));
    let (head, _) = get(&server.http, "/admin/v1/webhooks", &format!("Authorization: Bearer {ADMIN}\r\n"));
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(sigterm(server), 0);
    let text = log.join().unwrap();
    assert!(text.contains("TRACE"), "a trace log: {text}");
    assert!(!text.contains(ADMIN), "the token is in the log:\n{text}");
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

/// A `ClusterClient` of a node that runs alone sends everything there:
/// the map says 256 shards and no groups. Given no address, or only one
/// where nothing listens, it says so at connect, nothing sent.
#[test]
fn a_cluster_client_of_a_node_alone_sends_everything_there() {
    let dir = std::env::temp_dir().join(format!("prepaid-serve-cc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = start(&dir);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use prepaid::{ClientError, ClusterClient};
        let map = prepaid::Client::connect(&server.grpc, ADMIN).await.unwrap().cluster_map().await.unwrap();
        assert_eq!((map.shards, map.shards_per_group, map.groups.len()), (256, 0, 0));
        let cc = ClusterClient::connect(&[&server.grpc], ADMIN).await.unwrap();
        assert_eq!(cc.route("acme"), server.grpc);
        cc.open_account("acme").await.unwrap();
        cc.purchase("acme", "p1", "10").await.unwrap();
        cc.debit("acme", "d1", "4").await.unwrap();
        assert_eq!(cc.balance("acme").await.unwrap().balance, "6.00");
        let history = cc.history("acme", 0, 100).await.unwrap();
        assert_eq!(history.iter().filter(|r| r.kind == "debited").count(), 1, "{history:?}");
        // A refusal is the caller's, as from `Client`.
        let refused = cc.debit("acme", "d2", "100").await.unwrap_err();
        assert_eq!(refused.code(), "insufficient_funds", "{refused}");
        assert!(matches!(ClusterClient::connect(&[], ADMIN).await, Err(ClientError::Unavailable(_))));
        let nobody = format!("127.0.0.1:{}", free_port());
        assert!(matches!(ClusterClient::connect(&[&nobody], ADMIN).await, Err(ClientError::Unavailable(_))));
    });
    drop(runtime);
    assert_eq!(sigterm(server), 0);
    let _ = std::fs::remove_dir_all(&dir);
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
    assert!(err.contains("unrecognized subcommand 'mint'") && !err.contains("torture-client"), "{err}");
    assert!(err.contains("Usage: prepaid account"), "{err}");
    // The CLI pointed at the HTTP port: nothing reached a node, so it is
    // `unavailable` (not "outcome unknown", no retry-with-key advice), for
    // a read and for a write alike.
    for op in [&["show"][..], &["debit", "--amount", "1"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .arg("account")
            .args(op)
            .args(["--account", "acme", "--addr", &server.http, "--token", ADMIN])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("unavailable") && err.contains("gRPC address"), "{op:?}: {err}");
        assert!(!err.contains("idempotency key") && !err.contains("outcome unknown"), "{op:?}: {err}");
    }
    // A closed stdout ends the CLI by SIGPIPE, not by a panic (it keeps
    // SIGPIPE ignored for its socket, and prints through its own check).
    {
        use std::os::unix::process::ExitStatusExt;
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["account", "history", "--account", "acme", "--addr", &server.grpc, "--token", ADMIN])
            .stdout(std::process::Stdio::from(writer))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(out.status.signal(), Some(13), "{:?}: {stderr}", out.status);
    }
    // Human output gives times as dates.
    let (code, out, err) = cli(&server, &["hold", "--account", "acme", "--amount", "1", "--timeout-ms", "91800000"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("expires 20") && out.contains(" UTC (in 1d 1h)"), "{out}");
    let (code, out, err) = cli(&server, &["history", "--account", "acme"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" UTC  credited"), "{out}");
    // The hold's event too: its expiry as a date, not Unix milliseconds.
    let hold_line = out.lines().find(|l| l.contains("hold_placed")).unwrap_or_else(|| panic!("{out}"));
    assert!(hold_line.contains("expires 20") && !hold_line.contains("expires_at_ms"), "{hold_line}");
    assert_eq!(sigterm(server), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tls_fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// One GET over HTTPS, trusting the test CA: the whole answer.
fn get_tls(http: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = prepaid::tls::client_config(Some(std::path::Path::new(&tls_fixture("ca.pem")))).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(http).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut text = String::new();
        tls.read_to_string(&mut text).await?;
        Ok(text)
    })
}

#[test]
fn with_tls_both_listeners_speak_only_tls() {
    let dir = std::env::temp_dir().join(format!("prepaid-serve-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tls.toml");
    let (cert, key, ca) = (tls_fixture("server.pem"), tls_fixture("server.key"), tls_fixture("ca.pem"));
    std::fs::write(&config, format!("[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n")).unwrap();
    let server = serve::start(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    let account = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["account", "open", "--account", "tls_acme", "--token", ADMIN])
            .args(extra)
            .env_remove("PREPAID_CA_CERT")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The CLI over TLS, trusting the test CA (https:// implied by --ca-cert).
    let (code, out, err) = account(&["--addr", &server.grpc, "--ca-cert", &ca]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("status       inactive"), "{out}");
    // Plaintext to a TLS listener reaches nothing.
    let (code, _, err) = account(&["--addr", &server.grpc]);
    assert_eq!(code, Some(1), "{err}");
    // TLS without the CA: the certificate is not trusted.
    let (code, _, err) = account(&["--addr", &format!("https://{}", server.grpc)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("certificate"), "{err}");
    // The HTTP side is HTTPS: /health answers over TLS, not in plaintext.
    let answer = get_tls(&server.http, "/health").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(prepaid::VERSION), "{answer}");
    let mut plain = std::net::TcpStream::connect(&server.http).unwrap();
    plain.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut plain, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut bytes = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut bytes);
    assert!(!String::from_utf8_lossy(&bytes).contains("HTTP/1.1 200"), "plaintext was answered");
    assert_eq!(sigterm(server), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tls_setting_that_cannot_work_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("prepaid-serve-tls-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cert = tls_fixture("server.pem");
    let base = ["--ephemeral", "--simulated-gateway"];
    // A certificate without its key.
    let (code, err) = serve_once(&base, &[("PREPAID_TLS_CERT", cert.as_str())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("tls.cert_file and tls.key_file go together"), "{err}");
    // A key file that is not a key: refused before serving, node stopped.
    let not_key = dir.join("not-a-key.pem");
    std::fs::write(&not_key, "hello").unwrap();
    let env = [("PREPAID_TLS_CERT", cert.as_str()), ("PREPAID_TLS_KEY", not_key.to_str().unwrap())];
    let (code, err) = serve_once(&base, &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not-a-key.pem"), "{err}");
    // A certificate and a key that do not belong together (the CA's
    // certificate with the server's key).
    let (ca, key) = (tls_fixture("ca.pem"), tls_fixture("server.key"));
    let (code, err) = serve_once(&base, &[("PREPAID_TLS_CERT", ca.as_str()), ("PREPAID_TLS_KEY", key.as_str())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("do not make a TLS identity"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The OpenAPI document at /openapi.json describes the server: schemathesis
/// (PyPI, installed by .ci/setup) generates requests from it, valid and
/// invalid, and checks every answer against it (status codes, content
/// types, headers, bodies; no 5xx). Bounded: a fixed seed and example count.
#[test]
fn the_openapi_document_describes_the_http_api() {
    let dir = std::env::temp_dir().join(format!("prepaid-serve-openapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = serve::start(&dir, &[]);
    let (head, body) = get(&server.http, "/openapi.json", "");
    assert!(head.starts_with("http/1.1 200") && head.contains("content-type: application/json"), "{head}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["info"]["version"], prepaid::VERSION);
    for path in ["/health", "/metrics", "/openapi.json", "/admin/v1/requests", "/admin/v1/accounts/{id}"] {
        assert!(doc["paths"][path].is_object(), "{path} is not in the document");
    }
    // Unknown paths answer JSON errors too (the document promises JSON).
    let (head, body) = get(&server.http, "/admin/v1/nothing", "");
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(body.contains("\"code\":\"invalid_request\""), "{body}");
    let report = dir.join("schemathesis.xml");
    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "run", &format!("http://{}/openapi.json", server.http)])
        .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
        // Every check but positive_data_acceptance: a request the schema
        // allows may still be refused by the rules (an unknown account is
        // 404, as documented).
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--seed", "1"])
        .args(["--workers", "1", "--request-timeout", "10", "--generation-database", "none", "--no-color"])
        .args(["--report", "junit", "--report-junit-path", report.to_str().unwrap()])
        .current_dir(&dir)
        .output()
        .expect("python3 runs (bash .ci/setup installs schemathesis)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found the server and its document disagree:\n{text}");
    // It tested every operation (a schema it could not load would test
    // none); /openapi.json itself, the schema, it leaves out: read above.
    let report = std::fs::read_to_string(&report).unwrap();
    for path in doc["paths"].as_object().unwrap().keys().filter(|p| *p != "/openapi.json") {
        for method in doc["paths"][path].as_object().unwrap().keys() {
            let case = format!("testcase name=\"{} {path}\"", method.to_uppercase());
            assert!(report.contains(&case), "{case} is not in the report:\n{report}\n{text}");
        }
    }
    assert_eq!(sigterm(server), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `prepaid serve | true`: the reader of its stdout going away does not
/// stop a node (it used to end it by SIGPIPE on its first line, mid-start,
/// leaving the data dir's lock and an ephemeral directory behind).
#[test]
fn a_closed_stdout_does_not_stop_serve() {
    let dir = std::env::temp_dir().join(format!("prepaid-serve-pipe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prepaid"))
        .args(["serve", "--simulated-gateway"])
        .env("PREPAID_DATA_DIR", &dir)
        .env("PREPAID_GRPC_ADDR", "127.0.0.1:0")
        .env("PREPAID_HTTP_ADDR", &http)
        .env("PREPAID_TOKENS", format!("ops:admin:{ADMIN}"))
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // It serves (the HTTP port was free a moment ago: wait for it).
    let mut health = None;
    for _ in 0..500 {
        if let Ok(mut s) = std::net::TcpStream::connect(&http) {
            use std::io::{Read, Write};
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            health = Some(text);
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let health = health.unwrap_or_else(|| panic!("serve ended: {:?}", child.try_wait()));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(child.try_wait().unwrap().is_none(), "serve stopped");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A free loopback port: bound by the OS, then let go for a node to take.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

mod cluster {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use prepaid::ledger::Amount;
    use prepaid::{Client, ClientError, ClusterClient};

    use super::serve::{self, ADMIN, Server};

    const SECRET: &str = "cluster-secret-0123456789";
    /// One cluster at a time on 2 cores: seven processes electing at once
    /// would measure the machine, not the cluster.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    /// Bounded retries of one request (20 ms apart): a failover takes a
    /// few election timeouts.
    const TRIES: u32 = 1_000;

    /// Node `id` of the cluster `members`, on its gRPC port, in `dir`.
    fn start_member(id: u64, dir: &Path, port: u16, members: &str) -> Server {
        let (id, grpc) = (id.to_string(), format!("127.0.0.1:{port}"));
        let env = [
            ("PREPAID_GRPC_ADDR", grpc.as_str()),
            ("PREPAID_CLUSTER_NODE_ID", id.as_str()),
            ("PREPAID_CLUSTER_MEMBERS", members),
            ("PREPAID_CLUSTER_SECRET", SECRET),
            ("PREPAID_CLUSTER_HEARTBEAT_MS", "50"),
            ("PREPAID_CLUSTER_ELECTION_TIMEOUT_MIN_MS", "200"),
            ("PREPAID_CLUSTER_ELECTION_TIMEOUT_MAX_MS", "400"),
        ];
        serve::start_env(dir, &[], &env)
    }

    fn cluster_cli(server: &Server, what: &str) -> (i32, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["cluster", what, "--http", &format!("http://{}", server.http), "--token", ADMIN])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    #[derive(Clone)]
    enum Op {
        Open,
        Purchase(String),
        Debit(String),
        Balance,
    }

    /// The cluster as a client sees it: a connection per live node, and
    /// where each account's requests went last.
    struct Clients {
        addrs: BTreeMap<u64, String>,
        conns: BTreeMap<u64, Client>,
        hint: BTreeMap<String, u64>,
        /// Nodes that did not answer in time, and when: passed over for a
        /// second (a stopped node stays slow; one that forwarded to it
        /// answers again once its group has a new leader).
        slow: BTreeMap<u64, Instant>,
    }

    impl Clients {
        /// The node after `id`, round the cluster.
        fn next(&self, id: u64) -> u64 {
            *self.addrs.range(id + 1..).next().or_else(|| self.addrs.iter().next()).unwrap().0
        }

        async fn conn(&mut self, id: u64) -> Option<Client> {
            if !self.conns.contains_key(&id) {
                let client = Client::connect(&self.addrs[&id], ADMIN).await.ok()?.with_deadline(Duration::from_secs(1));
                self.conns.insert(id, client);
            }
            self.conns.get(&id).cloned()
        }

        /// `op` on `account`, sent where the account's group is led: a
        /// `wrong_node` names the leader; while a group has none (a
        /// failover), or a node is gone, the same request (same key) is
        /// sent again. The balance after it.
        async fn run(&mut self, account: &str, op: Op) -> String {
            let first = *self.addrs.keys().next().unwrap();
            let mut to = self.hint.get(account).copied().filter(|id| self.addrs.contains_key(id)).unwrap_or(first);
            let mut last = None;
            for _ in 0..TRIES {
                self.slow.retain(|_, at| at.elapsed() < Duration::from_secs(1));
                if self.slow.contains_key(&to) && self.slow.len() < self.addrs.len() {
                    to = self.next(to);
                    continue;
                }
                let Some(client) = self.conn(to).await else {
                    to = self.next(to);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let answer = match &op {
                    Op::Open => client.open_account(account).await.map(|a| a.balance),
                    Op::Purchase(key) => client.purchase(account, key, "100").await.map(|a| a.balance),
                    Op::Debit(key) => client.debit(account, key, "1").await.map(|a| a.balance),
                    Op::Balance => client.balance(account).await.map(|b| b.balance),
                };
                match answer {
                    Ok(balance) => {
                        self.hint.insert(account.to_string(), to);
                        return balance;
                    }
                    Err(ClientError::Refused { code, message }) if code == "wrong_node" => {
                        // "node N (addr) leads shard S; …"
                        let named = message.split_whitespace().nth(1).and_then(|n| n.parse().ok());
                        to = named.filter(|id| self.addrs.contains_key(id)).unwrap_or_else(|| self.next(to));
                        last = Some(message);
                    }
                    Err(e) => {
                        if matches!(e, ClientError::Unavailable(_) | ClientError::OutcomeUnknown(_)) {
                            if matches!(e, ClientError::OutcomeUnknown(_)) {
                                self.slow.insert(to, Instant::now());
                            }
                            self.conns.remove(&to);
                            to = self.next(to);
                        }
                        last = Some(e.to_string());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            panic!("{account}: no node answered; the last answer: {last:?}");
        }
    }

    /// Three `prepaid serve` processes on loopback make a cluster
    /// (`prepaid cluster init`): 16 shard groups of 3, each node leading
    /// its share (node 1 leads all 16 at init and hands the others theirs).
    /// Every node takes every request (forwarding what it does not lead),
    /// and a client that follows `wrong_node` gets every request applied
    /// once; the node leading most groups is killed with SIGKILL under the
    /// load, the other two take its groups over and go on, and it comes
    /// back from its disks and is handed its share again. Then the node
    /// leading most groups is stopped
    /// (SIGSTOP: a leader that does not know it was deposed) while the
    /// load goes on, and let go again (SIGCONT): what it held from before
    /// applies nowhere. Every acknowledged debit is in the balances once,
    /// and every account's ledger sums to its balance.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_serve_processes_make_a_cluster_that_outlives_a_kill_9() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let (root, ports, members, mut servers, leaders) = start_three("prepaid-cluster", 3);
        let dir = |id: u64| root.join(format!("node-{id}"));
        // The status says 256 shards, 16 a group.
        let (_, out, _) = cluster_cli(&servers[&1], "status");
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!((status["node_id"].as_u64(), status["groups"].as_array().map(Vec::len)), (Some(1), Some(16)));
        // A second init is refused: the cluster exists.
        let (code, _, err) = cluster_cli(&servers[&2], "init");
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("invalid_request"), "{err}");

        let addrs = ports.iter().map(|(id, p)| (*id, format!("127.0.0.1:{p}"))).collect();
        let mut clients = Clients { addrs, conns: BTreeMap::new(), hint: BTreeMap::new(), slow: Default::default() };
        let accounts: Vec<String> = (0..24).map(|i| format!("acct-{i}")).collect();
        let mut debits: BTreeMap<String, i64> = BTreeMap::new();
        for a in &accounts {
            clients.run(a, Op::Open).await;
            clients.run(a, Op::Purchase("buy".into())).await;
            for round in 0..3 {
                clients.run(a, Op::Debit(format!("d-{round}"))).await;
                *debits.entry(a.clone()).or_default() += 1;
            }
        }

        // A ClusterClient, given node 2 alone, learns the map and sends
        // each account's requests straight to its group's leader: no node
        // forwards any of them.
        let cc = ClusterClient::connect(&[&clients.addrs[&2]], ADMIN).await.unwrap();
        let before = forwarded_total(&servers);
        for a in &accounts {
            cc_debit(&cc, a, "cc-0").await;
            *debits.entry(a.clone()).or_default() += 1;
        }
        // A batch of debits for every account: split by leader, one call
        // each, one reply per request in order, none forwarded either.
        let batch = accounts
            .iter()
            .enumerate()
            .map(|(n, a)| prepaid::wire::pb::Request {
                id: 100 + n as u64,
                op: Some(prepaid::wire::pb::request::Op::Debit(prepaid::wire::pb::Debit {
                    account: a.clone(),
                    idempotency_key: "cc-batch".into(),
                    amount: "1".into(),
                    ..Default::default()
                })),
            })
            .collect();
        let replies = cc.execute(batch).await;
        let ids: Vec<u64> = replies.iter().map(|r| r.id).collect();
        assert_eq!(ids, (100..100 + accounts.len() as u64).collect::<Vec<_>>());
        for (a, reply) in accounts.iter().zip(&replies) {
            assert!(matches!(reply.result, Some(prepaid::wire::pb::reply::Result::Accepted(_))), "{a}: {reply:?}");
            *debits.entry(a.clone()).or_default() += 1;
        }
        assert_eq!(forwarded_total(&servers), before, "every request went straight to its leader");

        // Any node takes any request: one that does not lead the account's
        // group forwards it, over the node link, to the node that does.
        for id in 1..=3u64 {
            let client = clients.conn(id).await.unwrap();
            for a in &accounts[..6] {
                let key = format!("via-{id}");
                let first = client.debit(a, &key, "1").await.unwrap();
                let again = client.debit(a, &key, "1").await.unwrap();
                assert!(!first.replayed && again.replayed, "forwarded or not, a key applies once");
                *debits.entry(a.clone()).or_default() += 1;
            }
        }

        // SIGKILL the node leading most groups, then debit every account:
        // the time from the kill to each account's debit acknowledged.
        let (&victim, _) = leaders.iter().max_by_key(|(_, n)| **n).unwrap();
        let killed = Instant::now();
        drop(servers.remove(&victim));
        clients.conns.remove(&victim);
        let mut back = Duration::ZERO;
        for a in &accounts {
            clients.run(a, Op::Debit("d-3".into())).await;
            *debits.entry(a.clone()).or_default() += 1;
            back = back.max(killed.elapsed());
        }
        eprintln!(
            "node {victim} killed (it led {} of 16 groups): every account served again within {back:?}",
            leaders[&victim]
        );
        // The ClusterClient's map still names the killed node for its
        // groups: it finds the node gone, learns the map again and goes on.
        for a in &accounts {
            cc_debit(&cc, a, "cc-1").await;
            *debits.entry(a.clone()).or_default() += 1;
        }

        // It comes back from its disks where it was; the load goes on.
        servers.insert(victim, start_member(victim, &dir(victim), ports[&victim], &members));
        for a in &accounts {
            clients.run(a, Op::Debit("d-4".into())).await;
            // A resend of an acknowledged debit is its first result.
            clients.run(a, Op::Debit("d-2".into())).await;
            *debits.entry(a.clone()).or_default() += 1;
        }
        // SIGSTOP the node leading most groups now: a leader that is
        // deposed without knowing it. The load goes on through the others;
        // requests sent to it meanwhile are resent elsewhere under their
        // keys. Then SIGCONT: it learns the new terms and applies nothing
        // of its own.
        // Back and caught up, it is handed its share of the groups again.
        let led = wait_balanced(&servers[&1], &[1, 2, 3]);
        let (&stale, _) = led.iter().max_by_key(|(_, n)| **n).unwrap();
        let pid = servers[&stale].child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
        let stopped = Instant::now();
        let mut back = Duration::ZERO;
        for a in &accounts {
            clients.run(a, Op::Debit("d-5".into())).await;
            *debits.entry(a.clone()).or_default() += 1;
            back = back.max(stopped.elapsed());
        }
        eprintln!("node {stale} stopped (it led {} groups): every account served again within {back:?}", led[&stale]);
        assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
        clients.slow.clear();
        for a in &accounts {
            clients.run(a, Op::Debit("d-6".into())).await;
            clients.run(a, Op::Debit("d-5".into())).await;
            *debits.entry(a.clone()).or_default() += 1;
        }

        for a in &accounts {
            let balance = clients.run(a, Op::Balance).await;
            let expected = 100 - debits[a];
            assert_eq!(balance, format!("{expected}.00"), "account {a}");
            // The ledger sums to the balance, as its leader keeps it.
            let leader = clients.hint[a];
            let client = clients.conn(leader).await.unwrap();
            let history = client.history(a, 0, 1_000).await.unwrap();
            let count = |kind: &str| history.iter().filter(|r| r.kind == kind).count() as i64;
            assert_eq!((count("credited"), count("debited")), (1, debits[a]), "each applied once: {a}");
            // Each record moves the balance by its own amount, exactly.
            let mut at = Amount::ZERO;
            for r in &history {
                let after = Amount::parse(&r.balance_after).unwrap();
                let moved = match r.kind.as_str() {
                    "credited" => Amount::whole(100),
                    "debited" => Amount::whole(-1),
                    _ => Amount::ZERO,
                };
                assert_eq!(after, at + moved, "account {a}, record {}", r.seq);
                at = after;
            }
            assert_eq!(at.to_string(), balance);
            // Every node's copy of the ledger is the same, once it has
            // applied the log (followers apply just behind the leader).
            for id in 1..=3u64 {
                let node = clients.conn(id).await.unwrap();
                let mut same = false;
                for _ in 0..TRIES {
                    if node.history(a, 0, 1_000).await.unwrap() == history {
                        same = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert!(same, "node {id} holds another ledger for {a}");
            }
        }
        // /metrics per group: at one moment, each group is served by one
        // node exactly (bounded wait: a lease may be in renewal); nodes 2
        // and 3 forwarded what they did not lead.
        let serving =
            |text: &str, group: u64| text.contains(&format!("prepaid_cluster_group_serving{{group=\"{group}\"}} 1\n"));
        let mut once = false;
        for _ in 0..TRIES {
            let texts: Vec<String> = servers.values().map(|s| super::get(&s.http, "/metrics", "").1).collect();
            once = (0..16).all(|g| texts.iter().filter(|t| serving(t, g)).count() == 1);
            if once {
                let forwarded = |t: &str| {
                    let line = t.lines().find(|l| l.starts_with("prepaid_cluster_forwarded_total ")).unwrap();
                    line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
                };
                // Each of them was sent 12 debits of 6 accounts, most in
                // groups another node leads (a forwarded debit and its
                // resend count 2).
                assert!(forwarded(&texts[1]) >= 2 && forwarded(&texts[2]) >= 2, "{}", texts[1]);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(once, "every group served by exactly one node");
        for (_, server) in servers {
            assert_eq!(serve::sigterm(server), 0);
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Network namespaces a test makes: a hub holding a bridge, and one
    /// per node joined to it by a veth pair (node `i` at 10.77.0.i, the
    /// hub at 10.77.0.254). Deleted when dropped.
    struct Namespaces {
        hub: String,
        nodes: Vec<String>,
    }

    fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip").args(args).output().expect("ip (iproute2) runs");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }

    impl Namespaces {
        /// Needs root (CAP_NET_ADMIN), as CI and this machine have.
        fn make(n: usize) -> Namespaces {
            let tag = format!("pp{}", std::process::id());
            let ns = Namespaces { hub: format!("{tag}h"), nodes: (1..=n).map(|i| format!("{tag}n{i}")).collect() };
            ip(&["netns", "add", &ns.hub]);
            ip(&["-n", &ns.hub, "link", "add", "br0", "type", "bridge"]);
            ip(&["-n", &ns.hub, "addr", "add", "10.77.0.254/24", "dev", "br0"]);
            ip(&["-n", &ns.hub, "link", "set", "br0", "up"]);
            for (i, node) in ns.nodes.iter().enumerate() {
                let (end, peer, addr) = (format!("v{}", i + 1), format!("h{}", i + 1), format!("10.77.0.{}/24", i + 1));
                ip(&["netns", "add", node]);
                ip(&["link", "add", &end, "netns", node, "type", "veth", "peer", "name", &peer, "netns", &ns.hub]);
                ip(&["-n", node, "addr", "add", &addr, "dev", &end]);
                ip(&["-n", node, "link", "set", &end, "up"]);
                ip(&["-n", node, "link", "set", "lo", "up"]);
                ip(&["-n", &ns.hub, "link", "set", &peer, "master", "br0"]);
                ip(&["-n", &ns.hub, "link", "set", &peer, "up"]);
            }
            ns
        }

        /// Cuts node `id` off from every other node and every client
        /// (its port on the bridge down), or lets it back.
        fn cut(&self, id: u64, cut: bool) {
            ip(&["-n", &self.hub, "link", "set", &format!("h{id}"), if cut { "down" } else { "up" }]);
        }

        /// `prepaid cluster WHAT` from the hub, against node `id`.
        fn cluster(&self, id: u64, what: &str) -> (i32, String, String) {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &self.hub, env!("CARGO_BIN_EXE_prepaid"), "cluster", what])
                .args(["--http", &format!("http://10.77.0.{id}:7071"), "--token", ADMIN])
                .output()
                .unwrap();
            let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
            (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
        }
    }

    impl Drop for Namespaces {
        fn drop(&mut self) {
            for ns in self.nodes.iter().chain([&self.hub]) {
                let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }

    /// Three `prepaid serve` nodes, each in a network namespace of its
    /// own, make a cluster; one is cut off from the others and from every
    /// client (its port on the bridge down) while the load goes on through
    /// the rest, then healed. The two left elect leaders for its groups
    /// and serve every account; healed, the cut-off node drops what it
    /// could not commit, catches up, and is handed its share of the lead
    /// again. Every acknowledged debit is in the balances once, and every
    /// node holds the same ledger for every account. (Needs root, to make
    /// namespaces: CI and this machine run as root.)
    #[test]
    fn a_node_cut_off_from_the_others_is_healed_with_nothing_lost() {
        let _alone = ONE_AT_A_TIME.blocking_lock();
        let ns = Namespaces::make(3);
        let root: PathBuf = std::env::temp_dir().join(format!("prepaid-partition-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let members = "1=10.77.0.1:7070,2=10.77.0.2:7070,3=10.77.0.3:7070";
        let mut servers: BTreeMap<u64, Server> = BTreeMap::new();
        for id in 1..=3u64 {
            let (grpc, http, id_s) = (format!("10.77.0.{id}:7070"), format!("10.77.0.{id}:7071"), id.to_string());
            let env = [
                ("PREPAID_GRPC_ADDR", grpc.as_str()),
                ("PREPAID_HTTP_ADDR", http.as_str()),
                ("PREPAID_CLUSTER_NODE_ID", id_s.as_str()),
                ("PREPAID_CLUSTER_MEMBERS", members),
                ("PREPAID_CLUSTER_SECRET", SECRET),
                ("PREPAID_CLUSTER_HEARTBEAT_MS", "50"),
                ("PREPAID_CLUSTER_ELECTION_TIMEOUT_MIN_MS", "200"),
                ("PREPAID_CLUSTER_ELECTION_TIMEOUT_MAX_MS", "400"),
            ];
            let dir = root.join(format!("node-{id}"));
            servers.insert(id, serve::start_in(&ns.nodes[id as usize - 1], &dir, &[], &env));
        }
        let (code, out, err) = ns.cluster(1, "init");
        assert_eq!(code, 0, "{out}{err}");
        let balanced = |ns: &Namespaces, from: u64| {
            for _ in 0..TRIES {
                let (code, out, _) = ns.cluster(from, "status");
                let status: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
                let groups = status["groups"].as_array().cloned().unwrap_or_default();
                let preferred =
                    |g: &serde_json::Value| g["leader"].as_u64() == Some(g["group"].as_u64().unwrap() % 3 + 1);
                if code == 0 && groups.len() == 16 && groups.iter().all(preferred) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("the lead is not spread over the three nodes");
        };
        balanced(&ns, 1);

        // The client runs in the hub: a thread that enters its namespace.
        let hub = std::fs::File::open(format!("/var/run/netns/{}", ns.hub)).unwrap();
        let cut_ns = &ns;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    use std::os::fd::AsRawFd;
                    // SAFETY: setns on this thread only, with a namespace
                    // file descriptor that stays open for the call.
                    assert_eq!(unsafe { libc::setns(hub.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    runtime.block_on(async {
                        let addrs = (1..=3u64).map(|id| (id, format!("10.77.0.{id}:7070"))).collect();
                        let mut clients =
                            Clients { addrs, conns: BTreeMap::new(), hint: BTreeMap::new(), slow: Default::default() };
                        let accounts: Vec<String> = (0..12).map(|i| format!("acct-{i}")).collect();
                        for a in &accounts {
                            clients.run(a, Op::Open).await;
                            clients.run(a, Op::Purchase("buy".into())).await;
                            clients.run(a, Op::Debit("d-0".into())).await;
                        }
                        // Node 1 is cut off; the load goes on.
                        cut_ns.cut(1, true);
                        let cut = Instant::now();
                        let mut back = Duration::ZERO;
                        for a in &accounts {
                            clients.run(a, Op::Debit("d-1".into())).await;
                            back = back.max(cut.elapsed());
                        }
                        eprintln!("node 1 cut off: every account served again within {back:?}");
                        // Healed: it catches up and is handed its share again.
                        cut_ns.cut(1, false);
                        clients.slow.clear();
                        clients.conns.clear();
                        for a in &accounts {
                            clients.run(a, Op::Debit("d-2".into())).await;
                            clients.run(a, Op::Debit("d-1".into())).await;
                        }
                        balanced(cut_ns, 1);
                        for a in &accounts {
                            assert_eq!(clients.run(a, Op::Balance).await, "97.00", "account {a}");
                            let leader = clients.hint[a];
                            let history = clients.conn(leader).await.unwrap().history(a, 0, 1_000).await.unwrap();
                            assert_eq!(history.iter().filter(|r| r.kind == "debited").count(), 3, "{a}");
                            for id in 1..=3u64 {
                                let node = clients.conn(id).await.unwrap();
                                let mut same = false;
                                for _ in 0..TRIES {
                                    if node.history(a, 0, 1_000).await.unwrap() == history {
                                        same = true;
                                        break;
                                    }
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                                assert!(same, "node {id} holds another ledger for {a}");
                            }
                        }
                    });
                })
                .join()
                .unwrap();
        });
        drop(servers);
        drop(ns);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A debit through `cc`, resent under its key while its outcome is
    /// unknown (bounded).
    async fn cc_debit(cc: &ClusterClient, account: &str, key: &str) {
        let mut last = None;
        for _ in 0..10 {
            match cc.debit(account, key, "1").await {
                Ok(_) => return,
                Err(e @ ClientError::OutcomeUnknown(_)) => last = Some(e),
                Err(e) => panic!("{account}: {e}"),
            }
        }
        panic!("{account}: {last:?}");
    }

    /// Requests forwarded so far, over the nodes of `servers` (their
    /// /metrics).
    fn forwarded_total(servers: &BTreeMap<u64, Server>) -> u64 {
        servers
            .values()
            .map(|s| {
                let text = super::get(&s.http, "/metrics", "").1;
                let line = text.lines().find(|l| l.starts_with("prepaid_cluster_forwarded_total ")).unwrap();
                line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
            })
            .sum()
    }

    /// Nodes 1, 2 and 3 made a cluster (`prepaid cluster init` on node 1),
    /// every group led: the directory they are in, loopback ports for
    /// `ports` nodes (the rest for nodes still to come), their members, the
    /// servers, and how many groups each leads.
    #[allow(clippy::type_complexity)]
    fn start_three(
        name: &str,
        ports: u64,
    ) -> (PathBuf, BTreeMap<u64, u16>, String, BTreeMap<u64, Server>, BTreeMap<u64, usize>) {
        let root: PathBuf = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let ports: BTreeMap<u64, u16> = (1..=ports).map(|id| (id, super::free_port())).collect();
        let members = (1..=3).map(|id| format!("{id}=127.0.0.1:{}", ports[&id])).collect::<Vec<_>>().join(",");
        let servers: BTreeMap<u64, Server> =
            (1..=3).map(|id| (id, start_member(id, &root.join(format!("node-{id}")), ports[&id], &members))).collect();
        let (code, out, err) = cluster_cli(&servers[&1], "init");
        assert_eq!(code, 0, "{out}{err}");
        let leaders = wait_balanced(&servers[&1], &[1, 2, 3]);
        (root, ports, members, servers, leaders)
    }

    /// Once every group is led by its preferred voter (`voters` in id
    /// order, group g to the (g mod n)-th: node 1 takes the lead of all
    /// 16 at init and hands each other node its share), as `server` sees
    /// it (bounded wait): how many groups each node leads.
    fn wait_balanced(server: &Server, voters: &[u64]) -> BTreeMap<u64, usize> {
        let mut last = String::new();
        for _ in 0..TRIES {
            let (code, out, err) = cluster_cli(server, "status");
            assert_eq!(code, 0, "{err}");
            let status: serde_json::Value = serde_json::from_str(&out).unwrap();
            let groups = status["groups"].as_array().unwrap();
            let preferred = |g: &serde_json::Value| {
                let group = g["group"].as_u64().unwrap() as usize;
                g["leader"].as_u64() == Some(voters[group % voters.len()])
            };
            if groups.len() == 16 && groups.iter().all(preferred) {
                let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
                for g in groups {
                    *leaders.entry(g["leader"].as_u64().unwrap()).or_default() += 1;
                }
                return leaders;
            }
            last = out;
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the groups' lead is not spread over {voters:?}: {last}");
    }

    /// The map as node `server` applied it, and each node's group count.
    fn map_of(server: &Server) -> (serde_json::Value, BTreeMap<u64, usize>) {
        let (code, out, err) = cluster_cli(server, "status");
        assert_eq!(code, 0, "{err}");
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut held: BTreeMap<u64, usize> = BTreeMap::new();
        for g in status["groups"].as_array().unwrap() {
            for v in g["voters"].as_array().unwrap() {
                *held.entry(v.as_u64().unwrap()).or_default() += 1;
            }
        }
        (status, held)
    }

    /// Waits (bounded) until `done(status, held)` holds as `server` sees it.
    fn wait_map(server: &Server, what: &str, done: impl Fn(&serde_json::Value, &BTreeMap<u64, usize>) -> bool) {
        let mut last = serde_json::Value::Null;
        for _ in 0..TRIES * 3 {
            let (status, held) = map_of(server);
            if done(&status, &held) {
                return;
            }
            last = status;
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what}: not within the wait; the last status: {last}");
    }

    /// Four nodes make a cluster of three replicas a group: each node holds
    /// 12 of the 16 groups, and every node takes every account's requests
    /// (forwarding those of groups it holds no member of by the map). Only
    /// one of the controller's first voters makes the cluster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn four_nodes_make_a_cluster_of_three_replicas_a_group() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let root: PathBuf = std::env::temp_dir().join(format!("prepaid-four-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let ports: BTreeMap<u64, u16> = (1..=4).map(|id| (id, super::free_port())).collect();
        let addr = |id: u64| format!("127.0.0.1:{}", ports[&id]);
        let members = (1..=4).map(|id| format!("{id}={}", addr(id))).collect::<Vec<_>>().join(",");
        let servers: BTreeMap<u64, Server> =
            (1..=4).map(|id| (id, start_member(id, &root.join(format!("node-{id}")), ports[&id], &members))).collect();
        let (code, _, err) = cluster_cli(&servers[&4], "init");
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("invalid_request") && err.contains("run init on one of nodes"), "{err}");
        let (code, out, err) = cluster_cli(&servers[&1], "init");
        assert_eq!(code, 0, "{out}{err}");
        wait_map(&servers[&4], "node 4 follows the map", |s, held| {
            s["map"]["version"].as_u64().unwrap_or(0) > 0 && held.values().all(|n| *n == 12) && held.len() == 4
        });
        let (status, _) = map_of(&servers[&4]);
        let groups = status["groups"].as_array().unwrap();
        for g in groups {
            let holds = g["voters"].as_array().unwrap().contains(&4.into());
            assert_eq!(g["member"], holds, "{g}");
            assert_eq!(g["voters"].as_array().unwrap().len(), 3, "{g}");
        }
        // Everything through node 4 alone: what it holds no member of is
        // forwarded by the map.
        let addrs = [(4, addr(4))].into_iter().collect();
        let mut clients = Clients { addrs, conns: BTreeMap::new(), hint: BTreeMap::new(), slow: Default::default() };
        let accounts: Vec<String> = (0..24).map(|i| format!("acct-{i}")).collect();
        for a in &accounts {
            clients.run(a, Op::Open).await;
            clients.run(a, Op::Purchase("buy".into())).await;
            assert_eq!(clients.run(a, Op::Debit("d-0".into())).await, "99.00", "{a}");
        }
        // ClusterClient, from node 4's map, sends each to its leader.
        let four = addr(4);
        let seeds = [four.as_str()];
        let cluster = ClusterClient::connect(&seeds, ADMIN).await.unwrap();
        for a in &accounts {
            assert_eq!(cluster.debit(a, "d-1", "1").await.unwrap().balance, "98.00", "{a}");
        }
        for (_, server) in servers {
            assert_eq!(serve::sigterm(server), 0);
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A leader stopped (SIGSTOP) while its place is given to a new node:
    /// `prepaid cluster replace` moves every member of node 1 to node 4
    /// while node 1 sleeps, then node 1 wakes (SIGCONT) believing it leads
    /// its groups. It serves none of them again and applies nothing of its
    /// own: what it acknowledges it forwarded to a group's real leader, and
    /// is in the balances once. A `ClusterClient` made before, whose map
    /// says node 1 leads a third of the groups and which lists node 1
    /// first, gets every request applied once: it learns the map of the
    /// highest version, not node 1's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_leader_replaced_while_it_slept_applies_nothing_of_its_own() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let (root, ports, _, mut servers, led) = start_three("prepaid-stale", 4);
        let dir = |id: u64| root.join(format!("node-{id}"));
        let addr = |id: u64| format!("127.0.0.1:{}", ports[&id]);
        assert!(led[&1] > 0, "{led:?}");
        let (a1, a2, a3) = (addr(1), addr(2), addr(3));
        let old = ClusterClient::connect(&[a1.as_str(), a2.as_str(), a3.as_str()], ADMIN).await.unwrap();
        let accounts: Vec<String> = (0..24).map(|i| format!("acct-{i}")).collect();
        for a in &accounts {
            old.open_account(a).await.unwrap();
            old.purchase(a, "buy", "100").await.unwrap();
        }
        servers.insert(4, start_member(4, &dir(4), ports[&4], &format!("4={}", addr(4))));
        let pid = servers[&1].child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["cluster", "replace", "--from", "1", "--to", "4", "--to-addr", &addr(4)])
            .args(["--http", &format!("http://{}", servers[&2].http), "--token", ADMIN])
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        wait_map(&servers[&2], "node 1 gone, node 4 in every group", |_, held| {
            !held.contains_key(&1) && held.get(&4) == Some(&16)
        });
        assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
        // Node 1 serves no group again (it learns the later terms from the
        // members it still reaches), and applies nothing of its own: what
        // it acknowledges it forwarded to a group's real leader.
        wait_map(&servers[&1], "node 1 serves nothing", |s, _| {
            s["groups"].as_array().unwrap().iter().all(|g| g["serving"] == false)
        });
        let stale = Client::connect(&a1, ADMIN).await.unwrap().with_deadline(Duration::from_secs(10));
        let mut through_stale: BTreeMap<String, i64> = BTreeMap::new();
        for a in accounts.iter().take(6) {
            match stale.debit(a, "through-the-stale-node", "50").await {
                Ok(_) => *through_stale.entry(a.clone()).or_default() += 50,
                Err(ClientError::Refused { code, .. }) => {
                    assert!(code == "shard_unavailable" || code == "wrong_node", "{a}: {code}")
                }
                Err(ClientError::Unavailable(_) | ClientError::OutcomeUnknown(_)) => {
                    // Unknown: resent under its key until it is known.
                    let mut known = false;
                    for _ in 0..TRIES {
                        if old.debit(a, "through-the-stale-node", "50").await.is_ok() {
                            *through_stale.entry(a.clone()).or_default() += 50;
                            known = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    assert!(known, "{a}: the resend never got an answer");
                }
            }
        }
        // The client made before: every debit applied once (it resends
        // under the same key only what it could not place).
        for a in &accounts {
            let mut applied = None;
            for _ in 0..TRIES {
                match old.debit(a, "d-1", "1").await {
                    Ok(reply) => {
                        applied = Some(reply.balance);
                        break;
                    }
                    Err(e)
                        if matches!(
                            e.code(),
                            "outcome_unknown" | "unavailable" | "shard_unavailable" | "wrong_node"
                        ) =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("{a}: {e}"),
                }
            }
            let left = Amount::whole(99 - through_stale.get(a).copied().unwrap_or(0));
            assert_eq!(applied, Some(left.to_string()), "{a}");
        }
        for a in &accounts {
            let left = Amount::whole(99 - through_stale.get(a).copied().unwrap_or(0));
            assert_eq!(old.balance(a).await.unwrap().balance, left.to_string(), "{a}: every debit once");
        }
        for (_, server) in servers {
            assert_eq!(serve::sigterm(server), 0);
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A fourth node joins a cluster of three under load, a group member
    /// is moved by hand, and then one of the first three leaves: every
    /// request goes through every node meanwhile (the joining one too,
    /// before it holds anything: it forwards by the map). The controller
    /// plans the moves, its mover runs them one at a time, each node ends
    /// up holding its share, the one that left is dropped from the map,
    /// and every acknowledged debit is in its account once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_join_and_leave_a_cluster_under_load_with_nothing_lost() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let (root, ports, _, mut servers, _) = start_three("prepaid-join", 4);
        let dir = |id: u64| root.join(format!("node-{id}"));
        let addr = |id: u64| format!("127.0.0.1:{}", ports[&id]);
        let (status, held) = map_of(&servers[&1]);
        assert_eq!(held.values().copied().collect::<Vec<_>>(), vec![16, 16, 16], "{status}");
        // Node 4 starts empty, knowing only itself.
        servers.insert(4, start_member(4, &dir(4), ports[&4], &format!("4={}", addr(4))));

        // The load: 16 accounts, a debit of 1 each round, through every
        // node in turn, until told to stop (or a bounded number of rounds).
        let accounts: Vec<String> = (0..16).map(|i| format!("acct-{i}")).collect();
        let addrs = [1, 2, 3, 4].into_iter().map(|id| (id, addr(id))).collect();
        let mut clients = Clients { addrs, conns: BTreeMap::new(), hint: BTreeMap::new(), slow: Default::default() };
        for a in &accounts {
            clients.run(a, Op::Open).await;
            clients.run(a, Op::Purchase("buy".into())).await;
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (accounts, stop) = (accounts.clone(), std::sync::Arc::clone(&stop));
            tokio::spawn(async move {
                let mut debits: BTreeMap<String, i64> = BTreeMap::new();
                let mut slowest = Duration::ZERO;
                for round in 0..2_000 {
                    if stop.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    for (i, a) in accounts.iter().enumerate() {
                        // Each account through another node each round.
                        clients.hint.insert(a.clone(), 1 + ((round + i) % 4) as u64);
                        let started = Instant::now();
                        clients.run(a, Op::Debit(format!("d-{round}"))).await;
                        slowest = slowest.max(started.elapsed());
                        *debits.entry(a.clone()).or_default() += 1;
                    }
                }
                (debits, slowest, clients)
            })
        };

        // Node 4 joins (asked of node 2: the change goes to the
        // controller's leader wherever it is).
        let join = std::process::Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["cluster", "join", "--node", "4", "--addr", &addr(4)])
            .args(["--http", &format!("http://{}", servers[&2].http), "--token", ADMIN])
            .output()
            .unwrap();
        assert_eq!(join.status.code(), Some(0), "{}", String::from_utf8_lossy(&join.stderr));
        wait_map(&servers[&4], "node 4 holds its share", |s, held| {
            s["map"]["planned"].as_array().is_some_and(Vec::is_empty) && held.get(&4) == Some(&12)
        });
        let (status, held) = map_of(&servers[&3]);
        assert_eq!(held.values().copied().collect::<Vec<_>>(), vec![12, 12, 12, 12], "{status}");
        assert!(status["map"]["done"].as_array().unwrap().iter().all(|d| d["outcome"] == "moved"), "{status}");

        // One member moved by hand: a group node 4 is not in, from its
        // first voter to node 4, named by a shard of it.
        let group = status["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| !g["voters"].as_array().unwrap().contains(&4.into()))
            .unwrap()
            .clone();
        let (g, from) = (group["group"].as_u64().unwrap(), group["voters"][0].as_u64().unwrap());
        let shard = group["first_shard"].as_u64().unwrap().to_string();
        let moved = std::process::Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["cluster", "move-shard", "--shard", &shard, "--from", &from.to_string(), "--to", "4"])
            .args(["--http", &format!("http://{}", servers[&4].http), "--token", ADMIN])
            .output()
            .unwrap();
        assert_eq!(moved.status.code(), Some(0), "{}", String::from_utf8_lossy(&moved.stderr));
        wait_map(&servers[&1], "the group moved by hand", |s, _| {
            s["groups"][g as usize]["voters"].as_array().unwrap().contains(&4.into())
                && s["map"]["planned"].as_array().is_some_and(Vec::is_empty)
        });
        // A move that does not fit is refused with a sentence.
        let bad = std::process::Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["cluster", "move-shard", "--group", "99", "--from", "1", "--to", "4"])
            .args(["--http", &format!("http://{}", servers[&1].http), "--token", ADMIN])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(bad.status.code(), Some(1), "{err}");
        assert!(err.contains("invalid_request") && err.contains("no group 99"), "{err}");

        // Node 1 leaves: everything it holds moves to the others.
        let leave = std::process::Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["cluster", "leave", "--node", "1"])
            .args(["--http", &format!("http://{}", servers[&3].http), "--token", ADMIN])
            .output()
            .unwrap();
        assert_eq!(leave.status.code(), Some(0), "{}", String::from_utf8_lossy(&leave.stderr));
        wait_map(&servers[&2], "node 1 gone from the map", |s, held| {
            !held.contains_key(&1)
                && s["map"]["nodes"].as_array().unwrap().iter().all(|n| n["node"] != 1)
                && s["map"]["planned"].as_array().is_some_and(Vec::is_empty)
        });
        stop.store(true, std::sync::atomic::Ordering::Release);
        let (debits, slowest, mut clients) = load.await.unwrap();
        println!(
            "join, a move and a leave under load: {} debits, the slowest {slowest:?} (retries included)",
            debits.values().sum::<i64>()
        );
        let (status, held) = map_of(&servers[&2]);
        assert_eq!(held.values().copied().collect::<Vec<_>>(), vec![16, 16, 16], "{status}");
        assert!(status["map"]["done"].as_array().unwrap().iter().all(|d| d["outcome"] == "moved"), "{status}");

        // Node 1 stops; the three that stay serve every account with every
        // acknowledged debit once, and its ledger sums to its balance.
        assert_eq!(serve::sigterm(servers.remove(&1).unwrap()), 0);
        clients.addrs = [2, 3, 4].into_iter().map(|id| (id, addr(id))).collect();
        clients.conns.clear();
        clients.hint.clear();
        for a in &accounts {
            let expected = Amount::whole(100 - debits[a]);
            assert_eq!(clients.run(a, Op::Balance).await, expected.to_string(), "account {a}");
            // Every member's ledger has every debit once (a follower's
            // copy may be an entry behind for a moment: asked again).
            let mut counts = Vec::new();
            for _ in 0..TRIES {
                counts.clear();
                for id in [2, 3, 4] {
                    match clients.conn(id).await.unwrap().history(a, 0, 1_000).await {
                        Ok(h) => counts.push(h.iter().filter(|r| r.kind == "debited").count() as i64),
                        Err(ClientError::Refused { code, .. }) if code == "wrong_node" => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                if counts.len() == 3 && counts.iter().all(|c| *c == debits[a]) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(counts, vec![debits[a]; 3], "{a}: the members' ledgers");
        }
        for (_, server) in servers {
            assert_eq!(serve::sigterm(server), 0);
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A node whose disk is lost is replaced: its process is killed and its
    /// data dir deleted, a new node (its own id, an empty data dir) starts,
    /// and `prepaid cluster replace` gives it the lost node's place in
    /// every group. It catches up from the leaders' logs; then another of
    /// the first nodes is killed, and the new node and the last old one
    /// (a majority of each group's voters now) serve every account with
    /// every acknowledged debit in it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_whose_disk_is_lost_is_replaced_by_a_new_one() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let (root, ports, _, mut servers, _) = start_three("prepaid-replace", 4);
        let dir = |id: u64| root.join(format!("node-{id}"));
        let addr = |id: u64| format!("127.0.0.1:{}", ports[&id]);
        let addrs = [1, 2, 3].into_iter().map(|id| (id, addr(id))).collect();
        let mut clients = Clients { addrs, conns: BTreeMap::new(), hint: BTreeMap::new(), slow: Default::default() };
        let accounts: Vec<String> = (0..12).map(|i| format!("acct-{i}")).collect();
        for a in &accounts {
            clients.run(a, Op::Open).await;
            clients.run(a, Op::Purchase("buy".into())).await;
            clients.run(a, Op::Debit("d-0".into())).await;
        }

        // Node 3's disk is lost.
        drop(servers.remove(&3));
        std::fs::remove_dir_all(dir(3)).unwrap();
        // Node 4 starts empty, knowing only itself; node 3's place is
        // given to it in every group.
        let alone = format!("4={}", addr(4));
        servers.insert(4, start_member(4, &dir(4), ports[&4], &alone));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["cluster", "replace", "--from", "3", "--to", "4", "--to-addr", &addr(4)])
            .args(["--http", &format!("http://{}", servers[&1].http), "--token", ADMIN])
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        let replaced: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(replaced["replaced"], true, "{replaced}");
        assert_eq!(replaced["groups"].as_array().unwrap().len(), 16);
        // Node 4 now votes in every group, where node 3 did.
        let (code, out, err) = cluster_cli(&servers[&4], "status");
        assert_eq!(code, 0, "{err}");
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        for g in status["groups"].as_array().unwrap() {
            assert_eq!(g["voters"], serde_json::json!([1, 2, 4]), "{g}");
        }
        // Asking again changes nothing and says so.
        let again = std::process::Command::new(env!("CARGO_BIN_EXE_prepaid"))
            .args(["cluster", "replace", "--from", "3", "--to", "4", "--to-addr", &addr(4)])
            .args(["--http", &format!("http://{}", servers[&2].http), "--token", ADMIN])
            .output()
            .unwrap();
        assert_eq!(again.status.code(), Some(0), "{}", String::from_utf8_lossy(&again.stderr));

        // The lead is spread over the new voters: node 4 leads the groups
        // node 3 did.
        let led = wait_balanced(&servers[&1], &[1, 2, 4]);
        assert_eq!(led.get(&4), Some(&5), "{led:?}");
        // Node 2 is lost too: 1 and 4 are a majority of {1, 2, 4}.
        drop(servers.remove(&2));
        clients.addrs = [1, 4].into_iter().map(|id| (id, addr(id))).collect();
        clients.conns.clear();
        for a in &accounts {
            clients.run(a, Op::Debit("d-1".into())).await;
            clients.run(a, Op::Debit("d-0".into())).await;
        }
        for a in &accounts {
            assert_eq!(clients.run(a, Op::Balance).await, "98.00", "account {a}");
            let one = clients.conn(1).await.unwrap().history(a, 0, 1_000).await.unwrap();
            let four = clients.conn(4).await.unwrap();
            let mut same = false;
            for _ in 0..TRIES {
                if four.history(a, 0, 1_000).await.unwrap() == one {
                    same = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(same, "node 4 holds another ledger for {a}");
            assert_eq!(one.iter().filter(|r| r.kind == "debited").count(), 2, "{a}");
        }
        for (_, server) in servers {
            assert_eq!(serve::sigterm(server), 0);
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
