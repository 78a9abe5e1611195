// The FUSE kernel ABI (Linux include/uapi/linux/fuse.h), as far as a read-only server needs it:
// opcodes, INIT flags (incl. flags2 behind FUSE_INIT_EXT), struct sizes, errno numbers and
// little-endian encoders for the reply structures. Numbers follow protocol 7.31+ (7.45 opcodes).

export const FUSE_KERNEL_VERSION = 7;
/** Highest minor we speak. Chosen so every behaviour the kernel ties to the minor is handled. */
export const FUSE_KERNEL_MINOR_VERSION = 41;
/** Lowest minor we accept (struct layouts before 7.13 differ in ways we do not handle). */
export const FUSE_MIN_MINOR_VERSION = 13;
export const FUSE_ROOT_ID = 1;
export const FUSE_MIN_READ_BUFFER = 8192;

export const Opcode = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  NOTIFY_REPLY: 41,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48,
  REMOVEMAPPING: 49,
  SYNCFS: 50,
  TMPFILE: 51,
  STATX: 52,
  COPY_FILE_RANGE_64: 53,
} as const;

export const OPCODE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Opcode).map(([k, v]) => [v, k]),
);

/** Opcodes that would modify the filesystem: a read-only export answers them with EROFS. */
export const WRITE_OPCODES: ReadonlySet<number> = new Set([
  Opcode.SETATTR, Opcode.SYMLINK, Opcode.MKNOD, Opcode.MKDIR, Opcode.UNLINK, Opcode.RMDIR,
  Opcode.RENAME, Opcode.LINK, Opcode.WRITE, Opcode.SETXATTR, Opcode.REMOVEXATTR,
  Opcode.CREATE, Opcode.FALLOCATE, Opcode.RENAME2, Opcode.COPY_FILE_RANGE, Opcode.TMPFILE,
  Opcode.COPY_FILE_RANGE_64,
]);

// INIT flags (fuse_init_in/out.flags; bits 32.. live in flags2 when FUSE_INIT_EXT is set).
export const InitFlag = {
  ASYNC_READ: 1n << 0n,
  POSIX_LOCKS: 1n << 1n,
  FILE_OPS: 1n << 2n,
  ATOMIC_O_TRUNC: 1n << 3n,
  EXPORT_SUPPORT: 1n << 4n,
  BIG_WRITES: 1n << 5n,
  DONT_MASK: 1n << 6n,
  SPLICE_WRITE: 1n << 7n,
  SPLICE_MOVE: 1n << 8n,
  SPLICE_READ: 1n << 9n,
  FLOCK_LOCKS: 1n << 10n,
  HAS_IOCTL_DIR: 1n << 11n,
  AUTO_INVAL_DATA: 1n << 12n,
  DO_READDIRPLUS: 1n << 13n,
  READDIRPLUS_AUTO: 1n << 14n,
  ASYNC_DIO: 1n << 15n,
  WRITEBACK_CACHE: 1n << 16n,
  NO_OPEN_SUPPORT: 1n << 17n,
  PARALLEL_DIROPS: 1n << 18n,
  HANDLE_KILLPRIV: 1n << 19n,
  POSIX_ACL: 1n << 20n,
  ABORT_ERROR: 1n << 21n,
  MAX_PAGES: 1n << 22n,
  CACHE_SYMLINKS: 1n << 23n,
  NO_OPENDIR_SUPPORT: 1n << 24n,
  EXPLICIT_INVAL_DATA: 1n << 25n,
  MAP_ALIGNMENT: 1n << 26n,
  SUBMOUNTS: 1n << 27n,
  HANDLE_KILLPRIV_V2: 1n << 28n,
  SETXATTR_EXT: 1n << 29n,
  INIT_EXT: 1n << 30n,
  INIT_RESERVED: 1n << 31n,
  SECURITY_CTX: 1n << 32n,
  HAS_INODE_DAX: 1n << 33n,
  CREATE_SUPP_GROUP: 1n << 34n,
  HAS_EXPIRE_ONLY: 1n << 35n,
  DIRECT_IO_ALLOW_MMAP: 1n << 36n,
  PASSTHROUGH: 1n << 37n,
  NO_EXPORT_SUPPORT: 1n << 38n,
  HAS_RESEND: 1n << 39n,
  ALLOW_IDMAP: 1n << 40n,
  OVER_IO_URING: 1n << 41n,
  REQUEST_TIMEOUT: 1n << 42n,
} as const;

