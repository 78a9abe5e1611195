// Real guests: QEMU 7.2 (TCG when there is no KVM) boots a Debian kernel with the busybox
// initramfs, mounts virtio-fs and runs guest-tests/ (tree walk with stat/readlink/xattrs/SHA-256
// against a manifest, 10,000-entry readdir, mmap, O_DIRECT, parallel readers, xattr probes,
// unmount/remount). First against C virtiofsd serving the unpacked tree (the reference), then
// against erofs-vfsd serving EROFS images of that tree; the guest must see the same thing.
// One boot per back-end configuration; every guest test runs in that boot.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { diffManifests, type Manifest } from './support/manifest.js';
import {
  QEMU_CACHE, bootGuest, comparableResults, ensureGuest, guestImage, guestTree, hostManifest,
  prefixManifest, startErofsVfsd, startVirtiofsd, type Backend, type GuestFiles, type GuestRun,
} from './support/qemu.js';

const ALL_TESTS = ['walk', 'readdir', 'mmap', 'odirect', 'parallel', 'xattr', 'hardlink', 'remount'];
/** Only on read-only exports (on virtiofsd's writable tree it would really modify the tree). */
const RO_TESTS = ['rofs'];
/** Run again after a guest reboot (VM reset) in the configurations that reboot. */
const REBOOT_TESTS = ['readdir', 'mmap', 'hardlink'];

let guest: GuestFiles;
let tree: string;
let expected: Manifest;
const backends: Backend[] = [];
const timings: string[] = [];
const timingRecords: Array<Record<string, unknown>> = [];

before(() => {
  fs.mkdirSync(QEMU_CACHE, { recursive: true });
  guest = ensureGuest();
  tree = guestTree();
  expected = hostManifest(tree, guest.gtest);
});

after(async () => {
  for (const b of backends) await b.stop();
  if (timings.length) console.log(`# qemu guest timings:\n# ${timings.join('\n# ')}`);
  // for docs/benchmarks.md: guest-side tree-walk wall time per back-end
  if (timingRecords.length) fs.writeFileSync(path.join(QEMU_CACHE, 'guest-timings.json'), `${JSON.stringify(timingRecords, null, 1)}\n`);
});

function failures(run: GuestRun): string {
  const bad = run.results.filter((r) => !r.ok).map((r) => JSON.stringify(r));
  const tail = run.console.split('\n').filter((l) => !l.startsWith('GUESTTEST')).slice(-25).join('\n');
  return `${bad.join('\n')}\n--- console tail ---\n${tail}`;
}

/**
 * Everything every configuration must satisfy. `syntheticRoot`: a multi-image export, whose root
 * is made up by the daemon (it has no counterpart in the tree and is left out of the comparison).
 */
