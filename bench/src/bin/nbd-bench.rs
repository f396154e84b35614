//! `nbd-bench`: fio over the NBD export of repd, against nbdkit's file
//! plugin on the same filesystem. See `nbd-bench --help` and
//! bench/RESULTS.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bench::fio::{self, Workload, WriteResult};
use bench::procfs::{self, CpuUsage};
use bench::rep::{field, is_synced, Binaries, Node, NodeSpec, ResourceSpec};
use bench::util::{
    check_interrupt, file_tail, free_port, free_ports, human_bytes, interrupted, median,
    parse_size, prefill, require_tool, wait_tcp, KillOnDrop,
};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "nbd-bench",
    about = "Write throughput and latency of repd's NBD export (protocol C, protocol A, StandAlone) \
             against nbdkit's file plugin, with fio's nbd engine",
    long_about = "Write throughput and latency of repd's NBD export, measured with fio's nbd engine \
        (one fio job) in one run, against a baseline on the same filesystem.\n\n\
        Targets compared:\n  \
        repd protocol C          two repd on loopback, Connected UpToDate/UpToDate (initial sync done)\n  \
        repd protocol A          the same with protocol A\n  \
        repd StandAlone          one repd, Primary, disconnected from its peer\n  \
        nbdkit file              baseline: nbdkit's file plugin on an image of the same size (page cache)\n  \
        nbdkit file cache=none   the same with cache=none (evicts written pages, closer to repd's O_DIRECT)\n\n\
        Workloads: 4k random write QD32, 1M sequential write QD4. All targets run one workload \
        before the next workload starts, so drift of the machine hits every target alike; with \
        --rounds N the whole set repeats (target order rotated) and the tables show medians.\n\n\
        Printed per workload: IOPS, MB/s, p99 completion latency, the IOPS ratio to both \
        baselines, the CPU of the server processes during the run, and whether protocol C \
        reaches 0.8 x StandAlone (the target of the issue). At the end: the peak RSS (VmHWM) of \
        every repd against 64 MiB + its bitmap size.\n\n\
        Needs fio and nbdkit (Debian packages fio, nbdkit) and the repd/repctl binaries \
        (cargo build --release -p ublk-target --bins). Writes only into a temporary directory, \
        removed at the end; exits non-zero if any target failed.",
    after_help = "Example: CARGO_TARGET_DIR=/work/target-bench cargo run --release -p bench --bin nbd-bench -- --size 1G --runtime 15"
)]
struct Cli {
    /// Directory with repd and repctl [default: the directory of this executable]
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where the temporary image files go; must be a real filesystem, not tmpfs
    /// [default: <cargo target dir>/tmp, else /var/tmp]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Size of every backing image file (K/M/G suffixes) [default: 1G, --quick: 256M]
    #[arg(long, value_name = "SIZE")]
    size: Option<String>,
    /// Measured seconds per fio run [default: 15, --quick: 3]
    #[arg(long, value_name = "SECONDS")]
    runtime: Option<u64>,
    /// fio --ramp_time: seconds run before measuring [default: 2, --quick: 1]
    #[arg(long, value_name = "SECONDS")]
    ramp_time: Option<u64>,
    /// Repeat the whole set of runs this many times and report medians
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Smoke test: --size 256M --runtime 3 --ramp-time 1 (unless given)
    #[arg(long)]
    quick: bool,
    /// Also measure a protocol C pair whose Secondary keeps its image here:
    /// a second disk, or tmpfs (/dev/shm) on a machine with one disk. Two
    /// real nodes each have their own disk; on one machine with one disk
    /// the other pairs share it, and the Secondary's writes then compete
    /// with the Primary's. Printed as its own row, with its own ratio to
    /// StandAlone.
    #[arg(long, value_name = "DIR")]
    peer_dir: Option<PathBuf>,
    /// Also measure `floor-pair` (built with this benchmark): repd's NBD
    /// frontend over a minimal protocol C pair with no replication engine
    /// (plain threads, a CRC32C per frame, nothing on disk but the data),
    /// and the same alone. Its ratio is what a second copy costs on this
    /// machine whatever the engine; repd's rows are read against it. Its
    /// Secondary's image goes under --peer-dir when that is given.
    #[arg(long)]
    floor: bool,
    /// Measure only these targets (comma-separated): proto-c,
    /// proto-c-peer-own, proto-a, standalone, nbdkit, nbdkit-nocache,
    /// floor-c, floor-standalone [default: all that the other flags enable]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    targets: Vec<String>,
}

/// Options after applying the defaults.
#[derive(Debug)]
struct Settings {
    size: u64,
    runtime: u64,
    ramp: u64,
    rounds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RepC,
    /// Protocol C, the Secondary's image under --peer-dir.
    RepCPeerOwn,
    RepA,
    StandAlone,
    Nbdkit,
    NbdkitNoCache,
    /// floor-pair replicated: the least a protocol C pair costs here.
    FloorC,
    /// floor-pair with local writes only.
    FloorStandAlone,
}

