//! The node link: a shard group's members on other nodes, over gRPC
//! (`proto/link.proto`). One call carries one openraft message for one
//! group, postcard-encoded; the nodes share a cluster secret, checked in
//! constant time on every call. The server side hands each message to the
//! group's member on this node; the client side is openraft's
//! `RaftNetworkV2` for one (target node, group), one HTTP/2 channel per
//! target node shared by its groups.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, OptionalSend};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::ShardRaft;
use super::control::{Ask, Asked, CONTROL, ControlMachine, Proposed};
use super::groups::Replaced;
use crate::error::Error;
use crate::ledger::{Reply, Request as Request_};

type C = ShardRaft;
type Snap = Cursor<Vec<u8>>;

pub mod pb {
    tonic::include_proto!("prepaid.link.v1");
}

/// The largest node link message either way (an append of many group
/// commits, a forwarded batch).
pub const LINK_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

use pb::RaftKind;

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|e| e.to_string())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("a link message does not decode: {e}"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The results of forwarded requests, one each, in order.
pub type Ran<'a> = Pin<Box<dyn Future<Output = Vec<Result<Reply, Error>>> + Send + 'a>>;

/// Runs requests forwarded from another node here, where their groups
/// are led (the node implements it).
pub trait Forwarded: Send + Sync + 'static {
    fn run(&self, reqs: Vec<Request_>) -> Ran<'_>;
}

/// Replaces members of the groups this node leads (the node's groups
/// implement it).
pub trait Members: Send + Sync + 'static {
    fn replace<'a>(
        &'a self,
        group: u32,
        from: u64,
        to: u64,
        to_addr: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Replaced, String>> + Send + 'a>>;
}

/// A forwarded request's answer on the wire: its reply and whether it is
/// the first result given again (a flag the reply's own encoding skips,
/// as stored replies never carry it), or its error's stable code and
/// sentence.
type Answer = Result<(Reply, bool), (String, String)>;

/// The members of groups this node holds, by group, as the link serves
/// them, and the node that runs forwarded requests.
pub struct LinkService<SM>
where
    SM: RaftStateMachine<C, SnapshotData = Snap>,
{
    groups: Mutex<BTreeMap<u32, openraft::Raft<C, SM>>>,
    secret: [u8; 32],
    node: std::sync::OnceLock<Weak<dyn Forwarded>>,
    members: std::sync::OnceLock<Weak<dyn Members>>,
    /// The node's member of the controller (`control::CONTROL`).
    control: std::sync::OnceLock<openraft::Raft<C, ControlMachine>>,
    /// What answers `Control` calls.
    asked: std::sync::OnceLock<Weak<dyn Asked>>,
    /// Tests: every call is refused, as by a node cut off.
    #[cfg(test)]
    cut: std::sync::atomic::AtomicBool,
}

impl<SM> LinkService<SM>
where
    SM: RaftStateMachine<C, SnapshotData = Snap>,
{
    pub fn new(secret: &str) -> Arc<LinkService<SM>> {
        Arc::new(LinkService {
            groups: Mutex::new(BTreeMap::new()),
            secret: Sha256::digest(secret.as_bytes()).into(),
            node: std::sync::OnceLock::new(),
            members: std::sync::OnceLock::new(),
            control: std::sync::OnceLock::new(),
            asked: std::sync::OnceLock::new(),
            #[cfg(test)]
            cut: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Tests: refuses every call from now (`true`), as a node cut off
    /// from the others would not answer them, or answers again.
    #[cfg(test)]
    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Release);
    }

    /// Replacements of members run on `groups` (set once, at start).
    pub fn members_of(&self, groups: Weak<dyn Members>) {
        let _ = self.members.set(groups);
    }

    /// Forwarded requests run on `node` (set once, when the node started).
    pub fn forward_to(&self, node: Weak<dyn Forwarded>) {
        let _ = self.node.set(node);
    }

    pub fn host(&self, group: u32, raft: openraft::Raft<C, SM>) {
        lock(&self.groups).insert(group, raft);
    }

    /// The node's member of the controller, and what answers `Control`
    /// calls (set once, at start).
    pub fn host_control(&self, raft: openraft::Raft<C, ControlMachine>, asked: Weak<dyn Asked>) {
        let _ = self.control.set(raft);
        let _ = self.asked.set(asked);
    }

    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        #[cfg(test)]
        if self.cut.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Status::unavailable("cut off (test)"));
        }
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(|s| <[u8; 32]>::from(Sha256::digest(s)));
        let same = presented.is_some_and(|p| p.iter().zip(&self.secret).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0);
        if same { Ok(()) } else { Err(Status::unauthenticated("the cluster secret is wrong")) }
    }

    /// One message to the group's member here; the answer, or why not, as
    /// the body.
    async fn answer(&self, call: pb::RaftCall) -> Result<Vec<u8>, String> {
        if call.group == CONTROL {
            let raft = self.control.get().cloned().ok_or("the controller has no member on this node")?;
            return answer_on(&raft, call).await;
        }
        let raft = lock(&self.groups).get(&call.group).cloned();
        let raft = raft.ok_or_else(|| format!("group {} has no member on this node", call.group))?;
        answer_on(&raft, call).await
    }
}

