// Split virtqueues (VIRTIO 1.x §2.7): read the avail index, then its entries; walk descriptor
// chains (with INDIRECT tables) into views of guest memory; publish used elements before the
// used index; EVENT_IDX notification suppression; kick and call eventfds.
//
// Everything in the rings is written by the guest and is hostile: every index, length and
// address is checked, a bad chain is dropped with an error log and the queue keeps serving.
import { sys, type FdWatch } from './sys.js';
import { closeQuietly, type GuestMemory } from './memory.js';
import { MAX_QUEUE_SIZE, type VringAddr } from './protocol.js';
import type { Logger } from './logger.js';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Upper bound on the bytes one chain may describe (each direction). */
export const MAX_CHAIN_BYTES = 256 * 1024 * 1024;
/** Chains handed to the device per turn of the event loop before yielding. */
const POP_BUDGET = 8;
/**
 * Chains in flight per queue before we stop taking more (they resume as chains complete): bounds
 * the memory a guest can make us commit to replies at once.
 */
export const MAX_INFLIGHT = 128;
/** High 32 bits of the largest safe-integer address (2^53 - 1). */
const MAX_SAFE_HI = 0x1f_ffff;
/** Completions carrying at least this many bytes are "big": they notify early (see complete()). */
const NOTIFY_NOW_BYTES = 64 * 1024;
/** Big completions per early notification (see complete()). */
const BIG_COMPLETIONS_PER_NOTIFY = 2;
const RESOLVED = Promise.resolve();

export class ChainError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ChainError';
  }
}

/** One request: the device-readable buffers, then the device-writable ones. */
export interface DescriptorChain {
  readonly queue: VirtQueue;
  readonly head: number;
  readonly readable: Buffer[];
  readonly writable: Buffer[];
  readonly readableLength: number;
  readonly writableLength: number;
  /** @internal queue generation the chain belongs to. */
  readonly generation: number;
  /** @internal memory table the views point into. */
  readonly memory: GuestMemory;
}

export type ChainHandler = (chain: DescriptorChain) => void;

interface RingViews {
  desc: Buffer;
  avail: Buffer;
  used: Buffer;
  availIdx: Uint16Array; // [flags, idx]
  usedEvent: Uint16Array; // [used_event] (end of avail ring)
  usedIdx: Uint16Array; // [flags, idx]
  availEvent: Uint16Array; // [avail_event] (end of used ring)
}

function u16view(b: Buffer, byteOffset: number, n: number): Uint16Array {
  return new Uint16Array(b.buffer, b.byteOffset + byteOffset, n);
}

export class VirtQueue {
  readonly index: number;
  size = 0;
  addr: VringAddr | null = null;
  lastAvailIdx = 0;
  usedIdx = 0;
  enabled = false;
  started = false;
  /** Set when the guest broke the ring itself (bad avail index): stop until reset. */
  broken = false;
  eventIdx = false;
  indirect = false;
  kickFd = -1;
  callFd = -1;
  errFd = -1;
  generation = 0;
  /** Chains handed out and not yet completed (current generation). */
  inflight = 0;
  stats = { chains: 0, dropped: 0, notifications: 0 };

  private views: RingViews | null = null;
  private memory: GuestMemory | null = null;
  private kickWatch: FdWatch | null = null;
  private signalledUsed = 0;
  private signalledValid = false;
  private notifyPending = false;
  private readonly flushIfPending = (): void => {
    if (this.notifyPending) this.flushNotify();
  };
  /** The next completion is the first since process() began a turn (see complete()). */
  private notifyFirstNow = false;
  /** Big completions published since the last notification (see complete()). */
  private bigUnsignalled = 0;
  private processScheduled = false;
  private drainWaiters: (() => void)[] = [];

  constructor(index: number, private readonly log: Logger, private handler: ChainHandler) {
    this.index = index;
  }

  setHandler(h: ChainHandler): void {
    this.handler = h;
  }

  setSize(num: number): void {
    if (this.started) throw new ChainError(`queue ${this.index}: size change while started`);
    if (num === 0 || num > MAX_QUEUE_SIZE || (num & (num - 1)) !== 0) throw new ChainError(`queue ${this.index}: invalid size ${num}`);
    this.size = num;
    this.views = null;
    if (this.addr && this.memory) this.translate();
  }

  setBase(base: number): void {
    this.lastAvailIdx = base & 0xffff;
  }

  setAddr(addr: VringAddr, memory: GuestMemory | null): void {
    this.addr = addr;
    this.memory = memory;
    this.views = null;
    if (memory && this.size) this.translate();
  }

