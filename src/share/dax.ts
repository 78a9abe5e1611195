// DAX window bookkeeping, one per guest connection: which window ranges map which backing, so
// that REMOVEMAPPING, a remap of the same range, and a guest reset release exactly what was
// mapped. The mapping itself is done by the VMM, asked through the connection's MapChannel.

import type { DaxWindowInfo } from '../fuse/filesystem.js';
import { PAGE_SIZE } from '../native/index.js';
import type { Backing, MapPiece } from './backing.js';

/**
 * The messages a VMM maps a DAX window with: vhost-user SHMEM_MAP/SHMEM_UNMAP (the SHMEM
 * protocol feature) or the older virtio-fs FS_MAP/FS_UNMAP.
 */
export type DaxProtocol = 'shmem' | 'fs-map';

/** The VMM side of a DAX window, as the transport offers it over its back-end channel. */
export interface MapChannel {
  /** Bytes of the window. */
  readonly size: number;
  /** Map `pieces` back to back starting at window offset `windowOffset`, read-only. */
  map(windowOffset: number, pieces: MapPiece[]): Promise<void>;
  /** Replace [windowOffset, windowOffset+length) with inaccessible memory. */
  unmap(windowOffset: number, length: number): Promise<void>;
}

export interface DaxWindowOptions {
  /** Files choose DAX one by one (FUSE_ATTR_DAX) in this window. */
  inodeDax?: boolean;
  /** A backing lost its last pin here (the registry may now evict it). */
  onUnpinned?: (b: Backing) => void;
}

interface WindowRange {
  start: number;
  length: number;
  backing: Backing;
}

export class DaxWindowError extends Error {
  constructor(readonly errno: 'EINVAL' | 'EIO' | 'ENOMEM', message: string) {
    super(message);
  }
}

export class DaxWindow implements DaxWindowInfo {
  /** Sorted by start; ranges never overlap. */
  private ranges: WindowRange[] = [];
  /** Mappings start and end on host pages. */
  readonly alignmentShift = Math.log2(PAGE_SIZE);
  readonly inodeDax: boolean;
  private readonly onUnpinned: (b: Backing) => void;

  constructor(private readonly channel: MapChannel, opts: DaxWindowOptions = {}) {
    this.inodeDax = opts.inodeDax ?? false;
    this.onUnpinned = opts.onUnpinned ?? (() => {});
  }

  get size(): number {
    return this.channel.size;
  }

  get mappedRanges(): number {
    return this.ranges.length;
  }

  /** Live ranges counted per backing domain (for stats). */
  rangesByDomain(): Map<string, number> {
    const out = new Map<string, number>();
    for (const r of this.ranges) out.set(r.backing.domain, (out.get(r.backing.domain) ?? 0) + 1);
    return out;
  }

  /**
   * FUSE_SETUPMAPPING: map backing bytes [fileOffset, fileOffset+length) at window offset
   * `windowOffset`. Both offsets and the length must be page-aligned; the range must lie inside
   * the window and start before the backing's rounded-up end.
   */
  async setup(backing: Backing, fileOffset: number, length: number, windowOffset: number): Promise<void> {
    if (![fileOffset, length, windowOffset].every((v) => Number.isSafeInteger(v) && v >= 0)) {
      throw new DaxWindowError('EINVAL', 'mapping arguments out of range');
    }
    if (fileOffset % PAGE_SIZE || windowOffset % PAGE_SIZE || length === 0) {
      throw new DaxWindowError('EINVAL', 'mapping is not page-aligned');
    }
    if (windowOffset + length > this.size) throw new DaxWindowError('EINVAL', 'mapping exceeds the DAX window');
    if (fileOffset >= backing.size) throw new DaxWindowError('EINVAL', 'mapping starts past EOF');
    let pieces: MapPiece[];
    try {
      pieces = await backing.mapPieces(fileOffset, length);
    } catch (err) {
      throw new DaxWindowError('EIO', `cannot prepare the backing: ${(err as Error).message}`);
    }
    const mapped = pieces.reduce((n, p) => n + p.length, 0);
    // The guest may remap a range it already uses: what was there goes first.
    await this.release(windowOffset, length, false);
    try {
      await this.channel.map(windowOffset, pieces);
    } catch (err) {
      throw new DaxWindowError('EIO', `the VMM refused the mapping: ${(err as Error).message}`);
    }
    // A mapping shorter than asked (EOF) leaves the rest of the range unmapped (inaccessible).
    this.insert({ start: windowOffset, length: mapped, backing });
  }

  /** FUSE_REMOVEMAPPING of one range. */
  async remove(windowOffset: number, length: number): Promise<void> {
    if (!Number.isSafeInteger(windowOffset) || !Number.isSafeInteger(length) || windowOffset < 0 || length <= 0 || windowOffset + length > this.size) {
      throw new DaxWindowError('EINVAL', 'removal outside the DAX window');
    }
    await this.release(windowOffset, length, true);
  }

  /** Guest reset or disconnect: the VMM drops the window itself; we only unpin. */
  reset(): void {
    const ranges = this.ranges;
    this.ranges = [];
    for (const r of ranges) this.unpin(r.backing);
  }

  private insert(r: WindowRange): void {
    r.backing.mappings++;
    let i = 0;
    while (i < this.ranges.length && this.ranges[i]!.start < r.start) i++;
    this.ranges.splice(i, 0, r);
  }

  private unpin(b: Backing): void {
    b.mappings--;
    if (!b.pinned) this.onUnpinned(b);
  }

  /** Drops bookkeeping for every range intersecting [start, start+length); splits partial overlaps. */
  private async release(start: number, length: number, askVmm: boolean): Promise<void> {
    const end = start + length;
    const kept: WindowRange[] = [];
    const released: Backing[] = [];
    let touched = false;
    for (const r of this.ranges) {
      const rEnd = r.start + r.length;
      if (rEnd <= start || r.start >= end) {
        kept.push(r);
        continue;
      }
      touched = true;
      released.push(r.backing);
      if (r.start < start) {
        kept.push({ start: r.start, length: start - r.start, backing: r.backing });
        r.backing.mappings++;
      }
      if (rEnd > end) {
        kept.push({ start: end, length: rEnd - end, backing: r.backing });
        r.backing.mappings++;
      }
    }
    kept.sort((a, b) => a.start - b.start);
    this.ranges = kept;
    for (const b of released) this.unpin(b);
    if (askVmm && touched) await this.channel.unmap(start, length);
  }
}
