// Decompressors (src/erofs/decompress): round trips against real compressors (lz4 and zstd CLIs,
// node:zlib, python3's liblzma binding turned into MicroLZMA), EROFS partial decoding, 0padding,
// and hostile input (random bytes, truncations, bit flips) which must give EIO or a buffer of the
// requested size, never a crash or a hang.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import zlib from 'node:zlib';
import { decompress, decompressInto, algorithmFromId, type CompressionAlgorithm } from '../src/erofs/decompress/index.js';
import { lz4DecodeRange } from '../src/erofs/decompress/lz4.js';
import { ErofsError } from '../src/erofs/api.js';
import { ZSTD_TIMEOUT_MS } from '../src/erofs/decompress/zstd.js';
import { lz4CliBlocks, lz4CompressBlock } from './support/lz4-block.js';
import { rng, sampleData } from './support/corpus.js';

function assertEio(fn: () => unknown, what: string): void {
  assert.throws(fn, (e: unknown) => e instanceof ErofsError && e.code === 'EIO', what);
}

interface LzmaSpec {
  lc?: number;
  lp?: number;
  pb?: number;
  dictSize?: number;
}

/**
 * Raw LZMA1 streams from liblzma (python3's lzma module, one process for all specs: starting
 * python is slow) with the first byte replaced by ~props: the EROFS MicroLZMA form.
 */
function microLzmaMany(data: Buffer, specs: LzmaSpec[]): Buffer[] {
  const script = `
import lzma, sys, json, struct
specs = json.loads(sys.argv[1])
d = sys.stdin.buffer.read()
for s in specs:
    f = {'id': lzma.FILTER_LZMA1, 'preset': 6, 'lc': s['lc'], 'lp': s['lp'], 'pb': s['pb'], 'dict_size': s['dictSize']}
    c = lzma.compress(d, format=lzma.FORMAT_RAW, filters=[f])
    assert c[0] == 0
    c = bytes([~((s['pb'] * 5 + s['lp']) * 9 + s['lc']) & 255]) + c[1:]
    sys.stdout.buffer.write(struct.pack('<I', len(c)) + c)
`;
  const full = specs.map((s) => ({ lc: s.lc ?? 3, lp: s.lp ?? 0, pb: s.pb ?? 2, dictSize: s.dictSize ?? 1 << 20 }));
  const out = execFileSync('python3', ['-c', script, JSON.stringify(full)], { input: data, maxBuffer: 1 << 30 });
  const res: Buffer[] = [];
  for (let p = 0; p < out.length; ) {
    const n = out.readUInt32LE(p);
    res.push(out.subarray(p + 4, p + 4 + n));
    p += 4 + n;
  }
  assert.equal(res.length, specs.length, 'python3 produced every LZMA vector');
  return res;
}

function microLzma(data: Buffer, spec: LzmaSpec = {}): Buffer {
  return microLzmaMany(data, [spec])[0];
}

/** zstd CLI; like mkfs.erofs's frames, they carry the content size unless told otherwise. */
function zstdCli(data: Buffer, args: string[]): Buffer {
  const size = args.includes('--no-content-size') ? [] : [`--stream-size=${data.length}`];
  return execFileSync('zstd', ['-q', '-c', ...size, ...args, '-'], { input: data, maxBuffer: 1 << 30 });
}

const DATA = sampleData(300_000, 7);

test('algorithm ids follow the on-disk numbering', () => {
  assert.equal(algorithmFromId(0), 'lz4');
  assert.equal(algorithmFromId(1), 'lzma');
  assert.equal(algorithmFromId(2), 'deflate');
  assert.equal(algorithmFromId(3), 'zstd');
  assert.equal(algorithmFromId(4), undefined);
});

