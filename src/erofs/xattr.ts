// Extended attributes: inline (ibody) and shared entries, every name index, long name prefixes
// (stored in the primary device, the packed inode or the metabox), and POSIX ACL values as the
// kernel reports them (posix_acl_from_xattr + posix_acl_to_xattr round trip).
import { ErofsError } from './api.js';
import type { Xattr } from './api.js';
import type { ByteSource } from './io.js';
import type { Inode } from './inode.js';
import type { Superblock } from './superblock.js';
import { filterSaysAbsent, xattrFilterBit } from './xattr-filter.js';
import {
  COMPAT, XATTR_ENTRY_SIZE, XATTR_IBODY_HEADER_SIZE, XATTR_INDEX, XATTR_LONG_PREFIX,
  XATTR_LONG_PREFIX_MASK, XATTR_PREFIXES,
} from './format.js';

export interface LongPrefix {
  baseIndex: number;
  infix: Buffer;
}

export interface XattrContext {
  sb: Superblock;
  meta(inMetabox: boolean): ByteSource;
  /** The long prefix table (loaded once by the caller). */
  prefixes(): LongPrefix[];
  /** Answer getxattr of absent names from the inode's name filter (the image has a valid one). */
  readonly xattrFilter: boolean;
}

export interface RawXattr {
  /** e_name_index as stored. */
  index: number;
  /** Short index the full name starts with (0 = hidden). */
  baseIndex: number;
  /** Full name bytes: short prefix + infix + suffix. */
  name: Buffer;
  value: Buffer;
}

/** Reads the long xattr name prefix table from `src` (4-byte aligned, u16 length records). */
export function loadPrefixes(sb: Superblock, src: ByteSource): LongPrefix[] {
  const out: LongPrefix[] = [];
  let pos = sb.xattrPrefixStart * 4;
  for (let i = 0; i < sb.xattrPrefixCount; i++) {
    pos = Math.ceil(pos / 4) * 4;
    const len = src.read(pos, 2).readUInt16LE(0);
    if (len < 1 || len > 256) throw new ErofsError('EIO', `bad long xattr prefix #${i} length ${len}`);
    const data = src.read(pos + 2, len);
    out.push({ baseIndex: data[0]!, infix: Buffer.from(data.subarray(1)) });
    pos += 2 + len;
  }
  return out;
}

const prefixBufs = XATTR_PREFIXES.map((p) => Buffer.from(p ?? '', 'latin1'));

function fullName(ctx: XattrContext, index: number, suffix: Buffer): { base: number; name: Buffer } | undefined {
  let base = index;
  let infix: Buffer | undefined;
  if (index & XATTR_LONG_PREFIX) {
    const pf = ctx.prefixes()[index & XATTR_LONG_PREFIX_MASK];
    if (!pf) return undefined;
    base = pf.baseIndex;
    infix = pf.infix;
  }
  if (base >= XATTR_PREFIXES.length) return undefined;
  const parts: Buffer[] = [prefixBufs[base]!];
  if (infix) parts.push(infix);
  parts.push(suffix);
  return { base, name: Buffer.concat(parts) };
}

function sharedSource(ctx: XattrContext): ByteSource {
  return ctx.meta((ctx.sb.featureCompat & COMPAT.SHARED_EA_IN_METABOX) !== 0);
}

