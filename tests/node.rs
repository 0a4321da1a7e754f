//! The embedded node end to end: actors, the RocksDB journal with group
//! commit, restart, timers, auto-recharge through the simulated gateway,
//! events. Time is a manual clock; every wait is a bounded loop that ends as
//! soon as the expected state is there.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prepaid::ledger::*;
use prepaid::reads;
use prepaid::store::{RocksStore, Store};
use prepaid::{ManualClock, Node, NodeConfig, SimulatedGateway};

#[path = "support/logs.rs"]
mod logs;

const T0: u64 = 1_767_225_600_000;

fn amt(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

fn id(s: &str) -> AccountId {
    AccountId::new(s).unwrap()
}

fn config() -> NodeConfig {
    let mut cfg = NodeConfig::default();
    cfg.node.shards = 8;
    cfg.node.timer_poll_ms = 5;
    cfg
}

struct Fixture {
    dir: tempdir::Dir,
    clock: ManualClock,
    gateway: Arc<SimulatedGateway>,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(name: &str) -> Dir {
            let path = std::env::temp_dir().join(format!("prepaid-test-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        Fixture { dir: tempdir::Dir::new(name), clock: ManualClock::at(T0), gateway: Arc::new(SimulatedGateway::new()) }
    }

    async fn start(&self) -> Node {
        self.start_with(config()).await
    }

    async fn start_with(&self, cfg: NodeConfig) -> Node {
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(&self.dir.0).unwrap());
        Node::start_with(cfg, store, Arc::new(self.clock.clone()), self.gateway.clone()).await.unwrap()
    }
}

fn req(account: &str, key: Option<&str>, command: Command) -> Request {
    Request { account: id(account), key: key.map(|k| IdemKey::new(k).unwrap()), command }
}

fn open(account: &str) -> Request {
    req(
        account,
        None,
        Command::Open { mode: Mode::Prepaid, currency: Currency::USD, past_due_suspends: None, credit_limit: None },
    )
}

fn purchase(account: &str, key: &str, a: &str) -> Request {
    req(account, Some(key), Command::Purchase { amount: amt(a), reference: None })
}

fn strict(account: &str, key: &str, a: &str) -> Request {
    req(
        account,
        Some(key),
        Command::Debit { amount: amt(a), mode: DebitMode::Strict, service: Service::ApiRequest, reference: None },
    )
}

async fn balance(node: &Node, account: &str) -> BalanceView {
    match node.execute(req(account, None, Command::Balance)).await.unwrap().detail {
        Detail::Balance(view) => *view,
        other => panic!("{other:?}"),
    }
}

/// Polls until `check` holds, at most `tries` times, 10 ms apart.
async fn eventually<F, Fut>(tries: u32, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..tries {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn journal_checks(dir: &Path, accounts: &[String]) {
    let store = RocksStore::open(dir).unwrap();
    for name in accounts {
        let account = id(name);
        let Some(loaded) = store.load(&account).unwrap() else { continue };
        let journal = store.history(&account, 0, u32::MAX).unwrap();
        let sum: Amount = journal.iter().map(|r| r.event.balance_delta()).sum();
        assert_eq!(sum, loaded.state.balance(), "{name}: ledger sum = balance");
        let replayed = AccountState::from_records(account.clone(), &journal).unwrap().unwrap();
        assert_eq!(replayed, loaded.state, "{name}: replay(journal) = snapshot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_applied_and_durable_across_restart() {
    let f = Fixture::new("restart");
    let names: Vec<String> = (0..40).map(|i| format!("org_{i}")).collect();
    let mut replies: HashMap<String, (Request, Result<Reply, prepaid::Error>)> = HashMap::new();
    {
        let node = f.start().await;
        for name in &names {
            node.execute(open(name)).await.unwrap();
            node.execute(purchase(name, &format!("{name}-buy"), "100")).await.unwrap();
        }
        let mut rng = Rng(0x5eed);
        for n in 0..3_000 {
            let name = &names[rng.below(names.len() as u64) as usize];
            let key = format!("{name}-op{n}");
            let cents = 1 + rng.below(500);
            let a = format!("{}.{:02}", cents / 100, cents % 100);
            let request = match rng.below(6) {
                0 => purchase(name, &key, "5"),
                1 => req(
                    name,
                    Some(&key),
                    Command::Hold { amount: amt(&a), service: Service::FineTuning, reference: None, timeout_ms: None },
                ),
                2 => req(
                    name,
                    Some(&key),
                    Command::Debit {
                        amount: amt(&a),
                        mode: DebitMode::Metered,
                        service: Service::Evaluation,
                        reference: None,
                    },
                ),
                _ => strict(name, &key, &a),
            };
            let result = node.execute(request.clone()).await;
            replies.insert(key, (request, result));
            if n % 500 == 0 {
                f.clock.advance(1_000);
            }
        }
        // A batch, split by account, answered in order.
        let batch: Vec<Request> = (0..20).map(|i| strict(&names[i % 3], &format!("batch-{i}"), "0.01")).collect();
        let results = node.execute_batch(batch.clone()).await.unwrap();
        assert_eq!(results.len(), 20);
        for (request, result) in batch.into_iter().zip(results) {
            replies.insert(request.key.as_ref().unwrap().as_str().to_string(), (request, result));
        }
        node.shutdown().await;
    }
    journal_checks(&f.dir.0, &names);
    let before: Vec<BalanceView>;
    {
        let node = f.start().await;
        before = futures_balances(&node, &names).await;
        // Every accepted request, sent again with its key, gets its first reply
        // and changes nothing. (Refused ones were not recorded: sent again they
        // would be decided anew, by design.)
        for (request, first) in replies.values().filter(|(_, first)| first.is_ok()) {
            let again = node.execute(request.clone()).await;
            assert_eq!(again, first.clone().map(|r| Reply { replayed: true, ..r }), "{:?}", request.key);
        }
        let after = futures_balances(&node, &names).await;
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(b, a, "resends applied nothing to {}", b.account);
        }
        node.shutdown().await;
    }
    let accepted = replies.values().filter(|(_, r)| r.is_ok()).count();
    assert!(accepted > 1_000, "the load mostly succeeded: {accepted}");
}

async fn futures_balances(node: &Node, names: &[String]) -> Vec<BalanceView> {
    let mut out = Vec::new();
    for name in names {
        out.push(balance(node, name).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_above_balance_recharges_through_the_gateway_exactly_once_each() {
    let f = Fixture::new("recharge");
    let node = f.start().await;
    node.execute(open("org_r")).await.unwrap();
    node.execute(purchase("org_r", "buy", "10")).await.unwrap();
    let set = Command::SetAutoRecharge { enabled: true, amount: Some(amt("25")), threshold: amt("60") };
    node.execute(req("org_r", None, set)).await.unwrap();
    let reached = eventually(500, || async { balance(&node, "org_r").await.balance >= amt("60") }).await;
    assert!(reached, "two recharges bring 10.00 to 60.00");
    let view = balance(&node, "org_r").await;
    assert_eq!(view.balance, amt("60"));
    assert_eq!(view.auto_recharge.attempt_in_flight, None);
    assert_eq!(f.gateway.charged().len(), 2);
    assert!(f.gateway.charged_twice().is_empty());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_expires_while_the_node_is_down_and_fires_on_start() {
    let f = Fixture::new("timers");
    {
        let node = f.start().await;
        node.execute(open("org_t")).await.unwrap();
        node.execute(purchase("org_t", "buy", "30")).await.unwrap();
        let hold = Command::Hold {
            amount: amt("30"),
            service: Service::FineTuning,
            reference: None,
            timeout_ms: Some(60_000),
        };
        node.execute(req("org_t", Some("hold"), hold)).await.unwrap();
        assert_eq!(balance(&node, "org_t").await.available, Amount::ZERO);
        node.shutdown().await;
    }
    // The hold's deadline all but passes while the node is down; it passes
    // once the node is up and subscribed to (a deadline already past at
    // start may fire before anyone can subscribe: its event would be
    // missed and `recv` would wait for ever).
    f.clock.advance(59_999);
    let node = f.start().await;
    let mut events = node.subscribe();
    f.clock.advance(1);
    let fired = eventually(500, || async {
        // Read-only probe through the store, so the probe does not settle it.
        node.history(&id("org_t"), 0, 100).unwrap().iter().any(|r| r.event.name() == "hold_expired")
    })
    .await;
    assert!(fired, "the timer index woke the account");
    let e = tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .expect("the event reached the subscriber")
        .unwrap();
    assert_eq!((e.account.as_str(), e.record.event.name()), ("org_t", "hold_expired"));
    assert_eq!(balance(&node, "org_t").await.available, amt("30"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_each_accounts_events_in_order() {
    let f = Fixture::new("events");
    let node = f.start().await;
    let mut events = node.subscribe();
    node.execute(open("org_e")).await.unwrap();
    node.execute(purchase("org_e", "p1", "10")).await.unwrap();
    node.execute(strict("org_e", "d1", "10")).await.unwrap();
    node.execute(purchase("org_e", "p2", "5")).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let e = events.recv().await.unwrap();
        seen.push((e.record.seq, e.record.event.name()));
    }
    assert_eq!(
        seen,
        [
            (1, "opened"),
            (2, "credited"),
            (3, "activated"),
            (4, "debited"),
            (5, "suspended"),
            (6, "credited"),
            (7, "reactivated")
        ]
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_on_batches_and_queues_answer_instead_of_growing() {
    let f = Fixture::new("bounds");
    let mut cfg = config();
    cfg.node.max_batch = 3;
    let node = f.start_with(cfg).await;
    let batch: Vec<Request> = (0..4).map(|i| strict("org_b", &format!("k{i}"), "1")).collect();
    assert_eq!(node.execute_batch(batch).await.unwrap_err().code(), "batch_too_large");
    let three: Vec<Request> = (0..3).map(|i| strict("org_b", &format!("k{i}"), "1")).collect();
    let results = node.execute_batch(three).await.unwrap();
    assert!(results.iter().all(|r| r.as_ref().unwrap_err().code() == "unknown_account"));
    assert_eq!(node.history(&id("org_b"), 0, 0).unwrap_err().code(), "invalid_page");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivation_and_reactivation_are_invisible_to_callers() {
    let f = Fixture::new("passivate");
    let mut cfg = config();
    cfg.node.idle_passivate_ms = 1_000;
    let node = f.start_with(cfg).await;
    node.execute(open("org_p")).await.unwrap();
    node.execute(purchase("org_p", "buy", "10")).await.unwrap();
    let first = node.execute(strict("org_p", "d1", "1.25")).await;
    assert!(first.is_ok());
    let before = balance(&node, "org_p").await;
    f.clock.advance(5_000);
    assert!(eventually(500, || async { node.resident_accounts() == 0 }).await, "the idle account was passivated");
    // Reactivated from disk: same figures, same idempotency records.
    assert_eq!(balance(&node, "org_p").await, before);
    let again = node.execute(strict("org_p", "d1", "1.25")).await;
    assert_eq!(again, first.map(|r| Reply { replayed: true, ..r }), "the first reply, from the store");
    assert_eq!(node.execute(strict("org_p", "d1", "9")).await.unwrap_err().code(), "idempotency_conflict");
    node.execute(strict("org_p", "d2", "1")).await.unwrap();
    assert_eq!(balance(&node, "org_p").await.balance, amt("7.75"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resident_cap_keeps_memory_bounded_and_every_account_serviceable() {
    let f = Fixture::new("cap");
    let mut cfg = config();
    cfg.node.max_resident_accounts = 5;
    let node = f.start_with(cfg).await;
    let names: Vec<String> = (0..30).map(|i| format!("org_c{i}")).collect();
    for name in &names {
        node.execute(open(name)).await.unwrap();
        node.execute(purchase(name, "buy", "10")).await.unwrap();
    }
    assert!(eventually(500, || async { node.resident_accounts() <= 5 }).await, "{} resident", node.resident_accounts());
    for name in &names {
        node.execute(strict(name, "d", "2.50")).await.unwrap();
    }
    for name in &names {
        assert_eq!(balance(&node, name).await.balance, amt("7.5"), "{name}");
    }
    node.shutdown().await;
}

/// A store whose writes start failing when told to.
struct FailingStore {
    inner: prepaid::store::MemoryStore,
    fail: std::sync::atomic::AtomicBool,
}

impl Store for FailingStore {
    fn write(&self, set: &prepaid::store::WriteSet, sync: bool) -> Result<(), prepaid::store::StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(prepaid::store::StoreError::Io("disk full".into()));
        }
        self.inner.write(set, sync)
    }
    fn sync(&self) -> Result<(), prepaid::store::StoreError> {
        self.inner.sync()
    }
    fn recover(&self) -> Result<(), prepaid::store::StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(prepaid::store::StoreError::Io("still full".into()));
        }
        Ok(())
    }
    fn load(&self, id: &AccountId) -> Result<Option<prepaid::store::Loaded>, prepaid::store::StoreError> {
        self.inner.load(id)
    }
    fn dedup(
        &self,
        id: &AccountId,
        key: &IdemKey,
        since: u64,
    ) -> Result<Option<prepaid::ledger::DedupRecord>, prepaid::store::StoreError> {
        self.inner.dedup(id, key, since)
    }
    fn history(&self, id: &AccountId, after: u64, limit: u32) -> Result<Vec<EventRecord>, prepaid::store::StoreError> {
        self.inner.history(id, after, limit)
    }
    fn due(&self, until: u64, limit: usize) -> Result<Vec<(u64, AccountId)>, prepaid::store::StoreError> {
        self.inner.due(until, limit)
    }
    fn in_flight_recharges(&self) -> Result<Vec<(AccountId, u64, Amount)>, prepaid::store::StoreError> {
        self.inner.in_flight_recharges()
    }
    fn webhook_pending(&self) -> Result<Vec<(AccountId, u64, u64)>, prepaid::store::StoreError> {
        self.inner.webhook_pending()
    }
    fn set_webhook_cursor(&self, id: &AccountId, seq: u64) -> Result<(), prepaid::store::StoreError> {
        self.inner.set_webhook_cursor(id, seq)
    }
    fn webhook_cursor(&self, id: &AccountId) -> Result<u64, prepaid::store::StoreError> {
        self.inner.webhook_cursor(id)
    }
    fn raft_mark(&self, group: u32) -> Result<Option<Vec<u8>>, prepaid::store::StoreError> {
        self.inner.raft_mark(group)
    }
    fn accounts_in(
        &self,
        shards: std::ops::Range<u32>,
        total: u32,
    ) -> Result<Vec<AccountId>, prepaid::store::StoreError> {
        self.inner.accounts_in(shards, total)
    }
    fn dedup_all(&self, id: &AccountId) -> Result<Vec<(IdemKey, DedupRecord)>, prepaid::store::StoreError> {
        self.inner.dedup_all(id)
    }
    fn replace_shards(&self, replacement: prepaid::store::Replacement) -> Result<(), prepaid::store::StoreError> {
        self.inner.replace_shards(replacement)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_never_acknowledged_reads_go_on_and_writes_resume_when_storage_does() {
    let store = Arc::new(FailingStore { inner: prepaid::store::MemoryStore::new(), fail: Default::default() });
    let clock = ManualClock::at(T0);
    let mut cfg = config();
    cfg.node.storage_retry_ms = 5;
    let node = Node::start_with(cfg, store.clone(), Arc::new(clock), Arc::new(SimulatedGateway::new())).await.unwrap();
    node.execute(open("org_f")).await.unwrap();
    node.execute(open("org_g")).await.unwrap();
    node.execute(purchase("org_f", "buy", "10")).await.unwrap();
    assert_eq!(node.storage_failure(), None);
    store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = node.execute(strict("org_f", "d1", "1")).await.unwrap_err();
    assert_eq!(failed.code(), "storage_unavailable", "{failed}");
    assert!(node.storage_failure().unwrap().contains("disk full"));
    // Failed: writes are refused, reads are answered from what is durable
    // (the failed debit applied in memory is gone from the answer).
    assert_eq!(node.execute(strict("org_f", "d2", "1")).await.unwrap_err().code(), "storage_unavailable");
    assert_eq!(node.execute(purchase("org_g", "g1", "5")).await.unwrap_err().code(), "storage_unavailable");
    assert_eq!(balance(&node, "org_f").await.balance, amt("10"));
    let check = node.execute(req("org_g", None, Command::CheckAccess)).await;
    assert!(!matches!(&check, Err(e) if e.code() == "storage_unavailable"), "{check:?}");
    // Storage comes back: a probe write succeeds and the node goes on
    // (bounded wait for the writer's next probe).
    store.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..2_000 {
        if node.storage_failure().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(node.storage_failure(), None, "recovered once storage works");
    assert_eq!(node.storage_events(), (1, 1));
    // The unanswered debits resent under their keys apply once each.
    assert_eq!(node.execute(strict("org_f", "d1", "1")).await.unwrap().balance, amt("9"));
    assert_eq!(node.execute(strict("org_f", "d2", "1")).await.unwrap().balance, amt("8"));
    assert_eq!(node.execute(strict("org_f", "d1", "1")).await.unwrap().balance, amt("9"), "the first result again");
    let durable = store.inner.load(&id("org_f")).unwrap().unwrap();
    assert_eq!(durable.state.balance(), amt("8"));
    let journal = store.inner.history(&id("org_f"), 0, u32::MAX).unwrap();
    let sum: Amount = journal.iter().map(|r| r.event.balance_delta()).sum();
    assert_eq!(sum, amt("8"), "the ledger sums to the balance");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_node_in_flight_bound_are_answered_overloaded() {
    let mut cfg = config();
    cfg.node.max_in_flight = 3;
    let f = Fixture::new("inflight");
    let node = f.start_with(cfg).await;
    node.execute(open("org_i")).await.unwrap();
    node.execute(purchase("org_i", "buy", "10")).await.unwrap();
    // At the bound: taken.
    let at = vec![strict("org_i", "a1", "1"), strict("org_i", "a2", "1"), strict("org_i", "a3", "1")];
    assert!(node.execute_batch(at).await.unwrap().iter().all(|r| r.is_ok()));
    // Past it: the front of the batch is taken, the rest answered
    // `overloaded` and not applied.
    let past = (0..4).map(|i| strict("org_i", &format!("b{i}"), "1")).collect();
    let results = node.execute_batch(past).await.unwrap();
    assert!(results[..3].iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(results[3].as_ref().unwrap_err().code(), "overloaded");
    assert_eq!(balance(&node, "org_i").await.balance, amt("4"));
    assert_eq!(node.in_flight(), 0, "answered requests no longer count");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_account_queue_answers_overloaded_and_applies_nothing() {
    let f = Fixture::new("overload");
    let mut cfg = config();
    cfg.node.account_queue_max = 2;
    let node = f.start_with(cfg).await;
    node.execute(open("org_o")).await.unwrap();
    node.execute(purchase("org_o", "buy", "10")).await.unwrap();
    let three: Vec<Request> = (0..3).map(|i| strict("org_o", &format!("d{i}"), "1")).collect();
    let results = node.execute_batch(three).await.unwrap();
    assert!(results.iter().all(|r| r.as_ref().unwrap_err().code() == "overloaded"));
    assert_eq!(balance(&node, "org_o").await.balance, amt("10"));
    let two: Vec<Request> = (0..2).map(|i| strict("org_o", &format!("d{i}"), "1")).collect();
    assert!(node.execute_batch(two).await.unwrap().iter().all(Result::is_ok));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_durability_acknowledges_first_and_shutdown_makes_it_durable() {
    let f = Fixture::new("async");
    let mut cfg = config();
    cfg.node.durability = prepaid::Durability::Async;
    {
        let node = f.start_with(cfg.clone()).await;
        node.execute(open("org_a")).await.unwrap();
        node.execute(purchase("org_a", "buy", "10")).await.unwrap();
        for i in 0..50 {
            node.execute(strict("org_a", &format!("d{i}"), "0.10")).await.unwrap();
        }
        node.shutdown().await;
    }
    let node = f.start_with(cfg).await;
    assert_eq!(balance(&node, "org_a").await.balance, amt("5"));
    node.shutdown().await;
    journal_checks(&f.dir.0, &["org_a".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declining_gateway_backs_off_and_pauses_auto_recharge() {
    logs::capture();
    let mut f = Fixture::new("declines");
    f.gateway = Arc::new(SimulatedGateway::new().with_declines(1_000));
    let node = f.start().await;
    node.execute(open("org_d")).await.unwrap();
    node.execute(purchase("org_d", "buy", "5")).await.unwrap();
    let set = Command::SetAutoRecharge { enabled: true, amount: Some(amt("25")), threshold: amt("10") };
    node.execute(req("org_d", None, set)).await.unwrap();
    for failures in 1..=3u32 {
        let failed =
            eventually(500, || async { balance(&node, "org_d").await.auto_recharge.failures == failures }).await;
        assert!(failed, "failure {failures} recorded");
        // The next attempt waits for its backoff on the (manual) clock.
        f.clock.advance(3_600_000);
    }
    let view = balance(&node, "org_d").await;
    assert_eq!(view.auto_recharge.paused, Some(PauseCause::Failures));
    assert_eq!(view.balance, amt("5"), "nothing credited");
    assert_eq!(f.gateway.charged().len(), 0);
    // Each decline and the pause are logged.
    let declines = logs::lines_with("recharge declined by the gateway");
    assert_eq!(declines.iter().filter(|l| l.contains("org_d:")).count(), 3, "{declines:?}");
    let paused = logs::lines_with("auto-recharge paused");
    assert!(paused.iter().any(|l| l.contains("account=org_d") && l.contains("Failures")), "{paused:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_times_out_is_asked_again_with_the_same_key_and_charges_once() {
    let mut f = Fixture::new("timeouts");
    f.gateway = Arc::new(SimulatedGateway::new().with_timeouts(700));
    let mut cfg = config();
    cfg.node.recharge_retry_unknown_ms = 1;
    let node = f.start_with(cfg).await;
    node.execute(open("org_slow")).await.unwrap();
    node.execute(purchase("org_slow", "buy", "5")).await.unwrap();
    let set = Command::SetAutoRecharge { enabled: true, amount: Some(amt("25")), threshold: amt("80") };
    node.execute(req("org_slow", None, set)).await.unwrap();
    let reached = eventually(1_000, || async { balance(&node, "org_slow").await.balance >= amt("80") }).await;
    assert!(reached, "three recharges land despite timeouts");
    assert_eq!(balance(&node, "org_slow").await.balance, amt("80"));
    assert_eq!(f.gateway.charged().len(), 3, "three attempts, one charge each");
    assert!(f.gateway.calls() > 3, "some calls timed out and were asked again");
    assert!(f.gateway.charged_twice().is_empty(), "money moved once per key");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_is_told_how_much_it_missed() {
    let f = Fixture::new("lag");
    let mut cfg = config();
    cfg.node.event_buffer = 4;
    let node = f.start_with(cfg).await;
    let mut events = node.subscribe();
    node.execute(open("org_l")).await.unwrap();
    node.execute(purchase("org_l", "p", "100")).await.unwrap();
    for i in 0..10 {
        node.execute(strict("org_l", &format!("d{i}"), "1")).await.unwrap();
    }
    // 13 events went out; the buffer keeps 4.
    match events.recv().await {
        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => assert_eq!(missed, 9),
        other => panic!("expected a lag report, got {other:?}"),
    }
    assert_eq!(events.recv().await.unwrap().record.seq, 10, "then the oldest kept, in order");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_methods_cover_a_jobs_life() {
    let f = Fixture::new("typed");
    let node = f.start().await;
    let acct = id("org_typed");
    let key = |k: &str| IdemKey::new(k).unwrap();
    node.open_account(&acct, Mode::Prepaid, Currency::USD).await.unwrap();
    assert_eq!(node.check_access(&acct).await.unwrap_err().code(), "not_activated");
    node.purchase(&acct, &key("p"), amt("50"), None).await.unwrap();
    let reference = Some(Text::new("reference", "ft-job-9").unwrap());
    let held = node.hold(&acct, &key("h"), amt("40"), Service::FineTuning, reference, None).await.unwrap();
    let Detail::HoldPlaced { hold_id, .. } = held.detail else { panic!("{held:?}") };
    assert_eq!(
        node.debit(&acct, &key("d"), amt("11"), DebitMode::Strict, Service::ApiRequest, None).await.unwrap_err().code(),
        "insufficient_funds"
    );
    node.capture(&acct, &key("c"), hold_id, amt("32.5")).await.unwrap();
    node.grant(&acct, &key("g"), amt("2"), None, None).await.unwrap();
    node.adjust(&acct, &key("a"), amt("-0.5"), Text::new("reason", "rounding").unwrap()).await.unwrap();
    let view = node.balance(&acct).await.unwrap();
    assert_eq!((view.balance, view.free, view.purchased), (amt("19"), amt("1.5"), amt("17.5")));
    node.freeze(&acct, Text::new("reason", "review").unwrap()).await.unwrap();
    assert_eq!(node.check_access(&acct).await.unwrap_err().code(), "frozen");
    node.unfreeze(&acct, Text::new("reason", "ok").unwrap()).await.unwrap();
    node.set_auto_recharge(&acct, false, None, amt("5")).await.unwrap();
    node.close(&acct, Text::new("reason", "bye").unwrap()).await.unwrap();
    assert_eq!(node.check_access(&acct).await.unwrap_err().code(), "closed");
    let history = node.history(&acct, 0, 100).unwrap();
    assert_eq!(history.last().unwrap().event.name(), "closed");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_records_past_the_window_leave_the_store_too() {
    let f = Fixture::new("dedup-window");
    let node = f.start().await;
    node.execute(open("org_w")).await.unwrap();
    node.execute(purchase("org_w", "old-key", "10")).await.unwrap();
    f.clock.advance(NodeConfig::default().ledger.idempotency_window_ms);
    node.execute(purchase("org_w", "new-key", "10")).await.unwrap();
    node.shutdown().await;
    let store = RocksStore::open(&f.dir.0).unwrap();
    let (old, new) = (IdemKey::new("old-key").unwrap(), IdemKey::new("new-key").unwrap());
    // Until compaction the old record is still there, but no longer answers.
    // The old key was recorded at T0; the window has passed since.
    assert!(store.dedup(&id("org_w"), &old, T0 - 1).unwrap().is_some(), "still stored");
    assert!(store.dedup(&id("org_w"), &old, T0).unwrap().is_none(), "past the window");
    store.compact().unwrap();
    assert!(store.dedup(&id("org_w"), &old, 0).unwrap().is_none(), "compaction dropped the old record");
    assert!(store.dedup(&id("org_w"), &new, 0).unwrap().is_some(), "and kept the new one");
}

/// Idempotency in bounded memory: with the window full (the clock does not
/// move), an account keeps at most `idempotency_resident_keys` durable
/// records in memory; the rest are found in the store — in the log tail or
/// in tables, before and after a restart — and keys that grow per account
/// are never looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_memory_stays_bounded_while_the_window_is_full() {
    const CAP: usize = 4;
    const BATCH: usize = 50;
    const DEBITS: usize = 1_000;
    let f = Fixture::new("dedup-bounded");
    let mut cfg = config();
    cfg.node.idempotency_resident_keys = CAP;
    let store = Arc::new(RocksStore::open(&f.dir.0).unwrap());
    let start = |store: &Arc<RocksStore>, cfg: &NodeConfig| {
        let store: Arc<dyn Store> = store.clone();
        Node::start_with(cfg.clone(), store, Arc::new(f.clock.clone()), f.gateway.clone())
    };
    let node = start(&store, &cfg).await.unwrap();
    for name in ["org_down", "org_up"] {
        node.execute(open(name)).await.unwrap();
        node.execute(purchase(name, "buy", "1000")).await.unwrap();
    }
    let before = balance(&node, "org_up").await.balance;
    let after = before - amt("100");
    // Keys that fall (each below every key before it: a lookup each) and
    // keys that grow (never a lookup).
    fn down(i: usize) -> String {
        format!("k{:05}", 99_999 - i)
    }
    fn up(i: usize) -> String {
        format!("k{i:05}")
    }
    let key_of = |name: &str| -> fn(usize) -> String { if name == "org_down" { down } else { up } };
    let mut most_resident = 0;
    for name in ["org_down", "org_up"] {
        let key = key_of(name);
        let lookups_before = node.stats().idempotency_lookups;
        for batch in 0..DEBITS / BATCH {
            if batch == DEBITS / BATCH / 2 {
                // Half of them into tables, half left in the log tail.
                store.checkpoint().unwrap();
            }
            let reqs = (batch * BATCH..(batch + 1) * BATCH).map(|i| strict(name, &key(i), "0.1")).collect();
            for result in node.execute_batch(reqs).await.unwrap() {
                assert!(!result.unwrap().replayed);
            }
            most_resident = most_resident.max(node.stats().idempotency_resident);
        }
        let lookups = node.stats().idempotency_lookups - lookups_before;
        match name {
            // All but the first batch's: nothing was evicted before it.
            "org_down" => assert!(lookups >= (DEBITS - BATCH) as u64, "falling keys are looked up: {lookups}"),
            _ => assert_eq!(lookups, 0, "growing keys need no lookup"),
        }
    }
    // At most the cap per account plus the last batch, not yet durable when
    // its cell last ran, whatever the number of keys in the window.
    assert!(most_resident <= (2 * (CAP + BATCH)) as u64, "resident records: {most_resident}");
    node.execute(req("org_down", None, Command::Balance)).await.unwrap();
    node.execute(req("org_up", None, Command::Balance)).await.unwrap();
    assert!(node.stats().idempotency_resident <= 2 * CAP as u64, "settled: {}", node.stats().idempotency_resident);

    // An idle account's last batch goes down to the cap at the idle sweep
    // (half of idle_passivate_ms), before the account is passivated.
    let resident = node.resident_accounts();
    node.execute_batch((0..BATCH).map(|i| strict("org_up", &format!("k9{i:05}"), "0.1")).collect()).await.unwrap();
    assert!(node.stats().idempotency_resident > 2 * CAP as u64, "the batch is resident before the sweep");
    f.clock.advance(cfg.node.idle_passivate_ms / 2 + 1);
    assert!(
        eventually(500, || async { node.stats().idempotency_resident <= 2 * CAP as u64 }).await,
        "the idle sweep trimmed: {}",
        node.stats().idempotency_resident
    );
    assert_eq!(node.resident_accounts(), resident, "and passivated nothing");
    let after_up = after - amt("5");
    // Every key still has its first result, from wherever it is.
    let check = |node: Node| async move {
        for name in ["org_down", "org_up"] {
            let key = key_of(name);
            for i in [0, 1, DEBITS / 2, DEBITS - 1] {
                let again = node.execute(strict(name, &key(i), "0.1")).await.unwrap();
                assert!(again.replayed, "{name} {}: the first result again", key(i));
                let other = node.execute(strict(name, &key(i), "0.2")).await.unwrap_err();
                assert_eq!(other.code(), "idempotency_conflict", "{name} {}", key(i));
            }
            let expected = if name == "org_up" { after_up } else { after };
            assert_eq!(balance(&node, name).await.balance, expected, "{name}: nothing ran twice");
        }
        node
    };
    let node = check(node).await;
    node.shutdown().await;
    let node = check(start(&store, &cfg).await.unwrap()).await;
    // A new key below the largest is looked up, found nowhere, and runs.
    node.execute(strict("org_up", "k00000-new", "0.1")).await.unwrap();
    let last = after_up - amt("0.1");
    assert_eq!(balance(&node, "org_up").await.balance, last);
    node.shutdown().await;
    let journal = store.history(&id("org_up"), 0, u32::MAX).unwrap();
    let sum: Amount = journal.iter().map(|r| r.event.balance_delta()).sum();
    assert_eq!(sum, last, "ledger sum = balance");
}

/// The log and the checkpointer, on the store alone: groups written and the
/// store dropped without a checkpoint (as a crash would leave it) come back
/// whole from the log; checkpoints move them to tables and empty the log.
mod log_store {
    use super::*;
    use prepaid::store::{AccountWrite, Replacement, RocksOptions, WriteSet};

    /// Opens without the checkpoint a rebuilt tail gets at open, so a test
    /// can look at what the log replayed.
    fn open_quiet(dir: &Path) -> RocksStore {
        RocksStore::open_with(dir, RocksOptions { checkpoint_on_open: false, ..RocksOptions::default() }).unwrap()
    }

    /// Drives ledger accounts and makes the writes a node would.
    struct Accounts {
        accounts: HashMap<AccountId, Account>,
        cfg: LedgerConfig,
        now: u64,
    }

    impl Accounts {
        fn new() -> Accounts {
            Accounts { accounts: HashMap::new(), cfg: LedgerConfig::default(), now: T0 }
        }

        fn write(&mut self, reqs: &[Request]) -> WriteSet {
            let mut set = WriteSet::default();
            for r in reqs {
                let account = self.accounts.entry(r.account.clone()).or_default();
                let outcome = account.execute(r, self.now, &self.cfg);
                assert!(outcome.result.is_ok(), "{r:?}: {:?}", outcome.result);
                let dedup =
                    outcome.recorded.iter().map(|k| (k.clone(), account.dedup.get(k).unwrap().clone())).collect();
                set.accounts.push(AccountWrite {
                    id: r.account.clone(),
                    records: outcome.records,
                    snapshot: Arc::new(account.state.clone().unwrap()),
                    dedup,
                    timer_before: None,
                    timer_after: None,
                    in_flight_changed: false,
                });
            }
            set
        }

        /// Every account as the store holds it equals the ledger's memory.
        fn check(&self, store: &dyn Store) {
            for (id, account) in &self.accounts {
                let loaded = store.load(id).unwrap().unwrap();
                assert_eq!(&loaded.state, account.state.as_ref().unwrap(), "{id}: snapshot");
                let history = store.history(id, 0, u32::MAX).unwrap();
                let replayed = AccountState::from_records(id.clone(), &history).unwrap().unwrap();
                assert_eq!(&replayed, account.state.as_ref().unwrap(), "{id}: replay(history)");
                let seqs: Vec<u64> = history.iter().map(|r| r.seq).collect();
                assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{id}: history in order, once");
                // A page from the middle is the same slice.
                let page = store.history(id, 2, 3).unwrap();
                assert_eq!(page, history[2..history.len().min(5)], "{id}: a page from the middle");
                for (key, record) in account.dedup.iter() {
                    assert_eq!(
                        store.dedup(id, key, 0).unwrap().as_ref(),
                        Some(record),
                        "{id}: idempotency record {key}"
                    );
                }
                let largest = account.dedup.iter().map(|(k, _)| k).max();
                assert_eq!(loaded.dedup_max.as_ref(), largest, "{id}: the largest key");
            }
        }
    }

    /// Round 0 opens 20 accounts, round 1 funds them, later rounds debit.
    fn round_requests(round: u64) -> Vec<Request> {
        requests_for(round, 20)
    }

    fn requests_for(round: u64, accounts: usize) -> Vec<Request> {
        (0..accounts)
            .map(|i| {
                let name = format!("org_{i:02}");
                match round {
                    0 => open(&name),
                    1 => purchase(&name, "buy", "100"),
                    _ => strict(&name, &format!("d{round}"), "0.01"),
                }
            })
            .collect()
    }

    fn traffic(accounts: &mut Accounts, store: &RocksStore, rounds: u64, from: u64) {
        for round in from..from + rounds {
            let set = accounts.write(&round_requests(round));
            store.write(&set, round % 3 == 0).unwrap();
        }
    }

    /// The simulated disk restarts as the real store does: whatever point
    /// a crash cuts a checkpoint at (part of the way, before the log's
    /// truncation, an older checkpoint under a longer log), the log
    /// replayed over the tables gives back every synced group, once.
    #[test]
    fn the_simulated_disk_recovers_every_synced_group_whatever_the_checkpoint_cut() {
        use prepaid::store::{Faults, SimDisk};
        let mut cut = (0, 0, 0);
        for seed in 0..300 {
            let disk = SimDisk::new(seed, Faults { checkpoint: 150, ..Faults::default() });
            let mut accounts = Accounts::new();
            let mut store = disk.store();
            for round in 0..24 {
                let set = accounts.write(&requests_for(round, 6));
                store.write(&set, true).unwrap();
                if round % 8 == 7 {
                    assert_eq!(disk.crash(), (0, 0), "seed {seed}: everything was synced");
                    store = disk.store();
                    accounts.check(&store);
                }
            }
            accounts.check(&disk.durable());
            let stats = disk.stats();
            cut.0 += stats.interrupted_checkpoints.0;
            cut.1 += stats.interrupted_checkpoints.1;
            cut.2 += stats.interrupted_checkpoints.2;
        }
        assert!(cut.0 > 0 && cut.1 > 0 && cut.2 > 0, "every kind of cut happened: {cut:?}");
    }

    #[test]
    fn a_store_dropped_without_a_checkpoint_comes_back_whole_from_the_log() {
        let dir = tempdir::Dir::new("log-replay");
        let mut accounts = Accounts::new();
        {
            let store = open_quiet(&dir.0);
            traffic(&mut accounts, &store, 10, 0);
            assert!(store.log_tail_bytes() > 0, "the groups are in the log");
            accounts.check(&store);
        }
        let store = open_quiet(&dir.0);
        assert!(store.log_tail_bytes() > 0, "nothing was checkpointed: the tail comes from the log");
        accounts.check(&store);
        // A checkpoint in the middle, more groups, no checkpoint: both halves.
        store.checkpoint().unwrap();
        assert_eq!(store.log_tail_bytes(), 0, "a checkpoint covers the whole tail");
        accounts.check(&store);
        traffic(&mut accounts, &store, 10, 10);
        drop(store);
        let store = open_quiet(&dir.0);
        accounts.check(&store);
        store.checkpoint().unwrap();
        drop(store);
        let store = open_quiet(&dir.0);
        assert_eq!(store.log_tail_bytes(), 0, "after a checkpoint the log is empty");
        accounts.check(&store);
    }

    /// A clustered node installing a group's snapshot: everything stored
    /// for the group's shards — in tables, or only in the log and its tail
    /// — is replaced by the snapshot's accounts, the mark is written with
    /// them, other shards keep what they held, and a reopened store (which
    /// replays its log) agrees.
    #[test]
    fn replacing_a_groups_shards_drops_what_they_held_and_keeps_the_rest() {
        let dir = tempdir::Dir::new("replace-shards");
        let group = 0..128u32;
        let inside = |id: &AccountId| group.contains(&(id.shard(256) as u32));
        let mut old = Accounts::new();
        let store = open_quiet(&dir.0);
        traffic(&mut old, &store, 4, 0);
        store.checkpoint().unwrap();
        traffic(&mut old, &store, 4, 4);
        assert!(store.log_tail_bytes() > 0, "some of it only in the log");
        let (gone, kept): (Vec<AccountId>, Vec<AccountId>) = old.accounts.keys().cloned().partition(|id| inside(id));
        assert!(!gone.is_empty() && !kept.is_empty());
        let mut listed = store.accounts_in(group.clone(), 256).unwrap();
        listed.sort();
        let mut gone_sorted = gone.clone();
        gone_sorted.sort();
        assert_eq!(listed, gone_sorted, "the group's accounts, from tables and the tail");

        // The snapshot's accounts: others, of the same shards.
        let mut new = Accounts::new();
        let names: Vec<String> = (0..).map(|i| format!("new_{i}")).filter(|n| inside(&id(n))).take(5).collect();
        let mut set = WriteSet::default();
        for round in [0, 1, 2] {
            let reqs: Vec<Request> = names
                .iter()
                .map(|n| match round {
                    0 => open(n),
                    1 => purchase(n, "buy", "7"),
                    _ => strict(n, "d", "0.5"),
                })
                .collect();
            set.accounts.extend(new.write(&reqs).accounts);
        }
        // One write per account, its records from the first.
        let mut whole: HashMap<AccountId, AccountWrite> = HashMap::new();
        for w in set.accounts {
            match whole.get_mut(&w.id) {
                Some(earlier) => {
                    earlier.records.extend(w.records);
                    earlier.dedup.extend(w.dedup);
                    earlier.snapshot = w.snapshot;
                }
                None => {
                    whole.insert(w.id.clone(), w);
                }
            }
        }
        let outside = AccountWrite { id: kept[0].clone(), ..whole.values().next().unwrap().clone() };
        let replacement = |accounts: Vec<AccountWrite>, delivered: Vec<(AccountId, u64)>| Replacement {
            shards: group.clone(),
            total: 256,
            accounts,
            webhooks: true,
            delivered,
            raft_mark: (0, b"mark".to_vec()),
        };
        let refused = store.replace_shards(replacement(vec![outside], vec![]));
        assert!(refused.is_err(), "an account of another shard is refused");
        let (first, last) = (id(&names[0]), id(&names[1]));
        let refused = store.replace_shards(replacement(vec![], vec![(kept[0].clone(), 1)]));
        assert!(refused.is_err(), "a cursor of another shard is refused");
        store.replace_shards(replacement(whole.into_values().collect(), vec![(first.clone(), 2)])).unwrap();

        let check = |store: &RocksStore| {
            new.check(store);
            for id in &gone {
                assert_eq!(store.load(id).unwrap(), None, "{id} is gone");
                assert_eq!(store.history(id, 0, 100).unwrap(), vec![], "{id}'s journal is gone");
                assert_eq!(store.dedup_all(id).unwrap(), vec![], "{id}'s idempotency records are gone");
            }
            assert_eq!(store.raft_mark(0).unwrap(), Some(b"mark".to_vec()));
            // Webhook marks came with the accounts: written up to each
            // account's last record, delivered where the image said.
            let pending = store.webhook_pending().unwrap();
            let of = |id: &AccountId| pending.iter().find(|(a, _, _)| a == id).map(|(_, w, d)| (*w, *d));
            let written = store.load(&first).unwrap().unwrap().state.next_seq - 1;
            assert_eq!(of(&first), Some((written, 2)));
            assert_eq!(store.webhook_cursor(&last).unwrap(), 0);
            assert!(of(&last).is_some_and(|(w, d)| w > 0 && d == 0), "{pending:?}");
        };
        old.accounts.retain(|id, _| !inside(id));
        old.check(&store);
        check(&store);
        drop(store);
        let store = open_quiet(&dir.0);
        old.check(&store);
        check(&store);
    }

    #[test]
    fn a_tail_rebuilt_at_open_is_checkpointed_in_the_background() {
        let dir = tempdir::Dir::new("log-open-ckpt");
        let mut accounts = Accounts::new();
        {
            let store = open_quiet(&dir.0);
            traffic(&mut accounts, &store, 6, 0);
        }
        // A crash loop must not replay a longer log at every start.
        let store = RocksStore::open(&dir.0).unwrap();
        accounts.check(&store);
        let mut tries = 0;
        while store.log_tail_bytes() > 0 && tries < 1_000 {
            std::thread::sleep(Duration::from_millis(10));
            tries += 1;
        }
        assert_eq!(store.log_tail_bytes(), 0, "checkpointed after open");
        accounts.check(&store);
        drop(store);
        assert_eq!(open_quiet(&dir.0).log_tail_bytes(), 0, "and the log is gone on disk");
    }

    #[test]
    fn the_log_tail_stays_within_its_bound_and_checkpoints_keep_up() {
        let dir = tempdir::Dir::new("log-bound");
        let max = 1 << 20;
        let opts = RocksOptions { checkpoint_log_bytes_max: max, ..RocksOptions::default() };
        let store = RocksStore::open_with(&dir.0, opts.clone()).unwrap();
        let mut accounts = Accounts::new();
        let mut most = 0;
        for round in 0..3_000 {
            traffic(&mut accounts, &store, 1, round);
            most = most.max(store.log_tail_bytes());
        }
        assert!(most <= max + 64 * 1024, "the tail reached {most} bytes, bound {max}");
        accounts.check(&store);
        drop(store);
        let store = RocksStore::open_with(&dir.0, opts).unwrap();
        assert!(store.log_tail_bytes() <= max + 64 * 1024);
        accounts.check(&store);
    }

    /// The newest RocksDB write-ahead log file in `dir`.
    fn wal(dir: &Path) -> std::path::PathBuf {
        let mut logs: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        logs.pop().expect("a write-ahead log")
    }

    /// What a crash at this moment leaves on disk: a copy of every file,
    /// with the write-ahead log cut to `wal_len` bytes (a torn or lost
    /// suffix). Returns the copy's directory.
    fn crash_image(dir: &Path, name: &str, wal_len: impl FnOnce(u64) -> u64) -> tempdir::Dir {
        let image = tempdir::Dir::new(name);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, image.0.join(path.file_name().unwrap())).unwrap();
        }
        let log = image.0.join(wal(dir).file_name().unwrap());
        let len = std::fs::metadata(&log).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(wal_len(len)).unwrap();
        image
    }

    /// Each account in `store` is whole (snapshot = replay of history) and
    /// holds at least the records of `acknowledged` (last seq per account).
    fn holds_at_least(store: &RocksStore, acknowledged: &HashMap<AccountId, u64>) {
        for (id, &seq) in acknowledged {
            let loaded = store.load(id).unwrap().expect("an acknowledged account");
            let history = store.history(id, 0, u32::MAX).unwrap();
            assert!(history.len() as u64 >= seq, "{id}: {} records, {seq} acknowledged", history.len());
            let replayed = AccountState::from_records(id.clone(), &history).unwrap().unwrap();
            assert_eq!(replayed, loaded.state, "{id}: replay(history) = snapshot");
            let sum: Amount = history.iter().map(|r| r.event.balance_delta()).sum();
            assert_eq!(sum, loaded.state.balance(), "{id}: ledger sum = balance");
        }
    }

    fn last_seqs(accounts: &Accounts) -> HashMap<AccountId, u64> {
        accounts.accounts.iter().map(|(id, a)| (id.clone(), a.state.as_ref().unwrap().next_seq - 1)).collect()
    }

    #[test]
    fn a_torn_or_lost_log_suffix_loses_only_what_was_not_synced() {
        let dir = tempdir::Dir::new("log-torn");
        let store = RocksStore::open(&dir.0).unwrap();
        let mut accounts = Accounts::new();
        for round in 0..6 {
            let set = accounts.write(&round_requests(round));
            store.write(&set, true).unwrap();
        }
        let acknowledged = last_seqs(&accounts);
        let synced_len = std::fs::metadata(wal(&dir.0)).unwrap().len();
        for round in 6..9 {
            let set = accounts.write(&round_requests(round));
            store.write(&set, false).unwrap();
        }
        // A torn last entry, a lost unsynced suffix cut inside a record, and
        // the whole unsynced suffix lost.
        for (name, cut) in [("log-torn-a", 100u64), ("log-torn-b", 0), ("log-torn-c", u64::MAX)] {
            let image = crash_image(&dir.0, name, |len| match cut {
                0 => synced_len + (len - synced_len) / 2,
                u64::MAX => synced_len,
                n => len - n,
            });
            let recovered = RocksStore::open(&image.0).unwrap();
            holds_at_least(&recovered, &acknowledged);
            if cut == u64::MAX {
                let id = acknowledged.keys().next().unwrap();
                let kept = recovered.history(id, 0, u32::MAX).unwrap().len() as u64;
                assert_eq!(kept, acknowledged[id], "the cut removed exactly the unsynced groups");
            }
        }
        // Nothing cut: everything written is there.
        accounts.check(&store);
    }

    #[test]
    fn a_crash_during_a_checkpoint_leaves_the_log_to_replay() {
        let dir = tempdir::Dir::new("log-ckpt-crash");
        let store = open_quiet(&dir.0);
        let mut accounts = Accounts::new();
        traffic(&mut accounts, &store, 8, 0);
        store.sync().unwrap();
        let before = std::fs::metadata(wal(&dir.0)).unwrap().len();
        store.checkpoint().unwrap();
        store.sync().unwrap();
        let after = std::fs::metadata(wal(&dir.0)).unwrap().len();
        assert!(after > before, "the checkpoint is one write in the log");
        let image = crash_image(&dir.0, "log-ckpt-crash-image", |_| before + (after - before) / 2);
        let recovered = open_quiet(&image.0);
        assert!(recovered.log_tail_bytes() > 0, "the torn checkpoint deleted nothing: the log replays");
        accounts.check(&recovered);
        drop(recovered);
        let image = crash_image(&dir.0, "log-ckpt-crash-whole", |len| len);
        let recovered = RocksStore::open(&image.0).unwrap();
        assert_eq!(recovered.log_tail_bytes(), 0, "the whole checkpoint landed: the log is gone");
        accounts.check(&recovered);
    }

    #[test]
    fn a_crash_between_the_writes_of_a_large_checkpoint_applies_nothing_twice() {
        let dir = tempdir::Dir::new("log-ckpt-chunks");
        let store = open_quiet(&dir.0);
        let mut accounts = Accounts::new();
        // Enough accounts that the checkpoint takes several writes.
        for round in 0..3 {
            store.write(&accounts.write(&requests_for(round, 4_000)), true).unwrap();
        }
        let before = std::fs::metadata(wal(&dir.0)).unwrap().len();
        store.checkpoint().unwrap();
        store.sync().unwrap();
        let after = std::fs::metadata(wal(&dir.0)).unwrap().len();
        for (i, part) in [1u64, 3, 5, 7, 9].into_iter().enumerate() {
            let cut = before + (after - before) * part / 10;
            let image = crash_image(&dir.0, &format!("log-ckpt-chunks-{i}"), |_| cut);
            let recovered = open_quiet(&image.0);
            assert!(recovered.log_tail_bytes() > 0, "cut at {part}/10: the log's deletion is in the last write");
            accounts.check(&recovered);
        }
    }

    #[test]
    fn log_entries_already_in_tables_are_not_applied_twice() {
        let dir = tempdir::Dir::new("log-twice");
        let mut accounts = Accounts::new();
        {
            let store = open_quiet(&dir.0);
            traffic(&mut accounts, &store, 8, 0);
        }
        let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), &dir.0).unwrap();
        type Pair = (Box<[u8]>, Box<[u8]>);
        let saved: Vec<Pair> = {
            let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &dir.0, &names).unwrap();
            let log = db.cf_handle("log").unwrap();
            db.iterator_cf(log, rocksdb::IteratorMode::Start).map(|kv| kv.unwrap()).collect()
        };
        assert!(!saved.is_empty());
        {
            let store = open_quiet(&dir.0);
            store.checkpoint().unwrap();
            assert_eq!(store.log_tail_bytes(), 0);
        }
        // A checkpoint older than the log: the covered entries come back.
        {
            let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &dir.0, &names).unwrap();
            let log = db.cf_handle("log").unwrap();
            for (k, v) in &saved {
                db.put_cf(log, k, v).unwrap();
            }
        }
        let store = open_quiet(&dir.0);
        assert!(store.log_tail_bytes() > 0);
        accounts.check(&store);
        traffic(&mut accounts, &store, 4, 8);
        store.checkpoint().unwrap();
        drop(store);
        accounts.check(&open_quiet(&dir.0));
    }

    #[test]
    fn a_data_dir_keeps_the_shard_count_it_was_made_with() {
        let dir = tempdir::Dir::new("log-shards");
        let mut accounts = Accounts::new();
        {
            let store =
                RocksStore::open_with(&dir.0, RocksOptions { shards: Some(3), ..RocksOptions::default() }).unwrap();
            traffic(&mut accounts, &store, 6, 0);
        }
        // Every key starts with its shard: another count would misplace
        // every account, so the store refuses to open, and says why.
        let refused = RocksStore::open_with(&dir.0, RocksOptions { shards: Some(7), ..RocksOptions::default() });
        let message = refused.err().expect("another shard count is refused").to_string();
        assert!(message.contains("made with 3 shards") && message.contains("node.shards is 7"), "{message}");
        let store = RocksStore::open_with(&dir.0, RocksOptions { shards: Some(3), ..RocksOptions::default() }).unwrap();
        accounts.check(&store);
        traffic(&mut accounts, &store, 6, 6);
        accounts.check(&store);
    }
}

/// The read side a billing page needs: a statement (usage by service over a
/// range, the balance at instants), pages of open holds and grants, and
/// accounts by prefix and status; every bound answered at and past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_side_answers_statements_items_and_account_pages_within_bounds() {
    let f = Fixture::new("reads");
    let mut cfg = config();
    cfg.node.statement_records_max = 50;
    let node = f.start_with(cfg).await;
    const HOUR: u64 = 3_600_000;
    for a in ["acme-1", "acme-2", "beta-1"] {
        node.execute(open(a)).await.unwrap();
    }
    node.execute(purchase("acme-1", "p1", "50")).await.unwrap(); // T0
    node.execute(purchase("acme-2", "p1", "5")).await.unwrap();
    f.clock.advance(HOUR);
    node.execute(strict("acme-1", "d1", "3")).await.unwrap(); // T0 + 1h
    let hold = |key: &str, a: &str, service: Service| {
        req(
            "acme-1",
            Some(key),
            Command::Hold { amount: amt(a), service, reference: None, timeout_ms: Some(10 * HOUR) },
        )
    };
    node.execute(hold("h1", "2", Service::DedicatedEndpoint)).await.unwrap();
    node.execute(hold("h2", "1", Service::FineTuning)).await.unwrap();
    f.clock.advance(HOUR);
    let fine =
        Command::Debit { amount: amt("4"), mode: DebitMode::Metered, service: Service::FineTuning, reference: None };
    node.execute(req("acme-1", Some("d2"), fine)).await.unwrap(); // T0 + 2h
    let free =
        Command::Grant { amount: amt("7"), expires_at_ms: Some(T0 + 100 * HOUR), priority: None, reference: None };
    node.execute(req("acme-1", Some("g1"), free)).await.unwrap();

    // Usage over the second hour only, and the balance on the hour.
    let acme = id("acme-1");
    let st = node.statement(&acme, T0 + HOUR, T0 + 3 * HOUR, 2).unwrap();
    assert_eq!(st.usage.by_service, vec![(Service::ApiRequest, amt("3")), (Service::FineTuning, amt("4"))]);
    assert_eq!(st.usage.total, amt("7"));
    assert_eq!(st.series, vec![(T0 + HOUR, amt("47")), (T0 + 2 * HOUR, amt("50"))], "47 - 4 + 7 at the second hour");
    let whole = node.statement(&acme, T0 - HOUR, T0 + 3 * HOUR, 4).unwrap();
    assert_eq!(whole.series[0], (T0 - HOUR, Amount::ZERO), "before it opened");
    assert_eq!(whole.series[1], (T0, amt("50")));
    // Bounds: points 1..=1000, from before to, the records read.
    for (from, to, points) in [(T0, T0, 1), (T0 + 1, T0, 1), (T0, T0 + 1, 0), (T0, T0 + 1, 1_001)] {
        let e = node.statement(&acme, from, to, points).unwrap_err();
        assert_eq!(e.code(), "invalid_request", "{from} {to} {points}: {e}");
    }
    assert!(node.statement(&acme, T0, T0 + 1, 1_000).is_ok());
    // More records before to_ms than node.statement_records_max (50): refused.
    for n in 0..50 {
        node.execute(strict("acme-2", &format!("small-{n}"), "0.01")).await.unwrap();
    }
    let e = node.statement(&id("acme-2"), T0, T0 + 10 * HOUR, 1).unwrap_err();
    assert!(e.to_string().contains("node.statement_records_max"), "{e}");

    // Holds, by id, a page at a time.
    let first = node.items(&acme, reads::ItemKind::Holds, 0, 1).unwrap();
    assert_eq!(first.holds.len(), 1);
    assert_eq!((first.holds[0].amount, first.holds[0].service), (amt("2"), Service::DedicatedEndpoint));
    let next = first.next_after.expect("another page");
    let second = node.items(&acme, reads::ItemKind::Holds, next, 1).unwrap();
    assert_eq!((second.holds.len(), second.holds[0].amount, second.next_after), (1, amt("1"), None));
    let grants = node.items(&acme, reads::ItemKind::Grants, 0, 1_000).unwrap();
    assert_eq!(grants.grants.iter().map(|g| (g.source, g.remaining)).collect::<Vec<_>>().len(), 2);
    assert!(grants.grants.iter().any(|g| g.source == GrantSource::Free && g.expires_at_ms == Some(T0 + 100 * HOUR)));
    assert!(node.items(&acme, reads::ItemKind::Invoices, 0, 10).unwrap().invoices.is_empty());
    for limit in [0, 1_001] {
        assert_eq!(node.items(&acme, reads::ItemKind::Holds, 0, limit).unwrap_err().code(), "invalid_page");
    }
    assert_eq!(node.items(&id("nobody"), reads::ItemKind::Holds, 0, 10).unwrap_err().code(), "unknown_account");

    // Accounts: by prefix, by status, a page at a time.
    let all = node.accounts("", None, None, 10).unwrap();
    let names: Vec<&str> = all.accounts.iter().map(|l| l.account.as_str()).collect();
    assert_eq!((names, all.next_after), (vec!["acme-1", "acme-2", "beta-1"], None));
    let acme_page = node.accounts("acme", None, None, 1).unwrap();
    assert_eq!(acme_page.accounts[0].account.as_str(), "acme-1");
    let rest = node.accounts("acme", None, acme_page.next_after.as_ref(), 1).unwrap();
    assert_eq!(rest.accounts.iter().map(|l| l.account.as_str()).collect::<Vec<_>>(), vec!["acme-2"]);
    let inactive = node.accounts("", Some(Status::Inactive), None, 10).unwrap();
    assert_eq!(inactive.accounts.iter().map(|l| l.account.as_str()).collect::<Vec<_>>(), vec!["beta-1"]);
    assert_eq!(node.accounts("", None, None, 0).unwrap_err().code(), "invalid_page");
    assert!(node.accounts(&"a".repeat(128), None, None, 1).is_ok());
    assert_eq!(node.accounts(&"a".repeat(129), None, None, 1).unwrap_err().code(), "invalid_request");
    node.shutdown().await;
}
