// Hostile-guest toolkit: hand-built descriptor chains a buggy or malicious guest driver could
// place in a ring. Each case reports what the back-end did with it; a correct back-end answers
// with an error or drops the chain, never writes outside the writable buffers, and keeps serving.
import type { VhostUserFrontend } from './frontend.js';
import { DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, type Virtqueue } from './virtqueue.js';
import { IN_HEADER_SIZE, OUT_HEADER_SIZE, Op, inHeader } from './fuse-abi.js';

export interface RawDesc {
  addr: bigint;
  len: number;
  flags: number;
  /** Index into the same array of RawDesc (mapped to real ring slots) ... */
  next?: number;
  /** ... or a literal ring index (may be out of range on purpose). */
  nextRaw?: number;
}

export type Outcome =
  | { kind: 'dropped' }
  | { kind: 'returned'; usedLen: number; error: number | null; outLen: number | null };

export interface CaseResult {
  name: string;
  outcome: Outcome;
  /** Bytes outside the writable buffers that the back-end changed (should be 0). */
  clobbered: number;
  ok: boolean;
  why: string;
}

const CANARY = 0xa5;

export class HostileGuest {
  private readonly q: Virtqueue;
  private uniq = 0x7000_0000n;

  constructor(private readonly vmm: VhostUserFrontend, queue = 1, private readonly timeoutMs = 1000) {
    const q = vmm.queues[queue];
    if (!q) throw new Error(`no queue ${queue}`);
    this.q = q;
  }

  get queue(): Virtqueue { return this.q; }
  private get mem() { return this.vmm.mem; }

  /** Allocates a guest buffer surrounded by canary bytes; returns its address. */
  buffer(len: number, fill?: Buffer): bigint {
    const pad = 64;
    const base = this.mem.alloc(len + 2 * pad, 64);
    this.mem.view(base, len + 2 * pad).fill(CANARY);
    const gpa = base + BigInt(pad);
    if (fill) fill.copy(this.mem.view(gpa, len));
    else this.mem.view(gpa, len).fill(0);
    this.guards.push({ base, len: len + 2 * pad, inner: gpa, innerLen: len, writable: false });
    return gpa;
  }
  private guards: Array<{ base: bigint; len: number; inner: bigint; innerLen: number; writable: boolean }> = [];

  /** A FUSE request (in-header + args) in a fresh guest buffer. */
  request(opcode: number, nodeid: bigint, args: Buffer = Buffer.alloc(0), lenField?: number): { gpa: bigint; len: number; unique: bigint } {
    const unique = this.uniq++;
    const len = IN_HEADER_SIZE + args.length;
    const b = Buffer.concat([inHeader(lenField ?? len, opcode, unique, nodeid), args]);
    return { gpa: this.buffer(len, b), len, unique };
  }

  getattrArgs(): Buffer { return Buffer.alloc(16); }

  /** Counts changed canary bytes around every buffer this guest allocated. */
  private clobberedBytes(): number {
    let n = 0;
    for (const g of this.guards) {
      const v = this.mem.view(g.base, g.len);
      const innerOff = Number(g.inner - g.base);
      for (let i = 0; i < g.len; i++) {
        if (i >= innerOff && i < innerOff + g.innerLen) continue;
        if (v[i] !== CANARY) n++;
      }
    }
    return n;
  }

  /**
   * Places `descs` in free ring slots (descs[0] is the head), publishes the head and reports
   * what came back. `reply` names the writable buffer holding fuse_out_header, if any.
   */
  async chain(descs: RawDesc[], reply?: bigint, opts: { headOverride?: number; timeoutMs?: number } = {}): Promise<Outcome> {
    const slots = this.q.rawDescs(descs.length);
    descs.forEach((d, i) => {
      const next = d.nextRaw ?? (d.next !== undefined ? slots[d.next]! : 0);
      this.q.writeDesc(slots[i]!, d.addr, d.len, d.flags, next);
    });
    const head = opts.headOverride ?? slots[0]!;
    const used = await this.q.rawSubmit(head, opts.headOverride === undefined ? slots : [], opts.timeoutMs ?? this.timeoutMs);
    if (!used) return { kind: 'dropped' };
    let error: number | null = null;
    let outLen: number | null = null;
    if (reply !== undefined && used.len >= OUT_HEADER_SIZE) {
      const v = this.mem.view(reply, OUT_HEADER_SIZE);
      outLen = v.readUInt32LE(0);
      error = -v.readInt32LE(4);
    }
    return { kind: 'returned', usedLen: used.len, error, outLen };
  }

