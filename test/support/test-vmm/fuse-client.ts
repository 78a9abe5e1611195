// A FUSE client over the test VMM's virtqueues: what a guest kernel's virtio-fs driver does,
// reduced to an async API, plus walk() that turns an export into a test/support manifest.
import crypto from 'node:crypto';
import type { Manifest, ManifestEntry } from '../manifest.js';
import type { VhostUserFrontend } from './frontend.js';
import type { BufferSpec } from './virtqueue.js';
import {
  ATTR_SIZE, ENTRY_OUT_SIZE, FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, FUSE_ROOT_ID, IN_HEADER_SIZE, InitFlag,
  InitFlag2, OUT_HEADER_SIZE, Op, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK,
  decodeRdev, errnoName, inHeader, nameArg, parseAttr, parseDirents, parseDirentsPlus, parseEntry, parseStatfs,
  type DirentPlus, type Dirent, type EntryOut, type FuseAttr, type Kstatfs,
} from './fuse-abi.js';

export class FuseError extends Error {
  constructor(readonly errno: number, readonly opcode: number, readonly nodeid: bigint) {
    super(`FUSE opcode ${opcode} on node ${nodeid}: ${errnoName(errno)}`);
  }
  get code(): string { return errnoName(this.errno); }
}

export interface InitInfo {
  major: number; minor: number; maxReadahead: number; flags: number; maxBackground: number;
  congestionThreshold: number; maxWrite: number; timeGran: number; maxPages: number; mapAlignment: number; flags2: number;
}

export interface ClientOptions {
  /** Split the reply's data area into writable descriptors of this many bytes (0 = one). */
  segmentSize?: number;
  /** Put each chain in an indirect table when the ring supports it. */
  indirect?: boolean;
  /** Per-request timeout. Default 30 s. */
  timeoutMs?: number;
}

export interface CallOptions {
  queue?: number;
  timeoutMs?: number;
  /**
   * Check the reply but do not copy its body out of guest memory (Reply.body is then empty and
   * outLen tells the size): a guest's page cache receives READ data in place, and the copy-out
   * (plus the GC of a fresh 1 MiB buffer per read) was most of the test VMM's own cost per read.
   */
  discardBody?: boolean;
}

export interface Reply { error: number; body: Buffer; usedLen: number; outLen: number }

export interface WalkOptions {
  /** READDIRPLUS (default) or READDIR + LOOKUP. */
  readdirplus?: boolean;
  xattrs?: boolean;
  /** Bytes per READ. Default 128 KiB. */
  readChunk?: number;
  /** Parallel file reads. Default 4. */
  concurrency?: number;
  /** FORGET every looked-up node afterwards. Default true. */
  forget?: boolean;
}

export class FuseClient {
  private unique = 1n;
  private rr = 0;
  info: InitInfo | null = null;
  private readonly fhNode = new Map<bigint, bigint>();
  private readonly opts: Required<ClientOptions>;
  private readonly background = new Set<Promise<unknown>>();

  constructor(readonly vmm: VhostUserFrontend, opts: ClientOptions = {}) {
    this.opts = { segmentSize: opts.segmentSize ?? 0, indirect: opts.indirect ?? false, timeoutMs: opts.timeoutMs ?? 30_000 };
  }

  private pickQueue(opcode: number): number {
    if (opcode === Op.FORGET || opcode === Op.BATCH_FORGET || opcode === Op.INTERRUPT) return 0;
    const n = this.vmm.requestQueueCount;
    this.rr = (this.rr + 1) % n;
    return 1 + this.rr;
  }

