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
 * *Product-space canaries* ({@link productCanary}) audit the regulated mechanism where its
 * guarantee lives: in ΔW = B·A. A canary is a fixed direction U of the adapters' product space;
 * in a phase that releases B against the shared A it releases ΔB = c·U·A⁺ (so ΔB·A = c·U·P_A),
 * in a phase that releases A against the shared B, ΔA = c·B⁺·U (B·ΔA = c·P_B·U), with c such
 * that the product-space norm — what strict clipping bounds — is C. The regulated noise puts
 * isotropic noise projected the same way into ΔW, so the canary faces the accounted Gaussian
 * mechanism, and the cosine is taken with the total change of the product. The directions are
 * rank one per adapter (U_l = u_l·v_lᵀ/√L), so neither the release nor the cosine ever forms a
 * dOut×dIn matrix.
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
import type { Method } from "./methods/types.ts";
import { unitVector } from "../privacy/audit.ts";
import { gramCols, gramRows } from "../privacy/linalg.ts";
import { type PeerFactor, peerForA, peerForB } from "../privacy/noise.ts";

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
  return unitVector(streamRng(seed, "canary", set, index), factorSpaceSize(dims));
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

/**
 * Why factor-space canaries cannot audit a method (null when they can): the audit measures the
 * total change of the global factors, so a method whose combination never moves them — FLoRA,
 * which merges each round's update into the frozen weights and hands out fresh factors — leaves it
 * nothing to measure. Probed on a one-adapter example: a client that moves every factor, combined
 * alone at weight 1, in each phase of the method.
 *
 * @example
 * ```ts
 * import { METHODS } from "./methods/mod.ts";
 * const method = (name: string) => METHODS.find((e) => e.name === name)!.create({});
 * factorCanariesRefusal(method("LoRA")); // null
 * factorCanariesRefusal(method("FLoRA")); // "its global LoRA factors never move: …"
 * ```
 */
export function factorCanariesRefusal(method: Pick<Method, "phases" | "combine">): string | null {
  const dims: LoraDims = { adapters: 1, rank: 1, dIn: 2, dOut: 2 };
  const global = { A: [new Float32Array([1, 0])], B: [new Float32Array([0, 0])] };
  const moved = { A: [new Float32Array([1, 0.5])], B: [new Float32Array([0.5, 0.25])] };
  const moves = method.phases.some((phase) => {
    const factors = {
      A: phase.release.includes("A") ? moved.A : global.A,
      B: phase.release.includes("B") ? moved.B : global.B,
    };
    const next = method.combine([{ client: 0, factors, weight: 1 }], {
      global,
      phase,
      dims,
      loraScale: 1,
    }).global;
    return (["A", "B"] as const).some((w) => next[w][0].some((v, j) => v !== global[w][0][j]));
  });
  return moves ? null : "its global LoRA factors never move: each round's update goes into the " +
    "frozen weights and the clients restart from fresh factors, so canaries measured in the " +
    "global factors have nothing to measure";
}

// ---------------------------------------------------------------------------------------------
// Product-space canaries.

/** Where canaries live: the factors (A, B) or their product ΔW = B·A. */
export type CanarySpace = "factor" | "product";

/**
 * Why product-space canaries do not apply to a run (null when they do): they need every phase
 * to release one factor with regulated noise against a peer shared by all clients, under the
 * strict calibration (DEeR with both modules), because that is the mechanism whose guarantee is
 * in product space.
 */
export function productCanariesRefusal(
  phases: readonly { release: readonly Factor[]; regulate: boolean }[],
  calibration: string | null,
): string | null {
  if (calibration !== "strict") {
    return `they need the strict calibration (clipping in product space), not ${
      calibration ?? "no DP"
    }`;
  }
  if (!phases.every((p) => p.regulate && p.release.length === 1)) {
    return "they need every phase to release one factor with regulated noise (DEeR with " +
      "--module1 1 --module2 1)";
  }
  return null;
}

/** A product-space canary direction: per adapter U_l = u_l·v_lᵀ/√L, ‖U‖_F = 1. */
export interface ProductCanary {
  /** Unit vectors of length dOut, one per adapter. */
  u: Float64Array[];
  /** Unit vectors of length dIn, one per adapter. */
  v: Float64Array[];
}

/**
 * Product-space canary `index` of a set, from the run seed's stream (other streams than the
 * factor-space directions).
 *
 * @example
 * ```ts
 * import { productCanary } from "./canaries.ts";
 * productCanary(10, "held", 0, { adapters: 2, dOut: 4, rank: 2, dIn: 3 }).v[1].length; // 3
 * ```
 */
export function productCanary(
  seed: number,
  set: "inserted" | "held",
  index: number,
  dims: LoraDims,
): ProductCanary {
  const rng = streamRng(seed, "canary-product", set, index);
  const u: Float64Array[] = [], v: Float64Array[] = [];
  for (let l = 0; l < dims.adapters; l++) {
    u.push(unitVector(rng, dims.dOut));
    v.push(unitVector(rng, dims.dIn));
  }
  return { u, v };
}

/**
 * The shared peers of one phase, prepared once for all of its canaries: for a released B the
 * global A of every adapter (applied to a row vᵀ as vᵀ·A⁺), for a released A the global B
 * (applied to a column u as B⁺·u).
 */
export interface ProductCanaryPhase {
  which: Factor;
  peers: PeerFactor[];
}

