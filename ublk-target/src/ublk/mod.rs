//! The ublk frontend: the replicated device as a real block device,
//! `/dev/ublkb<N>`, through the kernel's ublk driver and the `libublk` crate.
//!
//! - [`UblkDevice`]: one device. `start` adds it (or takes over the one a
//!   dead repd left, see below), `stop` removes it. Size from the backend,
//!   512-byte logical and 4096-byte physical blocks, 1 MiB requests, one
//!   queue per CPU (at most 4) of depth 128, a volatile write cache with
//!   FUA (so FLUSH and FUA reach the backend, which makes them durable on
//!   both nodes), discard and write-zeroes (4 KiB granularity, 1 MiB per
//!   request).
//! - The I/O path (`queue.rs`): a queue thread turns each request into an
//!   [`IoRequest`](crate::frontend::IoRequest), submits it to the backend
//!   and returns to its io_uring at once; answers come back on other
//!   threads through an eventfd read by the queue's ring. A write's data is
//!   lent, not copied: the backend gets the tag's own aligned buffer (the
//!   local disk writes it with O_DIRECT as it is) and the tag is committed
//!   once the answer is in and the buffer is released. Reads are copied
//!   into the request's buffer. A request is completed with its full byte count or a negative errno, never short.
//! - User recovery: devices are created with `UBLK_F_USER_RECOVERY |
//!   UBLK_F_USER_RECOVERY_REISSUE`. When repd dies (even `kill -9`) the
//!   kernel keeps `/dev/ublkb<N>` and holds its I/O (`QUIESCED`); the next
//!   repd finds it there and recovers it instead of adding a new one, and
//!   the requests that were in flight are issued again. Whoever runs the
//!   device decides when the held I/O may go on: [`UblkOptions::defer_recovery_end`]
//!   and [`UblkDevice::end_recovery`]; [`manage`] ends it once the node is
//!   Primary again. Until then a device left by a dead repd stays
//!   quiesced (nothing is served while the node is Secondary), and if the
//!   node's data moves to another generation meanwhile (it resynced from a
//!   peer that was Primary), the device is removed instead: its held I/O
//!   belongs to data that no longer exists.
//! - [`manage`]: repd's loop that keeps the device in step with the role:
//!   present while Primary, gone while Secondary. While Secondary the
//!   device is kept *prepared* (added, queues ready, not started: only the
//!   control device `/dev/ublkcN` exists, no block device), so that a
//!   promotion only starts it.
//! - [`in_use`]: mounted or open, the test the engine makes before it
//!   demotes ([`demotion_blocker`]).
//! - [`prepare_daemon`]: repd must not share its mount namespace with the
//!   users of its own device (libublk's README: a daemon that exits while a
//!   filesystem on its device is mounted in its namespace deadlocks), so it
//!   moves into a private one at start.
//!
//! Without ublk_drv (no `/dev/ublk-control`) nothing here does anything but
//! say so once: repd serves its NBD export only.

mod device;
mod inuse;
mod queue;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use device::{
    device_path, driver_present, probe, remove_left_over, DevState, Existing, UblkDevice,
    UblkOptions, CONTROL_PATH,
};
pub use inuse::{in_use, in_use_reason};

use crate::engine::EngineHandle;
use crate::frontend::{BlockBackend, RoleWait};

/// The warning repd logs once when the kernel has no ublk driver.
pub const NO_DRIVER_WARNING: &str =
    "no /dev/ublk-control: the kernel lacks ublk_drv (modprobe ublk_drv); serving only the NBD export";

