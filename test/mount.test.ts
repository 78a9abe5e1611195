// `erofs-vfsd mount` driven by the real Linux FUSE client, compared with the host kernel's own
// EROFS driver (`mount -t erofs -o loop,ro`) on the same image: full walk (lstat, readlink,
// xattrs, sha256), hard-link identity, readdir continuation with tiny getdents buffers and
// lseek-to-cookie restarts, SEEK_DATA/SEEK_HOLE, and clean unmount on SIGTERM/SIGINT.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { SHARED_IMAGES } from './support/paths.js';
import { buildImage } from './support/build-images.js';
import { manifestFromDirectory } from './support/fs-manifest.js';
import { loopMount } from './support/loop-mount.js';
import { diffManifests, loadManifest } from './support/manifest.js';
import { fuseMount, isMounted, type FuseMount } from './support/fuse-mount.js';
import { openImage } from '../src/erofs/index.js';

const os_strerror_ENXIO = 'No such device or address';

async function withBoth<T>(image: string, devices: string[], fn: (fuse: FuseMount, loop: string) => T | Promise<T>): Promise<T> {
  const fuse = await fuseMount(image, { devices });
  const loop = loopMount(image, { devices });
  try {
    const r = await fn(fuse, loop.dir);
    const code = await fuse.stop('SIGTERM');
    assert.equal(code, 0, `erofs-vfsd exit code (stderr: ${fuse.stderr()})`);
    assert.equal(isMounted(fuse.dir), false, 'unmounted after SIGTERM');
    return r;
  } finally {
    fuse.cleanup();
    loop.unmount();
  }
}

/**
 * What the manifest leaves out: st_ino identity (sets of paths sharing an inode, as sorted path
 * lists) and st_blocks/st_blksize per path.
 */
function statExtras(dir: string): { groups: string[][]; blocks: Record<string, string> } {
  const byIno = new Map<bigint, string[]>();
  const blocks: Record<string, string> = {};
  const walk = (rel: string) => {
    const abs = path.join(dir, rel);
    const st = fs.lstatSync(abs, { bigint: true });
    const list = byIno.get(st.ino) ?? [];
    list.push(rel);
    byIno.set(st.ino, list);
    blocks[rel] = `${st.blocks}/${st.blksize}`;
    if (st.isDirectory()) for (const n of fs.readdirSync(abs)) walk(path.join(rel, n));
  };
  walk('');
  const groups = [...byIno.values()].map((l) => l.sort()).filter((l) => l.length > 1).sort((a, b) => (a[0]! < b[0]! ? -1 : 1));
  return { groups, blocks };
}

function compareTrees(fuseDir: string, loopDir: string, expectedFile?: string) {
  const kernel = manifestFromDirectory(loopDir);
  const ours = manifestFromDirectory(fuseDir);
  assert.ok(Object.keys(ours).length > 10, 'walked a real tree');
  const diff = diffManifests(kernel, ours);
  assert.deepEqual(diff, [], diff.join('\n'));
  if (expectedFile) {
    const d2 = diffManifests(loadManifest(expectedFile), ours);
    assert.deepEqual(d2, [], d2.join('\n'));
  }
  const f = statExtras(fuseDir);
  const k = statExtras(loopDir);
  assert.deepEqual(f.groups, k.groups, 'hard links share an inode number exactly as in the kernel view');
  assert.ok(k.groups.length > 0 || !expectedFile, 'the tree has hard links');
  const bad = Object.keys(k.blocks).filter((p) => f.blocks[p] !== k.blocks[p]).slice(0, 10).map((p) => `${p}: kernel ${k.blocks[p]} fuse ${f.blocks[p]}`);
  assert.deepEqual(bad, [], 'st_blocks/st_blksize as the kernel reports them');
}

for (const name of ['plain', 'lz4']) {
  test(`shared ${name}.erofs: FUSE mount reads identically to the kernel loop mount`, async () => {
    const image = path.join(SHARED_IMAGES, `${name}.erofs`);
    await withBoth(image, [], (fuse, loop) => compareTrees(fuse.dir, loop, path.join(SHARED_IMAGES, `${name}.expected.json`)));
  });
}

// More layouts through the whole stack, against the kernel's recorded view (*.expected.json).
const MORE: Array<[string, string[]]> = [
  ['chunked-blobdev', [path.join(SHARED_IMAGES, 'chunked-blob.blob')]],
  ['metabox', []],
  ['lzma', []],
  ['zstd-all-fragments', []],
  ['xattr-prefix', []],
];
for (const [name, devices] of MORE) {
  test(`shared ${name}.erofs through the FUSE mount equals the kernel's view`, async () => {
    const fuse = await fuseMount(path.join(SHARED_IMAGES, `${name}.erofs`), { devices });
    try {
      const ours = manifestFromDirectory(fuse.dir);
      const diff = diffManifests(loadManifest(path.join(SHARED_IMAGES, `${name}.expected.json`)), ours);
      assert.deepEqual(diff, [], diff.join('\n'));
      assert.equal(await fuse.stop('SIGTERM'), 0, fuse.stderr());
      assert.equal(isMounted(fuse.dir), false);
    } finally {
      fuse.cleanup();
    }
  });
}

