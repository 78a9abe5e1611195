// The tree manifest format of ../shared/images/*.expected.json, shared by every test that
// compares one view of a filesystem with another (reader, host kernel, FUSE mount, guest).
import fs from 'node:fs';

export interface ManifestEntry {
  type: 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket';
  mode: number; // permission bits incl. suid/sgid/sticky, without the file-type bits
  uid: number;
  gid: number;
  nlink: number;
  /** Nanoseconds since the epoch, kept as a decimal string: it exceeds 2^53. */
  mtime_ns: string;
  size?: number;
  sha256?: string;
  target?: string;
  rdev?: [number, number];
  /** name → hex value, as listxattr/getxattr report them. */
  xattrs?: Record<string, string>;
}

/** Path relative to the root ('' = root) → entry. */
export type Manifest = Record<string, ManifestEntry>;

/** Parses a manifest without losing precision on mtime_ns. */
export function parseManifest(text: string): Manifest {
  const quoted = text.replace(/("mtime_ns"\s*:\s*)(-?\d+)/g, '$1"$2"');
  const raw = JSON.parse(quoted) as Record<string, ManifestEntry>;
  for (const entry of Object.values(raw)) entry.mtime_ns = String(entry.mtime_ns);
  return raw;
}

export function loadManifest(file: string): Manifest {
  return parseManifest(fs.readFileSync(file, 'utf8'));
}

function normalise(e: ManifestEntry): ManifestEntry {
  const out: ManifestEntry = { ...e };
  if (out.xattrs && Object.keys(out.xattrs).length === 0) delete out.xattrs;
  return out;
}

/**
 * Differences between two manifests, one human-readable line each (empty = equal). `ignore`
 * names fields to leave out of the comparison (e.g. a view that cannot know them).
 */
export function diffManifests(
  expected: Manifest,
  actual: Manifest,
  ignore: ReadonlyArray<keyof ManifestEntry> = [],
  maxLines = 50,
): string[] {
  const out: string[] = [];
  const push = (line: string) => {
    if (out.length < maxLines) out.push(line);
    else if (out.length === maxLines) out.push('… more differences omitted');
  };
  for (const p of Object.keys(expected).sort()) {
    if (!(p in actual)) { push(`missing: '${p}'`); continue; }
    const e = normalise(expected[p]!);
    const a = normalise(actual[p]!);
    const fields = new Set([...Object.keys(e), ...Object.keys(a)] as (keyof ManifestEntry)[]);
    for (const f of fields) {
      if (ignore.includes(f)) continue;
      const ev = JSON.stringify(e[f] === undefined ? null : sortKeys(e[f]));
      const av = JSON.stringify(a[f] === undefined ? null : sortKeys(a[f]));
      if (ev !== av) push(`'${p}' ${f}: expected ${ev}, got ${av}`);
    }
  }
  for (const p of Object.keys(actual).sort()) if (!(p in expected)) push(`unexpected: '${p}'`);
  return out;
}

function sortKeys(v: unknown): unknown {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    return Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  }
  return v;
}

export function saveManifest(file: string, m: Manifest): void {
  const sorted = Object.fromEntries(Object.keys(m).sort().map((k) => [k, m[k]]));
  fs.writeFileSync(file, JSON.stringify(sorted, null, 1) + '\n');
}
