// Real QEMU 7.2 guests (no DAX window): one erofs-vfsd process, two vhost-user sockets
// (one VM each), digest-plain-a and digest-plain-b (~180 of ~1,100 files differ) in one trust
// domain. Guest 1 walks a, guest 2 walks b (every file's stat, xattrs and SHA-256): both must
// equal the host kernel's view of their image. Host memory holding file data must grow by about
// the unique content of a+b with --share=on, and by about the sum with --share=off.
//
// Which measure (test/support/qemu-share.ts has the details): after `drop_caches`, the ASSERTED
// figure is the page-cache residency of private copies of the two image files, by mincore
// (util-linux fincore), plus the allocated size of the daemon's memfds (blobs, tail pages;
// /proc/PID/fd, st_blocks), sampled after each QEMU has exited. That is exactly the host memory
// holding file data for this daemon and nothing else: other work on the host cannot enter it
// (the images are private copies), and it is deterministic (same figures run after run, to the
// 32 KiB read granule). The system-wide /proc/meminfo deltas (Cached, Shmem, file LRU) the issue
// names are printed beside it, but not asserted: on this shared 2-core host other jobs move
// Cached by ~100 MiB between samples (20x the whole signal). Not counted by either: the
// daemon's heap (its metadata and decompressed-pcluster caches, bounded by the reader's cache
// size; printed as "daemon anon").
//
// Without a DAX window the daemon serves plain READs of files stored uncompressed in place from
// the first holder's image (guest 2's shared files come from image a's page cache; image b's copy
// is never touched) and the reader maps images MADV_RANDOM (no 8 MiB read-around that pulled
// whole images in). Nothing is materialised for a guest without a window: compressed files are
// decompressed from the first holder's image (blobs are for DAX mappings).
//
// Measured here (MiB, 2026-11-27; unique content of a+b 6.32, sum 10.02):
//  - digest-plain: share=on 7.14 (1.13x unique; 1.03x the in-place floor of 6.92 = the images'
//    metadata pages 0.85 + page-aligned unique data 6.07), share=off 10.42 (1.04x sum), on/off 0.69.
//    Before this change: 20.4 vs 10.4 (inline-tail files copied into memfds on top of whole images).
//  - digest-lz4 (share=on only, to keep the test near 2 min): 3.4-3.7 (0.53-0.58x unique: a's compressed
//    pages + b's metadata and new compressed pages; no blobs). Before: 15.8; with blobs filled for
//    windowless guests it would be ~8.7 (the same plus 5.32 of blobs, measured separately).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { SHARED_IMAGES } from './support/paths.js';
import { diffManifests, loadManifest } from './support/manifest.js';
import { formatReport, inPlaceFloor, measureQemuSharing, type QemuShareReport } from './support/qemu-share.js';

function checkGuests(r: QemuShareReport): void {
  for (const g of r.guests) {
    const tail = `${g.run.console.split('\n').slice(-15).join('\n')}\n--- daemon ---\n${r.daemonLog.slice(-3000)}`;
    assert.ok(g.run.done, `guest for ${g.image} did not finish\n${tail}`);
    assert.equal(g.walk?.ok, true, `walk of ${g.image} reported errors: ${JSON.stringify(g.walk)}\n${tail}`);
    assert.ok(g.run.manifest, `${g.image}: the walk manifest did not come back`);
    const want = loadManifest(path.join(SHARED_IMAGES, `${g.image}.expected.json`));
    const diff = diffManifests(want, g.run.manifest, [], 30).map((l) => (l.length > 300 ? `${l.slice(0, 300)}…` : l));
    assert.deepEqual(diff, [], `guest view of ${g.image} through the shared daemon differs from the host kernel view`);
  }
}

interface DomainStats { backings: number; backingBytes: number; hits: number; sharedReads: number; perFileReads: number }
function domain(r: QemuShareReport): DomainStats {
  const d = (r.stats as { domains?: Record<string, DomainStats> } | undefined)?.domains?.['app'];
  assert.ok(d, `no stats for domain app: ${JSON.stringify(r.stats)}`);
  return d;
}

