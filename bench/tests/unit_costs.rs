//! `unit-costs` runs and prints a time for every row.
#![allow(clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn every_row_gets_a_time() {
    let out = Command::new(env!("CARGO_BIN_EXE_unit-costs"))
        .args(["--ops", "2000"])
        .output()
        .expect("unit-costs runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 13, "{text}");
    for row in rows {
        let ns: f64 = row
            .split_whitespace()
            .rev()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no time in {row:?}"));
        assert!(ns > 0.0 && ns.is_finite(), "{row}");
    }
    assert!(text.contains("memcpy 1 MiB"), "{text}");
}
