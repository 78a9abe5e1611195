// The read-only tree a FUSE client sees over one or several EROFS images.
//
// Inode numbers: FUSE nodeid = image base + nid, so a nodeid always decodes back to (image, nid)
// without a table (stable across FORGET and daemon restarts). The export root is nodeid 1: the
// image root for one image, a synthetic directory holding one named subdirectory per image for
// several. A nid outside its image's range (which a well-formed image never produces) gets a
// table-allocated nodeid from a high range instead. The table only tracks lookup counts: an entry
// lives while the kernel holds references (nlookup > 0) and is dropped by FORGET.
import type { DirEntry, ErofsReader, FileType, InodeAttr } from '../erofs/api.js';
import {
  DT_BLK, DT_CHR, DT_DIR, DT_FIFO, DT_LNK, DT_REG, DT_SOCK, DT_UNKNOWN, Errno, FOPEN_CACHE_DIR, FOPEN_DIRECT_IO,
  FOPEN_KEEP_CACHE, FUSE_ATTR_DAX, FUSE_ROOT_ID, SEEK_DATA, type FuseAttr,
} from '../fuse/abi.js';
import {
  FuseError, type AttrOut, type DaxWindowInfo, type DirFiller, type EntryOut, type FuseFilesystem, type InitInfo,
  type OpenOut, type RequestContext, type StatfsOut, type StatxOut,
} from '../fuse/filesystem.js';
import type { DataWriter } from '../fuse/reply.js';

export interface ImageTreeImage {
  name?: string;
  reader: ErofsReader;
}

/** An inode of one of the images: the image (index into `images`, its name and reader) and the nid. */
export interface ImageInode {
  index: number;
  name: string;
  reader: ErofsReader;
  nid: number;
}

export interface ImageTreeOptions {
  images: ImageTreeImage[];
  /** Seconds the kernel may cache names (default 1 hour: images are immutable). */
  entryTimeout?: number;
  /** Seconds the kernel may cache attributes (default 1 hour). */
  attrTimeout?: number;
  /** Cache negative lookups for entryTimeout (default true). */
  negativeCache?: boolean;
  /** Let the guest keep cached file data across opens (default true). */
  keepCache?: boolean;
  /** Let the kernel cache directory contents (FOPEN_CACHE_DIR, default true). */
  cacheDir?: boolean;
}

/** One image in the tree and the nodeid range its inodes map to. */
interface ImageSlot {
  index: number;
  name: string;
  reader: ErofsReader;
  /** nodeid = base + nid for nid < limit. */
  base: number;
  limit: number;
  rootNid: number;
  blockSize: number;
}

/**
 * A READ spread over more pieces of reply memory than this decodes a compressed file once and
 * copies it, instead of one reader call (and extent lookup) per piece.
 */
const PIECES_PER_DECODE = 8;

interface Node {
  nodeid: number;
  slot: ImageSlot | undefined; // undefined = synthetic root
  nid: number;
  nlookup: number;
}

interface Handle {
  nodeid: number;
  dir: boolean;
  direct?: boolean;
}

/** Table-allocated nodeids start here (above any base + nid of an offset mapping). */
const DYNAMIC_BASE = 2 ** 52;

const S_IFDIR = 0o040000;

function dtOf(t: FileType): number {
  switch (t) {
    case 'file': return DT_REG;
    case 'dir': return DT_DIR;
    case 'symlink': return DT_LNK;
    case 'chardev': return DT_CHR;
    case 'blockdev': return DT_BLK;
    case 'fifo': return DT_FIFO;
    case 'socket': return DT_SOCK;
    default: return DT_UNKNOWN;
  }
}

