// Shared pages across images and guests, end to end: one `erofs-vfsd serve` process
// with two --socket-path values (one VM each, separate daemon connections, one share registry);
// two test-VMM guests with a DAX window mount version a and version b of an image and read every
// file through the window.
//
// Method for "same physical pages": /proc/self/pagemap (we run as root) for the window pages of
// each guest. Both test VMMs live in this test process, so their windows are two different
// virtual ranges of the same process; a shared backing shows as equal page frame numbers.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  O_DIRECT, PAGE, compareFrames, connectDaxGuest, image, manifest, readAllThroughWindow, roundUp, startMultiDaemon, windowFor,
} from './support/share-harness.js';
import { SCRATCH_DIR } from './support/paths.js';
import type { Manifest } from './support/manifest.js';

const FOPEN_DIRECT_IO = 1;

function checkContent(m: Manifest, views: Map<string, { sha256: string; tailZero: boolean; size: number }>, label: string): void {
  let files = 0;
  let tails = 0;
  for (const [p, e] of Object.entries(m)) {
    if (e.type !== 'file' || !e.size) continue;
    const v = views.get(p);
    assert.ok(v, `${label}: ${p} was read`);
    assert.equal(v.sha256, e.sha256, `${label}: ${p} content through the DAX window`);
    assert.ok(v.tailZero, `${label}: ${p} shows zeros past EOF in its last mapped page`);
    files++;
    if (e.size % PAGE) tails++;
  }
  assert.ok(files > 1000, `${label}: read ${files} files`);
  assert.ok(tails > 100, `${label}: ${tails} files end inside a page (EOF-tail rule exercised)`);
}

async function pairRun(pair: 'plain' | 'lz4', dialect: 'shmem' | 'fs-map', extraArgs: string[]): Promise<void> {
  const ma = manifest(`digest-${pair}-a`);
  const mb = manifest(`digest-${pair}-b`);
  const window = windowFor(ma, mb);
  const d = await startMultiDaemon(
    [`a=${image(`digest-${pair}-a`)},domain=app`, `b=${image(`digest-${pair}-b`)},domain=app`], 2,
    ['--dax-window-size', String(window), '--dax-protocol', dialect, ...extraArgs],
  );
  try {
    const ga = await connectDaxGuest(d.sockets[0]!, window, dialect);
    const gb = await connectDaxGuest(d.sockets[1]!, window, dialect);
    try {
      // Both guests see a two-image export (a/ and b/); guest A reads a, guest B reads b.
      assert.ok(ga.client.info!.mapAlignment > 0, 'map_alignment advertised with a window');
      const prefix = (m: Manifest, dir: string): Manifest => {
        const out: Manifest = {};
        for (const [p, e] of Object.entries(m)) if (p) out[`${dir}/${p}`] = e;
        return out;
      };
      const pa = prefix(ma, 'a');
      const pb = prefix(mb, 'b');
      const va = await readAllThroughWindow(ga, pa);
      const vb = await readAllThroughWindow(gb, pb);
      checkContent(pa, va, `guest A ${pair}-a`);
      checkContent(pb, vb, `guest B ${pair}-b`);
      // Compare per original path.
      const strip = (v: typeof va) => new Map([...v].map(([p, x]) => [p.slice(2), x]));
      const cmp = compareFrames(strip(va), strip(vb));
      console.log(`# ${pair}/${dialect} ${extraArgs.join(' ')}: ${JSON.stringify(cmp)}`);
      assert.ok(cmp.identical > 900, `${cmp.identical} identical files`);
      assert.equal(cmp.identicalSharedFrames, cmp.identical, 'identical files resolve to the same physical pages in both guests');
      assert.ok(cmp.changed > 100, `${cmp.changed} changed files`);
      assert.equal(cmp.changedSharingAFrame, 0, 'changed files share no page with their other version');
      // Inside one image, duplicate files (dups/copy-*) share too.
      const dups = [...va.values()].filter((v) => /^a\/dups\/copy-\d+\.txt$/.test(v.path));
      assert.ok(dups.length >= 2);
      for (const v of dups) assert.deepEqual(v.frames, dups[0]!.frames, `${v.path} shares with ${dups[0]!.path}`);

      const s = await d.stats();
      const app = s.domains['app']!;
      assert.ok(app, 'stats for domain app');
      assert.ok(app.hits >= cmp.identical, `hits ${app.hits}`);
      assert.ok(app.backings > 0 && app.sharedBytes > 0, `backings ${app.backings}, shared bytes ${app.sharedBytes}`);
      assert.ok(app.mappedRanges >= va.size, `mapped ranges ${app.mappedRanges}`);
      assert.deepEqual(s.guests.map((g) => [g.window, g.dialect]), [[true, dialect], [true, dialect]]);
      console.log(`# stats app: ${JSON.stringify(app)}`);

      // FUSE_READ of a shared file reads its backing; O_DIRECT takes the per-file path.
      const big = [...Object.entries(mb)].find(([p, e]) => e.type === 'file' && (e.size ?? 0) > 100_000 && ma[p]?.sha256 === e.sha256)!;
      const b1 = (await gb.client.lookup(1n, 'b')).nodeid;
      const nodeid = (await gb.client.resolve(`b/${big[0]}`)).nodeid;
      void b1;
      const before = (await d.stats()).domains['app']!;
      const { fh, openFlags } = await gb.client.open(nodeid, O_DIRECT);
      assert.ok(openFlags & FOPEN_DIRECT_IO, 'O_DIRECT open gets FOPEN_DIRECT_IO');
      const parts: Buffer[] = [];
      for (let off = 0; off < big[1].size!; off += 65536) parts.push(await gb.client.read(fh, off, 65536));
      await gb.client.release(fh);
      const { createHash } = await import('node:crypto');
      assert.equal(createHash('sha256').update(Buffer.concat(parts)).digest('hex'), big[1].sha256, 'O_DIRECT data');
      const afterDirect = (await d.stats()).domains['app']!;
      assert.equal(afterDirect.perFileReads - before.perFileReads, parts.length, 'every O_DIRECT read took the per-file path');
      assert.equal(afterDirect.sharedReads, before.sharedReads, 'no O_DIRECT read touched the shared backing');
      const h2 = await gb.client.open(nodeid, 0);
      const plainRead = await gb.client.read(h2.fh, 0, 65536);
      await gb.client.release(h2.fh);
      assert.equal(plainRead.length, Math.min(65536, big[1].size!));
      const afterShared = (await d.stats()).domains['app']!;
      assert.equal(afterShared.sharedReads - afterDirect.sharedReads, 1, 'a buffered READ is served from the shared backing');
      assert.equal(afterShared.perFileReads, afterDirect.perFileReads);
    } finally {
      ga.close();
      gb.close();
    }
  } finally {
    await d.stop();
  }
}

