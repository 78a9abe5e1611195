// LZMA1 decoder for EROFS "MicroLZMA" pclusters (kernel fs/erofs/decompressor_lzma.c via
// xz-embedded's xz_dec_microlzma_*; encoder: liblzma's lzma_microlzma_encoder).
//
// MicroLZMA = a raw LZMA1 range-coder stream whose first byte (always 0x00 in plain LZMA) is
// replaced by the bitwise NOT of the lc/lp/pb properties byte. There is no header, no sizes and
// (normally) no end marker: the decoder is told the output size. We decode straight into the
// output buffer (it doubles as the dictionary), so memory is outLen; distances must stay inside
// the produced output and, when given, inside the image's configured dictionary size.
//
// Range coder: normalization happens before each bit, as in the reference decoders, so a valid
// stream never needs bytes beyond the encoder's flush; reading past the input is corruption.
// Every symbol produces at least one byte or ends the stream, so work is bounded by outLen.
//
// The range decoder's bit decode is inlined at each site (all state in locals, so V8 keeps the
// uint32 range/code values unboxed); the repeated blocks are identical apart from the prob index
// and what happens on a 0 or 1 bit.

import { ErofsError } from '../api.js';

// Offsets into the single probability array.
const IS_MATCH = 0; // [state 12][posState 16]
const IS_REP = IS_MATCH + 192;
const IS_REP_G0 = IS_REP + 12;
const IS_REP_G1 = IS_REP_G0 + 12;
const IS_REP_G2 = IS_REP_G1 + 12;
const IS_REP0_LONG = IS_REP_G2 + 12; // [state][posState]
const POS_SLOT = IS_REP0_LONG + 192; // [lenState 4][64]
const SPEC_POS = POS_SLOT + 256; // 114 = 128 full distances - 14 end pos model index
const ALIGN = SPEC_POS + 114; // 16
const LEN_CODER = ALIGN + 16; // choice, choice2, low[16][8], mid[16][8], high[256]
const REP_LEN_CODER = LEN_CODER + 514;
const LITERAL = REP_LEN_CODER + 514; // 0x300 << (lc + lp)

function corrupt(msg: string): never {
  throw new ErofsError('EIO', `lzma: ${msg}`);
}