const KINDS: [Kind; 8] = [
    Kind::RepC,
    Kind::RepCPeerOwn,
    Kind::RepA,
    Kind::StandAlone,
    Kind::Nbdkit,
    Kind::NbdkitNoCache,
    Kind::FloorC,
    Kind::FloorStandAlone,
];
const WORKLOADS: [Workload; 2] = [fio::RANDWRITE_4K_QD32, fio::SEQWRITE_1M_QD4];

/// The issue's target: protocol C reaches this fraction of StandAlone.
const C_VS_STANDALONE_TARGET: f64 = 0.8;

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::RepC => "repd protocol C",
            Kind::RepCPeerOwn => "repd C, --peer-dir",
            Kind::RepA => "repd protocol A",
            Kind::StandAlone => "repd StandAlone",
            Kind::Nbdkit => "nbdkit file",
            Kind::NbdkitNoCache => "nbdkit file cache=none",
            Kind::FloorC => "floor-pair C",
            Kind::FloorStandAlone => "floor-pair StandAlone",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Kind::RepC => "proto-c",
            Kind::RepCPeerOwn => "proto-c-peer-own",
            Kind::RepA => "proto-a",
            Kind::StandAlone => "standalone",
            Kind::Nbdkit => "nbdkit",
            Kind::NbdkitNoCache => "nbdkit-nocache",
            Kind::FloorC => "floor-c",
            Kind::FloorStandAlone => "floor-standalone",
        }
    }
}

/// A server fio can write to, with the processes behind it. Dropping it
/// takes the repd nodes down and kills nbdkit.
#[derive(Debug)]
struct Target {
    kind: Kind,
    uri: String,
    /// repd nodes, the Primary first.
    nodes: Vec<Node>,
    server: Option<KillOnDrop>,
    /// nbdkit's image, fsynced after each run.
    image: Option<PathBuf>,
}

impl Target {
    /// The server processes to watch, with a name for each.
    fn procs(&self) -> Vec<(u32, String)> {
        let mut v: Vec<(u32, String)> = self
            .nodes
            .iter()
            .filter_map(|n| n.pid.map(|p| (p, n.name.clone())))
            .collect();
        if let Some(s) = &self.server {
            let name = match self.kind {
                Kind::FloorC | Kind::FloorStandAlone => "floor",
                _ => "nbdkit",
            };
            v.push((s.pid(), name.into()));
        }
        v
    }

    /// Is the target in the state it is measured in?
    fn check_state(&mut self) -> Result<(), String> {
        if let Some(s) = &mut self.server {
            if !s.alive() {
                return Err(format!("{} exited", s.what));
            }
        }
        let Some(p) = self.nodes.first() else {
            return Ok(());
        };
        let st = p.status()?;
        let ok = field(&st, "role") == "Primary"
            && match self.kind {
                Kind::StandAlone => {
                    field(&st, "connection") == "StandAlone" && field(&st, "disk") == "UpToDate"
                }
                _ => is_synced(&st),
            };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{} is not in its measured state: role {} connection {} disk {}/{}{}",
                p.name,
                field(&st, "role"),
                field(&st, "connection"),
                field(&st, "disk"),
                field(&st, "peer_disk"),
                p.log_excerpt()
            ))
        }
    }

    /// After a run: let what is still in flight land, so it does not run
    /// into the next target's measurement.
    fn quiesce(&self) -> Result<(), String> {
        if let Some(img) = &self.image {
            std::fs::File::open(img)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("fsync {}: {e}", img.display()))?;
        }
        if let Some(p) = self.nodes.first() {
            p.wait_idle(Duration::from_secs(60))?;
        }
        Ok(())
    }
}

/// One fio run's figures.
#[derive(Debug, Clone)]
struct Sample {
    fio: WriteResult,
    cpu: Option<CpuUsage>,
    names: Vec<(u32, String)>,
}

impl Sample {
    fn server_cpu(&self) -> String {
        self.cpu
            .as_ref()
            .map_or("-".into(), |c| format!("{:.0}%", c.total_pct()))
    }

    fn busiest(&self) -> String {
        let Some((pid, comm, pct)) = self.cpu.as_ref().and_then(|c| c.busiest.clone()) else {
            return "-".into();
        };
        let who = self
            .names
            .iter()
            .find(|(p, _)| *p == pid)
            .map_or("?", |(_, n)| n.as_str());
        format!("{who}:{comm} {pct:.0}%")
    }

    /// Server CPU time per completed I/O, in µs.
    fn cpu_per_io(&self) -> String {
        match &self.cpu {
            Some(c) if self.fio.iops > 0.0 => {
                format!("{:.0}", c.total_pct() / 100.0 * 1e6 / self.fio.iops)
            }
            _ => "-".into(),
        }
    }

    fn host_cpu(&self) -> String {
        self.cpu
            .as_ref()
            .and_then(|c| c.host_pct)
            .map_or("-".into(), |h| format!("{h:.0}%"))
    }
}

