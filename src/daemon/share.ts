// The page-sharing / DAX layer wired into the image tree (issue 5).
//
// One ShareService per daemon owns the ShareRegistry (one host copy per (domain, fingerprint))
// and the image registrations; every guest (one per --socket-path) gets a ShareGuest: the
// ImageTree hooks for that guest's tree, its DAX window (when the front-end provides one), and
// the FUSE options that advertise DAX only while a window exists.
//
//  - FUSE_READ of a shareable file reads its shared backing; O_DIRECT handles and files without
//    a backing take the per-file path (the file's own image), counted per domain.
//  - FUSE_ATTR_DAX per inode follows --dax-policy (always | shared: files with a backing of at
//    least --dax-min-size | never), only while a window exists.
//  - SETUPMAPPING / REMOVEMAPPING become back-end channel requests: SHMEM_MAP/UNMAP when the
//    front-end negotiated the SHMEM protocol feature, FS_MAP/FS_UNMAP with --dax-protocol=fs-map.
//    Mappings are tracked per guest and released on reset and disconnect.
import type { ErofsReader, InodeAttr } from '../erofs/api.js';
import { Errno, FUSE_ATTR_DAX, FUSE_SETUPMAPPING_FLAG_WRITE } from '../fuse/abi.js';
import { FuseError, type RemoveMappingOne, type RequestContext, type SetupMappingIn } from '../fuse/filesystem.js';
import type { FuseServerOptions } from '../fuse/server.js';
import type { ImageTreeHooks, TreeTarget } from '../vfs/index.js';
import type { BackendChannel, Logger } from 'vhost-user-ts';
import { FS_MAP_R, ProtoFeature, SHMEM_MAP_READ_ONLY, bit } from 'vhost-user-ts';
import { PAGE_SIZE, type Backing, type MapPiece } from '../share/backing.js';
import { DaxWindow, DaxWindowError, type MapChannel } from '../share/dax.js';
import type { FingerprintSource } from '../share/fingerprint.js';
import { ShareRegistry, type DomainStats, type ImageRegistration, type ShareOptions } from '../share/registry.js';

export type DaxPolicy = 'always' | 'shared' | 'never';
export type DaxProtocol = 'shmem' | 'fs-map';

export interface DaxOptions {
  policy: DaxPolicy;
  /** Smallest file (bytes) that gets FUSE_ATTR_DAX under the 'shared' policy. */
  minSize: number;
  /** Bytes of the guest's DAX window (bounds checks; the VMM checks again). 0 = no DAX. */
  windowSize: number;
  protocol: DaxProtocol;
}

export const DEFAULT_DAX_OPTIONS: DaxOptions = { policy: 'shared', minSize: 0, windowSize: 1 << 30, protocol: 'shmem' };

export interface ShareImage {
  name: string;
  domain?: string;
  /** Image file, then extra devices in device-table order. */
  paths: string[];
  reader: ErofsReader;
}

export interface ShareServiceOptions {
  share: ShareOptions;
  fingerprint: FingerprintSource;
  dax: DaxOptions;
  log?: Logger;
  /**
   * Off-loop file data reads by image index (the daemon's read pool, issue 4): the per-file path
   * and blob filling use it; default: the image's reader on the main thread.
   */
  read?: (image: number, nid: number, offset: number, length: number) => Promise<Buffer>;
}

/** The stats document `erofs-vfsd stats` prints. */
export interface ShareStatsDoc {
  share: boolean;
  domains: Record<string, DomainStats>;
  guests: { name: string; window: boolean; dialect: DaxProtocol | null; mappedRanges: number }[];
}

const ACROSS_DOMAINS_LABEL = 'across-domains';

export class ShareService {
  readonly registry: ShareRegistry;
  readonly images: ImageRegistration[];
  private readonly guests = new Set<ShareGuest>();
  constructor(images: ShareImage[], readonly opts: ShareServiceOptions) {
    this.registry = new ShareRegistry(opts.share);
    const read = opts.read;
    this.images = images.map((img, i) => this.registry.registerImage({
      name: img.name, domain: img.domain, paths: img.paths, reader: img.reader, fingerprint: opts.fingerprint,
      read: read ? (nid, offset, length) => read(i, nid, offset, length) : undefined,
    }));
  }

  /** A guest (one VM, one socket): its hooks, FUSE options and DAX window. */
  guest(name: string): ShareGuest {
    const g = new ShareGuest(this, name);
    this.guests.add(g);
    return g;
  }

