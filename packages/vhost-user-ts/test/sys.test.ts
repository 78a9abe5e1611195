// vhost-user-ts's syscall addon: each function against the kernel's real behaviour.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sys, isSysError } from '../src/sys.js';

const C = sys.constants;

test('fds travel over a socketpair with SCM_RIGHTS', () => {
  const [a, b] = sys.socketpair();
  const memfd = sys.memfdCreate('shim-test', C.MFD_CLOEXEC);
  try {
    fs.writeSync(memfd, Buffer.from('hello through an fd'));
    assert.equal(sys.sendmsg(a, Buffer.from('msg'), [memfd]), 3);
    const buf = new Uint8Array(16);
    const r = sys.recvmsg(b, buf);
    assert.equal(r.bytes, 3);
    assert.equal(Buffer.from(buf.subarray(0, 3)).toString(), 'msg');
    assert.equal(r.fds.length, 1);
    const got = Buffer.alloc(19);
    fs.readSync(r.fds[0]!, got, 0, 19, 0);
    assert.equal(got.toString(), 'hello through an fd');
    fs.closeSync(r.fds[0]!);
    assert.equal(sys.recvmsg(b, buf).bytes, -1, 'empty non-blocking socket reports EAGAIN as -1');
    fs.closeSync(a);
    assert.equal(sys.recvmsg(b, buf).bytes, 0, 'closed peer reads as 0');
  } finally {
    fs.closeSync(b);
    fs.closeSync(memfd);
  }
});

test('more than 8 fds is refused before any syscall', () => {
  const [a, b] = sys.socketpair();
  try {
    assert.throws(() => sys.sendmsg(a, Buffer.from('x'), [0, 0, 0, 0, 0, 0, 0, 0, 0]), /at most 8/);
  } finally {
    fs.closeSync(a);
    fs.closeSync(b);
  }
});

test('memfd mappings are shared and munmap detaches the buffer', () => {
  const fd = sys.memfdCreate('map-test', C.MFD_CLOEXEC);
  try {
    sys.ftruncate(fd, 2 * sys.pageSize);
    const ab = sys.mmap(fd, 0, 2 * sys.pageSize, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED);
    new Uint8Array(ab).set(Buffer.from('mapped'), sys.pageSize);
    const back = Buffer.alloc(6);
    fs.readSync(fd, back, 0, 6, sys.pageSize);
    assert.equal(back.toString(), 'mapped');
    sys.munmap(ab);
    assert.equal(ab.byteLength, 0, 'the ArrayBuffer is detached after munmap');
    assert.throws(() => sys.munmap(ab), /not a live mapping/);
  } finally {
    fs.closeSync(fd);
  }
});

test('a reserved window takes fixed file mappings and gives them back', () => {
  const page = sys.pageSize;
  const fd = sys.memfdCreate('window-test', C.MFD_CLOEXEC);
  const win = sys.reserve(8 * page);
  try {
    sys.ftruncate(fd, page);
    fs.writeSync(fd, Buffer.from('page0'), 0, 5, 0);
    sys.mapFixed(win, 3 * page, fd, 0, page, C.PROT_READ);
    assert.equal(Buffer.from(win, 3 * page, 5).toString(), 'page0');
    assert.ok(fs.readFileSync('/proc/self/maps', 'utf8').includes('memfd:window-test'), 'the fixed mapping is a mapping of the memfd');
    sys.unmapFixed(win, 3 * page, page);
    assert.throws(() => sys.mapFixed(win, 1, fd, 0, page, C.PROT_READ), (e) => isSysError(e, 'EINVAL'));
    assert.throws(() => sys.mapFixed(win, 8 * page, fd, 0, page, C.PROT_READ), (e) => isSysError(e, 'EINVAL'));
  } finally {
    sys.munmap(win);
    fs.closeSync(fd);
  }
});

test('eventfd readiness is delivered on the event loop', async () => {
  const efd = sys.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  try {
    assert.equal(sys.eventfdRead(efd), null);
    const fired = new Promise<bigint | null>((resolve) => {
      const w = sys.watch(efd, C.READABLE, (events) => {
        assert.ok(events & C.READABLE);
        const v = sys.eventfdRead(efd);
        w.close();
        resolve(v);
      });
    });
    assert.equal(sys.eventfdWrite(efd, 5n), true);
    assert.equal(await fired, 5n);
  } finally {
    fs.closeSync(efd);
  }
});

test('unix sockets listen, connect and accept without blocking', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-'));
  const sock = path.join(dir, 's');
  const l = sys.unixListen(sock);
  try {
    assert.equal(sys.accept(l), -1);
    const c = sys.unixConnect(sock);
    const s = sys.accept(l);
    assert.ok(s >= 0);
    sys.sendmsg(c, Buffer.from('ping'));
    const buf = new Uint8Array(8);
    assert.equal(sys.recvmsg(s, buf).bytes, 4);
    fs.closeSync(c);
    fs.closeSync(s);
    // A stale socket file from an earlier run does not stop a new listener.
    fs.closeSync(l);
    fs.closeSync(sys.unixListen(sock));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('errors carry errno names', () => {
  assert.throws(() => sys.eventfdRead(987654), (e) => isSysError(e, 'EBADF'));
  assert.throws(() => sys.unixConnect('/nonexistent/socket'), (e) => isSysError(e, 'ENOENT'));
});

test('a mapping larger than one ArrayBuffer can hold is refused with EFBIG, not an abort', () => {
  const { MFD_CLOEXEC, PROT_READ, MAP_SHARED } = sys.constants;
  const fd = sys.memfdCreate('too-big', MFD_CLOEXEC);
  try {
    const len = 5 * 2 ** 30; // sparse: no memory is used
    sys.ftruncate(fd, len);
    assert.throws(() => sys.mmap(fd, 0, len, PROT_READ, MAP_SHARED), (e: unknown) => isSysError(e, 'EFBIG'));
    const ok = sys.mmap(fd, 0, 2 ** 30, PROT_READ, MAP_SHARED);
    assert.equal(ok.byteLength, 2 ** 30);
    sys.munmap(ok);
  } finally {
    fs.closeSync(fd);
  }
});
