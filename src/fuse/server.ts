// Transport-neutral FUSE server: decodes one request (fuse_in_header + arguments) with a
// bounds-checked cursor, calls the filesystem, and encodes the reply as iovecs. The same server
// runs over /dev/fuse (host mount) and over virtqueues (virtio-fs). handle() never throws:
// malformed input gets an errno reply (or no reply when not even the header is readable).
import {
  ATTR_OUT_SIZE, COMPAT_22_INIT_OUT_SIZE, COMPAT_ATTR_OUT_SIZE, COMPAT_ENTRY_OUT_SIZE, COMPAT_INIT_OUT_SIZE,
  COMPAT_READ_IN_SIZE, COMPAT_STATFS_SIZE, DIRENT_HEADER_SIZE, ENTRY_OUT_SIZE, Errno, FUSE_GETATTR_FH,
  FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, FUSE_MIN_MINOR_VERSION, GETXATTR_OUT_SIZE, IN_HEADER_SIZE,
  INIT_OUT_SIZE, InitFlag, KSTATFS_SIZE, LSEEK_OUT_SIZE, OPCODE_NAMES, OPEN_OUT_SIZE, OUT_HEADER_SIZE, Opcode,
  SEEK_CUR, SEEK_DATA, SEEK_END, SEEK_HOLE, SEEK_SET, STATX_BASIC_STATS, STATX_OUT_SIZE, WRITE_OPCODES,
  devMajor, devMinor, direntPlusSize, direntSize, encodeAttr, encodeDirent, encodeEntryOut, readU64,
  splitTimeout, writeU64,
} from './abi.js';
import type { AttrOut, DirEntryOut, FuseFilesystem, InitInfo, RequestContext, StatxOut } from './filesystem.js';
import { FuseError, errnoOf } from './filesystem.js';
import { replyBytes } from './reply-bytes.js';

export interface FuseLogger {
  debug(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
}

export interface FuseServerOptions {
  /** Advertised max_write (default 1 MiB; nothing is ever written, but it sizes the channel). */
  maxWrite?: number;
  /** Upper bound for max_readahead (default: whatever the kernel offers). */
  maxReadahead?: number;
  /** max_pages (default 256 = 1 MiB requests with 4 KiB pages). */
  maxPages?: number;
  /** log2 of the DAX mapping alignment; when set and offered, FUSE_MAP_ALIGNMENT is replied. */
  mapAlignment?: number;
  /** Reply FUSE_HAS_INODE_DAX (per-inode DAX via FUSE_ATTR_DAX) when offered. */
  inodeDax?: boolean;
  /** Reply FUSE_POSIX_ACL when offered (default true: the kernel enforces ACLs as EROFS does). */
  posixAcl?: boolean;
  /** READDIRPLUS: 'auto' (default), 'always', or 'never'. */
  readdirplus?: 'auto' | 'always' | 'never';
  maxBackground?: number;
  congestionThreshold?: number;
  /** Highest minor we negotiate (tests; default FUSE_KERNEL_MINOR_VERSION). */
  maxMinor?: number;
  logger?: FuseLogger;
  /**
   * Start as if INIT had already happened (a restarted daemon under a live guest session, e.g.
   * vhost-user reconnect: the guest never sends INIT again). Node ids stay valid because the
   * tree derives them from (image, nid).
   */
  resume?: boolean | Partial<Negotiated>;
}

/** What INIT settled. */
export interface Negotiated {
  major: number;
  minor: number;
  flags: bigint;
  kernelFlags: bigint;
  maxReadahead: number;
  maxWrite: number;
  maxPages: number;
  mapAlignment?: number;
}

const PAGE = 4096;
/** A READDIR reply buffer starts this big and doubles as entries need room. */
const READDIR_FIRST_BYTES = 4096;
/** Largest READ/READDIR reply we ever build, whatever a (hostile) request asks for. */
const MAX_REPLY_DATA = 32 * 1024 * 1024;

class Malformed extends Error {}

/** Bounds-checked little-endian reader over the request arguments. */
class Cursor {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}
  get remaining(): number {
    return this.buf.length - this.pos;
  }
  need(n: number): void {
    if (n < 0 || this.pos + n > this.buf.length) throw new Malformed(`truncated: need ${n} bytes, have ${this.remaining}`);
  }
  /** All the arguments, from the start (to re-parse them elsewhere). */
  whole(): Buffer {
    return this.buf;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const v = readU64(this.buf, this.pos);
    this.pos += 8;
    return v;
  }
  i64(): number {
    this.need(8);
    const v = Number(this.buf.readBigInt64LE(this.pos));
    this.pos += 8;
    return v;
  }
  skip(n: number): void {
    this.need(n);
    this.pos += n;
  }
  /** A NUL-terminated string (the NUL is consumed, not returned). */
  cstring(): Buffer {
    const end = this.buf.indexOf(0, this.pos);
    if (end < 0) throw new Malformed('unterminated name');
    const s = this.buf.subarray(this.pos, end);
    this.pos = end + 1;
    return s;
  }
}