test('two guests, digest-plain-a and -b (SHMEM_MAP): content, identical files on the same frames, changed files apart, O_DIRECT, stats', async () => {
  await pairRun('plain', 'shmem', []);
});

test('two guests, digest-lz4-a and -b (FS_MAP dialect): shared materialised blobs', async () => {
  await pairRun('lz4', 'fs-map', []);
});

test('two guests, digest-plain-a and -b with fingerprints computed by the daemon (sidecar index)', async () => {
  const dir = path.join(SCRATCH_DIR, `share-fp-index-${process.pid}`);
  fs.rmSync(dir, { recursive: true, force: true });
  try {
    await pairRun('plain', 'shmem', ['--fingerprint', 'compute', '--fingerprint-index', dir]);
    assert.ok(fs.readdirSync(dir).length > 0, 'sidecar index written');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('without a window nothing DAX-related is advertised', async () => {
  const d = await startMultiDaemon([image('digest-plain-a')], 1);
  try {
    const { connectTestVmm } = await import('./support/test-vmm/index.js');
    const t = await connectTestVmm(d.sockets[0]!);
    try {
      assert.equal(t.client.info!.mapAlignment, 0);
      assert.equal(t.client.info!.flags2 & 2, 0, 'no FUSE_HAS_INODE_DAX');
      const e = await t.client.resolve('big/rand-2m');
      assert.equal(e.attr.flags & 2, 0, 'no FUSE_ATTR_DAX');
      const s = await d.stats();
      assert.deepEqual(s.guests.map((g) => g.window), [false]);
    } finally {
      t.close();
    }
  } finally {
    await d.stop();
  }
});

void roundUp;
