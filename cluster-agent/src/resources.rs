//! Carrying out the resource chain and the fence command: processes with a
//! timeout, never a shell for anything but the fence command line.
//!
//! The filesystem and the service address are done in this process
//! (mount(2), rtnetlink) rather than by `mount` and `ip`: they sit on the
//! failover's critical path, and a process start costs hundreds of ms in a
//! slow guest (see [`crate::netlink`]). `mount` is still run for what only
//! it knows: a filesystem without `fstype` (it probes the type) and
//! options that mount(8) handles itself (`loop`, `bind`, `x-*`, ...).
//!
//! Scripts and the fence command get the environment `REP_RESOURCE`,
//! `REP_NODE`, `REP_PEER` and `REP_DEVICE` (and `DRBD_RESOURCE`,
//! `DRBD_PEER` for fence-peer handlers written for DRBD).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;

use crate::config::ResourceEntry;
use crate::core::MonitorOutcome;
use crate::netlink;

/// Who runs the chain, for the environment of scripts.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub resource: String,
    pub node: String,
    pub peer: String,
    /// This node's device (`/dev/ublkbN`).
    pub device: PathBuf,
    /// repd adds the device when it becomes Primary, a moment after it
    /// answers the promotion: every start first waits for it to open (set
    /// when the kernel has ublk; without it the device is the NBD export
    /// and there is nothing to wait for).
    pub wait_for_device: bool,
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
    let (output, streams) = read_output(&mut child);
    let status = wait_or_kill(&mut child, timeout, &what)?;
    Ok(Exit {
        code: status.code(),
        output: output_tail(&output, streams),
    })
}

/// Read the child's stdout and stderr on threads of their own; each hands
/// its bytes over the returned channel (and how many streams there are).
fn read_output(child: &mut std::process::Child) -> (Receiver<Vec<u8>>, usize) {
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
    (rx, streams)
}

/// Wait for the child until `timeout`; then kill its process group.
fn wait_or_kill(
    child: &mut std::process::Child,
    timeout: Duration,
    what: &str,
) -> Result<std::process::ExitStatus, String> {
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
    Ok(status)
}

/// The last 500 characters of what the streams sent within 200 ms of the
/// exit (a daemon the script started may hold the pipes open).
fn output_tail(rx: &Receiver<Vec<u8>>, streams: usize) -> String {
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
    let chars: Vec<char> = text.chars().collect();
    chars
        .get(chars.len().saturating_sub(500)..)
        .unwrap_or_default()
        .iter()
        .collect()
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
    if ctx.wait_for_device {
        wait_for_device(&ctx.device, r.timeout())?;
    }
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
            let what = format!("mount {} {}", dev.display(), mount_point.display());
            if let Some(fstype) = fstype {
                if let Some((flags, data)) = mount_options(options.as_deref()) {
                    return mount_here(&what, &dev, mount_point, fstype, flags, &data, *timeout);
                }
            }
            let mut c = ctx.command("mount");
            if let Some(t) = fstype {
                c.args(["-t", t]);
            }
            if let Some(o) = options {
                c.args(["-o", o]);
            }
            c.arg(&dev).arg(mount_point);
            check(&what, run(c, *timeout))
        }
        ResourceEntry::Ip {
            address,
            prefix,
            interface,
            timeout,
        } => {
            let added = netlink::change_address(
                netlink::Change::Add,
                interface,
                *address,
                *prefix,
                *timeout,
            )
            .map_err(|e| e.to_string())?;
            if added && address.is_ipv4() {
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
            let what = format!("umount {}", mount_point.display());
            let mp = mount_point.clone();
            in_thread(&what, *timeout, move || {
                nix::mount::umount2(&mp, nix::mount::MntFlags::empty())
            })
        }
        ResourceEntry::Ip {
            address,
            prefix,
            interface,
            timeout,
        } => netlink::change_address(netlink::Change::Del, interface, *address, *prefix, *timeout)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}

