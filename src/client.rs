//! `prepaid::Client`: the async Rust client of a served node.
//!
//! One connection (HTTP/2, reused by every call). Single operations go over
//! the `Authorize` stream: concurrent calls are gathered into one batch per
//! stream message (up to `max_batch`), each tagged with an id, and replies
//! are matched back by id — so many unbatched callers share a few messages.
//! One batch is in flight per connection: the calls that come in while it
//! is answered make the next one.
//! `execute` sends a batch you built yourself as one unary call.
//!
//! `ClusterClient` is the client of a cluster: a `Client` per node and
//! the map of which node leads each shard group, so that a request goes
//! straight to its leader.
//!
//! Deadlines never guess: a call that gets no reply in time, or whose
//! stream breaks after it was sent, fails with `ClientError::OutcomeUnknown`
//! — the request may or may not have been applied; send it again with the
//! same idempotency key, which is always safe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::wire::pb;
use crate::wire::pb::ledger_client::LedgerClient;
use crate::wire::pb::request::Op;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The node refused the request (or the whole call): nothing was
    /// applied. `code` is stable (docs/errors.md).
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    /// No reply in time, the connection broke after the request was sent,
    /// or a clustered node answered `outcome_unknown`: it may have been
    /// applied. Retry with the same idempotency key.
    #[error("outcome unknown ({0}); retry with the same idempotency key")]
    OutcomeUnknown(String),
    /// The request was not sent (cannot connect, bad address).
    #[error("not sent: {0}")]
    Unavailable(String),
}

impl ClientError {
    /// The stable code of a refusal, `outcome_unknown` or `unavailable`.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Refused { code, .. } => code,
            ClientError::OutcomeUnknown(_) => "outcome_unknown",
            ClientError::Unavailable(_) => "unavailable",
        }
    }
}

fn from_status(s: tonic::Status) -> ClientError {
    if let Ok(refusal) = <pb::Refusal as prost::Message>::decode(s.details())
        && !refusal.code.is_empty()
    {
        if refusal.code == "outcome_unknown" {
            return ClientError::OutcomeUnknown(refusal.message);
        }
        return ClientError::Refused { code: refusal.code, message: refusal.message };
    }
    match s.code() {
        tonic::Code::Unavailable if s.message().contains("connect") => ClientError::Unavailable(s.message().into()),
        _ => ClientError::OutcomeUnknown(format!("{}: {}", s.code(), s.message())),
    }
}

/// An error and its sources, `: `-separated ("transport error" alone says
/// nothing of a refused connection or a certificate that is not trusted).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Asks the node whether it serves (gRPC health checking, which needs no
/// token), so that an address where no node answers (a wrong port, the HTTP
/// side, a TLS mismatch) is `Unavailable` at connect, with nothing sent,
/// instead of a first call whose outcome is unknown. A node that answers
/// at all counts, whatever it says of its health: calls say the rest.
async fn probe(channel: Channel, addr: &str) -> Result<(), ClientError> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.set_timeout(Duration::from_secs(5));
    match tokio::time::timeout(Duration::from_secs(5), health.check(request)).await {
        Err(_) => Err(ClientError::Unavailable(format!("{addr} gave no answer within 5 s"))),
        Ok(Ok(_)) => Ok(()),
        // An answer from a gRPC server (one without health checking, or one
        // that refuses it) is still an answer; a timeout is not.
        Ok(Err(status))
            if !matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
            ) =>
        {
            Ok(())
        }
        Ok(Err(status)) => Err(ClientError::Unavailable(format!("{addr}: {}", causes(&status)))),
    }
}

/// Most calls gathered into one stream message. A node whose
/// `node.max_batch` is below this refuses full batches (`batch_too_large`);
/// the default there is 10,000.
pub const STREAM_BATCH: usize = 1_000;

/// The calls sent and not yet answered, by request id, and a signal the
/// stream's reader gives each time it has answered all of them.
type Waiting = HashMap<u64, oneshot::Sender<Result<pb::Reply, ClientError>>>;

