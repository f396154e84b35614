#!/usr/bin/env bash
# Builds a Debian 12 guest image that boots systemd as PID 1, for the VM
# scenarios that need a real init (the package's units: vm-tests/scenarios/
# systemd-restart.sh). The other scenarios run over the host's userspace
# (scripts/vm-run.sh) and do not need it.
#
#   bash scripts/vm-systemd-image.sh          # prints the image folder
#
# The image folder holds rootfs.ext4 (debootstrap bookworm, minbase + systemd,
# udev, fio, jq, ...; the ublk kernel's modules installed from the same
# linux-image .deb that scripts/vm-setup.sh fetched), vmlinuz, initrd.img
# (initramfs-tools in the image: virtio_blk and ext4 are modules in Debian's
# kernel, so the root disk needs an initramfs) and build.log.
#
# Cached: the folder's name carries a hash of this script and the kernel
# version, so a second run only prints the path (~0 s); editing the script
# or changing the kernel builds a new image. Old images are removed.
#
# Boot it with scripts/vm-systemd-run.sh. At boot the image's unit
# rep-vm-scenario.service mounts the 9p share `repshare` at /share and runs
# /share/guest-run.sh (written by vm-systemd-run.sh), which powers off.
#
# Environment:
#   REP_VM_CACHE          cache folder (default $HOME/.cache/rep-vm; images go
#                         to CACHE/systemd-image-HASH, beside the kernel)
#   REP_VM_DEBIAN_MIRROR  Debian mirror for debootstrap (default: the first
#                         mirror the host's apt sources list for bookworm)
#
# Needs root, debootstrap and the kernel from scripts/vm-setup.sh (run first).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${REP_VM_CACHE:-${HOME:-/root}/.cache/rep-vm}
SUITE=bookworm
# What the scenario uses in the guest beyond minbase (man-db: `man repctl`
# and `systemd-analyze verify`, which checks the units' man pages). linux-base and
# initramfs-tools: `dpkg -i` of the kernel package and its initramfs.
GUEST_PKGS=systemd-sysv,udev,kmod,linux-base,initramfs-tools,e2fsprogs,fio,iproute2,jq,procps,util-linux,man-db
# Free space left on the root filesystem for backing images and logs.
FREE_MB=1536

say() { echo "vm-systemd-image: $*" >&2; }
die() {
  echo "vm-systemd-image: ERROR: $*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mkfs)"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found (apt-get install e2fsprogs)"
[ -f "$CACHE/vm.env" ] || die "no $CACHE/vm.env: run bash scripts/vm-setup.sh first"
KVER=$(sed -n 's/^REP_VM_KVER=//p' "$CACHE/vm.env")
[ -n "$KVER" ] || die "$CACHE/vm.env names no REP_VM_KVER: run bash scripts/vm-setup.sh again"
KDEB=$(compgen -G "$CACHE/linux-image-$KVER-unsigned_*.deb" | sort -V | tail -n 1) ||
  die "no linux-image-$KVER-unsigned .deb in $CACHE: run bash scripts/vm-setup.sh"

KEY=$( (cat "${BASH_SOURCE[0]}"; echo "$KVER") | sha256sum | cut -c1-16)
OUT=$CACHE/systemd-image-$KEY
# One build at a time (two tests may ask at once); the second waits and reuses it.
exec 9>"$CACHE/systemd-image.lock"
flock 9 || die "cannot lock $CACHE/systemd-image.lock"
if [ -f "$OUT/rootfs.ext4" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ]; then
  echo "$OUT"
  exit 0
fi

mirror() {
  if [ -n "${REP_VM_DEBIAN_MIRROR:-}" ]; then
    echo "$REP_VM_DEBIAN_MIRROR"
    return
  fi
  # deb822 sources first (URIs: + Suites: in one stanza), then one-line ones.
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v s="$SUITE" '
      /^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
      /^$/ { if (ok && u != "") { print u; exit } ok = 0; u = "" }
      END { if (ok && u != "") print u }' "$f" | head -n 1
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v s="$SUITE" '$1 == "deb" && $3 == s { print $2; exit }' || true
}
MIRROR=$(mirror | head -n 1 || true)
[ -n "$MIRROR" ] || die "no $SUITE mirror in the host's apt sources; set REP_VM_DEBIAN_MIRROR"

TMP=$OUT.tmp
ROOT=$TMP/root
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  # Never remove a tree with something mounted in it.
  if mountpoint -q "$ROOT/proc" 2>/dev/null; then umount "$ROOT/proc" || return; fi
  if [ -d "$TMP" ] && ! mountpoint -q "$ROOT/proc" 2>/dev/null; then rm -rf "$TMP"; fi
}
trap cleanup EXIT
cleanup
mkdir -p "$TMP"
LOG=$TMP/build.log
t0=$SECONDS

