// `erofs-vfsd inspect IMAGE [PATH]`: look inside an EROFS image without mounting it — superblock
// summary, `ls -l`-style listings, stat, xattrs and the fingerprint of one path, `--cat` of a
// file's content, `--json` for machines. Any failure (corrupt image, missing path) is reported as
// one line on stderr with exit status 1.
import { openImage, ErofsError, type ErofsReader, type InodeAttr, type SuperblockSummary } from '../erofs/index.js';

export interface InspectArgs {
  image: string;
  path?: string;
  devices?: string[];
  json?: boolean;
  cat?: boolean;
  recursive?: boolean;
  /** Where output goes (default process.stdout / process.stderr); for tests and embedding. */
  out?: NodeJS.WritableStream;
  err?: NodeJS.WritableStream;
}

const READDIR_BATCH = 1024;
const CAT_CHUNK = 1 << 20;
/** Bound for -R on hostile images: a directory graph with cycles must not walk forever. */
const MAX_RECURSIVE_ENTRIES = 5_000_000;

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

// ---------------------------------------------------------------- tree access

/** Resolves a slash-separated path from the root without following symlinks. */
export function resolvePath(reader: ErofsReader, p: string): { nid: number; path: string } {
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
  nid: number;
  attr: InodeAttr;
  target?: string;
}

function listDir(reader: ErofsReader, nid: number): EntryInfo[] {
  const out: EntryInfo[] = [];
  let off = 0;
  for (;;) {
    const ents = reader.readdir(nid, off, READDIR_BATCH);
    if (ents.length === 0) break;
    for (const d of ents) {
      if (d.nextOffset <= off) throw new ErofsError('EIO', `directory nid ${nid}: readdir offset does not advance`);
      off = d.nextOffset;
      const name = printableName(d.name);
      if (name === '.' || name === '..') continue;
      const attr = reader.getAttr(d.nid);
      const e: EntryInfo = { name, nid: d.nid, attr };
      if (attr.type === 'symlink') e.target = printableName(reader.readlink(d.nid));
      out.push(e);
    }
  }
  return out;
}

function superblockJson(sb: SuperblockSummary) {
  return {
    blockSize: sb.blockSize,
    features: sb.features,
    featureCompat: sb.featureCompat,
    featureIncompat: sb.featureIncompat,
    compressionAlgorithms: sb.compressionAlgorithms,
    inodes: sb.inodeCount,
    blocks: sb.blocks,
    rootNid: sb.rootNid,
    uuid: sb.uuid,
    volumeName: sb.volumeName,
    extraDevices: sb.extraDevices,
    buildTime: { sec: sb.buildTimeSec, nsec: sb.buildTimeNsec, iso: isoTime(sb.buildTimeSec, sb.buildTimeNsec) },
  };
}

