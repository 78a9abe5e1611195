// Mapping a file offset of a compressed inode to its extent (kernel fs/erofs/zmap.c,
// erofs-utils lib/zmap.c): the map header, the lookback over lcluster indexes to the extent's
// HEAD (z_erofs_map_blocks_fo), the lookahead to its end (z_erofs_get_extent_decompressedlen),
// the pcluster's encoded length, and the 48-bit extent records (z_erofs_map_blocks_ext).
// The records themselves are decoded by ./zindex.ts; decoding the pcluster is ./pcluster.ts's.
//
// Everything is bounded: index positions are checked against the inode's index area, pcluster
// sizes are capped (1 MiB encoded, 12 MiB decoded, as the kernel), and the lookback and
// lookahead walks stop at the longest extent the kernel accepts. Corruption raises
// ErofsError('EIO'); an unknown algorithm 'EOPNOTSUPP'.
import { ErofsError } from './api.js';
import {
  COMPRESSION_NAMES, DATALAYOUT, INCOMPAT, Z_ADVISE, Z_EXTENT_PLEN_FMT_BIT, Z_EXTENT_PLEN_MASK,
  Z_EXTENT_PLEN_PARTIAL, Z_FRAGMENT_INODE_BIT, Z_LCLUSTER_TYPE, Z_MAP_HEADER_SIZE,
  Z_PCLUSTER_MAX_DSIZE, Z_PCLUSTER_MAX_SIZE,
} from './format.js';
import { LclusterIndex, MetaWindow, newLcluster, resetLcluster, zeio, type Lcluster } from './zindex.js';

/** Where an extent's encoded bytes are (the kernel's map flags, as one value). */
export const ZSRC = {
  /** A pcluster in the data space (block address << blkszbits). */
  DATA: 0,
  /** A ztailpacking pcluster inline in the inode's metadata. */
  META: 1,
  /** Bytes of the packed inode (fragments); `pa` is the packed offset of byte `la`. */
  FRAGMENT: 2,
  /** No data: reads as zeros (48-bit extent records with plen 0). */
  HOLE: 3,
} as const;

/**
 * Formats beyond the on-disk algorithm ids 0..3: an uncompressed pcluster stored shifted (its
 * data starts at the pcluster's first byte) or interlaced (rotated by the extent's in-block
 * offset), the kernel's Z_EROFS_COMPRESSION_SHIFTED / _INTERLACED.
 */
export const FMT_SHIFTED = 4;
export const FMT_INTERLACED = 5;

/** One decoded-extent mapping: file bytes [la, la+llen) come from (src, pa, plen, fmt). */
export interface ZMapping {
  la: number;
  llen: number;
  src: number;
  pa: number;
  plen: number;
  fmt: number;
  /** The pcluster decodes to more than this extent (a dedupe reference into a larger one). */
  partial: boolean;
}

/** What mapping an inode needs to know about the image. */
export interface ZMapImage {
  /** Superblock blkszbits (9..12 in practice). */
  blkszbits: number;
  /** Superblock feature_incompat. */
  featureIncompat: number;
  /** available_compr_algs when COMPR_CFGS is set, else 0 (then only LZ4). */
  availableAlgorithms: number;
}

/** Head of the extent holding an offset, as the lookback finds it. */
interface Head {
  lcn: number;
  type: number;
  la: number;
  pblk: number;
  partialref: boolean;
  compressedblks: number;
  /** nextpackoff of the lcluster holding the looked-up offset (ztailpacking inline data). */
  nextpackoff: number;
}

/** Checkpoint stride of the 4-byte extent records' running physical address. */
const PA_STRIDE = 256;
const TWO32 = 0x1_0000_0000;

/** The extent map of one compressed inode; the map header is read on first use. */
export class ZMap {
  private readonly bs: number;
  private readonly meta: MetaWindow;
  private inited = false;

  // map header facts
  private advise = 0;
  private lcsize = 0;
  private algs: [number, number] = [0, 0];
  /** 48-bit extent records instead of lcluster indexes. */
  extentsMode = false;
  private recsz = 0;
  private nExtents = 0;
  private extPos = 0;
  private allFragment = false;
  private fragment = false;
  private fragmentOff = 0;
  private idataSize = 0;
  private idataOff = 0;
  private tailHeadLcn = 0;
  private index: LclusterIndex | undefined;
  /** recsz == 4 extent layout: running prefix sums of physical starts, every PA_STRIDE records. */
  private paPrefix: number[] = [];

