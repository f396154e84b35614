//! Run commands inside a VM whose kernel has `ublk_drv` (the host's kernel has not).
//!
//! A thin wrapper around `scripts/vm-setup.sh` and `scripts/vm-run.sh`: the VM is
//! Debian's 6.12 kernel (or 6.17: [`VmConfig::kernel`], [`Kernel`]) booted by
//! virtme-ng under QEMU TCG, running the host's own
//! userspace (every host file is visible at the same path, read-only). The guest
//! runs the command as root after `modprobe ublk_drv`; it sees a shared, writable
//! work folder as `$VM_WORK` and a guest-only tmpfs as `$VM_SCRATCH` (O_DIRECT
//! works there: put backing images there).
//!
//! ```no_run
//! use std::time::Duration;
//! let r = vm_tests::run_in_vm("uname -r; ls -l /dev/ublk-control", Duration::from_secs(600))?;
//! assert_eq!(r.status, 0, "{}", r.stderr);
//! assert!(r.output.contains("ublk-control"));
//! # Ok::<(), vm_tests::VmError>(())
//! ```
//!
//! One boot takes 15–30 s on a quiet host (more when the host is busy): batch
//! many checks into one command rather than booting once per check.
//!
//! The crate is this module ([`run_in_vm`], [`VmResult`], [`VmError`]), [`kernel`]
//! (which guest kernel),
//! [`systemd`] (a Debian 12 guest with systemd as PID 1, for the package's
//! units) and the `vm` binary (`src/bin/vm.rs`) over it; the scenarios it runs
//! are shell scripts in `vm-tests/scenarios/`.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod kernel;
pub mod systemd;

pub use kernel::Kernel;

/// Exit status of `vm-run.sh` when the VM ran out of time.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status of `vm-run.sh` when the harness failed: not set up, the boot
/// failed, `ublk_drv` is missing, or the guest ended without reporting a status.
pub const EXIT_HARNESS: i32 = 125;

/// Extra time the Rust side waits for the script past its own `--timeout`
/// before it stops the script itself.
const WATCHDOG_GRACE: Duration = Duration::from_secs(30);

/// What a run in the VM gave back.
#[derive(Debug, Clone)]
pub struct VmResult {
    /// The command's exit status in the guest; [`EXIT_TIMEOUT`] or
    /// [`EXIT_HARNESS`] when the harness could not get one. -1 when the script
    /// itself was killed by a signal.
    pub status: i32,
    /// The command's stdout in the guest.
    pub output: String,
    /// The command's stderr in the guest, and the harness's own `vm-run:` lines.
    pub stderr: String,
    /// The shared work folder (`$VM_WORK` in the guest), kept after the run.
    /// `WORK/.vm/` holds the harness's files: `console.log` (the kernel's
    /// console), `dmesg.txt`, `status`, `cmd.sh`, `guest.sh`.
    pub work_dir: PathBuf,
    /// Wall-clock time of the whole run, boot included.
    pub elapsed: Duration,
}

impl VmResult {
    /// The command ran and exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// The kernel's console log of this run (empty if there is none).
    pub fn console_log(&self) -> String {
        std::fs::read_to_string(self.work_dir.join(".vm/console.log")).unwrap_or_default()
    }

    /// The guest's `dmesg` taken after the command ended (empty if there is none).
    pub fn dmesg(&self) -> String {
        std::fs::read_to_string(self.work_dir.join(".vm/dmesg.txt")).unwrap_or_default()
    }

    /// Removes the work folder.
    pub fn remove_work_dir(&self) -> io::Result<()> {
        std::fs::remove_dir_all(&self.work_dir)
    }
}

/// Why the harness could not be run at all (a command that fails in the guest
/// is not an error: see [`VmResult::status`]).
#[derive(Debug)]
pub enum VmError {
    /// A script could not be started or its output not read.
    Io(String, io::Error),
    /// `vm-setup.sh` failed; its stderr says why.
    Setup(String),
    /// The script did not end within its timeout plus a grace period and was stopped.
    Watchdog(Duration),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Io(what, e) => write!(f, "{what}: {e}"),
            VmError::Setup(msg) => write!(f, "scripts/vm-setup.sh failed: {msg}"),
            VmError::Watchdog(d) => {
                write!(
                    f,
                    "vm-run.sh did not end within {} s and was stopped",
                    d.as_secs()
                )
            }
        }
    }
}

