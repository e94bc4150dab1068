/**
 * FedEx-LoRA: FedAvg of A and B, plus the aggregation residual `s·(Σ_k p_k·B_k·A_k − B̄·Ā)`
 * folded into the frozen weights, so the model's update is the exact average of the clients'.
 * @module
 */
import { BOTH, fedAvg, fedAvgDeviations, phase } from "./defaults.ts";
import type { Method } from "./types.ts";

/** FedAvg of A and B with the residual folded into the frozen weights. */
export const fedExLora: Method = {
  ...fedAvg,
  name: "FedEx-LoRA",
  label: "FedEx-LoRA",
  aggregates: "A and B averaged; residual Σp_k·B_k·A_k − B̄·Ā folded into the frozen weight",
  phases: [phase("AB", BOTH, BOTH, false)],
  combine: (received, ctx) => ({
    ...fedAvg.combine(received, ctx),
    mergeIntoFrozen: fedAvgDeviations(received, ctx).map((D) =>
      Float32Array.from(D, (v) => v * ctx.loraScale)
    ),
  }),
  checkDp: (calibration) =>
    calibration === "strict"
      ? `FedEx-LoRA with strict calibration: the folded residual Σp_k·B_k·A_k is computed from ` +
        `the clients' un-noised factors, so it has no client-level guarantee; use ` +
        `--calibration local (each site noises its own factors, so the residual is computed from ` +
        `noised ones), --calibration paper (no client-level guarantee either) or another method`
      : null,
};
