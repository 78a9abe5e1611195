// EROFS on-disk constants and small decoding helpers (little-endian throughout).
// Layouts follow Linux fs/erofs/erofs_fs.h and erofs-utils include/erofs_fs.h (1.9).

export const SUPER_OFFSET = 1024;
export const SUPER_MAGIC = 0xe0f5e1e2;
/** Size of the fixed superblock part; sb_extslots adds 16-byte slots after it. */
export const SUPER_BASE_SIZE = 128;
export const SB_EXTSLOT_SIZE = 16;
export const ISLOT_BITS = 5; // nid << 5 = byte offset of an inode in the metadata area
export const DEVT_SLOT_SIZE = 128;

export const COMPAT = {
  SB_CHKSUM: 0x1,
  MTIME: 0x2,
  XATTR_FILTER: 0x4,
  SHARED_EA_IN_METABOX: 0x8,
  PLAIN_XATTR_PFX: 0x10,
  ISHARE_XATTRS: 0x20,
} as const;

export const INCOMPAT = {
  ZERO_PADDING: 0x1,
  COMPR_CFGS: 0x2,
  BIG_PCLUSTER: 0x2,
  CHUNKED_FILE: 0x4,
  DEVICE_TABLE: 0x8,
  COMPR_HEAD2: 0x8,
  ZTAILPACKING: 0x10,
  FRAGMENTS: 0x20,
  DEDUPE: 0x20,
  XATTR_PREFIXES: 0x40,
  B48BIT: 0x80,
  METABOX: 0x100,
} as const;

/** Every INCOMPAT bit this reader understands; anything else is refused. */
export const KNOWN_INCOMPAT = 0x1ff;

export const COMPAT_NAMES: ReadonlyArray<[number, string]> = [
  [COMPAT.SB_CHKSUM, 'sb_csum'],
  [COMPAT.MTIME, 'mtime'],
  [COMPAT.XATTR_FILTER, 'xattr_filter'],
  [COMPAT.SHARED_EA_IN_METABOX, 'shared_ea_in_metabox'],
  [COMPAT.PLAIN_XATTR_PFX, 'plain_xattr_pfx'],
  [COMPAT.ISHARE_XATTRS, 'ishare_xattrs'],
];

export const INCOMPAT_NAMES: ReadonlyArray<[number, string]> = [
  [INCOMPAT.ZERO_PADDING, 'lz4_0padding'],
  [INCOMPAT.COMPR_CFGS, 'compr_cfgs'],
  [INCOMPAT.BIG_PCLUSTER, 'big_pcluster'],
  [INCOMPAT.CHUNKED_FILE, 'chunked_file'],
  [INCOMPAT.DEVICE_TABLE, 'device_table'],
  [INCOMPAT.ZTAILPACKING, 'ztailpacking'],
  [INCOMPAT.FRAGMENTS, 'fragments'],
  [INCOMPAT.DEDUPE, 'dedupe'],
  [INCOMPAT.XATTR_PREFIXES, 'xattr_prefixes'],
  [INCOMPAT.B48BIT, '48bit'],
  [INCOMPAT.METABOX, 'metabox'],
];

export const COMPRESSION_NAMES = ['lz4', 'lzma', 'deflate', 'zstd'] as const;
/**
 * The upstream Linux release that first mounts images using an INCOMPAT feature (what
 * dump.erofs reports as the required kernel version), as major * 100 + minor.
 */
export const INCOMPAT_MIN_KERNEL: ReadonlyArray<[number, number]> = [
  [INCOMPAT.ZERO_PADDING, 504],
  [INCOMPAT.COMPR_CFGS, 513],
  [INCOMPAT.BIG_PCLUSTER, 513],
  [INCOMPAT.CHUNKED_FILE, 515],
  [INCOMPAT.DEVICE_TABLE, 516],
  [INCOMPAT.ZTAILPACKING, 517],
  [INCOMPAT.FRAGMENTS, 601],
  [INCOMPAT.DEDUPE, 601],
  [INCOMPAT.XATTR_PREFIXES, 604],
  [INCOMPAT.B48BIT, 615],
  [INCOMPAT.METABOX, 617],
];
/** The same for compression algorithms by on-disk id (LZ4 comes with 0padding's 5.4). */
export const ALGORITHM_MIN_KERNEL: ReadonlyArray<number> = [0, 516, 606, 610];



/** On-disk compression algorithm ids (Z_EROFS_COMPRESSION_*), index = id. */
export const COMPRESSION_LZ4 = 0;
export const COMPRESSION_LZMA = 1;

// ---- compressed inodes (z_erofs_*): map header, lcluster indexes, 48-bit extent records ----

/** The 8-byte z_erofs_map_header sits at round_up(inode + xattrs, 8). */
export const Z_MAP_HEADER_SIZE = 8;
export const Z_MAP_HEADER_ALIGN = 8;
/** Full (8-byte) lcluster indexes start this far after the map header's position. */
export const Z_FULL_INDEXES_OFFSET = 16;
export const Z_FULL_INDEX_SIZE = 8;
/** h_clusterbits bit 7: the whole file is a fragment of the packed inode (63-bit offset). */
export const Z_FRAGMENT_INODE_BIT = 0x80;

/** h_advise bits. EXTENTS (48-bit layout, full inodes) reuses COMPACTED_2B's bit. */
export const Z_ADVISE = {
  COMPACTED_2B: 0x0001,
  EXTENTS: 0x0001,
  BIG_PCLUSTER_1: 0x0002,
  BIG_PCLUSTER_2: 0x0004,
  INLINE_PCLUSTER: 0x0008,
  INTERLACED_PCLUSTER: 0x0010,
  FRAGMENT_PCLUSTER: 0x0020,
} as const;

