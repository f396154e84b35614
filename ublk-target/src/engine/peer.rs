//! The peer connection: one TCP stream at a time, a reader and a writer
//! thread per stream.
//!
//! Both nodes listen on their address; only the node whose name sorts first
//! dials, so two simultaneous connections never race (DRBD keeps two sockets
//! and resolves the race; one dialer is simpler and loses nothing for two
//! nodes). The state machine authenticates whatever connects.

use std::collections::VecDeque;
use std::io::{BufReader, IoSlice, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use nix::errno::Errno;
use nix::sys::socket::{sendmsg, MsgFlags};
use replication_proto::wire::codec::{
    decode_frame, encode_vectored, peek_frame, DecodeError, HEADER_LEN,
};
use replication_proto::wire::Message;

use super::{Input, InputTx, StartError};
use crate::config::Node;
use crate::disk::aligned::SECTOR;
use crate::disk::AlignedBuf;

/// Address alignment O_DIRECT wants for write data.
const ALIGN: usize = 4096;

struct Conn {
    id: u64,
    /// Frames the engine could not write without blocking, in order.
    writer: Sender<VecDeque<Bytes>>,
    /// Batches handed to the writer thread and not yet fully written. Only
    /// the engine adds to it, so when it reads 0 nothing is queued ahead
    /// and a direct write keeps the frames in order.
    handed: Arc<AtomicUsize>,
    stream: TcpStream,
}

pub(crate) struct Transport {
    tx: InputTx,
    want: Arc<AtomicBool>,
    has_conn: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    current: Option<Conn>,
    next_id: u64,
    listen: SocketAddr,
    /// Frames queued by `send` since the last `flush`: headers and bulk
    /// data as separate pieces, so the data is never copied in user space.
    out: VecDeque<Bytes>,
    head: BytesMut,
}

impl Transport {
    pub(crate) fn start(me: &Node, peer: &Node, tx: InputTx) -> Result<Self, StartError> {
        let listener = TcpListener::bind(me.address).map_err(|source| StartError::Listen {
            addr: me.address,
            source,
        })?;
        let want = Arc::new(AtomicBool::new(false));
        let has_conn = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let dialer = me.name < peer.name;
        let span = tracing::Span::current();
        {
            let (tx, stop, span) = (tx.clone(), stop.clone(), span.clone());
            std::thread::Builder::new()
                .name("repd-listen".into())
                .spawn(move || {
                    let _g = span.enter();
                    for s in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match s {
                            Ok(stream) => {
                                if dialer {
                                    // The peer dials us only with a config that
                                    // disagrees about the names; refuse.
                                    tracing::warn!(from = ?stream.peer_addr().ok(), "inbound connection refused: this node dials its peer");
                                    continue;
                                }
                                let _ = tx.send(Input::PeerStream { stream, outbound: false });
                            }
                            Err(e) => {
                                tracing::warn!("accept failed: {e}");
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                })
                .map_err(StartError::Thread)?;
        }
        if dialer {
            let (tx, stop, want, has_conn) =
                (tx.clone(), stop.clone(), want.clone(), has_conn.clone());
            let addr = peer.address;
            std::thread::Builder::new()
                .name("repd-dial".into())
                .spawn(move || {
                    let _g = span.enter();
                    let mut logged = false;
                    while !stop.load(Ordering::Relaxed) {
                        if want.load(Ordering::Relaxed) && !has_conn.load(Ordering::Relaxed) {
                            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                                Ok(stream) => {
                                    has_conn.store(true, Ordering::Relaxed);
                                    logged = false;
                                    let _ = tx.send(Input::PeerStream { stream, outbound: true });
                                }
                                Err(e) => {
                                    if !logged {
                                        tracing::info!(%addr, "peer not reachable yet: {e}; retrying");
                                        logged = true;
                                    }
                                }
                            }
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
                .map_err(StartError::Thread)?;
        }
        Ok(Self {
            tx,
            want,
            has_conn,
            stop,
            current: None,
            next_id: 1,
            listen: me.address,
            out: VecDeque::new(),
            head: BytesMut::with_capacity(64 * 1024),
        })
    }

    pub(crate) fn set_wanted(&mut self, w: bool) {
        self.want.store(w, Ordering::Relaxed);
    }

    pub(crate) fn is_current(&self, id: u64) -> bool {
        self.current.as_ref().is_some_and(|c| c.id == id)
    }

    /// A stream arrived (dialed or accepted). Returns true when it is now the
    /// connection.
    pub(crate) fn adopt(&mut self, stream: TcpStream, outbound: bool) -> bool {
        if !self.want.load(Ordering::Relaxed) || self.current.is_some() {
            let _ = stream.shutdown(Shutdown::Both);
            if outbound {
                self.has_conn
                    .store(self.current.is_some(), Ordering::Relaxed);
            }
            return false;
        }
        let id = self.next_id;
        self.next_id += 1;
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let span = tracing::info_span!("peer", conn = id, %peer);
        tracing::info!(parent: &span, outbound, "connection established");
        let _ = stream.set_nodelay(true);
        let (Ok(rd), Ok(wr)) = (stream.try_clone(), stream.try_clone()) else {
            return false;
        };
        let (wtx, wrx) = mpsc::channel::<VecDeque<Bytes>>();
        let handed = Arc::new(AtomicUsize::new(0));
        let whanded = Arc::clone(&handed);
        let tx = self.tx.clone();
        let rspan = span.clone();
        let spawned_r = std::thread::Builder::new()
            .name("repd-peer-rx".into())
            .spawn(move || {
                let _g = rspan.enter();
                let why = read_loop(rd, id, &tx);
                let _ = tx.send(Input::PeerDown { conn: id, why });
            });
        let tx = self.tx.clone();
        let spawned_w = std::thread::Builder::new()
            .name("repd-peer-tx".into())
            .spawn(move || {
                let _g = span.enter();
                if let Err(e) = write_loop(&wr, &wrx, &whanded) {
                    let _ = tx.send(Input::PeerDown {
                        conn: id,
                        why: format!("send failed: {e}"),
                    });
                }
            });
        if spawned_r.is_err() || spawned_w.is_err() {
            let _ = stream.shutdown(Shutdown::Both);
            return false;
        }
        self.has_conn.store(true, Ordering::Relaxed);
        self.out.clear();
        self.current = Some(Conn {
            id,
            writer: wtx,
            handed,
            stream,
        });
        true
    }

    /// Queues `m`; it goes out with the next [`Transport::flush`].
    pub(crate) fn send(&mut self, m: Message) {
        if self.current.is_none() {
            return;
        }
        match encode_vectored(&m, &mut self.head) {
            Ok(bulk) => {
                self.out.push_back(self.head.split().freeze());
                if !bulk.is_empty() {
                    self.out.push_back(bulk);
                }
            }
            // Only a bug builds such a message; the peer would refuse it.
            Err(e) => tracing::error!("cannot encode {m:?}: {e}"),
        }
    }

    /// Sends what [`Transport::send`] queued: written right here, without
    /// blocking, when the socket takes it and nothing is queued ahead (one
    /// `sendmsg` for a whole batch of frames, no thread hand-off);
    /// otherwise handed to the writer thread, which blocks for it.
    pub(crate) fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let Some(c) = &self.current else {
            self.out.clear();
            return;
        };
        if c.handed.load(Ordering::Acquire) == 0 {
            // An error other than a full socket is left to the writer,
            // which reports it.
            if write_segments(&c.stream, &mut self.out, false).is_ok() && self.out.is_empty() {
                return;
            }
        }
        c.handed.fetch_add(1, Ordering::AcqRel);
        let _ = c.writer.send(std::mem::take(&mut self.out));
    }

    /// Drop the current connection (the writer sends what it has queued first
    /// only if it gets to it before the shutdown; the state machine never
    /// relies on frames sent right before a close).
    pub(crate) fn close(&mut self) {
        self.flush();
        if let Some(c) = self.current.take() {
            // Let the writer flush its queue (a Disconnect with its reason),
            // then shut the socket.
            drop(c.writer);
            let stream = c.stream;
            let _ = std::thread::Builder::new()
                .name("repd-peer-close".into())
                .spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    let _ = stream.shutdown(Shutdown::Both);
                });
        }
        self.has_conn.store(false, Ordering::Relaxed);
    }

    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the listener so it sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.listen, Duration::from_millis(100));
    }
}

fn read_loop(rd: TcpStream, id: u64, tx: &InputTx) -> String {
    // Small frames come out of this buffer; large payloads bypass it.
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    loop {
        let msg = match read_frame(&mut rd) {
            Ok(m) => m,
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return "peer closed the connection".into()
            }
            Err(ReadError::Io(e)) => return format!("receive failed: {e}"),
            Err(ReadError::Frame(e)) => {
                tracing::warn!("malformed frame from the peer: {e}; dropping the connection");
                return format!("malformed frame from the peer: {e}");
            }
        };
        if tx.send(Input::PeerFrame { conn: id, msg }).is_err() {
            return "engine stopped".into();
        }
    }
}

