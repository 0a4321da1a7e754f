//! The functional core: every billing rule, as data in and data out.
//!
//! `Account::execute(request, now, config)` is the whole of an account's
//! behaviour. It reads no clock (time is an argument), does no I/O, spawns
//! nothing and knows nothing of actors, storage or the network; the shell
//! moves requests in and records out. It must never import tokio, ractor or
//! rocksdb — `.ci/run` fails if it does.
//!
//! Map of the module:
//! - `amount`, `id`: exact money and validated names;
//! - `command`: requests; `event`: facts; `reply`: answers and read views;
//! - `state`: an account's state and `replay`, the only way it changes;
//! - `decide`: the rules (validate, settle deadlines, decide, follow up);
//! - `apply`: one request start to finish; `dedup`: idempotency records;
//! - `reason`: refusal codes; `config`: rules and bounds; `hash`: the
//!   stable hash.

pub mod amount;
pub mod apply;
pub mod command;
pub mod config;
pub mod decide;
pub mod dedup;
pub mod event;
pub mod hash;
pub mod id;
pub mod reason;
pub mod reply;
pub mod state;

pub use amount::{Amount, AmountError};
pub use apply::{Account, Outcome};
pub use command::{Command, DebitMode, Mode, Request, Service};
pub use config::LedgerConfig;
pub use dedup::{Dedup, DedupRecord};
pub use event::{Event, EventRecord, GrantSource, HoldEnd, InvoiceSource, PauseCause, SuspendCause};
pub use id::{AccountId, Currency, IdemKey, Text};
pub use reason::Reason;
pub use reply::{BalanceView, Detail, Reply, UsageSummary, history_page, usage_by_service};
pub use state::{AccountState, ReplayError, Status};
