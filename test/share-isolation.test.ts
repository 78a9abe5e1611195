// Trust domains and verification: an image that claims another image's fingerprint for
// different content. The forged image is digest-plain-b with the digest xattr of big/text-3m
// (same size in both versions, different content) rewritten to claim version a's digest; the
// test finds the one occurrence of "sha256:" + b's digest in the image bytes and checks the
// result through our reader (the claim reads back as a's digest, the content stays b's).
//
// Frames compared through /proc/self/pagemap of the window pages (both test VMMs live in this
// process; we run as root).
import test from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { openImage } from '../src/erofs/index.js';
import { SCRATCH_DIR } from './support/paths.js';
import { connectDaxGuest, image, manifest, readAllThroughWindow, startMultiDaemon, windowFor, type FileView } from './support/share-harness.js';
import type { Manifest } from './support/manifest.js';
import type { TestVmm } from './support/test-vmm/index.js';

const TARGET = 'big/text-3m';
const SAME = 'big/rand-2m'; // identical in a and b
const ma = manifest('digest-plain-a');
const mb = manifest('digest-plain-b');

function buildForged(): string {
  const shaA = Buffer.from(ma[TARGET]!.sha256!, 'hex');
  const shaB = Buffer.from(mb[TARGET]!.sha256!, 'hex');
  assert.equal(ma[TARGET]!.size, mb[TARGET]!.size, 'same size, so only the digest tells them apart');
  assert.notDeepEqual(shaA, shaB);
  assert.equal(ma[SAME]!.sha256, mb[SAME]!.sha256);
  const bytes = fs.readFileSync(image('digest-plain-b'));
  const needle = Buffer.concat([Buffer.from('sha256:'), shaB]);
  const at = bytes.indexOf(needle);
  assert.ok(at > 0, 'digest xattr value found');
  assert.equal(bytes.indexOf(needle, at + 1), -1, 'exactly one occurrence');
  shaA.copy(bytes, at + 7);
  fs.mkdirSync(SCRATCH_DIR, { recursive: true });
  const out = path.join(SCRATCH_DIR, `forged-plain-b-${process.pid}.erofs`);
  fs.writeFileSync(out, bytes);
  // The reader sees the forged claim over b's own content.
  const r = openImage(out);
  try {
    let nid = r.rootNid;
    for (const part of TARGET.split('/')) nid = r.lookup(nid, part)!;
    assert.deepEqual(r.fingerprint(nid), Buffer.concat([Buffer.from('sha256:'), shaA]), 'forged claim');
    assert.equal(crypto.createHash('sha256').update(r.read(nid, 0, mb[TARGET]!.size!)).digest('hex'), mb[TARGET]!.sha256);
  } finally {
    r.close();
  }
  return out;
}

function sub(m: Manifest, dir: string, paths: string[]): Manifest {
  const out: Manifest = {};
  for (const p of paths) out[`${dir}/${p}`] = m[p]!;
  return out;
}

async function readBoth(specs: string[], extra: string[]): Promise<{ a: Map<string, FileView>; f: Map<string, FileView>; stats: Awaited<ReturnType<Awaited<ReturnType<typeof startMultiDaemon>>['stats']>> }> {
  const window = windowFor(sub(ma, 'a', [TARGET, SAME]));
  const d = await startMultiDaemon(specs, 2, ['--dax-window-size', String(window), ...extra]);
  let ga: TestVmm | undefined;
  let gf: TestVmm | undefined;
  try {
    ga = await connectDaxGuest(d.sockets[0]!, window, 'shmem');
    gf = await connectDaxGuest(d.sockets[1]!, window, 'shmem');
    // Version a is read first: in a shared backing, its content would be what the forger gets.
    const a = await readAllThroughWindow(ga, sub(ma, 'a', [TARGET, SAME]));
    const f = await readAllThroughWindow(gf, sub(mb, 'f', [TARGET, SAME]));
    // Buffered FUSE_READ of the forged file too (the non-DAX read path).
    const nodeid = (await gf.client.resolve(`f/${TARGET}`)).nodeid;
    const data = await gf.client.readFile(nodeid);
    f.set('read', { ...f.get(`f/${TARGET}`)!, sha256: crypto.createHash('sha256').update(data).digest('hex') });
    return { a, f, stats: await d.stats() };
  } finally {
    ga?.close();
    gf?.close();
    await d.stop();
  }
}

