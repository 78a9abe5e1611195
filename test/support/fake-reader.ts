// An in-memory ErofsReader for unit tests of the FUSE server and the VFS tree (no image needed).
import { ErofsError, type DirEntry, type ErofsReader, type FileType, type InodeAttr, type PlainExtent, type SuperblockSummary, type Xattr } from '../../src/erofs/api.js';

export type FakeNode =
  | { type: 'file'; data: Buffer; mode?: number; xattrs?: Record<string, Buffer>; holes?: Array<[number, number]> }
  | { type: 'dir'; children: Record<string, FakeNode>; mode?: number; xattrs?: Record<string, Buffer> }
  | { type: 'symlink'; target: string }
  | { type: 'chardev' | 'blockdev'; rdev: number }
  | { type: 'fifo' | 'socket' };

const TYPE_BITS: Record<FileType, number> = {
  file: 0o100000, dir: 0o040000, symlink: 0o120000, chardev: 0o020000, blockdev: 0o060000, fifo: 0o010000, socket: 0o140000,
};

interface Inode {
  nid: number;
  node: FakeNode;
  parent: number;
  entries?: Array<{ name: Buffer; nid: number }>;
}

export class FakeReader implements ErofsReader {
  readonly superblock: SuperblockSummary;
  readonly rootNid: number;
  private readonly inodes = new Map<number, Inode>();
  /** Calls per method, for tests that check what reached the reader. */
  readonly calls: Record<string, number> = {};
  private nextNid: number;

  constructor(root: FakeNode & { type: 'dir' }, opts: { rootNid?: number } = {}) {
    this.rootNid = opts.rootNid ?? 36;
    this.nextNid = this.rootNid;
    this.add(root, -1);
    this.superblock = {
      blockSize: 4096, featureCompat: 0, featureIncompat: 0, features: [], compressionAlgorithms: [],
      inodeCount: this.inodes.size, blocks: 1024, rootNid: this.rootNid, uuid: '', volumeName: '', extraDevices: 0,
      buildTimeSec: 1600000000, buildTimeNsec: 0,
    };
  }

  private add(node: FakeNode, parent: number): number {
    const nid = this.nextNid;
    this.nextNid += 2;
    const ino: Inode = { nid, node, parent: parent < 0 ? nid : parent };
    this.inodes.set(nid, ino);
    if (node.type === 'dir') {
      const kids = Object.keys(node.children).sort().map((name) => ({ name: Buffer.from(name), nid: this.add(node.children[name]!, nid) }));
      ino.entries = [{ name: Buffer.from('.'), nid }, { name: Buffer.from('..'), nid: ino.parent }, ...kids];
    }
    return nid;
  }

  private get(nid: number): Inode {
    const i = this.inodes.get(nid);
    if (!i) throw new ErofsError('EIO', `bad nid ${nid}`);
    return i;
  }

  private count(m: string): void {
    this.calls[m] = (this.calls[m] ?? 0) + 1;
  }

  getAttr(nid: number): InodeAttr {
    this.count('getAttr');
    const { node } = this.get(nid);
    const perm = 'mode' in node && node.mode !== undefined ? node.mode : node.type === 'dir' ? 0o755 : 0o644;
    const size = node.type === 'file' ? node.data.length : node.type === 'symlink' ? Buffer.byteLength(node.target) : 0;
    let nlink = 1;
    if (node.type === 'dir') nlink = 2 + Object.values(node.children).filter((c) => c.type === 'dir').length;
    return {
      nid, type: node.type, mode: TYPE_BITS[node.type] | perm, uid: 1000, gid: 100, nlink, size,
      mtimeSec: 1600000000 + nid, mtimeNsec: 123456789, rdev: 'rdev' in node ? node.rdev : 0,
      blocks: Math.ceil(size / 4096) * 8,
    };
  }

  lookup(dirNid: number, name: Buffer | string): number | undefined {
    this.count('lookup');
    const d = this.get(dirNid);
    if (!d.entries) throw new ErofsError('ENOTDIR', 'not a directory');
    const n = typeof name === 'string' ? Buffer.from(name) : name;
    return d.entries.find((e) => e.name.equals(n))?.nid;
  }

  readdir(dirNid: number, offset: number, max: number): DirEntry[] {
    this.count('readdir');
    const d = this.get(dirNid);
    if (!d.entries) throw new ErofsError('ENOTDIR', 'not a directory');
    if (offset < 0 || offset > d.entries.length) throw new ErofsError('EINVAL', 'bad offset');
    return d.entries.slice(offset, offset + max).map((e, i) => ({
      name: e.name, nid: e.nid, type: this.get(e.nid).node.type, nextOffset: offset + i + 1,
    }));
  }

  read(nid: number, offset: number, length: number): Buffer {
    this.count('read');
    const { node } = this.get(nid);
    if (node.type !== 'file') throw new ErofsError('EISDIR', 'not a file');
    return node.data.subarray(Math.min(offset, node.data.length), Math.min(offset + length, node.data.length));
  }

  readlink(nid: number): Buffer {
    const { node } = this.get(nid);
    if (node.type !== 'symlink') throw new ErofsError('EINVAL', 'not a symlink');
    return Buffer.from(node.target);
  }

  listXattrs(nid: number): Xattr[] {
    const { node } = this.get(nid);
    const x = 'xattrs' in node && node.xattrs ? node.xattrs : {};
    return Object.entries(x).map(([name, value]) => ({ name, value }));
  }

  getXattr(nid: number, name: string): Buffer {
    const v = this.listXattrs(nid).find((x) => x.name === name);
    if (!v) throw new ErofsError('ENODATA', 'no such xattr');
    return v.value;
  }

  fingerprint(): Buffer | undefined {
    return undefined;
  }

  /** No image behind the content: nothing is read in place, so reads count as decoded. */
  storedPlain(): boolean {
    return false;
  }

  plainExtents(): PlainExtent[] | undefined {
    return undefined;
  }

  seek(nid: number, offset: number, whence: 'data' | 'hole'): number {
    const { node } = this.get(nid);
    if (node.type !== 'file') throw new ErofsError('EINVAL', 'not a file');
    const size = node.data.length;
    const holes = node.holes ?? [];
    const inHole = (o: number) => holes.find(([s, e]) => o >= s && o < e);
    if (whence === 'hole') {
      let o = offset;
      const h = inHole(o);
      if (h) return o;
      const next = holes.filter(([s]) => s > o).sort((a, b) => a[0] - b[0])[0];
      o = next ? next[0] : size;
      return o;
    }
    const h = inHole(offset);
    if (!h) return offset;
    if (h[1] >= size) return size; // no data after offset: the tree answers ENXIO
    return h[1];
  }

  close(): void {}
}
