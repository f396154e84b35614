//! One ublk queue thread: it turns the kernel's requests into
//! [`IoRequest`]s for the backend and commits the answers.
//!
//! The thread never waits for the backend: it submits each request with a
//! [`Reply`] closure and goes back to its io_uring. A reply, from whatever
//! thread completes it, lands in the queue's [`Mailbox`] and writes its
//! eventfd; the ring has a poll armed on that eventfd, so the queue thread
//! wakes up, drains the mailbox and commits the results
//! (`COMMIT_AND_FETCH_REQ`). Nothing here touches the network or the disk.
//!
//! Bounds: a queue has at most `depth` requests in flight (one per tag), so
//! the mailbox never holds more than `depth` answers and the backend never
//! has more than `nr_queues * depth` requests from this device.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use io_uring::{opcode, types};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::{sys, BufDesc, BufDescList, UblkIORes};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::AsRawFd;

use crate::disk::AlignedBuf;
use crate::frontend::{BlockBackend, IoRequest, IoResult, Reply};

/// The `op` byte of the user_data of the eventfd poll (a target I/O in
/// libublk's terms); no ublk command uses it with the target bit set.
const EVENTFD_OP: u32 = 0xfe;
/// The tag field of the eventfd poll's user_data: not a real tag.
const EVENTFD_TAG: u16 = u16::MAX;

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

/// Where replies wait for the queue thread: at most one per tag.
pub(crate) struct Mailbox {
    done: Mutex<Vec<(u16, IoResult)>>,
    efd: EventFd,
}

impl Mailbox {
    pub fn new(depth: usize) -> nix::Result<Self> {
        Ok(Self {
            done: Mutex::new(Vec::with_capacity(depth)),
            efd: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
        })
    }

    /// Called from any thread with one request's answer. Only the answer
    /// that finds the mailbox empty writes the eventfd: the ones after it
    /// are taken by the same wakeup (`take` swaps out everything there is).
    pub fn post(&self, tag: u16, res: IoResult) {
        let was_empty = {
            let mut g = self.done.lock().unwrap_or_else(PoisonError::into_inner);
            let was_empty = g.is_empty();
            g.push((tag, res));
            was_empty
        };
        if was_empty {
            // EAGAIN only when the counter is about to overflow: then a
            // wakeup is pending anyway.
            let _ = self.efd.write(1);
        }
    }

    /// Everything posted so far. The eventfd is cleared first: an answer
    /// posted after the swap finds the mailbox empty and wakes the ring
    /// again; one posted before it is in what is taken now.
    pub fn take(&self, into: &mut Vec<(u16, IoResult)>) {
        let _ = self.efd.read();
        let mut g = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *g, into);
    }
}

/// Arm a one-shot poll for the eventfd in this thread's queue ring.
fn arm_eventfd(q: &UblkQueue<'_>, mailbox: &Mailbox) -> Result<(), libublk::UblkError> {
    let sqe = opcode::PollAdd::new(
        types::Fd(mailbox.efd.as_raw_fd()),
        u32::try_from(libc::POLLIN).unwrap_or(1),
    )
    .build()
    .user_data(UblkIOCtx::build_user_data(EVENTFD_TAG, EVENTFD_OP, 0, true));
    q.ublk_submit_sqe_sync(sqe)
}

/// The state of one queue thread's handler.
struct Handler {
    qid: u16,
    dev_id: u32,
    backend: Arc<dyn BlockBackend>,
    mailbox: Arc<Mailbox>,
    bufs: Vec<IoBuf<u8>>,
    pending: Vec<Option<Pending>>,
    max_bytes: u32,
    size: u64,
    scratch: Vec<(u16, IoResult)>,
}

impl Handler {
    fn commit(&mut self, q: &UblkQueue<'_>, tag: u16, res: i32) {
        let Some(buf) = self.bufs.get(usize::from(tag)) else {
            tracing::error!(qid = self.qid, tag, "commit for an unknown tag");
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
        let data = match p.kind {
            Kind::Write { .. } => {
                let src = self
                    .bufs
                    .get(usize::from(tag))
                    .and_then(|b| b.as_slice().get(..p.len as usize));
                match src.map(AlignedBuf::copy_from) {
                    Some(Ok(b)) => Some(b.into_bytes()),
                    _ => {
                        self.commit(q, tag, -libc::EINVAL);
                        return;
                    }
                }
            }
            _ => None,
        };
        let Some(slot) = self.pending.get_mut(usize::from(tag)) else {
            self.commit(q, tag, -libc::EINVAL);
            return;
        };
        if slot.is_some() {
            tracing::error!(qid = self.qid, tag, "a new request on a busy tag");
        }
        *slot = Some(p);
        let mailbox = self.mailbox.clone();
        let reply: Reply = Box::new(move |res| mailbox.post(tag, res));
        self.backend.submit(to_request(&p, data), reply);
    }

    /// The eventfd fired: commit every answer in the mailbox, re-arm.
    fn replies(&mut self, q: &UblkQueue<'_>) {
        let mut done = std::mem::take(&mut self.scratch);
        self.mailbox.take(&mut done);
        for (tag, res) in done.drain(..) {
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
        self.scratch = done;
        if let Err(e) = arm_eventfd(q, &self.mailbox) {
            tracing::error!(qid = self.qid, "cannot re-arm the completion eventfd: {e}");
        }
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
    arm_eventfd(&q, &mailbox).map_err(|e| format!("queue {qid}: {e:?}"))?;
    let mut h = Handler {
        qid,
        dev_id: dev.dev_info.dev_id,
        backend,
        mailbox,
        bufs,
        pending: vec![None; depth],
        max_bytes: dev.dev_info.max_io_buf_bytes,
        size,
        scratch: Vec::with_capacity(depth),
    };
    tracing::debug!(dev = h.dev_id, qid, depth, "ublk queue serving");
    q.wait_and_handle_io(move |q, tag, ctx| {
        if ctx.is_tgt_io() {
            if UblkIOCtx::user_data_to_op(ctx.user_data()) == EVENTFD_OP {
                h.replies(q);
            }
        } else {
            h.request(q, tag);
        }
    });
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

    #[test]
    fn mailbox_wakes_and_drains() {
        let m = Arc::new(Mailbox::new(4).unwrap());
        let m2 = m.clone();
        std::thread::spawn(move || {
            m2.post(3, Ok(None));
            m2.post(1, Err(libc::EIO));
        })
        .join()
        .unwrap();
        // One wakeup for both answers: the eventfd counter is 1.
        assert_eq!(m.efd.read().unwrap(), 1);
        let mut out = Vec::new();
        m.take(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, 3);
        // Drained: the eventfd reads EAGAIN now, the box is empty.
        assert!(m.efd.read().is_err());
        let mut again = Vec::new();
        m.take(&mut again);
        assert!(again.is_empty());
        // The next answer finds it empty and wakes the ring again.
        m.post(2, Ok(None));
        assert_eq!(m.efd.read().unwrap(), 1);
    }
}
