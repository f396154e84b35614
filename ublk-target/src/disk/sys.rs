//! The disk layer's system calls: with `raw.rs` (the aligned allocation
//! they read into and write from), every `unsafe` block of the disk layer
//! lives here (the rest of `disk` is `#![deny(unsafe_code)]`). Two pieces:
//!
//! - [`Ring`]: a narrow io_uring wrapper in the Firecracker style. Its one
//!   safety rule is ownership: pushing an SQE *moves* the buffer it points
//!   into the ring's slot table, and the buffer only comes back out with
//!   the CQE. Nothing the kernel may still read or write can be freed or
//!   touched by Rust code meanwhile, and `Drop` waits for every outstanding
//!   CQE before anything is freed.
//! - Block-device ioctls (size, logical block size, discard, zero-out) and
//!   `statx` for the O_DIRECT alignment of a file.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use nix::libc;
use nix::sys::eventfd::EventFd;

use super::aligned::AlignedBuf;
use super::SocketEvent;

/// The memory an SQE points into, owned by the ring while the SQE is in
/// flight.
#[derive(Debug)]
pub(crate) enum IoBuf {
    None,
    /// Exclusively owned: the kernel may write into it (reads).
    Aligned(AlignedBuf),
    /// Shared, read-only: the kernel only reads it (writes). Cloning a
    /// `Bytes` never moves its data.
    Shared(Bytes),
}

/// One operation to put on the ring.
#[derive(Debug)]
pub(crate) enum Sqe {
    /// `pread(fd, buf[pos..pos+len], offset)`.
    Read {
        buf: AlignedBuf,
        pos: usize,
        len: usize,
        offset: u64,
    },
    /// `pwritev2(fd, buf[pos..pos+len], offset, dsync ? RWF_DSYNC : 0)`.
    Write {
        buf: IoBuf,
        pos: usize,
        len: usize,
        offset: u64,
        dsync: bool,
    },
    /// `fsync` / `fdatasync`.
    Fsync { datasync: bool },
    /// `fallocate(fd, mode, offset, len)`.
    Fallocate { offset: u64, len: u64, mode: i32 },
}

/// A reaped completion: the tag given to [`Ring::push`], the raw result
/// (negative errno or byte count) and the buffer, handed back.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) tag: u64,
    pub(crate) res: i32,
    pub(crate) buf: IoBuf,
}

struct Slot {
    tag: u64,
    buf: IoBuf,
}

/// `user_data` of the internal eventfd read (slot indices are far below).
const WAKE_USER_DATA: u64 = u64::MAX;
/// `user_data` bit of fd polls; the caller's key is in the bits below.
const POLL_BIT: u64 = 1 << 63;
/// Keys of fd polls must stay below this (so no poll is ever taken for the
/// wake read, whose `user_data` has every bit set).
const POLL_KEY_LIMIT: u64 = POLL_BIT - 1;

/// An io_uring bound to one file, plus a permanently armed read on an
/// eventfd so that other threads can wake [`Ring::wait`].
pub(crate) struct Ring {
    ring: IoUring,
    file: File,
    wake: Arc<EventFd>,
    /// Target of the eventfd read; boxed so its address is stable.
    wake_buf: Box<u64>,
    wake_armed: bool,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// SQEs pushed whose CQE has not been reaped (excluding the wake read
    /// and fd polls, including socket receives).
    outstanding: usize,
    /// Socket receives among `outstanding`.
    recvs: usize,
    /// Fired fd polls and finished socket receives not yet taken.
    polls: Vec<SocketEvent>,
    /// The buffer table for zero-copy reads (`push_read_into`).
    zc: ZcTable,
}

/// The ring's registered-buffer table for zero-copy reads: set up on the
/// first one, each index free again once its UNREGISTER completed.
#[derive(Debug)]
enum ZcTable {
    Untried,
    Ready { free: Vec<u16> },
    Unavailable,
}

