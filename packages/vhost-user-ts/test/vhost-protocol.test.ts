// vhost-user-ts: message codec, guest memory translation bounds, split-virtqueue chain parsing
// against hostile descriptors, used-ring publication/notification, and the back-end state
// machine over a socketpair (handshake, REPLY_ACK, refusal of unknown requests, no fd leaks).
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { sys } from '../src/sys.js';
import { FakeGuest, MiniFrontEnd, dupFd } from '../src/testing.js';
import {
  BackendChannel,
  DEFAULT_MEMORY_LIMITS,
  MAX_INFLIGHT,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  GuestMemory,
  MemoryError,
  MessageFramer,
  ProtoFeature,
  ProtocolError,
  Req,
  VERSION,
  VhostUserConnection,
  VirtQueue,
  VirtioFeature,
  ChainError,
  bit,
  decodeConfig,
  decodeFsMap,
  decodeMemTable,
  decodeShmemMap,
  decodeVringAddr,
  encodeConfig,
  encodeFsMap,
  encodeMemTable,
  encodeMessage,
  encodeShmemMap,
  encodeSingleRegion,
  encodeVringAddr,
  encodeVringState,
  silentLogger,
  u64,
  type DescriptorChain,
  type MemRegionDesc,
  type VhostUserDevice,
} from '../src/index.js';

const C = sys.constants;
const MiB = 1024 * 1024;

// Ring layout used by the queue tests (guest-physical offsets; gpaBase 0).
const DESC = 0x1000;
const AVAIL = 0x3000;
const USED = 0x4000;
const QSIZE = 16;

function writeDesc(ram: Buffer, table: number, i: number, addr: number | bigint, len: number, flags: number, next = 0): void {
  const o = table + 16 * i;
  ram.writeBigUInt64LE(BigInt(addr), o);
  ram.writeUInt32LE(len >>> 0, o + 8);
  ram.writeUInt16LE(flags, o + 12);
  ram.writeUInt16LE(next, o + 14);
}

function offer(ram: Buffer, head: number): void {
  const idx = ram.readUInt16LE(AVAIL + 2);
  ram.writeUInt16LE(head, AVAIL + 4 + 2 * (idx % QSIZE));
  ram.writeUInt16LE((idx + 1) & 0xffff, AVAIL + 2);
}

function makeQueue(g: FakeGuest, mem: GuestMemory, handler: (c: DescriptorChain) => void = () => {}): VirtQueue {
  const q = new VirtQueue(1, silentLogger, handler);
  q.setSize(QSIZE);
  q.setAddr({ index: 1, flags: 0, desc: g.uva(DESC), avail: g.uva(AVAIL), used: g.uva(USED), log: 0n }, mem);
  q.indirect = true;
  return q;
}

/**
 * Gives a queue its kick and call eventfds (its own duplicates) and starts it. The test keeps
 * `kick` to kick with and `callCopy` to read notifications from; closeFds() closes all three.
 */
function startWithEventfds(q: VirtQueue): { kick: number; callCopy: number; closeFds(): void } {
  const kick = sys.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  const call = sys.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  const callCopy = dupFd(call);
  q.setKick(dupFd(kick));
  q.setCall(dupFd(call));
  q.enabled = true;
  q.start();
  return { kick, callCopy, closeFds: () => [kick, call, callCopy].forEach((fd) => fs.closeSync(fd)) };
}

