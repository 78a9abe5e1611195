// vhost-user message codec and constants (QEMU docs/interop/vhost-user.rst). Pure data: no I/O.
// All integers are little-endian. A message is a 12-byte header {u32 request, u32 flags,
// u32 size} followed by `size` payload bytes; file descriptors travel as SCM_RIGHTS.

export const HEADER_SIZE = 12;
/** Largest payload we accept; the biggest a front-end sends is a full memory table (8 + 8 regions × 32 bytes). */
export const MAX_PAYLOAD = 4096;
/** Regions in one SET_MEM_TABLE message (VHOST_MEMORY_BASELINE_NREGIONS). */
export const MAX_TABLE_REGIONS = 8;
export const MAX_QUEUE_SIZE = 32768;
export const MAX_CONFIG_SIZE = 256;

export const VERSION = 0x1;
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;

/** Front-end → back-end requests. */
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
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
  /** QEMU 11.1: the back-end's VIRTIO shared memory regions (needs ProtoFeature.SHMEM). */
  GET_SHMEM_CONFIG: 44,
} as const;

const reqNames = new Map<number, string>(Object.entries(Req).map(([k, v]) => [v, k]));
export function requestName(id: number): string {
  return reqNames.get(id) ?? `UNKNOWN(${id})`;
}

/** Back-end → front-end requests (on the SET_BACKEND_REQ_FD channel). */
export const BackendReq = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
  SHMEM_MAP: 9,
  SHMEM_UNMAP: 10,
  // Legacy virtio-fs DAX dialect (virtio-fs development QEMU, Kata, Cloud Hypervisor): the same
  // numbers as SHARED_OBJECT_* and SHMEM_MAP; only for front-ends configured to speak it.
  FS_MAP: 6,
  FS_UNMAP: 7,
  FS_SYNC: 8,
  FS_IO: 9,
} as const;

/** Protocol feature bit numbers. */
export const ProtoFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  NET_MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
  GET_VRING_BASE_INFLIGHT: 20,
  GPA_ADDRESSES: 21,
  /**
   * VIRTIO shared memory (GET_SHMEM_CONFIG, SHMEM_MAP/UNMAP), as merged in QEMU 11.1; the spec's
   * table names it SHMEM_MAP. Drafts of the series (and rust-vmm vhost <= 0.16) used bit 20 or 21.
   */
  SHMEM: 22,
} as const;

/** Virtio feature bit numbers used by the transport. */
export const VirtioFeature = {
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  /** VHOST_USER_F_PROTOCOL_FEATURES */
  PROTOCOL_FEATURES: 30,
  VERSION_1: 32,
} as const;

export function bit(n: number): bigint {
  return 1n << BigInt(n);
}

export function hasBit(mask: bigint, n: number): boolean {
  return (mask & bit(n)) !== 0n;
}

/** SET_VRING_KICK/CALL/ERR payload: queue index in bits 0–7, bit 8 = no fd (polling). */
export const VRING_IDX_MASK = 0xffn;
export const VRING_NOFD_MASK = 0x100n;

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

export interface Header {
  request: number;
  flags: number;
  size: number;
}

export interface Message extends Header {
  payload: Buffer;
  fds: number[];
}

export function decodeHeader(buf: Buffer): Header {
  if (buf.length < HEADER_SIZE) throw new ProtocolError(`short header (${buf.length} bytes)`);
  return { request: buf.readUInt32LE(0), flags: buf.readUInt32LE(4), size: buf.readUInt32LE(8) };
}

export function encodeMessage(request: number, flags: number, payload?: Buffer): Buffer {
  const len = payload ? payload.length : 0;
  const out = Buffer.alloc(HEADER_SIZE + len);
  out.writeUInt32LE(request >>> 0, 0);
  out.writeUInt32LE(flags >>> 0, 4);
  out.writeUInt32LE(len, 8);
  if (payload) payload.copy(out, HEADER_SIZE);
  return out;
}

export function encodeReply(request: number, payload?: Buffer): Buffer {
  return encodeMessage(request, VERSION | FLAG_REPLY, payload);
}

export function u64(v: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
}

