// The daemon's syscall shim and the test addon: each function against the kernel's real behaviour.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { native as daemonNative, isNativeError } from '../src/native/index.js';
import { native, testNative } from './support/native.js';

const C = daemonNative.constants;

test('image mappings: shared with the file, madvise on page ranges, munmap detaches the buffer', () => {
  const P = daemonNative.pageSize;
  const fd = daemonNative.memfdCreate('image-map-test', C.MFD_CLOEXEC);
  try {
    daemonNative.ftruncate(fd, 4 * P);
    fs.writeSync(fd, Buffer.from('image'), 0, 5, P);
    const ab = daemonNative.mmap(fd, 0, 4 * P, C.PROT_READ, C.MAP_SHARED);
    assert.equal(Buffer.from(ab, P, 5).toString(), 'image');
    daemonNative.madvise(ab, 0, 4 * P, C.MADV_WILLNEED);
    assert.throws(() => daemonNative.madvise(ab, 1, P, C.MADV_WILLNEED), (e) => isNativeError(e, 'EINVAL'), 'unaligned offset');
    assert.throws(() => daemonNative.madvise(ab, 0, 5 * P, C.MADV_WILLNEED), (e) => isNativeError(e, 'EINVAL'), 'past the mapping');
    daemonNative.munmap(ab);
    assert.equal(ab.byteLength, 0, 'the ArrayBuffer is detached after munmap');
    assert.throws(() => daemonNative.munmap(ab), /not a live mapping/);
  } finally {
    fs.closeSync(fd);
  }
});

test('the daemon addon carries only what the daemon uses: no sockets, eventfds or fixed mappings', () => {
  for (const name of ['unixListen', 'unixConnect', 'accept', 'socketpair', 'sendmsg', 'recvmsg', 'eventfd', 'eventfdRead', 'eventfdWrite', 'reserve', 'mapFixed', 'unmapFixed', 'mincore', 'addressOf']) {
    assert.equal(name in daemonNative, false, name);
  }
  for (const name of ['mmap', 'munmap', 'madvise', 'copy', 'memfdCreate', 'ftruncate', 'watch', 'setNonblocking', 'mount', 'umount2']) {
    assert.equal(typeof (daemonNative as unknown as Record<string, unknown>)[name], 'function', name);
  }
});

test('mincore reports which pages of a file mapping are in memory, without faulting them in', () => {
  const fd = native.memfdCreate('mincore-test', C.MFD_CLOEXEC);
  const P = native.pageSize;
  try {
    native.ftruncate(fd, 4 * P);
    fs.writeSync(fd, Buffer.from('zero'), 0, 4, 0);
    fs.writeSync(fd, Buffer.from('two'), 0, 3, 2 * P);
    const ab = native.mmap(fd, 0, 4 * P, C.PROT_READ, C.MAP_SHARED);
    try {
      assert.deepEqual([...testNative.mincore(ab, 0, 4 * P)].map((b) => b & 1), [1, 0, 1, 0]);
      assert.deepEqual([...testNative.mincore(ab, 2 * P, P + 1)].map((b) => b & 1), [1, 0], 'a partial last page counts as a page');
      assert.deepEqual([...testNative.mincore(ab, 0, 4 * P)].map((b) => b & 1), [1, 0, 1, 0], 'asking faulted nothing in');
      assert.throws(() => testNative.mincore(ab, 1, P), (e: unknown) => isNativeError(e) && e.code === 'EINVAL', 'unaligned offset');
      assert.throws(() => testNative.mincore(ab, 0, 5 * P), (e: unknown) => isNativeError(e) && e.code === 'EINVAL', 'past the mapping');
    } finally {
      native.munmap(ab);
    }
  } finally {
    fs.closeSync(fd);
  }
});

test('copy moves the same bytes as Buffer.copy, handles overlap and refuses out-of-bounds ranges', () => {
  const src = Buffer.alloc(3 << 20);
  for (let i = 0; i < src.length; i += 4) src.writeUInt32LE((i * 2654435761) >>> 0, i);
  // Bulk (the READ path's size), odd offsets and lengths, and a small copy.
  for (const [doff, soff, len] of [[0, 0, 1 << 20], [7, 4093, (1 << 20) + 13], [1, 2, 3], [100, 0, 0]] as const) {
    const want = Buffer.alloc(len + doff + 16, 0xaa);
    src.copy(want, doff, soff, soff + len);
    const got = Buffer.alloc(len + doff + 16, 0xaa);
    daemonNative.copy(got, doff, src, soff, len);
    assert.ok(got.equals(want), `copy(${doff}, ${soff}, ${len})`);
  }
  // Overlapping ranges of one buffer behave like memmove.
  const a = Buffer.from(src.subarray(0, 1 << 20));
  const b = Buffer.from(a);
  b.copy(b, 4096, 0, (1 << 20) - 4096);
  daemonNative.copy(a, 4096, a, 0, (1 << 20) - 4096);
  assert.ok(a.equals(b));
  const dst = Buffer.alloc(4096);
  assert.throws(() => daemonNative.copy(dst, 1, src, 0, 4096), (e) => isNativeError(e, 'ERANGE'));
  assert.throws(() => daemonNative.copy(dst, 0, src, src.length - 10, 11), (e) => isNativeError(e, 'ERANGE'));
  assert.throws(() => daemonNative.copy(dst, -1, src, 0, 1), (e) => isNativeError(e, 'ERANGE'));
  assert.throws(() => daemonNative.copy(dst, 0, src, 0, -1), (e) => isNativeError(e, 'ERANGE'));
  assert.throws(() => daemonNative.copy(dst, 0, 'x' as unknown as Uint8Array, 0, 1), TypeError);
});

test('addressOf gives the address of a mapping, whichever addon made it', () => {
  const P = native.pageSize;
  const win = native.reserve(4 * P);
  try {
    const addr = testNative.addressOf(win).toString(16);
    assert.ok(fs.readFileSync('/proc/self/maps', 'utf8').split('\n').some((l) => l.startsWith(addr + '-')), 'a mapping starts at that address');
  } finally {
    native.munmap(win);
  }
});
