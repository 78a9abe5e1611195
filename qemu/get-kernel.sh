#!/usr/bin/env bash
# Obtain a Debian guest kernel (and the few modules the guest needs) WITHOUT installing anything
# into the host: `apt-get download` + `dpkg-deb -x` into a private directory.
#
# Preferred: Linux 6.12 "cloud-amd64" from bookworm-backports (VIRTIO_FS, FUSE_FS, FUSE_DAX and
# VIRTIO_PCI built in; virtio_blk and erofs are modules). bookworm-backports is added through a
# private apt configuration (own sources.list, lists and cache directories under OUTDIR/apt), so
# the host's apt state is left untouched. Fallback: the host's own apt sources (Debian 12 ships
# 6.1), where fuse/virtiofs may be modules — they are then copied and loaded by the initramfs.
#
# With --suite sid: sid's current cloud kernel (Linux 7.x: VIRTIO_FS, FUSE_DAX built in, EROFS
# with page-cache sharing as a module), verified with the sid chroot's archive keyring
# (scripts/sid-chroot.sh); the QEMU 11.1 tests boot it.
#
# Usage: qemu/get-kernel.sh [--suite backports|sid] [OUTDIR]   (default: backports, .cache/guest)
# Env:   GUEST_KERNEL_FLAVOUR  cloud-amd64 (default) or amd64
#        GUEST_KERNEL_NO_BACKPORTS=1  skip bookworm-backports (use the host's sources)
# The Debian mirror is the one in the machine's apt sources (scripts/apt-mirror.sh).
# Output: OUTDIR/vmlinuz, OUTDIR/vmlinux (uncompressed ELF, when the kernel supports PVH boot),
#         OUTDIR/modules/*.ko (uncompressed), OUTDIR/modules.load (load order),
#         OUTDIR/kernel-version, OUTDIR/config, OUTDIR/source (which apt source it came from).
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE=backports
if [ "${1:-}" = --suite ]; then SUITE=$2; shift 2; fi
case "$SUITE" in backports|sid) ;; *) echo "get-kernel: --suite backports|sid" >&2; exit 2 ;; esac
OUT=${1:-.cache/guest}
FLAVOUR=${GUEST_KERNEL_FLAVOUR:-cloud-amd64}
MIRROR=$(scripts/apt-mirror.sh)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/kernel-version" ] && [ -f "$OUT/modules.load" ]; then
  echo "get-kernel: have $(cat "$OUT/kernel-version") in $OUT" >&2
  exit 0
fi

APT=$OUT/apt
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/dl"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
PRIV_SUITE=bookworm-backports
if [ "$SUITE" = sid ]; then
  # sid is signed with keys newer than bookworm's keyring: use the sid chroot's.
  scripts/sid-chroot.sh
  KEYRING=$(dirname "$(scripts/sid-chroot.sh --print-bin)")/root/usr/share/keyrings/debian-archive-keyring.gpg
  PRIV_SUITE=sid
