#!/usr/bin/env bash
# Prepares this machine to boot a VM whose kernel has ublk_drv (the host's has not).
#
#   bash scripts/vm-setup.sh
#
# Idempotent: a second run downloads nothing and takes about a second. It fails
# loudly (non-zero exit, "vm-setup: ERROR: ..." on stderr) when something cannot
# be had; it never skips a step silently.
#
# What it does:
#   1. Debian packages: qemu-system-x86 (TCG), udev (virtme-ng's guest init needs
#      the host's systemd-udevd, or the command's output and status are lost),
#      kmod (depmod/modprobe), busybox-static (virtme-ng builds its initramfs
#      with it), iproute2 + iputils-ping (network namespaces in the guest),
#      e2fsprogs, jq (the scenario scripts read `repctl status --json`),
#      drbd-utils (drbdmeta and drbdsetup-84 for the in-kernel DRBD 8.4 the VM
#      benchmark compares against), debootstrap (scripts/vm-systemd-image.sh
#      builds the Debian 12 systemd guest with it). `apt-get update` runs only
#      when one is missing.
#   2. virtme-ng (the `vng` command) from PyPI, pinned to REP_VM_VNG_VERSION (1.42).
#   3. Debian's kernel image package (default linux-image-6.12.107+deb12-amd64-unsigned,
#      which has ublk_drv.ko and drbd.ko): `apt-get download` into the cache
#      (REP_VM_CACHE, default $HOME/.cache/rep-vm), `dpkg -x` it there, copy its
#      modules to /lib/modules/VERSION on the host and run `depmod VERSION`.
#      The kernel image is put at CACHE/boot-VERSION/vmlinuz-VERSION, in a folder
#      with no lib/modules beside it, so that vng takes the modules from the
#      host's /lib/modules (which the guest sees as its own).
#   4. Writes CACHE/vm.env (read by scripts/vm-run.sh) and prints the vmlinuz path.
#
# Environment:
#   REP_VM_CACHE        cache folder (default $HOME/.cache/rep-vm)
#   REP_VM_KVER         kernel version to use, e.g. 6.12.115+deb12-amd64; default:
#                       6.12.107+deb12-amd64, or the newest 6.12.*+deb12-amd64 the
#                       archive offers if that one is gone (said loudly)
#   REP_VM_VNG_VERSION  virtme-ng version to pin (default 1.42)
set -euo pipefail

PREFERRED_KVER=6.12.107+deb12-amd64
VNG_VERSION=${REP_VM_VNG_VERSION:-1.42}
CACHE=${REP_VM_CACHE:-${HOME:-/root}/.cache/rep-vm}

say() { echo "vm-setup: $*" >&2; }
die() {
  echo "vm-setup: ERROR: $*" >&2
  exit 1
}
is_root() { [ "$(id -u)" = 0 ]; }
need_root() { is_root || die "$1 needs root (run: sudo bash $0)"; }

t_start=$SECONDS

# ---------------------------------------------------------------- 1. packages
APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    need_root "apt-get update"
    say "apt-get update"
    apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
}

pkgs=(qemu-system-x86 udev kmod busybox-static iproute2 iputils-ping e2fsprogs jq drbd-utils debootstrap)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  need_root "installing ${missing[*]}"
  apt_update_once
  say "apt-get install ${missing[*]}"
  # busybox-static replaces the dynamically linked `busybox` package if present.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || die "apt-get install ${missing[*]} failed"
fi
for bin in qemu-system-x86_64 udevadm depmod modprobe busybox ip ping mkfs.ext4 jq drbdmeta debootstrap; do
  command -v "$bin" >/dev/null || die "'$bin' not found in PATH after installing ${pkgs[*]}"
done
[ -x /lib/systemd/systemd-udevd ] || [ -x /usr/lib/systemd/systemd-udevd ] ||
  die "systemd-udevd not found: without it the guest loses the command's output and exit status"
