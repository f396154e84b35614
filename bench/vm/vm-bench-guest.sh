#!/usr/bin/env bash
# The guest side of `vm-bench` (bench/src/bin/vm-bench/): runs INSIDE the VM,
# as root, and measures five block devices one after the other in this boot:
#
#   ours        /dev/ublkb0 of two repd (alpha Primary, beta Secondary) on
#               127.0.0.1, protocol C, Connected UpToDate/UpToDate
#   rublk-loop  rublk's loop target (O_DIRECT on its file), same queue count,
#               depth and request size as ours
#   ours-b      the same as ours with the repd/repctl of REP_BIN_B, on
#               /dev/ublkb3 (beta /dev/ublkb4): two builds in one boot
#   ours-standalone  /dev/ublkb2 of one repd, Primary, disconnected (no peer):
#               the ublk frontend and engine alone, to tell their cost from
#               the replication's
#   kloop       the kernel loop device, losetup --direct-io=on
#   drbd        in-kernel DRBD 8.4 (modprobe drbd), protocol C, two minors
#               connected over 127.0.0.1, each on a direct-io loop device
#   drbd-integrity  the same with `data-integrity-alg crc32c` (minors 2 and 3):
#               every data block is checksummed on the wire, as repd's frame
#               CRC32C does; the crc32c driver the kernel's crypto API picks
#               for it is recorded (crypto-crc32c.txt, from /proc/crypto)
#
# All are set up first; then each workload runs on each target in turn.
# Every backing file is VMB_SIZE bytes on the guest tmpfs ($VM_SCRATCH) and
# fully written before anything is measured (non-zero data; beta and DRBD's
# second minor included). fio: --direct=1
# --ioengine=libaio, one job, 4k random write QD32, 1M sequential write QD4,
# 4k random write QD1 (latency) and 4k random read QD32,
# --time_based --runtime=VMB_RUNTIME --ramp_time=VMB_RAMP each. With
# VMB_ROUNDS=N the whole set runs N times, each round starting the order one
# target later, so that no target is always measured first or last.
#
# Results: $VM_WORK/vm-bench/<target>.<workload>.r<round>.json (fio JSON), and
# <target>.error when a target could not be set up (the others still run);
# beside each, what bounds the run: .cpu-before/.cpu-after (CPU time of the
# guest and of the target's threads, the device's I/O count) and for ours
# .latency.json (repd's per-stage breakdown); per round the floors
# floor-local.randwrite-4k-qd1.r<round>.json and floor-rtt.r<round>.json;
# with VMB_PERF=1 perf.<target>.comm.txt/.top.txt (see "bounds" below).
# Environment: REP_BIN (repd, repctl), REP_BIN_B (for ours-b), VM_WORK, VM_SCRATCH, VMB_SIZE (256M),
# VMB_RUNTIME (10), VMB_RAMP (2), VMB_ROUNDS (1),
# VMB_TARGETS ("ours ours-standalone rublk-loop kloop drbd drbd-integrity"),
# VMB_TCP_RTT (bench's tcp-rtt, for the floors), VMB_PERF (1: profile).
set -u

OUT=${VM_WORK:?}/vm-bench
SCR=${VM_SCRATCH:-/run/vm-scratch}/vm-bench
RUN=/run/vm-bench/run
SIZE=${VMB_SIZE:-256M}
RUNTIME=${VMB_RUNTIME:-10}
RAMP=${VMB_RAMP:-2}
ROUNDS=${VMB_ROUNDS:-1}
TARGETS=${VMB_TARGETS:-ours ours-standalone rublk-loop kloop drbd drbd-integrity}
DRBDSETUP=/lib/drbd/drbdsetup-84
mkdir -p "$OUT" "$SCR" "$RUN"
T0=$SECONDS
say() { echo "vm-bench-guest: [$((SECONDS - T0)) s] $*"; }
# The loop driver is a module: /dev/loop-control appears when it is loaded.
modprobe loop 2>/dev/null
NQ=$(nproc)
[ "$NQ" -gt 4 ] && NQ=4

