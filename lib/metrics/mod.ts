/**
 * Evaluation metrics of the protocol (docs/protocol.md#metrics), and the statistics over seeds: the
 * t interval of a mean and the paired comparison of two methods.
 *
 * @example
 * ```ts
 * import { classificationMetrics, describeComparison, meanStd, pairedComparison } from "./mod.ts";
 * classificationMetrics([0, 1], [[0.9, 0.1], [0.2, 0.8]]).accuracy; // 1
 * meanStd([0.8, 0.9]).std; // 0.05
 * describeComparison(pairedComparison([60, 61, 59], [58, 58, 59]), "DEeR", "LoRA");
 * ```
 * @module
 */
export * from "./classification.ts";
export * from "./interval.ts";
export * from "./paired.ts";
