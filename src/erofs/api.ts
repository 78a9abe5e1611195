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

/** How one inode is stored (what `dump.erofs --nid` shows, and more). */
export interface InodeLayout {
  nid: number;
  /** On-disk inode core: 32 (compact) or 64 (extended) bytes. */
  inodeSize: number;
  /** Bytes of the xattr ibody after the core (0 = no xattrs). */
  xattrSize: number;
  /** i_format datalayout: 0 flat plain, 1 compressed full, 2 flat inline, 3 compressed compact, 4 chunk-based. */
  datalayout: number;
  layoutName: 'flat-plain' | 'compressed-full' | 'flat-inline' | 'compressed-compact' | 'chunk-based';
  /** The inode lives in the metabox. */
  inMetabox: boolean;
  /**
   * Bytes the data occupies on disk as erofs-utils counts them: i_size for uncompressed
   * layouts, the compressed block count × block size for compressed ones.
   */
  onDiskSize: number;
  /** Chunk size of chunk-based files. */
  chunkSize?: number;
  /** Lcluster size and declared algorithms of compressed files (lcluster-index layouts). */
  lclusterSize?: number;
  /** Where the xattr ibody's name filter says names are absent (undefined: no filter). */
  xattrNameFilter?: number;
}

/**
 * One piece of a file's data map, as the kernel maps it and `dump.erofs -e` lists it:
 * block-mapped data (plain, chunk, hole) in whole blocks, so the last such extent may end past
 * EOF; compressed extents in decoded bytes.
 */
export interface DataExtent {
  logical: number;
  length: number;
  /**
   * plain: stored as is; inline: in the inode's metadata block (tail packing); hole: no data;
   * compressed: a pcluster; fragment: inside the packed inode; chunk: one chunk of a chunk-based file.
   */
  kind: 'plain' | 'inline' | 'hole' | 'compressed' | 'fragment' | 'chunk';
  /** Device index (0 = primary) holding `physical`. */
  device: number;
  /** Byte offset in that device (metadata position for inline, packed-inode offset for fragment). */
  physical: number;
  /** Encoded bytes on disk (0 for holes and fragments). */
  physicalLength: number;
  /** Algorithm of a compressed extent ('lz4', …), or 'plain'/'interlaced' for uncompressed pclusters. */
  algorithm?: string;
  /** The pcluster decodes to more than this extent (dedupe reference into a larger one). */
  partialRef?: boolean;
}

/** One extra device of the image's device table. */
export interface DeviceSlotInfo {
  /** 1-based, the index chunk indexes and dump.erofs use. */
  index: number;
  /** The slot's tag (a blob digest or path as mkfs.erofs wrote it). */
  tag: string;
  blocks: number;
  /** First block of this device in the unified address space (0 = not mapped there). */
  uniaddr: number;
}

/** Superblock fields beyond the summary, for inspection. */
export interface SuperblockDetails {
  metaBlkAddr: number;
  xattrBlkAddr: number;
  sbSize: number;
  packedNid: number;
  metaboxNid: number;
  /** lz4_max_distance (images without COMPR_CFGS). */
  lz4MaxDistance: number;
  compatNames: string[];
  incompatNames: string[];
  /** Oldest upstream Linux version that mounts the image, e.g. "6.4" (undefined: any). */
  minKernel: string | undefined;
  devices: DeviceSlotInfo[];
}

/** An opened image with the layout queries inspection needs. */
export interface ErofsImageReader extends ErofsReader {
  readonly details: SuperblockDetails;
  inodeLayout(nid: number): InodeLayout;
  /** The data map of a regular file, directory or symlink, from offset 0 to EOF. */
  extents(nid: number): DataExtent[];
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
