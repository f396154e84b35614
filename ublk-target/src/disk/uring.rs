//! The ring thread: takes ops from the channel, keeps up to `queue_depth`
//! of them in flight on the io_uring, resubmits the remainder of short
//! reads and writes, and answers each op exactly once.
//!
//! Block-device discard and zero-out are ioctls that block until the device
//! is done (possibly seconds for a large range); they run on a helper
//! thread so they never stall the ring, and report back through a channel
//! and the same eventfd wake-up as submitters.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use nix::libc;

use super::aligned::{is_aligned, AlignedBuf};
use super::sys::{self, Completion, IoBuf, Ring, Sqe};
use super::{BackingKind, DiskOp, IoResult, Msg, Waker, MAX_IO_BYTES};

/// Chunk of the zero buffer used when zeroes have to be written.
const ZERO_CHUNK: usize = 1 << 20;
/// Times an op is resubmitted after EINTR/EAGAIN or a zero-byte write
/// before its error is reported.
const MAX_RETRIES: u8 = 8;

const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) kind: BackingKind,
    pub(crate) data_bytes: u64,
    pub(crate) direct: bool,
    pub(crate) align: u32,
    pub(crate) queue_depth: usize,
    pub(crate) max_chunk: usize,
}

/// What to do after a read or write CQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// All `total` bytes are done.
    Done,
    /// Progress but not finished: `done` bytes so far, resubmit the rest.
    More(usize),
    /// Zero bytes transferred: end of file for a read.
    Eof,
    /// Transient error (EINTR, EAGAIN): resubmit the same remainder.
    Retry(i32),
    /// Report this errno.
    Fail(i32),
}

/// The remainder logic: `total` bytes wanted, `done` already transferred,
/// `res` the CQE result of the SQE that covered `[done, total)` (or a
/// prefix of it).
pub(crate) fn step(total: usize, done: usize, res: i32) -> Step {
    if res < 0 {
        let errno = res.saturating_neg();
        return if errno == libc::EINTR || errno == libc::EAGAIN {
            Step::Retry(errno)
        } else {
            Step::Fail(errno)
        };
    }
    if res == 0 {
        return Step::Eof;
    }
    let Some(now) = usize::try_from(res).ok().and_then(|r| done.checked_add(r)) else {
        return Step::Fail(libc::EIO);
    };
    match now.cmp(&total) {
        std::cmp::Ordering::Equal => Step::Done,
        std::cmp::Ordering::Less => Step::More(now),
        // More than asked for: never trust it.
        std::cmp::Ordering::Greater => Step::Fail(libc::EIO),
    }
}

/// A tiny slab: stable indices for ops in flight.
#[derive(Debug)]
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
    fn insert(&mut self, item: T) -> usize {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            if let Some(slot) = self.items.get_mut(i) {
                *slot = Some(item);
                return i;
            }
        }
        self.items.push(Some(item));
        self.items.len() - 1
    }
    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i).and_then(Option::as_mut)
    }
    fn remove(&mut self, i: usize) -> Option<T> {
        let item = self.items.get_mut(i).and_then(Option::take);
        if item.is_some() {
            self.len -= 1;
            self.free.push(i);
        }
        item
    }
    fn len(&self) -> usize {
        self.len
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Read {
        offset: u64,
        len: usize,
        done: usize,
    },
    Write {
        offset: u64,
        len: usize,
        done: usize,
        fua: bool,
    },
    /// A zero-copy read into a ublk request (`Op::zc`).
    ReadInto {
        offset: u64,
        len: usize,
        done: usize,
    },
    Flush,
    Fallocate {
        offset: u64,
        len: u64,
        mode: i32,
    },
    /// Writing zeroes chunk by chunk (fallback of trim / write-zeroes).
    ZeroFill {
        offset: u64,
        len: u64,
        done: u64,
    },
    /// On the block-device helper thread.
    Blk {
        offset: u64,
        len: u64,
        discard: bool,
    },
}

