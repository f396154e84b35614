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
//! failure-timeout-ms = 60000  # after a failed start, this node does not take over for so long
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
//! script = "/etc/init.d/smb"  # LSB: SCRIPT start|stop|status
//! timeout-ms = 60000
//! ```
//!
//! Keys are kebab-case; an unknown key is refused with its name, like the
//! rest of the resource file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use ublk_target::config::{Config, ConfigError};

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

// ---------------------------------------------------------------------------
// Raw (serde) form.

#[derive(Debug, Deserialize)]
struct RawFile {
    cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCluster {
    #[serde(default = "d_keepalive")]
    keepalive_ms: u64,
    #[serde(default = "d_warntime")]
    warntime_ms: u64,
    #[serde(default = "d_deadtime")]
    deadtime_ms: u64,
    #[serde(default = "d_initdead")]
    initdead_ms: u64,
    auth_key: Option<String>,
    #[serde(default)]
    auto_failback: bool,
    preferred: Option<String>,
    #[serde(default)]
    path: Vec<RawPath>,
    witness: Option<String>,
    on_no_quorum: Option<String>,
    fence_command: Option<String>,
    #[serde(default = "d_fence_timeout")]
    fence_timeout_ms: u64,
    #[serde(default = "d_failure_timeout")]
    failure_timeout_ms: u64,
    #[serde(default)]
    resource: Vec<RawResource>,
    #[serde(default)]
    ping_nodes: Vec<String>,
    #[serde(default = "d_ping_interval")]
    ping_interval_ms: u64,
    #[serde(default = "d_ping_interval")]
    ping_timeout_ms: u64,
    ping_dead_ms: Option<u64>,
    on_stop_failure: Option<String>,
    reboot_command: Option<String>,
    split_brain_command: Option<String>,
}

fn d_ping_interval() -> u64 {
    1000
}

fn d_keepalive() -> u64 {
    200
}
fn d_warntime() -> u64 {
    1000
}
fn d_deadtime() -> u64 {
    2000
}
fn d_initdead() -> u64 {
    10_000
}
fn d_fence_timeout() -> u64 {
    60_000
}
fn d_failure_timeout() -> u64 {
    60_000
}
fn d_res_timeout() -> u64 {
    60_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPath {
    node: String,
    bind: String,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawResource {
    #[serde(rename = "type")]
    kind: String,
    // filesystem
    device: Option<PathBuf>,
    mount_point: Option<PathBuf>,
    fstype: Option<String>,
    options: Option<String>,
    // ip
    address: Option<String>,
    interface: Option<String>,
    // service
    script: Option<PathBuf>,
    timeout_ms: Option<u64>,
}

fn parse_cluster(text: &str, res: &Config) -> Result<Cluster, ConfigError> {
    let path = res.path.as_path();
    let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        message,
    };
    let Some(c) = raw.cluster else {
        return Err(invalid(
            "cluster",
            "the resource file has no [cluster] table; the agent needs at least \
             `auth-key` and one [[cluster.path]] per node (see cluster-agent/examples/r0-cluster.toml)"
                .to_owned(),
        ));
    };
    if c.keepalive_ms == 0 {
        return Err(invalid(
            "cluster.keepalive-ms",
            "must be at least 1".to_owned(),
        ));
    }
    if c.warntime_ms < c.keepalive_ms {
        return Err(invalid(
            "cluster.warntime-ms",
            format!(
                "{} is shorter than keepalive-ms ({}): every heartbeat would be late",
                c.warntime_ms, c.keepalive_ms
            ),
        ));
    }
    if c.deadtime_ms <= c.warntime_ms {
        return Err(invalid(
            "cluster.deadtime-ms",
            format!(
                "{} must be longer than warntime-ms ({})",
                c.deadtime_ms, c.warntime_ms
            ),
        ));
    }
    if c.deadtime_ms < 2 * c.keepalive_ms {
        return Err(invalid(
            "cluster.deadtime-ms",
            format!(
                "{} is less than two keepalives ({} ms): one lost heartbeat would declare the peer dead",
                c.deadtime_ms,
                2 * c.keepalive_ms
            ),
        ));
    }
    if c.initdead_ms < c.deadtime_ms {
        return Err(invalid(
            "cluster.initdead-ms",
            format!(
                "{} is shorter than deadtime-ms ({})",
                c.initdead_ms, c.deadtime_ms
            ),
        ));
    }
    let auth_key = match c.auth_key {
        Some(k) if !k.is_empty() => k.into_bytes(),
        _ => {
            return Err(invalid(
                "cluster.auth-key",
                "a heartbeat key is required (the same on both nodes), e.g. auth-key = \"some long random string\""
                    .to_owned(),
            ))
        }
    };
    let names: Vec<&str> = res.nodes.iter().map(|n| n.name.as_str()).collect();
    let known = || format!("\"{}\"", names.join("\" and \""));
    if let Some(p) = &c.preferred {
        if !names.contains(&p.as_str()) {
            return Err(invalid(
                "cluster.preferred",
                format!(
                    "\"{p}\" is not a configured node; the nodes are {}",
                    known()
                ),
            ));
        }
    }
    if c.auto_failback && c.preferred.is_none() {
        return Err(invalid(
            "cluster.auto-failback",
            "auto-failback moves the resources back to the `preferred` node; set `preferred` too"
                .to_owned(),
        ));
    }

    // Paths.
    let mut paths = Vec::with_capacity(c.path.len());
    for (i, p) in c.path.into_iter().enumerate() {
        let key = |k: &str| format!("cluster.path[{i}].{k}");
        if !names.contains(&p.node.as_str()) {
            return Err(invalid(
                &key("node"),
                format!(
                    "\"{}\" is not a configured node; the nodes are {}",
                    p.node,
                    known()
                ),
            ));
        }
        let bind: SocketAddr = p.bind.parse().map_err(|_| {
            invalid(
                &key("bind"),
                format!(
                    "cannot parse \"{}\" as IP:PORT (e.g. \"10.0.0.1:694\")",
                    p.bind
                ),
            )
        })?;
        if bind.port() == 0 || bind.ip().is_unspecified() {
            return Err(invalid(
                &key("bind"),
                format!("{bind}: needs a real address and a port, the peer sends there"),
            ));
        }
        if paths.iter().any(|q: &PathEntry| q.bind == bind) {
            return Err(invalid(
                &key("bind"),
                format!("{bind} is used by two paths"),
            ));
        }
        if res
            .nodes
            .iter()
            .any(|n| n.address == bind || n.nbd == Some(bind))
        {
            return Err(invalid(
                &key("bind"),
                format!("{bind} is also a replication or NBD address"),
            ));
        }
        paths.push(PathEntry {
            node: p.node,
            bind,
            name: p.name,
        });
    }
    let count = |n: &str| paths.iter().filter(|p| p.node == n).count();
    let (a, b) = (
        names.first().copied().unwrap_or_default(),
        names.get(1).copied().unwrap_or_default(),
    );
    if count(a) == 0 || count(b) == 0 {
        return Err(invalid(
            "cluster.path",
            format!(
                "every node needs at least one [[cluster.path]] (node \"{a}\" has {}, node \"{b}\" has {}); \
                 give two, on different networks, so that one dead link is not a dead node",
                count(a),
                count(b)
            ),
        ));
    }
    if count(a) != count(b) {
        return Err(invalid(
            "cluster.path",
            format!(
                "node \"{a}\" has {} paths and node \"{b}\" {}; the k-th path of one node talks to the k-th of the other",
                count(a),
                count(b)
            ),
        ));
    }
    if count(a) > 16 {
        return Err(invalid(
            "cluster.path",
            "at most 16 paths per node".to_owned(),
        ));
    }
    let pa: Vec<&PathEntry> = paths.iter().filter(|p| p.node == a).collect();
    let pb: Vec<&PathEntry> = paths.iter().filter(|p| p.node == b).collect();
    for (k, (x, y)) in pa.iter().zip(&pb).enumerate() {
        if x.bind.is_ipv4() != y.bind.is_ipv4() {
            return Err(invalid(
                "cluster.path",
                format!(
                    "path {k}: {} and {} are of different address families",
                    x.bind, y.bind
                ),
            ));
        }
    }

    let witness = match c.witness {
        None => None,
        Some(w) => Some(w.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "cluster.witness",
                format!("cannot parse \"{w}\" as IP:PORT (e.g. \"10.0.0.3:7790\")"),
            )
        })?),
    };
    let on_no_quorum = match c.on_no_quorum.as_deref() {
        None | Some("suspend-io") => NoQuorum::SuspendIo,
        Some("io-error") => NoQuorum::IoError,
        Some(other) => {
            return Err(invalid(
                "cluster.on-no-quorum",
                format!("\"{other}\" is neither \"suspend-io\" nor \"io-error\""),
            ))
        }
    };
    if c.on_no_quorum.is_some() && witness.is_none() {
        return Err(invalid(
            "cluster.on-no-quorum",
            "quorum needs a third voter: set `witness` too (two nodes alone never lose quorum, \
             they fence)"
                .to_owned(),
        ));
    }
    let fence_command = match c.fence_command {
        Some(f) if f.trim().is_empty() => {
            return Err(invalid(
                "cluster.fence-command",
                "is empty; remove the key to run without fencing".to_owned(),
            ))
        }
        other => other,
    };
    if c.fence_timeout_ms == 0 {
        return Err(invalid(
            "cluster.fence-timeout-ms",
            "must be at least 1".to_owned(),
        ));
    }

    // The resource chain.
    let mut resources = Vec::new();
    for (i, r) in c.resource.into_iter().enumerate() {
        let key = |k: &str| format!("cluster.resource[{i}].{k}");
        let timeout = Duration::from_millis(r.timeout_ms.unwrap_or_else(d_res_timeout));
        if r.timeout_ms == Some(0) {
            return Err(invalid(&key("timeout-ms"), "must be at least 1".to_owned()));
        }
        let allowed: &[&str] = match r.kind.as_str() {
            "device" => &[],
            "filesystem" => &["device", "mount-point", "fstype", "options", "timeout-ms"],
            "ip" => &["address", "interface", "timeout-ms"],
            "service" => &["script", "timeout-ms"],
            other => {
                return Err(invalid(
                    &key("type"),
                    format!(
                        "unknown resource type \"{other}\"; expected \"device\", \"filesystem\", \"ip\" or \"service\""
                    ),
                ))
            }
        };
        let given = [
            ("device", r.device.is_some()),
            ("mount-point", r.mount_point.is_some()),
            ("fstype", r.fstype.is_some()),
            ("options", r.options.is_some()),
            ("address", r.address.is_some()),
            ("interface", r.interface.is_some()),
            ("script", r.script.is_some()),
            ("timeout-ms", r.timeout_ms.is_some()),
        ];
        if let Some((k, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            return Err(invalid(
                &key(k),
                format!(
                    "a resource of type \"{}\" has no `{k}`{}",
                    r.kind,
                    if allowed.is_empty() {
                        String::new()
                    } else {
                        format!(" (its keys: {})", allowed.join(", "))
                    }
                ),
            ));
        }
        match r.kind.as_str() {
            "device" => {
                if i != 0 {
                    return Err(invalid(
                        &key("type"),
                        "the device must be the first resource: everything else runs on top of it \
                         (it is implicit when not listed)"
                            .to_owned(),
                    ));
                }
            }
            "filesystem" => {
                let Some(mount_point) = r.mount_point else {
                    return Err(invalid(
                        &key("mount-point"),
                        "a filesystem resource needs its mount point".to_owned(),
                    ));
                };
                if !mount_point.is_absolute() {
                    return Err(invalid(
                        &key("mount-point"),
                        format!("{} is not an absolute path", mount_point.display()),
                    ));
                }
                resources.push(ResourceEntry::Filesystem {
                    device: r.device,
                    mount_point,
                    fstype: r.fstype,
                    options: r.options,
                    timeout,
                });
            }
            "ip" => {
                let Some(addr) = r.address else {
                    return Err(invalid(
                        &key("address"),
                        "an ip resource needs `address = \"A.B.C.D/PREFIX\"`".to_owned(),
                    ));
                };
                let (ip, prefix) = parse_cidr(&addr).map_err(|m| invalid(&key("address"), m))?;
                let Some(interface) = r.interface.filter(|s| !s.is_empty()) else {
                    return Err(invalid(
                        &key("interface"),
                        "an ip resource needs the interface to add the address on".to_owned(),
                    ));
                };
                resources.push(ResourceEntry::Ip {
                    address: ip,
                    prefix,
                    interface,
                    timeout,
                });
            }
            _ => {
                let Some(script) = r.script.filter(|s| !s.as_os_str().is_empty()) else {
                    return Err(invalid(
                        &key("script"),
                        "a service resource needs `script` (called as SCRIPT start|stop|status)"
                            .to_owned(),
                    ));
                };
                resources.push(ResourceEntry::Service { script, timeout });
            }
        }
    }
    if resources.len() > 64 {
        return Err(invalid(
            "cluster.resource",
            "at most 64 resources".to_owned(),
        ));
    }

    let ops = parse_ops(
        &invalid,
        OpsRaw {
            ping_nodes: c.ping_nodes,
            ping_interval_ms: c.ping_interval_ms,
            ping_timeout_ms: c.ping_timeout_ms,
            ping_dead_ms: c.ping_dead_ms,
            on_stop_failure: c.on_stop_failure,
            reboot_command: c.reboot_command,
            split_brain_command: c.split_brain_command,
        },
        fence_command.is_some(),
    )?;

    Ok(Cluster {
        keepalive: Duration::from_millis(c.keepalive_ms),
        warntime: Duration::from_millis(c.warntime_ms),
        deadtime: Duration::from_millis(c.deadtime_ms),
        initdead: Duration::from_millis(c.initdead_ms),
        auth_key,
        auto_failback: c.auto_failback,
        preferred: c.preferred,
        paths,
        witness,
        on_no_quorum,
        fence_command,
        fence_timeout: Duration::from_millis(c.fence_timeout_ms),
        failure_timeout: Duration::from_millis(c.failure_timeout_ms),
        resources,
        ops,
    })
}

