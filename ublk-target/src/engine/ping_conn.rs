//! The ping connection: a second TCP connection to the peer that carries
//! only Ping and PingAck (DRBD's meta socket), so that liveness never waits
//! behind bulk data.
//!
//! Why: on a slow link the data connection holds megabytes of resync data
//! in the sender's socket buffer (a resync window of 16 × 128 KiB is 8 s
//! at 2 Mbit/s) and a single write may be a 1 MiB frame (4 s). A PingAck
//! queued behind that came later than `timeout-ms`, the node dropped a
//! connection that was working, reconnected, moved ~256 KiB and dropped
//! it again: the resync never ended (issue 16, item 8). On a connection
//! of its own a ping only waits for the network itself (a router's queue),
//! as DRBD's does. Alternatives weighed: keeping one connection and
//! sending pings ahead of queued frames (with TCP_NOTSENT_LOWAT bounding
//! the kernel's share) still leaves a ping behind the rest of the frame
//! being sent, seconds for one large frame on a slow link, unless frames
//! were cut up on the wire; and counting any received byte as proof of
//! life would count what a stopped peer's kernel still drains from its
//! socket buffer.
//!
//! Pairing without a race: the data connection is dialed by the node whose
//! name sorts first; the ping connection by the other node, to the first
//! node's listener. So every inbound stream on a node is of one kind.
//!
//! Authentication: the first frame each side sends on it is an `Auth`
//! whose MAC ([`ping_conn_mac`]) binds the shared secret to the nonces of
//! the data connection's handshake, which the peer has already answered.
//! A ping connection left from another session, or from someone without
//! the secret, fails the check and is closed; the data connection and its
//! pings go on as before. Until both MACs are checked Ping and PingAck use
//! the data connection; a peer without the feature never gets a ping
//! connection.
//!
//! A failing ping connection sends pings back to the data connection; it
//! does not take the data connection down itself: when the peer closes
//! both, the data connection's last frames (a Disconnect and its reason)
//! may still be unread, and a peer that is really gone does not answer a
//! ping on the data connection either.

use std::collections::VecDeque;
use std::net::TcpStream;

use bytes::{Bytes, BytesMut};
use replication_proto::machine::Session;
use replication_proto::wire::auth::{ping_conn_mac, verify_ping_conn};
use replication_proto::wire::codec::encode;
use replication_proto::wire::Message;

/// Why a ping connection is refused or dropped (see
/// [`PeerError::Ping`](super::peer::PeerError::Ping)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PingError {
    /// Its MAC does not bind this session's nonces with the shared secret.
    #[error("the peer's ping connection failed authentication (another session, or a different shared secret)")]
    Auth,
    /// A frame other than the MAC, Ping and PingAck (named by its kind).
    #[error("unexpected frame on the ping connection: {0}")]
    Unexpected(String),
    /// A message that cannot be encoded: a bug.
    #[error("cannot encode {0}")]
    Encode(String),
}

/// Who this node is to its peer, for the MACs.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub secret: Vec<u8>,
    pub me: String,
    pub peer: String,
}

/// What a frame received on the ping connection means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PingFrame {
    /// For the state machine (a Ping or a PingAck).
    Deliver(Message),
    /// Consumed here (the peer's MAC).
    Handled,
}

/// The authentication and queue of one ping connection; the socket itself
/// is the transport's.
#[derive(Debug)]
pub(crate) struct PingLink {
    /// Our MAC is queued (it goes out first).
    mac_sent: bool,
    /// The peer's MAC, received before this node could check it (its own
    /// handshake not yet verified).
    peer_mac: Option<[u8; 32]>,
    /// Both MACs done: Ping and PingAck go this way now.
    up: bool,
    /// Encoded frames the socket has not taken yet.
    pub out: VecDeque<Bytes>,
}