#[derive(Debug)]
/// What [`Engine::start`] makes of an op: issued, or answered at once.
enum Prepared {
    Issue(State, IoBuf),
    /// Nothing to do (zero length).
    Done(IoResult),
}

struct Op {
    token: u64,
    retries: u8,
    state: State,
    /// Where a [`State::ReadInto`] lands.
    zc: Option<crate::zerocopy::ZcDest>,
}

struct BlkJob {
    slot: usize,
    discard: bool,
    offset: u64,
    len: u64,
}

struct BlkHelper {
    tx: Sender<BlkJob>,
    rx: Receiver<(usize, Result<(), i32>)>,
    thread: JoinHandle<()>,
}

impl BlkHelper {
    fn spawn(file: File, waker: Arc<Waker>) -> std::io::Result<Self> {
        let (tx, job_rx) = mpsc::channel::<BlkJob>();
        let (done_tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("disk-blkioctl".into())
            .spawn(move || {
                for job in job_rx {
                    let res = if job.discard {
                        sys::blk_discard(file.as_fd(), job.offset, job.len)
                    } else {
                        sys::blk_zeroout(file.as_fd(), job.offset, job.len)
                    };
                    if done_tx.send((job.slot, res.map_err(|e| e as i32))).is_err() {
                        return;
                    }
                    waker.wake();
                }
            })?;
        Ok(Self { tx, rx, thread })
    }
}

/// Where answers go: a callback on the ring thread, or a list the thread
/// that drives the ring inline collects.
pub(crate) trait Sink {
    fn complete(&mut self, token: u64, res: IoResult);
}

/// Calls `F` for each answer; a panic in it is logged, not spread.
pub(crate) struct Callback<F>(pub(crate) F);

impl<F: Fn(u64, IoResult)> Sink for Callback<F> {
    fn complete(&mut self, token: u64, res: IoResult) {
        let cb = &self.0;
        if std::panic::catch_unwind(AssertUnwindSafe(|| cb(token, res))).is_err() {
            tracing::error!(token, "the disk completion callback panicked");
        }
    }
}

impl Sink for Vec<(u64, IoResult)> {
    fn complete(&mut self, token: u64, res: IoResult) {
        self.push((token, res));
    }
}

pub(crate) struct Engine<F> {
    pub(crate) cfg: Config,
    /// `None` once closed.
    ring: Option<Ring>,
    rx: Receiver<Msg>,
    waker: Arc<Waker>,
    in_flight: Arc<AtomicUsize>,
    blk: Option<BlkHelper>,
    pub(crate) sink: F,
    /// Accepted, not yet started (over the queue depth).
    pending: VecDeque<(u64, DiskOp)>,
    /// Started: in the kernel or on the helper thread.
    ops: Slab<Op>,
    zeroes: Option<Bytes>,
    shutting_down: bool,
    disconnected: bool,
    acks: Vec<SyncSender<()>>,
    completions: Vec<Completion>,
    warned_no_discard: bool,
    /// A zero-copy read fell back to a copy: said once.
    warned_zc_fallback: bool,
}

impl<F: Sink> Engine<F> {
    pub(crate) fn new(
        cfg: Config,
        ring: Ring,
        rx: Receiver<Msg>,
        waker: Arc<Waker>,
        in_flight: Arc<AtomicUsize>,
        blk_file: Option<File>,
        sink: F,
    ) -> std::io::Result<Self> {
        let blk = match blk_file {
            Some(file) => Some(BlkHelper::spawn(file, Arc::clone(&waker))?),
            None => None,
        };
        Ok(Self {
            cfg,
            ring: Some(ring),
            rx,
            waker,
            in_flight,
            blk,
            sink,
            pending: VecDeque::new(),
            ops: Slab::new(),
            zeroes: None,
            shutting_down: false,
            disconnected: false,
            acks: Vec::new(),
            completions: Vec::new(),
            warned_no_discard: false,
            warned_zc_fallback: false,
        })
    }

