// LZ4 raw block decoder (no frame), as EROFS stores LZ4 pclusters.
//
// Block format: sequences of [token][literal length ext][literals][offset u16le][match length ext].
// The last sequence has literals only and ends the input. We stop as soon as `outLen` bytes are
// produced (partial decoding), or throw when a copy would run past outLen in exact mode.

import { ErofsError } from '../api.js';

/** Copies shorter than this use a byte loop; longer ones a native memmove. */
const SHORT_COPY = 32;

function corrupt(msg: string): never {
  throw new ErofsError('EIO', `lz4: ${msg}`);
}

export function lz4Decompress(src: Buffer, outLen: number, partial: boolean): Buffer {
  const out = Buffer.allocUnsafe(outLen);
  lz4DecompressInto(src, out, partial);
  return out;
}

/**
 * Decodes into all of `out` (outLen = out.length): the caller passes a window of its own buffer
 * (e.g. a read reply), so no output buffer is allocated. Matches cannot reach before the window.
 */
export function lz4DecompressInto(src: Buffer, out: Buffer, partial: boolean): Buffer {
  const outLen = out.length;
  // Short copies move 4 bytes at a time through DataViews (unaligned access is fine there).
  const odv = new DataView(out.buffer, out.byteOffset, outLen);
  const sdv = new DataView(src.buffer, src.byteOffset, src.length);
  const srcLen = src.length;
  let ip = 0;
  let op = 0;
  for (;;) {
    if (ip >= srcLen) corrupt(`input ended after ${op} of ${outLen} bytes`);
    const token = src[ip++];
    // Literals.
    let litLen = token >>> 4;
    if (litLen === 15) {
      let b: number;
      do {
        if (ip >= srcLen) corrupt('truncated literal length');
        b = src[ip++];
        litLen += b;
      } while (b === 255);
    }
    if (litLen > 0) {
      if (ip + litLen > srcLen) {
        // Truncated literal run: usable only if outLen is reached within it.
        if (op + (srcLen - ip) < outLen) corrupt('literal run past end of input');
      }
      let n = litLen;
      if (op + n > outLen) {
        if (!partial) corrupt('literal run past end of output');
        n = outLen - op;
      }
      if (n < SHORT_COPY) {
        let i = 0;
        for (; i + 4 <= n; i += 4) odv.setUint32(op + i, sdv.getUint32(ip + i, true), true);
        for (; i < n; i++) out[op + i] = src[ip + i];
      } else {
        src.copy(out, op, ip, ip + n);
      }
      op += n;
      ip += n;
      if (op === outLen) return out;
    }
    if (ip >= srcLen) corrupt(`input ended after ${op} of ${outLen} bytes`);
    // Match.
    if (ip + 2 > srcLen) corrupt('truncated match offset');
    const offset = src[ip] | (src[ip + 1] << 8);
    ip += 2;
    if (offset === 0 || offset > op) corrupt(`bad match offset ${offset} at output ${op}`);
    let matchLen = (token & 15) + 4;
    if (matchLen === 19) {
      let b: number;
      do {
        if (ip >= srcLen) corrupt('truncated match length');
        b = src[ip++];
        matchLen += b;
      } while (b === 255);
    }
    if (op + matchLen > outLen) {
      if (!partial) corrupt('match past end of output');
      matchLen = outLen - op;
    }
    const from = op - offset;
    if (matchLen < SHORT_COPY) {
      let i = 0;
      // With offset >= 4 every 4-byte read covers bytes already written.
      if (offset >= 4) for (; i + 4 <= matchLen; i += 4) odv.setUint32(op + i, odv.getUint32(from + i, true), true);
      for (; i < matchLen; i++) out[op + i] = out[from + i];
      op += matchLen;
    } else if (offset === 1) {
      out.fill(out[from], op, op + matchLen);
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
    if (op === outLen) return out;
  }
}
