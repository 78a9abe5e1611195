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

import { ErofsError } from '../api.js';

const TOP = 0x1000000; // 2^24
const BIT_MODEL_TOTAL = 1 << 11;
const MOVE_BITS = 5;

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
const LEN_LOW = 2;
const LEN_MID = 2 + 128;
const LEN_HIGH = 2 + 256;

function corrupt(msg: string): never {
  throw new ErofsError('EIO', `lzma: ${msg}`);
}

class Decoder {
  range = 0xffffffff;
  code = 0;
  ip: number;
  readonly probs: Uint16Array;

  constructor(
    readonly src: Buffer,
    lc: number,
    lp: number,
  ) {
    this.probs = new Uint16Array(LITERAL + (0x300 << (lc + lp))).fill(BIT_MODEL_TOTAL >> 1);
    if (src.length < 5) corrupt('input shorter than the range coder header');
    // Byte 0 (the inverted properties) stands where the always-zero first byte would be.
    this.code = ((src[1] << 24) | (src[2] << 16) | (src[3] << 8) | src[4]) >>> 0;
    this.ip = 5;
    if (this.code === 0xffffffff) corrupt('bad range coder header');
  }

  nextByte(): number {
    if (this.ip >= this.src.length) corrupt('input ended mid-stream');
    return this.src[this.ip++];
  }

  bit(i: number): number {
    if (this.range < TOP) {
      this.range = (this.range << 8) >>> 0;
      this.code = ((this.code << 8) | this.nextByte()) >>> 0;
    }
    const p = this.probs[i];
    const bound = (this.range >>> 11) * p;
    if (this.code < bound) {
      this.range = bound;
      this.probs[i] = p + ((BIT_MODEL_TOTAL - p) >>> MOVE_BITS);
      return 0;
    }
    this.range -= bound;
    this.code -= bound;
    this.probs[i] = p - (p >>> MOVE_BITS);
    return 1;
  }

  directBits(n: number): number {
    let res = 0;
    for (let k = 0; k < n; k++) {
      if (this.range < TOP) {
        this.range = (this.range << 8) >>> 0;
        this.code = ((this.code << 8) | this.nextByte()) >>> 0;
      }
      this.range = this.range >>> 1;
      let b = 0;
      if (this.code >= this.range) {
        this.code -= this.range;
        b = 1;
      }
      res = res * 2 + b;
    }
    return res;
  }

  tree(base: number, bits: number): number {
    let m = 1;
    for (let k = 0; k < bits; k++) m = (m << 1) | this.bit(base + m);
    return m - (1 << bits);
  }

  reverseTree(base: number, bits: number): number {
    let m = 1;
    let sym = 0;
    for (let k = 0; k < bits; k++) {
      const b = this.bit(base + m);
      m = (m << 1) | b;
      sym |= b << k;
    }
    return sym;
  }

  /** Match length minus 2 (0..271). */
  len(base: number, posState: number): number {
    if (this.bit(base) === 0) return this.tree(base + LEN_LOW + posState * 8, 3);
    if (this.bit(base + 1) === 0) return 8 + this.tree(base + LEN_MID + posState * 8, 3);
    return 16 + this.tree(base + LEN_HIGH, 8);
  }

  /** Distance minus 1; 0xffffffff is the end-of-payload marker. */
  distance(len: number): number {
    const lenState = len < 3 ? len : 3;
    const slot = this.tree(POS_SLOT + lenState * 64, 6);
    if (slot < 4) return slot;
    const numDirect = (slot >>> 1) - 1;
    let dist = (2 | (slot & 1)) * 2 ** numDirect;
    if (slot < 14) return dist + this.reverseTree(SPEC_POS + dist - slot - 1, numDirect);
    dist += this.directBits(numDirect - 4) * 16;
    return dist + this.reverseTree(ALIGN, 4);
  }
}

export function lzmaDecompress(src: Buffer, outLen: number, partial: boolean, dictSize: number): Buffer {
  if (src.length < 1) corrupt('empty input');
  const props = ~src[0] & 0xff;
  // xz-embedded's limits: pb <= 4, lc + lp <= 4.
  if (props > (4 * 5 + 4) * 9 + 8) corrupt(`bad properties byte ${props}`);
  const lc = props % 9;
  const lp = Math.floor(props / 9) % 5;
  const pb = Math.floor(props / 45);
  if (lc + lp > 4) corrupt(`unsupported lc ${lc} + lp ${lp}`);
  const rc = new Decoder(src, lc, lp);
  const probs = rc.probs;
  const pbMask = (1 << pb) - 1;
  const lpMask = (1 << lp) - 1;
  const maxDist = dictSize > 0 ? dictSize : Number.MAX_SAFE_INTEGER;
  const out = Buffer.allocUnsafe(outLen);
  let pos = 0;
  let state = 0;
  let rep0 = 0;
  let rep1 = 0;
  let rep2 = 0;
  let rep3 = 0;

  while (pos < outLen) {
    const posState = pos & pbMask;
    if (rc.bit(IS_MATCH + (state << 4) + posState) === 0) {
      // Literal.
      const prev = pos > 0 ? out[pos - 1] : 0;
      const base = LITERAL + 0x300 * (((pos & lpMask) << lc) + (prev >>> (8 - lc)));
      let sym = 1;
      if (state < 7) {
        while (sym < 0x100) sym = (sym << 1) | rc.bit(base + sym);
      } else {
        let matchByte = out[pos - rep0 - 1] << 1;
        let offset = 0x100;
        while (sym < 0x100) {
          const matchBit = matchByte & offset;
          matchByte <<= 1;
          if (rc.bit(base + offset + matchBit + sym) === 1) {
            sym = (sym << 1) | 1;
            offset = matchBit;
          } else {
            sym <<= 1;
            offset &= ~matchBit;
          }
        }
      }
      out[pos++] = sym & 0xff;
      state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
      continue;
    }
    let len: number;
    if (rc.bit(IS_REP + state) === 0) {
      // Simple match.
      len = rc.len(LEN_CODER, posState);
      state = state < 7 ? 7 : 10;
      const dist = rc.distance(len);
      if (dist === 0xffffffff) corrupt(`end marker after ${pos} of ${outLen} bytes`);
      rep3 = rep2;
      rep2 = rep1;
      rep1 = rep0;
      rep0 = dist;
    } else {
      if (rc.bit(IS_REP_G0 + state) === 0) {
        if (rc.bit(IS_REP0_LONG + (state << 4) + posState) === 0) {
          // Short rep: one byte at distance rep0.
          if (rep0 >= pos) corrupt(`distance ${rep0 + 1} beyond output ${pos}`);
          state = state < 7 ? 9 : 11;
          out[pos] = out[pos - rep0 - 1];
          pos++;
          continue;
        }
      } else {
        let dist: number;
        if (rc.bit(IS_REP_G1 + state) === 0) {
          dist = rep1;
        } else {
          if (rc.bit(IS_REP_G2 + state) === 0) {
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
      len = rc.len(REP_LEN_CODER, posState);
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
