// The EROFS reader against ../shared/images: every image's tree must equal the kernel's view
// (*.expected.json) exactly, digest images must carry correct fingerprints, and the reader's
// directory, seek, extent and superblock behaviour is checked on those images.
import test from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { openImage, ErofsError } from '../src/erofs/index.js';
import type { ErofsReader, OpenOptions } from '../src/erofs/index.js';
import { crc32c } from '../src/erofs/superblock.js';
import { REPO_ROOT, SHARED_IMAGES, SCRATCH_DIR } from './support/paths.js';
import { diffManifests, loadManifest } from './support/manifest.js';
import { manifestFromReader } from './support/reader-manifest.js';

const COMPRESSED_IMAGES = new Set([
  'compact-inodes', 'extended-inodes', 'blocksize-2k', 'lz4', 'lz4hc-bigpcluster', 'lz4-legacy-index',
  'lzma', 'deflate', 'zstd', 'lz4-ztailpacking', 'lz4-fragments-dedupe', 'zstd-all-fragments', '48bit',
  'metabox', 'xattr-filter', 'digest-lz4-a', 'digest-lz4-b', 'digest-custom-a',
]);

function imageNames(): string[] {
  return fs.readdirSync(SHARED_IMAGES).filter((f) => f.endsWith('.erofs')).map((f) => f.slice(0, -'.erofs'.length)).sort();
}

function optionsFor(name: string): OpenOptions {
  return name === 'chunked-blobdev' ? { devices: [path.join(SHARED_IMAGES, 'chunked-blob.blob')] } : {};
}

function open(name: string): ErofsReader {
  return openImage(path.join(SHARED_IMAGES, `${name}.erofs`), optionsFor(name));
}

const FIXTURES = path.join(REPO_ROOT, 'test/fixtures/erofs-1.9');

function checkImage(name: string, dir = SHARED_IMAGES, opts: OpenOptions = {}): void {
  const reader = dir === SHARED_IMAGES ? open(name) : openImage(path.join(dir, `${name}.erofs`), opts);
  try {
    const fingerprints: { path: string; nid: number; size: number; sha256: string }[] = [];
    const actual = manifestFromReader(reader, (p, nid, e) => {
      if (e.type === 'file') fingerprints.push({ path: p, nid, size: e.size!, sha256: e.sha256! });
    });
    const expected = loadManifest(path.join(dir, `${name}.expected.json`));
    const diff = diffManifests(expected, actual);
    assert.deepEqual(diff, [], `${name}: reader tree differs from the kernel's:\n${diff.join('\n')}`);
    if (name.startsWith('digest-') || name === 'metabox-digest') {
      assert.ok(reader.superblock.features.includes('ishare_xattrs'), `${name}: ishare_xattrs feature`);
      assert.ok(fingerprints.length > 100);
      for (const f of fingerprints) {
        const fp = reader.fingerprint(f.nid);
        // mkfs.erofs gives empty files no digest.
        if (f.size === 0 && fp === undefined) continue;
        assert.ok(fp, `${name}: '${f.path}' has no fingerprint`);
        assert.equal(fp.toString('latin1', 0, 7), 'sha256:');
        assert.equal(fp.length, 39, `${name}: '${f.path}' fingerprint length`);
        assert.equal(fp.subarray(7).toString('hex'), f.sha256, `${name}: '${f.path}' fingerprint`);
      }
    } else {
      for (const f of fingerprints.slice(0, 20)) assert.equal(reader.fingerprint(f.nid), undefined);
    }
  } finally {
    reader.close();
  }
}

test('every shared image is classified (plain or compressed)', () => {
  const names = imageNames();
  assert.ok(names.length >= 25, `expected the shared image set, found ${names.length}`);
  for (const n of names) {
    const r = open(n);
    try {
      const compressed = r.superblock.compressionAlgorithms.length > 0;
      assert.equal(compressed, COMPRESSED_IMAGES.has(n), `${n}: compressed=${compressed}`);
    } finally {
      r.close();
    }
  }
});

