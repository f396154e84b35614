#!/usr/bin/env bash
# HA scenario in the VM: the cluster agent moves a filesystem on /dev/ublkbN
# and a service IP between two nodes, by a planned switchover and by a
# failover after kill -9. Runs INSIDE the VM (the host kernel has no
# ublk_drv), as root:
#
#   bash scripts/vm-run.sh -- bash vm-tests/scenarios/ha-switchover.sh
#
# It builds nothing: repd, repctl and cluster-agent come from $REP_BIN.
#
# Two "machines": network namespaces ha-alpha and ha-beta joined by two veth
# pairs (link0: replication, NBD, heartbeat path 0 and the service IP;
# link1: heartbeat path 1). Each node's agent runs under `ip netns exec`,
# which gives it its own mount namespace, so each node has its own view of
# the mount point, as two machines would. The chain: device (alpha
# /dev/ublkb0, beta /dev/ublkb1) -> filesystem (ext4 on /run/ha-mnt) -> ip
# (10.97.0.100/24 on link0). keepalive 200 ms, deadtime $HA_DEADTIME_MS
# (default 4000: under QEMU TCG on a busy host heartbeats arrive up to 1.5 s
# late, and a 2000 ms deadtime flaps), no fence command.
#
# Checks (PASS/FAIL lines on stdout; exit 1 if any FAIL):
#   1. the agents settle: alpha (preferred) holds: ext4 mounted in alpha's
#      namespace, service IP on alpha;
#   2. files written on alpha, checksums recorded;
#   3. `cluster-agent switchover` on alpha: beta holds; mounted on beta
#      (/dev/ublkb1), not on alpha; the IP on beta, gone from alpha; every
#      checksum matches on beta; alpha's status says "switchover requested";
#   4. a file written on beta; switchover back (asked on beta): all files
#      intact on alpha;
#   5. kill -9 of alpha's repd and agent: within deadtime + 1 s of the kill,
#      beta has ext4 from /dev/ublkb1 mounted, the service IP up (bindable)
#      and a write fsynced there (issue 5's line; a watcher in beta's
#      namespaces, started ahead, takes the time); the times of the
#      promotion and of the chain started are printed too (from beta's
#      transition timestamps); then every file intact, IP on beta.
#
# Environment: VM_WORK (logs copied to $VM_WORK/ha-switchover), VM_SCRATCH
# (images), REP_BIN, HA_SIZE (image size, default 64M), HA_DEADTIME_MS.
set -u

. "$(dirname "$0")/lib.sh"
REP_BIN=${REP_BIN:?set REP_BIN to the directory with repd, repctl and cluster-agent}
need_bins repd repctl cluster-agent
need_ublk

SCRATCH=${VM_SCRATCH:-/run/vm-scratch}/ha-switchover
OUT=${VM_WORK:-/tmp}/ha-switchover
RUN=/run/ha-switchover/run
MNT=/run/ha-mnt
SIZE=${HA_SIZE:-64M}
CFG=$SCRATCH/r0.toml
SVC_IP=10.97.0.100
NODES=(alpha beta)
DEV=(/dev/ublkb0 /dev/ublkb1)
declare -A AGENT_PID=()
DEADTIME_MS=${HA_DEADTIME_MS:-4000}

ns() { echo "ha-$1"; }
idx() { [ "$1" = alpha ] && echo 0 || echo 1; }
repctl() { # repctl NODE ARGS...
  local n=$1
  shift
  ip netns exec "$(ns "$n")" "$REP_BIN/repctl" --config "$CFG" --node "$n" --run-dir "$RUN" "$@"
}
agent() { # agent NODE ARGS...   (talks to the agent's unix socket: no netns needed)
  local n=$1
  shift
  "$REP_BIN/cluster-agent" --config "$CFG" --node "$n" --run-dir "$RUN" "$@"
}
# JSON field by dotted path. jq when there is one: python3's start-up reads
# hundreds of files over the VM's 9p share, seconds each time under TCG.
if command -v jq >/dev/null; then
  jget() { jq -r ".$1 // \"None\""; }