if ldd "$(command -v busybox)" >/dev/null 2>&1; then
  die "$(command -v busybox) is dynamically linked; virtme-ng needs busybox-static"
fi

# ---------------------------------------------------------------- 2. virtme-ng
find_vng() {
  if [ -n "${REP_VM_VNG:-}" ]; then
    echo "$REP_VM_VNG"
    return
  fi
  local v
  # The real script beside python3 first: a pyenv shim depends on pyenv's environment.
  if command -v python3 >/dev/null; then
    v="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/vng"
    [ -x "$v" ] && { echo "$v"; return; }
  fi
  v=$(command -v vng 2>/dev/null) && { echo "$v"; return; }
  return 1
}
vng_version_ok() {
  local v
  v=$(find_vng) || return 1
  [ "$("$v" --version 2>/dev/null)" = "virtme-ng $VNG_VERSION" ]
}
if ! vng_version_ok; then
  command -v python3 >/dev/null || die "python3 not found: needed for virtme-ng (pip install virtme-ng)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    need_root "installing python3-pip"
    apt_update_once
    say "apt-get install python3-pip ($(command -v python3) has no pip)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null ||
      die "apt-get install python3-pip failed"
    python3 -m pip --version >/dev/null 2>&1 || die "$(command -v python3) still has no pip"
  fi
  say "pip install virtme-ng==$VNG_VERSION"
  log=$(mktemp)
  if ! python3 -m pip install -q "virtme-ng==$VNG_VERSION" >"$log" 2>&1; then
    if grep -q externally-managed "$log"; then
      # Debian's own python3 refuses pip installs into the system (PEP 668).
      python3 -m pip install -q --break-system-packages "virtme-ng==$VNG_VERSION" >"$log" 2>&1 ||
        { cat "$log" >&2; rm -f "$log"; die "pip install virtme-ng==$VNG_VERSION failed"; }
    else
      cat "$log" >&2
      rm -f "$log"
      die "pip install virtme-ng==$VNG_VERSION failed"
    fi
  fi
  rm -f "$log"
  if command -v pyenv >/dev/null; then pyenv rehash >/dev/null 2>&1 || true; fi
  vng_version_ok || die "virtme-ng $VNG_VERSION installed, but 'vng --version' does not say so (found: $(find_vng || echo none))"
fi
VNG=$(find_vng)

# ---------------------------------------------------------------- 3. kernel
mkdir -p "$CACHE" || die "cannot create cache folder $CACHE"
CACHE=$(cd "$CACHE" && pwd)

pkg_of() { echo "linux-image-$1-unsigned"; }
apt_has() { apt-cache show "$1" >/dev/null 2>&1; }

KVER=${REP_VM_KVER:-}
if [ -z "$KVER" ] && [ -f "$CACHE/vm.env" ]; then
  # Reuse the kernel chosen by an earlier run (no apt look-up, no download).
  KVER=$(sed -n 's/^REP_VM_KVER=//p' "$CACHE/vm.env")
fi
if [ -z "$KVER" ]; then
  KVER=$PREFERRED_KVER
fi
deb_in_cache() { compgen -G "$CACHE/$(pkg_of "$1")_*.deb" >/dev/null; }

if ! deb_in_cache "$KVER"; then
  if ! apt_has "$(pkg_of "$KVER")"; then
    apt_update_once
  fi
  if ! apt_has "$(pkg_of "$KVER")"; then
    if [ -n "${REP_VM_KVER:-}" ]; then
      die "REP_VM_KVER=$KVER: package $(pkg_of "$KVER") is not in the archive"
    fi
    newest=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' |
      awk '{print $1}' | sed 's/^linux-image-//; s/-unsigned$//' | sort -V | tail -n 1)
    [ -n "$newest" ] || die "no linux-image-6.12.*+deb12-amd64-unsigned package in the archive (wanted $KVER)"
    say "WARNING: $(pkg_of "$KVER") is no longer in the archive; using $(pkg_of "$newest") instead"
    KVER=$newest
  fi
fi