/** Lcluster index types (di_advise bits 0-1 / compact type field). */
export const Z_LCLUSTER_TYPE = { PLAIN: 0, HEAD1: 1, NONHEAD: 2, HEAD2: 3 } as const;

/** HEAD lcluster: this pcluster is a partial (dedupe) reference. */
export const Z_LI_PARTIAL_REF = 1 << 15;
/** NONHEAD delta[0]: the value is the pcluster's block count, not a lookback distance. */
export const Z_LI_D0_CBLKCNT = 1 << 11;

/** Largest encoded pcluster (Z_EROFS_PCLUSTER_MAX_SIZE). */
export const Z_PCLUSTER_MAX_SIZE = 1024 * 1024;
/** Largest decoded extent the kernel accepts (Z_EROFS_PCLUSTER_MAX_DSIZE). */
export const Z_PCLUSTER_MAX_DSIZE = 12 * 1024 * 1024;

/** 48-bit extent records: plen bits. */
export const Z_EXTENT_PLEN_PARTIAL = 1 << 27;
export const Z_EXTENT_PLEN_FMT_BIT = 28;
export const Z_EXTENT_PLEN_MASK = (Z_PCLUSTER_MAX_SIZE << 1) - 1;

/** i_format datalayout values. */
export const DATALAYOUT = {
  FLAT_PLAIN: 0,
  COMPRESSED_FULL: 1,
  FLAT_INLINE: 2,
  COMPRESSED_COMPACT: 3,
  CHUNK_BASED: 4,
} as const;
export const DATALAYOUT_MAX = 5;

export const I_VERSION_EXTENDED = 1;
/** Non-directory compact inodes: nlink is 1 and i_nb holds the block MSBs. */
export const I_NLINK_1_BIT = 4;
/** Directories: the "." dirent is not stored. */
export const I_DOT_OMITTED_BIT = 4;
export const I_ALL = (1 << (I_NLINK_1_BIT + 1)) - 1;

export const CHUNK_FORMAT_BLKBITS_MASK = 0x1f;
export const CHUNK_FORMAT_INDEXES = 0x20;
export const CHUNK_FORMAT_48BIT = 0x40;
export const CHUNK_FORMAT_ALL = (CHUNK_FORMAT_48BIT << 1) - 1;

export const INODE_COMPACT_SIZE = 32;
export const INODE_EXTENDED_SIZE = 64;
export const XATTR_IBODY_HEADER_SIZE = 12;
export const XATTR_ENTRY_SIZE = 4;
export const DIRENT_SIZE = 12;
export const NAME_LEN = 255;

export const XATTR_INDEX = {
  USER: 1,
  POSIX_ACL_ACCESS: 2,
  POSIX_ACL_DEFAULT: 3,
  TRUSTED: 4,
  LUSTRE: 5,
  SECURITY: 6,
} as const;
export const XATTR_LONG_PREFIX = 0x80;
export const XATTR_LONG_PREFIX_MASK = 0x7f;

/** Name prefixes per short index; index 0 = hidden (not listable, base of internal names). */
export const XATTR_PREFIXES: ReadonlyArray<string | undefined> = [
  '',
  'user.',
  'system.posix_acl_access',
  'system.posix_acl_default',
  'trusted.',
  'lustre.',
  'security.',
];

/**
 * The per-inode xattr name filter (COMPAT.XATTR_FILTER): h_name_filter in the ibody header has
 * bit xxh32(name after its short prefix, SEED + short index) % BITS set when no xattr of that
 * name is present. A nonzero superblock xattr_filter_reserved byte disables it.
 */
export const XATTR_FILTER_BITS = 32;
export const XATTR_FILTER_SEED = 0x25bbe08f;

/** Dirent file_type values (FT_*). */
export const FT_TO_TYPE = [undefined, 'file', 'dir', 'chardev', 'blockdev', 'fifo', 'socket', 'symlink'] as const;

export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

/**
 * On disk, bit 63 of a nid says "this inode lives in the metabox inode". JS numbers cannot hold
 * bit 63, so the reader represents such nids as METABOX_NID_FLAG + the low bits.
 */
export const METABOX_NID_FLAG = 2 ** 52;

export const NULL_ADDR_32 = 0xffffffff;

/** Reads a u64 as a JS number; undefined if it does not fit in 53 bits. */
export function u64(buf: Buffer, off: number): number | undefined {
  const lo = buf.readUInt32LE(off);
  const hi = buf.readUInt32LE(off + 4);
  if (hi >= 0x200000) return undefined;
  return hi * 0x100000000 + lo;
}

/** Decodes an on-disk 64-bit nid (dirents, superblock) into the reader's number form. */
export function decodeNid(buf: Buffer, off: number): number | undefined {
  const lo = buf.readUInt32LE(off);
  const hi = buf.readUInt32LE(off + 4);
  const metabox = (hi & 0x80000000) !== 0;
  const h = hi & 0x7fffffff;
  if (h >= 0x100000) return undefined; // beyond 52 bits: not representable (and absurd)
  const low = h * 0x100000000 + lo;
  return metabox ? METABOX_NID_FLAG + low : low;
}

export function nidInMetabox(nid: number): boolean {
  return nid >= METABOX_NID_FLAG;
}

export function nidSlot(nid: number): number {
  return nid >= METABOX_NID_FLAG ? nid - METABOX_NID_FLAG : nid;
}
