//! The raw (serde) form of a resource file: exactly what the file says,
//! key for key. `validate` turns it into a [`super::Config`]; `dump` writes
//! a `Config` back through the same structs, so the key names cannot drift
//! apart.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawConfig {
    pub(super) resource: RawResource,
    #[serde(default)]
    pub(super) net: RawNet,
    #[serde(default)]
    pub(super) sync: RawSync,
    #[serde(default)]
    pub(super) startup: RawStartup,
    #[serde(default)]
    pub(super) disk: RawDisk,
    #[serde(default)]
    pub(super) split_brain: RawSplitBrain,
    #[serde(default, skip_serializing_if = "RawMetrics::is_empty")]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) handlers: super::Handlers,
    #[serde(default)]
    pub(super) node: Vec<RawNode>,
    /// The cluster agent's section (heartbeat, resources, witness). It has
    /// its own parser in `cluster-agent`; the node daemon only notes that it
    /// is there (the agent then decides the roles, see `resume-after-crash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cluster: Option<toml::Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawResource {
    pub(super) name: String,
    #[serde(default = "default_protocol")]
    pub(super) protocol: String,
}

pub(super) fn default_protocol() -> String {
    "C".to_owned()
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(super) struct RawNet {
    pub(super) secret: String,
    pub(super) timeout_ms: u64,
    pub(super) ping_int_ms: u64,
    pub(super) ko_count: u32,
    pub(super) max_buffers: u32,
    pub(super) csums: bool,
    pub(super) fencing: String,
    /// `tls = "off" | "on"` (see `tls`).
    pub(super) tls: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tls_ca: Option<PathBuf>,
    /// `tls-psk-file = PATH`: a pre-shared key instead of certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tls_psk_file: Option<PathBuf>,
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
            fencing: "dont-care".to_owned(),
            tls: "off".to_owned(),
            tls_ca: None,
            tls_psk_file: None,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub(super) enum RawRate {
    Int(u64),
    Text(String),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(super) struct RawSync {
    pub(super) rate: RawRate,
    pub(super) al_extents: u32,
    pub(super) verify: String,
    /// The resync controller (DRBD's names; see `sections::Syncer`).
    pub(super) c_plan_ahead: u32,
    pub(super) c_fill_target: RawRate,
    pub(super) c_delay_target: u32,
    pub(super) c_max_rate: RawRate,
    pub(super) c_min_rate: RawRate,
}

impl Default for RawSync {
    fn default() -> Self {
        let c = replication_proto::machine::ResyncControl::default();
        let text = |v: u64| RawRate::Text(super::format_rate(v));
        Self {
            rate: RawRate::Text("100M".to_owned()),
            al_extents: 1237,
            verify: "crc32c".to_owned(),
            c_plan_ahead: c.plan_ahead_ds,
            c_fill_target: text(c.fill_target_bytes),
            c_delay_target: c.delay_target_ds,
            c_max_rate: text(c.max_rate_bytes_per_s),
            c_min_rate: text(c.min_rate_bytes_per_s),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub(super) struct RawStartup {
    pub(super) wfc_timeout: u64,
    pub(super) degr_wfc_timeout: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) resume_after_crash: Option<String>,
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
pub(super) struct RawDisk {
    pub(super) on_io_error: String,
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
pub(super) struct RawSplitBrain {
    pub(super) after_sb_0pri: String,
    pub(super) after_sb_1pri: String,
    pub(super) after_sb_2pri: String,
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

/// `[metrics]`: the Prometheus endpoint (optional, off when absent).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) listen: Option<String>,
}

impl RawMetrics {
    fn is_empty(&self) -> bool {
        self.listen.is_none()
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawNode {
    pub(super) name: String,
    pub(super) address: String,
    pub(super) disk: PathBuf,
    #[serde(default = "default_meta_disk")]
    pub(super) meta_disk: String,
    #[serde(default)]
    pub(super) device: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) nbd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) nbd_allow: Option<Vec<String>>,
    /// `nbd-tls = "off" | "on" | "require"` (see `nbd_access`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) nbd_tls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) nbd_tls_ca: Option<PathBuf>,
    /// `nbd-tls-psk-file = PATH`: clients authenticate with a pre-shared key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) nbd_tls_psk_file: Option<PathBuf>,
    /// This node's own Prometheus address (wins over `metrics.listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) metrics: Option<String>,
    /// This node's certificate and key, PEM (see `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tls_key: Option<PathBuf>,
}

pub(super) fn default_meta_disk() -> String {
    "internal".to_owned()
}
