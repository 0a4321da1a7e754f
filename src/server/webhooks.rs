//! Webhooks: every durable event POSTed to each configured URL, signed, in
//! order per account, at least once.
//!
//! Delivery reads the journal itself, not a copy: the journal writer marks
//! each account's last written sequence in the same atomic write as the
//! events (`Store::webhook_pending`), and the dispatcher keeps a delivered
//! cursor per account (`Store::set_webhook_cursor`). Live events only wake
//! the account up; after a restart (or if the dispatcher falls behind the
//! event buffer) it finds what is undelivered from the marks. A crash
//! between a delivery and its cursor write delivers that event again, so
//! receivers deduplicate on `Prepaid-Event-Id`.
//!
//! Each POST carries:
//! - `Prepaid-Event-Id: <account>:<seq>` — unique per event;
//! - `Prepaid-Timestamp: <unix ms>` — when this try was sent;
//! - `Prepaid-Signature: v1=<hex>` — HMAC-SHA256 with `webhooks.secret` over
//!   `<timestamp>.<body>`; receivers recompute it and reject stale timestamps.
//!
//! On a clustered node each group's leader delivers the group's accounts:
//! the dispatcher takes only accounts of groups the node serves, stops an
//! account's delivery as soon as the node no longer serves it, and looks
//! for what is undelivered whenever it starts serving a group. Every
//! `cursor_record_ms` the leader records through each group how far it
//! delivered (`Groups::record_deliveries`, applied on every member), so a
//! new leader goes on from there, repeating at most what was delivered
//! since the last record; during a leader change two nodes may deliver the
//! same event (receivers deduplicate on `Prepaid-Event-Id`).
//!
//! A receiver answering 2xx has the event. Anything else, or no answer
//! within `timeout_ms`, is tried again after `backoff_ms`, doubling up to
//! `backoff_max_ms`; after `max_attempts` tries the event is dead-lettered
//! (counted in `/metrics`, listed by the admin API) and delivery goes on with
//! the account's next event.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};

use crate::clock::{Clock, SystemClock};
use crate::cluster::groups::Groups;
use crate::config::{NodeConfig, WebhookSettings};
use crate::httpc::{Outbound, Target};
use crate::journal::AccountEvent;
use crate::ledger::{AccountId, EventRecord};
use crate::node::Node;
use crate::store::{Store, StoreError};

/// Accounts delivered to at the same time.
const PARALLEL_ACCOUNTS: usize = 32;
/// Journal records read per step.
const READ_STEP: u32 = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub account: String,
    pub seq: u64,
    pub url: String,
    pub attempts: u32,
    pub last_error: String,
    pub at_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub backlog: u64,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_letters: u64,
}

