/**
 * Noise keys on disk: a secret of at least 16 random bytes, written once as hex with mode 600 and
 * never rewritten. A federation site keeps its local-DP key this way (`federation join
 * --noise_key`), and a run with secret noise (`train --noise secret`) keeps the key of its
 * central noise and client sampling in its seed folder, so that `--resume` draws what the
 * uninterrupted run would have. Whoever reads the file can regenerate the noise: keep it with the
 * run's other private state, never with what is published.
 *
 * @example
 * ```ts
 * const dir = await Deno.makeTempDir();
 * const key = await readNoiseKey(`${dir}/noise.key`, { create: true });
 * key.length; // 32
 * ```
 * @module
 */
import { newNoiseKey } from "./secure_rng.ts";
import { toHex } from "../hex.ts";

/** A noise key file that holds something else than a key, or is missing where it must exist. */
export class NoiseKeyError extends Error {
  override name = "NoiseKeyError";
}

/** Options of {@link readNoiseKey}. */
export interface NoiseKeyOptions {
  /** Make a new key (mode 600) when the file is absent; otherwise an absent file is an error. */
  create: boolean;
  /** Called with the path after a new key was made. */
  made?: (path: string) => void;
  /** Why the key must exist, for the error when it does not (`create: false`). */
  missing?: string;
}

/**
 * The key in `path` (hex, at least 16 bytes). Throws {@link NoiseKeyError} naming the file when it
 * holds anything else, or when it is absent and `create` is false.
 */
export async function readNoiseKey(path: string, opts: NoiseKeyOptions): Promise<Uint8Array> {
  let text: string;
  try {
    text = (await Deno.readTextFile(path)).trim();
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
    if (!opts.create) {
      throw new NoiseKeyError(`${path} is missing${opts.missing ? `: ${opts.missing}` : ""}`);
    }
    text = toHex(newNoiseKey());
    // createNew: never replaces a key another process made meanwhile.
    await Deno.writeTextFile(path, `${text}\n`, { createNew: true, mode: 0o600 });
    opts.made?.(path);
  }
  if (!/^([0-9a-f]{2}){16,}$/i.test(text)) {
    throw new NoiseKeyError(
      `${path}: expected at least 16 bytes as hex (delete the file to make a new key)`,
    );
  }
  return Uint8Array.from(text.match(/../g)!.map((h) => parseInt(h, 16)));
}
