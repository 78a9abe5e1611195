// Helpers for testing a device without a VMM: a memfd standing in for guest RAM, a minimal
// front-end that sends requests and reads replies, the driver side of a ring, and dup(2) through
// SCM_RIGHTS.
import fs from 'node:fs';
import { sys } from './sys.js';
import { GuestMemory } from './memory.js';
import {
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  MessageFramer,
  Req,
  VERSION,
  encodeMemTable,
  encodeMessage,
  encodeVringAddr,
  encodeVringState,
  requestName,
  u64,
  type MemRegionDesc,
} from './protocol.js';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from './virtqueue.js';
import type { Logger } from './logger.js';

const C = sys.constants;

/** A memfd standing in for guest RAM, mapped on "our" side too so tests can write rings. */
export class FakeGuest {
  readonly fd: number;
  readonly ram: Buffer;
  private readonly ab: ArrayBuffer;
  constructor(readonly size: number, readonly gpaBase = 0, readonly uvaBase = 0x7f0000000000, name = 'fake-guest') {
    this.fd = sys.memfdCreate(name, C.MFD_CLOEXEC);
    sys.ftruncate(this.fd, size);
    this.ab = sys.mmap(this.fd, 0, size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED);
    this.ram = Buffer.from(this.ab);
  }
  region(off = 0, size = this.size): MemRegionDesc {
    return { guestPhys: BigInt(this.gpaBase + off), size: BigInt(size), userAddr: BigInt(this.uvaBase + off), mmapOffset: BigInt(off) };
  }
  /** A GuestMemory mapping the whole fake RAM as one region (fd dup'ed: fromTable closes it). */
  memory(regions: MemRegionDesc[] = [this.region()]): GuestMemory {
    return GuestMemory.fromTable(regions, regions.map(() => dupFd(this.fd)));
  }
  uva(gpa: number): bigint {
    return BigInt(this.uvaBase + gpa - this.gpaBase);
  }
  close(): void {
    sys.munmap(this.ab);
    fs.closeSync(this.fd);
  }
}

/** dup(2) through SCM_RIGHTS (works for memfds and eventfds alike). */
export function dupFd(fd: number): number {
  const [a, b] = sys.socketpair();
  try {
    sys.sendmsg(a, Buffer.from('d'), [fd]);
    const r = sys.recvmsg(b, new Uint8Array(1));
    if (r.fds.length !== 1) throw new Error(`dupFd: received ${r.fds.length} fds`);
    return r.fds[0]!;
  } finally {
    fs.closeSync(a);
    fs.closeSync(b);
  }
}

/** A minimal front-end on a connected socket: requests out, replies in (polling, for tests). */
export class MiniFrontEnd {
  readonly fd: number;
  private buf = Buffer.alloc(4096);
  constructor(fd: number) {
    this.fd = fd;
  }
  send(req: number, payload?: Buffer, fds: number[] = [], flags = VERSION): void {
    sys.sendmsg(this.fd, encodeMessage(req, flags, payload), fds);
  }
  /** The payload of the reply to `req` (within about 2 s). */
  async reply(req: number): Promise<Buffer> {
    for (let i = 0; i < 400; i++) {
      const r = sys.recvmsg(this.fd, this.buf);
      if (r.bytes > 0) {
        const f = new MessageFramer();
        f.push(this.buf.subarray(0, r.bytes), r.fds);
        const m = f.next();
        if (!m) throw new Error(`a partial reply to request ${req}`);
        if (m.request !== req || !(m.flags & FLAG_REPLY)) throw new Error(`expected a reply to request ${req}, got request ${m.request} flags 0x${m.flags.toString(16)}`);
        return m.payload;
      }
      if (r.bytes === 0) throw new Error('back-end closed the connection');
      await new Promise((res) => setTimeout(res, 5));
    }
    throw new Error(`no reply to ${req}`);
  }
  async call(req: number, payload?: Buffer, fds: number[] = []): Promise<Buffer> {
    this.send(req, payload, fds);
    return this.reply(req);
  }
  /** Sends with NEED_REPLY and returns the u64 status (0 = success). */
  async ack(req: number, payload?: Buffer, fds: number[] = []): Promise<bigint> {
    this.send(req, payload, fds, VERSION | FLAG_NEED_REPLY);
    return (await this.reply(req)).readBigUInt64LE(0);
  }
}

/** Where a test ring lives in a FakeGuest (guest-physical offsets) and its size. */
export interface TestRingLayout {
  desc: number;
  avail: number;
  used: number;
  size: number;
  /** Request bytes are placed here, reply buffers 64 KiB after. */
  data: number;
}

/**
 * The driver side of one split ring in a FakeGuest, for tests: sets the ring up over a
 * MiniFrontEnd and sends one request at a time (a readable buffer chained to a writable one).
 */
export class TestRing {
  readonly kick = sys.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  readonly call = sys.eventfd(0, C.EFD_NONBLOCK | C.EFD_CLOEXEC);
  constructor(
    readonly guest: FakeGuest,
    readonly index: number,
    readonly layout: TestRingLayout = { desc: 0x1000, avail: 0x3000, used: 0x4000, size: 8, data: 0x10000 },
  ) {}

