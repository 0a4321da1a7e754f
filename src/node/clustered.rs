//! A clustered node end to end (tests): three nodes in one process, their
//! groups' members talking over the node link on loopback, each node on
//! RocksDB in a directory of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::async_runtime::watch::WatchReceiver;

use crate::clock::SystemClock;
use crate::cluster::apply::StoreShard;
use crate::cluster::groups::{Groups, GroupsConfig};
use crate::cluster::link::{LinkFactory, LinkService};
use crate::cluster::rocks::RaftDisk;
use crate::cluster::testing::serve_at;
use crate::config::NodeConfig;
use crate::error::Error;
use crate::ledger::AccountId;
use crate::ledger::{Amount, Command, Currency, DebitMode, IdemKey, Mode, Reply, Request, Service};
use crate::node::Node;
use crate::recharge::gateway::SimulatedGateway;
use crate::store::RocksStore;
use crate::store::Store;

const SECRET: &str = "cluster-secret-0123456789";
/// The shards of a test cluster (two groups of four).
const SHARDS: u32 = 8;
/// Bounded waits: they end as soon as the cluster gets there.
pub(crate) const TRIES: u32 = 600;

/// One clustered node: its node, its groups, its store, its link
/// server, on RocksDB in a directory that outlives it (a restart).
pub(crate) struct Member {
    pub(crate) node: Option<Node>,
    pub(crate) groups: Arc<Groups>,
    pub(crate) store: Arc<dyn Store>,
    server: Vec<tokio::task::JoinHandle<()>>,
    /// Its link service (a test cuts it off).
    service: Arc<LinkService<StoreShard>>,
    /// The groups' logs: closed when the member is dropped.
    _disk: RaftDisk,
}