export class ImageTree<W extends DaxWindowInfo = DaxWindowInfo> implements FuseFilesystem<W> {
  readonly entryTimeout: number;
  readonly attrTimeout: number;
  private readonly slots: ImageSlot[];
  private readonly multi: boolean;
  private readonly nodes = new Map<number, Node>();
  private readonly handles = new Map<number, Handle>();
  private nextFh = 1;
  /** Fallback allocation for nids outside the offset mapping: key "slot:nid" → nodeid. */
  private readonly dynamicByKey = new Map<string, number>();
  private readonly dynamicById = new Map<number, { slot: ImageSlot; nid: number }>();
  private nextDynamic = DYNAMIC_BASE;
  private readonly opts: ImageTreeOptions;

  constructor(opts: ImageTreeOptions) {
    if (opts.images.length === 0) throw new Error('ImageTree: at least one image is needed');
    this.opts = opts;
    this.entryTimeout = opts.entryTimeout ?? 3600;
    this.attrTimeout = opts.attrTimeout ?? 3600;
    this.multi = opts.images.length > 1;
    const seen = new Set<string>();
    let base = 2;
    this.slots = opts.images.map((img, index) => {
      const name = img.name ?? `image${index}`;
      if (this.multi) {
        if (!name || name === '.' || name === '..' || name.includes('/') || name.includes('\0') || Buffer.byteLength(name) > 255) {
          throw new Error(`ImageTree: invalid image name '${name}'`);
        }
        if (seen.has(name)) throw new Error(`ImageTree: duplicate image name '${name}'`);
        seen.add(name);
      }
      const sb = img.reader.superblock;
      const bytes = sb.blocks * sb.blockSize;
      let limit = Math.floor(bytes / 32) + 1;
      if (!Number.isSafeInteger(limit) || limit <= 0 || base + limit >= DYNAMIC_BASE) limit = 0;
      const slot: ImageSlot = { index, name, reader: img.reader, base, limit, rootNid: img.reader.rootNid, blockSize: sb.blockSize };
      base += limit;
      return slot;
    });
    this.nodes.set(FUSE_ROOT_ID, { nodeid: FUSE_ROOT_ID, slot: this.multi ? undefined : this.slots[0], nid: this.slots[0]!.rootNid, nlookup: 1 });
  }

  /** Live bookkeeping, for leak checks: nodes with nlookup > 0 (incl. the root) and open handles. */
  stats(): { nodes: number; handles: number; dynamic: number } {
    return { nodes: this.nodes.size, handles: this.handles.size, dynamic: this.dynamicById.size };
  }

  // ---- nodeid mapping ------------------------------------------------------------------------

  private nodeidOf(slot: ImageSlot, nid: number): number {
    if (!this.multi && nid === slot.rootNid) return FUSE_ROOT_ID;
    if (Number.isSafeInteger(nid) && nid >= 0 && nid < slot.limit) return slot.base + nid;
    const key = `${slot.index}:${nid}`;
    let id = this.dynamicByKey.get(key);
    if (id === undefined) {
      id = this.nextDynamic++;
      this.dynamicByKey.set(key, id);
      this.dynamicById.set(id, { slot, nid });
    }
    return id;
  }

  /** (slot, nid) of a nodeid; slot undefined = synthetic root. Throws ESTALE for unknown ids. */
  private resolve(nodeid: number): { slot: ImageSlot | undefined; nid: number } {
    if (nodeid === FUSE_ROOT_ID) return this.multi ? { slot: undefined, nid: 0 } : { slot: this.slots[0], nid: this.slots[0]!.rootNid };
    const n = this.nodes.get(nodeid);
    if (n) return { slot: n.slot, nid: n.nid };
    if (nodeid >= DYNAMIC_BASE) {
      const d = this.dynamicById.get(nodeid);
      if (d) return d;
      throw new FuseError(Errno.ESTALE, `unknown nodeid ${nodeid}`);
    }
    for (const s of this.slots) {
      if (nodeid >= s.base && nodeid < s.base + s.limit) {
        const nid = nodeid - s.base;
        if (!this.multi && nid === s.rootNid) break; // the root is only ever nodeid 1
        return { slot: s, nid };
      }
    }
    throw new FuseError(Errno.ESTALE, `unknown nodeid ${nodeid}`);
  }

