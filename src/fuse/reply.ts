// The memory a FUSE reply is written into. The transport supplies one ReplyWriter per request —
// over a virtqueue chain's device-writable guest buffers (virtio-fs), over a pooled buffer
// (/dev/fuse) — and decides where the bytes land; the server writes the reply through it: the
// body first, from byte 16 on, then the fuse_out_header, whose len counts what was written. A
// filesystem sees only the DataWriter side, for FUSE_READ: it never learns where the bytes go,
// so a copy out of the image lands in guest memory directly, with no buffer in between.
import { Errno, OUT_HEADER_SIZE } from './abi.js';
import { FuseError } from './filesystem.js';

/**
 * Produces bytes of a stream into target[at, at + length): the `length` bytes that follow the
 * first `done` ones. Returns how many it wrote, short only where the stream ends.
 */
export type Fill = (target: Uint8Array, at: number, length: number, done: number) => number;

/** The data area of a reply, as a filesystem writes a READ's bytes into it. */
export interface DataWriter {
  /** Bytes written so far. */
  readonly written: number;
  /** Appends `data`. If the reply has no room for all of it, the reply becomes E2BIG. */
  write(data: Buffer): void;
  /**
   * Appends up to `count` bytes that `fill` writes straight into the reply's memory, one call
   * per contiguous piece, and returns how many (short only where the stream ends). Like
   * write(), more bytes than the reply has room for make it E2BIG.
   */
  writeFrom(fill: Fill, count: number): number;
  /** Contiguous pieces of memory the next `count` bytes would be written into (fill calls). */
  piecesFor(count: number): number;
}

/** One byte the room check of writeFrom() asks `fill` for (a short reply is fine only at the end). */
const PROBE = new Uint8Array(1);
/** A header, assembled here when the destination splits it over pieces. */
const HEADER = Buffer.alloc(OUT_HEADER_SIZE);

export class ReplyWriter implements DataWriter {
  private segments: readonly Buffer[] = [];
  private capacity = 0;
  /** The cursor: reply offset, and the same place as (segment index, offset in it). */
  private pos = 0;
  private seg = 0;
  private segOff = 0;
  /** Bytes of the finished reply (header included); 0 while unfinished or when no reply is due. */
  length = 0;
  /** The body did not fit: the reply is E2BIG. */
  overflowed = false;
  /** A write came after the memory stopped being the reply's (see live()): it was dropped. */
  stale = false;

  constructor(segments: readonly Buffer[] = []) {
    this.reset(segments);
  }

  /** Starts a new reply into `segments` (in order; any may be empty). */
  reset(segments: readonly Buffer[]): void {
    this.segments = segments;
    let capacity = 0;
    for (let i = 0; i < segments.length; i++) capacity += segments[i]!.length;
    this.capacity = capacity;
    this.length = 0;
    this.overflowed = false;
    this.stale = false;
    this.seek(OUT_HEADER_SIZE);
  }

  /** Starts a new reply into the same memory. */
  restart(): void {
    this.reset(this.segments);
  }

  /** Whether the memory is still this reply's to write; a transport over guest memory says no once the ring was reset. */
  protected live(): boolean {
    return true;
  }

  get written(): number {
    return Math.max(0, this.pos - OUT_HEADER_SIZE);
  }

  /** Room left for the body. */
  get available(): number {
    return Math.max(0, this.capacity - this.pos);
  }

  /** The finished reply as one buffer, when it lies in one (the /dev/fuse case). */
  get bytes(): Buffer | undefined {
    const s = this.segments[0];
    return s && s.length >= this.length ? s.subarray(0, this.length) : undefined;
  }

  private seek(pos: number): void {
    this.pos = Math.min(pos, this.capacity);
    let left = this.pos;
    let i = 0;
    while (i < this.segments.length && left >= this.segments[i]!.length) {
      left -= this.segments[i]!.length;
      i++;
    }
    this.seg = i;
    this.segOff = left;
  }

  private usable(): boolean {
    if (this.overflowed || this.stale) return false;
    if (!this.live()) {
      this.stale = true;
      return false;
    }
    return true;
  }

  write(data: Buffer): void {
    if (data.length === 0 || !this.usable()) return;
    if (data.length > this.capacity - this.pos) {
      this.overflowed = true;
      return;
    }
    let from = 0;
    while (from < data.length) {
      const s = this.segments[this.seg];
      if (!s) return this.lost();
      const n = Math.min(s.length - this.segOff, data.length - from);
      if (n > 0) data.copy(s, this.segOff, from, from + n);
      from += n;
      this.advance(n);
    }
  }

  writeFrom(fill: Fill, count: number): number {
    if (count <= 0 || !this.usable()) return 0;
    const take = Math.min(count, this.capacity - this.pos);
    let done = 0;
    while (done < take) {
      const s = this.segments[this.seg];
      if (!s) return (this.lost(), done);
      const n = Math.min(s.length - this.segOff, take - done);
      if (n === 0) {
        this.advance(0);
        continue;
      }
      const got = fill(s, this.segOff, n, done);
      if (!Number.isSafeInteger(got) || got < 0 || got > n) throw new FuseError(Errno.EIO, `a read filled ${got} of ${n} bytes`);
      done += got;
      this.advance(got);
      if (got < n) return done; // the stream ended
    }
    // Less room than asked for: the reply fits only if the stream ends right here.
    if (take < count && fill(PROBE, 0, 1, done) > 0) this.overflowed = true;
    return done;
  }

  piecesFor(count: number): number {
    let left = Math.min(count, this.capacity - this.pos);
    let pieces = 0;
    let off = this.segOff;
    for (let i = this.seg; i < this.segments.length && left > 0; i++) {
      const n = Math.min(this.segments[i]!.length - off, left);
      if (n > 0) pieces++;
      left -= n;
      off = 0;
    }
    return pieces;
  }

  /** The memory shrank under us (a segment went away): nothing more can be written. */
  private lost(): void {
    this.stale = true;
  }

  private advance(n: number): void {
    this.pos += n;
    this.segOff += n;
    while (this.seg < this.segments.length && this.segOff >= this.segments[this.seg]!.length) {
      this.segOff -= this.segments[this.seg]!.length;
      this.seg++;
    }
  }

  /**
   * Finishes the reply: the fuse_out_header for `unique` (the request's 8 raw bytes) with
   * -`errno` (0 = success, counting the body), or E2BIG when the body did not fit. A reply
   * that cannot hold even a header is not sent (length stays 0).
   */
  end(unique: Uint8Array, errno = 0): void {
    if (errno === 0 && this.overflowed) errno = Errno.E2BIG;
    if (errno !== 0) this.seek(OUT_HEADER_SIZE);
    this.length = 0;
    if (this.capacity < OUT_HEADER_SIZE) return;
    if (this.stale || !this.live()) {
      this.stale = true;
      return;
    }
    const len = this.pos;
    const first = this.segments[0]!;
    const h = first.length >= OUT_HEADER_SIZE ? first : HEADER;
    h.writeUInt32LE(len, 0);
    h.writeInt32LE(-errno, 4);
    for (let i = 0; i < 8; i++) h[8 + i] = unique[i] ?? 0;
    if (h === HEADER) {
      let at = 0;
      for (let i = 0; at < OUT_HEADER_SIZE; i++) {
        const s = this.segments[i];
        if (!s) return this.lost();
        at += HEADER.copy(s, 0, at, Math.min(OUT_HEADER_SIZE, at + s.length));
      }
    }
    this.length = len;
  }
}
