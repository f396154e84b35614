//! One TLS session whatever library runs it: the small sans-I/O interface
//! (ciphertext in and out, plaintext in and out) that the link relay
//! (`link`) and the NBD export's TLS stream (`nbd::server::tls_stream`)
//! drive. Two backends: rustls for certificates (here), OpenSSL for
//! pre-shared keys (`psk`), because rustls has no external PSKs.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use rustls::Connection;

/// A handshake that failed: on the socket, or refused by TLS (with a
/// reason a user can act on).
#[derive(Debug)]
pub(crate) enum HandshakeError {
    Io(io::Error),
    Tls(String),
}

/// A TLS session, driven by its caller's I/O.
pub(crate) trait Session: Send {
    /// Runs the handshake to its end on the blocking `tcp` (its read
    /// timeout bounds each wait), giving up after `deadline`.
    fn handshake(&mut self, tcp: &mut TcpStream, deadline: Instant) -> Result<(), HandshakeError>;
    /// The server's check of the client after the handshake (the link's
    /// certificate must name `peer`); the client's is `Ok`.
    fn judge_peer(&self, peer: &str) -> Result<(), String>;
    /// Whether this end is the server.
    fn is_server(&self) -> bool;
    /// Takes ciphertext from `rd`; `Ok(0)` is its end.
    fn read_tls(&mut self, rd: &mut dyn Read) -> io::Result<usize>;
    /// Decrypts what `read_tls` took (an error is a TLS failure).
    fn process_new_packets(&mut self) -> Result<(), String>;
    /// Plaintext received: `WouldBlock` when there is none yet, `Ok(0)`
    /// at the peer's close_notify.
    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Plaintext to send (all of it is taken).
    fn write_plain(&mut self, data: &[u8]) -> io::Result<()>;
    /// Whether records wait to be sent.
    fn wants_write(&self) -> bool;
    /// Sends waiting records to `wr`.
    fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<usize>;
    /// Queues close_notify.
    fn send_close_notify(&mut self);
    /// The session's exporter value (RFC 5705/8446 7.5) for `label`.
    fn export(&self, out: &mut [u8], label: &[u8]) -> Result<(), String>;
}

/// One blocking round after the handshake: send what waits, then read
/// and decrypt one batch of records from `tcp`.
pub(crate) fn exchange(s: &mut dyn Session, tcp: &mut TcpStream) -> io::Result<()> {
    while s.wants_write() {
        s.write_tls(tcp)?;
    }
    if s.read_tls(tcp)? == 0 {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    s.process_new_packets()
        .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))
}

/// The deadline check of a handshake loop.
pub(crate) fn in_time(deadline: Instant) -> Result<(), HandshakeError> {
    if Instant::now() > deadline {
        return Err(HandshakeError::Io(io::Error::new(
            ErrorKind::TimedOut,
            "handshake deadline passed",
        )));
    }
    Ok(())
}

/// rustls' session (certificate mode).
impl Session for Connection {
    fn handshake(&mut self, tcp: &mut TcpStream, deadline: Instant) -> Result<(), HandshakeError> {
        while self.is_handshaking() {
            in_time(deadline)?;
            if let Err(e) = self.complete_io(tcp) {
                // rustls reports its own errors wrapped in io::Error (and
                // has sent the alert that tells the peer).
                return Err(
                    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        Some(tls) => HandshakeError::Tls(super::reason(tls)),
                        None => HandshakeError::Io(e),
                    },
                );
            }
        }
        Ok(())
    }

    fn judge_peer(&self, peer: &str) -> Result<(), String> {
        match self {
            Connection::Server(_) => super::peer_named(self, peer),
            Connection::Client(_) => Ok(()),
        }
    }

    fn is_server(&self) -> bool {
        matches!(self, Connection::Server(_))
    }

    fn read_tls(&mut self, mut rd: &mut dyn Read) -> io::Result<usize> {
        Connection::read_tls(self, &mut rd)
    }

    fn process_new_packets(&mut self) -> Result<(), String> {
        Connection::process_new_packets(self)
            .map(|_| ())
            .map_err(|e| super::reason(&e))
    }

    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.reader().read(buf) {
            // A TCP end without close_notify: the end all the same.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(0),
            other => other,
        }
    }

    fn write_plain(&mut self, data: &[u8]) -> io::Result<()> {
        self.writer().write_all(data)
    }

    fn wants_write(&self) -> bool {
        // On `CommonState`, behind Deref (not the trait's own method).
        rustls::CommonState::wants_write(self)
    }

    fn write_tls(&mut self, mut wr: &mut dyn Write) -> io::Result<usize> {
        Connection::write_tls(self, &mut wr)
    }

    fn send_close_notify(&mut self) {
        rustls::CommonState::send_close_notify(self);
    }

    fn export(&self, out: &mut [u8], label: &[u8]) -> Result<(), String> {
        self.export_keying_material(out, label, None)
            .map(|_| ())
            .map_err(|e| format!("TLS exporter: {e}"))
    }
}
