// Compressed data (src/erofs/zmap.ts, zindex.ts, pcluster.ts, readahead.ts, zdata.ts): every compressed shared image reads back with the
// kernel's SHA-256s, arbitrary (offset, length) reads across pcluster boundaries match the whole
// content, images built here with mkfs.erofs 1.5 (big pclusters, legacy full indexes,
// ztailpacking, plain pclusters) read back as their source, hand-built index/extent layouts the
// shared images lack (interlaced plain pclusters, holes, partial references, 8/16/32-byte extent
// records, fragments) decode as the kernel would, and corrupt indexes/data only raise ErofsError.
import test from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import zlib from 'node:zlib';
import { openImage, ErofsError } from '../src/erofs/index.js';
import type { ErofsReader } from '../src/erofs/index.js';
import { CompressedFile } from '../src/erofs/zdata.js';
import type { CompressedFileContext, ZImageContext } from '../src/erofs/zdata.js';
import { PclusterCache } from '../src/erofs/pcluster.js';
import { INCOMPAT } from '../src/erofs/format.js';
import { SHARED_IMAGES, SCRATCH_DIR } from './support/paths.js';
import { loadManifest } from './support/manifest.js';
import { rng, sampleData } from './support/corpus.js';
import { lz4CompressBlock } from './support/lz4-block.js';

const COMPRESSED_SHARED = [
  'lz4', 'lz4hc-bigpcluster', 'lz4-legacy-index', 'lz4-ztailpacking', 'lz4-fragments-dedupe', 'lzma',
  'deflate', 'zstd', 'zstd-all-fragments', 'compact-inodes', 'extended-inodes', 'digest-lz4-a', '48bit',
  'metabox', 'blocksize-2k',
];

function sha256(b: Buffer): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

function resolve(r: ErofsReader, p: string): number {
  let nid = r.rootNid;
  if (p === '') return nid;
  for (const part of p.split('/')) {
    const next = r.lookup(nid, part);
    assert.ok(next !== undefined, `lookup ${p}`);
    nid = next;
  }
  return nid;
}

function readAll(r: ErofsReader, nid: number, size: number, chunk: number): Buffer {
  const parts: Buffer[] = [];
  let off = 0;
  while (off < size) {
    const b = r.read(nid, off, chunk);
    assert.ok(b.length > 0, `short read at ${off} of ${size}`);
    assert.equal(b.length, Math.min(chunk, size - off));
    parts.push(b);
    off += b.length;
  }
  return Buffer.concat(parts);
}

/** Random (offset, length) reads, incl. EOF edges, must equal slices of `whole`. */
function checkRandomReads(r: ErofsReader, nid: number, whole: Buffer, count: number, seed: number, what: string): void {
  const rand = rng(seed);
  const size = whole.length;
  const probes: [number, number][] = [
    [0, 1], [size - 1, 1], [size - 1, 100], [size, 10], [size + 4096, 10], [0, 0], [0, size + 1000],
  ];
  for (let i = 0; i < count; i++) {
    const off = Math.floor(rand() * size);
    const len = rand() < 0.5 ? 1 + Math.floor(rand() * 300) : 1 + Math.floor(rand() * 300_000);
    probes.push([off, len]);
  }
  for (const [off, len] of probes) {
    const got = r.read(nid, off, len);
    const want = off >= size ? Buffer.alloc(0) : whole.subarray(off, Math.min(size, off + len));
    assert.ok(got.equals(want), `${what}: read(${off}, ${len}) differs`);
  }
}

// ------------------------------------------------------------------ shared images

for (const name of COMPRESSED_SHARED) {
  test(`shared image ${name}: every regular file matches the kernel's sha256`, () => {
    const r = openImage(path.join(SHARED_IMAGES, `${name}.erofs`));
    try {
      const man = loadManifest(path.join(SHARED_IMAGES, `${name}.expected.json`));
      let files = 0;
      const big: { nid: number; data: Buffer; path: string }[] = [];
      for (const [p, e] of Object.entries(man)) {
        if (e.type !== 'file') continue;
        const nid = resolve(r, p);
        // An odd chunk size so that reads straddle pcluster and block boundaries.
        const data = readAll(r, nid, e.size!, 77_777);
        assert.equal(sha256(data), e.sha256, `${name}: ${p}`);
        files++;
        if (data.length > 100_000) big.push({ nid, data, path: p });
      }
      assert.ok(files > 1000, `${name}: only ${files} files`);
      big.sort((a, b) => b.data.length - a.data.length);
      assert.ok(big.length > 0, `${name}: no large file to probe`);
      for (const f of big.slice(0, 3)) checkRandomReads(r, f.nid, f.data, 60, f.data.length, `${name}:${f.path}`);
    } finally {
      r.close();
    }
  });
}

// ------------------------------------------------------------------ mkfs.erofs 1.5 images

interface SourceFile {
  name: string;
  data: Buffer;
}

