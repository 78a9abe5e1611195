// `erofs-vfsd serve` with several images (named subdirectories of a synthetic root), one of them
// multi-device (`--image NAME=PATH,device=BLOB`), walked through the test VMM on 2 request
// queues: each subtree equals the kernel's view of its image. Also the --image spec parser and
// the --cache presets.
import test from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { SHARED_IMAGES } from './support/paths.js';
import { diffManifests, loadManifest, type Manifest } from './support/manifest.js';
import { FuseClient, VhostUserFrontend, connectTestVmm, startDaemon } from './support/test-vmm/index.js';
import { cacheOptions, parseImageSpec } from '../src/cli/serve.js';

test('--image spec: [NAME=]PATH[,domain=D][,device=BLOB]…', () => {
  assert.deepEqual(parseImageSpec('/a/b.erofs'), { name: undefined, path: '/a/b.erofs', domain: undefined, devices: [] });
  assert.deepEqual(parseImageSpec('web=/x/y=z.erofs,domain=t1'), { name: 'web', path: '/x/y=z.erofs', domain: 't1', devices: [] });
  assert.deepEqual(parseImageSpec('c=/p/c.erofs,device=/b1,device=/b2'), { name: 'c', path: '/p/c.erofs', domain: undefined, devices: ['/b1', '/b2'] });
  assert.deepEqual(parseImageSpec('/p/x,y.erofs').path, '/p/x,y.erofs', 'an unknown suffix stays in the path');
  assert.equal(parseImageSpec('/abs=path').name, undefined, 'a path with = is not a name');
  assert.throws(() => parseImageSpec('name='), /no path/);
});

test('--cache presets and explicit timeouts', () => {
  assert.deepEqual(cacheOptions({ cache: 'auto' }), {});
  assert.equal(cacheOptions({ cache: 'never' }).entryTimeout, 0);
  assert.equal(cacheOptions({ cache: 'never' }).keepCache, false);
  assert.equal(cacheOptions({ cache: 'always' }).keepCache, true);
  assert.equal(cacheOptions({ cache: 'never', attrTimeout: 5 }).attrTimeout, 5);
  assert.throws(() => cacheOptions({ cache: 'bogus' }), /--cache/);
  assert.throws(() => cacheOptions({ entryTimeout: -1 }), /entry-timeout/);
});

/** The part of `m` below `prefix/`, re-keyed like a manifest of that image alone. */
function subtree(m: Manifest, prefix: string): Manifest {
  const out: Manifest = {};
  for (const [k, v] of Object.entries(m)) {
    if (k === prefix) out[''] = v;
    else if (k.startsWith(prefix + '/')) out[k.slice(prefix.length + 1)] = v;
  }
  return out;
}

test('two images, one multi-device, served as named subdirectories on 2 request queues', async () => {
  const plain = path.join(SHARED_IMAGES, 'plain.erofs');
  const chunked = path.join(SHARED_IMAGES, 'chunked-blobdev.erofs');
  const blob = path.join(SHARED_IMAGES, 'chunked-blob.blob');
  const be = await startDaemon({
    images: [`one=${plain}`, `two=${chunked},device=${blob}`],
    extraArgs: ['--num-request-queues', '2'],
    logLevel: 'info',
  });
  try {
    const t = await connectTestVmm(be.socketPath);
    try {
      const m = await t.client.walk({ readdirplus: true });
      assert.deepEqual(Object.keys(m).filter((k) => !k.includes('/') && k !== '').sort(), ['one', 'two']);
      assert.deepEqual(diffManifests(loadManifest(path.join(SHARED_IMAGES, 'plain.expected.json')), subtree(m, 'one')), []);
      assert.deepEqual(diffManifests(loadManifest(path.join(SHARED_IMAGES, 'chunked-blobdev.expected.json')), subtree(m, 'two')), []);
    } finally {
      t.close();
    }
  } finally {
    const r = await be.stop();
    assert.ok(r.code === 0 || r.signal === 'SIGTERM', `daemon exit ${JSON.stringify(r)}\n${be.stderr().slice(-2000)}`);
  }
});

test('--reconnect: a front-end reconnecting under a live guest session is served without a new INIT', async () => {
  const be = await startDaemon({ images: [path.join(SHARED_IMAGES, 'plain.erofs')], extraArgs: ['--reconnect'], logLevel: 'info' });
  try {
    const t1 = await connectTestVmm(be.socketPath);
    const before = await t1.client.getattr(1n);
    t1.close();
    // Same guest, new connection: no FUSE_INIT this time.
    const vmm = await VhostUserFrontend.connect(be.socketPath, {});
    try {
      const client = new FuseClient(vmm);
      const after = await client.getattr(1n);
      assert.equal(after.attr.ino, before.attr.ino);
      assert.equal(after.attr.mode, before.attr.mode);
    } finally {
      vmm.close();
    }
  } finally {
    const r = await be.stop();
    assert.ok(r.code === 0 || r.signal === 'SIGTERM', `daemon exit ${JSON.stringify(r)}\n${be.stderr().slice(-2000)}`);
  }
});
