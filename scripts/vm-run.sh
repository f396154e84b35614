#!/usr/bin/env bash
# Boots a VM with a kernel that has ublk_drv and runs one command in it as root.
#
#   bash scripts/vm-run.sh [OPTIONS] -- CMD...
#
# The guest runs the host's own userspace: every host file is visible at the same
# path (read-only), so binaries built on the host run as they are. The guest
# gets a writable work folder, shared with the host, at the same path on both
# sides ($VM_WORK in the guest), and a guest-only tmpfs, $VM_SCRATCH
# (/run/vm-scratch: O_DIRECT works there; put backing images there).
# Before CMD, `modprobe ublk_drv` runs and /dev/ublk-control must appear.
#
# CMD: a single argument is a shell script (`-- 'uname -r; ls /dev'`); several
# arguments are one command and its arguments, quoted as given
# (`-- ls -l "/a b"`). It runs with bash, stdin from /dev/null, in the current
# folder, with the host's PATH.
#
# Output: CMD's stdout on stdout, CMD's stderr and this script's messages
# ("vm-run: ...") on stderr. The kernel's console goes to WORK/.vm/console.log
# (shown with --verbose, and its end is shown when the guest never starts CMD).
#
# Exit status: CMD's exit status, taken from a file CMD's wrapper writes in the
# shared folder (WORK/.vm/status). Else:
#   124  the VM ran out of --timeout
#   125  the harness failed: not set up, boot failed, ublk_drv missing, or the
#        guest ended without reporting a status (see the console log)
#
# Options:
#   --kernel K      the guest kernel: 6.12 (default; what CI's scenarios run on)
#                   or 6.17 (trixie-backports: ublk's UPDATE_SIZE, AUTO_BUF_REG);
#                   default $REP_VM_KERNEL, else 6.12. Both come from vm-setup.sh.
#   --mem SIZE      guest memory (default 4G)
#   --cpus N        guest CPUs (default 2)
#   --timeout SECS  kill the VM after SECS seconds (default 1200)
#   --work DIR      use DIR (created if missing, kept) as the shared work folder;
#                   default: a fresh folder under ${CARGO_TARGET_DIR:-REPO/target}/vm-work,
#                   removed at the end unless --keep
#   --keep          keep the default work folder (its path is printed)
#   --verbose, -v   show the kernel's console while booting
#   --help, -h      this text
#
# Environment: REP_VM_CACHE (where vm-setup.sh put the kernels, default
# $HOME/.cache/rep-vm), REP_VM_KERNEL (the default of --kernel), REP_VM_VMLINUZ
# and REP_VM_VNG (override vm.env / vm-6.17.env), REP_VM_WORK_ROOT (where
# default work folders go).
#
# Needs `bash scripts/vm-setup.sh` once. Boot takes 15-30 s (QEMU TCG: the host's
# /dev/kvm cannot boot a stock kernel).
set -euo pipefail
VM_PROG=vm-run
# shellcheck source=scripts/vm-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
KEEP=0
VERBOSE=0
KERNEL=${REP_VM_KERNEL:-6.12}

while [ $# -gt 0 ]; do
  case "$1" in
  --kernel) KERNEL=${2:?--kernel needs a value}; shift 2 ;;
  --kernel=*) KERNEL=${1#*=}; shift ;;
  --keep) KEEP=1; shift ;;
  -v | --verbose) VERBOSE=1; shift ;;
  --) shift; break ;;
  *) vm_common_opt "$@" || vm_unknown_opt "$1"; shift "$VM_SHIFT" ;;
  esac
done
vm_check_cmd $#
case "$KERNEL" in
6.12) ENV_FILE=vm.env ;;
6.17) ENV_FILE=vm-6.17.env ;;
*) die "--kernel (or REP_VM_KERNEL) wants 6.12 or 6.17, got '$KERNEL'" ;;
esac

# ------------------------------------------------------------ what setup made
CACHE=${REP_VM_CACHE:-${HOME:-/root}/.cache/rep-vm}
if [ -f "$CACHE/$ENV_FILE" ]; then
  while IFS='=' read -r k v; do
    case "$k" in
    REP_VM_KVER) KVER=$v ;;
    REP_VM_VMLINUZ) : "${REP_VM_VMLINUZ:=$v}" ;;
    REP_VM_VNG) : "${REP_VM_VNG:=$v}" ;;
    esac
  done <"$CACHE/$ENV_FILE"
