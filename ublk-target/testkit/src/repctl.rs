//! Running `repctl` for one node of a resource, and what tests check on a
//! pair of nodes: in sync, the same data.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::netns::in_netns;

/// One node's `repctl`: the binary, the resource file, the node's name,
/// the run directory (control sockets, logs) and the namespace it runs in.
#[derive(Debug, Clone, Copy)]
pub struct Repctl<'a> {
    pub bin: &'a Path,
    pub config: &'a Path,
    pub node: &'a str,
    pub run_dir: &'a Path,
    pub netns: Option<&'a str>,
}

impl Repctl<'_> {
    /// `repctl --config .. --node .. --run-dir ..`, arguments to follow.
    pub fn command(&self) -> Command {
        let mut c = in_netns(self.netns, self.bin);
        c.arg("--config")
            .arg(self.config)
            .arg("--node")
            .arg(self.node)
            .arg("--run-dir")
            .arg(self.run_dir);
        c
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Run repctl and insist it succeeds; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.output(args);
        assert!(
            o.status.success(),
            "repctl {} on {} failed:\n{}\n{}",
            args.join(" "),
            self.node,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `repctl status --json`, or None when repd does not answer.
    pub fn status(&self) -> Option<Value> {
        let o = self.output(&["status", "--json"]);
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }
}

/// Whether a node's status says Connected UpToDate/UpToDate.
pub fn is_synced(s: &Value) -> bool {
    s["connection"] == "Connected" && s["disk"] == "UpToDate" && s["peer_disk"] == "UpToDate"
}

/// The first `n` bytes (the data regions) of two disk images, byte for byte.
pub fn assert_same_data(a: &Path, b: &Path, n: usize) {
    let a = std::fs::read(a).unwrap();
    let b = std::fs::read(b).unwrap();
    let first = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y);
    assert!(
        first.is_none(),
        "data regions differ first at byte {first:?}"
    );
}

/// The last `n` lines of the file at `path` (empty if it is missing).
pub fn log_tail(path: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
