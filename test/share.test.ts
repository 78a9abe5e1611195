// Unit tests of src/share over in-memory readers: domains, verification, backings, the EOF-tail
// rule, lazy blobs with a budget, re-pointing, computed fingerprints, DAX bookkeeping, and the
// share layer as a guest's filesystem (SharedTree) driven through the FUSE server.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ShareRegistry, DEFAULT_SHARE_OPTIONS, type ShareOptions } from '../src/share/registry.js';
import { BLOB_GRANULE, type MapPiece } from '../src/share/backing.js';
import { PAGE_SIZE } from '../src/native/index.js';
import { DaxWindow, type MapChannel } from '../src/share/dax.js';
import { FingerprintResolver, imageIdentity } from '../src/share/fingerprint.js';
import { Errno, FUSE_ATTR_DAX, Opcode } from '../src/fuse/abi.js';
import { FuseServer } from '../src/fuse/server.js';
import { DEFAULT_DAX_OPTIONS, ShareService } from '../src/share/service.js';
import { MemoryReader } from './support/memory-reader.js';
import { cstr, initIn, parseEntry, parseReply, readIn, request, serveOnce, u32s, u64s } from './support/fuse-wire.js';
import { SCRATCH_DIR } from './support/paths.js';

const claim = (content: Buffer) => Buffer.concat([Buffer.from('sha256:'), createHash('sha256').update(content).digest()]);
const scratch = (name: string) => {
  const dir = path.join(SCRATCH_DIR, 'share', name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
};
const options = (o: Partial<ShareOptions> = {}): ShareOptions => ({ ...DEFAULT_SHARE_OPTIONS, ...o });
const digestSource = { kind: 'image-digest' as const };
/** Fills a pseudo-random buffer deterministically. */
const bytes = (n: number, seed: number) => {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
};

test('identical claims share one backing inside a domain, not across domains', async () => {
  const content = bytes(10000, 1);
  const a = new MemoryReader([{ name: 'f', content, fingerprint: claim(content) }]);
  const b = new MemoryReader([{ name: 'f', content, fingerprint: claim(content) }]);
  const c = new MemoryReader([{ name: 'f', content, fingerprint: claim(content) }]);
  const reg = new ShareRegistry(options());
  const ia = reg.registerImage({ name: 'a', domain: 'tenant', paths: ['/dev/null'], reader: a, fingerprint: digestSource });
  const ib = reg.registerImage({ name: 'b', domain: 'tenant', paths: ['/dev/null'], reader: b, fingerprint: digestSource });
  const ic = reg.registerImage({ name: 'c', paths: ['/dev/null'], reader: c, fingerprint: digestSource });
  const ba = reg.backingFor(ia, a.nidOf('f'))!;
  const bb = reg.backingFor(ib, b.nidOf('f'))!;
  const bc = reg.backingFor(ic, c.nidOf('f'))!;
  assert.ok(ba && bb && bc);
  assert.equal(ba, bb, 'same domain and fingerprint: one backing');
  assert.notEqual(ba, bc, 'another domain never shares');
  assert.deepEqual(await reg.readShared(ib, bb, 0, content.length), content);
  assert.equal(b.bytesRead, 0, 'the second holder never read its own copy');
  const stats = reg.stats();
  assert.equal(stats.tenant!.hits, 1);
  assert.equal(stats.tenant!.misses, 1);
  assert.equal(stats.tenant!.sharedBytes, content.length);
  assert.equal(stats.c!.backings, 1);
  reg.close();
});

test('a forged claim: no sharing across domains; with --share-verify the forged file is not joined', async () => {
  const real = bytes(8192, 2);
  const forged = bytes(8192, 3);
  const mk = () => ({
    a: new MemoryReader([{ name: 'f', content: real, fingerprint: claim(real) }]),
    b: new MemoryReader([{ name: 'f', content: forged, fingerprint: claim(real) }]),
  });
  {
    const { a, b } = mk();
    const reg = new ShareRegistry(options());
    const ia = reg.registerImage({ name: 'a', paths: ['/dev/null'], reader: a, fingerprint: digestSource });
    const ib = reg.registerImage({ name: 'b', paths: ['/dev/null'], reader: b, fingerprint: digestSource });
    const ba = reg.backingFor(ia, a.nidOf('f'))!;
    const bb = reg.backingFor(ib, b.nidOf('f'))!;
    assert.notEqual(ba, bb);
    assert.deepEqual(await reg.readShared(ib, bb, 0, 8192), forged, 'b reads its own bytes');
    reg.close();
  }
  {
    const { a, b } = mk();
    const reg = new ShareRegistry(options({ verify: true }));
    const ia = reg.registerImage({ name: 'a', domain: 'd', paths: ['/dev/null'], reader: a, fingerprint: digestSource });
    const ib = reg.registerImage({ name: 'b', domain: 'd', paths: ['/dev/null'], reader: b, fingerprint: digestSource });
    assert.ok(reg.backingFor(ia, a.nidOf('f')));
    assert.equal(reg.backingFor(ib, b.nidOf('f')), undefined, 'the forged file does not join');
    assert.equal(reg.stats().d!.verifyRejected, 1);
    reg.close();
  }
  {
    // A forger registered first must not poison the backing for the honest image either.
    const { a, b } = mk();
    const reg = new ShareRegistry(options({ acrossDomains: true }));
    const ib = reg.registerImage({ name: 'b', paths: ['/dev/null'], reader: b, fingerprint: digestSource });
    const ia = reg.registerImage({ name: 'a', paths: ['/dev/null'], reader: a, fingerprint: digestSource });
    assert.equal(reg.backingFor(ib, b.nidOf('f')), undefined);
    const ba = reg.backingFor(ia, a.nidOf('f'))!;
    assert.deepEqual(await reg.readShared(ia, ba, 0, 8192), real);
    reg.close();
  }
});

test('image-range backings map the image file; a dirty last page comes from a zero-padded copy', async () => {
  const dir = scratch('range');
  const img = path.join(dir, 'image.bin');
  const clean = bytes(PAGE_SIZE + 100, 4);
  const dirty = bytes(PAGE_SIZE + 200, 5);
  const file = Buffer.alloc(PAGE_SIZE * 6, 0);
  clean.copy(file, PAGE_SIZE);
  dirty.copy(file, PAGE_SIZE * 3);
  file.fill(0xee, PAGE_SIZE * 3 + dirty.length, PAGE_SIZE * 5); // other data right after EOF
  fs.writeFileSync(img, file);
  const r = new MemoryReader([
    { name: 'clean', content: clean, fingerprint: claim(clean), plain: { device: 0, physical: PAGE_SIZE } },
    { name: 'dirty', content: dirty, fingerprint: claim(dirty), plain: { device: 0, physical: PAGE_SIZE * 3 } },
  ]);
  const reg = new ShareRegistry(options());
  const im = reg.registerImage({ name: 'i', paths: [img], reader: r, fingerprint: digestSource });
  const bc = reg.backingFor(im, r.nidOf('clean'))!;
  const bd = reg.backingFor(im, r.nidOf('dirty'))!;
  assert.equal(bc.kind, 'image-range');
  assert.equal(bd.kind, 'image-range');
  assert.deepEqual(await bd.read(0, 1 << 20), dirty);
  const pc = await bc.mapPieces(0, 2 << 20);
  assert.deepEqual(pc.map((p) => [p.fdOffset, p.length]), [[PAGE_SIZE, 2 * PAGE_SIZE]], 'clean tail maps in place');
  const pd = await bd.mapPieces(0, 2 << 20);
  assert.equal(pd.length, 2);
  assert.deepEqual([pd[0]!.fdOffset, pd[0]!.length], [PAGE_SIZE * 3, PAGE_SIZE]);
  const tail = Buffer.alloc(PAGE_SIZE);
  fs.readSync(pd[1]!.fd, tail, 0, PAGE_SIZE, 0);
  assert.deepEqual(tail.subarray(0, 200), dirty.subarray(PAGE_SIZE));
  assert.ok(tail.subarray(200).every((x) => x === 0), 'zeros past EOF, not the neighbour');
  await assert.rejects(bd.mapPieces(1, PAGE_SIZE));
  reg.close();
});

test('inline tails: a page-aligned body plus a tail elsewhere maps the body in place and only the last page from a copy; small inline files and windowless reads make no copies', async () => {
  const dir = scratch('inline');
  const img = path.join(dir, 'image.bin');
  const tailed = bytes(PAGE_SIZE * 2 + 300, 11);
  const small = bytes(700, 12);
  const packed = bytes(PAGE_SIZE + 5, 13);
  const file = Buffer.alloc(PAGE_SIZE * 8, 0xee); // everything around is somebody else's data
  tailed.copy(file, PAGE_SIZE, 0, PAGE_SIZE * 2);
  tailed.copy(file, PAGE_SIZE * 5 + 123, PAGE_SIZE * 2);
  small.copy(file, PAGE_SIZE * 6 + 40);
  fs.writeFileSync(img, file);
  const r = new MemoryReader([
    { name: 'tailed', content: tailed, fingerprint: claim(tailed), extents: [
      { device: 0, physical: PAGE_SIZE, logical: 0, length: PAGE_SIZE * 2 },
      { device: 0, physical: PAGE_SIZE * 5 + 123, logical: PAGE_SIZE * 2, length: 300 },
    ] },
    { name: 'small', content: small, fingerprint: claim(small), extents: [{ device: 0, physical: PAGE_SIZE * 6 + 40, logical: 0, length: 700 }] },
    { name: 'packed', content: packed, fingerprint: claim(packed) }, // compressed: no plain extents
  ]);
  const reg = new ShareRegistry(options());
  const im = reg.registerImage({ name: 'i', paths: [img], reader: r, fingerprint: digestSource });
  const bt = reg.backingFor(im, r.nidOf('tailed'))!;
  assert.equal(bt.kind, 'image-range', 'aligned body + inline tail is an in-place range');
  assert.deepEqual(await reg.readShared(im, bt, 0, 1 << 20), tailed);
  assert.deepEqual(await reg.readShared(im, bt, PAGE_SIZE * 2 - 10, 100), tailed.subarray(PAGE_SIZE * 2 - 10, PAGE_SIZE * 2 + 90));
  assert.equal(bt.residentBytes(), 0, 'READs make no tail copy');
  const pt = await bt.mapPieces(0, 4 << 20);
  assert.deepEqual(pt.map((p) => [p.fdOffset, p.length]), [[PAGE_SIZE, PAGE_SIZE * 2], [0, PAGE_SIZE]]);
  const tail = Buffer.alloc(PAGE_SIZE);
  fs.readSync(pt[1]!.fd, tail, 0, PAGE_SIZE, 0);
  assert.deepEqual(tail.subarray(0, 300), tailed.subarray(PAGE_SIZE * 2));
  assert.ok(tail.subarray(300).every((x) => x === 0), 'zeros past EOF in the tail page');
  assert.equal(bt.residentBytes(), PAGE_SIZE, 'the tail page exists once a mapping needs it');
  // Wholly inline: a blob that READs never fill (the holder's image serves them); DAX fills it.
  const bs = reg.backingFor(im, r.nidOf('small'))!;
  assert.equal(bs.kind, 'blob');
  assert.deepEqual(await reg.readShared(im, bs, 0, 4096), small);
  assert.equal(bs.residentBytes(), 0, 'no copy of an uncompressed file for READs');
  const ps = await bs.mapPieces(0, PAGE_SIZE);
  assert.equal(ps.length, 1);
  assert.equal(bs.residentBytes(), small.length, 'DAX materialises it');
  const page = Buffer.alloc(PAGE_SIZE);
  fs.readSync(ps[0]!.fd, page, 0, PAGE_SIZE, 0);
  assert.deepEqual(page.subarray(0, 700), small);
  assert.ok(page.subarray(700).every((x) => x === 0));
  // Compressed: a reader without a window (fill=false) gets the bytes, nothing is filled; a
  // reader with one fills the blob.
  const bp = reg.backingFor(im, r.nidOf('packed'))!;
  assert.equal(bp.kind, 'blob');
  assert.deepEqual(await reg.readShared(im, bp, 3, 50, false), packed.subarray(3, 53));
  assert.equal(bp.residentBytes(), 0, 'windowless reads leave the blob empty');
  assert.deepEqual(await reg.readShared(im, bp, 3, 50), packed.subarray(3, 53));
  assert.equal(bp.residentBytes(), packed.length);
  // A range not eligible in place (tail longer than a page after the aligned run) is a blob.
  const r2 = new MemoryReader([{ name: 'gappy', content: tailed, fingerprint: claim(tailed), extents: [
    { device: 0, physical: PAGE_SIZE, logical: 0, length: PAGE_SIZE },
    { device: 0, physical: PAGE_SIZE * 5, logical: PAGE_SIZE, length: PAGE_SIZE + 300 },
  ] }]);
  const reg2 = new ShareRegistry(options());
  const im2 = reg2.registerImage({ name: 'j', paths: [img], reader: r2, fingerprint: digestSource });
  assert.equal(reg2.backingFor(im2, r2.nidOf('gappy'))!.kind, 'blob');
  reg2.close();
  assert.equal(reg.stats().i!.sharedReads, 5);
  reg.close();
});

test('blobs fill lazily per granule, evict LRU beyond the budget, and drop on request', async () => {
  const big = bytes(BLOB_GRANULE * 3 + 17, 6);
  const other = bytes(BLOB_GRANULE, 7);
  const r = new MemoryReader([
    { name: 'big', content: big, fingerprint: claim(big) },
    { name: 'other', content: other, fingerprint: claim(other) },
  ]);
  const reg = new ShareRegistry(options({ budgetBytes: BLOB_GRANULE * 3 }));
  const im = reg.registerImage({ name: 'i', paths: ['/dev/null'], reader: r, fingerprint: digestSource });
  const b = reg.backingFor(im, r.nidOf('big'))!;
  assert.equal(b.kind, 'blob');
  assert.equal(b.residentBytes(), 0);
  const slice = await reg.readShared(im, b, BLOB_GRANULE + 5, 100);
  assert.deepEqual(slice, big.subarray(BLOB_GRANULE + 5, BLOB_GRANULE + 105));
  assert.equal(b.residentBytes(), BLOB_GRANULE, 'only the touched granule was filled');
  // Concurrent readers of one granule fill it once.
  const before = r.bytesRead;
  await Promise.all([reg.readShared(im, b, 0, 10), reg.readShared(im, b, 20, 10), reg.readShared(im, b, 30, 10)]);
  assert.equal(r.bytesRead - before, BLOB_GRANULE);
  assert.deepEqual(await reg.readShared(im, b, 0, big.length), big);
  // Filling 'other' exceeds the budget: the least recently used unpinned blob goes.
  const o = reg.backingFor(im, r.nidOf('other'))!;
  await reg.readShared(im, o, 0, 10);
  assert.ok(b.closed, 'LRU blob evicted');
  assert.equal(reg.stats().i!.evictions, 1);
  // Evicted content comes back on demand.
  const b2 = reg.backingFor(im, r.nidOf('big'))!;
  assert.notEqual(b2, b);
  assert.deepEqual(await reg.readShared(im, b2, 7, 9), big.subarray(7, 16));
  // Pinned blobs survive drop(); unpinned ones go.
  b2.mappings++;
  const dropped = reg.drop();
  assert.equal(dropped.blobs, 1);
  assert.ok(!b2.closed && o.closed);
  b2.mappings--;
  reg.close();
});

test('removing the first holder re-points the backing to another image', async () => {
  const content = bytes(5000, 8);
  const a = new MemoryReader([{ name: 'f', content, fingerprint: claim(content) }]);
  const b = new MemoryReader([{ name: 'f', content, fingerprint: claim(content) }]);
  const reg = new ShareRegistry(options());
  const ia = reg.registerImage({ name: 'a', domain: 'd', paths: ['/dev/null'], reader: a, fingerprint: digestSource });
  const ib = reg.registerImage({ name: 'b', domain: 'd', paths: ['/dev/null'], reader: b, fingerprint: digestSource });
  const backing = reg.backingFor(ia, a.nidOf('f'))!;
  assert.equal(reg.backingFor(ib, b.nidOf('f')), backing);
  reg.removeImage(ia);
  assert.equal(backing.sourceImageId, ib.id);
  assert.deepEqual(await reg.readShared(ib, backing, 0, 5000), content);
  assert.equal(a.bytesRead, 0, 'nothing read from the removed image');
  assert.equal(b.bytesRead, 5000);
  reg.close();
});

test('computed fingerprints persist in a sidecar index keyed by image identity', () => {
  const dir = scratch('index');
  const img = path.join(dir, 'img');
  fs.writeFileSync(img, bytes(8192, 9));
  const content = bytes(3000, 10);
  const r1 = new MemoryReader([{ name: 'f', content }]);
  const id = imageIdentity(img);
  assert.match(id, /^[0-9a-f]{32}$/);
  const f1 = new FingerprintResolver(r1, { kind: 'compute', indexDir: dir }, id);
  const d1 = f1.get(r1.nidOf('f'))!;
  assert.deepEqual(d1, createHash('sha256').update(content).digest());
  f1.flush();
  const r2 = new MemoryReader([{ name: 'f', content }]);
  const f2 = new FingerprintResolver(r2, { kind: 'compute', indexDir: dir }, id);
  assert.deepEqual(f2.get(r2.nidOf('f')), d1);
  assert.equal(r2.bytesRead, 0, 'restart does not re-hash');
});

test('DAX window bookkeeping: setup, remap, partial remove, reset, bounds', async () => {
  const calls: string[] = [];
  const channel: MapChannel = {
    size: 16 * PAGE_SIZE,
    async map(off: number, pieces: MapPiece[]) { calls.push(`map ${off} ${pieces.map((p) => p.length).join('+')}`); },
    async unmap(off: number, len: number) { calls.push(`unmap ${off} ${len}`); },
  };
  const content = bytes(3 * PAGE_SIZE, 11);
  const r = new MemoryReader([{ name: 'f', content, fingerprint: claim(content) }]);
  const reg = new ShareRegistry(options());
  const im = reg.registerImage({ name: 'i', paths: ['/dev/null'], reader: r, fingerprint: digestSource });
  const b = reg.backingFor(im, r.nidOf('f'))!;
  const unpinned: unknown[] = [];
  const win = new DaxWindow(channel, { onUnpinned: (x) => unpinned.push(x) });
  await win.setup(b, 0, 2 << 20, 0).catch(() => {}); // exceeds the window: refused
  assert.equal(win.mappedRanges, 0);
  await win.setup(b, 0, 4 * PAGE_SIZE, 0);
  assert.equal(b.mappings, 1);
  assert.deepEqual(calls, [`map 0 ${3 * PAGE_SIZE}`], 'clipped at the rounded-up EOF');
  await win.setup(b, 0, PAGE_SIZE, 8 * PAGE_SIZE);
  assert.equal(b.mappings, 2);
  await win.remove(PAGE_SIZE, PAGE_SIZE); // splits the first range in two
  assert.equal(win.mappedRanges, 3);
  assert.equal(b.mappings, 3);
  await assert.rejects(win.setup(b, 1, PAGE_SIZE, 0), /page-aligned/);
  await assert.rejects(win.setup(b, 4 * PAGE_SIZE, PAGE_SIZE, 0), /past EOF/);
  await assert.rejects(win.remove(15 * PAGE_SIZE, 2 * PAGE_SIZE), /outside/);
  win.reset();
  assert.equal(b.mappings, 0);
  assert.equal(win.mappedRanges, 0);
  assert.equal(unpinned.length, 1);
  reg.close();
});

test('SharedTree: shared files read their backing and are marked for DAX; O_DIRECT reads the image; mappings go to the request\'s window', async () => {
  const shared = bytes(3 * PAGE_SIZE + 100, 12);
  const own = bytes(5000, 13);
  const r = new MemoryReader([{ name: 'shared', content: shared, fingerprint: claim(shared) }, { name: 'own', content: own }]);
  const service = new ShareService([{ name: 'img', paths: ['/dev/null'], reader: r }], {
    share: options(), fingerprint: digestSource, dax: { ...DEFAULT_DAX_OPTIONS, windowSize: 64 * PAGE_SIZE },
  });
  const tree = service.guestTree('vm0');
  const calls: string[] = [];
  const window = tree.openWindow({
    size: 64 * PAGE_SIZE,
    async map(off: number, pieces: MapPiece[]) { calls.push(`map ${off} ${pieces.reduce((n, p) => n + p.length, 0)}`); },
    async unmap(off: number, len: number) { calls.push(`unmap ${off} ${len}`); },
  });
  const server = new FuseServer(tree);
  const call = async (opcode: number, nodeid: number, ...args: Buffer[]) => parseReply(await serveOnce(server, request({ opcode, nodeid }, ...args), { window }));
  assert.equal((await call(Opcode.INIT, 0, initIn())).error, 0);
  const sf = parseEntry((await call(Opcode.LOOKUP, 1, cstr('shared'))).body);
  const of = parseEntry((await call(Opcode.LOOKUP, 1, cstr('own'))).body);
  assert.equal(sf.attr.flags, FUSE_ATTR_DAX, 'a file with a backing is marked for DAX');
  assert.equal(of.attr.flags, 0, 'an unshared file is not');
  const stats = () => service.registry.stats().img!;
  const fh = Number((await call(Opcode.OPEN, sf.nodeid, u32s(0, 0))).body.readBigUInt64LE(0));
  assert.ok((await call(Opcode.READ, sf.nodeid, readIn(fh, 100, 5000))).body.equals(shared.subarray(100, 5100)));
  assert.equal(stats().sharedReads, 1);
  const dfh = Number((await call(Opcode.OPEN, sf.nodeid, u32s(0o40000, 0))).body.readBigUInt64LE(0));
  const bytesRead = r.bytesRead;
  assert.ok((await call(Opcode.READ, sf.nodeid, readIn(dfh, 0, 4096))).body.equals(shared.subarray(0, 4096)));
  assert.equal(stats().perFileReads, 1, 'O_DIRECT takes the per-file path');
  assert.equal(r.bytesRead - bytesRead, 4096, 'from the image itself');
  assert.equal((await call(Opcode.SETUPMAPPING, sf.nodeid, u64s(fh, 0, 4 * PAGE_SIZE), u32s(2, 0), u64s(8 * PAGE_SIZE))).error, 0);
  assert.deepEqual(calls, [`map ${8 * PAGE_SIZE} ${4 * PAGE_SIZE}`]);
  assert.equal(window.mappedRanges, 1);
  assert.equal(service.stats().domains.img!.mappedRanges, 1);
  assert.deepEqual(service.stats().guests, [{ name: 'vm0', window: true, dialect: 'shmem', mappedRanges: 1 }]);
  assert.equal((await call(Opcode.SETUPMAPPING, 1, u64s(fh, 0, PAGE_SIZE), u32s(2, 0), u64s(0))).error, -Errno.EINVAL, 'only regular files map');
  assert.equal((await call(Opcode.SETUPMAPPING, sf.nodeid, u64s(fh, 0, PAGE_SIZE), u32s(3, 0), u64s(0))).error, -Errno.EROFS, 'no writable mappings');
  assert.equal((await call(Opcode.REMOVEMAPPING, sf.nodeid, u32s(1), u64s(8 * PAGE_SIZE, 4 * PAGE_SIZE))).error, 0);
  assert.deepEqual(calls.slice(1), [`unmap ${8 * PAGE_SIZE} ${4 * PAGE_SIZE}`]);
  // A request from a connection without a window.
  const windowless = parseReply(await serveOnce(server, request({ opcode: Opcode.SETUPMAPPING, nodeid: sf.nodeid }, u64s(fh, 0, PAGE_SIZE), u32s(2, 0), u64s(0))));
  assert.equal(windowless.error, -Errno.EOPNOTSUPP);
  tree.closeWindow(window);
  assert.equal(tree.window, null);
  assert.deepEqual(service.stats().guests, [{ name: 'vm0', window: false, dialect: null, mappedRanges: 0 }]);
  service.close();
});
