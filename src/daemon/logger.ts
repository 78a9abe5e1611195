// Daemon logging: pino, one JSON object per line on stderr (stdout stays free for output that
// scripts parse, e.g. --print-capabilities or the --sample QEMU command line).
import { pino, type Logger as PinoLogger } from 'pino';

/** The daemon's logger: pino, which also satisfies the narrower logger interfaces of vhost-user-ts and the FUSE server. */
export type DaemonLogger = PinoLogger;

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export function createLogger(level: string = 'info'): DaemonLogger {
  const lvl = (LOG_LEVELS as readonly string[]).includes(level) ? level : 'info';
  // Synchronous writes: a daemon killed by SIGTERM or exiting on disconnect loses no lines.
  return pino({ level: lvl, base: { pid: process.pid }, name: 'erofs-vfsd' }, pino.destination({ dest: 2, sync: true }));
}
