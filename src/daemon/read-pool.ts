// Disk I/O and decompression never block the event loop for other queues.
//
// A pool of worker_threads, each with its own readers over the daemon's images, serves file data
// reads (the heavy part: pread/mmap copies and LZ4/LZMA/DEFLATE decompression) while the main
// thread keeps answering every other request (GETATTR, LOOKUP, ... on other virtqueues). Replies
// carry a fresh ArrayBuffer that is transferred, not copied. Reader errors come back as
// ErofsError codes and are re-thrown as ErofsError, so the FUSE layer maps them to errno.
//
// Requests wait in a bounded FIFO (at most `maxQueued`); a worker has at most `perWorker` reads
// in flight. When the FIFO is full the read runs on the main thread (correct, just not offloaded).
// Reads are never cancelled: a request whose guest went away still completes and is dropped.
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { ErofsError, type ErofsReader } from '../erofs/api.js';

export interface PoolImage {
  path: string;
  /** Extra devices of a multi-device image, in device-table order. */
  devices?: string[];
}

export interface PoolRequest {
  id: number;
  image: number;
  nid: number;
  offset: number;
  length: number;
}

export type PoolReply =
  | { id: number; buffer: ArrayBuffer; length: number; error?: undefined }
  | { id: number; error: { code: ErofsError['code']; message: string }; buffer?: undefined };

export interface ReadPoolOptions {
  /** Worker threads (default min(4, os.availableParallelism())). 0 is not a pool: use no pool. */
  threads?: number;
  /** Reads in flight per worker (default 2: one decoding, one queued behind it). */
  perWorker?: number;
  /** Requests waiting for a worker before reads fall back to the main thread (default 1024). */
  maxQueued?: number;
  /** Decompressed-block cache per worker reader, bytes (default 16 MiB). */
  cacheBytes?: number;
  /**
   * Main-thread readers (same order as the images), for the overflow fallback. Without them an
   * overflowing read waits in the queue anyway.
   */
  fallback?: ErofsReader[];
}

export interface ReadPoolStats {
  threads: number;
  queued: number;
  inflight: number;
  completed: number;
  overflow: number;
  restarts: number;
}

export function defaultReadThreads(): number {
  const n = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.max(1, Math.min(4, n));
}

interface Pending extends PoolRequest {
  resolve(b: Buffer): void;
  reject(e: Error): void;
}

interface WorkerSlot {
  worker: Worker;
  inflight: Map<number, Pending>;
  exited: Promise<void>;
}

const ERRNO_NAMES = new Set(['EIO', 'ENOENT', 'ENOTDIR', 'EISDIR', 'EINVAL', 'ENODATA', 'EOPNOTSUPP', 'ERANGE', 'ENXIO']);

export class ReadPool {
  readonly threads: number;
  private readonly perWorker: number;
  private readonly maxQueued: number;
  private readonly slots: WorkerSlot[] = [];
  private readonly queue: Pending[] = [];
  private nextId = 1;
  private closed = false;
  private completed = 0;
  private overflow = 0;
  private restarts = 0;
  private readonly workerUrl = new URL('./read-worker.js', import.meta.url);

  constructor(readonly images: PoolImage[], private readonly opts: ReadPoolOptions = {}) {
    const threads = opts.threads ?? defaultReadThreads();
    if (!Number.isSafeInteger(threads) || threads < 1 || threads > 64) throw new Error(`read pool: threads must be 1..64, got ${threads}`);
    this.threads = threads;
    this.perWorker = Math.max(1, opts.perWorker ?? 2);
    this.maxQueued = Math.max(0, opts.maxQueued ?? 1024);
    for (let i = 0; i < threads; i++) this.slots.push(this.spawn());
  }

  private spawn(): WorkerSlot {
    const worker = new Worker(this.workerUrl, { workerData: { images: this.images, cacheBytes: this.opts.cacheBytes ?? 16 << 20 } });
    const slot: WorkerSlot = { worker, inflight: new Map(), exited: new Promise((res) => worker.once('exit', () => res())) };
    worker.on('message', (m: PoolReply) => this.onReply(slot, m));
    worker.on('error', (e) => this.onDead(slot, e));
    worker.once('exit', (code) => this.onDead(slot, new Error(`read worker exited (code ${code})`)));
    // The pool must not keep an idle daemon (or a test) alive; the servers do that.
    worker.unref();
    return slot;
  }

