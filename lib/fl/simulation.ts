/**
 * The federated simulation (docs/protocol.md): a run is configured once, then every round goes
 * through the same named steps for every method — sample a cohort, train the clients, aggregate
 * their releases through the privacy mechanism, record, and after the round evaluate and persist
 * (`round.ts` holds the steps). A method (`methods/`) decides what each phase trains, releases
 * and how the server combines; the mechanism (`../privacy/mechanism.ts`) clips, noises and
 * records; neither is branched on here.
 *
 * Every round appends one record to `<outDir>/records.jsonl`, writes the global LoRA factors to
 * `<outDir>/checkpoints/round-NNNN.safetensors` and the resumable state to `<outDir>/state.*`,
 * all atomically (`checkpoint.ts`); `resume: true` continues a killed run and ends with the same
 * results as an uninterrupted one (every random stream is derived from the seed, `streams.ts`).
 *
 * @example
 * ```ts
 * import { loadInputs } from "../experiment.ts";
 * const { backbone, data, dispose } = await loadInputs({ dataset: "default", rank: 8, alpha: 8 });
 * const result = await runFederated(backbone, data, {
 *   ...defaultConfig(),
 *   numClients: 4,
 *   rounds: 1,
 *   localEpochs: 1,
 * });
 * result.best.test?.accuracy; // test accuracy at the best validation round
 * dispose();
 * ```
 * @module
 */
import { join } from "node:path";
import { tf } from "../backend.ts";
import type { ImageDataset } from "../data/dataset.ts";
import { dirichletPartition, iidPartition } from "../data/partition.ts";
import { initLora } from "../model/lora.ts";
import type { Metrics } from "../metrics/classification.ts";
import { improvesSelection } from "../metrics/classification.ts";
import { calibrate, type Calibration, type DpSettings } from "../privacy/calibration.ts";
import { type ClientRelease, createMechanism, type Mechanism } from "../privacy/mechanism.ts";
import {
  closeRound,
  createLedger,
  type LedgerState,
  recordRelease,
  type Release,
  spentEpsilon,
} from "../privacy/ledger.ts";
import { cosine } from "../privacy/audit.ts";
import { keyedStream, newNoiseKey } from "../privacy/secure_rng.ts";
import { NoiseKeyError, readNoiseKey } from "../privacy/noise_key.ts";
import { warn } from "../warnings.ts";
import type { SharedBackbone } from "./backbone.ts";
import {
  canaryDirection,
  canaryRelease,
  type CanarySpace,
  factorCanariesRefusal,
  factorChange,
  productCanariesRefusal,
  productCanary,
  productCanaryPhase,
  productCanaryRelease,
  productCosines,
} from "./canaries.ts";
import {
  appendRecord,
  clearOpenRound,
  DamagedStateError,
  loadOpenRound,
  loadRunState,
  openRunFolder,
  saveCheckpoint,
  saveOpenRound,
  saveRunState,
  saveStop,
} from "./checkpoint.ts";
import { evaluateSplit } from "./evaluate.ts";
import { allFinite, checkFactors, cloneFactors, type LoraFactors } from "./factors.ts";
import type { LocalResult, SgdOptions } from "./local.ts";
import { type ClientState, type Method, type MethodOptions, resolveMethod } from "./methods/mod.ts";
import {
  aggregateRelease,
  aggregationWeights,
  clientSettings,
  faultOf,
  mean,
  type PhaseRecord,
  phaseRecord,
  sampleParticipants,
  trainClient,
  type TrainedClient,
} from "./round.ts";
import { streamRng } from "./streams.ts";

export type { DpSettings, PhaseRecord };
export { sampleParticipants };

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
  /**
   * Per-client LoRA ranks (client k trains rank `clientRanks[k % length]`), for methods that
   * allow them (FLoRA); absent: every client trains the backbone's rank.
   */
  clientRanks?: number[];
}

