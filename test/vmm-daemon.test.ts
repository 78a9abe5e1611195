// The test VMM against our daemon (`erofs-vfsd serve`) over its vhost-user socket: the walk equals
// the kernel's view of plain.erofs; hostile descriptor chains are refused while serving goes on;
// connect/disconnect and guest-reset cycles leak no fds or mappings in the daemon process.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { SHARED_IMAGES } from './support/paths.js';
import { diffManifests, loadManifest, type Manifest } from './support/manifest.js';
import {
  FLAG_NEED_REPLY, Req, memTable, u64, vringAddr, vringState,
  FuseError, HostileGuest, ProtoFeature, connectTestVmm, fileMaps, startInProcessDaemon, memfdMaps, procFds, procMaps, startDaemon, type Backend, type TestVmm,
} from './support/test-vmm/index.js';

const IMAGE = path.join(SHARED_IMAGES, 'plain.erofs');
let expected: Manifest;
let be: Backend;

before(async () => {
  expected = loadManifest(path.join(SHARED_IMAGES, 'plain.expected.json'));
  be = await startDaemon({ images: [IMAGE], extraArgs: ['--reconnect', '--num-request-queues', '2'], logLevel: 'warn' });
});
after(async () => {
  const r = await be?.stop();
  assert.ok(r === undefined || r.code === 0 || r.signal === 'SIGTERM', `daemon exit ${JSON.stringify(r)}; stderr:\n${be?.stderr().slice(-2000)}`);
});

const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

async function connectedTo(fn: (t: TestVmm) => Promise<void>, opts: Parameters<typeof connectTestVmm>[1] = {}): Promise<void> {
  const t = await connectTestVmm(be.socketPath, opts);
  try {
    await fn(t);
  } finally {
    t.close();
  }
}

