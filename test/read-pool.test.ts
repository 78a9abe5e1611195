// The read pool (src/daemon/read-pool.ts) moves file data reads (I/O + decompression) off the
// main thread. Checks: pooled bytes equal the main-thread reader's for every file of the LZMA and
// LZ4 images, also through the share layer's per-file path; the event loop keeps turning while 8 concurrent 1 MiB LZMA reads run (and
// measurably does not on the synchronous path); reader errors come back as ErofsError with their
// code; close() ends every worker thread.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { openImage, ErofsError, type ErofsReader } from '../src/erofs/index.js';
import { ReadPool } from '../src/daemon/read-pool.js';
import { FuseServer } from '../src/fuse/server.js';
import { Opcode } from '../src/fuse/abi.js';
import { DEFAULT_SHARE_OPTIONS } from '../src/share/registry.js';
import { DEFAULT_DAX_OPTIONS, ShareService } from '../src/share/service.js';
import { parseReply, readIn, request, serveOnce } from './support/fuse-wire.js';
import { SCRATCH_DIR, SHARED_IMAGES } from './support/paths.js';
import { regularFiles } from './support/reader-manifest.js';
import { Op, connectTestVmm, startInProcessDaemon } from './support/test-vmm/index.js';

/** Max lateness (ms) of a 2 ms interval timer on the main thread while `work` runs. */
async function probeDelay(work: () => Promise<unknown>): Promise<{ maxMs: number; ticks: number; elapsedMs: number }> {
  const period = 2;
  let last = performance.now();
  let maxMs = 0;
  let ticks = 0;
  const t = setInterval(() => {
    const now = performance.now();
    maxMs = Math.max(maxMs, now - last - period);
    last = now;
    ticks++;
  }, period);
  const start = performance.now();
  try {
    await work();
  } finally {
    clearInterval(t);
  }
  const now = performance.now();
  maxMs = Math.max(maxMs, now - last - period);
  return { maxMs, ticks, elapsedMs: now - start };
}

for (const name of ['lzma', 'lz4']) {
  test(`pooled reads equal reader.read for every file of ${name}.erofs`, async () => {
    const img = path.join(SHARED_IMAGES, `${name}.erofs`);
    const r = openImage(img);
    const pool = new ReadPool([{ path: img }], { threads: 2 });
    try {
      const files = regularFiles(r);
      assert.ok(files.length > 10, `${name}: too few files (${files.length})`);
      let bytes = 0;
      // Whole files (in 1 MiB pieces, all pieces of a file in flight at once) plus an unaligned
      // window and a read past EOF.
      await Promise.all(files.map(async (f) => {
        const pieces: Promise<Buffer>[] = [];
        for (let o = 0; o < Math.max(f.size, 1); o += 1 << 20) pieces.push(pool.read(0, f.nid, o, 1 << 20));
        const got = Buffer.concat(await Promise.all(pieces));
        const want = r.read(f.nid, 0, f.size);
        assert.equal(got.length, f.size, f.path);
        assert.ok(got.equals(want), `${name}/${f.path}: pooled bytes differ`);
        bytes += got.length;
        if (f.size > 5000) {
          const w = await pool.read(0, f.nid, 1234, 3001);
          assert.ok(w.equals(r.read(f.nid, 1234, 3001)), `${name}/${f.path}: window differs`);
        }
        assert.equal((await pool.read(0, f.nid, f.size + 10, 100)).length, 0);
      }));
      assert.ok(bytes > 1 << 20);
      // The share layer's per-file path (nothing shares here) reads a compressed file through the pool.
      const f = files.find((x) => x.size > 4096 && !r.storedPlain(x.nid))!;
      const service = new ShareService([{ name: name, paths: [img], reader: r }], {
        share: { ...DEFAULT_SHARE_OPTIONS, enabled: false }, fingerprint: { kind: 'off' }, dax: DEFAULT_DAX_OPTIONS, readPool: pool,
      });
      const tree = service.guestTree('vm');
      const ctx = { opcode: Opcode.LOOKUP, unique: 0n, nodeid: 1, uid: 0, gid: 0, pid: 0, inodeDax: false };
      let nodeid = 1;
      for (const part of f.path.split('/')) nodeid = tree.lookup(ctx, nodeid, Buffer.from(part, 'latin1')).nodeid;
      const completed = pool.stats().completed;
      const viaTree = parseReply(await serveOnce(new FuseServer(tree, { resume: true }), request({ opcode: Opcode.READ, nodeid }, readIn(0, 1000, 4096))));
      assert.ok(viaTree.body.equals(r.read(f.nid, 1000, 4096)), `${name}/${f.path} through the share layer`);
      assert.equal(pool.stats().completed, completed + 1, 'read by a pool worker');
      service.close();
      assert.equal(pool.stats().restarts, 0);
    } finally {
      await pool.close();
      r.close();
    }
  });
}