impl PingLink {
    pub(crate) fn new() -> Self {
        Self {
            mac_sent: false,
            peer_mac: None,
            up: false,
            out: VecDeque::new(),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    /// Queues `m` (a Ping or PingAck).
    pub(crate) fn queue(&mut self, m: &Message) -> Result<(), PingError> {
        let mut b = BytesMut::with_capacity(64);
        encode(m, &mut b).map_err(|e| PingError::Encode(format!("{m:?}: {e}")))?;
        self.out.push_back(b.freeze());
        Ok(())
    }

    /// The state machine's handshake is verified (or still is): sends our
    /// MAC once, checks a MAC that waited. An error: the stream is not the
    /// peer's ping connection for this session.
    pub(crate) fn on_session(&mut self, s: &Session, n: &Names) -> Result<(), PingError> {
        if !self.mac_sent {
            let mac = ping_conn_mac(&n.secret, &s.peer_nonce, &s.own_nonce, &n.me);
            self.queue(&Message::Auth { mac })?;
            self.mac_sent = true;
        }
        if let Some(mac) = self.peer_mac.take() {
            if !verify_ping_conn(&n.secret, &s.own_nonce, &s.peer_nonce, &n.peer, &mac) {
                return Err(PingError::Auth);
            }
            self.up = true;
        }
        Ok(())
    }

    /// A frame arrived on the ping connection.
    pub(crate) fn on_frame(
        &mut self,
        m: Message,
        s: Option<&Session>,
        n: &Names,
    ) -> Result<PingFrame, PingError> {
        match m {
            Message::Auth { mac } if !self.up && self.peer_mac.is_none() => {
                self.peer_mac = Some(mac);
                if let Some(s) = s {
                    self.on_session(s, n)?;
                }
                Ok(PingFrame::Handled)
            }
            m @ (Message::Ping | Message::PingAck) if self.up => Ok(PingFrame::Deliver(m)),
            m => Err(PingError::Unexpected(short(&m))),
        }
    }
}

/// A frame's kind, for an error message (not its payload).
fn short(m: &Message) -> String {
    let s = format!("{m:?}");
    s.split([' ', '(', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Whether `m` travels on the ping connection when there is one.
pub(crate) fn rides_ping_conn(m: &Message) -> bool {
    matches!(m, Message::Ping | Message::PingAck)
}

/// Dials the ping connection to `addr` off the engine thread; `done` gets
/// the stream, or nothing when the peer cannot be reached that way (pings
/// then stay on the data connection, which works as before).
pub(crate) fn dial(
    addr: std::net::SocketAddr,
    span: tracing::Span,
    done: impl FnOnce(TcpStream) + Send + 'static,
) {
    let r = std::thread::Builder::new()
        .name("repd-ping-dial".into())
        .spawn(move || {
            let _g = span.enter();
            match TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) {
                Ok(s) => done(s),
                Err(e) => tracing::warn!(%addr, "cannot open the ping connection: {e}; pings share the data connection (they may time out behind resync data on a slow link)"),
            }
        });
    if let Err(e) = r {
        tracing::warn!("cannot start the ping dialer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(me: &str, peer: &str, secret: &[u8]) -> Names {
        Names {
            secret: secret.to_vec(),
            me: me.into(),
            peer: peer.into(),
        }
    }

    fn session(own: u8, peer: u8) -> Session {
        Session {
            epoch: 1,
            own_nonce: [own; 32],
            peer_nonce: [peer; 32],
            features: replication_proto::wire::features::ALL,
        }
    }

    fn sent_mac(l: &mut PingLink) -> Message {
        let f = l.out.pop_front().expect("a frame queued");
        replication_proto::wire::decode(&f)
            .expect("decodes")
            .expect("a whole frame")
            .0
    }

    /// Both ends of one session authenticate each other in either order
    /// (the MAC may come before this node checked its own handshake);
    /// only then do pings pass.
    #[test]
    fn both_ends_of_a_session_come_up_whatever_the_order() {
        let (na, nb) = (names("alpha", "beta", b"s"), names("beta", "alpha", b"s"));
        let (sa, sb) = (session(1, 2), session(2, 1));
        let mut a = PingLink::new();
        let mut b = PingLink::new();
        // A Ping before the MACs is refused.
        assert!(a.on_frame(Message::Ping, Some(&sa), &na).is_err());
        let mut a = PingLink::new();
        a.on_session(&sa, &na).unwrap();
        let mac_a = sent_mac(&mut a);
        // b does not know its session yet: the MAC waits.
        assert_eq!(b.on_frame(mac_a, None, &nb), Ok(PingFrame::Handled));
        assert!(!b.is_up());
        b.on_session(&sb, &nb).unwrap();
        assert!(b.is_up());
        let mac_b = sent_mac(&mut b);
        assert_eq!(a.on_frame(mac_b, Some(&sa), &na), Ok(PingFrame::Handled));
        assert!(a.is_up());
        assert_eq!(
            a.on_frame(Message::Ping, Some(&sa), &na),
            Ok(PingFrame::Deliver(Message::Ping))
        );
        // Nothing but pings after that.
        assert!(a
            .on_frame(Message::WriteAck { seq: 1 }, Some(&sa), &na)
            .is_err());
    }

    #[test]
    fn another_session_or_secret_is_refused() {
        let nb = names("beta", "alpha", b"s");
        for (secret, nonces) in [(b"s".as_slice(), (9u8, 2u8)), (b"other".as_slice(), (1, 2))] {
            let mut a = PingLink::new();
            a.on_session(
                &session(nonces.0, nonces.1),
                &names("alpha", "beta", secret),
            )
            .unwrap();
            let mac = sent_mac(&mut a);
            let mut b = PingLink::new();
            assert!(b.on_frame(mac, Some(&session(2, 1)), &nb).is_err());
            assert!(!b.is_up());
        }
    }
}
