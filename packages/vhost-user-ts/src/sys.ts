// Loader and types for vhost-user-ts's syscall addon (native/sys.c): Unix sockets with fd
// passing, guest-memory mappings, eventfds and fd readiness on the libuv loop. This module is
// the only one that loads it; nothing here decides protocol behaviour.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface FdWatch {
  /** (Re)arms the watch for READABLE | WRITABLE | DISCONNECT. */
  start(events: number): void;
  stop(): void;
  /** Releases the libuv handle; idempotent. */
  close(): void;
}

export interface VhostSys {
  unixListen(path: string, backlog?: number): number;
  unixConnect(path: string): number;
  /** -1 when no connection is pending. */
  accept(listenFd: number): number;
  socketpair(): [number, number];
  /** At most 8 fds per message (refused before any syscall otherwise). */
  sendmsg(fd: number, data: Uint8Array, fds?: number[]): number;
  /** bytes 0 = peer closed; -1 = nothing available (EAGAIN). */
  recvmsg(fd: number, buf: Uint8Array): { bytes: number; fds: number[]; fdsTruncated?: boolean };
  setNonblocking(fd: number, on: boolean): void;
  /** A mapping wrapped as an ArrayBuffer (at most 4 GiB); munmap() detaches it. */
  mmap(fd: number, offset: number, length: number, prot: number, flags: number): ArrayBuffer;
  munmap(region: ArrayBuffer): void;
  /** Address space with no access (PROT_NONE), to map into with mapFixed. */
  reserve(length: number): ArrayBuffer;
  mapFixed(region: ArrayBuffer, regionOffset: number, fd: number, fdOffset: number, length: number, prot: number): void;
  unmapFixed(region: ArrayBuffer, regionOffset: number, length: number): void;
  memfdCreate(name: string, flags: number): number;
  ftruncate(fd: number, length: number): void;
  eventfd(initval: number, flags: number): number;
  /** false when the counter would overflow (EAGAIN). */
  eventfdWrite(fd: number, value: bigint | number): boolean;
  /** null when the counter is zero on a non-blocking eventfd. */
  eventfdRead(fd: number): bigint | null;
  /** cb(events, errno) runs on the loop thread; events: READABLE 1 | WRITABLE 2 | DISCONNECT 4. */
  watch(fd: number, events: number, cb: (events: number, err: number) => void): FdWatch;
  readonly pageSize: number;
  readonly constants: {
    PROT_NONE: number; PROT_READ: number; PROT_WRITE: number;
    MAP_SHARED: number; MAP_PRIVATE: number;
    MFD_CLOEXEC: number; MFD_ALLOW_SEALING: number;
    EFD_NONBLOCK: number; EFD_CLOEXEC: number; EFD_SEMAPHORE: number;
    READABLE: number; WRITABLE: number; DISCONNECT: number;
  };
}

/** Error thrown by the addon: `.code` is the errno name, `.errno` the number. */
export interface SysError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

function load(): VhostSys {
  const require = createRequire(import.meta.url);
  // dist/src/sys.js → the package root is two levels up.
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
  let lastError: unknown;
  for (const build of ['Release', 'Debug']) {
    try {
      return require(path.join(root, 'build', build, 'vhost_user_ts_sys.node')) as VhostSys;
    } catch (err) {
      lastError = err;
    }
  }
  throw new Error(`vhost-user-ts: the native addon is not built (run "npm install" or "npm rebuild" in ${root}): ${String(lastError)}`);
}

export const sys: VhostSys = load();

export function isSysError(err: unknown, code?: string): err is SysError {
  return err instanceof Error && typeof (err as SysError).errno === 'number' && (code === undefined || (err as SysError).code === code);
}
