//! heartbeat's `ha.cf` and `authkeys`: one `key value...` per line, `#`
//! comments. Read into what the `[cluster]` table can hold; every other key
//! becomes a named warning.

use std::net::IpAddr;
use std::path::Path;

use rep_control::import::Warning;

/// A file's meaningful lines: `(line number, words)`, comments and blank
/// lines dropped.
pub(super) fn lines(text: &str) -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.split('#').next().unwrap_or("");
        let words: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
        if !words.is_empty() {
            out.push((u32::try_from(i + 1).unwrap_or(u32::MAX), words));
        }
    }
    out
}

/// A heartbeat medium that can become a `[[cluster.path]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Medium {
    /// `bcast IFACE`, `udp IFACE`, `mcast IFACE ...`: no address of either node.
    Interface {
        loc: String,
        line: String,
        iface: String,
    },
    /// `ucast IFACE IP`: the address of one node.
    Ucast {
        loc: String,
        line: String,
        iface: String,
        ip: IpAddr,
    },
}

/// What ha.cf said that maps.
#[derive(Debug, Default)]
pub(super) struct HaCf {
    /// `(key, milliseconds, where)` for keepalive, warntime, deadtime, initdead.
    pub timing: Vec<(&'static str, u64, String)>,
    pub nodes: Vec<(String, String)>,
    pub media: Vec<Medium>,
    pub udpport: Option<(u16, String)>,
    pub auto_failback: Option<(bool, String)>,
    pub ping_nodes: Vec<(IpAddr, String)>,
    pub deadping_ms: Option<(u64, String)>,
    pub respawn_ipfail: bool,
}

/// heartbeat's time values: seconds (`2`, `0.5`) or milliseconds (`500ms`).
pub(super) fn parse_ms(v: &str) -> Option<u64> {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().ok();
    }
    let s = v.strip_suffix('s').unwrap_or(v);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || frac.len() > 3
        || !(int.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: u64 = int.parse().ok()?;
    let frac_ms: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().ok()?
    };
    whole.checked_mul(1000)?.checked_add(frac_ms)
}

struct Reader<'a> {
    file: &'a Path,
    warnings: &'a mut Vec<Warning>,
}

impl Reader<'_> {
    fn loc(&self, n: u32) -> String {
        format!("{}:{n}", self.file.display())
    }

    /// A warning on an authkeys line: named by its index and method, never
    /// showing the key.
    fn warn_key_line(&mut self, n: u32, words: &[String], message: &str) {
        let shown: Vec<&str> = words.iter().take(2).map(String::as_str).collect();
        self.warnings.push(Warning {
            loc: self.loc(n),
            option: shown.get(1).copied().unwrap_or_default().to_owned(),
            message: format!("`{}`: {message}", shown.join(" ")),
        });
    }

    fn warn(&mut self, n: u32, words: &[String], message: &str) {
        self.warnings.push(Warning {
            loc: self.loc(n),
            option: words.first().cloned().unwrap_or_default(),
            message: format!("`{}`: {message}", words.join(" ")),
        });
    }
}

