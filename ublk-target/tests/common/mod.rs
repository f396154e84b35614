//! A two-node cluster of real `repd` processes driven with `repctl` and real
//! NBD clients, the way a user would.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::needless_range_loop
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const NODES: [&str; 2] = ["alpha", "beta"];

/// `N` distinct free ports: each is held until all are picked (ports
/// asked for one at a time may repeat, and a resource file with one port
/// twice is refused).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&held) {
        *p = l.local_addr().unwrap().port();
    }
    ports
}

/// Fail loudly when a tool the test drives is missing.
pub fn require(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{tool} is not installed: apt-get install {package} (scripts/test-all.sh does it)"
    );
}

#[derive(Debug)]
pub struct Cluster {
    pub resource: String,
    pub dir: tempfile::TempDir,
    pub config: [PathBuf; 2],
    pub run_dir: PathBuf,
    /// Address prefix each node listens on (for netns runs).
    pub ip: [String; 2],
    pub nbd_port: [u16; 2],
    pub disk_bytes: u64,
    /// Run repctl (and clients) for node i inside this network namespace.
    pub netns: [Option<String>; 2],
}

#[derive(Debug)]
pub struct Opts {
    pub protocol: &'static str,
    pub disk_mib: u64,
    pub ip: [String; 2],
    pub netns: [Option<String>; 2],
    pub rate: &'static str,
    pub csums: bool,
    pub resource: &'static str,
    /// Share a run directory with other clusters (several resources, one host).
    pub run_dir: Option<PathBuf>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            protocol: "C",
            disk_mib: 64,
            ip: ["127.0.0.1".into(), "127.0.0.1".into()],
            netns: [None, None],
            rate: "0",
            csums: false,
            resource: "r0",
            run_dir: None,
        }
    }
}

pub fn config_text(
    o: &Opts,
    dir: &Path,
    ports: [u16; 2],
    nbd: [u16; 2],
    secret: &str,
    resource: &str,
) -> String {
    let mut s = format!(
        "[resource]\nname = \"{resource}\"\nprotocol = \"{}\"\n[net]\nsecret = \"{secret}\"\ntimeout-ms = 1000\nping-int-ms = 300\nko-count = 4\ncsums = {}\n[sync]\nrate = \"{}\"\nal-extents = 61\n",
        o.protocol, o.csums, o.rate
    );
    for i in 0..2 {
        s.push_str(&format!(
            "[[node]]\nname = \"{}\"\naddress = \"{}:{}\"\ndisk = \"{}\"\nmeta-disk = \"internal\"\ndevice = {}\nnbd = \"{}:{}\"\n",
            NODES[i],
            o.ip[i],
            ports[i],
            dir.join(format!("{}.img", NODES[i])).display(),
            i,
            o.ip[i],
            nbd[i]
        ));
    }
    s
}

