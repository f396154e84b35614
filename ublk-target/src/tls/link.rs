//! The replication link over TLS: the handshake, bounded by the peer
//! timeout, and a relay thread per connection that carries the engine's
//! plain byte stream over the TLS session.
//!
//! Why a relay: the engine reads and writes its peer sockets with
//! non-blocking `recv`/`sendmsg` and io_uring receives straight into its
//! buffers (see `engine::peer`). Kernel TLS would keep that path, but the
//! kernels repd runs on do not all have the `tls` module; a relay gives
//! the engine one end of a socket pair that behaves like the TCP socket it
//! has now, and encrypts on the other end. The cost is one copy and a
//! thread hop each way, measured by nbd-bench (bench/RESULTS.md).
//!
//! Two backends behind [`Session`]: certificates (rustls) and a
//! pre-shared key (OpenSSL, `super::psk`: rustls has none).
//!
//! After the TLS handshake the server checks that the client's certificate
//! names the peer node (with a PSK its callback already checked the
//! identity) and answers with one line, `ok` or `refused: WHY`,
//! which the client waits for: in TLS 1.3 the client finishes its
//! handshake before the server has judged its certificate, and without
//! this line a refused client would only see the connection end. Then
//! both sides take the exporter value ([`EXPORTER_LABEL`]) that binds the
//! HMAC handshake to this session.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::psk::{PskTls, Versions};
use super::session::{exchange, HandshakeError, Session};
use super::{client_config, node_server_name, server_config, TlsError};
use crate::config::TlsFiles;

/// The label of the exporter value (RFC 8446 7.5) the HMAC handshake is
/// bound to.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-rep-replication-link-v1";
/// Longest verdict line the server sends after the handshake.
const VERDICT_MAX_BYTES: usize = 512;
/// Plaintext held for the engine at most before the relay stops reading
/// the TLS side (TCP then slows the peer down).
const RELAY_PENDING_MAX_BYTES: usize = 1 << 20;
/// Bytes read from either side per step.
const RELAY_CHUNK_BYTES: usize = 64 * 1024;
/// How long the relay may still take to send the last records (the
/// engine's Disconnect with its reason, close_notify) once a side closed.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// One node's TLS settings for its replication link.
#[derive(Debug)]
pub(crate) struct LinkTls {
    backend: Backend,
    /// The peer's node name: what its certificate must name.
    peer: String,
    /// The peer timeout (`[net] timeout-ms`): the longest a handshake may take.
    timeout: Duration,
}

/// How the two nodes authenticate each other.
#[derive(Debug)]
enum Backend {
    /// Certificates signed by `[net] tls-ca` (rustls).
    Certs {
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
    },
    /// `[net] tls-psk-file` (OpenSSL).
    Psk(PskTls),
}

/// A connection whose TLS handshake succeeded: the engine's end of the
/// relay, and the session's exporter value.
#[derive(Debug)]
pub(crate) struct Secured {
    pub stream: TcpStream,
    pub binding: [u8; 32],
}

