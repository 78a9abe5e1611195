// vhost-user wire constants and message codec for the test VMM (the FRONT-END side).
// Numbers from QEMU docs/interop/vhost-user.rst; see ../../../../shared/reference/protocols.md.

export const VHOST_USER_VERSION = 1;
export const FLAG_REPLY = 1 << 2;
export const FLAG_NEED_REPLY = 1 << 3;
export const HEADER_SIZE = 12;
/** The largest payload we accept from a back-end (a mem table of 509 regions is ~16 KiB). */
export const MAX_PAYLOAD = 64 * 1024;

export const Req = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SET_BACKEND_REQ_FD: 21,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHMEM_CONFIG: 44,
} as const;

/** Back-end → front-end requests on the back-end channel. */
export const BackendReq = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  /** Upstream: SHARED_OBJECT_ADD; legacy virtio-fs dialect: FS_MAP. */
  SHARED_OBJECT_ADD_OR_FS_MAP: 6,
  /** Upstream: SHARED_OBJECT_REMOVE; legacy virtio-fs dialect: FS_UNMAP. */
  SHARED_OBJECT_REMOVE_OR_FS_UNMAP: 7,
  SHARED_OBJECT_LOOKUP_OR_FS_SYNC: 8,
  SHMEM_MAP: 9,
  SHMEM_UNMAP: 10,
} as const;

export const ProtoFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  REPLY_ACK: 3,
  BACKEND_REQ: 5,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  /** QEMU 11.1's VHOST_USER_PROTOCOL_F_SHMEM (bits 20 and 21 are other features). */
  SHMEM: 22,
} as const;

/** Virtio feature bits. */
export const Feature = {
  INDIRECT_DESC: 28,
  EVENT_IDX: 29,
  PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
} as const;

export const bit = (n: number): bigint => 1n << BigInt(n);
export const hasBit = (v: bigint, n: number): boolean => (v & bit(n)) !== 0n;

export function requestName(id: number): string {
  for (const [k, v] of Object.entries(Req)) if (v === id) return k;
  return `REQ_${id}`;
}

export interface Message {
  request: number;
  flags: number;
  payload: Buffer;
  fds: number[];
}

export function encode(request: number, flags: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(HEADER_SIZE + payload.length);
  b.writeUInt32LE(request, 0);
  b.writeUInt32LE((flags & ~3) | VHOST_USER_VERSION, 4);
  b.writeUInt32LE(payload.length, 8);
  payload.copy(b, HEADER_SIZE);
  return b;
}

export function u64(v: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
}

export function vringState(index: number, num: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(index, 0);
  b.writeUInt32LE(num >>> 0, 4);
  return b;
}

export function vringAddr(index: number, flags: number, desc: bigint, used: bigint, avail: bigint, log = 0n): Buffer {
  const b = Buffer.alloc(40);
  b.writeUInt32LE(index, 0);
  b.writeUInt32LE(flags, 4);
  b.writeBigUInt64LE(desc, 8);
  b.writeBigUInt64LE(used, 16);
  b.writeBigUInt64LE(avail, 24);
  b.writeBigUInt64LE(log, 32);
  return b;
}

export interface MemRegionDesc {
  guestPhys: bigint;
  size: bigint;
  userAddr: bigint;
  mmapOffset: bigint;
}

export function memRegion(r: MemRegionDesc): Buffer {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(r.guestPhys, 0);
  b.writeBigUInt64LE(r.size, 8);
  b.writeBigUInt64LE(r.userAddr, 16);
  b.writeBigUInt64LE(r.mmapOffset, 24);
  return b;
}

export function memTable(regions: MemRegionDesc[]): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32LE(regions.length, 0);
  return Buffer.concat([head, ...regions.map(memRegion)]);
}

/** ADD_MEM_REG / REM_MEM_REG payload: u64 padding then one region. */
export function singleRegion(r: MemRegionDesc): Buffer {
  return Buffer.concat([Buffer.alloc(8), memRegion(r)]);
}

/**
 * Incremental parser for a SOCK_STREAM vhost-user connection: bytes and fds in, whole messages
 * out. Fds that arrive with a read attach to the first message that starts in that read.
 */
export class MessageParser {
  private buf = Buffer.alloc(0);
  private pendingFds: number[] = [];

  push(data: Buffer, fds: number[]): Message[] {
    this.buf = this.buf.length === 0 ? Buffer.from(data) : Buffer.concat([this.buf, data]);
    this.pendingFds.push(...fds);
    const out: Message[] = [];
    for (;;) {
      if (this.buf.length < HEADER_SIZE) break;
      const size = this.buf.readUInt32LE(8);
      if (size > MAX_PAYLOAD) throw new Error(`vhost-user: back-end sent an oversized message (${size} bytes)`);
      if (this.buf.length < HEADER_SIZE + size) break;
      out.push({
        request: this.buf.readUInt32LE(0),
        flags: this.buf.readUInt32LE(4),
        payload: Buffer.from(this.buf.subarray(HEADER_SIZE, HEADER_SIZE + size)),
        fds: this.pendingFds,
      });
      this.pendingFds = [];
      this.buf = this.buf.subarray(HEADER_SIZE + size);
    }
    return out;
  }

  /** Fds received but not attached to any message (closed by the owner on teardown). */
  takeStrayFds(): number[] {
    const f = this.pendingFds;
    this.pendingFds = [];
    return f;
  }
}
