//! The peer connection: one data stream at a time (plus its ping
//! connection, [`super::ping_conn`]), read and written by the engine
//! thread itself.
//!
//! Both nodes listen on their address; only the node whose name sorts first
//! dials the data connection, so two simultaneous connections never race
//! (DRBD resolves the race; one dialer is simpler and loses nothing for
//! two nodes); the other node dials the ping connection back. The state
//! machine authenticates whatever connects.
//!
//! Receiving: the engine sleeps in `io_uring_enter` on its disk ring, so a
//! one-shot POLLIN poll on that ring wakes it when the peer sends, and it
//! then reads with non-blocking `recv`s into a [`Framer`]. Before, a reader
//! thread blocked on the socket and passed each frame over a channel and an
//! eventfd: a thread hop and a scheduler wake-up on each node for every
//! replicated write (the Data frame on the secondary, the WriteAck on the
//! primary), which dominated the CPU profile. A poll rather than a `Recv`
//! SQE per frame: one `recv` into the staging buffer takes a whole batch
//! of small frames (the acks of a queue depth of writes), and the poll
//! lends no memory to the kernel. Only the rest of a large frame that has
//! not arrived yet is received by a `Recv` SQE with MSG_WAITALL straight
//! into the frame's pooled aligned buffer: the kernel collects its
//! segments without waking the engine for each of them.
//!
//! Sending: the turn's frames go out in one non-blocking `sendmsg`; what
//! the socket does not take waits, in order, for a POLLOUT poll on the same
//! ring, so no writer thread is needed either.
//!
//! Liveness: Ping and PingAck travel on a second connection of their own
//! once both sides have authenticated it (see [`super::ping_conn`]), so
//! they never wait behind bulk data in a socket buffer.
//!
//! Back-pressure: the engine reads only when it gets to it, at most
//! [`RX_BYTES_PER_TURN`] per turn, and not at all while its disk has a
//! backlog (see `Runner`); what it does not read stays in the kernel's
//! socket buffer and TCP slows the peer down.
//!
//! TLS (`[net] tls = "on"`): each stream is secured before the engine
//! sees it (`secure`, [`crate::tls::link`]); the engine then reads and
//! writes its end of a relay exactly as it does a TCP socket.
//!
//! Here: the transport (sending, receiving, listening and dialing);
//! `framer`: cutting the byte stream into frames ([`Framer`]); `error`:
//! why the connection failed ([`PeerError`]); `tests`: the framer against
//! a real socket.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{sendmsg, MsgFlags};
use replication_proto::wire::codec::encode_vectored;
use replication_proto::wire::Message;

mod error;
mod framer;
mod secure;

pub(crate) use error::PeerError;
use framer::Framer;

use super::ping_conn::{self, Names, PingFrame, PingLink};
use super::{Input, InputTx, StartError};
use crate::config::Node;
use crate::disk::{InlineDisk, SocketEvent};
use crate::tls::link::LinkTls;
use replication_proto::machine::Session;
use replication_proto::wire::features;

/// Bytes received from the socket per engine turn at most, and frames
/// handed to the state machine: beyond that the turn ends (the disk and the
/// frontends get their turn) and the next one goes on reading.
const RX_BYTES_PER_TURN: usize = 4 << 20;
const RX_FRAMES_PER_TURN: usize = 256;
/// How long a closed connection may still take to send what was queued
/// (a Disconnect with its reason) before it is shut down.
const CLOSE_GRACE: Duration = Duration::from_millis(50);
/// How long the dialer waits after a refused TLS handshake.
const TLS_RETRY: Duration = Duration::from_secs(1);

/// Low bit of a poll key: the direction; the bits above: the connection id.
const KEY_RX: u64 = 0;
const KEY_TX: u64 = 1;

struct Conn {
    id: u64,
    stream: TcpStream,
    rx: Framer,
    /// A POLLIN poll for this connection is armed on the ring.
    rx_armed: bool,
    /// A POLLOUT poll is armed: bytes are waiting in `out`.
    tx_armed: bool,
    /// The last receive stopped at its budget with data maybe left: go on
    /// next turn without waiting for a poll.
    rx_more: bool,
    /// A ring receive failed: why, for the next [`Transport::receive`].
    rx_failed: Option<PeerError>,
}

