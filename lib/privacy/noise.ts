/**
 * Host-side Gaussian noise for a client's release, isotropic or regulated
 * (docs/method.md#the-noise-regulator), on Float32Array tensors and drawn from the run's seeded
 * {@link Rng} — the engine's version of the tfjs API in regulator.ts. No tfjs here.
 *
 * LoRA shapes: B ∈ R^{dOut×r}, A ∈ R^{r×dIn} (dOut = dIn = d for the q/k/v projections, the
 * default everywhere). Regulated noise for a released B (peer A) is `W·A⁺` with
 * `A⁺ = Aᵀ(AAᵀ)⁻¹` and W ∈ R^{dOut×dIn} i.i.d. N(0, s²); for a released A (peer B) it is `B⁺·W`
 * with `B⁺ = (BᵀB)⁻¹Bᵀ`. What reaches ΔW = BA is then `W·P_A` (resp. `P_B·W`), an orthogonal
 * projection of isotropic noise, whatever the peer's scale.
 *
 * Two ways to draw it, equal in distribution:
 * * `"covariance"` (default) — each row of `W·A⁺` is N(0, s²(AAᵀ)⁻¹) and rows are independent
 *   (each column of `B⁺·W` is N(0, s²(BᵀB)⁻¹)), so with `AAᵀ = LLᵀ` a row is `zᵀL⁻¹`,
 *   z ~ N(0, s² I_r): dOut·r normals instead of dOut·dIn (96× fewer at d = 768, r = 8);
 * * `"project"` — draw the full W and multiply, literally as the reference does.
 * The two give different samples for the same seed; the law is identical (tested).
 *
 * {@link peerForB} / {@link peerForA} wrap a peer factor once (Gram matrix, σ_max, lazily its
 * Cholesky factor) for the many clients and tensors of a phase.
 *
 * @example
 * ```ts
 * import { createRng } from "../rng.ts";
 * import { regulatedNoiseB } from "./noise.ts";
 * const A = new Float32Array([1, 0, 0, 0, 1, 0]); // r = 2, d = 3
 * const noise = regulatedNoiseB(createRng(1), { std: 0.1, peerA: A, d: 3, r: 2 }); // 3×2
 * ```
 * @module
 */
import type { Rng } from "../rng.ts";
import {
  cholesky,
  frobenius,
  gramCols,
  gramRows,
  type Matrix,
  pinvCols,
  pinvRows,
  sigmaMax,
} from "./linalg.ts";
import { productNormA, productNormB } from "./clip.ts";

/** How regulated noise is drawn; see the module documentation. */
export type RegulatedDraw = "project" | "covariance";

function checkStd(where: string, std: number): void {
  if (!(std >= 0) || !Number.isFinite(std)) {
    throw new Error(`${where}: std ${std} must be a finite number ≥ 0`);
  }
}

function checkDims(where: string, dims: Record<string, number>): void {
  for (const [name, v] of Object.entries(dims)) {
    if (!(Number.isInteger(v) && v > 0)) {
      throw new Error(`${where}: ${name} ${v} must be a positive integer`);
    }
  }
}

function checkFactor(where: string, field: string, m: Matrix, rows: number, cols: number): void {
  if (m.length !== rows * cols) {
    throw new Error(`${where}: ${field} has ${m.length} values; expected ${rows}×${cols}`);
  }
}

function checkDraw(where: string, draw: string): void {
  if (draw !== "project" && draw !== "covariance") {
    throw new Error(`${where}: draw "${draw}" must be "covariance" or "project"`);
  }
}

/**
 * I.i.d. N(0, std²) noise of `length` entries (the isotropic mechanism,
 * docs/privacy.md#paper-calibration).
 *
 * @example
 * ```ts
 * import { createRng } from "../rng.ts";
 * isotropicNoise(createRng(1), 768 * 8, 0.05); // Float32Array of 6144 N(0, 0.05²) draws
 * ```
 */
export function isotropicNoise(rng: Rng, length: number, std: number): Float32Array {
  checkStd("isotropicNoise", std);
  if (!(Number.isInteger(length) && length >= 0)) {
    throw new Error(`isotropicNoise: length ${length} must be an integer ≥ 0`);
  }
  return rng.fillNormal(new Float32Array(length), std) as Float32Array;
}

