// An in-memory ErofsReader for unit tests of the layers above the reader (share, vfs): files
// with given contents, optional digest claims and optional plain extents in a real file.

import { ErofsError, type DirEntry, type ErofsReader, type InodeAttr, type PlainExtent, type SuperblockSummary, type Xattr } from '../../src/erofs/api.js';

export interface MemoryFile {
  name: string;
  content: Buffer;
  /** Raw digest xattr value the image "claims" (e.g. "sha256:" + 32 bytes). */
  fingerprint?: Buffer;
  xattrs?: Xattr[];
  /** Where the content lies uncompressed in a device file (for image-range backings). */
  plain?: { device: number; physical: number };
  /** Several uncompressed extents instead (e.g. a page-aligned body and an inline tail). */
  extents?: PlainExtent[];
}

export class MemoryReader implements ErofsReader {
  readonly rootNid = 1;
  /** Bytes returned by read(), so tests can tell whether content was (re-)read. */
  bytesRead = 0;
  private readonly files = new Map<number, MemoryFile>();
  readonly superblock: SuperblockSummary = {
    blockSize: 4096, featureCompat: 0, featureIncompat: 0, features: [], compressionAlgorithms: [],
    inodeCount: 0, blocks: 0, rootNid: 1, uuid: '', volumeName: '', extraDevices: 0, buildTimeSec: 0, buildTimeNsec: 0,
  };

  constructor(files: MemoryFile[]) {
    files.forEach((f, i) => this.files.set(i + 2, f));
  }

  nidOf(name: string): number {
    for (const [nid, f] of this.files) if (f.name === name) return nid;
    throw new Error(`no file ${name}`);
  }

  private file(nid: number): MemoryFile {
    const f = this.files.get(nid);
    if (!f) throw new ErofsError('EIO', `bad nid ${nid}`);
    return f;
  }

  getAttr(nid: number): InodeAttr {
    if (nid === this.rootNid) {
      return { nid, type: 'dir', mode: 0o40755, uid: 0, gid: 0, nlink: 2, size: 0, mtimeSec: 0, mtimeNsec: 0, rdev: 0, blocks: 0 };
    }
    const f = this.file(nid);
    return {
      nid, type: 'file', mode: 0o100644, uid: 0, gid: 0, nlink: 1, size: f.content.length,
      mtimeSec: 0, mtimeNsec: 0, rdev: 0, blocks: Math.ceil(f.content.length / 512),
    };
  }

  lookup(dirNid: number, name: Buffer | string): number | undefined {
    if (dirNid !== this.rootNid) throw new ErofsError('ENOTDIR', 'not a directory');
    for (const [nid, f] of this.files) if (f.name === name.toString()) return nid;
    return undefined;
  }

  readdir(dirNid: number, offset: number, max: number): DirEntry[] {
    if (dirNid !== this.rootNid) throw new ErofsError('ENOTDIR', 'not a directory');
    const all: DirEntry[] = [
      { name: Buffer.from('.'), nid: 1, type: 'dir', nextOffset: 1 },
      { name: Buffer.from('..'), nid: 1, type: 'dir', nextOffset: 2 },
      ...[...this.files].map(([nid, f], i) => ({ name: Buffer.from(f.name), nid, type: 'file' as const, nextOffset: i + 3 })),
    ];
    return all.slice(offset, offset + max);
  }

  read(nid: number, offset: number, length: number): Buffer {
    const c = this.file(nid).content;
    const out = Buffer.from(c.subarray(Math.min(offset, c.length), Math.min(offset + length, c.length)));
    this.bytesRead += out.length;
    return out;
  }

  readlink(): Buffer {
    throw new ErofsError('EINVAL', 'not a symlink');
  }

  listXattrs(nid: number): Xattr[] {
    return nid === this.rootNid ? [] : (this.file(nid).xattrs ?? []);
  }

  getXattr(nid: number, name: string): Buffer {
    const x = this.listXattrs(nid).find((e) => e.name === name);
    if (!x) throw new ErofsError('ENODATA', 'no such xattr');
    return x.value;
  }

  fingerprint(nid: number): Buffer | undefined {
    return this.file(nid).fingerprint;
  }

  storedPlain(nid: number): boolean {
    const f = this.file(nid);
    return f.extents !== undefined || f.plain !== undefined;
  }

  plainExtents(nid: number): PlainExtent[] | undefined {
    const f = this.file(nid);
    if (f.extents) return f.extents.map((e) => ({ ...e }));
    return f.plain ? [{ device: f.plain.device, physical: f.plain.physical, logical: 0, length: f.content.length }] : undefined;
  }

  seek(nid: number, offset: number, whence: 'data' | 'hole'): number {
    const size = this.file(nid).content.length;
    if (offset >= size) throw new ErofsError('EINVAL', 'past EOF');
    return whence === 'data' ? offset : size;
  }

  close(): void {}
}
