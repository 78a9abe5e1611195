// Page sharing (issue 5): host memory for file data when N test-VMM guests read every file of
// two minor versions of an image (digest-plain-a and -b, digest-lz4-a and -b), and SETUPMAPPING
// latency.
//
// Configurations: erofs-vfsd with sharing (both images in one domain, DAX), erofs-vfsd
// --share=off (DAX from per-image private backings), C virtiofsd on the unpacked trees (no DAX:
// FUSE_READ). /proc/meminfo deltas are useless on this shared machine (other jobs move Cached by
// hundreds of MB), so memory is counted exactly:
//  - DAX guests: the distinct physical frames behind every guest's window pages
//    (/proc/self/pagemap, root) — the host pages holding the file data the guests see;
//  - C virtiofsd: the host page cache of both unpacked trees (fincore), plus each guest's own
//    page-cache copy of what it read, which a real non-DAX guest keeps and the test VMM does
//    not: modelled as N × bytes read (page-rounded).
// The floor is the unique content: distinct sha256 across both versions, page-rounded.
//
// Two real QEMU 7.2 guests (TCG, no DAX window; test/support/qemu-share.ts): guest 1 walks
// digest-plain-a, then guest 2 walks digest-plain-b (every file read), against one erofs-vfsd
// with two sockets (sharing on / --share=off) or C virtiofsd on the two unpacked trees. Host
// file data = page cache of the private image copies / of the unpacked trees' files (fincore)
// plus the daemon's memfds, growth from a drop_caches baseline. Each guest's own page cache
// holds what it read in all three configurations (no DAX): modelled as the page-rounded sizes
// of the files of the version it walked. Floor: the unique content in bytes (without a window
// nothing needs a page per file; the images pack small files into shared pages).
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import {
  PAGE, connectDaxGuest, image, manifest, readAllThroughWindow, roundUp, startMultiDaemon, windowFor,
} from '../test/support/share-harness.js';
import { connectTestVmm, startVirtiofsd, unpackImage, type TestVmm } from '../test/support/test-vmm/index.js';
import type { Manifest } from '../test/support/manifest.js';
import { inPlaceFloor, measureQemuSharing, measureQemuVirtiofsd } from '../test/support/qemu-share.js';

export interface ShareMemRow {
  /** 'plain' / 'lz4' (test-VMM guests, DAX), or 'plain/qemu' (QEMU 7.2 guests, no DAX) */
  pair: string;
  config: 'erofs-vfsd share' | 'erofs-vfsd --share=off' | 'C virtiofsd' | 'unique floor';
  guests: number;
  /** Measured host memory holding file data, bytes (DAX: frames behind the windows; QEMU: page cache + memfds). */
  hostBytes: number;
  /** Modelled guest page-cache copies (non-DAX only), bytes. */
  guestCacheBytes: number;
  uniqueBytes: number;
  sumBytes: number;
}

export interface MapLatency { pair: string; kind: 'uncached' | 'cached'; samples: number; medianUs: number; p99Us: number }

/** Bytes of these files resident in the host page cache (util-linux fincore). */
function pageCacheBytes(files: string[]): number {
  let total = 0;
  for (let i = 0; i < files.length; i += 200) {
    const out = execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', ...files.slice(i, i + 200)], { encoding: 'utf8' });
    for (const line of out.split('\n')) if (line.trim()) total += Number(line.trim());
  }
  return total;
}

function dropCaches(): void {
  execFileSync('sync');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

function prefix(m: Manifest, dir: string): Manifest {
  const out: Manifest = {};
  for (const [p, e] of Object.entries(m)) if (p) out[`${dir}/${p}`] = e;
  return out;
}

function contentSizes(ma: Manifest, mb: Manifest): { unique: number; sum: number } {
  const seen = new Map<string, number>();
  let sum = 0;
  for (const m of [ma, mb]) {
    for (const e of Object.values(m)) {
      if (e.type !== 'file' || !e.size) continue;
      sum += e.size;
      seen.set(e.sha256!, roundUp(e.size));
    }
  }
  let unique = 0;
  for (const s of seen.values()) unique += s;
  return { unique, sum };
}

const pct = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN;
};

