//! The transmission phase of one client: a reader that submits requests
//! to the backend and a writer that sends the replies in completion order,
//! with what is in flight bounded by a [`Limiter`].

use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, warn};

use super::negotiate::drain;
use super::{lock, Close, Shared, MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES, POLL};
use crate::disk::AlignedBuf;
use crate::frontend::{BlockBackend, IoRequest, IoResult, Reply};
use crate::nbd::proto::{self, *};
use crate::stages::{Kind, Stage, Stages};

/// Bounds what one connection has in flight: a request takes one slot and
/// its payload bytes, released when its reply has been written (or
/// dropped).
struct Limiter {
    state: Mutex<InFlight>,
    cv: Condvar,
}

/// What the [`Limiter`] counts, under its lock.
#[derive(Default)]
struct InFlight {
    requests: usize,
    bytes: usize,
    /// Readers blocked in `acquire`: a credit given back wakes one only
    /// when there is one (a futex wake per request otherwise, which the
    /// `nbd_requests` fuzz target's profile showed as its top cost).
    waiters: usize,
}

impl Limiter {
    fn new() -> Arc<Limiter> {
        Arc::new(Limiter {
            state: Mutex::new(InFlight::default()),
            cv: Condvar::new(),
        })
    }

    /// Block until the request fits; `None` if the server shuts down.
    /// A request always fits when nothing else is in flight.
    fn acquire(self: &Arc<Self>, bytes: usize, stop: &AtomicBool) -> Option<Credit> {
        let mut st = lock(&self.state);
        loop {
            if st.requests == 0
                || (st.requests < MAX_IN_FLIGHT
                    && st.bytes.saturating_add(bytes) <= MAX_IN_FLIGHT_BYTES)
            {
                st.requests += 1;
                st.bytes = st.bytes.saturating_add(bytes);
                return Some(Credit {
                    limiter: Arc::clone(self),
                    bytes,
                });
            }
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            st.waiters += 1;
            st = self
                .cv
                .wait_timeout(st, POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            st.waiters -= 1;
        }
    }
}

/// A slot in the [`Limiter`], given back on drop.
struct Credit {
    limiter: Arc<Limiter>,
    bytes: usize,
}

impl Drop for Credit {
    fn drop(&mut self) {
        let mut st = lock(&self.limiter.state);
        // Each credit was counted in by `acquire`: giving it back cannot
        // go below zero.
        debug_assert!(
            st.requests >= 1 && st.bytes >= self.bytes,
            "credit given back twice"
        );
        st.requests = st.requests.saturating_sub(1);
        st.bytes = st.bytes.saturating_sub(self.bytes);
        let wake = st.waiters > 0;
        drop(st);
        if wake {
            self.limiter.cv.notify_one();
        }
    }
}

/// Ends a connection both ways: the client socket (its `shutdown`), or in
/// the fuzz driver (`fuzzing::requests`) a stand-in that records it.
pub(super) trait HangUp: Send + Sync {
    fn hang_up(&self);
}

impl HangUp for TcpStream {
    fn hang_up(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

/// A reply for the writer thread.
struct ReplyMsg {
    handle: u64,
    /// NBD error value, 0 for success.
    error: u32,
    /// Read data (only with `error == 0`).
    data: Option<Bytes>,
    _credit: Credit,
    /// The request's kind and when the backend answered it: its
    /// `frontend_out` stage ends once the reply is on the socket.
    answered: Option<(Kind, Instant)>,
}

/// Serves one client after negotiation, until it disconnects or breaks
/// the protocol.
///
/// `reader` and `writer` carry the NBD stream (the socket itself, or the
/// two halves of its TLS session); `stream` ends the connection (the
/// socket's shutdown).
pub(super) fn transmission(
    shared: &Arc<Shared>,
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
    stream: Arc<dyn HangUp>,
    size: u64,
    span: &tracing::Span,
) -> Result<(), Close> {
    let (tx, rx) = mpsc::channel::<ReplyMsg>();
    let wstream = Arc::clone(&stream);
    let wshared = Arc::clone(shared);
    let wspan = span.clone();
    let stages = shared.export.backend.stages();
    let wstages = stages.clone();
    let writer = thread::Builder::new()
        .name("nbd-writer".into())
        .spawn(move || {
            let _e = wspan.enter();
            writer_loop(&wshared, &rx, writer, &*wstream, wstages.as_deref());
        })?;
    let mut conn = Conn {
        backend: Arc::clone(&shared.export.backend),
        shared: Arc::clone(shared),
        limiter: Limiter::new(),
        tx,
        size,
        reader,
        received: Instant::now(),
        stages,
    };
    let result = conn.reader_loop();
    if result.is_err() {
        // Do not wait for replies nobody will read.
        stream.hang_up();
    }
    // The writer ends once every reply sender (ours and the backend's
    // in-flight closures) is gone, i.e. after the last reply.
    drop(conn);
    let _ = writer.join();
    stream.hang_up();
    result
}

/// Replies written but not flushed whose `frontend_out` is counted at the
/// flush; past this many, a reply is counted when written (under a load
/// that never lets the queue run empty, where a flush is near anyway).
const MAX_UNFLUSHED_TIMED: usize = 1024;

fn writer_loop(
    shared: &Shared,
    rx: &mpsc::Receiver<ReplyMsg>,
    out: Box<dyn Write + Send>,
    stream: &dyn HangUp,
    stages: Option<&Stages>,
) {
    let mut w = BufWriter::with_capacity(256 << 10, out);
    let mut broken = false;
    let mut unflushed: Vec<(Kind, Instant)> = Vec::new();
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                // Nothing queued: push out what we have, then wait.
                if !broken && w.flush().is_err() {
                    broken = true;
                    stream.hang_up();
                }
                replies_out(stages, &mut unflushed);
                match rx.recv_timeout(POLL) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        if shared.stopping() {
                            // Replies still in the backend are dropped.
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        if broken {
            continue; // just release the credit
        }
        let res = w
            .write_all(&proto::encode_simple_reply(msg.error, msg.handle))
            .and_then(|()| match &msg.data {
                Some(d) => w.write_all(d),
                None => Ok(()),
            });
        if let Err(e) = res {
            debug!(error = %e, "writing reply failed");
            broken = true;
            stream.hang_up();
        }
        if let Some(a) = msg.answered {
            unflushed.push(a);
            if unflushed.len() >= MAX_UNFLUSHED_TIMED {
                replies_out(stages, &mut unflushed);
            }
        }
    }
    if !broken {
        let _ = w.flush();
    }
}

/// The replies in `unflushed` are on the socket: their `frontend_out`.
fn replies_out(stages: Option<&Stages>, unflushed: &mut Vec<(Kind, Instant)>) {
    let Some(stages) = stages else {
        unflushed.clear();
        return;
    };
    let now = Instant::now();
    for (kind, answered) in unflushed.drain(..) {
        let d = now.saturating_duration_since(answered);
        stages.observe(kind, Stage::FrontendOut, d);
    }
}

struct Conn {
    shared: Arc<Shared>,
    backend: Arc<dyn BlockBackend>,
    limiter: Arc<Limiter>,
    tx: mpsc::Sender<ReplyMsg>,
    size: u64,
    reader: Box<dyn Read + Send>,
    /// When the request being handled was received (its header read).
    received: Instant,
    /// Where replies are timed, when requests are timed.
    stages: Option<Arc<Stages>>,
}

impl Conn {
    fn credit(&self, bytes: usize) -> Result<Credit, Close> {
        self.limiter
            .acquire(bytes, &self.shared.stopping)
            .ok_or(Close::Normal("server shutting down"))
    }

    /// Queue a reply that needs no backend.
    fn reply_now(&self, handle: u64, error: u32) -> Result<(), Close> {
        let credit = self.credit(0)?;
        self.send(ReplyMsg {
            handle,
            error,
            data: None,
            _credit: credit,
            answered: None,
        })
    }

    fn send(&self, msg: ReplyMsg) -> Result<(), Close> {
        self.tx
            .send(msg)
            .map_err(|_| Close::Normal("reply writer stopped"))
    }

    /// Build the backend completion for request `handle`: it sends the
    /// reply to the writer. `read_len` is the data length a read must
    /// return.
    fn completion(&self, handle: u64, read_len: Option<u32>, credit: Credit, kind: Kind) -> Reply {
        let tx = self.tx.clone();
        let timed = self.stages.is_some();
        Box::new(move |res: IoResult| {
            let (error, data) = match (res, read_len) {
                (Ok(Some(d)), Some(len)) if d.len() as u64 == u64::from(len) => (0, Some(d)),
                (Ok(d), Some(len)) => {
                    warn!(
                        handle,
                        expected = len,
                        got = d.map(|d| d.len()),
                        "backend returned the wrong read length; replying EIO"
                    );
                    (NBD_EIO, None)
                }
                (Ok(_), None) => (0, None),
                (Err(errno), _) => (proto::nbd_error(errno), None),
            };
            // The connection may be gone; then the reply is dropped.
            let _ = tx.send(ReplyMsg {
                handle,
                error,
                data,
                _credit: credit,
                answered: timed.then(|| (kind, Instant::now())),
            });
        })
    }

    fn reader_loop(&mut self) -> Result<(), Close> {
        loop {
            let mut hdr = [0u8; REQUEST_HEADER_LEN];
            match self.reader.read_exact(&mut hdr) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(Close::Normal(
                        "client closed the connection without NBD_CMD_DISC",
                    ));
                }
                Err(e) => return Err(Close::Io(e)),
            }
            self.received = Instant::now();
            let req = Request::parse(&hdr)
                .map_err(|m| Close::Protocol(format!("bad request magic {m:#x}")))?;
            if req.cmd == CMD_DISC {
                debug!("client sent NBD_CMD_DISC");
                return Ok(());
            }
            self.handle_request(req)?;
        }
    }

