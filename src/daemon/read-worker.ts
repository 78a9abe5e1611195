// A read-pool worker thread (see read-pool.ts): opens the daemon's images with its own readers
// and answers {id, image, nid, offset, length} with the file's bytes in a fresh ArrayBuffer that
// is transferred (not copied) back to the main thread. Errors come back as ErofsError codes.
import { parentPort, workerData } from 'node:worker_threads';
import { openImage, ErofsError, type ErofsReader } from '../erofs/index.js';
import type { PoolImage, PoolReply, PoolRequest } from './read-pool.js';

const port = parentPort;
if (!port) throw new Error('read-worker.js runs only as a worker thread');
const data = workerData as { images: PoolImage[]; cacheBytes?: number };
const readers: (ErofsReader | null)[] = data.images.map(() => null);

function reader(index: number): ErofsReader {
  const spec = data.images[index];
  if (!spec) throw new ErofsError('EINVAL', `no image #${index} in the read pool`);
  let r = readers[index];
  if (!r) {
    r = openImage(spec.path, { ...(spec.devices?.length ? { devices: spec.devices } : {}), ...(data.cacheBytes !== undefined ? { cacheBytes: data.cacheBytes } : {}) });
    readers[index] = r;
  }
  return r;
}

function closeAll(): void {
  for (let i = 0; i < readers.length; i++) {
    try { readers[i]?.close(); } catch { /* closing anyway */ }
    readers[i] = null;
  }
}

port.on('message', (msg: PoolRequest | { close: true }) => {
  if ('close' in msg) {
    closeAll();
    port.close(); // lets the thread exit on its own
    return;
  }
  try {
    if (!Number.isSafeInteger(msg.length) || msg.length < 0 || !Number.isSafeInteger(msg.offset) || msg.offset < 0) {
      throw new ErofsError('EINVAL', 'bad read range');
    }
    const r = reader(msg.image);
    let ab: ArrayBuffer;
    let n: number;
    if (r.readInto) {
      // Never allocate more than the file holds: short reads at EOF are common (readahead).
      const size = r.getAttr(msg.nid).size;
      const want = Math.max(0, Math.min(msg.length, size - msg.offset));
      ab = new ArrayBuffer(want);
      n = want ? r.readInto(msg.nid, msg.offset, want, new Uint8Array(ab), 0) : 0;
    } else {
      const b = r.read(msg.nid, msg.offset, msg.length);
      ab = new ArrayBuffer(b.length);
      new Uint8Array(ab).set(b);
      n = b.length;
    }
    const reply: PoolReply = { id: msg.id, buffer: ab, length: n };
    port.postMessage(reply, [ab]);
  } catch (err) {
    const code = err instanceof ErofsError ? err.code : 'EIO';
    const reply: PoolReply = { id: msg.id, error: { code, message: err instanceof Error ? err.message : String(err) } };
    port.postMessage(reply);
  }
});
