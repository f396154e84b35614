//! heartbeat's `haresources`: `NODE RESOURCE...` (lines joined at a
//! trailing `\`) into `preferred` and the `[[cluster.resource]]` chain:
//! `IPaddr::` and bare addresses to `ip`, `drbddisk::` to `device`,
//! `Filesystem::` to `filesystem`, bare names to `service`.

use std::net::IpAddr;
use std::path::Path;

use rep_control::import::toml_out::Table;
use rep_control::import::Warning;

use super::ResourceInfo;

/// One resource group: the preferred node and the chain.
#[derive(Debug, Default)]
pub(super) struct Chain {
    pub preferred: Option<(String, String)>,
    pub device: bool,
    pub resources: Vec<Table>,
}

/// The logical lines: `(first line number, words)`, `\` continuations joined.
fn groups(text: &str) -> Vec<(u32, Vec<String>)> {
    let mut out: Vec<(u32, Vec<String>)> = Vec::new();
    let mut open: Option<(u32, Vec<String>)> = None;
    for (i, l) in text.lines().enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if open.is_none() && l.trim_start().starts_with('#') {
            continue;
        }
        let (body, cont) = match l.trim_end().strip_suffix('\\') {
            Some(b) => (b, true),
            None => (l, false),
        };
        let entry = open.get_or_insert_with(|| (n, Vec::new()));
        entry.1.extend(body.split_whitespace().map(str::to_owned));
        if !cont {
            if let Some(g) = open.take().filter(|g| !g.1.is_empty()) {
                out.push(g);
            }
        }
    }
    out.extend(open.filter(|g| !g.1.is_empty()));
    out
}

struct Ctx<'a> {
    dir: &'a Path,
    res: Option<&'a ResourceInfo>,
    warnings: &'a mut Vec<Warning>,
    loc: String,
}

impl Ctx<'_> {
    fn warn(&mut self, word: &str, message: String) {
        self.warnings.push(Warning {
            loc: self.loc.clone(),
            option: word.to_owned(),
            message,
        });
    }
}

/// Reads haresources: the group of this resource (the one with its
/// `drbddisk::NAME`, else the first); the others are warned about.
pub(super) fn read_haresources(
    file: &Path,
    dir: &Path,
    text: &str,
    res: Option<&ResourceInfo>,
    warnings: &mut Vec<Warning>,
) -> Chain {
    let gs = groups(text);
    let mine = res
        .and_then(|r| {
            let tag = format!("drbddisk::{}", r.name);
            gs.iter().position(|(_, w)| w.contains(&tag))
        })
        .unwrap_or(0);
    let mut chain = Chain::default();
    for (k, (n, words)) in gs.iter().enumerate() {
        let loc = format!("{}:{n}", file.display());
        let mut c = Ctx {
            dir,
            res,
            warnings,
            loc,
        };
        if k != mine {
            let first = words.first().cloned().unwrap_or_default();
            c.warn(&first, format!("`{}`: another resource group; rep runs one chain per resource file: import it with --resource for the resource it belongs to", words.join(" ")));
            continue;
        }
        let Some((node, rest)) = words.split_first() else {
            continue;
        };
        chain.preferred = Some((node.clone(), format!("{}: haresources {node}", c.loc)));
        for w in bracketed(&mut c, rest) {
            resource(&mut c, &mut chain, &w);
        }
    }
    chain
}

/// The words of a group, a `[...]` that spans words joined into one (as
/// in seed 004's `hostdata=[node IP address]`, an article's placeholder
/// that heartbeat itself would split into three resources).
fn bracketed(c: &mut Ctx<'_>, words: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut open = false;
    for w in words {
        match out.last_mut() {
            Some(last) if open => {
                last.push(' ');
                last.push_str(w);
            }
            _ => out.push(w.clone()),
        }
        if w.contains('[') && !w.contains(']') {
            open = true;
        } else if open && w.contains(']') {
            open = false;
            let joined = out.last().cloned().unwrap_or_default();
            let kind = joined.split("::").next().unwrap_or("").to_owned();
            c.warn(&kind, format!("`{joined}`: the [ ] spans several words (heartbeat splits at spaces); taken as one word: it looks like a placeholder of the article, put the real value there"));
        }
    }
    out
}

fn resource(c: &mut Ctx<'_>, chain: &mut Chain, word: &str) {
    let mut parts = word.split("::");
    let kind = parts.next().unwrap_or("");
    let args: Vec<&str> = parts.collect();
    match kind {
        "IPaddr" | "IPaddr2" => ip(c, chain, word, args.first().copied().unwrap_or("")),
        _ if args.is_empty() && kind.split('/').next().is_some_and(|a| a.parse::<IpAddr>().is_ok()) => {
            ip(c, chain, word, kind);
        }
        "drbddisk" => drbddisk(c, chain, word, args.first().copied()),
        "Filesystem" => filesystem(c, chain, word, &args),
        _ if args.is_empty() && !kind.contains('/') => service(c, chain, kind),
        _ => c.warn(kind, format!("`{word}`: rep's service resources take no arguments (SCRIPT start|stop|status); not imported: wrap it in a script of its own and list that as a service")),
    }
}

