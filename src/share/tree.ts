// The page-sharing layer as one guest's filesystem: the guest's ImageTree, with its shareable
// files read from their shared backing (one host copy per trust domain and fingerprint) and
// mapped into the guest's DAX window.
//
//  - FUSE_READ of a shareable file reads its backing; O_DIRECT handles and files without a
//    backing take the per-file path (the file's own image), counted per domain.
//  - FUSE_ATTR_DAX per inode follows the DAX policy (always | shared: files with a backing of at
//    least minSize | never), on connections that negotiated per-inode DAX.
//  - FUSE_SETUPMAPPING / REMOVEMAPPING map backings into the DaxWindow of the connection the
//    request came on; the window asks the VMM over the connection's back-end channel.
import type { InodeAttr } from '../erofs/api.js';
import { Errno, FUSE_SETUPMAPPING_FLAG_WRITE } from '../fuse/abi.js';
import { FuseError, type MaybePromise, type RemoveMappingOne, type RequestContext, type SetupMappingIn } from '../fuse/filesystem.js';
import type { DataWriter } from '../fuse/reply.js';
import { ImageTree, type ImageInode, type ImageTreeOptions } from '../vfs/index.js';
import type { Backing } from './backing.js';
import { DaxWindow, DaxWindowError, type MapChannel } from './dax.js';
import type { ImageRegistration, ShareRegistry } from './registry.js';

export type DaxPolicy = 'always' | 'shared' | 'never';

/** Which files a guest with a DAX window maps (FUSE_ATTR_DAX under dax=inode). */
export interface DaxFileChoice {
  policy: DaxPolicy;
  /** Smallest file (bytes) that gets FUSE_ATTR_DAX under the 'shared' policy. */
  minSize: number;
}

export class SharedTree extends ImageTree<DaxWindow> {
  /** The DAX window of the guest's current connection, while it has one. */
  window: DaxWindow | null = null;

  constructor(
    private readonly registry: ShareRegistry,
    /** The registrations of the tree's images, in the tree's image order. */
    private readonly images: readonly ImageRegistration[],
    private readonly dax: DaxFileChoice,
    readonly name: string,
    treeOptions: Omit<ImageTreeOptions, 'images'> = {},
  ) {
    super({ ...treeOptions, images: images.map((img) => ({ name: img.name, reader: img.reader })) });
  }

  private image(t: ImageInode): ImageRegistration {
    const img = this.images[t.index];
    if (!img) throw new FuseError(Errno.EIO, 'no share registration for this image');
    return img;
  }

  // ---- the guest's DAX window, one per connection (opened by its transport) -------------------

  /** A connection's window, over the map channel its transport offers; it replaces the guest's previous one. */
  openWindow(channel: MapChannel): DaxWindow {
    this.window?.reset();
    this.window = new DaxWindow(channel, { inodeDax: this.dax.policy !== 'never', onUnpinned: (b) => this.registry.unpinned(b) });
    return this.window;
  }

  /** The connection lost its window (no back-end channel any more): unpin what it held. */
  closeWindow(window: DaxWindow): void {
    window.reset();
    if (this.window === window) this.window = null;
  }

  // ---- FuseFilesystem ---------------------------------------------------------------------------

  protected override wantsDax(t: ImageInode, attr: InodeAttr): boolean {
    if (attr.type !== 'file') return false;
    switch (this.dax.policy) {
      case 'never': return false;
      case 'always': return true;
      case 'shared':
        if (attr.size === 0 || attr.size < this.dax.minSize) return false;
        return this.sharedBacking(this.image(t), t.nid) !== undefined;
    }
  }

  /** The file's shared backing; none for a file that does not share, or whose claim cannot be read (a corrupt xattr). */
  private sharedBacking(image: ImageRegistration, nid: number): Backing | undefined {
    try {
      return this.registry.backingFor(image, nid);
    } catch {
      return undefined; // such a file simply does not share; its reads report the error
    }
  }

  override read(ctx: RequestContext, nodeid: number, fh: number, offset: number, size: number, out: DataWriter): MaybePromise<void> {
    const t = this.inodeOf(nodeid);
    const image = this.image(t);
    if (!this.openedDirect(fh)) {
      const backing = this.sharedBacking(image, t.nid);
      // A guest without a DAX window keeps its own page-cache copy of what it reads: do not
      // materialise blobs for it (its host copy is the first holder's image pages).
      if (backing) return this.registry.readShared(image, backing, offset, size, this.window !== null).then((data) => out.write(data));
    }
    // O_DIRECT, or nothing to share: the file's own image, no shared cache.
    this.registry.notePerFileRead(image);
    // A file stored uncompressed is copied out of the mapped image into the reply in place: a
    // read pool's worker hop (and its fresh buffer) costs more than that copy (vhost bench: 4-7x
    // CPU per op). Compressed files decode off the event loop when there is a pool.
    if (!image.read || image.reader.storedPlain(t.nid)) return super.read(ctx, nodeid, fh, offset, size, out);
    return image.read(t.nid, offset, size).then((data) => out.write(data));
  }

  async setupMapping(_ctx: RequestContext, nodeid: number, m: SetupMappingIn, window: DaxWindow | undefined): Promise<void> {
    const t = this.inodeOf(nodeid);
    if (t.reader.getAttr(t.nid).type !== 'file') throw new FuseError(Errno.EINVAL, 'only regular files map');
    if (!window) throw new FuseError(Errno.EOPNOTSUPP, 'no DAX window');
    if (m.flags & FUSE_SETUPMAPPING_FLAG_WRITE) throw new FuseError(Errno.EROFS, 'read-only export');
    const image = this.image(t);
    const backing = this.registry.backingFor(image, t.nid) ?? this.registry.privateBackingFor(image, t.nid);
    if (!backing) throw new FuseError(Errno.EINVAL, 'nothing to map (empty file)');
    // Pinned while the range is filled and mapped (the window's own pin starts once it is mapped).
    backing.handles++;
    try {
      await window.setup(backing, m.foffset, m.len, m.moffset);
    } catch (err) {
      throw asFuseError(err);
    } finally {
      backing.handles--;
      if (!backing.pinned) this.registry.unpinned(backing);
    }
  }

  async removeMapping(_ctx: RequestContext, ranges: RemoveMappingOne[], window: DaxWindow | undefined): Promise<void> {
    if (!window) throw new FuseError(Errno.EOPNOTSUPP, 'no DAX window');
    for (const r of ranges) {
      try {
        await window.remove(r.moffset, r.len);
      } catch (err) {
        throw asFuseError(err);
      }
    }
  }
}

function asFuseError(err: unknown): FuseError {
  if (err instanceof FuseError) return err;
  if (err instanceof DaxWindowError) return new FuseError(Errno[err.errno], err.message);
  return new FuseError(Errno.EIO, err instanceof Error ? err.message : String(err));
}