test('lz4: hand-made vectors (literals, overlapping matches, long lengths)', () => {
  // "abc" then a match at offset 3 of length 4+15+255+1 = 275 (overlapping), then 1 literal.
  const v1 = Buffer.from([0x3f, 0x61, 0x62, 0x63, 3, 0, 255, 1, 0x10, 0x7a]);
  const want1 = Buffer.concat([Buffer.from('abc'.repeat(93).slice(0, 278)), Buffer.from('z')]);
  assert.deepEqual(decompress('lz4', v1, want1.length), want1);
  // offset 1 run (memset path) and literal length with extension bytes (15 + 255 + 10 = 280).
  const lits = Buffer.alloc(280, 0x41);
  const v2 = Buffer.concat([Buffer.from([0xff, 255, 10]), lits, Buffer.from([1, 0, 40, 0x10, 0x42])]);
  const want2 = Buffer.concat([Buffer.alloc(280 + 19 + 40, 0x41), Buffer.from('B')]);
  assert.deepEqual(decompress('lz4', v2, want2.length), want2);
  // Empty-literal last sequence is not needed to stop: partial stops inside a match.
  assert.deepEqual(decompress('lz4', v1, 100, { partial: true }), want1.subarray(0, 100));
  // Exact mode refuses a match running past outLen; partial accepts it.
  assertEio(() => decompress('lz4', v1, 100), 'overlong match in exact mode');
  // Output shorter than asked: EIO in both modes.
  assertEio(() => decompress('lz4', v1, want1.length + 1), 'short stream');
  assertEio(() => decompress('lz4', v1, want1.length + 1, { partial: true }), 'short stream partial');
  // Offset 0 and offsets before the start of output are corrupt.
  assertEio(() => decompress('lz4', Buffer.from([0x10, 0x61, 0, 0, 0x00]), 10), 'offset 0');
  assertEio(() => decompress('lz4', Buffer.from([0x10, 0x61, 2, 0, 0x00]), 10), 'offset beyond output');
});

test('lz4: every short offset and length (overlapping copies)', () => {
  for (let offset = 1; offset <= 9; offset++) {
    for (let len = 4; len <= 70; len++) {
      const lits = Buffer.from('ABCDEFGHI'.slice(0, offset));
      const ml = len - 4;
      const ext = ml >= 15 ? [ml - 15] : [];
      const block = Buffer.concat([
        Buffer.from([(offset << 4) | Math.min(ml, 15)]), lits, Buffer.from([offset, 0, ...ext, 0x10, 0x7a]),
      ]);
      const want = Buffer.alloc(offset + len + 1);
      for (let i = 0; i < offset + len; i++) want[i] = lits[i % offset];
      want[offset + len] = 0x7a;
      assert.deepEqual(decompress('lz4', block, want.length), want, `offset ${offset} len ${len}`);
    }
  }
});

test('lz4: blocks from the lz4 CLI (fast and HC), full and partial decodes', () => {
  for (const level of [1, 12]) {
    const blocks = lz4CliBlocks(DATA, level);
    assert.ok(blocks.length >= 4, `lz4 -${level} produced compressed blocks`);
    for (const b of blocks) {
      assert.deepEqual(decompress('lz4', b.compressed, b.plain.length), b.plain);
      for (const n of [1, 17, 4096, b.plain.length - 1]) {
        assert.deepEqual(decompress('lz4', b.compressed, n, { partial: true }), b.plain.subarray(0, n));
      }
    }
  }
});

test('lz4: decoding into a window of a larger buffer writes only that window (word copies near its end)', () => {
  const blocks = [...lz4CliBlocks(DATA, 1), ...lz4CliBlocks(DATA, 12)];
  const rand = rng(77);
  for (const b of blocks.slice(0, 6)) {
    const lens = [b.plain.length, 1, 2, 3, 5, 31, 33, 4095, b.plain.length - 3];
    for (let k = 0; k < 12; k++) lens.push(1 + Math.floor(rand() * b.plain.length));
    for (const n of lens) {
      const at = 5 + Math.floor(rand() * 7);
      const out = Buffer.alloc(at + n + 9, 0xee);
      decompressInto('lz4', b.compressed, out, at, n, { partial: true });
      assert.ok(out.subarray(at, at + n).equals(b.plain.subarray(0, n)), `window of ${n} at ${at}`);
      assert.ok(out.subarray(0, at).every((x) => x === 0xee), `bytes before the window (${n})`);
      assert.ok(out.subarray(at + n).every((x) => x === 0xee), `bytes after the window (${n})`);
    }
    // The range form: input inside a larger buffer too (reads stay within [srcStart, srcEnd)).
    const src = Buffer.concat([Buffer.from([1, 2, 3]), b.compressed, Buffer.alloc(5, 0xff)]);
    const out = Buffer.alloc(b.plain.length + 8, 0xee);
    lz4DecodeRange(src, 3, 3 + b.compressed.length, out, 4, 4 + b.plain.length, false);
    assert.ok(out.subarray(4, 4 + b.plain.length).equals(b.plain));
    assert.ok(out.subarray(0, 4).every((x) => x === 0xee) && out.subarray(4 + b.plain.length).every((x) => x === 0xee));
  }
});

