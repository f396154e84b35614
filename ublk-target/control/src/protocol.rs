//! The control protocol: the commands `repctl` and the cluster agent send to
//! repd over the control socket, and the answers (the node's status as
//! `repctl status --json` prints it). One JSON object per line each way.
//! Why a command was refused, as a value: [`Refusal`].

mod adjust;
mod latency;
mod refusal;

pub use adjust::{AdjustReply, ADJUST_MAX_LINES};
pub use latency::{LatencyReply, StageLatency};
pub use refusal::{ClientCount, InUseBy, Refusal};
/// The operator verbs of [`ControlCmd::Verb`], shared with the state
/// machine's `Admin::Verb`.
pub use replication_proto::machine::Verb;

use replication_proto::machine::{ErrorKind, FenceStatus, SuspendMode, Traffic};
use replication_proto::wire::{DiskState, Role};
use serde::{Deserialize, Serialize};

/// A command from `repctl` over the control socket: what only the daemon
/// answers itself, and the operator's [`Verb`]s, which repd hands on to the
/// state machine.
///
/// The JSON is one object tagged by `cmd` (`{"cmd":"primary","force":true}`,
/// `{"cmd":"down","force":false}`), the same for both kinds; an unknown
/// `cmd` reads as serde's "unknown variant `x`", which the cluster agent
/// recognizes in an older repd's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCmd {
    Status,
    /// Stop the daemon in order. Refused while the device is in use (NBD
    /// clients connected, /dev/ublkbN open) unless `force`, which
    /// disconnects the NBD clients first (an open /dev/ublkbN still
    /// refuses: a mounted filesystem must not lose its disk).
    Down {
        force: bool,
    },
    /// Quorum lost (the cluster agent): hold (or with `fail`, fail with EIO)
    /// new writes and flushes until `resume-io`.
    SuspendIo {
        fail: bool,
    },
    /// With `if_current` (hex), only while that is still the data generation.
    ResumeIo {
        if_current: Option<String>,
    },
    /// An operator verb for the state machine.
    Verb(Verb),
    /// Watch the event stream (`repctl events`): repd answers one
    /// [`ControlReply`] line, then the connection carries one
    /// [`crate::events::Event`] JSON line per change until repd stops or
    /// the watcher falls too far behind. With `now`, the current state
    /// comes first as `exists` lines, ended by an `exists -` line.
    Events {
        now: bool,
    },
    /// Re-read the resource file at `path` (the one `repctl adjust`
    /// validated) and apply what changed; answered with an [`AdjustReply`].
    Adjust {
        path: std::path::PathBuf,
    },
    /// The latency breakdown (`repctl status --latency`), answered with a
    /// [`LatencyReply`]; with `reset`, counting starts anew after it.
    Latency {
        reset: bool,
    },
    /// `repctl resize`: grow both nodes (to `size_bytes`, or as far as both
    /// disks have room), the new region resynced unless `assume_clean`.
    Resize {
        size_bytes: Option<u64>,
        assume_clean: bool,
    },
    /// Re-open the backing disk of a Diskless node and take it back
    /// (`repctl attach`, drbdadm attach): its metadata is read and checked
    /// by repd, then the state machine reconnects and resyncs it.
    Attach,
}

impl From<Verb> for ControlCmd {
    fn from(verb: Verb) -> Self {
        Self::Verb(verb)
    }
}

/// The JSON of the daemon's own commands (see [`ControlCmd`]).
#[derive(Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
enum DaemonJson {
    Status,
    Down {
        #[serde(default)]
        force: bool,
    },
    SuspendIo {
        fail: bool,
    },
    ResumeIo {
        #[serde(default)]
        if_current: Option<String>,
    },
    Events {
        #[serde(default)]
        now: bool,
    },
    Adjust {
        path: std::path::PathBuf,
    },
    Latency {
        #[serde(default)]
        reset: bool,
    },
    Resize {
        #[serde(default)]
        size_bytes: Option<u64>,
        #[serde(default)]
        assume_clean: bool,
    },
    Attach,
}

