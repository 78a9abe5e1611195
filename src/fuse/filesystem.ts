// The filesystem a FuseServer serves. Every method is optional: an absent method answers ENOSYS
// (the kernel then stops asking, or falls back to its own behaviour), except RELEASE/RELEASEDIR
// (absent = success), OPENDIR (absent = handle 0) and FORGET (absent = nothing to do). Methods
// throw FuseError (or an error with an errno-name `code`, e.g. ErofsError) to answer an errno.
import type { FuseAttr, EntryParams } from './abi.js';
import { Errno, errnoFromName } from './abi.js';

export type { FuseAttr } from './abi.js';
export type MaybePromise<T> = T | Promise<T>;

/** Who asks, from fuse_in_header, plus the transport's queue index. */
export interface RequestContext {
  opcode: number;
  unique: bigint;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
  queue?: number;
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

export interface FuseFilesystem {
  init?(info: InitInfo): MaybePromise<void>;
  destroy?(): MaybePromise<void>;
  lookup?(ctx: RequestContext, parent: number, name: Buffer): MaybePromise<EntryOut>;
  forget?(nodeid: number, nlookup: number): void;
  getattr?(ctx: RequestContext, nodeid: number, fh?: number): MaybePromise<AttrOut>;
  /** Optional: without it, STATX is answered from getattr. */
  statx?(ctx: RequestContext, nodeid: number, fh: number | undefined, mask: number, flags: number): MaybePromise<StatxOut>;
  readlink?(ctx: RequestContext, nodeid: number): MaybePromise<Buffer>;
  open?(ctx: RequestContext, nodeid: number, flags: number): MaybePromise<OpenOut>;
  /** Up to `size` bytes; short only at EOF. May return several buffers (reply iovecs). */
  read?(ctx: RequestContext, nodeid: number, fh: number, offset: number, size: number): MaybePromise<Buffer | Buffer[]>;
  /**
   * Optional zero-allocation READ: fill target[0, n) (target.length >= size) and return n (short
   * only at EOF), or return the data as buffers like read() (e.g. from a hook). Used when the
   * transport lends the server a reply buffer; `target` is only valid until the reply is sent.
   */
  readInto?(ctx: RequestContext, nodeid: number, fh: number, offset: number, size: number, target: Buffer): MaybePromise<number | Buffer | Buffer[]>;
  /**
   * Optional zero-copy READ into the transport's reply memory (e.g. a guest's buffers): fill the
   * segments in order with up to `size` bytes (their total is exactly `size`) and return the
   * count n synchronously (short only at EOF). The segments may be written only during this call,
   * never later: to answer asynchronously (or from a cache), leave them alone and return the
   * data like read() — as buffers, or a promise of buffers (never a promise of a count).
   */
  readIntoSegments?(ctx: RequestContext, nodeid: number, fh: number, offset: number, size: number, segments: readonly Buffer[]): number | Buffer | Buffer[] | Promise<Buffer | Buffer[]>;
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
  /** DAX (issue 5): map [foffset, foffset+len) of fh at moffset in the window. */
  setupMapping?(ctx: RequestContext, nodeid: number, m: SetupMappingIn): MaybePromise<void>;
  removeMapping?(ctx: RequestContext, ranges: RemoveMappingOne[]): MaybePromise<void>;
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
