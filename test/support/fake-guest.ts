// A memfd standing in for guest RAM (shared by the vhost-user unit tests), plus dup(2).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { native } from '../../src/native/index.js';
import { FLAG_NEED_REPLY, FLAG_REPLY, GuestMemory, MessageFramer, VERSION, encodeMessage, type MemRegionDesc } from '../../src/vhost-user/index.js';

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


/** Minimal front-end for the state-machine test. */
export class MiniFrontEnd {
  readonly fd: number;
  private buf = Buffer.alloc(4096);
  constructor(fd: number) {
    this.fd = fd;
  }
  send(req: number, payload?: Buffer, fds: number[] = [], flags = VERSION): void {
    native.sendmsg(this.fd, encodeMessage(req, flags, payload), fds);
  }
  async reply(req: number): Promise<Buffer> {
    for (let i = 0; i < 400; i++) {
      const r = native.recvmsg(this.fd, this.buf);
      if (r.bytes > 0) {
        const f = new MessageFramer();
        f.push(this.buf.subarray(0, r.bytes), r.fds);
        const m = f.next();
        assert.ok(m, 'a whole reply');
        assert.equal(m.request, req);
        assert.ok(m.flags & FLAG_REPLY);
        return m.payload;
      }
      assert.notEqual(r.bytes, 0, 'back-end closed the connection');
      await new Promise((r) => setTimeout(r, 5));
    }
    throw new Error(`no reply to ${req}`);
  }
  async call(req: number, payload?: Buffer, fds: number[] = []): Promise<Buffer> {
    this.send(req, payload, fds);
    return this.reply(req);
  }
  async ack(req: number, payload?: Buffer, fds: number[] = []): Promise<bigint> {
    this.send(req, payload, fds, VERSION | FLAG_NEED_REPLY);
    return (await this.reply(req)).readBigUInt64LE(0);
  }
}

