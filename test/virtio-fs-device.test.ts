// The virtio-fs device over a memfd-backed fake guest: config space, gathering requests from
// several descriptors, scattering replies across several, oversize replies, no-reply requests,
// failures, out-of-order completion, and no writes into guest memory after the ring stopped;
// READ data copied straight into the guest's buffers by the real FUSE server over plain.erofs.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { native } from './support/native.js';
import { VirtQueue, silentLogger, type GuestMemory } from 'vhost-user-ts';
import { MAX_REQUEST_BYTES, VirtioFsDevice, encodeVirtioFsConfig } from '../src/daemon/virtio-fs.js';
import path from 'node:path';
import { openImage } from '../src/erofs/index.js';
import { FuseServer } from '../src/fuse/server.js';
import type { ReplyWriter } from '../src/fuse/reply.js';
import type { ErofsReader } from '../src/erofs/api.js';
import { ImageTree } from '../src/vfs/index.js';
import { FakeGuest, dupFd } from 'vhost-user-ts/testing';
import { SHARED_IMAGES } from './support/paths.js';

const C = native.constants;
const DESC = 0x1000;
const AVAIL = 0x3000;
const USED = 0x4000;
const QSIZE = 32;

/** Request queue 1 of a virtio-fs device over the fake guest's ring (DESC/AVAIL/USED), started. */
function startRing(g: FakeGuest, mem: GuestMemory, server: ConstructorParameters<typeof VirtioFsDevice>[0]['server']) {
  const dev = new VirtioFsDevice({ tag: 'erofs', numRequestQueues: 1, server, log: silentLogger });
  const q = new VirtQueue(1, silentLogger, (c) => dev.handleChain(c));
  const kick = native.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  const call = native.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  const close = (): void => {
    q.reset();
    mem.retire();
    fs.closeSync(kick);
    fs.closeSync(call);
  };
  try {
    q.setSize(QSIZE);
    q.setAddr({ index: 1, flags: 0, desc: g.uva(DESC), avail: g.uva(AVAIL), used: g.uva(USED), log: 0n }, mem);
    q.setKick(dupFd(kick));
    q.setCall(dupFd(call));
    q.enabled = true;
    q.start();
  } catch (e) {
    close();
    throw e;
  }
  return { dev, q, kick, close };
}

function writeDesc(ram: Buffer, i: number, addr: number, len: number, flags: number, next = 0): void {
  const o = DESC + 16 * i;
  ram.writeBigUInt64LE(BigInt(addr), o);
  ram.writeUInt32LE(len, o + 8);
  ram.writeUInt16LE(flags, o + 12);
  ram.writeUInt16LE(next, o + 14);
}

function offer(ram: Buffer, head: number): void {
  const idx = ram.readUInt16LE(AVAIL + 2);
  ram.writeUInt16LE(head, AVAIL + 4 + 2 * (idx % QSIZE));
  ram.writeUInt16LE((idx + 1) & 0xffff, AVAIL + 2);
}

function used(ram: Buffer): { idx: number; elems: [number, number][] } {
  const idx = ram.readUInt16LE(USED + 2);
  const elems: [number, number][] = [];
  for (let i = 0; i < idx; i++) elems.push([ram.readUInt32LE(USED + 4 + 8 * i), ram.readUInt32LE(USED + 8 + 8 * i)]);
  return { idx, elems };
}

/** A fuse_in_header-like request: len, opcode, unique, then a tag byte telling the fake server what to do. */
function request(ram: Buffer, at: number, unique: number, action: number): void {
  ram.fill(0, at, at + 41);
  ram.writeUInt32LE(41, at);
  ram.writeUInt32LE(3, at + 4);
  ram.writeBigUInt64LE(BigInt(unique), at + 8);
  ram.writeUInt8(action, at + 40);
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 400 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(cond(), what);
}

test('config space: tag NUL-padded to 36 bytes, then num_request_queues', () => {
  const cfg = encodeVirtioFsConfig('erofs', 3);
  assert.equal(cfg.length, 40);
  assert.equal(cfg.subarray(0, 5).toString(), 'erofs');
  assert.ok(cfg.subarray(5, 36).every((b) => b === 0));
  assert.equal(cfg.readUInt32LE(36), 3);
  assert.throws(() => encodeVirtioFsConfig('x'.repeat(37), 1), RangeError);
  const dev = new VirtioFsDevice({ tag: 'data', numRequestQueues: 2, server: { serve: () => {} }, log: silentLogger });
  assert.equal(dev.numQueues, 3);
  assert.equal(dev.getConfig(36, 4)!.readUInt32LE(0), 2);
  assert.equal(dev.getConfig(30, 20), null);
  assert.throws(() => new VirtioFsDevice({ tag: 'x', numRequestQueues: 0, server: { serve: () => {} }, log: silentLogger }), RangeError);
});

