#!/usr/bin/env bash
# ublk smoke test: the replicated device as /dev/ublkbN, both nodes in one guest.
# Runs INSIDE the VM (the host kernel has no ublk_drv), as root:
#
#   bash scripts/vm-run.sh -- bash vm-tests/scenarios/ublk-smoke.sh
#
# It builds nothing: it runs the host-built repd and repctl from $REP_BIN
# (default: /work/target-ublk/release if repd is there, else .../debug).
#
# What it checks (PASS/FAIL lines on stdout; exit 1 if any FAIL):
#   1. two nodes (alpha: device 0, beta: device 1) on 127.0.0.1, 256 MiB images;
#      create-md, up, `primary --force` on alpha, UpToDate/UpToDate;
#   2. /dev/ublkb0 exists on alpha (Primary), /dev/ublkb1 does not (Secondary);
#   3. mkfs.ext4 /dev/ublkb0, mount, write files, sync; `repctl secondary` is
#      refused while it is mounted; umount; `repctl secondary` on alpha: the
#      device goes away;
#   4. `repctl primary` on beta: /dev/ublkb1 appears, the files are there with
#      the same checksums, e2fsck -fn is clean;
#   5. back to alpha: fio randwrite 4k iodepth 32 --verify=crc32c on /dev/ublkb0
#      (UBLK_SMOKE_FIO=0 skips it);
#   6. user recovery: fio verify again (128M), kill -9 of alpha's repd in the
#      middle, `repctl up` on alpha and nothing else (as systemd's
#      Restart=on-failure would): the restarted repd finds /dev/ublkb0 held by
#      the kernel, resyncs its activity log from beta and resumes as Primary
#      by itself (`resume-after-crash = "held-device"`, the default); no
#      `repctl primary` is run. fio must finish without error
#      (UBLK_SMOKE_RECOVERY=0 skips it).
#
# Environment: VM_WORK (shared with the host; logs are copied to
# $VM_WORK/ublk-smoke), VM_SCRATCH (guest tmpfs for the images), REP_BIN,
# UBLK_SMOKE_FIO, UBLK_SMOKE_RECOVERY, UBLK_SMOKE_SIZE (image size, default 256M).
set -u

. "$(dirname "$0")/lib.sh"
need_bins repd repctl
need_ublk

MNT=/run/x
SIZE=${UBLK_SMOKE_SIZE:-256M}
pair_dirs ublk-smoke "$MNT"
pair_config ublk-smoke 17788 20809

# ublk zero copy for reads (opt-in; used where the kernel has it, 6.16+):
# the repd that repctl starts inherits this.
export REP_ZERO_COPY=1
finish() { pair_finish; }
is_blk() { [ -b "$1" ]; }
no_blk() { [ ! -e "$1" ]; }

# ---------------------------------------------------------------- 1. bring up
pair_create_up "$SIZE"
pass "create-md and up on both nodes"
rc alpha primary --force >"$OUT/primary-alpha.txt" 2>&1 || die "primary --force on alpha: $(cat "$OUT/primary-alpha.txt")"
pass "alpha is Primary (--force)"
if wait_for 600 synced; then pass "UpToDate/UpToDate"; else die "no UpToDate/UpToDate within 600 s: $(rc alpha status 2>&1 | head -n 5)"; fi

# ---------------------------------------------------------------- 2. devices follow the role
if wait_for 20 is_blk /dev/ublkb0; then
  pass "/dev/ublkb0 exists on alpha (Primary): $(blockdev --getsize64 /dev/ublkb0) bytes, lbs $(blockdev --getss /dev/ublkb0), pbs $(blockdev --getpbsz /dev/ublkb0)"
else
  die "/dev/ublkb0 did not appear within 20 s"
fi
sleep 1
if [ -e /dev/ublkb1 ]; then fail "/dev/ublkb1 exists but beta is Secondary"; else pass "/dev/ublkb1 does not exist (beta Secondary)"; fi
q=/sys/block/ublkb0/queue
info "queue: write_cache=$(cat $q/write_cache) fua=$(cat $q/fua 2>/dev/null) max_sectors_kb=$(cat $q/max_sectors_kb) discard_granularity=$(cat $q/discard_granularity) discard_max_bytes=$(cat $q/discard_max_bytes) write_zeroes_max_bytes=$(cat $q/write_zeroes_max_bytes) nr_hw_queues=$(ls /sys/block/ublkb0/mq | wc -l)"

# ---------------------------------------------------------------- 3. a filesystem on alpha
t=$SECONDS
mkfs.ext4 -q -F /dev/ublkb0 >"$OUT/mkfs.txt" 2>&1 || die "mkfs.ext4 /dev/ublkb0: $(cat "$OUT/mkfs.txt")"
pass "mkfs.ext4 /dev/ublkb0 ($((SECONDS - t)) s)"
mount /dev/ublkb0 "$MNT" || die "mount /dev/ublkb0"
t=$SECONDS
mkdir -p "$MNT/d/e"
for i in 1 2 3 4 5 6; do
  dd if=/dev/urandom of="$MNT/f$i" bs=1M count=$((i * 3)) status=none || fail "write f$i"
