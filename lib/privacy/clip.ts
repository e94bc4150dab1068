/**
 * Clipping of a client's update before noise is added (docs/privacy.md#the-calibrations). The
 * engine keeps client tensors on the host as Float32Array; norms are accumulated in float64.
 *
 * * {@link clipPerTensor} — the reference ("paper" calibration): every released tensor is scaled
 *   by `min(1, C/‖Δ‖_F)` on its own, so one client's whole release can have norm up to `C·√m`.
 * * {@link clipRelease} — strict mode: all tensors of one aggregation are scaled together so that
 *   the concatenated update has norm ≤ C.
 * * {@link clipProductSpace} — strict mode for regulated (DEeR) releases: scale the released
 *   factor updates together so that what reaches ΔW is bounded,
 *   `Σ_t ‖ΔB_t·A_t‖_F² ≤ C²` (phase B) or `Σ_t ‖B_t·ΔA_t‖_F² ≤ C²` (phase A).
 * * {@link productNormB} / {@link productNormA} — `‖ΔB·A‖_F` and `‖B·ΔA‖_F` in O(d r²) without
 *   forming the d×d product.
 *
 * The scale is `min(1, C/norm)` as in the reference (`nabala *= min(1, C/‖nabala‖)`), with a zero
 * update left unchanged.
 *
 * @example
 * ```ts
 * import { clipPerTensor, clipRelease } from "./clip.ts";
 * const update = [new Float32Array([3, 4]), new Float32Array([0, 1])];
 * clipPerTensor(update, 1).norms;  // [5, 1]
 * clipRelease(update, 1).norm;     // √26
 * ```
 * @module
 */
import { gramCols, gramRows, type Matrix } from "./linalg.ts";

/** Options shared by the clipping functions. */
export interface ClipOptions {
  /** Scale the given arrays in place instead of returning scaled copies. Default false. */
  inPlace?: boolean;
}

function checkClip(where: string, clip: number): void {
  if (!(clip > 0) || !Number.isFinite(clip)) {
    throw new Error(`${where}: clip ${clip} must be a finite number > 0`);
  }
}

/**
 * The clip factor `min(1, C/norm)` (docs/privacy.md#paper-calibration), 1 for a zero norm (nothing
 * to clip).
 *
 * @example
 * ```ts
 * clipScale(5, 1); // 0.2
 * clipScale(0, 1); // 1
 * ```
 */
export function clipScale(norm: number, clip: number): number {
  return norm > clip ? clip / norm : 1;
}

function sumSquares(x: Matrix): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return s;
}

function scaled(x: Float32Array, s: number, inPlace: boolean): Float32Array {
  const out = inPlace ? x : new Float32Array(x.length);
  if (s === 1) {
    if (!inPlace) out.set(x);
    return out;
  }
  for (let i = 0; i < x.length; i++) out[i] = x[i] * s;
  return out;
}

/**
 * Per-tensor clipping, as in the reference (docs/privacy.md#paper-calibration):
 * `Δ_t ← Δ_t · min(1, C/‖Δ_t‖_F)` for every tensor t separately. Returns the clipped tensors,
 * each tensor's pre-clip norm and scale. One client's whole release then has norm ≤ `C·√m` for m
 * tensors — the sensitivity the accountant must use (see `paperReleaseRecord` in ledger.ts).
 *
 * @example
 * ```ts
 * const { tensors, norms, scales } = clipPerTensor([new Float32Array([3, 4])], 1);
 * // tensors[0] ≈ [0.6, 0.8], norms = [5], scales = [0.2]
 * ```
 */
export function clipPerTensor(
  tensors: readonly Float32Array[],
  clip: number,
  options: ClipOptions = {},
): { tensors: Float32Array[]; norms: number[]; scales: number[] } {
  checkClip("clipPerTensor", clip);
  const norms = tensors.map((t) => Math.sqrt(sumSquares(t)));
  const scales = norms.map((n) => clipScale(n, clip));
  return {
    tensors: tensors.map((t, i) => scaled(t, scales[i], options.inPlace ?? false)),
    norms,
    scales,
  };
}

/**
 * Whole-release clipping (strict mode, docs/privacy.md#strict-calibration): all tensors of one
 * aggregation are scaled by the same `min(1, C/‖(Δ_1, …, Δ_m)‖)`, so the client's release has L2
 * norm ≤ C. Returns the clipped tensors, the pre-clip norm of the whole release and the scale.
 *
 * @example
 * ```ts
 * const { norm, scale } = clipRelease([new Float32Array([3]), new Float32Array([4])], 1);
 * // norm = 5, scale = 0.2
 * ```
 */
