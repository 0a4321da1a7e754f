//! The served node: the gRPC API and the HTTP ops side, in-process on
//! loopback ports. Bad input of every kind gets its stable code and the
//! server keeps serving; auth, roles, streams, metrics, webhooks.

mod bad_input;
mod disk;
mod harness;
#[path = "../support/logs.rs"]
mod logs;
mod overload;
mod webhooks;

use harness::*;
use prepaid::wire::pb;
use prepaid::wire::pb::request::Op;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_over_grpc_and_the_client() {
    let s = Served::start(|_| {}).await;
    let c = s.admin().await;
    c.open_account("acme").await.unwrap();
    let bought = c.purchase("acme", "p1", "50").await.unwrap();
    assert_eq!(bought.balance, "50.00");
    let debited = c.debit("acme", "d1", "0.000001").await.unwrap();
    assert_eq!(debited.balance, "49.999999");
    // The same key again: the first result, nothing applied twice.
    let again = c.debit("acme", "d1", "0.000001").await.unwrap();
    assert!(!debited.replayed && again.replayed, "the reply says it is the first result again");
    assert_eq!(pb::Accepted { replayed: false, ..again }, debited);
    // A hold, captured above its amount: the excess is charged.
    let held = c
        .call(Op::Hold(pb::Hold {
            account: "acme".into(),
            idempotency_key: "h1".into(),
            amount: "10".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let Some(pb::accepted::Detail::HoldPlaced(h)) = held.detail else { panic!("{held:?}") };
    assert_eq!(held.available, "39.999999");
    let captured = c
        .call(Op::Capture(pb::Capture {
            account: "acme".into(),
            idempotency_key: "c1".into(),
            hold_id: h.hold_id,
            amount: "12".into(),
        }))
        .await
        .unwrap();
    assert_eq!(captured.balance, "37.999999");
    let view = c.balance("acme").await.unwrap();
    assert_eq!(
        (view.purchased.as_str(), view.free.as_str(), view.status),
        ("37.999999", "0.00", pb::Status::Active as i32)
    );
    let records = c.history("acme", 0, 100).await.unwrap();
    assert!(records.iter().any(|r| r.kind == "debited"), "{records:?}");
    assert_eq!(records.last().unwrap().balance_after, "37.999999");
    // Per-operation unary RPCs carry batches.
    let mut raw = pb::ledger_client::LedgerClient::connect(format!("http://{}", s.grpc)).await.unwrap();
    let debits = (0..3)
        .map(|i| pb::Debit {
            account: "acme".into(),
            idempotency_key: format!("u{i}"),
            amount: "1".into(),
            ..Default::default()
        })
        .collect();
    let replies = raw.debit(authed(pb::DebitBatch { requests: debits }, ADMIN)).await.unwrap().into_inner().replies;
    assert_eq!(replies.len(), 3);
    assert_eq!(accepted(&replies[2]).balance, "34.999999");
    assert_eq!(s.metric("prepaid_requests_total{op=\"debit\",code=\"ok\"}").await, 5);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_client_calls_share_the_stream_and_conserve() {
    let s = Served::start(|_| {}).await;
    let c = s.admin().await;
    for i in 0..10 {
        let a = format!("acct{i}");
        c.open_account(&a).await.unwrap();
        c.purchase(&a, &format!("fund{i}"), "100").await.unwrap();
    }
    let mut tasks = Vec::new();
    for t in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                let a = format!("acct{}", (t + n) % 10);
                c.debit(&a, &format!("t{t}n{n}"), "0.5").await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut total = prepaid::Amount::ZERO;
    for i in 0..10 {
        total += prepaid::Amount::parse(&c.balance(&format!("acct{i}")).await.unwrap().balance).unwrap();
    }
    // 1,000 debits of 0.5 from 1,000 funded.
    assert_eq!(total.to_string(), "500.00");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_a_token_may_do() {
    let s = Served::start(|_| {}).await;
    s.admin().await.open_account("shop").await.unwrap();
    s.admin().await.purchase("shop", "p", "20").await.unwrap();
    let authz = prepaid::Client::connect(&s.grpc.to_string(), AUTHZ).await.unwrap();
    assert_eq!(authz.debit("shop", "d", "1").await.unwrap().balance, "19.00");
    assert_eq!(authz.check_access("shop").await.unwrap().status, pb::Status::Active as i32);
    let e = authz.purchase("shop", "p2", "20").await.unwrap_err();
    assert_eq!(e.code(), "forbidden");
    let e = authz.open_account("other").await.unwrap_err();
    assert_eq!(e.code(), "forbidden");
    // Nothing half-applied: a batch with one forbidden request applies none.
    let batch = vec![
        pb::Request { id: 1, op: Some(debit_op("shop", "d2", "1")) },
        pb::Request {
            id: 2,
            op: Some(Op::Grant(pb::Grant {
                account: "shop".into(),
                idempotency_key: "g".into(),
                amount: "5".into(),
                ..Default::default()
            })),
        },
    ];
    assert_eq!(authz.execute(batch).await.unwrap_err().code(), "forbidden");
    assert_eq!(s.admin().await.balance("shop").await.unwrap().balance, "19.00");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_report_the_node() {
    let s = Served::start(|_| {}).await;
    let c = s.admin().await;
    c.open_account("m").await.unwrap();
    c.purchase("m", "p", "5").await.unwrap();
    let _ = c.debit("m", "d", "50").await.unwrap_err();
    let (status, body) = http_get(s.http, "/health", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (status, text) = http_get(s.http, "/metrics", None).await;
    assert_eq!(status, 200);
    for needle in [
        "prepaid_requests_total{op=\"debit\",code=\"insufficient_funds\"} 1",
        "prepaid_requests_total{op=\"purchase\",code=\"ok\"} 1",
        "prepaid_request_seconds_bucket{op=\"debit\",le=\"+Inf\"} 1",
        "prepaid_group_accounts_count",
        "prepaid_resident_accounts 1",
        "prepaid_recharge_charged_total 0",
        "prepaid_webhook_backlog 0",
        "# TYPE process_resident_memory_bytes gauge",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    // The Grafana dashboard (deploy/) asks only for metrics that exist.
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let dashboard = std::fs::read_to_string(std::path::Path::new(&root).join("deploy/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut asked = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for prefix in ["prepaid_", "process_"] {
                let mut rest = expr;
                while let Some(at) = rest.find(prefix) {
                    let name: String = rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    rest = &rest[at + name.len()..];
                    asked.push(name);
                }
            }
        }
    }
    assert!(asked.len() >= 10, "{asked:?}");
    for name in asked {
        let exposed = text.lines().any(|line| line.starts_with(&name) && line[name.len()..].starts_with([' ', '{']));
        assert!(exposed, "the dashboard asks for {name}, which /metrics does not expose");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_json_api_runs_requests_and_reads_accounts() {
    let s = Served::start(|_| {}).await;
    let body = r#"[
        {"account":"j1","key":null,"command":{"open":{"mode":"prepaid","currency":"USD","past_due_suspends":null,"credit_limit":null}}},
        {"account":"j1","key":"p1","command":{"purchase":{"amount":"30.5","reference":"order 7"}}},
        {"account":"j1","key":"d1","command":{"debit":{"amount":"40","mode":"strict","service":"api_request","reference":null}}}
    ]"#;
    let (status, out) = http_post(s.http, "/admin/v1/requests", Some(ADMIN), body).await;
    assert_eq!(status, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[1]["ok"]["balance"], "30.50");
    assert_eq!(v[2]["error"]["code"], "insufficient_funds");
    let (status, out) = http_get(s.http, "/admin/v1/accounts/j1", Some(ADMIN)).await;
    assert_eq!(status, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["purchased"], "30.50");
    let (status, out) = http_get(s.http, "/admin/v1/accounts/j1/history?after_seq=0&limit=10", Some(ADMIN)).await;
    assert_eq!(status, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.as_array().unwrap().iter().any(|r| r["kind"] == "credited"), "{out}");
    // One contract with gRPC: `idempotency_key` names the key, the
    // `Idempotency-Key` header may carry it, `mode` and `service` default
    // (strict, api_request), and a single refused request is refused with
    // its HTTP status.
    let debit = r#"{"account":"j1","command":{"debit":{"amount":"0.5"}}}"#;
    let (status, headers, out) =
        harness::http_headers(s.http, "POST", "/admin/v1/requests", Some(ADMIN), "Idempotency-Key: h1\r\n", debit)
            .await;
    assert_eq!(status, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"]["balance"], "30.00", "{out}");
    assert_eq!(v["replayed"], false, "{out}");
    assert!(!headers.iter().any(|h| h.starts_with("idempotent-replayed")), "{headers:?}");
    let (status, headers, out) =
        harness::http_headers(s.http, "POST", "/admin/v1/requests", Some(ADMIN), "Idempotency-Key: h1\r\n", debit)
            .await;
    assert_eq!(status, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"]["balance"], "30.00", "the same key: once");
    assert_eq!(v["replayed"], true, "the reply says it is the first result again: {out}");
    assert!(headers.iter().any(|h| h == "idempotent-replayed: true"), "and so does a header: {headers:?}");
    let keyed =
        r#"{"account":"j1","idempotency_key":"b2","command":{"debit":{"amount":"0.5","service":"fine_tuning"}}}"#;
    let (status, out) = http_post(s.http, "/admin/v1/requests", Some(ADMIN), keyed).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["ok"]["balance"], "29.50", "{out}");
    let (status, out) =
        harness::http_with(s.http, "POST", "/admin/v1/requests", Some(ADMIN), "Idempotency-Key: other\r\n", keyed)
            .await;
    assert_eq!(status, 400, "a header and a body key that differ: {out}");
    // The header is for one request: a batch with it is refused, not run
    // with the header ignored.
    let batch = format!("[{keyed}]");
    let (status, out) =
        harness::http_with(s.http, "POST", "/admin/v1/requests", Some(ADMIN), "Idempotency-Key: b2\r\n", &batch).await;
    assert_eq!(status, 400, "{out}");
    assert!(out.contains("single request"), "{out}");
    // Opening takes the proto's name (`open_account`; `open` is read too)
    // and its defaults (prepaid, USD).
    for (account, name) in [("j_defaults", "open"), ("j_proto", "open_account")] {
        let body = format!(r#"{{"account":"{account}","command":{{"{name}":{{}}}}}}"#);
        let (status, out) = http_post(s.http, "/admin/v1/requests", Some(ADMIN), &body).await;
        assert_eq!(status, 200, "{name}: {out}");
    }
    // The node's own commands are not the API's: an admin could otherwise
    // credit a recharge the gateway never charged.
    for command in [
        r#"{"recharge_succeeded":{"attempt_id":1}}"#,
        r#"{"recharge_failed":{"attempt_id":1,"error":"x"}}"#,
        r#""tick""#,
    ] {
        let body = format!(r#"{{"account":"j1","idempotency_key":"int1","command":{command}}}"#);
        let (status, out) = http_post(s.http, "/admin/v1/requests", Some(ADMIN), &body).await;
        assert_eq!(status, 400, "{command}: {out}");
        assert!(out.contains("invalid_request") && out.contains("node's own command"), "{out}");
    }
    let broke = r#"{"account":"j1","idempotency_key":"big","command":{"debit":{"amount":"1000"}}}"#;
    let (status, out) = http_post(s.http, "/admin/v1/requests", Some(ADMIN), broke).await;
    assert_eq!(status, 400, "a single refusal is not 200: {out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["error"]["code"],
        "insufficient_funds",
        "{out}"
    );
    // An amount that is not one is `invalid_amount` (as over gRPC), in
    // place: the rest of a batch goes ahead.
    let bad = r#"{"account":"j1","idempotency_key":"x1","command":{"debit":{"amount":"0.0000000000001"}}}"#;
    let (status, out) = http_post(s.http, "/admin/v1/requests", Some(ADMIN), bad).await;
    assert_eq!(status, 400, "{out}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["error"]["code"], "invalid_amount", "{out}");
    let mixed =
        format!(r#"[{bad}, {{"account":"j1","idempotency_key":"x2","command":{{"debit":{{"amount":"0.5"}}}}}}]"#);
    let (status, out) = http_post(s.http, "/admin/v1/requests", Some(ADMIN), &mixed).await;
    assert_eq!(status, 200, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v[0]["error"]["code"].as_str(), v[1]["ok"]["balance"].as_str()),
        (Some("invalid_amount"), Some("29.00")),
        "{out}"
    );
    let nokey = r#"{"account":"j1","command":{"debit":{"amount":"1"}}}"#;
    let (status, out) = http_post(s.http, "/admin/v1/requests", Some(ADMIN), nokey).await;
    assert_eq!(status, 400, "{out}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_is_an_unknown_outcome_and_the_same_key_is_safe_to_resend() {
    let s = Served::start(|_| {}).await;
    let c = s.admin().await;
    c.open_account("slow").await.unwrap();
    c.purchase("slow", "p", "10").await.unwrap();
    // A listener that accepts the connection and never answers is no node:
    // the client's probe at connect says so, with nothing sent.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let refused = prepaid::Client::connect(&silent_addr.to_string(), ADMIN).await.err().expect("no node there");
    holder.abort();
    assert_eq!(refused.code(), "unavailable", "{refused}");
    // A node that does not answer within the deadline: the request was
    // sent, so its outcome is unknown.
    let hurried = prepaid::Client::connect(&s.grpc.to_string(), ADMIN)
        .await
        .unwrap()
        .with_deadline(std::time::Duration::from_nanos(1));
    let e = hurried.debit("slow", "k1", "1").await.unwrap_err();
    assert_eq!(e.code(), "outcome_unknown", "{e}");
    assert!(e.to_string().contains("retry with the same idempotency key"));
    // Resending with the same key applies it at most once.
    c.debit("slow", "k1", "1").await.unwrap();
    c.debit("slow", "k1", "1").await.unwrap();
    assert_eq!(c.balance("slow").await.unwrap().balance, "9.00");
    s.stop().await;
}

/// gRPC health checking and reflection, as grpcurl and probes use them:
/// no token needed, the Ledger service listed, SERVING while storage works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection_answer_without_a_token() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let s = Served::start(|_| {}).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", s.grpc)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", prepaid::server::GRPC_SERVICE] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&prepaid::server::GRPC_SERVICE), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    s.stop().await;
}

/// Stream messages that arrive together go to the node as one batch, and
/// each is still answered as if it had gone alone: a message with a
/// forbidden request, or too many requests, is refused whole while the
/// others beside it are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_messages_ready_together_are_one_batch_and_keep_their_own_refusals() {
    use tokio_stream::StreamExt;
    let s = Served::start(|c| c.node.max_batch = 4).await;
    let c = s.admin().await;
    c.open_account("co").await.unwrap();
    c.purchase("co", "p", "100000").await.unwrap();
    let grant = |key: &str| {
        Op::Grant(pb::Grant {
            account: "co".into(),
            idempotency_key: key.into(),
            amount: "5".into(),
            ..Default::default()
        })
    };
    let mut raw = s.raw().await;
    let mut applied = 0u64;
    // The client's own calls above went over its stream too.
    let before = s.metric("prepaid_stream_messages_total").await;
    // Bursts of messages written at once; until the server has been seen
    // reading several of them together (the first burst, in practice).
    for burst in 0..20u64 {
        let mut batches = Vec::new();
        for m in 0..200u64 {
            let id = |i: u64| (burst * 1_000 + m) * 10 + i;
            let requests = match m % 10 {
                // The token may debit but not grant: the whole message is refused.
                3 => vec![
                    pb::Request { id: id(0), op: Some(debit_op("co", &format!("f{burst}-{m}"), "1")) },
                    pb::Request { id: id(1), op: Some(grant(&format!("g{burst}-{m}"))) },
                ],
                // Five requests where four is the bound.
                7 => (0..5)
                    .map(|i| pb::Request { id: id(i), op: Some(debit_op("co", &format!("l{burst}-{m}-{i}"), "1")) })
                    .collect(),
                _ => (0..2)
                    .map(|i| pb::Request { id: id(i), op: Some(debit_op("co", &format!("d{burst}-{m}-{i}"), "1")) })
                    .collect(),
            };
            batches.push(pb::Batch { requests });
        }
        let sent: Vec<Vec<u64>> = batches.iter().map(|b| b.requests.iter().map(|r| r.id).collect()).collect();
        let response = raw.authorize(authed(tokio_stream::iter(batches), AUTHZ)).await.unwrap();
        let mut replies = response.into_inner();
        let mut answered = 0;
        while let Some(r) = replies.next().await {
            let r = r.unwrap();
            let first = r.replies[0].id;
            let m = (first / 10) % 1_000;
            let ids: Vec<u64> = r.replies.iter().map(|r| r.id).collect();
            assert_eq!(ids, sent[m as usize], "a message's replies are its own, in order");
            for reply in &r.replies {
                match (m % 10, &reply.result) {
                    (3, Some(pb::reply::Result::Refusal(x))) => assert_eq!(x.code, "forbidden"),
                    (7, Some(pb::reply::Result::Refusal(x))) => assert_eq!(x.code, "batch_too_large"),
                    (3 | 7, other) => panic!("message {m} should be refused whole: {other:?}"),
                    (_, Some(pb::reply::Result::Accepted(_))) => applied += 1,
                    (_, other) => panic!("message {m} should be applied: {other:?}"),
                }
            }
            answered += 1;
        }
        assert_eq!(answered, 200, "every message is answered once");
        let (messages, batches) =
            (s.metric("prepaid_stream_messages_total").await, s.metric("prepaid_stream_batches_total").await);
        assert_eq!(messages - before, (burst + 1) * 200);
        if batches < messages {
            eprintln!("{messages} stream messages in {batches} node batches");
            break;
        }
        assert!(burst < 19, "20 bursts of 200 messages and never two read together");
    }
    // Only the applied debits moved the balance.
    let balance = prepaid::Amount::parse(&c.balance("co").await.unwrap().balance).unwrap();
    assert_eq!(
        balance,
        prepaid::Amount::parse("100000").unwrap() - prepaid::Amount::parse(&applied.to_string()).unwrap()
    );
    s.stop().await;
}