impl DaemonJson {
    /// The `cmd` names of the daemon's commands; any other is a [`Verb`]'s.
    const NAMES: [&'static str; 9] = [
        "status",
        "down",
        "suspend-io",
        "resume-io",
        "events",
        "adjust",
        "latency",
        "resize",
        "attach",
    ];
}

impl Serialize for ControlCmd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let own = match self {
            Self::Verb(verb) => return verb.serialize(s),
            Self::Status => DaemonJson::Status,
            Self::Down { force } => DaemonJson::Down { force: *force },
            Self::SuspendIo { fail } => DaemonJson::SuspendIo { fail: *fail },
            Self::ResumeIo { if_current } => DaemonJson::ResumeIo {
                if_current: if_current.clone(),
            },
            Self::Events { now } => DaemonJson::Events { now: *now },
            Self::Adjust { path } => DaemonJson::Adjust { path: path.clone() },
            Self::Latency { reset } => DaemonJson::Latency { reset: *reset },
            Self::Resize {
                size_bytes,
                assume_clean,
            } => DaemonJson::Resize {
                size_bytes: *size_bytes,
                assume_clean: *assume_clean,
            },
            Self::Attach => DaemonJson::Attach,
        };
        own.serialize(s)
    }
}

/// By hand rather than `untagged`, whose error ("data did not match any
/// variant") would hide which command was unknown: the `cmd` name picks the
/// daemon's own commands, and any other name is read as a [`Verb`], whose
/// derive then says "unknown variant `x`" for a name nobody knows.
impl<'de> Deserialize<'de> for ControlCmd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(d)?;
        let Some(object) = value.as_object() else {
            return Err(D::Error::invalid_type(
                unexpected(&value),
                &"a command object with a `cmd` field",
            ));
        };
        let own = match object.get("cmd") {
            None => return Err(D::Error::missing_field("cmd")),
            Some(cmd) => cmd.as_str().is_some_and(|c| DaemonJson::NAMES.contains(&c)),
        };
        if !own {
            return Verb::deserialize(value)
                .map(Self::Verb)
                .map_err(D::Error::custom);
        }
        Ok(
            match DaemonJson::deserialize(value).map_err(D::Error::custom)? {
                DaemonJson::Status => Self::Status,
                DaemonJson::Down { force } => Self::Down { force },
                DaemonJson::SuspendIo { fail } => Self::SuspendIo { fail },
                DaemonJson::ResumeIo { if_current } => Self::ResumeIo { if_current },
                DaemonJson::Events { now } => Self::Events { now },
                DaemonJson::Adjust { path } => Self::Adjust { path },
                DaemonJson::Latency { reset } => Self::Latency { reset },
                DaemonJson::Resize {
                    size_bytes,
                    assume_clean,
                } => Self::Resize {
                    size_bytes,
                    assume_clean,
                },
                DaemonJson::Attach => Self::Attach,
            },
        )
    }
}

/// What a JSON value is, in serde's words for an error.
fn unexpected(value: &serde_json::Value) -> serde::de::Unexpected<'_> {
    use serde::de::Unexpected;
    match value {
        serde_json::Value::Null => Unexpected::Unit,
        serde_json::Value::Bool(b) => Unexpected::Bool(*b),
        serde_json::Value::Number(_) => Unexpected::Other("number"),
        serde_json::Value::String(s) => Unexpected::Str(s),
        serde_json::Value::Array(_) => Unexpected::Seq,
        serde_json::Value::Object(_) => Unexpected::Map,
    }
}

/// The answer to a [`ControlCmd`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// Set whenever repd refused the command: the reason as a value callers
    /// branch on (`error` says it in words). Unset in answers of a repd from
    /// before it existed, and when a newer repd's refusal is unknown here.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "refusal::known_refusal"
    )]
    pub refusal: Option<Refusal>,
    #[serde(default)]
    pub status: Option<NodeStatus>,
}

