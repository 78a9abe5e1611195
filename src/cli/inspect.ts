// `erofs-vfsd inspect IMAGE [PATH]`: look inside an EROFS image without mounting it. What
// dump.erofs shows — superblock with feature names and the kernel they need, the device table,
// statistics (--stats), an inode's layout and on-disk size by path or --nid, its extent map
// (--extents: pclusters, chunks, devices) — and what only we show: decoded xattrs and the
// name filter, fingerprints, `ls -l` listings, --cat, and which files of two images share
// content (--compare). --json for machines. Any failure is one line on stderr, exit status 1.
import type { Argv } from 'yargs';
import {
  openImage, ErofsError, type DataExtent, type ErofsImageReader, type FileType, type InodeAttr, type SuperblockSummary,
} from '../erofs/index.js';
import { hashFileContent, parseDigestValue } from '../share/fingerprint.js';

export interface InspectArgs {
  image: string;
  path?: string;
  /** Select the inode by NID instead of a path. */
  nid?: number;
  devices?: string[];
  json?: boolean;
  cat?: boolean;
  recursive?: boolean;
  /** Prefix listing lines with the entry's NID (like `ls -i`). */
  nids?: boolean;
  /** Image statistics (dump.erofs -S and more). */
  stats?: boolean;
  /** The selected inode's extent map. */
  extents?: boolean;
  /** A second image: which files share content with it. */
  compare?: string;
  /** Extra devices of the compared image. */
  compareDevices?: string[];
  /** Where output goes (default process.stdout / process.stderr); for tests and embedding. */
  out?: NodeJS.WritableStream;
  err?: NodeJS.WritableStream;
}

/** The command's options, for the CLI's yargs table. */
export function inspectBuilder<T>(y: Argv<T>) {
  return y
    .positional('image', { type: 'string', demandOption: true, describe: 'EROFS image file' })
    .positional('path', { type: 'string', describe: 'path inside the image (default: the root)' })
    .option('nid', { type: 'number', describe: 'select the inode by NID instead of a path' })
    .option('device', { type: 'string', array: true, describe: 'extra device (blob) for multi-device images, in device-table order' })
    .option('json', { type: 'boolean', default: false, describe: 'machine-readable output' })
    .option('cat', { type: 'boolean', default: false, describe: "write the file's content to stdout" })
    .option('recursive', { alias: 'R', type: 'boolean', default: false, describe: 'list directories recursively' })
    .option('nids', { alias: 'i', type: 'boolean', default: false, describe: "prefix listing lines with each entry's NID" })
    .option('stats', { alias: 'S', type: 'boolean', default: false, describe: 'statistics: file counts by type, sizes, compression ratio, size histograms' })
    .option('extents', { alias: 'e', type: 'boolean', default: false, describe: 'the extent map of the selected inode (pclusters, chunks, devices)' })
    .option('compare', { type: 'string', describe: 'a second image: which files share content with it' })
    .option('compare-device', { type: 'string', array: true, describe: 'extra device of the --compare image' });
}

const READDIR_BATCH = 1024;
const CAT_CHUNK = 1 << 20;
/** Bound for tree walks on hostile images: a directory graph with cycles must not walk forever. */
const MAX_WALK_ENTRIES = 5_000_000;

// ---------------------------------------------------------------- formatting helpers

const TYPE_CHAR: Record<InodeAttr['type'], string> = {
  file: '-', dir: 'd', symlink: 'l', chardev: 'c', blockdev: 'b', fifo: 'p', socket: 's',
};

export function modeString(type: InodeAttr['type'], mode: number): string {
  const rwx = (bits: number, special: boolean, ch: string) =>
    (bits & 4 ? 'r' : '-') + (bits & 2 ? 'w' : '-') +
    (special ? (bits & 1 ? ch : ch.toUpperCase()) : bits & 1 ? 'x' : '-');
  return TYPE_CHAR[type] +
    rwx((mode >> 6) & 7, (mode & 0o4000) !== 0, 's') +
    rwx((mode >> 3) & 7, (mode & 0o2000) !== 0, 's') +
    rwx(mode & 7, (mode & 0o1000) !== 0, 't');
}

/** Linux new_encode_dev form → [major, minor]. */
export function splitRdev(rdev: number): [number, number] {
  return [(rdev & 0xfff00) >>> 8, (rdev & 0xff) | ((rdev >>> 12) & 0xfff00)];
}

export function isoTime(sec: number, nsec: number): string {
  const ms = sec * 1000;
  if (!Number.isSafeInteger(sec) || Math.abs(ms) > 8.64e15) return `${sec}.${String(nsec).padStart(9, '0')}s`;
  const iso = new Date(ms).toISOString(); // YYYY-MM-DDTHH:MM:SS.000Z
  return `${iso.slice(0, 19)}.${String(nsec).padStart(9, '0')}Z`;
}