test('event loop keeps turning while 8 concurrent 1 MiB LZMA reads run through the pool', async () => {
  const img = path.join(SHARED_IMAGES, 'lzma.erofs');
  const probeReader = openImage(img);
  const files = regularFiles(probeReader).sort((a, b) => b.size - a.size);
  probeReader.close();
  // 8 distinct windows of up to 1 MiB over the largest LZMA files (distinct, so the decompressed
  // block caches help neither side).
  const jobs: { nid: number; offset: number }[] = [];
  for (const f of files) {
    for (let offset = 0; offset < f.size && jobs.length < 8; offset += 1 << 20) jobs.push({ nid: f.nid, offset });
    if (jobs.length === 8) break;
  }
  assert.equal(jobs.length, 8);
  assert.ok(files[0]!.size >= 1 << 20, 'lzma.erofs should hold a file of 1 MiB or more');
  // Synchronous path: the same reads on the main thread, started "concurrently" the way a FUSE
  // server does (each in its own macrotask), so the probe gets chances to run between them.
  const sync = openImage(img);
  let syncBytes = 0;
  const syncRun = await probeDelay(() => Promise.all(jobs.map((j) => new Promise<void>((res) => setImmediate(() => {
    syncBytes += sync.read(j.nid, j.offset, 1 << 20).length;
    res();
  })))));
  sync.close();
  let threads = 0;
  {
    // Scheduling noise on a loaded 2-core host (other test processes) can stall any thread once;
    // a pool that decoded on the loop would stall it in every attempt. Best of up to 3 attempts.
    const bound = Math.max(50, syncRun.maxMs / 4);
    const attempts: string[] = [];
    let best = Infinity;
    for (let attempt = 0; attempt < 3 && best >= bound; attempt++) {
      // A fresh pool each time: no attempt profits from a previous one's decompressed-block cache.
      const pool = new ReadPool([{ path: img }]);
      threads = pool.threads;
      await Promise.all([0, 1, 2, 3].map((i) => pool.read(0, jobs[i]!.nid, 0, 16))); // threads up
      let pooledBytes = 0;
      const pooled = await probeDelay(() => Promise.all(jobs.map(async (j) => {
        const b = await pool.read(0, j.nid, j.offset, 1 << 20);
        pooledBytes += b.length;
      })));
      await pool.close();
      assert.equal(pooledBytes, syncBytes);
      assert.ok(pooledBytes > 3 << 20, `only ${pooledBytes} bytes read`);
      // The probe really ran during the pooled reads (the loop was not just idle-waiting at the end).
      assert.ok(pooled.ticks >= 5, `pooled attempt ${attempt}: only ${pooled.ticks} probe ticks`);
      attempts.push(`max delay ${pooled.maxMs.toFixed(1)} ms over ${pooled.elapsedMs.toFixed(0)} ms (${pooled.ticks} ticks)`);
      best = Math.min(best, pooled.maxMs);
    }
    const figures = `sync: max delay ${syncRun.maxMs.toFixed(1)} ms over ${syncRun.elapsedMs.toFixed(0)} ms (${syncRun.ticks} ticks); ` +
      `pool (${threads} threads): ${attempts.join('; ')}`;
    console.log(figures);
    // Every synchronous 1 MiB LZMA decode blocks the loop for its whole duration (a FUSE server
    // starting the 8 reads together stalls for all of them). With the pool the loop only waits
    // for the OS scheduler (the workers compete with the main thread for 2 cores) and for
    // handling replies: a quarter of the synchronous stall, or 50 ms, whichever is larger, leaves
    // room for a loaded CI host while still failing if decoding ran on the loop.
    assert.ok(best < bound, figures);
    // The synchronous path really stalls (the comparison means something).
    assert.ok(syncRun.maxMs > 50, figures);
  }
});

