//! Seeded fault simulation: a real `Node` (shards, actors, the journal
//! writer, the recharge worker) on a simulated disk that fails writes and
//! syncs, syncs slowly and loses power, with a manual clock and a payment
//! gateway that declines, times out, is unavailable and answers late. A
//! driver runs a seeded workload against it — purchases, free grants that
//! expire, strict and metered debits, holds that are captured, released or
//! left to expire, auto-recharge — resends every request whose outcome it
//! did not learn under the same idempotency key, and at the end the auditor
//! (`prepaid::audit`) checks every account's journal and state against what
//! the driver was told, and the gateway's charges against the ledgers'
//! credits: no acknowledged operation lost, nothing applied twice,
//! conservation exact, no recharge charged twice, holds and grants expired
//! exactly once.
//!
//! `PREPAID_SIM_SEEDS=N` runs seeds 1..=N (300 by default);
//! `PREPAID_SEED=S` runs seed S alone, to reproduce a failure. The seed
//! fixes the workload, the disk's fault schedule (per call), its crash
//! points (the log's unsynced suffix, a torn last entry, checkpoints cut
//! off) and the gateway's answers (per key and call). The node is started
//! for the simulation (`Node::start_simulated`: the journal writer and
//! account reads are tasks, hash maps have a fixed seed) on a current-thread
//! runtime with paused time, so nothing is left to the operating system:
//! a seed replays its run exactly, which a test checks byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prepaid::audit::{Auditor, Told, recharges_match};
use prepaid::clock::Clock;
use prepaid::config::Durability;
use prepaid::gateway::{ChargeFuture, ChargeOutcome, ChargeRequest, GatewayUnavailable, PaymentGateway};
use prepaid::ledger::hash::stable_hash;
use prepaid::ledger::*;
use prepaid::store::{Faults, SimDisk, Store};
use prepaid::{Error, ManualClock, Node, NodeConfig};

#[path = "sim/cluster.rs"]
mod cluster;

const T0: u64 = 1_800_000_000_000;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn cents(&mut self, lo: i64, hi: i64) -> Amount {
        Amount::cents(lo + self.below((hi - lo) as u64 + 1) as i64)
    }
}

/// A gateway with a seeded temper. Idempotent by key like a real one: once
/// a key is charged, every later call for it answers `Charged`.
struct SimGateway {
    seed: u64,
    state: Mutex<GatewayState>,
}

#[derive(Default)]
struct GatewayState {
    calls: BTreeMap<String, u64>,
    charged: BTreeSet<String>,
    declined: BTreeSet<String>,
    /// Every charge made, in order (a key twice would be a double charge).
    charges: Vec<String>,
}

impl PaymentGateway for SimGateway {
    fn charge(&self, request: ChargeRequest) -> ChargeFuture {
        let key = request.idempotency_key;
        let mut s = self.state.lock().unwrap();
        let n = s.calls.entry(key.clone()).or_default();
        *n += 1;
        let roll = mix(self.seed ^ stable_hash(key.as_bytes()) ^ mix(*n)) % 100;
        let (answer, delay_ms): (Result<ChargeOutcome, GatewayUnavailable>, u64) = if s.charged.contains(&key) {
            (Ok(ChargeOutcome::Charged), 0)
        } else if s.declined.contains(&key) {
            (Ok(ChargeOutcome::Declined("card_declined".into())), 0)
        } else if roll < 15 {
            s.declined.insert(key.clone());
            (Ok(ChargeOutcome::Declined("card_declined".into())), 0)
        } else if roll < 30 {
            // Down: not charged, no answer.
            (Err(GatewayUnavailable("simulated: gateway down".into())), 0)
        } else {
            s.charged.insert(key.clone());
            s.charges.push(key.clone());
            // Charged; answered at once, late, or after the node stopped
            // waiting (the node must ask again with the same key).
            let delay = if roll < 45 {
                60
            } else if roll < 60 {
                5
            } else {
                0
            };
            (Ok(ChargeOutcome::Charged), delay)
        };
        Box::pin(async move {
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            answer
        })
    }
}

