// The vhost-user socket server: 20 connect → serve → disconnect cycles and 20 guest-reset
// cycles (GET_VRING_BASE, then the rings set up again) leave no fds or guest mappings behind;
// --fd with a listening or a connected socket; stop() removes the socket file.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sys } from '../src/sys.js';
import {
  Req,
  VhostUserServer,
  VirtioFeature,
  bit,
  encodeMemTable,
  encodeVringAddr,
  encodeVringState,
  silentLogger,
  u64,
  type VhostUserDevice,
} from '../src/index.js';
import { FakeGuest, MiniFrontEnd } from '../src/testing.js';

const C = sys.constants;
const DESC = 0x1000;
const AVAIL = 0x3000;
const USED = 0x4000;
const QSIZE = 8;

function countFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}
function guestMaps(): number {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('memfd:fake-guest')).length;
}

/** Answers every request with "pong" in its first writable buffer. */
function pongDevice(): VhostUserDevice {
  return {
    features: 0n,
    numQueues: 2,
    handleChain: (c) => {
      const n = c.writable.length ? c.writable[0]!.write('pong') : 0;
      setImmediate(() => c.queue.complete(c, n));
    },
  };
}

async function until(cond: () => boolean, what: string, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 2));
  assert.ok(cond(), what);
}

/** Configures ring 1 from scratch (base 0) and enables it. */
async function setupRing(fe: MiniFrontEnd, g: FakeGuest, kick: number, call: number): Promise<void> {
  g.ram.fill(0, AVAIL, AVAIL + 0x2000);
  assert.equal(await fe.ack(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: QSIZE })), 0n);
  assert.equal(await fe.ack(Req.SET_VRING_BASE, encodeVringState({ index: 1, num: 0 })), 0n);
  assert.equal(await fe.ack(Req.SET_VRING_ADDR, encodeVringAddr({ index: 1, flags: 0, desc: g.uva(DESC), avail: g.uva(AVAIL), used: g.uva(USED), log: 0n })), 0n);
  assert.equal(await fe.ack(Req.SET_VRING_KICK, u64(1), [kick]), 0n);
  assert.equal(await fe.ack(Req.SET_VRING_CALL, u64(1), [call]), 0n);
  assert.equal(await fe.ack(Req.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 })), 0n);
}

/** One request on ring 1; resolves when the used index moved. */
async function ping(g: FakeGuest, kick: number, slot: number): Promise<void> {
  const ram = g.ram;
  ram.fill(0, 0x20000, 0x20010);
  ram.writeBigUInt64LE(0x10000n, DESC);
  ram.writeUInt32LE(8, DESC + 8);
  ram.writeUInt16LE(1, DESC + 12);
  ram.writeUInt16LE(1, DESC + 14);
  ram.writeBigUInt64LE(0x20000n, DESC + 16);
  ram.writeUInt32LE(16, DESC + 24);
  ram.writeUInt16LE(2, DESC + 28);
  const idx = ram.readUInt16LE(AVAIL + 2);
  ram.writeUInt16LE(0, AVAIL + 4 + 2 * (idx % QSIZE));
  ram.writeUInt16LE(idx + 1, AVAIL + 2);
  sys.eventfdWrite(kick, 1);
  await until(() => ram.readUInt16LE(USED + 2) === slot + 1, 'request answered');
  assert.equal(ram.toString('utf8', 0x20000, 0x20004), 'pong');
}

async function handshake(fe: MiniFrontEnd, g: FakeGuest): Promise<void> {
  const f = (await fe.call(Req.GET_FEATURES)).readBigUInt64LE(0);
  assert.ok(f & bit(VirtioFeature.PROTOCOL_FEATURES));
  const pf = (await fe.call(Req.GET_PROTOCOL_FEATURES)).readBigUInt64LE(0);
  fe.send(Req.SET_PROTOCOL_FEATURES, u64(pf));
  assert.equal(await fe.ack(Req.SET_OWNER), 0n);
  assert.equal(await fe.ack(Req.SET_FEATURES, u64(f)), 0n);
  assert.equal(await fe.ack(Req.SET_MEM_TABLE, encodeMemTable([g.region()]), [g.fd]), 0n);
}

test('20 connect/serve/disconnect cycles and 20 ring reset cycles leak no fds or mappings', async () => {
  const sock = path.join(os.tmpdir(), `vhost-server-${process.pid}.sock`);
  const g = new FakeGuest(1024 * 1024);
  const kick = sys.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  const call = sys.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  const fdsBefore = countFds();
  const mapsBefore = guestMaps();
  const server = new VhostUserServer({ socketPath: sock, reconnect: true, createDevice: pongDevice, log: silentLogger });
  server.start();
  try {
    for (let cycle = 0; cycle < 20; cycle++) {
      const fe = new MiniFrontEnd(sys.unixConnect(sock));
      await handshake(fe, g);
      await setupRing(fe, g, kick, call);
      await ping(g, kick, 0);
      if (cycle === 0) {
        // Guest reboots: the VMM stops the ring and sets it up again, 20 times.
        for (let r = 0; r < 20; r++) {
          const base = await fe.call(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
          assert.equal(base.readUInt32LE(4), 1);
          await setupRing(fe, g, kick, call);
          await ping(g, kick, 0);
        }
        assert.equal(guestMaps(), mapsBefore + 1, 'one mapping of guest memory while connected');
      }
      fs.closeSync(fe.fd);
      await until(() => server.connection === null && server.connections === cycle + 1, 'server noticed the disconnect');
      await until(() => guestMaps() === mapsBefore, 'guest memory unmapped after disconnect');
    }
    assert.equal(countFds(), fdsBefore + 1, 'only the listening socket remains open');
  } finally {
    server.stop();
    fs.closeSync(kick);
    fs.closeSync(call);
    g.close();
  }
  assert.equal(await server.done, 'stopped');
  assert.equal(fs.existsSync(sock), false, 'socket file removed');
  assert.equal(countFds(), fdsBefore - 3, 'everything closed');
});

test('--fd: an inherited listening socket and an inherited connected socket', async () => {
  const sock = path.join(os.tmpdir(), `vhost-server-fd-${process.pid}.sock`);
  const lfd = sys.unixListen(sock);
  const s1 = new VhostUserServer({ fd: lfd, createDevice: pongDevice, log: silentLogger });
  s1.start();
  const fe = new MiniFrontEnd(sys.unixConnect(sock));
  assert.equal((await fe.call(Req.GET_QUEUE_NUM)).readBigUInt64LE(0), 2n);
  fs.closeSync(fe.fd);
  assert.equal(await s1.done, 'front-end disconnected', 'without --reconnect the server finishes');
  fs.rmSync(sock, { force: true });

  const [a, b] = sys.socketpair();
  const s2 = new VhostUserServer({ fd: a, createDevice: pongDevice, log: silentLogger });
  s2.start();
  const fe2 = new MiniFrontEnd(b);
  assert.equal((await fe2.call(Req.GET_QUEUE_NUM)).readBigUInt64LE(0), 2n);
  fs.closeSync(b);
  assert.equal(await s2.done, 'front-end disconnected');
  assert.throws(() => fs.fstatSync(a), /EBADF/, 'the connected fd was closed');
});
