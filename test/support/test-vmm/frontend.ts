// The test VMM's vhost-user front-end: connects to a back-end socket, negotiates, hands over
// guest memory and virtqueues, serves the back-end channel (incl. DAX window map requests).
import fs from 'node:fs';
import { native, type FdWatch } from '../native.js';
import { GuestMemory, type GuestMemoryOptions } from './memory.js';
import { Virtqueue } from './virtqueue.js';
import {
  BackendReq, FLAG_NEED_REPLY, FLAG_REPLY, Feature, MessageParser, ProtoFeature, Req, bit, encode, hasBit,
  memTable, requestName, singleRegion, u64, vringAddr, vringState, type MemRegionDesc, type Message,
} from './protocol.js';

const C = native.constants;

export type DaxDialect = 'shmem' | 'fs-map';

export interface FrontendOptions {
  /** Request queues besides the high-priority queue 0. Default 1. */
  requestQueues?: number;
  /** Descriptors per queue (power of 2). Default 256. */
  queueSize?: number;
  memory?: GuestMemoryOptions;
  /** Accept VIRTIO_RING_F_EVENT_IDX when offered. Default true. */
  eventIdx?: boolean;
  /** Accept VIRTIO_RING_F_INDIRECT_DESC when offered. Default true. */
  indirect?: boolean;
  /** Protocol features we are willing to use (intersected with the back-end's). */
  protocolFeatures?: number[];
  /** 'set': SET_MEM_TABLE; 'add': ADD_MEM_REG per region (needs CONFIGURE_MEM_SLOTS). Default 'set'. */
  memTableMode?: 'set' | 'add';
  /**
   * A DAX window: reserved address space the back-end may map into. With 'shmem' its size is
   * region 0 of the back-end's GET_SHMEM_CONFIG reply (as QEMU 11.1 sizes the BAR) and
   * `windowSize` must agree; `echo` makes every mapping come back to the back-end as
   * ADD_MEM_REG (REM_MEM_REG when unmapped) at `windowGpa` + offset, as QEMU 11.1 does.
   */
  dax?: { windowSize: number; dialect: DaxDialect; echo?: boolean; windowGpa?: bigint };
  /** Control-plane reply timeout. Default 10 s. */
  replyTimeoutMs?: number;
}

export const DEFAULT_PROTOCOL_FEATURES = [
  ProtoFeature.MQ, ProtoFeature.REPLY_ACK, ProtoFeature.BACKEND_REQ, ProtoFeature.CONFIGURE_MEM_SLOTS,
  ProtoFeature.RESET_DEVICE, ProtoFeature.STATUS, ProtoFeature.CONFIG,
];

interface ReplyWaiter { request: number; resolve: (m: Message) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }

export interface BackendEvent { request: number; flags: number; payload: Buffer; fdCount: number; result: number }

export interface DaxMapping { offset: number; length: number; fdOffset: bigint; prot: number; echoed?: MemRegionDesc }

export class VhostUserError extends Error {}

