// VIRTIO shared memory as QEMU 11.1 speaks it: GET_SHMEM_CONFIG answers the device's regions
// (with the SHMEM protocol feature, bit 22, negotiated), and every window mapping comes back to
// the back-end as ADD_MEM_REG / REM_MEM_REG. Those echoes are accepted up to the slots announced
// in GET_MAX_MEM_SLOTS, counted (the device sees how many remain), and resolved when a descriptor
// points into them; one that maps a read-only fd never takes device writes.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sys } from '../src/sys.js';
import { FakeGuest, MiniFrontEnd, TestRing, handshake, recordingLogger } from '../src/testing.js';
import {
  ProtoFeature,
  Req,
  SHMEM_CONFIG_SIZE,
  VhostUserConnection,
  bit,
  encodeSingleRegion,
  silentLogger,
  u64,
  type DescriptorChain,
  type MemRegionDesc,
  type VhostUserDevice,
} from '../src/index.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const C = sys.constants;

function mapsOf(name: string): number {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(name)).length;
}

async function until(cond: () => boolean, what: string, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 2));
  assert.ok(cond(), what);
}

test('GET_SHMEM_CONFIG: the device\'s regions, once SHMEM (bit 22) is negotiated; bits 20 and 21 are never offered for it', async () => {
  const device: VhostUserDevice = { features: 0n, numQueues: 2, protocolFeatures: bit(ProtoFeature.SHMEM), shmemRegions: [BigInt(GiB)], handleChain: () => {} };
  const [ours, theirs] = sys.socketpair();
  const conn = new VhostUserConnection(ours, device, silentLogger);
  const fe = new MiniFrontEnd(theirs);
  try {
    const pf = (await fe.call(Req.GET_PROTOCOL_FEATURES)).readBigUInt64LE(0);
    assert.ok(pf & bit(22), 'SHMEM offered as bit 22');
    assert.equal(pf & (bit(20) | bit(21)), 0n, 'GET_VRING_BASE_INFLIGHT and GPA_ADDRESSES are not offered');
    const refused = await fe.call(Req.GET_SHMEM_CONFIG);
    assert.equal(refused.length, SHMEM_CONFIG_SIZE, 'a refusal still has the reply\'s shape');
    assert.equal(refused.readUInt32LE(0), 0, 'without SHMEM negotiated: no regions');
    fe.send(Req.SET_PROTOCOL_FEATURES, u64(pf));
    const r = await fe.call(Req.GET_SHMEM_CONFIG);
    assert.equal(r.length, 2056);
    assert.equal(r.readUInt32LE(0), 1, 'one region');
    assert.equal(r.readBigUInt64LE(8), BigInt(GiB), 'region 0: the window size the device gave');
    assert.ok(r.subarray(16).every((b) => b === 0));
  } finally {
    conn.close();
    fs.closeSync(theirs);
  }
  const [a, b] = sys.socketpair();
  try {
    assert.throws(() => new VhostUserConnection(a, { ...device, shmemRegions: [12345n] }, silentLogger), /multiple of the page size/);
  } finally {
    fs.closeSync(a);
    fs.closeSync(b);
  }
});

/** Copies each request's readable bytes into its writable buffers (how much it wrote is the reply length). */
function copyDevice(seen: DescriptorChain[]): VhostUserDevice {
  return {
    features: 0n,
    numQueues: 1,
    protocolFeatures: bit(ProtoFeature.SHMEM),
    shmemRegions: [BigInt(8 * MiB)],
    handleChain(chain) {
      seen.push(chain);
      const data = Buffer.concat(chain.readable);
      let n = 0;
      for (const w of chain.writable) n += data.copy(w, 0, n);
      chain.queue.complete(chain, n);
    },
  };
}

