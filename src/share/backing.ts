// Shared backings: the one host copy of a file's content that every holder of the same
// (domain, fingerprint) reads and maps.
//
//  - ImageRangeBacking: the content already lies uncompressed in an image (or extra device)
//    file — contiguous and page-aligned, or a page-aligned prefix followed by a tail shorter than
//    a page stored elsewhere (EROFS inline tails) — so the image file's own page cache is the
//    shared copy. Reads go through the first holder's reader; only a DAX mapping of the last
//    page needs a private zero-padded copy of it.
//  - BlobBacking: a materialised copy (memfd, or a file in a --blob-dir shared by several
//    daemon processes), filled lazily per granule from a holder's image, single-flight. When
//    the holder stores the file uncompressed (small files wholly inline in the metadata), plain
//    READs are served from the holder's image and only DAX mappings fill the blob: without a
//    window a copy would only add to the image's page cache (QEMU guests without one). Guests
//    without a window do not fill blobs of compressed files either (read(fill=false)): they
//    keep their own page-cache copy, so the host's copy is the holder's compressed pages.
//
// The EOF-tail rule: a mapping never exposes bytes past EOF that belong to anything else. Blobs
// are zero past EOF by construction (ftruncate); an image range whose last page carries other
// data after EOF (or ends past the image file's end) maps that page from a zero-padded copy.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { PAGE_SIZE, native } from '../native/index.js';

/** Blobs fill in granules of this size: big enough to amortise decompression, small enough for random reads. */
export const BLOB_GRANULE = 512 * 1024;

export function roundUpPage(n: number): number {
  return Math.ceil(n / PAGE_SIZE) * PAGE_SIZE;
}

/** One piece of a DAX mapping: map `length` bytes of `fd` at `fdOffset`. */
export interface MapPiece {
  fd: number;
  fdOffset: number;
  length: number;
}

/** Where a backing's bytes come from: one holder (an image file and the file's nid in it). */
export interface ContentSource {
  /** Image registration id (registry.ts), to re-point when that image goes away. */
  imageId: number;
  nid: number;
  /** Reads uncompressed content of the file (the reader's own per-file path, or the read pool). */
  read(offset: number, length: number): Buffer | Promise<Buffer>;
  /**
   * Present when the file is stored uncompressed in the holder's image: a synchronous read
   * straight from the image (a copy from its page cache, no decompression, no allocation of a
   * shared copy).
   */
  readPlain?(offset: number, length: number): Buffer;
}

export interface BackingStats {
  kind: 'image-range' | 'blob';
  size: number;
  residentBytes: number;
  mappings: number;
  handles: number;
}

export abstract class Backing {
  /** Live DAX mappings and open handles pin a backing against eviction. */
  mappings = 0;
  handles = 0;
  lastUse = 0;
  closed = false;

  constructor(
    readonly key: string,
    readonly domain: string,
    readonly digestHex: string,
    readonly size: number,
  ) {}

  abstract readonly kind: 'image-range' | 'blob';
  /** The image whose content fills (or lies under) this backing. */
  abstract readonly sourceImageId: number;
  /**
   * Bytes [offset, min(offset+length, size)). `fill: false` (a reader without a DAX window, which
   * keeps its own page-cache copy): a blob serves what it holds and reads the rest from its
   * holder's image without materialising it.
   */
  abstract read(offset: number, length: number, fill?: boolean): Promise<Buffer>;
  /** Pieces covering the page-aligned [offset, offset+length), clipped to the rounded-up size. */
  abstract mapPieces(offset: number, length: number): Promise<MapPiece[]>;
  /** Host memory this backing itself holds (blob pages filled; image ranges live in the page cache). */
  abstract residentBytes(): number;
  abstract close(): void;

  get pinned(): boolean {
    return this.mappings > 0 || this.handles > 0;
  }

  stats(): BackingStats {
    return { kind: this.kind, size: this.size, residentBytes: this.residentBytes(), mappings: this.mappings, handles: this.handles };
  }

  protected clip(offset: number, length: number): number {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) return 0;
    return Math.max(0, Math.min(length, this.size - offset));
  }

  protected checkMapRange(offset: number, length: number): number {
    if (offset % PAGE_SIZE !== 0 || offset < 0 || length <= 0) throw new RangeError('mapping range is not page-aligned');
    const end = Math.min(offset + length, roundUpPage(this.size));
    if (end <= offset) throw new RangeError('mapping starts past EOF');
    return end;
  }
}

