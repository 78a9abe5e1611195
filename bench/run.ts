// `npm run bench`: every benchmark, one run, figures as ratios against the peer measured in the
// same run. Prints Markdown tables (pasted into docs/benchmarks.md) and writes the raw figures
// to .cache/bench/results.json. `npm run bench -- reader` runs one section (reader, decompress,
// vhost, guest, share).

import * as fs from 'node:fs';
import * as path from 'node:path';
import { benchReader, BENCH_DIR } from './reader.js';
import { benchDecompress, decompressMarkdown } from './decompress.js';
import { benchVhost } from './vhost.js';
import { benchShare } from './share.js';
import { benchGuest } from './guest.js';

type Section = { name: string; run: (log: (s: string) => void) => Promise<{ markdown: string; raw: unknown }> };

const fmt = (x: number, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a');

function table(header: string[], rows: (string | number)[][]): string {
  return [
    `| ${header.join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ].join('\n');
}

const sections: Section[] = [
  {
    name: 'reader',
    async run(log) {
      const { rows, notes } = await benchReader(log);
      const md = table(
        ['workload', 'image', 'MB', 'kernel MB/s', 'in-process MB/s', 'ratio', 'in-process, decoded data cached', 'ratio', 'erofs-vfsd mount MB/s', 'ratio'],
        rows.map((r) => [
          r.workload, r.image, fmt(r.bytes / 1e6, 1), fmt(r.kernelMBps, 0), fmt(r.inProcessMBps, 0),
          fmt(r.inProcessRatio), fmt(r.inProcessCachedMBps, 0), fmt(r.inProcessCachedRatio),
          fmt(r.mountMBps, 0), fmt(r.mountRatio),
        ]),
      );
      return { markdown: `${md}\n\n${notes.map((n) => `- ${n}`).join('\n')}`, raw: rows };
    },
  },
  {
    name: 'decompress',
    async run(log) {
      log('decompress: every algorithm');
      const rows = benchDecompress();
      return { markdown: decompressMarkdown(rows), raw: rows.map(({ ...r }) => r) };
    },
  },
  {
    name: 'vhost',
    async run(log) {
      const { rows, coldStart, notes, markdown, versions, crossQueue } = await benchVhost(log);
      return { markdown: `${markdown}\n\n${notes.map((n) => `- ${n}`).join('\n')}`, raw: { rows, coldStart, versions, crossQueue } };
    },
  },
  {
    name: 'guest',
    async run(log) {
      const { boots, markdown } = await benchGuest(log);
      return { markdown, raw: boots };
    },
  },
  {
    name: 'share',
    async run(log) {
      const { rows, latency, markdown } = await benchShare(log);
      return { markdown, raw: { rows, latency } };
    },
  },
];

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.error('bench: needs root (loop mounts, FUSE mounts, drop_caches)');
    process.exit(1);
  }
  const wanted = process.argv.slice(2);
  const results: Record<string, unknown> = {};
  for (const s of sections) {
    if (wanted.length && !wanted.includes(s.name)) continue;
    const { markdown, raw } = await s.run((line) => console.error(`bench: ${line}`));
    results[s.name] = raw;
    console.log(`\n## ${s.name}\n\n${markdown}\n`);
  }
  fs.mkdirSync(BENCH_DIR, { recursive: true });
  fs.writeFileSync(path.join(BENCH_DIR, 'results.json'), JSON.stringify({ date: new Date().toISOString(), results }, null, 2));
}

main().catch((err) => {
  console.error(`bench: ${(err as Error).stack ?? err}`);
  process.exit(1);
});
