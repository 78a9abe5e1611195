// The registry of shared backings, keyed by (trust domain, fingerprint).
//
// Every image registers with a domain (default: its own). A regular file joins the backing for
// its (domain, fingerprint); the first holder's content fills it. A fingerprint is only a claim:
// with `verify` (implied by `acrossDomains`) a file's content is hashed before it may join, and a
// file whose content does not match its claim never joins — it keeps reading its own bytes.

import type { ErofsReader } from '../erofs/api.js';
import { PAGE_SIZE } from '../native/index.js';
import { Backing, BlobBacking, ImageRangeBacking, type ContentSource } from './backing.js';
import { FingerprintResolver, hashFileContent, imageIdentity, type FingerprintSource } from './fingerprint.js';

export interface ShareOptions {
  /** false = --share=off: nothing is shared, every read takes the per-file path. */
  enabled: boolean;
  /** Hash content before a file joins a backing. */
  verify: boolean;
  /** Share between domains (verified digests only). */
  acrossDomains: boolean;
  /** Memory budget for materialised blobs; unpinned blobs are evicted LRU beyond it. */
  budgetBytes: number;
  /** Directory for blob files shared by several daemon processes (memfd when absent). */
  blobDir?: string;
}

export const DEFAULT_SHARE_OPTIONS: ShareOptions = {
  enabled: true,
  verify: false,
  acrossDomains: false,
  budgetBytes: 1 << 30,
};

/** An image as it joins the registry. */
export interface ImageToRegister {
  name: string;
  /** Trust domain; default: the image's own name. */
  domain?: string;
  /** Image file path, then extra devices in device-table order. */
  paths: string[];
  reader: ErofsReader;
  fingerprint: FingerprintSource;
  /** Off-loop file data reads (the daemon's read pool); default: reader.read. */
  read?: (nid: number, offset: number, length: number) => Promise<Buffer>;
}

export interface ImageRegistration {
  readonly id: number;
  readonly name: string;
  readonly domain: string;
  readonly paths: string[];
  readonly reader: ErofsReader;
  readonly fingerprints: FingerprintResolver;
  /** Off-loop file data reads (read pool), when the daemon has one. */
  readonly read?: (nid: number, offset: number, length: number) => Promise<Buffer>;
}

export interface DomainStats {
  /** Live backings. */
  backings: number;
  /** Bytes of content held once for all holders (sum of backing sizes). */
  backingBytes: number;
  /** Bytes that holders beyond the first would otherwise have held: sum of size × (holders − 1). */
  sharedBytes: number;
  /** Host memory held by materialised blobs. */
  blobResidentBytes: number;
  /** Live DAX mapped ranges (maintained by dax.ts). */
  mappedRanges: number;
  /** Files that found their backing already present (a copy avoided). */
  hits: number;
  /** Backings created. */
  misses: number;
  /** Reads served from shared backings. */
  sharedReads: number;
  /** Reads served by the per-file path (O_DIRECT, unshareable files, refused joins). */
  perFileReads: number;
  /** Files whose claimed fingerprint did not match their content (verification). */
  verifyRejected: number;
  /** Blobs evicted by budget or dropped on request. */
  evictions: number;
}

function emptyStats(): DomainStats {
  return {
    backings: 0, backingBytes: 0, sharedBytes: 0, blobResidentBytes: 0, mappedRanges: 0, hits: 0,
    misses: 0, sharedReads: 0, perFileReads: 0, verifyRejected: 0, evictions: 0,
  };
}

interface Holder extends ContentSource {
  image: ImageRegistration;
}

/** Domain key under which cross-domain sharing happens (verified digests only). */
const ACROSS_DOMAINS = ''; // user domains are non-empty (the CLI checks)

export class ShareRegistry {
  private nextImageId = 1;
  private readonly images = new Map<number, ImageRegistration>();
  private readonly backings = new Map<string, Backing>();
  private readonly holders = new Map<string, Map<string, Holder>>();
  /** Per (image, nid): the key the file resolved to, or null when it is not shareable. */
  private readonly resolved = new Map<string, string | null>();
  private readonly counters = new Map<string, DomainStats>();
  private useClock = 0;

  constructor(readonly options: ShareOptions = DEFAULT_SHARE_OPTIONS) {}

  registerImage(spec: ImageToRegister): ImageRegistration {
    if (spec.paths.length === 0) throw new Error('an image needs its file path');
    const needsIdentity = spec.fingerprint.kind === 'compute' && spec.fingerprint.indexDir;
    const reg: ImageRegistration = {
      id: this.nextImageId++,
      name: spec.name,
      domain: spec.domain ?? spec.name,
      paths: spec.paths,
      reader: spec.reader,
      read: spec.read,
      fingerprints: new FingerprintResolver(spec.reader, spec.fingerprint, needsIdentity ? imageIdentity(spec.paths[0]!) : undefined),
    };
    this.images.set(reg.id, reg);
    this.domainStats(reg.domain);
    return reg;
  }

  private effectiveDomain(image: ImageRegistration): string {
    return this.options.acrossDomains ? ACROSS_DOMAINS : image.domain;
  }

