// A front-end (VMM) that cannot hurt us: huge offsets and sizes, floods of messages with fds,
// negotiation repeated under a live device, replies that come too late, and memory tables
// replaced under in-flight requests. Each is bounded, logged once, and leaves the connection (and
// the rest of the process) working.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { sys, isSysError } from '../src/sys.js';
import { FakeGuest, MiniFrontEnd, TestRing, handshake, recordingLogger } from '../src/testing.js';
import {
  BackendChannel,
  FLAG_REPLY,
  MAX_QUEUED_FDS,
  MessageFramer,
  ProtoFeature,
  Req,
  VERSION,
  VhostUserConnection,
  VirtioFeature,
  bit,
  decodeShmemMap,
  encodeMemTable,
  encodeMessage,
  encodeSingleRegion,
  encodeVringState,
  silentLogger,
  u64,
  type DescriptorChain,
  type LateReply,
  type VhostUserDevice,
} from '../src/index.js';

const MiB = 1024 * 1024;
const TiB = 2 ** 40;
const C = sys.constants;

function mappedBytes(name: string): number {
  let total = 0;
  for (const l of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    if (!l.includes(name)) continue;
    const [a, b] = l.split(' ')[0]!.split('-');
    total += parseInt(b!, 16) - parseInt(a!, 16);
  }
  return total;
}
const countFds = (): number => fs.readdirSync('/proc/self/fd').length;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Holds every chain until the test completes it. */
function holdingDevice(held: DescriptorChain[], extra: Partial<VhostUserDevice> = {}): VhostUserDevice {
  return { features: 0n, numQueues: 1, handleChain: (c) => held.push(c), ...extra };
}

test('a region is mapped from its page-aligned offset only: an offset of a terabyte maps its 2 MiB, not the terabyte', async () => {
  const fd = sys.memfdCreate('huge-offset', C.MFD_CLOEXEC);
  sys.ftruncate(fd, TiB + 4 * MiB); // sparse
  fs.writeSync(fd, Buffer.from('far away'), 0, 8, TiB + 100);
  const g = new FakeGuest(MiB);
  const [ours, theirs] = sys.socketpair();
  const conn = new VhostUserConnection(ours, holdingDevice([]), silentLogger);
  const fe = new MiniFrontEnd(theirs);
  try {
    await handshake(fe, g);
    const started = Date.now();
    const region = { guestPhys: 0x1_0000_0000n, size: BigInt(2 * MiB), userAddr: 0x7e00_0000_0000n, mmapOffset: BigInt(TiB) };
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(region), [fd]), 0n);
    // Unaligned: the region starts 100 bytes into a page.
    const skewed = { guestPhys: 0x2_0000_0000n, size: BigInt(MiB), userAddr: 0x7e10_0000_0000n, mmapOffset: BigInt(TiB + 100) };
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(skewed), [fd]), 0n);
    assert.ok(Date.now() - started < 1000, 'no terabyte of mappings made');
    assert.ok(mappedBytes('memfd:huge-offset') <= 3 * MiB + 2 * sys.pageSize, `mapped ${mappedBytes('memfd:huge-offset')} bytes`);
    const mem = conn.backend.memory;
    assert.equal(mem.gpaView(0x1_0000_0000n + 100n, 8).toString(), 'far away', 'bytes at the right file offset');
    assert.equal(mem.gpaView(0x2_0000_0000n, 8).toString(), 'far away', 'an unaligned offset too');
  } finally {
    conn.close();
    fs.closeSync(theirs);
    fs.closeSync(fd);
    g.close();
  }
  assert.equal(mappedBytes('memfd:huge-offset'), 0);
});

