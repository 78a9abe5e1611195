// `erofs-vfsd mount IMAGE MOUNTPOINT`: serve an EROFS image to the host kernel's FUSE client in
// the foreground, so the real Linux FUSE client drives our server. SIGINT/SIGTERM unmount cleanly.
import fs from 'node:fs';
import path from 'node:path';
import { openImage } from '../erofs/index.js';
import type { ErofsReader } from '../erofs/api.js';
import { FuseServer } from '../fuse/server.js';
import { DevFuseTransport } from '../fuse/dev-transport.js';
import { ImageTree } from '../vfs/index.js';
import { PAGE_SIZE, native, isNativeError } from '../native/index.js';
import { createLogger } from '../daemon/logger.js';

export interface MountArgs {
  image: string;
  mountpoint: string;
  devices?: string[];
  logLevel?: string;
  entryTimeout?: number;
  attrTimeout?: number;
  /** Largest READ the kernel sends (bytes, default 1 MiB). */
  maxRead?: number;
}

const FSTYPE = 'fuse.erofs-vfsd';

/** Mounts, serves until unmounted or signalled, unmounts; resolves with the exit code. */
export async function runMount(args: MountArgs): Promise<number> {
  const log = createLogger(args.logLevel ?? 'info');
  const mountpoint = path.resolve(args.mountpoint);
  let st: fs.Stats;
  try {
    st = fs.statSync(mountpoint);
  } catch (e) {
    throw new Error(`mount point ${mountpoint}: ${(e as Error).message}`);
  }
  if (!st.isDirectory()) throw new Error(`mount point ${mountpoint} is not a directory`);

  const reader: ErofsReader = openImage(args.image, { devices: args.devices });
  const maxRead = Math.max(4096, Math.min(args.maxRead ?? 1 << 20, 1 << 24));
  const tree = new ImageTree({ images: [{ reader }], entryTimeout: args.entryTimeout, attrTimeout: args.attrTimeout });
  const server = new FuseServer(tree, { logger: log, maxPages: Math.ceil(maxRead / PAGE_SIZE), maxWrite: 1 << 20 });

  const fd = fs.openSync('/dev/fuse', fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  const C = native.constants;
  const opts = `fd=${fd},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other,max_read=${maxRead}`;
  try {
    native.mount(path.resolve(args.image), mountpoint, FSTYPE, C.MS_RDONLY | C.MS_NOSUID | C.MS_NODEV, opts);
  } catch (e) {
    fs.closeSync(fd);
    reader.close();
    throw new Error(`mount ${mountpoint}: ${(e as Error).message}`);
  }
  log.info({ image: args.image, mountpoint }, 'mounted');

  const transport = new DevFuseTransport(fd, server, { logger: log, bufferSize: (1 << 20) + maxRead + 8192 });
  transport.start();

  let unmounting = false;
  const unmount = (why: string) => {
    if (unmounting) return;
    unmounting = true;
    log.info({ why }, 'unmounting');
    try {
      native.umount2(mountpoint, 0);
    } catch (e) {
      if (isNativeError(e, 'EINVAL')) {
        // Already gone (e.g. fusermount -u).
      } else {
        log.warn({ err: (e as Error).message }, 'umount busy, detaching');
        try {
          native.umount2(mountpoint, C.MNT_DETACH);
        } catch (e2) {
          log.error({ err: (e2 as Error).message }, 'lazy unmount failed');
        }
      }
    }
    // The kernel aborts the connection on unmount; reads then fail with ENODEV. Do not wait for
    // that forever: a detached mount can linger while files are open.
    setTimeout(() => transport.stop('unmounted'), 2000).unref();
  };
  const onSignal = (sig: NodeJS.Signals) => unmount(sig);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  // SIGUSR2: log the tree's bookkeeping (live nodes, open handles) — a leak check from outside.
  const onStats = () => log.info({ stats: tree.stats() }, 'stats');
  process.on('SIGUSR2', onStats);
  // A bug must not leave a dead mount behind ("Transport endpoint is not connected").
  const onFatal = (err: unknown) => {
    log.fatal({ err: String((err as Error)?.stack ?? err) }, 'fatal error, detaching the mount');
    try {
      native.umount2(mountpoint, C.MNT_DETACH);
    } catch {
      // not mounted
    }
    process.exit(1);
  };
  process.on('uncaughtException', onFatal);
  process.on('unhandledRejection', onFatal);

  const reason = await transport.closed;
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  process.off('SIGHUP', onSignal);
  process.off('SIGUSR2', onStats);
  process.off('uncaughtException', onFatal);
  process.off('unhandledRejection', onFatal);
  if (!unmounting) {
    // The connection ended without our signal (fusermount -u, abort via fusectl): make sure.
    try {
      native.umount2(mountpoint, C.MNT_DETACH);
    } catch {
      // not mounted any more
    }
  }
  transport.stop();
  try {
    fs.closeSync(fd);
  } catch {
    // ignore
  }
  reader.close();
  log.info({ reason }, 'stopped');
  return 0;
}
