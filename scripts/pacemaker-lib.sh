#!/usr/bin/env bash
# A real two-node Pacemaker + Corosync cluster on one host, from Debian's
# packages: each node is a network namespace (its own address on a veth
# pair, so Corosync's knet and repd's replication link cross a real link)
# plus its own mount, UTS and PID namespaces, so that each node has its own
# host name (the node name), /run, /dev/shm, /var/lib/pacemaker,
# /var/lib/corosync, /var/log and /etc/corosync, and its own process tree
# (pacemakerd looks for its daemons in /proc). Killing a node's PID 1 kills
# every process of that node with SIGKILL, like a power cut.
#
# Source it (scripts/pacemaker-test.sh does), or run `pacemaker-lib.sh
# node-init NAME STATE` (what pcmk_node_start runs as each node's PID 1).
#
# Functions: pcmk_install, pcmk_net_up, pcmk_net_down, pcmk_cluster_files,
# pcmk_node_start, pcmk_node_kill, pcmk_in, pcmk_wait_online, pcmk_cleanup.
# Settings (set before calling): PCMK_STATE (a directory), PCMK_NODES
# (two names), PCMK_IPS (their addresses).

[ -n "${PCMK_NODES[*]:-}" ] || PCMK_NODES=(alpha beta)
[ -n "${PCMK_IPS[*]:-}" ] || PCMK_IPS=(10.77.0.1 10.77.0.2)
PCMK_NET=${PCMK_NET:-24}
PCMK_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/pacemaker-lib.sh"

# The Debian packages the cluster needs (and ocf-tester's xmllint).
pcmk_install() {
  local need=()
  for p in pacemaker corosync pacemaker-cli-utils resource-agents libxml2-utils python3-libnbd libnbd-bin jq iproute2 util-linux; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  # Debian's packages enable the units; on a host that runs systemd they
  # must not start a host-wide cluster beside ours.
  if [ -d /run/systemd/system ]; then
    systemctl stop pacemaker corosync >/dev/null 2>&1 || true
  fi
}

# Namespace of node i.
pcmk_ns() { echo "pk-${PCMK_NODES[$1]}"; }

# Two network namespaces joined by a veth pair.
pcmk_net_up() {
  pcmk_net_down
  local a b
  a=$(pcmk_ns 0)
  b=$(pcmk_ns 1)
  ip netns add "$a"
  ip netns add "$b"
  ip link add pkv0 type veth peer name pkv1
  ip link set pkv0 netns "$a"
  ip link set pkv1 netns "$b"
  ip -n "$a" addr add "${PCMK_IPS[0]}/$PCMK_NET" dev pkv0
  ip -n "$b" addr add "${PCMK_IPS[1]}/$PCMK_NET" dev pkv1
  for i in 0 1; do
    ip -n "$(pcmk_ns "$i")" link set lo up
    ip -n "$(pcmk_ns "$i")" link set "pkv$i" up
  done
}

pcmk_net_down() {
  local i
  for i in 0 1; do ip netns del "$(pcmk_ns "$i")" 2>/dev/null || true; done
}

# corosync.conf (knet over the veth, two_node: one node keeps quorum when
# the other dies; no quorum device), and a copy of the OCF agents with our
# own providers added (PCMK_PROVIDERS: "provider=dir ..."), bind-mounted
# over /usr/lib/ocf/resource.d in each node so the host stays untouched.
pcmk_cluster_files() {
  mkdir -p "$PCMK_STATE/etc-corosync"
  cp -r /etc/corosync/uidgid.d "$PCMK_STATE/etc-corosync/" 2>/dev/null || true
  cat >"$PCMK_STATE/etc-corosync/corosync.conf" <<EOF
totem {
  version: 2
  cluster_name: rep-test
  transport: knet
  crypto_cipher: none
  crypto_hash: none
  token: ${PCMK_TOKEN_MS:-1000}
}
nodelist {
  node {
    ring0_addr: ${PCMK_IPS[0]}
    name: ${PCMK_NODES[0]}
    nodeid: 1
  }
  node {
    ring0_addr: ${PCMK_IPS[1]}
    name: ${PCMK_NODES[1]}
    nodeid: 2
  }
}
quorum {
  provider: corosync_votequorum
  two_node: 1
}
logging {
  to_logfile: yes
  logfile: /var/log/corosync/corosync.log
  to_syslog: no
  to_stderr: no
  timestamp: on
}
EOF
  rm -rf "$PCMK_STATE/resource.d"
  cp -a /usr/lib/ocf/resource.d "$PCMK_STATE/resource.d"
  local pd
  for pd in ${PCMK_PROVIDERS:-}; do
    mkdir -p "$PCMK_STATE/resource.d/${pd%%=*}"
    cp -a "${pd#*=}"/. "$PCMK_STATE/resource.d/${pd%%=*}/"
  done
}

