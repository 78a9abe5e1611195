// Zstandard, as EROFS stores ZSTD pclusters: one (or more) zstd frames per pcluster.
//
// Decoding uses the pure-JS `fzstd` streaming decoder (block by block); we stop as soon as outLen
// bytes have come out, so partial decoding does not decode the rest of the frame. Before handing
// the input to fzstd, every frame header is checked here: fzstd allocates a window buffer from
// the header, so a hostile window size must be refused first (the kernel refuses windows above
// Z_EROFS_ZSTD_MAX_DICT_SIZE = 1 MiB; we allow up to 8 MiB), and dictionary frames (which fzstd
// would decode wrongly) are refused too. Bytes after the last well-formed frame are ignored,
// as the kernel stops once its output is full.

import { Decompress } from 'fzstd';
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

/**
 * Walks the frames of `src` and returns how many leading bytes are well-formed frames. Throws if
 * the first frame is malformed or uses a feature we refuse.
 */
function wellFormedLength(src: Buffer): number {
  let pos = 0;
  let frames = 0;
  while (pos + 4 <= src.length) {
    const magic = u32le(src, pos);
    let next: number;
    try {
      next = magic === ZSTD_MAGIC ? frameEnd(src, pos) : skippableEnd(src, pos, magic);
    } catch (e) {
      if (frames === 0) throw e;
      break; // trailing garbage after good frames
    }
    pos = next;
    frames++;
  }
  if (frames === 0) corrupt('no frame');
  return pos;
}

function skippableEnd(src: Buffer, pos: number, magic: number): number {
  if ((magic & 0xfffffff0) >>> 0 !== 0x184d2a50) corrupt(`bad frame magic 0x${magic.toString(16)}`);
  if (pos + 8 > src.length) corrupt('truncated skippable frame');
  const end = pos + 8 + u32le(src, pos + 4);
  if (end > src.length) corrupt('truncated skippable frame');
  return end;
}

function frameEnd(src: Buffer, pos: number): number {
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
  }
  if (checksum) p += 4;
  if (p > src.length) corrupt('truncated frame checksum');
  return p;
}

const STOP = new Error('zstd: output full');

export function zstdDecompress(src: Buffer, outLen: number, _partial: boolean): Buffer {
  const len = wellFormedLength(src);
  const out = Buffer.allocUnsafe(outLen);
  let op = 0;
  const d = new Decompress((chunk: Uint8Array) => {
    const n = Math.min(chunk.length, outLen - op);
    if (n > 0) {
      out.set(n === chunk.length ? chunk : chunk.subarray(0, n), op);
      op += n;
    }
    if (op >= outLen) throw STOP;
  });
  try {
    d.push(src.subarray(0, len), true);
  } catch (e) {
    if (e !== STOP) {
      const msg = e instanceof Error ? e.message : String(e);
      corrupt(`${msg} after ${op} bytes`);
    }
  }
  if (op < outLen) corrupt(`stream ended after ${op} of ${outLen} bytes`);
  return out;
}
