//! `vm-bench`: fio on the real /dev/ublkb0 (protocol C to a peer) against
//! in-kernel DRBD 8.4 (with and without `data-integrity-alg crc32c`),
//! rublk's loop target and the kernel loop device, all in one VM boot on
//! the guest kernel of `--kernel`. See `vm-bench --help` and bench/RESULTS.md.

mod bounds;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bench::cli::FioSizingHelp as _;
use clap::Parser;
use report::{report, TARGETS, WORKLOADS};
use vm_tests::{run_in_vm_with, Kernel, VmConfig};

#[derive(Debug, Parser)]
#[command(
    name = "vm-bench",
    about = "fio on /dev/ublkb0 (repd, protocol C) against DRBD 8.4 (with and without data-integrity-alg crc32c), rublk loop and kernel loop, in one VM boot",
    long_about = "Throughput and latency of the replicated device as a real block device, \
        measured in one boot of the test VM (Debian's 6.12 or 6.17 under QEMU TCG, \
        scripts/vm-run.sh --kernel) against other block devices in the same boot:\n\n  \
        ours        /dev/ublkb0: two repd on 127.0.0.1 in the guest, protocol C, Connected UpToDate/UpToDate\n  \
        ours-b      with --bin-dir-b: the same pair run with a second build, in the same boot\n  \
        ours-standalone  /dev/ublkb2: one repd, Primary, disconnected (frontend and engine, no peer)\n  \
        rublk-loop  rublk's loop target on the same kind of file (same queues, depth, request size)\n  \
        kloop       the kernel loop device, losetup --direct-io=on\n  \
        drbd-integrity  in-kernel DRBD 8.4.11, protocol C, data-integrity-alg crc32c (the \
        guarantee repd's frame CRC32C gives), two minors connected over 127.0.0.1\n  \
        drbd        the same with DRBD's default (no data-integrity-alg)\n\n\
        Every backing file is on the guest's tmpfs and fully written first. fio: --direct=1 \
        --ioengine=libaio, one job, 4k random write QD32, 1M sequential write QD4, 4k random \
        write QD1 (p50, p99 latency) and 4k random read QD32, the same --runtime for all. \
        Printed: IOPS, MB/s, p50, p99 per target, the ratios of ours to each baseline \
        (targets: ours/drbd-integrity >= 1.0, QD1 p50 latency <= 1.0; ours/rublk-loop \
        >= 0.9 for writes, >= 1.0 for reads), which CRC32C repd and the guest kernel \
        used, and at the end one line per ratio for scripts: \
        `RATIO ours/<baseline> <workload> <value>` (workloads 4k-randwrite-qd32, \
        1m-write-qd4, 4k-randread-qd32: IOPS ratio; 4k-randwrite-qd1-p50, \
        4k-randwrite-qd1-p99: latency ratio, lower is better).\n\n\
        Under each workload's table, what bounds it (issue 22): for ours the per-stage \
        breakdown of `repctl status --latency` over each run (mean, p50, p99 per stage, \
        their sum against fio's mean completion latency), the CPU per I/O of the guest \
        and of each target's own threads (repd's by thread, DRBD's drbd_* kernel threads), \
        and under the QD1 table the guest's floors: the same fio job on a tmpfs file (the \
        local write) and tcp-rtt's 4 KiB round trip over 127.0.0.1, with each p50 against \
        their sum (`RATIO ours/floor`). --perf adds a profile per target.\n\n\
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
    after_help = "Example: cargo run --release -p bench --bin vm-bench -- --kernel 6.17 --rounds 3"
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
    /// The guest kernel: 6.12 (Debian 12) or 6.17 (trixie-backports; both
    /// from scripts/vm-setup.sh)
    #[arg(long, value_name = "K", default_value = "6.12")]
    kernel: Kernel,
    /// Only these targets, comma-separated (ours, ours-b, ours-standalone,
    /// drbd-integrity, drbd, rublk-loop, kloop)
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
    /// After the rounds, one more 4k QD32 write run per target under
    /// `perf record -a -g` in the guest (the host's perf, linux-perf), not
    /// counted in the tables: the report shows each target's share per
    /// thread and its top symbols. Under TCG (run 15 in bench/RESULTS.md)
    /// the cpu-clock samples of busy vCPUs land mostly in the idle loop: the
    /// per-thread CPU table is the reliable split there
    #[arg(long)]
    perf: bool,
    /// Boot nothing: print the report of a kept run from its results folder
    /// (WORK/vm-bench, as --keep names it), with --rounds and --targets as
    /// that run had them (--rounds N reads only rounds 1..=N)
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

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
    if let Some(dir) = &cli.report {
        let meta = std::fs::read_to_string(dir.join("meta.txt")).map_err(|e| {
            format!(
                "{}: {e} (not a vm-bench results folder?)",
                dir.join("meta.txt").display()
            )
        })?;
        let targets = cli.targets.clone().unwrap_or_else(|| {
            TARGETS
                .iter()
                .map(|(n, _)| (*n).to_owned())
                .filter(|n| n != "ours-b")
                .collect()
        });
        let (table, ok) = report(dir, &targets, &meta, cli.rounds);
        println!("{table}");
        return Ok(ok);
    }
    let plan = plan(cli)?;
    let cmd = guest_command(cli, &plan)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "vm-bench: one VM boot (kernel {}, {} CPUs, {}); {} files, {} s per fio run (+{} s ramp), {} round(s); host load {}",
        cli.kernel,
        cli.cpus,
        cli.mem,
        plan.size,
        plan.runtime,
        plan.ramp,
        cli.rounds,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let n_workloads = u64::try_from(WORKLOADS.len()).unwrap_or(4);
    let per_run = plan.runtime + plan.ramp;
    let mut per_target = 120 + n_workloads * u64::from(cli.rounds) * (per_run + 15);
    if cli.perf {
        // The profiled run, and perf report under TCG.
        per_target += per_run + 300;
    }
    // The floors: one fio QD1 job and tcp-rtt per round.
    let floors = u64::from(cli.rounds) * (per_run + 60);
    let timeout = Duration::from_secs(
        600 + floors + per_target * u64::try_from(plan.targets.len()).unwrap_or(4),
    );
    let r = run_in_vm_with(
        &cmd,
        &VmConfig {
            mem: cli.mem.clone(),
            cpus: cli.cpus,
            timeout,
            work_dir: None,
            verbose: false,
            echo: true,
            kernel: Some(cli.kernel),
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
                "unknown target {t:?} (known: {})",
                TARGETS.map(|(n, _)| n).join(", ")
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
    // The floors' TCP round trip: bench's tcp-rtt from --bin-dir, else
    // built beside vm-bench (without it the guest records that the floor
    // was not measured).
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("tcp-rtt")));
    let rtt = std::iter::once(plan.bins.join("tcp-rtt"))
        .chain(beside)
        .find(|p| p.is_file())
        .map(|p| format!("export VMB_TCP_RTT={}\n", q(&p.display().to_string())))
        .unwrap_or_default();
    let perf = if cli.perf { "export VMB_PERF=1\n" } else { "" };
    let bin_b = plan
        .bins_b
        .as_ref()
        .map(|b| format!("export REP_BIN_B={}\n", q(&b.display().to_string())))
        .unwrap_or_default();
    Ok(format!(
        "{crc}{rtt}{perf}{bin_b}export REP_BIN={} VMB_SIZE={} VMB_RUNTIME={} VMB_RAMP={} VMB_ROUNDS={} VMB_TARGETS={}\n{text}",
        q(&plan.bins.display().to_string()),
        q(&plan.size),
        plan.runtime,
        plan.ramp,
        cli.rounds,
        q(&plan.targets.join(" ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(q("a b"), "'a b'");
        assert_eq!(q("it's"), r"'it'\''s'");
    }

    #[test]
    fn kernel_option_takes_the_two_kernels_only() {
        let cli = Cli::try_parse_from(["vm-bench", "--kernel", "6.17"]).map(|c| c.kernel);
        assert_eq!(cli.ok(), Some(Kernel::V6_17));
        let cli = Cli::try_parse_from(["vm-bench"]).map(|c| c.kernel);
        assert_eq!(cli.ok(), Some(Kernel::V6_12));
        let e = Cli::try_parse_from(["vm-bench", "--kernel", "6.1"]).err();
        assert!(e.is_some_and(|e| e.to_string().contains("6.12 and 6.17")));
    }
}
