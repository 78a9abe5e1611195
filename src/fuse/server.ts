// Transport-neutral FUSE server: decodes one request (fuse_in_header + arguments) with a
// bounds-checked cursor, calls the filesystem through one opcode table, and writes the reply
// into the ReplyWriter the transport supplied. The same server runs over /dev/fuse (host mount)
// and over virtqueues (virtio-fs). serve() never throws: malformed input gets an errno reply (or
// no reply when not even the header is readable).
import {
  ATTR_OUT_SIZE, COMPAT_22_INIT_OUT_SIZE, COMPAT_ATTR_OUT_SIZE, COMPAT_ENTRY_OUT_SIZE, COMPAT_INIT_OUT_SIZE,
  COMPAT_READ_IN_SIZE, COMPAT_STATFS_SIZE, ENTRY_OUT_SIZE, Errno, FUSE_GETATTR_FH, FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION, FUSE_MIN_MINOR_VERSION, GETXATTR_OUT_SIZE, IN_HEADER_SIZE, INIT_OUT_SIZE, InitFlag,
  KSTATFS_SIZE, LSEEK_OUT_SIZE, OPCODE_NAMES, OPEN_OUT_SIZE, OUT_HEADER_SIZE, Opcode, SEEK_DATA,
  SEEK_END, SEEK_HOLE, SEEK_SET, STATX_BASIC_STATS, STATX_OUT_SIZE, WRITE_OPCODES, devMajor, devMinor,
  direntPlusSize, direntSize, encodeAttr, encodeDirent, encodeEntryOut, readU64, splitTimeout, writeU64,
  type EntryParams,
} from './abi.js';
import type {
  AttrOut, DaxWindowInfo, DirEntryOut, FuseFilesystem, InitInfo, MaybePromise, OpenOut, RequestContext, StatxOut,
} from './filesystem.js';
import { FuseError, errnoOf } from './filesystem.js';
import { ReplyWriter } from './reply.js';
import { replyBytes } from './reply-bytes.js';
import { PAGE_SIZE } from '../native/index.js';

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

/** Where a request came from, as its transport tells the server. */
export interface RequestOrigin<W> {
  /** The request queue (virtio-fs). */
  queue?: number;
  /** The DAX window of the request's connection, when it has one. */
  window?: W;
}

/** A READDIR reply buffer starts this big and doubles as entries need room. */
const READDIR_FIRST_BYTES = 4096;
/** Largest READ/READDIR reply we ever build, whatever a (hostile) request asks for. */
const MAX_REPLY_DATA = 32 * 1024 * 1024;

/**
 * How an operation answers: undefined = success, the body is in the ReplyWriter; a positive
 * number = that errno; NO_REPLY = nothing is sent (FORGET, INTERRUPT, ...).
 */
type Answer = number | void;
const NO_REPLY = -1;

type Operation<W> = (ctx: RequestContext, args: Cursor, out: ReplyWriter, window: W | undefined) => MaybePromise<Answer>;

/** Runs `then` on a value, or once a promise of it resolves: synchronous answers stay synchronous. */
function after<T>(v: MaybePromise<T>, then: (v: T) => Answer): MaybePromise<Answer> {
  return v instanceof Promise ? v.then(then) : then(v);
}

const done = (): Answer => undefined;

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
  /** A NUL-terminated string (the NUL is consumed, not returned). */
  cstring(): Buffer {
    const end = this.buf.indexOf(0, this.pos);
    if (end < 0) throw new Malformed('unterminated name');
    const s = this.buf.subarray(this.pos, end);
    this.pos = end + 1;
    return s;
  }
}

export class FuseServer<W extends DaxWindowInfo = DaxWindowInfo> {
  private negotiatedState: Negotiated | undefined;
  /** FUSE_HAS_INODE_DAX was negotiated (RequestContext.inodeDax). */
  private inodeDax = false;
  private readonly opts: FuseServerOptions;
  private readonly log: FuseLogger | undefined;

