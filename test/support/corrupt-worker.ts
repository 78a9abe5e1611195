// Child process for test/corruption.test.ts: applies deterministic mutations to a pristine EROFS
// image and exercises the reader on each mutant (open, full walk, stat, readdir, lookup, xattrs,
// readlink, reads, seeks). Every operation must either succeed or throw ErofsError; anything
// else is reported as "bad". The parent runs a watchdog: a mutant that does not finish in time
// is a hang, a worker that dies is a crash.
//
// Protocol (IPC): parent sends one Job; the worker answers with a 'pristine' report, then 'end'
// for each mutant index in [from, to), then 'done'.
import fs from 'node:fs';
import path from 'node:path';
import { openImage, ErofsError, type ErofsReader, type FileType } from '../../src/erofs/index.js';
import { Rng } from './tree-gen.js';

export interface Job {
  image: string;
  seed: number;
  from: number;
  to: number;
  tmpDir: string;
}

export type Outcome = 'ok' | 'error' | 'bad';
export type Category = 'truncate' | 'superblock' | 'inode' | 'xattr' | 'dir' | 'zindex' | 'data' | 'anywhere';

export type WorkerMessage =
  | { t: 'pristine'; ok: boolean; detail: string; regions: Record<string, number> }
  | { t: 'end'; i: number; outcome: Outcome; category: Category; desc: string; codes: string[]; detail?: string; ms: number }
  | { t: 'done' };

type Region = [number, number]; // [start, end)

// ---- bounds of the exercise (per mutant)
const MAX_NODES = 4000;
const MAX_DIR_ENTRIES = 20_000;
const READDIR_BATCH = 97;
const READ_CHUNK = 65_536;
const MAX_FILE_READ = 1 << 20;
const MAX_TOTAL_READ = 8 << 20;