    pub(crate) fn run(mut self) {
        loop {
            // Clear before draining: a message sent after this point makes
            // its sender write the eventfd, which ends the next wait.
            self.waker.pending.store(false, Ordering::SeqCst);
            if !self.turn(None) {
                break;
            }
        }
        self.close();
        if self.disconnected {
            return;
        }
        // Shut down but handles remain: answer whatever still comes.
        while let Ok(msg) = self.rx.recv() {
            match msg {
                Msg::Op { token, .. } => self.complete(token, Err(libc::ESHUTDOWN)),
                Msg::Shutdown(ack) => {
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
            }
        }
    }

    /// One turn of the loop: take new ops, start what fits, submit and wait
    /// for a completion, a wake-up or `timeout` (`None`: no limit), then
    /// answer what completed. False once shut down and drained.
    pub(crate) fn turn(&mut self, timeout: Option<Duration>) -> bool {
        self.drain_inbox();
        self.start_pending();
        if self.shutting_down && self.pending.is_empty() && self.ops.is_empty() {
            return false;
        }
        let Some(ring) = self.ring.as_mut() else {
            return false;
        };
        if let Err(e) = ring.wait(timeout) {
            tracing::error!(error = %e, "io_uring_enter failed");
        }
        ring.reap(&mut self.completions);
        let mut completions = std::mem::take(&mut self.completions);
        for c in completions.drain(..) {
            self.on_cqe(c);
        }
        self.completions = completions;
        true
    }

    /// Starts what fits of the queued ops and hands their SQEs to the
    /// kernel now, without waiting.
    pub(crate) fn submit_now(&mut self) {
        self.start_pending();
        if let Some(ring) = self.ring.as_mut() {
            if let Err(e) = ring.submit() {
                tracing::error!(error = %e, "io_uring_enter failed");
            }
        }
    }

    /// See [`Ring::push_poll`]; EBADF once the ring is closed.
    pub(crate) fn push_poll(
        &mut self,
        fd: std::os::fd::RawFd,
        events: u32,
        key: u64,
    ) -> std::io::Result<()> {
        match self.ring.as_mut() {
            Some(ring) => ring.push_poll(fd, events, key),
            None => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// See [`Ring::push_recv`]; EBADF once the ring is closed.
    pub(crate) fn push_recv(
        &mut self,
        fd: std::os::fd::RawFd,
        buf: AlignedBuf,
        pos: usize,
        len: usize,
        key: u64,
    ) -> std::io::Result<()> {
        match self.ring.as_mut() {
            Some(ring) => ring.push_recv(fd, buf, pos, len, key),
            None => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// See [`Ring::take_polls`].
    pub(crate) fn take_polls(&mut self, out: &mut Vec<super::SocketEvent>) {
        if let Some(ring) = self.ring.as_mut() {
            ring.take_polls(out);
        }
    }

    /// Queues an op from the thread that drives the ring inline.
    pub(crate) fn push(&mut self, token: u64, op: DiskOp) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.shutting_down {
            self.complete(token, Err(libc::ESHUTDOWN));
        } else {
            self.pending.push_back((token, op));
        }
    }

    /// Stops taking ops; the next turns finish those in flight.
    pub(crate) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Everything answered: close the ring (its drop waits for the wake
    /// read) and the backing store, stop the helper, ack shutdowns.
    pub(crate) fn close(&mut self) {
        if let Some(ring) = self.ring.take() {
            debug_assert_eq!(ring.file_ops_outstanding(), 0);
            drop(ring);
        }
        if let Some(blk) = self.blk.take() {
            drop(blk.tx);
            if blk.thread.join().is_err() {
                tracing::error!("the block-device helper thread panicked");
            }
        }
        for ack in self.acks.drain(..) {
            let _ = ack.send(());
        }
    }

    fn drain_inbox(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Op { token, op }) => {
                    if self.shutting_down {
                        self.complete(token, Err(libc::ESHUTDOWN));
                    } else {
                        self.pending.push_back((token, op));
                    }
                }
                Ok(Msg::Shutdown(ack)) => {
                    self.shutting_down = true;
                    self.acks.extend(ack);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.shutting_down = true;
                    self.disconnected = true;
                    break;
                }
            }
        }
        let done: Vec<_> = match &self.blk {
            Some(blk) => blk.rx.try_iter().collect(),
            None => Vec::new(),
        };
        for (slot, res) in done {
            self.on_blk_done(slot, res);
        }
    }

    fn start_pending(&mut self) {
        while self.ops.len() < self.cfg.queue_depth {
            let Some((token, op)) = self.pending.pop_front() else {
                break;
            };
            if let Err(errno) = self.start(token, op) {
                self.complete(token, Err(errno));
            }
        }
    }

    /// Offset and length aligned, `[offset, offset + len)` inside the data
    /// area.
    fn check_range(&self, offset: u64, len: u64) -> Result<(), i32> {
        let align = u64::from(self.cfg.align);
        let end = offset.checked_add(len).ok_or(libc::EINVAL)?;
        if offset % align != 0 || len % align != 0 || end > self.cfg.data_bytes {
            return Err(libc::EINVAL);
        }
        Ok(())
    }

    /// Starts `op`, or returns the errno to answer it with right away.
    fn start(&mut self, token: u64, op: DiskOp) -> Result<(), i32> {
        let prepared = match op {
            DiskOp::Read { offset, len } => self.read_op(offset, len)?,
            DiskOp::ReadInto { offset, len, dst } => {
                return self.start_read_into(token, offset, len, dst);
            }
            DiskOp::Write { offset, data, fua } => self.write_op(offset, data, fua)?,
            DiskOp::Flush => Prepared::Issue(State::Flush, IoBuf::None),
            DiskOp::Trim { offset, len } => self.zero_op(offset, len, true)?,
            DiskOp::WriteZeroes { offset, len } => self.zero_op(offset, len, false)?,
        };
        match prepared {
            Prepared::Done(res) => self.complete(token, res),
            Prepared::Issue(state, buf) => {
                let slot = self.ops.insert(Op {
                    token,
                    retries: 0,
                    state,
                    zc: None,
                });
                self.issue(slot, buf);
            }
        }
        Ok(())
    }

    fn read_op(&mut self, offset: u64, len: u32) -> Result<Prepared, i32> {
        self.check_range(offset, u64::from(len))?;
        if len > MAX_IO_BYTES {
            return Err(libc::EINVAL);
        }
        if len == 0 {
            return Ok(Prepared::Done(Ok(Some(Bytes::new()))));
        }
        let len = len as usize;
        // Every byte is read into, or zeroed at end of file.
        let buf = AlignedBuf::for_overwrite(len).map_err(|_| libc::EINVAL)?;
        let state = State::Read {
            offset,
            len,
            done: 0,
        };
        Ok(Prepared::Issue(state, IoBuf::Aligned(buf)))
    }

    fn write_op(&mut self, offset: u64, data: Bytes, fua: bool) -> Result<Prepared, i32> {
        self.check_range(offset, data.len() as u64)?;
        if data.len() > MAX_IO_BYTES as usize {
            return Err(libc::EINVAL);
        }
        if data.is_empty() {
            return Ok(Prepared::Done(Ok(None)));
        }
        let len = data.len();
        // O_DIRECT needs an aligned buffer; buffered I/O does not.
        let buf = if self.cfg.direct && !is_aligned(&data) {
            IoBuf::Aligned(AlignedBuf::copy_from(&data).map_err(|_| libc::EINVAL)?)
        } else {
            IoBuf::Shared(data)
        };
        let state = State::Write {
            offset,
            len,
            done: 0,
            fua,
        };
        Ok(Prepared::Issue(state, buf))
    }

    /// A trim (`discard`) or write-zeroes: ioctls on the helper thread for
    /// a block device, `fallocate` for a file.
    fn zero_op(&mut self, offset: u64, len: u64, discard: bool) -> Result<Prepared, i32> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Prepared::Done(Ok(None)));
        }
        let state = match self.cfg.kind {
            BackingKind::BlockDevice => State::Blk {
                offset,
                len,
                discard,
            },
            BackingKind::RegularFile => State::Fallocate {
                offset,
                len,
                mode: if discard { PUNCH_HOLE } else { ZERO_RANGE },
            },
        };
        Ok(Prepared::Issue(state, IoBuf::None))
    }