impl ControlReply {
    /// A refusal: `error` in words (what `repctl` prints), `refusal` as the
    /// value, and the state it was refused in when there is one.
    #[must_use]
    pub fn refused(error: String, refusal: Refusal, status: Option<NodeStatus>) -> Self {
        Self {
            ok: false,
            error: Some(error),
            refusal: Some(refusal),
            status,
        }
    }
}

/// What `repctl status --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub resource: String,
    pub node: String,
    pub peer: String,
    pub role: Role,
    pub peer_role: Option<Role>,
    pub connection: String,
    pub disk: DiskState,
    pub peer_disk: DiskState,
    pub protocol: String,
    pub out_of_sync_bytes: u64,
    pub split_brain: bool,
    /// The newest of `errors`.
    pub last_error: Option<String>,
    /// When `last_error` happened: seconds since the Unix epoch, and its
    /// age in seconds when the status was taken. An error clears a while
    /// (`ERROR_LINGER_MS`) after its condition ended (the log keeps it).
    #[serde(default)]
    pub last_error_at: Option<u64>,
    #[serde(default)]
    pub last_error_age_s: Option<u64>,
    /// The last error of each kind still kept (the event stream's `error`
    /// objects).
    #[serde(default)]
    pub errors: Vec<ErrorStatus>,
    pub sync: Option<SyncProgress>,
    pub generations: GenerationsHex,
    pub data_bytes: u64,
    /// /proc/drbd-style counters.
    pub counters: Counters,
    pub stats: Traffic,
    /// Application writes that had to wait for an activity-log transaction
    /// (their extent was not in the log; DRBD's AL misses).
    #[serde(default)]
    pub al_misses: u64,
    pub nbd: Option<String>,
    pub nbd_clients: usize,
    /// Why the NBD export is open to anyone who reaches it (not loopback,
    /// no `nbd-allow`, no `nbd-tls = "require"`); `None` when it is not.
    #[serde(default)]
    pub nbd_warning: Option<String>,
    pub pid: u32,
    /// New writes are held (`hold`) or failed (`fail`) after `suspend-io`.
    #[serde(default)]
    pub suspended: Option<SuspendMode>,
    #[serde(default)]
    pub freeze_on_disconnect: bool,
    /// The last run of this node ended while Primary and without its peer
    /// (DRBD's degraded cluster): `repctl wait-connect` then waits
    /// `degr-wfc-timeout` instead of `wfc-timeout`.
    #[serde(default)]
    pub degraded_at_start: bool,
    /// After a crash while Primary, once repd armed the resumption of the
    /// role: what it waits for, or what became of it.
    #[serde(default)]
    pub resume: Option<String>,
    /// Fencing the peer (`[net] fencing`, the fence-peer handler): the
    /// policy, whether the handler runs, whether I/O waits for it, whether
    /// the peer is known Outdated, and the handler's last exit code.
    #[serde(default)]
    pub fencing: FenceStatus,
    /// `repctl pause-sync` on this node holds the resync (DRBD's
    /// `resync-suspended:user`).
    #[serde(default)]
    pub sync_paused: bool,
    /// How the last online verify ended (on either side), since repd
    /// started.
    #[serde(default)]
    pub last_verify: Option<LastVerify>,
    /// The last run of each `[handlers]` command that ran since repd
    /// started.
    #[serde(default)]
    pub handlers: Vec<HandlerRun>,
    /// The last `repctl resize`'s outcome, or the size agreed with a peer
    /// of a different size (DRBD's rule: the smaller).
    #[serde(default)]
    pub size_note: Option<String>,
}

