// FuseServer + ImageTree driven with hand-encoded requests over an in-memory reader.
import test from 'node:test';
import assert from 'node:assert/strict';
import { FuseServer } from '../src/fuse/server.js';
import { Errno, Opcode, InitFlag, FUSE_ATTR_DAX, FOPEN_KEEP_CACHE, FOPEN_DIRECT_IO, DT_DIR, DT_REG, DT_LNK, WRITE_OPCODES } from '../src/fuse/abi.js';
import { ImageTree, type ImageInode } from '../src/vfs/index.js';
import type { InodeAttr } from '../src/erofs/api.js';
import type { RemoveMappingOne, RequestContext, SetupMappingIn } from '../src/fuse/filesystem.js';
import { ReplyWriter, type DataWriter } from '../src/fuse/reply.js';
import { FakeReader, type FakeNode } from './support/fake-reader.js';
import { cstr, initIn, parseAttr, parseDirents, parseEntry, parseReply, readIn, request, serveOnce, u32s, u64s } from './support/fuse-wire.js';

const bigDir: Record<string, FakeNode> = {};
for (let i = 0; i < 300; i++) bigDir[`entry-with-a-longish-name-${String(i).padStart(4, '0')}`] = { type: 'file', data: Buffer.from(`#${i}`) };

function tree(): FakeNode & { type: 'dir' } {
  return {
    type: 'dir',
    children: {
      'hello.txt': { type: 'file', data: Buffer.from('hello, world\n'), xattrs: { 'user.color': Buffer.from('blue'), 'trusted.x': Buffer.alloc(100, 7) } },
      'link': { type: 'symlink', target: 'hello.txt' },
      'secret': { type: 'file', data: Buffer.from('s'), mode: 0o600 },
      'sparse': { type: 'file', data: Buffer.alloc(3 * 65536), holes: [[0, 65536], [131072, 196608]] },
      'sub': { type: 'dir', children: { 'deep': { type: 'file', data: Buffer.alloc(1 << 20, 0x61) } } },
      'big': { type: 'dir', children: bigDir },
      'dev': { type: 'chardev', rdev: (4 << 8) | 64 },
    },
  };
}

async function setup(opts: { minor?: number; serverOpts?: ConstructorParameters<typeof FuseServer>[1]; multi?: boolean } = {}) {
  const reader = new FakeReader(tree());
  const images = opts.multi ? [{ name: 'one', reader }, { name: 'two', reader: new FakeReader(tree(), { rootNid: 100 }) }] : [{ reader }];
  const fs = new ImageTree({ images, entryTimeout: 5, attrTimeout: 7 });
  const server = new FuseServer(fs, opts.serverOpts);
  const init = parseReply(await serveOnce(server, request({ opcode: Opcode.INIT }, initIn(opts.minor ?? 41))));
  assert.equal(init.error, 0);
  const call = async (opcode: number, nodeid: number, ...args: Buffer[]) => parseReply(await serveOnce(server, request({ opcode, nodeid, uid: 1000, gid: 100 }, ...args)));
  const lookup = async (parent: number, name: string) => {
    const r = await call(Opcode.LOOKUP, parent, cstr(name));
    assert.equal(r.error, 0, `lookup ${name}`);
    return parseEntry(r.body);
  };
  return { reader, fs, server, call, lookup, init };
}

test('INIT negotiates version, limits and flags (incl. flags2 behind INIT_EXT)', async () => {
  const server = new FuseServer(new ImageTree({ images: [{ reader: new FakeReader(tree()) }] }), { maxPages: 128, maxWrite: 65536, maxReadahead: 4096 });
  // The connection's DAX window, as its transport hands it over with each request.
  const window = { alignmentShift: 12, inodeDax: true };
  // Anything before INIT is refused.
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.GETATTR, nodeid: 1 }, u32s(0, 0), u64s(0)))).error, -Errno.EIO);
  const r = parseReply(await serveOnce(server, request({ opcode: Opcode.INIT, unique: 77n }, initIn(44, 0xffffffff, 0xffffffff, 131072)), { window }));
  assert.equal(r.error, 0);
  assert.equal(r.unique, 77n);
  assert.equal(r.body.length, 64);
  assert.equal(r.body.readUInt32LE(0), 7);
  assert.equal(r.body.readUInt32LE(4), 41, 'minor = min(kernel, ours)');
  assert.equal(r.body.readUInt32LE(8), 4096, 'max_readahead capped');
  const flags = BigInt(r.body.readUInt32LE(12)) | (BigInt(r.body.readUInt32LE(32)) << 32n);
  for (const f of ['ASYNC_READ', 'DO_READDIRPLUS', 'MAX_PAGES', 'MAP_ALIGNMENT', 'INIT_EXT', 'HAS_INODE_DAX', 'POSIX_ACL', 'PARALLEL_DIROPS'] as const) {
    assert.ok(flags & InitFlag[f], `${f} replied`);
  }
  for (const f of ['WRITEBACK_CACHE', 'EXPORT_SUPPORT', 'SECURITY_CTX', 'PASSTHROUGH', 'SPLICE_MOVE', 'HANDLE_KILLPRIV'] as const) {
    assert.ok(!(flags & InitFlag[f]), `${f} not replied`);
  }
  assert.equal(r.body.readUInt32LE(20), 65536, 'max_write');
  assert.equal(r.body.readUInt16LE(28), 128, 'max_pages');
  assert.equal(r.body.readUInt16LE(30), 12, 'map_alignment');
  assert.equal(server.negotiated?.minor, 41);

  // Flags the kernel does not offer are never replied; without INIT_EXT there is no flags2.
  const s2 = new FuseServer(new ImageTree({ images: [{ reader: new FakeReader(tree()) }] }));
  const r2 = parseReply(await serveOnce(s2, request({ opcode: Opcode.INIT }, initIn(31, Number(InitFlag.ASYNC_READ | InitFlag.MAP_ALIGNMENT), 0xffffffff)), { window }));
  assert.equal(r2.body.readUInt32LE(4), 31);
  assert.equal(r2.body.readUInt32LE(12), Number(InitFlag.ASYNC_READ | InitFlag.MAP_ALIGNMENT));
  assert.equal(r2.body.readUInt32LE(32), 0, 'no flags2 without INIT_EXT');

  // DAX only on a connection with a window; per-inode DAX only if the window offers it.
  const dax = async (w?: { alignmentShift: number; inodeDax: boolean }) => {
    const s = new FuseServer(new ImageTree({ images: [{ reader: new FakeReader(tree()) }] }));
    const b = parseReply(await serveOnce(s, request({ opcode: Opcode.INIT }, initIn(44, 0xffffffff, 0xffffffff)), { window: w })).body;
    const f = BigInt(b.readUInt32LE(12)) | (BigInt(b.readUInt32LE(32)) << 32n);
    return [Boolean(f & InitFlag.MAP_ALIGNMENT), Boolean(f & InitFlag.HAS_INODE_DAX), b.readUInt16LE(30)];
  };
  assert.deepEqual(await dax(), [false, false, 0], 'no window: no DAX');
  assert.deepEqual(await dax({ alignmentShift: 12, inodeDax: false }), [true, false, 12], 'a window without per-inode DAX');

  // Old minor: compat reply size. Major too new: our major in an 8-byte reply. Too old: EPROTO.
  const s3 = new FuseServer(new ImageTree({ images: [{ reader: new FakeReader(tree()) }] }));
  assert.equal(parseReply(await serveOnce(s3, request({ opcode: Opcode.INIT }, u32s(7, 22, 65536, 1)))).body.length, 24);
  const big = parseReply(await serveOnce(s3, request({ opcode: Opcode.INIT }, u32s(8, 0, 0, 0))));
  assert.equal(big.error, 0);
  assert.equal(big.body.length, 8);
  assert.equal(big.body.readUInt32LE(0), 7);
  assert.equal(parseReply(await serveOnce(s3, request({ opcode: Opcode.INIT }, u32s(6, 9)))).error, -Errno.EPROTO);
  assert.equal(parseReply(await serveOnce(s3, request({ opcode: Opcode.INIT }, u32s(7, 8)))).error, -Errno.EPROTO);
});

