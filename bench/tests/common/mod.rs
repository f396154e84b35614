//! Setup shared by the bench smoke tests: each one runs a benchmark binary
//! end to end against the workspace's own daemons.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::panic)]

use std::fs::DirEntry;
use std::path::{Path, PathBuf};

pub use rep_testkit::require;

/// Builds the binaries of `packages` with the profile and into the target dir
/// of `bench_exe` (the benchmarks look for repd & co. next to themselves by
/// default), checks that each of `bins` is there, and returns that directory.
pub fn build_next_to(bench_exe: &Path, packages: &[&str], bins: &[&str]) -> PathBuf {
    rep_testkit::build_bins(bench_exe.parent().unwrap(), packages, bins)
}

/// The cargo-provided temporary directory the benchmarks write into.
pub fn tmp_dir() -> PathBuf {
    rep_testkit::target_tmp!()
}

/// Entries of `dir` whose names start with `prefix`: what a benchmark left
/// behind when it should have removed its temporary directories.
pub fn leftovers(dir: &Path, prefix: &str) -> Vec<DirEntry> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .collect()
}
