// Read-ahead policy for pcluster input (the kernel leaves it to the page cache's readahead
// around z_erofs_readahead; we read the image ourselves, so we decide):
//  - through read calls: a window of RAW_READAHEAD bytes, read at once when pclusters come
//    back to back (sequential files are stored so), shared by the files of one image;
//  - through a memory mapping (DataSpan): a hint (MADV_WILLNEED) that grows like the kernel's
//    read-ahead window while reads stay sequential, asked again when half of it is consumed.
import { zeio } from './zindex.js';

/** Read-ahead size for sequential pcluster reads through read calls. */
const RAW_READAHEAD = 128 * 1024;

/** Read-ahead hints (DataSpan.willNeed): granule, first and largest window. */
const WILLNEED_GRANULE = 32 * 1024;
const HINT_MIN = 64 * 1024;
const HINT_MAX = 1024 * 1024;

/**
 * Mapped bytes of one device: buf[i] holds data address base + i, and a pcluster [pa, pa+plen)
 * with lo <= pa and pa + plen <= hi reads exactly as readData(pa, plen) would.
 */
export interface DataSpan {
  buf: Buffer;
  base: number;
  lo: number;
  hi: number;
  /**
   * Optional read-ahead hint: the caller is about to read data addresses [addr, addr+len) of
   * the span sequentially (the device batches the cold I/O; a mapping without it faults in
   * page by page). Called about once per WILLNEED_GRANULE of pcluster data, not per pcluster.
   */
  willNeed?(addr: number, len: number): void;
}

/** Data-space reads of one image through a sequential read-ahead window. */
export class DataReadahead {
  private start = -1;
  private buf: Buffer | undefined;
  /** End of the last pcluster read (sequential-access detection). */
  private lastEnd = -1;

  constructor(private readonly readData: (addr: number, len: number) => Buffer) {}

  /** Exactly `plen` bytes at data address `pa`; the buffer may be a view of the window. */
  read(nid: number, pa: number, plen: number): Buffer {
    const w = this.buf;
    if (w && pa >= this.start && pa + plen <= this.start + w.length) {
      this.lastEnd = pa + plen;
      return w.subarray(pa - this.start, pa - this.start + plen);
    }
    const sequential = pa === this.lastEnd;
    this.lastEnd = pa + plen;
    if (sequential && plen < RAW_READAHEAD) {
      let buf: Buffer | undefined;
      try {
        buf = this.readData(pa, RAW_READAHEAD);
      } catch {
        buf = undefined; // near the end of the device: fall back to the exact read
      }
      if (buf && buf.length === RAW_READAHEAD) {
        this.buf = buf;
        this.start = pa;
        return buf.subarray(0, plen);
      }
    }
    const b = this.readData(pa, plen);
    if (b.length !== plen) throw zeio(nid, 'short pcluster read');
    return b;
  }
}

const windows = new WeakMap<object, DataReadahead>();

/** The read-ahead window of an image (one per image context object, made on first use). */
export function dataReadahead(image: object, readData: (addr: number, len: number) => Buffer): DataReadahead {
  let w = windows.get(image);
  if (!w) {
    w = new DataReadahead(readData);
    windows.set(image, w);
  }
  return w;
}

/** One file's read-ahead hints over mapped spans. */
export class SpanHints {
  /** Data addresses whose hint was given, granule-rounded. */
  private askedLo = 0;
  private askedHi = 0;
  private hintLen = 0;

  /** Gives the hint for the pcluster [pa, pend) of `sp` and what follows, when not yet given. */
  ahead(sp: DataSpan, pa: number, pend: number): void {
    if (!sp.willNeed || (pend <= this.askedHi && pa >= this.askedLo)) return;
    const sequential = pa >= this.askedLo && pa <= this.askedHi + WILLNEED_GRANULE;
    this.hintLen = sequential ? Math.min(this.hintLen * 2, HINT_MAX) : HINT_MIN;
    const len = Math.max(pend, Math.min(sp.hi, pa + this.hintLen)) - pa;
    sp.willNeed(pa, len);
    this.askedLo = pa - (pa % WILLNEED_GRANULE);
    this.askedHi = Math.max(pend, pa + Math.floor(len / 2));
  }
}
