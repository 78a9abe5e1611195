// A test-VMM guest in its own OS process (share tests): connects to a back-end socket with a DAX
// window, reads every file of a manifest (optionally under a directory prefix) through the
// window, and prints one JSON line {path: {sha256, frames[], tailZero}} — frames are this
// process's /proc/self/pagemap PFNs for its window pages (global numbers, so comparable across
// processes). Keeps its mappings until stdin closes, so the frames stay valid while the parent
// compares.
// argv: socket windowSize dialect manifestName prefix
import { connectDaxGuest, manifest, readAllThroughWindow } from './share-harness.js';
import type { Manifest } from './manifest.js';
import type { DaxDialect } from './test-vmm/index.js';

async function main(): Promise<void> {
  const [socket, windowText, dialect, name, prefix] = process.argv.slice(2);
  const m = manifest(name!);
  const sub: Manifest = {};
  for (const [p, e] of Object.entries(m)) if (p) sub[prefix ? `${prefix}/${p}` : p] = e;
  const g = await connectDaxGuest(socket!, Number(windowText), dialect as DaxDialect);
  const views = await readAllThroughWindow(g, sub);
  const out: Record<string, { sha256: string; frames: string[]; tailZero: boolean; size: number }> = {};
  for (const [p, v] of views) out[prefix ? p.slice(prefix.length + 1) : p] = { sha256: v.sha256, frames: v.frames.map(String), tailZero: v.tailZero, size: v.size };
  process.stdout.write(JSON.stringify({ pid: process.pid, files: out }) + '\n');
  process.stdin.resume();
  process.stdin.on('end', () => { g.close(); process.exit(0); });
}

main().catch((e: unknown) => {
  process.stderr.write(`share-guest-worker: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