  /**
   * Sends one request: `args` after the in-header, `replyMax` bytes of reply room after the
   * out-header (-1 = no writable part at all, as for FORGET). Resolves with the decoded reply.
   */
  async send(opcode: number, nodeid: bigint, args: Buffer[], replyMax: number, o: CallOptions = {}): Promise<Reply> {
    const q = this.vmm.queues[o.queue ?? this.pickQueue(opcode)];
    if (!q) throw new Error(`no queue ${o.queue}`);
    const mem = this.vmm.mem;
    const unique = this.unique++;
    const argBytes = Buffer.concat(args);
    const inLen = IN_HEADER_SIZE + argBytes.length;
    const inGpa = mem.alloc(inLen, 8);
    const outLen = replyMax < 0 ? 0 : OUT_HEADER_SIZE + replyMax;
    let outGpa = -1n;
    let deviceOwns = false;
    try {
      const inView = mem.view(inGpa, inLen);
      inHeader(inLen, opcode, unique, nodeid).copy(inView, 0);
      argBytes.copy(inView, IN_HEADER_SIZE);
      const bufs: BufferSpec[] = [{ gpa: inGpa, len: inLen, write: false }];
      if (outLen > 0) {
        outGpa = mem.alloc(outLen, 8);
        mem.view(outGpa, outLen).fill(0, 0, OUT_HEADER_SIZE);
        bufs.push({ gpa: outGpa, len: OUT_HEADER_SIZE, write: true });
        let off = OUT_HEADER_SIZE;
        const seg = this.opts.segmentSize > 0 ? this.opts.segmentSize : outLen;
        while (off < outLen) {
          const n = Math.min(seg, outLen - off);
          bufs.push({ gpa: outGpa + BigInt(off), len: n, write: true });
          off += n;
        }
      }
      deviceOwns = true;
      const used = await q.submit(bufs, { indirect: this.opts.indirect, timeoutMs: o.timeoutMs ?? this.opts.timeoutMs });
      deviceOwns = false;
      if (outLen === 0) return { error: 0, body: Buffer.alloc(0), usedLen: used.len, outLen: 0 };
      const view = mem.view(outGpa, outLen);
      const len = view.readUInt32LE(0);
      const error = view.readInt32LE(4);
      const gotUnique = view.readBigUInt64LE(8);
      if (used.len < OUT_HEADER_SIZE) throw new Error(`opcode ${opcode}: used length ${used.len} shorter than fuse_out_header`);
      if (gotUnique !== unique) throw new Error(`opcode ${opcode}: reply unique ${gotUnique} != ${unique}`);
      if (len < OUT_HEADER_SIZE || len > outLen) throw new Error(`opcode ${opcode}: reply len ${len} outside [16, ${outLen}]`);
      if (used.len !== len) throw new Error(`opcode ${opcode}: used length ${used.len} != fuse_out_header.len ${len}`);
      if (o.discardBody) return { error: -error, body: Buffer.alloc(0), usedLen: used.len, outLen: len };
      // Buffer.copy is a memcpy; Buffer.from(view) would copy element by element.
      const body = Buffer.allocUnsafe(len - OUT_HEADER_SIZE);
      view.copy(body, 0, OUT_HEADER_SIZE, len);
      return { error: -error, body, usedLen: used.len, outLen: len };
    } finally {
      // A timed-out (or failed) request's buffers may still be owned by the device: never reuse them.
      if (!deviceOwns) {
        mem.free(inGpa);
        if (outGpa >= 0n) mem.free(outGpa);
      }
    }
  }

  /** Like send() but throws FuseError on a non-zero error. */
  async call(opcode: number, nodeid: bigint, args: Buffer[], replyMax: number, o: CallOptions = {}): Promise<Buffer> {
    const r = await this.send(opcode, nodeid, args, replyMax, o);
    if (r.error !== 0) throw new FuseError(r.error, opcode, nodeid);
    return r.body;
  }

  // ---- operations -----------------------------------------------------------------------
  async init(opts: { dax?: boolean; flags?: number } = {}): Promise<InitInfo> {
    const a = Buffer.alloc(64);
    a.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
    a.writeUInt32LE(FUSE_KERNEL_MINOR_VERSION, 4);
    a.writeUInt32LE(128 * 1024, 8);
    const flags = opts.flags ?? (InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO |
      InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES | InitFlag.CACHE_SYMLINKS | InitFlag.EXPORT_SUPPORT |
      InitFlag.AUTO_INVAL_DATA | InitFlag.MAP_ALIGNMENT | InitFlag.INIT_EXT);
    a.writeUInt32LE(flags >>> 0, 12);
    a.writeUInt32LE(opts.dax ? InitFlag2.HAS_INODE_DAX : 0, 16);
    const b = await this.call(Op.INIT, 0n, [a], 64);
    if (b.length < 24) throw new Error(`FUSE_INIT reply too short (${b.length})`);
    const g16 = (o: number) => (b.length >= o + 2 ? b.readUInt16LE(o) : 0);
    const g32 = (o: number) => (b.length >= o + 4 ? b.readUInt32LE(o) : 0);
    this.info = {
      major: g32(0), minor: g32(4), maxReadahead: g32(8), flags: g32(12), maxBackground: g16(16),
      congestionThreshold: g16(18), maxWrite: g32(20), timeGran: g32(24), maxPages: g16(28), mapAlignment: g16(30), flags2: g32(32),
    };
    if (this.info.major !== FUSE_KERNEL_VERSION) throw new Error(`FUSE major ${this.info.major}`);
    return this.info;
  }

