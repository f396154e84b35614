//! The test's surroundings: tools it drives, where its files go, the
//! workspace's binaries it runs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Fail loudly when a tool the test drives is missing (a skipped test would
/// pass unnoticed on a machine without it).
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

/// `dir`, created if needed.
pub fn ensure_dir(dir: impl Into<PathBuf>) -> PathBuf {
    let p = dir.into();
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// The calling test's `CARGO_TARGET_TMPDIR`, created: temp files on a real
/// filesystem (O_DIRECT works there; /tmp may be tmpfs). A macro because
/// cargo sets the variable when it compiles the test, not this crate.
#[macro_export]
macro_rules! target_tmp {
    () => {
        $crate::tools::ensure_dir(env!("CARGO_TARGET_TMPDIR"))
    };
}

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    // This crate lives in <root>/ublk-target/testkit.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/<profile>` of the running test executable
/// (`target/<profile>/deps/<test>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Builds the binaries of `packages` into the target directory above
/// `profile_dir`, with its profile (release when it is named `release`),
/// checks that each of `bins` is there and returns `profile_dir`. Cargo
/// builds only the test's own package's binaries before running it.
pub fn build_bins(profile_dir: &Path, packages: &[&str], bins: &[&str]) -> PathBuf {
    let target = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(["build", "-q"]);
    for p in packages {
        c.args(["-p", p]);
    }
    c.arg("--bins")
        .env("CARGO_TARGET_DIR", target)
        .current_dir(workspace_root());
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

/// The JSON report of a fio run with `--output-format=json` (fio may print
/// notes before it, which are skipped).
pub fn fio_json(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').expect("fio printed no JSON");
    serde_json::from_str(&text[start..]).expect("fio's JSON report parses")
}
