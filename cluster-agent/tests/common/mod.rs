//! Two nodes in two network namespaces joined by TWO veth pairs (two
//! heartbeat paths; replication and NBD on the first), each with a real
//! `repd` (started with `repctl up`) and a real `cluster-agent`, driven the
//! way a user would: `repctl`, `cluster-agent status --json`, NBD clients.

#![allow(
    dead_code,
    unused_imports,
    clippy::needless_range_loop,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rep_control::protocol::{ControlCmd, ControlReply};
use rep_testkit::netns::{add_netns, del_netns};
use rep_testkit::{in_netns, Repctl};
use serde_json::Value;

pub use rep_testkit::{ip, poll, random_file, require, send_from_ns, serial, write_exec};

pub const NODES: [&str; 2] = ["alpha", "beta"];
pub const KEY: &str = "test-heartbeat-key";
pub const HB_PORT: u16 = 694;
pub const WITNESS_PORT: u16 = 7790;

/// The binaries under test: repd and repctl from the workspace (built
/// here if needed, into the same target directory), and the agent.
#[derive(Debug)]
pub struct Bins {
    pub repctl: PathBuf,
    pub repd: PathBuf,
    pub agent: PathBuf,
}

pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = rep_testkit::build_bins(
            &rep_testkit::profile_dir(),
            &["ublk-target"],
            &["repctl", "repd"],
        );
        let b = Bins {
            repctl: dir.join("repctl"),
            repd: dir.join("repd"),
            agent: PathBuf::from(env!("CARGO_BIN_EXE_cluster-agent")),
        };
        for p in [&b.repctl, &b.repd, &b.agent] {
            assert!(p.exists(), "{} is missing", p.display());
        }
        b
    })
}

/// Two namespaces joined by two veth pairs: `link` 0 and 1; optionally a
/// third namespace, the witness's machine, with one veth pair to each node.
#[derive(Debug)]
pub struct Net {
    pub ns: [String; 2],
    /// `ips[link][node]`
    pub ips: [[String; 2]; 2],
    /// `veth[link][node]`
    pub veth: [[String; 2]; 2],
    pub witness: Option<WitnessNet>,
}

/// The witness's namespace: its address (on its loopback, routed to from
/// both nodes) and the link to each node.
#[derive(Debug)]
pub struct WitnessNet {
    pub ns: String,
    pub addr: String,
    /// The witness's end of the link to node i (the nodes' route to `addr`).
    pub gw: [String; 2],
}

impl Net {
    pub fn new() -> Self {
        Self::build(false)
    }

    pub fn with_witness() -> Self {
        Self::build(true)
    }

