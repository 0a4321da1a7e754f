//! The node's costs: an actor round trip, and group commit to RocksDB.
//!
//! Run: `cargo bench --bench node`. Figures go in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use prepaid::ledger::*;
use prepaid::store::{AccountWrite, MemoryStore, RocksStore, Store, WriteSet};
use prepaid::{ManualClock, Node, NodeConfig, SimulatedGateway};

const T0: u64 = 1_767_225_600_000;

fn request(id: &AccountId, key: Option<&str>, command: Command) -> Request {
    Request { account: id.clone(), key: key.map(|k| IdemKey::new(k).unwrap()), command }
}

fn open() -> Command {
    Command::Open { mode: Mode::Prepaid, currency: Currency::USD, past_due_suspends: None, credit_limit: None }
}

fn actor_round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let node = rt.block_on(async {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::at(T0));
        Node::start_with(NodeConfig::default(), store, clock, Arc::new(SimulatedGateway::new())).await.unwrap()
    });
    let id = AccountId::new("org_bench").unwrap();
    rt.block_on(node.execute(request(&id, None, open()))).unwrap();
    let check = request(&id, None, Command::CheckAccess);
    c.bench_function("node/actor_round_trip_check_access", |b| {
        b.iter(|| black_box(rt.block_on(node.execute(check.clone()))).ok())
    });
    rt.block_on(node.shutdown());
}

/// A group of `n` accounts, one debit each, written with one sync.
fn group(n: usize, round: u64) -> WriteSet {
    let cfg = LedgerConfig::default();
    let mut set = WriteSet::default();
    for i in 0..n {
        let id = AccountId::new(&format!("org_{i:05}")).unwrap();
        let mut account = Account::default();
        account.execute(&request(&id, None, open()), T0, &cfg);
        account.execute(
            &request(&id, Some("buy"), Command::Purchase { amount: Amount::whole(100), reference: None }),
            T0,
            &cfg,
        );
        let debit = Command::Debit {
            amount: Amount::cents(1),
            mode: DebitMode::Strict,
            service: Service::ApiRequest,
            reference: None,
        };
        let outcome = account.execute(&request(&id, Some(&format!("d{round}")), debit), T0, &cfg);
        let key = outcome.recorded.clone().unwrap();
        set.accounts.push(AccountWrite {
            id,
            records: outcome.records,
            snapshot: std::sync::Arc::new(account.state.clone().unwrap()),
            dedup: vec![(key.clone(), account.dedup.get(&key).unwrap().clone())],
            timer_before: None,
            timer_after: None,
            in_flight_changed: false,
        });
    }
    set
}

fn group_commit(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("prepaid-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = RocksStore::open(&dir).unwrap();
    let mut g = c.benchmark_group("group_commit_sync");
    for n in [1usize, 64, 4096] {
        let set = group(n, 0);
        g.throughput(criterion::Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &set, |b, set| b.iter(|| store.write(set, true).unwrap()));
    }
    g.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(node, actor_round_trip, group_commit);
criterion_main!(node);