function checkRun(run: GuestRun, want: Manifest, label: string, syntheticRoot = false): void {
  timings.push(`${label}: guest init at uptime ${String(run.byTest.get('boot')?.[0]?.uptime_s ?? '?')} s, first line after ${((run.bootMs ?? NaN) / 1000).toFixed(1)} s, ` +
    `QEMU wall ${(run.wallMs / 1000).toFixed(1)} s, walk ${String(run.byTest.get('walk')?.[0]?.ms ?? '?')} ms`);
  timingRecords.push({ label, initUptimeS: run.byTest.get('boot')?.[0]?.uptime_s, firstLineMs: run.bootMs, qemuWallMs: run.wallMs,
    walkMs: run.byTest.get('walk')?.[0]?.ms, kernel: guest.kernelVersion });
  assert.ok(run.done, `${label}: the guest did not finish\n${failures(run)}`);
  assert.equal(run.byTest.get('mount')?.[0]?.ok, true, `${label}: mount failed\n${failures(run)}`);
  for (const t of ALL_TESTS) assert.ok(run.byTest.has(t), `${label}: no result for guest test '${t}'\n${failures(run)}`);
  const bad = run.results.filter((r) => !r.ok);
  assert.deepEqual(bad, [], `${label}: failing guest tests\n${failures(run)}`);

  const walk = run.byTest.get('walk')![0]!;
  assert.equal(walk.entries, Object.keys(want).length + (syntheticRoot ? 1 : 0), `${label}: walk entry count`);
  assert.ok(run.manifest, `${label}: the walk manifest did not come back on the output disk`);
  const got = { ...run.manifest };
  if (syntheticRoot) {
    assert.equal(got['']?.type, 'dir', `${label}: the export root is a directory`);
    delete got[''];
  }
  const diff = diffManifests(want, got, [], 40).map((l) => (l.length > 400 ? `${l.slice(0, 400)}…` : l));
  assert.deepEqual(diff, [], `${label}: guest view differs from the expected manifest`);

  const rd = run.byTest.get('readdir')![0]!;
  assert.equal(rd.count, 10000, `${label}: readdir of dir10k`);
  const mm = run.byTest.get('mmap')!;
  assert.equal(mm.length, 4, `${label}: one mmap result per big/ file`);
  for (const r of mm) {
    const rel = String(r.path).replace(/^\/mnt\/(?:[ab]\/)?/, '');
    const key = Object.keys(want).find((k) => k === rel || k.endsWith(`/${rel}`));
    assert.ok(key, `${label}: mmap path ${String(r.path)} not in the manifest`);
    assert.equal(r.sha256, want[key].sha256, `${label}: mmap sha256 of ${rel}`);
  }
  const od = run.byTest.get('odirect')![0]!;
  assert.equal(od.sha256, Object.entries(want).find(([k]) => k.endsWith('big/rand-3m'))![1].sha256, `${label}: O_DIRECT sha256`);
  const xa = run.byTest.get('xattr')!;
  assert.equal(xa[0]!.count, 4, `${label}: xattr/file has user.a, user.bin, user.long, trusted.t`);
  const hl = run.byTest.get('hardlink')![0]!;
  assert.equal(hl.same_inode, true, `${label}: hard/a and hard/b are one inode`);
  const rm = run.byTest.get('remount')![0]!;
  assert.equal(rm.dir10k_after, 10000, `${label}: dir10k after remount`);
}

let reference: GuestRun | undefined;

test('guest kernel and initramfs come from Debian packages without touching the host', () => {
  assert.match(guest.kernelVersion, /^6\.\d+/);
  assert.ok(fs.statSync(guest.kernel).size > 4 << 20, 'vmlinuz looks too small');
  assert.ok(fs.statSync(guest.initramfs).size > 500_000, 'initramfs looks too small');
  // the host's own dpkg database knows nothing of the guest kernel package
  const status = fs.readFileSync('/var/lib/dpkg/status', 'utf8');
  assert.ok(!status.includes(`Package: linux-image-${guest.kernelVersion}\n`), 'guest kernel was installed into the host');
  // the host-side manifest of the tree covers every kind of entry the guest tests need
  assert.ok(Object.keys(expected).length > 10_200);
  assert.equal(expected['dir10k/e00050']?.xattrs?.['user.sampled'], '3530');
});

test('C virtiofsd over the unpacked tree: guest tests pass and the guest sees the tree', async () => {
  const sock = path.join(QEMU_CACHE, 'virtiofsd-tree.sock');
  const b = await startVirtiofsd(tree, sock);
  backends.push(b);
  const run = await bootGuest(sock, { label: 'virtiofsd-tree', tests: ALL_TESTS });
  await b.stop();
  checkRun(run, expected, 'virtiofsd/tree');
  reference = run;
  assert.ok(comparableResults(reference).length >= 10);
});

