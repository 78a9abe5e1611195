// A guest's DAX window as the vhost-user back-end channel maps it: the MapChannel a virtio-fs
// connection hands to the share layer, speaking the dialect the operator chose. SHMEM_MAP /
// SHMEM_UNMAP (vhost-user shared memory, QEMU 11.1: the SHMEM protocol feature) address shared
// memory region 0; FS_MAP / FS_UNMAP (Kata-style virtio-fs builds) the virtio-fs cache.
import type { MapPiece } from '../share/backing.js';
import type { DaxProtocol, MapChannel } from '../share/dax.js';
import { FS_MAP_R, SHMEM_MAP_READ_ONLY, type BackendChannel } from 'vhost-user-ts';

function check(status: bigint, what: string): void {
  if (status !== 0n) throw new Error(`${what} failed (status ${status})`);
}

export class BackendMapChannel implements MapChannel {
  /**
   * @param channel the back-end channel requests go through: the device points it at a new one
   *   when the front-end replaces it (what was mapped through the old one stays mapped).
   */
  constructor(public channel: BackendChannel, readonly protocol: DaxProtocol, readonly size: number) {}

  async map(windowOffset: number, pieces: MapPiece[]): Promise<void> {
    let at = windowOffset;
    for (const p of pieces) {
      if (this.protocol === 'shmem') {
        check(await this.channel.shmemMap({ shmid: 0, fdOffset: BigInt(p.fdOffset), shmOffset: BigInt(at), len: BigInt(p.length), flags: SHMEM_MAP_READ_ONLY }, p.fd), 'SHMEM_MAP');
      } else {
        // FS_MAP carries one fd for all its entries: one message per piece.
        check(await this.channel.fsMap([{ fdOffset: BigInt(p.fdOffset), cacheOffset: BigInt(at), len: BigInt(p.length), flags: FS_MAP_R }], p.fd), 'FS_MAP');
      }
      at += p.length;
    }
  }

  async unmap(windowOffset: number, length: number): Promise<void> {
    if (this.protocol === 'shmem') {
      check(await this.channel.shmemUnmap({ shmid: 0, fdOffset: 0n, shmOffset: BigInt(windowOffset), len: BigInt(length), flags: 0n }), 'SHMEM_UNMAP');
    } else {
      check(await this.channel.fsUnmap([{ fdOffset: 0n, cacheOffset: BigInt(windowOffset), len: BigInt(length), flags: 0n }]), 'FS_UNMAP');
    }
  }
}