#[derive(Clone, Default)]
struct Pending {
    calls: Arc<Mutex<Waiting>>,
    answered: Arc<tokio::sync::Notify>,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Until every call sent is answered (or failed), at most `limit`.
    async fn settled(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let notified = self.answered.notified();
                if self.lock().is_empty() {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

/// Longest the pump waits for the batch in flight before it sends the next
/// one anyway: a node that stalls one batch must not hold every later call
/// (each still has its own deadline).
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(1);

struct Call {
    op: Op,
    reply: oneshot::Sender<Result<pb::Reply, ClientError>>,
}

/// A connection to a served node. Cheap to clone; clones share the
/// connection and the stream.
#[derive(Clone)]
pub struct Client {
    unary: LedgerClient<Channel>,
    token: MetadataValue<tonic::metadata::Ascii>,
    calls: mpsc::Sender<Call>,
    deadline: Duration,
}

impl Client {
    /// Connects to `addr` (`host:port`, `http://host:port`, or
    /// `https://host:port` for a node with TLS, verified against Mozilla's
    /// roots) with an API token. Calls time out after 10 s unless
    /// `with_deadline` says otherwise.
    pub async fn connect(addr: &str, token: &str) -> Result<Client, ClientError> {
        Client::connect_with(addr, token, None).await
    }

    /// As `connect`; with `ca_pem` (PEM certificates of a private CA) the
    /// connection is TLS (`https://` is implied) and the node's certificate
    /// may chain to that CA too.
    pub async fn connect_with(addr: &str, token: &str, ca_pem: Option<&[u8]>) -> Result<Client, ClientError> {
        let tls = addr.starts_with("https://") || ca_pem.is_some();
        let url = match (addr.starts_with("http://") || addr.starts_with("https://"), tls) {
            (true, _) => addr.to_string(),
            (false, true) => format!("https://{addr}"),
            (false, false) => format!("http://{addr}"),
        };
        if tls && url.starts_with("http://") {
            return Err(ClientError::Unavailable(format!("{addr}: a CA certificate was given for an http:// address")));
        }
        let mut endpoint = Endpoint::from_shared(url).map_err(|e| ClientError::Unavailable(e.to_string()))?;
        if tls {
            let mut config = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
            if let Some(pem) = ca_pem {
                config = config.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(config).map_err(|e| ClientError::Unavailable(format!("TLS: {e}")))?;
        }
        let channel = endpoint
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| ClientError::Unavailable(format!("cannot connect to {addr}: {}", causes(&e))))?;
        probe(channel.clone(), addr).await?;
        let token: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Unavailable("the token is not printable ASCII".into()))?;
        let unary = LedgerClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let (calls, rx) = mpsc::channel(65_536);
        tokio::spawn(pump(unary.clone(), token.clone(), rx, STREAM_BATCH));
        Ok(Client { unary, token, calls, deadline: Duration::from_secs(10) })
    }

    /// Every later call gives up after `deadline` with `OutcomeUnknown`.
    pub fn with_deadline(mut self, deadline: Duration) -> Client {
        self.deadline = deadline;
        self
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut().insert("authorization", self.token.clone());
        req.set_timeout(self.deadline);
        req
    }

    /// One operation over the stream (batched with concurrent calls).
    pub async fn call(&self, op: Op) -> Result<pb::Accepted, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Call { op, reply: tx })
            .await
            .map_err(|_| ClientError::Unavailable("the client's stream task stopped".into()))?;
        match tokio::time::timeout(self.deadline, rx).await {
            Err(_) => Err(ClientError::OutcomeUnknown(format!("no reply within {:?}", self.deadline))),
            Ok(Err(_)) => Err(ClientError::OutcomeUnknown("the stream closed before the reply".into())),
            Ok(Ok(reply)) => accepted(reply?),
        }
    }

    /// A batch of your own as one unary call: one reply per request, in
    /// order (each `Reply.id` is the request's).
    pub async fn execute(&self, requests: Vec<pb::Request>) -> Result<Vec<pb::Reply>, ClientError> {
        let mut unary = self.unary.clone();
        let replies = unary.execute(self.request(pb::Batch { requests })).await.map_err(from_status)?;
        Ok(replies.into_inner().replies)
    }

