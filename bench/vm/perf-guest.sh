#!/usr/bin/env bash
# Where the guest's CPU goes during vm-bench's fio jobs: runs
# vm-bench-guest.sh with every fio job wrapped in `perf record -a -g`
# (cpu-clock: TCG has no hardware counters) and leaves, per workload, the
# profile and two reports in $VM_WORK: perf.<workload>.comm.txt (share per
# thread name) and perf.<workload>.top.txt (top symbols per thread). Runs
# INSIDE the VM; needs perf (Debian linux-perf) on the host's userspace:
#
#   bash scripts/vm-run.sh --mem 6G --work /tmp/prof -- \
#     'export REP_BIN=$PWD/target/release VMB_TARGETS=ours; bash bench/vm/perf-guest.sh'
#
# VMB_* variables as for vm-bench-guest.sh. Profiles are for finding where
# time goes, not for figures: sampling costs the guest a few per cent.
set -u
command -v perf >/dev/null || { echo "perf-guest: no perf (apt-get install linux-perf)" >&2; exit 1; }
fio() {
  local name="" a rc
  for a in "$@"; do case "$a" in --name=*) name=${a#--name=} ;; esac; done
  [ -n "$name" ] || { command fio "$@"; return; }
  perf record -a -g -F 299 -e cpu-clock -o "$VM_WORK/perf.$name.data" -- fio "$@" 2>"$VM_WORK/perf.$name.record.log"
  rc=$?
  perf report -i "$VM_WORK/perf.$name.data" --no-children --sort comm --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -20 >"$VM_WORK/perf.$name.comm.txt"
  perf report -i "$VM_WORK/perf.$name.data" --no-children --sort comm,dso,sym --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -60 >"$VM_WORK/perf.$name.top.txt"
  return $rc
}
export -f fio
exec bash "$(dirname "$0")/vm-bench-guest.sh"