/** Per-request options of FuseServer.handle. */
export interface HandleContext {
  queue?: number;
  /**
   * A buffer the transport lends for this request's reply data (READ fills it in place instead
   * of allocating). It must stay untouched until the transport has sent the returned iovecs.
   */
  replyBuffer?: Buffer;
  /**
   * The reply's destination memory, in order (e.g. a virtqueue chain's device-writable guest
   * buffers; the fuse_out_header goes in its first 16 bytes, wherever they are split). A READ may
   * place its data there directly, from byte 16 on: only synchronously, inside the handle /
   * handleMaybeSync call (never after an await, when the transport may no longer own the
   * memory). It then sets `placed` to the number of data bytes placed and returns just the
   * header, whose len counts them; the transport writes the returned iovecs from byte 0 as usual.
   */
  replyTo?: readonly Buffer[];
  /** Set by the server: data bytes placed in `replyTo` after the header (0 when none). */
  placed?: number;
}

/** The data area of a reply destination: `want` bytes after the out header, or null if it has less room. */
function dataSegments(dst: readonly Buffer[], want: number): Buffer[] | null {
  let skip = OUT_HEADER_SIZE;
  let left = want;
  const out: Buffer[] = [];
  for (let i = 0; i < dst.length && left > 0; i++) {
    const d = dst[i]!;
    if (skip >= d.length) {
      skip -= d.length;
      continue;
    }
    const n = Math.min(d.length - skip, left);
    out.push(skip === 0 && n === d.length ? d : d.subarray(skip, skip + n));
    skip = 0;
    left -= n;
  }
  return left > 0 ? null : out;
}

/** Writes a fuse_out_header at the start of `h`. */
function writeHeader(h: Buffer, len: number, error: number, unique: Buffer): Buffer {
  h.writeUInt32LE(len, 0);
  h.writeInt32LE(error, 4);
  unique.copy(h, 8, 0, 8);
  return h;
}

function header(len: number, error: number, unique: Buffer): Buffer {
  return writeHeader(replyBytes(OUT_HEADER_SIZE), len, error, unique);
}

export class FuseServer {
  private negotiatedState: Negotiated | undefined;
  private readonly opts: FuseServerOptions;
  private readonly log: FuseLogger | undefined;

  constructor(private readonly fs: FuseFilesystem, opts: FuseServerOptions = {}) {
    this.opts = opts;
    this.log = opts.logger;
    if (opts.resume) this.resume(opts.resume === true ? {} : opts.resume);
  }

  /** Serve without (another) INIT, with the given or default negotiated parameters. */
  resume(state: Partial<Negotiated> = {}): void {
    const maxPages = state.maxPages ?? this.opts.maxPages ?? 256;
    this.negotiatedState = {
      major: FUSE_KERNEL_VERSION,
      minor: state.minor ?? this.opts.maxMinor ?? FUSE_KERNEL_MINOR_VERSION,
      flags: state.flags ?? 0n,
      kernelFlags: state.kernelFlags ?? 0n,
      maxReadahead: state.maxReadahead ?? 0,
      maxWrite: state.maxWrite ?? Math.max(4096, this.opts.maxWrite ?? 1 << 20),
      maxPages,
      mapAlignment: state.mapAlignment ?? this.opts.mapAlignment,
    };
  }

  /** The INIT outcome, or undefined before INIT / after DESTROY. */
  get negotiated(): Negotiated | undefined {
    return this.negotiatedState;
  }

  /**
   * Handles one request. Returns the reply iovecs (fuse_out_header first, len = total), or null
   * when no reply is due (FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY, unreadable header).
   */
  async handle(request: Buffer, ctx?: HandleContext): Promise<Buffer[] | null> {
    return this.handleMaybeSync(request, ctx);
  }

