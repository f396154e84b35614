//! The Prometheus endpoint (`[metrics] listen` in the resource file): one
//! thread that answers `GET /metrics` in the text exposition format, with
//! drbd-reactor's metric names under a `rep_` prefix.
//!
//! The numbers come from the engine's status (what `repctl status --json`
//! shows, asked through [`EngineHandle::control`] like the control socket
//! does: the engine answers between two turns and never waits for this
//! thread) and from the latency histograms the engine counts in atomics
//! ([`EngineHandle::latencies`]).
//!
//! - here: binding the address (at start, so a port in use stops repd with
//!   the key's name) and the serving thread;
//! - `families`: every metric, from a status and the histograms;
//! - `exposition`: the text format;
//! - `http`: request heads, limits and answers.

mod exposition;
mod families;
mod http;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

use rep_control::config::MetricsListen;
use rep_control::protocol::{ControlCmd, NodeStatus};

use crate::engine::EngineHandle;

use families::render;

/// The endpoint's socket, bound but not served yet.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsListener {
    /// Binds `listen`'s address; `file` is the resource file (named in the
    /// error with the key, so the admin knows what to change).
    ///
    /// # Errors
    /// The address is in use or not local, in words that name the key.
    pub fn bind(listen: &MetricsListen, file: &Path) -> Result<Self, String> {
        let listener = TcpListener::bind(listen.addr).map_err(|e| {
            format!(
                "cannot serve metrics on {} (`{}` in {}): {e}; pick a free port or remove the key",
                listen.addr,
                listen.key,
                file.display()
            )
        })?;
        let addr = listener.local_addr().unwrap_or(listen.addr);
        Ok(Self { listener, addr })
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves scrapes on a thread of its own until the process ends;
    /// `minor` is the ublk device number (the `minor` label).
    ///
    /// # Errors
    /// When the thread cannot start.
    pub fn serve(self, engine: EngineHandle, minor: u32) -> Result<(), String> {
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("repd-metrics".into())
            .spawn(move || {
                let _g = span.enter();
                // One connection at a time: each is bounded by the limits
                // of `http`, so none holds the thread for long.
                for conn in self.listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    if let Err(e) = answer(conn, &engine, minor) {
                        tracing::debug!("metrics client: {e}");
                    }
                }
            })
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        Ok(())
    }
}

/// Reads one request from `conn`, answers it and closes.
fn answer(mut conn: TcpStream, engine: &EngineHandle, minor: u32) -> std::io::Result<()> {
    conn.set_read_timeout(Some(http::DEADLINE))?;
    conn.set_write_timeout(Some(http::DEADLINE))?;
    let started = Instant::now();
    if !respond(&mut conn, engine, minor, started)? {
        return Ok(());
    }
    // What the client sent beyond the head (an oversized one, a body) is
    // read and dropped, a bounded amount: closing with unread bytes would
    // reset the connection, and the client could lose the answer.
    conn.shutdown(std::net::Shutdown::Write)?;
    http::drain(&mut conn, started);
    Ok(())
}

/// Answers the request on `conn`; false when there was none to answer (the
/// client closed or said nothing in time).
fn respond(
    mut conn: &mut TcpStream,
    engine: &EngineHandle,
    minor: u32,
    started: Instant,
) -> std::io::Result<bool> {
    let head = match http::read_head(&mut conn, started) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(false),
        Err(status) => return http::write_refusal(&mut conn, status).map(|()| true),
    };
    let written = match http::parse(&head) {
        http::Request::Refused(status) => http::write_refusal(&mut conn, status),
        http::Request::Metrics { head_only } => match status(engine) {
            Some(st) => {
                let body = render(&st, engine.latencies(), minor);
                http::write_ok(&mut conn, &body, head_only)
            }
            None => http::write_refusal(&mut conn, http::Status::Unavailable),
        },
    };
    written.map(|()| true)
}

/// The engine's status, `None` once it stopped.
fn status(engine: &EngineHandle) -> Option<NodeStatus> {
    engine.control(ControlCmd::Status)?.status
}