test('requests are gathered, replies scattered, completed out of order, and never written after a stop', async () => {
  const g = new FakeGuest(1024 * 1024);
  const mem: GuestMemory = g.memory();
  const seen: Buffer[] = [];
  let releaseSlow: (() => void) | null = null;
  let releaseStale: (() => void) | null = null;
  const server = {
    serve: async (req: Buffer, out: ReplyWriter): Promise<void> => {
      seen.push(req);
      const unique = req.subarray(8, 16);
      switch (req[40]) {
        case 1: // 16 + 50 bytes
          out.write(Buffer.alloc(50, 0x41));
          break;
        case 2: // too large for the guest's buffers
          out.write(Buffer.alloc(100, 0x42));
          break;
        case 3:
          return; // no reply
        case 4:
          throw new Error('boom');
        case 5:
          await new Promise<void>((r) => (releaseSlow = r));
          break;
        case 6:
          await new Promise<void>((r) => (releaseStale = r));
          out.write(Buffer.from('LATE'));
          break;
      }
      out.end(unique);
    },
  };
  const { dev, q, kick, close } = startRing(g, mem, server);
  try {
    const ram = g.ram;
    // Chain 0: request split 30+11 bytes, reply buffers 16+10+100.
    request(ram, 0x10000, 7, 1);
    ram.copy(ram, 0x10800, 0x10000 + 30, 0x10000 + 41);
    writeDesc(ram, 0, 0x10000, 30, 1, 1);
    writeDesc(ram, 1, 0x10800, 11, 1, 2);
    writeDesc(ram, 2, 0x20000, 16, 3, 3);
    writeDesc(ram, 3, 0x20100, 10, 3, 4);
    writeDesc(ram, 4, 0x20200, 100, 2);
    // Chain 5: oversize reply into 20 bytes.
    request(ram, 0x11000, 8, 2);
    writeDesc(ram, 5, 0x11000, 41, 1, 6);
    writeDesc(ram, 6, 0x21000, 20, 2);
    // Chain 7: no reply. Chain 9: server throws. Chain 11: slow. Chain 13: fast.
    request(ram, 0x12000, 9, 3);
    writeDesc(ram, 7, 0x12000, 41, 1, 8);
    writeDesc(ram, 8, 0x22000, 64, 2);
    request(ram, 0x13000, 10, 4);
    writeDesc(ram, 9, 0x13000, 41, 1, 10);
    writeDesc(ram, 10, 0x23000, 64, 2);
    request(ram, 0x14000, 11, 5);
    writeDesc(ram, 11, 0x14000, 41, 1, 12);
    writeDesc(ram, 12, 0x24000, 64, 2);
    request(ram, 0x15000, 12, 0);
    writeDesc(ram, 13, 0x15000, 41, 1, 14);
    writeDesc(ram, 14, 0x25000, 64, 2);
    for (const h of [0, 5, 7, 9, 11, 13]) offer(ram, h);
    native.eventfdWrite(kick, 1);
    await until(() => used(ram).idx === 5, 'five requests answered while one is still slow');
    assert.equal(seen[0]!.length, 41, 'request gathered from two descriptors');
    assert.equal(seen[0]!.readBigUInt64LE(8), 7n);
    const u = used(ram);
    const lenOf = (head: number): number | undefined => u.elems.find(([h]) => h === head)?.[1];
    assert.equal(lenOf(0), 66);
    assert.equal(ram.readUInt32LE(0x20000), 66);
    assert.equal(ram.subarray(0x20100, 0x20100 + 10).toString(), 'A'.repeat(10));
    assert.equal(ram.subarray(0x20200, 0x20200 + 40).toString(), 'A'.repeat(40));
    assert.equal(ram[0x20200 + 40], 0, 'nothing past the reply');
    assert.equal(lenOf(5), 16, 'oversize reply becomes a bare error header');
    assert.equal(ram.readInt32LE(0x21004), -7);
    assert.equal(ram.readBigUInt64LE(0x21008), 8n);
    assert.equal(lenOf(7), 0, 'no reply: descriptors returned with nothing written');
    assert.equal(lenOf(9), 16);
    assert.equal(ram.readInt32LE(0x23004), -5, 'a failing server gives EIO');
    assert.equal(lenOf(13), 16, 'a later request overtook the slow one');
    assert.equal(lenOf(11), undefined);
    releaseSlow!();
    await until(() => used(ram).idx === 6, 'slow request completes');
    assert.deepEqual(used(ram).elems[5], [11, 16]);
    // An oversized request is copied only up to MAX_REQUEST_BYTES (header intact) and answered.
    request(ram, 0x40000, 14, 0);
    writeDesc(ram, 17, 0x40000, 200 * 1024, 1, 18);
    writeDesc(ram, 18, 0x27000, 64, 2);
    offer(ram, 17);
    native.eventfdWrite(kick, 1);
    await until(() => used(ram).idx === 7, 'oversized request answered');
    assert.equal(seen[seen.length - 1]!.length, MAX_REQUEST_BYTES);
    assert.equal(seen[seen.length - 1]!.readBigUInt64LE(8), 14n);
    assert.deepEqual(used(ram).elems[6], [17, 16]);
    // A request in flight when the ring stops must not write into guest memory afterwards.
    request(ram, 0x16000, 13, 6);
    writeDesc(ram, 15, 0x16000, 41, 1, 16);
    writeDesc(ram, 16, 0x26000, 64, 2);
    offer(ram, 15);
    native.eventfdWrite(kick, 1);
    await until(() => releaseStale !== null, 'stale request reached the server');
    q.stop();
    releaseStale!();
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(ram.readUInt32LE(0x26000), 0, 'no reply bytes after the stop');
    assert.equal(used(ram).idx, 7, 'no used entry after the stop');
    assert.equal(dev.stats.stale, 1);
  } finally {
    close();
    g.close();
  }
});

