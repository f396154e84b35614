//! Who may use a node's NBD export: each `[[node]]`'s `nbd-allow` address
//! list, `nbd-tls` (TLS through NBD_OPT_STARTTLS with the node's
//! `tls-cert`/`tls-key`, client certificates checked against `nbd-tls-ca`
//! or `[net] tls-ca`), and the warning shown when the export is open to
//! the network with no protection at all.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::ConfigError;

/// Most entries accepted in one `nbd-allow` list (every client's address is
/// checked against each, so the list stays short).
pub const NBD_ALLOW_MAX: usize = 256;

/// A node's NBD access rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NbdAccess {
    /// `nbd-allow`: client addresses let in; empty = every address.
    pub allow: Vec<IpNet>,
    /// `nbd-tls`.
    pub tls: NbdTlsMode,
    /// `nbd-tls-ca`: the CA client certificates must chain to, instead of
    /// `[net] tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// `nbd-tls-psk-file`: clients authenticate with a pre-shared key
    /// (`identity:hexkey` lines) instead of certificates.
    pub tls_psk_file: Option<PathBuf>,
}

/// `nbd-tls`: TLS on the NBD export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NbdTlsMode {
    /// Plain NBD; NBD_OPT_STARTTLS is refused.
    #[default]
    Off,
    /// Clients may upgrade with NBD_OPT_STARTTLS (and then must show a
    /// certificate the CA signed); plain clients are served too.
    On,
    /// Only clients that upgrade are served: every other option gets
    /// NBD_REP_ERR_TLS_REQD.
    Require,
}

impl fmt::Display for NbdTlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NbdTlsMode::Off => "off",
            NbdTlsMode::On => "on",
            NbdTlsMode::Require => "require",
        })
    }
}

impl NbdAccess {
    /// Whether a client connecting from `ip` passes the allow-list. An
    /// IPv4 client of a dual-stack `[::]` listener appears as
    /// `::ffff:a.b.c.d`: it is matched as the IPv4 address it is.
    #[must_use]
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// The warning for an export at `addr` that anyone who reaches it can
    /// read and overwrite: it listens on something other than loopback and
    /// has no allow-list. `None` when it is protected (or local only).
    #[must_use]
    pub fn exposure_warning(&self, addr: SocketAddr) -> Option<String> {
        if addr.ip().to_canonical().is_loopback()
            || !self.allow.is_empty()
            || self.tls == NbdTlsMode::Require
        {
            return None;
        }
        Some(format!(
            "the NBD export on {addr} is open to every host that reaches it (no nbd-allow list, \
             no nbd-tls = \"require\"): anyone there can read and overwrite the device; \
             set nbd-allow (and nbd-tls) in this node's [[node]] table"
        ))
    }
}

/// `node[i].nbd-tls`.
pub(super) fn parse_tls_mode(
    path: &Path,
    i: usize,
    label: &str,
    text: Option<&str>,
) -> Result<NbdTlsMode, ConfigError> {
    match text {
        None | Some("off") => Ok(NbdTlsMode::Off),
        Some("on") => Ok(NbdTlsMode::On),
        Some("require") => Ok(NbdTlsMode::Require),
        Some(other) => Err(ConfigError::Invalid {
            path: path.to_owned(),
            key: format!("node[{i}].nbd-tls"),
            message: format!(
                "{label}: unknown value \"{other}\"; expected \"off\", \"on\" or \"require\""
            ),
        }),
    }
}