bytes() { numfmt --from=iec "$1"; }
SIZE_B=$(bytes "$SIZE")
fill() { # file: fully written, non-zero
  # Two processes in all (fork+exec and /dev/urandom are slow under TCG):
  # a random line of text, repeated.
  rm -f "$1"
  yes "$(head -c 3000 /dev/urandom | base64 -w0)" | head -c "$SIZE_B" >"$1" && sync "$1"
}

WORKLOADS="randwrite-4k-qd32 write-1m-qd4 randwrite-4k-qd1 randread-4k-qd32"
fio_run() { # target device workload round
  local rw bs qd
  case "$3" in
  randwrite-4k-qd32) rw=randwrite bs=4k qd=32 ;;
  write-1m-qd4) rw=write bs=1M qd=4 ;;
  randwrite-4k-qd1) rw=randwrite bs=4k qd=1 ;;
  randread-4k-qd32) rw=randread bs=4k qd=32 ;;
  esac
  fio --name="$3" --filename="$2" --allow_file_create=0 --direct=1 --ioengine=libaio \
    --rw=$rw --bs=$bs --iodepth=$qd --numjobs=1 --time_based --runtime="$RUNTIME" \
    --ramp_time="$RAMP" --randrepeat=0 --output-format=json --output="$OUT/$1.$3.r$4.json" \
    >"$OUT/$1.$3.stderr" 2>&1
}
# ------------------------------------------------------------------ bounds
# What bounds each run, read by bench/src/bin/vm-bench/bounds.rs:
# <target>.<workload>.r<round>.cpu-before/-after: /proc/stat's cpu line, the
# device's /sys/block/X/stat (its I/O count), and the /proc stat line of
# each thread of the target (repd's processes and threads: PIDS; DRBD's
# kernel threads by name: KTHREADS), taken RAMP seconds into the fio run
# and after it; <target>.<workload>.r<round>.latency.json: `repctl status
# --latency --json` of ours' Primary, reset at the same moment as the first
# snapshot (so both cover the measured part of the run, not the ramp).
declare -A PIDS KTHREADS LATCTL
cpu_snap() { # target device
  local p f line
  head -n 1 /proc/stat
  echo "disk $(cat "/sys/block/$(basename "$(readlink -f "$2")")/stat")"
  for p in ${PIDS[$1]:-}; do # NAME:PID
    read -r line <"/proc/${p#*:}/stat" && echo "proc ${p%%:*} $line"
    for f in /proc/"${p#*:}"/task/*/stat; do read -r line <"$f" && echo "task ${p%%:*} $line"; done
  done
  if [ -n "${KTHREADS[$1]:-}" ]; then
    for f in /proc/[0-9]*/stat; do
      read -r line <"$f" 2>/dev/null && [[ $line =~ \((${KTHREADS[$1]})\) ]] && echo "task kernel $line"
    done
  fi
}
measured_run() { # target device workload round
  local t=$1 dev=$2 w=$3 r=$4 base="$OUT/$1.$3.r$4" snap rc
  (
    sleep "$RAMP"
    # shellcheck disable=SC2086 # a command line of paths without blanks
    [ -n "${LATCTL[$t]:-}" ] && ${LATCTL[$t]} status --latency --reset >/dev/null 2>&1
    cpu_snap "$t" "$dev" >"$base.cpu-before"
  ) &
  snap=$!
  fio_run "$t" "$dev" "$w" "$r"
  rc=$?
  wait "$snap"
  cpu_snap "$t" "$dev" >"$base.cpu-after"
  # shellcheck disable=SC2086
  [ -n "${LATCTL[$t]:-}" ] && ${LATCTL[$t]} status --latency --json >"$base.latency.json" 2>"$base.latency.err"
  return $rc
}
# The floors of a replicated 4 KiB write in this guest (round R): the same
# fio QD1 job on a file of the same tmpfs the backing files are on (the
# local write alone), and tcp-rtt's native round trip over 127.0.0.1 (4 KiB
# out, 32 B back, TCP_NODELAY, as a Data frame and its WriteAck).
floors() { # round
  local r=$1 srv port
  [ -f "$SCR/floor.img" ] || fill "$SCR/floor.img"
  say "floors: fio randwrite-4k-qd1 on the tmpfs file, tcp-rtt on 127.0.0.1 (round $r)"
  fio_run floor-local "$SCR/floor.img" randwrite-4k-qd1 "$r" ||
    echo "round $r: fio on $SCR/floor.img failed: $(tail -n 3 "$OUT/floor-local.randwrite-4k-qd1.stderr")" >>"$OUT/floor-local.error"
  if [ ! -x "${VMB_TCP_RTT:-}" ]; then
    echo "no tcp-rtt (cargo build --release -p bench)" >"$OUT/floor-rtt.error"
    return
  fi
  "$VMB_TCP_RTT" --listen 127.0.0.1:0 >"$OUT/floor-rtt.listen.txt" 2>&1 &
  srv=$!
  wait_for 20 grep -q "listening on" "$OUT/floor-rtt.listen.txt"
  port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$OUT/floor-rtt.listen.txt")
  "$VMB_TCP_RTT" --connect "127.0.0.1:${port:-0}" --count 10000 --warmup 500 >"$OUT/floor-rtt.r$r.json" 2>>"$OUT/floor-rtt.stderr" ||
    echo "round $r: tcp-rtt --connect failed: $(tail -n 2 "$OUT/floor-rtt.stderr")" >>"$OUT/floor-rtt.error"
  kill "$srv" 2>/dev/null
  wait "$srv" 2>/dev/null
}
# With VMB_PERF=1, after the rounds: one more 4k QD32 write run per target
# under `perf record -a -g` (cpu-clock: TCG has no hardware counters), not
# counted in the tables; perf.<target>.comm.txt and .top.txt are the
# reports (share per thread name; top symbols per thread).
perf_run() { # target device
  # perf mmaps its output: not on the 9p share of $OUT, on the guest tmpfs.
  local data="$SCR/perf.$1.data" rec
  say "$1: fio randwrite-4k-qd32 on $2 under perf record -a -g (not counted)"
  perf record -a -g -F 499 -e cpu-clock -o "$data" -- sleep $((RAMP + RUNTIME)) >"$OUT/perf.$1.record.log" 2>&1 &
  rec=$!
  fio_run "$1" "$2" randwrite-4k-qd32 perf
  wait "$rec"
  perf report -i "$data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -n 20 >"$OUT/perf.$1.comm.txt"
  perf report -i "$data" --no-children --sort comm,dso,sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -n 60 >"$OUT/perf.$1.top.txt"
  rm -f "$data" "$data.old"
}
failed() { # target message
  say "$1: ERROR: $2"
  echo "$2" >>"$OUT/$1.error"
}
wait_for() { # secs cmd...
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$end" ] && return 1
    sleep 0.2
  done
}