/**
 * Content that lies plain in a file we can map directly: bytes [0, prefix) at `physical`
 * (page-aligned), and either prefix = size, or the rest (shorter than a page) stored elsewhere in
 * the image (an inline tail), read through the holder's reader.
 */
export class ImageRangeBacking extends Backing {
  readonly kind = 'image-range' as const;
  private tailFd = -1;

  private constructor(
    key: string,
    domain: string,
    digestHex: string,
    size: number,
    private fd: number,
    private physical: number,
    private prefix: number,
    private source: ContentSource,
    private tailNeedsCopy: boolean,
  ) {
    super(key, domain, digestHex, size);
  }

  /**
   * Builds the backing when the layout qualifies: page-aligned start, and `prefix` = size or a
   * page multiple with less than a page after it (then `source.readPlain` must read the tail).
   * Decides whether the final page needs a zero-padded copy: always when the tail lies
   * elsewhere, else by looking at the bytes after EOF in the file.
   */
  static create(
    key: string, domain: string, digestHex: string, size: number,
    filePath: string, physical: number, source: ContentSource, prefix: number = size,
  ): ImageRangeBacking | undefined {
    if (physical % PAGE_SIZE !== 0 || size === 0 || prefix <= 0 || prefix > size) return undefined;
    if (prefix < size && (prefix % PAGE_SIZE !== 0 || size - prefix >= PAGE_SIZE || !source.readPlain)) return undefined;
    const fd = fs.openSync(filePath, 'r');
    try {
      const fileSize = fs.fstatSync(fd).size;
      if (physical + prefix > fileSize) {
        fs.closeSync(fd);
        return undefined; // the extent does not fit the file: not ours to map
      }
      let tailNeedsCopy = false;
      const tail = roundUpPage(size) - size;
      if (prefix < size) {
        tailNeedsCopy = true; // the last page's bytes are not at physical + prefix
      } else if (tail > 0) {
        if (physical + roundUpPage(size) > fileSize) {
          tailNeedsCopy = true; // mapping past the file's end would fault (SIGBUS) in the guest
        } else {
          const after = Buffer.alloc(tail);
          fs.readSync(fd, after, 0, tail, physical + size);
          tailNeedsCopy = after.some((b) => b !== 0);
        }
      }
      return new ImageRangeBacking(key, domain, digestHex, size, fd, physical, prefix, source, tailNeedsCopy);
    } catch (err) {
      try { fs.closeSync(fd); } catch { /* already closed */ }
      throw err;
    }
  }

  get sourceImageId(): number {
    return this.source.imageId;
  }

  /** Moves the backing to another holder's file (its first holder's image is going away). */
  repoint(filePath: string, physical: number, source: ContentSource, prefix: number = this.size): boolean {
    const next = ImageRangeBacking.create(this.key, this.domain, this.digestHex, this.size, filePath, physical, source, prefix);
    if (!next) return false;
    fs.closeSync(this.fd);
    this.fd = next.fd;
    this.physical = next.physical;
    this.prefix = next.prefix;
    this.source = source;
    this.tailNeedsCopy = next.tailNeedsCopy;
    if (this.tailFd >= 0) { fs.closeSync(this.tailFd); this.tailFd = -1; }
    if (next.tailFd >= 0) fs.closeSync(next.tailFd);
    return true;
  }