    fn zeroes(&mut self) -> Result<Bytes, i32> {
        if let Some(z) = &self.zeroes {
            return Ok(z.clone());
        }
        let z = AlignedBuf::zeroed(ZERO_CHUNK)
            .map_err(|_| libc::ENOMEM)?
            .into_bytes();
        self.zeroes = Some(z.clone());
        Ok(z)
    }

    /// Puts the next SQE (or helper job) of the op in `slot` in flight;
    /// `buf` is its buffer for reads and writes.
    fn issue(&mut self, slot: usize, buf: IoBuf) {
        let chunk = self.cfg.max_chunk;
        let Some(state) = self.ops.get_mut(slot).map(|op| op.state) else {
            return;
        };
        let sqe = match state {
            State::ReadInto { offset, len, done } => {
                return self.issue_read_into(slot, offset, (len - done).min(chunk), done);
            }
            State::Read { offset, len, done } => {
                let IoBuf::Aligned(buf) = buf else {
                    return self.finish(slot, Err(libc::EIO));
                };
                Sqe::Read {
                    buf,
                    pos: done,
                    len: (len - done).min(chunk),
                    offset: offset + done as u64,
                }
            }
            State::Write {
                offset,
                len,
                done,
                fua,
            } => Sqe::Write {
                buf,
                pos: done,
                len: (len - done).min(chunk),
                offset: offset + done as u64,
                dsync: fua,
            },
            State::Flush => Sqe::Fsync { datasync: true },
            State::Fallocate { offset, len, mode } => Sqe::Fallocate { offset, len, mode },
            State::ZeroFill { offset, len, done } => match self.zeroes() {
                Ok(zeroes) => Sqe::Write {
                    buf: IoBuf::Shared(zeroes),
                    pos: 0,
                    len: usize::try_from(len - done)
                        .unwrap_or(usize::MAX)
                        .min(ZERO_CHUNK)
                        .min(chunk),
                    offset: offset + done,
                    dsync: false,
                },
                Err(errno) => return self.finish(slot, Err(errno)),
            },
            State::Blk {
                offset,
                len,
                discard,
            } => {
                let job = BlkJob {
                    slot,
                    discard,
                    offset,
                    len,
                };
                return self.send_to_blk_thread(job);
            }
        };
        let pushed = match self.ring.as_mut() {
            Some(ring) => ring.push(slot as u64, sqe),
            None => Err(libc::EIO),
        };
        if let Err(errno) = pushed {
            self.finish(slot, Err(errno));
        }
    }