  /** Up to `length` bytes of file `nid` of image `image` from `offset` (short only at EOF). */
  read(image: number, nid: number, offset: number, length: number): Promise<Buffer> {
    if (this.closed) return Promise.reject(new ErofsError('EIO', 'read pool closed'));
    if (!Number.isSafeInteger(image) || image < 0 || image >= this.images.length) return Promise.reject(new ErofsError('EINVAL', `no image #${image}`));
    const fb = this.opts.fallback?.[image];
    if (this.queue.length >= this.maxQueued && fb) {
      this.overflow++;
      try {
        return Promise.resolve(fb.read(nid, offset, length));
      } catch (e) {
        return Promise.reject(e instanceof Error ? e : new ErofsError('EIO', String(e)));
      }
    }
    return new Promise<Buffer>((resolve, reject) => {
      this.queue.push({ id: this.nextId++, image, nid, offset, length, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.queue.length) {
      const p = this.queue[0]!;
      // Affinity: a file's reads prefer one worker, whose decompressed-block cache then holds the
      // pclusters that adjacent windows share; a busy preferred worker spills to the least loaded.
      let best: WorkerSlot | undefined = this.slots.length ? this.slots[(p.image * 7919 + p.nid) % this.slots.length] : undefined;
      if (best && best.inflight.size >= this.perWorker) {
        best = undefined;
        for (const s of this.slots) if (s.inflight.size < this.perWorker && (!best || s.inflight.size < best.inflight.size)) best = s;
      }
      if (!best) return;
      this.queue.shift();
      best.inflight.set(p.id, p);
      best.worker.ref(); // a pending read keeps the process alive; an idle pool does not
      const req: PoolRequest = { id: p.id, image: p.image, nid: p.nid, offset: p.offset, length: p.length };
      best.worker.postMessage(req);
    }
  }

  private onReply(slot: WorkerSlot, m: PoolReply): void {
    const p = slot.inflight.get(m.id);
    if (!p) return;
    slot.inflight.delete(m.id);
    if (slot.inflight.size === 0) slot.worker.unref();
    this.completed++;
    if (m.error) {
      const code = ERRNO_NAMES.has(m.error.code) ? m.error.code : 'EIO';
      p.reject(new ErofsError(code, m.error.message));
    } else if (m.buffer instanceof ArrayBuffer && m.length >= 0 && m.length <= m.buffer.byteLength && m.length <= p.length) {
      p.resolve(Buffer.from(m.buffer, 0, m.length));
    } else {
      p.reject(new ErofsError('EIO', 'read worker sent a malformed reply'));
    }
    this.pump();
  }

  /** A worker died (crash, OOM, exit): fail its reads with EIO and start a replacement. */
  private onDead(slot: WorkerSlot, err: Error): void {
    const i = this.slots.indexOf(slot);
    if (i < 0) return;
    this.slots.splice(i, 1);
    for (const p of slot.inflight.values()) p.reject(new ErofsError('EIO', `read worker failed: ${err.message}`));
    slot.inflight.clear();
    if (this.closed) return;
    void slot.worker.terminate();
    this.restarts++;
    this.slots.push(this.spawn());
    this.pump();
  }

  stats(): ReadPoolStats {
    let inflight = 0;
    for (const s of this.slots) inflight += s.inflight.size;
    return { threads: this.slots.length, queued: this.queue.length, inflight, completed: this.completed, overflow: this.overflow, restarts: this.restarts };
  }

  /** Live worker threads (0 after close() resolves). */
  get liveWorkers(): number {
    return this.slots.length;
  }

  /**
   * Stops the pool: queued reads fail with EIO, in-flight reads finish or fail, each worker closes
   * its readers (their fds and mappings are process-wide) and exits; a worker that does not exit
   * within `graceMs` is terminated.
   */
  async close(graceMs = 2000): Promise<void> {
    if (this.closed) {
      await Promise.all(this.closing);
      return;
    }
    this.closed = true;
    for (const p of this.queue.splice(0)) p.reject(new ErofsError('EIO', 'read pool closed'));
    const slots = this.slots.slice();
    this.closing = slots.map(async (s) => {
      s.worker.postMessage({ close: true });
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        s.exited.then(() => false),
        new Promise<boolean>((res) => { timer = setTimeout(() => res(true), graceMs); }),
      ]);
      clearTimeout(timer);
      if (timedOut) {
        await s.worker.terminate();
        await s.exited;
      }
    });
    await Promise.all(this.closing);
    this.slots.length = 0;
  }

  private closing: Promise<void>[] = [];
}