  /**
   * handle() without the promise when the answer is ready at once (READ of data the filesystem
   * copies synchronously, LOOKUP, GETATTR of an in-memory tree): the reply iovecs, null, or a
   * promise of them. Never throws.
   */
  handleMaybeSync(request: Buffer, ctx?: HandleContext): Buffer[] | null | Promise<Buffer[] | null> {
    if (ctx) ctx.placed = 0;
    if (request.length < 16) {
      this.log?.warn({ bytes: request.length }, 'fuse: request shorter than a header, dropped');
      return null;
    }
    const unique = request.subarray(8, 16);
    const opcode = request.readUInt32LE(4);
    try {
      if (request.length < IN_HEADER_SIZE) throw new Malformed('truncated fuse_in_header');
      const len = request.readUInt32LE(0);
      if (len < IN_HEADER_SIZE || len > request.length) throw new Malformed(`bad header len ${len} (have ${request.length})`);
      const extBytes = request.readUInt16LE(36) * 8;
      if (IN_HEADER_SIZE + extBytes > len) throw new Malformed('extensions exceed the request');
      const rctx: RequestContext = {
        opcode,
        unique: request.readBigUInt64LE(8),
        nodeid: readU64(request, 16),
        uid: request.readUInt32LE(24),
        gid: request.readUInt32LE(28),
        pid: request.readUInt32LE(32),
        queue: ctx?.queue,
      };
      const args = request.subarray(IN_HEADER_SIZE, len - extBytes);
      const r = this.dispatchFast(rctx, new Cursor(args), unique, ctx);
      if (r instanceof Promise) {
        return r.then(undefined, (err: unknown) => {
          if (ctx) ctx.placed = 0;
          return this.failure(err, opcode, unique);
        });
      }
      return r;
    } catch (err) {
      if (ctx) ctx.placed = 0;
      return this.failure(err, opcode, unique);
    }
  }

  /** The reply (or none) for a request whose handling threw. */
  private failure(err: unknown, opcode: number, unique: Buffer): Buffer[] | null {
    if (err instanceof Malformed) {
      this.log?.warn({ opcode, op: OPCODE_NAMES[opcode], err: err.message }, 'fuse: malformed request');
      if (opcode === Opcode.FORGET || opcode === Opcode.BATCH_FORGET || opcode === Opcode.INTERRUPT) return null;
      return [header(OUT_HEADER_SIZE, -Errno.EINVAL, unique)];
    }
    const errno = errnoOf(err);
    if (!(err instanceof FuseError) && errno === Errno.EIO) {
      this.log?.error({ opcode, op: OPCODE_NAMES[opcode], err: String((err as Error)?.stack ?? err) }, 'fuse: request failed');
    }
    if (opcode === Opcode.FORGET || opcode === Opcode.BATCH_FORGET || opcode === Opcode.INTERRUPT) return null;
    return [header(OUT_HEADER_SIZE, -errno, unique)];
  }

  private reply(unique: Buffer, ...parts: Buffer[]): Buffer[] {
    if (parts.length <= 1) {
      const p = parts[0];
      return p && p.length > 0 ? [header(OUT_HEADER_SIZE + p.length, 0, unique), p] : [header(OUT_HEADER_SIZE, 0, unique)];
    }
    let len = OUT_HEADER_SIZE;
    for (const p of parts) len += p.length;
    return [header(len, 0, unique), ...parts.filter((p) => p.length > 0)];
  }

