//! config/default.toml is the code's defaults, field for field, and
//! environment overrides and bounds behave.

use prepaid::config::{ConfigError, Durability, NodeConfig};

fn default_file() -> String {
    std::fs::read_to_string(repo_file("config/default.toml")).unwrap()
}

#[test]
fn default_toml_mirrors_the_code_defaults() {
    assert_eq!(NodeConfig::from_toml(&default_file()).unwrap(), NodeConfig::default());
}

#[test]
fn default_toml_names_every_field() {
    let text = default_file();
    let fields = toml::to_string(&NodeConfig::default()).unwrap();
    for line in fields.lines().filter(|l| l.contains(" = ")) {
        let name = line.split(" = ").next().unwrap();
        assert!(text.lines().any(|l| l.starts_with(&format!("{name} = "))), "{name} is missing");
    }
}

#[test]
fn unknown_fields_are_refused() {
    let err = NodeConfig::from_toml("[ledger]\nmin_purchse = \"5\"\n").unwrap_err();
    assert!(err.to_string().contains("min_purchse"), "{err}");
    assert!(NodeConfig::from_toml("[nodes]\n").is_err());
}

#[test]
fn amounts_in_config_are_exact_decimals() {
    let cfg = NodeConfig::from_toml("[ledger]\nmin_purchase = \"0.000000000001\"\n").unwrap();
    assert_eq!(cfg.ledger.min_purchase.units(), 1);
    assert!(NodeConfig::from_toml("[ledger]\nmin_purchase = \"0.0000000000001\"\n").is_err());
}

#[test]
fn environment_overrides_the_file() {
    let mut cfg = NodeConfig::default();
    let env = |name: &str| match name {
        "PREPAID_DATA_DIR" => Some("/var/lib/prepaid".to_string()),
        "PREPAID_DURABILITY" => Some("async".to_string()),
        "PREPAID_SHARDS" => Some("64".to_string()),
        _ => None,
    };
    cfg.apply_env(env).unwrap();
    assert_eq!(cfg.node.data_dir.to_str(), Some("/var/lib/prepaid"));
    assert_eq!(cfg.node.durability, Durability::Async);
    assert_eq!(cfg.node.shards, 64);
    let bad = |name: &'static str, value: &'static str| move |n: &str| (n == name).then(|| value.to_string());
    assert!(matches!(
        NodeConfig::default().apply_env(bad("PREPAID_DURABILITY", "later")),
        Err(ConfigError::Invalid(_))
    ));
    assert!(matches!(NodeConfig::default().apply_env(bad("PREPAID_SHARDS", "many")), Err(ConfigError::Invalid(_))));
}

