// Worker thread for ./zstd.ts: decodes zstd pclusters with ./zstd-core.ts. Requests arrive on the
// MessagePort given in workerData; each answer is posted back before the shared flag is set and
// notified, so the caller (blocked in Atomics.wait) finds it with receiveMessageOnPort.
import { workerData, type MessagePort } from 'node:worker_threads';
import { zstdDecompress } from './zstd-core.js';

interface Request {
  src: Uint8Array;
  outLen: number;
}

const { port, flag } = workerData as { port: MessagePort; flag: SharedArrayBuffer };
const state = new Int32Array(flag);

port.on('message', (req: Request) => {
  try {
    const src = Buffer.from(req.src.buffer, req.src.byteOffset, req.src.length);
    const out = zstdDecompress(src, req.outLen, true);
    port.postMessage({ ok: true, out }, [out.buffer as ArrayBuffer]);
  } catch (e) {
    port.postMessage({ ok: false, message: e instanceof Error ? e.message : String(e) });
  }
  Atomics.store(state, 0, 1);
  Atomics.notify(state, 0);
});
