// `erofs-vfsd serve`: a vhost-user-fs back-end serving EROFS images, following the vhost-user
// back-end program conventions (--socket-path, --fd, --print-capabilities). This file turns the
// arguments into a DaemonConfig (src/daemon/serve.ts builds the daemon from it) and prints.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';
import type { Argv } from 'yargs';
import { createLogger } from '../daemon/logger.js';
import { defaultReadThreads } from '../daemon/read-pool.js';
import { defaultDaemonConfig, isPlainName, startDaemon, type DaemonConfig, type Daemon, type Endpoint, type ServedImage } from '../daemon/serve.js';
import type { DaxProtocol } from '../share/dax.js';
import type { FingerprintSource } from '../share/fingerprint.js';
import type { DaxPolicy } from '../share/tree.js';

export const SAMPLE_SOCKET = '/tmp/erofs-vfsd.sock';
const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const SAMPLE_IMAGE = path.join(REPO_ROOT, 'samples/sample.erofs');

export interface ServeArgs {
  socketPath?: string | string[];
  fd?: number;
  printCapabilities?: boolean;
  image?: string | string[];
  device?: string | string[];
  tag?: string;
  numRequestQueues?: number;
  entryTimeout?: number;
  attrTimeout?: number;
  cache?: string;
  reconnect?: boolean;
  logLevel?: string;
  sample?: boolean;
  // ---- page sharing and DAX ----
  /** Where fingerprints come from: the image's xattr (digest or --fingerprint-xattr), computed, or none. */
  fingerprint?: string;
  fingerprintIndex?: string;
  fingerprintXattr?: string;
  /** on | off */
  share?: string | boolean;
  shareVerify?: boolean;
  shareAcrossDomains?: boolean;
  blobDir?: string;
  shareCacheSize?: string | number;
  daxProtocol?: string;
  daxPolicy?: string;
  daxMinSize?: string | number;
  daxWindowSize?: string | number;
  controlSocket?: string;
  /** Worker threads for file data reads; 0 = read on the main thread. */
  readThreads?: number;
}

/**
 * Parses `[NAME=]PATH[,domain=D][,device=BLOB]...`. Trailing `,key=value` parts with other keys
 * stay part of the path.
 */
export function parseImageSpec(spec: string): ServedImage {
  const parts = spec.split(',');
  let domain: string | undefined;
  const devices: string[] = [];
  while (parts.length > 1) {
    const last = parts[parts.length - 1]!;
    const m = /^(domain|device)=(.+)$/.exec(last);
    if (!m) break;
    if (m[1] === 'domain') domain = m[2];
    else devices.unshift(m[2]!);
    parts.pop();
  }
  let rest = parts.join(',');
  let name: string | undefined;
  const eq = rest.indexOf('=');
  if (eq > 0 && isPlainName(rest.slice(0, eq))) {
    name = rest.slice(0, eq);
    rest = rest.slice(eq + 1);
  }
  if (!rest) throw new Error(`--image '${spec}': no path`);
  return { name, path: rest, domain, devices };
}

