//! The local disk: the backing file or block device of a resource, served
//! through io_uring by one thread.
//!
//! [`LocalDisk::open`] opens the backing store (O_DIRECT unless refused)
//! and checks it is large enough; [`LocalDisk::start`] spawns the ring
//! thread and returns a [`DiskHandle`], which queues [`DiskOp`]s and gets
//! each answer back exactly once through the `on_complete` callback, on the
//! ring thread. Only `[0, data_bytes)` is ever touched: the metadata lives
//! after it.
//!
//! Each op carries a `u64` token of the caller's, handed back unchanged
//! with its answer; the disk layer never reads it (the engine carries the
//! state machine's `IoToken`s and its own in it, see `engine::tokens`).
//!
//! Layout: [`aligned`] (O_DIRECT buffers), `uring` (the ring thread, safe
//! code), `sys` and `raw` (every `unsafe` block: `sys` the io_uring
//! wrapper and block-device ioctls, `raw` the aligned allocation),
//! `writeback` (an old write-back error cleared before `attach`), `tests`
//! (the unit tests that need crate-private knobs).
#![deny(unsafe_code)]

pub mod aligned;
mod raw;
mod sys;
mod uring;
mod writeback;

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use bytes::Bytes;
use nix::libc;
use nix::sys::eventfd::{EfdFlags, EventFd};

pub use aligned::{is_aligned, pool_idle_bytes, AlignedBuf, BadBufLen, POOL_MAX_BYTES};
pub(crate) use writeback::clear_stale_error as clear_stale_write_error;

pub use crate::frontend::IoResult;

/// Largest read or write accepted in one op (64 MiB); larger ones get
/// EINVAL rather than a huge allocation.
pub const MAX_IO_BYTES: u32 = 64 << 20;

/// Largest accepted queue depth.
pub const MAX_QUEUE_DEPTH: u32 = 4096;

/// How to open the backing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskOptions {
    /// Open with O_DIRECT (bypass the page cache). If the filesystem
    /// refuses O_DIRECT (EINVAL, e.g. tmpfs) the disk falls back to
    /// buffered I/O and logs a warning; see [`LocalDisk::is_direct`].
    pub direct: bool,
    /// Ops handed to the kernel at once; the rest wait in a queue.
    pub queue_depth: u32,
}

impl Default for DiskOptions {
    fn default() -> Self {
        Self {
            direct: true,
            queue_depth: 128,
        }
    }
}

/// One request to the local disk. Offsets and lengths are bytes, multiples
/// of 512 (of the device's logical block size with O_DIRECT on a block
/// device, see [`LocalDisk::io_alignment`]), inside `[0, data_bytes)`;
/// anything else completes with EINVAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOp {
    /// Answers `Ok(Some(bytes))` of exactly `len` bytes, 4096-aligned in
    /// memory.
    Read { offset: u64, len: u32 },
    /// A read whose data is to land in the pages of ublk request `dst`
    /// (zero copy, see `crate::zerocopy`). Answers `Ok(Some(marker))`, a
    /// [`crate::zerocopy::landed`] marker of `len` bytes, once it has; when
    /// the ring cannot do it (no buffer table, the kernel refuses the
    /// registration, a short file) it is read like [`DiskOp::Read`] and
    /// answered with the data.
    ReadInto {
        offset: u64,
        len: u32,
        dst: crate::zerocopy::ZcDest,
    },
    /// `fua`: durable when answered (RWF_DSYNC). `data` need not be aligned
    /// in memory (it is copied if O_DIRECT needs it).
    Write { offset: u64, data: Bytes, fua: bool },
    /// fdatasync: every write answered before the flush was submitted is
    /// durable when the flush is answered.
    Flush,
    /// Deallocate. On a regular file this punches a hole (reads give
    /// zeroes afterwards; if the filesystem cannot punch holes the range is
    /// zeroed instead). On a block device it is BLKDISCARD, run on a helper
    /// thread (the ioctl blocks); what a read returns afterwards is up to
    /// the device, and a device without discard support ignores it (Ok).
    Trim { offset: u64, len: u64 },
    /// Reads give zeroes afterwards: fallocate(ZERO_RANGE) on a file,
    /// BLKZEROOUT (helper thread) on a block device, writing zeroes if
    /// neither is supported.
    WriteZeroes { offset: u64, len: u64 },
}

/// What the backing store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingKind {
    RegularFile,
    BlockDevice,
}

