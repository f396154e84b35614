//! The Debian 12 systemd guest: [`run_in_systemd_vm`] wraps
//! `scripts/vm-systemd-run.sh`, which boots the cached image of
//! `scripts/vm-systemd-image.sh` (systemd as PID 1) and runs one command from
//! a unit once `multi-user.target` is reached. Host files are not visible
//! there: what the command needs is copied into the shared work folder
//! (`/share` in the guest) first.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{fresh_work_dir, repo_root, run_harness, Echo};
use crate::{VmError, VmResult};

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
    command.arg("--").arg(cmd);
    let echo = Echo {
        stdout: false,
        stderr: cfg.echo,
    };
    run_harness(&mut command, &script, work_dir, cfg.timeout, echo)
}