  /** LOOKUP; a negative entry (nodeid 0, cacheable "no such name") reads as ENOENT, as in Linux. */
  async lookup(parent: bigint, name: string | Buffer): Promise<EntryOut> {
    const e = parseEntry(await this.call(Op.LOOKUP, parent, [nameArg(name)], ENTRY_OUT_SIZE));
    if (e.nodeid === 0n) throw new FuseError(2, Op.LOOKUP, parent);
    return e;
  }

  /** Fire-and-forget on the high-priority queue, as the guest kernel does. */
  forget(nodeid: bigint, nlookup: bigint | number): void {
    const a = Buffer.alloc(8);
    a.writeBigUInt64LE(BigInt(nlookup));
    this.track(this.send(Op.FORGET, nodeid, [a], -1, { queue: 0 }));
  }

  batchForget(items: Array<[bigint, bigint]>): Promise<void> {
    const out: Promise<unknown>[] = [];
    for (let i = 0; i < items.length; i += 256) {
      const part = items.slice(i, i + 256);
      const a = Buffer.alloc(8 + 16 * part.length);
      a.writeUInt32LE(part.length, 0);
      part.forEach(([n, c], k) => { a.writeBigUInt64LE(n, 8 + 16 * k); a.writeBigUInt64LE(c, 16 + 16 * k); });
      out.push(this.send(Op.BATCH_FORGET, 0n, [a], -1, { queue: 0 }));
    }
    return Promise.all(out).then(() => undefined);
  }

  private track(p: Promise<unknown>): void {
    const q = p.catch(() => undefined);
    this.background.add(q);
    void q.finally(() => this.background.delete(q));
  }

  /** Waits for fire-and-forget requests (FORGET) to come back. */
  async settle(): Promise<void> { await Promise.all([...this.background]); }

  async getattr(nodeid: bigint, fh?: bigint): Promise<{ attr: FuseAttr; attrValid: bigint }> {
    const a = Buffer.alloc(16);
    if (fh !== undefined) { a.writeUInt32LE(1, 0); a.writeBigUInt64LE(fh, 8); }
    const b = await this.call(Op.GETATTR, nodeid, [a], 16 + ATTR_SIZE);
    return { attrValid: b.readBigUInt64LE(0), attr: parseAttr(b, 16) };
  }

  private async openGeneric(op: number, nodeid: bigint, flags: number): Promise<{ fh: bigint; openFlags: number }> {
    const a = Buffer.alloc(8);
    a.writeUInt32LE(flags >>> 0, 0);
    const b = await this.call(op, nodeid, [a], 16);
    const fh = b.readBigUInt64LE(0);
    this.fhNode.set(fh * 2n + (op === Op.OPENDIR ? 1n : 0n), nodeid);
    return { fh, openFlags: b.readUInt32LE(8) };
  }
  open(nodeid: bigint, flags = 0): Promise<{ fh: bigint; openFlags: number }> { return this.openGeneric(Op.OPEN, nodeid, flags); }
  opendir(nodeid: bigint, flags = 0): Promise<{ fh: bigint; openFlags: number }> { return this.openGeneric(Op.OPENDIR, nodeid, flags | 0o200000); }

  private nodeOf(fh: bigint, dir: boolean): bigint { return this.fhNode.get(fh * 2n + (dir ? 1n : 0n)) ?? 0n; }

  private readIn(fh: bigint, off: bigint | number, len: number): Buffer {
    const a = Buffer.alloc(40);
    a.writeBigUInt64LE(fh, 0);
    a.writeBigUInt64LE(BigInt(off), 8);
    a.writeUInt32LE(len >>> 0, 16);
    return a;
  }

