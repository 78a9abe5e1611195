// Removes compiled files whose TypeScript source is gone (a moved or deleted test would otherwise
// keep running from dist/, since `tsc -b` never deletes outputs). Run after every build.
import fs from 'node:fs';
import path from 'node:path';

const top = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const projects = [top, ...fs.readdirSync(path.join(top, 'packages')).map((p) => path.join(top, 'packages', p))];
const outputs = /\.(js|js\.map|d\.ts|d\.ts\.map)$/;
let pruned = 0;
for (const project of projects) {
  const dist = path.join(project, 'dist');
  if (!fs.existsSync(dist)) continue;
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) { walk(p); continue; }
      if (!outputs.test(e.name)) continue;
      const rel = path.relative(dist, p).replace(outputs, '');
      if (!fs.existsSync(path.join(project, `${rel}.ts`))) { fs.rmSync(p); pruned++; }
    }
  };
  walk(dist);
}
if (pruned) console.error(`prune-dist: removed ${pruned} stale compiled file(s)`);
