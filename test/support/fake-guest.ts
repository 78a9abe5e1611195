// A memfd standing in for guest RAM (shared by the vhost-user unit tests), plus dup(2).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { native } from '../../src/native/index.js';
import { GuestMemory, type MemRegionDesc } from '../../src/vhost-user/index.js';

const C = native.constants;

/** A memfd standing in for guest RAM, mapped on "our" side too so tests can write rings. */
export class FakeGuest {
  readonly fd: number;
  readonly ram: Buffer;
  private readonly ab: ArrayBuffer;
  constructor(readonly size: number, readonly gpaBase = 0, readonly uvaBase = 0x7f0000000000) {
    this.fd = native.memfdCreate('fake-guest', C.MFD_CLOEXEC);
    native.ftruncate(this.fd, size);
    this.ab = native.mmap(this.fd, 0, size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED);
    this.ram = Buffer.from(this.ab);
  }
  region(off = 0, size = this.size): MemRegionDesc {
    return { guestPhys: BigInt(this.gpaBase + off), size: BigInt(size), userAddr: BigInt(this.uvaBase + off), mmapOffset: BigInt(off) };
  }
  /** A GuestMemory mapping the whole fake RAM as one region (fd dup'ed: fromTable closes it). */
  memory(regions: MemRegionDesc[] = [this.region()]): GuestMemory {
    return GuestMemory.fromTable(regions, regions.map(() => dupFd(this.fd)));
  }
  uva(gpa: number): bigint {
    return BigInt(this.uvaBase + gpa - this.gpaBase);
  }
  close(): void {
    native.munmap(this.ab);
    fs.closeSync(this.fd);
  }
}

/** dup(2) through SCM_RIGHTS (works for memfds and eventfds alike). */
export function dupFd(fd: number): number {
  const [a, b] = native.socketpair();
  try {
    native.sendmsg(a, Buffer.from('d'), [fd]);
    const r = native.recvmsg(b, new Uint8Array(1));
    assert.equal(r.fds.length, 1);
    return r.fds[0]!;
  } finally {
    fs.closeSync(a);
    fs.closeSync(b);
  }
}

