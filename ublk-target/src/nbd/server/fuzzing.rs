//! The NBD server driven from a byte string, for the fuzz targets in
//! ublk-target/fuzz and the tests that replay what they found: the option
//! haggling (`nbd_option_haggling`: the same `greet` and `haggle` a client
//! socket goes through) and the transmission phase (`nbd_requests`: the
//! same reader and writer threads, in front of a test double of the
//! [`BlockBackend`] the engine implements), with the client's bytes from
//! memory and the server's answers collected.

use std::io::{self, Cursor, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::negotiate::{greet, haggle, Outcome, TlsState};
use super::transmission::{transmission, HangUp};
use super::{lock, Close, Export, Shared};
use crate::frontend::{BlockBackend, IoRequest, Reply};
use crate::nbd::proto::{self, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, OPT_EXPORT_NAME, OPT_GO};
use rep_control::config::NbdAccess;

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

/// The export sizes `requests` picks from (setting bits 0-1): small, just
/// over the 1 MiB maximum payload, 1 TiB (whole-device trims split into
/// many pieces), and empty.
pub const EXPORT_SIZES: [u64; 4] = [64 << 10, (1 << 20) + (64 << 10), 1 << 40, 0];

/// How the backend double answers (setting bits 2-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Every request succeeds; reads return zeroes.
    Succeed,
    /// Every request fails with EIO.
    FailEio,
    /// Reads return 512 bytes too few or too many (in turn); others succeed.
    WrongReadLength,
    /// Every request fails with EROFS (a node that just lost Primary).
    FailErofs,
}

/// The backend double's answer for setting byte `setting`.
#[must_use]
pub fn answer(setting: u8) -> Answer {
    match (setting >> 2) & 3 {
        0 => Answer::Succeed,
        1 => Answer::FailEio,
        2 => Answer::WrongReadLength,
        _ => Answer::FailErofs,
    }
}

/// Zeroes for read data, so a 1 MiB read allocates nothing.
static ZEROES: [u8; (1 << 20) + 512] = [0; (1 << 20) + 512];

/// Stands where the engine does: records each request it is given and
/// answers it at once (so replies come in request order).
struct Double {
    size: u64,
    answer: Answer,
    seen: Mutex<Vec<IoRequest>>,
    reads: AtomicU64,
}

impl BlockBackend for Double {
    fn size_bytes(&self) -> u64 {
        self.size
    }
    fn writable(&self) -> bool {
        true
    }
    fn submit(&self, req: IoRequest, reply: Reply) {
        let read_len = match &req {
            IoRequest::Read { len, .. } => Some(*len as usize),
            _ => None,
        };
        lock(&self.seen).push(req);
        let res = match (self.answer, read_len) {
            (Answer::FailEio, _) => Err(nix::libc::EIO),
            (Answer::FailErofs, _) => Err(nix::libc::EROFS),
            (Answer::WrongReadLength, Some(len)) => {
                let n = if self.reads.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
                    len.saturating_sub(512)
                } else {
                    len + 512
                };
                Ok(ZEROES.get(..n).map(Bytes::from_static))
            }
            (_, Some(len)) => Ok(ZEROES.get(..len).map(Bytes::from_static)),
            (_, None) => Ok(None),
        };
        reply(res);
    }
}

/// The writer thread's socket: everything written is kept.
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket's `shutdown`, recorded.
#[derive(Default)]
struct HungUp(AtomicBool);

impl HangUp for HungUp {
    fn hang_up(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What one transmission run did.
#[derive(Debug)]
pub struct Served {
    /// The export's size.
    pub size: u64,
    /// "disc" after NBD_CMD_DISC, or why the connection closed.
    pub end: String,
    /// What the server sent in the transmission phase (replies and data).
    pub sent: Vec<u8>,
    /// Every request the server submitted to the backend, in order.
    pub submitted: Vec<IoRequest>,
    /// Whether the server shut the socket down at the end.
    pub hung_up: bool,
}

/// The client's haggling: fixed newstyle, then NBD_OPT_GO (or
/// NBD_OPT_EXPORT_NAME) for export "r0".
fn client_haggle(export_name: bool) -> Vec<u8> {
    let mut v = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    v.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    if export_name {
        v.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        v.extend_from_slice(&2u32.to_be_bytes());
    } else {
        v.extend_from_slice(&OPT_GO.to_be_bytes());
        v.extend_from_slice(&8u32.to_be_bytes());
        v.extend_from_slice(&2u32.to_be_bytes());
    }
    v.extend_from_slice(b"r0");
    if !export_name {
        v.extend_from_slice(&0u16.to_be_bytes()); // no info requests
    }
    v
}

/// Runs a client through haggling (a fixed successful NBD_OPT_GO, or
/// NBD_OPT_EXPORT_NAME with setting bit 4) and then sends `input[1..]` as
/// its request stream; `input[0]` is the setting (bits 0-1: the export size
/// from [`EXPORT_SIZES`], bits 2-3: the backend's [`answer`]).
///
/// # Panics
/// If the fixed haggling does not reach transmission (a server bug).
#[must_use]
#[allow(clippy::panic)]
pub fn requests(input: &[u8]) -> Served {
    let (setting, stream) = input.split_first().map_or((0, &[][..]), |(s, r)| (*s, r));
    let size = EXPORT_SIZES
        .get(usize::from(setting & 3))
        .copied()
        .unwrap_or(0);
    let double = Arc::new(Double {
        size,
        answer: answer(setting),
        seen: Mutex::new(Vec::new()),
        reads: AtomicU64::new(0),
    });
    let shared = Arc::new(Shared {
        export: Arc::new(Export {
            name: "r0".to_owned(),
            backend: Arc::clone(&double) as Arc<dyn BlockBackend>,
        }),
        access: NbdAccess::default(),
        tls: None,
        stopping: AtomicBool::new(false),
        clients: Mutex::new(std::collections::HashMap::new()),
        threads: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(0),
    });
    let mut client = client_haggle(setting & 16 != 0);
    client.extend_from_slice(stream);
    let mut reader = Cursor::new(client);
    let mut haggled = Vec::new();
    let tls = TlsState::default();
    let haggle_end = greet(&mut reader, &mut haggled)
        .and_then(|c| haggle(&shared.export, &c, tls, &mut reader, &mut haggled));
    let Ok(Outcome::Transmit(size_go)) = haggle_end else {
        panic!("the fixed haggling failed: {haggle_end:?}");
    };
    assert_eq!(size_go, size, "transmission with the wrong size");
    let sent = Arc::new(Mutex::new(Vec::new()));
    let hung = Arc::new(HungUp::default());
    let result = transmission(
        &shared,
        Box::new(reader),
        Box::new(Sink(Arc::clone(&sent))),
        Arc::clone(&hung) as Arc<dyn HangUp>,
        size,
        &tracing::Span::none(),
    );
    let end = match result {
        Ok(()) => "disc".to_owned(),
        Err(Close::Normal(why)) => why.to_owned(),
        Err(Close::Protocol(why)) => why,
        Err(Close::Io(e)) => e.to_string(),
    };
    let submitted = std::mem::take(&mut *lock(&double.seen));
    let sent = std::mem::take(&mut *lock(&sent));
    Served {
        size,
        end,
        sent,
        submitted,
        hung_up: hung.0.load(Ordering::SeqCst),
    }
}