impl std::error::Error for VmError {}

/// How to run the VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest memory, as QEMU writes it (`4G`, `2048M`).
    pub mem: String,
    /// Guest CPUs.
    pub cpus: u32,
    /// Time for boot and command together; the VM is killed past it.
    pub timeout: Duration,
    /// The shared work folder; `None`: a fresh one under [`work_root`].
    pub work_dir: Option<PathBuf>,
    /// Show the kernel's console while booting.
    pub verbose: bool,
    /// Echo the guest's output to this process's stderr as it comes.
    pub echo: bool,
    /// The guest kernel; `None`: `$REP_VM_KERNEL` if set, else 6.12 (what
    /// `vm-run.sh` does without `--kernel`).
    pub kernel: Option<Kernel>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            mem: "4G".to_owned(),
            cpus: 2,
            timeout: Duration::from_secs(1200),
            work_dir: None,
            verbose: false,
            echo: true,
            kernel: None,
        }
    }
}

/// The repository's root (where `scripts/` is).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map_or_else(|| here.to_path_buf(), Path::to_path_buf)
}

/// `scripts/vm-setup.sh`.
pub fn setup_script() -> PathBuf {
    repo_root().join("scripts/vm-setup.sh")
}

/// `scripts/vm-run.sh`.
pub fn run_script() -> PathBuf {
    repo_root().join("scripts/vm-run.sh")
}

/// Where fresh work folders go: `$REP_VM_WORK_ROOT`, else
/// `$CARGO_TARGET_DIR/vm-work`, else `REPO/target/vm-work`.
pub fn work_root() -> PathBuf {
    if let Some(p) = std::env::var_os("REP_VM_WORK_ROOT") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    let target = if target.is_relative() {
        repo_root().join(target)
    } else {
        target
    };
    target.join("vm-work")
}

/// Runs `scripts/vm-setup.sh` (idempotent; about a second when all is in place):
/// prepares every guest kernel and returns the default (6.12) one's image path.
pub fn setup() -> Result<PathBuf, VmError> {
    setup_script_with(&[])
}

/// Runs `scripts/vm-setup.sh --kernel K`: prepares that kernel alone and
/// returns its image path.
pub fn setup_kernel(kernel: Kernel) -> Result<PathBuf, VmError> {
    setup_script_with(&["--kernel", kernel.as_str()])
}

