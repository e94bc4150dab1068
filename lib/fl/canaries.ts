/**
 * Canary clients for an empirical privacy audit (docs/privacy.md, "Auditing a run"): extra
 * clients whose every release is a fixed random direction of norm C in the space of the released
 * factors, instead of a trained update. At the end of the run the cosine of the global factors'
 * total change with each inserted direction is compared with the cosine of directions that were
 * drawn the same way but never inserted ({@link estimateEpsilon} in `privacy/audit.ts`).
 *
 * A direction lives in the space of all LoRA factors (every adapter's A, then every adapter's B,
 * flattened); a release that carries only some factors (a DEeR phase, FFA-LoRA) carries that part
 * of the direction, rescaled to norm C. Directions are generated from named streams, one at a
 * time, so an audit of a large model never holds them all.
 *
 * @example
 * ```ts
 * import { canaryRelease, canaryDirection } from "./canaries.ts";
 * const dims = { adapters: 1, dOut: 4, rank: 2, dIn: 4 };
 * const global = { A: [new Float32Array(8)], B: [new Float32Array(8)] };
 * const d = canaryDirection(10, "inserted", 0, dims);
 * canaryRelease(global, d, ["B"], 0.5, dims).B[0].length; // 8
 * ```
 * @module
 */
import { cloneFactors, type LoraDims, type LoraFactors } from "./factors.ts";
import type { Factor } from "./factors.ts";
import { streamRng } from "./streams.ts";

/** Length of the flattened factor space: every A (r×dIn), then every B (dOut×r). */
export function factorSpaceSize(dims: LoraDims): number {
  return dims.adapters * dims.rank * (dims.dIn + dims.dOut);
}

/**
 * Canary direction `index` of a set (`inserted` or `held`), a unit vector drawn uniformly on the
 * sphere of the factor space from the run seed's stream.
 */
export function canaryDirection(
  seed: number,
  set: "inserted" | "held",
  index: number,
  dims: LoraDims,
): Float64Array {
  const rng = streamRng(seed, "canary", set, index);
  const v = new Float64Array(factorSpaceSize(dims));
  let sq = 0;
  for (let j = 0; j < v.length; j++) {
    v[j] = rng.normal();
    sq += v[j] * v[j];
  }
  const inv = 1 / Math.sqrt(sq);
  for (let j = 0; j < v.length; j++) v[j] *= inv;
  return v;
}

/** Offsets of adapter i's A and B inside the flattened factor space. */
function offsets(dims: LoraDims, i: number): { a: number; b: number } {
  const aSize = dims.rank * dims.dIn, bSize = dims.dOut * dims.rank;
  return { a: i * aSize, b: dims.adapters * aSize + i * bSize };
}

/**
 * The factors a canary client releases: the global ones plus the part of `direction` that the
 * phase releases, as large as the mechanism's clipping lets one client be — norm `clip` for the
 * whole release (`whole`, the strict calibration), or norm `clip` in every tensor (`per-tensor`,
 * the paper calibration, where one client may move each of its m tensors by C: C·√m in all). The
 * other factors are unchanged.
 */
export function canaryRelease(
  global: LoraFactors,
  direction: Float64Array,
  released: readonly Factor[],
  clip: number,
  dims: LoraDims,
  clipping: "whole" | "per-tensor" = "whole",
): LoraFactors {
  const parts: { which: Factor; i: number; from: number; size: number; sq: number }[] = [];
  for (const which of released) {
    for (let i = 0; i < dims.adapters; i++) {
      const o = offsets(dims, i);
      const size = which === "A" ? dims.rank * dims.dIn : dims.dOut * dims.rank;
      const from = which === "A" ? o.a : o.b;
      let sq = 0;
      for (let j = 0; j < size; j++) sq += direction[from + j] ** 2;
      parts.push({ which, i, from, size, sq });
    }
  }
  const total = parts.reduce((a, p) => a + p.sq, 0);
  const out = cloneFactors(global);
  for (const { which, i, from, size, sq } of parts) {
    const norm = Math.sqrt(clipping === "whole" ? total : sq);
    const scale = norm > 0 ? clip / norm : 0;
    const list = which === "A" ? out.A : out.B;
    const t = Float32Array.from(list[i]);
    for (let j = 0; j < size; j++) t[j] += scale * direction[from + j];
    list[i] = t;
  }
  return out;
}

/** The change from `start` to `end`, flattened into the factor space. */
export function factorChange(start: LoraFactors, end: LoraFactors, dims: LoraDims): Float64Array {
  const v = new Float64Array(factorSpaceSize(dims));
  for (let i = 0; i < dims.adapters; i++) {
    const o = offsets(dims, i);
    end.A[i].forEach((x, j) => (v[o.a + j] = x - start.A[i][j]));
    end.B[i].forEach((x, j) => (v[o.b + j] = x - start.B[i][j]));
  }
  return v;
}
