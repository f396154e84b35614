//! Who may use a node's NBD export: each `[[node]]`'s `nbd-allow` address
//! list, and the warning shown when the export is open to the network with
//! no protection at all.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

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
        if addr.ip().to_canonical().is_loopback() || !self.allow.is_empty() {
            return None;
        }
        Some(format!(
            "the NBD export on {addr} is open to every host that reaches it (no nbd-allow list, \
             no nbd-tls = \"require\"): anyone there can read and overwrite the device; \
             set nbd-allow (and nbd-tls) in this node's [[node]] table"
        ))
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
        };
        assert!(listed
            .exposure_warning("0.0.0.0:10809".parse().unwrap())
            .is_none());
    }
}