# Host PID of node i's PID 1 (empty when the node is down).
pcmk_init_pid() {
  local f="$PCMK_STATE/${PCMK_NODES[$1]}/init.pid" p
  [ -f "$f" ] || return 1
  p=$(cat "$f")
  kill -0 "$p" 2>/dev/null && echo "$p"
}

# Boots node i: fresh /run and /dev/shm (a reboot), kept /var/lib state.
pcmk_node_start() {
  local n=${PCMK_NODES[$1]} d="$PCMK_STATE/${PCMK_NODES[$1]}" u p
  rm -rf "$d/run"
  mkdir -p "$d/run" "$d/lib-pacemaker"/{cib,pengine,blackbox,cores} "$d/lib-corosync" \
    "$d/log/pacemaker" "$d/log/corosync"
  chown -R hacluster:haclient "$d/lib-pacemaker" "$d/log/pacemaker"
  ip netns exec "$(pcmk_ns "$1")" unshare -m -u -p -f --mount-proc --propagation private \
    bash "$PCMK_LIB" node-init "$n" "$PCMK_STATE" >>"$d/init.out" 2>&1 &
  u=$!
  for _ in $(seq 50); do
    p=$(pgrep -P "$u" || true)
    [ -n "$p" ] && break
    sleep 0.1
  done
  [ -n "$p" ] || { echo "node $n did not start" >&2; return 1; }
  echo "$p" >"$d/init.pid"
}

# Runs as PID 1 of a node: its mounts, Corosync, Pacemaker, then reaps
# orphans (bash reaps every child on SIGCHLD) until killed.
pcmk_node_init() {
  local n=$1 d="$2/$1" s=$2
  hostname "$n"
  mount --bind "$d/run" /run
  mount -t tmpfs -o mode=1777 tmpfs /dev/shm
  mount --bind "$d/lib-pacemaker" /var/lib/pacemaker
  mount --bind "$d/lib-corosync" /var/lib/corosync
  mount --bind "$d/log" /var/log
  mount --bind "$s/etc-corosync" /etc/corosync
  mount --bind "$s/resource.d" /usr/lib/ocf/resource.d
  corosync || exit 1
  pacemakerd >/var/log/pacemakerd.out 2>&1 &
  while :; do
    sleep 3600 &
    wait $!
  done
}

# Runs a command inside node i (its namespaces).
pcmk_in() {
  local i=$1 p
  shift
  p=$(pcmk_init_pid "$i") || { echo "node ${PCMK_NODES[$i]} is down" >&2; return 1; }
  nsenter -t "$p" -n -m -u -p -- "$@"
}

# Host PIDs of every process of node i (those in its PID namespace).
pcmk_pids() {
  local p ns q
  p=$(pcmk_init_pid "$1") || return 0
  ns=$(readlink "/proc/$p/ns/pid")
  for q in /proc/[0-9]*; do
    [ "$(readlink "$q/ns/pid" 2>/dev/null)" = "$ns" ] && echo "${q#/proc/}"
  done
}

