//! Setup shared by the bench smoke tests: each one runs a benchmark binary
//! end to end against the workspace's own daemons.

#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::fs::DirEntry;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fail loudly when a tool the benchmark drives is missing.
pub fn require(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{tool} is not installed: apt-get install -y {package} (scripts/test-all.sh does it)"
    );
}

/// Builds the binaries of `packages` with the profile and into the target dir
/// of `bench_exe` (the benchmarks look for repd & co. next to themselves by
/// default), checks that each of `bins` is there, and returns that directory.
pub fn build_next_to(bench_exe: &Path, packages: &[&str], bins: &[&str]) -> PathBuf {
    let profile_dir = bench_exe.parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.arg("build");
    for p in packages {
        c.args(["-p", p]);
    }
    c.args(["--bins", "--target-dir"]).arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "building {} failed:\n{}",
        bins.join("/"),
        String::from_utf8_lossy(&o.stderr)
    );
    for b in bins {
        assert!(
            profile_dir.join(b).is_file(),
            "{b} is not in {}",
            profile_dir.display()
        );
    }
    profile_dir.to_path_buf()
}

/// The cargo-provided temporary directory the benchmarks write into.
pub fn tmp_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&tmp).unwrap();
    tmp
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
