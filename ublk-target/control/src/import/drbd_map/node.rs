//! The node keys of a drbd.conf (`device`, `disk`, `address`, `meta-disk`)
//! and the last step of a resource: the two `[[node]]` entries completed
//! from the resource-level keys, the secret, the text, its validation.

use std::fmt::Write as _;

use super::{
    from, quote, Draft, Entry, ImportError, ImportedResource, Mapper, SocketAddr, Stmt, Table,
};
use crate::config::Config;

/// The keys of a `[[node]]`, in the order they are written.
const NODE_KEYS: [&str; 5] = ["name", "address", "disk", "meta-disk", "device"];

/// The node a table belongs to, for messages.
fn who(t: &Table) -> String {
    match t.get("name") {
        Some(Entry::Value(toml::Value::String(n), _)) => format!("node {n}"),
        Some(_) => "the floating node".to_owned(),
        None => "every node (resource level)".to_owned(),
    }
}

impl Mapper {
    /// One node key into `t` (a node's table or the resource-level defaults).
    pub(super) fn node_key(&mut self, t: &mut Table, s: &Stmt) {
        let args: Vec<&str> = s.args().iter().map(|w| w.text.as_str()).collect();
        match s.key() {
            "device" => self.device(t, s, &args),
            "disk" => match args.as_slice() {
                ["none"] => self.missing(
                    t,
                    s,
                    "disk",
                    "\"/dev/BACKING\"",
                    "is diskless in drbd.conf; rep needs a backing disk on both nodes",
                ),
                [p] => t.value("disk", *p, from(s)),
                _ => self.missing(
                    t,
                    s,
                    "disk",
                    "\"/dev/BACKING\"",
                    "has no single disk path in drbd.conf",
                ),
            },
            "address" => self.address(t, s, &args),
            _ => self.meta_disk(t, s, &args),
        }
    }

    /// A key the source lacks: a `# FILL IN` line and a warning.
    fn missing(&mut self, t: &mut Table, s: &Stmt, key: &str, example: &str, why: &str) {
        let node = who(t);
        let msg = format!("{node} {why}: fill in `{key}` of its [[node]] entry");
        t.fill_in(key, example, format!("{}: {}", s.loc, msg));
        self.warn(s, format!("`{}`: {msg}", s.text()));
    }

    fn device(&mut self, t: &mut Table, s: &Stmt, args: &[&str]) {
        let minor = match args {
            [.., "minor", n] => n.parse::<u32>().ok(),
            [p] => p
                .strip_prefix("/dev/drbd")
                .and_then(|n| n.parse::<u32>().ok()),
            _ => None,
        };
        match minor {
            Some(n) => t.value(
                "device",
                i64::from(n),
                format!("{} (/dev/ublkb{n})", from(s)),
            ),
            None => self.missing(t, s, "device", "0", "has a device without a minor number"),
        }
    }

    fn address(&mut self, t: &mut Table, s: &Stmt, args: &[&str]) {
        let text = match args {
            [] => {
                return self.missing(
                    t,
                    s,
                    "address",
                    "\"IP:PORT\"",
                    "has no address in drbd.conf (`address;`)",
                );
            }
            ["ipv4" | "ipv6", a] | [a] => *a,
            [af, _] => {
                let why =
                    format!("uses address family {af}; rep replicates over TCP on IPv4 or IPv6");
                return self.missing(t, s, "address", "\"IP:PORT\"", &why);
            }
            _ => {
                return self.missing(
                    t,
                    s,
                    "address",
                    "\"IP:PORT\"",
                    "has an address rep cannot read",
                )
            }
        };
        if text.parse::<SocketAddr>().is_ok() {
            t.value("address", text, from(s));
        } else {
            let why = format!("has address {text}, which is not IP:PORT");
            self.missing(t, s, "address", "\"IP:PORT\"", &why);
        }
    }

    fn meta_disk(&mut self, t: &mut Table, s: &Stmt, args: &[&str]) {
        let (path, index) = match args {
            ["internal"] => ("internal", None),
            [p, i] => (*p, Some(*i)),
            [p] => match p.split_once('[') {
                Some((p, i)) => (p, Some(i)),
                None => (*p, None),
            },
            _ => {
                return self.missing(
                    t,
                    s,
                    "meta-disk",
                    "\"internal\"",
                    "has a meta-disk rep cannot read",
                )
            }
        };
        match index {
            None => t.value("meta-disk", path, from(s)),
            Some(i) => {
                let i = i.trim_matches(['[', ']']);
                let why = format!(
                    "keeps its metadata in slot [{i}] of {path}, shared with other resources; rep keeps \
                     one resource's metadata in a file or device of its own (no index)"
                );
                self.missing(t, s, "meta-disk", &quote(path), &why);
            }
        }
    }

