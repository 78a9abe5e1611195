// Glue between the reader core and ./zmap.ts (owned by the compressed-data module): builds the
// per-image ZImageContext and per-inode CompressedFileContext, and keeps a bounded set of open
// CompressedFile objects.
//
// Note to the zmap owner: we construct `new CompressedFile(ctx: CompressedFileContext)` and call
// `read(offset, length): Buffer` (offset < size, length clamped to EOF by us). For
// SEEK_DATA/SEEK_HOLE we use `seek(offset, whence)` (-1 = none), else `mapExtent(offset)`;
// without either a compressed file is treated as all data.
import { ErofsError } from './api.js';
import * as zmap from './zmap.js';
import type { CompressedFileContext, DataSpan, ZExtent, ZImageContext } from './zmap.js';
import type { Inode } from './inode.js';
import type { ByteSource } from './io.js';
import type { Superblock } from './superblock.js';
import { INCOMPAT } from './format.js';

export interface CompressedHost {
  readonly sb: Superblock;
  meta(inMetabox: boolean): ByteSource;
  readUnified(addr: number, len: number): Buffer;
  /** A transient no-copy view of the unified data space when it is memory-mapped. */
  viewUnified?(addr: number, len: number): Buffer | undefined;
  /** The mapped device bytes around a unified address (see ZImageContext.dataSpan). */
  dataSpan?(addr: number): DataSpan | undefined;
  packedSource(): ByteSource;
}

interface CompressedFileLike {
  read(offset: number, length: number): Buffer;
  /** Optional zero-allocation read (count returned, short only at EOF). */
  readInto?(offset: number, length: number, target: Uint8Array, targetOffset?: number): number;
  mapExtent?(offset: number): ZExtent;
  /** Next data/hole offset at or after offset; -1 when none. */
  seek?(offset: number, whence: 'data' | 'hole'): number;
}
type CompressedFileCtor = new (ctx: CompressedFileContext) => CompressedFileLike;

const MAX_OPEN_FILES = 1024;

export class CompressedReader {
  private image?: ZImageContext;
  private readonly files = new Map<number, CompressedFileLike>();

  constructor(private readonly host: CompressedHost, private readonly cacheBytes: number) {}

  private ctor(): CompressedFileCtor {
    const c = (zmap as unknown as { CompressedFile?: CompressedFileCtor }).CompressedFile;
    if (typeof c !== 'function') throw new ErofsError('EOPNOTSUPP', 'compressed files are not supported yet (zmap missing)');
    return c;
  }

  private imageContext(): ZImageContext {
    if (!this.image) {
      const sb = this.host.sb;
      this.image = {
        blkszbits: sb.blockBits,
        featureIncompat: sb.featureIncompat,
        availableAlgorithms: sb.featureIncompat & INCOMPAT.COMPR_CFGS ? sb.availableComprAlgs : 0,
        algorithmConfigs: sb.comprCfgs,
        readData: (addr, len) => this.host.readUnified(addr, len),
        viewData: this.host.viewUnified ? (addr, len) => this.host.viewUnified!(addr, len) : undefined,
        dataSpan: this.host.dataSpan ? (addr) => this.host.dataSpan!(addr) : undefined,
        readPacked: (offset, len) => this.host.packedSource().read(offset, len),
        cache: new zmap.PclusterCache(this.cacheBytes),
      };
    }
    return this.image;
  }

  file(ino: Inode): CompressedFileLike {
    let f = this.files.get(ino.nid);
    if (!f) {
      const Ctor = this.ctor();
      const src = this.host.meta(ino.inMetabox);
      f = new Ctor({
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

  read(ino: Inode, offset: number, length: number): Buffer {
    const b = this.file(ino).read(offset, length);
    if (b.length !== length) throw new ErofsError('EIO', `nid ${ino.nid}: compressed read returned ${b.length} of ${length} bytes`);
    return b;
  }

  /** Exactly `length` bytes (already clamped to EOF) into target[targetOffset, …); no allocation when the file supports it. */
  readInto(ino: Inode, offset: number, length: number, target: Uint8Array, targetOffset: number): void {
    const f = this.file(ino);
    if (typeof f.readInto === 'function') {
      const n = f.readInto(offset, length, target, targetOffset);
      if (n !== length) throw new ErofsError('EIO', `nid ${ino.nid}: compressed read returned ${n} of ${length} bytes`);
      return;
    }
    target.set(this.read(ino, offset, length), targetOffset);
  }

  seek(ino: Inode, offset: number, whence: 'data' | 'hole'): number {
    const f = this.file(ino);
    if (typeof f.seek === 'function') {
      const r = f.seek(offset, whence);
      if (r < 0) throw new ErofsError('ENXIO', 'no data after offset');
      if (!Number.isSafeInteger(r) || r < offset || r > ino.size) throw new ErofsError('EIO', `nid ${ino.nid}: bad seek result ${r}`);
      return r;
    }
    if (typeof f.mapExtent !== 'function') {
      if (whence === 'data') return offset;
      return ino.size;
    }
    let pos = offset;
    let guard = 0;
    while (pos < ino.size) {
      if (++guard > 10_000_000) throw new ErofsError('EIO', `nid ${ino.nid}: extent map does not progress`);
      const x = f.mapExtent(pos);
      if (x.length <= 0 || x.logical > pos || x.logical + x.length <= pos) {
        throw new ErofsError('EIO', `nid ${ino.nid}: bad extent at ${pos}`);
      }
      const hole = x.kind === 'hole';
      if (whence === 'data' && !hole) return pos;
      if (whence === 'hole' && hole) return pos;
      pos = x.logical + x.length;
    }
    if (whence === 'hole') return ino.size;
    throw new ErofsError('ENXIO', 'no data after offset');
  }
}
