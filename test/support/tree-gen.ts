// A deterministic source tree for mkfs.erofs: every file type, many file sizes (empty, tail-packed,
// block-aligned, sparse, 1 MiB+), hard links, short and long symlinks, devices, fifos, a socket,
// user.*/trusted.* xattrs (some shared by many inodes), POSIX ACLs, a 10,000-entry directory,
// deep nesting and odd names. The same version always produces the same tree (content, modes,
// owners, mtimes with nanoseconds), so images built from it can be cached.
//
// Node creates the content; one python3 process then applies what Node cannot (mknod, mkfifo,
// sockets, hard links once their targets exist, lchown, xattrs, setfacl, nanosecond utimes) in a
// safe order. mkfs.erofs 1.5 limits: no 255-byte names (it fails), and compact inodes cannot hold
// 32-bit uid/gid (build-images leaves those two files out of compact variants).
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';

/** Bump whenever the generated tree changes: cached images are keyed by it. */
export const TREE_VERSION = 4;

/** Deterministic 32-bit PRNG (mulberry32). */
export class Rng {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0; }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Integer in [0, n). */
  int(n: number): number { return this.next() % n; }
  fill(buf: Buffer): Buffer {
    let i = 0;
    for (; i + 4 <= buf.length; i += 4) buf.writeUInt32LE(this.next(), i);
    for (; i < buf.length; i++) buf[i] = this.next() & 0xff;
    return buf;
  }
}

type Pattern = 'random' | 'text' | 'zeros' | 'mixed' | 'repeat';

const WORDS = ['erofs', 'virtio', 'fuse', 'page', 'cache', 'block', 'inode', 'the', 'of', 'and',
  'compressed', 'cluster', 'extent', 'lz4', 'share', 'guest', 'host', 'daemon', 'read', 'only'];

function content(rng: Rng, size: number, pattern: Pattern): Buffer {
  const buf = Buffer.alloc(size);
  switch (pattern) {
    case 'zeros': return buf;
    case 'random': return rng.fill(buf);
    case 'repeat': {
      const unit = rng.fill(Buffer.alloc(1 + rng.int(300)));
      for (let i = 0; i < size; i += unit.length) unit.copy(buf, i);
      return buf;
    }
    case 'text': {
      let i = 0;
      while (i < size) {
        const w = WORDS[rng.int(WORDS.length)]! + (rng.int(12) === 0 ? '\n' : ' ');
        i += buf.write(w, i);
      }
      return buf;
    }
    case 'mixed': {
      // 4 KiB runs of random, text, zeros: compressible and incompressible pclusters interleave.
      for (let off = 0; off < size; off += 4096) {
        const n = Math.min(4096, size - off);
        const kinds: Pattern[] = ['random', 'text', 'zeros', 'repeat'];
        content(rng, n, kinds[rng.int(kinds.length)]!).copy(buf, off);
      }
      return buf;
    }
  }
}

interface Meta {
  /** Relative path. */
  p: string;
  kind: 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket' | 'hardlink';
  /** For hard links: the existing path. */
  src?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  /** mtime as [seconds, nanoseconds]. */
  mtime?: [number, number];
  rdev?: [number, number];
  xattrs?: Record<string, string>; // name → hex
  acl?: string; // setfacl -m spec
  defaultAcl?: string; // setfacl -d -m spec (dirs)
}

