// Zstandard, as EROFS stores ZSTD pclusters: one (or more) zstd frames per pcluster. This is the
// decoding itself; ./zstd.ts runs it on a worker thread under a time limit (fzstd can loop
// forever on some corrupt Huffman tables), see there.
//
// Decoding uses the pure-JS `fzstd`. Frames that declare their content size (mkfs.erofs writes
// single-segment frames with it) are decoded in one shot into a buffer of exactly that size
// (a corrupt frame that decodes short leaves zeros there: fzstd does not check);
// others go through fzstd's streaming decoder fed block by block, stopping once outLen bytes
// have come out (its window handling copies a lot, so it is the slow path). Before handing
// the input to fzstd, every frame header is checked here: fzstd allocates a window buffer from
// the header, so a hostile window size must be refused first (the kernel refuses windows above
// Z_EROFS_ZSTD_MAX_DICT_SIZE = 1 MiB; we allow up to 8 MiB), and dictionary frames (which fzstd
// would decode wrongly) are refused too. Bytes after the last well-formed frame are ignored,
// as the kernel stops once its output is full.

import { Decompress, decompress as zstdOneShot } from 'fzstd';
import { ErofsError } from '../api.js';

const ZSTD_MAGIC = 0xfd2fb528;
const MAX_WINDOW = 8 * 1024 * 1024;
const MAX_BLOCK = 128 * 1024;

function corrupt(msg: string): never {
  throw new ErofsError('EIO', `zstd: ${msg}`);
}

function u32le(b: Buffer, off: number): number {
  return (b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24)) >>> 0;
}

interface Frame {
  start: number;
  end: number;
  /** Frame content size from the header, or -1 when absent. */
  contentSize: number;
  /** Offsets where the frame's blocks end (the last one = end). */
  cuts: number[];
}

/**
 * Walks the well-formed frames at the start of `src` (skippable frames are passed over). Throws
 * if the first frame is malformed or uses a feature we refuse; anything after a good frame that
 * is not one is ignored.
 */
function parseFrames(src: Buffer): Frame[] {
  const frames: Frame[] = [];
  let pos = 0;
  let good = 0;
  while (pos + 4 <= src.length) {
    const magic = u32le(src, pos);
    try {
      if (magic === ZSTD_MAGIC) {
        const f = parseFrame(src, pos);
        frames.push(f);
        pos = f.end;
      } else {
        pos = skippableEnd(src, pos, magic);
      }
      good++;
    } catch (e) {
      if (good === 0) throw e;
      break; // trailing garbage after good frames
    }
  }
  if (frames.length === 0) corrupt('no frame');
  return frames;
}

function skippableEnd(src: Buffer, pos: number, magic: number): number {
  if ((magic & 0xfffffff0) >>> 0 !== 0x184d2a50) corrupt(`bad frame magic 0x${magic.toString(16)}`);
  if (pos + 8 > src.length) corrupt('truncated skippable frame');
  const end = pos + 8 + u32le(src, pos + 4);
  if (end > src.length) corrupt('truncated skippable frame');
  return end;
}

function parseFrame(src: Buffer, pos: number): Frame {
  const cuts: number[] = [];
  let p = pos + 4;
  if (p >= src.length) corrupt('truncated frame header');
  const fhd = src[p++];
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictIdFlag = fhd & 3;
  if (fhd & 8) corrupt('reserved frame header bit set');
  let window = 0;
  if (!singleSegment) {
    if (p >= src.length) corrupt('truncated frame header');
    const wd = src[p++];
    const base = 2 ** (10 + (wd >> 3));
    window = base + (base / 8) * (wd & 7);
  }
  const dictIdLen = [0, 1, 2, 4][dictIdFlag];
  let dictId = 0;
  for (let i = 0; i < dictIdLen; i++) dictId += src[p + i] * 2 ** (8 * i);
  p += dictIdLen;
  const fcsLen = fcsFlag === 0 ? singleSegment : 1 << fcsFlag;
  if (p + fcsLen > src.length) corrupt('truncated frame header');
  let fcs = 0;
  for (let i = 0; i < fcsLen; i++) fcs += src[p + i] * 2 ** (8 * i);
  if (fcsLen === 2) fcs += 256;
  p += fcsLen;
  if (dictId !== 0) corrupt(`frame needs dictionary ${dictId}`);
  if (singleSegment) window = fcs;
  if (window > MAX_WINDOW) corrupt(`window size ${window} too large`);
  for (;;) {
    if (p + 3 > src.length) corrupt('truncated block header');
    const bh = src[p] | (src[p + 1] << 8) | (src[p + 2] << 16);
    p += 3;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) corrupt('reserved block type');
    if (size > MAX_BLOCK) corrupt('block too large');
    p += type === 1 ? 1 : size;
    if (p > src.length) corrupt('truncated block');
    if (bh & 1) break;
    cuts.push(p);
  }
  if (checksum) p += 4;
  if (p > src.length) corrupt('truncated frame checksum');
  cuts.push(p);
  return { start: pos, end: p, contentSize: fcsLen > 0 ? fcs : -1, cuts };
}