  private get verifying(): boolean {
    return this.options.verify || this.options.acrossDomains;
  }

  domainStats(domain: string): DomainStats {
    let s = this.counters.get(domain);
    if (!s) {
      s = emptyStats();
      this.counters.set(domain, s);
    }
    return s;
  }

  /**
   * The shared backing for a regular file, joining or creating it; undefined when the file is
   * not shareable (sharing off, no fingerprint, empty, or its claim failed verification).
   */
  backingFor(image: ImageRegistration, nid: number): Backing | undefined {
    if (!this.options.enabled) return undefined;
    const fileKey = `${image.id}:${nid}`;
    let key = this.resolved.get(fileKey);
    const firstResolve = key === undefined;
    if (key === undefined) {
      key = this.resolveKey(image, nid);
      this.resolved.set(fileKey, key);
    }
    if (key === null) return undefined;
    const holders = this.holders.get(key)!;
    let backing = this.backings.get(key);
    const stats = this.domainStats(image.domain);
    if (!backing || backing.closed) {
      backing = this.createBacking(key, holders.get(fileKey)!);
      this.backings.set(key, backing);
      stats.misses++;
      this.enforceBudget(backing);
    } else if (firstResolve) {
      stats.hits++;
    }
    backing.lastUse = ++this.useClock;
    return backing;
  }

  /**
   * A backing for a file that has no shared one (sharing off, no fingerprint, refused claim),
   * so DAX can still map it: private to that (image, file), never joined by anything else.
   */
  privateBackingFor(image: ImageRegistration, nid: number): Backing | undefined {
    const attr = image.reader.getAttr(nid);
    if (attr.type !== 'file' || attr.size === 0) return undefined;
    const key = `${image.domain}\u0000private-${image.id}-${nid}\u0000${attr.size}`;
    let backing = this.backings.get(key);
    if (!backing || backing.closed) {
      const holder = this.holder(image, nid);
      backing = this.createBacking(key, holder, false);
      this.backings.set(key, backing);
      this.enforceBudget(backing);
    }
    backing.lastUse = ++this.useClock;
    return backing;
  }

  private resolveKey(image: ImageRegistration, nid: number): string | null {
    const attr = image.reader.getAttr(nid);
    if (attr.type !== 'file' || attr.size === 0) return null;
    const claimed = image.fingerprints.get(nid);
    if (!claimed) return null;
    if (this.verifying && image.fingerprints.source.kind !== 'compute') {
      const actual = hashFileContent(image.reader, nid);
      if (!actual.equals(claimed)) {
        this.domainStats(image.domain).verifyRejected++;
        return null;
      }
    }
    // The size is part of the key: equal digests with unequal sizes are a forgery, never a share.
    const key = `${this.effectiveDomain(image)}\u0000${claimed.toString('hex')}\u0000${attr.size}`;
    let holders = this.holders.get(key);
    if (!holders) {
      holders = new Map();
      this.holders.set(key, holders);
    }
    holders.set(`${image.id}:${nid}`, this.holder(image, nid));
    return key;
  }

  /** A file as a content source: reads through the read pool if any; readPlain when stored uncompressed. */
  private holder(image: ImageRegistration, nid: number): Holder {
    const plain = image.reader.storedPlain(nid);
    return {
      image,
      imageId: image.id,
      nid,
      read: (offset, length) => image.read ? image.read(nid, offset, length) : image.reader.read(nid, offset, length),
      readPlain: plain ? (offset, length) => image.reader.read(nid, offset, length) : undefined,
    };
  }

  private createBacking(key: string, holder: Holder, shareable = true): Backing {
    const [domain, digestHex, sizeText] = key.split('\u0000') as [string, string, string];
    const size = Number(sizeText);
    const plain = this.plainRange(holder, size);
    if (plain) {
      const b = ImageRangeBacking.create(key, domain, digestHex, size, plain.path, plain.physical, holder, plain.prefix);
      if (b) return b;
    }
    // A private backing never goes to the blob directory: its name would not identify content.
    return new BlobBacking(key, domain, digestHex, size, holder, shareable ? this.options.blobDir : undefined);
  }

  /**
   * Where the file's data lies in place in one device file, if it does: one contiguous
   * uncompressed run from a page-aligned position covering the whole file (prefix = size), or
   * covering all but less than a page (prefix = that run rounded down to pages; the tail, e.g.
   * EROFS's inline tail in the metadata, is read through the holder's reader).
   */
  private plainRange(holder: Holder, size: number): { path: string; physical: number; prefix: number } | undefined {
    let extents;
    try {
      extents = holder.image.reader.plainExtents(holder.nid);
    } catch {
      return undefined;
    }
    if (!extents || extents.length === 0) return undefined;
    const first = extents[0]!;
    if (first.logical !== 0 || first.physical % PAGE_SIZE !== 0) return undefined;
    let covered = 0;
    for (const e of extents) {
      if (e.device !== first.device || e.logical !== covered || e.physical !== first.physical + covered) break;
      covered += e.length;
    }
    let prefix = Math.min(covered, size);
    if (prefix < size) {
      prefix -= prefix % PAGE_SIZE;
      if (prefix === 0 || size - prefix >= PAGE_SIZE || !holder.readPlain) return undefined;
    }
    const path = holder.image.paths[first.device];
    return path ? { path, physical: first.physical, prefix } : undefined;
  }

