// The numbers and layouts of the vhost-user protocol, pinned against the specification as merged
// in QEMU 11.1: docs/interop/vhost-user.rst of QEMU 11.1.3 (Debian's qemu-system-common installs
// it rendered, /usr/share/doc/qemu-system-common/interop/vhost-user.html). The quoted lines are
// the spec's own text; the tests parse them, so a wrong constant here cannot agree with itself.
import test from 'node:test';
import assert from 'node:assert/strict';
import {
  BackendReq,
  ProtoFeature,
  Req,
  SHMEM_CONFIG_SIZE,
  SHMEM_MAP_READ_ONLY,
  SHMEM_MAP_RW,
  SHMEM_MAP_SIZE,
  SHMEM_MAX_REGIONS,
  decodeShmemConfig,
  decodeShmemMap,
  encodeShmemConfig,
  encodeShmemMap,
} from '../src/index.js';

// "Protocol features" (the spec's code block, verbatim).
const SPEC_PROTOCOL_FEATURES = `
#define VHOST_USER_PROTOCOL_F_MQ                       0
#define VHOST_USER_PROTOCOL_F_LOG_SHMFD                1
#define VHOST_USER_PROTOCOL_F_RARP                     2
#define VHOST_USER_PROTOCOL_F_REPLY_ACK                3
#define VHOST_USER_PROTOCOL_F_MTU                      4
#define VHOST_USER_PROTOCOL_F_BACKEND_REQ              5
#define VHOST_USER_PROTOCOL_F_CROSS_ENDIAN             6
#define VHOST_USER_PROTOCOL_F_CRYPTO_SESSION           7
#define VHOST_USER_PROTOCOL_F_PAGEFAULT                8
#define VHOST_USER_PROTOCOL_F_CONFIG                   9
#define VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD         10
#define VHOST_USER_PROTOCOL_F_HOST_NOTIFIER           11
#define VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD          12
#define VHOST_USER_PROTOCOL_F_RESET_DEVICE            13
#define VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS    14
#define VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS     15
#define VHOST_USER_PROTOCOL_F_STATUS                  16
#define VHOST_USER_PROTOCOL_F_XEN_MMAP                17
#define VHOST_USER_PROTOCOL_F_SHARED_OBJECT           18
#define VHOST_USER_PROTOCOL_F_DEVICE_STATE            19
#define VHOST_USER_PROTOCOL_F_GET_VRING_BASE_INFLIGHT 20
#define VHOST_USER_PROTOCOL_F_GPA_ADDRESSES           21
#define VHOST_USER_PROTOCOL_F_SHMEM_MAP               22
`;

// Each message's heading and ":id:" field ("Front-end message types", "Back-end message types").
const SPEC_FRONTEND_IDS = `
VHOST_USER_GET_FEATURES :id: 1
VHOST_USER_SET_FEATURES :id: 2
VHOST_USER_SET_OWNER :id: 3
VHOST_USER_RESET_OWNER :id: 4
VHOST_USER_SET_MEM_TABLE :id: 5
VHOST_USER_SET_LOG_BASE :id: 6
VHOST_USER_SET_LOG_FD :id: 7
VHOST_USER_SET_VRING_NUM :id: 8
VHOST_USER_SET_VRING_ADDR :id: 9
VHOST_USER_SET_VRING_BASE :id: 10
VHOST_USER_GET_VRING_BASE :id: 11
VHOST_USER_SET_VRING_KICK :id: 12
VHOST_USER_SET_VRING_CALL :id: 13
VHOST_USER_SET_VRING_ERR :id: 14
VHOST_USER_GET_PROTOCOL_FEATURES :id: 15
VHOST_USER_SET_PROTOCOL_FEATURES :id: 16
VHOST_USER_GET_QUEUE_NUM :id: 17
VHOST_USER_SET_VRING_ENABLE :id: 18
VHOST_USER_SEND_RARP :id: 19
VHOST_USER_NET_SET_MTU :id: 20
VHOST_USER_SET_BACKEND_REQ_FD :id: 21
VHOST_USER_IOTLB_MSG :id: 22
VHOST_USER_SET_VRING_ENDIAN :id: 23
VHOST_USER_GET_CONFIG :id: 24
VHOST_USER_SET_CONFIG :id: 25
VHOST_USER_CREATE_CRYPTO_SESSION :id: 26
VHOST_USER_CLOSE_CRYPTO_SESSION :id: 27
VHOST_USER_POSTCOPY_ADVISE :id: 28
VHOST_USER_POSTCOPY_LISTEN :id: 29
VHOST_USER_POSTCOPY_END :id: 30
VHOST_USER_GET_INFLIGHT_FD :id: 31
VHOST_USER_SET_INFLIGHT_FD :id: 32
VHOST_USER_GPU_SET_SOCKET :id: 33
VHOST_USER_RESET_DEVICE :id: 34
VHOST_USER_VRING_KICK :id: 35
VHOST_USER_GET_MAX_MEM_SLOTS :id: 36
VHOST_USER_ADD_MEM_REG :id: 37
VHOST_USER_REM_MEM_REG :id: 38
VHOST_USER_SET_STATUS :id: 39
VHOST_USER_GET_STATUS :id: 40
VHOST_USER_GET_SHARED_OBJECT :id: 41
VHOST_USER_SET_DEVICE_STATE_FD :id: 42
VHOST_USER_CHECK_DEVICE_STATE :id: 43
VHOST_USER_GET_SHMEM_CONFIG :id: 44
`;

