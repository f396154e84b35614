//! The Debian 12 systemd guest: [`run_in_systemd_vm`] wraps
//! `scripts/vm-systemd-run.sh`, which boots the cached image of
//! `scripts/vm-systemd-image.sh` (systemd as PID 1) and runs one command from
//! a unit once `multi-user.target` is reached. Host files are not visible
//! there: what the command needs is copied into the shared work folder
//! (`/share` in the guest) first.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{collect, exit_code, fresh_work_dir, join, repo_root, wait_with_deadline};
use crate::{VmError, VmResult, WATCHDOG_GRACE};

/// `scripts/vm-systemd-run.sh`.
pub fn systemd_run_script() -> PathBuf {
    repo_root().join("scripts/vm-systemd-run.sh")
}

/// How to run the systemd guest.
#[derive(Debug, Clone)]
pub struct SystemdVmConfig {
    /// Guest memory, as QEMU writes it (`4G`).
    pub mem: String,
    /// Guest CPUs.
    pub cpus: u32,
    /// Image build (when not cached), boot and command together.
    pub timeout: Duration,
    /// Files and folders copied into the work folder before the boot.
    pub copy: Vec<PathBuf>,
    /// Echo the script's own lines to this process's stderr as they come.
    pub echo: bool,
}

impl Default for SystemdVmConfig {
    fn default() -> Self {
        SystemdVmConfig {
            mem: "4G".to_owned(),
            cpus: 2,
            timeout: Duration::from_secs(1800),
            copy: Vec::new(),
            echo: true,
        }
    }
}

/// Runs `cmd` (a bash script, in `/share`, as root) in a fresh boot of the
/// systemd guest; builds the image first when it is not cached (minutes:
/// debootstrap). [`VmResult::status`] is the command's exit status, or
/// [`crate::EXIT_TIMEOUT`] / [`crate::EXIT_HARNESS`]. `work_dir/.vm/` also
/// holds `journal.txt` (the guest's journal) and `boot.txt` (boot timings).
pub fn run_in_systemd_vm(cmd: &str, cfg: &SystemdVmConfig) -> Result<VmResult, VmError> {
    let work_dir = fresh_work_dir()?;
    let script = systemd_run_script();
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .arg("--mem")
        .arg(&cfg.mem)
        .arg("--cpus")
        .arg(cfg.cpus.to_string())
        .arg("--timeout")
        .arg(cfg.timeout.as_secs().max(1).to_string())
        .arg("--work")
        .arg(&work_dir);
    for p in &cfg.copy {
        command.arg("--copy").arg(p);
    }
    command
        .arg("--")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| VmError::Io(format!("starting {}", script.display()), e))?;
    let out_reader = child.stdout.take().map(|s| collect(s, false));
    let err_reader = child.stderr.take().map(|s| collect(s, cfg.echo));
    let deadline = cfg.timeout + WATCHDOG_GRACE;
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
