// The vhost-user back-end state machine for one front-end connection: features, memory table,
// vrings, back-end channel, status. The device (what the queues carry) plugs in through
// VhostUserDevice; this file knows nothing of FUSE or of any particular device type.
import { sys, type FdWatch } from './sys.js';
import { BackendChannel } from './backend-channel.js';
import { DEFAULT_MEMORY_LIMITS, GuestMemory, MemoryRegion, closeQuietly, type MemoryLimits } from './memory.js';
import type { Logger } from './logger.js';
import {
  FLAG_NEED_REPLY,
  MessageFramer,
  ProtoFeature,
  ProtocolError,
  Req,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  VirtioFeature,
  bit,
  decodeConfig,
  decodeMemTable,
  decodeSingleRegion,
  decodeU64,
  decodeVringAddr,
  decodeVringState,
  encodeConfig,
  encodeReply,
  encodeShmemConfig,
  encodeVringState,
  SHMEM_CONFIG_SIZE,
  SHMEM_MAX_REGIONS,
  hasBit,
  requestName,
  u64,
  type Message,
} from './protocol.js';
import { VirtQueue, type DescriptorChain } from './virtqueue.js';

export interface VhostUserDevice {
  /** Device feature bits offered (the transport adds VERSION_1, INDIRECT_DESC, EVENT_IDX, PROTOCOL_FEATURES). */
  readonly features: bigint;
  /** Extra protocol feature bits the device wants offered (e.g. SHMEM, BACKEND_SEND_FD). */
  readonly protocolFeatures?: bigint;
  /** Number of virtqueues (GET_QUEUE_NUM). */
  readonly numQueues: number;
  /**
   * VIRTIO shared memory regions (GET_SHMEM_CONFIG, with ProtoFeature.SHMEM): `[shmid]` = size
   * in bytes, a page multiple; 0 = unused. Fixed for the connection. Virtio-fs: region 0 is the
   * DAX cache window.
   */
  readonly shmemRegions?: readonly bigint[];
  /** Device config space bytes [offset, offset+size), or null if unsupported. */
  getConfig?(offset: number, size: number): Buffer | null;
  /** A descriptor chain to serve; the device must eventually call chain.queue.complete(chain, written). */
  handleChain(chain: DescriptorChain): void;
  /**
   * The negotiated features changed (SET_FEATURES / SET_PROTOCOL_FEATURES with new values; a
   * repeat of the same values is no event).
   */
  featuresAcked?(features: bigint, protocolFeatures: bigint): void;
  /**
   * The back-end channel appeared, was replaced (SET_BACKEND_REQ_FD again: requests go to the new
   * one; what the front-end mapped through the old one stays mapped, only a device reset drops
   * shared-memory mappings), or went away at disconnect (null).
   */
  backendChannel?(ch: BackendChannel | null, replaced?: BackendChannel): void;
  /** All queues stopped/reset (guest reset, RESET_DEVICE, disconnect). */
  reset?(reason: string): void;
}

/** Memory slots of a connection: what GET_MAX_MEM_SLOTS announced and how many regions are live. */
export interface MemorySlots {
  limit: number;
  used: number;
}

export interface VhostUserBackendOptions {
  /** Bounds on the guest memory one front-end may make us map (DEFAULT_MEMORY_LIMITS). */
  memoryLimits?: Partial<MemoryLimits>;
  /** How long a back-end channel request waits for its reply (default 5 s). */
  backendReplyTimeoutMs?: number;
}

const TRANSPORT_FEATURES =
  bit(VirtioFeature.VERSION_1) | bit(VirtioFeature.RING_INDIRECT_DESC) | bit(VirtioFeature.RING_EVENT_IDX) | bit(VirtioFeature.PROTOCOL_FEATURES);

const BASE_PROTOCOL_FEATURES =
  bit(ProtoFeature.MQ) |
  bit(ProtoFeature.REPLY_ACK) |
  bit(ProtoFeature.BACKEND_REQ) |
  bit(ProtoFeature.CONFIG) |
  bit(ProtoFeature.RESET_DEVICE) |
  bit(ProtoFeature.CONFIGURE_MEM_SLOTS) |
  bit(ProtoFeature.STATUS);

/** How long GET_VRING_BASE waits for in-flight requests before stopping a ring anyway. */
const DRAIN_TIMEOUT_MS = 2000;