test('region size, total size and slot count are capped, each with a clear refusal', async () => {
  const fd = sys.memfdCreate('capped', C.MFD_CLOEXEC);
  sys.ftruncate(fd, 64 * MiB);
  const g = new FakeGuest(MiB);
  const [ours, theirs] = sys.socketpair();
  const log = recordingLogger();
  const conn = new VhostUserConnection(ours, holdingDevice([]), log, { memoryLimits: { maxRegions: 3, maxRegionBytes: 8 * MiB, maxTotalBytes: 12 * MiB } });
  const fe = new MiniFrontEnd(theirs);
  const at = (i: number, size: number) => ({ guestPhys: 0x1_0000_0000n + BigInt(i * 16 * MiB), size: BigInt(size), userAddr: 0x7e00_0000_0000n + BigInt(i * 16 * MiB), mmapOffset: 0n });
  try {
    await handshake(fe, g);
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(at(1, 16 * MiB)), [fd]), 1n, 'a region over the size limit');
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(at(1, 8 * MiB)), [fd]), 0n);
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(at(2, 8 * MiB)), [fd]), 1n, 'over the total');
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(at(2, 2 * MiB)), [fd]), 0n);
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(at(3, MiB)), [fd]), 1n, 'over the slots');
    const errs = log.lines.filter((l) => l.msg === 'vhost-user request refused').map((l) => String((l.fields as { err: string }).err));
    assert.equal(errs.length, 3);
    assert.match(errs[0]!, /larger than the limit of 8388608/);
    assert.match(errs[1]!, /bytes in all: more than the limit of 12582912/);
    assert.match(errs[2]!, /all 3 memory slots/);
    assert.equal(mappedBytes('memfd:capped'), 10 * MiB, 'only what was accepted is mapped');
    assert.equal((await fe.call(Req.GET_QUEUE_NUM)).readBigUInt64LE(0), 1n, 'the connection works');
  } finally {
    conn.close();
    fs.closeSync(theirs);
    fs.closeSync(fd);
    g.close();
  }
});

test('a flood of messages with fds behind a slow request holds at most a bounded number of fds, then is served', async () => {
  const g = new FakeGuest(MiB);
  const held: DescriptorChain[] = [];
  const [ours, theirs] = sys.socketpair();
  const log = recordingLogger();
  const conn = new VhostUserConnection(ours, holdingDevice(held), log);
  const fe = new MiniFrontEnd(theirs);
  const ring = new TestRing(g, 0);
  const payload = sys.eventfd(0, C.EFD_CLOEXEC);
  try {
    await handshake(fe, g);
    await ring.setup(fe);
    void ring.chain([{ gpa: 0x20000n, len: 16, write: true }]).catch(() => {});
    for (let i = 0; i < 200 && held.length === 0; i++) await sleep(5);
    assert.equal(held.length, 1, 'a request in flight');
    // GET_VRING_BASE waits (up to 2 s) for it; meanwhile the front-end floods us.
    fe.send(Req.GET_VRING_BASE, encodeVringState({ index: 0, num: 0 }));
    await sleep(50);
    const before = countFds();
    let sent = 0;
    let peak = 0;
    for (; sent < 400; sent++) {
      try {
        sys.sendmsg(theirs, encodeMessage(99, VERSION, u64(0)), new Array(8).fill(payload));
      } catch {
        break; // our socket buffer is full: the back-end stopped reading
      }
      if (sent % 16 === 0) {
        await sleep(1);
        peak = Math.max(peak, countFds() - before);
      }
    }
    await sleep(100);
    peak = Math.max(peak, countFds() - before);
    assert.ok(sent >= 20, `flooded with ${sent} messages (${sent * 8} fds)`);
    assert.ok(peak <= MAX_QUEUED_FDS + 8, `at most ${MAX_QUEUED_FDS} + 8 received fds held, saw ${peak}`);
    assert.ok(conn.stats.pauses >= 1, 'reading paused');
    // The slow request ends (drain timeout), the flood is handled, and the connection answers.
    const base = await fe.reply(Req.GET_VRING_BASE);
    assert.equal(base.readUInt32LE(4), 1);
    // Our side of the socket empties as the back-end reads the rest of the flood.
    for (let i = 0; ; i++) {
      try {
        fe.send(Req.GET_QUEUE_NUM);
        break;
      } catch (e) {
        if (!isSysError(e, 'EAGAIN') || i > 400) throw e;
        await sleep(5);
      }
    }
    assert.equal((await fe.reply(Req.GET_QUEUE_NUM)).readBigUInt64LE(0), 1n);
    for (let i = 0; i < 400 && countFds() > before; i++) await sleep(5);
    assert.ok(countFds() <= before, 'every received fd closed');
    assert.equal(log.count('warn', /reading paused/), 1, 'one log line for the flood');
    assert.ok(log.count('warn', 'vhost-user request refused') <= 10, 'refusals are not logged one by one');
  } finally {
    for (const c of held) c.queue.complete(c, 0); // stale by now: only lets go of its memory
    ring.close();
    conn.close();
    fs.closeSync(theirs);
    fs.closeSync(payload);
    g.close();
  }
});