test('codec: messages, vring state/addr, mem table, config, SHMEM_MAP and FS_MAP round-trip', () => {
  const m = encodeMessage(Req.SET_VRING_NUM, VERSION | FLAG_NEED_REPLY, encodeVringState({ index: 2, num: 256 }));
  assert.equal(m.length, 20);
  assert.deepEqual([m.readUInt32LE(0), m.readUInt32LE(4), m.readUInt32LE(8)], [8, 9, 8]);
  const addr = { index: 1, flags: 0, desc: 0x1000n, used: 0x3000n, avail: 0x2000n, log: 0n };
  assert.deepEqual(decodeVringAddr(encodeVringAddr(addr)), addr);
  const regions: MemRegionDesc[] = [
    { guestPhys: 0n, size: 0xa0000n, userAddr: 0x7f0000000000n, mmapOffset: 0n },
    { guestPhys: 0x100000n, size: 0x7ff00000n, userAddr: 0x7f0000100000n, mmapOffset: 0x100000n },
  ];
  assert.deepEqual(decodeMemTable(encodeMemTable(regions)), regions);
  const bad = encodeMemTable(regions);
  bad.writeUInt32LE(9, 0);
  assert.throws(() => decodeMemTable(bad), ProtocolError, 'more than 8 regions refused');
  bad.writeUInt32LE(3, 0);
  assert.throws(() => decodeMemTable(bad), ProtocolError, 'table shorter than its count refused');
  const cfg = { offset: 0, size: 40, flags: 0, data: Buffer.alloc(40, 7) };
  assert.deepEqual(decodeConfig(encodeConfig(cfg)), cfg);
  const huge = encodeConfig(cfg);
  huge.writeUInt32LE(4096, 4);
  assert.throws(() => decodeConfig(huge), ProtocolError);
  const sm = { shmid: 0, fdOffset: 4096n, shmOffset: 2n * BigInt(MiB), len: 8192n, flags: 1n };
  assert.equal(encodeShmemMap(sm).length, 40);
  assert.deepEqual(decodeShmemMap(encodeShmemMap(sm)), sm);
  const fsm = [{ fdOffset: 0n, cacheOffset: 0x200000n, len: 0x1000n, flags: 1n }];
  const enc = encodeFsMap(fsm);
  assert.equal(enc.length, 256);
  assert.equal(enc.readBigUInt64LE(64), 0x200000n, 'cache_offset array starts at byte 64');
  assert.equal(enc.readBigUInt64LE(128), 0x1000n, 'len array starts at byte 128');
  assert.deepEqual(decodeFsMap(enc), fsm);
});

test('framer: split reads, several messages, fds stay with their message, bad headers refused', () => {
  const f = new MessageFramer();
  const a = encodeMessage(Req.GET_FEATURES, VERSION);
  const b = encodeMessage(Req.SET_FEATURES, VERSION, u64(5));
  const both = Buffer.concat([a, b]);
  f.push(both.subarray(0, 5), []);
  assert.equal(f.wanted(), 7);
  assert.equal(f.next(), null);
  f.push(both.subarray(5, 17), [42]);
  const m1 = f.next()!;
  assert.equal(m1.request, Req.GET_FEATURES);
  assert.deepEqual(m1.fds, [42]);
  assert.equal(f.next(), null);
  f.push(both.subarray(17), []);
  const m2 = f.next()!;
  assert.equal(m2.request, Req.SET_FEATURES);
  assert.equal(m2.payload.readBigUInt64LE(0), 5n);
  assert.deepEqual(m2.fds, []);
  const f2 = new MessageFramer();
  const big = encodeMessage(1, VERSION);
  big.writeUInt32LE(1 << 20, 8);
  f2.push(big, []);
  assert.equal(f2.wanted(), 0);
  assert.throws(() => f2.next(), ProtocolError, 'oversized payload refused');
  const f3 = new MessageFramer();
  f3.push(encodeMessage(1, 2), []);
  assert.throws(() => f3.next(), /version/);
});

test('guest memory: translation within bounds, across adjacent regions, and refusal outside', () => {
  const g = new FakeGuest(4 * MiB, 0x100000);
  // Two regions, adjacent in guest-physical space, from one memfd at different offsets.
  const mem = g.memory([g.region(0, 2 * MiB), g.region(2 * MiB, 2 * MiB)]);
  try {
    g.ram.write('hello', 2 * MiB - 2);
    const slices = mem.gpaSlices(0x100000 + 2 * MiB - 2, 5);
    assert.equal(slices.length, 2, 'a buffer spanning two regions is split');
    assert.equal(Buffer.concat(slices).toString(), 'hello');
    assert.equal(mem.gpaView(0x100000, 16).length, 16);
    assert.throws(() => mem.gpaView(0x100000 + 2 * MiB - 2, 5), MemoryError, 'one-region view refuses a crossing');
    assert.throws(() => mem.gpaSlices(0x100000 - 1, 2), MemoryError, 'below guest memory');
    assert.throws(() => mem.gpaSlices(0x100000 + 4 * MiB - 1, 2), MemoryError, 'past the end');
    assert.throws(() => mem.gpaSlices(0xffffffffffffff00n, 0x100), MemoryError, 'huge address');
    assert.throws(() => mem.gpaSlices(0x100000, 0x7fffffff * 3), MemoryError, 'huge length');
    assert.deepEqual(mem.gpaSlices(0x100000, 0), []);
    assert.equal(mem.uvaView(g.uva(0x100000 + 16), 16).length, 16);
    assert.throws(() => mem.uvaView(g.uva(0x100000) - 1n, 16), MemoryError);
    // Writes through a view land in the shared memory.
    mem.gpaSlices(0x100000 + 100, 3)[0]!.write('abc');
    assert.equal(g.ram.toString('utf8', 100, 103), 'abc');
    // A region larger than its fd (touching it would SIGBUS) is refused.
    assert.throws(() => g.memory([g.region(0, 8 * MiB)]), /fd, which has/);
    // Overlapping regions are refused and nothing stays mapped.
    assert.throws(() => g.memory([g.region(0, 2 * MiB), g.region(MiB, 2 * MiB)]), ProtocolError);
  } finally {
    mem.retire();
    g.close();
  }
  assert.equal(mem.regions[0]!.mapped, false, 'retired table is unmapped');
});

