//! The gRPC API (`proto/prepaid.proto`): unary RPCs that carry batches, and
//! the `Authorize` stream for the hot path.
//!
//! A call is authenticated first (`authorization: Bearer …`), then every
//! request is checked against the token's role — one forbidden request
//! refuses the whole call, so nothing is half-applied — then converted and
//! validated (`crate::wire`); the valid ones go to the node as one batch, the
//! invalid ones are answered in place with their refusal.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Bytes;
use tonic::{Request, Response, Status, Streaming};

use super::Api;
use crate::config::Role;
use crate::error::Error;
use crate::ledger::AccountId;
use crate::wire::{self, pb};

/// A refusal of a whole call as a gRPC status: the stable code in the
/// `prepaid-code` metadata and an encoded `Refusal` in the details.
pub fn status(e: &Error) -> Status {
    use tonic::Code;
    // By the stable code, so another node's answer (`Error::Remote`) gets
    // the status this node would give it.
    let code = match e.code() {
        "unauthenticated" => Code::Unauthenticated,
        "forbidden" => Code::PermissionDenied,
        "batch_too_large" | "overloaded" => Code::ResourceExhausted,
        "shutting_down" | "storage_unavailable" | "shard_unavailable" | "outcome_unknown" => Code::Unavailable,
        "wrong_node" => Code::FailedPrecondition,
        "internal" => Code::Internal,
        // The ledger's refusals and invalid_request.
        _ => Code::InvalidArgument,
    };
    let details = Bytes::from(prost::Message::encode_to_vec(&wire::refusal(e)));
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("prepaid-code", tonic::metadata::MetadataValue::from_static(e.code()));
    Status::with_details_and_metadata(code, e.to_string(), details, metadata)
}

impl Api {
    fn role<T>(&self, req: &Request<T>) -> Result<Role, Status> {
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        self.auth.role(header).map_err(|e| {
            self.metrics.record(&[("call", "unauthenticated")], std::time::Duration::ZERO);
            status(&e)
        })
    }

    /// One batch, start to finish. `Err` refuses the whole batch.
    pub async fn run_batch(&self, role: Role, reqs: &[pb::Request]) -> Result<pb::Replies, Error> {
        let mut out = self.run_batches(role, &[reqs]).await;
        out.pop().unwrap_or_else(|| Err(Error::Internal("a reply is missing".into())))
    }

