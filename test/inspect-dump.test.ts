// `erofs-vfsd inspect` against erofs-utils' dump.erofs 1.9 on every shared image: the same facts
// (superblock fields and feature names, the kernel version they need, -S statistics and
// histograms, per-inode size, on-disk size, NID, links, layout, inode and xattr sizes, owner,
// mode, mtime, path, and the -e extent map with devices), whatever the formatting. dump.erofs
// comes from the sid chroot (scripts/sid-chroot.sh, run by scripts/setup.sh): a missing one
// fails this test.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { spawnSync } from 'node:child_process';
import { runInspect } from '../src/cli/inspect.js';
import { REPO_ROOT, SHARED_IMAGES } from './support/paths.js';
import { loadManifest } from './support/manifest.js';

const DUMP = path.join(REPO_ROOT, '.cache/sid/bin/dump.erofs');
const BLOB = path.join(SHARED_IMAGES, 'chunked-blob.blob');

function imageNames(): string[] {
  return fs.readdirSync(SHARED_IMAGES).filter((f) => f.endsWith('.erofs')).map((f) => f.slice(0, -'.erofs'.length)).sort();
}
const devicesOf = (name: string) => (name === 'chunked-blobdev' ? [BLOB] : []);
const imagePath = (name: string) => path.join(SHARED_IMAGES, `${name}.erofs`);

function dump(name: string, ...args: string[]): string {
  const r = spawnSync(DUMP, [...args, ...devicesOf(name).map((d) => `--device=${d}`), imagePath(name)], {
    encoding: 'utf8', env: { ...process.env, TZ: 'UTC' }, maxBuffer: 64 << 20,
  });
  assert.equal(r.status, 0, `dump.erofs ${args.join(' ')} ${name}: ${r.stderr}`);
  return r.stdout;
}

/** "Filesystem foo:   value" lines of dump.erofs -s / -S. */
function fields(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split('\n')) {
    const x = /^Filesystem ([^:]+):\s*(.*?)\s*$/.exec(line);
    if (x) m.set(x[1]!, x[2]!);
  }
  const k = /^Required upstream Linux kernel version:\s*(\S+)/m.exec(text);
  if (k) m.set('kernel', k[1]!);
  return m;
}

/** The rows of one distribution table of dump.erofs -S. */
function table(text: string, title: string): number[] {
  const start = text.indexOf(title);
  assert.ok(start >= 0, `dump.erofs -S has "${title}"`);
  const rows: number[] = [];
  for (const line of text.slice(start).split('\n').slice(2)) {
    const x = /^\s*(?:\S+ \.\.(?: \S+)?|\S+)\s+(\d+)\s+[\d.]+% \|/.exec(line);
    if (!x) break;
    rows.push(Number(x[1]));
  }
  return rows;
}

async function inspectJson(args: Parameters<typeof runInspect>[0]): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
  let text = '';
  let errText = '';
  const out = new Writable({ write(chunk, _enc, cb) { text += chunk.toString(); cb(); } });
  const err = new Writable({ write(chunk, _enc, cb) { errText += chunk.toString(); cb(); } });
  const code = await runInspect({ ...args, json: true, out, err });
  assert.equal(code, 0, `inspect ${JSON.stringify(args)}: ${errText}`);
  return JSON.parse(text);
}

test('dump.erofs 1.9 from the sid chroot is there', () => {
  assert.ok(fs.existsSync(DUMP), `${DUMP} is missing: run scripts/setup.sh (it builds the sid chroot)`);
  const v = spawnSync(DUMP, ['-V'], { encoding: 'utf8' });
  assert.match(v.stdout, /dump\.erofs \(erofs-utils\) 1\.9/, `dump.erofs -V: ${v.stdout}${v.stderr}`);
});

test('superblock facts and feature names equal dump.erofs -s on every shared image', async () => {
  for (const name of imageNames()) {
    const d = fields(dump(name, '-s'));
    const sb = (await inspectJson({ image: imagePath(name), devices: devicesOf(name) })).superblock;
    const ctx = `${name}`;
    assert.equal(String(sb.blockSize), d.get('blocksize'), `${ctx} blocksize`);
    assert.equal(String(sb.totalBlocks), d.get('blocks'), `${ctx} blocks (with extra devices)`);
    assert.equal(String(sb.metaBlkAddr), d.get('inode metadata start block'), `${ctx} meta blkaddr`);
    assert.equal(String(sb.xattrBlkAddr), d.get('shared xattr metadata start block'), `${ctx} xattr blkaddr`);
    assert.equal(String(sb.rootNid), d.get('root nid'), `${ctx} root nid`);
    assert.equal(String(sb.inodes), d.get('inode count'), `${ctx} inode count`);
    assert.equal(String(sb.sbSize), d.get('sb_size'), `${ctx} sb_size`);
    assert.equal(sb.uuid, d.get('UUID'), `${ctx} uuid`);
    assert.equal(sb.packedNid === null ? undefined : String(sb.packedNid), d.get('packed nid'), `${ctx} packed nid`);
    assert.equal(sb.metaboxNid === null ? undefined : String(sb.metaboxNid), d.get('metabox nid'), `${ctx} metabox nid`);
    assert.deepEqual(sb.compatFeatures, (d.get('compatible features') ?? '').split(/\s+/).filter(Boolean), `${ctx} compat names`);
    assert.deepEqual(sb.incompatFeatures, (d.get('incompatible features') ?? '').split(/\s+/).filter(Boolean), `${ctx} incompat names`);
    assert.equal(sb.requiredKernel ?? undefined, d.get('kernel'), `${ctx} required kernel`);
    if (d.has('compr_algs')) {
      assert.deepEqual(sb.compressionAlgorithms.map((a: string) => a.toLowerCase()),
        d.get('compr_algs')!.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean), `${ctx} algorithms`);
    } else {
      assert.equal(String(sb.lz4MaxDistance), d.get('lz4_max_distance'), `${ctx} lz4_max_distance`);
    }
    assert.equal(new Date(sb.buildTime.sec * 1000).toUTCString().slice(5, 25), new Date(`${d.get('created')} UTC`).toUTCString().slice(5, 25), `${ctx} build time`);
    assert.equal(sb.devices.length, sb.extraDevices, `${ctx} device table`);
  }
});

