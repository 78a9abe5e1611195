// The virtio-fs device (VIRTIO device id 26) on top of vhost-user-ts: queue 0 is the
// high-priority queue (FORGET, INTERRUPT), queues 1..N carry requests. Each descriptor chain is
// one FUSE request: the device-readable bytes are gathered (copied, so the guest cannot change
// them under us) and served by this connection's FUSE server, whose reply goes through a
// ReplyWriter over the chain's device-writable buffers: a READ's file data is copied out of the
// image straight into guest memory. Requests complete in any order.
//
// The device also owns the connection's DAX window: once the front-end has given a back-end
// channel (and, for SHMEM_MAP, acknowledged the SHMEM protocol feature), it opens the window over
// that channel and hands it to the server with every request, as virtiofsd hands `vu_req`.
import { Errno } from '../fuse/abi.js';
import type { DaxWindowInfo } from '../fuse/filesystem.js';
import { ReplyWriter } from '../fuse/reply.js';
import type { RequestOrigin } from '../fuse/server.js';
import type { DaxProtocol, MapChannel } from '../share/dax.js';
import { ProtoFeature, bit, type BackendChannel, type DescriptorChain, type Logger, type VhostUserDevice } from 'vhost-user-ts';
import { BackendMapChannel } from './dax-channel.js';

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

/** The FUSE side of a connection (FuseServer): serves one request into a reply writer. */
export interface FuseSession<W> {
  serve(request: Buffer, out: ReplyWriter, origin: RequestOrigin<W>): void | Promise<void>;
}

/** A DAX window as the device keeps it for its connection. */
export interface ConnectionWindow extends DaxWindowInfo {
  /** The guest reset: the VMM dropped the window's mappings. */
  reset(): void;
}

/** Opens a connection's DAX window over its map channel and keeps what is mapped where (the share layer's SharedTree). */
export interface DaxWindows<W> {
  openWindow(channel: MapChannel): W;
  /** The window went away (no back-end channel any more). */
  closeWindow(window: W): void;
}

export interface VirtioFsDax<W> {
  /** The back-end channel messages that map the window. */
  protocol: DaxProtocol;
  /** Bytes of the window; 0 = no DAX. */
  windowSize: number;
  windows: DaxWindows<W>;
}

export interface VirtioFsDeviceOptions<W extends ConnectionWindow> {
  tag: string;
  /** Request queues (the high-priority queue comes on top). */
  numRequestQueues: number;
  /** The FUSE session this connection serves. */
  server: FuseSession<W>;
  log: Logger;
  /** A DAX window, when the front-end provides a usable back-end channel; none without this. */
  dax?: VirtioFsDax<W>;
}

export function encodeVirtioFsConfig(tag: string, numRequestQueues: number): Buffer {
  const cfg = Buffer.alloc(VIRTIO_FS_CONFIG_SIZE);
  const t = Buffer.from(tag, 'utf8');
  if (t.length === 0 || t.length > VIRTIO_FS_TAG_LEN) throw new RangeError(`virtio-fs tag must be 1..${VIRTIO_FS_TAG_LEN} bytes`);
  t.copy(cfg, 0);
  cfg.writeUInt32LE(numRequestQueues, VIRTIO_FS_TAG_LEN);
  return cfg;
}

/** Checks a device configuration; throws RangeError with what is wrong. */
export function checkVirtioFsConfig(tag: string, numRequestQueues: number): void {
  if (!Number.isInteger(numRequestQueues) || numRequestQueues < 1 || numRequestQueues > 255) {
    throw new RangeError('num-request-queues must be 1..255');
  }
  encodeVirtioFsConfig(tag, numRequestQueues);
}

/** A reply into a chain's device-writable guest buffers; once the ring was reset they are not ours. */
class ChainReply extends ReplyWriter {
  constructor(private readonly chain: DescriptorChain) {
    super(chain.writable);
  }

  protected override live(): boolean {
    return this.chain.queue.isCurrent(this.chain);
  }
}

