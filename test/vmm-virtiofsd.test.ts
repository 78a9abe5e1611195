// The test VMM (test/support/test-vmm) against Debian's C virtiofsd serving the unpacked tree of
// plain.erofs: validates the front-end and FUSE client independently of our daemon.
import test, { afterEach, before, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { SHARED_IMAGES } from './support/paths.js';
import { diffManifests, loadManifest, type Manifest } from './support/manifest.js';
import {
  FuseError, ProtoFeature, connectTestVmm, startVirtiofsd, unpackImage, type Backend,
} from './support/test-vmm/index.js';

const IMAGE = path.join(SHARED_IMAGES, 'plain.erofs');
let expected: Manifest;
let tree: string;
// C virtiofsd serves one front-end connection and exits: each test starts its own.
let be: Backend | undefined;

before(() => {
  expected = loadManifest(path.join(SHARED_IMAGES, 'plain.expected.json'));
  tree = unpackImage(IMAGE);
});
beforeEach(async () => { be = await startVirtiofsd({ source: tree }); });
afterEach(async () => { await be?.stop(); be = undefined; });

test('virtiofsd: negotiation, FUSE_INIT and a READDIRPLUS walk equal to the kernel view', async () => {
  const t = await connectTestVmm(be!.socketPath);
  try {
    assert.ok(t.vmm.has(ProtoFeature.REPLY_ACK), 'REPLY_ACK negotiated');
    assert.ok(t.vmm.has(ProtoFeature.MQ), 'MQ negotiated');
    assert.ok(t.vmm.has(ProtoFeature.BACKEND_REQ), 'BACKEND_REQ negotiated');
    assert.ok(t.vmm.has(ProtoFeature.CONFIGURE_MEM_SLOTS), 'CONFIGURE_MEM_SLOTS negotiated');
    assert.ok(t.vmm.maxMemSlots >= 2);
    assert.equal(t.client.info!.major, 7);
    const m = await t.client.walk({ readdirplus: true });
    assert.deepEqual(diffManifests(expected, m), []);
    await t.client.settle();
    for (const q of t.vmm.queues) assert.deepEqual(q.anomalies, []);
  } finally {
    t.close();
  }
});

test('virtiofsd: READDIR+LOOKUP walk over ADD_MEM_REG memory, indirect and scattered buffers', async () => {
  const t = await connectTestVmm(be!.socketPath, {
    memTableMode: 'add', memory: { size: 48 << 20, regions: 3 }, eventIdx: false,
    client: { indirect: true, segmentSize: 4096 },
  });
  try {
    const m = await t.client.walk({ readdirplus: false, readChunk: 64 * 1024, concurrency: 8 });
    assert.deepEqual(diffManifests(expected, m), []);
  } finally {
    t.close();
  }
});

test('virtiofsd: single operations and their errors', async () => {
  const t = await connectTestVmm(be!.socketPath);
  const c = t.client;
  try {
    const e = await c.resolve('big/rand-2m');
    assert.equal(Number(e.attr.size), expected['big/rand-2m']!.size);
    const { fh } = await c.open(e.nodeid);
    const part = await c.read(fh, 100_000, 5000);
    const whole = await c.readFile(e.nodeid);
    assert.equal(crypto.createHash('sha256').update(whole).digest('hex'), expected['big/rand-2m']!.sha256);
    assert.deepEqual(part, whole.subarray(100_000, 105_000));
    const tail = await c.read(fh, whole.length - 3, 4096);
    assert.equal(tail.length, 3, 'short read at EOF');
    assert.equal((await c.read(fh, whole.length + 10, 4096)).length, 0, 'read past EOF is empty');
    assert.equal(await c.lseek(fh, 0, 3 /* SEEK_DATA */), 0n);
    assert.equal(await c.lseek(fh, 0, 4 /* SEEK_HOLE */), BigInt(whole.length));
    await c.release(fh);

    const link = await c.resolve('link-rel');
    assert.equal((await c.readlink(link.nodeid)).toString(), 'sizes/text-4096');
    const dir = await c.resolve('emptydir');
    const names = (await c.listxattr(dir.nodeid)).sort();
    assert.deepEqual(names, Object.keys(expected['emptydir']!.xattrs!).sort());
    assert.equal((await c.getxattr(dir.nodeid, 'user.long.prefix.name.one')).toString(), 'first');
    await assert.rejects(c.getxattr(dir.nodeid, 'user.nope'), (err) => err instanceof FuseError && err.code === 'ENODATA');
    await assert.rejects(c.lookup(1n, 'does-not-exist'), (err) => err instanceof FuseError && err.code === 'ENOENT');
    const st = await c.statfs();
    assert.ok(st.bsize > 0 && st.namelen >= 255);
    for (const n of [...e.lookups, ...link.lookups, ...dir.lookups]) c.forget(n, 1);
    await c.settle();
    // still serving after the forgets
    assert.equal((await c.getattr(1n)).attr.nlink, expected['']!.nlink);
  } finally {
    t.close();
  }
});

test('virtiofsd: a guest reset (rings disabled, GET_VRING_BASE, rings set up again) and serving resumes', async () => {
  const t = await connectTestVmm(be!.socketPath);
  try {
    const e = await t.client.resolve('big/text-3m');
    const before = await t.client.readFile(e.nodeid);
    // Same memory, as QEMU does on a guest reboot (libvhost-user panics on a new table while
    // rings still hold addresses in the old one).
    const bases = await t.vmm.reset({ newMemory: false });
    assert.equal(bases.length, 2);
    assert.ok(bases[1]! > 0, 'GET_VRING_BASE reports where the request queue stopped');
    await t.client.init();
    const e2 = await t.client.resolve('big/text-3m');
    assert.deepEqual(await t.client.readFile(e2.nodeid, 1 << 20), before);
  } finally {
    t.close();
  }
});
