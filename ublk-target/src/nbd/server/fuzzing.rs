//! The NBD server's option haggling driven from a byte string, for the
//! `nbd_option_haggling` fuzz target (ublk-target/fuzz) and the test that
//! replays what it found: the same `greet` and `haggle` a client socket
//! goes through, with the client's bytes from memory and the server's
//! answers collected.

use std::sync::Arc;

use super::negotiate::{greet, haggle, Outcome, TlsState};
use super::{Close, Export};
use crate::frontend::{BlockBackend, IoRequest, Reply};

/// An export nothing is ever submitted to (haggling does not do I/O).
struct NoIo {
    writable: bool,
}

impl BlockBackend for NoIo {
    fn size_bytes(&self) -> u64 {
        1 << 30
    }
    fn writable(&self) -> bool {
        self.writable
    }
    fn submit(&self, _req: IoRequest, reply: Reply) {
        reply(Err(nix::libc::EIO));
    }
}

/// What one haggling run did.
#[derive(Debug)]
pub struct Haggled {
    /// The TLS state it ran with.
    pub tls_offered: bool,
    pub tls_required: bool,
    pub tls_active: bool,
    /// How it ended: "transmit", "aborted", "starttls", or why the
    /// connection closed.
    pub end: String,
    /// Everything the server sent.
    pub sent: Vec<u8>,
}

/// Runs the option haggling on `input`. Its first byte picks the setting
/// (bit 0: TLS offered, bit 1: required, bit 2: already active, bit 3:
/// Primary); the rest is what the client sends, from its flags on.
#[must_use]
pub fn option_haggling(input: &[u8]) -> Haggled {
    let (setting, mut client_bytes) = input.split_first().map_or((0, &[][..]), |(s, r)| (*s, r));
    let tls = TlsState {
        offered: setting & 1 != 0 || setting & 2 != 0,
        required: setting & 2 != 0,
        active: setting & 4 != 0 && setting & 3 != 0,
    };
    let export = Export {
        name: "r0".to_owned(),
        backend: Arc::new(NoIo {
            writable: setting & 8 != 0,
        }),
    };
    let mut sent = Vec::new();
    let end = greet(&mut client_bytes, &mut sent)
        .and_then(|client| haggle(&export, &client, tls, &mut client_bytes, &mut sent));
    let end = match end {
        Ok(Outcome::Transmit(_)) => "transmit".to_owned(),
        Ok(Outcome::Aborted) => "aborted".to_owned(),
        Ok(Outcome::StartTls) => "starttls".to_owned(),
        Err(Close::Normal(why)) => why.to_owned(),
        Err(Close::Protocol(why)) => why,
        Err(Close::Io(e)) => e.to_string(),
    };
    Haggled {
        tls_offered: tls.offered,
        tls_required: tls.required,
        tls_active: tls.active,
        end,
        sent,
    }
}
