#!/usr/bin/env bash
# Runs every test of the project: lints, unit and property tests, the seeded
# simulators, and the integration tests that drive repctl/repd with real tools.
# Installs what it needs first (Debian packages), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# The VM tests need qemu-system-x86 from Debian; installing it replaces a
# newer qemu-utils some images ship with its own version, so it goes first
# and qemu-utils (qemu-io) is checked after it.
if [ -f scripts/vm-setup.sh ]; then
  bash scripts/vm-setup.sh
fi

need_pkgs=()
for p in libnbd-bin nbdkit fio qemu-utils iproute2 libclang-dev e2fsprogs iputils-ping jq man-db \
  prometheus python3-prometheus-client debootstrap systemd-container binutils openssl tcpdump dmsetup \
  libssl-dev pkg-config gnutls-bin; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "== installing ${need_pkgs[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "missing packages: ${need_pkgs[*]} (run as root or install them)" >&2
    exit 1
  fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== module imports without cycles, no source file over 1,200 lines, docs name only paths that exist"
python3 scripts/check-module-cycles.py
bash scripts/check-file-sizes.sh
bash scripts/check-doc-paths.sh
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings
echo "== release build of repd, repctl and cluster-agent (the VM scenarios run them)"
cargo build --release -p ublk-target -p cluster-agent --bins
export REP_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
echo "== cargo test"
cargo test --workspace
echo "== simulator: 2000 more seeds (release build)"
cargo run -q -p replication-proto --release --features sim --bin repsim -- --from 200 --seeds 2000
echo "== agent simulator: 2000 more seeds (release build)"
cargo run -q -p cluster-agent --release --features sim --bin agentsim -- --from 260 --seeds 2000
echo "== Debian package: build it, install it in a clean Debian 12 chroot (debootstrap, cached), check it"
bash scripts/package-test.sh
echo "== Pacemaker: ocf/rep under ocf-tester and in a real two-node Pacemaker + Corosync cluster"
bash scripts/pacemaker-test.sh
echo "== fencing the Pacemaker way: crm-fence-peer in a real two-node Pacemaker cluster (installs pacemaker, corosync)"
bash scripts/pacemaker-fence-test.sh