test('LOOKUP, GETATTR, READLINK, OPEN/READ/FLUSH/RELEASE, STATFS', async () => {
  const { call, lookup, fs, reader } = await setup();
  const root = parseAttr((await call(Opcode.GETATTR, 1, u32s(0, 0), u64s(0))).body, 16);
  assert.equal(root.ino, 1);
  assert.equal(root.mode, 0o040755);

  const e = await lookup(1, 'hello.txt');
  assert.notEqual(e.nodeid, 0);
  assert.equal(e.entryValid, 5);
  assert.equal(e.attrValid, 7);
  assert.equal(e.attr.ino, e.nodeid);
  assert.equal(e.attr.size, 13);
  assert.equal(e.attr.mode, 0o100644);
  assert.equal(e.attr.uid, 1000);
  assert.equal(e.attr.mtimensec, 123456789);
  assert.equal(e.attr.blksize, 4096);
  // Stable numbering: nid + offset.
  const nid = reader.lookup(reader.rootNid, 'hello.txt')!;
  assert.equal(e.nodeid, 2 + nid);

  const ga = await call(Opcode.GETATTR, e.nodeid, u32s(0, 0), u64s(0));
  assert.equal(ga.body.length, 104);
  assert.equal(ga.body.readBigUInt64LE(0), 7n);
  assert.deepEqual(parseAttr(ga.body, 16), e.attr);

  const dev = await lookup(1, 'dev');
  assert.equal(dev.attr.rdev, (4 << 8) | 64);

  const neg = await call(Opcode.LOOKUP, 1, cstr('missing'));
  assert.equal(neg.error, 0, 'negative entry');
  assert.equal(parseEntry(neg.body).nodeid, 0);
  assert.equal(parseEntry(neg.body).entryValid, 5);
  assert.equal((await call(Opcode.LOOKUP, e.nodeid, cstr('x'))).error, -Errno.ENOTDIR);
  assert.equal((await call(Opcode.LOOKUP, 1, cstr('x'.repeat(256)))).error, -Errno.ENAMETOOLONG);

  const l = await lookup(1, 'link');
  assert.equal(l.attr.mode & 0o170000, 0o120000);
  assert.equal((await call(Opcode.READLINK, l.nodeid)).body.toString(), 'hello.txt');
  assert.equal((await call(Opcode.READLINK, e.nodeid)).error, -Errno.EINVAL);

  const o = await call(Opcode.OPEN, e.nodeid, u32s(0, 0));
  assert.equal(o.error, 0);
  assert.equal(o.body.length, 16);
  const fh = Number(o.body.readBigUInt64LE(0));
  assert.equal(o.body.readUInt32LE(8) & FOPEN_KEEP_CACHE, FOPEN_KEEP_CACHE);
  assert.equal((await call(Opcode.READ, e.nodeid, readIn(fh, 7, 100))).body.toString(), 'world\n');
  assert.equal((await call(Opcode.READ, e.nodeid, readIn(fh, 0, 5))).body.toString(), 'hello');
  assert.equal((await call(Opcode.READ, e.nodeid, readIn(fh, 1000, 5))).body.length, 0, 'read past EOF is empty');
  assert.equal((await call(Opcode.READ, e.nodeid, readIn(fh, -1n, 5))).error, -Errno.EINVAL);
  assert.equal((await call(Opcode.FLUSH, e.nodeid, u64s(fh), u32s(0, 0), u64s(0))).error, 0);
  assert.equal(fs.stats().handles, 1);
  assert.equal((await call(Opcode.RELEASE, e.nodeid, u64s(fh), u32s(0, 0), u64s(0))).error, 0);
  assert.equal(fs.stats().handles, 0);

  // A huge read request is clamped to max_pages worth of data.
  const deep = await lookup((await lookup(1, 'sub')).nodeid, 'deep');
  const big = await call(Opcode.READ, deep.nodeid, readIn(0, 0, 0xffffffff));
  assert.equal(big.body.length, 256 * 4096 > (1 << 20) ? 1 << 20 : 256 * 4096);

  const direct = await call(Opcode.OPEN, e.nodeid, u32s(0o40000, 0));
  assert.equal(direct.body.readUInt32LE(8) & FOPEN_DIRECT_IO, FOPEN_DIRECT_IO);
  for (const flags of [1, 2, 0o1000]) assert.equal((await call(Opcode.OPEN, e.nodeid, u32s(flags, 0))).error, -Errno.EROFS, `open flags ${flags}`);
  assert.equal((await call(Opcode.OPEN, 1, u32s(0, 0))).error, -Errno.EISDIR);

  const st = await call(Opcode.STATFS, 1);
  assert.equal(st.body.length, 80);
  assert.equal(Number(st.body.readBigUInt64LE(0)), 1024);
  assert.equal(st.body.readUInt32LE(40), 4096);
  assert.equal(st.body.readUInt32LE(44), 255);

  // Unknown nodeid → ESTALE (never a crash).
  assert.equal((await call(Opcode.GETATTR, 999999, u32s(0, 0), u64s(0))).error, -Errno.ESTALE);
});

