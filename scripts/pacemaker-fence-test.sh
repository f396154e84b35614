#!/usr/bin/env bash
# Fencing the peer the Pacemaker way (issue 19), in a real two-node
# Pacemaker + Corosync cluster (scripts/pacemaker-lib.sh: one node per set
# of namespaces). The Corosync ring and the replication link are two veth
# pairs, so the replication link can be cut alone:
#   1. the promotable clone of ocf:rep:rep runs with [net] fencing =
#      "resource-and-stonith" and ocf/crm-fence-peer, ocf/crm-unfence-peer as
#      the handlers; once both are UpToDate no fence constraint is left;
#   2. the replication link is cut (the ring stays): the Primary runs
#      crm-fence-peer, which places drbd-fence-by-handler-r0-rep-clone and
#      exits 4; the Primary's writes are let go only then;
#   3. a move of the promoted role to the fenced node is refused by
#      Pacemaker (the constraint): the Primary stays promoted;
#   4. the link comes back, the resync makes both UpToDate, crm-unfence-peer
#      removes the constraint, and the move to the other node now works.
# STONITH is disabled (no fence device in namespaces). Exit 0 only when
# every step passes. REP_BIN: directory of repd/repctl (default
# target/release, built if missing). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# Own names and addresses: may run beside scripts/pacemaker-test.sh.
PCMK_NODES=(fa fb)
PCMK_IPS=(10.79.0.1 10.79.0.2)
REPL_IPS=(10.79.1.1 10.79.1.2)
# shellcheck source=scripts/pacemaker-lib.sh
. scripts/pacemaker-lib.sh

[ "$(id -u)" = 0 ] || { echo "pacemaker-fence-test.sh must run as root" >&2; exit 1; }
pcmk_install
if [ -z "${REP_BIN:-}" ]; then
  REP_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
  if [ ! -x "$REP_BIN/repd" ] || [ ! -x "$REP_BIN/repctl" ]; then
    cargo build --release -p ublk-target --bins
  fi
fi
REPCTL="$REP_BIN/repctl"
export PCMK_STATE="${CARGO_TARGET_DIR:-$ROOT/target}/tmp/pacemaker-fence-test"
PCMK_PROVIDERS="rep=$PCMK_STATE/provider-rep"
SHARED="$PCMK_STATE/shared"
CONSTRAINT=drbd-fence-by-handler-r0-rep-clone

fail() {
  echo "FAIL: $*" >&2
  for n in "${PCMK_NODES[@]}"; do
    echo "--- $n: repd log tail" >&2
    tail -n 20 "$PCMK_STATE/$n/run/rep/r0.$n.log" >&2 2>/dev/null || true
  done
  exit 1
}
trap pcmk_cleanup EXIT

# The replication link: a second veth pair, apart from Corosync's.
repl_link_up() {
  ip link add pkr0 type veth peer name pkr1
  for i in 0 1; do
    ip link set "pkr$i" netns "$(pcmk_ns $i)"
    ip -n "$(pcmk_ns $i)" addr add "${REPL_IPS[$i]}/24" dev "pkr$i"
    ip -n "$(pcmk_ns $i)" link set "pkr$i" up
  done
}
repl_link() { ip -n "$(pcmk_ns "$1")" link set "pkr$1" "$2"; } # i up|down

resource_file() {
  local i
  printf '[resource]\nname = "r0"\n[net]\nsecret = "fence-test"\ntimeout-ms = 1000\nping-int-ms = 300\n'
  printf 'ko-count = 4\nfencing = "resource-and-stonith"\n[sync]\nrate = "0"\nal-extents = 7\n'
  printf '[handlers]\nfence-peer = "%s/ocf/crm-fence-peer"\nunfence-peer = "%s/ocf/crm-unfence-peer"\n' "$ROOT" "$ROOT"
  for i in 0 1; do
    printf '[[node]]\nname = "%s"\naddress = "%s:7788"\ndisk = "%s/%s.img"\nmeta-disk = "internal"\ndevice = %s\n' \
      "${PCMK_NODES[$i]}" "${REPL_IPS[$i]}" "$SHARED" "${PCMK_NODES[$i]}" "$i"
  done
}

node_repctl() { # i ARGS: repctl inside node i (or its netns before the cluster runs)
  local i=$1
  shift
  if pcmk_init_pid "$i" >/dev/null; then
    pcmk_in "$i" "$REPCTL" --config-dir "$SHARED/etc-rep" -n "${PCMK_NODES[$i]}" "$@"
  else
    ip netns exec "$(pcmk_ns "$i")" "$REPCTL" --config-dir "$SHARED/etc-rep" --run-dir "$SHARED/run" \
      -n "${PCMK_NODES[$i]}" "$@"
  fi
}