say "debootstrap $SUITE (minbase + ${GUEST_PKGS//,/ }) from $MIRROR; log in $LOG"
debootstrap --variant=minbase --include="$GUEST_PKGS" "$SUITE" "$ROOT" "$MIRROR" >>"$LOG" 2>&1 ||
  { tail -n 20 "$LOG" >&2; die "debootstrap failed (whole log: $LOG)"; }
t_deboot=$((SECONDS - t0))

# ---------------------------------------------------------------- configuration
echo rep-guest >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 rep-guest\n' >"$ROOT/etc/hosts"
cat >"$ROOT/etc/fstab" <<'EOF'
/dev/vda  /       ext4  rw,errors=remount-ro  0 1
repshare  /share  9p    trans=virtio,version=9p2000.L,msize=262144,nofail  0 0
EOF
mkdir -p "$ROOT/share"
# An initramfs with only what finds the root disk: small, quick to unpack under TCG.
sed -i 's/^MODULES=.*/MODULES=list/; s/^#\{0,1\}COMPRESS=.*/COMPRESS=gzip/' \
  "$ROOT/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\next4\n' >>"$ROOT/etc/initramfs-tools/modules"
# No getty on the console (nobody logs in), no waiting for a network.
ln -sf /dev/null "$ROOT/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$ROOT/etc/systemd/system/getty@tty1.service"
# The scenario runner: the host writes /share/guest-run.sh; it powers off.
cat >"$ROOT/etc/systemd/system/rep-vm-scenario.service" <<'EOF'
[Unit]
Description=rep VM scenario from the host's share (/share/guest-run.sh)
RequiresMountsFor=/share
ConditionPathExists=/share/guest-run.sh

[Service]
Type=simple
ExecStart=/bin/bash /share/guest-run.sh
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/rep-vm-scenario.service \
  "$ROOT/etc/systemd/system/multi-user.target.wants/rep-vm-scenario.service"
# The journal on disk, so that a scenario can read it after a restart of units.
mkdir -p "$ROOT/var/log/journal"

# ---------------------------------------------------------------- kernel
say "dpkg -i $(basename "$KDEB") in the image (modules + initramfs)"
cp "$KDEB" "$ROOT/tmp/kernel.deb"
mount -t proc proc "$ROOT/proc"
chroot "$ROOT" dpkg -i /tmp/kernel.deb >>"$LOG" 2>&1 ||
  { tail -n 20 "$LOG" >&2; die "dpkg -i of the kernel in the image failed (log: $LOG)"; }
umount "$ROOT/proc"
rm -f "$ROOT/tmp/kernel.deb"
[ -f "$ROOT/lib/modules/$KVER/kernel/drivers/block/ublk_drv.ko.xz" ] ||
  die "the image has no ublk_drv.ko.xz for $KVER"
[ -f "$ROOT/boot/initrd.img-$KVER" ] || die "no initrd.img-$KVER in the image (see $LOG)"
cp "$ROOT/boot/vmlinuz-$KVER" "$TMP/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$TMP/initrd.img"
rm -rf "$ROOT/var/cache/apt/archives/"*.deb "$ROOT/var/lib/apt/lists/"*_Packages

# ---------------------------------------------------------------- ext4 image
used_mb=$(du -sm "$ROOT" | cut -f1)
size_mb=$((used_mb + FREE_MB))
say "mkfs.ext4 -d: ${used_mb} MiB of files in a ${size_mb} MiB image"
truncate -s "${size_mb}M" "$TMP/rootfs.ext4"
mkfs.ext4 -q -F -L rep-guest -d "$ROOT" "$TMP/rootfs.ext4" >>"$LOG" 2>&1 ||
  { tail -n 20 "$LOG" >&2; die "mkfs.ext4 -d failed (log: $LOG)"; }
rm -rf "$ROOT"
say "built in $((SECONDS - t0)) s (debootstrap $t_deboot s)"
echo "debootstrap_s=$t_deboot total_s=$((SECONDS - t0)) kver=$KVER" >"$TMP/build-times"
for old in "$CACHE"/systemd-image-*; do
  [ -d "$old" ] && [ "$old" != "$OUT" ] && [ "$old" != "$TMP" ] && rm -rf "$old"
done
rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
echo "$OUT"