// ---- crc32c (Castagnoli), the kernel's raw form: no final xor
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();
function crc32c(seed: number, data: Uint8Array): number {
  let c = seed >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

const SB = 1024;

/** Re-seals the superblock checksum (when the image uses one) so that mutations get past it. */
function fixSuperblockChecksum(buf: Buffer): void {
  if (buf.length < SB + 128) return;
  if ((buf.readUInt32LE(SB + 8) & 1) === 0) return;
  const bits = buf[SB + 12]!;
  if (bits < 9 || bits > 16) return;
  const end = Math.min(buf.length, 1 << bits);
  if (end <= SB + 8) return;
  buf.writeUInt32LE(0, SB + 4);
  buf.writeUInt32LE(crc32c(0xffffffff, buf.subarray(SB, end)), SB + 4);
}

/** Locates metadata regions of a pristine image: raw superblock/inode parsing + the reader's walk. */
function locateRegions(img: Buffer, reader: ErofsReader): Record<Category, Region[]> {
  const bs = 1 << img[SB + 12]!;
  const metaBlk = img.readUInt32LE(SB + 0x28);
  const xattrBlk = img.readUInt32LE(SB + 0x2c);
  const r: Record<Category, Region[]> = {
    truncate: [[0, img.length]], superblock: [[SB, SB + 128]], inode: [], xattr: [], dir: [], zindex: [], data: [],
    anywhere: [[0, img.length]],
  };
  const clamp = (a: number, b: number): Region | undefined => {
    const s = Math.max(0, a), e = Math.min(img.length, b);
    return e > s ? [s, e] : undefined;
  };
  const add = (cat: Category, a: number, b: number) => { const x = clamp(a, b); if (x) r[cat].push(x); };
  if (xattrBlk) add('xattr', xattrBlk * bs, xattrBlk * bs + bs);

  // Walk the pristine tree for every nid and its type.
  const types = new Map<number, FileType>();
  const queue = [reader.rootNid];
  types.set(reader.rootNid, 'dir');
  while (queue.length) {
    const nid = queue.shift()!;
    for (let off = 0; ;) {
      const ents = reader.readdir(nid, off, 512);
      if (!ents.length) break;
      for (const d of ents) {
        off = d.nextOffset;
        const name = d.name.toString();
        if (name === '.' || name === '..' || types.has(d.nid)) continue;
        types.set(d.nid, d.type);
        if (d.type === 'dir') queue.push(d.nid);
      }
    }
  }
  const meta: Region[] = [[0, bs]];
  for (const [nid, type] of types) {
    const off = metaBlk * bs + nid * 32;
    if (off + 64 > img.length) continue; // layouts this simple locator does not model (metabox, 48-bit)
    const fmt = img.readUInt16LE(off);
    const ext = fmt & 1;
    const layout = (fmt >> 1) & 7;
    const isize = ext ? 64 : 32;
    const icount = img.readUInt16LE(off + 2);
    const xsize = icount ? 12 + (icount - 1) * 4 : 0;
    const size = ext ? Number(img.readBigUInt64LE(off + 8)) : img.readUInt32LE(off + 8);
    const iu = img.readUInt32LE(off + 16);
    const body = off + isize + xsize;
    add('inode', off, off + isize);
    if (xsize) add('xattr', off + isize, body);
    let end = body;
    if (layout === 1 || layout === 3) {
      const idx = Math.ceil(body / 8) * 8;
      const lclusters = Math.ceil(size / bs);
      const len = layout === 1 ? 8 + 8 * lclusters : 8 + 4 * lclusters + 32;
      add('zindex', idx, idx + len);
      end = idx + len;
    } else if (layout === 0 || layout === 2) {
      const full = layout === 2 ? Math.floor(size / bs) * bs : size;
      const tail = layout === 2 ? size % bs : 0;
      if (type === 'dir') {
        if (full) add('dir', iu * bs, iu * bs + full);
        if (tail) add('dir', body, body + tail);
      }
      end = body + tail;
    } else if (layout === 4) {
      // Chunk-based: the block map / chunk indexes follow the xattrs (counted as an index region).
      const chunkBits = (iu & 0x1f) + Math.log2(bs);
      const chunks = Math.ceil(size / 2 ** chunkBits);
      const len = (iu & 0x20 ? 8 : 4) * chunks;
      const idx = iu & 0x20 ? Math.ceil(body / 8) * 8 : body;
      if (len) add('zindex', idx, idx + len);
      end = idx + len;
    }
    meta.push([off, end]);
  }
  // Data: whole blocks that hold no metadata (file contents; compressed pclusters in lz4 images).
  const metaBlocks = new Set<number>();
  for (const [a, b] of [...meta, ...r.xattr, ...r.dir]) for (let blk = Math.floor(a / bs); blk * bs < b; blk++) metaBlocks.add(blk);
  for (let blk = 1; blk * bs < img.length; blk++) if (!metaBlocks.has(blk)) add('data', blk * bs, (blk + 1) * bs);
  return r;
}

const WEIGHTS: [Category, number][] = [
  ['truncate', 2], ['superblock', 3], ['inode', 4], ['xattr', 3], ['dir', 3], ['zindex', 4], ['data', 3], ['anywhere', 2],
];

const INTERESTING32 = [0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];

/** Mutant number i of this image: deterministic from (seed, i). */
export function makeMutant(pristine: Buffer, regions: Record<Category, Region[]>, seed: number, i: number): { buf: Buffer; category: Category; desc: string } {
  const rng = new Rng((seed * 0x9e3779b1 + i * 0x85ebca6b) >>> 0);
  rng.next();
  const avail = WEIGHTS.filter(([c]) => regions[c].length > 0);
  let total = 0;
  for (const [, w] of avail) total += w;
  let pick = rng.int(total);
  let category: Category = avail[0]![0];
  for (const [c, w] of avail) { if (pick < w) { category = c; break; } pick -= w; }

  if (category === 'truncate') {
    const bs = 1 << pristine[SB + 12]!;
    const choice = rng.int(4);
    const len = choice === 0 ? rng.int(SB + 256)
      : choice === 1 ? rng.int(Math.ceil(pristine.length / bs)) * bs
        : choice === 2 ? pristine.length - 1 - rng.int(Math.min(pristine.length - 1, 3 * bs))
          : rng.int(pristine.length);
    return { buf: Buffer.from(pristine.subarray(0, len)), category, desc: `truncate to ${len} of ${pristine.length}` };
  }
  const buf = Buffer.from(pristine);
  const regs = regions[category];
  const [a, b] = regs[rng.int(regs.length)]!;
  const edits: string[] = [];
  const n = 1 + rng.int(category === 'data' || category === 'anywhere' ? 8 : 3);
  for (let k = 0; k < n; k++) {
    const pos = a + rng.int(b - a);
    const op = rng.int(6);
    if (op === 0) { const v = rng.int(256); buf[pos] = v; edits.push(`[${pos}]=${v}`); }
    else if (op === 1) { const bit = 1 << rng.int(8); buf[pos]! ^= bit; edits.push(`[${pos}]^=${bit}`); }
    else if (op === 2) { buf[pos] = 0; edits.push(`[${pos}]=0`); }
    else if (op === 3) { buf[pos] = 0xff; edits.push(`[${pos}]=255`); }
    else if (op === 4) {
      const p = Math.min(pos & ~3, buf.length - 4);
      if (p >= 0) { const v = INTERESTING32[rng.int(INTERESTING32.length)]!; buf.writeUInt32LE(v, p); edits.push(`u32[${p}]=${v}`); }
    } else {
      const p = Math.min(pos & ~1, buf.length - 2);
      if (p >= 0) { const v = INTERESTING32[rng.int(INTERESTING32.length)]! & 0xffff; buf.writeUInt16LE(v, p); edits.push(`u16[${p}]=${v}`); }
    }
  }
  let desc = edits.join(' ');
  if (category === 'superblock' ? rng.int(4) !== 0 : rng.int(8) === 0) {
    fixSuperblockChecksum(buf);
    desc += ' +csum';
  }
  return { buf, category, desc };
}

class Unexpected extends Error {}

/** Exercises every operation of the reader on one image file. Throws Unexpected on a contract breach. */
export function exercise(file: string, seed: number): { codes: string[] } {
  const codes: string[] = [];
  const rng = new Rng(seed);
  /** Runs one reader operation; `normal` names error codes that are a normal answer (not corruption). */
  const op = <T>(what: string, fn: () => T, normal?: string): T | undefined => {
    try {
      return fn();
    } catch (e) {
      if (e instanceof ErofsError) {
        if (typeof e.message !== 'string' || e.message.length === 0) throw new Unexpected(`${what}: ErofsError without a message`);
        if (e.code !== normal) codes.push(e.code);
        return undefined;
      }
      if (e instanceof Unexpected) throw e;
      const err = e as Error;
      throw new Unexpected(`${what}: ${err?.name ?? typeof e}: ${err?.message ?? String(e)}\n${err?.stack ?? ''}`);
    }
  };
  const check = (cond: boolean, msg: string) => { if (!cond) throw new Unexpected(msg); };

  const reader = op('openImage', () => openImage(file));
  if (!reader) return { codes };
  try {
    const sb = op('superblock', () => reader.superblock);
    if (sb) check(Number.isSafeInteger(sb.blockSize) && sb.blockSize > 0, `superblock: bad blockSize ${sb.blockSize}`);
    let totalRead = 0;
    const seen = new Set<number>();
    const queue: number[] = [reader.rootNid];
    while (queue.length && seen.size < MAX_NODES) {
      const nid = queue.shift()!;
      if (seen.has(nid)) continue;
      seen.add(nid);
      const a = op(`getAttr(${nid})`, () => reader.getAttr(nid));
      if (!a) continue;
      // mtimeSec may legitimately exceed 2^53 (a u64 on disk): only finiteness is required of it.
      check(Number.isFinite(a.mtimeSec), `getAttr(${nid}).mtimeSec = ${a.mtimeSec}`);
      for (const k of ['size', 'nlink', 'uid', 'gid', 'mode', 'mtimeNsec', 'rdev', 'blocks'] as const) {
        check(Number.isSafeInteger(a[k]), `getAttr(${nid}).${k} = ${a[k]} is not a safe integer`);
      }
      check(a.size >= 0, `getAttr(${nid}).size negative`);
      const xs = op(`listXattrs(${nid})`, () => reader.listXattrs(nid));
      for (const x of xs ?? []) {
        check(typeof x.name === 'string' && Buffer.isBuffer(x.value), `listXattrs(${nid}): malformed entry`);
        op(`getXattr(${nid}, ${x.name})`, () => reader.getXattr(nid, x.name));
      }
      if (seen.size % 8 === 1) op(`getXattr(${nid}, missing)`, () => reader.getXattr(nid, 'user.surely-not-present'), 'ENODATA');
      op(`fingerprint(${nid})`, () => reader.fingerprint(nid));
      if (a.type === 'dir') {
        let off = 0;
        let count = 0;
        const names: Buffer[] = [];
        for (;;) {
          const ents = op(`readdir(${nid}, ${off})`, () => reader.readdir(nid, off, READDIR_BATCH));
          if (!ents || ents.length === 0) break;
          check(ents.length <= READDIR_BATCH, `readdir(${nid}) returned ${ents.length} > max entries`);
          for (const d of ents) {
            check(Number.isSafeInteger(d.nextOffset) && d.nextOffset > off, `readdir(${nid}): offset ${d.nextOffset} does not advance past ${off}`);
            off = d.nextOffset;
            count++;
            const name = d.name.toString('latin1');
            if (name !== '.' && name !== '..') {
              names.push(d.name);
              queue.push(d.nid);
            }
          }
          if (count > MAX_DIR_ENTRIES) break;
        }
        const step = Math.max(1, Math.floor(names.length / 48));
        for (let k = 0; k < names.length; k += step) op(`lookup(${nid}, …)`, () => reader.lookup(nid, names[k]!));
        if (names.length) op(`lookup(${nid}, last)`, () => reader.lookup(nid, names[names.length - 1]!));
        op(`lookup(${nid}, absent)`, () => reader.lookup(nid, 'no-such-name-here'));
      } else if (a.type === 'file') {
        const limit = Math.min(a.size, MAX_FILE_READ);
        for (let off = 0; off < limit && totalRead < MAX_TOTAL_READ;) {
          const want = Math.min(READ_CHUNK, limit - off);
          const b = op(`read(${nid}, ${off}, ${want})`, () => reader.read(nid, off, want));
          if (!b) break;
          check(b.length <= want, `read(${nid}) returned ${b.length} > ${want} bytes`);
          check(b.length === want || off + b.length >= a.size, `read(${nid}, ${off}, ${want}): short read of ${b.length} before EOF ${a.size}`);
          if (b.length === 0) break;
          off += b.length;
          totalRead += b.length;
        }
        for (let k = 0; k < 2; k++) {
          const off = rng.int(Math.min(a.size, 0x7fffffff) + 100);
          const len = rng.int(100_000);
          const b = op(`read(${nid}, ${off}, ${len})`, () => reader.read(nid, off, len));
          if (b) check(b.length <= len, `read(${nid}, ${off}, ${len}) returned ${b.length} bytes`);
        }
        const b = op(`read past EOF ${nid}`, () => reader.read(nid, a.size + 1, 10));
        if (b) check(b.length === 0, `read(${nid}) past EOF returned ${b.length} bytes`);
        for (const off of a.size > 0 ? [0, Math.floor(a.size / 2)] : []) {
          const d = op(`seek(${nid}, ${off}, data)`, () => reader.seek(nid, off, 'data'), 'ENXIO');
          if (d !== undefined) check(Number.isSafeInteger(d) && d >= off, `seek(${nid}, ${off}, data) = ${d}`);
          const h = op(`seek(${nid}, ${off}, hole)`, () => reader.seek(nid, off, 'hole'), 'ENXIO');
          if (h !== undefined) check(Number.isSafeInteger(h) && h >= off, `seek(${nid}, ${off}, hole) = ${h}`);
        }
        const ex = op(`plainExtents(${nid})`, () => reader.plainExtents(nid));
        for (const e of ex ?? []) {
          check([e.device, e.physical, e.logical, e.length].every((v) => Number.isSafeInteger(v) && v >= 0), `plainExtents(${nid}): bad extent`);
        }
      } else if (a.type === 'symlink') {
        const t = op(`readlink(${nid})`, () => reader.readlink(nid));
        if (t) check(t.length <= 65536, `readlink(${nid}) returned ${t.length} bytes`);
      }
    }
  } finally {
    op('close', () => reader.close());
  }
  return { codes };
}

function main(): void {
  process.on('message', (job: Job) => {
    const send = (m: WorkerMessage) => process.send!(m);
    const pristine = fs.readFileSync(job.image);
    fs.mkdirSync(job.tmpDir, { recursive: true });
    const file = path.join(job.tmpDir, `mutant-${process.pid}.erofs`);
    let regions: Record<Category, Region[]>;
    {
      const reader = openImage(job.image);
      try {
        regions = locateRegions(pristine, reader);
      } finally {
        reader.close();
      }
      let ok = true;
      let detail = '';
      try {
        const { codes } = exercise(job.image, job.seed);
        if (codes.length) { ok = false; detail = `errors on the pristine image: ${[...new Set(codes)].join(',')}`; }
      } catch (e) {
        ok = false;
        detail = (e as Error).message;
      }
      send({ t: 'pristine', ok, detail, regions: Object.fromEntries(Object.entries(regions).map(([k, v]) => [k, v.length])) });
    }
    for (let i = job.from; i < job.to; i++) {
      const t0 = performance.now();
      const m = makeMutant(pristine, regions, job.seed, i);
      fs.writeFileSync(file, m.buf);
      let outcome: Outcome = 'ok';
      let codes: string[] = [];
      let detail: string | undefined;
      try {
        codes = exercise(file, job.seed + i).codes;
        if (codes.length) outcome = 'error';
      } catch (e) {
        outcome = 'bad';
        detail = (e as Error).message;
      }
      send({ t: 'end', i, outcome, category: m.category, desc: m.desc, codes: [...new Set(codes)], detail, ms: performance.now() - t0 });
    }
    fs.rmSync(file, { force: true });
    send({ t: 'done' });
  });
}

if (process.send) main();
