#!/usr/bin/env bash
# Installs the Debian package in a clean Debian 12 userspace (a debootstrap
# chroot with systemd and man-db) and checks what a user gets: the binaries
# run, the units pass `systemd-analyze verify`, `man repctl` and
# `man 5 rep.toml` render, the completions load, the examples are there,
# and `dpkg -r` / `dpkg -P` leave nothing behind.
#
# The chroot: `debootstrap --variant=minbase --include=systemd,man-db
# bookworm` (about 35 s with a fast mirror), kept as a tarball in
# target/debian/ so that reruns only unpack it (a few seconds). No systemd
# runs in a chroot, so the units are verified there, then the chroot is
# booted with systemd-nspawn and scripts/package-test-systemd.sh starts,
# kills and stops them under a real systemd (no ublk_drv there: the VM
# scenario in vm-tests covers /dev/ublkbN under systemd).
#
# Usage: scripts/package-test.sh     (as root; REP_BIN=DIR packages those binaries)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "package-test: needs root (chroot, dpkg)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
  echo "== installing debootstrap, systemd-container"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap systemd-container >/dev/null
fi

out=${CARGO_TARGET_DIR:-$PWD/target}/debian
mkdir -p "$out"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
boot_args="--variant=minbase --include=systemd,man-db bookworm"
cache=$out/chroot-cache.tar
root=$out/chroot

bash scripts/package.sh
version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')
deb=$out/rep_${version}_$(dpkg --print-architecture).deb

# The cached userspace, made again when the debootstrap arguments change.
if [ ! -f "$cache" ] || [ "$(cat "$cache.args" 2>/dev/null)" != "$boot_args" ]; then
  echo "== debootstrap $boot_args (cached in $cache)"
  rm -rf "$out/bootstrap.tmp"
  t0=$(date +%s)
  # shellcheck disable=SC2086 # the arguments are words
  debootstrap $boot_args "$out/bootstrap.tmp" "$mirror" >"$out/debootstrap.log" 2>&1 || {
    tail -n 20 "$out/debootstrap.log" >&2
    exit 1
  }
  echo "   took $(($(date +%s) - t0)) s"
  tar -C "$out/bootstrap.tmp" -cf "$cache.tmp" .
  mv "$cache.tmp" "$cache"
  echo "$boot_args" >"$cache.args"
  rm -rf "$out/bootstrap.tmp"
fi

rm -rf "$root"
mkdir -p "$root"
tar -C "$root" -xf "$cache"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