test('GETXATTR size probe / ERANGE / ENODATA and LISTXATTR', async () => {
  const { call, lookup } = await setup();
  const e = await lookup(1, 'hello.txt');
  const probe = await call(Opcode.GETXATTR, e.nodeid, u32s(0, 0), cstr('user.color'));
  assert.equal(probe.error, 0);
  assert.equal(probe.body.length, 8);
  assert.equal(probe.body.readUInt32LE(0), 4);
  assert.equal((await call(Opcode.GETXATTR, e.nodeid, u32s(4, 0), cstr('user.color'))).body.toString(), 'blue');
  assert.equal((await call(Opcode.GETXATTR, e.nodeid, u32s(3, 0), cstr('user.color'))).error, -Errno.ERANGE);
  assert.equal((await call(Opcode.GETXATTR, e.nodeid, u32s(64, 0), cstr('user.none'))).error, -Errno.ENODATA);
  const lp = await call(Opcode.LISTXATTR, e.nodeid, u32s(0, 0));
  assert.equal(lp.body.readUInt32LE(0), 'user.color\0trusted.x\0'.length);
  const l = await call(Opcode.LISTXATTR, e.nodeid, u32s(100, 0));
  assert.deepEqual(l.body.toString().split('\0').filter(Boolean).sort(), ['trusted.x', 'user.color']);
  assert.equal((await call(Opcode.LISTXATTR, e.nodeid, u32s(5, 0))).error, -Errno.ERANGE);
  assert.equal((await call(Opcode.LISTXATTR, 1, u32s(0, 0))).body.readUInt32LE(0), 0);
});

async function readAll(call: Awaited<ReturnType<typeof setup>>['call'], nodeid: number, plus: boolean, size: number) {
  const o = await call(Opcode.OPENDIR, nodeid, u32s(0, 0));
  assert.equal(o.error, 0);
  const fh = Number(o.body.readBigUInt64LE(0));
  const all: ReturnType<typeof parseDirents> = [];
  let off = 0;
  let rounds = 0;
  for (;;) {
    const r = await call(plus ? Opcode.READDIRPLUS : Opcode.READDIR, nodeid, readIn(fh, off, size));
    assert.equal(r.error, 0);
    assert.ok(r.body.length <= size, 'reply fits the requested size');
    const ents = parseDirents(r.body, plus);
    if (ents.length === 0) break;
    all.push(...ents);
    off = ents[ents.length - 1]!.off;
    rounds++;
  }
  assert.equal((await call(Opcode.RELEASEDIR, nodeid, u64s(fh), u32s(0, 0), u64s(0))).error, 0);
  return { all, rounds };
}

test('READDIR continues from the cookies across small buffers; telldir-style restarts', async () => {
  const { call, lookup, fs } = await setup();
  const big = await lookup(1, 'big');
  const { all, rounds } = await readAll(call, big.nodeid, false, 200);
  assert.ok(rounds > 50, `many small rounds (${rounds})`);
  assert.equal(all.length, 302);
  assert.deepEqual(all.slice(0, 2).map((d) => d.name), ['.', '..']);
  assert.equal(all[0]!.ino, big.nodeid);
  assert.equal(all[1]!.ino, 1, '.. of a top-level dir is the root');
  assert.equal(all[0]!.type, DT_DIR);
  assert.equal(all[2]!.type, DT_REG);
  assert.equal(new Set(all.map((d) => d.name)).size, 302, 'no duplicates');
  // Restart from an arbitrary cookie: continues right after that entry.
  const mid = all[150]!;
  const r = await call(Opcode.READDIR, big.nodeid, readIn(0, mid.off, 4096));
  assert.equal(parseDirents(r.body, false)[0]!.name, all[151]!.name);
  // A buffer too small for even one entry yields an empty reply, not an error.
  assert.equal((await call(Opcode.READDIR, big.nodeid, readIn(0, 0, 10))).body.length, 0);
  assert.equal(fs.stats().handles, 0);
  assert.equal((await call(Opcode.OPENDIR, (await lookup(1, 'hello.txt')).nodeid, u32s(0, 0))).error, -Errno.ENOTDIR);
  const root = await readAll(call, 1, false, 4096);
  const link = root.all.find((d) => d.name === 'link')!;
  assert.equal(link.type, DT_LNK);
});