// getdents64 with a tiny buffer, then lseek() to recorded d_off cookies (telldir/seekdir style).
const PY_GETDENTS = String.raw`
import ctypes, os, sys, json, struct
libc = ctypes.CDLL(None, use_errno=True)
NR = {'x86_64': 217, 'aarch64': 61}[os.uname().machine]
def read(fd, bufsize, limit=None):
    buf = ctypes.create_string_buffer(bufsize)
    out = []; calls = 0
    while limit is None or len(out) < limit:
        n = libc.syscall(NR, fd, buf, bufsize)
        if n < 0:
            e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
        if n == 0: break
        calls += 1
        raw = buf.raw; pos = 0
        while pos < n:
            ino, off, reclen, typ = struct.unpack_from('<QqHB', raw, pos)
            name = raw[pos+19:pos+reclen].split(b'\0', 1)[0].decode('utf8', 'surrogateescape')
            out.append([name, off, typ]); pos += reclen
    return out, calls
d, bufsize = sys.argv[1], int(sys.argv[2])
fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
ents, calls = read(fd, bufsize)
restarts = []
step = max(1, len(ents) // 37)
for k in list(range(0, len(ents) - 1, step)) + [len(ents) - 1]:
    os.lseek(fd, ents[k][1], os.SEEK_SET)
    nxt, _ = read(fd, bufsize, 3)
    restarts.append([k, [x[0] for x in nxt[:3]]])
os.lseek(fd, 0, os.SEEK_SET)
again, _ = read(fd, 4096)
print(json.dumps({'entries': ents, 'calls': calls, 'restarts': restarts, 'again': [x[0] for x in again]}))
`;

/**
 * For each path: can uid/gid open it for reading (files), list it (dirs), read the link? Paths
 * resolve from a directory fd opened by us (root), so the checkout's own location does not matter.
 */
function accessMap(root: string, rels: string[], uid: number, gid: number): Record<string, string> {
  const py = String.raw`
import os, sys, json, stat
out = {}
for rel in sys.stdin.read().split('\0'):
    p = rel or '.'
    try:
        st = os.lstat(p, dir_fd=3)
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY, dir_fd=3)
            try: os.listdir(fd)
            finally: os.close(fd)
        elif stat.S_ISREG(st.st_mode): os.close(os.open(p, os.O_RDONLY, dir_fd=3))
        elif stat.S_ISLNK(st.st_mode): os.readlink(p, dir_fd=3)
        out[rel] = 'ok'
        if stat.S_ISREG(st.st_mode) and os.access(p, os.X_OK, dir_fd=3): out[rel] = 'ok+x'
    except OSError as e:
        out[rel] = os.strerror(e.errno)
print(json.dumps(out))
`;
  const dirFd = fs.openSync(root, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    const out = execFileSync('setpriv', [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '/usr/bin/python3', '-c', py], {
      input: rels.join('\0'), encoding: 'utf8', maxBuffer: 1 << 26, stdio: ['pipe', 'pipe', 'pipe', dirFd],
    });
    return JSON.parse(out) as Record<string, string>;
  } finally {
    fs.closeSync(dirFd);
  }
}

interface Getdents {
  entries: [string, number, number][];
  calls: number;
  restarts: [number, string[]][];
  again: string[];
}

function getdents(dir: string, bufsize: number): Getdents {
  return JSON.parse(execFileSync('python3', ['-c', PY_GETDENTS, dir, String(bufsize)], { encoding: 'utf8', maxBuffer: 1 << 28 })) as Getdents;
}

function seekMap(file: string): { size: number; runs: [number, number][]; pastEof: string } {
  const py = String.raw`
import os, sys, json
fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size; runs = []; off = 0
while off < size:
    try: d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e: break
    h = os.lseek(fd, d, os.SEEK_HOLE); runs.append([d, h]); off = h
try: os.lseek(fd, size, os.SEEK_DATA); past = 'ok'
except OSError as e: past = os.strerror(e.errno)
print(json.dumps({'size': size, 'runs': runs, 'pastEof': past}))
`;
  return JSON.parse(execFileSync('python3', ['-c', py, file], { encoding: 'utf8' })) as { size: number; runs: [number, number][]; pastEof: string };
}

