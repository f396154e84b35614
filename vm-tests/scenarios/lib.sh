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
