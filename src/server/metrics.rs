//! Request counters and latency histograms for `/metrics`, rendered as
//! Prometheus text with the node's own figures (resident actors, group
//! sizes, recharge outcomes) and the webhook backlog.
//!
//! Updated once per batch, under the lock of one of several stripes (each
//! thread keeps to its own, so threads do not wait on one another); a
//! batch's requests share its latency. Rendering adds the stripes up.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::stats::{GROUP_BUCKETS, StatsSnapshot};

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    count: u64,
    sum_seconds: f64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(&'static str, &'static str), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

impl Inner {
    fn add(&mut self, other: &Inner) {
        for (key, n) in &other.requests {
            *self.requests.entry(*key).or_default() += n;
        }
        for (op, h) in &other.latency {
            let mine = self.latency.entry(op).or_default();
            for (a, b) in mine.buckets.iter_mut().zip(&h.buckets) {
                *a += b;
            }
            mine.count += h.count;
            mine.sum_seconds += h.sum_seconds;
        }
    }
}

/// Stripes of the request figures: more than the threads that record.
const STRIPES: usize = 16;

thread_local! {
    /// This thread's stripe, handed out in turn.
    static STRIPE: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) as usize % STRIPES
    };
}

#[derive(Default)]
pub struct Metrics {
    stripes: [Mutex<Inner>; STRIPES],
    /// `Authorize` stream messages read, and the node batches they went in
    /// (messages ready together go as one).
    stream_messages: AtomicU64,
    stream_batches: AtomicU64,
}

/// Figures read from elsewhere when `/metrics` is rendered.
#[derive(Default)]
pub struct Gauges {
    pub resident_accounts: usize,
    pub storage_failed: bool,
    /// Storage failures and recoveries since start.
    pub storage_events: (u64, u64),
    /// Requests in the node now.
    pub in_flight: usize,
    pub node: StatsSnapshot,
    pub webhook_backlog: u64,
    pub webhook_delivered: u64,
    pub webhook_failed_attempts: u64,
    pub webhook_dead_letters: u64,
    /// Seconds since the server started.
    pub uptime_seconds: u64,
    /// The process's own figures (`None` where /proc cannot be read).
    pub process: Option<Process>,
    /// Clustered: each shard group as this node sees it, and its requests.
    pub cluster: Option<ClusterGauges>,
}

/// A clustered node's figures.
#[derive(Clone, Debug, Default)]
pub struct ClusterGauges {
    /// Each shard group as this node sees it.
    pub groups: Vec<crate::cluster::groups::GroupStatus>,
    /// Requests forwarded to other nodes, so far.
    pub forwarded: u64,
    /// Requests waiting now for their group to have a leader.
    pub waiting: usize,
    /// The controller's map as this node applied it: its version and the
    /// moves planned (0, 0: no controller, or no cluster made yet).
    pub map_version: u64,
    pub moves_planned: u64,
}

/// The standard Prometheus process metrics, read from `/proc/self` (Linux).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
}

impl Process {
    pub fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may hold spaces and parentheses: fields start
        // after its last ')', with the state (field 3) first.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        // SAFETY: sysconf and getrlimit only read process-wide values into
        // what they are given.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let (ticks, page) = (ticks.max(1) as f64, page.max(1) as u64);
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as above; `limit` is a valid rlimit to fill.
        let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 0 };
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok())))
            .unwrap_or(0);
        Some(Process {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            resident_bytes: field(24)? * page,
            virtual_bytes: field(23)?,
            threads: field(20)?,
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
            max_fds,
            start_time_seconds: boot as f64 + field(22)? as f64 / ticks,
        })
    }
}

impl Metrics {
    /// Every stripe added up.
    fn sum(&self) -> Inner {
        let mut all = Inner::default();
        for stripe in &self.stripes {
            all.add(&stripe.lock().unwrap_or_else(|e| e.into_inner()));
        }
        all
    }

    /// Requests answered since start, and how many of them were refused.
    pub fn totals(&self) -> (u64, u64) {
        let inner = self.sum();
        let all = inner.requests.values().sum();
        let refused = inner.requests.iter().filter(|((_, code), _)| *code != "ok").map(|(_, n)| n).sum();
        (all, refused)
    }

