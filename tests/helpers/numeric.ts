/**
 * Numeric comparisons and random inputs shared by the tests.
 * @module
 */
import assert from "node:assert/strict";
import type { Rng } from "../../lib/rng.ts";

/** Largest |a_i − b_i| (the arrays must have one length). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/**
 * Largest |got_i − want_i| relative to the largest |want_i| (the absolute error when `want` is
 * all zeros).
 */
export function relativeError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length);
  let err = 0, scale = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  return scale === 0 ? err : err / scale;
}

/** A rows×cols matrix (row-major) of i.i.d. N(0, std²) entries from `rng`. */
export function randomMatrix(rng: Rng, rows: number, cols: number, std = 1): Float32Array {
  return rng.fillNormal(new Float32Array(rows * cols), std) as Float32Array;
}