test('guest memory: a retired table stays mapped until its last in-flight user releases it', () => {
  const g = new FakeGuest(MiB);
  const mem = g.memory();
  mem.acquire();
  mem.retire();
  assert.equal(mem.regions[0]!.mapped, true);
  mem.release();
  assert.equal(mem.regions[0]!.mapped, false);
  g.close();
});

test('virtqueue: well-formed direct and indirect chains become readable/writable views', () => {
  const g = new FakeGuest(MiB);
  const mem = g.memory();
  const q = makeQueue(g, mem);
  try {
    g.ram.write('request-', 0x10000);
    g.ram.write('body', 0x11000);
    writeDesc(g.ram, DESC, 0, 0x10000, 8, 1, 3);
    writeDesc(g.ram, DESC, 3, 0x11000, 4, 1, 5);
    writeDesc(g.ram, DESC, 5, 0x12000, 100, 2);
    const c = q.parseChain(0, mem);
    assert.equal(Buffer.concat(c.readable).toString(), 'request-body');
    assert.equal(c.readableLength, 12);
    assert.equal(c.writableLength, 100);
    c.writable[0]!.write('reply');
    assert.equal(g.ram.toString('utf8', 0x12000, 0x12005), 'reply');
    // Indirect table at 0x20000 with 3 entries, reached from descriptor 7.
    const T = 0x20000;
    writeDesc(g.ram, T, 0, 0x10000, 8, 1, 2);
    writeDesc(g.ram, T, 2, 0x11000, 4, 1, 1);
    writeDesc(g.ram, T, 1, 0x13000, 64, 2);
    writeDesc(g.ram, DESC, 7, T, 48, 4);
    const ci = q.parseChain(7, mem);
    assert.equal(Buffer.concat(ci.readable).toString(), 'request-body');
    assert.equal(ci.writableLength, 64);
    // Zero-length descriptors are allowed and contribute nothing.
    writeDesc(g.ram, DESC, 8, 0x10000, 0, 1, 9);
    writeDesc(g.ram, DESC, 9, 0x10000, 8, 0);
    assert.equal(Buffer.concat(q.parseChain(8, mem).readable).toString(), 'request-');
  } finally {
    mem.retire();
    g.close();
  }
});

test('virtqueue: hostile chains are refused with ChainError/MemoryError', () => {
  const g = new FakeGuest(MiB);
  const mem = g.memory();
  const q = makeQueue(g, mem);
  const bad = (head: number, re: RegExp | (new (...a: never[]) => Error), what: string): void => {
    assert.throws(() => q.parseChain(head, mem), re, what);
  };
  try {
    writeDesc(g.ram, DESC, 0, 0x10000, 8, 1, 1);
    writeDesc(g.ram, DESC, 1, 0x10000, 8, 1, 0);
    bad(0, /loop/, 'two-descriptor loop');
    writeDesc(g.ram, DESC, 2, 0x10000, 8, 1, 2);
    bad(2, /loop/, 'self loop');
    writeDesc(g.ram, DESC, 3, 0x10000, 8, 1, QSIZE);
    bad(3, /next index/, 'next past the table');
    bad(QSIZE, /head index/, 'head past the table');
    writeDesc(g.ram, DESC, 4, MiB - 4, 8, 0);
    bad(4, MemoryError, 'buffer running off the end of guest memory');
    writeDesc(g.ram, DESC, 4, 0xfffffffffffff000n, 4096, 0);
    bad(4, MemoryError, 'address far outside guest memory');
    writeDesc(g.ram, DESC, 5, 0x10000, 0xffffffff, 2);
    bad(5, /over/, 'huge length');
    writeDesc(g.ram, DESC, 6, 0x10000, 8, 2 | 1, 7);
    writeDesc(g.ram, DESC, 7, 0x11000, 8, 0);
    bad(6, /readable descriptor after a writable/, 'readable after writable');
    const T = 0x20000;
    writeDesc(g.ram, DESC, 8, T, 40, 4);
    bad(8, /indirect table length/, 'indirect length not a multiple of 16');
    writeDesc(g.ram, DESC, 8, T, 32, 4);
    writeDesc(g.ram, T, 0, T, 16, 4);
    bad(8, /nested indirect/, 'indirect inside indirect');
    writeDesc(g.ram, T, 0, 0x10000, 8, 1, 1);
    writeDesc(g.ram, T, 1, 0x10000, 8, 1, 0);
    bad(8, /loop/, 'loop inside an indirect table');
    writeDesc(g.ram, DESC, 9, MiB - 16, 64, 4);
    bad(9, MemoryError, 'indirect table outside memory');
    writeDesc(g.ram, DESC, 10, T, 32, 4 | 1, 0);
    bad(10, /NEXT/, 'indirect with NEXT');
    q.indirect = false;
    writeDesc(g.ram, DESC, 8, T, 32, 4);
    bad(8, /without INDIRECT_DESC/, 'indirect not negotiated');
  } finally {
    mem.retire();
    g.close();
  }
});