/** docs/protocol.md defaults (K = 12, α = 0.1, T = 50, E = 5, SGD 0.01/0.9/5e-4), DEeR, no DP. */
export function defaultConfig(): FederatedConfig {
  return {
    method: { method: "DEeR", eliminateDeviation: true, regulateNoise: true },
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
  /** Test metrics when val improved this round (selection, docs/protocol.md), else null. */
  test: Metrics | null;
  bestRound: number;
  /**
   * The target, the client-level ε spent so far and its δ. Under local DP (`trust: "local"`)
   * `spent` is the largest site's ε and `sites` gives each site's (site k at index k).
   */
  epsilon: {
    nominal: number | null;
    spent: number | null;
    delta: number | null;
    trust?: "local";
    sites?: number[];
    /**
     * Present (false) when a release so far has a noise multiplier that is a bound using the
     * clients' private factors (the ledger's `exact: false`: DEeR with module1 off under paper
     * calibration, docs/privacy.md): `spent` is then computed from it, not a guarantee.
     */
    exact?: false;
  };
  seconds: number;
  /**
   * Live tfjs tensors of the process less those at the run's start: 0 when a round leaves none
   * behind. Process-wide: runs in one process at the same time count each other's.
   */
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
  /** Present (false) when `epsilonSpent` is no guarantee (see {@link RoundRecord.epsilon}). */
  epsilonExact?: false;
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

/**
 * Clients in other processes (the coordinator of `lib/federation/`): replaces "train these
 * participants here" by "send each its task, collect what it releases". A participant without a
 * release in the answer is excluded with the reason given, as a faulty client is, and the
 * weights of the others are those of the simulation with that client missing.
 */
export interface RemoteClients {
  collect(task: {
    /** 0-based round and phase. */
    round: number;
    phaseIndex: number;
    phase: string;
    participants: number[];
    global: LoraFactors;
    merged?: Float32Array[];
  }): Promise<{
    /** Each answering client's release (clipped, and noised by itself where the mechanism says). */
    releases: Map<number, { release: ClientRelease; loss: number; steps?: number }>;
    excluded: PhaseRecord["excluded"];
  }>;
}

/** Options of {@link runFederated} that do not change results. */
export interface RunOptions {
  /** Clients in other processes; default: every client trains in this process. */
  remote?: RemoteClients;
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
   * Called before each write to `outDir` (records, checkpoint, state, stop): throws to stop the
   * run there. A run folder's holder passes its lock's check (`RunLock.assertHeld`), so a run
   * whose lock file was removed or replaced stops instead of writing beside another run.
   */
  beforeWrite?: () => void;
  /**
   * An empirical privacy audit: `count` canary clients whose release is a fixed random direction
   * of norm C (`canaries.ts`); the result then holds the final update's cosines with them and
   * with as many never-inserted directions (`RunResult.audit`). Uniform weights only. `space`:
   * directions in the factors (default) or in the product ΔW = B·A (DEeR under strict
   * calibration, whose guarantee is there; `productCanariesRefusal` says when it applies).
   */
  canaries?: { count: number; space?: CanarySpace };
  /**
   * Replaces a client's update before the server sees it — for fault and adversary experiments
   * (a crashing client, non-finite or wrongly shaped updates). Throwing excludes the client.
   */
  alterUpdate?: (
    where: { round: number; phase: string; client: number },
    update: LocalResult,
  ) => LocalResult;
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
  if (c.clientRanks !== undefined) {
    need(
      method.clientRanks,
      `lora_r ${c.clientRanks.join(",")}: ${method.label} trains one rank on every client (its ` +
        `server combines factors of equal shapes); give one rank, or use a method that allows ` +
        `per-client ranks (FLoRA)`,
    );
    need(
      c.clientRanks.length >= 1 && c.clientRanks.every((r) => Number.isInteger(r) && r >= 1),
      `lora_r ${c.clientRanks.join(",")}: need integers ≥ 1`,
    );
  }
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
    const refusal = method.checkDp(c.dp.calibration);
    need(refusal === null, refusal ?? "");
    if (c.dp.accountant !== undefined) {
      need(
        c.dp.accountant === "rdp" || c.dp.accountant === "pld",
        `accountant ${c.dp.accountant}: need rdp or pld`,
      );
    }
    if (c.dp.noise !== undefined) {
      need(
        c.dp.noise === "seeded" || c.dp.noise === "secret",
        `noise ${c.dp.noise}: need seeded (reproducible from the seed) or secret (a key only ` +
          `the run holds)`,
      );
    }
    if (c.dp.maxEpsilon !== undefined) {
      need(
        c.dp.maxEpsilon > 0 && Number.isFinite(c.dp.maxEpsilon),
        `max_epsilon ${c.dp.maxEpsilon}: need a finite ε > 0`,
      );
      need(
        c.dp.calibration !== "paper",
        `max_epsilon with paper calibration: the paper mechanism's spent ε depends on what each ` +
          `release turns out to be, and its nominal ε is no guarantee to guard; use ` +
          `--calibration strict (or local) for a budget guard`,
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

/** Everything a run holds between steps. */
interface Run {
  backbone: SharedBackbone;
  data: ImageDataset;
  config: FederatedConfig;
  opts: RunOptions;
  method: Method;
  mechanism: Mechanism;
  calibration: Calibration | null;
  clients: ClientState[];
  /** Each client's full-participation weight before normalisation (1, or its image count). */
  rawWeight: (k: number) => number;
  global: LoraFactors;
  /** Dense updates merged into the frozen weights so far (FedEx-LoRA, FLoRA). */
  merged: Float32Array[] | undefined;
  /** An audit measures the global factors' total change from here. */
  initialGlobal: LoraFactors | null;
  ledger: LedgerState | null;
  /**
   * The key of a run with secret noise (`dp.noise: "secret"`): its noise and cohorts come from
   * {@link keyedStream}s under it instead of the seed's streams; `null` for a seeded run.
   */
  noiseKey: Uint8Array | null;
  best: RunResult["best"];
  records: RoundRecord[];
  startRound: number;
  /**
   * A resumed round under way (clients in other processes): its released phases' records, how
   * many there are, and the seconds the round had taken; the run continues it from the next phase.
   */
  openRound: { phases: PhaseRecord[]; phasesDone: number; roundSeconds: number } | null;
  carriedSeconds: number;
  started: number;
  liveAtStart: number;
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
  const run = await configure(backbone, data, config, opts);
  let stopped: BudgetStop | null = null;
  for (let round = run.startRound; round < config.rounds; round++) {
    if (opts.stopAfterRounds !== undefined && round - run.startRound >= opts.stopAfterRounds) break;
    // A resumed round under way was admitted by the budget guard when it started.
    const open = round === run.startRound ? run.openRound : null;
    stopped = open ? null : budgetStop(run, round);
    if (stopped) {
      if (opts.outDir) {
        opts.beforeWrite?.();
        await saveStop(opts.outDir, stopped);
      }
      break;
    }
    const t0 = performance.now() - (open ? open.roundSeconds * 1000 : 0);
    const phases: PhaseRecord[] = open ? [...open.phases] : [];
    for (const [phaseIndex, phase] of run.method.phases.entries()) {
      if (open && phaseIndex < open.phasesDone) continue; // released before the restart
      const participants = sampleParticipants(
        config,
        round,
        phaseIndex,
        run.noiseKey ? keyedStream(run.noiseKey, "participants", round, phaseIndex) : undefined,
      );
      const trained = opts.remote
        ? await collectRemote(run, opts.remote, round, phaseIndex, participants)
        : await trainClients(run, round, phaseIndex, participants);
      phases.push(aggregatePhase(run, round, phaseIndex, participants, trained));
      void phase;
      // Sites in other processes get this release in the next phase's tasks, before the round
      // is saved: record it first, so that a restarted coordinator continues from here instead
      // of releasing this phase again (checkpoint.ts, saveOpenRound).
      if (opts.remote && opts.outDir && phaseIndex < run.method.phases.length - 1) {
        opts.beforeWrite?.();
        await saveOpenRound(
          opts.outDir,
          {
            version: 1,
            configKey: configKey(config),
            round: round + 1,
            phasesDone: phaseIndex + 1,
            phases: phases.map(encodePhase),
            ledger: run.ledger,
            roundSeconds: (performance.now() - t0) / 1000,
            runSeconds: run.carriedSeconds + (performance.now() - run.started) / 1000,
          },
          run.global,
          run.merged,
        );
      }
    }
    run.global = run.method.afterRound({ global: run.global, dims: backbone.dims, round });
    const record = await evaluateRound(run, round, phases, t0);
    await persistRound(run, record);
    opts.onRound?.(record);
  }
  return finish(run, stopped);
}

/**
 * Configure: validate, split the training data, initialise the global factors, calibrate the
 * privacy mechanism, open the ledger, and restore a saved state when resuming.
 */
async function configure(
  backbone: SharedBackbone,
  data: ImageDataset,
  config: FederatedConfig,
  opts: RunOptions,
): Promise<Run> {
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
  if (opts.canaries?.space === "product") {
    const why = productCanariesRefusal(method.phases, config.dp?.calibration ?? null);
    if (why) throw new Error(`product-space canaries for ${method.label}: ${why}`);
  } else if (opts.canaries) {
    const why = factorCanariesRefusal(method);
    if (why) throw new Error(`a canary audit of ${method.label}: ${why}; audit another method`);
  }
  if (
    opts.remote && method.keepOnClient(initLora(backbone.vision.config, 1, streamRng(0, "probe")))
  ) {
    throw new Error(
      `${method.label} keeps factors on its clients and evaluates with them; clients in other ` +
        `processes (federation serve) support methods whose model is the global factors alone`,
    );
  }
  const K = config.numClients;
  const { dims } = backbone;
  const started = performance.now();
  const labels = Array.from(data.train.labels);
  if (K > labels.length) {
    throw new Error(
      `numClients ${K} exceeds the ${labels.length} training images of ${data.name}: some ` +
        `clients would hold none; use at most ${labels.length} clients`,
    );
  }
  const { parts, calibration } = clientPlan(data, config);
  warnAboutData(data, config, parts);
  const clients: ClientState[] = parts.map((indices) => ({ indices }));
  const global = initLora(backbone.vision.config, backbone.rank, streamRng(config.seed, "init"));
  checkFactors(global, dims, "initial LoRA factors");
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
  const run: Run = {
    backbone,
    data,
    config,
    opts,
    method,
    mechanism: createMechanism(calibration, {
      phases: method.phases,
      adapters: dims.adapters,
      numClients: K,
    }),
    calibration,
    clients,
    rawWeight: (k) => config.weights === "size" ? parts[k].length / labels.length : 1,
    global,
    merged: undefined,
    initialGlobal: opts.canaries ? cloneFactors(global) : null,
    ledger: calibration
      ? createLedger({
        delta: calibration.accountingDelta,
        accountant: calibration.accountant,
        localSites: calibration.localSites,
      })
      : null,
    noiseKey: null,
    best: { round: -1, val: null, test: null },
    records: [],
    startRound: 0,
    openRound: null,
    carriedSeconds: 0,
    started,
    liveAtStart: 0,
  };
  const out = opts.outDir;
  if (out) {
    await Deno.mkdir(out, { recursive: true });
    // What a saved ledger must agree with: the run's empty ledger and its mechanism's records.
    const expectLedger = run.ledger
      ? {
        fresh: run.ledger,
        planned: (round: number, phase: Release["phase"]) =>
          run.mechanism.plannedRecord(round, phase),
      }
      : undefined;
    const restored = opts.resume
      ? await loadRunState<RoundRecord>(out, {
        config,
        configKey: configKey(config),
        methodLabel: method.label,
        dims,
        clients,
        ...(expectLedger ? { ledger: expectLedger } : {}),
      })
      : null;
    if (restored) {
      run.global = restored.global;
      run.merged = restored.residual;
      run.startRound = restored.state.completedRounds;
      run.best = restored.state.best;
      run.carriedSeconds = restored.state.seconds;
      run.ledger = restored.state.ledger;
      run.records.push(...restored.records);
    }
    const open = opts.resume
      ? await loadOpenRound<PhaseRecord>(out, {
        configKey: configKey(config),
        round: run.startRound + 1,
        phaseNames: method.phases.map((p) => p.name),
        dims,
        ledger: run.ledger,
        ...(expectLedger ? { expectLedger } : {}),
      })
      : null;
    if (open) {
      run.global = open.global;
      run.merged = open.residual;
      run.ledger = open.state.ledger;
      run.carriedSeconds = open.state.runSeconds;
      run.openRound = {
        phases: open.state.phases.map(decodePhase),
        phasesDone: open.state.phasesDone,
        roundSeconds: open.state.roundSeconds,
      };
    }
    const fresh = run.startRound === 0 && !open;
    await openRunFolder(out, fresh, { ...config, methodLabel: method.label });
    if (fresh) await clearOpenRound(out);
    if (config.dp?.noise === "secret") {
      run.noiseKey = await runNoiseKey(out, fresh ? (opts.resume ? "keep" : "new") : "saved");
    }
  } else if (config.dp?.noise === "secret") {
    run.noiseKey = newNoiseKey();
  }
  run.liveAtStart = tf.memory().numTensors;
  return run;
}

/** The file in a seed folder that holds the key of a run with secret noise. */
export const NOISE_KEY_FILE = "noise.key";

/**
 * The key of a run with secret noise in the seed folder `out`: made (mode 600) for a new run
 * (`"new"`, replacing any), read back when the run resumes saved state (`"saved"`) — where it
 * must be there, or the run cannot draw the noise its uninterrupted self would have — and kept
 * when a resume finds nothing saved (`"keep"`, made only if missing): whatever an earlier start
 * drew under it stays drawn from the same key.
 */
async function runNoiseKey(out: string, mode: "new" | "saved" | "keep"): Promise<Uint8Array> {
  const path = join(out, NOISE_KEY_FILE);
  if (mode === "new") await Deno.remove(path).catch(() => {});
  try {
    return await readNoiseKey(path, {
      create: mode !== "saved",
      missing: "the run draws its noise and cohorts from this secret key, and cannot go on " +
        "without it; start the run again without resume (this replaces the saved run)",
    });
  } catch (err) {
    if (err instanceof NoiseKeyError) throw new DamagedStateError(err.message);
    throw err;
  }
}

/**
 * The clients' training images (the split of the run's seed) and the privacy calibration: the
 * same on the coordinator and on every site of a cross-process federation, derived from the
 * configuration and the data alone.
 */
export function clientPlan(
  data: ImageDataset,
  config: FederatedConfig,
): { parts: number[][]; calibration: Calibration | null } {
  const method = resolveMethod(config.method);
  const K = config.numClients;
  const labels = Array.from(data.train.labels);
  const parts = config.split.iid
    ? iidPartition(labels.length, K, config.seed)
    : dirichletPartition(labels, K, config.split.dirichletAlpha, config.seed, {
      numClasses: data.classNames.length,
    });
  const calibration = config.dp
    ? calibrate(config.dp, {
      phases: method.phases.map((p) => p.name),
      numClients: K,
      participation: config.participation,
      rounds: config.rounds,
      localEpochs: config.localEpochs,
      batchSize: config.batchSize,
      clientSizes: parts.map((p) => p.length),
    })
    : null;
  return { parts, calibration };
}

/** Warnings about the split: clients without data, one-class evaluation splits. */
function warnAboutData(data: ImageDataset, config: FederatedConfig, parts: number[][]): void {
  const empty = parts.filter((p) => p.length === 0).length;
  if (empty > 0) {
    warn(
      "empty-clients",
      `${empty} of ${config.numClients} clients hold no training images (Dirichlet α = ` +
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
}

/**
 * Train clients: every sampled client trains locally from where the method starts it; a client
 * whose training throws, or whose update is faulty, is recorded and excluded.
 */
async function trainClients(
  run: Run,
  round: number,
  phaseIndex: number,
  participants: number[],
): Promise<{ valid: TrainedClient[]; excluded: PhaseRecord["excluded"] }> {
  const { config, method, backbone, opts } = run;
  const phase = method.phases[phaseIndex];
  const valid: TrainedClient[] = [];
  const excluded: PhaseRecord["excluded"] = [];
  for (const [done, k] of participants.entries()) {
    if (opts.signal) await stopIfAborted(opts.signal);
    try {
      const trained = await trainClient(backbone, run.clients[k], {
        method,
        phase,
        global: run.global,
        merged: run.merged,
        split: run.data.train,
        round,
        phaseIndex,
        ...clientSettings(config, method, k, backbone.rank),
      });
      const altered = opts.alterUpdate?.(
        { round: round + 1, phase: phase.name, client: k },
        trained.result,
      );
      const candidate = { ...trained, result: altered ?? trained.result };
      const reason = faultOf(candidate, backbone.dims);
      if (reason) excluded.push({ client: k, reason });
      else valid.push(candidate);
    } catch (err) {
      excluded.push({ client: k, reason: (err as Error).message });
    }
    opts.onClient?.({ round, phase: phase.name, done: done + 1, total: participants.length });
  }
  if (valid.length === 0 && participants.length > 0) {
    throw new Error(
      `round ${round + 1} phase ${phase.name}: every client failed (${
        excluded.map((e) => `client ${e.client}: ${e.reason}`).join("; ")
      })`,
    );
  }
  return { valid, excluded };
}

/** What a phase's clients gave the server: trained updates, or releases made by the clients. */
interface PhaseClients {
  valid: TrainedClient[];
  excluded: PhaseRecord["excluded"];
  released?: Map<number, ClientRelease>;
}

/**
 * Collect remote clients: the phase's task goes to each participant's process and its release
 * comes back ({@link RemoteClients}); the server holds no client state.
 */
async function collectRemote(
  run: Run,
  remote: RemoteClients,
  round: number,
  phaseIndex: number,
  participants: number[],
): Promise<PhaseClients> {
  const phase = run.method.phases[phaseIndex];
  const got = await remote.collect({
    round,
    phaseIndex,
    phase: phase.name,
    participants,
    global: run.global,
    merged: run.merged,
  });
  const released = new Map<number, ClientRelease>();
  const valid: TrainedClient[] = [];
  for (const k of participants) {
    const answer = got.releases.get(k);
    if (!answer) continue;
    released.set(k, answer.release);
    valid.push({
      client: k,
      start: run.global,
      result: {
        factors: answer.release.factors,
        loss: answer.loss,
        momentum: [],
        steps: answer.steps ?? NaN,
      },
    });
  }
  if (valid.length === 0 && participants.length > 0) {
    throw new Error(
      `round ${round + 1} phase ${phase.name}: no site answered (${
        got.excluded.map((e) => `client ${e.client}: ${e.reason}`).join("; ")
      })`,
    );
  }
  return { valid, excluded: got.excluded, released };
}

/**
 * Aggregate and record one phase: add the audit canaries, weight the updates, release them
 * through the mechanism with the method's combination, keep what clients keep, merge into the
 * frozen weights, append the ledger record, and describe the phase.
 */
function aggregatePhase(
  run: Run,
  round: number,
  phaseIndex: number,
  participants: number[],
  trained: PhaseClients,
): PhaseRecord {
  const { config, method, backbone, opts } = run;
  const phase = method.phases[phaseIndex];
  const K = config.numClients;
  // Audit canaries (opts.canaries): sampled like clients, each releases its fixed direction.
  const canaries = opts.canaries
    ? sampleParticipants(
      { ...config, numClients: opts.canaries.count, seed: config.seed + 1 },
      round,
      phaseIndex,
    )
    : null;
  const clip = config.dp?.clip ?? 1;
  const productPhase = canaries && opts.canaries?.space === "product"
    ? productCanaryPhase(run.global, phase.release[0], backbone.dims)
    : null;
  const canaryFactors = (i: number) =>
    productPhase
      ? productCanaryRelease(
        run.global,
        productCanary(config.seed, "inserted", i, backbone.dims),
        productPhase,
        clip,
        backbone.dims,
      )
      : canaryRelease(
        run.global,
        canaryDirection(config.seed, "inserted", i, backbone.dims),
        phase.release,
        clip,
        backbone.dims,
        run.mechanism.name === "paper" ? "per-tensor" : "whole",
      );
  const updates = [
    ...trained.valid.map(({ client, start, result }) => ({
      client,
      start,
      factors: result.factors,
    })),
    ...(canaries ?? []).map((i) => ({
      client: K + i,
      start: run.global,
      factors: canaryFactors(i),
    })),
  ];
  const weighting = aggregationWeights(
    {
      numClients: K,
      participation: config.participation,
      raw: run.rawWeight,
      fixedDenominator: run.mechanism.name === "strict",
    },
    updates.map((u) => u.client),
  );
  const out = aggregateRelease({
    method,
    mechanism: run.mechanism,
    phase,
    round: round + 1,
    phaseIndex,
    global: run.global,
    dims: backbone.dims,
    loraScale: backbone.loraScale,
    numClients: K,
    seed: config.seed,
    updates: updates.map((u, i) => ({ ...u, weight: weighting.weights[i] })),
    maxWeight: weighting.maxWeight,
    released: trained.released,
    ...(run.noiseKey
      ? { noiseRng: (label) => keyedStream(run.noiseKey!, "noise", round, phaseIndex, label) }
      : {}),
  });
  for (const { client, result } of trained.released ? [] : trained.valid) {
    const kept = method.keepOnClient(result.factors);
    if (kept) run.clients[client].local = kept;
  }
  if (out.mergeIntoFrozen) {
    run.merged ??= out.mergeIntoFrozen.map((m) => new Float32Array(m.length));
    run.merged.forEach((r, i) => {
      const inc = out.mergeIntoFrozen![i];
      for (let j = 0; j < r.length; j++) r[j] += inc[j];
    });
  }
  run.global = out.global;
  if (run.ledger && out.record) run.ledger = recordRelease(run.ledger, out.record);
  return phaseRecord(
    phase,
    participants,
    canaries,
    // Under local trust the server never holds a client's training loss; a client that took no
    // step (it holds no images) has none to average in.
    run.mechanism.trust === "local"
      ? []
      : trained.valid.filter(({ result }) => result.steps !== 0).map(({ result }) => result.loss),
    out,
    trained.excluded,
    backbone.dims,
    backbone.loraScale,
  );
}

/**
 * Evaluate: the round's model on val and, when val improved, on test (best-validation
 * selection); close the ledger's round; build the round record.
 */
async function evaluateRound(
  run: Run,
  round: number,
  phases: PhaseRecord[],
  t0: number,
): Promise<RoundRecord> {
  const { config, method, backbone, calibration } = run;
  const participants = [...new Set(phases.flatMap((p) => p.participants))].sort((a, b) => a - b);
  const evalFactors = method.evaluationFactors({
    global: run.global,
    clients: run.clients,
    participants,
  });
  const evaluate = async (split: "val" | "test"): Promise<Metrics> => {
    try {
      return await evaluateSplit(
        backbone,
        evalFactors,
        run.data[split],
        config.evalBatchSize,
        run.merged,
      );
    } catch (err) {
      throw explainEvaluationError(err as Error, evalFactors, round, split);
    }
  };
  const val = await evaluate("val");
  let test: Metrics | null = null;
  if (improvesSelection(val, run.best.val)) {
    test = await evaluate("test");
    run.best = { round: round + 1, val, test };
  }
  if (run.ledger) {
    run.ledger = closeRound(run.ledger, round + 1, {
      nominalEpsilon: calibration!.nominalEpsilon,
    });
  }
  const perSite = run.ledger?.rounds[run.ledger.rounds.length - 1]?.sites;
  return {
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
    bestRound: run.best.round,
    epsilon: {
      nominal: calibration ? calibration.nominalEpsilon : null,
      spent: run.ledger ? spentEpsilon(run.ledger) : null,
      delta: calibration ? calibration.accountingDelta : null,
      ...(perSite ? { trust: "local" as const, sites: perSite } : {}),
      ...(run.ledger && !ledgerExact(run.ledger) ? { exact: false as const } : {}),
    },
    seconds: (performance.now() - t0) / 1000,
    liveTensors: tf.memory().numTensors - run.liveAtStart,
  };
}

/**
 * Non-finite scores come from the global factors, not from the split: say so, instead of a
 * metrics error about probabilities.
 */
function explainEvaluationError(
  err: Error,
  factors: LoraFactors,
  round: number,
  split: string,
): Error {
  if (!allFinite(factors) || /not a finite number/.test(err.message)) {
    let largest = 0;
    for (const t of [...factors.A, ...factors.B]) {
      for (const v of t) largest = Math.max(largest, Math.abs(v));
    }
    return new Error(
      `round ${round + 1}: the model's scores on ${split} are not finite with the global ` +
        `LoRA factors after aggregation (largest |entry| ${largest.toPrecision(3)}): the ` +
        `updates diverged — lower the learning rate (or bound the updates with DP's clip)`,
    );
  }
  return new Error(`round ${round + 1}: evaluating on ${split}: ${err.message}`);
}

/** Persist: the record, the round's checkpoint and the resumable state (`checkpoint.ts`). */
async function persistRound(run: Run, record: RoundRecord): Promise<void> {
  run.records.push(record);
  const out = run.opts.outDir;
  if (!out) return;
  const { config, method, backbone } = run;
  run.opts.beforeWrite?.();
  await appendRecord(out, record);
  await saveCheckpoint(
    out,
    record.round,
    run.global,
    backbone.dims,
    { method: method.label, seed: config.seed },
    run.merged,
  );
  await saveRunState(
    out,
    {
      version: 1,
      configKey: configKey(config),
      completedRounds: record.round,
      best: run.best,
      ledger: run.ledger,
      seconds: run.carriedSeconds + (performance.now() - run.started) / 1000,
    },
    run.global,
    run.clients,
    run.merged,
  );
  await clearOpenRound(out);
}

/** The numbers of a phase record that may be NaN or infinite (JSON writes those as null). */
const PHASE_NUMBERS = [
  "trainLoss",
  "deviation",
  "noiseEnergy",
  "peerSigmaMax",
  "clippedFraction",
  "meanUpdateNorm",
  "maxReleaseNorm",
] as const;

/** A phase record for JSON with its non-finite numbers as strings ("NaN", "Infinity"). */
function encodePhase(p: PhaseRecord): PhaseRecord {
  const out: Record<string, unknown> = { ...p };
  for (const k of PHASE_NUMBERS) if (!Number.isFinite(p[k])) out[k] = String(p[k]);
  return out as unknown as PhaseRecord;
}

/** {@link encodePhase} undone; a value that is neither a number nor such a string is refused. */
function decodePhase(p: PhaseRecord): PhaseRecord {
  const out: Record<string, unknown> = { ...p };
  for (const k of PHASE_NUMBERS) {
    const v = (p as unknown as Record<string, unknown>)[k];
    if (typeof v === "string" && ["NaN", "Infinity", "-Infinity"].includes(v)) out[k] = Number(v);
    else if (typeof v !== "number") {
      throw new DamagedStateError(
        `the round under way's record of phase ${p.phase} holds ${k} ${JSON.stringify(v)}; ` +
          `the saved state is damaged or was edited: start the run again without resume`,
      );
    }
  }
  return out as unknown as PhaseRecord;
}

/** Whether every release of the ledger has an exact noise multiplier (not a bound, see above). */
function ledgerExact(ledger: LedgerState): boolean {
  return ledger.releases.every((r) => r.exact !== false);
}

/** The run's result. */
function finish(run: Run, stopped: BudgetStop | null): RunResult {
  const { config, opts, backbone } = run;
  return {
    config,
    method: run.method.label,
    records: run.records,
    best: run.best,
    calibration: run.calibration,
    epsilonSpent: run.ledger ? spentEpsilon(run.ledger) : null,
    ...(run.ledger && !ledgerExact(run.ledger) ? { epsilonExact: false as const } : {}),
    stopped,
    ...(opts.canaries
      ? {
        audit: canaryCosines(
          config.seed,
          backbone.dims,
          run.initialGlobal!,
          run.global,
          opts.canaries.count,
          opts.canaries.space ?? "factor",
        ),
      }
      : {}),
    ledger: run.ledger,
    seconds: run.carriedSeconds + (performance.now() - run.started) / 1000,
  };
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
  space: CanarySpace,
): { inserted: number[]; held: number[] } {
  if (space === "product") {
    const cos = (set: "inserted" | "held") =>
      productCosines(
        start,
        final,
        Array.from({ length: count }, (_, i) => productCanary(seed, set, i, dims)),
        dims,
      );
    return { inserted: cos("inserted"), held: cos("held") };
  }
  const change = factorChange(start, final, dims);
  const cos = (set: "inserted" | "held") =>
    Array.from({ length: count }, (_, i) => cosine(change, canaryDirection(seed, set, i, dims)));
  return { inserted: cos("inserted"), held: cos("held") };
}

/**
 * The budget guard: when the mechanism knows a round's releases before it runs (strict), the ε
 * after the round is computed from the ledger with them appended — the same records and
 * accountant that report the spent ε. Null when the round fits.
 */
function budgetStop(run: Run, round: number): BudgetStop | null {
  const max = run.config.dp?.maxEpsilon;
  if (max === undefined || !run.ledger) return null;
  let planned = run.ledger;
  for (const phase of run.method.phases) {
    const record = run.mechanism.plannedRecord(round + 1, phase.name);
    if (!record) return null;
    planned = recordRelease(planned, record);
  }
  const after = spentEpsilon(planned);
  if (after <= max) return null;
  return {
    reason: "budget",
    round: round + 1,
    spentEpsilon: spentEpsilon(run.ledger),
    epsilonAfterRound: after,
    maxEpsilon: max,
    delta: run.ledger.delta,
  };
}

/**
 * Gives the event loop a turn (signal handlers run there) and throws the signal's reason if it
 * was aborted.
 */
async function stopIfAborted(signal: AbortSignal): Promise<void> {
  await new Promise((r) => setTimeout(r, 0));
  signal.throwIfAborted();
}