  stats(): ShareStatsDoc {
    const domains = this.registry.stats();
    for (const g of this.guests) {
      for (const [domain, n] of g.window?.rangesByDomain() ?? []) {
        const label = domain === '' ? ACROSS_DOMAINS_LABEL : domain;
        const s = domains[label];
        if (s) s.mappedRanges += n;
      }
    }
    return {
      share: this.opts.share.enabled,
      domains,
      guests: [...this.guests].map((g) => ({ name: g.name, window: g.window !== null, dialect: g.window ? g.dialect : null, mappedRanges: g.window?.mappedRanges ?? 0 })),
    };
  }

  /** Releases clean, unmapped blobs (the fadvise(DONTNEED) analogue). */
  dropCache(): { blobs: number; bytes: number } {
    return this.registry.drop();
  }

  close(): void {
    for (const g of this.guests) g.window?.reset();
    this.registry.close();
  }
}

/** One guest's view: ImageTree hooks, DAX window over the current connection's back-end channel. */
export class ShareGuest {
  /** The current connection's FuseServer options: mapAlignment/inodeDax only while a window exists. */
  private fuseOptions: Pick<FuseServerOptions, 'mapAlignment' | 'inodeDax'> = {};
  window: DaxWindow | null = null;
  dialect: DaxProtocol;
  private channel: BackendChannel | null = null;
  private protocolFeatures = 0n;
  readonly hooks: ImageTreeHooks;

  constructor(private readonly service: ShareService, readonly name: string) {
    this.dialect = service.opts.dax.protocol;
    this.hooks = {
      attrFlags: (t, attr) => this.attrFlags(t, attr),
      read: (t, offset, size, direct) => this.read(t, offset, size, direct),
      setupMapping: (ctx, t, m) => this.setupMapping(ctx, t, m),
      removeMapping: (ctx, ranges) => this.removeMapping(ctx, ranges),
    };
  }

  private image(t: TreeTarget): ImageRegistration {
    const img = this.service.images[t.index];
    if (!img) throw new FuseError(Errno.EIO, 'no share registration for this image');
    return img;
  }

  private get registry(): ShareRegistry {
    return this.service.registry;
  }

  // ---- connection events (from the virtio-fs device) ------------------------------------------

  /**
   * A new connection's FuseServer options object (FuseServer reads it at FUSE_INIT): DAX is
   * advertised through it while this guest has a window.
   */
  bindFuseOptions(o: FuseServerOptions): FuseServerOptions {
    this.fuseOptions = o;
    this.channel = null;
    this.protocolFeatures = 0n;
    this.refreshWindow();
    return o;
  }

  /** SET_PROTOCOL_FEATURES: the front-end's acknowledged protocol features. */
  featuresAcked(_features: bigint, protocolFeatures: bigint): void {
    this.protocolFeatures = protocolFeatures;
    this.refreshWindow();
  }

  backendChannel(ch: BackendChannel | null): void {
    this.channel = ch;
    this.refreshWindow();
  }

  /** Guest reset or disconnect: the VMM drops the window contents; unpin what it held. */
  reset(): void {
    this.window?.reset();
  }

  /** A window exists when the dialect is usable on the current back-end channel. */
  private refreshWindow(): void {
    const dax = this.service.opts.dax;
    const usable = this.channel !== null && dax.windowSize > 0 &&
      (dax.protocol === 'fs-map' || (this.protocolFeatures & bit(ProtoFeature.SHMEM)) !== 0n);
    if (!usable) {
      this.window?.reset();
      this.window = null;
      delete this.fuseOptions.mapAlignment;
      delete this.fuseOptions.inodeDax;
      return;
    }
    // A replaced channel or a repeated negotiation keeps the window and what it maps: the VMM
    // holds those mappings until a device reset, and requests now go through the current channel.
    if (this.window) return;
    this.window = new DaxWindow(dax.windowSize, this.mapChannel(() => this.currentChannel(), dax.protocol), (b) => this.registry.unpinned(b));
    this.fuseOptions.mapAlignment = Math.log2(PAGE_SIZE);
    this.fuseOptions.inodeDax = dax.policy !== 'never';
  }

  private currentChannel(): BackendChannel {
    if (!this.channel) throw new Error('no back-end channel');
    return this.channel;
  }