/** X (rows×k) · Y (k×cols) into a new Float32Array, accumulated in float64 per row. */
function multiply(x: Matrix, rows: number, k: number, y: Matrix, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  const row = new Float64Array(cols);
  for (let i = 0; i < rows; i++) {
    row.fill(0);
    for (let p = 0; p < k; p++) {
      const v = x[i * k + p];
      if (v === 0) continue;
      for (let j = 0; j < cols; j++) row[j] += v * y[p * cols + j];
    }
    for (let j = 0; j < cols; j++) out[i * cols + j] = row[j];
  }
  return out;
}

/**
 * `W·A⁺` for a given W (dOut×d) and peer A (r×d): the regulated noise for a released B
 * (dOut×r), float64 inside, Float32Array out (docs/method.md#the-noise-regulator). `dOut` defaults
 * to `d`.
 *
 * @example
 * ```ts
 * regulateNoiseForBHost(new Float32Array(9).fill(1), new Float32Array([1, 0, 0]), 3, 1);
 * // [1, 1, 1] (3×1): W·e₁
 * ```
 */
export function regulateNoiseForBHost(
  noise: Matrix,
  peerA: Matrix,
  d: number,
  r: number,
  dOut: number = d,
): Float32Array {
  return peerForB(peerA, r, d, dOut).regulate(noise);
}

/**
 * `B⁺·W` for a given W (d×dIn) and peer B (d×r): the regulated noise for a released A (r×dIn)
 * (docs/method.md#the-noise-regulator). `dIn` defaults to `d`.
 *
 * @example
 * ```ts
 * regulateNoiseForAHost(new Float32Array(9).fill(1), new Float32Array([1, 0, 0]), 3, 1);
 * // [1, 1, 1] (1×3): e₁ᵀ·W
 * ```
 */
export function regulateNoiseForAHost(
  noise: Matrix,
  peerB: Matrix,
  d: number,
  r: number,
  dIn: number = d,
): Float32Array {
  return peerForA(peerB, d, r, dIn).regulate(noise);
}

/** Solves Lᵀ x = z in place for lower-triangular L (n×n). */
function solveUpperTransposed(l: Float64Array, n: number, z: Float64Array): void {
  for (let i = n - 1; i >= 0; i--) {
    let s = z[i];
    for (let k = i + 1; k < n; k++) s -= l[k * n + i] * z[k];
    z[i] = s / l[i * n + i];
  }
}

/** Rows of N(0, std²·(LLᵀ)⁻¹) stacked into rows×r, or as columns into r×rows. */
function covarianceDraw(
  rng: Rng,
  l: Float64Array,
  r: number,
  count: number,
  std: number,
  asColumns: boolean,
): Float32Array {
  const out = new Float32Array(count * r);
  const z = new Float64Array(r);
  for (let i = 0; i < count; i++) {
    rng.fillNormal(z, std);
    solveUpperTransposed(l, r, z); // x = L⁻ᵀz: Cov(x) = std²·L⁻ᵀL⁻¹ = std²·(LLᵀ)⁻¹
    if (asColumns) { for (let j = 0; j < r; j++) out[j * count + i] = z[j]; }
    else for (let j = 0; j < r; j++) out[i * r + j] = z[j];
  }
  return out;
}

/**
 * Regulated noise for a released B (dOut×r) with peer A (r×d): `W·A⁺`, W i.i.d. N(0, std²)
 * (docs/method.md#the-noise-regulator), drawn from `rng` by `draw` ("covariance" by default, see
 * the module docs).
 *
 * @example
 * ```ts
 * import { createRng } from "../rng.ts";
 * const rng = createRng(1);
 * const A = isotropicNoise(rng, 8 * 768, 0.036); // a peer A, r = 8, d = 768
 * const nB = regulatedNoiseB(rng, { std: 0.1, peerA: A, d: 768, r: 8 }); // 768×8
 * ```
 */
export function regulatedNoiseB(
  rng: Rng,
  args: { std: number; peerA: Matrix; d: number; r: number; dOut?: number; draw?: RegulatedDraw },
): Float32Array {
  const { std, peerA, d, r, dOut = d, draw = "covariance" } = args;
  return peerForB(peerA, r, d, dOut).regulatedNoise(rng, std, draw);
}

/**
 * Regulated noise for a released A (r×dIn) with peer B (d×r): `B⁺·W`, W i.i.d. N(0, std²)
 * (docs/method.md#the-noise-regulator), drawn from `rng` by `draw` ("covariance" by default).
 *
 * @example
 * ```ts
 * import { createRng } from "../rng.ts";
 * const rng = createRng(1);
 * const B = isotropicNoise(rng, 768 * 8, 0.01); // a peer B, d = 768, r = 8
 * const nA = regulatedNoiseA(rng, { std: 0.1, peerB: B, d: 768, r: 8 }); // 8×768
 * ```
 */