function sourceFiles(): SourceFile[] {
  const rand = rng(99);
  const random = (n: number): Buffer => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = Math.floor(rand() * 256);
    return b;
  };
  // Compressible and incompressible stretches: the latter become plain (uncompressed) pclusters.
  const mixed: Buffer[] = [];
  for (let i = 0; i < 12; i++) mixed.push(i % 2 ? random(20_000 + i * 777) : sampleData(30_000 + i * 333, 50 + i));
  return [
    { name: 'big.bin', data: sampleData(3 * 1024 * 1024 + 12_345, 3) },
    { name: 'mixed.bin', data: Buffer.concat(mixed) },
    { name: 'zeros.bin', data: Buffer.concat([Buffer.alloc(256 * 1024), sampleData(100_000, 4), Buffer.alloc(200_003)]) },
    { name: 'small.txt', data: sampleData(3000, 5) },
    { name: 'tiny', data: Buffer.from('x') },
    { name: 'exact4k', data: sampleData(4096, 6) },
    { name: 'exact64k1', data: sampleData(65_537, 7) },
  ];
}

const MKFS_VARIANTS: { name: string; options: string[]; expect: (kinds: Set<string>, maxPlen: number, layouts: Set<number>) => void }[] = [
  {
    name: 'lz4',
    options: ['-zlz4'],
    expect: (k, _m, l) => {
      assert.ok(k.has('compressed') && k.has('plain'), [...k].join());
      assert.ok(l.has(3));
    },
  },
  {
    name: 'lz4hc-big',
    options: ['-zlz4hc,12', '-C65536'],
    expect: (k, m, l) => {
      assert.ok(m > 4096, `big pclusters expected, max ${m}`);
      assert.ok(l.has(3));
    },
  },
  {
    name: 'lz4hc-big-legacy',
    options: ['-zlz4hc,9', '-C65536', '-Elegacy-compress'],
    expect: (k, m, l) => {
      assert.ok(m > 4096, `big pclusters expected, max ${m}`);
      assert.ok(l.has(1) && !l.has(3), 'full indexes expected');
    },
  },
  {
    name: 'lz4-legacy-ztailpacking',
    options: ['-zlz4', '-Elegacy-compress', '-Eztailpacking'],
    expect: (k, _m, l) => {
      assert.ok(k.has('inline'), [...k].join());
      assert.ok(l.has(1) && !l.has(3), 'full indexes expected');
    },
  },
  {
    name: 'lz4-ztailpacking',
    options: ['-zlz4', '-Eztailpacking'],
    expect: (k) => assert.ok(k.has('inline'), [...k].join()),
  },
  {
    name: 'lz4hc-16k-ztailpacking',
    options: ['-zlz4hc', '-C16384', '-Eztailpacking'],
    expect: (k, m) => {
      assert.ok(k.has('inline'), [...k].join());
      assert.ok(m > 4096);
    },
  },
];

test('mkfs.erofs 1.5 images: contents equal the source, across pcluster boundaries', () => {
  const dir = path.join(SCRATCH_DIR, 'zmap');
  const src = path.join(dir, 'src');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(src, { recursive: true });
  const files = sourceFiles();
  for (const f of files) fs.writeFileSync(path.join(src, f.name), f.data);
  for (const v of MKFS_VARIANTS) {
    const image = path.join(dir, `${v.name}.erofs`);
    // Fails loudly (ENOENT) when mkfs.erofs is missing.
    execFileSync('mkfs.erofs', ['--quiet', '-T0', ...v.options, image, src], { stdio: ['ignore', 'ignore', 'pipe'] });
    const r = openImage(image);
    try {
      const kinds = new Set<string>();
      const layouts = new Set<number>();
      let maxPlen = 0;
      for (const f of files) {
        const nid = r.lookup(r.rootNid, f.name);
        assert.ok(nid !== undefined);
        const whole = readAll(r, nid, f.data.length, 131_072);
        assert.ok(whole.equals(f.data), `${v.name}: ${f.name} differs`);
        if (f.data.length > 60_000) checkRandomReads(r, nid, f.data, 80, f.data.length ^ 0x5a, `${v.name}:${f.name}`);
        // Inspect the mapping through a CompressedFile built from the raw image.
        const zf = rawCompressedFile(image, nid, new PclusterCache(1 << 20));
        if (!zf) continue;
        layouts.add(zf.ctx.datalayout);
        let off = 0;
        while (off < f.data.length) {
          const e = zf.mapExtent(off);
          assert.ok(e.logical <= off && e.length > 0, `${v.name}: ${f.name} extent at ${off}`);
          kinds.add(e.kind);
          maxPlen = Math.max(maxPlen, e.physicalLength);
          off = e.logical + e.length;
        }
        assert.ok(zf.read(0, f.data.length + 10).equals(f.data), `${v.name}: ${f.name} via raw CompressedFile`);
      }
      v.expect(kinds, maxPlen, layouts);
    } finally {
      r.close();
    }
  }
});

// ------------------------------------------------------------------ raw image contexts

