#!/bin/sh
# In-guest test runner (busybox sh). Called by the initramfs /init after the virtio-fs export is
# mounted at $GT_MNT. Every result is ONE line on the console:  GUESTTEST {json}
# Bulk results (the walk manifest) are written to $GT_OUTDIR and shipped to the host by /init.
#
# Environment (set by /init from the kernel command line, gt.* parameters):
#   GT_MNT     mount point (default /mnt)          GT_TAG    virtio-fs tag (for the remount test)
#   GT_ROOT    data root below the mount point for the targeted tests ("" = the mount itself)
#   GT_TESTS   comma list: walk,readdir,mmap,odirect,parallel,xattr,hardlink,remount (default),
#              plus rofs (every modification must fail with EROFS; only for read-only exports —
#              on a writable export it really tries to modify xattr/)
#   GT_OUTDIR  where bulk output goes (default /out)
#   GT_WALK_ROOT  non-empty: the walk starts at $GT_MNT/$GT_ROOT instead of the mount point
#   GT_BENCH_FILE, GT_BENCH_TREE, GT_BENCH_FIRST  for `bench` (below $R): a large file, a
#              directory to walk, and a small file whose first 4 KiB are read first
# The targeted tests use the layout of the generated test tree (test/support/qemu.ts):
#   dir10k/ (10,000 entries), big/* (large files), xattr/file (several xattrs).
GT_MNT=${GT_MNT:-/mnt}
GT_TESTS=${GT_TESTS:-walk,readdir,mmap,odirect,parallel,xattr,hardlink,remount}
GT_OUTDIR=${GT_OUTDIR:-/out}
GT=${GT:-/guest-tests/gtest}
mkdir -p "$GT_OUTDIR"
R=$GT_MNT${GT_ROOT:+/$GT_ROOT}

say() { echo "GUESTTEST $*"; }
want() { case ",$GT_TESTS," in *",$1,"*) return 0 ;; esac; return 1; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; }
# run a gtest command and print its JSON line; a crash or no output still gives a line
run() { # name, gtest args...
  name=$1; shift
  drop
  out=$("$GT" "$@" 2>"$GT_OUTDIR/$name.err")
  rc=$?
  if [ -n "$out" ]; then say "$out"; else
    say "{\"test\":\"$name\",\"ok\":false,\"error\":\"gtest exited $rc without output: $(head -c 200 "$GT_OUTDIR/$name.err" | tr '\n"\\' '   ')\"}"
  fi
}

# GT_WALK_ROOT=1 (kernel word): the walk covers only $R (one image of a multi-image export)
W=$GT_MNT; if [ -n "${GT_WALK_ROOT:-}" ]; then W=$R; fi
if want walk; then run walk manifest "$W" "$GT_OUTDIR/walk.json"; fi
if want readdir; then run readdir readdir "$R/dir10k"; fi
if want mmap; then
  for f in "$R"/big/*; do run mmap mmap "$f"; done
fi
if want odirect; then run odirect odirect "$R/big/rand-3m"; fi
if want parallel; then run parallel parallel 4 "$R"/big/* "$R/files/f0007" "$R/files/f0099"; fi
if want xattr; then run xattr xattr "$R/xattr/file"; run xattr xattr "$R/xattr"; fi
if want hardlink; then run hardlink hardlink "$R/hard/a" "$R/hard/b"; fi
if want rofs; then run rofs rofs "$R/xattr"; fi
# bench (not in the default list): timing lines for bench/guest.ts, not checks. Each phase starts
# from a dropped guest cache; a `GUESTMARK {"phase":…}` line right before it lets the host sample
# the back-end's CPU time at the phase's edges. The first two phases meet a back-end fresh from
# its start (time to first byte, the first read walk); the last two repeat the walks on a warm one.
if want bench; then
  timed() { # name, gtest command, args... (not "${@:2}": busybox ash slices it wrongly after a shift)
    name=$1; cmd=$2; shift 2
    drop
    echo "GUESTMARK {\"phase\":\"$name\"}"
    out=$("$GT" "$cmd" "$name" "$@" 2>"$GT_OUTDIR/$name.err")
    if [ -n "$out" ]; then say "$out"; else say "{\"test\":\"$name\",\"ok\":false,\"error\":\"gtest $cmd gave no output\"}"; fi
  }
  timed bench-ttfb readtime "$R/$GT_BENCH_FIRST" 4096
  timed bench-walk-read-1 walktime read "$R/$GT_BENCH_TREE"
  timed bench-walk-stat-1 walktime stat "$R/$GT_BENCH_TREE"
  timed bench-seq-cold readtime "$R/$GT_BENCH_FILE"
  timed bench-seq-dropped readtime "$R/$GT_BENCH_FILE"
  timed bench-par2 partime 2 "$R/$GT_BENCH_FILE"
  timed bench-walk-read-2 walktime read "$R/$GT_BENCH_TREE"
  timed bench-walk-stat-2 walktime stat "$R/$GT_BENCH_TREE"
fi
if want remount; then
  drop
  before=$("$GT" sha "$R/big/rand-3m" remount-before)
  ok=true; err=""
  umount "$GT_MNT" || { ok=false; err="umount failed"; }
  if grep -q " $GT_MNT " /proc/mounts; then ok=false; err="still mounted"; fi
  mount -t virtiofs "$GT_TAG" "$GT_MNT" || { ok=false; err="$err mount failed"; }
  after=$("$GT" sha "$R/big/rand-3m" remount-after)
  # a second cycle, reading a directory in between
  umount "$GT_MNT" && mount -t virtiofs "$GT_TAG" "$GT_MNT" || { ok=false; err="$err second cycle failed"; }
  n=$(ls "$R/dir10k" 2>/dev/null | wc -l)
  s1=$(echo "$before" | sed -n 's/.*"sha256":"\([0-9a-f]*\)".*/\1/p')
  s2=$(echo "$after" | sed -n 's/.*"sha256":"\([0-9a-f]*\)".*/\1/p')
  [ -n "$s1" ] && [ "$s1" = "$s2" ] || ok=false
  say "{\"test\":\"remount\",\"ok\":$ok,\"sha256_before\":\"$s1\",\"sha256_after\":\"$s2\",\"dir10k_after\":$n,\"error\":\"$err\"}"
fi
