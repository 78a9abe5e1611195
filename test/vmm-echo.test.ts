// `serve` against a front-end that behaves like QEMU 11.1 with a DAX window: the window size
// comes from GET_SHMEM_CONFIG, every window mapping is echoed back as ADD_MEM_REG (REM_MEM_REG
// when unmapped) and must be accepted, and a front-end that sends SET_BACKEND_REQ_FD again
// leaves the guest's window and its mappings in place (they live in the VMM until a reset).
import test from 'node:test';
import assert from 'node:assert/strict';
import { connectTestVmm } from './support/test-vmm/index.js';
import { image, manifest, readAllThroughWindow, startMultiDaemon } from './support/share-harness.js';
import type { Manifest } from './support/manifest.js';

const WINDOW = 64 << 20;

test('QEMU 11.1-style echo: mappings come back as memory regions and are accepted; a replaced back-end channel keeps the window', async () => {
  const full = manifest('digest-plain-a');
  // Thirty files: enough mappings (image ranges, read-only, and zero-padded tail pages) to count.
  const some: Manifest = {};
  for (const [p, e] of Object.entries(full)) {
    if (e.type === 'file' && e.size && Object.keys(some).length < 30) some[p] = e;
  }
  const d = await startMultiDaemon([image('digest-plain-a')], 1, ['--dax-window-size', String(WINDOW), '--dax-protocol', 'shmem']);
  try {
    const t = await connectTestVmm(d.sockets[0]!, { dax: { windowSize: WINDOW, dialect: 'shmem', echo: true } });
    try {
      assert.equal(t.vmm.shmemSizes[0], BigInt(WINDOW), 'GET_SHMEM_CONFIG: region 0 is the window');
      const views = await readAllThroughWindow(t, some);
      for (const [p, v] of views) assert.equal(v.sha256, some[p]!.sha256, p);
      assert.ok(t.vmm.daxMappings.size >= 30, `${t.vmm.daxMappings.size} window mappings`);
      assert.equal(t.vmm.echoRefusals, 0, 'every echo accepted');
      assert.equal(t.vmm.echoedRegions, t.vmm.daxMappings.size, 'each mapping echoed once');
      assert.ok(t.vmm.maxMemSlots >= t.vmm.daxMappings.size + t.vmm.mem.regions.length, `slots announced: ${t.vmm.maxMemSlots}`);

      const before = (await d.stats()).guests[0]!;
      assert.equal(before.window, true);
      assert.ok(before.mappedRanges > 0);
      await t.vmm.replaceBackendChannel();
      const after = (await d.stats()).guests[0]!;
      assert.equal(after.window, true, 'the window survives a new back-end channel');
      assert.equal(after.mappedRanges, before.mappedRanges, 'and so does its bookkeeping');

      // Unmapping goes through the new channel; the echo is removed too.
      const first = [...views.values()][0]!;
      const mapped = t.vmm.daxMappings.size;
      await t.client.removemapping([[first.moffset, 2 << 20]]);
      assert.ok(t.vmm.daxMappings.size < mapped, 'unmapped in the window');
      assert.equal(t.vmm.echoRefusals, 0);
      assert.equal(t.vmm.echoedRegions, t.vmm.daxMappings.size, 'the echo of what was unmapped is gone');
      assert.ok((await d.stats()).guests[0]!.mappedRanges < before.mappedRanges);
    } finally {
      t.close();
    }
    assert.doesNotMatch(d.backend.stderr(), /"level":(50|60)/, 'no error logged by the daemon');
  } finally {
    await d.stop();
  }
});