# SIGKILL node i: every process of the node at once (its corosync,
# pacemaker daemons, repd and services), named in the output, like a
# power cut.
pcmk_node_kill() {
  local p q comm pids=() names=()
  p=$(pcmk_init_pid "$1") || return 0
  for q in $(pcmk_pids "$1"); do
    # A process may be gone already (an action that just ended).
    comm=$(cat "/proc/$q/comm" 2>/dev/null) || continue
    pids+=("$q")
    names+=("$comm($q)")
  done
  echo "  kill -9 on ${PCMK_NODES[$1]}: ${names[*]}"
  kill -9 "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  rm -f "$PCMK_STATE/${PCMK_NODES[$1]}/init.pid"
}

# crm_mon's XML from node i.
pcmk_mon_xml() { pcmk_in "$1" crm_mon -1 --output-as=xml 2>/dev/null; }

# An XPath string over node i's crm_mon XML.
pcmk_xpath() {
  pcmk_mon_xml "$1" | xmllint --xpath "string($2)" - 2>/dev/null
}

# Wait (up to $2 s) until node i's Pacemaker sees both nodes online and a DC.
pcmk_wait_online() {
  local i=$1 secs=${2:-120} t=0
  while [ "$t" -lt "$secs" ]; do
    if [ "$(pcmk_xpath "$i" 'count(//nodes/node[@online="true"])')" = 2 ] &&
      [ "$(pcmk_xpath "$i" '//current_dc/@present')" = true ]; then
      return 0
    fi
    sleep 1
    t=$((t + 1))
  done
  echo "cluster not online after ${secs}s" >&2
  return 1
}

# pcmk_cib_rep_clone CONFIG_DIR REPCTL: the cluster options of the tests (no
# STONITH, no throttling on two shared cores, some stickiness) and the
# promotable clone of ocf:rep:rep for resource r0 (id rep-clone).
pcmk_cib_rep_clone() {
  local config_dir=$1 repctl=$2
  pcmk_in 0 crm_attribute -t crm_config -n stonith-enabled -v false
  # Two shared cores under load: do not throttle the transitions.
  pcmk_in 0 crm_attribute -t crm_config -n load-threshold -v 1000%
  pcmk_in 0 crm_attribute -t rsc_defaults -n resource-stickiness -v 100
  pcmk_in 0 cibadmin --create -o resources --xml-text "
<clone id='rep-clone'>
  <meta_attributes id='rep-clone-meta'>
    <nvpair id='rep-clone-promotable' name='promotable' value='true'/>
    <nvpair id='rep-clone-promoted-max' name='promoted-max' value='1'/>
    <nvpair id='rep-clone-promoted-node-max' name='promoted-node-max' value='1'/>
    <nvpair id='rep-clone-clone-max' name='clone-max' value='2'/>
    <nvpair id='rep-clone-clone-node-max' name='clone-node-max' value='1'/>
    <nvpair id='rep-clone-notify' name='notify' value='true'/>
  </meta_attributes>
  <primitive id='rep' class='ocf' provider='rep' type='rep'>
    <instance_attributes id='rep-ia'>
      <nvpair id='rep-resource' name='resource' value='r0'/>
      <nvpair id='rep-config-dir' name='config_dir' value='$config_dir'/>
      <nvpair id='rep-repctl' name='repctl' value='$repctl'/>
    </instance_attributes>
    <operations>
      <op id='rep-monitor-promoted' name='monitor' interval='3s' role='Promoted' timeout='20s'/>
      <op id='rep-monitor-unpromoted' name='monitor' interval='4s' role='Unpromoted' timeout='20s'/>
      <op id='rep-start' name='start' interval='0s' timeout='60s'/>
      <op id='rep-stop' name='stop' interval='0s' timeout='60s'/>
      <op id='rep-promote' name='promote' interval='0s' timeout='60s'/>
      <op id='rep-demote' name='demote' interval='0s' timeout='60s'/>
    </operations>
  </primitive>
</clone>"
}

# Kill both nodes and remove the namespaces (keeps PCMK_STATE for logs).
pcmk_cleanup() {
  local i
  for i in 0 1; do pcmk_node_kill "$i" >/dev/null; done
  pcmk_net_down
}

if [ "${BASH_SOURCE[0]}" = "$0" ] && [ "${1:-}" = node-init ]; then
  pcmk_node_init "$2" "$3"
fi