export function regulatedNoiseA(
  rng: Rng,
  args: { std: number; peerB: Matrix; d: number; r: number; dIn?: number; draw?: RegulatedDraw },
): Float32Array {
  const { std, peerB, d, r, dIn = d, draw = "covariance" } = args;
  return peerForA(peerB, d, r, dIn).regulatedNoise(rng, std, draw);
}

/**
 * A peer factor prepared once for a phase: its r×r Gram matrix, σ_max and (lazily) its
 * Cholesky factor, shared by every client and call that regulates against it.
 */
export interface PeerFactor {
  /** The factor that is released and receives the noise: "B" (peer is A) or "A" (peer is B). */
  readonly released: "A" | "B";
  readonly rank: number;
  readonly dOut: number;
  readonly dIn: number;
  /** The peer itself: A (r×dIn) when B is released, B (dOut×r) when A is released. */
  readonly peer: Matrix;
  /** AAᵀ or BᵀB (r×r, float64). */
  readonly gram: Float64Array;
  /** Largest singular value of the peer (what the paper mechanism's ε depends on). */
  readonly sigmaMax: number;
  /**
   * `W·A⁺` (W dOut×dIn, released B) or `B⁺·W` (released A) for a given W: the regulator itself,
   * float64 inside, Float32Array out. Throws when the peer is rank-deficient.
   */
  regulate(noise: Matrix): Float32Array;
  /** Regulated noise for the released factor (W entries N(0, std²)); shape of that factor. */
  regulatedNoise(rng: Rng, std: number, draw?: RegulatedDraw): Float32Array;
}

function makePeer(
  released: "A" | "B",
  peer: Matrix,
  rank: number,
  dOut: number,
  dIn: number,
): PeerFactor {
  const where = released === "B" ? "peerForB" : "peerForA";
  checkDims(where, { rank, dOut, dIn });
  if (released === "B") checkFactor(where, "peer A", peer, rank, dIn);
  else checkFactor(where, "peer B", peer, dOut, rank);
  const gram = released === "B" ? gramRows(peer, rank, dIn) : gramCols(peer, dOut, rank);
  let chol: Float64Array | undefined;
  let pinv: Float64Array | undefined;
  const regulate = (noise: Matrix): Float32Array => {
    if (released === "B") {
      checkFactor(`${where}().regulate`, "noise (W)", noise, dOut, dIn);
      pinv ??= pinvRows(peer, rank, dIn); // A⁺: dIn×r
      return multiply(noise, dOut, dIn, pinv, rank);
    }
    checkFactor(`${where}().regulate`, "noise (W)", noise, dOut, dIn);
    pinv ??= pinvCols(peer, dOut, rank); // B⁺: r×dOut
    return multiply(pinv, rank, dOut, noise, dIn);
  };
  return {
    released,
    rank,
    dOut,
    dIn,
    peer,
    gram,
    sigmaMax: sigmaMax(gram, rank),
    regulate,
    regulatedNoise(rng, std, draw = "covariance") {
      checkStd(`${where}().regulatedNoise`, std);
      checkDraw(`${where}().regulatedNoise`, draw);
      // "project": draw the full W and regulate it, literally as the reference does.
      if (draw === "project") return regulate(rng.fillNormal(new Float64Array(dOut * dIn), std));
      chol ??= cholesky(gram, rank, released === "B" ? "A Aᵀ of the peer A" : "Bᵀ B of the peer B");
      return released === "B"
        ? covarianceDraw(rng, chol, rank, dOut, std, false)
        : covarianceDraw(rng, chol, rank, dIn, std, true);
    },
  };
}

/**
 * Prepares the peer A (r×dIn) of a released B (dOut×r; `dOut` defaults to `dIn`).
 *
 * @example
 * ```ts
 * import { createRng } from "../rng.ts";
 * const peer = peerForB(new Float32Array([2, 0, 0, 0, 1, 0]), 2, 3); // A: r = 2, dIn = 3
 * peer.sigmaMax;                                  // 2
 * peer.regulatedNoise(createRng(1), 0.1);         // B-shaped noise, 3×2
 * ```
 */
export function peerForB(a: Matrix, rank: number, dIn: number, dOut: number = dIn): PeerFactor {
  return makePeer("B", a, rank, dOut, dIn);
}