  async read(fh: bigint, off: bigint | number, len: number, o: CallOptions = {}): Promise<Buffer> {
    return this.call(Op.READ, this.nodeOf(fh, false), [this.readIn(fh, off, len)], len, o);
  }

  /** READ whose data stays in guest memory; resolves with the number of bytes the reply carried. */
  async readCount(fh: bigint, off: bigint | number, len: number, o: CallOptions = {}): Promise<number> {
    const r = await this.send(Op.READ, this.nodeOf(fh, false), [this.readIn(fh, off, len)], len, { ...o, discardBody: true });
    if (r.error !== 0) throw new FuseError(r.error, Op.READ, this.nodeOf(fh, false));
    return r.outLen - OUT_HEADER_SIZE;
  }

  async readdir(fh: bigint, off: bigint | number, size = 65536): Promise<Dirent[]> {
    return parseDirents(await this.call(Op.READDIR, this.nodeOf(fh, true), [this.readIn(fh, off, size)], size));
  }

  async readdirplus(fh: bigint, off: bigint | number, size = 65536): Promise<DirentPlus[]> {
    return parseDirentsPlus(await this.call(Op.READDIRPLUS, this.nodeOf(fh, true), [this.readIn(fh, off, size)], size));
  }

  private releaseIn(fh: bigint, flags = 0): Buffer {
    const a = Buffer.alloc(24);
    a.writeBigUInt64LE(fh, 0);
    a.writeUInt32LE(flags, 8);
    return a;
  }
  async release(fh: bigint): Promise<void> {
    const node = this.nodeOf(fh, false);
    this.fhNode.delete(fh * 2n);
    await this.call(Op.RELEASE, node, [this.releaseIn(fh)], 0);
  }
  async releasedir(fh: bigint): Promise<void> {
    const node = this.nodeOf(fh, true);
    this.fhNode.delete(fh * 2n + 1n);
    await this.call(Op.RELEASEDIR, node, [this.releaseIn(fh, 0o200000)], 0);
  }

  async readlink(nodeid: bigint): Promise<Buffer> { return this.call(Op.READLINK, nodeid, [], 4096); }

  /** size 0: returns the value's size as a 4-byte LE buffer's number via getxattrSize. */
  async getxattr(nodeid: bigint, name: string, size = 65536): Promise<Buffer> {
    const a = Buffer.alloc(8);
    a.writeUInt32LE(size, 0);
    return this.call(Op.GETXATTR, nodeid, [a, nameArg(name)], size === 0 ? 8 : size);
  }
  async listxattr(nodeid: bigint, size = 65536): Promise<string[]> {
    const a = Buffer.alloc(8);
    a.writeUInt32LE(size, 0);
    const b = await this.call(Op.LISTXATTR, nodeid, [a], size === 0 ? 8 : size);
    if (size === 0) return [];
    return b.toString('latin1').split('\0').filter((s) => s.length > 0);
  }
  async xattrSize(nodeid: bigint, name?: string): Promise<number> {
    const a = Buffer.alloc(8);
    const b = name === undefined
      ? await this.call(Op.LISTXATTR, nodeid, [a], 8)
      : await this.call(Op.GETXATTR, nodeid, [a, nameArg(name)], 8);
    return b.readUInt32LE(0);
  }

  async lseek(fh: bigint, off: bigint | number, whence: number): Promise<bigint> {
    const a = Buffer.alloc(24);
    a.writeBigUInt64LE(fh, 0);
    a.writeBigUInt64LE(BigInt(off), 8);
    a.writeUInt32LE(whence, 16);
    return (await this.call(Op.LSEEK, this.nodeOf(fh, false), [a], 8)).readBigUInt64LE(0);
  }

  async statfs(nodeid = FUSE_ROOT_ID): Promise<Kstatfs> { return parseStatfs(await this.call(Op.STATFS, nodeid, [], 80)); }

