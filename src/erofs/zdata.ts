// Reading compressed files (kernel fs/erofs/zdata.c, erofs-utils lib/data.c z_erofs_read_data):
// for each extent ./zmap.ts maps, take the pcluster's bytes (mapped image, read-ahead window,
// inline metadata or the packed inode's fragments), decode it (./pcluster.ts) into the caller's
// buffer or the shared cache, and copy out the part asked for.
//
// Reads decode whole extents and cache them where that pays (./pcluster.ts worthCaching), so
// sequential reads decode each pcluster once.
import { ErofsError } from './api.js';
import type { Inode } from './inode.js';
import type { ByteSource } from './io.js';
import type { Superblock } from './superblock.js';
import { INCOMPAT } from './format.js';
import { decodePcluster, pclusterKey, PclusterCache, worthCaching, type DecodeImage } from './pcluster.js';
import { dataReadahead, SpanHints, type DataReadahead, type DataSpan } from './readahead.js';
import { zeio } from './zindex.js';
import { FMT_INTERLACED, FMT_SHIFTED, ZMap, ZSRC, type ZMapImage, type ZMapping } from './zmap.js';

/**
 * Per-image facts, built once from the superblock and shared by every CompressedFile of that
 * image.
 */
export interface ZImageContext extends ZMapImage, DecodeImage {
  /**
   * Bounded read of the image's data space: `len` bytes at unified byte address `addr`
   * (block address << blkszbits; for multi-device images the device is resolved by the device
   * table's unified addresses). Throws ErofsError('EIO') if out of range; never short.
   */
  readData(addr: number, len: number): Buffer;
  /**
   * Optional zero-copy variant of readData: a read-only view of `len` bytes at `addr` when the
   * device is memory-mapped, or undefined (then readData is used). Views are only handed to the
   * decoders (never cached or returned to callers): they need only stay valid during a call.
   */
  viewData?(addr: number, len: number): Buffer | undefined;
  /**
   * Optional, preferred over viewData: the memory-mapped device bytes around data address
   * `addr` (see DataSpan), or undefined. Lets sequential reads decode pcluster after pcluster
   * straight from the mapping with offsets. Same rules as viewData.
   */
  dataSpan?(addr: number): DataSpan | undefined;
  /**
   * Bytes `[offset, offset+len)` of the packed inode's content (fragments). Throws
   * ErofsError('EIO') when there is no packed inode or the range is past its end.
   */
  readPacked(offset: number, len: number): Buffer;
  /** Shared decoded-extent cache (one per image). */
  cache: PclusterCache;
}

/** Per-inode facts for a compressed inode. */
export interface CompressedFileContext {
  image: ZImageContext;
  nid: number;
  /** i_size. */
  size: number;
  /** DATALAYOUT.COMPRESSED_FULL or COMPRESSED_COMPACT. */
  datalayout: number;
  /**
   * Position of the 8-byte z_erofs_map_header in the inode's metadata space:
   * round_up(inode position + inode core size + xattr ibody size, 8). Absolute for ordinary
   * inodes; for inodes in the metabox, the position inside the metabox inode's content (what the
   * kernel passes to erofs_read_metabuf with in_metabox). Compact-index alignment depends on it.
   */
  mapHeaderPos: number;
  /**
   * Bounded read of the inode's metadata space (the one mapHeaderPos refers to): the map
   * header, indexes/extent records and ztailpacking inline pclusters. Throws ErofsError('EIO')
   * when out of range; never short.
   */
  readMeta(pos: number, len: number): Buffer;
}

/** One mapped extent of a compressed file, as CompressedFile.mapExtent reports it. */
export interface ZExtent {
  /** First file offset the extent covers. */
  logical: number;
  /** Decoded length (bytes of the file this extent produces, clamped to EOF). */
  length: number;
  /** 'hole' only in 48-bit extent layouts with plen == 0 (reads as zeros). */
  kind: 'compressed' | 'plain' | 'inline' | 'fragment' | 'hole';
  /** Encoded location: data-space byte address, meta-space for 'inline', packed-inode offset for 'fragment'. */
  physical: number;
  /** Encoded length in bytes (0 for fragment/hole). */
  physicalLength: number;
  /** On-disk algorithm id for compressed extents; -1 plain (shifted), -2 plain interlaced. */
  format: number;
  /** The pcluster decodes to more than this extent (dedupe reference into a larger pcluster). */
  partialRef: boolean;
}