fi
{ [ -n "${REP_VM_VMLINUZ:-}" ] && [ -f "$REP_VM_VMLINUZ" ]; } ||
  die "no $KERNEL kernel image: run 'bash scripts/vm-setup.sh --kernel $KERNEL' first (looked for $CACHE/$ENV_FILE)"
{ [ -n "${REP_VM_VNG:-}" ] && [ -x "$REP_VM_VNG" ]; } ||
  die "vng not found: run 'bash scripts/vm-setup.sh' first"
KVER=${KVER:-$(basename "$REP_VM_VMLINUZ" | sed 's/^vmlinuz-//')}
[ -f "/lib/modules/$KVER/modules.dep" ] ||
  die "/lib/modules/$KVER/modules.dep is missing: run 'bash scripts/vm-setup.sh' first"

# ------------------------------------------------------------ work folder
# A folder given with --work is kept; the default one only with --keep.
if [ -n "$WORK" ]; then KEEP=1; fi
vm_work_folder run
vm_write_cmd "$@"

q() { printf '%q' "$1"; }
cat >"$CTL/guest.sh" <<EOF
#!/bin/bash
# Written by scripts/vm-run.sh; runs as root in the guest.
ctl=$(q "$CTL")
fatal() { echo "vm-run: GUEST ERROR: \$*" >&2; echo 125 >"\$ctl/status"; sync; exit 125; }
# Keep kernel messages off the console from here on (dmesg.txt has them all).
dmesg -n 1 2>/dev/null
export PATH=$(q "$PATH"):\$PATH
export VM_WORK=$(q "$WORK")
export VM_SCRATCH=/run/vm-scratch
export VM_KVER=\$(uname -r)
mkdir -p "\$VM_SCRATCH" || fatal "cannot create \$VM_SCRATCH"
modprobe ublk_drv || fatal "modprobe ublk_drv failed (kernel \$(uname -r); modules at /lib/modules/\$(uname -r)?)"
for _ in \$(seq 50); do [ -c /dev/ublk-control ] && break; sleep 0.1; done
[ -c /dev/ublk-control ] || fatal "/dev/ublk-control did not appear after modprobe ublk_drv"
echo "=== vm-run: CMD starts" >&2
read -r up _ </proc/uptime
echo "\$up" >"\$ctl/guest-start-uptime"
bash "\$ctl/cmd.sh" </dev/null
rc=\$?
dmesg >"\$ctl/dmesg.txt" 2>&1
read -r up _ </proc/uptime
echo "\$up" >"\$ctl/guest-end-uptime"
echo "\$rc" >"\$ctl/status.tmp" && mv "\$ctl/status.tmp" "\$ctl/status"
sync
exit "\$rc"
EOF

