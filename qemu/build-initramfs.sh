#!/usr/bin/env bash
# Build the guest initramfs: busybox (static), /init, guest-tests/ with the gtest helper compiled
# by `gcc -static`, and the guest kernel's modules listed by get-kernel.sh. cpio newc + gzip.
#
# Usage: qemu/build-initramfs.sh [GUESTDIR]      (default .cache/guest; run get-kernel.sh first)
# Output: GUESTDIR/initramfs.gz, GUESTDIR/gtest (the same helper, for host-side manifests)
set -euo pipefail
cd "$(dirname "$0")/.."
G=${1:-.cache/guest}
BUSYBOX=${BUSYBOX:-/bin/busybox}
mkdir -p "$G"
G=$(cd "$G" && pwd)
[ -x "$BUSYBOX" ] || { echo "build-initramfs: $BUSYBOX missing (apt-get install busybox-static)" >&2; exit 1; }
if ! file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' && ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "build-initramfs: $BUSYBOX is not static (install busybox-static)" >&2; exit 1
fi

gcc -static -O2 -Wall -o "$G/gtest.tmp" guest-tests/gtest.c && mv "$G/gtest.tmp" "$G/gtest"

R=$G/initramfs.root
rm -rf "$R"
mkdir -p "$R"/{bin,sbin,proc,sys,dev,mnt,out,tmp,modules,guest-tests}
cp "$BUSYBOX" "$R/bin/busybox"
ln -s busybox "$R/bin/sh"
cp qemu/init "$R/init"
chmod 755 "$R/init"
cp guest-tests/run.sh "$R/guest-tests/run.sh"
cp "$G/gtest" "$R/guest-tests/gtest"
if [ -f "$G/modules.load" ]; then
  cp "$G/modules.load" "$R/modules.load"
  for m in $(cat "$G/modules.load"); do cp "$G/modules/$m.ko" "$R/modules/"; done
fi
(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -6 >"$G/initramfs.gz.tmp"
mv "$G/initramfs.gz.tmp" "$G/initramfs.gz"
rm -rf "$R"
echo "build-initramfs: $G/initramfs.gz ($(stat -c %s "$G/initramfs.gz") bytes)" >&2