    /// Hands a discard or zero-out of a block device to the helper
    /// thread (the ioctls block); EIO without it.
    fn send_to_blk_thread(&mut self, job: BlkJob) {
        let slot = job.slot;
        let sent = self
            .blk
            .as_ref()
            .is_some_and(|blk| blk.tx.send(job).is_ok());
        if !sent {
            self.finish(slot, Err(libc::EIO));
        }
    }

    fn on_cqe(&mut self, c: Completion) {
        let Ok(slot) = usize::try_from(c.tag) else {
            return;
        };
        let Some(op) = self.ops.get_mut(slot) else {
            tracing::error!(tag = c.tag, "completion for an op not in flight");
            return;
        };
        match op.state {
            State::Read { .. } => self.on_read(slot, c),
            State::ReadInto { .. } => self.on_read_into(slot, c),
            State::Write { .. } => self.on_write(slot, c),
            State::ZeroFill { .. } => self.on_zero_fill(slot, c),
            State::Flush => match c.res {
                r if r >= 0 => self.finish(slot, Ok(None)),
                r if r == -libc::EINTR || r == -libc::EAGAIN => {
                    self.retry(slot, r.saturating_neg(), IoBuf::None)
                }
                r => self.finish(slot, Err(r.saturating_neg())),
            },
            State::Fallocate { .. } => self.on_fallocate(slot, c.res),
            State::Blk { .. } => {
                tracing::error!(slot, "io_uring completion for a helper-thread op");
            }
        }
    }