  // scratch records for the lcluster walks (no allocation per extent)
  private readonly recA: Lcluster = newLcluster();
  private readonly recB: Lcluster = newLcluster();
  private readonly head: Head = { lcn: 0, type: 0, la: 0, pblk: 0, partialref: false, compressedblks: 0, nextpackoff: 0 };
  /** The HEAD lcluster that ended the last extent extentEnd() measured (valid when nextHeadValid). */
  private readonly nextHead: Lcluster = newLcluster();
  private nextHeadValid = false;

  constructor(
    private readonly img: ZMapImage,
    readonly nid: number,
    readonly size: number,
    private readonly datalayout: number,
    /** Position of the map header in the inode's metadata space (see CompressedFileContext). */
    private readonly mapHeaderPos: number,
    private readonly readMeta: (pos: number, len: number) => Buffer,
  ) {
    if (!Number.isSafeInteger(size) || size < 0) throw zeio(nid, `bad size ${size}`);
    if (datalayout !== DATALAYOUT.COMPRESSED_FULL && datalayout !== DATALAYOUT.COMPRESSED_COMPACT) {
      throw zeio(nid, `datalayout ${datalayout} is not compressed`);
    }
    const bb = img.blkszbits;
    if (!Number.isInteger(bb) || bb < 9 || bb > 16) throw zeio(nid, `bad blkszbits ${bb}`);
    this.bs = 1 << bb;
    this.meta = new MetaWindow(nid, readMeta);
  }

  /** The extent holding `ofs` (0 <= ofs < size), checked to cover it and to fit the limits. */
  map(ofs: number): ZMapping {
    this.init();
    let e: ZMapping;
    if (this.allFragment) {
      e = { la: 0, llen: this.size, src: ZSRC.FRAGMENT, pa: this.fragmentOff, plen: 0, fmt: 0, partial: false };
    } else if (this.extentsMode) {
      e = this.mapExtentRecord(ofs);
    } else {
      e = this.mapLclusters(ofs);
    }
    if (!(e.llen > 0 && e.la <= ofs && ofs < e.la + e.llen && e.la + e.llen <= this.size)) {
      throw zeio(this.nid, `bad extent [${e.la}, +${e.llen}) for offset ${ofs}`);
    }
    if (e.src !== ZSRC.FRAGMENT && e.src !== ZSRC.HOLE && e.llen > Z_PCLUSTER_MAX_DSIZE) {
      throw zeio(this.nid, `extent of ${e.llen} bytes exceeds the maximum`);
    }
    return e;
  }

  /** Logical cluster size from the map header (undefined when the whole file is a fragment). */
  get lclusterSize(): number | undefined {
    this.init();
    return this.allFragment ? undefined : this.lcsize;
  }

  /** Whether the map can contain holes (only 48-bit extent records can). */
  get mayHaveHoles(): boolean {
    this.init();
    return this.extentsMode;
  }

  // ---------------------------------------------------------------- map header

