//! `repd` nodes driven with `repctl`, as a user would: write the resource
//! file, `create-md`, `up`, `primary --force`, `status --json`, `down`.
//! A [`Node`] that is still up when dropped is taken down (or killed).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{file_tail, run_with_timeout, sleep};

/// One `[[node]]` of a resource file.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    /// Replication address, "IP:PORT".
    pub address: String,
    pub disk: PathBuf,
    /// NBD export address, "IP:PORT", if any.
    pub nbd: Option<String>,
}

/// A resource file (the same on both nodes).
#[derive(Debug, Clone)]
pub struct ResourceSpec {
    pub name: String,
    /// "A", "B" or "C".
    pub protocol: String,
    /// Resync rate, "0" = unlimited.
    pub rate: String,
    pub al_extents: u32,
    pub nodes: Vec<NodeSpec>,
}

impl ResourceSpec {
    /// The TOML text (values as in ublk-target/examples/r0.toml).
    pub fn toml(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "[resource]\nname = \"{}\"\nprotocol = \"{}\"\n\
             [net]\nsecret = \"bench-secret\"\ntimeout-ms = 6000\nping-int-ms = 1000\nko-count = 7\nmax-buffers = 2048\n\
             [sync]\nrate = \"{}\"\nal-extents = {}\n",
            self.name, self.protocol, self.rate, self.al_extents
        );
        for (i, n) in self.nodes.iter().enumerate() {
            let _ = write!(
                s,
                "[[node]]\nname = \"{}\"\naddress = \"{}\"\ndisk = \"{}\"\nmeta-disk = \"internal\"\ndevice = {i}\n",
                n.name,
                n.address,
                n.disk.display()
            );
            if let Some(nbd) = &n.nbd {
                let _ = writeln!(s, "nbd = \"{nbd}\"");
            }
        }
        s
    }
}

/// Where repctl and repd are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub repctl: PathBuf,
    pub repd: PathBuf,
}

impl Binaries {
    /// Both must be in `dir`; the error says how to build them.
    pub fn in_dir(dir: &Path) -> Result<Self, String> {
        let b = Binaries {
            repctl: dir.join("repctl"),
            repd: dir.join("repd"),
        };
        for p in [&b.repctl, &b.repd] {
            if !p.is_file() {
                return Err(format!(
                    "{} not found: build it with `cargo build --release -p ublk-target --bins` \
                     (same CARGO_TARGET_DIR as this benchmark) or pass --bin-dir",
                    p.display()
                ));
            }
        }
        Ok(b)
    }
}

/// One node's daemon, administered through repctl.
#[derive(Debug)]
pub struct Node {
    pub resource: String,
    pub name: String,
    pub config: PathBuf,
    pub run_dir: PathBuf,
    pub bins: Binaries,
    /// repd's pid once it is up.
    pub pid: Option<u32>,
}

/// How long a repctl command may take.
const REPCTL_LIMIT: Duration = Duration::from_secs(60);

impl Node {
    pub fn new(resource: &str, name: &str, config: &Path, run_dir: &Path, bins: &Binaries) -> Self {
        Node {
            resource: resource.into(),
            name: name.into(),
            config: config.into(),
            run_dir: run_dir.into(),
            bins: bins.clone(),
            pid: None,
        }
    }

    /// repctl ARGS for this node; Ok(stdout) if it succeeded. Stops early on Ctrl-C.
    pub fn repctl(&self, args: &[&str]) -> Result<String, String> {
        self.repctl_ext(args, true)
    }

