//! `vm-bench`: fio on the real /dev/ublkb0 (protocol C to a peer) against
//! rublk's loop target, the kernel loop device and in-kernel DRBD 8.4, all in
//! one VM boot. See `vm-bench --help` and bench/RESULTS.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bench::cli::FioSizingHelp as _;
use bench::fio::{self, Workload, WriteResult};
use bench::util::median;
use clap::Parser;
use vm_tests::{run_in_vm_with, VmConfig};

#[derive(Debug, Parser)]
#[command(
    name = "vm-bench",
    about = "fio on /dev/ublkb0 (repd, protocol C) against rublk loop, kernel loop and DRBD 8.4, in one VM boot",
    long_about = "Write throughput and latency of the replicated device as a real block device, \
        measured in one boot of the test VM (Debian 6.12 under QEMU TCG, scripts/vm-run.sh) \
        against three block devices in the same boot:\n\n  \
        ours        /dev/ublkb0: two repd on 127.0.0.1 in the guest, protocol C, Connected UpToDate/UpToDate\n  \
        ours-b      with --bin-dir-b: the same pair run with a second build, in the same boot\n  \
        ours-standalone  /dev/ublkb2: one repd, Primary, disconnected (frontend and engine, no peer)\n  \
        rublk-loop  rublk's loop target on the same kind of file (same queues, depth, request size)\n  \
        kloop       the kernel loop device, losetup --direct-io=on\n  \
        drbd        in-kernel DRBD 8.4.11, protocol C, two minors connected over 127.0.0.1\n\n\
        Every backing file is on the guest's tmpfs and fully written first. fio: --direct=1 \
        --ioengine=libaio, one job, 4k random write QD32 and 1M sequential write QD4, the same \
        --runtime for all. Printed: IOPS, MB/s, p99 per target and the ratios ours/DRBD and \
        ours/rublk-loop (targets: >= 1.0 and >= 0.9).\n\n\
        Under TCG absolute figures mean little and vary 20-30 % from boot to boot: only the \
        ratios within one run count.\n\n\
        Needs: the VM (bash scripts/vm-setup.sh), repd/repctl (cargo build --release -p \
        ublk-target --bins), fio, drbd-utils (drbdmeta, /lib/drbd/drbdsetup-84), rublk \
        (CARGO_TARGET_DIR=/work/target-rublk cargo install rublk). A missing piece makes its \
        row an error; the exit status is non-zero if any target failed.",
    fio_sizing_help([
        "Size of every backing file, in the guest's RAM (K/M/G suffixes) [default: 256M, --quick: 64M]",
        "Measured seconds per fio run [default: 10, --quick: 2]",
        "fio --ramp_time [default: 2, --quick: 1]",
    ]),
    after_help = "Example: CARGO_TARGET_DIR=/work/target-vm2 cargo run --release -p bench --bin vm-bench -- --runtime 10"
)]
struct Cli {
    /// Directory with repd and repctl [default: the directory of this executable]
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// A second build's repd and repctl: adds the target ours-b (the same
    /// pair as ours, run with this build, in the same boot) and the ratio
    /// ours/ours-b. Single boots swing +-20 %; this is how to compare two
    /// builds
    #[arg(long, value_name = "DIR")]
    bin_dir_b: Option<PathBuf>,
    #[command(flatten)]
    fio: bench::cli::FioSizing,
    /// Measure the whole set this many times in the boot, each round starting
    /// the target order one later; the tables show medians, and each ratio
    /// to ours is also given per round. Single runs swing +-20 % under TCG:
    /// use 3 or more to compare two builds (--bin-dir-b)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Only these targets, comma-separated (ours, ours-b, ours-standalone, rublk-loop, kloop, drbd)
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// Guest memory [default: 6G]
    #[arg(long, value_name = "SIZE", default_value = "6G")]
    mem: String,
    /// Guest CPUs
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Small and short: a smoke run, not a measurement
    #[arg(long)]
    quick: bool,
    /// Keep the VM's work folder (fio JSON, logs) and print where it is
    #[arg(long)]
    keep: bool,
}