  /**
   * The hot opcodes (LOOKUP, GETATTR, READ) without an async hop when the filesystem answers
   * synchronously; everything else goes through dispatch().
   */
  private dispatchFast(ctx: RequestContext, c: Cursor, unique: Buffer, hctx?: HandleContext): Buffer[] | null | Promise<Buffer[] | null> {
    const op = ctx.opcode;
    const fs = this.fs;
    if (!this.negotiatedState) return this.dispatch(ctx, c, unique, hctx?.replyBuffer);
    switch (op) {
      case Opcode.LOOKUP: {
        const name = c.cstring();
        if (name.length > 255) return this.err(unique, Errno.ENAMETOOLONG);
        if (!fs.lookup) return this.err(unique, Errno.ENOSYS);
        const e = fs.lookup(ctx, ctx.nodeid, name);
        return e instanceof Promise ? e.then((v) => this.entryReply(unique, v)) : this.entryReply(unique, e);
      }
      case Opcode.GETATTR: {
        let fh: number | undefined;
        if (c.remaining >= 16) {
          const flags = c.u32();
          c.u32();
          const f = c.u64();
          if (flags & FUSE_GETATTR_FH) fh = f;
        }
        if (!fs.getattr) return this.err(unique, Errno.ENOSYS);
        const a = fs.getattr(ctx, ctx.nodeid, fh);
        return a instanceof Promise ? a.then((v) => this.attrReply(unique, v)) : this.attrReply(unique, a);
      }
      case Opcode.READ: {
        const dst = hctx?.replyTo;
        if (!dst || !fs.readIntoSegments) break;
        const { fh, offset, size } = this.readIn(c);
        if (offset < 0) return this.err(unique, Errno.EINVAL);
        const want = Math.min(size, this.maxData());
        if (want === 0) return this.reply(unique);
        const segs = dataSegments(dst, want);
        if (!segs) {
          // Less room than asked for: the buffered path (a short read still fits; else E2BIG).
          return this.dispatch(ctx, new Cursor(c.whole()), unique, hctx.replyBuffer);
        }
        const r = fs.readIntoSegments(ctx, ctx.nodeid, fh, offset, want, segs);
        if (typeof r === 'number') {
          if (!Number.isSafeInteger(r) || r < 0 || r > want) return this.err(unique, Errno.EIO);
          hctx.placed = r;
          return [header(OUT_HEADER_SIZE + r, 0, unique)];
        }
        // Not placed (a hook answered with buffers): the transport copies them.
        if (r instanceof Promise) {
          return r.then((d) => {
            if (typeof d === 'number') throw new FuseError(Errno.EIO, 'readIntoSegments resolved to a count after returning');
            return this.readReply(unique, d, want);
          });
        }
        return this.readReply(unique, r, want);
      }
    }
    return this.dispatch(ctx, c, unique, hctx?.replyBuffer);
  }

  /** A READ reply from data buffers, cut to `want` bytes. */
  private readReply(unique: Buffer, data: Buffer | Buffer[], want: number): Buffer[] {
    const parts = Array.isArray(data) ? data : [data];
    let total = 0;
    const out: Buffer[] = [];
    for (const p of parts) {
      if (total >= want) break;
      const take = p.length > want - total ? p.subarray(0, want - total) : p;
      out.push(take);
      total += take.length;
    }
    return this.reply(unique, ...out);
  }

  private err(unique: Buffer, errno: number): Buffer[] {
    return [header(OUT_HEADER_SIZE, -errno, unique)];
  }

  private get minor(): number {
    return this.negotiatedState?.minor ?? FUSE_KERNEL_MINOR_VERSION;
  }

  private maxData(): number {
    const n = this.negotiatedState;
    const pages = n ? n.maxPages : this.opts.maxPages ?? 256;
    return Math.min(MAX_REPLY_DATA, Math.max(PAGE, pages * PAGE));
  }