/// Check whether resource `r` still runs (its monitor), within `timeout`:
/// a service by `SCRIPT status` (LSB: exit 0 running, 3 not running,
/// anything else or a timeout failed), a filesystem by the mount table, an
/// address by the interface's addresses.
#[must_use]
pub fn monitor(r: &ResourceEntry, ctx: &Ctx, timeout: Duration) -> MonitorOutcome {
    match r {
        ResourceEntry::Service { script, .. } => {
            let mut c = ctx.command(script);
            c.arg("status");
            let what = format!("{} status", script.display());
            match run(c, timeout) {
                Ok(e) => match e.code {
                    Some(0) => MonitorOutcome::Running,
                    Some(3) => MonitorOutcome::Stopped,
                    Some(c) if e.output.is_empty() => {
                        MonitorOutcome::Failed(format!("{what}: exit {c}"))
                    }
                    Some(c) => MonitorOutcome::Failed(format!("{what}: exit {c}: {}", e.output)),
                    None => MonitorOutcome::Failed(format!("{what}: killed by a signal")),
                },
                Err(e) => MonitorOutcome::Failed(e),
            }
        }
        ResourceEntry::Filesystem { mount_point, .. } => {
            if is_mounted(mount_point) {
                MonitorOutcome::Running
            } else {
                MonitorOutcome::Stopped
            }
        }
        ResourceEntry::Ip {
            address, interface, ..
        } => match has_address(interface, *address) {
            Ok(true) => MonitorOutcome::Running,
            Ok(false) => MonitorOutcome::Stopped,
            Err(e) => MonitorOutcome::Failed(e),
        },
    }
}

/// Whether `interface` carries `address` (getifaddrs(3), as `ip addr show`).
fn has_address(interface: &str, address: std::net::IpAddr) -> Result<bool, String> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?;
    Ok(addrs
        .filter(|a| a.interface_name == interface)
        .filter_map(|a| a.address)
        .any(|sa| {
            let ip = sa
                .as_sockaddr_in()
                .map(|s| std::net::IpAddr::V4(s.ip()))
                .or_else(|| sa.as_sockaddr_in6().map(|s| std::net::IpAddr::V6(s.ip())));
            ip == Some(address)
        }))
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

/// How often a start looks for the device repd is adding.
const DEVICE_POLL: Duration = Duration::from_millis(5);

/// Wait until `dev` opens: repd adds it right after it became Primary (the
/// node appears, then the disk goes live), and a mount in between would
/// fail with ENOENT or ENXIO.
///
/// The node appears (device_add) before the kernel registers the block
/// device (bdev_add); an open in between does not fail but asks for a
/// `block-major-M-N` module (CONFIG_BLOCK_LEGACY_AUTOLOAD) and waits for
/// modprobe: 1.3-4 s in the TCG guest. So the open waits for the disk's
/// `bdi` link in sysfs, which add_disk creates right before bdev_add.
fn wait_for_device(dev: &Path, timeout: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    let mut tries = 0u32;
    let mut last: Option<std::io::Error> = None;
    let bdi = dev
        .file_name()
        .filter(|_| dev.parent() == Some(Path::new("/dev")))
        .map(|n| Path::new("/sys/class/block").join(n).join("bdi"));
    loop {
        if bdi.as_ref().is_none_or(|b| b.exists()) || t0.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(DEVICE_POLL);
    }
    loop {
        tries += 1;
        let t = Instant::now();
        let e = match std::fs::File::open(dev) {
            Ok(_) => {
                if t0.elapsed() >= DEVICE_POLL {
                    tracing::info!(
                        ms = t0.elapsed().as_millis(),
                        last_open_ms = t.elapsed().as_millis(),
                        tries,
                        last_error = last.map(|e| e.to_string()),
                        "waited for {} (repd adds it after the promotion)",
                        dev.display()
                    );
                }
                return Ok(());
            }
            Err(e) => e,
        };
        let not_yet = matches!(
            e.raw_os_error(),
            Some(libc::ENOENT | libc::ENXIO | libc::ENODEV)
        );
        // Anything else (a permission, a held device) is for the resource's
        // own command to report.
        if !not_yet {
            return Ok(());
        }
        if t0.elapsed() >= timeout {
            return Err(format!(
                "{} did not appear within {} ms of the promotion (is repd adding it? see its log): {e}",
                dev.display(),
                timeout.as_millis()
            ));
        }
        last = Some(e);
        std::thread::sleep(DEVICE_POLL);
    }
}