const SPEC_BACKEND_IDS = `
VHOST_USER_BACKEND_IOTLB_MSG :id: 1
VHOST_USER_BACKEND_CONFIG_CHANGE_MSG :id: 2
VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG :id: 3
VHOST_USER_BACKEND_VRING_CALL :id: 4
VHOST_USER_BACKEND_VRING_ERR :id: 5
VHOST_USER_BACKEND_SHARED_OBJECT_ADD :id: 6
VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE :id: 7
VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP :id: 8
VHOST_USER_BACKEND_SHMEM_MAP :id: 9
VHOST_USER_BACKEND_SHMEM_UNMAP :id: 10
`;

// "MMAP request" and "VIRTIO Shared Memory Region configuration" (field lists).
const SPEC_MMAP_REQUEST = `
shmid: a 8-bit shared memory region identifier
fd_offset: a 64-bit offset of this area from the start of the supplied file descriptor
shm_offset: a 64-bit offset from the start of the pointed shared memory region
len: a 64-bit size of the memory to map
flags: a 64-bit value:
0: Pages are mapped read-only
1: Pages are mapped read-write
`;
const SPEC_SHMEM_CONFIG = `
num regions: a 32-bit number of regions
padding: 32-bit
mem size: an array of 256 64-bit fields representing the size of each VIRTIO Shared Memory Region. num regions specifies the number of valid regions (non-zero size). The array index corresponds to the shared memory ID (shmid).
`;
// The MMAP request's fields in order: shmid, padding (to the next 64-bit field), fd_offset,
// shm_offset, len, flags (the spec's table; `struct VhostUserMMap` in QEMU).

function ids(text: string, prefix: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.trim().split('\n')) {
    const m = /^(\S+) :id: (\d+)$/.exec(line);
    assert.ok(m, line);
    out.set(m[1]!.slice(prefix.length), Number(m[2]));
  }
  return out;
}

