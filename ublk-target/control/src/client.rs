//! The client side of the control socket: where a resource's socket and
//! log live, and [`request`], one JSON request line and one JSON answer
//! line (`repctl` and the cluster agent use it; repd serves the socket).
//!
//! One socket per resource and node, `<run-dir>/<resource>.<node>.sock`, in a
//! directory only root may enter (0700) and itself 0600: whoever can talk to
//! it can promote the node or throw its data away.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{ControlCmd, ControlReply};

/// Where sockets and logs live unless `--run-dir` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/rep";

/// The socket path of one resource on one node.
#[must_use]
pub fn socket_path(run_dir: &Path, resource: &str, node: &str) -> PathBuf {
    run_dir.join(format!("{resource}.{node}.sock"))
}

/// The log file `repctl up` sends the daemon's output to.
#[must_use]
pub fn log_path(run_dir: &Path, resource: &str, node: &str) -> PathBuf {
    run_dir.join(format!("{resource}.{node}.log"))
}

/// What can go wrong on the control socket: the first three on repd's side
/// (serving it), the others on a client's (reaching repd).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the run directory {dir}: {source}")]
    RunDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another repd already serves {path} (it answers); stop it with `repctl down` first")]
    InUse { path: PathBuf },
    #[error("cannot listen on the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no repd is running for this resource and node (no answer on {path}: {source}); start it with `repctl up`")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "permission denied on the control socket {path}: it (and the run directory) is root's \
             only, since whoever talks to repd can promote the node or throw its data away; run \
             repctl as root (e.g. with sudo), or pass --run-dir for a daemon run by another user"
    )]
    Denied { path: PathBuf },
    #[error("repd on {path} did not answer properly: {what}")]
    BadAnswer { path: PathBuf, what: String },
}

/// Send one command and read the answer.
pub fn request(
    path: &Path,
    cmd: &ControlCmd,
    timeout: Option<Duration>,
) -> Result<ControlReply, ControlError> {
    let conn = UnixStream::connect(path).map_err(|source| {
        // Not "not running": the socket (or the directory on the way) is
        // there but not ours to use.
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ControlError::Denied { path: path.into() }
        } else {
            ControlError::NotRunning {
                path: path.into(),
                source,
            }
        }
    })?;
    let _ = conn.set_read_timeout(timeout);
    let bad = |what: String| ControlError::BadAnswer {
        path: path.into(),
        what,
    };
    let mut wr = conn.try_clone().map_err(|e| bad(e.to_string()))?;
    let line = serde_json::to_string(cmd).map_err(|e| bad(e.to_string()))?;
    writeln!(wr, "{line}").map_err(|e| bad(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .map_err(|e| bad(e.to_string()))?;
    if answer.is_empty() {
        return Err(bad("the connection closed without an answer".into()));
    }
    serde_json::from_str(&answer).map_err(|e| bad(format!("{e}: {answer}")))
}