test('virtqueue: kick → handler; used element before index; call; bad chains dropped; EVENT_IDX', async () => {
  const g = new FakeGuest(MiB);
  const mem = g.memory();
  const got: DescriptorChain[] = [];
  const q = makeQueue(g, mem, (c) => got.push(c));
  const { kick, callCopy, closeFds } = startWithEventfds(q);
  try {
    writeDesc(g.ram, DESC, 0, 0x10000, 8, 1, 1);
    writeDesc(g.ram, DESC, 1, 0x12000, 64, 2);
    writeDesc(g.ram, DESC, 2, 0x10000, 8, 1, 2); // loop: dropped
    writeDesc(g.ram, DESC, 3, 0x10000, 8, 1, 4);
    writeDesc(g.ram, DESC, 4, 0x13000, 64, 2);
    offer(g.ram, 0);
    offer(g.ram, 2);
    offer(g.ram, 3);
    sys.eventfdWrite(kick, 1);
    const until = async (cond: () => boolean): Promise<void> => {
      for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
      assert.ok(cond(), 'condition reached');
    };
    await until(() => got.length === 2);
    assert.deepEqual(got.map((c) => c.head), [0, 3]);
    assert.equal(q.stats.dropped, 1);
    // The dropped chain's head went back with length 0.
    assert.equal(g.ram.readUInt16LE(USED + 2), 1);
    assert.deepEqual([g.ram.readUInt32LE(USED + 4), g.ram.readUInt32LE(USED + 8)], [2, 0]);
    // Complete out of order.
    q.complete(got[1]!, 10);
    q.complete(got[0]!, 1000); // clamped to the writable length
    await new Promise((r) => setImmediate(r));
    assert.equal(g.ram.readUInt16LE(USED + 2), 3);
    assert.deepEqual([g.ram.readUInt32LE(USED + 12), g.ram.readUInt32LE(USED + 16)], [3, 10]);
    assert.deepEqual([g.ram.readUInt32LE(USED + 20), g.ram.readUInt32LE(USED + 24)], [0, 64]);
    assert.ok(sys.eventfdRead(callCopy)! >= 1n, 'guest was notified');
    // EVENT_IDX: the guest asks for an interrupt only once used idx passes 10.
    q.eventIdx = true;
    g.ram.writeUInt16LE(10, AVAIL + 4 + 2 * QSIZE);
    offer(g.ram, 0);
    sys.eventfdWrite(kick, 1);
    await until(() => got.length === 3);
    q.complete(got[2]!, 0);
    await new Promise((r) => setImmediate(r));
    assert.equal(g.ram.readUInt16LE(USED + 2), 4);
    // First notification after enabling EVENT_IDX is unconditional; a second one must be suppressed.
    sys.eventfdRead(callCopy);
    offer(g.ram, 3);
    sys.eventfdWrite(kick, 1);
    await until(() => got.length === 4);
    q.complete(got[3]!, 0);
    await new Promise((r) => setImmediate(r));
    assert.equal(sys.eventfdRead(callCopy), null, 'no interrupt before used_event is crossed');
    assert.equal(g.ram.readUInt16LE(USED + 4 + 8 * QSIZE), g.ram.readUInt16LE(AVAIL + 2), 'avail_event published');
    // A guest that moves avail idx by more than the queue size breaks only this queue.
    g.ram.writeUInt16LE((g.ram.readUInt16LE(AVAIL + 2) + QSIZE + 1) & 0xffff, AVAIL + 2);
    sys.eventfdWrite(kick, 1);
    await until(() => q.broken);
    assert.equal(q.stop(), q.lastAvailIdx);
  } finally {
    q.reset();
    mem.retire();
    closeFds();
    g.close();
  }
});