/** unixConnect, retried while the socket is not there or not listening yet. */
async function connectRetry(socketPath: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return native.unixConnect(socketPath);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if ((code !== 'ECONNREFUSED' && code !== 'ENOENT') || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

export class VhostUserFrontend {
  readonly fd: number;
  features = 0n;
  ackedFeatures = 0n;
  protocolFeatures = 0n;
  backendProtocolFeatures = 0n;
  queueNum = 0;
  maxMemSlots = 0;
  /** The back-end's GET_SHMEM_CONFIG reply (sizes by shmid), with SHMEM negotiated. */
  shmemSizes: bigint[] = [];
  /** ADD_MEM_REG echoes of window mappings refused by the back-end. */
  echoRefusals = 0;
  mem: GuestMemory;
  queues: Virtqueue[] = [];
  readonly backendEvents: BackendEvent[] = [];
  readonly daxMappings = new Map<number, DaxMapping>();
  daxWindow: ArrayBuffer | null = null;
  private readonly opts: Required<Omit<FrontendOptions, 'dax' | 'memory'>> & Pick<FrontendOptions, 'dax' | 'memory'>;
  private readonly parser = new MessageParser();
  private readonly backendParser = new MessageParser();
  private watch: FdWatch | null = null;
  private backendFd = -1;
  private backendWatch: FdWatch | null = null;
  private replies: ReplyWaiter[] = [];
  private lock: Promise<unknown> = Promise.resolve();
  private closed = false;
  private disconnectedError: Error | null = null;
  private readonly closeListeners: Array<(e: Error) => void> = [];

  private constructor(fd: number, opts: FrontendOptions) {
    this.fd = fd;
    this.opts = {
      requestQueues: opts.requestQueues ?? 1,
      queueSize: opts.queueSize ?? 256,
      eventIdx: opts.eventIdx ?? true,
      indirect: opts.indirect ?? true,
      protocolFeatures: opts.protocolFeatures ?? DEFAULT_PROTOCOL_FEATURES,
      memTableMode: opts.memTableMode ?? 'set',
      replyTimeoutMs: opts.replyTimeoutMs ?? 10_000,
      dax: opts.dax,
      memory: opts.memory,
    };
    this.mem = new GuestMemory(opts.memory);
  }

  /** Connects to `socketPath`, negotiates and starts every queue. */
  static async connect(socketPath: string, opts: FrontendOptions = {}): Promise<VhostUserFrontend> {
    const fd = await connectRetry(socketPath, opts.replyTimeoutMs ?? 10_000);
    let fe: VhostUserFrontend;
    try {
      native.setNonblocking(fd, true);
      fe = new VhostUserFrontend(fd, opts);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    try {
      fe.watch = native.watch(fd, C.READABLE | C.DISCONNECT, () => fe.onReadable());
      await fe.negotiate();
      if (opts.dax) fe.daxWindow = native.reserve(fe.windowSize(opts.dax));
      await fe.startDevice();
    } catch (e) {
      fe.close();
      throw e;
    }
    return fe;
  }

  get requestQueueCount(): number { return this.opts.requestQueues; }
  get alive(): boolean { return !this.closed && this.disconnectedError === null; }
  onClose(cb: (e: Error) => void): void { this.closeListeners.push(cb); }
  has(pf: number): boolean { return hasBit(this.protocolFeatures, pf); }

  // ---- socket I/O -----------------------------------------------------------------------
  private onReadable(): void {
    const buf = Buffer.alloc(65536);
    for (;;) {
      if (this.closed) return;
      let r: { bytes: number; fds: number[] };
      try {
        r = native.recvmsg(this.fd, buf);
      } catch (e) {
        this.lost(new VhostUserError(`vhost-user socket error: ${String(e)}`));
        return;
      }
      if (r.bytes === -1) return;
      if (r.bytes === 0) {
        for (const f of r.fds) fs.closeSync(f);
        this.lost(new VhostUserError('back-end closed the vhost-user connection'));
        return;
      }
      let msgs: Message[];
      try {
        msgs = this.parser.push(buf.subarray(0, r.bytes), r.fds);
      } catch (e) {
        this.lost(e as Error);
        return;
      }
      for (const m of msgs) this.onMessage(m);
    }
  }

  private onMessage(m: Message): void {
    for (const f of m.fds) fs.closeSync(f); // no reply on the main socket carries an fd we keep
    const w = this.replies.shift();
    if (!w) return; // unsolicited message: ignore
    clearTimeout(w.timer);
    if ((m.flags & FLAG_REPLY) === 0 || m.request !== w.request) {
      w.reject(new VhostUserError(`expected reply to ${requestName(w.request)}, got request ${m.request} flags 0x${m.flags.toString(16)}`));
      return;
    }
    w.resolve(m);
  }

  private lost(err: Error): void {
    if (this.disconnectedError) return;
    this.disconnectedError = err;
    this.watch?.stop();
    for (const w of this.replies.splice(0)) { clearTimeout(w.timer); w.reject(err); }
    for (const q of this.queues) q.failAll(err);
    for (const cb of this.closeListeners) cb(err);
  }

  private send(request: number, flags: number, payload?: Buffer, fds: number[] = []): void {
    if (this.disconnectedError) throw this.disconnectedError;
    if (this.closed) throw new VhostUserError('front-end closed');
    const msg = encode(request, flags, payload);
    const n = native.sendmsg(this.fd, msg, fds);
    if (n !== msg.length) throw new VhostUserError(`short vhost-user send (${n}/${msg.length})`);
  }

  private expectReply(request: number): Promise<Message> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.replies.findIndex((w) => w.timer === timer);
        if (i >= 0) this.replies.splice(i, 1);
        reject(new VhostUserError(`no reply to ${requestName(request)} within ${this.opts.replyTimeoutMs} ms`));
      }, this.opts.replyTimeoutMs);
      this.replies.push({ request, resolve, reject, timer });
    });
  }

  /** Sends a request that has a reply of its own (GET_*): returns the reply payload. */
  async get(request: number, payload?: Buffer): Promise<Buffer> {
    const p = this.expectReply(request);
    this.send(request, 0, payload);
    return (await p).payload;
  }

  /**
   * Sends a request without a reply of its own; with REPLY_ACK it asks for an ack and throws
   * when the back-end reports failure.
   */
  async set(request: number, payload?: Buffer, fds: number[] = []): Promise<void> {
    if (!this.has(ProtoFeature.REPLY_ACK)) { this.send(request, 0, payload, fds); return; }
    const p = this.expectReply(request);
    this.send(request, FLAG_NEED_REPLY, payload, fds);
    const m = await p;
    const status = m.payload.length >= 8 ? m.payload.readBigUInt64LE(0) : -1n;
    if (status !== 0n) throw new VhostUserError(`back-end refused ${requestName(request)} (status ${status})`);
  }

  /** Raw access for protocol tests: send anything, optionally wait for one reply. */
  async raw(request: number, flags: number, payload?: Buffer, fds: number[] = [], reply = false): Promise<Message | null> {
    const p = reply ? this.expectReply(request) : null;
    this.send(request, flags, payload, fds);
    return p ? await p : null;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const r = this.lock.then(fn, fn);
    this.lock = r.catch(() => undefined);
    return r;
  }

  // ---- negotiation and device start -----------------------------------------------------
  private wantedFeatures(): bigint {
    let f = bit(Feature.VERSION_1) | bit(Feature.PROTOCOL_FEATURES);
    if (this.opts.eventIdx) f |= bit(Feature.EVENT_IDX);
    if (this.opts.indirect) f |= bit(Feature.INDIRECT_DESC);
    return f;
  }

  private async negotiate(): Promise<void> {
    this.features = (await this.get(Req.GET_FEATURES)).readBigUInt64LE(0);
    if (hasBit(this.features, Feature.PROTOCOL_FEATURES)) {
      this.backendProtocolFeatures = (await this.get(Req.GET_PROTOCOL_FEATURES)).readBigUInt64LE(0);
      let want = 0n;
      for (const b of this.opts.protocolFeatures) want |= bit(b);
      if (this.opts.dax?.dialect === 'shmem') want |= bit(ProtoFeature.SHMEM);
      this.protocolFeatures = this.backendProtocolFeatures & want;
      // SET_PROTOCOL_FEATURES is acked only once REPLY_ACK is known to both sides: send plain.
      this.send(Req.SET_PROTOCOL_FEATURES, 0, u64(this.protocolFeatures));
    }
    const totalQueues = 1 + this.opts.requestQueues;
    if (this.has(ProtoFeature.MQ)) {
      this.queueNum = Number((await this.get(Req.GET_QUEUE_NUM)).readBigUInt64LE(0));
      if (this.queueNum < totalQueues) throw new VhostUserError(`back-end supports ${this.queueNum} queues, ${totalQueues} wanted`);
    } else if (totalQueues > 2) {
      throw new VhostUserError('back-end lacks MQ; only one request queue possible');
    }
    await this.set(Req.SET_OWNER);
    if (this.has(ProtoFeature.BACKEND_REQ)) {
      const [mine, theirs] = native.socketpair();
      this.backendFd = mine;
      try {
        await this.set(Req.SET_BACKEND_REQ_FD, undefined, [theirs]);
      } finally {
        fs.closeSync(theirs);
      }
      this.backendWatch = native.watch(mine, C.READABLE | C.DISCONNECT, () => this.onBackendReadable());
    }
    if (this.has(ProtoFeature.CONFIGURE_MEM_SLOTS)) {
      this.maxMemSlots = Number((await this.get(Req.GET_MAX_MEM_SLOTS)).readBigUInt64LE(0));
    }
    if (this.has(ProtoFeature.SHMEM)) {
      const r = await this.get(Req.GET_SHMEM_CONFIG);
      if (r.length !== 8 + 8 * 256) throw new VhostUserError(`GET_SHMEM_CONFIG reply of ${r.length} bytes`);
      const n = r.readUInt32LE(0);
      for (let i = 0, seen = 0; i < 256 && seen < n; i++) {
        const size = r.readBigUInt64LE(8 + 8 * i);
        this.shmemSizes[i] = size;
        if (size) seen++;
      }
    }
  }

  /** The DAX window's size: the back-end's region 0 with SHMEM (QEMU 11.1), else ours. */
  private windowSize(dax: NonNullable<FrontendOptions['dax']>): number {
    if (dax.dialect !== 'shmem') return dax.windowSize;
    const size = Number(this.shmemSizes[0] ?? 0n);
    if (size === 0) throw new VhostUserError('the back-end reports no shared memory region 0 (GET_SHMEM_CONFIG)');
    if (size !== dax.windowSize) throw new VhostUserError(`the back-end's window is ${size} bytes, the test expects ${dax.windowSize}`);
    return size;
  }

  /** SET_FEATURES, memory table, every vring, DRIVER_OK. */
  private async startDevice(): Promise<void> {
    this.ackedFeatures = this.features & this.wantedFeatures();
    await this.set(Req.SET_FEATURES, u64(this.ackedFeatures));
    await this.sendMemTable();
    const opts = {
      eventIdx: hasBit(this.ackedFeatures, Feature.EVENT_IDX),
      indirect: hasBit(this.ackedFeatures, Feature.INDIRECT_DESC),
    };
    for (let i = 0; i <= this.opts.requestQueues; i++) {
      const q = new Virtqueue(this.mem, i, this.opts.queueSize, opts);
      this.queues.push(q);
      q.start();
      await this.set(Req.SET_VRING_NUM, vringState(i, q.size));
      await this.set(Req.SET_VRING_BASE, vringState(i, 0));
      await this.set(Req.SET_VRING_ADDR, vringAddr(i, 0,
        this.mem.toUserAddr(q.descGpa), this.mem.toUserAddr(q.usedGpa), this.mem.toUserAddr(q.availGpa)));
      await this.set(Req.SET_VRING_CALL, u64(i), [q.callFd]);
      await this.set(Req.SET_VRING_KICK, u64(i), [q.kickFd]);
      if (hasBit(this.ackedFeatures, Feature.PROTOCOL_FEATURES)) await this.set(Req.SET_VRING_ENABLE, vringState(i, 1));
    }
    if (this.has(ProtoFeature.STATUS)) await this.set(Req.SET_STATUS, u64(1 | 2 | 8 | 4));
  }

  private async sendMemTable(): Promise<void> {
    if (this.opts.memTableMode === 'add' && this.has(ProtoFeature.CONFIGURE_MEM_SLOTS)) {
      for (const r of this.mem.regions) await this.set(Req.ADD_MEM_REG, singleRegion(r), [this.mem.fd]);
    } else {
      await this.set(Req.SET_MEM_TABLE, memTable(this.mem.regions), this.mem.regions.map(() => this.mem.fd));
    }
  }

  /**
   * What a guest reboot looks like from the back-end: rings disabled and stopped
   * (GET_VRING_BASE), RESET_DEVICE when negotiated, optionally fresh guest memory (a new memfd:
   * the back-end must drop the old mappings; not what QEMU does), device started again with
   * fresh rings at base 0.
   */
  reset(opts: { resetDevice?: boolean; newMemory?: boolean } = {}): Promise<number[]> {
    return this.serial(async () => {
      const bases: number[] = [];
      for (const q of this.queues) {
        if (hasBit(this.ackedFeatures, Feature.PROTOCOL_FEATURES)) await this.set(Req.SET_VRING_ENABLE, vringState(q.index, 0));
        const st = await this.get(Req.GET_VRING_BASE, vringState(q.index, 0));
        bases.push(st.readUInt32LE(4));
      }
      for (const q of this.queues) q.close();
      this.queues = [];
      if (opts.resetDevice !== false && this.has(ProtoFeature.RESET_DEVICE)) await this.set(Req.RESET_DEVICE);
      if (opts.newMemory === true) {
        const old = this.mem;
        if (this.opts.memTableMode === 'add' && this.has(ProtoFeature.CONFIGURE_MEM_SLOTS)) {
          for (const r of old.regions) await this.set(Req.REM_MEM_REG, singleRegion(r), [old.fd]);
        }
        this.mem = new GuestMemory(this.opts.memory);
        old.close();
      }
      await this.startDevice();
      return bases;
    });
  }

  /**
   * GET_CONFIG (needs the CONFIG protocol feature): `size` bytes of device config space at
   * `offset`. For virtio-fs: tag[36] then le32 num_request_queues.
   */
  async getConfig(offset = 0, size = 40): Promise<Buffer> {
    if (!this.has(ProtoFeature.CONFIG)) throw new VhostUserError('CONFIG protocol feature not negotiated');
    const p = Buffer.alloc(12 + size);
    p.writeUInt32LE(offset, 0);
    p.writeUInt32LE(size, 4);
    const r = await this.get(Req.GET_CONFIG, p);
    if (r.length < 12 + size) throw new VhostUserError(`short GET_CONFIG reply (${r.length} bytes)`);
    return r.subarray(12, 12 + size);
  }

  /** The virtio-fs config: mount tag and number of request queues. */
  async virtioFsConfig(): Promise<{ tag: string; numRequestQueues: number }> {
    const c = await this.getConfig(0, 40);
    const end = c.indexOf(0);
    return { tag: c.subarray(0, end < 0 || end > 36 ? 36 : end).toString('utf8'), numRequestQueues: c.readUInt32LE(36) };
  }

  // ---- back-end channel ------------------------------------------------------------------
  private onBackendReadable(): void {
    const buf = Buffer.alloc(4096);
    for (;;) {
      if (this.backendFd < 0) return;
      const r = native.recvmsg(this.backendFd, buf);
      if (r.bytes === -1) return;
      if (r.bytes === 0) {
        for (const f of r.fds) fs.closeSync(f);
        this.backendWatch?.stop();
        return;
      }
      let msgs: Message[];
      try { msgs = this.backendParser.push(buf.subarray(0, r.bytes), r.fds); } catch { this.backendWatch?.stop(); return; }
      for (const m of msgs) this.onBackendMessage(m);
    }
  }

  private backendLock: Promise<unknown> = Promise.resolve();

  /** One back-end request at a time, answered in order (as QEMU's handler does). */
  private onBackendMessage(m: Message): void {
    this.backendLock = this.backendLock.then(async () => {
      let result = 0n;
      try {
        result = this.handleBackendRequest(m);
        if (result === 0n) await this.echoWindowChange(m);
      } catch {
        result = 1n;
      } finally {
        for (const f of m.fds) fs.closeSync(f);
      }
      this.backendEvents.push({ request: m.request, flags: m.flags, payload: m.payload, fdCount: m.fds.length, result: Number(result) });
      if (m.flags & FLAG_NEED_REPLY && this.backendFd >= 0) {
        native.sendmsg(this.backendFd, encode(m.request, FLAG_REPLY, u64(result)));
      }
    });
  }

  /**
   * QEMU 11.1: a window mapping is guest RAM too, so it goes to the back-end as a memory region
   * (ADD_MEM_REG with the mapped fd; REM_MEM_REG when unmapped), acked before the map request is
   * answered. A refused echo is counted (QEMU prints "vhost_set_mem_table failed").
   */
  private async echoWindowChange(m: Message): Promise<void> {
    const dax = this.opts.dax;
    if (!dax?.echo || dax.dialect !== 'shmem' || !this.daxWindow) return;
    const base = dax.windowGpa ?? 0x100_0000_0000n;
    const va = native.addressOf(this.daxWindow);
    for (const r of this.unechoed.splice(0)) {
      try {
        await this.set(Req.REM_MEM_REG, singleRegion({ ...r, mmapOffset: 0n }));
      } catch {
        this.echoRefusals++;
      }
    }
    if (m.request === BackendReq.SHMEM_MAP) {
      const off = Number(m.payload.readBigUInt64LE(16));
      const map = this.daxMappings.get(off);
      if (!map) return;
      map.echoed = { guestPhys: base + BigInt(off), size: BigInt(map.length), userAddr: va + BigInt(off), mmapOffset: map.fdOffset };
      try {
        await this.set(Req.ADD_MEM_REG, singleRegion(map.echoed), [m.fds[0]!]);
      } catch {
        this.echoRefusals++;
        map.echoed = undefined;
      }
    }
  }

  /** Echoed regions whose window mappings went away, not yet removed from the back-end. */
  private unechoed: MemRegionDesc[] = [];

  private handleBackendRequest(m: Message): bigint {
    const dax = this.opts.dax;
    if (dax?.dialect === 'shmem' && (m.request === BackendReq.SHMEM_MAP || m.request === BackendReq.SHMEM_UNMAP)) {
      if (m.payload.length < 40) return 1n;
      const shmid = m.payload.readUInt8(0);
      const fdOffset = m.payload.readBigUInt64LE(8);
      const shmOffset = m.payload.readBigUInt64LE(16);
      const len = m.payload.readBigUInt64LE(24);
      const flags = m.payload.readBigUInt64LE(32);
      if (shmid !== 0) return 1n;
      if (m.request === BackendReq.SHMEM_MAP) return this.daxMap(m.fds[0], fdOffset, shmOffset, len, flags);
      return this.daxUnmap(shmOffset, len);
    }
    if (dax?.dialect === 'fs-map' && (m.request === BackendReq.SHARED_OBJECT_ADD_OR_FS_MAP || m.request === BackendReq.SHARED_OBJECT_REMOVE_OR_FS_UNMAP)) {
      if (m.payload.length < 256) return 1n;
      for (let i = 0; i < 8; i++) {
        const fdOffset = m.payload.readBigUInt64LE(8 * i);
        const cacheOffset = m.payload.readBigUInt64LE(64 + 8 * i);
        const len = m.payload.readBigUInt64LE(128 + 8 * i);
        const flags = m.payload.readBigUInt64LE(192 + 8 * i);
        if (len === 0n) continue;
        const r = m.request === BackendReq.SHARED_OBJECT_ADD_OR_FS_MAP
          ? this.daxMap(m.fds[0], fdOffset, cacheOffset, len, flags)
          : this.daxUnmap(cacheOffset, len);
        if (r !== 0n) return r;
      }
      return 0n;
    }
    return 1n; // not supported by this front-end
  }

  private daxMap(fd: number | undefined, fdOffset: bigint, off: bigint, len: bigint, flags: bigint): bigint {
    const win = this.daxWindow;
    if (!win || fd === undefined) return 1n;
    const page = BigInt(native.pageSize);
    if (off % page || len % page || fdOffset % page || len === 0n || off + len > BigInt(win.byteLength)) return 1n;
    // SHMEM_MAP: flags bit 0 = read-write (0 = read-only); FS_MAP: bit 0 read, bit 1 write.
    const prot = this.opts.dax?.dialect === 'shmem'
      ? C.PROT_READ | ((flags & 1n) ? C.PROT_WRITE : 0)
      : ((flags & 1n) ? C.PROT_READ : 0) | ((flags & 2n) ? C.PROT_WRITE : 0);
    native.mapFixed(win, Number(off), fd, Number(fdOffset), Number(len), prot || C.PROT_READ);
    this.forgetDaxRange(Number(off), Number(len));
    this.daxMappings.set(Number(off), { offset: Number(off), length: Number(len), fdOffset, prot });
    return 0n;
  }

  private daxUnmap(off: bigint, len: bigint): bigint {
    const win = this.daxWindow;
    if (!win) return 1n;
    // Linux sends len = ~0 to mean "the whole window" in FS_UNMAP of the legacy dialect.
    if (len === 0xffffffffffffffffn) { off = 0n; len = BigInt(win.byteLength); }
    const page = BigInt(native.pageSize);
    if (off % page || len % page || off + len > BigInt(win.byteLength)) return 1n;
    native.unmapFixed(win, Number(off), Number(len));
    this.forgetDaxRange(Number(off), Number(len));
    return 0n;
  }

  private forgetDaxRange(off: number, len: number): void {
    for (const [k, m] of this.daxMappings) {
      if (m.offset < off + len && off < m.offset + m.length) {
        if (m.echoed) this.unechoed.push(m.echoed);
        this.daxMappings.delete(k);
      }
    }
  }

  /** Window mappings currently echoed to the back-end as memory regions. */
  get echoedRegions(): number {
    let n = 0;
    for (const m of this.daxMappings.values()) if (m.echoed) n++;
    return n;
  }

  /**
   * SET_BACKEND_REQ_FD again with a new socketpair (what a front-end re-initialising its side
   * does); the old channel is closed. Window mappings stay.
   */
  async replaceBackendChannel(): Promise<void> {
    const [mine, theirs] = native.socketpair();
    try {
      await this.set(Req.SET_BACKEND_REQ_FD, undefined, [theirs]);
    } catch (e) {
      fs.closeSync(mine);
      throw e;
    } finally {
      fs.closeSync(theirs);
    }
    this.backendWatch?.close();
    if (this.backendFd >= 0) fs.closeSync(this.backendFd);
    this.backendFd = mine;
    this.backendWatch = native.watch(mine, C.READABLE | C.DISCONNECT, () => this.onBackendReadable());
  }

  /** A view of the DAX window (throws when there is none). */
  daxView(offset: number, length: number): Buffer {
    if (!this.daxWindow) throw new Error('no DAX window');
    return Buffer.from(this.daxWindow, offset, length);
  }

  /**
   * Physical frame numbers behind window pages [offset, offset+length) (root only: otherwise
   * the kernel reports 0). Pages are touched first so they are present. Two VMMs mapping the
   * same shared backing see the same frames; 0n = not present.
   */
  daxPageFrames(offset: number, length: number): bigint[] {
    const page = native.pageSize;
    const view = this.daxView(offset, length);
    let sink = 0;
    for (let o = 0; o < length; o += page) sink ^= view[o]!;
    void sink;
    const base = native.addressOf(this.daxWindow!) + BigInt(offset);
    const n = Math.ceil(length / page);
    const buf = Buffer.alloc(8 * n);
    const fd = fs.openSync('/proc/self/pagemap', 'r');
    try {
      fs.readSync(fd, buf, 0, buf.length, Number((base / BigInt(page)) * 8n));
    } finally {
      fs.closeSync(fd);
    }
    const out: bigint[] = [];
    for (let i = 0; i < n; i++) {
      const e = buf.readBigUInt64LE(8 * i);
      out.push(e & (1n << 63n) ? e & ((1n << 55n) - 1n) : 0n);
    }
    return out;
  }

  // ---- teardown --------------------------------------------------------------------------
  /** Disconnects (closing the socket is what a VMM exit looks like) and frees everything. */
  close(): void {
    if (this.closed) return;
    const err = this.disconnectedError ?? new VhostUserError('front-end closed');
    this.closed = true;
    for (const w of this.replies.splice(0)) { clearTimeout(w.timer); w.reject(err); }
    for (const q of this.queues) q.close();
    this.queues = [];
    this.watch?.close();
    this.backendWatch?.close();
    for (const f of this.parser.takeStrayFds()) fs.closeSync(f);
    for (const f of this.backendParser.takeStrayFds()) fs.closeSync(f);
    if (this.backendFd >= 0) fs.closeSync(this.backendFd);
    this.backendFd = -1;
    fs.closeSync(this.fd);
    this.mem.close();
    if (this.daxWindow) native.munmap(this.daxWindow);
    this.daxWindow = null;
    if (!this.disconnectedError) for (const cb of this.closeListeners) cb(err);
  }
}