else
  jget() { python3 -c "import json,sys
v=json.load(sys.stdin)
for k in sys.argv[1].split('.'):
    v = v.get(k) if isinstance(v, dict) else None
print(v)" "$1"; }
fi
agent_field() { agent "$1" status --json 2>/dev/null | jget "$2"; }
repd_field() { repctl "$1" status --json 2>/dev/null | jget "$2"; }
wait_until() { # wait_until SECONDS CMD...
  local secs=$1 i
  shift
  for ((i = 0; i < secs * 10; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}
holding() { [ "$(agent_field "$1" state)" = Holding ]; }
idle_with_peer_holding() { [ "$(agent_field "$1" state)" = Idle ] && [ "$(agent_field "$1" peer.state)" = Holding ]; }
# Run in node N's mount namespace (its agent's).
in_mnt() {
  local n=$1
  shift
  nsenter -t "${AGENT_PID[$n]}" -m -- "$@"
}
mounted_dev() { in_mnt "$1" findmnt -n -o SOURCE "$MNT" 2>/dev/null; }
has_ip() { ip -n "$(ns "$1")" -o addr show dev link0 | grep -q " $SVC_IP/24 "; }
synced() {
  local s
  s=$(repctl "$1" status --json 2>/dev/null) || return 1
  [ "$(echo "$s" | jget connection)/$(echo "$s" | jget disk)/$(echo "$s" | jget peer_disk)" = Connected/UpToDate/UpToDate ]
}
# The agent-clock time (ms) of the last transition to state $1 in the status on stdin.
last_transition_at() {
  if command -v jq >/dev/null; then
    jq -r --arg to "$1" '[.transitions[] | select(.to == $to)] | last | .at'
  else
    python3 -c 'import json,sys; print([t["at"] for t in json.load(sys.stdin)["transitions"] if t["to"] == sys.argv[1]][-1])' "$1"
  fi
}
# Where the agents run, their view of repd is cheaper than repctl's.
role() { agent_field "$1" local.role; }
check_files() { # check_files NODE
  in_mnt "$1" sh -c "cd '$MNT' && sha256sum --quiet -c '$SCRATCH/sums.txt'"
}
now_ms() { date +%s%3N; }

start_agent() {
  local n=$1
  ip netns exec "$(ns "$n")" env REP_LOG=info "$REP_BIN/cluster-agent" --config "$CFG" --node "$n" --run-dir "$RUN" \
    </dev/null >/dev/null 2>>"$OUT/agent-$n.log" &
  AGENT_PID[$n]=$!
  wait_until 20 agent "$n" status --json >/dev/null 2>&1 || fail "the agent of $n does not answer"
}

retry() { # retry TIMES CMD...: until it succeeds, a second apart
  local n=$1 i
  shift
  for ((i = 0; i < n; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}

HOLDER=
finish() {
  set +e
  for n in alpha beta; do
    agent "$n" status >"$OUT/status-$n.txt" 2>&1
    repctl "$n" status >>"$OUT/status-$n.txt" 2>&1
  done
  # Agents first: an agent's mount namespace, and the filesystem mounted
  # there, go away with it (its repd still serves the unmount).
  for n in beta alpha; do
    [ -n "${AGENT_PID[$n]:-}" ] && kill "${AGENT_PID[$n]}" 2>/dev/null && wait "${AGENT_PID[$n]}" 2>/dev/null
  done
  if [ -n "$HOLDER" ]; then
    # alpha was killed with its filesystem mounted, like a crashed machine;
    # the kernel holds that device's I/O for the next repd, and anything that
    # touches it (the harness's final sync) would wait forever. So alpha comes
    # back as a machine would: repd up (Secondary, resync), then Primary once
    # beta stepped down, which ends the recovery; then the stale mount goes.
    repctl alpha up >/dev/null 2>&1
    if wait_until 120 synced alpha; then
      pass "alpha came back after the kill -9: Secondary, resynced from beta"
    else
      fail "alpha did not resync after coming back"
    fi
    retry 30 repctl beta secondary || fail "cleanup: beta does not step down"
    retry 30 repctl alpha primary || fail "cleanup: alpha does not become Primary (its held device stays)"
    sleep 2
    kill "$HOLDER" 2>/dev/null
    wait "$HOLDER" 2>/dev/null
    retry 30 repctl alpha secondary || fail "cleanup: alpha does not step down"
  else
    repctl beta secondary >/dev/null 2>&1
    repctl alpha secondary >/dev/null 2>&1
  fi
  for n in beta alpha; do repctl "$n" down >/dev/null 2>&1; done
  for n in alpha beta; do ip netns del "$(ns "$n")" 2>/dev/null; done
  cp "$RUN"/*.log "$OUT/" 2>/dev/null
  if [ "$FAILS" -eq 0 ]; then
    echo "ALL PASS ($((SECONDS - T0)) s)"
    exit 0
  fi
  echo "$FAILS FAILED ($((SECONDS - T0)) s); logs in $OUT"
  exit 1
}

rm -rf "$SCRATCH" "$RUN" "$OUT"
mkdir -p "$SCRATCH" "$RUN" "$OUT" "$MNT"
info "binaries from $REP_BIN; kernel $(uname -r); $(nproc) cpus"

# --- two machines -------------------------------------------------------------
for n in alpha beta; do
  ip netns del "$(ns "$n")" 2>/dev/null
  ip netns add "$(ns "$n")"
  ip -n "$(ns "$n")" link set lo up
done
for l in 0 1; do
  ip link add "ha-l${l}a" type veth peer name "ha-l${l}b"
  for i in 0 1; do
    tmp="ha-l${l}$([ $i = 0 ] && echo a || echo b)"
    n=${NODES[$i]}
    ip link set "$tmp" netns "$(ns "$n")"
    ip -n "$(ns "$n")" link set dev "$tmp" name "link$l"
    ip -n "$(ns "$n")" addr add "10.9$((7 + l)).0.$((i + 1))/24" dev "link$l"
    ip -n "$(ns "$n")" link set "link$l" up
  done
done

truncate -s "$SIZE" "$SCRATCH/alpha.img" "$SCRATCH/beta.img"
cat >"$CFG" <<EOF
[resource]
name = "r0"
protocol = "C"
[net]
secret = "ha-secret"
timeout-ms = 2000
ping-int-ms = 500
[sync]
rate = "0"
[[node]]
name = "alpha"
address = "10.97.0.1:7788"
disk = "$SCRATCH/alpha.img"
meta-disk = "internal"
device = 0
[[node]]
name = "beta"
address = "10.97.0.2:7788"
disk = "$SCRATCH/beta.img"
meta-disk = "internal"
device = 1
[cluster]
auth-key = "ha-scenario-key"
preferred = "alpha"
deadtime-ms = $DEADTIME_MS
warntime-ms = $((DEADTIME_MS / 2))
initdead-ms = $((DEADTIME_MS * 5))
[[cluster.path]]
node = "alpha"
bind = "10.97.0.1:694"
name = "link0"
[[cluster.path]]
node = "beta"
bind = "10.97.0.2:694"
[[cluster.path]]
node = "alpha"
bind = "10.98.0.1:694"
name = "link1"
[[cluster.path]]
node = "beta"
bind = "10.98.0.2:694"
[[cluster.resource]]
type = "device"
[[cluster.resource]]
type = "filesystem"
mount-point = "$MNT"
fstype = "ext4"
[[cluster.resource]]
type = "ip"
address = "$SVC_IP/24"
interface = "link0"
EOF
cp "$CFG" "$OUT/"

# --- the device, its filesystem, the agents -----------------------------------
for n in alpha beta; do repctl "$n" create-md >/dev/null && repctl "$n" up >/dev/null || fail "create-md/up on $n"; done
repctl alpha primary --force >/dev/null || fail "primary --force on alpha"
wait_until 180 synced beta || fail "initial sync: beta $(repd_field beta connection) $(repd_field beta disk)"
wait_until 10 test -b /dev/ublkb0 || fail "no /dev/ublkb0 on the Primary"
# 4 KiB blocks, what mke2fs picks for any filesystem above 512 MiB (its
# "small" type gives this 64 MiB one 1 KiB blocks: four times the metadata
# reads at mount and the journal blocks to replay); inode tables and journal
# written now, as on a cluster whose filesystem is long initialised, rather
# than by ext4lazyinit in the background of the first mounts, failover
# included.
mkfs.ext4 -q -F -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 /dev/ublkb0 &&
  pass "mkfs.ext4 /dev/ublkb0 on alpha" || fail "mkfs.ext4 /dev/ublkb0"
repctl alpha secondary >/dev/null || fail "repctl secondary on alpha"
start_agent alpha
start_agent beta
if wait_until 60 holding alpha && wait_until 20 idle_with_peer_holding beta; then
  pass "the agents settled: alpha holds, beta is the standby"
else
  fail "agents did not settle: alpha $(agent_field alpha state), beta $(agent_field beta state)"
  finish
fi
[ "$(mounted_dev alpha)" = /dev/ublkb0 ] && pass "ext4 on /dev/ublkb0 mounted on $MNT in alpha's namespace" || fail "alpha: $MNT has '$(mounted_dev alpha)'"
[ -z "$(mounted_dev beta)" ] && pass "nothing mounted on $MNT in beta's namespace" || fail "beta: $MNT has '$(mounted_dev beta)'"
has_ip alpha && ! has_ip beta && pass "service IP $SVC_IP on alpha only" || fail "service IP: alpha $(has_ip alpha && echo yes), beta $(has_ip beta && echo yes)"

# --- data on alpha ------------------------------------------------------------
in_mnt alpha sh -c "mkdir -p '$MNT/data' && cp -r /usr/share/doc/bash /usr/share/doc/coreutils '$MNT/data/' 2>/dev/null; \
  head -c 16M /dev/urandom > '$MNT/data/random.bin' && cd '$MNT' && find data -type f -print0 | sort -z | xargs -0 sha256sum > '$SCRATCH/sums.txt' && sync -f '$MNT/data'" &&
  pass "$(wc -l <"$SCRATCH/sums.txt") files written on alpha, checksums recorded" || fail "writing files on alpha"

# --- planned switchover alpha -> beta -----------------------------------------
t=$(now_ms)
if agent alpha switchover >"$OUT/switchover-1.txt" 2>&1; then
  pass "cluster-agent switchover on alpha: done in $(($(now_ms) - t)) ms"
else
  fail "switchover alpha -> beta: $(tail -3 "$OUT/switchover-1.txt")"
fi
cat "$OUT/switchover-1.txt"
holding beta && [ "$(agent_field alpha state)" = Idle ] && pass "beta holds, alpha is idle" || fail "after the switchover: alpha $(agent_field alpha state), beta $(agent_field beta state)"
[ "$(role alpha)" = Secondary ] && [ "$(role beta)" = Primary ] && pass "repd roles: alpha Secondary, beta Primary" || fail "roles: alpha $(role alpha), beta $(role beta)"
[ "$(mounted_dev beta)" = /dev/ublkb1 ] && pass "ext4 mounted from /dev/ublkb1 on beta" || fail "beta: $MNT has '$(mounted_dev beta)'"
[ -z "$(mounted_dev alpha)" ] && pass "unmounted on alpha" || fail "alpha still has '$(mounted_dev alpha)' on $MNT"
has_ip beta && ! has_ip alpha && pass "service IP moved to beta, gone from alpha" || fail "service IP: alpha $(has_ip alpha && echo yes), beta $(has_ip beta && echo yes)"
check_files beta && pass "every checksum matches on beta" || fail "checksums differ on beta"
agent alpha status --json | grep -q "switchover requested" && pass "alpha's status shows the reason \"switchover requested\"" || fail "no \"switchover requested\" in alpha's status"
wait_until 10 test ! -b /dev/ublkb0 && pass "alpha's /dev/ublkb0 is gone (Secondary)" || fail "/dev/ublkb0 still exists on the Secondary"

# --- a write on beta, and back ------------------------------------------------
in_mnt beta sh -c "echo 'written on beta' > '$MNT/data/from-beta.txt' && cd '$MNT' && sha256sum data/from-beta.txt >> '$SCRATCH/sums.txt' && sync -f '$MNT/data'" || fail "write on beta"
t=$(now_ms)
if agent beta switchover >"$OUT/switchover-2.txt" 2>&1; then
  pass "switchover back (asked on beta): done in $(($(now_ms) - t)) ms"
else
  fail "switchover beta -> alpha: $(tail -3 "$OUT/switchover-2.txt")"
fi
wait_until 20 holding alpha || fail "alpha does not hold again"
[ "$(mounted_dev alpha)" = /dev/ublkb0 ] && check_files alpha && pass "back on alpha: mounted, all $(wc -l <"$SCRATCH/sums.txt") files intact (beta's too)" || fail "back on alpha: files"
has_ip alpha && ! has_ip beta && pass "service IP back on alpha" || fail "service IP after switching back"
wait_until 30 synced alpha || fail "not in sync before the kill"

# --- kill -9 of everything on alpha -------------------------------------------
# Keep alpha's mount namespace (its agent's) alive after the kill: tearing it
# down would wait for I/O that the dead repd's device holds.
nsenter -t "${AGENT_PID[alpha]}" -m -- sleep 100000 </dev/null >/dev/null 2>&1 &
HOLDER=$!
# The failover is done when a user of beta sees it: ext4 from /dev/ublkb1 on
# $MNT, the service IP bindable, and a file written and fsynced there. A
# watcher in beta's mount and network namespaces (its agent's) checks that
# every 10 ms from before the kill and writes the moment it first held (the
# guest's wall clock, like $EPOCHREALTIME below). It is one perl process
# started ahead: starting a program per check costs ~100 ms under TCG and
# would be measured as failover time.
WATCH_OUT=$SCRATCH/failover-watch
rm -f "$WATCH_OUT" "$WATCH_OUT.ready"
nsenter -t "${AGENT_PID[beta]}" -m -n -- perl -MTime::HiRes=time,sleep -MSocket -MIO::Handle -e '
  my ($mnt, $dev, $ip, $out) = @ARGV;
  open(my $r, ">", "$out.ready") or die; close $r;
  my $end = time + 120;
  while (time < $end) {
    my $mounted = 0;
    if (open(my $m, "<", "/proc/self/mounts")) {
      while (<$m>) { my @f = split; $mounted = 1 if $f[0] eq $dev && $f[1] eq $mnt }
      close $m;
    }
    my $bound = 0;
    if ($mounted && socket(my $s, PF_INET, SOCK_DGRAM, 0)) {
      $bound = bind($s, pack_sockaddr_in(0, inet_aton($ip)));
      close $s;
    }
    if ($bound && open(my $f, ">", "$mnt/failover-probe")) {
      my $ok = print($f "written after the failover\n") && $f->flush && $f->sync;
      if (close($f) && $ok) {
        open(my $o, ">", $out) or die; printf $o "%.0f\n", time * 1000; close $o; exit 0;
      }
    }
    sleep 0.01;
  }
  exit 1' "$MNT" /dev/ublkb1 "$SVC_IP" "$WATCH_OUT" </dev/null >>"$OUT/watch.log" 2>&1 &
WATCHER=$!
wait_until 60 test -e "$WATCH_OUT.ready" || fail "the failover watcher did not start (perl with Time::HiRes?)"
sleep 0.2
repd_pid=$(repd_field alpha pid)
t=${EPOCHREALTIME/./}
t=$((t / 1000))
kill -9 "${AGENT_PID[alpha]}" "$repd_pid"
if wait_until 60 test -s "$WATCH_OUT" && wait_until 20 holding beta; then
  done_at=$(cat "$WATCH_OUT")
  # When beta's transitions happened, on the same clock: its status gives
  # their time on the agent's clock, its uptime and the wall clock then.
  st=$(agent beta status --json)
  wall=$(echo "$st" | jget unix_ms)
  up=$(echo "$st" | jget uptime_ms)
  acq=$(echo "$st" | last_transition_at Acquiring)
  hold=$(echo "$st" | last_transition_at Holding)
  promoted=$((wall - (up - acq) - t))
  started=$((wall - (up - hold) - t))
  took=$((done_at - t))
  info "failover after kill -9 of alpha's repd and agent: beta promotes after $promoted ms, holds (chain started) after $started ms; ext4 mounted, service IP up and a write fsynced on beta after $took ms (deadtime $DEADTIME_MS ms, so $((took - DEADTIME_MS)) ms beyond it)"
  [ "$took" -le $((DEADTIME_MS + 1000)) ] &&
    pass "failover within deadtime + 1 s: $took ms from kill -9 to ext4 + service IP + a write on beta (promoted at $promoted ms, chain started at $started ms)" ||
    fail "failover took $took ms from kill -9 to ext4 + service IP + a write on beta, more than deadtime + 1 s = $((DEADTIME_MS + 1000)) ms (promoted at $promoted ms, chain started at $started ms)"
else
  fail "beta did not take over: $(agent_field beta decision); watcher: $(cat "$OUT/watch.log" 2>/dev/null)"
  kill "$WATCHER" 2>/dev/null
  finish
fi
wait "$WATCHER" 2>/dev/null
AGENT_PID[alpha]=
[ "$(mounted_dev beta)" = /dev/ublkb1 ] && check_files beta && pass "after the failover: mounted on beta, all files intact" || fail "after the failover: files on beta"
has_ip beta && pass "service IP on beta after the failover" || fail "no service IP on beta after the failover"
agent beta status --json | grep -q "peer alpha dead" && pass "beta's status says why: alpha dead" || info "beta's events: $(agent_field beta decision)"
finish
