/**
 * DP-DyLoRA: LoRA where, before every local epoch, a client draws a rank prefix ρ+1 ≤ r and
 * trains only the first ρ+1 rank components (scaled by √(r/(ρ+1))); the server averages the
 * full-rank factors.
 * @module
 */
import { BOTH, fedAvg, phase } from "./defaults.ts";
import type { Method } from "./types.ts";

/** FedAvg of A and B with a random rank prefix per local epoch. */
export const dpDyLora: Method = {
  ...fedAvg,
  name: "DP-DyLoRA",
  label: "DP-DyLoRA",
  aggregates: "A and B (full rank), FedAvg of each factor",
  phases: [phase("AB", BOTH, BOTH, false)],
  local: { dynamicRank: true },
};
