// Page sharing for one daemon: the ShareRegistry (one host copy per (domain, fingerprint)), the
// images registered with it, and one SharedTree per guest (one per --socket-path). Every guest
// reads through the same registry; each has its own tree state and DAX window.
import type { ImageTreeOptions } from '../vfs/index.js';
import type { DaxProtocol } from './dax.js';
import type { FingerprintSource } from './fingerprint.js';
import { ShareRegistry, type DomainStats, type ImageRegistration, type ImageToRegister, type ShareOptions } from './registry.js';
import { SharedTree, type DaxFileChoice } from './tree.js';

export interface DaxOptions extends DaxFileChoice {
  /** Bytes of the guest's DAX window (bounds checks; the VMM checks again). 0 = no DAX. */
  windowSize: number;
  protocol: DaxProtocol;
}

export const DEFAULT_DAX_OPTIONS: DaxOptions = { policy: 'shared', minSize: 0, windowSize: 1 << 30, protocol: 'shmem' };

/** An image as the daemon serves it (its registration adds the fingerprint source and the read path). */
export type ShareImage = Pick<ImageToRegister, 'name' | 'domain' | 'paths' | 'reader'>;

/** Reads file data off the event loop: the daemon's read pool. */
export interface OffLoopReader {
  /** Up to `length` bytes of file `nid` of image number `image` (the service's image order) from `offset`. */
  read(image: number, nid: number, offset: number, length: number): Promise<Buffer>;
}

export interface ShareServiceOptions {
  share: ShareOptions;
  fingerprint: FingerprintSource;
  dax: DaxOptions;
  /**
   * Reads file data off the event loop, by image index (the per-file path and blob filling use
   * it); default: the image's reader on the main thread.
   */
  readPool?: OffLoopReader;
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
  private readonly trees = new Set<SharedTree>();

  constructor(images: ShareImage[], readonly opts: ShareServiceOptions) {
    this.registry = new ShareRegistry(opts.share);
    const pool = opts.readPool;
    this.images = images.map((img, i) => this.registry.registerImage({
      ...img, fingerprint: opts.fingerprint,
      read: pool ? (nid, offset, length) => pool.read(i, nid, offset, length) : undefined,
    }));
  }

  /** A guest's tree (one VM, one socket): every image, read through the registry. */
  guestTree(name: string, treeOptions: Omit<ImageTreeOptions, 'images'> = {}): SharedTree {
    const tree = new SharedTree(this.registry, this.images, this.opts.dax, name, treeOptions);
    this.trees.add(tree);
    return tree;
  }

  stats(): ShareStatsDoc {
    const domains = this.registry.stats();
    for (const t of this.trees) {
      for (const [domain, n] of t.window?.rangesByDomain() ?? []) {
        const label = domain === '' ? ACROSS_DOMAINS_LABEL : domain;
        const s = domains[label];
        if (s) s.mappedRanges += n;
      }
    }
    return {
      share: this.opts.share.enabled,
      domains,
      guests: [...this.trees].map((t) => ({
        name: t.name, window: t.window !== null, dialect: t.window ? this.opts.dax.protocol : null, mappedRanges: t.window?.mappedRanges ?? 0,
      })),
    };
  }

  /** Releases clean, unmapped blobs (the fadvise(DONTNEED) analogue). */
  dropCache(): { blobs: number; bytes: number } {
    return this.registry.drop();
  }

  close(): void {
    for (const t of this.trees) t.window?.reset();
    this.registry.close();
  }
}
