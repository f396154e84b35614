//! `failover-bench`: how long the cluster agent takes to move the service
//! after `kill -9` of everything on the Primary, with the default settings.
//! See `failover-bench --help` and bench/RESULTS.md.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bench::rep::{field, is_synced};
use bench::util::{
    check_interrupt, install_signal_handlers, median, require_tool, run_with_timeout, sleep,
    KillOnDrop,
};
use clap::Parser;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "failover-bench",
    about = "Failover time of the cluster agent: kill -9 of the Primary's repd and agent until \
             the peer holds the chain and its NBD export takes a write",
    long_about = "Failover time of the cluster agent, on this host, in two network namespaces \
        (alpha, beta) joined by two veth pairs (two heartbeat paths; replication and NBD on the \
        first), each with a real repd (its NBD export is the device) and a real cluster-agent. \
        The [cluster] table uses the defaults (keepalive 200 ms, deadtime 2000 ms, no fence \
        command) unless --deadtime-ms is given; the chain is the device, a service script and \
        a service IP.\n\n\
        Each run: kill -9 of the holder's agent and repd at once (t = 0), then poll the \
        survivor every 20 ms for two moments: its agent says Holding (Primary, chain started), \
        and a 64 KiB write with nbdcopy through its NBD export succeeds. The failover time is \
        the later of the two. Then the killed node is restarted (repctl up, agent), resyncs and \
        becomes the standby of the next run, so runs alternate between the nodes.\n\n\
        Printed: every run, then median, min and max, the ratio of the median to the target \
        (3 s, --target-ms) and to deadtime (the part no agent can avoid without a witness or \
        STONITH telling it sooner).\n\n\
        Needs root, iproute2 and nbdcopy (Debian package libnbd-bin), and repd, repctl and \
        cluster-agent (cargo build --release -p ublk-target -p cluster-agent --bins).",
    after_help = "Example: CARGO_TARGET_DIR=/work/target-ops cargo run --release -p bench --bin failover-bench -- --runs 5"
)]
struct Cli {
    /// Directory with repd, repctl and cluster-agent [default: the directory of this executable]
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where the temporary images go (not tmpfs: repd uses O_DIRECT)
    /// [default: <cargo target dir>/tmp, else /var/tmp]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Number of failovers
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// deadtime-ms of the [cluster] table [default: not set, i.e. the agent's default 2000]
    #[arg(long, value_name = "MS")]
    deadtime_ms: Option<u64>,
    /// The target the median is compared with
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    target_ms: u64,
    /// Size of each backing image, MiB
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    size_mib: u64,
}

const DEFAULT_DEADTIME_MS: u64 = 2000;
const NODES: [&str; 2] = ["alpha", "beta"];
const NBD_PORT: u16 = 10809;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = install_signal_handlers() {
        eprintln!("failover-bench: {e}");
        return ExitCode::FAILURE;
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failover-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn exe_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "own directory unknown".into())
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e} (apt-get install -y iproute2)"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// Two namespaces joined by two veth pairs, deleted on drop.
struct Net {
    ns: [String; 2],
    /// `ips[link][node]`
    ips: [[String; 2]; 2],
}

impl Net {
    fn new() -> Result<Self, String> {
        let pid = std::process::id();
        let ns = [format!("fob{pid}a"), format!("fob{pid}b")];
        let third = pid % 250;
        let ips = [
            [format!("10.{third}.250.1"), format!("10.{third}.250.2")],
            [format!("10.{third}.251.1"), format!("10.{third}.251.2")],
        ];
        let net = Net { ns, ips };
        for n in &net.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            ip(&["netns", "add", n])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        for l in 0..2 {
            let a = format!("fo{}{l}a", pid % 1_000_000);
            let b = format!("fo{}{l}b", pid % 1_000_000);
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
            for (i, tmp) in [a, b].iter().enumerate() {
                let ns = net.ns.get(i).ok_or("no namespace")?;
                let addr = net.ips.get(l).and_then(|x| x.get(i)).ok_or("no address")?;
                let name = format!("link{l}");
                ip(&["link", "set", tmp, "netns", ns])?;
                ip(&["-n", ns, "link", "set", "dev", tmp, "name", &name])?;
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", &name])?;
                ip(&["-n", ns, "link", "set", &name, "up"])?;
            }
        }
        Ok(net)
    }

