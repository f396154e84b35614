//! One ublk queue thread: it turns the kernel's requests into
//! [`IoRequest`]s for the backend and commits the answers.
//!
//! The thread never waits for the backend: it submits each request with a
//! [`Reply`] closure and goes back to its io_uring. A reply, from whatever
//! thread completes it, lands in the queue's [`Mailbox`] and writes its
//! eventfd; the ring has a Read armed on that eventfd, so the queue thread
//! wakes up, drains the mailbox and commits the results
//! (`COMMIT_AND_FETCH_REQ`). Nothing here touches the network or the disk.
//!
//! A write's data is not copied: the backend gets a `Bytes` over the tag's
//! own 4096-aligned buffer (a [`TagLease`]), which the disk writes with
//! O_DIRECT as it is. The tag is committed only once the answer is in *and*
//! the lease is gone, since the commit hands the buffer back to the kernel
//! for the tag's next request. Reads are still copied from the backend's
//! buffer into the tag's.
//!
//! Bounds: a queue has at most `depth` requests in flight (one per tag), so
//! the mailbox never holds more than `depth` answers and the backend never
//! has more than `nr_queues * depth` requests from this device.
//!
//! Here: decoding a request, its pending state, committing its result
//! (full byte count or a negative errno, never short) and the thread's
//! loop; `mailbox`: the [`Mailbox`] and the [`TagLease`]; `tests`.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{opcode, types};
use libublk::helpers::IoBuf;
use libublk::io::{with_task_io_ring_mut, UblkDev, UblkIOCtx, UblkQueue};
use libublk::{sys, BufDesc, BufDescList, UblkIORes};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::frontend::{BlockBackend, IoRequest, IoResult, Reply};
use crate::stages::{Stage, Stages};

mod mailbox;

use mailbox::LEASE_WARN;
pub(crate) use mailbox::{Mailbox, Ready, TagLease};

/// What a request asks of the backend, decoded from its descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write { fua: bool },
    Flush,
    Trim,
    WriteZeroes { fua: bool },
}

/// One request the queue thread has handed to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    pub kind: Kind,
    pub offset: u64,
    pub len: u32,
}

impl Kind {
    /// Its kind in the latency breakdown.
    pub fn stage_kind(self) -> crate::stages::Kind {
        use crate::stages::Kind as K;
        match self {
            Kind::Read => K::Read,
            Kind::Write { .. } => K::Write,
            Kind::Flush => K::Flush,
            Kind::Trim => K::Discard,
            Kind::WriteZeroes { .. } => K::WriteZeroes,
        }
    }
}

impl Pending {
    /// The result to commit for a successful request: its full byte count
    /// (0 for a flush). Never a short count.
    pub fn full_result(&self) -> i32 {
        match self.kind {
            Kind::Flush => 0,
            _ => i32::try_from(self.len).unwrap_or(-libc::EINVAL),
        }
    }
}

/// Decode one ublk I/O descriptor. `max_bytes` bounds every request (the
/// device's max_io_buf_bytes; discards and write-zeroes get the same limit,
/// as advertised); `size` is the device size in bytes. `Err` is the negative
/// errno to complete the request with at once.
pub(crate) fn decode(
    op_flags: u32,
    start_sector: u64,
    nr_sectors: u32,
    max_bytes: u32,
    size: u64,
) -> Result<Pending, i32> {
    let op = op_flags & 0xff;
    let fua = op_flags & sys::UBLK_IO_F_FUA != 0;
    let kind = match op {
        sys::UBLK_IO_OP_READ => Kind::Read,
        sys::UBLK_IO_OP_WRITE => Kind::Write { fua },
        sys::UBLK_IO_OP_FLUSH => Kind::Flush,
        sys::UBLK_IO_OP_DISCARD => Kind::Trim,
        sys::UBLK_IO_OP_WRITE_ZEROES => Kind::WriteZeroes { fua },
        _ => return Err(-libc::EOPNOTSUPP),
    };
    if kind == Kind::Flush {
        return Ok(Pending {
            kind,
            offset: 0,
            len: 0,
        });
    }
    let len = u64::from(nr_sectors) << 9;
    let offset = start_sector.checked_mul(512).ok_or(-libc::EINVAL)?;
    if len == 0 || len > u64::from(max_bytes) {
        return Err(-libc::EINVAL);
    }
    match offset.checked_add(len) {
        Some(end) if end <= size => {}
        _ => return Err(-libc::EINVAL),
    }
    let len = u32::try_from(len).map_err(|_| -libc::EINVAL)?;
    Ok(Pending { kind, offset, len })
}

