//! Fencing the peer (DRBD's `fencing` policy and its `fence-peer` /
//! `unfence-peer` handlers): the policy, the handler's exit codes and what
//! status shows of it. The decisions are the node's (`node/fence.rs`); the
//! driver runs the handler ([`crate::machine::Hook::FencePeer`]) and hands
//! its exit code back ([`crate::machine::Event::FenceDone`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a Primary does when it loses its peer and does not know the peer's
/// data is Outdated (DRBD 8.4's `net { fencing ...; }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fencing {
    /// Go on alone; no handler runs.
    #[default]
    DontCare,
    /// Run the fence-peer handler, go on writing meanwhile.
    ResourceOnly,
    /// Hold new writes (and the acknowledgements of the writes the peer did
    /// not confirm) until the fence-peer handler says the peer is fenced.
    ResourceAndStonith,
}

impl Fencing {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DontCare => "dont-care",
            Self::ResourceOnly => "resource-only",
            Self::ResourceAndStonith => "resource-and-stonith",
        }
    }
}

impl fmt::Display for Fencing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Fencing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dont-care" => Ok(Self::DontCare),
            "resource-only" => Ok(Self::ResourceOnly),
            "resource-and-stonith" => Ok(Self::ResourceAndStonith),
            _ => Err(format!(
                "unknown value \"{s}\"; expected one of: dont-care, resource-only, \
                 resource-and-stonith"
            )),
        }
    }
}

/// The meaning of a fence-peer handler's exit code (DRBD's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceOutcome {
    /// 3: the peer's disk is Inconsistent.
    PeerInconsistent,
    /// 4: the peer was outdated (or already was).
    PeerOutdated,
    /// 5: the peer is down or unreachable (its data cannot be used).
    PeerUnreachable,
    /// 6: the peer is Primary: fencing refused.
    PeerPrimary,
    /// 7: the peer was shot (STONITH).
    PeerStonithed,
    /// Any other exit code, a signal, a timeout, or a handler that could
    /// not be started (`None`).
    Failed(Option<i32>),
}

impl FenceOutcome {
    /// The meaning of `exit` (`None`: no exit code, see [`Self::Failed`]).
    #[must_use]
    pub fn of(exit: Option<i32>) -> Self {
        match exit {
            Some(3) => Self::PeerInconsistent,
            Some(4) => Self::PeerOutdated,
            Some(5) => Self::PeerUnreachable,
            Some(6) => Self::PeerPrimary,
            Some(7) => Self::PeerStonithed,
            other => Self::Failed(other),
        }
    }

    /// The peer's data can no longer be taken for current: this node may
    /// write on alone.
    #[must_use]
    pub fn peer_fenced(self) -> bool {
        matches!(
            self,
            Self::PeerInconsistent
                | Self::PeerOutdated
                | Self::PeerUnreachable
                | Self::PeerStonithed
        )
    }
}

/// What status shows of fencing (`repctl status --json`: `fencing`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceStatus {
    /// The configured policy.
    pub policy: Fencing,
    /// The fence-peer handler runs now.
    pub running: bool,
    /// I/O is frozen until the fence-peer handler succeeds (or `resume-io`).
    pub frozen: bool,
    /// The peer is known Outdated (fenced, in the metadata: `PEER_OUTDATED`)
    /// until a resync makes both UpToDate.
    pub peer_fenced: bool,
    /// The last fence-peer handler's exit code and its meaning.
    pub last_exit: Option<i32>,
    pub last_outcome: Option<FenceOutcome>,
}
