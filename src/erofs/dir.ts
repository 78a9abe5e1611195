// Directories: dirent blocks (sorted names, inline tails), readdir with stable byte-position
// cookies and lookup by binary search over blocks, then within the block.
import { ErofsError } from './api.js';
import type { DirEntry, FileType } from './api.js';
import { DIRENT_SIZE, FT_TO_TYPE, NAME_LEN, decodeNid } from './format.js';

export interface RawDirent {
  name: Buffer;
  nid: number;
  fileType: number;
}

/** Dirents of one directory block (`blk` = the block's valid bytes). */
export function parseDirBlock(blk: Buffer, where: string): RawDirent[] {
  if (blk.length < DIRENT_SIZE) throw new ErofsError('EIO', `${where}: directory block too short`);
  const nameoff0 = blk.readUInt16LE(8);
  if (nameoff0 < DIRENT_SIZE || nameoff0 >= blk.length) {
    throw new ErofsError('EIO', `${where}: invalid first nameoff ${nameoff0}`);
  }
  const n = Math.floor(nameoff0 / DIRENT_SIZE);
  const out: RawDirent[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const o = i * DIRENT_SIZE;
    const nameoff = blk.readUInt16LE(o + 8);
    let end: number;
    if (i + 1 < n) {
      end = blk.readUInt16LE(o + DIRENT_SIZE + 8);
    } else {
      const z = blk.indexOf(0, nameoff);
      end = z < 0 ? blk.length : z;
    }
    if (nameoff < nameoff0 || nameoff >= blk.length || end > blk.length || end <= nameoff || end - nameoff > NAME_LEN) {
      throw new ErofsError('EIO', `${where}: corrupted dirent ${i}`);
    }
    const nid = decodeNid(blk, o);
    if (nid === undefined) throw new ErofsError('EIO', `${where}: dirent ${i} nid out of range`);
    out[i] = { name: blk.subarray(nameoff, end), nid, fileType: blk[o + 10]! };
  }
  return out;
}

export interface DirSource {
  nid: number;
  size: number;
  blockSize: number;
  dotOmitted: boolean;
  /** Valid bytes of directory block i. */
  block(i: number): Buffer;
  /** Type of an inode when the dirent does not say. */
  typeOf(nid: number): FileType;
}

function entryType(d: DirSource, e: RawDirent): FileType {
  const t = FT_TO_TYPE[e.fileType];
  return t ?? d.typeOf(e.nid);
}

/** Entries from cookie `offset`, at most `max`. Cookies: dirent byte position (+1 when "." is synthesised). */
export function readdir(d: DirSource, offset: number, max: number): DirEntry[] {
  const out: DirEntry[] = [];
  if (max <= 0 || !Number.isSafeInteger(offset) || offset < 0) return out;
  const bias = d.dotOmitted ? 1 : 0;
  if (d.dotOmitted && offset === 0) {
    out.push({ name: Buffer.from('.'), nid: d.nid, type: 'dir', nextOffset: 1 });
    offset = 1;
  }
  let pos = offset - bias;
  const bs = d.blockSize;
  const nblocks = Math.ceil(d.size / bs);
  let guard = 0;
  while (out.length < max && pos < d.size) {
    if (++guard > nblocks + 2) break;
    const b = Math.floor(pos / bs);
    const ents = parseDirBlock(d.block(b), `dir nid ${d.nid} block ${b}`);
    let i = Math.ceil((pos - b * bs) / DIRENT_SIZE);
    for (; i < ents.length && out.length < max; i++) {
      const e = ents[i]!;
      const next = i + 1 < ents.length ? b * bs + (i + 1) * DIRENT_SIZE : (b + 1) * bs;
      out.push({ name: Buffer.from(e.name), nid: e.nid, type: entryType(d, e), nextOffset: next + bias });
    }
    pos = i < ents.length ? b * bs + i * DIRENT_SIZE : (b + 1) * bs;
  }
  return out;
}

/** Random access to one directory block's dirents without materialising them all. */
class BlockView {
  readonly n: number;
  private readonly nameoff0: number;
  constructor(private readonly blk: Buffer, private readonly where: string) {
    if (blk.length < DIRENT_SIZE) throw new ErofsError('EIO', `${where}: directory block too short`);
    this.nameoff0 = blk.readUInt16LE(8);
    if (this.nameoff0 < DIRENT_SIZE || this.nameoff0 >= blk.length) {
      throw new ErofsError('EIO', `${where}: invalid first nameoff ${this.nameoff0}`);
    }
    this.n = Math.floor(this.nameoff0 / DIRENT_SIZE);
  }

  /** Compares `name` with the name of dirent i (validating it). */
  compare(name: Buffer, i: number): number {
    const blk = this.blk;
    const o = i * DIRENT_SIZE;
    const nameoff = blk.readUInt16LE(o + 8);
    let end: number;
    if (i + 1 < this.n) {
      end = blk.readUInt16LE(o + DIRENT_SIZE + 8);
    } else {
      const z = blk.indexOf(0, nameoff);
      end = z < 0 ? blk.length : z;
    }
    if (nameoff < this.nameoff0 || nameoff >= blk.length || end > blk.length || end <= nameoff || end - nameoff > NAME_LEN) {
      throw new ErofsError('EIO', `${this.where}: corrupted dirent ${i}`);
    }
    // A byte loop, not Buffer.compare: names are short, and the native call cost more than the
    // comparison (the top item of a FUSE LOOKUP's profile).
    const len = end - nameoff;
    const m = name.length < len ? name.length : len;
    for (let k = 0; k < m; k++) {
      const d = name[k]! - blk[nameoff + k]!;
      if (d !== 0) return d;
    }
    return name.length - len;
  }

  entry(i: number, name: Buffer): RawDirent {
    const o = i * DIRENT_SIZE;
    const nid = decodeNid(this.blk, o);
    if (nid === undefined) throw new ErofsError('EIO', `${this.where}: dirent ${i} nid out of range`);
    return { name, nid, fileType: this.blk[o + 10]! };
  }
}

/** Finds `name` by binary search over blocks, then within the block; undefined when absent. */
export function lookup(d: DirSource, name: Buffer): RawDirent | undefined {
  if (name.length === 0 || name.length > NAME_LEN) return undefined;
  if (d.dotOmitted && name.length === 1 && name[0] === 0x2e) return { name, nid: d.nid, fileType: 2 };
  const nblocks = Math.ceil(d.size / d.blockSize);
  let lo = 0;
  let hi = nblocks - 1;
  let cand: BlockView | undefined;
  let guard = 0;
  while (lo <= hi) {
    if (++guard > 64) throw new ErofsError('EIO', `dir nid ${d.nid}: lookup does not converge`);
    const mid = Math.floor((lo + hi) / 2);
    const v = new BlockView(d.block(mid), `dir nid ${d.nid} block ${mid}`);
    const c = v.compare(name, 0);
    if (c === 0) return v.entry(0, name);
    if (c < 0) hi = mid - 1;
    else {
      cand = v;
      lo = mid + 1;
    }
  }
  if (!cand) return undefined;
  let a = 1;
  let b = cand.n - 1;
  while (a <= b) {
    const m = (a + b) >>> 1;
    const c = cand.compare(name, m);
    if (c === 0) return cand.entry(m, name);
    if (c < 0) b = m - 1;
    else a = m + 1;
  }
  return undefined;
}