/** fuse_in_header + fuse_read_in for READ (opcode 15). */
function readRequest(ram: Buffer, at: number, unique: number, nodeid: number, fh: number, offset: number, size: number): void {
  ram.fill(0, at, at + 80);
  ram.writeUInt32LE(80, at);
  ram.writeUInt32LE(15, at + 4);
  ram.writeBigUInt64LE(BigInt(unique), at + 8);
  ram.writeBigUInt64LE(BigInt(nodeid), at + 16);
  ram.writeBigUInt64LE(BigInt(fh), at + 40);
  ram.writeBigUInt64LE(BigInt(offset), at + 48);
  ram.writeUInt32LE(size, at + 56);
}

test('READ data goes straight into the guest buffers: header split over descriptors, several data descriptors, EOF, too little room, a descriptor outside guest memory', async () => {
  const image = openImage(path.join(SHARED_IMAGES, 'plain.erofs'));
  // The real reader, with its calls counted: every READ must copy into guest memory with no
  // buffer in between (readInto per descriptor, never read()).
  const calls = { into: 0, read: 0 };
  const reader = Object.assign(Object.create(image) as ErofsReader, {
    readInto(nid: number, offset: number, length: number, target: Uint8Array, targetOffset?: number): number {
      calls.into++;
      return image.readInto!(nid, offset, length, target, targetOffset);
    },
    read(nid: number, offset: number, length: number): Buffer {
      calls.read++;
      return image.read(nid, offset, length);
    },
  });
  const tree = new ImageTree({ images: [{ reader }] });
  const server = new FuseServer(tree, { resume: true });
  const rctx = { opcode: 1, unique: 1n, nodeid: 1, uid: 0, gid: 0, pid: 0, inodeDax: false };
  const dir = tree.lookup(rctx, 1, Buffer.from('big'));
  const file = tree.lookup(rctx, dir.nodeid, Buffer.from('rand-2m'));
  const { fh } = tree.open(rctx, file.nodeid, 0);
  const fileSize = file.attr!.size;
  const nid = image.lookup(image.lookup(image.rootNid, 'big')!, 'rand-2m')!;
  assert.ok(fileSize > 100_000);
  const g = new FakeGuest(1024 * 1024);
  const mem: GuestMemory = g.memory();
  const { dev, q, kick, close } = startRing(g, mem, server);
  try {
    const ram = g.ram;
    ram.fill(0xee, 0x20000, 0xf0000); // canaries in every reply area
    // Chain 0: 40,000 bytes at 12,345; the out header is split 10 + 6 over two descriptors and the
    // data runs on over three (2,994 + 5,000 + 32,006 of 60,000).
    readRequest(ram, 0x10000, 21, file.nodeid, fh, 12_345, 40_000);
    writeDesc(ram, 0, 0x10000, 80, 1, 1);
    writeDesc(ram, 1, 0x20000, 10, 3, 2);
    writeDesc(ram, 2, 0x30000, 3000, 3, 3);
    writeDesc(ram, 3, 0x40000, 5000, 3, 4);
    writeDesc(ram, 4, 0x50000, 60_000, 2);
    // Chain 5: the second writable descriptor lies outside guest memory: dropped, nothing written.
    readRequest(ram, 0x11000, 22, file.nodeid, fh, 0, 4096);
    writeDesc(ram, 5, 0x11000, 80, 1, 6);
    writeDesc(ram, 6, 0x70000, 16, 3, 7);
    writeDesc(ram, 7, 2 * 1024 * 1024, 4096, 2);
    // Chain 8: 4,096 bytes asked 1,000 before EOF: a short read.
    readRequest(ram, 0x12000, 23, file.nodeid, fh, fileSize - 1000, 4096);
    writeDesc(ram, 8, 0x12000, 80, 1, 9);
    writeDesc(ram, 9, 0x80000, 16, 3, 10);
    writeDesc(ram, 10, 0x80100, 4096, 2);
    // Chain 11: 4,096 bytes into 16 + 100 bytes of room: E2BIG.
    readRequest(ram, 0x13000, 24, file.nodeid, fh, 0, 4096);
    writeDesc(ram, 11, 0x13000, 80, 1, 12);
    writeDesc(ram, 12, 0x90000, 116, 2);
    // Chain 13: 4,096 bytes asked 50 before EOF into 16 + 100 bytes: the short read fits.
    readRequest(ram, 0x14000, 25, file.nodeid, fh, fileSize - 50, 4096);
    writeDesc(ram, 13, 0x14000, 80, 1, 14);
    writeDesc(ram, 14, 0xa0000, 116, 2);
    for (const h of [0, 5, 8, 11, 13]) offer(ram, h);
    native.eventfdWrite(kick, 1);
    await until(() => used(ram).idx === 5, 'all five chains returned');
    const u = used(ram);
    const lenOf = (head: number): number | undefined => u.elems.find(([h]) => h === head)?.[1];
    const hdr = Buffer.concat([ram.subarray(0x20000, 0x2000a), ram.subarray(0x30000, 0x30006)]);
    assert.equal(hdr.readUInt32LE(0), 16 + 40_000, 'out header len across the split');
    assert.equal(hdr.readInt32LE(4), 0);
    assert.equal(hdr.readBigUInt64LE(8), 21n);
    assert.equal(lenOf(0), 16 + 40_000);
    const data = Buffer.concat([ram.subarray(0x30006, 0x30000 + 3000), ram.subarray(0x40000, 0x40000 + 5000), ram.subarray(0x50000, 0x50000 + 32_006)]);
    assert.ok(data.equals(image.read(nid, 12_345, 40_000)), 'file bytes across three descriptors');
    assert.ok(ram.subarray(0x2000a, 0x20010).every((b) => b === 0xee), 'nothing past the 10-byte descriptor');
    assert.ok(ram.subarray(0x50000 + 32_006, 0x50000 + 60_000).every((b) => b === 0xee), 'nothing past the data');
    assert.equal(lenOf(5), 0, 'chain with a descriptor outside guest memory returned empty');
    assert.ok(ram.subarray(0x70000, 0x70010).every((b) => b === 0xee), 'its valid descriptor untouched');
    assert.equal(q.stats.dropped, 1);
    assert.equal(lenOf(8), 16 + 1000);
    assert.equal(ram.readUInt32LE(0x80000), 16 + 1000);
    assert.ok(ram.subarray(0x80100, 0x80100 + 1000).equals(image.read(nid, fileSize - 1000, 1000)));
    assert.ok(ram.subarray(0x80100 + 1000, 0x80100 + 4096).every((b) => b === 0xee), 'nothing past EOF');
    assert.equal(lenOf(11), 16);
    assert.equal(ram.readInt32LE(0x90004), -7, 'E2BIG');
    assert.equal(ram.readBigUInt64LE(0x90008), 24n);
    assert.equal(lenOf(13), 16 + 50);
    assert.equal(ram.readUInt32LE(0xa0000), 16 + 50);
    assert.ok(ram.subarray(0xa0010, 0xa0010 + 50).equals(image.read(nid, fileSize - 50, 50)));
    // Chain 0: one copy per data descriptor (3); chain 8: 1; chain 11: 100 bytes, then one byte
    // to learn that the file goes on (E2BIG); chain 13: 1. Chain 5 never reached the server.
    assert.deepEqual(calls, { into: 3 + 1 + 2 + 1, read: 0 }, 'file data copied straight into guest memory');
    assert.equal(dev.inflight, 0);
  } finally {
    close();
    g.close();
    image.close();
  }
});
