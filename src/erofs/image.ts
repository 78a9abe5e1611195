// An opened EROFS image: ties the superblock, inodes, directories, xattrs and data layouts
// together behind the ErofsReader interface.
import { ErofsError } from './api.js';
import type {
  DataExtent, DirEntry, ErofsImageReader, InodeAttr, InodeLayout, OpenOptions, PlainExtent, SuperblockDetails,
  SuperblockSummary, Xattr,
} from './api.js';
import { CachedSource, Device, LruCache, PAGE_SIZE, devicePageLoader } from './io.js';
import type { ByteSource } from './io.js';
import { details, parseSuperblock, summarize } from './superblock.js';
import type { Superblock } from './superblock.js';
import { isCompressedLayout, parseInode } from './inode.js';
import type { Inode } from './inode.js';
import { mapDevice, mapRange, readUncompressed, readUncompressedInto } from './data.js';
import type { DataContext } from './data.js';
import { lookup as dirLookup, readdir as dirReaddir } from './dir.js';
import type { DirSource } from './dir.js';
import { getPrefixedXattr, getXattr, listXattrs, loadPrefixes } from './xattr.js';
import type { LongPrefix, XattrContext } from './xattr.js';
import { COMPAT, COMPRESSION_NAMES, DATALAYOUT, INCOMPAT, SUPER_OFFSET, XATTR_IBODY_HEADER_SIZE, nidInMetabox } from './format.js';
import { CompressedFiles } from './zdata.js';
import type { DataSpan } from './readahead.js';

const DEFAULT_CACHE_BYTES = 64 * 1024 * 1024;
const INODE_CACHE_MAX = 65536;
/** Largest single read() we serve in one buffer. */
const MAX_READ = 256 * 1024 * 1024;
/** Symlink targets longer than this are cut, as the kernel's page_get_link does. */
const MAX_LINK = 4095;

/** dataSpan windows: 2 MiB from the address rounded down to 256 KiB (holds any pcluster, ≤ 1 MiB). */
const SPAN_WINDOW = 2 * 1024 * 1024;
const SPAN_ALIGN = 256 * 1024;

export class ErofsImage implements ErofsImageReader, DataContext, XattrContext {
  readonly sb: Superblock;
  readonly superblock: SuperblockSummary;
  readonly details: SuperblockDetails;
  readonly rootNid: number;
  private readonly primary: Device;
  private readonly extra: (Device | undefined)[];
  private readonly primaryMeta: CachedSource;
  private metabox?: CachedSource;
  private metaboxInode?: Inode;
  private readonly inodes = new Map<number, Inode>();
  /** Directory blocks by "nid:block" (directory data may be compressed: worth keeping). */
  private dirBlocks!: LruCache<string>;
  private prefixTable?: LongPrefix[];
  private loadingPrefixes = false;
  private readonly z: CompressedFiles;
  private metaboxCacheBytes = 0;
  private closed = false;
  /** getXattr uses the inodes' name filters (present, not disabled by the superblock or the caller). */
  readonly xattrFilter: boolean;

  constructor(readonly path: string, opts: OpenOptions = {}) {
    const cacheBytes = Math.max(1024 * 1024, opts.cacheBytes ?? DEFAULT_CACHE_BYTES);
    const mmap = typeof opts.mmap === 'object' ? opts.mmap : undefined;
    this.primary = new Device(path, 0, mmap);
    this.extra = [];
    try {
      const metaCache = new LruCache<number>(Math.floor(cacheBytes / 8));
      this.primaryMeta = new CachedSource(this.primary.size, devicePageLoader(this.primary), metaCache, 'image');
      const headLen = Math.min(this.primary.size, SUPER_OFFSET + PAGE_SIZE);
      const head = this.primary.read(0, headLen);
      this.sb = parseSuperblock(head, (pos, len) => this.primaryMeta.read(pos, len));
      const given = opts.devices ?? [];
      if (given.length && given.length !== this.sb.extraDevices) {
        throw new ErofsError('EINVAL', `image has ${this.sb.extraDevices} extra device(s), ${given.length} given`);
      }
      for (let i = 0; i < given.length; i++) this.extra.push(new Device(given[i]!, i + 1, mmap));
      this.z = new CompressedFiles(this, cacheBytes - Math.floor(cacheBytes / 4));
      this.metaboxCacheBytes = Math.floor(cacheBytes / 16);
      this.dirBlocks = new LruCache<string>(Math.floor(cacheBytes / 16));
      this.superblock = summarize(this.sb);
      this.details = details(this.sb);
      // A nonzero xattr_filter_reserved means a changed filter format: the kernel ignores it.
      this.xattrFilter = opts.xattrNameFilter !== false && (this.sb.featureCompat & COMPAT.XATTR_FILTER) !== 0 &&
        this.sb.xattrFilterReserved === 0;
      this.rootNid = this.sb.rootNid;
      const root = this.inode(this.rootNid);
      if (root.type !== 'dir') throw new ErofsError('EIO', 'root inode is not a directory');
    } catch (e) {
      this.close();
      throw e;
    }
  }