fn setup_script_with(args: &[&str]) -> Result<PathBuf, VmError> {
    let out = Command::new("bash")
        .arg(setup_script())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| VmError::Io(format!("starting {}", setup_script().display()), e))?;
    if !out.status.success() {
        return Err(VmError::Setup(format!(
            "exit {} (its stderr, above, says why)",
            out.status.code().unwrap_or(-1)
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let vmlinuz = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if vmlinuz.is_empty() {
        return Err(VmError::Setup("it printed no kernel image path".to_owned()));
    }
    Ok(PathBuf::from(vmlinuz))
}

/// Runs `cmd` (a bash script) as root in a fresh VM and waits for it, at most
/// `timeout` for boot and command together. Default memory and CPUs (4G, 2).
pub fn run_in_vm(cmd: &str, timeout: Duration) -> Result<VmResult, VmError> {
    run_in_vm_with(
        cmd,
        &VmConfig {
            timeout,
            ..VmConfig::default()
        },
    )
}

/// Like [`run_in_vm`], with every knob of [`VmConfig`].
pub fn run_in_vm_with(cmd: &str, cfg: &VmConfig) -> Result<VmResult, VmError> {
    let work_dir = match &cfg.work_dir {
        Some(d) => d.clone(),
        None => fresh_work_dir()?,
    };
    let mut command = Command::new("bash");
    command
        .arg(run_script())
        .arg("--mem")
        .arg(&cfg.mem)
        .arg("--cpus")
        .arg(cfg.cpus.to_string())
        .arg("--timeout")
        .arg(cfg.timeout.as_secs().max(1).to_string())
        .arg("--work")
        .arg(&work_dir);
    if cfg.verbose {
        command.arg("--verbose");
    }
    if let Some(k) = cfg.kernel {
        command.arg("--kernel").arg(k.as_str());
    }
    command.arg("--").arg(cmd);
    let echo = Echo {
        stdout: cfg.echo,
        stderr: cfg.echo,
    };
    run_harness(&mut command, &run_script(), work_dir, cfg.timeout, echo)
}

/// Which of a harness's streams are echoed while it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Echo {
    pub(crate) stdout: bool,
    pub(crate) stderr: bool,
}

/// Runs a VM harness script (`command`, its arguments set) to its end or
/// the watchdog (`timeout` + [`WATCHDOG_GRACE`]), collecting its output:
/// what both guests (virtme-ng's and the systemd image) share.
pub(crate) fn run_harness(
    command: &mut Command,
    script: &Path,
    work_dir: PathBuf,
    timeout: Duration,
    echo: Echo,
) -> Result<VmResult, VmError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| VmError::Io(format!("starting {}", script.display()), e))?;
    let out_reader = child.stdout.take().map(|s| collect(s, echo.stdout));
    let err_reader = child.stderr.take().map(|s| collect(s, echo.stderr));
    let deadline = timeout + WATCHDOG_GRACE;
    let status = wait_with_deadline(&mut child, &work_dir, deadline)?;
    let output = join(out_reader);
    let stderr = join(err_reader);
    let status = match status {
        Some(s) => exit_code(s),
        None => return Err(VmError::Watchdog(deadline)),
    };
    Ok(VmResult {
        status,
        output,
        stderr,
        work_dir,
        elapsed: started.elapsed(),
    })
}

fn exit_code(s: ExitStatus) -> i32 {
    s.code().unwrap_or(-1)
}

fn fresh_work_dir() -> Result<PathBuf, VmError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let root = work_root();
    std::fs::create_dir_all(&root)
        .map_err(|e| VmError::Io(format!("creating {}", root.display()), e))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("rs.{}.{n}.{nanos:09}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| VmError::Io(format!("creating {}", dir.display()), e))?;
    Ok(dir)
}

/// Reads a stream line by line into a string, echoing each line to stderr.
fn collect<R: Read + Send + 'static>(stream: R, echo: bool) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut all = String::new();
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    if echo {
                        eprint!("{line}");
                    }
                    all.push_str(&line);
                }
            }
        }
        all
    })
}

fn join(h: Option<JoinHandle<String>>) -> String {
    h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
}