/** Waits until `probe()` is true (the daemon handles a disconnect asynchronously). */
async function eventually(probe: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (probe()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return probe();
}

test('daemon: negotiation and a READDIRPLUS walk equal to plain.expected.json', async () => {
  await connectedTo(async (t) => {
    for (const f of [ProtoFeature.MQ, ProtoFeature.REPLY_ACK, ProtoFeature.BACKEND_REQ, ProtoFeature.CONFIGURE_MEM_SLOTS]) {
      assert.ok(t.vmm.has(f), `protocol feature ${f} negotiated`);
    }
    assert.ok(t.vmm.queueNum >= 3, 'two request queues + hiprio offered');
    assert.deepEqual(await t.vmm.virtioFsConfig(), { tag: 'erofs', numRequestQueues: 2 }, 'GET_CONFIG: tag and queues');
    const m = await t.client.walk({ readdirplus: true });
    assert.deepEqual(diffManifests(expected, m), []);
    await t.client.settle();
    for (const q of t.vmm.queues) assert.deepEqual(q.anomalies, []);
  });
});

test('daemon: READDIR+LOOKUP walk on 2 request queues, ADD_MEM_REG memory, indirect scattered buffers, no EVENT_IDX', async () => {
  await connectedTo(async (t) => {
    const m = await t.client.walk({ readdirplus: false, readChunk: 64 * 1024, concurrency: 8 });
    assert.deepEqual(diffManifests(expected, m), []);
    assert.ok(t.vmm.queues[1]!.completed > 100 && t.vmm.queues[2]!.completed > 100, 'both request queues served');
  }, { requestQueues: 2, memTableMode: 'add', memory: { size: 48 << 20, regions: 3 }, eventIdx: false, client: { indirect: true, segmentSize: 4096 } });
});

test('daemon: single operations and their errors', async () => {
  await connectedTo(async (t) => {
    const c = t.client;
    const e = await c.resolve('big/rand-2m');
    const { fh } = await c.open(e.nodeid);
    const whole = await c.readFile(e.nodeid, 1 << 20);
    assert.equal(sha(whole), expected['big/rand-2m']!.sha256);
    assert.deepEqual(await c.read(fh, 100_000, 5000), whole.subarray(100_000, 105_000));
    assert.equal((await c.read(fh, whole.length - 3, 4096)).length, 3, 'short read at EOF');
    assert.equal((await c.read(fh, whole.length + 10, 4096)).length, 0, 'read past EOF is empty');
    // The bench's READ (data left in guest memory) reports the same counts.
    assert.equal(await c.readCount(fh, 0, 1 << 20), Math.min(1 << 20, whole.length));
    assert.equal(await c.readCount(fh, 100_000, 5000), 5000);
    assert.equal(await c.readCount(fh, whole.length - 3, 4096), 3);
    assert.equal(await c.readCount(fh, whole.length + 10, 4096), 0);
    assert.equal(await c.lseek(fh, 0, 3 /* SEEK_DATA */), 0n);
    assert.equal(await c.lseek(fh, 0, 4 /* SEEK_HOLE */), BigInt(whole.length));
    await c.release(fh);
    await assert.rejects(c.read(0xdead_beefn, 0, 10), (err) => err instanceof FuseError && (err.code === 'EBADF' || err.code === 'ESTALE'));
    const link = await c.resolve('link-rel');
    assert.equal((await c.readlink(link.nodeid)).toString(), 'sizes/text-4096');
    const dir = await c.resolve('emptydir');
    assert.deepEqual((await c.listxattr(dir.nodeid)).sort(), Object.keys(expected['emptydir']!.xattrs!).sort());
    assert.equal((await c.getxattr(dir.nodeid, 'user.long.prefix.name.one')).toString(), 'first');
    await assert.rejects(c.getxattr(dir.nodeid, 'user.nope'), (err) => err instanceof FuseError && err.code === 'ENODATA');
    await assert.rejects(c.lookup(1n, 'does-not-exist'), (err) => err instanceof FuseError && err.code === 'ENOENT');
    const st = await c.statfs();
    assert.ok(st.bsize > 0 && st.namelen >= 255 && st.files > 0n);
    for (const n of [...e.lookups, ...link.lookups, ...dir.lookups]) c.forget(n, 1);
    await c.settle();
    assert.equal((await c.getattr(1n)).attr.nlink, expected['']!.nlink);
  });
});

test('daemon: hostile descriptor chains are refused or dropped and serving goes on', async () => {
  await connectedTo(async (t) => {
    const h = new HostileGuest(t.vmm, 1);
    const results = await h.standardCases();
    // The virtio spec forbids drivers to build chains longer than the queue but leaves the
    // device free to serve an indirect one; everything else must be refused.
    const lenient = new Set(['indirect chain longer than the queue']);
    const bad = results.filter((r) => !r.ok && !(lenient.has(r.name) && r.clobbered === 0));
    assert.deepEqual(bad.map((r) => `${r.name}: ${r.why} ${JSON.stringify(r.outcome)}`), []);
    assert.ok(results.length >= 30);
    const enosys = results.find((r) => r.name.startsWith('unknown opcode'))!;
    assert.equal(enosys.outcome.kind === 'returned' && enosys.outcome.error, 38, 'unknown opcode answered ENOSYS');
    for (const q of t.vmm.queues) assert.deepEqual(q.anomalies, [], `queue ${q.index} used ring stayed consistent`);
    assert.ok(t.vmm.alive, 'connection still up');
    // The other request queue keeps serving real work.
    const e = await t.client.resolve('big/text-3m');
    assert.equal(sha(await t.client.readFile(e.nodeid)), expected['big/text-3m']!.sha256);
    // ...and so does the hostile queue itself, if it has descriptors left.
    if (h.queue.freeDescriptors >= 3) assert.equal((await t.client.getattr(1n)).attr.nlink, expected['']!.nlink);
  }, { requestQueues: 2 });
  // A corrupt avail ring (index far beyond the queue size): no garbage served, daemon survives.
  await connectedTo(async (t) => {
    const h = new HostileGuest(t.vmm, 1);
    const r = await h.availIndexJump(t.vmm.queues[1]!.size + 100);
    assert.equal(r.anomalies, 0, 'no used entries for heads never made available');
    assert.ok(r.used <= t.vmm.queues[1]!.size, `${r.used} used entries for a ring of ${t.vmm.queues[1]!.size}`);
    // The other request queue still serves.
    assert.equal((await t.client.call(3, 1n, [Buffer.alloc(16)], 104, { queue: 2 })).length, 104);
  }, { requestQueues: 2 });
  // The daemon survived and accepts the next connection.
  await connectedTo(async (t) => { assert.equal((await t.client.getattr(1n)).attr.nlink, expected['']!.nlink); });
});

const rssKb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);

/** File-backed mappings other than guest RAM (memfds are counted separately). */
const imageAndLibMaps = (pid: number) => fileMaps(pid).filter((l) => !l.includes('/memfd:'));

async function smallWorkload(t: TestVmm): Promise<void> {
  const e = await t.client.resolve('big/mixed');
  assert.equal(sha(await t.client.readFile(e.nodeid)), expected['big/mixed']!.sha256);
  const d = await t.client.resolve('manyfiles');
  const names = await t.client.listDir(d.nodeid, true);
  assert.ok(names.length > 10);
}

