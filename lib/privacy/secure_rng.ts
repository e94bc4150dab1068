/**
 * A cryptographically secure noise stream for a site's local-DP noise: the keystream of
 * AES-256 in counter mode (node:crypto, synchronous) under a 32-byte key, read 8 bytes at a time
 * as uniforms with 53 bits of resolution, and turned into normals (and every other distribution)
 * by the toolkit's one transform, {@link onUniform} — the Marsaglia polar method
 * {@link createRng}'s normals use. Without the key the stream cannot be predicted or
 * reproduced (AES-256-CTR is a pseudo-random function under the standard assumption on AES);
 * with it, it is reproduced exactly, which is what lets a site release the same numbers when a
 * task is delivered again.
 *
 * What it does not remove: the normals are floating-point numbers, added in floating point.
 * Mironov (2012, "On significance of the least significant bits for differential privacy")
 * shows that the set of floats a textbook floating-point Laplace or Gaussian sampler can output
 * near a value depends on the value, so an adversary who sees the exact noised float can in
 * principle learn about the un-noised one; docs/privacy.md#the-noise-stream-of-a-keyed-site says what this
 * means here.
 *
 * @example
 * ```ts
 * const rng = secureRng(new Uint8Array(32).fill(1));
 * rng.normal(); // N(0, 1), the same first draw for the same key
 * ```
 * @module
 */
import { createCipheriv, createHmac } from "node:crypto";
import { onUniform, type Rng } from "../rng.ts";

/** Keystream bytes fetched per AES call. */
const CHUNK = 1 << 16;

/**
 * The secure stream of `key` (32 bytes: an AES-256 key — a site derives one per release with
 * HMAC-SHA256 from its secret noise key, `lib/federation/site.ts` secretNoise). Its `state()`
 * throws: the state of a secret stream is its key. `fork(label)` keys a new stream with
 * HMAC-SHA256(key, next 32 keystream bytes ‖ label).
 */
export function secureRng(key: Uint8Array): Rng {
  if (key.length !== 32) {
    throw new Error(`secureRng: the key must be 32 bytes (AES-256); got ${key.length}`);
  }
  const cipher = createCipheriv("aes-256-ctr", key, new Uint8Array(16));
  const zeros = new Uint8Array(CHUNK);
  let block: Uint8Array = new Uint8Array(0);
  let view = new DataView(block.buffer);
  let at = 0;
  const bytes = (n: number): number => {
    if (at + n > block.length) {
      const fresh = cipher.update(zeros);
      block = new Uint8Array(fresh.buffer, fresh.byteOffset, fresh.byteLength);
      view = new DataView(block.buffer, block.byteOffset, block.byteLength);
      at = 0;
    }
    const offset = at;
    at += n;
    return offset;
  };
  return onUniform({
    uniform() {
      const o = bytes(8);
      // 27 + 26 bits: a multiple of 2⁻⁵³ in [0, 1).
      const hi = view.getUint32(o, true) >>> 5;
      const lo = view.getUint32(o + 4, true) >>> 6;
      return (hi * 67108864 + lo) / 9007199254740992;
    },
    fork(label) {
      const o = bytes(32);
      const mac = createHmac("sha256", key).update(block.subarray(o, o + 32))
        .update(String(label)).digest();
      return secureRng(new Uint8Array(mac.buffer, mac.byteOffset, mac.byteLength));
    },
    state() {
      throw new Error(
        "secureRng: a secret noise stream does not export its state (it is the key); " +
          "reproduce it from the key instead",
      );
    },
  });
}

/**
 * The secure stream named by `parts` under a secret `key` (any length; 32 random bytes from
 * {@link newNoiseKey}): AES-256-CTR keyed by HMAC-SHA256(key, parts joined by "/"). A run with
 * secret noise draws each release's noise and cohort from such streams, named as the seeded run
 * names its own (`["noise", round, phase, client]`), so a resumed run draws what the uninterrupted
 * one would have — and nobody without the key can.
 *
 * @example
 * ```ts
 * const key = new Uint8Array(32).fill(7);
 * keyedStream(key, "noise", 0, 0, "central").normal(); // the same draw for the same key and name
 * ```
 */
export function keyedStream(key: Uint8Array, ...parts: (string | number)[]): Rng {
  const mac = createHmac("sha256", key).update(parts.join("/")).digest();
  return secureRng(new Uint8Array(mac.buffer, mac.byteOffset, mac.byteLength));
}

/** 32 bytes from the platform's cryptographically secure generator (`crypto.getRandomValues`). */
export function newNoiseKey(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}
