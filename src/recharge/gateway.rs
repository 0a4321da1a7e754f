//! The payment gateway auto-recharge charges, behind a trait.
//!
//! Every charge carries an idempotency key (`account:attempt`), so a charge
//! retried after a timeout is charged at most once: the gateway returns the
//! first outcome again. `SimulatedGateway` behaves that way in memory, with
//! configurable latency, declines and timeouts, and keeps a ledger of what it
//! charged so tests can prove nothing was charged twice.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use crate::httpc::{Outbound, Target};
use crate::ledger::hash::stable_hash;
use crate::ledger::{AccountId, Amount};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    /// `account:attempt`: the gateway's idempotency key.
    pub idempotency_key: String,
    pub account: AccountId,
    pub attempt_id: u64,
    pub amount: Amount,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    Charged,
    /// Definitely not charged (card declined, no payment method, …).
    Declined(String),
}

/// The outcome is unknown: retry with the same key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the payment gateway did not answer: {0}")]
pub struct GatewayUnavailable(pub String);

pub type ChargeFuture = Pin<Box<dyn Future<Output = Result<ChargeOutcome, GatewayUnavailable>> + Send>>;

pub trait PaymentGateway: Send + Sync + 'static {
    fn charge(&self, request: ChargeRequest) -> ChargeFuture;
}

/// In-memory gateway for demos and tests.
#[derive(Default)]
pub struct SimulatedGateway {
    latency: Duration,
    /// Out of 1,000 keys, how many are declined.
    decline_per_mille: u32,
    /// Out of 1,000 calls, how many time out (the charge may or may not
    /// have happened — here it has, as the worst case).
    timeout_per_mille: u32,
    charges: Mutex<HashMap<String, Record>>,
    /// Where first outcomes are kept across restarts, like a real gateway's.
    log: Option<Mutex<std::fs::File>>,
}

#[derive(Clone, Debug)]
struct Record {
    outcome: ChargeOutcome,
    amount: Amount,
    calls: u32,
    money_moved: u32,
    /// Already in the log file.
    logged: bool,
}

impl SimulatedGateway {
    pub fn new() -> SimulatedGateway {
        SimulatedGateway::default()
    }

    /// Each call takes this long.
    pub fn with_latency(mut self, latency: Duration) -> SimulatedGateway {
        self.latency = latency;
        self
    }

    /// Declines this many keys out of 1,000 (decided per key, so a retry of
    /// the same key gets the same answer).
    pub fn with_declines(mut self, per_mille: u32) -> SimulatedGateway {
        self.decline_per_mille = per_mille.min(1_000);
        self
    }

    /// Times out this many calls out of 1,000, after charging.
    pub fn with_timeouts(mut self, per_mille: u32) -> SimulatedGateway {
        self.timeout_per_mille = per_mille.min(1_000);
        self
    }

    /// Keeps every key's first outcome in a file (appended and synced before
    /// the outcome is returned) and reads it back: a gateway that outlives a
    /// crash of the node, for the crash test.
    pub fn with_log(mut self, path: &std::path::Path) -> std::io::Result<SimulatedGateway> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut charges = self.charges.lock().unwrap_or_else(|e| e.into_inner());
        for line in text.lines() {
            let mut parts = line.splitn(3, '\t');
            let (Some(key), Some(units), Some(outcome)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let amount = Amount::from_units(units.parse().unwrap_or(0));
            let outcome = match outcome.strip_prefix("declined:") {
                Some(reason) => ChargeOutcome::Declined(reason.to_string()),
                None => ChargeOutcome::Charged,
            };
            let money_moved = u32::from(outcome == ChargeOutcome::Charged);
            charges.insert(key.to_string(), Record { outcome, amount, calls: 0, money_moved, logged: true });
        }
        drop(charges);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        self.log = Some(Mutex::new(file));
        Ok(self)
    }

    /// Keys whose money moved more than once: must always be empty.
    pub fn charged_twice(&self) -> Vec<String> {
        let charges = self.charges.lock().unwrap_or_else(|e| e.into_inner());
        charges.iter().filter(|(_, r)| r.money_moved > 1).map(|(k, _)| k.clone()).collect()
    }

    /// Total charged, per key.
    pub fn charged(&self) -> HashMap<String, Amount> {
        let charges = self.charges.lock().unwrap_or_else(|e| e.into_inner());
        charges
            .iter()
            .filter(|(_, r)| r.outcome == ChargeOutcome::Charged)
            .map(|(k, r)| (k.clone(), r.amount))
            .collect()
    }

    /// How many times the gateway was called, all keys together.
    pub fn calls(&self) -> u32 {
        let charges = self.charges.lock().unwrap_or_else(|e| e.into_inner());
        charges.values().map(|r| r.calls).sum()
    }