/// One message to `raft`; the answer, or why not, as the body.
async fn answer_on<SM>(raft: &openraft::Raft<C, SM>, call: pb::RaftCall) -> Result<Vec<u8>, String>
where
    SM: RaftStateMachine<C, SnapshotData = Snap>,
{
    {
        let body = &call.body;
        fn out<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Result<Vec<u8>, String> {
            encode(&r.map_err(|e| e.to_string()))
        }
        match RaftKind::try_from(call.kind).unwrap_or(RaftKind::Unspecified) {
            RaftKind::Append => out(raft.append_entries(decode::<AppendEntriesRequest<C>>(body)?).await),
            RaftKind::Vote => out(raft.vote(decode::<VoteRequest<C>>(body)?).await),
            RaftKind::Snapshot => {
                let (vote, meta, data): (VoteOf<C>, SnapshotMetaOf<C>, Vec<u8>) = decode(body)?;
                let snapshot = SnapshotOf::<C, Snap> { meta, snapshot: Cursor::new(data) };
                out(raft.install_full_snapshot(vote, snapshot).await)
            }
            RaftKind::TransferLeader => {
                out(raft.handle_transfer_leader(decode::<TransferLeaderRequest<C>>(body)?).await)
            }
            RaftKind::Unspecified => Err(format!("raft message kind {} is not known", call.kind)),
        }
    }
}

#[tonic::async_trait]
impl<SM> pb::node_link_server::NodeLink for Arc<LinkService<SM>>
where
    SM: RaftStateMachine<C, SnapshotData = Snap>,
{
    async fn raft(&self, req: Request<pb::RaftCall>) -> Result<Response<pb::RaftAnswer>, Status> {
        self.check(&req)?;
        match self.answer(req.into_inner()).await {
            Ok(body) => Ok(Response::new(pb::RaftAnswer { body })),
            Err(e) => Err(Status::invalid_argument(e)),
        }
    }

    async fn forward(&self, req: Request<pb::ForwardCall>) -> Result<Response<pb::ForwardAnswer>, Status> {
        self.check(&req)?;
        let reqs: Vec<Request_> = decode(&req.into_inner().body).map_err(Status::invalid_argument)?;
        let node = self.node.get().and_then(Weak::upgrade);
        let node = node.ok_or_else(|| Status::unavailable("this node does not take forwarded requests"))?;
        let answers: Vec<Answer> = node
            .run(reqs)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(reply) => {
                    let again = reply.replayed;
                    Ok((reply, again))
                }
                Err(e) => Err((e.code().to_string(), e.to_string())),
            })
            .collect();
        Ok(Response::new(pb::ForwardAnswer { body: encode(&answers).map_err(Status::internal)? }))
    }

    async fn replace(&self, req: Request<pb::ReplaceCall>) -> Result<Response<pb::ReplaceAnswer>, Status> {
        self.check(&req)?;
        let call = req.into_inner();
        let groups = self.members.get().and_then(Weak::upgrade);
        let groups = groups.ok_or_else(|| Status::unavailable("this node's groups are not running"))?;
        let outcome = groups.replace(call.group, call.from, call.to, &call.to_addr).await;
        Ok(Response::new(pb::ReplaceAnswer { body: encode(&outcome).map_err(Status::internal)? }))
    }

    async fn control(&self, req: Request<pb::ControlCall>) -> Result<Response<pb::ControlAnswer>, Status> {
        self.check(&req)?;
        let ask: Ask = decode(&req.into_inner().body).map_err(Status::invalid_argument)?;
        let asked = self.asked.get().and_then(Weak::upgrade);
        let asked = asked.ok_or_else(|| Status::unavailable("this node's controller is not running"))?;
        let outcome = asked.asked(ask).await;
        Ok(Response::new(pb::ControlAnswer { body: encode(&outcome).map_err(Status::internal)? }))
    }
}

