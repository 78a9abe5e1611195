// The control socket: a Unix stream socket speaking one JSON line each way.
// Request `{"cmd":"stats"}` or `{"cmd":"drop-cache"}` (a bare word works too); the reply is one
// JSON object and the connection closes. A fuller management API comes later.
import fs from 'node:fs';
import net from 'node:net';
import type { Logger } from 'vhost-user-ts';

export type ControlHandler = (cmd: string) => unknown;

/** Most request bytes read before giving up on a client. */
const MAX_REQUEST = 4096;

export interface ControlServer {
  close(): void;
  /** Resolves once listening. */
  ready: Promise<void>;
}

export function startControlServer(socketPath: string, handler: ControlHandler, log?: Logger): ControlServer {
  try {
    if (fs.statSync(socketPath).isSocket()) fs.unlinkSync(socketPath);
  } catch {
    // nothing there
  }
  const server = net.createServer((conn) => {
    let buf = '';
    conn.setEncoding('utf8');
    conn.on('error', () => conn.destroy());
    conn.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_REQUEST) {
        conn.end(JSON.stringify({ error: 'request too long' }) + '\n');
        return;
      }
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const line = buf.slice(0, nl).trim();
      let cmd = line;
      try {
        const parsed = JSON.parse(line) as unknown;
        if (parsed && typeof parsed === 'object' && typeof (parsed as { cmd?: unknown }).cmd === 'string') cmd = (parsed as { cmd: string }).cmd;
      } catch {
        // a bare command word
      }
      let reply: unknown;
      try {
        reply = handler(cmd);
      } catch (e) {
        reply = { error: e instanceof Error ? e.message : String(e) };
      }
      conn.end(JSON.stringify(reply) + '\n');
    });
  });
  const ready = new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      log?.info({ controlSocket: socketPath }, 'control socket listening');
      resolve();
    });
  });
  server.on('error', (e) => log?.error({ err: e.message }, 'control socket error'));
  return {
    ready,
    close: () => {
      server.close();
      try { fs.unlinkSync(socketPath); } catch { /* gone */ }
    },
  };
}

/** Client side: sends one command, resolves with the parsed reply. */
export function controlRequest(socketPath: string, cmd: string, timeoutMs = 5000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const conn = net.createConnection(socketPath);
    let buf = '';
    const timer = setTimeout(() => { conn.destroy(); reject(new Error('control socket: no reply')); }, timeoutMs);
    conn.setEncoding('utf8');
    conn.on('connect', () => conn.write(JSON.stringify({ cmd }) + '\n'));
    conn.on('data', (c: string) => { buf += c; });
    conn.on('error', (e) => { clearTimeout(timer); reject(e); });
    conn.on('end', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(buf));
      } catch {
        reject(new Error(`control socket: bad reply '${buf.slice(0, 200)}'`));
      }
    });
  });
}
