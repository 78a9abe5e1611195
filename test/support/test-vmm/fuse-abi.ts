// The bits of the FUSE ABI (Linux include/uapi/linux/fuse.h) the test VMM's client speaks.

export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 38;
export const FUSE_ROOT_ID = 1n;
export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;

export const Op = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9,
  UNLINK: 10, RMDIR: 11, RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17,
  RELEASE: 18, FSYNC: 20, SETXATTR: 21, GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24, FLUSH: 25,
  INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, FSYNCDIR: 30, GETLK: 31, SETLK: 32,
  SETLKW: 33, ACCESS: 34, CREATE: 35, INTERRUPT: 36, BMAP: 37, DESTROY: 38, IOCTL: 39, POLL: 40,
  BATCH_FORGET: 42, FALLOCATE: 43, READDIRPLUS: 44, RENAME2: 45, LSEEK: 46, COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48, REMOVEMAPPING: 49, SYNCFS: 50, STATX: 52,
} as const;

export const InitFlag = {
  ASYNC_READ: 1 << 0,
  POSIX_LOCKS: 1 << 1,
  ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4,
  BIG_WRITES: 1 << 5,
  DONT_MASK: 1 << 6,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  MAP_ALIGNMENT: 1 << 26,
  INIT_EXT: 1 << 30,
} as const;
/** flags2 (bit n of flags2 = init flag 32+n). */
export const InitFlag2 = { SECURITY_CTX: 1 << 0, HAS_INODE_DAX: 1 << 1 } as const;

export const FOPEN_DIRECT_IO = 1;
export const FOPEN_KEEP_CACHE = 2;
export const FUSE_ATTR_DAX = 2;
export const SETUPMAPPING_FLAG_WRITE = 1n;
export const SETUPMAPPING_FLAG_READ = 2n;

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
export const S_IFIFO = 0o010000;
export const S_IFSOCK = 0o140000;

export const Errno: Record<string, number> = {
  EPERM: 1, ENOENT: 2, EIO: 5, EBADF: 9, EAGAIN: 11, ENOMEM: 12, EACCES: 13, EFAULT: 14, EEXIST: 17,
  ENOTDIR: 20, EISDIR: 21, EINVAL: 22, ENFILE: 23, EMFILE: 24, EFBIG: 27, ENOSPC: 28, EROFS: 30,
  ERANGE: 34, ENAMETOOLONG: 36, ENOSYS: 38, ENOTEMPTY: 39, ELOOP: 40, ENODATA: 61, EOVERFLOW: 75,
  EPROTO: 71, EOPNOTSUPP: 95, ENXIO: 6, ESTALE: 116,
};
export function errnoName(n: number): string {
  for (const [k, v] of Object.entries(Errno)) if (v === n) return k;
  return `errno ${n}`;
}

export interface FuseAttr {
  ino: bigint;
  size: bigint;
  blocks: bigint;
  atime: bigint;
  mtime: bigint;
  ctime: bigint;
  atimensec: number;
  mtimensec: number;
  ctimensec: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  blksize: number;
  flags: number;
}
export const ATTR_SIZE = 88;

export function parseAttr(b: Buffer, o: number): FuseAttr {
  return {
    ino: b.readBigUInt64LE(o),
    size: b.readBigUInt64LE(o + 8),
    blocks: b.readBigUInt64LE(o + 16),
    atime: b.readBigUInt64LE(o + 24),
    mtime: b.readBigUInt64LE(o + 32),
    ctime: b.readBigUInt64LE(o + 40),
    atimensec: b.readUInt32LE(o + 48),
    mtimensec: b.readUInt32LE(o + 52),
    ctimensec: b.readUInt32LE(o + 56),
    mode: b.readUInt32LE(o + 60),
    nlink: b.readUInt32LE(o + 64),
    uid: b.readUInt32LE(o + 68),
    gid: b.readUInt32LE(o + 72),
    rdev: b.readUInt32LE(o + 76),
    blksize: b.readUInt32LE(o + 80),
    flags: b.readUInt32LE(o + 84),
  };
}

