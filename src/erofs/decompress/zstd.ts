// ZSTD entry point: runs ./zstd-core.ts (fzstd) on a worker thread and waits for it
// synchronously (Atomics.wait) with a time limit.
//
// Why: fzstd 0.1.1 loops forever on some corrupt Huffman tree descriptions (its FSE-coded weight
// loop has no bound when a state reads 0 bits; found by our fuzzing: a valid frame header
// followed by random block bytes). A JavaScript loop cannot be interrupted on its own thread,
// so a hostile image could otherwise hang the daemon. On a timeout the worker is terminated
// (a fresh one starts on the next call) and the read fails with EIO.
// Cost: one copy of the input into the worker and a transfer of the output back, plus a
// thread wake-up, tens of microseconds per pcluster.

import { Worker, MessageChannel, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { ErofsError } from '../api.js';

/** Longest a single pcluster may take to decode before it is declared corrupt. */
export const ZSTD_TIMEOUT_MS = 3000;

/**
 * Inputs that timed out (copies, at most 16, each at most 4 MiB): the reader does not cache
 * failures and a corrupt pcluster is typically read again for every file or range that touches
 * it, so a repeat fails at once instead of costing the time limit again. Compared byte for byte.
 */
const timedOut: { src: Buffer; outLen: number }[] = [];
const TIMED_OUT_MAX = 16;
const TIMED_OUT_MAX_BYTES = 4 * 1024 * 1024;

interface Reply {
  ok: boolean;
  out?: Uint8Array;
  message?: string;
}

let worker: Worker | undefined;
let port: MessagePort | undefined;
let state: Int32Array | undefined;

function start(): { port: MessagePort; state: Int32Array } {
  if (!worker || !port || !state) {
    const channel = new MessageChannel();
    const flag = new SharedArrayBuffer(4);
    worker = new Worker(new URL('./zstd-worker.js', import.meta.url), {
      workerData: { port: channel.port2, flag },
      transferList: [channel.port2],
    });
    worker.unref();
    worker.on('error', () => stop());
    port = channel.port1;
    port.unref();
    state = new Int32Array(flag);
  }
  return { port, state };
}

function stop(): void {
  const w = worker;
  worker = undefined;
  port?.close();
  port = undefined;
  state = undefined;
  if (w) void w.terminate();
}

export function zstdDecompress(src: Buffer, outLen: number, _partial: boolean): Buffer {
  for (const t of timedOut) {
    if (t.outLen === outLen && t.src.length === src.length && t.src.equals(src)) {
      throw new ErofsError('EIO', `zstd: this pcluster already failed to decode within ${ZSTD_TIMEOUT_MS} ms`);
    }
  }
  const { port: p, state: s } = start();
  Atomics.store(s, 0, 0);
  // Send a copy of exactly these bytes: cloning `src` itself would copy its whole backing
  // ArrayBuffer (for the reader, possibly the mmap of the entire image).
  const copy = new Uint8Array(src.length);
  copy.set(src);
  p.postMessage({ src: copy, outLen }, [copy.buffer]);
  // Wait until the flag is set, not merely until a wake-up: the worker sets the flag and then
  // notifies, so the notify of the PREVIOUS answer can arrive after this request was posted
  // (when the last wait saw the flag already set and returned without sleeping). Taking that
  // late wake-up as this answer read an empty port ("gave no answer") under load.
  const deadline = Date.now() + ZSTD_TIMEOUT_MS;
  for (;;) {
    if (Atomics.load(s, 0) !== 0) break;
    const left = deadline - Date.now();
    if (left > 0) {
      Atomics.wait(s, 0, 0, left);
      continue;
    }
    stop();
    if (src.length <= TIMED_OUT_MAX_BYTES) {
      if (timedOut.length >= TIMED_OUT_MAX) timedOut.shift();
      timedOut.push({ src: Buffer.from(src), outLen });
    }
    throw new ErofsError('EIO', `zstd: decoding did not finish within ${ZSTD_TIMEOUT_MS} ms (corrupt data)`);
  }
  const msg = receiveMessageOnPort(p);
  if (!msg) {
    stop();
    throw new ErofsError('EIO', 'zstd: decoder worker gave no answer');
  }
  const reply = msg.message as Reply;
  if (!reply.ok || !reply.out) throw new ErofsError('EIO', reply.message ?? 'zstd: decoding failed');
  const out = reply.out;
  if (out.length !== outLen) throw new ErofsError('EIO', `zstd: decoder returned ${out.length} of ${outLen} bytes`);
  return Buffer.from(out.buffer, out.byteOffset, out.length);
}