  private resolveImage(nodeid: number): { slot: ImageSlot; nid: number } {
    const r = this.resolve(nodeid);
    if (!r.slot) throw new FuseError(Errno.EISDIR, 'synthetic root');
    return { slot: r.slot, nid: r.nid };
  }

  /** The image inode a nodeid names (EISDIR for the synthetic root, ESTALE for unknown ids). */
  protected inodeOf(nodeid: number): ImageInode {
    const { slot, nid } = this.resolveImage(nodeid);
    return this.target(slot, nid);
  }

  /** Whether file handle `fh` was opened with O_DIRECT. */
  protected openedDirect(fh: number): boolean {
    return this.handles.get(fh)?.direct ?? false;
  }

  private ref(nodeid: number, slot: ImageSlot | undefined, nid: number): void {
    if (nodeid === FUSE_ROOT_ID) return;
    const n = this.nodes.get(nodeid);
    if (n) n.nlookup++;
    else this.nodes.set(nodeid, { nodeid, slot, nid, nlookup: 1 });
  }

  // ---- attributes ------------------------------------------------------------------------------

  private target(slot: ImageSlot, nid: number): ImageInode {
    return { index: slot.index, name: slot.name, reader: slot.reader, nid };
  }

  /**
   * Whether a file should be read through the guest's DAX window (FUSE_ATTR_DAX). Asked only on
   * connections that negotiated per-inode DAX; no file here, the share layer picks some.
   */
  protected wantsDax(_t: ImageInode, _attr: InodeAttr): boolean {
    return false;
  }

  private attrOf(ctx: RequestContext, nodeid: number, slot: ImageSlot, a: InodeAttr): FuseAttr {
    return {
      flags: ctx.inodeDax && this.wantsDax(this.target(slot, a.nid), a) ? FUSE_ATTR_DAX : 0,
      ino: nodeid,
      size: a.size,
      blocks: a.blocks,
      atimeSec: a.mtimeSec,
      atimeNsec: a.mtimeNsec,
      mtimeSec: a.mtimeSec,
      mtimeNsec: a.mtimeNsec,
      ctimeSec: a.mtimeSec,
      ctimeNsec: a.mtimeNsec,
      mode: a.mode,
      nlink: a.nlink,
      uid: a.uid,
      gid: a.gid,
      rdev: a.rdev,
      blksize: slot.blockSize,
    };
  }

  private rootAttr(): FuseAttr {
    let t = 0;
    let tn = 0;
    for (const s of this.slots) {
      const sb = s.reader.superblock;
      if (sb.buildTimeSec > t) { t = sb.buildTimeSec; tn = sb.buildTimeNsec; }
    }
    return {
      ino: FUSE_ROOT_ID, size: 0, blocks: 0, atimeSec: t, atimeNsec: tn, mtimeSec: t, mtimeNsec: tn, ctimeSec: t,
      ctimeNsec: tn, mode: S_IFDIR | 0o555, nlink: 2 + this.slots.length, uid: 0, gid: 0, rdev: 0, blksize: 4096,
    };
  }

  private attrFor(ctx: RequestContext, nodeid: number): FuseAttr {
    const r = this.resolve(nodeid);
    if (!r.slot) return this.rootAttr();
    return this.attrOf(ctx, nodeid, r.slot, r.slot.reader.getAttr(r.nid));
  }

  private entry(nodeid: number, attr: FuseAttr): EntryOut {
    return { nodeid, generation: 0, entryTimeout: this.entryTimeout, attrTimeout: this.attrTimeout, attr };
  }

  // ---- FuseFilesystem ---------------------------------------------------------------------------

  init(_info: InitInfo): void {
    // A fresh session: the kernel holds no references from a previous one.
    this.nodes.clear();
    this.handles.clear();
    this.dynamicById.clear();
    this.dynamicByKey.clear();
    this.nodes.set(FUSE_ROOT_ID, { nodeid: FUSE_ROOT_ID, slot: this.multi ? undefined : this.slots[0], nid: this.slots[0]!.rootNid, nlookup: 1 });
  }

