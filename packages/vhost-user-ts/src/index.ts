// vhost-user-ts: a vhost-user back-end library (no FUSE, no EROFS).
export * from './protocol.js';
export * from './memory.js';
export * from './virtqueue.js';
export * from './backend.js';
export * from './backend-channel.js';
export * from './server.js';
export * from './logger.js';
