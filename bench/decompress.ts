// Decompressor throughput: MB/s of decompressed output for each algorithm over a representative
// corpus (text-like data with short/long repeats, runs and incompressible bits; see
// test/support/corpus.ts), cut into pcluster-sized pieces as mkfs.erofs would: each piece is
// compressed independently and decoded with src/erofs/decompress exactly as the reader does.
// Compressors: our own greedy LZ4 block encoder and the `lz4` CLI (LZ4HC, -12) for LZ4,
// node:zlib for DEFLATE, the `zstd` CLI for ZSTD, python3's liblzma for MicroLZMA.

import { execFileSync } from 'node:child_process';
import zlib from 'node:zlib';
import { decompress, type CompressionAlgorithm } from '../src/erofs/decompress/index.js';
import { lz4CliBlocks, lz4CompressBlock } from '../test/support/lz4-block.js';
import { sampleData } from '../test/support/corpus.js';

export interface DecompressRow {
  algorithm: CompressionAlgorithm;
  /** How the input was compressed. */
  compressor: string;
  /** Decompressed size of one piece (a pcluster's extent). */
  pieceBytes: number;
  pieces: number;
  plainBytes: number;
  compressedBytes: number;
  ratio: number;
  /**
   * Decompressed bytes per CPU-second (user + system of this process) / 1e6, best of the timed
   * passes. CPU time rather than wall time, so that a busy machine does not skew the figure.
   */
  mbPerSec: number;
  /** Same, decoding only the first quarter of each piece (EROFS partial decoding). */
  partialMbPerSec: number;
  error?: string;
}

interface Piece {
  compressed: Buffer;
  plain: Buffer;
}

function timeIt(pieces: Piece[], alg: CompressionAlgorithm, frac: number, minMs: number): number {
  let best = 0;
  const t0 = Date.now();
  let passes = 0;
  while (passes < 3 || Date.now() - t0 < minMs) {
    let bytes = 0;
    const c0 = process.cpuUsage();
    for (const p of pieces) {
      const n = frac === 1 ? p.plain.length : Math.max(1, Math.floor(p.plain.length * frac));
      const out = decompress(alg, p.compressed, n, { partial: frac !== 1, dictSize: 1 << 20 });
      bytes += out.length;
    }
    const c = process.cpuUsage(c0);
    const secs = Math.max(1e-6, (c.user + c.system) / 1e6);
    best = Math.max(best, bytes / secs / 1e6);
    passes++;
    if (passes > 1000) break;
  }
  return best;
}

function split(data: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let p = 0; p < data.length; p += size) out.push(data.subarray(p, Math.min(data.length, p + size)));
  return out;
}

function zstd(plain: Buffer, contentSize: boolean): Buffer {
  const size = contentSize ? [`--stream-size=${plain.length}`] : ['--no-content-size'];
  return execFileSync('zstd', ['-q', '-3', '-c', ...size, '-'], { input: plain });
}

function lzmaPieces(chunks: Buffer[]): Piece[] {
  const script = `
import lzma, sys, struct
d = sys.stdin.buffer.read()
p = 0
while p < len(d):
    n = struct.unpack_from('<I', d, p)[0]; p += 4
    c = lzma.compress(d[p:p + n], format=lzma.FORMAT_RAW, filters=[{'id': lzma.FILTER_LZMA1, 'preset': 6, 'dict_size': 1 << 20}])
    p += n
    c = bytes([~((2 * 5 + 0) * 9 + 3) & 255]) + c[1:]
    sys.stdout.buffer.write(struct.pack('<I', len(c)) + c)
`;
  const input = Buffer.concat(chunks.flatMap((c) => [Buffer.from(Uint32Array.of(c.length).buffer), c]));
  const out = execFileSync('python3', ['-c', script], { input, maxBuffer: 1 << 30 });
  const res: Piece[] = [];
  for (let p = 0, k = 0; p < out.length; k++) {
    const n = out.readUInt32LE(p);
    res.push({ compressed: out.subarray(p + 4, p + 4 + n), plain: chunks[k] });
    p += 4 + n;
  }
  return res;
}