  private init(): void {
    if (this.inited) return;
    const h = this.readMeta(this.mapHeaderPos, Z_MAP_HEADER_SIZE);
    if (h.length < Z_MAP_HEADER_SIZE) throw zeio(this.nid, 'short map header');
    const clusterbits = h[7]!;
    if (clusterbits & Z_FRAGMENT_INODE_BIT) {
      // The whole file lives in the packed inode; the other 63 bits are the fragment offset.
      const lo = h.readUInt32LE(0);
      const hi = h.readUInt32LE(4) & 0x7fffffff;
      const off = hi * TWO32 + lo;
      if (!Number.isSafeInteger(off) || off + this.size > Number.MAX_SAFE_INTEGER) {
        throw zeio(this.nid, 'fragment offset out of range');
      }
      this.allFragment = true;
      this.fragment = true;
      this.fragmentOff = off;
      this.tailHeadLcn = 0;
      this.inited = true;
      return;
    }
    this.advise = h.readUInt16LE(4);
    const lclusterbits = this.img.blkszbits + (clusterbits & 15);
    this.lcsize = 2 ** lclusterbits;
    const full = this.datalayout === DATALAYOUT.COMPRESSED_FULL;
    if (full && this.advise & Z_ADVISE.EXTENTS) {
      this.extentsMode = true;
      this.recsz = 4 << ((this.advise >> 1) & 3);
      this.extPos = roundUp(this.mapHeaderPos + Z_MAP_HEADER_SIZE, this.recsz);
      this.fragment = (this.advise & Z_ADVISE.FRAGMENT_PCLUSTER) !== 0;
      if (this.recsz <= 8) {
        this.nExtents = Math.ceil(this.size / this.lcsize);
        this.meta.end = this.extPos + (this.recsz === 4 ? 8 : 0) + this.recsz * this.nExtents;
      } else {
        this.nExtents = h.readUInt32LE(0) + h.readUInt16LE(6) * TWO32;
        this.meta.end = this.extPos + this.recsz * this.nExtents;
      }
      if (!Number.isSafeInteger(this.meta.end)) throw zeio(this.nid, 'extent table out of range');
      this.inited = true;
      return;
    }
    this.algs = [h[6]! & 15, h[6]! >> 4];
    if (this.algs[0] >= COMPRESSION_NAMES.length || this.algs[1] >= COMPRESSION_NAMES.length) {
      throw new ErofsError('EOPNOTSUPP', `compressed inode ${this.nid}: unknown algorithm types 0x${h[6]!.toString(16)}`);
    }
    if (this.advise & (Z_ADVISE.BIG_PCLUSTER_1 | Z_ADVISE.BIG_PCLUSTER_2) && !(this.img.featureIncompat & INCOMPAT.BIG_PCLUSTER)) {
      throw zeio(this.nid, 'per-inode big pcluster without the superblock feature');
    }
    if (this.advise & Z_ADVISE.FRAGMENT_PCLUSTER) {
      this.fragment = true;
      this.fragmentOff = h.readUInt32LE(0);
    } else if (this.advise & Z_ADVISE.INLINE_PCLUSTER) {
      this.idataSize = h.readUInt16LE(2);
    }
    this.index = new LclusterIndex(this.nid, this.datalayout, this.mapHeaderPos, lclusterbits, this.advise,
      this.img.blkszbits, this.size, this.meta);
    if (this.size > 0 && (this.idataSize > 0 || this.fragment)) {
      // EROFS_GET_BLOCKS_FINDTAIL: locate the tail extent's head lcluster.
      const t = this.locateHead(this.size - 1);
      this.tailHeadLcn = t.lcn;
      if (this.idataSize > 0) this.idataOff = t.nextpackoff;
      if (this.fragment && full) {
        this.fragmentOff += t.pblk * TWO32;
        if (!Number.isSafeInteger(this.fragmentOff + this.size)) throw zeio(this.nid, 'fragment offset out of range');
      }
    }
    this.inited = true;
  }

  private checkAlg(fmt: number): void {
    if (fmt >= COMPRESSION_NAMES.length) throw new ErofsError('EOPNOTSUPP', `unknown compression algorithm ${fmt} (nid ${this.nid})`);
    const avail = this.img.availableAlgorithms || 1;
    if (!(avail & (1 << fmt))) throw zeio(this.nid, `algorithm ${fmt} not declared by the superblock`);
  }

  // ---------------------------------------------------------------- lcluster-index mapping

  private headResult(lcn: number, m: Lcluster, compressedblks: number, nextpackoff: number): Head {
    const h = this.head;
    h.lcn = lcn;
    h.type = m.type;
    h.la = lcn * this.lcsize + m.clusterofs;
    h.pblk = m.pblk;
    h.partialref = m.partialref;
    h.compressedblks = compressedblks;
    h.nextpackoff = nextpackoff;
    return h;
  }

  /**
   * The HEAD lcluster of the extent holding file offset `ofs` (z_erofs_map_blocks_fo's
   * lookback). The result is a scratch object, valid until the next call.
   */
  private locateHead(ofs: number): Head {
    const index = this.index!;
    const L = this.lcsize;
    const initial = Math.floor(ofs / L);
    const endoff = ofs - initial * L;
    const nh = this.nextHead;
    if (this.nextHeadValid && nh.lcn === initial && endoff >= nh.clusterofs) {
      // The head lcluster extentEnd() stopped at for the previous extent: the same record a
      // fresh load gives (heads carry no delta1, and compressedblks is 0 on a direct hit).
      return this.headResult(initial, nh, 0, nh.nextpackoff);
    }
    const m = resetLcluster(this.recA);
    index.load(m, initial, false);
    const nextpackoff = m.nextpackoff;
    if (m.type !== Z_LCLUSTER_TYPE.NONHEAD && endoff >= m.clusterofs) {
      return this.headResult(initial, m, m.compressedblks, nextpackoff);
    }
    let dist: number;
    if (m.type !== Z_LCLUSTER_TYPE.NONHEAD) {
      if (initial === 0) throw zeio(this.nid, 'invalid logical cluster 0');
      dist = 1;
    } else {
      dist = m.delta0;
    }
    let lcn = initial;
    // An extent never decodes to more than Z_PCLUSTER_MAX_DSIZE (the kernel refuses longer
    // ones), so its head cannot lie further back: bounds the walk on corrupt deltas.
    const maxBack = Math.ceil(Z_PCLUSTER_MAX_DSIZE / L) + 1;
    while (dist > 0 && lcn >= dist && initial - (lcn - dist) <= maxBack) {
      lcn -= dist;
      index.load(m, lcn, false);
      if (m.type === Z_LCLUSTER_TYPE.NONHEAD) {
        dist = m.delta0;
        continue;
      }
      return this.headResult(lcn, m, m.compressedblks, nextpackoff);
    }
    throw zeio(this.nid, `bogus lookback distance ${dist} @ lcn ${lcn}`);
  }