const TARGETS: [(&str, &str); 6] = [
    ("ours", "ours: /dev/ublkb0, repd protocol C"),
    ("ours-b", "ours-b: /dev/ublkb3, --bin-dir-b's repd"),
    ("ours-standalone", "ours StandAlone (no peer)"),
    ("rublk-loop", "rublk loop"),
    ("kloop", "kernel loop (dio)"),
    ("drbd", "DRBD 8.4 protocol C"),
];
const WORKLOADS: [Workload; 2] = [fio::RANDWRITE_4K_QD32, fio::SEQWRITE_1M_QD4];

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vm-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bin_dir(cli: &Cli) -> Result<PathBuf, String> {
    checked_bin_dir(match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this executable: {e}"))?
            .parent()
            .map(Path::to_path_buf)
            .ok_or("this executable has no directory")?,
    })
}

/// `dir`, made absolute, once it holds repd and repctl.
fn checked_bin_dir(dir: PathBuf) -> Result<PathBuf, String> {
    for b in ["repd", "repctl"] {
        if !dir.join(b).is_file() {
            return Err(format!(
                "no {b} in {} (cargo build --release -p ublk-target --bins, or --bin-dir)",
                dir.display()
            ));
        }
    }
    dir.canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))
}

fn guest_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/vm-bench-guest.sh")
}

/// Shell single quotes around `s`.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn run(cli: &Cli) -> Result<bool, String> {
    let plan = plan(cli)?;
    let cmd = guest_command(cli, &plan)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "vm-bench: one VM boot ({} CPUs, {}); {} files, {} s per fio run (+{} s ramp), {} round(s); host load {}",
        cli.cpus,
        cli.mem,
        plan.size,
        plan.runtime,
        plan.ramp,
        cli.rounds,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let per_target = 120 + 2 * u64::from(cli.rounds) * (plan.runtime + plan.ramp + 15);
    let timeout =
        Duration::from_secs(600 + per_target * u64::try_from(plan.targets.len()).unwrap_or(4));
    let r = run_in_vm_with(
        &cmd,
        &VmConfig {
            mem: cli.mem.clone(),
            cpus: cli.cpus,
            timeout,
            work_dir: None,
            verbose: false,
            echo: true,
            kernel: None,
        },
    )
    .map_err(|e| e.to_string())?;
    let out_dir = r.work_dir.join("vm-bench");
    if r.status != 0 {
        return Err(format!(
            "the guest script exited {} after {:.0} s (work folder kept: {})\n{}",
            r.status,
            r.elapsed.as_secs_f64(),
            r.work_dir.display(),
            r.stderr
        ));
    }
    let meta = std::fs::read_to_string(out_dir.join("meta.txt")).unwrap_or_default();
    let (table, ok) = report(&out_dir, &plan.targets, &meta, cli.rounds);
    println!("{table}");
    println!(
        "host load after: {}; VM run {:.0} s",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        r.elapsed.as_secs_f64()
    );
    if cli.keep || !ok {
        println!(
            "work folder (fio JSON, repd logs): {}",
            r.work_dir.display()
        );
    } else {
        let _ = r.remove_work_dir();
    }
    Ok(ok)
}

/// What one boot measures, from the options and their `--quick` defaults.
struct Plan {
    bins: PathBuf,
    bins_b: Option<PathBuf>,
    size: String,
    runtime: u64,
    ramp: u64,
    targets: Vec<String>,
}

