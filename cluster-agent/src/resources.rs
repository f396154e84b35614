//! Carrying out the resource chain and the fence command: processes with a
//! timeout, never a shell for anything but the fence command line.
//!
//! Scripts and the fence command get the environment `REP_RESOURCE`,
//! `REP_NODE`, `REP_PEER` and `REP_DEVICE` (and `DRBD_RESOURCE`,
//! `DRBD_PEER` for fence-peer handlers written for DRBD).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::ResourceEntry;

/// Who runs the chain, for the environment of scripts.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub resource: String,
    pub node: String,
    pub peer: String,
    /// This node's device (`/dev/ublkbN`).
    pub device: PathBuf,
}

impl Ctx {
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("REP_RESOURCE", &self.resource)
            .env("REP_NODE", &self.node)
            .env("REP_PEER", &self.peer)
            .env("REP_DEVICE", &self.device)
            .env("DRBD_RESOURCE", &self.resource)
            .env("DRBD_PEER", &self.peer)
            .stdin(Stdio::null());
        c
    }
}

/// How a process ended: its exit code (`None` if killed by a signal) and
/// the last of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub output: String,
}

/// Run `cmd` in its own process group; kill the group after `timeout`.
///
/// # Errors
/// When it cannot start, or did not finish in time (it is killed then).
pub fn run(mut cmd: Command, timeout: Duration) -> Result<Exit, String> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    // Readers hand their bytes over a channel: a daemon started by the
    // script may keep the pipe open forever, and must not hold us up.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut streams = 0;
    for r in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        let mut r = r;
        streams += 1;
        let _ = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || {
                let mut v = Vec::new();
                let _ = r.by_ref().take(64 * 1024).read_to_end(&mut v);
                let _ = tx.send(v);
                // Drain the rest so the child never blocks on a full pipe.
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            });
    }
    drop(tx);
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if t0.elapsed() >= timeout => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    let Some(status) = status else {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "{what} did not finish within {} ms and was killed",
            timeout.as_millis()
        ));
    };
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(200);
    for _ in 0..streams {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => out.extend_from_slice(&v),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&out);
    let text = text.trim();
    // Keep the end: that is where the error is.
    let tail: String = {
        let chars: Vec<char> = text.chars().collect();
        chars
            .get(chars.len().saturating_sub(500)..)
            .unwrap_or_default()
            .iter()
            .collect()
    };
    Ok(Exit {
        code: status.code(),
        output: tail,
    })
}

fn check(what: &str, r: Result<Exit, String>) -> Result<(), String> {
    let e = r?;
    match e.code {
        Some(0) => Ok(()),
        Some(c) if e.output.is_empty() => Err(format!("{what}: exit {c}")),
        Some(c) => Err(format!("{what}: exit {c}: {}", e.output)),
        None => Err(format!("{what}: killed by a signal")),
    }
}

/// Start resource `r` (idempotent: a running resource is left running).
///
/// # Errors
/// What failed, with the command's output.
pub fn start(r: &ResourceEntry, ctx: &Ctx) -> Result<(), String> {
    match r {
        ResourceEntry::Service { script, timeout } => {
            let mut c = ctx.command(script);
            c.arg("start");
            check(&format!("{} start", script.display()), run(c, *timeout))
        }
        ResourceEntry::Filesystem {
            device,
            mount_point,
            fstype,
            options,
            timeout,
        } => {
            if is_mounted(mount_point) {
                return Ok(());
            }
            let dev = device.clone().unwrap_or_else(|| ctx.device.clone());
            let mut c = ctx.command("mount");
            if let Some(t) = fstype {
                c.args(["-t", t]);
            }
            if let Some(o) = options {
                c.args(["-o", o]);
            }
            c.arg(&dev).arg(mount_point);
            check(
                &format!("mount {} {}", dev.display(), mount_point.display()),
                run(c, *timeout),
            )
        }
        ResourceEntry::Ip {
            address,
            prefix,
            interface,
            timeout,
        } => {
            let cidr = format!("{address}/{prefix}");
            if has_address(ctx, interface, &cidr, *timeout) {
                return Ok(());
            }
            let mut c = ctx.command("ip");
            c.args(["addr", "add", &cidr, "dev", interface]);
            check(
                &format!("ip addr add {cidr} dev {interface}"),
                run(c, *timeout),
            )?;
            if address.is_ipv4() {
                gratuitous_arp(ctx, interface, &address.to_string());
            }
            Ok(())
        }
    }
}

/// Stop resource `r` (idempotent: a stopped resource stays stopped).
///
/// # Errors
/// What failed, with the command's output.
pub fn stop(r: &ResourceEntry, ctx: &Ctx) -> Result<(), String> {
    match r {
        ResourceEntry::Service { script, timeout } => {
            let mut c = ctx.command(script);
            c.arg("stop");
            check(&format!("{} stop", script.display()), run(c, *timeout))
        }
        ResourceEntry::Filesystem {
            mount_point,
            timeout,
            ..
        } => {
            if !is_mounted(mount_point) {
                return Ok(());
            }
            let mut c = ctx.command("umount");
            c.arg(mount_point);
            check(
                &format!("umount {}", mount_point.display()),
                run(c, *timeout),
            )
        }
        ResourceEntry::Ip {
            address,
            prefix,
            interface,
            timeout,
        } => {
            let cidr = format!("{address}/{prefix}");
            if !has_address(ctx, interface, &cidr, *timeout) {
                return Ok(());
            }
            let mut c = ctx.command("ip");
            c.args(["addr", "del", &cidr, "dev", interface]);
            check(
                &format!("ip addr del {cidr} dev {interface}"),
                run(c, *timeout),
            )
        }
    }
}

