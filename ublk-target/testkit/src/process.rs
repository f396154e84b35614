//! Signals and the end of processes: kill -9 of a node, waiting for a pid
//! to be gone.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `kill SIG PID`, which must succeed.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// kill -9 of `pid` (which may be gone already), then wait up to 5 s,
/// looking every `every`, until it is gone or a zombie: its files and
/// sockets are closed.
pub fn kill9_and_reap(pid: u32, every: Duration) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t0.elapsed() < Duration::from_secs(5) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            break;
        }
        std::thread::sleep(every);
    }
}

/// Whether `pid` no longer runs (gone, or a zombie).
pub fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

/// Wait until `pid` no longer runs; fail after `secs`.
pub fn wait_gone(pid: u32, secs: u64) {
    let t0 = Instant::now();
    while !gone(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "pid {pid} still runs after {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed and reaped when the test is done with it (or
/// fails half way).
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
