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

/// The node's layers import each other one way only (ARCHITECTURE.md,
/// "Code map"): no cycle among `src/`'s top-level modules, counting every
/// `crate::<module>` a file names.
#[test]
fn the_modules_import_each_other_without_a_cycle() {
    use std::collections::{BTreeMap, BTreeSet};
    let src = repo_file("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let module_of = |path: &Path| -> Option<String> {
        let rel = path.strip_prefix(&src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?.to_string();
        match first.as_str() {
            "lib.rs" | "bin" => None,
            f => Some(f.trim_end_matches(".rs").to_string()),
        }
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(from) = module_of(file) else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            // `crate::{a, b::c}` names a and b.
            let names: Vec<String> = match rest.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap_or("").split(',').map(|p| ident(p.trim())).collect(),
                None => vec![ident(rest)],
            };
            for name in names {
                if name != from && modules.contains(&name) {
                    edges.entry(from.clone()).or_default().insert(name);
                }
            }
        }
    }
    assert!(edges.get("node").is_some_and(|e| e.contains("recharge")), "read the imports: {edges:?}");
    // Depth-first search for a back edge.
    fn visit(m: &str, edges: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("import cycle: {} -> {m}", path[at..].join(" -> "));
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in &modules {
        visit(m, &edges, &mut Vec::new(), &mut done);
    }
}

/// docs/events.md names exactly the events the code names (`Event::name`,
/// which history, subscribers and webhooks all use).
#[test]
fn docs_events_lists_exactly_the_event_names() {
    use std::collections::BTreeSet;
    let code = std::fs::read_to_string(repo_file("src/ledger/event.rs")).unwrap();
    let body = code.split("pub fn name(&self)").nth(1).expect("Event::name").split("\n    }\n").next().unwrap();
    let in_code: BTreeSet<String> =
        body.lines().filter_map(|l| l.split("=> \"").nth(1)).map(|r| r.trim_end_matches("\",").to_string()).collect();
    assert!(in_code.len() >= 25, "read the names: {in_code:?}");
    let docs = std::fs::read_to_string(repo_file("docs/events.md")).unwrap();
    let mut in_docs = BTreeSet::new();
    for row in docs.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap();
        in_docs.extend(first.split('`').skip(1).step_by(2).map(str::to_string));
    }
    assert_eq!(in_docs, in_code, "docs/events.md against Event::name");
}

/// The deployment kit (deploy/) fits the code: the container's config is
/// valid, what the Dockerfile copies exists, the service unit starts
/// `prepaid serve` with flags the binary has.
#[test]
fn the_deployment_kit_matches_the_code() {
    let read = |path: &str| std::fs::read_to_string(repo_file(path)).unwrap();
    let config = prepaid::NodeConfig::from_toml(&read("deploy/prepaid.docker.toml")).unwrap();
    assert_eq!(config.node.data_dir, std::path::PathBuf::from("/var/lib/prepaid"));
    let dockerfile = read("deploy/Dockerfile");
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(repo_file(source).exists(), "the Dockerfile copies {source}, which is missing");
    }
    let port = |addr: &str| addr.rsplit(':').next().unwrap().to_string();
    let expose = format!("EXPOSE {} {}", port(&config.server.grpc_addr), port(&config.server.http_addr));
    assert!(dockerfile.contains(&expose), "the image exposes the ports it listens on: {expose}");
    let unit = read("deploy/prepaid.service");
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(exec.ends_with("prepaid serve --config /etc/prepaid/prepaid.toml"), "{exec}");
    // The image ships the dist profile: release without debug info or
    // symbols.
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let dist = &manifest["profile"]["dist"];
    assert_eq!((dist["inherits"].as_str(), dist["strip"].as_str()), (Some("release"), Some("symbols")), "{dist}");
    assert_eq!(dist["debug"].as_bool(), Some(false), "{dist}");
    assert!(dockerfile.contains("cargo build --profile dist") && dockerfile.contains("target/dist/prepaid"));
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_prepaid")).args(["serve", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config <FILE>"), "serve takes --config");
}
