// Guest memory table: the regions the front-end shares with us (SET_MEM_TABLE, ADD_MEM_REG,
// REM_MEM_REG), each mmapped from its fd, with strict translation of guest-physical addresses
// (descriptor buffers) and front-end virtual addresses (ring locations).
//
// Everything in a region description is front-end input: sizes, offsets and counts are bounded
// (MemoryLimits), a region is mapped from its page-aligned offset only, and a region stays mapped
// while any table that holds it is in use by an in-flight request.
import fs from 'node:fs';
import { sys, isSysError } from './sys.js';
import { ProtocolError, type MemRegionDesc } from './protocol.js';

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const PAGE = BigInt(sys.pageSize);

/** Bounds on what one front-end connection may make us map. */
export interface MemoryLimits {
  /** Regions at once (what GET_MAX_MEM_SLOTS announces). */
  maxRegions: number;
  /** Largest single region, in bytes. */
  maxRegionBytes: number;
  /** All regions of the connection together, in bytes (address space we commit to it). */
  maxTotalBytes: number;
}

/**
 * Defaults: 512 slots is QEMU's own ceiling on x86 and Arm (VHOST_USER_MAX_RAM_SLOTS; QEMU caps
 * what we announce at it), 1 TiB per region and 4 TiB per connection of address space (x86-64
 * user space has 128 TiB; guest RAM beyond a few TiB needs a larger limit, set by the server).
 */
export const DEFAULT_MEMORY_LIMITS: Readonly<MemoryLimits> = {
  maxRegions: 512,
  maxRegionBytes: 2 ** 40,
  maxTotalBytes: 4 * 2 ** 40,
};

export class MemoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MemoryError';
  }
}

/**
 * Regions are mapped in chunks of CHUNK_STEP bytes (an ArrayBuffer cannot exceed 4 GiB here),
 * each chunk extended by CHUNK_OVERLAP bytes into the next, so any range up to CHUNK_OVERLAP long
 * (rings, indirect tables: at most 512 KiB) is contiguous in one chunk. Buffers crossing a chunk
 * boundary are split like buffers crossing regions.
 */
const CHUNK_STEP = 1024 * 1024 * 1024;
const CHUNK_OVERLAP = 2 * 1024 * 1024;

export class MemoryRegion {
  readonly guestPhys: number;
  readonly size: number;
  readonly userAddr: number;
  /** The region's offset in its fd (as the front-end gave it). */
  readonly mmapOffset: number;
  /** False when the fd only allowed a read-only mapping: no device-writable buffer may lie here. */
  readonly writable: boolean;
  /** Bytes between the page-aligned mapping start and the region start. */
  private readonly skew: number;
  private readonly total: number;
  private chunks: ArrayBuffer[] | null;
  /** Tables (GuestMemory) holding this region; it is unmapped when the last one is done. */
  private holders = 0;

  private constructor(
    d: { guestPhys: number; size: number; userAddr: number; mmapOffset: number; skew: number; writable: boolean },
    chunks: ArrayBuffer[],
  ) {
    this.guestPhys = d.guestPhys;
    this.size = d.size;
    this.userAddr = d.userAddr;
    this.mmapOffset = d.mmapOffset;
    this.skew = d.skew;
    this.writable = d.writable;
    this.total = d.size + d.skew;
    this.chunks = chunks;
  }

  /**
   * Maps `[mmap_offset, mmap_offset + size)` of `fd` (from the page below mmap_offset: an offset
   * of terabytes costs nothing). Read-write, or read-only when the fd allows no more. The fd is
   * not closed here.
   */
  static map(desc: MemRegionDesc, fd: number, limits: Readonly<MemoryLimits> = DEFAULT_MEMORY_LIMITS): MemoryRegion {
    const { guestPhys, size, userAddr, mmapOffset } = desc;
    if (size === 0n) throw new ProtocolError('memory region of size 0');
    if (size > BigInt(limits.maxRegionBytes)) throw new ProtocolError(`memory region of ${size} bytes is larger than the limit of ${limits.maxRegionBytes}`);
    if (guestPhys + size > MAX_SAFE || userAddr + size > MAX_SAFE || mmapOffset + size > MAX_SAFE) {
      throw new ProtocolError('memory region addresses out of range');
    }
    const aligned = mmapOffset - (mmapOffset % PAGE);
    const skew = Number(mmapOffset - aligned);
    const total = Number(size) + skew;
    // Touching a mapping past the end of its file raises SIGBUS: refuse regions larger than
    // their (regular or memfd) file up front.
    const st = fs.fstatSync(fd);
    if (st.isFile() && st.size < Number(mmapOffset + size)) {
      throw new ProtocolError(`memory region needs ${mmapOffset + size} bytes of its fd, which has ${st.size}`);
    }
    const c = sys.constants;
    let writable = true;
    const chunks: ArrayBuffer[] = [];
    try {
      for (let start = 0; start < total; start += CHUNK_STEP) {
        const len = Math.min(total, start + CHUNK_STEP + CHUNK_OVERLAP) - start;
        const at = Number(aligned) + start;
        try {
          chunks.push(sys.mmap(fd, at, len, writable ? c.PROT_READ | c.PROT_WRITE : c.PROT_READ, c.MAP_SHARED));
        } catch (e) {
          // An fd opened read-only (a file the front-end maps read-only) gives a read-only region.
          if (!(writable && start === 0 && isSysError(e, 'EACCES'))) throw e;
          writable = false;
          chunks.push(sys.mmap(fd, at, len, c.PROT_READ, c.MAP_SHARED));
        }
      }
    } catch (e) {
      for (const ab of chunks) sys.munmap(ab);
      throw e;
    }
    return new MemoryRegion(
      { guestPhys: Number(guestPhys), size: Number(size), userAddr: Number(userAddr), mmapOffset: Number(mmapOffset), skew, writable },
      chunks,
    );
  }

