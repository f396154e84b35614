//! repd's ublk loop ([`manage`]): keeps `/dev/ublkb<N>` in step with the
//! node's role, takes over a device a dead repd left, and registers the
//! served device's users with the engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::inuse::{in_use_reason, ServedDevice};
use super::{
    device_path, driver_present, probe, remove_left_over, DevState, UblkDevice, UblkOptions,
    NO_DRIVER_WARNING, PRIVATE_MOUNTS,
};
use crate::engine::{EngineHandle, Registration, Users};
use crate::frontend::{BlockBackend, RoleWait};

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
        match r.control(rep_control::protocol::ControlCmd::Verb(
            rep_control::protocol::Verb::ResumeAfterCrash,
        )) {
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
        w.users(),
        &move || h.writable(),
        &move || DataGen::of(&g),
        &on_held,
    );
}

/// [`manage`] for any backend. `users` is the engine's registry: a live
/// device is registered there (mounted or open, it refuses `secondary` and
/// `down`). `may_end_recovery` says when a recovered device may serve its
/// held I/O (asked while the node is Primary); `generation` gives the
/// node's data generation (`None`: unknown, a left-over device is then
/// taken over when the node is Primary). `on_held` is called once when a
/// device left by a dead repd is found.
#[allow(clippy::too_many_arguments)]
pub fn manage_with(
    dev_id: u32,
    backend: Arc<dyn BlockBackend>,
    roles: &dyn RoleWait,
    shutdown: &AtomicBool,
    opts: UblkOptions,
    users: &Users,
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
    let mut m = Manager {
        dev_id,
        backend,
        opts,
        users,
        may_end_recovery,
        generation,
        dev: None,
        served: None,
        left: find_left_over(dev_id, generation, on_held),
        last_err: None,
        retry_at: Instant::now(),
        prepare_at: Instant::now(),
        prepare_err: None,
        in_use_checked: None,
        in_use_said: false,
        vanish_checked: Instant::now(),
        size_tried: 0,
    };
    while !shutdown.load(Ordering::Acquire) {
        let seen = roles.role_changes();
        let before = m.state();
        m.turn(m.backend.writable());
        // Look again soon while a change is under way (a device just set
        // up may end its recovery next, one in use may be released);
        // otherwise sleep until the role changes.
        let nap = if m.in_use_said || m.state() != before {
            TICK
        } else {
            IDLE_WAIT
        };
        if !shutdown.load(Ordering::Acquire) {
            roles.wait_role_change(seen, nap);
        }
    }
    m.stop("shutting down");
}

/// What `/dev/ublkb<dev_id>` is at start: a device a dead repd left with
/// its I/O held (then `on_held` is called), or nothing to take over.
fn find_left_over(
    dev_id: u32,
    generation: &dyn Fn() -> Option<DataGen>,
    on_held: &dyn Fn(),
) -> Option<LeftOver> {
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
            on_held();
            return Some(LeftOver {
                held,
                checked: Instant::now(),
            });
        }
        Ok(Some(e)) => tracing::warn!(
            pid = e.pid,
            state = ?e.state,
            "ublk device {dev_id} already exists; it is taken over only if its server is gone"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot look for ublk device {dev_id}: {e}"),
    }
    None
}

/// The state of [`manage_with`]'s loop.
struct Manager<'a> {
    dev_id: u32,
    backend: Arc<dyn BlockBackend>,
    opts: UblkOptions,
    users: &'a Users,
    may_end_recovery: &'a dyn Fn() -> bool,
    generation: &'a dyn Fn() -> Option<DataGen>,
    dev: Option<UblkDevice>,
    /// While the block device is live: it, registered with the engine as
    /// a user source (mounted or open, it refuses `secondary` and `down`).
    served: Option<Registration>,
    left: Option<LeftOver>,
    last_err: Option<String>,
    retry_at: Instant,
    prepare_at: Instant,
    prepare_err: Option<String>,
    in_use_checked: Option<Instant>,
    in_use_said: bool,
    vanish_checked: Instant,
    /// The last size UPDATE_SIZE was tried for (`update_size`).
    size_tried: u64,
}

