/**
 * FFA-LoRA: A stays frozen at its shared random initialisation; clients train and release B
 * only, so aggregation is exact (every client shares A).
 * @module
 */
import { fedAvg, phase } from "./defaults.ts";
import type { Method } from "./types.ts";

/** B only, A frozen. */
export const ffaLora: Method = {
  ...fedAvg,
  name: "FFA-LoRA",
  label: "FFA-LoRA",
  aggregates: "B only; A stays at its shared random initialisation",
  phases: [phase("B", ["B"], ["B"], false)],
};