fn plan(cli: &Cli) -> Result<Plan, String> {
    let bins = bin_dir(cli)?;
    let size = cli
        .fio
        .size
        .clone()
        .unwrap_or_else(|| if cli.quick { "64M" } else { "256M" }.to_owned());
    bench::util::parse_size(&size)?;
    let runtime = cli.fio.runtime.unwrap_or(if cli.quick { 2 } else { 10 });
    let ramp = cli.fio.ramp_time.unwrap_or(if cli.quick { 1 } else { 2 });
    let bins_b = cli.bin_dir_b.clone().map(checked_bin_dir).transpose()?;
    let targets: Vec<String> = match &cli.targets {
        Some(t) => t.clone(),
        None => TARGETS
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| *n != "ours-b" || bins_b.is_some())
            .map(str::to_owned)
            .collect(),
    };
    for t in &targets {
        if !TARGETS.iter().any(|(n, _)| n == t) {
            return Err(format!(
                "unknown target {t:?} (known: ours, ours-b, ours-standalone, rublk-loop, kloop, drbd)"
            ));
        }
        if t == "ours-b" && bins_b.is_none() {
            return Err("target ours-b needs --bin-dir-b DIR (the second build)".into());
        }
    }
    Ok(Plan {
        bins,
        bins_b,
        size,
        runtime,
        ramp,
        targets,
    })
}

/// The guest's command: the plan as environment variables, then the text
/// of the guest script.
fn guest_command(cli: &Cli, plan: &Plan) -> Result<String, String> {
    let script = guest_script();
    // The script's text goes into the command (which the harness saves in the
    // work folder): editing the file during a run cannot change what runs.
    let text = std::fs::read_to_string(&script)
        .map_err(|e| format!("cannot read {}: {e}", script.display()))?;
    // repd's CRC32C override (an A/B of its two implementations) reaches the
    // guest's repd only through the script: the guest starts with a clean env.
    let crc = match std::env::var("REP_CRC32C") {
        Ok(v) => format!("export REP_CRC32C={}\n", q(&v)),
        Err(_) => String::new(),
    };
    let bin_b = plan
        .bins_b
        .as_ref()
        .map(|b| format!("export REP_BIN_B={}\n", q(&b.display().to_string())))
        .unwrap_or_default();
    Ok(format!(
        "{crc}{bin_b}export REP_BIN={} VMB_SIZE={} VMB_RUNTIME={} VMB_RAMP={} VMB_ROUNDS={} VMB_TARGETS={}\n{text}",
        q(&plan.bins.display().to_string()),
        q(&plan.size),
        plan.runtime,
        plan.ramp,
        cli.rounds,
        q(&plan.targets.join(" ")),
    ))
}

