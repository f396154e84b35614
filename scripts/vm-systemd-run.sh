#!/usr/bin/env bash
# Boots the Debian 12 systemd guest (scripts/vm-systemd-image.sh) under QEMU
# TCG and runs one command in it as root, from a systemd unit, after the boot.
#
#   bash scripts/vm-systemd-run.sh [OPTIONS] -- CMD...
#
# Unlike scripts/vm-run.sh (the host's userspace under virtme-ng's own init),
# the guest here is a real Debian 12 system: systemd is PID 1, udev, journald,
# `dpkg -i` and `systemctl` work as on a host. Host files are not visible:
# what CMD needs goes into the shared work folder first (--copy), which the
# guest mounts at /share (9p). The root disk is a throwaway snapshot of the
# cached image: nothing CMD does changes the image.
#
# CMD runs with bash in /share, stdin from /dev/null, VM_WORK=/share, once
# multi-user.target is reached (the image's rep-vm-scenario.service runs
# /share/guest-run.sh, which this script writes). Then the guest powers off.
#
# Output: CMD's stdout on stdout and its stderr on stderr, after the VM ends.
# WORK/.vm/ has console.log (kernel and systemd console), journal.txt (the
# guest's whole journal), boot.txt (`systemd-analyze` and the boot timings),
# status.
#
# Exit status: CMD's own, read from WORK/.vm/status (written by the guest).
# Else 124: --timeout ran out (VM killed); 125: harness failure (no image,
# boot failed, guest ended without a status; the console's end is printed).
#
# Options:
#   --mem SIZE      guest memory (default 4G)
#   --cpus N        guest CPUs (default 2)
#   --timeout SECS  kill the VM after SECS seconds (default 1200)
#   --work DIR      the shared work folder (created, kept); default: a fresh
#                   folder under ${CARGO_TARGET_DIR:-REPO/target}/vm-work
#                   (or $REP_VM_WORK_ROOT), kept as well
#   --copy PATH     copy a file or folder into the work folder first (repeatable)
#   --image DIR     image folder (default: what scripts/vm-systemd-image.sh prints,
#                   which builds it when needed)
#   --help, -h      this text
set -euo pipefail
VM_PROG=vm-systemd-run
# shellcheck source=scripts/vm-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
IMAGE=
COPY=()

while [ $# -gt 0 ]; do
  case "$1" in
  --copy) COPY+=("${2:?--copy needs a path}"); shift 2 ;;
  --image) IMAGE=${2:?--image needs a value}; shift 2 ;;
  --) shift; break ;;
  *) vm_common_opt "$@" || vm_unknown_opt "$1"; shift "$VM_SHIFT" ;;
  esac
done
vm_check_cmd $#
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found: run bash scripts/vm-setup.sh"

if [ -z "$IMAGE" ]; then
  IMAGE=$(bash "$REPO/scripts/vm-systemd-image.sh") || die "scripts/vm-systemd-image.sh failed"
fi
for f in rootfs.ext4 vmlinuz initrd.img; do
  [ -f "$IMAGE/$f" ] || die "no $f in $IMAGE: run bash scripts/vm-systemd-image.sh"
done
vm_work_folder systemd
for p in ${COPY[@]+"${COPY[@]}"}; do
  cp -a "$p" "$WORK/" || die "cannot copy $p into $WORK"
done

vm_write_cmd "$@"
# The guest's side, run by rep-vm-scenario.service once multi-user.target is reached.
cat >"$WORK/guest-run.sh" <<'EOF'
#!/bin/bash
# Written by scripts/vm-systemd-run.sh; run by rep-vm-scenario.service in the guest.
C=/share/.vm
systemctl is-system-running --wait >"$C/system-state" 2>&1
{
  echo "pid1=$(cat /proc/1/comm) kernel=$(uname -r)"
  systemd-analyze time 2>&1
  echo "uptime_at_cmd_s=$(cut -d' ' -f1 /proc/uptime)"
} >"$C/boot.txt"
cd /share
VM_WORK=/share bash "$C/cmd.sh" </dev/null >"$C/stdout" 2>"$C/stderr"
echo $? >"$C/status.tmp"
journalctl -b --no-pager -o short-monotonic >"$C/journal.txt" 2>&1
mv "$C/status.tmp" "$C/status"
sync
systemctl poweroff --no-block
EOF

QPID=
# shellcheck disable=SC2317 # called by the EXIT/INT/TERM traps
stop_qemu() {
  if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then kill "$QPID" 2>/dev/null || true; fi
}
trap 'stop_qemu; exit 130' INT TERM
trap stop_qemu EXIT

say "booting $(basename "$IMAGE") (systemd guest, TCG, $MEM, $CPUS cpus); work folder $WORK"
t0=$SECONDS
qemu-system-x86_64 -accel tcg -cpu max,-erms,-fsrm -m "$MEM" -smp "$CPUS" \
  -kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 panic=-1 modprobe.blacklist=$BLACKLIST" \
  -drive "file=$IMAGE/rootfs.ext4,if=virtio,format=raw,snapshot=on" \
  -virtfs "local,path=$WORK,mount_tag=repshare,security_model=none,id=repshare" \
  -nic none -display none -monitor none -serial "file:$CTL/console.log" -no-reboot \
  -pidfile "$CTL/qemu.pid" \
  </dev/null >"$CTL/qemu.out" 2>&1 &
QPID=$!
rc_q=0
end=$((SECONDS + TIMEOUT))
while kill -0 "$QPID" 2>/dev/null; do
  if [ "$SECONDS" -ge "$end" ]; then
    say "timeout: the VM ran for $TIMEOUT s; killed"
    stop_qemu
    wait "$QPID" 2>/dev/null || true
    QPID=
    tail -n 30 "$CTL/console.log" >&2 2>/dev/null || true
    exit 124
  fi
  sleep 1
done
wait "$QPID" || rc_q=$?
QPID=
say "VM ended after $((SECONDS - t0)) s (qemu exit $rc_q)"

[ -f "$CTL/stdout" ] && cat "$CTL/stdout"
[ -f "$CTL/stderr" ] && cat "$CTL/stderr" >&2
if [ ! -s "$CTL/status" ]; then
  cat "$CTL/qemu.out" >&2 2>/dev/null || true
  say "the guest ended without a status; end of the console log ($CTL/console.log):"
  tail -n 40 "$CTL/console.log" >&2 2>/dev/null || true
  exit 125
fi
exit "$(cat "$CTL/status")"
