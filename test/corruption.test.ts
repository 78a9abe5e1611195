// Corruption fuzzing of the EROFS reader. From a fixed seed, thousands of mutants of small plain,
// LZ4 and chunk-based images built here, plus a few of ../shared/images (LZMA, DEFLATE, ZSTD,
// fragments), are opened, walked and read completely in child processes. Mutations: truncation;
// random bytes in the superblock (checksum re-sealed so the damage gets through), inodes, xattrs,
// directories, compression and chunk indexes, compressed/plain data. Each operation must succeed
// or throw ErofsError; any other exception, a crash of the worker or a mutant that outlives the
// watchdog fails the test. EROFS_FUZZ_SEED / EROFS_FUZZ_COUNT override the seed / the mutant
// count per image; EROFS_FUZZ_IMAGES (comma-separated paths) fuzzes other images instead.
import test from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { buildImage } from './support/build-images.js';
import { SCRATCH_DIR, SHARED_IMAGES } from './support/paths.js';
import type { Job, WorkerMessage } from './support/corrupt-worker.js';

const SEED = Number(process.env.EROFS_FUZZ_SEED ?? 20261126);
const WORKER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'support/corrupt-worker.js');
/** Shared images (recent mkfs.erofs) that also get a few mutants: other decompressors, fragments. */
const SHARED_FUZZ = ['lzma', 'deflate', 'zstd-all-fragments', 'lz4-fragments-dedupe'];
/**
 * A mutant that takes longer than this is a hang (open + walk + bounded reads of a 1-5 MB image
 * take well under a second on an idle machine; the margin is for heavily loaded CI hosts).
 */
const WATCHDOG_MS = 30_000;
/** The worker's set-up: reading the pristine image completely and locating its regions. */
const SETUP_MS = 180_000;

interface Finding { image: string; i: number; kind: 'bad' | 'hang' | 'crash'; category?: string; desc?: string; detail: string }
interface Result {
  image: string;
  mutants: number;
  outcomes: Record<string, number>;
  perCategory: Record<string, Record<string, number>>;
  codes: Record<string, number>;
  findings: Finding[];
  pristine: string[];
  slowest: { i: number; ms: number; desc: string };
}

/** Runs mutants [0, count) of one image, restarting the worker after a hang or crash. */
function runImage(label: string, image: string, count: number, seed: number): Promise<Result> {
  const res: Result = {
    image: label, mutants: 0, outcomes: {}, perCategory: {}, codes: {}, findings: [], pristine: [],
    slowest: { i: -1, ms: 0, desc: '' },
  };
  return new Promise((resolve) => {
    let next = 0;
    const start = () => {
      if (next >= count) { resolve(res); return; }
      const from = next;
      const child: ChildProcess = fork(WORKER, [], {
        execArgv: ['--max-old-space-size=768'],
        stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      });
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
      let finished = false;
      let timer: NodeJS.Timeout | undefined;
      let setup = true;
      const arm = () => {
        if (timer) clearTimeout(timer);
        const ms = setup ? SETUP_MS : WATCHDOG_MS;
        timer = setTimeout(() => {
          res.findings.push({ image: label, i: next, kind: 'hang', detail: setup ? `worker set-up (pristine image) took over ${ms} ms` : `no result within ${ms} ms` });
          res.outcomes.hang = (res.outcomes.hang ?? 0) + 1;
          res.mutants++;
          next++;
          finished = true;
          child.kill('SIGKILL');
        }, ms);
      };
      child.on('message', (m: WorkerMessage) => {
        if (m.t === 'pristine') {
          if (!m.ok) res.pristine.push(m.detail);
          setup = false;
          arm();
        } else if (m.t === 'end') {
          arm();
          next = m.i + 1;
          res.mutants++;
          res.outcomes[m.outcome] = (res.outcomes[m.outcome] ?? 0) + 1;
          const pc = (res.perCategory[m.category] ??= {});
          pc[m.outcome] = (pc[m.outcome] ?? 0) + 1;
          for (const c of m.codes) res.codes[c] = (res.codes[c] ?? 0) + 1;
          if (m.ms > res.slowest.ms) res.slowest = { i: m.i, ms: Math.round(m.ms), desc: `${m.category}: ${m.desc}` };
          if (m.outcome === 'bad') res.findings.push({ image: label, i: m.i, kind: 'bad', category: m.category, desc: m.desc, detail: m.detail ?? '' });
        } else if (m.t === 'done') {
          finished = true;
          if (timer) clearTimeout(timer);
          child.kill();
        }
      });
      child.on('exit', (code, signal) => {
        if (timer) clearTimeout(timer);
        if (!finished) {
          // Died on its own: the mutant in progress crashed it (or the pristine set-up failed).
          res.findings.push({ image: label, i: next, kind: 'crash', detail: `worker exited (code ${code}, signal ${signal}): ${stderr.trim().split('\n').slice(-6).join(' | ')}` });
          res.outcomes.crash = (res.outcomes.crash ?? 0) + 1;
          res.mutants++;
          next++;
        }
        start();
      });
      const job: Job = { image, seed, from, to: count, tmpDir: path.join(SCRATCH_DIR, 'fuzz') };
      child.send(job);
      arm();
    };
    start();
  });
}

