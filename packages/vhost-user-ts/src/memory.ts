// Guest memory table: the regions the front-end shares with us (SET_MEM_TABLE, ADD_MEM_REG,
// REM_MEM_REG), each mmapped from its fd, with strict translation of guest-physical addresses
// (descriptor buffers) and front-end virtual addresses (ring locations).
import fs from 'node:fs';
import { sys } from './sys.js';
import { MAX_MEM_SLOTS, ProtocolError, type MemRegionDesc } from './protocol.js';

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
/** Largest single region we map (1 TiB). */
const MAX_REGION = 1024n * 1024n * 1024n * 1024n;

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
  readonly mmapOffset: number;
  private chunks: ArrayBuffer[] | null;
  private readonly total: number;

  private constructor(d: { guestPhys: number; size: number; userAddr: number; mmapOffset: number }, chunks: ArrayBuffer[]) {
    this.guestPhys = d.guestPhys;
    this.size = d.size;
    this.userAddr = d.userAddr;
    this.mmapOffset = d.mmapOffset;
    this.total = d.size + d.mmapOffset;
    this.chunks = chunks;
  }

  /**
   * Maps `size + mmap_offset` bytes of `fd` from offset 0 (the layout QEMU uses) and keeps the
   * part from `mmap_offset`. The fd is not closed here.
   */
  static map(desc: MemRegionDesc, fd: number): MemoryRegion {
    const { guestPhys, size, userAddr, mmapOffset } = desc;
    if (size === 0n) throw new ProtocolError('memory region of size 0');
    if (size > MAX_REGION) throw new ProtocolError(`memory region of ${size} bytes is too large`);
    if (guestPhys + size > MAX_SAFE || userAddr + size > MAX_SAFE || mmapOffset + size > MAX_SAFE) {
      throw new ProtocolError('memory region addresses out of range');
    }
    const c = sys.constants;
    const total = Number(size + mmapOffset);
    // Touching a mapping past the end of its file raises SIGBUS: refuse regions larger than
    // their (regular or memfd) file up front.
    const st = fs.fstatSync(fd);
    if (st.isFile() && st.size < total) throw new ProtocolError(`memory region needs ${total} bytes of its fd, which has ${st.size}`);
    const chunks: ArrayBuffer[] = [];
    try {
      for (let start = 0; start < total; start += CHUNK_STEP) {
        const len = Math.min(total, start + CHUNK_STEP + CHUNK_OVERLAP) - start;
        chunks.push(sys.mmap(fd, start, len, c.PROT_READ | c.PROT_WRITE, c.MAP_SHARED));
      }
    } catch (e) {
      for (const ab of chunks) sys.munmap(ab);
      throw e;
    }
    return new MemoryRegion(
      { guestPhys: Number(guestPhys), size: Number(size), userAddr: Number(userAddr), mmapOffset: Number(mmapOffset) },
      chunks,
    );
  }

  get mapped(): boolean {
    return this.chunks !== null;
  }

  /** Bytes from `offset` (region-relative, inside the region) that one view can cover. */
  contiguous(offset: number): number {
    const p = this.mmapOffset + offset;
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
    const p = this.mmapOffset + offset;
    const i = Math.floor(p / CHUNK_STEP);
    const ab = this.chunks[i]!;
    const at = p - i * CHUNK_STEP;
    if (at + len > ab.byteLength) throw new MemoryError(`range ${offset}+${len} is not contiguous in our mapping`);
    return Buffer.from(ab, at, len);
  }

  unmap(): void {
    if (this.chunks) {
      for (const ab of this.chunks) sys.munmap(ab);
      this.chunks = null;
    }
  }

  sameAs(d: MemRegionDesc): boolean {
    return BigInt(this.guestPhys) === d.guestPhys && BigInt(this.size) === d.size && BigInt(this.userAddr) === d.userAddr;
  }
}

/**
 * One immutable set of regions. Replacing the table creates a new GuestMemory; the old one is
 * retired and unmapped once nothing holds it (in-flight requests keep a reference).
 */
export class GuestMemory {
  readonly regions: readonly MemoryRegion[];
  private refs = 1;
  private retired = false;