/// The backend request for `p`; `data` is the request's bytes for a write.
pub(crate) fn to_request(p: &Pending, data: Option<Bytes>) -> IoRequest {
    match p.kind {
        Kind::Read => IoRequest::Read {
            offset: p.offset,
            len: p.len,
        },
        Kind::Write { fua } => IoRequest::Write {
            offset: p.offset,
            data: data.unwrap_or_default(),
            fua,
        },
        Kind::Flush => IoRequest::Flush,
        Kind::Trim => IoRequest::Trim {
            offset: p.offset,
            len: p.len,
        },
        Kind::WriteZeroes { fua } => IoRequest::WriteZeroes {
            offset: p.offset,
            len: p.len,
            fua,
        },
    }
}

/// The result to commit for `p` given the backend's answer, and for a read
/// the data to copy into the request's buffer first. A read must come back
/// with exactly `len` bytes; anything else is EIO, never a short count.
pub(crate) fn commit_result(p: &Pending, res: IoResult) -> (i32, Option<Bytes>) {
    match res {
        Err(errno) => (-errno_or_eio(errno), None),
        Ok(data) => match p.kind {
            Kind::Read => match data {
                Some(d) if d.len() == p.len as usize => (p.full_result(), Some(d)),
                _ => (-libc::EIO, None),
            },
            _ => (p.full_result(), None),
        },
    }
}

fn errno_or_eio(errno: i32) -> i32 {
    if errno > 0 && errno < 4096 {
        errno
    } else {
        libc::EIO
    }
}

/// `op` bytes of the queue ring's own SQEs (target I/O in libublk's terms,
/// with [`OWN_TAG`]): no ublk command uses them with the target bit set.
const EVENTFD_OP: u32 = 0xfe;
const TIMER_OP: u32 = 0xfd;
const CANCEL_OP: u32 = 0xfc;
/// The tag field of those SQEs' user_data: not a real tag.
const OWN_TAG: u16 = u16::MAX;

fn own_user_data(op: u32) -> u64 {
    UblkIOCtx::build_user_data(OWN_TAG, op, 0, true)
}

/// How often the queue looks for lent buffers that do not come back.
const LEASE_CHECK: Duration = Duration::from_secs(1);

/// The state of one queue thread's handler.
struct Handler {
    qid: u16,
    dev_id: u32,
    backend: Arc<dyn BlockBackend>,
    mailbox: Arc<Mailbox>,
    /// `None` while the tag's buffer is lent to a write.
    bufs: Vec<Option<IoBuf<u8>>>,
    pending: Vec<Option<Pending>>,
    /// Buffers lent out now.
    lent: usize,
    read_armed: bool,
    /// Wakes the ring for the lease check while buffers are lent; `None`
    /// if it could not be set up (then only the warnings are lost).
    timer: Option<TimerFd>,
    timer_armed: bool,
    max_bytes: u32,
    size: u64,
    scratch: Vec<Ready>,
    /// A zero-copy device (`crate::zerocopy`): reads may land in the
    /// request's pages, and the kernel copies nothing to or from the tags'
    /// buffers: writes are read and other reads written with
    /// `pread`/`pwrite` on `/dev/ublkcN` (user copy).
    zc: Option<Arc<std::os::fd::OwnedFd>>,
    /// Where `frontend_out` is counted while requests are timed.
    stages: Option<Arc<Stages>>,
}

