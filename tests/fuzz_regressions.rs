//! Tier 1: every input the fuzzers ever found interesting (kept in
//! `fuzz/regressions/`) is replayed through the same checks as the fuzz
//! targets, so a fixed crash stays fixed without a fuzzer installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use zonit::control::proto;

fn inputs(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(kind);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no regression inputs in {}", dir.display());
    out
}

#[test]
fn config_parser_survives_every_regression_input() {
    for (path, data) in inputs("config") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        if let Err(diags) = zonit::config::parse(Path::new("fuzz.toml"), text) {
            let lines = text.lines().count().max(1) + 1;
            for d in diags {
                assert!(
                    d.line >= 1 && d.line <= lines && d.col >= 1,
                    "{}: {d}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn control_decoder_survives_every_regression_input() {
    for (path, data) in inputs("control") {
        if let Ok(req) = proto::decode(&data) {
            let line = proto::encode_request(&req);
            assert_eq!(
                proto::decode(&line[..line.len() - 1]).as_ref(),
                Ok(&req),
                "{}",
                path.display()
            );
        }
    }
}
