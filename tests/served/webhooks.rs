//! Webhooks against a local receiver: signed, in order per account, retried
//! with backoff, dead-lettered after max_attempts, at least once across a
//! restart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const SECRET: &str = "whsec-0123456789abcdef";

#[derive(Clone, Debug)]
struct Delivery {
    headers: HashMap<String, String>,
    body: String,
}

/// A receiver that fails the first `fail_first` requests (500), then
/// answers 200, recording what it accepted.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Delivery>>>,
    calls: Arc<AtomicU32>,
}

impl Receiver {
    async fn start(fail_first: u32) -> Receiver {
        Receiver::start_with(fail_first, None).await
    }

    /// With an acceptor, the receiver speaks HTTPS (the test certificate).
    async fn start_with(fail_first: u32, tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            calls: Arc::new(AtomicU32::new(0)),
        };
        let rr = r.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (rr, tls) = (rr.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => rr.answer(conn, fail_first).await,
                        Some(tls) => {
                            if let Ok(conn) = tls.accept(conn).await {
                                rr.answer(conn, fail_first).await;
                            }
                        }
                    }
                });
            }
        });
        r
    }

    /// Reads one request from `conn` and answers it.
    async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(&self, mut conn: S, fail_first: u32) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head, body) = loop {
            let n = conn.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    break (head.to_string(), body.to_string());
                }
            }
        };
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = if n < fail_first {
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        } else {
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect();
            self.accepted.lock().unwrap().push(Delivery { headers, body });
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        };
        let _ = conn.write_all(answer.as_bytes()).await;
        let _ = conn.shutdown().await;
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    fn accepted(&self) -> Vec<Delivery> {
        self.accepted.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        for _ in 0..600 {
            if self.accepted().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.accepted()
    }
}

fn verify(d: &Delivery) {
    let ts = &d.headers["prepaid-timestamp"];
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.{}", d.body).as_bytes());
    let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(d.headers["prepaid-signature"], format!("v1={want}"), "{d:?}");
}