    fn build(with_witness: bool) -> Self {
        require("ip", "iproute2");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let ns = [format!("cag{pid}-{k}a"), format!("cag{pid}-{k}b")];
        let third = (pid % 250) as u8;
        let ips = [
            [
                format!("10.{third}.{}.1", 2 * k),
                format!("10.{third}.{}.2", 2 * k),
            ],
            [
                format!("10.{third}.{}.1", 2 * k + 1),
                format!("10.{third}.{}.2", 2 * k + 1),
            ],
        ];
        // Created under unique names (at most 15 bytes) in the root
        // namespace, then renamed `link0` / `link1` inside each namespace so
        // that the (identical) config can name the interface of a service IP.
        let v = |l: u32, s: &str| format!("cv{}{k}{l}{s}", pid % 1_000_000);
        let tmp = [[v(0, "a"), v(0, "b")], [v(1, "a"), v(1, "b")]];
        let veth = [
            ["link0".to_string(), "link0".to_string()],
            ["link1".to_string(), "link1".to_string()],
        ];
        for n in &ns {
            add_netns(n);
        }
        for l in 0..2 {
            ip(&[
                "link", "add", &tmp[l][0], "type", "veth", "peer", "name", &tmp[l][1],
            ]);
            for i in 0..2 {
                ip(&["link", "set", &tmp[l][i], "netns", &ns[i]]);
                ip(&[
                    "-n",
                    &ns[i],
                    "link",
                    "set",
                    "dev",
                    &tmp[l][i],
                    "name",
                    &veth[l][i],
                ]);
                ip(&[
                    "-n",
                    &ns[i],
                    "addr",
                    "add",
                    &format!("{}/24", ips[l][i]),
                    "dev",
                    &veth[l][i],
                ]);
                ip(&["-n", &ns[i], "link", "set", &veth[l][i], "up"]);
            }
        }
        let witness = with_witness.then(|| {
            let wns = format!("cag{pid}-{k}w");
            add_netns(&wns);
            let addr = format!("10.{third}.{}.1", 200 + k);
            let mut gw = [String::new(), String::new()];
            ip(&[
                "-n",
                &wns,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ]);
            for i in 0..2 {
                let net = format!("10.{third}.{}", 100 + 2 * k + i as u32);
                let (a, b) = (v(2 + i as u32, "n"), v(2 + i as u32, "w"));
                ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
                ip(&["link", "set", &a, "netns", &ns[i]]);
                ip(&["link", "set", &b, "netns", &wns]);
                ip(&["-n", &ns[i], "link", "set", "dev", &a, "name", "wit"]);
                let wname = format!("to-{}", NODES[i]);
                ip(&["-n", &wns, "link", "set", "dev", &b, "name", &wname]);
                ip(&[
                    "-n",
                    &ns[i],
                    "addr",
                    "add",
                    &format!("{net}.1/24"),
                    "dev",
                    "wit",
                ]);
                ip(&[
                    "-n",
                    &wns,
                    "addr",
                    "add",
                    &format!("{net}.2/24"),
                    "dev",
                    &wname,
                ]);
                ip(&["-n", &ns[i], "link", "set", "wit", "up"]);
                ip(&["-n", &wns, "link", "set", &wname, "up"]);
                gw[i] = format!("{net}.2");
                ip(&[
                    "-n",
                    &ns[i],
                    "route",
                    "add",
                    &format!("{addr}/32"),
                    "via",
                    &gw[i],
                ]);
            }
            WitnessNet { ns: wns, addr, gw }
        });
        Net {
            ns,
            ips,
            veth,
            witness,
        }
    }

