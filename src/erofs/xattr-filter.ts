// The xattr name filter (COMPAT.XATTR_FILTER, `mkfs.erofs -Exattr-name-filter`): a 32-bit bloom
// filter in each inode's xattr ibody header. Bit xxh32(name after its short prefix,
// XATTR_FILTER_SEED + short index) % 32 is set when no xattr of that name is present, so a
// getxattr of an absent name (security.capability, ACLs: guests ask on nearly every exec and
// open) is answered from the header without parsing the entries. Like the kernel
// (fs/erofs/xattr.c erofs_getxattr), we trust a set bit: a corrupt filter can hide a present
// xattr from getxattr, exactly as it does through the kernel (listxattr does not use it).
import xxhash from 'xxhash-wasm';
import { XATTR_FILTER_BITS, XATTR_FILTER_SEED, XATTR_INDEX } from './format.js';

const { h32Raw } = await xxhash();

/** Full-name prefixes getxattr(2) serves, and their short index (the kernel's handlers). */
const HANDLERS: ReadonlyArray<[prefix: string, index: number, exact: boolean]> = [
  ['user.', XATTR_INDEX.USER, false],
  ['system.posix_acl_access', XATTR_INDEX.POSIX_ACL_ACCESS, true],
  ['system.posix_acl_default', XATTR_INDEX.POSIX_ACL_DEFAULT, true],
  ['trusted.', XATTR_INDEX.TRUSTED, false],
  ['security.', XATTR_INDEX.SECURITY, false],
];

/** Filter bits by full name: guests ask for the same few names over and over. */
const bits = new Map<string, number>();
const MAX_REMEMBERED = 4096;

/** The filter bit of xattr `name` (full name, e.g. "security.capability"); -1 if no handler serves it. */
export function xattrFilterBit(name: string): number {
  let bit = bits.get(name);
  if (bit === undefined) {
    bit = computeBit(name);
    if (bits.size >= MAX_REMEMBERED) bits.clear();
    bits.set(name, bit);
  }
  return bit;
}

function computeBit(name: string): number {
  for (const [prefix, index, exact] of HANDLERS) {
    if (exact ? name !== prefix : !name.startsWith(prefix)) continue;
    const suffix = Buffer.from(name.slice(prefix.length), 'utf8');
    return h32Raw(suffix, (XATTR_FILTER_SEED + index) >>> 0) & (XATTR_FILTER_BITS - 1);
  }
  return -1;
}

/** Whether `filter` (h_name_filter) says the name with filter bit `bit` is absent. */
export function filterSaysAbsent(filter: number, bit: number): boolean {
  return bit >= 0 && ((filter >>> bit) & 1) === 1;
}