    fn handle_request(&mut self, req: Request) -> Result<(), Close> {
        // FUA is valid on every command (the spec says so; it is a no-op
        // where nothing is written).
        let allowed = match req.cmd {
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            _ => CMD_FLAG_FUA,
        };
        let checked = Checked {
            fua: req.flags & CMD_FLAG_FUA != 0,
            bad_flags: req.flags & !allowed != 0,
            in_range: proto::range_ok(req.offset, req.len, self.size),
            aligned: req.offset % u64::from(MIN_BLOCK) == 0 && req.len % MIN_BLOCK == 0,
        };
        match req.cmd {
            CMD_WRITE => self.write(&req, &checked),
            CMD_READ => self.read(&req, &checked),
            CMD_FLUSH => self.flush(&req, &checked),
            CMD_TRIM | CMD_WRITE_ZEROES => self.trim_or_zeroes(&req, &checked),
            _ => {
                reject(&req, "unknown command");
                self.reply_now(req.handle, NBD_EINVAL)
            }
        }
    }

    /// NBD_CMD_WRITE: the payload is always read (the stream stays in
    /// sync), into an aligned buffer the backend writes as it is.
    fn write(&mut self, req: &Request, c: &Checked) -> Result<(), Close> {
        let (handle, len) = (req.handle, req.len);
        if len > MAX_PAYLOAD {
            if len > MAX_DRAINED_WRITE {
                return Err(Close::Protocol(format!(
                    "write of {len} bytes (limit {MAX_PAYLOAD}); too large to drain"
                )));
            }
            reject(req, "write longer than the maximum payload");
            drain(&mut self.reader, u64::from(len))?;
            return self.reply_now(handle, NBD_EINVAL);
        }
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        // Take the credit before allocating: memory stays bounded.
        let credit = self.credit(n)?;
        let data = self.read_payload(n)?;
        if c.bad_flags || !c.in_range {
            reject(
                req,
                if c.bad_flags {
                    "unknown flags"
                } else {
                    "bad range"
                },
            );
            return self.send(ReplyMsg {
                handle,
                error: c.error(true),
                data: None,
                _credit: credit,
                answered: None,
            });
        }
        if len == 0 {
            return self.send(ReplyMsg {
                handle,
                error: 0,
                data: None,
                _credit: credit,
                answered: None,
            });
        }
        let reply = self.completion(handle, None, credit, Kind::Write);
        let (offset, fua) = (req.offset, c.fua);
        let write = IoRequest::Write { offset, data, fua };
        self.backend.submit_received(write, reply, self.received);
        Ok(())
    }

