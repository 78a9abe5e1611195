// Real QEMU guests for the tests: guest kernel + initramfs (qemu/*.sh), the guest test tree and
// its EROFS images, the two back-ends (C virtiofsd over the unpacked tree, our daemon over the
// images) and one boot that runs every guest test and returns the parsed results.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { REPO_ROOT } from './paths.js';
import { parseManifest, type Manifest } from './manifest.js';

export const QEMU_CACHE = process.env.EROFS_VFSD_QEMU_CACHE ?? path.join(REPO_ROOT, '.cache/qemu');
export const GUEST_DIR = process.env.EROFS_VFSD_GUEST_DIR ?? path.join(REPO_ROOT, '.cache/guest');
export const VIRTIOFSD = process.env.VIRTIOFSD ?? '/usr/lib/qemu/virtiofsd';
export const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');
/** Wrappers for the Debian sid tools (scripts/sid-chroot.sh): QEMU 11.1, Rust virtiofsd 1.14, erofs-utils 1.9. */
export const SID_BIN = path.join(process.env.EROFS_VFSD_SID ?? path.join(REPO_ROOT, '.cache/sid'), 'bin');
export const QEMU_SID = path.join(SID_BIN, 'qemu-system-x86_64');
export const RUST_VIRTIOFSD = process.env.EROFS_VFSD_RUST_VIRTIOFSD ?? path.join(SID_BIN, 'virtiofsd');
/** sid's guest kernel (Linux 7.x), fetched by `qemu/get-kernel.sh --suite sid`. */
export const SID_GUEST_DIR = process.env.EROFS_VFSD_SID_GUEST_DIR ?? path.join(REPO_ROOT, '.cache/guest-sid');

/** Bump when the generated guest tree changes (images built from it are rebuilt). */
export const GUEST_TREE_VERSION = 2;

// ---------------------------------------------------------------- guest kernel and initramfs

export interface GuestFiles { dir: string; kernel: string; initramfs: string; gtest: string; kernelVersion: string }

export interface GuestSpec {
  /** Where initramfs.gz and gtest are built and run-guest.sh looks (default GUEST_DIR). */
  dir?: string;
  /** Debian suite of the kernel (qemu/get-kernel.sh --suite); default the script's own. */
  suite?: 'backports' | 'sid';
  /**
   * Where the kernel is fetched when it is not `dir`: its files are linked into `dir`, which then
   * holds an initramfs of its own (a benchmark's guest does not rebuild the tests' initramfs).
   */
  kernelDir?: string;
}

const INITRAMFS_INPUTS = ['qemu/init', 'qemu/build-initramfs.sh', 'guest-tests/run.sh', 'guest-tests/gtest.c'];
const KERNEL_FILES = ['vmlinuz', 'vmlinux', 'kernel-version', 'config', 'modules', 'modules.load'];

/**
 * Fetches the guest kernel (once) and (re)builds the initramfs when its inputs changed. The
 * inputs are compared by content (a digest kept beside the initramfs), not by mtime: several
 * checkouts share one .cache, and an initramfs built from another checkout's newer files must
 * not pass for this one's.
 */