impl LinkTls {
    /// The link's TLS settings from the resource file: `None` with
    /// `[net] tls = "off"`; the local node's files read and checked.
    pub(crate) fn from_config(
        cfg: &crate::config::Config,
        me: &crate::config::Node,
        peer: &crate::config::Node,
    ) -> Result<Option<Arc<Self>>, String> {
        if cfg.tls.mode == crate::config::TlsMode::Off {
            return Ok(None);
        }
        if let Some(file) = &cfg.tls.psk_file {
            let keys = cfg.load_psk(file).map_err(|e| e.to_string())?;
            let psk = PskTls::new(&keys, Versions::Tls13)?;
            tracing::info!(peer = %peer.name, identity = psk.identity(), "replication link over TLS (pre-shared key from {})", file.display());
            return Ok(Some(Arc::new(Self {
                backend: Backend::Psk(psk),
                peer: peer.name.clone(),
                timeout: cfg.net.timeout,
            })));
        }
        let files = cfg
            .load_tls(me, None)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "[net] tls = \"on\" but node \"{}\" has no tls-cert",
                    me.name
                )
            })?;
        let link = Self::new(&files, &peer.name, cfg.net.timeout).map_err(|e| e.to_string())?;
        tracing::info!(peer = %peer.name, "replication link over TLS (mutual, CA {})", cfg.tls.ca.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
        Ok(Some(Arc::new(link)))
    }

    pub(crate) fn new(files: &TlsFiles, peer: &str, timeout: Duration) -> Result<Self, TlsError> {
        node_server_name(peer)?;
        Ok(Self {
            backend: Backend::Certs {
                client: client_config(files)?,
                server: server_config(files, None)?,
            },
            peer: peer.to_owned(),
            timeout,
        })
    }

    /// TLS client on a dialed stream.
    pub(crate) fn connect(&self, tcp: TcpStream) -> Result<Secured, String> {
        let session: Box<dyn Session> = match &self.backend {
            Backend::Certs { client, .. } => {
                let name = node_server_name(&self.peer).map_err(|e| e.to_string())?;
                let conn = ClientConnection::new(client.clone(), name)
                    .map_err(|e| format!("TLS setup: {e}"))?;
                unlimited(Connection::Client(conn))
            }
            Backend::Psk(psk) => psk.client()?,
        };
        self.establish(session, tcp)
    }

    /// TLS server on an accepted stream.
    pub(crate) fn accept(&self, tcp: TcpStream) -> Result<Secured, String> {
        let session: Box<dyn Session> = match &self.backend {
            Backend::Certs { server, .. } => unlimited(Connection::Server(
                ServerConnection::new(server.clone()).map_err(|e| format!("TLS setup: {e}"))?,
            )),
            Backend::Psk(psk) => psk.server()?,
        };
        self.establish(session, tcp)
    }

    fn establish(&self, mut conn: Box<dyn Session>, mut tcp: TcpStream) -> Result<Secured, String> {
        let peer_addr = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let deadline = Instant::now() + self.timeout;
        let io = |e: std::io::Error| format!("{peer_addr}: {}", io_reason(&e, self.timeout));
        tcp.set_read_timeout(Some(self.timeout)).map_err(io)?;
        tcp.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let _ = tcp.set_nodelay(true);
        match conn.handshake(&mut tcp, deadline) {
            Ok(()) => {}
            Err(HandshakeError::Tls(why)) => return Err(format!("{peer_addr}: {why}")),
            Err(HandshakeError::Io(e))
                if e.kind() == ErrorKind::TimedOut && Instant::now() > deadline =>
            {
                return Err(format!(
                    "{peer_addr}: TLS handshake not done within {} ms (timeout-ms)",
                    self.timeout.as_millis()
                ))
            }
            Err(HandshakeError::Io(e)) => return Err(io(e)),
        }
        self.verdict(conn.as_mut(), &mut tcp, deadline)
            .map_err(|why| format!("{peer_addr}: {why}"))?;
        let mut binding = [0u8; 32];
        conn.export(&mut binding, EXPORTER_LABEL)?;
        let (engine, relay_end) = UnixStream::pair().map_err(io)?;
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("repd-tls-relay".into())
            .spawn(move || {
                let _g = span.enter();
                relay(conn, tcp, relay_end);
            })
            .map_err(|e| format!("cannot start the TLS relay: {e}"))?;
        Ok(Secured {
            // The engine only sends, receives, polls and shuts down: all
            // the same on a Unix socket.
            stream: TcpStream::from(OwnedFd::from(engine)),
            binding,
        })
    }

    /// The server's verdict on the client's certificate name, sent as a
    /// line; the client reads it.
    fn verdict(
        &self,
        conn: &mut dyn Session,
        tcp: &mut TcpStream,
        deadline: Instant,
    ) -> Result<(), String> {
        let io = |e: std::io::Error| io_reason(&e, self.timeout);
        if conn.is_server() {
            let judged = conn.judge_peer(&self.peer);
            let line = match &judged {
                Ok(()) => "ok\n".to_owned(),
                Err(why) => format!("refused: {why}\n"),
            };
            conn.write_plain(line.as_bytes()).map_err(io)?;
            while conn.wants_write() {
                conn.write_tls(tcp).map_err(io)?;
            }
            return judged;
        }
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            if line.len() > VERDICT_MAX_BYTES || Instant::now() > deadline {
                return Err("the peer sent no verdict on this node's certificate".into());
            }
            match conn.read_plain(&mut byte) {
                Ok(0) => return Err("the peer closed the TLS session".into()),
                Ok(_) => line.extend_from_slice(&byte),
                Err(e) if e.kind() == ErrorKind::WouldBlock => exchange(conn, tcp).map_err(io)?,
                Err(e) => return Err(io(e)),
            }
        }
        let text = String::from_utf8_lossy(&line);
        match text.trim_end() {
            "ok" => Ok(()),
            other => Err(format!("the peer {other}")),
        }
    }
}