/// Reads ha.cf's `text`; `file` names it in warnings.
pub(super) fn read_ha_cf(file: &Path, text: &str, warnings: &mut Vec<Warning>) -> HaCf {
    let mut r = Reader { file, warnings };
    let mut h = HaCf::default();
    for (n, words) in lines(text) {
        let key = words.first().map_or("", String::as_str);
        let args: Vec<&str> = words.iter().skip(1).map(String::as_str).collect();
        let loc = r.loc(n);
        let line = words.join(" ");
        match key {
            "keepalive" | "warntime" | "deadtime" | "initdead" => {
                let k: &'static str = match key {
                    "keepalive" => "keepalive-ms",
                    "warntime" => "warntime-ms",
                    "deadtime" => "deadtime-ms",
                    _ => "initdead-ms",
                };
                match args.as_slice() {
                    [v] if parse_ms(v).is_some_and(|ms| ms > 0) => {
                        h.timing
                            .push((k, parse_ms(v).unwrap_or(1), format!("{loc}: {line}")));
                    }
                    _ => r.warn(
                        n,
                        &words,
                        "expected a time (seconds, or NNNms); not imported",
                    ),
                }
            }
            "node" => {
                for a in &args {
                    h.nodes.push(((*a).to_owned(), loc.clone()));
                }
            }
            "bcast" | "udp" | "mcast" => media_interface(&mut r, &mut h, n, &words, &args),
            "ucast" => match args.as_slice() {
                [iface, ip] if ip.parse::<IpAddr>().is_ok() => {
                    let ip = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
                    h.media.push(Medium::Ucast {
                        loc,
                        line,
                        iface: (*iface).to_owned(),
                        ip,
                    });
                }
                _ => r.warn(n, &words, "expected `ucast INTERFACE IP`; not imported"),
            },
            "udpport" => match args.as_slice() {
                [p] if p.parse::<u16>().is_ok_and(|p| p > 0) => {
                    h.udpport = Some((p.parse().unwrap_or(694), format!("{loc}: {line}")));
                }
                _ => r.warn(n, &words, "expected a port number; not imported (694)"),
            },
            "auto_failback" | "nice_failback" => auto_failback(&mut r, &mut h, n, &words, &args),
            "ping" | "ping_group" => ping(&mut r, &mut h, n, &words, &args),
            "deadping" => match args.as_slice() {
                [v] if parse_ms(v).is_some_and(|ms| ms > 0) => {
                    h.deadping_ms = Some((parse_ms(v).unwrap_or(1), format!("{loc}: {line}")));
                }
                _ => r.warn(n, &words, "expected a time; not imported"),
            },
            "respawn" if args.last().is_some_and(|p| p.ends_with("/ipfail")) => {
                h.respawn_ipfail = true;
            }
            _ => r.warn(n, &words, &no_counterpart(key)),
        }
    }
    h
}

/// Why an ha.cf key has no counterpart, with a hint where there is one.
fn no_counterpart(key: &str) -> String {
    let why = match key {
        "serial" | "baud" => "rep's heartbeats are UDP only (no serial line); give a second network path instead, e.g. on a crossover cable",
        "logfile" | "debugfile" | "logfacility" | "use_logd" | "debug" => "the agent logs to stderr, which systemd's journal keeps",
        "watchdog" => "the agent does not drive a watchdog device",
        "stonith" | "stonith_host" => "fencing is [cluster] fence-command (DRBD's fence-peer contract)",
        "crm" => "rep has no CRM; the chain is [[cluster.resource]] (from haresources)",
        "respawn" => "the agent respawns nothing; run the program as a systemd service",
        "apiauth" => "the agent has no client API to authorise",
        _ => "has no counterpart in the cluster agent",
    };
    format!("{why}; not imported")
}

fn media_interface(r: &mut Reader<'_>, h: &mut HaCf, n: u32, words: &[String], args: &[&str]) {
    let key = words.first().map_or("", String::as_str);
    let ifaces: Vec<&str> = if key == "mcast" {
        args.first().copied().into_iter().collect()
    } else {
        args.to_vec()
    };
    if ifaces.is_empty() {
        r.warn(n, words, "names no interface; not imported");
        return;
    }
    for iface in ifaces {
        h.media.push(Medium::Interface {
            loc: r.loc(n),
            line: words.join(" "),
            iface: iface.to_owned(),
        });
    }
}

fn auto_failback(r: &mut Reader<'_>, h: &mut HaCf, n: u32, words: &[String], args: &[&str]) {
    let nice = words.first().is_some_and(|k| k == "nice_failback");
    let from = format!("{}: {}", r.loc(n), words.join(" "));
    let on = match args {
        ["on" | "yes" | "true"] => true,
        ["off" | "no" | "false"] => false,
        ["legacy"] if !nice => {
            r.warn(
                n,
                words,
                "legacy (fail back unless nice_failback) is imported as auto-failback = false",
            );
            false
        }
        _ => {
            r.warn(n, words, "expected on or off; not imported");
            return;
        }
    };
    // nice_failback on is the old spelling of auto_failback off.
    h.auto_failback = Some((on != nice, from));
}

