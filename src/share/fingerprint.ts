// Fingerprints: the content identity that decides which files may share host pages.
//
// Three sources, chosen per image:
//  - 'image-digest': the inode digest xattr the superblock's ishare prefix id names
//    (mkfs.erofs --xattr-inode-digest), value "sha256:" + 32 raw bytes;
//  - { xattr: NAME }: a plain xattr an image builder wrote under another name;
//  - 'compute': SHA-256 of the uncompressed content, computed by us once and kept in a
//    sidecar index keyed by the image's identity, so a restart does not re-hash.
// A fingerprint read from an image is a *claim* (see registry.ts for verification).

import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ErofsReader } from '../erofs/api.js';

export type FingerprintSource =
  | { kind: 'image-digest' }
  | { kind: 'xattr'; name: string }
  | { kind: 'compute'; indexDir?: string }
  | { kind: 'off' };

export const SHA256_PREFIX = Buffer.from('sha256:');

/** Reads happen in slices of this size so hashing a large file never holds it whole. */
const HASH_SLICE = 1 << 20;

/**
 * Decodes a digest xattr value into 32 raw bytes. Accepts the mkfs.erofs form
 * ("sha256:" + 32 raw bytes) and a textual form ("sha256:" + 64 hex digits).
 * Anything else is not a SHA-256 claim and yields undefined.
 */
export function parseDigestValue(value: Buffer): Buffer | undefined {
  if (value.length === SHA256_PREFIX.length + 32 && value.subarray(0, SHA256_PREFIX.length).equals(SHA256_PREFIX)) {
    return Buffer.from(value.subarray(SHA256_PREFIX.length));
  }
  if (value.length === SHA256_PREFIX.length + 64 && value.subarray(0, SHA256_PREFIX.length).equals(SHA256_PREFIX)) {
    const hex = value.subarray(SHA256_PREFIX.length).toString('latin1');
    if (/^[0-9a-fA-F]{64}$/.test(hex)) return Buffer.from(hex, 'hex');
  }
  return undefined;
}

/** SHA-256 of a regular file's uncompressed content, read through the reader in slices. */
export function hashFileContent(reader: ErofsReader, nid: number): Buffer {
  const size = reader.getAttr(nid).size;
  const hash = createHash('sha256');
  for (let off = 0; off < size; ) {
    const chunk = reader.read(nid, off, Math.min(HASH_SLICE, size - off));
    if (chunk.length === 0) break; // short read at a (corrupt) EOF: hash what exists
    hash.update(chunk);
    off += chunk.length;
  }
  return hash.digest();
}

/**
 * The identity of an image's bytes, independent of its path: a hash of the superblock
 * block plus the file size. Keys the sidecar index of computed fingerprints.
 */
export function imageIdentity(imagePath: string): string {
  const fd = fs.openSync(imagePath, 'r');
  try {
    const head = Buffer.alloc(4096);
    const n = fs.readSync(fd, head, 0, head.length, 0);
    const size = fs.fstatSync(fd).size;
    return createHash('sha256').update(head.subarray(0, n)).update(String(size)).digest('hex').slice(0, 32);
  } finally {
    fs.closeSync(fd);
  }
}

/** Per-image fingerprint lookup, cached; the computed kind persists to a sidecar index. */
export class FingerprintResolver {
  private readonly cache = new Map<number, Buffer | null>();
  private readonly indexFile: string | undefined;
  private dirty = 0;

  constructor(
    private readonly reader: ErofsReader,
    readonly source: FingerprintSource,
    identity?: string,
  ) {
    if (source.kind === 'compute' && source.indexDir && identity) {
      this.indexFile = path.join(source.indexDir, `${identity}.fingerprints.json`);
      this.loadIndex();
    }
  }

  /** The 32-byte digest claimed for (or computed from) a regular file, or undefined. */
  get(nid: number): Buffer | undefined {
    const cached = this.cache.get(nid);
    if (cached !== undefined) return cached ?? undefined;
    let digest: Buffer | undefined;
    switch (this.source.kind) {
      case 'off':
        break;
      case 'image-digest': {
        const raw = this.reader.fingerprint(nid);
        digest = raw ? parseDigestValue(raw) : undefined;
        break;
      }
      case 'xattr': {
        let raw: Buffer | undefined;
        try {
          raw = this.reader.getXattr(nid, this.source.name);
        } catch {
          raw = undefined; // ENODATA (no claim) or a corrupt xattr area: simply no fingerprint
        }
        if (raw) digest = parseDigestValue(raw) ?? createHash('sha256').update('opaque:').update(raw).digest();
        break;
      }
      case 'compute':
        if (this.reader.getAttr(nid).type === 'file') {
          digest = hashFileContent(this.reader, nid);
          this.dirty++;
        }
        break;
    }
    this.cache.set(nid, digest ?? null);
    if (this.dirty >= 64) this.flush();
    return digest;
  }

  /** Writes computed digests to the sidecar index (atomically: temp file + rename). */
  flush(): void {
    if (!this.indexFile || this.dirty === 0) return;
    const entries: Record<string, string> = {};
    for (const [nid, d] of this.cache) if (d) entries[String(nid)] = d.toString('hex');
    try {
      fs.mkdirSync(path.dirname(this.indexFile), { recursive: true });
      const tmp = `${this.indexFile}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, JSON.stringify({ version: 1, entries }));
      fs.renameSync(tmp, this.indexFile);
      this.dirty = 0;
    } catch {
      // An unwritable index only costs re-hashing after a restart; never fail a read for it.
    }
  }

  private loadIndex(): void {
    if (!this.indexFile) return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(fs.readFileSync(this.indexFile, 'utf8'));
    } catch {
      return; // absent or unreadable: start empty
    }
    const entries = (parsed as { entries?: Record<string, unknown> })?.entries;
    if (!entries || typeof entries !== 'object') return;
    for (const [k, v] of Object.entries(entries)) {
      const nid = Number(k);
      if (Number.isSafeInteger(nid) && typeof v === 'string' && /^[0-9a-f]{64}$/.test(v)) {
        this.cache.set(nid, Buffer.from(v, 'hex'));
      }
    }
  }
}
