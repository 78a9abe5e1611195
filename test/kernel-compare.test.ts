// The host kernel's EROFS driver is the oracle: for every image variant Debian's mkfs.erofs 1.5
// builds from the generated tree, our reader's tree must equal the loop-mounted view exactly
// (paths, types, modes, ids, nlink, mtime_ns, sizes, link targets, rdev, xattrs, SHA-256), and the
// loop-mounted view must equal the source tree wherever the format keeps the information.
import test from 'node:test';
import assert from 'node:assert/strict';
import { buildAllImages, type BuiltImage } from './support/build-images.js';
import fs from 'node:fs';
import path from 'node:path';
import { kernelSeeks, manifestFromDirectory } from './support/fs-manifest.js';
import { loopMount } from './support/loop-mount.js';
import { manifestFromReader } from './support/reader-manifest.js';
import { openImage, ErofsError, type ErofsReader } from '../src/erofs/index.js';
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

/** Files whose SEEK_DATA/SEEK_HOLE answers are compared with the kernel's. */
const SEEK_FILES = ['large/sparse', 'large/sparse-all-hole', 'large/zeros-1m', 'large/mixed-3m', 'sizes/text-100',
  'sizes/zeros-0', 'sizes/random-4097', 'sizes/zeros-65536', 'hard/orig'];

function seekQueries(): [string, number, 'data' | 'hole'][] {
  const q: [string, number, 'data' | 'hole'][] = [];
  for (const f of SEEK_FILES) {
    const size = source[f]!.size!;
    const offs = new Set([0, 1, 4095, 4096, 65_536, 1 << 20, (1 << 20) + 4096, 3 * (1 << 20) + 200, size - 1, size, size + 1]);
    for (const o of [...offs].filter((o) => o >= 0 && o <= size + 1).sort((a, b) => a - b)) {
      q.push([f, o, 'data'], [f, o, 'hole']);
    }
  }
  return q;
}

function resolve(reader: ErofsReader, rel: string): number {
  let nid = reader.rootNid;
  for (const part of rel.split('/')) {
    const next = reader.lookup(nid, part);
    assert.ok(next !== undefined, `lookup '${rel}'`);
    nid = next;
  }
  return nid;
}

for (const img of images) {
  test(`${img.name} (mkfs.erofs ${img.variant.options.join(' ') || 'defaults'})`, async (t) => {
    const m = loopMount(img.path, { devices: img.devices });
    let kernel: Manifest;
    let kernelSeek: (number | string)[];
    let kernelBigDirOrder: string[];
    const queries = seekQueries();
    try {
      kernel = manifestFromDirectory(m.dir);
      kernelSeek = kernelSeeks(queries.map(([f, o, w]) => [path.join(m.dir, f), o, w]));
      kernelBigDirOrder = fs.readdirSync(path.join(m.dir, img.tree.bigDir), { encoding: 'buffer' }).map((b) => b.toString('utf8'));
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

    await t.test('SEEK_DATA / SEEK_HOLE answers equal the kernel lseek', () => {
      const reader = openImage(img.path, { devices: img.devices });
      try {
        const ours = queries.map(([f, o, w]) => {
          try {
            return reader.seek(resolve(reader, f), o, w);
          } catch (e) {
            if (e instanceof ErofsError) return e.code;
            throw e;
          }
        });
        const diff = queries.map((q, i) => (ours[i] === kernelSeek[i] ? '' : `${q[0]} seek(${q[1]}, ${q[2]}): kernel ${kernelSeek[i]}, reader ${ours[i]}`)).filter(Boolean);
        assert.deepEqual(diff, []);
      } finally {
        reader.close();
      }
    });

    await t.test('10,000-entry directory: kernel order, and every readdir cookie resumes right after its entry', () => {
      const reader = openImage(img.path, { devices: img.devices });
      try {
        const nid = resolve(reader, img.tree.bigDir);
        const all: { name: string; next: number }[] = [];
        for (let off = 0; ;) {
          const batch = reader.readdir(nid, off, 333);
          if (batch.length === 0) break;
          for (const d of batch) all.push({ name: d.name.toString('utf8'), next: d.nextOffset });
          off = batch[batch.length - 1]!.nextOffset;
        }
        const names = all.map((e) => e.name).filter((n) => n !== '.' && n !== '..');
        assert.deepEqual(names, kernelBigDirOrder.filter((n) => n !== '.' && n !== '..'), 'same order as getdents on the loop mount');
        assert.equal(names.length, img.tree.bigDirEntries);
        for (let k = 0; k < all.length - 1; k += 97) {
          const got = reader.readdir(nid, all[k]!.next, 5).map((d) => d.name.toString('utf8'));
          assert.deepEqual(got, all.slice(k + 1, k + 6).map((e) => e.name), `continuation after entry ${k}`);
        }
        assert.deepEqual(reader.readdir(nid, all[all.length - 1]!.next, 5), [], 'the last cookie ends the listing');
      } finally {
        reader.close();
      }
    });
  });
}