/// The last verify: when, what it compared, what differed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastVerify {
    /// When it finished: seconds since the Unix epoch.
    pub at: u64,
    pub age_s: u64,
    pub verified_bytes: u64,
    pub out_of_sync_bytes: u64,
    /// How many ranges of adjacent 4 KiB blocks differed.
    #[serde(default)]
    pub range_count: u64,
    /// The first of them (at most `VERIFY_RANGES_LISTED`), in disk order.
    #[serde(default)]
    pub ranges: Vec<replication_proto::machine::VerifyRange>,
}

/// How a `[handlers]` command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerRun {
    /// The handler's key (`split-brain`, `fence-peer`, ...).
    pub name: String,
    /// Its exit code; `None` when it did not exit by itself (killed at
    /// `timeout-ms`, a signal, or it could not start).
    pub exit: Option<i32>,
    /// Killed at `timeout-ms`.
    pub timed_out: bool,
    /// When it ended: seconds since the Unix epoch.
    pub at: u64,
}

impl NodeStatus {
    /// Whether the peer is connected: the connection is established, idle
    /// or busy with a bitmap exchange, a resync or a verify.
    #[must_use]
    pub fn peer_connected(&self) -> bool {
        matches!(
            self.connection.as_str(),
            "Connected"
                | "SyncSource"
                | "SyncTarget"
                | "WFBitMapS"
                | "WFBitMapT"
                | "VerifySource"
                | "VerifyTarget"
        )
    }
}

/// The last error of one kind (see [`ErrorKind`] for when each clears).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorStatus {
    pub kind: ErrorKind,
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub age_s: u64,
    /// Errors of this kind since its condition began.
    pub count: u64,
    /// Its condition ended; it clears after the linger.
    pub ended: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationsHex {
    pub current: String,
    pub bitmap: String,
    pub history: [String; 2],
}

/// The counters of /proc/drbd, named as there (KiB where DRBD uses KiB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub ns: u64,
    pub nr: u64,
    pub dw: u64,
    pub dr: u64,
    pub al: u64,
    pub bm: u64,
    pub lo: u64,
    pub pe: u64,
    pub ua: u64,
    pub ap: u64,
    pub oos: u64,
}

