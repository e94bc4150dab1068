/**
 * DEeR toolkit — privacy-preserving federated LoRA fine-tuning of CLIP-style vision
 * transformers (Deviation Eliminating and Noise Regulating, IEEE TMI; see docs/README.md).
 *
 * The public surface: the tfjs namespace with the selected backend, the data loaders, the
 * ViT encoder with LoRA, the federated engine and its methods, DEeR's regulator and deviation,
 * the RDP accountant and the metrics. Deeper modules (`lib/...`) can be imported directly.
 *
 * @example
 * ```ts
 * import { noiseMultiplierForBudget, rdpEpsilon } from "./mod.ts";
 * const sigma = noiseMultiplierForBudget({ targetEpsilon: 4, targetDelta: 1e-5, sampleRate: 1, steps: 100 });
 * rdpEpsilon({ noiseMultiplier: sigma, sampleRate: 1, steps: 100, delta: 1e-5 }).epsilon; // ≤ 4
 * ```
 * @module
 */

// Tensors
export { backendName, tf } from "./lib/backend.ts";

// Data
export { readNpy, readNpz, writeNpy, writeNpz } from "./lib/data/npy.ts";
export { loadMedMnist } from "./lib/data/medmnist.ts";
export { loadImageFolder } from "./lib/data/image_folder.ts";
export type { ImageDataset, ImageSplit } from "./lib/data/dataset.ts";
export { dirichletPartition, iidPartition } from "./lib/data/partition.ts";
export { CLIP_MEAN, CLIP_STD, clipPreprocess, decodeImage } from "./lib/data/image.ts";
export { createRng, type Rng } from "./lib/rng.ts";

// Model
export type { LoraInput } from "./lib/model/transformer.ts";
export { loadVisionEncoder } from "./lib/model/vit_checkpoints.ts";
export { inflateForVolumes } from "./lib/model/vit_volume.ts";
export type { VisionEncoder, VitConfig } from "./lib/model/vit.ts";
export { initLora, loraScale } from "./lib/model/lora.ts";
export {
  cosineScores,
  loadPrototypes,
  orthonormalPrototypes,
  prototypeLogits,
  savePrototypes,
} from "./lib/model/head.ts";
export { readSafetensors, writeSafetensors } from "./lib/model/safetensors.ts";
export {
  classPrototypes,
  DEFAULT_TEMPLATE,
  loadTextEncoder,
  type TextEncoder,
} from "./lib/model/text.ts";

// Federated engine
export { makeBackbone, type SharedBackbone } from "./lib/fl/backbone.ts";
export {
  defaultConfig,
  type FederatedConfig,
  type RoundRecord,
  runFederated,
  type RunResult,
  validateConfig,
} from "./lib/fl/simulation.ts";
export {
  type Method,
  METHOD_NAMES,
  type MethodEntry,
  METHODS,
  resolveMethod,
} from "./lib/fl/methods/mod.ts";
export { aggregateRelease, sampleParticipants, trainClient } from "./lib/fl/round.ts";
export { aggregationDeviation } from "./lib/fl/deviation.ts";
export { evaluateSplit, predict } from "./lib/fl/evaluate.ts";
export { auditConfig, type AuditedRun, type ConfigAudit } from "./lib/fl/audit.ts";

// Privacy
export { noiseMultiplierForBudget, rdpEpsilon } from "./lib/privacy/rdp.ts";
export { type PldEpsilon, pldEpsilon } from "./lib/privacy/pld.ts";
export { regulateNoiseForA, regulateNoiseForB } from "./lib/privacy/regulator.ts";
export {
  createLedger,
  recordRelease,
  type Release,
  releaseRecord,
  spentEpsilon,
} from "./lib/privacy/ledger.ts";
export {
  calibrate,
  type Calibration,
  type DpSettings,
  paperCalibration,
  strictCalibration,
} from "./lib/privacy/calibration.ts";
export { createMechanism, type Mechanism } from "./lib/privacy/mechanism.ts";
export { combineEstimates, estimateEpsilon } from "./lib/privacy/audit.ts";

// Metrics
export { classificationMetrics, meanStd } from "./lib/metrics/classification.ts";
export { meanInterval, studentTQuantile } from "./lib/metrics/interval.ts";
export { describeComparison, pairedComparison } from "./lib/metrics/paired.ts";
