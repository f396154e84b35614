#!/usr/bin/env bash
# Issue 4's scenarios 3 and 4 and the two device fixes, on real /dev/ublkbN,
# both nodes in one guest. Runs INSIDE the VM (the host kernel has no ublk_drv):
#
#   bash scripts/vm-run.sh -- bash vm-tests/scenarios/ublk-failures.sh
#
# It builds nothing: it runs the host-built repd and repctl from $REP_BIN
# (default: /work/target-ublk/release if repd is there, else .../debug).
#
# 3. Power loss of the Primary during a filesystem workload.
#    alpha (Primary, /dev/ublkb0) runs ext4 with a workload that writes files
#    and fsyncs each one and its folder; only AFTER both fsyncs return does it
#    append "checksum name" to a log kept off the device (guest tmpfs). Other
#    files are written without fsync at the same time (dirty page cache).
#    Then alpha loses power, which here means:
#      - kill -9 of alpha's repd: whatever it held in memory is gone;
#      - alpha's own device dies without a clean stop: the kernel holds its
#        in-flight requests (user recovery), the filesystem's dirty page cache
#        and unfinished fsyncs never complete, and the workload is killed.
#        The held I/O is later thrown away (device removed, EIO), never
#        written: nothing unflushed on alpha reaches any disk after the crash;
#      - alpha's backing image: repd writes it with O_DIRECT and fdatasync, so
#        no acknowledged write lives only in a page cache; the image sits on a
#        guest tmpfs, which has no volatile cache to lose. What alpha had not
#        finished writing is either in the image or not, as after a real power
#        cut, and the resync that follows must sort it out.
#    Beta is promoted: every file whose fsync returned before the crash is
#    there with its checksum, e2fsck -fn is clean after the journal replay.
#    Then alpha comes back: it resyncs from beta and, once Primary again, shows
#    the same files (and beta's newer ones), e2fsck clean, `repctl verify`
#    finds both copies equal.
# 4. A Secondary refuses mkfs: beta (Secondary) has no /dev/ublkb1, mkfs.ext4
#    on it exits non-zero, and beta's data region is bit for bit the same after.
# Fix a. The /dev/ublkb0 a dead repd left is not served while the restarted
#    repd is Secondary: a read of it stays held (it neither returns data nor
#    fails) while alpha is Secondary of the same data generation; once alpha
#    resyncs to beta's newer generation, the stale device is removed (the held
#    read fails with an error) and a fresh one is added when alpha is Primary.
# Fix b. `repctl down` on alpha while /dev/ublkb0 is mounted is refused
#    ("Device is held open by someone"), exits non-zero, and alpha stays up,
#    Primary, its filesystem writable.
#
# PASS/FAIL lines on stdout; exit 1 if any FAIL. Environment: VM_WORK (logs go
# to $VM_WORK/ublk-failures), VM_SCRATCH (guest tmpfs for the images), REP_BIN,
# UBLK_FAIL_SIZE (image size, default 256M), UBLK_FAIL_WORKLOAD_S (seconds of
# workload before the crash, default 12).
set -u

. "$(dirname "$0")/lib.sh"
need_bins repd repctl
need_ublk

MNT=/run/fa                # alpha's mount
MNTB=/run/fb               # beta's mount
SIZE=${UBLK_FAIL_SIZE:-256M}
WORK_S=${UBLK_FAIL_WORKLOAD_S:-12}
pair_dirs ublk-failures "$MNT" "$MNTB"
LOG=$SCRATCH/fsynced.log # the workload's record, off the device
pair_config ublk-failures 17798