async function ourRun(pair: string, n: number, share: boolean, latency?: MapLatency[]): Promise<number> {
  const ma = manifest(`digest-${pair}-a`);
  const mb = manifest(`digest-${pair}-b`);
  const both = { ...prefix(ma, 'a'), ...prefix(mb, 'b') };
  const window = windowFor(both) + (4 << 20);
  const d = await startMultiDaemon([`a=${image(`digest-${pair}-a`)},domain=app`, `b=${image(`digest-${pair}-b`)},domain=app`], n,
    ['--dax-window-size', String(window), '--share', share ? 'on' : 'off', '--log-level', 'warn']);
  const guests: TestVmm[] = [];
  try {
    for (const s of d.sockets) guests.push(await connectDaxGuest(s, window, 'shmem'));
    const frames = new Set<bigint>();
    for (const g of guests) for (const v of (await readAllThroughWindow(g, both)).values()) for (const f of v.frames) frames.add(f);
    frames.delete(0n);
    const grown = frames.size * PAGE;
    if (latency && guests.length >= 2) {
      // SETUPMAPPING of 2 MiB ranges: uncached = a fresh daemon's first mapping after drop_caches
      // (fills the blob / faults nothing yet), cached = the same range again from another guest.
      const big = Object.entries(both).filter(([, e]) => e.type === 'file' && (e.size ?? 0) >= 256 << 10);
      const d2 = await startMultiDaemon([`a=${image(`digest-${pair}-a`)},domain=app`, `b=${image(`digest-${pair}-b`)},domain=app`], 2,
        ['--dax-window-size', String(window), '--log-level', 'warn']);
      try {
        const g1 = await connectDaxGuest(d2.sockets[0]!, window, 'shmem');
        const g2 = await connectDaxGuest(d2.sockets[1]!, window, 'shmem');
        dropCaches();
        const times: Record<'uncached' | 'cached', number[]> = { uncached: [], cached: [] };
        for (const [kind, g] of [['uncached', g1], ['cached', g2]] as const) {
          let m = 0;
          for (const [p, e] of big) {
            const nodeid = (await g.client.resolve(p)).nodeid;
            const { fh } = await g.client.open(nodeid, 0);
            for (let r = 0; r < roundUp(e.size!); r += 2 << 20) {
              const t0 = process.hrtime.bigint();
              await g.client.setupmapping(fh, r, 2 << 20, m, 2n);
              times[kind].push(Number(process.hrtime.bigint() - t0) / 1000);
              m += 2 << 20;
            }
            await g.client.release(fh);
          }
        }
        for (const kind of ['uncached', 'cached'] as const) {
          latency.push({ pair, kind, samples: times[kind].length, medianUs: pct(times[kind], 0.5), p99Us: pct(times[kind], 0.99) });
        }
        g1.close();
        g2.close();
      } finally {
        await d2.stop();
      }
    }
    return grown;
  } finally {
    for (const g of guests) g.close();
    await d.stop();
  }
}

async function virtiofsdRun(pair: string, n: number): Promise<{ grown: number; read: number }> {
  const ma = manifest(`digest-${pair}-a`);
  const mb = manifest(`digest-${pair}-b`);
  // Both trees side by side in the unpack cache directory, which virtiofsd exports.
  const da = unpackImage(image(`digest-${pair}-a`), `share-bench-${pair}-a`);
  const db = unpackImage(image(`digest-${pair}-b`), `share-bench-${pair}-b`);
  const src = path.dirname(da);
  const both = { ...prefix(ma, path.basename(da)), ...prefix(mb, path.basename(db)) };
  const bes = [];
  const guests: TestVmm[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const be = await startVirtiofsd({ source: src, cache: 'always' });
      bes.push(be);
      guests.push(await connectTestVmm(be.socketPath));
    }
    dropCaches();
    let read = 0;
    for (const g of guests) {
      for (const [p, e] of Object.entries(both)) {
        if (e.type !== 'file' || !e.size) continue;
        const nodeid = (await g.client.resolve(p)).nodeid;
        read += roundUp((await g.client.readFile(nodeid)).length);
      }
    }
    return { grown: pageCacheBytes(Object.keys(both).filter((p) => both[p]!.type === 'file').map((p) => path.join(src, p))), read };
  } finally {
    for (const g of guests) g.close();
    for (const be of bes) await be.stop();
  }
}

