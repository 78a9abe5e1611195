// Entry point of the EROFS reader.
export * from './api.js';
import type { ErofsReader, OpenOptions } from './api.js';
import { ErofsImage } from './image.js';

/** Opens an EROFS image (and its extra devices); throws ErofsError on a bad or unsupported image. */
export function openImage(path: string, opts?: OpenOptions): ErofsReader {
  return new ErofsImage(path, opts);
}

export { ErofsImage };
