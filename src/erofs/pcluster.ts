// Decoding pclusters and caching what they decode to (kernel fs/erofs/decompressor.c and the
// pcluster part of zdata.c; erofs-utils lib/decompress.c): the 0padding fixup, uncompressed
// pclusters stored shifted or interlaced, the algorithm call with partial decoding, and a
// byte-bounded LRU of decoded extents shared by the files of one image.
import { ErofsError } from './api.js';
import { decompressInto, type CompressionAlgorithm } from './decompress/index.js';
import { lz4DecodeRange } from './decompress/lz4.js';
import { COMPRESSION_LZ4, COMPRESSION_LZMA, COMPRESSION_NAMES, INCOMPAT } from './format.js';
import { zeio } from './zindex.js';
import { FMT_INTERLACED, FMT_SHIFTED, ZSRC, type ZMapping } from './zmap.js';

/** The 0padding before compressed data is looked for within the pcluster's first page only. */
const PADDING_PAGE = 4096;

export type DecompressFn = (
  alg: CompressionAlgorithm,
  src: Buffer,
  outLen: number,
  opts?: { partial?: boolean; dictSize?: number },
) => Buffer;

/** What decoding needs to know about the image. */
export interface DecodeImage {
  blkszbits: number;
  featureIncompat: number;
  /** COMPR_CFGS payloads by algorithm id (LZMA's dict_size is read from its record). */
  algorithmConfigs: (Buffer | undefined)[];
  /** Test hook: replaces ./decompress/index.js for every algorithm. */
  decompress?: DecompressFn;
}

/**
 * Decodes extent `e` from its pcluster bytes src[s0, s0 + e.plen) into out[at, at + e.llen).
 * Always partial decoding (stop at the extent's length): what the kernel does for dedupe
 * partial references, and harmless otherwise.
 */
export function decodePcluster(img: DecodeImage, nid: number, e: ZMapping, src: Buffer, s0: number, out: Buffer, at: number): void {
  if (e.fmt === FMT_SHIFTED) {
    if (e.llen > e.plen) throw zeio(nid, `plain extent of ${e.llen} bytes in a ${e.plen}-byte pcluster`);
    src.copy(out, at, s0, s0 + e.llen);
  } else if (e.fmt === FMT_INTERLACED) {
    if (e.llen > e.plen) throw zeio(nid, `plain extent of ${e.llen} bytes in a ${e.plen}-byte pcluster`);
    // Rotated by the extent's offset in its block: the first bytes sit at the pcluster's end.
    const bs = 1 << img.blkszbits;
    const cur0 = bs - (e.la % bs);
    if (cur0 > e.plen) throw zeio(nid, 'interlaced pcluster too short');
    const first = Math.min(cur0, e.llen);
    src.copy(out, at, s0 + e.plen - cur0, s0 + e.plen - cur0 + first);
    if (e.llen > first) src.copy(out, at + first, s0, s0 + e.llen - first);
  } else {
    inflate(img, nid, e, src, s0, out, at);
  }
}

/** Decompresses extent `e` from src[s0, s0 + e.plen) into target[at, at + e.llen). */
function inflate(img: DecodeImage, nid: number, e: ZMapping, src: Buffer, s0: number, target: Buffer, at: number): void {
  const alg = COMPRESSION_NAMES[e.fmt];
  if (!alg) throw new ErofsError('EOPNOTSUPP', `unknown compression algorithm ${e.fmt}`);
  const send = s0 + e.plen;
  let margin = 0;
  if (e.fmt !== COMPRESSION_LZ4 || img.featureIncompat & INCOMPAT.ZERO_PADDING) {
    // z_erofs_fixup_insize: skip the zero padding, looked for within the first page only.
    const limit = Math.min(e.plen, PADDING_PAGE - (e.pa % PADDING_PAGE));
    while (margin < limit && src[s0 + margin] === 0) margin++;
    if (margin >= limit) throw zeio(nid, 'compressed pcluster is all padding');
  }
  const fn = img.decompress;
  if (e.fmt === COMPRESSION_LZ4 && !fn) {
    // LZ4 hot path: decode straight from the source (usually the image mapping) into the
    // target with offsets; no views, option objects or buffers per pcluster.
    let sp = s0 + margin;
    // Without 0padding the decoder contract still skips leading zeros (as decompress() does).
    while (sp < send && src[sp] === 0) sp++;
    if (sp >= send) throw zeio(nid, 'lz4: compressed data is empty or all zero');
    try {
      lz4DecodeRange(src, sp, send, target, at, at + e.llen, true);
    } catch (err) {
      if (err instanceof ErofsError) throw err;
      throw zeio(nid, `lz4 decompression failed: ${(err as Error).message}`);
    }
    return;
  }
  const raw = src.subarray(s0 + margin, send);
  const opts: { partial: boolean; dictSize?: number } = { partial: true };
  if (e.fmt === COMPRESSION_LZMA) {
    const cfg = img.algorithmConfigs[COMPRESSION_LZMA];
    if (cfg && cfg.length >= 4) opts.dictSize = cfg.readUInt32LE(0);
  }
  try {
    if (fn) {
      const out = fn(alg, raw, e.llen, opts);
      if (out.length !== e.llen) throw zeio(nid, `${alg} produced ${out.length} bytes, wanted ${e.llen}`);
      target.set(out, at);
    } else {
      decompressInto(alg, raw, target, at, e.llen, opts);
    }
  } catch (err) {
    if (err instanceof ErofsError) throw err;
    throw zeio(nid, `${alg} decompression failed: ${(err as Error).message}`);
  }
}

