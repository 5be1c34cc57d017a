//! Tier 1: rules about the repository itself. It must stand alone (no
//! reference to a document a reader of the repository cannot open), and
//! every integration test file must be run by some tier of
//! `scripts/test.sh` (a new `tests/*.rs` cannot silently run in none).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The text files git tracks (or would track) in the work tree.
fn tracked_text_files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .current_dir(root())
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| root().join(l))
        .filter(|p| p.is_file())
        .filter(|p| fs::read(p).map(|b| !b.contains(&0)).unwrap_or(false))
        .collect()
}

/// A reference that points outside the repository: the project's planning
/// documents and issue tracker are not part of what a user gets.
fn outside_reference(line: &str) -> Option<&'static str> {
    let lower = line.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    for pair in words.windows(2) {
        let numbered = pair[1].chars().all(|c| c.is_ascii_digit());
        match pair[0] {
            "spec" if pair[1] == "section" => return Some("a numbered specification section"),
            "issue" if numbered => return Some("an issue number"),
            "milestone" if numbered => return Some("a milestone number"),
            _ => {}
        }
    }
    if line.contains("SPEC.md") || line.contains("shared/research") {
        return Some("a planning document");
    }
    None
}

#[test]
fn the_repository_cites_no_document_outside_it() {
    let this = root().join("tests/repo.rs");
    let mut found = Vec::new();
    for path in tracked_text_files() {
        if path == this {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            if let Some(what) = outside_reference(line) {
                found.push(format!(
                    "{}:{}: cites {what}: {}",
                    path.strip_prefix(root()).unwrap_or(&path).display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "say it in the repository's own words (docs/) instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn outside_references_are_recognised() {
    // Built from words, so this file does not hold the citations it
    // looks for.
    let line = |words: &[&str]| words.join(" ");
    assert_eq!(
        outside_reference(&line(&["as", "SPEC", "section", "4", "says"])),
        Some("a numbered specification section")
    );
    assert_eq!(
        outside_reference(&line(&["(see", "issue", "12)"])),
        Some("an issue number")
    );
    assert_eq!(
        outside_reference(&line(&["done", "in", "milestone", "1"])),
        Some("a milestone number")
    );
    assert_eq!(outside_reference("an issue with the disk"), None);
    assert_eq!(outside_reference("Ipv6Addr::UNSPECIFIED"), None);
}

/// The `--test NAME` arguments of scripts/test.sh.
fn tests_run_by_tiers(script: &str) -> Vec<String> {
    let words: Vec<&str> = script.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "--test")
        .map(|w| w[1].to_string())
        .collect()
}

#[test]
fn every_integration_test_file_runs_in_a_tier() {
    let script = fs::read_to_string(root().join("scripts/test.sh")).expect("scripts/test.sh");
    let run = tests_run_by_tiers(&script);
    let mut missing = Vec::new();
    for entry in fs::read_dir(root().join("tests")).expect("tests/") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let name = stem(&path);
        if !run.contains(&name) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "tests/*.rs run by no tier of scripts/test.sh: {missing:?}; add `--test NAME` to a tier"
    );
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}
