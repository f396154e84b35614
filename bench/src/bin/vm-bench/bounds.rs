//! What bounds each target in the VM (issue 22), from the files the guest
//! script writes beside fio's JSON: repd's per-stage latency breakdown of
//! each run, the floors of a replicated 4 KiB write in the guest (the local
//! write, the TCP round trip), and the CPU time per I/O of the guest and of
//! each target's own threads.

use std::fmt::Write as _;
use std::path::Path;

use bench::procfs::{parse_cpu_line, parse_stat, USER_HZ};
use bench::util::median;
use rep_control::protocol::LatencyReply;
use serde_json::Value;

/// Targets whose Primary answers `repctl status --latency`.
const REPD_TARGETS: [&str; 3] = ["ours", "ours-b", "ours-standalone"];

/// The rounds' files `<target>.<workload>.r<round>.<suffix>` that exist,
/// read.
fn round_files(dir: &Path, stem: &str, suffix: &str, rounds: u32) -> Vec<String> {
    (1..=rounds)
        .filter_map(|r| std::fs::read_to_string(dir.join(format!("{stem}.r{r}.{suffix}"))).ok())
        .collect()
}

/// fio's mean completion latency (µs) of one run's `side`.
pub fn clat_mean_us(fio_json: &str, side: &str) -> Option<f64> {
    let v: Value = serde_json::from_str(fio_json.trim_start()).ok()?;
    let ns = v
        .pointer(&format!("/jobs/0/{side}/clat_ns/mean"))?
        .as_f64()?;
    Some(ns / 1000.0)
}

/// One stage's figures, medians over the rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct StageMedian {
    pub stage: String,
    pub count: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub sequential: bool,
}

/// The per-stage medians of request kind `kind` over the runs' breakdowns,
/// stages in the order repd lists them. Runs whose JSON does not parse or
/// has no such kind are left out.
pub fn stage_medians(replies: &[String], kind: &str) -> Vec<StageMedian> {
    let parsed: Vec<LatencyReply> = replies
        .iter()
        .filter_map(|t| serde_json::from_str::<LatencyReply>(t).ok())
        .filter(|r| r.ok && r.enabled)
        .collect();
    let mut order: Vec<(String, bool)> = Vec::new();
    for s in parsed.iter().flat_map(|r| &r.stages) {
        if s.kind == kind && !order.iter().any(|(n, _)| *n == s.stage) {
            order.push((s.stage.clone(), s.sequential));
        }
    }
    order
        .into_iter()
        .filter_map(|(stage, sequential)| {
            let rows: Vec<_> = parsed
                .iter()
                .flat_map(|r| &r.stages)
                .filter(|s| s.kind == kind && s.stage == stage)
                .collect();
            let m = |f: fn(&rep_control::protocol::StageLatency) -> f64| {
                median(&rows.iter().map(|s| f(s)).collect::<Vec<_>>())
            };
            Some(StageMedian {
                count: m(|s| s.count as f64)?,
                mean_us: m(|s| s.mean_us)?,
                p50_us: m(|s| s.p50_us)?,
                p99_us: m(|s| s.p99_us)?,
                stage,
                sequential,
            })
        })
        .collect()
}

/// One workload as the bounds see it: the guest script's name for it (in
/// the file names), fio's side (`read`/`write`, also repd's request kind),
/// and whether it is the QD1 latency workload (the floors go under it).
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub file: &'a str,
    pub side: &'a str,
    pub latency: bool,
}

/// The stage table of `target` in workload `w` (None without breakdowns):
/// each stage's count, mean, p50, p99, the sum of the sequential means
/// against fio's mean completion latency, and what is left outside repd.
pub fn stage_table(dir: &Path, target: &str, w: Run<'_>, rounds: u32) -> Option<String> {
    let stem = format!("{target}.{}", w.file);
    let replies = round_files(dir, &stem, "latency.json", rounds);
    let rows = stage_medians(&replies, w.side);
    if rows.is_empty() {
        return None;
    }
    let clats: Vec<f64> = round_files(dir, &stem, "json", rounds)
        .iter()
        .filter_map(|t| clat_mean_us(t, w.side))
        .collect();
    Some(format_stage_table(
        target,
        w.side,
        &rows,
        median(&clats),
        replies.len(),
    ))
}

