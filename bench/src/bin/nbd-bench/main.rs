//! `nbd-bench`: fio over the NBD export of repd, against nbdkit's file
//! plugin on the same filesystem. See `nbd-bench --help` and
//! bench/RESULTS.md.
//!
//! Here the command line and the runs; `setup`: the targets measured (repd
//! pairs and StandAlone nodes, nbdkit); `report`: what it prints (each
//! run's figures, the Markdown tables).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bench::cli::FioSizingHelp as _;
use bench::fio::{self, Workload};
use bench::procfs;
use bench::rep::Binaries;
use bench::util::{
    check_interrupt, file_tail, human_bytes, interrupted, parse_size, prefill, require_tool,
};
use clap::Parser;

mod floors;
mod report;
mod setup;

use report::{rss_report, table, Sample};
use setup::{setup_floor, setup_nbdkit, setup_pair, setup_standalone, Target};

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
    fio_sizing_help([
        "Size of every backing image file (K/M/G suffixes) [default: 1G, --quick: 256M]",
        "Measured seconds per fio run [default: 15, --quick: 3]",
        "fio --ramp_time: seconds run before measuring [default: 2, --quick: 1]",
    ]),
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
    #[command(flatten)]
    fio: bench::cli::FioSizing,
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
    /// Also measure protocol C with the replication link over mutual TLS
    /// (`[net] tls = "on"`, certificates made with openssl for the run):
    /// its own row beside plain protocol C, and their ratio; and the same
    /// with a pre-shared key (`tls-psk-file`, OpenSSL) instead.
    #[arg(long)]
    tls: bool,
    /// Measure only these targets (comma-separated): proto-c,
    /// proto-c-peer-own, proto-c-tls, proto-c-psk, proto-a, standalone, nbdkit, nbdkit-nocache,
    /// floor-c, floor-standalone [default: all that the other flags enable]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    targets: Vec<String>,
    /// Instead of the tables above: the host figures against their floors
    /// (issue 22). Protocol C's added latency at QD1 4k over StandAlone
    /// against a native TCP round trip (`tcp-rtt`, 4 KiB out, 32 B back,
    /// on loopback like the pairs), the CPU µs per I/O of both repd
    /// against floor-pair's at 4k QD32 and 1M QD4, and the same pair with
    /// `repd --no-latency-stats` (the latency breakdown's cost). Ends with
    /// `RATIO <what> <workload> <value>` lines.
    #[arg(long, conflicts_with_all = ["targets", "floor", "peer_dir"])]
    floors: bool,
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
    /// Protocol C over TLS (--tls).
    RepCTls,
    /// Protocol C over TLS with a pre-shared key (--tls).
    RepCPsk,
    RepA,
    StandAlone,
    Nbdkit,
    NbdkitNoCache,
    /// floor-pair replicated: the least a protocol C pair costs here.
    FloorC,
    /// floor-pair with local writes only.
    FloorStandAlone,
}

