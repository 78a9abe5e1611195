// Driver (guest) side of a split virtqueue living in the test VMM's guest memory.
import fs from 'node:fs';
import { native, type FdWatch } from '../native.js';
import type { GuestMemory } from './memory.js';

const C = native.constants;
export const DESC_F_NEXT = 1;
export const DESC_F_WRITE = 2;
export const DESC_F_INDIRECT = 4;
export const USED_F_NO_NOTIFY = 1;

export interface BufferSpec {
  gpa: bigint;
  len: number;
  /** Device-writable (the reply side). */
  write: boolean;
}

export interface UsedElem { id: number; len: number }

interface Waiter {
  descs: number[];
  indirect?: bigint;
  resolve: (u: UsedElem) => void;
  reject: (e: Error) => void;
  timer?: NodeJS.Timeout;
  /** Given up on by the driver; the device may still return it (a late completion, not an anomaly). */
  timedOut?: boolean;
}

export interface VirtqueueOptions {
  eventIdx: boolean;
  /** Whether the back-end agreed to indirect descriptors. */
  indirect: boolean;
}

/** Something odd the device did (used entry for an unknown head, id out of range, ...). */
export interface Anomaly { queue: number; what: string }

export class Virtqueue {
  readonly descGpa: bigint;
  readonly availGpa: bigint;
  readonly usedGpa: bigint;
  readonly kickFd: number;
  readonly callFd: number;
  private readonly free: number[] = [];
  private readonly waiters = new Map<number, Waiter>();
  private readonly backlog: Array<() => boolean> = [];
  private availIdx = 0;
  private lastUsed = 0;
  private watch: FdWatch | null = null;
  private closed = false;
  readonly anomalies: Anomaly[] = [];
  /** Number of chains completed (used entries consumed). */
  completed = 0;
  kicks = 0;
  /** Chains returned after the driver stopped waiting for them. */
  lateCompletions = 0;

  constructor(
    private readonly mem: GuestMemory,
    readonly index: number,
    readonly size: number,
    private readonly opts: VirtqueueOptions,
  ) {
    if (size < 1 || size > 32768 || (size & (size - 1)) !== 0) throw new RangeError(`queue size ${size} must be a power of 2`);
    this.descGpa = mem.alloc(16 * size, 4096);
    this.availGpa = mem.alloc(6 + 2 * size, 4096);
    this.usedGpa = mem.alloc(6 + 8 * size, 4096);
    mem.view(this.descGpa, 16 * size).fill(0);
    mem.view(this.availGpa, 6 + 2 * size).fill(0);
    mem.view(this.usedGpa, 6 + 8 * size).fill(0);
    for (let i = size - 1; i >= 0; i--) this.free.push(i);
    this.kickFd = native.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
    this.callFd = native.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  }

  /** Starts listening on the call eventfd. */
  start(): void {
    if (this.watch || this.closed) return;
    this.watch = native.watch(this.callFd, C.READABLE, () => {
      native.eventfdRead(this.callFd);
      this.drain();
    });
  }

  get inFlight(): number { return this.waiters.size; }
  get freeDescriptors(): number { return this.free.length; }

  // ---- ring accessors -------------------------------------------------------------------
  private availView(): Buffer { return this.mem.view(this.availGpa, 6 + 2 * this.size); }
  private usedView(): Buffer { return this.mem.view(this.usedGpa, 6 + 8 * this.size); }
  private descView(): Buffer { return this.mem.view(this.descGpa, 16 * this.size); }

  writeDesc(i: number, addr: bigint, len: number, flags: number, next: number): void {
    const d = this.descView();
    d.writeBigUInt64LE(BigInt.asUintN(64, addr), 16 * i);
    d.writeUInt32LE(len >>> 0, 16 * i + 8);
    d.writeUInt16LE(flags & 0xffff, 16 * i + 12);
    d.writeUInt16LE(next & 0xffff, 16 * i + 14);
  }

  /** Writes a descriptor into an arbitrary table (e.g. an indirect table) in guest memory. */
  writeTableDesc(table: bigint, i: number, addr: bigint, len: number, flags: number, next: number): void {
    const d = this.mem.view(table + BigInt(16 * i), 16);
    d.writeBigUInt64LE(BigInt.asUintN(64, addr), 0);
    d.writeUInt32LE(len >>> 0, 8);
    d.writeUInt16LE(flags & 0xffff, 12);
    d.writeUInt16LE(next & 0xffff, 14);
  }

  // ---- submission -----------------------------------------------------------------------
  /**
   * Queues one descriptor chain (readable buffers must precede writable ones) and resolves with
   * its used element. Waits for free descriptors when the ring is full.
   */
  submit(bufs: BufferSpec[], opts: { indirect?: boolean; timeoutMs?: number } = {}): Promise<UsedElem> {
    if (bufs.length === 0) return Promise.reject(new Error('empty chain'));
    // Chains longer than the ring go indirect when the device allows it (as Linux does).
    const indirect = this.opts.indirect && bufs.length > 1 && ((opts.indirect ?? false) || bufs.length > this.size);
    const need = indirect ? 1 : bufs.length;
    if (need > this.size) return Promise.reject(new Error(`chain of ${need} descriptors exceeds queue size ${this.size}`));
    return new Promise<UsedElem>((resolve, reject) => {
      const attempt = (): boolean => {
        if (this.closed) { reject(new Error('virtqueue closed')); return true; }
        if (this.free.length < need) return false;
        const descs = this.free.splice(this.free.length - need, need);
        let table: bigint | undefined;
        if (indirect) {
          table = this.mem.alloc(16 * bufs.length, 16);
          bufs.forEach((b, k) => this.writeTableDesc(table!, k, b.gpa, b.len,
            (b.write ? DESC_F_WRITE : 0) | (k + 1 < bufs.length ? DESC_F_NEXT : 0), k + 1 < bufs.length ? k + 1 : 0));
          this.writeDesc(descs[0]!, table, 16 * bufs.length, DESC_F_INDIRECT, 0);
        } else {
          bufs.forEach((b, k) => this.writeDesc(descs[k]!, b.gpa, b.len,
            (b.write ? DESC_F_WRITE : 0) | (k + 1 < bufs.length ? DESC_F_NEXT : 0), k + 1 < bufs.length ? descs[k + 1]! : 0));
        }
        const head = descs[0]!;
        const w: Waiter = { descs, resolve, reject };
        if (table !== undefined) w.indirect = table;
        if (opts.timeoutMs) {
          w.timer = setTimeout(() => {
            // The chain stays owned by the device until (if ever) it comes back.
            w.timedOut = true;
            reject(new Error(`request on queue ${this.index} timed out after ${opts.timeoutMs} ms`));
          }, opts.timeoutMs);
        }
        this.waiters.set(head, w);
        this.publish(head);
        return true;
      };
      if (this.backlog.length > 0 || !attempt()) this.backlog.push(attempt);
    });
  }