test('lz4: own greedy encoder round trips, 0padding is skipped', () => {
  const r = rng(99);
  for (const size of [0, 1, 5, 12, 13, 100, 4096, 65536, 1 << 20]) {
    const plain = sampleData(size, Math.floor(r() * 1000));
    const c = lz4CompressBlock(plain);
    assert.deepEqual(decompress('lz4', c, plain.length), plain, `size ${size}`);
    // EROFS 0padding: compressed data at the end of the pcluster, zeros before it.
    const padded = Buffer.concat([Buffer.alloc(4096 - (c.length % 4096)), c]);
    assert.deepEqual(decompress('lz4', padded, plain.length), plain, `padded size ${size}`);
  }
  const runs = Buffer.concat([Buffer.alloc(100_000, 7), Buffer.from('xyxyxyxyxyxyxyxyxyxyxyxyxyxy'.repeat(3000))]);
  assert.deepEqual(decompress('lz4', lz4CompressBlock(runs), runs.length), runs);
  assertEio(() => decompress('lz4', Buffer.alloc(64), 10), 'all-zero pcluster');
});

test('deflate: raw streams from zlib, exact and partial', () => {
  for (const level of [1, 6, 9]) {
    const c = zlib.deflateRawSync(DATA, { level });
    assert.deepEqual(decompress('deflate', c, DATA.length), DATA);
    for (const n of [1, 1000, 65536, DATA.length - 1]) {
      assert.deepEqual(decompress('deflate', c, n, { partial: true }), DATA.subarray(0, n));
    }
    assertEio(() => decompress('deflate', c, 1000), 'stream longer than outLen in exact mode');
    assertEio(() => decompress('deflate', c, DATA.length + 1), 'stream shorter than outLen');
    assertEio(() => decompress('deflate', c, DATA.length + 1, { partial: true }), 'short, partial');
    // A cut stream: fine for partial if the cut is past outLen, EIO in exact mode.
    const cut = c.subarray(0, c.length >> 1);
    assert.deepEqual(decompress('deflate', cut, 1000, { partial: true }), DATA.subarray(0, 1000));
    assertEio(() => decompress('deflate', cut, DATA.length), 'truncated stream');
  }
  // Partial decode of a stream that encodes far more than outLen (beyond the retry limit):
  // exercises the input-prefix search.
  const big = Buffer.concat([DATA, Buffer.alloc(8 << 20, 1), DATA]);
  const cb = zlib.deflateRawSync(big, { level: 6 });
  assert.deepEqual(decompress('deflate', cb, 5000, { partial: true }), big.subarray(0, 5000));
  assert.deepEqual(decompress('deflate', cb, big.length), big);
});