test('virtqueue: big completions notify the driver early, two at a time; none is left unsignalled at the end of a turn', async () => {
  const g = new FakeGuest(MiB);
  const mem = g.memory();
  const seen: number[] = [];
  // Each chain completes synchronously with 64 KiB written, like a 64 KiB READ placed in guest memory.
  const q = makeQueue(g, mem, (c) => {
    q.complete(c, c.writableLength);
    seen.push(q.stats.notifications);
  });
  const { kick, callCopy, closeFds } = startWithEventfds(q);
  try {
    for (let i = 0; i < 4; i++) {
      writeDesc(g.ram, DESC, 2 * i, 0x10000 + 0x100 * i, 16, 1, 2 * i + 1);
      writeDesc(g.ram, DESC, 2 * i + 1, 0x20000 + 0x10000 * i, 0x10000, 2);
    }
    const turn = async (heads: number[]): Promise<void> => {
      seen.length = 0;
      for (const h of heads) offer(g.ram, h);
      sys.eventfdWrite(kick, 1);
      for (let i = 0; i < 200 && seen.length < heads.length; i++) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setImmediate(r));
    };
    // One turn, four big completions: the first at once, then the second of each pair; the
    // fourth (deferred) goes out with the end of the turn.
    const before = q.stats.notifications;
    await turn([0, 2, 4, 6]);
    assert.deepEqual(seen.map((n) => n - before), [1, 1, 2, 2]);
    assert.equal(q.stats.notifications - before, 3, 'the deferred completion was signalled at the end of the turn');
    assert.equal(g.ram.readUInt16LE(USED + 2), 4);
    assert.ok(sys.eventfdRead(callCopy)! >= 1n);
    // A lone big completion (first of its turn) is signalled at once.
    const mid = q.stats.notifications;
    await turn([0]);
    assert.deepEqual(seen.map((n) => n - mid), [1]);
  } finally {
    q.reset();
    mem.retire();
    closeFds();
    g.close();
  }
});

function countFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}
/** Mappings of our fake guest RAM (memfd "fake-guest") in this process. */
function countMaps(): number {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('memfd:fake-guest')).length;
}