export class VhostUserBackend {
  readonly queues: VirtQueue[];
  memory: GuestMemory = GuestMemory.empty();
  ackedFeatures = 0n;
  ackedProtocolFeatures = 0n;
  owner = false;
  status = 0;
  channel: BackendChannel | null = null;
  readonly offeredFeatures: bigint;
  readonly offeredProtocolFeatures: bigint;
  stats = { messages: 0, refused: 0 };
  readonly memoryLimits: Readonly<MemoryLimits>;
  private readonly shmemConfig: Buffer;
  private featuresSet = false;
  private protocolFeaturesSet = false;

  constructor(readonly device: VhostUserDevice, private readonly log: Logger, private readonly opts: VhostUserBackendOptions = {}) {
    if (device.numQueues < 1 || device.numQueues > 256) throw new Error('device must have 1..256 queues');
    this.memoryLimits = { ...DEFAULT_MEMORY_LIMITS, ...opts.memoryLimits };
    this.memory = GuestMemory.empty(this.memoryLimits);
    const shmem = device.shmemRegions ?? [];
    if (shmem.length > SHMEM_MAX_REGIONS) throw new Error(`at most ${SHMEM_MAX_REGIONS} shared memory regions`);
    shmem.forEach((size, shmid) => {
      if (size < 0n || size % BigInt(sys.pageSize) !== 0n) throw new Error(`shared memory region ${shmid}: ${size} bytes is not a multiple of the page size`);
    });
    this.shmemConfig = encodeShmemConfig(shmem);
    this.queues = Array.from({ length: device.numQueues }, (_, i) => new VirtQueue(i, log, (c) => this.device.handleChain(c)));
    this.offeredFeatures = device.features | TRANSPORT_FEATURES;
    this.offeredProtocolFeatures = BASE_PROTOCOL_FEATURES | (device.protocolFeatures ?? 0n);
  }

  /** Slots announced and in use: each region (guest RAM, and each shared-memory mapping QEMU echoes back) takes one. */
  get memorySlots(): MemorySlots {
    return { limit: this.memoryLimits.maxRegions, used: this.memory.regions.length };
  }

  private get protocolNegotiated(): boolean {
    return hasBit(this.ackedFeatures, VirtioFeature.PROTOCOL_FEATURES);
  }

  private queue(index: number): VirtQueue {
    const q = this.queues[index];
    if (!q) throw new ProtocolError(`queue index ${index} out of range (${this.queues.length} queues)`);
    return q;
  }

  private static takeFd(msg: Message): number {
    const fd = msg.fds.shift();
    if (fd === undefined) throw new ProtocolError(`${requestName(msg.request)} without a file descriptor`);
    return fd;
  }

  /**
   * Handles one message. Returns the complete reply to send (or null). Fds in the message are
   * either taken over or closed.
   */
  async handle(msg: Message): Promise<Buffer | null> {
    this.stats.messages++;
    let payload: Buffer | null = null;
    let ok = true;
    let natural = false;
    try {
      const r = await this.dispatch(msg);
      natural = r.natural;
      payload = r.payload;
    } catch (e) {
      ok = false;
      this.stats.refused++;
      // A hostile front-end can send refusable requests forever: the first few, then one in 1000.
      if (this.stats.refused <= 10 || this.stats.refused % 1000 === 0) {
        this.log.warn({ request: requestName(msg.request), refused: this.stats.refused, err: e instanceof Error ? e.message : String(e) }, 'vhost-user request refused');
      }
      natural = NATURAL_REPLY.has(msg.request);
    } finally {
      for (const fd of msg.fds) closeQuietly(fd);
      msg.fds.length = 0;
    }
    if (natural) {
      // A request with a reply of its own answers even on failure (zero payload of its shape).
      return encodeReply(msg.request, payload ?? failurePayload(msg));
    }
    if (msg.flags & FLAG_NEED_REPLY) return encodeReply(msg.request, u64(ok ? 0 : 1));
    return null;
  }