/** Parses just enough of an (ordinary, non-metabox) image to build a CompressedFile for `nid`. */
function rawCompressedFile(
  image: string | Buffer,
  nid: number,
  cache: PclusterCache,
  extra: Partial<ZImageContext> = {},
): CompressedFile | undefined {
  const img = typeof image === 'string' ? fs.readFileSync(image) : image;
  const sbOff = 1024;
  const blkszbits = img[sbOff + 12]!;
  const metaBlk = img.readUInt32LE(sbOff + 40);
  const incompat = img.readUInt32LE(sbOff + 80);
  const avail = incompat & 0x2 ? img.readUInt16LE(sbOff + 84) : 0;
  const iloc = metaBlk * 2 ** blkszbits + nid * 32;
  const format = img.readUInt16LE(iloc);
  const extended = format & 1;
  const datalayout = (format >> 1) & 7;
  if (datalayout !== 1 && datalayout !== 3) return undefined;
  const icount = img.readUInt16LE(iloc + 2);
  const isize = extended ? 64 : 32;
  const xsize = icount ? 12 + (icount - 1) * 4 : 0;
  const size = extended ? Number(img.readBigUInt64LE(iloc + 8)) : img.readUInt32LE(iloc + 8);
  const space = img;
  const rd = (pos: number, len: number): Buffer => {
    if (!Number.isSafeInteger(pos) || pos < 0 || len < 0 || pos + len > space.length) {
      throw new ErofsError('EIO', `raw read ${pos}+${len} out of range`);
    }
    return space.subarray(pos, pos + len);
  };
  const ictx: ZImageContext = {
    blkszbits,
    featureIncompat: incompat,
    availableAlgorithms: avail,
    algorithmConfigs: [],
    readData: rd,
    readPacked: () => {
      throw new ErofsError('EIO', 'no packed inode in this test');
    },
    cache,
    ...extra,
  };
  const ctx: CompressedFileContext = {
    image: ictx,
    nid,
    size,
    datalayout,
    mapHeaderPos: Math.ceil((iloc + isize + xsize) / 8) * 8,
    readMeta: rd,
  };
  return new CompressedFile(ctx);
}

// ------------------------------------------------------------------ hand-built layouts

const BS = 4096;

function lz4Padded(data: Buffer, blocks = 1): Buffer {
  const c = lz4CompressBlock(data);
  assert.ok(c.length <= blocks * BS, 'test data must compress into its pcluster');
  const out = Buffer.alloc(blocks * BS);
  c.copy(out, out.length - c.length); // 0padding: compressed bytes at the end
  return out;
}

function memContext(opts: {
  meta: Buffer;
  data: Buffer;
  size: number;
  datalayout: number;
  packed?: Buffer;
  cache?: PclusterCache;
}): CompressedFileContext {
  const bounded = (b: Buffer) => (pos: number, len: number): Buffer => {
    if (pos < 0 || len < 0 || pos + len > b.length) throw new ErofsError('EIO', `read ${pos}+${len} out of range`);
    return b.subarray(pos, pos + len);
  };
  return {
    image: {
      blkszbits: 12,
      featureIncompat: INCOMPAT.ZERO_PADDING | INCOMPAT.BIG_PCLUSTER,
      availableAlgorithms: 0,
      algorithmConfigs: [],
      readData: bounded(opts.data),
      readPacked: bounded(opts.packed ?? Buffer.alloc(0)),
      cache: opts.cache ?? new PclusterCache(1 << 20),
    },
    nid: 42,
    size: opts.size,
    datalayout: opts.datalayout,
    mapHeaderPos: 0,
    readMeta: bounded(opts.meta),
  };
}

function fullIndex(advise: number, entries: { type: number; clusterofs?: number; blkaddr?: number; d0?: number; d1?: number; partial?: boolean }[]): Buffer {
  const meta = Buffer.alloc(16 + entries.length * 8);
  meta.writeUInt16LE(advise, 4); // h_advise; algorithm 0 (lz4), clusterbits 0
  entries.forEach((e, i) => {
    const o = 16 + i * 8;
    meta.writeUInt16LE(e.type | (e.partial ? 0x8000 : 0), o);
    if (e.type === 2) {
      meta.writeUInt16LE(e.d0 ?? 0, o + 4);
      meta.writeUInt16LE(e.d1 ?? 0, o + 6);
    } else {
      meta.writeUInt16LE(e.clusterofs ?? 0, o + 2);
      meta.writeUInt32LE(e.blkaddr ?? 0, o + 4);
    }
  });
  return meta;
}

/**
 * Full indexes, 3 lclusters, size 10000:
 *   [0, 5000)    LZ4 pcluster in block 1
 *   [5000, 9096) interlaced plain pcluster in block 2 (byte at x sits at x % 4096 of the block)
 *   [9096, 10000) LZ4 pcluster in block 3, a partial reference (the stream encodes 2000 bytes)
 */
function interlacedFixture(): { ctx: CompressedFileContext; content: Buffer } {
  const content = sampleData(10_000, 11);
  const data = Buffer.alloc(4 * BS);
  lz4Padded(content.subarray(0, 5000)).copy(data, BS);
  for (let j = 0; j < 4096; j++) data[2 * BS + ((5000 + j) % BS)] = content[5000 + j]!;
  const longer = Buffer.concat([content.subarray(9096), sampleData(1096, 12)]);
  lz4Padded(longer).copy(data, 3 * BS);
  const meta = fullIndex(0x10 /* INTERLACED */, [
    { type: 1, clusterofs: 0, blkaddr: 1 },
    { type: 0, clusterofs: 904, blkaddr: 2 },
    { type: 1, clusterofs: 904, blkaddr: 3, partial: true },
  ]);
  return { ctx: memContext({ meta, data, size: 10_000, datalayout: 1 }), content };
}

