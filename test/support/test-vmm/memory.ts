// Guest memory for the test VMM: one memfd, mapped MAP_SHARED in this process, presented to the
// back-end as one or more regions at guest-physical addresses with gaps between them, so a
// back-end that confuses guest-physical addresses, file offsets and front-end addresses fails.
import fs from 'node:fs';
import { native } from '../native.js';
import type { MemRegionDesc } from './protocol.js';

const C = native.constants;

export interface GuestMemoryOptions {
  /** Total bytes (rounded up to a page multiple per region). Default 64 MiB. */
  size?: number;
  /** Number of regions the memory is split into. Default 2. */
  regions?: number;
  /** Guest-physical address of the first region. Default 0x4000_0000 (1 GiB). */
  base?: bigint;
  /** Guest-physical gap between regions. Default 256 MiB. */
  gap?: bigint;
}

export interface Region extends MemRegionDesc {
  /** Offset of this region inside our own mapping (and inside the memfd). */
  localOffset: number;
  length: number;
}

interface FreeBlock { off: number; len: number }

/** First-fit allocator with coalescing over one region's local offsets. */
class RegionAllocator {
  private free: FreeBlock[];
  constructor(private readonly start: number, private readonly len: number) {
    this.free = [{ off: start, len }];
  }
  alloc(size: number, align: number): number | null {
    for (let i = 0; i < this.free.length; i++) {
      const b = this.free[i]!;
      const aligned = Math.ceil(b.off / align) * align;
      const pad = aligned - b.off;
      if (b.len < pad + size) continue;
      const rest = b.len - pad - size;
      const repl: FreeBlock[] = [];
      if (pad > 0) repl.push({ off: b.off, len: pad });
      if (rest > 0) repl.push({ off: aligned + size, len: rest });
      this.free.splice(i, 1, ...repl);
      return aligned;
    }
    return null;
  }
  release(off: number, size: number): void {
    let i = 0;
    while (i < this.free.length && this.free[i]!.off < off) i++;
    this.free.splice(i, 0, { off, len: size });
    const cur = this.free[i]!;
    const next = this.free[i + 1];
    if (next && cur.off + cur.len === next.off) { cur.len += next.len; this.free.splice(i + 1, 1); }
    const prev = this.free[i - 1];
    if (prev && prev.off + prev.len === cur.off) { prev.len += cur.len; this.free.splice(i, 1); }
  }
  contains(off: number): boolean { return off >= this.start && off < this.start + this.len; }
  freeBytes(): number { return this.free.reduce((s, b) => s + b.len, 0); }
}

export class GuestMemory {
  readonly fd: number;
  readonly size: number;
  readonly regions: Region[];
  private mapping: ArrayBuffer;
  private readonly allocators: RegionAllocator[];
  private readonly sizes = new Map<bigint, number>();
  private closed = false;
  readonly bytes: Buffer;

  constructor(opts: GuestMemoryOptions = {}) {
    const page = native.pageSize;
    const nreg = Math.max(1, opts.regions ?? 2);
    const per = Math.ceil((opts.size ?? 64 * 1024 * 1024) / nreg / page) * page;
    this.size = per * nreg;
    const base = opts.base ?? 0x4000_0000n;
    const gap = opts.gap ?? 0x1000_0000n;
    this.fd = native.memfdCreate('test-vmm-guest-ram', C.MFD_CLOEXEC);
    try {
      native.ftruncate(this.fd, this.size);
      this.mapping = native.mmap(this.fd, 0, this.size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED);
    } catch (e) {
      fs.closeSync(this.fd);
      throw e;
    }
    this.bytes = Buffer.from(this.mapping);
    const va = native.addressOf(this.mapping);
    this.regions = [];
    this.allocators = [];
    for (let i = 0; i < nreg; i++) {
      const localOffset = i * per;
      this.regions.push({
        guestPhys: base + BigInt(i) * (BigInt(per) + gap),
        size: BigInt(per),
        userAddr: va + BigInt(localOffset),
        mmapOffset: BigInt(localOffset),
        localOffset,
        length: per,
      });
      this.allocators.push(new RegionAllocator(localOffset, per));
    }
  }

  /** Guest-physical address → offset in `bytes`, or null when outside every region. */
  toLocal(gpa: bigint, len = 1): number | null {
    for (const r of this.regions) {
      if (gpa >= r.guestPhys && gpa + BigInt(len) <= r.guestPhys + r.size) return r.localOffset + Number(gpa - r.guestPhys);
    }
    return null;
  }

  localToGpa(off: number): bigint {
    for (const r of this.regions) if (off >= r.localOffset && off < r.localOffset + r.length) return r.guestPhys + BigInt(off - r.localOffset);
    throw new RangeError(`offset ${off} outside guest memory`);
  }

  /** Front-end virtual address of a guest-physical address (what SET_VRING_ADDR carries). */
  toUserAddr(gpa: bigint): bigint {
    for (const r of this.regions) if (gpa >= r.guestPhys && gpa < r.guestPhys + r.size) return r.userAddr + (gpa - r.guestPhys);
    throw new RangeError(`gpa 0x${gpa.toString(16)} outside guest memory`);
  }

  /** Allocates `size` bytes inside one region; returns the guest-physical address. */
  alloc(size: number, align = 8, preferRegion?: number): bigint {
    if (size <= 0) size = 1;
    const order = this.allocators.map((_, i) => i);
    if (preferRegion !== undefined) order.unshift(order.splice(preferRegion % order.length, 1)[0]!);
    for (const i of order) {
      const off = this.allocators[i]!.alloc(size, align);
      if (off !== null) {
        const gpa = this.localToGpa(off);
        this.sizes.set(gpa, size);
        return gpa;
      }
    }
    throw new Error(`guest memory exhausted (wanted ${size} bytes)`);
  }

  free(gpa: bigint): void {
    const size = this.sizes.get(gpa);
    if (size === undefined) throw new Error(`free of unallocated gpa 0x${gpa.toString(16)}`);
    this.sizes.delete(gpa);
    const off = this.toLocal(gpa)!;
    this.allocators.find((a) => a.contains(off))!.release(off, size);
  }

  /** A view of guest memory (throws outside it). */
  view(gpa: bigint, len: number): Buffer {
    const off = this.toLocal(gpa, len);
    if (off === null) throw new RangeError(`gpa range 0x${gpa.toString(16)}+${len} outside guest memory`);
    return this.bytes.subarray(off, off + len);
  }

  freeBytes(): number { return this.allocators.reduce((s, a) => s + a.freeBytes(), 0); }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.munmap(this.mapping);
    fs.closeSync(this.fd);
  }
}
