//! `[handlers]`: the commands repd runs on the state machine's behalf
//! (DRBD's `handlers { fence-peer ...; unfence-peer ...; }`), and the
//! `[net] fencing` policy that calls the fence-peer handler.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, OnIoError};
use replication_proto::machine::Fencing;

/// Longest handler command line, in bytes.
pub const HANDLER_MAX_BYTES: usize = 4096;

/// `[handlers]`: shell command lines (run with `/bin/sh -c`, so they may
/// carry arguments), each starting with an absolute path. The table is read
/// and dumped in this form, key for key (`validate` checks what was read).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Handlers {
    /// `fence-peer`: keep the peer from promotion (a Pacemaker constraint,
    /// an `outdate` over another path, STONITH). Its exit code says what it
    /// did: 3 peer Inconsistent, 4 peer outdated, 5 peer unreachable, 6 peer
    /// Primary (refused), 7 peer shot; anything else is a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence_peer: Option<String>,
    /// `unfence-peer` (DRBD 9's name): undo `fence-peer` once a resync made
    /// the peer UpToDate again. Runs on the node that fenced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfence_peer: Option<String>,
    /// `split-brain`: the data diverged and no after-sb policy resolved it
    /// (both nodes go StandAlone). Runs on both nodes; exit code only logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_brain: Option<String>,
    /// `initial-split-brain`: a split brain found at the handshake, before
    /// any after-sb policy tried to resolve it. Exit code only logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_split_brain: Option<String>,
    /// `pri-lost-after-sb`: an after-sb policy decided that this Primary's
    /// data is thrown away. Exit code only logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pri_lost_after_sb: Option<String>,
    /// `local-io-error`: the local disk failed an I/O (with `[disk]
    /// on-io-error = "call-local-io-error"`). Exit code only logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_io_error: Option<String>,
    /// `after-resync-target`: a resync as SyncTarget finished (this node is
    /// UpToDate again). Exit code only logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_resync_target: Option<String>,
    /// `before-resync-target`: this node is about to become SyncTarget
    /// (DRBD's snapshot-before-resync use). The resync waits for it; any
    /// exit but 0 (or the timeout) drops the connection and leaves this
    /// node StandAlone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_resync_target: Option<String>,
    /// `timeout-ms`: a handler still running after this is killed (counts
    /// as failed).
    #[serde(rename = "timeout-ms", with = "millis")]
    pub timeout: Duration,
}

impl Default for Handlers {
    fn default() -> Self {
        Self {
            fence_peer: None,
            unfence_peer: None,
            split_brain: None,
            initial_split_brain: None,
            pri_lost_after_sb: None,
            local_io_error: None,
            after_resync_target: None,
            before_resync_target: None,
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
        }
    }
}

const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// `timeout-ms` as a [`Duration`]: whole milliseconds in the file.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// `[handlers]`, checked against `[net] fencing` and `[disk] on-io-error`.
pub(super) fn validate(
    path: &Path,
    raw: Handlers,
    fencing: Fencing,
    on_io_error: OnIoError,
) -> Result<Handlers, ConfigError> {
    let bad = |key: &str, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        message,
    };
    for (key, cmd) in [
        ("handlers.fence-peer", &raw.fence_peer),
        ("handlers.unfence-peer", &raw.unfence_peer),
        ("handlers.split-brain", &raw.split_brain),
        ("handlers.initial-split-brain", &raw.initial_split_brain),
        ("handlers.pri-lost-after-sb", &raw.pri_lost_after_sb),
        ("handlers.local-io-error", &raw.local_io_error),
        ("handlers.after-resync-target", &raw.after_resync_target),
        ("handlers.before-resync-target", &raw.before_resync_target),
    ] {
        if let Some(cmd) = cmd {
            check_command(cmd).map_err(|m| bad(key, m))?;
        }
    }
    if raw.timeout.is_zero() {
        return Err(bad("handlers.timeout-ms", "must be at least 1".to_owned()));
    }
    if fencing != Fencing::DontCare && raw.fence_peer.is_none() {
        return Err(bad(
            "net.fencing",
            format!(
                "\"{fencing}\" needs a fence-peer handler: add [handlers] fence-peer = \
                 \"/usr/lib/rep/crm-fence-peer\" (or your own), or set fencing = \"dont-care\""
            ),
        ));
    }
    if on_io_error == OnIoError::CallLocalIoError && raw.local_io_error.is_none() {
        return Err(bad(
            "disk.on-io-error",
            "\"call-local-io-error\" needs a local-io-error handler: add [handlers] \
             local-io-error = \"/usr/lib/drbd/notify-io-error.sh\" (or your own), or set \
             on-io-error = \"pass-on\""
                .to_owned(),
        ));
    }
    Ok(raw)
}

fn check_command(cmd: &str) -> Result<(), String> {
    if cmd.len() > HANDLER_MAX_BYTES {
        return Err(format!(
            "is {} bytes long; at most {HANDLER_MAX_BYTES} are allowed",
            cmd.len()
        ));
    }
    if !cmd.trim_start().starts_with('/') {
        return Err(format!(
            "\"{cmd}\" must start with an absolute path (repd runs it with /bin/sh -c, \
             from / and with a minimal PATH)"
        ));
    }
    Ok(())
}

/// `[net] fencing`.
pub(super) fn fencing(path: &Path, text: &str) -> Result<Fencing, ConfigError> {
    text.parse().map_err(|message| ConfigError::Invalid {
        path: path.to_owned(),
        key: "net.fencing".to_owned(),
        message,
    })
}
