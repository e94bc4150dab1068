/**
 * FedSVD: clients train and release only B, with A frozen (as FFA-LoRA). After aggregating B,
 * the server re-factorises the global update by an SVD, `B̄·A = UΣVᵀ` (rank r), and hands out
 * `A ← Vᵀ` (orthonormal rows) and `B ← UΣ`. The product — the model — is unchanged, the
 * aggregation stays exact (every client shares A), and since A has orthonormal rows, noise on B
 * reaches ΔW = s·B·A with exactly its own norm: never amplified by A. The SVD is
 * post-processing of the DP release, so it costs no privacy.
 *
 * The SVD of the dOut×dIn product is taken in O(d r²): A = L·Q (Gram–Schmidt on its rows, Q
 * orthonormal), then the eigen-decomposition of (B̄L)ᵀ(B̄L) = WΛWᵀ gives B ← B̄·L·W = UΣ and
 * A ← Wᵀ·Q = Vᵀ, singular values in decreasing order.
 * @module
 */
import { fedAvg, phase } from "./defaults.ts";
import type { Method } from "./types.ts";
import type { LoraDims, LoraFactors } from "../factors.ts";
import { orthonormalRows, symmetricEigen } from "../../privacy/linalg.ts";

/**
 * `B·A` re-factorised as `(UΣ)·Vᵀ` for every adapter (see the module documentation).
 *
 * @example
 * ```ts
 * const f = svdRefactor({ A: [new Float32Array([3, 0, 0, 0, 2, 0])], B: [new Float32Array([1, 0, 0, 1, 0, 0])] },
 *   { adapters: 1, rank: 2, dIn: 3, dOut: 3 });
 * f.A[0]; // orthonormal rows spanning the same space
 * ```
 */
export function svdRefactor(f: LoraFactors, dims: LoraDims): LoraFactors {
  const { rank: r, dIn, dOut } = dims;
  const A: Float32Array[] = [], B: Float32Array[] = [];
  for (let i = 0; i < f.A.length; i++) {
    const { l, q } = orthonormalRows(f.A[i], r, dIn);
    // C = B·L (dOut×r).
    const b = f.B[i];
    const c = new Float64Array(dOut * r);
    for (let row = 0; row < dOut; row++) {
      for (let j = 0; j < r; j++) {
        let s = 0;
        for (let k = j; k < r; k++) s += b[row * r + k] * l[k * r + j];
        c[row * r + j] = s;
      }
    }
    const gram = new Float64Array(r * r);
    for (let row = 0; row < dOut; row++) {
      for (let x = 0; x < r; x++) {
        const cx = c[row * r + x];
        if (cx === 0) continue;
        for (let y = 0; y < r; y++) gram[x * r + y] += cx * c[row * r + y];
      }
    }
    const { vectors: w } = symmetricEigen(gram, r);
    const newB = new Float32Array(dOut * r);
    for (let row = 0; row < dOut; row++) {
      for (let j = 0; j < r; j++) {
        let s = 0;
        for (let k = 0; k < r; k++) s += c[row * r + k] * w[k * r + j];
        newB[row * r + j] = s;
      }
    }
    const newA = new Float32Array(r * dIn);
    for (let j = 0; j < r; j++) {
      for (let col = 0; col < dIn; col++) {
        let s = 0;
        for (let k = 0; k < r; k++) s += w[k * r + j] * q[k * dIn + col];
        newA[j * dIn + col] = s;
      }
    }
    A.push(newA);
    B.push(newB);
  }
  return { A, B };
}

/** B released under DP, A re-orthonormalised by an SVD after every round. */
export const fedSvd: Method = {
  ...fedAvg,
  name: "FedSVD",
  label: "FedSVD",
  aggregates: "B only (A shared); then B̄·A = UΣVᵀ re-factorised as B ← UΣ, A ← Vᵀ",
  phases: [phase("B", ["B"], ["B"], false)],
  // The re-factorisation changes B's basis every round: momentum kept from the last round would
  // point in the old coordinates.
  referenceMomentum: "reset",
  afterRound: ({ global, dims }) => svdRefactor(global, dims),
};
