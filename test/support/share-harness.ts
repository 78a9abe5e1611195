// Helpers for the page-sharing tests: a daemon serving several VMs (one --socket-path
// each), test-VMM guests with a DAX window, and a full read of an image through the window that
// records content hashes and the physical frames behind each file's window pages.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { native } from './native.js';
import { controlRequest } from '../../src/daemon/control.js';
import type { ShareStatsDoc } from '../../src/share/service.js';
import { connectTestVmm, startDaemon, tempSocketPath, type Backend, type DaxDialect, type TestVmm } from './test-vmm/index.js';
import { loadManifest, type Manifest } from './manifest.js';
import { SHARED_IMAGES } from './paths.js';

export const PAGE = native.pageSize;
export const RANGE = 2 << 20; // Linux maps DAX ranges of 2 MiB (FUSE_DAX_SHIFT 21)
export const O_DIRECT = 0o40000;

export function roundUp(n: number): number {
  return Math.ceil(n / PAGE) * PAGE;
}

export function image(name: string): string {
  return path.join(SHARED_IMAGES, `${name}.erofs`);
}

export function manifest(name: string): Manifest {
  return loadManifest(path.join(SHARED_IMAGES, `${name}.expected.json`));
}

export interface MultiDaemon {
  backend: Backend;
  sockets: string[];
  control: string;
  stats(): Promise<ShareStatsDoc>;
  stop(): Promise<void>;
}

/** `erofs-vfsd serve` as a child process with one socket per VM and a control socket. */
export async function startMultiDaemon(imageSpecs: string[], vms: number, extraArgs: string[] = []): Promise<MultiDaemon> {
  const sockets = Array.from({ length: vms }, (_, i) => tempSocketPath(`share-vm${i}`));
  const control = tempSocketPath('share-ctl');
  const args = ['--control-socket', control];
  for (const s of sockets.slice(1)) args.push('--socket-path', s);
  const backend = await startDaemon({ images: imageSpecs, socketPath: sockets[0], extraArgs: [...args, ...extraArgs], logLevel: 'info' });
  // Every socket and the control socket exist before we go on.
  const deadline = Date.now() + 10_000;
  while (![...sockets, control].every((s) => fs.existsSync(s))) {
    if (Date.now() > deadline) throw new Error(`sockets did not appear; stderr:\n${backend.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    backend,
    sockets,
    control,
    stats: async () => (await controlRequest(control, 'stats')) as ShareStatsDoc,
    stop: async () => {
      await backend.stop();
      for (const s of sockets) fs.rmSync(s, { force: true });
    },
  };
}

export interface FileView {
  path: string;
  size: number;
  sha256: string;
  /** Window offset the file was mapped at. */
  moffset: number;
  /** Physical frames behind the file's window pages (pagemap). */
  frames: bigint[];
  /** Bytes past EOF in the last mapped page were all zero. */
  tailZero: boolean;
}

/** Looks a path up from the root, caching directory nodeids. */
async function resolver(t: TestVmm) {
  const dirs = new Map<string, bigint>([['', 1n]]);
  return async (p: string): Promise<bigint> => {
    const parts = p.split('/');
    let cur = '';
    let node = 1n;
    for (let i = 0; i < parts.length; i++) {
      const next = cur ? `${cur}/${parts[i]}` : parts[i]!;
      const known = dirs.get(next);
      if (known !== undefined) { node = known; cur = next; continue; }
      node = (await t.client.lookup(node, parts[i]!)).nodeid;
      if (i < parts.length - 1) dirs.set(next, node);
      cur = next;
    }
    return node;
  };
}

/**
 * Reads every regular file of `m` through the DAX window: SETUPMAPPING in 2 MiB ranges (as
 * Linux does) packed page-aligned one file after another from `base`, then loads from the window.
 * The mappings stay in place so frames can be compared across guests.
 */
export async function readAllThroughWindow(t: TestVmm, m: Manifest, base = 0): Promise<Map<string, FileView>> {
  const resolve = await resolver(t);
  const out = new Map<string, FileView>();
  let moffset = base;
  for (const [p, e] of Object.entries(m)) {
    if (e.type !== 'file' || !e.size) continue;
    const nodeid = await resolve(p);
    const { fh } = await t.client.open(nodeid, 0);
    const mapped = roundUp(e.size);
    for (let r = 0; r < mapped; r += RANGE) {
      await t.client.setupmapping(fh, r, Math.min(RANGE, mapped - r), moffset + r, 2n /* READ */);
    }
    const content = Buffer.from(t.vmm.daxView(moffset, e.size));
    const tail = t.vmm.daxView(moffset + e.size, mapped - e.size);
    out.set(p, {
      path: p,
      size: e.size,
      sha256: createHash('sha256').update(content).digest('hex'),
      moffset,
      frames: t.vmm.daxPageFrames(moffset, mapped),
      tailZero: tail.every((b) => b === 0),
    });
    await t.client.release(fh);
    moffset += mapped;
  }
  return out;
}

/** Window bytes needed to hold every file of `m` back to back. */
export function windowFor(...ms: Manifest[]): number {
  let n = 0;
  for (const m of ms) {
    let k = 0;
    for (const e of Object.values(m)) if (e.type === 'file' && e.size) k += roundUp(e.size);
    n = Math.max(n, k);
  }
  return Math.ceil((n + RANGE) / RANGE) * RANGE;
}

export async function connectDaxGuest(socket: string, windowSize: number, dialect: DaxDialect): Promise<TestVmm> {
  return connectTestVmm(socket, { dax: { windowSize, dialect } });
}

export interface ShareComparison {
  identical: number;
  identicalSharedFrames: number;
  changed: number;
  changedSharingAFrame: number;
}

/** Same path, same content → must be the same frames; same path, changed content → no frame in common. */
export function compareFrames(a: Map<string, FileView>, b: Map<string, FileView>): ShareComparison {
  const r: ShareComparison = { identical: 0, identicalSharedFrames: 0, changed: 0, changedSharingAFrame: 0 };
  for (const [p, va] of a) {
    const vb = b.get(p);
    if (!vb) continue;
    if (va.sha256 === vb.sha256 && va.size === vb.size) {
      r.identical++;
      if (va.frames.length === vb.frames.length && va.frames.every((f, i) => f !== 0n && f === vb.frames[i])) r.identicalSharedFrames++;
    } else {
      r.changed++;
      const fa = new Set(va.frames);
      if (vb.frames.some((f) => fa.has(f))) r.changedSharingAFrame++;
    }
  }
  return r;
}