function need(p: Buffer, n: number, what: string): void {
  if (p.length < n) throw new ProtocolError(`${what}: payload is ${p.length} bytes, need ${n}`);
}

export function decodeU64(p: Buffer, what = 'u64'): bigint {
  need(p, 8, what);
  return p.readBigUInt64LE(0);
}

export interface VringState {
  index: number;
  num: number;
}

export function decodeVringState(p: Buffer): VringState {
  need(p, 8, 'vring state');
  return { index: p.readUInt32LE(0), num: p.readUInt32LE(4) };
}

export function encodeVringState(s: VringState): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(s.index >>> 0, 0);
  b.writeUInt32LE(s.num >>> 0, 4);
  return b;
}

export interface VringAddr {
  index: number;
  flags: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}

export function decodeVringAddr(p: Buffer): VringAddr {
  need(p, 40, 'vring addr');
  return {
    index: p.readUInt32LE(0),
    flags: p.readUInt32LE(4),
    desc: p.readBigUInt64LE(8),
    used: p.readBigUInt64LE(16),
    avail: p.readBigUInt64LE(24),
    log: p.readBigUInt64LE(32),
  };
}

export function encodeVringAddr(a: VringAddr): Buffer {
  const b = Buffer.alloc(40);
  b.writeUInt32LE(a.index >>> 0, 0);
  b.writeUInt32LE(a.flags >>> 0, 4);
  b.writeBigUInt64LE(a.desc, 8);
  b.writeBigUInt64LE(a.used, 16);
  b.writeBigUInt64LE(a.avail, 24);
  b.writeBigUInt64LE(a.log, 32);
  return b;
}

export interface MemRegionDesc {
  guestPhys: bigint;
  size: bigint;
  userAddr: bigint;
  mmapOffset: bigint;
}

export const MEM_REGION_SIZE = 32;

function decodeRegionAt(p: Buffer, off: number): MemRegionDesc {
  return {
    guestPhys: p.readBigUInt64LE(off),
    size: p.readBigUInt64LE(off + 8),
    userAddr: p.readBigUInt64LE(off + 16),
    mmapOffset: p.readBigUInt64LE(off + 24),
  };
}

function encodeRegionAt(b: Buffer, off: number, r: MemRegionDesc): void {
  b.writeBigUInt64LE(r.guestPhys, off);
  b.writeBigUInt64LE(r.size, off + 8);
  b.writeBigUInt64LE(r.userAddr, off + 16);
  b.writeBigUInt64LE(r.mmapOffset, off + 24);
}

/** SET_MEM_TABLE: {u32 nregions, u32 padding, regions[nregions]}. */
export function decodeMemTable(p: Buffer): MemRegionDesc[] {
  need(p, 8, 'mem table');
  const n = p.readUInt32LE(0);
  if (n > MAX_TABLE_REGIONS) throw new ProtocolError(`mem table: ${n} regions (max ${MAX_TABLE_REGIONS})`);
  need(p, 8 + n * MEM_REGION_SIZE, 'mem table');
  const out: MemRegionDesc[] = [];
  for (let i = 0; i < n; i++) out.push(decodeRegionAt(p, 8 + i * MEM_REGION_SIZE));
  return out;
}

export function encodeMemTable(regions: MemRegionDesc[]): Buffer {
  const b = Buffer.alloc(8 + regions.length * MEM_REGION_SIZE);
  b.writeUInt32LE(regions.length, 0);
  regions.forEach((r, i) => encodeRegionAt(b, 8 + i * MEM_REGION_SIZE, r));
  return b;
}

/** ADD_MEM_REG / REM_MEM_REG: {u64 padding, region}. */
export function decodeSingleRegion(p: Buffer): MemRegionDesc {
  need(p, 8 + MEM_REGION_SIZE, 'memory region');
  return decodeRegionAt(p, 8);
}

export function encodeSingleRegion(r: MemRegionDesc): Buffer {
  const b = Buffer.alloc(8 + MEM_REGION_SIZE);
  encodeRegionAt(b, 8, r);
  return b;
}

export const CONFIG_HEADER_SIZE = 12;

export interface ConfigMsg {
  offset: number;
  size: number;
  flags: number;
  data: Buffer;
}

