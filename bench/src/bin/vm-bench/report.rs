//! vm-bench's report: the fio JSON files the guest wrote, read into
//! medians per target and workload, the tables, the ratios of ours to each
//! baseline, and the `RATIO` lines a script reads.

use std::fmt::Write as _;
use std::path::Path;

use bench::util::median;
use serde_json::Value;

/// The devices measured, in table order: name (in file names and
/// `--targets`) and title.
pub const TARGETS: [(&str, &str); 7] = [
    ("ours", "ours: /dev/ublkb0, repd protocol C"),
    ("ours-b", "ours-b: /dev/ublkb3, --bin-dir-b's repd"),
    ("ours-standalone", "ours StandAlone (no peer)"),
    ("drbd-integrity", "DRBD 8.4 C, data-integrity-alg crc32c"),
    ("drbd", "DRBD 8.4 protocol C (default)"),
    ("rublk-loop", "rublk loop"),
    ("kloop", "kernel loop (dio)"),
];

/// What a workload's ratio compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// IOPS (and MB/s, the same ratio): higher is better.
    Throughput,
    /// p50 and p99 completion latency: lower is better.
    Latency,
}

/// One fio workload as the guest script runs it.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// The guest script's name for it (in the JSON file names).
    pub file: &'static str,
    /// Its name in the `RATIO` lines.
    pub key: &'static str,
    pub title: &'static str,
    pub options: &'static str,
    /// fio's JSON section: "read" or "write".
    pub side: &'static str,
    pub measure: Measure,
}

pub const WORKLOADS: [Workload; 4] = [
    Workload {
        file: "randwrite-4k-qd32",
        key: "4k-randwrite-qd32",
        title: "4k random write, QD32",
        options: "--rw=randwrite --bs=4k --iodepth=32",
        side: "write",
        measure: Measure::Throughput,
    },
    Workload {
        file: "write-1m-qd4",
        key: "1m-write-qd4",
        title: "1M sequential write, QD4",
        options: "--rw=write --bs=1M --iodepth=4",
        side: "write",
        measure: Measure::Throughput,
    },
    Workload {
        file: "randwrite-4k-qd1",
        key: "4k-randwrite-qd1",
        title: "4k random write, QD1 (latency)",
        options: "--rw=randwrite --bs=4k --iodepth=1",
        side: "write",
        measure: Measure::Latency,
    },
    Workload {
        file: "randread-4k-qd32",
        key: "4k-randread-qd32",
        title: "4k random read, QD32",
        options: "--rw=randread --bs=4k --iodepth=32",
        side: "read",
        measure: Measure::Throughput,
    },
];

/// The baselines ours is compared with, in the order of the ratio lines,
/// and the target of each ratio (`None`: for information).
fn target_of(base: &str, w: &Workload) -> Option<f64> {
    match (base, w.measure, w.side) {
        // The issue's bar: the same integrity guarantee, ours at least as
        // fast (and no slower at QD1).
        ("drbd-integrity", _, _) => Some(1.0),
        ("rublk-loop", Measure::Throughput, "read") => Some(1.0),
        ("rublk-loop", Measure::Throughput, _) => Some(0.9),
        _ => None,
    }
}
const BASELINES: [&str; 6] = [
    "drbd-integrity",
    "drbd",
    "rublk-loop",
    "kloop",
    "ours-standalone",
    "ours-b",
];

/// What one fio run achieved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IoResult {
    pub iops: f64,
    /// Bytes per second.
    pub bw_bytes: f64,
    /// Median and 99th percentile of the completion latency, in microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
}

/// fio's `--output-format=json` text (one job) → its `side` figures.
pub fn parse(text: &str, side: &str) -> Result<IoResult, String> {
    let v: Value = serde_json::from_str(text.trim_start())
        .map_err(|e| format!("fio JSON does not parse: {e}"))?;
    let job = v
        .pointer("/jobs/0")
        .ok_or("fio JSON has no job in \"jobs\"")?;
    let err = job.get("error").and_then(Value::as_i64).unwrap_or(0);
    if err != 0 {
        return Err(format!("the fio job failed with error {err}"));
    }
    let s = job
        .get(side)
        .ok_or_else(|| format!("fio JSON has no {side} section"))?;
    let num = |p: &str| {
        s.pointer(p)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("fio JSON: {side}{p} is missing (did no I/O complete?)"))
    };
    let r = IoResult {
        iops: num("/iops")?,
        bw_bytes: num("/bw_bytes")?,
        p50_us: num("/clat_ns/percentile/50.000000")? / 1000.0,
        p99_us: num("/clat_ns/percentile/99.000000")? / 1000.0,
    };
    if r.iops <= 0.0 {
        return Err(format!("fio completed no {side}"));
    }
    Ok(r)
}

