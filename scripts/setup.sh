#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh Debian 12 machine: system packages, npm dependencies,
# the native addon and the TypeScript build. Called by the README's two commands and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the daemon, its tests and its benchmarks use:
#  erofs-utils      mkfs.erofs 1.5, builds test images            qemu-system-x86  real guests (TCG/KVM)
#  busybox-static   guest initramfs userland                      cpio, xz-utils   initramfs / kernel modules
#  qemu-system-common, virtiofsd  the C/Rust reference back-ends compared against
#  attr, acl        xattrs and ACLs in generated test trees        lz4, zstd        reference compressors
#  python3          xattr/seek helpers in tests                   g++, make        node-gyp for the addon
#  debootstrap      the Debian sid chroot (scripts/sid-chroot.sh): QEMU 11.1, Rust virtiofsd 1.14,
#                   erofs-utils 1.9, sid's kernel headers
APT_PACKAGES=(
  erofs-utils qemu-system-x86 qemu-system-common busybox-static cpio xz-utils
  attr acl lz4 zstd python3 g++ make ca-certificates debootstrap
)
if apt-cache show virtiofsd >/dev/null 2>&1; then APT_PACKAGES+=(virtiofsd); fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # virtiofsd may only become visible after the update above.
  if ! dpkg-query -W virtiofsd >/dev/null 2>&1 && apt-cache show virtiofsd >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends virtiofsd >/dev/null
  fi
fi

# QEMU 11.1 (the DAX window), Rust virtiofsd 1.14 and erofs-utils 1.9 come from Debian sid.
scripts/sid-chroot.sh

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "setup: Node.js >= 20 is required (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

# npm ci builds the native addons (binding.gyp here and in packages/vhost-user-ts) as part of the install.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm rebuild --loglevel=error >/dev/null
fi
npm run build --silent
