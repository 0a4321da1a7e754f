//! The node's storage health, and the epoch that keeps memory honest.
//!
//! When a write or a sync fails, memory is ahead of disk: the actors of the
//! accounts in that group hold effects that were never made durable (and
//! were never acknowledged). The node then stops writing and acknowledging,
//! bumps the **epoch**, and every actor that sees a new epoch throws its
//! memory away and reloads its account from the store before it answers
//! anything — reads are served from what is durable. The journal writer
//! refuses every submission made in an older epoch, so nothing applied on
//! top of lost memory can reach the disk. When the store works again the
//! writer marks recovery, which bumps the epoch once more (the store may now
//! hold writes it refused to confirm before, such as a group whose sync
//! failed), and actors reload again before their first write.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
pub struct Health {
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
    epoch: AtomicU64,
    failures: AtomicU64,
    recoveries: AtomicU64,
}

impl Health {
    /// Storage failed: from now on nothing is written or acknowledged until
    /// `recover`. The first reason is kept.
    pub fn fail(&self, reason: &str) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason.to_string());
            tracing::error!(%reason, "storage failed: writes are refused and reads served until a probe write lands");
            self.failures.fetch_add(1, Ordering::Relaxed);
            // Bumped before `failed` is set, under the lock: whoever sees the
            // failure sees the new epoch.
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.failed.store(true, Ordering::Release);
    }

    /// Storage works again (a probe write and sync succeeded).
    pub fn recover(&self) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = slot.take() {
            tracing::info!(was = %reason, "storage recovered: writing again");
            self.recoveries.fetch_add(1, Ordering::Relaxed);
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.failed.store(false, Ordering::Release);
    }

    /// A clustered node gained or lost the lead of a shard group, or a
    /// commit's outcome there is not known: memory may no longer be what
    /// the group committed. Moves the epoch without failing storage, so
    /// every cell reloads from the store before it answers again and the
    /// writer refuses what was made from the old memory.
    pub fn moved(&self) {
        let _slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Why storage failed, if it is failed now.
    pub fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes on every failure and every recovery.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Failures and recoveries since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.failures.load(Ordering::Relaxed), self.recoveries.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_and_recovery_each_move_the_epoch_once() {
        let h = Health::default();
        assert_eq!((h.failure(), h.epoch()), (None, 0));
        h.fail("disk full");
        h.fail("second reason");
        assert_eq!((h.failure().as_deref(), h.epoch()), (Some("disk full"), 1));
        h.recover();
        h.recover();
        assert_eq!((h.failure(), h.epoch(), h.counts()), (None, 2, (1, 1)));
        h.fail("again");
        assert_eq!((h.failure().as_deref(), h.epoch()), (Some("again"), 3));
    }

    #[test]
    fn a_leadership_move_moves_the_epoch_and_fails_nothing() {
        let h = Health::default();
        h.moved();
        assert_eq!((h.failure(), h.epoch(), h.counts()), (None, 1, (0, 0)));
        h.fail("disk full");
        h.moved();
        assert_eq!((h.failure().as_deref(), h.epoch()), (Some("disk full"), 3), "a failure stays until recovery");
    }
}
