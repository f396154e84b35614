//! From the raw form to a [`Config`]: every check that can be made from the
//! text alone, one step per table, then the rules that span tables. The
//! first failing check is reported, in the order of the file's tables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use replication_proto::machine::ResyncControl;
use replication_proto::wire::Protocol;

use super::raw::{
    RawConfig, RawDisk, RawMetrics, RawNet, RawNode, RawRate, RawSplitBrain, RawStartup, RawSync,
};
use super::{
    parse_rate, AfterSb0Pri, Config, ConfigError, Disk, MetaDisk, Metrics, Net, Node, Resource,
    ResumeAfterCrash, SplitBrain, Startup, Syncer, VerifyAlg, AL_EXTENTS_MAX, AL_EXTENTS_MIN,
    NAME_MAX,
};

pub(super) fn check_name(path: &Path, key: &str, name: &str) -> Result<(), ConfigError> {
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
    pub(super) fn validate(mut raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
        let v = Check { path };
        check_name(path, "resource.name", &raw.resource.name)?;
        let protocol = v.protocol(&raw.resource.protocol)?;
        let tls = v.tls(&mut raw.net, &mut raw.node)?;
        let net = v.net(raw.net)?;
        let sync = v.sync(&raw.sync)?;
        // With a [cluster] table the cluster agent decides the roles.
        let startup = v.startup(&raw.startup, raw.cluster.is_some())?;
        let disk = v.disk(&raw.disk)?;
        let split_brain = v.split_brain(&raw.split_brain)?;
        let metrics = v.metrics(&raw.metrics, &raw.node)?;
        let handlers =
            super::handlers::validate(path, raw.handlers, net.fencing, disk.on_io_error)?;
        let nodes = v.nodes(raw.node)?;
        v.nodes_distinct(&nodes)?;
        v.discard_node_known(&split_brain, &nodes)?;
        v.metrics_apart(&metrics, &nodes)?;
        check_nbd_nodes(path, &nodes, &tls)?;
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
            metrics,
            handlers,
            tls,
            nodes,
            cluster: raw.cluster,
        })
    }
}

/// The rules across keys: the NBD keys need an `nbd` address, and
/// `nbd-tls` needs the node's certificate and a CA for the clients'.
pub(super) fn check_nbd_nodes(
    path: &Path,
    nodes: &[Node],
    tls: &super::Tls,
) -> Result<(), ConfigError> {
    for (i, (n, files)) in nodes.iter().zip(&tls.node).enumerate() {
        let a = &n.nbd_access;
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: format!("node[{i}].{key}"),
            message: format!("node \"{}\": {message}", n.name),
        };
        let nbd_keys = !a.allow.is_empty()
            || a.tls != super::NbdTlsMode::Off
            || a.tls_ca.is_some()
            || a.tls_psk_file.is_some();
        if n.nbd.is_none() && nbd_keys {
            return Err(bad(
                "nbd",
                "nbd-allow, nbd-tls, nbd-tls-ca and nbd-tls-psk-file apply to the NBD export; set nbd = \"IP:PORT\" or remove them".to_owned(),
            ));
        }
        if let Some(psk) = &a.tls_psk_file {
            check_nbd_psk(a, psk).map_err(|m| bad("nbd-tls-psk-file", m.to_owned()))?;
            continue;
        }
        if a.tls_ca.is_some() && a.tls == super::NbdTlsMode::Off {
            return Err(bad(
                "nbd-tls-ca",
                "nbd-tls-ca is set but nbd-tls is \"off\"; set nbd-tls = \"on\" or \"require\""
                    .to_owned(),
            ));
        }
        if a.tls == super::NbdTlsMode::Off {
            continue;
        }
        if files.cert.is_none() {
            return Err(bad(
                "nbd-tls",
                format!(
                    "nbd-tls = \"{}\" needs this node's tls-cert and tls-key (the certificate the export shows clients)",
                    a.tls
                ),
            ));
        }
        if a.tls_ca.is_none() && tls.ca.is_none() {
            return Err(bad(
                "nbd-tls",
                format!(
                    "nbd-tls = \"{}\" needs a CA to check client certificates with: set nbd-tls-ca or [net] tls-ca",
                    a.tls
                ),
            ));
        }
    }
    Ok(())
}

/// `nbd-tls-psk-file`: with `nbd-tls` on, instead of `nbd-tls-ca` (the
/// node's certificate is then not needed).
fn check_nbd_psk(a: &super::NbdAccess, psk: &Path) -> Result<(), &'static str> {
    if psk.as_os_str().is_empty() {
        return Err("nbd-tls-psk-file must not be empty");
    }
    if a.tls == super::NbdTlsMode::Off {
        return Err(
            "nbd-tls-psk-file is set but nbd-tls is \"off\"; set nbd-tls = \"on\" or \"require\"",
        );
    }
    if a.tls_ca.is_some() {
        return Err(
            "NBD clients authenticate with certificates (nbd-tls-ca) or with a \
                    pre-shared key (nbd-tls-psk-file), not both; remove one of them",
        );
    }
    Ok(())
}