    /// One batch: `(op, code)` per request (`code` is "ok" when accepted),
    /// and the batch's latency.
    pub fn record(&self, results: &[(&'static str, &'static str)], elapsed: Duration) {
        let stripe = STRIPE.with(|s| *s);
        let mut inner = self.stripes[stripe].lock().unwrap_or_else(|e| e.into_inner());
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(LATENCY_BUCKETS.len());
        for &(op, code) in results {
            *inner.requests.entry((op, code)).or_default() += 1;
            let h = inner.latency.entry(op).or_default();
            h.buckets[bucket] += 1;
            h.count += 1;
            h.sum_seconds += seconds;
        }
    }

    /// `messages` stream messages went to the node as one batch.
    pub fn record_stream(&self, messages: usize) {
        self.stream_messages.fetch_add(messages as u64, Ordering::Relaxed);
        self.stream_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests of `op` ended with `code` so far.
    pub fn count(&self, op: &str, code: &str) -> u64 {
        let inner = self.sum();
        inner.requests.iter().filter(|((o, c), _)| *o == op && *c == code).map(|(_, n)| n).sum()
    }

    pub fn render(&self, g: &Gauges) -> String {
        let inner = self.sum();
        let mut out = String::with_capacity(4096);
        let _ =
            writeln!(out, "# HELP prepaid_requests_total Requests by operation and result code (\"ok\": accepted).");
        let _ = writeln!(out, "# TYPE prepaid_requests_total counter");
        for ((op, code), n) in &inner.requests {
            let _ = writeln!(out, "prepaid_requests_total{{op=\"{op}\",code=\"{code}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP prepaid_request_seconds Time from a call's arrival to its reply, by operation.");
        let _ = writeln!(out, "# TYPE prepaid_request_seconds histogram");
        for (op, h) in &inner.latency {
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i];
                let _ = writeln!(out, "prepaid_request_seconds_bucket{{op=\"{op}\",le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "prepaid_request_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "prepaid_request_seconds_sum{{op=\"{op}\"}} {}", h.sum_seconds);
            let _ = writeln!(out, "prepaid_request_seconds_count{{op=\"{op}\"}} {}", h.count);
        }
        let _ = writeln!(
            out,
            "# HELP prepaid_group_accounts Accounts written per journal group (one WriteBatch, one sync)."
        );
        let _ = writeln!(out, "# TYPE prepaid_group_accounts histogram");
        for (i, bound) in GROUP_BUCKETS.iter().enumerate() {
            // Empty buckets when the node is gone (stopping): zeros.
            let n = g.node.group_buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "prepaid_group_accounts_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "prepaid_group_accounts_bucket{{le=\"+Inf\"}} {}", g.node.groups);
        let _ = writeln!(out, "prepaid_group_accounts_sum {}", g.node.group_accounts);
        let _ = writeln!(out, "prepaid_group_accounts_count {}", g.node.groups);
        let gauges: [(&str, &str, &str, u64); 16] = [
            (
                "prepaid_stream_messages_total",
                "counter",
                "Authorize stream messages read.",
                self.stream_messages.load(Ordering::Relaxed),
            ),
            (
                "prepaid_stream_batches_total",
                "counter",
                "Node batches the stream messages went in (messages ready together go as one).",
                self.stream_batches.load(Ordering::Relaxed),
            ),
            ("prepaid_resident_accounts", "gauge", "Account actors in memory.", g.resident_accounts as u64),
            (
                "prepaid_storage_failed",
                "gauge",
                "1 while storage is failed (writes refused, reads served).",
                g.storage_failed as u64,
            ),
            ("prepaid_storage_failures_total", "counter", "Storage failures since start.", g.storage_events.0),
            (
                "prepaid_storage_recoveries_total",
                "counter",
                "Recoveries from a storage failure since start.",
                g.storage_events.1,
            ),
            ("prepaid_in_flight", "gauge", "Requests in the node now (node.max_in_flight).", g.in_flight as u64),
            (
                "prepaid_recharge_charged_total",
                "counter",
                "Recharge attempts the gateway charged.",
                g.node.recharge_charged,
            ),
            (
                "prepaid_recharge_declined_total",
                "counter",
                "Recharge attempts the gateway declined.",
                g.node.recharge_declined,
            ),
            (
                "prepaid_recharge_unknown_total",
                "counter",
                "Gateway calls with no answer (asked again, same key).",
                g.node.recharge_unknown,
            ),
            (
                "prepaid_idempotency_resident_keys",
                "gauge",
                "Idempotency records in memory (node.idempotency_resident_keys per account at most, once durable).",
                g.node.idempotency_resident,
            ),
            (
                "prepaid_idempotency_lookups_total",
                "counter",
                "Idempotency keys looked up in the store (not in memory, not above the account's largest key).",
                g.node.idempotency_lookups,
            ),
            (
                "prepaid_webhook_backlog",
                "gauge",
                "Events durable but not yet delivered to every receiver.",
                g.webhook_backlog,
            ),
            (
                "prepaid_webhook_delivered_total",
                "counter",
                "Webhook deliveries a receiver accepted.",
                g.webhook_delivered,
            ),
            (
                "prepaid_webhook_failed_attempts_total",
                "counter",
                "Webhook tries that failed (retried).",
                g.webhook_failed_attempts,
            ),
            (
                "prepaid_webhook_dead_letters_total",
                "counter",
                "Webhook events given up on after max_attempts.",
                g.webhook_dead_letters,
            ),
        ];
        for (name, kind, help, value) in gauges {
            series(&mut out, name, kind, help, value);
        }
        if let Some(c) = &g.cluster {
            cluster(&mut out, c);
        }
        let _ = writeln!(out, "# HELP prepaid_uptime_seconds Seconds since the server started.");
        let _ = writeln!(out, "# TYPE prepaid_uptime_seconds gauge");
        let _ = writeln!(out, "prepaid_uptime_seconds {}", g.uptime_seconds);
        let _ = writeln!(out, "# HELP prepaid_build_info The running build: 1, labelled with its version.");
        let _ = writeln!(out, "# TYPE prepaid_build_info gauge");
        let _ = writeln!(out, "prepaid_build_info{{version=\"{}\"}} 1", crate::VERSION);
        if let Some(p) = g.process {
            let process: [(&str, &str, &str, f64); 7] = [
                ("process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.", p.cpu_seconds),
                ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", p.resident_bytes as f64),
                ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", p.virtual_bytes as f64),
                ("process_threads", "gauge", "Threads of the process.", p.threads as f64),
                ("process_open_fds", "gauge", "Open file descriptors.", p.open_fds as f64),
                ("process_max_fds", "gauge", "The most file descriptors the process may open.", p.max_fds as f64),
                (
                    "process_start_time_seconds",
                    "gauge",
                    "When the process started, in seconds since the Unix epoch.",
                    p.start_time_seconds,
                ),
            ];
            for (name, kind, help, value) in process {
                series(&mut out, name, kind, help, value);
            }
        }
        out
    }
}

/// One unlabelled series with its HELP and TYPE lines.
fn series(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// A clustered node's series: per shard group as it sees it, the requests
/// it forwarded and those waiting for a leader.
fn cluster(out: &mut String, c: &ClusterGauges) {
    type Figure = fn(&crate::cluster::groups::GroupStatus) -> u64;
    let per_group: [(&str, &str, Figure); 5] = [
        ("prepaid_cluster_group_serving", "1 while this node leads the group and serves its shards.", |g| {
            u64::from(g.serving)
        }),
        ("prepaid_cluster_group_member", "1 while this node holds a member of the group (the map's voters).", |g| {
            u64::from(g.member)
        }),
        ("prepaid_cluster_group_leader", "The group's leader as this node knows it (node id; 0: none).", |g| {
            g.leader.unwrap_or(0)
        }),
        ("prepaid_cluster_group_term", "The group's Raft term as this node knows it.", |g| g.term),
        (
            "prepaid_cluster_group_apply_lag",
            "Entries in this node's log of the group not yet applied to its state.",
            |g| g.last_log_index.unwrap_or(0).saturating_sub(g.last_applied.unwrap_or(0)),
        ),
    ];
    for (name, help, figure) in per_group {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for g in &c.groups {
            let _ = writeln!(out, "{name}{{group=\"{}\"}} {}", g.group, figure(g));
        }
    }
    series(
        out,
        "prepaid_cluster_forwarded_total",
        "counter",
        "Requests forwarded to the node leading their group.",
        c.forwarded,
    );
    series(
        out,
        "prepaid_cluster_waiting",
        "gauge",
        "Requests waiting for their group to have a leader (cluster.leaderless_buffer at most).",
        c.waiting as u64,
    );
    series(
        out,
        "prepaid_cluster_map_version",
        "gauge",
        "The shard map's version as this node applied it.",
        c.map_version,
    );
    series(
        out,
        "prepaid_cluster_moves_planned",
        "gauge",
        "Group member moves planned and not yet run, as this node's map has them.",
        c.moves_planned,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.record(&[("debit", "ok"), ("debit", "insufficient_funds")], Duration::from_micros(300));
        m.record(&[("debit", "ok")], Duration::from_secs(3));
        m.record_stream(3);
        m.record_stream(1);
        let text = m.render(&Gauges {
            resident_accounts: 7,
            storage_failed: false,
            storage_events: (1, 1),
            in_flight: 3,
            node: StatsSnapshot { group_buckets: vec![0; GROUP_BUCKETS.len() + 1], ..Default::default() },
            webhook_backlog: 2,
            webhook_delivered: 0,
            webhook_failed_attempts: 0,
            webhook_dead_letters: 0,
            uptime_seconds: 42,
            process: Process::read(),
            cluster: None,
        });
        assert!(text.contains("prepaid_requests_total{op=\"debit\",code=\"ok\"} 2"), "{text}");
        assert!(!text.contains("prepaid_cluster_"), "a node alone has no cluster series");
        assert!(text.contains("prepaid_requests_total{op=\"debit\",code=\"insufficient_funds\"} 1"));
        assert!(text.contains("prepaid_request_seconds_bucket{op=\"debit\",le=\"0.0005\"} 2"));
        assert!(text.contains("prepaid_request_seconds_bucket{op=\"debit\",le=\"1\"} 2"));
        assert!(text.contains("prepaid_request_seconds_bucket{op=\"debit\",le=\"+Inf\"} 3"));
        assert!(text.contains("prepaid_resident_accounts 7"));
        assert!(
            text.contains("prepaid_stream_messages_total 4\n") && text.contains("prepaid_stream_batches_total 2\n")
        );
        assert!(text.contains("prepaid_storage_recoveries_total 1") && text.contains("prepaid_in_flight 3"), "{text}");
        assert!(text.contains("prepaid_webhook_backlog 2"));
        assert!(text.contains("prepaid_uptime_seconds 42"), "{text}");
        assert!(text.contains(&format!("prepaid_build_info{{version=\"{}\"}} 1", crate::VERSION)), "{text}");
        assert_eq!(m.count("debit", "ok"), 2);
        // Recorded from other threads (other stripes), added up alike.
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| m.record(&[("debit", "ok")], Duration::from_micros(300)));
            }
        });
        assert_eq!(m.count("debit", "ok"), 6);
        assert_eq!(m.totals(), (7, 1));
        // Clustered: a series per group, and the forwarded count.
        use crate::cluster::groups::GroupStatus;
        let group = |group, serving, leader, applied| GroupStatus {
            group,
            first_shard: group * 16,
            last_shard: group * 16 + 15,
            member: true,
            serving,
            leader,
            term: 3,
            last_log_index: Some(40),
            last_applied: applied,
            voters: vec![1, 2, 3],
        };
        let groups = vec![group(0, true, Some(2), Some(40)), group(1, false, None, Some(37))];
        let cluster = ClusterGauges { groups, forwarded: 9, waiting: 2, map_version: 7, moves_planned: 3 };
        let clustered = m.render(&Gauges { cluster: Some(cluster), ..Gauges::default() });
        for line in [
            "prepaid_cluster_group_serving{group=\"0\"} 1",
            "prepaid_cluster_group_serving{group=\"1\"} 0",
            "prepaid_cluster_group_leader{group=\"0\"} 2",
            "prepaid_cluster_group_leader{group=\"1\"} 0",
            "prepaid_cluster_group_term{group=\"1\"} 3",
            "prepaid_cluster_group_apply_lag{group=\"0\"} 0",
            "prepaid_cluster_group_apply_lag{group=\"1\"} 3",
            "prepaid_cluster_forwarded_total 9",
            "prepaid_cluster_waiting 2",
            "prepaid_cluster_group_member{group=\"1\"} 1",
            "prepaid_cluster_map_version 7",
            "prepaid_cluster_moves_planned 3",
        ] {
            assert!(clustered.contains(&format!("{line}\n")), "{line}: {clustered}");
        }
        // The process's own figures, from /proc (this test's process).
        let p = Process::read().expect("/proc/self is readable");
        assert!(p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes, "{p:?}");
        assert!(p.threads >= 1 && p.open_fds >= 3 && p.max_fds >= p.open_fds, "{p:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(p.start_time_seconds > 1.6e9 && p.start_time_seconds <= now + 1.0, "{p:?}");
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "), "{text}");
        assert!(text.contains("process_resident_memory_bytes ") && text.contains("process_open_fds "), "{text}");
    }
}
