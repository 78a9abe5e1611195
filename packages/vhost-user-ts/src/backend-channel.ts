// The back-end request channel (SET_BACKEND_REQ_FD): we send requests to the front-end on it
// (SHMEM_MAP/UNMAP, or the legacy virtio-fs FS_MAP/FS_UNMAP) and, with REPLY_ACK, wait for
// its u64 answer. One request is outstanding at a time.
//
// vhost-user replies carry no request id; the front-end answers in order. So after a request
// timed out, its reply is still owed: the next request is not sent until that late reply has
// arrived (and is reported to onLateReply, never taken for the next request's answer). If it
// does not come within another timeout, the channel is closed.
import { sys, type FdWatch } from './sys.js';
import { closeQuietly } from './memory.js';
import type { Logger } from './logger.js';
import {
  BackendReq,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  MessageFramer,
  ProtocolError,
  VERSION,
  encodeFsMap,
  encodeMessage,
  encodeShmemMap,
  type FsMapEntry,
  type ShmemMapMsg,
} from './protocol.js';

export class BackendChannelError extends Error {
  constructor(message: string, readonly status?: bigint) {
    super(message);
    this.name = 'BackendChannelError';
  }
}

interface Pending {
  request: number;
  payload: Buffer;
  resolve: (v: bigint) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** A request whose reply came after its timeout: the caller was told it failed. */
export interface LateReply {
  request: number;
  /** The request's payload (e.g. an encoded SHMEM_MAP: what the front-end did map). */
  payload: Buffer;
  status: bigint;
}

export interface BackendChannelOptions {
  /** How long a request waits for its reply (default 5 s). */
  timeoutMs?: number;
  /** The connection's memory slots (see VhostUserBackend.memorySlots). */
  memorySlots?: () => { limit: number; used: number };
}

export class BackendChannel {
  private watch: FdWatch | null;
  private framer = new MessageFramer();
  private pending: Pending | null = null;
  /** A timed-out request whose reply has not come yet. */
  private owed: { request: number; payload: Buffer } | null = null;
  private owedWaiter: { resolve: () => void; timer: NodeJS.Timeout } | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly buf = Buffer.alloc(4096);
  readonly timeoutMs: number;
  stats = { requests: 0, failures: 0, lateReplies: 0 };
  /**
   * Told about a reply that came after its request had timed out (and was reported failed): a
   * DAX layer reconciles here, e.g. unmaps what a late successful SHMEM_MAP mapped.
   */
  onLateReply: ((late: LateReply) => void) | null = null;

