//! Why the peer connection failed ([`PeerError`]): what the engine branches
//! on when it takes a connection down, and the text it logs and shows.

use replication_proto::wire::codec::DecodeError;

use crate::engine::ping_conn::PingError;

/// Why a peer connection (the data connection, or its ping connection)
/// ended. The `Display` text is what the log and `status`'s `last_error`
/// show. Timeouts are not here: the state machine decides a peer is gone
/// (no PingAck within `timeout-ms`) and closes the connection itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    /// The peer closed its end (EOF). Not our finding: the peer said why
    /// before it closed, or its node knows.
    #[error("peer closed the connection")]
    Closed,
    /// A frame this side refused (bad magic, length, checksum...): our
    /// finding, worth `status`'s `last_error`.
    #[error("malformed frame from the peer: {0}")]
    BadFrame(DecodeError),
    /// What came looks like a TLS record: the peer runs with `[net] tls =
    /// "on"` and this node without.
    #[error("the peer speaks TLS and this node plain TCP: set [net] tls = \"on\" here too, or off on the peer ({0})")]
    PeerSpeaksTls(DecodeError),
    /// The ping connection failed its authentication, or carried a frame
    /// it must not.
    #[error(transparent)]
    Ping(#[from] PingError),
    /// `recv` failed (or a ring receive did).
    #[error("receive failed: {0}")]
    Receive(std::io::Error),
    /// `sendmsg` failed.
    #[error("send failed: {0}")]
    Send(std::io::Error),
    /// A poll for the socket could not be armed on the engine's ring.
    #[error("cannot watch the peer socket: {0}")]
    Watch(std::io::Error),
    /// The receiving side's own bookkeeping broke: a bug (asserted in
    /// debug builds); the connection is dropped rather than trusted.
    #[error("{0}")]
    Internal(&'static str),
}

impl PeerError {
    /// A frame was refused (logged here, when the connection is dropped
    /// for it).
    pub(crate) fn bad_frame(e: DecodeError) -> Self {
        let e = match e {
            // A TLS record starts with its content type (22 handshake, 21
            // alert) and the major version 3.
            DecodeError::BadMagic { found } if matches!(found & 0xffff, 0x0316 | 0x0315) => {
                Self::PeerSpeaksTls(e)
            }
            e => Self::BadFrame(e),
        };
        tracing::warn!("{e}; dropping the connection");
        e
    }

    /// The receiving side's bookkeeping broke: `what` says where.
    pub(crate) fn internal(what: &'static str) -> Self {
        debug_assert!(false, "peer connection: {what}");
        Self::Internal(what)
    }

    /// Whether this side refused what the peer sent, rather than the peer
    /// or the network ending the connection: then it is worth `status`'s
    /// `last_error`.
    pub(crate) fn refused_a_frame(&self) -> bool {
        matches!(self, Self::BadFrame(_) | Self::PeerSpeaksTls(_))
    }
}