test('full indexes: interlaced plain pcluster and partial reference decode as the kernel does', () => {
  const { ctx, content } = interlacedFixture();
  const f = new CompressedFile(ctx);
  assert.ok(f.read(0, 20_000).equals(content));
  assert.ok(f.read(4999, 2).equals(content.subarray(4999, 5001)));
  assert.ok(f.read(9000, 500).equals(content.subarray(9000, 9500)));
  const e1 = f.mapExtent(6000);
  assert.deepEqual([e1.logical, e1.length, e1.kind, e1.format, e1.physical], [5000, 4096, 'plain', -2, 2 * BS]);
  const e2 = f.mapExtent(9999);
  assert.deepEqual([e2.logical, e2.length, e2.kind, e2.partialRef], [9096, 904, 'compressed', true]);
  const e0 = f.mapExtent(0);
  assert.deepEqual([e0.logical, e0.length, e0.physicalLength], [0, 5000, BS]);
  for (let off = 0; off < 10_000; off += 997) {
    assert.ok(new CompressedFile(ctx).read(off, 3001).equals(content.subarray(off, off + 3001)), `read at ${off}`);
  }
  assert.equal(f.seek(123, 'data'), 123);
  assert.equal(f.seek(123, 'hole'), 10_000);
  assert.equal(f.seek(10_000, 'data'), -1);
});

test('full indexes: NONHEAD lookback, big pcluster CBLKCNT and the next-head end', () => {
  // lclusters: 0 HEAD1 blk 1 (2-block pcluster via CBLKCNT on lcn 1), 1 NONHEAD(CBLKCNT 2),
  // 2 NONHEAD d0=2, 3 HEAD1 at 100 (blk 3), size 4*4096.
  const content = sampleData(4 * BS, 21);
  const data = Buffer.alloc(5 * BS);
  lz4Padded(content.subarray(0, 3 * BS + 100), 2).copy(data, BS);
  lz4Padded(content.subarray(3 * BS + 100)).copy(data, 3 * BS);
  const meta = fullIndex(0x2 /* BIG_PCLUSTER_1 */, [
    { type: 1, clusterofs: 0, blkaddr: 1 },
    { type: 2, d0: 0x800 | 2, d1: 2 },
    { type: 2, d0: 2, d1: 1 },
    { type: 1, clusterofs: 100, blkaddr: 3 },
  ]);
  const f = new CompressedFile(memContext({ meta, data, size: 4 * BS, datalayout: 1 }));
  assert.ok(f.read(0, 4 * BS).equals(content));
  const e = f.mapExtent(2 * BS + 5);
  assert.deepEqual([e.logical, e.length, e.physical, e.physicalLength], [0, 3 * BS + 100, BS, 2 * BS]);
  assert.ok(new CompressedFile(memContext({ meta, data, size: 4 * BS, datalayout: 1 })).read(3 * BS + 50, 100)
    .equals(content.subarray(3 * BS + 50, 3 * BS + 150)));
});

/** 48-bit extent records (recsz 16 or 32), size 20000, with a hole, interlaced plain and a fragment. */
function extentFixture(recsz: 16 | 32): { ctx: CompressedFileContext; content: Buffer } {
  const content = Buffer.concat([sampleData(6000, 31), Buffer.alloc(3000), sampleData(11_000, 32)]);
  const data = Buffer.alloc(4 * BS);
  const c0 = lz4CompressBlock(content.subarray(0, 6000));
  c0.copy(data, 100); // byte-aligned pcluster, no padding
  for (let j = 0; j < 4000; j++) data[2 * BS + ((9000 + j) % BS)] = content[9000 + j]!;
  const packed = Buffer.concat([Buffer.alloc(50, 0xee), content.subarray(13_000), Buffer.alloc(10, 0xee)]);
  const records = [
    { plen: c0.length | (1 << 28), pstart: 100, lstart: 0 },
    { plen: 0, pstart: 0, lstart: 6000 },
    { plen: 4096, pstart: 2 * BS, lstart: 9000 },
    { plen: 50, pstart: 0, lstart: 13_000 }, // last + FRAGMENT: packed-inode offset 50
  ];
  const pos0 = Math.ceil(8 / recsz) * recsz;
  const meta = Buffer.alloc(pos0 + records.length * recsz);
  meta.writeUInt32LE(records.length, 0); // h_extents_lo
  const code = Math.log2(recsz) - 2;
  meta.writeUInt16LE(0x1 | (code << 1) | 0x10 | 0x20, 4); // EXTENTS | recsz | INTERLACED | FRAGMENT
  records.forEach((r, i) => {
    const o = pos0 + i * recsz;
    meta.writeUInt32LE(r.plen, o);
    meta.writeUInt32LE(r.pstart, o + 4);
    meta.writeUInt32LE(0, o + 8);
    meta.writeUInt32LE(r.lstart, o + 12);
  });
  return { ctx: memContext({ meta, data, size: 20_000, datalayout: 1, packed }), content };
}

for (const recsz of [16, 32] as const) {
  test(`48-bit extent records (${recsz} bytes): byte-aligned pcluster, hole, interlaced plain, fragment, seek`, () => {
    const { ctx, content } = extentFixture(recsz);
    const f = new CompressedFile(ctx);
    assert.ok(f.read(0, 20_000).equals(content));
    for (let off = 0; off < 20_000; off += 1234) {
      assert.ok(new CompressedFile(ctx).read(off, 4321).equals(content.subarray(off, off + 4321)), `read at ${off}`);
    }
    assert.equal(f.mapExtent(7000).kind, 'hole');
    assert.equal(f.mapExtent(9500).kind, 'plain');
    assert.equal(f.mapExtent(9500).format, -2);
    assert.equal(f.mapExtent(15_000).kind, 'fragment');
    assert.deepEqual([f.mapExtent(100).kind, f.mapExtent(100).physical], ['compressed', 100]);
    assert.equal(f.seek(0, 'hole'), 6000);
    assert.equal(f.seek(6500, 'data'), 9000);
    assert.equal(f.seek(6500, 'hole'), 6500);
    assert.equal(f.seek(9000, 'hole'), 20_000);
    assert.equal(f.seek(19_999, 'data'), 19_999);
  });
}