/** Boots the guest against erofs-vfsd serving `images`; checks it and compares with virtiofsd. */
async function runOurs(label: string, images: Array<{ name?: string; path: string }>, opts: { root?: string; queues?: number; reboot?: boolean; reconnect?: boolean } = {}): Promise<GuestRun> {
  assert.ok(reference, 'the virtiofsd reference run must pass first');
  const { root, queues = 1, reboot = false, reconnect = false } = opts;
  const sock = path.join(QEMU_CACHE, `erofs-vfsd-${label}.sock`);
  const b = await startErofsVfsd(images, sock, ['--num-request-queues', String(queues), ...(reconnect ? ['--reconnect'] : [])]);
  backends.push(b);
  const run = await bootGuest(sock, {
    label: `erofs-vfsd-${label}`, tests: [...ALL_TESTS, ...RO_TESTS], root, queues,
    reboot, tests2: reboot ? REBOOT_TESTS : undefined,
  });
  if (reconnect) {
    // the first QEMU has exited; with --reconnect the same daemon serves the next VMM
    assert.equal(b.proc.exitCode, null, `erofs-vfsd/${label}: the daemon exited although --reconnect was given\n${b.log().slice(-2000)}`);
    const second = await bootGuest(sock, { label: `erofs-vfsd-${label}-second`, tests: REBOOT_TESTS, root, queues });
    assert.ok(second.done && second.results.every((r) => r.ok), `erofs-vfsd/${label}: second VMM\n${failures(second)}`);
    assert.equal(second.byTest.get('readdir')?.[0]?.count, 10000);
    assert.deepEqual(second.byTest.get('mmap')!.map((r) => r.sha256), run.byTest.get('mmap')!.map((r) => r.sha256));
  }
  await b.stop();
  // no error-level log lines: guest requests the daemon refuses are answered, not logged as errors
  const errors = b.log().split('\n').filter((l) => /"level":(50|60)/.test(l));
  assert.deepEqual(errors.slice(0, 5), [], `erofs-vfsd/${label}: error log lines`);
  const want = root ? Object.fromEntries(images.flatMap((im) => Object.entries(prefixManifest(expected, im.name!)))) : expected;
  try {
    checkRun(run, want, `erofs-vfsd/${label}`, root !== undefined);
    const ro = run.byTest.get('rofs')?.[0];
    assert.ok(ro, `erofs-vfsd/${label}: no rofs result`);
    assert.ok(Object.values(ro.errno as Record<string, number>).every((e) => e === 30), `erofs-vfsd/${label}: modifications must fail with EROFS: ${JSON.stringify(ro)}`);
  } catch (e) {
    (e as Error).message += `\n--- daemon log tail ---\n${b.log().split('\n').slice(-15).join('\n')}`;
    throw e;
  }
  // identical guest-visible results to C virtiofsd over the unpacked tree (the walk of a
  // multi-image export covers two trees, so only its targeted tests compare one to one)
  const skip = root ? ['walk', ...RO_TESTS] : [...RO_TESTS];
  if (reboot) {
    // the VM reset: the same connection, the device reset and set up again by the rebooted guest
    assert.equal(run.byTest.get('reboot:boot')?.length, 1, `erofs-vfsd/${label}: the guest did not come back after its reboot\n${failures(run)}`);
    for (const t of ['mount', ...REBOOT_TESTS]) assert.ok(run.byTest.get(`reboot:${t}`)?.every((r) => r.ok), `erofs-vfsd/${label}: after the reboot, ${t}\n${failures(run)}`);
    assert.equal(run.byTest.get('reboot:readdir')![0]!.count, 10000);
    assert.deepEqual(run.byTest.get('reboot:mmap')!.map((r) => r.sha256), run.byTest.get('mmap')!.map((r) => r.sha256));
  }
  skip.push(...run.results.filter((r) => r.test.startsWith('reboot:')).map((r) => r.test));
  assert.deepEqual(comparableResults(run, { root, skip }), comparableResults(reference!, { skip }),
    `erofs-vfsd/${label}: guest results differ from virtiofsd's`);
  return run;
}

test('erofs-vfsd, plain image: same guest results as virtiofsd', async () => {
  await runOurs('plain', [{ path: guestImage('plain') }]);
});

test('erofs-vfsd --reconnect, LZ4HC image: same guest results as virtiofsd; then serves a second VMM', async () => {
  await runOurs('lz4hc', [{ path: guestImage('lz4hc') }], { reconnect: true });
});

test('erofs-vfsd, chunked image: same guest results as virtiofsd; the guest reboots and reads again', async () => {
  await runOurs('chunked', [{ path: guestImage('chunked') }], { reboot: true });
});

test('erofs-vfsd, two-image export (a = plain, b = LZ4HC) over 2 request queues: both trees as subdirectories', async () => {
  const run = await runOurs('two', [{ name: 'a', path: guestImage('plain') }, { name: 'b', path: guestImage('lz4hc') }], { root: 'a', queues: 2 });
  assert.deepEqual(Object.keys(run.manifest!).filter((k) => !k.includes('/')).sort(), ['', 'a', 'b']);
});