pub struct Webhooks {
    store: Arc<dyn Store>,
    /// Clustered: the node's groups (deliver only what this node serves).
    groups: Option<Arc<Groups>>,
    /// Clustered: cursors moved since they were last recorded in their
    /// groups.
    unrecorded: Mutex<HashMap<AccountId, u64>>,
    targets: Vec<(String, Target)>,
    settings: WebhookSettings,
    backlog: AtomicI64,
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
    dead: AtomicU64,
    dead_letters: Mutex<VecDeque<DeadLetter>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The signature of one delivery: `v1=` and the hex HMAC-SHA256 of
/// `<timestamp>.<body>`.
pub fn signature(secret: &[u8], timestamp_ms: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + 64);
    out.push_str("v1=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The JSON body of one event's delivery.
pub fn body(account: &AccountId, record: &EventRecord) -> String {
    let (kind, fields) = crate::wire::event_json(record);
    serde_json::json!({
        "account": account.as_str(),
        "seq": record.seq,
        "at_ms": record.at_ms,
        "balance_after": record.balance_after.to_string(),
        "kind": kind,
        "event": fields,
    })
    .to_string()
}

#[derive(Default)]
struct Slot {
    cursor: u64,
    dirty: bool,
    running: bool,
}

impl Webhooks {
    /// Starts delivery if `webhooks.urls` is set.
    pub fn start(cfg: &NodeConfig, node: &Node) -> Result<Option<Arc<Webhooks>>, String> {
        if cfg.webhooks.urls.is_empty() {
            return Ok(None);
        }
        let client = Outbound::new(cfg.tls.ca_path())?;
        let targets = cfg
            .webhooks
            .urls
            .iter()
            .map(|u| Target::parse(u, &client).map(|t| (u.clone(), t)))
            .collect::<Result<_, _>>()?;
        let (stop, stop_rx) = watch::channel(false);
        let hooks = Arc::new(Webhooks {
            store: node.store(),
            groups: node.groups(),
            unrecorded: Mutex::new(HashMap::new()),
            targets,
            settings: cfg.webhooks.clone(),
            backlog: AtomicI64::new(0),
            delivered: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            dead_letters: Mutex::new(VecDeque::new()),
            stop,
            task: Mutex::new(None),
        });
        let events = node.subscribe();
        let task = tokio::spawn(Arc::clone(&hooks).run(events, stop_rx));
        *hooks.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(Some(hooks))
    }

    pub fn figures(&self) -> Figures {
        Figures {
            backlog: self.backlog.load(Ordering::Relaxed).max(0) as u64,
            delivered: self.delivered.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            dead_letters: self.dead.load(Ordering::Relaxed),
        }
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Stops delivering; what is undelivered is found again at the next start.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Whether this node delivers `id`'s events now: alone, always;
    /// clustered, while it serves the account's group.
    fn delivers(&self, id: &AccountId) -> bool {
        self.groups.as_ref().is_none_or(|g| g.serving(g.group_of(id)).is_some())
    }

    fn rescan(&self, slots: &mut HashMap<AccountId, Slot>) -> Result<(), StoreError> {
        for (id, written, delivered) in self.store.webhook_pending()? {
            if !self.delivers(&id) {
                continue;
            }
            let slot = slots.entry(id).or_default();
            if slot.cursor < delivered {
                slot.cursor = delivered;
            }
            if !slot.running {
                self.backlog.fetch_add(written.saturating_sub(slot.cursor) as i64, Ordering::Relaxed);
            }
            slot.dirty = true;
        }
        Ok(())
    }

    async fn run(self: Arc<Self>, mut events: broadcast::Receiver<AccountEvent>, mut stop: watch::Receiver<bool>) {
        let mut slots: HashMap<AccountId, Slot> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(AccountId, u64)>();
        let parallel = Arc::new(Semaphore::new(PARALLEL_ACCOUNTS));
        let mut tasks = tokio::task::JoinSet::new();
        // A failed scan is retried on the next lag; live events still flow.
        let _ = self.rescan(&mut slots);
        // Clustered: groups taken over are scanned, and cursors recorded.
        let mut serving = self.groups.as_ref().map(|g| g.serving_changes());
        let mut record = tokio::time::interval(Duration::from_millis(self.settings.cursor_record_ms));
        record.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            for (id, slot) in slots.iter_mut().filter(|(_, s)| s.dirty && !s.running) {
                slot.dirty = false;
                slot.running = true;
                let (hooks, id, cursor, done, parallel) =
                    (Arc::clone(&self), id.clone(), slot.cursor, done_tx.clone(), Arc::clone(&parallel));
                tasks.spawn(async move {
                    let _permit = parallel.acquire().await;
                    let cursor = hooks.deliver_account(&id, cursor).await;
                    let _ = done.send((id, cursor));
                });
            }
            tokio::select! {
                event = events.recv() => match event {
                    Ok(e) => {
                        self.backlog.fetch_add(1, Ordering::Relaxed);
                        slots.entry(e.account).or_default().dirty = true;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = self.rescan(&mut slots);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                Some((id, cursor)) = done_rx.recv() => {
                    if let Some(slot) = slots.get_mut(&id) {
                        slot.running = false;
                        slot.cursor = cursor;
                        if !slot.dirty {
                            slots.remove(&id);
                        }
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                Some(()) = async { serving.as_mut()?.changed().await.ok() }, if serving.is_some() => {
                    let _ = self.rescan(&mut slots);
                }
                _ = record.tick(), if self.groups.is_some() => self.record(),
                _ = stop.changed() => {
                    if *stop.borrow() {
                        break;
                    }
                }
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        self.record();
    }

    /// Clustered: records the cursors moved since the last time, through
    /// their groups, in the background.
    fn record(&self) {
        let Some(groups) = &self.groups else { return };
        let cursors: Vec<(AccountId, u64)> =
            self.unrecorded.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        if !cursors.is_empty() {
            let groups = Arc::clone(groups);
            tokio::spawn(async move { groups.record_deliveries(cursors).await });
        }
    }

    /// Delivers the account's events after `cursor`, in order; the new cursor.
    async fn deliver_account(&self, id: &AccountId, mut cursor: u64) -> u64 {
        // A slot made afresh by a live event starts at 0; what was already
        // delivered is in the store.
        if let Ok(delivered) = self.store.webhook_cursor(id) {
            cursor = cursor.max(delivered);
        }
        loop {
            let records = match self.store.history(id, cursor, READ_STEP) {
                Ok(r) => r,
                Err(_) => return cursor,
            };
            if records.is_empty() {
                return cursor;
            }
            for record in records {
                if !self.delivers(id) {
                    // Another node leads the account's group now.
                    return cursor;
                }
                let body = body(id, &record);
                for (url, target) in &self.targets {
                    self.deliver(id, record.seq, url, target, &body).await;
                }
                cursor = record.seq;
                self.backlog.fetch_sub(1, Ordering::Relaxed);
                let _ = self.store.set_webhook_cursor(id, cursor);
                if self.groups.is_some() {
                    let mut unrecorded = self.unrecorded.lock().unwrap_or_else(|e| e.into_inner());
                    let seq = unrecorded.entry(id.clone()).or_default();
                    *seq = (*seq).max(cursor);
                }
            }
        }
    }

    async fn deliver(&self, id: &AccountId, seq: u64, url: &str, target: &Target, body: &str) {
        let s = &self.settings;
        let event_id = format!("{id}:{seq}");
        let mut backoff = Duration::from_millis(s.backoff_ms);
        let mut last_error = String::new();
        for attempt in 1..=s.max_attempts {
            let now = SystemClock.now_ms();
            let sig = signature(s.secret.as_bytes(), now, body);
            let ts = now.to_string();
            let headers =
                [("Prepaid-Event-Id", event_id.as_str()), ("Prepaid-Timestamp", &ts), ("Prepaid-Signature", &sig)];
            match tokio::time::timeout(Duration::from_millis(s.timeout_ms), target.post(&headers, body)).await {
                Ok(Ok((status, _))) if (200..300).contains(&status) => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(Ok((status, _))) => last_error = format!("the receiver answered {status}"),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = format!("no answer within {} ms", s.timeout_ms),
            }
            self.failed_attempts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event = %event_id, url, attempt, error = %last_error, "webhook delivery failed");
            if attempt < s.max_attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(s.backoff_max_ms));
            }
        }
        self.dead.fetch_add(1, Ordering::Relaxed);
        tracing::error!(event = %event_id, url, attempts = s.max_attempts, error = %last_error, "webhook dead-lettered");
        let mut dead = self.dead_letters.lock().unwrap_or_else(|e| e.into_inner());
        if dead.len() >= s.dead_letters_kept.max(1) {
            dead.pop_front();
        }
        dead.push_back(DeadLetter {
            account: id.to_string(),
            seq,
            url: url.to_string(),
            attempts: s.max_attempts,
            last_error,
            at_ms: SystemClock.now_ms(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // The expected value was computed independently with Python's hmac:
        // hmac.new(key, b"1700000000000.{\"a\":1}", hashlib.sha256).hexdigest()
        let sig = signature(b"key-0123456789abcdef", 1700000000000, "{\"a\":1}");
        assert_eq!(sig, "v1=5d5972d652aeb8b35317b0e8214e470f7d519b147f3efe2ff5226055750dd995");
    }
}

/// Webhooks on a cluster of three nodes in one process (the node's
/// clustered test members).
#[cfg(all(test, feature = "rocksdb"))]
mod clustered {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use super::Webhooks;
    use crate::ledger::{AccountId, Amount, Command, Currency, Mode};
    use crate::node::clustered::{Member, TRIES, debit, fast, lose, request, send, start_three};

    /// Debits $1 from each account under `key`, through whoever leads.
    async fn debit_each(members: &BTreeMap<u64, Member>, accounts: &[AccountId], key: &str) {
        for id in accounts {
            send(members, &request(id, Some(key), debit(1))).await.1.unwrap();
        }
    }

    /// A webhook receiver on loopback: records (account, seq) of every POST it
    /// is sent, in arrival order, and answers 200.
    async fn receiver() -> (String, Arc<std::sync::Mutex<Vec<(String, u64)>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let got: Arc<std::sync::Mutex<Vec<(String, u64)>>> = Arc::default();
        let record = Arc::clone(&got);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body = loop {
                        let n = conn.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                        let len = head.lines().find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length: ")?.trim().parse::<usize>().ok()
                        });
                        if body.len() >= len.unwrap_or(0) {
                            break body.to_string();
                        }
                    };
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    record
                        .lock()
                        .unwrap()
                        .push((v["account"].as_str().unwrap().to_string(), v["seq"].as_u64().unwrap()));
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                });
            }
        });
        (url, got)
    }

    /// Webhooks on a cluster: each group's leader delivers its accounts'
    /// events, in order per account, and records through the group how far it
    /// got. When that leader is lost, the new one goes on from the record:
    /// every event is delivered, and those delivered and recorded before the
    /// loss are not delivered again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhooks_follow_each_groups_leader_and_go_on_from_the_recorded_cursor() {
        let (url, got) = receiver().await;
        let mut config = fast();
        config.webhooks.urls = vec![url];
        config.webhooks.secret = "whsec-0123456789abcdef".into();
        config.webhooks.cursor_record_ms = 20;
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let (mut members, _) = start_three(&dirs, config.clone()).await;
        let mut hooks = BTreeMap::new();
        for (id, m) in &members {
            hooks.insert(*id, Webhooks::start(&config, m.node.as_ref().unwrap()).unwrap().unwrap());
        }
        let accounts: Vec<AccountId> = (0..6).map(|i| AccountId::new(&format!("hooked-{i}")).unwrap()).collect();
        for id in &accounts {
            let open = Command::Open {
                mode: Mode::Prepaid,
                currency: Currency::USD,
                past_due_suspends: None,
                credit_limit: None,
            };
            send(&members, &request(id, Some("open"), open)).await.1.unwrap();
            let buy = Command::Purchase { amount: Amount::whole(100), reference: None };
            send(&members, &request(id, Some("buy"), buy)).await.1.unwrap();
        }
        for n in 0..3 {
            debit_each(&members, &accounts, &format!("d-{n}")).await;
        }
        // Every member learns how far delivery got (the leaders' records).
        let last = |members: &BTreeMap<u64, Member>, id: &AccountId| -> u64 {
            members.values().find_map(|m| m.store.load(id).unwrap()).unwrap().state.next_seq - 1
        };
        let before: BTreeMap<AccountId, u64> = accounts.iter().map(|id| (id.clone(), last(&members, id))).collect();
        let mut recorded = false;
        for _ in 0..TRIES {
            recorded =
                members.values().all(|m| before.iter().all(|(id, seq)| m.store.webhook_cursor(id).unwrap() == *seq));
            if recorded {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(recorded, "every member holds every account's cursor at its last event");

        // The node leading the most groups is lost, its deliveries with it.
        let lost = *members
            .keys()
            .max_by_key(|id| (0..2).filter(|&g| members[id].groups.serving(g).is_some()).count())
            .unwrap();
        let mut gone = members.remove(&lost).unwrap();
        lose(&mut gone).await;
        hooks.remove(&lost).unwrap().stop().await;
        drop(gone);
        for n in 3..6 {
            debit_each(&members, &accounts, &format!("d-{n}")).await;
        }
        let after: BTreeMap<AccountId, u64> = accounts.iter().map(|id| (id.clone(), last(&members, id))).collect();
        let complete = |got: &[(String, u64)]| {
            after.iter().all(|(id, last)| (1..=*last).all(|seq| got.iter().any(|(a, s)| a == id.as_str() && *s == seq)))
        };
        for _ in 0..TRIES {
            if complete(&got.lock().unwrap()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = got.lock().unwrap().clone();
        assert!(complete(&got), "every event delivered: {got:?}");
        for (id, last_before) in &before {
            let seqs: Vec<u64> = got.iter().filter(|(a, _)| a == id.as_str()).map(|(_, s)| *s).collect();
            // In order: each event's first delivery after the one before's.
            let mut firsts: Vec<u64> = Vec::new();
            for s in &seqs {
                if !firsts.contains(s) {
                    firsts.push(*s);
                }
            }
            assert!(firsts.windows(2).all(|w| w[0] < w[1]), "account {id}: {seqs:?}");
            // What was recorded before the loss is not delivered again.
            for seq in 1..=*last_before {
                assert_eq!(seqs.iter().filter(|s| **s == seq).count(), 1, "account {id} event {seq}: {seqs:?}");
            }
        }
        for (_, w) in hooks {
            w.stop().await;
        }
        for m in members.values_mut() {
            lose(m).await;
        }
    }
}
