//! The HTTP gateway against a local test server: what it sends, and how it
//! reads each kind of answer.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use prepaid::gateway::{ChargeOutcome, ChargeRequest, HttpGateway, PaymentGateway};
use prepaid::ledger::{AccountId, Amount};

/// Serves one connection with `answer`, and returns what it received.
fn serve_once(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the head, then as much body as Content-Length says.
        loop {
            let n = conn.read(&mut buf).unwrap();
            received.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&received).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
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
        conn.write_all(answer.as_bytes()).unwrap();
        String::from_utf8(received).unwrap()
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
    assert!(received.contains("Idempotency-Key: org_8f2c:7\r\n"), "{received}");
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
async fn a_5xx_or_no_server_is_unknown_and_retried() {
    let (addr, server) = serve_once("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    assert!(gateway(&addr).charge(request()).await.is_err());
    server.join().unwrap();
    // Nothing listens on a port just released.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    assert!(gateway(&port).charge(request()).await.is_err());
}

#[test]
fn only_http_urls_with_a_port_are_accepted() {
    assert!(HttpGateway::new("https://pay.example:443/charge", Duration::from_secs(1)).is_err());
    assert!(HttpGateway::new("http://pay.example/charge", Duration::from_secs(1)).is_err());
    assert!(HttpGateway::new("http://127.0.0.1:8080", Duration::from_secs(1)).is_ok());
}
