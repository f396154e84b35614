//! The `[cluster]` table of the resource file: what heartbeat's `ha.cf`,
//! `authkeys` and `haresources` said, in one place, identical on both nodes.
//!
//! ```toml
//! [cluster]
//! keepalive-ms = 200          # ha.cf keepalive: one heartbeat per path this often
//! warntime-ms = 1000          # ha.cf warntime: log a late heartbeat
//! deadtime-ms = 2000          # ha.cf deadtime: no path heard this long = peer dead
//! initdead-ms = 10000         # ha.cf initdead: deadtime right after the agent starts
//! auth-key = "long random"    # authkeys: HMAC-SHA256 key of every heartbeat (required)
//! auto-failback = false       # ha.cf auto_failback
//! preferred = "alpha"         # haresources' first field: where the chain runs by default
//! fence-command = "/usr/lib/rep/fence-peer"   # DRBD fence-peer exit codes (4, 5, 7 = ok)
//! fence-timeout-ms = 60000
//! failure-timeout-ms = 60000  # a failed start, or migration-threshold monitor failures, ban this node
//!                             # from the chain this long; fail counts are forgotten this long after the
//!                             # last failure (0: never; only `cluster-agent cleanup` clears them)
//! monitor-interval-ms = 10000 # default of each resource: check it this often while holding (0: off)
//! monitor-timeout-ms = 20000  # a check that takes longer failed
//! migration-threshold = 3     # failures of a resource here before the chain moves to the peer
//!                             # (restarted in place below it; 0: never moves)
//! witness = "10.0.0.3:7790"  # optional: a third voter (`cluster-agent --witness`)
//! on-no-quorum = "suspend-io" # with a witness: a Primary that lost quorum holds new writes ("io-error": fails them)
//! ping-nodes = ["10.0.0.254"] # ipfail: a node none of them answers does not hold the chain
//! ping-interval-ms = 1000     # one ICMP echo (`ping`) per node this often
//! ping-timeout-ms = 1000      # how long one echo may take
//! ping-dead-ms = 3000         # a ping node silent this long is lost
//! on-stop-failure = "block"   # "block" | "fence" | "reboot-hook" (needs reboot-command)
//! # reboot-command = "echo b > /proc/sysrq-trigger"
//! # split-brain-command = "/usr/lib/rep/notify-split-brain.sh"
//!
//! [[cluster.path]]            # several media, so one dead link is not a dead node
//! node = "alpha"
//! bind = "10.0.0.1:694"       # this node sends and receives heartbeats here
//! name = "eth1"               # optional, for status
//! [[cluster.path]]
//! node = "beta"
//! bind = "10.0.0.2:694"       # the k-th path of one node talks to the k-th of the other
//!
//! [[cluster.resource]]        # haresources, left to right
//! type = "device"             # the replicated device's role (always first; implicit if absent)
//! [[cluster.resource]]
//! type = "filesystem"
//! device = "/dev/ublkb0"      # default: this node's device
//! mount-point = "/srv/data"
//! fstype = "ext4"
//! options = "noatime"
//! [[cluster.resource]]
//! type = "ip"
//! address = "192.168.0.100/24"
//! interface = "eth0"
//! [[cluster.resource]]
//! type = "service"
//! script = "/etc/init.d/smb"  # LSB: SCRIPT start|stop|status (status: 0 running, 3 stopped, else failed)
//! timeout-ms = 60000
//! monitor-interval-ms = 5000  # the monitor keys may be set per resource too
//! ```
//!
//! Keys are kebab-case; an unknown key is refused with its name, like the
//! rest of the resource file.
//!
//! Here the validated settings and how to load them; in `parse` the raw
//! form and its checks.

mod parse;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rep_control::config::{Config, ConfigError};

use self::parse::parse_cluster;

/// Everything the agent needs from the resource file.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The whole resource (nodes, addresses, the device).
    pub resource: Config,
    pub cluster: Cluster,
    /// This node's name and the peer's.
    pub me: String,
    pub peer: String,
}

/// The validated `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub keepalive: Duration,
    pub warntime: Duration,
    pub deadtime: Duration,
    pub initdead: Duration,
    pub auth_key: Vec<u8>,
    pub auto_failback: bool,
    pub preferred: Option<String>,
    pub paths: Vec<PathEntry>,
    pub witness: Option<SocketAddr>,
    /// What a Primary does with new writes when it loses quorum.
    pub on_no_quorum: NoQuorum,
    pub fence_command: Option<String>,
    pub fence_timeout: Duration,
    pub failure_timeout: Duration,
    /// The chain after the device role (the device is always first).
    pub resources: Vec<ResourceEntry>,
    /// Each resource's monitor, in the order of `resources`.
    pub monitors: Vec<MonitorSettings>,
    /// Switchover, ping nodes, stop-failure escalation, split-brain hook.
    pub ops: OpsSettings,
}

/// The `[cluster]` keys of planned and escalated operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsSettings {
    /// Addresses probed with ICMP echo (`ping`); empty: none.
    pub ping_nodes: Vec<IpAddr>,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// A ping node that did not answer for this long is lost.
    pub ping_dead: Duration,
    pub on_stop_failure: crate::vocab::StopFailure,
    /// Run (`sh -c`) after a failed stop with `on-stop-failure = "reboot-hook"`.
    pub reboot_command: Option<String>,
    /// Run (`sh -c`) once each time repd reports a split brain.
    pub split_brain_command: Option<String>,
}

