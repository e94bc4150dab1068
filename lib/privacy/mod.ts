/**
 * Differential privacy for federated LoRA (docs/privacy.md): the RDP accountant, the privacy
 * ledger and calibrations, clipping, float64 linear algebra and DEeR's noise regulator.
 *
 * Importing this module loads the tfjs backend (through regulator.ts); code that only needs the
 * accountant can import `./rdp.ts` or `./ledger.ts` directly.
 *
 * @example
 * ```ts
 * import { noiseMultiplierForBudget } from "./mod.ts";
 * noiseMultiplierForBudget({ targetEpsilon: 1, targetDelta: 1e-5, sampleRate: 1, steps: 100 });
 * ```
 * @module
 */
export * from "./rdp.ts";
export * from "./pld.ts";
export * from "./ledger.ts";
export * from "./calibration.ts";
export * from "./mechanism.ts";
export * from "./clip.ts";
export * from "./linalg.ts";
export * from "./regulator.ts";
