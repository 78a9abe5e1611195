// LZ4 raw block decoder (no frame), as EROFS stores LZ4 pclusters.
//
// Block format: sequences of [token][literal length ext][literals][offset u16le][match length ext].
// The last sequence has literals only and ends the input. We stop as soon as `outLen` bytes are
// produced (partial decoding), or throw when a copy would run past outLen in exact mode.

import { ErofsError } from '../api.js';

/** Copies shorter than this use a word/byte loop; longer ones a native memmove. */
const SHORT_COPY = 32;

function corrupt(msg: string): never {
  throw new ErofsError('EIO', `lz4: ${msg}`);
}

export function lz4Decompress(src: Buffer, outLen: number, partial: boolean): Buffer {
  const out = Buffer.allocUnsafe(outLen);
  lz4DecodeRange(src, 0, src.length, out, 0, outLen, partial);
  return out;
}

/**
 * Decodes into all of `out` (outLen = out.length): the caller passes a window of its own buffer
 * (e.g. a read reply), so no output buffer is allocated. Matches cannot reach before the window.
 */
export function lz4DecompressInto(src: Buffer, out: Buffer, partial: boolean): Buffer {
  lz4DecodeRange(src, 0, src.length, out, 0, out.length, partial);
  return out;
}

// DataViews for the 4-byte short copies, kept for the last source and output arrays: the hot
// callers pass the same arrays again and again (the image mapping, the read reply buffer).
let srcKey: Uint8Array | undefined;
let srcDv: DataView | undefined;
let outKey: Uint8Array | undefined;
let outDv: DataView | undefined;

function viewOf(a: Uint8Array): DataView {
  return new DataView(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * The stream in src[srcStart, srcEnd) decoded into out[outStart, outEnd) (exactly that many
 * bytes; `partial` as for decompress()). No views or buffers are allocated per call: the hot
 * path passes the whole image mapping and the caller's reply buffer with offsets. Matches
 * cannot reach before outStart; every index is checked against the given ranges.
 */
export function lz4DecodeRange(
  src: Uint8Array,
  srcStart: number,
  srcEnd: number,
  out: Uint8Array,
  outStart: number,
  outEnd: number,
  partial: boolean,
): void {
  if (!(srcStart >= 0 && srcStart <= srcEnd && srcEnd <= src.length && outStart >= 0 && outStart <= outEnd &&
        outEnd <= out.length)) {
    throw new ErofsError('EINVAL', `lz4: bad window src ${srcStart}..${srcEnd}/${src.length} out ${outStart}..${outEnd}/${out.length}`);
  }
  if (outStart === outEnd) return;
  let sdv = srcDv;
  if (srcKey !== src || sdv === undefined) {
    sdv = viewOf(src);
    srcKey = src;
    srcDv = sdv;
  }
  let odv = outDv;
  if (outKey !== out || odv === undefined) {
    odv = src === out ? sdv : viewOf(out);
    outKey = out;
    outDv = odv;
  }
  const sBuf = src.buffer;
  const sBase = src.byteOffset;
  let ip = srcStart;
  let op = outStart;
  for (;;) {
    if (ip >= srcEnd) corrupt(`input ended after ${op - outStart} of ${outEnd - outStart} bytes`);
    const token = src[ip++]!;
    // Literals.
    let litLen = token >>> 4;
    if (litLen === 15) {
      let b: number;
      do {
        if (ip >= srcEnd) corrupt('truncated literal length');
        b = src[ip++]!;
        litLen += b;
      } while (b === 255);
    }
    if (litLen > 0) {
      if (ip + litLen > srcEnd) {
        // Truncated literal run: usable only if outEnd is reached within it.
        if (op + (srcEnd - ip) < outEnd) corrupt('literal run past end of input');
      }
      let n = litLen;
      if (op + n > outEnd) {
        if (!partial) corrupt('literal run past end of output');
        n = outEnd - op;
      }
      if (n < SHORT_COPY) {
        if (op + n + 3 <= outEnd && ip + n + 3 <= srcEnd) {
          // Room for whole words: the last one may write up to 3 bytes past the run, inside
          // the window, where later output lands anyway (reads stay inside the input).
          for (let i = 0; i < n; i += 4) odv.setUint32(op + i, sdv.getUint32(ip + i, true), true);
        } else {
          let i = 0;
          for (; i + 4 <= n; i += 4) odv.setUint32(op + i, sdv.getUint32(ip + i, true), true);
          for (; i < n; i++) out[op + i] = src[ip + i]!;
        }
      } else {
        out.set(new Uint8Array(sBuf, sBase + ip, n), op);
      }
      op += n;
      ip += n;
      if (op === outEnd) return;
    }
    if (ip >= srcEnd) corrupt(`input ended after ${op - outStart} of ${outEnd - outStart} bytes`);
    // Match.
    if (ip + 2 > srcEnd) corrupt('truncated match offset');
    const offset = src[ip]! | (src[ip + 1]! << 8);
    ip += 2;
    if (offset === 0 || offset > op - outStart) corrupt(`bad match offset ${offset} at output ${op - outStart}`);
    let matchLen = (token & 15) + 4;
    if (matchLen === 19) {
      let b: number;
      do {
        if (ip >= srcEnd) corrupt('truncated match length');
        b = src[ip++]!;
        matchLen += b;
      } while (b === 255);
    }
    if (op + matchLen > outEnd) {
      if (!partial) corrupt('match past end of output');
      matchLen = outEnd - op;
    }
    const from = op - offset;
    if (matchLen < SHORT_COPY) {
      // With offset >= 4 every 4-byte read covers bytes already written.
      if (offset >= 4 && op + matchLen + 3 <= outEnd) {
        // Whole words, the last one possibly 3 bytes past the match (inside the window, where
        // later output lands anyway).
        for (let i = 0; i < matchLen; i += 4) odv.setUint32(op + i, odv.getUint32(from + i, true), true);
      } else {
        let i = 0;
        if (offset >= 4) for (; i + 4 <= matchLen; i += 4) odv.setUint32(op + i, odv.getUint32(from + i, true), true);
        for (; i < matchLen; i++) out[op + i] = out[from + i]!;
      }
      op += matchLen;
    } else if (offset === 1) {
      out.fill(out[from]!, op, op + matchLen);
      op += matchLen;
    } else if (offset >= matchLen) {
      out.copyWithin(op, from, from + matchLen);
      op += matchLen;
    } else {
      // Overlapping: the pattern repeats with period `offset`; copy it in doubling chunks.
      const end = op + matchLen;
      while (op < end) {
        const n = Math.min(op - from, end - op);
        out.copyWithin(op, from, from + n);
        op += n;
      }
    }
    if (op === outEnd) return;
  }
}
