//! TLS with a pre-shared key (`[net] tls-psk-file`, `nbd-tls-psk-file`),
//! on OpenSSL.
//!
//! Why OpenSSL here when the rest is rustls: rustls has no external
//! pre-shared keys (its TLS 1.3 PSK is session resumption only; rustls
//! issue #174 is open, a client-side PR was closed unmerged), and TLS-PSK
//! is what nbdkit, qemu-nbd and libnbd (GnuTLS) speak besides
//! certificates. So OpenSSL (the system libssl, through the `openssl`
//! crate) runs the PSK mode only; certificates stay on rustls.
//!
//! The session is driven sans-I/O like rustls': OpenSSL reads and writes
//! a pair of memory buffers ([`MemIo`]) and the caller moves ciphertext
//! between them and the socket ([`Session`]), so the link relay and the
//! NBD stream serve both backends unchanged.
//!
//! Both ends prove they hold the key: in TLS 1.3 the client's binder and
//! both Finished messages are keyed by it (with an ECDHE exchange for
//! forward secrecy); the server looks the client's identity up in its file
//! and refuses one it does not know. A client never accepts a server that
//! answers with a certificate instead (verification on, no trust anchors).

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Instant;

use openssl::ex_data::Index;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslStream, SslVerifyMode, SslVersion,
};
use rep_control::config::PskKeys;

use super::session::{in_time, HandshakeError, Session};

/// TLS 1.3 suites (the PSK must be usable with SHA-256, as OpenSSL's PSK
/// callbacks assume).
const TLS13_SUITES: &str =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
/// TLS 1.2 PSK suites with an ephemeral key exchange (forward secrecy), for
/// NBD clients that do not do TLS 1.3 with a PSK.
const TLS12_PSK_SUITES: &str =
    "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256";
/// Ciphertext taken from the socket per read.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// What the server's PSK callback saw: the identity the client offered
/// and whether the file knows it.
#[derive(Debug, Clone)]
struct Seen {
    identity: String,
    known: bool,
}

fn seen_index() -> Result<Index<Ssl, Seen>, String> {
    static INDEX: OnceLock<Result<Index<Ssl, Seen>, String>> = OnceLock::new();
    INDEX
        .get_or_init(|| Ssl::new_ex_index().map_err(|e| format!("OpenSSL: {e}")))
        .clone()
}

/// The OpenSSL contexts of one PSK file.
pub struct PskTls {
    client: SslContext,
    server: SslContext,
    /// The identity this node offers when it dials.
    identity: String,
}

impl std::fmt::Debug for PskTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Which TLS versions a context speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 only (the replication link: both ends are repd).
    Tls13,
    /// TLS 1.2 (PSK suites) and 1.3 (NBD clients).
    Tls12And13,
}

impl PskTls {
    /// The contexts for `keys`: a client offering the file's first
    /// identity, a server accepting every identity of the file.
    ///
    /// # Errors
    /// When OpenSSL refuses a setting (an OpenSSL built without PSK).
    pub fn new(keys: &PskKeys, versions: Versions) -> Result<Self, String> {
        let ossl = |e: openssl::error::ErrorStack| format!("OpenSSL PSK setup: {e}");
        let (client, id) = client_builder(keys, versions)?;
        let mut server = base(versions).map_err(ossl)?;
        server.set_verify(SslVerifyMode::NONE);
        // Every connection is a full handshake: no session tickets.
        server.set_num_tickets(0).map_err(ossl)?;
        let index = seen_index()?;
        let known = keys.clone();
        server.set_psk_server_callback(move |ssl, identity, psk| {
            let identity = identity.unwrap_or_default();
            let key = known.key_for(identity);
            ssl.set_ex_data(
                index,
                Seen {
                    identity: String::from_utf8_lossy(identity).into_owned(),
                    known: key.is_some(),
                },
            );
            match key.and_then(|k| Some((k, psk.get_mut(..k.len())?))) {
                Some((k, out)) => {
                    out.copy_from_slice(k);
                    Ok(k.len())
                }
                // 0: no key for this identity; the handshake fails.
                None => Ok(0),
            }
        });
        Ok(Self {
            client: client.build(),
            server: server.build(),
            identity: id,
        })
    }