/// Every round's result of one target and workload.
fn rounds_of(dir: &Path, name: &str, w: &Workload, rounds: u32) -> Result<Vec<IoResult>, String> {
    (1..=rounds)
        .map(|r| {
            let file = dir.join(format!("{name}.{}.r{r}.json", w.file));
            std::fs::read_to_string(&file)
                .map_err(|e| format!("{}: {e}", file.display()))
                .and_then(|text| parse(&text, w.side))
                .map_err(|e| format!("round {r}: {e}"))
        })
        .collect()
}

/// Each figure's median over the rounds.
fn medians(runs: &[IoResult]) -> Option<IoResult> {
    let m = |f: fn(&IoResult) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    Some(IoResult {
        iops: m(|r| r.iops)?,
        bw_bytes: m(|r| r.bw_bytes)?,
        p50_us: m(|r| r.p50_us)?,
        p99_us: m(|r| r.p99_us)?,
    })
}

/// The full report: the header (`meta`, the CRC32C each side used), one
/// table per workload with its ratios, then one `RATIO` line per ratio.
/// False if a target or workload has no result.
pub fn report(dir: &Path, targets: &[String], meta: &str, rounds: u32) -> (String, bool) {
    let mut s = String::new();
    let mut ok = true;
    let _ = writeln!(
        s,
        "\nVM benchmark ({})",
        meta.lines().collect::<Vec<_>>().join(", ")
    );
    for line in crc_lines(dir) {
        let _ = writeln!(s, "{line}");
    }
    for t in targets {
        if let Ok(e) = std::fs::read_to_string(dir.join(format!("{t}.error"))) {
            ok = false;
            let _ = writeln!(s, "ERROR {t}: {}", e.trim());
        }
    }
    let of_rounds = if rounds > 1 {
        format!("; median of {rounds} rounds")
    } else {
        String::new()
    };
    let mut ratio_out = Vec::new();
    for w in &WORKLOADS {
        let _ = writeln!(
            s,
            "\n{} ({}, fio libaio --direct=1{of_rounds})",
            w.title, w.options
        );
        let _ = write!(
            s,
            "{:<40} {:>9} {:>8} {:>9} {:>9}",
            "target", "IOPS", "MB/s", "p50 (us)", "p99 (us)"
        );
        let per = match w.measure {
            Measure::Throughput => "   IOPS per round",
            Measure::Latency => "   p50 per round",
        };
        let _ = writeln!(s, "{}", if rounds > 1 { per } else { "" });
        let res = workload_rows(&mut s, &mut ok, dir, targets, w, rounds);
        ratio_out.extend(ratio_lines(&mut s, &res, w, rounds));
        let p50s: Vec<(&'static str, f64)> = res
            .iter()
            .filter_map(|(n, runs)| medians(runs).map(|m| (*n, m.p50_us)))
            .collect();
        let run = crate::bounds::Run {
            file: w.file,
            side: w.side,
            latency: w.measure == Measure::Latency,
        };
        let (bounds, floor) = crate::bounds::workload_bounds(dir, targets, run, rounds, &p50s);
        s.push_str(&bounds);
        // ours' p50 against the guest's floor (local write + TCP round trip).
        if let Some((_, v)) = floor.iter().find(|(t, _)| *t == "ours") {
            ratio_out.push(("floor", format!("{}-p50", w.key), *v));
        }
    }
    s.push_str(&crate::bounds::perf_section(dir, targets));
    let _ = writeln!(
        s,
        "\n# RATIO ours/<baseline> <workload> <median ours / median baseline>: IOPS for the QD32 and QD4 \
         workloads (higher is better), p50 and p99 latency for QD1 (lower is better); \
         ours/floor: QD1 p50 over the guest's local write + TCP round trip"
    );
    for (base, key, v) in ratio_out {
        let _ = writeln!(s, "RATIO ours/{base} {key} {v:.2}");
    }
    (s, ok)
}

/// One row per target of workload `w` into `s`; returns every round's
/// result of the targets that have one. A target without clears `ok`.
fn workload_rows(
    s: &mut String,
    ok: &mut bool,
    dir: &Path,
    targets: &[String],
    w: &Workload,
    rounds: u32,
) -> Vec<(&'static str, Vec<IoResult>)> {
    let mut res = Vec::new();
    for (name, title) in TARGETS {
        if !targets.iter().any(|t| t == name) {
            continue;
        }
        let runs = match rounds_of(dir, name, w, rounds) {
            Ok(runs) => runs,
            Err(e) => {
                *ok = false;
                let _ = writeln!(s, "{title:<40} no result: {e}");
                continue;
            }
        };
        let Some(m) = medians(&runs) else {
            *ok = false;
            let _ = writeln!(s, "{title:<40} no result: fio reported no figures");
            continue;
        };
        let _ = write!(
            s,
            "{title:<40} {:>9.0} {:>8.1} {:>9.0} {:>9.0}",
            m.iops,
            m.bw_bytes / 1e6,
            m.p50_us,
            m.p99_us
        );
        if rounds > 1 {
            let each: Vec<String> = runs
                .iter()
                .map(|r| match w.measure {
                    Measure::Throughput => format!("{:.0}", r.iops),
                    Measure::Latency => format!("{:.0}", r.p50_us),
                })
                .collect();
            let _ = write!(s, "   {}", each.join(" "));
        }
        let _ = writeln!(s);
        res.push((name, runs));
    }
    res
}

/// ours against each baseline that has a result, into `s`: the ratio of
/// the medians, the verdict against its target, with rounds the ratio per
/// round. Returns (baseline, RATIO key, value) of each.
fn ratio_lines(
    s: &mut String,
    res: &[(&str, Vec<IoResult>)],
    w: &Workload,
    rounds: u32,
) -> Vec<(&'static str, String, f64)> {
    let get = |n: &str| res.iter().find(|(k, _)| *k == n).map(|(_, r)| r.as_slice());
    let mut out = Vec::new();
    let Some(ours) = get("ours") else { return out };
    let Some(ours_m) = medians(ours) else {
        return out;
    };
    type Figure = (&'static str, fn(&IoResult) -> f64);
    let figures: &[Figure] = match w.measure {
        Measure::Throughput => &[("IOPS", |r| r.iops)],
        Measure::Latency => &[("p50", |r| r.p50_us), ("p99", |r| r.p99_us)],
    };
    for base in BASELINES {
        let Some(b) = get(base) else { continue };
        let Some(b_m) = medians(b) else { continue };
        for (i, (fig, f)) in figures.iter().enumerate() {
            let ratio = f(&ours_m) / f(&b_m);
            // The target binds the IOPS ratio, or the p50 one at QD1.
            let target = if i == 0 { target_of(base, w) } else { None };
            let verdict = verdict(ratio, target, w.measure);
            let _ = write!(s, "  ours/{base:<15} {fig} x{ratio:.2}  ({verdict})");
            if rounds > 1 {
                // The same round's two runs sit side by side in time: their
                // ratio leaves out the drift between rounds.
                let each: Vec<String> = ours
                    .iter()
                    .zip(b)
                    .map(|(o, b)| format!("x{:.2}", f(o) / f(b)))
                    .collect();
                let _ = write!(s, "  per round: {}", each.join(" "));
            }
            let _ = writeln!(s);
            let key = match w.measure {
                Measure::Throughput => w.key.to_owned(),
                Measure::Latency => format!("{}-{fig}", w.key),
            };
            out.push((base, key, ratio));
        }
    }
    out
}

fn verdict(ratio: f64, target: Option<f64>, m: Measure) -> String {
    match (target, m) {
        (None, _) => "for information".to_owned(),
        (Some(t), Measure::Throughput) if ratio >= t => format!("target >= {t:.1}: met"),
        (Some(t), Measure::Throughput) => format!("target >= {t:.1}: NOT met"),
        (Some(t), Measure::Latency) if ratio <= t => format!("target <= {t:.1}: met"),
        (Some(t), Measure::Latency) => format!("target <= {t:.1}: NOT met"),
    }
}

/// Which CRC32C each side used in the guest: repd's choice (its start-up
/// log line, from the logs the guest copied next to the results) and the
/// kernel crypto API's crc32c drivers (the guest's /proc/crypto, highest
/// priority first: DRBD's data-integrity-alg gets the first).
fn crc_lines(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(line) = repd_crc(dir) {
        out.push(format!("repd's CRC32C: {line}"));
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("crypto-crc32c.txt")) {
        let drivers: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if !drivers.is_empty() {
            out.push(format!(
                "kernel crc32c (DRBD's data-integrity-alg takes the first): {}",
                drivers.join("; ")
            ));
        }
    }
    out
}

fn repd_crc(dir: &Path) -> Option<String> {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.iter().find_map(|p| {
        let text = std::fs::read_to_string(p).ok()?;
        let line = text.lines().find(|l| l.contains("crc32c: "))?;
        line.split_once("crc32c: ")
            .map(|(_, rest)| rest.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// fio's JSON of one job, with `side`'s figures (latencies in µs).
    fn fio_json(side: &str, iops: f64, p50_us: f64, p99_us: f64) -> String {
        let other = if side == "read" { "write" } else { "read" };
        format!(
            r#"{{"fio version":"fio-3.33","jobs":[{{"jobname":"j","error":0,
            "{other}":{{"iops":0.0,"bw_bytes":0,"clat_ns":{{"N":0}}}},
            "{side}":{{"iops":{iops},"bw_bytes":{},"clat_ns":{{"percentile":
            {{"1.000000":1000,"50.000000":{},"99.000000":{}}}}}}}}}]}}"#,
            iops * 4096.0,
            p50_us * 1000.0,
            p99_us * 1000.0
        )
    }

    /// Writes every workload's result for `t`, round by round: IOPS, and
    /// p50/p99 in µs, per round.
    fn write_results(dir: &Path, t: &str, per_round: &[(f64, f64, f64)]) {
        for w in &WORKLOADS {
            for (r, (iops, p50, p99)) in per_round.iter().enumerate() {
                std::fs::write(
                    dir.join(format!("{t}.{}.r{}.json", w.file, r + 1)),
                    fio_json(w.side, *iops, *p50, *p99),
                )
                .unwrap();
            }
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parse_takes_the_side_asked_for_and_refuses_an_empty_one() {
        let r = parse(&fio_json("read", 2000.0, 300.0, 900.0), "read").unwrap();
        assert_eq!(r.iops, 2000.0);
        assert_eq!(r.p50_us, 300.0);
        assert_eq!(r.p99_us, 900.0);
        let e = parse(&fio_json("read", 2000.0, 300.0, 900.0), "write").unwrap_err();
        assert!(e.contains("write/clat_ns/percentile/50.000000"), "{e}");
        let e = parse("fio: file not found", "write").unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
    }

    #[test]
    fn report_prints_tables_crc_choices_and_ratio_lines() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_results(d, "ours", &[(900.0, 400.0, 2000.0)]);
        write_results(d, "drbd-integrity", &[(600.0, 500.0, 1000.0)]);
        write_results(d, "drbd", &[(1000.0, 200.0, 800.0)]);
        write_results(d, "rublk-loop", &[(1000.0, 100.0, 500.0)]);
        std::fs::write(
            d.join("r0.alpha.log"),
            "x INFO ublk_target::crc_pick: crc32c: measured hardware 7.763 ms/MiB, table16 1.989 ms/MiB backend=\"table16\"\n",
        )
        .unwrap();
        std::fs::write(
            d.join("crypto-crc32c.txt"),
            "driver=crc32c-intel module=crc32c_intel priority=200 \ndriver=crc32c-generic module=crc32c_generic priority=100 \n",
        )
        .unwrap();
        let all = names(&["ours", "drbd-integrity", "drbd", "rublk-loop"]);
        let (text, ok) = report(d, &all, "kernel 6.17.13+deb13-amd64", 1);
        assert!(ok, "{text}");
        assert!(
            text.contains("VM benchmark (kernel 6.17.13+deb13-amd64)"),
            "{text}"
        );
        assert!(text.contains("repd's CRC32C: measured hardware 7.763 ms/MiB, table16 1.989 ms/MiB backend=\"table16\""), "{text}");
        assert!(
            text.contains("kernel crc32c (DRBD's data-integrity-alg takes the first): driver=crc32c-intel module=crc32c_intel priority=200; driver=crc32c-generic"),
            "{text}"
        );
        assert!(
            text.contains("ours/drbd-integrity  IOPS x1.50  (target >= 1.0: met)"),
            "{text}"
        );
        assert!(
            text.contains("ours/drbd            IOPS x0.90  (for information)"),
            "{text}"
        );
        assert!(
            text.contains("ours/rublk-loop      IOPS x0.90  (target >= 0.9: met)"),
            "{text}"
        );
        // Reads against rublk loop have the higher bar.
        assert!(
            text.contains("ours/rublk-loop      IOPS x0.90  (target >= 1.0: NOT met)"),
            "{text}"
        );
        // QD1: latency ratios, lower is better; the target binds p50.
        assert!(
            text.contains("ours/drbd-integrity  p50 x0.80  (target <= 1.0: met)"),
            "{text}"
        );
        assert!(
            text.contains("ours/drbd-integrity  p99 x2.00  (for information)"),
            "{text}"
        );
        assert!(
            text.contains("ours/drbd            p50 x2.00  (for information)"),
            "{text}"
        );
        for line in [
            "RATIO ours/drbd-integrity 4k-randwrite-qd32 1.50",
            "RATIO ours/drbd-integrity 1m-write-qd4 1.50",
            "RATIO ours/drbd-integrity 4k-randwrite-qd1-p50 0.80",
            "RATIO ours/drbd-integrity 4k-randwrite-qd1-p99 2.00",
            "RATIO ours/drbd-integrity 4k-randread-qd32 1.50",
            "RATIO ours/drbd 4k-randwrite-qd32 0.90",
            "RATIO ours/rublk-loop 4k-randread-qd32 0.90",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        // 5 ratio keys per baseline, 3 baselines; the RATIO lines come last.
        let ratios: Vec<&str> = text.lines().filter(|l| l.starts_with("RATIO ")).collect();
        assert_eq!(ratios.len(), 15, "{text}");
        assert!(
            text.trim_end().ends_with(ratios.last().copied().unwrap()),
            "{text}"
        );
    }

    #[test]
    fn rounds_give_medians_and_per_round_ratios_and_gaps_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_results(
            d,
            "ours",
            &[
                (100.0, 10.0, 50.0),
                (300.0, 30.0, 50.0),
                (200.0, 20.0, 50.0),
            ],
        );
        write_results(
            d,
            "drbd-integrity",
            &[
                (110.0, 10.0, 50.0),
                (250.0, 20.0, 50.0),
                (250.0, 40.0, 50.0),
            ],
        );
        let both = names(&["ours", "drbd-integrity"]);
        let (text, ok) = report(d, &both, "kernel x", 3);
        assert!(ok, "{text}");
        assert!(text.contains("median of 3 rounds"), "{text}");
        assert!(
            text.contains("ours/drbd-integrity  IOPS x0.80  (target >= 1.0: NOT met)  per round: x0.91 x1.20 x0.80"),
            "{text}"
        );
        assert!(text.contains("   100 300 200"), "{text}");
        // QD1 shows p50 per round; medians 20 and 20.
        assert!(text.contains("   10 30 20"), "{text}");
        assert!(
            text.contains("RATIO ours/drbd-integrity 4k-randwrite-qd1-p50 1.00"),
            "{text}"
        );

        // A round missing is no result, not a median of the others; a
        // target's setup error is reported.
        std::fs::remove_file(d.join("drbd-integrity.write-1m-qd4.r2.json")).unwrap();
        std::fs::write(d.join("drbd-integrity.error"), "modprobe drbd: not found").unwrap();
        let (text, ok) = report(d, &both, "kernel x", 3);
        assert!(!ok, "{text}");
        assert!(
            text.contains("ERROR drbd-integrity: modprobe drbd: not found"),
            "{text}"
        );
        assert!(text.contains("no result: round 2:"), "{text}");
        assert!(
            !text.contains("RATIO ours/drbd-integrity 1m-write-qd4"),
            "{text}"
        );
    }
}