  /** Encoded pcluster length in bytes (z_erofs_get_extent_compressedlen). */
  private compressedLen(h: Head): number {
    const big1 = (this.advise & Z_ADVISE.BIG_PCLUSTER_1) !== 0;
    const big2 = (this.advise & Z_ADVISE.BIG_PCLUSTER_2) !== 0;
    const lcn = h.lcn + 1;
    let cblks = h.compressedblks;
    if (
      (h.type === Z_LCLUSTER_TYPE.HEAD1 && !big1) ||
      ((h.type === Z_LCLUSTER_TYPE.PLAIN || h.type === Z_LCLUSTER_TYPE.HEAD2) && !big2) ||
      lcn * this.lcsize >= this.size
    ) {
      cblks = 1;
    }
    if (!cblks) {
      const m = resetLcluster(this.recB);
      this.index!.load(m, lcn, false);
      if (m.type === Z_LCLUSTER_TYPE.NONHEAD && m.delta0 !== 1) throw zeio(this.nid, `bogus CBLKCNT @ lcn ${lcn}`);
      cblks = m.type !== Z_LCLUSTER_TYPE.NONHEAD || !m.compressedblks ? 1 : m.compressedblks;
    }
    const plen = cblks * this.bs;
    if (plen > Z_PCLUSTER_MAX_SIZE) throw zeio(this.nid, `pcluster of ${plen} bytes exceeds the maximum`);
    return plen;
  }

  /**
   * End (exclusive file offset) of the extent whose head is `h` (the lookahead). The HEAD
   * lcluster that ends it is kept in this.nextHead: a sequential read looks that lcluster up
   * next, and locateHead() then need not load it again.
   */
  private extentEnd(h: Head): number {
    const L = this.lcsize;
    const headLcn = h.lcn;
    this.nextHeadValid = false;
    if (headLcn * L >= this.size) return this.size;
    // The head lcluster itself was loaded (and checked) by locateHead: step past it.
    const m = resetLcluster(this.nextHead);
    let lcn = headLcn + 1;
    for (;;) {
      if (lcn * L >= this.size) return this.size;
      if ((lcn - headLcn) * L > Z_PCLUSTER_MAX_DSIZE + L) throw zeio(this.nid, 'extent too long');
      this.index!.load(m, lcn, true);
      if (m.type !== Z_LCLUSTER_TYPE.NONHEAD) {
        this.nextHeadValid = true;
        return Math.min(this.size, lcn * L + m.clusterofs);
      }
      lcn += m.delta1 || 1;
    }
  }

  private mapLclusters(ofs: number): ZMapping {
    if (this.fragment && this.tailHeadLcn === 0) {
      return { la: 0, llen: this.size, src: ZSRC.FRAGMENT, pa: this.fragmentOff, plen: 0, fmt: 0, partial: false };
    }
    const h = this.locateHead(ofs);
    const tail = h.lcn === this.tailHeadLcn;
    let fmt: number;
    if (h.type === Z_LCLUSTER_TYPE.PLAIN) {
      fmt = this.advise & Z_ADVISE.INTERLACED_PCLUSTER ? FMT_INTERLACED : FMT_SHIFTED;
    } else {
      fmt = h.type === Z_LCLUSTER_TYPE.HEAD2 ? this.algs[1] : this.algs[0];
      this.checkAlg(fmt);
    }
    if (this.idataSize > 0 && tail) {
      const pa = this.idataOff;
      const plen = this.idataSize;
      if ((pa % this.bs) + plen > this.bs) throw zeio(this.nid, `invalid tail-packing pclustersize ${plen}`);
      return { la: h.la, llen: this.size - h.la, src: ZSRC.META, pa, plen, fmt, partial: h.partialref };
    }
    if (this.fragment && tail) {
      return { la: h.la, llen: this.size - h.la, src: ZSRC.FRAGMENT, pa: this.fragmentOff, plen: 0, fmt: 0, partial: false };
    }
    const pa = h.pblk * this.bs;
    const plen = this.compressedLen(h);
    const end = this.extentEnd(h);
    return { la: h.la, llen: end - h.la, src: ZSRC.DATA, pa, plen, fmt, partial: h.partialref };
  }