impl Handler {
    fn commit(&mut self, q: &UblkQueue<'_>, tag: u16, res: i32) {
        // The kernel reuses the buffer named here for the tag's next
        // request, so a tag whose buffer is lent out must not be committed.
        let Some(buf) = self.bufs.get(usize::from(tag)).and_then(Option::as_ref) else {
            tracing::error!(qid = self.qid, tag, "commit for a tag without its buffer");
            return;
        };
        // A zero-copy device takes no buffer address (user copy).
        let desc = if self.zc.is_some() {
            BufDesc::Slice(&[])
        } else {
            BufDesc::Slice(buf.as_slice())
        };
        if let Err(e) = q.complete_io_cmd_unified(tag, desc, Ok(UblkIORes::Result(res))) {
            tracing::error!(qid = self.qid, tag, "cannot commit a ublk request: {e}");
        }
    }

    /// Arm the Read of the mailbox's eventfd in this thread's queue ring.
    fn arm_read(&mut self, q: &UblkQueue<'_>) -> Result<(), libublk::UblkError> {
        q.ublk_submit_sqe_sync(self.mailbox.read_sqe(own_user_data(EVENTFD_OP)))?;
        self.read_armed = true;
        Ok(())
    }

    /// A one-shot timerfd and a poll on it rather than an io_uring Timeout:
    /// a Timeout completes with -ETIME, which libublk logs as a failed I/O.
    /// Setting the timer also clears its expiry count, so nobody reads it.
    fn arm_timer(&mut self, q: &UblkQueue<'_>) {
        if self.timer_armed {
            return;
        }
        let Some(timer) = &self.timer else { return };
        let armed = timer
            .set(
                Expiration::OneShot(TimeSpec::from_duration(LEASE_CHECK)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let sqe = opcode::PollAdd::new(
                    types::Fd(timer.as_fd().as_raw_fd()),
                    u32::try_from(libc::POLLIN).unwrap_or(1),
                )
                .build()
                .user_data(own_user_data(TIMER_OP));
                q.ublk_submit_sqe_sync(sqe).map_err(|e| e.to_string())
            });
        match armed {
            Ok(()) => self.timer_armed = true,
            Err(e) => {
                tracing::warn!(
                    qid = self.qid,
                    "no checks of lent buffers: cannot arm the timer: {e}"
                );
                self.timer = None;
            }
        }
    }