fn seqs_of(deliveries: &[Delivery], account: &str) -> Vec<u64> {
    deliveries
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(&d.body).unwrap())
        .filter(|v| v["account"] == account)
        .map(|v| v["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_signed_and_in_order_per_account_despite_failures() {
    // The receiver fails its first 3 requests: those are retried.
    let receiver = Receiver::start(3).await;
    let url = receiver.url();
    let s = Served::start(move |c| {
        c.webhooks.urls = vec![url];
        c.webhooks.secret = SECRET.into();
        c.webhooks.backoff_ms = 5;
        c.webhooks.backoff_max_ms = 20;
    })
    .await;
    let c = s.admin().await;
    for a in ["w1", "w2"] {
        c.open_account(a).await.unwrap();
        c.purchase(a, &format!("p-{a}"), "10").await.unwrap();
        for i in 0..5 {
            c.debit(a, &format!("d{i}-{a}"), "1").await.unwrap();
        }
    }
    // Each account: opened, credited, activated, 5 debited = 8 events.
    let got = receiver.wait_for(16).await;
    for d in &got {
        verify(d);
        let v: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(d.headers["prepaid-event-id"], format!("{}:{}", v["account"].as_str().unwrap(), v["seq"]));
    }
    for a in ["w1", "w2"] {
        let seqs = seqs_of(&got, a);
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(seqs, sorted, "in order, each once, for {a}");
        assert_eq!(seqs.len(), 8, "{a}: {seqs:?}");
    }
    let debited = got.iter().filter(|d| d.body.contains("\"kind\":\"debited\"")).count();
    assert_eq!(debited, 10);
    assert!(s.metric("prepaid_webhook_failed_attempts_total").await >= 3);
    assert_eq!(s.metric("prepaid_webhook_delivered_total").await, 16);
    assert_eq!(s.metric("prepaid_webhook_dead_letters_total").await, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_always_fails_dead_letters_after_max_attempts() {
    crate::logs::capture();
    let receiver = Receiver::start(u32::MAX).await;
    let url = receiver.url();
    let s = Served::start(move |c| {
        c.webhooks.urls = vec![url];
        c.webhooks.secret = SECRET.into();
        c.webhooks.max_attempts = 2;
        c.webhooks.backoff_ms = 1;
        c.webhooks.backoff_max_ms = 1;
    })
    .await;
    let c = s.admin().await;
    c.open_account("dl").await.unwrap();
    let mut dead = 0;
    for _ in 0..500 {
        dead = s.metric("prepaid_webhook_dead_letters_total").await;
        if dead >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(dead, 1, "the one event (opened) is dead-lettered");
    assert_eq!(receiver.calls.load(Ordering::SeqCst), 2, "tried exactly max_attempts times");
    let (status, body) = http_get(s.http, "/admin/v1/webhooks", Some(ADMIN)).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["dead_letters"][0]["account"], "dl", "{body}");
    assert_eq!(v["dead_letters"][0]["attempts"], 2, "{body}");
    assert!(v["dead_letters"][0]["last_error"].as_str().unwrap().contains("500"), "{body}");
    let logged = crate::logs::lines_with("webhook dead-lettered");
    assert!(logged.iter().any(|l| l.contains("event=dl:1") && l.contains("500")), "{logged:?}");
    let failed = crate::logs::lines_with("webhook delivery failed");
    assert!(failed.iter().any(|l| l.contains("event=dl:1")), "{failed:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_are_delivered_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("prepaid-webhooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // First life: the receiver is down (nothing listens on its port).
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/hooks", closed.local_addr().unwrap());
    drop(closed);
    let d = dir.clone();
    let s = Served::start(move |c| {
        c.node.data_dir = d;
        c.webhooks.urls = vec![dead_url];
        c.webhooks.secret = SECRET.into();
        c.webhooks.backoff_ms = 1_000;
        c.webhooks.backoff_max_ms = 1_000;
    })
    .await;
    let c = s.admin().await;
    c.open_account("rs").await.unwrap();
    c.purchase("rs", "p", "10").await.unwrap();
    c.debit("rs", "d", "1").await.unwrap();
    s.stop().await;
    // Second life: the receiver is up; the same events arrive, in order.
    let receiver = Receiver::start(0).await;
    let url = receiver.url();
    let d = dir.clone();
    let s = Served::start(move |c| {
        c.node.data_dir = d;
        c.webhooks.urls = vec![url];
        c.webhooks.secret = SECRET.into();
    })
    .await;
    let got = receiver.wait_for(4).await;
    assert_eq!(seqs_of(&got, "rs"), vec![1, 2, 3, 4], "opened, credited, activated, debited");
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_that_goes_quiet_and_comes_back_is_not_delivered_twice() {
    let receiver = Receiver::start(0).await;
    let url = receiver.url();
    let s = Served::start(move |c| {
        c.webhooks.urls = vec![url];
        c.webhooks.secret = SECRET.into();
    })
    .await;
    let c = s.admin().await;
    c.open_account("q").await.unwrap();
    c.purchase("q", "p", "10").await.unwrap();
    let mut expected = receiver.wait_for(3).await.len();
    // Each burst is delivered completely (the dispatcher forgets the idle
    // account) before the next one wakes it up again.
    for i in 0..10 {
        c.debit("q", &format!("d{i}"), "0.5").await.unwrap();
        expected += 1;
        assert_eq!(receiver.wait_for(expected).await.len(), expected, "burst {i}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seqs = seqs_of(&receiver.accepted(), "q");
    assert_eq!(seqs, (1..=expected as u64).collect::<Vec<_>>());
    s.stop().await;
}

/// An `https://` receiver whose certificate chains to a private CA
/// (`tls.ca_file`): delivered, signed, over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_delivered_over_https_to_a_receiver_the_ca_file_trusts() {
    let fixture = |name: &str| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name);
    let config = prepaid::tls::server_config(&fixture("server.pem"), &fixture("server.key"), b"http/1.1").unwrap();
    let receiver = Receiver::start_with(0, Some(tokio_rustls::TlsAcceptor::from(config))).await;
    let url = format!("https://{}/hooks", receiver.addr);
    let s = Served::start(|cfg| {
        cfg.webhooks.urls = vec![url.clone()];
        cfg.webhooks.secret = SECRET.into();
        cfg.tls.ca_file = fixture("ca.pem");
    })
    .await;
    let c = s.admin().await;
    c.open_account("tls_hook").await.unwrap();
    let got = receiver.wait_for(1).await;
    assert_eq!(seqs_of(&got, "tls_hook"), vec![1], "{got:?}");
    verify(&got[0]);
    s.stop().await;
}
