// The xattr name filter (`mkfs.erofs -Exattr-name-filter`): getXattr answered from an inode's
// filter bits must equal the full parse on every shared image; a name the filter marks absent is
// answered without reading the entries; and a corrupt filter hides exactly what it hides through
// the host kernel's EROFS driver (which trusts the filter), checked on a loop mount.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { openImage, ErofsError, type ErofsReader, type OpenOptions } from '../src/erofs/index.js';
import { filterSaysAbsent, xattrFilterBit } from '../src/erofs/xattr-filter.js';
import { crc32c } from '../src/erofs/superblock.js';
import { SHARED_IMAGES, SCRATCH_DIR } from './support/paths.js';
import { loadManifest } from './support/manifest.js';
import { loopMount } from './support/loop-mount.js';

/** Names guests ask for that images rarely carry, and some they do. */
const PROBE_NAMES = [
  'security.capability', 'security.selinux', 'security.ima', 'security.evm', 'security.SMACK64',
  'system.posix_acl_access', 'system.posix_acl_default', 'trusted.overlay.opaque', 'trusted.overlay.origin',
  'trusted.overlay.redirect', 'user.mime_type', 'user.xdg.origin.url', 'trusted.erofs.fingerprint', 'user.',
  'system.nfs4_acl', 'lustre.lov',
];

function imageNames(): string[] {
  return fs.readdirSync(SHARED_IMAGES).filter((f) => f.endsWith('.erofs')).map((f) => f.slice(0, -'.erofs'.length)).sort();
}

function optionsFor(name: string): OpenOptions {
  return name === 'chunked-blobdev' ? { devices: [path.join(SHARED_IMAGES, 'chunked-blob.blob')] } : {};
}

function resolve(r: ErofsReader, rel: string): number {
  let nid = r.rootNid;
  if (rel === '') return nid;
  for (const part of rel.split('/')) {
    const n = r.lookup(nid, part);
    assert.ok(n !== undefined, `lookup ${rel}`);
    nid = n;
  }
  return nid;
}

/** getXattr as a comparable string: the value in hex, or the error code. */
function answer(r: ErofsReader, nid: number, name: string): string {
  try {
    return r.getXattr(nid, name).toString('hex');
  } catch (e) {
    if (e instanceof ErofsError) return e.code;
    throw e;
  }
}

/** Byte position of inode `nid`'s xattr ibody header in an ordinary (non-metabox) image. */
function ibodyHeaderPos(img: Buffer, nid: number): { pos: number; xattrIsize: number } {
  const blkszbits = img[1024 + 12]!;
  const metaBlk = img.readUInt32LE(1024 + 40);
  const iloc = metaBlk * 2 ** blkszbits + nid * 32;
  const format = img.readUInt16LE(iloc);
  const icount = img.readUInt16LE(iloc + 2);
  return { pos: iloc + (format & 1 ? 64 : 32), xattrIsize: icount ? 12 + 4 * (icount - 1) : 0 };
}