    /// Take the link between node i and the witness down or up again.
    pub fn witness_link(&self, i: usize, up: bool) {
        let w = self.witness.as_ref().expect("a witness namespace");
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns[i], "link", "set", "wit", state]);
        ip(&[
            "-n",
            &w.ns,
            "link",
            "set",
            &format!("to-{}", NODES[i]),
            state,
        ]);
        if up {
            // The kernel dropped the route with the link.
            ip(&[
                "-n",
                &self.ns[i],
                "route",
                "replace",
                &format!("{}/32", w.addr),
                "via",
                &w.gw[i],
            ]);
        }
    }

    /// The service address the `ip` resource moves (on link 0's subnet).
    pub fn service_ip(&self) -> String {
        let base = self.ips[0][0].rsplit_once('.').unwrap().0;
        format!("{base}.100")
    }

    /// Whether node i's namespace carries the service address.
    pub fn has_service_ip(&self, i: usize) -> bool {
        let o = Command::new("ip")
            .args(["-n", &self.ns[i], "-o", "addr", "show", "dev", "link0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).contains(&format!("{}/24", self.service_ip()))
    }

    /// Take link `l` down (both ends) or up again.
    pub fn link(&self, l: usize, up: bool) {
        for i in 0..2 {
            ip(&[
                "-n",
                &self.ns[i],
                "link",
                "set",
                &self.veth[l][i],
                if up { "up" } else { "down" },
            ]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in self.ns.iter().chain(self.witness.as_ref().map(|w| &w.ns)) {
            del_netns(n);
        }
    }
}

/// How a test cluster is configured.
#[derive(Debug, Clone)]
pub struct Opts {
    /// `fence-command` exits with the code in `<dir>/fence.code` (None: no
    /// fence command at all).
    pub fence_code: Option<i32>,
    pub auto_failback: bool,
    pub preferred: Option<&'static str>,
    pub deadtime_ms: u64,
    pub disk_mib: u64,
    /// A service IP (`ip` resource on link0) at the end of the chain.
    pub service_ip: bool,
    /// A witness in a third namespace (`witness = ...` in the config).
    pub witness: bool,
    /// `on-no-quorum` (with a witness).
    pub on_no_quorum: Option<&'static str>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            fence_code: None,
            auto_failback: false,
            preferred: Some("alpha"),
            deadtime_ms: 2000,
            disk_mib: 64,
            service_ip: true,
            witness: false,
            on_no_quorum: None,
        }
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub run_dir: PathBuf,
    pub net: Net,
    pub nbd_port: u16,
    pub opts: Opts,
    pub agents: [Option<Child>; 2],
    pub witness: Option<Child>,
}

/// Temp files on a real filesystem (O_DIRECT works there; /tmp may be tmpfs).
pub fn target_tmp() -> PathBuf {
    rep_testkit::target_tmp!()
}

impl Cluster {
    pub fn new(opts: Opts) -> Self {
        let b = bins();
        require("nbdcopy", "libnbd-bin");
        let net = if opts.witness {
            Net::with_witness()
        } else {
            Net::new()
        };
        let dir = tempfile::Builder::new()
            .prefix("agent-test-")
            .tempdir_in(target_tmp())
            .unwrap();
        let d = dir.path();
        for n in NODES {
            rep_testkit::sparse_file(&d.join(format!("{n}.img")), opts.disk_mib << 20);
        }
        // Two services in the chain; both log to chain.log so the order shows.
        let svc = "#!/bin/sh\nd=$(dirname \"$0\"); n=$(basename \"$0\")\n\
                   case \"$1\" in\n\
                   start) if [ -e \"$d/fail.$n.$REP_NODE\" ]; then echo \"$REP_NODE start-fails $n\" >> \"$d/chain.log\"; echo \"$n cannot start here\" >&2; exit 1; fi\n\
                   echo \"$REP_NODE start $n\" >> \"$d/chain.log\"; touch \"$d/$n.$REP_NODE\";;\n\
                   stop) echo \"$REP_NODE stop $n\" >> \"$d/chain.log\"; rm -f \"$d/$n.$REP_NODE\";;\n\
                   status) [ -e \"$d/$n.$REP_NODE\" ];;\n\
                   *) exit 2;;\nesac\n";
        write_exec(&d.join("svc-a"), svc);
        write_exec(&d.join("svc-b"), svc);
        write_exec(
            &d.join("fence.sh"),
            "#!/bin/sh\nd=$(dirname \"$0\")\necho \"$REP_NODE fences $REP_PEER\" >> \"$d/fence.log\"\nexit $(cat \"$d/fence.code\")\n",
        );
        if let Some(c) = opts.fence_code {
            std::fs::write(d.join("fence.code"), c.to_string()).unwrap();
        }
        let nbd_port = 10809;
        let mut t = String::from(
            "[resource]\nname = \"r0\"\nprotocol = \"C\"\n\
             [net]\nsecret = \"test-secret\"\ntimeout-ms = 1000\nping-int-ms = 300\nko-count = 4\n\
             [sync]\nrate = \"0\"\nal-extents = 61\n",
        );
        for i in 0..2 {
            t.push_str(&format!(
                "[[node]]\nname = \"{}\"\naddress = \"{}:7788\"\ndisk = \"{}\"\nmeta-disk = \"internal\"\ndevice = {i}\nnbd = \"{}:{nbd_port}\"\n",
                NODES[i],
                net.ips[0][i],
                d.join(format!("{}.img", NODES[i])).display(),
                net.ips[0][i],
            ));
        }
        t.push_str(&format!(
            "[cluster]\nkeepalive-ms = 200\nwarntime-ms = {}\ndeadtime-ms = {}\ninitdead-ms = {}\nauth-key = \"{KEY}\"\nauto-failback = {}\nfailure-timeout-ms = 10000\n",
            opts.deadtime_ms / 2,
            opts.deadtime_ms,
            opts.deadtime_ms * 2,
            opts.auto_failback
        ));
        if let Some(p) = opts.preferred {
            t.push_str(&format!("preferred = \"{p}\"\n"));
        }
        if let Some(w) = &net.witness {
            t.push_str(&format!("witness = \"{}:{WITNESS_PORT}\"\n", w.addr));
        }
        if let Some(q) = opts.on_no_quorum {
            t.push_str(&format!("on-no-quorum = \"{q}\"\n"));
        }
        if opts.fence_code.is_some() {
            t.push_str(&format!(
                "fence-command = \"{}\"\nfence-timeout-ms = 5000\n",
                d.join("fence.sh").display()
            ));
        }
        for l in 0..2 {
            for i in 0..2 {
                t.push_str(&format!(
                    "[[cluster.path]]\nnode = \"{}\"\nbind = \"{}:{HB_PORT}\"\nname = \"link{l}\"\n",
                    NODES[i], net.ips[l][i]
                ));
            }
        }
        t.push_str("[[cluster.resource]]\ntype = \"device\"\n");
        for s in ["svc-a", "svc-b"] {
            t.push_str(&format!(
                "[[cluster.resource]]\ntype = \"service\"\nscript = \"{}\"\ntimeout-ms = 10000\n",
                d.join(s).display()
            ));
        }
        if opts.service_ip {
            t.push_str(&format!(
                "[[cluster.resource]]\ntype = \"ip\"\naddress = \"{}/24\"\ninterface = \"link0\"\n",
                net.service_ip()
            ));
        }
        let config = d.join("r0.toml");
        std::fs::write(&config, t).unwrap();
        let c = Cluster {
            run_dir: d.join("run"),
            config,
            net,
            nbd_port,
            opts,
            agents: [None, None],
            witness: None,
            dir,
        };
        let _ = b;
        for i in 0..2 {
            c.repctl_ok(i, &["create-md"]);
        }
        c
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn set_fence_code(&self, code: i32) {
        std::fs::write(self.path("fence.code"), code.to_string()).unwrap();
    }

    /// A command run inside node i's namespace.
    pub fn in_ns(&self, i: usize, program: &Path) -> Command {
        in_netns(Some(&self.net.ns[i]), program)
    }

    /// Node i's repctl, inside its namespace.
    pub fn node(&self, i: usize) -> Repctl<'_> {
        Repctl {
            bin: &bins().repctl,
            config: &self.config,
            node: NODES[i],
            run_dir: &self.run_dir,
            netns: Some(&self.net.ns[i]),
        }
    }

    pub fn repctl(&self, i: usize, args: &[&str]) -> Output {
        self.node(i).output(args)
    }

    pub fn repctl_ok(&self, i: usize, args: &[&str]) -> String {
        self.node(i).ok(args)
    }

    /// Sends `cmd` to node i's repd over its control socket, as repctl
    /// does, and returns the whole answer (`refusal` included).
    pub fn repd_control(&self, i: usize, cmd: &ControlCmd) -> ControlReply {
        let sock = rep_control::client::socket_path(&self.run_dir, "r0", NODES[i]);
        rep_control::client::request(&sock, cmd, Some(Duration::from_secs(60))).unwrap()
    }

    /// `repctl status --json`, or None when repd does not run.
    pub fn repd_status(&self, i: usize) -> Option<Value> {
        self.node(i).status()
    }

    pub fn up(&self, i: usize) {
        self.repctl_ok(i, &["up"]);
    }

    pub fn start_agent(&mut self, i: usize) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("agent-{}.log", NODES[i])))
            .unwrap();
        let mut c = self.in_ns(i, &bins().agent);
        c.arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(NODES[i])
            .arg("--run-dir")
            .arg(&self.run_dir)
            .env("REP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.agents[i] = Some(c.spawn().unwrap());
        // Wait until it answers.
        let t0 = Instant::now();
        while self.agent_status(i).is_none() {
            if let Some(Ok(Some(st))) = self.agents[i].as_mut().map(Child::try_wait) {
                panic!(
                    "the agent of {} exited ({st}):\n{}",
                    NODES[i],
                    self.agent_log(i)
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the agent of {} does not answer",
                NODES[i]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start the witness in its namespace (`cluster-agent --witness`).
    pub fn start_witness(&mut self) {
        let w = self.net.witness.as_ref().expect("a witness namespace");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("witness.log"))
            .unwrap();
        let mut c = in_netns(Some(&w.ns), &bins().agent);
        c.arg("--config")
            .arg(&self.config)
            .arg("--witness")
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("--state-file")
            .arg(self.path("witness.json"))
            .env("REP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.witness = Some(c.spawn().unwrap());
        let t0 = Instant::now();
        while !self.witness_log().contains("witness running") {
            if let Some(Ok(Some(st))) = self.witness.as_mut().map(Child::try_wait) {
                panic!("the witness exited ({st}):\n{}", self.witness_log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the witness does not start:\n{}",
                self.witness_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn witness_log(&self) -> String {
        std::fs::read_to_string(self.path("witness.log")).unwrap_or_default()
    }

    /// `cluster-agent --witness status [--json]`, as an operator on the
    /// witness's machine runs it.
    pub fn witness_cmd(&self, json: bool) -> Output {
        let mut c = Command::new(&bins().agent);
        c.arg("--config")
            .arg(&self.config)
            .arg("--witness")
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("status");
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    }

    /// The witness's status (`--json`), or None when it does not answer.
    pub fn witness_status(&self) -> Option<Value> {
        let o = self.witness_cmd(true);
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    /// What the witness remembers (its state file).
    pub fn witness_memory(&self) -> Value {
        let t = std::fs::read_to_string(self.path("witness.json")).unwrap_or_default();
        serde_json::from_str(&t).unwrap_or(Value::Null)
    }

    pub fn agent_cmd(&self, i: usize, args: &[&str]) -> Output {
        Command::new(&bins().agent)
            .arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(NODES[i])
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args)
            .output()
            .unwrap()
    }

    /// `cluster-agent status --json`, or None when no agent answers.
    pub fn agent_status(&self, i: usize) -> Option<Value> {
        let o = self.agent_cmd(i, &["status", "--json"]);
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    pub fn agent_log(&self, i: usize) -> String {
        rep_testkit::log_tail(&self.path(&format!("agent-{}.log", NODES[i])), 40)
    }

    pub fn debug(&self) -> String {
        let mut s = String::new();
        for i in 0..2 {
            s.push_str(&format!(
                "==== {} agent status:\n{}\n==== {} agent log:\n{}\n==== {} repd: {}\n",
                NODES[i],
                self.agent_cmd(i, &["status"])
                    .stdout
                    .iter()
                    .map(|&b| b as char)
                    .collect::<String>(),
                NODES[i],
                self.agent_log(i),
                NODES[i],
                self.repd_status(i)
                    .map(|v| format!(
                        "{} {} {} {}",
                        v["role"], v["disk"], v["connection"], v["peer_disk"]
                    ))
                    .unwrap_or_else(|| "not running".into())
            ));
        }
        if self.witness.is_some() {
            s.push_str(&format!(
                "==== witness log:\n{}\n==== witness memory: {}\n",
                rep_testkit::log_tail(&self.path("witness.log"), 30),
                self.witness_memory()
            ));
        }
        s
    }

    /// Wait until `f(agent status)` holds on node i.
    pub fn wait_agent(&self, i: usize, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        poll(
            &format!("{}'s agent: {what}", NODES[i]),
            secs,
            Duration::from_millis(50),
            || self.agent_status(i).filter(|st| f(st)),
            || self.debug(),
        )
    }

    pub fn wait_repd(&self, i: usize, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        poll(
            &format!("{}'s repd: {what}", NODES[i]),
            secs,
            Duration::from_millis(100),
            || self.repd_status(i).filter(|st| f(st)),
            || self.debug(),
        )
    }

    pub fn wait_synced(&self, secs: u64) {
        for i in 0..2 {
            self.wait_repd(
                i,
                "Connected UpToDate/UpToDate",
                secs,
                rep_testkit::is_synced,
            );
        }
    }

    /// Both repds up and in sync; alpha Primary if `alpha_primary` (the
    /// agents adopt it), else both Secondary (the agents decide); both
    /// agents running and settled with alpha holding the chain.
    pub fn start(&mut self, alpha_primary: bool) {
        self.prepare(alpha_primary);
        self.start_agent(0);
        self.start_agent(1);
        self.wait_agent(0, "alpha holding", 20, |s| s["state"] == "Holding");
        self.wait_agent(1, "beta idle, alpha alive", 20, |s| {
            s["state"] == "Idle" && s["peer"]["alive"] == true && s["peer"]["state"] == "Holding"
        });
        assert!(self.path("svc-a.alpha").exists() && self.path("svc-b.alpha").exists());
        if self.opts.service_ip {
            assert!(self.net.has_service_ip(0) && !self.net.has_service_ip(1));
        }
    }

    /// Both repds up and in sync, alpha Primary or both Secondary; no agents.
    pub fn prepare(&mut self, alpha_primary: bool) {
        self.up(0);
        self.up(1);
        self.repctl_ok(0, &["primary", "--force"]);
        self.wait_synced(60);
        if !alpha_primary {
            self.repctl_ok(0, &["secondary"]);
        }
    }

    pub fn nbd_uri(&self, i: usize) -> String {
        format!("nbd://{}:{}/r0", self.net.ips[0][i], self.nbd_port)
    }

    /// Write `file` at offset 0 through node i's NBD export, from its namespace.
    pub fn nbd_write(&self, i: usize, file: &Path) -> Output {
        let mut c = self.in_ns(i, Path::new("nbdcopy"));
        c.arg(file).arg(self.nbd_uri(i));
        c.output().unwrap()
    }

    pub fn repd_pid(&self, i: usize) -> Option<u32> {
        self.repd_status(i)
            .and_then(|v| v["pid"].as_u64())
            .map(|p| p as u32)
    }

    /// kill -9 of the node's agent and repd, as close together as possible;
    /// returns the moment of the kill.
    pub fn kill_everything(&mut self, i: usize) -> Instant {
        let pid = self.repd_pid(i).expect("repd runs");
        let at = Instant::now();
        if let Some(a) = self.agents[i].as_mut() {
            let _ = a.kill();
        }
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        if let Some(mut a) = self.agents[i].take() {
            let _ = a.wait();
        }
        rep_testkit::kill9_and_reap(pid, Duration::from_millis(10));
        at
    }

    pub fn chain_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("chain.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn data_bytes(&self) -> u64 {
        self.repd_status(0)
            .or_else(|| self.repd_status(1))
            .and_then(|v| v["data_bytes"].as_u64())
            .unwrap()
    }

    /// The data regions of both nodes, byte for byte.
    pub fn assert_identical(&self) {
        let n = self.data_bytes() as usize;
        rep_testkit::assert_same_data(&self.path("alpha.img"), &self.path("beta.img"), n);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in self
            .agents
            .iter_mut()
            .chain(Some(&mut self.witness))
            .flatten()
        {
            let _ = a.kill();
            let _ = a.wait();
        }
        for i in 0..2 {
            if let Some(pid) = self.repd_pid(i) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}