for (const name of imageNames()) {
  const kind = COMPRESSED_IMAGES.has(name) ? 'compressed' : 'uncompressed';
  test(`${kind} image ${name}: tree equals the kernel's view`, () => checkImage(name));
}

// mkfs.erofs 1.9.3 fixtures for layouts the shared set lacks (see test/fixtures/erofs-1.9/README.md).
const FIXTURE_FEATURES: Record<string, string[]> = {
  'metabox-lz4': ['metabox', '48bit'],
  'metabox-plaindata': ['metabox', '48bit'],
  'metabox-digest': ['metabox', 'ishare_xattrs', 'xattr_prefixes'],
  '48bit-chunked-1k': ['48bit', 'chunked_file'],
  'prefixes-in-packed': ['fragments', 'xattr_prefixes'],
  'dot-omitted-512': ['48bit'],
};
for (const [name, features] of Object.entries(FIXTURE_FEATURES)) {
  test(`fixture ${name}: tree equals the kernel's view`, () => {
    const r = openImage(path.join(FIXTURES, `${name}.erofs`));
    try {
      for (const f of features) assert.ok(r.superblock.features.includes(f), `${name}: feature ${f}`);
      if (name.startsWith('metabox')) assert.ok(r.rootNid >= 2 ** 52, 'root inode lives in the metabox');
      if (name === '48bit-chunked-1k') assert.equal(r.superblock.blockSize, 1024);
    } finally {
      r.close();
    }
    checkImage(name, FIXTURES);
  });
}

test('fixture multidev-flat: blocks found through the device table\'s unified addresses', () => {
  const devices = [path.join(FIXTURES, 'multidev-layer1.blob'), path.join(FIXTURES, 'multidev-layer2.blob')];
  const r = openImage(path.join(FIXTURES, 'multidev-flat.erofs'), { devices });
  try {
    assert.equal(r.superblock.extraDevices, 2);
    assert.ok(r.superblock.features.includes('device_table'));
    // The primary image holds metadata only: every file byte comes from a layer device.
    const a = r.lookup(r.rootNid, 'a')!;
    const f = r.lookup(a, 'f30')!;
    const exts = r.plainExtents(f)!;
    assert.ok(exts.length >= 1 && exts.every((x) => x.device === 1), JSON.stringify(exts));
  } finally {
    r.close();
  }
  checkImage('multidev-flat', FIXTURES, { devices });
  assert.throws(() => openImage(path.join(FIXTURES, 'multidev-flat.erofs'), { devices: devices.slice(0, 1) }),
    (e: ErofsError) => e.code === 'EINVAL');
});

test('dot-omitted directories: "." is synthesised first and cookies continue past it', () => {
  const r = openImage(path.join(FIXTURES, 'dot-omitted-512.erofs'));
  try {
    for (const dir of [r.rootNid, r.lookup(r.rootNid, 'many')!]) {
      const all = r.readdir(dir, 0, 100000);
      assert.equal(all[0]!.name.toString(), '.');
      assert.equal(all[0]!.nid, dir);
      assert.equal(all.filter((e) => e.name.toString() === '.').length, 1);
      assert.ok(all.some((e) => e.name.toString() === '..'));
      const names: string[] = [];
      let off = 0;
      for (let i = 0; i < all.length + 2; i++) {
        const e = r.readdir(dir, off, 1);
        if (!e.length) break;
        names.push(e[0]!.name.toString());
        off = e[0]!.nextOffset;
      }
      assert.deepEqual(names, all.map((e) => e.name.toString()));
      assert.equal(r.lookup(dir, '.'), dir);
    }
  } finally {
    r.close();
  }
});

