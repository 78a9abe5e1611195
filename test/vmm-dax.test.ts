// The test VMM's DAX window: the front-end reserves address space and performs the mmaps a
// back-end asks for on the back-end channel, in both dialects (SHMEM_MAP / SHMEM_UNMAP and the
// legacy FS_MAP / FS_UNMAP). Driven in-process through vhost-user-ts and the virtio-fs device,
// which opens the window over the back-end channel, with a stub FUSE handler whose SETUPMAPPING
// maps pages of a memfd into the request's window.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { native } from './support/native.js';
import { VhostUserServer, silentLogger } from 'vhost-user-ts';
import type { ReplyWriter } from '../src/fuse/reply.js';
import type { RequestOrigin } from '../src/fuse/server.js';
import type { MapChannel } from '../src/share/dax.js';
import { VirtioFsDevice } from '../src/daemon/virtio-fs.js';
import {
  FuseError, InitFlag, Op, ProtoFeature, SETUPMAPPING_FLAG_READ, bit, connectTestVmm, tempSocketPath, type DaxDialect,
} from './support/test-vmm/index.js';

const PAGE = native.pageSize;
const WINDOW = 8 << 20;

/** The connection's window as the device opens it: the map channel over its back-end channel. */
interface StubWindow {
  alignmentShift: number;
  inodeDax: boolean;
  channel: MapChannel;
  reset(): void;
}

/** A FUSE stub: INIT, SETUPMAPPING → map request in the request's window, REMOVEMAPPING → unmap request. */
function stubServer(memfd: number) {
  return {
    async serve(req: Buffer, out: ReplyWriter, origin: RequestOrigin<StubWindow>): Promise<void> {
      const opcode = req.readUInt32LE(4);
      const unique = req.subarray(8, 16);
      const w = origin.window;
      if (opcode === Op.INIT) {
        const init = Buffer.alloc(64);
        init.writeUInt32LE(7, 0);
        init.writeUInt32LE(38, 4);
        init.writeUInt32LE(InitFlag.MAP_ALIGNMENT, 12);
        init.writeUInt16LE(Math.log2(PAGE), 30);
        out.write(init);
        return out.end(unique);
      }
      if (opcode === Op.SETUPMAPPING) {
        const foffset = Number(req.readBigUInt64LE(40 + 8));
        const len = Number(req.readBigUInt64LE(40 + 16));
        const moffset = Number(req.readBigUInt64LE(40 + 32));
        if (!w) return out.end(unique, 95);
        try {
          await w.channel.map(moffset, [{ fd: memfd, fdOffset: foffset, length: len }]);
          return out.end(unique);
        } catch {
          return out.end(unique, 5);
        }
      }
      if (opcode === Op.REMOVEMAPPING) {
        const count = req.readUInt32LE(40);
        try {
          for (let i = 0; i < count; i++) await w!.channel.unmap(Number(req.readBigUInt64LE(44 + 16 * i)), Number(req.readBigUInt64LE(52 + 16 * i)));
          return out.end(unique);
        } catch {
          return out.end(unique, 5);
        }
      }
      out.end(unique, 38);
    },
  };
}

for (const dialect of ['shmem', 'fs-map'] as const) {
  test(`DAX window (${dialect}): back-end map requests land in the window, unmaps remove them`, async () => {
    const memfd = native.memfdCreate('dax-backing', native.constants.MFD_CLOEXEC);
    const content = Buffer.alloc(4 * PAGE);
    for (let i = 0; i < content.length; i++) content[i] = (i * 7 + (i >> 12)) & 0xff;
    fs.writeSync(memfd, content, 0, content.length, 0);
    let window: StubWindow | null = null;
    const windows = {
      openWindow: (channel: MapChannel): StubWindow => (window = { alignmentShift: Math.log2(PAGE), inodeDax: false, channel, reset() {} }),
      closeWindow: () => { window = null; },
    };
    const socketPath = tempSocketPath(`dax-${dialect}`);
    const server = new VhostUserServer({
      socketPath,
      log: silentLogger,
      createDevice: () => new VirtioFsDevice({
        tag: 'dax', numRequestQueues: 1, log: silentLogger,
        server: stubServer(memfd),
        dax: { protocol: dialect, windowSize: WINDOW, windows },
      }),
    });
    server.start();
    const t = await connectTestVmm(socketPath, { dax: { windowSize: WINDOW, dialect } });
    try {
      assert.equal(t.vmm.has(ProtoFeature.SHMEM), dialect === 'shmem');
      assert.ok(window, 'the device opened a window over the back-end channel');
      assert.equal(t.client.info!.mapAlignment, Math.log2(PAGE));
      // Pages 1..2 of the backing at 2 MiB into the window.
      await t.client.setupmapping(1n, PAGE, 2 * PAGE, 2 << 20, SETUPMAPPING_FLAG_READ);
      assert.deepEqual(Buffer.from(t.vmm.daxView(2 << 20, 2 * PAGE)), content.subarray(PAGE, 3 * PAGE));
      assert.equal(t.vmm.daxMappings.size, 1);
      const mine = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('memfd:dax-backing')).length;
      assert.equal(mine(), 1, 'one mapping of the backing in the front-end');
      // The window holds the backing's own pages: same physical frames as a direct mapping.
      const direct = native.mmap(memfd, PAGE, 2 * PAGE, native.constants.PROT_READ, native.constants.MAP_SHARED);
      try {
        void new Uint8Array(direct)[0]; void new Uint8Array(direct)[PAGE];
        const frames = t.vmm.daxPageFrames(2 << 20, 2 * PAGE);
        assert.ok(frames.every((f) => f !== 0n), 'frames visible (root)');
        const fd = fs.openSync('/proc/self/pagemap', 'r');
        const b = Buffer.alloc(16);
        fs.readSync(fd, b, 0, 16, Number(native.addressOf(direct) / BigInt(PAGE) * 8n));
        fs.closeSync(fd);
        const pfn = (e: bigint) => e & ((1n << 55n) - 1n);
        assert.deepEqual(frames, [pfn(b.readBigUInt64LE(0)), pfn(b.readBigUInt64LE(8))]);
      } finally {
        native.munmap(direct);
      }
      // The window shares pages with the backing: a change through the fd shows at once.
      fs.writeSync(memfd, Buffer.from('CHANGED'), 0, 7, PAGE);
      assert.equal(t.vmm.daxView(2 << 20, 7).toString(), 'CHANGED');
      // A request outside the window is refused by the front-end and the guest sees EIO.
      await assert.rejects(t.client.setupmapping(1n, 0, PAGE, WINDOW, SETUPMAPPING_FLAG_READ),
        (e) => e instanceof FuseError && e.code === 'EIO');
      await t.client.removemapping([[2 << 20, 2 * PAGE]]);
      assert.equal(t.vmm.daxMappings.size, 0);
      assert.equal(mine(), 0, 'unmapped from the window');
      const ev = t.vmm.backendEvents;
      assert.deepEqual(ev.map((e) => e.result), [0, 1, 0]);
      assert.equal(ev[0]!.fdCount, 1);
    } finally {
      t.close();
      server.stop();
      fs.closeSync(memfd);
    }
  });
}