  private async dispatch(ctx: RequestContext, c: Cursor, unique: Buffer, scratch?: Buffer): Promise<Buffer[] | null> {
    const op = ctx.opcode;
    const fs = this.fs;
    if (op === Opcode.INIT) return this.init(c, unique);
    if (!this.negotiatedState) {
      if (op === Opcode.FORGET || op === Opcode.BATCH_FORGET || op === Opcode.INTERRUPT) return null;
      this.log?.warn({ op: OPCODE_NAMES[op] ?? op }, 'fuse: request before INIT');
      return this.err(unique, Errno.EIO);
    }
    if (WRITE_OPCODES.has(op)) return this.err(unique, Errno.EROFS);
    // LOOKUP and GETATTR never get here once INIT is done: dispatchFast() answers them.
    switch (op) {
      case Opcode.FORGET: {
        const n = c.u64();
        fs.forget?.(ctx.nodeid, n);
        return null;
      }
      case Opcode.BATCH_FORGET: {
        const count = c.u32();
        c.u32();
        const fit = Math.min(count, Math.floor(c.remaining / 16));
        if (fit < count) this.log?.warn({ count, fit }, 'fuse: BATCH_FORGET truncated');
        for (let i = 0; i < fit; i++) {
          const nodeid = c.u64();
          const n = c.u64();
          fs.forget?.(nodeid, n);
        }
        return null;
      }
      case Opcode.READLINK: {
        if (!fs.readlink) return this.err(unique, Errno.ENOSYS);
        const target = await fs.readlink(ctx, ctx.nodeid);
        return this.reply(unique, target);
      }
      case Opcode.OPEN: {
        const flags = c.u32();
        if ((flags & 3) !== 0 || flags & 0o1000 /* O_TRUNC */) return this.err(unique, Errno.EROFS);
        if (!fs.open) return this.err(unique, Errno.ENOSYS);
        const o = await fs.open(ctx, ctx.nodeid, flags);
        return this.reply(unique, this.openOutBuf(o.fh, o.openFlags ?? 0, o.backingId ?? 0));
      }
      case Opcode.OPENDIR: {
        const flags = c.u32();
        if ((flags & 3) !== 0) return this.err(unique, Errno.EISDIR);
        const o = fs.opendir ? await fs.opendir(ctx, ctx.nodeid, flags) : { fh: 0, openFlags: 0 };
        return this.reply(unique, this.openOutBuf(o.fh, o.openFlags ?? 0, o.backingId ?? 0));
      }
      case Opcode.READ: {
        const { fh, offset, size } = this.readIn(c);
        if (!fs.read && !fs.readInto) return this.err(unique, Errno.ENOSYS);
        if (offset < 0) return this.err(unique, Errno.EINVAL);
        const want = Math.min(size, this.maxData());
        if (want === 0) return this.reply(unique);
        let data: Buffer | Buffer[];
        if (fs.readInto && (scratch ? scratch.length >= want : !fs.read)) {
          // Straight into the transport's reply buffer (or a fresh one when there is no read()).
          const target = scratch ?? Buffer.allocUnsafe(want);
          const r = await fs.readInto(ctx, ctx.nodeid, fh, offset, want, target);
          if (typeof r === 'number') {
            if (!Number.isSafeInteger(r) || r < 0) return this.err(unique, Errno.EIO);
            return this.reply(unique, target.subarray(0, Math.min(r, want)));
          }
          data = r;
        } else {
          data = await fs.read!(ctx, ctx.nodeid, fh, offset, want);
        }
        return this.readReply(unique, data, want);
      }
      case Opcode.RELEASE:
      case Opcode.RELEASEDIR: {
        const fh = c.u64();
        if (op === Opcode.RELEASE) await fs.release?.(ctx, ctx.nodeid, fh);
        else await fs.releasedir?.(ctx, ctx.nodeid, fh);
        return this.reply(unique);
      }
      case Opcode.FLUSH: {
        const fh = c.u64();
        if (fs.flush) await fs.flush(ctx, ctx.nodeid, fh);
        return this.reply(unique);
      }
      case Opcode.STATFS: {
        if (!fs.statfs) return this.err(unique, Errno.ENOSYS);
        const s = await fs.statfs(ctx, ctx.nodeid);
        const b = replyBytes(KSTATFS_SIZE);
        writeU64(b, 0, s.blocks);
        writeU64(b, 8, s.bfree);
        writeU64(b, 16, s.bavail);
        writeU64(b, 24, s.files);
        writeU64(b, 32, s.ffree);
        b.writeUInt32LE(s.bsize >>> 0, 40);
        b.writeUInt32LE(s.namelen >>> 0, 44);
        b.writeUInt32LE(s.frsize >>> 0, 48);
        return this.reply(unique, this.minor < 4 ? b.subarray(0, COMPAT_STATFS_SIZE) : b);
      }
      case Opcode.GETXATTR: {
        const size = c.u32();
        c.u32();
        const name = c.cstring();
        if (name.length === 0) return this.err(unique, Errno.EINVAL);
        if (name.length > 255) return this.err(unique, Errno.ERANGE);
        if (!fs.getxattr) return this.err(unique, Errno.ENOSYS);
        const value = await fs.getxattr(ctx, ctx.nodeid, name.toString('utf8'));
        return this.sizedReply(unique, size, value);
      }
      case Opcode.LISTXATTR: {
        const size = c.u32();
        if (!fs.listxattr) return this.err(unique, Errno.ENOSYS);
        const names = await fs.listxattr(ctx, ctx.nodeid);
        const list = Buffer.concat(names.map((n) => Buffer.from(n + '\0', 'utf8')));
        return this.sizedReply(unique, size, list);
      }
      case Opcode.READDIR:
      case Opcode.READDIRPLUS: {
        const { fh, offset, size } = this.readIn(c);
        if (!fs.readdir) return this.err(unique, Errno.ENOSYS);
        return this.readdir(ctx, unique, fh, offset, Math.min(size, this.maxData()), op === Opcode.READDIRPLUS);
      }
      case Opcode.ACCESS: {
        const mask = c.u32();
        if (mask & 2 /* W_OK */) return this.err(unique, Errno.EROFS);
        if (!fs.access) return this.err(unique, Errno.ENOSYS);
        await fs.access(ctx, ctx.nodeid, mask);
        return this.reply(unique);
      }
      case Opcode.LSEEK: {
        const fh = c.u64();
        const offset = c.i64();
        const whence = c.u32();
        let result: number;
        if (whence === SEEK_SET) {
          if (offset < 0) return this.err(unique, Errno.EINVAL);
          result = offset;
        } else if (whence === SEEK_END) {
          if (!fs.getattr) return this.err(unique, Errno.ENOSYS);
          result = (await fs.getattr(ctx, ctx.nodeid, fh)).attr.size + offset;
          if (result < 0) return this.err(unique, Errno.EINVAL);
        } else if (whence === SEEK_DATA || whence === SEEK_HOLE) {
          if (!fs.lseek) return this.err(unique, Errno.ENOSYS);
          result = await fs.lseek(ctx, ctx.nodeid, fh, offset, whence);
        } else if (whence === SEEK_CUR) {
          return this.err(unique, Errno.EINVAL);
        } else {
          return this.err(unique, Errno.EINVAL);
        }
        const b = replyBytes(LSEEK_OUT_SIZE);
        writeU64(b, 0, result);
        return this.reply(unique, b);
      }
      case Opcode.STATX: {
        if (this.minor < 39) return this.err(unique, Errno.ENOSYS);
        const getattrFlags = c.u32();
        c.u32();
        const f = c.u64();
        const sxFlags = c.u32();
        const sxMask = c.u32();
        const fh = getattrFlags & FUSE_GETATTR_FH ? f : undefined;
        let sx: StatxOut;
        if (fs.statx) sx = await fs.statx(ctx, ctx.nodeid, fh, sxMask, sxFlags);
        else if (fs.getattr) sx = await fs.getattr(ctx, ctx.nodeid, fh);
        else return this.err(unique, Errno.ENOSYS);
        return this.reply(unique, this.statxOutBuf(sx));
      }
      case Opcode.INTERRUPT:
        // Requests are answered as they complete; there is nothing to cancel.
        c.u64();
        return null;
      case Opcode.NOTIFY_REPLY:
        return null;
      case Opcode.DESTROY:
        this.negotiatedState = undefined;
        await fs.destroy?.();
        return this.reply(unique);
      case Opcode.SETUPMAPPING: {
        if (!fs.setupMapping) return this.err(unique, Errno.ENOSYS);
        const fh = c.u64();
        const foffset = c.u64();
        const len = c.u64();
        const flags = c.u32();
        c.u32();
        const moffset = c.u64();
        await fs.setupMapping(ctx, ctx.nodeid, { fh, foffset, len, flags, moffset });
        return this.reply(unique);
      }
      case Opcode.REMOVEMAPPING: {
        if (!fs.removeMapping) return this.err(unique, Errno.ENOSYS);
        const count = c.u32();
        if (count * 16 > c.remaining) throw new Malformed('REMOVEMAPPING count exceeds the request');
        const ranges = [];
        for (let i = 0; i < count; i++) ranges.push({ moffset: c.u64(), len: c.u64() });
        await fs.removeMapping(ctx, ranges);
        return this.reply(unique);
      }
      default:
        // FSYNC, FSYNCDIR, locks, BMAP, IOCTL, POLL, SYNCFS and unknown opcodes.
        return this.err(unique, Errno.ENOSYS);
    }
  }