  /** Takes `n` descriptor indices off the free list for hand-built chains. */
  rawDescs(n: number): number[] {
    if (this.free.length < n) throw new Error(`only ${this.free.length} free descriptors`);
    return this.free.splice(this.free.length - n, n);
  }

  /**
   * Publishes a hand-built chain whose head is `head` and waits up to `timeoutMs` for the device
   * to return it. Resolves with the used element, or null if it was dropped (not returned in
   * time). `owned` are descriptors returned to the free list if the device gives the head back.
   */
  rawSubmit(head: number, owned: number[], timeoutMs: number): Promise<UsedElem | null> {
    return new Promise((resolve) => {
      const w: Waiter = { descs: owned, resolve, reject: () => resolve(null) };
      w.timer = setTimeout(() => { w.timedOut = true; resolve(null); }, timeoutMs);
      this.waiters.set(head, w);
      this.publish(head);
    });
  }

  /** Puts `head` in the avail ring, bumps avail.idx and kicks if the device wants it. */
  publish(head: number): void {
    const av = this.availView();
    const old = this.availIdx;
    av.writeUInt16LE(head, 4 + 2 * (old % this.size));
    this.availIdx = (old + 1) & 0xffff;
    av.writeUInt16LE(this.availIdx, 2); // entry stored before the index (x86 keeps store order)
    const used = this.usedView();
    let kick: boolean;
    if (this.opts.eventIdx) {
      const availEvent = used.readUInt16LE(4 + 8 * this.size);
      kick = ((this.availIdx - availEvent - 1) & 0xffff) < ((this.availIdx - old) & 0xffff);
    } else {
      kick = (used.readUInt16LE(0) & USED_F_NO_NOTIFY) === 0;
    }
    if (kick) this.kick();
  }

  /**
   * Hostile: moves avail.idx to `idx` without filling the ring entries in between (e.g. more
   * than the queue size ahead of the device) and kicks.
   */
  rawSetAvailIdx(idx: number): void {
    this.availIdx = idx & 0xffff;
    this.availView().writeUInt16LE(this.availIdx, 2);
    this.kick();
  }

  kick(): void {
    if (this.closed) return;
    this.kicks++;
    native.eventfdWrite(this.kickFd, 1);
  }

  /** Consumes used entries; also called by tests that poll. */
  drain(): void {
    if (this.closed) return;
    for (;;) {
      const used = this.usedView();
      const idx = used.readUInt16LE(2);
      while (this.lastUsed !== idx) {
        const slot = 4 + 8 * (this.lastUsed % this.size);
        const id = used.readUInt32LE(slot);
        const len = used.readUInt32LE(slot + 4);
        this.lastUsed = (this.lastUsed + 1) & 0xffff;
        this.completed++;
        const w = id < this.size ? this.waiters.get(id) : undefined;
        if (!w) {
          this.anomalies.push({ queue: this.index, what: `used entry for head ${id} (len ${len}) that is not in flight` });
          continue;
        }
        this.waiters.delete(id);
        if (w.timer) clearTimeout(w.timer);
        if (w.indirect !== undefined) this.mem.free(w.indirect);
        this.free.push(...w.descs);
        if (w.timedOut) this.lateCompletions++;
        else w.resolve({ id, len });
      }
      if (this.opts.eventIdx) this.availView().writeUInt16LE(this.lastUsed, 4 + 2 * this.size);
      // Re-check after publishing used_event: the device may have added entries meanwhile.
      if (this.usedView().readUInt16LE(2) === this.lastUsed) break;
    }
    while (this.backlog.length > 0 && this.backlog[0]!()) this.backlog.shift();
  }

  /** Ring position the back-end should resume from (for SET_VRING_BASE after a reset). */
  get nextAvail(): number { return this.availIdx; }

  /** Fails every pending request (connection lost / reset). */
  failAll(err: Error): void {
    for (const [, w] of this.waiters) { if (w.timer) clearTimeout(w.timer); if (!w.timedOut) w.reject(err); }
    this.waiters.clear();
    const bl = this.backlog.splice(0);
    this.closed = true;
    for (const a of bl) a();
    this.closed = false;
  }

  close(): void {
    if (this.closed) return;
    this.failAll(new Error('virtqueue closed'));
    this.closed = true;
    this.watch?.close();
    this.watch = null;
    fs.closeSync(this.kickFd);
    fs.closeSync(this.callFd);
    this.mem.free(this.descGpa);
    this.mem.free(this.availGpa);
    this.mem.free(this.usedGpa);
  }
}
