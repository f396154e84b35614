#!/usr/bin/env bash
# Writes the man pages and shell completions into OUTDIR:
#   OUTDIR/man8/{repctl,repd,cluster-agent}*.8   (from the clap definitions)
#   OUTDIR/man5/rep.toml.5                       (by hand: ublk-target/man/)
#   OUTDIR/completions/{bash,zsh,fish}/...
# Each binary writes its own with the hidden `--generate-docs DIR`. The
# binaries are taken from $REP_BIN (a folder holding all three) or built
# here in release mode. scripts/package.sh (issue 18) uses it.
#
# Usage: scripts/gen-docs.sh OUTDIR
set -euo pipefail

if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=
if [ -n "${REP_BIN:-}" ]; then
  bin=$(cd "$REP_BIN" 2>/dev/null && pwd) || bin=$REP_BIN
fi
cd "$(dirname "$0")/.."

if [ -z "$bin" ]; then
  cargo build -q --release -p ublk-target --bin repctl --bin repd -p cluster-agent --bin cluster-agent
  bin=${CARGO_TARGET_DIR:-target}/release
fi

for b in repctl repd cluster-agent; do
  if [ ! -x "$bin/$b" ]; then
    echo "gen-docs: $bin/$b is missing (set REP_BIN to the folder of the binaries)" >&2
    exit 1
  fi
  "$bin/$b" --generate-docs "$out"
done
mkdir -p "$out/man5"
cp ublk-target/man/rep.toml.5 "$out/man5/rep.toml.5"
echo "gen-docs: man pages and completions in $out"
