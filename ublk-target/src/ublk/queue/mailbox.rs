//! Where the backend's answers and the write buffers it lent come back to
//! a queue thread ([`Mailbox`]), and the lease a write's buffer is lent
//! under ([`TagLease`]).

use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};
use libublk::helpers::IoBuf;
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::frontend::IoResult;

/// What the queue thread needs to commit one tag: the backend's answer and,
/// for a write, the tag's buffer back from its lease.
#[derive(Debug)]
pub(crate) struct Ready {
    pub tag: u16,
    pub res: IoResult,
    /// The tag's buffer, returned by the write's [`TagLease`].
    pub buf: Option<IoBuf<u8>>,
    /// When the backend answered (the start of `frontend_out`).
    pub answered: Instant,
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
    pub(super) efd: EventFd,
    /// The target of the queue ring's eventfd Read. Atomic because the
    /// kernel writes it while other threads hold `&Mailbox`; the queue
    /// thread never reads it (the counter's value does not matter).
    wake_buf: AtomicU64,
}

/// A lent buffer still out this long after its answer is worth a warning:
/// its tag cannot be committed, so the request it served does not complete.
pub(super) const LEASE_WARN: Duration = Duration::from_secs(5);

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
        let answered = Instant::now();
        if lent && slot.buf.is_none() {
            slot.res = Some(res);
            slot.answered = Some(answered);
            return;
        }
        let buf = slot.buf.take();
        self.push_ready(
            g,
            Ready {
                tag,
                res,
                buf,
                answered,
            },
        );
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
        let answered = slot.answered.take().unwrap_or_else(Instant::now);
        slot.warned = false;
        self.push_ready(
            g,
            Ready {
                tag,
                res,
                buf: Some(buf),
                answered,
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
    pub(super) fn overdue(&self, now: Instant, limit: Duration) -> Vec<(u16, Duration)> {
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
    pub(super) fn read_sqe(&self, user_data: u64) -> squeue::Entry {
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
    pub(super) fn new(
        buf: IoBuf<u8>,
        len: usize,
        tag: u16,
        mailbox: Arc<Mailbox>,
    ) -> Result<Self, IoBuf<u8>> {
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