/// Every setting of the file can come from `PREPAID_<SECTION>_<FIELD>`
/// too: each one, set to a value other than its default, changes exactly
/// that setting.
#[test]
fn every_setting_comes_from_the_environment_too() {
    let defaults = toml::Value::try_from(NodeConfig::default()).unwrap();
    let mut seen = 0;
    for (section, fields) in defaults.as_table().unwrap() {
        for (field, default) in fields.as_table().unwrap() {
            if (section.as_str(), field.as_str()) == ("server", "tokens") {
                continue; // PREPAID_TOKENS, tested above
            }
            let other = match (section.as_str(), field.as_str(), default) {
                (_, _, toml::Value::Integer(n)) => (n + 1).to_string(),
                (_, _, toml::Value::Boolean(b)) => (!b).to_string(),
                ("node", "durability", _) => "async".into(),
                ("node", "data_dir", _) => "/var/lib/prepaid".into(),
                ("ledger", "min_purchase", _) => "10.00".into(),
                ("ledger", "recharge_amount_default", _) => "30.00".into(),
                ("ledger", "max_amount", _) => "5000.00".into(),
                ("ledger", "max_balance", _) => "2000000000000.00".into(),
                ("server", "grpc_addr" | "http_addr", _) => "0.0.0.0:9000".into(),
                ("webhooks", "urls", _) => "https://a.example/h, http://b.example:81/h".into(),
                ("webhooks", "secret", _) => "0123456789abcdef-secret".into(),
                ("recharge", "gateway_url", _) => "https://pay.example/charge".into(),
                ("tls", "cert_file" | "key_file" | "ca_file", _) => format!("/etc/prepaid/{field}.pem"),
                ("cluster", "members", _) => "1=127.0.0.1:7070, 2=127.0.0.2:7070".into(),
                ("cluster", "secret", _) => "0123456789abcdef-cluster".into(),
                other => panic!("no test value for {other:?}: add one"),
            };
            let name = format!("PREPAID_{}_{}", section.to_uppercase(), field.to_uppercase());
            let mut cfg = NodeConfig::default();
            let result = cfg.apply_env(|n| {
                if n == name {
                    return Some(other.clone());
                }
                // Settings that only make sense with a partner.
                match (name.as_str(), n) {
                    ("PREPAID_WEBHOOKS_URLS", "PREPAID_WEBHOOKS_SECRET") => Some("0123456789abcdef".into()),
                    ("PREPAID_TLS_CERT_FILE", "PREPAID_TLS_KEY_FILE") => Some("/k.pem".into()),
                    ("PREPAID_TLS_KEY_FILE", "PREPAID_TLS_CERT_FILE") => Some("/c.pem".into()),
                    ("PREPAID_CLUSTER_NODE_ID", "PREPAID_CLUSTER_MEMBERS") => Some("1=127.0.0.1:7070".into()),
                    ("PREPAID_CLUSTER_NODE_ID", "PREPAID_CLUSTER_SECRET") => Some("0123456789abcdef".into()),
                    ("PREPAID_CLUSTER_NODE_ID", "PREPAID_NODE_DATA_DIR") => Some("/var/lib/prepaid".into()),
                    _ => None,
                }
            });
            result.unwrap_or_else(|e| panic!("{name}={other}: {e}"));
            let after = toml::Value::try_from(&cfg).unwrap();
            assert_ne!(after[section][field], *default, "{name} changed nothing");
            seen += 1;
        }
    }
    assert!(seen >= 50, "only {seen} settings were tried");
    let err = NodeConfig::default()
        .apply_env(|n| (n == "PREPAID_NODE_MAX_BATCH").then(|| "lots".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("PREPAID_NODE_MAX_BATCH=\"lots\": a whole number"), "{err}");
    // Values from the environment are validated like the file's.
    let err = NodeConfig::default()
        .apply_env(|n| (n == "PREPAID_LEDGER_IDEMPOTENCY_WINDOW_MS").then(|| "0".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("idempotency_window_ms"), "{err}");
    let err = NodeConfig::default()
        .apply_env(|n| (n == "PREPAID_LEDGER_MIN_PURCHASE").then(|| "five".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("PREPAID") || err.contains("min_purchase"), "{err}");
    // The longer name wins over the short one.
    let mut cfg = NodeConfig::default();
    cfg.apply_env(|n| match n {
        "PREPAID_SHARDS" => Some("8".into()),
        "PREPAID_NODE_SHARDS" => Some("16".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(cfg.node.shards, 16);
}

/// Every setting of `SETTING_BOUNDS` is accepted at both ends of its range
/// and refused just past each, with a sentence naming it and the range.
#[test]
fn every_bounded_setting_is_tried_at_and_past_its_limits() {
    use prepaid::config::SETTING_BOUNDS;
    assert!(SETTING_BOUNDS.len() >= 20);
    for &(name, least, most) in SETTING_BOUNDS {
        let (section, field) = name.split_once('.').unwrap();
        // backoff_ms <= backoff_max_ms is a rule of its own: keep it true.
        let with = |n: u64| {
            // So is heartbeat_ms < election_timeout_min_ms < _max_ms.
            let partner = match field {
                "backoff_ms" => format!("backoff_max_ms = {}\n", n.max(1)),
                "backoff_max_ms" => format!("backoff_ms = {}\n", n.clamp(1, 200)),
                "heartbeat_ms" => {
                    let min = (n + 1).max(20);
                    format!("election_timeout_min_ms = {min}\nelection_timeout_max_ms = {}\n", min + 1)
                }
                "election_timeout_min_ms" => {
                    format!(
                        "heartbeat_ms = {}\nelection_timeout_max_ms = {}\n",
                        n.saturating_sub(1).clamp(10, 60_000),
                        n + 1
                    )
                }
                "election_timeout_max_ms" => {
                    let min = (n - 1).clamp(20, 599_999);
                    format!("election_timeout_min_ms = {min}\nheartbeat_ms = {}\n", (min - 1).clamp(10, 60_000))
                }
                _ => String::new(),
            };
            NodeConfig::from_toml(&format!("[{section}]\n{field} = {n}\n{partner}"))
        };
        for n in [least, most] {
            with(n).unwrap_or_else(|e| panic!("{name} = {n} is in range: {e}"));
        }
        let mut past = vec![most + 1];
        if least > 0 {
            past.push(least - 1);
        }
        for n in past {
            let err = with(n).expect_err(&format!("{name} = {n} is out of range")).to_string();
            assert!(err.contains(&format!("{name} is {least} to {most}, not {n}")), "{err}");
        }
    }
    // The value that crashed a start (a semaphore of 2^62 permits) is
    // refused before anything starts.
    let err = NodeConfig::default()
        .apply_env(|n| (n == "PREPAID_SERVER_MAX_CONNECTIONS").then(|| "4611686018427387904".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.max_connections is 1 to 1000000"), "{err}");
    // The bounds with rules of their own, at and past their limits.
    let ok = |text: &str| NodeConfig::from_toml(text).is_ok();
    assert!(ok("[node]\nworkers = 1024\n") && !ok("[node]\nworkers = 1025\n"));
    assert!(
        ok("[server]\nio_threads = 64\n") && !ok("[server]\nio_threads = 65\n") && !ok("[server]\nio_threads = 0\n")
    );
    let token = |t: &str| format!("[[server.tokens]]\nname = \"a\"\nrole = \"admin\"\ntoken = \"{t}\"\n");
    assert!(ok(&token("0123456789abcdef")) && !ok(&token("0123456789abcde")));
    let hooks = |secret: &str| format!("[webhooks]\nurls = [\"http://127.0.0.1:9/h\"]\nsecret = \"{secret}\"\n");
    assert!(ok(&hooks("0123456789abcdef")) && !ok(&hooks("0123456789abcde")));
    assert!(
        !ok("[webhooks]\nbackoff_ms = 300\nbackoff_max_ms = 299\n")
            && ok("[webhooks]\nbackoff_ms = 300\nbackoff_max_ms = 300\n")
    );
}

#[test]
fn bounds_are_checked_at_and_past_their_limits() {
    let with = |text: &str| NodeConfig::from_toml(&format!("[node]\n{text}\n"));
    assert!(with("shards = 1").is_ok());
    assert!(with("shards = 65536").is_ok());
    assert!(with("shards = 0").is_err());
    assert!(with("shards = 65537").is_err());
    assert!(with("max_batch = 0").is_err());
    assert!(with("account_queue_max = 0").is_err());
    assert!(with("max_resident_accounts = 0").is_err());
    assert!(with("flush_interval_ms = 0").is_err());
    assert!(with("max_in_flight = 1").is_ok());
    assert!(with("max_in_flight = 0").is_err());
    assert!(with("storage_retry_ms = 1").is_ok());
    assert!(with("storage_retry_ms = 0").is_err());
    assert!(with("memtable_mb = 1").is_ok());
    assert!(with("memtable_mb = 4096").is_ok());
    assert!(with("memtable_mb = 0").is_err());
    assert!(with("memtable_mb = 4097").is_err());
    assert!(with("checkpoint_log_bytes_max = 1048576").is_ok());
    assert!(with("checkpoint_log_bytes_max = 17179869184").is_ok());
    assert!(with("checkpoint_log_bytes_max = 1048575").is_err());
    assert!(with("checkpoint_log_bytes_max = 17179869185").is_err());
    assert!(with("checkpoint_interval_ms = 10").is_ok() && with("checkpoint_interval_ms = 3600000").is_ok());
    assert!(with("checkpoint_interval_ms = 9").is_err() && with("checkpoint_interval_ms = 3600001").is_err());
    assert!(with("idempotency_resident_keys = 1").is_ok() && with("idempotency_resident_keys = 1000000").is_ok());
    assert!(with("idempotency_resident_keys = 0").is_err() && with("idempotency_resident_keys = 1000001").is_err());
    let server = |text: &str| NodeConfig::from_toml(&format!("[server]\n{text}\n"));
    assert!(server("max_streams_per_connection = 1").is_ok());
    assert!(server("max_streams_per_connection = 0").is_err());
    assert!(server("io_threads = 1").is_ok() && server("io_threads = 64").is_ok());
    assert!(server("io_threads = 0").is_err() && server("io_threads = 65").is_err());
}

/// The error message for a `[ledger]` section, or "ok".
fn ledger(text: &str) -> String {
    match NodeConfig::from_toml(&format!("[ledger]\n{text}\n")) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_zero_idempotency_window_is_refused_at_start() {
    // A window of 0 forgot every key at once: one order credited three times.
    let err = ledger("idempotency_window_ms = 0");
    assert!(err.contains("ledger.idempotency_window_ms") && err.contains("applies a resent request again"), "{err}");
    assert_eq!(ledger("idempotency_window_ms = 1000"), "ok");
    assert!(ledger("idempotency_window_ms = 999").contains("idempotency_window_ms"));
    assert_eq!(ledger("idempotency_window_ms = 7776000000"), "ok");
    assert!(ledger("idempotency_window_ms = 7776000001").contains("idempotency_window_ms"));
}

#[test]
fn ledger_amounts_must_be_positive_and_consistent() {
    for (text, names) in [
        ("min_purchase = \"-5\"", "ledger.min_purchase is more than 0"),
        ("min_purchase = \"0\"", "ledger.min_purchase is more than 0"),
        ("max_amount = \"0\"", "ledger.max_amount is more than 0"),
        ("max_balance = \"-1\"", "ledger.max_balance is more than 0"),
        ("recharge_amount_default = \"0\"", "ledger.recharge_amount_default is more than 0"),
        // A recharge is a purchase: never below the minimum purchase.
        ("recharge_amount_default = \"4.99\"", "ledger.recharge_amount_default (4.99) is between"),
        ("max_amount = \"4.99\"", "ledger.min_purchase (5.00) is at most ledger.max_amount"),
        ("max_balance = \"999999999.99\"", "ledger.max_amount (1000000000.00) is at most ledger.max_balance"),
        ("recharge_amount_default = \"1000000000.01\"", "ledger.recharge_amount_default"),
    ] {
        let err = ledger(text);
        assert!(err.contains(names), "{text}: {err}");
    }
    assert_eq!(ledger("recharge_amount_default = \"5.00\""), "ok");
    assert_eq!(ledger("max_amount = \"5.00\"\nrecharge_amount_default = \"5.00\""), "ok");
    assert_eq!(ledger("max_balance = \"1000000000.00\""), "ok");
}

#[test]
fn ledger_counts_and_durations_are_checked_at_and_past_their_limits() {
    for name in ["max_grants", "max_holds", "max_open_invoices", "recharge_max_failures", "recharge_chain_max"] {
        assert_eq!(ledger(&format!("{name} = 1")), "ok", "{name}");
        assert_eq!(ledger(&format!("{name} = 1000000")), "ok", "{name}");
        assert!(ledger(&format!("{name} = 0")).contains(&format!("ledger.{name} is 1 to 1000000")), "{name}");
        assert!(ledger(&format!("{name} = 1000001")).contains(&format!("ledger.{name}")), "{name}");
    }
    assert_eq!(ledger("history_page_max = 1"), "ok");
    assert!(ledger("history_page_max = 0").contains("ledger.history_page_max"));
    let max = 100 * 365 * 86_400_000u64;
    for name in ["invoice_due_ms", "recharge_backoff_max_ms", "hold_timeout_max_ms"] {
        assert_eq!(ledger(&format!("{name} = {max}")), "ok", "{name}");
        assert!(ledger(&format!("{name} = {}", max + 1)).contains(&format!("ledger.{name}")), "{name}");
        assert!(ledger(&format!("{name} = 0")).contains(&format!("ledger.{name}")), "{name}");
    }
    assert_eq!(ledger("expiry_notice_ms = 0"), "ok");
    assert!(ledger(&format!("expiry_notice_ms = {}", max + 1)).contains("ledger.expiry_notice_ms"));
    // A hold's default lifetime is one a request could ask for.
    assert!(ledger("hold_timeout_default_ms = 2592000001").contains("hold_timeout_default_ms (2592000001) is at most"));
    assert_eq!(ledger("hold_timeout_default_ms = 2592000000"), "ok");
    assert!(ledger("recharge_backoff_base_ms = 3600001").contains("recharge_backoff_base_ms (3600001) is at most"));
    assert_eq!(ledger("recharge_backoff_base_ms = 3600000"), "ok");
}

#[test]
fn the_gateway_comes_from_the_file_or_the_environment() {
    let cfg = NodeConfig::from_toml("[recharge]\ngateway_url = \"http://127.0.0.1:9/charge\"\n").unwrap();
    assert_eq!(cfg.recharge.gateway_url, "http://127.0.0.1:9/charge");
    assert!(!cfg.recharge.simulated_gateway);
    let mut cfg = NodeConfig::default();
    cfg.apply_env(|n| (n == "PREPAID_GATEWAY_URL").then(|| "http://127.0.0.1:9/pay".to_string())).unwrap();
    assert_eq!(cfg.recharge.gateway_url, "http://127.0.0.1:9/pay");
    let mut cfg = NodeConfig::default();
    cfg.apply_env(|n| (n == "PREPAID_SIMULATED_GATEWAY").then(|| "true".to_string())).unwrap();
    assert!(cfg.recharge.simulated_gateway);
    let err = NodeConfig::default()
        .apply_env(|n| (n == "PREPAID_SIMULATED_GATEWAY").then(|| "yes".to_string()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("PREPAID_SIMULATED_GATEWAY"), "{err}");
    let both = "[recharge]\ngateway_url = \"http://127.0.0.1:9/charge\"\nsimulated_gateway = true\n";
    assert!(NodeConfig::from_toml(both).unwrap_err().to_string().contains("exclusive"));
    let ftp = "[recharge]\ngateway_url = \"ftp://pay\"\n";
    assert!(NodeConfig::from_toml(ftp).unwrap_err().to_string().contains("recharge.gateway_url"));
    // https:// is a gateway URL (verified against Mozilla's roots and
    // tls.ca_file), and the port is optional.
    let https = NodeConfig::from_toml("[recharge]\ngateway_url = \"https://pay.example/charge\"\n").unwrap();
    assert_eq!(https.recharge.gateway_url, "https://pay.example/charge");
    let no_host = "[recharge]\ngateway_url = \"https:///charge\"\n";
    assert!(NodeConfig::from_toml(no_host).unwrap_err().to_string().contains("recharge.gateway_url"));
    let hooks = "[webhooks]\nurls = [\"https://hooks.example/prepaid\", \"mailto:x\"]\nsecret = \"0123456789abcdef\"\n";
    assert!(NodeConfig::from_toml(hooks).unwrap_err().to_string().contains("webhooks.urls"));
}

#[test]
fn tls_takes_a_certificate_and_its_key_together() {
    let both =
        NodeConfig::from_toml("[tls]\ncert_file = \"/etc/prepaid/cert.pem\"\nkey_file = \"/etc/prepaid/key.pem\"\n")
            .unwrap();
    assert!(both.tls.enabled());
    assert!(!NodeConfig::default().tls.enabled());
    for one in ["[tls]\ncert_file = \"/etc/prepaid/cert.pem\"\n", "[tls]\nkey_file = \"/etc/prepaid/key.pem\"\n"] {
        let err = NodeConfig::from_toml(one).unwrap_err().to_string();
        assert!(err.contains("tls.cert_file and tls.key_file go together"), "{err}");
    }
    let mut cfg = NodeConfig::default();
    cfg.apply_env(|n| match n {
        "PREPAID_TLS_CERT" => Some("/c.pem".into()),
        "PREPAID_TLS_KEY" => Some("/k.pem".into()),
        "PREPAID_TLS_CA" => Some("/ca.pem".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        (cfg.tls.cert_file.to_str(), cfg.tls.key_file.to_str(), cfg.tls.ca_path().and_then(|p| p.to_str())),
        (Some("/c.pem"), Some("/k.pem"), Some("/ca.pem"))
    );
    assert!(NodeConfig::from_toml("[tls]\ncertificate = \"x\"\n").is_err(), "unknown fields are refused");
}

/// A file of the checkout under test. Read at run time (cargo sets
/// CARGO_MANIFEST_DIR for tests): a test binary reused from another clone
/// through a shared target directory must not read that clone's files.
fn repo_file(path: &str) -> std::path::PathBuf {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    std::path::Path::new(&root).join(path)
}

/// A clustered node's settings: who it is among which members, the secret,
/// and the groups' layout and timing, each rule refused with a sentence.
#[test]
fn a_clustered_node_names_itself_among_its_members_with_a_secret() {
    let base = |extra: &str| {
        format!(
            "[node]\ndata_dir = \"/var/lib/prepaid\"\n[cluster]\nnode_id = 2\nmembers = [\"1=10.0.0.1:7070\", \
             \"2=10.0.0.2:7070\", \"3=10.0.0.3:7070\"]\nsecret = \"0123456789abcdef\"\n{extra}"
        )
    };
    let cfg = NodeConfig::from_toml(&base("")).unwrap();
    assert!(cfg.cluster.enabled() && !NodeConfig::default().cluster.enabled());
    let members = cfg.cluster.member_addrs().unwrap();
    assert_eq!(members.get(&3).map(String::as_str), Some("10.0.0.3:7070"));
    assert_eq!(members.len(), 3);
    let refused = |text: String, says: &str| {
        let err = NodeConfig::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains(says), "{text}: {err}");
    };
    refused(base("").replace("node_id = 2", "node_id = 4"), "cluster.node_id 4 is not one of cluster.members");
    refused(base("").replace("0123456789abcdef", "short"), "cluster.secret is at least 16 characters");
    refused(base("").replace("data_dir = \"/var/lib/prepaid\"", ""), "needs node.data_dir");
    refused(base("shards_per_group = 15\n"), "cluster.shards_per_group (15) must divide node.shards (256)");
    refused(base("heartbeat_ms = 300\n"), "heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms");
    refused(base("").replace("[cluster]", "durability = \"async\"\n[cluster]"), "node.durability must be sync");
    let hooks = "[webhooks]\nurls = [\"https://hooks.example/prepaid\"]\nsecret = \"0123456789abcdef\"\n";
    let with_hooks = NodeConfig::from_toml(&format!("{hooks}{}", base(""))).unwrap();
    assert_eq!(with_hooks.webhooks.urls.len(), 1, "a clustered node delivers webhooks");
    refused(base("").replace("[cluster]", "durability = \"async\"\n[cluster]"), "node.durability must be sync");
    for bad in ["2", "2=", "x=10.0.0.2:7070", "0=10.0.0.2:7070", "2=10.0.0.2", "2=:7070", "2=10.0.0.2:99999"] {
        refused(base("").replace("2=10.0.0.2:7070", bad), "is not id=host:port");
    }
    refused(base("").replace("3=10.0.0.3:7070", "2=10.0.0.3:7070"), "node 2 is named twice");
    // A secret of exactly 16 is enough; members come from the environment
    // too, comma separated.
    let mut env = NodeConfig::default();
    env.apply_env(|n| match n {
        "PREPAID_DATA_DIR" => Some("/var/lib/prepaid".into()),
        "PREPAID_CLUSTER_NODE_ID" => Some("1".into()),
        "PREPAID_CLUSTER_MEMBERS" => Some("1=127.0.0.1:7070, 2=127.0.0.2:7070".into()),
        "PREPAID_CLUSTER_SECRET" => Some("0123456789abcdef".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(env.cluster.member_addrs().unwrap().len(), 2);
    // Not clustered, the members are still checked, and nothing else is.
    refused("[cluster]\nmembers = [\"one\"]\n".into(), "is not id=host:port");
    assert!(NodeConfig::from_toml("[node]\nshards = 8\n").is_ok(), "16 a group is only asked of a cluster");
}