export function clipRelease(
  tensors: readonly Float32Array[],
  clip: number,
  options: ClipOptions = {},
): { tensors: Float32Array[]; norm: number; scale: number } {
  checkClip("clipRelease", clip);
  const norm = Math.sqrt(tensors.reduce((s, t) => s + sumSquares(t), 0));
  const scale = clipScale(norm, clip);
  return {
    tensors: tensors.map((t) => scaled(t, scale, options.inPlace ?? false)),
    norm,
    scale,
  };
}

/**
 * The clipping mode of a run: `"per-tensor"` (paper) or `"release"` (strict, unregulated).
 * Regulated strict releases use {@link clipProductSpace}.
 */
export type ClipMode = "per-tensor" | "release";

/**
 * Clips one client's update by `mode`; returns the clipped tensors with one pre-clip norm and
 * scale per tensor (`"per-tensor"`) or a single one for the whole release (`"release"`).
 *
 * @example
 * ```ts
 * clipUpdate([new Float32Array([3, 4])], { clip: 1, mode: "release" }).scales; // [0.2]
 * ```
 */
export function clipUpdate(
  tensors: readonly Float32Array[],
  args: { clip: number; mode: ClipMode } & ClipOptions,
): { tensors: Float32Array[]; norms: number[]; scales: number[] } {
  if (args.mode === "per-tensor") return clipPerTensor(tensors, args.clip, args);
  if (args.mode === "release") {
    const r = clipRelease(tensors, args.clip, args);
    return { tensors: r.tensors, norms: [r.norm], scales: [r.scale] };
  }
  throw new Error(`clipUpdate: mode "${args.mode}" must be "per-tensor" or "release"`);
}

function checkLen(where: string, field: string, x: Matrix, n: number, shape: string): void {
  if (x.length !== n) {
    throw new Error(`${where}: ${field} has ${x.length} values; expected ${shape} = ${n}`);
  }
}

/** Σ_ij X_ij Y_ij for two symmetric r×r matrices = trace(X·Y). */
function traceOfProduct(x: Float64Array, y: Float64Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * y[i];
  return s;
}

/**
 * `‖ΔB·A‖_F` for ΔB (dOut×r) and A (r×d), computed as `√trace(ΔBᵀΔB · AAᵀ)` in O(d r²), never
 * forming the dOut×d product: the norm of what a phase-B update contributes to ΔW = BA
 * (docs/privacy.md#strict-calibration). `dOut` defaults to `d` (square q/k/v projections).
 *
 * @example
 * ```ts
 * // ΔB = e₁ (2×1), A = [3, 4] (1×2): ΔB·A = [[3, 4], [0, 0]]
 * productNormB(new Float32Array([1, 0]), new Float32Array([3, 4]), 2, 1); // 5
 * ```
 */
export function productNormB(
  deltaB: Matrix,
  a: Matrix,
  d: number,
  r: number,
  dOut: number = d,
): number {
  checkLen("productNormB", "deltaB", deltaB, dOut * r, `dOut×r = ${dOut}×${r}`);
  checkLen("productNormB", "A", a, r * d, `r×d = ${r}×${d}`);
  return Math.sqrt(Math.max(0, traceOfProduct(gramCols(deltaB, dOut, r), gramRows(a, r, d))));
}

/**
 * `‖B·ΔA‖_F` for B (d×r) and ΔA (r×dIn), as `√trace(BᵀB · ΔAΔAᵀ)` in O(d r²) — the phase-A
 * analogue of {@link productNormB}. `dIn` defaults to `d`.
 *
 * @example
 * ```ts
 * productNormA(new Float32Array([3, 4]), new Float32Array([1, 0]), 2, 1); // 5
 * ```
 */
export function productNormA(
  b: Matrix,
  deltaA: Matrix,
  d: number,
  r: number,
  dIn: number = d,
): number {
  checkLen("productNormA", "B", b, d * r, `d×r = ${d}×${r}`);
  checkLen("productNormA", "deltaA", deltaA, r * dIn, `r×dIn = ${r}×${dIn}`);
  return Math.sqrt(Math.max(0, traceOfProduct(gramCols(b, d, r), gramRows(deltaA, r, dIn))));
}