/// mount(8)'s options that are mount(2) flags, and the rest as the
/// filesystem's data string; `None` when an option is one mount(8) carries
/// out itself (the program must run then).
fn mount_options(options: Option<&str>) -> Option<(MsFlags, String)> {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in options.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
        let (set, clear) = match o {
            "defaults" | "rw" | "async" | "suid" | "dev" | "exec" | "nomand" | "loud" => {
                let clear = match o {
                    "rw" => MsFlags::MS_RDONLY,
                    "async" => MsFlags::MS_SYNCHRONOUS,
                    "suid" => MsFlags::MS_NOSUID,
                    "dev" => MsFlags::MS_NODEV,
                    "exec" => MsFlags::MS_NOEXEC,
                    "nomand" => MsFlags::MS_MANDLOCK,
                    "loud" => MsFlags::MS_SILENT,
                    _ => MsFlags::empty(),
                };
                (MsFlags::empty(), clear)
            }
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
            "nolazytime" => (MsFlags::empty(), MsFlags::MS_LAZYTIME),
            // Done by mount(8) itself, not by the kernel.
            "loop" | "bind" | "rbind" | "move" | "remount" | "auto" | "noauto" | "user"
            | "nouser" | "users" | "owner" | "group" | "nofail" | "_netdev" | "private"
            | "shared" | "slave" | "unbindable" | "rprivate" | "rshared" | "rslave"
            | "runbindable" => return None,
            o if o.starts_with("x-")
                || o.starts_with("X-")
                || o.starts_with("loop=")
                || o.starts_with("offset=")
                || o.starts_with("sizelimit=")
                || o.starts_with("comment=")
                || o.starts_with("helper=")
                || o.starts_with("context=")
                || o.starts_with("fscontext=")
                || o.starts_with("defcontext=")
                || o.starts_with("rootcontext=") =>
            {
                return None
            }
            o => {
                data.push(o);
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    Some((flags, data.join(",")))
}

/// Run `f` on a thread of its own and give up waiting after `timeout`, as
/// [`run`] does with a process (a mount stuck on a device whose I/O is held
/// must not stop the agent; the thread is left to finish).
fn in_thread(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> nix::Result<()> + Send + 'static,
) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("mount".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("{what}: cannot start a thread: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: {} ({e})", e.desc())),
        Err(_) => Err(format!(
            "{what} did not finish within {} ms (left running)",
            timeout.as_millis()
        )),
    }
}