test('nlookup: LOOKUP and READDIRPLUS take references, FORGET/BATCH_FORGET drop them (no leak)', async () => {
  const { call, lookup, fs, server } = await setup();
  const base = fs.stats().nodes;
  const a = await lookup(1, 'hello.txt');
  await lookup(1, 'hello.txt');
  const sub = await lookup(1, 'sub');
  const deep = await lookup(sub.nodeid, 'deep');
  assert.equal(fs.stats().nodes, base + 3);

  // READDIRPLUS of big/ in small buffers: every returned entry except . and .. takes one ref.
  const big = await lookup(1, 'big');
  const { all } = await readAll(call, big.nodeid, true, 1000);
  assert.equal(all.length, 302);
  assert.equal(all[0]!.entry!.nodeid, 0, '. carries no entry');
  assert.equal(all[1]!.entry!.nodeid, 0, '.. carries no entry');
  assert.equal(all[5]!.entry!.nodeid, all[5]!.ino);
  assert.equal(all[5]!.entry!.attr.size, 2);
  assert.equal(fs.stats().nodes, base + 4 + 300);

  // The kernel forgets everything it was given: the table returns to its initial size.
  assert.equal(await serveOnce(server, request({ opcode: Opcode.FORGET, nodeid: a.nodeid }, u64s(2))), null);
  const items = all.slice(2).map((d) => u64s(d.entry!.nodeid, 1));
  items.push(u64s(deep.nodeid, 1), u64s(sub.nodeid, 1));
  assert.equal(await serveOnce(server, request({ opcode: Opcode.BATCH_FORGET }, u32s(items.length, 0), ...items)), null);
  assert.equal(fs.stats().nodes, base + 1);
  assert.equal(await serveOnce(server, request({ opcode: Opcode.FORGET, nodeid: big.nodeid }, u64s(1))), null);
  assert.equal(fs.stats().nodes, base);
  // Forgetting the root or unknown ids is harmless; the root stays usable.
  assert.equal(await serveOnce(server, request({ opcode: Opcode.FORGET, nodeid: 1 }, u64s(100))), null);
  assert.equal(await serveOnce(server, request({ opcode: Opcode.FORGET, nodeid: 123456 }, u64s(1))), null);
  assert.equal((await call(Opcode.GETATTR, 1, u32s(0, 0), u64s(0))).error, 0);
  assert.equal(fs.stats().nodes, base);
  // Stable numbers: a re-lookup after FORGET yields the same nodeid.
  assert.equal((await lookup(1, 'hello.txt')).nodeid, a.nodeid);
  // Truncated BATCH_FORGET: processes what fits, never throws, no reply.
  assert.equal(await serveOnce(server, request({ opcode: Opcode.BATCH_FORGET }, u32s(1000, 0), u64s(a.nodeid, 1))), null);
  assert.equal(fs.stats().nodes, base);
});

test('LSEEK SEEK_DATA/SEEK_HOLE/SEEK_END, ACCESS, STATX, INTERRUPT, DESTROY', async () => {
  const { call, lookup, server } = await setup();
  const sp = await lookup(1, 'sparse');
  const seek = async (off: number, whence: number) => {
    const r = await call(Opcode.LSEEK, sp.nodeid, u64s(0, off), u32s(whence, 0));
    return r.error !== 0 ? r.error : Number(r.body.readBigUInt64LE(0));
  };
  assert.equal(await seek(0, 3), 65536, 'SEEK_DATA skips the leading hole');
  assert.equal(await seek(70000, 3), 70000);
  assert.equal(await seek(70000, 4), 131072, 'SEEK_HOLE finds the next hole');
  assert.equal(await seek(140000, 3), -Errno.ENXIO, 'no data after the last hole');
  assert.equal(await seek(3 * 65536, 4), -Errno.ENXIO, 'at EOF');
  assert.equal(await seek(10, 2), 3 * 65536 + 10, 'SEEK_END');
  assert.equal(await seek(0, 1), -Errno.EINVAL);
  assert.equal(await seek(0, 9), -Errno.EINVAL);

  const secret = await lookup(1, 'secret');
  assert.equal((await call(Opcode.ACCESS, secret.nodeid, u32s(4, 0))).error, 0, 'owner may read');
  assert.equal((await call(Opcode.ACCESS, secret.nodeid, u32s(2, 0))).error, -Errno.EROFS);
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.ACCESS, nodeid: secret.nodeid, uid: 5, gid: 5 }, u32s(4, 0)))).error, -Errno.EACCES);
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.ACCESS, nodeid: secret.nodeid, uid: 0, gid: 0 }, u32s(4, 0)))).error, 0);

  const sx = await call(Opcode.STATX, secret.nodeid, u32s(0, 0), u64s(0), u32s(0, 0x7ff));
  assert.equal(sx.error, 0);
  assert.equal(sx.body.length, 32 + 256);
  assert.equal(sx.body.readUInt32LE(32) & 0x7ff, 0x7ff, 'basic stats in the mask');
  assert.equal(sx.body.readUInt16LE(32 + 28), 0o100600);
  assert.equal(Number(sx.body.readBigUInt64LE(32 + 40)), 1, 'size');
  assert.equal(Number(sx.body.readBigUInt64LE(32 + 32)), secret.nodeid, 'ino');
  const dev = await lookup(1, 'dev');
  const sxd = await call(Opcode.STATX, dev.nodeid, u32s(0, 0), u64s(0), u32s(0, 0x7ff));
  assert.deepEqual([sxd.body.readUInt32LE(32 + 128), sxd.body.readUInt32LE(32 + 132)], [4, 64]);
  // STATX only exists from 7.39 on.
  const old = await setup({ minor: 38 });
  assert.equal((await old.call(Opcode.STATX, 1, u32s(0, 0), u64s(0), u32s(0, 0x7ff))).error, -Errno.ENOSYS);

  assert.equal(await serveOnce(server, request({ opcode: Opcode.INTERRUPT }, u64s(12345))), null);
  const d = await call(Opcode.DESTROY, 0);
  assert.equal(d.error, 0);
  assert.equal(d.body.length, 0);
  assert.equal(server.negotiated, undefined);
  assert.equal((await call(Opcode.GETATTR, 1, u32s(0, 0), u64s(0))).error, -Errno.EIO, 'after DESTROY until the next INIT');
});

