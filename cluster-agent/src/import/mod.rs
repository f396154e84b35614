//! `cluster-agent import-heartbeat DIR`: heartbeat's `ha.cf`, `authkeys`
//! and `haresources` (of /etc/ha.d) into the `[cluster]` table of a
//! resource file, by the rule of `rep_control::import`: what has a
//! counterpart maps to it, everything else is a named warning, and what the
//! old files lack (a node's address on a broadcast medium, a key for `crc`)
//! is a `# FILL IN` line.
//!
//! - here: the entry point, the node names, timing and paths.
//! - [`cli`]: the command: arguments, merging into the resource file, validation.
//! - `hacf`: ha.cf and authkeys.
//! - `haresources`: the resource group into `preferred` and the chain.

mod build;
pub mod cli;
mod hacf;
mod haresources;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use rep_control::import::toml_out::Table;
use rep_control::import::{ImportError, Warning, MAX_FILE_BYTES};

use self::build::Builder;
use self::hacf::{read_authkeys, read_ha_cf, HaCf, Medium};
use self::haresources::read_haresources;

/// What the import needs of the resource file the table is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    pub name: String,
    /// Each `[[node]]`'s name and the IP of its replication address (if set).
    pub nodes: Vec<(String, Option<IpAddr>)>,
    /// The nodes' `device` numbers (DRBD minors).
    pub devices: Vec<u32>,
}

impl ResourceInfo {
    /// Reads it from resource file text; keys still to be filled in are
    /// simply absent.
    ///
    /// # Errors
    /// When the text is not TOML or has no resource name.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let v: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        if v.get("cluster").is_some() {
            return Err(
                "it has a [cluster] table already; remove it or import into a copy without it"
                    .into(),
            );
        }
        let name = v
            .get("resource")
            .and_then(|r| r.get("name"))
            .and_then(toml::Value::as_str)
            .ok_or("it has no [resource] name")?
            .to_owned();
        let list = v
            .get("node")
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        let nodes = list
            .iter()
            .filter_map(|n| {
                let name = n.get("name")?.as_str()?.to_owned();
                let ip = n
                    .get("address")
                    .and_then(toml::Value::as_str)
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .map(|a| a.ip());
                Some((name, ip))
            })
            .collect();
        let devices = list
            .iter()
            .map(|n| {
                n.get("device")
                    .and_then(toml::Value::as_integer)
                    .unwrap_or(0)
            })
            .filter_map(|d| u32::try_from(d).ok())
            .collect();
        Ok(Self {
            name,
            nodes,
            devices,
        })
    }
}

/// The `[cluster]` table written from a heartbeat directory.
#[derive(Debug, Clone)]
pub struct HeartbeatImport {
    /// `[cluster]`, `[[cluster.path]]` and `[[cluster.resource]]` as TOML text.
    pub text: String,
    /// How many keys are `# FILL IN` lines.
    pub fill_ins: usize,
    pub warnings: Vec<Warning>,
}

/// Reads `dir/ha.cf`, `dir/authkeys` and `dir/haresources` (each may be
/// missing: a warning says what follows) for the resource `res`.
///
/// # Errors
/// When `dir` cannot be read, a file is too large or not text, or the
/// timing cannot be made valid.
pub fn import_heartbeat(
    dir: &Path,
    res: Option<&ResourceInfo>,
) -> Result<HeartbeatImport, ImportError> {
    if !dir.is_dir() {
        return Err(ImportError::Read {
            path: dir.to_owned(),
            message: "not a directory (give heartbeat's directory, e.g. /etc/ha.d)".to_owned(),
        });
    }
    let mut w = Vec::new();
    let ha = match read_opt(
        dir,
        "ha.cf",
        &mut w,
        "the timing takes rep's defaults and the heartbeat paths are to be filled in",
    )? {
        Some((p, t)) => read_ha_cf(&p, &t, &mut w),
        None => HaCf::default(),
    };
    let keys = match read_opt(dir, "authkeys", &mut w, "auth-key is to be filled in")? {
        Some((p, t)) => read_authkeys(&p, &t, &mut w),
        None => hacf::AuthKeys {
            key: None,
            missing: Some(format!("no {}/authkeys", dir.display())),
            warned: true,
        },
    };
    let chain = match read_opt(dir, "haresources", &mut w, "the chain is only the device")? {
        Some((p, t)) => read_haresources(&p, dir, &t, res, &mut w),
        None => haresources::Chain::default(),
    };
    let mut b = Builder {
        res,
        warnings: w,
        names: [None, None],
        ha_cf: dir.join("ha.cf").display().to_string(),
    };
    b.node_names(&ha);
    let mut cluster = Table::default();
    timing(
        &ha,
        &dir.join("ha.cf").display().to_string(),
        &mut cluster,
        &mut b.warnings,
    )?;
    match keys.key {
        Some((k, from)) => cluster.value("auth-key", k, from),
        None => {
            let why = keys.missing.unwrap_or_default();
            if !keys.warned {
                let loc = dir.join("authkeys").display().to_string();
                b.warn(&loc, "auth-key", &format!("{why}: rep signs heartbeats with HMAC-SHA256 and needs a key: fill in [cluster] auth-key"));
            }
            cluster.fill_in(
                "auth-key",
                "\"LONG RANDOM STRING\"",
                format!("{why}: the same key on both nodes"),
            );
        }
    }
    b.failback(&ha, &chain, &mut cluster);
    b.ping(&ha, &mut cluster);
    let paths = b.paths(&ha);
    Ok(b.finish(&cluster, &paths, chain))
}

