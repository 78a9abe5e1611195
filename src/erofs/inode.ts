// On-disk inodes: compact (32 B) and extended (64 B), every file type, 48-bit block addresses.
import { ErofsError } from './api.js';
import type { FileType, InodeAttr } from './api.js';
import type { ByteSource } from './io.js';
import type { Superblock } from './superblock.js';
import {
  CHUNK_FORMAT_ALL, CHUNK_FORMAT_BLKBITS_MASK, DATALAYOUT, DATALAYOUT_MAX, I_ALL, I_DOT_OMITTED_BIT,
  I_NLINK_1_BIT, INODE_COMPACT_SIZE, INODE_EXTENDED_SIZE, ISLOT_BITS, S_IFBLK, S_IFCHR, S_IFDIR,
  S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, XATTR_IBODY_HEADER_SIZE, nidInMetabox, nidSlot,
} from './format.js';

/** A decoded on-disk inode: the stat attributes (InodeAttr) plus what the layout code needs. */
export interface Inode extends InodeAttr {
  inMetabox: boolean;
  /** Byte position of the inode in its metadata source (primary device or metabox content). */
  iloc: number;
  isize: number;
  xattrIcount: number;
  xattrIsize: number;
  format: number;
  datalayout: number;
  /** i_u as a raw u32 (startblk_lo / blocks_lo / rdev / chunk info). */
  iU: number;
  /** i_nb MSBs applicable to this inode (0 when i_nb holds nlink). */
  nbHi: number;
  /** Starting block for flat inodes; undefined = whole-file hole (FLAT_PLAIN with NULL addr). */
  startBlk: number | undefined;
  chunkFormat: number;
  chunkBits: number;
  dotOmitted: boolean;
  /** h_name_filter of the xattr ibody header, read on the first getxattr that uses it. */
  xattrNameFilter: number | undefined;
}

export function typeOfMode(mode: number): FileType | undefined {
  switch (mode & S_IFMT) {
    case S_IFREG: return 'file';
    case S_IFDIR: return 'dir';
    case S_IFLNK: return 'symlink';
    case S_IFCHR: return 'chardev';
    case S_IFBLK: return 'blockdev';
    case S_IFIFO: return 'fifo';
    case S_IFSOCK: return 'socket';
    default: return undefined;
  }
}

export function isCompressedLayout(dl: number): boolean {
  return dl === DATALAYOUT.COMPRESSED_FULL || dl === DATALAYOUT.COMPRESSED_COMPACT;
}

/** Byte position of inode `nid` in its metadata source. */
export function inodeLocation(sb: Superblock, nid: number): number {
  const slot = nidSlot(nid);
  const base = nidInMetabox(nid) ? 0 : sb.metaBlkAddr * sb.blockSize;
  const pos = base + slot * (1 << ISLOT_BITS);
  if (!Number.isSafeInteger(pos)) throw new ErofsError('EIO', `nid ${nid} out of range`);
  return pos;
}

