#!/usr/bin/env bash
# A Debian sid chroot under .cache/sid with the newer tools the tests and benchmarks compare
# against or need: QEMU 11.1 (vhost-user shared memory: the DAX window), Rust virtiofsd 1.14 (the
# back-end users run today), erofs-utils 1.9 (mkfs/dump/fsck.erofs) and, for guest kernel modules,
# the headers of sid's cloud kernel. Idempotent; run as root (debootstrap, chroot).
#
# The mirror is the machine's own (scripts/apt-mirror.sh: nothing here names a host). The chroot's programs run on the host through the chroot's own dynamic loader
# (wrappers in .cache/sid/bin), so they see host paths (sockets, images) directly: no bind
# mounts, no chroot at run time.
#
# Layout: .cache/sid/root (the chroot), .cache/sid/bin (the wrappers).
# Usage: scripts/sid-chroot.sh [--print-bin]
set -euo pipefail
cd "$(dirname "$0")/.."
SID=${EROFS_VFSD_SID:-$PWD/.cache/sid}
ROOT=$SID/root
BIN=$SID/bin
if [ "${1:-}" = --print-bin ]; then echo "$BIN"; exit 0; fi

# Bump when the package list or the wrappers change: an older chroot is completed, not rebuilt.
STAMP_VERSION=1
# The guest kernel itself is fetched by qemu/get-kernel.sh (apt-get download, not installed).
SID_PACKAGES=(qemu-system-x86 virtiofsd erofs-utils gcc make kmod linux-headers-cloud-amd64)
stamp=$SID/stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$STAMP_VERSION" ] && [ -x "$BIN/qemu-system-x86_64" ]; then
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "sid-chroot: needs root (debootstrap, chroot)" >&2; exit 1; }

MIRROR=$(scripts/apt-mirror.sh)
command -v debootstrap >/dev/null || {
  echo "sid-chroot: installing debootstrap" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
  echo "sid-chroot: debootstrap sid into $ROOT" >&2
  rm -rf "$ROOT"
  mkdir -p "$SID"
  debootstrap --variant=minbase --include=ca-certificates sid "$ROOT" "$MIRROR" >"$SID/debootstrap.log" 2>&1 || {
    tail -n 20 "$SID/debootstrap.log" >&2; exit 1; }
fi

# apt inside the chroot needs /proc; unmount it whatever happens.
mounted=""
cleanup() { if [ -n "$mounted" ]; then umount "$ROOT/proc" 2>/dev/null || umount -l "$ROOT/proc" 2>/dev/null || true; fi; }
trap cleanup EXIT
if ! mountpoint -q "$ROOT/proc"; then mount -t proc proc "$ROOT/proc"; mounted=1; fi
echo "deb $MIRROR sid main" >"$ROOT/etc/apt/sources.list"
# A registry that serves a snapshot of sid may carry a Release file past its Valid-Until date.
echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99erofs-vfsd"
echo "sid-chroot: installing ${SID_PACKAGES[*]}" >&2
chroot "$ROOT" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${SID_PACKAGES[*]}" >"$SID/apt.log" 2>&1 || {
  tail -n 20 "$SID/apt.log" >&2; echo "sid-chroot: apt-get in the chroot failed" >&2; exit 1; }
chroot "$ROOT" apt-get clean
cleanup; mounted=""

# Wrappers: the chroot's loader and libraries, the host's paths.
loader=$ROOT/usr/lib64/ld-linux-x86-64.so.2
libs=$ROOT/usr/lib/x86_64-linux-gnu
mkdir -p "$BIN"
wrap() { # wrap NAME PROGRAM [fixed args...]
  local name=$1 prog=$2; shift 2
  {
    echo '#!/bin/sh'
    echo "# $name from the sid chroot, run with the chroot's loader and libraries (scripts/sid-chroot.sh)."
    [ "$name" = qemu-system-x86_64 ] && echo "export QEMU_MODULE_DIR='$libs/qemu'"
    printf 'exec %q --library-path %q %q' "$loader" "$libs" "$ROOT$prog"
    for a in "$@"; do printf ' %q' "$a"; done
    echo ' "$@"'
  } >"$BIN/$name"
  chmod 755 "$BIN/$name"
}
# -L: firmware from the chroot (its /usr/share/qemu symlinks point at absolute /usr/share paths).
wrap qemu-system-x86_64 /usr/bin/qemu-system-x86_64 -L "$ROOT/usr/share/seabios" -L "$ROOT/usr/share/qemu"
wrap virtiofsd /usr/libexec/virtiofsd
for t in mkfs.erofs dump.erofs fsck.erofs; do wrap "$t" "/usr/bin/$t"; done

for t in qemu-system-x86_64 virtiofsd mkfs.erofs; do
  "$BIN/$t" --version >/dev/null 2>&1 || { echo "sid-chroot: $t from the chroot does not run" >&2; exit 1; }
done
echo "$STAMP_VERSION" >"$stamp"
echo "sid-chroot: $("$BIN/qemu-system-x86_64" --version | head -n1); $("$BIN/virtiofsd" --version | head -n1); $("$BIN/mkfs.erofs" --version | head -n1)" >&2