test('write-type opcodes answer EROFS, unknown ones ENOSYS', async () => {
  const { call, lookup } = await setup();
  const e = await lookup(1, 'hello.txt');
  for (const op of WRITE_OPCODES) {
    const r = await call(op, e.nodeid, Buffer.alloc(64), cstr('name'), cstr('other'));
    assert.equal(r.error, -Errno.EROFS, `opcode ${op}`);
    assert.equal(r.body.length, 0);
  }
  for (const op of [Opcode.FSYNC, Opcode.FSYNCDIR, Opcode.GETLK, Opcode.SETLK, Opcode.BMAP, Opcode.IOCTL, Opcode.POLL, Opcode.SYNCFS, Opcode.SETUPMAPPING, Opcode.REMOVEMAPPING, 7, 19, 54, 999, 4096, 0x7fffffff]) {
    assert.equal((await call(op, e.nodeid, Buffer.alloc(64))).error, -Errno.ENOSYS, `opcode ${op}`);
  }
});

test('malformed requests get errno replies, never a throw', async () => {
  const { server, lookup } = await setup();
  const e = await lookup(1, 'hello.txt');
  assert.equal(await serveOnce(server, Buffer.alloc(0)), null);
  assert.equal(await serveOnce(server, Buffer.alloc(15)), null);
  // Header only partly there: EINVAL with the unique we can see.
  const partial = request({ opcode: Opcode.GETATTR, unique: 99n }).subarray(0, 30);
  const pr = parseReply(await serveOnce(server, partial));
  assert.equal(pr.error, -Errno.EINVAL);
  assert.equal(pr.unique, 99n);
  // len field larger than the buffer, or smaller than a header.
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.GETATTR, nodeid: 1, len: 4000 }))).error, -Errno.EINVAL);
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.GETATTR, nodeid: 1, len: 20 }))).error, -Errno.EINVAL);
  // total_extlen beyond the request.
  const ext = request({ opcode: Opcode.GETATTR, nodeid: 1 });
  ext.writeUInt16LE(100, 36);
  assert.equal(parseReply(await serveOnce(server, ext)).error, -Errno.EINVAL);
  // Unterminated name; truncated arguments.
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.LOOKUP, nodeid: 1 }, Buffer.from('abc')))).error, -Errno.EINVAL);
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.READ, nodeid: e.nodeid }, u64s(0, 0)))).error, -Errno.EINVAL);
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.GETXATTR, nodeid: e.nodeid }, u32s(10)))).error, -Errno.EINVAL);
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.OPEN, nodeid: e.nodeid }))).error, -Errno.EINVAL);
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.LSEEK, nodeid: e.nodeid }, u64s(0)))).error, -Errno.EINVAL);
  assert.equal(await serveOnce(server, request({ opcode: Opcode.FORGET, nodeid: e.nodeid })), null);
  // Trailing garbage after the declared len is ignored.
  const padded = Buffer.concat([request({ opcode: Opcode.LOOKUP, nodeid: 1 }, cstr('hello.txt')), Buffer.alloc(100, 0xff)]);
  assert.equal(parseReply(await serveOnce(server, padded)).error, 0);

  // Random requests from a fixed seed: always a well-formed reply or null.
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  for (let i = 0; i < 3000; i++) {
    const body = Buffer.alloc(Math.floor(rnd() * 120));
    for (let j = 0; j < body.length; j++) body[j] = Math.floor(rnd() * 256);
    const op = rnd() < 0.8 ? 1 + Math.floor(rnd() * 53) : Math.floor(rnd() * 2 ** 32);
    const nodeid = [1, e.nodeid, 0, Math.floor(rnd() * 2 ** 40), 2 ** 52 + 3][Math.floor(rnd() * 5)]!;
    const req = request({ opcode: op === Opcode.INIT || op === Opcode.DESTROY ? Opcode.GETATTR : op, nodeid }, body);
    if (rnd() < 0.2) req.writeUInt32LE(Math.floor(rnd() * 300), 0);
    const out = await serveOnce(server, req);
    if (out !== null) {
      const r = parseReply(out);
      assert.ok(r.error <= 0 && r.error > -200, `sane errno ${r.error}`);
    }
  }
  // Still serving.
  assert.equal((await lookup(1, 'hello.txt')).nodeid, e.nodeid);
});

test('nids outside the offset mapping get table-allocated ids that FORGET frees', async () => {
  // Every nid of this reader lies beyond blocks * blockSize / 32: the fallback path.
  const reader = new FakeReader(tree(), { rootNid: 2 ** 40 });
  const fs = new ImageTree({ images: [{ reader }] });
  const server = new FuseServer(fs);
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.INIT }, initIn()))).error, 0);
  const call = async (opcode: number, nodeid: number, ...args: Buffer[]) => parseReply(await serveOnce(server, request({ opcode, nodeid }, ...args)));
  const e1 = parseEntry((await call(Opcode.LOOKUP, 1, cstr('hello.txt'))).body);
  const e2 = parseEntry((await call(Opcode.LOOKUP, 1, cstr('hello.txt'))).body);
  assert.equal(e1.nodeid, e2.nodeid, 'same id while referenced');
  assert.ok(e1.nodeid >= 2 ** 52);
  assert.equal((await call(Opcode.READ, e1.nodeid, readIn(0, 0, 5))).body.toString(), 'hello');
  // Plain READDIR hands out ids without references: nothing accumulates.
  const big = parseEntry((await call(Opcode.LOOKUP, 1, cstr('big'))).body);
  const r = await call(Opcode.READDIR, big.nodeid, readIn(0, 0, 1 << 16));
  assert.equal(parseDirents(r.body, false).length, 302);
  assert.equal(fs.stats().dynamic, 2);
  const rp = await call(Opcode.READDIRPLUS, big.nodeid, readIn(0, 0, 1 << 16));
  const ents = parseDirents(rp.body, true).slice(2);
  assert.equal(fs.stats().dynamic, 302);
  for (const d of ents) assert.equal(await serveOnce(server, request({ opcode: Opcode.FORGET, nodeid: d.entry!.nodeid }, u64s(1))), null);
  assert.equal(await serveOnce(server, request({ opcode: Opcode.FORGET, nodeid: e1.nodeid }, u64s(2))), null);
  assert.equal(await serveOnce(server, request({ opcode: Opcode.FORGET, nodeid: big.nodeid }, u64s(1))), null);
  assert.deepEqual(fs.stats(), { nodes: 1, handles: 0, dynamic: 0 });
  assert.equal((await call(Opcode.GETATTR, e1.nodeid, u32s(0, 0), u64s(0))).error, -Errno.ESTALE, 'a forgotten table id is stale');
});