test('errors from a corrupt image come back as ErofsError with the reader\'s code', async () => {
  const src = path.join(SHARED_IMAGES, 'lzma.erofs');
  fs.mkdirSync(SCRATCH_DIR, { recursive: true });
  const bad = path.join(SCRATCH_DIR, `read-pool-corrupt-${process.pid}.erofs`);
  const data = fs.readFileSync(src);
  const pristine = openImage(src);
  const files = regularFiles(pristine);
  pristine.close();
  // Garbage over file data only: the superblock and every block holding (or following) an inode
  // stay intact, so inodes and their compression indexes parse and the decoders meet the damage.
  const metaBlkAddr = data.readUInt32LE(1024 + 40);
  const blkSize = 1 << data[1024 + 12]!;
  const keep = new Set<number>([0, 1]);
  for (const f of files) {
    const at = metaBlkAddr * blkSize + f.nid * 32;
    const b = Math.floor(at / blkSize);
    keep.add(b);
    keep.add(b + 1);
  }
  for (let b = 0; b * blkSize < data.length; b++) {
    if (keep.has(b) || b % 3 !== 0) continue;
    for (let i = b * blkSize; i < Math.min(data.length, (b + 1) * blkSize); i++) data[i] = (i * 131 + 7) & 0xff;
  }
  fs.writeFileSync(bad, data);
  const r = openImage(bad);
  const pool = new ReadPool([{ path: bad }], { threads: 2 });
  try {
    const codes = new Map<string, number>();
    for (const f of files) {
      let want: string;
      try {
        r.read(f.nid, 0, f.size);
        assert.equal(r.getAttr(f.nid).size, f.size);
        want = 'ok';
      } catch (e) {
        assert.ok(e instanceof ErofsError, `main-thread read threw ${String(e)}`);
        want = e.code;
      }
      let got: string;
      try {
        await pool.read(0, f.nid, 0, f.size);
        got = 'ok';
      } catch (e) {
        assert.ok(e instanceof ErofsError, `pooled read rejected with ${String(e)}`);
        got = e.code;
      }
      assert.equal(got, want, f.path);
      codes.set(got, (codes.get(got) ?? 0) + 1);
    }
    assert.ok((codes.get('EIO') ?? 0) > 0, `no EIO from the corrupt image: ${JSON.stringify([...codes])}`);
    // Bad arguments are errors too, not crashes.
    await assert.rejects(pool.read(7, 1, 0, 1), (e: unknown) => e instanceof ErofsError && e.code === 'EINVAL');
    await assert.rejects(pool.read(0, 0x7fffffff, 0, 4096), (e: unknown) => e instanceof ErofsError);
    assert.equal(pool.stats().restarts, 0, 'no worker died');
  } finally {
    await pool.close();
    r.close();
    fs.rmSync(bad, { force: true });
  }
});

