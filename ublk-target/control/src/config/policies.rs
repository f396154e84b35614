//! The keys whose value is one of a few words (`startup.resume-after-crash`,
//! `disk.on-io-error`, `split-brain.after-sb-*`): their enums, how they are
//! read from the file and written back.

use std::fmt;
use std::str::FromStr;

/// `startup.resume-after-crash`: whether a restarted repd whose last run
/// ended while Primary promotes itself again. When it is armed, it promotes
/// once its activity-log resync made it UpToDate while connected to a
/// Secondary peer on the same data generation; it never does when the peer
/// is Primary or the data moved to another generation (the peer was
/// promoted meanwhile), and it waits while the peer cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResumeAfterCrash {
    /// Only when the kernel still holds the dead repd's `/dev/ublkbN` and its
    /// I/O (ublk user recovery): someone waits for the device.
    #[default]
    HeldDevice,
    /// Whenever the last run ended while Primary (for NBD clients that
    /// reconnect by themselves, or a node that should always come back
    /// Primary after a crash, like DRBD's `become-primary-on`).
    Always,
    /// Never: an operator (`repctl primary`) or the cluster agent decides.
    /// The only choice with a `[cluster]` table.
    Never,
}

impl ResumeAfterCrash {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeldDevice => "held-device",
            Self::Always => "always",
            Self::Never => "never",
        }
    }
}

impl FromStr for ResumeAfterCrash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "held-device" => Ok(Self::HeldDevice),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err(format!(
                "unknown value \"{s}\"; expected one of: held-device, always, never"
            )),
        }
    }
}

/// `disk.on-io-error`: what to do when the backing disk reports an error.
/// DRBD's `panic` is refused with a message naming its replacement (the
/// `local-io-error` handler), as DRBD 8.4 did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnIoError {
    /// The request fails with the disk's error; a failed write's range is
    /// marked out of sync, so the next resync makes both copies equal.
    #[default]
    PassOn,
    /// As `pass-on`, and the `local-io-error` handler runs (once per
    /// episode: until a local I/O succeeds again).
    CallLocalIoError,
    /// DRBD 8.4's default: the node drops its backing disk and goes on
    /// Diskless, reading and writing through the peer; the
    /// `local-io-error` handler runs too when one is configured.
    Detach,
}

/// `split-brain.after-sb-0pri`: split brain detected, no node is Primary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AfterSb0Pri {
    /// No automatic recovery: both nodes go StandAlone.
    #[default]
    Disconnect,
    /// The node that was Primary more recently discards its changes.
    DiscardYoungerPrimary,
    /// The node that was Primary earlier discards its changes.
    DiscardOlderPrimary,
    /// A node that wrote nothing since the split discards (else disconnect).
    DiscardZeroChanges,
    /// The node with fewer changed blocks discards its changes.
    DiscardLeastChanges,
    /// The named node always discards its changes (`discard-node-NAME`).
    DiscardNode(String),
}

/// `split-brain.after-sb-1pri`: split brain detected, one node is Primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterSb1Pri {
    #[default]
    Disconnect,
    /// Follow the after-sb-0pri result if it discards the Secondary, else disconnect.
    Consensus,
    /// The Secondary discards its changes.
    DiscardSecondary,
    /// Follow the after-sb-0pri result; a Primary that must discard runs the
    /// pri-lost-after-sb handler.
    CallPriLostAfterSb,
}

/// `split-brain.after-sb-2pri`: split brain detected, both nodes are Primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterSb2Pri {
    #[default]
    Disconnect,
    CallPriLostAfterSb,
}

impl fmt::Display for OnIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnIoError::PassOn => "pass-on",
            OnIoError::CallLocalIoError => "call-local-io-error",
            OnIoError::Detach => "detach",
        })
    }
}

impl FromStr for OnIoError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pass-on" => Ok(Self::PassOn),
            "call-local-io-error" => Ok(Self::CallLocalIoError),
            "detach" => Ok(Self::Detach),
            "panic" => Err(
                "\"panic\" was removed in DRBD 8.4 in favour of the handler: set \
                 on-io-error = \"call-local-io-error\" and [handlers] local-io-error = \
                 \"/usr/lib/drbd/notify-io-error.sh; echo o > /proc/sysrq-trigger\" (or your own)"
                    .to_owned(),
            ),
            _ => Err(format!(
                "unknown value \"{s}\"; expected: pass-on, call-local-io-error or detach"
            )),
        }
    }
}

impl fmt::Display for AfterSb0Pri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AfterSb0Pri::Disconnect => f.write_str("disconnect"),
            AfterSb0Pri::DiscardYoungerPrimary => f.write_str("discard-younger-primary"),
            AfterSb0Pri::DiscardOlderPrimary => f.write_str("discard-older-primary"),
            AfterSb0Pri::DiscardZeroChanges => f.write_str("discard-zero-changes"),
            AfterSb0Pri::DiscardLeastChanges => f.write_str("discard-least-changes"),
            AfterSb0Pri::DiscardNode(n) => write!(f, "discard-node-{n}"),
        }
    }
}

impl FromStr for AfterSb0Pri {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disconnect" => Self::Disconnect,
            "discard-younger-primary" => Self::DiscardYoungerPrimary,
            "discard-older-primary" => Self::DiscardOlderPrimary,
            "discard-zero-changes" => Self::DiscardZeroChanges,
            "discard-least-changes" => Self::DiscardLeastChanges,
            _ => match s.strip_prefix("discard-node-") {
                Some(name) if !name.is_empty() => Self::DiscardNode(name.to_owned()),
                _ => {
                    return Err(format!(
                    "unknown value \"{s}\"; expected one of: disconnect, discard-younger-primary, \
                         discard-older-primary, discard-zero-changes, discard-least-changes, \
                         discard-node-NAME"
                ))
                }
            },
        })
    }
}

impl fmt::Display for AfterSb1Pri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AfterSb1Pri::Disconnect => "disconnect",
            AfterSb1Pri::Consensus => "consensus",
            AfterSb1Pri::DiscardSecondary => "discard-secondary",
            AfterSb1Pri::CallPriLostAfterSb => "call-pri-lost-after-sb",
        })
    }
}

impl FromStr for AfterSb1Pri {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disconnect" => Ok(Self::Disconnect),
            "consensus" => Ok(Self::Consensus),
            "discard-secondary" => Ok(Self::DiscardSecondary),
            "call-pri-lost-after-sb" => Ok(Self::CallPriLostAfterSb),
            _ => Err(format!(
                "unknown value \"{s}\"; expected one of: disconnect, consensus, discard-secondary, \
                 call-pri-lost-after-sb"
            )),
        }
    }
}

impl fmt::Display for AfterSb2Pri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AfterSb2Pri::Disconnect => "disconnect",
            AfterSb2Pri::CallPriLostAfterSb => "call-pri-lost-after-sb",
        })
    }
}

impl FromStr for AfterSb2Pri {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disconnect" => Ok(Self::Disconnect),
            "call-pri-lost-after-sb" => Ok(Self::CallPriLostAfterSb),
            _ => Err(format!(
                "unknown value \"{s}\"; expected one of: disconnect, call-pri-lost-after-sb"
            )),
        }
    }
}