  async read(offset: number, length: number, _fill?: boolean): Promise<Buffer> {
    const n = this.clip(offset, length);
    // The holder's reader copies from its mapping of the image: the same page cache, and it
    // touches only the pages asked for.
    if (this.source.readPlain) return n === 0 ? Buffer.alloc(0) : this.source.readPlain(offset, n);
    const buf = Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const got = fs.readSync(this.fd, buf, done, n - done, this.physical + offset + done);
      if (got <= 0) throw new Error('image file shorter than a verified extent');
      done += got;
    }
    return buf;
  }

  async mapPieces(offset: number, length: number): Promise<MapPiece[]> {
    const end = this.checkMapRange(offset, length);
    const lastPage = roundUpPage(this.size) - PAGE_SIZE;
    if (!this.tailNeedsCopy || end <= lastPage) {
      return [{ fd: this.fd, fdOffset: this.physical + offset, length: end - offset }];
    }
    const pieces: MapPiece[] = [];
    if (lastPage > offset) pieces.push({ fd: this.fd, fdOffset: this.physical + offset, length: lastPage - offset });
    pieces.push({ fd: this.tailPage(), fdOffset: 0, length: PAGE_SIZE });
    return pieces;
  }

  /** A one-page memfd holding the file's last partial page followed by zeros. */
  private tailPage(): number {
    if (this.tailFd >= 0) return this.tailFd;
    const lastPage = roundUpPage(this.size) - PAGE_SIZE;
    let bytes: Buffer;
    if (this.prefix < this.size) {
      bytes = this.source.readPlain!(lastPage, this.size - lastPage);
      if (bytes.length !== this.size - lastPage) throw new Error('short read of an inline tail');
    } else {
      bytes = Buffer.alloc(this.size - lastPage);
      fs.readSync(this.fd, bytes, 0, bytes.length, this.physical + lastPage);
    }
    const fd = native.memfdCreate(`erofs-vfsd-tail-${this.digestHex.slice(0, 16)}`, native.constants.MFD_CLOEXEC);
    native.ftruncate(fd, PAGE_SIZE);
    fs.writeSync(fd, bytes, 0, bytes.length, 0);
    this.tailFd = fd;
    return fd;
  }

  residentBytes(): number {
    return this.tailFd >= 0 ? PAGE_SIZE : 0;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
    if (this.tailFd >= 0) fs.closeSync(this.tailFd);
  }
}

/** A materialised copy of decompressed content: memfd by default, or a file in a blob directory. */
export class BlobBacking extends Backing {
  readonly kind = 'blob' as const;
  /** The blob's file once created (see `fd`), else -1. */
  private file = -1;
  private readonly filled: Uint8Array;
  private filledCount = 0;
  private readonly inflight = new Map<number, Promise<void>>();
  private readonly granules: number;
  /** Set when the blob lives in a blob directory: the temp name until complete, then the final one. */
  private tempPath: string | undefined;

  constructor(
    key: string, domain: string, digestHex: string, size: number,
    private source: ContentSource,
    private readonly blobDir?: string,
  ) {
    super(key, domain, digestHex, size);
    this.granules = Math.ceil(size / BLOB_GRANULE);
    this.filled = new Uint8Array(this.granules);
    if (blobDir) {
      const existing = BlobBacking.openComplete(BlobBacking.pathIn(blobDir, domain, digestHex), size);
      if (existing >= 0) {
        this.file = existing;
        this.filled.fill(1);
        this.filledCount = this.granules;
      }
    }
  }

