// Starting the back-ends the test VMM drives (C virtiofsd, our daemon), unpacking images for
// virtiofsd, and counting a process's fds and mappings for leak checks.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT, SCRATCH_DIR } from '../paths.js';
import type { Daemon, DaemonConfig, ServedImage } from '../../../src/daemon/serve.js';

export const VIRTIOFSD = process.env.EROFS_VFSD_VIRTIOFSD ?? '/usr/lib/qemu/virtiofsd';
export const DAEMON_MAIN = path.join(REPO_ROOT, 'dist/src/cli/main.js');

export interface Backend {
  socketPath: string;
  proc: ChildProcess;
  pid: number;
  /** Everything the process wrote to stderr so far (for diagnostics). */
  stderr(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code/signal. */
  stop(graceMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

let counter = 0;
let socketDir: string | null = null;
/**
 * A fresh socket path. Under the system temp directory, not the checkout: a Unix socket path
 * must fit in 108 bytes, and a CI clone may live deep.
 */
export function tempSocketPath(tag: string): string {
  if (!socketDir) {
    socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'test-vmm-'));
    const dir = socketDir;
    process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  }
  const p = path.join(socketDir, `${tag}-${counter++}.sock`);
  fs.rmSync(p, { force: true });
  return p;
}

function launch(cmd: string, args: string[], socketPath: string, ready: (err: string) => boolean, timeoutMs: number): Promise<Backend> {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  // A test that dies without stop() must not leave a back-end running.
  const reap = () => { if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL'); };
  process.once('exit', reap);
  proc.once('exit', () => process.removeListener('exit', reap));
  let err = '';
  proc.stderr!.setEncoding('utf8');
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.on('exit', (code, signal) => resolve({ code, signal }));
  });
  const backend: Backend = {
    socketPath,
    proc,
    pid: proc.pid ?? -1,
    stderr: () => err,
    exited,
    async stop(graceMs = 3000) {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
        const r = await exited;
        clearTimeout(t);
        fs.rmSync(socketPath, { force: true });
        return r;
      }
      fs.rmSync(socketPath, { force: true });
      return exited;
    },
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${cmd} did not become ready within ${timeoutMs} ms; stderr:\n${err}`));
    }, timeoutMs);
    const check = () => {
      if (ready(err) && fs.existsSync(socketPath)) {
        clearTimeout(timer);
        clearInterval(poll);
        resolve(backend);
      }
    };
    const poll = setInterval(check, 20);
    proc.stderr!.on('data', (d: string) => { err += d; check(); });
    proc.on('error', (e) => { clearTimeout(timer); clearInterval(poll); reject(e); });
    void exited.then((r) => {
      clearTimeout(timer);
      clearInterval(poll);
      reject(new Error(`${cmd} exited early (${r.code ?? r.signal}); stderr:\n${err}`));
    });
  });
}

export interface VirtiofsdOptions {
  source: string;
  socketPath?: string;
  cache?: 'auto' | 'always' | 'none';
  xattr?: boolean;
  extraArgs?: string[];
}

/** Starts Debian's C virtiofsd (QEMU 7.2) on a fresh socket, serving `source`. */
export function startVirtiofsd(o: VirtiofsdOptions): Promise<Backend> {
  if (!fs.existsSync(VIRTIOFSD)) throw new Error(`${VIRTIOFSD} is missing: install qemu-system-common (scripts/setup.sh)`);
  const socketPath = o.socketPath ?? tempSocketPath('virtiofsd');
  const args = [`--socket-path=${socketPath}`, '-o', `source=${o.source}`, '-o', `cache=${o.cache ?? 'always'}`];
  if (o.xattr ?? true) args.push('-o', 'xattr');
  // Root inside the sandbox keeps CAP_SYS_ADMIN so trusted.* xattrs are visible, as in the kernel's view.
  args.push('-o', 'modcaps=+sys_admin', '-o', 'log_level=err', ...(o.extraArgs ?? []));
  return launch(VIRTIOFSD, args, socketPath, () => true, 10_000);
}

export interface DaemonOptions {
  images: string[];
  socketPath?: string;
  extraArgs?: string[];
  logLevel?: string;
}

/** Starts our daemon (`erofs-vfsd serve`) on a fresh socket; ready once it logs `listening`. */
export function startDaemon(o: DaemonOptions): Promise<Backend> {
  if (!fs.existsSync(DAEMON_MAIN)) throw new Error(`${DAEMON_MAIN} is missing: run npm run build`);
  const socketPath = o.socketPath ?? tempSocketPath('erofs-vfsd');
  const args = [DAEMON_MAIN, 'serve', '--socket-path', socketPath, '--log-level', o.logLevel ?? 'info'];
  for (const img of o.images) args.push('--image', img);
  args.push(...(o.extraArgs ?? []));
  // The `listening` line is logged at info; quieter levels rely on the socket file (and the
  // front-end's connect retry).
  const verbose = ['info', 'debug', 'trace'].includes(o.logLevel ?? 'info');
  return launch(process.execPath, args, socketPath, (e) => !verbose || e.includes('listening'), 20_000);
}

export interface InProcessDaemon {
  socketPath: string;
  daemon: Daemon;
  stop(): Promise<void>;
}

/** What an in-process daemon serves: its images, and any configuration beyond the defaults. */
export type InProcessConfig = { images: (string | ServedImage)[] } & Partial<Omit<DaemonConfig, 'images' | 'endpoints'>>;

/**
 * Runs our daemon inside this process (the daemon `serve` builds, via startDaemon): the test VMM
 * and the back-end then share one event loop, so a blocking call in either shows up as a hang.
 */
export async function startInProcessDaemon(config: InProcessConfig, opts: { socketPath?: string; logLevel?: string } = {}): Promise<InProcessDaemon> {
  // Loaded on demand so that driving virtiofsd never depends on the daemon's code.
  const { defaultDaemonConfig, startDaemon } = await import('../../../src/daemon/serve.js');
  const { createLogger } = await import('../../../src/daemon/logger.js');
  const socketPath = opts.socketPath ?? tempSocketPath('in-process');
  const images = config.images.map((img) => (typeof img === 'string' ? { path: img, devices: [] } : img));
  const given = Object.fromEntries(Object.entries(config).filter(([, v]) => v !== undefined)) as Partial<DaemonConfig>;
  const daemon = startDaemon(
    { ...defaultDaemonConfig(images, [{ socketPath }]), reconnect: true, ...given, images },
    createLogger(opts.logLevel ?? 'silent'),
  );
  return {
    socketPath,
    daemon,
    async stop() {
      daemon.stop('test done');
      await daemon.done;
      for (const r of daemon.readers) r.close();
      fs.rmSync(socketPath, { force: true });
    },
  };
}

/**
 * Unpacks an EROFS image into a directory through the host kernel (loop mount + cp -a), once;
 * later calls reuse the copy. Returns the directory.
 */
export function unpackImage(image: string, name = path.basename(image, '.erofs')): string {
  const base = path.join(SCRATCH_DIR, 'unpacked');
  const dest = path.join(base, name);
  const stamp = path.join(base, `${name}.done`);
  const st = fs.statSync(image);
  const want = `${image} ${st.size} ${st.mtimeMs}`;
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === want) return dest;
  fs.rmSync(dest, { recursive: true, force: true });
  fs.rmSync(stamp, { force: true });
  fs.mkdirSync(dest, { recursive: true });
  const mnt = fs.mkdtempSync(path.join(base, `mnt-${name}-`));
  const run = (cmd: string, args: string[]) => {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr || r.error}`);
  };
  run('mount', ['-t', 'erofs', '-o', 'loop,ro', image, mnt]);
  try {
    run('cp', ['-a', `${mnt}/.`, `${dest}/`]);
  } finally {
    run('umount', [mnt]);
    fs.rmdirSync(mnt);
  }
  fs.writeFileSync(stamp, want);
  return dest;
}

/** Open fds of a process (names of /proc/PID/fd entries → link targets). */
export function procFds(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  return fs.readdirSync(dir).map((n) => {
    try { return `${n} -> ${fs.readlinkSync(path.join(dir, n))}`; } catch { return `${n} -> ?`; }
  });
}

/** Mapping lines of a process (/proc/PID/maps). */
export function procMaps(pid: number): string[] {
  return fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.length > 0);
}

/** File-backed mappings (inode ≠ 0): guest RAM, image files, libraries; not the JS heap. */
export function fileMaps(pid: number): string[] {
  return procMaps(pid).filter((l) => { const f = l.split(/\s+/); return f[4] !== undefined && f[4] !== '0'; });
}

/** Mappings of memfds (the guest RAM a back-end maps) still present in a process. */
export function memfdMaps(pid: number): string[] {
  return procMaps(pid).filter((l) => l.includes('/memfd:'));
}
