// vhost-user benchmark: the test VMM (test/support/test-vmm) drives our daemon serving a plain
// EROFS image, Rust virtiofsd 1.14 (the back-end users run today, from the sid chroot) and
// Debian's C virtiofsd (QEMU 7.2) serving the same tree unpacked (host page cache warm for all),
// ours with 1 and 2 request queues (both virtiofsd offer one). Figures: 1 MiB sequential read
// MB/s, 4 KiB random read IOPS, LOOKUP+GETATTR ops/s, full tree walks, each as ours ÷ Rust
// virtiofsd and ours ÷ C virtiofsd in one run, with back-end CPU per operation; and a cold start
// (a fresh back-end's time to first byte and first walks against warm ones).
//
// `node dist/bench/vhost.js` runs it alone; bench/run.ts can call benchVhost().
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { REPO_ROOT, SHARED_IMAGES } from '../test/support/paths.js';
import { loadManifest } from '../test/support/manifest.js';
import { RUST_VIRTIOFSD, VIRTIOFSD, ensureSidTools, startRustVirtiofsd, toolVersion } from '../test/support/qemu.js';
import {
  connectTestVmm, startDaemon, startVirtiofsd, tempSocketPath, unpackImage, type TestVmm,
} from '../test/support/test-vmm/index.js';
import { TICK_US, cpuTicks, median, recachePages } from './measure.js';

export const VHOST_BENCH_DIR = path.join(REPO_ROOT, '.cache/bench/vhost');
const BIG_SIZE = 64 << 20;
const SMALL_FILES = 2000;

/** The three back-ends of every row: ours, Rust virtiofsd 1.14, C virtiofsd 7.2. */
export const SIDES = ['ours', 'rust', 'c'] as const;
export type Side = (typeof SIDES)[number];
export type PerSide = Record<Side, number>;

export interface VhostRow {
  workload: 'seq-1MiB' | 'rand-4KiB' | 'lookup+getattr' | 'walk plain.erofs';
  unit: 'MB/s' | 'IOPS' | 'ops/s' | 'walks/s';
  /** Request queues of our daemon (both virtiofsd offer one). */
  queues: number;
  /** Median rate per back-end. */
  rate: PerSide;
  /** Median of the per-round ratios ours ÷ Rust virtiofsd and ours ÷ C virtiofsd (above 1: ours faster). */
  vsRust: number;
  vsC: number;
  /** Back-end CPU microseconds per operation (utime+stime over all rounds / operations). */
  cpuUs?: PerSide;
}

/** A fresh back-end: start, first byte, first walks against warm ones (medians over fresh starts). */
export interface ColdStartRow {
  side: Side;
  /** spawn → socket listening */
  startMs: number;
  /** socket listening → first 4 KiB of a file back (vhost-user set-up, FUSE INIT, LOOKUPs, OPEN, READ) */
  firstByteMs: number;
  /** first full walk after the first byte, and the warm walk (median of walks 3-5) */
  firstWalkMs: number;
  warmWalkMs: number;
  /** back-end CPU ms of the first walk and of a warm walk (mean of walks 3-5) */
  firstWalkCpuMs: number;
  warmWalkCpuMs: number;
}

export interface VhostBenchOptions {
  /** Length of one measuring round. Default 400 ms. */
  roundMs?: number;
  /** Alternating rounds per figure and side (the median is kept). Default 11. */
  rounds?: number;
  /** Fresh starts per back-end for the cold-start and walk rows. Default 3. */
  coldRounds?: number;
  /** Requests in flight. Default 4. */
  depth?: number;
  queues?: number[];
}

