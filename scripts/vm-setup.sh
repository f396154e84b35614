#!/usr/bin/env bash
# Prepares this machine to boot a VM whose kernel has ublk_drv (the host's has not).
#
#   bash scripts/vm-setup.sh [--kernel 6.12|6.17|all]
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
#   3. The guest kernels (--kernel: one of them; default all), each fetched as a
#      Debian kernel image package into the cache (REP_VM_CACHE, default
#      $HOME/.cache/rep-vm), unpacked there with `dpkg -x`, its modules copied to
#      /lib/modules/VERSION on the host and `depmod VERSION` run:
#      - 6.12 (the default kernel; CI's scenarios run on it):
#        linux-image-6.12.107+deb12-amd64-unsigned from the host's own bookworm
#        sources (`apt-get download`).
#      - 6.17 (ublk's newer features: UPDATE_SIZE, AUTO_BUF_REG zero copy):
#        linux-image-6.17.13+deb13-amd64 from trixie-backports, through a
#        sources list, lists folder and apt cache of its own in
#        CACHE/apt-trixie-backports (`apt-get -o Dir::Etc::sourcelist=...
#        -o Dir::State::Lists=... update` and `download`): the host's apt state
#        is never touched and nothing from trixie is installed.
#      The kernel image is put at CACHE/boot-VERSION/vmlinuz-VERSION, in a folder
#      with no lib/modules beside it, so that vng takes the modules from the
#      host's /lib/modules (which the guest sees as its own).
#   4. Writes CACHE/vm.env (6.12) and CACHE/vm-6.17.env (read by
#      scripts/vm-run.sh --kernel) and prints the vmlinuz path of each kernel it
#      prepared, one a line, the default kernel's last.
#
# Environment:
#   REP_VM_CACHE        cache folder (default $HOME/.cache/rep-vm)
#   REP_VM_KVER         the 6.12 kernel version, e.g. 6.12.115+deb12-amd64; default:
#                       6.12.107+deb12-amd64, or the newest 6.12.*+deb12-amd64 the
#                       archive offers if that one is gone (said loudly)
#   REP_VM_KVER_6_17    the 6.17 kernel version (default 6.17.13+deb13-amd64)
#   REP_VM_DEBIAN_MIRROR  mirror for trixie-backports (default: the host's
#                       first bookworm mirror)
#   REP_VM_VNG_VERSION  virtme-ng version to pin (default 1.42)
set -euo pipefail

PREFERRED_KVER=6.12.107+deb12-amd64
PREFERRED_KVER_6_17=6.17.13+deb13-amd64
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

# 6.17 first: the default kernel's vmlinuz is the last line printed.
SERIES=(6.17 6.12)
while [ $# -gt 0 ]; do
  case "$1" in
  --kernel | --kernel=*)
    if [ "$1" = --kernel ]; then k=${2:-}; shift 2 || shift; else k=${1#*=}; shift; fi
    case "$k" in
    6.12 | 6.17) SERIES=("$k") ;;
    all) SERIES=(6.17 6.12) ;;
    *) die "--kernel wants 6.12, 6.17 or all, got '$k'" ;;
    esac
    ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (usage: vm-setup.sh [--kernel 6.12|6.17|all])" ;;
  esac
done

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

# ---------------------------------------------------------------- 3. kernels
mkdir -p "$CACHE" || die "cannot create cache folder $CACHE"
CACHE=$(cd "$CACHE" && pwd)

apt_has() { apt-cache show "$1" >/dev/null 2>&1; }
pkg_of() { echo "linux-image-$1-unsigned"; }
deb_of() { compgen -G "$CACHE/$1_*.deb" | sort -V | tail -n 1; }

# 3a. 6.12 from the host's own apt sources (bookworm); sets KVER and DEB.
fetch_612() {
  local newest
  KVER=${REP_VM_KVER:-}
  if [ -z "$KVER" ] && [ -f "$CACHE/vm.env" ]; then
    # Reuse the kernel chosen by an earlier run (no apt look-up, no download).
    KVER=$(sed -n 's/^REP_VM_KVER=//p' "$CACHE/vm.env")
  fi
  if [ -z "$KVER" ]; then
    KVER=$PREFERRED_KVER
  fi
  if [ -z "$(deb_of "$(pkg_of "$KVER")")" ]; then
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
    say "apt-get download $(pkg_of "$KVER") (about 110 MB) into $CACHE"
    (cd "$CACHE" && apt-get download -q -o APT::Sandbox::User=root "$(pkg_of "$KVER")" >/dev/null) ||
      die "apt-get download $(pkg_of "$KVER") failed"
  fi
  DEB=$(deb_of "$(pkg_of "$KVER")")
}

# The first bookworm mirror of the host's apt sources (deb822 files first).
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '/^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") ok = 1 }
      /^$/ { if (ok && u != "") { print u; exit } ok = 0; u = "" }
      END { if (ok && u != "") print u }' "$f" | head -n 1
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' || true
}

