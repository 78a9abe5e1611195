// Real-guest benchmark: QEMU 11.1 guests (Linux 7.x from sid, vhost-user-fs-pci, one request
// queue, no DAX window) booted against each back-end — ours over an EROFS image, Rust virtiofsd
// 1.14 and C virtiofsd 7.2 over the same tree unpacked — one fresh back-end per boot, alternating
// which boots first, several rounds; medians and per-round ratios. Ours is also booted over an
// LZ4 and an LZ4HC image of the same tree.
//
// In each boot the guest (guest-tests/run.sh, `gt.tests=bench`) times, each phase from a dropped
// guest cache: the first 4 KiB of a small file (time to first byte of a fresh back-end), a walk
// reading every file of the corpus (the fresh back-end's first walk) and one that only stats
// (`find -ls`), a sequential read of a 256 MiB file cold in the guest, the same after the guest
// drops its cache, two processes reading one half each, and both walks again (warm back-end).
// The host samples the back-end's and QEMU's CPU time at each phase's edges (GUESTMARK and
// GUESTTEST console lines): under TCG the guest's own CPU can cap every back-end alike, and CPU
// per operation then shows what the rate hides.
//
// `node dist/bench/guest.js [--rounds N]` runs it alone; bench/run.ts calls benchGuest().
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { REPO_ROOT, SHARED_IMAGES } from '../test/support/paths.js';
import { loadManifest } from '../test/support/manifest.js';
import {
  QEMU_CACHE, QEMU_SID, RUST_VIRTIOFSD, SID_BIN, SID_GUEST_DIR, VIRTIOFSD, bootGuest, ensureGuest, ensureSidTools,
  startErofsVfsd, startRustVirtiofsd, startVirtiofsd, toolVersion, type Backend,
} from '../test/support/qemu.js';
import { unpackImage } from '../test/support/test-vmm/index.js';
import { TICK_US, cpuTicks, median, recachePages, writeMixedFile } from './measure.js';

export const GUEST_BENCH_DIR = path.join(REPO_ROOT, '.cache/bench/guest');
/** The bench's own guest directory: sid's kernel, an initramfs built from this checkout. */
const BENCH_GUEST = path.join(REPO_ROOT, '.cache/bench/guest-sid');
const BIG_FILE = 'big/seq-256m';
const BIG_SIZE = 256 << 20;
const CORPUS = 'corpus';
const GUEST_MEM = '1G';

/** Back-end configurations booted each round. */
export const CONFIGS = ['ours', 'rust', 'c', 'ours-lz4', 'ours-lz4hc'] as const;
export type Config = (typeof CONFIGS)[number];
const CONFIG_NAMES: Record<Config, string> = {
  ours: 'ours (plain image)', rust: 'Rust virtiofsd', c: 'C virtiofsd', 'ours-lz4': 'ours (LZ4 image)', 'ours-lz4hc': 'ours (LZ4HC image)',
};

/** Phases of one boot, in the order the guest runs them (guest-tests/run.sh). */
export const PHASES = [
  'bench-ttfb', 'bench-walk-read-1', 'bench-walk-stat-1', 'bench-seq-cold', 'bench-seq-dropped', 'bench-par2',
  'bench-walk-read-2', 'bench-walk-stat-2',
] as const;
export type Phase = (typeof PHASES)[number];

export interface PhaseResult {
  /** guest-measured wall time (CLOCK_MONOTONIC in the guest), ms */
  ms: number;
  /** readtime: open → first bytes back, ms */
  firstMs?: number;
  bytes: number;
  /** walks: entries (lstat'ed) and regular files */
  entries?: number;
  files?: number;
  /** back-end and QEMU CPU time over the phase (GUESTMARK → GUESTTEST), ms */
  backendCpuMs: number;
  qemuCpuMs: number;
}