done
for i in $(seq 1 200); do echo "small file $i $RANDOM" >"$MNT/d/e/s$i"; done
sync
(cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$SCRATCH/sums"
pass "wrote $(wc -l <"$SCRATCH/sums") files ($(du -sm "$MNT" | cut -f1) MiB) and synced ($((SECONDS - t)) s)"
if out=$(rc alpha secondary 2>&1); then
  fail "secondary was accepted while /dev/ublkb0 is mounted"
else
  case "$out" in
  *"held open"*) pass "secondary refused while mounted: $(echo "$out" | grep -m1 -i 'held open')" ;;
  *) fail "secondary refused while mounted, but not saying so: $out" ;;
  esac
fi
umount "$MNT" || die "umount"
udevadm settle 2>/dev/null
demoted=0
for _ in 1 2 3 4 5 6 7 8 9 10; do
  if out=$(rc alpha secondary 2>&1); then demoted=1; break; fi
  info "secondary refused: $(echo "$out" | head -n 1); retrying"
  sleep 1
done
[ "$demoted" = 1 ] || die "repctl secondary on alpha: $out"
if wait_for 20 no_blk /dev/ublkb0; then pass "alpha Secondary: /dev/ublkb0 is gone"; else fail "/dev/ublkb0 still exists 20 s after secondary"; fi

# ---------------------------------------------------------------- 4. beta takes over
rc beta primary >"$OUT/primary-beta.txt" 2>&1 || die "primary on beta: $(cat "$OUT/primary-beta.txt")"
if wait_for 20 is_blk /dev/ublkb1; then pass "beta Primary: /dev/ublkb1 appeared"; else die "/dev/ublkb1 did not appear"; fi
mount /dev/ublkb1 "$MNT" || die "mount /dev/ublkb1"
if (cd "$MNT" && sha256sum --quiet -c "$SCRATCH/sums") >"$OUT/sha-check.txt" 2>&1; then
  pass "all $(wc -l <"$SCRATCH/sums") files on beta have the same checksums"
else
  fail "checksums differ on beta: $(head -n 5 "$OUT/sha-check.txt")"
fi
umount "$MNT" || die "umount beta"
if e2fsck -fn /dev/ublkb1 >"$OUT/e2fsck.txt" 2>&1; then pass "e2fsck -fn /dev/ublkb1 clean"; else fail "e2fsck -fn: $(tail -n 5 "$OUT/e2fsck.txt")"; fi
udevadm settle 2>/dev/null
rc beta secondary >"$OUT/secondary-beta.txt" 2>&1 || die "secondary on beta: $(cat "$OUT/secondary-beta.txt")"
wait_for 20 no_blk /dev/ublkb1 || fail "/dev/ublkb1 still exists after secondary"
rc alpha primary >"$OUT/primary-alpha2.txt" 2>&1 || die "primary on alpha again: $(cat "$OUT/primary-alpha2.txt")"
wait_for 20 is_blk /dev/ublkb0 || die "/dev/ublkb0 did not come back"
pass "back to alpha Primary"

# ---------------------------------------------------------------- 5. fio verify
FIO=(fio --name=ublk --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=32
  --size=64M --verify=crc32c --filename=/dev/ublkb0 --allow_file_create=0 --verify_state_save=0
  --output-format=terse --terse-version=3)
if [ "${UBLK_SMOKE_FIO:-1}" = 1 ]; then
  t=$SECONDS
  if "${FIO[@]}" >"$OUT/fio.txt" 2>&1; then
    # terse v3: field 8 = read IOPS (the verify pass), 49 = write IOPS
    pass "fio randwrite 4k qd32 64M verify=crc32c: ok ($((SECONDS - t)) s; write $(awk -F';' '/^3;/ {print $49}' "$OUT/fio.txt") IOPS, verify read $(awk -F';' '/^3;/ {print $8}' "$OUT/fio.txt") IOPS)"
  else
    fail "fio verify: $(tail -n 5 "$OUT/fio.txt")"
  fi
fi