test('back-end: handshake, REPLY_ACK, rings, unknown requests refused, clean teardown', async () => {
  const fdsBefore = countFds();
  const g = new FakeGuest(MiB);
  const mapsBefore = countMaps();
  const served: DescriptorChain[] = [];
  const device: VhostUserDevice = {
    features: 1n,
    numQueues: 2,
    getConfig: (off, size) => Buffer.alloc(40, 0x61).subarray(off, off + size),
    handleChain: (c) => {
      served.push(c);
      c.writable[0]!.write('ok');
      c.queue.complete(c, 2);
    },
  };
  const [ours, theirs] = sys.socketpair();
  const conn = new VhostUserConnection(ours, device, silentLogger);
  const fe = new MiniFrontEnd(theirs);
  const kick = sys.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  const call = sys.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  try {
    const feats = (await fe.call(Req.GET_FEATURES)).readBigUInt64LE(0);
    assert.ok(feats & bit(VirtioFeature.PROTOCOL_FEATURES));
    assert.ok(feats & bit(VirtioFeature.VERSION_1));
    assert.ok(feats & 1n, 'device feature offered');
    const pf = (await fe.call(Req.GET_PROTOCOL_FEATURES)).readBigUInt64LE(0);
    for (const b of [ProtoFeature.MQ, ProtoFeature.REPLY_ACK, ProtoFeature.BACKEND_REQ, ProtoFeature.CONFIGURE_MEM_SLOTS, ProtoFeature.STATUS, ProtoFeature.RESET_DEVICE]) {
      assert.ok(pf & bit(b), `protocol feature ${b} offered`);
    }
    fe.send(Req.SET_PROTOCOL_FEATURES, u64(pf));
    assert.equal((await fe.call(Req.GET_QUEUE_NUM)).readBigUInt64LE(0), 2n);
    assert.equal((await fe.call(Req.GET_MAX_MEM_SLOTS)).readBigUInt64LE(0), BigInt(DEFAULT_MEMORY_LIMITS.maxRegions));
    assert.equal(await fe.ack(Req.SET_OWNER), 0n);
    assert.equal(await fe.ack(Req.SET_FEATURES, u64(feats)), 0n);
    assert.equal(await fe.ack(Req.SET_MEM_TABLE, encodeMemTable([g.region()]), [g.fd]), 0n);
    // Unknown and unsupported requests are refused but the connection stays up.
    assert.equal(await fe.ack(99), 1n);
    assert.equal(await fe.ack(Req.SET_LOG_BASE, u64(0)), 1n);
    assert.equal(await fe.ack(Req.SET_VRING_NUM, encodeVringState({ index: 7, num: 16 })), 1n, 'queue out of range');
    assert.equal(await fe.ack(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: 15 })), 1n, 'size not a power of 2');
    assert.equal(await fe.ack(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: QSIZE })), 0n);
    assert.equal(await fe.ack(Req.SET_VRING_BASE, encodeVringState({ index: 1, num: 0 })), 0n);
    const badAddr = { index: 1, flags: 0, desc: 0x10n, avail: g.uva(AVAIL), used: g.uva(USED), log: 0n };
    assert.equal(await fe.ack(Req.SET_VRING_ADDR, encodeVringAddr(badAddr)), 1n, 'ring outside memory');
    assert.equal(await fe.ack(Req.SET_VRING_ADDR, encodeVringAddr({ ...badAddr, desc: g.uva(DESC) })), 0n);
    assert.equal(await fe.ack(Req.SET_VRING_KICK, u64(1), [kick]), 0n);
    assert.equal(await fe.ack(Req.SET_VRING_CALL, u64(1), [call]), 0n);
    const cfg = decodeConfig(await fe.call(Req.GET_CONFIG, encodeConfig({ offset: 0, size: 40, flags: 0, data: Buffer.alloc(40) })));
    assert.equal(cfg.data.toString(), 'a'.repeat(40));
    assert.equal(await fe.ack(Req.SET_STATUS, u64(15)), 0n);
    assert.equal((await fe.call(Req.GET_STATUS)).readBigUInt64LE(0), 15n);
    // Ring disabled until SET_VRING_ENABLE (protocol features negotiated).
    writeDesc(g.ram, DESC, 0, 0x10000, 8, 1, 1);
    writeDesc(g.ram, DESC, 1, 0x12000, 8, 2);
    offer(g.ram, 0);
    sys.eventfdWrite(kick, 1);
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(served.length, 0, 'disabled ring is not served');
    assert.equal(await fe.ack(Req.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 })), 0n);
    for (let i = 0; i < 100 && served.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(served.length, 1);
    assert.equal(g.ram.toString('utf8', 0x12000, 0x12002), 'ok');
    assert.equal(g.ram.readUInt16LE(USED + 2), 1);
    // A new kick fd for a running ring: the ring keeps running on it (and keeps its call fd).
    const kick2 = sys.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
    assert.equal(await fe.ack(Req.SET_VRING_KICK, u64(1), [kick2]), 0n);
    offer(g.ram, 0);
    sys.eventfdWrite(kick2, 1);
    for (let i = 0; i < 100 && served.length < 2; i++) await new Promise((r) => setTimeout(r, 5));
    fs.closeSync(kick2);
    assert.equal(served.length, 2, 'served after the kick fd was replaced');
    assert.equal(g.ram.readUInt16LE(USED + 2), 2);
    assert.ok(sys.eventfdRead(call)! >= 1n, 'call fd still notified');
    const base = await fe.call(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
    assert.equal(base.readUInt32LE(4), 2, 'next avail index returned');
    assert.equal(await fe.ack(Req.RESET_DEVICE), 0n);
  } finally {
    fs.closeSync(theirs);
    fs.closeSync(kick);
    fs.closeSync(call);
    for (let i = 0; i < 100 && !conn.isClosed; i++) await new Promise((r) => setTimeout(r, 5));
  }
  assert.ok(conn.isClosed, 'EOF closes the connection');
  assert.equal(countMaps(), mapsBefore, 'the back-end unmapped guest memory');
  g.close();
  assert.equal(countFds(), fdsBefore, 'no fd leaked');
});

