//! The server side both control sockets share (repd's and the cluster
//! agent's): binding a private Unix socket, and answering one JSON request
//! line with one JSON answer line.
//!
//! The sockets live in a directory only root may enter (0700) and are
//! themselves 0600: whoever can talk to them can promote a node or throw its
//! data away.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// The longest request line a server reads; a request is one short line,
/// so a longer one is refused instead of buffered.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// Why a private socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The directory of the socket could not be created.
    #[error("cannot create the run directory {}: {source}", dir.display())]
    RunDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process answers on the socket already.
    #[error("another process already serves {} (it answers)", path.display())]
    Answers { path: PathBuf },
    /// The socket could not be bound.
    #[error("cannot listen on {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Bind `path` for root only: its directory is created (0700), a socket
/// left behind by a process that died is replaced, one that still answers
/// is refused ([`BindError::Answers`]); the socket itself is made 0600.
///
/// # Errors
/// [`BindError`] saying which step failed.
pub fn bind_private(path: &Path) -> Result<UnixListener, BindError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| BindError::RunDir {
            dir: dir.to_owned(),
            source,
        })?;
        // Best effort: a run directory given by the admin may be theirs.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(BindError::Answers {
                path: path.to_owned(),
            });
        }
        // A socket left behind by a process that died.
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| BindError::Listen {
        path: path.to_owned(),
        source,
    })?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(listener)
}

/// Serve one client: for each request line (at most [`MAX_REQUEST_BYTES`]),
/// `answer` gets the parsed request (or why it did not parse) and returns
/// the answer line, or `None` to hang up without answering. Returns when the
/// client hangs up, a write fails or `answer` says `None`.
pub fn serve_json_lines<Req: DeserializeOwned>(
    conn: UnixStream,
    mut answer: impl FnMut(Result<Req, serde_json::Error>) -> Option<String>,
) {
    let Ok(mut wr) = conn.try_clone() else { return };
    let mut rd = BufReader::new(conn);
    let mut line = String::new();
    while rd
        .by_ref()
        .take(MAX_REQUEST_BYTES)
        .read_line(&mut line)
        .unwrap_or(0)
        > 0
    {
        let Some(text) = answer(serde_json::from_str::<Req>(line.trim())) else {
            return;
        };
        if writeln!(wr, "{text}").is_err() {
            return;
        }
        line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_socket_is_refused_and_a_dead_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("r0.a.sock");
        let l = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            bind_private(&path),
            Err(BindError::Answers { .. })
        ));
        drop(l);
        // The file stays, nobody answers: a restart takes it over.
        assert!(path.exists());
        bind_private(&path).unwrap();
    }

    #[test]
    fn lines_are_answered_in_order_and_bad_ones_say_why() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            serve_json_lines::<u32>(b, |r| match r {
                Ok(n) => Some((n * 2).to_string()),
                Err(e) => Some(format!("\"bad: {}\"", e.is_syntax())),
            });
        });
        let mut w = a.try_clone().unwrap();
        writeln!(w, "21\nnope\n5").unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        BufReader::new(a).read_to_string(&mut out).unwrap();
        server.join().unwrap();
        assert_eq!(out, "42\n\"bad: true\"\n10\n");
    }
}