const PY_APPLY = String.raw`
import json, os, socket, stat, subprocess, sys
root = sys.argv[1]
metas = json.load(sys.stdin)
def P(m): return os.path.join(root, m['p']) if m['p'] else root
# 1. special files
for m in metas:
    k = m['kind']; p = P(m)
    if k == 'chardev': os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(*m['rdev']))
    elif k == 'blockdev': os.mknod(p, 0o600 | stat.S_IFBLK, os.makedev(*m['rdev']))
    elif k == 'fifo': os.mkfifo(p, 0o644)
    elif k == 'socket':
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        cwd = os.getcwd(); os.chdir(os.path.dirname(p)); s.bind(os.path.basename(p)); os.chdir(cwd); s.close()
for m in metas:
    if m['kind'] == 'hardlink': os.link(os.path.join(root, m['src']), P(m), follow_symlinks=False)
# 2. owners, then modes (chown clears set-id bits)
for m in metas:
    if m['kind'] == 'hardlink': continue
    p = P(m)
    if 'uid' in m: os.chown(p, m['uid'], m['gid'], follow_symlinks=False)
    if 'mode' in m and m['kind'] != 'symlink': os.chmod(p, m['mode'])
# 3. ACLs (may rewrite group bits through the mask, as on any real system)
for m in metas:
    if m.get('acl'): subprocess.run(['setfacl', '-m', m['acl'], P(m)], check=True)
    if m.get('defaultAcl'): subprocess.run(['setfacl', '-d', '-m', m['defaultAcl'], P(m)], check=True)
# 4. xattrs
for m in metas:
    for n, v in (m.get('xattrs') or {}).items():
        os.setxattr(P(m), n, bytes.fromhex(v), follow_symlinks=False)
# 5. times, deepest first so that no later change touches a directory's mtime
for m in sorted(metas, key=lambda m: -m['p'].count('/') - (1 if m['p'] else 0)):
    if 'mtime' in m:
        ns = m['mtime'][0] * 1000000000 + m['mtime'][1]
        os.utime(P(m), ns=(ns, ns), follow_symlinks=False)
`;

export interface TreeInfo {
  dir: string;
  /** Relative path of the 10,000-entry directory. */
  bigDir: string;
  bigDirEntries: number;
  /** Relative paths of a few notable files, for targeted tests. */
  sparseFile: string;
  largeFile: string;
  longSymlink: string;
}

export const BIG_DIR = 'bigdir';
export const BIG_DIR_ENTRIES = 10_000;
export const SMALL_BIG_DIR_ENTRIES = 300;

/**
 * Generates the tree into `dir` (which must not exist). Deterministic for a given TREE_VERSION.
 * Requires root (devices, chown), python3 and setfacl.
 */