fn config(durability: Durability) -> NodeConfig {
    let mut cfg = NodeConfig::default();
    cfg.node.shards = 4;
    cfg.node.durability = durability;
    cfg.node.flush_interval_ms = 2;
    cfg.node.storage_retry_ms = 2;
    // The driver settles deadlines with ticks of its own, at set points.
    cfg.node.timer_poll_ms = 3_600_000;
    cfg.node.recharge_charge_timeout_ms = 30;
    cfg.node.recharge_retry_unknown_ms = 3;
    cfg.ledger.recharge_backoff_base_ms = 1_000;
    cfg.ledger.recharge_backoff_max_ms = 10_000;
    cfg
}

/// A request the driver has sent and must learn the outcome of.
#[derive(Clone)]
struct Sent {
    req: Request,
    reference: Option<String>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    disk: Arc<SimDisk>,
    clock: ManualClock,
    gateway: Arc<SimGateway>,
    durability: Durability,
    node: Option<Node>,
    /// Cluster mode: three clustered nodes instead of `node` (`disk` is
    /// then unused).
    cluster: Option<cluster::Cluster>,
    auditor: Auditor,
    accounts: Vec<AccountId>,
    holds: Vec<(AccountId, u64)>,
    /// Outcome not learned yet: resent until it is.
    unknown: Vec<Sent>,
    /// References sent more than once (their later answers say nothing of
    /// their first try).
    resent: BTreeSet<String>,
    n: u64,
    report: Report,
    /// Every request and what came back, every crash, in order: what a
    /// rerun of the seed must reproduce byte for byte.
    trace: String,
}

#[derive(Default, Debug)]
struct Report {
    requests: u64,
    applied: u64,
    refused: u64,
    unavailable: u64,
    crashes: u64,
    /// References the driver was told were applied (each told so once).
    told_applied: usize,
    /// Cluster mode: the faults the cluster went through.
    cluster: Option<cluster::Faults>,
    /// Cluster mode: first tries answered "nothing applied", held to it.
    not_applied: u64,
}

impl Sim {
    async fn start(&mut self) {
        let node = Node::start_simulated(
            config(self.durability),
            Arc::new(self.disk.store()),
            Arc::new(self.clock.clone()),
            self.gateway.clone(),
        )
        .await
        .unwrap();
        self.node = Some(node);
    }

    fn node(&self) -> &Node {
        match &self.cluster {
            Some(c) => c.entry(),
            None => self.node.as_ref().unwrap(),
        }
    }

    /// Executes `req` where a client would: the node, or in cluster mode
    /// any node, then the leader a `wrong_node` names.
    async fn routed(&self, req: Request) -> Result<Reply, Error> {
        let mut result = self.node().execute(req.clone()).await;
        if let Some(c) = &self.cluster {
            for _ in 0..3 {
                let Err(Error::WrongNode { leader: Some(leader), .. }) = &result else { break };
                let Some(node) = c.node(*leader) else { break };
                result = node.execute(req.clone()).await;
            }
        }
        result
    }

    fn key(&mut self) -> IdemKey {
        self.n += 1;
        IdemKey::new(&format!("s{}-{}", self.seed, self.n)).unwrap()
    }

    /// Sends, and tells the auditor what came back. `Unknown` outcomes are
    /// kept for resending.
    async fn send(&mut self, sent: Sent) -> Option<Reply> {
        self.report.requests += 1;
        let result = self.routed(sent.req.clone()).await;
        self.learn(sent, result)
    }

