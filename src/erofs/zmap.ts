// Compressed-file data mapping for EROFS (COMPRESSED_FULL / COMPRESSED_COMPACT inodes).
//
// The reader core builds one `ZImageContext` per image and one `CompressedFileContext` per
// compressed inode, then `new CompressedFile(ctx)`; `read(offset, length)` returns file bytes.
// This module parses the map header, the lcluster indexes (full 8-byte, compact 4B/2B) and the
// 48-bit extent records, maps a file offset to its pcluster, decompresses it (via
// ./decompress/index.js) and keeps decompressed pclusters in a byte-bounded LRU.
//
// Everything here is bounded: every index position is checked against the inode's index area,
// pcluster sizes are capped (1 MiB encoded, 12 MiB decoded, as the kernel), lookback and
// lookahead walks are bounded by the longest extent the kernel accepts, and fragment reads
// cannot recurse into themselves. Corruption raises ErofsError('EIO') (unknown algorithms
// 'EOPNOTSUPP').
//
// Reads decode whole extents (the bytes between one HEAD lcluster and the next, or one extent
// record) and cache them, so sequential reads decode each pcluster once; an extent is found by
// the kernel's lookback (z_erofs_map_blocks_fo) and its end by the lookahead
// (z_erofs_get_extent_decompressedlen). Decoding is always "partial" (stop at the extent's
// length), which is what the kernel does for dedupe partial references and harmless otherwise.

import { ErofsError } from './api.js';
import { decompressInto, type CompressionAlgorithm } from './decompress/index.js';
import { lz4DecodeRange } from './decompress/lz4.js';

/** Superblock feature bits this module cares about. */
export const INCOMPAT_LZ4_0PADDING = 0x1;
export const INCOMPAT_COMPR_CFGS = 0x2;
export const INCOMPAT_BIG_PCLUSTER = 0x2;
export const INCOMPAT_ZTAILPACKING = 0x10;
export const INCOMPAT_FRAGMENTS = 0x20;
export const INCOMPAT_48BIT = 0x80;

/** Inode data layouts handled here (i_format bits 1..3). */
export const DATALAYOUT_COMPRESSED_FULL = 1;
export const DATALAYOUT_COMPRESSED_COMPACT = 3;

/** Largest encoded pcluster (kernel Z_EROFS_PCLUSTER_MAX_SIZE). */
export const PCLUSTER_MAX_SIZE = 1024 * 1024;
/** Largest decoded extent we accept (kernel Z_EROFS_PCLUSTER_MAX_DSIZE is 12 MiB). */
export const PCLUSTER_MAX_DSIZE = 12 * 1024 * 1024;

/**
 * Per-image facts, built once by the reader core from the superblock and shared by every
 * CompressedFile of that image.
 */
export interface ZImageContext {
  /** Superblock `blkszbits` (9..12 in practice; block size = 1 << blkszbits). */
  blkszbits: number;
  /** Superblock `feature_incompat` (raw bits; LZ4_0PADDING, COMPR_CFGS, 48BIT, ... are read). */
  featureIncompat: number;
  /**
   * Superblock `u1` as the bitmap of available algorithms (`available_compr_algs`) when
   * COMPR_CFGS is set; when it is not set pass 0 (then only LZ4 is available, and u1 was
   * `lz4_max_distance`).
   */
  availableAlgorithms: number;
  /**
   * Payloads of the COMPR_CFGS records that follow the superblock, indexed by on-disk algorithm
   * id (0 lz4, 1 lzma, 2 deflate, 3 zstd), each without its 2-byte length prefix. Missing ids:
   * undefined. Used for dictionary/window sizes (lzma dict_size, deflate windowbits, zstd
   * windowlog).
   */
  algorithmConfigs: (Buffer | undefined)[];
  /**
   * Bounded read of the image's data space: `len` bytes at unified byte address `addr`
   * (block address << blkszbits, for multi-device images the core resolves the device by the
   * device table's unified addresses). Must throw ErofsError('EIO') if out of range; never
   * returns a short buffer.
   */
  readData(addr: number, len: number): Buffer;
  /**
   * Optional zero-copy variant of readData: a read-only view of `len` bytes at `addr` when the
   * device is memory-mapped, or undefined (then readData is used). Views are only handed to the
   * decompressors (never cached or returned to callers), so they must merely stay valid until
   * the call returns.
   */
  viewData?(addr: number, len: number): Buffer | undefined;
  /**
   * Optional, preferred over viewData: the memory-mapped device bytes around data address
   * `addr` (see DataSpan), or undefined. Lets sequential reads decode pcluster after pcluster
   * straight from the mapping with offsets, with no view object or call per pcluster. Same
   * rules as viewData: the bytes are only read during a call, never kept or handed out.
   */
  dataSpan?(addr: number): DataSpan | undefined;
  /**
   * Bytes `[offset, offset+len)` of the packed inode's content (fragments). Must throw
   * ErofsError('EIO') when there is no packed inode or the range is past its end.
   */
  readPacked(offset: number, len: number): Buffer;
  /** Shared decompressed-pcluster cache (create one per image with OpenOptions.cacheBytes). */
  cache: PclusterCache;
  /** Test hook: replaces ./decompress/index.js `decompress`. */
  decompress?: DecompressFn;
}

/**
 * Mapped bytes of one device: buf[i] holds data address base + i, and a pcluster [pa, pa+plen)
 * with lo <= pa and pa + plen <= hi reads exactly as readData(pa, plen) would.
 */
export interface DataSpan {
  buf: Buffer;
  base: number;
  lo: number;
  hi: number;
  /**
   * Optional read-ahead hint: the caller is about to read data addresses [addr, addr+len) of
   * the span sequentially (the device batches the cold I/O; a mapping without it faults in
   * page by page). Called about once per WILLNEED_GRANULE of pcluster data, not per pcluster.
   */
  willNeed?(addr: number, len: number): void;
}

export type DecompressFn = (
  alg: CompressionAlgorithm,
  src: Buffer,
  outLen: number,
  opts?: { partial?: boolean; dictSize?: number },
) => Buffer;

/** Per-inode facts, built by the reader core for each compressed inode. */
export interface CompressedFileContext {
  image: ZImageContext;
  /** Inode number (for error messages only). */
  nid: number;
  /** i_size. */
  size: number;
  /** 1 = COMPRESSED_FULL, 3 = COMPRESSED_COMPACT. */
  datalayout: number;
  /**
   * Position of the 8-byte z_erofs_map_header in the inode's metadata space:
   * round_up(inode position + inode core size + xattr ibody size, 8). Absolute byte position
   * (nid-derived, i.e. meta_blkaddr already added) for ordinary inodes; for inodes living in
   * the metabox, the position inside the metabox inode's content (the same number the kernel
   * passes to erofs_read_metabuf with in_metabox). Compact-index alignment depends on it.
   */
  mapHeaderPos: number;
  /**
   * Bounded read of the inode's metadata space (the one `mapHeaderPos` refers to): the main
   * image for ordinary inodes, the metabox content for metabox inodes. Used for the map
   * header, the indexes/extents and ztailpacking inline pclusters. Throws ErofsError('EIO')
   * when out of range; never returns a short buffer.
   */
  readMeta(pos: number, len: number): Buffer;
}