/// A rustls session without its own cap on buffered plaintext: the
/// relay's back-pressure (it reads from the engine only once everything
/// was sent) bounds it.
fn unlimited(mut conn: Connection) -> Box<dyn Session> {
    conn.set_buffer_limit(None);
    Box::new(conn)
}

/// What an I/O error of a handshake means for the user.
fn io_reason(e: &std::io::Error, timeout: Duration) -> String {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return super::reason(tls);
    }
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
            "the peer stalled the TLS handshake for {} ms (timeout-ms)",
            timeout.as_millis()
        ),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => format!(
            "the peer closed the connection during the TLS handshake (does it run with [net] tls = \"on\"?) ({e})"
        ),
        _ => format!("TLS handshake failed: {e}"),
    }
}

/// Carries bytes between the engine's socket (`local`) and the TLS session
/// until either side ends, then closes both.
fn relay(mut conn: Box<dyn Session>, mut tcp: TcpStream, mut local: UnixStream) {
    let why = match (tcp.set_nonblocking(true), local.set_nonblocking(true)) {
        (Ok(()), Ok(())) => pump(conn.as_mut(), &mut tcp, &mut local),
        (Err(e), _) | (_, Err(e)) => format!("cannot make the sockets non-blocking: {e}"),
    };
    tracing::info!("TLS link ended: {why}");
    let _ = local.shutdown(std::net::Shutdown::Both);
    conn.send_close_notify();
    if tcp.set_nonblocking(false).is_ok() && tcp.set_write_timeout(Some(CLOSE_GRACE)).is_ok() {
        while conn.wants_write() {
            if conn.write_tls(&mut tcp).is_err() {
                break;
            }
        }
    }
    let _ = tcp.shutdown(std::net::Shutdown::Both);
}

