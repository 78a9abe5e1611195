// Entry point of the EROFS reader.
export * from './api.js';
import type { ErofsImageReader, MmapProvider, OpenOptions } from './api.js';
import { ErofsImage } from './image.js';

/**
 * The default mmap provider: the project's native addon, through its one loader. The reader
 * works without it (reads with pread), so a missing addon is not an error here.
 */
const nativeMmap: MmapProvider | undefined = await import('../native/index.js').then(
  (m) => m.native,
  () => undefined,
);

/** Opens an EROFS image (and its extra devices); throws ErofsError on a bad or unsupported image. */
export function openImage(path: string, opts: OpenOptions = {}): ErofsImageReader {
  const mmap = opts.mmap === false ? false : opts.mmap === undefined || opts.mmap === true ? nativeMmap ?? false : opts.mmap;
  return new ErofsImage(path, { ...opts, mmap });
}

export { ErofsImage };