/** One mapped extent of a compressed file, as `CompressedFile.mapExtent` reports it. */
export interface ZExtent {
  /** First file offset the extent covers. */
  logical: number;
  /** Decoded length (bytes of the file this extent produces, clamped to EOF). */
  length: number;
  /** 'hole' only in 48-bit extent layouts with plen == 0 (reads as zeros). */
  kind: 'compressed' | 'plain' | 'inline' | 'fragment' | 'hole';
  /** Encoded location: byte address (data space, or meta space for 'inline'; packed-inode offset for 'fragment'). */
  physical: number;
  /** Encoded length in bytes (0 for fragment/hole). */
  physicalLength: number;
  /** On-disk algorithm id for 'compressed'/'inline' compressed extents; -1 for plain, -2 interlaced plain. */
  format: number;
  /** The pcluster decodes to more than this extent (dedupe reference into a larger pcluster). */
  partialRef: boolean;
}

/** Bookkeeping charged per cached entry (key, map slot, Buffer object), so tiny extents count. */
const ENTRY_OVERHEAD = 256;

/**
 * Byte-bounded LRU of decompressed pclusters, shared per image. Memory held: at most `maxBytes`
 * in the LRU, plus one extent larger than `maxBytes` (≤ PCLUSTER_MAX_DSIZE) kept on the side,
 * plus the 128 KiB read-ahead window.
 */
export class PclusterCache {
  private readonly map = new Map<string, Buffer>();
  private bytes = 0;
  private oversizeKey = '';
  private oversize: Buffer | undefined;
  hits = 0;
  misses = 0;

  /**
   * Read-ahead window over the data space (one per image): sequential pclusters are usually
   * stored back to back, so one larger read serves several of them.
   */
  rawStart = -1;
  rawBuf: Buffer | undefined;
  /** End of the last data-space pcluster read (sequential-access detection). */
  rawLastEnd = -1;

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
    this.rawBuf = undefined;
    this.rawStart = -1;
    this.rawLastEnd = -1;
  }
}


// ---- on-disk constants (erofs_fs.h) ----
const ADVISE_COMPACTED_2B = 0x0001;
const ADVISE_EXTENTS = 0x0001;
const ADVISE_BIG_PCLUSTER_1 = 0x0002;
const ADVISE_BIG_PCLUSTER_2 = 0x0004;
const ADVISE_INLINE_PCLUSTER = 0x0008;
const ADVISE_INTERLACED_PCLUSTER = 0x0010;
const ADVISE_FRAGMENT_PCLUSTER = 0x0020;

const TYPE_PLAIN = 0;
const TYPE_HEAD1 = 1;
const TYPE_NONHEAD = 2;
const TYPE_HEAD2 = 3;

const LI_PARTIAL_REF = 1 << 15;
const LI_D0_CBLKCNT = 1 << 11;

const EXTENT_PLEN_PARTIAL = 1 << 27;
const EXTENT_PLEN_FMT_BIT = 28;
const EXTENT_PLEN_MASK = (PCLUSTER_MAX_SIZE << 1) - 1;

/** Internal formats beyond the on-disk algorithm ids 0..3. */
const FMT_SHIFTED = 4;
const FMT_INTERLACED = 5;

const SRC_DATA = 0;
const SRC_META = 1;
const SRC_FRAGMENT = 2;
const SRC_HOLE = 3;

const TWO32 = 0x1_0000_0000;
const PAGE = 4096;
const META_WINDOW = 4096;
/** Checkpoint stride of the 4-byte extent records' running physical address. */
const PA_STRIDE = 256;
/** Read-ahead size for sequential pcluster reads. */
const RAW_READAHEAD = 128 * 1024;


/** Read-ahead hints (DataSpan.willNeed): granule, first and largest window. */
const WILLNEED_GRANULE = 32 * 1024;
const HINT_MIN = 64 * 1024;
const HINT_MAX = 1024 * 1024;

/** Nesting of fragment reads (a packed inode never legitimately has fragments itself). */
let fragmentDepth = 0;
const MAX_FRAGMENT_DEPTH = 2;

const ALG_NAMES: readonly CompressionAlgorithm[] = ['lz4', 'lzma', 'deflate', 'zstd'];

/** One decoded-extent mapping: [la, la+llen) of the file comes from (src, pa, plen, fmt). */
interface Ext {
  la: number;
  llen: number;
  src: number;
  /** data/meta byte address, or packed-inode offset of byte `la` for fragments. */
  pa: number;
  plen: number;
  fmt: number;
  partial: boolean;
}

/** Kernel-style map recorder for lcluster index walks. */
interface Rec {
  lcn: number;
  type: number;
  clusterofs: number;
  delta0: number;
  delta1: number;
  pblk: number;
  compressedblks: number;
  partialref: boolean;
  nextpackoff: number;
}

interface HeadInfo {
  headLcn: number;
  headtype: number;
  la: number;
  pblk: number;
  partialref: boolean;
  compressedblks: number;
  /** nextpackoff of the lcluster holding the looked-up offset (ztailpacking inline data). */
  nextpackoff: number;
}

function newRec(): Rec {
  return { lcn: 0, type: 0, clusterofs: 0, delta0: 0, delta1: 0, pblk: 0, compressedblks: 0, partialref: false, nextpackoff: 0 };
}

function eio(nid: number, what: string): ErofsError {
  return new ErofsError('EIO', `compressed inode ${nid}: ${what}`);
}

/** A compressed regular file (or the packed inode). */
export class CompressedFile {
  readonly size: number;
  private readonly img: ZImageContext;
  private readonly nid: number;
  private readonly bs: number;
  private inited = false;

  // map header facts
  private advise = 0;
  private lcb = 0;
  private lcsize = 0;
  private algs: [number, number] = [0, 0];
  private extentsMode = false;
  private recsz = 0;
  private nExtents = 0;
  private extPos = 0;
  private allFragment = false;
  private fragment = false;
  private fragmentOff = 0;
  private idataSize = 0;
  private idataOff = 0;
  private tailHeadLcn = 0;
  private totalIdx = 0;

  // index area window cache
  private metaEnd = 0;
  private win0: { start: number; buf: Buffer } | undefined;
  private win1: { start: number; buf: Buffer } | undefined;
  /** Offset into the buffer the last meta() call returned. */
  private mo = 0;
  // compact index layout, computed on first use (compactPos)
  private cpC2b = -1;
  private cpEbase = 0;
  private cpInitial = 0;
  private cpShift = 2;

  // recsz == 4 extent layout: running prefix sums of physical starts
  private paPrefix: number[] = [];

  private lastExt: Ext | undefined;

  // scratch records for the lcluster walks (no allocation per extent)
  private readonly recA: Rec = newRec();
  private readonly recB: Rec = newRec();
  private readonly hi: HeadInfo = { headLcn: 0, headtype: 0, la: 0, pblk: 0, partialref: false, compressedblks: 0, nextpackoff: 0 };
  /** The head lcluster that ended the last extent extentEnd() measured (valid when nextHeadValid). */
  private readonly nextHead: Rec = newRec();
  private nextHeadValid = false;
  /** The last mapped span pclusters were decoded from (ZImageContext.dataSpan). */
  private span: DataSpan | undefined;
  /** Data addresses whose read-ahead hint was given (DataSpan.willNeed), granule-rounded. */
  private askedLo = 0;
  private askedHi = 0;
  private hintLen = 0;
  private inFragmentRead = false;

