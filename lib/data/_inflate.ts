/**
 * Bounded inflation: a deflate, zlib or gzip stream is decompressed a slice at a time and abandoned
 * the moment its output passes a limit, so that a stream that expands far beyond what its container
 * declared occupies at most one slice's output beyond that limit in memory (see `sliceSize`:
 * 16 × the limit, or about 68 MB, whichever is less). Internal to the toolkit's loaders (`lib/data`,
 * and the tokenizers' gzip vocabularies in `lib/model`).
 *
 * @example
 * ```ts
 * import { zlibSync } from "fflate";
 * const bytes = inflateBounded(zlibSync(new Uint8Array(100)), "zlib", 100, () => {});
 * bytes; // 100
 * ```
 * @module
 */
import { Gunzip, Inflate, Unzlib } from "fflate";

/**
 * Compressed input is fed in slices of 64 KiB (smaller ones cost time: 16 KiB slices inflate
 * about 25 % slower, 4 KiB ones at half the speed), or of limit / 64 bytes for a limit under 4
 * MiB, so that one slice of a maximally compressed stream (1032:1) inflates to at most 16 × the
 * limit, and never more than about 68 MB.
 */
export function sliceSize(limit: number): number {
  return Math.min(64 * 1024, Math.max(1024, Math.ceil(limit / 64)));
}

/** Thrown by {@link inflateBounded} when a stream's output passes its limit. */
export class InflateLimitError extends Error {
  override name = "InflateLimitError";
}

/**
 * Inflates `compressed` (`"raw"` deflate, as in zip entries, `"zlib"`, as in PNG's IDAT, or
 * `"gzip"`, as in a `.gz` file),
 * handing each piece of output and its offset to `sink`. Returns the number of bytes produced,
 * which is at most `limit`: one more byte throws {@link InflateLimitError} at once. A corrupt
 * stream throws fflate's error; a stream that ends early returns what it produced, and one that
 * stops without its final block throws ("unexpected EOF").
 *
 * @example
 * ```ts
 * import { deflateSync } from "fflate";
 * let sum = 0;
 * inflateBounded(deflateSync(new Uint8Array([1, 2, 3])), "raw", 10, (p) => p.forEach((v) => sum += v));
 * sum; // 6
 * ```
 */
export function inflateBounded(
  compressed: Uint8Array,
  format: "raw" | "zlib" | "gzip",
  limit: number,
  sink: (piece: Uint8Array, offset: number) => void,
): number {
  let produced = 0;
  const ondata = (piece: Uint8Array) => {
    if (piece.length === 0) return;
    if (produced + piece.length > limit) {
      throw new InflateLimitError(
        `the stream inflates past ${limit} bytes (at least ${produced + piece.length})`,
      );
    }
    sink(piece, produced);
    produced += piece.length;
  };
  const stream = format === "raw"
    ? new Inflate(ondata)
    : format === "zlib"
    ? new Unzlib(ondata)
    : new Gunzip(ondata);
  if (compressed.length === 0) stream.push(compressed, true);
  const slice = sliceSize(limit);
  for (let p = 0; p < compressed.length; p += slice) {
    const end = Math.min(p + slice, compressed.length);
    stream.push(compressed.subarray(p, end), end === compressed.length);
  }
  return produced;
}
