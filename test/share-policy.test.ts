// DAX policy per inode and --share=off: FUSE_ATTR_DAX follows --dax-policy and
// --dax-min-size while a window exists; FUSE_HAS_INODE_DAX is replied only when the policy can
// set the flag; --share=off sends every READ down the per-file path and DAX still works from
// private backings; the dialect follows --dax-protocol.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Op } from './support/test-vmm/index.js';
import { connectDaxGuest, image, manifest, startMultiDaemon } from './support/share-harness.js';

const FUSE_ATTR_DAX = 2;
const HAS_INODE_DAX_FLAGS2 = 2; // init flag bit 33 = flags2 bit 1
const BIG = 'big/rand-2m';
const SMALL = 'dups/copy-0.txt'; // 200000 bytes
const TINY = 'manyfiles/entry-00003-xxx'; // 3 bytes
const WINDOW = 16 << 20;

async function flagsFor(policyArgs: string[]): Promise<{ big: number; small: number; tiny: number; dir: number; inodeDax: boolean }> {
  const d = await startMultiDaemon([`${image('digest-plain-a')}`], 1, ['--dax-window-size', String(WINDOW), ...policyArgs]);
  try {
    const g = await connectDaxGuest(d.sockets[0]!, WINDOW, 'shmem');
    try {
      const f = async (p: string) => (await g.client.resolve(p)).attr.flags & FUSE_ATTR_DAX;
      return {
        big: await f(BIG), small: await f(SMALL), tiny: await f(TINY), dir: await f('big'),
        inodeDax: (g.client.info!.flags2 & HAS_INODE_DAX_FLAGS2) !== 0,
      };
    } finally {
      g.close();
    }
  } finally {
    await d.stop();
  }
}

test('--dax-policy: shared (with --dax-min-size), always, never', async () => {
  assert.deepEqual(await flagsFor(['--dax-policy', 'shared', '--dax-min-size', '300K']),
    { big: FUSE_ATTR_DAX, small: 0, tiny: 0, dir: 0, inodeDax: true });
  assert.deepEqual(await flagsFor(['--dax-policy', 'shared']),
    { big: FUSE_ATTR_DAX, small: FUSE_ATTR_DAX, tiny: FUSE_ATTR_DAX, dir: 0, inodeDax: true });
  assert.deepEqual(await flagsFor(['--dax-policy', 'always', '--share', 'off']),
    { big: FUSE_ATTR_DAX, small: FUSE_ATTR_DAX, tiny: FUSE_ATTR_DAX, dir: 0, inodeDax: true });
  // shared policy with sharing off: nothing has a shared backing.
  assert.deepEqual(await flagsFor(['--dax-policy', 'shared', '--share', 'off']),
    { big: 0, small: 0, tiny: 0, dir: 0, inodeDax: true });
  assert.deepEqual(await flagsFor(['--dax-policy', 'never']),
    { big: 0, small: 0, tiny: 0, dir: 0, inodeDax: false });
});

test('--share=off: READs take the per-file path, DAX maps private backings, content correct', async () => {
  const m = manifest('digest-plain-a');
  const d = await startMultiDaemon([`${image('digest-plain-a')}`], 1, ['--dax-window-size', String(WINDOW), '--share', 'off', '--dax-protocol', 'fs-map']);
  try {
    const g = await connectDaxGuest(d.sockets[0]!, WINDOW, 'fs-map');
    try {
      const nodeid = (await g.client.resolve(BIG)).nodeid;
      const data = await g.client.readFile(nodeid);
      assert.equal(createHash('sha256').update(data).digest('hex'), m[BIG]!.sha256);
      const { fh } = await g.client.open(nodeid, 0);
      const viaDax = await g.client.daxRead(fh, 0, m[BIG]!.size!);
      assert.equal(createHash('sha256').update(viaDax).digest('hex'), m[BIG]!.sha256);
      // REMOVEMAPPING as Linux lays it out: fuse_removemapping_in is one u32 (count), the
      // 16-byte fuse_removemapping_one entries follow at offset 4. (FuseClient.removemapping
      // puts them at offset 8, which our server rightly reads as a different range.)
      const rm = Buffer.alloc(4 + 16);
      rm.writeUInt32LE(1, 0);
      rm.writeBigUInt64LE(0n, 4);
      rm.writeBigUInt64LE(BigInt(2 << 20), 12);
      await g.client.call(Op.REMOVEMAPPING, 0n, [rm], 0);
      assert.equal(g.vmm.daxMappings.size, 0, 'the VMM unmapped the range');
      // Bad mappings are refused with an errno, nothing is mapped.
      const h = await g.client.open(nodeid, 0);
      const code = async (p: Promise<unknown>) => p.then(() => 'ok', (e: { code?: string }) => e.code);
      assert.equal(await code(g.client.setupmapping(h.fh, 0, 4096, WINDOW, 2n)), 'EINVAL', 'outside the window');
      assert.equal(await code(g.client.setupmapping(h.fh, 4 << 20, 4096, 0, 2n)), 'EINVAL', 'past EOF');
      assert.equal(await code(g.client.setupmapping(h.fh, 100, 4096, 0, 2n)), 'EINVAL', 'unaligned');
      assert.equal(await code(g.client.setupmapping(h.fh, 0, 4096, 0, 3n)), 'EROFS', 'write mapping');
      await g.client.release(h.fh);
      assert.equal(g.vmm.daxMappings.size, 0);
      await g.client.release(fh);
      const s = await d.stats();
      const dom = Object.values(s.domains)[0]!;
      assert.equal(s.share, false);
      assert.ok(dom.perFileReads > 0 && dom.sharedReads === 0, JSON.stringify(dom));
      assert.equal(dom.hits, 0);
      assert.equal(s.guests[0]!.dialect, 'fs-map');
      assert.equal(s.guests[0]!.mappedRanges, 0, 'REMOVEMAPPING released the range');
      assert.ok(g.vmm.backendEvents.some((e) => e.result === 0), 'FS_MAP requests reached the VMM');
    } finally {
      g.close();
    }
  } finally {
    await d.stop();
  }
});
