// The syscall shim: each function against the kernel's real behaviour.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native, isNativeError } from '../src/native/index.js';

const C = native.constants;

test('fds travel over a socketpair with SCM_RIGHTS', () => {
  const [a, b] = native.socketpair();
  const memfd = native.memfdCreate('shim-test', C.MFD_CLOEXEC);
  try {
    fs.writeSync(memfd, Buffer.from('hello through an fd'));
    assert.equal(native.sendmsg(a, Buffer.from('msg'), [memfd]), 3);
    const buf = new Uint8Array(16);
    const r = native.recvmsg(b, buf);
    assert.equal(r.bytes, 3);
    assert.equal(Buffer.from(buf.subarray(0, 3)).toString(), 'msg');
    assert.equal(r.fds.length, 1);
    const got = Buffer.alloc(19);
    fs.readSync(r.fds[0]!, got, 0, 19, 0);
    assert.equal(got.toString(), 'hello through an fd');
    fs.closeSync(r.fds[0]!);
    assert.equal(native.recvmsg(b, buf).bytes, -1, 'empty non-blocking socket reports EAGAIN as -1');
    fs.closeSync(a);
    assert.equal(native.recvmsg(b, buf).bytes, 0, 'closed peer reads as 0');
  } finally {
    fs.closeSync(b);
    fs.closeSync(memfd);
  }
});

test('more than 8 fds is refused before any syscall', () => {
  const [a, b] = native.socketpair();
  try {
    assert.throws(() => native.sendmsg(a, Buffer.from('x'), [0, 0, 0, 0, 0, 0, 0, 0, 0]), /at most 8/);
  } finally {
    fs.closeSync(a);
    fs.closeSync(b);
  }
});

test('memfd mappings are shared and munmap detaches the buffer', () => {
  const fd = native.memfdCreate('map-test', C.MFD_CLOEXEC);
  try {
    native.ftruncate(fd, 2 * native.pageSize);
    const ab = native.mmap(fd, 0, 2 * native.pageSize, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED);
    new Uint8Array(ab).set(Buffer.from('mapped'), native.pageSize);
    const back = Buffer.alloc(6);
    fs.readSync(fd, back, 0, 6, native.pageSize);
    assert.equal(back.toString(), 'mapped');
    native.munmap(ab);
    assert.equal(ab.byteLength, 0, 'the ArrayBuffer is detached after munmap');
    assert.throws(() => native.munmap(ab), /not a live mapping/);
  } finally {
    fs.closeSync(fd);
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
      assert.deepEqual([...native.mincore(ab, 0, 4 * P)].map((b) => b & 1), [1, 0, 1, 0]);
      assert.deepEqual([...native.mincore(ab, 2 * P, P + 1)].map((b) => b & 1), [1, 0], 'a partial last page counts as a page');
      assert.deepEqual([...native.mincore(ab, 0, 4 * P)].map((b) => b & 1), [1, 0, 1, 0], 'asking faulted nothing in');
      assert.throws(() => native.mincore(ab, 1, P), (e: unknown) => isNativeError(e) && e.code === 'EINVAL', 'unaligned offset');
      assert.throws(() => native.mincore(ab, 0, 5 * P), (e: unknown) => isNativeError(e) && e.code === 'EINVAL', 'past the mapping');
    } finally {
      native.munmap(ab);
    }
  } finally {
    fs.closeSync(fd);
  }
});

test('a reserved window takes fixed file mappings and gives them back', () => {
  const page = native.pageSize;
  const fd = native.memfdCreate('window-test', C.MFD_CLOEXEC);
  const win = native.reserve(8 * page);
  try {
    native.ftruncate(fd, page);
    fs.writeSync(fd, Buffer.from('page0'), 0, 5, 0);
    native.mapFixed(win, 3 * page, fd, 0, page, C.PROT_READ);
    assert.equal(Buffer.from(win, 3 * page, 5).toString(), 'page0');
    const maps = fs.readFileSync('/proc/self/maps', 'utf8');
    const addr = native.addressOf(win) + BigInt(3 * page);
    assert.ok(maps.includes(addr.toString(16)), 'the fixed mapping appears at the window address');
    native.unmapFixed(win, 3 * page, page);
    assert.throws(() => native.mapFixed(win, 1, fd, 0, page, C.PROT_READ), (e) => isNativeError(e, 'EINVAL'));
    assert.throws(() => native.mapFixed(win, 8 * page, fd, 0, page, C.PROT_READ), (e) => isNativeError(e, 'EINVAL'));
  } finally {
    native.munmap(win);
    fs.closeSync(fd);
  }
});

