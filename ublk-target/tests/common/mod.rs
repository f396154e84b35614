//! A two-node cluster of real `repd` processes driven with `repctl` and real
//! NBD clients, the way a user would.

#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::needless_range_loop
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rep_control::protocol::{ControlCmd, ControlReply};
use rep_testkit::{in_netns, Repctl};
use serde_json::Value;

pub use rep_testkit::{free_ports, ip, random_file, require};

mod clients;
pub mod fio;
pub mod link_tls;
pub mod nbd_tls;
mod small_disk;
pub use small_disk::primary_disk_on_small_tmpfs;

pub const NODES: [&str; 2] = ["alpha", "beta"];

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
            rep_testkit::sparse_file(&dir.path().join(format!("{n}.img")), o.disk_mib << 20);
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
        in_netns(self.netns[i].as_deref(), program)
    }

    /// Node i's repctl, inside its namespace if it has one.
    pub fn node(&self, i: usize) -> Repctl<'_> {
        Repctl {
            bin: Path::new(env!("CARGO_BIN_EXE_repctl")),
            config: &self.config[i],
            node: NODES[i],
            run_dir: &self.run_dir,
            netns: self.netns[i].as_deref(),
        }
    }

    pub fn repctl(&self, i: usize, args: &[&str]) -> Output {
        self.node(i).output(args)
    }

    /// Run repctl and insist it succeeds.
    pub fn ok(&self, i: usize, args: &[&str]) -> String {
        self.node(i).ok(args)
    }

    pub fn up(&self, i: usize) {
        self.ok(i, &["up"]);
    }

    /// Sends `cmd` to node i's repd over its control socket, as repctl
    /// does, and returns the whole answer (`refusal` included).
    pub fn control(&self, i: usize, cmd: &ControlCmd) -> ControlReply {
        let sock = rep_control::client::socket_path(&self.run_dir, &self.resource, NODES[i]);
        rep_control::client::request(&sock, cmd, Some(Duration::from_secs(60))).unwrap()
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
            self.wait(
                i,
                "Connected UpToDate/UpToDate",
                secs,
                rep_testkit::is_synced,
            );
        }
    }

    pub fn log_tail(&self, i: usize) -> String {
        let p = self
            .run_dir
            .join(format!("{}.{}.log", self.resource, NODES[i]));
        rep_testkit::log_tail(&p, 15)
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
        rep_testkit::assert_same_data(&self.img(0), &self.img(1), n);
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.status(i)["pid"].as_u64().unwrap() as u32
    }

    pub fn kill9(&self, i: usize) {
        let pid = self.pid(i);
        rep_testkit::kill9_and_reap(pid, Duration::from_millis(20));
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
            let here = Repctl {
                netns: None,
                ..self.node(i)
            };
            if let Some(pid) = here.status().and_then(|v| v["pid"].as_u64()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// Temp files on a real filesystem (O_DIRECT works there; /tmp may be tmpfs).
pub fn target_tmp() -> PathBuf {
    rep_testkit::target_tmp!()
}

/// Two network namespaces joined by a veth pair (the testkit's), and the
/// options of a cluster that runs in them.
#[derive(Debug)]
pub struct Netns(rep_testkit::Netns);

impl std::ops::Deref for Netns {
    type Target = rep_testkit::Netns;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        Netns(rep_testkit::Netns::new(tag))
    }

    pub fn opts(&self) -> Opts {
        Opts {
            ip: self.ips.clone(),
            netns: [Some(self.names[0].clone()), Some(self.names[1].clone())],
            ..Opts::default()
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