/** Builds (once) the bench image: one 64 MiB random file and 2000 small files, uncompressed. */
export function prepareBenchImage(): { image: string; tree: string } {
  const image = path.join(VHOST_BENCH_DIR, 'bench-plain.erofs');
  if (!fs.existsSync(image)) {
    const src = path.join(VHOST_BENCH_DIR, 'src');
    fs.rmSync(src, { recursive: true, force: true });
    fs.mkdirSync(path.join(src, 'small'), { recursive: true });
    const big = Buffer.alloc(BIG_SIZE);
    crypto.randomFillSync(big);
    fs.writeFileSync(path.join(src, 'big.bin'), big);
    for (let i = 0; i < SMALL_FILES; i++) {
      fs.writeFileSync(path.join(src, 'small', `f-${String(i).padStart(5, '0')}`), crypto.randomBytes(1024));
    }
    const tmp = `${image}.tmp`;
    const r = spawnSync('mkfs.erofs', ['-T0', tmp, src], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`mkfs.erofs failed: ${r.stderr}`);
    fs.renameSync(tmp, image);
    fs.rmSync(src, { recursive: true, force: true });
  }
  return { image, tree: unpackImage(image, 'bench-plain') };
}

interface Round { rate: number; ops: number }
interface Workloads { seq: () => Promise<Round>; rand: () => Promise<Round>; meta: () => Promise<Round>; done: () => Promise<void> }
interface Running { pid: number; socketPath: string; stop: () => Promise<unknown> }

/**
 * Starts one back-end: ours over `image`, or a virtiofsd over `tree`. C virtiofsd keeps the
 * cache mode this bench always gave it (`always`); Rust virtiofsd runs with its default `auto`.
 */
async function startSide(side: Side, o: { image: string; tree: string; queues?: number }): Promise<Running> {
  if (side === 'ours') {
    return startDaemon({ images: [o.image], extraArgs: ['--num-request-queues', String(o.queues ?? 1)], logLevel: 'warn' });
  }
  if (side === 'c') return startVirtiofsd({ source: o.tree, cache: 'always' });
  const socketPath = tempSocketPath('rust-virtiofsd');
  const b = await startRustVirtiofsd(o.tree, socketPath, { cache: 'auto' });
  return { pid: b.proc.pid ?? -1, socketPath, stop: b.stop };
}

/**
 * Fresh back-ends, one per side per round (alternating which starts first): time to start, to
 * the first byte of a file, and the first five full walks of plain.erofs (stat, readlink, xattrs,
 * sha256 of every file: test VMM's walk, 4 requests in flight).
 */
async function coldStarts(image: string, tree: string, rounds: number, log: (s: string) => void): Promise<ColdStartRow[]> {
  const manifest = loadManifest(path.join(SHARED_IMAGES, 'plain.expected.json'));
  const first = Object.entries(manifest).find(([, e]) => e.type === 'file' && (e.size ?? 0) >= 4096)?.[0];
  if (!first) throw new Error('plain.erofs has no file of 4 KiB or more');
  const runs: Record<Side, ColdStartRow[]> = { ours: [], rust: [], c: [] };
  for (let r = 0; r < rounds; r++) {
    for (const side of r % 2 === 0 ? SIDES : [...SIDES].reverse()) {
      const t0 = performance.now();
      const be = await startSide(side, { image, tree });
      const tReady = performance.now();
      try {
        const t = await connectTestVmm(be.socketPath, { requestQueues: 1 });
        try {
          const e = await t.client.resolve(first);
          const { fh } = await t.client.open(e.nodeid);
          await t.client.read(fh, 0, 4096);
          const tFirst = performance.now();
          await t.client.release(fh);
          const ms: number[] = [];
          const cpu: number[] = [];
          for (let w = 0; w < 5; w++) {
            const c0 = cpuTicks(be.pid);
            const a = performance.now();
            await t.client.walk({ concurrency: 4 });
            ms.push(performance.now() - a);
            cpu.push(((cpuTicks(be.pid) - c0) * TICK_US) / 1000);
          }
          runs[side].push({
            // CPU: the mean of walks 3-5 (clock ticks are 10 ms, a warm walk takes a few of them).
            side, startMs: tReady - t0, firstByteMs: tFirst - tReady, firstWalkMs: ms[0]!, warmWalkMs: median(ms.slice(2)),
            firstWalkCpuMs: cpu[0]!, warmWalkCpuMs: (cpu[2]! + cpu[3]! + cpu[4]!) / 3,
          });
          log(`vhost: cold start ${side}: first byte ${(tFirst - tReady).toFixed(1)} ms, walks ${ms.map((x) => x.toFixed(0)).join(', ')} ms`);
        } finally {
          t.close();
        }
      } finally {
        await be.stop();
      }
    }
  }
  return SIDES.map((side) => {
    const xs = runs[side];
    const m = (k: keyof Omit<ColdStartRow, 'side'>) => median(xs.map((x) => x[k]));
    return {
      side, startMs: m('startMs'), firstByteMs: m('firstByteMs'), firstWalkMs: m('firstWalkMs'), warmWalkMs: m('warmWalkMs'),
      firstWalkCpuMs: m('firstWalkCpuMs'), warmWalkCpuMs: m('warmWalkCpuMs'),
    };
  });
}

