//! prepaid: a balance cluster for prepaid credits.
//!
//! Every API call, dedicated endpoint, fine-tuning or evaluation job is
//! authorized against an account's credit balance; every credit in or out is
//! on a ledger; auto-recharge buys credits exactly once when the balance runs
//! low. See `ARCHITECTURE.md` for the layers and `docs/` for the rules.
//!
//! Today the crate holds the functional core (`ledger`) and the codec its
//! records are stored with (`codec`).

pub mod codec;
pub mod ledger;

pub use ledger::{
    Account, AccountId, AccountState, Amount, BalanceView, Command, Currency, DebitMode, Detail, Event, EventRecord,
    IdemKey, LedgerConfig, Mode, Outcome, Reason, Reply, Request, Service, Status, Text,
};