DEB_PKG=$(pkg_of "$KVER")
if ! deb_in_cache "$KVER"; then
  say "apt-get download $DEB_PKG (about 110 MB) into $CACHE"
  (cd "$CACHE" && apt-get download -q -o APT::Sandbox::User=root "$DEB_PKG" >/dev/null) ||
    die "apt-get download $DEB_PKG failed"
fi
DEB=$(compgen -G "$CACHE/${DEB_PKG}_*.deb" | sort -V | tail -n 1)
dpkg-deb --info "$DEB" >/dev/null 2>&1 || {
  rm -f "$DEB"
  die "$DEB is not a valid .deb (removed; run again to download it anew)"
}

UNPACKED=$CACHE/unpacked-$KVER
if [ ! -f "$UNPACKED/boot/vmlinuz-$KVER" ] || [ ! -d "$UNPACKED/lib/modules/$KVER/kernel" ]; then
  say "dpkg -x $(basename "$DEB")"
  rm -rf "$UNPACKED" "$UNPACKED.tmp"
  dpkg -x "$DEB" "$UNPACKED.tmp" || die "dpkg -x $DEB failed"
  mv "$UNPACKED.tmp" "$UNPACKED"
fi
[ -f "$UNPACKED/boot/vmlinuz-$KVER" ] || die "$DEB has no boot/vmlinuz-$KVER"
grep -q '^CONFIG_BLK_DEV_UBLK=[ym]' "$UNPACKED/boot/config-$KVER" ||
  die "kernel $KVER is built without CONFIG_BLK_DEV_UBLK"

# The kernel image goes to a folder without lib/modules: vng then looks for the
# modules at the host's /lib/modules/$KVER, which the guest sees too.
BOOT_DIR=$CACHE/boot-$KVER
VMLINUZ=$BOOT_DIR/vmlinuz-$KVER
if ! cmp -s "$UNPACKED/boot/vmlinuz-$KVER" "$VMLINUZ"; then
  mkdir -p "$BOOT_DIR"
  cp "$UNPACKED/boot/vmlinuz-$KVER" "$VMLINUZ.tmp" && mv "$VMLINUZ.tmp" "$VMLINUZ"
  cp "$UNPACKED/boot/config-$KVER" "$BOOT_DIR/"
fi

MODDIR=/lib/modules/$KVER
modules_ok() {
  [ -f "$MODDIR/modules.dep" ] && [ -f "$MODDIR/kernel/drivers/block/ublk_drv.ko.xz" ] &&
    modinfo -k "$KVER" ublk_drv >/dev/null 2>&1
}
if ! modules_ok; then
  need_root "installing modules at $MODDIR"
  say "installing modules at $MODDIR and running depmod $KVER (takes up to a minute)"
  rm -rf "$MODDIR"
  mkdir -p /lib/modules
  # Hard links cost no space when the cache is on the same filesystem.
  cp -al "$UNPACKED/lib/modules/$KVER" "$MODDIR" 2>/dev/null ||
    { rm -rf "$MODDIR"; cp -a "$UNPACKED/lib/modules/$KVER" "$MODDIR"; } ||
    die "cannot copy modules to $MODDIR"
  depmod "$KVER" || { rm -f "$MODDIR/modules.dep"; die "depmod $KVER failed"; }
  modules_ok || die "modules at $MODDIR are incomplete: modinfo -k $KVER ublk_drv fails"
fi

# ---------------------------------------------------------------- 4. vm.env
env_new=$(printf 'REP_VM_KVER=%s\nREP_VM_VMLINUZ=%s\nREP_VM_VNG=%s\n' "$KVER" "$VMLINUZ" "$VNG")
if [ ! -f "$CACHE/vm.env" ] || [ "$(cat "$CACHE/vm.env")" != "$env_new" ]; then
  printf '%s\n' "$env_new" >"$CACHE/vm.env"
fi

say "ready in $((SECONDS - t_start)) s: kernel $KVER, $("$VNG" --version), modules at $MODDIR"
echo "$VMLINUZ"
