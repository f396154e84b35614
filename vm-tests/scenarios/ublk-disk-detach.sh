#!/usr/bin/env bash
# Issue 20's Done-when for a failing disk under `on-io-error detach`, on real
# /dev/ublkbN, both nodes in one guest. Runs INSIDE the VM:
#
#   bash scripts/vm-run.sh -- bash vm-tests/scenarios/ublk-disk-detach.sh
#
# The setup is seed article 001's drbd.conf (the Xen storage backend, DRBD 0.7,
# `on-io-error detach`: ublk-target/tests/data/seeds/001-xen.drbd.conf) as
# `repctl import-drbd-conf` turns it into a resource file, with only what one
# guest needs changed first: the `;` the article misses after incon-degr-cmd
# (as tests/import_drbd.rs supplies it), the addresses (127.0.0.1), the disks
# (/dev/mapper/rep-alpha for xenamo4, rep-beta for xenamo5), xenamo5's minor
# (drbd1), and a shared secret (the article has none; rep requires one). Each
# disk is device-mapper over a loop device (lib.sh's dm_disk), so it fails for
# real: its table is swapped while repd uses it.
#
# a. Detach: xenamo4 (Primary) runs fio --verify on /dev/ublkb0; its whole disk
#    (data and metadata) goes dm-error in the middle: fio ends without an error
#    (the writes go to the peer, the verify reads come from it); status shows
#    Diskless/UpToDate, still Primary; `repctl events` printed the disk going
#    Diskless and the local-io-error handler's call, and the handler ran with
#    DRBD's environment. A second fio --verify runs wholly diskless. Then
#    `repctl secondary`, a fresh disk (a new zeroed file under the same dm
#    name), `repctl create-md`, `repctl attach`: a full resync from xenamo5,
#    then UpToDate/UpToDate and the data regions are byte-identical (cmp).
# b. Read repair, with xenamo4 restarted under on-io-error =
#    "call-local-io-error" (`detach` drops the disk on a read error too, as in
#    DRBD) and Primary again: a 4 KiB block written through /dev/ublkb0; its
#    content on
#    xenamo4's disk is then lost (overwritten under the dm device) and the
#    block becomes unreadable (dm-flakey error_reads: reads fail, writes
#    pass). A read of it on /dev/ublkb0 returns the right data without an
#    error (served by the peer), xenamo4 stays attached; once the table is
#    linear again, the block on xenamo4's disk holds the right data: repd
#    rewrote it. `repctl verify` finds the copies equal.
#
# PASS/FAIL lines on stdout; exit 1 if any FAIL. Environment: VM_WORK (logs in
# $VM_WORK/ublk-disk-detach), VM_SCRATCH, REP_BIN, DISK_FAIL_SIZE (each disk,
# default 64M).
set -u

. "$(dirname "$0")/lib.sh"
need_bins repd repctl
need_ublk

NAME=ublk-disk-detach
SCRATCH=${VM_SCRATCH:-/run/vm-scratch}/$NAME
OUT=${VM_WORK:-/tmp}/$NAME
RUN=/run/$NAME/run # unix sockets: not on the 9p share
SIZE=${DISK_FAIL_SIZE:-64M}
SEED=$(cd "$(dirname "$0")/../.." && pwd)/ublk-target/tests/data/seeds/001-xen.drbd.conf
CFG=$SCRATCH/etc/cluster.toml
CALLS=$SCRATCH/calls.txt
P=xenamo4 # the Primary ("alpha")
S=xenamo5 # the Secondary ("beta")
rm -rf "$SCRATCH" "$RUN" "$OUT"
mkdir -p "$SCRATCH" "$RUN" "$OUT"
info "binaries from $REP_BIN; kernel $(uname -r); $(nproc) cpus"

cat >"$SCRATCH/record.sh" <<'EOF'
#!/bin/sh
env | sort >"$0.$1.$REP_NODE.env.tmp" && mv "$0.$1.$REP_NODE.env.tmp" "$0.$1.$REP_NODE.env"
echo "$1 $REP_NODE $DRBD_RESOURCE $DRBD_PEER $DRBD_MINOR" >>"$(dirname "$0")/calls.txt"
EOF
chmod +x "$SCRATCH/record.sh"
: >"$CALLS"

rc() { "$REP_BIN/repctl" --config "$CFG" --run-dir "$RUN" --node "$@"; }
st() { rc "$1" status --json 2>/dev/null | jq -r "$2" 2>/dev/null; }

