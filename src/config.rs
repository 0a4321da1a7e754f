//! A node's configuration: every field documented, every default in
//! `config/default.toml` (a test keeps the two equal), environment overrides
//! for what an operator changes per machine.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ledger::LedgerConfig;

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// After the group holding it is synced to disk (group commit).
    #[default]
    Sync,
    /// After it is applied in memory; groups are synced at most every
    /// `flush_interval_ms`, so a crash can lose that long a window of usage
    /// debits. Money in (purchases, grants, payments, recharges) is always
    /// synced before it is acknowledged.
    Async,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// Where the node keeps its RocksDB database. Empty: a new temporary
    /// directory, removed when the node stops (for demos and tests).
    pub data_dir: PathBuf,
    /// Shards accounts are spread over (`stable_hash(id) mod shards`). A
    /// shard is a set of accounts a worker hosts; once shards move between nodes, the number is
    /// fixed when a cluster is created.
    pub shards: u32,
    /// Shard workers: each owns a fixed set of shards (shard `s` belongs to
    /// worker `s mod workers`) and hosts their accounts. 0: one per core
    /// (at most `shards`).
    pub workers: u32,
    pub durability: Durability,
    /// `async` mode: the longest time between syncs.
    pub flush_interval_ms: u64,
    /// Most accounts written in one group (one WriteBatch, one sync).
    pub group_max_accounts: usize,
    /// Submissions waiting for the journal writer before senders wait.
    pub writer_queue: usize,
    /// Requests for one account in one worker message, or waiting for it
    /// while it loads, before it answers `overloaded`.
    pub account_queue_max: usize,
    /// Most requests in one batch call.
    pub max_batch: usize,
    /// Accounts kept in memory; past it, the least recently used idle ones
    /// are passivated (their state is on disk; the next request reloads it).
    pub max_resident_accounts: usize,
    /// An account untouched this long is passivated.
    pub idle_passivate_ms: u64,
    /// Most journal records one statement reads (an account's journal
    /// from its start up to the range's end), and most account states one
    /// page of an account list reads (`Node::statement`, `Node::accounts`).
    pub statement_records_max: u64,
    /// How often timers (hold and grant expiry, notices, past due, recharge
    /// retries) are checked.
    pub timer_poll_ms: u64,
    /// Longest wait for one payment-gateway call before its outcome counts
    /// as unknown.
    pub recharge_charge_timeout_ms: u64,
    /// Wait before asking the gateway again (same key) after no answer.
    pub recharge_retry_unknown_ms: u64,
    /// Events kept for subscribers; one that falls further behind is told
    /// how many it missed.
    pub event_buffer: usize,
    /// Requests taken and not yet answered, over the whole node; past it a
    /// request is answered `overloaded` at once (a bound on memory under
    /// overload, beside `account_queue_max` per account). Also the longest
    /// queue a request waits behind: about peak throughput × the latency
    /// accepted.
    pub max_in_flight: usize,
    /// After a storage failure: how often the journal writer asks the store
    /// whether writing works again (a probe write, synced).
    pub storage_retry_ms: u64,
    /// RocksDB's write buffer (memtable) per column family, in MiB: memory
    /// for recent writes (up to about twice this per column family), and
    /// the free space RocksDB waits for before it resumes after a full disk.
    pub memtable_mb: u32,
    /// The log tail not yet checkpointed into tables, in bytes: a
    /// checkpoint starts at half of it and writes wait at all of it. Bounds
    /// memory for the tail and the log a restart replays.
    pub checkpoint_log_bytes_max: u64,
    /// A checkpoint starts at least this often while anything is unwritten
    /// to tables.
    pub checkpoint_interval_ms: u64,
    /// Idempotency records an account keeps in memory once they are
    /// durable, newest first; the rest of the window stays in the store and
    /// is looked up when a key that is not in memory may be there (keys
    /// that grow per account never are). Bounds memory whatever the request
    /// rate: a record is ~100–250 bytes.
    pub idempotency_resident_keys: usize,
}

