// Hand-encoding of FUSE requests and decoding of replies, for tests that drive a FuseServer
// directly (no kernel). Layouts per Linux include/uapi/linux/fuse.h.
import type { DaxWindowInfo } from '../../src/fuse/filesystem.js';
import { ReplyWriter } from '../../src/fuse/reply.js';
import type { FuseServer, RequestOrigin } from '../../src/fuse/server.js';

/**
 * Serves one request into a buffer of the largest reply size, as a transport would; returns the
 * reply (header first, as one buffer) or null when none is due.
 */
export async function serveOnce<W extends DaxWindowInfo>(server: FuseServer<W>, req: Buffer, origin?: RequestOrigin<W>): Promise<Buffer[] | null> {
  const out = new ReplyWriter([Buffer.alloc(server.maxReplyBytes)]);
  await server.serve(req, out, origin);
  return out.length > 0 ? [out.bytes!] : null;
}

export interface ReqHeader {
  opcode: number;
  unique?: bigint;
  nodeid?: number | bigint;
  uid?: number;
  gid?: number;
  pid?: number;
  /** Override the len field (for malformed-input tests). */
  len?: number;
}

let uniqueCounter = 1n;

export function request(h: ReqHeader, ...args: Buffer[]): Buffer {
  const body = Buffer.concat(args);
  const b = Buffer.alloc(40 + body.length);
  b.writeUInt32LE(h.len ?? b.length, 0);
  b.writeUInt32LE(h.opcode, 4);
  b.writeBigUInt64LE(h.unique ?? uniqueCounter++, 8);
  b.writeBigUInt64LE(BigInt(h.nodeid ?? 0), 16);
  b.writeUInt32LE(h.uid ?? 0, 24);
  b.writeUInt32LE(h.gid ?? 0, 28);
  b.writeUInt32LE(h.pid ?? 1, 32);
  body.copy(b, 40);
  return b;
}

export function u32s(...v: number[]): Buffer {
  const b = Buffer.alloc(v.length * 4);
  v.forEach((x, i) => b.writeUInt32LE(x >>> 0, i * 4));
  return b;
}

export function u64s(...v: Array<number | bigint>): Buffer {
  const b = Buffer.alloc(v.length * 8);
  v.forEach((x, i) => b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(x)), i * 8));
  return b;
}

export function cstr(s: string | Buffer): Buffer {
  return Buffer.concat([Buffer.from(s), Buffer.from([0])]);
}

export function initIn(minor = 41, flags = 0xffffffff, flags2 = 0xffffffff, maxReadahead = 131072): Buffer {
  const b = Buffer.alloc(64);
  b.writeUInt32LE(7, 0);
  b.writeUInt32LE(minor, 4);
  b.writeUInt32LE(maxReadahead, 8);
  b.writeUInt32LE(flags >>> 0, 12);
  b.writeUInt32LE(flags2 >>> 0, 16);
  return b;
}

/** fuse_read_in (also READDIR/READDIRPLUS). */
export function readIn(fh: number, offset: number | bigint, size: number): Buffer {
  return Buffer.concat([u64s(fh, offset), u32s(size, 0), u64s(0), u32s(0, 0)]);
}

export interface Reply {
  len: number;
  error: number;
  unique: bigint;
  body: Buffer;
}

export function parseReply(iov: Buffer[] | null): Reply {
  if (!iov) throw new Error('no reply');
  const all = Buffer.concat(iov);
  if (all.length < 16) throw new Error('reply shorter than fuse_out_header');
  const r = { len: all.readUInt32LE(0), error: all.readInt32LE(4), unique: all.readBigUInt64LE(8), body: all.subarray(16) };
  if (r.len !== all.length) throw new Error(`reply len ${r.len} != ${all.length}`);
  return r;
}

export interface Attr {
  ino: number; size: number; blocks: number; mtime: number; mtimensec: number; mode: number; nlink: number;
  uid: number; gid: number; rdev: number; blksize: number; flags: number;
}

export function parseAttr(b: Buffer, off = 0): Attr {
  return {
    ino: Number(b.readBigUInt64LE(off)), size: Number(b.readBigUInt64LE(off + 8)), blocks: Number(b.readBigUInt64LE(off + 16)),
    mtime: Number(b.readBigUInt64LE(off + 32)), mtimensec: b.readUInt32LE(off + 52), mode: b.readUInt32LE(off + 60),
    nlink: b.readUInt32LE(off + 64), uid: b.readUInt32LE(off + 68), gid: b.readUInt32LE(off + 72), rdev: b.readUInt32LE(off + 76),
    blksize: b.readUInt32LE(off + 80), flags: b.readUInt32LE(off + 84),
  };
}

export interface Entry {
  nodeid: number; generation: number; entryValid: number; attrValid: number; attr: Attr;
}

export function parseEntry(b: Buffer, off = 0): Entry {
  return {
    nodeid: Number(b.readBigUInt64LE(off)), generation: Number(b.readBigUInt64LE(off + 8)),
    entryValid: Number(b.readBigUInt64LE(off + 16)), attrValid: Number(b.readBigUInt64LE(off + 24)), attr: parseAttr(b, off + 40),
  };
}

export interface Dirent {
  ino: number; off: number; type: number; name: string; entry?: Entry;
}

export function parseDirents(b: Buffer, plus: boolean): Dirent[] {
  const out: Dirent[] = [];
  let p = 0;
  while (p < b.length) {
    let entry: Entry | undefined;
    if (plus) {
      entry = parseEntry(b, p);
      p += 128;
    }
    const namelen = b.readUInt32LE(p + 16);
    out.push({ ino: Number(b.readBigUInt64LE(p)), off: Number(b.readBigUInt64LE(p + 8)), type: b.readUInt32LE(p + 20), name: b.subarray(p + 24, p + 24 + namelen).toString(), entry });
    p += (24 + namelen + 7) & ~7;
  }
  return out;
}