async function timed(ms: number, depth: number, op: (i: number) => Promise<number>): Promise<{ ops: number; units: number; secs: number }> {
  const t0 = performance.now();
  const end = t0 + ms;
  let ops = 0;
  let units = 0;
  let i = 0;
  const worker = async () => {
    while (performance.now() < end) {
      // Not `units += await op()`: that reads `units` before the await, and with `depth` workers
      // in flight each completion would overwrite the others' additions (seq MB/s came out 2-4x
      // low, by a different factor each round).
      const n = await op(i++);
      units += n;
      ops++;
    }
  };
  await Promise.all(Array.from({ length: depth }, worker));
  return { ops, units, secs: (performance.now() - t0) / 1000 };
}

/** Opens the bench files on one connection; each workload call measures one short round. */
async function workloads(t: TestVmm, roundMs: number, depth: number): Promise<Workloads> {
  const c = t.client;
  const big = await c.resolve('big.bin');
  const { fh } = await c.open(big.nodeid);
  const size = Number(big.attr.size);
  const MiB = 1 << 20;
  // Warm the host page cache (and the daemon's) with one sequential pass.
  for (let off = 0; off < size; off += MiB) await c.read(fh, off, MiB);
  const nChunks = size / MiB;
  let seqPos = 0;
  const pages = size / 4096;
  let rnd = 12345;
  const dir = await c.resolve('small');
  const names = Array.from({ length: SMALL_FILES }, (_, i) => `f-${String(i).padStart(5, '0')}`);
  const counts = new Map<bigint, bigint>();
  let metaPos = 0;
  return {
    seq: async () => {
      const r = await timed(roundMs, depth, () => c.readCount(fh, (seqPos++ % nChunks) * MiB, MiB));
      return { rate: r.units / r.secs / 1e6, ops: r.ops };
    },
    rand: async () => {
      const r = await timed(roundMs, depth, async () => {
        rnd = (rnd * 1103515245 + 12345) >>> 0;
        return c.readCount(fh, (rnd % pages) * 4096, 4096);
      });
      return { rate: r.ops / r.secs, ops: r.ops };
    },
    meta: async () => {
      const r = await timed(roundMs, depth, async () => {
        const e = await c.lookup(dir.nodeid, names[metaPos++ % names.length]!);
        counts.set(e.nodeid, (counts.get(e.nodeid) ?? 0n) + 1n);
        await c.getattr(e.nodeid);
        return 1;
      });
      return { rate: r.ops / r.secs, ops: r.ops };
    },
    done: async () => {
      await c.release(fh);
      await c.batchForget([...counts.entries()]);
    },
  };
}

/**
 * Head-of-line blocking across queues: GETATTR latency on request queue 2 while queue 1 reads a
 * 1 MiB range of an LZMA-compressed file (issue 4: decompression must not stall other queues).
 */