// The generated tree (10,000-entry directory, ACLs, sparse files). Extra devices and real holes
// are covered by the shared chunked images above and below.
for (const [variant, fullWalk] of [['plain', true]] as const) {
  test(`generated ${variant} image: ${fullWalk ? 'walk, ' : ''}10,000-entry readdir continuation, SEEK_DATA/SEEK_HOLE`, async () => {
    const img = buildImage(variant);
    await withBoth(img.path, img.devices, (fuse, loop) => {
      if (fullWalk) {
        compareTrees(fuse.dir, loop);
        // Permission checks (modes, owners, POSIX ACLs) as unprivileged users: the kernel decides
        // from our attributes and ACL xattrs exactly as from its own EROFS inodes.
        const rels = Object.keys(manifestFromDirectory(loop, { noHash: true })).filter((p) => !p.startsWith(`${img.tree.bigDir}/`));
        // uid 1000 gets x on acl/user only through its ACL entry; gid 200 is denied acl/users-groups
        // by a named-group entry although "other" may read.
        for (const [uid, gid] of [[65534, 65534], [1000, 1000], [2000, 100], [1234, 5678], [3000, 200]] as const) {
          const f = accessMap(fuse.dir, rels, uid, gid);
          const k = accessMap(loop, rels, uid, gid);
          const bad = rels.filter((r) => f[r] !== k[r]).slice(0, 10).map((r) => `${r}: kernel ${k[r]} fuse ${f[r]}`);
          assert.deepEqual(bad, [], `uid ${uid}: same access decisions`);
          assert.ok(Object.values(k).some((v) => !v.startsWith('ok')) && Object.values(k).some((v) => v.startsWith('ok')), 'both outcomes occur');
          if (uid === 1000) assert.equal(k['acl/user'], 'ok+x', 'the ACL grants x');
          if (gid === 200) assert.equal(k['acl/users-groups'], 'Permission denied', 'the named group entry denies');
        }
      }

      // Readdir of the big directory in ~3-entry getdents calls, then restarts at cookies.
      const bigF = getdents(path.join(fuse.dir, img.tree.bigDir), 160);
      const bigK = getdents(path.join(loop, img.tree.bigDir), 160);
      assert.equal(bigF.entries.length, img.tree.bigDirEntries + 2);
      assert.ok(bigF.calls > 2000, `many small getdents calls (${bigF.calls})`);
      assert.deepEqual(bigF.entries.map((e) => e[0]), bigK.entries.map((e) => e[0]), 'same names in the same order');
      assert.deepEqual(bigF.entries.map((e) => e[2]), bigK.entries.map((e) => e[2]), 'same d_type');
      assert.equal(new Set(bigF.entries.map((e) => e[1])).size, bigF.entries.length, 'distinct cookies');
      for (const [k, next] of bigF.restarts) {
        const want = bigF.entries.slice(k + 1, k + 4).map((e) => e[0]);
        assert.deepEqual(next, want, `continuation after entry ${k}`);
      }
      assert.deepEqual(bigF.again, bigF.entries.map((e) => e[0]), 'rewind to 0 reads everything again');

      // SEEK_DATA/SEEK_HOLE: what the reader reports reaches the application, holes read as zeros.
      const reader = openImage(img.path, { devices: img.devices });
      try {
        for (const rel of [img.tree.sparseFile, 'large/sparse-all-hole', img.tree.largeFile]) {
          const abs = path.join(fuse.dir, rel);
          const m = seekMap(abs);
          const nid = reader.lookup(reader.lookup(reader.rootNid, path.dirname(rel))!, path.basename(rel))!;
          const want: [number, number][] = [];
          for (let off = 0; off < m.size; ) {
            let d: number;
            try {
              d = reader.seek(nid, off, 'data');
            } catch {
              break;
            }
            if (d >= m.size) break;
            const h = reader.seek(nid, d, 'hole');
            want.push([d, h]);
            off = h;
          }
          assert.deepEqual(m.runs, want, `${rel}: data runs through FUSE = reader`);
          assert.equal(m.pastEof, os_strerror_ENXIO, `${rel}: SEEK_DATA at EOF`);
          const content = fs.readFileSync(abs);
          let prev = 0;
          for (const [d, h] of m.runs) {
            assert.ok(content.subarray(prev, d).every((b) => b === 0), `${rel}: hole [${prev}, ${d}) reads as zeros`);
            prev = h;
          }
          assert.ok(content.subarray(prev).every((b) => b === 0), `${rel}: tail hole reads as zeros`);
          const k = seekMap(path.join(loop, rel));
          assert.equal(k.size, m.size);
        }
      } finally {
        reader.close();
      }
    });
  });
}