    /// A new request arrived for `tag`.
    fn request(&mut self, q: &UblkQueue<'_>, tag: u16) {
        // The start of `frontend_in`: decoding, a write's copy, the hand-over.
        let received = Instant::now();
        let iod = q.get_iod(tag);
        let p = match decode(
            iod.op_flags,
            iod.start_sector,
            iod.nr_sectors,
            self.max_bytes,
            // `repctl resize` may have grown the device since the queue
            // started (UPDATE_SIZE); the backend checks its own end too.
            self.size.max(self.backend.size_bytes()),
        ) {
            Ok(p) => p,
            Err(res) => {
                tracing::debug!(
                    qid = self.qid,
                    tag,
                    op_flags = iod.op_flags,
                    start = iod.start_sector,
                    sectors = iod.nr_sectors,
                    res,
                    "refused a ublk request"
                );
                self.commit(q, tag, res);
                return;
            }
        };
        if self
            .pending
            .get(usize::from(tag))
            .is_none_or(Option::is_some)
        {
            tracing::error!(
                qid = self.qid,
                tag,
                "a new request on a busy or unknown tag"
            );
            return;
        }
        let data = match p.kind {
            Kind::Write { .. } => {
                let Some(mut buf) = self.bufs.get_mut(usize::from(tag)).and_then(Option::take)
                else {
                    tracing::error!(qid = self.qid, tag, "a write on a tag whose buffer is out");
                    return;
                };
                if let Err(errno) = self.copy_in(tag, &mut buf, p.len as usize) {
                    if let Some(slot) = self.bufs.get_mut(usize::from(tag)) {
                        *slot = Some(buf);
                    }
                    tracing::warn!(qid = self.qid, tag, errno, "cannot read a write's data");
                    self.commit(q, tag, -errno);
                    return;
                }
                match TagLease::new(buf, p.len as usize, tag, self.mailbox.clone()) {
                    Ok(lease) => {
                        self.lent += 1;
                        self.arm_timer(q);
                        Some(Bytes::from_owner(lease))
                    }
                    Err(buf) => {
                        if let Some(slot) = self.bufs.get_mut(usize::from(tag)) {
                            *slot = Some(buf);
                        }
                        self.commit(q, tag, -libc::EINVAL);
                        return;
                    }
                }
            }
            _ => None,
        };
        if let Some(slot) = self.pending.get_mut(usize::from(tag)) {
            *slot = Some(p);
        }
        let lent = data.is_some();
        let mailbox = self.mailbox.clone();
        let reply: Reply = Box::new(move |res| mailbox.answer(tag, res, lent));
        match (&self.zc, p.kind) {
            (Some(cdev), Kind::Read) => {
                let dst = crate::zerocopy::ZcDest {
                    cdev: Arc::clone(cdev),
                    qid: self.qid,
                    tag,
                };
                self.backend
                    .submit_read_into(p.offset, p.len, dst, reply, received);
            }
            _ => self
                .backend
                .submit_received(to_request(&p, data), reply, received),
        }
    }

    /// On a zero-copy device, the data of the write on `tag` into `buf`
    /// (`pread` of `/dev/ublkcN`; the kernel copies nothing by itself
    /// there). Errno when it does not come in full.
    fn copy_in(&self, tag: u16, buf: &mut IoBuf<u8>, len: usize) -> Result<(), i32> {
        let Some(cdev) = &self.zc else {
            return Ok(());
        };
        let dst = buf.as_mut_slice().get_mut(..len).ok_or(libc::EINVAL)?;
        let pos = user_copy_pos(self.qid, tag)?;
        match nix::sys::uio::pread(cdev.as_fd(), dst, pos) {
            Ok(n) if n == len => Ok(()),
            Ok(_) => Err(libc::EIO),
            Err(e) => Err(e as i32),
        }
    }

    /// Puts a read's data `d` into the request on `tag`: into the tag's
    /// buffer (the kernel copies it on commit), or on a zero-copy device
    /// nowhere if it has landed already, else by `pwrite` to
    /// `/dev/ublkcN`. False if it could not.
    fn copy_out(&mut self, tag: u16, d: &Bytes) -> bool {
        match &self.zc {
            Some(_) if crate::zerocopy::is_landed(d) => true,
            Some(cdev) => user_copy_pos(self.qid, tag)
                .ok()
                .and_then(|pos| nix::sys::uio::pwrite(cdev.as_fd(), d, pos).ok())
                .is_some_and(|n| n == d.len()),
            // Only a zero-copy device names a request a read may land in.
            None if crate::zerocopy::is_landed(d) => false,
            None => match self
                .bufs
                .get_mut(usize::from(tag))
                .and_then(Option::as_mut)
                .and_then(|b| b.as_mut_slice().get_mut(..d.len()))
            {
                Some(dst) => {
                    dst.copy_from_slice(d);
                    true
                }
                None => false,
            },
        }
    }

