//! `vm`: boot a VM with a ublk-capable kernel and run a command in it.
//! A front for `scripts/vm-setup.sh` and `scripts/vm-run.sh`; `vm --help` teaches.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

const HELP: &str = "\
vm: run a command as root inside a VM whose kernel has ublk_drv

The host's kernel has no ublk_drv and loads no modules, so everything that
touches /dev/ublk-control or /dev/ublkbN runs in a VM: Debian's 6.12 kernel
(or 6.17 from trixie-backports, --kernel 6.17), booted by virtme-ng (vng)
under QEMU TCG, running the HOST's own userspace.

USAGE
  vm setup [--kernel K]           install what the VM needs (once; idempotent):
                                  both kernels, or K alone (6.12, 6.17, all)
  vm run [OPTIONS] -- CMD...      boot, run CMD as root in the guest, power off
  vm --help                       this text

  From the repository:   cargo run -p vm-tests --bin vm -- run -- 'uname -r'
  Or the scripts:        bash scripts/vm-setup.sh
                         bash scripts/vm-run.sh -- 'uname -r'

RUN OPTIONS
  --kernel K        the guest kernel: 6.12 (default; CI's scenarios) or 6.17
                    (ublk's UPDATE_SIZE and AUTO_BUF_REG zero copy); default
                    $REP_VM_KERNEL, else 6.12
  --mem SIZE        guest memory (default 4G)
  --cpus N          guest CPUs (default 2)
  --timeout SECS    kill the VM after SECS seconds, boot included (default 1200)
  --work DIR        shared work folder (created, kept); default: a fresh one
                    under ${CARGO_TARGET_DIR:-REPO/target}/vm-work, removed at the end
  --keep            keep the default work folder
  -v, --verbose     show the kernel's console while booting

CMD
  One argument is a bash script:        vm run -- 'cd /run && ls | wc -l'
  Several are a command and its args:   vm run -- ls -l '/a b'
  It runs as root, in the current folder, with the host's PATH and stdin from
  /dev/null, after `modprobe ublk_drv` (the run fails if /dev/ublk-control
  does not appear).

WHAT THE GUEST SEES
  /                 the host's root, READ-ONLY (so host-built binaries just run)
  /etc /usr /var /tmp /home /opt   throwaway overlays: writes vanish at power-off
  /run              tmpfs; mount filesystems under /run (not /mnt: read-only)
  $VM_WORK          the shared work folder, writable, same path on the host:
                    what CMD writes there is on the host afterwards
  $VM_SCRATCH       /run/vm-scratch, a guest tmpfs where O_DIRECT works:
                    put backing images there (9p, i.e. $VM_WORK, is slow)
  $VM_KVER          the guest kernel's version
  modprobe          ublk_drv (loaded), drbd (8.4.11), and the rest of Debian's modules
  ip netns          works: two nodes in one guest = two netns joined by a veth pair

EXIT STATUS
  CMD's own exit status (read from WORK/.vm/status, written by the guest), or
  124  the VM ran out of --timeout
  125  harness failure: not set up, boot failed, ublk_drv missing, or the guest
       died without reporting a status (the end of the console log is printed)

FILES
  WORK/.vm/console.log   the kernel's console of the run
  WORK/.vm/dmesg.txt     the guest's dmesg after CMD
  $REP_VM_CACHE (default ~/.cache/rep-vm)   the kernel .debs, unpacked, vm.env
                    (6.12), vm-6.17.env, apt-trixie-backports/ (6.17's own apt
                    sources list and lists: the host's apt state is untouched)
  /lib/modules/6.12.*+deb12-amd64, /lib/modules/6.17.*+deb13-amd64
                    the guest kernels' modules (host copies)

TIME
  One boot takes 15-30 s when the host is quiet, minutes when it is busy
  (TCG emulates every instruction). Batch checks into one CMD.
  Figures vary 20-30 % from boot to boot: compare ratios within one boot.

ENVIRONMENT
  REP_VM_CACHE, REP_VM_KVER (setup: pick another 6.12 kernel),
  REP_VM_KVER_6_17 (setup: another 6.17 kernel), REP_VM_DEBIAN_MIRROR (setup:
  where trixie-backports is), REP_VM_KERNEL (run: the default --kernel),
  REP_VM_VMLINUZ, REP_VM_VNG (run: override the env file), REP_VM_WORK_ROOT
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (script, rest) = match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Some("setup") => (vm_tests::setup_script(), args.get(1..).unwrap_or_default()),
        Some("run") => (vm_tests::run_script(), args.get(1..).unwrap_or_default()),
        Some(other) => {
            eprintln!("vm: unknown command '{other}' (try: vm --help)");
            return ExitCode::from(2);
        }
    };
    if rest.first().is_some_and(|a| a == "-h" || a == "--help")
        && script == vm_tests::setup_script()
    {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    // Replace this process with the script: its exit status and signals are ours.
    let err = Command::new("bash").arg(&script).args(rest).exec();
    eprintln!("vm: cannot run {}: {err}", script.display());
    ExitCode::from(125)
}
