#!/usr/bin/env bash
# The OCF resource agent ocf/rep in a real two-node Pacemaker + Corosync
# cluster (Debian's packages), one node per network namespace with its own
# mount, UTS and PID namespaces (scripts/pacemaker-lib.sh):
#   1. ocf-tester passes on the agent with a live two-node resource behind it,
#      and the agent run directly (as Pacemaker runs it) honours its
#      parameters: stop_outdates_secondary, force_stop, notify's connect,
#      validate-all's refusals;
#   2. the cluster runs the promotable clone of ocf:rep:rep and a service
#      (scripts/pacemaker-writer.py under ocf:heartbeat:anything) that writes
#      numbered blocks through the promoted node's NBD export, colocated
#      with the promoted instance and ordered after promotion;
#   3. SIGKILL of the promoted node (its corosync, pacemaker, repd, service):
#      Pacemaker promotes the survivor and starts the service there, every
#      acknowledged write is intact; the failover time is printed;
#   4. the node comes back, rejoins unpromoted, resyncs only what changed;
#   5. crm_resource --move of the promoted instance to it and back;
#   6. the promotion scores follow the data state (adjust_master_score).
# STONITH is disabled (stonith-enabled=false): fencing is not what this
# test proves. Exit 0 only when every step passes.
#
# Uses REP_BIN (directory of repd/repctl; default target/release, built if
# missing). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/pacemaker-lib.sh
. scripts/pacemaker-lib.sh

[ "$(id -u)" = 0 ] || { echo "pacemaker-test.sh must run as root (namespaces, Pacemaker)" >&2; exit 1; }
pcmk_install
if [ -z "${REP_BIN:-}" ]; then
  # Not from test-all.sh (which builds them first): build them (a no-op
  # when they are up to date), never use stale ones.
  cargo build --release -p ublk-target --bins
  REP_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
REPCTL="$REP_BIN/repctl"
export PCMK_STATE="${CARGO_TARGET_DIR:-$ROOT/target}/tmp/pacemaker-test"
PCMK_PROVIDERS="rep=$PCMK_STATE/provider-rep"
SHARED="$PCMK_STATE/shared"
DISK_MIB=256
ACKED="$SHARED/acked.log"
WRITER="$ROOT/scripts/pacemaker-writer.py"
URIS="alpha=nbd://${PCMK_IPS[0]}:10809/r0,beta=nbd://${PCMK_IPS[1]}:10810/r0"

fail() {
  echo "FAIL: $*" >&2
  for n in "${PCMK_NODES[@]}"; do
    echo "--- $n: repd log tail" >&2
    tail -n 15 "$PCMK_STATE/$n/run/rep/r0.$n.log" >&2 2>/dev/null || true
    echo "--- $n: pacemaker log (errors)" >&2
    grep -E "error|crit" "$PCMK_STATE/$n/log/pacemaker/pacemaker.log" 2>/dev/null | tail -n 15 >&2 || true
  done
  exit 1
}

