//! The server side of the control socket: repd answers `repctl` and the
//! cluster agent over a Unix socket, one JSON request line, one JSON answer
//! line. The protocol, the socket paths and the client are in
//! [`rep_control::client`] and [`rep_control::protocol`].
//!
//! One socket per resource and node, `<run-dir>/<resource>.<node>.sock`, in a
//! directory only root may enter (0700) and itself 0600: whoever can talk to
//! it can promote the node or throw its data away.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rep_control::client::{socket_path, ControlError};
use rep_control::protocol::{AdjustReply, ControlCmd, ControlReply, Refusal};
use rep_control::socket::{bind_private, serve_json_lines, BindError};

use crate::engine::EngineHandle;

/// A running control server; dropping it does not stop it, `stop` does.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// Clients being served: `stop` lets them finish (a `down` is answered
    /// only when the shutdown is complete, right before the process exits).
    active: Arc<AtomicUsize>,
}

impl ControlServer {
    /// Create the socket and serve it on a thread.
    pub fn start(
        run_dir: &Path,
        resource: &str,
        node: &str,
        engine: EngineHandle,
    ) -> Result<Self, ControlError> {
        let path = socket_path(run_dir, resource, node);
        let listener = bind_private(&path).map_err(|e| match e {
            BindError::RunDir { dir, source } => ControlError::RunDir { dir, source },
            BindError::Answers { path } => ControlError::InUse { path },
            BindError::Listen { path, source } => ControlError::Bind { path, source },
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let active = Arc::new(AtomicUsize::new(0));
        let act = active.clone();
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name("repd-control".into())
            .spawn(move || {
                let _g = span.enter();
                for conn in listener.incoming() {
                    if st.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let engine = engine.clone();
                    // One thread per client: a `down` waits for the shutdown while
                    // `status` keeps answering.
                    act.fetch_add(1, Ordering::SeqCst);
                    let done = act.clone();
                    let spawned = std::thread::Builder::new()
                        .name("repd-control-client".into())
                        .spawn(move || {
                            serve(conn, &engine);
                            done.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        act.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            });
        spawned.map_err(|source| ControlError::Bind {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path, stop, active })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting and remove the socket.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
        let t0 = std::time::Instant::now();
        while self.active.load(Ordering::SeqCst) > 0 && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn serve(conn: UnixStream, engine: &EngineHandle) {
    let Ok(stream) = conn.try_clone() else { return };
    serve_json_lines::<ControlCmd>(conn, |cmd| {
        if let Ok(ControlCmd::Events { now }) = cmd {
            // The connection becomes the watcher's stream until it ends.
            crate::events::serve_watcher(&stream, engine.events(), now);
            return None;
        }
        if let Ok(ControlCmd::Adjust { path }) = cmd {
            let reply = engine.adjust(path).unwrap_or_else(|| AdjustReply {
                ok: false,
                error: stopping().error,
                changes: Vec::new(),
            });
            return Some(serde_json::to_string(&reply).unwrap_or_default());
        }
        if let Ok(ControlCmd::Latency { reset }) = cmd {
            let reply = crate::stages::reply(&engine.latencies().stages, reset);
            return Some(serde_json::to_string(&reply).unwrap_or_default());
        }
        let reply = match cmd {
            Ok(cmd) => engine.control(cmd).unwrap_or_else(stopping),
            Err(e) => bad_request(&e),
        };
        Some(serde_json::to_string(&reply).unwrap_or_default())
    });
}

/// The answer once the engine is gone.
fn stopping() -> ControlReply {
    ControlReply::refused("the daemon is stopping".into(), Refusal::Stopping, None)
}

/// The answer to a line that is not a command.
fn bad_request(e: &serde_json::Error) -> ControlReply {
    ControlReply::refused(format!("bad request: {e}"), Refusal::BadRequest, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's own refusals keep their words and say them as values.
    #[test]
    fn stopping_and_bad_requests_are_typed_refusals() {
        let r = stopping();
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("the daemon is stopping"));
        assert_eq!(r.refusal, Some(Refusal::Stopping));
        let e = serde_json::from_str::<ControlCmd>(r#"{"cmd":"promote"}"#).unwrap_err();
        let r = bad_request(&e);
        assert!(r.error.unwrap().starts_with("bad request: unknown variant"));
        assert_eq!(r.refusal, Some(Refusal::BadRequest));
    }
}
