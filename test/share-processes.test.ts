// Sharing between separate daemon processes: two `erofs-vfsd serve` processes with the
// same --blob-dir, one VM each, serve digest-lz4-a and digest-lz4-b (every file is materialised,
// so it lands in the blob directory, created atomically and named by domain and digest). The
// second process finds the first one's complete blobs: identical files map the same page-cache
// frames of the same blob file. Frames compared with /proc/self/pagemap (root) of the window pages
// of the two test VMMs, which live in this test process.
// Also: a guest reset releases the guest's mappings (stats: mapped ranges back to 0).
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { SCRATCH_DIR } from './support/paths.js';
import { openImage } from '../src/erofs/index.js';
import { PAGE, compareFrames, connectDaxGuest, image, manifest, readAllThroughWindow, startMultiDaemon, windowFor } from './support/share-harness.js';

test('two daemon processes sharing one --blob-dir: identical files of lz4-a / lz4-b on the same frames; reset unmaps', async () => {
  const ma = manifest('digest-lz4-a');
  const mb = manifest('digest-lz4-b');
  const window = windowFor(ma, mb);
  const blobDir = path.join(SCRATCH_DIR, `share-blobs-${process.pid}`);
  fs.rmSync(blobDir, { recursive: true, force: true });
  const common = ['--dax-window-size', String(window), '--blob-dir', blobDir];
  const d1 = await startMultiDaemon([`${image('digest-lz4-a')},domain=app`], 1, common);
  const d2 = await startMultiDaemon([`${image('digest-lz4-b')},domain=app`], 1, common);
  try {
    assert.notEqual(d1.backend.pid, d2.backend.pid);
    const ga = await connectDaxGuest(d1.sockets[0]!, window, 'shmem');
    const gb = await connectDaxGuest(d2.sockets[0]!, window, 'shmem');
    try {
      const va = await readAllThroughWindow(ga, ma);
      const blobs = fs.readdirSync(blobDir);
      assert.ok(blobs.length > 500, `${blobs.length} blob files published`);
      assert.ok(blobs.every((b) => b.endsWith('.blob')), 'only complete blobs (no temp files left)');
      const vb = await readAllThroughWindow(gb, mb);
      for (const [p, e] of Object.entries(ma)) if (e.type === 'file' && e.size) assert.equal(va.get(p)!.sha256, e.sha256, p);
      for (const [p, e] of Object.entries(mb)) if (e.type === 'file' && e.size) assert.equal(vb.get(p)!.sha256, e.sha256, p);
      const cmp = compareFrames(va, vb);
      console.log(`# two processes, one blob dir: ${JSON.stringify(cmp)}`);
      const apart = [...va].filter(([p, x]) => vb.get(p)?.sha256 === x.sha256 && !x.frames.every((f, i) => f === vb.get(p)!.frames[i])).map(([p, x]) => `${p}(${x.size})`);
      console.log(`# identical but apart: ${apart.join(' ')}`);
      assert.ok(cmp.identical > 900);
      // Files stored uncompressed from a page-aligned position (incompressible data, possibly with
      // an inline tail) are served from each process's own image file (its page cache is the
      // shared copy only for the same image): exactly those identical files stay apart across
      // processes; every materialised one shares.
      const inPlace = (img: string, p: string): boolean => {
        const r = openImage(image(img));
        try {
          let nid = r.rootNid;
          for (const part of p.split('/')) nid = r.lookup(nid, part)!;
          const ex = r.plainExtents(nid);
          if (!ex || ex.length === 0 || ex[0]!.physical % PAGE !== 0) return false;
          // In place: one aligned run covering the file, or all of it but an inline tail shorter
          // than a page (the run rounded down to pages is mapped from the image).
          let run = 0;
          for (const e of ex) {
            if (e.logical !== run || e.physical !== ex[0]!.physical + run) break;
            run += e.length;
          }
          const size = r.getAttr(nid).size;
          const prefix = run >= size ? size : run - (run % PAGE);
          return prefix === size || (prefix > 0 && size - prefix < PAGE);
        } finally {
          r.close();
        }
      };
      const expectedApart = [...va].filter(([p, x]) => vb.get(p)?.sha256 === x.sha256 && inPlace('digest-lz4-a', p) && inPlace('digest-lz4-b', p)).map(([p, x]) => `${p}(${x.size})`);
      assert.deepEqual(apart.sort(), expectedApart.sort(), 'only in-place image ranges stay apart across processes');
      assert.ok(cmp.identicalSharedFrames >= cmp.identical - apart.length && apart.length < 20);
      assert.equal(cmp.changedSharingAFrame, 0);

      // Guest reset (reboot): the VMM drops its window; the daemon unpins every mapping.
      const before = await d1.stats();
      assert.ok(before.guests[0]!.mappedRanges > 500);
      await ga.vmm.reset();
      const after = await d1.stats();
      assert.equal(after.guests[0]!.mappedRanges, 0, 'mappings released on reset');
      assert.equal(after.domains["app"]!.mappedRanges, 0, JSON.stringify(after));
      // A cache drop now releases the unmapped blobs (the other process keeps its own mappings).
      const { controlRequest } = await import('../src/daemon/control.js');
      const dropped = (await controlRequest(d1.control, 'drop-cache')) as { dropped: { blobs: number; bytes: number } };
      assert.ok(dropped.dropped.blobs > 500, `dropped ${dropped.dropped.blobs} blobs`);
      const afterDrop = (await d1.stats()).domains['app']!;
      assert.equal(afterDrop.blobResidentBytes, 0, 'no blob memory left');
      assert.ok(afterDrop.backings < 20, `${afterDrop.backings} in-place image ranges stay (they hold no memory of their own)`);
      const d2stats = await d2.stats();
      assert.ok(d2stats.domains['app']!.mappedRanges > 500, 'the other daemon is unaffected');
    } finally {
      ga.close();
      gb.close();
    }
  } finally {
    await d1.stop();
    await d2.stop();
    fs.rmSync(blobDir, { recursive: true, force: true });
  }
});

