//! `prepaid bench-raft`: what shard Raft groups cost in one process, idle
//! and busy, to choose between a group per shard and several shards per
//! group (issue 13). Every member is in this process, on the in-memory
//! store, reaching the others through `LocalNet` (no sockets): the figures
//! are openraft's own cost per group — tasks, timers, heartbeats — not the
//! network's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prepaid::cluster::ShardEntry;
use prepaid::cluster::local::{LocalNet, LocalRaft};
use prepaid::cluster::memory::{MemoryLog, MemoryShard};

pub struct RaftArgs {
    pub groups: u64,
    pub members: u64,
    pub seconds: u64,
    pub heartbeat_ms: u64,
    pub json: bool,
}

/// CPU seconds used by this process so far, and its resident bytes (the
/// figures /metrics reports as process_*).
fn usage() -> (f64, u64) {
    prepaid::server::metrics::Process::read().map_or((0.0, 0), |p| (p.cpu_seconds, p.resident_bytes))
}

pub async fn run(args: RaftArgs) -> Result<(), String> {
    let config = openraft::Config {
        heartbeat_interval: args.heartbeat_ms,
        election_timeout_min: args.heartbeat_ms * 3,
        election_timeout_max: args.heartbeat_ms * 6,
        ..Default::default()
    };
    let config = Arc::new(config.validate().map_err(|e| e.to_string())?);
    let net = LocalNet::<prepaid::cluster::memory::MemoryShard>::default();
    let (_, rss_start) = usage();
    let mut leaders: Vec<LocalRaft> = Vec::new();
    let mut all: Vec<LocalRaft> = Vec::new();
    eprintln!(
        "prepaid bench-raft: {} groups of {} members, heartbeat {} ms",
        args.groups, args.members, args.heartbeat_ms
    );
    for g in 0..args.groups {
        let ids: Vec<u64> = (0..args.members).map(|m| g * 100 + m + 1).collect();
        let mut members = BTreeMap::new();
        for &id in &ids {
            let raft =
                LocalRaft::new(id, Arc::clone(&config), net.factory(id), MemoryLog::default(), MemoryShard::default())
                    .await
                    .map_err(|e| e.to_string())?;
            net.add(id, raft.clone());
            all.push(raft.clone());
            members.insert(id, raft);
        }
        let nodes: BTreeMap<u64, openraft::BasicNode> = ids.iter().map(|&id| (id, Default::default())).collect();
        members[&ids[0]].initialize(nodes).await.map_err(|e| e.to_string())?;
        leaders.push(members[&ids[0]].clone());
    }
    // Every group elected: its first member writes once it leads.
    for raft in &leaders {
        raft.wait(Some(Duration::from_secs(60)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| e.to_string())?;
    }
    let (cpu0, rss_ready) = usage();
    let msgs0 = net.messages();
    let idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let idle_s = idle.elapsed().as_secs_f64();
    let (cpu1, _) = usage();
    let msgs1 = net.messages();
    // Busy: every group's leader writes entries back to back for the same
    // time (empty entries: the cost of replication, not of the ledger).
    let busy = Instant::now();
    let deadline = busy + Duration::from_secs(args.seconds);
    let mut writers = Vec::new();
    for raft in &all {
        let raft = raft.clone();
        writers.push(tokio::spawn(async move {
            let mut written = 0u64;
            if raft.current_leader().await != Some(raft_id(&raft).await) {
                return 0;
            }
            while Instant::now() < deadline {
                if raft.client_write(ShardEntry::default()).await.is_err() {
                    break;
                }
                written += 1;
            }
            written
        }));
    }
    let mut written = 0;
    for w in writers {
        written += w.await.map_err(|e| e.to_string())?;
    }
    let busy_s = busy.elapsed().as_secs_f64();
    let (cpu2, rss_end) = usage();
    let msgs2 = net.messages();
    for raft in &all {
        let _ = raft.shutdown().await;
    }
    let groups = args.groups as f64;
    let idle_cpu = (cpu1 - cpu0) / idle_s;
    let idle_msgs = (msgs1 - msgs0) as f64 / idle_s;
    let busy_cpu = (cpu2 - cpu1) / busy_s;
    let entries = written as f64 / busy_s;
    let rss_per_group = rss_ready.saturating_sub(rss_start) / args.groups.max(1);
    if args.json {
        say!(
            "{}",
            serde_json::json!({
                "groups": args.groups, "members": args.members, "heartbeat_ms": args.heartbeat_ms,
                "idle_cpu_cores": idle_cpu, "idle_messages_per_s": idle_msgs,
                "idle_cpu_ms_per_group_s": idle_cpu * 1e3 / groups,
                "rss_per_group_bytes": rss_per_group,
                "busy_entries_per_s": entries, "busy_cpu_cores": busy_cpu,
                "busy_messages_per_s": (msgs2 - msgs1) as f64 / busy_s, "rss_end_bytes": rss_end,
            })
        );
    } else {
        say!(
            "idle: {idle_cpu:.3} cores ({:.3} ms of CPU per group per second), {idle_msgs:.0} messages/s, rss {rss_per_group} B per group of {}",
            idle_cpu * 1e3 / groups,
            args.members
        );
        say!(
            "busy: {entries:.0} entries/s committed over {} groups, {busy_cpu:.2} cores, {:.0} messages/s",
            args.groups,
            (msgs2 - msgs1) as f64 / busy_s
        );
    }
    Ok(())
}

async fn raft_id(raft: &LocalRaft) -> u64 {
    raft.wait(None).metrics(|_| true, "id").await.map_or(0, |m| m.id)
}