test(`corruption fuzzing: every mutant opens, walks and reads without crash, hang or non-ErofsError (seed ${SEED})`, { timeout: 30 * 60_000 }, async (t) => {
  const perImage = Number(process.env.EROFS_FUZZ_COUNT ?? 0);
  const plan: [string, number][] = [
    ['plain', perImage || 800], ['lz4', perImage || 800], ['lz4hc-bigpcluster', perImage || 300], ['chunked', perImage || 300],
  ];
  // EROFS_FUZZ_IMAGES=a.erofs,b.erofs fuzzes other images instead (exploration, e.g. ../shared/images).
  const images = process.env.EROFS_FUZZ_IMAGES
    ? process.env.EROFS_FUZZ_IMAGES.split(',').map((p) => ({ name: path.basename(p), count: perImage || 200, path: p }))
    : [
      ...plan.map(([name, count]) => ({ name, count, path: buildImage(name, { small: true }).path })),
      // A few mutants of shared images whose formats mkfs.erofs 1.5 cannot produce.
      ...SHARED_FUZZ.map((n) => ({ name: `shared/${n}`, count: perImage || 40, path: path.join(SHARED_IMAGES, `${n}.erofs`) })),
    ];
  const t0 = Date.now();
  // Two workers at a time (two cores); each image has its own seed stream.
  const results: Result[] = [];
  const queue = [...images];
  await Promise.all([0, 1].map(async () => {
    for (let im = queue.shift(); im; im = queue.shift()) {
      results.push(await runImage(im.name, im.path, im.count, SEED + images.indexOf(im) * 1_000_003));
    }
  }));
  const total = results.reduce((n, r) => n + r.mutants, 0);
  for (const r of results) {
    t.diagnostic(`${r.image}: ${r.mutants} mutants, outcomes ${JSON.stringify(r.outcomes)}, error codes ${JSON.stringify(r.codes)}`);
    t.diagnostic(`${r.image}: per category ${JSON.stringify(r.perCategory)}`);
    t.diagnostic(`${r.image}: slowest mutant #${r.slowest.i} ${r.slowest.ms} ms (${r.slowest.desc.slice(0, 120)})`);
  }
  t.diagnostic(`${total} mutants in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  for (const r of results) assert.deepEqual(r.pristine, [], `${r.image}: the pristine image must read without errors`);
  const findings = results.flatMap((r) => r.findings);
  assert.deepEqual(
    findings.slice(0, 10).map((f) => `${f.image} #${f.i} ${f.kind} [${f.category ?? '?'}: ${f.desc ?? ''}] ${f.detail.slice(0, 600)}`),
    [],
    `${findings.length} mutants broke the contract (reproduce: EROFS_FUZZ_SEED=${SEED})`,
  );
  assert.ok(total >= (perImage ? perImage * images.length : 2000), `only ${total} mutants ran`);
  // The mutations must actually reach the reader's error paths, in every image.
  for (const r of results) {
    assert.ok((r.outcomes.error ?? 0) >= r.mutants / 10, `${r.image}: only ${r.outcomes.error ?? 0} of ${r.mutants} mutants were detected as corrupt`);
  }
});