/// Indices in the buffer table: one per zero-copy read in flight (the
/// disk's queue depth is far below).
const ZC_SLOTS: u16 = 1024;
/// `user_data` bit of the REGISTER/UNREGISTER commands of zero-copy reads
/// (below [`POLL_BIT`]; slot indices are far below); the buffer index is
/// in the low 16 bits.
const ZC_BIT: u64 = 1 << 62;
const ZC_UNREGISTER: u64 = 1 << 61;

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("fd", &self.file.as_raw_fd())
            .field("outstanding", &self.outstanding)
            .field("wake_armed", &self.wake_armed)
            .finish()
    }
}

/// The SQE for `sqe` on `fd`, and the buffer it reads into or writes
/// from (owned by its slot until the completion).
fn entry_for(fd: types::Fd, sqe: Sqe) -> Result<(io_uring::squeue::Entry, IoBuf), i32> {
    Ok(match sqe {
        Sqe::Read {
            mut buf,
            pos,
            len,
            offset,
        } => {
            let len32 = u32::try_from(len).map_err(|_| libc::EINVAL)?;
            let ptr = buf
                .as_mut_slice()
                .get_mut(pos..pos.checked_add(len).ok_or(libc::EINVAL)?)
                .ok_or(libc::EINVAL)?
                .as_mut_ptr();
            let entry = opcode::Read::new(fd, ptr, len32).offset(offset).build();
            (entry, IoBuf::Aligned(buf))
        }
        Sqe::Write {
            buf,
            pos,
            len,
            offset,
            dsync,
        } => {
            let len32 = u32::try_from(len).map_err(|_| libc::EINVAL)?;
            let end = pos.checked_add(len).ok_or(libc::EINVAL)?;
            let ptr = match &buf {
                IoBuf::None => return Err(libc::EINVAL),
                IoBuf::Aligned(b) => b.as_slice().get(pos..end).map(<[u8]>::as_ptr),
                IoBuf::Shared(b) => b.get(pos..end).map(<[u8]>::as_ptr),
            }
            .ok_or(libc::EINVAL)?;
            let flags = if dsync { libc::RWF_DSYNC } else { 0 };
            let entry = opcode::Write::new(fd, ptr, len32)
                .offset(offset)
                .rw_flags(flags)
                .build();
            (entry, buf)
        }
        Sqe::Fsync { datasync } => {
            let flags = if datasync {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            (opcode::Fsync::new(fd).flags(flags).build(), IoBuf::None)
        }
        Sqe::Fallocate { offset, len, mode } => (
            opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(mode)
                .build(),
            IoBuf::None,
        ),
    })
}

impl Ring {
    /// Sets up a ring with room for `entries` SQEs (rounded up to a power
    /// of two by the kernel) and arms the wake read.
    pub(crate) fn new(file: File, wake: Arc<EventFd>, entries: u32) -> io::Result<Self> {
        let ring = IoUring::new(entries)?;
        let mut me = Self {
            ring,
            file,
            wake,
            wake_buf: Box::new(0),
            wake_armed: false,
            slots: Vec::new(),
            free: Vec::new(),
            outstanding: 0,
            recvs: 0,
            polls: Vec::new(),
            zc: ZcTable::Untried,
        };
        me.arm_wake()?;
        Ok(me)
    }

    /// Whether [`Ring::wait`] can take a timeout.
    pub(crate) fn has_timed_wait(&self) -> bool {
        self.ring.params().is_feature_ext_arg()
    }

    /// File ops (not socket receives) pushed and not yet reaped.
    pub(crate) fn file_ops_outstanding(&self) -> usize {
        self.outstanding - self.recvs
    }

    fn push_entry(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: every buffer an entry points to is owned by `self` (in
        // `slots` or `wake_buf`) from before this push until its CQE is
        // reaped, and `Drop` waits for all CQEs; the range was bounds-checked
        // by the caller against the owned buffer.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        // SQ full: hand what we have to the kernel and try again.
        self.ring.submit()?;
        // SAFETY: as above.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::from_raw_os_error(libc::EBUSY))
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let ptr: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(self.wake.as_raw_fd()), ptr.cast::<u8>(), 8)
            .build()
            .user_data(WAKE_USER_DATA);
        self.push_entry(&entry)?;
        self.wake_armed = true;
        Ok(())
    }

    /// Queues a one-shot poll of `fd` for `events` (POLLIN, POLLOUT...;
    /// errors and hang-ups are always reported). When the fd is ready, its
    /// `(key, mask or -errno)` comes out of [`Ring::take_polls`]. A poll
    /// points at no memory, so it is not counted as outstanding and the
    /// ring may be closed with polls still armed (the kernel cancels
    /// them). `fd` only has to be open until the next submission; the
    /// kernel holds its own reference from then on.
    pub(crate) fn push_poll(&mut self, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
        if key >= POLL_KEY_LIMIT {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let entry = opcode::PollAdd::new(types::Fd(fd), events)
            .build()
            .user_data(POLL_BIT | key);
        self.push_entry(&entry)
    }

    /// Queues `recv(fd, buf[pos..pos + len], MSG_WAITALL)` on a stream
    /// socket: the kernel keeps receiving (retrying inside io_uring, no
    /// wake-up of this thread per segment) until all `len` bytes are in,
    /// EOF or an error. The result and the buffer come back out of
    /// [`Ring::take_polls`] with `key`. The buffer is owned by the ring
    /// until then, like any read's: shut the socket down to end a receive
    /// early ([`Drop`] waits for it). Submitted at once, so `fd` only has
    /// to be open during the call. On error the buffer is dropped (the
    /// kernel never saw it).
    pub(crate) fn push_recv(
        &mut self,
        fd: RawFd,
        mut buf: AlignedBuf,
        pos: usize,
        len: usize,
        key: u64,
    ) -> io::Result<()> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        if key >= POLL_KEY_LIMIT {
            return Err(einval());
        }
        let len32 = u32::try_from(len).map_err(|_| einval())?;
        let ptr = pos
            .checked_add(len)
            .and_then(|end| buf.as_mut_slice().get_mut(pos..end))
            .map(<[u8]>::as_mut_ptr)
            .ok_or_else(einval)?;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let entry = opcode::Recv::new(types::Fd(fd), ptr, len32)
            .flags(libc::MSG_WAITALL)
            .build()
            .user_data(index as u64);
        // Own the buffer *before* the SQE can reach the kernel.
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(Slot {
                tag: POLL_BIT | key,
                buf: IoBuf::Aligned(buf),
            });
        }
        if let Err(e) = self.push_entry(&entry) {
            // Not queued: the kernel never saw it, the buffer can go.
            if let Some(slot) = self.slots.get_mut(index) {
                *slot = None;
            }
            self.free.push(index);
            return Err(e);
        }
        self.outstanding += 1;
        self.recvs += 1;
        // Submitted right away: the kernel resolves the fd at submission,
        // and a socket closed in the meantime could have its number reused
        // by another one, whose bytes this receive would then take.
        if let Err(e) = self.submit() {
            tracing::warn!(error = %e, "io_uring_enter failed; the socket receive goes with the next one");
        }
        Ok(())
    }

    /// Moves the fd polls that fired and the socket receives that finished
    /// into `out`; see [`Ring::push_poll`] and [`Ring::push_recv`].
    pub(crate) fn take_polls(&mut self, out: &mut Vec<SocketEvent>) {
        out.append(&mut self.polls);
    }

    /// Hands the queued SQEs to the kernel without waiting for anything.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Queues `sqe` (submitted by the next [`Ring::wait`]). On error the
    /// buffer is dropped and the errno returned (EINVAL: range outside the
    /// buffer or longer than u32; EBUSY: submission queue full).
    pub(crate) fn push(&mut self, tag: u64, sqe: Sqe) -> Result<(), i32> {
        let (builder, buf) = entry_for(types::Fd(self.file.as_raw_fd()), sqe)?;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let entry = builder.user_data(index as u64);
        // Own the buffer *before* the SQE can reach the kernel.
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(Slot { tag, buf });
        }
        if let Err(e) = self.push_entry(&entry) {
            // Not queued: the kernel never saw it, the buffer can go.
            if let Some(slot) = self.slots.get_mut(index) {
                *slot = None;
            }
            self.free.push(index);
            return Err(e.raw_os_error().unwrap_or(libc::EIO));
        }
        self.outstanding += 1;
        Ok(())
    }

    /// Submits queued SQEs and waits for at least one CQE (an op or a
    /// wake-up). EINTR and EBUSY (completion queue full) are not errors:
    /// the caller reaps and comes back.
    /// With a `timeout`, also returns when it expires (needs the kernel's
    /// IORING_FEAT_EXT_ARG, 5.11; see [`Ring::has_timed_wait`]).
    pub(crate) fn wait(&mut self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every available completion into `out`, handing buffers back,
    /// and re-arms the wake read if it fired (unless `rearm` is false).
    /// Returns whether the wake read fired.
    fn reap_inner(&mut self, out: &mut Vec<Completion>, rearm: bool) -> bool {
        let mut woke = false;
        let mut zc_aux = Vec::new();
        let cq = self.ring.completion();
        for cqe in cq {
            let user_data = cqe.user_data();
            if user_data == WAKE_USER_DATA {
                self.wake_armed = false;
                woke = true;
                if cqe.result() < 0 && cqe.result() != -libc::ECANCELED {
                    tracing::warn!(errno = -cqe.result(), "io_uring eventfd read failed");
                }
                continue;
            }
            if user_data & POLL_BIT == 0 && user_data & ZC_BIT != 0 {
                zc_aux.push((user_data, cqe.result()));
                continue;
            }
            if user_data & POLL_BIT != 0 {
                self.polls.push(SocketEvent {
                    key: user_data & !POLL_BIT,
                    res: cqe.result(),
                    buf: None,
                });
                continue;
            }
            let slot = usize::try_from(user_data)
                .ok()
                .and_then(|i| self.slots.get_mut(i).map(|s| (i, s.take())));
            match slot {
                Some((index, Some(Slot { tag, buf }))) if tag & POLL_BIT != 0 => {
                    self.free.push(index);
                    // A slot in use was counted when it was pushed.
                    debug_assert!(self.outstanding > 0 && self.recvs > 0, "receive counts");
                    self.outstanding = self.outstanding.saturating_sub(1);
                    self.recvs = self.recvs.saturating_sub(1);
                    self.polls.push(SocketEvent {
                        key: tag & !POLL_BIT,
                        res: cqe.result(),
                        buf: match buf {
                            IoBuf::Aligned(b) => Some(b),
                            _ => None,
                        },
                    });
                }
                Some((index, Some(Slot { tag, buf }))) => {
                    self.free.push(index);
                    debug_assert!(self.outstanding > 0, "completion counts");
                    self.outstanding = self.outstanding.saturating_sub(1);
                    out.push(Completion {
                        tag,
                        res: cqe.result(),
                        buf,
                    });
                }
                _ => tracing::error!(user_data, "io_uring completion for an unknown slot"),
            }
        }
        for (user_data, res) in zc_aux {
            self.zc_aux_done(user_data, res);
        }
        if woke && rearm {
            if let Err(e) = self.arm_wake() {
                tracing::error!(error = %e, "cannot re-arm the io_uring wake-up read");
            }
        }
        woke
    }

    /// Moves every available completion into `out`; see [`Ring::push`].
    pub(crate) fn reap(&mut self, out: &mut Vec<Completion>) {
        self.reap_inner(out, true);
    }

    /// A free index of the zero-copy buffer table, setting the table up
    /// on first use; `None` if the kernel has none (before 5.19) or all
    /// are in use.
    pub(crate) fn zc_index(&mut self) -> Option<u16> {
        if matches!(self.zc, ZcTable::Untried) {
            self.zc = match self
                .ring
                .submitter()
                .register_buffers_sparse(u32::from(ZC_SLOTS))
            {
                Ok(()) => ZcTable::Ready {
                    free: (0..ZC_SLOTS).rev().collect(),
                },
                Err(e) => {
                    tracing::info!(error = %e, "no io_uring buffer table: ublk reads are copied");
                    ZcTable::Unavailable
                }
            };
        }
        match &mut self.zc {
            ZcTable::Ready { free } => free.pop(),
            _ => None,
        }
    }

    /// Queues a zero-copy read (the tag's completion is the read's; see
    /// `crate::zerocopy`): REGISTER the pages of ublk request `cmd` (on
    /// `/dev/ublkcN` `cdev`) at buffer `index` (from [`Ring::zc_index`]),
    /// read `len` bytes at `offset` of the file into them from byte `pos`
    /// on, UNREGISTER. Linked: a failed registration cancels the read (it
    /// completes with ECANCELED); the unregistration runs whatever the read
    /// did (a hard link), and `index` is free again when it has.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_read_into(
        &mut self,
        tag: u64,
        cdev: RawFd,
        cmd: [u8; 16],
        index: u16,
        pos: usize,
        len: usize,
        offset: u64,
    ) -> Result<(), i32> {
        use io_uring::squeue::Flags;
        let len32 = u32::try_from(len).map_err(|_| libc::EINVAL)?;
        let reg = opcode::UringCmd16::new(types::Fd(cdev), crate::zerocopy::REGISTER_IO_BUF)
            .cmd(cmd)
            .build()
            .flags(Flags::IO_LINK | Flags::SKIP_SUCCESS)
            .user_data(ZC_BIT | u64::from(index));
        // A registered kernel buffer is addressed from 0: `pos` is the
        // offset into the request's pages, not a pointer.
        let at = std::ptr::null_mut::<u8>().wrapping_add(pos);
        let read = opcode::ReadFixed::new(types::Fd(self.file.as_raw_fd()), at, len32, index)
            .offset(offset)
            .build()
            .flags(Flags::IO_HARDLINK);
        let unreg = opcode::UringCmd16::new(types::Fd(cdev), crate::zerocopy::UNREGISTER_IO_BUF)
            .cmd(cmd)
            .build()
            .user_data(ZC_BIT | ZC_UNREGISTER | u64::from(index));
        // A chain must reach the kernel in one submission.
        let room = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if room < 3 {
            self.ring
                .submit()
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        }
        let index_slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        if let Some(slot) = self.slots.get_mut(index_slot) {
            *slot = Some(Slot {
                tag,
                buf: IoBuf::None,
            });
        }
        let read = read.user_data(index_slot as u64);
        // SAFETY: the read points at no memory of this process (a
        // registered kernel buffer); the commands' payload is inline.
        let pushed = unsafe { self.ring.submission().push_multiple(&[reg, read, unreg]) };
        if pushed.is_err() {
            if let Some(slot) = self.slots.get_mut(index_slot) {
                *slot = None;
            }
            self.free.push(index_slot);
            return Err(libc::EBUSY);
        }
        self.outstanding += 1;
        Ok(())
    }

    /// Gives back an index from [`Ring::zc_index`] that was not used.
    pub(crate) fn zc_unused(&mut self, index: u16) {
        if let ZcTable::Ready { free } = &mut self.zc {
            free.push(index);
        }
    }

    /// A REGISTER (only failures complete: SKIP_SUCCESS) or UNREGISTER of
    /// a zero-copy read completed.
    fn zc_aux_done(&mut self, user_data: u64, res: i32) {
        let index = (user_data & 0xffff) as u16;
        if user_data & ZC_UNREGISTER == 0 {
            tracing::debug!(index, errno = -res, "ublk buffer registration failed");
            return;
        }
        if res < 0 && res != -libc::ECANCELED {
            tracing::warn!(index, errno = -res, "ublk buffer unregistration failed");
        }
        if let ZcTable::Ready { free } = &mut self.zc {
            free.push(index);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Complete the wake read (the eventfd counter becomes non-zero) and
        // wait for every outstanding CQE: only then may buffers be freed.
        if self.wake_armed {
            let _ = self.wake.write(1);
        }
        let mut sink = Vec::new();
        while self.outstanding > 0 || self.wake_armed {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                    // Cannot know when the kernel is done with the buffers:
                    // leak them rather than free memory it may still write.
                    tracing::error!(error = %e, outstanding = self.outstanding,
                        "io_uring teardown failed; leaking in-flight buffers");
                    std::mem::forget(std::mem::take(&mut self.slots));
                    std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
                    return;
                }
            }
            self.reap_inner(&mut sink, false);
            sink.clear();
        }
    }
}