  private mapChannel(ch: () => BackendChannel, dialect: DaxProtocol): MapChannel {
    const check = (status: bigint, what: string): void => {
      if (status !== 0n) throw new Error(`${what} failed (status ${status})`);
    };
    if (dialect === 'shmem') {
      return {
        async map(windowOffset: number, pieces: MapPiece[]): Promise<void> {
          let at = windowOffset;
          for (const p of pieces) {
            check(await ch().shmemMap({ shmid: 0, fdOffset: BigInt(p.fdOffset), shmOffset: BigInt(at), len: BigInt(p.length), flags: SHMEM_MAP_READ_ONLY }, p.fd), 'SHMEM_MAP');
            at += p.length;
          }
        },
        async unmap(windowOffset: number, length: number): Promise<void> {
          check(await ch().shmemUnmap({ shmid: 0, fdOffset: 0n, shmOffset: BigInt(windowOffset), len: BigInt(length), flags: 0n }), 'SHMEM_UNMAP');
        },
      };
    }
    return {
      async map(windowOffset: number, pieces: MapPiece[]): Promise<void> {
        let at = windowOffset;
        for (const p of pieces) {
          // FS_MAP carries one fd for all entries: one message per piece.
          check(await ch().fsMap([{ fdOffset: BigInt(p.fdOffset), cacheOffset: BigInt(at), len: BigInt(p.length), flags: FS_MAP_R }], p.fd), 'FS_MAP');
          at += p.length;
        }
      },
      async unmap(windowOffset: number, length: number): Promise<void> {
        check(await ch().fsUnmap([{ fdOffset: 0n, cacheOffset: BigInt(windowOffset), len: BigInt(length), flags: 0n }]), 'FS_UNMAP');
      },
    };
  }

  // ---- hooks ----------------------------------------------------------------------------------

  private attrFlags(t: TreeTarget, attr: InodeAttr): number {
    if (!this.window || attr.type !== 'file') return 0;
    const dax = this.service.opts.dax;
    switch (dax.policy) {
      case 'never': return 0;
      case 'always': return FUSE_ATTR_DAX;
      case 'shared': {
        if (attr.size === 0 || attr.size < dax.minSize) return 0;
        try {
          return this.registry.backingFor(this.image(t), t.nid) ? FUSE_ATTR_DAX : 0;
        } catch {
          return 0; // a corrupt file is simply not DAX; its reads report the error
        }
      }
    }
  }

  private read(t: TreeTarget, offset: number, size: number, direct: boolean): Promise<Buffer> | Buffer | undefined {
    const image = this.image(t);
    if (!direct) {
      let backing: Backing | undefined;
      try {
        backing = this.registry.backingFor(image, t.nid);
      } catch {
        backing = undefined; // an unreadable claim (corrupt xattr): the file simply does not share
      }
      // A guest without a DAX window keeps its own page-cache copy of what it reads: do not
      // materialise blobs for it (its host copy is the first holder's image pages).
      if (backing) return this.registry.readShared(image, backing, offset, size, this.window !== null);
    }
    // O_DIRECT, or nothing to share: the file's own image, no shared cache.
    this.registry.notePerFileRead(image);
    // Undefined lets ImageTree read the image in place into the reply buffer: always without a
    // read pool, and for files stored uncompressed, whose read is a copy from the mapped image —
    // a worker hop (and its fresh buffer) costs more than that copy (vhost bench: 4-7x CPU per op).
    if (!image.read || image.reader.storedPlain(t.nid)) return undefined;
    return image.read(t.nid, offset, size);
  }

  private backingForMapping(t: TreeTarget): Backing {
    const image = this.image(t);
    const b = this.registry.backingFor(image, t.nid) ?? this.registry.privateBackingFor(image, t.nid);
    if (!b) throw new FuseError(Errno.EINVAL, 'nothing to map (empty file)');
    return b;
  }

  private async setupMapping(_ctx: RequestContext, t: TreeTarget, m: SetupMappingIn): Promise<void> {
    const window = this.window;
    if (!window) throw new FuseError(Errno.EOPNOTSUPP, 'no DAX window');
    if (m.flags & FUSE_SETUPMAPPING_FLAG_WRITE) throw new FuseError(Errno.EROFS, 'read-only export');
    const backing = this.backingForMapping(t);
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

  private async removeMapping(_ctx: RequestContext, ranges: RemoveMappingOne[]): Promise<void> {
    const window = this.window;
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
