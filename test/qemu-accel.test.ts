// qemu/accel.sh: the accelerator comes from booting a guest, not from /dev/kvm's permissions.
// Fake QEMU binaries stand in for the three outcomes seen on real hosts (a guest that boots, a
// QEMU that aborts setting MSRs, a guest that hangs); the probe's arguments are checked too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { REPO_ROOT } from './support/paths.js';

const ACCEL = path.join(REPO_ROOT, 'qemu/accel.sh');

function setup(): { dir: string; guest: string; kvm: string; cache: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'accel-'));
  const guest = path.join(dir, 'guest');
  fs.mkdirSync(guest);
  fs.writeFileSync(path.join(guest, 'vmlinux'), 'not really a kernel');
  fs.writeFileSync(path.join(guest, 'kernel-version'), '0.0-test');
  const kvm = path.join(dir, 'kvm');
  fs.writeFileSync(kvm, '');
  return { dir, guest, kvm, cache: path.join(dir, 'cache') };
}

function fakeQemu(dir: string, name: string, body: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, `#!/bin/sh\nif [ "$1" = --version ]; then echo "QEMU emulator version 0.0 ${name}"; exit 0; fi\necho "$@" >>"${dir}/${name}.args"\n${body}\n`);
  fs.chmodSync(p, 0o755);
  return p;
}

function run(qemu: string, s: ReturnType<typeof setup>, env: Record<string, string> = {}) {
  const r = spawnSync(ACCEL, ['--qemu', qemu, '--guest', s.guest], {
    encoding: 'utf8',
    env: { ...process.env, EROFS_VFSD_ACCEL: '', EROFS_VFSD_KVM_DEVICE: s.kvm, EROFS_VFSD_ACCEL_CACHE: s.cache, EROFS_VFSD_KVM_PROBE_SECONDS: '3', ...env },
  });
  return { status: r.status, out: r.stdout.trim(), err: r.stderr.trim() };
}

test('a guest that boots under KVM gives kvm; the verdict is cached', () => {
  const s = setup();
  const q = fakeQemu(s.dir, 'boots', 'echo "[    0.5] Kernel panic - not syncing: VFS: Unable to mount root fs"; exit 0');
  const r = run(q, s);
  assert.equal(r.status, 0, r.err);
  assert.equal(r.out, 'kvm');
  const args = fs.readFileSync(path.join(s.dir, 'boots.args'), 'utf8');
  assert.match(args, /-accel kvm/);
  assert.match(args, new RegExp(`-kernel ${path.join(s.guest, 'vmlinux')}`));
  const again = run(q, s);
  assert.equal(again.out, 'kvm');
  assert.match(again.err, /cached probe/);
  assert.equal(fs.readFileSync(path.join(s.dir, 'boots.args'), 'utf8').trim().split('\n').length, 1, 'the second answer must not boot again');
});

test('a QEMU that aborts under KVM gives tcg, with its error', () => {
  const s = setup();
  const q = fakeQemu(s.dir, 'aborts', "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2; kill -ABRT $$");
  const r = run(q, s);
  assert.equal(r.out, 'tcg');
  assert.match(r.err, /QEMU with KVM failed .*MSR 0x10a/);
});

test('a KVM guest that hangs gives tcg within the probe timeout', () => {
  const s = setup();
  const q = fakeQemu(s.dir, 'hangs', 'echo SeaBIOS; exec sleep 60');
  const t0 = Date.now();
  const r = run(q, s);
  assert.equal(r.out, 'tcg');
  assert.match(r.err, /hung/);
  assert.ok(Date.now() - t0 < 30_000, 'the probe must give up on a hung guest');
});

test('an unusable /dev/kvm gives tcg without starting QEMU; EROFS_VFSD_ACCEL forces and is checked', () => {
  const s = setup();
  const q = fakeQemu(s.dir, 'never', 'exit 0');
  const r = run(q, s, { EROFS_VFSD_KVM_DEVICE: path.join(s.dir, 'absent') });
  assert.equal(r.out, 'tcg');
  assert.equal(fs.existsSync(path.join(s.dir, 'never.args')), false);
  assert.equal(run(q, s, { EROFS_VFSD_ACCEL: 'kvm' }).out, 'kvm');
  assert.equal(run(q, s, { EROFS_VFSD_ACCEL: 'tcg' }).out, 'tcg');
  const bad = run(q, s, { EROFS_VFSD_ACCEL: 'hvf' });
  assert.equal(bad.status, 2);
  assert.match(bad.err, /must be kvm or tcg/);
  assert.equal(fs.existsSync(path.join(s.dir, 'never.args')), false);
});