/// Why a ublk device could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum UblkError {
    #[error("no {CONTROL_PATH}: the kernel lacks ublk_drv (modprobe ublk_drv)")]
    NoDriver,
    #[error("ublk device id {0} is out of range")]
    BadId(u32),
    #[error("device size {0} bytes is not a positive multiple of 4096")]
    BadSize(u64),
    #[error("unusable ublk options: {0}")]
    BadOptions(String),
    #[error("ublk device {dev_id} already exists ({state:?}) and belongs to process {pid}; stop that server or choose another `device` id")]
    Busy {
        dev_id: u32,
        pid: i32,
        state: DevState,
    },
    #[error("ublk device {dev_id}, left by a dead server, has {have} bytes, this resource {want}: not taking it over; remove it (ublk del -n {dev_id}) or choose another `device` id")]
    Mismatch { dev_id: u32, have: u64, want: u64 },
    #[error("ublk {op} for device {dev_id} failed: {detail}")]
    Ctrl {
        dev_id: u32,
        op: &'static str,
        detail: String,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("the control thread of ublk device {0} is gone")]
    Gone(u32),
}

/// libublk's errors say little ("io_uring IO failure"): add the errno.
pub(crate) fn describe(e: &libublk::UblkError) -> String {
    let errno = |n: i32| nix::errno::Errno::from_raw(n.saturating_abs());
    match e {
        libublk::UblkError::UringIOError(n) | libublk::UblkError::OtherError(n) => {
            format!("{} ({})", errno(*n).desc(), errno(*n))
        }
        other => format!("{other} ({other:?})"),
    }
}

/// The devices this process serves now: what [`demotion_blocker`] checks.
static SERVED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
/// Set by [`prepare_daemon`] once the process has its own mount namespace.
static PRIVATE_MOUNTS: AtomicBool = AtomicBool::new(false);