    fn learn(&mut self, sent: Sent, result: Result<Reply, Error>) -> Option<Reply> {
        use std::fmt::Write;
        let _ = writeln!(self.trace, "{:?} -> {:?}", sent.req, result);
        let money_in = sent.req.command.is_money_in();
        // A cluster's `shard_unavailable` and `wrong_node` say nothing was
        // applied: on a first try (a resend's says nothing of the first
        // try) the auditor holds them to it, as to a refusal, and the
        // request is not sent again.
        let first_try = sent.reference.as_ref().is_some_and(|r| !self.resent.contains(r));
        let not_applied = self.cluster.is_some()
            && first_try
            && matches!(result, Err(Error::ShardUnavailable(_) | Error::WrongNode { .. }));
        let told = match &result {
            _ if not_applied => Told::Refused,
            // In `async` mode usage is acknowledged before it is durable
            // (the documented window): a crash may lose it, so it counts as
            // unknown there; money in is synced first in both modes.
            Ok(_) if self.durability == Durability::Async && !money_in => Told::Unknown,
            Ok(reply) => Told::Applied { balance: reply.balance },
            Err(Error::Refused(_)) => Told::Refused,
            Err(_) => Told::Unknown,
        };
        match &result {
            Ok(_) => self.report.applied += 1,
            Err(Error::Refused(_)) => self.report.refused += 1,
            Err(_) => self.report.unavailable += 1,
        }
        if let Some(reference) = &sent.reference {
            self.report.told_applied += usize::from(matches!(told, Told::Applied { .. }));
            self.auditor.told(&sent.req.account, reference, told);
        }
        if not_applied {
            self.report.not_applied += 1;
        } else if result.as_ref().is_err_and(|e| !matches!(e, Error::Refused(_))) {
            if let Some(reference) = &sent.reference {
                self.resent.insert(reference.clone());
            }
            self.unknown.push(sent);
        }
        result.ok()
    }

    fn referenced(&mut self, account: &AccountId, prefix: &str, command: impl FnOnce(Text) -> Command) -> Sent {
        let key = self.key();
        let reference = format!("{prefix}-{}", key.as_str());
        let command = command(Text::new("reference", &reference).unwrap());
        Sent { req: Request { account: account.clone(), key: Some(key), command }, reference: Some(reference) }
    }

    async fn step(&mut self) {
        if let Some(c) = &mut self.cluster {
            c.observe();
        }
        let account = self.accounts[self.rng.below(self.accounts.len() as u64) as usize].clone();
        match self.rng.below(100) {
            0..=11 => {
                let amount = self.rng.cents(500, 6_000);
                let sent = self.referenced(&account, "buy", |r| Command::Purchase { amount, reference: Some(r) });
                self.send(sent).await;
            }
            12..=19 => {
                let amount = self.rng.cents(100, 2_000);
                let expires = self.clock.now_ms() + 1 + self.rng.below(600_000);
                let sent = self.referenced(&account, "free", |r| Command::Grant {
                    amount,
                    expires_at_ms: Some(expires),
                    priority: None,
                    reference: Some(r),
                });
                self.send(sent).await;
            }
            20..=44 => {
                let amount = self.rng.cents(1, 1_500);
                let mode = if self.rng.below(4) == 0 { DebitMode::Metered } else { DebitMode::Strict };
                let sent = self.referenced(&account, "use", |r| Command::Debit {
                    amount,
                    mode,
                    service: Service::ApiRequest,
                    reference: Some(r),
                });
                self.send(sent).await;
            }
            45..=56 => {
                let amount = self.rng.cents(100, 2_000);
                let timeout = 1 + self.rng.below(300_000);
                let sent = self.referenced(&account, "hold", |r| Command::Hold {
                    amount,
                    service: Service::FineTuning,
                    reference: Some(r),
                    timeout_ms: Some(timeout),
                });
                if let Some(Reply { detail: Detail::HoldPlaced { hold_id, .. }, .. }) = self.send(sent).await {
                    self.holds.push((account, hold_id));
                }
            }
            57..=66 if !self.holds.is_empty() => {
                let (account, hold_id) = self.holds.swap_remove(self.rng.below(self.holds.len() as u64) as usize);
                let command = if self.rng.below(3) == 0 {
                    Command::Release { hold_id }
                } else {
                    Command::Capture { hold_id, amount: self.rng.cents(1, 2_500) }
                };
                let key = self.key();
                self.send(Sent { req: Request { account, key: Some(key), command }, reference: None }).await;
            }
            67..=72 => {
                let enabled = self.rng.below(5) != 0;
                let amount = Some(self.rng.cents(1_000, 5_000));
                let threshold = self.rng.cents(0, 3_000);
                let command = Command::SetAutoRecharge { enabled, amount, threshold };
                let key = self.key();
                self.send(Sent { req: Request { account, key: Some(key), command }, reference: None }).await;
            }
            73..=82 => self.clock.advance(self.rng.below(120_000)),
            83..=89 => self.tick_all().await,
            90..=93 => self.resend().await,
            94..=95 | 98..=99 if self.cluster.is_some() => {
                let (roll, pick) = (self.rng.next(), self.rng.next());
                let c = self.cluster.as_mut().unwrap();
                c.fault(roll, pick, &mut self.trace).await;
            }
            94..=95 => self.crash().await,
            96..=97 => self.burst().await,
            _ => {
                // Let the recharge worker and late gateway answers land.
                tokio::time::sleep(Duration::from_millis(self.rng.below(8))).await;
            }
        }
    }

