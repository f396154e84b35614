//! A [`Config`] written back as the resource file that loads to it
//! (`repctl dump`, `repctl dump --json`).

use std::time::Duration;

use replication_proto::wire::Protocol;

use super::raw::{
    RawConfig, RawDisk, RawMetrics, RawNet, RawNode, RawRate, RawResource, RawSplitBrain,
    RawStartup, RawSync,
};
use super::{format_rate, Config, VerifyAlg};

impl Config {
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

    /// [`Config::to_json`] on one line (`repctl dump --json all`: one
    /// object per line and resource).
    ///
    /// # Errors
    /// When a path is not valid UTF-8.
    pub fn to_json_line(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.to_raw())
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
                fencing: self.net.fencing.as_str().to_owned(),
                tls: self.tls.mode.as_str().to_owned(),
                tls_ca: self.tls.ca.clone(),
                tls_psk_file: self.tls.psk_file.clone(),
            },
            sync: RawSync {
                rate: RawRate::Text(format_rate(self.sync.rate)),
                al_extents: self.sync.al_extents,
                verify: verify.to_owned(),
                c_plan_ahead: self.sync.control.plan_ahead_ds,
                c_fill_target: RawRate::Text(format_rate(self.sync.control.fill_target_bytes)),
                c_delay_target: self.sync.control.delay_target_ds,
                c_max_rate: RawRate::Text(format_rate(self.sync.control.max_rate_bytes_per_s)),
                c_min_rate: RawRate::Text(format_rate(self.sync.control.min_rate_bytes_per_s)),
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
            metrics: RawMetrics {
                listen: self.metrics.listen.map(|a| a.to_string()),
            },
            handlers: self.handlers.clone(),
            node: self
                .nodes
                .iter()
                .zip(self.metrics.node)
                .zip(&self.tls.node)
                .map(|((n, metrics), tls)| RawNode {
                    name: n.name.clone(),
                    address: n.address.to_string(),
                    disk: n.disk.clone(),
                    meta_disk: n.meta_disk.to_string(),
                    device: n.device,
                    nbd: n.nbd.map(|a| a.to_string()),
                    nbd_allow: (!n.nbd_access.allow.is_empty())
                        .then(|| n.nbd_access.allow.iter().map(ToString::to_string).collect()),
                    nbd_tls: (n.nbd_access.tls != super::NbdTlsMode::Off)
                        .then(|| n.nbd_access.tls.to_string()),
                    nbd_tls_ca: n.nbd_access.tls_ca.clone(),
                    nbd_tls_psk_file: n.nbd_access.tls_psk_file.clone(),
                    metrics: metrics.map(|a| a.to_string()),
                    tls_cert: tls.cert.clone(),
                    tls_key: tls.key.clone(),
                })
                .collect(),
            cluster: self.cluster.clone(),
        }
    }
}
