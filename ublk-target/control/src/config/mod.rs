//! The resource configuration file: one TOML file per resource, identical on
//! both nodes, like DRBD's `drbd.conf` resource section.
//!
//! Each node finds its own `[[node]]` entry by name (`--node NAME`, default the
//! host name, as DRBD's `on HOSTNAME { ... }` sections do). Keys are
//! kebab-case and unknown keys are rejected, so a typo never silently falls
//! back to a default.
//!
//! ```toml
//! [resource]
//! name = "r0"
//! protocol = "C"                 # A | B | C
//! [net]
//! secret = "change-me"           # required, non-empty
//! timeout-ms = 6000
//! ping-int-ms = 1000
//! ko-count = 7
//! max-buffers = 2048
//! csums = false
//! fencing = "dont-care"         # dont-care | resource-only | resource-and-stonith
//! tls = "off"                    # off | on (mutual TLS 1.3 on the replication link)
//! tls-ca = "/etc/rep/ca.pem"     # needed by tls = "on"
//! # tls-psk-file = "/etc/rep/link.psk"  # instead of tls-ca and the certificates
//! [sync]
//! rate = "100M"                  # bytes/s, K/M/G = powers of 1024, "0" = unlimited
//! al-extents = 1237              # 7..=65534 extents of 4 MiB
//! verify = "crc32c"
//! c-plan-ahead = 0               # tenths of a second; > 0 runs the resync controller
//! c-fill-target = "50K"          # bytes in flight to aim for; "0" = use c-delay-target
//! c-delay-target = 10            # tenths of a second
//! c-max-rate = "100M"            # bytes/s, the controller's ceiling
//! c-min-rate = "250K"            # bytes/s while application I/O goes on; "0" = no throttle
//! [startup]
//! wfc-timeout = 0                # seconds, 0 = wait forever
//! degr-wfc-timeout = 120
//! resume-after-crash = "held-device"  # held-device | always | never ([cluster]: never)
//! [disk]
//! on-io-error = "pass-on"        # pass-on, call-local-io-error or detach
//! [split-brain]
//! after-sb-0pri = "disconnect"
//! after-sb-1pri = "disconnect"
//! after-sb-2pri = "disconnect"
//! [metrics]                      # optional: Prometheus text at GET /metrics
//! listen = "127.0.0.1:9942"      # every node; a [[node]]'s `metrics` wins
//! [handlers]
//! fence-peer = "/usr/lib/rep/crm-fence-peer"   # needed by fencing other than dont-care
//! unfence-peer = "/usr/lib/rep/crm-unfence-peer"
//! timeout-ms = 60000
//! [[node]]
//! name = "alpha"
//! address = "127.0.0.1:7788"
//! disk = "/var/lib/rep/alpha.img"
//! meta-disk = "internal"         # or a path to an external metadata file
//! device = 0                     # /dev/ublkb0
//! nbd = "127.0.0.1:10809"        # optional
//! nbd-allow = ["127.0.0.0/8"]    # optional: only these clients (ADDR/PREFIX)
//! nbd-tls = "off"                # off | on | require (uses tls-cert/tls-key)
//! nbd-tls-ca = "/etc/rep/nbd-clients-ca.pem"  # optional, else [net] tls-ca
//! # nbd-tls-psk-file = "/etc/rep/nbd.psk"  # clients with a pre-shared key instead
//! metrics = "127.0.0.1:9942"     # optional, this node's own metrics address
//! tls-cert = "/etc/rep/alpha.pem" # needed by tls = "on" (SAN DNS:alpha)
//! tls-key = "/etc/rep/alpha.key"
//! [[node]]
//! name = "beta"
//! # ...
//! ```
//!
//! [`Config::to_toml`] writes the file back with every default spelt out
//! (`repctl dump`); it loads to the same `Config`.
//!
//! Parsing is two steps: [`Config::load`] / [`Config::from_str_named`] check
//! everything that can be checked from the text alone; [`Config::check_local_disk`]
//! then checks that this node's backing disk exists (kept apart so tools can
//! read a peer's configuration on a machine that does not have its disks).
//!
//! - here: [`Config`], loading it, and finding this node and its peer.
//! - `sections`: the validated tables ([`Net`], [`Node`], ...).
//! - `policies`: the keys that take one of a few words
//!   ([`ResumeAfterCrash`], [`OnIoError`], [`AfterSb0Pri`], ...).
//! - `rate`: [`parse_rate`] and [`format_rate`] (`sync.rate`).
//! - `raw`: the file as serde reads and writes it, key for key.
//! - `validate`: raw to [`Config`], one step per table.
//! - `handlers`: `[handlers]` and the `[net] fencing` policy that needs one.
//! - `tls`: `[net] tls`/`tls-ca`, the nodes' `tls-cert`/`tls-key`, and
//!   loading them ([`Config::load_tls`]).
//! - `psk`: TLS pre-shared key files (`[net] tls-psk-file`,
//!   `nbd-tls-psk-file`) and loading them ([`Config::load_psk`]).
//! - `dump`: [`Config`] back to TOML or JSON (`repctl dump`).
//! - `error`: [`ConfigError`].

use std::path::{Path, PathBuf};

mod dump;
mod error;
mod handlers;
mod nbd_access;
mod policies;
mod psk;
mod rate;
mod raw;
mod sections;
mod tls;
mod validate;

