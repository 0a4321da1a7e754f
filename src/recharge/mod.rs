//! The recharge worker: charges what the ledger decided, outside the actors.
//!
//! The ledger's `recharge_started { attempt_id }` is durable before the
//! writer hands the order here. The worker calls the gateway with the key
//! `account:attempt`; a definite answer goes back to the account as
//! `recharge_succeeded` or `recharge_failed`; no answer (timeout, gateway
//! down) is retried with the same key, so the card is charged at most once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::error::Error;
pub mod gateway;

use crate::journal::ChargeOrder;
use crate::ledger::{AccountId, Command, IdemKey, Reply, Text};
use crate::stats::NodeStats;
use gateway::{ChargeOutcome, ChargeRequest, PaymentGateway};

/// What the recharge worker needs of the node (which implements it): to
/// apply a gateway's answer to the account as the node's own request, and
/// to count outcomes. The worker holds it weakly, so it never keeps a
/// stopped node alive.
pub(crate) trait Accounts: Send + Sync + 'static {
    fn command<'a>(
        &'a self,
        id: &'a AccountId,
        key: Option<IdemKey>,
        command: Command,
    ) -> Pin<Box<dyn Future<Output = Result<Reply, Error>> + Send + 'a>>;

    fn stats(&self) -> &NodeStats;
}

/// Waits of the worker, from `NodeSettings`.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    pub charge_timeout: Duration,
    pub retry_unknown: Duration,
}

pub(crate) async fn worker(
    node: Weak<dyn Accounts>,
    mut orders: mpsc::UnboundedReceiver<ChargeOrder>,
    gateway: Arc<dyn PaymentGateway>,
    timing: Timing,
) {
    while let Some(order) = orders.recv().await {
        tokio::spawn(charge(node.clone(), order, Arc::clone(&gateway), timing));
    }
}

async fn charge(node: Weak<dyn Accounts>, order: ChargeOrder, gateway: Arc<dyn PaymentGateway>, timing: Timing) {
    let key = format!("{}:{}", order.account, order.attempt_id);
    let request = ChargeRequest {
        idempotency_key: key.clone(),
        account: order.account.clone(),
        attempt_id: order.attempt_id,
        amount: order.amount,
    };
    let outcome = loop {
        match tokio::time::timeout(timing.charge_timeout, gateway.charge(request.clone())).await {
            Ok(Ok(outcome)) => break outcome,
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(key = %key, "recharge outcome unknown (gateway error or timeout); asking again with the same key");
                if let Some(node) = node.upgrade() {
                    node.stats().recharge_unknown.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(timing.retry_unknown).await
            }
        }
        if node.strong_count() == 0 {
            return;
        }
    };
    let command = match outcome {
        ChargeOutcome::Charged => {
            tracing::info!(key = %key, amount = %order.amount, "recharge charged");
            Command::RechargeSucceeded { attempt_id: order.attempt_id }
        }
        ChargeOutcome::Declined(reason) => {
            tracing::warn!(key = %key, amount = %order.amount, %reason, "recharge declined by the gateway");
            let error = Text::new("error", &reason).unwrap_or_else(|_| Text::new("error", "declined").expect("valid"));
            Command::RechargeFailed { attempt_id: order.attempt_id, error }
        }
    };
    {
        let Some(node) = node.upgrade() else { return };
        let counter = match command {
            Command::RechargeSucceeded { .. } => &node.stats().recharge_charged,
            _ => &node.stats().recharge_declined,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    // The key makes a second delivery of the same outcome harmless.
    let idem = IdemKey::new(&format!("recharge:{key}")).ok();
    loop {
        let Some(live) = node.upgrade() else { return };
        match live.command(&order.account, idem.clone(), command.clone()).await {
            // A refusal (`recharge_not_in_flight`) means the outcome was
            // already applied.
            Ok(_) | Err(Error::Refused(_)) => return,
            // Stopping: recovery at the next start resumes the attempt.
            Err(Error::ShuttingDown) => return,
            // Storage failed (or the account is busy): the outcome is the
            // gateway's answer and must not be dropped; try again once the
            // node can write.
            Err(_) => {}
        }
        drop(live);
        tokio::time::sleep(timing.retry_unknown).await;
    }
}