    /// A read (or the rest of one) ended.
    fn on_read(&mut self, slot: usize, c: Completion) {
        let is_file = self.cfg.kind == BackingKind::RegularFile;
        let Some(Op {
            retries,
            state: State::Read { len, done, .. },
            ..
        }) = self.ops.get_mut(slot)
        else {
            return;
        };
        match step(*len, *done, c.res) {
            Step::Done => self.finish_read(slot, c.buf, None),
            Step::More(now) => {
                *done = now;
                *retries = 0;
                self.issue(slot, c.buf);
            }
            // End of file inside the data area. A regular file may be
            // sparse or shorter than the data area: what was never
            // written reads as zeroes. A block device ending early means
            // it shrank under us: that is an I/O error.
            Step::Eof if is_file => {
                let from = *done;
                self.finish_read(slot, c.buf, Some(from));
            }
            Step::Eof => self.finish(slot, Err(libc::EIO)),
            Step::Retry(errno) => self.retry(slot, errno, c.buf),
            Step::Fail(errno) => self.finish(slot, Err(errno)),
        }
    }

    /// Completes a read with its buffer, zeroed from `zero_from` on.
    fn finish_read(&mut self, slot: usize, buf: IoBuf, zero_from: Option<usize>) {
        match buf {
            IoBuf::Aligned(mut buf) => {
                if let Some(rest) = zero_from.and_then(|from| buf.as_mut_slice().get_mut(from..)) {
                    rest.fill(0);
                }
                self.finish(slot, Ok(Some(buf.into_bytes())));
            }
            _ => self.finish(slot, Err(libc::EIO)),
        }
    }

    /// A write (or the rest of one) ended.
    fn on_write(&mut self, slot: usize, c: Completion) {
        let Some(Op {
            retries,
            state: State::Write { len, done, .. },
            ..
        }) = self.ops.get_mut(slot)
        else {
            return;
        };
        match step(*len, *done, c.res) {
            Step::Done => self.finish(slot, Ok(None)),
            Step::More(now) => {
                *done = now;
                *retries = 0;
                self.issue(slot, c.buf);
            }
            // A write that makes no progress: retry a few times.
            Step::Eof => self.retry(slot, libc::EIO, c.buf),
            Step::Retry(errno) => self.retry(slot, errno, c.buf),
            Step::Fail(errno) => self.finish(slot, Err(errno)),
        }
    }

    /// A chunk of zeroes (a trim or write-zeroes the disk cannot do
    /// itself) was written.
    fn on_zero_fill(&mut self, slot: usize, c: Completion) {
        let max_chunk = self.cfg.max_chunk;
        let Some(Op {
            retries,
            state: State::ZeroFill { len, done, .. },
            ..
        }) = self.ops.get_mut(slot)
        else {
            return;
        };
        let chunk_len = match &c.buf {
            IoBuf::Shared(_) => usize::try_from(*len - *done)
                .unwrap_or(usize::MAX)
                .min(ZERO_CHUNK)
                .min(max_chunk),
            _ => 0,
        };
        match step(chunk_len, 0, c.res) {
            Step::Done | Step::More(_) => {
                *done += c.res as u64;
                *retries = 0;
                if *done >= *len {
                    self.finish(slot, Ok(None));
                } else {
                    self.issue(slot, IoBuf::None);
                }
            }
            Step::Eof => self.retry(slot, libc::EIO, IoBuf::None),
            Step::Retry(errno) => self.retry(slot, errno, IoBuf::None),
            Step::Fail(errno) => self.finish(slot, Err(errno)),
        }
    }

