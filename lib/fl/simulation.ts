/**
 * The federated simulation (SPEC §2): rounds of named steps — configure the participating
 * clients, train them locally, aggregate their releases (with DP when on), evaluate — where a
 * method (`methods.ts`) decides only what each phase trains, releases and regulates.
 *
 * Every round appends one record to `<outDir>/records.jsonl`, writes the global LoRA factors to
 * `<outDir>/checkpoints/round-NNNN.safetensors` and the resumable state to `<outDir>/state.*`,
 * all atomically; `resume: true` continues a killed run and ends with the same results as an
 * uninterrupted one (every random stream is derived from the seed, `streams.ts`).
 *
 * @example
 * ```ts
 * const result = await runFederated(backbone, dataset, { ...defaultConfig(), rounds: 3 });
 * result.best.test?.accuracy;
 * ```
 * @module
 */
import { join } from "node:path";
import { tf } from "../backend.ts";
import type { ImageDataset } from "../data/dataset.ts";
import { dirichletPartition, iidPartition } from "../data/partition.ts";
import { appendLineAtomic, writeFileAtomic, writeJsonAtomic } from "../io/atomic.ts";
import { initLora } from "../model/lora.ts";
import { readSafetensors, writeSafetensors } from "../model/safetensors.ts";
import type { Metrics } from "../metrics/classification.ts";
import { selectionScore } from "../metrics/classification.ts";
import { aggregatePhase, calibrate, type Calibration, type DpSettings } from "./aggregate.ts";
import { evaluateSplit } from "./evaluate.ts";
import { allFinite, checkFactors, cloneFactors, type LoraFactors } from "./factors.ts";
import { type LocalResult, type SgdOptions, trainLocal } from "./local.ts";
import { type Method, type MethodOptions, resolveMethod } from "./methods.ts";
import { streamRng } from "./streams.ts";
import type { SharedBackbone } from "./backbone.ts";
import {
  closeRound,
  createLedger,
  type LedgerState,
  recordRelease,
  restoreLedger,
  spentEpsilon,
} from "../privacy/ledger.ts";

/** Everything that defines a run; saved as `config.json` beside the results. */
export interface FederatedConfig {
  method: MethodOptions;
  seed: number;
  numClients: number;
  rounds: number;
  localEpochs: number;
  /** Per-client batch size (the reference: global batch // K). */
  batchSize: number;
  sgd: SgdOptions;
  /** Dirichlet label skew α, or `iid: true` for an equal random split. */
  split: { iid: boolean; dirichletAlpha: number };
  /** Aggregation weights: uniform 1/K (reference) or proportional to client data size. */
  weights: "uniform" | "size";
  /** Fraction of clients taking part in each round (1 = all, the reference). */
  participation: number;
  /**
   * Optimiser state between local trainings: `reset` (a new optimiser every round and phase, for
   * every method — the fair comparison) or `reference` (baselines keep each client's momentum
   * across rounds, DEeR resets every phase, as the reference code does).
   */
  momentum: "reset" | "reference";
  /** Differential privacy, or null for none. */
  dp: DpSettings | null;
  /** `logit_scale` the server hands out every round (ln(1/0.07)). */
  logitScale: number;
  evalBatchSize: number;
}

/** SPEC §2 defaults (K = 12, α = 0.1, T = 50, E = 5, SGD 0.01/0.9/5e-4), method DEeR, no DP. */
export function defaultConfig(): FederatedConfig {
  return {
    method: { method: "DEeR", module1: true, module2: true },
    seed: 10,
    numClients: 12,
    rounds: 50,
    localEpochs: 5,
    batchSize: 10,
    sgd: { lr: 0.01, momentum: 0.9, weightDecay: 5e-4 },
    split: { iid: false, dirichletAlpha: 0.1 },
    weights: "uniform",
    participation: 1,
    momentum: "reset",
    dp: null,
    logitScale: Math.log(1 / 0.07),
    evalBatchSize: 64,
  };
}

