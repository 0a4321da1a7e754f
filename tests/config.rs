//! config/default.toml is the code's defaults, field for field.

use prepaid::ledger::LedgerConfig;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    ledger: LedgerConfig,
}

fn default_file() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml")).unwrap()
}

#[test]
fn default_toml_mirrors_the_code_defaults() {
    let file: File = toml::from_str(&default_file()).unwrap();
    assert_eq!(file.ledger, LedgerConfig::default());
}

#[test]
fn default_toml_names_every_field() {
    let text = default_file();
    let fields = toml::to_string(&LedgerConfig::default()).unwrap();
    for line in fields.lines() {
        let name = line.split(" = ").next().unwrap();
        assert!(text.lines().any(|l| l.starts_with(&format!("{name} = "))), "{name} is missing");
    }
}

#[test]
fn unknown_fields_are_refused() {
    let err = toml::from_str::<File>("[ledger]\nmin_purchse = \"5\"\n").err().unwrap();
    assert!(err.to_string().contains("min_purchse"), "{err}");
}

#[test]
fn amounts_in_config_are_exact_decimals() {
    let file: File = toml::from_str("[ledger]\nmin_purchase = \"0.000000000001\"\n").unwrap();
    assert_eq!(file.ledger.min_purchase.units(), 1);
    assert!(toml::from_str::<File>("[ledger]\nmin_purchase = \"0.0000000000001\"\n").is_err());
}