/// Channels to the other nodes, by address, shared by every group.
#[derive(Clone)]
pub struct LinkFactory {
    channels: Arc<Mutex<BTreeMap<String, tonic::transport::Channel>>>,
    /// `Bearer <secret>`, made once (`None`: a secret that is not a valid
    /// header value; every call then fails saying so).
    bearer: Option<Bearer>,
    group: u32,
}

type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;
type LinkClient = pb::node_link_client::NodeLinkClient<tonic::transport::Channel>;

/// `body` as a call: the deadline and the cluster secret set.
fn signed<T>(body: T, bearer: &Option<Bearer>, timeout: std::time::Duration) -> Result<Request<T>, String> {
    let bearer = bearer.clone().ok_or("the cluster secret is not a valid header value")?;
    let mut req = Request::new(body);
    req.set_timeout(timeout);
    req.metadata_mut().insert("authorization", bearer);
    Ok(req)
}

impl LinkFactory {
    pub fn new(secret: &str) -> LinkFactory {
        let bearer = format!("Bearer {secret}").parse().ok();
        LinkFactory { channels: Arc::default(), bearer, group: 0 }
    }

    /// A client of the node at `addr`, over the channel shared by every
    /// call to it.
    fn client(&self, addr: &str) -> LinkClient {
        let mut channels = lock(&self.channels);
        let channel = channels
            .entry(addr.to_string())
            .or_insert_with(|| {
                // Lazy: connects on first use and again after a loss.
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .map(|e| e.connect_lazy())
                    .unwrap_or_else(|_| tonic::transport::Endpoint::from_static("http://0.0.0.0:1").connect_lazy())
            })
            .clone();
        LinkClient::new(channel)
            .max_decoding_message_size(LINK_MESSAGE_BYTES)
            .max_encoding_message_size(LINK_MESSAGE_BYTES)
    }

    /// Asks the node at `addr` (which leads `group`) to replace its voter
    /// `from` with `to`.
    pub async fn replace(
        &self,
        addr: &str,
        group: u32,
        from: u64,
        to: u64,
        to_addr: &str,
        timeout: std::time::Duration,
    ) -> Result<Replaced, String> {
        let call = pb::ReplaceCall { group, from, to, to_addr: to_addr.to_string() };
        let req = signed(call, &self.bearer, timeout)?;
        let answer = match self.client(addr).replace(req).await {
            Ok(answer) => answer.into_inner(),
            // Not reached (a leader just lost): asked again once the group
            // has another.
            Err(s) if s.code() == tonic::Code::Unavailable => {
                return Ok(Replaced::Unreachable(s.message().to_string()));
            }
            Err(s) => return Err(s.message().to_string()),
        };
        decode::<Result<Replaced, String>>(&answer.body)?
    }

    /// Asks the node at `addr` over its `Control` call (not reached: `Err`).
    pub async fn control(&self, addr: &str, ask: &Ask, timeout: std::time::Duration) -> Result<Proposed, String> {
        let req = signed(pb::ControlCall { body: encode(ask)? }, &self.bearer, timeout)?;
        let answer = self.client(addr).control(req).await.map_err(|s| s.message().to_string())?.into_inner();
        decode::<Proposed>(&answer.body)
    }

    /// Runs `reqs` on the node at `addr` (which leads their groups): one
    /// answer each, in order, or why the call failed.
    pub async fn forward(
        &self,
        addr: &str,
        reqs: &[Request_],
        timeout: std::time::Duration,
    ) -> Result<Vec<Result<Reply, Error>>, Unanswered> {
        let unknown = |why: String| Unanswered { why, unsent: false };
        let req = signed(pb::ForwardCall { body: encode(&reqs).map_err(unknown)? }, &self.bearer, timeout)
            .map_err(|why| Unanswered { why, unsent: true })?;
        let answer = match self.client(addr).forward(req).await {
            Ok(answer) => answer.into_inner(),
            Err(s) => return Err(Unanswered { why: s.message().to_string(), unsent: refused(&s) }),
        };
        let answers: Vec<Answer> = decode(&answer.body).map_err(unknown)?;
        if answers.len() != reqs.len() {
            return Err(unknown(format!("{} answers to {} requests", answers.len(), reqs.len())));
        }
        let answer = |a: Answer| match a {
            Ok((reply, replayed)) => Ok(Reply { replayed, ..reply }),
            Err((code, message)) => Err(Error::remote(&code, message)),
        };
        Ok(answers.into_iter().map(answer).collect())
    }

