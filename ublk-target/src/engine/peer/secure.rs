//! The peer connection's TLS step (`[net] tls = "on"`): every accepted
//! stream gets a TLS server handshake on a thread of its own (a stalled
//! one never holds up the listener or the engine; each is bounded by the
//! peer timeout), and what comes out goes to the engine as the stream it
//! would have been, with the session's exporter value; a refusal goes to
//! the engine as [`Input::LinkRefused`], for status and the event stream.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::super::{Input, InputTx};
use crate::tls::link::LinkTls;

/// Handshakes of accepted streams running at once, at most: beyond that
/// a stream is closed at once (only the peer ever has reason to connect).
const HANDSHAKES_MAX: usize = 4;

/// How an accepted stream becomes an engine input once secured.
pub(super) type MakeInput = fn(TcpStream, Option<[u8; 32]>) -> Input;

/// The listener's side: secures `stream` on its own thread, then sends
/// `make(stream, binding)` to the engine.
pub(super) fn accept(
    tls: &Arc<LinkTls>,
    busy: &Arc<AtomicUsize>,
    stream: TcpStream,
    tx: &InputTx,
    make: MakeInput,
    span: &tracing::Span,
) {
    if busy.fetch_add(1, Ordering::AcqRel) >= HANDSHAKES_MAX {
        busy.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(from = ?stream.peer_addr().ok(), "{HANDSHAKES_MAX} TLS handshakes already running; connection closed");
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    let (tls, busy, tx, span) = (tls.clone(), busy.clone(), tx.clone(), span.clone());
    let spawned = std::thread::Builder::new()
        .name("repd-tls-accept".into())
        .spawn(move || {
            let _g = span.enter();
            let _ = tx.send(match tls.accept(stream) {
                Ok(s) => make(s.stream, Some(s.binding)),
                Err(why) => Input::LinkRefused { why },
            });
            busy.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a TLS handshake thread: {e}");
    }
}

/// The dialer's side, on the dialing thread: the secured stream and its
/// exporter value, or (sent to the engine) why not.
pub(super) fn connect(
    tls: Option<&LinkTls>,
    stream: TcpStream,
    tx: &InputTx,
) -> Option<(TcpStream, Option<[u8; 32]>)> {
    let Some(tls) = tls else {
        return Some((stream, None));
    };
    match tls.connect(stream) {
        Ok(s) => Some((s.stream, Some(s.binding))),
        Err(why) => {
            let _ = tx.send(Input::LinkRefused { why });
            None
        }
    }
}
