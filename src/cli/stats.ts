// `erofs-vfsd stats` and `erofs-vfsd drop-cache`: one request over a running daemon's control
// socket (serve --control-socket PATH); the reply (JSON) goes to stdout.
import { controlRequest } from '../daemon/control.js';

export interface ControlArgs {
  controlSocket: string;
}

/**
 * stats: per-domain sharing statistics (backings, shared bytes, mapped ranges, hits,
 * per-file-path reads); drop-cache: releases clean, unmapped blobs (the fadvise(DONTNEED) analogue).
 */
export type ControlCommand = 'stats' | 'drop-cache';

export async function runControlCommand(cmd: ControlCommand, args: ControlArgs): Promise<number> {
  try {
    const reply = await controlRequest(args.controlSocket, cmd);
    process.stdout.write(JSON.stringify(reply, null, 2) + '\n');
    return reply && typeof reply === 'object' && 'error' in reply ? 1 : 0;
  } catch (e) {
    process.stderr.write(`erofs-vfsd ${cmd}: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}
