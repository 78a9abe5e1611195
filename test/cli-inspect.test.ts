// `erofs-vfsd inspect`, spawned as the built CLI against the shared images (whose kernel view is
// known): superblock summary, listings, stat, xattrs, fingerprints, --cat, --json, -R, --device,
// and a one-line error with exit status 1 on corrupt or missing input.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { REPO_ROOT, SHARED_IMAGES, SCRATCH_DIR } from './support/paths.js';
import { loadManifest, type Manifest } from './support/manifest.js';

const CLI = path.join(REPO_ROOT, 'dist/src/cli/main.js');

function inspect(...args: string[]): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, 'inspect', ...args], { maxBuffer: 64 << 20, timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}
function ok(...args: string[]): string {
  const r = inspect(...args);
  assert.equal(r.status, 0, `inspect ${args.join(' ')} failed: ${r.stderr}`);
  assert.equal(r.stderr, '', 'nothing on stderr on success');
  return r.stdout.toString();
}
function json(...args: string[]): Record<string, any> { // eslint-disable-line @typescript-eslint/no-explicit-any
  return JSON.parse(ok(...args, '--json')) as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
}
const img = (name: string) => path.join(SHARED_IMAGES, `${name}.erofs`);
const manifest = (name: string): Manifest => loadManifest(path.join(SHARED_IMAGES, `${name}.expected.json`));
const children = (m: Manifest, dir: string) =>
  Object.keys(m).filter((p) => p !== dir && (dir === '' ? !p.includes('/') : p.startsWith(`${dir}/`) && !p.slice(dir.length + 1).includes('/')))
    .map((p) => (dir === '' ? p : p.slice(dir.length + 1))).sort();