const KINDS: [Kind; 10] = [
    Kind::RepC,
    Kind::RepCPeerOwn,
    Kind::RepCTls,
    Kind::RepCPsk,
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
            Kind::RepCTls => "repd protocol C, TLS",
            Kind::RepCPsk => "repd protocol C, TLS-PSK",
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
            Kind::RepCTls => "proto-c-tls",
            Kind::RepCPsk => "proto-c-psk",
            Kind::RepA => "proto-a",
            Kind::StandAlone => "standalone",
            Kind::Nbdkit => "nbdkit",
            Kind::NbdkitNoCache => "nbdkit-nocache",
            Kind::FloorC => "floor-c",
            Kind::FloorStandAlone => "floor-standalone",
        }
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
    let size = parse_size(cli.fio.size.as_deref().unwrap_or(size))?;
    if size < 64 << 20 {
        return Err(
            "--size must be at least 64M (repd keeps its metadata at the end of the image)".into(),
        );
    }
    let runtime = cli.fio.runtime.unwrap_or(runtime);
    if runtime == 0 {
        return Err("--runtime must be at least 1 second".into());
    }
    Ok(Settings {
        size,
        runtime,
        ramp: cli.fio.ramp_time.unwrap_or(ramp),
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
    check_tools()?;
    let (dir, peer_dir, fs) = make_dirs(cli, &s)?;
    if cli.floors {
        print_header(&s, &fs, dir.path(), &bins, None);
        return floors::run(&s, &bins, &bin_dir.join("floor-pair"), dir.path());
    }
    let kinds = chosen_kinds(cli, peer_dir.is_some())?;
    let floor_bin = bin_dir.join("floor-pair");
    if cli.floor && !floor_bin.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p bench --bins` or pass --bin-dir",
            floor_bin.display()
        ));
    }

    print_header(&s, &fs, dir.path(), &bins, peer_dir.as_ref());
    let mut lab = Lab {
        targets: Vec::new(),
        dir,
        peer_dir,
    };
    let mut failures: Vec<String> = Vec::new();
    setup_targets(&mut lab, &kinds, &bins, &floor_bin, &s, &mut failures)?;
    let samples = measure(&mut lab, &s, &mut failures)?;
    print_report(&lab, &kinds, &samples, &s);
    let notes = take_down(lab, &mut failures);
    print_notes(&notes);
    Ok(summary(&failures))
}

/// fio with its nbd engine and nbdkit with its file plugin are installed.
fn check_tools() -> Result<(), String> {
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
    Ok(())
}

/// The temp directory under --dir (on a real filesystem, with room for the
/// images) and the one under --peer-dir if given; and --dir's filesystem.
fn make_dirs(
    cli: &Cli,
    s: &Settings,
) -> Result<(tempfile::TempDir, Option<tempfile::TempDir>, String), String> {
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
        + 2 * u64::from(cli.floors)
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
    Ok((dir, peer_dir, fs))
}

/// The targets to measure: all, or those --targets names; the --peer-dir
/// pair and the floor only when asked for.
fn chosen_kinds(cli: &Cli, has_peer_dir: bool) -> Result<Vec<Kind>, String> {
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
        .filter(|k| *k != Kind::RepCPeerOwn || has_peer_dir)
        .filter(|k| !matches!(k, Kind::RepCTls | Kind::RepCPsk) || cli.tls)
        .filter(|k| !matches!(k, Kind::FloorC | Kind::FloorStandAlone) || cli.floor)
        .filter(|k| cli.targets.is_empty() || cli.targets.iter().any(|t| t == k.slug()))
        .collect();
    if kinds.is_empty() {
        return Err(
            "--targets leaves nothing to measure (--floor, --peer-dir and --tls enable their rows)"
                .into(),
        );
    }
    Ok(kinds)
}

/// What the run is and where: the first lines of the report.
fn print_header(
    s: &Settings,
    fs: &str,
    dir: &Path,
    bins: &Binaries,
    peer_dir: Option<&tempfile::TempDir>,
) {
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
    println!("temp dir:   {} ({fs})", dir.display());
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

    if let Some(p) = peer_dir {
        println!(
            "peer dir:   {} ({}): the Secondary of \"{}\"",
            p.path().display(),
            fs_type(p.path()),
            Kind::RepCPeerOwn.label()
        );
    }
}

/// Every target, before any measurement; a target that cannot be set up is
/// a failure, and the others go on.
fn setup_targets(
    lab: &mut Lab,
    kinds: &[Kind],
    bins: &Binaries,
    floor_bin: &Path,
    s: &Settings,
    failures: &mut Vec<String>,
) -> Result<(), String> {
    println!("\nsetting up...");
    let base_img = lab.dir.path().join("baseline.img");
    let base_ready = prefill(&base_img, s.size);
    for &kind in kinds {
        check_interrupt()?;
        let t0 = Instant::now();
        let r = match kind {
            Kind::RepC => setup_pair(lab.dir.path(), None, bins, "C", s.size),
            Kind::RepCTls => setup_pair(lab.dir.path(), None, bins, "C-tls", s.size),
            Kind::RepCPsk => setup_pair(lab.dir.path(), None, bins, "C-psk", s.size),
            Kind::RepCPeerOwn => setup_pair(
                lab.dir.path(),
                lab.peer_dir.as_ref().map(tempfile::TempDir::path),
                bins,
                "C",
                s.size,
            ),
            Kind::RepA => setup_pair(lab.dir.path(), None, bins, "A", s.size),
            Kind::StandAlone => setup_standalone(lab.dir.path(), bins, s.size),
            Kind::Nbdkit | Kind::NbdkitNoCache => base_ready.clone().and_then(|()| {
                setup_nbdkit(lab.dir.path(), &base_img, kind == Kind::NbdkitNoCache)
            }),
            Kind::FloorC | Kind::FloorStandAlone => setup_floor(
                lab.dir.path(),
                lab.peer_dir.as_ref().map(tempfile::TempDir::path),
                floor_bin,
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
    Ok(())
}

/// All targets for one workload, then the next workload, `s.rounds` times;
/// the samples by workload and kind.
fn measure(
    lab: &mut Lab,
    s: &Settings,
    failures: &mut Vec<String>,
) -> Result<Vec<Vec<Vec<Sample>>>, String> {
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
                match run_one(t, w, s, lab.dir.path(), round) {
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
    Ok(samples)
}

/// The tables of the medians, their legend and repd's peak RSS.
fn print_report(lab: &Lab, kinds: &[Kind], samples: &[Vec<Vec<Sample>>], s: &Settings) {
    for (wi, w) in WORKLOADS.iter().enumerate() {
        let empty = Vec::new();
        let per_kind = samples.get(wi).unwrap_or(&empty);
        print!("{}", table(w, per_kind, kinds, &lab.targets, s.rounds));
    }
    println!(
        "\n×nbdkit, ×nbdkit nc: IOPS relative to nbdkit file, nbdkit file cache=none. server CPU: CPU of the \
         server processes (repd: both nodes) in % of one core, the same per I/O (CPU µs/IO), and their busiest thread; wr amp: bytes the repd \
         processes wrote to storage (/proc/PID/io write_bytes; O_DIRECT) per byte fio wrote; host CPU: the whole machine \
         (100% per core); fio CPU: fio's own. All but fio's sampled inside the measured window of the median-IOPS round."
    );
    print!("{}", rss_report(&lab.targets));
}

/// Takes everything down (the guards do it too, on every path); what the
/// cleanup said that is not a failure.
fn take_down(lab: Lab, failures: &mut Vec<String>) -> Vec<String> {
    let mut notes: Vec<String> = Vec::new();
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
    notes
}

fn print_notes(notes: &[String]) {
    if !notes.is_empty() {
        println!("\nnotes from the cleanup (not failures):");
        for n in notes {
            println!("  - {}", n.replace('\n', "\n    "));
        }
    }
}

/// The last lines: all ran, or each failure in one line; whether all ran.
fn summary(failures: &[String]) -> bool {
    if failures.is_empty() {
        println!("\nall targets ran");
        true
    } else {
        println!("\n{} failure(s):", failures.len());
        for f in failures {
            // The details were printed where it happened.
            println!("  - {}", f.lines().next().unwrap_or_default());
        }
        false
    }
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