fn ping(r: &mut Reader<'_>, h: &mut HaCf, n: u32, words: &[String], args: &[&str]) {
    let group = words.first().is_some_and(|k| k == "ping_group");
    let ips = if group {
        args.get(1..).unwrap_or(&[])
    } else {
        args
    };
    for ip in ips {
        match ip.parse::<IpAddr>() {
            Ok(ip) => h
                .ping_nodes
                .push((ip, format!("{}: {}", r.loc(n), words.join(" ")))),
            Err(_) => r.warn(
                n,
                words,
                &format!("{ip} is not an IP address; not imported"),
            ),
        }
    }
    if group {
        r.warn(
            n,
            words,
            "the group's addresses become ping-nodes; the agent counts them as one group (a node \
             none of them answers), as heartbeat counts a ping_group",
        );
    }
}

/// What authkeys selected: the key (`None` for crc) and where it was.
#[derive(Debug, Default)]
pub(super) struct AuthKeys {
    pub key: Option<(String, String)>,
    /// Why there is no usable key, when there is none.
    pub missing: Option<String>,
    /// A warning said so already (crc, an unknown method).
    pub warned: bool,
}

/// Reads authkeys: `auth N`, then `N METHOD [KEY]` lines.
pub(super) fn read_authkeys(file: &Path, text: &str, warnings: &mut Vec<Warning>) -> AuthKeys {
    let mut r = Reader { file, warnings };
    let ls = lines(text);
    let selected = ls.iter().find_map(|(_, w)| match w.as_slice() {
        [a, n] if a == "auth" => Some(n.clone()),
        _ => None,
    });
    let Some(sel) = selected else {
        return AuthKeys {
            key: None,
            missing: Some("authkeys has no `auth N` line".to_owned()),
            warned: false,
        };
    };
    let mut out = AuthKeys::default();
    for (n, words) in &ls {
        match words.as_slice() {
            [a, _] if a == "auth" => {}
            [idx, method, rest @ ..] if *idx == sel => {
                out = selected_key(&mut r, *n, words, method, rest);
            }
            [_, ..] => r.warn_key_line(
                *n,
                words,
                &format!("not the key in use (auth {sel}); not imported"),
            ),
            [] => {}
        }
    }
    if out.key.is_none() && out.missing.is_none() {
        out.missing = Some(format!(
            "{}: `auth {sel}` names no key line",
            file.display()
        ));
    }
    out
}

fn selected_key(
    r: &mut Reader<'_>,
    n: u32,
    words: &[String],
    method: &str,
    rest: &[String],
) -> AuthKeys {
    let loc = r.loc(n);
    match (method, rest) {
        ("crc", _) => {
            r.warn_key_line(n, words, "crc authenticates nothing (anyone can forge heartbeats); rep signs every heartbeat with HMAC-SHA256 and needs a key: fill in [cluster] auth-key");
            AuthKeys {
                key: None,
                missing: Some(format!("{loc}: crc has no key")),
                warned: true,
            }
        }
        ("sha1" | "md5", [key]) => {
            let mut msg =
                format!("the key is kept; rep signs heartbeats with HMAC-SHA256, not {method}");
            if key.starts_with('<') && key.ends_with('>') {
                msg.push_str(&format!(
                    "; {key} looks like a placeholder: put a real key in auth-key"
                ));
            }
            r.warn_key_line(n, words, &msg);
            AuthKeys {
                key: Some((key.clone(), format!("{loc}: {method} key"))),
                missing: None,
                warned: false,
            }
        }
        _ => {
            r.warn_key_line(n, words, "unknown method or no key; not imported");
            AuthKeys {
                key: None,
                missing: Some(format!("{loc}: no usable key")),
                warned: true,
            }
        }
    }
}
