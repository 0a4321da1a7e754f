//! Counters the node keeps about itself, read by `/metrics`: group commit
//! sizes and recharge outcomes. Plain atomics, updated off the hot path
//! (once per group, once per gateway answer).

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the group-size histogram buckets (accounts per group);
/// the last bucket is everything above.
pub const GROUP_BUCKETS: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

#[derive(Default)]
pub struct NodeStats {
    group_buckets: [AtomicU64; GROUP_BUCKETS.len() + 1],
    groups: AtomicU64,
    group_accounts: AtomicU64,
    pub recharge_charged: AtomicU64,
    pub recharge_declined: AtomicU64,
    pub recharge_unknown: AtomicU64,
    /// Idempotency records resident in memory, over every cell.
    pub idempotency_resident: AtomicU64,
    /// Idempotency keys looked up in the store (not resident and not above
    /// the account's largest stored key).
    pub idempotency_lookups: AtomicU64,
}

/// A point-in-time copy, for rendering.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Cumulative counts per bucket of `GROUP_BUCKETS`, then `+Inf`.
    pub group_buckets: Vec<u64>,
    pub groups: u64,
    pub group_accounts: u64,
    pub recharge_charged: u64,
    pub recharge_declined: u64,
    pub recharge_unknown: u64,
    pub idempotency_resident: u64,
    pub idempotency_lookups: u64,
}

impl NodeStats {
    pub fn record_group(&self, accounts: usize) {
        let n = accounts as u64;
        let bucket = GROUP_BUCKETS.iter().position(|&b| n <= b).unwrap_or(GROUP_BUCKETS.len());
        self.group_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.group_accounts.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut cumulative = 0;
        let group_buckets = self
            .group_buckets
            .iter()
            .map(|b| {
                cumulative += b.load(Ordering::Relaxed);
                cumulative
            })
            .collect();
        StatsSnapshot {
            group_buckets,
            groups: self.groups.load(Ordering::Relaxed),
            group_accounts: self.group_accounts.load(Ordering::Relaxed),
            recharge_charged: self.recharge_charged.load(Ordering::Relaxed),
            recharge_declined: self.recharge_declined.load(Ordering::Relaxed),
            recharge_unknown: self.recharge_unknown.load(Ordering::Relaxed),
            idempotency_resident: self.idempotency_resident.load(Ordering::Relaxed),
            idempotency_lookups: self.idempotency_lookups.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_histogram_is_cumulative() {
        let s = NodeStats::default();
        s.record_group(1);
        s.record_group(3);
        s.record_group(10_000);
        let snap = s.snapshot();
        assert_eq!(snap.group_buckets[0], 1);
        assert_eq!(snap.group_buckets[2], 2);
        assert_eq!(*snap.group_buckets.last().unwrap(), 3);
        assert_eq!(snap.group_buckets[GROUP_BUCKETS.len() - 1], 2);
        assert_eq!((snap.groups, snap.group_accounts), (3, 10_004));
    }
}
