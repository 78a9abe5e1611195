// Bounded I/O over image files: devices read with fs.readSync, and a byte-bounded LRU page cache
// for metadata. Every read is checked against the file size; a short or out-of-range read is EIO.
import fs from 'node:fs';
import { ErofsError } from './api.js';
import type { MmapProvider } from './api.js';

/** Images up to this size are mapped whole (read-only, shared) when a provider is given. */
const MMAP_MAX = 2 ** 44;
const MADV_RANDOM = 1;
const MADV_WILLNEED = 3;
/**
 * Copies from the mapping at least this long use the shim's copy (`rep movsb`): above its L2 size
 * glibc's memcpy switches to a vector loop that was ~15% slower per 1 MiB READ here. Below it the
 * two are the same copy.
 */
const BULK_COPY_MIN = 256 * 1024;
/** Granule of Device's "already asked for" bitmap (MADV_WILLNEED), see Device.prefetched. */
const PREFETCH_GRANULE = 32 * 1024;
/** Granules asked for ahead of a small sequential read. */
const PREFETCH_AHEAD = 8;
/**
 * The bitmap is forgotten this often: pages asked for may since have been evicted (memory
 * pressure, drop_caches), and a granule marked forever would then fault in page by page.
 */
const PREFETCH_FORGET_MS = 1000;
/** Images with more granules than this keep no bitmap: copies of 64 KiB or more always ask. */
const PREFETCH_MAX_GRANULES = 1 << 24;

/** Something that yields exactly `len` bytes at `pos`, or throws ErofsError('EIO'). */
export interface ByteSource {
  readonly size: number;
  /** The returned buffer may be shared with a cache: callers must not modify it. */
  read(pos: number, len: number): Buffer;
}

/**
 * A map whose total value size is bounded in bytes, evicting what was least recently used, by
 * generations: entries live in `recent` or `older`. A hit in `recent` is one Map lookup (an exact
 * LRU moved the entry on every hit: a delete and a set, the reader's top cost per FUSE LOOKUP);
 * a hit in `older` moves the entry to `recent`. When `recent` reaches half the budget, `older`
 * (entries not used for a whole generation) is dropped and `recent` becomes `older`.
 */
export class LruCache<K> {
  private recent = new Map<K, Buffer>();
  private older = new Map<K, Buffer>();
  private recentBytes = 0;
  private olderBytes = 0;
  private readonly half: number;
  constructor(private readonly maxBytes: number) {
    this.half = Math.floor(maxBytes / 2);
  }

  get(key: K): Buffer | undefined {
    const v = this.recent.get(key);
    if (v !== undefined) return v;
    const o = this.older.get(key);
    if (o !== undefined) {
      this.older.delete(key);
      this.olderBytes -= o.length;
      this.insert(key, o);
    }
    return o;
  }

  set(key: K, value: Buffer): void {
    this.delete(key);
    // Larger than a generation: it would evict everything else at once.
    if (value.length > this.half) return;
    this.insert(key, value);
  }

  private insert(key: K, value: Buffer): void {
    if (this.recentBytes + value.length > this.half) {
      this.older = this.recent;
      this.olderBytes = this.recentBytes;
      this.recent = new Map();
      this.recentBytes = 0;
    }
    this.recent.set(key, value);
    this.recentBytes += value.length;
  }

  private delete(key: K): void {
    const v = this.recent.get(key);
    if (v !== undefined) {
      this.recent.delete(key);
      this.recentBytes -= v.length;
    }
    const o = this.older.get(key);
    if (o !== undefined) {
      this.older.delete(key);
      this.olderBytes -= o.length;
    }
  }

  clear(): void {
    this.recent.clear();
    this.older.clear();
    this.recentBytes = 0;
    this.olderBytes = 0;
  }

  /** Bytes held (never more than maxBytes). */
  get size(): number {
    return this.recentBytes + this.olderBytes;
  }
}

export const PAGE_SIZE = 4096;
const PAGE_SHIFT = 12;

/** An image file or an extra device, read with positional readSync. */
export class Device {
  readonly fd: number;
  readonly size: number;
  private closed = false;
  private region?: ArrayBuffer;
  /** The whole file mapped read-only: reads become memcpy instead of a syscall. */
  private mapping?: Buffer;
  /**
   * 32 KiB granules of the mapping asked for (MADV_WILLNEED) in the last PREFETCH_FORGET_MS. The
   * mapping is MADV_RANDOM: a page fault reads that page only, instead of the device's whole
   * read-ahead window around it (8 MiB on some hosts: one fault on the superblock pulled the
   * whole image into the page cache, which defeats page sharing's memory accounting, issue 5).
   * Copies ask for their granules instead, so cold reads still get batched I/O, if less deep
   * than the kernel's read-around (256 MiB file cold on this host: plain ~0.35 s vs ~0.1 s, LZ4
   * ~0.34 s vs ~0.13 s); views (compressed data) fault page by page unless their user calls
   * willNeed. Warm reads are unchanged.
   */
  private prefetched?: Uint8Array;
  private prefetchedSince = 0;
  /** MADV_RANDOM is in effect on the mapping (else the kernel's read-around does the batching). */
  private adviseRandom = false;