/// Run the fence command line (through `sh -c`, like DRBD's handlers).
#[must_use]
pub fn fence(command: &str, timeout: Duration, ctx: &Ctx) -> (Option<i32>, String) {
    let mut c = ctx.command("sh");
    c.arg("-c").arg(command);
    match run(c, timeout) {
        Ok(e) => (e.code, e.output),
        Err(e) => (None, e),
    }
}

/// Run a hook command line (`reboot-command`, `split-brain-command`) through
/// `sh -c`, with the usual environment and `extra` variables.
#[must_use]
pub fn hook(
    command: &str,
    timeout: Duration,
    ctx: &Ctx,
    extra: &[(&str, String)],
) -> (Option<i32>, String) {
    let mut c = ctx.command("sh");
    c.arg("-c").arg(command);
    for (k, v) in extra {
        c.env(k, v);
    }
    match run(c, timeout) {
        Ok(e) => (e.code, e.output),
        Err(e) => (None, e),
    }
}

fn unescape_mount(s: &str) -> String {
    // /proc/mounts escapes space, tab, newline and backslash as \ooo.
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            let oct: String = (0..3).filter_map(|_| it.next()).collect();
            match u8::from_str_radix(&oct, 8) {
                Ok(b) => out.push(char::from(b)),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&oct);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether something is mounted on `mount_point`.
#[must_use]
pub fn is_mounted(mount_point: &Path) -> bool {
    let want = std::fs::canonicalize(mount_point).unwrap_or_else(|_| mount_point.to_owned());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| Path::new(&unescape_mount(m)) == want)
}

fn has_address(ctx: &Ctx, interface: &str, cidr: &str, timeout: Duration) -> bool {
    let mut c = ctx.command("ip");
    c.args(["-o", "addr", "show", "dev", interface]);
    match run(c, timeout) {
        Ok(e) => e.output.split_whitespace().any(|w| w == cidr),
        Err(_) => false,
    }
}

fn gratuitous_arp(ctx: &Ctx, interface: &str, ip: &str) {
    let found = Command::new("sh")
        .args(["-c", "command -v arping"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        tracing::info!(%ip, "arping not installed: no gratuitous ARP for the service address");
        return;
    }
    let mut c = ctx.command("arping");
    c.args(["-U", "-c", "3", "-I", interface, ip]);
    // In the background: neighbours learn the address while the chain goes on.
    let _ = std::thread::Builder::new()
        .name("arping".into())
        .spawn(move || match run(c, Duration::from_secs(10)) {
            Ok(e) if e.code == Some(0) => {}
            Ok(e) => tracing::warn!(code = ?e.code, output = %e.output, "arping failed"),
            Err(e) => tracing::warn!("arping: {e}"),
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            resource: "r0".into(),
            node: "alpha".into(),
            peer: "beta".into(),
            device: "/dev/ublkb0".into(),
        }
    }

    #[test]
    fn exit_codes_output_and_timeouts() {
        let (code, out) = fence(
            "echo outdating $REP_PEER; exit 4",
            Duration::from_secs(5),
            &ctx(),
        );
        assert_eq!(code, Some(4));
        assert_eq!(out, "outdating beta");
        let t0 = Instant::now();
        let (code, out) = fence("sleep 30", Duration::from_millis(200), &ctx());
        assert_eq!(code, None);
        assert!(out.contains("killed"), "{out}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        // A background child holding the pipe does not hang us either.
        let t0 = Instant::now();
        let (code, _) = fence("sleep 30 & exit 0", Duration::from_millis(300), &ctx());
        assert!(code == Some(0) || code.is_none());
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn service_script_start_stop() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("svc");
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$1\" in start) touch \"$(dirname \"$0\")/on.$REP_NODE\";; stop) rm -f \"$(dirname \"$0\")/on.$REP_NODE\";; *) exit 3;; esac\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let r = ResourceEntry::Service {
            script: script.clone(),
            timeout: Duration::from_secs(5),
        };
        start(&r, &ctx()).unwrap();
        assert!(dir.path().join("on.alpha").exists());
        stop(&r, &ctx()).unwrap();
        assert!(!dir.path().join("on.alpha").exists());
        let bad = ResourceEntry::Service {
            script: dir.path().join("missing"),
            timeout: Duration::from_secs(5),
        };
        let e = start(&bad, &ctx()).unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
    }

    #[test]
    fn filesystem_mount_and_umount_are_idempotent() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().join("mnt");
        std::fs::create_dir(&mp).unwrap();
        let r = ResourceEntry::Filesystem {
            device: Some("tmpfs".into()),
            mount_point: mp.clone(),
            fstype: Some("tmpfs".into()),
            options: Some("size=1m".into()),
            timeout: Duration::from_secs(10),
        };
        start(&r, &ctx()).unwrap();
        assert!(is_mounted(&mp));
        start(&r, &ctx()).unwrap();
        std::fs::write(mp.join("f"), b"x").unwrap();
        stop(&r, &ctx()).unwrap();
        assert!(!is_mounted(&mp));
        assert!(!mp.join("f").exists());
        stop(&r, &ctx()).unwrap();
        let bad = ResourceEntry::Filesystem {
            device: Some("/dev/does-not-exist".into()),
            mount_point: mp,
            fstype: Some("ext4".into()),
            options: None,
            timeout: Duration::from_secs(10),
        };
        let e = start(&bad, &ctx()).unwrap_err();
        assert!(e.contains("mount /dev/does-not-exist"), "{e}");
    }

    #[test]
    fn mount_table_escapes() {
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert!(is_mounted(Path::new("/proc")));
        assert!(!is_mounted(Path::new("/definitely/not/mounted")));
    }
}
