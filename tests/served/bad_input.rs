//! Bad input across both listeners: each case gets its stable code, nothing
//! is applied, and the server keeps serving after every one.

use crate::harness::*;
use prepaid::wire::pb;
use prepaid::wire::pb::request::Op;

/// One request through the unary `Execute`; its refusal code.
async fn code_of(s: &Served, op: Op) -> String {
    let mut raw = s.raw().await;
    let batch = pb::Batch { requests: vec![pb::Request { id: 7, op: Some(op) }] };
    let replies = raw.execute(authed(batch, ADMIN)).await.unwrap().into_inner().replies;
    assert_eq!(replies[0].id, 7);
    refusal_code(&replies[0]).to_string()
}

fn debit(account: &str, key: &str, amount: &str) -> Op {
    debit_op(account, key, amount)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_fields_each_get_their_code() {
    let s = Served::start(|c| c.ledger.max_amount = prepaid::Amount::whole(1_000_000)).await;
    let c = s.admin().await;
    c.open_account("ok-account").await.unwrap();
    c.purchase("ok-account", "fund", "100").await.unwrap();
    let long_id = "a".repeat(65);
    let cases: Vec<(&str, Op, &str)> = vec![
        ("empty id", debit("", "k", "1"), "invalid_account_id"),
        ("id of 65 bytes", debit(&long_id, "k", "1"), "invalid_account_id"),
        ("id with a space", debit("a b", "k", "1"), "invalid_account_id"),
        ("id not ascii", debit("caf\u{e9}", "k", "1"), "invalid_account_id"),
        ("13 decimals", debit("ok-account", "k", "0.0000000000001"), "invalid_amount"),
        ("negative", debit("ok-account", "k", "-1"), "invalid_amount"),
        ("zero", debit("ok-account", "k", "0"), "invalid_amount"),
        ("beyond max", debit("ok-account", "k", "1000001"), "invalid_amount"),
        ("not a number", debit("ok-account", "k", "ten"), "invalid_amount"),
        ("exponent", debit("ok-account", "k", "1e3"), "invalid_amount"),
        ("empty amount", debit("ok-account", "k", ""), "invalid_amount"),
        ("no key", debit("ok-account", "", "1"), "missing_idempotency_key"),
        ("key of 129 bytes", debit("ok-account", &"k".repeat(129), "1"), "invalid_idempotency_key"),
        (
            "unknown service",
            Op::Debit(pb::Debit {
                account: "ok-account".into(),
                idempotency_key: "k".into(),
                amount: "1".into(),
                service: 99,
                ..Default::default()
            }),
            "invalid_request",
        ),
        (
            "unknown debit mode",
            Op::Debit(pb::Debit {
                account: "ok-account".into(),
                idempotency_key: "k".into(),
                amount: "1".into(),
                mode: -3,
                ..Default::default()
            }),
            "invalid_request",
        ),
        (
            "unknown account mode",
            Op::OpenAccount(pb::OpenAccount { account: "new".into(), mode: 7, ..Default::default() }),
            "invalid_request",
        ),
        (
            "lower-case currency",
            Op::OpenAccount(pb::OpenAccount { account: "new".into(), currency: "usd".into(), ..Default::default() }),
            "invalid_currency",
        ),
        (
            "reference of 257 bytes",
            Op::Debit(pb::Debit {
                account: "ok-account".into(),
                idempotency_key: "k".into(),
                amount: "1".into(),
                reference: Some("r".repeat(257)),
                ..Default::default()
            }),
            "invalid_text",
        ),
        (
            "priority 300",
            Op::Grant(pb::Grant {
                account: "ok-account".into(),
                idempotency_key: "k".into(),
                amount: "1".into(),
                priority: Some(300),
                ..Default::default()
            }),
            "invalid_request",
        ),
        (
            "hold timeout 0",
            Op::Hold(pb::Hold {
                account: "ok-account".into(),
                idempotency_key: "k".into(),
                amount: "1".into(),
                timeout_ms: Some(0),
                ..Default::default()
            }),
            "invalid_timeout",
        ),
        (
            "purchase below the minimum",
            Op::Purchase(pb::Purchase {
                account: "ok-account".into(),
                idempotency_key: "k".into(),
                amount: "0.01".into(),
                reference: None,
            }),
            "below_minimum_purchase",
        ),
    ];
    for (what, op, want) in cases {
        assert_eq!(code_of(&s, op).await, want, "{what}");
    }
    // A request with no operation at all.
    let mut raw = s.raw().await;
    let batch = pb::Batch { requests: vec![pb::Request { id: 1, op: None }] };
    let replies = raw.execute(authed(batch, ADMIN)).await.unwrap().into_inner().replies;
    assert_eq!(refusal_code(&replies[0]), "invalid_request");
    // The id of exactly 64 bytes is fine; nothing above was applied.
    assert_eq!(code_of(&s, Op::CheckAccess(pb::CheckAccess { account: "a".repeat(64) })).await, "unknown_account");
    assert_eq!(c.balance("ok-account").await.unwrap().balance, "100.00");
    s.still_serving().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_calls_are_refused_whole() {
    let s = Served::start(|c| {
        c.node.max_batch = 5;
        c.server.max_message_bytes = 64 * 1024;
    })
    .await;
    // Bytes that are not protobuf.
    let e = raw_unary(s.grpc, "Execute", vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    s.still_serving().await;
    // A message over the size bound.
    let big =
        pb::Batch { requests: vec![pb::Request { id: 1, op: Some(debit_op("a", "k", &"9".repeat(100 * 1024))) }] };
    let e = raw_unary(s.grpc, "Execute", encode(&big)).await.unwrap_err();
    assert!(matches!(e.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted), "{e:?}");
    s.still_serving().await;
    // A batch over max_batch: refused whole, with the code in the status.
    let six = pb::Batch {
        requests: (0..6).map(|i| pb::Request { id: i, op: Some(debit_op("a", &format!("k{i}"), "1")) }).collect(),
    };
    let e = raw_unary(s.grpc, "Execute", encode(&six)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status_code(&e), "batch_too_large");
    // The per-operation RPCs too; exactly max_batch is fine.
    let mut raw = s.raw().await;
    let five = pb::CheckAccessBatch { requests: (0..5).map(|_| pb::CheckAccess { account: "x".into() }).collect() };
    assert_eq!(raw.check_access(authed(five, ADMIN)).await.unwrap().into_inner().replies.len(), 5);
    let six = pb::CheckAccessBatch { requests: (0..6).map(|_| pb::CheckAccess { account: "x".into() }).collect() };
    let e = raw.check_access(authed(six, ADMIN)).await.unwrap_err();
    assert_eq!(status_code(&e), "batch_too_large");
    // History pages are bounded.
    let e = raw.history(authed(pb::HistoryRequest { account: "x".into(), after_seq: 0, limit: 0 }, ADMIN)).await;
    assert_eq!(status_code(&e.unwrap_err()), "invalid_page");
    let e = raw.history(authed(pb::HistoryRequest { account: "bad id".into(), after_seq: 0, limit: 5 }, ADMIN)).await;
    assert_eq!(status_code(&e.unwrap_err()), "invalid_account_id");
    s.still_serving().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_wrong_tokens() {
    let s = Served::start(|_| {}).await;
    let mut raw = s.raw().await;
    let batch = || pb::Batch { requests: vec![pb::Request { id: 1, op: Some(debit_op("a", "k", "1")) }] };
    let e = raw.execute(tonic::Request::new(batch())).await.unwrap_err();
    assert_eq!((e.code(), status_code(&e).as_str()), (tonic::Code::Unauthenticated, "unauthenticated"));
    let e = raw.execute(authed(batch(), "not-a-token-at-all-000")).await.unwrap_err();
    assert_eq!(status_code(&e), "unauthenticated");
    let mut req = tonic::Request::new(batch());
    req.metadata_mut().insert("authorization", ADMIN.parse().unwrap()); // no "Bearer "
    assert_eq!(status_code(&raw.execute(req).await.unwrap_err()), "unauthenticated");
    let e = raw.purchase(authed(pb::PurchaseBatch { requests: vec![] }, AUTHZ)).await;
    // An empty batch of a forbidden operation is allowed (nothing to do).
    assert!(e.is_ok());
    let p = pb::Purchase { account: "a".into(), idempotency_key: "k".into(), amount: "10".into(), reference: None };
    let e = raw.purchase(authed(pb::PurchaseBatch { requests: vec![p] }, AUTHZ)).await.unwrap_err();
    assert_eq!((e.code(), status_code(&e).as_str()), (tonic::Code::PermissionDenied, "forbidden"));
    // The stream checks the token before anything else.
    let e = raw.authorize(tonic::Request::new(tokio_stream::iter(vec![batch()]))).await.unwrap_err();
    assert_eq!(status_code(&e), "unauthenticated");
    // The admin HTTP API: no token, wrong role.
    let (status, body) = http_get(s.http, "/admin/v1/accounts/a", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"code\":\"unauthenticated\""), "{body}");
    let (status, body) = http_get(s.http, "/admin/v1/accounts/a", Some(AUTHZ)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"code\":\"forbidden\""), "{body}");
    assert!(s.metric("prepaid_requests_total{op=\"call\",code=\"unauthenticated\"}").await >= 4);
    s.still_serving().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_json_bad_input() {
    let s = Served::start(|c| {
        c.node.max_batch = 3;
        c.server.max_message_bytes = 4096;
    })
    .await;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not JSON", "{\"account\": ".into(), 400, "invalid_request"),
        ("empty body", String::new(), 400, "invalid_request"),
        (
            "amount as a number",
            r#"{"account":"a","key":"k","command":{"purchase":{"amount":5}}}"#.into(),
            400,
            "invalid_request",
        ),
        ("unknown command", r#"{"account":"a","key":"k","command":{"mint":{}}}"#.into(), 400, "invalid_request"),
        ("bad account id", r#"{"account":"a b","key":null,"command":"balance"}"#.into(), 400, "invalid_request"),
        (
            "13 decimals",
            r#"{"account":"a","key":"k","command":{"purchase":{"amount":"0.0000000000001"}}}"#.into(),
            400,
            "invalid_amount",
        ),
        ("a string, not an object", "\"balance\"".into(), 400, "invalid_request"),
        (
            "batch over max_batch",
            format!("[{}]", [r#"{"account":"a","key":null,"command":"balance"}"#; 4].join(",")),
            413,
            "batch_too_large",
        ),
        ("body over max_message_bytes", format!("[{}]", "1,".repeat(4000) + "1"), 413, "invalid_request"),
    ];
    for (what, body, want_status, want_code) in cases {
        let (status, out) = http_post(s.http, "/admin/v1/requests", Some(ADMIN), &body).await;
        assert_eq!(status, want_status, "{what}: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: {e}: {out:?}"));
        // A refused call is `{code, message}`; a single request refused in
        // place is `{error: {code, message}}`.
        let code = v.get("code").unwrap_or(&v["error"]["code"]);
        assert_eq!(code, want_code, "{what}: {out}");
        s.still_serving().await;
    }
    // Path and query parameters.
    let (status, out) = http_get(s.http, "/admin/v1/accounts/a%20b", Some(ADMIN)).await;
    assert_eq!((status, out.contains("invalid_account_id")), (400, true), "{out}");
    let (status, out) = http_get(s.http, "/admin/v1/accounts/nobody", Some(ADMIN)).await;
    assert_eq!((status, out.contains("unknown_account")), (404, true), "{out}");
    let (status, out) = http_get(s.http, "/admin/v1/accounts/nobody/history?limit=ten", Some(ADMIN)).await;
    assert_eq!((status, out.contains("invalid_request")), (400, true), "{out}");
    let (status, out) = http_get(s.http, "/admin/v1/accounts/nobody/history?limit=0", Some(ADMIN)).await;
    assert_eq!((status, out.contains("invalid_page")), (400, true), "{out}");
    s.still_serving().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_valid_requests_on_a_stream() {
    let s = Served::start(|_| {}).await;
    let c = s.admin().await;
    c.open_account("st").await.unwrap();
    c.purchase("st", "p", "10").await.unwrap();
    let good = pb::Batch { requests: vec![pb::Request { id: 41, op: Some(debit_op("st", "g1", "1")) }] };
    let frames = vec![encode(&good), vec![0xff, 0xff, 0xff, 0xff, 0x0f]];
    let mut grpc = raw_grpc(s.grpc).await;
    grpc.ready().await.unwrap();
    let path = "/prepaid.v1.Ledger/Authorize".parse().unwrap();
    let response = grpc.streaming(authed(tokio_stream::iter(frames), ADMIN), path, RawCodec).await.unwrap();
    let mut inbound = response.into_inner();
    let mut replies = Vec::new();
    let mut ended_with_error = false;
    loop {
        match inbound.message().await {
            Ok(Some(bytes)) => replies.push(<pb::Replies as prost::Message>::decode(bytes.as_slice()).unwrap()),
            Ok(None) => break,
            Err(_) => {
                ended_with_error = true;
                break;
            }
        }
    }
    assert!(ended_with_error, "the garbage ends the stream with an error");
    // The valid request before the garbage was applied and answered.
    assert_eq!(replies.iter().flat_map(|r| &r.replies).filter(|r| r.id == 41).count(), 1);
    assert_eq!(c.balance("st").await.unwrap().balance, "9.00");
    s.still_serving().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_reads_is_bounded() {
    let s = Served::start(|c| {
        c.server.stream_in_flight = 4;
        c.server.shutdown_grace_ms = 200;
    })
    .await;
    let c = s.admin().await;
    c.open_account("nr").await.unwrap();
    c.purchase("nr", "p", "1000").await.unwrap();
    // Send 2,000 batches of 1,000 checks on one stream and never read a reply.
    let batches = (0..2_000u64).map(|b| pb::Batch {
        requests: (0..1_000)
            .map(|i| pb::Request {
                id: b * 1_000 + i,
                op: Some(Op::CheckAccess(pb::CheckAccess { account: "nr".into() })),
            })
            .collect(),
    });
    let mut raw = s.raw().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let feeder = tokio::spawn(async move {
        let mut sent = 0u64;
        for b in batches {
            if tokio::time::timeout(std::time::Duration::from_secs(2), tx.send(b)).await.is_err() {
                break;
            }
            sent += 1;
        }
        (sent, tx)
    });
    let response = raw.authorize(authed(tokio_stream::wrappers::ReceiverStream::new(rx), ADMIN)).await.unwrap();
    let (sent, _tx) = feeder.await.unwrap();
    // Flow control stopped the feeder long before 2,000 batches: the server
    // holds at most a few batches for a reader that does not read.
    assert!(sent < 2_000, "the server kept reading {sent} batches");
    // Other clients are served meanwhile.
    s.still_serving().await;
    drop(response);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_are_bounded() {
    let s = Served::start(|c| c.server.max_connections = 50).await;
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        match tokio::net::TcpStream::connect(s.grpc).await {
            Ok(conn) => idle.push(conn),
            Err(_) => break,
        }
    }
    assert_eq!(idle.len(), 2_000, "the kernel accepts the connections");
    // Past the bound, the server closes what it accepts: those read EOF.
    let mut closed = 0;
    for conn in idle.iter_mut().skip(100) {
        let mut buf = [0u8; 64];
        use tokio::io::AsyncReadExt;
        if let Ok(Ok(0)) = tokio::time::timeout(std::time::Duration::from_millis(20), conn.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(closed >= 1_500, "only {closed} of the connections past the bound were closed");
    // The HTTP side has its own bound and still answers.
    let (status, _) = http_get(s.http, "/health", None).await;
    assert_eq!(status, 200);
    drop(idle);
    // Once the idle clients go, the API serves again.
    let mut served = false;
    for _ in 0..100 {
        if let Ok(c) = prepaid::Client::connect(&s.grpc.to_string(), ADMIN).await
            && c.check_access("nobody").await.map_err(|e| e.code().to_string()) == Err("unknown_account".into())
        {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(served);
    s.stop().await;
}