  destroy(): void {
    this.init({} as InitInfo);
  }

  lookup(ctx: RequestContext, parent: number, name: Buffer): EntryOut {
    const p = this.resolve(parent);
    let slot: ImageSlot;
    let nid: number | undefined;
    if (!p.slot) {
      if (name.equals(Buffer.from('.')) || name.equals(Buffer.from('..'))) {
        return this.entry(FUSE_ROOT_ID, this.rootAttr());
      }
      const s = this.slots.find((x) => Buffer.from(x.name).equals(name));
      if (!s) return this.negative();
      slot = s;
      nid = s.rootNid;
    } else {
      slot = p.slot;
      if (name.equals(Buffer.from('..')) && p.nid === slot.rootNid) {
        if (this.multi) return this.entry(FUSE_ROOT_ID, this.rootAttr());
        nid = slot.rootNid;
      } else {
        nid = slot.reader.lookup(p.nid, name);
      }
      if (nid === undefined) return this.negative();
    }
    const nodeid = this.nodeidOf(slot, nid);
    const inode = slot.reader.getAttr(nid);
    this.ref(nodeid, slot, nid);
    return this.entry(nodeid, this.attrOf(ctx, nodeid, slot, inode));
  }

  private negative(): EntryOut {
    if (this.opts.negativeCache === false) throw new FuseError(Errno.ENOENT);
    return { nodeid: 0, entryTimeout: this.entryTimeout, attrTimeout: 0 };
  }

  forget(nodeid: number, nlookup: number): void {
    if (nodeid === FUSE_ROOT_ID) return;
    const n = this.nodes.get(nodeid);
    if (!n) return;
    n.nlookup -= nlookup;
    if (n.nlookup <= 0 || !Number.isFinite(n.nlookup)) {
      this.nodes.delete(nodeid);
      if (nodeid >= DYNAMIC_BASE) {
        const d = this.dynamicById.get(nodeid);
        this.dynamicById.delete(nodeid);
        if (d) this.dynamicByKey.delete(`${d.slot.index}:${d.nid}`);
      }
    }
  }

  getattr(ctx: RequestContext, nodeid: number): AttrOut {
    return { attr: this.attrFor(ctx, nodeid), attrTimeout: this.attrTimeout };
  }

  statx(ctx: RequestContext, nodeid: number): StatxOut {
    return { attr: this.attrFor(ctx, nodeid), attrTimeout: this.attrTimeout, attributes: 0x10 /* IMMUTABLE */, attributesMask: 0x14 };
  }

  readlink(_ctx: RequestContext, nodeid: number): Buffer {
    const { slot, nid } = this.resolveImage(nodeid);
    const a = slot.reader.getAttr(nid);
    if (a.type !== 'symlink') throw new FuseError(Errno.EINVAL);
    return slot.reader.readlink(nid);
  }

  open(_ctx: RequestContext, nodeid: number, flags: number): OpenOut {
    const { slot, nid } = this.resolveImage(nodeid);
    const a = slot.reader.getAttr(nid);
    if (a.type === 'dir') throw new FuseError(Errno.EISDIR);
    const fh = this.newHandle(nodeid, false);
    let openFlags = 0;
    if (flags & 0o40000 /* O_DIRECT */) {
      openFlags |= FOPEN_DIRECT_IO;
      this.handles.get(fh)!.direct = true;
    }
    else if (this.opts.keepCache ?? true) openFlags |= FOPEN_KEEP_CACHE;
    return { fh, openFlags };
  }

  private newHandle(nodeid: number, dir: boolean): number {
    // Skip ids still in use after wrap-around (practically never).
    while (this.handles.has(this.nextFh) || this.nextFh === 0) this.nextFh = (this.nextFh + 1) % Number.MAX_SAFE_INTEGER;
    const fh = this.nextFh++;
    this.handles.set(fh, { nodeid, dir });
    return fh;
  }

