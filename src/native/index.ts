// Loader and types for the N-API syscall shim (native/shim.c). Nothing here decides protocol
// behaviour; it only gives TypeScript the syscalls Node lacks.
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

export interface NativeShim {
  unixListen(path: string, backlog?: number): number;
  unixConnect(path: string): number;
  /** -1 when no connection is pending. */
  accept(listenFd: number): number;
  socketpair(): [number, number];
  sendmsg(fd: number, data: Uint8Array, fds?: number[]): number;
  /** bytes 0 = peer closed; -1 = nothing available (EAGAIN). */
  recvmsg(fd: number, buf: Uint8Array): { bytes: number; fds: number[]; fdsTruncated?: boolean };
  setNonblocking(fd: number, on: boolean): void;
  mmap(fd: number, offset: number, length: number, prot: number, flags: number): ArrayBuffer;
  munmap(region: ArrayBuffer): void;
  reserve(length: number): ArrayBuffer;
  mapFixed(region: ArrayBuffer, regionOffset: number, fd: number, fdOffset: number, length: number, prot: number): void;
  unmapFixed(region: ArrayBuffer, regionOffset: number, length: number): void;
  madvise(region: ArrayBuffer, offset: number, length: number, advice: number): void;
  /** Page-cache residency of a mapped range: one byte per page, bit 0 = resident. */
  mincore(region: ArrayBuffer, offset: number, length: number): Uint8Array;
  addressOf(region: ArrayBuffer): bigint;
  /** Buffer.copy's job (dst[dstOffset..] = src[srcOffset..], `length` bytes), faster for bulk copies; ERANGE when out of bounds. */
  copy(dst: Uint8Array, dstOffset: number, src: Uint8Array, srcOffset: number, length: number): void;
  memfdCreate(name: string, flags: number): number;
  ftruncate(fd: number, length: number): void;
  eventfd(initval: number, flags: number): number;
  /** false when the counter would overflow (EAGAIN). */
  eventfdWrite(fd: number, value: bigint | number): boolean;
  /** null when the counter is zero on a non-blocking eventfd. */
  eventfdRead(fd: number): bigint | null;
  /** cb(events, errno) runs on the loop thread; events: READABLE 1 | WRITABLE 2 | DISCONNECT 4. */
  watch(fd: number, events: number, cb: (events: number, err: number) => void): FdWatch;
  mount(source: string, target: string, fstype: string, flags: number, data: string): void;
  umount2(target: string, flags: number): void;
  readonly pageSize: number;
  readonly constants: {
    PROT_NONE: number; PROT_READ: number; PROT_WRITE: number;
    MAP_SHARED: number; MAP_PRIVATE: number; MAP_ANONYMOUS: number; MAP_FIXED: number; MAP_POPULATE: number;
    MFD_CLOEXEC: number; MFD_ALLOW_SEALING: number;
    EFD_NONBLOCK: number; EFD_CLOEXEC: number; EFD_SEMAPHORE: number;
    MS_RDONLY: number; MS_NOSUID: number; MS_NODEV: number; MS_NOEXEC: number;
    MNT_DETACH: number; MNT_FORCE: number;
    MADV_DONTNEED: number; MADV_WILLNEED: number; MADV_REMOVE: number;
    READABLE: number; WRITABLE: number; DISCONNECT: number;
  };
}

/** Error thrown by the shim: `.code` is the errno name, `.errno` the number. */
export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

function load(): NativeShim {
  const require = createRequire(import.meta.url);
  // dist/src/native/index.js → repository root is three levels up.
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
  const candidates = [
    path.join(root, 'build/Release/erofs_vfsd_native.node'),
    path.join(root, 'build/Debug/erofs_vfsd_native.node'),
  ];
  let lastError: unknown;
  for (const file of candidates) {
    try {
      return require(file) as NativeShim;
    } catch (err) {
      lastError = err;
    }
  }
  throw new Error(
    'erofs-vfsd: the native addon is not built (run "npm install" or "npm rebuild"): ' + String(lastError),
  );
}

export const native: NativeShim = load();

export function isNativeError(err: unknown, code?: string): err is NativeError {
  return err instanceof Error && typeof (err as NativeError).errno === 'number' && (code === undefined || (err as NativeError).code === code);
}