test('resume: a restarted server answers a live session without INIT, with the same node ids', async () => {
  const first = await setup();
  const e = await first.lookup(1, 'hello.txt');
  const server = new FuseServer(new ImageTree({ images: [{ reader: new FakeReader(tree()) }] }), { resume: true });
  const r = parseReply(await serveOnce(server, request({ opcode: Opcode.GETATTR, nodeid: e.nodeid }, u32s(0, 0), u64s(0))));
  assert.equal(r.error, 0);
  assert.equal(parseAttr(r.body, 16).size, 13);
  const rd = parseReply(await serveOnce(server, request({ opcode: Opcode.READ, nodeid: e.nodeid }, readIn(0, 0, 5))));
  assert.equal(rd.body.toString(), 'hello');
  assert.equal(server.negotiated?.minor, 41);
});

test('a filesystem layered on ImageTree: FUSE_ATTR_DAX only where negotiated, READ override (O_DIRECT flagged), SETUPMAPPING/REMOVEMAPPING get the connection\'s window, release', async () => {
  const seen: string[] = [];
  interface Window { alignmentShift: number; inodeDax: boolean; id: string }
  class Layer extends ImageTree<Window> {
    protected override wantsDax(_t: ImageInode, a: InodeAttr): boolean {
      return a.type === 'file' && a.size > 100;
    }
    override read(ctx: RequestContext, nodeid: number, fh: number, off: number, size: number, out: DataWriter): void {
      const t = this.inodeOf(nodeid);
      const direct = this.openedDirect(fh);
      seen.push(`read ${t.name} ${off} ${size} ${direct}`);
      if (direct) return super.read(ctx, nodeid, fh, off, size, out);
      out.write(Buffer.from('SHARED'.slice(0, size)));
    }
    setupMapping(_ctx: RequestContext, nodeid: number, m: SetupMappingIn, w: Window | undefined): void {
      seen.push(`map ${this.inodeOf(nodeid).nid} ${m.fh} ${m.foffset} ${m.len} ${m.flags} ${m.moffset} in ${w?.id}`);
    }
    removeMapping(_ctx: RequestContext, ranges: RemoveMappingOne[], w: Window | undefined): void {
      seen.push(`unmap ${ranges.map((r) => `${r.moffset}+${r.len}`).join(',')} in ${w?.id}`);
    }
    override release(ctx: RequestContext, nodeid: number, fh: number): void {
      seen.push(`release ${this.inodeOf(nodeid).nid} ${fh}`);
      super.release(ctx, nodeid, fh);
    }
  }
  const fs = new Layer({ images: [{ name: 'img', reader: new FakeReader(tree()) }] });
  const server = new FuseServer(fs);
  const window: Window = { alignmentShift: 12, inodeDax: true, id: 'w1' };
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.INIT }, initIn()), { window })).error, 0);
  const call = async (opcode: number, nodeid: number, ...args: Buffer[]) => parseReply(await serveOnce(server, request({ opcode, nodeid }, ...args), { window }));
  const sub = parseEntry((await call(Opcode.LOOKUP, 1, cstr('sub'))).body);
  const deep = parseEntry((await call(Opcode.LOOKUP, sub.nodeid, cstr('deep'))).body);
  const small = parseEntry((await call(Opcode.LOOKUP, 1, cstr('hello.txt'))).body);
  assert.equal(deep.attr.flags, FUSE_ATTR_DAX);
  assert.equal(small.attr.flags, 0);
  assert.equal(parseAttr((await call(Opcode.GETATTR, deep.nodeid, u32s(0, 0), u64s(0))).body, 16).flags, FUSE_ATTR_DAX);
  const plus = await readAll(call, sub.nodeid, true, 4096);
  assert.equal(plus.all.find((d) => d.name === 'deep')!.entry!.attr.flags, FUSE_ATTR_DAX, 'READDIRPLUS entries too');
  const fh = Number((await call(Opcode.OPEN, deep.nodeid, u32s(0, 0))).body.readBigUInt64LE(0));
  assert.equal((await call(Opcode.READ, deep.nodeid, readIn(fh, 0, 4))).body.toString(), 'SHAR');
  const dfh = Number((await call(Opcode.OPEN, deep.nodeid, u32s(0o40000, 0))).body.readBigUInt64LE(0));
  assert.equal((await call(Opcode.READ, deep.nodeid, readIn(dfh, 0, 4))).body.toString(), 'aaaa', 'O_DIRECT falls through to the image');
  assert.equal((await call(Opcode.SETUPMAPPING, deep.nodeid, u64s(fh, 0, 2 << 20), u32s(2, 0), u64s(4 << 20))).error, 0);
  assert.equal((await call(Opcode.REMOVEMAPPING, deep.nodeid, u32s(2), u64s(4 << 20, 2 << 20, 0, 4096))).error, 0);
  assert.equal((await call(Opcode.REMOVEMAPPING, deep.nodeid, u32s(3), u64s(0, 1))).error, -Errno.EINVAL, 'count beyond the request');
  assert.equal((await call(Opcode.RELEASE, deep.nodeid, u64s(fh), u32s(0, 0), u64s(0))).error, 0);
  const deepNid = deep.nodeid - 2;
  assert.deepEqual(seen, [
    `read img 0 4 false`, `read img 0 4 true`, `map ${deepNid} ${fh} 0 ${2 << 20} 2 ${4 << 20} in w1`,
    `unmap ${4 << 20}+${2 << 20},0+4096 in w1`, `release ${deepNid} ${fh}`,
  ]);
  // A connection without a window negotiates no per-inode DAX: no file is marked, and a mapping
  // request reaches the filesystem without a window.
  const bare = new FuseServer(fs);
  assert.equal(parseReply(await serveOnce(bare, request({ opcode: Opcode.INIT }, initIn()))).error, 0);
  const bareCall = async (opcode: number, nodeid: number, ...args: Buffer[]) => parseReply(await serveOnce(bare, request({ opcode, nodeid }, ...args)));
  assert.equal(parseEntry((await bareCall(Opcode.LOOKUP, sub.nodeid, cstr('deep'))).body).attr.flags, 0);
  assert.equal((await bareCall(Opcode.SETUPMAPPING, deep.nodeid, u64s(fh, 0, 4096), u32s(2, 0), u64s(0))).error, 0);
  assert.equal(seen[seen.length - 1], `map ${deepNid} ${fh} 0 4096 2 0 in undefined`);
  // A plain ImageTree does no DAX at all.
  const { call: plainCall } = await setup();
  assert.equal((await plainCall(Opcode.SETUPMAPPING, 1, u64s(0, 0, 4096), u32s(2, 0), u64s(0))).error, -Errno.ENOSYS);
  assert.equal((await plainCall(Opcode.REMOVEMAPPING, 1, u32s(1), u64s(0, 4096))).error, -Errno.ENOSYS);
});

