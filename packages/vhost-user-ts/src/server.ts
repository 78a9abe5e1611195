// A vhost-user socket server: listens on a Unix socket path (or takes an inherited fd, either a
// listening or an already connected socket) and serves one front-end connection at a time.
// Further connections wait in the backlog until the current one ends.
import fs from 'node:fs';
import { sys, isSysError, type FdWatch } from './sys.js';
import { VhostUserConnection, type VhostUserConnectionOptions, type VhostUserDevice } from './backend.js';
import { closeQuietly } from './memory.js';
import type { Logger } from './logger.js';

export interface VhostUserServerOptions {
  /** Listen on this path (an old socket file there is replaced). */
  socketPath?: string;
  /** Inherited socket fd: listening (accept on it) or connected (serve it directly). */
  fd?: number;
  /** Keep accepting after a front-end disconnects (otherwise the server finishes). */
  reconnect?: boolean;
  /** A device per connection (state from a previous VM must not leak into the next). */
  createDevice: () => VhostUserDevice;
  log: Logger;
  /** Limits and timeouts for each connection (guest memory, queued messages, back-end replies). */
  connection?: VhostUserConnectionOptions;
}

export class VhostUserServer {
  private listenFd = -1;
  private listenWatch: FdWatch | null = null;
  private conn: VhostUserConnection | null = null;
  private stopped = false;
  private doneResolve!: (reason: string) => void;
  /** Resolves when the server finishes (disconnect without reconnect, or stop()). */
  readonly done: Promise<string>;
  connections = 0;

  constructor(private readonly opts: VhostUserServerOptions) {
    this.done = new Promise((r) => (this.doneResolve = r));
  }

  get connection(): VhostUserConnection | null {
    return this.conn;
  }

  /** Starts listening (or serving the inherited connected fd). */
  start(): void {
    const { socketPath, fd, log } = this.opts;
    if (socketPath !== undefined && fd !== undefined) throw new Error('--socket-path and --fd are mutually exclusive');
    if (socketPath !== undefined) {
      this.listenFd = sys.unixListen(socketPath, 1);
      log.info({ socket: socketPath }, 'listening');
      this.armListen();
      return;
    }
    if (fd === undefined) throw new Error('a socket path or an fd is required');
    sys.setNonblocking(fd, true);
    // A listening socket accepts (or reports nothing pending); a connected one fails with EINVAL.
    let accepted: number;
    try {
      accepted = sys.accept(fd);
    } catch (e) {
      if (isSysError(e, 'EINVAL')) {
        log.info({ fd }, 'serving the connected socket given by --fd');
        this.serve(fd);
        return;
      }
      throw e;
    }
    this.listenFd = fd;
    log.info({ fd }, 'listening');
    if (accepted >= 0) this.serve(accepted);
    else this.armListen();
  }

  private armListen(): void {
    if (this.stopped || this.listenFd < 0) return;
    if (!this.listenWatch) {
      this.listenWatch = sys.watch(this.listenFd, 0, (_ev, err) => {
        if (err) {
          this.opts.log.error({ errno: err }, 'listening socket error');
          return this.finish('listen error');
        }
        try {
          this.onAcceptable();
        } catch (e) {
          this.opts.log.error({ err: String(e) }, 'accepting a connection failed');
        }
      });
    }
    this.listenWatch.start(sys.constants.READABLE);
  }

  private onAcceptable(): void {
    if (this.conn || this.stopped) return;
    let fd: number;
    try {
      fd = sys.accept(this.listenFd);
    } catch (e) {
      this.opts.log.error({ err: String(e) }, 'accept failed');
      return;
    }
    if (fd < 0) return;
    this.listenWatch?.stop();
    this.serve(fd);
  }

  private serve(fd: number): void {
    this.connections++;
    const log = this.opts.log;
    log.info({ connection: this.connections }, 'front-end connected');
    let conn: VhostUserConnection;
    try {
      conn = new VhostUserConnection(fd, this.opts.createDevice(), log, this.opts.connection);
    } catch (e) {
      closeQuietly(fd);
      log.error({ err: String(e) }, 'cannot set up connection');
      return this.afterConnection();
    }
    this.conn = conn;
    conn.onClose(() => {
      this.conn = null;
      this.afterConnection();
    });
  }

  private afterConnection(): void {
    if (this.stopped) return;
    if (this.opts.reconnect && this.listenFd >= 0) {
      this.opts.log.info('waiting for the next front-end connection');
      this.armListen();
      // A connection may already be waiting in the backlog.
      setImmediate(() => this.onAcceptable());
    } else {
      this.finish('front-end disconnected');
    }
  }

  /** Closes the connection and the listening socket (and removes the socket file). */
  stop(reason = 'stopped'): void {
    if (this.stopped) return;
    this.stopped = true;
    this.conn?.close(reason);
    this.conn = null;
    this.finish(reason);
  }

  private finish(reason: string): void {
    this.stopped = true;
    if (this.listenWatch) {
      this.listenWatch.close();
      this.listenWatch = null;
    }
    if (this.listenFd >= 0) {
      closeQuietly(this.listenFd);
      this.listenFd = -1;
      if (this.opts.socketPath) {
        try {
          fs.unlinkSync(this.opts.socketPath);
        } catch {
          /* already gone */
        }
      }
    }
    this.doneResolve(reason);
  }
}
