// Building the daemon from a validated configuration: the image readers, the read pool, the page
// sharing service, and per VM (one per endpoint) a SharedTree and a vhost-user server whose
// every connection gets its own FUSE session and virtio-fs device. Nothing here parses
// arguments or prints: src/cli does that.
import path from 'node:path';
import { openImage, type ErofsReader } from '../erofs/index.js';
import { FuseServer } from '../fuse/server.js';
import { PAGE_SIZE } from '../native/index.js';
import type { DaxWindow } from '../share/dax.js';
import type { FingerprintSource } from '../share/fingerprint.js';
import { DEFAULT_SHARE_OPTIONS, type ShareOptions } from '../share/registry.js';
import { DEFAULT_DAX_OPTIONS, ShareService, type DaxOptions } from '../share/service.js';
import type { ImageTreeOptions } from '../vfs/index.js';
import { VhostUserServer } from 'vhost-user-ts';
import { startControlServer, type ControlServer } from './control.js';
import type { DaemonLogger } from './logger.js';
import { ReadPool, defaultReadThreads } from './read-pool.js';
import { VirtioFsDevice, checkVirtioFsConfig } from './virtio-fs.js';

/** One image the daemon serves. */
export interface ServedImage {
  /** Its directory under a several-image root (default: the file name without extension). */
  name?: string;
  path: string;
  /** Trust domain (default: the image alone). */
  domain?: string;
  /** Extra devices of a multi-device image, in device-table order. */
  devices: string[];
}

/** Where one VM's VMM connects: a Unix socket path to listen on, or an inherited socket fd. */
export type Endpoint = { socketPath: string; fd?: undefined } | { fd: number; socketPath?: undefined };

export interface DaemonConfig {
  images: ServedImage[];
  /** One VM each. */
  endpoints: Endpoint[];
  /** The virtio-fs mount tag. */
  tag: string;
  /** Request queues offered (besides the high-priority queue). */
  numRequestQueues: number;
  /** After the VMM disconnects, wait for the next connection instead of finishing. */
  reconnect: boolean;
  /** Guest caching: entry/attribute timeouts, page and directory cache flags. */
  cache: Omit<ImageTreeOptions, 'images'>;
  share: ShareOptions;
  fingerprint: FingerprintSource;
  dax: DaxOptions;
  /** Worker threads for file data reads and decompression; 0 = on the main thread. */
  readThreads: number;
  /** Unix socket for `erofs-vfsd stats` / `drop-cache`. */
  controlSocket?: string;
}

export interface Daemon {
  /** One server per endpoint (one VM each); `server` is the first. */
  servers: VhostUserServer[];
  server: VhostUserServer;
  share: ShareService;
  control?: ControlServer;
  readers: ErofsReader[];
  /** File data reads off the event loop (undefined with readThreads 0). */
  readPool?: ReadPool;
  log: DaemonLogger;
  /** Resolves with the reason the servers finished. */
  done: Promise<string>;
  stop(reason?: string): void;
}

/** An image or domain name: a letter or digit, then letters, digits and `._+-`. */
export function isPlainName(s: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._+-]*$/.test(s);
}

/** A daemon serving `images` on `endpoints`, everything else as by default. */
export function defaultDaemonConfig(images: ServedImage[], endpoints: Endpoint[]): DaemonConfig {
  return {
    images,
    endpoints,
    tag: 'erofs',
    numRequestQueues: 1,
    reconnect: false,
    cache: {},
    share: { ...DEFAULT_SHARE_OPTIONS },
    fingerprint: { kind: 'image-digest' },
    dax: { ...DEFAULT_DAX_OPTIONS },
    readThreads: defaultReadThreads(),
  };
}