  private async dispatch(msg: Message): Promise<{ natural: boolean; payload: Buffer | null }> {
    const p = msg.payload;
    const none = { natural: false, payload: null };
    const reply = (b: Buffer): { natural: boolean; payload: Buffer } => ({ natural: true, payload: b });
    this.log.debug({ request: requestName(msg.request), size: msg.size, fds: msg.fds.length }, 'vhost-user request');
    switch (msg.request) {
      case Req.GET_FEATURES:
        return reply(u64(this.offeredFeatures));
      case Req.SET_FEATURES: {
        const f = decodeU64(p);
        const extra = f & ~this.offeredFeatures;
        if (extra) this.log.warn({ extra: '0x' + extra.toString(16) }, 'front-end acked features we did not offer; ignoring them');
        const acked = f & this.offeredFeatures;
        // QEMU sends SET_FEATURES at every device start: the same values again change nothing.
        if (this.featuresSet && acked === this.ackedFeatures) return none;
        this.featuresSet = true;
        this.ackedFeatures = acked;
        for (const q of this.queues) {
          q.eventIdx = hasBit(this.ackedFeatures, VirtioFeature.RING_EVENT_IDX);
          q.indirect = hasBit(this.ackedFeatures, VirtioFeature.RING_INDIRECT_DESC);
        }
        this.device.featuresAcked?.(this.ackedFeatures, this.ackedProtocolFeatures);
        return none;
      }
      case Req.GET_PROTOCOL_FEATURES:
        return reply(u64(this.offeredProtocolFeatures));
      case Req.SET_PROTOCOL_FEATURES: {
        const acked = decodeU64(p) & this.offeredProtocolFeatures;
        if (this.protocolFeaturesSet && acked === this.ackedProtocolFeatures) return none;
        if (this.protocolFeaturesSet) {
          this.log.warn({ was: '0x' + this.ackedProtocolFeatures.toString(16), now: '0x' + acked.toString(16) }, 'front-end changed the protocol features of a live connection');
        }
        this.protocolFeaturesSet = true;
        this.ackedProtocolFeatures = acked;
        this.device.featuresAcked?.(this.ackedFeatures, this.ackedProtocolFeatures);
        return none;
      }
      case Req.SET_OWNER:
        this.owner = true;
        return none;
      case Req.RESET_OWNER:
      case Req.RESET_DEVICE:
        this.resetDevice(requestName(msg.request));
        return none;
      case Req.GET_QUEUE_NUM:
        return reply(u64(this.queues.length));
      case Req.GET_MAX_MEM_SLOTS:
        return reply(u64(this.memoryLimits.maxRegions));
      case Req.SET_MEM_TABLE: {
        const descs = decodeMemTable(p);
        const fds = msg.fds.splice(0);
        const mem = GuestMemory.fromTable(descs, fds, this.memoryLimits);
        this.replaceMemory(mem);
        this.log.info({ regions: mem.regions.length, bytes: mem.size }, 'memory table set');
        return none;
      }
      case Req.ADD_MEM_REG: {
        if (!hasBit(this.ackedProtocolFeatures, ProtoFeature.CONFIGURE_MEM_SLOTS)) throw new ProtocolError('ADD_MEM_REG without CONFIGURE_MEM_SLOTS');
        const d = decodeSingleRegion(p);
        const fd = VhostUserBackend.takeFd(msg);
        let region: MemoryRegion;
        try {
          // Checked before mapping anything: a front-end past the slots it was told gets a refusal.
          const { limit, used } = this.memorySlots;
          if (used >= limit) throw new ProtocolError(`ADD_MEM_REG: all ${limit} memory slots announced in GET_MAX_MEM_SLOTS are in use`);
          region = MemoryRegion.map(d, fd, this.memoryLimits);
        } finally {
          closeQuietly(fd);
        }
        let next: GuestMemory;
        try {
          next = this.memory.withRegion(region);
        } catch (e) {
          region.unmap();
          throw e;
        }
        this.replaceMemory(next);
        this.log.debug(
          { guestPhys: '0x' + d.guestPhys.toString(16), size: '0x' + d.size.toString(16), writable: region.writable, regions: next.regions.length },
          'memory region added',
        );
        return none;
      }
      case Req.REM_MEM_REG: {
        if (!hasBit(this.ackedProtocolFeatures, ProtoFeature.CONFIGURE_MEM_SLOTS)) throw new ProtocolError('REM_MEM_REG without CONFIGURE_MEM_SLOTS');
        const d = decodeSingleRegion(p);
        const next = this.memory.withoutRegion(d);
        if (!next) throw new ProtocolError(`REM_MEM_REG: no region at guest 0x${d.guestPhys.toString(16)} size 0x${d.size.toString(16)}`);
        this.replaceMemory(next);
        this.log.debug({ guestPhys: '0x' + d.guestPhys.toString(16), regions: next.regions.length }, 'memory region removed');
        return none;
      }
      case Req.SET_VRING_NUM: {
        const s = decodeVringState(p);
        this.queue(s.index).setSize(s.num);
        return none;
      }
      case Req.SET_VRING_BASE: {
        const s = decodeVringState(p);
        const q = this.queue(s.index);
        if (q.started) throw new ProtocolError(`SET_VRING_BASE on running queue ${s.index}`);
        q.setBase(s.num);
        return none;
      }
      case Req.SET_VRING_ADDR: {
        const a = decodeVringAddr(p);
        const q = this.queue(a.index);
        if (!q.size) throw new ProtocolError(`SET_VRING_ADDR before SET_VRING_NUM on queue ${a.index}`);
        q.setAddr(a, this.memory);
        if (q.kickFd >= 0 && !q.started && q.ready) q.start();
        return none;
      }
      case Req.GET_VRING_BASE: {
        const s = decodeVringState(p);
        const q = this.queue(s.index);
        const base = await this.stopQueue(q);
        return reply(encodeVringState({ index: s.index, num: base }));
      }
      case Req.SET_VRING_KICK: {
        const v = decodeU64(p);
        const q = this.queue(Number(v & VRING_IDX_MASK));
        if (v & VRING_NOFD_MASK) throw new ProtocolError('polling mode (SET_VRING_KICK without fd) is not supported');
        const fd = VhostUserBackend.takeFd(msg);
        q.setKick(fd);
        if (!this.protocolNegotiated) q.enabled = true;
        // Started now, or by SET_VRING_ADDR if the addresses come later.
        if (q.ready) q.start();
        this.log.debug({ queue: q.index, size: q.size, enabled: q.enabled }, 'queue started');
        return none;
      }
      case Req.SET_VRING_CALL: {
        const v = decodeU64(p);
        const q = this.queue(Number(v & VRING_IDX_MASK));
        if (v & VRING_NOFD_MASK) {
          q.setCall(-1);
          return none;
        }
        q.setCall(VhostUserBackend.takeFd(msg));
        if (q.started) {
          // Whatever was published while no call fd was set must still reach the guest.
          try {
            sys.eventfdWrite(q.callFd, 1);
          } catch {
            /* the guest will see it on the next notification */
          }
        }
        return none;
      }
      case Req.SET_VRING_ERR: {
        const v = decodeU64(p);
        const q = this.queue(Number(v & VRING_IDX_MASK));
        q.setErr(v & VRING_NOFD_MASK ? -1 : VhostUserBackend.takeFd(msg));
        return none;
      }
      case Req.SET_VRING_ENABLE: {
        const s = decodeVringState(p);
        const q = this.queue(s.index);
        if (s.num > 1) throw new ProtocolError(`SET_VRING_ENABLE with ${s.num}`);
        q.enabled = s.num === 1;
        if (q.enabled && q.started) q.scheduleProcess();
        return none;
      }
      case Req.SET_BACKEND_REQ_FD: {
        const fd = VhostUserBackend.takeFd(msg);
        const old = this.channel;
        this.channel = new BackendChannel(fd, hasBit(this.ackedProtocolFeatures, ProtoFeature.REPLY_ACK), this.log, {
          timeoutMs: this.opts.backendReplyTimeoutMs,
          memorySlots: () => this.memorySlots,
        });
        // A replacement is one event, not "gone" then "new": the device keeps its state (what the
        // front-end mapped stays mapped) and sends from now on through the new channel.
        old?.close();
        this.log.info({ replaced: old !== null }, 'back-end request channel connected');
        this.device.backendChannel?.(this.channel, old ?? undefined);
        return none;
      }
      case Req.GET_CONFIG: {
        const c = decodeConfig(p);
        const data = this.device.getConfig?.(c.offset, c.size);
        if (!data || data.length !== c.size) throw new ProtocolError(`GET_CONFIG offset ${c.offset} size ${c.size} not available`);
        return reply(encodeConfig({ offset: c.offset, size: c.size, flags: c.flags, data }));
      }
      case Req.SET_CONFIG:
        throw new ProtocolError('the device config space is read-only');
      case Req.SET_STATUS:
        this.status = Number(decodeU64(p) & 0xffn);
        return none;
      case Req.GET_STATUS:
        return reply(u64(this.status));
      case Req.GET_SHMEM_CONFIG:
        if (!hasBit(this.ackedProtocolFeatures, ProtoFeature.SHMEM)) throw new ProtocolError('GET_SHMEM_CONFIG without the SHMEM protocol feature');
        return reply(this.shmemConfig);
      default:
        throw new ProtocolError(`unsupported request ${requestName(msg.request)}`);
    }
  }