test('daemon: 20 connect → serve → disconnect cycles leak no fds or mappings', async (t) => {
  const pid = be.pid;
  // Warm-up: lazily created state and the JS heap settling are not leaks.
  for (let i = 0; i < 6; i++) await connectedTo(smallWorkload);
  assert.ok(await eventually(() => memfdMaps(pid).length === 0), 'guest memory unmapped after the warm-up disconnect');
  const fds0 = procFds(pid);
  const maps0 = procMaps(pid).length;
  const rss0 = rssKb(pid);
  const files0 = imageAndLibMaps(pid);
  const selfFds0 = procFds(process.pid).length;
  const selfMemfd0 = memfdMaps(process.pid).length;
  for (let i = 0; i < 20; i++) {
    await connectedTo(async (t) => {
      assert.ok(memfdMaps(pid).length >= 1, 'guest memory mapped while connected');
      await smallWorkload(t);
    }, { requestQueues: i % 2 ? 2 : 1, memTableMode: i % 3 === 0 ? 'add' : 'set' });
    assert.ok(await eventually(() => memfdMaps(pid).length === 0), `cycle ${i}: guest memory still mapped: ${memfdMaps(pid).join('\n')}`);
  }
  assert.ok(await eventually(() => procFds(pid).length === fds0.length), 'fd count back to baseline');
  assert.deepEqual(procFds(pid).length, fds0.length, `fds before:\n${fds0.join('\n')}\nafter:\n${procFds(pid).join('\n')}`);
  assert.deepEqual(imageAndLibMaps(pid), files0, 'file-backed mappings (guest RAM, images) unchanged');
  // The test VMM itself (this process) gave back its memfds, eventfds and sockets too.
  assert.equal(procFds(process.pid).length, selfFds0, 'front-end fds back to baseline');
  assert.equal(memfdMaps(process.pid).length, selfMemfd0, 'front-end guest RAM unmapped');
  // Anonymous mappings belong to V8 and malloc, which add and drop them in steps of 30-60
  // while RSS stays flat: their count is reported, RSS growth is what is bounded.
  t.diagnostic(`daemon mappings ${maps0} → ${procMaps(pid).length}, RSS ${rss0} → ${rssKb(pid)} KiB`);
  assert.ok(rssKb(pid) - rss0 < 48 * 1024, `daemon RSS grew from ${rss0} to ${rssKb(pid)} KiB`);
});

test('daemon: 20 guest reset cycles (RESET_DEVICE, new guest memory) leak no fds or mappings', async (tc) => {
  const pid = be.pid;
  await connectedTo(async (t) => {
    assert.ok(t.vmm.has(ProtoFeature.RESET_DEVICE));
    // Warm-up: the daemon's JS heap grows its anonymous mappings during the first cycles.
    for (let i = 0; i < 6; i++) {
      await t.vmm.reset({ newMemory: i % 2 === 0 });
      await t.client.init();
      await smallWorkload(t);
    }
    const fds0 = procFds(pid).length;
    const memfd0 = memfdMaps(pid).length;
    const maps0 = procMaps(pid).length;
    const rss0 = rssKb(pid);
    const files0 = imageAndLibMaps(pid);
    for (let i = 0; i < 20; i++) {
      const bases = await t.vmm.reset({ newMemory: i % 2 === 0, resetDevice: i % 4 !== 3 });
      assert.equal(bases.length, 3);
      await t.client.init();
      await smallWorkload(t);
    }
    assert.equal(procFds(pid).length, fds0, 'eventfds and memfds of earlier generations closed');
    assert.equal(memfdMaps(pid).length, memfd0, 'old guest memory unmapped');
    assert.deepEqual(imageAndLibMaps(pid), files0, 'file-backed mappings unchanged');
    tc.diagnostic(`daemon mappings ${maps0} → ${procMaps(pid).length}, RSS ${rss0} → ${rssKb(pid)} KiB`);
    assert.ok(rssKb(pid) - rss0 < 48 * 1024, `daemon RSS grew from ${rss0} to ${rssKb(pid)} KiB`);
  }, { requestQueues: 2 });
});