impl Cluster {
    pub fn new(o: Opts) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rep-test-")
            .tempdir_in(target_tmp())
            .unwrap();
        let [p0, p1, n0, n1] = free_ports::<4>();
        let (ports, nbd) = ([p0, p1], [n0, n1]);
        for n in NODES {
            let f = std::fs::File::create(dir.path().join(format!("{n}.img"))).unwrap();
            f.set_len(o.disk_mib << 20).unwrap();
        }
        let text = config_text(&o, dir.path(), ports, nbd, "test-secret", o.resource);
        let p = dir.path().join(format!("{}.toml", o.resource));
        std::fs::write(&p, text).unwrap();
        let run_dir = o.run_dir.clone().unwrap_or_else(|| dir.path().join("run"));
        let c = Cluster {
            resource: o.resource.to_string(),
            config: [p.clone(), p],
            run_dir,
            ip: o.ip.clone(),
            nbd_port: nbd,
            disk_bytes: o.disk_mib << 20,
            netns: o.netns.clone(),
            dir,
        };
        for i in 0..2 {
            c.ok(i, &["create-md"]);
        }
        c
    }

    pub fn img(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.img", NODES[i]))
    }

    pub fn cmd(&self, i: usize, program: &str) -> Command {
        match &self.netns[i] {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    pub fn repctl(&self, i: usize, args: &[&str]) -> Output {
        let mut c = self.cmd(i, env!("CARGO_BIN_EXE_repctl"));
        c.arg("--config")
            .arg(&self.config[i])
            .arg("--node")
            .arg(NODES[i])
            .arg("--run-dir")
            .arg(&self.run_dir);
        c.args(args);
        c.output().unwrap()
    }

    /// Run repctl and insist it succeeds.
    pub fn ok(&self, i: usize, args: &[&str]) -> String {
        let o = self.repctl(i, args);
        assert!(
            o.status.success(),
            "repctl {} on {} failed:\n{}\n{}",
            args.join(" "),
            NODES[i],
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn up(&self, i: usize) {
        self.ok(i, &["up"]);
    }

    pub fn status(&self, i: usize) -> Value {
        let out = self.ok(i, &["status", "--json"]);
        serde_json::from_str(&out).unwrap()
    }

    /// Wait until `f(status)` holds, or fail with the last status.
    pub fn wait(&self, i: usize, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let st = self.status(i);
            if f(&st) {
                return st;
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                panic!(
                    "{}: timed out waiting for {what}; status:\n{st:#}\nlog tail:\n{}",
                    NODES[i],
                    self.log_tail(i)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_synced(&self, secs: u64) {
        for i in 0..2 {
            self.wait(i, "Connected UpToDate/UpToDate", secs, |s| {
                s["connection"] == "Connected"
                    && s["disk"] == "UpToDate"
                    && s["peer_disk"] == "UpToDate"
            });
        }
    }

    pub fn log_tail(&self, i: usize) -> String {
        let p = self
            .run_dir
            .join(format!("{}.{}.log", self.resource, NODES[i]));
        let t = std::fs::read_to_string(p).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn nbd_uri(&self, i: usize) -> String {
        format!(
            "nbd://{}:{}/{}",
            self.ip[i], self.nbd_port[i], self.resource
        )
    }

    pub fn data_bytes(&self, i: usize) -> u64 {
        self.status(i)["data_bytes"].as_u64().unwrap()
    }

    /// The data regions of both nodes, byte for byte.
    pub fn assert_identical(&self) {
        let n = self.data_bytes(0) as usize;
        let a = std::fs::read(self.img(0)).unwrap();
        let b = std::fs::read(self.img(1)).unwrap();
        let first = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y);
        assert!(
            first.is_none(),
            "data regions differ first at byte {first:?}"
        );
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.status(i)["pid"].as_u64().unwrap() as u32
    }

    pub fn kill9(&self, i: usize) {
        let pid = self.pid(i);
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        let t0 = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() && t0.elapsed() < Duration::from_secs(5) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains(") Z ") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run a client program for node i (inside its netns, if any).
    pub fn client(&self, i: usize, program: &str, args: &[&str]) -> Output {
        let mut c = self.cmd(i, program);
        c.args(args);
        c.output().unwrap()
    }

    /// Writes the file `src` through node i's export with nbdcopy, a real
    /// NBD client, from offset 0.
    pub fn nbd_write(&self, i: usize, src: &Path) {
        let o = self.client(i, "nbdcopy", &[src.to_str().unwrap(), &self.nbd_uri(i)]);
        assert!(
            o.status.success(),
            "nbdcopy into the export: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Reads node i's export back with nbdcopy and checks that it starts
    /// with the bytes of `src`.
    pub fn nbd_reads_back(&self, i: usize, src: &Path) {
        let back = self.dir.path().join("back.bin");
        let o = self.client(i, "nbdcopy", &[&self.nbd_uri(i), back.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "nbdcopy out of the export: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let a = std::fs::read(src).unwrap();
        let b = std::fs::read(&back).unwrap();
        assert!(
            b.len() >= a.len() && b[..a.len()] == a[..],
            "read back differs from what was written"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..2 {
            // Not through `ip netns exec`: the namespace may be gone already,
            // and the control socket is a path, reachable from anywhere.
            let o = Command::new(env!("CARGO_BIN_EXE_repctl"))
                .arg("--config")
                .arg(&self.config[i])
                .arg("--node")
                .arg(NODES[i])
                .arg("--run-dir")
                .arg(&self.run_dir)
                .args(["status", "--json"])
                .output()
                .unwrap();
            if let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) {
                if let Some(pid) = v["pid"].as_u64() {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
    }
}

/// Temp files on a real filesystem (O_DIRECT works there; /tmp may be tmpfs).
pub fn target_tmp() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&p).unwrap();
    p
}

pub fn random_file(dir: &Path, name: &str, bytes: usize, seed: u64) -> PathBuf {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(bytes);
    while v.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(bytes);
    let p = dir.join(name);
    std::fs::write(&p, v).unwrap();
    p
}

/// Two network namespaces joined by a veth pair.
#[derive(Debug)]
pub struct Netns {
    pub names: [String; 2],
    pub ips: [String; 2],
    pub veth: [String; 2],
}

pub fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 is installed (apt-get install iproute2)");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        require("ip", "iproute2");
        // Unique per process and per test (tests run in parallel).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = std::process::id() % 200 + 20;
        let _ = tag;
        let names = [format!("rep{id}-{k}a"), format!("rep{id}-{k}b")];
        let ips = [format!("10.{id}.{k}.1"), format!("10.{id}.{k}.2")];
        let (va, vb) = (format!("rv{id}x{k}a"), format!("rv{id}x{k}b"));
        for n in &names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &names[0]]);
        ip(&["link", "set", &vb, "netns", &names[1]]);
        for (i, (n, v)) in names.iter().zip([&va, &vb]).enumerate() {
            ip(&["-n", n, "addr", "add", &format!("{}/24", ips[i]), "dev", v]);
            ip(&["-n", n, "link", "set", v, "up"]);
        }
        Netns {
            names,
            ips,
            veth: [va, vb],
        }
    }

    pub fn opts(&self) -> Opts {
        Opts {
            ip: self.ips.clone(),
            netns: [Some(self.names[0].clone()), Some(self.names[1].clone())],
            ..Opts::default()
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Where a scenario runs.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Loopback,
    Netns,
}

/// A cluster for `mode`, plus the namespaces it needs (dropped after it).
pub fn cluster(mode: Mode, o: Opts) -> (Cluster, Option<Netns>) {
    match mode {
        Mode::Loopback => (Cluster::new(o), None),
        Mode::Netns => {
            let ns = Netns::new("t");
            let mut o2 = ns.opts();
            o2.protocol = o.protocol;
            o2.disk_mib = o.disk_mib;
            o2.rate = o.rate;
            o2.csums = o.csums;
            (Cluster::new(o2), Some(ns))
        }
    }
}