test('close() ends every worker; reads after close fail with EIO; no fds leak', async () => {
  const img = path.join(SHARED_IMAGES, 'lz4.erofs');
  const fdCount = (): number => fs.readdirSync('/proc/self/fd').length;
  const threadCount = (): number => fs.readdirSync('/proc/self/task').length;
  const r = openImage(img);
  const f = regularFiles(r).find((x) => x.size > 100_000)!;
  r.close();
  const fds0 = fdCount();
  for (let cycle = 0; cycle < 3; cycle++) {
    const pool = new ReadPool([{ path: img }], { threads: 3 });
    assert.equal(pool.liveWorkers, 3);
    const inflight = [pool.read(0, f.nid, 0, f.size), pool.read(0, f.nid, 4096, 8192)];
    await Promise.all(inflight);
    const threadsOpen = threadCount();
    await pool.close();
    assert.equal(pool.liveWorkers, 0);
    assert.ok(threadCount() <= threadsOpen - 3, `threads: ${threadsOpen} before close, ${threadCount()} after`);
    await assert.rejects(pool.read(0, f.nid, 0, 10), (e: unknown) => e instanceof ErofsError && e.code === 'EIO');
  }
  assert.equal(fdCount(), fds0, 'fds opened by the workers must be closed');
});

test('daemon: a GETATTR on queue 2 is answered while queue 1 reads 1 MiB windows of an LZMA file', async () => {
  // Head-of-line blocking measured end to end (in-process daemon, test VMM): with --read-threads 0 the
  // GETATTR waits for the decode; with the pool it does not.
  const measure = async (readThreads: number | undefined): Promise<{ maxMs: number; medianMs: number; readMs: number; getattrs: number }> => {
    const d = await startInProcessDaemon({ images: [path.join(SHARED_IMAGES, 'lzma.erofs')], numRequestQueues: 2, readThreads });
    try {
      const t = await connectTestVmm(d.socketPath, { requestQueues: 2 });
      try {
        const e = await t.client.resolve('big/text-3m');
        const { fh } = await t.client.open(e.nodeid);
        const size = Number(e.attr.size);
        assert.ok(size >= 1 << 20);
        await t.client.read(fh, 0, 4096, { queue: 1 }); // workers up, code warm
        await t.client.call(Op.GETATTR, e.nodeid, [Buffer.alloc(16)], 256, { queue: 2 });
        const lat: number[] = [];
        let reading = true;
        const t0 = performance.now();
        const reads = Promise.all([0, 1, 2].map((i) => t.client.read(fh, (i * (1 << 19)) % Math.max(1, size - (1 << 20)), 1 << 20, { queue: 1 })))
          .finally(() => { reading = false; });
        while (reading) {
          const g0 = performance.now();
          await t.client.call(Op.GETATTR, e.nodeid, [Buffer.alloc(16)], 256, { queue: 2 });
          lat.push(performance.now() - g0);
        }
        const got = await reads;
        const readMs = performance.now() - t0;
        for (const b of got) assert.equal(b.length, 1 << 20);
        lat.sort((a, b) => a - b);
        return { maxMs: lat[lat.length - 1] ?? 0, medianMs: lat[lat.length >> 1] ?? 0, readMs, getattrs: lat.length };
      } finally {
        t.close();
      }
    } finally {
      await d.stop();
    }
  };
  const sync = await measure(0);
  const pooled = await measure(undefined);
  const fmt = (m: typeof sync): string => `GETATTR median ${m.medianMs.toFixed(1)} ms, max ${m.maxMs.toFixed(1)} ms (${m.getattrs} answered during ${m.readMs.toFixed(0)} ms of reads)`;
  const figures = `--read-threads 0: ${fmt(sync)}; pool: ${fmt(pooled)}`;
  console.log(figures);
  // On the synchronous path the GETATTR sent first waits for the decodes: (almost) nothing is
  // answered while they run, and that one reply waits most of the read time — on a quiet or a
  // loaded host alike, so no absolute threshold is assumed. With the pool GETATTRs keep being
  // answered while the reads run; the median (not the max: one scheduling hiccup of a loaded
  // 2-core host can delay any single reply; the event-loop test above bounds the max) stays
  // small against the pooled read time.
  assert.ok(sync.getattrs <= 3, figures);
  assert.ok(sync.maxMs >= sync.readMs * 0.5, figures);
  assert.ok(pooled.getattrs >= 10, figures);
  assert.ok(pooled.medianMs < Math.max(10, pooled.readMs / 4), figures);
});