/// What a poll that fired means now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// The current connection may have data (or an error, or EOF).
    Readable,
    /// The current connection's socket may take more bytes.
    Writable,
    /// The ping connection may be read or written.
    Ping,
    /// For a connection that is gone.
    Stale,
}

/// What one [`Transport::receive`] call gives.
#[derive(Debug)]
pub(crate) enum Received {
    Frame(Message),
    /// Nothing more this turn.
    Idle,
    /// The connection failed (EOF, error, malformed frame): why.
    Down(PeerError),
}

impl Conn {
    /// Arms a POLLIN poll for this connection on the engine's ring.
    fn arm_rx(&mut self, disk: &mut InlineDisk) -> std::io::Result<()> {
        disk.poll(&self.stream, libc::POLLIN, self.id << 1 | KEY_RX)?;
        self.rx_armed = true;
        Ok(())
    }

    /// Arms a POLLOUT poll: bytes wait to be sent on this connection.
    fn arm_tx(&mut self, disk: &mut InlineDisk) -> std::io::Result<()> {
        disk.poll(&self.stream, libc::POLLOUT, self.id << 1 | KEY_TX)?;
        self.tx_armed = true;
        Ok(())
    }
}

/// Limits of one turn's receiving; see [`RX_BYTES_PER_TURN`].
#[derive(Debug)]
pub(crate) struct RxBudget {
    bytes: usize,
    frames: usize,
    /// A `recv` got less than it asked for: the socket was empty then, so
    /// asking again would only give EAGAIN; the re-armed poll tells when
    /// more comes.
    drained: bool,
}

impl RxBudget {
    pub(crate) fn per_turn() -> Self {
        Self {
            bytes: RX_BYTES_PER_TURN,
            frames: RX_FRAMES_PER_TURN,
            drained: false,
        }
    }

    fn exhausted(&self) -> bool {
        self.bytes == 0 || self.frames == 0
    }
}

pub(crate) struct Transport {
    want: Arc<AtomicBool>,
    has_conn: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    current: Option<Conn>,
    next_id: u64,
    listen: SocketAddr,
    /// Messages queued by `send` since the last `flush`, encoded there: the
    /// payload CRC is a pass over the data, which the engine lets overlap
    /// the turn's local writes (see [`Transport::bulk_queued`]).
    msgs: Vec<Message>,
    bulk_queued: usize,
    /// Encoded frames the socket has not taken yet, in order: headers and
    /// bulk data as separate pieces, so the data is never copied in user
    /// space.
    out: VecDeque<Bytes>,
    head: BytesMut,
    /// The ping connection, once one was dialed or accepted for the
    /// current connection: its socket and its state.
    ping: Option<(Conn, PingLink)>,
    /// This node dials the ping connection (it accepts the data one).
    ping_dialer: bool,
    /// The data connection a ping dial was started for.
    ping_dialed_for: Option<u64>,
    peer_addr: SocketAddr,
    /// The current connection's authenticated handshake, as the state
    /// machine last reported it.
    session: Option<Session>,
    names: Names,
    /// The TLS settings with `[net] tls = "on"`.
    tls: Option<Arc<LinkTls>>,
    /// The ping connection's TLS exporter value: its MACs are keyed with
    /// the secret bound to it.
    ping_binding: Option<[u8; 32]>,
    tx: InputTx,
    span: tracing::Span,
}

impl Transport {
    pub(crate) fn start(
        me: &Node,
        peer: &Node,
        secret: &[u8],
        tls: Option<Arc<LinkTls>>,
        tx: InputTx,
    ) -> Result<Self, StartError> {
        let listener = TcpListener::bind(me.address).map_err(|source| StartError::Listen {
            addr: me.address,
            source,
        })?;
        let want = Arc::new(AtomicBool::new(false));
        let has_conn = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let dialer = me.name < peer.name;
        let span = tracing::Span::current();
        spawn_listener(
            listener,
            dialer,
            tls.clone(),
            tx.clone(),
            stop.clone(),
            span.clone(),
        )?;
        if dialer {
            let flags = DialFlags {
                stop: stop.clone(),
                want: want.clone(),
                has_conn: has_conn.clone(),
            };
            spawn_dialer(peer.address, flags, tls.clone(), tx.clone(), span.clone())?;
        }
        Ok(Self {
            want,
            has_conn,
            stop,
            current: None,
            next_id: 1,
            listen: me.address,
            msgs: Vec::new(),
            bulk_queued: 0,
            out: VecDeque::new(),
            head: BytesMut::with_capacity(64 * 1024),
            ping: None,
            ping_dialer: !dialer,
            ping_dialed_for: None,
            peer_addr: peer.address,
            session: None,
            names: Names {
                secret: secret.to_vec(),
                me: me.name.clone(),
                peer: peer.name.clone(),
            },
            tls,
            ping_binding: None,
            tx,
            span,
        })
    }

