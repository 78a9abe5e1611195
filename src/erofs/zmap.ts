// Compressed-file data mapping for EROFS (COMPRESSED_FULL / COMPRESSED_COMPACT inodes).
//
// The reader core builds one `ZImageContext` per image and one `CompressedFileContext` per
// compressed inode, then `new CompressedFile(ctx)`; `read(offset, length)` returns file bytes.
// This module parses the map header, the lcluster indexes (full 8-byte, compact 4B/2B) and the
// 48-bit extent records, maps a file offset to its pcluster, decompresses it (via
// ./decompress/index.js) and keeps decompressed pclusters in a byte-bounded LRU.
//
// Everything here is bounded: every index position is checked against the inode's index area,
// pcluster sizes are capped, lookback/lookahead loops are bounded by the lcluster count.

import { ErofsError } from './api.js';
// Decompression comes from ./decompress/index.js (decompress(alg, src, outLen, opts)); wired in
// once that module lands.
export type CompressionAlgorithm = 'lz4' | 'lzma' | 'deflate' | 'zstd';

/** Superblock feature bits this module cares about. */
export const INCOMPAT_LZ4_0PADDING = 0x1;
export const INCOMPAT_COMPR_CFGS = 0x2;
export const INCOMPAT_BIG_PCLUSTER = 0x2;
export const INCOMPAT_ZTAILPACKING = 0x10;
export const INCOMPAT_FRAGMENTS = 0x20;
export const INCOMPAT_48BIT = 0x80;

/** Inode data layouts handled here (i_format bits 1..3). */
export const DATALAYOUT_COMPRESSED_FULL = 1;
export const DATALAYOUT_COMPRESSED_COMPACT = 3;

/** Largest encoded pcluster (kernel Z_EROFS_PCLUSTER_MAX_SIZE). */
export const PCLUSTER_MAX_SIZE = 1024 * 1024;
/** Largest decoded extent we accept (kernel Z_EROFS_PCLUSTER_MAX_DSIZE is 12 MiB). */
export const PCLUSTER_MAX_DSIZE = 12 * 1024 * 1024;

/**
 * Per-image facts, built once by the reader core from the superblock and shared by every
 * CompressedFile of that image.
 */
export interface ZImageContext {
  /** Superblock `blkszbits` (9..12 in practice; block size = 1 << blkszbits). */
  blkszbits: number;
  /** Superblock `feature_incompat` (raw bits; LZ4_0PADDING, COMPR_CFGS, 48BIT, ... are read). */
  featureIncompat: number;
  /**
   * Superblock `u1` as the bitmap of available algorithms (`available_compr_algs`) when
   * COMPR_CFGS is set; when it is not set pass 0 (then only LZ4 is available, and u1 was
   * `lz4_max_distance`).
   */
  availableAlgorithms: number;
  /**
   * Payloads of the COMPR_CFGS records that follow the superblock, indexed by on-disk algorithm
   * id (0 lz4, 1 lzma, 2 deflate, 3 zstd), each without its 2-byte length prefix. Missing ids:
   * undefined. Used for dictionary/window sizes (lzma dict_size, deflate windowbits, zstd
   * windowlog).
   */
  algorithmConfigs: (Buffer | undefined)[];
  /**
   * Bounded read of the image's data space: `len` bytes at unified byte address `addr`
   * (block address << blkszbits, for multi-device images the core resolves the device by the
   * device table's unified addresses). Must throw ErofsError('EIO') if out of range; never
   * returns a short buffer.
   */
  readData(addr: number, len: number): Buffer;
  /**
   * Bytes `[offset, offset+len)` of the packed inode's content (fragments). Must throw
   * ErofsError('EIO') when there is no packed inode or the range is past its end.
   */
  readPacked(offset: number, len: number): Buffer;
  /** Shared decompressed-pcluster cache (create one per image with OpenOptions.cacheBytes). */
  cache: PclusterCache;
}

