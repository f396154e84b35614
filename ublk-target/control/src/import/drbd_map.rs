//! drbd.conf statements mapped onto the resource file: `common` applied
//! first, then each `resource`, its `on HOST` sections becoming the two
//! `[[node]]` entries. Units change on the way: DRBD's `timeout` counts
//! tenths of a second, `ping-int` seconds, a `rate` without suffix KiB/s.

use std::net::SocketAddr;
use std::path::Path;

use super::drbd_parse::{parse_file, Loc, Stmt};
use super::toml_out::{quote, Entry, Table};
use super::{ImportError, Warning};
use crate::config::{AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, AL_EXTENTS_MAX, AL_EXTENTS_MIN};

/// One resource file written from a drbd.conf.
#[derive(Debug, Clone)]
pub struct ImportedResource {
    /// The resource's name (the file is `NAME.toml`).
    pub name: String,
    /// The resource file's text.
    pub text: String,
    /// How many keys are written as `# FILL IN` lines.
    pub fill_ins: usize,
}

/// What a drbd.conf became.
#[derive(Debug, Clone)]
pub struct DrbdImport {
    pub resources: Vec<ImportedResource>,
    /// In file order, each once.
    pub warnings: Vec<Warning>,
}

/// Reads the drbd.conf at `path` (with its includes) and writes one
/// resource file per `resource` section.
///
/// # Errors
/// A syntax error or limit with its `FILE:LINE`; a resource that cannot be
/// a rep resource (not two nodes); a result that fails validation.
pub fn import_drbd_conf(path: &Path) -> Result<DrbdImport, ImportError> {
    let stmts = parse_file(path)?;
    let mut m = Mapper::default();
    let mut common: Vec<Stmt> = Vec::new();
    let mut resources = Vec::new();
    for s in &stmts {
        match (s.key(), &s.block) {
            ("global", Some(b)) => {
                for o in b {
                    m.left(o, "global", "has no counterpart: rep has no global section");
                }
            }
            ("common", Some(b)) => common.extend(b.iter().cloned()),
            ("resource", Some(b)) => resources.push((s, b)),
            ("skip", _) => m.skipped(s),
            _ => m.left(s, "the top level", "is not a drbd.conf section rep knows"),
        }
    }
    let mut out = Vec::new();
    for (s, body) in resources {
        let [name] = s.args() else {
            return Err(unsupported(&s.loc, "`resource` takes one name"));
        };
        let mut d = Draft::new(&name.text, &s.loc);
        m.body(&mut d, &common);
        m.body(&mut d, body);
        out.push(m.finish(d)?);
    }
    if out.is_empty() {
        return Err(ImportError::Unsupported {
            loc: path.display().to_string(),
            message: "no `resource` section found: nothing to import".to_owned(),
        });
    }
    let mut warnings: Vec<Warning> = Vec::new();
    for w in m.warnings {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    Ok(DrbdImport {
        resources: out,
        warnings,
    })
}

fn unsupported(loc: &Loc, message: &str) -> ImportError {
    ImportError::Unsupported {
        loc: loc.to_string(),
        message: message.to_owned(),
    }
}

/// A resource being assembled.
#[derive(Debug)]
struct Draft {
    name: String,
    loc: Loc,
    resource: Table,
    net: Table,
    sync: Table,
    startup: Table,
    disk: Table,
    split_brain: Table,
    handlers: Table,
    /// Where `fencing` was set, for the warning if it lacks a handler.
    fencing_at: Option<Loc>,
    /// `device`, `disk`, `meta-disk`, `address` at the resource level:
    /// inherited by `on` sections that do not set them.
    node_defaults: Table,
    nodes: Vec<(Loc, Table)>,
    cram_hmac_alg: Option<(Loc, String)>,
}

impl Draft {
    fn new(name: &str, loc: &Loc) -> Self {
        let mut resource = Table::default();
        resource.value("name", name, format!("{loc} resource {name}"));
        Draft {
            name: name.to_owned(),
            loc: loc.clone(),
            resource,
            net: Table::default(),
            sync: Table::default(),
            startup: Table::default(),
            disk: Table::default(),
            split_brain: Table::default(),
            handlers: Table::default(),
            fencing_at: None,
            node_defaults: Table::default(),
            nodes: Vec::new(),
            cram_hmac_alg: None,
        }
    }
}

/// The warnings gathered while mapping.
#[derive(Debug, Default)]
struct Mapper {
    warnings: Vec<Warning>,
}

/// `drbd.conf:LINE rate 10M`: where a value came from, for its comment.
fn from(s: &Stmt) -> String {
    format!("{}: {}", s.loc, s.text())
}

impl Mapper {
    fn warn(&mut self, s: &Stmt, message: String) {
        self.warnings.push(Warning {
            loc: s.loc.to_string(),
            option: s.key().to_owned(),
            message,
        });
    }

    /// An option without a counterpart in `section`.
    /// A section without counterpart: each option in it is named (an empty
    /// one is named itself).
    fn left(&mut self, s: &Stmt, section: &str, why: &str) {
        match &s.block {
            Some(b) if !b.is_empty() => {
                let inner = format!("section `{}` of {section}", s.text());
                for o in b {
                    self.left(o, &inner, why);
                }
            }
            Some(_) => self.warn(
                s,
                format!("section `{}` in {section} {why}; not imported", s.text()),
            ),
            None => self.warn(
                s,
                format!("`{}` in {section} {why}; not imported", s.text()),
            ),
        }
    }

    /// `volume N { device; disk; meta-disk; }` (DRBD 8.4): volume 0 is the
    /// resource's one volume; rep has no others.
    fn volume(&mut self, t: &mut Table, s: &Stmt, b: &[Stmt]) {
        if !matches!(s.args(), [n] if n.text == "0") {
            self.left(
                s,
                "the resource",
                "has no counterpart: a rep resource has one volume (make another resource of it)",
            );
            return;
        }
        for o in b {
            match (o.key(), &o.block) {
                ("device" | "disk" | "meta-disk" | "flexible-meta-disk", None) => {
                    self.node_key(t, o)
                }
                _ => self.left(o, "volume 0", "has no counterpart in rep"),
            }
        }
    }

    fn skipped(&mut self, s: &Stmt) {
        self.warn(s, format!("`{}`: skipped, as drbdadm skips it", s.text()));
    }

    /// A whole number value, or a warning naming the option.
    fn number(&mut self, s: &Stmt) -> Option<u64> {
        match s.args() {
            [v] => match v.text.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.warn(
                        s,
                        format!("`{}`: expected a whole number; not imported", s.text()),
                    );
                    None
                }
            },
            _ => {
                self.warn(
                    s,
                    format!("`{}`: expected one value; not imported", s.text()),
                );
                None
            }
        }
    }

    /// The single value of `s`, or a warning.
    fn one<'a>(&mut self, s: &'a Stmt) -> Option<&'a str> {
        if let [v] = s.args() {
            Some(v.text.as_str())
        } else {
            self.warn(
                s,
                format!("`{}`: expected one value; not imported", s.text()),
            );
            None
        }
    }

    /// The statements of a `resource` or `common` body.
    fn body(&mut self, d: &mut Draft, stmts: &[Stmt]) {
        for s in stmts {
            match (s.key(), &s.block) {
                ("protocol", None) => self.protocol(d, s),
                ("startup", Some(b)) => self.section(d, b, Self::startup),
                ("disk", Some(b)) => self.section(d, b, Self::disk_opt),
                ("net", Some(b)) => self.section(d, b, Self::net_opt),
                ("syncer", Some(b)) => self.section(d, b, Self::syncer_opt),
                ("handlers", Some(b)) => {
                    for h in b {
                        self.handler(d, h);
                    }
                }
                ("on", Some(b)) => self.on_host(d, s, b),
                ("floating", Some(b)) => self.floating(d, s, b),
                ("device" | "disk" | "meta-disk" | "flexible-meta-disk" | "address", None) => {
                    let mut t = std::mem::take(&mut d.node_defaults);
                    self.node_key(&mut t, s);
                    d.node_defaults = t;
                }
                ("volume", Some(b)) => {
                    let mut t = std::mem::take(&mut d.node_defaults);
                    self.volume(&mut t, s, b);
                    d.node_defaults = t;
                }
                ("skip", _) => self.skipped(s),
                ("incon-degr-cmd", None) => self.left(
                    s,
                    "the resource",
                    "(DRBD 0.7: run when starting degraded with inconsistent data) has no \
                     counterpart: rep refuses to become Primary on Inconsistent data without \
                     `repctl primary --force`",
                ),
                _ => self.left(s, "the resource", "has no counterpart in rep"),
            }
        }
    }

    fn section(&mut self, d: &mut Draft, b: &[Stmt], f: fn(&mut Self, &mut Draft, &Stmt)) {
        for s in b {
            if s.key() == "skip" {
                self.skipped(s);
            } else {
                f(self, d, s);
            }
        }
    }

    fn protocol(&mut self, d: &mut Draft, s: &Stmt) {
        match self.one(s) {
            Some(p @ ("A" | "B" | "C" | "a" | "b" | "c")) => {
                d.resource
                    .value("protocol", p.to_ascii_uppercase(), from(s));
            }
            Some(_) => self.warn(
                s,
                format!(
                    "`{}`: unknown protocol; not imported (rep: A, B or C)",
                    s.text()
                ),
            ),
            None => {}
        }
    }

    fn startup(&mut self, d: &mut Draft, s: &Stmt) {
        match s.key() {
            k @ ("wfc-timeout" | "degr-wfc-timeout") => {
                if let Some(n) = self.number(s) {
                    d.startup.value(k, to_int(n), from(s));
                }
            }
            "become-primary-on" => self.left(
                s,
                "startup",
                "has no counterpart: a node becomes Primary by `repctl primary` or the cluster \
                 agent ([cluster] preferred); [startup] resume-after-crash covers a restart after \
                 a crash",
            ),
            _ => self.left(s, "startup", "has no counterpart in rep"),
        }
    }

    fn disk_opt(&mut self, d: &mut Draft, s: &Stmt) {
        if self.controller(d, s) {
            return;
        }
        match s.key() {
            "on-io-error" => self.on_io_error(d, s),
            "resync-rate" => self.rate(d, s),
            "al-extents" => self.al_extents(d, s),
            "fencing" => self.fencing(d, s),
            _ => self.left(s, "disk", "has no counterpart in rep"),
        }
    }

    fn on_io_error(&mut self, d: &mut Draft, s: &Stmt) {
        let Some(v) = self.one(s) else { return };
        let v = v.replace('_', "-");
        if matches!(v.as_str(), "pass-on" | "detach" | "call-local-io-error") {
            d.disk.value("on-io-error", v.as_str(), from(s));
            return;
        }
        d.disk.value(
            "on-io-error",
            "pass-on",
            format!("{} (no counterpart)", from(s)),
        );
        self.warn(
            s,
            format!(
                "`{}` has no counterpart: DRBD 8.4 replaced `panic` by the local-io-error \
                 handler, and so does rep (on-io-error = \"call-local-io-error\" with a \
                 [handlers] local-io-error command that halts the node); imported as \
                 on-io-error = \"pass-on\": a request that fails on the local disk fails with \
                 its error and its range is marked out of sync",
                s.text()
            ),
        );
    }

    /// `rate` (syncer) or `resync-rate` (disk, 8.4): KiB/s unless suffixed.
    fn rate(&mut self, d: &mut Draft, s: &Stmt) {
        let Some(v) = self.one(s) else { return };
        let (digits, suffix) = match v.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                (v.get(..i).unwrap_or(""), c.to_ascii_uppercase())
            }
            _ => (v, 'K'),
        };
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || !"KMG".contains(suffix)
        {
            self.warn(
                s,
                format!(
                    "`{}`: expected a number with an optional K, M or G; not imported",
                    s.text()
                ),
            );
            return;
        }
        d.sync.value("rate", format!("{digits}{suffix}"), from(s));
    }

    fn al_extents(&mut self, d: &mut Draft, s: &Stmt) {
        let Some(n) = self.number(s) else { return };
        if (u64::from(AL_EXTENTS_MIN)..=u64::from(AL_EXTENTS_MAX)).contains(&n) {
            d.sync.value("al-extents", to_int(n), from(s));
        } else {
            self.warn(
                s,
                format!(
                    "`{}` is out of rep's range {AL_EXTENTS_MIN}..={AL_EXTENTS_MAX}; not imported (default 1237)",
                    s.text()
                ),
            );
        }
    }

    fn syncer_opt(&mut self, d: &mut Draft, s: &Stmt) {
        if self.controller(d, s) {
            return;
        }
        match s.key() {
            "rate" => self.rate(d, s),
            "al-extents" => self.al_extents(d, s),
            "verify-alg" | "csums-alg" => self.digest(d, s),
            "group" | "after" => self.left(
                s,
                "syncer",
                "(resync order between resources) has no counterpart: each rep resource \
                 resyncs on its own",
            ),
            _ => self.left(s, "syncer", "has no counterpart in rep"),
        }
    }

    /// `verify-alg` / `csums-alg`: rep has one digest, crc32c.
    fn digest(&mut self, d: &mut Draft, s: &Stmt) {
        let Some(alg) = self.one(s) else { return };
        if s.key() == "csums-alg" {
            d.net.value("csums", true, from(s));
            self.warn(
                s,
                format!("`{}`: checksum-based resync is on (net.csums = true); rep's digest is crc32c, not {alg}", s.text()),
            );
        } else {
            d.sync.value("verify", "crc32c", from(s));
            self.warn(
                s,
                format!("`{}`: online verify uses crc32c, not {alg}", s.text()),
            );
        }
    }

    fn net_opt(&mut self, d: &mut Draft, s: &Stmt) {
        match s.key() {
            "protocol" => self.protocol(d, s),
            "timeout" => self.scaled(d, s, "timeout-ms", 100),
            "ping-int" => self.scaled(d, s, "ping-int-ms", 1000),
            "max-buffers" => self.scaled(d, s, "max-buffers", 1),
            "ko-count" => self.ko_count(d, s),
            "cram-hmac-alg" => {
                if let Some(a) = self.one(s) {
                    d.cram_hmac_alg = Some((s.loc.clone(), a.to_owned()));
                }
            }
            "shared-secret" => {
                if let Some(v) = self.one(s) {
                    d.net
                        .value("secret", v, format!("{}: shared-secret", s.loc));
                }
            }
            "after-sb-0pri" | "after-sb-1pri" | "after-sb-2pri" => self.after_sb(d, s),
            "fencing" => self.fencing(d, s),
            "verify-alg" | "csums-alg" => self.digest(d, s),
            "ping-timeout" => self.left(
                s,
                "net",
                "has no key of its own: rep's net.timeout-ms bounds the answer to a ping too",
            ),
            "allow-two-primaries" => self.left(
                s,
                "net",
                "has no counterpart: rep never has two Primaries (no dual-primary mode)",
            ),
            _ => self.left(s, "net", "has no counterpart in rep"),
        }
    }

    /// A number multiplied into rep's unit (`timeout` in 0.1 s → ms).
    fn scaled(&mut self, d: &mut Draft, s: &Stmt, key: &str, factor: u64) {
        let Some(n) = self.number(s) else { return };
        if n == 0 {
            self.warn(
                s,
                format!("`{}`: 0 is not accepted by rep; not imported", s.text()),
            );
            return;
        }
        d.net.value(key, to_int(n.saturating_mul(factor)), from(s));
    }

    fn ko_count(&mut self, d: &mut Draft, s: &Stmt) {
        let Some(n) = self.number(s) else { return };
        if n == 0 {
            self.warn(
                s,
                "`ko-count 0` (off in DRBD): rep always drops a peer that does not complete a \
                 write within timeout × ko-count; not imported (default 7)"
                    .to_owned(),
            );
        } else {
            d.net.value("ko-count", to_int(n), from(s));
        }
    }

    fn after_sb(&mut self, d: &mut Draft, s: &Stmt) {
        let Some(v) = self.one(s) else { return };
        let ok = match s.key() {
            "after-sb-0pri" => v.parse::<AfterSb0Pri>().map(|p| p.to_string()),
            "after-sb-1pri" => v.parse::<AfterSb1Pri>().map(|p| p.to_string()),
            _ => v.parse::<AfterSb2Pri>().map(|p| p.to_string()),
        };
        match ok {
            Ok(p) => d.split_brain.value(s.key(), p, from(s)),
            Err(e) => self.warn(
                s,
                format!(
                    "`{}`: rep does not have this policy ({e}); not imported (default disconnect)",
                    s.text()
                ),
            ),
        }
    }

    /// `on HOST { ... }`: one node.
    fn on_host(&mut self, d: &mut Draft, s: &Stmt, b: &[Stmt]) {
        let [host] = s.args() else {
            self.left(
                s,
                "the resource",
                "names more than one host (DRBD 9 syntax)",
            );
            return;
        };
        let mut t = Table::default();
        t.value(
            "name",
            host.text.as_str(),
            format!("{}: on {}", s.loc, host.text),
        );
        self.node_body(d, &mut t, b);
        d.nodes.push((s.loc.clone(), t));
    }

    /// `floating ADDRESS { ... }`: a node known by its address only.
    fn floating(&mut self, d: &mut Draft, s: &Stmt, b: &[Stmt]) {
        let mut t = Table::default();
        t.fill_in(
            "name",
            "\"HOST\"",
            format!(
                "{}: `floating` names no host: the node's host name (uname -n)",
                s.loc
            ),
        );
        self.warn(s, format!("`{}`: rep knows nodes by name: fill in the [[node]] name of the node at this address", s.text()));
        let mut addr = s.clone();
        if let Some(w) = addr.words.first_mut() {
            w.text = "address".to_owned();
        }
        self.node_key(&mut t, &addr);
        self.node_body(d, &mut t, b);
        d.nodes.push((s.loc.clone(), t));
    }

    fn node_body(&mut self, d: &mut Draft, t: &mut Table, b: &[Stmt]) {
        for o in b {
            match (o.key(), &o.block) {
                ("device" | "disk" | "meta-disk" | "flexible-meta-disk" | "address", None) => {
                    self.node_key(t, o);
                }
                ("disk", Some(b)) => self.section(d, b, Self::disk_opt),
                ("net", Some(b)) => self.section(d, b, Self::net_opt),
                ("volume", Some(b)) => self.volume(t, o, b),
                ("skip", _) => self.skipped(o),
                _ => self.left(o, "an `on` section", "has no counterpart in rep"),
            }
        }
    }
}

fn to_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

mod controller;
mod fencing;
mod node;