    fn ns(&self, i: usize) -> &str {
        self.ns.get(i).map_or("", String::as_str)
    }

    fn ip(&self, link: usize, i: usize) -> &str {
        self.ips
            .get(link)
            .and_then(|x| x.get(i))
            .map_or("", String::as_str)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Both nodes: repd (through repctl) and the agent, in their namespaces.
struct Rig {
    dir: tempfile::TempDir,
    config: PathBuf,
    run_dir: PathBuf,
    bins: PathBuf,
    agents: [Option<KillOnDrop>; 2],
    repd: [Option<u32>; 2],
    // Last: the namespaces go after the processes in them.
    net: Net,
}

impl Rig {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn in_ns(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.net.ns(i)])
            .arg(self.bins.join(program));
        c
    }

    fn common_args(&self, c: &mut Command, i: usize) {
        c.arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(NODES.get(i).copied().unwrap_or_default())
            .arg("--run-dir")
            .arg(&self.run_dir);
    }

    fn repctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let mut c = self.in_ns(i, "repctl");
        self.common_args(&mut c, i);
        c.args(args);
        let o = run_with_timeout(&mut c, Duration::from_secs(60), true)?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!(
                "repctl {} on {}: {}",
                args.join(" "),
                NODES.get(i).copied().unwrap_or_default(),
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }

    fn repd_status(&self, i: usize) -> Result<Value, String> {
        let out = self.repctl(i, &["status", "--json"])?;
        serde_json::from_str(&out).map_err(|e| format!("status --json: {e}"))
    }

    fn up(&mut self, i: usize) -> Result<(), String> {
        let repd = self.bins.join("repd").display().to_string();
        self.repctl(i, &["up", "--repd", &repd])?;
        let pid = field(&self.repd_status(i)?, "pid")
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or("status --json has no pid")?;
        if let Some(slot) = self.repd.get_mut(i) {
            *slot = Some(pid);
        }
        Ok(())
    }