// ---- block devices ----------------------------------------------------------

const BLK_IOC_MAGIC: u8 = 0x12;
nix::ioctl_read_bad!(
    ioctl_blkgetsize64,
    nix::request_code_read!(BLK_IOC_MAGIC, 114, std::mem::size_of::<libc::size_t>()),
    u64
);
nix::ioctl_read_bad!(
    ioctl_blksszget,
    nix::request_code_none!(BLK_IOC_MAGIC, 104),
    libc::c_int
);
nix::ioctl_write_ptr_bad!(
    ioctl_blkdiscard,
    nix::request_code_none!(BLK_IOC_MAGIC, 119),
    [u64; 2]
);
nix::ioctl_write_ptr_bad!(
    ioctl_blkzeroout,
    nix::request_code_none!(BLK_IOC_MAGIC, 127),
    [u64; 2]
);

/// Size in bytes of a block device (BLKGETSIZE64).
pub(crate) fn blk_size(fd: BorrowedFd<'_>) -> nix::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // to a live local; `fd` is a valid open descriptor for the call.
    unsafe { ioctl_blkgetsize64(fd.as_raw_fd(), &mut size) }?;
    Ok(size)
}

/// Logical block size of a block device (BLKSSZGET).
pub(crate) fn blk_logical_block_size(fd: BorrowedFd<'_>) -> nix::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer to a live local.
    unsafe { ioctl_blksszget(fd.as_raw_fd(), &mut size) }?;
    u32::try_from(size).map_err(|_| nix::errno::Errno::EINVAL)
}

