//! `nbd-bench --floors`: the host figures of issue 22 against their floors.
//!
//! - protocol C's added latency at QD1 4k (mean completion latency of a
//!   protocol C pair minus a StandAlone node's) against a native round
//!   trip on the same link (`tcp-rtt`: 4 KiB out, a 32-byte answer back,
//!   two processes on loopback, as repd's pairs here);
//! - the CPU µs per I/O of both repd against `floor-pair`'s at 4k QD32 and
//!   1M QD4;
//! - the latency breakdown's cost: the same pair again with
//!   `repd --no-latency-stats` (an A/B in one run).
//!
//! Every round runs every target once per workload; the figures are the
//! medians over the rounds, and each ratio ends the run as one
//! `RATIO <what> <workload> <value>` line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bench::fio::{self, Workload};
use bench::rep::Binaries;
use bench::util::{check_interrupt, free_port, median, wait_tcp, KillOnDrop};
use serde_json::Value;

use super::setup::{setup_floor, setup_pair, setup_standalone, Target};
use super::{run_one, Kind, Settings};

const QD1_4K: Workload = Workload {
    name: "randwrite-4k-qd1",
    title: "4k random write, QD1",
    rw: "randwrite",
    bs: "4k",
    iodepth: 1,
};

/// The targets of `--floors`, each in a directory of its own (fio's JSON
/// files are named by kind, and two of them are protocol C pairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Protocol C, latency stats on (repd's default).
    C,
    /// Protocol C with `--no-latency-stats`.
    COff,
    StandAlone,
    Floor,
}

const ROLES: [Role; 4] = [Role::C, Role::COff, Role::StandAlone, Role::Floor];

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::C => "repd C",
            Role::COff => "repd C --no-latency-stats",
            Role::StandAlone => "repd StandAlone",
            Role::Floor => "floor-pair C",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Role::C => "c-on",
            Role::COff => "c-off",
            Role::StandAlone => "standalone",
            Role::Floor => "floor",
        }
    }

    /// The workloads it runs: QD1 latency where it is compared, CPU per
    /// I/O at 4k QD32 and 1M QD4 for the pairs.
    fn workloads(self) -> &'static [Workload] {
        match self {
            Role::C | Role::COff => &[QD1_4K, fio::RANDWRITE_4K_QD32, fio::SEQWRITE_1M_QD4],
            Role::StandAlone => &[QD1_4K],
            Role::Floor => &[fio::RANDWRITE_4K_QD32, fio::SEQWRITE_1M_QD4],
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    clat_mean_us: f64,
    clat_p50_us: f64,
    iops: f64,
    /// Server CPU (every process of the target) per completed I/O.
    cpu_us_per_io: Option<f64>,
}