  /**
   * @param fd the channel socket (owned: closed by close())
   * @param replyAck REPLY_ACK was negotiated: requests carry NEED_REPLY and wait for a status
   */
  constructor(readonly fd: number, readonly replyAck: boolean, private readonly log: Logger, private readonly opts: BackendChannelOptions = {}) {
    this.timeoutMs = opts.timeoutMs ?? 5000;
    try {
      sys.setNonblocking(fd, true);
    } catch {
      /* a socketpair is already non-blocking */
    }
    this.watch = sys.watch(fd, sys.constants.READABLE | sys.constants.DISCONNECT, (ev) => {
      try {
        this.onReadable(ev);
      } catch (e) {
        // An exception escaping a watch callback would abort the daemon.
        this.log.error({ err: String(e) }, 'back-end channel failure');
        this.close();
      }
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Memory slots of the connection: announced (`limit`) and in use (`used`). With QEMU 11.1 every
   * live shared-memory mapping takes a slot (it comes back as ADD_MEM_REG) and QEMU aborts when
   * all of them are used: a device keeps its live mappings below `limit - used`.
   */
  memorySlots(): { limit: number; used: number; free: number } {
    const s = this.opts.memorySlots?.() ?? { limit: 0, used: 0 };
    return { ...s, free: Math.max(0, s.limit - s.used) };
  }

  /** Sends one request; resolves with the front-end's u64 status (0 without REPLY_ACK). */
  request(request: number, payload: Buffer, fds: number[] = []): Promise<bigint> {
    const run = (): Promise<bigint> => this.send(request, payload, fds);
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async send(request: number, payload: Buffer, fds: number[]): Promise<bigint> {
    if (this.owed) await this.settleOwed();
    if (this.closed) throw new BackendChannelError('back-end channel is closed');
    this.stats.requests++;
    const msg = encodeMessage(request, VERSION | (this.replyAck ? FLAG_NEED_REPLY : 0), payload);
    try {
      const n = sys.sendmsg(this.fd, msg, fds);
      if (n !== msg.length) throw new BackendChannelError(`short write on back-end channel (${n}/${msg.length})`);
    } catch (e) {
      this.stats.failures++;
      throw e instanceof Error ? e : new BackendChannelError(String(e));
    }
    if (!this.replyAck) return 0n;
    return new Promise<bigint>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending = null;
        this.owed = { request, payload };
        this.stats.failures++;
        this.log.warn({ request, timeoutMs: this.timeoutMs }, 'no reply on the back-end channel in time; the next request waits for it');
        reject(new BackendChannelError(`no reply to back-end request ${request} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending = { request, payload, resolve, reject, timer };
    });
  }

  /** Waits for the owed late reply; closes the channel if it does not come in time. */
  private settleOwed(): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.owedWaiter = null;
        this.log.warn({ request: this.owed?.request }, 'front-end never answered a back-end request; back-end channel closed');
        this.close();
        resolve();
      }, this.timeoutMs);
      this.owedWaiter = { resolve, timer };
    });
  }

  shmemMap(m: ShmemMapMsg, fd: number): Promise<bigint> {
    return this.request(BackendReq.SHMEM_MAP, encodeShmemMap(m), [fd]);
  }

  shmemUnmap(m: ShmemMapMsg): Promise<bigint> {
    return this.request(BackendReq.SHMEM_UNMAP, encodeShmemMap(m));
  }

  /** Legacy virtio-fs dialect: up to 8 ranges of one fd. */
  fsMap(entries: FsMapEntry[], fd: number): Promise<bigint> {
    return this.request(BackendReq.FS_MAP, encodeFsMap(entries), [fd]);
  }

  fsUnmap(entries: FsMapEntry[]): Promise<bigint> {
    return this.request(BackendReq.FS_UNMAP, encodeFsMap(entries));
  }

  private onReadable(ev: number): void {
    for (;;) {
      if (this.closed) return;
      let r: { bytes: number; fds: number[] };
      try {
        r = sys.recvmsg(this.fd, this.buf);
      } catch (e) {
        this.log.warn({ err: String(e) }, 'back-end channel read failed');
        this.close();
        return;
      }
      if (r.bytes === -1) break;
      if (r.bytes === 0) {
        for (const fd of r.fds) closeQuietly(fd);
        this.log.info('back-end channel closed by the front-end');
        this.close();
        return;
      }
      this.framer.push(this.buf.subarray(0, r.bytes), r.fds);
      try {
        for (let m = this.framer.next(); m; m = this.framer.next()) {
          for (const fd of m.fds) closeQuietly(fd);
          if (!(m.flags & FLAG_REPLY)) {
            this.log.warn({ request: m.request, flags: m.flags }, 'unexpected request on back-end channel');
            continue;
          }
          const status = m.payload.length >= 8 ? m.payload.readBigUInt64LE(0) : null;
          const owed = this.owed;
          if (owed) {
            // Replies come in order: this one answers the request that timed out.
            if (m.request !== owed.request) throw new ProtocolError(`reply to request ${m.request} while the reply to ${owed.request} is owed`);
            this.owed = null;
            this.stats.lateReplies++;
            this.log.warn({ request: owed.request, status: status?.toString() }, 'late reply on the back-end channel (its request had timed out)');
            if (status !== null) this.onLateReply?.({ request: owed.request, payload: owed.payload, status });
            const w = this.owedWaiter;
            this.owedWaiter = null;
            if (w) {
              clearTimeout(w.timer);
              w.resolve();
            }
            continue;
          }
          const p = this.pending;
          if (!p) {
            this.log.warn({ request: m.request }, 'reply on the back-end channel to no request');
            continue;
          }
          if (m.request !== p.request) throw new ProtocolError(`reply to request ${m.request} while waiting for ${p.request}`);
          clearTimeout(p.timer);
          this.pending = null;
          if (status === null) {
            this.stats.failures++;
            p.reject(new BackendChannelError('short reply on back-end channel'));
            continue;
          }
          if (status !== 0n) this.stats.failures++;
          p.resolve(status);
        }
      } catch (e) {
        this.log.warn({ err: e instanceof Error ? e.message : String(e) }, 'bad message on back-end channel; channel closed');
        this.close();
        return;
      }
    }
    if (ev & sys.constants.DISCONNECT) this.close();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.watch) {
      this.watch.close();
      this.watch = null;
    }
    for (const fd of this.framer.drainFds()) closeQuietly(fd);
    closeQuietly(this.fd);
    const p = this.pending;
    this.pending = null;
    if (p) {
      clearTimeout(p.timer);
      p.reject(new BackendChannelError('back-end channel closed'));
    }
    const w = this.owedWaiter;
    this.owedWaiter = null;
    if (w) {
      clearTimeout(w.timer);
      w.resolve();
    }
  }
}
