//! The replication link over TLS: the handshake and the relay.