# ------------------------------------------------------------------ ours
# A pair of repd, protocol C: bench_pair TARGET BIN RESOURCE PORT DEVICE
# (beta gets PORT+1 and DEVICE+1). "ours-b" is the same with the repd of
# REP_BIN_B, so two builds are compared inside one boot.
bench_pair() {
  local t=$1 bin=$2 res=$3 port=$4 dev=$5
  local cfg=$SCR/$res.toml
  cat >"$cfg" <<EOF
[resource]
name = "$res"
protocol = "C"
[net]
secret = "vm-bench"
[sync]
rate = "0"
[[node]]
name = "alpha"
address = "127.0.0.1:$port"
disk = "$SCR/$t.alpha.img"
meta-disk = "internal"
device = $dev
[[node]]
name = "beta"
address = "127.0.0.1:$((port + 1))"
disk = "$SCR/$t.beta.img"
meta-disk = "internal"
device = $((dev + 1))
EOF
  rc() { "$bin/repctl" --config "$cfg" --run-dir "$RUN" --node "$@"; }
  # repctl up gives repd 20 s to answer; on a loaded host the emulated repd
  # can take longer to start (it is still starting, not failed): wait for
  # its answer a while longer rather than lose the target.
  up_node() {
    rc "$1" up && return 0
    echo "vm-bench-guest: waiting for $1's repd to answer"
    wait_for 120 rc "$1" status
  }
  st() { rc "$1" status --json 2>/dev/null | jq -r "$2" 2>/dev/null; }
  synced() {
    [ "$(st alpha '.disk + "/" + .peer_disk + "/" + .connection')" = "UpToDate/UpToDate/Connected" ]
  }
  fill "$SCR/$t.alpha.img" && fill "$SCR/$t.beta.img" || { failed $t "cannot write the images"; return; }
  # --force: the images are filled on purpose, and create-md refuses to put
  # internal metadata over data without it.
  for n in alpha beta; do
    rc $n create-md --force >"$OUT/$t.create-md-$n.txt" 2>&1 || { failed $t "create-md $n: $(tail -n 2 "$OUT/$t.create-md-$n.txt")"; return; }
  done
  for n in alpha beta; do
    up_node $n >"$OUT/$t.up-$n.txt" 2>&1 || { failed $t "up $n: $(tail -n 3 "$OUT/$t.up-$n.txt")"; return; }
  done
  rc alpha primary --force >"$OUT/$t.primary.txt" 2>&1 || { failed $t "primary --force: $(cat "$OUT/$t.primary.txt")"; return; }
  say "$t: initial full sync of $SIZE"
  if ! wait_for 900 synced; then
    failed $t "no UpToDate/UpToDate within 900 s"
  elif ! wait_for 30 test -b /dev/ublkb$dev; then
    failed $t "/dev/ublkb$dev did not appear"
  else
    cat /sys/block/ublkb$dev/queue/{nr_requests,max_sectors_kb} >"$OUT/$t.queue.txt" 2>&1
    DEV[$t]=/dev/ublkb$dev
    PIDS[$t]="alpha:$(st alpha .pid) beta:$(st beta .pid)"
    LATCTL[$t]="$bin/repctl --config $cfg --run-dir $RUN --node alpha"
  fi
}
down_pair() {
  local t=$1 bin=$2 res=$3 n
  local cfg=$SCR/$res.toml
  "$bin/repctl" --config "$cfg" --run-dir "$RUN" --node alpha status >"$OUT/$t.status-alpha.txt" 2>&1
  for n in alpha beta; do "$bin/repctl" --config "$cfg" --run-dir "$RUN" --node $n down >/dev/null 2>&1; done
  cp -f "$RUN/$res".*.log "$OUT/" 2>/dev/null
  rm -f "$SCR/$t.alpha.img" "$SCR/$t.beta.img"
}