test('statistics equal dump.erofs -S on every shared image', async () => {
  for (const name of imageNames()) {
    const text = dump(name, '-S');
    const d = fields(text);
    const st = (await inspectJson({ image: imagePath(name), devices: devicesOf(name), stats: true })).statistics;
    const ctx = name;
    assert.equal(String(st.files), d.get('total file count'), `${ctx} total files`);
    const types: [string, string][] = [['file', 'regular file count'], ['dir', 'directory count'], ['chardev', 'char dev count'],
      ['blockdev', 'block dev count'], ['fifo', 'FIFO file count'], ['socket', 'SOCK file count'], ['symlink', 'symlink file count']];
    for (const [t, label] of types) assert.equal(String(st.byType[t]), d.get(label), `${ctx} ${label}`);
    assert.equal(d.get('unknown type count'), '0', `${ctx} unknown types`);
    assert.equal(String(st.compressedFiles), d.get('compressed files'), `${ctx} compressed files`);
    assert.equal(String(st.uncompressedFiles), d.get('uncompressed files'), `${ctx} uncompressed files`);
    assert.equal(`${st.originalBytes} Bytes`, d.get('total original file size'), `${ctx} original size`);
    assert.equal(`${st.onDiskBytes} Bytes`, d.get('total file size'), `${ctx} on-disk size`);
    assert.equal(`${((100 * st.onDiskBytes) / st.originalBytes).toFixed(2)}%`, d.get('compress rate'), `${ctx} ratio`);
    assert.deepEqual(st.originalHistogram, table(text, 'Original file size distribution'), `${ctx} original histogram`);
    assert.deepEqual(st.onDiskHistogram, table(text, 'On-disk file size distribution'), `${ctx} on-disk histogram`);
    assert.deepEqual(Object.values(st.dumpCategories), table(text, 'File type distribution'), `${ctx} file types`);
  }
});

interface DumpInode {
  path: string;
  size: number;
  onDisk: number;
  type: string;
  nid: number;
  links: number;
  layout: number;
  inodeSize: number;
  xattrSize: number;
  uid: number;
  gid: number;
  mode: number;
  mtime: string;
  extents: { la: number; lend: number; llen: number; pa: number; pend: number; plen: number; device: number }[];
}