  private readIn(c: Cursor): { fh: number; offset: number; size: number } {
    if (c.remaining < COMPAT_READ_IN_SIZE) throw new Malformed('truncated fuse_read_in');
    const fh = c.u64();
    const offset = c.i64();
    const size = c.u32();
    return { fh, offset, size };
  }

  private sizedReply(unique: Buffer, size: number, value: Buffer): Buffer[] {
    if (size === 0) {
      const b = replyBytes(GETXATTR_OUT_SIZE);
      b.writeUInt32LE(value.length, 0);
      return this.reply(unique, b);
    }
    if (value.length > size) return this.err(unique, Errno.ERANGE);
    return this.reply(unique, value);
  }

  /** LOOKUP's reply: header and fuse_entry_out in one buffer (one iovec). */
  private entryReply(unique: Buffer, e: import('./abi.js').EntryParams): Buffer[] {
    const n = this.minor < 9 ? COMPAT_ENTRY_OUT_SIZE : ENTRY_OUT_SIZE;
    const b = replyBytes(OUT_HEADER_SIZE + ENTRY_OUT_SIZE);
    encodeEntryOut(b, OUT_HEADER_SIZE, e);
    writeHeader(b, OUT_HEADER_SIZE + n, 0, unique);
    return [n === ENTRY_OUT_SIZE ? b : b.subarray(0, OUT_HEADER_SIZE + n)];
  }

