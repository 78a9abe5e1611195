// The shared-memory protocol against the real client that speaks it: QEMU 11.1 (Debian sid)
// with its vhost-user-test-device-pci as a virtio-fs device and sid's Linux 7.2 guest. QEMU asks
// GET_SHMEM_CONFIG and builds its DAX BAR from our answer, the guest mounts with dax=always and
// walks the sample tree through the window (its files fit in zero-padded tail pages, which stock
// QEMU 11.1 can map), every mapping comes back to us as ADD_MEM_REG and is accepted, and QEMU
// prints nothing: no error, no assertion.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { QEMU_SID, SID_GUEST_DIR, bootGuest, ensureGuest, startErofsVfsd } from './support/qemu.js';
import { REPO_ROOT } from './support/paths.js';
import { tempSocketPath } from './support/test-vmm/index.js';

const SAMPLE = path.join(REPO_ROOT, 'samples/sample.erofs');
const WINDOW = 1 << 30;

function logLines(log: string): { level: number; msg: string; request?: string; err?: string }[] {
  return log.split('\n').filter((l) => l.startsWith('{')).map((l) => {
    try {
      return JSON.parse(l) as { level: number; msg: string; request?: string; err?: string };
    } catch {
      return { level: 0, msg: l };
    }
  });
}

test('QEMU 11.1: GET_SHMEM_CONFIG sizes the DAX window, a dax=always walk maps through it, every echoed region is accepted, QEMU prints nothing', async () => {
  assert.ok(fs.existsSync(QEMU_SID), `${QEMU_SID} is missing (scripts/setup.sh runs scripts/sid-chroot.sh)`);
  ensureGuest({ dir: SID_GUEST_DIR, suite: 'sid' });
  const socket = tempSocketPath('qemu-shmem');
  const be = await startErofsVfsd([{ path: SAMPLE }], socket, ['--log-level', 'debug', '--dax-window-size', String(WINDOW)]);
  let run;
  try {
    run = await bootGuest(socket, {
      label: 'qemu11-shmem', tests: ['walk'], qemu: QEMU_SID, device: 'test-device', guestDir: SID_GUEST_DIR,
      // KERN_NOTICE: the guest's virtio-fs driver reports its cache window at that level.
      extraArgs: ['gt.opts=dax=always', 'loglevel=6'],
    });
  } finally {
    await be.stop();
  }
  const qemuLines = run.console.split(/\r?\n/).filter((l) => l.includes('qemu-system-x86_64:'));
  assert.deepEqual(qemuLines, [], 'QEMU printed no error or warning');
  assert.ok(run.done, `the guest finished:\n${run.console.slice(-3000)}`);
  assert.match(run.console, /Cache len: 0x40000000/, 'the guest found a 1 GiB cache window');
  assert.doesNotMatch(run.console, /No cache capability/);
  const mount = run.byTest.get('mount')?.[0];
  assert.ok(mount?.ok, `mount -o dax=always: ${JSON.stringify(mount)}`);
  const walk = run.byTest.get('walk')?.[0];
  assert.ok(walk?.ok, `walk: ${JSON.stringify(walk)}`);
  assert.equal(walk.errors, 0);

  const lines = logLines(be.log());
  const requests = lines.filter((l) => l.msg === 'vhost-user request').map((l) => l.request);
  assert.ok(requests.includes('GET_SHMEM_CONFIG'), 'QEMU asked GET_SHMEM_CONFIG');
  const added = lines.filter((l) => l.msg === 'memory region added').length;
  assert.ok(added >= 2, `guest RAM and the window mappings came as ADD_MEM_REG (${added})`);
  assert.deepEqual(lines.filter((l) => l.level >= 40).map((l) => `${l.msg} ${l.err ?? ''}`), [], 'nothing refused, nothing failed');
});
