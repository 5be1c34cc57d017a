//! Fuzz target: the config parser must return a config or diagnostics for
//! any input, never panic, and every diagnostic must point inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(diags) = zonit::config::parse(std::path::Path::new("fuzz.toml"), text) {
        let lines = text.lines().count().max(1) + 1;
        for d in diags {
            assert!(d.line >= 1 && d.line <= lines, "{d} outside {lines} lines");
            assert!(d.col >= 1, "{d}");
        }
    }
});