    /// A trim or write-zeroes by `fallocate` ended: when the filesystem
    /// cannot punch holes, zero the range, which keeps "reads give zeroes"
    /// (and the replicas identical); when it cannot zero ranges either,
    /// write the zeroes.
    fn on_fallocate(&mut self, slot: usize, res: i32) {
        let Some(op) = self.ops.get_mut(slot) else {
            return;
        };
        let State::Fallocate { offset, len, mode } = &mut op.state else {
            return;
        };
        match res {
            r if r >= 0 => self.finish(slot, Ok(None)),
            r if r == -libc::EINTR || r == -libc::EAGAIN => {
                self.retry(slot, r.saturating_neg(), IoBuf::None)
            }
            r if r == -libc::EOPNOTSUPP && *mode == PUNCH_HOLE => {
                *mode = ZERO_RANGE;
                self.issue(slot, IoBuf::None);
            }
            r if r == -libc::EOPNOTSUPP && *mode == ZERO_RANGE => {
                op.state = State::ZeroFill {
                    offset: *offset,
                    len: *len,
                    done: 0,
                };
                self.issue(slot, IoBuf::None);
            }
            r => self.finish(slot, Err(r.saturating_neg())),
        }
    }

    fn on_blk_done(&mut self, slot: usize, res: Result<(), i32>) {
        let Some(op) = self.ops.get_mut(slot) else {
            tracing::error!(slot, "helper completion for an op not in flight");
            return;
        };
        let State::Blk {
            offset,
            len,
            discard,
        } = op.state
        else {
            tracing::error!(slot, "helper completion for a ring op");
            return;
        };
        match res {
            Ok(()) => self.finish(slot, Ok(None)),
            // Discard is advisory: a device without it simply keeps the data.
            Err(libc::EOPNOTSUPP) if discard => {
                if !self.warned_no_discard {
                    self.warned_no_discard = true;
                    tracing::warn!(
                        "the backing device does not support discard; trims are ignored"
                    );
                }
                self.finish(slot, Ok(None));
            }
            Err(libc::EOPNOTSUPP | libc::ENOTTY) if !discard => {
                op.state = State::ZeroFill {
                    offset,
                    len,
                    done: 0,
                };
                self.issue(slot, IoBuf::None);
            }
            Err(errno) => self.finish(slot, Err(errno)),
        }
    }

    fn retry(&mut self, slot: usize, errno: i32, buf: IoBuf) {
        let Some(op) = self.ops.get_mut(slot) else {
            return;
        };
        op.retries += 1;
        if op.retries > MAX_RETRIES {
            self.finish(slot, Err(errno));
        } else {
            self.issue(slot, buf);
        }
    }

    /// Starts a zero-copy read (see `crate::zerocopy`); one too large to
    /// land is an ordinary read.
    fn start_read_into(
        &mut self,
        token: u64,
        offset: u64,
        len: u32,
        dst: crate::zerocopy::ZcDest,
    ) -> Result<(), i32> {
        if len as usize > crate::zerocopy::MAX_LANDED_BYTES || len == 0 {
            return self.start(token, DiskOp::Read { offset, len });
        }
        self.check_range(offset, u64::from(len))?;
        let slot = self.ops.insert(Op {
            token,
            retries: 0,
            state: State::ReadInto {
                offset,
                len: len as usize,
                done: 0,
            },
            zc: Some(dst),
        });
        self.issue(slot, IoBuf::None);
        Ok(())
    }

    /// Puts `len` bytes of the zero-copy read in `slot` in flight, from
    /// byte `done` of the request on; without a free buffer index it
    /// becomes an ordinary read.
    fn issue_read_into(&mut self, slot: usize, offset: u64, len: usize, done: usize) {
        let Some(dst) = self.ops.get_mut(slot).and_then(|op| op.zc.clone()) else {
            return self.finish(slot, Err(libc::EIO));
        };
        let Some(ring) = self.ring.as_mut() else {
            return self.finish(slot, Err(libc::EIO));
        };
        let Some(index) = ring.zc_index() else {
            return self.read_by_copy(slot);
        };
        let pushed = ring.push_read_into(
            slot as u64,
            dst.raw_fd(),
            dst.io_cmd(index),
            index,
            done,
            len,
            offset + done as u64,
        );
        if pushed.is_err() {
            ring.zc_unused(index);
            self.read_by_copy(slot);
        }
    }

