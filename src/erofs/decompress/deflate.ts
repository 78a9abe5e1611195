// Raw DEFLATE (RFC 1951, no zlib/gzip wrapper), as EROFS stores DEFLATE pclusters; decoded by
// node:zlib (the system zlib, far faster than a JS inflater).
//
// Exact mode: the stream must end (Z_STREAM_END) exactly at outLen; maxOutputLength = outLen
// makes zlib refuse to produce more. Partial mode: the stream may continue past outLen (and the
// input may stop mid-stream, as in the kernel's Z_SYNC_FLUSH loop). node:zlib's one-shot API
// cannot stop at an output size without throwing away the output, so a longer stream is decoded
// again with larger (bounded) limits, and if even those are exceeded we decode the shortest input
// prefix whose output covers outLen (binary search; each step bounded by outLen + 4 KiB, since
// one more input byte yields at most 8 symbols × 258 bytes).

import zlib from 'node:zlib';
import { ErofsError } from '../api.js';

/** Output growth per extra input byte is at most 8 matches of 258 bytes. */
const MAX_OUT_PER_IN_BYTE = 8 * 258;
/** Further limits tried for partial decoding before the prefix search. */
const partialCaps = (outLen: number): number[] => [2 * outLen + 128 * 1024, outLen + 4 * 1024 * 1024];

function isTooLarge(e: unknown): boolean {
  return e instanceof RangeError || (e as { code?: string })?.code === 'ERR_BUFFER_TOO_LARGE';
}

function fail(e: unknown, outLen: number): never {
  if (e instanceof ErofsError) throw e;
  const msg = e instanceof Error ? e.message : String(e);
  throw new ErofsError('EIO', `deflate: ${msg} (want ${outLen} bytes)`);
}

/** Inflates `src` with Z_SYNC_FLUSH at the end, so a stream cut short yields its decodable part. */
function inflateSync(src: Buffer, limit: number): Buffer {
  return zlib.inflateRawSync(src, {
    maxOutputLength: Math.max(1, limit),
    finishFlush: zlib.constants.Z_SYNC_FLUSH,
  });
}

export function deflateDecompress(src: Buffer, outLen: number, partial: boolean): Buffer {
  if (!partial) {
    let out: Buffer;
    try {
      // Z_FINISH (the default): a stream that does not end inside src is an error.
      out = zlib.inflateRawSync(src, { maxOutputLength: outLen });
    } catch (e) {
      fail(isTooLarge(e) ? new Error('stream longer than the extent') : e, outLen);
    }
    if (out.length !== outLen) fail(new Error(`stream ended after ${out.length} bytes`), outLen);
    return out;
  }
  // Partial decoding.
  const caps = [outLen, ...partialCaps(outLen)];
  for (const cap of caps) {
    try {
      const out = inflateSync(src, cap);
      if (out.length < outLen) fail(new Error(`stream ended after ${out.length} bytes`), outLen);
      return out.length === outLen ? out : out.subarray(0, outLen);
    } catch (e) {
      if (!isTooLarge(e)) fail(e, outLen);
    }
  }
  // Binary search for the shortest input prefix whose output reaches outLen. Output size is
  // monotone in the prefix length; a prefix that overflows the limit is "long enough".
  const limit = outLen + MAX_OUT_PER_IN_BYTE + 1024;
  let lo = 1;
  let hi = src.length;
  let best: Buffer | undefined;
  while (lo <= hi) {
    const mid = lo + ((hi - lo) >> 1);
    let out: Buffer | undefined;
    let tooLarge = false;
    try {
      out = inflateSync(src.subarray(0, mid), limit);
    } catch (e) {
      if (!isTooLarge(e)) fail(e, outLen);
      tooLarge = true;
    }
    if (tooLarge || (out !== undefined && out.length >= outLen)) {
      if (out !== undefined) best = out;
      hi = mid - 1;
    } else {
      lo = mid + 1;
    }
  }
  if (best === undefined) {
    // The shortest sufficient prefix overflowed the limit only through corrupt data.
    fail(new Error('cannot locate the end of the partial extent'), outLen);
  }
  return best.subarray(0, outLen);
}
