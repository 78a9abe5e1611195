// Deterministic, compressible test data for compression tests and benchmarks.

/** A small xorshift PRNG so data and mutations are reproducible from a seed. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

/**
 * Text-like data with repeats at short and long distances, runs, and some incompressible parts:
 * roughly what a root filesystem's files look like to a compressor (ratio ~2-4x).
 */
export function sampleData(size: number, seed = 1): Buffer {
  const r = rng(seed);
  const words = [
    'erofs', 'virtio', 'fuse', 'inode', 'the', 'and', 'struct', 'return', 'static', '0x7f',
    'int', 'void', '\n', ' ', '  ', '{', '}', '(', ')', ';', 'config', 'lib', '/usr/share/',
  ].map((w) => Buffer.from(w));
  const out = Buffer.alloc(size);
  let p = 0;
  while (p < size) {
    const k = r();
    if (k < 0.7) {
      const w = words[Math.floor(r() * words.length)];
      p += w.copy(out, p);
    } else if (k < 0.85 && p > 1024) {
      // Repeat something from up to 32 KiB back.
      const dist = 1 + Math.floor(r() * Math.min(p, 32768));
      const len = 4 + Math.floor(r() * 60);
      for (let i = 0; i < len && p < size; i++, p++) out[p] = out[p - dist];
    } else if (k < 0.9) {
      const len = 1 + Math.floor(r() * 100);
      out.fill(Math.floor(r() * 256), p, Math.min(size, p + len));
      p += len;
    } else {
      const len = 1 + Math.floor(r() * 40);
      for (let i = 0; i < len && p < size; i++, p++) out[p] = Math.floor(r() * 256);
    }
  }
  return out;
}