/// The checks of one file; `path` names it in the messages.
struct Check<'a> {
    path: &'a Path,
}

impl Check<'_> {
    fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.to_owned(),
            message,
        }
    }

    /// `resource.protocol`.
    fn protocol(&self, text: &str) -> Result<Protocol, ConfigError> {
        match text {
            "A" | "a" => Ok(Protocol::A),
            "B" | "b" => Ok(Protocol::B),
            "C" | "c" => Ok(Protocol::C),
            other => Err(self.invalid(
                "resource.protocol",
                format!("unknown protocol \"{other}\"; expected \"A\", \"B\" or \"C\""),
            )),
        }
    }

    /// `[net]`.
    fn net(&self, n: RawNet) -> Result<Net, ConfigError> {
        if n.secret.is_empty() {
            return Err(self.invalid(
                "net.secret",
                "a shared secret is required (the same on both nodes), e.g. secret = \"some long random string\""
                    .to_owned(),
            ));
        }
        for (key, value) in [
            ("net.timeout-ms", n.timeout_ms),
            ("net.ping-int-ms", n.ping_int_ms),
            ("net.ko-count", u64::from(n.ko_count)),
            ("net.max-buffers", u64::from(n.max_buffers)),
        ] {
            if value == 0 {
                return Err(self.invalid(key, "must be at least 1".to_owned()));
            }
        }
        Ok(Net {
            secret: n.secret,
            timeout: Duration::from_millis(n.timeout_ms),
            ping_int: Duration::from_millis(n.ping_int_ms),
            ko_count: n.ko_count,
            max_buffers: n.max_buffers,
            csums: n.csums,
            fencing: super::handlers::fencing(self.path, &n.fencing)?,
        })
    }

    /// `[sync]`.
    fn sync(&self, s: &RawSync) -> Result<Syncer, ConfigError> {
        let rate = match &s.rate {
            RawRate::Int(n) => *n,
            RawRate::Text(t) => parse_rate(t).map_err(|m| self.invalid("sync.rate", m))?,
        };
        let al_extents = s.al_extents;
        if !(AL_EXTENTS_MIN..=AL_EXTENTS_MAX).contains(&al_extents) {
            return Err(self.invalid(
                "sync.al-extents",
                format!(
                    "{al_extents} is out of range; must be {AL_EXTENTS_MIN}..={AL_EXTENTS_MAX}"
                ),
            ));
        }
        let verify = match s.verify.as_str() {
            "crc32c" => VerifyAlg::Crc32c,
            other => {
                return Err(self.invalid(
                    "sync.verify",
                    format!("unsupported digest \"{other}\"; only \"crc32c\" is supported"),
                ))
            }
        };
        Ok(Syncer {
            rate,
            al_extents,
            verify,
            control: self.resync_control(s)?,
        })
    }

    /// `[sync]`'s controller keys: sizes and rates as `rate` is written,
    /// each within DRBD's bounds.
    fn resync_control(&self, s: &RawSync) -> Result<ResyncControl, ConfigError> {
        let bytes = |key: &str, r: &RawRate| match r {
            RawRate::Int(n) => Ok(*n),
            RawRate::Text(t) => parse_rate(t).map_err(|m| self.invalid(key, m)),
        };
        let c = ResyncControl {
            plan_ahead_ds: s.c_plan_ahead,
            fill_target_bytes: bytes("sync.c-fill-target", &s.c_fill_target)?,
            delay_target_ds: s.c_delay_target,
            max_rate_bytes_per_s: bytes("sync.c-max-rate", &s.c_max_rate)?,
            min_rate_bytes_per_s: bytes("sync.c-min-rate", &s.c_min_rate)?,
        };
        c.check()
            .map_err(|(key, why)| self.invalid(&format!("sync.{key}"), why))?;
        Ok(c)
    }

    /// `[startup]`; `managed`: the file has a `[cluster]` table.
    fn startup(&self, s: &RawStartup, managed: bool) -> Result<Startup, ConfigError> {
        let secs = |s: u64| (s != 0).then(|| Duration::from_secs(s));
        Ok(Startup {
            wfc_timeout: secs(s.wfc_timeout),
            degr_wfc_timeout: secs(s.degr_wfc_timeout),
            resume_after_crash: self
                .resume_after_crash(s.resume_after_crash.as_deref(), managed)?,
        })
    }

    /// `startup.resume-after-crash`. With a [cluster] table the cluster
    /// agent decides the roles: a repd that promoted itself behind its back
    /// could make a second writer (the agent may be promoting the peer
    /// right now).
    fn resume_after_crash(
        &self,
        text: Option<&str>,
        managed: bool,
    ) -> Result<ResumeAfterCrash, ConfigError> {
        let key = "startup.resume-after-crash";
        match text {
            None if managed => Ok(ResumeAfterCrash::Never),
            None => Ok(ResumeAfterCrash::default()),
            Some(t) => {
                let v = t.parse().map_err(|e| self.invalid(key, e))?;
                if managed && v != ResumeAfterCrash::Never {
                    return Err(self.invalid(
                        key,
                        format!(
                            "\"{t}\" with a [cluster] table: the cluster agent decides which node \
                             is Primary, also after a crash of repd; remove the key (or set \"never\")"
                        ),
                    ));
                }
                Ok(v)
            }
        }
    }

    /// `[disk]`.
    fn disk(&self, d: &RawDisk) -> Result<Disk, ConfigError> {
        Ok(Disk {
            on_io_error: d
                .on_io_error
                .parse()
                .map_err(|m| self.invalid("disk.on-io-error", m))?,
        })
    }

    /// `[split-brain]`.
    fn split_brain(&self, sb: &RawSplitBrain) -> Result<SplitBrain, ConfigError> {
        Ok(SplitBrain {
            after_sb_0pri: sb
                .after_sb_0pri
                .parse()
                .map_err(|m| self.invalid("split-brain.after-sb-0pri", m))?,
            after_sb_1pri: sb
                .after_sb_1pri
                .parse()
                .map_err(|m| self.invalid("split-brain.after-sb-1pri", m))?,
            after_sb_2pri: sb
                .after_sb_2pri
                .parse()
                .map_err(|m| self.invalid("split-brain.after-sb-2pri", m))?,
        })
    }

    /// `[[node]]`: exactly two entries, each checked on its own.
    fn nodes(&self, raw: Vec<RawNode>) -> Result<[Node; 2], ConfigError> {
        let found = raw.len();
        let count_error = || {
            self.invalid(
                "node",
                format!(
                    "exactly two [[node]] entries are needed (this node and its peer), found {found}"
                ),
            )
        };
        if found != 2 {
            return Err(count_error());
        }
        let nodes = raw
            .into_iter()
            .enumerate()
            .map(|(i, rn)| self.node(i, rn))
            .collect::<Result<Vec<_>, _>>()?;
        nodes.try_into().map_err(|_| count_error())
    }

    /// One `[[node]]` entry, the `i`-th of the file.
    fn node(&self, i: usize, rn: RawNode) -> Result<Node, ConfigError> {
        let label = if rn.name.is_empty() {
            format!("node[{i}]")
        } else {
            format!("node \"{}\"", rn.name)
        };
        check_name(self.path, &format!("node[{i}].name"), &rn.name)?;
        let address: SocketAddr = rn.address.parse().map_err(|_| {
            self.invalid(
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
                self.invalid(
                    &format!("node[{i}].nbd"),
                    format!("{label}: cannot parse \"{s}\" as IP:PORT (e.g. \"127.0.0.1:10809\")"),
                )
            })?),
        };
        if rn.disk.as_os_str().is_empty() {
            return Err(self.invalid(
                &format!("node[{i}].disk"),
                format!("{label}: must not be empty"),
            ));
        }
        let meta_disk = self.meta_disk(i, &label, &rn.meta_disk, &rn.disk)?;
        let nbd_access = super::NbdAccess {
            allow: super::nbd_access::parse_allow(self.path, i, &label, rn.nbd_allow)?,
            tls: super::nbd_access::parse_tls_mode(self.path, i, &label, rn.nbd_tls.as_deref())?,
            tls_ca: rn.nbd_tls_ca,
            tls_psk_file: rn.nbd_tls_psk_file,
        };
        Ok(Node {
            name: rn.name,
            address,
            disk: rn.disk,
            meta_disk,
            device: rn.device,
            nbd,
            nbd_access,
        })
    }

    /// `node[i].meta-disk`: "internal" or a file other than the data disk.
    fn meta_disk(
        &self,
        i: usize,
        label: &str,
        text: &str,
        disk: &Path,
    ) -> Result<MetaDisk, ConfigError> {
        match text {
            "internal" => Ok(MetaDisk::Internal),
            "" => Err(self.invalid(
                &format!("node[{i}].meta-disk"),
                format!("{label}: must be \"internal\" or the path of a metadata file"),
            )),
            p => {
                let p = PathBuf::from(p);
                if p == disk {
                    return Err(self.invalid(
                        &format!("node[{i}].meta-disk"),
                        format!("{label}: is the data disk itself; use meta-disk = \"internal\" for that"),
                    ));
                }
                Ok(MetaDisk::External(p))
            }
        }
    }

    /// The two nodes differ in name, replication address and NBD address,
    /// and no NBD address is a replication address.
    fn nodes_distinct(&self, nodes: &[Node; 2]) -> Result<(), ConfigError> {
        let [a, b] = nodes;
        if a.name == b.name {
            return Err(self.invalid(
                "node[1].name",
                format!(
                    "duplicate node name \"{}\"; the two nodes need different names",
                    a.name
                ),
            ));
        }
        if a.address == b.address {
            return Err(self.invalid(
                "node[1].address",
                format!(
                    "duplicate address {}: nodes \"{}\" and \"{}\" both use it",
                    a.address, a.name, b.name
                ),
            ));
        }
        if a.nbd.is_some() && a.nbd == b.nbd {
            return Err(self.invalid(
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
                    return Err(self.invalid(
                        &format!("node[{i}].nbd"),
                        format!(
                            "node \"{}\": nbd address {nbd} is also a replication address",
                            n.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `split-brain.after-sb-0pri = "discard-node-NAME"` names a node of
    /// this file.
    fn discard_node_known(&self, sb: &SplitBrain, nodes: &[Node; 2]) -> Result<(), ConfigError> {
        let AfterSb0Pri::DiscardNode(name) = &sb.after_sb_0pri else {
            return Ok(());
        };
        if nodes.iter().all(|n| &n.name != name) {
            let [a, b] = nodes;
            return Err(self.invalid(
                "split-brain.after-sb-0pri",
                format!(
                    "discard-node-{name} names no configured node; the nodes are \"{}\" and \"{}\"",
                    a.name, b.name
                ),
            ));
        }
        Ok(())
    }
}

impl Check<'_> {
    /// `[net] tls`, `tls-ca` and the nodes' `tls-cert`/`tls-key` (taken
    /// out of the raw tables: see `tls`).
    fn tls(&self, net: &mut RawNet, nodes: &mut [RawNode]) -> Result<super::Tls, ConfigError> {
        let mut files: [super::NodeTls; 2] = Default::default();
        let mut names = ["", ""];
        for ((slot, name), rn) in files.iter_mut().zip(&mut names).zip(nodes.iter_mut()) {
            slot.cert = rn.tls_cert.take();
            slot.key = rn.tls_key.take();
            *name = rn.name.as_str();
        }
        super::tls::validate(
            self.path,
            &net.tls,
            net.tls_ca.take(),
            net.tls_psk_file.take(),
            files,
            names,
        )
    }

    /// `[metrics]` and the nodes' `metrics` keys: each an IP:PORT.
    fn metrics(&self, m: &RawMetrics, nodes: &[RawNode]) -> Result<Metrics, ConfigError> {
        let addr = |key: &str, text: &str| {
            text.parse::<SocketAddr>().map_err(|_| {
                self.invalid(
                    key,
                    format!(
                        "cannot parse \"{text}\" as IP:PORT for the Prometheus endpoint \
                         (e.g. \"127.0.0.1:9942\", or \"0.0.0.0:9942\" for every interface)"
                    ),
                )
            })
        };
        let listen = match &m.listen {
            Some(t) => Some(addr("metrics.listen", t)?),
            None => None,
        };
        let mut node = [None, None];
        for (i, (slot, rn)) in node.iter_mut().zip(nodes).enumerate() {
            if let Some(t) = &rn.metrics {
                *slot = Some(addr(&format!("node[{i}].metrics"), t)?);
            }
        }
        Ok(Metrics { listen, node })
    }

    /// A node's metrics address is none of its own other addresses: the
    /// second listener on a port would fail at start, later than here.
    fn metrics_apart(&self, m: &Metrics, nodes: &[Node; 2]) -> Result<(), ConfigError> {
        for (i, n) in nodes.iter().enumerate() {
            let own = m.node.get(i).copied().flatten();
            let (addr, key) = match (own, m.listen) {
                (Some(a), _) => (a, format!("node[{i}].metrics")),
                (None, Some(a)) => (a, "metrics.listen".to_owned()),
                (None, None) => continue,
            };
            let clash = if addr == n.address {
                Some("its replication address")
            } else if Some(addr) == n.nbd {
                Some("its nbd address")
            } else {
                None
            };
            if let Some(what) = clash {
                return Err(self.invalid(
                    &key,
                    format!(
                        "node \"{}\": metrics address {addr} is also {what}; pick another port",
                        n.name
                    ),
                ));
            }
        }
        Ok(())
    }
}