/** Runs every decompressor over `totalBytes` of corpus; each measurement lasts >= minMs. */
export function benchDecompress(opts: { totalBytes?: number; minMs?: number } = {}): DecompressRow[] {
  const total = opts.totalBytes ?? 8 << 20;
  const minMs = opts.minMs ?? 1000;
  const data = sampleData(total, 42);
  const cases: { alg: CompressionAlgorithm; compressor: string; pieceBytes: number; make: () => Piece[] }[] = [
    {
      alg: 'lz4', compressor: 'greedy block encoder (test/support)', pieceBytes: 65536,
      make: () => split(data, 65536).map((plain) => ({ plain, compressed: lz4CompressBlock(plain) })),
    },
    {
      alg: 'lz4', compressor: 'lz4 CLI -12 (LZ4HC)', pieceBytes: 65536,
      make: () => lz4CliBlocks(data, 12),
    },
    {
      alg: 'deflate', compressor: 'node:zlib level 6', pieceBytes: 65536,
      make: () => split(data, 65536).map((plain) => ({ plain, compressed: zlib.deflateRawSync(plain) })),
    },
    {
      // Frames with their content size, as mkfs.erofs writes them (one-shot path).
      alg: 'zstd', compressor: 'zstd CLI -3, content size', pieceBytes: 131072,
      make: () => split(data, 131072).map((plain) => ({ plain, compressed: zstd(plain, true) })),
    },
    {
      // Frames without a content size (streaming path).
      alg: 'zstd', compressor: 'zstd CLI -3, no content size', pieceBytes: 131072,
      make: () => split(data, 131072).map((plain) => ({ plain, compressed: zstd(plain, false) })),
    },
    {
      alg: 'lzma', compressor: 'liblzma preset 6 (MicroLZMA form)', pieceBytes: 131072,
      make: () => lzmaPieces(split(data, 131072)),
    },
  ];
  const rows: DecompressRow[] = [];
  for (const c of cases) {
    const row: DecompressRow = {
      algorithm: c.alg, compressor: c.compressor, pieceBytes: c.pieceBytes, pieces: 0,
      plainBytes: 0, compressedBytes: 0, ratio: NaN, mbPerSec: NaN, partialMbPerSec: NaN,
    };
    try {
      const pieces = c.make();
      row.pieces = pieces.length;
      row.plainBytes = pieces.reduce((a, p) => a + p.plain.length, 0);
      row.compressedBytes = pieces.reduce((a, p) => a + p.compressed.length, 0);
      row.ratio = row.plainBytes / row.compressedBytes;
      // Check correctness once before timing.
      for (const p of pieces) {
        if (!decompress(c.alg, p.compressed, p.plain.length, { dictSize: 1 << 20 }).equals(p.plain)) {
          throw new Error('decoded data differs');
        }
      }
      row.mbPerSec = timeIt(pieces, c.alg, 1, minMs);
      row.partialMbPerSec = timeIt(pieces, c.alg, 0.25, minMs);
    } catch (e) {
      row.error = e instanceof Error ? e.message : String(e);
    }
    rows.push(row);
  }
  return rows;
}

/** The rows as a Markdown table. */
export function decompressMarkdown(rows: DecompressRow[]): string {
  const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
  return [
    '| algorithm | compressed with | piece | ratio | MB/s per CPU-s (full) | MB/s per CPU-s (first 1/4, partial) |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows.map(
      (r) =>
        `| ${r.algorithm} | ${r.compressor} | ${r.pieceBytes / 1024} KiB | ${f(r.ratio, 2)} | ${f(r.mbPerSec)} | ${f(r.partialMbPerSec)} |` +
        (r.error ? ` error: ${r.error}` : ''),
    ),
  ].join('\n');
}

// `node dist/bench/decompress.js` runs this section alone.
if (process.argv[1] && /bench[/\\]decompress\.js$/.test(process.argv[1])) {
  const rows = benchDecompress();
  console.log(decompressMarkdown(rows));
}
