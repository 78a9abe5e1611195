// The host kernel's EROFS driver is the oracle: for every image variant Debian's mkfs.erofs 1.5
// builds from the generated tree, our reader's tree must equal the loop-mounted view exactly
// (paths, types, modes, ids, nlink, mtime_ns, sizes, link targets, rdev, xattrs, SHA-256), and the
// loop-mounted view must equal the source tree wherever the format keeps the information.
import test from 'node:test';
import assert from 'node:assert/strict';
import { buildAllImages, type BuiltImage } from './support/build-images.js';
import { manifestFromDirectory } from './support/fs-manifest.js';
import { loopMount } from './support/loop-mount.js';
import { manifestFromReader } from './support/reader-manifest.js';
import { openImage } from '../src/erofs/index.js';
import { diffManifests, type Manifest, type ManifestEntry } from './support/manifest.js';

const images: BuiltImage[] = buildAllImages();
const source: Manifest = manifestFromDirectory(images[0]!.tree.dir);

/** What the source tree should look like through an image of this variant. */
function expectedFromSource(img: BuiltImage): { expected: Manifest; ignore: (keyof ManifestEntry)[] } {
  const expected: Manifest = { ...source };
  for (const p of img.variant.exclude ?? []) delete expected[p];
  // Compact inodes carry no mtime: every inode shows the build time (checked separately).
  return { expected, ignore: img.variant.compactInodes ? ['mtime_ns'] : [] };
}

test('the generated tree has what the checks need', () => {
  const entries = Object.entries(source);
  const types = new Set(entries.map(([, e]) => e.type));
  for (const t of ['file', 'dir', 'symlink', 'chardev', 'blockdev', 'fifo', 'socket'] as const) assert.ok(types.has(t), t);
  const big = entries.filter(([p]) => p.startsWith(`${images[0]!.tree.bigDir}/`) && !p.slice(images[0]!.tree.bigDir.length + 1).includes('/'));
  assert.equal(big.length, 10_000);
  assert.ok(entries.some(([, e]) => e.type === 'file' && e.nlink > 2), 'hard links');
  assert.ok(entries.some(([, e]) => e.type === 'file' && (e.size ?? 0) > 1024 * 1024), '1 MiB+ files');
  assert.ok(entries.some(([, e]) => e.type === 'file' && e.size === 0), 'empty files');
  assert.ok(entries.some(([, e]) => (e.target?.length ?? 0) >= 4000), 'long symlinks');
  assert.ok(entries.some(([, e]) => e.xattrs && Object.keys(e.xattrs).some((n) => n.startsWith('trusted.'))), 'trusted xattrs');
  assert.ok(entries.some(([, e]) => e.xattrs && 'system.posix_acl_access' in e.xattrs), 'ACLs');
  assert.ok(entries.some(([, e]) => e.xattrs && 'system.posix_acl_default' in e.xattrs), 'default ACLs');
});

for (const img of images) {
  test(`${img.name} (mkfs.erofs ${img.variant.options.join(' ') || 'defaults'})`, async (t) => {
    const m = loopMount(img.path, { devices: img.devices });
    let kernel: Manifest;
    try {
      kernel = manifestFromDirectory(m.dir);
    } finally {
      m.unmount();
    }

    await t.test('loop-mounted kernel view equals the source tree', () => {
      const { expected, ignore } = expectedFromSource(img);
      const diff = diffManifests(expected, kernel, ignore);
      assert.deepEqual(diff, [], diff.join('\n'));
      if (img.variant.compactInodes) {
        const mtimes = new Set(Object.values(kernel).map((e) => e.mtime_ns));
        assert.equal(mtimes.size, 1, 'compact inodes: every mtime is the build time');
      }
    });

    await t.test('reader tree equals the loop-mounted kernel view', () => {
      const reader = openImage(img.path, { devices: img.devices });
      try {
        const ours = manifestFromReader(reader);
        const diff = diffManifests(kernel, ours);
        assert.deepEqual(diff, [], diff.join('\n'));
      } finally {
        reader.close();
      }
    });
  });
}
