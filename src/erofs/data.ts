// Block mapping and reads for uncompressed layouts: FLAT_PLAIN, FLAT_INLINE (tail packing) and
// CHUNK_BASED (4-byte block map or 8-byte chunk indexes, multi-device, 48-bit addresses).
import { ErofsError } from './api.js';
import type { ByteSource, Device } from './io.js';
import type { Inode } from './inode.js';
import type { Superblock } from './superblock.js';
import { CHUNK_FORMAT_48BIT, CHUNK_FORMAT_INDEXES, DATALAYOUT } from './format.js';

export interface DataContext {
  sb: Superblock;
  /** Metadata source: the primary device, or the metabox inode's content. */
  meta(inMetabox: boolean): ByteSource;
  /** Device by index (0 = primary); throws EIO when it was not supplied. */
  device(id: number): Device;
}

export interface Extent {
  /** Logical start in the file. */
  logical: number;
  length: number;
  /** false = hole (reads as zeros). */
  mapped: boolean;
  device: number;
  /** Byte offset in `device`, or in the metadata source when `inline`. */
  physical: number;
  /** Tail-packed data inside the inode's metadata block. */
  inline: boolean;
}

/** Up to this many chunk extents are resolved per mapping call. */
const MAX_CHUNKS_PER_MAP = 4096;

export function mapDevice(ctx: DataContext, deviceId: number, pa: number): { device: number; physical: number } {
  const sb = ctx.sb;
  if (deviceId) {
    if (deviceId > sb.extraDevices) throw new ErofsError('EIO', `chunk refers to missing device ${deviceId}`);
    return { device: deviceId, physical: pa };
  }
  for (let i = 0; i < sb.devices.length; i++) {
    const d = sb.devices[i]!;
    if (!d.uniaddr) continue;
    const start = d.uniaddr * sb.blockSize;
    const len = d.blocks * sb.blockSize;
    if (pa >= start && pa < start + len) return { device: i + 1, physical: pa - start };
  }
  return { device: 0, physical: pa };
}

/**
 * Extents of an uncompressed inode covering [from, to) (clamped to the file size), in order,
 * at most MAX_CHUNKS_PER_MAP chunk extents per call (the caller loops).
 */