test('the readSync fallback (no mmap) reads the same trees', () => {
  const saved = process.env.EROFS_VFSD_NO_MMAP;
  process.env.EROFS_VFSD_NO_MMAP = '1';
  try {
    checkImage('chunked-blobdev');
    checkImage('lz4');
  } finally {
    if (saved === undefined) delete process.env.EROFS_VFSD_NO_MMAP;
    else process.env.EROFS_VFSD_NO_MMAP = saved;
  }
});

test('readdir cookies are stable: one-at-a-time continuation equals a full listing', () => {
  const r = open('plain');
  try {
    const dir = r.lookup(r.rootNid, 'manyfiles');
    assert.ok(dir !== undefined);
    const all = r.readdir(dir, 0, 1 << 20);
    assert.ok(all.length > 500, `manyfiles has ${all.length} entries`);
    const names = new Set(all.map((e) => e.name.toString()));
    assert.ok(names.has('.') && names.has('..'));
    const one: string[] = [];
    let off = 0;
    for (let i = 0; i < all.length + 5; i++) {
      const e = r.readdir(dir, off, 1);
      if (!e.length) break;
      one.push(e[0]!.name.toString());
      off = e[0]!.nextOffset;
    }
    assert.deepEqual(one, all.map((e) => e.name.toString()));
    // Resuming from any cookie continues right after that entry.
    for (const i of [0, 1, 7, 100, all.length - 2]) {
      const rest = r.readdir(dir, all[i]!.nextOffset, 3);
      assert.deepEqual(rest.map((e) => e.name.toString()), all.slice(i + 1, i + 4).map((e) => e.name.toString()));
    }
    assert.deepEqual(r.readdir(dir, all[all.length - 1]!.nextOffset, 10), []);
    // Sorted names: lookup finds every entry, and misses absent names.
    for (const e of all) assert.equal(r.lookup(dir, e.name), e.nid, `lookup ${e.name}`);
    for (const miss of ['', 'zzzz', 'entry-', 'entry-00000-x', '\u00ff', 'a'.repeat(255)]) {
      assert.equal(r.lookup(dir, miss), undefined, `lookup '${miss}'`);
    }
    assert.throws(() => r.lookup(r.lookup(r.rootNid, 'fifo')!, 'x'), (e: ErofsError) => e.code === 'ENOTDIR');
  } finally {
    r.close();
  }
});

test('plainExtents map a plain file onto the image bytes; seek finds data and holes', () => {
  for (const name of ['plain', 'plain-noinline', 'chunked', 'chunked-blobdev', 'blocksize-512']) {
    const r = open(name);
    const files = [path.join(SHARED_IMAGES, `${name}.erofs`), ...(optionsFor(name).devices ?? [])];
    const fds = files.map((f) => fs.openSync(f, 'r'));
    try {
      const big = r.lookup(r.rootNid, 'big')!;
      let checked = 0;
      for (const e of r.readdir(big, 0, 100)) {
        if (e.type !== 'file') continue;
        const a = r.getAttr(e.nid);
        const content = r.read(e.nid, 0, a.size);
        assert.equal(content.length, a.size);
        const exts = r.plainExtents(e.nid);
        assert.ok(exts, `${name}: ${e.name} should be plain`);
        const rebuilt = Buffer.alloc(a.size);
        for (const x of exts) {
          assert.ok(x.logical + x.length <= a.size);
          fs.readSync(fds[x.device]!, rebuilt, x.logical, x.length, x.physical);
        }
        assert.ok(rebuilt.equals(content), `${name}: ${e.name} extents rebuild the content`);
        // SEEK_DATA/SEEK_HOLE agree with the extents (holes read as zeros).
        assert.equal(r.seek(e.nid, 0, 'hole') <= a.size, true);
        const firstHole = r.seek(e.nid, 0, 'hole');
        const covered = exts.filter((x) => x.logical === 0).length ? exts.reduce((end, x) => (x.logical === end ? end + x.length : end), 0) : 0;
        assert.equal(firstHole, Math.min(a.size, covered === 0 ? 0 : covered), `${name}: ${e.name} first hole`);
        assert.throws(() => r.seek(e.nid, a.size, 'data'), (err: ErofsError) => err.code === 'ENXIO');
        checked++;
      }
      assert.ok(checked >= 3);
    } finally {
      for (const fd of fds) fs.closeSync(fd);
      r.close();
    }
  }
});