/**
 * Whether a whole decoded extent is worth a cache copy: not for LZ4 or uncompressed pclusters,
 * which decode (copy) from the mapped image about as fast as a cache hit copies (measured on a
 * 256 MiB file: LZ4 ~2.4 GB per CPU-second decoded in place vs ~0.5 through a warm cache).
 */
export function worthCaching(fmt: number): boolean {
  return fmt !== COMPRESSION_LZ4 && fmt !== FMT_SHIFTED && fmt !== FMT_INTERLACED;
}

/**
 * Cache key of a decoded extent: where its pcluster is and what it decodes to, so files sharing
 * a pcluster (dedupe) share the entry. Inline pclusters are per inode.
 */
export function pclusterKey(nid: number, blockSize: number, e: ZMapping): string {
  return e.src === ZSRC.META
    ? `i${nid}:${e.la}:${e.llen}`
    : `${e.pa}:${e.plen}:${e.llen}:${e.fmt}${e.fmt === FMT_INTERLACED ? ':' + (e.la % blockSize) : ''}`;
}

/** Bookkeeping charged per cached entry (key, map slot, Buffer object), so tiny extents count. */
const ENTRY_OVERHEAD = 256;

/**
 * Byte-bounded LRU of decoded extents, shared per image. Memory held: at most `maxBytes` in the
 * LRU, plus one extent larger than `maxBytes` (≤ Z_PCLUSTER_MAX_DSIZE) kept on the side.
 */
export class PclusterCache {
  private readonly map = new Map<string, Buffer>();
  private bytes = 0;
  private oversizeKey = '';
  private oversize: Buffer | undefined;
  hits = 0;
  misses = 0;

  constructor(readonly maxBytes: number = 64 * 1024 * 1024) {}

  get(key: string): Buffer | undefined {
    const v = this.map.get(key);
    if (v === undefined) {
      if (this.oversizeKey === key && this.oversize) {
        this.hits++;
        return this.oversize;
      }
      this.misses++;
      return undefined;
    }
    this.hits++;
    // refresh recency
    this.map.delete(key);
    this.map.set(key, v);
    return v;
  }

  set(key: string, value: Buffer): void {
    const old = this.map.get(key);
    if (old !== undefined) {
      this.bytes -= old.length + ENTRY_OVERHEAD;
      this.map.delete(key);
    }
    const cost = value.length + ENTRY_OVERHEAD;
    if (cost > this.maxBytes) {
      // One extent larger than the whole budget: keep just the latest such one on the side,
      // so that small sequential reads through it do not decode it again each time.
      this.oversizeKey = key;
      this.oversize = value;
      return;
    }
    this.map.set(key, value);
    this.bytes += cost;
    while (this.bytes > this.maxBytes) {
      const first = this.map.keys().next();
      if (first.done) break;
      const b = this.map.get(first.value)!;
      this.map.delete(first.value);
      this.bytes -= b.length + ENTRY_OVERHEAD;
    }
  }

  get usedBytes(): number {
    return this.bytes;
  }

  clear(): void {
    this.map.clear();
    this.bytes = 0;
    this.oversize = undefined;
    this.oversizeKey = '';
  }
}