/** GET_CONFIG / SET_CONFIG: {u32 offset, u32 size, u32 flags, u8 payload[size]}. */
export function decodeConfig(p: Buffer): ConfigMsg {
  need(p, CONFIG_HEADER_SIZE, 'config');
  const offset = p.readUInt32LE(0);
  const size = p.readUInt32LE(4);
  const flags = p.readUInt32LE(8);
  if (size > MAX_CONFIG_SIZE) throw new ProtocolError(`config: size ${size} > ${MAX_CONFIG_SIZE}`);
  need(p, CONFIG_HEADER_SIZE + size, 'config');
  return { offset, size, flags, data: Buffer.from(p.subarray(CONFIG_HEADER_SIZE, CONFIG_HEADER_SIZE + size)) };
}

export function encodeConfig(c: ConfigMsg): Buffer {
  const b = Buffer.alloc(CONFIG_HEADER_SIZE + c.data.length);
  b.writeUInt32LE(c.offset >>> 0, 0);
  b.writeUInt32LE(c.data.length, 4);
  b.writeUInt32LE(c.flags >>> 0, 8);
  c.data.copy(b, CONFIG_HEADER_SIZE);
  return b;
}

/** SHMEM_MAP / SHMEM_UNMAP payload (40 bytes). */
export interface ShmemMapMsg {
  shmid: number;
  fdOffset: bigint;
  shmOffset: bigint;
  len: bigint;
  flags: bigint;
}

/** SHMEM_MAP `flags` bit 0 (VHOST_USER_FLAG_MAP_RW): 1 = read-write, 0 = read-only. */
export const SHMEM_MAP_RW = 1n;
export const SHMEM_MAP_READ_ONLY = 0n;
export const SHMEM_MAP_SIZE = 40;

export function encodeShmemMap(m: ShmemMapMsg): Buffer {
  const b = Buffer.alloc(SHMEM_MAP_SIZE);
  b.writeUInt8(m.shmid & 0xff, 0);
  b.writeBigUInt64LE(m.fdOffset, 8);
  b.writeBigUInt64LE(m.shmOffset, 16);
  b.writeBigUInt64LE(m.len, 24);
  b.writeBigUInt64LE(m.flags, 32);
  return b;
}

export function decodeShmemMap(p: Buffer): ShmemMapMsg {
  need(p, SHMEM_MAP_SIZE, 'shmem map');
  return {
    shmid: p.readUInt8(0),
    fdOffset: p.readBigUInt64LE(8),
    shmOffset: p.readBigUInt64LE(16),
    len: p.readBigUInt64LE(24),
    flags: p.readBigUInt64LE(32),
  };
}

/** GET_SHMEM_CONFIG reply: {u32 nregions, u32 padding, u64 memory_sizes[256]}, index = shmid. */
export const SHMEM_MAX_REGIONS = 256;
export const SHMEM_CONFIG_SIZE = 8 + 8 * SHMEM_MAX_REGIONS;

/**
 * `sizes[shmid]` is region shmid's size (0 = unused). nregions counts the regions in use: QEMU
 * 11.1 scans the array until it has seen that many non-zero sizes.
 */
export function encodeShmemConfig(sizes: readonly bigint[]): Buffer {
  if (sizes.length > SHMEM_MAX_REGIONS) throw new ProtocolError(`shmem config: ${sizes.length} regions (max ${SHMEM_MAX_REGIONS})`);
  const b = Buffer.alloc(SHMEM_CONFIG_SIZE);
  let n = 0;
  sizes.forEach((size, shmid) => {
    if (size < 0n) throw new ProtocolError(`shmem region ${shmid}: negative size`);
    if (size > 0n) n++;
    b.writeBigUInt64LE(size, 8 + 8 * shmid);
  });
  b.writeUInt32LE(n, 0);
  return b;
}

export function decodeShmemConfig(p: Buffer): bigint[] {
  need(p, SHMEM_CONFIG_SIZE, 'shmem config');
  const n = p.readUInt32LE(0);
  if (n > SHMEM_MAX_REGIONS) throw new ProtocolError(`shmem config: ${n} regions`);
  const sizes: bigint[] = [];
  for (let i = 0; i < SHMEM_MAX_REGIONS; i++) sizes.push(p.readBigUInt64LE(8 + 8 * i));
  while (sizes.length && sizes[sizes.length - 1] === 0n) sizes.pop();
  return sizes;
}

