// Small reply buffers carved from shared zeroed slabs. A Buffer.alloc per reply is a calloc, a
// backing store and a GC sweep: a fifth of a LOOKUP's CPU in the server before this.

const SLAB_BYTES = 64 * 1024;
/** Bigger replies (READDIR pages, xattr values) get their own buffer. */
const MAX_CARVED = 4096;

let slab = Buffer.alloc(SLAB_BYTES);
let used = 0;

/**
 * `n` zeroed bytes. Slab memory is never handed out twice: a full slab is replaced, and the old
 * one lives on only as long as views of it do (an async reply may hold one for a while).
 */
export function replyBytes(n: number): Buffer {
  if (n > MAX_CARVED) return Buffer.alloc(n);
  if (used + n > SLAB_BYTES) {
    slab = Buffer.alloc(SLAB_BYTES);
    used = 0;
  }
  const b = slab.subarray(used, used + n);
  used += (n + 7) & ~7;
  return b;
}