/// `node[i].nbd-allow`: "ADDR/PREFIX" or a bare address (a /32 or /128).
pub(super) fn parse_allow(
    path: &Path,
    i: usize,
    label: &str,
    list: Option<Vec<String>>,
) -> Result<Vec<IpNet>, ConfigError> {
    let key = format!("node[{i}].nbd-allow");
    let bad = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key: key.clone(),
        message,
    };
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    if list.is_empty() {
        return Err(bad(format!(
            "{label}: an empty list would let no client in; remove the key to allow every \
             address, or list the clients' networks (e.g. [\"192.168.1.0/24\"])"
        )));
    }
    if list.len() > NBD_ALLOW_MAX {
        return Err(bad(format!(
            "{label}: {} entries; at most {NBD_ALLOW_MAX} are accepted (use wider prefixes)",
            list.len()
        )));
    }
    list.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    bad(format!(
                        "{label}: cannot parse \"{s}\" as ADDR/PREFIX or ADDR \
                         (e.g. \"192.168.1.0/24\", \"10.0.0.7\" or \"fd00::/8\")"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Result<Vec<IpNet>, ConfigError> {
        let l = list.iter().map(|s| (*s).to_owned()).collect();
        parse_allow(Path::new("r0.toml"), 0, "node \"a\"", Some(l))
    }

    #[test]
    fn allow_list_matches_v4_v6_and_mapped() {
        let a = NbdAccess {
            allow: nets(&["192.168.1.0/24", "10.0.0.7", "fd00::/8"]).unwrap(),
            ..NbdAccess::default()
        };
        assert!(a.allows("192.168.1.200".parse().unwrap()));
        assert!(a.allows("10.0.0.7".parse().unwrap()));
        assert!(!a.allows("10.0.0.8".parse().unwrap()));
        assert!(a.allows("fd12::1".parse().unwrap()));
        assert!(!a.allows("fe80::1".parse().unwrap()));
        assert!(a.allows("::ffff:192.168.1.3".parse().unwrap()));
        assert!(!a.allows("::ffff:192.168.2.3".parse().unwrap()));
        assert!(NbdAccess::default().allows("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn bad_allow_entries_are_named() {
        let e = nets(&["192.168.1.0/33"]).unwrap_err().to_string();
        assert!(
            e.contains("node[0].nbd-allow") && e.contains("192.168.1.0/33"),
            "{e}"
        );
        let e = nets(&[]).unwrap_err().to_string();
        assert!(e.contains("empty list"), "{e}");
        // Host bits are dropped: 10.1.2.3/8 means 10.0.0.0/8.
        assert_eq!(nets(&["10.1.2.3/8"]).unwrap()[0].to_string(), "10.0.0.0/8");
    }

    /// A resource file whose first node has `keys` after its `nbd` line
    /// (and `[net]` has `net`).
    fn file(net: &str, keys: &str) -> Result<super::super::Config, ConfigError> {
        let text = format!(
            "[resource]\nname = \"r0\"\n[net]\nsecret = \"s\"\n{net}\n\
             [[node]]\nname = \"alpha\"\naddress = \"127.0.0.1:7788\"\ndisk = \"/tmp/a.img\"\n{keys}\n\
             [[node]]\nname = \"beta\"\naddress = \"127.0.0.1:7789\"\ndisk = \"/tmp/b.img\"\n"
        );
        super::super::Config::from_str_named(&text, "r0.toml")
    }

    #[test]
    fn nbd_keys_round_trip_and_their_rules() {
        let tls = "tls-cert = \"/etc/rep/a.pem\"\ntls-key = \"/etc/rep/a.key\"";
        let ca = "tls-ca = \"/etc/rep/ca.pem\"";
        let nbd = "nbd = \"0.0.0.0:10809\"";
        let c = file(
            ca,
            &format!("{nbd}\nnbd-allow = [\"10.0.0.0/8\"]\nnbd-tls = \"require\"\n{tls}"),
        )
        .unwrap();
        assert_eq!(c.nodes[0].nbd_access.tls, NbdTlsMode::Require);
        let again = super::super::Config::from_str_named(&c.to_toml().unwrap(), "r0.toml").unwrap();
        assert_eq!(again.nodes[0].nbd_access, c.nodes[0].nbd_access);

        let e = |net: &str, keys: &str| file(net, keys).unwrap_err().to_string();
        let m = e(ca, &format!("{nbd}\nnbd-tls = \"on\""));
        assert!(
            m.contains("node[0].nbd-tls") && m.contains("tls-cert"),
            "{m}"
        );
        let m = e("", &format!("{nbd}\nnbd-tls = \"on\"\n{tls}"));
        assert!(m.contains("nbd-tls-ca or [net] tls-ca"), "{m}");
        let m = e(ca, &format!("{nbd}\nnbd-tls = \"maybe\""));
        assert!(m.contains("\"maybe\"") && m.contains("require"), "{m}");
        let m = e(ca, "nbd-allow = [\"10.0.0.0/8\"]");
        assert!(m.contains("node[0].nbd") && m.contains("set nbd"), "{m}");
        let m = e(ca, &format!("{nbd}\nnbd-tls-ca = \"/etc/rep/c.pem\""));
        assert!(m.contains("nbd-tls is \"off\""), "{m}");
        // nbd-tls-ca stands in for [net] tls-ca.
        file(
            "",
            &format!("{nbd}\nnbd-tls = \"on\"\nnbd-tls-ca = \"/c.pem\"\n{tls}"),
        )
        .unwrap();
    }

    #[test]
    fn warning_only_when_exposed() {
        let open = NbdAccess::default();
        assert!(open
            .exposure_warning("127.0.0.1:10809".parse().unwrap())
            .is_none());
        assert!(open
            .exposure_warning("[::1]:10809".parse().unwrap())
            .is_none());
        let w = open
            .exposure_warning("0.0.0.0:10809".parse().unwrap())
            .unwrap();
        assert!(w.contains("nbd-allow"), "{w}");
        let listed = NbdAccess {
            allow: nets(&["10.0.0.0/8"]).unwrap(),
            ..NbdAccess::default()
        };
        let any: SocketAddr = "0.0.0.0:10809".parse().unwrap();
        assert!(listed.exposure_warning(any).is_none());
        let tls_on = NbdAccess {
            tls: NbdTlsMode::On,
            ..NbdAccess::default()
        };
        assert!(tls_on.exposure_warning(any).is_some());
        let required = NbdAccess {
            tls: NbdTlsMode::Require,
            ..NbdAccess::default()
        };
        assert!(required.exposure_warning(any).is_none());
    }
}