fn format_stage_table(
    target: &str,
    kind: &str,
    rows: &[StageMedian],
    clat_us: Option<f64>,
    runs: usize,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {target} per stage in repd ({kind} requests, `repctl status --latency` over the measured part of each run; medians of {runs} run(s)):"
    );
    let _ = writeln!(
        s,
        "    {:<30} {:>9} {:>10} {:>10} {:>10}",
        "stage", "count", "mean (us)", "p50 (us)", "p99 (us)"
    );
    for r in rows {
        let name = if r.sequential {
            r.stage.clone()
        } else {
            format!("({}: beside local_io)", r.stage)
        };
        let _ = writeln!(
            s,
            "    {name:<30} {:>9.0} {:>10.1} {:>10.1} {:>10.1}",
            r.count, r.mean_us, r.p50_us, r.p99_us
        );
    }
    let sum: f64 = rows
        .iter()
        .filter(|r| r.sequential)
        .map(|r| r.mean_us)
        .sum();
    let _ = writeln!(
        s,
        "    {:<30} {:>9} {sum:>10.1}",
        "in repd: sum of the means", ""
    );
    if let Some(c) = clat_us.filter(|c| *c > 0.0) {
        let _ = writeln!(
            s,
            "    {:<30} {:>9} {c:>10.1}",
            "fio's completion latency, mean", ""
        );
        let _ = writeln!(
            s,
            "    {:<30} {:>9} {:>10.1}   ({:.0} % of it: the kernel's ublk path to and from repd, fio)",
            "outside repd",
            "",
            c - sum,
            100.0 * (c - sum) / c
        );
    }
    s
}

/// The guest's floors of a replicated 4 KiB write, medians over the
/// rounds: fio's QD1 job on a tmpfs file (p50 µs) and tcp-rtt's round trip
/// (p50 µs). None when neither was measured.
pub fn floors(dir: &Path, rounds: u32) -> Option<(Option<f64>, Option<f64>)> {
    let local: Vec<f64> = round_files(dir, "floor-local.randwrite-4k-qd1", "json", rounds)
        .iter()
        .filter_map(|t| fio_p50_us(t, "write"))
        .collect();
    let rtt: Vec<f64> = (1..=rounds)
        .filter_map(|r| std::fs::read_to_string(dir.join(format!("floor-rtt.r{r}.json"))).ok())
        .filter_map(|t| rtt_p50_us(&t))
        .collect();
    let (l, t) = (median(&local), median(&rtt));
    (l.is_some() || t.is_some()).then_some((l, t))
}

/// fio's median completion latency (µs) of one run's `side`.
fn fio_p50_us(fio_json: &str, side: &str) -> Option<f64> {
    let v: Value = serde_json::from_str(fio_json.trim_start()).ok()?;
    let ns = v
        .pointer(&format!("/jobs/0/{side}/clat_ns/percentile/50.000000"))?
        .as_f64()?;
    Some(ns / 1000.0)
}

/// p50_us of tcp-rtt's JSON line.
pub fn rtt_p50_us(text: &str) -> Option<f64> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    v.get("p50_us")?.as_f64()
}