    /// What the node's timers would do: a tick to every account.
    async fn tick_all(&mut self) {
        for account in self.accounts.clone() {
            let req = Request { account, key: None, command: Command::Tick };
            // A node alone always takes it; a cluster's group may be
            // between leaders for a moment: again until one does.
            for _ in 0..100 {
                let result = self.routed(req.clone()).await;
                if std::env::var("PREPAID_TRACE").is_ok() {
                    self.trace.push_str(&format!(
                        "tick {:?} -> {:?}\n",
                        req.account,
                        result.as_ref().map(|r| r.balance)
                    ));
                }
                match result {
                    Err(e) if self.cluster.is_some() && !matches!(e, Error::Refused(_)) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    _ => break,
                }
            }
        }
    }

    /// Every request whose outcome is unknown, again, with its key.
    async fn resend(&mut self) {
        for sent in std::mem::take(&mut self.unknown) {
            self.send(sent).await;
        }
    }

    /// Several requests at once, with the power cut while they are in
    /// flight (or not, at random).
    async fn burst(&mut self) {
        let mut batch = Vec::new();
        for _ in 0..(2 + self.rng.below(12)) {
            let account = self.accounts[self.rng.below(self.accounts.len() as u64) as usize].clone();
            let amount = self.rng.cents(1, 800);
            batch.push(self.referenced(&account, "burst", |r| Command::Debit {
                amount,
                mode: DebitMode::Strict,
                service: Service::DedicatedEndpoint,
                reference: Some(r),
            }));
        }
        let crash_after = (self.rng.below(2) == 0).then(|| self.rng.below(3));
        let reqs: Vec<Request> = batch.iter().map(|s| s.req.clone()).collect();
        self.report.requests += reqs.len() as u64;
        if self.cluster.is_some() {
            // The cluster's faults are its own (`Cluster::fault`).
            let results = self.node().execute_batch(reqs).await.unwrap();
            for (sent, result) in batch.into_iter().zip(results) {
                self.learn(sent, result);
            }
            return;
        }
        let node = self.node.take().unwrap();
        let results = {
            let call = node.execute_batch(reqs);
            tokio::pin!(call);
            match crash_after {
                None => call.await.unwrap(),
                Some(yields) => {
                    let mut out = None;
                    for _ in 0..yields {
                        tokio::select! {
                            biased;
                            r = &mut call => { out = Some(r.unwrap()); break; }
                            _ = tokio::task::yield_now() => {}
                        }
                    }
                    // Power cut: what had not been answered is unknown.
                    let (kept, lost) = self.disk.crash();
                    self.trace.push_str(&format!("crash in a burst: {kept} kept, {lost} lost\n"));
                    self.report.crashes += 1;
                    match out {
                        Some(r) => r,
                        None => call.await.unwrap(),
                    }
                }
            }
        };
        self.node = Some(node);
        for (sent, result) in batch.into_iter().zip(results) {
            self.learn(sent, result);
        }
        if crash_after.is_some() {
            self.restart().await;
        }
    }

    async fn crash(&mut self) {
        let (kept, lost) = self.disk.crash();
        self.trace.push_str(&format!("crash: {kept} kept, {lost} lost\n"));
        self.report.crashes += 1;
        self.restart().await;
    }