    /// Several batches (stream messages that were ready together) as one
    /// batch of the node, answered each as if it had gone alone: a batch
    /// too large or with a forbidden request is refused whole and the others
    /// go on; the rest are applied in order, as one group of the node.
    pub async fn run_batches(&self, role: Role, batches: &[&[pb::Request]]) -> Vec<Result<pb::Replies, Error>> {
        let start = Instant::now();
        let node = match self.node() {
            Ok(node) => node,
            Err(e) => return batches.iter().map(|_| Err(e.clone())).collect(),
        };
        let max = node.config().node.max_batch;
        // Per batch: its operation names, or why it is refused whole.
        let mut checked: Vec<Result<Vec<&'static str>, Error>> = Vec::with_capacity(batches.len());
        for reqs in batches {
            if reqs.len() > max {
                checked.push(Err(Error::BatchTooLarge { max }));
                continue;
            }
            let mut names = Vec::with_capacity(reqs.len());
            let mut forbidden = None;
            for req in reqs.iter() {
                let name = req.op.as_ref().map(wire::op_name).unwrap_or("none");
                // No operation at all is the conversion's `invalid_request`.
                if req.op.is_some() && !wire::allowed(role, name) {
                    self.metrics.record(&[(name, "forbidden")], start.elapsed());
                    forbidden = Some(Error::Forbidden(name));
                    break;
                }
                names.push(name);
            }
            checked.push(match forbidden {
                Some(e) => Err(e),
                None => Ok(names),
            });
        }
        // A full node sheds the batch before converting it: under overload
        // the refusals must cost far less than the work they protect.
        let shed = node.in_flight() >= node.config().node.max_in_flight;
        let mut valid = Vec::new();
        // Per request of an accepted batch: its place in `valid`, or its
        // refusal by the conversion.
        let mut slots: Vec<Result<usize, Error>> = Vec::new();
        if !shed {
            for (reqs, names) in batches.iter().zip(&checked) {
                if names.is_err() {
                    continue;
                }
                for req in reqs.iter() {
                    match wire::request(req) {
                        Ok(r) => {
                            slots.push(Ok(valid.len()));
                            valid.push(r);
                        }
                        Err(e) => slots.push(Err(e)),
                    }
                }
            }
        }
        let results = if valid.is_empty() { Ok(Vec::new()) } else { node.execute_batch(valid).await };
        let mut results = match results {
            Ok(results) => results,
            Err(e) => {
                return checked.into_iter().map(|names| names.and_then(|_| Err(e.clone()))).collect();
            }
        };
        // Results are taken in order; each valid request has exactly one.
        let mut taken = results.drain(..);
        let mut slots = slots.into_iter();
        let mut out = Vec::with_capacity(batches.len());
        for (reqs, names) in batches.iter().zip(checked) {
            let names = match names {
                Ok(names) => names,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            let mut replies = Vec::with_capacity(reqs.len());
            let mut codes = Vec::with_capacity(reqs.len());
            for (req, name) in reqs.iter().zip(names) {
                let result = if shed {
                    Err(Error::Overloaded)
                } else {
                    match slots.next() {
                        Some(Ok(_)) => {
                            taken.next().unwrap_or_else(|| Err(Error::Internal("a reply is missing".into())))
                        }
                        Some(Err(e)) => Err(e),
                        None => Err(Error::Internal("a reply is missing".into())),
                    }
                };
                codes.push((name, result.as_ref().map(|_| "ok").unwrap_or_else(|e| e.code())));
                replies.push(wire::reply(req.id, result));
            }
            self.metrics.record(&codes, start.elapsed());
            out.push(Ok(pb::Replies { replies }));
        }
        out
    }

    async fn unary(&self, role: Role, reqs: Vec<pb::Request>) -> Result<Response<pb::Replies>, Status> {
        self.run_batch(role, &reqs).await.map(Response::new).map_err(|e| status(&e))
    }
}

/// Stream messages that were ready together, as one batch of the node: a
/// refused message refuses each of its requests, and the stream goes on.
/// Replies go out in the order the messages came.
async fn answer(api: &Api, role: Role, batches: &[pb::Batch]) -> Vec<pb::Replies> {
    let reqs: Vec<&[pb::Request]> = batches.iter().map(|b| b.requests.as_slice()).collect();
    api.metrics.record_stream(batches.len());
    let results = api.run_batches(role, &reqs).await;
    batches
        .iter()
        .zip(results)
        .map(|(batch, result)| match result {
            Ok(replies) => replies,
            Err(e) => pb::Replies {
                replies: batch
                    .requests
                    .iter()
                    .map(|r| pb::Reply { id: r.id, result: Some(pb::reply::Result::Refusal(wire::refusal(&e))) })
                    .collect(),
            },
        })
        .collect()
}

/// At most this many stream messages go to the node as one batch.
const COALESCE_MESSAGES: usize = 64;

/// The node's front door for unary calls: when the node already holds
/// `node.max_in_flight` requests, an authenticated unary call is answered
/// `overloaded` (RESOURCE_EXHAUSTED, `prepaid-code: overloaded`) from its
/// headers alone — its body is never read or decoded, and no per-request
/// reply is built — so refusing a batch of a thousand costs about what
/// refusing one does. `History` and the `Authorize` stream pass: a stream
/// sheds per batch in `run_batch`, and refusing its opening would end the
/// client's hot path instead of one batch.
#[derive(Clone)]
pub struct Door<S> {
    pub inner: S,
    pub api: Arc<Api>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Door<S> {
    const NAME: &'static str = S::NAME;
}

/// The unary batch methods the door may shed (all but `History`; `Authorize` is the stream).
fn sheddable(service: &str, path: &str) -> bool {
    let method = path.strip_prefix('/').and_then(|p| p.strip_prefix(service)).and_then(|p| p.strip_prefix('/'));
    method.is_some_and(|m| !matches!(m, "History" | "Authorize" | "ClusterMap"))
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for Door<S>
where
    S: tonic::server::NamedService
        + tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        // Every call has a request id: its logs carry it, its reply echoes it.
        let id = self.api.request_id(req.headers().get("x-request-id").map(|v| v.as_bytes()));
        let echo = tonic::codegen::http::HeaderValue::from_str(&id).ok();
        let with_id = move |mut response: S::Response| {
            if let Some(value) = echo {
                response.headers_mut().insert("x-request-id", value);
            }
            response
        };
        // A node already let go of: the call goes on to be answered
        // `shutting_down`.
        let full = self.api.node().is_ok_and(|node| node.in_flight() >= node.config().node.max_in_flight);
        if full && sheddable(<S as tonic::server::NamedService>::NAME, req.uri().path()) {
            // An unauthenticated call goes on to be refused as such.
            let header = req.headers().get("authorization").map(|v| v.as_bytes());
            if self.api.auth.role(header).is_ok() {
                self.api.metrics.record(&[("call", "overloaded")], std::time::Duration::ZERO);
                let response = with_id(status(&Error::Overloaded).into_http());
                return Box::pin(async move { Ok(response) });
            }
        }
        let span = tracing::debug_span!("grpc", request_id = %id, path = %req.uri().path());
        let call = self.inner.call(req).instrument(span);
        Box::pin(async move { call.await.map(with_id) })
    }
}

/// The service tonic serves; a cheap handle on the shared `Api`.
#[derive(Clone)]
pub struct LedgerService(pub Arc<Api>);

/// A per-operation batch message: its requests as wire requests (ids are
/// the positions in the batch).
trait OpBatch {
    fn ops(self) -> Vec<pb::Request>;
}

macro_rules! op_batch {
    ($($batch:ty => $variant:ident;)*) => {
        $(
            impl OpBatch for $batch {
                fn ops(self) -> Vec<pb::Request> {
                    self.requests
                        .into_iter()
                        .enumerate()
                        .map(|(i, m)| pb::Request { id: i as u64, op: Some(pb::request::Op::$variant(m)) })
                        .collect()
                }
            }
        )*
    };
}

op_batch! {
    pb::OpenAccountBatch => OpenAccount;
    pb::CheckAccessBatch => CheckAccess;
    pb::DebitBatch => Debit;
    pb::HoldBatch => Hold;
    pb::CaptureBatch => Capture;
    pb::ReleaseBatch => Release;
    pb::PurchaseBatch => Purchase;
    pb::GrantBatch => Grant;
    pb::SetAutoRechargeBatch => SetAutoRecharge;
    pb::SetGrantExpiryBatch => SetGrantExpiry;
    pb::ClosePeriodBatch => ClosePeriod;
    pb::PayInvoiceBatch => PayInvoice;
    pb::FreezeBatch => Freeze;
    pb::UnfreezeBatch => Unfreeze;
    pb::CloseBatch => Close;
    pb::AdjustBatch => Adjust;
    pb::BalanceBatch => Balance;
}

type Unary = Result<Response<pb::Replies>, Status>;

impl LedgerService {
    async fn per_op<B: OpBatch>(&self, req: Request<B>) -> Unary {
        let role = self.0.role(&req)?;
        self.0.unary(role, req.into_inner().ops()).await
    }
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn execute(&self, req: Request<pb::Batch>) -> Result<Response<pb::Replies>, Status> {
        let role = self.0.role(&req)?;
        self.0.unary(role, req.into_inner().requests).await
    }