  // ---- contexts for the format modules ----

  meta(inMetabox: boolean): ByteSource {
    if (!inMetabox) return this.primaryMeta;
    if (!this.sb.hasMetabox) throw new ErofsError('EIO', 'metabox nid in an image without a metabox');
    if (!this.metabox) {
      const mb = parseInode(this.sb, this.primaryMeta, this.sb.metaboxNid);
      if (mb.type !== 'file') throw new ErofsError('EIO', 'metabox inode is not a regular file');
      this.metaboxInode = mb;
      this.metabox = new CachedSource(mb.size, (idx) => {
        const pos = idx * PAGE_SIZE;
        return this.readInodeData(mb, pos, Math.min(PAGE_SIZE, mb.size - pos));
      }, new LruCache<number>(this.metaboxCacheBytes), 'metabox');
    }
    return this.metabox;
  }

  device(id: number): Device {
    if (this.closed) throw new ErofsError('EIO', 'image closed');
    if (id === 0) return this.primary;
    const d = this.extra[id - 1];
    if (!d) throw new ErofsError('EIO', `extra device ${id} was not supplied`);
    return d;
  }

  prefixes(): LongPrefix[] {
    if (this.prefixTable) return this.prefixTable;
    if (this.loadingPrefixes) throw new ErofsError('EIO', 'long xattr prefix table refers to itself');
    this.loadingPrefixes = true;
    try {
      let src: ByteSource = this.primaryMeta;
      if (this.sb.xattrPrefixCount && !(this.sb.featureCompat & COMPAT.PLAIN_XATTR_PFX)) {
        if (this.sb.hasMetabox) src = this.meta(true);
        else if ((this.sb.featureIncompat & INCOMPAT.FRAGMENTS) && this.sb.packedNid) src = this.packedSource();
      }
      this.prefixTable = loadPrefixes(this.sb, src);
    } finally {
      this.loadingPrefixes = false;
    }
    return this.prefixTable;
  }

  private packedSrc?: ByteSource;
  private inPacked = false;
  packedSource(): ByteSource {
    if (!this.packedSrc) {
      if (!this.sb.packedNid) throw new ErofsError('EIO', 'no packed inode');
      const ino = this.inode(this.sb.packedNid);
      if (ino.type !== 'file') throw new ErofsError('EIO', 'packed inode is not a regular file');
      this.packedSrc = {
        size: ino.size,
        read: (pos: number, len: number) => {
          if (pos < 0 || len < 0 || pos + len > ino.size) throw new ErofsError('EIO', `packed inode: ${len} bytes at ${pos} out of range`);
          // A fragment inside the packed inode itself would recurse forever.
          if (this.inPacked) throw new ErofsError('EIO', 'packed inode refers to itself');
          this.inPacked = true;
          try {
            return this.readInodeData(ino, pos, len);
          } finally {
            this.inPacked = false;
          }
        },
      };
    }
    return this.packedSrc;
  }

  /** Bytes of the unified data address space (device resolved through the device table). */
  readUnified(addr: number, len: number): Buffer {
    const m = mapDevice(this, 0, addr);
    return this.device(m.device).read(m.physical, len);
  }

  viewUnified(addr: number, len: number): Buffer | undefined {
    const m = mapDevice(this, 0, addr);
    return this.device(m.device).view(m.physical, len);
  }