    /// The factory of one group, over the same channels.
    pub fn group(&self, group: u32) -> LinkFactory {
        LinkFactory { group, ..self.clone() }
    }
}

/// The controller's calls to other nodes go over the link (how long one
/// may take: `CONTROL_CALL`; a replacement, both of its steps and a hop).
impl super::control::Peers for LinkFactory {
    fn control<'a>(
        &'a self,
        addr: &'a str,
        ask: &'a Ask,
    ) -> Pin<Box<dyn Future<Output = Result<Proposed, String>> + Send + 'a>> {
        Box::pin(LinkFactory::control(self, addr, ask, CONTROL_CALL))
    }

    fn replace<'a>(
        &'a self,
        addr: &'a str,
        group: u32,
        from: u64,
        to: u64,
        to_addr: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Replaced, String>> + Send + 'a>> {
        let timeout = super::groups::REPLACE_WAIT * 2 + std::time::Duration::from_secs(10);
        Box::pin(LinkFactory::replace(self, addr, group, from, to, to_addr, timeout))
    }
}

/// How long one call to another node's controller may take.
pub const CONTROL_CALL: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LinkError(String);

/// Why a forwarded call brought no answers.
#[derive(Debug)]
pub struct Unanswered {
    pub why: String,
    /// The call never left this node (the leader's address refused the
    /// connection, or the call could not be made): nothing of it applied.
    /// Otherwise the outcome is unknown.
    pub unsent: bool,
}

/// Whether a failed call was refused at connect: nothing was sent. (A
/// connection that breaks later may have carried the call.)
fn refused(status: &Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cause = e.source();
    }
    false
}

fn unreachable(e: impl std::fmt::Display) -> RPCError<C> {
    RPCError::Unreachable(Unreachable::new(&LinkError(e.to_string())))
}

impl RaftNetworkFactory<C> for LinkFactory {
    type Network = Link;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> Link {
        Link { client: self.client(&node.addr), bearer: self.bearer.clone(), group: self.group }
    }
}

/// One group's messages to one node.
pub struct Link {
    client: LinkClient,
    bearer: Option<Bearer>,
    group: u32,
}

