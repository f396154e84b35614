//! `repctl adjust` (drbdadm adjust): validate the resource file here, then
//! have the running repd re-read that same file and apply what changed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rep_control::client::ControlError;
use rep_control::protocol::{AdjustReply, ControlCmd};

use super::targets::Target;
use super::{print_out, Failure};

/// Longest answer line read from repd.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// Ask repd to apply the file; print each change as `r0: what (when)`.
pub(super) fn adjust(t: &Target) -> Result<(), Failure> {
    let cfg = t.load()?;
    let name = cfg.resource.name.clone();
    // repd runs in another directory: give it the file's absolute path.
    let path = std::fs::canonicalize(t.config())
        .map_err(|e| Failure(format!("{}: {e}", t.config().display())))?;
    let reply: AdjustReply = ask(t, &ControlCmd::Adjust { path })?;
    let mut out = String::new();
    for line in &reply.changes {
        out.push_str(&format!("{name}: {line}\n"));
    }
    if reply.ok && reply.changes.is_empty() {
        out.push_str(&format!("{name}: no changes\n"));
    }
    print_out(&out)?;
    if reply.ok {
        return Ok(());
    }
    let why = reply.error.unwrap_or_default();
    Err(Failure(if why.contains("unknown variant `adjust`") {
        "this repd cannot adjust (too old); restart it from this version".into()
    } else {
        why
    }))
}

/// One request with an answer of its own type (adjust, latency).
pub(super) fn ask<T: serde::de::DeserializeOwned>(
    t: &Target,
    cmd: &ControlCmd,
) -> Result<T, Failure> {
    let path = t.socket()?;
    let conn = UnixStream::connect(&path).map_err(|source| {
        Failure(
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                ControlError::Denied { path: path.clone() }
            } else {
                ControlError::NotRunning {
                    path: path.clone(),
                    source,
                }
            }
            .to_string(),
        )
    })?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let bad = |what: String| {
        Failure(format!(
            "repd on {} did not answer properly: {what}",
            path.display()
        ))
    };
    let line = serde_json::to_string(cmd).map_err(|e| bad(e.to_string()))?;
    writeln!(&conn, "{line}").map_err(|e| bad(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(conn)
        .take(MAX_ANSWER_BYTES)
        .read_line(&mut answer)
        .map_err(|e| bad(e.to_string()))?;
    serde_json::from_str(&answer).map_err(|e| bad(format!("{e}: {answer:?}")))
}
