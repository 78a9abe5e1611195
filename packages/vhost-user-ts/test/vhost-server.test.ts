// The vhost-user socket server: 20 connect → serve → disconnect cycles and 20 guest-reset
// cycles (GET_VRING_BASE, then the rings set up again) leave no fds or guest mappings behind;
// --fd with a listening or a connected socket; stop() removes the socket file.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sys } from '../src/sys.js';
import { Req, VhostUserServer, encodeVringState, silentLogger, type VhostUserDevice } from '../src/index.js';
import { FakeGuest, MiniFrontEnd, TestRing, handshake } from '../src/testing.js';

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

/** One request on ring 1, answered "pong". */
async function ping(ring: TestRing): Promise<void> {
  assert.equal((await ring.request(Buffer.alloc(8), 16)).toString(), 'pong');
}

test('20 connect/serve/disconnect cycles and 20 ring reset cycles leak no fds or mappings', async () => {
  const sock = path.join(os.tmpdir(), `vhost-server-${process.pid}.sock`);
  const g = new FakeGuest(1024 * 1024);
  const ring = new TestRing(g, 1);
  const fdsBefore = countFds();
  const mapsBefore = guestMaps();
  const server = new VhostUserServer({ socketPath: sock, reconnect: true, createDevice: pongDevice, log: silentLogger });
  server.start();
  try {
    for (let cycle = 0; cycle < 20; cycle++) {
      const fe = new MiniFrontEnd(sys.unixConnect(sock));
      await handshake(fe, g);
      await ring.setup(fe);
      await ping(ring);
      if (cycle === 0) {
        // Guest reboots: the VMM stops the ring and sets it up again, 20 times.
        for (let r = 0; r < 20; r++) {
          const base = await fe.call(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
          assert.equal(base.readUInt32LE(4), 1);
          await ring.setup(fe);
          await ping(ring);
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
    ring.close();
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
