//! Assembling the `[cluster]` table: node names checked against the
//! resource file, failback and ping nodes, heartbeat media into
//! `[[cluster.path]]` pairs, and the text.

use std::net::IpAddr;

use rep_control::import::toml_out::{quote, Table};
use rep_control::import::Warning;

use super::haresources::Chain;
use super::{header, HaCf, HeartbeatImport, Medium, ResourceInfo};

/// The import under way: its warnings and the two node names (`None`
/// where unknown).
#[derive(Debug)]
pub(super) struct Builder<'a> {
    pub res: Option<&'a ResourceInfo>,
    pub warnings: Vec<Warning>,
    pub names: [Option<String>; 2],
    /// ha.cf's path, for warnings about what it lacks.
    pub ha_cf: String,
}

impl Builder<'_> {
    pub fn warn(&mut self, loc: &str, option: &str, message: &str) {
        self.warnings.push(Warning {
            loc: loc.to_owned(),
            option: option.to_owned(),
            message: message.to_owned(),
        });
    }

    /// The resource's node named `n` in heartbeat's files: the same name,
    /// or the same first label (`drbd1` for `drbd1.example.com`).
    fn map_name(&mut self, n: &str, loc: &str) -> Option<String> {
        let Some(res) = self.res else {
            return Some(n.to_owned());
        };
        let label = |s: &str| s.split('.').next().unwrap_or("").to_owned();
        let found = res
            .nodes
            .iter()
            .map(|(r, _)| r.clone())
            .find(|r| r == n)
            .or_else(|| {
                res.nodes
                    .iter()
                    .map(|(r, _)| r.clone())
                    .find(|r| label(r) == label(n))
            });
        match &found {
            Some(r) if r != n => self.warn(
                loc,
                "node",
                &format!(
                    "heartbeat's node {n} is taken as the resource's node {r} (same host name)"
                ),
            ),
            Some(_) => {}
            None => {
                let known: Vec<&str> = res.nodes.iter().map(|(r, _)| r.as_str()).collect();
                self.warn(loc, "node", &format!(
                    "heartbeat's node {n} is not a [[node]] of resource {} (its nodes: {}): the names must match; \
                     the agent uses the resource file's", res.name, known.join(", ")));
            }
        }
        found
    }

    /// The two node names: the resource file's, else ha.cf's `node` lines.
    pub fn node_names(&mut self, ha: &HaCf) {
        for (n, loc) in &ha.nodes {
            let _ = self.map_name(n, loc);
        }
        if ha.nodes.len() > 2 || (self.res.is_none() && ha.nodes.len() == 1) {
            let loc = ha.nodes.first().map(|(_, l)| l.clone()).unwrap_or_default();
            self.warn(
                &loc,
                "node",
                &format!(
                    "ha.cf names {} nodes; a rep resource has exactly two",
                    ha.nodes.len()
                ),
            );
        }
        self.names = match self.res {
            Some(r) => [
                r.nodes.first().map(|n| n.0.clone()),
                r.nodes.get(1).map(|n| n.0.clone()),
            ],
            None => [
                ha.nodes.first().map(|n| n.0.clone()),
                ha.nodes.get(1).map(|n| n.0.clone()),
            ],
        };
    }

    /// `auto-failback` and `preferred` (haresources' first field).
    pub fn failback(&mut self, ha: &HaCf, chain: &Chain, t: &mut Table) {
        if let Some((on, from)) = &ha.auto_failback {
            t.value("auto-failback", *on, from.clone());
        }
        let preferred = chain.preferred.as_ref().and_then(|(n, from)| {
            let loc = from.split(": ").next().unwrap_or("").to_owned();
            self.map_name(n, &loc).map(|m| (m, from.clone()))
        });
        match preferred {
            Some((p, from)) => t.value("preferred", p, from),
            None if ha.auto_failback.as_ref().is_some_and(|(on, _)| *on) => {
                let loc = ha
                    .auto_failback
                    .as_ref()
                    .map(|(_, f)| f.clone())
                    .unwrap_or_default();
                let why = "auto_failback on moves the resources back to the preferred node (haresources' first field): fill in [cluster] preferred";
                self.warn(loc.split(": ").next().unwrap_or(""), "auto_failback", why);
                t.fill_in("preferred", "\"NODE\"", why);
            }
            None => {}
        }
    }

    /// `ping`/`ping_group` into ping-nodes, `deadping` into ping-dead-ms.
    pub fn ping(&mut self, ha: &HaCf, t: &mut Table) {
        let mut ips: Vec<IpAddr> = Vec::new();
        for (ip, _) in &ha.ping_nodes {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        if let Some((_, from)) = ha.ping_nodes.first() {
            let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
            t.value("ping-nodes", list, from.clone());
            if !ha.respawn_ipfail {
                let loc = from.split(": ").next().unwrap_or("");
                self.warn(loc, "ping", "without `respawn ... ipfail` heartbeat only watched the ping nodes; the agent acts on them as ipfail did (a node that reaches none of them hands the chain over)");
            }
        }
        if let Some((ms, from)) = &ha.deadping_ms {
            if *ms >= 1000 {
                t.value(
                    "ping-dead-ms",
                    i64::try_from(*ms).unwrap_or(i64::MAX),
                    from.clone(),
                );
            } else {
                let loc = from.split(": ").next().unwrap_or("");
                self.warn(
                    loc,
                    "deadping",
                    "is shorter than the agent's ping interval (1 s); not imported",
                );
            }
        }
    }

    /// A `[[cluster.path]]` of node `k` on `iface`; `bind` or what to fill in.
    fn path(
        &self,
        k: usize,
        iface: &str,
        bind: Option<(String, String)>,
        why: &str,
        port: u16,
    ) -> Table {
        let mut t = Table::default();
        match self.names.get(k).cloned().flatten() {
            Some(n) => t.value("node", n, ""),
            None => t.fill_in(
                "node",
                "\"NODE\"",
                "the node names are unknown (no `node` lines in ha.cf, no --resource)",
            ),
        }
        match bind {
            Some((b, from)) => t.value("bind", b, from),
            None => t.fill_in("bind", &quote(&format!("ADDRESS-ON-{iface}:{port}")), why),
        }
        t.value("name", iface, "");
        t
    }

    /// The heartbeat media as pairs of paths (node 0's, node 1's).
    pub fn paths(&mut self, ha: &HaCf) -> Vec<[Table; 2]> {
        let port = ha.udpport.as_ref().map_or(694, |p| p.0);
        let mut out = Vec::new();
        let mut ucast: Vec<UcastPair> = Vec::new();
        for m in &ha.media {
            match m {
                Medium::Interface { loc, line, iface } => {
                    let why = format!("{loc}: `{line}`: this node's address on {iface}");
                    self.warn(loc, line.split(' ').next().unwrap_or(""), &format!(
                        "`{line}`: rep's heartbeat paths are unicast UDP between an address of each node \
                         (no broadcast or multicast): fill in both nodes' `bind` on {iface} (port {port})"));
                    out.push([
                        self.path(0, iface, None, &why, port),
                        self.path(1, iface, None, &why, port),
                    ]);
                }
                Medium::Ucast {
                    loc,
                    line,
                    iface,
                    ip,
                } => {
                    self.ucast(&mut ucast, (loc, line, iface, *ip), port);
                }
            }
        }
        for u in ucast {
            out.push(self.ucast_paths(u, port));
        }
        if out.is_empty() {
            let loc = self.ha_cf.clone();
            self.warn(&loc, "bcast", "no network heartbeat medium (bcast, mcast, ucast) in ha.cf: fill in one [[cluster.path]] per node, on two networks if you can");
            let why = "no network medium in ha.cf: an address of this node the peer can reach";
            out.push([
                self.path(0, "eth0", None, why, port),
                self.path(1, "eth0", None, why, port),
            ]);
        }
        out
    }

    /// `ucast IFACE IP`: the address of the node whose replication address
    /// it is, on the pair of `IFACE`.
    fn ucast(
        &mut self,
        pairs: &mut Vec<UcastPair>,
        (loc, line, iface, ip): (&str, &str, &str, IpAddr),
        port: u16,
    ) {
        let k = self
            .res
            .and_then(|r| r.nodes.iter().position(|(_, a)| *a == Some(ip)));
        let slot = match pairs.iter().position(|u| u.iface == iface) {
            Some(s) => s,
            None => {
                pairs.push(UcastPair {
                    iface: iface.to_owned(),
                    binds: [None, None],
                    loc: loc.to_owned(),
                    line: line.to_owned(),
                });
                pairs.len() - 1
            }
        };
        match (k, pairs.get_mut(slot)) {
            (Some(k), Some(u)) => {
                if let Some(b) = u.binds.get_mut(k) {
                    *b = Some((format!("{}:{port}", SockIp(ip)), format!("{loc}: {line}")));
                }
            }
            _ => self.warn(loc, "ucast", &format!(
                "`{line}`: {ip} is the replication address of neither node, so whose it is is unknown: \
                 fill in the `bind` of both nodes on {iface}")),
        }
    }

    /// The two paths of a ucast interface, a warning for each side without address.
    fn ucast_paths(&mut self, u: UcastPair, port: u16) -> [Table; 2] {
        let [a, b] = u.binds;
        for (k, have) in [(0, &a), (1, &b)] {
            if have.is_none() {
                let who = self
                    .names
                    .get(k)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| "the other node".into());
                self.warn(&u.loc, "ucast", &format!(
                    "`{}` gives no address of {who} on {} (each node's ha.cf names the other's): fill in its `bind`",
                    u.line, u.iface));
            }
        }
        let why = format!(
            "{}: `{}`: this node's address on {}",
            u.loc, u.line, u.iface
        );
        [
            self.path(0, &u.iface, a, &why, port),
            self.path(1, &u.iface, b, &why, port),
        ]
    }

    /// The text of the table, its paths and its chain.
    pub fn finish(self, cluster: &Table, paths: &[[Table; 2]], chain: Chain) -> HeartbeatImport {
        let mut body = String::new();
        cluster.write(&mut body, "cluster", false);
        let mut fill_ins = cluster.fill_ins();
        for pair in paths {
            for p in pair {
                body.push('\n');
                p.write(&mut body, "cluster.path", true);
                fill_ins += p.fill_ins();
            }
        }
        if chain.device {
            body.push_str("\n[[cluster.resource]]\ntype = \"device\"                  # drbddisk: the device's Primary role\n");
        }
        for mut r in chain.resources {
            r.remove("ip-of");
            body.push('\n');
            r.write(&mut body, "cluster.resource", true);
            fill_ins += r.fill_ins();
        }
        let mut warnings: Vec<Warning> = Vec::new();
        for w in self.warnings {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        HeartbeatImport {
            text: header(fill_ins, self.res) + &body,
            fill_ins,
            warnings,
        }
    }
}

/// The `ucast` lines of one interface: the bind (and its source) found
/// for each node.
#[derive(Debug)]
struct UcastPair {
    iface: String,
    binds: [Option<(String, String)>; 2],
    loc: String,
    line: String,
}

/// An IP as the host part of `IP:PORT` (IPv6 in brackets).
struct SockIp(IpAddr);

impl std::fmt::Display for SockIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "[{a}]"),
        }
    }
}