# ------------------------------------------------------------------ ours, StandAlone
# One repd, Primary, disconnected: the ublk frontend and the engine without
# the peer (`primary --force` marks the whole device out of sync, so writes
# flip no bitmap bit).
bench_ours_sa() {
  local cfg=$SCR/r1.toml
  cat >"$cfg" <<EOF
[resource]
name = "r1"
protocol = "C"
[net]
secret = "vm-bench"
[[node]]
name = "solo"
address = "127.0.0.1:17890"
disk = "$SCR/solo.img"
meta-disk = "internal"
device = 2
[[node]]
name = "ghost"
address = "127.0.0.1:17891"
disk = "$SCR/ghost.img"
meta-disk = "internal"
device = 3
EOF
  rc1() { "$REP_BIN/repctl" --config "$cfg" --run-dir "$RUN" --node solo "$@"; }
  fill "$SCR/solo.img" || { failed ours-standalone "cannot write the image"; return; }
  rc1 create-md --force >"$OUT/ours-standalone.create-md.txt" 2>&1 &&
    rc1 up >"$OUT/ours-standalone.up.txt" 2>&1 &&
    rc1 disconnect >"$OUT/ours-standalone.disconnect.txt" 2>&1 &&
    rc1 primary --force >"$OUT/ours-standalone.primary.txt" 2>&1 ||
    { failed ours-standalone "setup: $(tail -n 3 "$OUT"/ours-standalone.*.txt | tr '\n' ' ')"; return; }
  if wait_for 30 test -b /dev/ublkb2; then
    DEV[ours-standalone]=/dev/ublkb2
    PIDS[ours-standalone]=solo:$(rc1 status --json 2>/dev/null | jq -r .pid 2>/dev/null)
    LATCTL[ours-standalone]="$REP_BIN/repctl --config $cfg --run-dir $RUN --node solo"
  else
    failed ours-standalone "/dev/ublkb2 did not appear"
  fi
}
down_ours_sa() {
  "$REP_BIN/repctl" --config "$SCR/r1.toml" --run-dir "$RUN" --node solo status >"$OUT/ours-standalone.status.txt" 2>&1
  "$REP_BIN/repctl" --config "$SCR/r1.toml" --run-dir "$RUN" --node solo down >/dev/null 2>&1
  cp -f "$RUN"/r1.*.log "$OUT/" 2>/dev/null
  rm -f "$SCR/solo.img"
}