export function parseInode(sb: Superblock, src: ByteSource, nid: number): Inode {
  const inMetabox = nidInMetabox(nid);
  const iloc = inodeLocation(sb, nid);
  if (iloc + INODE_COMPACT_SIZE > src.size) throw new ErofsError('EIO', `nid ${nid}: inode beyond the end of its metadata`);
  const head = src.read(iloc, INODE_COMPACT_SIZE);
  const format = head.readUInt16LE(0);
  if (format & ~I_ALL) throw new ErofsError('EOPNOTSUPP', `nid ${nid}: unsupported i_format 0x${format.toString(16)}`);
  const datalayout = (format >> 1) & 7;
  if (datalayout >= DATALAYOUT_MAX) throw new ErofsError('EOPNOTSUPP', `nid ${nid}: unsupported datalayout ${datalayout}`);
  const extended = (format & 1) === 1;
  const isize = extended ? INODE_EXTENDED_SIZE : INODE_COMPACT_SIZE;
  const d = extended ? src.read(iloc, INODE_EXTENDED_SIZE) : head;
  const xattrIcount = d.readUInt16LE(2);
  const xattrIsize = xattrIcount ? XATTR_IBODY_HEADER_SIZE + 4 * (xattrIcount - 1) : 0;
  const mode = d.readUInt16LE(4);
  const type = typeOfMode(mode);
  if (!type) throw new ErofsError('EIO', `nid ${nid}: bogus i_mode 0${mode.toString(8)}`);
  const nb = d.readUInt16LE(6);
  let uid: number, gid: number, nlink: number, size: number, mtimeSec: number, mtimeNsec: number, iU: number;
  let nbHi = 0;
  let addr48 = true;
  if (extended) {
    const sz = d.readBigUInt64LE(8);
    if (sz > BigInt(Number.MAX_SAFE_INTEGER)) throw new ErofsError('EIO', `nid ${nid}: size out of range`);
    size = Number(sz);
    iU = d.readUInt32LE(16);
    uid = d.readUInt32LE(24);
    gid = d.readUInt32LE(28);
    mtimeSec = Number(d.readBigInt64LE(32));
    mtimeNsec = d.readUInt32LE(40);
    nlink = d.readUInt32LE(44);
    nbHi = nb;
  } else {
    size = d.readUInt32LE(8);
    iU = d.readUInt32LE(16);
    uid = d.readUInt16LE(24);
    gid = d.readUInt16LE(26);
    mtimeSec = sb.epoch + d.readUInt32LE(12);
    mtimeNsec = sb.fixedNsec;
    if (type !== 'dir' && (format >> I_NLINK_1_BIT) & 1) {
      nlink = 1;
      nbHi = nb;
    } else {
      nlink = nb;
      addr48 = false;
    }
  }
  if (!sb.is48bit) {
    // Without the 48-bit layout these bits are reserved; ignore them as older kernels do.
    nbHi = 0;
  }
  let rdev = 0;
  let startBlk: number | undefined;
  let chunkFormat = 0;
  let chunkBits = 0;
  let dotOmitted = false;
  switch (type) {
    case 'dir':
    case 'file':
    case 'symlink': {
      if (type === 'dir') dotOmitted = ((format >> I_DOT_OMITTED_BIT) & 1) === 1;
      startBlk = nbHi * 0x100000000 + iU;
      if (datalayout === DATALAYOUT.FLAT_PLAIN) {
        const isNull = addr48 && sb.is48bit ? iU === 0xffffffff && nbHi === 0xffff : iU === 0xffffffff;
        if (isNull) startBlk = undefined;
      }
      break;
    }
    case 'chardev':
    case 'blockdev':
      rdev = iU;
      break;
    default:
      rdev = 0;
  }
  if (datalayout === DATALAYOUT.CHUNK_BASED) {
    chunkFormat = iU & 0xffff;
    if (chunkFormat & ~CHUNK_FORMAT_ALL) {
      throw new ErofsError('EOPNOTSUPP', `nid ${nid}: unsupported chunk format 0x${chunkFormat.toString(16)}`);
    }
    chunkBits = sb.blockBits + (chunkFormat & CHUNK_FORMAT_BLKBITS_MASK);
    if (chunkBits > 47) throw new ErofsError('EIO', `nid ${nid}: chunk size 2^${chunkBits} out of range`);
  }
  if (isCompressedLayout(datalayout) && type !== 'file' && type !== 'dir' && type !== 'symlink') {
    throw new ErofsError('EIO', `nid ${nid}: compressed special file`);
  }
  let blocks: number;
  if (isCompressedLayout(datalayout)) {
    blocks = (nbHi * 0x100000000 + iU) * (sb.blockSize / 512);
  } else {
    blocks = Math.ceil(size / sb.blockSize) * (sb.blockSize / 512);
  }
  return {
    nid, inMetabox, iloc, isize, xattrIcount, xattrIsize, format, datalayout, mode, type, uid, gid,
    nlink, size, mtimeSec, mtimeNsec, rdev, iU, nbHi, startBlk, chunkFormat, chunkBits, dotOmitted, blocks,
    xattrNameFilter: undefined,
  };
}

/** Linux new_decode_dev → the new_encode_dev form the API reports (same value on disk). */
export function rdevMajorMinor(rdev: number): [number, number] {
  const major = (rdev & 0xfff00) >>> 8;
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  return [major, minor];
}