export class VirtioFsDevice<W extends ConnectionWindow = ConnectionWindow> implements VhostUserDevice {
  readonly features = 0n;
  readonly protocolFeatures: bigint;
  /** GET_SHMEM_CONFIG: region 0 is the DAX window (SHMEM_MAP dialect only). */
  readonly shmemRegions: readonly bigint[] | undefined;
  readonly numQueues: number;
  private readonly config: Buffer;
  stats = { requests: 0, replies: 0, noReply: 0, tooLarge: 0, failed: 0, stale: 0 };
  inflight = 0;
  private channel: BackendChannel | null = null;
  private ackedProtocolFeatures = 0n;
  /** This connection's DAX window, while the front-end provides one, and the channel it maps through. */
  private window: W | undefined;
  private mapChannel: BackendMapChannel | undefined;

  constructor(private readonly opts: VirtioFsDeviceOptions<W>) {
    checkVirtioFsConfig(opts.tag, opts.numRequestQueues);
    this.numQueues = 1 + opts.numRequestQueues;
    this.config = encodeVirtioFsConfig(opts.tag, opts.numRequestQueues);
    const dax = opts.dax;
    const shmem = dax !== undefined && dax.protocol === 'shmem' && dax.windowSize > 0;
    this.protocolFeatures = shmem ? bit(ProtoFeature.SHMEM) : 0n;
    this.shmemRegions = shmem ? [BigInt(dax.windowSize)] : undefined;
  }

  getConfig(offset: number, size: number): Buffer | null {
    if (offset > VIRTIO_FS_CONFIG_SIZE || size > VIRTIO_FS_CONFIG_SIZE - offset) return null;
    return Buffer.from(this.config.subarray(offset, offset + size));
  }

  featuresAcked(_features: bigint, protocolFeatures: bigint): void {
    this.ackedProtocolFeatures = protocolFeatures;
    this.refreshWindow();
  }

  backendChannel(ch: BackendChannel | null): void {
    this.channel = ch;
    this.refreshWindow();
  }

  /** Guest reset or disconnect: the VMM drops the window's contents; unpin what they held. */
  reset(_reason: string): void {
    this.window?.reset();
  }

  /**
   * A window exists while its dialect is usable on the current back-end channel. A replaced
   * channel or a repeated negotiation keeps the window and what it maps (the VMM holds those
   * mappings until a device reset); requests then go through the current channel.
   */
  private refreshWindow(): void {
    const dax = this.opts.dax;
    if (!dax) return;
    const channel = this.channel;
    const usable = channel !== null && dax.windowSize > 0 &&
      (dax.protocol === 'fs-map' || (this.ackedProtocolFeatures & bit(ProtoFeature.SHMEM)) !== 0n);
    if (!usable) {
      if (this.window) dax.windows.closeWindow(this.window);
      this.window = undefined;
      this.mapChannel = undefined;
      return;
    }
    if (this.mapChannel) {
      this.mapChannel.channel = channel;
      return;
    }
    this.mapChannel = new BackendMapChannel(channel, dax.protocol, dax.windowSize);
    this.window = dax.windows.openWindow(this.mapChannel);
  }

  handleChain(chain: DescriptorChain): void {
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
    const out = new ChainReply(chain);
    let served: void | Promise<void>;
    try {
      served = this.opts.server.serve(request, out, { queue: q.index, window: this.window });
    } catch (e) {
      served = Promise.reject(e);
    }
    if (!(served instanceof Promise)) {
      this.finish(chain, out);
      return;
    }
    served.then(
      () => this.finish(chain, out),
      (e: unknown) => {
        this.stats.failed++;
        this.opts.log.error({ queue: q.index, err: e instanceof Error ? e.message : String(e) }, 'virtio-fs: request failed');
        if (request.length >= 16) out.end(request.subarray(8, 16), Errno.EIO);
        this.finish(chain, out);
      },
    );
  }

  /** Returns the chain to the guest with what the reply wrote. */
  private finish(chain: DescriptorChain, out: ChainReply): void {
    this.inflight--;
    if (out.overflowed) {
      this.stats.tooLarge++;
      this.opts.log.warn({ queue: chain.queue.index, room: chain.writableLength }, 'virtio-fs: reply larger than the guest buffers');
    }
    if (out.stale) this.stats.stale++;
    else if (out.length === 0) this.stats.noReply++;
    else this.stats.replies++;
    try {
      chain.queue.complete(chain, out.length);
    } catch (e) {
      // Never let a completion error become an unhandled rejection (that would end the daemon).
      this.opts.log.error({ queue: chain.queue.index, err: e instanceof Error ? e.message : String(e) }, 'virtio-fs: completing a request failed');
    }
  }
}