/// Bounds of `node.checkpoint_log_bytes_max`: 1 MiB to 16 GiB.
pub const CHECKPOINT_LOG_BYTES: std::ops::RangeInclusive<u64> = (1 << 20)..=(16 << 30);
/// Bounds of `node.checkpoint_interval_ms`: 10 ms to one hour.
pub const CHECKPOINT_INTERVAL_MS: std::ops::RangeInclusive<u64> = 10..=3_600_000;
/// Bounds of `node.idempotency_resident_keys`.
pub const IDEMPOTENCY_RESIDENT_KEYS: std::ops::RangeInclusive<usize> = 1..=1_000_000;

/// Bounds of the count and duration settings without a rule of their
/// own: `(section.field, least, most)`. Past them a node cannot run (a
/// queue, a broadcast buffer or a semaphore sized by the setting is made
/// at start: `writer_queue = 2^62` panicked, `event_buffer = 10^11` ate
/// memory) or a typo would stall it for years. Durations in milliseconds.
pub const SETTING_BOUNDS: &[(&str, u64, u64)] = &[
    ("node.group_max_accounts", 1, 1_000_000),
    ("node.writer_queue", 1, 16_777_216),
    ("node.account_queue_max", 1, 10_000_000),
    ("node.max_batch", 1, 1_000_000),
    ("node.max_resident_accounts", 1, 1_000_000_000),
    ("node.statement_records_max", 1, 1_000_000_000),
    ("node.event_buffer", 1, 4_194_304),
    ("node.max_in_flight", 1, 100_000_000),
    ("node.flush_interval_ms", 1, 60_000),
    ("node.idle_passivate_ms", 1, 2_592_000_000),
    ("node.timer_poll_ms", 1, 86_400_000),
    ("node.recharge_charge_timeout_ms", 1, 600_000),
    ("node.recharge_retry_unknown_ms", 1, 86_400_000),
    ("node.storage_retry_ms", 1, 3_600_000),
    ("server.max_message_bytes", 1, 268_435_456),
    ("server.max_connections", 1, 1_000_000),
    ("server.stream_in_flight", 1, 65_536),
    ("server.max_streams_per_connection", 1, 1_000_000),
    ("server.shutdown_grace_ms", 0, 3_600_000),
    ("webhooks.max_attempts", 1, 1_000),
    ("webhooks.backoff_ms", 1, 86_400_000),
    ("webhooks.backoff_max_ms", 1, 86_400_000),
    ("webhooks.timeout_ms", 1, 600_000),
    ("webhooks.dead_letters_kept", 1, 10_000_000),
    ("webhooks.cursor_record_ms", 10, 60_000),
    ("cluster.shards_per_group", 1, 65_536),
    ("cluster.replicas", 1, 9),
    ("cluster.heartbeat_ms", 10, 60_000),
    ("cluster.election_timeout_min_ms", 20, 599_999),
    ("cluster.election_timeout_max_ms", 21, 600_000),
    ("cluster.commit_timeout_ms", 10, 600_000),
    ("cluster.leaderless_wait_ms", 0, 600_000),
    ("cluster.leaderless_buffer", 1, 10_000_000),
    ("cluster.snapshot_log_entries", 10, 100_000_000),
    ("cluster.snapshot_timeout_ms", 100, 3_600_000),
];

/// Most shard workers a node runs.
pub const MAX_WORKERS: u32 = 1_024;

impl NodeSettings {
    /// The shard workers the node runs: `workers`, or one per core when 0;
    /// never more than there are shards.
    pub fn worker_count(&self) -> usize {
        let wanted = match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        };
        wanted.clamp(1, self.shards.max(1) as usize)
    }
}

impl Default for NodeSettings {
    fn default() -> NodeSettings {
        NodeSettings {
            data_dir: PathBuf::new(),
            shards: 256,
            workers: 0,
            durability: Durability::Sync,
            flush_interval_ms: 10,
            group_max_accounts: 4_096,
            writer_queue: 65_536,
            account_queue_max: 10_000,
            max_batch: 10_000,
            max_resident_accounts: 1_000_000,
            idle_passivate_ms: 60_000,
            statement_records_max: 1_000_000,
            timer_poll_ms: 100,
            recharge_charge_timeout_ms: 30_000,
            recharge_retry_unknown_ms: 2_000,
            event_buffer: 65_536,
            max_in_flight: 20_000,
            storage_retry_ms: 1_000,
            memtable_mb: 64,
            checkpoint_log_bytes_max: 64 << 20,
            checkpoint_interval_ms: 30_000,
            idempotency_resident_keys: 8,
        }
    }
}