/// The floors' lines under the QD1 table: the floors, and each target's
/// p50 against local + rtt. Returns the text and (target, p50 / floor).
pub fn floor_lines(
    local_us: Option<f64>,
    rtt_us: Option<f64>,
    p50s: &[(&'static str, f64)],
    rounds: u32,
) -> (String, Vec<(&'static str, f64)>) {
    let mut s = String::new();
    let show =
        |v: Option<f64>| v.map_or_else(|| "not measured".to_owned(), |v| format!("{v:.0} us"));
    let _ = writeln!(
        s,
        "  floors in the guest (p50, median of {rounds} round(s)): local write {} (the same fio job on a file of the tmpfs the backing files are on), TCP round trip {} (tcp-rtt: 4 KiB out, 32 B back, 127.0.0.1, TCP_NODELAY)",
        show(local_us),
        show(rtt_us)
    );
    let mut out = Vec::new();
    let (Some(l), Some(t)) = (local_us, rtt_us) else {
        return (s, out);
    };
    let floor = l + t;
    let each: Vec<String> = p50s
        .iter()
        .map(|(name, p50)| {
            out.push((*name, p50 / floor));
            format!("{name} {p50:.0} us = x{:.2}", p50 / floor)
        })
        .collect();
    let _ = writeln!(
        s,
        "  p50 against the floor local + rtt = {floor:.0} us: {}",
        each.join(", ")
    );
    (s, out)
}

/// One CPU snapshot of the guest script's `cpu_snap`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuSnap {
    /// The guest's busy and total ticks (all CPUs).
    pub busy: u64,
    pub total: u64,
    /// Reads and writes the device completed so far.
    pub ios: u64,
    /// Whole processes: (name, ticks), exited threads included.
    pub procs: Vec<(String, u64)>,
    /// Threads: (process name or "kernel", thread name, tid, ticks).
    pub threads: Vec<(String, String, u64, u64)>,
}

/// The text of a `cpu_snap` (see the guest script).
pub fn parse_snap(text: &str) -> Result<CpuSnap, String> {
    let mut s = CpuSnap::default();
    let (busy, total) = parse_cpu_line(text).ok_or("no `cpu ` line of /proc/stat")?;
    s.busy = busy;
    s.total = total;
    for line in text.lines() {
        let Some((tag, rest)) = line.split_once(' ') else {
            continue;
        };
        match tag {
            "disk" => {
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // /sys/block/X/stat: reads completed first, writes fifth.
                s.ios = f.first().copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            }
            "proc" | "task" => {
                let (name, stat) = rest
                    .split_once(' ')
                    .ok_or("a proc/task line without stat")?;
                let (comm, ticks) =
                    parse_stat(stat).ok_or_else(|| format!("bad stat line {stat:?}"))?;
                if tag == "proc" {
                    s.procs.push((name.to_owned(), ticks));
                } else {
                    let tid = stat.split_whitespace().next().and_then(|t| t.parse().ok());
                    s.threads
                        .push((name.to_owned(), comm, tid.unwrap_or(0), ticks));
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

/// One process (or "kernel": the target's kernel threads): its name, its µs
/// per I/O, and its threads by name with theirs, busiest first.
pub type CpuPart = (String, f64, Vec<(String, f64)>);

/// One run's CPU figures between two snapshots, in µs of CPU per I/O.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuPerIo {
    pub ios: u64,
    /// The guest's CPUs busy, % of all of them.
    pub busy_pct: f64,
    pub guest_us: f64,
    /// The target's own threads (processes, or kernel threads) together.
    pub own_us: f64,
    /// Per process (or "kernel"), and its threads by name, busiest first.
    pub parts: Vec<CpuPart>,
}

fn us_per_io(ticks: u64, ios: u64) -> f64 {
    ticks as f64 * 1e6 / USER_HZ / ios.max(1) as f64
}

/// The CPU per I/O between `a` and `b` (None without I/O in between).
pub fn cpu_per_io(a: &CpuSnap, b: &CpuSnap) -> Option<CpuPerIo> {
    let ios = b.ios.checked_sub(a.ios).filter(|n| *n > 0)?;
    let busy = b.busy.saturating_sub(a.busy);
    let total = b.total.saturating_sub(a.total).max(1);
    let mut parts: Vec<CpuPart> = Vec::new();
    // A process's own figure (exited threads included), or for kernel
    // threads the sum of the threads.
    let mut names: Vec<&str> = b.threads.iter().map(|t| t.0.as_str()).collect();
    names.extend(b.procs.iter().map(|p| p.0.as_str()));
    let mut seen: Vec<&str> = Vec::new();
    for name in names {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let mut threads: Vec<(String, f64)> = Vec::new();
        for (_, comm, tid, t1) in b.threads.iter().filter(|t| t.0 == name) {
            let t0 = a
                .threads
                .iter()
                .find(|t| t.0 == name && t.2 == *tid)
                .map_or(0, |t| t.3);
            let d = us_per_io(t1.saturating_sub(t0), ios);
            match threads.iter_mut().find(|(c, _)| c == comm) {
                Some((_, v)) => *v += d,
                None => threads.push((comm.clone(), d)),
            }
        }
        threads.sort_by(|x, y| y.1.total_cmp(&x.1));
        let whole = match (
            a.procs.iter().find(|p| p.0 == name),
            b.procs.iter().find(|p| p.0 == name),
        ) {
            (Some(p0), Some(p1)) => us_per_io(p1.1.saturating_sub(p0.1), ios),
            _ => threads.iter().map(|t| t.1).sum(),
        };
        parts.push((name.to_owned(), whole, threads));
    }
    Some(CpuPerIo {
        ios,
        busy_pct: 100.0 * busy as f64 / total as f64,
        guest_us: us_per_io(busy, ios),
        own_us: parts.iter().map(|p| p.1).sum(),
        parts,
    })
}

/// Every round's CPU figures of `target` in workload `w`.
pub fn cpu_rounds(dir: &Path, target: &str, w: Run<'_>, rounds: u32) -> Vec<CpuPerIo> {
    (1..=rounds)
        .filter_map(|r| {
            let f = |s: &str| {
                std::fs::read_to_string(dir.join(format!("{target}.{}.r{r}.{s}", w.file)))
                    .ok()
                    .and_then(|t| parse_snap(&t).ok())
            };
            cpu_per_io(&f("cpu-before")?, &f("cpu-after")?)
        })
        .collect()
}

/// The CPU table of workload `w`: one row per target with figures.
pub fn cpu_table(dir: &Path, targets: &[&str], w: Run<'_>, rounds: u32) -> Option<String> {
    let rows: Vec<(&str, Vec<CpuPerIo>)> = targets
        .iter()
        .map(|t| (*t, cpu_rounds(dir, t, w, rounds)))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    if rows.is_empty() {
        return None;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  CPU per I/O in the guest (/proc, over the measured part of each run; medians of the rounds; µs of CPU per request the device completed, from its /sys/block stat):"
    );
    let _ = writeln!(
        s,
        "    {:<16} {:>8} {:>7} {:>11} {:>11}   of which (per process or kernel threads, busiest threads)",
        "target", "I/Os", "busy %", "guest us", "own us"
    );
    for (t, runs) in rows {
        let _ = writeln!(s, "{}", format_cpu_row(t, &runs));
    }
    Some(s)
}

fn format_cpu_row(target: &str, runs: &[CpuPerIo]) -> String {
    let m =
        |f: fn(&CpuPerIo) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
    // The thread split is the median round's (by own µs): medians of parts
    // taken one by one would not add up.
    let mut by_own: Vec<&CpuPerIo> = runs.iter().collect();
    by_own.sort_by(|x, y| x.own_us.total_cmp(&y.own_us));
    let mid = by_own.get(by_own.len() / 2).copied();
    let split: Vec<String> = mid
        .map(|r| r.parts.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|(name, whole, threads)| {
            let top: Vec<String> = threads
                .iter()
                .take(4)
                .filter(|(_, v)| *v >= 0.05)
                .map(|(c, v)| format!("{c} {v:.1}"))
                .collect();
            if top.is_empty() {
                format!("{name} {whole:.1}")
            } else {
                format!("{name} {whole:.1} ({})", top.join(", "))
            }
        })
        .collect();
    format!(
        "    {target:<16} {:>8.0} {:>7.0} {:>11.1} {:>11.1}   {}",
        m(|r| r.ios as f64),
        m(|r| r.busy_pct),
        m(|r| r.guest_us),
        m(|r| r.own_us),
        split.join("; ")
    )
}

/// The bounds of workload `w` (printed under its table): ours' stage
/// tables, the CPU table of the targets with results (`p50s`: each one's
/// median p50 in µs), and for the QD1 latency workload the floors.
/// Returns the text and the floor ratios (target, p50 / floor).
pub fn workload_bounds(
    dir: &Path,
    targets: &[String],
    w: Run<'_>,
    rounds: u32,
    p50s: &[(&'static str, f64)],
) -> (String, Vec<(&'static str, f64)>) {
    let mut s = String::new();
    let mut ratios = Vec::new();
    if w.latency {
        if let Some((l, t)) = floors(dir, rounds) {
            let (text, r) = floor_lines(l, t, p50s, rounds);
            s.push_str(&text);
            ratios = r;
        }
    }
    for t in REPD_TARGETS {
        if targets.iter().any(|x| x == t) {
            if let Some(text) = stage_table(dir, t, w, rounds) {
                s.push_str(&text);
            }
        }
    }
    let names: Vec<&str> = p50s.iter().map(|(n, _)| *n).collect();
    if let Some(text) = cpu_table(dir, &names, w, rounds) {
        s.push_str(&text);
    }
    (s, ratios)
}

/// The profiles of `VMB_PERF=1` (perf.<target>.comm.txt, .top.txt), the
/// first lines of each; empty without them.
pub fn perf_section(dir: &Path, targets: &[String]) -> String {
    let mut s = String::new();
    if let Ok(e) = std::fs::read_to_string(dir.join("perf.error")) {
        let _ = writeln!(s, "\nProfiles: {}", e.trim());
        return s;
    }
    for t in targets {
        let read = |k: &str| std::fs::read_to_string(dir.join(format!("perf.{t}.{k}.txt"))).ok();
        let (Some(comm), Some(top)) = (read("comm"), read("top")) else {
            continue;
        };
        let _ = writeln!(
            s,
            "\nProfile of {t}, 4k random write QD32 (perf record -a -g -e cpu-clock, one extra run; % of the guest's samples)\n  by thread name:"
        );
        for l in comm.lines().take(8) {
            let _ = writeln!(s, "  {}", l.trim_end());
        }
        let _ = writeln!(s, "  top symbols (thread, object, symbol):");
        for l in top.lines().take(25) {
            let _ = writeln!(s, "  {}", l.trim_end());
        }
    }
    s
}

#[cfg(test)]
mod tests;