  /** The new table takes over; the old one is unmapped region by region once no request holds it. */
  private replaceMemory(next: GuestMemory): void {
    const old = this.memory;
    this.memory = next;
    for (const q of this.queues) q.setMemory(next);
    old.retire();
  }

  /** Stops taking chains, lets in-flight ones finish (bounded), then stops the ring. */
  private async stopQueue(q: VirtQueue): Promise<number> {
    if (q.started) {
      q.enabled = false;
      if (q.inflight > 0) {
        const drained = await q.drain(DRAIN_TIMEOUT_MS);
        if (!drained) this.log.warn({ queue: q.index, inflight: q.inflight }, 'stopping ring with requests still in flight');
      }
    }
    const base = q.stop();
    this.log.debug({ queue: q.index, base }, 'queue stopped');
    if (this.queues.every((x) => !x.started)) this.device.reset?.('rings stopped');
    return base;
  }

  resetDevice(reason: string): void {
    for (const q of this.queues) q.reset();
    this.status = 0;
    this.device.reset?.(reason);
    this.log.info({ reason }, 'device reset');
  }

  private closeChannel(): void {
    if (this.channel) {
      this.channel.close();
      this.channel = null;
      this.device.backendChannel?.(null);
    }
  }

  /** The connection ended: stop everything, unmap memory, close every fd we hold. */
  teardown(): void {
    for (const q of this.queues) q.reset();
    this.closeChannel();
    const old = this.memory;
    this.memory = GuestMemory.empty(this.memoryLimits);
    old.retire();
    this.device.reset?.('disconnect');
  }
}