  /**
   * FUSE_READ: the file's bytes straight into the reply, one reader call per contiguous piece of
   * reply memory (for a plain file, one copy out of the mapped image). A compressed file spread
   * over many pieces is decoded once and copied instead: an extent lookup per piece would cost
   * more than the copy saves.
   */
  read(_ctx: RequestContext, nodeid: number, _fh: number, offset: number, size: number, out: DataWriter): void {
    const { slot, nid } = this.resolveImage(nodeid);
    const reader = slot.reader;
    if (!reader.readInto || (out.piecesFor(size) > PIECES_PER_DECODE && !reader.storedPlain(nid))) {
      out.write(reader.read(nid, offset, size));
      return;
    }
    out.writeFrom((target, at, length, done) => reader.readInto!(nid, offset + done, length, target, at), size);
  }

  release(_ctx: RequestContext, _nodeid: number, fh: number): void {
    this.handles.delete(fh);
  }

  releasedir(_ctx: RequestContext, _nodeid: number, fh: number): void {
    this.handles.delete(fh);
  }

  flush(): void {}

  statfs(_ctx: RequestContext, nodeid: number): StatfsOut {
    const r = this.resolve(nodeid);
    const slots = r.slot ? [r.slot] : this.slots;
    let blocks = 0;
    let files = 0;
    let bsize = 0;
    for (const s of slots) {
      const sb = s.reader.superblock;
      bsize = Math.max(bsize, sb.blockSize);
    }
    for (const s of slots) {
      const sb = s.reader.superblock;
      blocks += Math.ceil((sb.blocks * sb.blockSize) / bsize);
      files += sb.inodeCount;
    }
    return { blocks, bfree: 0, bavail: 0, files, ffree: 0, bsize, namelen: 255, frsize: bsize };
  }

  getxattr(_ctx: RequestContext, nodeid: number, name: string): Buffer {
    const r = this.resolve(nodeid);
    if (!r.slot) throw new FuseError(Errno.ENODATA);
    return r.slot.reader.getXattr(r.nid, name);
  }

  listxattr(_ctx: RequestContext, nodeid: number): string[] {
    const r = this.resolve(nodeid);
    if (!r.slot) return [];
    return r.slot.reader.listXattrs(r.nid).map((x) => x.name);
  }

  access(ctx: RequestContext, nodeid: number, mask: number): void {
    if (mask & 2) throw new FuseError(Errno.EROFS);
    const attr = this.attrFor(ctx, nodeid);
    if (mask === 0 /* F_OK */) return;
    if (ctx.uid === 0) {
      // root: X needs some x bit on non-directories.
      if (mask & 1 && (attr.mode & S_IFDIR) !== S_IFDIR && (attr.mode & 0o111) === 0) throw new FuseError(Errno.EACCES);
      return;
    }
    let bits: number;
    if (ctx.uid === attr.uid) bits = (attr.mode >> 6) & 7;
    else if (ctx.gid === attr.gid) bits = (attr.mode >> 3) & 7;
    else bits = attr.mode & 7;
    if ((mask & 7 & ~bits) !== 0) throw new FuseError(Errno.EACCES);
  }

  opendir(_ctx: RequestContext, nodeid: number): OpenOut {
    const r = this.resolve(nodeid);
    if (r.slot) {
      const a = r.slot.reader.getAttr(r.nid);
      if (a.type !== 'dir') throw new FuseError(Errno.ENOTDIR);
    }
    const fh = this.newHandle(nodeid, true);
    let openFlags = 0;
    if (this.opts.cacheDir ?? true) openFlags |= FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE;
    return { fh, openFlags };
  }

