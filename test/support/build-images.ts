// Images built by the tests with Debian's mkfs.erofs (1.5) from the generated tree
// (test/support/tree-gen.ts), one per option set the reader must handle. Built once and cached in
// .cache/images, keyed by the tree version, the options and the mkfs.erofs version.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { REPO_ROOT } from './paths.js';
import { ensureTree, TREE_VERSION, type TreeInfo } from './tree-gen.js';

export const IMAGE_CACHE = process.env.EROFS_VFSD_IMAGE_CACHE ?? path.join(REPO_ROOT, '.cache/images');

export interface ImageVariant {
  name: string;
  /** mkfs.erofs options (without the uuid, the image and the source directory). */
  options: string[];
  /** Chunk data goes to an extra device (`--blobdev`). */
  blobdev?: boolean;
  /** Compact inodes: no per-inode mtime, the kernel shows the build time instead. */
  compactInodes?: boolean;
  compressed?: boolean;
  /** Source paths left out of the image (`--exclude-path`), e.g. what compact inodes cannot hold. */
  exclude?: string[];
}

/** Files whose uid/gid exceed 16 bits: compact inodes cannot hold them, mkfs.erofs refuses. */
const WIDE_IDS = ['perms/owner-70000-80000', 'perms/owner-4000000000-123'];

export const VARIANTS: readonly ImageVariant[] = [
  { name: 'plain', options: [] },
  { name: 'lz4', options: ['-zlz4'], compressed: true },
  { name: 'lz4hc', options: ['-zlz4hc'], compressed: true },
  { name: 'lz4hc-bigpcluster', options: ['-zlz4hc', '-C65536'], compressed: true },
  { name: 'chunked', options: ['--chunksize=4096'] },
  { name: 'chunked-64k', options: ['--chunksize=65536'] },
  { name: 'chunked-blobdev', options: ['--chunksize=4096'], blobdev: true },
  { name: 'compact', options: ['-Eforce-inode-compact'], compactInodes: true, exclude: WIDE_IDS },
  { name: 'compact-lz4', options: ['-Eforce-inode-compact', '-zlz4'], compactInodes: true, compressed: true, exclude: WIDE_IDS },
  { name: 'extended', options: ['-Eforce-inode-extended'] },
  { name: 'noinline', options: ['-Enoinline_data'] },
  { name: 'noinline-lz4hc', options: ['-Enoinline_data', '-zlz4hc'], compressed: true },
];

export interface BuiltImage {
  variant: ImageVariant;
  name: string;
  path: string;
  /** Extra devices in device-table order (the blob for --blobdev images). */
  devices: string[];
  tree: TreeInfo;
}

/** Fixed so that rebuilding gives the same superblock uuid. */
export const IMAGE_UUID = '6f2b1c3e-5a4d-4e8f-9b0a-1c2d3e4f5a6b';

let mkfsVersion: string | undefined;
export function mkfsErofsVersion(): string {
  if (mkfsVersion === undefined) {
    try {
      mkfsVersion = execFileSync('dpkg-query', ['-W', '-f=${Version}', 'erofs-utils'], { encoding: 'utf8' }).trim();
    } catch {
      mkfsVersion = 'unknown';
    }
  }
  return mkfsVersion;
}

export function variant(name: string): ImageVariant {
  const v = VARIANTS.find((x) => x.name === name);
  if (!v) throw new Error(`unknown image variant ${name}`);
  return v;
}

/**
 * Builds (or reuses from the cache) one variant; `small` uses the small tree (same kinds of
 * objects, far fewer bytes and entries). Synchronous; atomic against concurrent runs. */
export function buildImage(v: ImageVariant | string, opts: { small?: boolean } = {}): BuiltImage {
  const vr = typeof v === 'string' ? variant(v) : v;
  const tree = ensureTree(IMAGE_CACHE, opts);
  const key = crypto.createHash('sha256')
    .update(JSON.stringify({ tree: TREE_VERSION, small: !!opts.small, options: vr.options, exclude: vr.exclude ?? [], blobdev: !!vr.blobdev, mkfs: mkfsErofsVersion(), uuid: IMAGE_UUID }))
    .digest('hex').slice(0, 16);
  const base = path.join(IMAGE_CACHE, `${opts.small ? 'small-' : ''}${vr.name}-${key}`);
  const image = `${base}.erofs`;
  const blob = `${base}.blob`;
  const devices = vr.blobdev ? [blob] : [];
  const done = () => fs.existsSync(image) && (!vr.blobdev || fs.existsSync(blob));
  if (!done()) {
    const tmp = `${base}.tmp-${process.pid}`;
    const args = [...vr.options, ...(vr.exclude ?? []).map((p) => `--exclude-path=${p}`), `-U${IMAGE_UUID}`, '--quiet'];
    if (vr.blobdev) args.push(`--blobdev=${tmp}.blob`);
    args.push(`${tmp}.erofs`, tree.dir);
    try {
      execFileSync('mkfs.erofs', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      // Blob first: the image's presence marks the pair complete.
      if (vr.blobdev) fs.renameSync(`${tmp}.blob`, blob);
      fs.renameSync(`${tmp}.erofs`, image);
    } catch (e) {
      const err = e as { stderr?: Buffer; message: string };
      throw new Error(`mkfs.erofs ${args.join(' ')} failed: ${err.stderr?.toString().trim() || err.message}`);
    } finally {
      fs.rmSync(`${tmp}.erofs`, { force: true });
      fs.rmSync(`${tmp}.blob`, { force: true });
    }
  }
  return { variant: vr, name: vr.name, path: image, devices, tree };
}

export function buildAllImages(): BuiltImage[] {
  return VARIANTS.map((v) => buildImage(v));
}
