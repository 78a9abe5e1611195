#!/usr/bin/env bash
# Which accelerator a guest can really use here: prints `kvm` or `tcg` on stdout and why on
# stderr. A read-write /dev/kvm is not enough (nested hosts have one that aborts QEMU — "failed
# to set MSR" — or hangs the guest), so the verdict comes from booting the guest kernel once
# under KVM until it panics for want of a root filesystem, which a working KVM does in about a
# second. The verdict is cached per QEMU build, guest kernel and host kernel in .cache/accel/.
#
# Usage: qemu/accel.sh [--qemu BIN] [--guest DIR] [--refresh]
# Env:   EROFS_VFSD_ACCEL=kvm|tcg forces the answer (no probe).
#        EROFS_VFSD_KVM_DEVICE (default /dev/kvm), EROFS_VFSD_ACCEL_CACHE (default .cache/accel),
#        EROFS_VFSD_KVM_PROBE_SECONDS (default 20): for tests of the probe itself.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
QEMU=${EROFS_VFSD_QEMU:-qemu-system-x86_64}
GUEST=$here/../.cache/guest
REFRESH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --qemu) QEMU=$2; shift 2 ;;
    --guest) GUEST=$2; shift 2 ;;
    --refresh) REFRESH=1; shift ;;
    *) echo "accel: unknown option $1" >&2; exit 2 ;;
  esac
done

case "${EROFS_VFSD_ACCEL:-}" in
  kvm|tcg) echo "accel: ${EROFS_VFSD_ACCEL} (forced by EROFS_VFSD_ACCEL)" >&2; echo "$EROFS_VFSD_ACCEL"; exit 0 ;;
  "") ;;
  *) echo "accel: EROFS_VFSD_ACCEL must be kvm or tcg, not '${EROFS_VFSD_ACCEL}'" >&2; exit 2 ;;
esac

KVM_DEV=${EROFS_VFSD_KVM_DEVICE:-/dev/kvm}
PROBE_S=${EROFS_VFSD_KVM_PROBE_SECONDS:-20}
if ! [ -r "$KVM_DEV" ] || ! [ -w "$KVM_DEV" ]; then
  echo "accel: tcg ($KVM_DEV is not usable)" >&2; echo tcg; exit 0
fi
KERNEL=$GUEST/vmlinux
[ -s "$KERNEL" ] || KERNEL=$GUEST/vmlinuz
if ! [ -s "$KERNEL" ]; then
  echo "accel: tcg (no guest kernel in $GUEST to probe KVM with: run qemu/get-kernel.sh)" >&2; echo tcg; exit 0
fi

qver=$("$QEMU" --version 2>/dev/null | head -n1)
key=$(printf '%s\n' "$qver" "$(command -v "$QEMU" || echo "$QEMU")" "$(cat "$GUEST/kernel-version" 2>/dev/null)" "$(uname -r)" "$(stat -c %t:%T "$KVM_DEV")" | sha256sum | cut -c1-16)
cache=${EROFS_VFSD_ACCEL_CACHE:-$here/../.cache/accel}/$key
if [ -z "$REFRESH" ] && [ -s "$cache" ]; then
  read -r verdict reason <"$cache"
  echo "accel: $verdict (cached probe: $reason)" >&2; echo "$verdict"; exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s%N)
set +e
timeout --foreground -k 2 "$PROBE_S" "$QEMU" -accel kvm -cpu host -machine q35 -m 256M -smp 1 -nographic -nodefaults \
  -no-reboot -serial stdio -monitor none -kernel "$KERNEL" -append 'console=ttyS0 panic=-1 quiet' \
  </dev/null >"$log" 2>&1
rc=$?
set -e
ms=$(( ($(date +%s%N) - start) / 1000000 ))
if grep -q 'Kernel panic' "$log"; then
  verdict=kvm; reason="a KVM guest booted to its end in ${ms} ms"
elif [ $rc = 124 ] || [ $rc = 137 ]; then
  verdict=tcg; reason="the KVM guest hung (no progress in $PROBE_S s)"
else
  verdict=tcg; reason="QEMU with KVM failed (exit $rc: $(grep -m1 -iE 'error|assert|fail' "$log" | tr -d '\r' | cut -c1-160))"
fi
mkdir -p "$(dirname "$cache")"
echo "$verdict $reason" >"$cache"
echo "accel: $verdict ($reason)" >&2
echo "$verdict"