  /** SET_VRING_NUM/BASE/ADDR/KICK/CALL/ENABLE with NEED_REPLY; throws if one is refused. */
  async setup(fe: MiniFrontEnd): Promise<void> {
    const { desc, avail, used, size } = this.layout;
    const g = this.guest;
    g.ram.fill(0, avail, avail + 6 + 2 * size);
    g.ram.fill(0, used, used + 6 + 8 * size);
    const state = (num: number): Buffer => encodeVringState({ index: this.index, num });
    const steps: [number, Buffer, number[]][] = [
      [Req.SET_VRING_NUM, state(size), []],
      [Req.SET_VRING_BASE, state(0), []],
      [Req.SET_VRING_ADDR, encodeVringAddr({ index: this.index, flags: 0, desc: g.uva(desc), avail: g.uva(avail), used: g.uva(used), log: 0n }), []],
      [Req.SET_VRING_KICK, u64(this.index), [this.kick]],
      [Req.SET_VRING_CALL, u64(this.index), [this.call]],
      [Req.SET_VRING_ENABLE, state(1), []],
    ];
    for (const [req, payload, fds] of steps) {
      const status = await fe.ack(req, payload, fds);
      if (status !== 0n) throw new Error(`${requestName(req)} refused (status ${status})`);
    }
  }

  /** Sends `request` with `replyRoom` writable bytes; resolves with what the device wrote. */
  async request(request: Buffer, replyRoom: number, timeoutMs = 2000): Promise<Buffer> {
    const { data } = this.layout;
    const ram = this.guest.ram;
    const gpa = (off: number): bigint => BigInt(this.guest.gpaBase + off);
    request.copy(ram, data);
    const len = await this.chain([{ gpa: gpa(data), len: request.length }, { gpa: gpa(data + 0x10000), len: replyRoom, write: true }], timeoutMs);
    return Buffer.from(ram.subarray(data + 0x10000, data + 0x10000 + len));
  }

  /**
   * Offers one chain of descriptors (table entries 0..n-1, anywhere in guest-physical space),
   * kicks, and resolves with the length the device reported in the used ring.
   */
  async chain(descs: { gpa: bigint; len: number; write?: boolean }[], timeoutMs = 2000): Promise<number> {
    const { desc, avail, used, size } = this.layout;
    const ram = this.guest.ram;
    descs.forEach((d, i) => {
      const o = desc + 16 * i;
      ram.writeBigUInt64LE(d.gpa, o);
      ram.writeUInt32LE(d.len, o + 8);
      ram.writeUInt16LE((i + 1 < descs.length ? VIRTQ_DESC_F_NEXT : 0) | (d.write ? VIRTQ_DESC_F_WRITE : 0), o + 12);
      ram.writeUInt16LE(i + 1 < descs.length ? i + 1 : 0, o + 14);
    });
    const idx = ram.readUInt16LE(avail + 2);
    ram.writeUInt16LE(0, avail + 4 + 2 * (idx % size));
    ram.writeUInt16LE((idx + 1) & 0xffff, avail + 2);
    const usedBefore = ram.readUInt16LE(used + 2);
    sys.eventfdWrite(this.kick, 1);
    const end = Date.now() + timeoutMs;
    while (ram.readUInt16LE(used + 2) === usedBefore) {
      if (Date.now() > end) throw new Error('no completion from the device');
      await new Promise((r) => setTimeout(r, 2));
    }
    return ram.readUInt32LE(used + 4 + 8 * (usedBefore % size) + 4);
  }

  close(): void {
    fs.closeSync(this.kick);
    fs.closeSync(this.call);
  }
}

/**
 * GET_FEATURES, GET/SET_PROTOCOL_FEATURES (all offered), SET_OWNER, SET_FEATURES (all offered)
 * and SET_MEM_TABLE with the guest's RAM as one region. Returns the negotiated features.
 */
export async function handshake(fe: MiniFrontEnd, guest: FakeGuest): Promise<{ features: bigint; protocolFeatures: bigint }> {
  const features = (await fe.call(Req.GET_FEATURES)).readBigUInt64LE(0);
  const protocolFeatures = (await fe.call(Req.GET_PROTOCOL_FEATURES)).readBigUInt64LE(0);
  fe.send(Req.SET_PROTOCOL_FEATURES, u64(protocolFeatures));
  for (const [req, payload, fds] of [
    [Req.SET_OWNER, undefined, []],
    [Req.SET_FEATURES, u64(features), []],
    [Req.SET_MEM_TABLE, encodeMemTable([guest.region()]), [guest.fd]],
  ] as [number, Buffer | undefined, number[]][]) {
    const status = await fe.ack(req, payload, fds);
    if (status !== 0n) throw new Error(`${requestName(req)} refused (status ${status})`);
  }
  return { features, protocolFeatures };
}

export interface LogLine {
  level: 'trace' | 'debug' | 'info' | 'warn' | 'error';
  msg: string;
  fields: object;
}

/** A Logger that keeps what it is given, to assert on log lines. */
export function recordingLogger(): Logger & { lines: LogLine[]; count(level: LogLine['level'], msg: string | RegExp): number } {
  const lines: LogLine[] = [];
  const at = (level: LogLine['level']) => (obj: object | string, msg?: string): void => {
    if (typeof obj === 'string') lines.push({ level, msg: obj, fields: {} });
    else lines.push({ level, msg: msg ?? '', fields: obj });
  };
  return {
    lines,
    trace: at('trace'),
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    count: (level, msg) => lines.filter((l) => l.level === level && (typeof msg === 'string' ? l.msg === msg : msg.test(l.msg))).length,
  };
}
