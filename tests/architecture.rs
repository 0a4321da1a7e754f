//! Architecture invariants that a test can check.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The functional core imports no runtime, actor system or storage, does no
/// I/O and reads no clock (ARCHITECTURE.md, "Invariants").
#[test]
fn the_ledger_does_no_io_and_reads_no_clock() {
    let mut files = Vec::new();
    rust_files(&repo_file("src/ledger"), &mut files);
    assert!(files.len() >= 10, "found the ledger's files");
    let forbidden = [
        "tokio::",
        "ractor::",
        "rocksdb::",
        "use tokio",
        "use ractor",
        "use rocksdb",
        "std::fs",
        "std::net",
        "std::thread",
        "std::process",
        "SystemTime",
        "Instant::now",
    ];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for word in forbidden {
            assert!(!text.contains(word), "{} mentions {word}", file.display());
        }
    }
}

/// A file of the checkout under test. Read at run time (cargo sets
/// CARGO_MANIFEST_DIR for tests): a test binary reused from another clone
/// through a shared target directory must not read that clone's files.
fn repo_file(path: &str) -> std::path::PathBuf {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    std::path::Path::new(&root).join(path)
}

/// Every path ARCHITECTURE.md's code map names exists: the map follows the
/// tree.
#[test]
fn every_path_in_the_code_map_exists() {
    let text = std::fs::read_to_string(repo_file("ARCHITECTURE.md")).unwrap();
    let map = text.split("## Code map").nth(1).expect("a code map").split("\n## ").next().unwrap();
    let mut checked = 0;
    for row in map.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap();
        for path in first.split('`').skip(1).step_by(2) {
            // Test files named relative to tests/ (`served/disk.rs`).
            let candidates = [path.to_string(), format!("tests/{path}")];
            assert!(
                candidates.iter().any(|p| repo_file(p).exists()),
                "ARCHITECTURE.md names {path}, which does not exist"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "read {checked} paths from the code map");
}