  readdir(ctx: RequestContext, nodeid: number, _fh: number, offset: number, plus: boolean, add: DirFiller): void {
    const r = this.resolve(nodeid);
    if (!r.slot) {
      this.readdirRoot(ctx, offset, plus, add);
      return;
    }
    const { slot } = r;
    const dirNid = r.nid;
    let off = offset;
    let batch = 32;
    for (;;) {
      const entries: DirEntry[] = slot.reader.readdir(dirNid, off, batch);
      if (entries.length === 0) return;
      for (const e of entries) {
        const isDot = e.name.length === 1 && e.name[0] === 0x2e;
        const isDotDot = e.name.length === 2 && e.name[0] === 0x2e && e.name[1] === 0x2e;
        let ino: number;
        if (isDot) ino = nodeid;
        else if (isDotDot && dirNid === slot.rootNid) ino = FUSE_ROOT_ID;
        else ino = this.nodeidOf(slot, e.nid);
        if (e.nextOffset === 0) throw new FuseError(Errno.EIO, 'directory cookie 0');
        if (plus && !isDot && !isDotDot) {
          const inode = slot.reader.getAttr(e.nid);
          const ent = this.entry(ino, this.attrOf(ctx, ino, slot, inode));
          if (!add({ ino, name: e.name, type: dtOf(e.type), nextOffset: e.nextOffset, entry: ent })) {
            this.dropUnreferencedDynamic(ino);
            return;
          }
          this.ref(ino, slot, e.nid);
        } else {
          if (!add({ ino, name: e.name, type: dtOf(e.type), nextOffset: e.nextOffset })) {
            this.dropUnreferencedDynamic(ino);
            return;
          }
          if (!isDot && !isDotDot) this.dropUnreferencedDynamic(ino);
        }
        off = e.nextOffset;
      }
      if (entries.length < batch) return;
      batch = Math.min(batch * 2, 1024);
    }
  }

  /** A dynamic id handed out only for a dirent (no lookup reference) must not accumulate. */
  private dropUnreferencedDynamic(nodeid: number): void {
    if (nodeid < DYNAMIC_BASE || this.nodes.has(nodeid)) return;
    const d = this.dynamicById.get(nodeid);
    if (!d) return;
    this.dynamicById.delete(nodeid);
    this.dynamicByKey.delete(`${d.slot.index}:${d.nid}`);
  }

  private readdirRoot(ctx: RequestContext, offset: number, plus: boolean, add: DirFiller): void {
    const dot = Buffer.from('.');
    const dotdot = Buffer.from('..');
    for (let i = offset; i < 2 + this.slots.length; i++) {
      if (i < 2) {
        if (!add({ ino: FUSE_ROOT_ID, name: i === 0 ? dot : dotdot, type: DT_DIR, nextOffset: i + 1 })) return;
        continue;
      }
      const s = this.slots[i - 2]!;
      const nodeid = this.nodeidOf(s, s.rootNid);
      let ent: EntryOut | undefined;
      if (plus) ent = this.entry(nodeid, this.attrOf(ctx, nodeid, s, s.reader.getAttr(s.rootNid)));
      if (!add({ ino: nodeid, name: Buffer.from(s.name), type: DT_DIR, nextOffset: i + 1, entry: ent })) {
        this.dropUnreferencedDynamic(nodeid);
        return;
      }
      if (plus) this.ref(nodeid, s, s.rootNid);
      else this.dropUnreferencedDynamic(nodeid);
    }
  }

  lseek(_ctx: RequestContext, nodeid: number, _fh: number, offset: number, whence: number): number {
    const { slot, nid } = this.resolveImage(nodeid);
    const a = slot.reader.getAttr(nid);
    if (offset < 0 || offset >= a.size) throw new FuseError(Errno.ENXIO);
    const data = whence === SEEK_DATA;
    let r: number;
    try {
      r = slot.reader.seek(nid, offset, data ? 'data' : 'hole');
    } catch (err) {
      // "No data at or after offset" may come back as EINVAL/ENXIO from the reader.
      if (data && (err as { code?: string }).code === 'EINVAL') throw new FuseError(Errno.ENXIO);
      throw err;
    }
    if (data && r >= a.size) throw new FuseError(Errno.ENXIO);
    return Math.min(r, a.size);
  }
}
