// Loader and types for erofs-vfsd's syscall shim (native/shim.c): image mappings, memfds for
// shared backings, the bulk copy for READ data, mount/umount2 and fd readiness for the host FUSE
// mount. This module is the only one that loads it; nothing here decides protocol behaviour.
// (vhost-user's own syscalls are vhost-user-ts's addon.)
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FdWatch } from 'vhost-user-ts/sys';

// The fd watch is vhost-user-ts's (native/napi_sys.h, compiled into this shim too).
export type { FdWatch };

export interface NativeShim {
  setNonblocking(fd: number, on: boolean): void;
  mmap(fd: number, offset: number, length: number, prot: number, flags: number): ArrayBuffer;
  munmap(region: ArrayBuffer): void;
  madvise(region: ArrayBuffer, offset: number, length: number, advice: number): void;
  /** Buffer.copy's job (dst[dstOffset..] = src[srcOffset..], `length` bytes), faster for bulk copies; ERANGE when out of bounds. */
  copy(dst: Uint8Array, dstOffset: number, src: Uint8Array, srcOffset: number, length: number): void;
  memfdCreate(name: string, flags: number): number;
  ftruncate(fd: number, length: number): void;
  /** cb(events, errno) runs on the loop thread; events: READABLE 1 | WRITABLE 2 | DISCONNECT 4. */
  watch(fd: number, events: number, cb: (events: number, err: number) => void): FdWatch;
  mount(source: string, target: string, fstype: string, flags: number, data: string): void;
  umount2(target: string, flags: number): void;
  readonly pageSize: number;
  readonly constants: {
    PROT_NONE: number; PROT_READ: number; PROT_WRITE: number;
    MAP_SHARED: number; MAP_PRIVATE: number;
    MFD_CLOEXEC: number; MFD_ALLOW_SEALING: number;
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
  let lastError: unknown;
  for (const build of ['Release', 'Debug']) {
    try {
      return require(path.join(root, 'build', build, 'erofs_vfsd_native.node')) as NativeShim;
    } catch (err) {
      lastError = err;
    }
  }
  throw new Error('erofs-vfsd: the native addon is not built (run "npm install" or "npm rebuild"): ' + String(lastError));
}

export const native: NativeShim = load();

/** The host's page size: the unit of mmap offsets, DAX mappings and FUSE max_pages. */
export const PAGE_SIZE: number = native.pageSize;

export function isNativeError(err: unknown, code?: string): err is NativeError {
  return err instanceof Error && typeof (err as NativeError).errno === 'number' && (code === undefined || (err as NativeError).code === code);
}