/** Prepares {@link ProductCanaryPhase} for a phase releasing `which` from the global factors. */
export function productCanaryPhase(
  global: LoraFactors,
  which: Factor,
  dims: LoraDims,
): ProductCanaryPhase {
  const peers = Array.from({ length: dims.adapters }, (_, l) =>
    which === "B"
      // The regulator with a 1×dIn "noise": vᵀ·A⁺.
      ? peerForB(global.A[l], dims.rank, dims.dIn, 1)
      // The regulator with a dOut×1 "noise": B⁺·u.
      : peerForA(global.B[l], dims.dOut, dims.rank, 1));
  return { which, peers };
}

/**
 * The factors a product-space canary releases in a phase: the global factors with the released
 * one moved so that the product moves by C·P(U)/‖P(U)‖ (P the projection the shared peer
 * allows), product-space norm exactly `clip`.
 *
 * @example
 * ```ts
 * import { productCanary, productCanaryPhase, productCanaryRelease } from "./canaries.ts";
 * const dims = { adapters: 1, dOut: 3, rank: 2, dIn: 3 };
 * const global = { A: [new Float32Array([1, 0, 0, 0, 1, 0])], B: [new Float32Array(6)] };
 * const phase = productCanaryPhase(global, "B", dims);
 * productCanaryRelease(global, productCanary(1, "inserted", 0, dims), phase, 0.5, dims).B[0].length; // 6
 * ```
 */
export function productCanaryRelease(
  global: LoraFactors,
  canary: ProductCanary,
  phase: ProductCanaryPhase,
  clip: number,
  dims: LoraDims,
): LoraFactors {
  const { rank: r, dIn, dOut } = dims;
  // Per adapter the rank-one update's two vectors and its product-space norm.
  const parts = phase.peers.map((peer, l) => {
    if (phase.which === "B") {
      // ΔB = u·xᵀ with xᵀ = vᵀA⁺ (1×r); ‖ΔB·A‖ = ‖xᵀA‖ = ‖vᵀP_A‖.
      const x = peer.regulate(Float32Array.from(canary.v[l]));
      const a = global.A[l];
      let sq = 0;
      for (let j = 0; j < dIn; j++) {
        let s = 0;
        for (let k = 0; k < r; k++) s += x[k] * a[k * dIn + j];
        sq += s * s;
      }
      return { left: canary.u[l], right: x, norm: Math.sqrt(sq) };
    }
    // ΔA = y·vᵀ with y = B⁺u (r×1); ‖B·ΔA‖ = ‖B·y‖ = ‖P_B u‖.
    const y = peer.regulate(Float32Array.from(canary.u[l]));
    const b = global.B[l];
    let sq = 0;
    for (let i = 0; i < dOut; i++) {
      let s = 0;
      for (let k = 0; k < r; k++) s += b[i * r + k] * y[k];
      sq += s * s;
    }
    return { left: y, right: canary.v[l], norm: Math.sqrt(sq) };
  });
  // The per-adapter weights 1/√L cancel in the normalisation to C.
  const total = Math.sqrt(parts.reduce((a, p) => a + p.norm * p.norm, 0));
  const scale = total > 0 ? clip / total : 0;
  const out = cloneFactors(global);
  const list = phase.which === "A" ? out.A : out.B;
  parts.forEach(({ left, right }, l) => {
    const t = Float32Array.from(list[l]);
    const cols = right.length;
    for (let i = 0; i < left.length; i++) {
      for (let j = 0; j < cols; j++) t[i * cols + j] += scale * left[i] * right[j];
    }
    list[l] = t;
  });
  return out;
}

/**
 * Cosines of the total change of the product, ΔW_l = B_l·A_l (end) − B_l·A_l (start), with
 * product-space canaries: ⟨ΔW, U⟩/‖ΔW‖, with ⟨ΔW_l, u vᵀ⟩ = (uᵀB)(A v) and ‖ΔW_l‖² =
 * trace(B'ᵀB'·A'A'ᵀ) for B' = [B_end, −B_start], A' = [A_end; A_start] — O(d r²), no dOut×dIn
 * matrix.
 */
export function productCosines(
  start: LoraFactors,
  end: LoraFactors,
  canaries: Iterable<ProductCanary>,
  dims: LoraDims,
): number[] {
  const { adapters: L, rank: r, dIn, dOut } = dims;
  let sq = 0;
  for (let l = 0; l < L; l++) {
    const b2 = new Float64Array(dOut * 2 * r), a2 = new Float64Array(2 * r * dIn);
    for (let i = 0; i < dOut; i++) {
      for (let k = 0; k < r; k++) {
        b2[i * 2 * r + k] = end.B[l][i * r + k];
        b2[i * 2 * r + r + k] = -start.B[l][i * r + k];
      }
    }
    a2.set(end.A[l], 0);
    a2.set(start.A[l], r * dIn);
    const gb = gramCols(b2, dOut, 2 * r), ga = gramRows(a2, 2 * r, dIn);
    for (let i = 0; i < gb.length; i++) sq += gb[i] * ga[i];
  }
  const norm = Math.sqrt(Math.max(0, sq));
  const w = 1 / Math.sqrt(L);
  const bilinear = (f: LoraFactors, l: number, u: Float64Array, v: Float64Array) => {
    let s = 0;
    for (let k = 0; k < r; k++) {
      let ub = 0, av = 0;
      for (let i = 0; i < dOut; i++) ub += u[i] * f.B[l][i * r + k];
      for (let j = 0; j < dIn; j++) av += f.A[l][k * dIn + j] * v[j];
      s += ub * av;
    }
    return s;
  };
  const out: number[] = [];
  for (const c of canaries) {
    let dot = 0;
    for (let l = 0; l < L; l++) {
      dot += w * (bilinear(end, l, c.u[l], c.v[l]) - bilinear(start, l, c.u[l], c.v[l]));
    }
    out.push(norm > 0 ? dot / norm : 0);
  }
  return out;
}