/** fuse_open_out.open_flags */
export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_NONSEEKABLE = 1 << 2;
export const FOPEN_CACHE_DIR = 1 << 3;
export const FOPEN_STREAM = 1 << 4;
export const FOPEN_NOFLUSH = 1 << 5;
export const FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6;
export const FOPEN_PASSTHROUGH = 1 << 7;

/** fuse_attr.flags */
export const FUSE_ATTR_SUBMOUNT = 1 << 0;
export const FUSE_ATTR_DAX = 1 << 1;

/** fuse_setupmapping_in.flags */
export const FUSE_SETUPMAPPING_FLAG_WRITE = 1 << 0;
export const FUSE_SETUPMAPPING_FLAG_READ = 1 << 1;

/** Linux DAX for virtio-fs maps in 2 MiB ranges. */
export const FUSE_DAX_SHIFT = 21;

export const FUSE_GETATTR_FH = 1 << 0;
export const FUSE_READ_LOCKOWNER = 1 << 1;

/** Directory entry types (DT_*). */
export const DT_UNKNOWN = 0;
export const DT_FIFO = 1;
export const DT_CHR = 2;
export const DT_DIR = 4;
export const DT_BLK = 6;
export const DT_REG = 8;
export const DT_LNK = 10;
export const DT_SOCK = 12;

export const SEEK_SET = 0;
export const SEEK_CUR = 1;
export const SEEK_END = 2;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

/** statx mask bits and attributes used in fuse_statx. */
export const STATX_TYPE = 0x1;
export const STATX_MODE = 0x2;
export const STATX_NLINK = 0x4;
export const STATX_UID = 0x8;
export const STATX_GID = 0x10;
export const STATX_ATIME = 0x20;
export const STATX_MTIME = 0x40;
export const STATX_CTIME = 0x80;
export const STATX_INO = 0x100;
export const STATX_SIZE = 0x200;
export const STATX_BLOCKS = 0x400;
export const STATX_BASIC_STATS = 0x7ff;
export const STATX_ATTR_COMPRESSED = 0x4;
export const STATX_ATTR_IMMUTABLE = 0x10;

// Struct sizes (bytes).
export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
export const ATTR_SIZE = 88;
export const ENTRY_OUT_SIZE = 40 + ATTR_SIZE; // 128
export const COMPAT_ENTRY_OUT_SIZE = 120;
export const ATTR_OUT_SIZE = 16 + ATTR_SIZE; // 104
export const COMPAT_ATTR_OUT_SIZE = 96;
export const OPEN_OUT_SIZE = 16;
export const KSTATFS_SIZE = 80;
export const COMPAT_STATFS_SIZE = 48;
export const GETXATTR_OUT_SIZE = 8;
export const LSEEK_OUT_SIZE = 8;
export const INIT_OUT_SIZE = 64;
export const COMPAT_INIT_OUT_SIZE = 8;
export const COMPAT_22_INIT_OUT_SIZE = 24;
export const DIRENT_HEADER_SIZE = 24;
export const FUSE_STATX_SIZE = 256;
export const STATX_OUT_SIZE = 32 + FUSE_STATX_SIZE;
export const READ_IN_SIZE = 40;
export const COMPAT_READ_IN_SIZE = 24;

/** Linux errno numbers a FUSE server replies with (negated in fuse_out_header.error). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EMLINK: 31,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENODATA: 61,
  EPROTO: 71,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
  ESTALE: 116,
} as const;
export type ErrnoName = keyof typeof Errno;

export function errnoFromName(name: string): number | undefined {
  return (Errno as Record<string, number>)[name];
}

const TWO32 = 0x1_0000_0000;

/** Writes an integer as u64 LE. Negative values are stored in two's complement. */
export function writeU64(buf: Buffer, off: number, n: number | bigint): void {
  if (typeof n === 'bigint') {
    buf.writeBigUInt64LE(BigInt.asUintN(64, n), off);
    return;
  }
  if (n >= 0 && n <= Number.MAX_SAFE_INTEGER) {
    const v = Math.floor(n);
    buf.writeUInt32LE(v % TWO32, off);
    buf.writeUInt32LE(Math.floor(v / TWO32), off + 4);
  } else {
    buf.writeBigUInt64LE(BigInt.asUintN(64, BigInt(Math.trunc(Number.isFinite(n) ? n : 0))), off);
  }
}

/** Reads u64 LE as a number (values above 2^53 lose precision; callers range-check). */
export function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * TWO32;
}

/** The attributes in a fuse_attr. Times in seconds + nanoseconds. */
export interface FuseAttr {
  ino: number;
  size: number;
  blocks: number;
  atimeSec: number;
  atimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
  /** Full st_mode incl. type bits. */
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  /** Linux new_encode_dev form. */
  rdev: number;
  blksize: number;
  /** FUSE_ATTR_* */
  flags?: number;
}