export interface BootResult {
  config: Config; round: number; accel: string;
  /** host wall time: QEMU start to the guest's first result line, and to QEMU's exit */
  bootMs: number; wallMs: number;
  phases: Record<Phase, PhaseResult>;
}

export interface GuestBenchOptions {
  /** Rounds: every configuration boots once per round, the order alternating. Default 5. */
  rounds?: number;
  configs?: Config[];
}

interface Prepared { images: Record<'plain' | 'lz4' | 'lz4hc', string>; tree: string; firstFile: string }

/**
 * The bench tree (once): a 256 MiB file of mixed content (~2:1 for LZ4) and the shared corpus
 * (plain.erofs's tree: 1,317 files, 5.3 MB, the layout of a small container image); its images
 * built with sid's mkfs.erofs 1.9 (plain, -zlz4, -zlz4hc), and the plain image unpacked by the
 * host kernel for the two virtiofsd (the same bytes, owners and modes ours serves).
 */
export function prepareGuestBench(): Prepared {
  const src = path.join(GUEST_BENCH_DIR, 'src');
  const stamp = `${src}.done`;
  const corpus = unpackImage(path.join(SHARED_IMAGES, 'plain.erofs'));
  if (!fs.existsSync(stamp)) {
    fs.rmSync(src, { recursive: true, force: true });
    fs.mkdirSync(path.join(src, path.dirname(BIG_FILE)), { recursive: true });
    writeMixedFile(path.join(src, BIG_FILE), BIG_SIZE);
    fs.mkdirSync(path.join(src, CORPUS));
    execFileSync('cp', ['-a', `${corpus}/.`, path.join(src, CORPUS)]);
    fs.writeFileSync(stamp, '');
  }
  const mkfs = path.join(SID_BIN, 'mkfs.erofs');
  const build = (name: string, opts: string[]): string => {
    const image = path.join(GUEST_BENCH_DIR, `guest-${name}.erofs`);
    if (!fs.existsSync(image) || fs.statSync(image).mtimeMs < fs.statSync(stamp).mtimeMs) {
      execFileSync(mkfs, ['--quiet', ...opts, '-T0', `${image}.tmp`, src], { stdio: ['ignore', 'ignore', 'pipe'] });
      fs.renameSync(`${image}.tmp`, image);
    }
    return image;
  };
  const images = { plain: build('plain', []), lz4: build('lz4', ['-zlz4']), lz4hc: build('lz4hc', ['-zlz4hc']) };
  const manifest = loadManifest(path.join(SHARED_IMAGES, 'plain.expected.json'));
  const first = Object.entries(manifest).find(([, e]) => e.type === 'file' && (e.size ?? 0) >= 4096)?.[0];
  if (!first) throw new Error('plain.erofs has no file of 4 KiB or more');
  return { images, tree: unpackImage(images.plain, 'bench-guest-plain'), firstFile: `${CORPUS}/${first}` };
}

/** The same host page-cache state for every side before a boot: its files read in full, big ones by read-ahead. */
function warmHost(config: Config, p: Prepared): void {
  if (config.startsWith('ours')) {
    recachePages(p.images[config === 'ours' ? 'plain' : config === 'ours-lz4' ? 'lz4' : 'lz4hc']);
    return;
  }
  recachePages(path.join(p.tree, BIG_FILE));
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, e.name);
      if (e.isDirectory()) walk(full);
      else if (e.isFile()) fs.readFileSync(full);
    }
  };
  walk(path.join(p.tree, CORPUS));
}

function startConfig(config: Config, p: Prepared, socket: string): Promise<Backend> {
  switch (config) {
    case 'ours': return startErofsVfsd([{ path: p.images.plain }], socket);
    case 'ours-lz4': return startErofsVfsd([{ path: p.images.lz4 }], socket);
    case 'ours-lz4hc': return startErofsVfsd([{ path: p.images.lz4hc }], socket);
    case 'rust': return startRustVirtiofsd(p.tree, socket, { cache: 'auto' });
    case 'c': return startVirtiofsd(p.tree, socket);
  }
}