    pub(crate) fn set_wanted(&mut self, w: bool) {
        self.want.store(w, Ordering::Relaxed);
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
        tracing::info!(conn = id, %peer, outbound, "connection established");
        let _ = stream.set_nodelay(true);
        self.has_conn.store(true, Ordering::Relaxed);
        self.msgs.clear();
        self.bulk_queued = 0;
        self.out.clear();
        self.current = Some(Conn {
            id,
            stream,
            rx: Framer::new(),
            rx_armed: false,
            tx_armed: false,
            rx_more: false,
            rx_failed: None,
        });
        true
    }

    /// Queues `m`; it goes out with the next [`Transport::flush`].
    pub(crate) fn send(&mut self, m: Message) {
        if self.current.is_none() {
            return;
        }
        if let Some((_, link)) = self.ping.as_mut().filter(|(_, l)| l.is_up()) {
            if ping_conn::rides_ping_conn(&m) {
                if let Err(e) = link.queue(&m) {
                    // Only a bug builds such a message.
                    tracing::error!("{e}");
                }
                return;
            }
        }
        if let Message::Data { data, .. } | Message::ResyncData { data, .. } = &m {
            self.bulk_queued += data.len();
        }
        self.msgs.push(m);
    }

    /// Bytes of write data in the messages queued since the last flush:
    /// the size of the checksum and copy work [`Transport::flush`] has.
    pub(crate) fn bulk_queued(&self) -> usize {
        self.bulk_queued
    }

    /// Encodes what [`Transport::send`] queued and writes as much as the
    /// socket takes without blocking (one `sendmsg` for a whole batch of
    /// frames). The rest waits for [`Transport::arm`]'s POLLOUT poll.
    /// An error means the connection failed: the caller takes it down.
    pub(crate) fn flush(&mut self) -> Result<(), PeerError> {
        self.flush_ping();
        self.encode_queued();
        let Some(c) = &self.current else {
            self.out.clear();
            return Ok(());
        };
        // While a POLLOUT poll is armed the socket was full a moment ago:
        // the poll says when trying again is worth a syscall.
        if self.out.is_empty() || c.tx_armed {
            return Ok(());
        }
        write_segments(&c.stream, &mut self.out, false).map_err(PeerError::Send)
    }

