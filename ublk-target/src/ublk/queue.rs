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

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{opcode, squeue, types};
use libublk::helpers::IoBuf;
use libublk::io::{with_task_io_ring_mut, UblkDev, UblkIOCtx, UblkQueue};
use libublk::{sys, BufDesc, BufDescList, UblkIORes};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::frontend::{BlockBackend, IoRequest, IoResult, Reply};

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

/// What the queue thread needs to commit one tag: the backend's answer and,
/// for a write, the tag's buffer back from its lease.
#[derive(Debug)]
pub(crate) struct Ready {
    pub tag: u16,
    pub res: IoResult,
    /// The tag's buffer, returned by the write's [`TagLease`].
    pub buf: Option<IoBuf<u8>>,
}

/// One tag's half-done state: whichever of the answer and the lease's
/// release comes first waits here for the other.
#[derive(Default)]
struct Slot {
    res: Option<IoResult>,
    buf: Option<IoBuf<u8>>,
    /// When the answer came while the buffer was still lent out.
    answered: Option<Instant>,
    warned: bool,
}

struct Inner {
    ready: Vec<Ready>,
    slots: Vec<Slot>,
}

/// Where answers and returned buffers wait for the queue thread: at most
/// one of each per tag. The queue thread reads `efd` with an io_uring Read
/// into `wake_buf`, so waking it costs the poster one eventfd write and the
/// queue thread no syscall of its own.
pub(crate) struct Mailbox {
    inner: Mutex<Inner>,
    efd: EventFd,
    /// The target of the queue ring's eventfd Read. Atomic because the
    /// kernel writes it while other threads hold `&Mailbox`; the queue
    /// thread never reads it (the counter's value does not matter).
    wake_buf: AtomicU64,
}

/// A lent buffer still out this long after its answer is worth a warning:
/// its tag cannot be committed, so the request it served does not complete.
const LEASE_WARN: Duration = Duration::from_secs(5);