test('the filter gives the same getXattr answers as the full parse on every shared image', () => {
  let answeredByFilter = 0;
  const withFilter = new Set<string>();
  for (const name of imageNames()) {
    const image = path.join(SHARED_IMAGES, `${name}.erofs`);
    const m = loadManifest(path.join(SHARED_IMAGES, `${name}.expected.json`));
    const presentAnywhere = new Set<string>();
    for (const e of Object.values(m)) for (const n of Object.keys(e.xattrs ?? {})) presentAnywhere.add(n);
    const names = [...new Set([...PROBE_NAMES, ...presentAnywhere])];
    const filtered = openImage(image, optionsFor(name));
    const parsed = openImage(image, { ...optionsFor(name), xattrNameFilter: false });
    const raw = fs.readFileSync(image);
    const metabox = (raw.readUInt32LE(1024 + 80) & 0x100) !== 0;
    try {
      for (const [rel, entry] of Object.entries(m)) {
        const nid = resolve(filtered, rel);
        for (const n of names) {
          const a = answer(filtered, nid, n);
          assert.equal(a, answer(parsed, nid, n), `${name}:/${rel} ${n}`);
          // The kernel's view, for the names it has (absent ones are ENODATA there).
          const want = entry.xattrs?.[n];
          if (want !== undefined) assert.equal(a, want, `${name}:/${rel} ${n} as the kernel shows it`);
        }
        if (metabox) continue;
        const h = ibodyHeaderPos(raw, nid);
        if (h.xattrIsize <= 12) continue;
        const filter = raw.readUInt32LE(h.pos);
        if (filter !== 0) withFilter.add(name);
        for (const n of names) if (entry.xattrs?.[n] === undefined && filterSaysAbsent(filter, xattrFilterBit(n))) answeredByFilter++;
      }
    } finally {
      filtered.close();
      parsed.close();
    }
  }
  assert.ok(withFilter.has('xattr-filter'), `xattr-filter.erofs carries filters (images with filters: ${[...withFilter].join(', ')})`);
  assert.ok(answeredByFilter > 100, `absent names answered from the filter: ${answeredByFilter}`);
});

test('an absent name the filter rules out is answered without reading the entries', () => {
  const image = path.join(SHARED_IMAGES, 'xattr-filter.erofs');
  const m = loadManifest(path.join(SHARED_IMAGES, 'xattr-filter.expected.json'));
  const raw = fs.readFileSync(image);
  const r = openImage(image);
  // Inodes with inline xattrs and a filter: corrupt their entries (not the header) in a copy.
  const work = Buffer.from(raw);
  const probes: { rel: string; absent: string; present: string }[] = [];
  try {
    for (const [rel, e] of Object.entries(m)) {
      const present = Object.keys(e.xattrs ?? {});
      if (present.length === 0) continue;
      const nid = resolve(r, rel);
      const h = ibodyHeaderPos(raw, nid);
      const filter = raw.readUInt32LE(h.pos);
      const absent = PROBE_NAMES.find((n) => !present.includes(n) && filterSaysAbsent(filter, xattrFilterBit(n)));
      if (!absent) continue;
      const shared = raw[h.pos + 4]!;
      if (shared > 0) {
        work.writeUInt32LE(0x3fffffff, h.pos + 12); // a shared xattr id far beyond the image
      } else {
        // An inline entry claiming a 255-byte name and a 64 KiB value: runs past the ibody.
        work[h.pos + 12] = 255;
        work.writeUInt16LE(0xffff, h.pos + 14);
      }
      probes.push({ rel, absent, present: present[0]! });
      if (probes.length >= 20) break;
    }
  } finally {
    r.close();
  }
  assert.ok(probes.length >= 5, `inodes to probe: ${probes.length}`);
  fixChecksum(work); // inodes may share the superblock's block
  fs.mkdirSync(SCRATCH_DIR, { recursive: true });
  const file = path.join(SCRATCH_DIR, 'xattr-filter-corrupt-entries.erofs');
  fs.writeFileSync(file, work);
  const filtered = openImage(file);
  const parsed = openImage(file, { xattrNameFilter: false });
  try {
    for (const p of probes) {
      const nid = resolve(filtered, p.rel);
      assert.equal(answer(filtered, nid, p.absent), 'ENODATA', `${p.rel} ${p.absent} from the filter`);
      assert.equal(answer(parsed, nid, p.absent), 'EIO', `${p.rel} ${p.absent} needs the (corrupt) entries without it`);
      assert.equal(answer(filtered, nid, p.present), 'EIO', `${p.rel} ${p.present}: a present name still parses`);
    }
  } finally {
    filtered.close();
    parsed.close();
    fs.rmSync(file, { force: true });
  }
});