/** The released tensors of one client and their peers, for product-space norms. */
export interface ProductSpaceRelease {
  phase: "A" | "B";
  /** ΔB_t (dOut×r) in phase B, ΔA_t (r×dIn) in phase A. */
  deltas: readonly Float32Array[];
  /** The peers: A_t (r×dIn) in phase B, B_t (dOut×r) in phase A. */
  peers: readonly Matrix[];
  /** dIn (and dOut unless given). */
  d: number;
  r: number;
  dOut?: number;
  /**
   * The peers' r×r Gram matrices (A_tA_tᵀ in phase B, B_tᵀB_t in phase A) when the caller has
   * them already (a peer shared by every client of a phase); computed otherwise.
   */
  peerGrams?: readonly Float64Array[];
}

/**
 * `√Σ_t ‖ΔB_t·A_t‖_F²` (phase B) or `√Σ_t ‖B_t·ΔA_t‖_F²` (phase A): the norm of what one client's
 * regulated release contributes to ΔW, in O(d r²) per tensor.
 *
 * @example
 * ```ts
 * productSpaceNorm({
 *   phase: "B", deltas: [new Float32Array([1, 0])], peers: [new Float32Array([3, 4])], d: 2, r: 1,
 * }); // 5
 * ```
 */
export function productSpaceNorm(args: ProductSpaceRelease): number {
  const { phase, deltas, peers, d, r, dOut = d, peerGrams } = args;
  if (phase !== "A" && phase !== "B") {
    throw new Error(`productSpaceNorm: phase "${phase}" must be "A" or "B"`);
  }
  if (deltas.length !== peers.length) {
    throw new Error(
      `productSpaceNorm: deltas has ${deltas.length} tensors but peers has ${peers.length}; ` +
        `pass one peer per released tensor`,
    );
  }
  let sq = 0;
  for (let t = 0; t < deltas.length; t++) {
    let term: number;
    if (phase === "B") {
      checkLen("productSpaceNorm", `deltas[${t}]`, deltas[t], dOut * r, `dOut×r = ${dOut}×${r}`);
      const g = peerGrams?.[t] ?? gramRows(checked(peers[t], r * d, `peers[${t}]`), r, d);
      term = traceOfProduct(gramCols(deltas[t], dOut, r), g);
    } else {
      checkLen("productSpaceNorm", `deltas[${t}]`, deltas[t], r * d, `r×dIn = ${r}×${d}`);
      const g = peerGrams?.[t] ?? gramCols(checked(peers[t], dOut * r, `peers[${t}]`), dOut, r);
      term = traceOfProduct(gramRows(deltas[t], r, d), g);
    }
    sq += Math.max(0, term);
  }
  return Math.sqrt(sq);
}

function checked(x: Matrix, n: number, field: string): Matrix {
  checkLen("productSpaceNorm", field, x, n, `${n} values`);
  return x;
}

/**
 * Product-space clipping of one client's regulated release (strict mode).
 *
 * Phase `"B"`: `deltas[t]` is ΔB_t (d×r) and `peers[t]` the global A_t (r×d); phase `"A"`:
 * `deltas[t]` is ΔA_t (r×d) and `peers[t]` the global B_t (d×r). All deltas are scaled by one
 * factor `min(1, C/√Σ_t ‖ΔB_t A_t‖²)` (resp. `‖B_t ΔA_t‖`), so the client's contribution to ΔW has
 * norm ≤ C whatever the peers' norms — which makes the regulated Gaussian mechanism's
 * sensitivity C (docs/privacy.md). Returns the clipped deltas, the pre-clip product-space norm
 * and the scale.
 *
 * @example
 * ```ts
 * const { norm, scale } = clipProductSpace({
 *   phase: "B", deltas: [new Float32Array([1, 0])], peers: [new Float32Array([3, 4])], d: 2, r: 1,
 * }, 1);
 * // norm = 5, scale = 0.2
 * ```
 */
export function clipProductSpace(
  args: ProductSpaceRelease,
  clip: number,
  options: ClipOptions = {},
): { tensors: Float32Array[]; norm: number; scale: number } {
  checkClip("clipProductSpace", clip);
  const norm = productSpaceNorm(args);
  const scale = clipScale(norm, clip);
  return {
    tensors: args.deltas.map((t) => scaled(t, scale, options.inPlace ?? false)),
    norm,
    scale,
  };
}
