//! Typed methods for every operation, over `Node::execute`. Each builds the
//! request, sends it, and returns the reply (or the refusal / node error).

use crate::error::Error;
use crate::ledger::{
    AccountId, Amount, BalanceView, Command, Currency, DebitMode, Detail, IdemKey, Mode, Reply, Request, Service, Text,
};
use crate::node::Node;

impl Node {
    async fn run(&self, account: &AccountId, key: Option<&IdemKey>, command: Command) -> Result<Reply, Error> {
        self.execute(Request { account: account.clone(), key: key.cloned(), command }).await
    }

    pub async fn open_account(&self, account: &AccountId, mode: Mode, currency: Currency) -> Result<Reply, Error> {
        let command = Command::Open { mode, currency, past_due_suspends: None, credit_limit: None };
        self.run(account, None, command).await
    }

    /// `Ok` when the account may make API calls now; else the reason.
    pub async fn check_access(&self, account: &AccountId) -> Result<Reply, Error> {
        self.run(account, None, Command::CheckAccess).await
    }

    pub async fn debit(
        &self,
        account: &AccountId,
        key: &IdemKey,
        amount: Amount,
        mode: DebitMode,
        service: Service,
        reference: Option<Text>,
    ) -> Result<Reply, Error> {
        self.run(account, Some(key), Command::Debit { amount, mode, service, reference }).await
    }

    /// Returns the hold id in `Detail::HoldPlaced`.
    pub async fn hold(
        &self,
        account: &AccountId,
        key: &IdemKey,
        amount: Amount,
        service: Service,
        reference: Option<Text>,
        timeout_ms: Option<u64>,
    ) -> Result<Reply, Error> {
        self.run(account, Some(key), Command::Hold { amount, service, reference, timeout_ms }).await
    }

    pub async fn capture(
        &self,
        account: &AccountId,
        key: &IdemKey,
        hold_id: u64,
        amount: Amount,
    ) -> Result<Reply, Error> {
        self.run(account, Some(key), Command::Capture { hold_id, amount }).await
    }

    pub async fn release(&self, account: &AccountId, key: &IdemKey, hold_id: u64) -> Result<Reply, Error> {
        self.run(account, Some(key), Command::Release { hold_id }).await
    }

    pub async fn purchase(
        &self,
        account: &AccountId,
        key: &IdemKey,
        amount: Amount,
        reference: Option<Text>,
    ) -> Result<Reply, Error> {
        self.run(account, Some(key), Command::Purchase { amount, reference }).await
    }

    pub async fn grant(
        &self,
        account: &AccountId,
        key: &IdemKey,
        amount: Amount,
        expires_at_ms: Option<u64>,
        reference: Option<Text>,
    ) -> Result<Reply, Error> {
        self.run(account, Some(key), Command::Grant { amount, expires_at_ms, priority: None, reference }).await
    }

    pub async fn set_auto_recharge(
        &self,
        account: &AccountId,
        enabled: bool,
        amount: Option<Amount>,
        threshold: Amount,
    ) -> Result<Reply, Error> {
        self.run(account, None, Command::SetAutoRecharge { enabled, amount, threshold }).await
    }

    pub async fn close_period(
        &self,
        account: &AccountId,
        key: &IdemKey,
        due_at_ms: Option<u64>,
    ) -> Result<Reply, Error> {
        self.run(account, Some(key), Command::ClosePeriod { due_at_ms }).await
    }

    pub async fn pay_invoice(
        &self,
        account: &AccountId,
        key: &IdemKey,
        invoice_id: u64,
        amount: Amount,
    ) -> Result<Reply, Error> {
        self.run(account, Some(key), Command::PayInvoice { invoice_id, amount }).await
    }

    pub async fn freeze(&self, account: &AccountId, reason: Text) -> Result<Reply, Error> {
        self.run(account, None, Command::Freeze { reason }).await
    }

    pub async fn unfreeze(&self, account: &AccountId, reason: Text) -> Result<Reply, Error> {
        self.run(account, None, Command::Unfreeze { reason }).await
    }

    pub async fn close(&self, account: &AccountId, reason: Text) -> Result<Reply, Error> {
        self.run(account, None, Command::Close { reason }).await
    }

    pub async fn adjust(
        &self,
        account: &AccountId,
        key: &IdemKey,
        amount: Amount,
        reason: Text,
    ) -> Result<Reply, Error> {
        self.run(account, Some(key), Command::Adjust { amount, reason }).await
    }

    /// The balance with its parts.
    pub async fn balance(&self, account: &AccountId) -> Result<BalanceView, Error> {
        match self.run(account, None, Command::Balance).await?.detail {
            Detail::Balance(view) => Ok(*view),
            other => Err(Error::Internal(format!("balance answered {other:?}"))),
        }
    }
}
