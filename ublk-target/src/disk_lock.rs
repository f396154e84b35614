//! One owner per backing disk: repd holds an exclusive lock on its disk (and
//! on an external metadata file) for as long as it runs, and `repctl
//! create-md` takes the same lock while it writes. A second repd started
//! with a copy of the resource file (other ports, another run directory,
//! `--standalone`) would otherwise open the same disk and write metadata
//! under the first one.
//!
//! A regular file gets `flock(LOCK_EX)`, which the kernel drops when the
//! holder dies (a `kill -9` leaves no stale lock) and `/proc/locks` shows
//! with the holder's pid. A block device is opened with `O_EXCL`, the
//! kernel's exclusive claim that DRBD's attach takes too: it also fails
//! while the device is mounted or claimed by another driver.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::config::{MetaDisk, Node};

/// Why a disk could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path} is in use{holder}: only one repd (or create-md) may use a disk at a time; stop the other one first (`repctl down` with its --config/--run-dir)")]
    Busy { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The locks held; dropping it releases them.
#[derive(Debug)]
pub struct DiskLock {
    _held: Vec<File>,
}

impl DiskLock {
    /// Lock the node's backing disk and, with external metadata, its
    /// metadata file (when it exists: create-md makes it). Fails at once
    /// (never waits) when another process holds one of them.
    pub fn acquire(node: &Node) -> Result<Self, LockError> {
        let mut paths = vec![node.disk.clone()];
        if let MetaDisk::External(p) = &node.meta_disk {
            if p.exists() && !same_file(p, &node.disk) {
                paths.push(p.clone());
            }
        }
        let mut held = Vec::new();
        for p in paths {
            held.push(lock_one(&p)?);
        }
        Ok(Self { _held: held })
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn lock_one(path: &Path) -> Result<File, LockError> {
    let io_err = |source| LockError::Io {
        path: path.into(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.file_type().is_block_device() {
        // O_EXCL without O_CREAT on a block device: the kernel's exclusive
        // claim (EBUSY while mounted or claimed by anyone else).
        return match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
        {
            Ok(f) => Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(LockError::Busy {
                path: path.into(),
                holder: describe_openers(meta.rdev()),
            }),
            Err(e) => Err(io_err(e)),
        };
    }
    let f = File::open(path).map_err(io_err)?;
    // SAFETY: flock on a descriptor this function owns; no memory involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(f);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        let holder = flock_holder(meta.dev(), meta.ino())
            .map(|pid| format!(" (locked by {})", describe_pid(pid)))
            .unwrap_or_default();
        return Err(LockError::Busy {
            path: path.into(),
            holder,
        });
    }
    Err(io_err(e))
}

/// The pid `/proc/locks` gives for the FLOCK write lock on (dev, inode).
fn flock_holder(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    parse_locks(&text, &want)
}

/// Finds the FLOCK WRITE line for `want` ("maj:min:inode", hex device
/// numbers as /proc/locks prints them) and returns its pid.
fn parse_locks(text: &str, want: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (blocked
        // waiters start with "1: ->", and have one field more).
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [_, "FLOCK", _, "WRITE", pid, id, ..] if *id == want => pid.parse().ok(),
            _ => None,
        }
    })
}

/// "pid 1234 (repd --config r0.toml --node alpha)": whose lock it is,
/// with the command line that says which resource file and run directory.
fn describe_pid(pid: u32) -> String {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty());
    match cmd {
        Some(c) => format!("pid {pid} ({c})"),
        None => format!("pid {pid}"),
    }
}

/// Who has block device `rdev` open, from /proc/*/fd (the kernel does not
/// say who claimed it): " (open by pid 1234 (repd ...))", or a hint that
/// it may be mounted.
fn describe_openers(rdev: u64) -> String {
    let mut pids = Vec::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            let opens = fds.flatten().any(|fd| {
                std::fs::metadata(fd.path())
                    .is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == rdev)
            });
            if opens {
                pids.push(pid);
            }
        }
    }
    if pids.is_empty() {
        return " (claimed exclusively: mounted, or used by another driver)".into();
    }
    let mut s = String::from(" (claimed exclusively; open by ");
    for (k, pid) in pids.iter().enumerate() {
        if k > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{}", describe_pid(*pid));
    }
    s.push(')');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flock_line_of_the_file_gives_the_pid() {
        let text = "1: POSIX  ADVISORY  WRITE 77 00:1f:123 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 4242 fd:01:5678 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 999 fd:01:5678 0 EOF\n";
        assert_eq!(parse_locks(text, "fd:01:5678"), Some(4242));
        assert_eq!(parse_locks(text, "fd:01:567"), None);
        assert_eq!(
            parse_locks(text, "00:1f:123"),
            None,
            "POSIX locks are not ours"
        );
    }

    #[test]
    fn a_second_lock_is_refused_and_names_this_process() {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("d.img");
        std::fs::write(&disk, [0u8; 4096]).expect("disk");
        let node = Node {
            name: "alpha".into(),
            address: "127.0.0.1:1".parse().expect("addr"),
            disk: disk.clone(),
            meta_disk: MetaDisk::Internal,
            device: 0,
            nbd: None,
            nbd_access: Default::default(),
        };
        let first = DiskLock::acquire(&node).expect("first lock");
        let e = DiskLock::acquire(&node).expect_err("second lock");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("locked by pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        DiskLock::acquire(&node).expect("free again once dropped");
    }

    #[test]
    fn an_external_metadata_file_is_locked_too() {
        let dir = tempfile::tempdir().expect("temp dir");
        let meta = dir.path().join("meta.img");
        std::fs::write(&meta, [0u8; 4096]).expect("meta");
        let node = |disk: &str| {
            let disk = dir.path().join(disk);
            std::fs::write(&disk, [0u8; 4096]).expect("disk");
            Node {
                name: "alpha".into(),
                address: "127.0.0.1:1".parse().expect("addr"),
                disk,
                meta_disk: MetaDisk::External(meta.clone()),
                device: 0,
                nbd: None,
                nbd_access: Default::default(),
            }
        };
        let _first = DiskLock::acquire(&node("a.img")).expect("first lock");
        // Another data disk, the same metadata file.
        let e = DiskLock::acquire(&node("b.img")).expect_err("second lock");
        let msg = e.to_string();
        assert!(msg.starts_with(&meta.display().to_string()), "{msg}");
        assert!(msg.contains("locked by pid"), "{msg}");
    }
}
