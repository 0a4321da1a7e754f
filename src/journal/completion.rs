//! One completion per caller batch: the caller waits once, however many
//! requests the batch holds and however many shard workers answer them.
//!
//! A batch of n requests makes one `Completion` with n slots; each request
//! carries a `ReplyTo` (the completion and its slot). Whoever answers a
//! request — a worker at once, or the journal writer after the group's sync
//! — fills its slot; the last slot filled wakes the caller. A `ReplyTo`
//! dropped unanswered (a worker that stopped) fills its slot with an error,
//! so a caller never waits for an answer that cannot come.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::error::Error;
use crate::ledger::Reply;

pub type Answer = Result<Reply, Error>;

pub struct Completion {
    slots: Mutex<Vec<Option<Answer>>>,
    remaining: AtomicUsize,
    done: Notify,
}

impl Completion {
    /// A completion for `n` answers, and the `ReplyTo` of each slot, in
    /// order.
    pub fn new(n: usize) -> (Arc<Completion>, Vec<ReplyTo>) {
        let completion = Arc::new(Completion {
            slots: Mutex::new((0..n).map(|_| None).collect()),
            remaining: AtomicUsize::new(n),
            done: Notify::new(),
        });
        let replies = (0..n).map(|index| ReplyTo { batch: Some(Arc::clone(&completion)), index }).collect();
        (completion, replies)
    }

    fn fill(&self, index: usize, answer: Answer) {
        let first = {
            let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let slot = &mut slots[index];
            let first = slot.is_none();
            if first {
                *slot = Some(answer);
            }
            first
        };
        if first && self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// Every answer, in slot order, once the last is in.
    pub async fn wait(&self) -> Vec<Answer> {
        while self.remaining.load(Ordering::Acquire) > 0 {
            // `notify_one` keeps a permit when nobody waits yet, so a fill
            // between the check and this await is not missed.
            self.done.notified().await;
        }
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.drain(..).map(|slot| slot.unwrap_or_else(|| Err(Error::Internal("no answer".into())))).collect()
    }
}

/// Where one request's answer goes.
pub struct ReplyTo {
    batch: Option<Arc<Completion>>,
    index: usize,
}

impl ReplyTo {
    /// Answers the request. Never fails: a caller that stopped waiting
    /// simply never reads it.
    pub fn send(mut self, answer: Answer) {
        if let Some(batch) = self.batch.take() {
            batch.fill(self.index, answer);
        }
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            batch.fill(self.index, Err(Error::Internal("the account's shard worker stopped before answering".into())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_caller_gets_every_answer_in_order_whoever_answers_first() {
        let (completion, mut replies) = Completion::new(3);
        let last = replies.pop().unwrap();
        let middle = replies.pop().unwrap();
        let first = replies.pop().unwrap();
        let waiter = tokio::spawn({
            let completion = Arc::clone(&completion);
            async move { completion.wait().await }
        });
        last.send(Err(Error::Overloaded));
        drop(middle);
        first.send(Err(Error::ShuttingDown));
        let answers = waiter.await.unwrap();
        assert_eq!(answers[0], Err(Error::ShuttingDown));
        assert_eq!(answers[1].as_ref().unwrap_err().code(), "internal");
        assert_eq!(answers[2], Err(Error::Overloaded));
    }

    #[tokio::test]
    async fn an_empty_batch_is_complete_at_once() {
        let (completion, replies) = Completion::new(0);
        assert!(replies.is_empty());
        assert!(completion.wait().await.is_empty());
    }
}