# ---------------------------------------------------------------- 5b. reads, zero copy or not
# Which read path alpha's device took (ublk zero copy needs 6.16+), then what
# /dev/ublkb0 reads (direct 1M, direct 4k, buffered) must be alpha's backing
# file byte for byte (internal metadata: the data starts at offset 0).
zc=$(grep -o "ublk zero copy o[nf]f*" "$RUN/r0.alpha.log" | head -n 1)
pass "read path: ${zc:-no zero-copy line in the log of alpha} (kernel $(uname -r))"
t=$SECONDS
rd_ok=1
for how in "bs=1M count=64 iflag=direct" "bs=4k count=4096 iflag=direct" "bs=64k count=512"; do
  # shellcheck disable=SC2086 # $how is dd's operands
  if ! cmp <(dd if=/dev/ublkb0 $how status=none) <(dd if="$SCRATCH/alpha.img" $how iflag=direct status=none) >"$OUT/cmp.txt" 2>&1; then
    rd_ok=0
    fail "reads of /dev/ublkb0 ($how) differ from alpha's disk: $(head -n 2 "$OUT/cmp.txt")"
  fi
done
[ "$rd_ok" = 1 ] && pass "reads of /dev/ublkb0 (1M and 4k direct, 64k buffered) match alpha's disk ($((SECONDS - t)) s)"
if [ "$zc" = "ublk zero copy on" ]; then
  if grep -q "zero-copy read fell back" "$RUN/r0.alpha.log"; then
    fail "zero-copy reads fell back to copies: $(grep -m1 "zero-copy read fell back" "$RUN/r0.alpha.log")"
  else
    pass "no zero-copy read fell back to a copy"
  fi
fi
# The ublk frontend times its own stages (no NBD client ran here).
lat=$(rc alpha status --latency --json 2>/dev/null)
fo() { echo "$lat" | jq -r --arg k "$1" --arg s "$2" '[.stages[] | select(.kind == $k and .stage == $s) | .count] | add // 0'; }
if [ "$(fo read frontend_out)" -gt 0 ] && [ "$(fo write frontend_out)" -gt 0 ] && [ "$(fo read frontend_in)" -gt 0 ]; then
  pass "ublk frontend stages timed: read frontend_in $(fo read frontend_in), read frontend_out $(fo read frontend_out), write frontend_out $(fo write frontend_out)"
else
  fail "no ublk frontend stages in repctl status --latency: $(echo "$lat" | head -c 300)"
fi
rc alpha status --latency >"$OUT/latency.txt" 2>&1

# ---------------------------------------------------------------- 6. kill -9 and user recovery
if [ "${UBLK_SMOKE_RECOVERY:-1}" = 1 ]; then
  t=$SECONDS
  "${FIO[@]/--size=64M/--size=128M}" >"$OUT/fio-kill.txt" 2>&1 &
  fio_pid=$!
  sleep 4
  pid=$(st alpha .pid)
  info "kill -9 of alpha's repd (pid $pid) with fio running"
  kill -9 "$pid"
  sleep 1
  cp -f "$RUN/r0.alpha.log" "$OUT/alpha-before-kill.log" 2>/dev/null
  if [ -b /dev/ublkb0 ]; then pass "/dev/ublkb0 survives the kill"; else fail "/dev/ublkb0 vanished with repd"; fi
  rc alpha up >"$OUT/up-alpha-again.txt" 2>&1 || fail "repctl up alpha after the kill: $(tail -n 5 "$OUT/up-alpha-again.txt")"
  info "repd restarted; no repctl primary: alpha must resume by itself"
  is_primary() { [ "$(st alpha .role)" = Primary ]; }
  if wait_for 600 is_primary; then
    pass "alpha resumed as Primary by itself after the restart ($(st alpha .resume))"
  else
    fail "alpha did not resume as Primary by itself within 600 s: $(st alpha .resume); $(rc alpha status 2>&1 | head -n 5)"
  fi
  if grep -q "resumed as Primary after the crash" "$RUN/r0.alpha.log"; then
    pass "alpha's log says it resumed as Primary after the crash"
  else
    fail "alpha's log does not say it resumed as Primary"
  fi
  # Issue 16 item 10: while the left-over device waited, libublk logged
  # "ctrl: device 0 flags 0 created" at INFO once a second, forever.
  if grep -q "ctrl: device .* created\|ctrl/async: device .* created" "$RUN/r0.alpha.log"; then
    fail "libublk's control lines in alpha's log: $(grep -c 'ctrl.*: device .* created' "$RUN/r0.alpha.log") of them"
  else
    pass "alpha's log has no libublk control lines (restart and left-over device included)"
  fi
  fio_rc=0
  waited=0
  while kill -0 "$fio_pid" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
    if [ "$waited" -ge 900 ]; then
      fail "fio still running 900 s after the restart"
      kill -9 "$fio_pid"
      break
    fi
  done
  wait "$fio_pid" || fio_rc=$?
  if [ "$fio_rc" = 0 ]; then
    pass "fio verify survived kill -9 + restart (user recovery; $((SECONDS - t)) s)"
  else
    fail "fio after kill -9 + restart: exit $fio_rc: $(tail -n 5 "$OUT/fio-kill.txt")"
  fi
fi

finish