  /**
   * A mapped window of device bytes around unified address `addr`: buf[i] is unified address
   * base + i, and every address in [lo, hi) resolves (mapDevice) to that same device, so a
   * pcluster inside [lo, hi) reads the same from buf as through readUnified. The window (up to
   * SPAN_WINDOW bytes from addr rounded down to SPAN_ALIGN) comes from Device.view, so the
   * device's read-ahead advice sees it. Undefined when the device is not mapped.
   */
  dataSpan(addr: number): DataSpan | undefined {
    const m = mapDevice(this, 0, addr);
    const dev = this.device(m.device);
    if (!dev.mapped) return undefined;
    const devBase = addr - m.physical;
    let lo = Math.max(devBase, addr - (addr % SPAN_ALIGN));
    let hi = Math.min(devBase + dev.size, lo + SPAN_WINDOW);
    // Devices listed before this one take precedence in mapDevice: cut their ranges out.
    const devs = this.sb.devices;
    const bs = this.sb.blockSize;
    const upTo = m.device === 0 ? devs.length : m.device - 1;
    for (let i = 0; i < upTo; i++) {
      const d = devs[i]!;
      if (!d.uniaddr) continue;
      const s = d.uniaddr * bs;
      const e = s + d.blocks * bs;
      if (e <= addr) lo = Math.max(lo, e);
      else if (s > addr) hi = Math.min(hi, s);
    }
    if (m.device !== 0) {
      const d = devs[m.device - 1]!;
      hi = Math.min(hi, d.uniaddr * bs + d.blocks * bs);
    }
    if (!(lo <= addr && addr < hi)) return undefined;
    const buf = dev.view(lo - devBase, hi - lo);
    if (!buf || buf.length !== hi - lo) return undefined;
    // Views do not ask for read-ahead themselves (the mapping is MADV_RANDOM): the compressed
    // reader hints the pcluster ranges it is about to decode (readahead.ts).
    const willNeed = (a: number, len: number): void => dev.willNeed(a - devBase, len, true);
    return { buf, base: lo, lo, hi, willNeed };
  }

  inode(nid: number): Inode {
    if (this.closed) throw new ErofsError('EIO', 'image closed');
    if (!Number.isSafeInteger(nid) || nid < 0) throw new ErofsError('EINVAL', `bad nid ${nid}`);
    let ino = this.inodes.get(nid);
    if (!ino) {
      ino = parseInode(this.sb, this.meta(nidInMetabox(nid)), nid);
      if (this.inodes.size >= INODE_CACHE_MAX) this.inodes.clear();
      this.inodes.set(nid, ino);
    }
    return ino;
  }

  /** Data bytes of any inode: short only at EOF. */
  readInodeData(ino: Inode, offset: number, length: number, cached = false): Buffer {
    if (offset >= ino.size || length <= 0) return Buffer.alloc(0);
    if (isCompressedLayout(ino.datalayout)) return this.z.read(ino, offset, Math.min(length, ino.size - offset));
    return readUncompressed(this, ino, offset, length, cached);
  }

  private dirSource(nid: number): DirSource {
    const ino = this.inode(nid);
    if (ino.type !== 'dir') throw new ErofsError('ENOTDIR', `nid ${nid} is not a directory`);
    const bs = this.sb.blockSize;
    return {
      nid,
      size: ino.size,
      blockSize: bs,
      dotOmitted: ino.dotOmitted,
      block: (i: number) => {
        const pos = i * bs;
        const len = Math.min(bs, ino.size - pos);
        if (len <= 0) throw new ErofsError('EIO', `dir nid ${nid}: block ${i} beyond its size`);
        const key = `${nid}:${i}`;
        let b = this.dirBlocks.get(key);
        if (!b) {
          b = this.readInodeData(ino, pos, len, true);
          if (b.length !== len) throw new ErofsError('EIO', `dir nid ${nid}: short block ${i}`);
          this.dirBlocks.set(key, b);
        }
        return b;
      },
      typeOf: (n: number) => this.inode(n).type,
    };
  }

  // ---- ErofsReader ----

  getAttr(nid: number): InodeAttr {
    const i = this.inode(nid);
    return {
      nid,
      type: i.type,
      mode: i.mode,
      uid: i.uid,
      gid: i.gid,
      nlink: i.nlink,
      size: i.size,
      mtimeSec: i.mtimeSec,
      mtimeNsec: i.mtimeNsec,
      rdev: i.rdev,
      blocks: i.blocks,
    };
  }

  lookup(dirNid: number, name: Buffer | string): number | undefined {
    const n = typeof name === 'string' ? Buffer.from(name, 'utf8') : name;
    return dirLookup(this.dirSource(dirNid), n)?.nid;
  }