export function ensureGuest(spec: GuestSpec = {}): GuestFiles {
  const dir = spec.dir ?? GUEST_DIR;
  const kernelDir = spec.kernelDir ?? dir;
  execFileSync(path.join(REPO_ROOT, 'qemu/get-kernel.sh'), [...(spec.suite ? ['--suite', spec.suite] : []), kernelDir], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (kernelDir !== dir) {
    fs.mkdirSync(dir, { recursive: true });
    for (const f of KERNEL_FILES) {
      const link = path.join(dir, f);
      fs.rmSync(link, { force: true });
      if (fs.existsSync(path.join(kernelDir, f))) fs.symlinkSync(path.resolve(kernelDir, f), link);
    }
  }
  const initramfs = path.join(dir, 'initramfs.gz');
  const digest = crypto.createHash('sha256');
  for (const p of INITRAMFS_INPUTS) digest.update(fs.readFileSync(path.join(REPO_ROOT, p)));
  digest.update(fs.readFileSync(path.join(dir, 'kernel-version')));
  const want = digest.digest('hex');
  const stamp = path.join(dir, 'initramfs.inputs');
  const have = fs.existsSync(stamp) ? fs.readFileSync(stamp, 'utf8').trim() : '';
  if (!fs.existsSync(initramfs) || !fs.existsSync(path.join(dir, 'gtest')) || have !== want) {
    execFileSync(path.join(REPO_ROOT, 'qemu/build-initramfs.sh'), [dir], { stdio: ['ignore', 'ignore', 'pipe'] });
    fs.writeFileSync(stamp, `${want}\n`);
  }
  return {
    dir,
    kernel: path.join(dir, 'vmlinuz'),
    initramfs,
    gtest: path.join(dir, 'gtest'),
    kernelVersion: fs.readFileSync(path.join(dir, 'kernel-version'), 'utf8').trim(),
  };
}

/** The sid chroot's tools (QEMU 11.1, Rust virtiofsd 1.14, erofs-utils 1.9): built once by scripts/sid-chroot.sh. */
export function ensureSidTools(): void {
  execFileSync(path.join(REPO_ROOT, 'scripts/sid-chroot.sh'), [], { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** First line of `BIN --version` (what a table says it measured). */
export function toolVersion(bin: string): string {
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8' });
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.split('\n')[0]!.trim();
}

// ---------------------------------------------------------------- guest test tree and images

/** Deterministic byte generator (xorshift32). */
function bytes(size: number, seed: number, kind: 'random' | 'text' | 'zeros'): Buffer {
  const out = Buffer.alloc(size);
  if (kind === 'zeros') return out;
  let s = (seed * 2654435761) >>> 0 || 1;
  const next = () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s; };
  if (kind === 'random') {
    let i = 0;
    for (; i + 4 <= size; i += 4) out.writeUInt32LE(next(), i);
    for (; i < size; i++) out[i] = next() & 0xff;
    return out;
  }
  const words = ['erofs ', 'virtio ', 'guest ', 'page ', 'cache\n', 'read-only ', 'fuse ', 'the ', 'block ', 'lz4hc ', '0x7f '];
  let p = 0;
  while (p < size) {
    const w = words[next() % words.length]!;
    p += out.write(w, p);
  }
  return out;
}

function sh(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * The tree the guest tests expect (guest-tests/run.sh): big/* (large files for mmap, O_DIRECT and
 * parallel readers), files/f0000…f0199, dir10k/ (10,000 entries), xattr/file, links, a hard-link
 * pair, special files, odd modes and owners, deep nesting and odd names.
 * Built once under .cache/qemu/tree-v<N>.
 */
export function guestTree(): string {
  const root = path.join(QEMU_CACHE, `tree-v${GUEST_TREE_VERSION}`);
  const stamp = `${root}.done`;
  if (fs.existsSync(stamp)) return root;
  fs.rmSync(root, { recursive: true, force: true });
  const p = (...s: string[]) => path.join(root, ...s);
  const mk = (rel: string) => fs.mkdirSync(p(rel), { recursive: true });
  for (const d of ['big', 'files', 'dir10k', 'xattr', 'links', 'hard', 'special', 'modes', 'names', 'emptydir', 'deep/a/b/c/d/e/f/g']) mk(d);
  fs.writeFileSync(p('big/rand-3m'), bytes(3 * 1048576 + 123, 1, 'random'));
  fs.writeFileSync(p('big/text-2m'), bytes(2 * 1048576 + 7, 2, 'text'));
  fs.writeFileSync(p('big/zeros-1m'), bytes(1048576, 3, 'zeros'));
  fs.writeFileSync(p('big/mixed-700k'), Buffer.concat([bytes(350000, 4, 'text'), bytes(350001, 5, 'random')]));
  for (let i = 0; i < 200; i++) {
    const size = i === 0 ? 0 : (i * 977) % 20000 + (i % 7 === 0 ? 4096 - ((i * 977) % 20000) % 4096 : 0);
    fs.writeFileSync(p('files', `f${String(i).padStart(4, '0')}`), bytes(size, 100 + i, i % 3 === 0 ? 'random' : 'text'));
  }
  for (let i = 0; i < 10000; i++) fs.writeFileSync(p('dir10k', `e${String(i).padStart(5, '0')}`), '');
  fs.writeFileSync(p('xattr/file'), 'xattrs here\n');
  fs.writeFileSync(p('deep/a/b/c/d/e/f/g/leaf'), 'deep leaf\n');
  fs.symlinkSync('../big/rand-3m', p('links/rel'));
  fs.symlinkSync('/absolute/target/that/does/not/exist', p('links/abs'));
  fs.symlinkSync('dangling', p('links/dangling'));
  fs.symlinkSync('x/'.repeat(300) + 'end', p('links/long'));
  fs.writeFileSync(p('hard/a'), 'hard link pair\n');
  fs.linkSync(p('hard/a'), p('hard/b'));
  fs.writeFileSync(p('modes/setuid'), '#!/bin/sh\n');
  fs.chmodSync(p('modes/setuid'), 0o4755);
  fs.writeFileSync(p('modes/private'), 'secret\n');
  fs.chmodSync(p('modes/private'), 0o600);
  fs.chownSync(p('modes/private'), 1000, 1000);
  fs.writeFileSync(p('modes/readonly'), 'ro\n');
  fs.chmodSync(p('modes/readonly'), 0o444);
  mk('modes/sticky');
  fs.chmodSync(p('modes/sticky'), 0o1777);
  for (const n of ['spaced name', 'ünïcødé', 'quote"name', 'back\\slash', 'x'.repeat(200)]) fs.writeFileSync(p('names', n), n);
  sh('mkfifo', [p('special/fifo')]);
  sh('mknod', [p('special/null'), 'c', '1', '3']);
  sh('mknod', [p('special/loop'), 'b', '7', '0']);
  sh('setfattr', ['-n', 'user.a', '-v', 'hello', p('xattr/file')]);
  sh('setfattr', ['-n', 'user.bin', '-v', '0x00ff10ee', p('xattr/file')]);
  sh('setfattr', ['-n', 'user.long', '-v', 'L'.repeat(1000), p('xattr/file')]);
  sh('setfattr', ['-n', 'trusted.t', '-v', 't', p('xattr/file')]);
  sh('setfattr', ['-n', 'user.dir', '-v', '1', p('xattr')]);
  for (const i of [0, 50, 100, 9950]) sh('setfattr', ['-n', 'user.sampled', '-v', String(i), p('dir10k', `e${String(i).padStart(5, '0')}`)]);
  fs.writeFileSync(stamp, `${GUEST_TREE_VERSION}\n`);
  return root;
}

export type GuestImageKind = 'plain' | 'lz4hc' | 'chunked';

const MKFS_OPTS: Record<GuestImageKind, string[]> = {
  plain: [],
  lz4hc: ['-zlz4hc,9', '-C16384'],
  chunked: ['--chunksize=16384'],
};

/** mkfs.erofs (1.5) image of the guest tree; cached under .cache/qemu. */
export function guestImage(kind: GuestImageKind): string {
  const tree = guestTree();
  const img = path.join(QEMU_CACHE, `guest-v${GUEST_TREE_VERSION}-${kind}.erofs`);
  if (fs.existsSync(img)) return img;
  const tmp = `${img}.tmp`;
  fs.writeFileSync(tmp, ''); // mkfs.erofs 1.5 does not create its output file
  execFileSync('mkfs.erofs', ['--quiet', ...MKFS_OPTS[kind], tmp, tree], { stdio: ['ignore', 'ignore', 'pipe'] });
  fs.renameSync(tmp, img);
  return img;
}

/** The manifest of a host directory computed by the same gtest helper the guest runs. */
export function hostManifest(dir: string, gtest: string): Manifest {
  const out = path.join(QEMU_CACHE, `host-manifest-${process.pid}.json`);
  execFileSync(gtest, ['manifest', dir, out], { stdio: ['ignore', 'ignore', 'pipe'] });
  const m = parseManifest(fs.readFileSync(out, 'utf8'));
  fs.rmSync(out, { force: true });
  return m;
}

// ---------------------------------------------------------------- back-ends

export interface Backend { name: string; socket: string; proc: ChildProcess; log: () => string; stop: () => Promise<void> }

async function waitFor(cond: () => boolean, ms: number, what: string, proc?: ChildProcess, log?: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (proc && proc.exitCode !== null) throw new Error(`${what}: process exited with ${proc.exitCode}\n${log?.() ?? ''}`);
    if (Date.now() > end) throw new Error(`${what}: timed out after ${ms} ms\n${log?.() ?? ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function isSocket(p: string): boolean {
  try { return fs.statSync(p).isSocket(); } catch { return false; }
}

function startProcess(name: string, cmd: string, args: string[], socket: string, ready: (log: string) => boolean, leftovers: string[] = []): Promise<Backend> {
  fs.rmSync(socket, { force: true });
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const add = (b: Buffer) => { log += b.toString(); if (log.length > 2_000_000) log = log.slice(-1_000_000); };
  proc.stdout!.on('data', add);
  proc.stderr!.on('data', add);
  const backend: Backend = {
    name, socket, proc, log: () => log,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
        await new Promise((r) => proc.once('exit', r));
        clearTimeout(t);
      }
      for (const f of [socket, ...leftovers]) fs.rmSync(f, { force: true });
    },
  };
  return waitFor(() => isSocket(socket) && ready(log), 30_000, `${name} start`, proc, () => log).then(() => backend);
}

/** C virtiofsd (QEMU 7.2's, package qemu-system-common) serving a directory. */
export function startVirtiofsd(source: string, socket: string): Promise<Backend> {
  if (!fs.existsSync(VIRTIOFSD)) throw new Error(`${VIRTIOFSD} is missing (scripts/setup.sh installs qemu-system-common)`);
  return startProcess('virtiofsd', VIRTIOFSD, [
    `--socket-path=${socket}`, '-o', `source=${source}`, '-o', 'cache=auto', '-o', 'xattr',
    '-o', 'sandbox=chroot', '-o', 'no_posix_lock',
    // trusted.* xattrs need CAP_SYS_ADMIN, which virtiofsd drops unless told otherwise
    '-o', 'modcaps=+sys_admin',
  ], socket, () => true);
}

/**
 * Rust virtiofsd (1.14 from the sid chroot, scripts/sid-chroot.sh) serving a directory, as users
 * run it today except `--sandbox none`: we run as root, and its namespace sandbox only changes
 * how it starts, not how it serves a request. `--xattr` and `+sys_admin` as for C virtiofsd
 * (trusted.* xattrs visible, as in the kernel's view). Its default thread pool (none: requests
 * are served on the queue's thread) and seccomp filter are kept.
 */
export function startRustVirtiofsd(source: string, socket: string, o: { cache?: 'auto' | 'always' | 'never' | 'metadata'; extraArgs?: string[] } = {}): Promise<Backend> {
  if (!fs.existsSync(RUST_VIRTIOFSD)) throw new Error(`${RUST_VIRTIOFSD} is missing (scripts/sid-chroot.sh builds the sid chroot with Rust virtiofsd)`);
  fs.rmSync(`${socket}.pid`, { force: true });
  return startProcess('rust-virtiofsd', RUST_VIRTIOFSD, [
    '--shared-dir', source, '--socket-path', socket, '--sandbox', 'none', '--cache', o.cache ?? 'auto',
    '--xattr', '--modcaps=+sys_admin', '--log-level', 'info', ...(o.extraArgs ?? []),
  ], socket, (log) => log.includes('Waiting for vhost-user socket connection'), [`${socket}.pid`]);
}

/** Our daemon (`erofs-vfsd serve`) exporting one image (as the root) or several (named). */
export function startErofsVfsd(images: Array<{ name?: string; path: string }>, socket: string, extra: string[] = []): Promise<Backend> {
  const args = [CLI, 'serve', '--socket-path', socket, '--tag', 'erofs', ...(extra.includes('--log-level') ? [] : ['--log-level', 'info'])];
  for (const im of images) args.push('--image', im.name ? `${im.name}=${im.path}` : im.path);
  return startProcess('erofs-vfsd', process.execPath, [...args, ...extra], socket, (log) => log.includes('listening'));
}

// ---------------------------------------------------------------- one guest boot

export interface GuestResult { test: string; ok: boolean; [k: string]: unknown }

export interface GuestRun {
  results: GuestResult[];
  /** results by test name (the last one when a test ran more than once) */
  byTest: Map<string, GuestResult[]>;
  manifest?: Manifest;
  console: string;
  done: boolean;
  /** host wall time: QEMU start to exit, and QEMU start to the init's first line */
  wallMs: number;
  bootMs?: number;
  /** the accelerator run-guest.sh chose (`run-guest: accel=…`): kvm or tcg */
  accel?: string;
}

/**
 * Boots the guest against `socket`, runs guest-tests/run.sh, returns what the guest reported.
 * `reboot`: after the tests the guest reboots once (a VM reset seen by the back-end) and runs
 * `tests2` in the second boot; those results are named `reboot:<test>`.
 */
export async function bootGuest(socket: string, opts: {
  label: string; tests?: string[]; root?: string; queues?: number; timeoutS?: number; extraArgs?: string[];
  reboot?: boolean; tests2?: string[];
  /** QEMU binary (default run-guest.sh's: the host's), guest directory (default GUEST_DIR), guest RAM (default 512M) */
  qemu?: string; guestDir?: string; mem?: string;
  /** run-guest.sh's virtio-fs device: `fs` (default) or `test-device` (QEMU >= 11.1, with a DAX window). */
  device?: 'fs' | 'test-device';
  /** Called with each console line as it arrives, with QEMU's process id (run-guest.sh's: QEMU runs below it). */
  onLine?: (line: string, pid: number) => void;
}): Promise<GuestRun> {
  const work = path.join(QEMU_CACHE, 'runs', opts.label);
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { recursive: true });
  const out = path.join(work, 'out.img');
  fs.writeFileSync(out, '');
  fs.truncateSync(out, 64 * 1048576);
  const kargs = [...(opts.extraArgs ?? [])];
  if (opts.tests) kargs.push(`gt.tests=${opts.tests.join(',')}`);
  if (opts.root) kargs.push(`gt.root=${opts.root}`);
  if (opts.reboot) kargs.push('gt.reboot=1');
  if (opts.tests2) kargs.push(`gt.tests2=${opts.tests2.join(',')}`);
  const args = ['--socket', socket, '--out', out, '--guest', opts.guestDir ?? GUEST_DIR, '--timeout', String(opts.timeoutS ?? 300),
    '--queues', String(opts.queues ?? 1), ...(opts.reboot ? ['--allow-reboot'] : []),
    ...(opts.qemu ? ['--qemu', opts.qemu] : []), ...(opts.mem ? ['--mem', opts.mem] : []),
    ...(opts.device ? ['--device', opts.device] : []), '--', ...kargs];
  const t0 = Date.now();
  let bootMs: number | undefined;
  const proc = spawn(path.join(REPO_ROOT, 'qemu/run-guest.sh'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  let lineStart = 0;
  const add = (b: Buffer) => {
    text += b.toString('utf8');
    if (bootMs === undefined && text.includes('GUESTTEST')) bootMs = Date.now() - t0;
    if (!opts.onLine) return;
    for (let nl = text.indexOf('\n', lineStart); nl >= 0; nl = text.indexOf('\n', lineStart)) {
      opts.onLine(text.slice(lineStart, nl).replace(/\r$/, ''), proc.pid ?? -1);
      lineStart = nl + 1;
    }
  };
  proc.stdout!.on('data', add);
  proc.stderr!.on('data', add);
  await new Promise((r) => proc.once('exit', r));
  const wallMs = Date.now() - t0;
  fs.writeFileSync(path.join(work, 'console.log'), text);
  const results: GuestResult[] = [];
  const byTest = new Map<string, GuestResult[]>();
  let boots = 0;
  for (const line of text.split(/\r?\n/)) {
    const i = line.indexOf('GUESTTEST {');
    if (i < 0) continue;
    try {
      const r = JSON.parse(line.slice(i + 'GUESTTEST '.length)) as GuestResult;
      if (r.test === 'boot') boots++;
      if (boots > 1) r.test = `reboot:${r.test}`;
      results.push(r);
      byTest.set(r.test, [...(byTest.get(r.test) ?? []), r]);
    } catch {
      results.push({ test: 'unparsable', ok: false, line });
    }
  }
  const done = /GUESTDONE \{/.test(text);
  let manifest: Manifest | undefined;
  const unpack = path.join(work, 'out');
  fs.mkdirSync(unpack);
  try {
    execFileSync('tar', ['-xf', out, '-C', unpack], { stdio: ['ignore', 'ignore', 'pipe'] });
    const m = path.join(unpack, 'walk.json');
    if (fs.existsSync(m)) manifest = parseManifest(fs.readFileSync(m, 'utf8'));
  } catch { /* no archive: the guest did not get that far; results say why */ }
  fs.rmSync(out, { force: true });
  const accel = /run-guest: accel=(\w+)/.exec(text)?.[1];
  return { results, byTest, manifest, console: text, done, wallMs, bootMs, accel };
}

/** Prefixes every path of a manifest with `dir/` (for a multi-image export's subdirectories). */
export function prefixManifest(m: Manifest, dir: string): Manifest {
  const out: Manifest = {};
  for (const [k, v] of Object.entries(m)) out[k === '' ? dir : `${dir}/${k}`] = v;
  return out;
}

/**
 * The guest-visible results that must agree between back-ends: timings and call counts left out,
 * a data root below the mount (`gt.root=a`) folded into `/mnt/`.
 */
export function comparableResults(run: GuestRun, opts: { root?: string; skip?: string[] } = {}): Record<string, unknown>[] {
  const drop = new Set(['ms', 'uptime_s', 'at_s', 'getdents_calls_small', 'getdents_calls_big', 'reads', 'kernel', 'tag']);
  const skip = new Set(['boot', 'mount', ...(opts.skip ?? [])]);
  return run.results
    .filter((r) => !skip.has(r.test))
    .map((r) => {
      let json = JSON.stringify(Object.fromEntries(Object.entries(r).filter(([k]) => !drop.has(k))));
      if (opts.root) json = json.split(`/mnt/${opts.root}/`).join('/mnt/');
      return JSON.parse(json) as Record<string, unknown>;
    });
}