/** Requests that always carry a reply of their own. */
const NATURAL_REPLY = new Set<number>([
  Req.GET_FEATURES,
  Req.GET_PROTOCOL_FEATURES,
  Req.GET_VRING_BASE,
  Req.GET_QUEUE_NUM,
  Req.GET_CONFIG,
  Req.GET_MAX_MEM_SLOTS,
  Req.GET_STATUS,
  Req.GET_SHMEM_CONFIG,
]);

function failurePayload(msg: Message): Buffer {
  switch (msg.request) {
    case Req.GET_VRING_BASE:
      return Buffer.alloc(8);
    case Req.GET_CONFIG:
      // Echo the header with size 0: the front-end sees the request failed.
      return msg.payload.length >= 12 ? Buffer.concat([msg.payload.subarray(0, 4), Buffer.alloc(4), msg.payload.subarray(8, 12)]) : Buffer.alloc(12);
    case Req.GET_SHMEM_CONFIG:
      // No regions.
      return Buffer.alloc(SHMEM_CONFIG_SIZE);
    default:
      return u64(0);
  }
}

/** Messages read ahead of the one being handled, at most (then reading pauses). */
export const MAX_QUEUED_MESSAGES = 64;
/** Received fds held by queued messages, at most (then reading pauses). */
export const MAX_QUEUED_FDS = 64;

export interface VhostUserConnectionOptions extends VhostUserBackendOptions {
  /** Bound on messages read ahead (default MAX_QUEUED_MESSAGES). */
  maxQueuedMessages?: number;
  /** Bound on fds those messages carry (default MAX_QUEUED_FDS). */
  maxQueuedFds?: number;
}

/**
 * One front-end connection on a connected stream socket: reads whole messages (fds kept with
 * their message), hands them to the back-end one at a time (a handler may be async, e.g.
 * GET_VRING_BASE draining a queue) and writes replies. Emits onClose once.
 *
 * Reading stops while too many messages (or fds) wait behind a slow handler: a front-end that
 * floods us fills its own socket buffer instead of our fd table; the kernel holds fds in flight.
 */
export class VhostUserConnection {
  readonly backend: VhostUserBackend;
  private watch: FdWatch | null;
  private framer = new MessageFramer();
  private readonly buf = Buffer.alloc(4096 + 64);
  private queue: Message[] = [];
  private queuedFds = 0;
  private paused = false;
  private busy = false;
  private closed = false;
  private closeCallbacks: ((reason: string) => void)[] = [];
  private readonly maxQueuedMessages: number;
  private readonly maxQueuedFds: number;
  stats = { pauses: 0 };