/// How one resource of the chain is monitored while this node holds it
/// (Pacemaker's recurring monitor operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorSettings {
    /// `monitor-interval-ms`: one check this often; zero: not monitored.
    pub interval: Duration,
    /// `monitor-timeout-ms`: a check that takes longer failed.
    pub timeout: Duration,
    /// `migration-threshold`: failures on this node before the chain moves
    /// to the peer (restarts in place below it); 0: never moves.
    pub threshold: u32,
}

/// `on-no-quorum`: DRBD 9's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoQuorum {
    /// Hold new writes until quorum is back (or the node lets go).
    #[default]
    SuspendIo,
    /// Fail them with EIO.
    IoError,
}

/// What the witness (`cluster-agent --witness`) needs of the resource file:
/// no node of its own.
#[derive(Debug, Clone)]
pub struct WitnessConfig {
    pub resource: String,
    pub nodes: [String; 2],
    pub auth_key: Vec<u8>,
    pub deadtime: Duration,
    pub witness: Option<SocketAddr>,
}

impl WitnessConfig {
    /// Read the resource file as the witness sees it.
    ///
    /// # Errors
    /// A message naming the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str_named(&text, path)
    }

    /// Parse configuration text; `path` is only used in messages.
    ///
    /// # Errors
    /// A message naming the file and the key.
    pub fn from_str_named(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let resource = Config::from_str_named(text, path)?;
        let cluster = parse_cluster(text, &resource)?;
        let name = |i: usize| {
            resource
                .nodes
                .get(i)
                .map(|n| n.name.clone())
                .unwrap_or_default()
        };
        Ok(Self {
            resource: resource.resource.name.clone(),
            nodes: [name(0), name(1)],
            auth_key: cluster.auth_key,
            deadtime: cluster.deadtime,
            witness: cluster.witness,
        })
    }
}

/// One `[[cluster.path]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathEntry {
    pub node: String,
    pub bind: SocketAddr,
    pub name: Option<String>,
}

/// A heartbeat path as one node sees it: where it listens, where the peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// One `[[cluster.resource]]` after the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceEntry {
    Filesystem {
        /// `None`: this node's device (`/dev/ublkbN`).
        device: Option<PathBuf>,
        mount_point: PathBuf,
        fstype: Option<String>,
        options: Option<String>,
        timeout: Duration,
    },
    Ip {
        address: IpAddr,
        prefix: u8,
        interface: String,
        timeout: Duration,
    },
    Service {
        script: PathBuf,
        timeout: Duration,
    },
}

impl ResourceEntry {
    /// A short name for logs and status, like a haresources word.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            ResourceEntry::Filesystem { mount_point, .. } => {
                format!("filesystem:{}", mount_point.display())
            }
            ResourceEntry::Ip {
                address, prefix, ..
            } => format!("ip:{address}/{prefix}"),
            ResourceEntry::Service { script, .. } => format!("service:{}", script.display()),
        }
    }

    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            ResourceEntry::Filesystem { .. } => "filesystem",
            ResourceEntry::Ip { .. } => "ip",
            ResourceEntry::Service { .. } => "service",
        }
    }

    #[must_use]
    pub fn timeout(&self) -> Duration {
        match self {
            ResourceEntry::Filesystem { timeout, .. }
            | ResourceEntry::Ip { timeout, .. }
            | ResourceEntry::Service { timeout, .. } => *timeout,
        }
    }
}

impl Cluster {
    /// The heartbeat links of `me` towards `peer`, in order: the k-th path
    /// entry of one node pairs with the k-th entry of the other.
    #[must_use]
    pub fn links(&self, me: &str, peer: &str) -> Vec<Link> {
        let mine = self.paths.iter().filter(|p| p.node == me);
        let theirs = self.paths.iter().filter(|p| p.node == peer);
        mine.zip(theirs)
            .enumerate()
            .map(|(k, (a, b))| Link {
                name: a
                    .name
                    .clone()
                    .or_else(|| b.name.clone())
                    .unwrap_or_else(|| format!("path{k}")),
                local: a.bind,
                peer: b.bind,
            })
            .collect()
    }
}

impl AgentConfig {
    /// Read the resource file and its `[cluster]` table, for node `node`.
    ///
    /// # Errors
    /// A message naming the file and the key.
    pub fn load(path: &Path, node: Option<&str>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str_named(&text, path, node)
    }

    /// Parse configuration text; `path` is only used in messages.
    ///
    /// # Errors
    /// A message naming the file and the key.
    pub fn from_str_named(
        text: &str,
        path: &Path,
        node: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let resource = Config::from_str_named(text, path)?;
        let (me, peer) = resource.local(node)?;
        let (me, peer) = (me.name.clone(), peer.name.clone());
        let cluster = parse_cluster(text, &resource)?;
        Ok(Self {
            resource,
            cluster,
            me,
            peer,
        })
    }

    #[must_use]
    pub fn links(&self) -> Vec<Link> {
        self.cluster.links(&self.me, &self.peer)
    }
}