/** Nesting of fragment reads (a packed inode never legitimately has fragments itself). */
let fragmentDepth = 0;
const MAX_FRAGMENT_DEPTH = 2;

/** A compressed regular file (or the packed inode). */
export class CompressedFile {
  readonly size: number;
  private readonly img: ZImageContext;
  private readonly nid: number;
  private readonly bs: number;
  private readonly zmap: ZMap;
  private lastExt: ZMapping | undefined;
  /** The last mapped span pclusters were decoded from (ZImageContext.dataSpan). */
  private span: DataSpan | undefined;
  private readonly hints = new SpanHints();
  private readahead: DataReadahead | undefined;
  private inFragmentRead = false;

  constructor(readonly ctx: CompressedFileContext) {
    this.img = ctx.image;
    this.nid = ctx.nid;
    this.zmap = new ZMap(ctx.image, ctx.nid, ctx.size, ctx.datalayout, ctx.mapHeaderPos, ctx.readMeta);
    this.size = ctx.size;
    this.bs = 1 << this.img.blkszbits;
  }

  /** Exactly min(length, size - offset) bytes (empty at/after EOF). Throws ErofsError('EIO') on corruption. */
  read(offset: number, length: number): Buffer {
    if (this.inFragmentRead) throw zeio(this.nid, 'fragment refers back into its own file (packed inode)');
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new ErofsError('EINVAL', `bad read range ${offset}+${length}`);
    }
    if (offset >= this.size || length === 0) return Buffer.alloc(0);
    const end = Math.min(this.size, offset + length);
    // Fast path: the whole range inside one extent.
    const e = this.extentFor(offset);
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
    if (this.inFragmentRead) throw zeio(this.nid, 'fragment refers back into its own file (packed inode)');
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 ||
        !Number.isSafeInteger(targetOffset) || targetOffset < 0) {
      throw new ErofsError('EINVAL', `bad read range ${offset}+${length}`);
    }
    if (offset >= this.size || length === 0) return 0;
    const end = Math.min(this.size, offset + length);
    if (targetOffset + (end - offset) > target.length) throw new ErofsError('EINVAL', 'target buffer too small');
    const out = Buffer.isBuffer(target) ? target : Buffer.from(target.buffer, target.byteOffset, target.byteLength);
    this.fill(this.extentFor(offset), offset, end, out, targetOffset);
    return end - offset;
  }

  /** The extent containing `offset` (offset < size), for SEEK_DATA/SEEK_HOLE and inspection. */
  mapExtent(offset: number): ZExtent {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset >= this.size) {
      throw new ErofsError('EINVAL', `offset ${offset} outside file of ${this.size} bytes`);
    }
    const e = this.extentFor(offset);
    let kind: ZExtent['kind'];
    if (e.src === ZSRC.HOLE) kind = 'hole';
    else if (e.src === ZSRC.FRAGMENT) kind = 'fragment';
    else if (e.src === ZSRC.META) kind = 'inline';
    else kind = e.fmt >= FMT_SHIFTED ? 'plain' : 'compressed';
    return {
      logical: e.la,
      length: e.llen,
      kind,
      physical: e.pa,
      physicalLength: e.src === ZSRC.FRAGMENT || e.src === ZSRC.HOLE ? 0 : e.plen,
      format: e.fmt === FMT_SHIFTED ? -1 : e.fmt === FMT_INTERLACED ? -2 : e.fmt,
      partialRef: e.partial,
    };
  }

  /** Logical cluster size (undefined when the whole file is a fragment). */
  get lclusterSize(): number | undefined {
    return this.zmap.lclusterSize;
  }

  /** SEEK_DATA / SEEK_HOLE: next data/hole offset at or after `offset`; -1 when none (ENXIO). */
  seek(offset: number, whence: 'data' | 'hole'): number {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset >= this.size) return -1;
    if (!this.zmap.mayHaveHoles) return whence === 'data' ? offset : this.size;
    let cur = offset;
    while (cur < this.size) {
      const e = this.extentFor(cur);
      const hole = e.src === ZSRC.HOLE;
      if (whence === 'data' && !hole) return cur;
      if (whence === 'hole' && hole) return cur;
      cur = e.la + e.llen;
    }
    return whence === 'data' ? -1 : this.size;
  }

  private extentFor(ofs: number): ZMapping {
    const c = this.lastExt;
    if (c && ofs >= c.la && ofs < c.la + c.llen) return c;
    const e = this.zmap.map(ofs);
    this.lastExt = e;
    return e;
  }

  /** Writes file bytes [offset, end) to out[outOff, …), starting with the extent `e` holding offset. */
  private fill(e: ZMapping, offset: number, end: number, out: Buffer, outOff: number): void {
    const streamBig = this.size > this.img.cache.maxBytes / 2;
    let cur = offset;
    for (;;) {
      const n = Math.min(end, e.la + e.llen) - cur;
      const at = outOff + (cur - offset);
      if (e.src === ZSRC.HOLE) out.fill(0, at, at + n);
      else if (e.src === ZSRC.FRAGMENT) this.extentBytes(e, cur, n, false).copy(out, at);
      else if (cur === e.la && n === e.llen) this.decodedInto(e, out, at, !streamBig && worthCaching(e.fmt));
      else this.decoded(e).copy(out, at, cur - e.la, cur - e.la + n);
      cur += n;
      if (cur >= end) break;
      e = this.extentFor(cur);
    }
  }

  /** `n` bytes of file offset `cur` from extent `e` (cur..cur+n within it). */
  private extentBytes(e: ZMapping, cur: number, n: number, fresh: boolean): Buffer {
    if (e.src === ZSRC.HOLE) return Buffer.alloc(n);
    if (e.src === ZSRC.FRAGMENT) {
      // A fragment read that comes back into this same file (the packed inode claiming a
      // fragment of itself) would recurse forever: the kernel refuses it as corruption.
      if (this.inFragmentRead || fragmentDepth >= MAX_FRAGMENT_DEPTH) {
        throw zeio(this.nid, 'fragment refers back into its own file (packed inode)');
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
      if (b.length !== n) throw zeio(this.nid, 'short fragment read');
      // The packed source may hand out views of its own caches: never pass those on.
      return fresh ? Buffer.from(b) : b;
    }
    const d = this.decoded(e);
    const s = d.subarray(cur - e.la, cur - e.la + n);
    return fresh ? Buffer.from(s) : s;
  }

  /** The whole decoded extent, from the cache or decoded into it. */
  private decoded(e: ZMapping): Buffer {
    const key = pclusterKey(this.nid, this.bs, e);
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
  private decodedInto(e: ZMapping, out: Buffer, at: number, keep: boolean): void {
    if (!keep && !worthCaching(e.fmt)) {
      // LZ4 and uncompressed extents decode from the image faster than a cache hit copies:
      // skip the key string and the lookup too.
      this.decode(e, out, at);
      return;
    }
    const key = pclusterKey(this.nid, this.bs, e);
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
  private decode(e: ZMapping, out: Buffer, at: number): void {
    if (e.src === ZSRC.DATA && this.img.dataSpan) {
      let sp = this.span;
      const pa = e.pa;
      const pend = pa + e.plen;
      if (sp === undefined || pa < sp.lo || pend > sp.hi) {
        sp = this.img.dataSpan(pa);
        this.span = sp;
      }
      if (sp !== undefined && pa >= sp.lo && pend <= sp.hi && pa - sp.base + e.plen <= sp.buf.length) {
        this.hints.ahead(sp, pa, pend);
        decodePcluster(this.img, this.nid, e, sp.buf, pa - sp.base, out, at);
        return;
      }
    }
    const raw = e.src === ZSRC.META ? this.ctx.readMeta(e.pa, e.plen) : this.pclusterBytes(e.pa, e.plen);
    if (raw.length !== e.plen) throw zeio(this.nid, 'short pcluster read');
    decodePcluster(this.img, this.nid, e, raw, 0, out, at);
  }

  /** Data-space bytes of one pcluster: a view of the mapping, else through the read-ahead window. */
  private pclusterBytes(pa: number, plen: number): Buffer {
    if (this.img.viewData) {
      const v = this.img.viewData(pa, plen);
      if (v) {
        if (v.length !== plen) throw zeio(this.nid, 'short pcluster view');
        return v;
      }
    }
    this.readahead ??= dataReadahead(this.img, this.img.readData);
    return this.readahead.read(this.nid, pa, plen);
  }
}

/** What the image gives its compressed files. */
export interface CompressedHost {
  readonly sb: Superblock;
  meta(inMetabox: boolean): ByteSource;
  readUnified(addr: number, len: number): Buffer;
  /** A transient no-copy view of the unified data space when it is memory-mapped. */
  viewUnified(addr: number, len: number): Buffer | undefined;
  /** The mapped device bytes around a unified address (see DataSpan). */
  dataSpan(addr: number): DataSpan | undefined;
  packedSource(): ByteSource;
}

const MAX_OPEN_FILES = 1024;

/** The compressed files of one image: its shared context and a bounded set of open files. */
export class CompressedFiles {
  private image?: ZImageContext;
  private readonly files = new Map<number, CompressedFile>();

  constructor(private readonly host: CompressedHost, private readonly cacheBytes: number) {}

  private imageContext(): ZImageContext {
    if (!this.image) {
      const sb = this.host.sb;
      const host = this.host;
      this.image = {
        blkszbits: sb.blockBits,
        featureIncompat: sb.featureIncompat,
        availableAlgorithms: sb.featureIncompat & INCOMPAT.COMPR_CFGS ? sb.availableComprAlgs : 0,
        algorithmConfigs: sb.comprCfgs,
        readData: (addr, len) => host.readUnified(addr, len),
        viewData: (addr, len) => host.viewUnified(addr, len),
        dataSpan: (addr) => host.dataSpan(addr),
        readPacked: (offset, len) => host.packedSource().read(offset, len),
        cache: new PclusterCache(this.cacheBytes),
      };
    }
    return this.image;
  }

  file(ino: Inode): CompressedFile {
    let f = this.files.get(ino.nid);
    if (!f) {
      const src = this.host.meta(ino.inMetabox);
      f = new CompressedFile({
        image: this.imageContext(),
        nid: ino.nid,
        size: ino.size,
        datalayout: ino.datalayout,
        mapHeaderPos: Math.ceil((ino.iloc + ino.isize + ino.xattrIsize) / 8) * 8,
        readMeta: (pos, len) => src.read(pos, len),
      });
      if (this.files.size >= MAX_OPEN_FILES) this.files.clear();
      this.files.set(ino.nid, f);
    }
    return f;
  }

  /** Exactly `length` bytes (already clamped to EOF). */
  read(ino: Inode, offset: number, length: number): Buffer {
    const b = this.file(ino).read(offset, length);
    if (b.length !== length) throw new ErofsError('EIO', `nid ${ino.nid}: compressed read returned ${b.length} of ${length} bytes`);
    return b;
  }

  /** Exactly `length` bytes (already clamped to EOF) into target[targetOffset, …). */
  readInto(ino: Inode, offset: number, length: number, target: Uint8Array, targetOffset: number): void {
    const n = this.file(ino).readInto(offset, length, target, targetOffset);
    if (n !== length) throw new ErofsError('EIO', `nid ${ino.nid}: compressed read returned ${n} of ${length} bytes`);
  }

  /** Lcluster size of a compressed inode (undefined for whole-file fragments and extent records). */
  lclusterSize(ino: Inode): number | undefined {
    return this.file(ino).lclusterSize;
  }

  seek(ino: Inode, offset: number, whence: 'data' | 'hole'): number {
    const r = this.file(ino).seek(offset, whence);
    if (r < 0) throw new ErofsError('ENXIO', 'no data after offset');
    if (!Number.isSafeInteger(r) || r < offset || r > ino.size) throw new ErofsError('EIO', `nid ${ino.nid}: bad seek result ${r}`);
    return r;
  }
}