impl Manager<'_> {
    /// What the loop compares to tell whether a turn changed anything.
    fn state(&self) -> (bool, bool, bool, bool) {
        state_of(self.dev.as_ref(), self.left.is_some())
    }

    /// One look at the device and the role, and the step it calls for.
    fn turn(&mut self, primary: bool) {
        if self.dev.is_none() {
            self.watch_left_over(primary);
        }
        let vanished = self.vanished();
        let size = self.backend.size_bytes();
        match (self.dev.as_ref(), primary) {
            // `repctl resize` changed the size of a device not started yet:
            // add it again with the new size.
            (Some(d), _) if !d.is_live() && d.size_bytes() != size => {
                tracing::info!(
                    old = d.size_bytes(),
                    new = size,
                    "the device size changed: re-creating the prepared ublk device"
                );
                self.stop("its size changed");
            }
            (Some(d), true) if d.is_live() && d.size_bytes() < size && self.size_tried < size => {
                self.update_size(size);
            }
            (None, true) if Instant::now() >= self.retry_at => self.start(),
            (Some(d), true) if !d.is_live() => self.go_live(),
            (Some(d), true) if d.is_recovering() && (self.may_end_recovery)() => {
                self.end_recovery();
            }
            (Some(d), true) if vanished => {
                tracing::warn!(
                    "{} vanished (removed by someone else?); setting it up again",
                    d.path().display()
                );
                self.stop("vanished");
            }
            // Secondary with no device: add one, not started, so that the
            // next promotion only has to start it. No block device exists
            // until then: a Secondary still exposes nothing.
            (None, false) if self.left.is_none() && Instant::now() >= self.prepare_at => {
                self.prepare();
            }
            (Some(d), false) if !d.is_live() => {}
            (Some(_), false) => self.remove_once_released(),
            _ => {}
        }
    }

    /// A device a dead repd left, while this one has none: forgotten once
    /// it is gone or removed (see [`check_left_over`]).
    fn watch_left_over(&mut self, primary: bool) {
        let Some(l) = self.left.as_mut() else {
            return;
        };
        if primary || l.checked.elapsed() >= LEFT_OVER_RECHECK {
            l.checked = Instant::now();
            if check_left_over(self.dev_id, l.held, (self.generation)()) {
                self.left = None;
            }
        }
    }

    /// Removed behind our back (`ublk del`)? Looked at once a second.
    fn vanished(&mut self) -> bool {
        match self.dev.as_ref() {
            Some(d)
                if d.is_live()
                    && !d.is_recovering()
                    && self.vanish_checked.elapsed() >= IN_USE_RECHECK =>
            {
                self.vanish_checked = Instant::now();
                !std::path::Path::new(&format!("/sys/block/ublkb{}", self.dev_id)).exists()
            }
            _ => false,
        }
    }

    /// The block device now serves: its users count for the engine.
    fn serve(&mut self) {
        debug_assert!(self.served.is_none(), "a device is registered once");
        let source = Arc::new(ServedDevice::new(self.dev_id));
        self.served = Some(self.users.register(source));
    }

    /// Primary without a device: add and start one (or take over the one
    /// a dead repd left).
    fn start(&mut self) {
        let dev_id = self.dev_id;
        tracing::debug!("Primary: setting up {}", device_path(dev_id).display());
        match UblkDevice::start(dev_id, self.backend.clone(), self.opts.clone()) {
            Ok(d) => {
                self.serve();
                self.left = None;
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
                self.last_err = None;
                self.dev = Some(d);
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_err.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(
                        "cannot start {} (retrying every {} s): {msg}",
                        device_path(dev_id).display(),
                        RETRY.as_secs()
                    );
                }
                self.last_err = Some(msg);
                self.retry_at = Instant::now() + RETRY;
            }
        }
    }

    /// Primary with a device prepared while Secondary: start it.
    fn go_live(&mut self) {
        let Some(d) = self.dev.as_ref() else {
            return;
        };
        match d.go_live() {
            Ok(()) => {
                tracing::info!(
                    "Primary: started {} (prepared while Secondary)",
                    d.path().display()
                );
                self.serve();
                self.last_err = None;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot start the prepared {} ({e}); adding it anew",
                    d.path().display()
                );
                self.stop("start failed");
            }
        }
    }

    /// Primary with a device taken over from a dead repd: let its held I/O
    /// go on.
    fn end_recovery(&mut self) {
        let Some(d) = self.dev.as_ref() else {
            return;
        };
        match d.end_recovery() {
            Ok(()) => {
                tracing::info!(
                    "recovery of {} ended: the held I/O goes on",
                    d.path().display()
                );
                self.last_err = None;
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_err.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("cannot end the recovery of {}: {msg}", d.path().display());
                }
                self.last_err = Some(msg);
            }
        }
    }

    /// Secondary without a device: add one, not started.
    fn prepare(&mut self) {
        let dev_id = self.dev_id;
        match UblkDevice::prepare(dev_id, self.backend.clone(), self.opts.clone()) {
            Ok(d) => {
                tracing::debug!(
                    "Secondary: ublk device {dev_id} added, not started (no {})",
                    d.path().display()
                );
                self.prepare_err = None;
                self.dev = Some(d);
            }
            Err(e) => {
                let msg = e.to_string();
                if self.prepare_err.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(
                        "cannot prepare ublk device {dev_id} for a promotion (retrying every {} s; a promotion adds it then): {msg}",
                        RETRY.as_secs()
                    );
                }
                self.prepare_err = Some(msg);
                self.prepare_at = Instant::now() + RETRY;
            }
        }
    }

    /// Not Primary with a live device: removed as soon as nothing holds it
    /// (the engine refuses to demote while it is in use, but a `primary`
    /// elsewhere with `--force`, or a lost peer, can still get here).
    fn remove_once_released(&mut self) {
        let due = self
            .in_use_checked
            .is_none_or(|t| t.elapsed() >= IN_USE_RECHECK);
        let busy = if due || self.in_use_said {
            self.in_use_checked = Some(Instant::now());
            in_use_reason(self.dev_id)
        } else {
            None
        };
        match busy {
            Some(why) => {
                if !self.in_use_said {
                    tracing::warn!(
                        "not Primary, but {} is {why}: its I/O fails (EROFS) until it is released, then it is removed",
                        device_path(self.dev_id).display()
                    );
                    self.in_use_said = true;
                }
            }
            None => {
                self.in_use_said = false;
                self.in_use_checked = None;
                self.stop("not Primary");
            }
        }
    }

    /// Removes the device, if any, and its registration with the engine
    /// once it is gone.
    /// Grow the live device (`repctl resize`): UPDATE_SIZE where the
    /// kernel has it (6.16 and later); else it keeps its size until it is
    /// re-created, on the next demote and promote. Tried once per size.
    fn update_size(&mut self, size: u64) {
        self.size_tried = size;
        let Some(d) = self.dev.as_ref() else {
            return;
        };
        match d.update_size(size) {
            Ok(()) => tracing::info!(size, "{} grown online (UPDATE_SIZE)", d.path().display()),
            Err(e) => tracing::warn!(
                size,
                "{} keeps its size {}: {e}. This kernel cannot resize a live ublk device \
                 (UBLK_U_CMD_UPDATE_SIZE needs Linux 6.16 or later): the device must be \
                 re-created, which repd does on the next demote and promote (repctl secondary, \
                 repctl primary, with the filesystem unmounted)",
                d.path().display(),
                d.size_bytes()
            ),
        }
    }

    fn stop(&mut self, why: &str) {
        if let Some(d) = self.dev.take() {
            stop(d, why);
        }
        self.served = None;
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
    match d.stop() {
        Ok(()) => tracing::info!(
            ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
            "removed {}",
            path.display()
        ),
        Err(e) => tracing::warn!("removing {}: {e}", path.display()),
    }
}