/// Why the local disk could not be opened or started.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open backing store {path}: {source} (check that it exists and that this process may open it read-write)")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backing store {path} is neither a regular file nor a block device (give the path of the disk, partition, LV or image file)")]
    NotFileOrBlockDevice { path: PathBuf },
    #[error("cannot get the size of {path}: {source}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backing store {path} is {size} bytes, smaller than the data area of {data_bytes} bytes (the metadata follows the data area: grow the file or device, or create the metadata for this size first)")]
    TooSmall {
        path: PathBuf,
        size: u64,
        data_bytes: u64,
    },
    #[error("invalid disk option for {path}: {what}")]
    InvalidOption { path: PathBuf, what: String },
    #[error("io_uring is unavailable for {path}: io_uring_setup failed: {source}. The local disk needs io_uring and has no fallback: allow io_uring (sysctl kernel.io_uring_disabled=0; container seccomp profiles often block io_uring_setup; kernels before 5.12 also need a larger RLIMIT_MEMLOCK)")]
    UringUnavailable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the disk thread for {path}: {what}: {source}")]
    Start {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// An opened, not yet started, backing store.
#[derive(Debug)]
pub struct LocalDisk {
    path: PathBuf,
    file: File,
    kind: BackingKind,
    data_bytes: u64,
    direct: bool,
    align: u32,
    queue_depth: u32,
    /// Largest byte count per read/write SQE; only lowered by tests, to
    /// exercise the resubmit-the-remainder path.
    max_chunk: usize,
}

/// Whether `path` is a regular file or a block device (nothing else is
/// served).
fn backing_kind(path: &Path) -> Result<BackingKind, DiskError> {
    let meta = std::fs::metadata(path).map_err(|source| DiskError::Open {
        path: path.to_owned(),
        source,
    })?;
    if meta.file_type().is_file() {
        Ok(BackingKind::RegularFile)
    } else if meta.file_type().is_block_device() {
        Ok(BackingKind::BlockDevice)
    } else {
        Err(DiskError::NotFileOrBlockDevice {
            path: path.to_owned(),
        })
    }
}

/// The backing disk while [`LocalDisk::open`] finds out how to use it:
/// with O_DIRECT unless the filesystem refuses it.
struct Backing<'a> {
    path: &'a Path,
    file: File,
    direct: bool,
}

impl<'a> Backing<'a> {
    fn open_err(&self) -> impl Fn(std::io::Error) -> DiskError + 'a {
        let path = self.path;
        move |source| DiskError::Open {
            path: path.to_owned(),
            source,
        }
    }

    fn reopen(path: &Path, direct: bool) -> std::io::Result<File> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(path)
    }

    /// Opens `path` read-write, with O_DIRECT when `direct` and the
    /// filesystem takes it.
    fn open(path: &'a Path, direct: bool) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_owned(),
            source,
        };
        let (file, direct) = match Self::reopen(path, direct) {
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(),
                    "the filesystem refuses O_DIRECT; using buffered I/O (page cache) for the local disk");
                (Self::reopen(path, false).map_err(open_err)?, false)
            }
            other => (other.map_err(open_err)?, direct),
        };
        Ok(Self { path, file, direct })
    }

    /// The disk's size and the alignment its I/O needs. A file whose
    /// filesystem reports no O_DIRECT support (statx) is opened again
    /// without it.
    fn size_and_alignment(&mut self, kind: BackingKind) -> Result<(u64, u32), DiskError> {
        let path = self.path;
        let size_err = |source| DiskError::Size {
            path: path.to_owned(),
            source,
        };
        match kind {
            BackingKind::RegularFile => {
                let size = self.file.metadata().map_err(size_err)?.len();
                let mut align = 512;
                if self.direct {
                    match sys::dio_alignment(self.file.as_fd()) {
                        Some((_, 0)) => {
                            tracing::warn!(path = %path.display(),
                                "the filesystem does not support O_DIRECT on this file (statx); using buffered I/O");
                            self.direct = false;
                            self.file = Self::reopen(path, false).map_err(self.open_err())?;
                        }
                        Some((_, offset_align)) => align = offset_align.max(512),
                        None => {}
                    }
                }
                Ok((size, align))
            }
            BackingKind::BlockDevice => {
                let size = sys::blk_size(self.file.as_fd()).map_err(|e| size_err(e.into()))?;
                let lbs = sys::blk_logical_block_size(self.file.as_fd()).unwrap_or(512);
                Ok((size, if self.direct { lbs.max(512) } else { 512 }))
            }
        }
    }
}