test('zstd: frames from the zstd CLI (levels, checksum, multi-frame), partial', () => {
  for (const args of [['-1'], ['-19'], ['-3', '--no-check'], ['-1', '--no-content-size'], ['-3', '--no-content-size', '--no-check']]) {
    const c = zstdCli(DATA, args);
    const fhd = c[4];
    assert.equal((fhd >> 6) !== 0 || (fhd & 0x20) !== 0, !args.includes('--no-content-size'), 'content size flag');
    assert.deepEqual(decompress('zstd', c, DATA.length), DATA, args.join(' '));
    for (const n of [1, 1000, 131073, DATA.length - 1]) {
      assert.deepEqual(decompress('zstd', c, n, { partial: true }), DATA.subarray(0, n));
    }
    assertEio(() => decompress('zstd', c, DATA.length + 1), 'short stream');
    const padded = Buffer.concat([Buffer.alloc(1000), c]);
    assert.deepEqual(decompress('zstd', padded, DATA.length), DATA, '0padding');
  }
  const a = DATA.subarray(0, 100_000);
  const b = DATA.subarray(100_000);
  const two = Buffer.concat([zstdCli(a, ['-3']), zstdCli(b, ['-3'])]);
  assert.deepEqual(decompress('zstd', two, DATA.length), DATA, 'two frames');
  assert.deepEqual(decompress('zstd', two, 150_000, { partial: true }), DATA.subarray(0, 150_000), 'two frames, partial');
  const twoStreamed = Buffer.concat([zstdCli(a, ['-3', '--no-content-size']), zstdCli(b, ['-3', '--no-content-size'])]);
  assert.deepEqual(decompress('zstd', twoStreamed, DATA.length), DATA, 'two frames without content size');
  // Single-segment frames with a content size smaller than outLen: a short stream.
  assertEio(() => decompress('zstd', zstdCli(a, ['-3']), a.length + 1, { partial: true }), 'content size < outLen');
  // Trailing garbage after a complete frame is ignored (the kernel stops when the output is full).
  const tail = Buffer.concat([zstdCli(a, ['-3']), Buffer.from('garbage!')]);
  assert.deepEqual(decompress('zstd', tail, a.length), a);
  // A frame asking for a 1 GiB window is refused before any allocation.
  const hdr = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, (20 << 3) | 0, 0x01, 0x00, 0x00]);
  assertEio(() => decompress('zstd', hdr, 10), 'huge window');
  // Dictionary frames are refused.
  const dict = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x21, 0x05, 10, 0x01, 0, 0, 0x61]);
  assertEio(() => decompress('zstd', dict, 10), 'dictionary frame');
});

test('zstd: a Huffman table that sends fzstd into an endless loop gives EIO within the time limit', () => {
  // Compressed literals whose FSE-coded Huffman weights use a table where one symbol has the
  // whole probability: every state reads 0 bits, and fzstd's weight loop never ends.
  const lit = 2 | (0 << 2) | (100 << 4) | (20 << 14);
  const body = [lit & 255, (lit >> 8) & 255, (lit >> 16) & 255, 5, 0xf0, 0x03, 0xff, 0xff, 0x01, ...Array(24).fill(0x55)];
  const bh = 1 | (2 << 1) | (body.length << 3);
  const frame = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x20, 100, bh & 255, (bh >> 8) & 255, (bh >> 16) & 255, ...body]);
  const t0 = Date.now();
  assertEio(() => decompress('zstd', frame, 100), 'endless Huffman weight loop');
  assert.ok(Date.now() - t0 < ZSTD_TIMEOUT_MS + 3000, `gave up after ${Date.now() - t0} ms`);
  // The same pcluster again (a fresh copy, as the reader would pass): refused at once.
  const t1 = Date.now();
  assertEio(() => decompress('zstd', Buffer.from(frame), 100), 'repeat of a timed-out pcluster');
  assert.ok(Date.now() - t1 < 500, `repeat took ${Date.now() - t1} ms`);
  // The decoder (a fresh worker) still works afterwards.
  const small = Buffer.from('zstd after a timeout '.repeat(50));
  assert.deepEqual(decompress('zstd', zstdCli(small, ['-3']), small.length), small);
});