/** The 2-QEMU-guest rows (no DAX): sharing, --share=off, C virtiofsd, and the unique floor. */
export async function qemuShareRows(log: (s: string) => void = () => {}): Promise<{ rows: ShareMemRow[]; notes: string[] }> {
  log('share: 2 QEMU guests (no DAX), erofs-vfsd sharing on');
  const on = await measureQemuSharing({ pair: 'digest-plain', share: true, label: 'bench-qemu-share-on' });
  log('share: 2 QEMU guests (no DAX), erofs-vfsd --share=off');
  const off = await measureQemuSharing({ pair: 'digest-plain', share: false, label: 'bench-qemu-share-off' });
  log('share: 2 QEMU guests (no DAX), C virtiofsd on the unpacked trees');
  const v = await measureQemuVirtiofsd({ pair: 'digest-plain' });
  const c = on.content;
  const guestCache = c.sumPages; // guest 1 caches a, guest 2 caches b, page by page, in every config
  const row = (config: ShareMemRow['config'], hostBytes: number): ShareMemRow =>
    ({ pair: 'plain/qemu', config, guests: 2, hostBytes, guestCacheBytes: guestCache, uniqueBytes: c.uniqueBytes, sumBytes: c.sumBytes });
  const walks = [...on.guests, ...off.guests, ...v.guests].map((g) => g.walk?.ok === true);
  const floor = inPlaceFloor('digest-plain');
  return {
    rows: [row('erofs-vfsd share', on.growthAfterBoth), row('erofs-vfsd --share=off', off.growthAfterBoth), row('C virtiofsd', v.growthAfterBoth), row('unique floor', c.uniqueBytes)],
    notes: [
      `every guest walk ok: ${walks.every(Boolean)} (${walks.length} walks)`,
      // Page cache that nobody maps can be dropped by anyone's drop_caches mid-run (erofs-vfsd's
      // image pages are mapped by the daemon and stay): show the samples so a perturbed run shows.
      `C virtiofsd page cache baseline / after guest 1 / after both: ${v.samples.map((x) => (x.pageCache / 1e6).toFixed(2)).join(' / ')} MB` +
        (v.samples[2]!.pageCache < v.samples[1]!.pageCache + 0.5 * (c.sumPages - v.samples[1]!.pageCache) ? ' (PERTURBED: pages of guest 1 were dropped meanwhile; re-run)' : ''),
      `split page by page (mincore on the images): file bodies (page-aligned data of the files) with sharing ${(on.bodyGrowthAfterBoth / 1e6).toFixed(2)} MB = ` +
        `${(on.bodyGrowthAfterBoth / on.floor.uniqueDataBytes).toFixed(2)}× the unique body pages (${(on.floor.uniqueDataBytes / 1e6).toFixed(2)} MB), --share=off ${(off.bodyGrowthAfterBoth / 1e6).toFixed(2)} MB = ` +
        `${(off.bodyGrowthAfterBoth / on.floor.uniqueDataBytes).toFixed(2)}×; the rest is the images' metadata and inline data (${(on.otherGrowthAfterBoth / 1e6).toFixed(2)} / ${(off.otherGrowthAfterBoth / 1e6).toFixed(2)} MB of ${(on.floor.metadataBytes / 1e6).toFixed(2)} MB), which each image has whether files share or not`,
      `in-place floor for serving from the images (their metadata pages ${(floor.metadataBytes / 1e6).toFixed(2)} MB + unique page-aligned data ${(floor.uniqueDataBytes / 1e6).toFixed(2)} MB): ${(floor.bytes / 1e6).toFixed(2)} MB`,
      `C virtiofsd's figure leaves out the host file system's metadata (inodes, directories: block-device buffer cache), ours includes the images' metadata pages`,
    ],
  };
}