    fn agent_status(&self, i: usize) -> Option<Value> {
        let mut c = Command::new(self.bins.join("cluster-agent"));
        self.common_args(&mut c, i);
        c.args(["status", "--json"]);
        let o = c.stdin(Stdio::null()).output().ok()?;
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    fn start_agent(&mut self, i: usize) -> Result<(), String> {
        let name = NODES.get(i).copied().unwrap_or_default();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("agent-{name}.log")))
            .map_err(|e| format!("agent log: {e}"))?;
        let mut c = self.in_ns(i, "cluster-agent");
        self.common_args(&mut c, i);
        c.env("REP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = c
            .spawn()
            .map_err(|e| format!("cannot start cluster-agent: {e}"))?;
        if let Some(slot) = self.agents.get_mut(i) {
            *slot = Some(KillOnDrop {
                child,
                what: format!("cluster-agent {name}"),
            });
        }
        let t0 = Instant::now();
        while self.agent_status(i).is_none() {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("the agent of {name} does not answer"));
            }
            sleep(Duration::from_millis(50))?;
        }
        Ok(())
    }

    fn wait<T>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> Result<T, String> {
        let t0 = Instant::now();
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            if t0.elapsed() > limit {
                return Err(format!("timed out waiting for {what}\n{}", self.logs()));
            }
            sleep(Duration::from_millis(50))?;
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for n in NODES {
            let t = bench::util::file_tail(&self.path(&format!("agent-{n}.log")), 8);
            let _ = writeln!(s, "--- agent {n}:\n{t}");
        }
        s
    }

    /// kill -9 of node i's agent and repd; returns when both are gone.
    fn kill_node(&mut self, i: usize) -> Result<Instant, String> {
        let agent = self.agents.get_mut(i).and_then(Option::take);
        let repd = self.repd.get_mut(i).and_then(Option::take);
        let at = Instant::now();
        let mut agent = agent.ok_or("no agent to kill")?;
        let _ = agent.child.kill();
        if let Some(pid) = repd {
            let p = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = agent.child.wait();
        drop(agent);
        if let Some(pid) = repd {
            let t0 = Instant::now();
            while bench::rep::alive(pid) && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(at)
    }

    fn nbd_write(&self, i: usize, file: &Path) -> bool {
        let uri = format!("nbd://{}:{NBD_PORT}/r0", self.net.ip(0, i));
        Command::new("ip")
            .args(["netns", "exec", self.net.ns(i), "nbdcopy"])
            .arg(file)
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.take();
        }
        for pid in self.repd.iter().flatten() {
            let p = nix::unistd::Pid::from_raw(i32::try_from(*pid).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn config_text(dir: &Path, net: &Net, deadtime: Option<u64>) -> String {
    let mut t = String::from(
        "[resource]\nname = \"r0\"\nprotocol = \"C\"\n\
         [net]\nsecret = \"bench-secret\"\n\
         [sync]\nrate = \"0\"\n",
    );
    for (i, n) in NODES.iter().enumerate() {
        let _ = write!(
            t,
            "[[node]]\nname = \"{n}\"\naddress = \"{ip}:7788\"\ndisk = \"{}\"\nmeta-disk = \"internal\"\ndevice = {i}\nnbd = \"{ip}:{NBD_PORT}\"\n",
            dir.join(format!("{n}.img")).display(),
            ip = net.ip(0, i),
        );
    }
    t.push_str("[cluster]\nauth-key = \"bench-heartbeat-key\"\n");
    if let Some(d) = deadtime {
        // warntime and initdead follow, so that the table stays valid.
        let _ = write!(
            t,
            "deadtime-ms = {d}\nwarntime-ms = {}\ninitdead-ms = {}\n",
            (d / 2).max(200),
            (d * 5).max(10_000)
        );
    }
    for l in 0..2 {
        for (i, n) in NODES.iter().enumerate() {
            let _ = write!(
                t,
                "[[cluster.path]]\nnode = \"{n}\"\nbind = \"{}:694\"\nname = \"link{l}\"\n",
                net.ip(l, i)
            );
        }
    }
    let base = net.ip(0, 0).rsplit_once('.').map_or("", |x| x.0);
    let _ = write!(
        t,
        "[[cluster.resource]]\ntype = \"device\"\n\
         [[cluster.resource]]\ntype = \"service\"\nscript = \"{}\"\n\
         [[cluster.resource]]\ntype = \"ip\"\naddress = \"{base}.100/24\"\ninterface = \"link0\"\n",
        dir.join("svc").display()
    );
    t
}

struct Sample {
    holder: usize,
    holding: Duration,
    serving: Duration,
}

fn run(cli: &Cli) -> Result<(), String> {
    let bins = check_prerequisites(cli)?;
    let dir = make_temp_dir(cli, &bins)?;
    let load_before = loadavg();
    let deadtime = cli.deadtime_ms.unwrap_or(DEFAULT_DEADTIME_MS);
    println!(
        "failover-bench: {} runs, deadtime {deadtime} ms{}, target {} ms; {} cpus, load {load_before}",
        cli.runs,
        if cli.deadtime_ms.is_none() {
            " (default)"
        } else {
            ""
        },
        cli.target_ms,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
    );

    let net = Net::new()?;
    let probe = dir.path().join("probe.bin");
    let mut rig = build_rig(cli, bins, dir, net)?;
    let mut holder = bring_up(&mut rig)?;

    let mut samples = Vec::new();
    for run in 1..=cli.runs {
        check_interrupt()?;
        let sample = fail_over(&mut rig, run, holder, &probe)?;
        holder = 1 - sample.holder;
        samples.push(sample);
    }

    summarize(cli, &samples, deadtime);
    println!("load average: before {load_before}, after {}", loadavg());
    Ok(())
}

/// Root, the tools, and the three binaries; returns their directory.
fn check_prerequisites(cli: &Cli) -> Result<PathBuf, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces)".into());
    }
    require_tool("ip", "iproute2")?;
    require_tool("nbdcopy", "libnbd-bin")?;
    let bins = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => exe_dir()?,
    };
    for b in ["repd", "repctl", "cluster-agent"] {
        if !bins.join(b).is_file() {
            return Err(format!(
                "{} not found: cargo build --release -p ublk-target -p cluster-agent --bins \
                 (same CARGO_TARGET_DIR), or pass --bin-dir",
                bins.join(b).display()
            ));
        }
    }
    Ok(bins)
}

