//! The source tree keeps its shape: each room of the controller (and of the filter's
//! core) uses only rooms below it, so there is no import cycle, and no source file
//! grows past what reads in one sitting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// The controller's rooms, lowest first: each may use only rooms before it.
const CONTROLLER_LAYERS: &[&str] = &[
    "units",
    "document",
    "access",
    "rollout",
    "registry",
    "store",
    "notify",
    "envoy",
    "fleet",
    "metrics",
    "analysis",
    "format",
    "view",
    "controller",
    "demo",
    "api",
    "serve",
    "cli",
];

/// The filter crate's modules, lowest first.
const CORE_LAYERS: &[&str] = &[
    "error",
    "digest",
    "cohort",
    "reader",
    "wire",
    "clock",
    "lease",
    "check",
    "route",
    "sync",
    "config",
    "routing",
    "telemetry",
    "stats",
    "replicate",
    "custom",
    "evidence",
    "plugin",
    "filter",
];

/// Longest source file, its unit tests included (about 500 lines of code and the
/// table-driven tests beside them).
const MAX_LINES: usize = 650;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module of a file under `src`.
fn room(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

/// `crate::X` names used outside the file's test module.
fn uses(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut rooms = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() {
            rooms.push(name);
        }
    }
    rooms
}

fn check_layers(src: &Path, layers: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let from = room(src, file);
        if from == "lib" || from == "main" {
            continue;
        }
        let Some(level) = layers.iter().position(|l| *l == from) else {
            problems.push(format!(
                "{}: room `{from}` is not in the layer list",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for to in uses(&text) {
            if to == from {
                continue;
            }
            match layers.iter().position(|l| *l == to) {
                Some(used) if used < level => {}
                _ => problems.push(format!(
                    "{}: `{from}` uses `{to}`, which is not below it",
                    file.display()
                )),
            }
        }
        let lines = text.lines().count();
        if lines > MAX_LINES {
            problems.push(format!("{}: {lines} lines", file.display()));
        }
    }
    problems
}

#[test]
fn the_controller_is_layered_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = check_layers(&src, CONTROLLER_LAYERS);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_filter_core_is_layered_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../src");
    let problems = check_layers(&src, CORE_LAYERS);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_check_sees_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::b::B;\n").unwrap();
    std::fs::write(dir.path().join("b.rs"), "use crate::a::A;\n").unwrap();
    let problems = check_layers(dir.path(), &["a", "b"]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("`a` uses `b`"), "{problems:?}");
}