wait_for() { # WHAT SECS CMD...: until CMD succeeds
  local what=$1 secs=$2 t=0
  shift 2
  until "$@" >/dev/null 2>&1; do
    t=$((t + 1))
    [ "$t" -lt $((secs * 5)) ] || fail "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}
status_is() { node_repctl "$1" status --json r0 | jq -e "$2"; } # i JQ-EXPR
constraint_there() { pcmk_in 0 cibadmin -Q -o constraints | grep -q "id=\"$CONSTRAINT\""; }
no_constraint() { ! constraint_there; }
promoted_on() { pcmk_xpath "$1" "//clone[@id='rep-clone']/resource[@role='Promoted']/node/@name"; }
promoted_is() { [ "$(promoted_on "$1")" = "$2" ]; }

prepare() {
  rm -rf "$SHARED"
  mkdir -p "$SHARED/etc-rep" "$PCMK_STATE/provider-rep"
  cp ocf/rep "$PCMK_STATE/provider-rep/rep"
  truncate -s 64M "$SHARED/${PCMK_NODES[0]}.img" "$SHARED/${PCMK_NODES[1]}.img"
  resource_file >"$SHARED/etc-rep/r0.toml"
  for i in 0 1; do node_repctl "$i" create-md r0 >/dev/null; done
  # The first sync before Pacemaker takes over, without fencing's handler
  # (no cluster yet): connected first, then promoted.
  for i in 0 1; do node_repctl "$i" up r0 >/dev/null; done
  wait_for "r0 connected" 30 status_is 0 '.connection == "Connected"'
  node_repctl 0 primary --force r0 >/dev/null
  wait_for "r0 initial sync" 120 status_is 0 '.peer_disk == "UpToDate" and .out_of_sync_bytes == 0'
  node_repctl 0 secondary r0 >/dev/null
  for i in 0 1; do node_repctl "$i" down r0 >/dev/null; done
}

configure_cib() {
  pcmk_cib_rep_clone "$SHARED/etc-rep" "$REPCTL"
}

echo "== 1. cluster up: promotable clone with fencing = resource-and-stonith"
pcmk_cleanup
rm -rf "${PCMK_STATE:?}/${PCMK_NODES[0]}" "${PCMK_STATE:?}/${PCMK_NODES[1]}" "${PCMK_STATE:?}/provider-rep"
pcmk_net_up
repl_link_up
prepare
pcmk_cluster_files
pcmk_node_start 0
pcmk_node_start 1
pcmk_wait_online 0 120 || fail "cluster did not come up"
configure_cib
t=0
until [ -n "$(promoted_on 0)" ]; do sleep 1; t=$((t + 1)); [ "$t" -lt 120 ] || fail "no instance promoted"; done
P=$(promoted_on 0)
[ "$P" = "${PCMK_NODES[0]}" ] && pi=0 || pi=1
si=$((1 - pi))
S=${PCMK_NODES[$si]}
wait_for "$P and $S in sync" 120 status_is "$pi" '.role == "Primary" and .connection == "Connected" and .peer_disk == "UpToDate"'
# A promotion before the peer connected fences it; the resync unfences it.
wait_for "no fence constraint once both are UpToDate" 60 no_constraint
echo "  promoted on $P, in sync with $S, no fence constraint"

echo "== 2. cut the replication link (the Corosync ring stays): $P fences $S"
repl_link "$pi" down
wait_for "$P to run crm-fence-peer (exit 4)" 60 status_is "$pi" \
  '.fencing.peer_fenced == true and .fencing.last_exit == 4 and .suspended == null'
constraint_there || fail "$CONSTRAINT not in the CIB"
pcmk_in 0 cibadmin -Q -o constraints | grep -A3 "id=\"$CONSTRAINT\"" | sed 's/^/  /'
[ "$(pcmk_xpath "$si" 'count(//nodes/node[@online="true"])')" = 2 ] || fail "the ring was cut too"
echo "  $P: peer fenced (exit 4), I/O going on; both nodes still online in Pacemaker"

echo "== 3. moving the promoted role to the fenced $S is refused"
# Only the constraint stands in the way: the agent still gives the fenced
# node (UpToDate, peer unknown) a promotion score.
score=$(pcmk_in "$si" crm_attribute -l reboot -N "$S" -n master-rep -G -q 2>/dev/null || true)
if ! [ "$score" -gt 0 ] 2>/dev/null; then
  fail "$S has no promotion score ('$score'): the move would be refused anyway"
fi
echo "  $S's promotion score: $score"
pcmk_in "$si" crm_resource --move --promoted -r rep-clone --node "$S" >/dev/null 2>&1 || true
sleep 10
promoted_is "$si" "$P" || fail "the fenced node was promoted (promoted: $(promoted_on "$si"))"
status_is "$si" '.role == "Secondary"' >/dev/null || fail "$S's repd is not Secondary"
pcmk_in "$si" crm_resource --clear -r rep-clone >/dev/null 2>&1 || true
echo "  $P stays promoted, $S Secondary"

echo "== 4. the link comes back: resync, crm-unfence-peer, then $S can be promoted"
repl_link "$pi" up
wait_for "both UpToDate" 120 status_is "$pi" '.connection == "Connected" and .peer_disk == "UpToDate" and .fencing.peer_fenced == false'
wait_for "$CONSTRAINT removed" 60 no_constraint
pcmk_in "$pi" crm_resource --move --promoted -r rep-clone --node "$S" >/dev/null
wait_for "$S promoted" 90 promoted_is "$pi" "$S"
pcmk_in "$pi" crm_resource --clear -r rep-clone >/dev/null
echo "  constraint removed, $S promoted after the resync"
echo "== pacemaker-fence-test: PASS"