  async setupmapping(fh: bigint, foffset: bigint | number, len: bigint | number, moffset: bigint | number, flags: bigint): Promise<void> {
    const a = Buffer.alloc(40);
    a.writeBigUInt64LE(fh, 0);
    a.writeBigUInt64LE(BigInt(foffset), 8);
    a.writeBigUInt64LE(BigInt(len), 16);
    a.writeBigUInt64LE(flags, 24);
    a.writeBigUInt64LE(BigInt(moffset), 32);
    await this.call(Op.SETUPMAPPING, this.nodeOf(fh, false), [a], 0);
  }
  async removemapping(ranges: Array<[bigint | number, bigint | number]>): Promise<void> {
    // Linux: struct fuse_removemapping_in is one u32 (count); the 16-byte entries follow at offset 4.
    const a = Buffer.alloc(4 + 16 * ranges.length);
    a.writeUInt32LE(ranges.length, 0);
    ranges.forEach(([m, l], k) => { a.writeBigUInt64LE(BigInt(m), 4 + 16 * k); a.writeBigUInt64LE(BigInt(l), 12 + 16 * k); });
    await this.call(Op.REMOVEMAPPING, 0n, [a.subarray(0, 4), a.subarray(4)], 0);
  }

  /**
   * Reads through the DAX window the way the Linux driver does: SETUPMAPPING of the 2 MiB
   * range(s) holding [off, off+len) at window offset `moffset` (+ 2 MiB per further range), then
   * plain loads from the window. The mappings stay in place (REMOVEMAPPING them when done).
   */
  async daxRead(fh: bigint, off: number, len: number, moffset = 0, rangeSize = 2 << 20): Promise<Buffer> {
    const first = Math.floor(off / rangeSize) * rangeSize;
    const parts: Buffer[] = [];
    for (let r = first, m = moffset; r < off + len; r += rangeSize, m += rangeSize) {
      await this.setupmapping(fh, r, rangeSize, m, 2n /* READ */);
      const from = Math.max(off, r) - r;
      const to = Math.min(off + len, r + rangeSize) - r;
      const part = Buffer.allocUnsafe(to - from);
      this.vmm.daxView(m + from, to - from).copy(part);
      parts.push(part);
    }
    return Buffer.concat(parts);
  }

  // ---- helpers ---------------------------------------------------------------------------
  /** Resolves a '/'-separated path from the root (each LOOKUP adds one lookup reference). */
  async resolve(path: string): Promise<EntryOut & { lookups: bigint[] }> {
    let cur: EntryOut = { nodeid: FUSE_ROOT_ID, generation: 0n, entryValid: 0n, attrValid: 0n, attr: (await this.getattr(FUSE_ROOT_ID)).attr };
    const lookups: bigint[] = [];
    for (const part of path.split('/').filter((p) => p.length > 0)) {
      cur = await this.lookup(cur.nodeid, part);
      lookups.push(cur.nodeid);
    }
    return { ...cur, lookups };
  }

  /** Reads a whole file through OPEN/READ/RELEASE (until a short read). */
  async readFile(nodeid: bigint, chunk = 128 * 1024): Promise<Buffer> {
    const { fh } = await this.open(nodeid);
    try {
      const parts: Buffer[] = [];
      let off = 0;
      for (;;) {
        const b = await this.read(fh, off, chunk);
        if (b.length > 0) parts.push(b);
        off += b.length;
        if (b.length < chunk) break;
      }
      return Buffer.concat(parts);
    } finally {
      await this.release(fh);
    }
  }

  /** Lists a directory (all entries, '.' and '..' removed). */
  async listDir(nodeid: bigint, plus: boolean): Promise<Array<Dirent | DirentPlus>> {
    const { fh } = await this.opendir(nodeid);
    const out: Array<Dirent | DirentPlus> = [];
    try {
      let off = 0n;
      for (let guard = 0; guard < 1_000_000; guard++) {
        const ents = plus ? await this.readdirplus(fh, off) : await this.readdir(fh, off);
        if (ents.length === 0) break;
        for (const e of ents) out.push(e);
        off = ents[ents.length - 1]!.off;
      }
    } finally {
      await this.releasedir(fh);
    }
    return out;
  }

