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
import { appendLineAtomic, writeJsonAtomic } from "../io/atomic.ts";
import { initLora } from "../model/lora.ts";
import type { Metrics } from "../metrics/classification.ts";
import { selectionScore } from "../metrics/classification.ts";
import {
  aggregatePhase,
  calibrate,
  type Calibration,
  type DpSettings,
  strictRelease,
} from "./aggregate.ts";
import { evaluateSplit } from "./evaluate.ts";
import { allFinite, checkFactors, cloneFactors, type LoraFactors } from "./factors.ts";
import { type LocalResult, type SgdOptions, trainLocal } from "./local.ts";
import { type Method, type MethodOptions, resolveMethod } from "./methods.ts";
import { streamRng } from "./streams.ts";
import { warn } from "../warnings.ts";
import { canaryDirection, canaryRelease, factorChange } from "./canaries.ts";
import { cosine } from "../privacy/audit.ts";
import type { SharedBackbone } from "./backbone.ts";
import { loadRunState, saveCheckpoint, saveRunState } from "./checkpoint.ts";
import {
  closeRound,
  createLedger,
  type LedgerState,
  recordRelease,
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
  /** The clients sampled for this release (all of them under full participation). */
  participants: number[];
  /** Audit runs only: the canaries included in this release (sampled like clients). */
  canaries?: number[];
  /** Mean training loss of the combined clients (NaN, written as null, for an empty cohort). */
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

/** Why and where the budget guard stopped a run (`stop.json`). */
export interface BudgetStop {
  reason: "budget";
  /** The first round that was not run (1-based). */
  round: number;
  /** ε spent by the completed rounds, and what the stopped round would have brought it to. */
  spentEpsilon: number;
  epsilonAfterRound: number;
  maxEpsilon: number;
  delta: number;
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
  /**
   * Set when the budget guard stopped the run: the first round not run, and the ε its releases
   * would have brought the run to (above `maxEpsilon`). Also saved as `<outDir>/stop.json`.
   */
  stopped: BudgetStop | null;
  /**
   * Audit runs: cosines of the global factors' total change with each inserted canary direction
   * and with each never-inserted one.
   */
  audit?: { inserted: number[]; held: number[] };
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
  /**
   * Stops the run when aborted: checked before every client's local training, so the round in
   * progress is abandoned and the saved state stays at the last completed round (resumable).
   * The run then throws the signal's reason.
   */
  signal?: AbortSignal;
  /** Stop after this many rounds of this invocation (used to test resuming). */
  stopAfterRounds?: number;
  /**
   * An empirical privacy audit: `count` canary clients whose release is a fixed random direction
   * of norm C (`canaries.ts`); the result then holds the final update's cosines with them and
   * with as many never-inserted directions (`RunResult.audit`). Uniform weights only.
   */
  canaries?: { count: number };
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
    if (c.dp.maxEpsilon !== undefined) {
      need(
        c.dp.maxEpsilon > 0 && Number.isFinite(c.dp.maxEpsilon),
        `max_epsilon ${c.dp.maxEpsilon}: need a finite ε > 0`,
      );
      need(
        c.dp.calibration === "strict",
        `max_epsilon with paper calibration: the paper mechanism's spent ε depends on what each ` +
          `release turns out to be, and its nominal ε is no guarantee to guard; use ` +
          `--calibration strict for a budget guard`,
      );
    }
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
  if (opts.canaries) {
    const n = opts.canaries.count;
    if (!(Number.isInteger(n) && n >= 2)) {
      throw new Error(`canaries.count ${n}: need an integer ≥ 2 (two Gaussians are fitted)`);
    }
    if (config.weights !== "uniform") {
      throw new Error(`canaries need uniform weights (a canary weighs as one client)`);
    }
  }
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
    : dirichletPartition(labels, K, config.split.dirichletAlpha, config.seed, {
      numClasses: data.classNames.length,
    });
  const empty = parts.filter((p) => p.length === 0).length;
  if (empty > 0) {
    warn(
      "empty-clients",
      `${empty} of ${K} clients hold no training images (Dirichlet α = ` +
        `${config.split.dirichletAlpha}, seed ${config.seed}); they train nothing and release ` +
        `the global factors (plus DP noise, if on)`,
    );
  }
  for (const split of ["val", "test"] as const) {
    const present = new Set(data[split].labels).size;
    if (present === 1) {
      warn(
        `one-class-${split}`,
        `the ${split} split of ${data.name} holds one class only: its AUC is undefined (no ` +
          `negatives to rank against) and is reported as NaN` +
          (split === "val"
            ? `; the best round is selected on accuracy + recall + precision + F1`
            : ""),
      );
    }
  }
  const clients: ClientState[] = parts.map((indices) => ({ indices }));
  const sizeWeights = parts.map((p) => p.length / labels.length);
  let global: LoraFactors = initLora(
    backbone.vision.config,
    backbone.rank,
    streamRng(config.seed, "init"),
  );
  checkFactors(global, dims, "initial LoRA factors");
  // An audit measures the global factors' total change from here (re-created on resume: the
  // factors come from the seed's `init` stream).
  const initialGlobal = opts.canaries ? cloneFactors(global) : null;
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
  if (calibration?.warning) warn("paper-calibration", calibration.warning);
  const expectedCohort = config.participation * K;
  if (config.dp?.calibration === "strict" && expectedCohort < 1) {
    warn(
      "small-cohort",
      `participation ${config.participation} with ${K} clients expects ${
        expectedCohort.toPrecision(2)
      } client per release: most releases include nobody, and the fixed-denominator average ` +
        `scales the noise by 1/(q·K) = ${(1 / expectedCohort).toPrecision(2)}, drowning the ` +
        `updates (the ε spent is still exact); raise participation or the number of clients`,
    );
  }

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
      const restored = await loadRunState<RoundRecord>(out, {
        config,
        configKey: configKey(config),
        method,
        dims,
        clients,
      });
      if (restored) {
        global = restored.global;
        if (residual) residual = restored.residual ?? residual;
        startRound = restored.state.completedRounds;
        best = restored.state.best;
        carriedSeconds = restored.state.seconds;
        ledger = restored.state.ledger;
        records.push(...restored.records);
      }
    }
    if (startRound === 0) {
      await writeJsonAtomic(join(out, "config.json"), { ...config, methodLabel: method.label });
      await Deno.remove(join(out, "records.jsonl")).catch(() => {});
    }
  }

  let stopped: BudgetStop | null = null;
  if (out) await Deno.remove(join(out, "stop.json")).catch(() => {});
  const liveAtStart = tf.memory().numTensors;
  let roundsThisCall = 0;
  for (let round = startRound; round < config.rounds; round++) {
    if (opts.stopAfterRounds !== undefined && roundsThisCall >= opts.stopAfterRounds) break;
    stopped = budgetStop(config, method, calibration, ledger, round);
    if (stopped) {
      if (out) await writeJsonAtomic(join(out, "stop.json"), stopped);
      break;
    }
    const t0 = performance.now();
    const phases: PhaseRecord[] = [];
    const cohorts: number[][] = [];
    for (const [phaseIndex, phase] of method.phases.entries()) {
      // Each release draws its own Poisson cohort: the accountant's assumption (docs/privacy.md).
      const participants = sampleParticipants(config, round, phaseIndex);
      cohorts.push(participants);
      const results: { client: number; result: LocalResult | null; error?: string }[] = [];
      for (const [done, k] of participants.entries()) {
        if (opts.signal) await stopIfAborted(opts.signal);
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
      if (valid.length === 0 && participants.length > 0) {
        throw new Error(
          `round ${round + 1} phase ${phase.name}: every client failed (${
            excluded.map((e) => `client ${e.client}: ${e.reason}`).join("; ")
          })`,
        );
      }
      // Audit canaries (opts.canaries): sampled like clients, each releases its fixed direction.
      const canaries = opts.canaries
        ? sampleParticipants(
          { ...config, numClients: opts.canaries.count, seed: config.seed + 1 },
          round,
          phaseIndex,
        )
        : [];
      const combined = [
        ...valid.map(({ client, result }) => ({ client, factors: result!.factors })),
        ...canaries.map((i) => ({
          client: K + i,
          factors: canaryRelease(
            global,
            canaryDirection(config.seed, "inserted", i, dims),
            phase.release,
            config.dp?.clip ?? 1,
            dims,
            config.dp?.calibration === "paper" ? "per-tensor" : "whole",
          ),
        })),
      ];
      const weighting = aggregationWeights(config, sizeWeights, combined.map((c) => c.client));
      const agg = aggregatePhase({
        global,
        clients: combined.map(({ client, factors }, i) => ({
          client,
          factors,
          weight: weighting.weights[i],
        })),
        maxWeight: weighting.maxWeight,
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
        participants,
        ...(opts.canaries ? { canaries } : {}),
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

    const participants = [...new Set(cohorts.flat())].sort((a, b) => a - b);
    // Evaluate on val; on improvement, on test (SPEC §2 selection).
    const evalFactors = evaluationFactors(global, clients, participants, method);
    const evaluate = async (split: "val" | "test"): Promise<Metrics> => {
      try {
        return await evaluateSplit(
          backbone,
          evalFactors,
          data[split],
          config.evalBatchSize,
          residual,
        );
      } catch (err) {
        // Non-finite scores come from the global factors, not from the split: say so here,
        // instead of a metrics error about probabilities.
        const message = (err as Error).message;
        if (!allFinite(evalFactors) || /not a finite number/.test(message)) {
          let largest = 0;
          for (const t of [...evalFactors.A, ...evalFactors.B]) {
            for (const v of t) largest = Math.max(largest, Math.abs(v));
          }
          throw new Error(
            `round ${round + 1}: the model's scores on ${split} are not finite with the global ` +
              `LoRA factors after aggregation (largest |entry| ${largest.toPrecision(3)}): the ` +
              `updates diverged — lower the learning rate (or bound the updates with DP's clip)`,
          );
        }
        throw new Error(`round ${round + 1}: evaluating on ${split}: ${message}`);
      }
    };
    const val = await evaluate("val");
    let test: Metrics | null = null;
    if (best.val === null || selectionScore(val) > selectionScore(best.val)) {
      test = await evaluate("test");
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
      await saveCheckpoint(out, round + 1, global, dims, {
        method: method.label,
        seed: config.seed,
      });
      await saveRunState(
        out,
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
    stopped,
    ...(opts.canaries
      ? { audit: canaryCosines(config.seed, dims, initialGlobal!, global, opts.canaries.count) }
      : {}),
    ledger,
    seconds: carriedSeconds + (performance.now() - started) / 1000,
  };
}

/**
 * The cohort of one release (a phase of a round): every client, or each client independently with
 * probability q = `participation` (Poisson sampling), drawn from its own named stream. The cohort
 * may be empty: forcing a client in would make the inclusion probability larger than the q the
 * accountant uses (docs/privacy.md, "Client sampling").
 *
 * @example
 * ```ts
 * sampleParticipants({ numClients: 4, participation: 1, seed: 10 }, 0, 0); // [0, 1, 2, 3]
 * ```
 */
export function sampleParticipants(
  config: Pick<FederatedConfig, "numClients" | "participation" | "seed">,
  round: number,
  phaseIndex: number,
): number[] {
  const all = Array.from({ length: config.numClients }, (_, k) => k);
  if (config.participation >= 1) return all;
  const rng = phaseIndex === 0
    ? streamRng(config.seed, "participants", round)
    : streamRng(config.seed, "participants", round, phaseIndex);
  return all.filter(() => rng.uniform() < config.participation);
}

/**
 * Aggregation weights of the clients whose updates are combined, and the largest weight any
 * client could have had (it fixes the noise scale before anyone's data is seen).
 *
 * * Strict calibration: the fixed-denominator average of DP-FedAvg — client k weighs p_k / q,
 *   with p_k its full-participation weight (1/K, or its share of the training images) and q the
 *   participation rate, whoever was sampled and whoever failed. The weights then sum to the
 *   realised fraction of the expected cohort, the remaining mass stays on the global factors
 *   (an absent client counts as a zero update), and one client moves the sum by at most
 *   (max p_k / q)·C whatever the others do. A denominator that counted the realised cohort
 *   would depend on the data and change the sensitivity (docs/privacy.md, "Client sampling").
 * * Otherwise (no DP, or the paper calibration with every client): p_k renormalised over the
 *   clients combined, as FedAvg does.
 */
function aggregationWeights(
  config: FederatedConfig,
  sizeWeights: number[],
  combined: number[],
): { weights: number[]; maxWeight: number } {
  // Canary clients (ids ≥ K, audit runs, uniform weights only) weigh as one more uniform client.
  const raw = (k: number) =>
    config.weights === "size" && k < config.numClients ? sizeWeights[k] : 1;
  const normalised = (ks: number[]) => {
    const total = ks.reduce((a, k) => a + raw(k), 0);
    return ks.map((k) => raw(k) / total);
  };
  if (config.dp?.calibration === "strict") {
    const q = config.participation;
    const p = normalised(Array.from({ length: config.numClients }, (_, k) => k));
    const pk = (k: number) => k < config.numClients ? p[k] : 1 / config.numClients;
    return { weights: combined.map((k) => pk(k) / q), maxWeight: Math.max(...p) / q };
  }
  const weights = normalised(combined);
  return { weights, maxWeight: Math.max(0, ...weights) };
}

/**
 * Cosines of the total change of the global factors (from the seed's initial factors) with every
 * inserted and every held-out canary direction.
 */
function canaryCosines(
  seed: number,
  dims: SharedBackbone["dims"],
  start: LoraFactors,
  final: LoraFactors,
  count: number,
): { inserted: number[]; held: number[] } {
  const change = factorChange(start, final, dims);
  const cos = (set: "inserted" | "held") =>
    Array.from({ length: count }, (_, i) => cosine(change, canaryDirection(seed, set, i, dims)));
  return { inserted: cos("inserted"), held: cos("held") };
}

/**
 * The budget guard: under strict calibration a round's releases are known before it runs
 * ({@link strictRelease}), so the ε after the round is computed from the ledger with them
 * appended — the same records and accountant that report the spent ε. Null when the round fits.
 */
function budgetStop(
  config: FederatedConfig,
  method: Method,
  calibration: Calibration | null,
  ledger: LedgerState | null,
  round: number,
): BudgetStop | null {
  const max = config.dp?.maxEpsilon;
  if (max === undefined || !calibration || !ledger) return null;
  const release = strictRelease(calibration);
  const planned = method.phases.reduce(
    (l, phase) => recordRelease(l, { ...release, round: round + 1, phase: phase.name }),
    ledger,
  );
  const after = spentEpsilon(planned);
  if (after <= max) return null;
  return {
    reason: "budget",
    round: round + 1,
    spentEpsilon: spentEpsilon(ledger),
    epsilonAfterRound: after,
    maxEpsilon: max,
    delta: ledger.delta,
  };
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

/**
 * Gives the event loop a turn (signal handlers run there) and throws the signal's reason if it
 * was aborted.
 */
async function stopIfAborted(signal: AbortSignal): Promise<void> {
  await new Promise((r) => setTimeout(r, 0));
  signal.throwIfAborted();
}