enum ReadError {
    Io(std::io::Error),
    Frame(DecodeError),
}

/// Payloads at least this large are received into an aligned buffer.
const ALIGN_PAYLOAD_MIN: usize = 4096;

/// Reads one frame. The data of a replicated write lands at a 4096-aligned
/// address in a pooled buffer, so the local disk writes it with O_DIRECT
/// as it is: no copy between the socket and the disk, and no fresh
/// allocation (with its page faults) per write.
fn read_frame(rd: &mut impl Read) -> Result<Message, ReadError> {
    let mut head = [0u8; HEADER_LEN];
    rd.read_exact(&mut head).map_err(ReadError::Io)?;
    let peek = match peek_frame(&head) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(ReadError::Frame(DecodeError::FrameLength {
                have: head.len(),
                announced: HEADER_LEN,
            }))
        }
        Err(e) => return Err(ReadError::Frame(e)),
    };
    let total = peek.total;
    let frame = match peek.bulk_at {
        Some(at) if total - at >= ALIGN_PAYLOAD_MIN => {
            let pad = (ALIGN - at % ALIGN) % ALIGN;
            let len = (pad + total).div_ceil(SECTOR) * SECTOR;
            let mut buf = AlignedBuf::for_overwrite(len)
                .map_err(|e| ReadError::Io(std::io::Error::other(e)))?;
            let frame = buf
                .as_mut_slice()
                .get_mut(pad..pad + total)
                .ok_or_else(|| ReadError::Io(std::io::Error::other("frame buffer too short")))?;
            let (h, rest) = frame.split_at_mut(HEADER_LEN);
            h.copy_from_slice(&head);
            rd.read_exact(rest).map_err(ReadError::Io)?;
            buf.into_bytes().slice(pad..pad + total)
        }
        _ => {
            let mut v = vec![0u8; total];
            let (h, rest) = v.split_at_mut(HEADER_LEN);
            h.copy_from_slice(&head);
            rd.read_exact(rest).map_err(ReadError::Io)?;
            Bytes::from(v)
        }
    };
    decode_frame(frame).map_err(ReadError::Frame)
}

fn write_loop(
    wr: &TcpStream,
    rx: &mpsc::Receiver<VecDeque<Bytes>>,
    handed: &AtomicUsize,
) -> std::io::Result<()> {
    while let Ok(mut segs) = rx.recv() {
        write_segments(wr, &mut segs, true)?;
        handed.fetch_sub(1, Ordering::AcqRel);
    }
    Ok(())
}

/// Most pieces given to one `sendmsg`.
const MAX_IOV: usize = 64;

/// Writes `segs` from the front, removing what was written. Without
/// `block`, stops (Ok) when the socket buffer is full.
fn write_segments(
    stream: &TcpStream,
    segs: &mut VecDeque<Bytes>,
    block: bool,
) -> std::io::Result<()> {
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if !block {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    while !segs.is_empty() {
        let iov: Vec<IoSlice<'_>> = segs.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
        let n = match sendmsg::<()>(stream.as_raw_fd(), &iov, &[], flags, None) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) if !block => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let Some(front) = segs.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                segs.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}
