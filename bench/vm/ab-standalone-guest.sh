#!/bin/bash
# A/B of two repd builds in one boot of the test VM: each build runs one
# StandAlone resource (Primary, disconnected: the ublk frontend and the
# engine, no peer) on its own image, and fio runs on the two devices in
# turn, AB AB..., so drift of the shared host hits both. Besides IOPS it
# prints the CPU time the whole repd process used per I/O (utime+stime from
# /proc/PID/stat over the fio run): under TCG that is emulated work, which
# the host's load changes far less than it changes IOPS.
#
#   bash scripts/vm-run.sh --mem 6G --cpus 2 --timeout 1800 -- \
#     bash bench/vm/ab-standalone-guest.sh DIR_A DIR_B [ROUNDS]
#
# DIR_A, DIR_B: folders with repd and repctl. AB_SIZE (256M), AB_RUNTIME (10).
set -u
A=$1 B=$2 ROUNDS=${3:-2}
SCR=${VM_SCRATCH:-/run/vm-scratch}/ab
RUN=/run/ab
SIZE=${AB_SIZE:-256M}
RUNTIME=${AB_RUNTIME:-10}
mkdir -p "$SCR" "$RUN"
T0=$SECONDS
say() { echo "ab: [$((SECONDS - T0)) s] $*"; }
SIZE_B=$(numfmt --from=iec "$SIZE")
fill() { yes "$(head -c 3000 /dev/urandom | base64 -w0)" | head -c "$SIZE_B" >"$1" && sync "$1"; }

setup() { # name bindir device port
  local cfg=$SCR/$1.toml
  cat >"$cfg" <<EOC
[resource]
name = "$1"
protocol = "C"
[net]
secret = "ab"
[[node]]
name = "solo"
address = "127.0.0.1:$4"
disk = "$SCR/$1.img"
meta-disk = "internal"
device = $3
[[node]]
name = "ghost"
address = "127.0.0.1:$(($4 + 1))"
disk = "$SCR/$1-ghost.img"
meta-disk = "internal"
device = $(($3 + 1))
EOC
  local rc="$2/repctl --config $cfg --run-dir $RUN/$1 --node solo"
  mkdir -p "$RUN/$1"
  # --force: the image is filled on purpose; create-md refuses internal metadata over data without it.
  fill "$SCR/$1.img" && $rc create-md --force >/dev/null && $rc up >/dev/null &&
    $rc disconnect >/dev/null && $rc primary --force >/dev/null || {
    say "$1: setup failed"
    exit 1
  }
  for _ in $(seq 150); do [ -b "/dev/ublkb$3" ] && break; sleep 0.2; done
  [ -b "/dev/ublkb$3" ] || { say "$1: /dev/ublkb$3 did not appear"; exit 1; }
}
pid_of() { # bindir
  pgrep -f "^$1/repd" | head -n 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

setup a "$A" 2 17900
setup b "$B" 4 17910
PA=$(pid_of "$A") PB=$(pid_of "$B")
[ -n "$PA" ] && [ -n "$PB" ] || { say "no repd pid: a=$PA b=$PB"; ps -eo pid,args | grep repd; exit 1; }
HZ=$(getconf CLK_TCK)
say "a=$A (pid $PA, /dev/ublkb2)  b=$B (pid $PB, /dev/ublkb4); $SIZE, ${RUNTIME}s per run, $ROUNDS rounds"

run() { # label dev pid rw bs qd
  local t0 t1 out ios
  t0=$(cpu_ticks "$3")
  out=$(fio --name=ab --filename="$2" --allow_file_create=0 --direct=1 --ioengine=libaio \
    --rw="$4" --bs="$5" --iodepth="$6" --numjobs=1 --time_based --runtime="$RUNTIME" \
    --randrepeat=0 --output-format=json 2>/dev/null)
  t1=$(cpu_ticks "$3")
  ios=$(jq '.jobs[0].write.total_ios' <<<"$out")
  iops=$(jq '.jobs[0].write.iops | floor' <<<"$out")
  echo "RESULT $1 $4-$5-qd$6 iops=$iops ios=$ios cpu_ms=$(((t1 - t0) * 1000 / HZ)) cpu_us_per_io=$(((t1 - t0) * 1000000 / HZ / (ios > 0 ? ios : 1)))"
}
for r in $(seq "$ROUNDS"); do
  for w in "randwrite 4k 32" "write 1M 4"; do
    set -- $w
    if [ $((r % 2)) = 1 ]; then order="a b"; else order="b a"; fi
    for x in $order; do
      if [ $x = a ]; then run a /dev/ublkb2 "$PA" "$@"; else run b /dev/ublkb4 "$PB" "$@"; fi
    done
  done
done
for x in a b; do
  d=$A
  [ $x = b ] && d=$B
  "$d/repctl" --config "$SCR/$x.toml" --run-dir "$RUN/$x" --node solo down >/dev/null 2>&1
done
say done