  /**
   * The blob's file, created on first use: a blob that only ever serves plain READs from its
   * holder's image (or is never read) costs no descriptor and no memfd.
   */
  private get fd(): number {
    if (this.file >= 0) return this.file;
    if (this.closed) throw new Error('shared blob was evicted');
    let fd: number;
    if (this.blobDir) {
      fs.mkdirSync(this.blobDir, { recursive: true });
      const tempPath = `${BlobBacking.pathIn(this.blobDir, this.domain, this.digestHex)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
      fd = fs.openSync(tempPath, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
      this.tempPath = tempPath;
    } else {
      fd = native.memfdCreate(`erofs-vfsd-blob-${this.digestHex.slice(0, 16)}`, native.constants.MFD_CLOEXEC);
    }
    try {
      native.ftruncate(fd, roundUpPage(this.size));
    } catch (err) {
      fs.closeSync(fd);
      if (this.tempPath) {
        try { fs.unlinkSync(this.tempPath); } catch { /* gone already */ }
        this.tempPath = undefined;
      }
      throw err;
    }
    this.file = fd;
    return fd;
  }

  /** Blob files are named by domain and digest, so separate daemon processes find each other's. */
  static pathIn(blobDir: string, domain: string, digestHex: string): string {
    const safeDomain = Buffer.from(domain, 'utf8').toString('base64url');
    return path.join(blobDir, `${safeDomain}-${digestHex}.blob`);
  }

  private static openComplete(finalPath: string, size: number): number {
    let fd = -1;
    try {
      fd = fs.openSync(finalPath, 'r');
      if (fs.fstatSync(fd).size === roundUpPage(size)) return fd;
      fs.closeSync(fd);
    } catch {
      if (fd >= 0) fs.closeSync(fd);
    }
    return -1;
  }

  get sourceImageId(): number {
    return this.source.imageId;
  }

  /** Another holder takes over filling (the first holder's image is going away). */
  repoint(source: ContentSource): void {
    this.source = source;
  }

  get complete(): boolean {
    return this.filledCount === this.granules;
  }

  private async ensure(offset: number, end: number): Promise<void> {
    const first = Math.floor(offset / BLOB_GRANULE);
    const last = Math.min(this.granules, Math.ceil(end / BLOB_GRANULE));
    const waits: Promise<void>[] = [];
    for (let g = first; g < last; g++) {
      if (this.filled[g]) continue;
      let p = this.inflight.get(g);
      if (!p) {
        p = this.fillGranule(g);
        this.inflight.set(g, p);
      }
      waits.push(p);
    }
    if (waits.length) await Promise.all(waits);
  }

  private async fillGranule(g: number): Promise<void> {
    try {
      const start = g * BLOB_GRANULE;
      const len = Math.min(BLOB_GRANULE, this.size - start);
      const data = await this.source.read(start, len);
      if (data.length !== len) throw new Error(`short read while filling a shared blob (${data.length} of ${len})`);
      if (this.closed) throw new Error('shared blob was evicted while filling');
      let done = 0;
      while (done < len) done += fs.writeSync(this.fd, data, done, len - done, start + done);
      this.filled[g] = 1;
      this.filledCount++;
      if (this.complete) this.publish();
    } finally {
      this.inflight.delete(g);
    }
  }

  /** A complete blob in a blob directory gets its final name atomically. */
  private publish(): void {
    if (!this.tempPath) return;
    const finalPath = this.tempPath.replace(/\.\d+\.[0-9a-f]+\.tmp$/, '');
    try {
      fs.renameSync(this.tempPath, finalPath);
    } catch {
      try { fs.unlinkSync(this.tempPath); } catch { /* gone already */ }
    }
    this.tempPath = undefined;
  }

  /** Whether every granule of [offset, end) is filled. */
  private filledRange(offset: number, end: number): boolean {
    const last = Math.min(this.granules, Math.ceil(end / BLOB_GRANULE));
    for (let g = Math.floor(offset / BLOB_GRANULE); g < last; g++) if (!this.filled[g]) return false;
    return true;
  }

  async read(offset: number, length: number, fill = true): Promise<Buffer> {
    const n = this.clip(offset, length);
    if (n === 0) return Buffer.alloc(0);
    if (!this.filledRange(offset, offset + n)) {
      // Stored uncompressed by its holder: read the image (its page cache is a copy already) and
      // leave the blob to DAX mappings.
      if (this.source.readPlain) return this.source.readPlain(offset, n);
      // Compressed, for a reader with no window: decompress from the holder's image (the
      // reader's bounded pcluster cache) rather than pin a third copy in a memfd.
      if (!fill) {
        const data = await this.source.read(offset, n);
        if (data.length !== n) throw new Error(`short read from a shared file's holder (${data.length} of ${n})`);
        return data;
      }
    }
    await this.ensure(offset, offset + n);
    const buf = Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const got = fs.readSync(this.fd, buf, done, n - done, offset + done);
      if (got <= 0) throw new Error('shared blob shorter than its content');
      done += got;
    }
    return buf;
  }

  async mapPieces(offset: number, length: number): Promise<MapPiece[]> {
    const end = this.checkMapRange(offset, length);
    await this.ensure(offset, Math.min(end, this.size));
    return [{ fd: this.fd, fdOffset: offset, length: end - offset }];
  }

  residentBytes(): number {
    let bytes = 0;
    for (let g = 0; g < this.granules; g++) {
      if (this.filled[g]) bytes += Math.min(BLOB_GRANULE, this.size - g * BLOB_GRANULE);
    }
    return bytes;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.file >= 0) fs.closeSync(this.file);
    this.file = -1;
    if (this.tempPath) {
      try { fs.unlinkSync(this.tempPath); } catch { /* gone already */ }
    }
  }
}