  // ---------------------------------------------------------------- 48-bit extent records

  /**
   * Physical start of record k = pstart + sum(plen_i & MASK, i < k). Checkpoints every
   * PA_STRIDE records keep memory at nExtents / PA_STRIDE numbers and each lookup at most
   * PA_STRIDE additions once the checkpoints up to k exist.
   */
  private prefixPa(k: number): number {
    const base = this.extPos + 8;
    const cp = this.paPrefix;
    if (cp.length === 0) {
      const b = this.meta.read(this.extPos, 8);
      const o = this.meta.off;
      const v = b.readUInt32LE(o) + b.readUInt32LE(o + 4) * TWO32;
      if (!Number.isSafeInteger(v)) throw zeio(this.nid, 'extent pstart out of range');
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
    const b = this.meta.read(pos, count * 4);
    const o = this.meta.off;
    let sum = 0;
    for (let i = 0; i < count; i++) sum += b.readUInt32LE(o + i * 4) & Z_EXTENT_PLEN_MASK;
    return sum;
  }

  private mapExtentRecord(ofs: number): ZMapping {
    const recsz = this.recsz;
    let lstart: number;
    let lend: number;
    let plenRaw: number;
    let pa: number;
    let last: boolean;
    if (recsz <= 8) {
      // One record per lcluster: 4-byte records hold plen only, 8-byte ones plen and pstart_lo.
      const L = this.lcsize;
      const k = Math.floor(ofs / L);
      if (k >= this.nExtents) throw zeio(this.nid, `offset ${ofs} beyond extents`);
      if (recsz === 4) {
        pa = this.prefixPa(k);
        const b = this.meta.read(this.extPos + 8 + k * 4, 4);
        plenRaw = b.readUInt32LE(this.meta.off);
      } else {
        const b = this.meta.read(this.extPos + k * 8, 8);
        const o = this.meta.off;
        plenRaw = b.readUInt32LE(o);
        pa = b.readUInt32LE(o + 4);
      }
      lstart = k * L;
      lend = Math.min((k + 1) * L, this.size);
      last = k === this.nExtents - 1;
    } else {
      // Sorted 16/32-byte records with their own logical start: binary search.
      const n = this.nExtents;
      const rec = (i: number): [number, number, number] => {
        const b = this.meta.read(this.extPos + i * recsz, recsz);
        const o = this.meta.off;
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
        if (lend > this.size) throw zeio(this.nid, 'extent start beyond EOF');
      } else {
        lend = this.size;
      }
      if (idx < 0) {
        if (lend <= ofs) throw zeio(this.nid, 'unsorted extent records');
        return { la: ofs, llen: lend - ofs, src: ZSRC.HOLE, pa: 0, plen: 0, fmt: 0, partial: false };
      }
      [lstart, pa, plenRaw] = rec(idx);
      last = idx === n - 1;
    }
    if (!(lstart <= ofs && ofs < lend)) throw zeio(this.nid, `extent records do not cover offset ${ofs}`);
    if (!Number.isSafeInteger(pa)) throw zeio(this.nid, 'extent address out of range');
    if (last && this.fragment) {
      let off = plenRaw;
      if (recsz > 4) off += pa * TWO32;
      if (!Number.isSafeInteger(off + this.size)) throw zeio(this.nid, 'fragment offset out of range');
      return { la: lstart, llen: lend - lstart, src: ZSRC.FRAGMENT, pa: off, plen: 0, fmt: 0, partial: false };
    }
    if (!plenRaw) return { la: lstart, llen: lend - lstart, src: ZSRC.HOLE, pa: 0, plen: 0, fmt: 0, partial: false };
    const plen = plenRaw & Z_EXTENT_PLEN_MASK;
    if (!plen || plen > Z_PCLUSTER_MAX_SIZE) throw zeio(this.nid, `bad pcluster size ${plen}`);
    const f = plenRaw >>> Z_EXTENT_PLEN_FMT_BIT;
    let fmt: number;
    if (f) {
      fmt = f - 1;
      this.checkAlg(fmt);
    } else if (this.advise & Z_ADVISE.INTERLACED_PCLUSTER && pa % this.bs === 0) {
      fmt = FMT_INTERLACED;
    } else {
      fmt = FMT_SHIFTED;
    }
    return {
      la: lstart,
      llen: lend - lstart,
      src: ZSRC.DATA,
      pa,
      plen,
      fmt,
      partial: (plenRaw & Z_EXTENT_PLEN_PARTIAL) !== 0,
    };
  }
}

function roundUp(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}