/// The temp directory and everything running in it. Field order is drop
/// order: the servers stop before their files are removed.
#[derive(Debug)]
struct Lab {
    targets: Vec<Target>,
    dir: tempfile::TempDir,
    /// The Secondary's side of the --peer-dir pair.
    peer_dir: Option<tempfile::TempDir>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = bench::util::install_signal_handlers() {
        eprintln!("nbd-bench: warning: {e}");
    }
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("nbd-bench: error: {e}");
            if interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn settings(cli: &Cli) -> Result<Settings, String> {
    let (size, runtime, ramp) = if cli.quick {
        ("256M", 3, 1)
    } else {
        ("1G", 15, 2)
    };
    let size = parse_size(cli.size.as_deref().unwrap_or(size))?;
    if size < 64 << 20 {
        return Err(
            "--size must be at least 64M (repd keeps its metadata at the end of the image)".into(),
        );
    }
    let runtime = cli.runtime.unwrap_or(runtime);
    if runtime == 0 {
        return Err("--runtime must be at least 1 second".into());
    }
    Ok(Settings {
        size,
        runtime,
        ramp: cli.ramp_time.unwrap_or(ramp),
        rounds: cli.rounds,
    })
}

fn exe_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "this executable has no directory".into())
}

/// `<target dir>/tmp` when we run from a cargo target dir, else /var/tmp.
fn default_base_dir() -> PathBuf {
    exe_dir()
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf))
        .filter(|t| t.join("CACHEDIR.TAG").exists())
        .map_or_else(|| PathBuf::from("/var/tmp"), |t| t.join("tmp"))
}

/// Refuses to start when `dir` has less than `need` bytes free (when its
/// free space can be read at all).
fn ensure_free(dir: &Path, need: u64, what: &str) -> Result<(), String> {
    if let Ok(v) = nix::sys::statvfs::statvfs(dir) {
        let free = v.blocks_available() * v.fragment_size();
        if free < need {
            return Err(format!(
                "{} has {} free, {what} {}",
                dir.display(),
                human_bytes(free),
                human_bytes(need)
            ));
        }
    }
    Ok(())
}

fn fs_type(dir: &Path) -> String {
    let o = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "--target"])
        .arg(dir)
        .stderr(Stdio::null())
        .output();
    match o {
        // One line per mount stacked on the target (/dev/shm often has
        // two): the last is the one in effect.
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap_or("unknown")
            .trim()
            .to_string(),
        _ => Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(dir)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
    }
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

