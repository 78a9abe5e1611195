// A probe of a front-end's VIRTIO shared memory: a virtio-fs-shaped device (tag "probe", one
// request queue, a 1 GiB region 0) that, once the front-end has started it, maps 4 KiB of a
// memfd at every other page of region 0 with SHMEM_MAP until a map fails or the front-end goes
// away, printing how many memory slots are in use (QEMU 11.1 sends every mapping back as
// ADD_MEM_REG). How the limits in erofs-vfsd's docs/vhost-user.md were measured:
//
//   node dist/examples/shmem-probe.js /tmp/probe.sock [slotsToAnnounce] [maps]
//   qemu/run-guest.sh --qemu .cache/sid/bin/qemu-system-x86_64 --guest .cache/guest-sid \
//       --device test-device --tag probe --socket /tmp/probe.sock
import { ProtoFeature, SHMEM_MAP_RW, VhostUserServer, bit, type BackendChannel, type Logger } from 'vhost-user-ts';
import { sys } from 'vhost-user-ts/sys';

const [socketPath = '/tmp/probe.sock', slotsText = '512', mapsText = '1100'] = process.argv.slice(2);
const PAGE = sys.pageSize;

const say = (...parts: unknown[]): void => console.log(new Date().toISOString().slice(11, 23), ...parts);
const print = (level: string) => (obj: object | string, msg?: string) => say(level, typeof obj === 'string' ? obj : `${msg ?? ''} ${JSON.stringify(obj)}`);
const log: Logger = { trace: () => {}, debug: () => {}, info: print('info'), warn: print('warn'), error: print('error') };

const memfd = sys.memfdCreate('shmem-probe', sys.constants.MFD_CLOEXEC);
sys.ftruncate(memfd, PAGE);
const config = Buffer.alloc(40);
config.write('probe');
config.writeUInt32LE(1, 36);
let channel: BackendChannel | null = null;

const server = new VhostUserServer({
  socketPath,
  log,
  connection: { memoryLimits: { maxRegions: Number(slotsText) } },
  createDevice: () => ({
    features: 0n,
    numQueues: 2,
    protocolFeatures: bit(ProtoFeature.SHMEM),
    shmemRegions: [1n << 30n],
    getConfig: (offset, size) => config.subarray(offset, offset + size),
    handleChain: () => {}, // requests are never answered: the guest's mount waits, QEMU keeps running
    backendChannel: (ch) => {
      channel = ch;
    },
  }),
});

async function probe(ch: BackendChannel): Promise<void> {
  say('device started; memory slots', JSON.stringify(ch.memorySlots()));
  let mapped = 0;
  for (let i = 0; i < Number(mapsText); i++) {
    let status: bigint;
    try {
      status = await ch.shmemMap({ shmid: 0, fdOffset: 0n, shmOffset: BigInt(2 * i * PAGE), len: BigInt(PAGE), flags: SHMEM_MAP_RW }, memfd);
    } catch (e) {
      say(`map ${i} failed:`, String(e));
      break;
    }
    if (status !== 0n) {
      say(`map ${i}: status ${status}`);
      break;
    }
    mapped++;
    if (i % 50 === 0) say(`map ${i} answered; memory slots`, JSON.stringify(ch.memorySlots()));
  }
  say(`${mapped} maps answered; memory slots`, JSON.stringify(ch.memorySlots()));
}

server.start();
const poll = setInterval(() => {
  const started = server.connection?.backend.queues.some((q) => q.started) ?? false;
  if (!started || !channel) return;
  clearInterval(poll);
  void probe(channel);
}, 20);
server.done.then((reason) => {
  say('finished:', reason);
  process.exit(0);
});
