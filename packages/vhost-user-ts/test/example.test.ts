// The README's example back-end, run as its own process and driven over its socket: the code in
// the README is the example file, and it really serves requests.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sys } from '../src/sys.js';
import { FakeGuest, MiniFrontEnd, TestRing, handshake } from '../src/testing.js';

const PACKAGE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

test('the README shows the example back-end verbatim', () => {
  const readme = fs.readFileSync(path.join(PACKAGE, 'README.md'), 'utf8');
  const example = fs.readFileSync(path.join(PACKAGE, 'examples/uppercase.ts'), 'utf8');
  assert.ok(readme.includes('```ts\n' + example + '```'), 'README.md contains examples/uppercase.ts in a ts block');
});

test('the example back-end serves a front-end: handshake, a ring, requests answered upper-cased', async () => {
  const sock = path.join(os.tmpdir(), `uppercase-${process.pid}.sock`);
  const child = spawn(process.execPath, [path.join(PACKAGE, 'dist/examples/uppercase.js'), sock], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const g = new FakeGuest(1024 * 1024);
  const ring = new TestRing(g, 0);
  try {
    for (let i = 0; !stderr.includes('listening'); i++) {
      assert.ok(i < 500, `the example did not start listening: ${stderr}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const fe = new MiniFrontEnd(sys.unixConnect(sock));
    await handshake(fe, g);
    await ring.setup(fe);
    assert.equal((await ring.request(Buffer.from('hello, vhost-user'), 64)).toString(), 'HELLO, VHOST-USER');
    assert.equal((await ring.request(Buffer.from('a longer reply than its buffer'), 8)).toString(), 'A LONGER', 'cut to the writable room');
    fs.closeSync(fe.fd);
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /front-end disconnected/);
  } finally {
    child.kill('SIGKILL');
    ring.close();
    g.close();
    fs.rmSync(sock, { force: true });
  }
});