    fn repctl_ext(&self, args: &[&str], interruptible: bool) -> Result<String, String> {
        let mut c = Command::new(&self.bins.repctl);
        c.arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(&self.name)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args);
        let o = run_with_timeout(&mut c, REPCTL_LIMIT, interruptible)
            .map_err(|e| format!("repctl {} on {}: {e}", args.join(" "), self.name))?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!(
                "repctl {} on {} failed ({}): {}{}",
                args.join(" "),
                self.name,
                o.status,
                String::from_utf8_lossy(&o.stderr).trim(),
                self.log_excerpt()
            ))
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.run_dir
            .join(format!("{}.{}.log", self.resource, self.name))
    }

    /// "\nlog tail:\n..." or nothing when there is no log yet.
    pub fn log_excerpt(&self) -> String {
        let t = file_tail(&self.log_path(), 10);
        if t.is_empty() {
            String::new()
        } else {
            format!("\n{} log tail:\n{t}", self.name)
        }
    }

    /// `create-md --force`: the benchmark's images are prefilled with
    /// non-zero data on purpose (no allocation during the runs), and
    /// create-md refuses to put internal metadata over data without it.
    pub fn create_md(&self) -> Result<(), String> {
        self.repctl(&["create-md", "--force"]).map(|_| ())
    }

    /// Start the daemon (O_DIRECT on the backing file, repd's default).
    pub fn up(&mut self) -> Result<(), String> {
        let repd = self.bins.repd.display().to_string();
        self.repctl(&["up", "--repd", &repd])?;
        let st = self.status()?;
        let pid = field(&st, "pid")
            .as_u64()
            .and_then(|p| u32::try_from(p).ok());
        self.pid = Some(pid.ok_or_else(|| format!("{}: status --json has no pid", self.name))?);
        Ok(())
    }

    pub fn status(&self) -> Result<Value, String> {
        let out = self.repctl(&["status", "--json"])?;
        serde_json::from_str(&out)
            .map_err(|e| format!("{}: status --json does not parse: {e}", self.name))
    }

    /// Poll `status --json` until `f` holds; the error shows the last status.
    pub fn wait(
        &self,
        what: &str,
        limit: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let t0 = Instant::now();
        loop {
            let st = self.status()?;
            if f(&st) {
                return Ok(st);
            }
            if t0.elapsed() > limit {
                return Err(format!(
                    "{}: no {what} after {limit:?}; connection {} disk {}/{} out-of-sync {}{}",
                    self.name,
                    field(&st, "connection"),
                    field(&st, "disk"),
                    field(&st, "peer_disk"),
                    field(&st, "out_of_sync_bytes"),
                    self.log_excerpt()
                ));
            }
            sleep(Duration::from_millis(100))?;
        }
    }

    /// Nothing in flight towards the peer or the disk (`pe`, `ua`, `ap`, `lo` all 0).
    pub fn wait_idle(&self, limit: Duration) -> Result<Value, String> {
        self.wait("idle (pe/ua/ap/lo = 0)", limit, |s| {
            ["pe", "ua", "ap", "lo"]
                .iter()
                .all(|k| field(field(s, "counters"), k).as_u64() == Some(0))
        })
    }

    /// `repctl down`; if that fails and repd does not exit by itself within
    /// 5 s, kill -9. Idempotent. Ok(Some(note)) when repctl reported an
    /// error but the daemon stopped anyway.
    pub fn down(&mut self) -> Result<Option<String>, String> {
        let Some(pid) = self.pid.take() else {
            return Ok(None);
        };
        if !alive(pid) {
            return Ok(Some(format!(
                "{}: repd pid {pid} had already exited",
                self.name
            )));
        }
        let err = match self.repctl_ext(&["down"], false) {
            Ok(_) => return Ok(None),
            Err(e) => e,
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if !alive(pid) {
                return Ok(Some(format!("{err}\n(repd pid {pid} exited anyway)")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let p = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        Err(format!(
            "{err}\n(repd pid {pid} still running after 5 s: killed)"
        ))
    }
}

/// Does the process exist (and is not a zombie)?
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 1..))
                .map(|r| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

impl Drop for Node {
    fn drop(&mut self) {
        match self.down() {
            Ok(None) => {}
            Ok(Some(note)) => eprintln!("cleanup: {note}"),
            Err(e) => eprintln!("cleanup: {e}"),
        }
    }
}

static NULL: Value = Value::Null;

/// `v[key]` without indexing: Null when absent.
pub fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&NULL)
}

/// Connected and both disks UpToDate (the initial sync is over).
pub fn is_synced(s: &Value) -> bool {
    field(s, "connection") == "Connected"
        && field(s, "disk") == "UpToDate"
        && field(s, "peer_disk") == "UpToDate"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_file() {
        let spec = ResourceSpec {
            name: "r0".into(),
            protocol: "A".into(),
            rate: "0".into(),
            al_extents: 1237,
            nodes: vec![
                NodeSpec {
                    name: "alpha".into(),
                    address: "127.0.0.1:1".into(),
                    disk: "/x/a.img".into(),
                    nbd: Some("127.0.0.1:2".into()),
                },
                NodeSpec {
                    name: "beta".into(),
                    address: "127.0.0.1:3".into(),
                    disk: "/x/b.img".into(),
                    nbd: None,
                },
            ],
        };
        let t = spec.toml();
        assert!(t.contains("protocol = \"A\"\n"));
        assert!(t.contains("rate = \"0\"\n"));
        assert!(t.contains("nbd = \"127.0.0.1:2\"\n"));
        assert_eq!(t.matches("[[node]]").count(), 2);
        assert_eq!(t.matches("nbd = ").count(), 1);
    }
}