# ------------------------------------------------------------------ rublk loop
bench_rublk() {
  local rublk id=7
  rublk=$(command -v rublk) || { failed rublk-loop "rublk is not installed (CARGO_TARGET_DIR=/work/target-rublk cargo install rublk)"; return; }
  fill "$SCR/rublk.img" || { failed rublk-loop "cannot write the image"; return; }
  if ! "$rublk" add loop -n $id -q "$NQ" -d 128 -b 1MiB -f "$SCR/rublk.img" >"$OUT/rublk-loop.add.txt" 2>&1; then
    failed rublk-loop "rublk add loop: $(tail -n 3 "$OUT/rublk-loop.add.txt")"
  elif ! wait_for 30 test -b /dev/ublkb$id; then
    failed rublk-loop "/dev/ublkb$id did not appear"
  else
    DEV[rublk-loop]=/dev/ublkb$id
  fi
}
down_rublk() {
  rublk del -n 7 >/dev/null 2>&1
  rm -f "$SCR/rublk.img"
}

# ------------------------------------------------------------------ kernel loop
bench_kloop() {
  local dev
  fill "$SCR/kloop.img" || { failed kloop "cannot write the image"; return; }
  if ! dev=$(losetup --direct-io=on -f --show "$SCR/kloop.img" 2>"$OUT/kloop.losetup.txt"); then
    failed kloop "losetup: $(cat "$OUT/kloop.losetup.txt"); $(ls /dev/loop* 2>&1 | head -n 3 | tr '\n' ' ')"
  else
    echo "$dev dio=$(cat /sys/block/"$(basename "$dev")"/loop/dio 2>/dev/null)" >"$OUT/kloop.dev.txt"
    DEV[kloop]=$dev
  fi
}
down_kloop() {
  [ -n "${DEV[kloop]:-}" ] && losetup -d "${DEV[kloop]}"
  rm -f "$SCR/kloop.img"
}

