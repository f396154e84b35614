#!/usr/bin/env bash
# Online resize of /dev/ublkbN (issue 20), both nodes in one guest. Runs
# INSIDE the VM, as root:
#
#   bash scripts/vm-run.sh -- bash vm-tests/scenarios/online-resize.sh
#
# What it checks (PASS/FAIL lines on stdout; exit 1 if any FAIL):
#   1. two nodes on zeroed 96 MiB images, the initial sync skipped
#      (new-current-uuid --clear-bitmap), alpha Primary, ext4 on /dev/ublkb0,
#      mounted, files with checksums;
#   2. both images grown to 160 MiB (truncate), `repctl resize` on beta (the
#      Secondary) while the filesystem stays mounted: both nodes hold the new
#      size;
#   3. on a kernel with UBLK_U_CMD_UPDATE_SIZE (6.16 and later): /dev/ublkb0
#      grows while mounted and `resize2fs` grows the mounted ext4 online;
#      on an older kernel: alpha's log says the device must be re-created,
#      and after umount, `secondary`, `primary` /dev/ublkb0 has the new size,
#      `resize2fs` grows the ext4 (mounted again);
#   4. the files are intact, e2fsck of beta's copy after a switchover is clean.
#
# Environment: VM_WORK (logs are copied to $VM_WORK/online-resize),
# VM_SCRATCH (guest tmpfs for the images), REP_BIN.
set -u

. "$(dirname "$0")/lib.sh"
need_bins repd repctl
need_ublk

MNT=/run/resize-mnt
pair_dirs online-resize "$MNT"
pair_config online-resize 17798

finish() { pair_finish; }
connected() { [ "$(st "$1" .connection)" = "Connected" ]; }
dev_size() { blockdev --getsize64 /dev/ublkb0 2>/dev/null; }
size_is() { [ "$(dev_size)" = "$1" ]; }
sums() { (cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }

# ---------------------------------------------------------------- 1. bring up
pair_create_up 96M
wait_for 60 connected alpha || die "not connected within 60 s"
rc alpha new-current-uuid --clear-bitmap >"$OUT/ncu.txt" 2>&1 || die "new-current-uuid: $(cat "$OUT/ncu.txt")"
wait_for 60 synced || die "not UpToDate/UpToDate"
rc alpha primary >"$OUT/primary.txt" 2>&1 || die "primary: $(cat "$OUT/primary.txt")"
wait_for 20 test -b /dev/ublkb0 || die "/dev/ublkb0 did not appear"
OLD=$(dev_size)
pass "two nodes up, alpha Primary, /dev/ublkb0 is $OLD bytes"
mkfs.ext4 -q -F /dev/ublkb0 >"$OUT/mkfs.txt" 2>&1 || die "mkfs.ext4: $(cat "$OUT/mkfs.txt")"
mount /dev/ublkb0 "$MNT" || die "mount"
for i in 1 2 3; do dd if=/dev/urandom of="$MNT/f$i" bs=1M count=$((i * 4)) status=none; done
sync
sums >"$SCRATCH/sums"
BLOCKS0=$(df -k --output=size "$MNT" | tail -n 1)
pass "ext4 mounted with $(wc -l <"$SCRATCH/sums") files, $BLOCKS0 KiB"

# ---------------------------------------------------------------- 2. resize
for n in alpha beta; do truncate -s 160M "$SCRATCH/$n.img"; done
if out=$(rc beta resize 2>&1); then
  echo "$out" >"$OUT/resize.txt"
  pass "repctl resize on beta: $(head -n 1 <<<"$out")"
else
  die "repctl resize: $out"
fi
NEW=$(st alpha .data_bytes)
[ "$NEW" = "$(st beta .data_bytes)" ] && [ "$NEW" -gt "$OLD" ] &&
  pass "both nodes hold $NEW bytes" || fail "sizes: alpha $NEW, beta $(st beta .data_bytes), old $OLD"
wait_for 120 synced || fail "the new region did not resync within 120 s"

# ---------------------------------------------------------------- 3. the device
if wait_for 5 size_is "$NEW"; then
  pass "/dev/ublkb0 grew to $NEW bytes while mounted (UPDATE_SIZE)"
  resize2fs /dev/ublkb0 >"$OUT/resize2fs.txt" 2>&1 || fail "resize2fs online: $(cat "$OUT/resize2fs.txt")"
else
  if grep -q "must be re-created" "$RUN"/r0.alpha.log; then
    pass "old kernel: alpha's log says /dev/ublkb0 must be re-created (size still $(dev_size))"
  else
    fail "/dev/ublkb0 kept $(dev_size) bytes and the log says nothing"
  fi
  umount "$MNT" || die "umount"
  rc alpha secondary >"$OUT/secondary.txt" 2>&1 || die "secondary: $(cat "$OUT/secondary.txt")"
  wait_for 20 test ! -e /dev/ublkb0 || die "/dev/ublkb0 did not go away"
  rc alpha primary >"$OUT/primary2.txt" 2>&1 || die "primary: $(cat "$OUT/primary2.txt")"
  if wait_for 20 size_is "$NEW"; then
    pass "re-created on demote/promote: /dev/ublkb0 is $NEW bytes"
  else
    die "/dev/ublkb0 is $(dev_size) bytes after demote/promote, not $NEW"
  fi
  mount /dev/ublkb0 "$MNT" || die "mount again"
  resize2fs /dev/ublkb0 >"$OUT/resize2fs.txt" 2>&1 || fail "resize2fs: $(cat "$OUT/resize2fs.txt")"
fi
BLOCKS1=$(df -k --output=size "$MNT" | tail -n 1)
if [ "$BLOCKS1" -gt "$BLOCKS0" ]; then pass "resize2fs grew the mounted ext4: $BLOCKS0 -> $BLOCKS1 KiB"; else fail "ext4 still $BLOCKS1 KiB"; fi

# ---------------------------------------------------------------- 4. the data
dd if=/dev/urandom of="$MNT/big" bs=1M count=40 status=none && sync && pass "40 MiB written into the grown filesystem" || fail "write into the grown filesystem"
sums | grep -v ' ./big$' | diff -q - "$SCRATCH/sums" >/dev/null && pass "the files are intact" || fail "checksums differ"
umount "$MNT"
rc alpha secondary >/dev/null 2>&1 || fail "secondary on alpha"
rc beta primary >"$OUT/primary-beta.txt" 2>&1 || fail "primary on beta: $(cat "$OUT/primary-beta.txt")"
if wait_for 20 test -b /dev/ublkb1; then
  e2fsck -fn /dev/ublkb1 >"$OUT/e2fsck.txt" 2>&1 && pass "e2fsck -fn of beta's grown copy is clean" || fail "e2fsck: $(tail -n 5 "$OUT/e2fsck.txt")"
else
  fail "/dev/ublkb1 did not appear on beta"
fi
finish
