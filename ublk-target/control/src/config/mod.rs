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
//! [sync]
//! rate = "100M"                  # bytes/s, K/M/G = powers of 1024, "0" = unlimited
//! al-extents = 1237              # 7..=65534 extents of 4 MiB
//! verify = "crc32c"
//! [startup]
//! wfc-timeout = 0                # seconds, 0 = wait forever
//! degr-wfc-timeout = 120
//! resume-after-crash = "held-device"  # held-device | always | never ([cluster]: never)
//! [disk]
//! on-io-error = "pass-on"        # pass-on (detach: not yet)
//! [split-brain]
//! after-sb-0pri = "disconnect"
//! after-sb-1pri = "disconnect"
//! after-sb-2pri = "disconnect"
//! [[node]]
//! name = "alpha"
//! address = "127.0.0.1:7788"
//! disk = "/var/lib/rep/alpha.img"
//! meta-disk = "internal"         # or a path to an external metadata file
//! device = 0                     # /dev/ublkb0
//! nbd = "127.0.0.1:10809"        # optional
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

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use replication_proto::wire::Protocol;
use serde::{Deserialize, Serialize};

/// Smallest and largest accepted `sync.al-extents` (the range DRBD 8.4 accepts).
pub const AL_EXTENTS_MIN: u32 = 7;
/// See [`AL_EXTENTS_MIN`].
pub const AL_EXTENTS_MAX: u32 = 65534;
/// Longest resource or node name, in bytes (the superblock stores 63 + NUL).
pub const NAME_MAX: usize = 63;

/// Everything that can be wrong with a configuration file. Every message
/// names the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax errors, unknown keys, values of the wrong type.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value that parsed but is not acceptable.
    #[error("config file {path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "config file {path}: no [[node]] is named `{name}` (taken from {source_of_name}); the nodes are {known}; \
         pass --node with one of those names"
    )]
    UnknownNode {
        path: PathBuf,
        name: String,
        known: String,
        source_of_name: &'static str,
    },
    #[error(
        "config file {path}: node `{node}`: disk {disk} does not exist; create it (for a test, e.g. \
         `truncate -s 1G {disk}`) or fix `disk` in the [[node]] entry of `{node}`"
    )]
    DiskMissing {
        path: PathBuf,
        node: String,
        disk: PathBuf,
    },
    #[error("cannot determine this machine's host name ({message}); pass --node NAME")]
    Hostname { message: String },
}

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
    /// Exactly two nodes, in file order.
    pub nodes: [Node; 2],
    /// The `[cluster]` table as written. It belongs to the cluster agent,
    /// which validates it with its own parser; repd only notes that it is
    /// there. Kept so that `repctl dump` carries it over unchanged.
    pub cluster: Option<toml::Value>,
}

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

/// `disk.on-io-error`: what to do when the backing disk reports an error.
/// DRBD's `detach` (go on diskless, reading from the peer) and
/// `call-local-io-error` are refused with a message rather than accepted
/// and ignored: repd has no diskless mode yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnIoError {
    /// The request fails with the disk's error; a failed write's range is
    /// marked out of sync, so the next resync makes both copies equal.
    #[default]
    PassOn,
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
        })
    }
}

impl FromStr for OnIoError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pass-on" => Ok(Self::PassOn),
            "detach" | "call-local-io-error" => Err(format!(
                "\"{s}\" is not supported yet (repd has no diskless mode): a local I/O error \
                 fails the request and marks its range out of sync; set on-io-error = \"pass-on\""
            )),
            _ => Err(format!("unknown value \"{s}\"; expected: pass-on")),
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

/// Parse a rate: an integer number of bytes per second, optionally followed by
/// `K`, `M` or `G` (powers of 1024, case-insensitive). `"0"` means unlimited.
///
/// # Errors
/// A message saying what is wrong with the text.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => {
                    return Err(format!(
                        "invalid rate \"{s}\": unknown suffix `{c}` (use K, M or G, e.g. \"100M\")"
                    ))
                }
            };
            (t.get(..i).unwrap_or(""), mult)
        }
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid rate \"{s}\": expected a whole number with an optional K/M/G suffix, e.g. \"100M\" (\"0\" = unlimited)"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid rate \"{s}\": number too large"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid rate \"{s}\": number too large"))
}

/// The shortest text [`parse_rate`] reads back as `rate`: the largest of
/// G, M, K that divides it exactly, else plain bytes; `"0"` = unlimited.
#[must_use]
pub fn format_rate(rate: u64) -> String {
    if rate == 0 {
        return "0".to_owned();
    }
    for (shift, suffix) in [(30, 'G'), (20, 'M'), (10, 'K')] {
        if rate % (1u64 << shift) == 0 {
            return format!("{}{suffix}", rate >> shift);
        }
    }
    rate.to_string()
}