    /// The eventfd Read completed: commit every ready tag, re-arm.
    fn replies(&mut self, q: &UblkQueue<'_>, res: i32) {
        self.read_armed = false;
        if res < 0 {
            tracing::error!(
                qid = self.qid,
                errno = -res,
                "the completion eventfd read failed"
            );
        }
        let mut ready = std::mem::take(&mut self.scratch);
        self.mailbox.take(&mut ready);
        for Ready {
            tag,
            res,
            buf,
            answered,
        } in ready.drain(..)
        {
            if let Some(b) = buf {
                // Only a lent buffer comes back with an answer.
                debug_assert!(self.lent > 0, "a buffer came back that was not lent");
                self.lent = self.lent.saturating_sub(1);
                match self.bufs.get_mut(usize::from(tag)) {
                    Some(slot) => *slot = Some(b),
                    None => tracing::error!(qid = self.qid, tag, "a buffer for an unknown tag"),
                }
            }
            let Some(p) = self
                .pending
                .get_mut(usize::from(tag))
                .and_then(Option::take)
            else {
                tracing::error!(qid = self.qid, tag, "an answer for a tag not in flight");
                continue;
            };
            let (res, data) = commit_result(&p, res);
            if let Some(d) = data {
                if !self.copy_out(tag, &d) {
                    self.commit(q, tag, -libc::EIO);
                    continue;
                }
            }
            if let Some(st) = &self.stages {
                st.observe(p.kind.stage_kind(), Stage::FrontendOut, answered.elapsed());
            }
            if res < 0 {
                tracing::debug!(
                    dev = self.dev_id,
                    qid = self.qid,
                    tag,
                    res,
                    ?p,
                    "request failed"
                );
            }
            self.commit(q, tag, res);
        }
        self.scratch = ready;
        if let Err(e) = self.arm_read(q) {
            tracing::error!(qid = self.qid, "cannot re-arm the completion eventfd: {e}");
        }
    }

    /// The lease check timer fired.
    fn check_leases(&mut self, q: &UblkQueue<'_>, res: i32) {
        self.timer_armed = false;
        if res < 0 {
            tracing::warn!(
                qid = self.qid,
                errno = -res,
                "no checks of lent buffers: the timer poll failed"
            );
            self.timer = None;
            return;
        }
        for (tag, late) in self.mailbox.overdue(Instant::now(), LEASE_WARN) {
            tracing::warn!(
                dev = self.dev_id,
                qid = self.qid,
                tag,
                ?late,
                "a write was answered but its buffer is still held by the backend: \
                 the request cannot complete until it is released"
            );
        }
        if self.lent > 0 {
            self.arm_timer(q);
        }
    }

    /// The queue is done: make sure the kernel no longer holds the eventfd
    /// Read, whose target lives in the mailbox. Returns false if that could
    /// not be established.
    fn cancel_read(&mut self, q: &UblkQueue<'_>) -> bool {
        if !self.read_armed {
            return true;
        }
        let read = own_user_data(EVENTFD_OP);
        let cancel = opcode::AsyncCancel::new(read)
            .build()
            .user_data(own_user_data(CANCEL_OP));
        if q.ublk_submit_sqe_sync(cancel).is_err() {
            return false;
        }
        with_task_io_ring_mut(|ring| {
            for _ in 0..1000 {
                match ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(_) => return false,
                }
                if ring.completion().any(|c| c.user_data() == read) {
                    self.read_armed = false;
                    return true;
                }
            }
            false
        })
    }
}

/// The `/dev/ublkcN` offset of the data of request `tag` of queue `qid`
/// (user copy): `UBLKSRV_IO_BUF_OFFSET`, the queue id from bit
/// `UBLK_QID_OFF`, the tag from bit `UBLK_TAG_OFF`.
fn user_copy_pos(qid: u16, tag: u16) -> Result<i64, i32> {
    let pos = u64::from(sys::UBLKSRV_IO_BUF_OFFSET)
        + ((u64::from(qid) << sys::UBLK_QID_OFF) | (u64::from(tag) << sys::UBLK_TAG_OFF));
    i64::try_from(pos).map_err(|_| libc::EINVAL)
}

