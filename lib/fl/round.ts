/**
 * The named steps of a federated round (docs/architecture.md):
 *
 *   configure → for each phase: sample → train clients → aggregate → record → after the round:
 *   evaluate → persist
 *
 * {@link runFederated} in `simulation.ts` strings them together; a cross-process federation can
 * call the client step ({@link trainClient}) on a site and the server steps
 * ({@link aggregateRelease}, {@link phaseRecord}) on its coordinator. The method (a strategy,
 * `methods/`) and the privacy mechanism (`../privacy/mechanism.ts`) are values the steps call;
 * no step branches on either.
 *
 * @example
 * ```ts
 * const cohort = sampleParticipants({ numClients: 12, participation: 1, seed: 10 }, 0, 0);
 * cohort.length; // 12
 * ```
 * @module
 */
import type { Rng } from "../rng.ts";
import { initLora } from "../model/lora.ts";
import type { ImageSplit } from "../data/dataset.ts";
import type { ClientRelease, Mechanism, ReleaseOutput } from "../privacy/mechanism.ts";
import type { SharedBackbone } from "./backbone.ts";
import {
  addScaledProduct,
  allFinite,
  checkFactors,
  type LoraDims,
  type LoraFactors,
} from "./factors.ts";
import { type LocalResult, type SgdOptions, trainLocal } from "./local.ts";
import type { ClientState, Method, Phase } from "./methods/mod.ts";
import { streamRng } from "./streams.ts";

/** The instrumentation of one release, as a round record lists it (declared once). */
export interface PhaseRecord {
  phase: string;
  /** The clients sampled for this release (all of them under full participation). */
  participants: number[];
  /** Audit runs only: the canaries included in this release (sampled like clients). */
  canaries?: number[];
  /**
   * Mean training loss of the combined clients that took a step (clients without images are left
   * out); NaN, written as null, when there is none (an empty cohort, or local trust).
   */
  trainLoss: number;
  /** Σ over adapters of ‖D‖_F of the factors the server combined (docs/method.md). */
  deviation: number;
  /**
   * Σ over adapters of ‖ΔW_noisy − ΔW_clean‖_F² of the global update (ΔW = s·B·A); NaN, written
   * as null, where the server never holds the un-noised combination (local DP; paper releases
   * from remote sites).
   */
  noiseEnergy: number;
  /** Largest σ_max of a peer factor that shaped regulated noise (0 when not regulated). */
  peerSigmaMax: number;
  /** Fraction of client releases that the clip bound scaled down; mean pre-clip norm. */
  clippedFraction: number;
  meanUpdateNorm: number;
  /** Strict calibration: largest client release norm after clipping (checked ≤ C at run time). */
  maxReleaseNorm: number;
  /** Effective noise multiplier of this release (noise std / sensitivity), null without DP. */
  effectiveNoiseMultiplier: number | null;
  /** Clients left out of this aggregation and why (faults). */
  excluded: { client: number; reason: string }[];
}

/** What one client's local training needs beyond its state. */
export interface ClientTask {
  method: Method;
  phase: Phase;
  global: LoraFactors;
  /** Dense updates merged into the frozen weights so far (or undefined). */
  merged?: Float32Array[];
  split: ImageSplit;
  seed: number;
  /** 0-based round and phase. */
  round: number;
  phaseIndex: number;
  /** Client index k and its LoRA rank. */
  client: number;
  rank: number;
  localEpochs: number;
  batchSize: number;
  sgd: SgdOptions;
  logitScale: number;
  /** Carry the client's optimiser momentum across rounds. */
  keepMomentum: boolean;
}

/** The run settings a client's task reads (a part of `FederatedConfig`). */
export interface ClientRunSettings {
  seed: number;
  clientRanks?: number[];
  localEpochs: number;
  batchSize: number;
  sgd: SgdOptions;
  logitScale: number;
  momentum: "reset" | "reference";
}

/**
 * The run-wide part of client `client`'s task: its seed, its LoRA rank (per-client ranks cycle
 * over the clients; the backbone's rank otherwise), its training settings, and whether its
 * momentum is carried. The simulation and a federation site both build their tasks from it.
 */
export function clientSettings(
  config: ClientRunSettings,
  method: Method,
  client: number,
  backboneRank: number,
): Pick<
  ClientTask,
  "seed" | "client" | "rank" | "localEpochs" | "batchSize" | "sgd" | "logitScale" | "keepMomentum"