cleanup() {
  local rc=$?
  set +e
  pcmk_cleanup
  if [ -n "${OCFT_DIR:-}" ]; then
    ocft_repctl beta down --force t0 >/dev/null 2>&1 || true
    ocft_repctl alpha down --force t0 >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

# A resource file for nodes alpha and beta at the given addresses/ports.
resource_file() { # NAME DIR IP0 IP1 PORTBASE NBDBASE
  local i
  printf '[resource]\nname = "%s"\nprotocol = "C"\n[net]\nsecret = "pacemaker-test"\n' "$1"
  printf 'timeout-ms = 1000\nping-int-ms = 300\nko-count = 4\n[sync]\nrate = "0"\nal-extents = 7\n'
  for i in 0 1; do
    printf '[[node]]\nname = "%s"\naddress = "%s:%s"\ndisk = "%s/%s.img"\nmeta-disk = "internal"\ndevice = %s\nnbd = "%s:%s"\n' \
      "${PCMK_NODES[$i]}" "$([ $i = 0 ] && echo "$3" || echo "$4")" "$(($5 + i))" "$2" \
      "${PCMK_NODES[$i]}" "$i" "$([ $i = 0 ] && echo "$3" || echo "$4")" "$(($6 + i))"
  done
}

# repctl for node NAME on loopback (the ocf-tester resource t0).
ocft_repctl() {
  local n=$1
  shift
  REP_CONFIG_DIR="$OCFT_DIR" REP_RUN_DIR="$OCFT_DIR/run" "$REPCTL" -n "$n" "$@"
}

wait_json() { # WHAT SECS JQ-EXPR CMD...: until CMD's JSON satisfies JQ-EXPR
  local what=$1 secs=$2 expr=$3 t=0
  shift 3
  while [ "$t" -lt $((secs * 5)) ]; do
    "$@" 2>/dev/null | jq -e "$expr" >/dev/null 2>&1 && return 0
    sleep 0.2
    t=$((t + 1))
  done
  fail "timed out after ${secs}s waiting for $what"
}

step_ocf_tester() {
  echo "== 1. ocf-tester on ocf/rep with a live two-node resource (loopback)"
  OCFT_DIR="$PCMK_STATE/ocft"
  rm -rf "$OCFT_DIR"
  mkdir -p "$OCFT_DIR"
  truncate -s 64M "$OCFT_DIR/alpha.img" "$OCFT_DIR/beta.img"
  resource_file t0 "$OCFT_DIR" 127.0.0.1 127.0.0.1 17990 11990 >"$OCFT_DIR/t0.toml"
  for n in alpha beta; do ocft_repctl "$n" create-md t0 >/dev/null; done
  ocft_repctl beta up t0 >/dev/null
  ocft_repctl beta primary --force t0 >/dev/null
  ocft_repctl alpha up t0 >/dev/null
  wait_json "t0 synced" 60 '.disk == "UpToDate" and .peer_disk == "UpToDate"' ocft_repctl alpha status --json t0
  ocft_repctl beta secondary t0 >/dev/null
  ocft_repctl alpha down t0 >/dev/null
  # The meta-data also against the OCF 1.1 schema (ocf-tester checks the DTD).
  ocf/rep meta-data | (cd /usr/share/resource-agents && xmllint --noout --relaxng metadata.rng -) ||
    fail "meta-data does not validate against metadata.rng"
  ocf-tester -n rep-t0 -o resource=t0 -o config_dir="$OCFT_DIR" -o run_dir="$OCFT_DIR/run" \
    -o node=alpha -o repctl="$REPCTL" "$ROOT/ocf/rep" || fail "ocf-tester"
  ocft_repctl beta down t0 >/dev/null
  step_agent_options
}

# The agent run directly for node NODE of t0, as Pacemaker runs it (the
# OCF environment), with extra VAR=VALUE settings.
agent() { # NODE ACTION [VAR=VALUE...]
  local n=$1 a=$2
  shift 2
  env OCF_ROOT=/usr/lib/ocf OCF_RESOURCE_INSTANCE=rep-t0 OCF_RESKEY_resource=t0 \
    OCF_RESKEY_config_dir="$OCFT_DIR" OCF_RESKEY_run_dir="$OCFT_DIR/run" OCF_RESKEY_node="$n" \
    OCF_RESKEY_repctl="$REPCTL" "$@" "$ROOT/ocf/rep" "$a"
}

expect_rc() { # WANT WHAT CMD...
  local want=$1 what=$2 rc=0
  shift 2
  "$@" >/dev/null 2>&1 || rc=$?
  [ "$rc" = "$want" ] || fail "$what: exit $rc, expected $want"
  echo "  $what: exit $rc"
}

step_agent_options() {
  echo "== 1b. the agent's parameters: stop_outdates_secondary, force_stop, bad values"
  agent beta start >/dev/null 2>&1 || fail "start beta"
  agent beta promote >/dev/null 2>&1 || fail "promote beta"
  agent alpha start >/dev/null 2>&1 || fail "start alpha"
  wait_json "t0 connected" 60 '.connection == "Connected" and .peer_disk == "UpToDate"' ocft_repctl alpha status --json t0
  expect_rc 8 "monitor of the promoted beta" agent beta monitor
  expect_rc 0 "monitor of the unpromoted alpha" agent alpha monitor
  # Stopped while beta is promoted: alpha's data falls behind; outdated.
  expect_rc 0 "stop alpha with stop_outdates_secondary=true, beta promoted" \
    agent alpha stop OCF_RESKEY_stop_outdates_secondary=true OCF_RESKEY_CRM_meta_notify_promoted_uname=beta
  ocft_repctl alpha dump-md --json t0 | jq -e '(.flags | index("CONSISTENT")) != null and (.flags | index("WAS_UP_TO_DATE")) == null' >/dev/null ||
    fail "alpha's metadata is not Outdated after the stop"
  echo "  alpha's metadata: Outdated (CONSISTENT without WAS_UP_TO_DATE)"
  agent alpha start >/dev/null 2>&1 || fail "start alpha again"
  wait_json "alpha resynced" 60 '.disk == "UpToDate" and .connection == "Connected"' ocft_repctl alpha status --json t0
  # A StandAlone node about to be promoted connects (notify pre-promote).
  ocft_repctl alpha disconnect t0 >/dev/null
  wait_json "alpha StandAlone" 20 '.connection == "StandAlone"' ocft_repctl alpha status --json t0
  expect_rc 0 "notify pre-promote on the StandAlone alpha" agent alpha notify \
    OCF_RESKEY_CRM_meta_notify_type=pre OCF_RESKEY_CRM_meta_notify_operation=promote
  wait_json "alpha connected by the notify" 20 '.connection == "Connected"' ocft_repctl alpha status --json t0
  echo "  alpha connected again"
  agent alpha stop >/dev/null 2>&1 || fail "stop alpha"
  # An NBD client on beta's export: stop refuses, force_stop cuts it.
  /usr/bin/python3 -c 'import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1]); time.sleep(60)' nbd://127.0.0.1:11991/t0 &
  local client=$!
  wait_json "the NBD client connected" 20 '.nbd_clients == 1' ocft_repctl beta status --json t0
  expect_rc 1 "stop of beta with an NBD client connected" agent beta stop
  expect_rc 8 "monitor of beta after the refused stop" agent beta monitor
  expect_rc 0 "stop of beta with force_stop=true" agent beta stop OCF_RESKEY_force_stop=true
  expect_rc 7 "monitor of the stopped beta" agent beta monitor
  kill "$client" 2>/dev/null || true
  expect_rc 6 "validate-all with adjust_master_score='0 1000'" agent beta validate-all OCF_RESKEY_adjust_master_score="0 1000"
  expect_rc 6 "validate-all with adjust_master_score='10 5 20'" agent beta validate-all OCF_RESKEY_adjust_master_score="10 5 20"
  expect_rc 6 "validate-all with force_stop=maybe" agent beta validate-all OCF_RESKEY_force_stop=maybe
  expect_rc 6 "validate-all of a resource without a file" agent beta validate-all OCF_RESKEY_resource=nope
  expect_rc 7 "probe of a resource without a file" agent beta monitor OCF_RESKEY_resource=nope OCF_RESKEY_CRM_meta_interval=0
}

# Both nodes' disks, created and synced once before Pacemaker takes over
# (the first promotion of fresh metadata needs --force, as with DRBD).
prepare_resource() {
  rm -rf "$SHARED"
  mkdir -p "$SHARED/etc-rep"
  truncate -s "${DISK_MIB}M" "$SHARED/alpha.img" "$SHARED/beta.img"
  resource_file r0 "$SHARED" "${PCMK_IPS[0]}" "${PCMK_IPS[1]}" 7788 10809 >"$SHARED/etc-rep/r0.toml"
  for i in 0 1; do
    ip netns exec "$(pcmk_ns "$i")" "$REPCTL" --config-dir "$SHARED/etc-rep" --run-dir "$SHARED/run" \
      -n "${PCMK_NODES[$i]}" create-md r0 >/dev/null
    ip netns exec "$(pcmk_ns "$i")" "$REPCTL" --config-dir "$SHARED/etc-rep" --run-dir "$SHARED/run" \
      -n "${PCMK_NODES[$i]}" up r0 >/dev/null
  done
  local r0=(ip netns exec "$(pcmk_ns 0)" "$REPCTL" --config-dir "$SHARED/etc-rep" --run-dir "$SHARED/run" -n alpha)
  local r1=(ip netns exec "$(pcmk_ns 1)" "$REPCTL" --config-dir "$SHARED/etc-rep" --run-dir "$SHARED/run" -n beta)
  "${r0[@]}" primary --force r0 >/dev/null
  wait_json "r0 initial sync" 120 '.peer_disk == "UpToDate" and .out_of_sync_bytes == 0' "${r0[@]}" status --json r0
  "${r0[@]}" secondary r0 >/dev/null
  "${r0[@]}" down r0 >/dev/null
  "${r1[@]}" down r0 >/dev/null
  : >"$ACKED"
}

# The CIB: no STONITH, the promotable clone, the writer, colocation, order.
configure_cib() {
  pcmk_cib_rep_clone "$SHARED/etc-rep" "$REPCTL"
  pcmk_in 0 cibadmin --create -o resources --xml-text "
<primitive id='writer' class='ocf' provider='heartbeat' type='anything'>
  <instance_attributes id='writer-ia'>
    <nvpair id='writer-binfile' name='binfile' value='$WRITER'/>
    <nvpair id='writer-cmdline' name='cmdline_options' value='run --uris $URIS --acked $ACKED'/>
    <nvpair id='writer-logfile' name='logfile' value='/var/log/writer.log'/>
  </instance_attributes>
  <operations>
    <op id='writer-monitor' name='monitor' interval='2s' timeout='20s'/>
  </operations>
</primitive>"
  pcmk_in 0 cibadmin --create -o constraints --xml-text \
    "<rsc_colocation id='writer-with-promoted' rsc='writer' with-rsc='rep-clone' with-rsc-role='Promoted' score='INFINITY'/>"
  pcmk_in 0 cibadmin --create -o constraints --xml-text \
    "<rsc_order id='promote-then-writer' first='rep-clone' first-action='promote' then='writer' then-action='start' kind='Mandatory'/>"
}

# Name of the node running the promoted instance, as node i's Pacemaker sees it.
promoted_on() {
  pcmk_xpath "$1" "//clone[@id='rep-clone']/resource[@role='Promoted']/node/@name"
}
writer_on() {
  pcmk_xpath "$1" "//resource[@id='writer'][@role='Started']/node/@name"
}
acked_count() { wc -l <"$ACKED"; }

# Wait until node i's Pacemaker shows the promoted instance and the writer
# on node NAME, and the writer's acknowledged writes grow there.
wait_service_on() { # i NAME SECS
  local t=0 a
  while [ "$t" -lt $(($3 * 5)) ]; do
    if [ "$(promoted_on "$1")" = "$2" ] && [ "$(writer_on "$1")" = "$2" ]; then
      a=$(acked_count)
      sleep 0.5
      [ "$(acked_count)" -gt "$a" ] && return 0
    fi
    sleep 0.2
    t=$((t + 1))
  done
  pcmk_in "$1" crm_mon -1 >&2 || true
  fail "promoted instance and writer not running on $2 after ${3}s"
}

node_index() { [ "$1" = "${PCMK_NODES[0]}" ] && echo 0 || echo 1; }

# repctl on node i (inside its namespaces, as the agent runs it).
node_repctl() {
  local i=$1
  shift
  pcmk_in "$i" "$REPCTL" --config-dir "$SHARED/etc-rep" "$@"
}

check_acked() { # i: through node i's export
  local i=$1 uri
  uri="nbd://${PCMK_IPS[$i]}:$((10809 + i))/r0"
  pcmk_in "$i" "$WRITER" check --uri "$uri" --acked "$ACKED" || fail "acknowledged writes lost"
}

step_cluster_up() {
  echo "== 2. two-node Pacemaker + Corosync cluster (netns ${PCMK_NODES[*]}), promotable clone + writer"
  pcmk_cleanup
  rm -rf "${PCMK_STATE:?}/${PCMK_NODES[0]}" "${PCMK_STATE:?}/${PCMK_NODES[1]}" "${PCMK_STATE:?}/provider-rep"
  mkdir -p "$PCMK_STATE/provider-rep"
  cp ocf/rep "$PCMK_STATE/provider-rep/rep"
  pcmk_net_up
  prepare_resource
  pcmk_cluster_files
  pcmk_node_start 0
  pcmk_node_start 1
  pcmk_wait_online 0 120 || fail "cluster did not come up"
  echo "  both nodes online"
  configure_cib
  pcmk_in 0 crm_verify -L || fail "crm_verify -L: the configuration is not valid"
  [ "$(pcmk_in 0 crm_resource --show-metadata ocf:rep:rep |
    xmllint --xpath "count(//parameter[@name='adjust_master_score'])" -)" = 1 ] ||
    fail "Pacemaker does not read ocf:rep:rep's meta-data"
  echo "  crm_verify -L: valid; crm_resource --show-metadata ocf:rep:rep: read"
  local t=0 p=""
  while [ -z "$p" ] && [ "$t" -lt 120 ]; do
    sleep 1
    t=$((t + 1))
    p=$(promoted_on 0)
  done
  [ -n "$p" ] || fail "no instance promoted"
  wait_service_on 0 "$p" 60
  pcmk_in 0 crm_mon -1 | sed -n '/Node List/,$p'
  echo "  promoted on $p, writer running there ($(acked_count) writes acknowledged)"
  PROMOTED=$p
}

step_failover() {
  local pi si survivor t0 t1 t2 n0
  pi=$(node_index "$PROMOTED")
  si=$((1 - pi))
  survivor=${PCMK_NODES[$si]}
  echo "== 3. SIGKILL of the promoted node $PROMOTED"
  sleep 2
  n0=$(acked_count)
  t0=$(date +%s.%N)
  pcmk_node_kill "$pi"
  local t=0
  until [ "$(promoted_on "$si")" = "$survivor" ]; do
    sleep 0.1
    t=$((t + 1))
    [ "$t" -lt 900 ] || fail "$survivor not promoted"
  done
  t1=$(date +%s.%N)
  wait_service_on "$si" "$survivor" 60
  t2=$(date +%s.%N)
  pcmk_in "$si" crm_mon -1 | sed -n '/Node List/,$p'
  printf '  failover time: %s promoted %.1f s after the kill, writer writing there after %.1f s\n' \
    "$survivor" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t0" | bc)"
  echo "  $n0 writes acknowledged before the kill"
  check_acked "$si"
  KILLED=$pi
}

step_rejoin() {
  local ki=$KILLED si=$((1 - KILLED)) st oos resync data
  local back=${PCMK_NODES[$ki]}
  echo "== 4. $back comes back: rejoins unpromoted, resyncs only what changed"
  sleep 3
  pcmk_node_start "$ki"
  pcmk_wait_online "$si" 120 || fail "$back did not rejoin"
  local t=0
  until [ "$(pcmk_xpath "$si" "//clone[@id='rep-clone']/resource[@role='Unpromoted']/node/@name")" = "$back" ]; do
    sleep 0.5
    t=$((t + 1))
    [ "$t" -lt 240 ] || fail "$back not running unpromoted"
  done
  wait_json "$back resynced" 120 '.connection == "Connected" and .disk == "UpToDate" and .peer_disk == "UpToDate"' \
    node_repctl "$ki" status --json r0
  st=$(node_repctl "$ki" status --json r0)
  resync=$(echo "$st" | jq '.stats.resync_received_bytes')
  oos=$(echo "$st" | jq '.out_of_sync_bytes')
  data=$(echo "$st" | jq '.data_bytes')
  [ "$(promoted_on "$si")" = "${PCMK_NODES[$si]}" ] || fail "the promoted instance moved when $back came back"
  echo "  $back: Secondary, UpToDate, resynced $resync of $data bytes (out of sync now: $oos)"
  # The writer touches 8 MiB; a full sync would be all of the disk.
  if [ "$resync" -le 0 ] || [ "$resync" -gt $((16 << 20)) ]; then
    fail "resync of $resync bytes is not only what changed"
  fi
  check_acked "$si"
}

move_to() { # i: move the promoted instance to node i
  local n=${PCMK_NODES[$1]} o=$((1 - $1))
  echo "  crm_resource --move --promoted -r rep-clone --node $n"
  pcmk_in "$o" crm_resource --move --promoted -r rep-clone --node "$n" >/dev/null
  wait_service_on "$o" "$n" 90
  pcmk_in "$o" crm_resource --clear -r rep-clone >/dev/null
  [ "$(pcmk_xpath "$o" "//clone[@id='rep-clone']/resource[@role='Unpromoted']/node/@name")" = "${PCMK_NODES[$o]}" ] ||
    fail "${PCMK_NODES[$o]} not unpromoted after the move"
  echo "  promoted on $n, writer running there; the other node unpromoted"
  check_acked "$1"
}

# The promotion score (adjust_master_score) of node NAME, as node i's
# Pacemaker holds it ("none" when the agent removed it).
score_of() { # i NAME
  pcmk_in "$1" crm_attribute --promotion=rep --node "$2" --query --quiet 2>/dev/null || echo none
}

wait_score() { # i NAME WANT WHY
  local t=0 got
  while [ "$t" -lt 60 ]; do
    got=$(score_of "$1" "$2")
    [ "$got" = "$3" ] && { echo "  promotion score of $2: $got ($4)"; return 0; }
    sleep 0.5
    t=$((t + 1))
  done
  fail "promotion score of $2 is $got, expected $3 ($4)"
}

step_scores() {
  local p=$PROMOTED_NOW pi u ui
  pi=$(node_index "$p")
  ui=$((1 - pi))
  u=${PCMK_NODES[$ui]}
  echo "== 6. promotion scores follow the data state (adjust_master_score 0 1000 10000)"
  wait_score "$pi" "$p" 10000 "Primary, UpToDate"
  wait_score "$pi" "$u" 10000 "Secondary, UpToDate, peer known"
  node_repctl "$ui" disconnect r0 >/dev/null
  wait_score "$pi" "$u" 1000 "Secondary, UpToDate, peer unknown after repctl disconnect"
  node_repctl "$ui" connect r0 >/dev/null
  wait_json "$u resynced" 60 '.connection == "Connected" and .disk == "UpToDate"' node_repctl "$ui" status --json r0
  wait_score "$pi" "$u" 10000 "connected again"
  [ "$(promoted_on "$pi")" = "$p" ] || fail "the promoted instance moved"
  check_acked "$pi"
}

step_move() {
  echo "== 5. move the promoted instance and back"
  move_to "$KILLED"
  move_to $((1 - KILLED))
  PROMOTED_NOW=${PCMK_NODES[$((1 - KILLED))]}
}

step_ocf_tester
step_cluster_up
step_failover
step_rejoin
step_move
step_scores
echo "== pacemaker-test: PASS ($(acked_count) writes acknowledged, all intact)"