    /// A write's `n` payload bytes, straight into an aligned (pooled)
    /// buffer: O_DIRECT then writes it without another copy.
    fn read_payload(&mut self, n: usize) -> Result<Bytes, Close> {
        Ok(match AlignedBuf::for_overwrite(n) {
            Ok(mut buf) => {
                self.reader.read_exact(buf.as_mut_slice())?;
                buf.into_bytes()
            }
            // Not a multiple of 512: refused by the caller, only read.
            Err(_) => {
                let mut buf = vec![0u8; n];
                self.reader.read_exact(&mut buf)?;
                Bytes::from(buf)
            }
        })
    }

    fn read(&mut self, req: &Request, c: &Checked) -> Result<(), Close> {
        let (handle, offset, len) = (req.handle, req.offset, req.len);
        if c.bad_flags || !c.in_range || len > MAX_PAYLOAD {
            reject(req, "bad flags, range or length");
            return self.reply_now(handle, NBD_EINVAL);
        }
        if len == 0 {
            return self.reply_now(handle, 0);
        }
        let credit = self.credit(usize::try_from(len).unwrap_or(usize::MAX))?;
        let reply = self.completion(handle, Some(len), credit, Kind::Read);
        let read = IoRequest::Read { offset, len };
        self.backend.submit_received(read, reply, self.received);
        Ok(())
    }

    fn flush(&mut self, req: &Request, c: &Checked) -> Result<(), Close> {
        if c.bad_flags || req.offset != 0 || req.len != 0 {
            reject(req, "flush with flags, offset or length");
            return self.reply_now(req.handle, NBD_EINVAL);
        }
        let credit = self.credit(0)?;
        let reply = self.completion(req.handle, None, credit, Kind::Flush);
        let flush = IoRequest::Flush;
        self.backend.submit_received(flush, reply, self.received);
        Ok(())
    }