    /// The crashed node's handle is dead; stop what is left of it and start
    /// a new node on what survived.
    async fn restart(&mut self) {
        if let Some(old) = self.node.take() {
            old.shutdown().await;
        }
        self.start().await;
    }

    /// Faults off; resend until every outcome is known; pass every
    /// deadline and settle; let every recharge finish.
    async fn finish(&mut self) {
        self.disk.set_faults(Faults::default());
        if let Some(c) = &mut self.cluster {
            c.heal().await;
        }
        for _ in 0..2_000 {
            self.resend().await;
            if self.unknown.is_empty() && self.node().storage_failure().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(self.unknown.is_empty(), "seed {}: outcomes still unknown after faults stopped", self.seed);
        // Past every hold timeout, grant expiry and recharge retry. The
        // recharge worker and the simulated gateway run on real threads: on
        // a loaded machine they take more rounds (bounded, and the loop ends
        // at the first round where nothing is in flight).
        let mut busy = true;
        for _ in 0..2_000 {
            self.clock.advance(24 * 3_600_000);
            self.tick_all().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            busy = false;
            for account in &self.accounts {
                let req = Request { account: account.clone(), key: None, command: Command::Balance };
                if let Ok(Reply { detail: Detail::Balance(view), .. }) = self.routed(req).await {
                    busy |= view.auto_recharge.attempt_in_flight.is_some();
                }
            }
            if !busy {
                break;
            }
        }
        assert!(!busy, "seed {}: a recharge is still in flight after 2,000 rounds of settling", self.seed);
    }

    async fn audit(mut self) -> (Report, String) {
        let settled_at = self.clock.now_ms();
        let store: Arc<dyn Store> = match self.cluster.take() {
            Some(c) => {
                let (store, faults) = c.converge_and_stop(&self.accounts, self.seed).await;
                self.report.cluster = Some(faults);
                store
            }
            None => {
                self.node.take().unwrap().shutdown().await;
                Arc::new(self.disk.durable())
            }
        };
        let mut credited = BTreeSet::new();
        let mut applied = 0;
        for id in &self.accounts {
            let journal = store.history(id, 0, u32::MAX).unwrap();
            let state = store.load(id).unwrap().map(|l| l.state);
            {
                use std::fmt::Write;
                let _ = writeln!(self.trace, "{id}: {state:?}");
                for record in &journal {
                    let _ = writeln!(self.trace, "  {record:?}");
                }
            }
            let audit =
                self.auditor.check_account(id, &journal, state.as_ref(), Some(settled_at)).unwrap_or_else(|finding| {
                    panic!(
                        "seed {}: {finding}\n{}",
                        self.seed,
                        if std::env::var("PREPAID_TRACE").is_ok() { self.trace.as_str() } else { "" }
                    )
                });
            assert_eq!(state.as_ref().and_then(|s| s.auto_recharge.in_flight.clone()), None, "seed {}", self.seed);
            applied += audit.applied;
            credited.extend(audit.credited.iter().map(|a| format!("{id}:{a}")));
        }
        let charges = self.gateway.state.lock().unwrap().charges.clone();
        recharges_match(&charges, &credited).unwrap_or_else(|finding| panic!("seed {}: {finding}", self.seed));
        assert_eq!(applied, self.report.told_applied, "seed {}: every acknowledgement was audited", self.seed);
        let _ = charges;
        (self.report, self.trace)
    }
}

/// One seed on a runtime of its own: one thread, time paused (it moves
/// only when every task waits, straight to the next timer).
fn run_seed(seed: u64) -> (Report, prepaid::store::SimStats, String) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    runtime.block_on(simulate(seed, false))
}

/// `run_seed` in cluster mode (the report has the cluster's faults).
fn run_cluster_seed(seed: u64) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    runtime.block_on(simulate(seed, true)).0
}