/// The temporary directory for images, logs and the config (not tmpfs).
fn make_temp_dir(cli: &Cli, bins: &Path) -> Result<tempfile::TempDir, String> {
    let base = match &cli.dir {
        Some(d) => d.clone(),
        None => bins
            .parent()
            .map(|t| t.join("tmp"))
            .unwrap_or_else(|| PathBuf::from("/var/tmp")),
    };
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    tempfile::Builder::new()
        .prefix("failover-bench-")
        .tempdir_in(&base)
        .map_err(|e| format!("temp dir in {}: {e}", base.display()))
}

/// Writes the images, the service script, the config and the probe file
/// into `dir`, and hands everything to a [`Rig`].
fn build_rig(cli: &Cli, bins: PathBuf, dir: tempfile::TempDir, net: Net) -> Result<Rig, String> {
    let d = dir.path();
    for n in NODES {
        let f =
            std::fs::File::create(d.join(format!("{n}.img"))).map_err(|e| format!("image: {e}"))?;
        f.set_len(cli.size_mib << 20)
            .map_err(|e| format!("image: {e}"))?;
    }
    let svc = d.join("svc");
    std::fs::write(
        &svc,
        "#!/bin/sh\nd=$(dirname \"$0\")\ncase \"$1\" in start) touch \"$d/on.$REP_NODE\";; stop) rm -f \"$d/on.$REP_NODE\";; status) [ -e \"$d/on.$REP_NODE\" ] || exit 3;; *) exit 2;; esac\n",
    )
    .map_err(|e| format!("service script: {e}"))?;
    std::fs::set_permissions(&svc, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| format!("service script: {e}"))?;
    let config = d.join("r0.toml");
    std::fs::write(&config, config_text(d, &net, cli.deadtime_ms))
        .map_err(|e| format!("config: {e}"))?;
    let probe = d.join("probe.bin");
    std::fs::write(&probe, vec![0x5au8; 64 << 10]).map_err(|e| format!("probe: {e}"))?;
    Ok(Rig {
        config,
        run_dir: d.join("run"),
        bins,
        agents: [None, None],
        repd: [None, None],
        net,
        dir,
    })
}

/// Both repds up and in sync, both agents running; returns the node whose
/// agent holds the chain.
fn bring_up(rig: &mut Rig) -> Result<usize, String> {
    for i in 0..2 {
        rig.repctl(i, &["create-md"])?;
        rig.up(i)?;
    }
    rig.repctl(0, &["primary", "--force"])?;
    rig.wait("the initial sync", Duration::from_secs(120), || {
        rig.repd_status(1).ok().filter(is_synced)
    })?;
    rig.repctl(0, &["secondary"])?;
    rig.start_agent(0)?;
    rig.start_agent(1)?;
    rig.wait("a holder", Duration::from_secs(30), || {
        (0..2).find(|&i| {
            rig.agent_status(i)
                .is_some_and(|s| field(&s, "state") == "Holding")
        })
    })
}

