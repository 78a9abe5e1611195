// `erofs-vfsd serve` as a process: --print-capabilities, the `listening` log line, a VMM
// handshake over the socket, SIGTERM → exit 0 with the socket removed, disconnect → exit 0
// (without --reconnect), --sample prints a QEMU command line, and a bad image → exit 1.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { native } from './support/native.js';
import { Req, VirtioFeature, bit, decodeConfig, encodeConfig } from 'vhost-user-ts';
import { MiniFrontEnd } from 'vhost-user-ts/testing';
import { REPO_ROOT, SCRATCH_DIR } from './support/paths.js';

const MAIN = path.join(REPO_ROOT, 'dist/src/cli/main.js');
const SAMPLE = path.join(REPO_ROOT, 'samples/sample.erofs');

interface Running {
  proc: ChildProcess;
  stderr: () => string;
  stdout: () => string;
  exit: Promise<number | null>;
}

function start(args: string[]): Running {
  const proc = spawn(process.execPath, [MAIN, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  let out = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  return { proc, stderr: () => err, stdout: () => out, exit };
}

async function waitListening(r: Running): Promise<void> {
  for (let i = 0; i < 1000 && !/"msg":"listening"/.test(r.stderr()); i++) {
    if (r.proc.exitCode !== null) break;
    await new Promise((res) => setTimeout(res, 10));
  }
  assert.match(r.stderr(), /"msg":"listening"/, `daemon did not report listening:\n${r.stderr()}`);
}

test('--print-capabilities prints {"type": "fs"} and exits 0', () => {
  const r = spawnSync(process.execPath, [MAIN, 'serve', '--print-capabilities'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { type: 'fs' });
});

test('serve: handshake over the socket, config space from --tag, SIGTERM exits 0 and removes the socket', async () => {
  fs.mkdirSync(SCRATCH_DIR, { recursive: true });
  const sock = path.join(SCRATCH_DIR, `serve-cli-${process.pid}.sock`);
  const r = start(['--socket-path', sock, '--image', SAMPLE, '--tag', 'mytag', '--num-request-queues', '3']);
  try {
    await waitListening(r);
    const fe = new MiniFrontEnd(native.unixConnect(sock));
    const f = (await fe.call(Req.GET_FEATURES)).readBigUInt64LE(0);
    assert.ok(f & bit(VirtioFeature.VERSION_1));
    assert.equal((await fe.call(Req.GET_QUEUE_NUM)).readBigUInt64LE(0), 4n, 'high-priority queue + 3 request queues');
    const cfg = decodeConfig(await fe.call(Req.GET_CONFIG, encodeConfig({ offset: 0, size: 40, flags: 0, data: Buffer.alloc(40) })));
    assert.equal(cfg.data.subarray(0, 6).toString(), 'mytag\0');
    assert.equal(cfg.data.readUInt32LE(36), 3);
    r.proc.kill('SIGTERM');
    assert.equal(await r.exit, 0, r.stderr());
    assert.equal(fs.existsSync(sock), false, 'socket file removed on SIGTERM');
    fs.closeSync(fe.fd);
  } finally {
    r.proc.kill('SIGKILL');
  }
});

test('serve: the VMM disconnecting ends the daemon with status 0 (no --reconnect)', async () => {
  const sock = path.join(SCRATCH_DIR, `serve-cli-dc-${process.pid}.sock`);
  const r = start(['--socket-path', sock, '--image', `sample=${SAMPLE}`]);
  try {
    await waitListening(r);
    const fe = new MiniFrontEnd(native.unixConnect(sock));
    assert.equal((await fe.call(Req.GET_QUEUE_NUM)).readBigUInt64LE(0), 2n);
    fs.closeSync(fe.fd);
    assert.equal(await r.exit, 0, r.stderr());
    assert.match(r.stderr(), /front-end disconnected/);
  } finally {
    r.proc.kill('SIGKILL');
  }
});

test('serve: a missing image fails with status 1; --sample prints a QEMU command line', async () => {
  const bad = spawnSync(process.execPath, [MAIN, 'serve', '--socket-path', path.join(SCRATCH_DIR, 'never.sock'), '--image', '/nonexistent.erofs'], { encoding: 'utf8' });
  assert.equal(bad.status, 1);
  const r = start(['--sample']);
  try {
    await waitListening(r);
    for (let i = 0; i < 200 && !r.stdout().includes('mount -t virtiofs'); i++) await new Promise((res) => setTimeout(res, 10));
    const out = r.stdout();
    assert.match(out, /qemu-system-x86_64 /);
    assert.match(out, /-chardev socket,id=\w+,path=\/tmp\/erofs-vfsd\.sock/);
    assert.match(out, /-device vhost-user-fs-pci,chardev=\w+,tag=erofs/);
    assert.match(out, /memory-backend-memfd,id=mem,size=\w+,share=on -numa node,memdev=mem/);
    assert.match(out, /mount -t virtiofs erofs \/mnt/);
    r.proc.kill('SIGTERM');
    assert.equal(await r.exit, 0);
  } finally {
    r.proc.kill('SIGKILL');
  }
});
