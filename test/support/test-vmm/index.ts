// The test VMM: a vhost-user front-end with memfd guest memory, split virtqueues, kick/call
// eventfds, a back-end channel with an optional DAX window, and a FUSE client on top.
import { VhostUserFrontend, type FrontendOptions } from './frontend.js';
import { FuseClient, type ClientOptions } from './fuse-client.js';

export * from './protocol.js';
export * from './memory.js';
export * from './virtqueue.js';
export * from './frontend.js';
export * from './fuse-abi.js';
export * from './fuse-client.js';
export * from './backends.js';

export interface TestVmm {
  vmm: VhostUserFrontend;
  client: FuseClient;
  close(): void;
}

/** Connects to a back-end, starts the device and performs FUSE_INIT. */
export async function connectTestVmm(socketPath: string, opts: FrontendOptions & { client?: ClientOptions; dax?: FrontendOptions['dax'] } = {}): Promise<TestVmm> {
  const vmm = await VhostUserFrontend.connect(socketPath, opts);
  const client = new FuseClient(vmm, opts.client);
  try {
    await client.init({ dax: opts.dax !== undefined });
  } catch (e) {
    vmm.close();
    throw e;
  }
  return { vmm, client, close: () => vmm.close() };
}
export * from './hostile.js';