> {
  return {
    seed: config.seed,
    client,
    rank: config.clientRanks?.[client % config.clientRanks.length] ?? backboneRank,
    localEpochs: config.localEpochs,
    batchSize: config.batchSize,
    sgd: config.sgd,
    logitScale: config.logitScale,
    keepMomentum: config.momentum === "reference" && method.referenceMomentum === "keep",
  };
}

/** A client's trained factors, the factors it started from, and its loss. */
export interface TrainedClient {
  client: number;
  start: LoraFactors;
  result: LocalResult;
}

/**
 * The client step: local training of client `task.client` from where the method starts it, on
 * the client's named batch stream. Updates the client's carried state (momentum, kept factors).
 */
export async function trainClient(
  backbone: SharedBackbone,
  state: ClientState,
  task: ClientTask,
): Promise<TrainedClient> {
  const { method, phase, round, phaseIndex, client, seed } = task;
  const start = method.startFactors({
    global: task.global,
    client: state,
    clientIndex: client,
    round,
    phaseIndex,
    rank: task.rank,
    freshLora: () =>
      initLora(backbone.vision.config, task.rank, streamRng(seed, "fresh-lora", round, client)),
  });
  const result = await trainLocal(backbone, {
    split: task.split,
    indices: state.indices,
    start,
    train: phase.train,
    epochs: task.localEpochs,
    batchSize: task.batchSize,
    sgd: task.sgd,
    logitScale: task.logitScale,
    dynamicRank: method.local.dynamicRank,
    rng: streamRng(seed, "local", round, phaseIndex, client),
    momentum: task.keepMomentum ? state.momentum : undefined,
    residual: task.merged,
  });
  if (task.keepMomentum) state.momentum = result.momentum;
  return { client, start, result };
}

/** Why a client's update cannot be aggregated, or null (shape, finiteness, loss). */
export function faultOf(trained: TrainedClient, dims: LoraDims): string | null {
  const { start, result } = trained;
  try {
    // The update must have the shapes of the factors the client started from.
    checkFactors(result.factors, { ...dims, rank: start.A[0].length / dims.dIn }, "client update");
  } catch (err) {
    return (err as Error).message;
  }
  if (!allFinite(result.factors)) return "non-finite values in the update";
  if (!Number.isFinite(result.loss)) return `non-finite training loss ${result.loss}`;
  return null;
}

/**
 * The cohort of one release (a phase of a round): every client, or each client independently with
 * probability q = `participation` (Poisson sampling), drawn from its own named stream. The cohort
 * may be empty: forcing a client in would make the inclusion probability larger than the q the
 * accountant uses (docs/privacy.md, "Client sampling"). `stream`, when given, replaces the seed's
 * named stream (a run with secret noise draws its cohorts from its key).
 *
 * @example
 * ```ts
 * sampleParticipants({ numClients: 4, participation: 1, seed: 10 }, 0, 0); // [0, 1, 2, 3]
 * ```
 */
export function sampleParticipants(
  config: { numClients: number; participation: number; seed: number },
  round: number,
  phaseIndex: number,
  stream?: Rng,
): number[] {
  const all = Array.from({ length: config.numClients }, (_, k) => k);
  if (config.participation >= 1) return all;
  const rng = stream ??
    (phaseIndex === 0
      ? streamRng(config.seed, "participants", round)
      : streamRng(config.seed, "participants", round, phaseIndex));
  return all.filter(() => rng.uniform() < config.participation);
}

/**
 * Aggregation weights of the clients whose updates are combined, and the largest weight any
 * client could have had (it fixes the noise scale before anyone's data is seen).
 *
 * * Fixed denominator (strict calibration): client k weighs p_k / q, with p_k its
 *   full-participation weight (1/K, or its share of the training images) and q the
 *   participation rate, whoever was sampled and whoever failed. The weights then sum to the
 *   realised fraction of the expected cohort, the remaining mass stays on the global factors (an
 *   absent client counts as a zero update), and one client moves the sum by at most
 *   (max p_k / q)·C whatever the others do (docs/privacy.md, "Client sampling").
 * * Otherwise: p_k renormalised over the clients combined, as FedAvg does.
 *
 * Ids ≥ K are audit canaries; they weigh as one more uniform client.
 */