test('QEMU 11.1 echo: window mappings as ADD_MEM_REG up to the announced slots, resolved in descriptors, read-only ones never written, REM_MEM_REG frees a slot', async () => {
  const WINDOW_GPA = 0x1_0000_0000n;
  const g = new FakeGuest(MiB);
  const win = sys.memfdCreate('echo-window', C.MFD_CLOEXEC);
  sys.ftruncate(win, 4 * MiB);
  fs.writeSync(win, Buffer.from('hello from the window'), 0, 21, 100);
  const roPath = path.join(os.tmpdir(), `echo-ro-${process.pid}`);
  fs.writeFileSync(roPath, Buffer.alloc(64 * 1024, 0x5a));
  const ro = fs.openSync(roPath, 'r');
  const [ours, theirs] = sys.socketpair();
  const [chOurs, chTheirs] = sys.socketpair();
  const log = recordingLogger();
  const seen: DescriptorChain[] = [];
  const conn = new VhostUserConnection(ours, copyDevice(seen), log, { memoryLimits: { maxRegions: 4 } });
  const fe = new MiniFrontEnd(theirs);
  const ring = new TestRing(g, 0);
  const region = (i: number, size: number, mmapOffset = 0n): MemRegionDesc => ({
    guestPhys: WINDOW_GPA + BigInt(i * 2 * MiB),
    size: BigInt(size),
    userAddr: 0x7e00_0000_0000n + BigInt(i * 2 * MiB),
    mmapOffset,
  });
  try {
    await handshake(fe, g);
    assert.equal((await fe.call(Req.GET_MAX_MEM_SLOTS)).readBigUInt64LE(0), 4n, 'the slots announced');
    assert.equal(await fe.ack(Req.SET_BACKEND_REQ_FD, undefined, [chTheirs]), 0n);
    fs.closeSync(chTheirs);
    await ring.setup(fe);
    // Three window mappings come back as memory regions: a memfd (two pieces) and a read-only file.
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(region(0, 2 * MiB)), [win]), 0n);
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(region(1, 64 * 1024)), [ro]), 0n, 'a read-only fd is accepted');
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(region(2, 2 * MiB, BigInt(2 * MiB))), [win]), 0n);
    assert.deepEqual(conn.backend.memorySlots, { limit: 4, used: 4 });
    assert.deepEqual(conn.backend.channel!.memorySlots(), { limit: 4, used: 4, free: 0 }, 'the device sees no slot left');
    const echoMaps = mapsOf('memfd:echo-window');
    // One more than announced: refused, nothing mapped, one log line, the connection stays up.
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(region(3, 2 * MiB)), [win]), 1n);
    assert.equal(mapsOf('memfd:echo-window'), echoMaps, 'nothing mapped for the refused region');
    assert.equal(log.lines.filter((l) => l.level === 'warn' && /all 4 memory slots/.test(String((l.fields as { err?: string }).err))).length, 1);

    // A descriptor pointing into the window is resolved (the guest may put a buffer there).
    const reply = BigInt(g.gpaBase + 0x20000);
    assert.equal(await ring.chain([{ gpa: WINDOW_GPA + 100n, len: 21 }, { gpa: reply, len: 64, write: true }]), 21);
    assert.equal(g.ram.toString('utf8', 0x20000, 0x20000 + 21), 'hello from the window');
    // A writable buffer in the read-only region: the chain is dropped, the device never sees it.
    const before = seen.length;
    assert.equal(await ring.chain([{ gpa: reply, len: 8 }, { gpa: WINDOW_GPA + BigInt(2 * MiB), len: 16, write: true }]), 0);
    assert.equal(seen.length, before, 'not handed to the device');
    // A writable buffer in a writable echo lands in the file.
    g.ram.write('written by device', 0x20000);
    assert.equal(await ring.chain([{ gpa: reply, len: 17 }, { gpa: WINDOW_GPA + BigInt(4 * MiB) + 10n, len: 32, write: true }]), 17);
    const back = Buffer.alloc(17);
    fs.readSync(win, back, 0, 17, 2 * MiB + 10);
    assert.equal(back.toString(), 'written by device');

    // REM_MEM_REG (identified by guest address, user address and size) frees the slot.
    assert.equal(await fe.ack(Req.REM_MEM_REG, encodeSingleRegion({ ...region(1, 64 * 1024), mmapOffset: 0n })), 0n);
    assert.deepEqual(conn.backend.memorySlots, { limit: 4, used: 3 });
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(region(3, 2 * MiB)), [win]), 0n, 'now it fits');
    assert.equal(await fe.ack(Req.REM_MEM_REG, encodeSingleRegion(region(5, 2 * MiB))), 1n, 'removing a region never added is refused');
  } finally {
    ring.close();
    fs.closeSync(theirs);
    fs.closeSync(chOurs);
    await until(() => conn.isClosed, 'connection closed');
    fs.closeSync(win);
    fs.closeSync(ro);
    fs.rmSync(roPath);
    g.close();
  }
  assert.equal(mapsOf('memfd:echo-window'), 0, 'every echo unmapped at disconnect');
  assert.equal(mapsOf(roPath), 0);
});
