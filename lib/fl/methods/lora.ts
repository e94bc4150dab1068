/**
 * LoRA / FedLoRA: clients train both factors, the server averages each factor (FedAvg). The
 * average of products is not the product of averages, so aggregation has a deviation.
 * @module
 */
import { BOTH, fedAvg, phase } from "./defaults.ts";
import type { Method } from "./types.ts";

/** FedAvg of A and B. */
export const lora: Method = {
  ...fedAvg,
  name: "LoRA",
  label: "LoRA",
  aggregates: "A and B, FedAvg of each factor",
  phases: [phase("AB", BOTH, BOTH, false)],
};