    /// A page of the account's ledger, oldest first.
    pub async fn history(
        &self,
        account: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<pb::HistoryRecord>, ClientError> {
        let mut unary = self.unary.clone();
        let req = pb::HistoryRequest { account: account.into(), after_seq, limit };
        Ok(unary.history(self.request(req)).await.map_err(from_status)?.into_inner().records)
    }

    /// The account's statement over `[from_ms, to_ms)`: usage by service,
    /// and the balance at `points` (1..=1000) evenly spaced instants.
    pub async fn statement(
        &self,
        account: &str,
        from_ms: u64,
        to_ms: u64,
        points: u32,
    ) -> Result<pb::StatementReply, ClientError> {
        let mut unary = self.unary.clone();
        let req = pb::StatementRequest { account: account.into(), from_ms, to_ms, points };
        Ok(unary.statement(self.request(req)).await.map_err(from_status)?.into_inner())
    }

    /// A page of the account's open holds, grants with credit left, or
    /// unpaid invoices (`kind`: "holds", "grants", "invoices"), by id after
    /// `after_id`.
    pub async fn items(
        &self,
        account: &str,
        kind: &str,
        after_id: u64,
        limit: u32,
    ) -> Result<pb::ItemsReply, ClientError> {
        let mut unary = self.unary.clone();
        let req = pb::ItemsRequest { account: account.into(), kind: kind.into(), after_id, limit };
        Ok(unary.items(self.request(req)).await.map_err(from_status)?.into_inner())
    }

    /// A page of the accounts the node holds whose id starts with `prefix`,
    /// in `status` if given, after `after` in id order (admin only).
    pub async fn accounts(
        &self,
        prefix: &str,
        status: Option<pb::Status>,
        after: &str,
        limit: u32,
    ) -> Result<pb::AccountsReply, ClientError> {
        let mut unary = self.unary.clone();
        let req =
            pb::AccountsRequest { prefix: prefix.into(), status: status.map(|s| s as i32), after: after.into(), limit };
        Ok(unary.accounts(self.request(req)).await.map_err(from_status)?.into_inner())
    }

    pub async fn check_access(&self, account: &str) -> Result<pb::Accepted, ClientError> {
        self.call(Op::CheckAccess(pb::CheckAccess { account: account.into() })).await
    }

    /// A strict debit for an API request.
    pub async fn debit(&self, account: &str, key: &str, amount: &str) -> Result<pb::Accepted, ClientError> {
        self.call(Op::Debit(pb::Debit {
            account: account.into(),
            idempotency_key: key.into(),
            amount: amount.into(),
            ..Default::default()
        }))
        .await
    }

    pub async fn purchase(&self, account: &str, key: &str, amount: &str) -> Result<pb::Accepted, ClientError> {
        self.call(Op::Purchase(pb::Purchase {
            account: account.into(),
            idempotency_key: key.into(),
            amount: amount.into(),
            reference: None,
        }))
        .await
    }

    pub async fn open_account(&self, account: &str) -> Result<pb::Accepted, ClientError> {
        self.call(Op::OpenAccount(pb::OpenAccount { account: account.into(), ..Default::default() })).await
    }

    pub async fn balance(&self, account: &str) -> Result<pb::BalanceView, ClientError> {
        balance_view(self.call(Op::Balance(pb::Balance { account: account.into() })).await?)
    }

    /// Where each shard group's requests go, as the node knows it.
    pub async fn cluster_map(&self) -> Result<pb::ClusterMapReply, ClientError> {
        let mut unary = self.unary.clone();
        Ok(unary.cluster_map(self.request(pb::ClusterMapRequest {})).await.map_err(from_status)?.into_inner())
    }
}

fn balance_view(accepted: pb::Accepted) -> Result<pb::BalanceView, ClientError> {
    match accepted.detail {
        Some(pb::accepted::Detail::BalanceView(view)) => Ok(view),
        _ => Err(ClientError::OutcomeUnknown("the balance reply holds no balance view".into())),
    }
}

/// Most sends of one request by a `ClusterClient`, each to where the map
/// it learned last says (or to another node).
pub const ROUTE_TRIES: u32 = 8;
/// The pause before the n-th resend is n times this: a group whose leader
/// was lost has another after an election.
const ROUTE_PAUSE: Duration = Duration::from_millis(50);
/// How long a node that could not be reached is passed over.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// How long a map refresh waits for other nodes' maps after the first.
pub const REFRESH_GRACE: Duration = Duration::from_millis(250);

/// A client of a cluster (docs/CLUSTER.md): a `Client` per node it has
/// met, and the map of where each shard group's requests go, as any node
/// tells it (`ClusterMap`). An account's request goes straight to its
/// group's leader, with no forwarding hop. A `wrong_node`, a
/// `shard_unavailable` (nothing was applied), or a node that cannot be
/// reached makes it learn the map again and send the request where the map
/// then says, at most `ROUTE_TRIES` times; any other answer, an
/// `OutcomeUnknown` among them, is the caller's (resend under the same
/// idempotency key). A map gone stale in other ways costs a forward: a node
/// that does not lead the group forwards the request to the one that does.
/// Cheap to clone; clones share connections and the map.
#[derive(Clone)]
pub struct ClusterClient {
    routes: Arc<Routes>,
}

struct Routes {
    seeds: Vec<String>,
    token: String,
    ca: Option<Vec<u8>>,
    deadline: Duration,
    conns: Mutex<HashMap<String, Client>>,
    map: Mutex<Map>,
    /// Nodes that could not be reached, and when.
    down: Mutex<HashMap<String, std::time::Instant>>,
}

#[derive(Default)]
struct Map {
    shards: u32,
    shards_per_group: u32,
    /// Each group's leader's address ("": none known).
    leaders: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClusterClient {
    /// Connects to the cluster through `seeds` (any of its nodes'
    /// addresses, as `Client::connect` takes them), learning the map from
    /// the first that answers. Calls time out after 10 s unless
    /// `with_deadline` says otherwise.
    pub async fn connect(seeds: &[&str], token: &str) -> Result<ClusterClient, ClientError> {
        ClusterClient::connect_with(seeds, token, None, Duration::from_secs(10)).await
    }

    /// As `connect`, with a private CA (`Client::connect_with`) and each
    /// call's deadline.
    pub async fn connect_with(
        seeds: &[&str],
        token: &str,
        ca_pem: Option<&[u8]>,
        deadline: Duration,
    ) -> Result<ClusterClient, ClientError> {
        if seeds.is_empty() {
            return Err(ClientError::Unavailable("no node address given".into()));
        }
        let routes = Routes {
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            token: token.to_string(),
            ca: ca_pem.map(<[u8]>::to_vec),
            deadline,
            conns: Mutex::default(),
            map: Mutex::default(),
            down: Mutex::default(),
        };
        let client = ClusterClient { routes: Arc::new(routes) };
        client.refresh().await?;
        Ok(client)
    }

    /// The connection to the node at `addr`, made once.
    async fn conn(&self, addr: &str) -> Result<Client, ClientError> {
        if let Some(c) = lock(&self.routes.conns).get(addr) {
            return Ok(c.clone());
        }
        let r = &self.routes;
        match Client::connect_with(addr, &r.token, r.ca.as_deref()).await {
            Ok(c) => {
                let c = c.with_deadline(r.deadline);
                lock(&r.conns).insert(addr.to_string(), c.clone());
                Ok(c)
            }
            Err(e) => {
                lock(&r.down).insert(addr.to_string(), std::time::Instant::now());
                Err(e)
            }
        }
    }

    fn is_down(&self, addr: &str) -> bool {
        let mut down = lock(&self.routes.down);
        down.retain(|_, at| at.elapsed() < DOWN_FOR);
        down.contains_key(addr)
    }

    /// The nodes it knows: the seeds, then the leaders the map names;
    /// those that could not be reached lately last.
    fn nodes(&self) -> Vec<String> {
        let mut nodes = self.routes.seeds.clone();
        for addr in &lock(&self.routes.map).leaders {
            if !addr.is_empty() && !nodes.contains(addr) {
                nodes.push(addr.clone());
            }
        }
        nodes.sort_by_key(|a| self.is_down(a));
        nodes
    }

    /// Learns the map again: asks every node it knows at once and keeps the
    /// map of the highest version among the answers that come by
    /// `REFRESH_GRACE` after the first (a node behind the controller — one
    /// that left the cluster, or is cut off — answers an older one; one
    /// that does not answer is not waited for past that).
    pub async fn refresh(&self) -> Result<(), ClientError> {
        use futures_util::StreamExt;
        let mut asked: futures_util::stream::FuturesUnordered<_> = self
            .nodes()
            .into_iter()
            .map(|addr| async move {
                let answer = match self.conn(&addr).await {
                    Ok(c) => c.cluster_map().await,
                    Err(e) => Err(e),
                };
                (addr, answer)
            })
            .collect();
        let mut last = ClientError::Unavailable("no node answered".into());
        let mut best: Option<pb::ClusterMapReply> = None;
        let mut until: Option<tokio::time::Instant> = None;
        loop {
            let next = match until {
                Some(at) => match tokio::time::timeout_at(at, asked.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => asked.next().await,
            };
            let Some((addr, answer)) = next else { break };
            match answer {
                Ok(m) => {
                    until.get_or_insert_with(|| tokio::time::Instant::now() + REFRESH_GRACE);
                    if best.as_ref().is_none_or(|b| m.map_version > b.map_version) {
                        best = Some(m);
                    }
                }
                Err(e) => {
                    lock(&self.routes.conns).remove(&addr);
                    last = e;
                }
            }
        }
        let m = best.ok_or(last)?;
        let leaders = m.groups.into_iter().map(|g| g.addr).collect();
        *lock(&self.routes.map) = Map { shards: m.shards, shards_per_group: m.shards_per_group, leaders };
        Ok(())
    }

    /// Where `account`'s requests go now: its group's leader, or (none
    /// known, a node alone, an id the node will refuse anyway, or a leader
    /// that could not be reached lately) the first node that is not down.
    pub fn route(&self, account: &str) -> String {
        let leader = {
            let map = lock(&self.routes.map);
            crate::ledger::AccountId::new(account).ok().and_then(|id| {
                let per = map.shards_per_group;
                let shard = id.shard(u64::from(map.shards.max(1))) as u32;
                map.leaders.get((shard / per.max(1)) as usize).filter(|a| per > 0 && !a.is_empty()).cloned()
            })
        };
        match leader {
            Some(addr) if !self.is_down(&addr) => addr,
            _ => self.nodes().into_iter().next().unwrap_or_default(),
        }
    }

    /// One operation on `account`, sent where its group is led.
    pub async fn call(&self, account: &str, op: Op) -> Result<pb::Accepted, ClientError> {
        let mut last = ClientError::Unavailable("not sent".into());
        for attempt in 0..ROUTE_TRIES {
            if attempt > 0 {
                tokio::time::sleep(ROUTE_PAUSE * attempt).await;
                let _ = self.refresh().await;
            }
            let addr = self.route(account);
            let answer = match self.conn(&addr).await {
                Ok(c) => c.call(op.clone()).await,
                Err(e) => Err(e),
            };
            match answer {
                Err(ClientError::Unavailable(e)) => {
                    lock(&self.routes.conns).remove(&addr);
                    lock(&self.routes.down).insert(addr, std::time::Instant::now());
                    last = ClientError::Unavailable(e);
                }
                Err(ClientError::Refused { code, message }) if code == "wrong_node" || code == "shard_unavailable" => {
                    last = ClientError::Refused { code, message };
                }
                other => return other,
            }
        }
        Err(last)
    }

    /// A batch of your own: each request sent with the others for the
    /// same leader, as one unary call per leader, at once; one reply per
    /// request, in order (each `Reply.id` is the request's). Requests
    /// answered `wrong_node` or `shard_unavailable`, or whose leader could
    /// not be reached, are sent again where the map then says (at most
    /// `ROUTE_TRIES` times). A call that fails as a whole answers each of
    /// its requests with a refusal of the failure's code: `outcome_unknown`
    /// (resend under the same keys), `unavailable`, or the node's own
    /// (`overloaded`, `batch_too_large`…).
    pub async fn execute(&self, requests: Vec<pb::Request>) -> Vec<pb::Reply> {
        let mut replies: Vec<Option<pb::Reply>> = vec![None; requests.len()];
        let mut pending: Vec<usize> = (0..requests.len()).collect();
        let refusal = |id: u64, e: &ClientError| pb::Reply {
            id,
            result: Some(pb::reply::Result::Refusal(pb::Refusal {
                code: e.code().to_string(),
                message: e.to_string(),
            })),
        };
        for attempt in 0..ROUTE_TRIES {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(ROUTE_PAUSE * attempt).await;
                let _ = self.refresh().await;
            }
            let mut by_leader: HashMap<String, Vec<usize>> = HashMap::new();
            for i in pending.drain(..) {
                let account = requests[i].op.as_ref().map_or("", crate::wire::account_of);
                by_leader.entry(self.route(account)).or_default().push(i);
            }
            let calls = by_leader.into_iter().map(|(addr, sent)| {
                let batch: Vec<pb::Request> = sent.iter().map(|&i| requests[i].clone()).collect();
                async move {
                    let answer = match self.conn(&addr).await {
                        Ok(c) => c.execute(batch).await,
                        Err(e) => Err(e),
                    };
                    (addr, sent, answer)
                }
            });
            for (addr, sent, answer) in futures_util::future::join_all(calls).await {
                match answer {
                    Ok(answers) if answers.len() == sent.len() => {
                        for (i, reply) in sent.into_iter().zip(answers) {
                            let again = matches!(&reply.result, Some(pb::reply::Result::Refusal(r))
                                if r.code == "wrong_node" || r.code == "shard_unavailable");
                            if again && attempt + 1 < ROUTE_TRIES {
                                pending.push(i);
                            }
                            replies[i] = Some(reply);
                        }
                    }
                    Ok(answers) => {
                        let e = ClientError::OutcomeUnknown(format!(
                            "{} replies to {} requests",
                            answers.len(),
                            sent.len()
                        ));
                        for i in sent {
                            replies[i] = Some(refusal(requests[i].id, &e));
                        }
                    }
                    Err(e) => {
                        if matches!(e, ClientError::Unavailable(_)) {
                            lock(&self.routes.conns).remove(&addr);
                            lock(&self.routes.down).insert(addr, std::time::Instant::now());
                            if attempt + 1 < ROUTE_TRIES {
                                pending.extend(sent.iter().copied());
                            }
                        }
                        for i in sent {
                            replies[i] = Some(refusal(requests[i].id, &e));
                        }
                    }
                }
            }
        }
        replies
            .into_iter()
            .zip(&requests)
            .map(|(r, req)| r.unwrap_or_else(|| refusal(req.id, &ClientError::Unavailable("not sent".into()))))
            .collect()
    }

    /// A strict debit for an API request.
    pub async fn debit(&self, account: &str, key: &str, amount: &str) -> Result<pb::Accepted, ClientError> {
        let debit = pb::Debit {
            account: account.into(),
            idempotency_key: key.into(),
            amount: amount.into(),
            ..Default::default()
        };
        self.call(account, Op::Debit(debit)).await
    }

    pub async fn purchase(&self, account: &str, key: &str, amount: &str) -> Result<pb::Accepted, ClientError> {
        let purchase = pb::Purchase {
            account: account.into(),
            idempotency_key: key.into(),
            amount: amount.into(),
            reference: None,
        };
        self.call(account, Op::Purchase(purchase)).await
    }

    pub async fn open_account(&self, account: &str) -> Result<pb::Accepted, ClientError> {
        self.call(account, Op::OpenAccount(pb::OpenAccount { account: account.into(), ..Default::default() })).await
    }

    pub async fn check_access(&self, account: &str) -> Result<pb::Accepted, ClientError> {
        self.call(account, Op::CheckAccess(pb::CheckAccess { account: account.into() })).await
    }

    pub async fn balance(&self, account: &str) -> Result<pb::BalanceView, ClientError> {
        balance_view(self.call(account, Op::Balance(pb::Balance { account: account.into() })).await?)
    }

    /// A page of the account's ledger from its group's leader (whose copy
    /// is the newest), oldest first.
    pub async fn history(
        &self,
        account: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<pb::HistoryRecord>, ClientError> {
        self.conn(&self.route(account)).await?.history(account, after_seq, limit).await
    }

    /// `Client::statement`, from a member of the account's group (its
    /// leader when known).
    pub async fn statement(
        &self,
        account: &str,
        from_ms: u64,
        to_ms: u64,
        points: u32,
    ) -> Result<pb::StatementReply, ClientError> {
        self.conn(&self.route(account)).await?.statement(account, from_ms, to_ms, points).await
    }

    /// `Client::items`, from a member of the account's group (its leader
    /// when known).
    pub async fn items(
        &self,
        account: &str,
        kind: &str,
        after_id: u64,
        limit: u32,
    ) -> Result<pb::ItemsReply, ClientError> {
        self.conn(&self.route(account)).await?.items(account, kind, after_id, limit).await
    }
}

fn accepted(reply: pb::Reply) -> Result<pb::Accepted, ClientError> {
    match reply.result {
        Some(pb::reply::Result::Accepted(a)) => Ok(a),
        Some(pb::reply::Result::Refusal(r)) if r.code == "outcome_unknown" => {
            Err(ClientError::OutcomeUnknown(r.message))
        }
        Some(pb::reply::Result::Refusal(r)) => Err(ClientError::Refused { code: r.code, message: r.message }),
        None => Err(ClientError::OutcomeUnknown("an empty reply".into())),
    }
}

/// Owns the stream: gathers waiting calls into batches, sends them, and
/// matches replies to callers. Opens the stream when the first call comes
/// and again after it breaks.
async fn pump(
    client: LedgerClient<Channel>,
    token: MetadataValue<tonic::metadata::Ascii>,
    mut calls: mpsc::Receiver<Call>,
    max_batch: usize,
) {
    let mut next_id: u64 = 0;
    let mut stream: Option<(mpsc::Sender<pb::Batch>, Pending)> = None;
    while let Some(first) = calls.recv().await {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match calls.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        if stream.as_ref().is_none_or(|(tx, _)| tx.is_closed()) {
            match open(client.clone(), token.clone()).await {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    for call in batch {
                        let _ = call.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            }
        }
        let Some((tx, pending)) = &stream else { continue };
        let mut requests = Vec::with_capacity(batch.len());
        {
            let mut waiting = pending.lock();
            for call in batch {
                next_id = next_id.wrapping_add(1);
                waiting.insert(next_id, call.reply);
                requests.push(pb::Request { id: next_id, op: Some(call.op) });
            }
        }
        if tx.send(pb::Batch { requests }).await.is_err() {
            // The stream ended under us: the reader answers what is pending.
            stream = None;
            continue;
        }
        // One batch in flight per connection: while it is answered, the
        // calls that come in gather into the next one (as TigerBeetle's
        // clients do), so a busy connection sends few large batches instead
        // of many small ones.
        pending.settled(IN_FLIGHT_WAIT).await;
    }
}

async fn open(
    mut client: LedgerClient<Channel>,
    token: MetadataValue<tonic::metadata::Ascii>,
) -> Result<(mpsc::Sender<pb::Batch>, Pending), ClientError> {
    let (tx, rx) = mpsc::channel::<pb::Batch>(256);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut().insert("authorization", token);
    let mut inbound = client.authorize(req).await.map_err(from_status)?.into_inner();
    let pending = Pending::default();
    let reader_pending = pending.clone();
    tokio::spawn(async move {
        let failure = loop {
            match inbound.message().await {
                Ok(Some(replies)) => {
                    let mut waiting = reader_pending.lock();
                    for reply in replies.replies {
                        if let Some(to) = waiting.remove(&reply.id) {
                            let _ = to.send(Ok(reply));
                        }
                    }
                    if waiting.is_empty() {
                        reader_pending.answered.notify_one();
                    }
                }
                Ok(None) => break ClientError::OutcomeUnknown("the node closed the stream".into()),
                Err(status) => break from_status(status),
            }
        };
        // Whatever was sent and not answered has an unknown outcome,
        // however the stream ended.
        let failure = ClientError::OutcomeUnknown(failure.to_string());
        for (_, to) in reader_pending.lock().drain() {
            let _ = to.send(Err(failure.clone()));
        }
        reader_pending.answered.notify_one();
    });
    Ok((tx, pending))
}