impl Mailbox {
    pub fn new(depth: usize) -> nix::Result<Self> {
        Ok(Self {
            inner: Mutex::new(Inner {
                ready: Vec::with_capacity(depth),
                slots: (0..depth).map(|_| Slot::default()).collect(),
            }),
            // Blocking: io_uring returns EAGAIN for a read of a non-blocking
            // file instead of waiting for it to become readable.
            efd: EventFd::from_flags(EfdFlags::EFD_CLOEXEC)?,
            wake_buf: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Only the item that finds the ready list empty writes the eventfd:
    /// the ones after it are taken by the same wakeup (`take` swaps out
    /// everything there is).
    fn push_ready(&self, mut g: std::sync::MutexGuard<'_, Inner>, r: Ready) {
        let was_empty = g.ready.is_empty();
        g.ready.push(r);
        drop(g);
        if was_empty {
            // A blocking eventfd write waits only when the counter is about
            // to overflow, which takes 2^64 wakeups nobody reads.
            let _ = self.efd.write(1);
        }
    }

    /// Called from any thread with one request's answer. `lent`: the
    /// request holds the tag's buffer; then the tag is ready only once the
    /// buffer is back too.
    pub fn answer(&self, tag: u16, res: IoResult, lent: bool) {
        let mut g = self.lock();
        let Some(slot) = g.slots.get_mut(usize::from(tag)) else {
            tracing::error!(tag, "an answer for a tag past the queue depth");
            return;
        };
        if slot.res.is_some() {
            tracing::error!(tag, "a second answer for one request");
            return;
        }
        if lent && slot.buf.is_none() {
            slot.res = Some(res);
            slot.answered = Some(Instant::now());
            return;
        }
        let buf = slot.buf.take();
        self.push_ready(g, Ready { tag, res, buf });
    }

    /// Called from any thread when a [`TagLease`] goes: the buffer is home.
    fn release(&self, tag: u16, buf: IoBuf<u8>) {
        let mut g = self.lock();
        let Some(slot) = g.slots.get_mut(usize::from(tag)) else {
            tracing::error!(tag, "a buffer returned for a tag past the queue depth");
            return;
        };
        let Some(res) = slot.res.take() else {
            slot.buf = Some(buf);
            return;
        };
        if slot.warned {
            let late = slot.answered.map(|t| t.elapsed()).unwrap_or_default();
            tracing::warn!(
                tag,
                ?late,
                "a lent write buffer came back; its request completes now"
            );
        }
        slot.answered = None;
        slot.warned = false;
        self.push_ready(
            g,
            Ready {
                tag,
                res,
                buf: Some(buf),
            },
        );
    }

    /// Everything ready so far. The eventfd was cleared by the ring's Read
    /// before this runs: an item pushed after the swap finds the list
    /// empty and wakes the ring again; one pushed before it is taken now.
    /// Appends to `into`; when that is empty (the queue thread's case) the
    /// two lists are swapped, so neither allocates.
    pub fn take(&self, into: &mut Vec<Ready>) {
        let mut g = self.lock();
        if into.is_empty() {
            std::mem::swap(&mut g.ready, into);
        } else {
            into.append(&mut g.ready);
        }
    }

    /// Tags answered at least `limit` before `now` whose buffer is still
    /// lent out, each reported once.
    fn overdue(&self, now: Instant, limit: Duration) -> Vec<(u16, Duration)> {
        let mut g = self.lock();
        let mut out = Vec::new();
        for (tag, slot) in g.slots.iter_mut().enumerate() {
            let Some(t) = slot.answered else { continue };
            let late = now.saturating_duration_since(t);
            if !slot.warned && late >= limit {
                slot.warned = true;
                out.push((u16::try_from(tag).unwrap_or(u16::MAX), late));
            }
        }
        out
    }

    /// The SQE that reads the eventfd into `wake_buf`.
    fn read_sqe(&self, user_data: u64) -> squeue::Entry {
        opcode::Read::new(
            types::Fd(self.efd.as_raw_fd()),
            self.wake_buf.as_ptr().cast::<u8>(),
            8,
        )
        .build()
        .user_data(user_data)
    }
}

/// A write's view of its tag's buffer, lent to the backend as the payload
/// `Bytes` instead of a copy. It owns the buffer while it lives, and its
/// `Drop` hands it back to the queue, which commits the tag only once both
/// the answer and the buffer are in.
///
/// This is sound without `unsafe` on our side because of when the kernel
/// touches a tag buffer: it copies a write's data in before it completes
/// the tag's FETCH / COMMIT_AND_FETCH command, and it next uses the buffer
/// only for the command that commits this request. While a lease lives that
/// command has not been sent, so nobody but the lease's readers touches the
/// bytes, and the buffer can be freed safely wherever the lease ends.
pub(crate) struct TagLease {
    buf: Option<IoBuf<u8>>,
    len: usize,
    tag: u16,
    mailbox: Arc<Mailbox>,
}

impl TagLease {
    /// Lend the first `len` bytes of `buf`; gives the buffer back if it is
    /// shorter than that.
    fn new(buf: IoBuf<u8>, len: usize, tag: u16, mailbox: Arc<Mailbox>) -> Result<Self, IoBuf<u8>> {
        if len > buf.len() {
            return Err(buf);
        }
        Ok(Self {
            buf: Some(buf),
            len,
            tag,
            mailbox,
        })
    }
}

impl AsRef<[u8]> for TagLease {
    fn as_ref(&self) -> &[u8] {
        self.buf
            .as_ref()
            .and_then(|b| b.as_slice().get(..self.len))
            .unwrap_or_default()
    }
}

impl Drop for TagLease {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.mailbox.release(self.tag, buf);
        }
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
}

impl Handler {
    fn commit(&mut self, q: &UblkQueue<'_>, tag: u16, res: i32) {
        // The kernel reuses the buffer named here for the tag's next
        // request, so a tag whose buffer is lent out must not be committed.
        let Some(buf) = self.bufs.get(usize::from(tag)).and_then(Option::as_ref) else {
            tracing::error!(qid = self.qid, tag, "commit for a tag without its buffer");
            return;
        };
        if let Err(e) = q.complete_io_cmd_unified(
            tag,
            BufDesc::Slice(buf.as_slice()),
            Ok(UblkIORes::Result(res)),
        ) {
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
        let iod = q.get_iod(tag);
        let p = match decode(
            iod.op_flags,
            iod.start_sector,
            iod.nr_sectors,
            self.max_bytes,
            self.size,
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
                let Some(buf) = self.bufs.get_mut(usize::from(tag)).and_then(Option::take) else {
                    tracing::error!(qid = self.qid, tag, "a write on a tag whose buffer is out");
                    return;
                };
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
        self.backend.submit(to_request(&p, data), reply);
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
        for Ready { tag, res, buf } in ready.drain(..) {
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
                match self
                    .bufs
                    .get_mut(usize::from(tag))
                    .and_then(Option::as_mut)
                    .and_then(|b| b.as_mut_slice().get_mut(..d.len()))
                {
                    Some(dst) => dst.copy_from_slice(&d),
                    None => {
                        self.commit(q, tag, -libc::EIO);
                        continue;
                    }
                }
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
    let q = q
        .submit_fetch_commands_unified(BufDescList::Slices(Some(&bufs)))
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
    };
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
mod tests {
    use super::*;

    const MIB: u32 = 1 << 20;
    const SIZE: u64 = 256 << 20;

    #[test]
    fn decodes_each_op() {
        let r = decode(sys::UBLK_IO_OP_READ, 8, 8, MIB, SIZE).unwrap();
        assert_eq!(
            r,
            Pending {
                kind: Kind::Read,
                offset: 4096,
                len: 4096
            }
        );
        let w = decode(sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA, 0, 1, MIB, SIZE).unwrap();
        assert_eq!(w.kind, Kind::Write { fua: true });
        let w = decode(sys::UBLK_IO_OP_WRITE, 0, 1, MIB, SIZE).unwrap();
        assert_eq!(w.kind, Kind::Write { fua: false });
        let f = decode(sys::UBLK_IO_OP_FLUSH, 0, 0, MIB, SIZE).unwrap();
        assert_eq!(f.kind, Kind::Flush);
        assert_eq!(f.full_result(), 0);
        let t = decode(sys::UBLK_IO_OP_DISCARD, 16, 2048, MIB, SIZE).unwrap();
        assert_eq!((t.kind, t.len), (Kind::Trim, MIB));
        let z = decode(
            sys::UBLK_IO_OP_WRITE_ZEROES | sys::UBLK_IO_F_FUA | sys::UBLK_IO_F_NOUNMAP,
            0,
            8,
            MIB,
            SIZE,
        )
        .unwrap();
        assert_eq!(z.kind, Kind::WriteZeroes { fua: true });
        assert_eq!(
            to_request(&z, None),
            IoRequest::WriteZeroes {
                offset: 0,
                len: 4096,
                fua: true
            }
        );
    }

    #[test]
    fn refuses_what_cannot_be_served() {
        // Larger than the buffer.
        assert_eq!(
            decode(sys::UBLK_IO_OP_READ, 0, 2049, MIB, SIZE),
            Err(-libc::EINVAL)
        );
        assert_eq!(
            decode(sys::UBLK_IO_OP_DISCARD, 0, 4096, MIB, SIZE),
            Err(-libc::EINVAL)
        );
        // Past the end.
        assert_eq!(
            decode(sys::UBLK_IO_OP_WRITE, (SIZE >> 9) - 1, 2, MIB, SIZE),
            Err(-libc::EINVAL)
        );
        assert!(decode(sys::UBLK_IO_OP_WRITE, (SIZE >> 9) - 2, 2, MIB, SIZE).is_ok());
        assert_eq!(
            decode(sys::UBLK_IO_OP_READ, u64::MAX, 1, MIB, SIZE),
            Err(-libc::EINVAL)
        );
        // Empty.
        assert_eq!(
            decode(sys::UBLK_IO_OP_READ, 0, 0, MIB, SIZE),
            Err(-libc::EINVAL)
        );
        // Unknown ops.
        assert_eq!(
            decode(sys::UBLK_IO_OP_WRITE_SAME, 0, 1, MIB, SIZE),
            Err(-libc::EOPNOTSUPP)
        );
        assert_eq!(
            decode(sys::UBLK_IO_OP_ZONE_APPEND, 0, 1, MIB, SIZE),
            Err(-libc::EOPNOTSUPP)
        );
    }

    #[test]
    fn results_are_full_or_errno() {
        let r = Pending {
            kind: Kind::Read,
            offset: 0,
            len: 4096,
        };
        let (res, data) = commit_result(&r, Ok(Some(Bytes::from(vec![7u8; 4096]))));
        assert_eq!(res, 4096);
        assert_eq!(data.map(|d| d.len()), Some(4096));
        // A short read is an error, not a short count.
        assert_eq!(
            commit_result(&r, Ok(Some(Bytes::from(vec![0u8; 512])))).0,
            -libc::EIO
        );
        assert_eq!(commit_result(&r, Ok(None)).0, -libc::EIO);
        assert_eq!(commit_result(&r, Err(libc::EROFS)).0, -libc::EROFS);
        assert_eq!(commit_result(&r, Err(0)).0, -libc::EIO);
        assert_eq!(commit_result(&r, Err(-3)).0, -libc::EIO);
        let w = Pending {
            kind: Kind::Write { fua: false },
            offset: 0,
            len: 8192,
        };
        assert_eq!(commit_result(&w, Ok(None)), (8192, None));
        let f = Pending {
            kind: Kind::Flush,
            offset: 0,
            len: 0,
        };
        assert_eq!(commit_result(&f, Ok(None)), (0, None));
    }

    /// The eventfd counter, without blocking (0 when nothing is pending).
    fn efd_count(m: &Mailbox) -> u64 {
        let mut fds = [libc::pollfd {
            fd: m.efd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        if n == 1 {
            m.efd.read().unwrap()
        } else {
            0
        }
    }

    fn tag_buf(len: usize, fill: u8) -> IoBuf<u8> {
        let mut b = IoBuf::<u8>::new(len);
        b.as_mut_slice().fill(fill);
        b
    }

    #[test]
    fn mailbox_wakes_once_per_batch() {
        let m = Arc::new(Mailbox::new(4).unwrap());
        let m2 = m.clone();
        std::thread::spawn(move || {
            m2.answer(3, Ok(None), false);
            m2.answer(1, Err(libc::EIO), false);
        })
        .join()
        .unwrap();
        // One wakeup for both answers.
        assert_eq!(efd_count(&m), 1);
        let mut out = Vec::new();
        m.take(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].tag, out[1].tag), (3, 1));
        assert!(out[0].buf.is_none());
        let mut again = Vec::new();
        m.take(&mut again);
        assert!(again.is_empty());
        assert_eq!(efd_count(&m), 0);
        // The next answer finds the box empty and wakes the ring again.
        m.answer(2, Ok(None), false);
        assert_eq!(efd_count(&m), 1);
        // A tag past the depth is refused, not stored.
        m.answer(9, Ok(None), false);
        m.take(&mut again);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].tag, 2);
    }

    #[test]
    fn a_lent_tag_is_ready_only_with_its_answer_and_its_buffer() {
        let m = Arc::new(Mailbox::new(4).unwrap());
        let mut out = Vec::new();

        // Answer first, then the lease goes: ready only after the release.
        let buf = tag_buf(8192, 0x5a);
        let ptr = buf.as_ptr();
        let lease = TagLease::new(buf, 4096, 2, m.clone()).unwrap();
        let data = Bytes::from_owner(lease);
        assert_eq!(
            data.as_ptr(),
            ptr,
            "the write's data is the tag buffer, not a copy"
        );
        assert_eq!(data.len(), 4096);
        assert!(crate::disk::is_aligned(&data), "O_DIRECT takes it as it is");
        assert!(data.iter().all(|&b| b == 0x5a));
        let clone = data.slice(512..1024);
        m.answer(2, Ok(None), true);
        m.take(&mut out);
        assert!(out.is_empty(), "no commit while the buffer is lent");
        assert_eq!(efd_count(&m), 0, "and no wakeup for nothing");
        drop(data);
        m.take(&mut out);
        assert!(out.is_empty(), "a clone still holds the buffer");
        drop(clone);
        assert_eq!(efd_count(&m), 1);
        m.take(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].tag, 2);
        assert_eq!(out[0].res, Ok(None));
        let back = out.pop().unwrap().buf.unwrap();
        assert_eq!(back.as_ptr(), ptr);
        assert_eq!(back.len(), 8192);

        // The lease goes first (the usual order: the engine drops the data
        // before it answers): ready with the answer, one wakeup.
        let lease = TagLease::new(back, 8192, 0, m.clone()).unwrap();
        drop(Bytes::from_owner(lease));
        m.take(&mut out);
        assert!(out.is_empty());
        assert_eq!(efd_count(&m), 0);
        m.answer(0, Err(libc::EIO), true);
        assert_eq!(efd_count(&m), 1);
        m.take(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].res, Err(libc::EIO));
        assert_eq!(out[0].buf.as_ref().map(IoBuf::as_ptr), Some(ptr));

        // A lease longer than the buffer is refused and the buffer handed back.
        let back = out.pop().unwrap().buf.unwrap();
        let back = TagLease::new(back, 8193, 0, m.clone()).err().unwrap();
        assert_eq!(back.as_ptr(), ptr);
    }

    #[test]
    fn leases_out_long_after_their_answer_are_reported_once() {
        let m = Arc::new(Mailbox::new(4).unwrap());
        let held = Bytes::from_owner(TagLease::new(tag_buf(4096, 1), 4096, 1, m.clone()).unwrap());
        let soon = Bytes::from_owner(TagLease::new(tag_buf(4096, 2), 4096, 3, m.clone()).unwrap());
        m.answer(1, Ok(None), true);
        let now = Instant::now();
        assert!(m.overdue(now, LEASE_WARN).is_empty(), "not overdue yet");
        let late = m.overdue(now + LEASE_WARN, LEASE_WARN);
        assert_eq!(late.len(), 1, "only the answered one: {late:?}");
        assert_eq!(late[0].0, 1);
        assert!(
            m.overdue(now + 2 * LEASE_WARN, LEASE_WARN).is_empty(),
            "reported once"
        );
        drop(held);
        let mut out = Vec::new();
        m.take(&mut out);
        assert_eq!(out.len(), 1);
        drop(soon);
        m.answer(3, Ok(None), true);
        m.take(&mut out);
        assert_eq!(out.len(), 2);
        assert!(m.overdue(now + 3 * LEASE_WARN, LEASE_WARN).is_empty());
    }

    #[test]
    fn an_io_uring_read_of_the_eventfd_wakes_the_ring() {
        let mut ring = io_uring::IoUring::new(4).unwrap();
        let m = Arc::new(Mailbox::new(4).unwrap());
        let sqe = m.read_sqe(7);
        // SAFETY: the Read targets `m.wake_buf`, which `m` keeps alive until
        // after the CQE is reaped below.
        unsafe { ring.submission().push(&sqe).unwrap() };
        ring.submit().unwrap();
        assert_eq!(
            ring.completion().len(),
            0,
            "nothing posted yet: the read waits"
        );
        let m2 = m.clone();
        let t = std::thread::spawn(move || m2.answer(0, Ok(None), false));
        ring.submit_and_wait(1).unwrap();
        t.join().unwrap();
        let cqe = ring.completion().next().unwrap();
        assert_eq!((cqe.user_data(), cqe.result()), (7, 8));
        // The Read consumed the counter.
        assert_eq!(efd_count(&m), 0);
        let mut out = Vec::new();
        m.take(&mut out);
        assert_eq!(out.len(), 1);
    }
}