    /// The identity this node offers when it dials.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// A client session.
    ///
    /// # Errors
    /// When OpenSSL cannot make one.
    pub(crate) fn client(&self) -> Result<Box<dyn Session>, String> {
        let mut ssl = Ssl::new(&self.client).map_err(|e| format!("TLS setup: {e}"))?;
        ssl.set_connect_state();
        self.session(ssl, false)
    }

    /// A server session.
    ///
    /// # Errors
    /// When OpenSSL cannot make one.
    pub(crate) fn server(&self) -> Result<Box<dyn Session>, String> {
        let mut ssl = Ssl::new(&self.server).map_err(|e| format!("TLS setup: {e}"))?;
        ssl.set_accept_state();
        self.session(ssl, true)
    }

    fn session(&self, ssl: Ssl, server: bool) -> Result<Box<dyn Session>, String> {
        let stream =
            SslStream::new(ssl, MemIo::default()).map_err(|e| format!("TLS setup: {e}"))?;
        Ok(Box::new(PskSession {
            stream,
            server,
            identity: self.identity.clone(),
        }))
    }
}

/// The client's context: offers the file's first identity and key.
fn client_builder(
    keys: &PskKeys,
    versions: Versions,
) -> Result<(SslContextBuilder, String), String> {
    let first = keys.first().ok_or("the PSK file holds no key")?.clone();
    let mut client = base(versions).map_err(|e| format!("OpenSSL PSK setup: {e}"))?;
    // A server answering with a certificate is refused: no trust anchors.
    client.set_verify(SslVerifyMode::PEER);
    let id = first.identity.clone();
    client.set_psk_client_callback(move |_ssl, _hint, identity, psk| {
        let (Some(id_out), Some(key_out)) = (
            identity.get_mut(..=first.identity.len()),
            psk.get_mut(..first.key.len()),
        ) else {
            return Ok(0);
        };
        let (id_text, nul) = id_out.split_at_mut(first.identity.len());
        id_text.copy_from_slice(first.identity.as_bytes());
        nul.fill(0);
        key_out.copy_from_slice(&first.key);
        Ok(first.key.len())
    });
    Ok((client, id))
}

/// The settings both sides share.
fn base(versions: Versions) -> Result<SslContextBuilder, openssl::error::ErrorStack> {
    let mut b = SslContext::builder(SslMethod::tls())?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_ciphersuites(TLS13_SUITES)?;
    match versions {
        Versions::Tls13 => b.set_min_proto_version(Some(SslVersion::TLS1_3))?,
        Versions::Tls12And13 => {
            b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
            b.set_cipher_list(TLS12_PSK_SUITES)?;
        }
    }
    Ok(b)
}

/// The two buffers OpenSSL reads ciphertext from and writes it to.
#[derive(Debug, Default)]
struct MemIo {
    incoming: VecDeque<u8>,
    outgoing: Vec<u8>,
    /// The socket ended: reads return 0 once `incoming` is empty.
    eof: bool,
}

impl Read for MemIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() && !self.eof {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.incoming.read(buf)
    }
}

impl Write for MemIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct PskSession {
    stream: SslStream<MemIo>,
    server: bool,
    /// The identity this node offers (a client's, for messages).
    identity: String,
}

impl PskSession {
    fn flush(&mut self, tcp: &mut TcpStream) -> io::Result<()> {
        let out = std::mem::take(&mut self.stream.get_mut().outgoing);
        tcp.write_all(&out)
    }

    /// What a failed handshake means for the user.
    fn reason(&self, e: &openssl::ssl::Error) -> String {
        let seen = seen_index()
            .ok()
            .and_then(|i| self.stream.ssl().ex_data(i).cloned());
        reason(e, self.server, &self.identity, seen.as_ref())
    }
}

