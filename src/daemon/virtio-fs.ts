// The virtio-fs device (VIRTIO device id 26) on top of vhost-user-ts: queue 0 is the
// high-priority queue (FORGET, INTERRUPT), queues 1..N carry requests. Each descriptor chain is
// one FUSE request: the device-readable bytes are gathered (copied, so the guest cannot change
// them under us), handed to the FUSE server, and the reply is scattered into the chain's
// device-writable buffers. Requests complete in any order; the FUSE server is async.
import type { DescriptorChain, Logger, VhostUserDevice, BackendChannel } from 'vhost-user-ts';

/** VIRTIO_FS config: u8 tag[36], le32 num_request_queues (notify_buf_size only with NOTIFICATION). */
export const VIRTIO_FS_TAG_LEN = 36;
export const VIRTIO_FS_CONFIG_SIZE = 40;
export const VIRTIO_ID_FS = 26;
/**
 * Most request bytes we copy out of the guest. Read-only FUSE requests are small (names, xattr
 * names); larger ones (WRITE, SETXATTR data) are refused by opcode, so their tails never matter.
 * This bounds what a guest can make us allocate: queue size × this.
 */
export const MAX_REQUEST_BYTES = 128 * 1024;

const OUT_HEADER_SIZE = 16;
const EIO = 5;
/** FUSE_READ: its reply data is written into a pooled buffer lent to the server. */
const FUSE_READ = 15;
/** Lent reply buffers: large enough for the biggest READ the server answers (max_pages 256). */
const REPLY_BUFFER_SIZE = 1 << 20;
const REPLY_POOL_MAX = 16;
const E2BIG = 7;

/** Per-request context handed to the FUSE server (src/fuse/server.ts HandleContext). */
export interface RequestContextIn {
  queue?: number;
  replyBuffer?: Buffer;
  /** The chain's device-writable buffers: a READ may place its data there (synchronously). */
  replyTo?: readonly Buffer[];
  /** Set by the server: data bytes placed in replyTo after the out header. */
  placed?: number;
}

/** The transport-neutral FUSE server surface we need (src/fuse/server.ts FuseServer). */
export interface FuseRequestHandler {
  handle(request: Buffer, ctx?: RequestContextIn): Promise<Buffer[] | null>;
  /** Optional: like handle(), but answers synchronously when it can (no promise, no hop). */
  handleMaybeSync?(request: Buffer, ctx?: RequestContextIn): Buffer[] | null | Promise<Buffer[] | null>;
}

export interface VirtioFsDeviceOptions {
  tag: string;
  /** Request queues (the high-priority queue comes on top). */
  numRequestQueues: number;
  server: FuseRequestHandler;
  log: Logger;
  /** Extra protocol features (e.g. for DAX window dialects); none by default. */
  protocolFeatures?: bigint;
  /** VIRTIO shared memory region sizes by shmid (GET_SHMEM_CONFIG); region 0 is the DAX cache window. */
  shmemRegions?: readonly bigint[];
  /** Called with the back-end channel when the front-end provides one (DAX uses it). */
  onBackendChannel?: (ch: BackendChannel | null) => void;
  onReset?: (reason: string) => void;
  /** Called with the features the front-end acknowledged (DAX needs the SHMEM protocol bit). */
  onFeaturesAcked?: (features: bigint, protocolFeatures: bigint) => void;
}

export function encodeVirtioFsConfig(tag: string, numRequestQueues: number): Buffer {
  const cfg = Buffer.alloc(VIRTIO_FS_CONFIG_SIZE);
  const t = Buffer.from(tag, 'utf8');
  if (t.length === 0 || t.length > VIRTIO_FS_TAG_LEN) throw new RangeError(`virtio-fs tag must be 1..${VIRTIO_FS_TAG_LEN} bytes`);
  t.copy(cfg, 0);
  cfg.writeUInt32LE(numRequestQueues, VIRTIO_FS_TAG_LEN);
  return cfg;
}

/** Copies `parts` into `dst` slices in order; returns bytes written. Caller checks capacity. */
export function scatter(parts: Buffer[], dst: Buffer[]): number {
  let di = 0;
  let doff = 0;
  let written = 0;
  for (const p of parts) {
    let poff = 0;
    while (poff < p.length) {
      const d = dst[di];
      if (!d) return written;
      const n = p.copy(d, doff, poff);
      poff += n;
      doff += n;
      written += n;
      if (doff >= d.length) {
        di++;
        doff = 0;
      }
    }
  }
  return written;
}

export class VirtioFsDevice implements VhostUserDevice {
  readonly features = 0n;
  readonly protocolFeatures: bigint;
  readonly shmemRegions: readonly bigint[] | undefined;
  readonly numQueues: number;
  private readonly config: Buffer;
  stats = { requests: 0, replies: 0, noReply: 0, tooLarge: 0, failed: 0, stale: 0, placed: 0 };
  inflight = 0;
  private readonly replyPool: Buffer[] = [];

  constructor(private readonly opts: VirtioFsDeviceOptions) {
    if (!Number.isInteger(opts.numRequestQueues) || opts.numRequestQueues < 1 || opts.numRequestQueues > 255) {
      throw new RangeError('num-request-queues must be 1..255');
    }
    this.numQueues = 1 + opts.numRequestQueues;
    this.config = encodeVirtioFsConfig(opts.tag, opts.numRequestQueues);
    this.protocolFeatures = opts.protocolFeatures ?? 0n;
    this.shmemRegions = opts.shmemRegions;
  }

  getConfig(offset: number, size: number): Buffer | null {
    if (offset > VIRTIO_FS_CONFIG_SIZE || size > VIRTIO_FS_CONFIG_SIZE - offset) return null;
    return Buffer.from(this.config.subarray(offset, offset + size));
  }