test('back-end channel: SHMEM_MAP with an fd and REPLY_ACK, FS_UNMAP, failure status, close rejects', async () => {
  const [ours, theirs] = sys.socketpair();
  const ch = new BackendChannel(ours, true, silentLogger, { timeoutMs: 1000 });
  const memfd = sys.memfdCreate('channel-test', C.MFD_CLOEXEC);
  const buf = Buffer.alloc(512);
  const readReq = async (): Promise<{ req: number; flags: number; payload: Buffer; fds: number[] }> => {
    for (let i = 0; i < 200; i++) {
      const r = sys.recvmsg(theirs, buf);
      if (r.bytes > 0) {
        const f = new MessageFramer();
        f.push(buf.subarray(0, r.bytes), r.fds);
        const m = f.next()!;
        return { req: m.request, flags: m.flags, payload: m.payload, fds: m.fds };
      }
      await new Promise((res) => setTimeout(res, 5));
    }
    throw new Error('no request');
  };
  const answer = (req: number, status: bigint): void => {
    sys.sendmsg(theirs, encodeMessage(req, VERSION | FLAG_REPLY, u64(status)));
  };
  try {
    const p = ch.shmemMap({ shmid: 0, fdOffset: 0n, shmOffset: 0x200000n, len: 0x1000n, flags: 1n }, memfd);
    const m = await readReq();
    assert.equal(m.req, 9, 'SHMEM_MAP');
    assert.ok(m.flags & FLAG_NEED_REPLY);
    assert.equal(m.fds.length, 1, 'fd passed with the request');
    assert.equal(decodeShmemMap(m.payload).shmOffset, 0x200000n);
    fs.closeSync(m.fds[0]!);
    answer(9, 0n);
    assert.equal(await p, 0n);
    const p2 = ch.fsUnmap([{ fdOffset: 0n, cacheOffset: 0n, len: 0x200000n, flags: 0n }]);
    const m2 = await readReq();
    assert.equal(m2.req, 7, 'FS_UNMAP');
    assert.equal(m2.payload.length, 256);
    answer(7, 1n);
    assert.equal(await p2, 1n, 'failure status handed back');
    const p3 = ch.shmemUnmap({ shmid: 0, fdOffset: 0n, shmOffset: 0n, len: 0x1000n, flags: 0n });
    await readReq();
    fs.closeSync(theirs);
    await assert.rejects(p3, /closed/);
    await assert.rejects(ch.shmemUnmap({ shmid: 0, fdOffset: 0n, shmOffset: 0n, len: 0x1000n, flags: 0n }), /closed/);
  } finally {
    ch.close();
    fs.closeSync(memfd);
    try {
      fs.closeSync(theirs);
    } catch {
      /* closed above */
    }
  }
});

test('guest memory: a 6 GiB region is mapped in chunks; buffers crossing a chunk boundary are split', () => {
  const GiB = 1024 * MiB;
  const fd = sys.memfdCreate('fake-guest-big', C.MFD_CLOEXEC);
  try {
    sys.ftruncate(fd, 6 * GiB); // sparse: costs no memory
    const mem = GuestMemory.fromTable([{ guestPhys: 0x100000000n, size: BigInt(6 * GiB - 0x1000), userAddr: 0x7f0000000000n, mmapOffset: 0x1000n }], [dupFd(fd)]);
    try {
      const gpa = (off: number): number => 0x100000000 + off;
      // A buffer across the 1 GiB chunk boundary (file offset 1 GiB = region offset 1 GiB - 4 KiB).
      const at = GiB - 0x1000 - 3;
      const big = 4 * MiB;
      const parts = mem.gpaSlices(gpa(at), big);
      assert.equal(parts.length, 2, 'split at the end of the first chunk');
      assert.equal(parts[0]!.length + parts[1]!.length, big);
      let k = 0;
      for (const p of parts) for (let i = 0; i < p.length; i++) p[i] = k++ & 0xff;
      const whole = Buffer.alloc(big);
      fs.readSync(fd, whole, 0, big, at + 0x1000);
      assert.ok(whole.every((b, i) => b === (i & 0xff)), 'bytes land at the right file offsets');
      const back = Buffer.alloc(8);
      // Far above 4 GiB.
      mem.gpaSlices(gpa(5 * GiB + 123), 5)[0]!.write('far!!');
      fs.readSync(fd, back, 0, 5, 5 * GiB + 123 + 0x1000);
      assert.equal(back.toString('utf8', 0, 5), 'far!!');
      // Ring-sized contiguous views work anywhere, even across a chunk boundary.
      assert.equal(mem.uvaView(0x7f0000000000n + BigInt(2 * GiB - 0x1000 - 100), 512 * 1024).length, 512 * 1024);
      assert.throws(() => mem.gpaSlices(gpa(6 * GiB - 0x1000 - 2), 4), MemoryError, 'past the end');
    } finally {
      mem.retire();
    }
  } finally {
    fs.closeSync(fd);
  }
});