  constructor(readonly fd: number, device: VhostUserDevice, private readonly log: Logger, opts: VhostUserConnectionOptions = {}) {
    this.backend = new VhostUserBackend(device, log, opts);
    this.maxQueuedMessages = opts.maxQueuedMessages ?? MAX_QUEUED_MESSAGES;
    this.maxQueuedFds = opts.maxQueuedFds ?? MAX_QUEUED_FDS;
    try {
      sys.setNonblocking(fd, true);
    } catch {
      /* accepted sockets are non-blocking already */
    }
    this.watch = sys.watch(fd, sys.constants.READABLE | sys.constants.DISCONNECT, (ev, err) => {
      try {
        this.onEvent(ev, err);
      } catch (e) {
        // An exception escaping a watch callback would abort the daemon: drop the connection.
        this.log.error({ err: e instanceof Error ? (e.stack ?? e.message) : String(e) }, 'vhost-user connection failure');
        this.close('internal error');
      }
    });
  }

  onClose(cb: (reason: string) => void): void {
    if (this.closed) queueMicrotask(() => cb('closed'));
    else this.closeCallbacks.push(cb);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private get full(): boolean {
    return this.queue.length >= this.maxQueuedMessages || this.queuedFds >= this.maxQueuedFds;
  }

  private onEvent(ev: number, err: number): void {
    if (this.closed) return;
    if (err) return this.close(`socket error ${err}`);
    while (!this.full) {
      const want = this.framer.wanted();
      if (want > 0) {
        let r: { bytes: number; fds: number[] };
        try {
          r = sys.recvmsg(this.fd, this.buf.subarray(0, want));
        } catch (e) {
          return this.close(`read failed: ${String(e)}`);
        }
        if (r.bytes === -1) break;
        if (r.bytes === 0) {
          for (const fd of r.fds) closeQuietly(fd);
          return this.close('front-end disconnected');
        }
        this.framer.push(this.buf.subarray(0, r.bytes), r.fds);
      }
      let m: Message | null;
      try {
        m = this.framer.next();
      } catch (e) {
        return this.close(`protocol error: ${e instanceof Error ? e.message : String(e)}`);
      }
      if (m) {
        this.queue.push(m);
        this.queuedFds += m.fds.length;
      }
    }
    if (this.full && !this.paused) {
      // Resumed by pump() once the queue has room again.
      this.paused = true;
      this.stats.pauses++;
      this.watch?.stop();
      if (this.stats.pauses === 1 || this.stats.pauses % 1000 === 0) {
        this.log.warn({ queued: this.queue.length, fds: this.queuedFds, pauses: this.stats.pauses }, 'front-end is sending faster than requests are handled; reading paused');
      }
    }
    if (ev & sys.constants.DISCONNECT && !(ev & sys.constants.READABLE)) return this.close('front-end disconnected');
    this.pump().catch((e: unknown) => {
      this.log.error({ err: e instanceof Error ? (e.stack ?? e.message) : String(e) }, 'vhost-user request handling failed');
      this.close('internal error');
    });
  }

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      while (!this.closed && this.queue.length) {
        const m = this.queue.shift()!;
        this.queuedFds -= m.fds.length;
        const reply = await this.backend.handle(m);
        if (this.closed) break;
        if (reply) {
          try {
            const n = sys.sendmsg(this.fd, reply);
            if (n !== reply.length) throw new Error(`short write ${n}/${reply.length}`);
          } catch (e) {
            this.close(`write failed: ${String(e)}`);
            break;
          }
        }
        if (this.paused && this.queue.length === 0) {
          this.paused = false;
          // Level-triggered: what waited in the socket is read at once.
          this.watch?.start(sys.constants.READABLE | sys.constants.DISCONNECT);
        }
      }
    } finally {
      this.busy = false;
    }
  }

  close(reason = 'closed'): void {
    if (this.closed) return;
    this.closed = true;
    const queues = this.backend.queues.filter((q) => q.stats.chains || q.stats.dropped).map((q) => ({ queue: q.index, ...q.stats }));
    this.log.info({ reason, messages: this.backend.stats.messages, refused: this.backend.stats.refused, queues }, 'vhost-user connection closed');
    if (this.watch) {
      this.watch.close();
      this.watch = null;
    }
    for (const m of this.queue) for (const fd of m.fds) closeQuietly(fd);
    this.queue = [];
    this.queuedFds = 0;
    for (const fd of this.framer.drainFds()) closeQuietly(fd);
    this.backend.teardown();
    closeQuietly(this.fd);
    const cbs = this.closeCallbacks;
    this.closeCallbacks = [];
    for (const cb of cbs) cb(reason);
  }
}