/// What repd chose for its CRC32C in the guest (its start-up log line,
/// from the repd logs the guest copied next to the results): the choice
/// moves protocol C's figures under emulation, so the report says it.
fn crc_choice(dir: &Path) -> Option<String> {
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

/// Every round's result of one target and workload.
fn rounds_of(
    dir: &Path,
    name: &str,
    w: &Workload,
    rounds: u32,
) -> Result<Vec<WriteResult>, String> {
    (1..=rounds)
        .map(|r| {
            let file = dir.join(format!("{name}.{}.r{r}.json", w.name));
            std::fs::read_to_string(&file)
                .map_err(|e| format!("{}: {e}", file.display()))
                .and_then(|text| fio::parse_write(&text))
        })
        .collect()
}

/// Each figure's median over the rounds.
fn medians(runs: &[WriteResult]) -> Option<WriteResult> {
    let m = |f: fn(&WriteResult) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    Some(WriteResult {
        iops: m(|r| r.iops)?,
        bw_bytes: m(|r| r.bw_bytes)?,
        p99_us: m(|r| r.p99_us)?,
        fio_cpu_pct: m(|r| r.fio_cpu_pct)?,
    })
}

/// The tables, from the fio JSON files the guest wrote; false if a target
/// or workload has no result.
fn report(dir: &Path, targets: &[String], meta: &str, rounds: u32) -> (String, bool) {
    let mut s = String::new();
    let mut ok = true;
    let _ = writeln!(
        s,
        "\nVM benchmark ({})",
        meta.lines().collect::<Vec<_>>().join(", ")
    );
    if let Some(line) = crc_choice(dir) {
        let _ = writeln!(s, "repd's CRC32C: {line}");
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
    for w in WORKLOADS {
        let _ = writeln!(
            s,
            "\n{} ({}, fio libaio --direct=1{of_rounds})",
            w.title,
            w.options()
        );
        let _ = write!(
            s,
            "{:<38} {:>10} {:>9} {:>11}",
            "target", "IOPS", "MB/s", "p99 (us)"
        );
        let _ = writeln!(s, "{}", if rounds > 1 { "   IOPS per round" } else { "" });
        let res = workload_rows(&mut s, &mut ok, dir, targets, &w, rounds);
        ratio_lines(&mut s, &res, rounds);
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
) -> Vec<(&'static str, Vec<WriteResult>)> {
    let mut res: Vec<(&str, Vec<WriteResult>)> = Vec::new();
    for (name, title) in TARGETS {
        if !targets.iter().any(|t| t == name) {
            continue;
        }
        match rounds_of(dir, name, w, rounds) {
            Ok(runs) => {
                let Some(m) = medians(&runs) else {
                    *ok = false;
                    let _ = writeln!(s, "{title:<38} no result: fio reported no figures");
                    continue;
                };
                let _ = write!(
                    s,
                    "{title:<38} {:>10.0} {:>9.1} {:>11.0}",
                    m.iops,
                    m.mb_s(),
                    m.p99_us
                );
                if rounds > 1 {
                    let each: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.iops)).collect();
                    let _ = write!(s, "   {}", each.join(" "));
                }
                let _ = writeln!(s);
                res.push((name, runs));
            }
            Err(e) => {
                *ok = false;
                let _ = writeln!(s, "{title:<38} no result: {e}");
            }
        }
    }
    res
}

/// ours against each baseline that has a result: the ratio of the medians,
/// the verdict against its target, and with rounds the ratio per round.
fn ratio_lines(s: &mut String, res: &[(&str, Vec<WriteResult>)], rounds: u32) {
    let get = |n: &str| res.iter().find(|(k, _)| *k == n).map(|(_, r)| r.as_slice());
    let Some(ours) = get("ours") else { return };
    let Some(ours_m) = medians(ours) else {
        return;
    };
    for (base, target) in [
        ("ours-b", 0.0),
        ("drbd", 1.0),
        ("rublk-loop", 0.9),
        ("ours-standalone", 0.0),
        ("kloop", 0.0),
    ] {
        let Some(b) = get(base) else { continue };
        let Some(b_m) = medians(b) else { continue };
        let ratio = ours_m.iops / b_m.iops;
        let verdict = if target > 0.0 {
            if ratio >= target {
                format!("target >= {target:.1}: met")
            } else {
                format!("target >= {target:.1}: NOT met")
            }
        } else {
            "for information".to_owned()
        };
        let _ = write!(
            s,
            "  ours/{base:<15} IOPS x{ratio:.2}  p99 x{:.2}  ({verdict})",
            ours_m.p99_us / b_m.p99_us
        );
        if rounds > 1 {
            // The same round's two runs sit side by side in time: their
            // ratio leaves out the drift between rounds.
            let each: Vec<String> = ours
                .iter()
                .zip(b)
                .map(|(o, b)| format!("x{:.2}", o.iops / b.iops))
                .collect();
            let _ = write!(s, "  per round: {}", each.join(" "));
        }
        let _ = writeln!(s);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fio_json(iops: f64, p99_ns: f64) -> String {
        format!(
            r#"{{"jobs":[{{"jobname":"j","error":0,"usr_cpu":1.0,"sys_cpu":2.0,
            "write":{{"iops":{iops},"bw_bytes":{},"clat_ns":{{"percentile":{{"99.000000":{p99_ns}}}}}}}}}]}}"#,
            iops * 4096.0
        )
    }

    #[test]
    fn report_prints_ratios_and_flags_missing_results() {
        let dir = tempfile::tempdir().unwrap();
        for (t, iops) in [
            ("ours", 900.0),
            ("ours-b", 1000.0),
            ("rublk-loop", 1000.0),
            ("drbd", 600.0),
        ] {
            for w in WORKLOADS {
                std::fs::write(
                    dir.path().join(format!("{t}.{}.r1.json", w.name)),
                    fio_json(iops, 2_000_000.0),
                )
                .unwrap();
            }
        }
        let all: Vec<String> = ["ours", "ours-b", "rublk-loop", "drbd"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        std::fs::write(
            dir.path().join("r0.alpha.log"),
            "x INFO ublk_target::crc_pick: crc32c: measured hardware 7.763 ms/MiB, table16 1.989 ms/MiB backend=\"table16\"\n",
        )
        .unwrap();
        let (text, ok) = report(dir.path(), &all, "kernel x", 1);
        assert!(ok, "{text}");
        assert!(
            text.contains("repd's CRC32C: measured hardware 7.763 ms/MiB, table16 1.989 ms/MiB backend=\"table16\""),
            "{text}"
        );
        assert!(text.contains("ours/drbd            IOPS x1.50"), "{text}");
        assert!(text.contains("target >= 1.0: met"), "{text}");
        assert!(text.contains("ours/rublk-loop      IOPS x0.90"), "{text}");
        assert!(
            text.contains("ours/ours-b          IOPS x0.90  p99 x1.00  (for information)"),
            "{text}"
        );

        std::fs::write(dir.path().join("drbd.error"), "modprobe drbd: not found").unwrap();
        std::fs::remove_file(dir.path().join("drbd.write-1m-qd4.r1.json")).unwrap();
        let (text, ok) = report(dir.path(), &all, "kernel x", 1);
        assert!(!ok);
        assert!(
            text.contains("ERROR drbd: modprobe drbd: not found"),
            "{text}"
        );
        assert!(text.contains("no result"), "{text}");
    }

    #[test]
    fn rounds_give_medians_and_per_round_ratios() {
        let dir = tempfile::tempdir().unwrap();
        // ours: 100, 300, 200; ours-b: 110, 250, 250 (IOPS per round).
        for (t, per_round) in [
            ("ours", [100.0, 300.0, 200.0]),
            ("ours-b", [110.0, 250.0, 250.0]),
        ] {
            for w in WORKLOADS {
                for (r, iops) in per_round.iter().enumerate() {
                    std::fs::write(
                        dir.path().join(format!("{t}.{}.r{}.json", w.name, r + 1)),
                        fio_json(*iops, 1_000_000.0 * (r + 1) as f64),
                    )
                    .unwrap();
                }
            }
        }
        let both: Vec<String> = vec!["ours".into(), "ours-b".into()];
        let (text, ok) = report(dir.path(), &both, "kernel x", 3);
        assert!(ok, "{text}");
        assert!(text.contains("median of 3 rounds"), "{text}");
        // Medians 200 and 250, p99 medians 2000 us each.
        assert!(
            text.contains("ours/ours-b          IOPS x0.80  p99 x1.00  (for information)  per round: x0.91 x1.20 x0.80"),
            "{text}"
        );
        assert!(text.contains("   100 300 200"), "{text}");

        // A round missing is no result, not a median of the others.
        std::fs::remove_file(dir.path().join("ours-b.write-1m-qd4.r2.json")).unwrap();
        let (text, ok) = report(dir.path(), &both, "kernel x", 3);
        assert!(!ok, "{text}");
        assert!(text.contains("no result"), "{text}");
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(q("a b"), "'a b'");
        assert_eq!(q("it's"), r"'it'\''s'");
    }
}