/// One run: kill the holder, time the survivor taking over, then bring the
/// killed node back as the standby of the next run.
fn fail_over(rig: &mut Rig, run: u32, holder: usize, probe: &Path) -> Result<Sample, String> {
    let survivor = 1 - holder;
    rig.wait("the standby", Duration::from_secs(60), || {
        rig.agent_status(survivor).filter(|s| {
            let peer = field(s, "peer");
            field(s, "state") == "Idle"
                && field(peer, "state") == "Holding"
                && field(peer, "alive") == true
        })
    })?;
    let t0 = rig.kill_node(holder)?;
    let (holding, serving) = time_takeover(rig, run, survivor, probe, t0)?;
    println!(
        "run {run}: kill -9 of {} -> {} Holding after {:.0} ms, NBD write ok after {:.0} ms; failover {:.0} ms",
        NODES.get(holder).copied().unwrap_or_default(),
        NODES.get(survivor).copied().unwrap_or_default(),
        holding.as_secs_f64() * 1000.0,
        serving.as_secs_f64() * 1000.0,
        holding.max(serving).as_secs_f64() * 1000.0
    );
    // The killed node comes back as the standby of the next run.
    rig.up(holder)?;
    rig.start_agent(holder)?;
    rig.wait("the resync", Duration::from_secs(120), || {
        rig.repd_status(holder).ok().filter(is_synced)
    })?;
    Ok(Sample {
        holder,
        holding,
        serving,
    })
}

/// Polls the survivor every 20 ms until its agent is Holding and its NBD
/// export takes a write; returns both times since `t0`.
fn time_takeover(
    rig: &Rig,
    run: u32,
    survivor: usize,
    probe: &Path,
    t0: Instant,
) -> Result<(Duration, Duration), String> {
    let mut holding = None;
    let mut serving = None;
    while holding.is_none() || serving.is_none() {
        check_interrupt()?;
        if holding.is_none()
            && rig
                .agent_status(survivor)
                .is_some_and(|s| field(&s, "state") == "Holding")
        {
            holding = Some(t0.elapsed());
        }
        if serving.is_none() && rig.nbd_write(survivor, probe) {
            serving = Some(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "run {run}: no failover within 60 s\n{}",
                rig.logs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((holding.unwrap_or_default(), serving.unwrap_or_default()))
}

/// Median, min and max over the runs, against the target and deadtime.
fn summarize(cli: &Cli, samples: &[Sample], deadtime: u64) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let total: Vec<f64> = samples
        .iter()
        .map(|s| ms(s.holding.max(s.serving)))
        .collect();
    let hold: Vec<f64> = samples.iter().map(|s| ms(s.holding)).collect();
    let med = median(&total).unwrap_or(f64::NAN);
    let min = total.iter().copied().fold(f64::INFINITY, f64::min);
    let max = total.iter().copied().fold(0.0, f64::max);
    let from_alpha = samples.iter().filter(|s| s.holder == 0).count();
    println!();
    println!(
        "failover time over {} runs ({from_alpha} from alpha, {} from beta):",
        samples.len(),
        samples.len() - from_alpha
    );
    println!(
        "  median {med:.0} ms, min {min:.0} ms, max {max:.0} ms (Holding alone: median {:.0} ms)",
        median(&hold).unwrap_or(f64::NAN)
    );
    println!(
        "  median / target ({} ms) = {:.2}  -> {}",
        cli.target_ms,
        med / cli.target_ms as f64,
        if med <= cli.target_ms as f64 {
            "within the target"
        } else {
            "OVER the target"
        }
    );
    println!(
        "  median / deadtime ({deadtime} ms) = {:.2}; beyond deadtime: {:.0} ms (detection tick, \
         promotion, chain start, first NBD connection, and this benchmark's 20 ms polling)",
        med / deadtime as f64,
        med - deadtime as f64
    );
}