BG_PIDS=()
finish() {
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  dm_linear rep-alpha 2>/dev/null
  rc "$P" secondary >/dev/null 2>&1
  rc "$P" down >/dev/null 2>&1
  rc "$S" down >/dev/null 2>&1
  cp -f "$RUN"/*.log "$CALLS" "$SCRATCH"/*.env "$CFG" "$OUT"/ 2>/dev/null
  dm_remove rep-alpha
  dm_remove rep-beta
  dmesg >"$OUT/dmesg.txt" 2>&1
  verdict
}
is_blk() { [ -b "$1" ]; }
pair() { [ "$(st "$1" '.disk + "/" + .peer_disk')" = "$2" ]; }
# One repctl call per poll (each costs seconds in a loaded TCG guest): the
# Primary's view has the peer's disk state too.
synced() { pair "$P" UpToDate/UpToDate; }
connected() { [ "$(st "$P" .connection)" = Connected ]; }
called() { grep -qx "$1" "$CALLS"; }
# fio_verify LOG SIZE: random 4 KiB writes over SIZE of /dev/ublkb0, then
# every block read back and checked (crc32c); fio stops at the first error.
# Runs in the background; sets FIO_PID.
fio_verify() {
  fio --name=v --filename=/dev/ublkb0 --allow_file_create=0 --direct=1 --ioengine=libaio \
    --rw=randwrite --bs=4k --iodepth=8 --size="$2" --verify=crc32c --verify_fatal=1 \
    --output="$1" >/dev/null 2>&1 &
  FIO_PID=$!
}
# fio_ok LOG: fio (FIO_PID) ended with exit 0 and no error.
fio_ok() {
  local r=0
  wait_for 600 eval '! kill -0 "$FIO_PID"' || {
    kill "$FIO_PID" 2>/dev/null
    echo "still running after 600 s"
    return 1
  }
  wait "$FIO_PID" || r=$?
  [ "$r" = 0 ] && grep -q "err= 0" "$1" && ! grep -qi "verify.*fail\|bad magic\|crc32c.*wanted" "$1"
}
# block N FILE/DEVICE OUT: the 4 KiB block N of a device, read with O_DIRECT.
block() { dd if="$2" of="$3" bs=4k skip="$1" count=1 iflag=direct status=none 2>"$3.err"; }

# ---------------------------------------------------------------- the seed's setup
for n in alpha beta; do
  dm_disk "rep-$n" "$SCRATCH/$n.img" "$SIZE" 2>"$OUT/dm-$n.txt" || die "dm_disk rep-$n: $(cat "$OUT/dm-$n.txt")"
done
awk '
  /^ *on xenamo5/ { second = 1 }
  { sub("10\\.0\\.0\\.4:7788", "127.0.0.1:17818"); sub("10\\.0\\.0\\.5:7788", "127.0.0.1:17819") }
  /disk \/dev\/vg1\/cluster/ { sub("/dev/vg1/cluster", second ? "/dev/mapper/rep-beta" : "/dev/mapper/rep-alpha") }
  second && /device \/dev\/drbd0/ { sub("drbd0", "drbd1") }
  /^ *net \{\}/ { sub("net \\{\\}", "net { cram-hmac-alg sha1; shared-secret \"seed-001\"; }") }
  /halt -f"$/ { sub("halt -f\"$", "halt -f\";") }
  { print }
' "$SEED" >"$SCRATCH/drbd.conf"
"$REP_BIN/repctl" import-drbd-conf --out "$SCRATCH/etc" "$SCRATCH/drbd.conf" >"$OUT/import.txt" 2>&1 ||
  die "import-drbd-conf of seed 001: $(tail -n 5 "$OUT/import.txt")"
if grep -q '^on-io-error = "detach"' "$CFG"; then
  pass "seed 001 imported with on-io-error = \"detach\""
else
  fail "seed 001's on-io-error detach imported as: $(grep on-io-error "$CFG")"
fi
printf '\n[handlers]\nlocal-io-error = "%s local-io-error"\n' "$SCRATCH/record.sh" >>"$CFG"
rc "$P" dump >"$OUT/dump.txt" 2>&1 || die "repctl dump of the imported seed: $(tail -n 5 "$OUT/dump.txt")"
for n in "$P" "$S"; do
  rc "$n" create-md >"$OUT/create-md-$n.txt" 2>&1 || die "create-md $n: $(tail -n 3 "$OUT/create-md-$n.txt")"
  rc "$n" up >"$OUT/up-$n.txt" 2>&1 || die "up $n: $(tail -n 5 "$OUT/up-$n.txt")"
done
wait_for 60 connected || die "not Connected within 60 s: $(rc "$P" status 2>&1 | head -n 5)"
rc "$P" new-current-uuid --clear-bitmap >"$OUT/ncu.txt" 2>&1 || die "new-current-uuid --clear-bitmap: $(cat "$OUT/ncu.txt")"
wait_for 30 synced || die "no UpToDate/UpToDate: $(rc "$P" status 2>&1 | head -n 5)"
rc "$P" primary >"$OUT/primary.txt" 2>&1 || die "primary $P: $(cat "$OUT/primary.txt")"
wait_for 20 is_blk /dev/ublkb0 || die "/dev/ublkb0 did not appear on $P (Primary)"
pass "seed 001's on-io-error detach setup starts: $P Primary, UpToDate/UpToDate, /dev/ublkb0"
rc "$P" events --now >"$OUT/events.txt" 2>&1 &
BG_PIDS+=($!)
wait_for 30 grep -qx "exists -" "$OUT/events.txt" || fail "repctl events printed no state in 30 s"

# ---------------------------------------------------------------- a. the disk dies under fio --verify
fio_verify "$OUT/fio-1.txt" 16M
sleep 3
kill -0 "$FIO_PID" 2>/dev/null || die "fio ended before the disk failed: $(tail -n 5 "$OUT/fio-1.txt")"
dm_error rep-alpha || die "cannot switch $P's disk to dm-error"
info "$P's disk fails now (data and metadata): $(dm_table rep-alpha)"
if fio_ok "$OUT/fio-1.txt" >"$OUT/fio-1-wait.txt" 2>&1; then
  pass "fio --verify on /dev/ublkb0 ran through the disk failure without an error"
else
  fail "fio --verify across the disk failure: $(cat "$OUT/fio-1-wait.txt") $(grep -m2 -i "err\|verify" "$OUT/fio-1.txt" | tr '\n' ' ')"
fi
if wait_for 20 pair "$P" Diskless/UpToDate; then
  pass "status: Diskless/UpToDate on $P, role $(st "$P" .role)"
else
  fail "status after the failure: $(st "$P" '.disk + "/" + .peer_disk'), role $(st "$P" .role)"
fi
[ "$(st "$P" .role)" = Primary ] || fail "$P is no longer Primary once Diskless"
pair "$S" UpToDate/Diskless || fail "$S sees $(st "$S" '.disk + "/" + .peer_disk'), not UpToDate/Diskless"
grep -q "disk:Diskless" "$OUT/events.txt" &&
  pass "events: $(grep -m1 "disk:Diskless" "$OUT/events.txt")" ||
  fail "events: no line with disk:Diskless: $(tail -n 5 "$OUT/events.txt" | tr '\n' ' ')"
if wait_for 20 called "local-io-error $P cluster $S 0"; then
  pass "the local-io-error handler ran on $P"
else
  fail "no local-io-error handler call on $P: $(cat "$CALLS")"
fi
for want in DRBD_RESOURCE=cluster "DRBD_PEER=$S" DRBD_MINOR=0 DRBD_BACKING_DEV=/dev/mapper/rep-alpha REP_HANDLER=local-io-error; do
  grep -qx "$want" "$SCRATCH/record.sh.local-io-error.$P.env" 2>/dev/null || fail "handler environment: no $want"
done
wait_for 10 grep -q "^call handler name:cluster conn-name:$S exit:0 handler:local-io-error" "$OUT/events.txt" &&
  pass "events: call handler ... handler:local-io-error" ||
  fail "events: no 'call handler ... handler:local-io-error' line"

# Diskless from the start: every write to the peer only, every read from it.
fio_verify "$OUT/fio-2.txt" 4M
if fio_ok "$OUT/fio-2.txt" >"$OUT/fio-2-wait.txt" 2>&1; then
  pass "diskless Primary: fio --verify (writes and reads through the peer) without an error"
else
  fail "fio --verify on the diskless Primary: $(cat "$OUT/fio-2-wait.txt") $(grep -m2 -i "err\|verify" "$OUT/fio-2.txt" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- a. a fresh disk
# attach takes a Secondary (as drbdadm attach wants the disk back before the
# node serves from it again); the fresh disk goes under the same dm name.
rc "$P" secondary >"$OUT/secondary.txt" 2>&1 || die "secondary on the diskless $P: $(cat "$OUT/secondary.txt")"
dm_replace rep-alpha "$SCRATCH/alpha-new.img" || die "cannot put a fresh disk under rep-alpha"
rc "$P" create-md >"$OUT/create-md-new.txt" 2>&1 || die "create-md on the fresh disk: $(tail -n 3 "$OUT/create-md-new.txt")"
rc "$P" attach >"$OUT/attach.txt" 2>&1 || die "repctl attach: $(tail -n 3 "$OUT/attach.txt")"
info "attach: $(head -n 2 "$OUT/attach.txt" | tr '\n' ' ')"
if wait_for 300 synced; then
  pass "after attach of the fresh disk: UpToDate/UpToDate"
else
  die "no UpToDate/UpToDate within 300 s of attach: $(rc "$P" status 2>&1 | head -n 6)"
fi
data_bytes=$(st "$P" .data_bytes)
resynced=$(grep "resync starts" "$RUN/cluster.$S.log" | tail -n 1 | sed -n 's/.*bytes=\([0-9]*\).*/\1/p')
if [ -n "$resynced" ] && [ "$resynced" = "$data_bytes" ]; then
  pass "the fresh disk was resynced fully ($resynced bytes)"
else
  fail "the resync after attach moved ${resynced:-?} bytes, not all $data_bytes"
fi
if cmp -n "$data_bytes" /dev/mapper/rep-alpha /dev/mapper/rep-beta >"$OUT/cmp.txt" 2>&1; then
  pass "the data regions of both disks are byte-identical ($data_bytes bytes)"
else
  fail "the disks differ after the resync: $(cat "$OUT/cmp.txt")"
fi

# ---------------------------------------------------------------- b. a read error repaired
# Under `detach` any local error drops the disk (as in DRBD); a node keeps
# its disk and repairs the block under call-local-io-error (or pass-on).
# on-io-error does not change live (repctl adjust refuses it): restart xenamo4.
rc "$P" down >"$OUT/down-$P.txt" 2>&1 || die "down $P: $(cat "$OUT/down-$P.txt")"
sed -i 's/^on-io-error = "detach".*/on-io-error = "call-local-io-error"/' "$CFG"
rc "$P" up >"$OUT/up-$P-2.txt" 2>&1 || die "up $P (call-local-io-error): $(tail -n 5 "$OUT/up-$P-2.txt")"
wait_for 120 synced || die "no UpToDate/UpToDate after $P's restart: $(rc "$P" status 2>&1 | head -n 5)"
rc "$P" primary >"$OUT/primary-2.txt" 2>&1 || die "primary $P after attach: $(cat "$OUT/primary-2.txt")"
wait_for 20 is_blk /dev/ublkb0 || die "/dev/ublkb0 did not come back on $P"
calls_before=$(grep -c "^local-io-error $P" "$CALLS")
B=200 # the block; sectors 1600..1607
head -c 4096 /dev/urandom >"$SCRATCH/pattern"
dd if="$SCRATCH/pattern" of=/dev/ublkb0 bs=4k seek=$B count=1 oflag=direct conv=nocreat status=none ||
  die "cannot write block $B on /dev/ublkb0"
block $B /dev/mapper/rep-alpha "$SCRATCH/before" && cmp -s "$SCRATCH/pattern" "$SCRATCH/before" ||
  die "block $B on $P's disk does not hold what was written"
# The sector's content is lost (zeros under the dm device) and it fails reads.
dd if=/dev/zero of="$SCRATCH/alpha-new.img" bs=4k seek=$B count=1 conv=notrunc,fsync status=none ||
  die "cannot overwrite block $B of $P's backing file"
dm_unreadable rep-alpha $((B * 8)) 8 || die "cannot make block $B unreadable (dm-flakey error_reads)"
info "block $B of $P's disk unreadable: $(dm_table rep-alpha)"
block $B /dev/mapper/rep-alpha "$SCRATCH/direct" && fail "block $B of $P's disk is still readable"
if block $B /dev/ublkb0 "$SCRATCH/read" && cmp -s "$SCRATCH/pattern" "$SCRATCH/read"; then
  pass "a read of the bad block on /dev/ublkb0 returns the right data without an error"
else
  fail "read of the bad block: $(cat "$SCRATCH/read.err") $(cmp "$SCRATCH/pattern" "$SCRATCH/read" 2>&1)"
fi
sleep 2
pair "$P" UpToDate/UpToDate && pass "$P stays attached (UpToDate) after the read error" ||
  fail "$P after the read error: $(st "$P" '.disk + "/" + .peer_disk')"
[ "$(grep -c "^local-io-error $P" "$CALLS")" -gt "$calls_before" ] ||
  fail "the read error did not run the local-io-error handler"
dm_linear rep-alpha || die "cannot switch $P's disk back to linear"
if block $B /dev/mapper/rep-alpha "$SCRATCH/after" && cmp -s "$SCRATCH/pattern" "$SCRATCH/after"; then
  pass "block $B on $P's disk holds the right data again: repaired from the peer"
else
  fail "block $B on $P's disk was not repaired: $(cmp "$SCRATCH/pattern" "$SCRATCH/after" 2>&1)"
fi
if rc "$P" verify >"$OUT/verify.txt" 2>&1; then
  pass "repctl verify: $(head -n 1 "$OUT/verify.txt")"
else
  fail "repctl verify: $(head -n 3 "$OUT/verify.txt" | tr '\n' ' ')"
fi
finish