struct OpsRaw {
    ping_nodes: Vec<String>,
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    ping_dead_ms: Option<u64>,
    on_stop_failure: Option<String>,
    reboot_command: Option<String>,
    split_brain_command: Option<String>,
}

fn parse_ops(
    invalid: &dyn Fn(&str, String) -> ConfigError,
    r: OpsRaw,
    fencing: bool,
) -> Result<OpsSettings, ConfigError> {
    use crate::vocab::StopFailure;
    let mut ping_nodes = Vec::new();
    for (i, p) in r.ping_nodes.iter().enumerate() {
        let ip: IpAddr = p.parse().map_err(|_| {
            invalid(
                &format!("cluster.ping-nodes[{i}]"),
                format!("cannot parse \"{p}\" as an IP address (e.g. \"10.0.0.254\"; no port: it is pinged)"),
            )
        })?;
        if ip.is_unspecified() || ping_nodes.contains(&ip) {
            return Err(invalid(
                &format!("cluster.ping-nodes[{i}]"),
                format!("{ip} is unspecified or listed twice"),
            ));
        }
        ping_nodes.push(ip);
    }
    if r.ping_interval_ms == 0 {
        return Err(invalid(
            "cluster.ping-interval-ms",
            "must be at least 1".to_owned(),
        ));
    }
    if r.ping_timeout_ms == 0 {
        return Err(invalid(
            "cluster.ping-timeout-ms",
            "must be at least 1".to_owned(),
        ));
    }
    let ping_dead_ms = r.ping_dead_ms.unwrap_or(3 * r.ping_interval_ms);
    if ping_dead_ms < r.ping_interval_ms {
        return Err(invalid(
            "cluster.ping-dead-ms",
            format!(
                "{ping_dead_ms} is shorter than ping-interval-ms ({}): every ping node would be lost between two probes",
                r.ping_interval_ms
            ),
        ));
    }
    let nonempty = |key: &str, v: Option<String>| match v {
        Some(s) if s.trim().is_empty() => {
            Err(invalid(key, "is empty; remove the key instead".to_owned()))
        }
        other => Ok(other),
    };
    let reboot_command = nonempty("cluster.reboot-command", r.reboot_command)?;
    let split_brain_command = nonempty("cluster.split-brain-command", r.split_brain_command)?;
    let on_stop_failure = match r.on_stop_failure.as_deref() {
        None | Some("block") => StopFailure::Block,
        Some("fence") => {
            if !fencing {
                return Err(invalid(
                    "cluster.on-stop-failure",
                    "\"fence\" asks the peer to fence this node with its fence-command; set fence-command too"
                        .to_owned(),
                ));
            }
            StopFailure::Fence
        }
        Some("reboot-hook") => {
            if reboot_command.is_none() {
                return Err(invalid(
                    "cluster.on-stop-failure",
                    "\"reboot-hook\" runs reboot-command; set reboot-command too (e.g. \"echo b > /proc/sysrq-trigger\")"
                        .to_owned(),
                ));
            }
            StopFailure::RebootHook
        }
        Some(other) => {
            return Err(invalid(
                "cluster.on-stop-failure",
                format!(
                    "unknown value \"{other}\"; expected \"block\", \"fence\" or \"reboot-hook\""
                ),
            ))
        }
    };
    Ok(OpsSettings {
        ping_nodes,
        ping_interval: Duration::from_millis(r.ping_interval_ms),
        ping_timeout: Duration::from_millis(r.ping_timeout_ms),
        ping_dead: Duration::from_millis(ping_dead_ms),
        on_stop_failure,
        reboot_command,
        split_brain_command,
    })
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("cannot parse \"{s}\" as ADDRESS/PREFIX (e.g. \"192.168.0.100/24\")");
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = a.parse().map_err(|_| bad())?;
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("prefix /{prefix} is too long for {ip}"));
    }
    Ok((ip, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[resource]
name = "r0"
[net]
secret = "s"
[[node]]
name = "alpha"
address = "10.0.0.1:7788"
disk = "/tmp/a.img"
[[node]]
name = "beta"
address = "10.0.0.2:7788"
disk = "/tmp/b.img"
"#;

    const CLUSTER: &str = r#"
[cluster]
auth-key = "k"
[[cluster.path]]
node = "alpha"
bind = "10.0.0.1:694"
[[cluster.path]]
node = "beta"
bind = "10.0.0.2:694"
[[cluster.path]]
node = "alpha"
bind = "10.1.0.1:694"
name = "eth2"
[[cluster.path]]
node = "beta"
bind = "10.1.0.2:694"
"#;

    fn load(extra: &str) -> Result<AgentConfig, String> {
        let text = format!("{BASE}{CLUSTER}{extra}");
        AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_links() {
        let c = load("").unwrap();
        assert_eq!(c.cluster.keepalive, Duration::from_millis(200));
        assert_eq!(c.cluster.warntime, Duration::from_millis(1000));
        assert_eq!(c.cluster.deadtime, Duration::from_millis(2000));
        assert_eq!(c.cluster.initdead, Duration::from_millis(10000));
        assert!(!c.cluster.auto_failback);
        assert!(c.cluster.fence_command.is_none());
        assert!(c.cluster.resources.is_empty());
        let l = c.links();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].local, "10.0.0.1:694".parse().unwrap());
        assert_eq!(l[0].peer, "10.0.0.2:694".parse().unwrap());
        assert_eq!(l[0].name, "path0");
        assert_eq!(l[1].name, "eth2");
        assert_eq!(l[1].peer, "10.1.0.2:694".parse().unwrap());
        assert_eq!(c.peer, "beta");
    }

    #[test]
    fn witness_settings() {
        let c = load("").unwrap();
        assert_eq!(c.cluster.witness, None);
        assert_eq!(c.cluster.on_no_quorum, NoQuorum::SuspendIo);
        let text = format!(
            "{BASE}{}",
            CLUSTER.replacen(
                "auth-key = \"k\"\n",
                "auth-key = \"k\"\nwitness = \"10.0.0.3:7790\"\non-no-quorum = \"io-error\"\n",
                1
            )
        );
        let c = AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha")).unwrap();
        assert_eq!(c.cluster.witness, Some("10.0.0.3:7790".parse().unwrap()));
        assert_eq!(c.cluster.on_no_quorum, NoQuorum::IoError);
        // The witness reads the same file without a node of its own.
        let w = WitnessConfig::from_str_named(&text, Path::new("r0.toml")).unwrap();
        assert_eq!(w.nodes, ["alpha".to_string(), "beta".to_string()]);
        assert_eq!(w.resource, "r0");
        assert_eq!(w.witness, c.cluster.witness);
    }

    #[test]
    fn the_example_parses() {
        let text = include_str!("../examples/r0-cluster.toml");
        for n in ["alpha", "beta"] {
            let c = AgentConfig::from_str_named(text, Path::new("r0-cluster.toml"), Some(n))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.cluster.resources.len(), 3);
            assert_eq!(c.links().len(), 2);
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load("dedtime-ms = 3\n").unwrap_err();
        assert!(e.contains("dedtime-ms"), "{e}");
        let e = load("[[cluster.resource]]\ntype = \"service\"\nscript = \"/x\"\nscirpt = 1\n")
            .unwrap_err();
        assert!(e.contains("scirpt"), "{e}");
        let e =
            load("[[cluster.resource]]\ntype = \"service\"\nscript = \"/x\"\ninterface = \"e\"\n")
                .unwrap_err();
        assert!(e.contains("cluster.resource[0].interface"), "{e}");
    }

    #[test]
    fn resources_parse_and_device_comes_first() {
        let c = load(
            r#"
[[cluster.resource]]
type = "device"
[[cluster.resource]]
type = "filesystem"
mount-point = "/srv"
fstype = "ext4"
[[cluster.resource]]
type = "ip"
address = "192.168.0.100/24"
interface = "eth0"
[[cluster.resource]]
type = "service"
script = "/etc/init.d/smb"
timeout-ms = 5000
"#,
        )
        .unwrap();
        assert_eq!(c.cluster.resources.len(), 3);
        assert_eq!(c.cluster.resources[1].label(), "ip:192.168.0.100/24");
        assert_eq!(
            c.cluster.resources[2].timeout(),
            Duration::from_millis(5000)
        );
        let e = load(
            "[[cluster.resource]]\ntype = \"service\"\nscript = \"/x\"\n[[cluster.resource]]\ntype = \"device\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("cluster.resource[1].type") && e.contains("first"),
            "{e}"
        );
        let e = load("[[cluster.resource]]\ntype = \"drbddisk\"\n").unwrap_err();
        assert!(e.contains("unknown resource type"), "{e}");
        let e =
            load("[[cluster.resource]]\ntype = \"ip\"\naddress = \"1.2.3.4\"\ninterface = \"e\"\n")
                .unwrap_err();
        assert!(e.contains("cluster.resource[0].address"), "{e}");
    }

    #[test]
    fn operation_keys_parse_and_are_checked() {
        use crate::vocab::StopFailure;
        let with = |extra: &str| {
            let text = format!(
                "{BASE}{}",
                CLUSTER.replacen(
                    "auth-key = \"k\"\n",
                    &format!("auth-key = \"k\"\n{extra}"),
                    1
                )
            );
            AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
                .map_err(|e| e.to_string())
        };
        let c = with("").unwrap();
        assert!(c.cluster.ops.ping_nodes.is_empty());
        assert_eq!(c.cluster.ops.on_stop_failure, StopFailure::Block);
        assert_eq!(c.cluster.ops.ping_dead, Duration::from_millis(3000));
        let c = with(
            "ping-nodes = [\"10.0.0.254\", \"fd00::1\"]\nping-interval-ms = 500\n\
             on-stop-failure = \"reboot-hook\"\nreboot-command = \"echo b > /proc/sysrq-trigger\"\n\
             split-brain-command = \"/bin/true\"\n",
        )
        .unwrap();
        assert_eq!(c.cluster.ops.ping_nodes.len(), 2);
        assert_eq!(c.cluster.ops.ping_dead, Duration::from_millis(1500));
        assert_eq!(c.cluster.ops.on_stop_failure, StopFailure::RebootHook);
        assert_eq!(
            c.cluster.ops.split_brain_command.as_deref(),
            Some("/bin/true")
        );
        let c = with("fence-command = \"/bin/true\"\non-stop-failure = \"fence\"\n").unwrap();
        assert_eq!(c.cluster.ops.on_stop_failure, StopFailure::Fence);
        let cases: &[(&str, &str)] = &[
            (
                "ping-nodes = [\"10.0.0.254:80\"]\n",
                "cluster.ping-nodes[0]",
            ),
            (
                "ping-nodes = [\"1.2.3.4\", \"1.2.3.4\"]\n",
                "cluster.ping-nodes[1]",
            ),
            ("ping-interval-ms = 0\n", "cluster.ping-interval-ms"),
            (
                "ping-interval-ms = 1000\nping-dead-ms = 500\n",
                "cluster.ping-dead-ms",
            ),
            ("on-stop-failure = \"panic\"\n", "cluster.on-stop-failure"),
            ("on-stop-failure = \"fence\"\n", "fence-command"),
            ("on-stop-failure = \"reboot-hook\"\n", "reboot-command"),
            (
                "split-brain-command = \"\"\n",
                "cluster.split-brain-command",
            ),
        ];
        for (extra, needle) in cases {
            let e = with(extra).unwrap_err();
            assert!(e.contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let cases: &[(&str, &str)] = &[
            ("deadtime-ms = 300\n", "cluster.deadtime-ms"),
            ("warntime-ms = 100\n", "cluster.warntime-ms"),
            ("initdead-ms = 1000\n", "cluster.initdead-ms"),
            ("preferred = \"gamma\"\n", "cluster.preferred"),
            ("auto-failback = true\n", "cluster.auto-failback"),
            ("witness = \"nowhere\"\n", "cluster.witness"),
            ("fence-command = \" \"\n", "cluster.fence-command"),
            ("on-no-quorum = \"freeze\"\n", "cluster.on-no-quorum"),
            ("on-no-quorum = \"io-error\"\n", "cluster.on-no-quorum"),
        ];
        for (extra, key) in cases {
            // Top-level keys must come before the [[cluster.path]] tables.
            let text = format!(
                "{BASE}{}",
                CLUSTER.replacen(
                    "auth-key = \"k\"\n",
                    &format!("auth-key = \"k\"\n{extra}"),
                    1
                )
            );
            let e = AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let text = format!("{BASE}{}", CLUSTER.replace("auth-key = \"k\"\n", ""));
        let e = AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.auth-key"), "{e}");
        let text = format!("{BASE}[cluster]\nauth-key = \"k\"\n[[cluster.path]]\nnode = \"alpha\"\nbind = \"10.0.0.1:694\"\n");
        let e = AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster.path"), "{e}");
        let e = AgentConfig::from_str_named(BASE, Path::new("r0.toml"), Some("alpha"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[cluster]"), "{e}");
        let text = format!("{BASE}{}", CLUSTER.replace("10.1.0.2:694", "10.0.0.2:7788"));
        let e = AgentConfig::from_str_named(&text, Path::new("r0.toml"), Some("alpha"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("replication"), "{e}");
    }
}