  /** An indirect table in guest memory holding `descs` (next fields index the table). */
  table(descs: RawDesc[]): { gpa: bigint; len: number } {
    const len = 16 * descs.length;
    const gpa = this.buffer(len);
    descs.forEach((d, i) => this.q.writeTableDesc(gpa, i, d.addr, d.len, d.flags, d.nextRaw ?? d.next ?? 0));
    return { gpa, len };
  }

  /** Runs one case: `ok` when the chain was dropped or answered with an error and nothing outside the buffers changed. */
  async run(name: string, build: () => { descs: RawDesc[]; reply?: bigint; headOverride?: number; expectErrno?: number }): Promise<CaseResult> {
    const before = this.clobberedBytes();
    const c = build();
    // A reply is due when an errno is expected: wait longer for it than for a drop.
    const o: { headOverride?: number; timeoutMs?: number } = c.expectErrno !== undefined ? { timeoutMs: 10 * this.timeoutMs } : {};
    if (c.headOverride !== undefined) o.headOverride = c.headOverride;
    const outcome = await this.chain(c.descs, c.reply, o);
    const clobbered = this.clobberedBytes() - before;
    let ok = clobbered === 0;
    let why = clobbered ? `${clobbered} canary bytes changed` : '';
    if (outcome.kind === 'returned') {
      if (c.expectErrno !== undefined) {
        if (outcome.error !== c.expectErrno) { ok = false; why ||= `expected errno ${c.expectErrno}, got ${outcome.error}`; }
      } else if (outcome.error === 0) {
        ok = false;
        why ||= 'answered with success';
      }
    } else if (c.expectErrno !== undefined) {
      ok = false;
      why ||= `expected an errno ${c.expectErrno} reply, the chain was dropped`;
    }
    return { name, outcome, clobbered, ok, why };
  }

  /**
   * Moves avail.idx `by` entries ahead (more than the queue size: a corrupt ring) and reports
   * how many used entries came back within the timeout. A device must not serve garbage heads
   * in a loop; returning nothing, or marking the ring broken, is fine.
   */
  async availIndexJump(by: number): Promise<{ used: number; anomalies: number }> {
    const before = this.q.completed;
    const anomalies = this.q.anomalies.length;
    this.q.rawSetAvailIdx(this.q.nextAvail + by);
    await new Promise((r) => setTimeout(r, this.timeoutMs));
    this.q.drain();
    return { used: this.q.completed - before, anomalies: this.q.anomalies.length - anomalies };
  }