test('negotiation repeated under a live device: same values are no event, a second back-end channel replaces the first without a "gone" in between', async () => {
  const g = new FakeGuest(MiB);
  const events: string[] = [];
  const channels: (BackendChannel | null)[] = [];
  const device = holdingDevice([], {
    protocolFeatures: bit(ProtoFeature.SHMEM),
    featuresAcked: (f, pf) => events.push(`features ${f.toString(16)} ${pf.toString(16)}`),
    backendChannel: (ch, replaced) => {
      channels.push(ch);
      events.push(ch === null ? 'channel gone' : replaced ? 'channel replaced' : 'channel');
    },
  });
  const [ours, theirs] = sys.socketpair();
  const log = recordingLogger();
  const conn = new VhostUserConnection(ours, device, log);
  const fe = new MiniFrontEnd(theirs);
  const pairs = [sys.socketpair(), sys.socketpair()];
  try {
    const { features, protocolFeatures } = await handshake(fe, g);
    assert.equal(events.length, 2, 'SET_PROTOCOL_FEATURES and SET_FEATURES');
    assert.equal(await fe.ack(Req.SET_BACKEND_REQ_FD, undefined, [pairs[0]![1]]), 0n);
    for (let i = 0; i < 3; i++) {
      assert.equal(await fe.ack(Req.SET_FEATURES, u64(features)), 0n);
      fe.send(Req.SET_PROTOCOL_FEATURES, u64(protocolFeatures));
    }
    assert.equal(await fe.ack(Req.SET_BACKEND_REQ_FD, undefined, [pairs[1]![1]]), 0n);
    assert.deepEqual(events.slice(2), ['channel', 'channel replaced'], 'repeats are no event; the replacement is one');
    assert.ok(channels[0]!.isClosed, 'the first channel is closed');
    assert.ok(!channels[1]!.isClosed);
    assert.equal(conn.backend.channel, channels[1]);
    // A real change is an event (and a changed protocol feature set is logged).
    const fewer = features & ~bit(VirtioFeature.RING_EVENT_IDX);
    assert.equal(await fe.ack(Req.SET_FEATURES, u64(fewer)), 0n);
    fe.send(Req.SET_PROTOCOL_FEATURES, u64(protocolFeatures & ~bit(ProtoFeature.SHMEM)));
    assert.equal((await fe.call(Req.GET_QUEUE_NUM)).readBigUInt64LE(0), 1n);
    assert.equal(events.length, 6);
    assert.equal(log.count('warn', 'front-end changed the protocol features of a live connection'), 1);
  } finally {
    conn.close();
    fs.closeSync(theirs);
    for (const [a, b] of pairs) {
      fs.closeSync(a!);
      try {
        fs.closeSync(b!);
      } catch {
        /* sent and closed */
      }
    }
    g.close();
  }
  assert.deepEqual(events.slice(-1), ['channel gone'], 'gone only at disconnect');
});

test('a back-end channel reply after its timeout never answers the next request; a front-end that never answers loses the channel', async () => {
  const [ours, theirs] = sys.socketpair();
  const log = recordingLogger();
  const ch = new BackendChannel(ours, true, log, { timeoutMs: 100 });
  const late: LateReply[] = [];
  ch.onLateReply = (r) => late.push(r);
  const memfd = sys.memfdCreate('late-reply', C.MFD_CLOEXEC);
  const buf = Buffer.alloc(512);
  const framer = new MessageFramer();
  const next = (): { request: number; payload: Buffer } | null => {
    const r = sys.recvmsg(theirs, buf);
    if (r.bytes > 0) framer.push(buf.subarray(0, r.bytes), r.fds);
    const m = framer.next();
    if (!m) return null;
    for (const fd of m.fds) fs.closeSync(fd);
    return m;
  };
  const answer = (req: number, status: bigint): void => void sys.sendmsg(theirs, encodeMessage(req, VERSION | FLAG_REPLY, u64(status)));
  const map = (shmOffset: bigint) => ch.shmemMap({ shmid: 0, fdOffset: 0n, shmOffset, len: 0x1000n, flags: 0n }, memfd);
  try {
    const a = map(0x1000n);
    await assert.rejects(a, /no reply/);
    assert.equal(decodeShmemMap(next()!.payload).shmOffset, 0x1000n, 'A was sent');
    // B (the same request type) waits: the reply to A is still owed.
    const b = map(0x2000n);
    await sleep(30);
    assert.equal(next(), null, 'B not sent while A\'s reply is owed');
    answer(9, 0n); // A's late reply: success
    let mb: { request: number; payload: Buffer } | null = null;
    for (let i = 0; i < 100 && !mb; i++) {
      await sleep(2);
      mb = next();
    }
    assert.equal(decodeShmemMap(mb!.payload).shmOffset, 0x2000n, 'B sent after the late reply');
    answer(9, 7n);
    assert.equal(await b, 7n, 'B gets its own answer, not A\'s late success');
    assert.equal(late.length, 1);
    assert.equal(late[0]!.status, 0n);
    assert.equal(decodeShmemMap(late[0]!.payload).shmOffset, 0x1000n, 'the device learns what A did');
    assert.equal(log.count('warn', /late reply/), 1);
    // C is never answered: D waits one more timeout, then the channel is dropped.
    await assert.rejects(map(0x3000n), /no reply/);
    await assert.rejects(map(0x4000n), /closed/);
    assert.ok(ch.isClosed);
    assert.equal(log.count('warn', /never answered/), 1);
  } finally {
    ch.close();
    fs.closeSync(theirs);
    fs.closeSync(memfd);
  }
});

