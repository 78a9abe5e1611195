// Lcluster indexes of compressed inodes (erofs_fs.h: struct z_erofs_lcluster_index and the
// compact 4B/2B packs; kernel fs/erofs/zmap.c z_erofs_load_{full,compact}_lcluster):
// decoding one logical cluster's record, and the bounded window over the index area it is read
// through. Which records make an extent is ./zmap.ts's business.
import { ErofsError } from './api.js';
import {
  DATALAYOUT, Z_ADVISE, Z_FULL_INDEX_SIZE, Z_FULL_INDEXES_OFFSET, Z_LCLUSTER_TYPE, Z_LI_D0_CBLKCNT,
  Z_LI_PARTIAL_REF, Z_MAP_HEADER_SIZE,
} from './format.js';

/** Bytes of index area read per window (sequential lookups stay inside one). */
const META_WINDOW = 4096;

export function zeio(nid: number, what: string): ErofsError {
  return new ErofsError('EIO', `compressed inode ${nid}: ${what}`);
}

/**
 * Reads of an inode's index/extent area through two cached windows. `read(pos, len)` returns a
 * buffer whose bytes [this.off, this.off + len) are the metadata bytes at pos (an out-parameter
 * rather than a tuple: this runs several times per extent on sequential reads). Every access is
 * checked against the area's end, so a corrupt count or offset cannot read past it.
 */
export class MetaWindow {
  /** Offset in the buffer the last read() returned. */
  off = 0;
  /** Exclusive end of the index area in the metadata space. */
  end = 0;
  private win0: { start: number; buf: Buffer } | undefined;
  private win1: { start: number; buf: Buffer } | undefined;

  constructor(private readonly nid: number, private readonly readMeta: (pos: number, len: number) => Buffer) {}

  read(pos: number, len: number): Buffer {
    if (pos < 0 || pos + len > this.end) throw zeio(this.nid, `index access ${pos}+${len} beyond index area`);
    const w0 = this.win0;
    if (w0 && pos >= w0.start && pos + len <= w0.start + w0.buf.length) {
      this.off = pos - w0.start;
      return w0.buf;
    }
    const w1 = this.win1;
    if (w1 && pos >= w1.start && pos + len <= w1.start + w1.buf.length) {
      this.win1 = w0;
      this.win0 = w1;
      this.off = pos - w1.start;
      return w1.buf;
    }
    const ws = pos - (pos % META_WINDOW);
    const we = Math.min(ws + META_WINDOW, this.end);
    let w: { start: number; buf: Buffer };
    if (pos + len <= we) {
      const buf = this.readMeta(ws, we - ws);
      if (buf.length !== we - ws) throw zeio(this.nid, 'short metadata read');
      w = { start: ws, buf };
    } else {
      const buf = this.readMeta(pos, len);
      if (buf.length !== len) throw zeio(this.nid, 'short metadata read');
      w = { start: pos, buf };
    }
    this.win1 = this.win0;
    this.win0 = w;
    this.off = pos - w.start;
    return w.buf;
  }
}

/** One decoded lcluster record (the kernel's z_erofs_maprecorder). */
export interface Lcluster {
  lcn: number;
  type: number;
  clusterofs: number;
  delta0: number;
  delta1: number;
  pblk: number;
  compressedblks: number;
  partialref: boolean;
  /** End of the pack/record holding it (ztailpacking inline data follows the last one). */
  nextpackoff: number;
}

export function newLcluster(): Lcluster {
  return { lcn: 0, type: 0, clusterofs: 0, delta0: 0, delta1: 0, pblk: 0, compressedblks: 0, partialref: false, nextpackoff: 0 };
}