/// Waits for the script; past `deadline`, asks it to stop (SIGTERM: its trap
/// kills the VM it started), then kills it and the QEMU named in its pid file.
fn wait_with_deadline(
    child: &mut Child,
    work_dir: &Path,
    deadline: Duration,
) -> Result<Option<ExitStatus>, VmError> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Ok(Some(s)),
            Ok(None) => {}
            Err(e) => return Err(VmError::Io("waiting for vm-run.sh".to_owned(), e)),
        }
        if start.elapsed() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "vm-tests: vm-run.sh still running after {} s: stopping it",
        deadline.as_secs()
    );
    signal(child.id(), "TERM");
    let grace = Instant::now();
    while grace.elapsed() < Duration::from_secs(15) {
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(100));
    }
    if let Ok(pid) = std::fs::read_to_string(work_dir.join(".vm/qemu.pid")) {
        if let Ok(pid) = pid.trim().parse::<u32>() {
            // Only if that pid is still a QEMU (it is ours: the pid file is in our work folder).
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("qemu") {
                signal(pid, "KILL");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(None)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// When the repd of `dir` was built, if `dir` has repd and repctl.
fn built_at(dir: &Path) -> Option<std::time::SystemTime> {
    if !dir.join("repctl").exists() {
        return None;
    }
    std::fs::metadata(dir.join("repd")).ok()?.modified().ok()
}

/// Of the release build and the test's own profile's build, the newer
/// (the release one when both are as new): a release build left from
/// before a change must not stand in for the build of the change, which
/// ran scenarios on stale binaries by hand more than once.
fn newer_build(release: PathBuf, profile_dir: PathBuf) -> PathBuf {
    let pick = match (built_at(&release), built_at(&profile_dir)) {
        (Some(r), Some(p)) if p > r => profile_dir,
        (Some(_), _) => release,
        (None, _) => profile_dir,
    };
    eprintln!(
        "vm-tests: the scenario runs the binaries in {} (set REP_BIN to choose)",
        pick.display()
    );
    pick
}

/// Where a scenario finds the workspace's binaries when `$REP_BIN` is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenarioBins {
    /// Already built: the newer of the target directory's release build and
    /// the build of this test's own profile (each counted only when it has
    /// repd and repctl).
    Prebuilt,
    /// Built now (`cargo build -p ublk-target -p cluster-agent --bins`) into
    /// this test's target directory and profile, so a plain `cargo test` has
    /// the cluster agent too.
    BuildHere,
}

/// A script of `vm-tests/scenarios/` run in the VM and the rules its output
/// must meet.
#[derive(Debug, Clone)]
pub struct Scenario<'a> {
    /// What `REP_VM_TESTS=0` skips, for the message saying so.
    pub what: &'a str,
    /// The script's file name in `vm-tests/scenarios/`.
    pub script: &'a str,
    /// `NAME=value` settings put before `REP_BIN` on the guest's command line.
    pub env: &'a [&'a str],
    /// Where the binaries come from.
    pub bins: ScenarioBins,
    /// The binaries the script runs; missing ones fail the test before booting.
    pub required: &'a [&'a str],
    /// How to get the binaries, for the message when one is missing.
    pub build_hint: &'a str,
    /// Boot and script together.
    pub timeout: Duration,
    /// At least this many `PASS` lines, or the script ended early.
    pub min_passes: usize,
}

/// Why a scenario failed (its guest output has already been printed).
#[derive(Debug)]
pub enum ScenarioError {
    /// The test's own executable or target directory could not be found.
    TargetDir(String),
    /// `cargo build` of the binaries could not be run or failed.
    Build(String),
    /// Binaries the script needs are not there.
    MissingBins {
        names: Vec<String>,
        dir: PathBuf,
        hint: String,
    },
    /// The VM harness itself failed.
    Harness(VmError),
    /// The guest printed `FAIL` lines.
    FailedChecks(Vec<String>),
    /// The script exited non-zero.
    Status(i32),
    /// Fewer `PASS` lines than the scenario has.
    TooFewPasses(usize),
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScenarioError::TargetDir(msg) | ScenarioError::Build(msg) => f.write_str(msg),
            ScenarioError::MissingBins { names, dir, hint } => {
                write!(f, "no {} in {}: {hint}", names.join("/"), dir.display())
            }
            ScenarioError::Harness(e) => write!(f, "the VM harness did not run: {e}"),
            ScenarioError::FailedChecks(fails) => {
                write!(f, "failed checks in the guest:\n{}", fails.join("\n"))
            }
            ScenarioError::Status(s) => write!(f, "scenario exit status {s}, not 0"),
            ScenarioError::TooFewPasses(n) => {
                write!(f, "only {n} checks passed; the scenario ended early")
            }
        }
    }
}

impl std::error::Error for ScenarioError {}

/// Runs `sc` in a fresh VM with the workspace's binaries, prints the guest's
/// output, and checks what every scenario must: no `FAIL` line, exit status 0,
/// at least `min_passes` `PASS` lines. `Ok(None)`: skipped by `REP_VM_TESTS=0`.
/// The caller checks the lines particular to its scenario in the result.
pub fn run_scenario(sc: &Scenario<'_>) -> Result<Option<VmResult>, ScenarioError> {
    run_scenario_on(sc, None)
}

