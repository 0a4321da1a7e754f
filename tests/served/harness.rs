//! An in-process served node on loopback ports with two tokens, plain
//! HTTP/1.1 helpers, and a raw gRPC codec for sending bytes that are not
//! what the contract says.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut};
use prepaid::config::{Role, TokenSpec};
use prepaid::store::Store;
use prepaid::wire::pb;
use prepaid::{Client, Node, NodeConfig, SimulatedGateway, SystemClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

pub const ADMIN: &str = "admin-token-0123456789";
pub const AUTHZ: &str = "authz-token-0123456789";

pub struct Served {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), prepaid::server::ServeError>>,
}

impl Served {
    pub async fn start(change: impl FnOnce(&mut NodeConfig)) -> Served {
        Served::start_on(change, None).await
    }

    /// On a store of the test's own (`None`: the configured data dir).
    pub async fn start_on(change: impl FnOnce(&mut NodeConfig), store: Option<Arc<dyn Store>>) -> Served {
        let mut cfg = NodeConfig::default();
        cfg.server.grpc_addr = "127.0.0.1:0".into();
        cfg.server.http_addr = "127.0.0.1:0".into();
        cfg.node.shards = 8;
        cfg.server.tokens = vec![
            TokenSpec { name: "ops".into(), role: Role::Admin, token: ADMIN.into() },
            TokenSpec { name: "api".into(), role: Role::Authorize, token: AUTHZ.into() },
        ];
        change(&mut cfg);
        let gateway = Arc::new(SimulatedGateway::new());
        let node = match store {
            Some(store) => Node::start_with(cfg.clone(), store, Arc::new(SystemClock), gateway).await.unwrap(),
            None => Node::start(cfg.clone(), gateway).await.unwrap(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel();
        let task = tokio::spawn(prepaid::server::run(
            cfg,
            node,
            async move {
                let _ = stopped.await;
            },
            move |b| {
                let _ = bound_tx.send(b);
            },
        ));
        let bound = bound_rx.await.unwrap();
        Served { grpc: bound.grpc, http: bound.http, stop: Some(stop), task }
    }

    pub async fn admin(&self) -> Client {
        Client::connect(&self.grpc.to_string(), ADMIN).await.unwrap()
    }

    pub async fn raw(&self) -> pb::ledger_client::LedgerClient<tonic::transport::Channel> {
        pb::ledger_client::LedgerClient::connect(format!("http://{}", self.grpc)).await.unwrap()
    }

    /// A value from /metrics (0 when the series is absent).
    pub async fn metric(&self, series: &str) -> u64 {
        let (_, text) = http_get(self.http, "/metrics", None).await;
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
    }

    /// Proof the server still serves both listeners.
    pub async fn still_serving(&self) {
        let (status, body) = http_get(self.http, "/health", None).await;
        assert_eq!(status, 200, "{body}");
        let c = self.admin().await;
        let reply = c.check_access("nobody-here").await.unwrap_err();
        assert_eq!(reply.code(), "unknown_account");
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

pub fn accepted(reply: &pb::Reply) -> &pb::Accepted {
    match &reply.result {
        Some(pb::reply::Result::Accepted(a)) => a,
        other => panic!("not accepted: {other:?}"),
    }
}

pub fn refusal_code(reply: &pb::Reply) -> &str {
    match &reply.result {
        Some(pb::reply::Result::Refusal(r)) => &r.code,
        other => panic!("not refused: {other:?}"),
    }
}

pub fn debit_op(account: &str, key: &str, amount: &str) -> pb::request::Op {
    pb::request::Op::Debit(pb::Debit {
        account: account.into(),
        idempotency_key: key.into(),
        amount: amount.into(),
        ..Default::default()
    })
}

async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    http_with(addr, method, path, token, "", body).await
}

/// `http` with extra header lines (each ending in `\r\n`).
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &str,
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_headers(addr, method, path, token, extra, body).await;
    (status, body)
}

/// `http_with`, with the reply's header lines (lowercase) too.
pub async fn http_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &str,
    body: &str,
) -> (u16, Vec<String>, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (and close) before reading a body it refuses.
    let _ = stream.write_all(body.as_bytes()).await;
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let headers = head.lines().skip(1).map(str::to_lowercase).collect();
    (status, headers, body.to_string())
}

pub async fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    http(addr, "GET", path, token, "").await
}

pub async fn http_post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    http(addr, "POST", path, token, body).await
}

/// Sends and receives message bytes as they are: for input that is not
/// the contract's.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

pub async fn raw_grpc(addr: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    tonic::client::Grpc::new(channel)
}

/// A unary call with raw bytes to `method` (e.g. "Debit").
pub async fn raw_unary(addr: SocketAddr, method: &str, bytes: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = raw_grpc(addr).await;
    grpc.ready().await.unwrap();
    let path = format!("/prepaid.v1.Ledger/{method}").parse().unwrap();
    grpc.unary(authed(bytes, ADMIN), path, RawCodec).await.map(|r| r.into_inner())
}

pub fn encode<M: prost::Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

/// The stable code a refused call carries in its status.
pub fn status_code(s: &tonic::Status) -> String {
    let from_details = <pb::Refusal as prost::Message>::decode(s.details()).map(|r| r.code).unwrap_or_default();
    let from_metadata =
        s.metadata().get("prepaid-code").and_then(|v| v.to_str().ok()).map(str::to_string).unwrap_or_default();
    assert_eq!(from_details, from_metadata, "details and metadata disagree: {s:?}");
    from_details
}
