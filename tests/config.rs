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
    let server = |text: &str| NodeConfig::from_toml(&format!("[server]\n{text}\n"));
    assert!(server("max_streams_per_connection = 1").is_ok());
    assert!(server("max_streams_per_connection = 0").is_err());
    assert!(server("io_threads = 1").is_ok() && server("io_threads = 64").is_ok());
    assert!(server("io_threads = 0").is_err() && server("io_threads = 65").is_err());
}

/// A file of the checkout under test. Read at run time (cargo sets
/// CARGO_MANIFEST_DIR for tests): a test binary reused from another clone
/// through a shared target directory must not read that clone's files.
fn repo_file(path: &str) -> std::path::PathBuf {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    std::path::Path::new(&root).join(path)
}