test('SEEK_DATA/SEEK_HOLE reach the server: a null-chunk file is one hole through the mount', async () => {
  // shared chunked.erofs stores big/zeros-1m as null chunks. The kernel's EROFS driver reports
  // everything as data (generic llseek); our server answers from the block map, so a hole seen
  // through the mount proves the LSEEK request made it to us and back.
  const image = path.join(SHARED_IMAGES, 'chunked.erofs');
  const fuse = await fuseMount(image);
  try {
    const rel = 'big/zeros-1m';
    const m = seekMap(path.join(fuse.dir, rel));
    assert.equal(m.size, 262144);
    assert.deepEqual(m.runs, [], 'no data anywhere');
    assert.equal(m.pastEof, os_strerror_ENXIO);
    const hole0 = execFileSync('python3', ['-c', 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); print(os.lseek(fd, 0, os.SEEK_HOLE), os.lseek(fd, 4096, os.SEEK_HOLE))', path.join(fuse.dir, rel)], { encoding: 'utf8' }).trim();
    assert.equal(hole0, '0 4096');
    assert.ok(fs.readFileSync(path.join(fuse.dir, rel)).every((b) => b === 0));
    // A file with data: one run covering the whole file.
    const plainRel = 'big/mixed';
    const pm = seekMap(path.join(fuse.dir, plainRel));
    assert.deepEqual(pm.runs, [[0, pm.size]]);
    assert.equal(await fuse.stop('SIGTERM'), 0, fuse.stderr());
  } finally {
    fuse.cleanup();
  }
});

test('no leak: after the kernel drops its dentries (FORGET), the tree holds only the root', async () => {
  const image = path.join(SHARED_IMAGES, 'plain.erofs');
  const fuse = await fuseMount(image, { logLevel: 'info' });
  const stats = async (): Promise<{ nodes: number; handles: number; dynamic: number }> => {
    const before = fuse.stderr().split('\n').filter((l) => l.includes('"stats"')).length;
    fuse.child.kill('SIGUSR2');
    for (let i = 0; i < 200; i++) {
      const lines = fuse.stderr().split('\n').filter((l) => l.includes('"stats"'));
      if (lines.length > before) return (JSON.parse(lines[lines.length - 1]!) as { stats: { nodes: number; handles: number; dynamic: number } }).stats;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error('no stats line');
  };
  try {
    const m = manifestFromDirectory(fuse.dir);
    const n = Object.keys(m).length;
    const during = await stats();
    assert.ok(during.nodes > n / 2, `nodes referenced after a walk (${during.nodes} for ${n} paths)`);
    assert.equal(during.handles, 0, 'every open was released');
    // Ask the kernel to evict unused dentries and inodes: it sends FORGET/BATCH_FORGET.
    let after = during;
    for (let i = 0; i < 20 && after.nodes > 1; i++) {
      fs.writeFileSync('/proc/sys/vm/drop_caches', '2');
      await new Promise((r) => setTimeout(r, 100));
      after = await stats();
    }
    assert.deepEqual(after, { nodes: 1, handles: 0, dynamic: 0 }, 'only the root is left');
    assert.equal(await fuse.stop('SIGTERM'), 0, fuse.stderr());
  } finally {
    fuse.cleanup();
  }
});

test('SIGINT unmounts cleanly even while a file is open (lazy unmount), exit 0', async () => {
  const img = buildImage('plain');
  const fuse = await fuseMount(img.path);
  try {
    const fd = fs.openSync(path.join(fuse.dir, img.tree.largeFile), 'r');
    const b = Buffer.alloc(16);
    assert.equal(fs.readSync(fd, b, 0, 16, 0), 16);
    const code = await fuse.stop('SIGINT');
    assert.equal(code, 0, fuse.stderr());
    assert.equal(isMounted(fuse.dir), false);
    // The detached mount has no server any more: the last close may report ENOTCONN.
    try { fs.closeSync(fd); } catch (e) { assert.equal((e as NodeJS.ErrnoException).code, 'ENOTCONN'); }
  } finally {
    fuse.cleanup();
  }
});

test('mount errors are reported clearly with a non-zero exit', async () => {
  await assert.rejects(fuseMount('/nonexistent/image.erofs', { timeoutMs: 5000 }), /exited \(1\) before mounting: .*nonexistent/);
  const notErofs = path.join(path.dirname(buildImage('plain').path), 'not-erofs.bin');
  fs.writeFileSync(notErofs, Buffer.alloc(8192, 1));
  await assert.rejects(fuseMount(notErofs, { timeoutMs: 5000 }), /exited \(1\) before mounting/);
  await assert.rejects(fuseMount(buildImage('plain').path, { args: ['--entry-timeout', 'x'], timeoutMs: 5000 }), /entry-timeout/);
});