/// [`run_scenario`] on the guest kernel `kernel` (`None`: as [`VmConfig::kernel`]).
pub fn run_scenario_on(
    sc: &Scenario<'_>,
    kernel: Option<Kernel>,
) -> Result<Option<VmResult>, ScenarioError> {
    if std::env::var("REP_VM_TESTS").as_deref() == Ok("0") {
        eprintln!("REP_VM_TESTS=0: NOT running {}", sc.what);
        return Ok(None);
    }
    let bin = scenario_bin_dir(sc.bins)?;
    let missing: Vec<String> = sc
        .required
        .iter()
        .filter(|b| !bin.join(b).exists())
        .map(|b| (*b).to_owned())
        .collect();
    if !missing.is_empty() {
        return Err(ScenarioError::MissingBins {
            names: missing,
            dir: bin,
            hint: sc.build_hint.to_owned(),
        });
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(sc.script);
    let mut cmd = String::new();
    for e in sc.env {
        cmd.push_str(e);
        cmd.push(' ');
    }
    cmd.push_str(&format!(
        "REP_BIN='{}' bash '{}'",
        bin.display(),
        script.display()
    ));
    let r = run_in_vm_with(
        &cmd,
        &VmConfig {
            timeout: sc.timeout,
            kernel,
            ..VmConfig::default()
        },
    )
    .map_err(ScenarioError::Harness)?;
    println!("{}", r.output);
    eprintln!("{}", r.stderr);
    println!("VM run took {} s, boot included", r.elapsed.as_secs());
    let fails: Vec<String> = r
        .output
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .map(str::to_owned)
        .collect();
    if !fails.is_empty() {
        return Err(ScenarioError::FailedChecks(fails));
    }
    if r.status != 0 {
        return Err(ScenarioError::Status(r.status));
    }
    let passes = r.output.lines().filter(|l| l.starts_with("PASS")).count();
    if passes < sc.min_passes {
        return Err(ScenarioError::TooFewPasses(passes));
    }
    Ok(Some(r))
}

/// `$REP_BIN`, else per `how`. The test runs from `target/<profile>/deps/`.
fn scenario_bin_dir(how: ScenarioBins) -> Result<PathBuf, ScenarioError> {
    if let Some(d) = std::env::var_os("REP_BIN") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe()
        .map_err(|e| ScenarioError::TargetDir(format!("test executable path: {e}")))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            ScenarioError::TargetDir(format!("no target dir above {}", exe.display()))
        })?;
    let target = profile_dir.parent().map(Path::to_path_buf).ok_or_else(|| {
        ScenarioError::TargetDir(format!("no target dir above {}", profile_dir.display()))
    })?;
    match how {
        ScenarioBins::Prebuilt => Ok(newer_build(target.join("release"), profile_dir)),
        ScenarioBins::BuildHere => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut c = Command::new(cargo);
            c.args([
                "build",
                "-q",
                "-p",
                "ublk-target",
                "-p",
                "cluster-agent",
                "--bins",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(repo_root());
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                c.arg("--release");
            }
            let o = c
                .output()
                .map_err(|e| ScenarioError::Build(format!("cargo could not run: {e}")))?;
            if !o.status.success() {
                return Err(ScenarioError::Build(format!(
                    "building repd, repctl and cluster-agent failed:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                )));
            }
            Ok(profile_dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// A build directory under `root` with repd (built at `at`) and repctl.
    fn build(root: &Path, name: &str, at: SystemTime, repctl: bool) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let repd = std::fs::File::create(d.join("repd")).unwrap();
        repd.set_modified(at).unwrap();
        if repctl {
            std::fs::write(d.join("repctl"), b"").unwrap();
        }
        d
    }

    #[test]
    fn the_newer_build_runs_the_scenario() {
        let root = std::env::temp_dir().join(format!("vm-tests-builds-{}", std::process::id()));
        let old = SystemTime::now() - Duration::from_secs(3600);
        let new = SystemTime::now();
        // A release build from before the change: the profile's, newer, runs.
        let r = build(&root, "r1", old, true);
        let p = build(&root, "p1", new, true);
        assert_eq!(newer_build(r, p.clone()), p);
        // A fresh release build: it runs.
        let r = build(&root, "r2", new, true);
        let p = build(&root, "p2", old, true);
        assert_eq!(newer_build(r.clone(), p), r);
        // A release directory without repctl does not count.
        let r = build(&root, "r3", new, false);
        let p = build(&root, "p3", old, true);
        assert_eq!(newer_build(r, p.clone()), p);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