function statJson(reader: ErofsReader, nid: number, path: string) {
  const a = reader.getAttr(nid);
  const xattrs = reader.listXattrs(nid).map((x) => ({ name: x.name, value: x.value.toString('hex'), text: xattrText(x.value) }));
  const fp = reader.fingerprint(nid);
  const out: Record<string, unknown> = {
    path,
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

function fingerprintText(fp: Buffer): string {
  const prefix = Buffer.from('sha256:');
  if (fp.length === prefix.length + 32 && fp.subarray(0, prefix.length).equals(prefix)) return `sha256:${fp.subarray(prefix.length).toString('hex')}`;
  return `0x${fp.toString('hex')}`;
}

// ---------------------------------------------------------------- text output

function pad(s: string | number, n: number, left = false): string {
  const t = String(s);
  return left ? t.padEnd(n) : t.padStart(n);
}

function lsLine(e: EntryInfo): string {
  const a = e.attr;
  const sizeCol = a.type === 'chardev' || a.type === 'blockdev' ? splitRdev(a.rdev).join(', ') : String(a.size);
  return `${modeString(a.type, a.mode)} ${pad(a.nlink, 3)} ${pad(a.uid, 5)} ${pad(a.gid, 5)} ${pad(sizeCol, 10)} ${shortTime(a.mtimeSec)} ${e.name}${e.target !== undefined ? ` -> ${e.target}` : ''}`;
}

function superblockText(image: string, sb: SuperblockSummary): string[] {
  return [
    `image:          ${image}`,
    `block size:     ${sb.blockSize}`,
    `features:       ${sb.features.length ? sb.features.join(' ') : '(none)'} (compat 0x${sb.featureCompat.toString(16)}, incompat 0x${sb.featureIncompat.toString(16)})`,
    `compression:    ${sb.compressionAlgorithms.length ? sb.compressionAlgorithms.join(' ') : 'none'}`,
    `inodes:         ${sb.inodeCount}`,
    `blocks:         ${sb.blocks}`,
    `root nid:       ${sb.rootNid}`,
    `uuid:           ${sb.uuid}`,
    `volume name:    ${sb.volumeName || '(none)'}`,
    `extra devices:  ${sb.extraDevices}`,
    `build time:     ${isoTime(sb.buildTimeSec, sb.buildTimeNsec)}`,
  ];
}

function statText(st: Record<string, unknown>): string[] {
  const m = st.mtime as { iso: string };
  const lines = [
    `path:           ${st.path as string}`,
    `nid:            ${st.nid as number}`,
    `type:           ${st.type as string}`,
    `mode:           ${(st.mode as number).toString(8).padStart(4, '0')} (${st.modeString as string})`,
    `uid/gid:        ${st.uid as number}/${st.gid as number}`,
    `nlink:          ${st.nlink as number}`,
    `size:           ${st.size as number}`,
    `blocks:         ${st.blocks as number} (512-byte units)`,
    `mtime:          ${m.iso}`,
  ];
  if (st.rdev) lines.push(`rdev:           ${(st.rdev as number[]).join(':')}`);
  if (st.target !== undefined) lines.push(`target:         ${st.target as string}`);
  if (st.data) {
    const d = st.data as { layout: string; extents?: unknown[] };
    lines.push(`data:           ${d.layout}${d.extents ? ` (${d.extents.length} extent${d.extents.length === 1 ? '' : 's'})` : ''}`);
  }
  const xs = st.xattrs as { name: string; text: string }[];
  lines.push(`xattrs:         ${xs.length ? '' : '(none)'}`.trimEnd());
  for (const x of xs) lines.push(`  ${x.name} = ${x.text}`);
  lines.push(`fingerprint:    ${(st.fingerprint as string | null) ?? '(none)'}`);
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
  let reader: ErofsReader | undefined;
  // A closed pipe (`| head`) surfaces as an 'error' event on stdout; the write callbacks see it too.
  const ignore = () => {};
  out.on('error', ignore);
  try {
    reader = openImage(args.image, { devices: args.devices });
    const target = resolvePath(reader, args.path ?? '/');
    const attr = reader.getAttr(target.nid);

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

    const showSuper = args.path === undefined || args.path === '' || args.path === '/';
    const st = statJson(reader, target.nid, target.path);
    const dirs: { path: string; entries: EntryInfo[] }[] = [];
    if (attr.type === 'dir') {
      const queue = [{ nid: target.nid, path: target.path }];
      const seen = new Set<number>();
      let total = 0;
      while (queue.length) {
        const d = queue.shift()!;
        if (seen.has(d.nid)) throw new ErofsError('EIO', `directory loop at '${d.path}'`);
        seen.add(d.nid);
        const entries = listDir(reader, d.nid);
        total += entries.length;
        if (total > MAX_RECURSIVE_ENTRIES) throw new ErofsError('EIO', 'too many directory entries');
        dirs.push({ path: d.path, entries });
        if (args.recursive) {
          for (const e of entries) if (e.attr.type === 'dir') queue.push({ nid: e.nid, path: d.path === '/' ? `/${e.name}` : `${d.path}/${e.name}` });
        }
      }
    }

    if (args.json) {
      const doc: Record<string, unknown> = { image: args.image, superblock: superblockJson(reader.superblock), stat: st };
      if (attr.type === 'dir') {
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
    if (showSuper) lines.push(...superblockText(args.image, reader.superblock), '');
    lines.push(...statText(st));
    for (const d of dirs) {
      lines.push('', `${d.path}: ${d.entries.length} entr${d.entries.length === 1 ? 'y' : 'ies'}`);
      for (const e of d.entries) lines.push(lsLine(e));
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
    try { reader?.close(); } catch { /* closing a broken image must not mask the first error */ }
    out.removeListener('error', ignore);
  }
}