# ------------------------------------------------------------------ DRBD 8.4
drbd_up() { # target minor lower-device my-port peer-port [net options...]
  local t=$1 minor=$2 dev=$3 me=$4 peer=$5
  shift 5
  echo yes | drbdmeta --force "$minor" v08 "$dev" internal create-md >"$OUT/$t.create-md-$minor.txt" 2>&1 &&
    $DRBDSETUP new-resource "r$minor" >>"$OUT/$t.setup.txt" 2>&1 &&
    $DRBDSETUP new-minor "r$minor" "$minor" 0 >>"$OUT/$t.setup.txt" 2>&1 &&
    $DRBDSETUP attach "$minor" "$dev" "$dev" internal >>"$OUT/$t.setup.txt" 2>&1 &&
    $DRBDSETUP connect "r$minor" "ipv4:127.0.0.1:$me" "ipv4:127.0.0.1:$peer" --protocol=C "$@" >>"$OUT/$t.setup.txt" 2>&1
}
drbd_connected() { grep -q "^ *$1: cs:Connected" /proc/drbd && grep -q "^ *$2: cs:Connected" /proc/drbd; }
drbd_uptodate() { grep -q "^ *$1: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate" /proc/drbd; }
declare -A DRBD_LOOPS
# A DRBD pair on two minors: bench_drbd TARGET MINOR PORT [net options...]
# (the peer is minor MINOR+1 on PORT+1).
bench_drbd() {
  local t=$1 m=$2 port=$3 a b
  shift 3
  command -v drbdmeta >/dev/null && [ -x $DRBDSETUP ] || { failed $t "drbd-utils is not installed (drbdmeta, $DRBDSETUP)"; return; }
  modprobe drbd >"$OUT/$t.modprobe.txt" 2>&1 || { failed $t "modprobe drbd: $(cat "$OUT/$t.modprobe.txt")"; return; }
  head -n 1 /proc/drbd >"$OUT/drbd.version.txt"
  fill "$SCR/drbd$m.img" && fill "$SCR/drbd$((m + 1)).img" || { failed $t "cannot write the images"; return; }
  a=$(losetup --direct-io=on -f --show "$SCR/drbd$m.img") && b=$(losetup --direct-io=on -f --show "$SCR/drbd$((m + 1)).img") ||
    { failed $t "losetup failed"; return; }
  DRBD_LOOPS[$t]="$a $b"
  if ! drbd_up $t "$m" "$a" "$port" $((port + 1)) "$@" || ! drbd_up $t $((m + 1)) "$b" $((port + 1)) "$port" "$@"; then
    failed $t "setup: $(tail -n 5 "$OUT/$t.setup.txt" "$OUT"/$t.create-md-*.txt | tr '\n' ' ')"
  elif ! wait_for 60 drbd_connected "$m" $((m + 1)); then
    failed $t "the two minors did not connect: $(cat /proc/drbd | tr '\n' ' ')"
  else
    # Both sides were written in full by dd, and are blank to DRBD: skip the
    # initial sync as drbdadm new-current-uuid --clear-bitmap does.
    $DRBDSETUP new-current-uuid "$m" --clear-bitmap >>"$OUT/$t.setup.txt" 2>&1 &&
      $DRBDSETUP primary "$m" >>"$OUT/$t.setup.txt" 2>&1
    if ! wait_for 60 drbd_uptodate "$m"; then
      failed $t "minor $m is not Primary UpToDate/UpToDate: $(cat /proc/drbd | tr '\n' ' ')"
    else
      $DRBDSETUP show "r$m" >"$OUT/$t.show.txt" 2>&1
      DEV[$t]=/dev/drbd$m
      # DRBD's kernel threads of both minors' resources: drbd_w_ (worker),
      # drbd_r_ (receiver), drbd_a_ (ack sender), by /proc name.
      KTHREADS[$t]="drbd_[a-z]+_r($m|$((m + 1)))"
    fi
  fi
}
down_drbd() { # target minor
  local t=$1 m=$2
  [ -f /proc/drbd ] && cat /proc/drbd >"$OUT/$t.proc-after.txt"
  $DRBDSETUP down "r$m" >/dev/null 2>&1
  $DRBDSETUP down "r$((m + 1))" >/dev/null 2>&1
  # shellcheck disable=SC2086 # two device names
  [ -n "${DRBD_LOOPS[$t]:-}" ] && losetup -d ${DRBD_LOOPS[$t]} 2>/dev/null
  rm -f "$SCR/drbd$m.img" "$SCR/drbd$((m + 1)).img"
}
# The crc32c implementations the kernel's crypto API has, highest priority
# first: DRBD's data-integrity-alg takes the first (name, driver, module,
# priority of each).
crypto_crc32c() { # /proc/crypto
  awk -v RS= -v ORS='\n\n' '/(^|\n)name *: crc32c\n/' "$1" |
    awk -F' *: *' '$1 ~ /^(driver|module|priority)$/ { printf "%s=%s ", $1, $2 } /^$/ { print "" } END { print "" }' |
    sed '/^ *$/d' | sort -t= -k4 -rn
}

