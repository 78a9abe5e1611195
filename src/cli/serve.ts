// `erofs-vfsd serve`: a vhost-user-fs back-end serving EROFS images, following the vhost-user
// back-end program conventions (--socket-path, --fd, --print-capabilities).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Argv } from 'yargs';
import { openImage, type ErofsReader } from '../erofs/index.js';
import { FuseServer } from '../fuse/server.js';
import { ImageTree } from '../vfs/index.js';
import { VhostUserServer } from '../vhost-user/index.js';
import { VirtioFsDevice } from '../daemon/virtio-fs.js';
import { createLogger, type Logger } from '../daemon/logger.js';

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
}

export interface ImageSpec {
  name?: string;
  path: string;
  domain?: string;
  /** Extra devices of a multi-device image (`,device=PATH`, repeatable). */
  devices: string[];
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;

/**
 * Parses `[NAME=]PATH[,domain=D][,device=BLOB]...`. Trailing `,key=value` parts with other keys
 * stay part of the path.
 */
export function parseImageSpec(spec: string): ImageSpec {
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
  if (eq > 0 && NAME_RE.test(rest.slice(0, eq))) {
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
    .option('sample', { type: 'boolean', describe: `serve the bundled sample image on ${SAMPLE_SOCKET} and print a QEMU command line` });
}

export function cacheOptions(args: Pick<ServeArgs, 'cache' | 'entryTimeout' | 'attrTimeout'>): {
  entryTimeout?: number;
  attrTimeout?: number;
  keepCache?: boolean;
  cacheDir?: boolean;
  negativeCache?: boolean;
} {
  let o: { entryTimeout?: number; attrTimeout?: number; keepCache?: boolean; cacheDir?: boolean; negativeCache?: boolean } = {};
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

export interface ServeDaemon {
  server: VhostUserServer;
  readers: ErofsReader[];
  log: Logger;
  /** Resolves with the reason the server finished. */
  done: Promise<string>;
  stop(reason?: string): void;
}

/** Opens the images and starts the vhost-user server (no signal handling, no exit). */
export function startServe(args: ServeArgs, log: Logger = createLogger(args.logLevel ?? 'info')): ServeDaemon {
  const specs = list(args.image).map(parseImageSpec);
  if (specs.length === 0) throw new Error('at least one --image is needed');
  const devices = list(args.device);
  if (devices.length && specs.length > 1) throw new Error('--device is ambiguous with several images: use --image PATH,device=BLOB');
  const readers: ErofsReader[] = [];
  try {
    for (const s of specs) {
      const devs = s.devices.length ? s.devices : devices;
      readers.push(openImage(s.path, devs.length ? { devices: devs } : undefined));
    }
  } catch (e) {
    for (const r of readers) r.close();
    throw e;
  }
  const tree = new ImageTree({ images: specs.map((s, i) => ({ name: s.name ?? (specs.length > 1 ? path.basename(s.path).replace(/\.[^.]*$/, '') : undefined), reader: readers[i]! })), ...cacheOptions(args) });
  const sockets = list(args.socketPath);
  if (sockets.length > 1) throw new Error('one --socket-path per daemon for now');
  if (sockets.length === 0 && args.fd === undefined) throw new Error('--socket-path or --fd is required');
  const tag = args.tag ?? 'erofs';
  const numRequestQueues = args.numRequestQueues ?? 1;
  const fuseLog = log.child({ component: 'fuse' });
  let lastSession: FuseServer | undefined;
  // Validate the device options once before listening.
  new VirtioFsDevice({ tag, numRequestQueues, server: { handle: async () => null }, log });
  const server = new VhostUserServer({
    socketPath: sockets[0],
    fd: args.fd,
    reconnect: args.reconnect ?? false,
    log,
    // A FUSE session per connection; the image tree (and its readers) is shared. A front-end
    // that reconnects under a live guest (or a restarted daemon) sends no new INIT: each session
    // starts as resumed, with the previous session's negotiation when there was one; a new
    // guest's INIT simply renegotiates.
    createDevice: () => {
      const fuse = new FuseServer(tree, { logger: fuseLog, resume: lastSession?.negotiated ?? true });
      lastSession = fuse;
      return new VirtioFsDevice({ tag, numRequestQueues, server: fuse, log });
    },
  });
  server.start();
  log.info({ images: specs.map((s) => s.path), tag, numRequestQueues }, 'serving');
  return {
    server,
    readers,
    log,
    done: server.done,
    stop: (reason = 'stopped') => server.stop(reason),
  };
}

function kvmUsable(): boolean {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** A ready-to-paste QEMU command line attaching a VM to `socket`. */
export function sampleQemuCommand(socket: string, tag: string, numRequestQueues: number): string {
  const nrq = numRequestQueues > 1 ? `,num-request-queues=${numRequestQueues}` : '';
  // Under TCG, Debian 12's QEMU 7.2 needs CMPXCHG16B hidden for 6.x guests (see qemu/README.md).
  const accel = kvmUsable() ? '-accel kvm -cpu host' : '-accel tcg -cpu qemu64,-cx16';
  const guest = path.join(REPO_ROOT, '.cache/guest');
  const haveGuest = fs.existsSync(path.join(guest, 'vmlinuz')) && fs.existsSync(path.join(guest, 'initramfs.gz'));
  const kernel = haveGuest
    ? `-kernel ${guest}/vmlinuz -initrd ${guest}/initramfs.gz -append 'console=ttyS0 gt.tests=walk gt.shell=1'`
    : "-kernel /path/to/vmlinuz -initrd /path/to/initrd.img -append 'console=ttyS0'";
  return [
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
  let daemon: ServeDaemon;
  try {
    daemon = startServe(args, log);
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