    fn encode_queued(&mut self) {
        self.bulk_queued = 0;
        for m in self.msgs.drain(..) {
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
    }

    /// Arms the polls the connection needs on the engine's ring: POLLIN
    /// unless `receive` is false (the engine is behind) or the receiving
    /// goes on anyway next turn, POLLOUT while bytes wait to be sent.
    pub(crate) fn arm(&mut self, disk: &mut InlineDisk, receive: bool) -> Result<(), PeerError> {
        let watch = PeerError::Watch;
        if let Some((p, link)) = &mut self.ping {
            // Read even while the engine reads nothing on the data
            // connection (its disk is behind): a ping is answered anyway.
            if !p.rx_armed {
                p.arm_rx(disk).map_err(watch)?;
            }
            if !link.out.is_empty() && !p.tx_armed {
                p.arm_tx(disk).map_err(watch)?;
            }
        }
        let Some(c) = &mut self.current else {
            return Ok(());
        };
        if receive && !c.rx_armed && !c.rx_more && !c.rx.lent() {
            c.arm_rx(disk).map_err(watch)?;
        }
        if !self.out.is_empty() && !c.tx_armed {
            c.arm_tx(disk).map_err(watch)?;
        }
        Ok(())
    }

    /// A poll armed by [`Transport::arm`] fired (`res`: mask or -errno;
    /// whatever it says, the next `recv` or `sendmsg` finds out what really
    /// happened), or a ring receive ended (with its buffer).
    pub(crate) fn on_poll(&mut self, ev: SocketEvent) -> Ready {
        let SocketEvent { key, res, buf } = ev;
        if let Some((p, _)) = self.ping.as_mut().filter(|(p, _)| p.id == key >> 1) {
            if key & 1 == KEY_TX {
                p.tx_armed = false;
            } else {
                p.rx_armed = false;
            }
            return Ready::Ping;
        }
        let Some(c) = &mut self.current else {
            return Ready::Stale;
        };
        if key >> 1 != c.id {
            return Ready::Stale;
        }
        if let Some(buf) = buf {
            if let Err(why) = c.rx.give_back(buf, res) {
                c.rx_failed = Some(why);
            }
            return Ready::Readable;
        }
        if res < 0 {
            tracing::debug!(errno = -res, "peer socket poll failed");
        }
        if key & 1 == KEY_TX {
            c.tx_armed = false;
            Ready::Writable
        } else {
            c.rx_armed = false;
            Ready::Readable
        }
    }

    /// The last receive stopped at its budget: call
    /// [`Transport::receive`] again this turn, without waiting.
    pub(crate) fn rx_pending(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.rx_more)
    }

    /// The next frame from the peer, if one can be had this turn without
    /// blocking and within `budget`. The rest of a large frame that is not
    /// there yet is left to a ring receive on `disk`.
    pub(crate) fn receive(&mut self, budget: &mut RxBudget, disk: &mut InlineDisk) -> Received {
        let Some(c) = &mut self.current else {
            return Received::Idle;
        };
        if let Some(why) = c.rx_failed.take() {
            return Received::Down(why);
        }
        c.rx_more = false;
        match c.rx.pull(&c.stream, budget, disk, c.id << 1 | KEY_RX) {
            Ok(Some(msg)) => Received::Frame(msg),
            Ok(None) => {
                // Stopped by the budget, not by an empty socket (or with
                // whole frames still staged, which no poll would report).
                // Not while a ring receive is out: its completion says
                // when to go on, and asking before would only spin.
                c.rx_more = !c.rx.lent() && (!budget.drained || budget.frames == 0);
                Received::Idle
            }
            Err(why) => Received::Down(why),
        }
    }

    /// Drop the current connection. What is queued is sent first if the
    /// socket takes it within [`CLOSE_GRACE`]; the state machine never
    /// relies on frames sent right before a close.
    pub(crate) fn close(&mut self) {
        // The ping connection closes after the data connection's last
        // frames (a Disconnect with its reason) had their chance: the peer
        // reads those before it sees this one end.
        let ping = self.ping.take().map(|(p, _)| p.stream);
        self.session = None;
        self.encode_queued();
        let out = std::mem::take(&mut self.out);
        if let Some(c) = self.current.take() {
            let stream = c.stream;
            let _ = std::thread::Builder::new()
                .name("repd-peer-close".into())
                .spawn(move || {
                    linger_then_shut(&stream, out);
                    if let Some(p) = ping {
                        let _ = p.shutdown(Shutdown::Both);
                    }
                });
        } else if let Some(p) = ping {
            let _ = p.shutdown(Shutdown::Both);
        }
        self.has_conn.store(false, Ordering::Relaxed);
    }