export async function crossQueueLatency(rounds = 5): Promise<{ readMs: number; getattrMedianMs: number; getattrMaxMs: number }> {
  const be = await startDaemon({ images: [path.join(SHARED_IMAGES, 'lzma.erofs')], extraArgs: ['--num-request-queues', '2'], logLevel: 'warn' });
  try {
    const t = await connectTestVmm(be.socketPath, { requestQueues: 2 });
    try {
      const e = await t.client.resolve('big/text-3m');
      const { fh } = await t.client.open(e.nodeid);
      const reads: number[] = [];
      const lat: number[] = [];
      for (let r = 0; r < rounds; r++) {
        const a = performance.now();
        let done = false;
        const big = t.client.read(fh, (r % 2) << 20, 1 << 20, { queue: 1 }).then(() => { done = true; reads.push(performance.now() - a); });
        while (!done) {
          const b = performance.now();
          await t.client.call(3 /* GETATTR */, 1n, [Buffer.alloc(16)], 104, { queue: 2 });
          lat.push(performance.now() - b);
        }
        await big;
      }
      await t.client.release(fh);
      return { readMs: median(reads), getattrMedianMs: median(lat), getattrMaxMs: Math.max(...lat) };
    } finally {
      t.close();
    }
  } finally {
    await be.stop();
  }
}

const SIDE_NAMES: Record<Side, string> = { ours: 'ours', rust: 'Rust virtiofsd', c: 'C virtiofsd' };