// Two guests in separate test-VMM processes (pagemap PFNs are global, so each worker reports its
// own window's frames and the test compares them), one daemon with two sockets.
test('two test-VMM processes, one daemon: identical digest-plain files on the same frames, changed files apart', async () => {
  const { spawn } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const worker = path.join(path.dirname(fileURLToPath(import.meta.url)), 'support/share-guest-worker.js');
  const ma = manifest('digest-plain-a');
  const mb = manifest('digest-plain-b');
  const window = windowFor(ma, mb);
  const d = await startMultiDaemon([`a=${image('digest-plain-a')},domain=app`, `b=${image('digest-plain-b')},domain=app`], 2,
    ['--dax-window-size', String(window)]);
  const procs: import('node:child_process').ChildProcess[] = [];
  try {
    const run = (socket: string, name: string, prefix: string) => new Promise<{ pid: number; files: Record<string, { sha256: string; frames: string[]; tailZero: boolean; size: number }> }>((resolve, reject) => {
      const p = spawn(process.execPath, [worker, socket, String(window), 'shmem', name, prefix], { stdio: ['pipe', 'pipe', 'pipe'] });
      procs.push(p);
      let out = '';
      let err = '';
      p.stdout!.on('data', (c) => {
        out += c;
        if (out.includes('\n')) resolve(JSON.parse(out.slice(0, out.indexOf('\n'))));
      });
      p.stderr!.on('data', (c) => { err += c; });
      p.on('exit', (code) => reject(new Error(`worker exited ${code}: ${err}`)));
    });
    const [ra, rb] = await Promise.all([run(d.sockets[0]!, 'digest-plain-a', 'a'), run(d.sockets[1]!, 'digest-plain-b', 'b')]);
    assert.notEqual(ra.pid, rb.pid);
    let identical = 0;
    let changed = 0;
    for (const [p, e] of Object.entries(ma)) {
      if (e.type !== 'file' || !e.size) continue;
      const va = ra.files[p]!;
      assert.equal(va.sha256, e.sha256, p);
      assert.ok(va.tailZero, p);
      const vb = rb.files[p];
      if (!vb) continue;
      assert.equal(vb.sha256, mb[p]!.sha256, p);
      if (vb.sha256 === va.sha256) {
        identical++;
        assert.ok(va.frames.every((f) => f !== '0'), `${p}: frames visible`);
        assert.deepEqual(vb.frames, va.frames, `${p}: same frames in both VMM processes`);
      } else {
        changed++;
        assert.ok(!vb.frames.some((f) => va.frames.includes(f)), `${p}: changed file shares no frame`);
      }
    }
    console.log(`# separate VMM processes ${ra.pid}/${rb.pid}: identical ${identical}, changed ${changed}`);
    assert.ok(identical > 900 && changed > 100);
  } finally {
    for (const p of procs) p.stdin?.end();
    await new Promise((r) => setTimeout(r, 200));
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
    await d.stop();
  }
});
