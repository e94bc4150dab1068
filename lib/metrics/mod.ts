/**
 * Evaluation metrics of the protocol (SPEC.md §2).
 *
 * @example
 * ```ts
 * import { classificationMetrics, meanStd } from "./mod.ts";
 * classificationMetrics([0, 1], [[0.9, 0.1], [0.2, 0.8]]).accuracy; // 1
 * meanStd([0.8, 0.9]).std; // 0.05
 * ```
 * @module
 */
export * from "./classification.ts";