# ------------------------------------------------------------ cleanup
CHILD=
FIFO_DIR=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  # Only when interrupted while the VM runs: the QEMU process this run started
  # (vng forks it), by its pid file.
  if [ -n "$CHILD" ] && [ -s "$CTL/qemu.pid" ]; then
    pid=$(cat "$CTL/qemu.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
  fi
  # `timeout` passes the signal on to its process group: vng and QEMU.
  if [ -n "$CHILD" ] && [ -s "$FIFO_DIR/timeout.pid" ]; then
    kill "$(cat "$FIFO_DIR/timeout.pid")" 2>/dev/null || true
  fi
  if [ -n "$FIFO_DIR" ]; then rm -rf "$FIFO_DIR"; fi
  if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# Filters vng's stderr: the kernel console goes to console.log; after the guest
# says CMD starts, everything that is not a kernel log line is CMD's stderr.
filter_stderr() {
  local started=0 line
  : >"$CTL/console.log"
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    printf '%s\n' "$line" >>"$CTL/console.log"
    if [ "$started" = 0 ] && [ "$line" = "=== vm-run: CMD starts" ]; then
      started=1
      echo "$EPOCHREALTIME" >"$CTL/host-cmd-start"
      [ "$VERBOSE" = 1 ] && printf '%s\n' "$line" >&2
      continue
    fi
    if [ "$VERBOSE" = 1 ]; then
      printf '%s\n' "$line" >&2
    elif [ "$started" = 1 ] && ! [[ "$line" =~ ^\[\ *[0-9]+\.[0-9]+\]\  ]]; then
      printf '%s\n' "$line" >&2
    elif [[ "$line" == "vm-run: GUEST ERROR"* ]]; then
      printf '%s\n' "$line" >&2
    fi
  done
}

# One boot; sets vng_rc, t0 and t1.
boot_once() {
  FIFO_DIR=$(mktemp -d "${TMPDIR:-/tmp}/vm-run.XXXXXX")
  mkfifo "$FIFO_DIR/stderr"
  filter_stderr <"$FIFO_DIR/stderr" &
  FILTER=$!
  t0=$EPOCHREALTIME
  set +e
  # vng's stdout and stderr must be pipes: QEMU truncates a regular file it writes
  # to. stdin is /dev/null: nothing is typed into the guest. `timeout` kills its
  # whole process group (vng and the QEMU it forks) when time runs out.
  {
    timeout --kill-after=10 "$TIMEOUT" "$REP_VM_VNG" -v --force-9p --disable-kvm \
      -m "$MEM" -p "$CPUS" --rwdir="$WORK" -r "$REP_VM_VMLINUZ" \
      --qemu-opts="-cpu max,-erms,-fsrm -pidfile $CTL/qemu.pid" \
      --append "modprobe.blacklist=$BLACKLIST" \
      -e "/bin/bash $CTL/guest.sh" </dev/null 2>"$FIFO_DIR/stderr" &
    echo $! >"$FIFO_DIR/timeout.pid"
    wait $!
    echo $? >"$FIFO_DIR/vng-rc" 2>/dev/null
  } | cat &
  CHILD=$!
  wait "$CHILD"
  wait "$FILTER"
  CHILD=
  FILTER=
  set -e
  t1=$EPOCHREALTIME
  vng_rc=$(cat "$FIFO_DIR/vng-rc" 2>/dev/null || echo 255)
  rm -rf "$FIFO_DIR"
  FIFO_DIR=
}

# The guest kernel sometimes oopses while it boots under TCG (an int3 from
# live code patching in an early initcall, QEMU's cross-modifying code):
# then nothing of CMD ran, so booting again is safe. Anything else (CMD
# started, a timeout) is reported as it is.
BOOTS=3
for attempt in $(seq 1 $BOOTS); do
  rm -f "$CTL/status" "$CTL/host-cmd-start" "$CTL/guest-start-uptime" "$CTL/guest-end-uptime" "$CTL/qemu.pid"
  say "booting $KVER (TCG, $CPUS cpus, $MEM); work folder $WORK"
  boot_once
  if [ ! -f "$CTL/status" ] && [ ! -f "$CTL/host-cmd-start" ] &&
    [ "$vng_rc" != 124 ] && [ "$vng_rc" != 137 ] && [ "$attempt" -lt "$BOOTS" ] &&
    grep -qE "Kernel panic|Oops:" "$CTL/console.log" 2>/dev/null; then
    say "the guest kernel crashed while booting, before CMD started: $(grep -m1 -E 'Oops:|Kernel panic' "$CTL/console.log" | sed 's/^\[ *[0-9.]*\] //'); booting again ($((attempt + 1)) of $BOOTS)"
    cp -f "$CTL/console.log" "$CTL/console.boot$attempt.log"
    continue
  fi
  break
done

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
total=$(elapsed "$t0" "$t1")
if [ -f "$CTL/status" ]; then
  rc=$(cat "$CTL/status")
  [[ "$rc" =~ ^[0-9]+$ ]] || die "status file $CTL/status holds '$rc'"
  boot="?"
  [ -f "$CTL/host-cmd-start" ] && boot=$(elapsed "$t0" "$(cat "$CTL/host-cmd-start")")
  cmdt="?"
  [ -f "$CTL/guest-start-uptime" ] && [ -f "$CTL/guest-end-uptime" ] &&
    cmdt=$(elapsed "$(cat "$CTL/guest-start-uptime")" "$(cat "$CTL/guest-end-uptime")")
  say "exit $rc (boot ${boot} s, CMD ${cmdt} s, total ${total} s)"
  [ "$KEEP" = 1 ] && say "work folder kept: $WORK"
  exit "$rc"
fi

# No status: the guest never ran CMD to its end.
if [ "$vng_rc" = 124 ] || [ "$vng_rc" = 137 ]; then
  say "ERROR: timed out after $TIMEOUT s (--timeout); the VM was killed"
  final=124
else
  say "ERROR: the guest reported no exit status (vng exit $vng_rc after $total s): the boot failed,"
  say "       the kernel panicked or CMD killed the guest. Last console lines:"
  final=125
fi
if [ "$VERBOSE" = 0 ] && [ -f "$CTL/console.log" ]; then
  tail -n 30 "$CTL/console.log" | sed 's/^/  | /' >&2
fi
KEEP=1
say "console log: $CTL/console.log"
exit "$final"