/** Throws an Error saying what is wrong with `c`, if anything. */
export function checkDaemonConfig(c: DaemonConfig): void {
  if (c.images.length === 0) throw new Error('at least one image is needed');
  if (c.endpoints.length === 0) throw new Error('a socket path or an fd is needed');
  if (c.endpoints.some((e) => e.fd !== undefined) && c.endpoints.length > 1) throw new Error('an inherited fd serves one VM: use either an fd or socket paths');
  const sockets = c.endpoints.map((e) => e.socketPath).filter((s) => s !== undefined);
  if (new Set(sockets).size !== sockets.length) throw new Error('each socket path must be distinct');
  for (const img of c.images) {
    if (img.domain !== undefined && !isPlainName(img.domain)) throw new Error(`image ${img.path}: domain '${img.domain}' must be a plain name`);
  }
  if (!Number.isSafeInteger(c.dax.windowSize) || c.dax.windowSize < 0 || c.dax.windowSize % PAGE_SIZE) {
    throw new Error('the DAX window size must be a multiple of the page size');
  }
  if (!Number.isSafeInteger(c.readThreads) || c.readThreads < 0 || c.readThreads > 64) throw new Error('read threads must be an integer 0..64');
  checkVirtioFsConfig(c.tag, c.numRequestQueues);
}

/** Opens the images and starts a vhost-user server per endpoint (no signal handling, no exit). */
export function startDaemon(config: DaemonConfig, log: DaemonLogger): Daemon {
  checkDaemonConfig(config);
  const readers: ErofsReader[] = [];
  try {
    for (const img of config.images) readers.push(openImage(img.path, img.devices.length ? { devices: img.devices } : undefined));
  } catch (e) {
    for (const r of readers) r.close();
    throw e;
  }
  const several = config.images.length > 1;
  const names = config.images.map((img) => img.name ?? (several ? path.basename(img.path).replace(/\.[^.]*$/, '') : undefined));
  const readPool = config.readThreads > 0
    ? new ReadPool(config.images.map((img) => ({ path: img.path, devices: img.devices })), { threads: config.readThreads, fallback: readers })
    : undefined;
  // One registry (and one set of readers) for every guest; each guest has its own tree state.
  const share = new ShareService(
    config.images.map((img, i) => ({ name: names[i] ?? path.basename(img.path), domain: img.domain, paths: [img.path, ...img.devices], reader: readers[i]! })),
    { share: config.share, fingerprint: config.fingerprint, dax: config.dax, readPool },
  );
  const { tag, numRequestQueues, dax } = config;
  const fuseLog = log.child({ component: 'fuse' });
  const servers = config.endpoints.map((ep, i) => {
    const tree = share.guestTree(ep.socketPath ?? `fd${ep.fd}`, config.cache);
    const vmLog = config.endpoints.length > 1 ? log.child({ vm: i }) : log;
    let lastSession: FuseServer<DaxWindow> | undefined;
    return new VhostUserServer({
      socketPath: ep.socketPath,
      fd: ep.fd,
      reconnect: config.reconnect,
      log: vmLog,
      // A FUSE session and a device per connection; the tree (lookup counts, handles) is per VM
      // and the readers and share registry are common to all. A front-end that reconnects under
      // a live guest (or a restarted daemon) sends no new INIT: each session starts as resumed,
      // with the previous session's negotiation when there was one; a new guest's INIT
      // renegotiates. The device opens the connection's DAX window in the tree.
      createDevice: () => {
        const fuse = new FuseServer(tree, { logger: fuseLog, resume: lastSession?.negotiated ?? true });
        lastSession = fuse;
        return new VirtioFsDevice({
          tag, numRequestQueues, log: vmLog, server: fuse,
          dax: { protocol: dax.protocol, windowSize: dax.windowSize, windows: tree },
        });
      },
    });
  });
  for (const srv of servers) srv.start();
  let control: ControlServer | undefined;
  if (config.controlSocket) {
    control = startControlServer(config.controlSocket, (cmd) => {
      if (cmd === 'stats') return share.stats();
      if (cmd === 'drop-cache') return { dropped: share.dropCache() };
      return { error: `unknown command '${cmd}' (stats, drop-cache)` };
    }, log);
  }
  log.info({
    images: config.images.map((img) => img.path), tag, numRequestQueues, vms: servers.length, share: config.share.enabled, readThreads: config.readThreads,
  }, 'serving');
  const done = Promise.all(servers.map((s) => s.done)).then(async (reasons) => {
    control?.close();
    share.close();
    await readPool?.close();
    return reasons[0]!;
  });
  return {
    server: servers[0]!,
    servers,
    share,
    control,
    readers,
    readPool,
    log,
    done,
    stop: (reason = 'stopped') => {
      for (const s of servers) s.stop(reason);
    },
  };
}