/// mount(2) from this process (in the agent's mount namespace, as the
/// program would).
fn mount_here(
    what: &str,
    dev: &Path,
    mount_point: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &str,
    timeout: Duration,
) -> Result<(), String> {
    let (dev, mp, fs, data) = (
        dev.to_owned(),
        mount_point.to_owned(),
        fstype.to_owned(),
        data.to_owned(),
    );
    let what = format!(
        "{what} (-t {fs}{}{data})",
        if data.is_empty() { "" } else { " -o " }
    );
    in_thread(&what, timeout, move || {
        nix::mount::mount(
            Some(dev.as_path()),
            mp.as_path(),
            Some(fs.as_str()),
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
    })
}

fn gratuitous_arp(ctx: &Ctx, interface: &str, ip: &str) {
    let mut c = ctx.command("arping");
    c.args(["-U", "-c", "3", "-I", interface, ip]);
    let ip = ip.to_owned();
    let span = tracing::Span::current();
    // In the background, the lookup too: neighbours learn the address while
    // the chain goes on. (Looking for the program on a slow PATH, a 9p root
    // in the test VM, took 0.7 s on the failover's path.)
    let _ = std::thread::Builder::new()
        .name("arping".into())
        .spawn(move || {
            let _g = span.enter();
            let found = std::env::var_os("PATH").is_some_and(|p| {
                std::env::split_paths(&p).any(|d| {
                    std::fs::metadata(d.join("arping"))
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
            });
            if !found {
                tracing::info!(%ip, "arping not installed: no gratuitous ARP for the service address");
                return;
            }
            match run(c, Duration::from_secs(10)) {
                Ok(e) if e.code == Some(0) => {}
                Ok(e) => tracing::warn!(code = ?e.code, output = %e.output, "arping failed"),
                Err(e) => tracing::warn!("arping: {e}"),
            }
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
            wait_for_device: false,
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

    /// A service resource whose LSB script (`svc` in a fresh temporary
    /// folder, kept alive by the returned guard) is `body`.
    fn service_script(body: &str) -> (tempfile::TempDir, ResourceEntry) {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("svc");
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let r = ResourceEntry::Service {
            script,
            timeout: Duration::from_secs(5),
        };
        (dir, r)
    }

    #[test]
    fn service_script_start_stop() {
        let (dir, r) = service_script(
            "#!/bin/sh\ncase \"$1\" in start) touch \"$(dirname \"$0\")/on.$REP_NODE\";; stop) rm -f \"$(dirname \"$0\")/on.$REP_NODE\";; status) [ -e \"$(dirname \"$0\")/on.$REP_NODE\" ] || exit 3;; *) exit 3;; esac\n",
        );
        let t = Duration::from_secs(5);
        assert_eq!(monitor(&r, &ctx(), t), MonitorOutcome::Stopped);
        start(&r, &ctx()).unwrap();
        assert!(dir.path().join("on.alpha").exists());
        assert_eq!(monitor(&r, &ctx(), t), MonitorOutcome::Running);
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
        let t = Duration::from_secs(5);
        assert_eq!(monitor(&r, &ctx(), t), MonitorOutcome::Stopped);
        start(&r, &ctx()).unwrap();
        assert!(is_mounted(&mp));
        assert_eq!(monitor(&r, &ctx(), t), MonitorOutcome::Running);
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
    fn mount_options_split_into_flags_and_data() {
        let (f, d) = mount_options(None).unwrap();
        assert_eq!((f, d.as_str()), (MsFlags::empty(), ""));
        let (f, d) =
            mount_options(Some("noatime,ro,data=ordered,nodev,errors=remount-ro")).unwrap();
        assert_eq!(
            f,
            MsFlags::MS_NOATIME | MsFlags::MS_RDONLY | MsFlags::MS_NODEV
        );
        assert_eq!(d, "data=ordered,errors=remount-ro");
        // Later options win, as with mount(8).
        let (f, _) = mount_options(Some("ro,rw,noexec,exec,defaults,sync")).unwrap();
        assert_eq!(f, MsFlags::MS_SYNCHRONOUS);
        // What mount(8) does itself sends us to the program.
        for o in [
            "loop",
            "bind",
            "x-systemd.automount",
            "noauto,nofail",
            "loop=/dev/loop3",
        ] {
            assert!(mount_options(Some(o)).is_none(), "{o}");
        }
    }

    #[test]
    fn a_device_that_never_appears_fails_the_start_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ctx();
        c.device = dir.path().join("ublkb9");
        c.wait_for_device = true;
        let r = ResourceEntry::Service {
            script: "/bin/true".into(),
            timeout: Duration::from_millis(300),
        };
        let t0 = Instant::now();
        let e = start(&r, &c).unwrap_err();
        assert!(e.contains("did not appear within 300 ms"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        // It appears a moment later: the start goes on.
        let dev = c.device.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(dev, b"").unwrap();
        });
        let r = ResourceEntry::Service {
            script: "/bin/true".into(),
            timeout: Duration::from_secs(5),
        };
        start(&r, &c).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn monitors_read_lsb_status_codes_timeouts_and_addresses() {
        let (dir, r) = service_script(
            "#!/bin/sh\n[ \"$1\" = status ] || exit 2\ncode=$(cat \"$(dirname \"$0\")/code\")\n[ \"$code\" = hang ] && exec sleep 30\necho \"status says $code\"; exit $code\n",
        );
        let code = |c: &str| {
            std::fs::write(dir.path().join("code"), c).unwrap();
            monitor(&r, &ctx(), Duration::from_millis(300))
        };
        assert_eq!(code("0"), MonitorOutcome::Running);
        assert_eq!(code("3"), MonitorOutcome::Stopped);
        // LSB 1 (dead, pid file left) and the rest: failed, with the output.
        let MonitorOutcome::Failed(e) = code("1") else {
            panic!("exit 1 is a failure")
        };
        assert!(e.contains("status: exit 1: status says 1"), "{e}");
        let t0 = Instant::now();
        let MonitorOutcome::Failed(e) = code("hang") else {
            panic!("a hung status is a failure")
        };
        assert!(e.contains("did not finish within 300 ms"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        let ip = |address: &str, interface: &str| ResourceEntry::Ip {
            address: address.parse().unwrap(),
            prefix: 8,
            interface: interface.into(),
            timeout: Duration::from_secs(5),
        };
        let t = Duration::from_secs(1);
        assert_eq!(
            monitor(&ip("127.0.0.1", "lo"), &ctx(), t),
            MonitorOutcome::Running
        );
        assert_eq!(
            monitor(&ip("127.9.9.9", "lo"), &ctx(), t),
            MonitorOutcome::Stopped
        );
        assert_eq!(
            monitor(&ip("127.0.0.1", "nosuchif0"), &ctx(), t),
            MonitorOutcome::Stopped
        );
    }

    #[test]
    fn mount_table_escapes() {
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert!(is_mounted(Path::new("/proc")));
        assert!(!is_mounted(Path::new("/definitely/not/mounted")));
    }
}