/// Opens what a restarting node opens; a store the stopped node's
/// last tasks still hold is tried again (boundedly).
fn open_disks(dir: &std::path::Path) -> (Arc<dyn Store>, RaftDisk) {
    for _ in 0..TRIES {
        let opts = crate::store::RocksOptions { shards: Some(SHARDS), ..Default::default() };
        let store = RocksStore::open_with(&dir.join("state"), opts);
        let disk = RaftDisk::open(&dir.join("raft"));
        if let (Ok(store), Ok(disk)) = (store, disk) {
            return (Arc::new(store), disk);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cannot reopen {}", dir.display());
}

async fn member(id: u64, dir: &std::path::Path, addr: &str) -> (Member, BasicNode) {
    member_with(id, dir, addr, fast()).await
}

/// The settings of a test member: Raft timing at a 50 ms heartbeat,
/// elections at 150–300 ms.
pub(crate) fn fast() -> NodeConfig {
    let mut config = NodeConfig::default();
    config.cluster.heartbeat_ms = 50;
    config.cluster.election_timeout_min_ms = 150;
    config.cluster.election_timeout_max_ms = 300;
    config
}

/// `member`, its node started with `config` (its `node.shards` and
/// `node.workers` set here; Raft timing from its `cluster` settings).
pub(crate) async fn member_with(id: u64, dir: &std::path::Path, addr: &str, config: NodeConfig) -> (Member, BasicNode) {
    let mut config = config;
    config.node.shards = SHARDS;
    config.node.workers = 2;
    let raft = openraft::Config {
        heartbeat_interval: config.cluster.heartbeat_ms,
        election_timeout_min: config.cluster.election_timeout_min_ms,
        election_timeout_max: config.cluster.election_timeout_max_ms,
        ..Default::default()
    };
    let cfg = GroupsConfig {
        node_id: id,
        shards: SHARDS,
        shards_per_group: 4,
        commit_timeout: Duration::from_secs(2),
        raft,
        notice_ms: config.ledger.expiry_notice_ms,
        webhooks: !config.webhooks.urls.is_empty(),
        // The tests send each request to the leader they found: the lead
        // stays where the election put it.
        balance_leaders: false,
        snapshot_log_entries: config.cluster.snapshot_log_entries,
        snapshot_timeout: Duration::from_millis(config.cluster.snapshot_timeout_ms),
    };
    let (store, disk) = open_disks(dir);
    let service = LinkService::<StoreShard>::new(SECRET);
    let (addr, server) = serve_at(Arc::clone(&service), addr).await;
    let link = LinkFactory::new(SECRET);
    let groups = Groups::start(cfg, Arc::clone(&store), |g| (disk.log(g), link.group(g))).await.unwrap();
    for g in 0..groups.count() {
        service.host(g, groups.raft(g).clone());
    }
    let gateway = Arc::new(SimulatedGateway::new());
    let node =
        Node::start_clustered(config, Arc::clone(&store), Arc::new(SystemClock), gateway, Arc::clone(&groups), None)
            .await
            .unwrap();
    (Member { node: Some(node), groups, store, server, service, _disk: disk }, BasicNode { addr: addr.to_string() })
}

/// Three members on `dirs` with `config`, made a cluster by node 1: the
/// members and their link addresses.
pub(crate) async fn start_three(
    dirs: &[tempfile::TempDir],
    config: NodeConfig,
) -> (BTreeMap<u64, Member>, BTreeMap<u64, BasicNode>) {
    let mut members = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let (m, addr) = member_with(id, dirs[id as usize - 1].path(), "127.0.0.1:0", config.clone()).await;
        members.insert(id, m);
        addrs.insert(id, addr);
    }
    members[&1].groups.initialize(&addrs).await.unwrap();
    (members, addrs)
}

/// Stops a member as a lost node stops: its link goes quiet and its
/// group members stop, then the node.
pub(crate) async fn lose(m: &mut Member) {
    for task in &m.server {
        task.abort();
    }
    m.groups.shutdown().await;
    if let Some(node) = m.node.take() {
        node.shutdown().await;
    }
}

/// Sends `req` as a client would: to node 1 (or the first alive), then
/// to the leader a `wrong_node` names; `shard_unavailable` is resent
/// (under the same key: it applies once). The node that answered, and
/// its answer.
pub(crate) async fn send(members: &BTreeMap<u64, Member>, req: &Request) -> (u64, Result<Reply, Error>) {
    let mut to = *members.iter().find(|(_, m)| m.node.is_some()).unwrap().0;
    let mut last = None;
    for _ in 0..TRIES {
        let Some(node) = members.get(&to).and_then(|m| m.node.as_ref()) else {
            to = *members.iter().find(|(_, m)| m.node.is_some()).unwrap().0;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        match node.execute(req.clone()).await {
            Err(Error::WrongNode { leader: Some(leader), .. }) => to = leader,
            Err(e @ (Error::WrongNode { leader: None, .. } | Error::ShardUnavailable(_))) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answer => return (to, answer),
        }
    }
    panic!("no node served {req:?}; the last answer: {last:?}");
}

pub(crate) fn request(account: &AccountId, key: Option<&str>, command: Command) -> Request {
    Request { account: account.clone(), key: key.map(|k| IdemKey::new(k).unwrap()), command }
}

pub(crate) fn debit(dollars: i64) -> Command {
    Command::Debit {
        amount: Amount::whole(dollars),
        mode: DebitMode::Strict,
        service: Service::default(),
        reference: None,
    }
}

/// Three clustered nodes in one process, each group's members talking
/// over the node link on loopback: every request is acknowledged only
/// through the group's leader (another node answers `wrong_node`
/// naming it), followers apply the same state, and when the node that
/// leads a group is lost the other two elect a leader that serves the
/// same balances and goes on; restarted from its disks, the lost node
/// catches up to the same state. Nothing acknowledged is lost, and
/// every account's ledger sums to its balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clustered_nodes_commit_through_their_leaders_and_outlive_one() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut members, addrs) = start_three(&dirs, fast()).await;
    let accounts: Vec<AccountId> = (0..12).map(|i| AccountId::new(&format!("acct-{i}")).unwrap()).collect();
    let mut expected: BTreeMap<AccountId, i64> = BTreeMap::new();
    for id in &accounts {
        let open =
            Command::Open { mode: Mode::Prepaid, currency: Currency::USD, past_due_suspends: None, credit_limit: None };
        let (_, answer) = send(&members, &request(id, Some("open"), open)).await;
        answer.unwrap();
        let buy = Command::Purchase { amount: Amount::whole(10), reference: None };
        send(&members, &request(id, Some("buy-1"), buy)).await.1.unwrap();
        expected.insert(id.clone(), 10);
    }

    // A node that does not serve an account's group names the one that
    // does, and applies nothing.
    let probe = &accounts[0];
    let (leader, _) = send(&members, &request(probe, None, Command::CheckAccess)).await;
    let group = members[&leader].groups.group_of(probe);
    assert_eq!(members[&leader].groups.serving(group).map(|t| t > 0), Some(true));
    for (id, m) in &members {
        if *id == leader {
            continue;
        }
        match m.node.as_ref().unwrap().execute(request(probe, Some("d-x"), debit(1))).await {
            Err(Error::WrongNode { leader: hint, .. }) => assert_eq!(hint, Some(leader)),
            other => panic!("node {id} does not lead group {group}, yet answered {other:?}"),
        }
    }

    for round in 0..3 {
        for id in &accounts {
            let key = format!("d-{round}");
            send(&members, &request(id, Some(&key), debit(1))).await.1.unwrap();
            *expected.get_mut(id).unwrap() -= 1;
        }
    }

    // The node leading the probe's group is lost.
    let mut lost = members.remove(&leader).unwrap();
    lose(&mut lost).await;
    drop(lost);

    // The other two go on; resent requests apply once.
    for round in 3..6 {
        for id in &accounts {
            let key = format!("d-{round}");
            let (by, answer) = send(&members, &request(id, Some(&key), debit(1))).await;
            assert_ne!(by, leader);
            answer.unwrap();
            *expected.get_mut(id).unwrap() -= 1;
        }
    }
    // A resend of an acknowledged debit is its first result again.
    let (_, again) = send(&members, &request(probe, Some("d-5"), debit(1))).await;
    again.unwrap();

    for id in &accounts {
        let (by, answer) = send(&members, &request(id, None, Command::Balance)).await;
        let balance = answer.unwrap().balance;
        assert_eq!(balance, Amount::whole(expected[id]), "account {id}");
        // The ledger sums to the balance, on the node that serves it.
        let history = members[&by].node.as_ref().unwrap().history(id, 0, 1_000).unwrap();
        let sum = history.iter().fold(Amount::ZERO, |s, r| s + r.event.balance_delta());
        assert_eq!(sum, balance);
    }

    // The lost node restarts from its disks where it was, and catches
    // up: all three hold the same state for every account once they
    // have applied the same log.
    let addr = addrs[&leader].addr.clone();
    let (back, _) = member(leader, dirs[leader as usize - 1].path(), &addr).await;
    members.insert(leader, back);
    let ids: Vec<u64> = members.keys().copied().collect();
    for g in 0..members[&1].groups.count() {
        let (by, _) = {
            let probe = (0..).map(|i| AccountId::new(&format!("probe-{i}")).unwrap());
            let id = probe.into_iter().find(|id| members[&1].groups.group_of(id) == g).unwrap();
            send(&members, &request(&id, None, Command::CheckAccess)).await
        };
        let last = members[&by].groups.raft(g).metrics().borrow_watched().last_log_index;
        for id in &ids {
            let wait = members[id].groups.raft(g).wait(Some(Duration::from_secs(20)));
            wait.applied_index_at_least(last, "applied").await.unwrap();
        }
    }
    for id in &accounts {
        let states: Vec<_> = ids.iter().map(|m| members[m].store.load(id).unwrap().map(|l| l.state)).collect();
        assert!(states[0].is_some());
        assert!(states.iter().all(|s| *s == states[0]), "account {id}: {states:?}");
    }
    for (_, m) in members.iter_mut() {
        lose(m).await;
    }
}

/// A request for a group that has no leader yet (a cluster not yet
/// initialized) waits for one, up to `cluster.leaderless_wait_ms`, and
/// applies once the group has it. Past `cluster.leaderless_buffer`
/// waiting requests, or with no wait, a request is answered
/// `shard_unavailable` at once, nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_its_group_to_have_a_leader() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut config = fast();
    config.cluster.leaderless_wait_ms = 60_000;
    config.cluster.leaderless_buffer = 1;
    let (one, addr) = member_with(1, dirs[0].path(), "127.0.0.1:0", config).await;
    let one = Arc::new(one);
    let open =
        || Command::Open { mode: Mode::Prepaid, currency: Currency::USD, past_due_suspends: None, credit_limit: None };
    let (a, b) = (AccountId::new("waits").unwrap(), AccountId::new("refused").unwrap());
    let waits = {
        let one = Arc::clone(&one);
        let req = request(&a, Some("open"), open());
        tokio::spawn(async move { one.node.as_ref().unwrap().execute(req).await })
    };
    let node = one.node.as_ref().unwrap();
    let mut parked = false;
    for _ in 0..TRIES {
        parked = node.waiting_count() == 1;
        if parked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(parked, "the first request waits for a leader");
    // The buffer holds one: the next is answered at once.
    let refused = node.execute(request(&b, Some("open"), open())).await;
    assert!(matches!(refused, Err(Error::ShardUnavailable(_))), "{refused:?}");
    // A node that does not wait answers at once too.
    let mut at_once = fast();
    at_once.cluster.leaderless_wait_ms = 0;
    let (two, _) = member_with(2, dirs[1].path(), "127.0.0.1:0", at_once).await;
    let answer = two.node.as_ref().unwrap().execute(request(&b, Some("open"), open())).await;
    assert!(matches!(answer, Err(Error::ShardUnavailable(_))), "{answer:?}");
    assert!(!waits.is_finished(), "still waiting: no group has a leader");

    // A cluster of node 1 alone: every group gets its leader, and the
    // waiting request applies.
    one.groups.initialize(&BTreeMap::from([(1, addr)])).await.unwrap();
    let opened = waits.await.unwrap();
    assert!(opened.is_ok(), "{opened:?}");
    assert_eq!(node.waiting_count(), 0);
    node.execute(request(&a, None, Command::Balance)).await.unwrap();
    // The refused request applied nothing.
    let never = node.execute(request(&b, None, Command::Balance)).await;
    assert!(matches!(never, Err(Error::Refused(crate::ledger::Reason::UnknownAccount))), "{never:?}");
    let mut one = Arc::into_inner(one).unwrap();
    lose(&mut one).await;
}

/// A write whose commit timed out (its outcome unknown) may still commit
/// in the same term: an auto-recharge it requested is then handed to the
/// gateway by the same leader once the entry applies, not left in flight
/// until some later leader takes the group over. Both followers (slow to
/// stand for election) are cut off while a debit that crosses the
/// threshold is proposed; they answer again, the entry commits in the same
/// term, and the account is recharged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recharge_in_an_entry_that_timed_out_is_charged_once_it_commits() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut members = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let mut config = fast();
        // Node 1's lease (an election timeout) outlasts the moment between
        // the cut and the debit: the debit is appended, not refused.
        let (min, max) = if id == 1 { (2_000, 4_000) } else { (60_000, 120_000) };
        (config.cluster.election_timeout_min_ms, config.cluster.election_timeout_max_ms) = (min, max);
        let (m, addr) = member_with(id, dirs[id as usize - 1].path(), "127.0.0.1:0", config).await;
        members.insert(id, m);
        addrs.insert(id, addr);
    }
    members[&1].groups.initialize(&addrs).await.unwrap();
    let acct = AccountId::new("runs-low").unwrap();
    let open =
        Command::Open { mode: Mode::Prepaid, currency: Currency::USD, past_due_suspends: None, credit_limit: None };
    send(&members, &request(&acct, Some("open"), open)).await.1.unwrap();
    let buy = Command::Purchase { amount: Amount::whole(10), reference: None };
    send(&members, &request(&acct, Some("buy"), buy)).await.1.unwrap();
    let auto = Command::SetAutoRecharge { enabled: true, amount: Some(Amount::whole(25)), threshold: Amount::whole(8) };
    let (leader, answer) = send(&members, &request(&acct, None, auto)).await;
    answer.unwrap();
    assert_eq!(leader, 1, "only node 1 stands for election");
    let group = members[&1].groups.group_of(&acct);
    let term = members[&1].groups.serving(group).unwrap();

    // The debit (10 -> 5, under the threshold: a recharge is requested in
    // the same entry) cannot commit in time.
    for id in [2, 3] {
        members[&id].service.cut(true);
    }
    let node = members[&1].node.as_ref().unwrap();
    let timed_out = node.execute(request(&acct, Some("d-1"), debit(5))).await;
    assert!(matches!(&timed_out, Err(Error::OutcomeUnknown(_))), "{timed_out:?}");

    // The followers answer again: the entry commits in the same term, and
    // its recharge is charged.
    for id in [2, 3] {
        members[&id].service.cut(false);
    }
    members[&1].groups.raft(group).trigger().reset_backoff([2, 3]).await.unwrap();
    let mut balance = None;
    for _ in 0..TRIES {
        balance = node.execute(request(&acct, None, Command::Balance)).await.ok().map(|r| r.balance);
        if balance == Some(Amount::whole(30)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(balance, Some(Amount::whole(30)), "the recharge of the timed-out entry is charged");
    assert_eq!(members[&1].groups.serving(group), Some(term), "the same leader, in the same term");
    // The debit applied once: its resend is its first result.
    assert!(node.execute(request(&acct, Some("d-1"), debit(5))).await.unwrap().replayed);
    let history = node.history(&acct, 0, 1_000).unwrap();
    let charged = history.iter().filter(|r| matches!(r.event, crate::ledger::Event::RechargeSucceeded { .. })).count();
    assert_eq!(charged, 1, "{history:?}");
    for m in members.values_mut() {
        lose(m).await;
    }
}

/// A group's log is purged to its applied state every
/// `cluster.snapshot_log_entries` entries. A node that was down while its
/// groups' logs moved past what their leaders still hold catches up from a
/// snapshot of each group (its store's accounts replaced whole), then from
/// the log, and holds the same state as the others; a node restarted after
/// its own log was purged opens from its store and goes on. Nothing
/// acknowledged is lost, and every ledger sums to its balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_the_purged_log_catches_up_from_a_snapshot() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut config = fast();
    config.cluster.snapshot_log_entries = 10;
    let (mut members, addrs) = start_three(&dirs, config.clone()).await;
    let accounts: Vec<AccountId> = (0..6).map(|i| AccountId::new(&format!("acct-{i}")).unwrap()).collect();
    let mut expected: BTreeMap<AccountId, i64> = BTreeMap::new();
    for id in &accounts {
        let open =
            Command::Open { mode: Mode::Prepaid, currency: Currency::USD, past_due_suspends: None, credit_limit: None };
        send(&members, &request(id, Some("open"), open)).await.1.unwrap();
        let buy = Command::Purchase { amount: Amount::whole(100), reference: None };
        send(&members, &request(id, Some("buy"), buy)).await.1.unwrap();
        expected.insert(id.clone(), 100);
    }

    // Node 3 goes down; what its log held of each group is noted.
    let mut down = members.remove(&3).unwrap();
    let groups = down.groups.count();
    let held: Vec<Option<u64>> =
        (0..groups).map(|g| down.groups.raft(g).metrics().borrow_watched().last_log_index).collect();
    lose(&mut down).await;
    drop(down);

    // Each account is debited one at a time (an entry each): every group's
    // log moves far past what node 3 held, and is purged behind.
    for round in 0..30 {
        for id in &accounts {
            send(&members, &request(id, Some(&format!("d-{round}")), debit(1))).await.1.unwrap();
            *expected.get_mut(id).unwrap() -= 1;
        }
    }
    let leader_of = |members: &BTreeMap<u64, Member>, g: u32| -> u64 {
        members.iter().find(|(_, m)| m.groups.serving(g).is_some()).map(|(id, _)| *id).unwrap()
    };
    // The groups whose leader no longer holds what node 3 needs.
    let behind: Vec<bool> = (0..groups)
        .map(|g| {
            let purged = members[&leader_of(&members, g)].groups.raft(g).metrics().borrow_watched().purged;
            purged.map(|p| p.index) > held[g as usize]
        })
        .collect();
    assert!(behind.contains(&true), "some group's leader purged its log past what node 3 held");

    // Node 3 comes back from its disks and catches up: from a snapshot
    // where the log it needs is gone.
    let (back, _) = member_with(3, dirs[2].path(), &addrs[&3].addr, config.clone()).await;
    members.insert(3, back);
    let wait_level = |members: &BTreeMap<u64, Member>| {
        let lasts: Vec<(u32, u64)> = (0..groups)
            .map(|g| {
                let leader = leader_of(members, g);
                (g, members[&leader].groups.raft(g).metrics().borrow_watched().last_log_index.unwrap())
            })
            .collect();
        let waits: Vec<_> = members
            .values()
            .flat_map(|m| {
                lasts.iter().map(|&(g, last)| {
                    let wait = m.groups.raft(g).wait(Some(Duration::from_secs(30)));
                    async move { wait.applied_index_at_least(Some(last), "applied").await.map(|_| ()) }
                })
            })
            .collect();
        futures_util::future::join_all(waits)
    };
    for done in wait_level(&members).await {
        done.unwrap();
    }
    for g in (0..groups).filter(|&g| behind[g as usize]) {
        assert!(members[&3].groups.snapshots_installed(g) > 0, "node 3 installed group {g}'s snapshot");
    }
    let same_everywhere = |members: &BTreeMap<u64, Member>, expected: &BTreeMap<AccountId, i64>| {
        for (id, balance) in expected {
            let states: Vec<_> = members.values().map(|m| m.store.load(id).unwrap().map(|l| l.state)).collect();
            assert!(states.iter().all(|s| *s == states[0]), "account {id}: {states:?}");
            let state = states[0].as_ref().unwrap();
            assert_eq!(state.balance(), Amount::whole(*balance), "account {id}");
            for m in members.values() {
                let history = m.store.history(id, 0, 10_000).unwrap();
                assert_eq!(history.len() as u64, state.next_seq - 1, "account {id}: every record, from the first");
                let sum = history.iter().fold(Amount::ZERO, |s, r| s + r.event.balance_delta());
                assert_eq!(sum, state.balance(), "account {id}: the ledger sums to the balance");
            }
        }
    };
    same_everywhere(&members, &expected);

    // Node 1 restarts after its own log was purged: it opens from its
    // store and the cluster goes on.
    let mut one = members.remove(&1).unwrap();
    lose(&mut one).await;
    drop(one);
    let (back, _) = member_with(1, dirs[0].path(), &addrs[&1].addr, config).await;
    members.insert(1, back);
    for id in &accounts {
        send(&members, &request(id, Some("after"), debit(1))).await.1.unwrap();
        *expected.get_mut(id).unwrap() -= 1;
    }
    for done in wait_level(&members).await {
        done.unwrap();
    }
    same_everywhere(&members, &expected);
    for m in members.values_mut() {
        lose(m).await;
    }
}