const mib = (n: number): string => (n / 1048576).toFixed(2);

test('two QEMU guests, two image versions, one daemon: correct data; host file-data memory grows by about the unique content (plain: share on vs off; lz4: on)', async () => {
  const on = await measureQemuSharing({ pair: 'digest-plain', share: true });
  for (const l of formatReport(on)) console.log(`# ${l}`);
  checkGuests(on);
  const off = await measureQemuSharing({ pair: 'digest-plain', share: false });
  for (const l of formatReport(off)) console.log(`# ${l}`);
  checkGuests(off);
  const c = on.content;
  const floor = inPlaceFloor('digest-plain');
  console.log(`# digest-plain: share=on ${mib(on.growthAfterBoth)} MiB, share=off ${mib(off.growthAfterBoth)} MiB, unique ${mib(c.uniqueBytes)} MiB, ` +
    `sum ${mib(c.sumBytes)} MiB, in-place floor ${mib(floor.bytes)} MiB (metadata ${mib(floor.metadataBytes)} + unique page-aligned data ${mib(floor.uniqueDataBytes)}); ` +
    `on/unique ${(on.growthAfterBoth / c.uniqueBytes).toFixed(2)}, on/floor ${(on.growthAfterBoth / floor.bytes).toFixed(2)}, on/off ${(on.growthAfterBoth / off.growthAfterBoth).toFixed(2)}`);

  // One backing per distinct non-empty (digest, size) of a+b, holding exactly the unique bytes:
  // guest 2 found every file it has in common with version a already there.
  const d = domain(on);
  assert.equal(d.backings, c.distinctNonEmpty, 'one shared backing per distinct file');
  assert.equal(d.backingBytes, c.uniqueBytes, 'backings hold the unique content once');
  assert.ok(d.hits >= c.nonEmptyInodes - c.distinctNonEmpty, `hits ${d.hits}: files of b equal to files of a joined their backing`);
  assert.equal(d.perFileReads, 0, 'no read took the per-file path with sharing on');
  assert.ok(d.sharedReads >= c.nonEmptyFiles, `shared reads ${d.sharedReads}`);
  // Every file of the plain images is stored uncompressed: READs come from the images in place,
  // no memfd copy is made without a DAX window.
  assert.equal(on.blobsAfterBoth, 0, 'no memfd copies of uncompressed files without DAX');

  // THE CRITERION. Host file-data growth after both guests is close to the unique
  // content, and clearly below what --share=off (both images, i.e. the sum) holds.
  // Tolerance 1.25x unique: serving from EROFS images must also hold the pages guests' stat and
  // readdir touch — inodes, directories, the digest xattrs and the inline data of both images
  // (0.85 MiB here, 13% of the unique content) — and the reader reads in 32 KiB granules. The
  // tight bound is against the floor computed from the images' layout (inPlaceFloor): within 5%.
  assert.ok(on.growthAfterBoth <= 1.25 * c.uniqueBytes,
    `share=on host file data grew ${mib(on.growthAfterBoth)} MiB > 1.25 x unique ${mib(c.uniqueBytes)} MiB`);
  assert.ok(on.growthAfterBoth <= 1.05 * floor.bytes,
    `share=on host file data grew ${mib(on.growthAfterBoth)} MiB > 1.05 x the in-place floor ${mib(floor.bytes)} MiB`);
  assert.ok(on.growthAfterBoth < 0.8 * off.growthAfterBoth,
    `share=on ${mib(on.growthAfterBoth)} MiB is not clearly below share=off ${mib(off.growthAfterBoth)} MiB`);
  // The same figure split page by page (mincore on the image files, imageLayout): the pages
  // holding file bodies — the page-aligned data of the files, which is what sharing is about —
  // are the unique body content once (the sharing target, <= 1.05x unique); the rest is
  // the two images' metadata and inline data, which each image has whether files share or not.
  assert.ok(on.bodyGrowthAfterBoth <= 1.05 * on.floor.uniqueDataBytes,
    `share=on file-body pages grew ${mib(on.bodyGrowthAfterBoth)} MiB > 1.05 x the unique body pages ${mib(on.floor.uniqueDataBytes)} MiB`);
  assert.ok(on.otherGrowthAfterBoth <= on.floor.metadataBytes,
    `share=on metadata/inline pages grew ${mib(on.otherGrowthAfterBoth)} MiB, more than the images have (${mib(on.floor.metadataBytes)} MiB)`);
  assert.ok(off.bodyGrowthAfterBoth > 1.3 * on.bodyGrowthAfterBoth,
    `share=off file-body pages ${mib(off.bodyGrowthAfterBoth)} MiB are not well above share=on's ${mib(on.bodyGrowthAfterBoth)} MiB`);
  // Guest 2 adds what b does not share with a, plus b's metadata — not b's shared data.
  assert.ok(on.growthAfterBoth - on.growthAfterA <= (c.uniqueBytes - on.contentA.uniqueBytes) + floor.metadataBytes + (256 << 10),
    `guest 2 added ${mib(on.growthAfterBoth - on.growthAfterA)} MiB`);
  // --share=off: no backings, every read on the per-file path, no blobs; both images are read.
  const doff = domain(off);
  assert.equal(doff.backings, 0);
  assert.ok(doff.perFileReads >= c.nonEmptyFiles, `share=off per-file reads ${doff.perFileReads}`);
  assert.equal(off.blobsAfterBoth, 0);
  assert.ok(off.growthAfterBoth >= 0.95 * c.sumBytes, `share=off grew ${mib(off.growthAfterBoth)} MiB, less than the sum ${mib(c.sumBytes)} MiB`);

  // The LZ4 pair with sharing on. Without a window nothing is materialised: compressed files
  // are decompressed from their first holder's image (guest 2's shared files from image a's
  // compressed pages, through the reader's bounded pcluster cache), uncompressed ones read in
  // place. A blob per compressed file would be a third copy (compressed pages, the reader's
  // cache, the memfd) next to the guest's own: +5.3 MiB of memfds here.
  const lz4 = await measureQemuSharing({ pair: 'digest-lz4', share: true });
  for (const l of formatReport(lz4)) console.log(`# ${l}`);
  checkGuests(lz4);
  const dl = domain(lz4);
  const lc = lz4.content;
  const lfloor = inPlaceFloor('digest-lz4');
  console.log(`# digest-lz4: share=on ${mib(lz4.growthAfterBoth)} MiB, unique ${mib(lc.uniqueBytes)} MiB, ` +
    `both images' metadata and compressed pages + unique uncompressed data ${mib(lfloor.bytes)} MiB; on/unique ${(lz4.growthAfterBoth / lc.uniqueBytes).toFixed(2)}`);
  assert.equal(dl.backings, lc.distinctNonEmpty, 'lz4: one shared backing per distinct file');
  assert.equal(dl.backingBytes, lc.uniqueBytes, 'lz4: backings hold the unique content once');
  assert.equal(dl.perFileReads, 0, 'lz4: no read took the per-file path with sharing on');
  assert.equal(lz4.blobsAfterBoth, 0, 'lz4: no memfd copies without DAX');
  // The criterion again: compressed, the host holds less than the unique content; and guest 2
  // does not pull in b's compressed copy of what it shares with a (b's pages are at most what
  // b alone needs beyond a: its metadata, its compressed new content).
  assert.ok(lz4.growthAfterBoth <= 1.25 * lc.uniqueBytes,
    `lz4 share=on host file data grew ${mib(lz4.growthAfterBoth)} MiB > 1.25 x unique ${mib(lc.uniqueBytes)} MiB`);
  assert.ok(lz4.growthAfterBoth <= 1.05 * lfloor.bytes,
    `lz4 share=on host file data grew ${mib(lz4.growthAfterBoth)} MiB > 1.05 x both images' metadata/compressed pages + unique plain data ${mib(lfloor.bytes)} MiB`);
});
