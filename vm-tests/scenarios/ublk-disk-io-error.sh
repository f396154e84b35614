#!/usr/bin/env bash
# Issue 20: the Primary's disk really fails (device-mapper), with what repd has
# for it without a diskless mode: `on-io-error = "call-local-io-error"` and
# `"pass-on"`. Both nodes in one guest, on real /dev/ublkbN. Runs INSIDE the VM:
#
#   bash scripts/vm-run.sh -- bash vm-tests/scenarios/ublk-disk-io-error.sh
#
# Each node's disk is /dev/mapper/rep-NODE: dm-linear over a loop device over a
# file on the guest's tmpfs (lib.sh's dm_disk). The test fails alpha's disk by
# swapping its table while fio writes to /dev/ublkb0, and heals it by swapping
# linear back; nothing inside repd is told. The failure covers the data region
# (every sector below the internal metadata: a disk whose surface went bad),
# not the metadata: a failed metadata write is a `metadata` error, which
# today neither runs the handler nor clears when the disk heals (see
# ISSUE 20's on-io-error detach, which drops the disk for it).
#
# 1. call-local-io-error: both nodes skip the initial sync (zeroed disks,
#    `new-current-uuid --clear-bitmap`), alpha Primary; fio randwrite on
#    /dev/ublkb0; alpha's data region goes dm-error: fio's writes fail with an I/O
#    error (DRBD's call-local-io-error passes the error on, as pass-on);
#    alpha runs its local-io-error handler once, with DRBD's environment
#    (DRBD_RESOURCE, DRBD_PEER, DRBD_MINOR, DRBD_BACKING_DEV, REP_HANDLER);
#    `repctl status --json` shows the run and the local-io error; `repctl
#    events` printed `create error ... error:local-io` and `call handler ...
#    handler:local-io-error`. The disk heals: writes succeed again and the
#    error is reported ended.
# 2. pass-on: alpha restarted with on-io-error = "pass-on" (the handler
#    still configured): one 4 KiB block goes bad, a write to it fails to the
#    application with EIO, the error is in status and events, and the
#    handler does NOT run (DRBD runs it only under call-local-io-error).
# 3. After healing, a full `repctl verify` from alpha: the copies agree once
#    the ranges the failed writes marked out of sync have been resynced.
#
# PASS/FAIL lines on stdout; exit 1 if any FAIL. Environment: VM_WORK (logs in
# $VM_WORK/ublk-disk-io-error), VM_SCRATCH, REP_BIN, DISK_FAIL_SIZE (each
# disk, default 64M).
set -u

. "$(dirname "$0")/lib.sh"
need_bins repd repctl
need_ublk

NAME=ublk-disk-io-error
SCRATCH=${VM_SCRATCH:-/run/vm-scratch}/$NAME
OUT=${VM_WORK:-/tmp}/$NAME
RUN=/run/$NAME/run # unix sockets: not on the 9p share
SIZE=${DISK_FAIL_SIZE:-64M}
CFG=$SCRATCH/r0.toml
CALLS=$SCRATCH/calls.txt
rm -rf "$SCRATCH" "$RUN" "$OUT"
mkdir -p "$SCRATCH" "$RUN" "$OUT"
info "binaries from $REP_BIN; kernel $(uname -r); $(nproc) cpus"

# The handler: its environment to a file (whole, before the call line), then
# one line per call.
cat >"$SCRATCH/record.sh" <<'EOF'
#!/bin/sh
env | sort >"$0.$1.$REP_NODE.env.tmp" && mv "$0.$1.$REP_NODE.env.tmp" "$0.$1.$REP_NODE.env"
echo "$1 $REP_NODE $DRBD_RESOURCE $DRBD_PEER $DRBD_MINOR" >>"$(dirname "$0")/calls.txt"
EOF
chmod +x "$SCRATCH/record.sh"
: >"$CALLS"

write_cfg() { # ON-IO-ERROR
  cat >"$CFG" <<EOF
[resource]
name = "r0"
protocol = "C"
[net]
secret = "$NAME"
[sync]
rate = "0"
[disk]
on-io-error = "$1"
[handlers]
local-io-error = "$SCRATCH/record.sh local-io-error"
[[node]]
name = "alpha"
address = "127.0.0.1:17808"
disk = "/dev/mapper/rep-alpha"
meta-disk = "internal"
device = 0
[[node]]
name = "beta"
address = "127.0.0.1:17809"
disk = "/dev/mapper/rep-beta"
meta-disk = "internal"
device = 1
EOF
}