  /** GETATTR's reply: header and fuse_attr_out in one buffer. */
  private attrReply(unique: Buffer, a: AttrOut): Buffer[] {
    const n = this.minor < 9 ? COMPAT_ATTR_OUT_SIZE : ATTR_OUT_SIZE;
    const b = replyBytes(OUT_HEADER_SIZE + ATTR_OUT_SIZE);
    const [s, ns] = splitTimeout(a.attrTimeout);
    writeU64(b, OUT_HEADER_SIZE, s);
    b.writeUInt32LE(ns, OUT_HEADER_SIZE + 8);
    encodeAttr(b, OUT_HEADER_SIZE + 16, a.attr);
    writeHeader(b, OUT_HEADER_SIZE + n, 0, unique);
    return [n === ATTR_OUT_SIZE ? b : b.subarray(0, OUT_HEADER_SIZE + n)];
  }

  private openOutBuf(fh: number, flags: number, backingId: number): Buffer {
    const b = replyBytes(OPEN_OUT_SIZE);
    writeU64(b, 0, fh);
    b.writeUInt32LE(flags >>> 0, 8);
    b.writeInt32LE(backingId | 0, 12);
    return b;
  }

  private statxOutBuf(sx: StatxOut): Buffer {
    const b = replyBytes(STATX_OUT_SIZE);
    const [s, ns] = splitTimeout(sx.attrTimeout);
    writeU64(b, 0, s);
    b.writeUInt32LE(ns, 8);
    // flags u32 at 12, spare[2] at 16..32
    const a = sx.attr;
    const o = 32;
    b.writeUInt32LE(STATX_BASIC_STATS, o);
    b.writeUInt32LE(a.blksize >>> 0, o + 4);
    writeU64(b, o + 8, sx.attributes ?? 0);
    b.writeUInt32LE(a.nlink >>> 0, o + 16);
    b.writeUInt32LE(a.uid >>> 0, o + 20);
    b.writeUInt32LE(a.gid >>> 0, o + 24);
    b.writeUInt16LE(a.mode & 0xffff, o + 28);
    writeU64(b, o + 32, a.ino);
    writeU64(b, o + 40, a.size);
    writeU64(b, o + 48, a.blocks);
    writeU64(b, o + 56, sx.attributesMask ?? 0);
    const time = (at: number, sec: number, nsec: number) => {
      writeU64(b, o + at, sec);
      b.writeUInt32LE(nsec >>> 0, o + at + 8);
    };
    time(64, a.atimeSec, a.atimeNsec);
    // btime (80) left zero: not in the mask.
    time(96, a.ctimeSec, a.ctimeNsec);
    time(112, a.mtimeSec, a.mtimeNsec);
    b.writeUInt32LE(devMajor(a.rdev), o + 128);
    b.writeUInt32LE(devMinor(a.rdev), o + 132);
    return b;
  }

  private async readdir(ctx: RequestContext, unique: Buffer, fh: number, offset: number, size: number, plus: boolean): Promise<Buffer[]> {
    if (offset < 0) return this.err(unique, Errno.EINVAL);
    // Grown on demand up to the guest's size: zeroing the full size (often 64 KiB) for a small
    // directory was most of a READDIRPLUS's CPU.
    let buf = Buffer.alloc(Math.min(size, READDIR_FIRST_BYTES));
    let used = 0;
    const add = (e: DirEntryOut): boolean => {
      if (e.name.length === 0 || e.name.length > 1024) throw new FuseError(Errno.EIO, 'bad directory entry name');
      const need = plus ? direntPlusSize(e.name.length) : direntSize(e.name.length);
      if (used + need > size) return false;
      if (used + need > buf.length) {
        const grown = Buffer.alloc(Math.min(size, Math.max(2 * buf.length, used + need)));
        buf.copy(grown, 0, 0, used);
        buf = grown;
      }
      if (plus) {
        encodeEntryOut(buf, used, e.entry ?? { nodeid: 0, entryTimeout: 0, attrTimeout: 0 });
        encodeDirent(buf, used + ENTRY_OUT_SIZE, e.ino, e.nextOffset, e.type, e.name);
      } else {
        encodeDirent(buf, used, e.ino, e.nextOffset, e.type, e.name);
      }
      used += need;
      return true;
    };
    await this.fs.readdir!(ctx, ctx.nodeid, fh, offset, plus, add);
    void DIRENT_HEADER_SIZE;
    return this.reply(unique, buf.subarray(0, used));
  }

