//! Small helpers: sizes, medians, ports, commands with a time limit, Ctrl-C.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Remember SIGINT/SIGTERM instead of dying, so the guards that stop the
/// daemons and remove the temp files still run. Child processes get the
/// default handlers back when they exec.
pub fn install_signal_handlers() -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; no other handler for these signals is replaced.
        unsafe { sigaction(sig, &act) }
            .map_err(|e| format!("cannot install a handler for {sig}: {e}"))?;
    }
    Ok(())
}

/// Did the user ask us to stop (Ctrl-C, SIGTERM)?
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fail with "interrupted" once the user asked us to stop.
pub fn check_interrupt() -> Result<(), String> {
    if interrupted() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Sleep, but wake early (with an error) on Ctrl-C.
pub fn sleep(d: Duration) -> Result<(), String> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// A TCP port on 127.0.0.1 nobody listens on right now.
pub fn free_port() -> Result<u16, String> {
    free_ports::<1>().map(|[p]| p)
}

/// `N` distinct free ports on 127.0.0.1. Each is held until all are
/// picked: ports asked for one at a time may repeat once released, and a
/// resource file with one port twice is refused.
pub fn free_ports<const N: usize>() -> Result<[u16; N], String> {
    let e = |e: std::io::Error| format!("cannot find a free port: {e}");
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for p in &mut ports {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(e)?;
        *p = l.local_addr().map_err(e)?.port();
        held.push(l);
    }
    Ok(ports)
}

/// Wait until something accepts connections on 127.0.0.1:port.
pub fn wait_tcp(port: u16, limit: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if t0.elapsed() > limit {
            return Err(format!(
                "nothing listens on 127.0.0.1:{port} after {limit:?}"
            ));
        }
        sleep(Duration::from_millis(50))?;
    }
}

/// "1G", "256M", "512KiB", "4096": bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| {
        format!("bad size {s:?}: expected a number with an optional K/M/G/T suffix")
    })?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "bad size {s:?}: unknown unit {unit:?} (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Bytes as "1.0 GiB", "64.0 MiB", "32 KiB".
pub fn human_bytes(b: u64) -> String {
    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;
    let f = b as f64;
    if b >= G {
        format!("{:.1} GiB", f / G as f64)
    } else if b >= M {
        format!("{:.1} MiB", f / M as f64)
    } else if b >= K {
        format!("{:.0} KiB", f / K as f64)
    } else {
        format!("{b} B")
    }
}

/// The median; the mean of the middle two for an even count. NaNs are ignored.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v.get(mid - 1)? + v.get(mid)?) / 2.0)
    }
}

/// Is `name` an executable in $PATH?
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Insist a tool is installed; the error names the Debian package.
pub fn require_tool(tool: &str, package: &str) -> Result<PathBuf, String> {
    find_in_path(tool)
        .ok_or_else(|| format!("{tool} is not installed: apt-get install -y {package}"))
}

/// Run a command to its end, with stdin closed, stdout and stderr captured,
/// killed after `limit`, or on Ctrl-C if `interruptible` (cleanup is not).
pub fn run_with_timeout(
    cmd: &mut Command,
    limit: Duration,
    interruptible: bool,
) -> Result<Output, String> {
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let out = child.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            v
        })
    });
    let err = child.stderr.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            v
        })
    });
    let status =
        wait_child(&mut child, limit, interruptible).map_err(|e| format!("{what}: {e}"))?;
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Wait for a child; kill it after `limit`, or on Ctrl-C if `interruptible`.
pub fn wait_child(
    child: &mut Child,
    limit: Duration,
    interruptible: bool,
) -> Result<std::process::ExitStatus, String> {
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait: {e}")),
        }
        let why = if interruptible && interrupted() {
            Some("interrupted".to_string())
        } else if t0.elapsed() > limit {
            Some(format!("still running after {limit:?}, killed"))
        } else {
            None
        };
        if let Some(why) = why {
            let _ = child.kill();
            let _ = child.wait();
            return Err(why);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server process that is killed when the guard goes away.
#[derive(Debug)]
pub struct KillOnDrop {
    pub child: Child,
    pub what: String,
}

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Create `path` with `bytes` of non-zero data, written for real (no holes,
/// no unwritten extents), and flushed: every target starts from a fully
/// allocated file, so no one pays block allocation during the runs.
pub fn prefill(path: &Path, bytes: u64) -> Result<(), String> {
    let e = |err: std::io::Error| format!("cannot write {}: {err}", path.display());
    let mut f = std::fs::File::create(path).map_err(e)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        let n = chunk.len();
        chunk.copy_from_slice(b.get(..n).unwrap_or(&[]));
    }
    let mut left = bytes;
    while left > 0 {
        check_interrupt()?;
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        f.write_all(buf.get(..n).unwrap_or(&[])).map_err(e)?;
        left -= n as u64;
    }
    f.sync_all().map_err(e)
}

/// The last `n` lines of a text file (empty if it cannot be read).
pub fn file_tail(path: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines
        .get(lines.len().saturating_sub(n)..)
        .unwrap_or(&[])
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(32 << 10), "32 KiB");
    }
}