export function mapRange(ctx: DataContext, ino: Inode, from: number, to: number): Extent[] {
  const sb = ctx.sb;
  const bs = sb.blockSize;
  const end = Math.min(to, ino.size);
  const out: Extent[] = [];
  if (from >= end) return out;
  if (ino.datalayout === DATALAYOUT.FLAT_PLAIN || ino.datalayout === DATALAYOUT.FLAT_INLINE) {
    const tail = ino.datalayout === DATALAYOUT.FLAT_INLINE;
    const nblocks = Math.ceil(ino.size / bs);
    const tailPos = tail ? (nblocks - 1) * bs : ino.size;
    if (from < tailPos) {
      const len = Math.min(end, tailPos) - from;
      if (ino.startBlk === undefined) {
        out.push({ logical: from, length: len, mapped: false, device: 0, physical: 0, inline: false });
      } else {
        const pa = ino.startBlk * bs + from;
        if (!Number.isSafeInteger(pa + len)) throw new ErofsError('EIO', `nid ${ino.nid}: block address out of range`);
        const m = mapDevice(ctx, 0, pa);
        out.push({ logical: from, length: len, mapped: true, device: m.device, physical: m.physical, inline: false });
      }
    }
    if (end > tailPos) {
      const s = Math.max(from, tailPos);
      const tailStart = ino.iloc + ino.isize + ino.xattrIsize;
      const tailLen = ino.size - tailPos;
      if ((tailStart % bs) + tailLen > bs) {
        throw new ErofsError('EIO', `nid ${ino.nid}: inline data crosses a block boundary`);
      }
      out.push({ logical: s, length: end - s, mapped: true, device: 0, physical: tailStart + (s - tailPos), inline: true });
    }
    return out;
  }
  if (ino.datalayout !== DATALAYOUT.CHUNK_BASED) {
    throw new ErofsError('EIO', `nid ${ino.nid}: not an uncompressed layout`);
  }
  const indexes = (ino.chunkFormat & CHUNK_FORMAT_INDEXES) !== 0;
  const unit = indexes ? 8 : 4;
  const cbits = ino.chunkBits;
  const csize = 2 ** cbits;
  const first = Math.floor(from / csize);
  let last = Math.floor((end - 1) / csize);
  if (last - first + 1 > MAX_CHUNKS_PER_MAP) last = first + MAX_CHUNKS_PER_MAP - 1;
  const base = Math.ceil((ino.iloc + ino.isize + ino.xattrIsize) / unit) * unit;
  const src = ctx.meta(ino.inMetabox);
  // The whole index table must exist: this also bounds every walk over the file's chunks by
  // the image size, whatever i_size claims.
  const nchunks = Math.ceil(ino.size / csize);
  if (base + nchunks * unit > src.size) {
    throw new ErofsError('EIO', `nid ${ino.nid}: chunk index table (${nchunks} entries) beyond the metadata`);
  }
  const raw = src.read(base + first * unit, (last - first + 1) * unit);
  const mask48 = (ino.chunkFormat & CHUNK_FORMAT_48BIT) !== 0;
  for (let c = first; c <= last; c++) {
    const o = (c - first) * unit;
    const la = c * csize;
    const clen = Math.min(csize, Math.ceil((ino.size - la) / bs) * bs);
    const s = Math.max(from, la);
    const e = Math.min(end, la + clen);
    if (s >= e) continue;
    let mapped = false;
    let device = 0;
    let physical = 0;
    if (indexes) {
      const hi = mask48 ? raw.readUInt16LE(o) : 0;
      const devId = raw.readUInt16LE(o + 2);
      const lo = raw.readUInt32LE(o + 4);
      const isNull = mask48 ? hi === 0xffff && lo === 0xffffffff : lo === 0xffffffff;
      if (!isNull) {
        const m = mapDevice(ctx, devId & ctx.sb.deviceIdMask, (hi * 0x100000000 + lo) * bs);
        mapped = true;
        device = m.device;
        physical = m.physical + (s - la);
      }
    } else {
      const blk = raw.readUInt32LE(o);
      if (blk !== 0xffffffff) {
        const m = mapDevice(ctx, 0, blk * bs);
        mapped = true;
        device = m.device;
        physical = m.physical + (s - la);
      }
    }
    const prev = out[out.length - 1];
    if (prev && prev.mapped === mapped && prev.device === device && !prev.inline &&
        (!mapped || prev.physical + prev.length === physical) && prev.logical + prev.length === s) {
      prev.length += e - s;
    } else {
      out.push({ logical: s, length: e - s, mapped, device, physical, inline: false });
    }
  }
  return out;
}

/** Reads [offset, offset+length) of an uncompressed inode (short only at EOF). */
export function readUncompressed(ctx: DataContext, ino: Inode, offset: number, length: number, cached = false): Buffer {
  if (offset >= ino.size || length <= 0) return Buffer.alloc(0);
  const n = Math.min(ino.size, offset + length) - offset;
  const out = Buffer.allocUnsafe(n);
  readUncompressedInto(ctx, ino, offset, n, out, 0, cached);
  return out;
}

/**
 * Fills out[outOff, ...) with file bytes from `offset`, at most `length` (clamped to EOF);
 * returns the number of bytes written.
 */
export function readUncompressedInto(
  ctx: DataContext, ino: Inode, offset: number, length: number, out: Uint8Array, outOff: number, cached = false,
): number {
  if (offset >= ino.size || length <= 0) return 0;
  const end = Math.min(ino.size, offset + length);
  if (outOff < 0 || outOff + (end - offset) > out.length) throw new ErofsError('EINVAL', 'target buffer too small');
  const dstBuf = Buffer.isBuffer(out) ? out : Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  let pos = offset;
  let guard = 0;
  while (pos < end) {
    if (++guard > 1_000_000) throw new ErofsError('EIO', `nid ${ino.nid}: mapping does not progress`);
    const exts = mapRange(ctx, ino, pos, end);
    if (exts.length === 0) throw new ErofsError('EIO', `nid ${ino.nid}: unmapped range at ${pos}`);
    for (const x of exts) {
      const dst = outOff + (x.logical - offset);
      if (x.logical !== pos) throw new ErofsError('EIO', `nid ${ino.nid}: mapping gap at ${pos}`);
      if (!x.mapped) {
        dstBuf.fill(0, dst, dst + x.length);
      } else if (x.inline) {
        ctx.meta(ino.inMetabox).read(x.physical, x.length).copy(dstBuf, dst);
      } else if (cached && x.device === 0) {
        ctx.meta(false).read(x.physical, x.length).copy(dstBuf, dst);
      } else {
        ctx.device(x.device).readInto(dstBuf, dst, x.physical, x.length);
      }
      pos = x.logical + x.length;
    }
  }
  return end - offset;
}