test('text summary: superblock fields by name, then the root listing', () => {
  const out = ok(img('lz4'));
  assert.match(out, /^block size: +4096$/m);
  assert.match(out, /^features: +.*\bsb_csum\b.*\blz4_0padding\b/m);
  assert.match(out, /^compression: +lz4$/m);
  assert.match(out, /^inodes: +\d+$/m);
  assert.match(out, /^blocks: +\d+$/m);
  assert.match(out, /^uuid: +[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/m);
  assert.match(out, /^build time: +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/m);
  const m = manifest('lz4');
  for (const name of children(m, '')) {
    const e = m[name]!;
    assert.match(out, new RegExp(`^[-dlcbps][-rwxsStT]{9} +${e.nlink} +${e.uid} +${e.gid} .* ${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}( -> .*)?$`, 'm'), `root entry ${name}`);
  }
  const plain = ok(img('plain'));
  assert.match(plain, /^compression: +none$/m);
});

test('--json: superblock, stat and listing agree with the kernel view', () => {
  const m = manifest('plain');
  const doc = json(img('plain'));
  assert.equal(doc.superblock.blockSize, 4096);
  assert.ok(Array.isArray(doc.superblock.features) && doc.superblock.features.includes('sb_csum'));
  assert.deepEqual(doc.superblock.compressionAlgorithms, []);
  assert.ok(doc.superblock.inodes > 0 && doc.superblock.blocks > 0);
  assert.equal(doc.stat.type, 'dir');
  assert.equal(doc.stat.mode, m['']!.mode);
  const listing = doc.directories[0];
  assert.equal(listing.path, '/');
  assert.deepEqual(listing.entries.map((e: { name: string }) => e.name).sort(), children(m, ''));
  for (const e of listing.entries) {
    const want = m[e.name]!;
    assert.equal(e.type, want.type, e.name);
    assert.equal(e.mode, want.mode, e.name);
    assert.equal(e.uid, want.uid, e.name);
    assert.equal(e.nlink, want.nlink, e.name);
    assert.equal(BigInt(e.mtime.sec) * 1_000_000_000n + BigInt(e.mtime.nsec), BigInt(want.mtime_ns), e.name);
    if (want.type === 'file') assert.equal(e.size, want.size, e.name);
    if (want.target !== undefined) assert.equal(e.target, want.target, e.name);
    if (want.rdev) assert.deepEqual(e.rdev, want.rdev, e.name);
  }
});

test('stat of files, symlinks and devices; xattrs as the kernel lists them', () => {
  const m = manifest('plain');
  const pick = (pred: (p: string) => boolean) => Object.keys(m).find(pred);
  const withXattrs = pick((p) => m[p]!.type === 'file' && !!m[p]!.xattrs && Object.keys(m[p]!.xattrs!).length > 1)!;
  const symlink = pick((p) => m[p]!.type === 'symlink')!;
  const dev = pick((p) => m[p]!.type === 'chardev' || m[p]!.type === 'blockdev')!;
  assert.ok(withXattrs && symlink && dev, 'the shared image has xattrs, symlinks and devices');

  const st = json(img('plain'), withXattrs).stat;
  const want = m[withXattrs]!;
  assert.equal(st.path, `/${withXattrs}`);
  assert.equal(st.size, want.size);
  assert.equal(st.nlink, want.nlink);
  assert.deepEqual(Object.fromEntries(st.xattrs.map((x: { name: string; value: string }) => [x.name, x.value])), want.xattrs);
  const text = ok(img('plain'), withXattrs);
  for (const name of Object.keys(want.xattrs!)) assert.match(text, new RegExp(`^  ${name.replace(/\./g, '\\.')} = `, 'm'));
  assert.match(text, new RegExp(`^size: +${want.size}$`, 'm'));

  assert.equal(json(img('plain'), symlink).stat.target, m[symlink]!.target);
  assert.match(ok(img('plain'), symlink), new RegExp(`^target: +${m[symlink]!.target!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
  assert.deepEqual(json(img('plain'), dev).stat.rdev, m[dev]!.rdev);
  assert.match(ok(img('plain'), dev), new RegExp(`^rdev: +${m[dev]!.rdev!.join(':')}$`, 'm'));
});

test('fingerprints: the digest xattr of every file equals sha256 of its content', () => {
  for (const name of ['digest-plain-a', 'digest-lz4-a']) {
    const m = manifest(name);
    const files = Object.keys(m).filter((p) => m[p]!.type === 'file');
    assert.ok(files.length > 0);
    for (const f of [files[0]!, files[Math.floor(files.length / 2)]!, files[files.length - 1]!]) {
      assert.equal(json(img(name), f).stat.fingerprint, `sha256:${m[f]!.sha256}`, `${name}:${f}`);
    }
    assert.match(ok(img(name), files[0]!), new RegExp(`^fingerprint: +sha256:${m[files[0]!]!.sha256}$`, 'm'));
  }
  assert.equal(json(img('plain'), Object.keys(manifest('plain')).find((p) => manifest('plain')[p]!.type === 'file')!).stat.fingerprint, null);
});

test('--cat streams exact content (plain, lz4, lz4hc big pclusters, chunked on an extra device)', () => {
  const cases: [string, string[]][] = [['plain', []], ['lz4', []], ['lz4hc-bigpcluster', []], ['chunked-blobdev', ['--device', path.join(SHARED_IMAGES, 'chunked-blob.blob')]]];
  for (const [name, extra] of cases) {
    const m = manifest(name);
    const files = Object.keys(m).filter((p) => m[p]!.type === 'file').sort((a, b) => (m[b]!.size ?? 0) - (m[a]!.size ?? 0));
    for (const f of [files[0]!, files[files.length - 1]!, files[Math.floor(files.length / 2)]!]) {
      const r = inspect(img(name), f, '--cat', ...extra);
      assert.equal(r.status, 0, `${name}:${f}: ${r.stderr}`);
      assert.equal(r.stdout.length, m[f]!.size, `${name}:${f} size`);
      assert.equal(crypto.createHash('sha256').update(r.stdout).digest('hex'), m[f]!.sha256, `${name}:${f} content`);
    }
  }
});

test('-R lists every path below a directory', () => {
  const m = manifest('plain');
  const top = children(m, '').find((n) => m[n]!.type === 'dir' && Object.keys(m).some((p) => p.startsWith(`${n}/`) && p.slice(n.length + 1).includes('/')))!;
  assert.ok(top, 'a directory with subdirectories');
  const doc = json(img('plain'), top, '-R');
  const listed = doc.directories.flatMap((d: { path: string; entries: { name: string }[] }) => d.entries.map((e) => `${d.path.slice(1)}/${e.name}`)).sort();
  assert.deepEqual(listed, Object.keys(m).filter((p) => p.startsWith(`${top}/`)).sort());
  const text = ok(img('plain'), top, '-R');
  assert.ok(text.split('\n').filter((l) => /^\/.*: \d+ entr(y|ies)$/.test(l)).length >= 2, 'a header per directory');
});

test('corrupt or missing input: exit 1 and exactly one line on stderr', () => {
  fs.mkdirSync(SCRATCH_DIR, { recursive: true });
  const pristine = fs.readFileSync(img('lz4'));
  const cases: [string, Buffer | null, string[]][] = [];
  const badMagic = Buffer.from(pristine); badMagic.writeUInt32LE(0x12345678, 1024);
  cases.push(['bad magic', badMagic, []]);
  const badCsum = Buffer.from(pristine); badCsum[1024 + 0x30] ^= 0xff; // uuid byte: checksum no longer matches
  cases.push(['bad checksum', badCsum, []]);
  cases.push(['truncated', pristine.subarray(0, 1500), []]);
  cases.push(['empty', Buffer.alloc(0), []]);
  cases.push(['truncated data', pristine.subarray(0, Math.floor(pristine.length / 3)), ['-R']]);
  cases.push(['missing path', pristine, ['/no/such/path']]);
  cases.push(['path through a file', pristine, [`${Object.keys(manifest('lz4')).find((p) => manifest('lz4')[p]!.type === 'file')}/x`]]);
  cases.push(['cat of a directory', pristine, ['/', '--cat']]);
  for (const [what, bytes, args] of cases) {
    const file = path.join(SCRATCH_DIR, `inspect-${what.replace(/ /g, '-')}.erofs`);
    fs.writeFileSync(file, bytes!);
    try {
      for (const extra of what === 'bad magic' || what === 'truncated data' ? [[], ['--json']] : [[]]) {
        const r = inspect(file, ...args, ...extra);
        assert.equal(r.status, 1, `${what}: exit status (stderr: ${r.stderr})`);
        const lines = r.stderr.split('\n');
        assert.equal(lines.length, 2, `${what}: one line on stderr, got ${JSON.stringify(r.stderr)}`);
        assert.equal(lines[1], '');
        assert.match(lines[0]!, /^erofs-vfsd inspect: .+/, what);
        assert.equal(r.stdout.length, 0, `${what}: nothing on stdout`);
      }
    } finally {
      fs.rmSync(file, { force: true });
    }
  }
  const r = inspect(path.join(SCRATCH_DIR, 'does-not-exist.erofs'));
  assert.equal(r.status, 1);
  assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
});

test('--nid selects an inode by NID (all its paths), -i shows NIDs in listings', () => {
  const m = manifest('plain');
  const hard = Object.keys(m).filter((p) => m[p]!.type === 'file' && m[p]!.nlink > 1);
  assert.ok(hard.length >= 2, 'hard links in the image');
  const nid = json(img('plain'), hard[0]!).stat.nid as number;
  const byNid = json(img('plain'), '--nid', String(nid)).stat;
  assert.equal(byNid.nid, nid);
  const sameInode = hard.filter((p) => json(img('plain'), p).stat.nid === nid).map((p) => `/${p}`).sort();
  assert.deepEqual([...byNid.paths].sort(), sameInode, 'every name of the inode');
  assert.match(ok(img('plain'), '--nid', String(nid)), new RegExp(`^nid: +${nid}$`, 'm'));
  const listing = ok(img('plain'), '-i');
  const root = json(img('plain')).directories[0].entries as { name: string; nid: number }[];
  for (const e of root) assert.match(listing, new RegExp(`^ *${e.nid} [-dlcbps].* ${e.name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}( -> .*)?$`, 'm'), e.name);
  const both = inspect(img('plain'), '/', '--nid', String(nid));
  assert.equal(both.status, 1);
  assert.match(both.stderr, /path or --nid, not both/);
  const bad = inspect(img('plain'), '--nid', '999999999');
  assert.equal(bad.status, 1, 'a NID beyond the image is an error');
  assert.equal(bad.stderr.trimEnd().split('\n').length, 1, bad.stderr);
});

test('--stats and --extents in text and JSON; superblock shows the device table', () => {
  const s = ok(img('lz4'), '-S');
  assert.match(s, /^ +regular files: +1112$/m);
  assert.match(s, /^original size \(regular files\):$/m);
  assert.match(s, /^on-disk size \(regular files\):$/m);
  assert.match(s, /^incompat: +lz4_0padding$/m);
  assert.match(s, /^needs Linux: +5\.4 or later$/m);
  const st = json(img('lz4'), '-S').statistics;
  assert.equal(st.originalHistogram.reduce((a: number, b: number) => a + b, 0), st.byType.file);
  assert.ok(st.onDiskBytes < st.originalBytes, 'lz4 saves space');
  const m = manifest('lz4');
  const big = Object.keys(m).filter((p) => m[p]!.type === 'file').sort((a, b) => m[b]!.size! - m[a]!.size!)[0]!;
  const ex = json(img('lz4'), big, '--extents').extents as { logical: number; length: number; kind: string }[];
  assert.ok(ex.length > 1 && ex.every((e) => e.kind === 'compressed' || e.kind === 'plain' || e.kind === 'inline'));
  assert.equal(ex.reduce((n, e) => n + e.length, 0), m[big]!.size, 'the extents cover the file');
  assert.match(ok(img('lz4'), big, '-e'), new RegExp(`^${ex.length} extents$`, 'm'));
  const blob = path.join(SHARED_IMAGES, 'chunked-blob.blob');
  const sb = ok(img('chunked-blobdev'), '--device', blob);
  assert.match(sb, new RegExp(`^ +device 1: \\d+ blocks, unified start block \\d+, tag ".*", file ${blob.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
  const chunks = json(img('chunked-blobdev'), big, '--device', blob, '-e').extents as { kind: string; device: number }[];
  assert.ok(chunks.some((c) => c.kind === 'chunk' && c.device === 1), 'chunks on the extra device');
});

test('--compare: which files of two images share content, against the source trees', () => {
  const a = manifest('digest-lz4-a');
  const b = manifest('digest-lz4-b');
  const c = json(img('digest-lz4-a'), '--compare', img('digest-lz4-b')).compare;
  const files = (m: Manifest) => Object.keys(m).filter((p) => m[p]!.type === 'file');
  const same = files(b).filter((p) => a[p]?.type === 'file' && a[p]!.sha256 === b[p]!.sha256).map((p) => `/${p}`).sort();
  const changed = files(b).filter((p) => a[p]?.type === 'file' && a[p]!.sha256 !== b[p]!.sha256).map((p) => `/${p}`).sort();
  assert.deepEqual(c.samePathSameContent, same);
  assert.deepEqual(c.samePathChanged, changed);
  assert.ok(changed.length > 100, 'tree b changes ~180 files');
  assert.deepEqual(c.onlyInA, files(a).filter((p) => b[p]?.type !== 'file').map((p) => `/${p}`).sort());
  assert.deepEqual(c.onlyInB, files(b).filter((p) => a[p]?.type !== 'file').map((p) => `/${p}`).sort());
  const inA = new Map(files(a).map((p) => [a[p]!.sha256!, a[p]!.size!]));
  const shared = new Map(files(b).filter((p) => inA.has(b[p]!.sha256!)).map((p) => [b[p]!.sha256!, b[p]!.size!]));
  assert.equal(c.sharedContents, shared.size);
  assert.equal(c.sharedBytes, [...shared.values()].reduce((x, y) => x + y, 0));
  // Without digest xattrs the fingerprints are computed: same answer for the same trees.
  const computed = json(img('plain'), '--compare', img('lz4')).compare;
  assert.equal(computed.fingerprints.a, 'computed');
  assert.equal(computed.samePathChanged.length, 0);
  assert.equal(computed.samePathSameContent.length, files(manifest('plain')).length);
  const text = ok(img('digest-lz4-a'), '--compare', img('digest-lz4-b'));
  assert.match(text, new RegExp(`^same path, changed: +${changed.length}$`, 'm'));
  for (const p of changed.slice(0, 5)) assert.match(text, new RegExp(`^~ ${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'));
});
