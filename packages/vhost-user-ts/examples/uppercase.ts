// A complete vhost-user back-end: one queue; each request's readable bytes come back upper-cased
// in its writable buffers. Run: node dist/examples/uppercase.js /tmp/uppercase.sock
import { VhostUserServer, type Logger, type VhostUserDevice } from 'vhost-user-ts';

function uppercaseDevice(): VhostUserDevice {
  return {
    features: 0n,
    numQueues: 1,
    handleChain(chain) {
      const reply = Buffer.from(Buffer.concat(chain.readable).toString('latin1').toUpperCase(), 'latin1');
      let written = 0;
      for (const buf of chain.writable) {
        if (written === reply.length) break;
        written += reply.copy(buf, 0, written);
      }
      chain.queue.complete(chain, written);
    },
  };
}

const print = (level: string) => (obj: object | string, msg?: string) =>
  console.error(level, typeof obj === 'string' ? obj : `${msg ?? ''} ${JSON.stringify(obj)}`);
const log: Logger = { trace: () => {}, debug: () => {}, info: print('info'), warn: print('warn'), error: print('error') };

const server = new VhostUserServer({ socketPath: process.argv[2] ?? '/tmp/uppercase.sock', createDevice: uppercaseDevice, log });
server.start();
process.on('SIGTERM', () => server.stop('SIGTERM'));
server.done.then((reason) => log.info({ reason }, 'finished'));