function list<T>(v: T | T[] | undefined): T[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

export function serveBuilder<T>(y: Argv<T>) {
  return y
    .option('socket-path', { type: 'string', array: true, describe: 'listen for the VMM on this Unix socket' })
    .option('fd', { type: 'number', describe: 'use this inherited socket fd (listening or connected)' })
    .option('print-capabilities', { type: 'boolean', describe: 'print the vhost-user back-end capabilities (JSON) and exit' })
    .option('image', { type: 'string', array: true, describe: '[NAME=]PATH[,domain=D][,device=BLOB…] of an EROFS image (repeatable)' })
    .option('device', { type: 'string', array: true, describe: 'extra device (blob) of a multi-device image, in device table order (repeatable)' })
    .option('tag', { type: 'string', default: 'erofs', describe: 'virtio-fs mount tag' })
    .option('num-request-queues', { type: 'number', default: 1, describe: 'request queues offered (besides the high-priority queue)' })
    .option('entry-timeout', { type: 'number', describe: 'seconds the guest may cache names' })
    .option('attr-timeout', { type: 'number', describe: 'seconds the guest may cache attributes' })
    .option('cache', { choices: ['auto', 'always', 'never'] as const, default: 'auto', describe: 'guest caching (images are immutable: caching is safe)' })
    .option('reconnect', { type: 'boolean', default: false, describe: 'after the VMM disconnects, wait for the next connection instead of exiting' })
    .option('log-level', { type: 'string', default: 'info', describe: 'fatal|error|warn|info|debug|trace|silent' })
    .option('fingerprint', { choices: ['xattr', 'compute', 'off'] as const, default: 'xattr', describe: "file fingerprints: the image's digest xattr (or --fingerprint-xattr), SHA-256 computed by the daemon, or none" })
    .option('fingerprint-index', { type: 'string', describe: 'directory for the sidecar index of computed fingerprints (keyed by image identity)' })
    .option('fingerprint-xattr', { type: 'string', describe: 'read fingerprints from this plain xattr (e.g. user.digest) instead of the digest xattr' })
    .option('share', { choices: ['on', 'off'] as const, default: 'on', describe: 'one host copy per (domain, fingerprint); off = every read takes the per-file path' })
    .option('share-verify', { type: 'boolean', default: false, describe: 'hash content before a file joins a shared backing' })
    .option('share-across-domains', { type: 'boolean', default: false, describe: 'share between trust domains (implies --share-verify)' })
    .option('blob-dir', { type: 'string', describe: 'directory for materialised blobs shared by several daemon processes (default: memfd)' })
    .option('share-cache-size', { type: 'string', describe: 'memory budget for materialised blobs, bytes (K/M/G suffixes; default 1G)' })
    .option('dax-protocol', { choices: ['shmem', 'fs-map'] as const, default: 'shmem', describe: 'DAX map dialect: SHMEM_MAP (needs the SHMEM protocol feature) or legacy FS_MAP' })
    .option('dax-policy', { choices: ['always', 'shared', 'never'] as const, default: 'shared', describe: 'FUSE_ATTR_DAX per inode (dax=inode mounts)' })
    .option('dax-min-size', { type: 'string', describe: "smallest file given FUSE_ATTR_DAX under --dax-policy=shared (bytes; default 0)" })
    .option('dax-window-size', { type: 'string', describe: "the guest's DAX window size (bytes; default 1G; 0 = no DAX)" })
    .option('control-socket', { type: 'string', describe: 'Unix socket for `erofs-vfsd stats` / `drop-cache`' })
    .option('read-threads', { type: 'number', describe: `worker threads for file data reads and decompression (default min(4, CPUs) = ${defaultReadThreads()}; 0 = on the main thread)` })
    .option('sample', { type: 'boolean', describe: `serve the bundled sample image on ${SAMPLE_SOCKET} and print a QEMU command line` });
}

export function cacheOptions(args: Pick<ServeArgs, 'cache' | 'entryTimeout' | 'attrTimeout'>): DaemonConfig['cache'] {
  let o: DaemonConfig['cache'] = {};
  switch (args.cache ?? 'auto') {
    case 'never':
      o = { entryTimeout: 0, attrTimeout: 0, keepCache: false, cacheDir: false, negativeCache: false };
      break;
    case 'always':
      o = { entryTimeout: 86400, attrTimeout: 86400, keepCache: true, cacheDir: true, negativeCache: true };
      break;
    case 'auto':
      break;
    default:
      throw new Error(`--cache ${args.cache}: expected auto, always or never`);
  }
  for (const [k, v] of [['entryTimeout', args.entryTimeout], ['attrTimeout', args.attrTimeout]] as const) {
    if (v === undefined) continue;
    if (!Number.isFinite(v) || v < 0) throw new Error(`--${k === 'entryTimeout' ? 'entry' : 'attr'}-timeout must be a non-negative number`);
    o[k] = v;
  }
  return o;
}

/** Parses a byte count with an optional K/M/G/T suffix (powers of 1024). */
export function parseSize(v: string | number | undefined, name: string, dflt: number): number {
  if (v === undefined || v === '') return dflt;
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?$/.exec(String(v).trim());
  if (!m) throw new Error(`--${name}: expected a byte count like 4096, 64M or 1G, got '${String(v)}'`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const n = Math.floor(Number(m[1]) * mult);
  if (!Number.isSafeInteger(n)) throw new Error(`--${name}: too large`);
  return n;
}

export function fingerprintSource(args: Pick<ServeArgs, 'fingerprint' | 'fingerprintIndex' | 'fingerprintXattr'>): FingerprintSource {
  switch (args.fingerprint ?? 'xattr') {
    case 'xattr':
      return args.fingerprintXattr ? { kind: 'xattr', name: args.fingerprintXattr } : { kind: 'image-digest' };
    case 'compute':
      return { kind: 'compute', indexDir: args.fingerprintIndex };
    case 'off':
      return { kind: 'off' };
    default:
      throw new Error(`--fingerprint ${args.fingerprint}: expected xattr, compute or off`);
  }
}

function shareEnabled(v: string | boolean | undefined): boolean {
  if (v === undefined || v === true || v === 'on') return true;
  if (v === false || v === 'off') return false;
  throw new Error(`--share ${String(v)}: expected on or off`);
}

const DAX_PROTOCOLS: readonly DaxProtocol[] = ['shmem', 'fs-map'];
const DAX_POLICIES: readonly DaxPolicy[] = ['always', 'shared', 'never'];

/** The daemon configuration `serve` arguments describe; throws an Error naming the bad flag. */
export function daemonConfig(args: ServeArgs): DaemonConfig {
  const images = list(args.image).map(parseImageSpec);
  if (images.length === 0) throw new Error('at least one --image is needed');
  const devices = list(args.device);
  if (devices.length && images.length > 1) throw new Error('--device is ambiguous with several images: use --image PATH,device=BLOB');
  for (const img of images) if (img.devices.length === 0) img.devices = devices;
  const sockets = list(args.socketPath);
  if (sockets.length === 0 && args.fd === undefined) throw new Error('--socket-path or --fd is required');
  if (sockets.length > 1 && args.fd !== undefined) throw new Error('--fd serves one VM: use either --fd or --socket-path');
  const endpoints: Endpoint[] = sockets.length ? sockets.map((socketPath) => ({ socketPath })) : [{ fd: args.fd! }];
  const d = defaultDaemonConfig(images, endpoints);
  const protocol = (args.daxProtocol ?? d.dax.protocol) as DaxProtocol;
  if (!DAX_PROTOCOLS.includes(protocol)) throw new Error(`--dax-protocol ${args.daxProtocol}: expected shmem or fs-map`);
  const policy = (args.daxPolicy ?? d.dax.policy) as DaxPolicy;
  if (!DAX_POLICIES.includes(policy)) throw new Error(`--dax-policy ${args.daxPolicy}: expected always, shared or never`);
  return {
    ...d,
    tag: args.tag ?? d.tag,
    numRequestQueues: args.numRequestQueues ?? d.numRequestQueues,
    reconnect: args.reconnect ?? d.reconnect,
    cache: cacheOptions(args),
    share: {
      enabled: shareEnabled(args.share),
      verify: args.shareVerify ?? d.share.verify,
      acrossDomains: args.shareAcrossDomains ?? d.share.acrossDomains,
      budgetBytes: parseSize(args.shareCacheSize, 'share-cache-size', d.share.budgetBytes),
      blobDir: args.blobDir,
    },
    fingerprint: fingerprintSource(args),
    dax: {
      policy, protocol,
      minSize: parseSize(args.daxMinSize, 'dax-min-size', d.dax.minSize),
      windowSize: parseSize(args.daxWindowSize, 'dax-window-size', d.dax.windowSize),
    },
    readThreads: args.readThreads ?? d.readThreads,
    controlSocket: args.controlSocket,
  };
}

/**
 * qemu/accel.sh's verdict (a cached boot probe: a read-write /dev/kvm may still be unable to run
 * a guest) and why, for the printed command line.
 */
function probeAccel(): { accel: 'kvm' | 'tcg'; why: string } {
  const r = spawnSync(path.join(REPO_ROOT, 'qemu/accel.sh'), [], { encoding: 'utf8' });
  const accel = r.stdout?.trim() === 'kvm' ? 'kvm' : 'tcg';
  const why = (r.stderr ?? '').trim().split('\n').pop()?.replace(/^accel: /, '') || 'probe failed';
  return { accel, why };
}

/** A ready-to-paste QEMU command line attaching a VM to `socket`. */
export function sampleQemuCommand(socket: string, tag: string, numRequestQueues: number): string {
  const nrq = numRequestQueues > 1 ? `,num-request-queues=${numRequestQueues}` : '';
  // Under TCG, Debian 12's QEMU 7.2 needs CMPXCHG16B hidden for 6.x guests (see qemu/README.md).
  // And tsc=unstable plus an RDRAND-seeded RNG, so the guest does not live-patch its sched_clock
  // and crng static keys while its other vCPU runs under multi-threaded TCG.
  const probe = probeAccel();
  const kvm = probe.accel === 'kvm';
  const accel = kvm ? '-accel kvm -cpu host' : '-accel tcg -cpu qemu64,-cx16,+rdrand';
  const kargs = kvm ? 'console=ttyS0' : 'console=ttyS0 tsc=unstable random.trust_cpu=on';
  const guest = path.join(REPO_ROOT, '.cache/guest');
  const haveGuest = fs.existsSync(path.join(guest, 'vmlinuz')) && fs.existsSync(path.join(guest, 'initramfs.gz'));
  const kernel = haveGuest
    ? `-kernel ${guest}/vmlinuz -initrd ${guest}/initramfs.gz -append '${kargs} gt.tests=walk gt.shell=1'`
    : `-kernel /path/to/vmlinuz -initrd /path/to/initrd.img -append '${kargs}'`;
  return [
    `# accelerator: ${probe.why}`,
    `qemu-system-x86_64 -machine q35 ${accel} -smp 2 -m 1G -nographic \\`,
    '  -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\',
    `  -chardev socket,id=vfsd0,path=${socket} \\`,
    `  -device vhost-user-fs-pci,chardev=vfsd0,tag=${tag}${nrq},queue-size=1024 \\`,
    `  ${kernel}`,
    ...(haveGuest ? [] : ['', '(a test kernel and initramfs: qemu/get-kernel.sh && qemu/build-initramfs.sh)']),
  ].join('\n');
}

export async function runServe(args: ServeArgs): Promise<void> {
  if (args.printCapabilities) {
    process.stdout.write('{"type": "fs"}\n');
    return;
  }
  if (args.sample) {
    args = { ...args, image: list(args.image).length ? args.image : [SAMPLE_IMAGE], socketPath: list(args.socketPath).length ? args.socketPath : [SAMPLE_SOCKET] };
    if (args.reconnect === undefined || args.reconnect === false) args.reconnect = true;
    if (!fs.existsSync(list(args.image)[0]!)) throw new Error(`sample image ${list(args.image)[0]} is missing (run samples/build.sh)`);
  }
  const log = createLogger(args.logLevel ?? 'info');
  let daemon: Daemon;
  try {
    daemon = startDaemon(daemonConfig(args), log);
  } catch (e) {
    log.fatal({ err: e instanceof Error ? e.message : String(e) }, 'cannot start');
    process.exitCode = 1;
    return;
  }
  if (args.sample) {
    const socket = list(args.socketPath)[0]!;
    process.stdout.write(
      [
        `erofs-vfsd is serving ${list(args.image)[0]} on ${socket} (tag "${args.tag ?? 'erofs'}").`,
        'Start a VM attached to it (any kernel with CONFIG_VIRTIO_FS; memory must be shared):',
        '',
        sampleQemuCommand(socket, args.tag ?? 'erofs', args.numRequestQueues ?? 1),
        '',
        'Then, inside the guest:',
        '',
        `  mount -t virtiofs ${args.tag ?? 'erofs'} /mnt`,
        '',
        'Stop the daemon with Ctrl-C.',
        '',
      ].join('\n'),
    );
  }
  const onSignal = (sig: NodeJS.Signals): void => {
    log.info({ signal: sig }, 'shutting down');
    daemon.stop(sig);
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  const reason = await daemon.done;
  process.off('SIGTERM', onSignal);
  process.off('SIGINT', onSignal);
  log.info({ reason }, 'exiting');
  for (const r of daemon.readers) r.close();
  process.exitCode = 0;
}
