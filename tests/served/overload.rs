//! The front door under overload: a node that already holds
//! `node.max_in_flight` requests sheds unary calls from their headers
//! alone — before their bodies are read or decoded — while `History` and
//! the `Authorize` stream pass on (the stream sheds per batch). A stalled
//! simulated disk keeps one debit in the node for as long as the test needs.

use std::sync::Arc;

use prepaid::store::{Faults, SimDisk};
use prepaid::wire::pb;

use super::harness::*;

/// Polls `/metrics` until `series` reads `want` (bounded: 10 s).
async fn until_metric(s: &Served, series: &str, want: u64) {
    for _ in 0..2_000 {
        if s.metric(series).await == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("{series} never reached {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_sheds_unary_calls_at_the_door_without_reading_them() {
    let disk = SimDisk::new(1, Faults::default());
    let s = Served::start_on(|c| c.node.max_in_flight = 1, Some(Arc::new(disk.store()))).await;
    let c = s.admin().await;
    c.open_account("door").await.unwrap();
    c.purchase("door", "p", "10").await.unwrap();
    let before = c.history("door", 0, 100).await.unwrap().len();

    // The disk hangs: one debit stays in the node, which is now full.
    disk.stall(true);
    let stuck = {
        let c = c.clone();
        tokio::spawn(async move { c.debit("door", "stuck", "1").await })
    };
    until_metric(&s, "prepaid_in_flight", 1).await;

    // A well-formed unary batch: refused whole, with the stable code.
    let mut raw = s.raw().await;
    let batch = pb::DebitBatch {
        requests: vec![pb::Debit {
            account: "door".into(),
            idempotency_key: "shed".into(),
            amount: "1".into(),
            ..Default::default()
        }],
    };
    let e = raw.debit(authed(batch, ADMIN)).await.unwrap_err();
    assert_eq!((e.code(), status_code(&e).as_str()), (tonic::Code::ResourceExhausted, "overloaded"), "{e:?}");
    // Bytes that are not protobuf get the same answer, not a decode error:
    // the body was never read.
    let e = raw_unary(s.grpc, "Execute", vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]).await.unwrap_err();
    assert_eq!(status_code(&e), "overloaded", "{e:?}");
    // Without a valid token the call is refused as unauthenticated first.
    let mut grpc = raw_grpc(s.grpc).await;
    grpc.ready().await.unwrap();
    let path = "/prepaid.v1.Ledger/Execute".parse().unwrap();
    let e = grpc.unary(tonic::Request::new(Vec::new()), path, RawCodec).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // History passes the door; a stream batch is shed per request.
    let page = raw.history(authed(pb::HistoryRequest { account: "door".into(), after_seq: 0, limit: 100 }, ADMIN));
    assert_eq!(page.await.unwrap().into_inner().records.len(), before, "what is durable");
    assert_eq!(c.check_access("door").await.unwrap_err().code(), "overloaded");
    assert_eq!(s.metric("prepaid_requests_total{op=\"call\",code=\"overloaded\"}").await, 2);

    // The disk comes back: the held debit is answered, the node takes
    // calls again, and nothing shed was applied.
    disk.stall(false);
    assert_eq!(stuck.await.unwrap().unwrap().balance, "9.00");
    until_metric(&s, "prepaid_in_flight", 0).await;
    let taken = c.execute(vec![pb::Request { id: 7, op: Some(debit_op("door", "after", "1")) }]).await.unwrap();
    assert_eq!(accepted(&taken[0]).balance, "8.00");
    let records = c.history("door", 0, 100).await.unwrap();
    assert_eq!(records.len(), before + 2, "the stuck debit and the one after, nothing shed: {records:?}");
    s.stop().await;
}