/** Every xattr entry of an inode, inline first, then shared (the kernel's order). */
export function rawXattrs(ctx: XattrContext, ino: Inode): RawXattr[] {
  const out: RawXattr[] = [];
  if (ino.xattrIsize === 0) return out;
  if (ino.xattrIsize < XATTR_IBODY_HEADER_SIZE) throw new ErofsError('EIO', `nid ${ino.nid}: bogus xattr ibody`);
  if (ino.xattrIsize === XATTR_IBODY_HEADER_SIZE) {
    throw new ErofsError('EOPNOTSUPP', `nid ${ino.nid}: xattr_isize ${ino.xattrIsize} is not supported`);
  }
  const src = ctx.meta(ino.inMetabox);
  const start = ino.iloc + ino.isize;
  const ibody = src.read(start, ino.xattrIsize);
  const sharedCount = ibody[4]!;
  const headerSize = XATTR_IBODY_HEADER_SIZE + 4 * sharedCount;
  if (headerSize > ino.xattrIsize) throw new ErofsError('EIO', `nid ${ino.nid}: shared xattr count beyond the ibody`);
  // Inline entries.
  let p = headerSize;
  let guard = 0;
  while (p < ino.xattrIsize) {
    if (++guard > 65536) throw new ErofsError('EIO', `nid ${ino.nid}: too many xattr entries`);
    if (p + XATTR_ENTRY_SIZE > ino.xattrIsize) throw new ErofsError('EIO', `nid ${ino.nid}: xattr entry beyond ibody`);
    const nameLen = ibody[p]!;
    const index = ibody[p + 1]!;
    const valueSize = ibody.readUInt16LE(p + 2);
    const esize = Math.ceil((XATTR_ENTRY_SIZE + nameLen + valueSize) / 4) * 4;
    if (p + esize > ino.xattrIsize) throw new ErofsError('EIO', `nid ${ino.nid}: xattr entry beyond ibody`);
    const nameStart = p + XATTR_ENTRY_SIZE;
    pushEntry(ctx, out, index, ibody.subarray(nameStart, nameStart + nameLen),
      ibody.subarray(nameStart + nameLen, nameStart + nameLen + valueSize));
    p += esize;
  }
  // Shared entries.
  if (sharedCount) {
    const ssrc = sharedSource(ctx);
    const base = ctx.sb.xattrBlkAddr * ctx.sb.blockSize;
    for (let i = 0; i < sharedCount; i++) {
      const id = ibody.readUInt32LE(XATTR_IBODY_HEADER_SIZE + 4 * i);
      const pos = base + id * 4;
      const h = ssrc.read(pos, XATTR_ENTRY_SIZE);
      const nameLen = h[0]!;
      const index = h[1]!;
      const valueSize = h.readUInt16LE(2);
      const body = ssrc.read(pos + XATTR_ENTRY_SIZE, nameLen + valueSize);
      pushEntry(ctx, out, index, body.subarray(0, nameLen), body.subarray(nameLen));
    }
  }
  return out;
}

function pushEntry(ctx: XattrContext, out: RawXattr[], index: number, suffix: Buffer, value: Buffer): void {
  const fn = fullName(ctx, index, suffix);
  if (!fn) return; // unknown prefix: invisible, as in the kernel
  out.push({ index, baseIndex: fn.base, name: fn.name, value: Buffer.from(value) });
}

/** Short indexes the kernel lists and serves (lustre and hidden names are neither). */
function visible(base: number): boolean {
  return base === XATTR_INDEX.USER || base === XATTR_INDEX.POSIX_ACL_ACCESS || base === XATTR_INDEX.POSIX_ACL_DEFAULT ||
    base === XATTR_INDEX.TRUSTED || base === XATTR_INDEX.SECURITY;
}

function isAcl(base: number): boolean {
  return base === XATTR_INDEX.POSIX_ACL_ACCESS || base === XATTR_INDEX.POSIX_ACL_DEFAULT;
}

const ACL_USER = 0x02;
const ACL_GROUP = 0x08;
const ACL_VALID_TAGS = new Set([0x01, 0x02, 0x04, 0x08, 0x10, 0x20]);

/**
 * The value getxattr(2) returns for a stored POSIX ACL: version 2 header, entries kept in order,
 * ids of owner/group-owner/mask/other entries replaced by ACL_UNDEFINED_ID. undefined = the
 * kernel would not return a value (empty ACL → ENODATA); throws EIO on a malformed ACL.
 */