  /**
   * The standard hostile set: loops, chains longer than the queue, addresses outside
   * guest memory, zero and huge lengths, truncated FUSE headers, unknown opcodes, plus a few
   * more. Cases that leave the ring without free descriptors run last.
   */
  async standardCases(): Promise<CaseResult[]> {
    const mem = this.mem;
    const r0 = mem.regions[0]!;
    const last = mem.regions[mem.regions.length - 1]!;
    const R = (write: boolean, gpa: bigint, len: number): RawDesc => ({ addr: gpa, len, flags: write ? DESC_F_WRITE : 0 });
    const getattr = () => this.request(Op.GETATTR, 1n, this.getattrArgs());
    const reply = (n = OUT_HEADER_SIZE + 104) => this.buffer(n);
    const linked = (ds: RawDesc[]): RawDesc[] => ds.map((d, i) => (i + 1 < ds.length ? { ...d, flags: d.flags | DESC_F_NEXT, next: i + 1 } : d));
    const results: CaseResult[] = [];
    const add = async (name: string, build: Parameters<HostileGuest['run']>[1]) => { results.push(await this.run(name, build)); };

    await add('self loop', () => {
      const rq = getattr();
      return { descs: [{ addr: rq.gpa, len: rq.len, flags: DESC_F_NEXT, next: 0 }] };
    });
    await add('two-descriptor loop', () => {
      const rq = getattr(); const out = reply();
      return { descs: [{ addr: rq.gpa, len: rq.len, flags: DESC_F_NEXT, next: 1 }, { addr: out, len: 120, flags: DESC_F_WRITE | DESC_F_NEXT, next: 0 }], reply: out };
    });
    await add('next index out of range', () => {
      const rq = getattr();
      return { descs: [{ addr: rq.gpa, len: rq.len, flags: DESC_F_NEXT, nextRaw: this.q.size + 7 }] };
    });
    await add('head index out of range in the avail ring', () => ({ descs: [], headOverride: this.q.size + 3 }));
    await add('address below guest memory', () => {
      const out = reply();
      return { descs: linked([R(false, 0x1000n, 56), R(true, out, 120)]), reply: out };
    });
    await add('address in the gap between regions', () => {
      const out = reply();
      return { descs: linked([R(false, r0.guestPhys + r0.size + 0x1000n, 56), R(true, out, 120)]), reply: out };
    });
    await add('address past the end of guest memory', () => {
      const out = reply();
      return { descs: linked([R(false, last.guestPhys + last.size + 0x100000n, 56), R(true, out, 120)]), reply: out };
    });
    await add('buffer straddling the end of a region', () => {
      const out = reply();
      return { descs: linked([R(false, r0.guestPhys + r0.size - 16n, 56), R(true, out, 120)]), reply: out };
    });
    await add('address wrapping around 2^64', () => {
      const out = reply();
      return { descs: linked([R(false, 0xffff_ffff_ffff_fff0n, 56), R(true, out, 120)]), reply: out };
    });
    await add('writable buffer outside guest memory', () => {
      const rq = getattr();
      return { descs: linked([R(false, rq.gpa, rq.len), R(true, last.guestPhys + last.size + 0x2000n, 120)]) };
    });
    await add('huge readable length', () => {
      const rq = getattr(); const out = reply();
      return { descs: linked([R(false, rq.gpa, 0xffff_ffff), R(true, out, 120)]), reply: out };
    });
    await add('huge writable length', () => {
      const rq = getattr();
      const out = reply();
      return { descs: linked([R(false, rq.gpa, rq.len), R(true, out, 0xffff_fff0)]), reply: out };
    });
    await add('zero-length request descriptor only', () => {
      const rq = getattr(); const out = reply();
      return { descs: linked([R(false, rq.gpa, 0), R(true, out, 120)]), reply: out };
    });
    await add('truncated fuse_in_header (20 bytes)', () => {
      const rq = getattr(); const out = reply();
      return { descs: linked([R(false, rq.gpa, 20), R(true, out, 120)]), reply: out };
    });
    await add('fuse_in_header.len larger than the chain', () => {
      const rq = this.request(Op.GETATTR, 1n, this.getattrArgs(), 4096); const out = reply();
      return { descs: linked([R(false, rq.gpa, rq.len), R(true, out, 120)]), reply: out };
    });
    await add('fuse_in_header.len smaller than the header', () => {
      const rq = this.request(Op.GETATTR, 1n, this.getattrArgs(), 8); const out = reply();
      return { descs: linked([R(false, rq.gpa, rq.len), R(true, out, 120)]), reply: out };
    });
    await add('unknown opcode 9999 (ENOSYS)', () => {
      const rq = this.request(9999, 1n, Buffer.alloc(16)); const out = reply();
      return { descs: linked([R(false, rq.gpa, rq.len), R(true, out, 120)]), reply: out, expectErrno: 38 };
    });
    await add('GETATTR with no writable part', () => {
      const rq = getattr();
      return { descs: [R(false, rq.gpa, rq.len)] };
    });
    await add('writable part smaller than the reply (8 bytes)', () => {
      const rq = getattr(); const out = reply(8);
      return { descs: linked([R(false, rq.gpa, rq.len), R(true, out, 8)]) };
    });
    await add('READ of 4 GiB-1 into a 64-byte buffer', () => {
      const a = Buffer.alloc(40); a.writeBigUInt64LE(1n, 0); a.writeUInt32LE(0xffff_ffff, 16);
      const rq = this.request(Op.READ, 1n, a); const out = reply(64);
      return { descs: linked([R(false, rq.gpa, rq.len), R(true, out, 64)]), reply: out };
    });
    await add('readable descriptor after a writable one', () => {
      const rq = getattr(); const out = reply();
      return { descs: linked([R(true, out, 120), R(false, rq.gpa, rq.len)]) };
    });
    await add('request header only in a device-writable descriptor', () => {
      const rq = getattr(); const out = reply();
      return { descs: linked([R(true, rq.gpa, rq.len), R(true, out, 120)]) };
    });
    await add('fuse_in_header.len of 2 GiB', () => {
      const rq = this.request(Op.GETATTR, 1n, this.getattrArgs(), 0x8000_0000); const out = reply();
      return { descs: linked([R(false, rq.gpa, rq.len), R(true, out, 120)]), reply: out };
    });
    await add('READDIR of 4 GiB-1 into a 64-byte buffer', () => {
      const a = Buffer.alloc(40); a.writeBigUInt64LE(0n, 0); a.writeUInt32LE(0xffff_ffff, 16);
      const rq = this.request(Op.READDIR, 1n, a); const out = reply(64);
      return { descs: linked([R(false, rq.gpa, rq.len), R(true, out, 64)]), reply: out };
    });
    await add('LOOKUP name without NUL and 64 KiB long', () => {
      const rq = this.request(Op.LOOKUP, 1n, Buffer.alloc(65536, 0x61)); const out = reply(16 + 128);
      return { descs: linked([R(false, rq.gpa, rq.len), R(true, out, 144)]), reply: out };
    });
      await add('indirect table with a length not a multiple of 16', () => {
        const rq = getattr(); const out = reply();
        const t = this.table(linked([R(false, rq.gpa, rq.len), R(true, out, 120)]));
        return { descs: [{ addr: t.gpa, len: t.len - 5, flags: DESC_F_INDIRECT }], reply: out };
      });
      await add('indirect table of zero length', () => ({ descs: [{ addr: this.buffer(16), len: 0, flags: DESC_F_INDIRECT }] }));
      await add('indirect table outside guest memory', () => ({ descs: [{ addr: last.guestPhys + last.size + 0x10000n, len: 32, flags: DESC_F_INDIRECT }] }));
      await add('nested indirect descriptor', () => {
        const rq = getattr(); const out = reply();
        const inner = this.table(linked([R(false, rq.gpa, rq.len), R(true, out, 120)]));
        const outer = this.table([{ addr: inner.gpa, len: inner.len, flags: DESC_F_INDIRECT }]);
        return { descs: [{ addr: outer.gpa, len: outer.len, flags: DESC_F_INDIRECT }], reply: out };
      });
      await add('loop inside an indirect table', () => {
        const rq = getattr(); const out = reply();
        const t = this.table([{ addr: rq.gpa, len: rq.len, flags: DESC_F_NEXT, next: 1 }, { addr: out, len: 120, flags: DESC_F_WRITE | DESC_F_NEXT, next: 0 }]);
        return { descs: [{ addr: t.gpa, len: t.len, flags: DESC_F_INDIRECT }], reply: out };
      });
      await add('indirect chain longer than the queue', () => {
        const rq = getattr(); const out = reply();
        const n = this.q.size + 8;
        const ds: RawDesc[] = [R(false, rq.gpa, rq.len)];
        for (let i = 1; i < n; i++) ds.push(R(true, out, 1));
        const t = this.table(linked(ds));
        return { descs: [{ addr: t.gpa, len: t.len, flags: DESC_F_INDIRECT }], reply: out };
      });
    // Last: a cycle through every free descriptor of the ring (dropped chains keep theirs).
    await add('cycle through the whole descriptor table', () => {
      const rq = getattr();
      const n = this.q.freeDescriptors;
      const ds: RawDesc[] = [];
      for (let i = 0; i < n; i++) ds.push({ addr: rq.gpa, len: rq.len, flags: DESC_F_NEXT, next: (i + 1) % n });
      return { descs: ds };
    });
    return results;
  }
}