    /// The resource's text, once all its statements are mapped.
    pub(super) fn finish(&mut self, mut d: Draft) -> Result<ImportedResource, ImportError> {
        if d.nodes.len() != 2 {
            return Err(super::unsupported(
                &d.loc,
                &format!(
                    "resource {} has {} `on` sections; a rep resource has exactly two nodes",
                    d.name,
                    d.nodes.len()
                ),
            ));
        }
        self.secret(&mut d);
        self.fencing_needs_handler(&mut d);
        let nodes: Vec<Table> = std::mem::take(&mut d.nodes)
            .into_iter()
            .map(|(loc, t)| self.complete_node(&d, &loc, t))
            .collect();
        let mut body = String::new();
        d.resource.write(&mut body, "resource", false);
        for (table, name) in [
            (&d.net, "net"),
            (&d.sync, "sync"),
            (&d.startup, "startup"),
            (&d.disk, "disk"),
            (&d.split_brain, "split-brain"),
            (&d.handlers, "handlers"),
        ] {
            if !table.is_empty() {
                body.push('\n');
                table.write(&mut body, name, false);
            }
        }
        for n in &nodes {
            body.push('\n');
            n.write(&mut body, "node", true);
        }
        let fill_ins = d.net.fill_ins()
            + d.handlers.fill_ins()
            + nodes.iter().map(Table::fill_ins).sum::<usize>();
        let text = header(&d, fill_ins) + &body;
        if fill_ins == 0 {
            Config::from_str_named(&text, format!("{}.toml", d.name)).map_err(|e| {
                ImportError::Invalid {
                    resource: d.name.clone(),
                    message: e.to_string(),
                }
            })?;
        }
        Ok(ImportedResource {
            name: d.name,
            text,
            fill_ins,
        })
    }

    /// `[net] secret` from `shared-secret`, or a line to fill in.
    fn secret(&mut self, d: &mut Draft) {
        let has_secret = d.net.get("secret").is_some();
        if let Some((loc, alg)) = d.cram_hmac_alg.take() {
            self.warnings.push(super::Warning {
                loc: loc.to_string(),
                option: "cram-hmac-alg".to_owned(),
                message: format!(
                    "`cram-hmac-alg {alg}`: rep authenticates the peers with HMAC-SHA256 over the \
                     shared-secret, not {alg}"
                ),
            });
        }
        if !has_secret {
            let why = format!(
                "resource {} has no shared-secret in drbd.conf; rep requires one, the same on both \
                 nodes (e.g. the output of `openssl rand -base64 24`)",
                d.name
            );
            d.net
                .fill_in("secret", "\"LONG RANDOM STRING\"", why.clone());
            self.warnings.push(super::Warning {
                loc: d.loc.to_string(),
                option: "shared-secret".to_owned(),
                message: format!("{why}: fill in [net] secret"),
            });
        }
    }

    /// A node's keys in order, the resource-level ones where it has none,
    /// `# FILL IN` for a missing address or disk.
    fn complete_node(&mut self, d: &Draft, loc: &super::Loc, t: Table) -> Table {
        let mut out = Table::default();
        for key in NODE_KEYS {
            if let Some(e) = t.get(key).or_else(|| d.node_defaults.get(key)) {
                out.set(key, e.clone());
            } else if key == "address" || key == "disk" {
                let msg = format!(
                    "{} has no `{key}` in drbd.conf: fill in `{key}` of its [[node]] entry",
                    who(&t)
                );
                out.fill_in(key, "\"...\"", format!("{loc}: {msg}"));
                self.warnings.push(super::Warning {
                    loc: loc.to_string(),
                    option: key.to_owned(),
                    message: msg,
                });
            }
        }
        out
    }
}

fn header(d: &Draft, fill_ins: usize) -> String {
    let mut h = String::new();
    let _ = writeln!(
        h,
        "# Resource {}, imported from {} by `repctl import-drbd-conf`.\n\
         # Each key's comment names the drbd.conf line it comes from; keys not\n\
         # written take rep's defaults (`repctl --config {}.toml dump` shows them all).",
        d.name, d.loc, d.name
    );
    if fill_ins > 0 {
        let _ = writeln!(
            h,
            "# {fill_ins} value(s) are missing in drbd.conf: complete the lines marked\n\
             # `# ... FILL IN` (remove the leading `# `), then check the file with `repctl dump`."
        );
    }
    let _ = writeln!(h, "# Copy it to /etc/rep/{}.toml on both nodes.\n", d.name);
    h
}