/** Zeroes a scratch record, so no field of an earlier load leaks into the next. */
export function resetLcluster(m: Lcluster): Lcluster {
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

/** The lcluster index array of one COMPRESSED_FULL or COMPRESSED_COMPACT inode. */
export class LclusterIndex {
  readonly compact: boolean;
  readonly lcsize: number;
  /** Number of index entries (lclusters for full indexes, blocks for compact ones). */
  readonly count: number;
  // compact layout: 4-byte packs up to `initial`, then c2b entries in 2-byte packs, then 4-byte
  private readonly ebase: number;
  private readonly initial: number;
  private readonly c2b: number;
  /** Amortized shift of the entry compactPos() located last (2 = 4-byte packs, 1 = 2-byte). */
  private shift = 2;

  constructor(
    private readonly nid: number,
    datalayout: number,
    private readonly mapHeaderPos: number,
    /** log2 of the lcluster size. */
    private readonly lclusterbits: number,
    private readonly advise: number,
    blockBits: number,
    size: number,
    private readonly meta: MetaWindow,
  ) {
    this.compact = datalayout === DATALAYOUT.COMPRESSED_COMPACT;
    this.lcsize = 2 ** lclusterbits;
    this.ebase = mapHeaderPos + Z_MAP_HEADER_SIZE;
    if (this.compact) {
      const b1 = (advise & Z_ADVISE.BIG_PCLUSTER_1) !== 0;
      const b2 = (advise & Z_ADVISE.BIG_PCLUSTER_2) !== 0;
      if (b1 !== b2) throw zeio(nid, 'big pcluster head1/2 of compact indexes inconsistent');
      if (lclusterbits > 14) throw zeio(nid, `compact indexes with lclusterbits ${lclusterbits}`);
      this.count = Math.ceil(size / 2 ** blockBits);
      this.initial = ((32 - (this.ebase % 32)) / 4) & 7;
      this.c2b = advise & Z_ADVISE.COMPACTED_2B && this.initial < this.count
        ? Math.floor((this.count - this.initial) / 16) * 16
        : 0;
      meta.end = this.count > 0 ? this.compactPackEnd(this.count - 1) : this.ebase;
    } else {
      if (lclusterbits > 30) throw zeio(nid, `lclusterbits ${lclusterbits} too large`);
      this.count = Math.ceil(size / this.lcsize);
      this.initial = 0;
      this.c2b = 0;
      meta.end = mapHeaderPos + Z_FULL_INDEXES_OFFSET + Z_FULL_INDEX_SIZE * this.count;
    }
  }

  /** Decodes lcluster `lcn` into m; `lookahead` also computes delta1 for compact NONHEADs. */
  load(m: Lcluster, lcn: number, lookahead: boolean): void {
    if (lcn < 0 || lcn >= this.count) throw zeio(this.nid, `lcn ${lcn} out of range`);
    if (this.compact) this.loadCompact(m, lcn, lookahead);
    else this.loadFull(m, lcn);
    if (m.type !== Z_LCLUSTER_TYPE.NONHEAD && m.clusterofs >= this.lcsize) {
      throw zeio(this.nid, `clusterofs ${m.clusterofs} beyond lcluster @ lcn ${lcn}`);
    }
  }

  private loadFull(m: Lcluster, lcn: number): void {
    const pos = this.mapHeaderPos + Z_FULL_INDEXES_OFFSET + lcn * Z_FULL_INDEX_SIZE;
    const b = this.meta.read(pos, Z_FULL_INDEX_SIZE);
    const o = this.meta.off;
    m.lcn = lcn;
    m.nextpackoff = pos + Z_FULL_INDEX_SIZE;
    const advise = b.readUInt16LE(o);
    m.type = advise & 3;
    if (m.type === Z_LCLUSTER_TYPE.NONHEAD) {
      m.clusterofs = this.lcsize;
      m.delta0 = b.readUInt16LE(o + 4);
      if (m.delta0 & Z_LI_D0_CBLKCNT) {
        if (!(this.advise & (Z_ADVISE.BIG_PCLUSTER_1 | Z_ADVISE.BIG_PCLUSTER_2))) {
          throw zeio(this.nid, `CBLKCNT without big pcluster @ lcn ${lcn}`);
        }
        m.compressedblks = m.delta0 & ~Z_LI_D0_CBLKCNT;
        m.delta0 = 1;
      }
      m.delta1 = b.readUInt16LE(o + 6);
    } else {
      m.partialref = (advise & Z_LI_PARTIAL_REF) !== 0;
      m.clusterofs = b.readUInt16LE(o + 2);
      m.pblk = b.readUInt32LE(o + 4);
    }
  }

  /** Byte position of compact entry `lcn`; its pack's shift goes to this.shift. */
  private compactPos(lcn: number): number {
    let pos = this.ebase;
    let shift = 2;
    let l = lcn;
    if (l >= this.initial) {
      pos += this.initial * 4;
      l -= this.initial;
      if (l < this.c2b) shift = 1;
      else {
        pos += this.c2b * 2;
        l -= this.c2b;
      }
    }
    this.shift = shift;
    return pos + l * (1 << shift);
  }

  private compactPackEnd(lcn: number): number {
    const pos = this.compactPos(lcn);
    const packBytes = (this.shift === 2 ? 2 : 16) << this.shift;
    return pos - (pos % packBytes) + packBytes;
  }

  private loadCompact(m: Lcluster, lcn: number, lookahead: boolean): void {
    const lclusterbits = this.lclusterbits;
    const pos = this.compactPos(lcn);
    const shift = this.shift;
    let vcnt: number;
    if (shift === 2) vcnt = 2;
    else if (lclusterbits <= 12) vcnt = 16;
    else throw new ErofsError('EOPNOTSUPP', `compact 2B indexes with lclusterbits ${lclusterbits}`);
    const packBytes = vcnt << shift;
    const packStart = pos - (pos % packBytes);
    const b = this.meta.read(packStart, packBytes);
    const base = this.meta.off;
    m.lcn = lcn;
    m.nextpackoff = packStart + packBytes;
    const lobits = lclusterbits > 12 ? lclusterbits : 12;
    const lomask = (1 << lobits) - 1;
    const encodebits = ((packBytes - 4) * 8) / vcnt;
    let i = (pos - packStart) >> shift;
    // Entry i of the pack: lo = v & lomask, type = (v >>> lobits) & 3 (see packEntry).
    let v = packEntry(b, base, encodebits, i);
    let lo = v & lomask;
    let type = (v >>> lobits) & 3;
    m.type = type;
    if (type === Z_LCLUSTER_TYPE.NONHEAD) {
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
          if (((v2 >>> lobits) & 3) !== Z_LCLUSTER_TYPE.NONHEAD) {
            found = true;
            break;
          }
          ++d1;
        } while (++j < vcnt);
        if (!found && !(lj & Z_LI_D0_CBLKCNT)) d1 += lj - 1;
        m.delta1 = d1;
      }
      if (lo & Z_LI_D0_CBLKCNT) {
        if (!(this.advise & Z_ADVISE.BIG_PCLUSTER_1)) throw zeio(this.nid, `CBLKCNT without big pcluster @ lcn ${lcn}`);
        m.compressedblks = lo & ~Z_LI_D0_CBLKCNT;
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
      if (type !== Z_LCLUSTER_TYPE.NONHEAD) lo = 0;
      else if (lo & Z_LI_D0_CBLKCNT) lo = 1;
      m.delta0 = lo + 1;
      return;
    }
    m.clusterofs = lo;
    m.delta0 = 0;
    // The pack stores the block address of its first pcluster; count the pclusters before i.
    let nblk: number;
    if (!(this.advise & Z_ADVISE.BIG_PCLUSTER_1)) {
      nblk = 1;
      while (i > 0) {
        --i;
        const v2 = packEntry(b, base, encodebits, i);
        if (((v2 >>> lobits) & 3) === Z_LCLUSTER_TYPE.NONHEAD) i -= v2 & lomask;
        if (i >= 0) ++nblk;
      }
    } else {
      nblk = 0;
      while (i > 0) {
        --i;
        const v2 = packEntry(b, base, encodebits, i);
        if (((v2 >>> lobits) & 3) === Z_LCLUSTER_TYPE.NONHEAD) {
          const l2 = v2 & lomask;
          if (l2 & Z_LI_D0_CBLKCNT) {
            --i;
            nblk += l2 & ~Z_LI_D0_CBLKCNT;
            continue;
          }
          if (l2 <= 1) throw zeio(this.nid, `bogus delta ${l2} in big pcluster pack @ lcn ${lcn}`);
          i -= l2 - 2;
          continue;
        }
        ++nblk;
      }
    }
    m.pblk = readU32(b, base + packBytes - 4) + nblk;
  }
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