export function aggregationWeights(
  args: {
    numClients: number;
    participation: number;
    /** Each client's full-participation weight before normalisation (1, or its image count). */
    raw: (k: number) => number;
    fixedDenominator: boolean;
  },
  combined: readonly number[],
): { weights: number[]; maxWeight: number } {
  const K = args.numClients;
  const raw = (k: number) => k < K ? args.raw(k) : 1;
  const normalised = (ks: readonly number[]) => {
    const total = ks.reduce((a, k) => a + raw(k), 0);
    return ks.map((k) => raw(k) / total);
  };
  if (args.fixedDenominator) {
    const q = args.participation;
    const p = normalised(Array.from({ length: K }, (_, k) => k));
    const pk = (k: number) => k < K ? p[k] : 1 / K;
    return { weights: combined.map((k) => pk(k) / q), maxWeight: Math.max(...p) / q };
  }
  const weights = normalised(combined);
  return { weights, maxWeight: Math.max(0, ...weights) };
}

/** One release's inputs on the server. */
export interface ServerRelease {
  method: Method;
  mechanism: Mechanism;
  phase: Phase;
  /** 1-based round. */
  round: number;
  phaseIndex: number;
  global: LoraFactors;
  dims: LoraDims;
  loraScale: number;
  numClients: number;
  seed: number;
  /** The updates to combine (clients, and audit canaries), with their weights. */
  updates: { client: number; start: LoraFactors; factors: LoraFactors; weight: number }[];
  /**
   * Releases already made by their clients (a site of a cross-process federation), by client
   * id; an update whose client has one here is not released again (its weight is the server's).
   */
  released?: ReadonlyMap<number, ClientRelease>;
  maxWeight: number;
  /** The noise stream of a client id or "central" (default: the run's named `noise` streams). */
  noiseRng?: (label: string | number) => Rng;
}

/** The run's seeded noise stream of a client id or "central" in one release (1-based round). */
export function releaseNoise(
  seed: number,
  round: number,
  phaseIndex: number,
): (label: string | number) => Rng {
  return (label) => streamRng(seed, "noise", round - 1, phaseIndex, label);
}

/**
 * The client's release step: what client `update.client` sends for one phase (clipped, and noised
 * by itself where the mechanism noises per client), on its own named noise stream. A site of a
 * cross-process federation calls it on its trained update; {@link aggregateRelease} calls it for
 * the clients of one process.
 */
export function releaseClient(s: {
  mechanism: Mechanism;
  phase: Phase;
  round: number;
  phaseIndex: number;
  dims: LoraDims;
  numClients: number;
  seed: number;
  update: ServerRelease["updates"][number];
  noiseRng?: (label: string | number) => Rng;
}): ClientRelease {
  return s.mechanism.clientRelease({
    round: s.round,
    phase: s.phase,
    dims: s.dims,
    update: s.update,
    numClients: s.numClients,
    noiseRng: s.noiseRng ?? releaseNoise(s.seed, s.round, s.phaseIndex),
  });
}

/**
 * The aggregate step: each client's release (clip, and per-client noise, {@link releaseClient}),
 * then the mechanism combines them (with the method's combination), adds central noise and
 * records the release; the method's deviation of what the server combined is measured.
 */
export function aggregateRelease(s: ServerRelease): ReleaseOutput & { deviation: number } {
  const ctx = { global: s.global, phase: s.phase, dims: s.dims, loraScale: s.loraScale };
  const noiseRng = s.noiseRng ?? releaseNoise(s.seed, s.round, s.phaseIndex);
  const releases = s.updates.map((update) => {
    const remote = s.released?.get(update.client);
    return remote
      ? { ...remote, weight: update.weight }
      : releaseClient({ ...s, update, noiseRng });
  });
  const out = s.mechanism.aggregate({
    round: s.round,
    phase: s.phase,
    global: s.global,
    dims: s.dims,
    updates: s.updates,
    maxWeight: s.maxWeight,
    numClients: s.numClients,
    noiseRng,
    combine: (received) => s.method.combine(received, ctx),
  }, releases);
  return { ...out, deviation: s.method.deviation(out.received, ctx) };
}