export async function benchVhost(log: (s: string) => void = () => {}, o: VhostBenchOptions = {}): Promise<{
  rows: VhostRow[]; coldStart: ColdStartRow[]; notes: string[]; markdown: string; versions: Record<Side, string>;
  crossQueue: { readMs: number; getattrMedianMs: number; getattrMaxMs: number };
}> {
  const roundMs = o.roundMs ?? 400;
  const rounds = o.rounds ?? 11;
  const depth = o.depth ?? 4;
  ensureSidTools();
  const versions: Record<Side, string> = { ours: 'erofs-vfsd (this checkout)', rust: toolVersion(RUST_VIRTIOFSD), c: toolVersion(VIRTIOFSD) };
  log('vhost: preparing the bench image and its unpacked tree');
  const { image, tree } = prepareBenchImage();
  for (const f of [image, path.join(tree, 'big.bin')]) recachePages(f);
  const rows: VhostRow[] = [];
  type K = 'seq' | 'rand' | 'meta';
  for (const queues of o.queues ?? [1, 2]) {
    log(`vhost: ours with ${queues} request queue(s) vs Rust and C virtiofsd with 1, ${rounds} alternating rounds of ${roundMs} ms`);
    const running: Partial<Record<Side, Running>> = {};
    const conns: TestVmm[] = [];
    try {
      const w = {} as Record<Side, Workloads>;
      for (const side of SIDES) {
        const be = await startSide(side, { image, tree, queues });
        running[side] = be;
        const t = await connectTestVmm(be.socketPath, { requestQueues: side === 'ours' ? queues : 1, memory: { size: 128 << 20, regions: 2 } });
        conns.push(t);
        w[side] = await workloads(t, roundMs, depth);
      }
      const figures = {} as Record<K, Record<Side, number[]>>;
      // Back-end CPU time per operation: unlike rates, it barely moves when the machine is busy.
      const cpu = {} as Record<K, Record<Side, { ticks: number; ops: number }>>;
      for (const k of ['seq', 'rand', 'meta'] as const) {
        figures[k] = { ours: [], rust: [], c: [] };
        cpu[k] = { ours: { ticks: 0, ops: 0 }, rust: { ticks: 0, ops: 0 }, c: { ticks: 0, ops: 0 } };
      }
      // One unmeasured round of each workload on every side first: our daemon's JIT compiles its
      // hot paths during its first thousands of requests (cold start is its own row below), and
      // measuring from the first request would charge that one-off cost to whichever workload
      // comes first.
      for (const k of ['seq', 'rand', 'meta'] as const) for (const side of SIDES) await w[side][k]();
      // Alternate short rounds (and which side goes first) so load from anything else on the
      // machine hits every side alike.
      for (const k of ['seq', 'rand', 'meta'] as const) {
        for (let r = 0; r < rounds; r++) {
          for (const side of r % 2 === 0 ? SIDES : [...SIDES].reverse()) {
            const pid = running[side]!.pid;
            const c0 = cpuTicks(pid);
            const got = await w[side][k]();
            cpu[k][side].ticks += cpuTicks(pid) - c0;
            cpu[k][side].ops += got.ops;
            figures[k][side].push(got.rate);
          }
        }
      }
      for (const side of SIDES) await w[side].done();
      const row = (workload: VhostRow['workload'], unit: VhostRow['unit'], k: K): VhostRow => {
        const f = figures[k];
        // The ratio is the median of per-round ratios (each round of ours against the peer's
        // round next to it): the machine's speed drifts by 2x over a run here, and rounds next to
        // each other see the same conditions; the rates shown are the plain medians.
        const paired = (peer: Side) => median(f.ours.map((x, i) => x / f[peer][i]!));
        const us = (side: Side) => (cpu[k][side].ticks * TICK_US) / Math.max(1, cpu[k][side].ops);
        return {
          workload, unit, queues,
          rate: { ours: median(f.ours), rust: median(f.rust), c: median(f.c) },
          vsRust: paired('rust'), vsC: paired('c'),
          cpuUs: { ours: us('ours'), rust: us('rust'), c: us('c') },
        };
      };
      const got = [row('seq-1MiB', 'MB/s', 'seq'), row('rand-4KiB', 'IOPS', 'rand'), row('lookup+getattr', 'ops/s', 'meta')];
      for (const g of got) log(`vhost: ${g.workload} q=${queues}: ours ${g.rate.ours.toFixed(1)}, Rust ${g.rate.rust.toFixed(1)}, C ${g.rate.c.toFixed(1)} ${g.unit}`);
      rows.push(...got);
    } finally {
      for (const c of conns) c.close();
      for (const side of SIDES) await running[side]?.stop();
    }
  }
  const coldRounds = o.coldRounds ?? 3;
  log(`vhost: cold start and full walks of plain.erofs vs its unpacked tree, ${coldRounds} fresh starts per back-end`);
  const plain = path.join(SHARED_IMAGES, 'plain.erofs');
  const plainTree = unpackImage(plain);
  const coldStart = await coldStarts(plain, plainTree, coldRounds, log);
  const files = Object.values(loadManifest(path.join(SHARED_IMAGES, 'plain.expected.json'))).filter((e) => e.type === 'file').length;
  const cold = Object.fromEntries(coldStart.map((c) => [c.side, c])) as Record<Side, ColdStartRow>;
  // Warm walks: the fresh starts' walks 3-5; one walk per side per round is too few for per-round
  // ratios, so the ratio is of the medians.
  rows.push({
    workload: 'walk plain.erofs', unit: 'walks/s', queues: 1,
    rate: { ours: 1000 / cold.ours.warmWalkMs, rust: 1000 / cold.rust.warmWalkMs, c: 1000 / cold.c.warmWalkMs },
    vsRust: cold.rust.warmWalkMs / cold.ours.warmWalkMs, vsC: cold.c.warmWalkMs / cold.ours.warmWalkMs,
    cpuUs: { ours: (cold.ours.warmWalkCpuMs * 1000) / files, rust: (cold.rust.warmWalkCpuMs * 1000) / files, c: (cold.c.warmWalkCpuMs * 1000) / files },
  });
  log('vhost: cross-queue latency during LZMA reads (ours)');
  const hol = await crossQueueLatency();
  const fmt = (x: number, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
  const num = (x: number) => fmt(x, x < 10 ? 2 : 0);
  const markdown = [
    '| workload | request queues (ours) | ours | Rust virtiofsd | C virtiofsd | unit | **ours ÷ Rust** | ours ÷ C | back-end CPU µs/op: ours | Rust | C |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.workload} | ${r.queues} | ${num(r.rate.ours)} | ${num(r.rate.rust)} | ${num(r.rate.c)} | ${r.unit} | **${fmt(r.vsRust, 2)}** | ${fmt(r.vsC, 2)} | ${r.cpuUs ? `${fmt(r.cpuUs.ours)} | ${fmt(r.cpuUs.rust)} | ${fmt(r.cpuUs.c)}` : ' | | '} |`),
    '',
    `Cold start (test VMM, plain.erofs, median of ${coldRounds} fresh starts per back-end):`,
    '',
    '| back-end | start → listening ms | listening → first byte ms | first walk ms | warm walk ms | first ÷ warm | back-end CPU ms, first walk | warm walk | first walk: Rust ÷ this |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...coldStart.map((c) => `| ${SIDE_NAMES[c.side]} | ${fmt(c.startMs)} | ${fmt(c.firstByteMs, 1)} | ${fmt(c.firstWalkMs)} | ${fmt(c.warmWalkMs)} | ${fmt(c.firstWalkMs / c.warmWalkMs, 2)} | ${fmt(c.firstWalkCpuMs)} | ${fmt(c.warmWalkCpuMs)} | ${fmt(cold.rust.firstWalkMs / c.firstWalkMs, 2)} |`),
  ].join('\n');
  const notes = [
    `back-ends: ours = ${versions.ours}; Rust = ${versions.rust} (sid chroot, \`--sandbox none\` because we run as root, \`--cache auto\`, \`--xattr\`, default thread pool: none); C = ${versions.c} (\`-o cache=always,xattr\`, its default sandbox)`,
    `test VMM front-end (TypeScript, one process driving all three back-ends), ${depth} requests in flight, rates: median of ${rounds} alternating ${roundMs} ms rounds, ratios: median of the ${rounds} per-round ratios, after one unmeasured round of each workload per side (JIT warm-up), page cache warm`,
    'data: 64 MiB random file + 2000 × 1 KiB files; ours serves the uncompressed EROFS image, both virtiofsd its unpacked copy (loop mount + cp -a); both files\' page cache dropped and refilled by one sequential read before measuring (read-ahead, large folios: virtiofsd\'s fastest state)',
    'Rust virtiofsd 1.14 and C virtiofsd 7.2 both offer a single request queue, so their figures are always for 1 queue',
    'the front-end is a single-threaded Node process: at high rates it, not the back-end, can be the limit (same for all)',
    'READ replies are checked but their data is left in guest memory, as a guest page cache receives it',
    'back-end CPU µs/op: utime+stime of the back-end process tree over all rounds divided by operations (stable on a busy machine); the walk row: per file walked',
    `walk plain.erofs: test VMM walk (stat, readlink, xattrs, sha256 of every file; ${files} files), warm = median of walks 3-5 of each fresh start; ratio of the medians`,
    `cold start: a fresh back-end per round; first byte = vhost-user set-up, FUSE INIT, LOOKUPs, OPEN and a 4 KiB READ of one file; then five walks`,
    `ours, head-of-line blocking: GETATTR on queue 2 while queue 1 reads 1 MiB of an LZMA file (${fmt(hol.readMs)} ms): median ${fmt(hol.getattrMedianMs, 1)} ms, max ${fmt(hol.getattrMaxMs, 1)} ms`,
  ];
  return { rows, coldStart, notes, markdown, versions, crossQueue: hol };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  benchVhost((s) => console.error(s)).then((r) => {
    console.log(r.markdown);
    console.log(r.notes.map((n) => `- ${n}`).join('\n'));
  }).catch((e) => { console.error(e); process.exit(1); });
}