/** Legacy FS_MAP / FS_UNMAP: four arrays of 8 u64 (fd_offset, cache_offset, len, flags). */
export const FS_MAP_ENTRIES = 8;
/** FS_MAP entry flags: bit 0 read, bit 1 write. */
export const FS_MAP_R = 1n;
export const FS_MAP_W = 2n;
export const FS_MAP_SIZE = 4 * 8 * FS_MAP_ENTRIES;

export interface FsMapEntry {
  fdOffset: bigint;
  cacheOffset: bigint;
  len: bigint;
  flags: bigint;
}

export function encodeFsMap(entries: FsMapEntry[]): Buffer {
  if (entries.length > FS_MAP_ENTRIES) throw new ProtocolError(`FS_MAP: at most ${FS_MAP_ENTRIES} entries`);
  const b = Buffer.alloc(FS_MAP_SIZE);
  entries.forEach((e, i) => {
    b.writeBigUInt64LE(e.fdOffset, i * 8);
    b.writeBigUInt64LE(e.cacheOffset, 64 + i * 8);
    b.writeBigUInt64LE(e.len, 128 + i * 8);
    b.writeBigUInt64LE(e.flags, 192 + i * 8);
  });
  return b;
}

export function decodeFsMap(p: Buffer): FsMapEntry[] {
  need(p, FS_MAP_SIZE, 'fs map');
  const out: FsMapEntry[] = [];
  for (let i = 0; i < FS_MAP_ENTRIES; i++) {
    const len = p.readBigUInt64LE(128 + i * 8);
    if (len === 0n) continue;
    out.push({ fdOffset: p.readBigUInt64LE(i * 8), cacheOffset: p.readBigUInt64LE(64 + i * 8), len, flags: p.readBigUInt64LE(192 + i * 8) });
  }
  return out;
}

/**
 * Incremental framer for a stream socket: feed it what recvmsg returned (bytes and fds), take
 * whole messages out. Fds are attached to the message whose bytes arrived with them.
 */
export class MessageFramer {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private pendingFds: number[] = [];

  push(data: Buffer, fds: number[]): void {
    if (data.length) {
      this.chunks.push(Buffer.from(data));
      this.buffered += data.length;
    }
    if (fds.length) this.pendingFds.push(...fds);
  }

  /** The next whole message, or null. Throws ProtocolError on a malformed header. */
  next(): Message | null {
    if (this.buffered < HEADER_SIZE) return null;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = [all];
    const h = decodeHeader(all);
    if ((h.flags & FLAG_VERSION_MASK) !== VERSION) throw new ProtocolError(`bad version in flags 0x${h.flags.toString(16)}`);
    if (h.size > MAX_PAYLOAD) throw new ProtocolError(`payload of ${h.size} bytes for ${requestName(h.request)} is too large`);
    if (this.buffered < HEADER_SIZE + h.size) return null;
    const payload = Buffer.from(all.subarray(HEADER_SIZE, HEADER_SIZE + h.size));
    const rest = all.subarray(HEADER_SIZE + h.size);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    const fds = this.pendingFds;
    this.pendingFds = [];
    return { ...h, payload, fds };
  }

  /**
   * How many bytes complete the message being assembled. Reading exactly this much keeps fds
   * with their own message (a stream socket may otherwise join several messages in one read).
   */
  wanted(): number {
    if (this.buffered < HEADER_SIZE) return HEADER_SIZE - this.buffered;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = [all];
    const size = all.readUInt32LE(8);
    if (size > MAX_PAYLOAD) return 0;
    return Math.max(0, HEADER_SIZE + size - this.buffered);
  }

  /** Fds received but not yet handed out (to close on teardown). */
  drainFds(): number[] {
    const f = this.pendingFds;
    this.pendingFds = [];
    return f;
  }

  get pendingBytes(): number {
    return this.buffered;
  }
}
