#!/usr/bin/env bash
# systemd restarts a killed repd and the mounted filesystem carries on.
# Runs INSIDE the Debian 12 systemd guest (not the virtme-ng VM), as root:
#
#   bash scripts/package.sh
#   bash scripts/vm-systemd-run.sh --copy vm-tests/scenarios --copy target/debian/rep_*.deb \
#     -- bash scenarios/systemd-restart.sh
#
# What it checks (PASS/FAIL lines on stdout; exit 1 if any FAIL):
#   1. PID 1 is systemd; `dpkg -i` of the package (the one .deb in /share)
#      puts repd, repctl, the man pages and the units where `man` and
#      systemd find them;
#      `systemd-analyze verify` accepts rep@r0.service;
#   2. two nodes of resource r0 on 127.0.0.1: alpha (device 0) is
#      rep@r0.service, started with `systemctl enable --now rep@r0` (REP_NODE
#      from /etc/rep/r0.env); beta (device 1) is a plain `repctl up` with its
#      own run folder. `systemctl start` returns once repd answers (Type=notify);
#   3. alpha Primary (--force), UpToDate/UpToDate, ext4 on /dev/ublkb0 mounted;
#      a writer runs: fio --verify=crc32c on a file in the filesystem and a loop
#      writing files and logging their checksums after fsync;
#   4. kill -9 of the unit's main process: systemd restarts it (NRestarts went
#      up, a new MainPID, active again), the new repd resumes as Primary by
#      itself (nothing runs `repctl primary`), the writers finish without an
#      error, the filesystem is still mounted and every file verifies, and the
#      journal of rep@r0 shows the kill and the restart;
#   5. after umount, `systemctl stop rep@r0` ends repd with exit 0 and
#      systemd does not restart it.
#
# Environment: VM_WORK (the share; logs go to $VM_WORK/systemd-restart),
# SYSTEMD_RESTART_SIZE (backing image size, default 256M).
set -u

. "$(dirname "$0")/lib.sh"

SHARE=${VM_WORK:-/share}
OUT=$SHARE/systemd-restart
SIZE=${SYSTEMD_RESTART_SIZE:-256M}
CFG=/etc/rep/r0.toml
BETA_RUN=/run/rep-beta # beta's control socket and log (alpha's: /run/rep)
DATA=/var/lib/rep
MNT=/mnt/r0
UNIT=rep@r0.service
rm -rf "$OUT"
mkdir -p "$OUT" "$MNT" "$DATA" "$BETA_RUN" /etc/rep # the package installs no /etc/rep

rc() { repctl --config "$CFG" --node "$@"; }
rcb() { repctl --config "$CFG" --run-dir "$BETA_RUN" --node beta "$@"; }
st() { rc alpha status --json 2>/dev/null | jq -r "$1" 2>/dev/null; }
stb() { rcb status --json 2>/dev/null | jq -r "$1" 2>/dev/null; }
prop() { systemctl show -p "$1" --value "$UNIT"; }

finish() {
  [ -n "${fio_pid:-}" ] && kill "$fio_pid" 2>/dev/null
  [ -n "${loop_pid:-}" ] && kill "$loop_pid" 2>/dev/null
  mountpoint -q "$MNT" && umount "$MNT"
  systemctl stop "$UNIT" >/dev/null 2>&1
  rcb down >/dev/null 2>&1
  journalctl -u "$UNIT" --no-pager -o short-monotonic >"$OUT/journal-rep@r0.log" 2>&1
  cp -f "$BETA_RUN"/*.log "$OUT"/ 2>/dev/null
  dmesg >"$OUT/dmesg.txt" 2>&1
  verdict
}
synced() {
  [ "$(st '.disk + "/" + .peer_disk')" = "UpToDate/UpToDate" ] &&
    [ "$(stb '.disk + "/" + .peer_disk')" = "UpToDate/UpToDate" ]
}

# ---------------------------------------------------------------- 1. systemd, the package
pid1=$(readlink /proc/1/exe)
if [ "$(cat /proc/1/comm)" = systemd ] && [[ "$pid1" == */systemd ]]; then
  pass "PID 1 is systemd ($pid1, $(systemctl --version | head -n 1)); kernel $(uname -r)"
else
  die "PID 1 is $(cat /proc/1/comm) ($pid1), not systemd: not the systemd guest"
fi
info "boot: $(grep -m1 'Startup finished' "$SHARE/.vm/boot.txt" 2>/dev/null)"
debs=("$SHARE"/rep_*.deb)
[ "${#debs[@]}" = 1 ] && [ -f "${debs[0]}" ] || die "want exactly one rep_*.deb in $SHARE, found: ${debs[*]}"
dpkg -i "${debs[0]}" >"$OUT/dpkg-i.txt" 2>&1 || die "dpkg -i $(basename "${debs[0]}"): $(tail -n 5 "$OUT/dpkg-i.txt")"
pass "dpkg -i $(basename "${debs[0]}") on Debian $(cat /etc/debian_version)"
for f in /usr/sbin/repd /usr/sbin/repctl /usr/sbin/cluster-agent; do
  [ -x "$f" ] || fail "$f is not installed"