  readdir(dirNid: number, offset: number, max: number): DirEntry[] {
    return dirReaddir(this.dirSource(dirNid), offset, max);
  }

  read(nid: number, offset: number, length: number): Buffer {
    const ino = this.inode(nid);
    if (ino.type === 'dir') throw new ErofsError('EISDIR', `nid ${nid} is a directory`);
    if (ino.type !== 'file' && ino.type !== 'symlink') throw new ErofsError('EINVAL', `nid ${nid} has no data`);
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new ErofsError('EINVAL', 'bad read range');
    }
    if (length > MAX_READ) throw new ErofsError('EINVAL', `read of ${length} bytes is too large`);
    return this.readInodeData(ino, offset, length);
  }

  readInto(nid: number, offset: number, length: number, target: Uint8Array, targetOffset = 0): number {
    const ino = this.inode(nid);
    if (ino.type === 'dir') throw new ErofsError('EISDIR', `nid ${nid} is a directory`);
    if (ino.type !== 'file' && ino.type !== 'symlink') throw new ErofsError('EINVAL', `nid ${nid} has no data`);
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 ||
        !Number.isSafeInteger(targetOffset) || targetOffset < 0) {
      throw new ErofsError('EINVAL', 'bad read range');
    }
    if (offset >= ino.size || length === 0) return 0;
    const n = Math.min(length, ino.size - offset);
    if (targetOffset + n > target.length) throw new ErofsError('EINVAL', 'target buffer too small');
    if (isCompressedLayout(ino.datalayout)) {
      this.z.readInto(ino, offset, n, target, targetOffset);
      return n;
    }
    return readUncompressedInto(this, ino, offset, n, target, targetOffset);
  }

  readlink(nid: number): Buffer {
    const ino = this.inode(nid);
    if (ino.type !== 'symlink') throw new ErofsError('EINVAL', `nid ${nid} is not a symlink`);
    const b = this.readInodeData(ino, 0, Math.min(ino.size, MAX_LINK));
    const z = b.indexOf(0);
    return z >= 0 ? b.subarray(0, z) : b;
  }

  listXattrs(nid: number): Xattr[] {
    return listXattrs(this, this.inode(nid));
  }

  getXattr(nid: number, name: string): Buffer {
    return getXattr(this, this.inode(nid), name);
  }

  fingerprint(nid: number): Buffer | undefined {
    if (this.sb.ishareXattrPrefixId === undefined) return undefined;
    const ino = this.inode(nid);
    if (ino.type !== 'file') return undefined;
    return getPrefixedXattr(this, ino, this.sb.ishareXattrPrefixId);
  }

  storedPlain(nid: number): boolean {
    let ino: Inode;
    try {
      ino = this.inode(nid);
    } catch {
      return false;
    }
    return ino.type === 'file' && !isCompressedLayout(ino.datalayout);
  }

  plainExtents(nid: number): PlainExtent[] | undefined {
    const ino = this.inode(nid);
    if (ino.type !== 'file' || isCompressedLayout(ino.datalayout)) return undefined;
    const out: PlainExtent[] = [];
    let pos = 0;
    let guard = 0;
    while (pos < ino.size) {
      if (++guard > 1_000_000) throw new ErofsError('EIO', `nid ${nid}: mapping does not progress`);
      const exts = mapRange(this, ino, pos, ino.size);
      if (!exts.length) throw new ErofsError('EIO', `nid ${nid}: unmapped range at ${pos}`);
      for (const x of exts) {
        pos = x.logical + x.length;
        if (!x.mapped) continue;
        if (x.inline && ino.inMetabox) return undefined;
        const prev = out[out.length - 1];
        if (prev && prev.device === x.device && prev.logical + prev.length === x.logical &&
            prev.physical + prev.length === x.physical) {
          prev.length += x.length;
        } else {
          out.push({ device: x.device, physical: x.physical, logical: x.logical, length: x.length });
        }
      }
    }
    return out;
  }

  seek(nid: number, offset: number, whence: 'data' | 'hole'): number {
    const ino = this.inode(nid);
    if (ino.type !== 'file') throw new ErofsError('EINVAL', `nid ${nid} is not a regular file`);
    if (!Number.isSafeInteger(offset) || offset < 0) throw new ErofsError('EINVAL', 'bad seek offset');
    if (offset >= ino.size) throw new ErofsError('ENXIO', 'seek offset at or beyond EOF');
    if (isCompressedLayout(ino.datalayout)) return this.z.seek(ino, offset, whence);
    let pos = offset;
    let guard = 0;
    while (pos < ino.size) {
      if (++guard > 1_000_000) throw new ErofsError('EIO', `nid ${nid}: mapping does not progress`);
      const exts = mapRange(this, ino, pos, ino.size);
      if (!exts.length) break;
      for (const x of exts) {
        if (whence === 'data' && x.mapped) return Math.max(x.logical, offset);
        if (whence === 'hole' && !x.mapped) return Math.max(x.logical, offset);
        pos = x.logical + x.length;
      }
    }
    if (whence === 'hole') return ino.size;
    throw new ErofsError('ENXIO', 'no data after offset');
  }

  // ---- layout queries (inspection) ----

  inodeLayout(nid: number): InodeLayout {
    const ino = this.inode(nid);
    const names = ['flat-plain', 'compressed-full', 'flat-inline', 'compressed-compact', 'chunk-based'] as const;
    const compressed = isCompressedLayout(ino.datalayout);
    const out: InodeLayout = {
      nid,
      inodeSize: ino.isize,
      xattrSize: ino.xattrIsize,
      datalayout: ino.datalayout,
      layoutName: names[ino.datalayout]!,
      inMetabox: ino.inMetabox,
      onDiskSize: compressed ? ino.blocks * 512 : ino.size,
    };
    if (ino.datalayout === DATALAYOUT.CHUNK_BASED) out.chunkSize = 2 ** ino.chunkBits;
    if (compressed) out.lclusterSize = this.z.lclusterSize(ino);
    if (ino.xattrIsize > XATTR_IBODY_HEADER_SIZE && this.sb.featureCompat & COMPAT.XATTR_FILTER) {
      out.xattrNameFilter = this.meta(ino.inMetabox).read(ino.iloc + ino.isize, 4).readUInt32LE(0);
    }
    return out;
  }

  extents(nid: number): DataExtent[] {
    const ino = this.inode(nid);
    if (ino.type !== 'file' && ino.type !== 'dir' && ino.type !== 'symlink') return [];
    const out: DataExtent[] = [];
    if (isCompressedLayout(ino.datalayout)) {
      const f = this.z.file(ino);
      for (let pos = 0; pos < ino.size;) {
        const x = f.mapExtent(pos);
        const e: DataExtent = {
          logical: x.logical, length: x.length, kind: x.kind, device: 0,
          physical: x.physical, physicalLength: x.physicalLength, partialRef: x.partialRef,
        };
        if (x.kind !== 'fragment' && x.kind !== 'hole') {
          e.algorithm = x.format >= 0 ? COMPRESSION_NAMES[x.format] : x.format === -2 ? 'interlaced' : 'plain';
        }
        if (x.kind === 'compressed' || x.kind === 'plain') {
          const m = mapDevice(this, 0, x.physical);
          e.device = m.device;
          e.physical = m.physical;
        }
        out.push(e);
        pos = x.logical + x.length;
      }
      return out;
    }
    // One map call per chunk: the chunk table as stored, not merged. Block-mapped data is
    // mapped in whole blocks, as the kernel maps it: the last extent may run past EOF.
    const step = ino.datalayout === DATALAYOUT.CHUNK_BASED ? 2 ** ino.chunkBits : ino.size;
    const bs = this.sb.blockSize;
    for (let pos = 0; pos < ino.size;) {
      const end = Math.min(ino.size, pos + step);
      for (const x of mapRange(this, ino, pos, end)) {
        const length = x.inline || x.logical + x.length < ino.size ? x.length : Math.ceil(ino.size / bs) * bs - x.logical;
        out.push({
          logical: x.logical,
          length,
          kind: !x.mapped ? 'hole' : x.inline ? 'inline' : ino.datalayout === DATALAYOUT.CHUNK_BASED ? 'chunk' : 'plain',
          device: x.device,
          physical: x.mapped ? x.physical : 0,
          physicalLength: x.mapped ? length : 0,
        });
      }
      pos = end;
    }
    return out;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.primary?.close();
    for (const d of this.extra) d?.close();
    this.inodes.clear();
    this.dirBlocks?.clear();
  }
}