/** Per-inode facts, built by the reader core for each compressed inode. */
export interface CompressedFileContext {
  image: ZImageContext;
  /** Inode number (for error messages only). */
  nid: number;
  /** i_size. */
  size: number;
  /** 1 = COMPRESSED_FULL, 3 = COMPRESSED_COMPACT. */
  datalayout: number;
  /**
   * Position of the 8-byte z_erofs_map_header in the inode's metadata space:
   * round_up(inode position + inode core size + xattr ibody size, 8). Absolute byte position
   * (nid-derived, i.e. meta_blkaddr already added) for ordinary inodes; for inodes living in
   * the metabox, the position inside the metabox inode's content (the same number the kernel
   * passes to erofs_read_metabuf with in_metabox). Compact-index alignment depends on it.
   */
  mapHeaderPos: number;
  /**
   * Bounded read of the inode's metadata space (the one `mapHeaderPos` refers to): the main
   * image for ordinary inodes, the metabox content for metabox inodes. Used for the map
   * header, the indexes/extents and ztailpacking inline pclusters. Throws ErofsError('EIO')
   * when out of range; never returns a short buffer.
   */
  readMeta(pos: number, len: number): Buffer;
}

/** One mapped extent of a compressed file, as `CompressedFile.mapExtent` reports it. */
export interface ZExtent {
  /** First file offset the extent covers. */
  logical: number;
  /** Decoded length (bytes of the file this extent produces, clamped to EOF). */
  length: number;
  /** 'hole' only in 48-bit extent layouts with plen == 0 (reads as zeros). */
  kind: 'compressed' | 'plain' | 'inline' | 'fragment' | 'hole';
  /** Encoded location: byte address (data space, or meta space for 'inline'; packed-inode offset for 'fragment'). */
  physical: number;
  /** Encoded length in bytes (0 for fragment/hole). */
  physicalLength: number;
  /** On-disk algorithm id for 'compressed'/'inline' compressed extents; -1 for plain, -2 interlaced plain. */
  format: number;
  /** The pcluster decodes to more than this extent (dedupe reference into a larger pcluster). */
  partialRef: boolean;
}

/** Byte-bounded LRU of decompressed pclusters, shared per image. */
export class PclusterCache {
  private readonly map = new Map<string, Buffer>();
  private bytes = 0;
  hits = 0;
  misses = 0;

  constructor(readonly maxBytes: number = 64 * 1024 * 1024) {}

  get(key: string): Buffer | undefined {
    const v = this.map.get(key);
    if (v === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    // refresh recency
    this.map.delete(key);
    this.map.set(key, v);
    return v;
  }

  set(key: string, value: Buffer): void {
    const old = this.map.get(key);
    if (old !== undefined) {
      this.bytes -= old.length;
      this.map.delete(key);
    }
    if (value.length > this.maxBytes) return;
    this.map.set(key, value);
    this.bytes += value.length;
    while (this.bytes > this.maxBytes) {
      const first = this.map.keys().next();
      if (first.done) break;
      const b = this.map.get(first.value)!;
      this.map.delete(first.value);
      this.bytes -= b.length;
    }
  }

  get usedBytes(): number {
    return this.bytes;
  }

  clear(): void {
    this.map.clear();
    this.bytes = 0;
  }
}

/** A compressed regular file (or the packed inode). */
export class CompressedFile {
  readonly size: number;

  constructor(readonly ctx: CompressedFileContext) {
    this.size = ctx.size;
  }

  /** Exactly min(length, size - offset) bytes (empty at/after EOF). Throws ErofsError('EIO') on corruption. */
  read(offset: number, length: number): Buffer {
    void offset;
    void length;
    throw new ErofsError('EOPNOTSUPP', 'compressed read not implemented yet');
  }

  /** The extent containing `offset` (offset < size), for SEEK_DATA/SEEK_HOLE and inspection. */
  mapExtent(offset: number): ZExtent {
    void offset;
    throw new ErofsError('EOPNOTSUPP', 'compressed mapping not implemented yet');
  }

  /** SEEK_DATA / SEEK_HOLE: next data/hole offset at or after `offset`; -1 when none (ENXIO). */
  seek(offset: number, whence: 'data' | 'hole'): number {
    void offset;
    void whence;
    throw new ErofsError('EOPNOTSUPP', 'compressed seek not implemented yet');
  }
}
