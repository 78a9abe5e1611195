// Issue 3 benchmark: sequential read of every file of the corpus, and of one 256 MiB file, for
// each compression kind — (a) through the reader in-process, (b) through `erofs-vfsd mount` —
// each as a ratio to the host kernel's loop mount of the same image, measured in the same run.
//
// Warm cache, defined per path so that each measures its own work:
//  - kernel: the loop mount's page cache holds the file data (second pass);
//  - in-process: the image file is in the host page cache; the reader's own caches are warm;
//  - mount: the daemon is warm, but the kernel's FUSE page cache is dropped before each timed
//    pass (otherwise the pass would time the kernel's page cache, not our server).

import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { openImage } from '../src/erofs/index.js';
import type { ErofsReader } from '../src/erofs/api.js';
import { REPO_ROOT, SHARED_IMAGES } from '../test/support/paths.js';
import { loopMount } from '../test/support/loop-mount.js';
import { regularFiles } from '../test/support/reader-manifest.js';
import { median, writeMixedFile } from './measure.js';

export const BENCH_DIR = path.join(REPO_ROOT, '.cache/bench');
const CHUNK = 1 << 20;
const PASSES = 3;

export interface ReaderRow {
  workload: string;
  image: string;
  bytes: number;
  kernelMBps: number;
  inProcessMBps: number;
  /** In-process with a decompressed-data cache that holds the whole workload (the kernel's warm state). */
  inProcessCachedMBps: number;
  mountMBps: number;
  inProcessRatio: number;
  inProcessCachedRatio: number;
  mountRatio: number;
}


function listFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push(p);
    }
  };
  walk(root);
  return out.sort();
}

/** Reads every file through the VFS in 1 MiB chunks; returns bytes read. */
function readAllFs(files: string[], buf: Buffer): number {
  let total = 0;
  for (const f of files) {
    const fd = fs.openSync(f, 'r');
    try {
      for (;;) {
        const n = fs.readSync(fd, buf, 0, buf.length, null);
        if (n <= 0) break;
        total += n;
      }
    } finally {
      fs.closeSync(fd);
    }
  }
  return total;
}

/** Reads every file in 1 MiB chunks into one reused buffer, as the kernel-side loops do. */
function readAllReader(reader: ErofsReader, files: { nid: number; size: number }[], buf: Buffer): number {
  let total = 0;
  for (const f of files) {
    for (let off = 0; off < f.size; off += CHUNK) {
      const want = Math.min(CHUNK, f.size - off);
      total += reader.readInto ? reader.readInto(f.nid, off, want, buf, 0) : reader.read(f.nid, off, want).length;
    }
  }
  return total;
}

function timeMBps(fn: () => number, before?: () => void): { mbps: number; bytes: number } {
  fn(); // warm-up pass
  const rates: number[] = [];
  let bytes = 0;
  for (let i = 0; i < PASSES; i++) {
    before?.();
    const t0 = process.hrtime.bigint();
    bytes = fn();
    const ns = Number(process.hrtime.bigint() - t0);
    rates.push(bytes / 1e6 / (ns / 1e9));
  }
  return { mbps: median(rates), bytes };
}

function dropPageCache(keepWarm: string[]): void {
  fs.writeFileSync('/proc/sys/vm/drop_caches', '1');
  const buf = Buffer.allocUnsafe(CHUNK);
  readAllFs(keepWarm, buf); // the image files themselves stay warm for the daemon
}

