/**
 * FLoRA (stacking): every round each client k trains a fresh LoRA of its own rank r_k. The
 * server stacks the factors, `B = [p₁B₁ … p_KB_K]` (dOut×Σr_k) and `A = [A₁; …; A_K]`
 * (Σr_k×dIn), so that `B·A = Σ_k p_k·B_k·A_k` exactly, merges `s·B·A` into the frozen weights,
 * and the clients start from a fresh LoRA again in the next round. Clients may use different
 * ranks (`--lora_r 4,8,16`).
 *
 * The stacked release publishes every client's factors one by one, not only their sum, so its
 * phase declares `publishes: "each-release"`. Under the paper calibration every client noises its
 * own factors (σC/√K per entry) and the run accounts each client's noised release on its own
 * (docs/privacy.md); under local DP every client's factors are noised by the client itself. In
 * both, stacking is post-processing of noised releases. The strict calibration, whose noise is on
 * the weighted sum only, is refused: the stacked factors would carry none.
 * @module
 */
import { phase } from "./defaults.ts";
import { fedAvg } from "./defaults.ts";
import type { CombineContext, Method } from "./types.ts";
import type { ReceivedUpdate } from "../../privacy/mechanism.ts";
import { addScaledProduct } from "../factors.ts";

/**
 * `s·Σ_k p_k·B_k·A_k` for every adapter (dOut×dIn, float64 accumulation), with the weights
 * normalised to sum to 1 — the product of the stacked factors.
 */
export function stackedUpdate(
  received: readonly ReceivedUpdate[],
  ctx: CombineContext,
): Float64Array[] {
  const { dIn, dOut } = ctx.dims;
  const sum = received.reduce((a, c) => a + c.weight, 0);
  return Array.from({ length: ctx.dims.adapters }, (_, i) => {
    const out = new Float64Array(dOut * dIn);
    for (const { factors, weight } of received) {
      addScaledProduct(out, factors.B[i], factors.A[i], (weight / sum) * ctx.loraScale, ctx.dims);
    }
    return out;
  });
}

/** Stacked fresh LoRAs merged into the frozen weights every round. */
export const flora: Method = {
  ...fedAvg,
  name: "FLoRA",
  label: "FLoRA",
  aggregates: "A and B stacked (B = [p₁B₁ … p_KB_K], A = [A₁; …; A_K]); s·B·A merged into the " +
    "frozen weights; fresh LoRAs every round",
  // The stacked product is a function of the single releases, not of their weighted sum.
  phases: [{ ...phase("AB", ["A", "B"], ["A", "B"], false), publishes: "each-release" }],
  referenceMomentum: "reset",
  clientRanks: true,
  startFactors: (ctx) => ctx.freshLora(),
  combine: (received, ctx) => ({
    // The global LoRA contributes nothing after the merge: B = 0.
    global: { A: ctx.global.A, B: ctx.global.B.map((b) => new Float32Array(b.length)) },
    mergeIntoFrozen: received.length === 0
      ? undefined
      : stackedUpdate(received, ctx).map((m) => Float32Array.from(m)),
  }),
  // Stacking is exact: Σ_k p_k·B_k·A_k is merged as it is.
  deviation: () => 0,
  checkDp: (calibration) =>
    calibration === "strict"
      ? `FLoRA with strict calibration: stacking publishes every client's factors one by one, ` +
        `and the strict calibration adds its noise to their weighted sum only, so the stacked ` +
        `factors would carry none; use --calibration local (each site noises its own factors), ` +
        `--calibration paper (each client noises its own factors too, and the run accounts ` +
        `every client's noised release on its own: the client-level ε it reports holds, its ` +
        `nominal ε does not) or run FLoRA without DP (--is_DP 0)`
      : null,
};
