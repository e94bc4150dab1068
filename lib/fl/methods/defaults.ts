/**
 * The behaviour most methods share (FedAvg of the released factors), as functions a method
 * value spreads in and overrides where it differs.
 *
 * @example
 * ```ts
 * import { fedAvg } from "./defaults.ts";
 * const m = { ...fedAvg, name: "X" }; // starts from the global factors, combines by FedAvg
 * ```
 * @module
 */
import { factorList, type LoraFactors } from "../factors.ts";
import { deviationMatrix } from "../deviation.ts";
import { weightedAverage } from "../../privacy/mechanism.ts";
import type { ReceivedUpdate } from "../../privacy/mechanism.ts";
import type { CombineContext, Method, Phase } from "./types.ts";

/** A phase value. */
export function phase(
  name: Phase["name"],
  train: Phase["train"],
  release: Phase["release"],
  regulate: boolean,
): Phase {
  return { name, train, release, regulate };
}

/**
 * The FedAvg deviation `D_i = Σ_k p_k·B_k·A_k − (Σ_k p_k·B_k)(Σ_k p_k·A_k)` of every adapter i,
 * with the weights normalised to sum to 1 (`../deviation.ts`).
 */
export function fedAvgDeviations(
  received: readonly ReceivedUpdate[],
  ctx: CombineContext,
): Float64Array[] {
  const weights = received.map((c) => c.weight);
  const sum = weights.reduce((a, b) => a + b, 0);
  return Array.from({ length: ctx.dims.adapters }, (_, i) =>
    deviationMatrix(
      received.map((f) => f.factors.B[i]),
      received.map((f) => f.factors.A[i]),
      weights.map((w) => w / sum),
      ctx.dims,
    ));
}

/** Σ_i ‖D_i‖_F. */
export function frobeniusSum(ds: readonly ArrayLike<number>[]): number {
  let total = 0;
  for (const D of ds) {
    let sq = 0;
    for (let j = 0; j < D.length; j++) sq += D[j] * D[j];
    total += Math.sqrt(sq);
  }
  return total;
}

/** FedAvg: start from the global factors, combine by weighted average, evaluate the global. */
export const fedAvg: Pick<
  Method,
  | "startFactors"
  | "combine"
  | "deviation"
  | "keepOnClient"
  | "afterRound"
  | "evaluationFactors"
  | "checkDp"
  | "local"
  | "clientRanks"
  | "referenceMomentum"
> = {
  local: { dynamicRank: false },
  referenceMomentum: "keep",
  clientRanks: false,
  startFactors: (ctx) => ctx.global,
  combine: (received, ctx) => ({
    global: weightedAverage(ctx.global, ctx.phase.release, received),
  }),
  deviation: (received, ctx) => frobeniusSum(fedAvgDeviations(received, ctx)),
  keepOnClient: () => undefined,
  afterRound: (ctx) => ctx.global,
  evaluationFactors: (ctx) => ctx.global,
  checkDp: () => null,
};

/** Both factors, as a phase's `train` / `release` list. */
export const BOTH = ["A", "B"] as const;

/** The global factors with `keep` factors replaced by a client's own (FedSA-LoRA). */
export function withLocal(
  global: LoraFactors,
  local: LoraFactors | undefined,
  keep: readonly ("A" | "B")[],
): LoraFactors {
  if (!local) return global;
  return {
    A: keep.includes("A") ? local.A : global.A,
    B: keep.includes("B") ? local.B : global.B,
  };
}

/** The average of the given factor lists (measurement only). */
export function meanOf(lists: readonly LoraFactors[], which: "A" | "B"): Float32Array[] {
  return factorList(lists[0], which).map((_, i) => {
    const out = new Float32Array(factorList(lists[0], which)[i].length);
    for (const l of lists) {
      const t = factorList(l, which)[i];
      for (let j = 0; j < out.length; j++) out[j] += t[j] / lists.length;
    }
    return out;
  });
}
