/**
 * DEeR: the deviation eliminator trains and releases B (A shared) and then A (B shared), so the
 * aggregate of each phase is exact; the noise regulator shapes the DP noise of the released
 * factor through the pseudo-inverse of the shared peer (docs/method.md). Both can be switched off
 * for the ablations (the reference's `--module1` / `--module2`).
 * @module
 */
import { BOTH, fedAvg, phase } from "./defaults.ts";
import type { Method } from "./types.ts";

/** DEeR's switches. */
export interface DeerOptions {
  /** Deviation eliminator: alternate B then A (default on). */
  eliminateDeviation?: boolean;
  /** Noise regulator (default on). */
  regulateNoise?: boolean;
}

/** DEeR with the given switches. */
export function deer(opts: DeerOptions = {}): Method {
  const m1 = opts.eliminateDeviation ?? true;
  const m2 = opts.regulateNoise ?? true;
  const label = `DEeR(m1=${m1 ? 1 : 0},m2=${m2 ? 1 : 0})`;
  return {
    ...fedAvg,
    name: "DEeR",
    label,
    aggregates: m1
      ? "B in phase 1 (A shared), then A in phase 2 (B shared): zero aggregation deviation"
      : "A and B together, FedAvg of each factor",
    phases: m1
      ? [phase("B", ["B"], ["B"], m2), phase("A", ["A"], ["A"], m2)]
      : [phase("AB", BOTH, BOTH, m2)],
    // The reference rebuilds the optimiser for every phase of its eliminator; with the eliminator
    // off (one phase of A and B) it keeps each client's optimiser, as for LoRA, so that DEeR(0,0)
    // is LoRA under --momentum reference too.
    referenceMomentum: m1 ? "reset" : "keep",
    checkDp: (calibration) =>
      calibration !== "paper" && !m1 && m2
        ? `${label} with ${calibration} calibration: regulated noise shaped by a client's own, ` +
          `private peer factor has no client-level guarantee; use --module1 1 or --calibration paper`
        : null,
  };
}