done
if man -P cat repctl 2>/dev/null | grep -q repctl && man -w repd >/dev/null 2>&1 && man -w 5 rep.toml >/dev/null 2>&1; then
  pass "man repctl, man repd, man 5 rep.toml work"
else
  fail "man pages missing: $(man -w repctl repd 2>&1 | head -n 2)"
fi
if [ "$(systemctl show -p LoadState --value "$UNIT")" = loaded ]; then
  pass "systemd knows $UNIT ($(systemctl show -p FragmentPath --value "$UNIT"))"
else
  die "systemd does not know $UNIT: $(systemctl status "$UNIT" 2>&1 | head -n 3)"
fi
if systemd-analyze verify "$UNIT" >"$OUT/verify.txt" 2>&1; then
  pass "systemd-analyze verify $UNIT"
else
  fail "systemd-analyze verify $UNIT: $(head -n 5 "$OUT/verify.txt")"
fi
[ -c /dev/ublk-control ] || systemctl restart systemd-modules-load.service
if [ -c /dev/ublk-control ]; then pass "/dev/ublk-control (ublk_drv loaded by the package's modules-load.d)"; else die "no /dev/ublk-control after systemd-modules-load"; fi

# ---------------------------------------------------------------- 2. two nodes, alpha under systemd
cat >"$CFG" <<EOF
[resource]
name = "r0"
protocol = "C"
[net]
secret = "systemd-restart"
[sync]
rate = "0"
[[node]]
name = "alpha"
address = "127.0.0.1:7788"
disk = "$DATA/alpha.img"
meta-disk = "internal"
device = 0
nbd = "127.0.0.1:10809"
[[node]]
name = "beta"
address = "127.0.0.1:7789"
disk = "$DATA/beta.img"
meta-disk = "internal"
device = 1
nbd = "127.0.0.1:10810"
EOF
echo REP_NODE=alpha >/etc/rep/r0.env
for n in alpha beta; do
  truncate -s "$SIZE" "$DATA/$n.img"
  rc "$n" create-md >"$OUT/create-md-$n.txt" 2>&1 || die "create-md $n: $(tail -n 3 "$OUT/create-md-$n.txt")"
done
rcb up >"$OUT/up-beta.txt" 2>&1 || die "repctl up beta: $(tail -n 5 "$OUT/up-beta.txt")"
pass "create-md on both nodes, beta up (plain repd, run folder $BETA_RUN)"
t=$SECONDS
systemctl enable --now "$UNIT" >"$OUT/enable.txt" 2>&1 || die "systemctl enable --now $UNIT: $(tail -n 5 "$OUT/enable.txt"); $(journalctl -u "$UNIT" --no-pager | tail -n 5)"
# Type=notify: once `systemctl start` returned, repd's control socket answers.
if [ "$(st .node)" = alpha ]; then
  pass "systemctl enable --now $UNIT: active ($(prop ActiveState)), repd answers at once (Type=notify; $((SECONDS - t)) s), node alpha from /etc/rep/r0.env"
else
  fail "repd under $UNIT does not answer right after systemctl start returned: $(rc alpha status 2>&1 | head -n 3)"
fi
[ "$(systemctl is-enabled "$UNIT")" = enabled ] || fail "$UNIT is not enabled: $(systemctl is-enabled "$UNIT")"
[ "$(systemctl is-enabled rep.target)" = enabled ] || fail "rep.target is not enabled after dpkg -i (rep@r0 would not start at boot)"
rc alpha primary --force >"$OUT/primary.txt" 2>&1 || die "repctl primary --force on alpha: $(cat "$OUT/primary.txt")"
if wait_for 600 synced; then pass "alpha Primary, UpToDate/UpToDate"; else die "no UpToDate/UpToDate within 600 s: $(rc alpha status 2>&1 | head -n 5)"; fi
wait_for 20 test -b /dev/ublkb0 || die "/dev/ublkb0 did not appear within 20 s"

# ---------------------------------------------------------------- 3. a filesystem and writers
mkfs.ext4 -q -F /dev/ublkb0 >"$OUT/mkfs.txt" 2>&1 || die "mkfs.ext4 /dev/ublkb0: $(cat "$OUT/mkfs.txt")"
mount /dev/ublkb0 "$MNT" || die "mount /dev/ublkb0 $MNT"
pass "ext4 on /dev/ublkb0 mounted at $MNT"
mkdir -p "$MNT/files"
fio --name=writer --directory="$MNT" --filename=fio.dat --size=32M --ioengine=libaio --direct=1 \
  --rw=randwrite --bs=4k --iodepth=16 --verify=crc32c --verify_state_save=0 >"$OUT/fio.txt" 2>&1 &