/// One seed's run: a node on a simulated disk, or (`clustered`) three
/// clustered nodes (`sim/cluster.rs`).
async fn simulate(seed: u64, clustered: bool) -> (Report, prepaid::store::SimStats, String) {
    let mut rng = Rng(mix(seed));
    let faults = Faults {
        write_fail: rng.below(40) as u32,
        sync_fail: rng.below(40) as u32,
        slow_sync_us: if rng.below(3) == 0 { 300 } else { 0 },
        recover_fail: 300,
        checkpoint: 20 + rng.below(300) as u32,
    };
    let mut durability = if rng.below(4) == 0 { Durability::Async } else { Durability::Sync };
    if clustered {
        // A clustered node answers only what its group committed.
        durability = Durability::Sync;
    }
    let disk = SimDisk::new(mix(seed ^ 0xd15c), faults);
    let gateway = Arc::new(SimGateway { seed, state: Mutex::new(GatewayState::default()) });
    let accounts: Vec<AccountId> =
        (0..(2 + rng.below(4))).map(|i| AccountId::new(&format!("sim_{seed}_{i}")).unwrap()).collect();
    let mut sim = Sim {
        seed,
        rng,
        disk: Arc::clone(&disk),
        clock: ManualClock::at(T0),
        gateway,
        durability,
        node: None,
        cluster: None,
        auditor: Auditor::new(),
        accounts: accounts.clone(),
        holds: Vec::new(),
        unknown: Vec::new(),
        resent: BTreeSet::new(),
        n: 0,
        report: Report::default(),
        trace: String::new(),
    };
    if clustered {
        sim.cluster = Some(cluster::Cluster::start(sim.clock.clone(), sim.gateway.clone()).await);
    } else {
        sim.start().await;
    }
    for account in &accounts {
        let command = Command::Open {
            mode: Mode::Prepaid,
            currency: Currency::new("USD").unwrap(),
            past_due_suspends: None,
            credit_limit: None,
        };
        let key = sim.key();
        sim.send(Sent { req: Request { account: account.clone(), key: Some(key), command }, reference: None }).await;
    }
    for _ in 0..150 {
        sim.step().await;
    }
    sim.finish().await;
    let (report, mut trace) = sim.audit().await;
    trace.push_str(&format!("{:?}\n", disk.stats()));
    (report, disk.stats(), trace)
}