test('48-bit lcluster extent records (8 bytes): per-lcluster pstart, shifted plain, hole at the end', () => {
  const L = 8192;
  const content = Buffer.concat([sampleData(2 * L, 41), Buffer.alloc(20_000 - 2 * L)]);
  const data = Buffer.alloc(6 * BS);
  const c0 = lz4CompressBlock(content.subarray(0, L));
  c0.copy(data, 0);
  content.copy(data, 5000, L, 2 * L); // unaligned plain → shifted
  const meta = Buffer.alloc(8 + 3 * 8);
  meta.writeUInt16LE(0x1 | (1 << 1), 4); // EXTENTS, recsz 8
  meta[7] = 1; // lclusterbits = 12 + 1
  meta.writeUInt32LE(c0.length | (1 << 28), 8);
  meta.writeUInt32LE(0, 12);
  meta.writeUInt32LE(L, 16);
  meta.writeUInt32LE(5000, 20);
  meta.writeUInt32LE(0, 24); // hole
  const f = new CompressedFile(memContext({ meta, data, size: 20_000, datalayout: 1 }));
  assert.ok(f.read(0, 30_000).equals(content));
  assert.deepEqual([f.mapExtent(L + 1).kind, f.mapExtent(L + 1).format, f.mapExtent(L + 1).physical], ['plain', -1, 5000]);
  assert.equal(f.mapExtent(19_000).kind, 'hole');
  assert.equal(f.seek(0, 'hole'), 2 * L);
  assert.equal(f.seek(2 * L, 'data'), -1);
});

test('PclusterCache keeps its byte budget and evicts least recently used first', () => {
  const c = new PclusterCache(10_000);
  c.set('a', Buffer.alloc(4000));
  c.set('b', Buffer.alloc(4000));
  assert.ok(c.get('a'));
  c.set('c', Buffer.alloc(4000)); // evicts b (a was used more recently)
  assert.equal(c.get('b'), undefined);
  assert.ok(c.get('a') && c.get('c'));
  assert.ok(c.usedBytes <= 10_000);
  c.set('huge', Buffer.alloc(20_000)); // kept on the side, the LRU is untouched
  assert.equal(c.get('huge')?.length, 20_000);
  assert.ok(c.get('a') && c.get('c'));
  c.set('huge2', Buffer.alloc(30_000)); // replaces the previous oversize entry
  assert.equal(c.get('huge'), undefined);
  assert.ok(c.usedBytes <= 10_000);
});

test('sequential reads of a big file stay within the cache budget and reuse decoded pclusters', () => {
  const image = path.join(SHARED_IMAGES, 'lz4hc-bigpcluster.erofs');
  const r = openImage(image);
  let nid = -1;
  let size = 0;
  try {
    const man = loadManifest(path.join(SHARED_IMAGES, 'lz4hc-bigpcluster.expected.json'));
    const biggest = Object.entries(man).filter(([, e]) => e.type === 'file').sort((a, b) => b[1].size! - a[1].size!)[0]!;
    nid = resolve(r, biggest[0]);
    size = biggest[1].size!;
    const cache = new PclusterCache(256 * 1024);
    const f = rawCompressedFile(image, nid, cache);
    assert.ok(f, 'biggest file is compressed');
    const h = crypto.createHash('sha256');
    for (let off = 0; off < size; off += 4096) {
      h.update(f.read(off, 4096));
      assert.ok(cache.usedBytes <= 256 * 1024);
    }
    assert.equal(h.digest('hex'), biggest[1].sha256);
    // 4 KiB reads of 64 KiB pclusters: most reads are cache hits.
    assert.ok(cache.hits > cache.misses * 4, `hits ${cache.hits} misses ${cache.misses}`);
  } finally {
    r.close();
  }
});

// ------------------------------------------------------------------ corruption

function expectOnlyErofsErrors(fn: () => void, what: string): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof ErofsError)) {
      assert.fail(`${what}: ${(e as Error).stack ?? String(e)}`);
    }
  }
}

test('corrupt hand-built indexes and extent records raise ErofsError only', () => {
  const rand = rng(7);
  const fixtures = [interlacedFixture().ctx, extentFixture(16).ctx, extentFixture(32).ctx];
  let n = 0;
  for (const base of fixtures) {
    const meta = Buffer.from(metaOf(base));
    for (let i = 0; i < 400; i++) {
      const m = Buffer.from(meta);
      const flips = 1 + Math.floor(rand() * 3);
      for (let k = 0; k < flips; k++) m[Math.floor(rand() * m.length)] = Math.floor(rand() * 256);
      const ctx: CompressedFileContext = {
        ...base,
        image: { ...base.image, cache: new PclusterCache(1 << 20) },
        readMeta: (pos, len) => {
          if (pos < 0 || len < 0 || pos + len > m.length) throw new ErofsError('EIO', 'out of range');
          return m.subarray(pos, pos + len);
        },
      };
      expectOnlyErofsErrors(() => {
        const f = new CompressedFile(ctx);
        f.read(0, base.size);
        f.read(Math.floor(rand() * base.size), 5000);
        f.seek(Math.floor(rand() * base.size), rand() < 0.5 ? 'data' : 'hole');
      }, `fixture mutant ${i}`);
      n++;
    }
  }
  assert.equal(n, 1200);
});