export function normaliseAcl(v: Buffer): Buffer | undefined {
  if (v.length < 4) throw new ErofsError('EIO', 'POSIX ACL xattr too short');
  if (v.readUInt32LE(0) !== 2) throw new ErofsError('EOPNOTSUPP', 'unsupported POSIX ACL xattr version');
  if ((v.length - 4) % 8 !== 0) throw new ErofsError('EIO', 'POSIX ACL xattr of bad size');
  const n = (v.length - 4) / 8;
  if (n === 0) return undefined;
  const out = Buffer.alloc(v.length);
  out.writeUInt32LE(2, 0);
  for (let i = 0; i < n; i++) {
    const o = 4 + 8 * i;
    const tag = v.readUInt16LE(o);
    if (!ACL_VALID_TAGS.has(tag)) throw new ErofsError('EIO', `POSIX ACL entry with bad tag 0x${tag.toString(16)}`);
    out.writeUInt16LE(tag, o);
    out.writeUInt16LE(v.readUInt16LE(o + 2), o + 2);
    out.writeUInt32LE(tag === ACL_USER || tag === ACL_GROUP ? v.readUInt32LE(o + 4) : 0xffffffff, o + 4);
  }
  return out;
}

/** listxattr(2) view: visible names with their getxattr values. */
export function listXattrs(ctx: XattrContext, ino: Inode): Xattr[] {
  const out: Xattr[] = [];
  for (const x of rawXattrs(ctx, ino)) {
    if (!visible(x.baseIndex)) continue;
    let value: Buffer | undefined = x.value;
    if (isAcl(x.baseIndex)) {
      try {
        value = normaliseAcl(x.value);
      } catch {
        value = x.value;
      }
      if (value === undefined) value = Buffer.alloc(0);
    }
    out.push({ name: x.name.toString('utf8'), value });
  }
  return out;
}

/**
 * The ENODATA getxattr throws for an absent name: the common, expected answer (guests ask for
 * security.capability and ACLs on nearly every exec and open). One shared, frozen instance:
 * building an Error (its stack trace above all) costs more than the lookup, and neither its
 * stack nor its message is ever shown (the FUSE layer turns it into the errno).
 */
const NO_DATA: ErofsError = Object.freeze(Object.assign(new ErofsError('ENODATA', 'no such xattr'), { stack: 'ErofsError: ENODATA: no such xattr' }));

/** Longest full name we look up (a 255-byte suffix after the longest prefix). */
const MAX_NAME_BYTES = 255 + 32;

/**
 * getxattr(2): the first entry with this full name (inline before shared); ENODATA if none.
 * With the name filter, an absent name is answered from the ibody header alone.
 */
export function getXattr(ctx: XattrContext, ino: Inode, name: string): Buffer {
  if (name.length > MAX_NAME_BYTES || Buffer.byteLength(name, 'utf8') > MAX_NAME_BYTES) {
    throw new ErofsError('ERANGE', 'xattr name too long');
  }
  if (ino.xattrIsize === 0) throw NO_DATA;
  if (ctx.xattrFilter && ino.xattrIsize > XATTR_IBODY_HEADER_SIZE) {
    let filter = ino.xattrNameFilter;
    if (filter === undefined) {
      const h = ctx.meta(ino.inMetabox).read(ino.iloc + ino.isize, XATTR_IBODY_HEADER_SIZE);
      // A header that is corrupt otherwise (shared ids beyond the ibody) rules nothing out: the
      // full parse reports it.
      filter = XATTR_IBODY_HEADER_SIZE + 4 * h[4]! <= ino.xattrIsize ? h.readUInt32LE(0) : 0;
      ino.xattrNameFilter = filter;
    }
    if (filterSaysAbsent(filter, xattrFilterBit(name))) throw NO_DATA;
  }
  const want = Buffer.from(name, 'utf8');
  for (const x of rawXattrs(ctx, ino)) {
    if (!visible(x.baseIndex) || !x.name.equals(want)) continue;
    if (isAcl(x.baseIndex)) {
      const v = normaliseAcl(x.value);
      if (v === undefined) break;
      return v;
    }
    return x.value;
  }
  throw NO_DATA;
}

/** Value of the entry stored under long prefix `prefixId` with an empty suffix (hidden or not). */
export function getPrefixedXattr(ctx: XattrContext, ino: Inode, prefixId: number): Buffer | undefined {
  const pf = ctx.prefixes()[prefixId];
  if (!pf) return undefined;
  const fn = fullName(ctx, XATTR_LONG_PREFIX | prefixId, Buffer.alloc(0));
  if (!fn) return undefined;
  for (const x of rawXattrs(ctx, ino)) {
    if (x.baseIndex === fn.base && x.name.equals(fn.name)) return x.value;
  }
  return undefined;
}