# 3b. 6.17 from trixie-backports; sets KVER and DEB. apt runs with a sources
# list, lists folder and cache of its own under CACHE/apt-trixie-backports, so
# the host's apt state (its sources, lists, pinning) never sees trixie. Only
# the kernel image is fetched: no dependency is installed (dpkg -x unpacks it).
fetch_617() {
  local dir=$CACHE/apt-trixie-backports pkg mirror
  KVER=${REP_VM_KVER_6_17:-$PREFERRED_KVER_6_17}
  pkg=linux-image-$KVER
  if [ -z "$(deb_of "$pkg")" ]; then
    mirror=${REP_VM_DEBIAN_MIRROR:-$(host_mirror | head -n 1)}
    [ -n "$mirror" ] || die "no bookworm mirror in the host's apt sources to take trixie-backports from; set REP_VM_DEBIAN_MIRROR"
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" || die "cannot create $dir"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie-backports main" \
      >"$dir/sources.list"
    local opts=(-o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=/nonexistent
      -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o Dir::Cache::pkgcache=
      -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root)
    say "apt-get update of trixie-backports ($mirror) into $dir (the host's apt state is not touched)"
    apt-get -qq "${opts[@]}" update >/dev/null || die "apt-get update of trixie-backports from $mirror failed"
    apt-cache "${opts[@]}" show "$pkg" >/dev/null 2>&1 ||
      die "$pkg is not in trixie-backports (newer ones: $(apt-cache "${opts[@]}" search --names-only '^linux-image-6\.[0-9]+\.[0-9]+\+deb13-amd64$' | awk '{print $1}' | tr '\n' ' ')); set REP_VM_KVER_6_17"
    say "apt-get download $pkg (about 170 MB) into $CACHE"
    (cd "$CACHE" && apt-get download -q "${opts[@]}" "$pkg" >/dev/null) || die "apt-get download $pkg failed"
  fi
  DEB=$(deb_of "$pkg")
}

# Unpacks DEB (kernel KVER) into the cache, puts vmlinuz where vng takes the
# modules from the host's /lib/modules, installs those and runs depmod; sets VMLINUZ.
install_kernel() {
  local kver=$1 deb=$2 unpacked=$CACHE/unpacked-$1 moddir=/lib/modules/$1 src boot_dir
  dpkg-deb --info "$deb" >/dev/null 2>&1 || {
    rm -f "$deb"
    die "$deb is not a valid .deb (removed; run again to download it anew)"
  }
  # trixie's packages put modules under usr/lib (merged /usr), bookworm's under lib.
  mods_of() { for src in "$unpacked/lib/modules/$kver" "$unpacked/usr/lib/modules/$kver"; do
    [ -d "$src/kernel" ] && { echo "$src"; return; }; done; }
  if [ ! -f "$unpacked/boot/vmlinuz-$kver" ] || [ -z "$(mods_of)" ]; then
    say "dpkg -x $(basename "$deb")"
    rm -rf "$unpacked" "$unpacked.tmp"
    dpkg -x "$deb" "$unpacked.tmp" || die "dpkg -x $deb failed"
    mv "$unpacked.tmp" "$unpacked"
  fi
  [ -f "$unpacked/boot/vmlinuz-$kver" ] || die "$deb has no boot/vmlinuz-$kver"
  src=$(mods_of)
  [ -n "$src" ] || die "$deb has no lib/modules/$kver"
  grep -q '^CONFIG_BLK_DEV_UBLK=[ym]' "$unpacked/boot/config-$kver" ||
    die "kernel $kver is built without CONFIG_BLK_DEV_UBLK"

  # The kernel image goes to a folder without lib/modules: vng then looks for the
  # modules at the host's /lib/modules/$kver, which the guest sees too.
  boot_dir=$CACHE/boot-$kver
  VMLINUZ=$boot_dir/vmlinuz-$kver
  if ! cmp -s "$unpacked/boot/vmlinuz-$kver" "$VMLINUZ"; then
    mkdir -p "$boot_dir"
    cp "$unpacked/boot/vmlinuz-$kver" "$VMLINUZ.tmp" && mv "$VMLINUZ.tmp" "$VMLINUZ"
    cp "$unpacked/boot/config-$kver" "$boot_dir/"
  fi

  if ! [ -f "$moddir/modules.dep" ] || ! compgen -G "$moddir/kernel/drivers/block/ublk_drv.ko*" >/dev/null ||
    ! modinfo -k "$kver" ublk_drv >/dev/null 2>&1; then
    need_root "installing modules at $moddir"
    say "installing modules at $moddir and running depmod $kver (takes up to a minute)"
    rm -rf "$moddir"
    mkdir -p /lib/modules
    # Hard links cost no space when the cache is on the same filesystem.
    cp -al "$src" "$moddir" 2>/dev/null ||
      { rm -rf "$moddir"; cp -a "$src" "$moddir"; } ||
      die "cannot copy modules to $moddir"
    depmod "$kver" || { rm -f "$moddir/modules.dep"; die "depmod $kver failed"; }
    modinfo -k "$kver" ublk_drv >/dev/null 2>&1 ||
      die "modules at $moddir are incomplete: modinfo -k $kver ublk_drv fails"
  fi
}

# ---------------------------------------------------------------- 4. env files
# CACHE/vm.env is the default kernel's (6.12; its name and keys are what older
# checkouts read), CACHE/vm-6.17.env the other's; scripts/vm-run.sh --kernel
# picks one.
env_file_of() { if [ "$1" = 6.12 ]; then echo vm.env; else echo "vm-$1.env"; fi; }
write_env() {
  local file=$1 env_new
  env_new=$(printf 'REP_VM_KVER=%s\nREP_VM_VMLINUZ=%s\nREP_VM_VNG=%s\n' "$KVER" "$VMLINUZ" "$VNG")
  if [ ! -f "$file" ] || [ "$(cat "$file")" != "$env_new" ]; then
    printf '%s\n' "$env_new" >"$file.tmp.$$" && mv "$file.tmp.$$" "$file"
  fi
}

ready=()
PATHS=()
for series in "${SERIES[@]}"; do
  case "$series" in
  6.12) fetch_612 ;;
  6.17) fetch_617 ;;
  esac
  install_kernel "$KVER" "$DEB"
  write_env "$CACHE/$(env_file_of "$series")"
  ready+=("$KVER")
  PATHS+=("$VMLINUZ")
done

say "ready in $((SECONDS - t_start)) s: kernels ${ready[*]}, $("$VNG" --version)"
printf '%s\n' "${PATHS[@]}"