/** The whole meta buffer of a memContext (its readMeta is bounded by the buffer's length). */
function metaOf(ctx: CompressedFileContext): Buffer {
  let len = 0;
  for (let step = 1 << 16; step > 0; step >>= 1) {
    try {
      ctx.readMeta(0, len + step);
      len += step;
    } catch {
      // too long
    }
  }
  return ctx.readMeta(0, len);
}

test('corrupt indexes and pcluster data of real images raise ErofsError only, in bounded time', () => {
  const rand = rng(2024);
  let mutants = 0;
  const started = Date.now();
  for (const name of ['lz4', 'lz4hc-bigpcluster', 'lz4-legacy-index', 'lz4-ztailpacking', '48bit', 'deflate', 'zstd', 'lzma']) {
    const image = path.join(SHARED_IMAGES, `${name}.erofs`);
    const img = fs.readFileSync(image);
    const work = Buffer.from(img);
    const r = openImage(image);
    const man = loadManifest(path.join(SHARED_IMAGES, `${name}.expected.json`));
    const byLayout = new Map<string, { nid: number; size: number }[]>();
    for (const [p, e] of Object.entries(man)) {
      if (e.type !== 'file' || e.size! < 5000 || e.size! > 400_000) continue;
      const nid = resolve(r, p);
      const zf = rawCompressedFile(img, nid, new PclusterCache(1));
      if (!zf) continue;
      // Prefer one file per index layout (full/compact, advise bits incl. 48-bit extent records).
      const layout = `${zf.ctx.datalayout}:${img.readUInt16LE(zf.ctx.mapHeaderPos + 4)}`;
      (byLayout.get(layout) ?? byLayout.set(layout, []).get(layout)!).push({ nid, size: e.size! });
    }
    r.close();
    const targets: { nid: number; size: number }[] = [];
    for (let round = 0; targets.length < 6 && round < 6; round++) {
      for (const list of byLayout.values()) if (list[round] && targets.length < 6) targets.push(list[round]!);
    }
    assert.ok(targets.length >= 3, `${name}: compressed targets`);
    for (const t of targets) {
      const pristine = rawCompressedFile(img, t.nid, new PclusterCache(1 << 22))!;
      const hdr = pristine.ctx.mapHeaderPos;
      const first = pristine.mapExtent(0);
      for (let i = 0; i < 100; i++) {
        const saved: [number, number][] = [];
        const flips = 1 + Math.floor(rand() * 4);
        for (let k = 0; k < flips; k++) {
          // map header + indexes, or the first pcluster's bytes
          const at = rand() < 0.7
            ? hdr + Math.floor(rand() * Math.min(512, 16 + Math.ceil(t.size / 4096) * 8))
            : first.physical + Math.floor(rand() * Math.max(1, first.physicalLength));
          saved.push([at, work[at]!]);
          work[at] = Math.floor(rand() * 256);
        }
        try {
          expectOnlyErofsErrors(() => {
            const f = rawCompressedFile(work, t.nid, new PclusterCache(1 << 22))!;
            f.read(0, t.size);
            f.read(Math.floor(rand() * t.size), 70_000);
          }, `${name} nid ${t.nid} mutant ${i}`);
          // The same mutant through the hot path: readInto decoding straight from a mapped span.
          expectOnlyErofsErrors(() => {
            const g = rawCompressedFile(work, t.nid, new PclusterCache(1 << 22), {
              dataSpan: () => ({ buf: work, base: 0, lo: 0, hi: work.length }),
            })!;
            const out = Buffer.alloc(Math.max(t.size, 70_000));
            g.readInto(0, t.size, out, 0);
            g.readInto(Math.floor(rand() * t.size), 70_000, out, 0);
          }, `${name} nid ${t.nid} mutant ${i} (mapped span)`);
        } finally {
          for (const [at, v] of saved.reverse()) work[at] = v;
        }
        mutants++;
      }
    }
  }
  assert.ok(mutants >= 1200, `${mutants} mutants`);
  assert.ok(Date.now() - started < 120_000, 'mutants took too long');
});

test('a packed inode whose fragment points into itself is EIO, not endless recursion', () => {
  const meta = Buffer.alloc(8);
  meta.writeBigUInt64LE((1n << 63n) | 10n); // whole file in the packed inode at offset 10
  const ctx = memContext({ meta, data: Buffer.alloc(0), size: 5000, datalayout: 1 });
  let f: CompressedFile | undefined;
  ctx.image.readPacked = (off, len) => f!.read(off, len); // the "packed inode" is this very file
  f = new CompressedFile(ctx);
  assert.throws(() => f!.read(0, 100), (e: unknown) => e instanceof ErofsError && e.code === 'EIO');
  // A fresh object per nested read (no shared state) is stopped by the depth bound.
  const ctx2 = memContext({ meta, data: Buffer.alloc(0), size: 5000, datalayout: 1 });
  ctx2.image.readPacked = (off, len) => new CompressedFile(ctx2).read(off, len);
  assert.throws(() => new CompressedFile(ctx2).read(0, 100), (e: unknown) => e instanceof ErofsError && e.code === 'EIO');
  // and the guard resets: an honest packed source works afterwards
  const ctx3 = memContext({ meta, data: Buffer.alloc(0), size: 5000, datalayout: 1, packed: Buffer.alloc(6000, 7) });
  assert.ok(new CompressedFile(ctx3).read(0, 5000).equals(Buffer.alloc(5000, 7)));
});

