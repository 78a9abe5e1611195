#!/usr/bin/env bash
# Boot the test guest against a vhost-user-fs back-end (ours or virtiofsd) that already listens
# on SOCKET. The serial console goes to stdout; the guest prints `GUESTTEST {json}` lines and
# `GUESTDONE` and then powers off (QEMU exits).
#
# Usage: qemu/run-guest.sh --socket SOCKET [--tag TAG] [--out OUT.img] [--queues N]
#                          [--mem 512M] [--smp 2] [--guest DIR] [--timeout SECONDS]
#                          [--qemu BIN] [--device fs|test-device]
#                          [--print] [--allow-reboot] [-- extra kernel command line words (gt.tests=…, gt.root=…)]
# The accelerator comes from qemu/accel.sh (a real KVM probe, cached; EROFS_VFSD_ACCEL=kvm|tcg
# forces it) and is printed on stderr as `run-guest: accel=…`. Under TCG: -cpu qemu64,-cx16
# (see qemu/README.md). Guest RAM is a shared memfd (memory-backend-memfd,share=on + a NUMA
# node), which vhost-user requires.
# --device fs: vhost-user-fs-pci (no DAX window in any upstream QEMU); --device test-device:
# QEMU >= 11.1's vhost-user-test-device-pci as a virtio-fs device (virtio-id 26), whose
# shared-memory BAR (the DAX window) is sized by the back-end's GET_SHMEM_CONFIG reply.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
GUEST=$here/../.cache/guest
SOCK=""; TAG=erofs; OUT=""; QUEUES=1; MEM=512M; SMP=2; TIMEOUT=600; PRINT=""; NOREBOOT=-no-reboot
QEMU=${EROFS_VFSD_QEMU:-qemu-system-x86_64}; DEVICE=fs
while [ $# -gt 0 ]; do
  case "$1" in
    --socket) SOCK=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --queues) QUEUES=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    --smp) SMP=$2; shift 2 ;;
    --guest) GUEST=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --qemu) QEMU=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --print) PRINT=1; shift ;;
    --allow-reboot) NOREBOOT=""; shift ;;
    --) shift; break ;;
    *) echo "run-guest: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$SOCK" ] || { echo "run-guest: --socket is required" >&2; exit 2; }
for f in vmlinuz initramfs.gz; do
  [ -s "$GUEST/$f" ] || { echo "run-guest: $GUEST/$f missing (run qemu/get-kernel.sh and qemu/build-initramfs.sh)" >&2; exit 2; }
done

# The uncompressed PVH-bootable vmlinux (get-kernel.sh) boots ~5-8 s faster under TCG than the
# bzImage, which decompresses itself in the guest. GUEST_BOOT=bzimage forces the bzImage.
KERNEL=$GUEST/vmlinuz
if [ -s "$GUEST/vmlinux" ] && [ "${GUEST_BOOT:-}" != bzimage ]; then KERNEL=$GUEST/vmlinux; fi
# tsc=unstable under TCG: after SMP bring-up a late initcall marks sched_clock stable ("sched_clock:
# Marking stable" at ~1.6 s) by live-patching a static key, int3 first, while the other vCPU
# runs; multi-threaded TCG occasionally executes a stale translation of that int3 and the guest
# dies with "Oops: int3" in sched_clock_cpu (one CI boot in ~15). With the TSC marked unstable on
# the command line, sched_clock is never marked stable and nothing is patched (the clocksource
# becomes hpet; walk times are unchanged). +rdrand with random.trust_cpu=on, likewise: the RNG is
# seeded at 0 s instead of late (one CI guest died patching the crng_is_ready key at ~14 s).
accel=$("$here/accel.sh" --qemu "$QEMU" --guest "$GUEST")
echo "run-guest: accel=$accel" >&2
if [ "$accel" = kvm ]; then ACCEL=(-accel kvm -cpu host); ACCEL_KARGS=""; else ACCEL=(-accel tcg,thread=multi -cpu qemu64,-cx16,+rdrand); ACCEL_KARGS="tsc=unstable random.trust_cpu=on"; fi
case "$DEVICE" in
  fs) FSDEV="vhost-user-fs-pci,chardev=vfs0,tag=$TAG,num-request-queues=$QUEUES" ;;
  # The tag and queue count come from the back-end's GET_CONFIG (virtio-fs config: tag[36] +
  # le32 num_request_queues = 40 bytes); num_vqs counts the high-priority queue too.
  test-device) FSDEV="vhost-user-test-device-pci,chardev=vfs0,virtio-id=26,num_vqs=$((QUEUES + 1)),vq_size=1024,config_size=40" ;;
  *) echo "run-guest: --device fs|test-device" >&2; exit 2 ;;
esac
args=(
  "$QEMU" "${ACCEL[@]}" -machine q35 -smp "$SMP" -m "$MEM"
  -object "memory-backend-memfd,id=mem,size=$MEM,share=on" -numa node,memdev=mem
  -nographic -nodefaults ${NOREBOOT} -serial stdio -monitor none
  -chardev "socket,id=vfs0,path=$SOCK"
  -device "$FSDEV"
  -kernel "$KERNEL" -initrd "$GUEST/initramfs.gz"
  -append "console=ttyS0 quiet panic=-1 $ACCEL_KARGS gt.tag=$TAG $*"
)
if [ -n "$OUT" ]; then
  [ -f "$OUT" ] || truncate -s 64M "$OUT"
  args+=(-drive "file=$OUT,format=raw,if=virtio,cache=unsafe")
fi
if [ -n "$PRINT" ]; then printf '%q ' "${args[@]}"; echo; exit 0; fi
exec timeout --foreground -k 5 "$TIMEOUT" "${args[@]}" </dev/null