  /** Counts a read served by the per-file path, for stats. */
  notePerFileRead(image: ImageRegistration): void {
    this.domainStats(image.domain).perFileReads++;
  }

  /** Reads through a file's shared backing (`fill: false`: see Backing.read). */
  async readShared(image: ImageRegistration, backing: Backing, offset: number, length: number, fill = true): Promise<Buffer> {
    this.domainStats(image.domain).sharedReads++;
    backing.lastUse = ++this.useClock;
    // Pinned while in flight: the budget must not evict a blob under a read that is filling it.
    backing.handles++;
    let data: Buffer;
    try {
      data = await backing.read(offset, length, fill);
    } finally {
      backing.handles--;
    }
    if (backing.kind === 'blob') this.enforceBudget(backing);
    return data;
  }

  /** Evicts least-recently-used unpinned blobs until blob memory fits the budget. */
  enforceBudget(keep?: Backing): void {
    let total = 0;
    const blobs: Backing[] = [];
    for (const b of this.backings.values()) {
      if (b.kind !== 'blob') continue;
      total += b.residentBytes();
      blobs.push(b);
    }
    if (total <= this.options.budgetBytes) return;
    blobs.sort((a, b) => a.lastUse - b.lastUse);
    for (const b of blobs) {
      if (total <= this.options.budgetBytes) break;
      if (b === keep || b.pinned) continue;
      total -= b.residentBytes();
      this.evict(b);
    }
  }

  /** The fadvise(DONTNEED) analogue: releases every clean, unmapped, unopened blob. */
  drop(): { blobs: number; bytes: number } {
    let blobs = 0;
    let bytes = 0;
    for (const b of [...this.backings.values()]) {
      if (b.kind !== 'blob' || b.pinned) continue;
      bytes += b.residentBytes();
      blobs++;
      this.evict(b);
    }
    return { blobs, bytes };
  }

  private evict(b: Backing): void {
    b.close();
    this.backings.delete(b.key);
    this.domainStats(this.domainOfKey(b.key)).evictions++;
  }

  private domainOfKey(key: string): string {
    const d = key.slice(0, key.indexOf('\u0000'));
    return d === '' ? 'across-domains' : d;
  }

  /** Called when a backing's last pin goes away; orphans (no holders left) are released. */
  unpinned(b: Backing): void {
    if (!b.pinned && !this.holders.get(b.key)?.size) {
      b.close();
      this.backings.delete(b.key);
    }
  }

  /**
   * Removes an image: its files leave their backings; backings it was filling from move to
   * another holder, and backings nobody else holds are released once unmapped.
   */
  removeImage(image: ImageRegistration): void {
    this.images.delete(image.id);
    for (const k of [...this.resolved.keys()]) if (k.startsWith(`${image.id}:`)) this.resolved.delete(k);
    for (const [key, holders] of this.holders) {
      for (const hk of [...holders.keys()]) if (holders.get(hk)!.imageId === image.id) holders.delete(hk);
      const b = this.backings.get(key);
      if (!b) {
        if (holders.size === 0) this.holders.delete(key);
        continue;
      }
      if (b.sourceImageId === image.id) {
        const next = holders.values().next().value as Holder | undefined;
        if (next && this.repoint(b, next)) continue;
        if (!b.pinned) {
          b.close();
          this.backings.delete(key);
        }
      }
      if (holders.size === 0) this.holders.delete(key);
    }
  }

  private repoint(b: Backing, next: Holder): boolean {
    if (b instanceof BlobBacking) {
      b.repoint(next);
      return true;
    }
    if (b instanceof ImageRangeBacking) {
      const plain = this.plainRange(next, b.size);
      if (plain && b.repoint(plain.path, plain.physical, next, plain.prefix)) return true;
      // The new holder's copy is not mappable in place: its readers switch to a blob.
      if (b.pinned) return false;
      b.close();
      this.backings.set(b.key, new BlobBacking(b.key, b.domain, b.digestHex, b.size, next, this.options.blobDir));
      return true;
    }
    return false;
  }

  /** Per-domain statistics, with backing-derived figures computed now. */
  stats(): Record<string, DomainStats> {
    const out: Record<string, DomainStats> = {};
    for (const [domain, s] of this.counters) out[domain] = { ...s, backings: 0, backingBytes: 0, sharedBytes: 0, blobResidentBytes: 0 };
    for (const [key, b] of this.backings) {
      const domain = this.domainOfKey(key);
      const s = (out[domain] ??= { ...emptyStats() });
      s.backings++;
      s.backingBytes += b.size;
      s.sharedBytes += b.size * Math.max(0, (this.holders.get(key)?.size ?? 1) - 1);
      if (b.kind === 'blob') s.blobResidentBytes += b.residentBytes();
    }
    return out;
  }

  close(): void {
    for (const img of this.images.values()) img.fingerprints.flush();
    for (const b of this.backings.values()) b.close();
    this.backings.clear();
  }
}