export interface EntryOut {
  nodeid: bigint;
  generation: bigint;
  entryValid: bigint;
  attrValid: bigint;
  attr: FuseAttr;
}
export const ENTRY_OUT_SIZE = 128;
export function parseEntry(b: Buffer, o = 0): EntryOut {
  return {
    nodeid: b.readBigUInt64LE(o),
    generation: b.readBigUInt64LE(o + 8),
    entryValid: b.readBigUInt64LE(o + 16),
    attrValid: b.readBigUInt64LE(o + 24),
    attr: parseAttr(b, o + 40),
  };
}

export interface Dirent { ino: bigint; off: bigint; type: number; name: Buffer }
export interface DirentPlus extends Dirent { entry: EntryOut }

/** Decodes a READDIR reply (stops at a truncated or malformed record). */
export function parseDirents(b: Buffer): Dirent[] {
  const out: Dirent[] = [];
  let o = 0;
  while (o + 24 <= b.length) {
    const namelen = b.readUInt32LE(o + 16);
    if (o + 24 + namelen > b.length) throw new Error('READDIR reply: truncated dirent');
    out.push({ ino: b.readBigUInt64LE(o), off: b.readBigUInt64LE(o + 8), type: b.readUInt32LE(o + 20), name: Buffer.from(b.subarray(o + 24, o + 24 + namelen)) });
    o += (24 + namelen + 7) & ~7;
  }
  return out;
}

export function parseDirentsPlus(b: Buffer): DirentPlus[] {
  const out: DirentPlus[] = [];
  let o = 0;
  while (o + ENTRY_OUT_SIZE + 24 <= b.length) {
    const entry = parseEntry(b, o);
    const d = o + ENTRY_OUT_SIZE;
    const namelen = b.readUInt32LE(d + 16);
    if (d + 24 + namelen > b.length) throw new Error('READDIRPLUS reply: truncated dirent');
    out.push({ entry, ino: b.readBigUInt64LE(d), off: b.readBigUInt64LE(d + 8), type: b.readUInt32LE(d + 20), name: Buffer.from(b.subarray(d + 24, d + 24 + namelen)) });
    o = d + ((24 + namelen + 7) & ~7);
  }
  return out;
}

/** fuse_attr.rdev holds the kernel's new_encode_dev() form. */
export function decodeRdev(rdev: number): [number, number] {
  return [(rdev >>> 8) & 0xfff, (rdev & 0xff) | ((rdev >>> 12) & 0xfff00)];
}

export function inHeader(len: number, opcode: number, unique: bigint, nodeid: bigint, uid = 0, gid = 0, pid = 0): Buffer {
  const h = Buffer.alloc(IN_HEADER_SIZE);
  h.writeUInt32LE(len, 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(unique, 8);
  h.writeBigUInt64LE(nodeid, 16);
  h.writeUInt32LE(uid, 24);
  h.writeUInt32LE(gid, 28);
  h.writeUInt32LE(pid, 32);
  return h;
}

export function nameArg(name: string | Buffer): Buffer {
  return Buffer.concat([Buffer.isBuffer(name) ? name : Buffer.from(name), Buffer.alloc(1)]);
}

export interface Kstatfs {
  blocks: bigint; bfree: bigint; bavail: bigint; files: bigint; ffree: bigint;
  bsize: number; namelen: number; frsize: number;
}
export function parseStatfs(b: Buffer): Kstatfs {
  return {
    blocks: b.readBigUInt64LE(0), bfree: b.readBigUInt64LE(8), bavail: b.readBigUInt64LE(16),
    files: b.readBigUInt64LE(24), ffree: b.readBigUInt64LE(32),
    bsize: b.readUInt32LE(40), namelen: b.readUInt32LE(44), frsize: b.readUInt32LE(48),
  };
}
