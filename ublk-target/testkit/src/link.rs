//! The replication link seen from outside, for the TLS and damaged-link
//! suites: a recognisable block pattern and a search for it, a tcpdump
//! capture of a namespace's veth, a node's address in a resource file, and
//! waiting for a `repctl events` line.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{require, signal, Netns, Repctl};

/// A recognisable block content: a text repeated over 1 MiB.
pub const PATTERN: &[u8] = b"REP-TLS-PLAINTEXT-PATTERN-0123456789abcdef|";

/// A 1 MiB file of [`PATTERN`] in `dir`.
pub fn pattern_file(dir: &Path) -> PathBuf {
    let mut data = Vec::with_capacity(1 << 20);
    while data.len() < 1 << 20 {
        data.extend_from_slice(PATTERN);
    }
    data.truncate(1 << 20);
    let p = dir.join("pattern.bin");
    std::fs::write(&p, &data).unwrap();
    p
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The `address` of the `i`th `[[node]]` of a resource file's text.
pub fn node_address(config_text: &str, i: usize) -> String {
    config_text
        .split("[[node]]")
        .nth(i + 1)
        .and_then(|n| n.lines().find(|l| l.starts_with("address = ")))
        .map(|l| {
            l.trim_start_matches("address = ")
                .trim_matches('"')
                .to_string()
        })
        .unwrap()
}

/// tcpdump on node 0's side of the veth, writing packets to a file.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns, file: PathBuf) -> Self {
        require("tcpdump", "tcpdump");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.names[0], "tcpdump", "-i", &ns.veth[0]])
            .args(["-U", "-s", "0", "-w", file.to_str().unwrap(), "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // tcpdump needs a moment before it captures.
        std::thread::sleep(Duration::from_millis(1500));
        Capture { child, file }
    }

    /// Stops tcpdump and returns what it captured.
    pub fn stop(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(500));
        signal(self.child.id(), "-INT");
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap()
    }
}

/// Waits (20 s at most) until `node`'s `repctl events --json` prints a
/// line containing `why`; fails the test with what it printed otherwise.
pub fn wait_event(node: &Repctl<'_>, why: &str) {
    let mut cmd = node.command();
    cmd.args(["events", "--json"]).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(&why.replace('"', "\\\"")) => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    assert!(
        found,
        "{}: no event names \"{why}\"; saw:\n{}",
        node.node,
        seen.join("\n")
    );
}