// ---------------------------------------------------------------------------
// Raw (serde) form: exactly what the file says; validated into `Config`.

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    resource: RawResource,
    #[serde(default)]
    net: RawNet,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    startup: RawStartup,
    #[serde(default)]
    disk: RawDisk,
    #[serde(default)]
    split_brain: RawSplitBrain,
    #[serde(default)]
    node: Vec<RawNode>,
    /// The cluster agent's section (heartbeat, resources, witness). It has
    /// its own parser in `cluster-agent`; the node daemon only notes that it
    /// is there (the agent then decides the roles, see `resume-after-crash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<toml::Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawResource {
    name: String,
    #[serde(default = "default_protocol")]
    protocol: String,
}

fn default_protocol() -> String {
    "C".to_owned()
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawNet {
    secret: String,
    timeout_ms: u64,
    ping_int_ms: u64,
    ko_count: u32,
    max_buffers: u32,
    csums: bool,
}

impl Default for RawNet {
    fn default() -> Self {
        Self {
            secret: String::new(),
            timeout_ms: 6000,
            ping_int_ms: 1000,
            ko_count: 7,
            max_buffers: 2048,
            csums: false,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum RawRate {
    Int(u64),
    Text(String),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawSync {
    rate: RawRate,
    al_extents: u32,
    verify: String,
}

impl Default for RawSync {
    fn default() -> Self {
        Self {
            rate: RawRate::Text("100M".to_owned()),
            al_extents: 1237,
            verify: "crc32c".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawStartup {
    wfc_timeout: u64,
    degr_wfc_timeout: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    resume_after_crash: Option<String>,
}

impl Default for RawStartup {
    fn default() -> Self {
        Self {
            wfc_timeout: 0,
            degr_wfc_timeout: 120,
            resume_after_crash: None,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawDisk {
    on_io_error: String,
}

impl Default for RawDisk {
    fn default() -> Self {
        Self {
            on_io_error: "pass-on".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawSplitBrain {
    after_sb_0pri: String,
    after_sb_1pri: String,
    after_sb_2pri: String,
}

impl Default for RawSplitBrain {
    fn default() -> Self {
        Self {
            after_sb_0pri: "disconnect".to_owned(),
            after_sb_1pri: "disconnect".to_owned(),
            after_sb_2pri: "disconnect".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNode {
    name: String,
    address: String,
    disk: PathBuf,
    #[serde(default = "default_meta_disk")]
    meta_disk: String,
    #[serde(default)]
    device: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbd: Option<String>,
}

fn default_meta_disk() -> String {
    "internal".to_owned()
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

fn check_name(path: &Path, key: &str, name: &str) -> Result<(), ConfigError> {
    let bad = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        message,
    };
    if name.is_empty() {
        return Err(bad("must not be empty".to_owned()));
    }
    if name.len() > NAME_MAX {
        return Err(bad(format!(
            "\"{name}\" is {} bytes long; at most {NAME_MAX} are allowed",
            name.len()
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad(format!(
            "\"{name}\" contains characters other than letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
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

    fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };

        // [resource]
        check_name(path, "resource.name", &raw.resource.name)?;
        let protocol = match raw.resource.protocol.as_str() {
            "A" | "a" => Protocol::A,
            "B" | "b" => Protocol::B,
            "C" | "c" => Protocol::C,
            other => {
                return Err(invalid(
                    "resource.protocol",
                    format!("unknown protocol \"{other}\"; expected \"A\", \"B\" or \"C\""),
                ))
            }
        };

        // [net]
        let n = raw.net;
        if n.secret.is_empty() {
            return Err(invalid(
                "net.secret",
                "a shared secret is required (the same on both nodes), e.g. secret = \"some long random string\""
                    .to_owned(),
            ));
        }
        if n.timeout_ms == 0 {
            return Err(invalid("net.timeout-ms", "must be at least 1".to_owned()));
        }
        if n.ping_int_ms == 0 {
            return Err(invalid("net.ping-int-ms", "must be at least 1".to_owned()));
        }
        if n.ko_count == 0 {
            return Err(invalid("net.ko-count", "must be at least 1".to_owned()));
        }
        if n.max_buffers == 0 {
            return Err(invalid("net.max-buffers", "must be at least 1".to_owned()));
        }
        let net = Net {
            secret: n.secret,
            timeout: Duration::from_millis(n.timeout_ms),
            ping_int: Duration::from_millis(n.ping_int_ms),
            ko_count: n.ko_count,
            max_buffers: n.max_buffers,
            csums: n.csums,
        };

        // [sync]
        let rate = match &raw.sync.rate {
            RawRate::Int(n) => *n,
            RawRate::Text(s) => parse_rate(s).map_err(|m| invalid("sync.rate", m))?,
        };
        let al_extents = raw.sync.al_extents;
        if !(AL_EXTENTS_MIN..=AL_EXTENTS_MAX).contains(&al_extents) {
            return Err(invalid(
                "sync.al-extents",
                format!(
                    "{al_extents} is out of range; must be {AL_EXTENTS_MIN}..={AL_EXTENTS_MAX}"
                ),
            ));
        }
        let verify = match raw.sync.verify.as_str() {
            "crc32c" => VerifyAlg::Crc32c,
            other => {
                return Err(invalid(
                    "sync.verify",
                    format!("unsupported digest \"{other}\"; only \"crc32c\" is supported"),
                ))
            }
        };
        let sync = Syncer {
            rate,
            al_extents,
            verify,
        };

        // [startup]
        let secs = |s: u64| (s != 0).then(|| Duration::from_secs(s));
        // With a [cluster] table the cluster agent decides the roles: a
        // repd that promoted itself behind its back could make a second
        // writer (the agent may be promoting the peer right now).
        let managed = raw.cluster.is_some();
        let resume_after_crash = match raw.startup.resume_after_crash.as_deref() {
            None if managed => ResumeAfterCrash::Never,
            None => ResumeAfterCrash::default(),
            Some(t) => {
                let v = t
                    .parse()
                    .map_err(|e| invalid("startup.resume-after-crash", e))?;
                if managed && v != ResumeAfterCrash::Never {
                    return Err(invalid(
                        "startup.resume-after-crash",
                        format!(
                            "\"{t}\" with a [cluster] table: the cluster agent decides which node \
                             is Primary, also after a crash of repd; remove the key (or set \"never\")"
                        ),
                    ));
                }
                v
            }
        };
        let startup = Startup {
            wfc_timeout: secs(raw.startup.wfc_timeout),
            degr_wfc_timeout: secs(raw.startup.degr_wfc_timeout),
            resume_after_crash,
        };

        // [disk]
        let disk = Disk {
            on_io_error: raw
                .disk
                .on_io_error
                .parse()
                .map_err(|m| invalid("disk.on-io-error", m))?,
        };

        // [split-brain]
        let sb = raw.split_brain;
        let split_brain = SplitBrain {
            after_sb_0pri: sb
                .after_sb_0pri
                .parse()
                .map_err(|m| invalid("split-brain.after-sb-0pri", m))?,
            after_sb_1pri: sb
                .after_sb_1pri
                .parse()
                .map_err(|m| invalid("split-brain.after-sb-1pri", m))?,
            after_sb_2pri: sb
                .after_sb_2pri
                .parse()
                .map_err(|m| invalid("split-brain.after-sb-2pri", m))?,
        };

        // [[node]]
        let found = raw.node.len();
        if found != 2 {
            return Err(invalid(
                "node",
                format!("exactly two [[node]] entries are needed (this node and its peer), found {found}"),
            ));
        }
        let mut nodes = Vec::with_capacity(found);
        for (i, rn) in raw.node.into_iter().enumerate() {
            let label = if rn.name.is_empty() {
                format!("node[{i}]")
            } else {
                format!("node \"{}\"", rn.name)
            };
            check_name(path, &format!("node[{i}].name"), &rn.name)?;
            let address: SocketAddr = rn.address.parse().map_err(|_| {
                invalid(
                    &format!("node[{i}].address"),
                    format!(
                        "{label}: cannot parse \"{}\" as IP:PORT (e.g. \"192.168.1.10:7788\" or \"[fe80::1]:7788\")",
                        rn.address
                    ),
                )
            })?;
            let nbd = match rn.nbd {
                None => None,
                Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        &format!("node[{i}].nbd"),
                        format!(
                            "{label}: cannot parse \"{s}\" as IP:PORT (e.g. \"127.0.0.1:10809\")"
                        ),
                    )
                })?),
            };
            if rn.disk.as_os_str().is_empty() {
                return Err(invalid(
                    &format!("node[{i}].disk"),
                    format!("{label}: must not be empty"),
                ));
            }
            let meta_disk = match rn.meta_disk.as_str() {
                "internal" => MetaDisk::Internal,
                "" => {
                    return Err(invalid(
                        &format!("node[{i}].meta-disk"),
                        format!("{label}: must be \"internal\" or the path of a metadata file"),
                    ))
                }
                p => {
                    let p = PathBuf::from(p);
                    if p == rn.disk {
                        return Err(invalid(
                            &format!("node[{i}].meta-disk"),
                            format!("{label}: is the data disk itself; use meta-disk = \"internal\" for that"),
                        ));
                    }
                    MetaDisk::External(p)
                }
            };
            nodes.push(Node {
                name: rn.name,
                address,
                disk: rn.disk,
                meta_disk,
                device: rn.device,
                nbd,
            });
        }
        let nodes: [Node; 2] = nodes.try_into().map_err(|_| {
            invalid(
                "node",
                format!(
                    "exactly two [[node]] entries are needed (this node and its peer), found {found}"
                ),
            )
        })?;
        let [a, b] = &nodes;
        if a.name == b.name {
            return Err(invalid(
                "node[1].name",
                format!(
                    "duplicate node name \"{}\"; the two nodes need different names",
                    a.name
                ),
            ));
        }
        if a.address == b.address {
            return Err(invalid(
                "node[1].address",
                format!(
                    "duplicate address {}: nodes \"{}\" and \"{}\" both use it",
                    a.address, a.name, b.name
                ),
            ));
        }
        if a.nbd.is_some() && a.nbd == b.nbd {
            return Err(invalid(
                "node[1].nbd",
                format!(
                    "duplicate nbd address {}: nodes \"{}\" and \"{}\" both use it",
                    b.nbd.map(|s| s.to_string()).unwrap_or_default(),
                    a.name,
                    b.name
                ),
            ));
        }
        for (i, n) in nodes.iter().enumerate() {
            if let Some(nbd) = n.nbd {
                if nodes.iter().any(|m| m.address == nbd) {
                    return Err(invalid(
                        &format!("node[{i}].nbd"),
                        format!(
                            "node \"{}\": nbd address {nbd} is also a replication address",
                            n.name
                        ),
                    ));
                }
            }
        }
        if let AfterSb0Pri::DiscardNode(name) = &split_brain.after_sb_0pri {
            if nodes.iter().all(|n| &n.name != name) {
                return Err(invalid(
                    "split-brain.after-sb-0pri",
                    format!(
                        "discard-node-{name} names no configured node; the nodes are \"{}\" and \"{}\"",
                        a.name, b.name
                    ),
                ));
            }
        }

        Ok(Config {
            path: path.to_owned(),
            resource: Resource {
                name: raw.resource.name,
                protocol,
            },
            net,
            sync,
            startup,
            disk,
            split_brain,
            nodes,
            cluster: raw.cluster,
        })
    }

    /// The resource file that loads to this configuration: every section
    /// and key with its effective value (defaults filled in), in the layout
    /// of `examples/r0.toml` (`repctl dump`). Written through the same serde
    /// structs that read the file, so the key names cannot drift apart.
    ///
    /// # Errors
    /// When a path is not valid UTF-8 (TOML strings must be).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(&self.to_raw())
    }

    /// The same as [`Config::to_toml`], as pretty JSON with the keys in the
    /// same order (`repctl dump --json`).
    ///
    /// # Errors
    /// When a path is not valid UTF-8.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(&self.to_raw())
    }

    /// The raw form with every value spelt out: what [`Config::validate`]
    /// turns back into `self`.
    fn to_raw(&self) -> RawConfig {
        // Both durations were read as whole u64 milliseconds or seconds.
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let secs = |d: Option<Duration>| d.map_or(0, |d| d.as_secs());
        let protocol = match self.resource.protocol {
            Protocol::A => "A",
            Protocol::B => "B",
            Protocol::C => "C",
        };
        let verify = match self.sync.verify {
            VerifyAlg::Crc32c => "crc32c",
        };
        RawConfig {
            resource: RawResource {
                name: self.resource.name.clone(),
                protocol: protocol.to_owned(),
            },
            net: RawNet {
                secret: self.net.secret.clone(),
                timeout_ms: ms(self.net.timeout),
                ping_int_ms: ms(self.net.ping_int),
                ko_count: self.net.ko_count,
                max_buffers: self.net.max_buffers,
                csums: self.net.csums,
            },
            sync: RawSync {
                rate: RawRate::Text(format_rate(self.sync.rate)),
                al_extents: self.sync.al_extents,
                verify: verify.to_owned(),
            },
            startup: RawStartup {
                wfc_timeout: secs(self.startup.wfc_timeout),
                degr_wfc_timeout: secs(self.startup.degr_wfc_timeout),
                resume_after_crash: Some(self.startup.resume_after_crash.as_str().to_owned()),
            },
            disk: RawDisk {
                on_io_error: self.disk.on_io_error.to_string(),
            },
            split_brain: RawSplitBrain {
                after_sb_0pri: self.split_brain.after_sb_0pri.to_string(),
                after_sb_1pri: self.split_brain.after_sb_1pri.to_string(),
                after_sb_2pri: self.split_brain.after_sb_2pri.to_string(),
            },
            node: self
                .nodes
                .iter()
                .map(|n| RawNode {
                    name: n.name.clone(),
                    address: n.address.to_string(),
                    disk: n.disk.clone(),
                    meta_disk: n.meta_disk.to_string(),
                    device: n.device,
                    nbd: n.nbd.map(|a| a.to_string()),
                })
                .collect(),
            cluster: self.cluster.clone(),
        }
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
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[resource]
name = "r0"
[net]
secret = "s3cret"
[[node]]
name = "alpha"
address = "127.0.0.1:7788"
disk = "/tmp/a.img"
[[node]]
name = "beta"
address = "127.0.0.1:7789"
disk = "/tmp/b.img"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_named(text, "test.toml")
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.resource.name, "r0");
        assert_eq!(c.resource.protocol, Protocol::C);
        assert_eq!(c.net.timeout, Duration::from_millis(6000));
        assert_eq!(c.net.ping_int, Duration::from_millis(1000));
        assert_eq!(c.net.ko_count, 7);
        assert_eq!(c.net.max_buffers, 2048);
        assert!(!c.net.csums);
        assert_eq!(c.sync.rate, 100 << 20);
        assert_eq!(c.sync.al_extents, 1237);
        assert_eq!(c.sync.verify, VerifyAlg::Crc32c);
        assert_eq!(c.startup.wfc_timeout, None);
        assert_eq!(c.startup.degr_wfc_timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.disk.on_io_error, OnIoError::PassOn);
        assert_eq!(c.split_brain, SplitBrain::default());
        assert_eq!(c.nodes[0].meta_disk, MetaDisk::Internal);
        assert_eq!(c.nodes[0].device, 0);
        assert_eq!(c.nodes[0].nbd, None);
        assert_eq!(c.path, PathBuf::from("test.toml"));
    }

    #[test]
    fn resume_after_crash_defaults_and_the_cluster_agent_decides() {
        let with = |extra: &str| format!("{MINIMAL}{extra}");
        let get = |extra: &str| parse(&with(extra)).unwrap().startup.resume_after_crash;
        assert_eq!(get(""), ResumeAfterCrash::HeldDevice);
        for v in [
            ResumeAfterCrash::HeldDevice,
            ResumeAfterCrash::Always,
            ResumeAfterCrash::Never,
        ] {
            let t = format!("[startup]\nresume-after-crash = \"{}\"\n", v.as_str());
            assert_eq!(get(&t), v);
        }
        let e = err(&with("[startup]\nresume-after-crash = \"yes\"\n"));
        assert!(e.contains("held-device, always, never"), "{e}");
        // A [cluster] table: the agent decides, repd never by itself.
        let cluster = "[cluster]\nauth-key = \"k\"\n";
        assert_eq!(get(cluster), ResumeAfterCrash::Never);
        let never = format!("{cluster}[startup]\nresume-after-crash = \"never\"\n");
        assert_eq!(get(&never), ResumeAfterCrash::Never);
        for v in ["held-device", "always"] {
            let e = err(&with(&format!(
                "{cluster}[startup]\nresume-after-crash = \"{v}\"\n"
            )));
            assert!(e.contains("the cluster agent decides"), "{e}");
        }
    }

    #[test]
    fn sample_file_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/r0.toml");
        let c = Config::load(path).unwrap();
        assert_eq!(c.resource.name, "r0");
        let (alpha, beta) = c.local(Some("alpha")).unwrap();
        assert_eq!(alpha.address, "127.0.0.1:7788".parse().unwrap());
        assert_eq!(beta.address, "127.0.0.1:7789".parse().unwrap());
        assert_eq!(alpha.disk, PathBuf::from("/var/lib/rep/alpha.img"));
        assert_eq!(beta.disk, PathBuf::from("/var/lib/rep/beta.img"));
        let (b, a) = c.local(Some("beta")).unwrap();
        assert_eq!((b.name.as_str(), a.name.as_str()), ("beta", "alpha"));
        assert!(c.node("alpha").is_some());
        assert!(c.node("gamma").is_none());
    }

    #[test]
    fn full_values() {
        let text = r#"
[resource]
name = "web"
protocol = "A"
[net]
secret = "x"
timeout-ms = 100
ping-int-ms = 50
ko-count = 3
max-buffers = 64
csums = true
[sync]
rate = "10M"
al-extents = 257
verify = "crc32c"
[startup]
wfc-timeout = 30
degr-wfc-timeout = 0
[disk]
on-io-error = "pass-on"
[split-brain]
after-sb-0pri = "discard-node-beta"
after-sb-1pri = "consensus"
after-sb-2pri = "call-pri-lost-after-sb"
[[node]]
name = "alpha"
address = "[::1]:7788"
disk = "/dev/sdb1"
meta-disk = "/dev/sdc1"
device = 3
nbd = "127.0.0.1:10809"
[[node]]
name = "beta"
address = "10.0.0.2:7788"
disk = "/dev/sdb1"
nbd = "127.0.0.1:10810"
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.resource.protocol, Protocol::A);
        assert_eq!(c.net.timeout, Duration::from_millis(100));
        assert!(c.net.csums);
        assert_eq!(c.sync.rate, 10 << 20);
        assert_eq!(c.sync.al_extents, 257);
        assert_eq!(c.startup.wfc_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.startup.degr_wfc_timeout, None);
        assert_eq!(c.disk.on_io_error, OnIoError::PassOn);
        assert_eq!(
            c.split_brain.after_sb_0pri,
            AfterSb0Pri::DiscardNode("beta".into())
        );
        assert_eq!(c.split_brain.after_sb_1pri, AfterSb1Pri::Consensus);
        assert_eq!(c.split_brain.after_sb_2pri, AfterSb2Pri::CallPriLostAfterSb);
        assert_eq!(c.nodes[0].meta_disk, MetaDisk::External("/dev/sdc1".into()));
        assert_eq!(c.nodes[0].device_path(), PathBuf::from("/dev/ublkb3"));
        assert_eq!(c.nodes[0].nbd, Some("127.0.0.1:10809".parse().unwrap()));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert_eq!(parse_rate("10K"), Ok(10 << 10));
        assert_eq!(parse_rate("10k"), Ok(10 << 10));
        assert_eq!(parse_rate("100M"), Ok(100 << 20));
        assert_eq!(parse_rate("2G"), Ok(2 << 30));
        assert!(parse_rate("").is_err());
        assert!(parse_rate("M").is_err());
        assert!(parse_rate("10T").is_err());
        assert!(parse_rate("1.5M").is_err());
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("99999999999999999999G").is_err());
        let c = parse(&MINIMAL.replace(
            "[[node]]\nname = \"alpha\"",
            "[sync]\nrate = 1000\n[[node]]\nname = \"alpha\"",
        ))
        .unwrap();
        assert_eq!(c.sync.rate, 1000);
        assert_eq!(c.sync.rate_limit(), Some(1000));
        let c = parse(&MINIMAL.replace(
            "[[node]]\nname = \"alpha\"",
            "[sync]\nrate = \"0\"\n[[node]]\nname = \"alpha\"",
        ))
        .unwrap();
        assert_eq!(c.sync.rate_limit(), None);
        let e = err(&MINIMAL.replace(
            "[[node]]\nname = \"alpha\"",
            "[sync]\nrate = \"fast\"\n[[node]]\nname = \"alpha\"",
        ));
        assert!(e.contains("sync.rate") && e.contains("fast"), "{e}");
    }

    #[test]
    fn format_rate_reads_back() {
        for (rate, text) in [
            (0, "0"),
            (1000, "1000"),
            (4096, "4K"),
            (100 << 20, "100M"),
            (1536 << 20, "1536M"),
            (2 << 30, "2G"),
        ] {
            assert_eq!(format_rate(rate), text);
            assert_eq!(parse_rate(text), Ok(rate));
        }
    }

    /// `repctl dump`: the written file loads to the same configuration,
    /// defaults spelt out, and writing it again changes nothing.
    #[test]
    fn to_toml_round_trips() {
        let cluster = format!(
            "{MINIMAL}[cluster]\nauth-key = \"k\"\n[[cluster.path]]\nnode = \"alpha\"\n\
             address = \"127.0.0.1:7000\"\n[[cluster.resource]]\nkind = \"device\"\n"
        );
        let full = MINIMAL
            .replace("name = \"r0\"", "name = \"r0\"\nprotocol = \"a\"")
            .replace(
                "disk = \"/tmp/a.img\"",
                "disk = \"/tmp/a.img\"\nmeta-disk = \"/tmp/a.md\"\nnbd = \"[::1]:10809\"\ndevice = 4",
            )
            .replace(
                "[[node]]\nname = \"alpha\"",
                "[sync]\nrate = 3000\n[startup]\ndegr-wfc-timeout = 0\nwfc-timeout = 9\n\
                 [split-brain]\nafter-sb-0pri = \"discard-node-beta\"\n[[node]]\nname = \"alpha\"",
            );
        // TOML's escapes: quotes, a comment sign, a newline, a space in a path.
        let odd = MINIMAL
            .replace("\"s3cret\"", "'a \"quoted\" #secret'")
            .replace("/tmp/b.img", "/tmp/b disk\\n.img");
        let c = parse(&odd).unwrap();
        assert_eq!(c.net.secret, "a \"quoted\" #secret");
        assert_eq!(c.nodes[1].disk, PathBuf::from("/tmp/b disk\n.img"));
        for text in [MINIMAL.to_owned(), full, cluster, odd] {
            let c = parse(&text).unwrap();
            let dumped = c.to_toml().unwrap();
            let again = parse(&dumped).unwrap_or_else(|e| panic!("{e}\n{dumped}"));
            assert_eq!(again, c, "{dumped}");
            assert_eq!(again.to_toml().unwrap(), dumped);
        }
        let dumped = parse(MINIMAL).unwrap().to_toml().unwrap();
        for line in [
            "protocol = \"C\"",
            "timeout-ms = 6000",
            "rate = \"100M\"",
            "degr-wfc-timeout = 120",
            "resume-after-crash = \"held-device\"",
            "on-io-error = \"pass-on\"",
            "after-sb-2pri = \"disconnect\"",
            "meta-disk = \"internal\"",
            "device = 0",
        ] {
            assert!(dumped.lines().any(|l| l == line), "{line} in\n{dumped}");
        }
        assert!(!dumped.contains("nbd"), "{dumped}");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "disconnect",
            "discard-younger-primary",
            "discard-older-primary",
            "discard-zero-changes",
            "discard-least-changes",
            "discard-node-x",
        ] {
            assert_eq!(s.parse::<AfterSb0Pri>().unwrap().to_string(), s);
        }
        for s in [
            "disconnect",
            "consensus",
            "discard-secondary",
            "call-pri-lost-after-sb",
        ] {
            assert_eq!(s.parse::<AfterSb1Pri>().unwrap().to_string(), s);
        }
        for s in ["disconnect", "call-pri-lost-after-sb"] {
            assert_eq!(s.parse::<AfterSb2Pri>().unwrap().to_string(), s);
        }
        assert_eq!(
            "pass-on".parse::<OnIoError>().unwrap().to_string(),
            "pass-on"
        );
        assert!("discard-node-".parse::<AfterSb0Pri>().is_err());
        assert_eq!(MetaDisk::Internal.to_string(), "internal");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&MINIMAL.replace("secret = \"s3cret\"", "secret = \"s3cret\"\ntimeout = 5"));
        assert!(
            e.contains("timeout") && e.contains("test.toml") && e.contains("unknown field"),
            "{e}"
        );
        let e = err(&MINIMAL.replace(
            "disk = \"/tmp/a.img\"",
            "disk = \"/tmp/a.img\"\nmeta_disk = \"internal\"",
        ));
        assert!(e.contains("meta_disk"), "{e}");
        let e = err(&format!("{MINIMAL}\n[syncer]\nrate = \"1M\"\n"));
        assert!(e.contains("syncer"), "{e}");
    }

    #[test]
    fn syntax_error_names_file() {
        let e = err("[resource\nname = 1");
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn missing_resource_section() {
        let e = err("[net]\nsecret = \"x\"\n");
        assert!(e.contains("resource"), "{e}");
    }

    #[test]
    fn node_count() {
        let one = MINIMAL.split("[[node]]\nname = \"beta\"").next().unwrap();
        let e = err(one);
        assert!(e.contains("exactly two") && e.contains("found 1"), "{e}");
        let three = format!("{MINIMAL}[[node]]\nname = \"gamma\"\naddress = \"127.0.0.1:7790\"\ndisk = \"/tmp/c\"\n");
        let e = err(&three);
        assert!(e.contains("found 3"), "{e}");
        let none = "[resource]\nname = \"r0\"\n[net]\nsecret = \"x\"\n";
        assert!(err(none).contains("found 0"));
    }

    #[test]
    fn duplicate_names_and_addresses() {
        let e = err(&MINIMAL.replace("name = \"beta\"", "name = \"alpha\""));
        assert!(
            e.contains("duplicate node name") && e.contains("alpha"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("127.0.0.1:7789", "127.0.0.1:7788"));
        assert!(
            e.contains("duplicate address") && e.contains("127.0.0.1:7788"),
            "{e}"
        );
        let both_nbd = MINIMAL
            .replace(
                "disk = \"/tmp/a.img\"",
                "disk = \"/tmp/a.img\"\nnbd = \"127.0.0.1:10809\"",
            )
            .replace(
                "disk = \"/tmp/b.img\"",
                "disk = \"/tmp/b.img\"\nnbd = \"127.0.0.1:10809\"",
            );
        let e = err(&both_nbd);
        assert!(e.contains("duplicate nbd address"), "{e}");
        let clash = MINIMAL.replace(
            "disk = \"/tmp/a.img\"",
            "disk = \"/tmp/a.img\"\nnbd = \"127.0.0.1:7789\"",
        );
        let e = err(&clash);
        assert!(
            e.contains("node[0].nbd") && e.contains("replication address"),
            "{e}"
        );
    }

    #[test]
    fn bad_addresses() {
        let e = err(&MINIMAL.replace("127.0.0.1:7789", "beta-host:7789"));
        assert!(
            e.contains("node[1].address") && e.contains("beta-host:7789"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("127.0.0.1:7788", "127.0.0.1"));
        assert!(e.contains("node[0].address"), "{e}");
        let e = err(&MINIMAL.replace(
            "disk = \"/tmp/a.img\"",
            "disk = \"/tmp/a.img\"\nnbd = \"nowhere\"",
        ));
        assert!(e.contains("node[0].nbd") && e.contains("nowhere"), "{e}");
    }

    #[test]
    fn unknown_local_node_lists_names() {
        let c = parse(MINIMAL).unwrap();
        let e = c.local(Some("gamma")).unwrap_err().to_string();
        assert!(
            e.contains("gamma")
                && e.contains("\"alpha\"")
                && e.contains("\"beta\"")
                && e.contains("--node"),
            "{e}"
        );
    }

    #[test]
    fn local_defaults_to_host_name() {
        let host = host_name().unwrap();
        let short = host.split('.').next().unwrap().to_owned();
        if short.is_empty() || short == "beta" || check_name(Path::new("x"), "x", &short).is_err() {
            return;
        }
        let text = MINIMAL.replace("name = \"alpha\"", &format!("name = \"{short}\""));
        let c = parse(&text).unwrap();
        let (me, peer) = c.local(None).unwrap();
        assert_eq!(me.name, short);
        assert_eq!(peer.name, "beta");
    }

    #[test]
    fn local_disk_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("alpha.img");
        let text = MINIMAL.replace("/tmp/a.img", disk.to_str().unwrap());
        let c = parse(&text).unwrap();
        let (me, _) = c.local(Some("alpha")).unwrap();
        let e = c.check_local_disk(me).unwrap_err().to_string();
        assert!(
            e.contains(disk.to_str().unwrap()) && e.contains("does not exist"),
            "{e}"
        );
        std::fs::write(&disk, b"").unwrap();
        c.check_local_disk(me).unwrap();
    }

    #[test]
    fn secret_required() {
        let e = err(&MINIMAL.replace("secret = \"s3cret\"", ""));
        assert!(e.contains("net.secret"), "{e}");
        let e = err(&MINIMAL.replace("secret = \"s3cret\"", "secret = \"\""));
        assert!(e.contains("net.secret"), "{e}");
    }

    #[test]
    fn enum_values_checked() {
        let with = |section: &str, kv: &str| {
            MINIMAL.replace(
                "[[node]]\nname = \"alpha\"",
                &format!("[{section}]\n{kv}\n[[node]]\nname = \"alpha\""),
            )
        };
        let e = err(&with("sync", "verify = \"md5\""));
        assert!(e.contains("sync.verify") && e.contains("md5"), "{e}");
        let e = err(&with("sync", "al-extents = 6"));
        assert!(e.contains("sync.al-extents"), "{e}");
        let e = err(&with("sync", "al-extents = 65535"));
        assert!(e.contains("sync.al-extents"), "{e}");
        parse(&with("sync", "al-extents = 7")).unwrap();
        parse(&with("sync", "al-extents = 65534")).unwrap();
        let e = err(&with("disk", "on-io-error = \"panic\""));
        assert!(e.contains("disk.on-io-error") && e.contains("panic"), "{e}");
        // DRBD's default, not built yet: refused, not ignored.
        let e = err(&with("disk", "on-io-error = \"detach\""));
        assert!(
            e.contains("disk.on-io-error") && e.contains("not supported yet"),
            "{e}"
        );
        let e = err(&with(
            "split-brain",
            "after-sb-0pri = \"discard-node-gamma\"",
        ));
        assert!(
            e.contains("split-brain.after-sb-0pri") && e.contains("gamma"),
            "{e}"
        );
        let e = err(&with("split-brain", "after-sb-0pri = \"random\""));
        assert!(e.contains("split-brain.after-sb-0pri"), "{e}");
        let e = err(&with(
            "split-brain",
            "after-sb-1pri = \"discard-younger-primary\"",
        ));
        assert!(e.contains("split-brain.after-sb-1pri"), "{e}");
        let e = err(&with("split-brain", "after-sb-2pri = \"consensus\""));
        assert!(e.contains("split-brain.after-sb-2pri"), "{e}");
        let e = err(&MINIMAL.replace("name = \"r0\"", "name = \"r0\"\nprotocol = \"D\""));
        assert!(e.contains("resource.protocol"), "{e}");
        let e =
            err(&with("net", "ko-count = \"seven\"").replace("[net]\nsecret = \"s3cret\"\n", ""));
        assert!(e.contains("ko-count"), "{e}");
    }

    #[test]
    fn names_checked() {
        let e = err(&MINIMAL.replace("name = \"r0\"", &format!("name = \"{}\"", "r".repeat(64))));
        assert!(e.contains("resource.name") && e.contains("63"), "{e}");
        let e = err(&MINIMAL.replace("name = \"beta\"", "name = \"be ta\""));
        assert!(e.contains("node[1].name"), "{e}");
        let e = err(&MINIMAL.replace("name = \"beta\"", "name = \"\""));
        assert!(e.contains("node[1].name"), "{e}");
    }

    #[test]
    fn meta_disk_not_the_data_disk() {
        let e = err(&MINIMAL.replace(
            "disk = \"/tmp/a.img\"",
            "disk = \"/tmp/a.img\"\nmeta-disk = \"/tmp/a.img\"",
        ));
        assert!(e.contains("node[0].meta-disk"), "{e}");
    }
}