/** The record step: the phase's line of the round record. */
export function phaseRecord(
  phase: Phase,
  participants: number[],
  canaries: number[] | null,
  losses: number[],
  out: ReleaseOutput & { deviation: number },
  excluded: PhaseRecord["excluded"],
  dims: LoraDims,
  loraScale: number,
): PhaseRecord {
  return {
    phase: phase.name,
    participants,
    ...(canaries ? { canaries } : {}),
    trainLoss: mean(losses),
    deviation: out.deviation,
    noiseEnergy: noiseEnergyOf(out, dims, loraScale),
    peerSigmaMax: out.peerSigmaMax,
    clippedFraction: out.clippedFraction,
    meanUpdateNorm: out.meanUpdateNorm,
    maxReleaseNorm: out.maxReleaseNorm,
    effectiveNoiseMultiplier: out.record?.noiseMultiplier ?? null,
    excluded,
  };
}

/**
 * The noise that reached the model's update in a release: NaN where the server never held the
 * un-noised combination, 0 where nothing was noised; with a dense merge into the frozen weights,
 * the noise in the merge counts too, Σ_i ‖s·(B_i A_i − B'_i A'_i) + (M_i − M'_i)‖_F².
 */
function noiseEnergyOf(out: ReleaseOutput, dims: LoraDims, loraScale: number): number {
  if (out.clean === null) return NaN;
  if (out.global === out.clean) return 0; // nothing noised: published as combined
  const merge = out.mergeIntoFrozen;
  if (merge === undefined) return noiseEnergy(out.global, out.clean, dims, loraScale);
  // A merge the un-noised combination did not make: what reached the update is unknown.
  if (out.cleanMerge === undefined) return NaN;
  let total = 0;
  for (let i = 0; i < dims.adapters; i++) {
    const d = Float64Array.from(merge[i], (v, j) => v - out.cleanMerge![i][j]);
    addScaledProduct(d, out.global.B[i], out.global.A[i], loraScale, dims);
    addScaledProduct(d, out.clean.B[i], out.clean.A[i], -loraScale, dims);
    for (const v of d) total += v * v;
  }
  return total;
}

/** Σ_i s²·‖B_i A_i − B'_i A'_i‖_F² between the published and the un-noised global factors. */
function noiseEnergy(
  next: LoraFactors,
  clean: LoraFactors,
  dims: LoraDims,
  loraScale: number,
): number {
  let total = 0;
  for (let i = 0; i < dims.adapters; i++) {
    total += loraScale ** 2 *
      productDifferenceSqNorm(next.B[i], next.A[i], clean.B[i], clean.A[i], dims);
  }
  return total;
}

/** ‖B₁A₁ − B₂A₂‖_F² in float64 via (B₁−B₂)A₁ + B₂(A₁−A₂) and r×r Gram matrices. */
function productDifferenceSqNorm(
  B1: Float32Array,
  A1: Float32Array,
  B2: Float32Array,
  A2: Float32Array,
  { dOut, dIn }: LoraDims,
): number {
  const r = A1.length / dIn;
  // U = [B₁−B₂ | B₂] (dOut×2r), V = [A₁ ; A₁−A₂] (2r×dIn); ‖UV‖² = tr(UᵀU · VVᵀ).
  const m = 2 * r;
  const U = new Float64Array(dOut * m);
  for (let i = 0; i < dOut; i++) {
    for (let c = 0; c < r; c++) {
      U[i * m + c] = B1[i * r + c] - B2[i * r + c];
      U[i * m + r + c] = B2[i * r + c];
    }
  }
  const V = new Float64Array(m * dIn);
  for (let c = 0; c < r; c++) {
    for (let j = 0; j < dIn; j++) {
      V[c * dIn + j] = A1[c * dIn + j];
      V[(r + c) * dIn + j] = A1[c * dIn + j] - A2[c * dIn + j];
    }
  }
  const gu = new Float64Array(m * m);
  for (let i = 0; i < dOut; i++) {
    for (let a = 0; a < m; a++) {
      const ua = U[i * m + a];
      if (ua === 0) continue;
      for (let b = 0; b < m; b++) gu[a * m + b] += ua * U[i * m + b];
    }
  }
  let total = 0;
  for (let a = 0; a < m; a++) {
    for (let b = 0; b < m; b++) {
      if (gu[a * m + b] === 0) continue;
      let vv = 0;
      for (let j = 0; j < dIn; j++) vv += V[b * dIn + j] * V[a * dIn + j];
      total += gu[a * m + b] * vv;
    }
  }
  return Math.max(0, total);
}

/** The arithmetic mean; NaN for no values. */
export function mean(xs: number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}