  get mapped(): boolean {
    return this.chunks !== null;
  }

  /** Bytes from `offset` (region-relative, inside the region) that one view can cover. */
  contiguous(offset: number): number {
    const p = this.skew + offset;
    const i = Math.floor(p / CHUNK_STEP);
    const chunkEnd = Math.min(this.total, (i + 1) * CHUNK_STEP + CHUNK_OVERLAP);
    return Math.min(this.size - offset, chunkEnd - p);
  }

  /** A view of [offset, offset+len) of this region (offset relative to the region start). */
  view(offset: number, len: number): Buffer {
    if (!this.chunks) throw new MemoryError('memory region is unmapped');
    if (offset < 0 || len < 0 || offset + len > this.size) {
      throw new MemoryError(`range ${offset}+${len} outside region of ${this.size} bytes`);
    }
    const p = this.skew + offset;
    const i = Math.floor(p / CHUNK_STEP);
    const ab = this.chunks[i]!;
    const at = p - i * CHUNK_STEP;
    if (at + len > ab.byteLength) throw new MemoryError(`range ${offset}+${len} is not contiguous in our mapping`);
    return Buffer.from(ab, at, len);
  }

  /** A table starts holding this region. */
  hold(): void {
    this.holders++;
  }

  /** A table that held this region is done with it; the last one unmaps it. */
  letGo(): void {
    if (--this.holders <= 0) this.unmap();
  }

  /** Unmaps now (a region no table ever held, or teardown). */
  unmap(): void {
    if (this.chunks) {
      for (const ab of this.chunks) sys.munmap(ab);
      this.chunks = null;
    }
  }

  /** The region REM_MEM_REG names: guest address, user address and size (not the offset). */
  sameAs(d: MemRegionDesc): boolean {
    return BigInt(this.guestPhys) === d.guestPhys && BigInt(this.size) === d.size && BigInt(this.userAddr) === d.userAddr;
  }
}

/**
 * One immutable set of regions. Replacing the table creates a new GuestMemory; the old one is
 * retired. A table is done when it is retired and no in-flight request holds it; each region is
 * unmapped when the last table holding it is done, so a request keeps every region it may touch
 * mapped whatever the front-end sends meanwhile.
 */
export class GuestMemory {
  readonly regions: readonly MemoryRegion[];
  private refs = 1;
  private retired = false;

  /**
   * Takes a hold on each region. Throws (holding nothing) when regions overlap in guest-physical
   * space or exceed `limits`.
   */
  constructor(regions: MemoryRegion[], readonly limits: Readonly<MemoryLimits> = DEFAULT_MEMORY_LIMITS) {
    // Sorted by guest address for translation; overlap in guest space is refused.
    const sorted = [...regions].sort((a, b) => a.guestPhys - b.guestPhys);
    for (let i = 1; i < sorted.length; i++) {
      const p = sorted[i - 1]!;
      if (p.guestPhys + p.size > sorted[i]!.guestPhys) throw new ProtocolError('memory regions overlap in guest-physical space');
    }
    if (sorted.length > limits.maxRegions) {
      throw new ProtocolError(`${sorted.length} memory regions: more than the ${limits.maxRegions} slots announced (GET_MAX_MEM_SLOTS)`);
    }
    const total = sorted.reduce((a, r) => a + r.size, 0);
    if (total > limits.maxTotalBytes) throw new ProtocolError(`memory regions of ${total} bytes in all: more than the limit of ${limits.maxTotalBytes}`);
    this.regions = sorted;
    for (const r of sorted) r.hold();
  }

  static empty(limits: Readonly<MemoryLimits> = DEFAULT_MEMORY_LIMITS): GuestMemory {
    return new GuestMemory([], limits);
  }

  /**
   * Maps each region from its fd. The fds are always closed (the mappings keep the memory);
   * on failure every mapping made so far is undone.
   */
  static fromTable(descs: MemRegionDesc[], fds: number[], limits: Readonly<MemoryLimits> = DEFAULT_MEMORY_LIMITS): GuestMemory {
    try {
      if (descs.length !== fds.length) throw new ProtocolError(`mem table: ${descs.length} regions but ${fds.length} fds`);
      if (descs.length > limits.maxRegions) throw new ProtocolError(`mem table: ${descs.length} regions, more than ${limits.maxRegions} slots`);
      const mapped: MemoryRegion[] = [];
      try {
        descs.forEach((d, i) => mapped.push(MemoryRegion.map(d, fds[i]!, limits)));
        return new GuestMemory(mapped, limits);
      } catch (e) {
        for (const r of mapped) r.unmap();
        throw e;
      }
    } finally {
      for (const fd of fds) closeQuietly(fd);
    }
  }