  /** Walks the whole export into a manifest (the format of test/support/manifest.ts). */
  async walk(opts: WalkOptions = {}): Promise<Manifest> {
    const plus = opts.readdirplus ?? true;
    const wantX = opts.xattrs ?? true;
    const chunk = opts.readChunk ?? 128 * 1024;
    const lookups = new Map<bigint, bigint>();
    const addLookup = (n: bigint) => lookups.set(n, (lookups.get(n) ?? 0n) + 1n);
    const manifest: Manifest = {};
    const pool = new Pool(opts.concurrency ?? 4);

    const describe = async (path: string, nodeid: bigint, attr: FuseAttr): Promise<void> => {
      const fmt = attr.mode & S_IFMT;
      const e: ManifestEntry = {
        type: typeOf(fmt),
        mode: attr.mode & 0o7777,
        uid: attr.uid,
        gid: attr.gid,
        nlink: attr.nlink,
        mtime_ns: (attr.mtime * 1_000_000_000n + BigInt(attr.mtimensec)).toString(),
      };
      if (fmt === S_IFREG) {
        e.size = Number(attr.size);
        const data = await this.readFile(nodeid, chunk);
        e.sha256 = crypto.createHash('sha256').update(data).digest('hex');
        if (data.length !== e.size) throw new Error(`${path}: read ${data.length} bytes, size says ${e.size}`);
      } else if (fmt === S_IFLNK) {
        e.target = (await this.readlink(nodeid)).toString('utf8');
      } else if (fmt === S_IFCHR || fmt === S_IFBLK) {
        e.rdev = decodeRdev(attr.rdev);
      }
      if (wantX) {
        const xa = await this.xattrsOf(nodeid);
        if (xa) e.xattrs = xa;
      }
      manifest[path] = e;
    };

    const walkDir = async (path: string, nodeid: bigint): Promise<void> => {
      const ents = await this.listDir(nodeid, plus);
      const subdirs: Array<Promise<void>> = [];
      const files: Array<Promise<void>> = [];
      for (const d of ents) {
        const name = d.name.toString('utf8');
        if (name === '.' || name === '..') continue;
        const child = path === '' ? name : `${path}/${name}`;
        let entry: EntryOut;
        if ('entry' in d && d.entry.nodeid !== 0n) {
          entry = d.entry;
          addLookup(entry.nodeid);
        } else {
          entry = await this.lookup(nodeid, d.name);
          addLookup(entry.nodeid);
        }
        if ((entry.attr.mode & S_IFMT) === S_IFDIR) {
          subdirs.push(describe(child, entry.nodeid, entry.attr).then(() => walkDir(child, entry.nodeid)));
        } else {
          files.push(pool.run(() => describe(child, entry.nodeid, entry.attr)));
        }
      }
      await Promise.all([...files, ...subdirs]);
    };

    const root = await this.getattr(FUSE_ROOT_ID);
    await describe('', FUSE_ROOT_ID, root.attr);
    await walkDir('', FUSE_ROOT_ID);
    if (opts.forget ?? true) await this.batchForget([...lookups.entries()]);
    return manifest;
  }

  /** name → hex value, or undefined when the node has none / xattrs are unsupported. */
  async xattrsOf(nodeid: bigint): Promise<Record<string, string> | undefined> {
    let names: string[];
    try {
      const size = await this.xattrSize(nodeid);
      if (size === 0) return undefined;
      names = await this.listxattr(nodeid, size);
    } catch (e) {
      if (e instanceof FuseError && ['ENODATA', 'EOPNOTSUPP', 'ENOSYS'].includes(e.code)) return undefined;
      throw e;
    }
    const out: Record<string, string> = {};
    for (const n of names) {
      const sz = await this.xattrSize(nodeid, n);
      out[n] = sz === 0 ? '' : (await this.getxattr(nodeid, n, sz)).toString('hex');
    }
    return Object.keys(out).length > 0 ? out : undefined;
  }
}

function typeOf(fmt: number): ManifestEntry['type'] {
  switch (fmt) {
    case S_IFREG: return 'file';
    case S_IFDIR: return 'dir';
    case S_IFLNK: return 'symlink';
    case S_IFCHR: return 'chardev';
    case S_IFBLK: return 'blockdev';
    case S_IFIFO: return 'fifo';
    case S_IFSOCK: return 'socket';
    default: throw new Error(`unknown file type 0o${fmt.toString(8)}`);
  }
}

/** A tiny concurrency limiter. */
export class Pool {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly limit: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((r) => this.waiting.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}