/// The relay's loop; returns why it ended.
fn pump(conn: &mut dyn Session, tcp: &mut TcpStream, local: &mut UnixStream) -> String {
    let mut to_local: Vec<u8> = Vec::new();
    let mut sent = 0usize;
    let mut buf = vec![0u8; RELAY_CHUNK_BYTES];
    let mut peer_closed = false;
    // Plaintext that came with the verdict's records.
    if let Err(why) = drain_plain(conn, &mut to_local, &mut buf, &mut peer_closed) {
        return why;
    }
    loop {
        while conn.wants_write() {
            match conn.write_tls(tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return format!("sending to the peer failed: {e}"),
            }
        }
        while sent < to_local.len() {
            match local.write(to_local.get(sent..).unwrap_or_default()) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return "closed by this node".to_owned(),
            }
        }
        if sent == to_local.len() {
            to_local.clear();
            sent = 0;
            if peer_closed {
                return "the peer closed the TLS session".to_owned();
            }
        }
        let mut tcp_ev = PollFlags::empty();
        if to_local.len() < RELAY_PENDING_MAX_BYTES && !peer_closed {
            tcp_ev |= PollFlags::POLLIN;
        }
        if conn.wants_write() {
            tcp_ev |= PollFlags::POLLOUT;
        }
        // Always watch for the engine closing, even while the TLS side is
        // backed up: it then gets its last bytes sent and the link ends.
        let mut local_ev = rdhup();
        if !conn.wants_write() {
            local_ev |= PollFlags::POLLIN;
        }
        if !to_local.is_empty() {
            local_ev |= PollFlags::POLLOUT;
        }
        let (tcp_fd, local_fd) = (tcp.as_fd(), local.as_fd());
        let mut fds = vec![PollFd::new(local_fd, local_ev)];
        // Without interest in the TCP side leave it out: a hang-up there
        // would wake the poll over and over.
        if !tcp_ev.is_empty() {
            fds.push(PollFd::new(tcp_fd, tcp_ev));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return format!("poll failed: {e}"),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .unwrap_or(PollFlags::empty())
        };
        let (local_rev, tcp_rev) = (ready(0), ready(1));
        drop(fds);
        if !tcp_rev.is_empty() && tcp_ev.contains(PollFlags::POLLIN) {
            if let Err(why) = read_tls(conn, tcp, &mut to_local, &mut buf, &mut peer_closed) {
                return why;
            }
        }
        if local_rev.contains(rdhup()) {
            // The engine closed: pass on what it wrote before.
            let _ = local_to_tls(conn, local, &mut buf, usize::MAX);
            return "closed by this node".to_owned();
        }
        if local_rev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            if let Err(why) = local_to_tls(conn, local, &mut buf, RELAY_CHUNK_BYTES) {
                return why;
            }
        }
    }
}

/// POLLRDHUP (nix has no name for it): the other end shut down writing.
fn rdhup() -> PollFlags {
    PollFlags::from_bits_retain(nix::libc::POLLRDHUP)
}

/// Reads TLS records from the peer and decrypts them into `to_local`.
fn read_tls(
    conn: &mut dyn Session,
    tcp: &mut TcpStream,
    to_local: &mut Vec<u8>,
    buf: &mut [u8],
    peer_closed: &mut bool,
) -> Result<(), String> {
    while to_local.len() < RELAY_PENDING_MAX_BYTES && !*peer_closed {
        match conn.read_tls(tcp) {
            Ok(0) => *peer_closed = true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("receiving from the peer failed: {e}")),
        }
        conn.process_new_packets()?;
        drain_plain(conn, to_local, buf, peer_closed)?;
    }
    Ok(())
}

/// Moves the plaintext the session has decrypted into `to_local`.
fn drain_plain(
    conn: &mut dyn Session,
    to_local: &mut Vec<u8>,
    buf: &mut [u8],
    peer_closed: &mut bool,
) -> Result<(), String> {
    loop {
        match conn.read_plain(buf) {
            Ok(0) => {
                *peer_closed = true;
                return Ok(());
            }
            Ok(n) => to_local.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("TLS read failed: {e}")),
        }
    }
}

/// Reads up to `limit` bytes the engine wrote and hands them to the session.
fn local_to_tls(
    conn: &mut dyn Session,
    local: &mut UnixStream,
    buf: &mut [u8],
    limit: usize,
) -> Result<(), String> {
    let mut moved = 0usize;
    while moved < limit {
        match local.read(buf) {
            Ok(0) => return Err("closed by this node".to_owned()),
            Ok(n) => {
                conn.write_plain(buf.get(..n).unwrap_or_default())
                    .map_err(|e| format!("TLS write failed: {e}"))?;
                moved += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("reading from the engine failed: {e}")),
        }
    }
    Ok(())
}