/// BLKDISCARD of `[offset, offset + len)`. Blocks until the device is done.
pub(crate) fn blk_discard(fd: BorrowedFd<'_>, offset: u64, len: u64) -> nix::Result<()> {
    let range = [offset, len];
    // SAFETY: BLKDISCARD reads two u64 through the pointer to a live local.
    unsafe { ioctl_blkdiscard(fd.as_raw_fd(), &range) }.map(drop)
}

/// BLKZEROOUT of `[offset, offset + len)`. Blocks until the device is done.
pub(crate) fn blk_zeroout(fd: BorrowedFd<'_>, offset: u64, len: u64) -> nix::Result<()> {
    let range = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 through the pointer to a live local.
    unsafe { ioctl_blkzeroout(fd.as_raw_fd(), &range) }.map(drop)
}

/// O_DIRECT alignment of an open file from `statx(STATX_DIOALIGN)`:
/// `Some((memory, offset))`, `Some((0, 0))` if the file does not support
/// direct I/O, `None` if the kernel or filesystem does not say.
pub(crate) fn dio_alignment(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: an empty path with AT_EMPTY_PATH makes statx look at `fd`;
    // the kernel writes at most one `struct statx` into `stx`.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: `statx` is plain integers, valid when zeroed, and the kernel
    // filled it in on success.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}
