/**
 * Size limits on input files, checked against what a file declares before anything is allocated,
 * so that a small hostile or corrupt file (a "decompression bomb") is refused at once instead of
 * exhausting the machine's memory.
 *
 * | limit           | guards                                                              | default | environment variable     |
 * | --------------- | ------------------------------------------------------------------- | ------- | ------------------------ |
 * | `maxPixels`     | the width × height an image's header declares (PNG, JPEG)           | 50 M    | `DEER_MAX_IMAGE_PIXELS`  |
 * | `maxBytes`      | the total uncompressed bytes of the npz entries read                | 16 GiB  | `DEER_NPZ_MAX_BYTES`     |
 * | `maxRatio`      | uncompressed ÷ compressed bytes of those entries, once past 64 MiB  | 100     | `DEER_NPZ_MAX_RATIO`     |
 *
 * A value passed to a reader's options wins over the environment variable, which wins over the
 * default. Image data sits far inside the ratio limit (the embedded data set's npz compresses
 * 1.6:1), while deflate tops out near 1032:1 on zeros: a ratio above 100 on more than 64 MiB is
 * zeros, or a bomb made of them.
 *
 * @example
 * ```ts
 * imagePixelLimit();          // 50_000_000, or DEER_MAX_IMAGE_PIXELS
 * imagePixelLimit(1_000_000); // 1_000_000
 * ```
 * @module
 */

/** Default largest image, in pixels (width × height declared by the file). */
export const DEFAULT_MAX_IMAGE_PIXELS = 50_000_000;
/** Default largest total of uncompressed npz entry bytes read at once. */
export const DEFAULT_NPZ_MAX_BYTES = 16 * 1024 ** 3;
/** Default largest compression ratio of the npz entries read, once they exceed the floor. */
export const DEFAULT_NPZ_MAX_RATIO = 100;
/** Uncompressed bytes below which the ratio limit does not apply (small arrays such as labels). */
export const NPZ_RATIO_FLOOR_BYTES = 64 * 1024 ** 2;

function envValue(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined; // no --allow-env: the defaults apply
  }
}

/** `given`, else the environment variable `env`, else `fallback`; each checked to be > 0. */
function resolveLimit(
  what: string,
  given: number | undefined,
  env: string,
  fallback: number,
): number {
  if (given !== undefined) {
    if (!(given > 0)) {
      throw new Error(`${what} must be a number > 0 (Infinity for no limit), got ${given}`);
    }
    return given;
  }
  const text = envValue(env);
  if (text === undefined) return fallback;
  const value = Number(text.replace(/_/g, ""));
  if (!(value > 0)) {
    throw new Error(
      `environment variable ${env}=${JSON.stringify(text)} must be a number > 0 ` +
        `(e.g. ${env}=${fallback}, or Infinity for no limit); unset it for the default`,
    );
  }
  return value;
}

/**
 * The image pixel limit in force: `given`, else `DEER_MAX_IMAGE_PIXELS`, else 50 M.
 *
 * @example
 * ```ts
 * imagePixelLimit(4096 * 4096); // 16777216
 * ```
 */
export function imagePixelLimit(given?: number): number {
  return resolveLimit("maxPixels", given, "DEER_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS);
}

/** The npz limits in force (see the module doc). */
export interface NpzLimits {
  maxBytes: number;
  maxRatio: number;
}

/**
 * The npz limits in force: each from `given`, else its environment variable, else its default.
 *
 * @example
 * ```ts
 * npzLimits({ maxBytes: 2 ** 30 }).maxBytes; // 1073741824
 * ```
 */
export function npzLimits(given: Partial<NpzLimits> = {}): NpzLimits {
  return {
    maxBytes: resolveLimit("maxBytes", given.maxBytes, "DEER_NPZ_MAX_BYTES", DEFAULT_NPZ_MAX_BYTES),
    maxRatio: resolveLimit("maxRatio", given.maxRatio, "DEER_NPZ_MAX_RATIO", DEFAULT_NPZ_MAX_RATIO),
  };
}

/**
 * `bytes` for a message: "3.0 GiB", "12.5 MiB", "900 bytes".
 *
 * @example
 * ```ts
 * formatBytes(3 * 1024 ** 3); // "3.0 GiB"
 * ```
 */
export function formatBytes(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
  if (bytes >= 1024 ** 2) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${bytes} bytes`;
}

/**
 * Refuses an image whose header declares more pixels than the limit in force (`maxPixels`, else
 * `DEER_MAX_IMAGE_PIXELS`, else 50 M: `imagePixelLimit`), before anything is allocated for them; the
 * error names the file and says how to raise the limit. Used by the JPEG and PNG decoders.
 *
 * @example
 * ```ts
 * checkPixels("scan.png", 4000, 3000, {}); // 12 MP: under the default limit
 * let message = "";
 * try {
 *   checkPixels("bomb.png", 100_000, 100_000, {});
 * } catch (err) {
 *   message = (err as Error).message; // "bomb.png declares 100000×100000 pixels (10000.0 MP), …"
 * }
 * ```
 */
export function checkPixels(
  name: string,
  width: number,
  height: number,
  options: { maxPixels?: number },
): void {
  const limit = imagePixelLimit(options.maxPixels);
  if (width * height > limit) {
    throw new Error(
      `${name} declares ${width}×${height} pixels (${
        (width * height / 1e6).toFixed(1)
      } MP), more than the limit of ${
        limit / 1e6
      } MP; the file is corrupt or hostile (a decompression bomb) — or, if the image is ` +
        `genuine, raise the limit (option maxPixels, or the environment variable ` +
        `DEER_MAX_IMAGE_PIXELS=<pixels>)`,
    );
  }
}