test('protocol feature bits are the spec\'s: SHMEM is bit 22, bits 20 and 21 are other features', () => {
  const spec = new Map<string, number>();
  for (const m of SPEC_PROTOCOL_FEATURES.matchAll(/#define VHOST_USER_PROTOCOL_F_(\w+)\s+(\d+)/g)) spec.set(m[1]!, Number(m[2]));
  assert.equal(spec.size, 23);
  // Our names where they differ from the spec's.
  const ours: Record<string, string> = { MTU: 'NET_MTU', SHMEM_MAP: 'SHMEM' };
  for (const [name, n] of spec) {
    const key = (ours[name] ?? name) as keyof typeof ProtoFeature;
    assert.equal(ProtoFeature[key], n, `VHOST_USER_PROTOCOL_F_${name}`);
  }
  assert.equal(ProtoFeature.SHMEM, 22);
  assert.notEqual(ProtoFeature.SHMEM, spec.get('GET_VRING_BASE_INFLIGHT'));
  assert.notEqual(ProtoFeature.SHMEM, spec.get('GPA_ADDRESSES'));
});

test('front-end and back-end message ids are the spec\'s, GET_SHMEM_CONFIG = 44, SHMEM_MAP/UNMAP = 9/10', () => {
  for (const [name, id] of ids(SPEC_FRONTEND_IDS, 'VHOST_USER_')) {
    assert.equal(Req[name as keyof typeof Req], id, `VHOST_USER_${name}`);
  }
  for (const [name, id] of ids(SPEC_BACKEND_IDS, 'VHOST_USER_BACKEND_')) {
    assert.equal(BackendReq[name as keyof typeof BackendReq], id, `VHOST_USER_BACKEND_${name}`);
  }
  assert.equal(Req.GET_SHMEM_CONFIG, 44);
  assert.equal(BackendReq.SHMEM_MAP, 9);
  assert.equal(BackendReq.SHMEM_UNMAP, 10);
});

test('SHMEM_MAP / SHMEM_UNMAP payload: 40 bytes, u8 shmid, u64 fd_offset, shm_offset, len, flags; flag 0 = read-only, 1 = read-write', () => {
  const widths = [...SPEC_MMAP_REQUEST.matchAll(/^(\w+): a (\d+)-bit/gm)].map((m) => [m[1], Number(m[2])] as const);
  assert.deepEqual(widths, [['shmid', 8], ['fd_offset', 64], ['shm_offset', 64], ['len', 64], ['flags', 64]]);
  // shmid, then padding to the 64-bit alignment of fd_offset, then four u64.
  assert.equal(SHMEM_MAP_SIZE, 8 + 4 * 8);
  const msg = { shmid: 3, fdOffset: 0x1122334455667788n, shmOffset: 0x200000n, len: 0x1000n, flags: SHMEM_MAP_RW };
  const b = encodeShmemMap(msg);
  assert.equal(b.length, SHMEM_MAP_SIZE);
  assert.equal(b.readUInt8(0), 3);
  assert.ok(b.subarray(1, 8).every((x) => x === 0), 'padding is zero');
  assert.equal(b.readBigUInt64LE(8), msg.fdOffset);
  assert.equal(b.readBigUInt64LE(16), msg.shmOffset);
  assert.equal(b.readBigUInt64LE(24), msg.len);
  assert.equal(b.readBigUInt64LE(32), msg.flags);
  assert.deepEqual(decodeShmemMap(b), msg);
  const flagValues = [...SPEC_MMAP_REQUEST.matchAll(/^(\d): Pages are mapped (\S+)$/gm)].map((m) => [BigInt(m[1]!), m[2]] as const);
  assert.deepEqual(flagValues, [[SHMEM_MAP_READ_ONLY, 'read-only'], [SHMEM_MAP_RW, 'read-write']]);
});

test('GET_SHMEM_CONFIG reply: u32 nregions (the non-zero sizes), u32 padding, u64 memory_sizes[256] indexed by shmid', () => {
  const fields = [...SPEC_SHMEM_CONFIG.matchAll(/^([\w ]+): (?:a |an array of (\d+) )?(\d+)-bit/gm)].map((m) => [m[1], Number(m[2] ?? 1), Number(m[3])]);
  assert.deepEqual(fields, [['num regions', 1, 32], ['padding', 1, 32], ['mem size', 256, 64]]);
  assert.equal(SHMEM_MAX_REGIONS, 256);
  assert.equal(SHMEM_CONFIG_SIZE, 4 + 4 + 256 * 8);
  const GiB = 1n << 30n;
  const b = encodeShmemConfig([GiB, 0n, 4096n]);
  assert.equal(b.length, 2056);
  assert.equal(b.readUInt32LE(0), 2, 'two regions with a non-zero size');
  assert.equal(b.readUInt32LE(4), 0);
  assert.equal(b.readBigUInt64LE(8), GiB, 'shmid 0');
  assert.equal(b.readBigUInt64LE(16), 0n, 'shmid 1 unused');
  assert.equal(b.readBigUInt64LE(24), 4096n, 'shmid 2');
  assert.ok(b.subarray(32).every((x) => x === 0));
  assert.deepEqual(decodeShmemConfig(b), [GiB, 0n, 4096n]);
  assert.equal(encodeShmemConfig([]).readUInt32LE(0), 0);
  assert.throws(() => encodeShmemConfig(new Array(257).fill(4096n)), /at most|max/i);
});
