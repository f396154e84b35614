//! Replays what the fuzzers of `cluster-agent/fuzz` found (and a few inputs
//! that reach each parser's success path) through the very checks the fuzz
//! targets run, so a fixed finding stays fixed under `cargo test`.
//! FUZZING.md says how the targets run and how a finding lands here.
#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

/// Every file of `fuzz/regressions/TARGET/` through `check`; returns how many.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|f| f == "README") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        eprintln!("replaying {}", path.display());
        check(&data);
        n += 1;
    }
    n
}

#[test]
fn heartbeat_findings() {
    replay("heartbeat", checks::heartbeat);
}

#[test]
fn witness_packet_findings() {
    replay("witness_packets", checks::witness_packets);
}

#[test]
fn witness_core_findings() {
    replay("witness_core", checks::witness_core);
}

#[test]
fn resource_file_findings() {
    replay("resource_file", checks::resource_file);
}

/// The checks reach the parsers' success paths from inputs like the
/// fuzzer's (a signed body; a structured request run), so they are not
/// vacuous: a valid resource file round-trips through `repctl dump`.
#[test]
fn checks_accept_valid_inputs() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ublk-target/examples/r0.toml");
    let text = std::fs::read_to_string(&file).expect("ublk-target/examples/r0.toml");
    rep_control::config::Config::from_str_named(&text, &file).expect("the example loads");
    checks::resource_file(text.as_bytes());
    // Structured requests from both nodes, 10 ms apart, one asking for a vote.
    let mut run = vec![20u8];
    for (kind, flags) in [(0u8, 3u8), (2, 2), (0, 1)] {
        run.extend_from_slice(&[1, kind, flags]);
        run.extend_from_slice(&[0; 24]);
        run.push(3);
        run.extend_from_slice(&[0; 32]);
    }
    checks::witness_core(&run);
}
