//! prepaid: a balance cluster for prepaid credits.
//!
//! Every API call, dedicated endpoint, fine-tuning or evaluation job is
//! authorized against an account's credit balance; every credit in or out is
//! on a ledger; auto-recharge buys credits exactly once when the balance runs
//! low. See `ARCHITECTURE.md` for the layers and `docs/` for the rules.
//!
//! Layers, bottom up: `ledger` (the functional core), `codec` and `store`
//! (bytes and RocksDB), `shard` and `journal` (shard workers hosting account
//! cells, group commit),
//! `node` (the embedded entry point).

pub mod audit;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod error;
mod health;
/// The outbound HTTP client (gateway, webhooks).
pub mod httpc;
mod journal;
pub mod ledger;
mod node;
mod recharge;
/// Payment gateways (`PaymentGateway`, simulated and HTTP).
pub use recharge::gateway;
pub mod server;
mod shard;
pub mod stats;
pub mod store;
pub mod tls;
pub mod wire;

/// This build's version (Cargo's), as `/health` and `prepaid_build_info`
/// report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use client::{Client, ClientError, ClusterClient};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Durability, NodeConfig};
pub use error::Error;
pub use gateway::{HttpGateway, PaymentGateway, SimulatedGateway};
pub use journal::AccountEvent;
pub use node::reads;
pub use node::{Node, StartError};

pub use ledger::{
    Account, AccountId, AccountState, Amount, BalanceView, Command, Currency, DebitMode, Detail, Event, EventRecord,
    IdemKey, LedgerConfig, Mode, Outcome, Reason, Reply, Request, Service, Status, Text,
};