    fn trim_or_zeroes(&mut self, req: &Request, c: &Checked) -> Result<(), Close> {
        let (cmd, handle, fua) = (req.cmd, req.handle, c.fua);
        if c.bad_flags || !c.in_range {
            reject(req, "bad flags or range");
            return self.reply_now(handle, c.error(cmd == CMD_WRITE_ZEROES));
        }
        if req.len == 0 {
            return self.reply_now(handle, 0);
        }
        // FUA on TRIM is ignored: a trim that is lost in a crash is
        // indistinguishable from one the device chose to ignore, which the
        // protocol allows (and the backend's Trim has no FUA).
        self.submit_split(handle, req.offset, req.len, |offset, len| {
            if cmd == CMD_TRIM {
                IoRequest::Trim { offset, len }
            } else {
                IoRequest::WriteZeroes { offset, len, fua }
            }
        })
    }

    /// Submit a payload-less request (TRIM, WRITE_ZEROES) as pieces of at
    /// most [`MAX_PAYLOAD`] bytes, the largest the backend takes, and reply
    /// once when all are done (with the first error, if any). The spec lets
    /// clients send these longer than the maximum payload (Linux sends
    /// whole-device discards), so refusing them would break mkfs/fstrim.
    /// Each piece takes its own in-flight slot, so a huge trim cannot queue
    /// unbounded work.
    fn submit_split(
        &self,
        handle: u64,
        offset: u64,
        len: u32,
        make: impl Fn(u64, u32) -> IoRequest,
    ) -> Result<(), Close> {
        let kind = make(offset, 0).kind();
        let pieces = len.div_ceil(MAX_PAYLOAD);
        let agg = Arc::new(Aggregate {
            remaining: AtomicUsize::new(usize::try_from(pieces).unwrap_or(usize::MAX)),
            error: AtomicI32::new(0),
            handle,
            tx: self.tx.clone(),
            timed: self.stages.as_ref().map(|_| kind),
        });
        let mut off = offset;
        let mut left = len;
        while left > 0 {
            let piece = left.min(MAX_PAYLOAD);
            let credit = self.credit(0)?;
            let agg = Arc::clone(&agg);
            let reply: Reply = Box::new(move |res: IoResult| agg.complete(res, credit));
            self.backend
                .submit_received(make(off, piece), reply, self.received);
            off += u64::from(piece);
            left -= piece;
        }
        Ok(())
    }
}

/// What [`Conn::handle_request`] found of a request's flags and range.
struct Checked {
    fua: bool,
    /// Flags this command does not take.
    bad_flags: bool,
    /// Aligned and inside the export.
    in_range: bool,
    /// Offset and length multiples of the minimum block size.
    aligned: bool,
}

impl Checked {
    /// The error for a request refused for its flags or range. The NBD
    /// spec: ENOSPC for a write (or write-zeroes) past the end of the
    /// export, EINVAL for anything else (unknown flags, misaligned, a read
    /// or trim past the end).
    fn error(&self, writes: bool) -> u32 {
        if writes && !self.bad_flags && self.aligned && !self.in_range {
            NBD_ENOSPC
        } else {
            NBD_EINVAL
        }
    }
}

/// Logs why a request is refused.
fn reject(req: &Request, why: &str) {
    debug!(
        cmd = proto::command_name(req.cmd),
        flags = req.flags,
        offset = req.offset,
        len = req.len,
        why,
        "rejecting request"
    );
}

/// Collects the completions of a split request.
struct Aggregate {
    remaining: AtomicUsize,
    /// First errno seen, 0 if none.
    error: AtomicI32,
    handle: u64,
    tx: mpsc::Sender<ReplyMsg>,
    /// The kind to time the reply under, when requests are timed.
    timed: Option<Kind>,
}

impl Aggregate {
    fn complete(&self, res: IoResult, credit: Credit) {
        if let Err(errno) = res {
            let errno = if errno == 0 { nix::libc::EIO } else { errno };
            let _ = self
                .error
                .compare_exchange(0, errno, Ordering::SeqCst, Ordering::SeqCst);
        }
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            let errno = self.error.load(Ordering::SeqCst);
            let error = if errno == 0 {
                0
            } else {
                proto::nbd_error(errno)
            };
            // The last piece's credit goes with the reply, so the queued
            // reply is still accounted for.
            let _ = self.tx.send(ReplyMsg {
                handle: self.handle,
                error,
                data: None,
                _credit: credit,
                answered: self.timed.map(|k| (k, Instant::now())),
            });
        }
    }
}
