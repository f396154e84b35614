//! cargo-fuzz entry point; the checks are in `src/checks.rs`, shared with
//! the regression test `cluster-agent/tests/fuzz_regressions.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cluster_agent_fuzz::witness_packets(data));
