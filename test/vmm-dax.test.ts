// The test VMM's DAX window (issue 5 groundwork): the front-end reserves address space and
// performs the mmaps a back-end asks for on the back-end channel, in both dialects (SHMEM_MAP /
// SHMEM_UNMAP and the legacy FS_MAP / FS_UNMAP). Driven in-process through vhost-user-ts and the
// virtio-fs device with a stub FUSE handler whose SETUPMAPPING maps pages of a memfd.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { native } from './support/native.js';
import { VhostUserServer, silentLogger, type BackendChannel } from 'vhost-user-ts';
import { VirtioFsDevice } from '../src/daemon/virtio-fs.js';
import {
  FuseError, InitFlag, Op, ProtoFeature, SETUPMAPPING_FLAG_READ, bit, connectTestVmm, tempSocketPath, type DaxDialect,
} from './support/test-vmm/index.js';

const PAGE = native.pageSize;
const WINDOW = 8 << 20;

/** A FUSE stub: INIT, SETUPMAPPING → map request, REMOVEMAPPING → unmap request. */
function stubServer(dialect: DaxDialect, channel: () => BackendChannel | null, memfd: number) {
  const reply = (unique: bigint, error: number, body: Buffer = Buffer.alloc(0)) => {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(16 + body.length, 0);
    h.writeInt32LE(-error, 4);
    h.writeBigUInt64LE(unique, 8);
    return [h, body];
  };
  return {
    async handle(req: Buffer): Promise<Buffer[] | null> {
      const opcode = req.readUInt32LE(4);
      const unique = req.readBigUInt64LE(8);
      const ch = channel();
      if (opcode === Op.INIT) {
        const out = Buffer.alloc(64);
        out.writeUInt32LE(7, 0);
        out.writeUInt32LE(38, 4);
        out.writeUInt32LE(InitFlag.MAP_ALIGNMENT, 12);
        out.writeUInt16LE(Math.log2(PAGE), 30);
        return reply(unique, 0, out);
      }
      if (opcode === Op.SETUPMAPPING) {
        const foffset = req.readBigUInt64LE(40 + 8);
        const len = req.readBigUInt64LE(40 + 16);
        const moffset = req.readBigUInt64LE(40 + 32);
        if (!ch) return reply(unique, 95);
        const status = dialect === 'shmem'
          ? await ch.shmemMap({ shmid: 0, fdOffset: foffset, shmOffset: moffset, len, flags: 1n }, memfd)
          : await ch.fsMap([{ fdOffset: foffset, cacheOffset: moffset, len, flags: 1n }], memfd);
        return reply(unique, status === 0n ? 0 : 5);
      }
      if (opcode === Op.REMOVEMAPPING) {
        const count = req.readUInt32LE(40);
        for (let i = 0; i < count; i++) {
          const moffset = req.readBigUInt64LE(44 + 16 * i);
          const len = req.readBigUInt64LE(52 + 16 * i);
          const status = dialect === 'shmem'
            ? await ch!.shmemUnmap({ shmid: 0, fdOffset: 0n, shmOffset: moffset, len, flags: 0n })
            : await ch!.fsUnmap([{ fdOffset: 0n, cacheOffset: moffset, len, flags: 0n }]);
          if (status !== 0n) return reply(unique, 5);
        }
        return reply(unique, 0);
      }
      return reply(unique, 38);
    },
  };
}

for (const dialect of ['shmem', 'fs-map'] as const) {
  test(`DAX window (${dialect}): back-end map requests land in the window, unmaps remove them`, async () => {
    const memfd = native.memfdCreate('dax-backing', native.constants.MFD_CLOEXEC);
    const content = Buffer.alloc(4 * PAGE);
    for (let i = 0; i < content.length; i++) content[i] = (i * 7 + (i >> 12)) & 0xff;
    fs.writeSync(memfd, content, 0, content.length, 0);
    let channel: BackendChannel | null = null;
    const socketPath = tempSocketPath(`dax-${dialect}`);
    const server = new VhostUserServer({
      socketPath,
      log: silentLogger,
      createDevice: () => new VirtioFsDevice({
        tag: 'dax', numRequestQueues: 1, log: silentLogger,
        server: stubServer(dialect, () => channel, memfd),
        protocolFeatures: dialect === 'shmem' ? bit(ProtoFeature.SHMEM) : 0n,
        shmemRegions: dialect === 'shmem' ? [BigInt(WINDOW)] : undefined,
        onBackendChannel: (ch) => { channel = ch; },
      }),
    });
    server.start();
    const t = await connectTestVmm(socketPath, { dax: { windowSize: WINDOW, dialect } });
    try {
      assert.equal(t.vmm.has(ProtoFeature.SHMEM), dialect === 'shmem');
      assert.ok(channel, 'back-end channel handed to the device');
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
