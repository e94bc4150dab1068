/**
 * Aggregation deviation (docs/method.md#the-aggregation-deviation): the gap between the average of
 * the clients' low-rank updates and the product of the averaged factors,
 *
 *   `D = Σ_k p_k·B_k·A_k − (Σ_k p_k·B_k)(Σ_k p_k·A_k)`.
 *
 * FedAvg of LoRA factors makes `D ≠ 0`; DEeR's eliminator shares one factor per phase, so
 * `D = 0` exactly. Computed in float64 as `D = Σ_k p_k (B_k − B̄) A_k` (the `B̄·(Σp_kA_k − Ā)`
 * term is identically zero), which keeps a true zero at rounding level instead of subtracting
 * two large products.
 *
 * @example
 * ```ts
 * // Two clients, d = 2, r = 1: B_k = e_k, A_k = e_kᵀ; the average of products is I/2, the
 * // product of the averages is ones/4, so D = [[1/4, −1/4], [−1/4, 1/4]] and ‖D‖_F = 1/2.
 * const b = [new Float32Array([1, 0]), new Float32Array([0, 1])];
 * deviationNorm(b, b, [0.5, 0.5], { dOut: 2, rank: 1, dIn: 2 }); // 0.5
 * ```
 * @module
 */
import { tf } from "../backend.ts";

/** Shapes of one adapter: B is dOut×rank, A is rank×dIn. */
export interface AdapterShape {
  dOut: number;
  rank: number;
  dIn: number;
}

/**
 * `D` itself for one adapter, row-major dOut×dIn in float64, from host arrays (row-major B_k:
 * dOut×r, A_k: r×dIn). FedEx-LoRA folds it into the frozen weight.
 */
export function deviationMatrix(
  Bs: ArrayLike<number>[],
  As: ArrayLike<number>[],
  weights: readonly number[],
  { dOut, rank, dIn }: AdapterShape,
): Float64Array {
  const K = Bs.length;
  if (As.length !== K || weights.length !== K) {
    throw new Error(
      `aggregationDeviation: ${K} B factors, ${As.length} A factors and ${weights.length} weights; all three counts must agree`,
    );
  }
  Bs.forEach((b, k) => {
    if (b.length !== dOut * rank) {
      throw new Error(`B[${k}] has ${b.length} values; expected ${dOut}×${rank}`);
    }
  });
  As.forEach((a, k) => {
    if (a.length !== rank * dIn) {
      throw new Error(`A[${k}] has ${a.length} values; expected ${rank}×${dIn}`);
    }
  });
  const D = new Float64Array(dOut * dIn);
  const bBar = new Float64Array(dOut * rank);
  for (let k = 0; k < K; k++) {
    const b = Bs[k], p = weights[k];
    for (let i = 0; i < bBar.length; i++) bBar[i] += p * b[i];
  }
  // U[i, k·r + c] = p_k (B_k − B̄)[i, c]; V[k·r + c, :] = A_k[c, :]; D = U·V, row by row.
  const m = K * rank;
  const uRow = new Float64Array(m);
  for (let i = 0; i < dOut; i++) {
    for (let k = 0; k < K; k++) {
      const b = Bs[k], p = weights[k];
      for (let c = 0; c < rank; c++) {
        uRow[k * rank + c] = p * (b[i * rank + c] - bBar[i * rank + c]);
      }
    }
    const row = i * dIn;
    for (let k = 0; k < K; k++) {
      const a = As[k];
      for (let c = 0; c < rank; c++) {
        const u = uRow[k * rank + c];
        if (u === 0) continue;
        const off = c * dIn;
        for (let j = 0; j < dIn; j++) D[row + j] += u * a[off + j];
      }
    }
  }
  return D;
}

/** ‖D‖_F for one adapter from host arrays (see {@link deviationMatrix}). */
export function deviationNorm(
  Bs: ArrayLike<number>[],
  As: ArrayLike<number>[],
  weights: readonly number[],
  shape: AdapterShape,
): number {
  if (Bs.length === 0 && As.length === 0 && weights.length === 0) return 0;
  const D = deviationMatrix(Bs, As, weights, shape);
  let sq = 0;
  for (let i = 0; i < D.length; i++) sq += D[i] * D[i];
  return Math.sqrt(sq);
}

/**
 * `‖D‖_F` for one adapter (docs/architecture.md#public-api): `Bs[k]` is d_out×r, `As[k]` is r×d_in,
 * `weights` the aggregation weights `p_k` (normally summing to 1).
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const A = tf.randomNormal([8, 64]) as tf.Tensor2D;
 * const Bs = [tf.ones([64, 8]), tf.zeros([64, 8])] as tf.Tensor2D[];
 * const dev = await aggregationDeviation(Bs, [A, A], [0.5, 0.5]);
 * // dev === 0: a shared A eliminates the deviation
 * tf.dispose([A, ...Bs]);
 * ```
 */
export async function aggregationDeviation(
  Bs: tf.Tensor2D[],
  As: tf.Tensor2D[],
  weights: number[],
): Promise<number> {
  if (Bs.length === 0) return 0;
  const [dOut, rank] = Bs[0].shape;
  const dIn = As[0]?.shape[1] ?? 0;
  Bs.forEach((b, k) => {
    if (b.shape[0] !== dOut || b.shape[1] !== rank) {
      throw new Error(`aggregationDeviation: Bs[${k}] is [${b.shape}]; expected [${dOut},${rank}]`);
    }
  });
  As.forEach((a, k) => {
    if (a.shape[0] !== rank || a.shape[1] !== dIn) {
      throw new Error(`aggregationDeviation: As[${k}] is [${a.shape}]; expected [${rank},${dIn}]`);
    }
  });
  return deviationNorm(
    await Promise.all(Bs.map((b) => b.data())),
    await Promise.all(As.map((a) => a.data())),
    weights,
    { dOut, rank, dIn },
  );
}