export function generateTree(dir: string, opts: { small?: boolean } = {}): TreeInfo {
  // small: the same kinds of objects in far fewer and smaller files (for corruption fuzzing,
  // where every mutant is opened and walked completely).
  const small = !!opts.small;
  const rng = new Rng(0xe50f5 + TREE_VERSION);
  const metas: Meta[] = [];
  const mtime = (): [number, number] => [1_500_000_000 + rng.int(200_000_000), rng.int(1_000_000_000)];
  const abs = (p: string) => path.join(dir, p);
  fs.mkdirSync(dir, { recursive: false });
  const root: Meta = { p: '', kind: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [1_600_000_000, 123_456_789] };
  metas.push(root);

  const mkdir = (p: string, extra: Partial<Meta> = {}) => {
    fs.mkdirSync(abs(p));
    const m: Meta = { p, kind: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: mtime(), ...extra };
    metas.push(m);
    return m;
  };
  const file = (p: string, data: Buffer, extra: Partial<Meta> = {}) => {
    fs.writeFileSync(abs(p), data);
    const m: Meta = { p, kind: 'file', mode: 0o644, uid: 0, gid: 0, mtime: mtime(), ...extra };
    metas.push(m);
    return m;
  };
  const symlink = (p: string, target: string, extra: Partial<Meta> = {}) => {
    fs.symlinkSync(target, abs(p));
    const m: Meta = { p, kind: 'symlink', uid: 0, gid: 0, mtime: mtime(), ...extra };
    metas.push(m);
    return m;
  };
  // Hard links are made by the python pass, after the special files they may point at exist.
  const hardlink = (existing: string, p: string) => {
    metas.push({ p, kind: 'hardlink', src: existing });
  };
  const special = (p: string, kind: Meta['kind'], extra: Partial<Meta> = {}) => {
    const m: Meta = { p, kind, mode: 0o600, uid: 0, gid: 0, mtime: mtime(), ...extra };
    metas.push(m);
    return m;
  };
  const hex = (s: string | Buffer) => Buffer.from(s).toString('hex');

  // --- regular files of many sizes and contents
  mkdir('sizes');
  const sizes = [0, 1, 2, 15, 100, 511, 512, 513, 1000, 2047, 2048, 3000, 4000, 4095, 4096, 4097,
    5000, 8191, 8192, 8193, 12289, 16384, 20000, 32767, 32768, 65535, 65536, 65537, 100_000,
    131_071, 131_072, 131_073, 200_000, 262_144, 300_001];
  const patterns: Pattern[] = small ? ['random', 'text', 'mixed'] : ['random', 'text', 'zeros', 'mixed', 'repeat'];
  const smallSizes = new Set([0, 1, 100, 4095, 4097, 8193, 65537, 200_000]);
  for (const size of sizes) {
    if (small && !smallSizes.has(size)) continue;
    for (const pat of patterns) {
      if (size === 0 && pat !== 'zeros') continue;
      file(`sizes/${pat}-${size}`, content(rng, size, pat));
    }
  }
  mkdir('large');
  const largeFile = 'large/mixed-3m';
  file(largeFile, content(rng, small ? 300_000 : 3 * 1024 * 1024 + 12_345, 'mixed'));
  if (!small) {
    file('large/random-1m', content(rng, 1024 * 1024 + 1, 'random'));
    file('large/text-2m', content(rng, 2 * 1024 * 1024 - 7, 'text'));
    file('large/zeros-1m', content(rng, 1024 * 1024, 'zeros'));
    file('large/repeat-1m', content(rng, 1024 * 1024 + 4096, 'repeat'));
  }
  // Sparse: holes at the start, middle and end.
  const sparseFile = 'large/sparse';
  {
    const fd = fs.openSync(abs(sparseFile), 'w');
    const mib = small ? 64 * 1024 : 1024 * 1024;
    fs.writeSync(fd, content(rng, 5000, 'random'), 0, 5000, mib);
    fs.writeSync(fd, content(rng, 70_000, 'text'), 0, 70_000, 3 * mib + 100);
    fs.ftruncateSync(fd, 5 * mib + 17);
    fs.closeSync(fd);
    metas.push({ p: sparseFile, kind: 'file', mode: 0o640, uid: 0, gid: 0, mtime: mtime() });
  }
  {
    const fd = fs.openSync(abs('large/sparse-all-hole'), 'w');
    fs.ftruncateSync(fd, small ? 100_000 : 2 * 1024 * 1024);
    fs.closeSync(fd);
    metas.push({ p: 'large/sparse-all-hole', kind: 'file', mode: 0o644, uid: 0, gid: 0, mtime: mtime() });
  }

  // --- modes and owners
  mkdir('perms');
  const modeList = [0o000, 0o400, 0o444, 0o600, 0o640, 0o700, 0o755, 0o777, 0o4755, 0o2755, 0o6711, 0o1777, 0o7777];
  for (const mode of modeList) file(`perms/mode-${mode.toString(8)}`, content(rng, 10, 'text'), { mode });
  mkdir('perms/sticky-dir', { mode: 0o1777 });
  mkdir('perms/setgid-dir', { mode: 0o2775, gid: 100 });
  const owners: [number, number][] = [[1000, 1000], [65534, 65534], [1, 2], [65535, 0], [70_000, 80_000], [4_000_000_000, 123]];
  for (const [uid, gid] of owners) file(`perms/owner-${uid}-${gid}`, content(rng, 20, 'text'), { uid, gid });
  symlink('perms/symlink-owned', 'mode-644', { uid: 1000, gid: 1000 });
  mkdir('perms/dir-owned', { uid: 1234, gid: 5678, mode: 0o750 });

  // --- mtimes
  mkdir('times');
  const times: [number, number][] = [[0, 0], [1, 1], [1_000_000_000, 999_999_999], [2_147_483_647, 500],
    [2_147_483_648, 0], [4_102_444_800, 42], [1_600_000_000, 123_456_789], [17_179_869_184, 1]];
  for (const [s, ns] of times) file(`times/t-${s}-${ns}`, Buffer.from(`${s}\n`), { mtime: [s, ns] });

  // --- symlinks
  mkdir('links');
  symlink('links/short', 'a');
  symlink('links/rel', '../sizes/text-4096');
  symlink('links/abs', '/absolute/target/that/does/not/exist');
  symlink('links/dangling', 'nowhere');
  symlink('links/dot', '.');
  symlink('links/len-59', 'x'.repeat(59));
  symlink('links/len-200', 'y/'.repeat(100));
  symlink('links/len-4000', 'z'.repeat(3999) + '/');
  const longSymlink = 'links/len-4095';
  symlink(longSymlink, ('long-' + 'abcdefghij'.repeat(409)).slice(0, 4095));
  symlink('links/unicode', 'ünïcödé/日本語');

  // --- hard links
  mkdir('hard');
  mkdir('hard/sub');
  file('hard/orig', content(rng, 9000, 'text'));
  hardlink('hard/orig', 'hard/link1');
  hardlink('hard/orig', 'hard/sub/link2');
  hardlink('hard/orig', 'sizes/hard-into-sizes');
  file('hard/empty-orig', Buffer.alloc(0));
  hardlink('hard/empty-orig', 'hard/empty-link');
  file('hard/big-orig', content(rng, 300_000, 'mixed'));
  hardlink('hard/big-orig', 'hard/big-link');
  symlink('hard/symlink-orig', 'target-of-hardlinked-symlink');
  hardlink('hard/symlink-orig', 'hard/symlink-link');

  // --- devices, fifos, sockets
  mkdir('dev');
  special('dev/null-like', 'chardev', { rdev: [1, 3], mode: 0o666 });
  special('dev/tty', 'chardev', { rdev: [4, 64], mode: 0o620, gid: 5 });
  special('dev/big-major', 'chardev', { rdev: [4000, 1_000_000] });
  special('dev/sda1', 'blockdev', { rdev: [8, 1], mode: 0o660, gid: 6 });
  special('dev/loop-big', 'blockdev', { rdev: [259, 65_536] });
  special('dev/zero-zero', 'blockdev', { rdev: [0, 0] });
  special('dev/fifo', 'fifo', { mode: 0o644 });
  special('dev/fifo-private', 'fifo', { mode: 0o600, uid: 1000, gid: 1000 });
  special('dev/socket', 'socket', { mode: 0o755 });
  hardlink('dev/sda1', 'dev/sda1-link');

  // --- xattrs
  mkdir('xattrs');
  file('xattrs/one', content(rng, 100, 'text'), { xattrs: { 'user.one': hex('1') } });
  file('xattrs/empty-value', content(rng, 10, 'text'), { xattrs: { 'user.empty': '' } });
  file('xattrs/binary', content(rng, 10, 'text'), { xattrs: { 'user.bin': rng.fill(Buffer.alloc(64)).toString('hex') } });
  file('xattrs/big-value', content(rng, 5000, 'random'), { xattrs: { 'user.big': rng.fill(Buffer.alloc(1800)).toString('hex') } });
  {
    const many: Record<string, string> = {};
    for (let i = 0; i < (small ? 12 : 40); i++) many[`user.many.${String(i).padStart(2, '0')}`] = hex(`value-${i}-${'v'.repeat(i)}`);
    file('xattrs/many', content(rng, 4096, 'text'), { xattrs: many });
  }
  file('xattrs/trusted', content(rng, 30, 'text'), {
    xattrs: { 'trusted.overlay.opaque': hex('y'), 'trusted.secret': hex('hidden from users'), 'user.mixed': hex('u') },
  });
  file('xattrs/long-name', Buffer.from('n'), { xattrs: { ['user.' + 'N'.repeat(250)]: hex('long name') } });
  mkdir('xattrs/dir-with-xattrs', { xattrs: { 'user.dirattr': hex('on a directory'), 'trusted.overlay.origin': hex('00fb') } });
  symlink('xattrs/symlink-with-xattr', 'one', { xattrs: { 'trusted.symlinkattr': hex('link') } });
  special('xattrs/fifo-with-xattr', 'fifo', { xattrs: { 'trusted.fifo': hex('f') } });
  special('xattrs/dev-with-xattr', 'chardev', { rdev: [10, 200], xattrs: { 'trusted.dev': hex('d') } });
  // The same xattr on many inodes: mkfs.erofs turns it into a shared xattr.
  for (let i = 0; i < (small ? 6 : 30); i++) {
    file(`xattrs/shared-${String(i).padStart(2, '0')}`, content(rng, i * 37, 'text'), {
      xattrs: { 'user.shared': hex('deadbeef'), 'user.shared2': hex('common value two'), [`user.own${i}`]: hex(String(i)) },
    });
  }
  // Inline-data files with xattrs: xattrs and tail data share the inode's block.
  file('xattrs/inline-tail', content(rng, 3500, 'text'), { xattrs: { 'user.t': hex('x'.repeat(300)) } });

  // --- POSIX ACLs
  mkdir('acl');
  file('acl/user', content(rng, 50, 'text'), { acl: 'u:1000:rwx,g::r-x' });
  file('acl/users-groups', content(rng, 50, 'text'), { acl: 'u:1000:rw-,u:2000:r--,g:100:rwx,g:200:---,m::rwx,o::r--' });
  mkdir('acl/default-dir', { acl: 'u:1000:rwx', defaultAcl: 'u:1000:rwx,g:100:r-x' });
  file('acl/acl-and-xattr', content(rng, 50, 'text'), { acl: 'g:300:r--', xattrs: { 'user.also': hex('x') } });

  // --- deep nesting
  let deep = 'deep';
  mkdir(deep);
  for (let i = 0; i < (small ? 6 : 24); i++) {
    deep += `/level-${i}`;
    mkdir(deep);
    if (i % 5 === 0) file(`${deep}/file-${i}`, content(rng, 100 + i, 'text'));
  }
  file(`${deep}/bottom`, Buffer.from('the bottom\n'));
  mkdir('empty-dir');
  mkdir('empty-dir-2', { mode: 0o700 });

  // --- odd names
  mkdir('names');
  const odd = ['space name', 'tab\tname', 'newline\nname', 'ünïcödé-日本語', '-dash', '.hidden', '..dots..',
    'back\\slash', 'quote"s\'', 'star*?[]', 'emoji-🦀', 'a', 'A', 'a.b.c', '%41', 'colon:semi;',
    // 254 bytes: mkfs.erofs 1.5 fails on 255-byte names (ENOENT while formatting).
    'x'.repeat(254), 'é'.repeat(127), '\u0001ctrl', 'trailing space '];
  for (const n of odd) file(`names/${n}`, Buffer.from(n));
  mkdir('names/ünïcödé-dir');
  file('names/ünïcödé-dir/inner', Buffer.from('inner'));

  // --- the big directory: 10,000 entries of mixed kinds and name lengths
  mkdir(BIG_DIR);
  const bigEntries = small ? SMALL_BIG_DIR_ENTRIES : BIG_DIR_ENTRIES;
  for (let i = 0; i < bigEntries; i++) {
    const len = 1 + rng.int(40);
    const name = `e${String(i).padStart(5, '0')}-${'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(2).slice(0, len)}`;
    const p = `${BIG_DIR}/${name}`;
    const r = i % 100;
    if (r === 0) mkdir(p);
    else if (r === 1) symlink(p, `target-${i}`);
    else if (r === 2) hardlink('hard/orig', p);
    else if (r < 10) file(p, content(rng, rng.int(200), 'text'), { xattrs: i % 20 === 3 ? { 'user.shared': hex('deadbeef') } : undefined });
    else {
      fs.writeFileSync(abs(p), '');
      metas.push({ p, kind: 'file', mode: 0o644, uid: 0, gid: 0, mtime: [1_600_000_000 + i, i] });
    }
  }

  for (const m of metas) if (m.xattrs === undefined) delete m.xattrs;
  execFileSync('python3', ['-c', PY_APPLY, dir], { input: JSON.stringify(metas), stdio: ['pipe', 'inherit', 'inherit'] });
  return { dir, bigDir: BIG_DIR, bigDirEntries: bigEntries, sparseFile, largeFile, longSymlink };
}

/**
 * The tree for TREE_VERSION under `parent`, generated once (atomically: a half-built tree is
 * never seen by a concurrent or later run).
 */
export function ensureTree(parent: string, opts: { small?: boolean } = {}): TreeInfo {
  const dir = path.join(parent, `tree-${opts.small ? 'small-' : ''}v${TREE_VERSION}`);
  const info = (): TreeInfo => ({ dir, bigDir: BIG_DIR, bigDirEntries: opts.small ? SMALL_BIG_DIR_ENTRIES : BIG_DIR_ENTRIES,
    sparseFile: 'large/sparse', largeFile: 'large/mixed-3m', longSymlink: 'links/len-4095' });
  if (fs.existsSync(dir)) return info();
  fs.mkdirSync(parent, { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  try {
    generateTree(tmp, opts);
    try {
      fs.renameSync(tmp, dir);
    } catch (e) {
      if (!fs.existsSync(dir)) throw e; // someone else won the race: use theirs
    }
  } finally {
    if (fs.existsSync(tmp)) fs.rmSync(tmp, { recursive: true, force: true });
  }
  return info();
}
