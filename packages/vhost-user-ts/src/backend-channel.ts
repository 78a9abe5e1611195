// The back-end request channel (SET_BACKEND_REQ_FD): we send requests to the front-end on it
// (SHMEM_MAP/UNMAP, or the legacy virtio-fs FS_MAP/FS_UNMAP) and, with REPLY_ACK, wait for
// its u64 answer. One request is outstanding at a time.
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
  resolve: (v: bigint) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class BackendChannel {
  private watch: FdWatch | null;
  private framer = new MessageFramer();
  private pending: Pending | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly buf = Buffer.alloc(4096);
  stats = { requests: 0, failures: 0 };

  /**
   * @param fd the channel socket (owned: closed by close())
   * @param replyAck REPLY_ACK was negotiated: requests carry NEED_REPLY and wait for a status
   */
  constructor(readonly fd: number, readonly replyAck: boolean, private readonly log: Logger, readonly timeoutMs = 5000) {
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

  /** Sends one request; resolves with the front-end's u64 status (0 without REPLY_ACK). */
  request(request: number, payload: Buffer, fds: number[] = []): Promise<bigint> {
    const run = (): Promise<bigint> => this.send(request, payload, fds);
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private send(request: number, payload: Buffer, fds: number[]): Promise<bigint> {
    if (this.closed) return Promise.reject(new BackendChannelError('back-end channel is closed'));
    this.stats.requests++;
    const msg = encodeMessage(request, VERSION | (this.replyAck ? FLAG_NEED_REPLY : 0), payload);
    try {
      const n = sys.sendmsg(this.fd, msg, fds);
      if (n !== msg.length) throw new BackendChannelError(`short write on back-end channel (${n}/${msg.length})`);
    } catch (e) {
      this.stats.failures++;
      return Promise.reject(e instanceof Error ? e : new BackendChannelError(String(e)));
    }
    if (!this.replyAck) return Promise.resolve(0n);
    return new Promise<bigint>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending = null;
        this.stats.failures++;
        reject(new BackendChannelError(`no reply to back-end request ${request} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending = { request, resolve, reject, timer };
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
          const p = this.pending;
          if (!(m.flags & FLAG_REPLY) || !p || m.request !== p.request) {
            this.log.warn({ request: m.request, flags: m.flags }, 'unexpected message on back-end channel');
            continue;
          }
          clearTimeout(p.timer);
          this.pending = null;
          if (m.payload.length < 8) {
            this.stats.failures++;
            p.reject(new BackendChannelError('short reply on back-end channel'));
            continue;
          }
          const status = m.payload.readBigUInt64LE(0);
          if (status !== 0n) this.stats.failures++;
          p.resolve(status);
        }
      } catch (e) {
        this.log.warn({ err: e instanceof ProtocolError ? e.message : String(e) }, 'bad message on back-end channel');
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
  }
}
