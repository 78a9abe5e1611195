// The filesystem a FuseServer serves. Every method is optional: an absent method answers ENOSYS
// (the kernel then stops asking, or falls back to its own behaviour), except RELEASE/RELEASEDIR
// (absent = success), OPENDIR (absent = handle 0) and FORGET (absent = nothing to do). Methods
// throw FuseError (or an error with an errno-name `code`, e.g. ErofsError) to answer an errno.
import type { FuseAttr, EntryParams } from './abi.js';
import { Errno, errnoFromName } from './abi.js';
import type { DataWriter } from './reply.js';

export type { FuseAttr } from './abi.js';
export type MaybePromise<T> = T | Promise<T>;

/** Who asks, from fuse_in_header, plus what the connection negotiated. */
export interface RequestContext {
  opcode: number;
  unique: bigint;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
  /** The transport's request queue the request came on (virtio-fs), for logs. */
  queue?: number;
  /**
   * FUSE_HAS_INODE_DAX was negotiated on this connection: FUSE_ATTR_DAX in an attribute makes
   * the guest map that file through its DAX window. Without it the flag means nothing.
   */
  inodeDax: boolean;
}

/**
 * What FUSE_INIT needs to know of a connection's DAX window. The transport owns the window (a
 * virtio-fs device's shared memory region, mapped by the VMM on request) and hands it to the
 * server with each request; the filesystem gets the whole window (its type W) in setupMapping
 * and removeMapping, as virtiofsd's filesystem gets `vu_req`.
 */
export interface DaxWindowInfo {
  /** log2 of the alignment a mapping's offsets need (FUSE_INIT map_alignment). */
  readonly alignmentShift: number;
  /** Files choose DAX one by one (FUSE_HAS_INODE_DAX, FUSE_ATTR_DAX). */
  readonly inodeDax: boolean;
}

/** A LOOKUP answer. nodeid 0 = negative entry (ENOENT cached for entryTimeout seconds). */
export type EntryOut = EntryParams;

export interface AttrOut {
  attr: FuseAttr;
  /** Seconds (fractions allowed). */
  attrTimeout: number;
}

export interface OpenOut {
  fh: number;
  /** FOPEN_* */
  openFlags?: number;
  backingId?: number;
}

export interface StatfsOut {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}

/** A readdir entry. `nextOffset` is the cookie that continues right after this entry (never 0). */
export interface DirEntryOut {
  ino: number;
  name: Buffer;
  /** DT_* */
  type: number;
  nextOffset: number;
  /** READDIRPLUS only: the entry for this name (omit or nodeid 0 for "." and ".."). */
  entry?: EntryOut;
}

/**
 * Returns false when the reply buffer is full and the entry was NOT added. For READDIRPLUS the
 * filesystem counts a lookup (nlookup++) only for entries that were added, except "." and "..".
 */
export type DirFiller = (entry: DirEntryOut) => boolean;

export interface InitInfo {
  major: number;
  /** Negotiated minor. */
  minor: number;
  maxReadahead: number;
  /** Flags the kernel offered (flags | flags2 << 32). */
  kernelFlags: bigint;
  /** Flags we replied with. */
  flags: bigint;
  mapAlignment?: number;
}

export interface SetupMappingIn {
  fh: number;
  foffset: number;
  len: number;
  /** FUSE_SETUPMAPPING_FLAG_* */
  flags: number;
  moffset: number;
}

export interface RemoveMappingOne {
  moffset: number;
  len: number;
}

export interface StatxOut {
  attr: FuseAttr;
  attrTimeout: number;
  /** STATX_ATTR_* */
  attributes?: number;
  attributesMask?: number;
}

export interface FuseFilesystem<W extends DaxWindowInfo = DaxWindowInfo> {
  init?(info: InitInfo): MaybePromise<void>;
  destroy?(): MaybePromise<void>;
  lookup?(ctx: RequestContext, parent: number, name: Buffer): MaybePromise<EntryOut>;
  forget?(nodeid: number, nlookup: number): void;
  getattr?(ctx: RequestContext, nodeid: number, fh?: number): MaybePromise<AttrOut>;
  /** Optional: without it, STATX is answered from getattr. */
  statx?(ctx: RequestContext, nodeid: number, fh: number | undefined, mask: number, flags: number): MaybePromise<StatxOut>;
  readlink?(ctx: RequestContext, nodeid: number): MaybePromise<Buffer>;
  open?(ctx: RequestContext, nodeid: number, flags: number): MaybePromise<OpenOut>;
  /**
   * FUSE_READ: writes up to `size` bytes from `offset` into `out` (short only at EOF). `out` is
   * the reply's data area wherever the transport put it (guest buffers, a pooled buffer); write
   * into it before the returned promise settles, never after.
   */
  read?(ctx: RequestContext, nodeid: number, fh: number, offset: number, size: number, out: DataWriter): MaybePromise<void>;
  flush?(ctx: RequestContext, nodeid: number, fh: number): MaybePromise<void>;
  release?(ctx: RequestContext, nodeid: number, fh: number): MaybePromise<void>;
  statfs?(ctx: RequestContext, nodeid: number): MaybePromise<StatfsOut>;
  /** Throws ENODATA when absent. */
  getxattr?(ctx: RequestContext, nodeid: number, name: string): MaybePromise<Buffer>;
  listxattr?(ctx: RequestContext, nodeid: number): MaybePromise<string[]>;
  access?(ctx: RequestContext, nodeid: number, mask: number): MaybePromise<void>;
  opendir?(ctx: RequestContext, nodeid: number, flags: number): MaybePromise<OpenOut>;
  readdir?(ctx: RequestContext, nodeid: number, fh: number, offset: number, plus: boolean, add: DirFiller): MaybePromise<void>;
  releasedir?(ctx: RequestContext, nodeid: number, fh: number): MaybePromise<void>;
  /** SEEK_DATA / SEEK_HOLE (SEEK_SET/END are answered by the server from getattr). */
  lseek?(ctx: RequestContext, nodeid: number, fh: number, offset: number, whence: number): MaybePromise<number>;
  /**
   * FUSE_SETUPMAPPING: map [foffset, foffset+len) of fh at moffset in `window`, the DAX window of
   * the connection the request came on (undefined: it has none).
   */
  setupMapping?(ctx: RequestContext, nodeid: number, m: SetupMappingIn, window: W | undefined): MaybePromise<void>;
  /** FUSE_REMOVEMAPPING of `ranges` in `window` (as for setupMapping). */
  removeMapping?(ctx: RequestContext, ranges: RemoveMappingOne[], window: W | undefined): MaybePromise<void>;
}

/** An errno answer. `errno` is the positive Linux number. */
export class FuseError extends Error {
  readonly errno: number;
  constructor(errno: number | keyof typeof Errno, message?: string) {
    const n = typeof errno === 'number' ? errno : Errno[errno];
    super(message ?? `errno ${n}`);
    this.name = 'FuseError';
    this.errno = n;
  }
}

/** Positive errno for any thrown value: FuseError, ErofsError-like `.code`, Node system errors. */
export function errnoOf(err: unknown): number {
  if (err instanceof FuseError) return err.errno;
  if (err && typeof err === 'object') {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string') {
      const n = errnoFromName(code);
      if (n !== undefined) return n;
    }
  }
  return Errno.EIO;
}
