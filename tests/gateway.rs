//! The HTTP gateway against a local test server: what it sends, and how it
//! reads each kind of answer, over http:// and https://.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use prepaid::gateway::{ChargeOutcome, ChargeRequest, HttpGateway, PaymentGateway};
use prepaid::httpc::Outbound;
use prepaid::ledger::{AccountId, Amount};

/// Reads one request (head, then as much body as Content-Length says).
fn read_request(conn: &mut impl Read) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).unwrap();
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
        if n == 0 {
            break;
        }
    }
    String::from_utf8(received).unwrap()
}

/// Serves one connection with `answer`, and returns what it received.
fn serve_once(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let received = read_request(&mut conn);
        conn.write_all(answer.as_bytes()).unwrap();
        received
    });
    (addr, handle)
}

fn request() -> ChargeRequest {
    ChargeRequest {
        idempotency_key: "org_8f2c:7".into(),
        account: AccountId::new("org_8f2c").unwrap(),
        attempt_id: 7,
        amount: Amount::cents(2_500),
    }
}

fn gateway(addr: &str) -> HttpGateway {
    HttpGateway::new(&format!("http://{addr}/charge"), Duration::from_secs(10)).unwrap()
}

#[tokio::test]
async fn a_charge_posts_json_with_the_idempotency_key() {
    let (addr, server) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let outcome = gateway(&addr).charge(request()).await;
    assert_eq!(outcome, Ok(ChargeOutcome::Charged));
    let received = server.join().unwrap();
    assert!(received.starts_with("POST /charge HTTP/1.1\r\n"), "{received}");
    let lower = received.to_ascii_lowercase();
    assert!(lower.contains("\r\nidempotency-key: org_8f2c:7\r\n"), "{received}");
    assert!(lower.contains("\r\ncontent-type: application/json\r\n"), "{received}");
    assert!(
        received.ends_with(r#"{"idempotency_key":"org_8f2c:7","account":"org_8f2c","attempt_id":7,"amount":"25.00"}"#),
        "{received}"
    );
}

#[tokio::test]
async fn a_402_is_a_decline_with_its_reason() {
    let (addr, server) = serve_once("HTTP/1.1 402 Payment Required\r\nContent-Length: 13\r\n\r\ncard_declined");
    assert_eq!(gateway(&addr).charge(request()).await, Ok(ChargeOutcome::Declined("card_declined".into())));
    server.join().unwrap();
}

#[tokio::test]
async fn a_chunked_402_keeps_its_reason() {
    // The hand-written client this replaced kept the chunk framing
    // ("d\r\ncard_declined\r\n0") as the reason.
    let (addr, server) = serve_once(
        "HTTP/1.1 402 Payment Required\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ncard\r\n9\r\n_declined\r\n0\r\n\r\n",
    );
    assert_eq!(gateway(&addr).charge(request()).await, Ok(ChargeOutcome::Declined("card_declined".into())));
    server.join().unwrap();
}

#[tokio::test]
async fn a_5xx_or_no_server_is_unknown_and_retried() {
    let (addr, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    assert!(gateway(&addr).charge(request()).await.is_err());
    server.join().unwrap();
    // Nothing listens on a port just released.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    assert!(gateway(&port).charge(request()).await.is_err());
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

/// An HTTPS server (the test certificate) that answers one request.
async fn serve_tls_once(answer: &'static str) -> (String, tokio::task::JoinHandle<Option<String>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = prepaid::tls::server_config(&fixture("server.pem"), &fixture("server.key"), b"http/1.1").unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // A client that does not trust the certificate ends here.
        let mut tls = acceptor.accept(tcp).await.ok()?;
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&received).ends_with('}') {
            let n = tls.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
        tls.write_all(answer.as_bytes()).await.unwrap();
        tls.shutdown().await.ok();
        Some(String::from_utf8(received).unwrap())
    });
    (addr, handle)
}

#[tokio::test]
async fn an_https_gateway_is_verified_against_the_configured_ca() {
    let (addr, server) = serve_tls_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let client = Outbound::new(Some(&fixture("ca.pem"))).unwrap();
    let gateway =
        HttpGateway::with_client(&format!("https://{addr}/charge"), Duration::from_secs(10), &client).unwrap();
    assert_eq!(gateway.charge(request()).await, Ok(ChargeOutcome::Charged));
    let received = server.await.unwrap().expect("the handshake succeeded");
    assert!(received.starts_with("POST /charge HTTP/1.1\r\n"), "{received}");

    // Without the CA (Mozilla's roots only) the certificate is not trusted:
    // nothing is sent, and the outcome is unknown, not a decline.
    let (addr, server) = serve_tls_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let gateway = HttpGateway::new(&format!("https://{addr}/charge"), Duration::from_secs(10)).unwrap();
    let outcome = gateway.charge(request()).await;
    let error = outcome.expect_err("an untrusted certificate is not a charge");
    assert!(error.to_string().contains("certificate"), "{error}");
    assert_eq!(server.await.unwrap(), None);
}

#[test]
fn http_and_https_urls_with_a_host_are_accepted() {
    let ok = |url: &str| HttpGateway::new(url, Duration::from_secs(1)).is_ok();
    assert!(ok("https://pay.example:443/charge"));
    assert!(ok("https://pay.example/charge"));
    assert!(ok("http://pay.example/charge"));
    assert!(ok("http://127.0.0.1:8080"));
    assert!(!ok("ftp://pay.example/charge"));
    assert!(!ok("pay.example/charge"));
    assert!(!ok("http:///charge"));
    assert!(!ok(""));
}

#[test]
fn a_ca_file_that_is_not_pem_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let error = Outbound::new(Some(&path)).err().expect("refused");
    assert!(error.contains("ca.pem") && error.contains("no certificate"), "{error}");
    let error = Outbound::new(Some(&dir.path().join("missing.pem"))).err().expect("refused");
    assert!(error.contains("missing.pem"), "{error}");
}