/// The reason of a failed PSK handshake: the server's callback verdict
/// first, then OpenSSL's error reasons.
fn reason(e: &openssl::ssl::Error, server: bool, mine: &str, seen: Option<&Seen>) -> String {
    if let Some(s) = seen.filter(|s| !s.known) {
        return format!(
            "the peer's PSK identity \"{}\" is not in this node's PSK file (refused)",
            s.identity.escape_debug()
        );
    }
    let stack = e
        .ssl_error()
        .map(|s| {
            s.errors()
                .iter()
                .filter_map(openssl::error::Error::reason)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let has = |what: &str| stack.contains(what);
    if has("binder does not verify") {
        let id = seen.map_or("?", |s| s.identity.as_str());
        format!("the peer's pre-shared key for identity \"{id}\" differs from this node's: both need the same key ({stack})")
    } else if has("decrypt error") || (!server && has("illegal parameter")) {
        // OpenSSL answers a binder that does not verify with
        // illegal_parameter; GnuTLS and TLS 1.2 with decrypt_error.
        format!("the peer refused this node's pre-shared key (identity \"{mine}\"): the keys differ ({stack})")
    } else if has("handshake failure") || has("unknown psk identity") {
        format!("the peer refused this node's PSK identity \"{mine}\" (is it in the peer's PSK file?) ({stack})")
    } else if has("certificate verify failed") {
        format!("the peer authenticates with a certificate, this node with a pre-shared key; give both the same TLS keys ({stack})")
    } else if server && (has("no shared cipher") || has("no suitable signature")) {
        format!("the peer offered no pre-shared key (does it use certificates?) ({stack})")
    } else if has("wrong version number")
        || has("packet length too long")
        || has("record layer failure")
        || has("http request")
    {
        format!("the peer does not speak TLS (plain TCP? both ends need TLS: [net] tls = \"on\") ({stack})")
    } else {
        format!("TLS failed: {e}")
    }
}

impl Session for PskSession {
    fn handshake(&mut self, tcp: &mut TcpStream, deadline: Instant) -> Result<(), HandshakeError> {
        loop {
            in_time(deadline)?;
            let step = self.stream.do_handshake();
            // What OpenSSL made (records, or the alert telling the peer
            // why) goes out first.
            let sent = self.flush(tcp);
            match step {
                Ok(()) => return sent.map_err(HandshakeError::Io),
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    sent.map_err(HandshakeError::Io)?;
                    if self.read_tls(tcp).map_err(HandshakeError::Io)? == 0 {
                        return Err(HandshakeError::Io(ErrorKind::UnexpectedEof.into()));
                    }
                }
                Err(e) => return Err(HandshakeError::Tls(self.reason(&e))),
            }
        }
    }

    fn judge_peer(&self, _peer: &str) -> Result<(), String> {
        // The server's callback refused unknown identities, and the key
        // proved itself in the handshake.
        Ok(())
    }

    fn is_server(&self) -> bool {
        self.server
    }

    fn read_tls(&mut self, rd: &mut dyn Read) -> io::Result<usize> {
        let mut buf = [0u8; READ_CHUNK_BYTES];
        let n = rd.read(&mut buf)?;
        let io = self.stream.get_mut();
        if n == 0 {
            io.eof = true;
        }
        io.incoming.extend(buf.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn process_new_packets(&mut self) -> Result<(), String> {
        // OpenSSL decrypts in `ssl_read`; its errors surface there.
        Ok(())
    }

    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stream.ssl_read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => Ok(0),
            Err(e) if e.code() == ErrorCode::WANT_READ => Err(ErrorKind::WouldBlock.into()),
            // The TCP end without close_notify: the end all the same.
            Err(e) if self.stream.get_ref().eof && self.stream.get_ref().incoming.is_empty() => {
                tracing::debug!("TLS session ended without close_notify: {e}");
                Ok(0)
            }
            Err(e) => Err(io::Error::new(ErrorKind::InvalidData, format!("TLS: {e}"))),
        }
    }

    fn write_plain(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self
                .stream
                .ssl_write(data)
                .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
            data = data.get(n..).unwrap_or_default();
        }
        Ok(())
    }

    fn wants_write(&self) -> bool {
        !self.stream.get_ref().outgoing.is_empty()
    }

    fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<usize> {
        let out = &mut self.stream.get_mut().outgoing;
        let n = wr.write(out)?;
        out.drain(..n);
        Ok(n)
    }

    fn send_close_notify(&mut self) {
        let _ = self.stream.shutdown();
    }

    fn export(&self, out: &mut [u8], label: &[u8]) -> Result<(), String> {
        let label = std::str::from_utf8(label).map_err(|_| "TLS exporter: label not text")?;
        self.stream
            .ssl()
            .export_keying_material(out, label, None)
            .map_err(|e| format!("TLS exporter: {e}"))
    }
}

#[cfg(test)]
#[path = "psk_tests.rs"]
mod tests;