  /** The memory table changed: re-translate the ring addresses. */
  setMemory(memory: GuestMemory): void {
    this.memory = memory;
    this.views = null;
    if (this.addr && this.size) {
      try {
        this.translate();
      } catch (e) {
        this.log.error({ queue: this.index, err: String(e) }, 'vring addresses no longer translate after memory change');
      }
    }
  }

  private translate(): void {
    const a = this.addr!;
    const n = this.size;
    const mem = this.memory!;
    if (a.desc % 16n !== 0n || a.avail % 2n !== 0n || a.used % 4n !== 0n) throw new ChainError(`queue ${this.index}: misaligned ring addresses`);
    const desc = mem.uvaView(a.desc, 16 * n);
    const avail = mem.uvaView(a.avail, 6 + 2 * n);
    const used = mem.uvaView(a.used, 6 + 8 * n);
    try {
      this.views = {
        desc,
        avail,
        used,
        availIdx: u16view(avail, 0, 2),
        usedEvent: u16view(avail, 4 + 2 * n, 1),
        usedIdx: u16view(used, 0, 2),
        availEvent: u16view(used, 4 + 8 * n, 1),
      };
    } catch (e) {
      throw new ChainError(`queue ${this.index}: ring not 2-byte aligned in our mapping (${String(e)})`);
    }
  }

  get ready(): boolean {
    return this.views !== null && this.kickFd >= 0;
  }

  /** Sets (or replaces) the kick eventfd; a running ring keeps running on the new one. */
  setKick(fd: number): void {
    this.stopKickWatch();
    if (this.kickFd >= 0 && this.kickFd !== fd) closeQuietly(this.kickFd);
    this.kickFd = fd;
    if (this.started && fd >= 0) {
      this.armKick();
      this.scheduleProcess();
    }
  }

  setCall(fd: number): void {
    if (this.callFd >= 0 && this.callFd !== fd) closeQuietly(this.callFd);
    this.callFd = fd;
    // A new call fd: the guest may have missed a notification while none was set.
    this.signalledValid = false;
  }

  setErr(fd: number): void {
    if (this.errFd >= 0 && this.errFd !== fd) closeQuietly(this.errFd);
    this.errFd = fd;
  }

  /** Starts serving: needs size, translated addresses and a kick fd. */
  start(): void {
    if (this.started) return;
    if (!this.views || this.kickFd < 0) throw new ChainError(`queue ${this.index}: not configured`);
    this.started = true;
    this.broken = false;
    this.usedIdx = Atomics.load(this.views.usedIdx, 1);
    this.signalledValid = false;
    this.armKick();
    // Requests may already be waiting (e.g. after a reconnect or a late enable).
    this.scheduleProcess();
  }

  private armKick(): void {
    const fd = this.kickFd;
    try {
      sys.setNonblocking(fd, true);
    } catch {
      /* not fatal: reads happen only when readable */
    }
    this.kickWatch = sys.watch(fd, sys.constants.READABLE, (_ev, err) => {
      if (err) {
        this.log.error({ queue: this.index, errno: err }, 'kick fd poll error');
        this.stopKickWatch();
        return;
      }
      try {
        sys.eventfdRead(fd);
      } catch (e) {
        this.log.error({ queue: this.index, err: String(e) }, 'kick fd read failed');
        this.stopKickWatch();
        return;
      }
      this.safeProcess();
    });
  }

  private stopKickWatch(): void {
    if (this.kickWatch) {
      this.kickWatch.close();
      this.kickWatch = null;
    }
  }