/// Resync or verify progress as /proc/drbd shows it: percent, speed, time
/// left (repd's engine measures it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncProgress {
    /// "resync" or "verify".
    pub kind: String,
    pub percent: f64,
    pub eta_s: Option<u64>,
    pub bytes_per_s: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    /// Sync target with the resync controller on (`c-plan-ahead` > 0): the
    /// rate it aims at now, and whether application I/O holds it at
    /// `c-min-rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_target_bytes_per_s: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub throttled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers without a refusal read and write as before the field
    /// existed: old clients and the server's fixed JSON lines still parse,
    /// and nothing new appears in the JSON.
    #[test]
    fn a_reply_without_refusal_keeps_its_json() {
        let r: ControlReply =
            serde_json::from_str(r#"{"ok":false,"error":"the daemon is stopping"}"#).unwrap();
        assert_eq!(r.refusal, None);
        assert_eq!(r.error.as_deref(), Some("the daemon is stopping"));
        let ok = ControlReply {
            ok: true,
            error: None,
            refusal: None,
            status: None,
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"ok":true,"status":null}"#
        );
    }

    /// A refusal a newer repd knows and this build does not still leaves a
    /// reply, with its words.
    #[test]
    fn an_unknown_refusal_reads_as_none() {
        let r: ControlReply = serde_json::from_str(
            r#"{"ok":false,"error":"no such thing","refusal":{"FromTheFuture":1}}"#,
        )
        .unwrap();
        assert_eq!(r.refusal, None);
        assert_eq!(r.error.as_deref(), Some("no such thing"));
        let r: ControlReply =
            serde_json::from_str(r#"{"ok":false,"error":"x","refusal":"PeerIsPrimary"}"#).unwrap();
        assert_eq!(
            r.refusal,
            Some(Refusal::Machine(
                replication_proto::machine::AdminError::PeerIsPrimary
            ))
        );
    }

    /// Every command's JSON on the control socket, as repctl and the cluster
    /// agent send it: each parses and writes back to the same bytes.
    const EVERY_COMMAND: &[&str] = &[
        r#"{"cmd":"status"}"#,
        r#"{"cmd":"primary","force":false}"#,
        r#"{"cmd":"primary","force":true}"#,
        r#"{"cmd":"secondary"}"#,
        r#"{"cmd":"connect","discard_my_data":false}"#,
        r#"{"cmd":"connect","discard_my_data":true}"#,
        r#"{"cmd":"disconnect"}"#,
        r#"{"cmd":"invalidate"}"#,
        r#"{"cmd":"invalidate-remote"}"#,
        r#"{"cmd":"verify","repair":false}"#,
        r#"{"cmd":"verify","repair":true}"#,
        r#"{"cmd":"down","force":false}"#,
        r#"{"cmd":"down","force":true}"#,
        r#"{"cmd":"suspend-io","fail":false}"#,
        r#"{"cmd":"suspend-io","fail":true}"#,
        r#"{"cmd":"resume-io","if_current":null}"#,
        r#"{"cmd":"resume-io","if_current":"00000000000000AB"}"#,
        r#"{"cmd":"freeze-on-disconnect","on":false}"#,
        r#"{"cmd":"freeze-on-disconnect","on":true}"#,
        r#"{"cmd":"outdate"}"#,
        r#"{"cmd":"resume-after-crash"}"#,
        r#"{"cmd":"events","now":false}"#,
        r#"{"cmd":"events","now":true}"#,
        r#"{"cmd":"adjust","path":"/etc/rep/r0.toml"}"#,
        r#"{"cmd":"pause-sync"}"#,
        r#"{"cmd":"resume-sync"}"#,
        r#"{"cmd":"new-current-uuid","clear_bitmap":true}"#,
        r#"{"cmd":"latency","reset":false}"#,
        r#"{"cmd":"latency","reset":true}"#,
        r#"{"cmd":"detach"}"#,
        r#"{"cmd":"attach"}"#,
    ];

    #[test]
    fn every_command_keeps_its_json() {
        let mut seen = Vec::new();
        for json in EVERY_COMMAND {
            let cmd: ControlCmd = serde_json::from_str(json).unwrap();
            assert_eq!(serde_json::to_string(&cmd).unwrap(), *json);
            assert!(!seen.contains(&cmd), "{json} parsed as an earlier command");
            seen.push(cmd);
        }
        // Fields with a default may be left out.
        let parse = |s: &str| serde_json::from_str::<ControlCmd>(s).unwrap();
        assert_eq!(parse(r#"{"cmd":"down"}"#), parse(EVERY_COMMAND[11]));
        assert_eq!(parse(r#"{"cmd":"resume-io"}"#), parse(EVERY_COMMAND[15]));
        assert_eq!(parse(r#"{"cmd":"events"}"#), parse(EVERY_COMMAND[21]));
        assert_eq!(
            parse(r#"{"cmd":"latency"}"#),
            ControlCmd::Latency { reset: false }
        );
    }

    /// Unknown commands say so in serde's words (an older repd's answer
    /// the cluster agent recognizes); a command without `cmd` is refused.
    #[test]
    fn unknown_and_malformed_commands_are_refused() {
        let err = |s: &str| {
            serde_json::from_str::<ControlCmd>(s)
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"cmd":"promote"}"#).starts_with("unknown variant `promote`"));
        assert!(err(r#"{"force":true}"#).contains("cmd"));
        assert!(err(r#"{"cmd":"primary"}"#).starts_with("missing field `force`"));
        assert!(err(r#"{"cmd":"suspend-io"}"#).starts_with("missing field `fail`"));
        assert!(err(r#"{"cmd":7}"#).starts_with("invalid type"));
        assert!(err(r#""status""#).starts_with("invalid type"));
    }
}