/** Largest frame decoded in one shot into a buffer of its content size. */
const ONE_SHOT_MAX = 16 * 1024 * 1024;

export function zstdDecompress(src: Buffer, outLen: number, _partial: boolean): Buffer {
  const frames = parseFrames(src);
  const first = frames[0];
  if (first.contentSize === outLen && first.contentSize <= ONE_SHOT_MAX) {
    // The common case: one mkfs.erofs frame holding exactly the extent; no copy at all.
    const d = oneShot(src.subarray(first.start, first.end));
    return Buffer.from(d.buffer, d.byteOffset, d.length);
  }
  // Zero-filled: a corrupt frame that decodes short must not expose stale heap memory.
  const out = Buffer.alloc(outLen);
  let op = 0;
  for (const f of frames) {
    if (op >= outLen) break;
    try {
      if (f.contentSize >= 0 && f.contentSize <= ONE_SHOT_MAX) {
        const d = oneShot(src.subarray(f.start, f.end));
        const n = Math.min(d.length, outLen - op);
        out.set(n === d.length ? d : d.subarray(0, n), op);
        op += n;
      } else {
        op = streamed(src, f, out, op);
      }
    } catch (e) {
      if (e instanceof ErofsError) throw e;
      const msg = e instanceof Error ? e.message : String(e);
      corrupt(`${msg} after ${op} bytes`);
    }
  }
  if (op < outLen) corrupt(`stream ended after ${op} of ${outLen} bytes`);
  return out;
}

/**
 * What mkfs.erofs writes: a frame whose header gives its content size. Without an output buffer
 * argument fzstd then decodes straight into a fresh (zeroed) buffer of exactly that size, its
 * fast path (passing our own buffer is ~10x slower in fzstd 0.1.1, measured).
 */
function oneShot(frame: Buffer): Uint8Array {
  try {
    return zstdOneShot(frame);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    corrupt(msg);
  }
}

/** The smallest window descriptor byte whose window is at least `need` bytes. */
function windowDescriptorFor(need: number): number {
  for (let e = 0; e < 32; e++) {
    const base = 2 ** (10 + e);
    for (let m = 0; m < 8; m++) if (base + (base / 8) * m >= need) return (e << 3) | m;
  }
  return 0xff;
}

/**
 * Frames without a content size (or a huge one): fzstd's streaming decoder, fed one block at a
 * time so decoding stops once `out` is full. fzstd allocates the header's window and copies all
 * of it after every block, so the header is rewritten to declare the smallest window that still
 * holds everything we will decode (what is left of `out` plus one block): back-references of a
 * dictionary-less frame only reach into its own output, and fzstd never reads beyond what we
 * let it produce (measured: 30 KB from a 2 MiB-window frame took 15-60 ms, now a fraction).
 * Returns the new output position.
 */
function streamed(src: Buffer, f: Frame, out: Buffer, op: number): number {
  const d = new Decompress((chunk: Uint8Array) => {
    const n = Math.min(chunk.length, out.length - op);
    if (n > 0) {
      out.set(n === chunk.length ? chunk : chunk.subarray(0, n), op);
      op += n;
    }
  });
  let p = f.start;
  for (const cut of f.cuts) {
    let chunk = src.subarray(p, cut);
    if (p === f.start && ((src[f.start + 4] >> 5) & 1) === 0) {
      const declared = src[f.start + 5];
      const wanted = windowDescriptorFor(out.length - op + MAX_BLOCK);
      if (wanted < declared) {
        chunk = Buffer.from(chunk);
        chunk[5] = wanted;
      }
    }
    d.push(chunk, cut === f.end);
    p = cut;
    if (op >= out.length) break;
  }
  return op;
}
