// What the benchmarks measure with: medians, a process tree's CPU time, a defined host
// page-cache state for a file, and the mixed-content file the sequential rows read.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';

/** The median (the mean of the two middle values for an even count). */
export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Microseconds per clock tick of /proc/PID/stat (USER_HZ: 100 on Linux x86). */
export const TICK_US = 10_000;

/**
 * utime + stime of a process, all its threads and its descendants (C virtiofsd serves from a
 * forked child in its sandbox; QEMU runs below run-guest.sh's `timeout`), in clock ticks.
 * A descendant that exited meanwhile takes its time with it: sample while the work runs.
 */
export function cpuTicks(pid: number): number {
  let total = 0;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    total += Number(f[11]) + Number(f[12]);
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      const kids = fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      for (const k of kids ? kids.split(' ') : []) total += cpuTicks(Number(k));
    }
  } catch {
    /* exited meanwhile */
  }
  return total;
}

/**
 * Drops a file's page cache (dd iflag=nocache) and reads it back sequentially, so read-ahead
 * caches it in large folios. The kernel's copy out of the page cache (virtiofsd's preadv) costs
 * 2-4x more per MiB from a file cached page by page, and which state a file is in depends on how
 * the host last read it: every side starts from this one.
 */
export function recachePages(file: string): void {
  const r = spawnSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
  if (r.status !== 0) throw new Error(`dd iflag=nocache ${file}: ${r.stderr}`);
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    while (fs.readSync(fd, buf, 0, buf.length, null) > 0) { /* read-ahead fills the cache */ }
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Writes `size` bytes of mixed content: 4 KiB blocks alternating between random bytes and
 * repeated text lines, ~2:1 for LZ4 (random data alone would be stored uncompressed).
 */
export function writeMixedFile(file: string, size: number): void {
  const CHUNK = 1 << 20;
  const fd = fs.openSync(file, 'w');
  try {
    const block = Buffer.alloc(CHUNK);
    let x = 0x9e3779b9;
    for (let off = 0; off < size; off += CHUNK) {
      for (let i = 0; i < CHUNK; i += 4096) {
        if ((i >> 12) % 2 === 0) {
          for (let j = 0; j < 4096; j++) {
            x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
            block[i + j] = x & 0xff;
          }
        } else {
          block.write(`line ${off + i} of the benchmark file, repeated text compresses well\n`.repeat(64), i, 4096, 'latin1');
        }
      }
      fs.writeSync(fd, block, 0, Math.min(CHUNK, size - off));
    }
  } finally {
    fs.closeSync(fd);
  }
}