function shortTime(sec: number): string {
  const ms = sec * 1000;
  if (!Number.isSafeInteger(sec) || Math.abs(ms) > 8.64e15) return String(sec);
  const iso = new Date(ms).toISOString();
  return `${iso.slice(0, 10)} ${iso.slice(11, 16)}`;
}

/** A name as printable text: control bytes, backslashes and invalid UTF-8 escaped (like `ls -b`). */
export function printableName(name: Buffer): string {
  const s = name.toString('utf8');
  const valid = Buffer.from(s, 'utf8').equals(name);
  if (valid) {
    // eslint-disable-next-line no-control-regex
    return s.replace(/[\\\u0000-\u001f\u007f]/g, (c) => (c === '\\' ? '\\\\' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
  }
  let out = '';
  for (const b of name) out += b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : b === 0x5c ? '\\\\' : `\\x${b.toString(16).padStart(2, '0')}`;
  return out;
}

function xattrText(v: Buffer): string {
  // Printable ASCII (optionally NUL-terminated) is shown as a string, anything else as hex.
  const body = v.length > 0 && v[v.length - 1] === 0 ? v.subarray(0, v.length - 1) : v;
  if (body.length > 0 && body.every((b) => b >= 0x20 && b < 0x7f)) return JSON.stringify(body.toString('latin1'));
  return `0x${v.toString('hex')}`;
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}

function pad(s: string | number, n: number, left = false): string {
  const t = String(s);
  return left ? t.padEnd(n) : t.padStart(n);
}

function percent(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(2)}%` : 'n/a';
}

// ---------------------------------------------------------------- tree access

/** Resolves a slash-separated path from the root without following symlinks. */
export function resolvePath(reader: ErofsImageReader, p: string): { nid: number; path: string } {
  let nid = reader.rootNid;
  const parts = p.split('/').filter((c) => c !== '' && c !== '.');
  const walked: string[] = [];
  for (const part of parts) {
    const attr = reader.getAttr(nid);
    if (attr.type !== 'dir') throw new ErofsError('ENOTDIR', `'/${walked.join('/')}' is not a directory`);
    const child = reader.lookup(nid, part);
    walked.push(part);
    if (child === undefined) throw new ErofsError('ENOENT', `'/${walked.join('/')}': no such file or directory`);
    nid = child;
  }
  return { nid, path: '/' + walked.join('/') };
}

interface EntryInfo {
  name: string;
  /** The name's raw bytes (extension statistics look at them as dump.erofs does). */
  raw: Buffer;
  nid: number;
  attr: InodeAttr;
  target?: string;
}

function listDir(reader: ErofsImageReader, nid: number, withTargets = true): EntryInfo[] {
  const out: EntryInfo[] = [];
  let off = 0;
  for (;;) {
    const ents = reader.readdir(nid, off, READDIR_BATCH);
    if (ents.length === 0) break;
    for (const d of ents) {
      if (d.nextOffset <= off) throw new ErofsError('EIO', `directory nid ${nid}: readdir offset does not advance`);
      off = d.nextOffset;
      if (d.name.equals(DOT) || d.name.equals(DOTDOT)) continue;
      const attr = reader.getAttr(d.nid);
      const e: EntryInfo = { name: printableName(d.name), raw: d.name, nid: d.nid, attr };
      if (withTargets && attr.type === 'symlink') e.target = printableName(reader.readlink(d.nid));
      out.push(e);
    }
  }
  return out;
}
const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');

/**
 * Every directory entry below the root, depth first in directory order (the order dump.erofs
 * walks), each hard link once per name. Directories seen twice (a cycle) are corruption.
 */
function walkTree(reader: ErofsImageReader, visit: (path: string, e: EntryInfo) => void): void {
  const stack: { nid: number; path: string }[] = [{ nid: reader.rootNid, path: '' }];
  const seen = new Set<number>([reader.rootNid]);
  let total = 0;
  while (stack.length) {
    const d = stack.pop()!;
    const entries = listDir(reader, d.nid, false);
    total += entries.length;
    if (total > MAX_WALK_ENTRIES) throw new ErofsError('EIO', 'too many directory entries');
    const subdirs: { nid: number; path: string }[] = [];
    for (const e of entries) {
      const p = `${d.path}/${e.name}`;
      visit(p, e);
      if (e.attr.type === 'dir') {
        if (seen.has(e.nid)) throw new ErofsError('EIO', `directory loop at '${p}'`);
        seen.add(e.nid);
        subdirs.push({ nid: e.nid, path: p });
      }
    }
    for (let i = subdirs.length - 1; i >= 0; i--) stack.push(subdirs[i]!);
  }
}

/** Every path naming `nid` (hard links have several), first in walk order. */
function pathsOf(reader: ErofsImageReader, nid: number): string[] {
  if (nid === reader.rootNid) return ['/'];
  const out: string[] = [];
  walkTree(reader, (p, e) => {
    if (e.nid === nid) out.push(p);
  });
  return out;
}

// ---------------------------------------------------------------- superblock

function superblockJson(reader: ErofsImageReader, devicePaths: string[]) {
  const sb: SuperblockSummary = reader.superblock;
  const d = reader.details;
  return {
    blockSize: sb.blockSize,
    features: sb.features,
    featureCompat: sb.featureCompat,
    featureIncompat: sb.featureIncompat,
    compatFeatures: d.compatNames,
    incompatFeatures: d.incompatNames,
    requiredKernel: d.minKernel ?? null,
    compressionAlgorithms: sb.compressionAlgorithms,
    lz4MaxDistance: sb.featureIncompat & 0x2 ? null : d.lz4MaxDistance,
    inodes: sb.inodeCount,
    blocks: sb.blocks,
    /** With the extra devices' blocks (what dump.erofs calls the filesystem's blocks). */
    totalBlocks: sb.blocks + d.devices.reduce((n, x) => n + x.blocks, 0),
    rootNid: sb.rootNid,
    metaBlkAddr: d.metaBlkAddr,
    xattrBlkAddr: d.xattrBlkAddr,
    sbSize: d.sbSize,
    packedNid: d.packedNid || null,
    metaboxNid: d.incompatNames.includes('metabox') ? d.metaboxNid : null,
    uuid: sb.uuid,
    volumeName: sb.volumeName,
    extraDevices: sb.extraDevices,
    devices: d.devices.map((s) => ({ ...s, file: devicePaths[s.index - 1] ?? null })),
    buildTime: { sec: sb.buildTimeSec, nsec: sb.buildTimeNsec, iso: isoTime(sb.buildTimeSec, sb.buildTimeNsec) },
  };
}

function superblockText(image: string, sb: ReturnType<typeof superblockJson>): string[] {
  const lines = [
    `image:          ${image}`,
    `block size:     ${sb.blockSize}`,
    `features:       ${sb.features.length ? sb.features.join(' ') : '(none)'} (compat 0x${sb.featureCompat.toString(16)}, incompat 0x${sb.featureIncompat.toString(16)})`,
    `compat:         ${sb.compatFeatures.join(' ') || '(none)'}`,
    `incompat:       ${sb.incompatFeatures.join(' ') || '(none)'}`,
    `needs Linux:    ${sb.requiredKernel ? `${sb.requiredKernel} or later` : 'any EROFS-capable kernel'}`,
    `compression:    ${sb.compressionAlgorithms.length ? sb.compressionAlgorithms.join(' ') : 'none'}`,
    `inodes:         ${sb.inodes}`,
    `blocks:         ${sb.blocks}${sb.totalBlocks !== sb.blocks ? ` (${sb.totalBlocks} with the extra devices)` : ''}`,
    `root nid:       ${sb.rootNid}`,
    `meta blkaddr:   ${sb.metaBlkAddr}`,
    `xattr blkaddr:  ${sb.xattrBlkAddr}`,
    `sb size:        ${sb.sbSize}`,
  ];
  if (sb.lz4MaxDistance !== null && sb.compressionAlgorithms.length) lines.push(`lz4 distance:   ${sb.lz4MaxDistance}`);
  if (sb.packedNid !== null) lines.push(`packed nid:     ${sb.packedNid}`);
  if (sb.metaboxNid !== null) lines.push(`metabox nid:    ${sb.metaboxNid}`);
  lines.push(
    `uuid:           ${sb.uuid}`,
    `volume name:    ${sb.volumeName || '(none)'}`,
    `extra devices:  ${sb.extraDevices}`,
  );
  for (const d of sb.devices) {
    lines.push(`  device ${d.index}: ${d.blocks} blocks, unified start block ${d.uniaddr}, tag ${JSON.stringify(d.tag)}${d.file ? `, file ${d.file}` : ', (no file given)'}`);
  }
  lines.push(`build time:     ${sb.buildTime.iso}`);
  return lines;
}

// ---------------------------------------------------------------- one inode

function fingerprintText(fp: Buffer): string {
  const digest = parseDigestValue(fp);
  return digest ? `sha256:${digest.toString('hex')}` : `0x${fp.toString('hex')}`;
}

function statJson(reader: ErofsImageReader, nid: number, path: string, paths?: string[]) {
  const a = reader.getAttr(nid);
  const layout = reader.inodeLayout(nid);
  const xattrs = reader.listXattrs(nid).map((x) => ({ name: x.name, value: x.value.toString('hex'), text: xattrText(x.value) }));
  const fp = reader.fingerprint(nid);
  const out: Record<string, unknown> = {
    path,
    ...(paths ? { paths } : {}),
    nid,
    type: a.type,
    mode: a.mode & 0o7777,
    modeString: modeString(a.type, a.mode),
    uid: a.uid,
    gid: a.gid,
    nlink: a.nlink,
    size: a.size,
    blocks: a.blocks,
    mtime: { sec: a.mtimeSec, nsec: a.mtimeNsec, iso: isoTime(a.mtimeSec, a.mtimeNsec) },
    layout: {
      datalayout: layout.datalayout,
      name: layout.layoutName,
      inodeSize: layout.inodeSize,
      xattrSize: layout.xattrSize,
      inMetabox: layout.inMetabox,
      onDiskSize: layout.onDiskSize,
      ratio: a.size > 0 ? layout.onDiskSize / a.size : null,
      ...(layout.chunkSize !== undefined ? { chunkSize: layout.chunkSize } : {}),
      ...(layout.lclusterSize !== undefined ? { lclusterSize: layout.lclusterSize } : {}),
      ...(layout.xattrNameFilter !== undefined ? { xattrNameFilter: layout.xattrNameFilter } : {}),
    },
  };
  if (a.type === 'chardev' || a.type === 'blockdev') out.rdev = splitRdev(a.rdev);
  if (a.type === 'symlink') out.target = printableName(reader.readlink(nid));
  if (a.type === 'file') {
    const ext = reader.plainExtents(nid);
    out.data = ext === undefined ? { layout: 'compressed-or-inline' } : { layout: 'plain', extents: ext };
  }
  out.xattrs = xattrs;
  out.fingerprint = fp ? fingerprintText(fp) : null;
  return out;
}

function statText(st: Record<string, any>): string[] { // eslint-disable-line @typescript-eslint/no-explicit-any
  const l = st.layout;
  const lines = [
    `path:           ${st.path as string}`,
  ];
  if (st.paths && st.paths.length > 1) lines.push(`also:           ${(st.paths as string[]).slice(1).join(', ')}`);
  lines.push(
    `nid:            ${st.nid as number}`,
    `type:           ${st.type as string}`,
    `mode:           ${(st.mode as number).toString(8).padStart(4, '0')} (${st.modeString as string})`,
    `uid/gid:        ${st.uid as number}/${st.gid as number}`,
    `nlink:          ${st.nlink as number}`,
    `size:           ${st.size as number}`,
    `on disk:        ${l.onDiskSize as number} bytes${l.ratio !== null ? ` (${percent(l.onDiskSize, st.size)} of the size)` : ''}`,
    `blocks:         ${st.blocks as number} (512-byte units)`,
    `mtime:          ${st.mtime.iso as string}`,
    `layout:         ${l.name as string} (${l.datalayout as number}), inode ${l.inodeSize as number} bytes, xattrs ${l.xattrSize as number} bytes` +
      (l.inMetabox ? ', in the metabox' : '') +
      (l.chunkSize !== undefined ? `, chunks of ${l.chunkSize as number}` : '') +
      (l.lclusterSize !== undefined ? `, lclusters of ${l.lclusterSize as number}` : ''),
  );
  if (st.rdev) lines.push(`rdev:           ${(st.rdev as number[]).join(':')}`);
  if (st.target !== undefined) lines.push(`target:         ${st.target as string}`);
  if (st.data) {
    const d = st.data as { layout: string; extents?: unknown[] };
    lines.push(`data:           ${d.layout}${d.extents ? ` (${d.extents.length} extent${d.extents.length === 1 ? '' : 's'})` : ''}`);
  }
  const xs = st.xattrs as { name: string; text: string }[];
  lines.push(`xattrs:         ${xs.length ? '' : '(none)'}`.trimEnd());
  for (const x of xs) lines.push(`  ${x.name} = ${x.text}`);
  if (l.xattrNameFilter !== undefined) lines.push(`xattr filter:   0x${(l.xattrNameFilter as number).toString(16).padStart(8, '0')} (set bits: names known absent)`);
  lines.push(`fingerprint:    ${(st.fingerprint as string | null) ?? '(none)'}`);
  return lines;
}

function extentsJson(reader: ErofsImageReader, nid: number): DataExtent[] {
  return reader.extents(nid);
}

function extentsText(exts: DataExtent[]): string[] {
  const lines = ['', ' ext:      logical range       length :      physical range      length  dev  kind'];
  exts.forEach((e, i) => {
    const phys = e.kind === 'hole' || e.kind === 'fragment' ? `${pad(e.kind === 'fragment' ? `packed+${e.physical}` : '-', 25)}` : `${pad(e.physical, 12)}..${pad(e.physical + e.physicalLength, 11)}`;
    const what = e.algorithm ? `${e.kind} ${e.algorithm}${e.partialRef ? ' (partial ref)' : ''}` : e.kind;
    lines.push(`${pad(i, 4)}: ${pad(e.logical, 12)}..${pad(e.logical + e.length, 11)} ${pad(e.length, 9)} : ${phys} ${pad(e.physicalLength, 9)} ${pad(e.device, 4)}  ${what}`);
  });
  lines.push(`${exts.length} extent${exts.length === 1 ? '' : 's'}`);
  return lines;
}

// ---------------------------------------------------------------- statistics

/** dump.erofs's file-name categories; a name whose extension is a prefix of one counts as it. */
const DUMP_EXTENSIONS = ['.txt', '.so', '.xml', '.apk', '.odex', '.vdex', '.oat', '.rc', '.otf'];
const HISTOGRAM_BUCKETS = 17;

/** Histogram bucket of a size: 0 = under 1 KiB, i = [2^(i-1), 2^i) KiB, 16 = 32 MiB and more. */
function sizeBucket(size: number): number {
  let kib = Math.floor(size / 1024);
  let b = 0;
  while (kib > 0) {
    kib = Math.floor(kib / 2);
    b++;
  }
  return Math.min(b, HISTOGRAM_BUCKETS - 1);
}

function dumpCategory(name: Buffer): string {
  const dot = name.lastIndexOf(0x2e);
  if (dot < 0) return 'others';
  const ext = name.subarray(dot).toString('latin1');
  return DUMP_EXTENSIONS.find((t) => t.startsWith(ext)) ?? 'others';
}

interface Stats {
  /** Directory entries walked, plus the root: what dump.erofs calls the total file count. */
  files: number;
  /** Distinct inodes reached. */
  inodes: number;
  byType: Record<FileType, number>;
  /** Names of compressed / uncompressed inodes, the packed inode included (as dump.erofs counts). */
  compressedFiles: number;
  uncompressedFiles: number;
  /** Sum of regular files' sizes (one per name, as dump.erofs counts). */
  originalBytes: number;
  /** Their on-disk sizes plus the packed inode's. */
  onDiskBytes: number;
  /** The same with each inode counted once (hard links do not take space twice). */
  uniqueOriginalBytes: number;
  uniqueOnDiskBytes: number;
  packedInode: { nid: number; onDiskSize: number } | null;
  originalHistogram: number[];
  onDiskHistogram: number[];
  dumpCategories: Record<string, number>;
  /** Regular files by their extension (exact), most common first. */
  extensions: { extension: string; files: number; bytes: number }[];
  layouts: Record<string, number>;
}

function collectStats(reader: ErofsImageReader): Stats {
  const byType: Record<FileType, number> = { file: 0, dir: 0, symlink: 0, chardev: 0, blockdev: 0, fifo: 0, socket: 0 };
  const st: Stats = {
    files: 0, inodes: 0, byType, compressedFiles: 0, uncompressedFiles: 0, originalBytes: 0, onDiskBytes: 0,
    uniqueOriginalBytes: 0, uniqueOnDiskBytes: 0, packedInode: null,
    originalHistogram: new Array<number>(HISTOGRAM_BUCKETS).fill(0), onDiskHistogram: new Array<number>(HISTOGRAM_BUCKETS).fill(0),
    dumpCategories: Object.fromEntries([...DUMP_EXTENSIONS, 'others'].map((e) => [e, 0])), extensions: [], layouts: {},
  };
  const exts = new Map<string, { files: number; bytes: number }>();
  const seen = new Set<number>();
  const count = (nid: number, attr: InodeAttr, name: Buffer | undefined) => {
    st.files++;
    st.byType[attr.type]++;
    const layout = reader.inodeLayout(nid);
    if (layout.layoutName.startsWith('compressed')) st.compressedFiles++;
    else st.uncompressedFiles++;
    const first = !seen.has(nid);
    seen.add(nid);
    if (first) st.layouts[layout.layoutName] = (st.layouts[layout.layoutName] ?? 0) + 1;
    if (attr.type !== 'file' || !name) return;
    st.originalBytes += attr.size;
    st.onDiskBytes += layout.onDiskSize;
    if (first) {
      st.uniqueOriginalBytes += attr.size;
      st.uniqueOnDiskBytes += layout.onDiskSize;
    }
    st.originalHistogram[sizeBucket(attr.size)]!++;
    st.onDiskHistogram[sizeBucket(layout.onDiskSize)]!++;
    st.dumpCategories[dumpCategory(name)]!++;
    const dot = name.lastIndexOf(0x2e);
    const ext = dot > 0 ? printableName(name.subarray(dot)) : '(none)';
    const x = exts.get(ext) ?? { files: 0, bytes: 0 };
    x.files++;
    x.bytes += attr.size;
    exts.set(ext, x);
  };
  count(reader.rootNid, reader.getAttr(reader.rootNid), undefined);
  walkTree(reader, (_p, e) => count(e.nid, e.attr, e.raw));
  st.inodes = seen.size;
  const packedNid = reader.details.packedNid;
  if (packedNid && reader.details.incompatNames.includes('fragments')) {
    const layout = reader.inodeLayout(packedNid);
    const onDiskSize = layout.onDiskSize;
    st.packedInode = { nid: packedNid, onDiskSize };
    if (layout.layoutName.startsWith('compressed')) st.compressedFiles++;
    else st.uncompressedFiles++;
    st.onDiskBytes += onDiskSize;
    st.uniqueOnDiskBytes += onDiskSize;
    st.onDiskHistogram[sizeBucket(onDiskSize)]!++;
  }
  st.extensions = [...exts].map(([extension, v]) => ({ extension, ...v }))
    .sort((a, b) => b.files - a.files || b.bytes - a.bytes || (a.extension < b.extension ? -1 : 1));
  return st;
}

function histogramText(title: string, h: number[], regular: number): string[] {
  const lines = [`${title} (regular files):`, '     >= KiB ..    < KiB      files   share'];
  for (let i = 0; i < h.length; i++) {
    const lo = i === 0 ? 0 : 2 ** (i - 1);
    const hi = i === h.length - 1 ? '' : String(2 ** i);
    const bar = '#'.repeat(Math.round(regular ? (25 * h[i]!) / regular : 0));
    lines.push(`  ${pad(lo, 9)} .. ${pad(hi, 8)} ${pad(h[i]!, 10)} ${pad(percent(h[i]!, regular), 8)} ${bar}`);
  }
  return lines;
}

function statsText(st: Stats): string[] {
  const lines = [
    'statistics:',
    `  files (names):        ${st.files} (${st.inodes} distinct inodes)`,
    `  regular files:        ${st.byType.file}`,
    `  directories:          ${st.byType.dir}`,
    `  symlinks:             ${st.byType.symlink}`,
    `  char devices:         ${st.byType.chardev}`,
    `  block devices:        ${st.byType.blockdev}`,
    `  FIFOs:                ${st.byType.fifo}`,
    `  sockets:              ${st.byType.socket}`,
    `  compressed:           ${st.compressedFiles} names of compressed inodes, ${st.uncompressedFiles} uncompressed` +
      (st.packedInode ? ' (the packed inode included)' : ''),
    `  layouts (inodes):     ${Object.entries(st.layouts).map(([k, v]) => `${k} ${v}`).join(', ')}`,
    `  original size:        ${st.originalBytes} bytes (${st.uniqueOriginalBytes} counting hard links once)`,
    `  on-disk size:         ${st.onDiskBytes} bytes (${st.uniqueOnDiskBytes} counting hard links once)` +
      (st.packedInode ? `, packed inode ${st.packedInode.nid} included (${st.packedInode.onDiskSize} bytes)` : ''),
    `  on disk / original:   ${percent(st.onDiskBytes, st.originalBytes)}`,
    '',
    ...histogramText('original size', st.originalHistogram, st.byType.file),
    '',
    ...histogramText('on-disk size', st.onDiskHistogram, st.byType.file),
    '',
    'by extension (top 15):',
  ];
  for (const e of st.extensions.slice(0, 15)) lines.push(`  ${pad(e.extension, 16, true)} ${pad(e.files, 8)} files ${pad(e.bytes, 14)} bytes`);
  lines.push(`dump.erofs categories: ${Object.entries(st.dumpCategories).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  return lines;
}

// ---------------------------------------------------------------- two images

interface ContentIndex {
  /** Path → (nid, size, fingerprint hex) for every regular file. */
  files: Map<string, { nid: number; size: number; fp: string }>;
  /** How fingerprints were obtained. */
  source: 'image digest' | 'computed' | 'mixed';
}

function contentIndex(reader: ErofsImageReader): ContentIndex {
  const files = new Map<string, { nid: number; size: number; fp: string }>();
  const byNid = new Map<number, string>();
  let digests = 0;
  let computed = 0;
  walkTree(reader, (p, e) => {
    if (e.attr.type !== 'file') return;
    let fp = byNid.get(e.nid);
    if (fp === undefined) {
      const claim = reader.fingerprint(e.nid);
      const digest = claim ? parseDigestValue(claim) : undefined;
      if (digest) digests++;
      else computed++;
      fp = (digest ?? hashFileContent(reader, e.nid)).toString('hex');
      byNid.set(e.nid, fp);
    }
    files.set(p, { nid: e.nid, size: e.attr.size, fp });
  });
  return { files, source: computed === 0 && digests > 0 ? 'image digest' : digests === 0 ? 'computed' : 'mixed' };
}

function compareImages(a: ContentIndex, b: ContentIndex) {
  const inA = new Map<string, string[]>();
  for (const [p, f] of a.files) inA.set(f.fp, [...(inA.get(f.fp) ?? []), p]);
  const same: string[] = [];
  const changed: string[] = [];
  const onlyA: string[] = [];
  const onlyB: string[] = [];
  const elsewhere: { path: string; in: string }[] = [];
  const sharedFp = new Map<string, number>();
  for (const [p, f] of b.files) {
    const old = a.files.get(p);
    const matches = inA.get(f.fp);
    if (matches) sharedFp.set(f.fp, f.size);
    if (old && old.fp === f.fp) same.push(p);
    else if (old) changed.push(p);
    else onlyB.push(p);
    if ((!old || old.fp !== f.fp) && matches) elsewhere.push({ path: p, in: matches[0]! });
  }
  for (const p of a.files.keys()) if (!b.files.has(p)) onlyA.push(p);
  let sharedBytes = 0;
  for (const size of sharedFp.values()) sharedBytes += size;
  const bytesOf = (ix: ContentIndex) => {
    const seen = new Map<string, number>();
    for (const f of ix.files.values()) seen.set(f.fp, f.size);
    let n = 0;
    for (const s of seen.values()) n += s;
    return n;
  };
  return {
    fingerprints: { a: a.source, b: b.source },
    files: { a: a.files.size, b: b.files.size },
    distinctContentBytes: { a: bytesOf(a), b: bytesOf(b) },
    sharedContents: sharedFp.size,
    sharedBytes,
    samePathSameContent: same.sort(),
    samePathChanged: changed.sort(),
    onlyInA: onlyA.sort(),
    onlyInB: onlyB.sort(),
    contentFoundElsewhere: elsewhere.sort((x, y) => (x.path < y.path ? -1 : 1)),
  };
}

function compareText(imageA: string, imageB: string, c: ReturnType<typeof compareImages>): string[] {
  const lines = [
    `compare:        ${imageA} (A) with ${imageB} (B)`,
    `fingerprints:   A ${c.fingerprints.a}, B ${c.fingerprints.b}`,
    `regular files:  A ${c.files.a}, B ${c.files.b}`,
    `shared content: ${c.sharedContents} distinct contents, ${c.sharedBytes} bytes ` +
      `(${percent(c.sharedBytes, c.distinctContentBytes.b)} of B's distinct content, ${c.distinctContentBytes.b} bytes)`,
    `same path, same content: ${c.samePathSameContent.length}`,
    `same path, changed:      ${c.samePathChanged.length}`,
    `only in A:               ${c.onlyInA.length}`,
    `only in B:               ${c.onlyInB.length}`,
    `B content found in A under another path: ${c.contentFoundElsewhere.length}`,
    '',
  ];
  for (const p of c.samePathChanged) lines.push(`~ ${p}`);
  for (const p of c.onlyInA) lines.push(`- ${p}`);
  for (const p of c.onlyInB) lines.push(`+ ${p}`);
  for (const e of c.contentFoundElsewhere) lines.push(`= ${e.path} (same content as A:${e.in})`);
  return lines;
}

// ---------------------------------------------------------------- the command

function write(out: NodeJS.WritableStream, data: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    out.write(data, (err) => (err ? reject(err) : resolve()));
  });
}