test('back-end: 3000 random front-end messages neither crash nor wedge the connection, nor leak fds', async () => {
  const fdsBefore = countFds();
  const g = new FakeGuest(MiB);
  const device: VhostUserDevice = { features: 0n, numQueues: 2, getConfig: () => null, handleChain: (c) => c.queue.complete(c, 0) };
  const [ours, theirs] = sys.socketpair();
  const conn = new VhostUserConnection(ours, device, silentLogger);
  const fe = new MiniFrontEnd(theirs);
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  try {
    for (let i = 0; i < 3000; i++) {
      const req = rnd(45);
      const payload = Buffer.alloc(rnd(5) === 0 ? rnd(300) : [8, 40, 12 + 40, 8 + 32 * (1 + rnd(3)), 40][rnd(5)]!);
      for (let j = 0; j < payload.length; j++) payload[j] = rnd(4) === 0 ? rnd(256) : 0;
      if (payload.length >= 8 && rnd(2)) payload.writeUInt32LE(rnd(3), 0); // plausible queue indexes
      const fds: number[] = [];
      const nfd = rnd(6) === 0 ? 1 + rnd(2) : 0;
      for (let k = 0; k < nfd; k++) fds.push(rnd(2) ? g.fd : sys.eventfd(0, C.EFD_CLOEXEC));
      fe.send(req, payload, fds, VERSION | (rnd(2) ? FLAG_NEED_REPLY : 0));
      for (const fd of fds) if (fd !== g.fd) fs.closeSync(fd);
      // Drain whatever replies came back so the socket never fills.
      if (i % 50 === 0) {
        await new Promise((r) => setTimeout(r, 2));
        const buf = Buffer.alloc(65536);
        for (let r = sys.recvmsg(theirs, buf); r.bytes > 0; r = sys.recvmsg(theirs, buf)) for (const fd of r.fds) fs.closeSync(fd);
      }
    }
    await new Promise((r) => setTimeout(r, 50));
    const buf = Buffer.alloc(65536);
    for (let r = sys.recvmsg(theirs, buf); r.bytes > 0; r = sys.recvmsg(theirs, buf)) for (const fd of r.fds) fs.closeSync(fd);
    assert.equal(conn.isClosed, false, 'well-framed garbage does not close the connection');
    assert.equal((await fe.call(Req.GET_QUEUE_NUM)).readBigUInt64LE(0), 2n, 'still answering');
  } finally {
    fs.closeSync(theirs);
    for (let i = 0; i < 100 && !conn.isClosed; i++) await new Promise((r) => setTimeout(r, 5));
    g.close();
  }
  assert.equal(countFds(), fdsBefore, 'no fd leaked');
});

test('virtqueue: at most MAX_INFLIGHT chains are taken at once; completions resume the queue', async () => {
  const N = 256;
  const g = new FakeGuest(MiB);
  const mem = g.memory();
  const held: DescriptorChain[] = [];
  const q = new VirtQueue(1, silentLogger, (c) => held.push(c));
  const kick = sys.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  try {
    q.setSize(N);
    q.setAddr({ index: 1, flags: 0, desc: g.uva(DESC), avail: g.uva(AVAIL), used: g.uva(USED), log: 0n }, mem);
    q.setKick(dupFd(kick));
    q.enabled = true;
    q.start();
    for (let i = 0; i < 200; i++) {
      const o = DESC + 16 * i;
      g.ram.writeBigUInt64LE(0x10000n, o);
      g.ram.writeUInt32LE(16, o + 8);
      g.ram.writeUInt16LE(0, o + 12);
      g.ram.writeUInt16LE(i, AVAIL + 4 + 2 * i);
    }
    g.ram.writeUInt16LE(200, AVAIL + 2);
    sys.eventfdWrite(kick, 1);
    const settle = async (): Promise<void> => {
      for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    };
    await settle();
    assert.equal(held.length, MAX_INFLIGHT, 'taking stops at the cap');
    q.complete(held[0]!, 0);
    await settle();
    assert.equal(held.length, MAX_INFLIGHT + 1, 'one completion lets one more in');
    for (let i = 1; i < held.length; i++) q.complete(held[i]!, 0);
    await settle();
    for (let i = MAX_INFLIGHT + 1; i < held.length; i++) q.complete(held[i]!, 0);
    await settle();
    assert.equal(held.length, 200, 'all chains eventually taken');
    assert.equal(g.ram.readUInt16LE(USED + 2), 200);
  } finally {
    q.reset();
    mem.retire();
    fs.closeSync(kick);
    g.close();
  }
});