/// `PREPAID_SEED` alone, or seeds 1..=`count` (the variable `count`
/// names, `default` without it).
fn seeds(count: &str, default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("PREPAID_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let n = std::env::var(count).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    (1..=n).collect()
}

impl Report {
    /// Adds another seed's counts.
    fn add(&mut self, r: &Report) {
        self.requests += r.requests;
        self.applied += r.applied;
        self.refused += r.refused;
        self.unavailable += r.unavailable;
        self.crashes += r.crashes;
        self.not_applied += r.not_applied;
    }
}

#[test]
fn seeded_faults_lose_nothing_and_apply_nothing_twice() {
    let seeds = seeds("PREPAID_SIM_SEEDS", 300);
    let mut total = Report::default();
    let mut disk = prepaid::store::SimStats::default();
    for &seed in &seeds {
        eprintln!("seed {seed}");
        let (r, d, _) = run_seed(seed);
        total.add(&r);
        disk.failed_writes += d.failed_writes;
        disk.failed_syncs += d.failed_syncs;
        disk.lost_groups += d.lost_groups;
        disk.kept_groups += d.kept_groups;
        disk.torn_entries += d.torn_entries;
        disk.checkpoints += d.checkpoints;
        disk.interrupted_checkpoints.0 += d.interrupted_checkpoints.0;
        disk.interrupted_checkpoints.1 += d.interrupted_checkpoints.1;
        disk.interrupted_checkpoints.2 += d.interrupted_checkpoints.2;
    }
    let cut = disk.interrupted_checkpoints;
    eprintln!(
        "simulation: {} seeds, {} requests ({} applied, {} refused, {} storage/crash answers), {} crashes, \
         {} failed writes, {} failed syncs, unsynced groups lost/kept by crashes {}/{}, torn last entries {}, \
         checkpoints {}, crashes in a checkpoint: part way {}, before truncation {}, older than the log {}",
        seeds.len(),
        total.requests,
        total.applied,
        total.refused,
        total.unavailable,
        total.crashes,
        disk.failed_writes,
        disk.failed_syncs,
        disk.lost_groups,
        disk.kept_groups,
        disk.torn_entries,
        disk.checkpoints,
        cut.0,
        cut.1,
        cut.2
    );
    assert!(total.applied > 0 && total.refused > 0, "the workload both applied and refused");
    if seeds.len() >= 20 {
        assert!(total.crashes > 0 && disk.failed_writes + disk.failed_syncs > 0, "faults were injected");
        assert!(disk.torn_entries > 0 && disk.checkpoints > 0, "torn entries and checkpoints happened");
        assert!(cut.0 > 0 && cut.1 > 0 && cut.2 > 0, "every kind of cut-off checkpoint happened: {cut:?}");
    }
}

/// The simulation is deterministic: a seed run twice gives the same
/// requests, the same replies, the same crashes and the same disk, byte
/// for byte — so a failing seed reproduces exactly.
#[test]
fn a_seed_run_twice_is_the_same_run_byte_for_byte() {
    for seed in [7, 130, 4242] {
        let (report, _, first) = run_seed(seed);
        let (_, _, second) = run_seed(seed);
        assert!(report.requests > 100 && first.len() > 10_000, "seed {seed}: a run of substance");
        if first != second {
            let line = first.lines().zip(second.lines()).position(|(a, b)| a != b).unwrap_or(0);
            let at = |t: &str| t.lines().nth(line).unwrap_or("(the end)").to_string();
            panic!("seed {seed}: the runs part at line {line}:\n{}\n{}", at(&first), at(&second));
        }
    }
}

/// The same workload against a cluster of four (`sim/cluster.rs`, groups
/// of three voters): nodes cut off and healed, crashed and restarted,
/// leads handed over, group members moved by the controller's mover, logs
/// purged behind snapshots. No acknowledged operation lost, nothing
/// applied twice, conservation exact, no recharge charged twice, at most
/// one leader per group per term, and every voter of a group ends with the
/// same state and journal of every account of it. `PREPAID_CLUSTER_SIM_SEEDS=N` runs seeds
/// 1..=N (20 by default); `PREPAID_SEED=S` runs seed S alone.
#[test]
fn seeded_faults_on_a_cluster_lose_nothing_and_apply_nothing_twice() {
    if std::env::var("RUST_LOG").is_ok() {
        let filter = tracing_subscriber::EnvFilter::from_default_env();
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
    let seeds = seeds("PREPAID_CLUSTER_SIM_SEEDS", 20);
    let mut total = Report::default();
    let mut faults = cluster::Faults::default();
    for &seed in &seeds {
        eprintln!("cluster seed {seed}");
        let r = run_cluster_seed(seed);
        total.add(&r);
        let f = r.cluster.unwrap();
        faults.crashes += f.crashes;
        faults.cuts += f.cuts;
        faults.transfers += f.transfers;
        faults.installs += f.installs;
        faults.moves += f.moves;
        faults.moved += f.moved;
    }
    eprintln!(
        "cluster simulation: {} seeds, {} requests ({} applied, {} refused, {} answered without an outcome), \
         {} crashes, {} cuts, {} leader transfers, {} moves planned ({} run to the end, node 1's own into \
         every group at the end included), {} snapshots installed, {} first tries held to \"nothing applied\"",
        seeds.len(),
        total.requests,
        total.applied,
        total.refused,
        total.unavailable,
        faults.crashes,
        faults.cuts,
        faults.transfers,
        faults.moves,
        faults.moved,
        faults.installs,
        total.not_applied
    );
    assert!(total.applied > 0 && total.refused > 0, "the workload both applied and refused");
    if seeds.len() >= 10 {
        assert!(faults.crashes > 0 && faults.cuts > 0 && faults.transfers > 0, "every kind of fault happened");
        assert!(faults.moves > 0 && faults.moved > 0, "members were moved under the faults");
        assert!(faults.installs > 0, "members behind the purged log caught up from snapshots");
    }
}