    /// A ping connection was accepted (`for_conn` None) or dialed for the
    /// data connection `for_conn`.
    pub(crate) fn adopt_ping(
        &mut self,
        stream: TcpStream,
        for_conn: Option<u64>,
        binding: Option<[u8; 32]>,
    ) {
        let current = self.current.as_ref().map(|c| c.id);
        let stale = current.is_none() || for_conn.is_some_and(|id| Some(id) != current);
        // One that is up stays; one not yet authenticated gives way (it may
        // be a leftover, or not the peer's at all).
        if current.is_none() {
            // The peer dials this node only for a ping connection (this
            // node dials the data connection), so a stream without a data
            // connection is a leftover or a peer whose resource file
            // disagrees about the node names.
            tracing::info!(from = ?stream.peer_addr().ok(), "inbound connection closed: no data connection to pair it with as a ping connection (this node dials its peer)");
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        if stale || self.ping.as_ref().is_some_and(|(_, l)| l.is_up()) {
            tracing::debug!(from = ?stream.peer_addr().ok(), "ping connection not needed; closed");
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        let Some(data_conn) = current else { return };
        self.drop_ping();
        self.ping_binding = binding;
        let id = self.next_id;
        self.next_id += 1;
        let _ = stream.set_nodelay(true);
        tracing::debug!(conn = id, data_conn, "ping connection opened");
        self.ping = Some((
            Conn {
                id,
                stream,
                rx: Framer::new(),
                rx_armed: false,
                tx_armed: false,
                rx_more: false,
                rx_failed: None,
            },
            PingLink::new(),
        ));
        if let Some(s) = self.session {
            self.on_session(Some(s));
        }
    }

    /// The secret ping connections are authenticated with: the state
    /// machine's, which `repctl adjust` changes at the next connection.
    pub(crate) fn follow_secret(&mut self, secret: &[u8]) {
        if self.names.secret != secret {
            secret.clone_into(&mut self.names.secret);
        }
    }

    /// What the state machine says about the current connection's
    /// handshake, each turn: once it is authenticated (and both sides
    /// offer the feature) the ping connection is dialed, or its MACs sent
    /// and checked.
    pub(crate) fn on_session(&mut self, s: Option<Session>) {
        self.session = s.filter(|s| s.features & features::PING_CONN != 0);
        let (Some(s), Some(c)) = (self.session, &self.current) else {
            return;
        };
        if self.ping_dialer && self.ping_dialed_for != Some(c.id) {
            self.ping_dialed_for = Some(c.id);
            let (tx, id, tls) = (self.tx.clone(), c.id, self.tls.clone());
            ping_conn::dial(self.peer_addr, self.span.clone(), move |stream| {
                if let Some((stream, binding)) = secure::connect(tls.as_deref(), stream, &tx) {
                    let _ = tx.send(Input::PingStream {
                        stream,
                        for_conn: Some(id),
                        binding,
                    });
                }
            });
        }
        let names = self.ping_names();
        if let Some((_, link)) = &mut self.ping {
            let was_up = link.is_up();
            match link.on_session(&s, &names) {
                Ok(()) if !was_up && link.is_up() => {
                    tracing::info!("ping connection up: pings no longer wait behind data");
                }
                Ok(()) => {}
                Err(why) => {
                    tracing::warn!("{why}; closing it (pings share the data connection)");
                    self.drop_ping();
                }
            }
        }
    }

    /// Frames from the ping connection, for the state machine.
    pub(crate) fn receive_ping(&mut self) -> Vec<Message> {
        let mut got = Vec::new();
        let mut budget = RxBudget::per_turn();
        let names = self.ping_names();
        loop {
            let Some((p, link)) = &mut self.ping else {
                return got;
            };
            let r = match p.rx.next(&p.stream, &mut budget) {
                Ok(Some(m)) => link
                    .on_frame(m, self.session.as_ref(), &names)
                    .map_err(PeerError::from),
                Ok(None) => return got,
                Err(e) => Err(e),
            };
            match r {
                Ok(PingFrame::Deliver(m)) => got.push(m),
                Ok(PingFrame::Handled) => {
                    if link.is_up() {
                        tracing::info!("ping connection up: pings no longer wait behind data");
                    }
                }
                Err(why) => {
                    self.ping_failed(&why);
                    return got;
                }
            }
        }
    }

    /// The names and key of the ping connection's MACs: on TLS, the
    /// secret bound to the ping connection's own session.
    fn ping_names(&self) -> Names {
        let mut n = self.names.clone();
        if let Some(b) = &self.ping_binding {
            n.secret = replication_proto::wire::auth::bind_secret(&n.secret, b);
        }
        n
    }

    /// Writes what waits for the ping connection.
    fn flush_ping(&mut self) {
        let Some((p, link)) = &mut self.ping else {
            return;
        };
        if link.out.is_empty() || p.tx_armed {
            return;
        }
        if let Err(e) = write_segments(&p.stream, &mut link.out, false) {
            self.ping_failed(&PeerError::Send(e));
        }
    }

    /// The ping connection failed: pings go back to the data connection.
    /// The data connection is not taken down for it: when the peer closes
    /// both, the data connection's last frames (a Disconnect with its
    /// reason) may still be unread, and a peer that is really gone stops
    /// answering pings there too, which drops it within `timeout-ms`.
    fn ping_failed(&mut self, why: &PeerError) {
        if self.ping.as_ref().is_some_and(|(_, l)| l.is_up()) {
            tracing::info!("ping connection ended: {why}; pings share the data connection");
        } else {
            tracing::warn!("ping connection refused: {why}; pings share the data connection");
        }
        self.drop_ping();
    }

    fn drop_ping(&mut self) {
        if let Some((p, _)) = self.ping.take() {
            // Also fires the polls still armed on it.
            let _ = p.stream.shutdown(Shutdown::Both);
        }
    }

    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the listener so it sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.listen, Duration::from_millis(100));
    }
}

