//! The layout of docs/ARCHITECTURE.md, checked: what each layer of a
//! service may import. A domain does no I/O and knows no wire; a store
//! persists and knows no wire; clients and use cases never reach back into
//! the api. Read from the source, so a change that breaks a rule fails here
//! with the file and line.

use std::fs;
use std::path::{Path, PathBuf};

const SERVICES: [&str; 5] = ["wallet", "metering", "invoicing", "payments", "orchestrator"];

/// Crates that do I/O or speak the wire.
const IO_AND_WIRE: [&str; 11] =
    ["sea_orm", "sqlx", "tonic", "prost", "reservoir_proto", "tokio", "reqwest", "lettre", "hyper", "axum", "tower"];
/// Crates that speak the wire or reach other systems.
const WIRE_AND_OUTSIDE: [&str; 8] =
    ["tonic", "prost", "reservoir_proto", "reqwest", "lettre", "hyper", "axum", "tower"];

struct Rule {
    layer: &'static str,
    crates: &'static [&'static str],
    modules: &'static [&'static str],
}

const RULES: [Rule; 4] = [
    Rule { layer: "domain", crates: &IO_AND_WIRE, modules: &["api", "app", "clients", "store", "usecases"] },
    Rule { layer: "store", crates: &WIRE_AND_OUTSIDE, modules: &["api", "app", "clients", "usecases"] },
    Rule { layer: "clients", crates: &[], modules: &["api", "app", "usecases"] },
    Rule { layer: "usecases", crates: &[], modules: &["api", "app"] },
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(directory) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

fn is_identifier(character: char) -> bool {
    character.is_alphanumeric() || character == '_'
}

/// Whether `line` names the path `name` (`name::…`, `use name;`, `name` as
/// a whole word before `::` or `;`), not as part of a longer identifier.
fn names(line: &str, name: &str) -> bool {
    line.match_indices(name).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = &line[at + name.len()..];
        before.is_none_or(|character| !is_identifier(character) && character != ':')
            && (after.starts_with("::") || after.starts_with(';') || after.starts_with(" as "))
    })
}

/// Lines of code, without comments and doc comments.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(index, line)| (index + 1, line))
}

fn relative(path: &Path) -> String {
    let root = root().canonicalize().unwrap();
    path.canonicalize().unwrap().strip_prefix(&root).unwrap().to_string_lossy().into_owned()
}

#[test]
fn every_service_has_the_same_layers() {
    for service in SERVICES {
        let source = root().join("services").join(service).join("src");
        for layer in ["api", "domain", "store", "usecases"] {
            assert!(source.join(layer).is_dir(), "services/{service}/src/{layer}/ is missing");
        }
        for stray in ["upstream.rs", "gateway.rs", "wallet.rs", "saga.rs", "worker.rs", "convert.rs"] {
            assert!(
                !source.join(stray).exists(),
                "services/{service}/src/{stray}: outbound calls go in clients/, flows in usecases/, wire conversion in api/"
            );
        }
    }
}

#[test]
fn layers_import_only_what_they_may() {
    let mut broken = Vec::new();
    for service in SERVICES {
        for rule in &RULES {
            let mut files = Vec::new();
            rust_files(&root().join("services").join(service).join("src").join(rule.layer), &mut files);
            for file in files {
                let name = relative(&file);
                let text = fs::read_to_string(&file).unwrap();
                for (number, line) in code_lines(&text) {
                    for krate in rule.crates {
                        if !names(line, krate) {
                            continue;
                        }
                        broken.push(format!("{name}:{number}: the {} layer uses {krate}: {}", rule.layer, line.trim()));
                    }
                    for module in rule.modules {
                        if names(line, &format!("crate::{module}")) {
                            broken.push(format!(
                                "{name}:{number}: the {} layer reaches into {module}: {}",
                                rule.layer,
                                line.trim()
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn only_clients_hold_generated_grpc_clients() {
    let mut broken = Vec::new();
    for service in SERVICES {
        let source = root().join("services").join(service).join("src");
        let mut files = Vec::new();
        rust_files(&source, &mut files);
        for file in files.into_iter().filter(|file| !file.starts_with(source.join("clients"))) {
            let text = fs::read_to_string(&file).unwrap();
            for (number, line) in code_lines(&text) {
                if line.contains("_service_client::") {
                    broken.push(format!("{}:{number}: {}", relative(&file), line.trim()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "outbound gRPC clients outside clients/:\n{}", broken.join("\n"));
}

#[test]
fn the_check_sees_what_it_looks_for() {
    assert!(names("use tonic::Status;", "tonic"));
    assert!(names("    let status = tonic::Code::NotFound;", "tonic"));
    assert!(names("use crate::store::Store;", "crate::store"));
    assert!(names("use prost;", "prost"));
    assert!(!names("use reservoir_common::tonic_helpers::x;", "tonic"));
    assert!(!names("use crate::storefront::X;", "crate::store"));
    assert!(!names("let my_tokio::x = 1;", "tokio"));
    assert!(!names("use super::store::X;", "store"));
    let lines: Vec<_> = code_lines("/// uses tonic::Status\nuse tokio::sync;\n").collect();
    assert_eq!(lines, vec![(2, "use tokio::sync;")]);
}

/// A service's error type is what its store, domain and use cases return,
/// so it speaks no wire: the one mapping to gRPC statuses is the api's
/// (`api/status.rs`, or the shared one in `reservoir_common::status`).
#[test]
fn error_types_speak_no_wire() {
    let mut broken = Vec::new();
    let files = SERVICES
        .iter()
        .map(|service| root().join("services").join(service).join("src").join("error.rs"))
        .chain([root().join("shared/common/src/error.rs")]);
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (number, line) in code_lines(&text) {
            for krate in WIRE_AND_OUTSIDE {
                if names(line, krate) {
                    broken.push(format!("{}:{number}: uses {krate}: {}", relative(&file), line.trim()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "error types that speak the wire:\n{}", broken.join("\n"));
}
