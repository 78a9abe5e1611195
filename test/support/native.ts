// The syscalls tests use, in one object: vhost-user-ts's (sockets, eventfds, fixed mappings into
// a reserved window), the daemon's addon (memfds, image mappings, copy, mounts) and the test
// addon's (mincore, the address of a mapping), which this module alone loads.
import { createRequire } from 'node:module';
import path from 'node:path';
import { sys } from 'vhost-user-ts/sys';
import { native as daemonNative } from '../../src/native/index.js';
import { REPO_ROOT } from './paths.js';

export interface TestShim {
  /** Page-cache residency of a mapped range: one byte per page, bit 0 = resident. */
  mincore(region: ArrayBuffer, offset: number, length: number): Uint8Array;
  /** Virtual address of a mapping (what a front-end sends as a region's user address). */
  addressOf(region: ArrayBuffer): bigint;
}

function loadTestShim(): TestShim {
  const require = createRequire(import.meta.url);
  let lastError: unknown;
  for (const build of ['Release', 'Debug']) {
    try {
      return require(path.join(REPO_ROOT, 'build', build, 'erofs_vfsd_test_native.node')) as TestShim;
    } catch (err) {
      lastError = err;
    }
  }
  throw new Error('the test addon is not built (run "npm install" or "npm rebuild"): ' + String(lastError));
}

export const testNative: TestShim = loadTestShim();

export const native = {
  ...sys,
  ...daemonNative,
  ...testNative,
  constants: { ...sys.constants, ...daemonNative.constants },
};
export type { FdWatch } from 'vhost-user-ts/sys';
