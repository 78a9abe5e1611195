// A real guest walks several of ../shared/images (built by a recent mkfs.erofs: LZMA, DEFLATE,
// zstd fragments, dedupe, 512-byte blocks, 48-bit layout, metabox, long xattr prefixes, …)
// exported together by erofs-vfsd as one multi-image tree, in ONE boot. Every file's stat,
// symlink target, xattrs and SHA-256 seen by the guest kernel through virtio-fs must equal what
// the host kernel's own EROFS driver shows for that image (IMAGE.expected.json).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { SHARED_IMAGES } from './support/paths.js';
import { diffManifests, loadManifest, type Manifest } from './support/manifest.js';
import { QEMU_CACHE, bootGuest, ensureGuest, prefixManifest, startErofsVfsd, type Backend } from './support/qemu.js';

/**
 * The decompressors and layouts mkfs.erofs 1.5 cannot produce (the generated-tree guest test
 * covers plain, LZ4HC and chunked images); the rest are covered by the host-side reader tests.
 * Eight images (42 MB of file data) took ~4 min of TCG on a busy 2-core host: four keep this
 * boot around a minute on an idle one.
 */
const IMAGES = ['lzma', 'zstd-all-fragments', 'lz4-fragments-dedupe', '48bit'];

let backend: Backend | undefined;
after(async () => { await backend?.stop(); });

test('guest walk over a multi-image export of shared images equals the host kernel view of each image', async () => {
  fs.mkdirSync(QEMU_CACHE, { recursive: true });
  ensureGuest();
  const images = IMAGES.map((name) => ({ name, path: path.join(SHARED_IMAGES, `${name}.erofs`) }));
  for (const im of images) assert.ok(fs.existsSync(im.path), `${im.path} is missing`);
  const want: Manifest = {};
  for (const name of IMAGES) Object.assign(want, prefixManifest(loadManifest(path.join(SHARED_IMAGES, `${name}.expected.json`)), name));

  const sock = path.join(QEMU_CACHE, 'erofs-vfsd-shared.sock');
  backend = await startErofsVfsd(images, sock);
  // GT_XATTR_ALL: read every entry's xattrs (no sampling; these trees have no 10,000-entry dir)
  const run = await bootGuest(sock, { label: 'erofs-vfsd-shared', tests: ['walk'], extraArgs: ['GT_XATTR_ALL=1'] });
  await backend.stop();
  const log = backend.log();
  backend = undefined;
  const tail = run.console.split('\n').slice(-20).join('\n');
  assert.ok(run.done, `the guest did not finish\n${tail}\n--- daemon ---\n${log.slice(-3000)}`);
  const walk = run.byTest.get('walk')?.[0];
  assert.ok(walk, `no walk result\n${tail}`);
  console.log(`# shared-images walk: ${String(walk.entries)} entries, ${String(walk.bytes)} bytes in ${String(walk.ms)} ms; QEMU wall ${run.wallMs} ms`);
  assert.equal(walk.ok, true, `walk reported errors: ${JSON.stringify(walk)}\n${tail}`);
  assert.ok(run.manifest, 'the walk manifest did not come back on the output disk');
  const got = { ...run.manifest };
  assert.equal(got['']?.type, 'dir');
  assert.equal(got['']?.nlink, 2 + IMAGES.length, 'the synthetic root links every image directory');
  delete got[''];
  const diff = diffManifests(want, got, [], 40).map((l) => (l.length > 400 ? `${l.slice(0, 400)}…` : l));
  assert.deepEqual(diff, [], 'guest view through erofs-vfsd differs from the host kernel view');
  assert.equal(walk.entries, Object.keys(want).length + 1);
});
