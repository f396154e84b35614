#!/usr/bin/env bash
# Builds the Debian package: target/debian/rep_<version>_amd64.deb with
#   /usr/sbin/{repd,repctl,cluster-agent}      release build, debug info stripped
#   /usr/lib/systemd/system/{rep@.service,rep-agent@.service,rep.target}
#   /usr/lib/modules-load.d/rep.conf           loads ublk_drv at boot
#   /usr/share/man/man8/*.8.gz, man5/rep.toml.5.gz     (scripts/gen-docs.sh)
#   bash, zsh and fish completions in their vendor directories
#   /usr/share/doc/rep/{README.md,copyright,changelog.gz,examples/}
# No file in /etc: the resource files are the admin's (examples only), so
# there are no conffiles to carry over upgrades.
#
# dpkg-deb, not cargo-deb: it is on every Debian host already (nothing to
# download or build in CI), and the tree below is all a binary package is.
# The version is the workspace's (Cargo.toml [workspace.package]).
#
# Usage: scripts/package.sh    REP_BIN=DIR: package these binaries (no build)
#                               REP_MAINTAINER="Name <mail>": the Maintainer field
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')
arch=$(dpkg --print-architecture)
# Who answers for this build (the control file and the changelog).
maintainer=${REP_MAINTAINER:-rep developers <rep@localhost>}
out=${CARGO_TARGET_DIR:-$root/target}/debian
stage=$out/rep_${version}_${arch}
deb=$out/rep_${version}_${arch}.deb

# bash: completions/NAME; zsh: vendor-completions/_NAME; fish: NAME.fish.
install_completions() {
  local from=$1 to=$2
  mkdir -p "$to/usr/share/bash-completion/completions" "$to/usr/share/zsh/vendor-completions" \
    "$to/usr/share/fish/vendor_completions.d"
  install -m 0644 "$from"/bash/* "$to/usr/share/bash-completion/completions/"
  install -m 0644 "$from"/zsh/_* "$to/usr/share/zsh/vendor-completions/"
  install -m 0644 "$from"/fish/*.fish "$to/usr/share/fish/vendor_completions.d/"
}

# The newest glibc symbol version the binaries use: libc6 (>= that).
glibc_min() {
  objdump -T "$@" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1
}

control_file() {
  local version=$1 arch=$2 stage=$3 size
  size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
  cat <<EOC
Package: rep
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: libc6 (>= $(glibc_min "$stage"/usr/sbin/*)), libgcc-s1 (>= 4.2), libssl3 (>= 3.0.0)
Recommends: jq
Suggests: nbd-client, libnbd-bin, iputils-ping, pacemaker, resource-agents
Section: admin
Priority: optional
Description: replicated block device on ublk (DRBD 8.4 + heartbeat in Rust)
 Two machines keep one disk: the Primary exposes /dev/ublkbN (and an NBD
 export), writes each block locally and streams it to the Secondary, with
 DRBD's protocols A/B/C, activity log, dirty bitmap, resync, online verify
 and split-brain policies. The cluster agent moves the Primary role and the
 services on top of it (filesystems, IP addresses, LSB scripts) when a node
 dies, like heartbeat.
 .
 This package holds repd (the daemon of one resource), repctl (its
 drbdadm), cluster-agent, the systemd units rep@.service,
 rep-agent@.service and rep.target, the Pacemaker resource agent
 ocf:rep:rep (it needs jq), man pages and shell completions. See
 /usr/share/doc/rep/README.md to set up a resource.
EOC
}

changelog() {
  cat <<EOC
rep ($1) unstable; urgency=medium

  * Built from the rep source tree by scripts/package.sh.

 -- $maintainer  $(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
EOC
}

if [ -n "${REP_BIN:-}" ]; then
  bin=$(cd "$REP_BIN" && pwd)
else
  echo "== release build of repd, repctl, cluster-agent"
  cargo build -q --release -p ublk-target --bin repctl --bin repd -p cluster-agent --bin cluster-agent
  bin=${CARGO_TARGET_DIR:-$root/target}/release
fi

rm -rf "$stage"
mkdir -p "$stage/DEBIAN" "$stage/usr/sbin" "$stage/usr/lib/systemd/system" \
  "$stage/usr/lib/modules-load.d" "$stage/usr/share/doc/rep/examples"

# Binaries: the release profile keeps line tables (debug = 1) for
# backtraces during development; the package strips them as Debian policy
# asks (dh_strip's options), which also drops the symbol names that a
# backtrace would show (build with `cargo build --release` to get them).
for b in repd repctl cluster-agent; do
  install -m 0755 "$bin/$b" "$stage/usr/sbin/$b"
  strip --remove-section=.comment --remove-section=.note --strip-unneeded "$stage/usr/sbin/$b"
done

install -m 0644 ublk-target/systemd/rep@.service ublk-target/systemd/rep.target \
  cluster-agent/systemd/rep-agent@.service "$stage/usr/lib/systemd/system/"
# The OCF resource agent for Pacemaker (ocf:rep:rep), where Pacemaker looks
# for providers' agents.
install -D -m 0755 ocf/rep "$stage/usr/lib/ocf/resource.d/rep/rep"
# repd's Pacemaker fencing handlers ([handlers] fence-peer, unfence-peer),
# where the resource file's examples name them.
install -D -m 0755 ocf/crm-fence-peer "$stage/usr/lib/rep/crm-fence-peer"
install -D -m 0755 ocf/crm-unfence-peer "$stage/usr/lib/rep/crm-unfence-peer"
printf '# /dev/ublk-control for repd (rep package)\nublk_drv\n' >"$stage/usr/lib/modules-load.d/rep.conf"
chmod 0644 "$stage/usr/lib/modules-load.d/rep.conf"

# Man pages and completions from the binaries themselves.
docs=$out/docs
rm -rf "$docs"
REP_BIN=$bin bash scripts/gen-docs.sh "$docs" >/dev/null
mkdir -p "$stage/usr/share/man/man8" "$stage/usr/share/man/man5"
for f in "$docs"/man8/*.8; do
  gzip -9n <"$f" >"$stage/usr/share/man/man8/$(basename "$f").gz"
done
gzip -9n <"$docs/man5/rep.toml.5" >"$stage/usr/share/man/man5/rep.toml.5.gz"
install_completions "$docs/completions" "$stage"

# Documentation and examples.
install -m 0644 packaging/README.md "$stage/usr/share/doc/rep/README.md"
crates=$(python3 packaging/crate-licenses.py)
python3 -c 'import sys; t = open(sys.argv[1]).read(); sys.stdout.write(t.replace(" @CRATES@\n", sys.argv[2] + "\n"))' \
  packaging/copyright "$crates" >"$stage/usr/share/doc/rep/copyright"
chmod 0644 "$stage/usr/share/doc/rep/copyright"
install -m 0644 ublk-target/examples/r0.toml cluster-agent/examples/r0-cluster.toml \
  packaging/rep.env "$stage/usr/share/doc/rep/examples/"
changelog "$version" | gzip -9n >"$stage/usr/share/doc/rep/changelog.gz"

# Maintainer scripts and control file.
install -m 0755 packaging/postinst packaging/postrm "$stage/DEBIAN/"
control_file "$version" "$arch" "$stage" >"$stage/DEBIAN/control"
(cd "$stage" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"

dpkg-deb --build --root-owner-group -Zxz "$stage" "$deb" >/dev/null
echo "package: $deb ($(du -h "$deb" | cut -f1))"