test('daemon: malformed vhost-user control messages are refused (or the connection dropped), never crash it', async () => {
  const bogusRegion = { guestPhys: 0x1000n, size: 0x1000n, userAddr: 0x7000_0000_0000n, mmapOffset: 0n };
  const cases: Array<[string, (t: TestVmm) => Promise<bigint | null>]> = [
    ['unknown request 999', (t) => ack(t, 999, Buffer.alloc(8))],
    ['SET_VRING_NUM for queue 200', (t) => ack(t, Req.SET_VRING_NUM, vringState(200, 64))],
    ['SET_VRING_NUM of 3 (not a power of 2)', (t) => ack(t, Req.SET_VRING_NUM, vringState(1, 3))],
    ['SET_VRING_NUM of 65536', (t) => ack(t, Req.SET_VRING_NUM, vringState(1, 65536))],
    ['SET_VRING_ADDR outside the memory table', (t) => ack(t, Req.SET_VRING_ADDR, vringAddr(1, 0, 0x10n, 0x20n, 0x30n))],
    ['SET_MEM_TABLE with 2 regions and no fd', (t) => ack(t, Req.SET_MEM_TABLE, memTable([bogusRegion, bogusRegion]))],
    ['SET_MEM_TABLE claiming 1000 regions', (t) => {
      const p = memTable([bogusRegion]); p.writeUInt32LE(1000, 0);
      return ack(t, Req.SET_MEM_TABLE, p, [t.vmm.mem.fd]);
    }],
    ['truncated SET_VRING_ADDR payload', (t) => ack(t, Req.SET_VRING_ADDR, Buffer.alloc(5))],
    ['SET_VRING_KICK for queue 99 with an fd', (t) => ack(t, Req.SET_VRING_KICK, u64(99), [t.vmm.queues[1]!.kickFd])],
  ];
  for (const [name, run] of cases) {
    const t = await connectTestVmm(be.socketPath);
    try {
      let status: bigint | null;
      try {
        status = await run(t);
      } catch {
        status = null; // connection dropped by the back-end
      }
      assert.ok(status === null || status !== 0n, `${name}: accepted with status 0`);
    } finally {
      t.close();
    }
    assert.equal(be.proc.exitCode, null, `${name}: daemon exited; stderr:\n${be.stderr().slice(-2000)}`);
  }
  // Still serving a well-behaved front-end afterwards.
  await connectedTo(async (t) => { assert.equal((await t.client.getattr(1n)).attr.nlink, expected['']!.nlink); });
});

/** Sends a request with NEED_REPLY; resolves with the back-end's status (null: no reply, socket closed). */
async function ack(t: TestVmm, request: number, payload: Buffer, fds: number[] = []): Promise<bigint | null> {
  const m = await t.vmm.raw(request, FLAG_NEED_REPLY, payload, fds, true);
  return m && m.payload.length >= 8 ? m.payload.readBigUInt64LE(0) : null;
}

test('daemon in-process (startDaemon): walk equals plain.expected.json on a shared event loop', async () => {
  const d = await startInProcessDaemon({ images: [IMAGE], numRequestQueues: 2 });
  try {
    const t = await connectTestVmm(d.socketPath, { requestQueues: 2 });
    try {
      const m = await t.client.walk({ concurrency: 8 });
      assert.deepEqual(diffManifests(expected, m), []);
    } finally {
      t.close();
    }
  } finally {
    await d.stop();
  }
});

test('daemon in-process: compressed, chunked and xattr-heavy images and a two-image export walk equal to their manifests', async () => {
  for (const name of ['lz4hc-bigpcluster', 'chunked', 'xattr-prefix', 'zstd']) {
    const d = await startInProcessDaemon({ images: [path.join(SHARED_IMAGES, `${name}.erofs`)] });
    try {
      const t = await connectTestVmm(d.socketPath);
      try {
        const m = await t.client.walk({ concurrency: 8 });
        assert.deepEqual(diffManifests(loadManifest(path.join(SHARED_IMAGES, `${name}.expected.json`)), m), [], name);
      } finally {
        t.close();
      }
    } finally {
      await d.stop();
    }
  }
  // Two images: each appears as a named directory of a synthetic root.
  const d = await startInProcessDaemon({ images: [{ name: 'a', path: IMAGE, devices: [] }, { name: 'b', path: path.join(SHARED_IMAGES, 'lz4.erofs'), devices: [] }] });
  try {
    const t = await connectTestVmm(d.socketPath);
    try {
      const m = await t.client.walk({ concurrency: 8 });
      for (const [prefix, img] of [['a', 'plain'], ['b', 'lz4']] as const) {
        const sub: Manifest = {};
        for (const [k, v] of Object.entries(m)) {
          if (k === prefix) sub[''] = v;
          else if (k.startsWith(`${prefix}/`)) sub[k.slice(prefix.length + 1)] = v;
        }
        assert.deepEqual(diffManifests(loadManifest(path.join(SHARED_IMAGES, `${img}.expected.json`)), sub), [], `export ${prefix}`);
      }
      assert.deepEqual(Object.keys(m).filter((k) => !k.includes('/')).sort(), ['', 'a', 'b']);
    } finally {
      t.close();
    }
  } finally {
    await d.stop();
  }
});