impl LocalDisk {
    /// Opens `path` read-write (O_DIRECT if `opts.direct`, falling back to
    /// buffered I/O with a warning if the filesystem refuses O_DIRECT) to
    /// serve `[0, data_bytes)`. The file or device must be at least
    /// `data_bytes` long; `data_bytes` must be a multiple of 512.
    pub fn open(path: &Path, data_bytes: u64, opts: DiskOptions) -> Result<LocalDisk, DiskError> {
        let invalid = |what: String| DiskError::InvalidOption {
            path: path.to_owned(),
            what,
        };
        if opts.queue_depth == 0 || opts.queue_depth > MAX_QUEUE_DEPTH {
            return Err(invalid(format!(
                "queue_depth {} is outside 1..={MAX_QUEUE_DEPTH}",
                opts.queue_depth
            )));
        }
        if data_bytes % 512 != 0 {
            return Err(invalid(format!(
                "data area of {data_bytes} bytes is not a multiple of 512"
            )));
        }
        let kind = backing_kind(path)?;
        let mut backing = Backing::open(path, opts.direct)?;
        let (size, align) = backing.size_and_alignment(kind)?;
        if size < data_bytes {
            return Err(DiskError::TooSmall {
                path: path.to_owned(),
                size,
                data_bytes,
            });
        }
        if !align.is_power_of_two() || data_bytes % u64::from(align) != 0 {
            return Err(invalid(format!(
                "data area of {data_bytes} bytes is not a multiple of the O_DIRECT alignment {align}"
            )));
        }
        Ok(LocalDisk {
            path: path.to_owned(),
            file: backing.file,
            kind,
            data_bytes,
            direct: backing.direct,
            align,
            queue_depth: opts.queue_depth,
            max_chunk: MAX_IO_BYTES as usize,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> BackingKind {
        self.kind
    }

    /// Size of the data area served, in bytes.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Whether I/O bypasses the page cache (O_DIRECT was accepted).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Alignment of offsets and lengths accepted (512, or the O_DIRECT
    /// alignment of the file or device if larger).
    pub fn io_alignment(&self) -> u32 {
        self.align
    }

    #[cfg(test)]
    pub(crate) fn set_max_chunk_for_test(&mut self, max_chunk: usize) {
        self.max_chunk = max_chunk.max(512);
    }

    /// Sets up the io_uring and spawns the ring thread. `on_complete(token,
    /// result)` is called on that thread exactly once per submitted op: it
    /// should be quick and must not block on the disk (it may submit).
    ///
    /// A `DiskHandle` kept inside `on_complete` keeps the disk alive (a
    /// cycle): call [`DiskHandle::shutdown`] to close it in that case.
    ///
    /// Fails with [`DiskError::UringUnavailable`] if io_uring cannot be
    /// set up (disabled, seccomp): there is no fallback.
    pub fn start<F>(self, on_complete: F) -> Result<DiskHandle, DiskError>
    where
        F: Fn(u64, IoResult) + Send + 'static,
    {
        let path = self.path.clone();
        let direct = self.direct;
        let data_bytes = self.data_bytes;
        let parts = self.setup()?;
        let engine = uring::Engine::new(
            parts.cfg,
            parts.ring,
            parts.rx,
            Arc::clone(&parts.waker),
            Arc::clone(&parts.in_flight),
            parts.blk_file,
            uring::Callback(on_complete),
        )
        .map_err(|source| DiskError::Start {
            path: path.clone(),
            what: "block-device helper thread",
            source,
        })?;
        let thread = std::thread::Builder::new()
            .name("disk-uring".into())
            .spawn(move || engine.run())
            .map_err(|source| DiskError::Start {
                path,
                what: "spawn",
                source,
            })?;
        Ok(DiskHandle {
            shared: Arc::new(Shared {
                ring_thread: thread.thread().id(),
                tx: Some(parts.tx),
                waker: parts.waker,
                in_flight: parts.in_flight,
                thread: Mutex::new(Some(thread)),
                data_bytes,
                direct,
            }),
        })
    }

    /// Sets up the io_uring for the calling thread to drive itself, with
    /// no disk thread: [`InlineDisk::submit`] queues, [`InlineDisk::wait`]
    /// submits, sleeps and collects answers. For an event loop that
    /// already owns a thread (the engine): each op then costs no thread
    /// hand-off and many ops share one `io_uring_enter`.
    ///
    /// Needs a kernel whose io_uring can wait with a timeout
    /// (IORING_FEAT_EXT_ARG, Linux 5.11); fails with
    /// [`DiskError::UringUnavailable`] otherwise.
    pub fn inline(self) -> Result<InlineDisk, DiskError> {
        let path = self.path.clone();
        let direct = self.direct;
        let data_bytes = self.data_bytes;
        let parts = self.setup()?;
        if !parts.ring.has_timed_wait() {
            return Err(DiskError::UringUnavailable {
                path,
                source: std::io::Error::other(
                    "this kernel's io_uring cannot wait with a timeout (IORING_FEAT_EXT_ARG, Linux 5.11+)",
                ),
            });
        }
        let engine = uring::Engine::new(
            parts.cfg,
            parts.ring,
            parts.rx,
            Arc::clone(&parts.waker),
            Arc::clone(&parts.in_flight),
            parts.blk_file,
            Vec::new(),
        )
        .map_err(|source| DiskError::Start {
            path,
            what: "block-device helper thread",
            source,
        })?;
        Ok(InlineDisk {
            engine,
            sync_file: parts.sync_file,
            _tx: parts.tx,
            waker: parts.waker,
            in_flight: parts.in_flight,
            data_bytes,
            direct,
            closed: false,
        })
    }

    /// The ring, its wake-up and the channel, shared by both modes.
    fn setup(self) -> Result<Parts, DiskError> {
        let start_err = |what, source| DiskError::Start {
            path: self.path.clone(),
            what,
            source,
        };
        let eventfd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
            .map_err(|e| start_err("eventfd", e.into()))?;
        let waker = Arc::new(Waker {
            eventfd: Arc::new(eventfd),
            pending: AtomicBool::new(false),
        });
        let blk_file = match self.kind {
            BackingKind::BlockDevice => Some(
                self.file
                    .try_clone()
                    .map_err(|e| start_err("dup of the device", e))?,
            ),
            BackingKind::RegularFile => None,
        };
        // The same open file description as the ring's: see `writeback`.
        let sync_file = self
            .file
            .try_clone()
            .map_err(|e| start_err("dup of the disk", e))?;
        // One SQE per op in flight, plus the wake-up read.
        let entries = (self.queue_depth + 1).next_power_of_two();
        let ring =
            sys::Ring::new(self.file, Arc::clone(&waker.eventfd), entries).map_err(|source| {
                DiskError::UringUnavailable {
                    path: self.path.clone(),
                    source,
                }
            })?;
        let (tx, rx) = mpsc::channel();
        Ok(Parts {
            cfg: uring::Config {
                kind: self.kind,
                data_bytes: self.data_bytes,
                direct: self.direct,
                align: self.align,
                queue_depth: self.queue_depth as usize,
                max_chunk: self.max_chunk,
            },
            ring,
            waker,
            blk_file,
            sync_file,
            tx,
            rx,
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }
}

struct Parts {
    cfg: uring::Config,
    ring: sys::Ring,
    waker: Arc<Waker>,
    blk_file: Option<File>,
    /// A dup of the ring's descriptor (shares its write-back error cursor).
    sync_file: File,
    tx: Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    in_flight: Arc<AtomicUsize>,
}

/// A local disk driven by the thread that owns it; see
/// [`LocalDisk::inline`]. Dropping it completes (and discards the answers
/// of) every op still in flight.
pub struct InlineDisk {
    engine: uring::Engine<Vec<(u64, IoResult)>>,
    /// A dup of the ring's descriptor, for [`InlineDisk::clear_stale_write_error`].
    sync_file: File,
    /// Keeps the (unused) channel connected.
    _tx: Sender<Msg>,
    waker: Arc<Waker>,
    in_flight: Arc<AtomicUsize>,
    data_bytes: u64,
    direct: bool,
    closed: bool,
}

impl std::fmt::Debug for InlineDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineDisk")
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// A socket event from an [`InlineDisk`]'s ring: a poll that fired
/// ([`InlineDisk::poll`]; `res` is the event mask or -errno, no buffer) or
/// a receive that finished ([`InlineDisk::recv`]; `res` is the byte count
/// or -errno, with the buffer handed back).
#[derive(Debug)]
pub struct SocketEvent {
    pub key: u64,
    pub res: i32,
    pub buf: Option<AlignedBuf>,
}

/// Ends an [`InlineDisk::wait`] early, from any thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DiskWaker(Arc<Waker>);

impl DiskWaker {
    /// Makes the current or next [`InlineDisk::wait`] return. Only the
    /// first call after a wait began writes the eventfd.
    pub fn wake(&self) {
        self.0.wake();
    }
}

impl InlineDisk {
    /// Queues `op`; its answer comes out of a later [`InlineDisk::wait`],
    /// exactly once. The same rules as [`DiskHandle::submit`].
    pub fn submit(&mut self, token: u64, op: DiskOp) {
        self.engine.push(token, op);
    }

    /// Before the disk is used again after a detach: clears a write-back
    /// error the kernel kept for the descriptor from before (reported once,
    /// see `writeback`), so the first flush of the repaired or replaced
    /// disk does not fail on it. `Ok(true)` when one was cleared; an error
    /// when the disk fails a flush now. Blocks for one or two fdatasyncs;
    /// only while no op of this disk is in flight.
    pub fn clear_stale_write_error(&self) -> std::io::Result<bool> {
        writeback::clear_stale_error(&self.sync_file)
    }

    /// A handle other threads use to end a wait (after they queued work
    /// for this thread elsewhere).
    pub fn waker(&self) -> DiskWaker {
        DiskWaker(Arc::clone(&self.waker))
    }

    /// Starts the queued ops, then sleeps until at least one op completes,
    /// [`DiskWaker::wake`] is called (also if it was called after the
    /// previous wait returned), or `timeout` passes. Appends the answers to
    /// `out`.
    pub fn wait(&mut self, timeout: Duration, out: &mut Vec<(u64, IoResult)>) {
        if !self.closed && !self.engine.turn(Some(timeout)) {
            self.closed = true;
        }
        // Cleared only now: whatever the owner finds queued elsewhere after
        // this returns, a wake from then on ends the next wait (one that
        // came in between at worst ends it early, for nothing).
        self.waker.pending.store(false, Ordering::SeqCst);
        out.append(&mut self.engine.sink);
    }

    /// Starts the queued ops now (one `io_uring_enter` that does not
    /// wait), so the disk works while this thread does something slow
    /// before its next [`InlineDisk::wait`].
    pub fn submit_now(&mut self) {
        if !self.closed {
            self.engine.submit_now();
        }
    }

    /// Arms a one-shot poll of `fd` for `events` (`libc::POLLIN`,
    /// `POLLOUT`, ...) on the ring, so that readiness of a socket ends a
    /// [`InlineDisk::wait`] like a disk completion does; the owner then
    /// finds `(key, mask or -errno)` with [`InlineDisk::take_polls`] and
    /// arms again when it wants more. `key` must be below 2^63 - 1. Errors
    /// and hang-ups fire the poll whatever `events` says. `fd` must stay
    /// open until the next wait (the kernel takes its reference at
    /// submission); a poll still armed when the fd is shut down fires
    /// then, and one still armed at [`InlineDisk::shutdown`] is cancelled.
    pub fn poll(&mut self, fd: &impl AsFd, events: i16, key: u64) -> std::io::Result<()> {
        if self.closed {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        }
        let events = u32::from(u16::from_ne_bytes(events.to_ne_bytes()));
        self.engine.push_poll(fd.as_fd().as_raw_fd(), events, key)
    }

    /// Starts `recv(fd, buf[pos..pos + len], MSG_WAITALL)` on the ring: the
    /// kernel goes on receiving until all `len` bytes are in (or EOF, or an
    /// error) without waking this thread per segment; then a
    /// [`SocketEvent`] with `key`, the byte count (or -errno) and the
    /// buffer comes out of [`InlineDisk::take_polls`]. Until then the ring
    /// owns the buffer, and [`InlineDisk::shutdown`] waits for the receive:
    /// shut the socket down to end it early. Submitted at once (with any
    /// disk ops queued). If it cannot be started, the buffer is dropped and
    /// the error returned.
    pub fn recv(
        &mut self,
        fd: &impl AsFd,
        buf: AlignedBuf,
        pos: usize,
        len: usize,
        key: u64,
    ) -> std::io::Result<()> {
        if self.closed {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        }
        self.engine
            .push_recv(fd.as_fd().as_raw_fd(), buf, pos, len, key)
    }

    /// Moves the polls that fired and the receives that finished during
    /// the last waits into `out`.
    pub fn take_polls(&mut self, out: &mut Vec<SocketEvent>) {
        self.engine.take_polls(out);
    }

    /// Ops submitted and not yet answered by [`InlineDisk::wait`].
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Size of the data area served, in bytes.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Serve `[0, data_bytes)` from now on (`repctl resize` grew the data
    /// area; the metadata already moved out of the way).
    pub fn set_data_bytes(&mut self, data_bytes: u64) {
        self.data_bytes = data_bytes;
        self.engine.cfg.data_bytes = data_bytes;
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Completes every op submitted before (their answers are discarded),
    /// then closes the ring and the backing store. Later ops are answered
    /// with ESHUTDOWN. Idempotent.
    pub fn shutdown(&mut self) {
        if self.closed {
            return;
        }
        self.engine.begin_shutdown();
        while self.engine.turn(None) {
            self.engine.sink.clear();
        }
        self.engine.sink.clear();
        self.engine.close();
        self.closed = true;
    }
}

impl Drop for InlineDisk {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Wakes the ring thread: one eventfd write per batch of messages.
#[derive(Debug)]
pub(crate) struct Waker {
    pub(crate) eventfd: Arc<EventFd>,
    /// Set by the first sender after the ring thread last looked; cleared
    /// by the ring thread before it drains its channels.
    pub(crate) pending: AtomicBool,
}

impl Waker {
    pub(crate) fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.eventfd.write(1) {
                tracing::error!(error = %e, "cannot wake the disk thread");
            }
        }
    }
}

pub(crate) enum Msg {
    Op {
        token: u64,
        op: DiskOp,
    },
    /// Drain, close the ring, then ack (if any).
    Shutdown(Option<SyncSender<()>>),
}

#[derive(Debug)]
struct Shared {
    /// `None` only while dropping.
    tx: Option<Sender<Msg>>,
    waker: Arc<Waker>,
    in_flight: Arc<AtomicUsize>,
    thread: Mutex<Option<JoinHandle<()>>>,
    ring_thread: ThreadId,
    data_bytes: u64,
    direct: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.waker.wake();
        let handle = match self.thread.get_mut() {
            Ok(h) => h.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        // Dropped from inside `on_complete`: the thread ends on its own
        // once it has drained; joining itself would deadlock.
        if std::thread::current().id() != self.ring_thread {
            if let Some(h) = handle {
                if h.join().is_err() {
                    tracing::error!("the disk thread panicked");
                }
            }
        }
    }
}

/// A started local disk. Cheap to clone; `Send + Sync`. When the last
/// handle is dropped, the ops already submitted are completed (answered)
/// and the thread stops; the drop waits for that unless it happens on the
/// ring thread itself.
#[derive(Debug, Clone)]
pub struct DiskHandle {
    shared: Arc<Shared>,
}

impl DiskHandle {
    /// Queues `op`; `on_complete(token, result)` follows exactly once. Ops
    /// run concurrently (up to the queue depth) and complete in any order:
    /// callers order dependent ops themselves (e.g. a flush after the
    /// writes it covers have been answered). Never blocks. After
    /// [`DiskHandle::shutdown`] ops are answered with ESHUTDOWN.
    pub fn submit(&self, token: u64, op: DiskOp) {
        let Some(tx) = &self.shared.tx else { return };
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        if tx.send(Msg::Op { token, op }).is_err() {
            // Only if the ring thread died (a bug): nobody can answer.
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(token, "disk thread is gone; op dropped");
            return;
        }
        self.shared.waker.wake();
    }

    /// Ops submitted and not yet answered (queued, or in the kernel; an op
    /// stops counting just before its `on_complete` call).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Size of the data area served, in bytes.
    pub fn data_bytes(&self) -> u64 {
        self.shared.data_bytes
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.shared.direct
    }

    /// Completes every op submitted before, closes the ring and the backing
    /// store, and returns once that is done (when called on the ring thread,
    /// i.e. from `on_complete`, it only starts the shutdown). Later ops, from
    /// any clone, are answered with ESHUTDOWN. Idempotent.
    pub fn shutdown(&self) {
        let Some(tx) = &self.shared.tx else { return };
        let on_ring_thread = std::thread::current().id() == self.shared.ring_thread;
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let ack = (!on_ring_thread).then_some(ack_tx);
        if tx.send(Msg::Shutdown(ack)).is_err() {
            return;
        }
        self.shared.waker.wake();
        if !on_ring_thread {
            // Err: the thread is gone, nothing left to wait for.
            let _ = ack_rx.recv();
        }
    }
}

#[cfg(test)]
mod tests;
