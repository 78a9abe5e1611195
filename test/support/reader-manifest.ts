// Builds a Manifest (the format of ../shared/images/*.expected.json) from an ErofsReader, so
// the reader's view can be compared with the kernel's with diffManifests.
import crypto from 'node:crypto';
import type { ErofsReader } from '../../src/erofs/index.js';
import type { Manifest, ManifestEntry } from './manifest.js';

const READ_CHUNK = 4 * 1024 * 1024;
const READDIR_BATCH = 512;

function rdevPair(rdev: number): [number, number] {
  return [(rdev & 0xfff00) >>> 8, (rdev & 0xff) | ((rdev >>> 12) & 0xfff00)];
}

/** sha256 hex of a regular file's content, read in large chunks. */
export function readerSha256(reader: ErofsReader, nid: number, size: number): string {
  const h = crypto.createHash('sha256');
  for (let off = 0; off < size; ) {
    const b = reader.read(nid, off, Math.min(READ_CHUNK, size - off));
    if (b.length === 0) throw new Error(`short read of nid ${nid} at ${off}`);
    h.update(b);
    off += b.length;
  }
  return h.digest('hex');
}

export function manifestEntry(reader: ErofsReader, nid: number): ManifestEntry {
  const a = reader.getAttr(nid);
  const e: ManifestEntry = {
    type: a.type,
    mode: a.mode & 0o7777,
    uid: a.uid,
    gid: a.gid,
    nlink: a.nlink,
    mtime_ns: (BigInt(a.mtimeSec) * 1_000_000_000n + BigInt(a.mtimeNsec)).toString(),
  };
  if (a.type === 'file') {
    e.size = a.size;
    e.sha256 = readerSha256(reader, nid, a.size);
  } else if (a.type === 'symlink') {
    e.target = reader.readlink(nid).toString('utf8');
  } else if (a.type === 'chardev' || a.type === 'blockdev') {
    e.rdev = rdevPair(a.rdev);
  }
  const xs = reader.listXattrs(nid);
  if (xs.length) {
    e.xattrs = {};
    for (const x of xs) e.xattrs[x.name] = x.value.toString('hex');
  }
  return e;
}

/** A regular file of an image, once per path (hard links appear under each of their paths). */
export interface RegularFile {
  /** relative to the root, as in a Manifest */
  path: string;
  nid: number;
  size: number;
}

/** Every regular file of the image, depth first from the root. */
export function regularFiles(reader: ErofsReader): RegularFile[] {
  const out: RegularFile[] = [];
  const walk = (dir: number, prefix: string): void => {
    for (let off = 0; ;) {
      const ents = reader.readdir(dir, off, READDIR_BATCH);
      if (ents.length === 0) break;
      for (const e of ents) {
        off = e.nextOffset;
        const name = e.name.toString('latin1');
        if (name === '.' || name === '..') continue;
        const p = prefix ? `${prefix}/${name}` : name;
        if (e.type === 'dir') walk(e.nid, p);
        else if (e.type === 'file') out.push({ path: p, nid: e.nid, size: reader.getAttr(e.nid).size });
      }
    }
  };
  walk(reader.rootNid, '');
  return out;
}

/** Walks the whole tree from the root; paths are relative ('' = root). */
export function manifestFromReader(
  reader: ErofsReader,
  onEntry?: (path: string, nid: number, entry: ManifestEntry) => void,
): Manifest {
  const out: Manifest = {};
  const stack: { nid: number; path: string; depth: number }[] = [{ nid: reader.rootNid, path: '', depth: 0 }];
  const onStack = new Set<number>();
  out[''] = manifestEntry(reader, reader.rootNid);
  while (stack.length) {
    const { nid, path, depth } = stack.pop()!;
    if (depth > 1024 || onStack.has(nid)) throw new Error(`directory loop at '${path}'`);
    let off = 0;
    for (;;) {
      const ents = reader.readdir(nid, off, READDIR_BATCH);
      if (!ents.length) break;
      for (const d of ents) {
        off = d.nextOffset;
        const name = d.name.toString('utf8');
        if (name === '.' || name === '..') continue;
        const p = path ? `${path}/${name}` : name;
        out[p] = manifestEntry(reader, d.nid);
        onEntry?.(p, d.nid, out[p]!);
        if (out[p]!.type !== d.type) throw new Error(`'${p}': dirent type ${d.type} but inode type ${out[p]!.type}`);
        if (d.type === 'dir') stack.push({ nid: d.nid, path: p, depth: depth + 1 });
      }
    }
  }
  return out;
}