test('seek on compressed files: all data, the hole at EOF', () => {
  const r = open('lz4');
  try {
    const big = r.lookup(r.rootNid, 'big')!;
    const nid = r.lookup(big, 'text-3m')!;
    const size = r.getAttr(nid).size;
    assert.equal(r.seek(nid, 0, 'data'), 0);
    assert.equal(r.seek(nid, 12345, 'data'), 12345);
    assert.equal(r.seek(nid, 0, 'hole'), size);
    assert.throws(() => r.seek(nid, size, 'hole'), (e: ErofsError) => e.code === 'ENXIO');
    assert.equal(r.plainExtents(nid), undefined);
  } finally {
    r.close();
  }
});

test('reads at arbitrary offsets equal slices of the whole file', () => {
  const r = open('chunked');
  try {
    const big = r.lookup(r.rootNid, 'big')!;
    const nid = r.lookup(big, 'text-3m')!;
    const size = r.getAttr(nid).size;
    const whole = r.read(nid, 0, size);
    let seed = 12345;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    for (let i = 0; i < 200; i++) {
      const off = rnd(size + 100);
      const len = rnd(200000);
      const got = r.read(nid, off, len);
      const want = whole.subarray(Math.min(off, size), Math.min(size, off + len));
      assert.ok(got.equals(want), `read ${off}+${len}`);
      const tgt = Buffer.alloc(len + 16, 0xaa);
      const n = r.readInto!(nid, off, len, tgt, 16);
      assert.equal(n, want.length);
      assert.ok(tgt.subarray(16, 16 + n).equals(want), `readInto ${off}+${len}`);
      assert.ok(tgt.subarray(0, 16).every((b) => b === 0xaa));
    }
    assert.throws(() => r.readInto!(nid, 0, 100, Buffer.alloc(50)), (e: ErofsError) => e.code === 'EINVAL');
    assert.throws(() => r.read(big, 0, 10), (e: ErofsError) => e.code === 'EISDIR');
  } finally {
    r.close();
  }
});

function mutatedCopy(name: string, mutate: (img: Buffer) => void, fixCrc: boolean): string {
  fs.mkdirSync(SCRATCH_DIR, { recursive: true });
  const img = fs.readFileSync(path.join(SHARED_IMAGES, `${name}.erofs`));
  mutate(img);
  if (fixCrc) {
    const blkbits = img[1024 + 12]!;
    const len = Math.min(1 << blkbits, (1 << blkbits) > 1024 ? (1 << blkbits) - 1024 : 1 << blkbits);
    const sb = Buffer.from(img.subarray(1024, 1024 + len));
    sb.writeUInt32LE(0, 4);
    img.writeUInt32LE(crc32c(0xffffffff, sb), 1024 + 4);
  }
  const out = path.join(SCRATCH_DIR, `mut-${name}-${process.pid}-${crypto.randomBytes(4).toString('hex')}.erofs`);
  fs.writeFileSync(out, img);
  return out;
}