  constructor(regions: MemoryRegion[]) {
    // Sorted by guest address for translation; overlap in guest space is refused.
    const sorted = [...regions].sort((a, b) => a.guestPhys - b.guestPhys);
    for (let i = 1; i < sorted.length; i++) {
      const p = sorted[i - 1]!;
      if (p.guestPhys + p.size > sorted[i]!.guestPhys) throw new ProtocolError('memory regions overlap in guest-physical space');
    }
    if (sorted.length > MAX_MEM_SLOTS) throw new ProtocolError(`more than ${MAX_MEM_SLOTS} memory regions`);
    this.regions = sorted;
  }

  static empty(): GuestMemory {
    return new GuestMemory([]);
  }

  /**
   * Maps each region from its fd. The fds are always closed (the mappings keep the memory);
   * on failure every mapping made so far is undone.
   */
  static fromTable(descs: MemRegionDesc[], fds: number[]): GuestMemory {
    try {
      if (descs.length !== fds.length) throw new ProtocolError(`mem table: ${descs.length} regions but ${fds.length} fds`);
      const mapped: MemoryRegion[] = [];
      try {
        descs.forEach((d, i) => mapped.push(MemoryRegion.map(d, fds[i]!)));
        return new GuestMemory(mapped);
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
    return new GuestMemory([...this.regions, region]);
  }

  /** A new table without the region matching `d` (REM_MEM_REG), and the removed region. */
  withoutRegion(d: MemRegionDesc): { memory: GuestMemory; removed: MemoryRegion } | null {
    const idx = this.regions.findIndex((r) => r.sameAs(d));
    if (idx < 0) return null;
    const rest = this.regions.filter((_, i) => i !== idx);
    return { memory: new GuestMemory(rest), removed: this.regions[idx]! };
  }

  /** Holds the table (for an in-flight request); pair with release(). */
  acquire(): this {
    this.refs++;
    return this;
  }

  release(): void {
    if (--this.refs === 0 && this.retired) this.unmapAll();
  }

  /**
   * The owner lets go of this table. `keep` lists regions that live on in a successor table
   * (ADD/REM_MEM_REG) and must not be unmapped.
   */
  retire(keep: readonly MemoryRegion[] = []): void {
    if (this.retired) return;
    this.retired = true;
    this.keep = new Set(keep);
    this.release();
  }

  private keep = new Set<MemoryRegion>();

  private unmapAll(): void {
    for (const r of this.regions) if (!this.keep.has(r)) r.unmap();
  }

  get size(): number {
    return this.regions.reduce((a, r) => a + r.size, 0);
  }

  private findGpa(gpa: number): MemoryRegion | undefined {
    // Few regions: a linear scan is fastest.
    for (const r of this.regions) if (gpa >= r.guestPhys && gpa < r.guestPhys + r.size) return r;
    return undefined;
  }

  /**
   * Views covering guest-physical [gpa, gpa+len), split where regions meet. Throws MemoryError
   * if any byte is outside guest memory. len 0 gives [].
   */
  gpaSlices(gpa: bigint | number, len: number): Buffer[] {
    const out: Buffer[] = [];
    this.pushGpaSlices(gpa, len, out);
    return out;
  }

  /** gpaSlices() appending to `out` (no intermediate array); returns how many views it added. */
  pushGpaSlices(gpa: bigint | number, len: number, out: Buffer[]): number {
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
      const off = at - r.guestPhys;
      const n = Math.min(left, r.contiguous(off));
      out.push(r.view(off, n));
      at += n;
      left -= n;
    }
    return out.length - first;
  }

  /** One contiguous view of front-end virtual [uva, uva+len) (ring locations). */
  uvaView(uva: bigint | number, len: number): Buffer {
    const start = typeof uva === 'bigint' ? (uva > MAX_SAFE ? -1 : Number(uva)) : uva;
    if (start < 0 || len <= 0) throw new MemoryError(`front-end address 0x${uva.toString(16)} out of range`);
    for (const r of this.regions) {
      if (start >= r.userAddr && start + len <= r.userAddr + r.size) return r.view(start - r.userAddr, len);
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
