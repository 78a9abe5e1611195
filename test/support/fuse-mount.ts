// Runs `erofs-vfsd mount IMAGE DIR` as a child process (the real CLI, the real kernel FUSE
// client) and waits until the mount is live; stop() sends a signal and reports the exit code.
import fs from 'node:fs';
import path from 'node:path';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { REPO_ROOT, SCRATCH_DIR } from './paths.js';

export const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');

export function isMounted(dir: string): boolean {
  // mountinfo shows the resolved path (the scratch directory may be reached through a symlink).
  let want = path.resolve(dir);
  try {
    want = fs.realpathSync(want);
  } catch {
    /* gone: not mounted */
  }
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === want);
}

export interface FuseMount {
  dir: string;
  child: ChildProcess;
  stderr(): string;
  /** Sends `signal` and resolves with the exit code (null if killed by a signal). */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Best-effort cleanup whatever state things are in. */
  cleanup(): void;
}

export async function fuseMount(image: string, opts: { devices?: string[]; args?: string[]; timeoutMs?: number; logLevel?: string } = {}): Promise<FuseMount> {
  fs.mkdirSync(path.join(SCRATCH_DIR, 'mnt'), { recursive: true });
  const dir = fs.mkdtempSync(path.join(SCRATCH_DIR, 'mnt', 'fuse-'));
  const args = [CLI, 'mount', image, dir, ...(opts.devices ?? []).flatMap((d) => ['--device', d]), '--log-level', opts.logLevel ?? 'warn', ...(opts.args ?? [])];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => { exitCode = code; resolve(code); }));
  const cleanup = () => {
    if (exitCode === undefined) child.kill('SIGKILL');
    if (isMounted(dir)) {
      try { execFileSync('umount', ['-l', dir], { stdio: 'ignore' }); } catch { /* gone */ }
    }
    try { fs.rmdirSync(dir); } catch { /* busy or gone */ }
  };
  const deadline = Date.now() + (opts.timeoutMs ?? 15000);
  while (!isMounted(dir)) {
    if (exitCode !== undefined) {
      cleanup();
      throw new Error(`erofs-vfsd mount exited (${exitCode}) before mounting: ${err}`);
    }
    if (Date.now() > deadline) {
      cleanup();
      throw new Error(`erofs-vfsd mount did not mount ${image} in time: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    dir,
    child,
    stderr: () => err,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (exitCode !== undefined) return exitCode;
      child.kill(signal);
      const t = setTimeout(() => child.kill('SIGKILL'), 10000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
    cleanup,
  };
}