impl Link {
    async fn call<Resp: DeserializeOwned>(
        &mut self,
        kind: RaftKind,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<C>> {
        let call = pb::RaftCall { group: self.group, kind: kind as i32, body };
        let req = signed(call, &self.bearer, option.hard_ttl()).map_err(unreachable)?;
        let answer = self.client.raft(req).await.map_err(|s| unreachable(s.message()))?.into_inner();
        let result: Result<Resp, String> = decode(&answer.body).map_err(unreachable)?;
        result.map_err(unreachable)
    }
}

impl RaftNetworkV2<C> for Link {
    type SnapshotData = Snap;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.call(RaftKind::Append, encode(&rpc).map_err(unreachable)?, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(RaftKind::Vote, encode(&rpc).map_err(unreachable)?, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Snap>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let body = encode(&(vote, snapshot.meta, snapshot.snapshot.into_inner())).map_err(unreachable)?;
        Ok(self.call(RaftKind::Snapshot, body, &option).await?)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        self.call(RaftKind::TransferLeader, encode(&req).map_err(unreachable)?, &option).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::memory::{MemoryLog, MemoryShard};
    use crate::cluster::testing::{Ledger, Members, agreed_leader, balance, config, serve};
    use crate::ledger::Amount;

    const SECRET: &str = "cluster-secret-0123456789";
    const WAIT: Duration = Duration::from_secs(20);

    type Member = openraft::Raft<C, MemoryShard>;

    async fn leader(members: &Members, among: &[u64]) -> u64 {
        agreed_leader(members, among).await
    }

    /// Three nodes, each with a link server on loopback and one member of
    /// group 5: the group elects over gRPC, replicates, refuses a caller
    /// without the secret, and goes on when the leader's node dies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_replicates_over_the_node_link_and_survives_its_leader_s_node() {
        let config = config(100);
        let mut members = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        let mut servers = BTreeMap::new();
        for id in 1..=3u64 {
            let service = LinkService::<MemoryShard>::new(SECRET);
            let (addr, tasks) = serve(Arc::clone(&service)).await;
            let shard = MemoryShard::default();
            let factory = LinkFactory::new(SECRET).group(5);
            let raft =
                Member::new(id, Arc::clone(&config), factory, MemoryLog::default(), shard.clone()).await.unwrap();
            service.host(5, raft.clone());
            members.insert(id, (raft, shard));
            nodes.insert(id, BasicNode { addr: addr.to_string() });
            servers.insert(id, (addr, tasks));
        }
        members[&1].0.initialize(nodes).await.unwrap();
        let first = leader(&members, &[1, 2, 3]).await;
        let mut ledger = Ledger::new("acme");
        let mut last = 0;
        for entry in [ledger.open(), ledger.purchase("p1", 5), ledger.purchase("p2", 5), ledger.purchase("p3", 5)] {
            last = members[&first].0.client_write(entry).await.unwrap().log_id.index();
        }
        for (raft, shard) in members.values() {
            raft.wait(Some(WAIT)).applied_index_at_least(Some(last), "applied").await.unwrap();
            assert_eq!(balance(shard, &ledger), Amount::whole(15));
        }

        // Without the secret, a node refuses the call.
        let addr = servers[&1].0;
        let mut stranger = pb::node_link_client::NodeLinkClient::connect(format!("http://{addr}")).await.unwrap();
        let mut call = Request::new(pb::RaftCall { group: 5, kind: RaftKind::Vote as i32, body: vec![] });
        call.metadata_mut().insert("authorization", "Bearer guess".parse().unwrap());
        assert_eq!(stranger.raft(call).await.unwrap_err().code(), tonic::Code::Unauthenticated);

        // The leader's node dies: its server and its member stop.
        for task in &servers[&first].1 {
            task.abort();
        }
        members[&first].0.shutdown().await.unwrap();
        let rest: Vec<u64> = (1..=3).filter(|id| *id != first).collect();
        let second = leader(&members, &rest).await;
        // A leader just elected may refuse a write until a quorum has
        // answered it (its lease): asked again, boundedly.
        let p4 = ledger.purchase("p4", 5);
        let mut written = None;
        for _ in 0..200 {
            match members[&second].0.client_write(p4.clone()).await {
                Ok(w) => {
                    written = Some(w.log_id.index());
                    break;
                }
                Err(e) if e.forward_to_leader().is_some() => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("{e}"),
            }
        }
        let at = written.expect("the new leader took the write");
        for id in &rest {
            members[id].0.wait(Some(WAIT)).applied_index_at_least(Some(at), "applied").await.unwrap();
            assert_eq!(balance(&members[id].1, &ledger), Amount::whole(20));
        }
        assert_eq!(members[&rest[0]].1.state(), members[&rest[1]].1.state());
        for id in &rest {
            members[id].0.shutdown().await.unwrap();
        }
    }

    /// A forward to an address nobody listens on was never sent (nothing
    /// of it applied); one to a node that answers and then fails is not
    /// known to be unsent.
    #[tokio::test]
    async fn a_forward_refused_at_connect_is_known_unsent() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let link = LinkFactory::new(SECRET);
        let reqs = vec![Request_ {
            account: crate::ledger::AccountId::new("acme").unwrap(),
            key: None,
            command: crate::ledger::Command::Balance,
        }];
        let failed = link.forward(&addr, &reqs, Duration::from_secs(5)).await.unwrap_err();
        assert!(failed.unsent, "{failed:?}");
        // A node that serves the link but has no node to run requests on
        // answers with an error: that call was sent.
        let service = LinkService::<MemoryShard>::new(SECRET);
        let (addr, tasks) = serve(service).await;
        let failed = link.forward(&addr.to_string(), &reqs, Duration::from_secs(5)).await.unwrap_err();
        assert!(!failed.unsent, "{failed:?}");
        for task in tasks {
            task.abort();
        }
    }
}