/** One boot against a fresh back-end; the phases' guest timings and the CPU both sides spent in each. */
async function bootOnce(config: Config, round: number, p: Prepared): Promise<BootResult> {
  warmHost(config, p);
  const socket = path.join(QEMU_CACHE, `bench-guest-${config}.sock`);
  const be = await startConfig(config, p, socket);
  const bePid = be.proc.pid ?? -1;
  const marks = new Map<string, { be: number; qemu: number }>();
  const spent = new Map<string, { be: number; qemu: number }>();
  try {
    const run = await bootGuest(socket, {
      label: `bench-guest-${config}`, tests: ['bench'], qemu: QEMU_SID, guestDir: BENCH_GUEST, mem: GUEST_MEM, timeoutS: 1800,
      extraArgs: [`GT_BENCH_FILE=${BIG_FILE}`, `GT_BENCH_TREE=${CORPUS}`, `GT_BENCH_FIRST=${p.firstFile}`],
      onLine: (line, qemuPid) => {
        const m = /GUEST(MARK|TEST) (\{.*\})/.exec(line);
        if (!m) return;
        let name: string;
        try {
          const j = JSON.parse(m[2]!) as { phase?: string; test?: string };
          name = (m[1] === 'MARK' ? j.phase : j.test) ?? '';
        } catch {
          return;
        }
        const now = { be: cpuTicks(bePid), qemu: cpuTicks(qemuPid) };
        if (m[1] === 'MARK') marks.set(name, now);
        else if (marks.has(name)) spent.set(name, { be: now.be - marks.get(name)!.be, qemu: now.qemu - marks.get(name)!.qemu });
      },
    });
    const phases = {} as Record<Phase, PhaseResult>;
    for (const ph of PHASES) {
      const r = run.byTest.get(ph)?.[0];
      const cpu = spent.get(ph);
      if (!r?.ok || typeof r.ms !== 'number' || !cpu) {
        throw new Error(`${config}: guest phase ${ph} failed or missing: ${JSON.stringify(r ?? null)}\n` +
          `--- guest console (tail) ---\n${run.console.slice(-3000)}\n--- back-end log (tail) ---\n${be.log().slice(-3000)}`);
      }
      phases[ph] = {
        ms: r.ms, firstMs: typeof r.first_ms === 'number' ? r.first_ms : undefined, bytes: Number(r.bytes ?? 0),
        entries: typeof r.entries === 'number' ? r.entries : undefined, files: typeof r.files === 'number' ? r.files : undefined,
        backendCpuMs: (cpu.be * TICK_US) / 1000, qemuCpuMs: (cpu.qemu * TICK_US) / 1000,
      };
    }
    return { config, round, accel: run.accel ?? 'unknown', bootMs: run.bootMs ?? NaN, wallMs: run.wallMs, phases };
  } finally {
    await be.stop();
  }
}

/** How a phase reads as a figure: a rate (higher is better) and the unit CPU is counted per. */
interface Metric { label: string; phase: Phase; unit: string; rate: (r: PhaseResult) => number; perUnit: string; units: (r: PhaseResult) => number }
const MiB = (r: PhaseResult) => r.bytes / (1 << 20);
const mbps = (r: PhaseResult) => r.bytes / 1e3 / r.ms;
const perSec = (n: (r: PhaseResult) => number) => (r: PhaseResult) => (n(r) * 1000) / r.ms;
const files = (r: PhaseResult) => r.files ?? 0;
const entries = (r: PhaseResult) => r.entries ?? 0;
const METRICS: Metric[] = [
  { label: '256 MiB sequential read, cold in the guest', phase: 'bench-seq-cold', unit: 'MB/s', rate: mbps, perUnit: 'MiB', units: MiB },
  { label: 'same, second read after the guest drops its cache', phase: 'bench-seq-dropped', unit: 'MB/s', rate: mbps, perUnit: 'MiB', units: MiB },
  { label: 'two readers in one guest (one half each)', phase: 'bench-par2', unit: 'MB/s', rate: mbps, perUnit: 'MiB', units: MiB },
  { label: 'walk reading every file (warm back-end)', phase: 'bench-walk-read-2', unit: 'files/s', rate: perSec(files), perUnit: 'file', units: files },
  { label: 'walk that only stats, `find -ls` (warm back-end)', phase: 'bench-walk-stat-2', unit: 'entries/s', rate: perSec(entries), perUnit: 'entry', units: entries },
  { label: 'first walk reading every file (fresh back-end)', phase: 'bench-walk-read-1', unit: 'files/s', rate: perSec(files), perUnit: 'file', units: files },
];