export function lzmaDecompress(src: Buffer, outLen: number, partial: boolean, dictSize: number): Buffer {
  if (src.length < 5) corrupt('input shorter than the range coder header');
  const props = ~src[0] & 0xff;
  // xz-embedded's limits: pb <= 4, lc + lp <= 4.
  if (props > (4 * 5 + 4) * 9 + 8) corrupt(`bad properties byte ${props}`);
  const lc = props % 9;
  const lp = Math.floor(props / 9) % 5;
  const pb = Math.floor(props / 45);
  if (lc + lp > 4) corrupt(`unsupported lc ${lc} + lp ${lp}`);
  const probs = new Uint16Array(LITERAL + (0x300 << (lc + lp))).fill(1024);
  const srcLen = src.length;
  // Byte 0 (the inverted properties) stands where the always-zero first byte would be.
  let code = ((src[1] << 24) | (src[2] << 16) | (src[3] << 8) | src[4]) >>> 0;
  let range = 0xffffffff;
  let ip = 5;
  if (code === 0xffffffff) corrupt('bad range coder header');
  let prob = 0;
  let bound = 0;
  const pbMask = (1 << pb) - 1;
  const lpMask = (1 << lp) - 1;
  const litShift = 8 - lc;
  const maxDist = dictSize > 0 ? dictSize : Number.MAX_SAFE_INTEGER;
  const out = Buffer.allocUnsafe(outLen);
  let pos = 0;
  let state = 0;
  let rep0 = 0;
  let rep1 = 0;
  let rep2 = 0;
  let rep3 = 0;
  let b = 0;

  while (pos < outLen) {
    const posState = pos & pbMask;
    if (range < 0x1000000) {
      if (ip >= srcLen) corrupt('input ended mid-stream');
      range = (range << 8) >>> 0;
      code = ((code << 8) | src[ip++]) >>> 0;
    }
    prob = probs[IS_MATCH + (state << 4) + posState];
    bound = (range >>> 11) * prob;
    if (code < bound) {
      range = bound;
      probs[IS_MATCH + (state << 4) + posState] = prob + ((2048 - prob) >>> 5);
      b = 0;
    } else {
      range -= bound;
      code -= bound;
      probs[IS_MATCH + (state << 4) + posState] = prob - (prob >>> 5);
      b = 1;
    }
    if (b === 0) {
      // Literal.
      const prev = pos > 0 ? out[pos - 1] : 0;
      const base = LITERAL + 0x300 * (((pos & lpMask) << lc) + (prev >>> litShift));
      let sym = 1;
      if (state < 7) {
        do {
          if (range < 0x1000000) {
            if (ip >= srcLen) corrupt('input ended mid-stream');
            range = (range << 8) >>> 0;
            code = ((code << 8) | src[ip++]) >>> 0;
          }
          prob = probs[base + sym];
          bound = (range >>> 11) * prob;
          if (code < bound) {
            range = bound;
            probs[base + sym] = prob + ((2048 - prob) >>> 5);
            sym <<= 1;
          } else {
            range -= bound;
            code -= bound;
            probs[base + sym] = prob - (prob >>> 5);
            sym = (sym << 1) | 1;
          }
        } while (sym < 0x100);
      } else {
        let matchByte = out[pos - rep0 - 1] << 1;
        let offset = 0x100;
        do {
          const matchBit = matchByte & offset;
          matchByte <<= 1;
          const i = base + offset + matchBit + sym;
          if (range < 0x1000000) {
            if (ip >= srcLen) corrupt('input ended mid-stream');
            range = (range << 8) >>> 0;
            code = ((code << 8) | src[ip++]) >>> 0;
          }
          prob = probs[i];
          bound = (range >>> 11) * prob;
          if (code < bound) {
            range = bound;
            probs[i] = prob + ((2048 - prob) >>> 5);
            sym <<= 1;
            offset &= ~matchBit;
          } else {
            range -= bound;
            code -= bound;
            probs[i] = prob - (prob >>> 5);
            sym = (sym << 1) | 1;
            offset = matchBit;
          }
        } while (sym < 0x100);
      }
      out[pos++] = sym & 0xff;
      state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
      continue;
    }
    let lenBase: number;
    if (range < 0x1000000) {
      if (ip >= srcLen) corrupt('input ended mid-stream');
      range = (range << 8) >>> 0;
      code = ((code << 8) | src[ip++]) >>> 0;
    }
    prob = probs[IS_REP + state];
    bound = (range >>> 11) * prob;
    if (code < bound) {
      range = bound;
      probs[IS_REP + state] = prob + ((2048 - prob) >>> 5);
      b = 0;
    } else {
      range -= bound;
      code -= bound;
      probs[IS_REP + state] = prob - (prob >>> 5);
      b = 1;
    }
    if (b === 0) {
      lenBase = LEN_CODER;
    } else {
      if (range < 0x1000000) {
        if (ip >= srcLen) corrupt('input ended mid-stream');
        range = (range << 8) >>> 0;
        code = ((code << 8) | src[ip++]) >>> 0;
      }
      prob = probs[IS_REP_G0 + state];
      bound = (range >>> 11) * prob;
      if (code < bound) {
        range = bound;
        probs[IS_REP_G0 + state] = prob + ((2048 - prob) >>> 5);
        b = 0;
      } else {
        range -= bound;
        code -= bound;
        probs[IS_REP_G0 + state] = prob - (prob >>> 5);
        b = 1;
      }
      if (b === 0) {
        if (range < 0x1000000) {
          if (ip >= srcLen) corrupt('input ended mid-stream');
          range = (range << 8) >>> 0;
          code = ((code << 8) | src[ip++]) >>> 0;
        }
        prob = probs[IS_REP0_LONG + (state << 4) + posState];
        bound = (range >>> 11) * prob;
        if (code < bound) {
          range = bound;
          probs[IS_REP0_LONG + (state << 4) + posState] = prob + ((2048 - prob) >>> 5);
          b = 0;
        } else {
          range -= bound;
          code -= bound;
          probs[IS_REP0_LONG + (state << 4) + posState] = prob - (prob >>> 5);
          b = 1;
        }
        if (b === 0) {
          // Short rep: one byte at distance rep0.
          if (rep0 >= pos) corrupt(`distance ${rep0 + 1} beyond output ${pos}`);
          state = state < 7 ? 9 : 11;
          out[pos] = out[pos - rep0 - 1];
          pos++;
          continue;
        }
      } else {
        let dist: number;
        if (range < 0x1000000) {
          if (ip >= srcLen) corrupt('input ended mid-stream');
          range = (range << 8) >>> 0;
          code = ((code << 8) | src[ip++]) >>> 0;
        }
        prob = probs[IS_REP_G1 + state];
        bound = (range >>> 11) * prob;
        if (code < bound) {
          range = bound;
          probs[IS_REP_G1 + state] = prob + ((2048 - prob) >>> 5);
          b = 0;
        } else {
          range -= bound;
          code -= bound;
          probs[IS_REP_G1 + state] = prob - (prob >>> 5);
          b = 1;
        }
        if (b === 0) {
          dist = rep1;
        } else {
          if (range < 0x1000000) {
            if (ip >= srcLen) corrupt('input ended mid-stream');
            range = (range << 8) >>> 0;
            code = ((code << 8) | src[ip++]) >>> 0;
          }
          prob = probs[IS_REP_G2 + state];
          bound = (range >>> 11) * prob;
          if (code < bound) {
            range = bound;
            probs[IS_REP_G2 + state] = prob + ((2048 - prob) >>> 5);
            b = 0;
          } else {
            range -= bound;
            code -= bound;
            probs[IS_REP_G2 + state] = prob - (prob >>> 5);
            b = 1;
          }
          if (b === 0) {
            dist = rep2;
          } else {
            dist = rep3;
            rep3 = rep2;
          }
          rep2 = rep1;
        }
        rep1 = rep0;
        rep0 = dist;
      }
      lenBase = REP_LEN_CODER;
    }
    // Length (minus 2): choice bits select low (3 bits) / mid (3 bits) / high (8 bits) trees.
    let treeBase: number;
    let treeBits: number;
    let len: number;
    if (range < 0x1000000) {
      if (ip >= srcLen) corrupt('input ended mid-stream');
      range = (range << 8) >>> 0;
      code = ((code << 8) | src[ip++]) >>> 0;
    }
    prob = probs[lenBase];
    bound = (range >>> 11) * prob;
    if (code < bound) {
      range = bound;
      probs[lenBase] = prob + ((2048 - prob) >>> 5);
      b = 0;
    } else {
      range -= bound;
      code -= bound;
      probs[lenBase] = prob - (prob >>> 5);
      b = 1;
    }
    if (b === 0) {
      treeBase = lenBase + 2 + posState * 8;
      treeBits = 3;
      len = 0;
    } else {
      if (range < 0x1000000) {
        if (ip >= srcLen) corrupt('input ended mid-stream');
        range = (range << 8) >>> 0;
        code = ((code << 8) | src[ip++]) >>> 0;
      }
      prob = probs[lenBase + 1];
      bound = (range >>> 11) * prob;
      if (code < bound) {
        range = bound;
        probs[lenBase + 1] = prob + ((2048 - prob) >>> 5);
        b = 0;
      } else {
        range -= bound;
        code -= bound;
        probs[lenBase + 1] = prob - (prob >>> 5);
        b = 1;
      }
      if (b === 0) {
        treeBase = lenBase + 2 + 128 + posState * 8;
        treeBits = 3;
        len = 8;
      } else {
        treeBase = lenBase + 2 + 256;
        treeBits = 8;
        len = 16;
      }
    }
    {
      let m = 1;
      for (let k = 0; k < treeBits; k++) {
        if (range < 0x1000000) {
          if (ip >= srcLen) corrupt('input ended mid-stream');
          range = (range << 8) >>> 0;
          code = ((code << 8) | src[ip++]) >>> 0;
        }
        prob = probs[treeBase + m];
        bound = (range >>> 11) * prob;
        if (code < bound) {
          range = bound;
          probs[treeBase + m] = prob + ((2048 - prob) >>> 5);
          m <<= 1;
        } else {
          range -= bound;
          code -= bound;
          probs[treeBase + m] = prob - (prob >>> 5);
          m = (m << 1) | 1;
        }
      }
      len += m - (1 << treeBits);
    }
    if (lenBase === LEN_CODER) {
      // Simple match: decode its distance.
      state = state < 7 ? 7 : 10;
      const slotBase = POS_SLOT + (len < 3 ? len : 3) * 64;
      let m = 1;
      for (let k = 0; k < 6; k++) {
        if (range < 0x1000000) {
          if (ip >= srcLen) corrupt('input ended mid-stream');
          range = (range << 8) >>> 0;
          code = ((code << 8) | src[ip++]) >>> 0;
        }
        prob = probs[slotBase + m];
        bound = (range >>> 11) * prob;
        if (code < bound) {
          range = bound;
          probs[slotBase + m] = prob + ((2048 - prob) >>> 5);
          m <<= 1;
        } else {
          range -= bound;
          code -= bound;
          probs[slotBase + m] = prob - (prob >>> 5);
          m = (m << 1) | 1;
        }
      }
      const slot = m - 64;
      let dist: number;
      if (slot < 4) {
        dist = slot;
      } else {
        const numDirect = (slot >>> 1) - 1;
        dist = (2 | (slot & 1)) * 2 ** numDirect;
        let revBase: number;
        let revBits: number;
        if (slot < 14) {
          revBase = SPEC_POS + dist - slot - 1;
          revBits = numDirect;
        } else {
          let direct = 0;
          for (let k = numDirect - 4; k > 0; k--) {
            if (range < 0x1000000) {
              if (ip >= srcLen) corrupt('input ended mid-stream');
              range = (range << 8) >>> 0;
              code = ((code << 8) | src[ip++]) >>> 0;
            }
            range = range >>> 1;
            if (code >= range) {
              code -= range;
              direct = direct * 2 + 1;
            } else {
              direct = direct * 2;
            }
          }
          dist += direct * 16;
          revBase = ALIGN;
          revBits = 4;
        }
        let rm = 1;
        for (let k = 0; k < revBits; k++) {
          if (range < 0x1000000) {
            if (ip >= srcLen) corrupt('input ended mid-stream');
            range = (range << 8) >>> 0;
            code = ((code << 8) | src[ip++]) >>> 0;
          }
          prob = probs[revBase + rm];
          bound = (range >>> 11) * prob;
          if (code < bound) {
            range = bound;
            probs[revBase + rm] = prob + ((2048 - prob) >>> 5);
            rm <<= 1;
          } else {
            range -= bound;
            code -= bound;
            probs[revBase + rm] = prob - (prob >>> 5);
            rm = (rm << 1) | 1;
            dist += 1 << k;
          }
        }
      }
      if (dist === 0xffffffff) corrupt(`end marker after ${pos} of ${outLen} bytes`);
      rep3 = rep2;
      rep2 = rep1;
      rep1 = rep0;
      rep0 = dist;
    } else {
      state = state < 7 ? 8 : 11;
    }
    // Copy the match.
    if (rep0 >= pos || rep0 >= maxDist) corrupt(`distance ${rep0 + 1} beyond output ${pos}`);
    let n = len + 2;
    if (pos + n > outLen) {
      if (!partial) corrupt('match past end of output');
      n = outLen - pos;
    }
    const from = pos - rep0 - 1;
    if (n < 32 || rep0 + 1 < n) {
      for (let k = 0; k < n; k++) out[pos + k] = out[from + k];
    } else {
      out.copyWithin(pos, from, from + n);
    }
    pos += n;
  }
  return out;
}