  /**
   * Stops the ring (GET_VRING_BASE, RESET): no more chains are taken, completions of chains
   * taken before are dropped, kick/call/err fds are closed. Returns the next avail index.
   */
  stop(): number {
    this.stopKickWatch();
    for (const fd of [this.kickFd, this.callFd, this.errFd]) if (fd >= 0) closeQuietly(fd);
    this.kickFd = this.callFd = this.errFd = -1;
    this.started = false;
    this.generation++;
    this.inflight = 0;
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const f of w) f();
    return this.lastAvailIdx;
  }

  /** Full reset to the unconfigured state (RESET_DEVICE / disconnect). */
  reset(): void {
    this.stop();
    this.size = 0;
    this.addr = null;
    this.views = null;
    this.lastAvailIdx = 0;
    this.usedIdx = 0;
    this.enabled = false;
    this.broken = false;
    this.memory = null;
  }

  /** Resolves when no chain of the current generation is in flight (or after timeoutMs). */
  drain(timeoutMs: number): Promise<boolean> {
    if (this.inflight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.drainWaiters = this.drainWaiters.filter((f) => f !== done);
        resolve(false);
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(t);
        resolve(this.inflight === 0);
      };
      this.drainWaiters.push(done);
    });
  }

  scheduleProcess(): void {
    if (this.processScheduled) return;
    this.processScheduled = true;
    setImmediate(() => {
      this.processScheduled = false;
      this.safeProcess();
    });
  }

  /** process() for event callbacks: a bug must stop this queue, not abort the daemon. */
  private safeProcess(): void {
    try {
      this.process();
    } catch (e) {
      this.broken = true;
      this.log.error({ queue: this.index, err: e instanceof Error ? (e.stack ?? e.message) : String(e) }, 'queue failure; queue stopped until reset');
    }
  }

  /** Takes available chains and hands them to the handler (bounded per turn). */
  process(): void {
    if (!this.started || !this.enabled || this.broken || !this.views || !this.memory) return;
    const v = this.views;
    const mem = this.memory;
    let budget = POP_BUDGET;
    this.notifyFirstNow = true;
    for (;;) {
      let availIdx = Atomics.load(v.availIdx, 1);
      const pending = (availIdx - this.lastAvailIdx) & 0xffff;
      if (pending > this.size) {
        this.log.error({ queue: this.index, availIdx, lastAvailIdx: this.lastAvailIdx, size: this.size }, 'guest moved the avail index too far; queue stopped until reset');
        this.broken = true;
        return;
      }
      if (pending === 0) {
        if (!this.eventIdx) return;
        // Ask for a kick at the next entry, then look again (the guest may have added one
        // before seeing avail_event: Atomics are sequentially consistent, a full fence).
        Atomics.store(v.availEvent, 0, this.lastAvailIdx);
        availIdx = Atomics.load(v.availIdx, 1);
        if (((availIdx - this.lastAvailIdx) & 0xffff) === 0) return;
        continue;
      }
      if (this.inflight >= MAX_INFLIGHT) return; // complete() resumes us
      if (budget-- <= 0) {
        this.scheduleProcess();
        return;
      }
      const slot = this.lastAvailIdx % this.size;
      const head = v.avail.readUInt16LE(4 + 2 * slot);
      this.lastAvailIdx = (this.lastAvailIdx + 1) & 0xffff;
      let chain: DescriptorChain;
      try {
        chain = this.parseChain(head, mem);
      } catch (e) {
        this.stats.dropped++;
        // A hostile guest can send these forever: log the first few, then one in 1000.
        if (this.stats.dropped <= 10 || this.stats.dropped % 1000 === 0) {
          this.log.error({ queue: this.index, head, dropped: this.stats.dropped, err: e instanceof Error ? e.message : String(e) }, 'dropping bad descriptor chain');
        }
        // Give a valid head back with nothing written so the guest's slot is not lost.
        if (head < this.size) this.publishUsed(head, 0);
        continue;
      }
      this.stats.chains++;
      this.inflight++;
      mem.acquire();
      try {
        this.handler(chain);
      } catch (e) {
        this.log.error({ queue: this.index, err: String(e) }, 'request handler threw');
        this.complete(chain, 0);
      }
    }
  }

  /** Walks the chain at `head` into memory views. Throws ChainError on anything malformed. */
  parseChain(head: number, mem: GuestMemory): DescriptorChain {
    if (head >= this.size) throw new ChainError(`head index ${head} >= queue size ${this.size}`);
    let table = this.views!.desc;
    let tableLen = this.size;
    let inIndirect = false;
    let i = head;
    let count = 0;
    const readable: Buffer[] = [];
    const writable: Buffer[] = [];
    let rlen = 0;
    let wlen = 0;
    for (;;) {
      if (++count > tableLen) throw new ChainError(`descriptor loop or chain longer than ${tableLen}`);
      const off = 16 * i;
      // The address as a Number (no BigInt per descriptor); past 2^53 it can only be outside
      // guest memory, and -1 makes the translation refuse it.
      const hi = table.readUInt32LE(off + 4);
      const addr = hi > MAX_SAFE_HI ? -1 : hi * 0x1_0000_0000 + table.readUInt32LE(off);
      const len = table.readUInt32LE(off + 8);
      const flags = table.readUInt16LE(off + 12);
      const next = table.readUInt16LE(off + 14);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirect) throw new ChainError('indirect descriptor without INDIRECT_DESC');
        if (inIndirect) throw new ChainError('nested indirect descriptor');
        if (flags & VIRTQ_DESC_F_NEXT) throw new ChainError('indirect descriptor with NEXT');
        if (len === 0 || len % 16 !== 0 || len / 16 > MAX_QUEUE_SIZE) throw new ChainError(`indirect table length ${len}`);
        table = mem.gpaView(addr, len);
        tableLen = len / 16;
        inIndirect = true;
        i = 0;
        count = 0;
        continue;
      }
      if (flags & VIRTQ_DESC_F_WRITE) {
        wlen += len;
        if (wlen > MAX_CHAIN_BYTES) throw new ChainError(`writable part over ${MAX_CHAIN_BYTES} bytes`);
        if (len) mem.pushGpaSlices(addr, len, writable, true);
      } else {
        if (wlen > 0 || writable.length) throw new ChainError('device-readable descriptor after a writable one');
        rlen += len;
        if (rlen > MAX_CHAIN_BYTES) throw new ChainError(`readable part over ${MAX_CHAIN_BYTES} bytes`);
        if (len) mem.pushGpaSlices(addr, len, readable);
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      if (next >= tableLen) throw new ChainError(`next index ${next} >= ${tableLen}`);
      i = next;
    }
    return { queue: this, head, readable, writable, readableLength: rlen, writableLength: wlen, generation: this.generation, memory: mem };
  }

  /** The chain belongs to the running ring (not stopped or reset since it was taken). */
  isCurrent(chain: DescriptorChain): boolean {
    return chain.queue === this && chain.generation === this.generation && this.started;
  }

  /**
   * Returns a chain to the guest with `written` bytes in its writable part, and notifies
   * (coalesced per microtask). A chain from an earlier generation (the ring was stopped
   * meanwhile) is dropped.
   */
  complete(chain: DescriptorChain, written: number): void {
    chain.memory.release();
    if (chain.generation !== this.generation || !this.started) return;
    this.inflight--;
    const len = Math.min(Math.max(0, written), chain.writableLength);
    this.publishUsed(chain.head, len);
    // The first completion of a turn is signalled at once: the driver (on another CPU) starts
    // consuming it and queueing new requests while we handle the rest of the batch, instead of
    // the two sides taking turns. Big completions are signalled early too, in pairs, not one by
    // one: each notification wakes the driver (~14% of our CPU per 1 MiB READ here), and a pair
    // still leaves it work to queue while we copy the next; pairs cut our CPU per READ by 7-12%
    // and one notification per turn starved the driver. A deferred one waits until the next big
    // completion or the end of the turn (at most POP_BUDGET chains), whose completions are
    // coalesced into one more notification at most.
    if (this.notifyFirstNow || (len >= NOTIFY_NOW_BYTES && ++this.bigUnsignalled >= BIG_COMPLETIONS_PER_NOTIFY)) {
      this.notifyFirstNow = false;
      this.flushNotify();
    }
    if (this.inflight === MAX_INFLIGHT - 1) this.scheduleProcess();
    if (this.inflight === 0 && this.drainWaiters.length) {
      const w = this.drainWaiters;
      this.drainWaiters = [];
      queueMicrotask(() => w.forEach((f) => f()));
    }
  }

  private publishUsed(head: number, len: number): void {
    const v = this.views;
    if (!v) return;
    const slot = this.usedIdx % this.size;
    v.used.writeUInt32LE(head, 4 + 8 * slot);
    v.used.writeUInt32LE(len >>> 0, 8 + 8 * slot);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    // The element is written before the index becomes visible (seq-cst store).
    Atomics.store(v.usedIdx, 1, this.usedIdx);
    if (!this.notifyPending) {
      this.notifyPending = true;
      // A promise reaction, not queueMicrotask: that wraps each callback in an AsyncResource
      // (creation, scope, destroy hook), a visible share of a small request's CPU.
      RESOLVED.then(this.flushIfPending);
    }
  }

  private flushNotify(): void {
    this.notifyPending = false;
    this.bigUnsignalled = 0;
    const v = this.views;
    if (!v || this.callFd < 0) return;
    let need: boolean;
    if (this.eventIdx) {
      const usedEvent = Atomics.load(v.usedEvent, 0);
      const newIdx = this.usedIdx;
      const old = this.signalledUsed;
      need = !this.signalledValid || ((newIdx - usedEvent - 1) & 0xffff) < ((newIdx - old) & 0xffff);
      this.signalledUsed = newIdx;
      this.signalledValid = true;
    } else {
      need = (Atomics.load(v.availIdx, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
    }
    if (!need) return;
    this.stats.notifications++;
    try {
      sys.eventfdWrite(this.callFd, 1);
    } catch (e) {
      this.log.error({ queue: this.index, err: String(e) }, 'call fd write failed');
    }
  }
}