/** getxattr/listxattr through the host kernel for (path, name) pairs: hex value or errno name. */
function kernelXattrs(dir: string, queries: [string, string][]): { get: string[]; list: string[][] } {
  const script = `
import errno, json, os, sys
q = json.load(sys.stdin)
get = []
lists = {}
for p, n in q:
    full = os.path.join(sys.argv[1], p)
    try:
        get.append(os.getxattr(full, n, follow_symlinks=False).hex())
    except OSError as e:
        get.append(errno.errorcode.get(e.errno, str(e.errno)))
    if p not in lists:
        lists[p] = sorted(os.listxattr(full, follow_symlinks=False))
print(json.dumps({"get": get, "list": [lists[p] for p, _ in q]}))
`;
  const out = execFileSync('python3', ['-c', script, dir], { input: JSON.stringify(queries), encoding: 'utf8' });
  return JSON.parse(out) as { get: string[]; list: string[][] };
}

/** Rewrites the superblock checksum after a superblock edit. */
function fixChecksum(img: Buffer): void {
  const sb = img.subarray(1024, 1024 + (1 << img[1024 + 12]!) - 1024);
  const region = Buffer.from(sb);
  region.writeUInt32LE(0, 4);
  img.writeUInt32LE(crc32c(0xffffffff, region), 1024 + 4);
}

test('a corrupt filter hides present xattrs exactly as the kernel does (it trusts the filter)', () => {
  const image = path.join(SHARED_IMAGES, 'xattr-filter.erofs');
  const m = loadManifest(path.join(SHARED_IMAGES, 'xattr-filter.expected.json'));
  const raw = fs.readFileSync(image);
  const r = openImage(image);
  const allOnes = Buffer.from(raw);
  const picked: string[] = [];
  try {
    for (const [rel, e] of Object.entries(m)) {
      if (Object.keys(e.xattrs ?? {}).length === 0) continue;
      const h = ibodyHeaderPos(raw, resolve(r, rel));
      // Every name "absent" on half of them, no name ruled out on the other half.
      allOnes.writeUInt32LE(picked.length % 2 === 0 ? 0xffffffff : 0, h.pos);
      picked.push(rel);
      if (picked.length >= 16) break;
    }
  } finally {
    r.close();
  }
  assert.ok(picked.length >= 4, `inodes with xattrs: ${picked.length}`);
  fixChecksum(allOnes); // inodes may share the superblock's block
  // The same corruption with xattr_filter_reserved set: both the kernel and we ignore the filter.
  const reserved = Buffer.from(allOnes);
  reserved[1024 + 104] = 1;
  fixChecksum(reserved);

  fs.mkdirSync(SCRATCH_DIR, { recursive: true });
  for (const [label, bytes] of [['all-ones filter', allOnes], ['reserved byte set', reserved]] as const) {
    const file = path.join(SCRATCH_DIR, `xattr-filter-${label.replace(/ /g, '-')}.erofs`);
    fs.writeFileSync(file, bytes);
    const ours = openImage(file);
    const loop = loopMount(file);
    try {
      const queries: [string, string][] = [];
      for (const rel of picked) {
        for (const n of [...Object.keys(m[rel]!.xattrs!), ...PROBE_NAMES.filter((n) => xattrFilterBit(n) >= 0 && n !== 'user.')]) queries.push([rel, n]);
      }
      const kernel = kernelXattrs(loop.dir, queries);
      let hidden = 0;
      queries.forEach(([rel, n], i) => {
        const nid = resolve(ours, rel);
        const mine = answer(ours, nid, n);
        assert.equal(mine, kernel.get[i], `${label}: /${rel} ${n}`);
        if (mine === 'ENODATA' && m[rel]!.xattrs![n] !== undefined) hidden++;
        assert.deepEqual(ours.listXattrs(nid).map((x) => x.name).sort(), kernel.list[i], `${label}: listxattr /${rel}`);
      });
      if (label === 'all-ones filter') assert.ok(hidden > 0, 'the all-ones filter hides present names (as in the kernel)');
      else assert.equal(hidden, 0, 'with the reserved byte set the filter is ignored');
    } finally {
      loop.unmount();
      ours.close();
      fs.rmSync(file, { force: true });
    }
  }
});