  /** A new table with one more region (ADD_MEM_REG). Shares the existing mappings. */
  withRegion(region: MemoryRegion): GuestMemory {
    return new GuestMemory([...this.regions, region], this.limits);
  }

  /** A new table without the region matching `d` (REM_MEM_REG), or null if none matches. */
  withoutRegion(d: MemRegionDesc): GuestMemory | null {
    const idx = this.regions.findIndex((r) => r.sameAs(d));
    if (idx < 0) return null;
    return new GuestMemory(this.regions.filter((_, i) => i !== idx), this.limits);
  }

  /** Holds the table (for an in-flight request); pair with release(). */
  acquire(): this {
    this.refs++;
    return this;
  }

  release(): void {
    if (--this.refs === 0 && this.retired) this.done();
  }

  /** The owner lets go of this table (a successor replaced it, or the connection ended). */
  retire(): void {
    if (this.retired) return;
    this.retired = true;
    this.release();
  }

  private done(): void {
    for (const r of this.regions) r.letGo();
  }

  get size(): number {
    return this.regions.reduce((a, r) => a + r.size, 0);
  }

  private findGpa(gpa: number): MemoryRegion | undefined {
    const rs = this.regions;
    // Sorted by guest address: binary search (up to hundreds of regions with shared-memory echoes).
    let lo = 0;
    let hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = rs[mid]!;
      if (gpa < r.guestPhys) hi = mid - 1;
      else if (gpa >= r.guestPhys + r.size) lo = mid + 1;
      else return r;
    }
    return undefined;
  }

  /**
   * Views covering guest-physical [gpa, gpa+len), split where regions meet. Throws MemoryError
   * if any byte is outside guest memory (or, for a buffer the device writes, in a read-only
   * region). len 0 gives [].
   */
  gpaSlices(gpa: bigint | number, len: number, forWrite = false): Buffer[] {
    const out: Buffer[] = [];
    this.pushGpaSlices(gpa, len, out, forWrite);
    return out;
  }

  /** gpaSlices() appending to `out` (no intermediate array); returns how many views it added. */
  pushGpaSlices(gpa: bigint | number, len: number, out: Buffer[], forWrite = false): number {
    if (len === 0) return 0;
    if (len < 0 || !Number.isInteger(len)) throw new MemoryError(`bad length ${len}`);
    const start = typeof gpa === 'bigint' ? (gpa > MAX_SAFE ? -1 : Number(gpa)) : gpa;
    if (!(start >= 0) || start + len > Number.MAX_SAFE_INTEGER) throw new MemoryError(`guest address 0x${gpa.toString(16)} out of range`);
    const first = out.length;
    let at = start;
    let left = len;
    while (left > 0) {
      const r = this.findGpa(at);
      if (!r) throw new MemoryError(`guest address 0x${at.toString(16)} (+${left}) is outside guest memory`);
      if (forWrite && !r.writable) throw new MemoryError(`guest address 0x${at.toString(16)} is in a read-only region`);
      const off = at - r.guestPhys;
      const n = Math.min(left, r.contiguous(off));
      out.push(r.view(off, n));
      at += n;
      left -= n;
    }
    return out.length - first;
  }

  /** One contiguous view of front-end virtual [uva, uva+len) (ring locations: written too). */
  uvaView(uva: bigint | number, len: number): Buffer {
    const start = typeof uva === 'bigint' ? (uva > MAX_SAFE ? -1 : Number(uva)) : uva;
    if (start < 0 || len <= 0) throw new MemoryError(`front-end address 0x${uva.toString(16)} out of range`);
    for (const r of this.regions) {
      if (start >= r.userAddr && start + len <= r.userAddr + r.size) {
        if (!r.writable) throw new MemoryError(`front-end address 0x${start.toString(16)} is in a read-only region`);
        return r.view(start - r.userAddr, len);
      }
    }
    throw new MemoryError(`front-end address 0x${start.toString(16)} (+${len}) is not inside one memory region`);
  }

  /** One contiguous view of guest-physical [gpa, gpa+len), or throws (indirect tables). */
  gpaView(gpa: bigint | number, len: number): Buffer {
    const start = typeof gpa === 'bigint' ? (gpa > MAX_SAFE ? -1 : Number(gpa)) : gpa;
    if (start < 0 || len <= 0) throw new MemoryError(`guest address 0x${gpa.toString(16)} out of range`);
    const r = this.findGpa(start);
    if (!r || start + len > r.guestPhys + r.size) throw new MemoryError(`guest address 0x${start.toString(16)} (+${len}) is not inside one memory region`);
    return r.view(start - r.guestPhys, len);
  }
}

export function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    /* already closed */
  }
}