export async function benchShare(log: (s: string) => void = () => {}, o: { guests?: number[]; pairs?: string[]; qemu?: boolean } = {}): Promise<{ rows: ShareMemRow[]; latency: MapLatency[]; markdown: string }> {
  const rows: ShareMemRow[] = [];
  const latency: MapLatency[] = [];
  for (const pair of o.pairs ?? ['plain', 'lz4']) {
    const { unique, sum } = contentSizes(manifest(`digest-${pair}-a`), manifest(`digest-${pair}-b`));
    for (const n of o.guests ?? [1, 2, 4]) {
      log(`share: ${pair} N=${n}`);
      rows.push({ pair, config: 'erofs-vfsd share', guests: n, hostBytes: await ourRun(pair, n, true, n === 2 ? latency : undefined), guestCacheBytes: 0, uniqueBytes: unique, sumBytes: sum });
      rows.push({ pair, config: 'erofs-vfsd --share=off', guests: n, hostBytes: await ourRun(pair, n, false), guestCacheBytes: 0, uniqueBytes: unique, sumBytes: sum });
      const v = await virtiofsdRun(pair, n);
      rows.push({ pair, config: 'C virtiofsd', guests: n, hostBytes: v.grown, guestCacheBytes: v.read, uniqueBytes: unique, sumBytes: sum });
    }
  }
  const q = (o.qemu ?? true) ? await qemuShareRows(log) : undefined;
  const mb = (b: number) => (b / 1e6).toFixed(2);
  const markdown = [
    '| pair | config | guests | host file-data MB (frames / page cache) | + guest page caches (modelled) MB | total / unique |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.pair} (unique ${mb(r.uniqueBytes)} MB page-rounded; a+b ${mb(r.sumBytes)} MB of bytes) | ${r.config} | ${r.guests} | ${mb(r.hostBytes)} | ${mb(r.guestCacheBytes)} | ${((r.hostBytes + r.guestCacheBytes) / r.uniqueBytes).toFixed(2)} |`),
    '',
    ...(q ? [
      `Two QEMU 7.2 guests (no DAX), digest-plain a then b; unique content ${mb(q.rows[0]!.uniqueBytes)} MB of bytes, a+b ${mb(q.rows[0]!.sumBytes)} MB:`,
      '',
      '| config | host file-data MB | host / unique | + both guests\' page caches (modelled) MB | total / unique |',
      '| --- | --- | --- | --- | --- |',
      ...q.rows.map((r) => `| ${r.config} | ${mb(r.hostBytes)} | ${(r.hostBytes / r.uniqueBytes).toFixed(2)} | ${mb(r.guestCacheBytes)} | ${((r.hostBytes + r.guestCacheBytes) / r.uniqueBytes).toFixed(2)} |`),
      '',
      ...q.notes.map((n) => `- ${n}`),
      '',
    ] : []),
    '| pair | SETUPMAPPING 2 MiB | samples | median µs | p99 µs |',
    '| --- | --- | --- | --- | --- |',
    ...latency.map((l) => `| ${l.pair} | ${l.kind} | ${l.samples} | ${l.medianUs.toFixed(0)} | ${l.p99Us.toFixed(0)} |`),
  ].join('\n');
  return { rows: [...rows, ...(q?.rows ?? [])], latency, markdown };
}

// `node dist/bench/share.js` runs this section alone.
if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const log = (s: string): void => console.error(`bench: ${s}`);
  // `--qemu-only`: just the two-QEMU-guest rows (~3 min); `--no-qemu`: just the test-VMM rows.
  if (process.argv.includes('--qemu-only')) {
    qemuShareRows(log).then((r) => console.log(JSON.stringify(r, null, 2)), (e) => { console.error(e); process.exit(1); });
  } else {
    benchShare(log, { qemu: !process.argv.includes('--no-qemu') }).then((r) => console.log(r.markdown), (e) => { console.error(e); process.exit(1); });
  }
}