WORKLOAD_PIDS=()
READER_PID=
finish() {
  for p in "${WORKLOAD_PIDS[@]}" $READER_PID; do kill -9 "$p" 2>/dev/null; done
  # Lazily: a filesystem on a device whose I/O is held would block a plain umount.
  for m in "$MNT" "$MNTB"; do mountpoint -q "$m" && umount -l "$m"; done
  rc alpha down >/dev/null 2>&1
  rc beta down >/dev/null 2>&1
  for n in alpha beta; do
    pid=$(cat "$SCRATCH/$n.pid" 2>/dev/null)
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
  done
  cp -f "$RUN"/*.log "$LOG" "$OUT"/ 2>/dev/null
  dmesg >"$OUT/dmesg.txt" 2>&1
  verdict
}
is_blk() { [ -b "$1" ]; }
no_dev() { [ ! -e "$1" ] && [ ! -e "/sys/block/$(basename "$1")" ]; }
# retry SECS CMD...: until CMD succeeds (its last output in $OUT/retry.txt).
retry() {
  local secs=$1 end
  shift
  end=$((SECONDS + secs))
  until "$@" >"$OUT/retry.txt" 2>&1; do
    [ "$SECONDS" -ge "$end" ] && return 1
    sleep 1
  done
}
# check_files MOUNTPOINT LOGFILE: every logged file is there with its checksum.
check_files() {
  (cd "$1" && sha256sum --quiet -c "$2")
}
# The data region of a node's image (metadata excluded), copied aside. A copy
# and cmp: hashing 256 MiB takes ~30 s under TCG.
data_copy() { # node file
  head -c "$(st "$1" .data_bytes)" "$SCRATCH/$1.img" >"$2"
}

# ---------------------------------------------------------------- bring up
pair_create_up "$SIZE"
rc alpha primary --force >"$OUT/primary-alpha.txt" 2>&1 || die "primary --force on alpha: $(cat "$OUT/primary-alpha.txt")"
wait_for 600 synced || die "no UpToDate/UpToDate within 600 s: $(rc alpha status 2>&1 | head -n 5)"
wait_for 20 is_blk /dev/ublkb0 || die "/dev/ublkb0 did not appear on alpha (Primary)"
pass "alpha Primary, beta Secondary, UpToDate/UpToDate, /dev/ublkb0 present"

# ---------------------------------------------------------------- 4. the Secondary refuses mkfs
if [ -e /dev/ublkb1 ]; then fail "/dev/ublkb1 exists while beta is Secondary"; else pass "scenario 4: no /dev/ublkb1 on beta (Secondary)"; fi
data_copy beta "$SCRATCH/beta.before" || fail "cannot copy beta's data region"
if mkfs.ext4 -q -F /dev/ublkb1 >"$OUT/mkfs-secondary.txt" 2>&1; then
  fail "scenario 4: mkfs.ext4 /dev/ublkb1 on the Secondary exited 0"
else
  pass "scenario 4: mkfs.ext4 /dev/ublkb1 on the Secondary exits non-zero: $(head -n 1 "$OUT/mkfs-secondary.txt")"
fi
if dd if=/dev/zero of=/dev/ublkb1 bs=4k count=1 oflag=direct conv=nocreat status=none 2>/dev/null; then
  fail "scenario 4: dd to /dev/ublkb1 on the Secondary succeeded"
fi
[ -e /dev/ublkb1 ] && fail "scenario 4: something created /dev/ublkb1"
if [ -s "$SCRATCH/beta.before" ] && cmp -n "$(st beta .data_bytes)" "$SCRATCH/beta.before" "$SCRATCH/beta.img" >"$OUT/cmp-beta.txt" 2>&1; then
  pass "scenario 4: beta's data region unchanged ($(stat -c %s "$SCRATCH/beta.before") bytes compared)"
else
  fail "scenario 4: beta's data region changed: $(head -n 2 "$OUT/cmp-beta.txt")"
fi
rm -f "$SCRATCH/beta.before"

# ---------------------------------------------------------------- 3. workload on alpha, then power loss
mkfs.ext4 -q -F /dev/ublkb0 >"$OUT/mkfs.txt" 2>&1 || die "mkfs.ext4 /dev/ublkb0: $(cat "$OUT/mkfs.txt")"
mount /dev/ublkb0 "$MNT" || die "mount /dev/ublkb0"
mkdir -p "$MNT/sync" "$MNT/nosync" "$SCRATCH/src"
: >"$LOG"
# The fsync workload: each file is written and fsynced, then its folder is
# fsynced (the new name), and only then is it logged.
fsync_workload() {
  local i=0 f src
  while :; do
    i=$((i + 1))
    src=$SCRATCH/src/s$((i % 4))
    head -c $(((RANDOM % 48 + 1) * 4096 + RANDOM % 4096)) /dev/urandom >"$src"
    f=f$(printf %05d $i)
    dd if="$src" of="$MNT/sync/$f" bs=64k conv=fsync status=none || return
    sync "$MNT/sync" || return
    echo "$(sha256sum <"$src" | cut -d' ' -f1)  sync/$f" >>"$LOG"
  done
}
# Buffered writes nobody waits for: dirty page cache at the crash.
nosync_workload() {
  local i=0
  while :; do
    i=$((i + 1))
    dd if=/dev/urandom of="$MNT/nosync/n$i" bs=64k count=$((RANDOM % 32 + 1)) status=none || return
    sleep 0.1
  done
}
fsync_workload &
WORKLOAD_PIDS+=($!)
nosync_workload &
WORKLOAD_PIDS+=($!)
sleep "$WORK_S"
alpha_pid=$(st alpha .pid)
echo "$alpha_pid" >"$SCRATCH/alpha.pid"
logged_before=$(wc -l <"$LOG")
[ "$logged_before" -gt 0 ] || fail "the workload logged no fsynced file in $WORK_S s"
kill -9 "$alpha_pid"
info "power loss of alpha: kill -9 of its repd (pid $alpha_pid) with $logged_before files fsynced so far"
# The workload is stopped where it stands: what it had not logged is lost.
{
  kill -9 "${WORKLOAD_PIDS[@]}"
  wait "${WORKLOAD_PIDS[@]}"
} 2>/dev/null
WORKLOAD_PIDS=()
sleep 1
cp "$LOG" "$SCRATCH/fsynced.at-crash"
logged=$(wc -l <"$SCRATCH/fsynced.at-crash")
cp -f "$RUN/r0.alpha.log" "$OUT/alpha-before-crash.log" 2>/dev/null
if [ -b /dev/ublkb0 ]; then
  pass "alpha's /dev/ublkb0 is left quiesced by the dead repd ($logged files logged as fsynced)"
else
  fail "/dev/ublkb0 vanished with alpha's repd (no user recovery?)"
fi
# A read of the dead device: held, not answered (fix a: checked again below).
dd if=/dev/ublkb0 of="$SCRATCH/held-read" bs=4k count=1 iflag=direct status=none 2>"$OUT/held-read.txt" &
READER_PID=$!

# ---------------------------------------------------------------- 3. beta takes over
if retry 60 rc beta primary; then pass "beta promoted after alpha's crash"; else die "primary on beta: $(cat "$OUT/retry.txt")"; fi
wait_for 20 is_blk /dev/ublkb1 || die "/dev/ublkb1 did not appear on beta"
mount /dev/ublkb1 "$MNTB" || die "mount /dev/ublkb1 (journal replay) failed"
if check_files "$MNTB" "$SCRATCH/fsynced.at-crash" >"$OUT/check-beta.txt" 2>&1; then
  pass "scenario 3: all $logged fsynced files are on beta with their checksums"
else
  fail "scenario 3: fsynced files missing or wrong on beta: $(head -n 5 "$OUT/check-beta.txt" | tr '\n' ' ')"
fi
info "on beta: $(find "$MNTB/sync" -type f | wc -l) files in sync/ (logged $logged), $(find "$MNTB/nosync" -type f | wc -l) in nosync/"
umount "$MNTB" || die "umount beta"
if e2fsck -fn /dev/ublkb1 >"$OUT/e2fsck-beta.txt" 2>&1; then
  pass "scenario 3: e2fsck -fn /dev/ublkb1 clean after the journal replay"
else
  fail "scenario 3: e2fsck -fn on beta: $(tail -n 5 "$OUT/e2fsck-beta.txt" | tr '\n' ' ')"
fi
# Beta writes on: alpha's old generation is now out of date.
mount /dev/ublkb1 "$MNTB" || die "mount /dev/ublkb1 again"
mkdir -p "$MNTB/after"
for i in 1 2 3 4 5; do head -c $((i * 100000)) /dev/urandom >"$MNTB/after/a$i"; done
# syncfs of this filesystem only: a plain `sync` would wait forever for
# alpha's dead filesystem, whose writes the kernel holds.
sync -f "$MNTB/after"
(cd "$MNTB" && sha256sum after/*) >"$SCRATCH/after.sums"
umount "$MNTB" || die "umount beta after writing"
timeout 20 udevadm settle 2>/dev/null
rc beta secondary >"$OUT/secondary-beta.txt" 2>&1 || retry 10 rc beta secondary ||
  die "secondary on beta: $(cat "$OUT/retry.txt")"
# Keep beta from connecting for a moment: alpha must first come back alone.
rc beta disconnect >"$OUT/disconnect-beta.txt" 2>&1 || fail "disconnect on beta: $(cat "$OUT/disconnect-beta.txt")"

# ---------------------------------------------------------------- fix a: alpha restarts Secondary
REP_LOG=info,ublk_target::ublk=debug rc alpha up >"$OUT/up-alpha-again.txt" 2>&1 || die "repctl up alpha after the crash: $(tail -n 5 "$OUT/up-alpha-again.txt")"
st alpha .pid >"$SCRATCH/alpha.pid"
sleep 4
role=$(st alpha .role)
if [ "$role" = Secondary ] && [ -b /dev/ublkb0 ] && kill -0 "$READER_PID" 2>/dev/null; then
  pass "fix a: alpha restarted Secondary; the dead repd's /dev/ublkb0 stays quiesced (a read of it is still held after 4 s)"
else
  fail "fix a: after the restart: role $role, /dev/ublkb0 $([ -b /dev/ublkb0 ] && echo present || echo absent), held read $(kill -0 "$READER_PID" 2>/dev/null && echo waiting || echo "finished: $(cat "$OUT/held-read.txt")")"
fi
grep -q "stays quiesced" "$RUN/r0.alpha.log" || fail "fix a: alpha's log does not say the left device stays quiesced"
rc beta connect >"$OUT/connect-beta.txt" 2>&1 || fail "connect on beta: $(cat "$OUT/connect-beta.txt")"
if wait_for 300 synced; then pass "alpha resynced from beta: UpToDate/UpToDate"; else die "no UpToDate/UpToDate after alpha's return: $(rc alpha status 2>&1 | head -n 5)"; fi
if wait_for 20 no_dev /dev/ublkb0; then
  pass "fix a: the stale /dev/ublkb0 is removed once alpha holds beta's newer generation"
else
  fail "fix a: /dev/ublkb0 still there after the resync to a newer generation"
fi
reader_rc=0
if wait_for 20 eval '! kill -0 "$READER_PID"'; then
  wait "$READER_PID" || reader_rc=$?
  if [ "$reader_rc" != 0 ]; then
    pass "fix a: the held read failed (exit $reader_rc: $(head -n 1 "$OUT/held-read.txt")), it never saw data"
  else
    fail "fix a: the held read of the dead device returned data"
  fi
else
  fail "fix a: the held read still hangs after the device was removed"
fi
READER_PID=
grep -q "moved to another generation" "$RUN/r0.alpha.log" || fail "fix a: alpha's log does not say why the device was removed"
# The stale filesystem on the dead device goes; its id is free once it is unmounted.
umount "$MNT" 2>/dev/null || umount -l "$MNT"

# ---------------------------------------------------------------- 3. alpha Primary again
if retry 60 rc alpha primary; then pass "alpha Primary again"; else die "primary on alpha: $(cat "$OUT/retry.txt")"; fi
if ! wait_for 30 is_blk /dev/ublkb0; then
  for t in /proc/"$(st alpha .pid)"/task/*; do
    echo "== $t $(cat "$t/comm")"
    cat "$t/stack"
  done >"$OUT/alpha-stacks.txt" 2>&1
  die "/dev/ublkb0 did not come back on alpha: $(grep -i ublk "$RUN/r0.alpha.log" | tail -n 3)"
fi
mount /dev/ublkb0 "$MNT" || die "mount /dev/ublkb0 on alpha"
if check_files "$MNT" "$SCRATCH/fsynced.at-crash" >"$OUT/check-alpha.txt" 2>&1 &&
  check_files "$MNT" "$SCRATCH/after.sums" >>"$OUT/check-alpha.txt" 2>&1; then
  pass "scenario 3: alpha shows all $logged fsynced files and beta's newer ones, checksums equal"
else
  fail "scenario 3: files differ on alpha after the resync: $(head -n 5 "$OUT/check-alpha.txt" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- fix b: down refused while mounted
if out=$(rc alpha down 2>&1); then
  fail "fix b: repctl down on alpha succeeded while /dev/ublkb0 is mounted"
else
  case "$out" in
  *"held open"*) pass "fix b: repctl down refused, exit non-zero: $(echo "$out" | head -n 1)" ;;
  *) fail "fix b: repctl down failed, but not saying the device is held open: $out" ;;
  esac
fi
if [ "$(st alpha .role)" = Primary ] && echo still-up >"$MNT/after-down" && sync "$MNT/after-down"; then
  pass "fix b: alpha still up and Primary, its filesystem writable"
else
  fail "fix b: alpha after the refused down: $(rc alpha status 2>&1 | head -n 3)"
fi
umount "$MNT" || die "umount alpha"
if e2fsck -fn /dev/ublkb0 >"$OUT/e2fsck-alpha.txt" 2>&1; then
  pass "scenario 3: e2fsck -fn /dev/ublkb0 on alpha clean"
else
  fail "scenario 3: e2fsck -fn on alpha: $(tail -n 5 "$OUT/e2fsck-alpha.txt" | tr '\n' ' ')"
fi
if rc alpha verify >"$OUT/verify.txt" 2>&1 && grep -q "^verify: [1-9][0-9]* bytes compared, 0 bytes out of sync" "$OUT/verify.txt"; then
  pass "repctl verify: both copies equal ($(head -n 1 "$OUT/verify.txt"))"
else
  fail "repctl verify: $(head -n 3 "$OUT/verify.txt" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- clean stop
timeout 20 udevadm settle 2>/dev/null
if retry 15 rc alpha down; then pass "repctl down on alpha once unmounted"; else fail "repctl down alpha: $(cat "$OUT/retry.txt")"; fi
wait_for 20 no_dev /dev/ublkb0 || fail "/dev/ublkb0 still there after down"
rc beta down >"$OUT/down-beta.txt" 2>&1 || fail "down beta: $(cat "$OUT/down-beta.txt")"
finish