  /** `mmap`: map the file read-only through this provider; undefined = read with readSync. */
  constructor(readonly path: string, readonly index: number, private readonly mmap?: MmapProvider) {
    try {
      this.fd = fs.openSync(path, 'r');
    } catch (e) {
      throw new ErofsError('EINVAL', `cannot open device ${index} (${path}): ${(e as Error).message}`);
    }
    try {
      const st = fs.fstatSync(this.fd);
      let size = st.size;
      if (st.isBlockDevice()) {
        // fstat gives 0 for block devices; find the end with a seek-free probe.
        size = blockDeviceSize(this.fd);
      }
      this.size = size;
    } catch (e) {
      fs.closeSync(this.fd);
      throw e;
    }
    if (mmap && this.size > 0 && this.size <= MMAP_MAX && !process.env.EROFS_VFSD_NO_MMAP) {
      try {
        this.region = mmap.mmap(this.fd, 0, this.size, mmap.constants.PROT_READ, mmap.constants.MAP_SHARED);
        this.mapping = Buffer.from(this.region);
        if (mmap.madvise) {
          try {
            mmap.madvise(this.region, 0, this.size, MADV_RANDOM);
            this.adviseRandom = true;
            const granules = Math.ceil(this.size / PREFETCH_GRANULE);
            if (granules <= PREFETCH_MAX_GRANULES) this.prefetched = new Uint8Array(granules);
          } catch {
            // advice is optional
          }
        }
      } catch {
        // mapping is an optimisation: fall back to readSync
        this.region = undefined;
        this.mapping = undefined;
      }
    }
  }

  /** Whether reads go through a memory mapping. */
  get mapped(): boolean {
    return this.mapping !== undefined;
  }

  /** Fills buf[off, off+len) from device position pos; EIO when out of range or short. */
  readInto(buf: Buffer, off: number, pos: number, len: number): void {
    if (off < 0 || off + len > buf.length) throw new ErofsError('EINVAL', 'target buffer too small');
    if (this.closed) throw new ErofsError('EIO', 'device closed');
    if (!Number.isSafeInteger(pos) || pos < 0 || len < 0 || pos + len > this.size) {
      throw new ErofsError('EIO', `read of ${len} bytes at ${pos} beyond the end of device ${this.index} (${this.size} bytes)`);
    }
    if (this.mapping) {
      this.willNeed(pos, len);
      if (len >= BULK_COPY_MIN && this.mmap?.copy) this.mmap.copy(buf, off, this.mapping, pos, len);
      else this.mapping.copy(buf, off, pos, pos + len);
      return;
    }
    let done = 0;
    let tries = 0;
    while (done < len) {
      const n = fs.readSync(this.fd, buf, off + done, len - done, pos + done);
      if (n <= 0) {
        if (++tries > 3) throw new ErofsError('EIO', `short read on device ${this.index} at ${pos + done}`);
        continue;
      }
      done += n;
    }
  }

  /**
   * Asks for the granules of [pos, pos+len) not asked for before (MADV_WILLNEED: one batched
   * read instead of a fault per page). Copies (readInto: metadata pages, plain data) call it with
   * their exact range. view() does not (callers take views wider than what they decode): code
   * reading views or mappedBytes() sequentially should call it with the bytes it will touch —
   * `sequential` then also asks for PREFETCH_AHEAD more granules after a small read that follows
   * an asked-for granule. Without it, cold pages of a view fault in one by one (correct, slower).
   */
  willNeed(pos: number, len: number, sequential = false): void {
    if (!this.adviseRandom || !this.region || this.closed || !Number.isSafeInteger(pos) || pos < 0 || len <= 0 || pos >= this.size) return;
    const marks = this.prefetched;
    if (!marks) {
      if (len >= 2 * PREFETCH_GRANULE) this.advise(pos - (pos % PAGE_SIZE), Math.min(this.size, pos + len), MADV_WILLNEED);
      return;
    }
    const now = Date.now();
    if (now - this.prefetchedSince >= PREFETCH_FORGET_MS) {
      marks.fill(0);
      this.prefetchedSince = now;
    }
    const first = Math.floor(pos / PREFETCH_GRANULE);
    let last = Math.min(marks.length - 1, Math.floor((pos + len - 1) / PREFETCH_GRANULE));
    let from = first;
    while (from <= last && marks[from]) from++;
    if (from > last) return;
    if (sequential && len < PREFETCH_GRANULE && first > 0 && marks[first - 1]) last = Math.min(marks.length - 1, last + PREFETCH_AHEAD);
    marks.fill(1, from, last + 1);
    this.advise(from * PREFETCH_GRANULE, Math.min(this.size, (last + 1) * PREFETCH_GRANULE), MADV_WILLNEED);
  }