async function startMount(image: string, mountpoint: string): Promise<ChildProcess> {
  fs.mkdirSync(mountpoint, { recursive: true });
  const child = spawn(process.execPath, [path.join(REPO_ROOT, 'dist/src/cli/main.js'), 'mount', image, mountpoint], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    if (fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === mountpoint)) return child;
    if (child.exitCode !== null) throw new Error(`erofs-vfsd mount exited with ${child.exitCode}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  throw new Error('erofs-vfsd mount did not come up');
}

async function stopMount(child: ChildProcess, mountpoint: string): Promise<void> {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 10000))]);
  try { execFileSync('umount', ['-l', mountpoint], { stdio: 'ignore' }); } catch { /* already unmounted */ }
}

async function measureImage(workload: string, image: string): Promise<ReaderRow> {
  const buf = Buffer.allocUnsafe(CHUNK);
  const loop = loopMount(image);
  let kernel: { mbps: number; bytes: number };
  try {
    const files = listFiles(loop.dir);
    kernel = timeMBps(() => readAllFs(files, buf));
  } finally {
    loop.unmount();
  }
  // Default cache (64 MiB): compressed files bigger than it are decoded again on every pass.
  const reader = openImage(image);
  let inProcess: { mbps: number; bytes: number };
  try {
    const files = regularFiles(reader);
    inProcess = timeMBps(() => readAllReader(reader, files, buf));
  } finally {
    reader.close();
  }
  // A cache big enough for the decoded workload: the same warm state as the kernel's page cache.
  const cachedReader = openImage(image, { cacheBytes: 1 << 30 });
  let inProcessCached: { mbps: number; bytes: number };
  try {
    const files = regularFiles(cachedReader);
    inProcessCached = timeMBps(() => readAllReader(cachedReader, files, buf));
  } finally {
    cachedReader.close();
  }
  const mnt = path.join(BENCH_DIR, 'mnt', path.basename(image));
  const child = await startMount(image, mnt);
  let mount: { mbps: number; bytes: number };
  try {
    const files = listFiles(mnt);
    mount = timeMBps(() => readAllFs(files, buf), () => dropPageCache([image]));
  } finally {
    await stopMount(child, mnt);
  }
  for (const r of [inProcess, inProcessCached, mount]) {
    if (r.bytes !== kernel.bytes) throw new Error(`${image}: read ${r.bytes} bytes, the kernel ${kernel.bytes}`);
  }
  return {
    workload,
    image: path.basename(image),
    bytes: kernel.bytes,
    kernelMBps: kernel.mbps,
    inProcessMBps: inProcess.mbps,
    inProcessCachedMBps: inProcessCached.mbps,
    mountMBps: mount.mbps,
    inProcessRatio: inProcess.mbps / kernel.mbps,
    inProcessCachedRatio: inProcessCached.mbps / kernel.mbps,
    mountRatio: mount.mbps / kernel.mbps,
  };
}

/** A 256 MiB file of mixed content (text-like runs and random blocks, ~2:1 for LZ4) and its images. */
function buildBigImages(): { name: string; image: string }[] {
  const dir = path.join(BENCH_DIR, 'big');
  const tree = path.join(dir, 'tree');
  const file = path.join(tree, 'big.bin');
  const size = 256 << 20;
  fs.mkdirSync(tree, { recursive: true });
  if (!fs.existsSync(file) || fs.statSync(file).size !== size) writeMixedFile(file, size);
  const variants: [string, string[]][] = [
    ['plain', []],
    ['lz4', ['-zlz4']],
    ['lz4hc', ['-zlz4hc']],
  ];
  return variants.map(([name, opts]) => {
    const image = path.join(dir, `big-${name}.erofs`);
    if (!fs.existsSync(image) || fs.statSync(image).mtimeMs < fs.statSync(file).mtimeMs) {
      execFileSync('mkfs.erofs', [...opts, '-T0', '--all-root', image, tree], { stdio: 'ignore' });
    }
    return { name, image };
  });
}

/** GETXATTR of names a guest asks for on exec/open and images rarely carry. */
const ABSENT_XATTRS = ['security.capability', 'system.posix_acl_access', 'system.posix_acl_default', 'security.selinux'];

export interface XattrRow {
  image: string;
  inodes: string;
  /** (inode, absent name) pairs per pass. */
  lookups: number;
  /** getXattr calls per second answered by parsing the inode's xattrs. */
  parsedPerSec: number;
  /** The same calls with the xattr name filter. */
  filteredPerSec: number;
  ratio: number;
}

/** getXattr calls per second over (nid, name) pairs whose name is absent from the inode. */
function getxattrRate(reader: ErofsReader, pairs: [number, string][]): number {
  const pass = (): number => {
    for (const [nid, name] of pairs) {
      try {
        reader.getXattr(nid, name);
        throw new Error(`${name} is present on nid ${nid}`);
      } catch (e) {
        if ((e as { code?: string }).code !== 'ENODATA') throw e;
      }
    }
    return pairs.length;
  };
  pass(); // warm-up: inode and metadata caches
  const rates: number[] = [];
  for (let i = 0; i < PASSES * 3; i++) {
    const t0 = process.hrtime.bigint();
    let n = 0;
    while (Number(process.hrtime.bigint() - t0) < 200e6) n += pass();
    rates.push(n / (Number(process.hrtime.bigint() - t0) / 1e9));
  }
  return median(rates);
}

/**
 * GETXATTR of absent names with and without the xattr name filter (mkfs.erofs 1.9 writes one
 * per inode), in-process, on the inodes that have xattrs (the others answer ENODATA without
 * either) and on every inode.
 */
export function benchXattrFilter(image = path.join(SHARED_IMAGES, 'xattr-filter.erofs')): XattrRow[] {
  const filtered = openImage(image);
  const parsed = openImage(image, { xattrNameFilter: false });
  try {
    const files = regularFiles(filtered);
    const all: number[] = [filtered.rootNid, ...files.map((f) => f.nid)];
    const withXattrs = all.filter((nid) => filtered.listXattrs(nid).length > 0);
    const rows: XattrRow[] = [];
    for (const [label, nids] of [['with xattrs', withXattrs], ['all files', all]] as const) {
      const pairs: [number, string][] = [];
      for (const nid of nids) {
        const present = new Set(filtered.listXattrs(nid).map((x) => x.name));
        for (const name of ABSENT_XATTRS) if (!present.has(name)) pairs.push([nid, name]);
      }
      const p = getxattrRate(parsed, pairs);
      const f = getxattrRate(filtered, pairs);
      rows.push({ image: path.basename(image), inodes: `${label} (${nids.length})`, lookups: pairs.length, parsedPerSec: p, filteredPerSec: f, ratio: f / p });
    }
    return rows;
  } finally {
    filtered.close();
    parsed.close();
  }
}

export async function benchReader(log: (s: string) => void = () => {}): Promise<{ rows: ReaderRow[]; notes: string[] }> {
  fs.mkdirSync(BENCH_DIR, { recursive: true });
  const rows: ReaderRow[] = [];
  const notes: string[] = [];
  const corpus: [string, string][] = [
    ['plain', 'plain.erofs'],
    ['lz4', 'lz4.erofs'],
    ['lz4hc', 'lz4hc-bigpcluster.erofs'],
    ['deflate', 'deflate.erofs'],
    ['zstd', 'zstd.erofs'],
    ['lzma', 'lzma.erofs'],
  ];
  for (const [kind, file] of corpus) {
    log(`reader: corpus ${kind}`);
    rows.push(await measureImage(`corpus ${kind}`, path.join(SHARED_IMAGES, file)));
  }
  for (const { name, image } of buildBigImages()) {
    log(`reader: 256 MiB ${name}`);
    rows.push(await measureImage(`256 MiB file ${name}`, image));
  }
  log('reader: GETXATTR of absent names, with and without the xattr name filter');
  for (const x of benchXattrFilter()) {
    notes.push(
      `GETXATTR of absent names (${ABSENT_XATTRS.join(', ')}), ${x.image}, ${x.inodes}: ` +
        `${Math.round(x.filteredPerSec).toLocaleString('en')}/s from the name filter vs ` +
        `${Math.round(x.parsedPerSec).toLocaleString('en')}/s parsing the xattrs: ratio ${x.ratio.toFixed(2)}.`,
    );
  }
  notes.push(
    'The 256 MiB file is built with Debian\'s mkfs.erofs 1.5, which has no DEFLATE, ZSTD or LZMA ' +
      'compressor; those algorithms are measured on the shared corpus images only.',
  );
  return { rows, notes };
}