export function encodeAttr(buf: Buffer, off: number, a: FuseAttr): void {
  writeU64(buf, off, a.ino);
  writeU64(buf, off + 8, a.size);
  writeU64(buf, off + 16, a.blocks);
  writeU64(buf, off + 24, a.atimeSec);
  writeU64(buf, off + 32, a.mtimeSec);
  writeU64(buf, off + 40, a.ctimeSec);
  buf.writeUInt32LE(a.atimeNsec >>> 0, off + 48);
  buf.writeUInt32LE(a.mtimeNsec >>> 0, off + 52);
  buf.writeUInt32LE(a.ctimeNsec >>> 0, off + 56);
  buf.writeUInt32LE(a.mode >>> 0, off + 60);
  buf.writeUInt32LE(a.nlink >>> 0, off + 64);
  buf.writeUInt32LE(a.uid >>> 0, off + 68);
  buf.writeUInt32LE(a.gid >>> 0, off + 72);
  buf.writeUInt32LE(a.rdev >>> 0, off + 76);
  buf.writeUInt32LE(a.blksize >>> 0, off + 80);
  buf.writeUInt32LE((a.flags ?? 0) >>> 0, off + 84);
}

/** Splits a timeout in (fractional) seconds into the u64 seconds + u32 nanoseconds pair. */
export function splitTimeout(seconds: number): [number, number] {
  if (!Number.isFinite(seconds) || seconds <= 0) return [0, 0];
  const s = Math.floor(seconds);
  const ns = Math.min(999_999_999, Math.round((seconds - s) * 1e9));
  return [s, ns];
}

export interface EntryParams {
  nodeid: number;
  generation?: number;
  entryTimeout: number;
  attrTimeout: number;
  /** May be absent for a negative entry (nodeid 0). */
  attr?: FuseAttr;
}

const ZERO_ATTR: FuseAttr = {
  ino: 0, size: 0, blocks: 0, atimeSec: 0, atimeNsec: 0, mtimeSec: 0, mtimeNsec: 0, ctimeSec: 0,
  ctimeNsec: 0, mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, blksize: 0, flags: 0,
};

/** fuse_entry_out (128 bytes) at `off`. */
export function encodeEntryOut(buf: Buffer, off: number, e: EntryParams): void {
  const [es, ens] = splitTimeout(e.entryTimeout);
  const [as, ans] = splitTimeout(e.attrTimeout);
  writeU64(buf, off, e.nodeid);
  writeU64(buf, off + 8, e.generation ?? 0);
  writeU64(buf, off + 16, es);
  writeU64(buf, off + 24, as);
  buf.writeUInt32LE(ens, off + 32);
  buf.writeUInt32LE(ans, off + 36);
  encodeAttr(buf, off + 40, e.attr ?? ZERO_ATTR);
}

/** fuse_dirent record size (8-byte aligned). */
export function direntSize(nameLen: number): number {
  return (DIRENT_HEADER_SIZE + nameLen + 7) & ~7;
}

export function direntPlusSize(nameLen: number): number {
  return (ENTRY_OUT_SIZE + DIRENT_HEADER_SIZE + nameLen + 7) & ~7;
}

/** Writes a fuse_dirent; returns bytes used. The padding is zeroed. */
export function encodeDirent(buf: Buffer, off: number, ino: number, nextOff: number, type: number, name: Buffer): number {
  const size = direntSize(name.length);
  writeU64(buf, off, ino);
  writeU64(buf, off + 8, nextOff);
  buf.writeUInt32LE(name.length, off + 16);
  buf.writeUInt32LE(type, off + 20);
  name.copy(buf, off + DIRENT_HEADER_SIZE);
  buf.fill(0, off + DIRENT_HEADER_SIZE + name.length, off + size);
  return size;
}

/** Linux new_decode_dev. */
export function devMajor(dev: number): number {
  return (dev & 0xfff00) >>> 8;
}
export function devMinor(dev: number): number {
  return (dev & 0xff) | ((dev >>> 12) & 0xfff00);
}

export function typeToDt(mode: number): number {
  switch (mode & 0o170000) {
    case 0o100000: return DT_REG;
    case 0o040000: return DT_DIR;
    case 0o120000: return DT_LNK;
    case 0o020000: return DT_CHR;
    case 0o060000: return DT_BLK;
    case 0o010000: return DT_FIFO;
    case 0o140000: return DT_SOCK;
    default: return DT_UNKNOWN;
  }
}
