// Superblock parsing: magic, crc32c checksum (SB_CHKSUM), features, 48-bit fields, metabox,
// compression configurations and the device table.
import { ErofsError } from './api.js';
import type { SuperblockDetails, SuperblockSummary } from './api.js';
import {
  ALGORITHM_MIN_KERNEL, COMPAT, COMPAT_NAMES, COMPRESSION_NAMES, INCOMPAT_MIN_KERNEL, DEVT_SLOT_SIZE, INCOMPAT, INCOMPAT_NAMES, KNOWN_INCOMPAT,
  SB_EXTSLOT_SIZE, SUPER_BASE_SIZE, SUPER_MAGIC, SUPER_OFFSET, decodeNid, u64,
} from './format.js';

let crcTable: Uint32Array | undefined;
function table(): Uint32Array {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      let c = i;
      for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
      crcTable[i] = c >>> 0;
    }
  }
  return crcTable;
}

/** CRC32C (Castagnoli), raw update form as the kernel's crc32c(seed, data, len): no final xor. */
export function crc32c(seed: number, data: Uint8Array): number {
  const t = table();
  let c = seed >>> 0;
  for (let i = 0; i < data.length; i++) c = t[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

export interface DeviceSlot {
  tag: Buffer;
  blocks: number;
  /** Unified starting block of this device in the primary address space (0 = none). */
  uniaddr: number;
}

export interface Superblock {
  blockBits: number;
  blockSize: number;
  featureCompat: number;
  featureIncompat: number;
  sbSize: number;
  checksum: number;
  rootNid: number;
  inodeCount: number;
  epoch: number;
  fixedNsec: number;
  buildTime: number;
  blocks: number;
  metaBlkAddr: number;
  xattrBlkAddr: number;
  uuid: Buffer;
  volumeName: string;
  /** Bitmap of compression algorithms (bit = on-disk id), from COMPR_CFGS or implied lz4. */
  availableComprAlgs: number;
  /** lz4_max_distance when COMPR_CFGS is off. */
  lz4MaxDistance: number;
  /** Raw per-algorithm configuration records (COMPR_CFGS), indexed by on-disk algorithm id. */
  comprCfgs: (Buffer | undefined)[];
  extraDevices: number;
  devtSlotOff: number;
  deviceIdMask: number;
  devices: DeviceSlot[];
  dirBlkBits: number;
  xattrPrefixCount: number;
  xattrPrefixStart: number;
  packedNid: number;
  metaboxNid: number;
  xattrFilterReserved: number;
  /** Index into the long prefix table (without the 0x80 bit), when ISHARE_XATTRS is set. */
  ishareXattrPrefixId: number | undefined;
  is48bit: boolean;
  hasMetabox: boolean;
}

export function hasCompat(sb: Superblock, bit: number): boolean {
  return (sb.featureCompat & bit) !== 0;
}
export function hasIncompat(sb: Superblock, bit: number): boolean {
  return (sb.featureIncompat & bit) !== 0;
}

/**
 * Parses the superblock from the first bytes of the primary device. `head` must hold at least
 * min(deviceSize, SUPER_OFFSET + 4096) bytes; `readAt` reads further primary-device bytes
 * (compression configs, device table).
 */
export function parseSuperblock(head: Buffer, readAt: (pos: number, len: number) => Buffer): Superblock {
  if (head.length < SUPER_OFFSET + SUPER_BASE_SIZE) throw new ErofsError('EINVAL', 'image too small for an EROFS superblock');
  const d = head.subarray(SUPER_OFFSET);
  const magic = d.readUInt32LE(0);
  if (magic !== SUPER_MAGIC) throw new ErofsError('EINVAL', `not an EROFS image (magic 0x${magic.toString(16)})`);
  const checksum = d.readUInt32LE(4);
  const featureCompat = d.readUInt32LE(8);
  const blockBits = d[12]!;
  if (blockBits < 9 || blockBits > 12) {
    throw new ErofsError('EOPNOTSUPP', `block size 2^${blockBits} is not supported (512..4096)`);
  }
  const blockSize = 1 << blockBits;
  const sbSize = SUPER_BASE_SIZE + d[13]! * SB_EXTSLOT_SIZE;
  if (SUPER_OFFSET + sbSize > head.length) throw new ErofsError('EIO', `invalid sb_extslots ${d[13]}`);
  const sbd = Buffer.alloc(Math.max(sbSize, 256));
  d.copy(sbd, 0, 0, sbSize);

  if (featureCompat & COMPAT.SB_CHKSUM) {
    let len = blockSize;
    if (len > SUPER_OFFSET) len -= SUPER_OFFSET;
    if (SUPER_OFFSET + len > head.length) throw new ErofsError('EIO', 'image too small for the superblock checksum');
    const region = Buffer.from(d.subarray(0, len));
    region.writeUInt32LE(0, 4);
    const crc = crc32c(0xffffffff, region);
    if (crc !== checksum) {
      throw new ErofsError('EIO', `superblock checksum mismatch: stored 0x${checksum.toString(16)}, computed 0x${crc.toString(16)}`);
    }
  }

  const featureIncompat = d.readUInt32LE(80);
  const unknown = (featureIncompat & ~KNOWN_INCOMPAT) >>> 0;
  if (unknown) {
    const bits: number[] = [];
    for (let b = 0; b < 32; b++) if (unknown & (1 << b)) bits.push(b);
    throw new ErofsError('EOPNOTSUPP',
      `unknown incompatible feature bit${bits.length > 1 ? 's' : ''} ${bits.join(', ')} (0x${unknown.toString(16)})`);
  }

  const is48bit = (featureIncompat & INCOMPAT.B48BIT) !== 0;
  const hasMetabox = (featureIncompat & INCOMPAT.METABOX) !== 0;
  let blocks = sbd.readUInt32LE(36);
  let rootNid: number | undefined = sbd.readUInt16LE(14);
  const root8 = decodeNid(sbd, 112);
  if (is48bit && (sbd.readUInt32LE(112) !== 0 || sbd.readUInt32LE(116) !== 0)) {
    rootNid = root8;
    blocks += sbd.readUInt16LE(14) * 0x100000000;
  }
  if (rootNid === undefined) throw new ErofsError('EIO', 'root nid out of range');
  const inodeCount = u64(sbd, 16) ?? Number.MAX_SAFE_INTEGER;
  const epoch = readS64(sbd, 24);
  const fixedNsec = sbd.readUInt32LE(32);
  const metaBlkAddr = sbd.readUInt32LE(40);
  const xattrBlkAddr = sbd.readUInt32LE(44);
  const uuid = Buffer.from(sbd.subarray(48, 64));
  const vn = sbd.subarray(64, 80);
  const nul = vn.indexOf(0);
  const volumeName = vn.subarray(0, nul < 0 ? 16 : nul).toString('latin1');
  const u1 = sbd.readUInt16LE(84);
  const extraDevices = sbd.readUInt16LE(86);
  const devtSlotOff = sbd.readUInt16LE(88);
  const dirBlkBits = sbd[90]!;
  if (dirBlkBits !== 0) throw new ErofsError('EOPNOTSUPP', `dirblkbits ${dirBlkBits} is not supported`);
  const xattrPrefixCount = sbd[91]!;
  const xattrPrefixStart = sbd.readUInt32LE(92);
  const packedRaw = sbd.readUInt32LE(100);
  if (packedRaw & 0x80000000) throw new ErofsError('EIO', 'packed nid points into the metabox');
  const packedNid = u64(sbd, 96);
  if (packedNid === undefined) throw new ErofsError('EIO', 'packed nid out of range');
  const xattrFilterReserved = sbd[104]!;
  const ishareId = sbd[105]!;
  const buildTime = sbd.readUInt32LE(108);
  let metaboxNid = 0;
  if (hasMetabox) {
    if (sbSize <= 128) throw new ErofsError('EIO', 'metabox feature without the extended superblock');
    if (sbd.readUInt32LE(132) & 0x80000000) throw new ErofsError('EIO', 'metabox nid points into itself');
    const m = u64(sbd, 128);
    if (m === undefined) throw new ErofsError('EIO', 'metabox nid out of range');
    metaboxNid = m;
  }
  let ishareXattrPrefixId: number | undefined;
  if (featureCompat & COMPAT.ISHARE_XATTRS) {
    if (ishareId >= xattrPrefixCount) throw new ErofsError('EIO', `invalid ishare xattr prefix id ${ishareId}`);
    ishareXattrPrefixId = ishareId;
  }

  // Compression configurations.
  let availableComprAlgs = 0;
  let lz4MaxDistance = 0;
  const comprCfgs: (Buffer | undefined)[] = [];
  if (featureIncompat & INCOMPAT.COMPR_CFGS) {
    availableComprAlgs = u1;
    if (availableComprAlgs & ~0xf) {
      throw new ErofsError('EOPNOTSUPP', `unknown compression algorithms 0x${availableComprAlgs.toString(16)}`);
    }
    let pos = SUPER_OFFSET + sbSize;
    for (let alg = 0; alg < 4; alg++) {
      if (!(availableComprAlgs & (1 << alg))) continue;
      pos = (pos + 3) & ~3;
      const len = readAt(pos, 2).readUInt16LE(0);
      if (len === 0 || len > 256) throw new ErofsError('EIO', `bad compression config length ${len}`);
      comprCfgs[alg] = Buffer.from(readAt(pos + 2, len));
      pos += 2 + len;
    }
  } else {
    lz4MaxDistance = u1;
    if (featureIncompat & INCOMPAT.ZERO_PADDING) availableComprAlgs = 1;
  }

  // Device table.
  const devices: DeviceSlot[] = [];
  let deviceIdMask = 0;
  const ondiskExtra = featureIncompat & INCOMPAT.DEVICE_TABLE ? extraDevices : 0;
  if (ondiskExtra) {
    let m = 1;
    while (m < ondiskExtra + 1) m <<= 1;
    deviceIdMask = m - 1;
    let pos = devtSlotOff * DEVT_SLOT_SIZE;
    for (let i = 0; i < ondiskExtra; i++, pos += DEVT_SLOT_SIZE) {
      const s = readAt(pos, DEVT_SLOT_SIZE);
      const blocksLo = s.readUInt32LE(64);
      const uniLo = s.readUInt32LE(68);
      const bHi = is48bit ? s.readUInt16LE(72) : 0;
      const uHi = is48bit ? s.readUInt16LE(74) : 0;
      devices.push({
        tag: Buffer.from(s.subarray(0, 64)),
        blocks: bHi * 0x100000000 + blocksLo,
        uniaddr: uHi * 0x100000000 + uniLo,
      });
    }
  }

  return {
    blockBits, blockSize, featureCompat, featureIncompat, sbSize, checksum, rootNid, inodeCount,
    epoch, fixedNsec, buildTime, blocks, metaBlkAddr, xattrBlkAddr, uuid, volumeName,
    availableComprAlgs, lz4MaxDistance, comprCfgs, extraDevices: ondiskExtra, devtSlotOff,
    deviceIdMask, devices, dirBlkBits, xattrPrefixCount, xattrPrefixStart, packedNid, metaboxNid,
    xattrFilterReserved, ishareXattrPrefixId, is48bit, hasMetabox,
  };
}

function readS64(b: Buffer, off: number): number {
  return Number(b.readBigInt64LE(off));
}

function uuidString(u: Buffer): string {
  const h = u.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function featureNames(sb: Superblock): string[] {
  const out: string[] = [];
  for (const [bit, name] of COMPAT_NAMES) if (sb.featureCompat & bit) out.push(name);
  for (const [bit, name] of INCOMPAT_NAMES) if (sb.featureIncompat & bit) out.push(name);
  return out;
}

/** Superblock fields for inspection (dump.erofs -s and more). */
export function details(sb: Superblock): SuperblockDetails {
  let minKernel = 0;
  for (const [bit, v] of INCOMPAT_MIN_KERNEL) if (sb.featureIncompat & bit) minKernel = Math.max(minKernel, v);
  for (let i = 0; i < ALGORITHM_MIN_KERNEL.length; i++) {
    if (sb.availableComprAlgs & (1 << i)) minKernel = Math.max(minKernel, ALGORITHM_MIN_KERNEL[i]!);
  }
  const tag = (t: Buffer): string => {
    const nul = t.indexOf(0);
    return t.subarray(0, nul < 0 ? t.length : nul).toString('latin1');
  };
  return {
    metaBlkAddr: sb.metaBlkAddr,
    xattrBlkAddr: sb.xattrBlkAddr,
    sbSize: sb.sbSize,
    packedNid: sb.packedNid,
    metaboxNid: sb.metaboxNid,
    lz4MaxDistance: sb.lz4MaxDistance,
    compatNames: COMPAT_NAMES.filter(([bit]) => sb.featureCompat & bit).map(([, n]) => n),
    incompatNames: INCOMPAT_NAMES.filter(([bit]) => sb.featureIncompat & bit).map(([, n]) => n),
    minKernel: minKernel ? `${Math.floor(minKernel / 100)}.${minKernel % 100}` : undefined,
    devices: sb.devices.map((d, i) => ({ index: i + 1, tag: tag(d.tag), blocks: d.blocks, uniaddr: d.uniaddr })),
  };
}

export function summarize(sb: Superblock): SuperblockSummary {
  const algs: string[] = [];
  for (let i = 0; i < COMPRESSION_NAMES.length; i++) if (sb.availableComprAlgs & (1 << i)) algs.push(COMPRESSION_NAMES[i]!);
  return {
    blockSize: sb.blockSize,
    featureCompat: sb.featureCompat,
    featureIncompat: sb.featureIncompat,
    features: featureNames(sb),
    compressionAlgorithms: algs,
    inodeCount: sb.inodeCount,
    blocks: sb.blocks,
    rootNid: sb.rootNid,
    uuid: uuidString(sb.uuid),
    volumeName: sb.volumeName,
    extraDevices: sb.extraDevices,
    buildTimeSec: sb.epoch + sb.buildTime,
    buildTimeNsec: sb.fixedNsec,
  };
}
