#!/usr/bin/env bash
# The demo itself: two nodes, each in its own network namespace (two
# "machines" joined by a veth link), one replicated disk, ext4 on
# /dev/ublkb0, a failover, and the data checked on the other side.
# Runs as root on a kernel with ublk_drv: natively, or inside the VM that
# scripts/demo.sh boots. Needs repd/repctl in $REP_BIN.
set -euo pipefail

REP_BIN=${REP_BIN:?set REP_BIN to the directory holding repd and repctl}
WORK=${DEMO_WORK:-/run/rep-demo}
SIZE=${DEMO_SIZE:-256M}
NS=(rep-demo-alpha rep-demo-beta)
IP=(10.99.0.1 10.99.0.2)
T0=$SECONDS

step() { printf '\n\033[1m== [%3ss] %s\033[0m\n' "$((SECONDS - T0))" "$*"; }
repctl() { # repctl NODE ARGS...
  local n=$1; shift
  ip netns exec "rep-demo-$n" "$REP_BIN/repctl" --config "$WORK/r0.toml" --node "$n" --run-dir "$WORK/run" "$@"
}
state() { repctl "$1" status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["role"], s["connection"], s["disk"]+"/"+s["peer_disk"])'; }
wait_for() { # wait_for NODE "expected state words" SECONDS
  local n=$1 want=$2 secs=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    [[ "$(state "$n")" == *"$want"* ]] && return 0
    sleep 0.1
  done
  echo "demo: $n did not reach '$want': $(state "$n")" >&2
  repctl "$n" status >&2 || true
  return 1
}
cleanup() {
  set +e
  mountpoint -q "$WORK/mnt-alpha" && umount "$WORK/mnt-alpha"
  mountpoint -q "$WORK/mnt-beta" && umount "$WORK/mnt-beta"
  for n in beta alpha; do repctl "$n" down >/dev/null 2>&1; done
  for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
}
trap cleanup EXIT

[ -c /dev/ublk-control ] || modprobe ublk_drv
step "two machines: network namespaces ${NS[*]} joined by veth (${IP[0]} <-> ${IP[1]})"
cleanup
mkdir -p "$WORK/run" "$WORK/mnt-alpha" "$WORK/mnt-beta"
for i in 0 1; do ip netns add "${NS[$i]}"; ip -n "${NS[$i]}" link set lo up; done
ip link add rep-demo-a type veth peer name rep-demo-b
ip link set rep-demo-a netns "${NS[0]}"
ip link set rep-demo-b netns "${NS[1]}"
ip -n "${NS[0]}" addr add "${IP[0]}/24" dev rep-demo-a && ip -n "${NS[0]}" link set rep-demo-a up
ip -n "${NS[1]}" addr add "${IP[1]}/24" dev rep-demo-b && ip -n "${NS[1]}" link set rep-demo-b up

step "the resource file, identical on both nodes (like drbd.conf)"
rm -f "$WORK/alpha.img" "$WORK/beta.img"
truncate -s "$SIZE" "$WORK/alpha.img" "$WORK/beta.img"
cat >"$WORK/r0.toml" <<EOF
[resource]
name = "r0"
protocol = "C"
[net]
secret = "demo-secret"
timeout-ms = 2000
ping-int-ms = 500
[sync]
rate = "0"
[[node]]
name = "alpha"
address = "${IP[0]}:7788"
disk = "$WORK/alpha.img"
meta-disk = "internal"
device = 0
[[node]]
name = "beta"
address = "${IP[1]}:7788"
disk = "$WORK/beta.img"
meta-disk = "internal"
device = 1
EOF
cat "$WORK/r0.toml"

step "create-md and up on both nodes, primary --force on alpha (initial full sync)"
repctl alpha create-md >/dev/null
repctl beta create-md >/dev/null
repctl alpha up >/dev/null
repctl beta up >/dev/null
repctl alpha primary --force >/dev/null
wait_for alpha "Primary Connected UpToDate/UpToDate" 120
wait_for beta "Secondary Connected UpToDate/UpToDate" 60
repctl alpha status

step "mkfs.ext4 on alpha's /dev/ublkb0 (beta, the Secondary, has no device: mkfs there fails)"
for i in $(seq 50); do [ -b /dev/ublkb0 ] && break; sleep 0.1; done
if mkfs.ext4 -q /dev/ublkb1 2>/dev/null; then echo "demo: mkfs on the Secondary succeeded?!" >&2; exit 1; fi
echo "mkfs.ext4 /dev/ublkb1 (beta, Secondary): refused, as DRBD refuses it"
mkfs.ext4 -q -F /dev/ublkb0
mount /dev/ublkb0 "$WORK/mnt-alpha"
step "write a tree of files on alpha and record their checksums"
mkdir -p "$WORK/mnt-alpha/data"
cp -r /usr/share/doc/bash /usr/share/doc/coreutils "$WORK/mnt-alpha/data/" 2>/dev/null || true
head -c 20M /dev/urandom >"$WORK/mnt-alpha/data/random.bin"
(cd "$WORK/mnt-alpha" && find data -type f -print0 | sort -z | xargs -0 sha256sum) >"$WORK/sums.txt"
echo "$(wc -l <"$WORK/sums.txt") files, $(du -sh "$WORK/mnt-alpha/data" | cut -f1)"
umount "$WORK/mnt-alpha"
repctl alpha status | sed -n '1,6p'

step "alpha dies: kill -9 of its repd"
pid=$(repctl alpha status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
kill -9 "$pid"
wait_for beta "Secondary Connecting UpToDate" 30
repctl beta status | sed -n '1,4p'

step "failover: beta becomes Primary, mounts /dev/ublkb1, checks every file"
repctl beta primary >/dev/null
for i in $(seq 50); do [ -b /dev/ublkb1 ] && break; sleep 0.1; done
e2fsck -fn /dev/ublkb1 >/dev/null && echo "e2fsck: clean"
mount /dev/ublkb1 "$WORK/mnt-beta"
(cd "$WORK/mnt-beta" && sha256sum --quiet -c "$WORK/sums.txt") && echo "all $(wc -l <"$WORK/sums.txt") files intact on beta"
echo "written on beta after the failover" >"$WORK/mnt-beta/data/after-failover.txt"
sync

step "alpha comes back: it rejoins as Secondary and resyncs what it missed"
repctl alpha up >/dev/null
wait_for alpha "Secondary Connected UpToDate/UpToDate" 120
repctl alpha status
umount "$WORK/mnt-beta"
step "done: the data survived the failover (total $((SECONDS - T0)) s)"
