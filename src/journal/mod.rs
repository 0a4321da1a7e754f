//! The journal writer: group commit.
//!
//! Shard workers apply requests in memory and hand their writes here
//! without waiting (pipelining), one submission per worker message. The writer takes whatever has arrived while the
//! previous group was being written, writes it as one `WriteSet` (one RocksDB
//! WriteBatch) with one sync, and only then sends that group's replies, in
//! order, publishes its events and hands its recharge requests to the
//! recharge worker. Because the queue is ordered, no reply can depend on an
//! effect that is not yet durable.
//!
//! After a failed write or sync nothing more is written or acknowledged:
//! memory is ahead of disk. The failure moves the health epoch (see
//! `health.rs`); every submission made in an older epoch is refused, so
//! nothing built on lost memory reaches the disk. While failed, the writer
//! asks the store every `storage_retry` whether it works again, and on
//! success marks recovery; cells reload from the store and go on.

pub mod completion;
mod writer;

pub use writer::{Runs, WriterHandle, spawn};

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::Durability;
use crate::ledger::{AccountId, EventRecord};
use crate::store::AccountWrite;
use completion::{Answer, ReplyTo};

/// An event, durable, as subscribers receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountEvent {
    pub account: AccountId,
    pub record: EventRecord,
}

/// A recharge the ledger decided on, durable, for the recharge worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeOrder {
    pub account: AccountId,
    pub attempt_id: u64,
    pub amount: crate::ledger::Amount,
}

/// What a shard worker hands the writer for one message.
pub struct Submission {
    /// One write per account the message wrote to.
    pub writes: Vec<AccountWrite>,
    /// Sent once the writes (and everything before them) are durable.
    pub replies: Vec<(ReplyTo, Answer)>,
    /// Sync this group even in `async` mode (money in, recharge requests).
    pub force_sync: bool,
    /// Each written account's durable mark, and the last sequence number
    /// this submission makes durable for it.
    pub durable: Vec<(Arc<AtomicU64>, u64)>,
    /// Completed once everything before it is durable (passivation,
    /// shutdown).
    pub barrier: Option<oneshot::Sender<()>>,
    /// The writer stops after this submission's group (shutdown).
    pub stop: bool,
    /// The health epoch the cells' memory belongs to: a submission from an
    /// older epoch is refused, never written.
    pub epoch: u64,
}

impl Submission {
    /// An empty submission for memory of health epoch `epoch`.
    pub fn new(epoch: u64) -> Submission {
        Submission {
            writes: Vec::new(),
            replies: Vec::new(),
            force_sync: false,
            durable: Vec::new(),
            barrier: None,
            stop: false,
            epoch,
        }
    }

    /// Nothing to write and nobody to answer.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.replies.is_empty() && self.barrier.is_none() && !self.stop
    }

    pub fn barrier(done: oneshot::Sender<()>) -> Submission {
        Submission { force_sync: true, barrier: Some(done), ..Submission::new(0) }
    }

    /// The last submission: everything before it is made durable, then the
    /// writer thread ends.
    pub fn stop(done: oneshot::Sender<()>) -> Submission {
        Submission { stop: true, ..Submission::barrier(done) }
    }
}

pub struct WriterConfig {
    pub durability: Durability,
    pub flush_interval: Duration,
    pub group_max_accounts: usize,
    /// Mark writes for webhook delivery.
    pub webhooks: bool,
    /// While storage is failed: how often to ask the store whether it works
    /// again.
    pub storage_retry: Duration,
}