/// The listener thread: every inbound stream goes to the engine, as the
/// data connection, or (on the node that dials the data connection) as a
/// ping connection, whose MAC tells whether it belongs to the session.
fn spawn_listener(
    listener: TcpListener,
    dialer: bool,
    tls: Option<Arc<LinkTls>>,
    tx: InputTx,
    stop: Arc<AtomicBool>,
    span: tracing::Span,
) -> Result<(), StartError> {
    std::thread::Builder::new()
        .name("repd-listen".into())
        .spawn(move || {
            let _g = span.enter();
            let make: secure::MakeInput = if dialer {
                |stream, binding| Input::PingStream {
                    stream,
                    for_conn: None,
                    binding,
                }
            } else {
                |stream, binding| Input::PeerStream {
                    stream,
                    outbound: false,
                    binding,
                }
            };
            let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for s in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match (s, &tls) {
                    (Ok(stream), None) => {
                        let _ = tx.send(make(stream, None));
                    }
                    (Ok(stream), Some(tls)) => secure::accept(tls, &busy, stream, &tx, make, &span),
                    (Err(e), _) => {
                        tracing::warn!("accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map_err(StartError::Thread)?;
    Ok(())
}

/// What the dialer thread shares with the transport.
struct DialFlags {
    stop: Arc<AtomicBool>,
    /// The state machine wants a connection.
    want: Arc<AtomicBool>,
    /// There is one (dialed and not yet closed).
    has_conn: Arc<AtomicBool>,
}

/// The dialer thread (on the node whose name sorts first): dials the data
/// connection whenever one is wanted and there is none.
fn spawn_dialer(
    addr: SocketAddr,
    f: DialFlags,
    tls: Option<Arc<LinkTls>>,
    tx: InputTx,
    span: tracing::Span,
) -> Result<(), StartError> {
    std::thread::Builder::new()
        .name("repd-dial".into())
        .spawn(move || {
            let _g = span.enter();
            let mut logged = false;
            while !f.stop.load(Ordering::Relaxed) {
                if f.want.load(Ordering::Relaxed) && !f.has_conn.load(Ordering::Relaxed) {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(stream) => {
                            logged = false;
                            let Some((stream, binding)) =
                                secure::connect(tls.as_deref(), stream, &tx)
                            else {
                                // Refused: the reason is in status; try
                                // again, but not in a tight loop.
                                std::thread::sleep(TLS_RETRY);
                                continue;
                            };
                            f.has_conn.store(true, Ordering::Relaxed);
                            let _ = tx.send(Input::PeerStream {
                                stream,
                                outbound: true,
                                binding,
                            });
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
    Ok(())
}

/// Off the engine thread: sends `out` for at most [`CLOSE_GRACE`] (a
/// blocking write with a send timeout), then shuts the socket down, which
/// also fires any poll still armed on it.
fn linger_then_shut(stream: &TcpStream, mut out: VecDeque<Bytes>) {
    let t0 = Instant::now();
    if !out.is_empty() && stream.set_write_timeout(Some(CLOSE_GRACE)).is_ok() {
        let _ = write_segments(stream, &mut out, true);
    }
    std::thread::sleep(CLOSE_GRACE.saturating_sub(t0.elapsed()));
    let _ = stream.shutdown(Shutdown::Both);
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

#[cfg(test)]
mod tests;