  private advise(start: number, end: number, advice: number): void {
    try {
      if (this.region && end > start) this.mmap?.madvise?.(this.region, start, end - start, advice);
    } catch {
      // advice is optional
    }
  }

  read(pos: number, len: number): Buffer {
    const b = Buffer.allocUnsafe(len);
    this.readInto(b, 0, pos, len);
    return b;
  }

  /**
   * A read-only view of [pos, pos+len) of the mapping (no copy), or undefined when the device
   * is not mapped. Only for transient use (decoding, copying out): never cache or return it.
   */
  view(pos: number, len: number): Buffer | undefined {
    if (!this.mapping || this.closed) return undefined;
    if (!Number.isSafeInteger(pos) || pos < 0 || len < 0 || pos + len > this.size) {
      throw new ErofsError('EIO', `read of ${len} bytes at ${pos} beyond the end of device ${this.index} (${this.size} bytes)`);
    }
    return this.mapping.subarray(pos, pos + len);
  }

  close(): void {
    if (!this.closed) {
      this.closed = true;
      if (this.region) {
        const r = this.region;
        this.region = undefined;
        this.mapping = undefined;
        try {
          this.mmap?.munmap(r);
        } catch {
          // already gone
        }
      }
      fs.closeSync(this.fd);
    }
  }
}

function blockDeviceSize(fd: number): number {
  // Binary search for the last readable byte (bounded: 64 probes).
  const one = Buffer.alloc(1);
  let lo = 0;
  let hi = 2 ** 50;
  for (let i = 0; i < 64 && lo < hi; i++) {
    const mid = Math.floor((lo + hi + 1) / 2);
    let ok = false;
    try {
      ok = fs.readSync(fd, one, 0, 1, mid - 1) === 1;
    } catch {
      ok = false;
    }
    if (ok) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/**
 * A ByteSource with a 4 KiB page cache in front of a page loader. Reads inside one page return a
 * view into the cached page (no copy); reads spanning pages are assembled into a new buffer.
 */
export class CachedSource implements ByteSource {
  constructor(
    readonly size: number,
    private readonly loadPage: (pageIndex: number) => Buffer,
    private readonly cache: LruCache<number>,
    private readonly label: string,
  ) {}

  private page(idx: number): Buffer {
    let p = this.cache.get(idx);
    if (p === undefined) {
      p = this.loadPage(idx);
      this.cache.set(idx, p);
    }
    return p;
  }

  read(pos: number, len: number): Buffer {
    if (!Number.isSafeInteger(pos) || !Number.isSafeInteger(len) || pos < 0 || len < 0 || pos + len > this.size) {
      throw new ErofsError('EIO', `${this.label}: ${len} bytes at ${pos} out of range (size ${this.size})`);
    }
    if (len === 0) return Buffer.alloc(0);
    const first = Math.floor(pos / PAGE_SIZE);
    const last = Math.floor((pos + len - 1) / PAGE_SIZE);
    if (first === last) {
      const p = this.page(first);
      const o = pos - first * PAGE_SIZE;
      if (o + len > p.length) throw new ErofsError('EIO', `${this.label}: short page ${first}`);
      return p.subarray(o, o + len);
    }
    const out = Buffer.allocUnsafe(len);
    let done = 0;
    for (let i = first; i <= last; i++) {
      const p = this.page(i);
      const o = i === first ? pos - first * PAGE_SIZE : 0;
      const n = Math.min(PAGE_SIZE - o, len - done);
      if (o + n > p.length) throw new ErofsError('EIO', `${this.label}: short page ${i}`);
      p.copy(out, done, o, o + n);
      done += n;
    }
    return out;
  }
}

/** Page loader for a device: full pages, the last one possibly short. */
export function devicePageLoader(dev: Device): (idx: number) => Buffer {
  return (idx) => {
    const pos = idx * PAGE_SIZE;
    const n = Math.min(PAGE_SIZE, dev.size - pos);
    if (n <= 0) throw new ErofsError('EIO', `page ${idx} beyond device ${dev.index}`);
    return dev.read(pos, n);
  };
}

export { PAGE_SHIFT };