test('viewData (zero-copy pcluster input) gives the same bytes and is never handed out', () => {
  const { ctx, content } = interlacedFixture();
  const data = Buffer.alloc(4 * BS);
  for (let a = 0; a < 4 * BS; a += BS) ctx.image.readData(a, BS).copy(data, a);
  let views = 0;
  const viewed: CompressedFileContext = {
    ...ctx,
    image: {
      ...ctx.image,
      cache: new PclusterCache(1 << 20),
      viewData: (addr, len) => {
        views++;
        return data.subarray(addr, addr + len);
      },
      readData: () => {
        throw new Error('readData must not be used when viewData answers');
      },
    },
  };
  const f = new CompressedFile(viewed);
  const got = f.read(0, 10_000);
  assert.ok(got.equals(content));
  assert.equal(views, 3);
  got.fill(0); // the caller owns its buffer: the image bytes and the cache are unaffected
  assert.ok(f.read(0, 10_000).equals(content));
  assert.ok(data.subarray(2 * BS, 3 * BS).some((b) => b !== 0));
});

test('full indexes: HEAD2 lclusters use the second algorithm (DEFLATE) with its own big-pcluster bit', () => {
  // lcn 0: HEAD1 (LZ4) [0, 6000); lcn 1: HEAD2 at 1904 (DEFLATE, 2 blocks via CBLKCNT on lcn 2)
  // [6000, 16384) ... size 16384 = 4 lclusters: lcn 2 NONHEAD CBLKCNT 2, lcn 3 NONHEAD d0=2.
  const content = sampleData(4 * BS, 61);
  const data = Buffer.alloc(5 * BS);
  lz4Padded(content.subarray(0, 6000)).copy(data, BS);
  const d = zlib.deflateRawSync(content.subarray(6000));
  assert.ok(d.length <= 2 * BS);
  d.copy(data, 4 * BS - d.length); // 0padding for DEFLATE too: data ends at the pcluster's end
  const meta = fullIndex(0x4 /* BIG_PCLUSTER_2 only */, [
    { type: 1, clusterofs: 0, blkaddr: 1 },
    { type: 3, clusterofs: 6000 - BS, blkaddr: 2 },
    { type: 2, d0: 0x800 | 2, d1: 2 },
    { type: 2, d0: 2, d1: 1 },
  ]);
  meta[6] = (2 << 4) | 0; // HEAD1 = lz4, HEAD2 = deflate
  const ctx = memContext({ meta, data, size: 4 * BS, datalayout: 1 });
  ctx.image.availableAlgorithms = 0b101;
  const f = new CompressedFile(ctx);
  assert.ok(f.read(0, 4 * BS).equals(content));
  const e = f.mapExtent(3 * BS);
  assert.deepEqual([e.logical, e.length, e.format, e.physical, e.physicalLength], [6000, 4 * BS - 6000, 2, 2 * BS, 2 * BS]);
  assert.equal(f.mapExtent(10).physicalLength, BS); // HEAD1 without BIG_PCLUSTER_1: one block
  // An algorithm the superblock does not declare is corruption.
  ctx.image.availableAlgorithms = 0b001;
  assert.throws(() => new CompressedFile({ ...ctx, image: { ...ctx.image, cache: new PclusterCache(1 << 20) } }).read(7000, 10),
    (x: unknown) => x instanceof ErofsError && x.code === 'EIO');
});

test('48-bit 4-byte extent records: running physical address over more than one checkpoint stride', () => {
  const n = 601; // > 2 strides of 256 records
  const size = n * BS - 4000;
  const content = sampleData(size, 71);
  const pieces: Buffer[] = [Buffer.alloc(7)]; // records start at byte 7 of the data space
  const meta = Buffer.alloc(16 + n * 4);
  meta.writeUInt16LE(0x1, 4); // EXTENTS, recsz 4 (code 0)
  meta[7] = 0; // lclusterbits = blkszbits
  meta.writeUInt32LE(7, 8); // pstart (le64 lo)
  for (let k = 0; k < n; k++) {
    const chunk = content.subarray(k * BS, Math.min(size, (k + 1) * BS));
    let rec: Buffer;
    let plen: number;
    if (k % 3 === 0) {
      rec = lz4CompressBlock(chunk);
      plen = rec.length | (1 << 28);
    } else {
      rec = chunk;
      plen = rec.length;
    }
    pieces.push(rec);
    meta.writeUInt32LE(plen, 16 + k * 4);
  }
  const data = Buffer.concat(pieces);
  const ctx = memContext({ meta, data, size, datalayout: 1 });
  const f = new CompressedFile(ctx);
  const rand = rng(5);
  for (let i = 0; i < 200; i++) {
    const off = Math.floor(rand() * size);
    const len = 1 + Math.floor(rand() * 20_000);
    assert.ok(f.read(off, len).equals(content.subarray(off, off + len)), `read(${off}, ${len})`);
  }
  assert.ok(new CompressedFile(ctx).read(0, size).equals(content));
  assert.deepEqual([f.mapExtent(600 * BS).kind, f.mapExtent(599 * BS).kind], ['compressed', 'plain']);
});

// ------------------------------------------------------------------ sequential reads over many extents