/// Every round's figures of one role and workload.
type Runs = Vec<(Role, &'static str, Figures)>;

/// Sets everything up, measures `s.rounds` rounds and prints the table
/// and the `RATIO` lines; false when something failed.
pub(crate) fn run(
    s: &Settings,
    bins: &Binaries,
    floor_bin: &Path,
    dir: &Path,
) -> Result<bool, String> {
    let rtt_bin = floor_bin.with_file_name("tcp-rtt");
    if !rtt_bin.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p bench --bins`",
            rtt_bin.display()
        ));
    }
    println!("\nsetting up (--floors)...");
    let mut targets: Vec<(Role, Target)> = Vec::new();
    for role in ROLES {
        check_interrupt()?;
        let d = dir.join(role.dir());
        std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        let t = match role {
            Role::C => setup_pair(&d, None, bins, "C", s.size),
            Role::COff => setup_pair(&d, None, &stats_off(bins, &d)?, "C", s.size),
            Role::StandAlone => setup_standalone(&d, bins, s.size),
            Role::Floor => setup_floor(&d, None, floor_bin, Kind::FloorC, s.size),
        }
        .map_err(|e| format!("{} setup: {e}", role.label()))?;
        println!("  {:<28} ready: {}", role.label(), t.uri);
        targets.push((role, t));
    }
    let (_server, addr) = rtt_server(&rtt_bin, dir)?;
    let mut runs: Runs = Vec::new();
    let mut rtts: Vec<(f64, f64)> = Vec::new();
    for round in 0..s.rounds {
        rtts.push(rtt(&rtt_bin, &addr)?);
        for w in [QD1_4K, fio::RANDWRITE_4K_QD32, fio::SEQWRITE_1M_QD4] {
            let n = targets.len();
            for j in 0..n {
                check_interrupt()?;
                // Rotated like nbd-bench's own rounds.
                let Some((role, t)) = targets.get_mut((j + round as usize) % n) else {
                    continue;
                };
                if !role.workloads().contains(&w) {
                    continue;
                }
                let d = dir.join(role.dir());
                let f = one(t, &w, s, &d, round)?;
                println!(
                    "[round {}/{}] {} | {}: clat mean {:.1} µs p50 {:.1} µs, {:.0} IOPS, server CPU {} µs/IO",
                    round + 1,
                    s.rounds,
                    w.title,
                    role.label(),
                    f.clat_mean_us,
                    f.clat_p50_us,
                    f.iops,
                    f.cpu_us_per_io.map_or("-".into(), |c| format!("{c:.1}"))
                );
                runs.push((*role, w.name, f));
            }
        }
    }
    report(&runs, &rtts);
    Ok(true)
}

/// `bins` with a repd that runs with `--no-latency-stats` (a script in
/// `d` that adds it: `repctl up --repd` takes one program).
fn stats_off(bins: &Binaries, d: &Path) -> Result<Binaries, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let script: PathBuf = d.join("repd-no-latency-stats");
    let text = format!(
        "#!/bin/sh\nexec '{}' --no-latency-stats \"$@\"\n",
        bins.repd.display()
    );
    std::fs::write(&script, text)
        .and_then(|()| std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)))
        .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
    Ok(Binaries {
        repctl: bins.repctl.clone(),
        repd: script,
    })
}

/// One fio run through nbd-bench's own `run_one`, with the mean and median
/// completion latency read from its JSON.
fn one(
    t: &mut Target,
    w: &Workload,
    s: &Settings,
    d: &Path,
    round: u32,
) -> Result<Figures, String> {
    let smp = run_one(t, w, s, d, round)?;
    let json = d.join(format!("{}-{}-r{}.json", w.name, t.kind.slug(), round + 1));
    let text = std::fs::read_to_string(&json)
        .map_err(|e| format!("cannot read {}: {e}", json.display()))?;
    let (mean, p50) = clat(&text)?;
    let cpu = smp
        .cpu
        .as_ref()
        .filter(|_| smp.fio.iops > 0.0)
        .map(|c| c.total_pct() / 100.0 * 1e6 / smp.fio.iops);
    Ok(Figures {
        clat_mean_us: mean,
        clat_p50_us: p50,
        iops: smp.fio.iops,
        cpu_us_per_io: cpu,
    })
}

/// fio's mean and median write completion latency in µs (one job).
fn clat(text: &str) -> Result<(f64, f64), String> {
    let start = text.find('{').ok_or("fio printed no JSON")?;
    let v: Value = serde_json::from_str(text.get(start..).unwrap_or_default())
        .map_err(|e| format!("fio JSON does not parse: {e}"))?;
    let c = v
        .pointer("/jobs/0/write/clat_ns")
        .ok_or("fio JSON has no write clat_ns")?;
    let mean = c.get("mean").and_then(Value::as_f64);
    let p50 = c.pointer("/percentile/50.000000").and_then(Value::as_f64);
    match (mean, p50) {
        (Some(m), Some(p)) => Ok((m / 1e3, p / 1e3)),
        _ => Err("fio JSON has no write clat mean or p50".into()),
    }
}

/// A `tcp-rtt --listen` on a free loopback port, and its address.
fn rtt_server(bin: &Path, dir: &Path) -> Result<(KillOnDrop, String), String> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let log = dir.join("tcp-rtt.log");
    let logf = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = Command::new(bin)
        .args(["--listen", &addr])
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start tcp-rtt: {e}"))?;
    let server = KillOnDrop {
        child,
        what: "tcp-rtt --listen".into(),
    };
    wait_tcp(port, Duration::from_secs(10))?;
    Ok((server, addr))
}

/// One `tcp-rtt --connect`: the mean and median round trip in µs.
fn rtt(bin: &Path, addr: &str) -> Result<(f64, f64), String> {
    let o = Command::new(bin)
        .args(["--connect", addr, "--count", "20000"])
        .output()
        .map_err(|e| format!("cannot run tcp-rtt: {e}"))?;
    if !o.status.success() {
        return Err(format!("tcp-rtt: {}", String::from_utf8_lossy(&o.stderr)));
    }
    let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("tcp-rtt: {e}"))?;
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    let (mean, p50) = (f("mean_us"), f("p50_us"));
    println!(
        "tcp-rtt 4 KiB out, 32 B back: mean {} µs, p50 {} µs",
        mean.unwrap_or(f64::NAN),
        p50.unwrap_or(f64::NAN)
    );
    mean.zip(p50)
        .ok_or_else(|| "tcp-rtt printed no mean_us/p50_us".into())
}

/// A figure of one run (`None` where the run has none).
type Figure = fn(&Figures) -> Option<f64>;

fn clat_mean(x: &Figures) -> Option<f64> {
    Some(x.clat_mean_us)
}

fn clat_p50(x: &Figures) -> Option<f64> {
    Some(x.clat_p50_us)
}

fn cpu(x: &Figures) -> Option<f64> {
    x.cpu_us_per_io
}

/// The median over the rounds of `f` of `role`'s runs of `workload`.
fn med(runs: &Runs, role: Role, workload: &str, f: Figure) -> Option<f64> {
    let v: Vec<f64> = runs
        .iter()
        .filter(|(r, w, _)| *r == role && *w == workload)
        .filter_map(|(_, _, x)| f(x))
        .collect();
    median(&v)
}

/// One row of a report table: its label and its two figures.
type Row = (String, (Option<f64>, Option<f64>));

/// A markdown table with two figure columns; `-` where a figure is missing.
fn table(header: &str, rows: &[Row]) {
    println!("{header}\n|---|---|---|");
    let show = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    for (label, (a, b)) in rows {
        println!("| {label} | {} | {} |", show(*a), show(*b));
    }
}

/// One `RATIO` line: `a / b`, or `-` without both figures (or with `b` 0).
fn ratio(what: &str, workload: &str, a: Option<f64>, b: Option<f64>) {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => println!("RATIO {what} {workload} {:.2}", a / b),
        _ => println!("RATIO {what} {workload} -"),
    }
}

/// The medians and the `RATIO` lines.
fn report(runs: &Runs, rtts: &[(f64, f64)]) {
    let q = QD1_4K.name;
    let (w4, w1) = (fio::RANDWRITE_4K_QD32.name, fio::SEQWRITE_1M_QD4.name);
    let rtt_mean = median(&rtts.iter().map(|r| r.0).collect::<Vec<_>>());
    let rtt_p50 = median(&rtts.iter().map(|r| r.1).collect::<Vec<_>>());
    let added = |f: Figure| Some(med(runs, Role::C, q, f)? - med(runs, Role::StandAlone, q, f)?);
    let (added_mean, added_p50) = (added(clat_mean), added(clat_p50));
    // Two figures of one role: `fa` of its runs of `wa`, `fb` of `wb`'s.
    let two = |role: Role, wa: &str, fa: Figure, wb: &str, fb: Figure| {
        (med(runs, role, wa, fa), med(runs, role, wb, fb))
    };
    println!("\n## Host floors (medians of {} round(s))\n", rtts.len());
    let mut clat: Vec<Row> = vec![("tcp-rtt 4 KiB + 32 B ack (µs)".into(), (rtt_mean, rtt_p50))];
    for role in [Role::C, Role::COff, Role::StandAlone] {
        let label = format!("{} QD1 4k clat (µs)", role.label());
        clat.push((label, two(role, q, clat_mean, q, clat_p50)));
    }
    let label = "protocol C added over StandAlone (µs)";
    clat.push((label.into(), (added_mean, added_p50)));
    table("| figure | mean | p50 |", &clat);
    println!();
    let cpu_rows = [Role::C, Role::COff, Role::Floor]
        .map(|role| (role.label().into(), two(role, w4, cpu, w1, cpu)));
    let header = "| CPU µs per I/O (all server processes) | 4k QD32 | 1M QD4 |";
    table(header, &cpu_rows);
    println!();
    ratio("protoC-added/tcp-rtt", "qd1-4k", added_mean, rtt_mean);
    ratio("protoC-added/tcp-rtt", "qd1-4k-p50", added_p50, rtt_p50);
    // Protocol C's median over another role's.
    let c_over = |what: &str, short: &str, workload: &str, f: Figure, under: Role| {
        ratio(
            what,
            short,
            med(runs, Role::C, workload, f),
            med(runs, under, workload, f),
        );
    };
    c_over("repd-cpu/floor-cpu", "4k-qd32", w4, cpu, Role::Floor);
    c_over("repd-cpu/floor-cpu", "1m-qd4", w1, cpu, Role::Floor);
    c_over("stats-on/stats-off", "qd1-4k", q, clat_mean, Role::COff);
    c_over("stats-on/stats-off-cpu", "4k-qd32", w4, cpu, Role::COff);
    c_over("stats-on/stats-off-cpu", "1m-qd4", w1, cpu, Role::COff);
}