rc() { "$REP_BIN/repctl" --config "$CFG" --run-dir "$RUN" --node "$@"; }
st() { rc "$1" status --json 2>/dev/null | jq -r "$2" 2>/dev/null; }

BG_PIDS=()
finish() {
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  dm_linear rep-alpha 2>/dev/null # a failed disk would hold up the stop
  rc alpha down >/dev/null 2>&1
  rc beta down >/dev/null 2>&1
  cp -f "$RUN"/*.log "$CALLS" "$SCRATCH"/*.env "$OUT"/ 2>/dev/null
  dm_remove rep-alpha
  dm_remove rep-beta
  dmesg >"$OUT/dmesg.txt" 2>&1
  verdict
}
is_blk() { [ -b "$1" ]; }
pair() { [ "$(st "$1" '.disk + "/" + .peer_disk')" = "$2" ]; }
# One repctl call per poll (each costs seconds in a loaded TCG guest): the
# Primary's view has the peer's disk state too.
synced() { pair alpha UpToDate/UpToDate; }
connected() { [ "$(st alpha .connection)" = Connected ]; }
called() { grep -qx "$1" "$CALLS"; }
# The local-io error in alpha's status: present, and whether it ended.
io_error() { st alpha '.errors[] | select(.kind == "local-io") | .ended'; }
# events_watch FILE: alpha's event stream, in the background, once it has
# printed the current state (so the changes that follow are `change` lines).
events_watch() {
  rc alpha events --now >"$1" 2>&1 &
  BG_PIDS+=($!)
  wait_for 30 grep -qx "exists -" "$1" || fail "repctl events printed no state in 30 s: $(head -n 3 "$1")"
}
# fio_until_error LOG: random 4 KiB writes on /dev/ublkb0 for up to 60 s;
# fio stops at the first error. Runs in the background; sets FIO_PID.
fio_until_error() {
  fio --name=w --filename=/dev/ublkb0 --allow_file_create=0 --direct=1 --ioengine=libaio \
    --rw=randwrite --bs=4k --iodepth=8 --size=16M --time_based --runtime=60 \
    --output="$1" >/dev/null 2>&1 &
  FIO_PID=$!
}
# up_primary: both nodes up; on a fresh pair the initial sync is skipped.
up_pair() {
  for n in alpha beta; do
    rc "$n" up >"$OUT/up-$n.txt" 2>&1 || die "up $n: $(tail -n 5 "$OUT/up-$n.txt")"
  done
  wait_for 60 connected || die "not Connected within 60 s: $(rc alpha status 2>&1 | head -n 5)"
}

# ---------------------------------------------------------------- disks and bring-up
for n in alpha beta; do
  dm_disk "rep-$n" "$SCRATCH/$n.img" "$SIZE" 2>"$OUT/dm-$n.txt" || die "dm_disk rep-$n: $(cat "$OUT/dm-$n.txt")"
done
info "alpha's disk: $(dm_table rep-alpha)"
write_cfg call-local-io-error
for n in alpha beta; do
  rc "$n" create-md >"$OUT/create-md-$n.txt" 2>&1 || die "create-md $n: $(tail -n 3 "$OUT/create-md-$n.txt")"
done
up_pair
rc alpha new-current-uuid --clear-bitmap >"$OUT/ncu.txt" 2>&1 || die "new-current-uuid --clear-bitmap: $(cat "$OUT/ncu.txt")"
wait_for 30 synced || die "no UpToDate/UpToDate after new-current-uuid --clear-bitmap: $(rc alpha status 2>&1 | head -n 5)"
rc alpha primary >"$OUT/primary.txt" 2>&1 || die "primary alpha: $(cat "$OUT/primary.txt")"
wait_for 20 is_blk /dev/ublkb0 || die "/dev/ublkb0 did not appear on alpha (Primary)"
pass "on dm disks: alpha Primary, UpToDate/UpToDate without an initial sync, /dev/ublkb0 present"
events_watch "$OUT/events-1.txt"

# ---------------------------------------------------------------- 1. call-local-io-error
fio_until_error "$OUT/fio-1.txt"
sleep 4
kill -0 "$FIO_PID" 2>/dev/null || die "fio on a healthy disk stopped early: $(tail -n 5 "$OUT/fio-1.txt")"
data_sectors=$(($(st alpha .data_bytes) / 512))
[ "$data_sectors" -gt 0 ] || die "no data_bytes in alpha's status"
dm_bad_blocks rep-alpha 0 "$data_sectors" || die "cannot switch alpha's data region to dm-error"
info "alpha's data region fails now: $(dm_table rep-alpha)"
if wait_for 60 eval '! kill -0 "$FIO_PID"'; then
  fio_rc=0
  wait "$FIO_PID" || fio_rc=$?
  if [ "$fio_rc" != 0 ] && grep -qi "input/output error" "$OUT/fio-1.txt"; then
    pass "call-local-io-error: fio's write fails with the disk's error (exit $fio_rc: $(grep -im1 "input/output error" "$OUT/fio-1.txt"))"
  else
    fail "call-local-io-error: fio ended with exit $fio_rc and no I/O error: $(tail -n 5 "$OUT/fio-1.txt" | tr '\n' ' ')"
  fi
else
  kill "$FIO_PID" 2>/dev/null
  fail "call-local-io-error: fio kept writing for 60 s on a failed disk"
fi
if wait_for 20 called "local-io-error alpha r0 beta 0"; then
  pass "the local-io-error handler ran on alpha (DRBD_RESOURCE=r0 DRBD_PEER=beta DRBD_MINOR=0)"
else
  fail "no local-io-error handler call on alpha: $(cat "$CALLS")"
fi
env_file=$SCRATCH/record.sh.local-io-error.alpha.env
for want in DRBD_RESOURCE=r0 DRBD_PEER=beta DRBD_MINOR=0 DRBD_BACKING_DEV=/dev/mapper/rep-alpha \
  REP_HANDLER=local-io-error REP_NODE=alpha "DRBD_CONF=$CFG"; do
  grep -qx "$want" "$env_file" 2>/dev/null || fail "handler environment: no $want in $env_file"
done
pass "the handler's environment names the resource, the peer, the minor and the failed backing disk"
sleep 2
[ "$(grep -c "^local-io-error alpha" "$CALLS")" = 1 ] || fail "local-io-error ran $(grep -c "^local-io-error alpha" "$CALLS") times for one episode"
[ "$(io_error)" = false ] && pass "status: a local-io error, not ended, while the disk fails" ||
  fail "status: local-io error $(io_error): $(st alpha .errors)"
if st alpha '.handlers[] | select(.name == "local-io-error") | .exit' | grep -qx 0; then
  pass "status: the local-io-error handler's run, exit 0"
else
  fail "status: no local-io-error handler run: $(st alpha .handlers)"
fi
grep -q "^create error name:r0 error:local-io" "$OUT/events-1.txt" &&
  pass "events: $(grep -m1 "^create error name:r0 error:local-io" "$OUT/events-1.txt")" ||
  fail "events: no 'create error ... error:local-io' line: $(tail -n 5 "$OUT/events-1.txt" | tr '\n' ' ')"
grep -q "^call handler name:r0 conn-name:beta exit:0 handler:local-io-error" "$OUT/events-1.txt" &&
  pass "events: call handler ... handler:local-io-error" ||
  fail "events: no 'call handler ... handler:local-io-error' line: $(tail -n 5 "$OUT/events-1.txt" | tr '\n' ' ')"
[ "$(st alpha .role)" = Primary ] || fail "alpha is no longer Primary after the I/O error: $(st alpha .role)"

# The disk heals: a write succeeds again and the error is reported ended.
dm_linear rep-alpha || die "cannot switch alpha's disk back to linear"
if dd if=/dev/urandom of=/dev/ublkb0 bs=4k count=16 oflag=direct conv=nocreat,fsync status=none 2>"$OUT/dd-healed.txt"; then
  pass "healed disk: a write on /dev/ublkb0 succeeds again"
else
  fail "healed disk: write fails: $(cat "$OUT/dd-healed.txt")"
fi
if wait_for 10 eval '[ "$(io_error)" != false ]'; then
  pass "status: the local-io error ended once a local write succeeded ($(io_error))"
else
  fail "status: the local-io error did not end: $(st alpha .errors)"
fi
grep -q "error:local-io.*ended:yes\|^destroy error name:r0 error:local-io" "$OUT/events-1.txt" ||
  fail "events: the error's end is not in the stream"

# ---------------------------------------------------------------- 2. pass-on
# on-io-error cannot change live (repctl adjust refuses it): restart alpha.
rc alpha secondary >"$OUT/secondary.txt" 2>&1 || die "secondary alpha: $(cat "$OUT/secondary.txt")"
rc alpha down >"$OUT/down-alpha.txt" 2>&1 || die "down alpha: $(cat "$OUT/down-alpha.txt")"
write_cfg pass-on
rc alpha up >"$OUT/up-alpha-2.txt" 2>&1 || die "up alpha (pass-on): $(tail -n 5 "$OUT/up-alpha-2.txt")"
wait_for 60 connected || die "alpha did not reconnect: $(rc alpha status 2>&1 | head -n 5)"
wait_for 120 synced || die "no UpToDate/UpToDate after alpha's restart: $(rc alpha status 2>&1 | head -n 5)"
rc alpha primary >"$OUT/primary-2.txt" 2>&1 || die "primary alpha (pass-on): $(cat "$OUT/primary-2.txt")"
wait_for 20 is_blk /dev/ublkb0 || die "/dev/ublkb0 did not come back on alpha"
events_watch "$OUT/events-2.txt"
calls_before=$(grep -c "^local-io-error alpha" "$CALLS")
# Block 100 (sectors 800-807) goes bad.
dm_bad_blocks rep-alpha 800 8 || die "cannot give alpha's disk a bad block (pass-on)"
if dd if=/dev/urandom of=/dev/ublkb0 bs=4k count=1 seek=100 oflag=direct conv=nocreat status=none 2>"$OUT/dd-pass-on.txt"; then
  fail "pass-on: a write to the failed disk returned success"
elif grep -qi "input/output error" "$OUT/dd-pass-on.txt"; then
  pass "pass-on: the write to a bad block fails to the application: $(head -n 1 "$OUT/dd-pass-on.txt")"
else
  fail "pass-on: the write failed, but not with EIO: $(cat "$OUT/dd-pass-on.txt")"
fi
wait_for 10 eval '[ "$(io_error)" = false ]' && pass "pass-on: status shows the local-io error" ||
  fail "pass-on: no local-io error in status: $(st alpha .errors)"
wait_for 10 grep -q "^create error name:r0 error:local-io" "$OUT/events-2.txt" &&
  pass "pass-on: events: the local-io error" || fail "pass-on: no local-io error event"
sleep 3
[ "$(grep -c "^local-io-error alpha" "$CALLS")" = "$calls_before" ] &&
  pass "pass-on: the local-io-error handler did not run" ||
  fail "pass-on: the local-io-error handler ran: $(cat "$CALLS")"
dm_linear rep-alpha || die "cannot switch alpha's disk back to linear (pass-on)"

# ---------------------------------------------------------------- 3. the copies agree again
# A write's range that failed locally is out of sync; the next resync (here:
# a reconnect) copies it, then verify compares every block.
rc alpha disconnect >"$OUT/disconnect.txt" 2>&1 || fail "disconnect alpha: $(cat "$OUT/disconnect.txt")"
rc alpha connect >"$OUT/connect.txt" 2>&1 || fail "connect alpha: $(cat "$OUT/connect.txt")"
wait_for 120 synced || fail "no UpToDate/UpToDate after the reconnect: $(rc alpha status 2>&1 | head -n 5)"
if rc alpha verify >"$OUT/verify.txt" 2>&1; then
  pass "repctl verify after the failures: $(head -n 1 "$OUT/verify.txt")"
else
  fail "repctl verify: $(head -n 3 "$OUT/verify.txt" | tr '\n' ' ')"
fi
timeout 20 udevadm settle 2>/dev/null
rc alpha secondary >/dev/null 2>&1
finish