fio_pid=$!
# Each file is logged only after it and its folder were fsynced: every logged
# file must be there with this checksum whatever happens to repd.
(
  i=0
  while [ ! -e "$OUT/stop-loop" ] && [ "$i" -lt 2000 ]; do
    i=$((i + 1))
    head -c $((4096 * (1 + i % 16))) /dev/urandom >"$MNT/files/f$i" &&
      sync "$MNT/files/f$i" && sync "$MNT/files" &&
      echo "$(sha256sum <"$MNT/files/f$i" | cut -d' ' -f1)  files/f$i" >>"$OUT/sums" || exit 1
  done
) 2>"$OUT/loop.err" &
loop_pid=$!
sleep 5

# ---------------------------------------------------------------- 4. kill -9, systemd restarts repd
n0=$(prop NRestarts)
pid0=$(prop MainPID)
[ "$pid0" -gt 0 ] 2>/dev/null || die "$UNIT has no MainPID ($pid0)"
info "kill -9 of $UNIT's main process (repd, pid $pid0; NRestarts=$n0) with the writers running ($(wc -l <"$OUT/sums") files so far)"
kill -9 "$pid0"
restarted() {
  local p
  p=$(prop MainPID)
  [ "$(prop NRestarts)" -gt "$n0" ] && [ "$p" -gt 0 ] && [ "$p" != "$pid0" ] && [ "$(prop ActiveState)" = active ]
}
if wait_for 120 restarted; then
  pass "systemd restarted repd: NRestarts $n0 -> $(prop NRestarts), MainPID $pid0 -> $(prop MainPID), $(prop ActiveState)/$(prop SubState)"
else
  fail "systemd did not restart repd within 120 s: NRestarts=$(prop NRestarts) MainPID=$(prop MainPID) $(prop ActiveState)/$(prop SubState)"
fi
if [ -b /dev/ublkb0 ]; then pass "/dev/ublkb0 survived the kill"; else fail "/dev/ublkb0 vanished with repd"; fi
is_primary() { [ "$(st .role)" = Primary ]; }
if wait_for 600 is_primary; then
  pass "the restarted repd resumed as Primary by itself ($(st .resume)); nothing promoted it"
else
  fail "alpha did not resume as Primary within 600 s: $(st .resume); $(rc alpha status 2>&1 | head -n 5)"
fi
if wait "$fio_pid"; then
  pass "fio randwrite --verify=crc32c on $MNT finished without error across the kill"
else
  fail "fio on $MNT failed: $(grep -m3 -i 'err\|verify' "$OUT/fio.txt")"
fi
fio_pid=
touch "$OUT/stop-loop"
if wait "$loop_pid"; then
  pass "the file writer never failed ($(wc -l <"$OUT/sums") files written, fsynced, logged)"
else
  fail "the file writer failed: $(head -n 3 "$OUT/loop.err")"
fi
loop_pid=
if mountpoint -q "$MNT" && echo after >"$MNT/after-restart" && sync "$MNT/after-restart" &&
  [ "$(cat "$MNT/after-restart")" = after ]; then
  pass "$MNT is still mounted and writable"
else
  fail "$MNT is not mounted or not writable after the restart"
fi
if (cd "$MNT" && sha256sum --quiet -c "$OUT/sums") >"$OUT/sha-check.txt" 2>&1; then
  pass "all $(wc -l <"$OUT/sums") logged files verify"
else
  fail "files differ: $(head -n 5 "$OUT/sha-check.txt")"
fi
journalctl -u "$UNIT" --no-pager >"$OUT/journal-after-kill.txt" 2>&1
if grep -q 'status=9/KILL' "$OUT/journal-after-kill.txt" && grep -qi 'scheduled restart job' "$OUT/journal-after-kill.txt"; then
  pass "journalctl -u $UNIT: $(grep -m1 'status=9/KILL' "$OUT/journal-after-kill.txt" | sed 's/.*]: //'); $(grep -m1 -i 'scheduled restart job' "$OUT/journal-after-kill.txt" | sed 's/.*]: //')"
else
  fail "journalctl -u $UNIT shows no kill and restart: $(tail -n 5 "$OUT/journal-after-kill.txt")"
fi
if grep -q 'resumed as Primary after the crash' "$OUT/journal-after-kill.txt"; then
  pass "repd's log in the journal says it resumed as Primary after the crash"
else
  fail "no 'resumed as Primary after the crash' in journalctl -u $UNIT"
fi

# ---------------------------------------------------------------- 5. a clean stop stays stopped
umount "$MNT" || fail "umount $MNT"
n1=$(prop NRestarts)
if systemctl stop "$UNIT"; then
  sleep 4 # longer than RestartSec: a restart would have happened by now
  if [ "$(prop ActiveState)" = inactive ] && [ "$(prop ExecMainStatus)" = 0 ] &&
    [ "$(prop Result)" = success ] && [ "$(prop NRestarts)" = "$n1" ]; then
    pass "systemctl stop $UNIT: repd exited 0, Result=success, inactive, not restarted"
  else
    fail "after systemctl stop: $(prop ActiveState) ExecMainStatus=$(prop ExecMainStatus) Result=$(prop Result) NRestarts=$(prop NRestarts) (was $n1)"
  fi
else
  fail "systemctl stop $UNIT failed: $(journalctl -u "$UNIT" --no-pager | tail -n 5)"
fi
finish
