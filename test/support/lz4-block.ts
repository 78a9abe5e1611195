// Test/bench helpers for LZ4 raw blocks: a small greedy block compressor (valid per the LZ4 block
// spec: the last 5 bytes are literals, no match starts in the last 12 bytes) and a splitter that
// turns an `lz4` CLI frame (made with independent blocks) into its raw blocks.
import { execFileSync } from 'node:child_process';

function writeLength(out: number[], n: number): void {
  while (n >= 255) {
    out.push(255);
    n -= 255;
  }
  out.push(n);
}

function emit(out: number[], src: Buffer, litStart: number, litEnd: number, offset: number, matchLen: number): void {
  const lit = litEnd - litStart;
  const ml = matchLen - 4;
  out.push(((lit >= 15 ? 15 : lit) << 4) | (matchLen === 0 ? 0 : ml >= 15 ? 15 : ml));
  if (lit >= 15) writeLength(out, lit - 15);
  for (let i = litStart; i < litEnd; i++) out.push(src[i]);
  if (matchLen === 0) return;
  out.push(offset & 255, offset >> 8);
  if (ml >= 15) writeLength(out, ml - 15);
}

/** Compresses `src` into one raw LZ4 block (greedy, 64 KiB window, 4-byte hash). */
export function lz4CompressBlock(src: Buffer, maxOffset = 65535): Buffer {
  const out: number[] = [];
  const n = src.length;
  const table = new Int32Array(1 << 16).fill(-1);
  const hash = (i: number): number => (Math.imul(src.readUInt32LE(i), 2654435761) >>> 16) & 0xffff;
  const matchLimit = n - 12; // last match must start before this
  let anchor = 0;
  let i = 0;
  while (i < matchLimit) {
    const h = hash(i);
    const cand = table[h];
    table[h] = i;
    if (cand >= 0 && i - cand <= maxOffset && src.readUInt32LE(cand) === src.readUInt32LE(i)) {
      let len = 4;
      const limit = n - 5; // last 5 bytes stay literals
      while (i + len < limit && src[cand + len] === src[i + len]) len++;
      emit(out, src, anchor, i, i - cand, len);
      i += len;
      anchor = i;
    } else {
      i++;
    }
  }
  emit(out, src, anchor, n, 0, 0);
  return Buffer.from(out);
}

export interface Lz4CliBlock {
  compressed: Buffer;
  /** The decompressed bytes this block stands for. */
  plain: Buffer;
}

/**
 * Compresses `plain` with the `lz4` CLI (64 KiB independent blocks, `level` 1..12) and returns
 * the compressed raw blocks (stored/uncompressed blocks are left out). Throws if lz4 is missing.
 */
export function lz4CliBlocks(plain: Buffer, level: number): Lz4CliBlock[] {
  const frame = execFileSync('lz4', [`-${level}`, '-B4', '-BI', '--no-frame-crc', '-c', '-'], {
    input: plain,
    maxBuffer: 1 << 30,
  });
  if (frame.readUInt32LE(0) !== 0x184d2204) throw new Error('lz4: not an LZ4 frame');
  const flg = frame[4];
  if (flg & 0x10) throw new Error('lz4: unexpected block checksums');
  let p = 7 + (flg & 8 ? 8 : 0) + (flg & 1 ? 4 : 0);
  let off = 0;
  const blocks: Lz4CliBlock[] = [];
  for (;;) {
    const word = frame.readUInt32LE(p);
    p += 4;
    if (word === 0) break;
    const size = word & 0x7fffffff;
    const piece = plain.subarray(off, Math.min(off + 65536, plain.length));
    off += piece.length;
    if (!(word & 0x80000000)) blocks.push({ compressed: frame.subarray(p, p + size), plain: piece });
    p += size;
  }
  if (off !== plain.length) throw new Error('lz4: frame does not cover the input');
  return blocks;
}
