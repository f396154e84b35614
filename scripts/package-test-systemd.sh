#!/usr/bin/env bash
# Boots ROOT (a Debian 12 userspace with the rep package installed, made by
# scripts/package-test.sh) as a container with systemd as PID 1
# (systemd-nspawn, own network namespace) and drives the units as an admin
# would: rep@r0 starts (Type=notify: READY once repctl answers, STATUS=),
# kill -9 of repd is followed by a restart, two resources share /run/rep,
# `systemctl stop` and `repctl down` leave a unit stopped and not failed,
# rep.target starts and stops every enabled resource, rep-agent@r0 starts
# after rep@r0 and outlives a crash of repd, and repd gets its private mount
# namespace through the sandbox. The node name comes from /etc/rep/r0.env
# (REP_NODE).
#
# There is no ublk_drv here (the container shares the host's kernel): repd
# serves the NBD export only. The VM scenario (vm-tests) covers /dev/ublkbN
# under systemd.
#
# Usage: scripts/package-test-systemd.sh ROOT   (as root; prints ok/FAIL lines,
# exit status 1 when a check failed)
set -euo pipefail
root=$(cd "$1" && pwd)

failures=0
check() { # check WHAT COMMAND...
  local what=$1 log
  shift
  if log=$("$@" 2>&1); then
    echo "ok   $what"
  else
    echo "FAIL $what"
    printf '%s\n' "$log" | tail -n 20 | sed 's/^/     /'
    failures=$((failures + 1))
  fi
}

# Two resources from the package's example, for node "alpha" on a host
# named otherwise; disks in /var/lib/rep.
mkdir -p "$root/etc/rep" "$root/var/lib/rep"
echo nsbox >"$root/etc/hostname"
cp "$root/usr/share/doc/rep/examples/r0.toml" "$root/etc/rep/r0.toml"
sed -e 's/name = "r0"/name = "r1"/' -e 's/:7788"/:7798"/; s/:7789"/:7799"/; s/:10809"/:10819"/; s/:10810"/:10820"/' \
  -e 's|/var/lib/rep/alpha.img|/var/lib/rep/r1-alpha.img|' "$root/etc/rep/r0.toml" >"$root/etc/rep/r1.toml"
for r in r0 r1; do
  echo "REP_NODE=alpha" >"$root/etc/rep/$r.env"
done
truncate -s 64M "$root/var/lib/rep/alpha.img" "$root/var/lib/rep/r1-alpha.img"
for r in r0 r1; do
  chroot "$root" repctl --node alpha create-md "$r" >/dev/null
done

log=$root.nspawn.log
systemd-nspawn --quiet --register=no --keep-unit --private-network -D "$root" -b \
  --console=read-only >"$log" 2>&1 &
nspawn=$!
stop_container() {
  if kill -0 "$nspawn" 2>/dev/null; then
    in_ct systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do
      kill -0 "$nspawn" 2>/dev/null || break
      sleep 0.2
    done
    kill "$nspawn" 2>/dev/null || true
    wait "$nspawn" 2>/dev/null || true
  fi
}
trap stop_container EXIT

# The container's PID 1, once it has one.
pid1=
for _ in $(seq 1 100); do
  pid1=$(pgrep -P "$nspawn" -x systemd || true)
  [ -n "$pid1" ] && break
  sleep 0.2
done
if [ -z "$pid1" ]; then
  echo "FAIL systemd-nspawn did not boot $root; its output:"
  tail -n 20 "$log" | sed 's/^/     /'
  exit 1
fi
in_ct() { timeout 60 nsenter -t "$pid1" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
booted() {
  local state
  for _ in $(seq 1 150); do
    state=$(in_ct systemctl is-system-running 2>/dev/null || true)
    case $state in running | degraded) return 0 ;; esac
    sleep 0.2
  done
  echo "system state: $state"
  return 1
}
check "systemd boots in the container" booted

prop() { in_ct systemctl show "$1" -p "$2" --value; }
# repctl as the package README uses it: resource files in /etc/rep, the
# resource by name (the node by --node: the host is not called alpha).
rc() { in_ct repctl --node alpha "$@"; }
started_and_answers() {
  in_ct systemctl start rep@r0 || return 1
  # Type=notify: start returned after READY=1, so repctl must answer now.
  rc status r0 >/dev/null && prop rep@r0.service StatusText | grep -q '^Secondary, '
}
check "systemctl start rep@r0: active, repctl answers at once, STATUS= says Secondary" started_and_answers

restarted_after_kill9() {
  local old new restarts
  old=$(prop rep@r0.service MainPID)
  restarts=$(prop rep@r0.service NRestarts)
  in_ct sh -c "kill -9 $old"
  for _ in $(seq 1 100); do
    new=$(prop rep@r0.service MainPID)
    if [ "$(prop rep@r0.service NRestarts)" = $((restarts + 1)) ] && [ "$new" != 0 ] && [ "$new" != "$old" ] &&
      [ "$(prop rep@r0.service ActiveState)" = active ]; then
      rc status r0 >/dev/null && return 0
    fi
    sleep 0.2
  done
  in_ct systemctl status rep@r0 --no-pager
  return 1
}
check "kill -9 of repd: systemd restarts rep@r0 (Restart=on-failure) and it answers" restarted_after_kill9