/// `dir/name`'s text, or `None` with a warning when it does not exist.
fn read_opt(
    dir: &Path,
    name: &str,
    w: &mut Vec<Warning>,
    consequence: &str,
) -> Result<Option<(std::path::PathBuf, String)>, ImportError> {
    let p = dir.join(name);
    let err = |message: String| ImportError::Read {
        path: p.clone(),
        message,
    };
    match std::fs::metadata(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            w.push(Warning {
                loc: p.display().to_string(),
                option: name.to_owned(),
                message: format!("there is no {name}: {consequence}"),
            });
            Ok(None)
        }
        Err(e) => Err(err(e.to_string())),
        Ok(m) if m.len() > MAX_FILE_BYTES => Err(err(format!("more than {MAX_FILE_BYTES} bytes"))),
        Ok(_) => {
            let t = std::fs::read(&p).map_err(|e| err(e.to_string()))?;
            let t = String::from_utf8(t).map_err(|_| err("not UTF-8 text".to_owned()))?;
            Ok(Some((p, t)))
        }
    }
}

/// keepalive < warntime < deadtime <= initdead, deadtime >= 2 keepalives,
/// as the agent checks: given values are kept, a missing one takes rep's
/// default, or, when that would not fit the given ones, a derived value
/// with a warning.
fn timing(ha: &HaCf, file: &str, t: &mut Table, w: &mut Vec<Warning>) -> Result<(), ImportError> {
    let given = |k: &str| {
        ha.timing
            .iter()
            .rev()
            .find(|(key, _, _)| *key == k)
            .map(|(_, v, f)| (*v, f.clone()))
    };
    let ka = given("keepalive-ms").map_or(200, |g| g.0);
    let wt_g = given("warntime-ms");
    let dt_g = given("deadtime-ms");
    let dt = dt_g.as_ref().map_or(2000, |g| g.0);
    let dt = if dt_g.is_none() && (dt < 2 * ka || dt <= wt_g.as_ref().map_or(1000, |g| g.0)) {
        (4 * ka).max(2 * wt_g.as_ref().map_or(0, |g| g.0))
    } else {
        dt
    };
    let wt = wt_g.as_ref().map_or(
        if (ka..dt).contains(&1000) {
            1000
        } else {
            ka.max(dt / 2)
        },
        |g| g.0,
    );
    let id = given("initdead-ms").map_or(10_000.max(dt), |g| g.0);
    for (key, v, derived) in [
        ("keepalive-ms", ka, None),
        (
            "warntime-ms",
            wt,
            (wt != 1000).then_some("half of deadtime"),
        ),
        ("deadtime-ms", dt, (dt != 2000).then_some("4 keepalives")),
        ("initdead-ms", id, (id != 10_000).then_some("deadtime")),
    ] {
        match given(key) {
            Some((_, from)) => t.value(key, i64::try_from(v).unwrap_or(i64::MAX), from),
            None => {
                if let Some(how) = derived {
                    w.push(Warning {
                        loc: file.to_owned(),
                        option: key.trim_end_matches("-ms").to_owned(),
                        message: format!(
                            "not in ha.cf, and rep's default does not fit the given times: set to {v} ms ({how})"
                        ),
                    });
                    t.value(
                        key,
                        i64::try_from(v).unwrap_or(i64::MAX),
                        format!("derived: {how}"),
                    );
                }
            }
        }
    }
    if !(ka <= wt && wt < dt && dt >= 2 * ka && id >= dt) {
        return Err(ImportError::Unsupported {
            loc: file.to_owned(),
            message: format!(
                "keepalive {ka} ms, warntime {wt} ms, deadtime {dt} ms, initdead {id} ms: the agent \
                 needs keepalive <= warntime < deadtime <= initdead and deadtime >= 2 keepalives; \
                 fix ha.cf and import again"
            ),
        });
    }
    Ok(())
}

/// The header of the written table.
fn header(fill_ins: usize, res: Option<&ResourceInfo>) -> String {
    let mut h = String::new();
    let _ = writeln!(
        h,
        "# [cluster] imported from heartbeat's ha.cf, authkeys and haresources by\n\
         # `cluster-agent import-heartbeat`; each key's comment names its source line."
    );
    if fill_ins > 0 {
        let _ = writeln!(
            h,
            "# {fill_ins} value(s) are missing in the heartbeat files: complete the lines\n\
             # marked `# ... FILL IN` (remove the leading `# `)."
        );
    }
    if res.is_none() {
        let _ = writeln!(
            h,
            "# Append it to the resource file (identical on both nodes)."
        );
    }
    h
}
