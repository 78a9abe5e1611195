// The kernel's view of a directory tree (a source tree, a loop mount, a FUSE mount) as a
// Manifest (test/support/manifest.ts): lstat, readlink, listxattr/getxattr and SHA-256 of every
// regular file. Xattrs come from one python3 process for the whole tree (Node has no xattr
// calls), which keeps a 10,000-entry walk fast.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import type { Manifest, ManifestEntry } from './manifest.js';

const PY_XATTRS = String.raw`
import os, sys, json
paths = sys.stdin.buffer.read().split(b'\0')
out = []
for p in paths:
    if not p: continue
    d = {}
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError as e:
        out.append({'error': e.strerror}); continue
    for n in names:
        try:
            d[n] = os.getxattr(p, n, follow_symlinks=False).hex()
        except OSError as e:
            d[n] = 'ERROR:' + (e.strerror or str(e.errno))
    out.append(d)
sys.stdout.write(json.dumps(out))
`;

/** Linux dev_t → [major, minor] (glibc's gnu_dev_major/minor). */
export function splitDev(dev: bigint): [number, number] {
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  return [major, minor];
}

export function typeOfStat(st: fs.BigIntStats): ManifestEntry['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'chardev';
  if (st.isBlockDevice()) return 'blockdev';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

export function sha256File(file: string): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Xattrs of many paths in one python3 process: name → hex value, per path (same order). */
export function xattrsOf(paths: string[]): Record<string, string>[] {
  if (paths.length === 0) return [];
  const input = Buffer.concat(paths.flatMap((p) => [Buffer.from(p), Buffer.from([0])]));
  const out = execFileSync('python3', ['-c', PY_XATTRS], { input, maxBuffer: 1 << 30 });
  const parsed = JSON.parse(out.toString('utf8')) as (Record<string, string> | { error: string })[];
  if (parsed.length !== paths.length) throw new Error(`xattr helper returned ${parsed.length} results for ${paths.length} paths`);
  return parsed.map((r, i) => {
    if ('error' in r && typeof r.error === 'string') throw new Error(`listxattr ${paths[i]}: ${r.error}`);
    return r as Record<string, string>;
  });
}

export interface DirectoryManifestOptions {
  /** Skip SHA-256 of file contents (faster; sha256 left out). */
  noHash?: boolean;
}

/** The tree under `dir` as the running kernel shows it. Keys are relative paths ('' = root). */
export function manifestFromDirectory(dir: string, opts: DirectoryManifestOptions = {}): Manifest {
  const m: Manifest = {};
  const rels: string[] = [];
  const walk = (rel: string) => {
    const abs = rel === '' ? dir : path.join(dir, rel);
    const st = fs.lstatSync(abs, { bigint: true });
    const type = typeOfStat(st);
    const e: ManifestEntry = {
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      nlink: Number(st.nlink),
      mtime_ns: st.mtimeNs.toString(),
    };
    if (type === 'file') {
      e.size = Number(st.size);
      if (!opts.noHash) e.sha256 = sha256File(abs);
    } else if (type === 'symlink') {
      e.target = fs.readlinkSync(abs, { encoding: 'buffer' }).toString('utf8');
    } else if (type === 'chardev' || type === 'blockdev') {
      e.rdev = splitDev(st.rdev);
    }
    m[rel] = e;
    rels.push(rel);
    if (type === 'dir') {
      const names = fs.readdirSync(abs, { encoding: 'buffer' }).map((b) => b.toString('utf8')).sort();
      for (const n of names) walk(rel === '' ? n : `${rel}/${n}`);
    }
  };
  walk('');
  const xs = xattrsOf(rels.map((r) => (r === '' ? dir : path.join(dir, r))));
  rels.forEach((r, i) => {
    if (Object.keys(xs[i]!).length > 0) m[r]!.xattrs = xs[i]!;
  });
  return m;
}

const PY_SEEKS = String.raw`
import os, sys, json, errno
qs = json.load(sys.stdin)
out = []
for path, off, whence in qs:
    fd = os.open(path, os.O_RDONLY)
    try:
        out.append(os.lseek(fd, off, os.SEEK_DATA if whence == 'data' else os.SEEK_HOLE))
    except OSError as e:
        out.append(errno.errorcode.get(e.errno, str(e.errno)))
    finally:
        os.close(fd)
sys.stdout.write(json.dumps(out))
`;

/**
 * lseek(SEEK_DATA / SEEK_HOLE) answers of the running kernel for many (file, offset, whence)
 * queries in one python3 process: the resulting offset, or the errno name (e.g. 'ENXIO').
 */
export function kernelSeeks(queries: [file: string, offset: number, whence: 'data' | 'hole'][]): (number | string)[] {
  if (queries.length === 0) return [];
  const out = execFileSync('python3', ['-c', PY_SEEKS], { input: JSON.stringify(queries), maxBuffer: 1 << 26 });
  return JSON.parse(out.toString('utf8')) as (number | string)[];
}