/** Per-phase instrumentation inside a round record. */
export interface PhaseRecord {
  phase: string;
  trainLoss: number;
  /** Σ over adapters of ‖D‖_F of the factors the server combined (SPEC §3). */
  deviation: number;
  /** Σ over adapters of ‖ΔW_noisy − ΔW_clean‖_F² of the global update (ΔW = s·B·A). */
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

/** One line of `records.jsonl`. */
export interface RoundRecord {
  seed: number;
  round: number;
  method: string;
  participants: number[];
  trainLoss: number;
  phases: PhaseRecord[];
  deviation: number;
  noiseEnergy: number;
  peerSigmaMax: number;
  val: Metrics;
  /** Test metrics when val improved this round (SPEC §2 selection), else null. */
  test: Metrics | null;
  bestRound: number;
  epsilon: { nominal: number | null; spent: number | null; delta: number | null };
  seconds: number;
  liveTensors: number;
}

/** The outcome of one run (one seed). */
export interface RunResult {
  config: FederatedConfig;
  method: string;
  records: RoundRecord[];
  best: { round: number; val: Metrics | null; test: Metrics | null };
  calibration: Calibration | null;
  epsilonSpent: number | null;
  /** The privacy ledger (every release and the ε spent per round), null without DP. */
  ledger: LedgerState | null;
  seconds: number;
}

/** Options of {@link runFederated} that do not change results. */
export interface RunOptions {
  /** Folder for records, checkpoints and resumable state; nothing is written without it. */
  outDir?: string;
  /** Continue from `outDir/state.json` if present. */
  resume?: boolean;
  /** Called after each round. */
  onRound?: (record: RoundRecord) => void;
  /** Called after each client's local training (for progress output). */
  onClient?: (info: { round: number; phase: string; done: number; total: number }) => void;
  /** Stop after this many rounds of this invocation (used to test resuming). */
  stopAfterRounds?: number;
  /**
   * Replaces a client's update before the server sees it — for fault and adversary experiments
   * (a crashing client, non-finite or wrongly shaped updates). Throwing excludes the client.
   */
  alterUpdate?: (
    where: { round: number; phase: string; client: number },
    update: LocalResult,
  ) => LocalResult;
}

interface ClientState {
  indices: number[];
  momentum?: Float32Array[];
  /** FedSA-LoRA: the factors this client keeps. */
  local?: LoraFactors;
}

interface SavedState {
  version: 1;
  configKey: string;
  completedRounds: number;
  best: RunResult["best"];
  ledger: LedgerState | null;
  seconds: number;
}

/** Validates a configuration; throws naming the field and the fix. */
export function validateConfig(c: FederatedConfig): void {
  const need = (ok: boolean, msg: string) => {
    if (!ok) throw new Error(msg);
  };
  need(
    Number.isInteger(c.numClients) && c.numClients >= 1,
    `node_num ${c.numClients}: need an integer ≥ 1`,
  );
  need(Number.isInteger(c.rounds) && c.rounds >= 1, `T ${c.rounds}: need an integer ≥ 1`);
  need(
    Number.isInteger(c.localEpochs) && c.localEpochs >= 1,
    `E ${c.localEpochs}: need an integer ≥ 1`,
  );
  need(
    Number.isInteger(c.batchSize) && c.batchSize >= 1,
    `batchsize ${c.batchSize}: need an integer ≥ 1`,
  );
  need(c.sgd.lr > 0 && Number.isFinite(c.sgd.lr), `lr ${c.sgd.lr}: need a finite number > 0`);
  need(c.sgd.momentum >= 0 && c.sgd.momentum < 1, `momentum ${c.sgd.momentum}: need 0 ≤ μ < 1`);
  need(c.sgd.weightDecay >= 0, `weight decay ${c.sgd.weightDecay}: need ≥ 0`);
  need(
    c.split.iid || c.split.dirichletAlpha > 0,
    `dirichlet_alpha ${c.split.dirichletAlpha}: need > 0 (or --iid 1)`,
  );
  need(
    c.participation > 0 && c.participation <= 1,
    `participation ${c.participation}: need 0 < q ≤ 1`,
  );
  need(Number.isSafeInteger(c.seed), `seed ${c.seed}: need an integer`);
  const method = resolveMethod(c.method);
  if (c.dp) {
    need(
      c.dp.epsilon > 0 && Number.isFinite(c.dp.epsilon),
      `epsilon ${c.dp.epsilon}: need a finite ε > 0`,
    );
    need(
      c.dp.clip > 0 && Number.isFinite(c.dp.clip),
      `C ${c.dp.clip}: need a finite clip bound > 0`,
    );
    if (c.dp.delta !== undefined) {
      need(c.dp.delta > 0 && c.dp.delta < 1, `delta ${c.dp.delta}: need 0 < δ < 1`);
    }
    need(
      !(c.dp.calibration === "strict" &&
        method.phases.some((p) => p.regulate && p.release.length > 1)),
      `${method.label} with strict calibration: regulated noise shaped by a client's own, private ` +
        `peer factor has no client-level guarantee; use --module1 1 or --calibration paper`,
    );
    need(
      !(c.dp.calibration === "strict" && method.foldResidual),
      `${method.label} with strict calibration: the folded residual Σp_k·B_k·A_k is computed from ` +
        `the clients' un-noised factors, so it has no client-level guarantee; use ` +
        `--calibration paper or another method`,
    );
    need(
      !(c.dp.calibration === "paper" && c.participation < 1),
      `participation ${c.participation} with paper calibration: the reference assumes full ` +
        `participation; use --calibration strict for client sampling`,
    );
  }
}

/** Deterministic key of the settings a resume must not change. */
function configKey(c: FederatedConfig): string {
  return JSON.stringify(c);
}

/**
 * Runs one seed of a federated simulation on a shared backbone and returns its records and the
 * test metrics at the best-validation round.
 */
export async function runFederated(
  backbone: SharedBackbone,
  data: ImageDataset,
  config: FederatedConfig,
  opts: RunOptions = {},
): Promise<RunResult> {
  validateConfig(config);
  const method = resolveMethod(config.method);
  const K = config.numClients;
  const { dims } = backbone;
  const started = performance.now();

  // Configure: split the training data, initialise the global factors, calibrate DP.
  const labels = Array.from(data.train.labels);
  if (K > labels.length) {
    throw new Error(
      `numClients ${K} exceeds the ${labels.length} training images of ${data.name}: some ` +
        `clients would hold none; use at most ${labels.length} clients`,
    );
  }
  const parts = config.split.iid
    ? iidPartition(labels.length, K, config.seed)
    : dirichletPartition(labels, K, config.split.dirichletAlpha, config.seed);
  const empty = parts.filter((p) => p.length === 0).length;
  if (empty > 0) {
    console.error(
      `deer: ${empty} of ${K} clients hold no training images (Dirichlet α = ` +
        `${config.split.dirichletAlpha}, seed ${config.seed}); they train nothing and release ` +
        `the global factors (plus DP noise, if on)`,
    );
  }
  const clients: ClientState[] = parts.map((indices) => ({ indices }));
  const sizeWeights = parts.map((p) => p.length / labels.length);
  let global: LoraFactors = initLora(
    backbone.vision.config,
    backbone.rank,
    streamRng(config.seed, "init"),
  );
  checkFactors(global, dims, "initial LoRA factors");
  const calibration = config.dp
    ? calibrate(config.dp, {
      method,
      numClients: K,
      participation: config.participation,
      rounds: config.rounds,
      localEpochs: config.localEpochs,
      batchSize: config.batchSize,
      clientSizes: parts.map((p) => p.length),
      adapters: dims.adapters,
    })
    : null;
  let ledger = calibration ? createLedger({ delta: calibration.accountingDelta }) : null;
  if (calibration?.warning) console.error(`deer: ${calibration.warning}`);

  // FedEx-LoRA: the aggregation residuals folded into the frozen q/k/v weights so far.
  let residual: Float32Array[] | undefined = method.foldResidual
    ? Array.from({ length: dims.adapters }, () => new Float32Array(dims.dOut * dims.dIn))
    : undefined;
  let best: RunResult["best"] = { round: -1, val: null, test: null };
  let startRound = 0;
  let carriedSeconds = 0;
  const records: RoundRecord[] = [];
  const out = opts.outDir;
  if (out) {
    await Deno.mkdir(out, { recursive: true });
    if (opts.resume) {
      const restored = await loadState(out, config, clients, K);
      if (restored) {
        global = restored.global;
        if (residual) residual = restored.residual ?? residual;
        startRound = restored.state.completedRounds;
        best = restored.state.best;
        carriedSeconds = restored.state.seconds;
        if (restored.state.ledger) ledger = restoreLedger(restored.state.ledger);
        records.push(...restored.records);
      }
    }
    if (startRound === 0) {
      await writeJsonAtomic(join(out, "config.json"), { ...config, methodLabel: method.label });
      await Deno.remove(join(out, "records.jsonl")).catch(() => {});
    }
  }

  const liveAtStart = tf.memory().numTensors;
  let roundsThisCall = 0;
  for (let round = startRound; round < config.rounds; round++) {
    if (opts.stopAfterRounds !== undefined && roundsThisCall >= opts.stopAfterRounds) break;
    const t0 = performance.now();
    const participants = sampleParticipants(config, round);
    const phases: PhaseRecord[] = [];
    for (const [phaseIndex, phase] of method.phases.entries()) {
      const results: { client: number; result: LocalResult | null; error?: string }[] = [];
      for (const [done, k] of participants.entries()) {
        const client = clients[k];
        const start = client.local ? mergeLocal(global, client.local, method.keepLocal) : global;
        const keepMomentum = config.momentum === "reference" && method.referenceKeepsMomentum;
        try {
          const result = await trainLocal(backbone, {
            split: data.train,
            indices: client.indices,
            start,
            train: phase.train,
            epochs: config.localEpochs,
            batchSize: config.batchSize,
            sgd: config.sgd,
            logitScale: config.logitScale,
            dynamicRank: method.dynamicRank,
            rng: streamRng(config.seed, "local", round, phaseIndex, k),
            momentum: keepMomentum ? client.momentum : undefined,
            residual,
          });
          if (keepMomentum) client.momentum = result.momentum;
          const altered = opts.alterUpdate?.(
            { round: round + 1, phase: phase.name, client: k },
            result,
          );
          results.push({ client: k, result: altered ?? result });
        } catch (err) {
          results.push({ client: k, result: null, error: (err as Error).message });
        }
        opts.onClient?.({ round, phase: phase.name, done: done + 1, total: participants.length });
      }
      const excluded: PhaseRecord["excluded"] = [];
      const valid = results.filter(({ client, result, error }) => {
        const reason = error ?? faultOf(result!, dims);
        if (reason) excluded.push({ client, reason });
        return !reason;
      });
      if (valid.length === 0) {
        throw new Error(
          `round ${round + 1} phase ${phase.name}: every client failed (${
            excluded.map((e) => `client ${e.client}: ${e.reason}`).join("; ")
          })`,
        );
      }
      const weightsRaw = valid.map(({ client }) =>
        config.weights === "size" ? sizeWeights[client] : 1
      );
      const total = weightsRaw.reduce((a, b) => a + b, 0);
      const agg = aggregatePhase({
        global,
        clients: valid.map(({ client, result }, i) => ({
          client,
          factors: result!.factors,
          weight: weightsRaw[i] / total,
        })),
        phase,
        dims,
        loraScale: backbone.loraScale,
        calibration,
        numClients: K,
        rng: (label: string | number) => streamRng(config.seed, "noise", round, phaseIndex, label),
        foldResidual: method.foldResidual,
      });
      if (residual && agg.residual) {
        residual.forEach((r, i) => {
          const inc = agg.residual![i];
          for (let j = 0; j < r.length; j++) r[j] += inc[j];
        });
      }
      // FedSA-LoRA: kept-local factors go back to their clients, never to the server.
      if (method.keepLocal.length > 0) {
        for (const { client, result } of valid) {
          clients[client].local = cloneFactors(result!.factors);
        }
      }
      global = agg.global;
      if (ledger && agg.release) {
        ledger = recordRelease(ledger, { ...agg.release, round: round + 1, phase: phase.name });
      }
      phases.push({
        phase: phase.name,
        trainLoss: mean(valid.map(({ result }) => result!.loss)),
        deviation: agg.deviation,
        noiseEnergy: agg.noiseEnergy,
        peerSigmaMax: agg.peerSigmaMax,
        clippedFraction: agg.clippedFraction,
        meanUpdateNorm: agg.meanUpdateNorm,
        maxReleaseNorm: agg.maxReleaseNorm,
        effectiveNoiseMultiplier: agg.release?.noiseMultiplier ?? null,
        excluded,
      });
    }

    // Evaluate on val; on improvement, on test (SPEC §2 selection).
    const evalFactors = evaluationFactors(global, clients, participants, method);
    const val = await evaluateSplit(
      backbone,
      evalFactors,
      data.val,
      config.evalBatchSize,
      residual,
    );
    let test: Metrics | null = null;
    if (best.val === null || selectionScore(val) > selectionScore(best.val)) {
      test = await evaluateSplit(backbone, evalFactors, data.test, config.evalBatchSize, residual);
      best = { round: round + 1, val, test };
    }
    if (ledger) {
      ledger = closeRound(ledger, round + 1, { nominalEpsilon: calibration!.nominalEpsilon });
    }
    const spent = ledger ? spentEpsilon(ledger) : null;
    const record: RoundRecord = {
      seed: config.seed,
      round: round + 1,
      method: method.label,
      participants,
      trainLoss: mean(phases.map((p) => p.trainLoss)),
      phases,
      deviation: phases.reduce((s, p) => s + p.deviation, 0),
      noiseEnergy: phases.reduce((s, p) => s + p.noiseEnergy, 0),
      peerSigmaMax: Math.max(0, ...phases.map((p) => p.peerSigmaMax)),
      val,
      test,
      bestRound: best.round,
      epsilon: {
        nominal: calibration ? calibration.nominalEpsilon : null,
        spent,
        delta: calibration ? calibration.accountingDelta : null,
      },
      seconds: (performance.now() - t0) / 1000,
      liveTensors: tf.memory().numTensors - liveAtStart,
    };
    records.push(record);
    roundsThisCall++;
    if (out) {
      await appendLineAtomic(join(out, "records.jsonl"), JSON.stringify(record));
      await writeSafetensors(
        join(out, "checkpoints", `round-${String(round + 1).padStart(4, "0")}.safetensors`),
        factorTensors(global, dims),
        { method: method.label, round: String(round + 1), seed: String(config.seed) },
      );
      await saveState(
        out,
        config,
        {
          version: 1,
          configKey: configKey(config),
          completedRounds: round + 1,
          best,
          ledger,
          seconds: carriedSeconds + (performance.now() - started) / 1000,
        },
        global,
        clients,
        residual,
      );
    }
    opts.onRound?.(record);
  }

  return {
    config,
    method: method.label,
    records,
    best,
    calibration,
    epsilonSpent: ledger ? spentEpsilon(ledger) : null,
    ledger,
    seconds: carriedSeconds + (performance.now() - started) / 1000,
  };
}

/** Clients of a round: all, or a seeded Bernoulli(q) sample (at least one). */
function sampleParticipants(config: FederatedConfig, round: number): number[] {
  const all = Array.from({ length: config.numClients }, (_, k) => k);
  if (config.participation >= 1) return all;
  const rng = streamRng(config.seed, "participants", round);
  const chosen = all.filter(() => rng.uniform() < config.participation);
  return chosen.length > 0 ? chosen : [rng.int(config.numClients)];
}

/** Why a client's update cannot be aggregated, or null. */
function faultOf(result: LocalResult, dims: SharedBackbone["dims"]): string | null {
  try {
    checkFactors(result.factors, dims, "client update");
  } catch (err) {
    return (err as Error).message;
  }
  if (!allFinite(result.factors)) return "non-finite values in the update";
  if (!Number.isFinite(result.loss)) return `non-finite training loss ${result.loss}`;
  return null;
}

/** The global factors with the client's kept-local factors substituted (FedSA-LoRA). */
function mergeLocal(
  global: LoraFactors,
  local: LoraFactors,
  keep: readonly ("A" | "B")[],
): LoraFactors {
  return {
    A: keep.includes("A") ? local.A : global.A,
    B: keep.includes("B") ? local.B : global.B,
  };
}

/**
 * The factors the global model is evaluated with. FedSA-LoRA has no global B: it is evaluated
 * with the average of the participants' own B (for measurement only; never released).
 */
function evaluationFactors(
  global: LoraFactors,
  clients: ClientState[],
  participants: number[],
  method: Method,
): LoraFactors {
  if (method.keepLocal.length === 0) return global;
  const locals = participants.map((k) => clients[k].local).filter((l) => l !== undefined);
  if (locals.length === 0) return global;
  const avg = (pick: (f: LoraFactors) => Float32Array[]) =>
    pick(global).map((_, i) => {
      const out = new Float32Array(pick(global)[i].length);
      for (const l of locals) {
        const t = pick(l)[i];
        for (let j = 0; j < out.length; j++) out[j] += t[j] / locals.length;
      }
      return out;
    });
  return {
    A: method.keepLocal.includes("A") ? avg((f) => f.A) : global.A,
    B: method.keepLocal.includes("B") ? avg((f) => f.B) : global.B,
  };
}

function mean(xs: number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** The factors as named tensors for a safetensors file (`lora.<i>.A`, `lora.<i>.B`). */
function factorTensors(
  f: LoraFactors,
  dims: SharedBackbone["dims"],
  prefix = "lora",
): Record<string, { shape: number[]; data: Float32Array }> {
  const out: Record<string, { shape: number[]; data: Float32Array }> = {};
  f.A.forEach((a, i) => (out[`${prefix}.${i}.A`] = { shape: [dims.rank, dims.dIn], data: a }));
  f.B.forEach((b, i) => (out[`${prefix}.${i}.B`] = { shape: [dims.dOut, dims.rank], data: b }));
  return out;
}

async function saveState(
  out: string,
  _config: FederatedConfig,
  state: SavedState,
  global: LoraFactors,
  clients: ClientState[],
  residual: Float32Array[] | undefined,
): Promise<void> {
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  global.A.forEach((a, i) => (tensors[`global.${i}.A`] = { shape: [a.length], data: a }));
  global.B.forEach((b, i) => (tensors[`global.${i}.B`] = { shape: [b.length], data: b }));
  residual?.forEach((r, i) => (tensors[`residual.${i}`] = { shape: [r.length], data: r }));
  clients.forEach((c, k) => {
    c.momentum?.forEach((
      m,
      j,
    ) => (tensors[`client.${k}.momentum.${j}`] = { shape: [m.length], data: m }));
    c.local?.A.forEach((
      a,
      i,
    ) => (tensors[`client.${k}.local.${i}.A`] = { shape: [a.length], data: a }));
    c.local?.B.forEach((
      b,
      i,
    ) => (tensors[`client.${k}.local.${i}.B`] = { shape: [b.length], data: b }));
  });
  // The tensors go to a file named by the round, then the JSON that names that file: a crash
  // between the two leaves the previous JSON pointing at the previous, complete tensors file.
  const tensorFile = `state-round-${String(state.completedRounds).padStart(4, "0")}.safetensors`;
  await writeSafetensors(join(out, tensorFile), tensors, { round: String(state.completedRounds) });
  await writeJsonAtomic(join(out, "state.json"), { ...state, tensorFile });
  if (state.completedRounds > 1) {
    const old = `state-round-${String(state.completedRounds - 1).padStart(4, "0")}.safetensors`;
    await Deno.remove(join(out, old)).catch(() => {});
  }
}

async function loadState(
  out: string,
  config: FederatedConfig,
  clients: ClientState[],
  K: number,
): Promise<
  | { state: SavedState; global: LoraFactors; records: RoundRecord[]; residual?: Float32Array[] }
  | null
> {
  let raw: string;
  try {
    raw = await Deno.readTextFile(join(out, "state.json"));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  const state = JSON.parse(raw) as SavedState & { tensorFile: string };
  if (state.configKey !== configKey(config)) {
    throw new Error(
      `${join(out, "state.json")} was written by a run with other settings; resume with the same ` +
        `flags, or choose a new --exp_name / output folder`,
    );
  }
  const { tensors } = await readSafetensors(join(out, state.tensorFile));
  const take = (name: string) => {
    const t = tensors[name];
    if (!t) {
      throw new Error(
        `${
          join(out, state.tensorFile)
        }: tensor "${name}" is missing; the state is damaged — start the run again without --resume`,
      );
    }
    return Float32Array.from(t.data as ArrayLike<number>);
  };
  const adapters = Object.keys(tensors).filter((n) => /^global\.\d+\.A$/.test(n)).length;
  const global: LoraFactors = {
    A: Array.from({ length: adapters }, (_, i) => take(`global.${i}.A`)),
    B: Array.from({ length: adapters }, (_, i) => take(`global.${i}.B`)),
  };
  for (let k = 0; k < K; k++) {
    const mom = Object.keys(tensors).filter((n) => n.startsWith(`client.${k}.momentum.`)).length;
    if (mom > 0) {
      clients[k].momentum = Array.from(
        { length: mom },
        (_, j) => take(`client.${k}.momentum.${j}`),
      );
    }
    if (tensors[`client.${k}.local.0.A`]) {
      clients[k].local = {
        A: Array.from({ length: adapters }, (_, i) => take(`client.${k}.local.${i}.A`)),
        B: Array.from({ length: adapters }, (_, i) => take(`client.${k}.local.${i}.B`)),
      };
    }
  }
  const lines = (await Deno.readTextFile(join(out, "records.jsonl")).catch(() => ""))
    .split("\n").filter((l) => l.trim() !== "");
  const records = lines.slice(0, state.completedRounds).map((l) => JSON.parse(l) as RoundRecord);
  if (records.length < state.completedRounds) {
    throw new Error(
      `${
        join(out, "records.jsonl")
      } has ${records.length} rounds but the state has ${state.completedRounds}; start the run again without --resume`,
    );
  }
  if (lines.length > state.completedRounds) {
    // A crash after the record but before the state: drop the unfinished round's record.
    await writeFileAtomic(
      join(out, "records.jsonl"),
      lines.slice(0, state.completedRounds).join("\n") + "\n",
    );
  }
  const residual = tensors["residual.0"]
    ? Array.from({ length: adapters }, (_, i) => take(`residual.${i}`))
    : undefined;
  return { state, global, records, residual };
}