/// A descriptor of `/dev/ublkcN` of its own for the reads that land
/// zero-copy (the engine's disk ring names it in its commands), if `dev`
/// is a zero-copy device.
fn zero_copy_cdev(dev: &UblkDev) -> Result<Option<Arc<std::os::fd::OwnedFd>>, String> {
    if !crate::zerocopy::device_is_zero_copy(dev.dev_info.flags) {
        return Ok(None);
    }
    let raw = dev.tgt.fds.first().copied().unwrap_or(-1);
    if raw < 0 {
        return Err("no /dev/ublkcN descriptor for zero copy".into());
    }
    // SAFETY: `tgt.fds[0]` is libublk's open `/dev/ublkcN` (`UblkDev::new`),
    // open as long as `dev`, which outlives this call; it is only borrowed
    // to be duplicated.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    fd.try_clone_to_owned()
        .map(|f| Some(Arc::new(f)))
        .map_err(|e| format!("cannot duplicate /dev/ublkcN: {e}"))
}

/// Serve queue `qid` of `dev` until the device stops. An `Err` before the
/// tags were fetched leaves the device waiting for this queue: the caller
/// must tell the device (see `device.rs`).
pub(crate) fn run(
    qid: u16,
    dev: &UblkDev,
    backend: Arc<dyn BlockBackend>,
    size: u64,
) -> Result<(), String> {
    let depth = usize::from(dev.dev_info.queue_depth);
    let bufs = dev.alloc_queue_io_bufs();
    let mailbox =
        Arc::new(Mailbox::new(depth).map_err(|e| format!("cannot create an eventfd: {e}"))?);
    let q = UblkQueue::new(qid, dev).map_err(|e| format!("queue {qid}: {e:?}"))?;
    let zc = zero_copy_cdev(dev).map_err(|e| format!("queue {qid}: {e}"))?;
    // A zero-copy device takes no buffer addresses (user copy).
    let fetch_bufs = if zc.is_some() { None } else { Some(&bufs) };
    let q = q
        .submit_fetch_commands_unified(BufDescList::Slices(fetch_bufs))
        .map_err(|e| format!("queue {qid}: cannot fetch: {e:?}"))?;
    let mut h = Handler {
        qid,
        dev_id: dev.dev_info.dev_id,
        backend,
        mailbox,
        bufs: bufs.into_iter().map(Some).collect(),
        pending: vec![None; depth],
        lent: 0,
        read_armed: false,
        timer: TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_CLOEXEC)
            .inspect_err(|e| tracing::warn!(qid, "no checks of lent buffers: no timerfd: {e}"))
            .ok(),
        timer_armed: false,
        max_bytes: dev.dev_info.max_io_buf_bytes,
        size,
        scratch: Vec::with_capacity(depth),
        zc,
        stages: None,
    };
    h.stages = h.backend.stages();
    h.arm_read(&q).map_err(|e| format!("queue {qid}: {e:?}"))?;
    tracing::debug!(dev = h.dev_id, qid, depth, "ublk queue serving");
    q.wait_and_handle_io(|q, tag, ctx| {
        if ctx.is_tgt_io() {
            match UblkIOCtx::user_data_to_op(ctx.user_data()) {
                EVENTFD_OP => h.replies(q, ctx.result()),
                TIMER_OP => h.check_leases(q, ctx.result()),
                _ => {}
            }
        } else {
            h.request(q, tag);
        }
    });
    if !h.cancel_read(&q) {
        // The kernel may still complete the Read into the mailbox: keep it
        // alive for good rather than let it write freed memory.
        tracing::error!(
            dev = h.dev_id,
            qid,
            "cannot cancel the eventfd read; leaking it"
        );
        std::mem::forget(h.mailbox.clone());
    }
    if h.lent > 0 {
        tracing::debug!(
            dev = h.dev_id,
            qid,
            lent = h.lent,
            "queue done with buffers still lent"
        );
    }
    tracing::debug!(dev = dev.dev_info.dev_id, qid, "ublk queue done");
    Ok(())
}

#[cfg(test)]
mod tests;