/// What an API token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Check access, debit, hold, capture, release, read balances: what a
    /// platform service authorizing usage needs, and nothing that mints money.
    Authorize,
    /// Everything.
    Admin,
}

/// One API token. The secret is never logged (`Debug` hides it).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// Who holds it, for logs and metrics.
    pub name: String,
    pub role: Role,
    pub token: String,
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSpec").field("name", &self.name).field("role", &self.role).field("token", &"***").finish()
    }
}

/// `prepaid serve`: the two listeners and their bounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// The gRPC API. Env: PREPAID_GRPC_ADDR.
    pub grpc_addr: String,
    /// The HTTP ops side: /health, /metrics, the JSON admin API. Env:
    /// PREPAID_HTTP_ADDR.
    pub http_addr: String,
    /// Largest request message, in bytes (gRPC and admin JSON bodies).
    pub max_message_bytes: usize,
    /// Open connections per listener; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Batches in flight on one `Authorize` stream; a client that does not
    /// read its replies stops being read from once this many are pending.
    pub stream_in_flight: usize,
    /// Calls (HTTP/2 streams) open at once on one gRPC connection; a client
    /// waits for one to finish before it may open more.
    pub max_streams_per_connection: u32,
    /// Threads of `prepaid serve`'s network side (HTTP/2, decoding, the
    /// overload door), apart from the node's actors, so a node busy to its
    /// bound still reads calls and sheds them at once. 1..=64.
    pub io_threads: usize,
    /// On shutdown, how long calls in flight may take before connections
    /// still open are dropped.
    pub shutdown_grace_ms: u64,
    /// API tokens. Env: PREPAID_TOKENS="name:role:token,…" adds to them.
    pub tokens: Vec<TokenSpec>,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            grpc_addr: "127.0.0.1:7070".into(),
            http_addr: "127.0.0.1:7071".into(),
            max_message_bytes: 4 * 1024 * 1024,
            max_connections: 1_024,
            stream_in_flight: 64,
            max_streams_per_connection: 256,
            io_threads: 1,
            shutdown_grace_ms: 10_000,
            tokens: Vec::new(),
        }
    }
}

/// Webhooks: every durable event POSTed to each URL, signed, in order per
/// account, at least once.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Receivers (`http://` or `https://host[:port]/path`; https is
    /// verified against Mozilla's roots and `tls.ca_file`).
    pub urls: Vec<String>,
    /// HMAC-SHA256 key for the `Prepaid-Signature` header. Env:
    /// PREPAID_WEBHOOK_SECRET.
    pub secret: String,
    /// Tries per event before it is dead-lettered.
    pub max_attempts: u32,
    /// First wait between tries; doubles each time, up to `backoff_max_ms`.
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
    /// Longest wait for one delivery.
    pub timeout_ms: u64,
    /// Dead letters kept for the admin API (oldest dropped first).
    pub dead_letters_kept: usize,
    /// Clustered: how often a group's leader records through the group how
    /// far it delivered (a new leader goes on from there, repeating at most
    /// what was delivered since).
    pub cursor_record_ms: u64,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("urls", &self.urls)
            .field("secret", &"***")
            .field("max_attempts", &self.max_attempts)
            .field("backoff_ms", &self.backoff_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("dead_letters_kept", &self.dead_letters_kept)
            .field("cursor_record_ms", &self.cursor_record_ms)
            .finish()
    }
}

impl Default for WebhookSettings {
    fn default() -> WebhookSettings {
        WebhookSettings {
            urls: Vec::new(),
            secret: String::new(),
            max_attempts: 8,
            backoff_ms: 200,
            backoff_max_ms: 30_000,
            timeout_ms: 5_000,
            dead_letters_kept: 10_000,
            cursor_record_ms: 200,
        }
    }
}

/// Where auto-recharge charges cards. `prepaid serve` refuses to start
/// without a real gateway unless the simulated one is asked for by name:
/// a simulated gateway always charges, so it grants paid credits for
/// nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RechargeSettings {
    /// Whether auto-recharge runs on this node. Off: no gateway is needed,
    /// `set_auto_recharge` refuses to turn it on (`invalid_auto_recharge`)
    /// and accounts that had it on buy nothing (their low-balance notices
    /// still come). Env: PREPAID_RECHARGE_ENABLED.
    pub enabled: bool,
    /// The payment gateway (`http://` or `https://host[:port]/path`, a JSON
    /// POST with the idempotency key; https verified against Mozilla's
    /// roots and `tls.ca_file`). Env: PREPAID_GATEWAY_URL.
    pub gateway_url: String,
    /// Use the simulated gateway (demos and tests only: every charge
    /// succeeds, no money moves). Env: PREPAID_SIMULATED_GATEWAY=true.
    pub simulated_gateway: bool,
}

