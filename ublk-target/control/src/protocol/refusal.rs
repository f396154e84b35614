//! Why repd refused a command, as a value: [`Refusal`], carried by
//! [`ControlReply::refusal`](super::ControlReply::refusal) beside the words
//! of [`ControlReply::error`](super::ControlReply::error).

use replication_proto::machine::AdminError;
use serde::{Deserialize, Deserializer, Serialize};

/// Why repd refused a command: what callers (`repctl`, the cluster agent,
/// tests) branch on. The reply's `error` says the same in words, as
/// `repctl` prints it; the words may carry more (which device, what to do).
///
/// In JSON a refusal of the state machine reads as the [`AdminError`] it
/// wraps (`"PeerIsPrimary"`, `{"NotUpToDate":{"disk":"Outdated"}}`), as it
/// did before the daemon's own refusals were typed; those read the same way
/// (`"Stopping"`, `{"InUse":{"by":"Held"}}`). The two share one namespace:
/// no daemon refusal is named like a variant of [`AdminError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RefusalJson", from = "RefusalJson")]
pub enum Refusal {
    /// The replication state machine refused the command.
    Machine(AdminError),
    /// `secondary` or `down` while the device has users: taking it would
    /// pull the disk from under them.
    InUse { by: InUseBy },
    /// An argument of the command does not parse (`resume-io`'s
    /// `if_current`, not a hex generation).
    BadArgument { argument: String, value: String },
    /// The daemon is stopping: its engine takes no more commands.
    Stopping,
    /// The request line is not a command (malformed JSON, an unknown
    /// command, a missing field).
    BadRequest,
}

/// Who holds the device when [`Refusal::InUse`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InUseBy {
    /// Clients are connected (per frontend, e.g. NBD): they can be
    /// disconnected, and `down --force` cuts them.
    Clients(Vec<ClientCount>),
    /// Users nothing in repd can disconnect hold it: `/dev/ublkbN` is
    /// mounted or open, or the check could not tell in time (the words say
    /// which). Checked once no client is connected, or the clients are cut.
    Held,
}

/// The clients of one frontend connected now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCount {
    /// The frontend's name for its clients, as the words say it ("NBD").
    pub frontend: String,
    pub count: usize,
}

impl From<AdminError> for Refusal {
    fn from(e: AdminError) -> Self {
        Refusal::Machine(e)
    }
}

/// [`Refusal`] as it reads in JSON: the state machine's refusals without a
/// wrapper (as the reply carried them before the daemon's own were typed).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RefusalJson {
    Machine(AdminError),
    Daemon(DaemonJson),
}

/// The daemon's own refusals in JSON, named as in [`Refusal`].
#[derive(Serialize, Deserialize)]
enum DaemonJson {
    InUse { by: InUseBy },
    BadArgument { argument: String, value: String },
    Stopping,
    BadRequest,
}

impl From<Refusal> for RefusalJson {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Machine(e) => RefusalJson::Machine(e),
            Refusal::InUse { by } => RefusalJson::Daemon(DaemonJson::InUse { by }),
            Refusal::BadArgument { argument, value } => {
                RefusalJson::Daemon(DaemonJson::BadArgument { argument, value })
            }
            Refusal::Stopping => RefusalJson::Daemon(DaemonJson::Stopping),
            Refusal::BadRequest => RefusalJson::Daemon(DaemonJson::BadRequest),
        }
    }
}

impl From<RefusalJson> for Refusal {
    fn from(r: RefusalJson) -> Self {
        match r {
            RefusalJson::Machine(e) => Refusal::Machine(e),
            RefusalJson::Daemon(DaemonJson::InUse { by }) => Refusal::InUse { by },
            RefusalJson::Daemon(DaemonJson::BadArgument { argument, value }) => {
                Refusal::BadArgument { argument, value }
            }
            RefusalJson::Daemon(DaemonJson::Stopping) => Refusal::Stopping,
            RefusalJson::Daemon(DaemonJson::BadRequest) => Refusal::BadRequest,
        }
    }
}

/// Reads a reply's `refusal`; one this build does not know (a newer repd)
/// reads as none, so that the reply, and its `error` in words, still do.
pub(super) fn known_refusal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Refusal>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.and_then(|v| serde_json::from_value(v).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use replication_proto::wire::DiskState;

    fn json(r: &Refusal) -> String {
        serde_json::to_string(r).unwrap()
    }

    fn daemon_refusals() -> Vec<Refusal> {
        vec![
            Refusal::InUse {
                by: InUseBy::Clients(vec![ClientCount {
                    frontend: "NBD".into(),
                    count: 2,
                }]),
            },
            Refusal::InUse { by: InUseBy::Held },
            Refusal::BadArgument {
                argument: "if_current".into(),
                value: "xyz".into(),
            },
            Refusal::Stopping,
            Refusal::BadRequest,
        ]
    }

    /// The state machine's refusals read as before they were wrapped.
    #[test]
    fn machine_refusals_keep_their_json() {
        let cases = [
            AdminError::PeerIsPrimary,
            AdminError::NotUpToDate {
                disk: DiskState::Outdated,
            },
            AdminError::GenerationMoved {
                now: 1,
                expected: 2,
            },
        ];
        for e in cases {
            let plain = serde_json::to_string(&e).unwrap();
            let r = Refusal::Machine(e);
            assert_eq!(json(&r), plain);
            assert_eq!(serde_json::from_str::<Refusal>(&plain).unwrap(), r);
        }
    }

    /// Each daemon refusal reads back as itself, never as an
    /// [`AdminError`] (the two share one JSON namespace).
    #[test]
    fn daemon_refusals_read_back_as_themselves() {
        for r in daemon_refusals() {
            let text = json(&r);
            assert!(
                serde_json::from_str::<AdminError>(&text).is_err(),
                "{text} reads as an AdminError"
            );
            assert_eq!(serde_json::from_str::<Refusal>(&text).unwrap(), r, "{text}");
        }
        assert_eq!(json(&Refusal::Stopping), r#""Stopping""#);
        assert_eq!(
            json(&Refusal::InUse { by: InUseBy::Held }),
            r#"{"InUse":{"by":"Held"}}"#
        );
    }
}
