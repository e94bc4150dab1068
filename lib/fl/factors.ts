/**
 * LoRA factors on the host. The simulation keeps every client's and the server's adapters as
 * plain Float32Arrays (row-major), so a client costs only its numbers, not live tensors; they
 * are uploaded to tfjs only for local training and evaluation.
 *
 * Adapter `i` has `A[i]` (r×d_in, row-major) and `B[i]` (d_out×r, row-major).
 *
 * @example
 * ```ts
 * const f = { A: [new Float32Array(8 * 64)], B: [new Float32Array(64 * 8)] };
 * const g = cloneFactors(f);
 * ```
 * @module
 */

/** A LoRA factor: `A` is r×d (Kaiming-uniform init), `B` is d×r (zero init). */
export type Factor = "A" | "B";

/** One set of LoRA factors for every adapter of the backbone. */
export interface LoraFactors {
  A: Float32Array[];
  B: Float32Array[];
}

/** Shapes of the adapters (all adapters share them: q, k, v of a square-attention ViT). */
export interface LoraDims {
  adapters: number;
  rank: number;
  dIn: number;
  dOut: number;
}

/** The rank of `f` (from its first A, r×dIn): the backbone's, or a client's own (FLoRA). */
export function factorRank(f: LoraFactors, dims: Pick<LoraDims, "dIn" | "rank">): number {
  return f.A.length > 0 ? f.A[0].length / dims.dIn : dims.rank;
}

/** A deep copy of `f`. */
export function cloneFactors(f: LoraFactors): LoraFactors {
  return { A: f.A.map((a) => a.slice()), B: f.B.map((b) => b.slice()) };
}

/** The tensors of one factor kind. */
export function factorList(f: LoraFactors, which: Factor): Float32Array[] {
  return which === "A" ? f.A : f.B;
}

/** Shape `[rows, cols]` of a factor. */
export function factorShape(dims: LoraDims, which: Factor): [number, number] {
  return which === "A" ? [dims.rank, dims.dIn] : [dims.dOut, dims.rank];
}

/** Checks that `f` has the adapter count and shapes of `dims`; throws naming what differs. */
export function checkFactors(f: LoraFactors, dims: LoraDims, where: string): void {
  for (const which of ["A", "B"] as const) {
    const list = factorList(f, which);
    if (list.length !== dims.adapters) {
      throw new Error(`${where}: ${list.length} ${which} factors; expected ${dims.adapters}`);
    }
    const [r, c] = factorShape(dims, which);
    list.forEach((t, i) => {
      if (t.length !== r * c) {
        throw new Error(`${where}: ${which}[${i}] has ${t.length} values; expected ${r}×${c}`);
      }
    });
  }
}

/** Whether every value of the factors is finite. */
export function allFinite(f: LoraFactors): boolean {
  for (const list of [f.A, f.B]) {
    for (const t of list) {
      for (let i = 0; i < t.length; i++) if (!Number.isFinite(t[i])) return false;
    }
  }
  return true;
}

/** Squared Frobenius norm, accumulated in float64. */
export function sqNorm(t: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < t.length; i++) s += t[i] * t[i];
  return s;
}

/**
 * `out += s·B·A` (dOut×dIn, float64) for one adapter's B (dOut×r) and A (r×dIn), the rank read
 * from A — any rank, so a client's own (FLoRA) too.
 *
 * @example
 * ```ts
 * const out = new Float64Array(4);
 * addScaledProduct(out, new Float32Array([1, 2]), new Float32Array([3, 4]), 0.5, { dOut: 2, dIn: 2 });
 * out; // [1.5, 2, 3, 4]
 * ```
 */
export function addScaledProduct(
  out: Float64Array,
  B: Float32Array,
  A: Float32Array,
  s: number,
  { dOut, dIn }: Pick<LoraDims, "dOut" | "dIn">,
): void {
  const r = A.length / dIn;
  for (let row = 0; row < dOut; row++) {
    for (let c = 0; c < r; c++) {
      const v = s * B[row * r + c];
      if (v === 0) continue;
      for (let col = 0; col < dIn; col++) out[row * dIn + col] += v * A[c * dIn + col];
    }
  }
}