/** Runs the command; resolves to the process exit status. */
export async function runInspect(args: InspectArgs): Promise<number> {
  const out = args.out ?? process.stdout;
  const errOut = args.err ?? process.stderr;
  const readers: ErofsImageReader[] = [];
  // A closed pipe (`| head`) surfaces as an 'error' event on stdout; the write callbacks see it too.
  const ignore = () => {};
  out.on('error', ignore);
  try {
    if (args.nid !== undefined && args.path !== undefined) throw new ErofsError('EINVAL', 'give a path or --nid, not both');
    if (args.nid !== undefined && (!Number.isSafeInteger(args.nid) || args.nid < 0)) throw new ErofsError('EINVAL', `bad --nid ${args.nid}`);
    const reader = openImage(args.image, { devices: args.devices });
    readers.push(reader);
    const target = args.nid !== undefined
      ? { nid: args.nid, path: '' }
      : resolvePath(reader, args.path ?? '/');
    const attr = reader.getAttr(target.nid);
    let paths: string[] | undefined;
    if (args.nid !== undefined) {
      paths = pathsOf(reader, target.nid);
      target.path = paths[0] ?? '(not reachable from the root)';
    }

    if (args.cat) {
      if (attr.type === 'dir') throw new ErofsError('EISDIR', `'${target.path}' is a directory`);
      if (attr.type === 'symlink') {
        await write(out, reader.readlink(target.nid));
        return 0;
      }
      if (attr.type !== 'file') throw new ErofsError('EINVAL', `'${target.path}' is a ${attr.type}, not a regular file`);
      for (let off = 0; off < attr.size;) {
        const b = reader.read(target.nid, off, Math.min(CAT_CHUNK, attr.size - off));
        if (b.length === 0) throw new ErofsError('EIO', `'${target.path}': unexpected end of data at ${off} of ${attr.size}`);
        await write(out, b);
        off += b.length;
      }
      return 0;
    }

    const atRoot = args.nid === undefined && (args.path === undefined || args.path === '' || args.path === '/');
    const showSuper = atRoot && !args.compare;
    const sb = superblockJson(reader, args.devices ?? []);
    const st = statJson(reader, target.nid, target.path, paths);
    const exts = args.extents ? extentsJson(reader, target.nid) : undefined;
    const stats = args.stats ? collectStats(reader) : undefined;
    let comparison: ReturnType<typeof compareImages> | undefined;
    if (args.compare) {
      const other = openImage(args.compare, { devices: args.compareDevices });
      readers.push(other);
      comparison = compareImages(contentIndex(reader), contentIndex(other));
    }
    const dirs: { path: string; entries: EntryInfo[] }[] = [];
    // A listing unless the command asked for something else about the inode.
    const list = attr.type === 'dir' && !args.extents && !args.stats && !args.compare;
    if (list) {
      const queue = [{ nid: target.nid, path: target.path }];
      const seen = new Set<number>();
      let total = 0;
      while (queue.length) {
        const d = queue.shift()!;
        if (seen.has(d.nid)) throw new ErofsError('EIO', `directory loop at '${d.path}'`);
        seen.add(d.nid);
        const entries = listDir(reader, d.nid);
        total += entries.length;
        if (total > MAX_WALK_ENTRIES) throw new ErofsError('EIO', 'too many directory entries');
        dirs.push({ path: d.path, entries });
        if (args.recursive) {
          for (const e of entries) if (e.attr.type === 'dir') queue.push({ nid: e.nid, path: d.path === '/' ? `/${e.name}` : `${d.path}/${e.name}` });
        }
      }
    }

    if (args.json) {
      const doc: Record<string, unknown> = { image: args.image, superblock: sb, stat: st };
      if (exts) doc.extents = exts;
      if (stats) doc.statistics = stats;
      if (comparison) doc.compare = { image: args.compare, ...comparison };
      if (list) {
        doc.directories = dirs.map((d) => ({
          path: d.path,
          entries: d.entries.map((e) => ({
            name: e.name, nid: e.nid, type: e.attr.type, mode: e.attr.mode & 0o7777, modeString: modeString(e.attr.type, e.attr.mode),
            uid: e.attr.uid, gid: e.attr.gid, nlink: e.attr.nlink, size: e.attr.size,
            mtime: { sec: e.attr.mtimeSec, nsec: e.attr.mtimeNsec },
            ...(e.attr.type === 'chardev' || e.attr.type === 'blockdev' ? { rdev: splitRdev(e.attr.rdev) } : {}),
            ...(e.target !== undefined ? { target: e.target } : {}),
          })),
        }));
      }
      await write(out, JSON.stringify(doc, null, 2) + '\n');
      return 0;
    }

    const lines: string[] = [];
    if (showSuper) lines.push(...superblockText(args.image, sb), '');
    if (stats) lines.push(...statsText(stats), '');
    if (comparison) lines.push(...compareText(args.image, args.compare!, comparison));
    else lines.push(...statText(st));
    if (exts) lines.push(...extentsText(exts));
    for (const d of dirs) {
      lines.push('', `${d.path}: ${d.entries.length} entr${d.entries.length === 1 ? 'y' : 'ies'}`);
      for (const e of d.entries) lines.push((args.nids ? `${pad(e.nid, 10)} ` : '') + lsLine(e));
    }
    await write(out, lines.join('\n') + '\n');
    return 0;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err && err.code === 'EPIPE') return 0; // reader of our output went away (e.g. `| head`)
    const msg = e instanceof ErofsError ? `${e.code}: ${e.message}` : err instanceof Error ? `${err.message}` : String(e);
    errOut.write(`erofs-vfsd inspect: ${oneLine(`${args.image}: ${msg}`)}\n`);
    return 1;
  } finally {
    for (const r of readers) {
      try { r.close(); } catch { /* closing a broken image must not mask the first error */ }
    }
    out.removeListener('error', ignore);
  }
}

function lsLine(e: EntryInfo): string {
  const a = e.attr;
  const sizeCol = a.type === 'chardev' || a.type === 'blockdev' ? splitRdev(a.rdev).join(', ') : String(a.size);
  return `${modeString(a.type, a.mode)} ${pad(a.nlink, 3)} ${pad(a.uid, 5)} ${pad(a.gid, 5)} ${pad(sizeCol, 10)} ${shortTime(a.mtimeSec)} ${e.name}${e.target !== undefined ? ` -> ${e.target}` : ''}`;
}