const fmt = (x: number, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
const num = (x: number) => fmt(x, x < 10 ? 2 : x < 100 ? 1 : 0);

export async function benchGuest(log: (s: string) => void = () => {}, o: GuestBenchOptions = {}): Promise<{ boots: BootResult[]; markdown: string }> {
  const rounds = o.rounds ?? 5;
  const configs = o.configs ?? [...CONFIGS];
  ensureSidTools();
  ensureGuest({ dir: BENCH_GUEST, kernelDir: SID_GUEST_DIR, suite: 'sid' });
  log('guest: preparing the 256 MiB file, the corpus and their images');
  const p = prepareGuestBench();
  const boots: BootResult[] = [];
  for (let r = 0; r < rounds; r++) {
    // Alternate which back-end boots first: TCG's speed drifts between consecutive boots.
    for (const config of r % 2 === 0 ? configs : [...configs].reverse()) {
      log(`guest: round ${r + 1}/${rounds}, ${config}`);
      const b = await bootOnce(config, r, p);
      boots.push(b);
      log(`guest: ${config}: accel=${b.accel}, boot ${fmt(b.bootMs)} ms, QEMU ${fmt(b.wallMs)} ms; ` + PHASES.map((ph) => `${ph.replace('bench-', '')} ${fmt(b.phases[ph].ms)} ms`).join(', '));
    }
  }
  return { boots, markdown: guestMarkdown(boots, configs, rounds) };
}

function guestMarkdown(boots: BootResult[], configs: Config[], rounds: number): string {
  const of = (c: Config) => boots.filter((b) => b.config === c).sort((a, b) => a.round - b.round);
  const has = (c: Config) => configs.includes(c) && of(c).length > 0;
  const med = (c: Config, f: (b: BootResult) => number) => median(of(c).map(f));
  /** per-round ratios a ÷ b of a rate (rounds where both booted), and their median */
  const ratios = (a: Config, b: Config, f: (b: BootResult) => number) => {
    const bs = new Map(of(b).map((x) => [x.round, x]));
    const xs = of(a).filter((x) => bs.has(x.round)).map((x) => f(x) / f(bs.get(x.round)!));
    return { xs, median: median(xs) };
  };
  const cell = (a: Config, b: Config, f: (x: BootResult) => number) => {
    if (!has(a) || !has(b)) return '—';
    const r = ratios(a, b, f);
    return `**${fmt(r.median, 2)}** (${r.xs.map((x) => fmt(x, 2)).join(', ')})`;
  };
  const accels = [...new Set(boots.map((b) => b.accel))].join('/');
  const kernel = fs.existsSync(path.join(BENCH_GUEST, 'kernel-version')) ? fs.readFileSync(path.join(BENCH_GUEST, 'kernel-version'), 'utf8').trim() : '?';
  const head = `${toolVersion(QEMU_SID)}, accel=**${accels}**, guest Linux ${kernel}, 2 vCPUs, ${GUEST_MEM} RAM, vhost-user-fs-pci, 1 request queue, no DAX; ${rounds} rounds`;
  const lines: string[] = [
    `Real guests: ${head}. Rates are medians over rounds; ratios are the median of the per-round ratios (in brackets, round by round; above 1: ours faster). Back-end CPU is utime+stime of the back-end's process tree over the phase, QEMU CPU the same for QEMU (the guest's vCPUs under ${accels}).`,
    '',
    `| workload (accel=${accels}) | unit | ours | Rust virtiofsd | C virtiofsd | **ours ÷ Rust** | ours ÷ C | back-end CPU µs per unit: ours / Rust / C | QEMU CPU µs per unit: ours / Rust / C |`,
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  // CPU per unit over all rounds (sum of CPU / sum of units): clock ticks are 10 ms and a stat
  // walk costs a back-end only a few of them, so per-round CPU figures would be mostly rounding.
  const cpuUs = (c: Config, m: Metric, k: 'backendCpuMs' | 'qemuCpuMs') =>
    (of(c).reduce((a, b) => a + b.phases[m.phase][k], 0) * 1000) / of(c).reduce((a, b) => a + m.units(b.phases[m.phase]), 0);
  const cpuPer = (c: Config, m: Metric, k: 'backendCpuMs' | 'qemuCpuMs') => (has(c) ? fmt(cpuUs(c, m, k)) : '—');
  for (const m of METRICS) {
    const rate = (b: BootResult) => m.rate(b.phases[m.phase]);
    const v = (c: Config) => (has(c) ? num(med(c, rate)) : '—');
    lines.push(`| ${m.label} | ${m.unit} | ${v('ours')} | ${v('rust')} | ${v('c')} | ${cell('ours', 'rust', rate)} | ${cell('ours', 'c', rate)} | ` +
      `${cpuPer('ours', m, 'backendCpuMs')} / ${cpuPer('rust', m, 'backendCpuMs')} / ${cpuPer('c', m, 'backendCpuMs')} per ${m.perUnit} | ` +
      `${cpuPer('ours', m, 'qemuCpuMs')} / ${cpuPer('rust', m, 'qemuCpuMs')} / ${cpuPer('c', m, 'qemuCpuMs')} |`);
  }
  // Back-end CPU ratios: what the guest-capped rates hide.
  lines.push('', `Back-end CPU per unit (sum over all rounds), peer ÷ ours: above 1, ours spends less CPU for the same work (accel=${accels}):`, '',
    '| workload | Rust ÷ ours | C ÷ ours |', '| --- | --- | --- |');
  for (const m of METRICS) {
    const vs = (peer: Config) => (has('ours') && has(peer) ? `**${fmt(cpuUs(peer, m, 'backendCpuMs') / cpuUs('ours', m, 'backendCpuMs'), 2)}**` : '—');
    lines.push(`| ${m.label} | ${vs('rust')} | ${vs('c')} |`);
  }
  if (has('ours-lz4') || has('ours-lz4hc')) {
    lines.push('', `Compressed images, ours (same guest, same rounds, accel=${accels}):`, '',
      '| workload | ours plain | ours LZ4 | ours LZ4HC | unit | **LZ4 ÷ plain** | **LZ4HC ÷ plain** | LZ4 ÷ Rust | LZ4HC ÷ Rust | back-end CPU µs per unit: plain / LZ4 / LZ4HC |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
    for (const m of METRICS) {
      const rate = (b: BootResult) => m.rate(b.phases[m.phase]);
      const v = (c: Config) => (has(c) ? num(med(c, rate)) : '—');
      lines.push(`| ${m.label} | ${v('ours')} | ${v('ours-lz4')} | ${v('ours-lz4hc')} | ${m.unit} | ${cell('ours-lz4', 'ours', rate)} | ${cell('ours-lz4hc', 'ours', rate)} | ` +
        `${cell('ours-lz4', 'rust', rate)} | ${cell('ours-lz4hc', 'rust', rate)} | ${cpuPer('ours', m, 'backendCpuMs')} / ${cpuPer('ours-lz4', m, 'backendCpuMs')} / ${cpuPer('ours-lz4hc', m, 'backendCpuMs')} per ${m.perUnit} |`);
    }
  }
  lines.push('', `Cold start in a real guest (fresh back-end per boot; the guest's first file access after mount, then its first walk reading every file, against the same walk later in the boot; accel=${accels}):`, '',
    '| back-end | time to first byte ms | first walk ms | warm walk ms | first ÷ warm | back-end CPU ms: first walk / warm walk | first walk: Rust ÷ this |',
    '| --- | --- | --- | --- | --- | --- | --- |');
  const walkMs = (ph: Phase) => (b: BootResult) => b.phases[ph].ms;
  for (const c of configs) {
    if (!has(c)) continue;
    const first = med(c, walkMs('bench-walk-read-1'));
    const warm = med(c, walkMs('bench-walk-read-2'));
    const vsRust = has('rust') ? fmt(median(ratios('rust', c, walkMs('bench-walk-read-1')).xs), 2) : '—';
    lines.push(`| ${CONFIG_NAMES[c]} | ${fmt(med(c, (b) => b.phases['bench-ttfb'].firstMs ?? NaN), 1)} | ${fmt(first)} | ${fmt(warm)} | ${fmt(median(of(c).map((b) => b.phases['bench-walk-read-1'].ms / b.phases['bench-walk-read-2'].ms)), 2)} | ` +
      `${fmt(med(c, (b) => b.phases['bench-walk-read-1'].backendCpuMs))} / ${fmt(med(c, (b) => b.phases['bench-walk-read-2'].backendCpuMs))} | ${vsRust} |`);
  }
  const corpus = boots[0]?.phases['bench-walk-read-2'];
  lines.push('',
    `- back-ends: ours = erofs-vfsd over EROFS images (mkfs.erofs 1.9 from sid: plain \`-T0\`, \`-zlz4\`, \`-zlz4hc\`); Rust = ${toolVersion(RUST_VIRTIOFSD)} (\`--sandbox none\`: we run as root; \`--cache auto --xattr\`, default thread pool); C = ${toolVersion(VIRTIOFSD)} (\`-o cache=auto,xattr,sandbox=chroot\`), both over the plain image unpacked by the host kernel`,
    `- data: ${BIG_FILE} (256 MiB, 4 KiB blocks alternating random and text, ~2:1 for LZ4) and ${CORPUS}/ (the shared plain.erofs tree: ${corpus?.files ?? '?'} files, ${corpus?.entries ?? '?'} entries); host page cache warm for every side before each boot (big files dropped and re-read by read-ahead)`,
    '- each phase starts after `sync; echo 3 > /proc/sys/vm/drop_caches` in the guest; reads in 1 MiB read(2) calls, no hashing (guest CPU under TCG would dominate); the walks are gtest `walktime` (readdir + lstat of every entry, `read` also opens and reads every regular file)',
    `- boot order alternates each round (${configs.join(', ')}, then reversed); one fresh back-end per boot`,
  );
  return lines.join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--rounds');
  const rounds = i > 0 ? Number(process.argv[i + 1]) : undefined;
  const j = process.argv.indexOf('--configs');
  const configs = j > 0 ? (process.argv[j + 1]!.split(',') as Config[]) : undefined;
  benchGuest((s) => console.error(`bench: ${s}`), { rounds, configs }).then((r) => {
    console.log(r.markdown);
    fs.mkdirSync(GUEST_BENCH_DIR, { recursive: true });
    fs.writeFileSync(path.join(GUEST_BENCH_DIR, 'last.json'), JSON.stringify({ date: new Date().toISOString(), boots: r.boots }, null, 2));
  }).catch((e) => { console.error(e); process.exit(1); });
}