/// Transport security. With `cert_file` and `key_file` both listeners
/// speak TLS only (gRPC with ALPN `h2`, HTTP over HTTPS); `ca_file` adds a
/// private CA to the roots the gateway and webhook client trusts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM, leaf first). Env:
    /// PREPAID_TLS_CERT.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1). Env: PREPAID_TLS_KEY.
    pub key_file: PathBuf,
    /// Extra CA certificates (PEM) for outbound `https://` (gateway,
    /// webhooks), besides Mozilla's roots. Env: PREPAID_TLS_CA.
    pub ca_file: PathBuf,
}

impl TlsSettings {
    /// Whether the listeners speak TLS.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    /// `ca_file` when set.
    pub fn ca_path(&self) -> Option<&Path> {
        (!self.ca_file.as_os_str().is_empty()).then_some(self.ca_file.as_path())
    }
}

impl Default for RechargeSettings {
    fn default() -> RechargeSettings {
        RechargeSettings { enabled: true, gateway_url: String::new(), simulated_gateway: false }
    }
}

/// Running as one member of a cluster (issue 13, docs/CLUSTER.md). Off
/// (`node_id = 0`, the default): the node runs alone, as it always did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's id in the cluster, one of `members`; 0: not clustered.
    /// Env: PREPAID_CLUSTER_NODE_ID.
    pub node_id: u64,
    /// Every member of the cluster, this node included, as `id=host:port`
    /// (its gRPC address: the node link is served there too). Env:
    /// PREPAID_CLUSTER_MEMBERS, comma separated.
    pub members: Vec<String>,
    /// The secret every node of the cluster presents on the node link (at
    /// least 16 characters). Env: PREPAID_CLUSTER_SECRET.
    pub secret: String,
    /// Shards per Raft group (shard `s` in group `s / shards_per_group`);
    /// divides `node.shards`. Fixed for the cluster.
    pub shards_per_group: u32,
    /// Voters per shard group when the cluster is made (all nodes when
    /// fewer): a node holds about `groups × replicas / nodes` of them.
    /// Env: PREPAID_CLUSTER_REPLICAS.
    pub replicas: u32,
    /// Raft heartbeat from a group's leader.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time between these
    /// stands for election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How long a write waits for its groups to commit before it is
    /// answered `outcome_unknown`.
    pub commit_timeout_ms: u64,
    /// How long a request for a shard whose group has no leader for the
    /// moment (an election, a leader handing over) waits for one before it
    /// is answered `shard_unavailable` (nothing applied); 0: at once.
    pub leaderless_wait_ms: u64,
    /// Most requests waiting so at once on this node; past it they are
    /// answered at once.
    pub leaderless_buffer: usize,
    /// Whether the leader of a group hands the lead to the group's
    /// preferred voter (the voters in id order, group `g` to the
    /// `g mod n`-th) once that voter is caught up, so each node leads its
    /// share of the groups. Env: PREPAID_CLUSTER_BALANCE_LEADERS.
    pub balance_leaders: bool,
    /// Every this many entries a group's log is purged to the state its
    /// members applied (the state is in the store; a snapshot of it is
    /// made only for a member behind the log), keeping this many entries
    /// for a follower a little behind. The log then holds between one and
    /// two times this many entries per group.
    pub snapshot_log_entries: u64,
    /// How long sending a group's snapshot to a member behind its log may
    /// take (one node link message of at most 256 MiB).
    pub snapshot_timeout_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> ClusterSettings {
        ClusterSettings {
            node_id: 0,
            members: Vec::new(),
            secret: String::new(),
            shards_per_group: 16,
            replicas: 3,
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            commit_timeout_ms: 2_000,
            leaderless_wait_ms: 2_000,
            leaderless_buffer: 10_000,
            balance_leaders: true,
            snapshot_log_entries: 10_000,
            snapshot_timeout_ms: 60_000,
        }
    }
}