failures=0
check() { # check WHAT COMMAND...: runs it, prints ok or FAIL with its output
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

echo "== dpkg -i $(basename "$deb") in a clean Debian 12 userspace"
cp "$deb" "$root/tmp/rep.deb"
check "dpkg -i" in_root dpkg -i /tmp/rep.deb
in_root dpkg -L rep | sort >"$out/installed.list"

for b in repd repctl cluster-agent; do
  check "/usr/sbin/$b --version" in_root "/usr/sbin/$b" --version
done
for u in rep@.service rep-agent@.service rep.target; do
  check "unit $u in /usr/lib/systemd/system" test -f "$root/usr/lib/systemd/system/$u"
done
check "postinst enabled rep.target" test -L "$root/etc/systemd/system/multi-user.target.wants/rep.target"
check "OCF agent ocf:rep:rep, executable" test -x "$root/usr/lib/ocf/resource.d/rep/rep"
for h in crm-fence-peer crm-unfence-peer; do
  check "fencing handler /usr/lib/rep/$h, executable" test -x "$root/usr/lib/rep/$h"
done
check "ublk_drv in modules-load.d" grep -qx ublk_drv "$root/usr/lib/modules-load.d/rep.conf"
check "no file in /etc/rep (the resource files are the admin's)" test ! -e "$root/etc/rep"

man_shows() { # man_shows REGEX ARGS...: `man ARGS` renders and shows REGEX
  local text=$1 page
  shift
  page=$(in_root sh -c 'MANPAGER=cat MANWIDTH=80 man "$@" 2>&1' man "$@") || return 1
  printf '%s\n' "$page" | grep -Eq -- "$text" || {
    printf '%s\n' "$page" | head -n 8
    return 1
  }
}
check "man repctl" man_shows "^ +repctl +- +Administer" repctl
check "man repctl-primary" man_shows "^ +repctl-primary +- " repctl-primary
check "man repd" man_shows "^ +repd +- +The node daemon" repd
check "man cluster-agent" man_shows "^ +cluster-agent +- " cluster-agent
check "man 5 rep.toml" man_shows "^REP\\.TOML\\(5\\)" 5 rep.toml

check "bash completion of repctl loads" in_root bash -c \
  '. /usr/share/bash-completion/completions/repctl && complete -p repctl'
check "zsh completion of repctl" grep -q '#compdef repctl' "$root/usr/share/zsh/vendor-completions/_repctl"
check "fish completion of repctl" grep -q 'complete -c repctl' "$root/usr/share/fish/vendor_completions.d/repctl.fish"
for f in README.md copyright changelog.gz examples/r0.toml examples/r0-cluster.toml examples/rep.env; do
  check "/usr/share/doc/rep/$f" test -s "$root/usr/share/doc/rep/$f"
done

# The units, instantiated for a resource r0 from the example file.
mkdir -p "$root/etc/rep"
cp "$root/usr/share/doc/rep/examples/r0.toml" "$root/etc/rep/r0.toml"
check "repctl --node alpha dump r0 (the example as /etc/rep/r0.toml)" in_root repctl --node alpha dump r0
verify() { # verify UNIT...: passes, and says nothing about our units
  local log
  log=$(in_root systemd-analyze verify "$@" 2>&1) || {
    printf '%s\n' "$log"
    return 1
  }
  if printf '%s\n' "$log" | grep -E 'rep(@|-agent@|\.target)'; then
    return 1
  fi
}
check "systemd-analyze verify rep@r0.service rep-agent@r0.service rep.target" \
  verify rep@r0.service rep-agent@r0.service rep.target
# The same check catches a broken unit here (a missing ExecStart binary),
# so the pass above means something in this chroot.
sed 's|/usr/sbin/repd|/usr/sbin/repd-missing|' "$root/usr/lib/systemd/system/rep@.service" \
  >"$root/etc/systemd/system/rep-broken@.service"
check "systemd-analyze verify fails on a unit with a missing binary" \
  sh -c "! chroot '$root' systemd-analyze verify rep-broken@r0.service >/dev/null 2>&1"
rm -f "$root/etc/systemd/system/rep-broken@.service"
for u in rep@.service rep-agent@.service; do
  echo "     $u: $(in_root systemd-analyze security --offline=true "/usr/lib/systemd/system/$u" 2>&1 |
    grep -o 'Overall exposure level.*' || echo 'no security score')"
done

echo "== the units under systemd: boot the chroot with systemd-nspawn"
if bash scripts/package-test-systemd.sh "$root"; then :; else failures=$((failures + 1)); fi
rm -f "$root.nspawn.log"

echo "== dpkg -r, dpkg -P"
check "dpkg -r rep" in_root dpkg -r rep
left=()
while read -r f; do
  if [ -f "$root$f" ] || [ -L "$root$f" ]; then left+=("$f"); fi
done <"$out/installed.list"
check "dpkg -r removed every file of the package" test "${#left[@]}" = 0
[ "${#left[@]}" = 0 ] || printf '     left: %s\n' "${left[@]}"
check "dpkg -P rep" in_root dpkg -P rep
check "dpkg -P left no rep unit links in /etc/systemd" \
  sh -c "! find '$root/etc/systemd' -name 'rep*' | grep ."
check "dpkg -P left /etc/rep (the admin's files) alone" test -f "$root/etc/rep/r0.toml"

rm -rf "$root"
if [ "$failures" -gt 0 ]; then
  echo "package-test: $failures check(s) failed" >&2
  exit 1
fi
echo "package-test: all checks passed ($(basename "$deb"))"
