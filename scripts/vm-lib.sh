# shellcheck shell=bash disable=SC2034 # its variables are the sourcing script's
# Shared by scripts/vm-run.sh and scripts/vm-systemd-run.sh, sourced right
# after their `set -euo pipefail` with VM_PROG set to the script's name: the
# options both take, their messages, the work folder, CMD as a script file
# and the kernel modules udev must not probe.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MEM=4G
CPUS=2
TIMEOUT=1200
WORK=

say() { echo "$VM_PROG: $*" >&2; }
die() {
  echo "$VM_PROG: ERROR: $*" >&2
  exit 125
}
# The running script's header comment, down to its `set -euo` line.
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[-1]}" | sed '$d; s/^# \{0,1\}//'; }

# vm_common_opt ARGS...: takes $1 when it is an option of both scripts
# (--mem, --cpus, --timeout, --work, also as --opt=VALUE; --help) and sets
# VM_SHIFT to the words it used; returns 1 for any other word.
vm_common_opt() {
  VM_SHIFT=2
  case "$1" in
  --mem) MEM=${2:?--mem needs a value} ;;
  --cpus) CPUS=${2:?--cpus needs a value} ;;
  --timeout) TIMEOUT=${2:?--timeout needs a value} ;;
  --work) WORK=${2:?--work needs a value} ;;
  --mem=* | --cpus=* | --timeout=* | --work=*)
    vm_common_opt "${1%%=*}" "${1#*=}"
    VM_SHIFT=1
    ;;
  -h | --help) usage; exit 0 ;;
  *) return 1 ;;
  esac
}

# vm_unknown_opt WORD: an option neither the script nor vm_common_opt knows.
vm_unknown_opt() {
  echo "$VM_PROG: unknown option '$1' (CMD goes after --; see --help)" >&2
  exit 125
}

# vm_check_cmd N: N, the words after `--`, is not 0, and the numbers given
# are numbers.
vm_check_cmd() {
  [ "$1" -gt 0 ] || die "no CMD given (usage: $VM_PROG.sh [OPTIONS] -- CMD...)"
  [[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds, got '$TIMEOUT'"
  [[ "$CPUS" =~ ^[0-9]+$ ]] || die "--cpus wants a number, got '$CPUS'"
}

# vm_work_folder PREFIX: WORK made absolute (created if missing), or a fresh
# folder PREFIX.XXXXXX under $REP_VM_WORK_ROOT (default
# ${CARGO_TARGET_DIR:-REPO/target}/vm-work); CTL=WORK/.vm, emptied.
vm_work_folder() {
  if [ -n "$WORK" ]; then
    mkdir -p "$WORK" || die "cannot create --work $WORK"
    WORK=$(cd "$WORK" && pwd)
  else
    local root=${REP_VM_WORK_ROOT:-${CARGO_TARGET_DIR:-$REPO/target}/vm-work}
    mkdir -p "$root" || die "cannot create $root"
    WORK=$(mktemp -d "$(cd "$root" && pwd)/$1.XXXXXX")
  fi
  CTL=$WORK/.vm
  rm -rf "$CTL"
  mkdir -p "$CTL"
}

# vm_write_cmd CMD...: CMD as the script file $CTL/cmd.sh (no quoting
# trouble on a kernel command line): one argument is a script, several are
# one command, quoted as given.
vm_write_cmd() {
  if [ $# -eq 1 ]; then
    printf '%s\n' "$1" >"$CTL/cmd.sh"
  else
    printf '%q ' "$@" >"$CTL/cmd.sh"
    echo >>"$CTL/cmd.sh"
  fi
}

# Modules udev would load at boot that we never need: probing them costs seconds
# under TCG. `modprobe NAME` still loads any of them on demand. The first line
# saves ~5 s of device probing; the second (CPU-feature crypto modules that
# `-cpu max` makes udev load) cuts udev's settle from ~10 s to ~3 s.
BLACKLIST=${REP_VM_MODPROBE_BLACKLIST:-ahci,libahci,sr_mod,cdrom,kvm_amd,kvm_intel,kvm,iTCO_wdt,i6300esb,lpc_ich,psmouse,serio_raw,i2c_i801,evdev,pcspkr,button,joydev,sg,drm,bochs,\
aesni_intel,crc32_pclmul,crct10dif_pclmul,ghash_clmulni_intel,sha1_ssse3,sha256_ssse3,sha512_ssse3,polyval_clmulni,qemu_fw_cfg,powernow_k8,acpi_cpufreq}
