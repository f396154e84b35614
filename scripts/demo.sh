#!/usr/bin/env bash
# The README's first command: a two-node replicated device with ext4 on
# /dev/ublkb0, a failover, and the data checked afterwards.
#
# Natively when this kernel has ublk_drv and we are root; otherwise inside a
# VM (QEMU, Debian's 6.12 kernel) that scripts/vm-setup.sh prepares.
#   bash scripts/demo.sh            # pick automatically
#   bash scripts/demo.sh --vm       # always in the VM
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

mode=auto
[ "${1:-}" = "--vm" ] && mode=vm

if ! command -v cargo >/dev/null; then
  echo "demo: cargo is needed to build repd and repctl" >&2
  exit 1
fi
if ! dpkg -s libclang-dev >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
fi
echo "demo: building repd and repctl (release)"
cargo build -q --release -p ublk-target --bins
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"

native=0
if [ "$mode" = auto ] && [ "$(id -u)" = 0 ]; then
  if [ -c /dev/ublk-control ] || modprobe ublk_drv 2>/dev/null; then
    native=1
  fi
fi

if [ "$native" = 1 ]; then
  echo "demo: this kernel has ublk_drv: running natively"
  REP_BIN="$BIN" bash scripts/demo-node-pair.sh
else
  echo "demo: no ublk_drv here (or --vm): running inside a VM"
  bash scripts/vm-setup.sh
  bash scripts/vm-run.sh -- "REP_BIN='$BIN' DEMO_WORK=/run/vm-scratch/demo bash '$REPO/scripts/demo-node-pair.sh'"
fi