test('forged fingerprint: separate domains, one domain + --share-verify, and (control) one domain without verify', async (t) => {
  const forged = buildForged();
  try {
    await t.test('separate domains (default): no sharing, the forged file reads its own bytes', async () => {
      const { a, f, stats } = await readBoth([`a=${image('digest-plain-a')}`, `f=${forged}`], []);
      assert.equal(a.get(`a/${TARGET}`)!.sha256, ma[TARGET]!.sha256);
      assert.equal(f.get(`f/${TARGET}`)!.sha256, mb[TARGET]!.sha256, 'forged file through DAX: its own content');
      assert.equal(f.get('read')!.sha256, mb[TARGET]!.sha256, 'forged file through FUSE_READ: its own content');
      assert.notDeepEqual(f.get(`f/${TARGET}`)!.frames, a.get(`a/${TARGET}`)!.frames);
      // Not even identical files share across domains.
      assert.notDeepEqual(f.get(`f/${SAME}`)!.frames, a.get(`a/${SAME}`)!.frames, 'no cross-domain sharing by default');
      assert.equal(stats.domains['f']!.hits, 0);
    });

    await t.test('one domain + --share-verify: the forged file is not joined, identical files still share', async () => {
      const { a, f, stats } = await readBoth([`a=${image('digest-plain-a')},domain=one`, `f=${forged},domain=one`], ['--share-verify']);
      assert.equal(f.get(`f/${TARGET}`)!.sha256, mb[TARGET]!.sha256, 'forged file through DAX: its own content');
      assert.equal(f.get('read')!.sha256, mb[TARGET]!.sha256, 'forged file through FUSE_READ: its own content');
      assert.equal(f.get(`f/${TARGET}`)!.frames.filter((x) => a.get(`a/${TARGET}`)!.frames.includes(x)).length, 0, 'no page in common');
      assert.deepEqual(f.get(`f/${SAME}`)!.frames, a.get(`a/${SAME}`)!.frames, 'verified identical file shares');
      assert.ok(stats.domains['one']!.verifyRejected >= 1, `verifyRejected ${stats.domains['one']!.verifyRejected}`);
    });

    await t.test('--share-across-domains (implies verify): identical files share across domains, the forged one does not', async () => {
      const { a, f, stats } = await readBoth([`a=${image('digest-plain-a')},domain=x`, `f=${forged},domain=y`], ['--share-across-domains']);
      assert.equal(f.get(`f/${TARGET}`)!.sha256, mb[TARGET]!.sha256);
      assert.notDeepEqual(f.get(`f/${TARGET}`)!.frames, a.get(`a/${TARGET}`)!.frames);
      assert.deepEqual(f.get(`f/${SAME}`)!.frames, a.get(`a/${SAME}`)!.frames);
      assert.ok(stats.domains['y']!.verifyRejected >= 1);
    });

    await t.test('control: one domain without verify trusts the claim (this is what verify prevents)', async () => {
      const { a, f } = await readBoth([`a=${image('digest-plain-a')},domain=one`, `f=${forged},domain=one`], []);
      assert.equal(f.get(`f/${TARGET}`)!.sha256, ma[TARGET]!.sha256, 'the forged claim joined version a\'s backing');
      assert.deepEqual(f.get(`f/${TARGET}`)!.frames, a.get(`a/${TARGET}`)!.frames);
    });
  } finally {
    fs.rmSync(forged, { force: true });
  }
});