    /// A zero-copy read (or the rest of one) ended.
    fn on_read_into(&mut self, slot: usize, c: Completion) {
        let Some(Op {
            retries,
            state: State::ReadInto { len, done, .. },
            ..
        }) = self.ops.get_mut(slot)
        else {
            return;
        };
        match step(*len, *done, c.res) {
            Step::Done => {
                let marker = crate::zerocopy::landed(*len);
                self.finish(slot, marker.map(Some).ok_or(libc::EIO));
            }
            Step::More(now) => {
                *done = now;
                *retries = 0;
                self.issue(slot, IoBuf::None);
            }
            Step::Retry(errno) => self.retry(slot, errno, IoBuf::None),
            // The end of a sparse file (zeroes to fill in), a registration
            // the kernel refused (ECANCELED), pages O_DIRECT cannot use
            // (EINVAL), or a real I/O error: read it again the ordinary
            // way, which zero-fills, or fails again and reports it.
            Step::Eof | Step::Fail(_) => {
                if !std::mem::replace(&mut self.warned_zc_fallback, true) {
                    tracing::warn!(
                        res = c.res,
                        "a zero-copy read fell back to a copy (said once; ECANCELED: the kernel \
                         refused to register the request's pages)"
                    );
                }
                self.read_by_copy(slot);
            }
        }
    }

    /// Turns the zero-copy read in `slot` into an ordinary read of the
    /// whole range (answered with the data, which the frontend copies).
    fn read_by_copy(&mut self, slot: usize) {
        let Some(op) = self.ops.get_mut(slot) else {
            return;
        };
        let State::ReadInto { offset, len, .. } = op.state else {
            return self.finish(slot, Err(libc::EIO));
        };
        op.state = State::Read {
            offset,
            len,
            done: 0,
        };
        op.zc = None;
        op.retries = 0;
        match AlignedBuf::for_overwrite(len) {
            Ok(buf) => self.issue(slot, IoBuf::Aligned(buf)),
            Err(_) => self.finish(slot, Err(libc::ENOMEM)),
        }
    }

    fn finish(&mut self, slot: usize, res: IoResult) {
        if let Some(op) = self.ops.remove(slot) {
            self.complete(op.token, res);
        }
    }

    fn complete(&mut self, token: u64, res: IoResult) {
        // Not in flight any more once answered: whoever sees the answer
        // sees the counter without it.
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.sink.complete(token, res);
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;

    #[test]
    fn full_transfer_is_done() {
        assert_eq!(step(4096, 0, 4096), Step::Done);
        assert_eq!(step(8192, 4096, 4096), Step::Done);
    }

    #[test]
    fn short_transfer_asks_for_the_remainder() {
        assert_eq!(step(8192, 0, 512), Step::More(512));
        assert_eq!(step(8192, 512, 4096), Step::More(4608));
        // A sequence of short results accumulates to exactly the total.
        let mut done = 0;
        let mut steps = 0;
        for res in [512, 1024, 3584, 3072] {
            steps += 1;
            match step(8192, done, res) {
                Step::More(now) => done = now,
                Step::Done => {
                    done = 8192;
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((done, steps), (8192, 4));
    }

    #[test]
    fn zero_is_eof_and_errors_are_classified() {
        assert_eq!(step(4096, 0, 0), Step::Eof);
        assert_eq!(step(4096, 512, 0), Step::Eof);
        assert_eq!(step(4096, 0, -libc::EINTR), Step::Retry(libc::EINTR));
        assert_eq!(step(4096, 0, -libc::EAGAIN), Step::Retry(libc::EAGAIN));
        assert_eq!(step(4096, 0, -libc::EIO), Step::Fail(libc::EIO));
        assert_eq!(step(4096, 0, -libc::ENOSPC), Step::Fail(libc::ENOSPC));
    }

    #[test]
    fn overlong_result_is_an_error() {
        assert_eq!(step(4096, 0, 8192), Step::Fail(libc::EIO));
        assert_eq!(step(4096, 4000, 512), Step::Fail(libc::EIO));
    }
}
