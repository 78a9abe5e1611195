// Locations the tests share. `../shared` sits beside the checkout, in CI as on developers' machines.
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** Repository root (the compiled file lives at dist/test/support/paths.js). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const SHARED_DIR = process.env.EROFS_VFSD_SHARED ?? path.resolve(REPO_ROOT, '../shared');
export const SHARED_IMAGES = path.join(SHARED_DIR, 'images');
/** Scratch space for images and mount points the tests build. */
export const SCRATCH_DIR = process.env.EROFS_VFSD_SCRATCH ?? path.join(REPO_ROOT, '.cache/test');
