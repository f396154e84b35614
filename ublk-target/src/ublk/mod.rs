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
//! - The I/O path (`queue/`): a queue thread turns each request into an
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
//!   and [`UblkDevice::end_recovery`]; [`manage()`] ends it once the node is
//!   Primary again. Until then a device left by a dead repd stays
//!   quiesced (nothing is served while the node is Secondary), and if the
//!   node's data moves to another generation meanwhile (it resynced from a
//!   peer that was Primary), the device is removed instead: its held I/O
//!   belongs to data that no longer exists.
//! - [`manage()`]: repd's loop that keeps the device in step with the role:
//!   present while Primary, gone while Secondary. While Secondary the
//!   device is kept *prepared* (added, queues ready, not started: only the
//!   control device `/dev/ublkcN` exists, no block device), so that a
//!   promotion only starts it.
//! - [`in_use`]: mounted or open; a served device is registered with the
//!   engine as a [`ServedDevice`], which `secondary` and `down` ask before
//!   they demote.
//! - [`prepare_daemon`]: repd must not share its mount namespace with the
//!   users of its own device (libublk's README: a daemon that exits while a
//!   filesystem on its device is mounted in its namespace deadlocks), so it
//!   moves into a private one at start.
//!
//! Without ublk_drv (no `/dev/ublk-control`) nothing here does anything but
//! say so once: repd serves its NBD export only.
//!
//! Modules: `device` ([`UblkDevice`]: add or recover, queues, stop);
//! `queue/` (one queue thread, and its `mailbox` of answers and lent
//! buffers); `manage` ([`manage()`], the loop that follows the role);
//! `inuse` ([`in_use`], [`ServedDevice`]).

mod device;
mod inuse;
mod manage;
mod queue;

use std::sync::atomic::{AtomicBool, Ordering};

pub use device::{
    device_path, driver_present, probe, remove_left_over, DevState, Existing, UblkDevice,
    UblkOptions, CONTROL_PATH,
};
pub use inuse::{in_use, in_use_reason, ServedDevice};
pub use manage::{manage, manage_with, DataGen};

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

/// Set by [`set_zero_copy`]: new devices are made zero-copy.
static ZERO_COPY: AtomicBool = AtomicBool::new(false);

/// Whether new ublk devices of this process serve local reads zero-copy
/// where the kernel can (`crate::zerocopy`, Linux 6.16+): off by default
/// (the A/B in bench/RESULTS.md, run 14, did not show a win: a zero-copy
/// device also makes every write one `pread` more), on with
/// `repd --zero-copy`. Call before any device is made.
pub fn set_zero_copy(on: bool) {
    ZERO_COPY.store(on, Ordering::Relaxed);
}

pub(crate) fn zero_copy_wanted() -> bool {
    ZERO_COPY.load(Ordering::Relaxed)
}

/// Set by [`prepare_daemon`] once the process has its own mount namespace.
static PRIVATE_MOUNTS: AtomicBool = AtomicBool::new(false);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::{BlockBackend, IoRequest, Reply, RoleWait};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

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
        assert_eq!(crate::engine::Users::default().in_use(true), None);
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
            &crate::engine::Users::default(),
            &|| true,
            &|| None,
            &|| {},
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