  private async init(c: Cursor, unique: Buffer): Promise<Buffer[]> {
    const major = c.u32();
    const kminor = c.u32();
    const out = Buffer.alloc(INIT_OUT_SIZE);
    out.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
    if (major < FUSE_KERNEL_VERSION) {
      this.log?.error({ major, minor: kminor }, 'fuse: kernel protocol too old');
      return this.err(unique, Errno.EPROTO);
    }
    if (major > FUSE_KERNEL_VERSION) {
      // Tell the kernel our major; it retries INIT with it.
      out.writeUInt32LE(FUSE_KERNEL_MINOR_VERSION, 4);
      return this.reply(unique, out.subarray(0, COMPAT_INIT_OUT_SIZE));
    }
    if (kminor < FUSE_MIN_MINOR_VERSION) {
      this.log?.error({ major, minor: kminor }, 'fuse: kernel protocol too old');
      return this.err(unique, Errno.EPROTO);
    }
    const maxReadaheadIn = c.remaining >= 4 ? c.u32() : 0;
    let kflags = c.remaining >= 4 ? BigInt(c.u32()) : 0n;
    if (kflags & InitFlag.INIT_EXT && c.remaining >= 4) kflags |= BigInt(c.u32()) << 32n;
    const minor = Math.min(kminor, this.opts.maxMinor ?? FUSE_KERNEL_MINOR_VERSION);

    let want = InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES |
      InitFlag.CACHE_SYMLINKS | InitFlag.ASYNC_DIO | InitFlag.INIT_EXT;
    const rdp = this.opts.readdirplus ?? 'auto';
    if (rdp !== 'never') want |= InitFlag.DO_READDIRPLUS;
    if (rdp === 'auto') want |= InitFlag.READDIRPLUS_AUTO;
    if (this.opts.posixAcl ?? true) want |= InitFlag.POSIX_ACL;
    if (this.opts.mapAlignment !== undefined) want |= InitFlag.MAP_ALIGNMENT;
    if (this.opts.inodeDax) want |= InitFlag.HAS_INODE_DAX;
    const flags = kflags & want;

    const maxWrite = Math.max(4096, this.opts.maxWrite ?? 1 << 20);
    const maxPages = Math.max(1, Math.min(0xffff, this.opts.maxPages ?? 256));
    const maxReadahead = Math.min(maxReadaheadIn, this.opts.maxReadahead ?? maxReadaheadIn);
    out.writeUInt32LE(minor, 4);
    out.writeUInt32LE(maxReadahead, 8);
    out.writeUInt32LE(Number(flags & 0xffffffffn), 12);
    out.writeUInt16LE(Math.min(0xffff, this.opts.maxBackground ?? 0), 16);
    out.writeUInt16LE(Math.min(0xffff, this.opts.congestionThreshold ?? 0), 18);
    out.writeUInt32LE(maxWrite, 20);
    out.writeUInt32LE(1, 24); // time_gran: nanoseconds
    out.writeUInt16LE(maxPages, 28);
    const mapAlignment = flags & InitFlag.MAP_ALIGNMENT ? this.opts.mapAlignment : undefined;
    out.writeUInt16LE(mapAlignment ?? 0, 30);
    out.writeUInt32LE(Number((flags >> 32n) & 0xffffffffn), 32);

    if (this.negotiatedState) await this.fs.destroy?.();
    const info: InitInfo = { major: FUSE_KERNEL_VERSION, minor, maxReadahead, kernelFlags: kflags, flags, mapAlignment };
    await this.fs.init?.(info);
    this.negotiatedState = {
      major: FUSE_KERNEL_VERSION, minor, flags, kernelFlags: kflags, maxReadahead, maxWrite,
      maxPages: flags & InitFlag.MAX_PAGES ? maxPages : 32, mapAlignment,
    };
    this.log?.debug({ minor, kminor, flags: flags.toString(16), kflags: kflags.toString(16) }, 'fuse: INIT');
    const size = minor < 5 ? COMPAT_INIT_OUT_SIZE : minor < 23 ? COMPAT_22_INIT_OUT_SIZE : INIT_OUT_SIZE;
    return this.reply(unique, out.subarray(0, size));
  }
}
