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

# ---------------------------------------------------------------- two nodes in one guest
# The setup of the scenarios that run resource r0 on alpha and beta in the
# same guest, each node on an image file in the guest's tmpfs:
#
#   pair_dirs NAME [DIR...]    SCRATCH (images, r0.toml as CFG), OUT (logs, on
#                              the share), RUN (unix sockets, not on 9p) of the
#                              scenario NAME, emptied; DIR... made as well
#   pair_config SECRET PORT [NBD_PORT]
#                              CFG: alpha on 127.0.0.1:PORT (device 0), beta
#                              on PORT+1 (device 1), sync rate 0; with
#                              NBD_PORT, NBD exports on it and on NBD_PORT+1
#   rc NODE ARGS...            repctl for NODE
#   st NODE JQ                 a field of NODE's `status --json`
#   synced                     both nodes UpToDate/UpToDate
#   pair_create_up SIZE        SIZE images, create-md and up on both nodes
#   pair_finish                umount $MNT, down both, logs and dmesg to OUT,
#                              then verdict (a scenario's `finish`)
pair_dirs() {
  SCRATCH=${VM_SCRATCH:-/run/vm-scratch}/$1
  OUT=${VM_WORK:-/tmp}/$1
  RUN=/run/$1/run
  CFG=$SCRATCH/r0.toml
  shift
  rm -rf "$SCRATCH" "$RUN" "$OUT"
  mkdir -p "$SCRATCH" "$RUN" "$OUT" "$@"
  info "binaries from $REP_BIN; kernel $(uname -r); $(nproc) cpus"
}
pair_config() {
  local secret=$1 port=$2 nbd=${3:-} n=0 name
  printf '[resource]\nname = "r0"\nprotocol = "C"\n[net]\nsecret = "%s"\n[sync]\nrate = "0"\n' "$secret" >"$CFG"
  for name in alpha beta; do
    cat >>"$CFG" <<EOT
[[node]]
name = "$name"
address = "127.0.0.1:$((port + n))"
disk = "$SCRATCH/$name.img"
meta-disk = "internal"
device = $n
EOT
    [ -n "$nbd" ] && echo "nbd = \"127.0.0.1:$((nbd + n))\"" >>"$CFG"
    n=$((n + 1))
  done
}
rc() { "$REP_BIN/repctl" --config "$CFG" --run-dir "$RUN" --node "$@"; }
st() { rc "$1" status --json 2>/dev/null | jq -r "$2" 2>/dev/null; }
synced() {
  [ "$(st alpha '.disk + "/" + .peer_disk')" = "UpToDate/UpToDate" ] &&
    [ "$(st beta '.disk + "/" + .peer_disk')" = "UpToDate/UpToDate" ]
}
pair_create_up() {
  local n
  for n in alpha beta; do
    truncate -s "$1" "$SCRATCH/$n.img"
    rc "$n" create-md >"$OUT/create-md-$n.txt" 2>&1 || die "create-md $n: $(tail -n 3 "$OUT/create-md-$n.txt")"
  done
  for n in alpha beta; do
    rc "$n" up >"$OUT/up-$n.txt" 2>&1 || die "up $n: $(tail -n 5 "$OUT/up-$n.txt")"
  done
}
pair_finish() {
  mountpoint -q "$MNT" && umount "$MNT"
  rc alpha down >/dev/null 2>&1
  rc beta down >/dev/null 2>&1
  cp -f "$RUN"/*.log "$OUT"/ 2>/dev/null
  dmesg >"$OUT/dmesg.txt" 2>&1
  verdict
}