    fn decide(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayUnavailable> {
        let mut charges = self.charges.lock().unwrap_or_else(|e| e.into_inner());
        let calls = charges.get(&request.idempotency_key).map_or(0, |r| r.calls);
        let roll = |salt: u32| {
            let mut bytes = request.idempotency_key.as_bytes().to_vec();
            bytes.extend_from_slice(&salt.to_le_bytes());
            (stable_hash(&bytes) % 1_000) as u32
        };
        let record = charges.entry(request.idempotency_key.clone()).or_insert_with(|| Record {
            outcome: if roll(u32::MAX) < self.decline_per_mille {
                ChargeOutcome::Declined("card_declined".into())
            } else {
                ChargeOutcome::Charged
            },
            amount: request.amount,
            calls: 0,
            money_moved: 0,
            logged: false,
        });
        record.calls += 1;
        // Idempotent: money moves on a key's first call only, whatever follows.
        if calls == 0 && record.money_moved == 0 && record.outcome == ChargeOutcome::Charged {
            record.money_moved += 1;
        }
        if !record.logged
            && let Some(log) = &self.log
        {
            use std::io::Write;
            let outcome = match &record.outcome {
                ChargeOutcome::Charged => "charged".to_string(),
                ChargeOutcome::Declined(reason) => format!("declined:{reason}"),
            };
            let line = format!("{}\t{}\t{outcome}\n", request.idempotency_key, record.amount.units());
            let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
            if file.write_all(line.as_bytes()).and_then(|()| file.sync_data()).is_err() {
                charges.remove(&request.idempotency_key);
                return Err(GatewayUnavailable("the gateway's log failed".into()));
            }
            record.logged = true;
        }
        if roll(calls) < self.timeout_per_mille {
            return Err(GatewayUnavailable("timed out".into()));
        }
        Ok(record.outcome.clone())
    }
}

impl PaymentGateway for SimulatedGateway {
    fn charge(&self, request: ChargeRequest) -> ChargeFuture {
        let result = self.decide(&request);
        let latency = self.latency;
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            result
        })
    }
}

/// The gateway of a node with auto-recharge off (`recharge.enabled =
/// false`): the rules start no charge there, and were one asked for, it is
/// declined, never charged.
pub struct NoGateway;

impl PaymentGateway for NoGateway {
    fn charge(&self, _request: ChargeRequest) -> ChargeFuture {
        Box::pin(async { Ok(ChargeOutcome::Declined("auto-recharge is off on this node".into())) })
    }
}

/// Posts each charge as JSON to a URL the platform serves, which charges the
/// customer's card:
///
/// ```text
/// POST /charge HTTP/1.1
/// Content-Type: application/json
/// Idempotency-Key: org_8f2c:7
///
/// {"idempotency_key":"org_8f2c:7","account":"org_8f2c","attempt_id":7,"amount":"25.00"}
/// ```
///
/// Answers: 2xx charged; 402 declined (the body, up to 200 bytes, is the
/// reason); any other 4xx declined as refused by the gateway; 5xx, no
/// answer or a timeout: unknown, asked again later with the same key.
/// `https://` gateways are verified against Mozilla's roots, and a private
/// CA's with `with_client` (`[tls] ca_file` in `prepaid serve`).
pub struct HttpGateway {
    target: Target,
    timeout: Duration,
}

impl HttpGateway {
    /// `url` is `http://` or `https://host[:port]/path`; the server's
    /// certificate must chain to one of Mozilla's roots.
    pub fn new(url: &str, timeout: Duration) -> Result<HttpGateway, String> {
        HttpGateway::with_client(url, timeout, &Outbound::new(None)?)
    }

    /// As `new`, through a client of your own (one that also trusts a
    /// private CA: `Outbound::new(Some(ca_file))`).
    pub fn with_client(url: &str, timeout: Duration, client: &Outbound) -> Result<HttpGateway, String> {
        Ok(HttpGateway { target: Target::parse(url, client)?, timeout })
    }

    async fn post(target: Target, request: ChargeRequest) -> Result<ChargeOutcome, GatewayUnavailable> {
        let body = format!(
            "{{\"idempotency_key\":\"{}\",\"account\":\"{}\",\"attempt_id\":{},\"amount\":\"{}\"}}",
            request.idempotency_key, request.account, request.attempt_id, request.amount
        );
        let (status, answer) = target
            .post(&[("Idempotency-Key", &request.idempotency_key)], &body)
            .await
            .map_err(|e| GatewayUnavailable(e.to_string()))?;
        let reason = || {
            let mut end = answer.len().min(200);
            while !answer.is_char_boundary(end) {
                end -= 1;
            }
            if answer.is_empty() { "declined".to_string() } else { answer[..end].to_string() }
        };
        match status {
            200..=299 => Ok(ChargeOutcome::Charged),
            402 => Ok(ChargeOutcome::Declined(reason())),
            400..=499 => Ok(ChargeOutcome::Declined(format!("refused by the gateway ({status})"))),
            _ => Err(GatewayUnavailable(format!("the gateway answered {status}"))),
        }
    }
}

impl PaymentGateway for HttpGateway {
    fn charge(&self, request: ChargeRequest) -> ChargeFuture {
        let (target, timeout) = (self.target.clone(), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, HttpGateway::post(target, request)).await {
                Ok(result) => result,
                Err(_) => Err(GatewayUnavailable("timed out".into())),
            }
        })
    }
}
