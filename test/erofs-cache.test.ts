// The reader's byte-bounded metadata cache (LruCache) and the FUSE server's reply slab.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LruCache } from '../src/erofs/io.js';
import { replyBytes } from '../src/fuse/reply-bytes.js';

test('LruCache: never holds more than its budget, keeps what is used, drops what is not', () => {
  const cache = new LruCache<number>(64 * 1024);
  const page = (k: number) => Buffer.alloc(4096, k & 0xff);
  for (let k = 0; k < 1000; k++) {
    cache.set(k, page(k));
    // Key 0 is read after every insertion: it must survive all the churn.
    assert.equal(cache.get(0)?.[0], 0, `key 0 lost after inserting ${k}`);
    assert.ok(cache.size <= 64 * 1024, `size ${cache.size} over budget`);
  }
  // The most recent insertions are present; something old and unused is gone.
  assert.equal(cache.get(999)?.[0], 999 & 0xff);
  assert.equal(cache.get(998)?.[0], 998 & 0xff);
  assert.equal(cache.get(500), undefined);
  // Replacing a key does not count its old value twice.
  const before = cache.size;
  cache.set(999, page(7));
  assert.equal(cache.size, before);
  assert.equal(cache.get(999)?.[0], 7);
  // A value over half the budget is not cached (it would flush a whole generation).
  cache.set(5000, Buffer.alloc(40 * 1024));
  assert.equal(cache.get(5000), undefined);
  cache.clear();
  assert.equal(cache.size, 0);
  assert.equal(cache.get(0), undefined);
});

test('replyBytes: zeroed, never overlapping, also across slabs', () => {
  const held: Buffer[] = [];
  for (let i = 0; i < 2000; i++) {
    const n = 1 + ((i * 37) % 200);
    const b = replyBytes(n);
    assert.equal(b.length, n);
    assert.ok(b.every((x) => x === 0), `allocation ${i} not zeroed`);
    b.fill((i % 255) + 1);
    held.push(b);
  }
  // Every earlier allocation still holds only its own byte after all the writes.
  for (const [i, b] of held.entries()) assert.ok(b.every((x) => x === (i % 255) + 1), `allocation ${i} was overwritten`);
  const big = replyBytes(64 * 1024);
  assert.equal(big.length, 64 * 1024);
  assert.ok(big.every((x) => x === 0));
});