test('several images: synthetic root with one directory per image', async () => {
  const { call, lookup, fs } = await setup({ multi: true });
  const root = await readAll(call, 1, false, 4096);
  assert.deepEqual(root.all.map((d) => d.name), ['.', '..', 'one', 'two']);
  const one = await lookup(1, 'one');
  const two = await lookup(1, 'two');
  assert.notEqual(one.nodeid, two.nodeid);
  assert.equal(one.attr.mode & 0o170000, 0o040000);
  const h1 = await lookup(one.nodeid, 'hello.txt');
  const h2 = await lookup(two.nodeid, 'hello.txt');
  assert.notEqual(h1.nodeid, h2.nodeid, 'same nid in two images: distinct inodes');
  const dots = await readAll(call, one.nodeid, false, 4096);
  assert.equal(dots.all[1]!.ino, 1, "an image root's .. is the synthetic root");
  const plus = await readAll(call, 1, true, 4096);
  assert.equal(plus.all[2]!.entry!.nodeid, one.nodeid);
  assert.equal((await call(Opcode.LOOKUP, 1, cstr('three'))).body.readBigUInt64LE(0), 0n);
  const rootAttr = parseAttr((await call(Opcode.GETATTR, 1, u32s(0, 0), u64s(0))).body, 16);
  assert.equal(rootAttr.mode, 0o040555);
  assert.equal(rootAttr.nlink, 4);
  assert.equal((await call(Opcode.GETXATTR, 1, u32s(0, 0), cstr('user.x'))).error, -Errno.ENODATA);
  assert.ok(fs.stats().nodes > 1);
  assert.throws(() => new ImageTree({ images: [{ name: 'a', reader: new FakeReader(tree()) }, { name: 'a', reader: new FakeReader(tree()) }] }), /duplicate/);
  assert.throws(() => new ImageTree({ images: [{ name: 'a/b', reader: new FakeReader(tree()) }, { name: 'c', reader: new FakeReader(tree()) }] }), /invalid/);
});

test('ReplyWriter: body across pieces (empty ones too), header last and split anywhere, E2BIG, no reply without room for a header', () => {
  const unique = Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]);
  const pieces = [Buffer.alloc(5, 0xee), Buffer.alloc(0), Buffer.alloc(14, 0xee), Buffer.alloc(9, 0xee)];
  const out = new ReplyWriter(pieces);
  assert.equal(out.available, 28 - 16);
  assert.equal(out.piecesFor(100), 2, 'three bytes of the second piece, then the third');
  out.write(Buffer.from('ab'));
  // One fill call per piece: the last byte of the third piece, then four of the fourth.
  assert.equal(out.writeFrom((t, at, n, done) => { t.fill(0x30 + done, at, at + n); return n; }, 5), 5);
  assert.equal(out.written, 7);
  out.end(unique);
  assert.equal(out.length, 23);
  const all = Buffer.concat(pieces);
  assert.equal(all.readUInt32LE(0), 23);
  assert.equal(all.readInt32LE(4), 0);
  assert.deepEqual(all.subarray(8, 16), unique);
  assert.equal(all.subarray(16, 23).toString('latin1'), 'ab0' + '1111');
  assert.equal(all[23], 0xee, 'nothing past the reply');
  // A body larger than the room: E2BIG, whether written at once or filled.
  const small = new ReplyWriter([Buffer.alloc(20)]);
  small.write(Buffer.alloc(5));
  small.end(unique);
  assert.equal(small.length, 16);
  assert.equal(small.bytes!.readInt32LE(4), -Errno.E2BIG);
  small.restart();
  assert.equal(small.writeFrom((_t, _at, n) => n, 10), 4);
  assert.ok(small.overflowed, 'the stream went on past the room');
  small.restart();
  assert.equal(small.writeFrom((_t, _at, n, done) => Math.min(n, 4 - done), 10), 4);
  assert.ok(!small.overflowed, 'the stream ended exactly at the room: a short reply that fits');
  // An error reply drops the body; a reply memory smaller than a header sends nothing.
  const err = new ReplyWriter([Buffer.alloc(64)]);
  err.write(Buffer.alloc(30));
  err.end(unique, Errno.ENOENT);
  assert.equal(err.length, 16);
  assert.equal(err.bytes!.readInt32LE(4), -Errno.ENOENT);
  const tiny = new ReplyWriter([Buffer.alloc(10)]);
  tiny.end(unique, Errno.EIO);
  assert.equal(tiny.length, 0);
  // Memory that is no longer the reply's (a reset ring) is never written.
  class Gone extends ReplyWriter {
    protected override live(): boolean { return false; }
  }
  const gone = new Gone([Buffer.alloc(64, 0xee)]);
  gone.write(Buffer.alloc(8));
  gone.end(unique);
  assert.ok(gone.stale);
  assert.equal(gone.length, 0);
  assert.ok(gone.bytes === undefined || gone.bytes.length === 0);
});