  featuresAcked(features: bigint, protocolFeatures: bigint): void {
    this.opts.onFeaturesAcked?.(features, protocolFeatures);
  }

  backendChannel(ch: BackendChannel | null): void {
    this.opts.onBackendChannel?.(ch);
  }

  reset(reason: string): void {
    this.opts.onReset?.(reason);
  }

  handleChain(chain: DescriptorChain): void {
    const log = this.opts.log;
    const q = chain.queue;
    this.stats.requests++;
    // A private copy (the guest may rewrite its buffers while we work), truncated: the server
    // answers a request whose tail is missing with an errno (or EROFS for write-type opcodes).
    let request: Buffer;
    if (chain.readableLength <= MAX_REQUEST_BYTES) {
      request = Buffer.concat(chain.readable, chain.readableLength);
    } else {
      this.stats.tooLarge++;
      request = Buffer.allocUnsafe(MAX_REQUEST_BYTES);
      let at = 0;
      for (const part of chain.readable) {
        if (at >= MAX_REQUEST_BYTES) break;
        at += part.copy(request, at, 0, Math.min(part.length, MAX_REQUEST_BYTES - at));
      }
    }
    this.inflight++;
    // A READ's data goes straight into the chain's writable buffers when the server can place it
    // synchronously (one copy, image → guest); otherwise into a pooled buffer (no fresh
    // allocation per request), back to the pool once the reply has been scattered.
    const isRead = request.length >= 8 && request.readUInt32LE(4) === FUSE_READ;
    const lend = isRead ? this.replyPool.pop() ?? Buffer.allocUnsafeSlow(REPLY_BUFFER_SIZE) : undefined;
    const ctx: RequestContextIn = isRead ? { queue: q.index, replyBuffer: lend, replyTo: chain.writable, placed: 0 } : { queue: q.index };
    const server = this.opts.server;
    let reply: Buffer[] | null | Promise<Buffer[] | null>;
    try {
      reply = server.handleMaybeSync ? server.handleMaybeSync(request, ctx) : server.handle(request, ctx);
    } catch (e) {
      reply = Promise.reject(e);
    }
    if (!(reply instanceof Promise)) {
      this.finish(chain, reply, request, ctx, lend);
      return;
    }
    reply.then(
      (parts) => this.finish(chain, parts, request, ctx, lend),
      (e: unknown) => {
        this.stats.failed++;
        log.error({ queue: q.index, err: e instanceof Error ? e.message : String(e) }, 'virtio-fs: request failed');
        ctx.placed = 0;
        this.finish(chain, [errorHeader(request, EIO)], request, ctx, lend);
      },
    );
  }

  private finish(chain: DescriptorChain, parts: Buffer[] | null, request: Buffer, ctx: RequestContextIn, lend: Buffer | undefined): void {
    this.inflight--;
    try {
      chain.queue.complete(chain, this.writeReply(chain, parts, request, ctx.placed ?? 0));
    } catch (e) {
      // Never let a completion error become an unhandled rejection (that would end the daemon).
      this.opts.log.error({ queue: chain.queue.index, err: e instanceof Error ? e.message : String(e) }, 'virtio-fs: completing a request failed');
    } finally {
      if (lend && this.replyPool.length < REPLY_POOL_MAX) this.replyPool.push(lend);
    }
  }

  /** Scatters the reply into the chain's writable part; returns bytes written. */
  private writeReply(chain: DescriptorChain, parts: Buffer[] | null, request: Buffer, placed: number): number {
    if (!parts || parts.length === 0) {
      this.stats.noReply++;
      return 0;
    }
    // The ring was stopped (guest reset) meanwhile: these buffers are no longer ours to write.
    if (!chain.queue.isCurrent(chain)) {
      this.stats.stale++;
      return 0;
    }
    let total = 0;
    for (const p of parts) total += p.length;
    if (placed > 0) {
      // READ data already sits after the header: write just the header (it counts the data).
      this.stats.placed++;
      if (parts.length !== 1 || total !== OUT_HEADER_SIZE || OUT_HEADER_SIZE + placed > chain.writableLength) {
        this.stats.failed++;
        this.opts.log.error({ queue: chain.queue.index, placed, room: chain.writableLength }, 'virtio-fs: inconsistent placed reply');
        parts = [errorHeader(request, EIO)];
        placed = 0;
      }
      try {
        const n = scatter(parts, chain.writable);
        this.stats.replies++;
        return n + placed;
      } catch (e) {
        this.opts.log.warn({ err: String(e) }, 'virtio-fs: could not write reply');
        return 0;
      }
    }
    if (total > chain.writableLength) {
      this.stats.tooLarge++;
      this.opts.log.warn({ queue: chain.queue.index, reply: total, room: chain.writableLength }, 'virtio-fs: reply larger than the guest buffers');
      if (chain.writableLength < OUT_HEADER_SIZE) return 0;
      parts = [errorHeader(request, E2BIG)];
    }
    try {
      const n = scatter(parts, chain.writable);
      this.stats.replies++;
      return n;
    } catch (e) {
      // Memory went away (unmapped table): nothing was delivered.
      this.opts.log.warn({ err: String(e) }, 'virtio-fs: could not write reply');
      return 0;
    }
  }
}

/** A bare fuse_out_header carrying -errno for the request's unique id. */
function errorHeader(request: Buffer, errno: number): Buffer {
  const h = Buffer.alloc(OUT_HEADER_SIZE);
  h.writeUInt32LE(OUT_HEADER_SIZE, 0);
  h.writeInt32LE(-errno, 4);
  if (request.length >= 16) request.copy(h, 8, 8, 16);
  return h;
}
