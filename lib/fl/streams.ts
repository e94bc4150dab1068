/**
 * Named random streams. Every random draw of a run (initialisation, data split, batch order,
 * client sampling, DP noise, DyLoRA ranks) comes from a generator derived from the run seed and
 * a label such as `["noise", round, phase, client]`. A resumed run therefore re-creates exactly
 * the streams an uninterrupted run would use, with no generator state to save.
 *
 * @example
 * ```ts
 * const rng = streamRng(10, "batches", 3, 0, 7); // seed 10, round 3, phase 0, client 7
 * ```
 * @module
 */
import { createRng, type Rng } from "../rng.ts";

/** FNV-1a over the UTF-16 code units of `s`, 32 bits. */
function fnv1a(s: string, basis: number): number {
  let h = basis >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** A generator for the stream named by `parts` under run seed `seed`. */
export function streamRng(seed: number, ...parts: (string | number)[]): Rng {
  const key = `${seed}/${parts.join("/")}`;
  // 53-bit seed from two independent 32-bit hashes.
  const hi = fnv1a(key, 0x811c9dc5) & 0x1fffff;
  const lo = fnv1a(key, 0x050c5d1f);
  return createRng(hi * 2 ** 32 + lo);
}
