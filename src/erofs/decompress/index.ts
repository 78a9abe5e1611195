// Decompressors for EROFS compressed clusters (pclusters).
//
// Contract (shared with src/erofs/pcluster.ts): `decompress(alg, src, outLen, opts)` returns exactly
// `outLen` bytes or throws ErofsError('EIO').
//  - `src` is the pcluster's compressed bytes. Leading zero bytes (the EROFS "0padding" that puts
//    compressed data at the end of the pcluster) are skipped here, as the kernel's
//    z_erofs_fixup_insize does, so the caller may pass the whole pcluster. No valid stream of any
//    supported algorithm starts with a zero byte (LZ4 would need a match before any output,
//    MicroLZMA starts with ~props, zstd with its magic; EROFS DEFLATE always goes through the
//    same fixup in the kernel), so this is safe even when the image lacks 0padding.
//  - partial=true ("partial decoding"): the stream may encode more than outLen; decoding stops
//    once outLen bytes are produced.
//  - partial=false: the stream must encode at least outLen bytes and no single literal run /
//    match / block may run past outLen (detects many corruptions, as the kernel's exact mode).
//  - A stream that ends before outLen bytes are produced is corrupt (EIO) in both modes.
//  - dictSize (LZMA only): the dictionary size from the image's LZMA config; a match distance
//    beyond it is corrupt. Omitted or 0: only the produced output bounds distances.
// Every decoder is bounded: work is linear in src.length + outLen, memory in outLen.

import { ErofsError } from '../api.js';
import { lz4Decompress, lz4DecompressInto } from './lz4.js';
import { lzmaDecompress } from './lzma.js';
import { deflateDecompress } from './deflate.js';
import { zstdDecompress } from './zstd.js';

export type CompressionAlgorithm = 'lz4' | 'lzma' | 'deflate' | 'zstd';

/** On-disk algorithm ids (Z_EROFS_COMPRESSION_*), index = id. */
export const COMPRESSION_ALGORITHMS: readonly CompressionAlgorithm[] = ['lz4', 'lzma', 'deflate', 'zstd'];

/** Maps an on-disk algorithm id to its name, or undefined when unknown. */
export function algorithmFromId(id: number): CompressionAlgorithm | undefined {
  return COMPRESSION_ALGORITHMS[id];
}

export interface DecompressOptions {
  partial?: boolean;
  dictSize?: number;
}

/** Largest outLen accepted (EROFS decompressed extents are far smaller). */
export const MAX_DECOMPRESSED_LENGTH = 256 * 1024 * 1024;

export function decompress(
  alg: CompressionAlgorithm,
  src: Buffer,
  outLen: number,
  opts: DecompressOptions = {},
): Buffer {
  if (!Number.isSafeInteger(outLen) || outLen < 0 || outLen > MAX_DECOMPRESSED_LENGTH) {
    throw new ErofsError('EIO', `${alg}: invalid decompressed length ${outLen}`);
  }
  if (outLen === 0) return Buffer.alloc(0);
  let start = 0;
  while (start < src.length && src[start] === 0) start++;
  if (start === src.length) throw new ErofsError('EIO', `${alg}: compressed data is empty or all zero`);
  const input = start === 0 ? src : src.subarray(start);
  const partial = opts.partial === true;
  switch (alg) {
    case 'lz4':
      return lz4Decompress(input, outLen, partial);
    case 'lzma':
      return lzmaDecompress(input, outLen, partial, opts.dictSize ?? 0);
    case 'deflate':
      return deflateDecompress(input, outLen, partial);
    case 'zstd':
      return zstdDecompress(input, outLen, partial);
    default:
      throw new ErofsError('EOPNOTSUPP', `unknown compression algorithm ${String(alg)}`);
  }
}

/**
 * Like decompress(), but writes the `outLen` bytes into out[outOff, outOff + outLen) instead of a
 * new buffer (LZ4 decodes in place; the other algorithms decode and copy). Same errors.
 */
export function decompressInto(
  alg: CompressionAlgorithm,
  src: Buffer,
  out: Uint8Array,
  outOff: number,
  outLen: number,
  opts: DecompressOptions = {},
): void {
  if (!Number.isSafeInteger(outOff) || outOff < 0 || !Number.isSafeInteger(outLen) || outLen < 0 ||
      outOff + outLen > out.length) {
    throw new ErofsError('EINVAL', `${alg}: output window ${outOff}+${outLen} outside a ${out.length}-byte buffer`);
  }
  if (alg !== 'lz4' || outLen === 0 || outLen > MAX_DECOMPRESSED_LENGTH) {
    out.set(decompress(alg, src, outLen, opts), outOff);
    return;
  }
  let start = 0;
  while (start < src.length && src[start] === 0) start++;
  if (start === src.length) throw new ErofsError('EIO', `${alg}: compressed data is empty or all zero`);
  const input = start === 0 ? src : src.subarray(start);
  const win = Buffer.from(out.buffer, out.byteOffset + outOff, outLen);
  lz4DecompressInto(input, win, opts.partial === true);
}