test('SET_MEM_TABLE after ADD_MEM_REG / REM_MEM_REG keeps every region an in-flight request uses mapped until it completes', async () => {
  const g = new FakeGuest(MiB, 0, 0x7f0000000000, 'inflight-ram');
  const x = sys.memfdCreate('inflight-x', C.MFD_CLOEXEC);
  sys.ftruncate(x, 2 * MiB);
  const held: DescriptorChain[] = [];
  const [ours, theirs] = sys.socketpair();
  const conn = new VhostUserConnection(ours, holdingDevice(held), silentLogger);
  const fe = new MiniFrontEnd(theirs);
  const ring = new TestRing(g, 0);
  const X = { guestPhys: 0x1_0000_0000n, size: BigInt(2 * MiB), userAddr: 0x7e00_0000_0000n, mmapOffset: 0n };
  const guestMaps = (): number => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('memfd:inflight-ram')).length;
  try {
    await handshake(fe, g);
    await ring.setup(fe);
    assert.equal(await fe.ack(Req.ADD_MEM_REG, encodeSingleRegion(X), [x]), 0n);
    // Two requests in flight: one writes into guest RAM, one into region X.
    void ring.chain([{ gpa: 0x30000n, len: 16, write: true }]).catch(() => {});
    for (let i = 0; i < 200 && held.length < 1; i++) await sleep(2);
    void ring.chain([{ gpa: X.guestPhys + 64n, len: 16, write: true }]).catch(() => {});
    for (let i = 0; i < 200 && held.length < 2; i++) await sleep(2);
    assert.equal(held.length, 2);
    // The front-end removes X and replaces the whole table (the same RAM, mapped anew).
    assert.equal(await fe.ack(Req.REM_MEM_REG, encodeSingleRegion(X)), 0n);
    assert.equal(await fe.ack(Req.SET_MEM_TABLE, encodeMemTable([g.region()]), [g.fd]), 0n);
    assert.equal(guestMaps(), 2 + 1, 'the old RAM mapping stays while a request uses it (plus ours)');
    assert.equal(mappedBytes('memfd:inflight-x'), 2 * MiB, 'X stays mapped while a request uses it');
    // The requests complete: their bytes land, then the old mappings go.
    held[0]!.writable[0]!.write('late write, RAM');
    held[1]!.writable[0]!.write('late write, X');
    held[0]!.queue.complete(held[0]!, 15);
    held[1]!.queue.complete(held[1]!, 13);
    assert.equal(g.ram.toString('utf8', 0x30000, 0x30000 + 15), 'late write, RAM');
    const back = Buffer.alloc(13);
    fs.readSync(x, back, 0, 13, 64);
    assert.equal(back.toString(), 'late write, X');
    assert.equal(guestMaps(), 1 + 1, 'old RAM mapping gone');
    assert.equal(mappedBytes('memfd:inflight-x'), 0, 'X unmapped');
  } finally {
    ring.close();
    conn.close();
    fs.closeSync(theirs);
    fs.closeSync(x);
    g.close();
  }
});