test('READ writes straight into the transport\'s reply memory: a reader call per piece, synchronous, header split anywhere, E2BIG only when the data does not fit', async () => {
  const base = new FakeReader(tree());
  const calls = { into: 0, read: 0 };
  let plain = false;
  const reader = Object.assign(Object.create(base) as FakeReader, {
    readInto(nid: number, offset: number, length: number, target: Uint8Array, targetOffset = 0): number {
      calls.into++;
      const b = base.read(nid, offset, length);
      target.set(b, targetOffset);
      return b.length;
    },
    read(nid: number, offset: number, length: number): Buffer {
      calls.read++;
      return base.read(nid, offset, length);
    },
    storedPlain: () => plain,
  });
  const server = new FuseServer(new ImageTree({ images: [{ reader }] }));
  assert.equal(parseReply(await serveOnce(server, request({ opcode: Opcode.INIT }, initIn()))).error, 0);
  const sub = parseEntry(parseReply(await serveOnce(server, request({ opcode: Opcode.LOOKUP, nodeid: 1 }, cstr('sub')))).body);
  const deep = parseEntry(parseReply(await serveOnce(server, request({ opcode: Opcode.LOOKUP, nodeid: sub.nodeid }, cstr('deep')))).body);
  const read = (pieces: Buffer[], offset: number, size: number, unique = 5n) => {
    const out = new ReplyWriter(pieces);
    const r = server.serve(request({ opcode: Opcode.READ, nodeid: deep.nodeid, unique }, readIn(0, offset, size)), out);
    return { out, sync: !(r instanceof Promise) };
  };
  // 7 + 20 + 4000 + 200 bytes: the header takes 7 + 9, the data starts 9 bytes into the second.
  const dst = [Buffer.alloc(7, 0xee), Buffer.alloc(20, 0xee), Buffer.alloc(4000, 0xee), Buffer.alloc(200, 0xee)];
  const r1 = read(dst, 10, 4100);
  assert.ok(r1.sync, 'answered synchronously');
  assert.equal(r1.out.length, 16 + 4100);
  assert.deepEqual(calls, { into: 3, read: 0 }, 'one reader call per piece, no buffer in between');
  const hdr = Buffer.concat([dst[0]!, dst[1]!.subarray(0, 9)]);
  assert.equal(hdr.readUInt32LE(0), 16 + 4100);
  assert.equal(hdr.readBigUInt64LE(8), 5n);
  assert.ok(Buffer.concat([dst[1]!.subarray(9), dst[2]!, dst[3]!.subarray(0, 89)]).equals(Buffer.alloc(4100, 0x61)));
  assert.ok(dst[3]!.subarray(89).every((b) => b === 0xee), 'nothing past the data');
  // Less room than asked for: a short read at EOF still fits; more data than room is E2BIG.
  const short = read([Buffer.alloc(16 + 50, 0xee)], (1 << 20) - 30, 4096);
  assert.equal(short.out.length, 16 + 30);
  assert.ok(short.out.bytes!.subarray(16).equals(Buffer.alloc(30, 0x61)));
  const tooBig = read([Buffer.alloc(16 + 50, 0xee)], 0, 4096);
  assert.equal(tooBig.out.length, 16);
  assert.equal(tooBig.out.bytes!.readInt32LE(4), -Errno.E2BIG);
  // A compressed file over many pieces is decoded once and copied; a plain one is still copied per piece.
  calls.into = calls.read = 0;
  const many = () => Array.from({ length: 12 }, (_, i) => Buffer.alloc(i === 0 ? 16 + 1000 : 1000, 0xee));
  const p1 = many();
  assert.equal(read(p1, 0, 11_000).out.length, 16 + 11_000);
  assert.deepEqual(calls, { into: 0, read: 1 });
  assert.ok(Buffer.concat(p1).subarray(16, 16 + 11_000).equals(Buffer.alloc(11_000, 0x61)));
  plain = true;
  const p2 = many();
  assert.equal(read(p2, 0, 11_000).out.length, 16 + 11_000);
  assert.deepEqual(calls, { into: 11, read: 1 });
  assert.ok(Buffer.concat(p2).subarray(16, 16 + 11_000).equals(Buffer.alloc(11_000, 0x61)));
  // LOOKUP and GETATTR of the in-memory tree answer synchronously too.
  assert.ok(server.serve(request({ opcode: Opcode.GETATTR, nodeid: deep.nodeid }, u32s(0, 0), u64s(0)), new ReplyWriter([Buffer.alloc(256)])) === undefined);
  assert.ok(server.serve(request({ opcode: Opcode.LOOKUP, nodeid: 1 }, cstr('sub')), new ReplyWriter([Buffer.alloc(256)])) === undefined);
});

test('READ answered later (an async filesystem) writes after the await; a filesystem breaking the contract gets EIO', async () => {
  let mode: 'async' | 'overfill' | 'too-much' = 'async';
  const server = new FuseServer({
    async read(_ctx, _nodeid, _fh, offset, size, out) {
      await new Promise((r) => setTimeout(r, 1));
      if (mode === 'async') out.write(Buffer.alloc(Math.min(size, 100), 0x42 + offset));
      else if (mode === 'overfill') out.writeFrom(() => size + 1, size);
      else out.write(Buffer.alloc(size + 10));
    },
  }, { resume: true });
  const go = async (size: number) => {
    const out = new ReplyWriter([Buffer.alloc(16 + 4096, 0xee)]);
    const r = server.serve(request({ opcode: Opcode.READ, nodeid: 2 }, readIn(0, 0, size)), out);
    assert.ok(r instanceof Promise, 'an async answer');
    assert.equal(out.length, 0, 'nothing before it settles');
    await r;
    return parseReply([out.bytes!]);
  };
  const ok = await go(4096);
  assert.equal(ok.error, 0);
  assert.ok(ok.body.equals(Buffer.alloc(100, 0x42)));
  mode = 'overfill';
  assert.equal((await go(64)).error, -Errno.EIO);
  mode = 'too-much';
  assert.equal((await go(64)).error, -Errno.EIO, 'more than asked for');
});
