// Loop-mounts an EROFS image read-only with the host kernel's own driver (the oracle), and always
// cleans up: unmount, detach extra loop devices, remove the mount point.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { SCRATCH_DIR } from './paths.js';

export interface LoopMount {
  dir: string;
  /** Idempotent. */
  unmount(): void;
}

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/**
 * `mount -t erofs -o loop,ro IMAGE DIR`. Extra devices (multi-device images) are attached to
 * their own read-only loop devices and passed as `device=` options, in device-table order.
 */
export function loopMount(image: string, opts: { devices?: string[]; mountPoint?: string } = {}): LoopMount {
  const dir = opts.mountPoint ?? fs.mkdtempSync(path.join(ensureDir(path.join(SCRATCH_DIR, 'mnt')), 'loop-'));
  fs.mkdirSync(dir, { recursive: true });
  const loops: string[] = [];
  let mounted = false;
  const cleanup = () => {
    if (mounted) {
      try {
        run('umount', [dir]);
      } catch {
        try { run('umount', ['-l', dir]); } catch { /* already gone */ }
      }
      mounted = false;
    }
    while (loops.length > 0) {
      const l = loops.pop()!;
      try { run('losetup', ['-d', l]); } catch { /* autoclear may have done it */ }
    }
    if (!opts.mountPoint) {
      try { fs.rmdirSync(dir); } catch { /* not empty or gone */ }
    }
  };
  try {
    const options = ['loop', 'ro'];
    for (const dev of opts.devices ?? []) {
      const l = run('losetup', ['-f', '--show', '-r', dev]).trim();
      loops.push(l);
      options.push(`device=${l}`);
    }
    run('mount', ['-t', 'erofs', '-o', options.join(','), image, dir]);
    mounted = true;
  } catch (e) {
    cleanup();
    const err = e as { stderr?: string; message: string };
    throw new Error(`loop mount of ${image} failed: ${err.stderr?.trim() || err.message}`);
  }
  return { dir, unmount: cleanup };
}

/** Runs `fn` with the image loop-mounted; unmounts whatever happens. */
export async function withLoopMount<T>(
  image: string,
  fn: (dir: string) => T | Promise<T>,
  opts: { devices?: string[] } = {},
): Promise<T> {
  const m = loopMount(image, opts);
  try {
    return await fn(m.dir);
  } finally {
    m.unmount();
  }
}

function ensureDir(d: string): string {
  fs.mkdirSync(d, { recursive: true });
  return d;
}
