//! Reading the `[cluster]` table: its raw (serde) form, and the checks
//! that turn it into a [`Cluster`], one named step per part of the table.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rep_control::config::{Config, ConfigError};
use serde::Deserialize;

use super::{Cluster, MonitorSettings, NoQuorum, OpsSettings, PathEntry, ResourceEntry};

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
    // The defaults of each resource's monitor (no `flatten`: serde does
    // not combine it with deny_unknown_fields).
    monitor_interval_ms: Option<u64>,
    monitor_timeout_ms: Option<u64>,
    migration_threshold: Option<u32>,
}

/// The monitor keys, in [cluster] (defaults) or in one resource.
#[derive(Debug, Default)]
struct RawMonitor {
    monitor_interval_ms: Option<u64>,
    monitor_timeout_ms: Option<u64>,
    migration_threshold: Option<u32>,
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
    monitor_interval_ms: Option<u64>,
    monitor_timeout_ms: Option<u64>,
    migration_threshold: Option<u32>,
}

/// Builds the error of one key of the resource file.
type Invalid<'a> = dyn Fn(&str, String) -> ConfigError + 'a;

/// The validated `[cluster]` table of the resource file `res` was read from.
pub(super) fn parse_cluster(text: &str, res: &Config) -> Result<Cluster, ConfigError> {
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
    check_timing(&c, &invalid)?;
    let auth_key = parse_auth_key(c.auth_key, &invalid)?;
    let names: Vec<&str> = res.nodes.iter().map(|n| n.name.as_str()).collect();
    check_failback(c.preferred.as_deref(), c.auto_failback, &names, &invalid)?;
    let paths = parse_paths(c.path, res, &names, &invalid)?;
    let (witness, on_no_quorum) = parse_quorum(c.witness, c.on_no_quorum, &invalid)?;
    let fence_command = parse_fencing(c.fence_command, c.fence_timeout_ms, &invalid)?;
    let raw_defaults = RawMonitor {
        monitor_interval_ms: c.monitor_interval_ms,
        monitor_timeout_ms: c.monitor_timeout_ms,
        migration_threshold: c.migration_threshold,
    };
    let defaults = parse_monitor("cluster.", &raw_defaults, None, &invalid)?;
    let monitors = c
        .resource
        .iter()
        .enumerate()
        .filter(|(_, r)| r.kind != "device")
        .map(|(i, r)| {
            parse_monitor(
                &format!("cluster.resource[{i}]."),
                &RawMonitor {
                    monitor_interval_ms: r.monitor_interval_ms,
                    monitor_timeout_ms: r.monitor_timeout_ms,
                    migration_threshold: r.migration_threshold,
                },
                Some(&defaults),
                &invalid,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let resources = parse_resources(c.resource, &invalid)?;
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
        monitors,
        ops,
    })
}

/// Milliseconds that must be 0 or at least 100.
const MIN_MONITOR_INTERVAL_MS: u64 = 100;

/// One resource's monitor settings (`prefix`: where the keys are), its
/// missing keys from `defaults` ([cluster]) or the built-in defaults.
fn parse_monitor(
    prefix: &str,
    r: &RawMonitor,
    defaults: Option<&MonitorSettings>,
    invalid: &Invalid<'_>,
) -> Result<MonitorSettings, ConfigError> {
    let d = defaults.copied().unwrap_or(MonitorSettings {
        interval: Duration::from_millis(10_000),
        timeout: Duration::from_millis(20_000),
        threshold: 3,
    });
    let interval = r
        .monitor_interval_ms
        .map_or(d.interval, Duration::from_millis);
    if r.monitor_interval_ms
        .is_some_and(|ms| ms > 0 && ms < MIN_MONITOR_INTERVAL_MS)
    {
        return Err(invalid(
            &format!("{prefix}monitor-interval-ms"),
            format!("must be 0 (no monitor) or at least {MIN_MONITOR_INTERVAL_MS}"),
        ));
    }
    if r.monitor_timeout_ms == Some(0) {
        return Err(invalid(
            &format!("{prefix}monitor-timeout-ms"),
            "must be at least 1 (a monitor that takes longer counts as failed)".to_owned(),
        ));
    }
    Ok(MonitorSettings {
        interval,
        timeout: r
            .monitor_timeout_ms
            .map_or(d.timeout, Duration::from_millis),
        threshold: r.migration_threshold.unwrap_or(d.threshold),
    })
}

/// keepalive < warntime < deadtime <= initdead, with room for a lost beat.
fn check_timing(c: &RawCluster, invalid: &Invalid<'_>) -> Result<(), ConfigError> {
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
    Ok(())
}

fn parse_auth_key(key: Option<String>, invalid: &Invalid<'_>) -> Result<Vec<u8>, ConfigError> {
    match key {
        Some(k) if !k.is_empty() => Ok(k.into_bytes()),
        _ => Err(invalid(
            "cluster.auth-key",
            "a heartbeat key is required (the same on both nodes), e.g. auth-key = \"some long random string\""
                .to_owned(),
        )),
    }
}

/// The configured node names, quoted, for messages.
fn known(names: &[&str]) -> String {
    format!("\"{}\"", names.join("\" and \""))
}

/// `preferred` names a node; `auto-failback` needs it.
fn check_failback(
    preferred: Option<&str>,
    auto_failback: bool,
    names: &[&str],
    invalid: &Invalid<'_>,
) -> Result<(), ConfigError> {
    if let Some(p) = preferred {
        if !names.contains(&p) {
            return Err(invalid(
                "cluster.preferred",
                format!(
                    "\"{p}\" is not a configured node; the nodes are {}",
                    known(names)
                ),
            ));
        }
    }
    if auto_failback && preferred.is_none() {
        return Err(invalid(
            "cluster.auto-failback",
            "auto-failback moves the resources back to the `preferred` node; set `preferred` too"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The heartbeat paths: each valid alone, then paired node to node.
fn parse_paths(
    raw: Vec<RawPath>,
    res: &Config,
    names: &[&str],
    invalid: &Invalid<'_>,
) -> Result<Vec<PathEntry>, ConfigError> {
    let mut paths = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let entry = parse_path(i, p, &paths, res, names, invalid)?;
        paths.push(entry);
    }
    check_path_pairs(&paths, names, invalid)?;
    Ok(paths)
}

/// Path `i`: a configured node, a real address of its own.
fn parse_path(
    i: usize,
    p: RawPath,
    earlier: &[PathEntry],
    res: &Config,
    names: &[&str],
    invalid: &Invalid<'_>,
) -> Result<PathEntry, ConfigError> {
    let key = |k: &str| format!("cluster.path[{i}].{k}");
    if !names.contains(&p.node.as_str()) {
        return Err(invalid(
            &key("node"),
            format!(
                "\"{}\" is not a configured node; the nodes are {}",
                p.node,
                known(names)
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
    if earlier.iter().any(|q| q.bind == bind) {
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
    Ok(PathEntry {
        node: p.node,
        bind,
        name: p.name,
    })
}

/// Both nodes have the same number of paths (1 to 16), the k-th of each
/// in the same address family.
fn check_path_pairs(
    paths: &[PathEntry],
    names: &[&str],
    invalid: &Invalid<'_>,
) -> Result<(), ConfigError> {
    debug_assert_eq!(names.len(), 2, "a validated resource has exactly two nodes");
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
    Ok(())
}

/// The witness's address and what a Primary does without quorum.
fn parse_quorum(
    witness: Option<String>,
    on_no_quorum: Option<String>,
    invalid: &Invalid<'_>,
) -> Result<(Option<SocketAddr>, NoQuorum), ConfigError> {
    let witness = match witness {
        None => None,
        Some(w) => Some(w.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "cluster.witness",
                format!("cannot parse \"{w}\" as IP:PORT (e.g. \"10.0.0.3:7790\")"),
            )
        })?),
    };
    let policy = match on_no_quorum.as_deref() {
        None | Some("suspend-io") => NoQuorum::SuspendIo,
        Some("io-error") => NoQuorum::IoError,
        Some(other) => {
            return Err(invalid(
                "cluster.on-no-quorum",
                format!("\"{other}\" is neither \"suspend-io\" nor \"io-error\""),
            ))
        }
    };
    if on_no_quorum.is_some() && witness.is_none() {
        return Err(invalid(
            "cluster.on-no-quorum",
            "quorum needs a third voter: set `witness` too (two nodes alone never lose quorum, \
             they fence)"
                .to_owned(),
        ));
    }
    Ok((witness, policy))
}

/// The fence command (not empty when given) and its timeout.
fn parse_fencing(
    fence_command: Option<String>,
    fence_timeout_ms: u64,
    invalid: &Invalid<'_>,
) -> Result<Option<String>, ConfigError> {
    let fence_command = match fence_command {
        Some(f) if f.trim().is_empty() => {
            return Err(invalid(
                "cluster.fence-command",
                "is empty; remove the key to run without fencing".to_owned(),
            ))
        }
        other => other,
    };
    if fence_timeout_ms == 0 {
        return Err(invalid(
            "cluster.fence-timeout-ms",
            "must be at least 1".to_owned(),
        ));
    }
    Ok(fence_command)
}

/// The resource chain, left to right (the device, implicit or first, is
/// not an entry).
fn parse_resources(
    raw: Vec<RawResource>,
    invalid: &Invalid<'_>,
) -> Result<Vec<ResourceEntry>, ConfigError> {
    let mut resources = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        if let Some(entry) = parse_resource(i, r, invalid)? {
            resources.push(entry);
        }
    }
    if resources.len() > 64 {
        return Err(invalid(
            "cluster.resource",
            "at most 64 resources".to_owned(),
        ));
    }
    Ok(resources)
}

/// Resource `i`: its keys those of its type; `None` for the device.
fn parse_resource(
    i: usize,
    r: RawResource,
    invalid: &Invalid<'_>,
) -> Result<Option<ResourceEntry>, ConfigError> {
    let key = |k: &str| format!("cluster.resource[{i}].{k}");
    let timeout = Duration::from_millis(r.timeout_ms.unwrap_or_else(d_res_timeout));
    if r.timeout_ms == Some(0) {
        return Err(invalid(&key("timeout-ms"), "must be at least 1".to_owned()));
    }
    check_resource_keys(&r, &key, invalid)?;
    let err = |k: &str, message: &str| invalid(&key(k), message.to_owned());
    match r.kind.as_str() {
        "device" => {
            if i != 0 {
                return Err(err(
                    "type",
                    "the device must be the first resource: everything else runs on top of it \
                     (it is implicit when not listed)",
                ));
            }
            Ok(None)
        }
        "filesystem" => {
            let Some(mount_point) = r.mount_point else {
                return Err(err(
                    "mount-point",
                    "a filesystem resource needs its mount point",
                ));
            };
            if !mount_point.is_absolute() {
                return Err(invalid(
                    &key("mount-point"),
                    format!("{} is not an absolute path", mount_point.display()),
                ));
            }
            Ok(Some(ResourceEntry::Filesystem {
                device: r.device,
                mount_point,
                fstype: r.fstype,
                options: r.options,
                timeout,
            }))
        }
        "ip" => ip_entry(r, timeout, &key, invalid).map(Some),
        _ => {
            let Some(script) = r.script.filter(|s| !s.as_os_str().is_empty()) else {
                return Err(err(
                    "script",
                    "a service resource needs `script` (called as SCRIPT start|stop|status)",
                ));
            };
            Ok(Some(ResourceEntry::Service { script, timeout }))
        }
    }
}

/// An ip resource: an address with its prefix, on an interface.
fn ip_entry(
    r: RawResource,
    timeout: Duration,
    key: &dyn Fn(&str) -> String,
    invalid: &Invalid<'_>,
) -> Result<ResourceEntry, ConfigError> {
    let err = |k: &str, message: &str| invalid(&key(k), message.to_owned());
    let Some(addr) = r.address else {
        return Err(err(
            "address",
            "an ip resource needs `address = \"A.B.C.D/PREFIX\"`",
        ));
    };
    let (ip, prefix) = parse_cidr(&addr).map_err(|m| invalid(&key("address"), m))?;
    let Some(interface) = r.interface.filter(|s| !s.is_empty()) else {
        return Err(err(
            "interface",
            "an ip resource needs the interface to add the address on",
        ));
    };
    Ok(ResourceEntry::Ip {
        address: ip,
        prefix,
        interface,
        timeout,
    })
}

/// A known type, and no key that its type does not have.
fn check_resource_keys(
    r: &RawResource,
    key: &dyn Fn(&str) -> String,
    invalid: &Invalid<'_>,
) -> Result<(), ConfigError> {
    let allowed: &[&str] = match r.kind.as_str() {
        "device" => &[],
        "filesystem" => &[
            "device",
            "mount-point",
            "fstype",
            "options",
            "timeout-ms",
            "monitor-interval-ms",
            "monitor-timeout-ms",
            "migration-threshold",
        ],
        "ip" => &[
            "address",
            "interface",
            "timeout-ms",
            "monitor-interval-ms",
            "monitor-timeout-ms",
            "migration-threshold",
        ],
        "service" => &[
            "script",
            "timeout-ms",
            "monitor-interval-ms",
            "monitor-timeout-ms",
            "migration-threshold",
        ],
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
        ("monitor-interval-ms", r.monitor_interval_ms.is_some()),
        ("monitor-timeout-ms", r.monitor_timeout_ms.is_some()),
        ("migration-threshold", r.migration_threshold.is_some()),
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
    Ok(())
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

fn parse_ops(invalid: &Invalid<'_>, r: OpsRaw, fencing: bool) -> Result<OpsSettings, ConfigError> {
    let ping_nodes = parse_ping_nodes(&r.ping_nodes, invalid)?;
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
    let on_stop_failure = parse_stop_failure(
        r.on_stop_failure.as_deref(),
        fencing,
        reboot_command.is_some(),
        invalid,
    )?;
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

/// Each ping node: an IP address, listed once.
fn parse_ping_nodes(raw: &[String], invalid: &Invalid<'_>) -> Result<Vec<IpAddr>, ConfigError> {
    let mut ping_nodes = Vec::new();
    for (i, p) in raw.iter().enumerate() {
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
    Ok(ping_nodes)
}

/// What a failed stop leads to, and what that needs configured.
fn parse_stop_failure(
    on_stop_failure: Option<&str>,
    fencing: bool,
    has_reboot_command: bool,
    invalid: &Invalid<'_>,
) -> Result<crate::vocab::StopFailure, ConfigError> {
    use crate::vocab::StopFailure;
    Ok(match on_stop_failure {
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
            if !has_reboot_command {
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