impl ClusterSettings {
    /// Whether the node runs clustered.
    pub fn enabled(&self) -> bool {
        self.node_id != 0
    }

    /// `members` as (id, address), checked.
    pub fn member_addrs(&self) -> Result<std::collections::BTreeMap<u64, String>, ConfigError> {
        let mut out = std::collections::BTreeMap::new();
        for spec in &self.members {
            let bad = || ConfigError::Invalid(format!("cluster.members: {spec:?} is not id=host:port"));
            let (id, addr) = spec.split_once('=').ok_or_else(bad)?;
            let id: u64 = id.trim().parse().map_err(|_| bad())?;
            let addr = addr.trim();
            if id == 0
                || addr.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                return Err(bad());
            }
            if out.insert(id, addr.to_string()).is_some() {
                return Err(ConfigError::Invalid(format!("cluster.members: node {id} is named twice")));
            }
        }
        Ok(out)
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSettings,
    pub ledger: LedgerConfig,
    pub server: ServerSettings,
    pub webhooks: WebhookSettings,
    pub recharge: RechargeSettings,
    pub tls: TlsSettings,
    pub cluster: ClusterSettings,
}

/// `text` as a value of the kind `current` is.
fn setting_like(current: &toml::Value, text: &str) -> Result<toml::Value, String> {
    use toml::Value as V;
    match current {
        V::Integer(_) => text.parse().map(V::Integer).map_err(|_| "a whole number".to_string()),
        V::Boolean(_) => match text {
            "true" | "1" => Ok(V::Boolean(true)),
            "false" | "0" => Ok(V::Boolean(false)),
            _ => Err("true or false".to_string()),
        },
        V::Array(_) => Ok(V::Array(
            text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| V::String(t.to_string())).collect(),
        )),
        _ => Ok(V::String(text.to_string())),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    pub fn from_toml(text: &str) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a file, then applies environment overrides.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.display().to_string(), error })?;
        let mut config = NodeConfig::from_toml(&text)?;
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// `PREPAID_DATA_DIR`, `PREPAID_DURABILITY` (`sync` or `async`),
    /// `PREPAID_SHARDS`, `PREPAID_WORKERS`, `PREPAID_FLUSH_INTERVAL_MS`,
    /// `PREPAID_MAX_RESIDENT_ACCOUNTS`, `PREPAID_GRPC_ADDR`,
    /// `PREPAID_HTTP_ADDR`, `PREPAID_WEBHOOK_SECRET`, `PREPAID_GATEWAY_URL`,
    /// `PREPAID_SIMULATED_GATEWAY`, `PREPAID_TLS_CERT`, `PREPAID_TLS_KEY`,
    /// `PREPAID_TLS_CA` override the file, and so does every setting as
    /// `PREPAID_<SECTION>_<FIELD>` (`apply_setting_env`, which wins over
    /// these short names); `PREPAID_TOKENS` adds tokens.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError> {
            value.parse().map_err(|_| ConfigError::Invalid(format!("{name}={value:?} is not a whole number")))
        }
        if let Some(v) = var("PREPAID_DATA_DIR") {
            self.node.data_dir = PathBuf::from(v);
        }
        if let Some(v) = var("PREPAID_DURABILITY") {
            self.node.durability = match v.as_str() {
                "sync" => Durability::Sync,
                "async" => Durability::Async,
                _ => return Err(ConfigError::Invalid(format!("PREPAID_DURABILITY={v:?}: sync or async"))),
            };
        }
        if let Some(v) = var("PREPAID_SHARDS") {
            self.node.shards = number("PREPAID_SHARDS", &v)?;
        }
        if let Some(v) = var("PREPAID_WORKERS") {
            self.node.workers = number("PREPAID_WORKERS", &v)?;
        }
        if let Some(v) = var("PREPAID_FLUSH_INTERVAL_MS") {
            self.node.flush_interval_ms = number("PREPAID_FLUSH_INTERVAL_MS", &v)?;
        }
        if let Some(v) = var("PREPAID_CHECKPOINT_LOG_BYTES_MAX") {
            self.node.checkpoint_log_bytes_max = number("PREPAID_CHECKPOINT_LOG_BYTES_MAX", &v)?;
        }
        if let Some(v) = var("PREPAID_CHECKPOINT_INTERVAL_MS") {
            self.node.checkpoint_interval_ms = number("PREPAID_CHECKPOINT_INTERVAL_MS", &v)?;
        }
        if let Some(v) = var("PREPAID_IDEMPOTENCY_RESIDENT_KEYS") {
            self.node.idempotency_resident_keys = number("PREPAID_IDEMPOTENCY_RESIDENT_KEYS", &v)?;
        }
        if let Some(v) = var("PREPAID_MAX_RESIDENT_ACCOUNTS") {
            self.node.max_resident_accounts = number("PREPAID_MAX_RESIDENT_ACCOUNTS", &v)?;
        }
        if let Some(v) = var("PREPAID_GRPC_ADDR") {
            self.server.grpc_addr = v;
        }
        if let Some(v) = var("PREPAID_HTTP_ADDR") {
            self.server.http_addr = v;
        }
        if let Some(v) = var("PREPAID_TOKENS") {
            for spec in v.split(',').filter(|s| !s.is_empty()) {
                let mut parts = spec.splitn(3, ':');
                let (Some(name), Some(role), Some(token)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(ConfigError::Invalid("PREPAID_TOKENS is name:role:token, comma separated".into()));
                };
                let role = match role {
                    "admin" => Role::Admin,
                    "authorize" => Role::Authorize,
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "PREPAID_TOKENS: role {role:?} is admin or authorize"
                        )));
                    }
                };
                self.server.tokens.push(TokenSpec { name: name.into(), role, token: token.into() });
            }
        }
        if let Some(v) = var("PREPAID_WEBHOOK_SECRET") {
            self.webhooks.secret = v;
        }
        if let Some(v) = var("PREPAID_GATEWAY_URL") {
            self.recharge.gateway_url = v;
        }
        if let Some(v) = var("PREPAID_TLS_CERT") {
            self.tls.cert_file = PathBuf::from(v);
        }
        if let Some(v) = var("PREPAID_TLS_KEY") {
            self.tls.key_file = PathBuf::from(v);
        }
        if let Some(v) = var("PREPAID_TLS_CA") {
            self.tls.ca_file = PathBuf::from(v);
        }
        if let Some(v) = var("PREPAID_SIMULATED_GATEWAY") {
            self.recharge.simulated_gateway = match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(ConfigError::Invalid(format!("PREPAID_SIMULATED_GATEWAY={v:?}: true or false"))),
            };
        }
        self.apply_setting_env(&var)?;
        self.validate()
    }

    /// Every setting of the file as `PREPAID_<SECTION>_<FIELD>` too
    /// (`PREPAID_NODE_MAX_BATCH=5000`, `PREPAID_LEDGER_MIN_PURCHASE=10.00`,
    /// `PREPAID_WEBHOOKS_URLS=https://a/x,https://b/y`): numbers, `true` or
    /// `false`, text, and lists as comma-separated text. They win over the
    /// short names above. Tokens have their own variable, `PREPAID_TOKENS`.
    fn apply_setting_env(&mut self, var: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let invalid = |e: String| ConfigError::Invalid(e);
        let mut value = toml::Value::try_from(&*self).map_err(|e| invalid(e.to_string()))?;
        let mut changed = false;
        for (section, fields) in value.as_table_mut().into_iter().flatten() {
            for (field, current) in fields.as_table_mut().into_iter().flatten() {
                if (section.as_str(), field.as_str()) == ("server", "tokens") {
                    continue;
                }
                let name = format!("PREPAID_{}_{}", section.to_uppercase(), field.to_uppercase());
                let Some(text) = var(&name) else { continue };
                *current = setting_like(current, &text).map_err(|e| invalid(format!("{name}={text:?}: {e}")))?;
                changed = true;
            }
        }
        if changed {
            *self = value.try_into().map_err(|e: toml::de::Error| invalid(format!("from the environment: {e}")))?;
        }
        Ok(())
    }

    /// Every setting of `SETTING_BOUNDS` within its range.
    fn check_bounds(&self) -> Result<(), ConfigError> {
        let value = toml::Value::try_from(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for &(name, least, most) in SETTING_BOUNDS {
            let (section, field) = name.split_once('.').unwrap_or((name, ""));
            let setting = value.get(section).and_then(|s| s.get(field)).and_then(toml::Value::as_integer);
            let Some(n) = setting else {
                return Err(ConfigError::Invalid(format!("{name} is not a setting (a bug: SETTING_BOUNDS)")));
            };
            if !(least as i64..=most as i64).contains(&n) {
                return Err(ConfigError::Invalid(format!("{name} is {least} to {most}, not {n}")));
            }
        }
        Ok(())
    }

    /// Bounds that make the node unable to run are refused up front.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.ledger.validate().map_err(ConfigError::Invalid)?;
        let n = &self.node;
        let bad = |what: &str| Err(ConfigError::Invalid(what.to_string()));
        if !(1..=65_536).contains(&n.shards) {
            return bad("node.shards is 1 to 65536");
        }
        if n.workers > MAX_WORKERS {
            return bad(&format!("node.workers is 0 (one per core) to {MAX_WORKERS}"));
        }
        if !(1..=4_096).contains(&n.memtable_mb) {
            return bad("node.memtable_mb is 1 to 4096");
        }
        if !CHECKPOINT_LOG_BYTES.contains(&n.checkpoint_log_bytes_max) {
            return bad("node.checkpoint_log_bytes_max is 1048576 (1 MiB) to 17179869184 (16 GiB)");
        }
        if !CHECKPOINT_INTERVAL_MS.contains(&n.checkpoint_interval_ms) {
            return bad("node.checkpoint_interval_ms is 10 to 3600000 (one hour)");
        }
        if !IDEMPOTENCY_RESIDENT_KEYS.contains(&n.idempotency_resident_keys) {
            return bad("node.idempotency_resident_keys is 1 to 1000000");
        }
        self.check_bounds()?;
        let s = &self.server;
        if !(1..=64).contains(&s.io_threads) {
            return bad("server.io_threads is between 1 and 64");
        }
        for t in &s.tokens {
            if t.token.len() < 16 {
                return bad("every server token is at least 16 characters");
            }
        }
        let w = &self.webhooks;
        if !w.urls.is_empty() && w.secret.len() < 16 {
            return bad("webhooks.secret is at least 16 characters when webhooks.urls is set");
        }
        if w.backoff_max_ms < w.backoff_ms {
            return bad("webhooks.backoff_max_ms is at least webhooks.backoff_ms");
        }
        for url in &w.urls {
            crate::httpc::parse_url(url).map_err(|e| ConfigError::Invalid(format!("webhooks.urls: {e}")))?;
        }
        let r = &self.recharge;
        if !r.gateway_url.is_empty() {
            crate::httpc::parse_url(&r.gateway_url)
                .map_err(|e| ConfigError::Invalid(format!("recharge.gateway_url: {e}")))?;
        }
        if !r.gateway_url.is_empty() && r.simulated_gateway {
            return bad("recharge.gateway_url and recharge.simulated_gateway are exclusive: choose one gateway");
        }
        let t = &self.tls;
        if t.cert_file.as_os_str().is_empty() != t.key_file.as_os_str().is_empty() {
            return bad("tls.cert_file and tls.key_file go together: set both (TLS on both listeners) or neither");
        }
        self.validate_cluster()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let bad = |what: String| Err(ConfigError::Invalid(what));
        if c.election_timeout_max_ms <= c.election_timeout_min_ms || c.election_timeout_min_ms <= c.heartbeat_ms {
            return bad(
                "cluster: heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms, or leaders are voted \
                 out while they live"
                    .into(),
            );
        }
        let members = c.member_addrs()?;
        if !c.enabled() {
            return Ok(());
        }
        if !self.node.shards.is_multiple_of(c.shards_per_group) {
            return bad(format!(
                "cluster.shards_per_group ({}) must divide node.shards ({})",
                c.shards_per_group, self.node.shards
            ));
        }
        if !members.contains_key(&c.node_id) {
            return bad(format!("cluster.node_id {} is not one of cluster.members", c.node_id));
        }
        if c.secret.len() < 16 {
            return bad("cluster.secret is at least 16 characters when the node is clustered".into());
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return bad("a clustered node needs node.data_dir: its groups' logs must outlive it".into());
        }
        if self.node.durability == Durability::Async {
            // Async replies before the write is durable; clustered, before
            // it is committed, and a leader change loses it.
            return bad("a clustered node answers only what its group committed: node.durability must be sync".into());
        }
        Ok(())
    }
}