    type AuthorizeStream = ReceiverStream<Result<pb::Replies, Status>>;

    async fn authorize(&self, req: Request<Streaming<pb::Batch>>) -> Result<Response<Self::AuthorizeStream>, Status> {
        let role = self.0.role(&req)?;
        let mut inbound = req.into_inner();
        let in_flight = self.0.cfg.server.stream_in_flight;
        let (tx, rx) = mpsc::channel(in_flight);
        let api = Arc::clone(&self.0);
        let mut stopping = self.0.stopping.clone();
        // Messages that are ready together go to the node as one batch, up
        // to the node's batch bound.
        let max_batch = self.0.node().map(|n| n.config().node.max_batch).unwrap_or(1);
        tokio::spawn(async move {
            // Bounded: at most `in_flight` batches are being applied or wait
            // for the client to read their replies; past that, the stream is
            // not read from (HTTP/2 flow control pushes back on the client).
            let permits = Arc::new(Semaphore::new(in_flight));
            // A message read while gathering that did not fit the group.
            let mut carried = None;
            loop {
                // A message already read is answered even when stopping.
                if carried.is_none() && *stopping.borrow_and_update() {
                    break;
                }
                let (permit, message) = match carried.take() {
                    Some(carried) => carried,
                    None => {
                        let next = async {
                            let permit = Arc::clone(&permits).acquire_owned().await.ok()?;
                            Some((permit, inbound.message().await))
                        };
                        tokio::select! {
                            next = next => match next {
                                Some(n) => n,
                                None => break,
                            },
                            // The server is stopping: read no more; the batches in
                            // flight are answered, then the stream ends.
                            _ = stopping.changed() => break,
                        }
                    }
                };
                match message {
                    Ok(Some(batch)) => {
                        let mut total = batch.requests.len();
                        let mut group = vec![batch];
                        let mut held = vec![permit];
                        // Gather what has already arrived, without waiting.
                        while total < max_batch && group.len() < COALESCE_MESSAGES {
                            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else { break };
                            let ready = tokio::select! {
                                biased;
                                m = inbound.message() => Some(m),
                                () = std::future::ready(()) => None,
                            };
                            match ready {
                                None => break,
                                Some(Ok(Some(next))) if total + next.requests.len() <= max_batch => {
                                    total += next.requests.len();
                                    group.push(next);
                                    held.push(permit);
                                }
                                Some(other) => {
                                    carried = Some((permit, other));
                                    break;
                                }
                            }
                        }
                        let api = Arc::clone(&api);
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            for replies in answer(&api, role, &group).await {
                                let _ = tx.send(Ok(replies)).await;
                            }
                            drop(held);
                        });
                    }
                    Ok(None) => break,
                    Err(status) => {
                        // Garbage on the stream: what came before it is
                        // answered first, then the stream ends with the
                        // decode error.
                        drop(permit);
                        let _ = permits.acquire_many(in_flight as u32).await;
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn open_account(&self, req: Request<pb::OpenAccountBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn check_access(&self, req: Request<pb::CheckAccessBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn debit(&self, req: Request<pb::DebitBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn hold(&self, req: Request<pb::HoldBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn capture(&self, req: Request<pb::CaptureBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn release(&self, req: Request<pb::ReleaseBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn purchase(&self, req: Request<pb::PurchaseBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn grant(&self, req: Request<pb::GrantBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn set_auto_recharge(&self, req: Request<pb::SetAutoRechargeBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn set_grant_expiry(&self, req: Request<pb::SetGrantExpiryBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn close_period(&self, req: Request<pb::ClosePeriodBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn pay_invoice(&self, req: Request<pb::PayInvoiceBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn freeze(&self, req: Request<pb::FreezeBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn unfreeze(&self, req: Request<pb::UnfreezeBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn close(&self, req: Request<pb::CloseBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn adjust(&self, req: Request<pb::AdjustBatch>) -> Unary {
        self.per_op(req).await
    }
    async fn balance(&self, req: Request<pb::BalanceBatch>) -> Unary {
        self.per_op(req).await
    }

    async fn history(&self, req: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryReply>, Status> {
        let role = self.0.role(&req)?;
        if !wire::allowed(role, "history") {
            return Err(status(&Error::Forbidden("history")));
        }
        let m = req.into_inner();
        let account = AccountId::new(&m.account).map_err(|r| status(&Error::Refused(r)))?;
        let node = self.0.node().map_err(|e| status(&e))?;
        let records = node.history(&account, m.after_seq, m.limit).map_err(|e| status(&e))?;
        Ok(Response::new(pb::HistoryReply { records: records.iter().map(wire::history_record).collect() }))
    }

    async fn statement(&self, req: Request<pb::StatementRequest>) -> Result<Response<pb::StatementReply>, Status> {
        let role = self.0.role(&req)?;
        if !wire::allowed(role, "statement") {
            return Err(status(&Error::Forbidden("statement")));
        }
        let m = req.into_inner();
        let account = AccountId::new(&m.account).map_err(|r| status(&Error::Refused(r)))?;
        let node = self.0.node().map_err(|e| status(&e))?;
        let st = node.statement(&account, m.from_ms, m.to_ms, m.points).map_err(|e| status(&e))?;
        Ok(Response::new(wire::statement(&st)))
    }

    async fn items(&self, req: Request<pb::ItemsRequest>) -> Result<Response<pb::ItemsReply>, Status> {
        let role = self.0.role(&req)?;
        if !wire::allowed(role, "items") {
            return Err(status(&Error::Forbidden("items")));
        }
        let m = req.into_inner();
        let account = AccountId::new(&m.account).map_err(|r| status(&Error::Refused(r)))?;
        let kind = crate::node::reads::ItemKind::parse(&m.kind).map_err(|e| status(&e))?;
        let node = self.0.node().map_err(|e| status(&e))?;
        let items = node.items(&account, kind, m.after_id, m.limit).map_err(|e| status(&e))?;
        Ok(Response::new(wire::items(&items)))
    }

    async fn accounts(&self, req: Request<pb::AccountsRequest>) -> Result<Response<pb::AccountsReply>, Status> {
        let role = self.0.role(&req)?;
        if !wire::allowed(role, "accounts") {
            return Err(status(&Error::Forbidden("accounts")));
        }
        let m = req.into_inner();
        let status_filter = m.status.map(wire::status_of).transpose().map_err(|e| status(&e))?;
        let after = match m.after.as_str() {
            "" => None,
            a => Some(AccountId::new(a).map_err(|r| status(&Error::Refused(r)))?),
        };
        let node = self.0.node().map_err(|e| status(&e))?;
        let page = node.accounts(&m.prefix, status_filter, after.as_ref(), m.limit).map_err(|e| status(&e))?;
        Ok(Response::new(wire::accounts(&page)))
    }

    async fn cluster_map(&self, req: Request<pb::ClusterMapRequest>) -> Result<Response<pb::ClusterMapReply>, Status> {
        let role = self.0.role(&req)?;
        if !wire::allowed(role, "cluster_map") {
            return Err(status(&Error::Forbidden("cluster_map")));
        }
        let node = self.0.node().map_err(|e| status(&e))?;
        let (shards, shards_per_group, leaders) = node.cluster_map();
        let groups = leaders
            .into_iter()
            .map(|l| l.map_or_else(pb::GroupLeader::default, |(node_id, addr)| pb::GroupLeader { node_id, addr }))
            .collect();
        let map_version = node.shard_map().map_or(0, |m| m.version);
        Ok(Response::new(pb::ClusterMapReply { shards, shards_per_group, groups, map_version }))
    }
}

#[cfg(test)]
mod tests {
    use super::sheddable;

    #[test]
    fn the_door_sheds_batch_calls_and_lets_history_and_the_stream_pass() {
        let name = "prepaid.v1.Ledger";
        for method in ["Execute", "Debit", "Balance", "CheckAccess", "Purchase"] {
            assert!(sheddable(name, &format!("/{name}/{method}")), "{method}");
        }
        for path in [
            "/prepaid.v1.Ledger/History",
            "/prepaid.v1.Ledger/Authorize",
            "/prepaid.v1.Ledger/ClusterMap",
            "/other.Service/Debit",
            "/",
            "",
        ] {
            assert!(!sheddable(name, path), "{path}");
        }
    }
}