test('lzma: MicroLZMA built from liblzma raw LZMA1, several lc/lp/pb, partial', () => {
  const specs = [[3, 0, 2], [0, 0, 0], [1, 3, 4], [4, 0, 0], [0, 4, 1]];
  const streams = microLzmaMany(DATA, specs.map(([lc, lp, pb]) => ({ lc, lp, pb })));
  specs.forEach(([lc, lp, pb], k) => {
    const c = streams[k];
    assert.deepEqual(decompress('lzma', c, DATA.length, { dictSize: 1 << 20 }), DATA, `lc${lc} lp${lp} pb${pb}`);
    for (const n of [1, 1000, DATA.length - 1]) {
      assert.deepEqual(decompress('lzma', c, n, { partial: true }), DATA.subarray(0, n));
    }
    assertEio(() => decompress('lzma', c, DATA.length + 1), 'end marker before outLen');
  });
  // A truncated stream is corrupt.
  assertEio(() => decompress('lzma', streams[0].subarray(0, streams[0].length >> 1), DATA.length), 'truncated');
  const small = microLzma(Buffer.from('hello, hello, hello erofs'), { dictSize: 4096 });
  assert.equal(decompress('lzma', small, 25).toString(), 'hello, hello, hello erofs');
  // Distances beyond the configured dictionary are corrupt.
  const r = rng(5);
  const block = Buffer.alloc(65536);
  for (let i = 0; i < block.length; i++) block[i] = Math.floor(r() * 256);
  const far = Buffer.concat([block, block]);
  const cf = microLzma(far);
  assert.deepEqual(decompress('lzma', cf, far.length, { dictSize: 1 << 20 }), far);
  assertEio(() => decompress('lzma', cf, far.length, { dictSize: 4096 }), 'distance beyond dictSize');
  // Properties beyond xz-embedded's limits (lc + lp > 4, pb > 4) are refused.
  assertEio(() => decompress('lzma', Buffer.from([~((0 * 5 + 1) * 9 + 4) & 255, 0, 0, 0, 0, 0]), 4), 'lc+lp>4');
  assertEio(() => decompress('lzma', Buffer.from([~225 & 255, 0, 0, 0, 0, 0]), 4), 'pb>4');
});

test('hostile input: random bytes, truncations and bit flips give EIO or outLen bytes, bounded', () => {
  const plain = sampleData(20_000, 3);
  const samples: Record<CompressionAlgorithm, Buffer> = {
    lz4: lz4CompressBlock(plain),
    deflate: zlib.deflateRawSync(plain),
    zstd: zstdCli(plain, ['-3']),
    lzma: microLzma(plain),
  };
  const zstdStreamed = zstdCli(plain, ['-3', '--no-content-size']);
  const r = rng(20261126);
  let outcomes = 0;
  const started = Date.now();
  for (const alg of Object.keys(samples) as CompressionAlgorithm[]) {
    const t0 = Date.now();
    for (let i = 0; i < 300; i++) {
      const good = alg === 'zstd' && i % 2 === 1 ? zstdStreamed : samples[alg];
      let input: Buffer;
      const kind = i % 3;
      if (kind === 0) {
        input = Buffer.alloc(1 + Math.floor(r() * 2000));
        for (let j = 0; j < input.length; j++) input[j] = Math.floor(r() * 256);
        if (alg === 'zstd' && i % 2 === 0) good.copy(input, 0, 0, 6); // get past the magic
        if (alg === 'lzma' && i % 2 === 0) input[0] = good[0];
      } else if (kind === 1) {
        input = good.subarray(0, Math.floor(r() * good.length));
      } else {
        input = Buffer.from(good);
        const flips = 1 + Math.floor(r() * 8);
        for (let j = 0; j < flips; j++) input[Math.floor(r() * input.length)] ^= 1 << Math.floor(r() * 8);
      }
      const outLen = r() < 0.5 ? plain.length : 1 + Math.floor(r() * plain.length * 2);
      const partial = r() < 0.5;
      try {
        const out = decompress(alg, input, outLen, { partial, dictSize: r() < 0.5 ? 1 << 16 : 0 });
        assert.equal(out.length, outLen, `${alg} mutant ${i}: output length`);
      } catch (e) {
        if (!(e instanceof ErofsError) || e.code !== 'EIO') {
          throw new Error(`${alg} mutant ${i} threw a non-EIO error: ${String(e)}`);
        }
      }
      outcomes++;
    }
    assert.ok(Date.now() - t0 < 30_000, `${alg}: 300 mutants took ${Date.now() - t0} ms`);
  }
  assert.equal(outcomes, 1200);
  assert.ok(Date.now() - started < 60_000);
});

test('contract: invalid lengths and unknown algorithms', () => {
  assert.equal(decompress('lz4', Buffer.from([0]), 0).length, 0);
  assertEio(() => decompress('lz4', Buffer.from([0x10, 0x61]), -1), 'negative outLen');
  assertEio(() => decompress('lz4', Buffer.from([0x10, 0x61]), 1.5), 'fractional outLen');
  assert.throws(() => decompress('nope' as CompressionAlgorithm, Buffer.from([1]), 1), ErofsError);
});
