//! The validated tables of a resource file, one type per table
//! (`[resource]`, `[net]`, `[sync]`, `[startup]`, `[disk]`, `[split-brain]`,
//! `[[node]]`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use replication_proto::wire::Protocol;

use super::{AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, OnIoError, ResumeAfterCrash};

/// `[resource]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    pub protocol: Protocol,
}

/// `[net]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    /// Shared secret for the peer authentication (never empty).
    pub secret: String,
    /// `timeout-ms`: how long to wait for a peer's answer.
    pub timeout: Duration,
    /// `ping-int-ms`: idle interval between keep-alive pings.
    pub ping_int: Duration,
    /// `ko-count`: a write the peer does not complete within
    /// `timeout` × `ko-count` drops the peer.
    pub ko_count: u32,
    /// `max-buffers`: in-flight request limit on the receiving side.
    pub max_buffers: u32,
    /// `csums`: checksum-based resync (only send blocks whose digest differs).
    pub csums: bool,
    /// `fencing`: what a Primary does when it loses the peer (DRBD's
    /// `fencing`; the fence-peer handler is in [`super::Handlers`]).
    pub fencing: replication_proto::machine::Fencing,
}

/// `[sync]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syncer {
    /// Resync rate in bytes per second; 0 means unlimited.
    pub rate: u64,
    /// Number of activity-log extents (4 MiB each) kept hot.
    pub al_extents: u32,
    /// Online-verify digest.
    pub verify: VerifyAlg,
    /// The dynamic resync rate controller (`c-plan-ahead`, `c-fill-target`,
    /// `c-delay-target`, `c-max-rate`, `c-min-rate`); off by default.
    pub control: replication_proto::machine::ResyncControl,
}

impl Syncer {
    /// The resync rate limit, `None` when unlimited.
    #[must_use]
    pub fn rate_limit(&self) -> Option<u64> {
        (self.rate != 0).then_some(self.rate)
    }
}

/// Digest used by online verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyAlg {
    #[default]
    Crc32c,
}

/// `[startup]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// `wfc-timeout`: how long to wait for the peer at start; `None` = forever.
    pub wfc_timeout: Option<Duration>,
    /// `degr-wfc-timeout`: the same when the node was degraded before; `None` = forever.
    pub degr_wfc_timeout: Option<Duration>,
    /// `resume-after-crash`: when a repd whose last run ended while Primary
    /// (killed, crashed) takes the role back by itself.
    pub resume_after_crash: ResumeAfterCrash,
}

/// `[disk]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub on_io_error: OnIoError,
}

/// `[split-brain]`: automatic split-brain recovery policies (DRBD's
/// `after-sb-0pri`, `after-sb-1pri`, `after-sb-2pri`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SplitBrain {
    pub after_sb_0pri: AfterSb0Pri,
    pub after_sb_1pri: AfterSb1Pri,
    pub after_sb_2pri: AfterSb2Pri,
}

/// One `[[node]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Replication address: this node listens here, the peer connects here.
    pub address: SocketAddr,
    /// Backing disk or file.
    pub disk: PathBuf,
    pub meta_disk: MetaDisk,
    /// ublk device id: the device appears as `/dev/ublkb<device>`.
    pub device: u32,
    /// Optional NBD export address.
    pub nbd: Option<SocketAddr>,
    /// Who may use the NBD export (`nbd-allow`).
    pub nbd_access: super::NbdAccess,
}

impl Node {
    /// The block device path the ublk device will have.
    #[must_use]
    pub fn device_path(&self) -> PathBuf {
        crate::device::device_path(self.device)
    }
}

/// Where a node keeps its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MetaDisk {
    /// At the end of the backing disk (the data area shrinks by its size).
    Internal,
    /// In its own file or device; the whole backing disk holds data.
    External(PathBuf),
}

impl fmt::Display for MetaDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaDisk::Internal => f.write_str("internal"),
            MetaDisk::External(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `[metrics]` and each `[[node]]`'s `metrics` key: where repd serves
/// Prometheus metrics (`GET /metrics`). Off unless one of them is set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metrics {
    /// `metrics.listen`: the address every node serves on (the file is the
    /// same on both nodes, so it is usually `0.0.0.0:9942` or
    /// `127.0.0.1:9942`).
    pub listen: Option<SocketAddr>,
    /// `node[i].metrics`, in node order: a node's own address, which wins
    /// over `listen` (two nodes on one host need two ports).
    pub node: [Option<SocketAddr>; 2],
}

/// Where one node serves its metrics, and the key that said so (for
/// messages such as "address in use").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsListen {
    pub addr: SocketAddr,
    /// `metrics.listen` or `node[i].metrics`.
    pub key: String,
}