fn run(cli: &Cli) -> Result<bool, String> {
    let s = settings(cli)?;
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => exe_dir()?,
    };
    let bins = Binaries::in_dir(&bin_dir)?;
    require_tool("fio", "fio")?;
    require_tool("nbdkit", "nbdkit")?;
    let engines = Command::new("fio")
        .arg("--enghelp")
        .output()
        .map_err(|e| format!("cannot run fio: {e}"))?;
    if !String::from_utf8_lossy(&engines.stdout)
        .lines()
        .any(|l| l.trim() == "nbd")
    {
        return Err(
            "this fio has no nbd engine (Debian's fio package has it: apt-get install -y fio)"
                .into(),
        );
    }
    let plugin = Command::new("nbdkit")
        .args(["file", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !plugin.is_ok_and(|st| st.success()) {
        return Err("nbdkit has no file plugin: apt-get install -y nbdkit".into());
    }

    let base = cli.dir.clone().unwrap_or_else(default_base_dir);
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let fs = fs_type(&base);
    if fs == "tmpfs" || fs == "ramfs" {
        return Err(format!(
            "{} is on {fs}: pick a directory on a real filesystem with --dir",
            base.display()
        ));
    }
    // 5 repd images + 1 baseline image (+ the --peer-dir pair's Primary,
    // + floor-pair's two or three), and some room.
    let images = 6
        + u64::from(cli.peer_dir.is_some())
        + if cli.floor {
            2 + u64::from(cli.peer_dir.is_none())
        } else {
            0
        };
    let need = s.size * images + (512 << 20);
    ensure_free(&base, need, "the benchmark needs")?;
    let dir = tempfile::Builder::new()
        .prefix("nbd-bench-")
        .tempdir_in(&base)
        .map_err(|e| format!("cannot create a temp dir in {}: {e}", base.display()))?;
    let peer_dir = match &cli.peer_dir {
        Some(p) => {
            std::fs::create_dir_all(p)
                .map_err(|e| format!("cannot create {}: {e}", p.display()))?;
            let peer_images = 1 + u64::from(cli.floor);
            ensure_free(
                p,
                s.size * peer_images + (64 << 20),
                "the --peer-dir images need",
            )?;
            Some(
                tempfile::Builder::new()
                    .prefix("nbd-bench-peer-")
                    .tempdir_in(p)
                    .map_err(|e| format!("cannot create a temp dir in {}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    for t in &cli.targets {
        if !KINDS.iter().any(|k| k.slug() == t) {
            let known: Vec<&str> = KINDS.iter().map(|k| k.slug()).collect();
            return Err(format!(
                "--targets: unknown target {t:?} (known: {})",
                known.join(", ")
            ));
        }
    }
    // The --peer-dir pair and the floor only when asked for.
    let kinds: Vec<Kind> = KINDS
        .into_iter()
        .filter(|k| *k != Kind::RepCPeerOwn || peer_dir.is_some())
        .filter(|k| !matches!(k, Kind::FloorC | Kind::FloorStandAlone) || cli.floor)
        .filter(|k| cli.targets.is_empty() || cli.targets.iter().any(|t| t == k.slug()))
        .collect();
    if kinds.is_empty() {
        return Err(
            "--targets leaves nothing to measure (--floor and --peer-dir enable their rows)".into(),
        );
    }
    let floor_bin = bin_dir.join("floor-pair");
    if cli.floor && !floor_bin.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p bench --bins` or pass --bin-dir",
            floor_bin.display()
        ));
    }

    let argv: Vec<String> = std::env::args().skip(1).collect();
    println!("# nbd-bench {}", argv.join(" "));
    println!(
        "date:       {}",
        first_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])
    );
    println!(
        "machine:    {} cores (nproc), kernel {}, {} RAM",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first_line("uname", &["-r"]),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m
                .lines()
                .next()
                .map(|l| l.trim_start_matches("MemTotal:").trim().to_string()))
            .unwrap_or_default()
    );
    println!("temp dir:   {} ({fs})", dir.path().display());
    println!(
        "tools:      {}, {}",
        first_line("fio", &["--version"]),
        first_line("nbdkit", &["--version"])
    );
    println!("repd:       {}", bins.repd.display());
    println!(
        "runs:       image {} each, fio --ramp_time={} --runtime={} (time_based), {} round(s)",
        human_bytes(s.size),
        s.ramp,
        s.runtime,
        s.rounds
    );
    println!(
        "load avg:   {} (before setup)",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    if let Some(p) = &peer_dir {
        println!(
            "peer dir:   {} ({}): the Secondary of \"{}\"",
            p.path().display(),
            fs_type(p.path()),
            Kind::RepCPeerOwn.label()
        );
    }
    let mut lab = Lab {
        targets: Vec::new(),
        dir,
        peer_dir,
    };
    let mut failures: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // Setup: every target, before any measurement.
    println!("\nsetting up...");
    let base_img = lab.dir.path().join("baseline.img");
    let base_ready = prefill(&base_img, s.size);
    for &kind in &kinds {
        check_interrupt()?;
        let t0 = Instant::now();
        let r = match kind {
            Kind::RepC => setup_pair(lab.dir.path(), None, &bins, "C", s.size),
            Kind::RepCPeerOwn => setup_pair(
                lab.dir.path(),
                lab.peer_dir.as_ref().map(tempfile::TempDir::path),
                &bins,
                "C",
                s.size,
            ),
            Kind::RepA => setup_pair(lab.dir.path(), None, &bins, "A", s.size),
            Kind::StandAlone => setup_standalone(lab.dir.path(), &bins, s.size),
            Kind::Nbdkit | Kind::NbdkitNoCache => base_ready.clone().and_then(|()| {
                setup_nbdkit(lab.dir.path(), &base_img, kind == Kind::NbdkitNoCache)
            }),
            Kind::FloorC | Kind::FloorStandAlone => setup_floor(
                lab.dir.path(),
                lab.peer_dir.as_ref().map(tempfile::TempDir::path),
                &floor_bin,
                kind,
                s.size,
            ),
        };
        match r {
            Ok(t) => {
                println!(
                    "  {:<24} ready in {:.1} s: {}",
                    kind.label(),
                    t0.elapsed().as_secs_f64(),
                    t.uri
                );
                lab.targets.push(t);
            }
            Err(e) => {
                check_interrupt()?;
                println!("  {:<24} FAILED: {e}", kind.label());
                failures.push(format!("{} setup: {e}", kind.label()));
            }
        }
    }

    // Measure: all targets for one workload, then the next workload.
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); KINDS.len()]; WORKLOADS.len()];
    let mut run_errors: Vec<Vec<Vec<String>>> =
        vec![vec![Vec::new(); KINDS.len()]; WORKLOADS.len()];
    for round in 0..s.rounds {
        for (wi, w) in WORKLOADS.iter().enumerate() {
            let n = lab.targets.len();
            for j in 0..n {
                check_interrupt()?;
                let ti = (j + round as usize) % n;
                let Some(t) = lab.targets.get_mut(ti) else {
                    continue;
                };
                let ki = KINDS.iter().position(|k| *k == t.kind).unwrap_or(0);
                let tag = format!(
                    "[round {}/{}] {} | {}",
                    round + 1,
                    s.rounds,
                    w.title,
                    t.kind.label()
                );
                match run_one(t, w, &s, lab.dir.path(), round) {
                    Ok(smp) => {
                        println!(
                            "{tag}: {:.0} IOPS, {:.1} MB/s, p99 {:.0} µs, server CPU {}",
                            smp.fio.iops,
                            smp.fio.mb_s(),
                            smp.fio.p99_us,
                            smp.server_cpu()
                        );
                        if let Some(v) = samples.get_mut(wi).and_then(|v| v.get_mut(ki)) {
                            v.push(smp);
                        }
                    }
                    Err(e) => {
                        check_interrupt()?;
                        println!("{tag}: FAILED: {e}");
                        failures.push(format!("{tag}: {e}"));
                        if let Some(v) = run_errors.get_mut(wi).and_then(|v| v.get_mut(ki)) {
                            v.push(e);
                        }
                    }
                }
            }
        }
    }
    println!(
        "load avg:   {} (after the runs)",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    for (wi, w) in WORKLOADS.iter().enumerate() {
        let empty = Vec::new();
        let per_kind = samples.get(wi).unwrap_or(&empty);
        print!("{}", table(w, per_kind, &kinds, &lab.targets, s.rounds));
    }
    println!(
        "\n×nbdkit, ×nbdkit nc: IOPS relative to nbdkit file, nbdkit file cache=none. server CPU: CPU of the \
         server processes (repd: both nodes) in % of one core, the same per I/O (CPU µs/IO), and their busiest thread; wr amp: bytes the repd \
         processes wrote to storage (/proc/PID/io write_bytes; O_DIRECT) per byte fio wrote; host CPU: the whole machine \
         (100% per core); fio CPU: fio's own. All but fio's sampled inside the measured window of the median-IOPS round."
    );
    print!("{}", rss_report(&lab.targets));

    // Take everything down (the guards do it too, on every path).
    let Lab {
        targets,
        dir,
        peer_dir,
    } = lab;
    for mut t in targets {
        for n in &mut t.nodes {
            match n.down() {
                Ok(None) => {}
                Ok(Some(note)) => notes.push(format!("{} {}: {note}", t.kind.label(), n.name)),
                Err(e) => failures.push(format!("cleanup of {} {}: {e}", t.kind.label(), n.name)),
            }
        }
    }
    drop(dir);
    drop(peer_dir);
    if !notes.is_empty() {
        println!("\nnotes from the cleanup (not failures):");
        for n in &notes {
            println!("  - {}", n.replace('\n', "\n    "));
        }
    }

    if failures.is_empty() {
        println!("\nall targets ran");
        Ok(true)
    } else {
        println!("\n{} failure(s):", failures.len());
        for f in &failures {
            // The details were printed where it happened.
            println!("  - {}", f.lines().next().unwrap_or_default());
        }
        Ok(false)
    }
}

/// Writes `d/r0.toml`: resource r0 with `protocol`, alpha on `alpha_disk`
/// exporting NBD, beta on `beta_disk`, each on a free loopback port (rate
/// unlimited, AL covering the whole device). Returns the file and alpha's
/// NBD port.
fn write_config(
    d: &Path,
    protocol: &str,
    alpha_disk: PathBuf,
    beta_disk: PathBuf,
) -> Result<(PathBuf, u16), String> {
    let [nbd, a_port, b_port] = free_ports::<3>()?;
    let spec = ResourceSpec {
        name: "r0".into(),
        protocol: protocol.into(),
        rate: "0".into(),
        al_extents: 1237,
        nodes: vec![
            NodeSpec {
                name: "alpha".into(),
                address: format!("127.0.0.1:{a_port}"),
                disk: alpha_disk,
                nbd: Some(format!("127.0.0.1:{nbd}")),
            },
            NodeSpec {
                name: "beta".into(),
                address: format!("127.0.0.1:{b_port}"),
                disk: beta_disk,
                nbd: None,
            },
        ],
    };
    let cfg = d.join("r0.toml");
    std::fs::write(&cfg, spec.toml())
        .map_err(|e| format!("cannot write {}: {e}", cfg.display()))?;
    Ok((cfg, nbd))
}

/// Two nodes on loopback, alpha Primary, after the initial full sync;
/// beta's image in `peer_dir` if given, else next to alpha's.
fn setup_pair(
    dir: &Path,
    peer_dir: Option<&Path>,
    bins: &Binaries,
    protocol: &str,
    size: u64,
) -> Result<Target, String> {
    let name = format!(
        "proto-{}{}",
        protocol.to_ascii_lowercase(),
        if peer_dir.is_some() { "-peer-own" } else { "" }
    );
    let d = dir.join(&name);
    std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    let alpha = d.join("alpha.img");
    let beta = peer_dir.unwrap_or(&d).join("beta.img");
    prefill(&alpha, size)?;
    // The initial sync writes all of beta's data region.
    std::fs::File::create(&beta)
        .and_then(|f| f.set_len(size))
        .map_err(|e| format!("cannot create {}: {e}", beta.display()))?;
    let (cfg, nbd) = write_config(&d, protocol, alpha, beta)?;
    let run_dir = d.join("run");
    let mut nodes = vec![
        Node::new("r0", "alpha", &cfg, &run_dir, bins),
        Node::new("r0", "beta", &cfg, &run_dir, bins),
    ];
    for n in &mut nodes {
        n.create_md()?;
        n.up()?;
    }
    let p = nodes.first().ok_or("no node")?;
    p.repctl(&["primary", "--force"])?;
    // Generous: 100 s + 20 MB/s.
    let limit = Duration::from_secs(100 + size / 20_000_000);
    for n in &nodes {
        n.wait("Connected UpToDate/UpToDate", limit, is_synced)?;
    }
    p.wait_idle(Duration::from_secs(30))?;
    Ok(Target {
        kind: match (protocol, peer_dir) {
            ("A", _) => Kind::RepA,
            (_, Some(_)) => Kind::RepCPeerOwn,
            _ => Kind::RepC,
        },
        uri: format!("nbd://127.0.0.1:{nbd}/r0"),
        nodes,
        server: None,
        image: None,
    })
}

/// One node, disconnected (StandAlone), Primary with --force.
fn setup_standalone(dir: &Path, bins: &Binaries, size: u64) -> Result<Target, String> {
    let d = dir.join("standalone");
    std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    let alpha = d.join("alpha.img");
    prefill(&alpha, size)?;
    // beta is never started: nobody listens at its address.
    let (cfg, nbd) = write_config(&d, "C", alpha, d.join("beta.img"))?;
    let mut n = Node::new("r0", "alpha", &cfg, &d.join("run"), bins);
    n.create_md()?;
    n.up()?;
    n.repctl(&["disconnect"])?;
    n.repctl(&["primary", "--force"])?;
    n.wait(
        "StandAlone Primary UpToDate",
        Duration::from_secs(30),
        |s| {
            field(s, "connection") == "StandAlone"
                && field(s, "role") == "Primary"
                && field(s, "disk") == "UpToDate"
        },
    )?;
    Ok(Target {
        kind: Kind::StandAlone,
        uri: format!("nbd://127.0.0.1:{nbd}/r0"),
        nodes: vec![n],
        server: None,
        image: None,
    })
}

/// `nbdkit file` on the baseline image, default caching or cache=none.
fn setup_nbdkit(dir: &Path, image: &Path, cache_none: bool) -> Result<Target, String> {
    let port = free_port()?;
    let kind = if cache_none {
        Kind::NbdkitNoCache
    } else {
        Kind::Nbdkit
    };
    let mut c = Command::new("nbdkit");
    c.args([
        "-f",
        "--exit-with-parent",
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "16",
        "-e",
        "r0",
        "file",
    ])
    .arg(format!("file={}", image.display()));
    if cache_none {
        c.arg("cache=none");
    }
    let log = dir.join(format!("{}.log", kind.slug()));
    serve(kind, c, "nbdkit", &log, port, Some(image.to_path_buf()))
}

/// Starts `c`, a server of export r0 on 127.0.0.1:`port` logging to
/// `log`, and waits until it accepts connections.
fn serve(
    kind: Kind,
    mut c: Command,
    what: &str,
    log: &Path,
    port: u16,
    image: Option<PathBuf>,
) -> Result<Target, String> {
    let logf =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let errf = logf.try_clone().map_err(|e| e.to_string())?;
    let child = c
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(errf)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let mut server = KillOnDrop {
        child,
        what: format!("{what} ({})", kind.label()),
    };
    if let Err(e) = wait_tcp(port, Duration::from_secs(10)) {
        let why = if server.alive() {
            e
        } else {
            format!("{what} exited")
        };
        return Err(format!("{why}; log:\n{}", file_tail(log, 10)));
    }
    Ok(Target {
        kind,
        uri: format!("nbd://127.0.0.1:{port}/r0"),
        nodes: Vec::new(),
        server: Some(server),
        image,
    })
}

/// `floor-pair` serving a prefilled image; for [`Kind::FloorC`] its
/// Secondary's image is in `peer_dir` if given, else beside the Primary's.
fn setup_floor(
    dir: &Path,
    peer_dir: Option<&Path>,
    bin: &Path,
    kind: Kind,
    size: u64,
) -> Result<Target, String> {
    let d = dir.join(kind.slug());
    std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    let alpha = d.join("alpha.img");
    prefill(&alpha, size)?;
    let port = free_port()?;
    let mut c = Command::new(bin);
    c.arg("--nbd")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--file")
        .arg(&alpha);
    if kind == Kind::FloorC {
        let beta = peer_dir.unwrap_or(&d).join("floor-beta.img");
        prefill(&beta, size)?;
        c.args(["--mode", "replicated", "--peer-file"]).arg(beta);
    } else {
        c.args(["--mode", "standalone"]);
    }
    serve(kind, c, "floor-pair", &d.join("floor-pair.log"), port, None)
}

/// One fio run against one target; samples the servers' CPU during the
/// measured part (after the ramp, away from both ends).
fn run_one(
    t: &mut Target,
    w: &Workload,
    s: &Settings,
    dir: &Path,
    round: u32,
) -> Result<Sample, String> {
    t.check_state()?;
    let stem = format!("{}-{}-r{}", w.name, t.kind.slug(), round + 1);
    let json = dir.join(format!("{stem}.json"));
    let out = dir.join(format!("{stem}.out"));
    let outf =
        std::fs::File::create(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let errf = outf.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = w.command(&t.uri, s.runtime, s.ramp, &json);
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(outf)
        .stderr(errf)
        .spawn()
        .map_err(|e| format!("cannot run fio: {e}"))?;
    let names = t.procs();
    let pids: Vec<u32> = names.iter().map(|(p, _)| *p).collect();
    let margin = (s.runtime as f64 / 6.0).min(0.5);
    let t0 = Instant::now();
    let from = Duration::from_secs_f64(s.ramp as f64 + margin);
    let to = Duration::from_secs_f64((s.ramp + s.runtime) as f64 - margin);
    let limit = Duration::from_secs(s.ramp + s.runtime + 60);
    let (mut a, mut b) = (None, None);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for fio: {e}")),
        }
        let el = t0.elapsed();
        if a.is_none() && el >= from {
            a = Some(procfs::sample(&pids));
        }
        if b.is_none() && el >= to {
            b = Some(procfs::sample(&pids));
        }
        if interrupted() || el > limit {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupt()?;
            return Err(format!(
                "fio still running after {limit:?}, killed; output:\n{}",
                file_tail(&out, 10)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !status.success() {
        return Err(format!("fio failed ({status}):\n{}", file_tail(&out, 10)));
    }
    let text = std::fs::read_to_string(&json)
        .map_err(|e| format!("cannot read {}: {e}", json.display()))?;
    let fio = fio::parse_write(&text)?;
    let cpu = match (a, b) {
        (Some(a), Some(b)) => Some(procfs::usage(&a, &b)),
        _ => None,
    };
    t.quiesce()?;
    t.check_state().map_err(|e| format!("after the run: {e}"))?;
    Ok(Sample { fio, cpu, names })
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.decimals$}"))
}

/// A Markdown table with aligned columns; a header starting with '<' is
/// left-aligned (the '<' is dropped), the others right-aligned.
fn md_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let left: Vec<bool> = headers.iter().map(|h| h.starts_with('<')).collect();
    let heads: Vec<String> = headers
        .iter()
        .map(|h| h.trim_start_matches('<').to_string())
        .collect();
    let mut width: Vec<usize> = heads.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut l = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let w = width.get(i).copied().unwrap_or(0);
            let pad = " ".repeat(w.saturating_sub(c.chars().count()));
            if left.get(i).copied().unwrap_or(true) {
                let _ = write!(l, " {c}{pad} |");
            } else {
                let _ = write!(l, " {pad}{c} |");
            }
        }
        l.push('\n');
        l
    };
    let mut s = line(&heads);
    let rule: Vec<String> = width
        .iter()
        .zip(&left)
        .map(|(w, l)| {
            if *l {
                format!(":{}", "-".repeat(w.saturating_sub(1)))
            } else {
                format!("{}:", "-".repeat(w.saturating_sub(1)))
            }
        })
        .collect();
    s.push_str(&line(&rule));
    for r in rows {
        s.push_str(&line(r));
    }
    s
}

/// The table of one workload: medians over the rounds.
fn table(
    w: &Workload,
    per_kind: &[Vec<Sample>],
    kinds: &[Kind],
    targets: &[Target],
    rounds: u32,
) -> String {
    let samples = |k: Kind| -> &[Sample] {
        KINDS
            .iter()
            .position(|x| *x == k)
            .and_then(|i| per_kind.get(i))
            .map_or(&[], Vec::as_slice)
    };
    let med = |k: Kind, f: fn(&WriteResult) -> f64| -> Option<f64> {
        let v: Vec<f64> = samples(k).iter().map(|s| f(&s.fio)).collect();
        median(&v)
    };
    // The CPU columns come from the round with the median IOPS.
    let median_sample = |k: Kind| -> Option<Sample> {
        let mut v = samples(k).to_vec();
        v.sort_by(|a, b| a.fio.iops.total_cmp(&b.fio.iops));
        let mid = v.len().saturating_sub(1) / 2;
        v.get(mid).cloned()
    };
    let iops = |k: Kind| med(k, |r| r.iops);
    let mut rows = Vec::new();
    for &k in kinds {
        let Some(m) = median_sample(k) else {
            let why = if targets.iter().any(|t| t.kind == k) {
                "run failed"
            } else {
                "setup failed"
            };
            let mut r = vec![k.label().to_string(), why.to_string()];
            r.resize(12, String::new());
            rows.push(r);
            continue;
        };
        // Only repd's O_DIRECT writes are counted exactly; for nbdkit's
        // buffered writes the kernel counts whole (large) page-cache folios.
        let amp = m
            .cpu
            .as_ref()
            .and_then(|c| c.written_per_s)
            .filter(|_| !matches!(k, Kind::Nbdkit | Kind::NbdkitNoCache))
            .map(|b| b / m.fio.bw_bytes);
        rows.push(vec![
            k.label().to_string(),
            fmt_opt(iops(k), 0),
            fmt_opt(med(k, WriteResult::mb_s), 1),
            fmt_opt(med(k, |r| r.p99_us), 0),
            fmt_opt(ratio(iops(k), iops(Kind::Nbdkit)), 2),
            fmt_opt(ratio(iops(k), iops(Kind::NbdkitNoCache)), 2),
            m.server_cpu(),
            m.cpu_per_io(),
            m.busiest(),
            fmt_opt(amp, 2),
            m.host_cpu(),
            format!("{:.0}%", m.fio.fio_cpu_pct),
        ]);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## {} (fio {}, ioengine=nbd, 1 job; median of {rounds} round{})\n",
        w.title,
        w.options(),
        if rounds == 1 { "" } else { "s" }
    );
    s.push_str(&md_table(
        &[
            "<target",
            "IOPS",
            "MB/s",
            "p99 µs",
            "×nbdkit",
            "×nbdkit nc",
            "server CPU",
            "CPU µs/IO",
            "<busiest server thread",
            "wr amp",
            "host CPU",
            "fio CPU",
        ],
        &rows,
    ));
    let _ = writeln!(s);
    // A ratio line only for targets that were selected (--targets).
    let both = |a: Kind, b: Kind| kinds.contains(&a) && kinds.contains(&b);
    let with_target = |num: Kind, what: &str| {
        let c = ratio(iops(num), iops(Kind::StandAlone));
        format!(
            "{what} / StandAlone (IOPS): {} — target >= {C_VS_STANDALONE_TARGET:.1}: {}",
            fmt_opt(c, 2),
            verdict(c)
        )
    };
    if both(Kind::RepC, Kind::StandAlone) {
        let _ = writeln!(s, "{}", with_target(Kind::RepC, "protocol C"));
    }
    if both(Kind::RepCPeerOwn, Kind::StandAlone) {
        let _ = writeln!(
            s,
            "{}",
            with_target(Kind::RepCPeerOwn, "protocol C, peer on --peer-dir")
        );
    }
    if both(Kind::FloorC, Kind::FloorStandAlone) {
        let _ = writeln!(
            s,
            "floor-pair C / floor-pair StandAlone (IOPS): {} (what a second copy costs here, with no engine)",
            fmt_opt(ratio(iops(Kind::FloorC), iops(Kind::FloorStandAlone)), 2)
        );
    }
    for c in [Kind::RepC, Kind::RepCPeerOwn] {
        if both(c, Kind::FloorC) {
            let _ = writeln!(
                s,
                "{} / floor-pair C (IOPS): {}",
                c.label(),
                fmt_opt(ratio(iops(c), iops(Kind::FloorC)), 2)
            );
        }
    }
    if both(Kind::RepA, Kind::StandAlone) {
        let _ = writeln!(
            s,
            "protocol A / StandAlone (IOPS): {}",
            fmt_opt(ratio(iops(Kind::RepA), iops(Kind::StandAlone)), 2)
        );
    }
    if both(Kind::StandAlone, Kind::Nbdkit) || both(Kind::StandAlone, Kind::NbdkitNoCache) {
        let _ = writeln!(
            s,
            "StandAlone / nbdkit file (IOPS): {}, / nbdkit file cache=none: {}",
            fmt_opt(ratio(iops(Kind::StandAlone), iops(Kind::Nbdkit)), 2),
            fmt_opt(ratio(iops(Kind::StandAlone), iops(Kind::NbdkitNoCache)), 2)
        );
    }
    s
}

/// Whether a protocol C / StandAlone ratio meets the issue's target.
fn verdict(c: Option<f64>) -> &'static str {
    match c {
        Some(r) if r >= C_VS_STANDALONE_TARGET => "holds",
        Some(_) => "does NOT hold",
        None => "cannot tell (a target failed)",
    }
}

/// Peak RSS of every repd against 64 MiB + its bitmap.
fn rss_report(targets: &[Target]) -> String {
    let mut rows = Vec::new();
    for t in targets {
        for n in &t.nodes {
            let Some(pid) = n.pid else { continue };
            let data = n
                .status()
                .ok()
                .and_then(|st| field(&st, "data_bytes").as_u64());
            let hwm = procfs::read_vm_hwm(pid);
            let bitmap = data.map(|d| d.div_ceil(4096).div_ceil(8));
            let limit = bitmap.map(|b| (64u64 << 20) + b);
            let holds = match (&hwm, limit) {
                (Ok(h), Some(l)) if *h <= l => "yes",
                (Ok(_), Some(_)) => "NO",
                _ => "?",
            };
            rows.push(vec![
                t.kind.label().to_string(),
                n.name.clone(),
                hwm.as_ref().map_or("gone".into(), |h| human_bytes(*h)),
                bitmap.map_or("?".into(), human_bytes),
                limit.map_or("?".into(), human_bytes),
                holds.to_string(),
            ]);
        }
    }
    let mut s = String::from("\n## repd peak RSS (VmHWM, after all runs); limit: 64 MiB + bitmap (data bytes / 4096 / 8)\n\n");
    s.push_str(&md_table(
        &["<target", "<node", "VmHWM", "bitmap", "limit", "<holds"],
        &rows,
    ));
    s
}