test('eventfd readiness is delivered on the event loop', async () => {
  const efd = native.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  try {
    assert.equal(native.eventfdRead(efd), null);
    const fired = new Promise<bigint | null>((resolve) => {
      const w = native.watch(efd, C.READABLE, (events) => {
        assert.ok(events & C.READABLE);
        const v = native.eventfdRead(efd);
        w.close();
        resolve(v);
      });
    });
    assert.equal(native.eventfdWrite(efd, 5n), true);
    assert.equal(await fired, 5n);
  } finally {
    fs.closeSync(efd);
  }
});

test('unix sockets listen, connect and accept without blocking', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-'));
  const sock = path.join(dir, 's');
  const l = native.unixListen(sock);
  try {
    assert.equal(native.accept(l), -1);
    const c = native.unixConnect(sock);
    const s = native.accept(l);
    assert.ok(s >= 0);
    native.sendmsg(c, Buffer.from('ping'));
    const buf = new Uint8Array(8);
    assert.equal(native.recvmsg(s, buf).bytes, 4);
    fs.closeSync(c);
    fs.closeSync(s);
    // A stale socket file from an earlier run does not stop a new listener.
    fs.closeSync(l);
    fs.closeSync(native.unixListen(sock));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('errors carry errno names', () => {
  assert.throws(() => native.eventfdRead(987654), (e) => isNativeError(e, 'EBADF'));
  assert.throws(() => native.unixConnect('/nonexistent/socket'), (e) => isNativeError(e, 'ENOENT'));
});

test('a mapping larger than one ArrayBuffer can hold is refused with EFBIG, not an abort', () => {
  const { MFD_CLOEXEC, PROT_READ, MAP_SHARED } = native.constants;
  const fd = native.memfdCreate('too-big', MFD_CLOEXEC);
  try {
    const len = 5 * 2 ** 30; // sparse: no memory is used
    native.ftruncate(fd, len);
    assert.throws(() => native.mmap(fd, 0, len, PROT_READ, MAP_SHARED), (e: unknown) => isNativeError(e, 'EFBIG'));
    const ok = native.mmap(fd, 0, 2 ** 30, PROT_READ, MAP_SHARED);
    assert.equal(ok.byteLength, 2 ** 30);
    native.munmap(ok);
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
    native.copy(got, doff, src, soff, len);
    assert.ok(got.equals(want), `copy(${doff}, ${soff}, ${len})`);
  }
  // Overlapping ranges of one buffer behave like memmove.
  const a = Buffer.from(src.subarray(0, 1 << 20));
  const b = Buffer.from(a);
  b.copy(b, 4096, 0, (1 << 20) - 4096);
  native.copy(a, 4096, a, 0, (1 << 20) - 4096);
  assert.ok(a.equals(b));
  const dst = Buffer.alloc(4096);
  assert.throws(() => native.copy(dst, 1, src, 0, 4096), (e) => isNativeError(e, 'ERANGE'));
  assert.throws(() => native.copy(dst, 0, src, src.length - 10, 11), (e) => isNativeError(e, 'ERANGE'));
  assert.throws(() => native.copy(dst, -1, src, 0, 1), (e) => isNativeError(e, 'ERANGE'));
  assert.throws(() => native.copy(dst, 0, src, 0, -1), (e) => isNativeError(e, 'ERANGE'));
  assert.throws(() => native.copy(dst, 0, 'x' as unknown as Uint8Array, 0, 1), TypeError);
});