/// `IPaddr::ADDR[/PREFIX[/IFACE[/BROADCAST]]]`.
fn ip(c: &mut Ctx<'_>, chain: &mut Chain, word: &str, spec: &str) {
    let mut f = spec.split('/');
    let addr = f.next().unwrap_or("");
    let prefix = f.next().filter(|p| !p.is_empty());
    let iface = f.next().filter(|i| !i.is_empty());
    if f.next().is_some() {
        c.warn("IPaddr", format!("`{word}`: the broadcast address is not imported (the kernel derives it from the prefix)"));
    }
    if addr.parse::<IpAddr>().is_err() {
        c.warn(
            "IPaddr",
            format!("`{word}`: {addr:?} is not an IP address; not imported"),
        );
        return;
    }
    let from = format!("{}: {word}", c.loc);
    if let Some(t) = chain.resources.iter_mut().find(|t| same_ip(t, addr)) {
        c.warn("IPaddr", format!("`{word}`: the address is listed twice; imported once, with what each occurrence gives"));
        if let Some(p) = prefix {
            t.value("address", format!("{addr}/{p}"), from.clone());
        }
        if let Some(i) = iface {
            t.value("interface", i, from);
        }
        return;
    }
    let mut t = Table::default();
    t.value("type", "ip", from.clone());
    t.value("ip-of", addr, "");
    match prefix {
        Some(p) => t.value("address", format!("{addr}/{p}"), from.clone()),
        None => {
            let why = format!("{}: `{word}` gives no prefix length (heartbeat found it from the routes): fill in ADDRESS/PREFIX", c.loc);
            c.warn(
                "IPaddr",
                format!(
                    "`{word}`: no prefix length: fill in `address` of its [[cluster.resource]]"
                ),
            );
            t.fill_in(
                "address",
                &rep_control::import::toml_out::quote(&format!("{addr}/24")),
                why,
            );
        }
    }
    match iface {
        Some(i) => t.value("interface", i, from),
        None => {
            let why = format!(
                "{}: `{word}` names no interface (heartbeat found it from the routes)",
                c.loc
            );
            c.warn(
                "IPaddr",
                format!("`{word}`: no interface: fill in `interface` of its [[cluster.resource]]"),
            );
            t.fill_in("interface", "\"eth0\"", why);
        }
    }
    chain.resources.push(t);
}

/// The ip resource of `addr` (tables of other types carry no `ip-of`).
fn same_ip(t: &Table, addr: &str) -> bool {
    matches!(t.get("ip-of"), Some(rep_control::import::toml_out::Entry::Value(toml::Value::String(a), _)) if a == addr)
}

fn drbddisk(c: &mut Ctx<'_>, chain: &mut Chain, word: &str, name: Option<&str>) {
    match (name, c.res) {
        (Some(n), Some(r)) if n != r.name => {
            c.warn("drbddisk", format!("`{word}`: resource {n} is not {}: it has a resource file and an agent of its own; not imported here", r.name));
            return;
        }
        (None, _) => c.warn(
            "drbddisk",
            format!("`{word}` (every DRBD resource): imported as this resource's device"),
        ),
        _ => {}
    }
    if !chain.resources.is_empty() {
        c.warn("drbddisk", format!("`{word}` comes after other resources in haresources; rep starts the device first (its Primary role), everything else on top of it"));
    }
    chain.device = true;
}

/// `Filesystem::DEVICE::MOUNTPOINT[::FSTYPE[::OPTIONS]]`.
fn filesystem(c: &mut Ctx<'_>, chain: &mut Chain, word: &str, args: &[&str]) {
    let (dev, mnt) = match args {
        [d, m, ..] if m.starts_with('/') => (*d, *m),
        _ => {
            c.warn(
                "Filesystem",
                format!("`{word}`: expected Filesystem::DEVICE::MOUNTPOINT; not imported"),
            );
            return;
        }
    };
    let from = format!("{}: {word}", c.loc);
    let mut t = Table::default();
    t.value("type", "filesystem", from.clone());
    if let Some(minor) = dev
        .strip_prefix("/dev/drbd")
        .and_then(|m| m.parse::<u32>().ok())
    {
        match c.res {
            Some(r) if !r.devices.contains(&minor) => {
                c.warn("Filesystem", format!("`{word}`: /dev/drbd{minor} is not the device of resource {}; not imported here (import it with that resource's file)", r.name));
                return;
            }
            Some(_) => {}
            None => c.warn("Filesystem", format!("`{word}`: {dev} is taken as this resource's device (/dev/ublkbN); give --resource to check it")),
        }
    } else {
        c.warn("Filesystem", format!("`{word}`: {dev} is not a DRBD device: the agent mounts it as written; if its data is to be replicated, make it a rep resource's disk and remove `device`"));
        t.value("device", dev, from.clone());
    }
    t.value("mount-point", mnt, from.clone());
    if let Some(fs) = args.get(2).filter(|f| !f.is_empty()) {
        t.value("fstype", *fs, from.clone());
    }
    if let Some(o) = args.get(3).filter(|o| !o.is_empty()) {
        t.value("options", *o, from.clone());
    }
    if args.len() > 4 {
        c.warn(
            "Filesystem",
            format!("`{word}`: fields after the options are not imported"),
        );
    }
    chain.resources.push(t);
}

/// A bare name: heartbeat's resource.d script, else the init script.
fn service(c: &mut Ctx<'_>, chain: &mut Chain, name: &str) {
    let local = c.dir.join("resource.d").join(name);
    let script = if local.is_file() {
        std::fs::canonicalize(&local).unwrap_or(local)
    } else {
        Path::new("/etc/init.d").join(name)
    };
    let mut t = Table::default();
    t.value("type", "service", format!("{}: {name}", c.loc));
    t.value("script", script.display().to_string(), "");
    chain.resources.push(t);
}
