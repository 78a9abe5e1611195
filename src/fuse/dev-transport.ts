// /dev/fuse transport: reads one request per read(2) from a non-blocking /dev/fuse fd when the
// libuv poll watch says it is readable, hands it to the FuseServer with a reply writer over a
// pooled buffer, and writes each reply with a single write(2). ENODEV on read means the
// filesystem was unmounted (or the connection aborted).
import fs from 'node:fs';
import { native } from '../native/index.js';
import type { FuseLogger, FuseServer } from './server.js';
import { IN_HEADER_SIZE } from './abi.js';
import { ReplyWriter } from './reply.js';

export interface DevFuseTransportOptions {
  /** Read buffer size; must exceed max_write + headers (default 1 MiB + 4 KiB). */
  bufferSize?: number;
  logger?: FuseLogger;
  /** Requests handled per readiness callback before yielding to the event loop. */
  batch?: number;
}

/** Idle reply writers (each with its buffer) kept for reuse: one per concurrently served request. */
const REPLY_POOL_MAX = 8;

function errCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

export class DevFuseTransport {
  private readonly buf: Buffer;
  private watch: ReturnType<typeof native.watch> | undefined;
  private stopped = false;
  private inflight = 0;
  private resolveClosed!: (reason: string) => void;
  /** Resolves with a reason once the connection is gone (unmount, abort, stop()). */
  readonly closed: Promise<string>;
  private readonly log: FuseLogger | undefined;
  private readonly batch: number;
  private readonly replyPool: ReplyWriter[] = [];

  constructor(private readonly fd: number, private readonly server: FuseServer, opts: DevFuseTransportOptions = {}) {
    this.buf = Buffer.allocUnsafe(Math.max(opts.bufferSize ?? (1 << 20) + 4096, 8192 + 4096));
    this.log = opts.logger;
    this.batch = opts.batch ?? 64;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  /** Number of requests being served right now. */
  get pending(): number {
    return this.inflight;
  }

  start(): void {
    native.setNonblocking(this.fd, true);
    this.watch = native.watch(this.fd, native.constants.READABLE, (events, err) => this.onReadable(events, err));
  }

  stop(reason = 'stopped'): void {
    if (this.stopped) return;
    this.stopped = true;
    this.watch?.close();
    this.watch = undefined;
    this.resolveClosed(reason);
  }

  private onReadable(_events: number, err: number): void {
    if (this.stopped) return;
    if (err) {
      this.log?.debug({ errno: err }, 'fuse: poll error on /dev/fuse (read will tell)');
    }
    for (let i = 0; i < this.batch && !this.stopped; i++) {
      let n: number;
      try {
        n = fs.readSync(this.fd, this.buf, 0, this.buf.length, null);
      } catch (e) {
        const code = errCode(e);
        if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return;
        if (code === 'EINTR' || code === 'ENOENT') continue; // request vanished (interrupted) before we read it
        if (code === 'ENODEV') {
          this.stop('unmounted');
          return;
        }
        this.log?.error({ err: String(e) }, 'fuse: read from /dev/fuse failed');
        this.stop(`read error: ${code ?? String(e)}`);
        return;
      }
      if (n === 0) {
        this.stop('eof');
        return;
      }
      if (n < IN_HEADER_SIZE) {
        this.log?.warn({ bytes: n }, 'fuse: short request from /dev/fuse');
        continue;
      }
      // The server keeps references into the request across awaits: give it its own copy.
      const req = Buffer.from(this.buf.subarray(0, n));
      // Replies go into a pooled buffer (a fresh 1 MiB buffer per READ costs page faults); it
      // returns to the pool once write(2) has copied it into the kernel.
      const out = this.replyPool.pop() ?? new ReplyWriter([Buffer.allocUnsafeSlow(this.buf.length)]);
      out.restart();
      this.inflight++;
      const served = this.server.serve(req, out);
      if (served instanceof Promise) {
        served
          .then(() => this.reply(out))
          .catch((e) => this.log?.error({ err: String(e) }, 'fuse: handler failed'))
          .finally(() => this.release(out));
      } else {
        this.reply(out);
        this.release(out);
      }
    }
  }

  private release(out: ReplyWriter): void {
    this.inflight--;
    if (this.replyPool.length < REPLY_POOL_MAX) this.replyPool.push(out);
  }

  private reply(out: ReplyWriter): void {
    const bytes = out.bytes;
    if (this.stopped || !bytes || bytes.length === 0) return;
    try {
      fs.writeSync(this.fd, bytes);
    } catch (e) {
      const code = errCode(e);
      // ENOENT: the request was interrupted/aborted meanwhile; the kernel no longer wants it.
      if (code === 'ENOENT') return;
      if (code === 'ENODEV') {
        this.stop('unmounted');
        return;
      }
      this.log?.error({ err: String(e), bytes: bytes.length }, 'fuse: reply write failed');
    }
  }
}
