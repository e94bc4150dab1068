/**
 * The sweep file both executor tests run: two methods × two seeds of a tiny DP training on the toy
 * npz, so that the Slurm test can compare its records with the local executor's.
 */
import { TINY_MODEL } from "./reliability_inputs.ts";

/** A sweep file's content (`results` is its results root); `extra` adds or replaces top-level keys. */
export function tinySweepFile(
  name: string,
  results: string,
  data: string,
  rounds: number,
  extra: Record<string, unknown> = {},
): string {
  return JSON.stringify({
    name,
    results,
    base: {
      dataset: data,
      model: TINY_MODEL,
      prototypes: "orthonormal",
      node_num: 2,
      lora_r: 2,
      batchsize: 8,
      E: 1,
      T: rounds,
      is_DP: 1,
      epsilon: 3,
    },
    grid: { method: ["LoRA", "DEeR"], seeds: [10, 11] },
    ...extra,
  });
}