test('superblock: unknown INCOMPAT bit is refused naming the bit; checksum is verified', () => {
  const files: string[] = [];
  try {
    const unknown = mutatedCopy('plain', (img) => img.writeUInt32LE(img.readUInt32LE(1024 + 80) | (1 << 13), 1024 + 80), true);
    files.push(unknown);
    assert.throws(() => openImage(unknown), (e: ErofsError) => e.code === 'EOPNOTSUPP' && /\b13\b/.test(e.message) && /0x2000/.test(e.message));
    const badCrc = mutatedCopy('plain', (img) => { img[1024 + 64] ^= 0xff; }, false);
    files.push(badCrc);
    assert.throws(() => openImage(badCrc), (e: ErofsError) => e.code === 'EIO' && /checksum/.test(e.message));
    const fixed = mutatedCopy('plain', (img) => { img[1024 + 64] ^= 0xff; }, true);
    files.push(fixed);
    openImage(fixed).close();
    const notErofs = mutatedCopy('plain', (img) => img.writeUInt32LE(0, 1024), false);
    files.push(notErofs);
    assert.throws(() => openImage(notErofs), (e: ErofsError) => e instanceof ErofsError);
    const r = open('plain');
    assert.equal(r.superblock.blockSize, 4096);
    assert.ok(r.superblock.features.includes('sb_csum'));
    r.close();
    assert.equal(open('blocksize-512').superblock.blockSize, 512);
  } finally {
    for (const f of files) fs.rmSync(f, { force: true });
  }
});

test('a multi-device image without its blob device fails reads with EIO, not a crash', () => {
  const r = openImage(path.join(SHARED_IMAGES, 'chunked-blobdev.erofs'));
  try {
    assert.equal(r.superblock.extraDevices, 1);
    const big = r.lookup(r.rootNid, 'big')!;
    const nid = r.lookup(big, 'text-3m')!;
    assert.throws(() => r.read(nid, 0, 4096), (e: ErofsError) => e.code === 'EIO');
  } finally {
    r.close();
  }
  assert.throws(() => openImage(path.join(SHARED_IMAGES, 'chunked-blobdev.erofs'), { devices: [] as string[] }.devices!.length ? {} : { devices: ['a', 'b'] }),
    (e: ErofsError) => e.code === 'EINVAL');
});

test('readInto of compressed files (decoded in place, cache kept or bypassed) equals the kernel view', () => {
  // 1 MiB cache: files over 384 KiB stream past the pcluster cache (whole extents decoded
  // straight into the target); the default cache keeps them. Odd chunk sizes make every read
  // start and end inside extents, so both the in-place and the cached path are taken.
  const images = ['lz4', 'lz4hc-bigpcluster', 'lz4-ztailpacking', 'lz4-fragments-dedupe', 'lz4-legacy-index', 'deflate', 'zstd'];
  for (const name of images) {
    const expected = loadManifest(path.join(SHARED_IMAGES, `${name}.expected.json`));
    for (const opts of [{ cacheBytes: 1 << 20 }, {}, { cacheBytes: 1 << 20, mmap: false }] as OpenOptions[]) {
      const r = openImage(path.join(SHARED_IMAGES, `${name}.erofs`), opts);
      try {
        let checked = 0;
        for (const [p, e] of Object.entries(expected)) {
          if (e.type !== 'file' || !e.sha256 || e.size === undefined) continue;
          const nid = p.split('/').filter(Boolean).reduce((dir, part) => {
            const n = r.lookup(dir, part);
            assert.ok(n !== undefined, `${name}: ${p} missing`);
            return n;
          }, r.rootNid);
          for (const chunk of [1 << 20, 131072 + 7, 4093]) {
            if (chunk === 4093 && e.size > 4 << 20) continue;
            const tgt = Buffer.alloc(chunk + 3, 0xaa);
            const h = crypto.createHash('sha256');
            for (let off = 0; off < e.size; off += chunk) {
              const n = r.readInto!(nid, off, chunk, tgt, 3);
              assert.equal(n, Math.min(chunk, e.size - off), `${name}: ${p} readInto at ${off}`);
              h.update(tgt.subarray(3, 3 + n));
            }
            assert.ok(tgt.subarray(0, 3).every((b) => b === 0xaa), `${name}: ${p} wrote before the target offset`);
            assert.equal(h.digest('hex'), e.sha256, `${name}: ${p} in ${chunk}-byte readInto chunks`);
          }
          checked++;
        }
        assert.ok(checked > 0, `${name}: no regular files checked`);
      } finally {
        r.close();
      }
    }
  }
});