say "kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo); size $SIZE, runtime ${RUNTIME}s, ramp ${RAMP}s, $ROUNDS round(s); targets: $TARGETS"
{
  echo "kernel $(uname -r)"
  echo "cpus $(nproc)"
  # The CRC instructions the guest CPU offers (both emulated under TCG):
  # the kernel's crc32c library uses them when present.
  echo "cpu crc flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'sse4_2|pclmulqdq' | tr '\n' ' ')"
  echo "fio $(fio --version)"
  echo "size $SIZE"
  echo "runtime $RUNTIME"
  echo "ramp $RAMP"
  echo "rounds $ROUNDS"
} >"$OUT/meta.txt"
# Set every target up first, then run each workload on every target in turn:
# a drift of the (shared, emulated) machine during the run then hits all
# targets alike instead of the ones measured last.
declare -A DEV
for t in $TARGETS; do
  say "$t: setting up"
  case "$t" in
  ours) bench_pair ours "$REP_BIN" r0 17888 0 ;;
  ours-b) bench_pair ours-b "${REP_BIN_B:?ours-b needs REP_BIN_B}" r3 17892 3 ;;
  ours-standalone) bench_ours_sa ;;
  rublk-loop) bench_rublk ;;
  kloop) bench_kloop ;;
  drbd) bench_drbd drbd 0 7790 ;;
  drbd-integrity) bench_drbd drbd-integrity 2 7792 --data-integrity-alg=crc32c ;;
  *) failed "$t" "unknown target $t" ;;
  esac
done
free -m >"$OUT/free.txt"
crypto_crc32c /proc/crypto >"$OUT/crypto-crc32c.txt"
read -r -a ORDER <<<"$TARGETS"
for ((r = 1; r <= ROUNDS; r++)); do
  for w in $WORKLOADS; do
    [ "$w" = randwrite-4k-qd1 ] && floors "$r"
    for ((i = 0; i < ${#ORDER[@]}; i++)); do
      t=${ORDER[$(((i + r - 1) % ${#ORDER[@]}))]}
      [ -n "${DEV[$t]:-}" ] || continue
      say "$t: fio $w on ${DEV[$t]} (round $r of $ROUNDS)"
      measured_run "$t" "${DEV[$t]}" "$w" "$r" || echo "fio $w on ${DEV[$t]} failed: $(tail -n 3 "$OUT/$t.$w.stderr")" >>"$OUT/$t.error"
    done
  done
done
rm -f "$SCR/floor.img"
if [ "${VMB_PERF:-0}" = 1 ]; then
  if command -v perf >/dev/null; then
    for t in $TARGETS; do
      [ -n "${DEV[$t]:-}" ] && perf_run "$t" "${DEV[$t]}"
    done
  else
    echo "no perf in the guest (the host's /usr: apt-get install linux-perf)" >"$OUT/perf.error"
  fi
fi
for t in $TARGETS; do
  case "$t" in
  ours) down_pair ours "$REP_BIN" r0 ;;
  ours-b) down_pair ours-b "$REP_BIN_B" r3 ;;
  ours-standalone) down_ours_sa ;;
  rublk-loop) down_rublk ;;
  kloop) down_kloop ;;
  drbd) down_drbd drbd 0 ;;
  drbd-integrity) down_drbd drbd-integrity 2 ;;
  esac
done
say "done"