  constructor(readonly ctx: CompressedFileContext) {
    this.size = ctx.size;
    this.img = ctx.image;
    this.nid = ctx.nid;
    if (!Number.isSafeInteger(ctx.size) || ctx.size < 0) throw eio(ctx.nid, `bad size ${ctx.size}`);
    if (ctx.datalayout !== DATALAYOUT_COMPRESSED_FULL && ctx.datalayout !== DATALAYOUT_COMPRESSED_COMPACT) {
      throw eio(ctx.nid, `datalayout ${ctx.datalayout} is not compressed`);
    }
    const bb = this.img.blkszbits;
    if (!Number.isInteger(bb) || bb < 9 || bb > 16) throw eio(ctx.nid, `bad blkszbits ${bb}`);
    this.bs = 1 << bb;
  }

  /** Exactly min(length, size - offset) bytes (empty at/after EOF). Throws ErofsError('EIO') on corruption. */
  read(offset: number, length: number): Buffer {
    if (this.inFragmentRead) throw eio(this.nid, 'fragment refers back into its own file (packed inode)');
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new ErofsError('EINVAL', `bad read range ${offset}+${length}`);
    }
    if (offset >= this.size || length === 0) return Buffer.alloc(0);
    const end = Math.min(this.size, offset + length);
    this.init();
    // Fast path: the whole range inside one extent.
    let e = this.extentFor(offset);
    if (end <= e.la + e.llen) {
      return this.extentBytes(e, offset, end - offset, true);
    }
    const out = Buffer.allocUnsafe(end - offset);
    this.fill(e, offset, end, out, 0);
    return out;
  }

  /**
   * Zero-allocation variant of read(): writes min(length, size - offset) bytes to
   * target[targetOffset, …) and returns the count. Extents the range covers whole are decoded
   * straight into `target`; for files larger than half the pcluster cache they are not cached
   * either (a sequential stream through a big file would only evict everything else).
   */
  readInto(offset: number, length: number, target: Uint8Array, targetOffset = 0): number {
    if (this.inFragmentRead) throw eio(this.nid, 'fragment refers back into its own file (packed inode)');
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 ||
        !Number.isSafeInteger(targetOffset) || targetOffset < 0) {
      throw new ErofsError('EINVAL', `bad read range ${offset}+${length}`);
    }
    if (offset >= this.size || length === 0) return 0;
    const end = Math.min(this.size, offset + length);
    if (targetOffset + (end - offset) > target.length) throw new ErofsError('EINVAL', 'target buffer too small');
    this.init();
    const out = Buffer.isBuffer(target) ? target : Buffer.from(target.buffer, target.byteOffset, target.byteLength);
    this.fill(this.extentFor(offset), offset, end, out, targetOffset);
    return end - offset;
  }

  /** Writes file bytes [offset, end) to out[outOff, …), starting with the extent `e` holding offset. */
  private fill(e: Ext, offset: number, end: number, out: Buffer, outOff: number): void {
    const streamBig = this.size > this.img.cache.maxBytes / 2;
    let cur = offset;
    for (;;) {
      const n = Math.min(end, e.la + e.llen) - cur;
      const at = outOff + (cur - offset);
      if (e.src === SRC_HOLE) out.fill(0, at, at + n);
      else if (e.src === SRC_FRAGMENT) this.extentBytes(e, cur, n, false).copy(out, at);
      else if (cur === e.la && n === e.llen) this.decodedInto(e, out, at, !streamBig && worthCaching(e.fmt));
      else this.decoded(e).copy(out, at, cur - e.la, cur - e.la + n);
      cur += n;
      if (cur >= end) break;
      e = this.extentFor(cur);
    }
  }

  /** The extent containing `offset` (offset < size), for SEEK_DATA/SEEK_HOLE and inspection. */
  mapExtent(offset: number): ZExtent {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset >= this.size) {
      throw new ErofsError('EINVAL', `offset ${offset} outside file of ${this.size} bytes`);
    }
    this.init();
    const e = this.extentFor(offset);
    let kind: ZExtent['kind'];
    if (e.src === SRC_HOLE) kind = 'hole';
    else if (e.src === SRC_FRAGMENT) kind = 'fragment';
    else if (e.src === SRC_META) kind = 'inline';
    else kind = e.fmt >= FMT_SHIFTED ? 'plain' : 'compressed';
    return {
      logical: e.la,
      length: e.llen,
      kind,
      physical: e.pa,
      physicalLength: e.src === SRC_FRAGMENT || e.src === SRC_HOLE ? 0 : e.plen,
      format: e.fmt === FMT_SHIFTED ? -1 : e.fmt === FMT_INTERLACED ? -2 : e.fmt,
      partialRef: e.partial,
    };
  }

  /** SEEK_DATA / SEEK_HOLE: next data/hole offset at or after `offset`; -1 when none (ENXIO). */
  seek(offset: number, whence: 'data' | 'hole'): number {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset >= this.size) return -1;
    this.init();
    if (!this.extentsMode) return whence === 'data' ? offset : this.size;
    let cur = offset;
    while (cur < this.size) {
      const e = this.extentFor(cur);
      const hole = e.src === SRC_HOLE;
      if (whence === 'data' && !hole) return cur;
      if (whence === 'hole' && hole) return cur;
      cur = e.la + e.llen;
    }
    return whence === 'data' ? -1 : this.size;
  }

  // ---------------------------------------------------------------- init / map header

  private init(): void {
    if (this.inited) return;
    const h = this.ctx.readMeta(this.ctx.mapHeaderPos, 8);
    if (h.length < 8) throw eio(this.nid, 'short map header');
    const clusterbits = h[7]!;
    if (clusterbits & 0x80) {
      // The whole file lives in the packed inode; the other 63 bits are the fragment offset.
      const lo = h.readUInt32LE(0);
      const hi = h.readUInt32LE(4) & 0x7fffffff;
      const off = hi * TWO32 + lo;
      if (!Number.isSafeInteger(off) || off + this.size > Number.MAX_SAFE_INTEGER) {
        throw eio(this.nid, 'fragment offset out of range');
      }
      this.allFragment = true;
      this.fragment = true;
      this.fragmentOff = off;
      this.tailHeadLcn = 0;
      this.inited = true;
      return;
    }
    this.advise = h.readUInt16LE(4);
    this.lcb = this.img.blkszbits + (clusterbits & 15);
    this.lcsize = 2 ** this.lcb;
    const full = this.ctx.datalayout === DATALAYOUT_COMPRESSED_FULL;
    if (full && this.advise & ADVISE_EXTENTS) {
      this.extentsMode = true;
      this.recsz = 4 << ((this.advise >> 1) & 3);
      this.extPos = roundUp(this.ctx.mapHeaderPos + 8, this.recsz);
      this.fragment = (this.advise & ADVISE_FRAGMENT_PCLUSTER) !== 0;
      if (this.recsz <= 8) {
        this.nExtents = Math.ceil(this.size / this.lcsize);
        this.metaEnd = this.extPos + (this.recsz === 4 ? 8 : 0) + this.recsz * this.nExtents;
      } else {
        this.nExtents = h.readUInt32LE(0) + h.readUInt16LE(6) * TWO32;
        this.metaEnd = this.extPos + this.recsz * this.nExtents;
      }
      if (!Number.isSafeInteger(this.metaEnd)) throw eio(this.nid, 'extent table out of range');
      this.inited = true;
      return;
    }
    this.algs = [h[6]! & 15, h[6]! >> 4];
    if (this.algs[0] >= ALG_NAMES.length || this.algs[1] >= ALG_NAMES.length) {
      throw new ErofsError('EOPNOTSUPP', `compressed inode ${this.nid}: unknown algorithm types 0x${h[6]!.toString(16)}`);
    }
    if (this.advise & (ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2) && !(this.img.featureIncompat & INCOMPAT_BIG_PCLUSTER)) {
      throw eio(this.nid, 'per-inode big pcluster without the superblock feature');
    }
    if (this.advise & ADVISE_FRAGMENT_PCLUSTER) {
      this.fragment = true;
      this.fragmentOff = h.readUInt32LE(0);
    } else if (this.advise & ADVISE_INLINE_PCLUSTER) {
      this.idataSize = h.readUInt16LE(2);
    }
    if (this.ctx.datalayout === DATALAYOUT_COMPRESSED_COMPACT) {
      const b1 = (this.advise & ADVISE_BIG_PCLUSTER_1) !== 0;
      const b2 = (this.advise & ADVISE_BIG_PCLUSTER_2) !== 0;
      if (b1 !== b2) throw eio(this.nid, 'big pcluster head1/2 of compact indexes inconsistent');
      if (this.lcb > 14) throw eio(this.nid, `compact indexes with lclusterbits ${this.lcb}`);
      this.totalIdx = Math.ceil(this.size / this.bs);
      this.metaEnd = this.totalIdx > 0 ? this.compactPackEnd(this.totalIdx - 1) : this.ctx.mapHeaderPos + 8;
    } else {
      if (this.lcb > 30) throw eio(this.nid, `lclusterbits ${this.lcb} too large`);
      this.totalIdx = Math.ceil(this.size / this.lcsize);
      this.metaEnd = this.ctx.mapHeaderPos + 16 + 8 * this.totalIdx;
    }
    if (this.size > 0 && (this.idataSize > 0 || this.fragment)) {
      // EROFS_GET_BLOCKS_FINDTAIL: locate the tail extent's head lcluster.
      const t = this.locateHead(this.size - 1);
      this.tailHeadLcn = t.headLcn;
      if (this.idataSize > 0) this.idataOff = t.nextpackoff;
      if (this.fragment && full) {
        this.fragmentOff += t.pblk * TWO32;
        if (!Number.isSafeInteger(this.fragmentOff + this.size)) throw eio(this.nid, 'fragment offset out of range');
      }
    }
    this.inited = true;
  }

  // ---------------------------------------------------------------- index area access

  /**
   * Returns a buffer whose bytes [this.mo, this.mo + len) are the meta bytes at pos (no tuple:
   * this runs several times per extent on sequential reads).
   */
  private meta(pos: number, len: number): Buffer {
    if (pos < 0 || pos + len > this.metaEnd) throw eio(this.nid, `index access ${pos}+${len} beyond index area`);
    const w0 = this.win0;
    if (w0 && pos >= w0.start && pos + len <= w0.start + w0.buf.length) {
      this.mo = pos - w0.start;
      return w0.buf;
    }
    const w1 = this.win1;
    if (w1 && pos >= w1.start && pos + len <= w1.start + w1.buf.length) {
      this.win1 = w0;
      this.win0 = w1;
      this.mo = pos - w1.start;
      return w1.buf;
    }
    const ws = pos - (pos % META_WINDOW);
    const we = Math.min(ws + META_WINDOW, this.metaEnd);
    let w: { start: number; buf: Buffer };
    if (pos + len <= we) {
      const buf = this.ctx.readMeta(ws, we - ws);
      if (buf.length !== we - ws) throw eio(this.nid, 'short metadata read');
      w = { start: ws, buf };
    } else {
      const buf = this.ctx.readMeta(pos, len);
      if (buf.length !== len) throw eio(this.nid, 'short metadata read');
      w = { start: pos, buf };
    }
    this.win1 = this.win0;
    this.win0 = w;
    this.mo = pos - w.start;
    return w.buf;
  }


  private loadLcluster(m: Rec, lcn: number, lookahead: boolean): void {
    if (this.ctx.datalayout === DATALAYOUT_COMPRESSED_COMPACT) this.loadCompact(m, lcn, lookahead);
    else this.loadFull(m, lcn);
    if (m.type !== TYPE_NONHEAD && m.clusterofs >= this.lcsize) {
      throw eio(this.nid, `clusterofs ${m.clusterofs} beyond lcluster @ lcn ${lcn}`);
    }
  }

  private loadFull(m: Rec, lcn: number): void {
    if (lcn < 0 || lcn >= this.totalIdx) throw eio(this.nid, `lcn ${lcn} out of range`);
    const pos = this.ctx.mapHeaderPos + 16 + lcn * 8;
    const b = this.meta(pos, 8);
    const o = this.mo;
    m.lcn = lcn;
    m.nextpackoff = pos + 8;
    const advise = b.readUInt16LE(o);
    m.type = advise & 3;
    if (m.type === TYPE_NONHEAD) {
      m.clusterofs = this.lcsize;
      m.delta0 = b.readUInt16LE(o + 4);
      if (m.delta0 & LI_D0_CBLKCNT) {
        if (!(this.advise & (ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2))) {
          throw eio(this.nid, `CBLKCNT without big pcluster @ lcn ${lcn}`);
        }
        m.compressedblks = m.delta0 & ~LI_D0_CBLKCNT;
        m.delta0 = 1;
      }
      m.delta1 = b.readUInt16LE(o + 6);
    } else {
      m.partialref = (advise & LI_PARTIAL_REF) !== 0;
      m.clusterofs = b.readUInt16LE(o + 2);
      m.pblk = b.readUInt32LE(o + 4);
    }
  }

  /**
   * Byte position of compact index `lcn`; its amortized shift (2 = 4-byte packs, 1 = 2-byte
   * packs) goes to this.cpShift (no tuple: this runs several times per extent).
   */
  private compactPos(lcn: number): number {
    if (this.cpC2b < 0) {
      const ebase = this.ctx.mapHeaderPos + 8;
      const initial = ((32 - (ebase % 32)) / 4) & 7;
      let c2b = 0;
      if (this.advise & ADVISE_COMPACTED_2B && initial < this.totalIdx) {
        c2b = Math.floor((this.totalIdx - initial) / 16) * 16;
      }
      this.cpEbase = ebase;
      this.cpInitial = initial;
      this.cpC2b = c2b;
    }
    const initial = this.cpInitial;
    const c2b = this.cpC2b;
    let pos = this.cpEbase;
    let shift = 2;
    let l = lcn;
    if (l >= initial) {
      pos += initial * 4;
      l -= initial;
      if (l < c2b) shift = 1;
      else {
        pos += c2b * 2;
        l -= c2b;
      }
    }
    this.cpShift = shift;
    return pos + l * (1 << shift);
  }

  private compactPackEnd(lcn: number): number {
    const pos = this.compactPos(lcn);
    const packBytes = (this.cpShift === 2 ? 2 : 16) << this.cpShift;
    return pos - (pos % packBytes) + packBytes;
  }

  private loadCompact(m: Rec, lcn: number, lookahead: boolean): void {
    if (lcn < 0 || lcn >= this.totalIdx) throw eio(this.nid, `lcn ${lcn} out of range`);
    const lclusterbits = this.lcb;
    const pos = this.compactPos(lcn);
    const shift = this.cpShift;
    let vcnt: number;
    if (shift === 2) vcnt = 2;
    else if (lclusterbits <= 12) vcnt = 16;
    else throw new ErofsError('EOPNOTSUPP', `compact 2B indexes with lclusterbits ${lclusterbits}`);
    const packBytes = vcnt << shift;
    const packStart = pos - (pos % packBytes);
    const b = this.meta(packStart, packBytes);
    const base = this.mo;
    m.lcn = lcn;
    m.nextpackoff = packStart + packBytes;
    const lobits = lclusterbits > 12 ? lclusterbits : 12;
    const lomask = (1 << lobits) - 1;
    const encodebits = ((packBytes - 4) * 8) / vcnt;
    let i = (pos - packStart) >> shift;
    // Entry idx of the pack: lo = v & lomask, type = (v >>> lobits) & 3 (see packEntry).
    let v = packEntry(b, base, encodebits, i);
    let lo = v & lomask;
    let type = (v >>> lobits) & 3;
    m.type = type;
    if (type === TYPE_NONHEAD) {
      m.clusterofs = this.lcsize;
      if (lookahead) {
        // distance to the next HEAD lcluster
        let d1 = 0;
        let j = i;
        let lj = 0;
        let found = false;
        do {
          const v2 = packEntry(b, base, encodebits, j);
          lj = v2 & lomask;
          if (((v2 >>> lobits) & 3) !== TYPE_NONHEAD) {
            found = true;
            break;
          }
          ++d1;
        } while (++j < vcnt);
        if (!found && !(lj & LI_D0_CBLKCNT)) d1 += lj - 1;
        m.delta1 = d1;
      }
      if (lo & LI_D0_CBLKCNT) {
        if (!(this.advise & ADVISE_BIG_PCLUSTER_1)) throw eio(this.nid, `CBLKCNT without big pcluster @ lcn ${lcn}`);
        m.compressedblks = lo & ~LI_D0_CBLKCNT;
        m.delta0 = 1;
        return;
      } else if (i + 1 !== vcnt) {
        m.delta0 = lo;
        return;
      }
      // The last lcluster of a pack stores delta[1]; derive delta[0] from the previous one.
      v = packEntry(b, base, encodebits, i - 1);
      lo = v & lomask;
      type = (v >>> lobits) & 3;
      if (type !== TYPE_NONHEAD) lo = 0;
      else if (lo & LI_D0_CBLKCNT) lo = 1;
      m.delta0 = lo + 1;
      return;
    }
    m.clusterofs = lo;
    m.delta0 = 0;
    let nblk: number;
    if (!(this.advise & ADVISE_BIG_PCLUSTER_1)) {
      nblk = 1;
      while (i > 0) {
        --i;
        const v2 = packEntry(b, base, encodebits, i);
        if (((v2 >>> lobits) & 3) === TYPE_NONHEAD) i -= v2 & lomask;
        if (i >= 0) ++nblk;
      }
    } else {
      nblk = 0;
      while (i > 0) {
        --i;
        const v2 = packEntry(b, base, encodebits, i);
        if (((v2 >>> lobits) & 3) === TYPE_NONHEAD) {
          const l2 = v2 & lomask;
          if (l2 & LI_D0_CBLKCNT) {
            --i;
            nblk += l2 & ~LI_D0_CBLKCNT;
            continue;
          }
          if (l2 <= 1) throw eio(this.nid, `bogus delta ${l2} in big pcluster pack @ lcn ${lcn}`);
          i -= l2 - 2;
          continue;
        }
        ++nblk;
      }
    }
    m.pblk = readU32(b, base + packBytes - 4) + nblk;
  }

  // ---------------------------------------------------------------- lcluster-index mapping

  /** Zeroes a scratch record (what newRec() gives), so no field of an earlier load leaks in. */
  private resetRec(m: Rec): Rec {
    m.lcn = 0;
    m.type = 0;
    m.clusterofs = 0;
    m.delta0 = 0;
    m.delta1 = 0;
    m.pblk = 0;
    m.compressedblks = 0;
    m.partialref = false;
    m.nextpackoff = 0;
    return m;
  }

  private headResult(lcn: number, m: Rec, compressedblks: number, nextpackoff: number): HeadInfo {
    const h = this.hi;
    h.headLcn = lcn;
    h.headtype = m.type;
    h.la = lcn * this.lcsize + m.clusterofs;
    h.pblk = m.pblk;
    h.partialref = m.partialref;
    h.compressedblks = compressedblks;
    h.nextpackoff = nextpackoff;
    return h;
  }

  /**
   * Finds the head lcluster of the extent containing file offset `ofs` (kernel
   * z_erofs_map_blocks_fo). The result is a scratch object, valid until the next call.
   */
  private locateHead(ofs: number): HeadInfo {
    const L = this.lcsize;
    const initial = Math.floor(ofs / L);
    const endoff = ofs - initial * L;
    const nh = this.nextHead;
    if (this.nextHeadValid && nh.lcn === initial && endoff >= nh.clusterofs) {
      // The head lcluster extentEnd() stopped at for the previous extent: the same record a
      // fresh load gives (heads carry no delta1, and compressedblks is 0 on a direct hit).
      return this.headResult(initial, nh, 0, nh.nextpackoff);
    }
    const m = this.resetRec(this.recA);
    this.loadLcluster(m, initial, false);
    const nextpackoff = m.nextpackoff;
    if (m.type !== TYPE_NONHEAD && endoff >= m.clusterofs) {
      return this.headResult(initial, m, m.compressedblks, nextpackoff);
    }
    let dist: number;
    if (m.type !== TYPE_NONHEAD) {
      if (initial === 0) throw eio(this.nid, 'invalid logical cluster 0');
      dist = 1;
    } else {
      dist = m.delta0;
    }
    let lcn = initial;
    // An extent never decodes to more than PCLUSTER_MAX_DSIZE (the kernel refuses longer ones),
    // so the head cannot lie further back than that: bounds the walk on corrupt deltas.
    const maxBack = Math.ceil(PCLUSTER_MAX_DSIZE / L) + 1;
    while (dist > 0 && lcn >= dist && initial - (lcn - dist) <= maxBack) {
      lcn -= dist;
      this.loadLcluster(m, lcn, false);
      if (m.type === TYPE_NONHEAD) {
        dist = m.delta0;
        continue;
      }
      return this.headResult(lcn, m, m.compressedblks, nextpackoff);
    }
    throw eio(this.nid, `bogus lookback distance ${dist} @ lcn ${lcn}`);
  }

  /** Encoded pcluster length in bytes for a head (kernel z_erofs_get_extent_compressedlen). */
  private compressedLen(h: HeadInfo): number {
    const big1 = (this.advise & ADVISE_BIG_PCLUSTER_1) !== 0;
    const big2 = (this.advise & ADVISE_BIG_PCLUSTER_2) !== 0;
    const lcn = h.headLcn + 1;
    let cblks = h.compressedblks;
    if (
      (h.headtype === TYPE_HEAD1 && !big1) ||
      ((h.headtype === TYPE_PLAIN || h.headtype === TYPE_HEAD2) && !big2) ||
      lcn * this.lcsize >= this.size
    ) {
      cblks = 1;
    }
    if (!cblks) {
      const m = this.resetRec(this.recB);
      this.loadLcluster(m, lcn, false);
      if (m.type === TYPE_NONHEAD && m.delta0 !== 1) throw eio(this.nid, `bogus CBLKCNT @ lcn ${lcn}`);
      cblks = m.type !== TYPE_NONHEAD || !m.compressedblks ? 1 : m.compressedblks;
    }
    const plen = cblks * this.bs;
    if (plen > PCLUSTER_MAX_SIZE) throw eio(this.nid, `pcluster of ${plen} bytes exceeds the maximum`);
    return plen;
  }

  /**
   * End (exclusive file offset) of the extent whose head is `h` (kernel ..._decompressedlen).
   * The head lcluster that ends it is kept in this.nextHead: a sequential read looks up exactly
   * that lcluster next, and locateHead() then need not load it again.
   */
  private extentEnd(h: HeadInfo): number {
    const L = this.lcsize;
    const headLcn = h.headLcn;
    this.nextHeadValid = false;
    if (headLcn * L >= this.size) return this.size;
    // The head lcluster itself was loaded (and checked) by locateHead: step past it.
    const m = this.resetRec(this.nextHead);
    let lcn = headLcn + 1;
    for (;;) {
      if (lcn * L >= this.size) return this.size;
      if ((lcn - headLcn) * L > PCLUSTER_MAX_DSIZE + L) throw eio(this.nid, 'extent too long');
      this.loadLcluster(m, lcn, true);
      if (m.type !== TYPE_NONHEAD) {
        this.nextHeadValid = true;
        return Math.min(this.size, lcn * L + m.clusterofs);
      }
      lcn += m.delta1 || 1;
    }
  }

  private mapFo(ofs: number): Ext {
    if (this.fragment && this.tailHeadLcn === 0) {
      return { la: 0, llen: this.size, src: SRC_FRAGMENT, pa: this.fragmentOff, plen: 0, fmt: 0, partial: false };
    }
    const h = this.locateHead(ofs);
    const tail = h.headLcn === this.tailHeadLcn;
    let fmt: number;
    if (h.headtype === TYPE_PLAIN) {
      fmt = this.advise & ADVISE_INTERLACED_PCLUSTER ? FMT_INTERLACED : FMT_SHIFTED;
    } else {
      fmt = h.headtype === TYPE_HEAD2 ? this.algs[1] : this.algs[0];
      this.checkAlg(fmt);
    }
    if (this.idataSize > 0 && tail) {
      const pa = this.idataOff;
      const plen = this.idataSize;
      if ((pa % this.bs) + plen > this.bs) throw eio(this.nid, `invalid tail-packing pclustersize ${plen}`);
      return { la: h.la, llen: this.size - h.la, src: SRC_META, pa, plen, fmt, partial: h.partialref };
    }
    if (this.fragment && tail) {
      return { la: h.la, llen: this.size - h.la, src: SRC_FRAGMENT, pa: this.fragmentOff, plen: 0, fmt: 0, partial: false };
    }
    const pa = h.pblk * this.bs;
    const plen = this.compressedLen(h);
    const end = this.extentEnd(h);
    return { la: h.la, llen: end - h.la, src: SRC_DATA, pa, plen, fmt, partial: h.partialref };
  }

  private checkAlg(fmt: number): void {
    if (fmt >= ALG_NAMES.length) throw new ErofsError('EOPNOTSUPP', `unknown compression algorithm ${fmt} (nid ${this.nid})`);
    const avail = this.img.availableAlgorithms || 1;
    if (!(avail & (1 << fmt))) throw eio(this.nid, `algorithm ${fmt} not declared by the superblock`);
  }

  // ---------------------------------------------------------------- 48-bit extent records

  private prefixPa(k: number): number {
    // Physical start of lcluster record k = pstart + sum(plen_i & MASK, i < k). Checkpoints every
    // PA_STRIDE records keep memory at nExtents / PA_STRIDE numbers and each lookup at most
    // PA_STRIDE additions once the checkpoints up to k exist.
    const base = this.extPos + 8;
    const cp = this.paPrefix;
    if (cp.length === 0) {
      const b = this.meta(this.extPos, 8);
      const o = this.mo;
      const v = b.readUInt32LE(o) + b.readUInt32LE(o + 4) * TWO32;
      if (!Number.isSafeInteger(v)) throw eio(this.nid, 'extent pstart out of range');
      cp.push(v);
    }
    const j = Math.floor(k / PA_STRIDE);
    while (cp.length <= j) {
      const i = cp.length - 1;
      cp.push(cp[i]! + this.sumPlen(base + i * PA_STRIDE * 4, PA_STRIDE));
    }
    return cp[j]! + this.sumPlen(base + j * PA_STRIDE * 4, k - j * PA_STRIDE);
  }

  private sumPlen(pos: number, count: number): number {
    if (count === 0) return 0;
    const b = this.meta(pos, count * 4);
    const o = this.mo;
    let sum = 0;
    for (let i = 0; i < count; i++) sum += b.readUInt32LE(o + i * 4) & EXTENT_PLEN_MASK;
    return sum;
  }

  private mapExt(ofs: number): Ext {
    const recsz = this.recsz;
    let lstart: number;
    let lend: number;
    let plenRaw: number;
    let pa: number;
    let last: boolean;
    if (recsz <= 8) {
      const L = this.lcsize;
      const k = Math.floor(ofs / L);
      if (k >= this.nExtents) throw eio(this.nid, `offset ${ofs} beyond extents`);
      if (recsz === 4) {
        pa = this.prefixPa(k);
        const b = this.meta(this.extPos + 8 + k * 4, 4);
        const o = this.mo;
        plenRaw = b.readUInt32LE(o);
      } else {
        const b = this.meta(this.extPos + k * 8, 8);
        const o = this.mo;
        plenRaw = b.readUInt32LE(o);
        pa = b.readUInt32LE(o + 4);
      }
      lstart = k * L;
      lend = Math.min((k + 1) * L, this.size);
      last = k === this.nExtents - 1;
    } else {
      const n = this.nExtents;
      const rec = (i: number): [number, number, number] => {
        const b = this.meta(this.extPos + i * recsz, recsz);
        const o = this.mo;
        let la = b.readUInt32LE(o + 12);
        if (recsz >= 32) la += b.readUInt32LE(o + 16) * TWO32;
        const p = b.readUInt32LE(o + 4) + b.readUInt32LE(o + 8) * TWO32;
        return [la, p, b.readUInt32LE(o)];
      };
      // last record with lstart <= ofs
      let l = 0;
      let r = n;
      while (l < r) {
        const mid = l + Math.floor((r - l) / 2);
        if (rec(mid)[0] > ofs) r = mid;
        else l = mid + 1;
      }
      const idx = l - 1;
      if (idx + 1 < n) {
        lend = rec(idx + 1)[0];
        if (lend > this.size) throw eio(this.nid, 'extent start beyond EOF');
      } else {
        lend = this.size;
      }
      if (idx < 0) {
        if (lend <= ofs) throw eio(this.nid, 'unsorted extent records');
        return { la: ofs, llen: lend - ofs, src: SRC_HOLE, pa: 0, plen: 0, fmt: 0, partial: false };
      }
      [lstart, pa, plenRaw] = rec(idx);
      last = idx === n - 1;
    }
    if (!(lstart <= ofs && ofs < lend)) throw eio(this.nid, `extent records do not cover offset ${ofs}`);
    if (!Number.isSafeInteger(pa)) throw eio(this.nid, 'extent address out of range');
    if (last && this.fragment) {
      let off = plenRaw;
      if (recsz > 4) off += pa * TWO32;
      if (!Number.isSafeInteger(off + this.size)) throw eio(this.nid, 'fragment offset out of range');
      return { la: lstart, llen: lend - lstart, src: SRC_FRAGMENT, pa: off, plen: 0, fmt: 0, partial: false };
    }
    if (!plenRaw) return { la: lstart, llen: lend - lstart, src: SRC_HOLE, pa: 0, plen: 0, fmt: 0, partial: false };
    const plen = plenRaw & EXTENT_PLEN_MASK;
    if (!plen || plen > PCLUSTER_MAX_SIZE) throw eio(this.nid, `bad pcluster size ${plen}`);
    const f = plenRaw >>> EXTENT_PLEN_FMT_BIT;
    let fmt: number;
    if (f) {
      fmt = f - 1;
      this.checkAlg(fmt);
    } else if (this.advise & ADVISE_INTERLACED_PCLUSTER && pa % this.bs === 0) {
      fmt = FMT_INTERLACED;
    } else {
      fmt = FMT_SHIFTED;
    }
    return {
      la: lstart,
      llen: lend - lstart,
      src: SRC_DATA,
      pa,
      plen,
      fmt,
      partial: (plenRaw & EXTENT_PLEN_PARTIAL) !== 0,
    };
  }

  // ---------------------------------------------------------------- extents and decoding

  private extentFor(ofs: number): Ext {
    const c = this.lastExt;
    if (c && ofs >= c.la && ofs < c.la + c.llen) return c;
    let e: Ext;
    if (this.allFragment) {
      e = { la: 0, llen: this.size, src: SRC_FRAGMENT, pa: this.fragmentOff, plen: 0, fmt: 0, partial: false };
    } else if (this.extentsMode) {
      e = this.mapExt(ofs);
    } else {
      e = this.mapFo(ofs);
    }
    if (!(e.llen > 0 && e.la <= ofs && ofs < e.la + e.llen && e.la + e.llen <= this.size)) {
      throw eio(this.nid, `bad extent [${e.la}, +${e.llen}) for offset ${ofs}`);
    }
    if (e.src !== SRC_FRAGMENT && e.src !== SRC_HOLE && e.llen > PCLUSTER_MAX_DSIZE) {
      throw eio(this.nid, `extent of ${e.llen} bytes exceeds the maximum`);
    }
    this.lastExt = e;
    return e;
  }

  /** `n` bytes of file offset `cur` from extent `e` (cur..cur+n within it). */
  private extentBytes(e: Ext, cur: number, n: number, fresh: boolean): Buffer {
    if (e.src === SRC_HOLE) return Buffer.alloc(n);
    if (e.src === SRC_FRAGMENT) {
      // A fragment read that comes back into this same file (the packed inode claiming a
      // fragment of itself) would recurse forever: the kernel refuses it as corruption.
      if (this.inFragmentRead || fragmentDepth >= MAX_FRAGMENT_DEPTH) {
        throw eio(this.nid, 'fragment refers back into its own file (packed inode)');
      }
      this.inFragmentRead = true;
      fragmentDepth++;
      let b: Buffer;
      try {
        b = this.img.readPacked(e.pa + (cur - e.la), n);
      } finally {
        this.inFragmentRead = false;
        fragmentDepth--;
      }
      if (b.length !== n) throw eio(this.nid, 'short fragment read');
      // The packed source may hand out views of its own caches: never pass those on.
      return fresh ? Buffer.from(b) : b;
    }
    const d = this.decoded(e);
    const s = d.subarray(cur - e.la, cur - e.la + n);
    return fresh ? Buffer.from(s) : s;
  }

  private cacheKey(e: Ext): string {
    return e.src === SRC_META
      ? `i${this.nid}:${e.la}:${e.llen}`
      : `${e.pa}:${e.plen}:${e.llen}:${e.fmt}${e.fmt === FMT_INTERLACED ? ':' + (e.la % this.bs) : ''}`;
  }

  private decoded(e: Ext): Buffer {
    const key = this.cacheKey(e);
    const cache = this.img.cache;
    const hit = cache.get(key);
    if (hit) return hit;
    const out = Buffer.allocUnsafe(e.llen);
    this.decode(e, out, 0);
    cache.set(key, out);
    return out;
  }

  /**
   * The whole extent `e` into out[at, at + e.llen): from the cache when it holds it, else decoded
   * in place (and then copied into the cache when `keep`).
   */
  private decodedInto(e: Ext, out: Buffer, at: number, keep: boolean): void {
    if (!keep && !worthCaching(e.fmt)) {
      // LZ4 and uncompressed extents decode from the image faster than a cache hit copies:
      // skip the key string and the lookup too.
      this.decode(e, out, at);
      return;
    }
    const key = this.cacheKey(e);
    const cache = this.img.cache;
    const hit = cache.get(key);
    if (hit) {
      hit.copy(out, at, 0, e.llen);
      return;
    }
    this.decode(e, out, at);
    if (keep) cache.set(key, Buffer.from(out.subarray(at, at + e.llen)));
  }

  /** Decodes extent `e` (data or inline pcluster) into out[at, at + e.llen). */
  private decode(e: Ext, out: Buffer, at: number): void {
    if (e.src === SRC_DATA && this.img.dataSpan) {
      let sp = this.span;
      const pa = e.pa;
      const pend = pa + e.plen;
      if (sp === undefined || pa < sp.lo || pend > sp.hi) {
        sp = this.img.dataSpan(pa);
        this.span = sp;
      }
      if (sp !== undefined && pa >= sp.lo && pend <= sp.hi && pa - sp.base + e.plen <= sp.buf.length) {
        if ((pend > this.askedHi || pa < this.askedLo) && sp.willNeed) this.hintAhead(sp, pa, pend);
        this.decodeFrom(e, sp.buf, pa - sp.base, out, at);
        return;
      }
    }
    const raw = e.src === SRC_META ? this.ctx.readMeta(e.pa, e.plen) : this.readRaw(e.pa, e.plen);
    if (raw.length !== e.plen) throw eio(this.nid, 'short pcluster read');
    this.decodeFrom(e, raw, 0, out, at);
  }

  /**
   * Read-ahead hint for the pcluster [pa, pend) and what follows it, growing like the kernel's
   * read-ahead window while the reads stay sequential (64 KiB, doubling up to 1 MiB), and asked
   * again when half of it is consumed so the next part is in flight before it is needed.
   */
  private hintAhead(sp: DataSpan, pa: number, pend: number): void {
    const sequential = pa >= this.askedLo && pa <= this.askedHi + WILLNEED_GRANULE;
    this.hintLen = sequential ? Math.min(this.hintLen * 2, HINT_MAX) : HINT_MIN;
    const len = Math.max(pend, Math.min(sp.hi, pa + this.hintLen)) - pa;
    sp.willNeed!(pa, len);
    this.askedLo = pa - (pa % WILLNEED_GRANULE);
    this.askedHi = Math.max(pend, pa + Math.floor(len / 2));
  }

  /** Decodes extent `e` from its pcluster bytes src[s0, s0 + e.plen) into out[at, at + e.llen). */
  private decodeFrom(e: Ext, src: Buffer, s0: number, out: Buffer, at: number): void {
    if (e.fmt === FMT_SHIFTED) {
      if (e.llen > e.plen) throw eio(this.nid, `plain extent of ${e.llen} bytes in a ${e.plen}-byte pcluster`);
      src.copy(out, at, s0, s0 + e.llen);
    } else if (e.fmt === FMT_INTERLACED) {
      if (e.llen > e.plen) throw eio(this.nid, `plain extent of ${e.llen} bytes in a ${e.plen}-byte pcluster`);
      const cur0 = this.bs - (e.la % this.bs);
      if (cur0 > e.plen) throw eio(this.nid, 'interlaced pcluster too short');
      const first = Math.min(cur0, e.llen);
      src.copy(out, at, s0 + e.plen - cur0, s0 + e.plen - cur0 + first);
      if (e.llen > first) src.copy(out, at + first, s0, s0 + e.llen - first);
    } else {
      this.inflate(e, src, s0, out, at);
    }
  }

  /** Data-space bytes of one pcluster, through the image's sequential read-ahead window. */
  private readRaw(pa: number, plen: number): Buffer {
    if (this.img.viewData) {
      const v = this.img.viewData(pa, plen);
      if (v) {
        if (v.length !== plen) throw eio(this.nid, 'short pcluster view');
        return v;
      }
    }
    const c = this.img.cache;
    const w = c.rawBuf;
    if (w && pa >= c.rawStart && pa + plen <= c.rawStart + w.length) {
      c.rawLastEnd = pa + plen;
      return w.subarray(pa - c.rawStart, pa - c.rawStart + plen);
    }
    const sequential = pa === c.rawLastEnd;
    c.rawLastEnd = pa + plen;
    if (sequential && plen < RAW_READAHEAD) {
      let buf: Buffer | undefined;
      try {
        buf = this.img.readData(pa, RAW_READAHEAD);
      } catch {
        buf = undefined; // near the end of the device: fall back to the exact read
      }
      if (buf && buf.length === RAW_READAHEAD) {
        c.rawBuf = buf;
        c.rawStart = pa;
        return buf.subarray(0, plen);
      }
    }
    return this.img.readData(pa, plen);
  }

  /** Decompresses extent `e` from src[s0, s0 + e.plen) into target[at, at + e.llen). */
  private inflate(e: Ext, src: Buffer, s0: number, target: Buffer, at: number): void {
    const alg = ALG_NAMES[e.fmt];
    if (!alg) throw new ErofsError('EOPNOTSUPP', `unknown compression algorithm ${e.fmt}`);
    const send = s0 + e.plen;
    let margin = 0;
    if (e.fmt !== 0 || this.img.featureIncompat & INCOMPAT_LZ4_0PADDING) {
      // z_erofs_fixup_insize: skip the zero padding, looked for within the first page only.
      const limit = Math.min(e.plen, PAGE - (e.pa % PAGE));
      while (margin < limit && src[s0 + margin] === 0) margin++;
      if (margin >= limit) throw eio(this.nid, 'compressed pcluster is all padding');
    }
    const fn = this.img.decompress;
    if (e.fmt === 0 && !fn) {
      // LZ4 hot path: decode straight from the source (usually the image mapping) into the
      // target with offsets; no views, option objects or buffers per pcluster.
      let sp = s0 + margin;
      // Without 0padding the decoder contract still skips leading zeros (as decompress() does).
      while (sp < send && src[sp] === 0) sp++;
      if (sp >= send) throw eio(this.nid, 'lz4: compressed data is empty or all zero');
      try {
        lz4DecodeRange(src, sp, send, target, at, at + e.llen, true);
      } catch (err) {
        if (err instanceof ErofsError) throw err;
        throw eio(this.nid, `lz4 decompression failed: ${(err as Error).message}`);
      }
      return;
    }
    const raw = src.subarray(s0 + margin, send);
    const opts: { partial: boolean; dictSize?: number } = { partial: true };
    if (alg === 'lzma') {
      const cfg = this.img.algorithmConfigs[1];
      if (cfg && cfg.length >= 4) opts.dictSize = cfg.readUInt32LE(0);
    }
    try {
      if (fn) {
        const out = fn(alg, raw, e.llen, opts);
        if (out.length !== e.llen) throw eio(this.nid, `${alg} produced ${out.length} bytes, wanted ${e.llen}`);
        target.set(out, at);
      } else {
        decompressInto(alg, raw, target, at, e.llen, opts);
      }
    } catch (err) {
      if (err instanceof ErofsError) throw err;
      throw eio(this.nid, `${alg} decompression failed: ${(err as Error).message}`);
    }
  }
}

/**
 * Whether a whole decoded extent is worth a cache copy: not for LZ4 or uncompressed pclusters,
 * which decode (copy) from the mapped image about as fast as a cache hit copies (measured on a
 * 256 MiB file: LZ4 ~2.4 GB per CPU-second decoded in place vs ~0.5 through a warm cache).
 */
function worthCaching(fmt: number): boolean {
  return fmt !== 0 && fmt !== FMT_SHIFTED && fmt !== FMT_INTERLACED;
}

/** Little-endian u32 at b[p] (the caller has checked p + 4 <= b.length). */
function readU32(b: Buffer, p: number): number {
  return (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24)) >>> 0;
}

/** Compact index entry `idx` of the pack at b[base]: its bits, lowest first (lo, then type). */
function packEntry(b: Buffer, base: number, encodebits: number, idx: number): number {
  const bit = encodebits * idx;
  return readU32(b, base + (bit >> 3)) >>> (bit & 7);
}

function roundUp(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}