/**
 * Prepares the peer B (dOut×r) of a released A (r×dIn; `dIn` defaults to `dOut`).
 *
 * @example
 * ```ts
 * const peer = peerForA(new Float32Array([3, 0, 0, 1, 0, 0]), 3, 2); // B: dOut = 3, r = 2
 * peer.sigmaMax; // 3
 * ```
 */
export function peerForA(b: Matrix, dOut: number, rank: number, dIn: number = dOut): PeerFactor {
  return makePeer("A", b, rank, dOut, dIn);
}

/**
 * `‖Δ·peer‖_F²` in product space for an update of the released factor, with the peer's cached
 * Gram matrix: `‖ΔB·A‖²` = trace(ΔBᵀΔB·AAᵀ) or `‖B·ΔA‖²` = trace(BᵀB·ΔAΔAᵀ), O(d r²) — what
 * strict mode clips (docs/privacy.md#strict-calibration) and what noise of the released factor puts
 * into ΔW.
 *
 * @example
 * ```ts
 * const peer = peerForB(new Float32Array([3, 4]), 1, 2); // A = [3, 4]
 * productSqNorm(new Float32Array([1, 0]), peer);        // ‖e₁·A‖² = 25
 * ```
 */
export function productSqNorm(delta: Matrix, peer: PeerFactor): number {
  const { released, rank: r, dOut, dIn, gram } = peer;
  const shape = released === "B" ? [dOut, r] : [r, dIn];
  if (delta.length !== shape[0] * shape[1]) {
    throw new Error(
      `productSqNorm: delta has ${delta.length} values; the released ${released} is ` +
        `${shape[0]}×${shape[1]}`,
    );
  }
  const g = released === "B" ? gramCols(delta, dOut, r) : gramRows(delta, r, dIn);
  let s = 0;
  for (let i = 0; i < g.length; i++) s += g[i] * gram[i];
  return Math.max(0, s);
}

/**
 * Energy of factor noise that reaches ΔW = BA (for instrumentation): `‖N_B·A‖_F²` for noise
 * N_B (d×r) on B with peer A (phase "B"), `‖B·N_A‖_F²` for noise N_A (r×d) on A with peer B
 * (phase "A"). For regulated noise this is `‖W·P_A‖_F²` (resp. `‖P_B·W‖_F²`).
 *
 * @example
 * ```ts
 * import { createRng } from "../rng.ts";
 * const rng = createRng(1);
 * const A = isotropicNoise(rng, 8 * 768, 0.036);
 * const nB = regulatedNoiseB(rng, { std: 0.1, peerA: A, d: 768, r: 8 });
 * noiseEnergyInUpdate({ phase: "B", noise: nB, peer: A, d: 768, r: 8 }); // ≈ 0.1²·768·8
 * ```
 */
export function noiseEnergyInUpdate(
  args: { phase: "A" | "B"; noise: Matrix; peer: Matrix; d: number; r: number },
): number {
  const { phase, noise, peer, d, r } = args;
  if (phase === "B") return productNormB(noise, peer, d, r) ** 2;
  if (phase === "A") return productNormA(peer, noise, d, r) ** 2;
  throw new Error(`noiseEnergyInUpdate: phase "${phase}" must be "A" or "B"`);
}

/**
 * Expected noise energy reaching ΔW for one released factor with per-entry std `std` (d×d
 * projections): regulated noise gives `std²·d·r` (trace of the rank-r projector, d times)
 * whatever the peer; isotropic noise on one factor gives `std²·d·‖peer‖_F²`
 * (E‖N_B A‖² = s² d tr(AAᵀ), and the same for A with tr(BᵀB)) — which grows with the peer.
 *
 * @example
 * ```ts
 * expectedNoiseEnergyInUpdate({ kind: "regulated", std: 1, d: 768, r: 8 }); // 6144
 * ```
 */
export function expectedNoiseEnergyInUpdate(
  args: { kind: "regulated" | "isotropic"; std: number; d: number; r: number; peer?: Matrix },
): number {
  const { kind, std, d, r, peer } = args;
  checkStd("expectedNoiseEnergyInUpdate", std);
  if (kind === "regulated") return std * std * d * r;
  if (kind !== "isotropic") {
    throw new Error(
      `expectedNoiseEnergyInUpdate: kind "${kind}" must be "regulated" or "isotropic"`,
    );
  }
  if (peer === undefined) {
    throw new Error(`expectedNoiseEnergyInUpdate: kind "isotropic" needs peer (the other factor)`);
  }
  return std * std * d * frobenius(peer) ** 2;
}