function dumpInode(name: string, nid: number): DumpInode {
  const t = dump(name, '-e', `--nid=${nid}`);
  const get = (re: RegExp) => {
    const x = re.exec(t);
    assert.ok(x, `dump.erofs --nid=${nid} ${name}: ${re} in\n${t}`);
    return x;
  };
  const sz = get(/^Size: (\d+)\s+On-disk size: (\d+)\s+(.*)$/m);
  const n = get(/^NID: (\d+)\s+Links: (\d+)\s+Layout: (\d+)/m);
  const is = get(/^Inode size: (\d+)\s+Xattr size: (\d+)/m);
  const ug = get(/^Uid: (\d+)\s+Gid: (\d+)\s+Access: (\d+)\//m);
  const extents: DumpInode['extents'] = [];
  for (const line of t.split('\n')) {
    const x = /^\s*\d+:\s*(\d+)\.\.\s*(\d+) \|\s*(\d+) :\s*(\d+)\.\.\s*(\d+) \|\s*(\d+)(?:\s+# device (\d+))?\s*$/.exec(line);
    if (x) {
      extents.push({ la: +x[1]!, lend: +x[2]!, llen: +x[3]!, pa: +x[4]!, pend: +x[5]!, plen: +x[6]!, device: x[7] ? +x[7] : 0 });
    }
  }
  const count = get(/: (\d+) extents found$/m);
  assert.equal(extents.length, Number(count[1]), `${name} nid ${nid}: every extent line parsed`);
  return {
    path: get(/^Path : (.*)$/m)[1]!, size: +sz[1]!, onDisk: +sz[2]!, type: sz[3]!.trim(), nid: +n[1]!, links: +n[2]!,
    layout: +n[3]!, inodeSize: +is[1]!, xattrSize: +is[2]!, uid: +ug[1]!, gid: +ug[2]!, mode: parseInt(ug[3]!, 8),
    mtime: get(/^Timestamp: (.*)$/m)[1]!.trim(), extents,
  };
}

const DUMP_TYPES: Record<string, string> = {
  file: 'regular file', dir: 'directory', symlink: 'symlink file', chardev: 'char dev', blockdev: 'block dev', fifo: 'FIFO file', socket: 'SOCK file',
};

/** A spread of inodes: the largest files, hard links, each type, files with xattrs, and a stride through the rest. */
function sample(name: string): string[] {
  const m = loadManifest(path.join(SHARED_IMAGES, `${name}.expected.json`));
  const paths = Object.keys(m).sort();
  const pick = new Set<string>(['']);
  const files = paths.filter((p) => m[p]!.type === 'file').sort((a, b) => (m[b]!.size ?? 0) - (m[a]!.size ?? 0));
  for (const p of files.slice(0, 8)) pick.add(p);
  for (const t of ['dir', 'symlink', 'chardev', 'blockdev', 'fifo', 'socket']) {
    for (const p of paths.filter((q) => m[q]!.type === t).slice(0, 2)) pick.add(p);
  }
  for (const p of paths.filter((q) => m[q]!.nlink > 1 && m[q]!.type === 'file').slice(0, 3)) pick.add(p);
  for (const p of paths.filter((q) => Object.keys(m[q]!.xattrs ?? {}).length > 0).slice(0, 3)) pick.add(p);
  for (let i = 0; i < paths.length; i += Math.ceil(paths.length / 12)) pick.add(paths[i]!);
  return [...pick];
}

test('inodes by NID and their extent maps equal dump.erofs --nid -e on every shared image', async () => {
  let compared = 0;
  let extentsCompared = 0;
  const kinds = new Set<string>();
  for (const name of imageNames()) {
    for (const rel of sample(name)) {
      const byPath = await inspectJson({ image: imagePath(name), devices: devicesOf(name), path: `/${rel}`, extents: true });
      const nid: number = byPath.stat.nid;
      const ours = await inspectJson({ image: imagePath(name), devices: devicesOf(name), nid, extents: true });
      const st = ours.stat;
      const d = dumpInode(name, nid);
      const ctx = `${name}:/${rel} (nid ${nid})`;
      assert.ok(st.paths.includes(d.path), `${ctx}: dump's path ${d.path} is one of ours ${st.paths}`);
      assert.ok(st.paths.includes(`/${rel}`) || rel === '', `${ctx}: --nid finds the path it came from`);
      assert.equal(d.nid, nid, ctx);
      assert.equal(d.type, DUMP_TYPES[st.type], `${ctx} type`);
      assert.equal(d.size, st.size, `${ctx} size`);
      assert.equal(d.onDisk, st.layout.onDiskSize, `${ctx} on-disk size`);
      assert.equal(d.links, st.nlink, `${ctx} links`);
      assert.equal(d.layout, st.layout.datalayout, `${ctx} layout`);
      assert.equal(d.inodeSize, st.layout.inodeSize, `${ctx} inode size`);
      assert.equal(d.xattrSize, st.layout.xattrSize, `${ctx} xattr size`);
      assert.equal(d.uid, st.uid, `${ctx} uid`);
      assert.equal(d.gid, st.gid, `${ctx} gid`);
      assert.equal(d.mode, st.mode & 0o777, `${ctx} mode`);
      assert.equal(d.mtime, `${st.mtime.iso.slice(0, 10)} ${st.mtime.iso.slice(11, 29)}`, `${ctx} mtime`);
      const ex = ours.extents as { logical: number; length: number; kind: string; device: number; physical: number; physicalLength: number }[];
      assert.equal(ex.length, d.extents.length, `${ctx}: extent count`);
      ex.forEach((e, i) => {
        const x = d.extents[i]!;
        kinds.add(e.kind);
        assert.deepEqual([e.logical, e.logical + e.length, e.length], [x.la, x.lend, x.llen], `${ctx} extent ${i} logical`);
        if (e.kind === 'fragment') {
          assert.deepEqual([x.pa, x.pend, x.plen], [0, 0, 0], `${ctx} extent ${i}: dump shows fragments as 0`);
        } else if (e.kind !== 'hole') {
          assert.deepEqual([e.physical, e.physical + e.physicalLength, e.physicalLength, e.device], [x.pa, x.pend, x.plen, x.device],
            `${ctx} extent ${i} physical (${e.kind})`);
        }
        extentsCompared++;
      });
      compared++;
    }
  }
  assert.ok(compared > 400, `inodes compared: ${compared}`);
  for (const k of ['plain', 'inline', 'compressed', 'fragment', 'chunk']) assert.ok(kinds.has(k), `some ${k} extents were compared (${[...kinds]})`);
  assert.ok(extentsCompared > 2000, `extents compared: ${extentsCompared}`);
});
