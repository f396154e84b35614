//! Is `/dev/ublkb<N>` in use? DRBD refuses to demote a device that is held
//! open ("Device is held open by someone"); the kernel counts the openers for
//! DRBD, we ask from the outside:
//!
//! 1. mounted: `/proc/self/mountinfo` and `/proc/1/mountinfo` (repd runs in
//!    its own mount namespace, so the mounts that matter are init's);
//! 2. held by a stacked device (`/sys/dev/block/M:N/holders`: dm, md...);
//! 3. open in some process: every `/proc/PID/fd/*` that is this block
//!    device;
//! 4. opened exclusively: an `O_EXCL` open fails with `EBUSY` (a mount in
//!    any namespace, mkfs, LVM...).
//!
//! The first three touch only procfs and sysfs. The last opens the device,
//! and closing the last opener of a block device writes back its dirty page
//! cache: that can issue I/O to the device, so the thread that asks must
//! not be the one that serves it (see [`ServedDevice`]).

use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use super::device::device_path;
use crate::frontend::UserSource;

/// How long [`ServedDevice::held`] waits for its check.
const IN_USE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `/dev/ublkb<N>` while this process serves it: what the ublk frontend
/// registers with the engine, so that `secondary` and `down` refuse while
/// the device is mounted or open.
#[derive(Debug)]
pub struct ServedDevice {
    dev_id: u32,
}

impl ServedDevice {
    pub fn new(dev_id: u32) -> Self {
        Self { dev_id }
    }
}

impl UserSource for ServedDevice {
    fn name(&self) -> &str {
        "ublk"
    }

    /// Why this node must not demote now: the device is in use (mounted,
    /// open). The words follow DRBD's "Device is held open by someone".
    ///
    /// Safe to call from the thread that answers the device's I/O (the
    /// engine): the check runs on a helper thread (it opens the device, and
    /// closing a block device may write back its cache through us) and is
    /// given up after 2 s, which then refuses the demotion.
    fn held(&self) -> Option<String> {
        let (tx, rx) = mpsc::channel();
        let id = self.dev_id;
        let spawned = std::thread::Builder::new()
            .name("ublk-in-use".into())
            .spawn(move || {
                let _ = tx.send(in_use_reason(id));
            });
        let name = device_path(id).display().to_string();
        if spawned.is_err() {
            return Some(format!(
                "cannot check whether {name} is in use (no thread); try again"
            ));
        }
        match rx.recv_timeout(IN_USE_CHECK_TIMEOUT) {
            Ok(None) => None,
            Ok(Some(why)) => Some(format!(
                "Device is held open by someone: {name} is {why}; unmount it or close it, then demote"
            )),
            Err(_) => Some(format!(
                "cannot tell whether {name} is in use (the check did not finish within {} s); try again",
                IN_USE_CHECK_TIMEOUT.as_secs()
            )),
        }
    }
}

/// Why `/dev/ublkb<dev_id>` is in use, or `None` when it is not (or does
/// not exist).
pub fn in_use_reason(dev_id: u32) -> Option<String> {
    let path = device_path(dev_id);
    let md = std::fs::metadata(&path).ok()?;
    if !md.file_type().is_block_device() {
        return None;
    }
    let rdev = md.rdev();
    let majmin = std::fs::read_to_string(format!("/sys/block/ublkb{dev_id}/dev"))
        .ok()
        .map(|s| s.trim().to_string());
    if let Some(mm) = &majmin {
        for mi in ["/proc/1/mountinfo", "/proc/self/mountinfo"] {
            if let Some(at) = mounted_at(mi, mm) {
                return Some(format!("mounted on {at}"));
            }
        }
        if let Some(h) = holders(mm) {
            return Some(format!("held by {h}"));
        }
    }
    if let Some((pid, comm)) = open_by(rdev) {
        return Some(format!("open in process {pid} ({comm})"));
    }
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Some(
            "opened exclusively (mounted in another mount namespace, or held by mkfs, LVM...)"
                .to_string(),
        ),
        _ => None,
    }
}

/// Whether `/dev/ublkb<dev_id>` is in use: mounted or open.
pub fn in_use(dev_id: u32) -> bool {
    in_use_reason(dev_id).is_some()
}

/// The mount point of the first mount of device `majmin` ("M:N") in the
/// mountinfo file `file`.
fn mounted_at(file: &str, majmin: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    mounted_at_in(&text, majmin)
}

pub(crate) fn mounted_at_in(mountinfo: &str, majmin: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let mut f = l.split(' ');
        let (_id, _parent, mm, _root, at) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        (mm == majmin).then(|| at.to_string())
    })
}

fn holders(majmin: &str) -> Option<String> {
    let names: Vec<String> = std::fs::read_dir(format!("/sys/dev/block/{majmin}/holders"))
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// A process (not this one) with an open file that is block device `rdev`.
fn open_by(rdev: u64) -> Option<(u32, String)> {
    let me = std::process::id();
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // stat follows the magic link to the open file itself, whatever
            // the mount namespace of its process.
            let Ok(md) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if md.file_type().is_block_device() && md.rdev() == rdev {
                let comm =
                    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default();
                return Some((pid, comm));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_by_device_number() {
        let mi = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                  97 29 259:3 / /run/x rw,relatime shared:50 - ext4 /dev/ublkb0 rw\n";
        assert_eq!(mounted_at_in(mi, "259:3").as_deref(), Some("/run/x"));
        assert_eq!(mounted_at_in(mi, "259:30"), None);
        assert_eq!(mounted_at_in("", "259:3"), None);
    }

    #[test]
    fn a_missing_device_is_not_in_use() {
        assert!(!in_use(999_999));
        assert_eq!(in_use_reason(999_999), None);
    }
}
