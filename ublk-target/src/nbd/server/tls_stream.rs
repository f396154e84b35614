//! One NBD client's TLS session (after NBD_OPT_STARTTLS), split into a
//! reading half and a writing half so the per-client reader and writer
//! threads can use it at the same time, as they use the plain socket.
//!
//! Why not `rustls::StreamOwned`: it needs `&mut` for both directions, so
//! the reader blocked in `read` would stop the writer. Here the session
//! (rustls with certificates, OpenSSL with a pre-shared key: see
//! `crate::tls::session`) sits behind a mutex that is never held across socket I/O:
//! the reader reads ciphertext from the socket unlocked and then feeds it
//! in; the writer encrypts under the lock into a buffer and sends that
//! unlocked. A second mutex (`send`) keeps TLS records on the wire in the
//! order they were made, whichever half made them.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::{Connection, ServerConnection};

use super::lock;
use crate::tls::session::{HandshakeError, Session};

/// Ciphertext read from the socket per `read` call.
const RAW_READ_BYTES: usize = 64 << 10;

struct Shared {
    conn: Mutex<Box<dyn Session>>,
    /// Held while records are taken out of `conn` and written, so they
    /// reach the socket in order.
    send: Mutex<TcpStream>,
}

/// The reading half: plaintext out.
pub(super) struct TlsReader {
    session: Arc<Shared>,
    sock: TcpStream,
    /// Ciphertext read from the socket that rustls has not taken yet (it
    /// takes at most what its plaintext buffer limit allows).
    pending: Vec<u8>,
    raw: Vec<u8>,
}

/// The writing half: plaintext in, records out.
pub(super) struct TlsWriter {
    session: Arc<Shared>,
}

/// What a client's TLS session is made with (`nbd-tls` with the node's
/// certificate, or `nbd-tls-psk-file`).
#[derive(Debug, Clone)]
pub enum TlsKeys {
    Certs(Arc<rustls::ServerConfig>),
    Psk(Arc<crate::tls::psk::PskTls>),
}

impl TlsKeys {
    fn server(&self) -> Result<Box<dyn Session>, String> {
        match self {
            TlsKeys::Certs(config) => {
                let mut conn = ServerConnection::new(Arc::clone(config))
                    .map_err(|e| format!("cannot start TLS: {e}"))?;
                // Writes are bounded by the callers (a 256 KiB buffered
                // writer, the in-flight limits): no second cap on what
                // rustls holds.
                conn.set_buffer_limit(None);
                Ok(Box::new(Connection::Server(conn)))
            }
            TlsKeys::Psk(psk) => psk.server(),
        }
    }
}

/// Runs the server side of the TLS handshake on `sock` (within `timeout`),
/// then returns the two halves. The error says why the handshake failed.
pub(super) fn accept(
    sock: &TcpStream,
    keys: &TlsKeys,
    timeout: Duration,
) -> Result<(TlsReader, TlsWriter), String> {
    let mut conn = keys.server()?;
    let mut s = sock
        .try_clone()
        .map_err(|e| format!("cannot clone the socket: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| format!("socket: {e}"))?;
    match conn.handshake(&mut s, Instant::now() + timeout) {
        Ok(()) => {}
        Err(HandshakeError::Tls(why)) => return Err(format!("TLS handshake failed: {why}")),
        Err(HandshakeError::Io(e)) => return Err(format!("TLS handshake failed: {e}")),
    }
    let session = Arc::new(Shared {
        conn: Mutex::new(conn),
        send: Mutex::new(
            s.try_clone()
                .map_err(|e| format!("cannot clone the socket: {e}"))?,
        ),
    });
    Ok((
        TlsReader {
            session: Arc::clone(&session),
            sock: s,
            pending: Vec::new(),
            raw: vec![0u8; RAW_READ_BYTES],
        },
        TlsWriter { session },
    ))
}

impl Shared {
    /// Writes out whatever records the session has queued (replies, alerts,
    /// key updates), in order.
    fn send_queued(&self) -> io::Result<()> {
        let mut sock = lock(&self.send);
        let mut out = Vec::new();
        {
            let mut conn = lock(&self.conn);
            while conn.wants_write() {
                conn.write_tls(&mut out)?;
            }
        }
        sock.write_all(&out)
    }
}

impl TlsReader {
    /// Feeds pending ciphertext to rustls. False when there was none.
    fn feed(&mut self) -> io::Result<bool> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        let wants_write = {
            let mut conn = lock(&self.session.conn);
            let mut slice = self.pending.as_slice();
            let n = conn.read_tls(&mut slice)?;
            self.pending.drain(..n);
            conn.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            conn.wants_write()
        };
        if wants_write {
            self.session.send_queued()?;
        }
        Ok(true)
    }
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match lock(&self.session.conn).read_plain(buf) {
                // Ok(0) is the client's close_notify: end of stream.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.feed()? {
                continue;
            }
            let n = self.sock.read(&mut self.raw)?;
            if n == 0 {
                // TCP closed without close_notify: a truncation, which the
                // callers see as the end of the stream all the same.
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.pending
                .extend_from_slice(self.raw.get(..n).unwrap_or_default());
        }
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut sock = lock(&self.session.send);
        let mut out = Vec::with_capacity(buf.len() + 64);
        {
            let mut conn = lock(&self.session.conn);
            conn.write_plain(buf)?;
            while conn.wants_write() {
                conn.write_tls(&mut out)?;
            }
        }
        sock.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for TlsWriter {
    /// Ends the session cleanly (close_notify), as the protocol asks
    /// before the TCP connection closes.
    fn drop(&mut self) {
        lock(&self.session.conn).send_close_notify();
        let _ = self.session.send_queued();
    }
}