pub use error::ConfigError;
pub use handlers::{Handlers, HANDLER_MAX_BYTES};
pub use nbd_access::{NbdAccess, NbdTlsMode, NBD_ALLOW_MAX};
pub use policies::{AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, OnIoError, ResumeAfterCrash};
pub use psk::{
    PskEntry, PskKeys, PSK_FILE_MAX_BYTES, PSK_IDENTITY_MAX_BYTES, PSK_KEY_MAX_BYTES,
    PSK_KEY_MIN_BYTES, PSK_LINES_MAX,
};
pub use rate::{format_rate, parse_rate};
pub use sections::{
    Disk, MetaDisk, Metrics, MetricsListen, Net, Node, Resource, SplitBrain, Startup, Syncer,
    VerifyAlg,
};
pub use tls::{crypto_provider, NodeTls, Tls, TlsFiles, TlsMode, PEM_MAX_BYTES};

use raw::RawConfig;

/// Smallest and largest accepted `sync.al-extents` (the range DRBD 8.4 accepts).
pub const AL_EXTENTS_MIN: u32 = 7;
/// See [`AL_EXTENTS_MIN`].
pub const AL_EXTENTS_MAX: u32 = 65534;
/// Longest resource or node name, in bytes (the superblock stores 63 + NUL).
pub const NAME_MAX: usize = 63;

/// A validated resource configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (used in messages).
    pub path: PathBuf,
    pub resource: Resource,
    pub net: Net,
    pub sync: Syncer,
    pub startup: Startup,
    pub disk: Disk,
    pub split_brain: SplitBrain,
    /// `[metrics]` and the nodes' `metrics` keys.
    pub metrics: Metrics,
    /// `[handlers]` (fence-peer, unfence-peer).
    pub handlers: Handlers,
    /// `[net] tls`, `tls-ca` and the nodes' `tls-cert`/`tls-key`.
    pub tls: Tls,
    /// Exactly two nodes, in file order.
    pub nodes: [Node; 2],
    /// The `[cluster]` table as written. It belongs to the cluster agent,
    /// which validates it with its own parser; repd only notes that it is
    /// there. Kept so that `repctl dump` carries it over unchanged.
    pub cluster: Option<toml::Value>,
}

/// The host name of this machine, as `uname -n` prints it.
///
/// # Errors
/// When the system call fails or the name is not UTF-8.
pub fn host_name() -> Result<String, ConfigError> {
    let os = nix::unistd::gethostname().map_err(|e| ConfigError::Hostname {
        message: e.to_string(),
    })?;
    os.into_string().map_err(|_| ConfigError::Hostname {
        message: "the host name is not valid UTF-8".to_owned(),
    })
}

impl Config {
    /// Read and validate a configuration file (everything except the local
    /// disk's existence: see [`Config::check_local_disk`]).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the offending key.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str_named(&text, path)
    }

    /// Parse and validate configuration text; `path` is only used in messages
    /// (and kept in [`Config::path`]).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the offending key.
    pub fn from_str_named(text: &str, path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Self::validate(raw, path)
    }

    /// The node called `name`, if configured.
    #[must_use]
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// This node and its peer. `name` is the `--node` option; `None` means the
    /// host name (and, if that is a dotted FQDN without a match, its first
    /// label).
    ///
    /// # Errors
    /// [`ConfigError::UnknownNode`] listing the configured names, or
    /// [`ConfigError::Hostname`].
    pub fn local(&self, name: Option<&str>) -> Result<(&Node, &Node), ConfigError> {
        let source_of_name = if name.is_some() {
            "--node"
        } else {
            "the host name"
        };
        let wanted = match name {
            Some(n) => n.to_owned(),
            None => {
                let h = host_name()?;
                if self.node(&h).is_none() {
                    match h.split_once('.') {
                        Some((short, _)) if self.node(short).is_some() => short.to_owned(),
                        _ => h,
                    }
                } else {
                    h
                }
            }
        };
        let [a, b] = &self.nodes;
        if a.name == wanted {
            Ok((a, b))
        } else if b.name == wanted {
            Ok((b, a))
        } else {
            Err(ConfigError::UnknownNode {
                path: self.path.clone(),
                name: wanted,
                known: format!("\"{}\" and \"{}\"", a.name, b.name),
                source_of_name,
            })
        }
    }

    /// Where `node` serves Prometheus metrics: its own `metrics` key, else
    /// `metrics.listen`; `None` when neither is set.
    #[must_use]
    pub fn metrics_listen(&self, node: &Node) -> Option<MetricsListen> {
        let i = self.nodes.iter().position(|n| n.name == node.name)?;
        let own = self.metrics.node.get(i).copied().flatten();
        match (own, self.metrics.listen) {
            (Some(addr), _) => Some(MetricsListen {
                addr,
                key: format!("node[{i}].metrics"),
            }),
            (None, Some(addr)) => Some(MetricsListen {
                addr,
                key: "metrics.listen".to_owned(),
            }),
            (None, None) => None,
        }
    }

    /// Check that `node`'s backing disk exists (call it for the local node only).
    ///
    /// # Errors
    /// [`ConfigError::DiskMissing`] naming the path.
    pub fn check_local_disk(&self, node: &Node) -> Result<(), ConfigError> {
        if node.disk.exists() {
            Ok(())
        } else {
            Err(ConfigError::DiskMissing {
                path: self.path.clone(),
                node: node.name.clone(),
                disk: node.disk.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests;