fi
echo "deb [signed-by=$KEYRING] $MIRROR $PRIV_SUITE main" >"$APT/sources.list"
# A registry serving a snapshot of sid may carry a Release file past its Valid-Until date.
PRIV=(-o "Dir::Etc::sourcelist=$APT/sources.list" -o "Dir::Etc::sourceparts=-"
      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache"
      -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1" -o "Acquire::Check-Valid-Until=false")
HOST=(-o "APT::Sandbox::User=root")

# Resolve the metapackage (linux-image-FLAVOUR) to the concrete image package.
resolve() { # apt-opts... -> prints package name
  apt-cache "$@" depends "linux-image-$FLAVOUR" 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1
}

pkg="" ; source=""
if [ "$SUITE" = sid ]; then
  apt-get "${PRIV[@]}" -qq update >"$APT/update.log" 2>&1 || { tail -n 5 "$APT/update.log" >&2; exit 1; }
  pkg=$(resolve "${PRIV[@]}")
  [ -n "$pkg" ] || { echo "get-kernel: cannot resolve linux-image-$FLAVOUR in sid" >&2; exit 1; }
  source=sid; OPTS=("${PRIV[@]}")
elif [ -z "${GUEST_KERNEL_NO_BACKPORTS:-}" ] &&
   apt-get "${PRIV[@]}" -qq update >"$APT/update.log" 2>&1; then
  pkg=$(resolve "${PRIV[@]}")
  [ -n "$pkg" ] && source="bookworm-backports" && OPTS=("${PRIV[@]}")
else
  [ -n "${GUEST_KERNEL_NO_BACKPORTS:-}" ] && echo "get-kernel: GUEST_KERNEL_NO_BACKPORTS set; using host sources" >&2 ||
    echo "get-kernel: bookworm-backports unavailable (see $APT/update.log); falling back to host sources" >&2
fi
if [ -z "$pkg" ]; then
  pkg=$(resolve "${HOST[@]}")
  if [ -z "$pkg" ]; then
    apt-get update -qq || true
    pkg=$(resolve "${HOST[@]}")
  fi
  [ -n "$pkg" ] || { echo "get-kernel: cannot resolve linux-image-$FLAVOUR" >&2; exit 1; }
  source="host apt sources"; OPTS=("${HOST[@]}")
fi
echo "get-kernel: downloading $pkg from $source" >&2

# Newer Debian kernels split the image package into linux-binary-* (vmlinuz, config) and
# linux-modules-* (modules) and linux-base-* (config): fetch those too when the image package depends on them.
parts=("$pkg")
for p in $(apt-cache "${OPTS[@]}" depends "$pkg" 2>/dev/null | sed -n 's/^ *Depends: \(linux-\(binary\|modules\|base\)-[0-9][^ ]*\).*/\1/p'); do parts+=("$p"); done
rm -f "$APT/dl/"*.deb
(cd "$APT/dl" && apt-get "${OPTS[@]}" -qq download "${parts[@]}")
rm -rf "$OUT/root" && mkdir -p "$OUT/root"
for deb in "$APT/dl/"*.deb; do dpkg-deb -x "$deb" "$OUT/root"; done

MODROOT=$OUT/root/lib/modules
[ -d "$MODROOT" ] || MODROOT=$OUT/root/usr/lib/modules
kver=$(ls "$MODROOT" | head -n1)
MODDIR=$MODROOT/$kver
if [ -f "$OUT/root/boot/vmlinuz-$kver" ]; then
  cp "$OUT/root/boot/vmlinuz-$kver" "$OUT/vmlinuz"
  cp "$OUT/root/boot/config-$kver" "$OUT/config"
else
  cp "$MODDIR/vmlinuz" "$OUT/vmlinuz"
  cp "$MODDIR/config" "$OUT/config"
fi

# Modules the guest wants, in dependency order. Built-in ones are skipped (modules.builtin).
WANT=(virtio_pci fuse virtiofs virtio_blk erofs)
rm -rf "$OUT/modules" && mkdir -p "$OUT/modules"
: >"$OUT/modules.load.tmp"
declare -A seen=()
find_mod() { find "$MODDIR/kernel" -name "$1.ko" -o -name "$1.ko.xz" -o -name "$1.ko.zst" -o -name "$1.ko.gz" | head -n1; }
unpack() { # src dst
  case "$1" in
    *.xz) xz -dc "$1" >"$2" ;;
    *.zst) zstd -qdc "$1" >"$2" ;;
    *.gz) gzip -dc "$1" >"$2" ;;
    *) cp "$1" "$2" ;;
  esac
}
add_mod() {
  local name=${1//-/_}
  [ -n "${seen[$name]:-}" ] && return 0
  seen[$name]=1
  local f; f=$(find_mod "$name")
  if [ -z "$f" ]; then
    f=$(find_mod "${1//_/-}")
  fi
  if [ -z "$f" ]; then
    if grep -qE "/(${name}|${name//_/-})\.ko$" "$MODDIR/modules.builtin" 2>/dev/null; then return 0; fi
    echo "get-kernel: module $name not found (neither module nor built-in)" >&2
    return 0
  fi
  unpack "$f" "$OUT/modules/$name.ko"
  local deps; deps=$(grep -a -o 'depends=[^[:cntrl:]]*' "$OUT/modules/$name.ko" | head -n1 | cut -d= -f2)
  local d
  for d in ${deps//,/ }; do add_mod "$d"; done
  echo "$name" >>"$OUT/modules.load.tmp"
}
for m in "${WANT[@]}"; do add_mod "$m"; done
mv "$OUT/modules.load.tmp" "$OUT/modules.load"

# An uncompressed ELF vmlinux with a PVH entry note boots straight into 64-bit code: QEMU skips
# the real-mode setup and, above all, the in-guest decompression (several seconds under TCG).
# Extracted from the bzImage's payload (zstd, xz or gzip); run-guest.sh prefers it.
extract_vmlinux() {
  local magic tool off
  for pair in '\x28\xb5\x2f\xfd:zstd -dqc' '\xfd\x37\x7a\x58\x5a\x00:xz -dqc' '\x1f\x8b\x08:gzip -dqc'; do
    magic=${pair%%:*}; tool=${pair#*:}
    for off in $(LC_ALL=C grep -obUaP "$magic" "$OUT/vmlinuz" | cut -d: -f1 | head -n 3); do
      tail -c +$((off + 1)) "$OUT/vmlinuz" | $tool >"$OUT/vmlinux.tmp" 2>/dev/null || true
      if [ "$(head -c 4 "$OUT/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] &&
         LC_ALL=C grep -qaP 'Xen\x00' "$OUT/vmlinux.tmp"; then
        mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"; return 0
      fi
    done
  done
  rm -f "$OUT/vmlinux.tmp"; return 1
}
rm -f "$OUT/vmlinux"
if grep -q '^CONFIG_PVH=y' "$OUT/config" && extract_vmlinux; then
  echo "get-kernel: extracted a PVH-bootable vmlinux" >&2
fi

rm -rf "$OUT/root"   # keep only what the guest needs
echo "$source" >"$OUT/source"
echo "$kver" >"$OUT/kernel-version"
echo "get-kernel: $kver from $source; modules: $(tr '\n' ' ' <"$OUT/modules.load")" >&2