stopped_cleanly() { # UNIT: inactive, result success, no restart pending
  [ "$(prop "$1" ActiveState)" = inactive ] && [ "$(prop "$1" Result)" = success ]
}
two_share_run_dir() {
  in_ct systemctl start rep@r1 || return 1
  in_ct systemctl stop rep@r0 || return 1
  stopped_cleanly rep@r0.service &&
    # RuntimeDirectoryPreserve: r0's stop left /run/rep and r1's socket.
    rc status r1 >/dev/null
}
check "rep@r1 beside rep@r0; systemctl stop rep@r0: stopped cleanly, r1 still answers" two_share_run_dir
status_all() { # `repctl status` shows every resource of /etc/rep, running or not
  local out
  out=$(rc status) || true
  printf '%s\n' "$out" | grep -q '^r0 ' && printf '%s\n' "$out" | grep -q '^r1 ' || {
    printf '%s\n' "$out"
    return 1
  }
}
check "repctl status: r0 (stopped) and r1 (running) both shown" status_all
down_stays_down() {
  rc down r1 >/dev/null || return 1
  sleep 3 # RestartSec is 2 s: a restart would have happened by now
  stopped_cleanly rep@r1.service && [ "$(prop rep@r1.service NRestarts)" = 0 ]
}
check "repctl down r1: repd exits 0, the unit stays stopped (no restart)" down_stays_down

target_all() {
  in_ct systemctl enable rep@r0 rep@r1 >/dev/null 2>&1 || return 1
  in_ct systemctl start rep.target || return 1
  # The target is ordered after what it wants: started means both ready.
  in_ct systemctl is-active rep@r0 rep@r1 || return 1
  # PartOf= stops both; the target itself stops first (reverse order), so
  # systemctl may return while they are still shutting down.
  in_ct systemctl stop rep.target || return 1
  for _ in $(seq 1 100); do
    stopped_cleanly rep@r0.service && stopped_cleanly rep@r1.service && return 0
    sleep 0.2
  done
  in_ct systemctl status rep@r0 rep@r1 --no-pager
  return 1
}
check "rep.target starts and stops every enabled resource" target_all

# The agent needs a [cluster] table (and no resume-after-crash of repd's own).
agent() {
  sed -i '/^resume-after-crash/d' "$root/etc/rep/r0.toml"
  cat >>"$root/etc/rep/r0.toml" <<'EOF'

[cluster]
auth-key = "package test"
[[cluster.path]]
node = "alpha"
bind = "127.0.0.1:7694"
[[cluster.path]]
node = "beta"
bind = "127.0.0.1:7695"
EOF
  # Starting the agent starts repd first (Wants=, After=).
  in_ct systemctl start rep-agent@r0 || return 1
  in_ct systemctl is-active rep@r0 rep-agent@r0 >/dev/null || return 1
  for _ in $(seq 1 50); do
    in_ct cluster-agent --config /etc/rep/r0.toml --node alpha status 2>&1 | grep -q 'local repd: Secondary' &&
      return 0
    sleep 0.2
  done
  in_ct cluster-agent --config /etc/rep/r0.toml --node alpha status
  return 1
}
check "systemctl start rep-agent@r0 starts rep@r0 first; the agent sees repd" agent
agent_survives_repd_crash() {
  local agent
  agent=$(prop rep-agent@r0.service MainPID)
  [ "$agent" != 0 ] || return 1
  restarted_after_kill9 || return 1
  # The agent was not restarted along with repd (its heartbeats go on).
  [ "$(prop rep-agent@r0.service MainPID)" = "$agent" ] || {
    echo "the agent's pid changed from $agent to $(prop rep-agent@r0.service MainPID)"
    return 1
  }
}
check "kill -9 of repd under the agent: repd restarted, the agent kept running" agent_survives_repd_crash

# repd enters a private mount namespace of its own when ublk_drv is there
# (unshare + MS_PRIVATE): RestrictNamespaces=mnt, the capability set and the
# unit's other sandboxing must let it. A stand-in /dev/ublk-control (an empty
# file: ublk itself then fails, logged) makes repd take that path here.
private_mounts() {
  in_ct touch /dev/ublk-control || return 1
  echo "REP_LOG=debug" >>"$root/etc/rep/r0.env"
  in_ct systemctl restart rep@r0 || return 1
  local log
  for _ in $(seq 1 50); do
    log=$(in_ct journalctl -u rep@r0 --no-pager -o cat -n 200)
    if printf '%s\n' "$log" | grep -q 'running in a private mount namespace'; then
      ! printf '%s\n' "$log" | grep -E 'cannot enter a private mount namespace|cannot make the mounts'
      return
    fi
    sleep 0.2
  done
  printf '%s\n' "$log" | tail -n 20
  return 1
}
check "under the unit's hardening repd enters its private mount namespace" private_mounts
in_ct rm -f /dev/ublk-control

stop_container
trap - EXIT
if [ "$failures" -gt 0 ]; then
  echo "package-test-systemd: $failures check(s) failed; the container's console: $log" >&2
  exit 1
fi