fn served() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    SERVED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long [`demotion_blocker`] waits for its check.
const IN_USE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why this node must not demote now: a ublk device it serves is in use
/// (mounted, open). `None` when nothing blocks it (also when no device is
/// served). The words follow DRBD's "Device is held open by someone".
///
/// Safe to call from the thread that answers the device's I/O (the engine):
/// the check runs on a helper thread (it opens the device, and closing a
/// block device may write back its cache through us) and is given up after
/// 2 s, which then refuses the demotion.
pub fn demotion_blocker() -> Option<String> {
    let ids: Vec<u32> = served().iter().copied().collect();
    if ids.is_empty() {
        return None;
    }
    let (tx, rx) = mpsc::channel();
    let check = ids.clone();
    let spawned = std::thread::Builder::new()
        .name("ublk-in-use".into())
        .spawn(move || {
            let r = check
                .iter()
                .find_map(|&id| in_use_reason(id).map(|why| (id, why)));
            let _ = tx.send(r);
        });
    let names = ids
        .iter()
        .map(|id| device_path(*id).display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if spawned.is_err() {
        return Some(format!(
            "cannot check whether {names} is in use (no thread); try again"
        ));
    }
    match rx.recv_timeout(IN_USE_CHECK_TIMEOUT) {
        Ok(None) => None,
        Ok(Some((id, why))) => Some(format!(
            "Device is held open by someone: {} is {why}; unmount it or close it, then demote",
            device_path(id).display()
        )),
        Err(_) => Some(format!(
            "cannot tell whether {names} is in use (the check did not finish within {} s); try again",
            IN_USE_CHECK_TIMEOUT.as_secs()
        )),
    }
}

/// Call at daemon start, before any thread exists: when ublk is available,
/// move this process into a mount namespace of its own whose mounts do not
/// propagate (`unshare(CLONE_NEWNS)` + `mount --make-rprivate /`). Files
/// and sockets stay where they are (same filesystems); only mounts made
/// from now on are no longer shared. Without ublk_drv it does nothing.
pub fn prepare_daemon() {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    if !driver_present() {
        return;
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
        tracing::warn!(
            "cannot enter a private mount namespace ({e}); a filesystem mounted on a ublk device \
             from this namespace can deadlock repd's exit"
        );
        return;
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        tracing::warn!("cannot make the mounts of repd's mount namespace private: {e}");
        return;
    }
    PRIVATE_MOUNTS.store(true, Ordering::Release);
    tracing::debug!("running in a private mount namespace");
    detach_ublk_mounts();
}

/// The private namespace starts as a copy of the caller's, with every
/// filesystem mounted there, also those on ublk devices (one on a device a
/// dead repd left, say). A copy held here would keep that filesystem, and so
/// its device and device id, alive as long as repd runs, whatever its users
/// unmount: detach them (here only; repd never uses them).
fn detach_ublk_mounts() {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // Innermost first: the last mounts were made last.
    for at in ublk_mount_points(&text).into_iter().rev() {
        match nix::mount::umount2(at.as_str(), nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => tracing::debug!("detached {at} (a ublk device) from repd's mount namespace"),
            Err(e) => tracing::warn!(
                "cannot detach {at} (on a ublk device) from repd's mount namespace: {e}"
            ),
        }
    }
}

/// The mount points of filesystems on `/dev/ublkb*` in a mountinfo text.
fn ublk_mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            let source = tail.split(' ').nth(1)?;
            let at = head.split(' ').nth(4)?;
            source
                .starts_with("/dev/ublkb")
                .then(|| unescape_mountinfo(at))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b.get(i) == Some(&b'\\') && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(b.get(i).copied().unwrap_or(b'?'));
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How soon [`manage`] looks again while something is under way (a device
/// just set up or removed, one in use that should go).
const TICK: Duration = Duration::from_millis(10);
/// How long [`manage`] sleeps when nothing is under way. A role change
/// wakes it at once; this bounds how late it sees what nobody announces (a
/// device removed behind its back, a retry that is due).
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// How long [`manage`] waits before trying again after a failure.
const RETRY: Duration = Duration::from_secs(5);
/// How often [`manage`] checks a device it should remove but that is in use.
const IN_USE_RECHECK: Duration = Duration::from_secs(1);

/// The data generation this node holds, as the engine reports it: what
/// decides whether I/O a dead repd left held may still go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataGen {
    /// The current generation UUID.
    pub current: u64,
    /// The bitmap UUID: the generation this node's own writes while
    /// disconnected started from (0 when none).
    pub bitmap: u64,
}

impl DataGen {
    /// From the engine's status (hex strings), `None` if it has none.
    pub fn of(handle: &EngineHandle) -> Option<DataGen> {
        let st = handle
            .control(rep_control::protocol::ControlCmd::Status)?
            .status?;
        let g = &st.generations;
        Some(DataGen {
            current: u64::from_str_radix(&g.current, 16).ok()?,
            bitmap: u64::from_str_radix(&g.bitmap, 16).ok()?,
        })
    }

    /// Whether this data still continues generation `held`: it is that
    /// generation, or this node moved on from it by itself (a promotion
    /// without the peer, or the peer lost while Primary, puts the old
    /// current UUID into the bitmap UUID). A resync from a peer that wrote a
    /// newer generation, or `primary --force`, does not.
    pub fn continues(&self, held: u64) -> bool {
        self.current == held || self.bitmap == held
    }
}

/// A device a dead repd left (user recovery: its I/O held by the kernel),
/// not yet taken over.
struct LeftOver {
    /// The generation this node held when this repd started: the one the
    /// dead repd served. `None` when it could not be read.
    held: Option<u64>,
    checked: Instant,
}

/// How often [`manage`] looks at the generation while a left-over device waits.
const LEFT_OVER_RECHECK: Duration = Duration::from_secs(1);

/// repd's ublk loop, until `shutdown`: while the node is Primary the device
/// `/dev/ublkb<dev_id>` exists (started, or recovered from a repd that died;
/// its held I/O goes on once the node is Primary), while it is not the
/// block device is removed (the engine does not demote while it is in use)
/// and a fresh ublk device is kept added but not started, so that the next
/// promotion only pays START_DEV. At shutdown the device is removed. Every
/// change is logged. Without ublk_drv it logs [`NO_DRIVER_WARNING`] once
/// and returns.
///
/// A device left by a repd that died is never served while this node is
/// Secondary: it stays quiesced (the kernel holds its I/O; nothing is read
/// or written). It is taken over only when the node becomes Primary with
/// data that continues the generation the dead repd served; once the data
/// has moved to another generation (a resync from a peer that was Primary
/// meanwhile), the held I/O belongs to data that no longer exists, so the
/// device is removed (the held requests fail with EIO) and a new one is
/// added when the node is Primary.
///
/// With `resume_held` (`startup.resume-after-crash = "held-device"`, the
/// default without a `[cluster]` table), finding such a device arms the
/// engine to take the Primary role back by itself (`ResumeAfterCrash`):
/// once the activity-log resync made this node UpToDate, connected to a
/// Secondary peer on the same generation. The held I/O then goes on and
/// the users of the device never notice the restart.
pub fn manage(dev_id: u32, handle: EngineHandle, shutdown: Arc<AtomicBool>, resume_held: bool) {
    let h = handle.clone();
    let g = handle.clone();
    let w = handle.clone();
    let r = handle.clone();
    let on_held = move || {
        if !resume_held {
            tracing::info!(
                "resume-after-crash is off (\"never\", or a [cluster] table: the cluster agent \
                 decides): the device waits for a promotion"
            );
            return;
        }
        match r.control(rep_control::protocol::ControlCmd::ResumeAfterCrash) {
            Some(rep) if rep.ok => tracing::info!(
                "this node resumes as Primary by itself once its activity log is resynced from a \
                 Secondary peer on the same data generation (resume-after-crash = \"held-device\")"
            ),
            Some(rep) => tracing::warn!(
                "not resuming as Primary by itself: {}",
                rep.error.unwrap_or_default()
            ),
            None => tracing::warn!("cannot arm the resumption: the engine is gone"),
        }
    };
    manage_with(
        dev_id,
        Arc::new(handle),
        &w,
        &shutdown,
        UblkOptions {
            defer_recovery_end: true,
            ..UblkOptions::default()
        },
        &move || h.writable(),
        &move || DataGen::of(&g),
        &on_held,
    );
}

/// [`manage`] for any backend. `may_end_recovery` says when a recovered
/// device may serve its held I/O (asked while the node is Primary);
/// `generation` gives the node's data generation (`None`: unknown, a
/// left-over device is then taken over when the node is Primary).
/// `on_held` is called once when a device left by a dead repd is found.
#[allow(clippy::too_many_arguments)]
pub fn manage_with(
    dev_id: u32,
    backend: Arc<dyn BlockBackend>,
    roles: &dyn RoleWait,
    shutdown: &AtomicBool,
    opts: UblkOptions,
    may_end_recovery: &dyn Fn() -> bool,
    generation: &dyn Fn() -> Option<DataGen>,
    on_held: &dyn Fn(),
) {
    let span = tracing::info_span!("ublk", dev = dev_id);
    let _g = span.enter();
    if !driver_present() {
        tracing::warn!("{NO_DRIVER_WARNING}");
        return;
    }
    if !PRIVATE_MOUNTS.load(Ordering::Acquire) {
        tracing::warn!(
            "repd shares its mount namespace with the users of {}: do not mount it from repd's \
             namespace (repd's exit could deadlock)",
            device_path(dev_id).display()
        );
    }
    let mut left: Option<LeftOver> = None;
    match probe(dev_id) {
        // Added but never started by a repd that died (it was prepared
        // while Secondary): nothing is held; preparing removes it.
        Ok(Some(e)) if e.state == DevState::Dead && !e.server_alive() => {
            tracing::info!(
                old_pid = e.pid,
                "ublk device {dev_id} was added, never started, by a repd that died; replacing it"
            );
        }
        Ok(Some(e)) if e.recoverable && !e.server_alive() => {
            let held = generation().map(|g| g.current);
            tracing::info!(
                old_pid = e.pid,
                state = ?e.state,
                generation = held.map(|g| format!("{g:016X}")),
                "{} was left by a repd that died; it stays quiesced (nothing served) while this node \
                 is not Primary, and is taken over only if the data is still of this generation then",
                device_path(dev_id).display()
            );
            left = Some(LeftOver {
                held,
                checked: Instant::now(),
            });
            on_held();
        }
        Ok(Some(e)) => tracing::warn!(
            pid = e.pid,
            state = ?e.state,
            "ublk device {dev_id} already exists; it is taken over only if its server is gone"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot look for ublk device {dev_id}: {e}"),
    }
    let mut dev: Option<UblkDevice> = None;
    let mut last_err: Option<String> = None;
    let mut retry_at = Instant::now();
    let mut prepare_at = Instant::now();
    let mut prepare_err: Option<String> = None;
    let mut in_use_checked: Option<Instant> = None;
    let mut in_use_said = false;
    let mut vanish_checked = Instant::now();
    while !shutdown.load(Ordering::Acquire) {
        let seen = roles.role_changes();
        let before = state_of(dev.as_ref(), left.is_some());
        let primary = backend.writable();
        if dev.is_none() {
            if let Some(l) = left.as_mut() {
                if primary || l.checked.elapsed() >= LEFT_OVER_RECHECK {
                    l.checked = Instant::now();
                    if check_left_over(dev_id, l.held, generation()) {
                        left = None;
                    }
                }
            }
        }
        // Removed behind our back (`ublk del`)? Looked at once a second.
        let vanished = match dev.as_ref() {
            Some(d)
                if d.is_live()
                    && !d.is_recovering()
                    && vanish_checked.elapsed() >= IN_USE_RECHECK =>
            {
                vanish_checked = Instant::now();
                !std::path::Path::new(&format!("/sys/block/ublkb{dev_id}")).exists()
            }
            _ => false,
        };
        match (dev.as_ref(), primary) {
            (None, true) if Instant::now() >= retry_at => {
                tracing::debug!("Primary: setting up {}", device_path(dev_id).display());
                match UblkDevice::start(dev_id, backend.clone(), opts.clone()) {
                    Ok(d) => {
                        served().insert(dev_id);
                        left = None;
                        if d.is_recovering() {
                            tracing::info!(
                                "Primary: took over {} from the repd that died; its I/O stays held until recovery ends",
                                d.path().display()
                            );
                        } else if d.recovered() {
                            tracing::info!(
                                "Primary: recovered {}; the I/O held since the last repd died goes on",
                                d.path().display()
                            );
                        } else {
                            tracing::info!("Primary: started {}", d.path().display());
                        }
                        last_err = None;
                        dev = Some(d);
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        if last_err.as_deref() != Some(msg.as_str()) {
                            tracing::warn!(
                                "cannot start {} (retrying every {} s): {msg}",
                                device_path(dev_id).display(),
                                RETRY.as_secs()
                            );
                        }
                        last_err = Some(msg);
                        retry_at = Instant::now() + RETRY;
                    }
                }
            }
            (Some(d), true) if !d.is_live() => match d.go_live() {
                Ok(()) => {
                    served().insert(dev_id);
                    tracing::info!(
                        "Primary: started {} (prepared while Secondary)",
                        d.path().display()
                    );
                    last_err = None;
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot start the prepared {} ({e}); adding it anew",
                        d.path().display()
                    );
                    if let Some(d) = dev.take() {
                        stop(d, "start failed");
                    }
                }
            },
            (Some(d), true) if d.is_recovering() && may_end_recovery() => match d.end_recovery() {
                Ok(()) => {
                    tracing::info!(
                        "recovery of {} ended: the held I/O goes on",
                        d.path().display()
                    );
                    last_err = None;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_err.as_deref() != Some(msg.as_str()) {
                        tracing::warn!("cannot end the recovery of {}: {msg}", d.path().display());
                    }
                    last_err = Some(msg);
                }
            },
            (Some(d), true) if vanished => {
                tracing::warn!(
                    "{} vanished (removed by someone else?); setting it up again",
                    d.path().display()
                );
                if let Some(d) = dev.take() {
                    stop(d, "vanished");
                }
            }
            // Secondary with no device: add one, not started, so that the
            // next promotion only has to start it. No block device exists
            // until then: a Secondary still exposes nothing.
            (None, false) if left.is_none() && Instant::now() >= prepare_at => {
                match UblkDevice::prepare(dev_id, backend.clone(), opts.clone()) {
                    Ok(d) => {
                        tracing::debug!(
                            "Secondary: ublk device {dev_id} added, not started (no {})",
                            d.path().display()
                        );
                        prepare_err = None;
                        dev = Some(d);
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        if prepare_err.as_deref() != Some(msg.as_str()) {
                            tracing::warn!(
                                "cannot prepare ublk device {dev_id} for a promotion (retrying every {} s; a promotion adds it then): {msg}",
                                RETRY.as_secs()
                            );
                        }
                        prepare_err = Some(msg);
                        prepare_at = Instant::now() + RETRY;
                    }
                }
            }
            (Some(d), false) if !d.is_live() => {}
            (Some(_), false) => {
                let due = in_use_checked.is_none_or(|t| t.elapsed() >= IN_USE_RECHECK);
                let busy = if due || in_use_said {
                    in_use_checked = Some(Instant::now());
                    in_use_reason(dev_id)
                } else {
                    None
                };
                match busy {
                    Some(why) => {
                        if !in_use_said {
                            tracing::warn!(
                                "not Primary, but {} is {why}: its I/O fails (EROFS) until it is released, then it is removed",
                                device_path(dev_id).display()
                            );
                            in_use_said = true;
                        }
                    }
                    None => {
                        in_use_said = false;
                        in_use_checked = None;
                        if let Some(d) = dev.take() {
                            stop(d, "not Primary");
                        }
                    }
                }
            }
            _ => {}
        }
        // Look again soon while a change is under way (a device just set
        // up may end its recovery next, one in use may be released);
        // otherwise sleep until the role changes.
        let nap = if in_use_said || state_of(dev.as_ref(), left.is_some()) != before {
            TICK
        } else {
            IDLE_WAIT
        };
        if !shutdown.load(Ordering::Acquire) {
            roles.wait_role_change(seen, nap);
        }
    }
    if let Some(d) = dev.take() {
        stop(d, "shutting down");
    }
}

/// What [`manage_with`]'s loop compares to tell whether a turn changed
/// anything: device present, live, recovering; a left-over device waiting.
fn state_of(dev: Option<&UblkDevice>, left_over: bool) -> (bool, bool, bool, bool) {
    (
        dev.is_some(),
        dev.is_some_and(UblkDevice::is_live),
        dev.is_some_and(UblkDevice::is_recovering),
        left_over,
    )
}

/// Looks at a device a dead repd left. Returns true when there is nothing
/// left to watch: it is gone, or it was removed here because the data moved
/// on to another generation than `held` (its held I/O would write into
/// data it was never meant for).
fn check_left_over(dev_id: u32, held: Option<u64>, now: Option<DataGen>) -> bool {
    match probe(dev_id) {
        // Added but never started by a repd that died (it was prepared
        // while Secondary): nothing is held; preparing removes it.
        Ok(Some(e)) if e.state == DevState::Dead && !e.server_alive() => {
            tracing::info!(
                old_pid = e.pid,
                "ublk device {dev_id} was added, never started, by a repd that died; replacing it"
            );
        }
        Ok(Some(e)) if e.recoverable && !e.server_alive() => {}
        // Removed by someone, or a new server has it (not us: we hold no device).
        Ok(_) => return true,
        Err(e) => {
            tracing::warn!("cannot look at ublk device {dev_id}: {e}");
            return false;
        }
    }
    let (Some(held), Some(now)) = (held, now) else {
        return false;
    };
    if now.continues(held) {
        return false;
    }
    let path = device_path(dev_id);
    tracing::warn!(
        held = format!("{held:016X}"),
        current = format!("{:016X}", now.current),
        "the data moved to another generation since the repd that served {} died: its held I/O \
         belongs to data that no longer exists; removing it (held requests fail with EIO)",
        path.display()
    );
    match remove_left_over(dev_id) {
        Ok(()) => {
            tracing::info!(
                "removed {} left by the dead repd; a new one is added when this node is Primary \
                 (once nothing holds the old one open)",
                path.display()
            );
            true
        }
        Err(e) => {
            tracing::warn!("cannot remove {}: {e}", path.display());
            false
        }
    }
}

fn stop(d: UblkDevice, why: &str) {
    let path = d.path();
    let id = d.dev_id();
    if !d.is_live() {
        // Prepared, never started: no block device, nothing to tell about.
        if let Err(e) = d.stop() {
            tracing::warn!("removing the prepared ublk device {id}: {e}");
        }
        return;
    }
    tracing::info!("{why}: removing {}", path.display());
    let t0 = Instant::now();
    let r = d.stop();
    served().remove(&id);
    match r {
        Ok(()) => tracing::info!(
            ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            "removed {}",
            path.display()
        ),
        Err(e) => tracing::warn!("removing {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::{IoRequest, Reply};

    struct Fake;
    impl BlockBackend for Fake {
        fn size_bytes(&self) -> u64 {
            1 << 20
        }
        fn writable(&self) -> bool {
            true
        }
        fn submit(&self, _req: IoRequest, reply: Reply) {
            reply(Ok(None));
        }
    }
    impl RoleWait for Fake {
        fn role_changes(&self) -> u64 {
            0
        }
        fn wait_role_change(&self, _seen: u64, timeout: Duration) {
            std::thread::sleep(timeout);
        }
    }

    #[test]
    fn held_io_continues_only_its_own_generation() {
        let g = DataGen {
            current: 0xA,
            bitmap: 0,
        };
        assert!(g.continues(0xA));
        assert!(!g.continues(0xB));
        // This node promoted itself without its peer: A went into the bitmap.
        let rotated = DataGen {
            current: 0xC,
            bitmap: 0xA,
        };
        assert!(rotated.continues(0xA));
        // A resync from a peer that wrote generation D meanwhile.
        let foreign = DataGen {
            current: 0xD,
            bitmap: 0,
        };
        assert!(!foreign.continues(0xA));
    }

    #[test]
    fn finds_ublk_mounts_to_detach() {
        let mi = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                  97 29 259:3 / /run/x rw,relatime shared:50 - ext4 /dev/ublkb0 rw\n\
                  98 29 259:4 / /run/a\\040b rw - xfs /dev/ublkb12 rw\n\
                  99 29 8:1 / /data rw - ext4 /dev/sda1 rw\n";
        assert_eq!(ublk_mount_points(mi), vec!["/run/x", "/run/a b"]);
        assert!(ublk_mount_points("garbage line\n").is_empty());
    }

    #[test]
    fn no_device_blocks_demotion_when_none_is_served() {
        assert_eq!(demotion_blocker(), None);
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = UblkError::NoDriver.to_string();
        assert!(e.contains("modprobe ublk_drv"), "{e}");
        let d = describe(&libublk::UblkError::UringIOError(-libc::EBUSY));
        assert!(d.contains("EBUSY"), "{d}");
    }

    /// On a host without ublk_drv, starting fails with `NoDriver` and the
    /// manager gives up at once (the NBD export is all there is).
    #[test]
    fn without_the_driver_nothing_happens() {
        if driver_present() {
            return;
        }
        match UblkDevice::start(0, Arc::new(Fake), UblkOptions::default()) {
            Err(UblkError::NoDriver) => {}
            other => panic!("{other:?}"),
        }
        match UblkDevice::prepare(0, Arc::new(Fake), UblkOptions::default()) {
            Err(UblkError::NoDriver) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(probe(0), Err(UblkError::NoDriver)));
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        manage_with(
            0,
            Arc::new(Fake),
            &Fake,
            &stop,
            UblkOptions::default(),
            &|| true,
            &|| None,
            &|| {},
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