  constructor(private readonly fs: FuseFilesystem<W>, opts: FuseServerOptions = {}) {
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
      mapAlignment: state.mapAlignment,
    };
    this.inodeDax = (this.negotiatedState.flags & InitFlag.HAS_INODE_DAX) !== 0n;
  }

  /** The INIT outcome, or undefined before INIT / after DESTROY. */
  get negotiated(): Negotiated | undefined {
    return this.negotiatedState;
  }

  /** The most reply bytes (header included) a request may produce: what a transport's reply memory should hold. */
  get maxReplyBytes(): number {
    return OUT_HEADER_SIZE + Math.max(this.maxData(), 1 << 16);
  }

  /**
   * Serves one request: the reply goes into `out` (its `length` is then what to send; 0 = no
   * reply is due: FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY, an unreadable header). Answers
   * synchronously when the filesystem does (LOOKUP, GETATTR, a READ copied out of the image);
   * otherwise returns a promise that settles once `out` holds the reply. Never throws.
   */
  serve(request: Buffer, out: ReplyWriter, origin: RequestOrigin<W> = {}): void | Promise<void> {
    if (request.length < 16) {
      this.log?.warn({ bytes: request.length }, 'fuse: request shorter than a header, dropped');
      return;
    }
    const unique = request.subarray(8, 16);
    const opcode = request.readUInt32LE(4);
    let answer: MaybePromise<Answer>;
    try {
      if (request.length < IN_HEADER_SIZE) throw new Malformed('truncated fuse_in_header');
      const len = request.readUInt32LE(0);
      if (len < IN_HEADER_SIZE || len > request.length) throw new Malformed(`bad header len ${len} (have ${request.length})`);
      const extBytes = request.readUInt16LE(36) * 8;
      if (IN_HEADER_SIZE + extBytes > len) throw new Malformed('extensions exceed the request');
      const ctx: RequestContext = {
        opcode,
        unique: request.readBigUInt64LE(8),
        nodeid: readU64(request, 16),
        uid: request.readUInt32LE(24),
        gid: request.readUInt32LE(28),
        pid: request.readUInt32LE(32),
        queue: origin.queue,
        inodeDax: this.inodeDax,
      };
      answer = this.dispatch(ctx, new Cursor(request.subarray(IN_HEADER_SIZE, len - extBytes)), out, origin.window);
    } catch (err) {
      answer = this.failure(err, opcode);
    }
    if (answer instanceof Promise) {
      return answer.then(
        (a) => this.finish(out, unique, a),
        (err: unknown) => this.finish(out, unique, this.failure(err, opcode)),
      );
    }
    this.finish(out, unique, answer);
  }

  private finish(out: ReplyWriter, unique: Buffer, answer: Answer): void {
    if (answer === NO_REPLY) return;
    out.end(unique, answer ?? 0);
  }

  /** The answer to a request whose handling threw. */
  private failure(err: unknown, opcode: number): Answer {
    const noReply = opcode === Opcode.FORGET || opcode === Opcode.BATCH_FORGET || opcode === Opcode.INTERRUPT;
    if (err instanceof Malformed) {
      this.log?.warn({ opcode, op: OPCODE_NAMES[opcode], err: err.message }, 'fuse: malformed request');
      return noReply ? NO_REPLY : Errno.EINVAL;
    }
    const errno = errnoOf(err);
    if (!(err instanceof FuseError) && errno === Errno.EIO) {
      this.log?.error({ opcode, op: OPCODE_NAMES[opcode], err: String((err as Error)?.stack ?? err) }, 'fuse: request failed');
    }
    return noReply ? NO_REPLY : errno;
  }

  private dispatch(ctx: RequestContext, args: Cursor, out: ReplyWriter, window: W | undefined): MaybePromise<Answer> {
    const op = ctx.opcode;
    if (op === Opcode.INIT) return this.init(args, out, window);
    if (!this.negotiatedState) {
      if (op === Opcode.FORGET || op === Opcode.BATCH_FORGET || op === Opcode.INTERRUPT) return NO_REPLY;
      this.log?.warn({ op: OPCODE_NAMES[op] ?? op }, 'fuse: request before INIT');
      return Errno.EIO;
    }
    if (WRITE_OPCODES.has(op)) return Errno.EROFS;
    const operation = this.operations[op];
    // FSYNC, FSYNCDIR, locks, BMAP, IOCTL, POLL, SYNCFS and unknown opcodes.
    if (!operation) return Errno.ENOSYS;
    return operation(ctx, args, out, window);
  }

  private get minor(): number {
    return this.negotiatedState?.minor ?? FUSE_KERNEL_MINOR_VERSION;
  }

  private maxData(): number {
    const n = this.negotiatedState;
    const pages = n ? n.maxPages : this.opts.maxPages ?? 256;
    return Math.min(MAX_REPLY_DATA, Math.max(PAGE_SIZE, pages * PAGE_SIZE));
  }

  /** The operations after INIT, by opcode: decode the arguments, call the filesystem, write the reply body. */
  private readonly operations: Partial<Record<number, Operation<W>>> = {
    [Opcode.LOOKUP]: (ctx, a, out) => {
      const name = a.cstring();
      if (name.length > 255) return Errno.ENAMETOOLONG;
      if (!this.fs.lookup) return Errno.ENOSYS;
      // The hot operations skip after(): no closure when the answer is already there.
      const e = this.fs.lookup(ctx, ctx.nodeid, name);
      return e instanceof Promise ? e.then((v) => this.writeEntry(out, v)) : this.writeEntry(out, e);
    },
    [Opcode.FORGET]: (ctx, a) => {
      this.fs.forget?.(ctx.nodeid, a.u64());
      return NO_REPLY;
    },
    [Opcode.BATCH_FORGET]: (_ctx, a) => {
      const count = a.u32();
      a.u32();
      const fit = Math.min(count, Math.floor(a.remaining / 16));
      if (fit < count) this.log?.warn({ count, fit }, 'fuse: BATCH_FORGET truncated');
      for (let i = 0; i < fit; i++) {
        const nodeid = a.u64();
        this.fs.forget?.(nodeid, a.u64());
      }
      return NO_REPLY;
    },
    [Opcode.GETATTR]: (ctx, a, out) => {
      let fh: number | undefined;
      if (a.remaining >= 16) {
        const flags = a.u32();
        a.u32();
        const f = a.u64();
        if (flags & FUSE_GETATTR_FH) fh = f;
      }
      if (!this.fs.getattr) return Errno.ENOSYS;
      const attr = this.fs.getattr(ctx, ctx.nodeid, fh);
      return attr instanceof Promise ? attr.then((v) => this.writeAttr(out, v)) : this.writeAttr(out, attr);
    },
    [Opcode.READLINK]: (ctx, _a, out) => {
      if (!this.fs.readlink) return Errno.ENOSYS;
      return after(this.fs.readlink(ctx, ctx.nodeid), (target) => out.write(target));
    },
    [Opcode.OPEN]: (ctx, a, out) => {
      const flags = a.u32();
      if ((flags & 3) !== 0 || flags & 0o1000 /* O_TRUNC */) return Errno.EROFS;
      if (!this.fs.open) return Errno.ENOSYS;
      return after(this.fs.open(ctx, ctx.nodeid, flags), (o) => out.write(openOut(o)));
    },
    [Opcode.OPENDIR]: (ctx, a, out) => {
      const flags = a.u32();
      if ((flags & 3) !== 0) return Errno.EISDIR;
      if (!this.fs.opendir) return out.write(openOut({ fh: 0 }));
      return after(this.fs.opendir(ctx, ctx.nodeid, flags), (o) => out.write(openOut(o)));
    },
    [Opcode.READ]: (ctx, a, out) => {
      const { fh, offset, size } = readIn(a);
      if (!this.fs.read) return Errno.ENOSYS;
      if (offset < 0) return Errno.EINVAL;
      const want = Math.min(size, this.maxData());
      if (want === 0) return;
      const read = this.fs.read(ctx, ctx.nodeid, fh, offset, want, out);
      if (read instanceof Promise) return read.then(() => (out.written > want ? Errno.EIO : undefined));
      return out.written > want ? Errno.EIO : undefined;
    },
    [Opcode.RELEASE]: (ctx, a) => (this.fs.release ? after(this.fs.release(ctx, ctx.nodeid, a.u64()), done) : undefined),
    [Opcode.RELEASEDIR]: (ctx, a) => (this.fs.releasedir ? after(this.fs.releasedir(ctx, ctx.nodeid, a.u64()), done) : undefined),
    [Opcode.FLUSH]: (ctx, a) => (this.fs.flush ? after(this.fs.flush(ctx, ctx.nodeid, a.u64()), done) : undefined),
    [Opcode.STATFS]: (ctx, _a, out) => {
      if (!this.fs.statfs) return Errno.ENOSYS;
      return after(this.fs.statfs(ctx, ctx.nodeid), (s) => {
        const b = replyBytes(KSTATFS_SIZE);
        writeU64(b, 0, s.blocks);
        writeU64(b, 8, s.bfree);
        writeU64(b, 16, s.bavail);
        writeU64(b, 24, s.files);
        writeU64(b, 32, s.ffree);
        b.writeUInt32LE(s.bsize >>> 0, 40);
        b.writeUInt32LE(s.namelen >>> 0, 44);
        b.writeUInt32LE(s.frsize >>> 0, 48);
        out.write(this.minor < 4 ? b.subarray(0, COMPAT_STATFS_SIZE) : b);
      });
    },
    [Opcode.GETXATTR]: (ctx, a, out) => {
      const size = a.u32();
      a.u32();
      const name = a.cstring();
      if (name.length === 0) return Errno.EINVAL;
      if (name.length > 255) return Errno.ERANGE;
      if (!this.fs.getxattr) return Errno.ENOSYS;
      return after(this.fs.getxattr(ctx, ctx.nodeid, name.toString('utf8')), (value) => writeSized(out, size, value));
    },
    [Opcode.LISTXATTR]: (ctx, a, out) => {
      const size = a.u32();
      if (!this.fs.listxattr) return Errno.ENOSYS;
      return after(this.fs.listxattr(ctx, ctx.nodeid), (names) =>
        writeSized(out, size, Buffer.concat(names.map((n) => Buffer.from(n + '\0', 'utf8')))));
    },
    [Opcode.READDIR]: (ctx, a, out) => this.readdir(ctx, a, out, false),
    [Opcode.READDIRPLUS]: (ctx, a, out) => this.readdir(ctx, a, out, true),
    [Opcode.ACCESS]: (ctx, a) => {
      const mask = a.u32();
      if (mask & 2 /* W_OK */) return Errno.EROFS;
      if (!this.fs.access) return Errno.ENOSYS;
      return after(this.fs.access(ctx, ctx.nodeid, mask), done);
    },
    [Opcode.LSEEK]: (ctx, a, out) => {
      const fh = a.u64();
      const offset = a.i64();
      const whence = a.u32();
      const reply = (result: number): Answer => {
        if (result < 0) return Errno.EINVAL;
        const b = replyBytes(LSEEK_OUT_SIZE);
        writeU64(b, 0, result);
        out.write(b);
      };
      if (whence === SEEK_SET) return reply(offset);
      if (whence === SEEK_END) {
        if (!this.fs.getattr) return Errno.ENOSYS;
        return after(this.fs.getattr(ctx, ctx.nodeid, fh), (v) => reply(v.attr.size + offset));
      }
      if (whence === SEEK_DATA || whence === SEEK_HOLE) {
        if (!this.fs.lseek) return Errno.ENOSYS;
        return after(this.fs.lseek(ctx, ctx.nodeid, fh, offset, whence), reply);
      }
      // SEEK_CUR means nothing without a file position (the kernel answers it itself): EINVAL,
      // like an unknown whence.
      return Errno.EINVAL;
    },
    [Opcode.STATX]: (ctx, a, out) => {
      if (this.minor < 39) return Errno.ENOSYS;
      const getattrFlags = a.u32();
      a.u32();
      const f = a.u64();
      const sxFlags = a.u32();
      const sxMask = a.u32();
      const fh = getattrFlags & FUSE_GETATTR_FH ? f : undefined;
      const write = (sx: StatxOut): Answer => out.write(statxOut(sx));
      if (this.fs.statx) return after(this.fs.statx(ctx, ctx.nodeid, fh, sxMask, sxFlags), write);
      if (this.fs.getattr) return after(this.fs.getattr(ctx, ctx.nodeid, fh), write);
      return Errno.ENOSYS;
    },
    [Opcode.INTERRUPT]: (_ctx, a) => {
      // Requests are answered as they complete; there is nothing to cancel.
      a.u64();
      return NO_REPLY;
    },
    [Opcode.NOTIFY_REPLY]: () => NO_REPLY,
    [Opcode.DESTROY]: () => {
      this.negotiatedState = undefined;
      this.inodeDax = false;
      return this.fs.destroy ? after(this.fs.destroy(), done) : undefined;
    },
    [Opcode.SETUPMAPPING]: (ctx, a, _out, window) => {
      if (!this.fs.setupMapping) return Errno.ENOSYS;
      const fh = a.u64();
      const foffset = a.u64();
      const len = a.u64();
      const flags = a.u32();
      a.u32();
      const moffset = a.u64();
      return after(this.fs.setupMapping(ctx, ctx.nodeid, { fh, foffset, len, flags, moffset }, window), done);
    },
    [Opcode.REMOVEMAPPING]: (ctx, a, _out, window) => {
      if (!this.fs.removeMapping) return Errno.ENOSYS;
      const count = a.u32();
      if (count * 16 > a.remaining) throw new Malformed('REMOVEMAPPING count exceeds the request');
      const ranges = [];
      for (let i = 0; i < count; i++) ranges.push({ moffset: a.u64(), len: a.u64() });
      return after(this.fs.removeMapping(ctx, ranges, window), done);
    },
  };

  /** LOOKUP's fuse_entry_out (shorter before 7.9). */
  private writeEntry(out: ReplyWriter, e: EntryParams): Answer {
    const b = replyBytes(ENTRY_OUT_SIZE);
    encodeEntryOut(b, 0, e);
    out.write(this.minor < 9 ? b.subarray(0, COMPAT_ENTRY_OUT_SIZE) : b);
  }

  /** GETATTR's fuse_attr_out (shorter before 7.9). */
  private writeAttr(out: ReplyWriter, a: AttrOut): Answer {
    const b = replyBytes(ATTR_OUT_SIZE);
    const [s, ns] = splitTimeout(a.attrTimeout);
    writeU64(b, 0, s);
    b.writeUInt32LE(ns, 8);
    encodeAttr(b, 16, a.attr);
    out.write(this.minor < 9 ? b.subarray(0, COMPAT_ATTR_OUT_SIZE) : b);
  }

  private readdir(ctx: RequestContext, a: Cursor, out: ReplyWriter, plus: boolean): MaybePromise<Answer> {
    const { fh, offset, size: asked } = readIn(a);
    if (!this.fs.readdir) return Errno.ENOSYS;
    if (offset < 0) return Errno.EINVAL;
    const size = Math.min(asked, this.maxData());
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
    return after(this.fs.readdir(ctx, ctx.nodeid, fh, offset, plus, add), () => out.write(buf.subarray(0, used)));
  }

  private async init(a: Cursor, out: ReplyWriter, window: W | undefined): Promise<Answer> {
    const major = a.u32();
    const kminor = a.u32();
    const b = Buffer.alloc(INIT_OUT_SIZE);
    b.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
    if (major < FUSE_KERNEL_VERSION) {
      this.log?.error({ major, minor: kminor }, 'fuse: kernel protocol too old');
      return Errno.EPROTO;
    }
    if (major > FUSE_KERNEL_VERSION) {
      // Tell the kernel our major; it retries INIT with it.
      b.writeUInt32LE(FUSE_KERNEL_MINOR_VERSION, 4);
      return out.write(b.subarray(0, COMPAT_INIT_OUT_SIZE));
    }
    if (kminor < FUSE_MIN_MINOR_VERSION) {
      this.log?.error({ major, minor: kminor }, 'fuse: kernel protocol too old');
      return Errno.EPROTO;
    }
    const maxReadaheadIn = a.remaining >= 4 ? a.u32() : 0;
    let kflags = a.remaining >= 4 ? BigInt(a.u32()) : 0n;
    if (kflags & InitFlag.INIT_EXT && a.remaining >= 4) kflags |= BigInt(a.u32()) << 32n;
    const minor = Math.min(kminor, this.opts.maxMinor ?? FUSE_KERNEL_MINOR_VERSION);

    let want = InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES |
      InitFlag.CACHE_SYMLINKS | InitFlag.ASYNC_DIO | InitFlag.INIT_EXT;
    const rdp = this.opts.readdirplus ?? 'auto';
    if (rdp !== 'never') want |= InitFlag.DO_READDIRPLUS;
    if (rdp === 'auto') want |= InitFlag.READDIRPLUS_AUTO;
    if (this.opts.posixAcl ?? true) want |= InitFlag.POSIX_ACL;
    // DAX only on a connection with a window: the transport hands it over with the request.
    if (window) want |= InitFlag.MAP_ALIGNMENT;
    if (window?.inodeDax) want |= InitFlag.HAS_INODE_DAX;
    const flags = kflags & want;

    const maxWrite = Math.max(4096, this.opts.maxWrite ?? 1 << 20);
    const maxPages = Math.max(1, Math.min(0xffff, this.opts.maxPages ?? 256));
    const maxReadahead = Math.min(maxReadaheadIn, this.opts.maxReadahead ?? maxReadaheadIn);
    b.writeUInt32LE(minor, 4);
    b.writeUInt32LE(maxReadahead, 8);
    b.writeUInt32LE(Number(flags & 0xffffffffn), 12);
    b.writeUInt16LE(Math.min(0xffff, this.opts.maxBackground ?? 0), 16);
    b.writeUInt16LE(Math.min(0xffff, this.opts.congestionThreshold ?? 0), 18);
    b.writeUInt32LE(maxWrite, 20);
    b.writeUInt32LE(1, 24); // time_gran: nanoseconds
    b.writeUInt16LE(maxPages, 28);
    const mapAlignment = flags & InitFlag.MAP_ALIGNMENT ? window?.alignmentShift : undefined;
    b.writeUInt16LE(mapAlignment ?? 0, 30);
    b.writeUInt32LE(Number((flags >> 32n) & 0xffffffffn), 32);

    if (this.negotiatedState) await this.fs.destroy?.();
    const info: InitInfo = { major: FUSE_KERNEL_VERSION, minor, maxReadahead, kernelFlags: kflags, flags, mapAlignment };
    await this.fs.init?.(info);
    this.negotiatedState = {
      major: FUSE_KERNEL_VERSION, minor, flags, kernelFlags: kflags, maxReadahead, maxWrite,
      maxPages: flags & InitFlag.MAX_PAGES ? maxPages : 32, mapAlignment,
    };
    this.inodeDax = (flags & InitFlag.HAS_INODE_DAX) !== 0n;
    this.log?.debug({ minor, kminor, flags: flags.toString(16), kflags: kflags.toString(16) }, 'fuse: INIT');
    const size = minor < 5 ? COMPAT_INIT_OUT_SIZE : minor < 23 ? COMPAT_22_INIT_OUT_SIZE : INIT_OUT_SIZE;
    out.write(b.subarray(0, size));
  }
}

function readIn(a: Cursor): { fh: number; offset: number; size: number } {
  if (a.remaining < COMPAT_READ_IN_SIZE) throw new Malformed('truncated fuse_read_in');
  const fh = a.u64();
  const offset = a.i64();
  const size = a.u32();
  return { fh, offset, size };
}

/** GETXATTR/LISTXATTR: the value, or its size when the kernel asks with size 0. */
function writeSized(out: ReplyWriter, size: number, value: Buffer): Answer {
  if (size === 0) {
    const b = replyBytes(GETXATTR_OUT_SIZE);
    b.writeUInt32LE(value.length, 0);
    return out.write(b);
  }
  if (value.length > size) return Errno.ERANGE;
  out.write(value);
}

function openOut(o: OpenOut): Buffer {
  const b = replyBytes(OPEN_OUT_SIZE);
  writeU64(b, 0, o.fh);
  b.writeUInt32LE((o.openFlags ?? 0) >>> 0, 8);
  b.writeInt32LE((o.backingId ?? 0) | 0, 12);
  return b;
}

function statxOut(sx: StatxOut): Buffer {
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
