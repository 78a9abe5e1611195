// The public surface of the EROFS reader. Everything above src/erofs (vfs, share, cli, tests)
// codes against these types only, so the reader's internals can change freely.

export type FileType = 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket';

/** Attributes of one inode, as the Linux EROFS driver reports them through stat(2). */
export interface InodeAttr {
  nid: number;
  type: FileType;
  /** Full st_mode, file-type bits included. */
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  /** Device number for char/block devices, Linux `new_encode_dev` form (0 otherwise). */
  rdev: number;
  /** 512-byte units occupied, as the kernel computes st_blocks. */
  blocks: number;
}

export interface DirEntry {
  name: Buffer;
  nid: number;
  type: FileType;
  /** Opaque, stable cookie: passing it back to readdir continues right after this entry. */
  nextOffset: number;
}

export interface Xattr {
  /** Full name as listxattr(2) shows it, e.g. "user.foo", "system.posix_acl_access". */
  name: string;
  value: Buffer;
}

export interface SuperblockSummary {
  blockSize: number;
  featureCompat: number;
  featureIncompat: number;
  /** Names of the feature bits that are set, e.g. ["sb_csum", "lz4_0padding"]. */
  features: string[];
  /** Names of compression algorithms the image declares, e.g. ["lz4", "zstd"]. */
  compressionAlgorithms: string[];
  inodeCount: number;
  blocks: number;
  rootNid: number;
  uuid: string;
  volumeName: string;
  extraDevices: number;
  buildTimeSec: number;
  buildTimeNsec: number;
}

/** Result of read-side layout queries used by page sharing (src/share). */
export interface PlainExtent {
  /** Index into the image's devices (0 = primary image file). */
  device: number;
  /** Byte offset in that device. */
  physical: number;
  /** Byte offset in the file. */
  logical: number;
  length: number;
}

/**
 * Errors raised by the reader carry a POSIX errno name: EIO for corruption, ENOENT, ENOTDIR,
 * EINVAL (bad offset/argument), ENODATA (missing xattr), EOPNOTSUPP (unsupported feature),
 * ENXIO (seek: offset at/after EOF, or no data after it).
 */
export class ErofsError extends Error {
  constructor(
    readonly code: 'EIO' | 'ENOENT' | 'ENOTDIR' | 'EISDIR' | 'EINVAL' | 'ENODATA' | 'EOPNOTSUPP' | 'ERANGE' | 'ENXIO',
    message: string,
  ) {
    super(message);
    this.name = 'ErofsError';
  }
}

/**
 * Memory-mapping calls the reader uses to map image files read-only (the project's native
 * addon, src/native, provides them). Only `mmap` and `munmap` are required.
 */
export interface MmapProvider {
  mmap(fd: number, offset: number, length: number, prot: number, flags: number): ArrayBuffer;
  munmap(region: ArrayBuffer): void;
  /** Access-pattern advice (MADV_RANDOM on the mapping, MADV_WILLNEED ahead of reads). */
  madvise?(region: ArrayBuffer, offset: number, length: number, advice: number): void;
  /** A bulk copy faster than Buffer.copy for large ranges (dst[dstOffset..] = src[srcOffset..]). */
  copy?(dst: Uint8Array, dstOffset: number, src: Uint8Array, srcOffset: number, length: number): void;
  constants: { PROT_READ: number; MAP_SHARED: number };
}

export interface OpenOptions {
  /** Extra devices (device table order), for chunk-based multi-device images. */
  devices?: string[];
  /** Upper bound for the decompressed-block cache, bytes (default 64 MiB). */
  cacheBytes?: number;
  /**
   * How image files are read: mapped read-only through this provider and copied from the
   * mapping; `true` or omitted = the native addon's (src/native), when it loads; `false` = pread.
   * An image truncated while mapped would fault: pass false for files that may change underneath.
   */
  mmap?: boolean | MmapProvider;
  /**
   * Answer getXattr of absent names from the inodes' xattr name filters when the image has them
   * (default true, as the kernel does); false always parses the xattrs (for comparisons).
   */
  xattrNameFilter?: boolean;
}

/** An opened image. All methods are synchronous and bounded; corrupt input throws ErofsError. */
export interface ErofsReader {
  readonly superblock: SuperblockSummary;
  readonly rootNid: number;
  getAttr(nid: number): InodeAttr;
  /** The child's nid, or undefined when the name is absent. Throws ENOTDIR on a non-directory. */
  lookup(dirNid: number, name: Buffer | string): number | undefined;
  /**
   * Entries from `offset` (0 = start; then a previous entry's nextOffset), including "." and
   * "..", at most `max` entries.
   */
  readdir(dirNid: number, offset: number, max: number): DirEntry[];
  /** Up to `length` bytes from `offset` (short only at EOF). */
  read(nid: number, offset: number, length: number): Buffer;
  /**
   * Optional zero-allocation variant of read(): fills target[targetOffset, …) with up to
   * `length` bytes from `offset` and returns the count (short only at EOF). Prefer it on hot
   * paths (FUSE_READ straight into reply/guest buffers): fresh buffers cost page faults.
   */
  readInto?(nid: number, offset: number, length: number, target: Uint8Array, targetOffset?: number): number;
  readlink(nid: number): Buffer;
  listXattrs(nid: number): Xattr[];
  /** Throws ENODATA when absent. */
  getXattr(nid: number, name: string): Buffer;
  /** Raw value of the superblock-named inode digest xattr (`sha256:` + 32 bytes), if any. */
  fingerprint(nid: number): Buffer | undefined;
  /**
   * Whether a regular file's data is stored uncompressed (a read is a copy out of the image, with
   * no decoding): the per-inode answer, without computing the extents. A hint for choosing a read
   * path: false for anything else, including an inode that cannot be read (the read reports that).
   */
  storedPlain(nid: number): boolean;
  /** Uncompressed on-disk extents of a regular file, or undefined if its data is not plain. */
  plainExtents(nid: number): PlainExtent[] | undefined;
  /** SEEK_DATA / SEEK_HOLE support: the next data/hole offset at or after `offset`. */
  seek(nid: number, offset: number, whence: 'data' | 'hole'): number;
  close(): void;
}
