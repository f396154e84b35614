# Shared by the VM scenario scripts (sourced after `set -u`): PASS/FAIL/INFO
# lines stamped with the seconds since the start, and the checks every
# scenario makes before it begins. A script that calls `die` defines `finish`.

T0=$SECONDS
FAILS=0
pass() { echo "PASS: $* [$((SECONDS - T0)) s]"; }
fail() {
  echo "FAIL: $* [$((SECONDS - T0)) s]"
  FAILS=$((FAILS + 1))
}
info() { echo "INFO: $* [$((SECONDS - T0)) s]"; }
die() {
  fail "$*"
  finish
}

# need_bins NAME...: each program is in $REP_BIN (default: the release build
# in /work/target-ublk, else its debug build).
need_bins() {
  if [ -z "${REP_BIN:-}" ]; then
    if [ -x /work/target-ublk/release/repd ]; then REP_BIN=/work/target-ublk/release; else REP_BIN=/work/target-ublk/debug; fi
  fi
  local b
  for b in "$@"; do
    [ -x "$REP_BIN/$b" ] || {
      echo "FAIL: no $b in $REP_BIN (build it on the host first)"
      exit 1
    }
  done
}

# need_ublk: ublk_drv is loaded (only the VM's kernel has it).
need_ublk() {
  [ -c /dev/ublk-control ] || modprobe ublk_drv || true
  [ -c /dev/ublk-control ] || {
    echo "FAIL: no /dev/ublk-control: run this inside the VM (scripts/vm-run.sh)"
    exit 1
  }
}

# verdict: the RESULT line (and the tail of every log in $OUT on failure),
# then exit 0 or 1; the last step of a scenario's `finish`.
verdict() {
  if [ "$FAILS" = 0 ]; then
    echo "RESULT: PASS ($((SECONDS - T0)) s); logs in $OUT"
    exit 0
  fi
  echo "RESULT: FAIL ($FAILS failed; $((SECONDS - T0)) s); logs in $OUT"
  for f in "$OUT"/*.log; do
    [ -f "$f" ] || continue
    echo "--- last lines of $f"
    tail -n 25 "$f"
  done
  exit 1
}

# wait_for SECS CMD...: until CMD succeeds.
wait_for() {
  local secs=$1 end
  shift
  end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$end" ] && return 1
    sleep 0.2
  done
}

# ---------------------------------------------------------------- disks that fail
# A real block device whose behaviour a scenario switches while it is in use:
# a device-mapper device over a loop device over a file (guest tmpfs). Its
# table is swapped with `dmsetup load` + `resume` (the kernel's own way; I/O
# in flight finishes on the old table), so the program above it sees a disk
# that fails, heals or has a bad block, as real disks do, with EIO from the
# block layer and no fault injection inside repd.
#
#   dm_disk NAME FILE SIZE     FILE (sparse, SIZE) -> /dev/loopN -> /dev/mapper/NAME (linear)
#   dm_linear NAME             every sector maps to the file again (the disk healed)
#   dm_error NAME              every I/O fails with EIO (the disk died)
#   dm_bad_blocks NAME SECTOR COUNT
#                              linear, except COUNT 512-byte sectors from SECTOR
#                              that fail every read and write (a bad spot, or
#                              with SECTOR 0 a whole region)
#   dm_unreadable NAME SECTOR COUNT
#                              linear, except COUNT sectors from SECTOR that fail
#                              every read but take writes (dm-flakey, always
#                              down, error_reads: a sector a rewrite repairs)
#   dm_replace NAME FILE       a new disk: NAME maps linearly onto a fresh
#                              zeroed FILE of the same size (the old loop goes)
#   dm_table NAME              the live table, for logs
#   dm_remove NAME             the dm device and its loop device go
# Each returns non-zero (after saying why on stderr) when dmsetup fails.
declare -gA DM_LOOP=()
declare -gA DM_SECTORS=()
dm_disk() {
  local name=$1 file=$2 size=$3 loop sectors
  modprobe dm_mod 2>/dev/null
  modprobe loop 2>/dev/null
  truncate -s "$size" "$file" || return 1
  # Direct I/O on the loop device: no second page cache between the dm
  # device and the file, so what was written is what the file holds.
  loop=$(losetup -f --show --direct-io=on "$file") || return 1
  sectors=$(blockdev --getsz "$loop") || return 1
  DM_LOOP[$name]=$loop
  DM_SECTORS[$name]=$sectors
  dmsetup create "$name" --table "0 $sectors linear $loop 0" || return 1
  wait_for 10 test -b "/dev/mapper/$name" || {
    echo "dm_disk: /dev/mapper/$name did not appear" >&2
    return 1
  }
}
dm_load() { # NAME TABLE-LINES
  printf '%s\n' "$2" | dmsetup load "$1" && dmsetup resume "$1"
}
dm_linear() {
  dm_load "$1" "0 ${DM_SECTORS[$1]} linear ${DM_LOOP[$1]} 0"
}
dm_error() {
  dm_load "$1" "0 ${DM_SECTORS[$1]} error"
}
dm_bad_blocks() {
  local name=$1 at=$2 count=$3 loop=${DM_LOOP[$1]} total=${DM_SECTORS[$1]} end table=
  end=$((at + count))
  [ "$end" -le "$total" ] || {
    echo "dm_bad_blocks: sectors $at+$count are beyond $name's $total" >&2
    return 1
  }
  [ "$at" -gt 0 ] && table="0 $at linear $loop 0"$'\n'
  table+="$at $count error"
  [ "$end" -lt "$total" ] && table+=$'\n'"$end $((total - end)) linear $loop $end"
  dm_load "$name" "$table"
}
dm_unreadable() {
  local name=$1 at=$2 count=$3 loop=${DM_LOOP[$1]} total=${DM_SECTORS[$1]} end table=
  end=$((at + count))
  [ "$at" -gt 0 ] && [ "$end" -lt "$total" ] || {
    echo "dm_unreadable: sectors $at+$count must lie inside $name's 1..$total" >&2
    return 1
  }
  # flakey: up 0 s, down 1 s, i.e. always down; error_reads fails the reads
  # only (the kernel's flakey has had it since 6.6).
  dm_load "$name" "0 $at linear $loop 0
$at $count flakey $loop $at 0 1 1 error_reads
$end $((total - end)) linear $loop $end"
}
dm_replace() {
  local name=$1 file=$2 old=${DM_LOOP[$1]} loop
  truncate -s "$((DM_SECTORS[$1] * 512))" "$file" || return 1
  loop=$(losetup -f --show --direct-io=on "$file") || return 1
  DM_LOOP[$name]=$loop
  dm_linear "$name" || return 1
  # The block device's page cache still holds the old disk's blocks: a
  # buffered read (create-md's check for existing metadata) would see them.
  blockdev --flushbufs "/dev/mapper/$name" || return 1
  losetup -d "$old"
}
dm_table() { dmsetup table "$1" 2>&1 | tr '\n' ';'; }
dm_remove() {
  dmsetup remove --retry "$1" 2>/dev/null
  [ -n "${DM_LOOP[$1]:-}" ] && losetup -d "${DM_LOOP[$1]}" 2>/dev/null
  unset "DM_LOOP[$1]" "DM_SECTORS[$1]"
}