/** Like the benchmark's 256 MiB file, smaller: 4 KiB random blocks between 4 KiB text blocks. */
function alternatingData(size: number, seed: number): Buffer {
  const rand = rng(seed);
  const out = Buffer.alloc(size);
  for (let off = 0; off < size; off += 4096) {
    const n = Math.min(4096, size - off);
    if ((off >> 12) % 2 === 0) {
      for (let j = 0; j < n; j++) out[off + j] = Math.floor(rand() * 256);
    } else {
      out.write(`line ${off} of the test file, repeated text compresses well\n`.repeat(80), off, n, 'latin1');
    }
  }
  return out;
}

test('sequential reads across many extents: mapped-window decoding and the next-head shortcut equal the source', () => {
  const dir = path.join(SCRATCH_DIR, 'zmap-seq');
  const src = path.join(dir, 'src');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(src, { recursive: true });
  const files: SourceFile[] = [
    { name: 'alt.bin', data: alternatingData(5 * 1024 * 1024 + 777, 17) },
    ...sourceFiles().filter((f) => f.name === 'mixed.bin' || f.name === 'zeros.bin' || f.name === 'exact64k1'),
  ];
  for (const f of files) fs.writeFileSync(path.join(src, f.name), f.data);
  const variants: [string, string[]][] = [
    ['lz4', ['-zlz4']],
    ['lz4hc-big', ['-zlz4hc,9', '-C65536']],
    ['lz4-legacy-ztailpacking', ['-zlz4', '-Elegacy-compress', '-Eztailpacking']],
    ['lz4hc-16k-ztailpacking', ['-zlz4hc', '-C16384', '-Eztailpacking']],
  ];
  const chunks = [1 << 20, 4096, 65_537, 333, 200_000, 8191];
  for (const [name, options] of variants) {
    const image = path.join(dir, `${name}.erofs`);
    execFileSync('mkfs.erofs', ['--quiet', '-T0', ...options, image, src], { stdio: ['ignore', 'ignore', 'pipe'] });
    const imgBytes = fs.readFileSync(image);
    const r = openImage(image);
    try {
      for (const f of files) {
        const nid = r.lookup(r.rootNid, f.name);
        assert.ok(nid !== undefined);
        const size = f.data.length;
        // Odd mapped windows (6000 bytes from a 12 KiB boundary): pclusters starting in a window's
        // first 4 KiB decode from it, the others straddle its end and must fall back to readData.
        let spans = 0;
        let fallbacks = 0;
        const windowed = rawCompressedFile(imgBytes, nid, new PclusterCache(1 << 20), {
          dataSpan: (addr) => {
            spans++;
            const lo = addr - (addr % 12_288);
            const hi = Math.min(imgBytes.length, lo + 6000);
            return { buf: imgBytes.subarray(lo, hi), base: lo, lo, hi };
          },
          readData: (pos, len) => {
            fallbacks++;
            if (pos < 0 || pos + len > imgBytes.length) throw new ErofsError('EIO', 'out of range');
            return imgBytes.subarray(pos, pos + len);
          },
        });
        const plainPath = rawCompressedFile(imgBytes, nid, new PclusterCache(1 << 20));
        assert.ok(windowed && plainPath, `${name}: ${f.name} is compressed`);
        const readers: [string, (off: number, len: number, t: Buffer, at: number) => number][] = [
          ['openImage', (o, l, t, at) => r.readInto!(nid, o, l, t, at)],
          ['windowed', (o, l, t, at) => windowed.readInto(o, l, t, at)],
          ['readData', (o, l, t, at) => plainPath.readInto(o, l, t, at)],
        ];
        const target = Buffer.alloc((1 << 20) + 16);
        for (const [how, readInto] of readers) {
          // Sequential, chunk sizes cycling so reads start and end mid-pcluster everywhere.
          let off = 0;
          for (let k = 0; off < size; k++) {
            const want = chunks[k % chunks.length]!;
            target.fill(0xa5);
            const n = readInto(off, want, target, 7);
            assert.equal(n, Math.min(want, size - off), `${name}/${how}: ${f.name} count at ${off}`);
            assert.ok(target.subarray(7, 7 + n).equals(f.data.subarray(off, off + n)), `${name}/${how}: ${f.name} bytes at ${off}+${n}`);
            assert.ok(target[6] === 0xa5 && target[7 + n] === 0xa5, `${name}/${how}: write outside the window at ${off}`);
            off += n;
          }
          // Random jumps, each followed by a sequential continuation.
          const rand = rng(size ^ 0x3c);
          for (let j = 0; j < 25; j++) {
            let o = Math.floor(rand() * size);
            for (let step = 0; step < 3 && o < size; step++) {
              const len = 1 + Math.floor(rand() * 150_000);
              const n = readInto(o, len, target, 0);
              assert.ok(target.subarray(0, n).equals(f.data.subarray(o, o + n)), `${name}/${how}: ${f.name} read(${o}, ${len})`);
              o += n;
            }
          }
        }
        // The extent map is the same with or without the sequential history.
        const fresh = rawCompressedFile(imgBytes, nid, new PclusterCache(1 << 20))!;
        for (let off = 0; off < size; ) {
          const a = fresh.mapExtent(off);
          assert.deepEqual(windowed.mapExtent(off), a, `${name}: ${f.name} extent at ${off}`);
          off = a.logical + a.length;
        }
        if (f.name === 'alt.bin') {
          assert.ok(spans > 0 && fallbacks > 0, `${name}: windows ${spans}, fallbacks ${fallbacks}`);
        }
      }
    } finally {
      r.close();
    }
  }
});
