/**
 * Sweep drivers for ablations and studies (the notebooks in `notebooks/` call these; their cells
 * hold settings and figure calls, no logic). A sweep is a list of {@link SweepPoint}s — a label,
 * the swept parameters and a full {@link FederatedConfig} — run on shared inputs with
 * {@link runSweep}, which returns tidy rows: one {@link SummaryRow} per point (test metrics at
 * the best-validation round, ε), one {@link RoundRow} per point, seed and round, and one
 * {@link ReleaseRow} per aggregation (phase) for the privacy audit.
 *
 * Study scale: {@link studyScale} gives the shared protocol of the notebooks
 * (docs/protocol.md#defaults shortened to fit minutes on 2 CPU cores) in a full and a quick size;
 * `DEER_NOTEBOOK_QUICK=1` selects the quick one (CI). {@link loadStudyInputs} loads the embedded
 * default data and model and keeps a class-balanced subset of each split.
 *
 * Statistics: the full size runs three seeds, the quick size one. Every summary row carries its
 * per-seed values and their 95 % t interval; {@link compareToBaseline} compares points paired by
 * seed (seed s of two points shares the split and the initialisation) and
 * {@link describeComparisons} turns the comparisons into sentences that claim no more than the
 * seeds support.
 *
 * @example
 * ```ts
 * const scale = studyScale(true); // the notebooks' CI size: 2 rounds, a small subset, one seed
 * const inputs = await loadStudyInputs(scale);
 * const sweep = await runSweep(inputs, rankPoints(studyConfig(scale), [2]));
 * sweep.summary.map((r) => [r.label, r.accuracy]); // [["r = 2", …]]
 * inputs.dispose();
 * ```
 * @module
 */
import { type ImageDataset, type ImageSplit, sampleSize } from "./data/dataset.ts";
import {
  type ExperimentResult,
  type ExperimentSummary,
  type Inputs,
  type InputSpec,
  loadInputs,
  runExperiment,
} from "./experiment.ts";
import { makeBackbone } from "./fl/backbone.ts";
import { onePerKind } from "./warnings.ts";
import {
  defaultConfig,
  type FederatedConfig,
  type RoundRecord,
  validateConfig,
} from "./fl/simulation.ts";
import { resolveMethod } from "./fl/methods/mod.ts";
import type { DpSettings } from "./privacy/calibration.ts";
import { createRng } from "./rng.ts";
import { evaluateSplit } from "./fl/evaluate.ts";
import { type MeanInterval, meanInterval } from "./metrics/interval.ts";
import {
  describeComparison,
  formatP,
  type PairedComparison,
  pairedComparison,
  seedsCaveat,
} from "./metrics/paired.ts";

/** Whether the notebooks run in quick mode (`DEER_NOTEBOOK_QUICK=1`, as CI does). */
export function notebookQuick(): boolean {
  try {
    const v = Deno.env.get("DEER_NOTEBOOK_QUICK");
    return v !== undefined && v !== "" && v !== "0" && v.toLowerCase() !== "false";
  } catch {
    return false; // no env permission: full mode
  }
}

/** The size and shared settings of a study (one notebook). */
export interface StudyScale {
  quick: boolean;
  /** Federated rounds T and local epochs E. */
  rounds: number;
  localEpochs: number;
  /** Images kept per class in each split (null: the whole split). */
  perClass: { train: number | null; val: number | null; test: number | null };
  numClients: number;
  dirichletAlpha: number;
  batchSize: number;
  lr: number;
  rank: number;
  alpha: number;
  /** Seeds every point runs (three at full size, one at quick size). */
  seeds: number[];
  /** DP defaults: clip bound C, target ε, accounting δ. */
  clip: number;
  epsilon: number;
  delta: number;
}

/**
 * The notebooks' shared protocol: docs/protocol.md#defaults (K = 12, Dirichlet α = 0.1, r = 8, SGD
 * 0.01/0.9/5e-4, per-client batch 10) shortened to a few rounds of one local epoch on a
 * class-balanced subset of the embedded data, over three seeds (10, 100, 1000: `deno task train`'s
 * default). `quick` (default: {@link notebookQuick}) shrinks rounds and data and keeps one seed, so
 * all notebooks run in minutes in CI.
 *
 * @example
 * ```ts
 * studyScale(true).rounds; // 2
 * ```
 */
export function studyScale(quick: boolean = notebookQuick()): StudyScale {
  return {
    quick,
    rounds: quick ? 2 : 8,
    localEpochs: 1,
    perClass: quick ? { train: 20, val: 10, test: 20 } : { train: 100, val: 50, test: 100 },
    numClients: 12,
    dirichletAlpha: 0.1,
    batchSize: 10,
    lr: 0.01,
    rank: 8,
    alpha: 8,
    seeds: quick ? [10] : [10, 100, 1000],
    clip: 0.5,
    epsilon: 6,
    delta: 1e-5,
  };
}

/** A federated configuration at a study's scale, DP on in the given calibration (or off). */
export function studyConfig(
  scale: StudyScale,
  opts: { method?: FederatedConfig["method"]; calibration?: DpSettings["calibration"] | null } = {},
): FederatedConfig {
  const calibration = opts.calibration === undefined ? "paper" : opts.calibration;
  return {
    ...defaultConfig(),
    method: opts.method ?? { method: "DEeR", eliminateDeviation: true, regulateNoise: true },
    seed: scale.seeds[0],
    numClients: scale.numClients,
    rounds: scale.rounds,
    localEpochs: scale.localEpochs,
    batchSize: scale.batchSize,
    sgd: { lr: scale.lr, momentum: 0.9, weightDecay: 5e-4 },
    split: { iid: false, dirichletAlpha: scale.dirichletAlpha },
    dp: calibration === null
      ? null
      : { calibration, clip: scale.clip, epsilon: scale.epsilon, delta: scale.delta },
  };
}

/**
 * A class-balanced subset of a split: the first `perClass` images of each class after a seeded
 * shuffle (all of a class when it has fewer). Order of the result: shuffled.
 *
 * @example
 * ```ts
 * import { loadInputs } from "./experiment.ts";
 * const { data, dispose } = await loadInputs({ dataset: "default", rank: 8, alpha: 8 });
 * const small = subsetSplit(data.train, 6, 50, 1); // 50 images of each of 6 classes
 * small.labels.length; // 300
 * dispose();
 * ```
 */
export function subsetSplit(
  split: ImageSplit,
  numClasses: number,
  perClass: number,
  seed: number,
): ImageSplit {
  if (!(Number.isInteger(perClass) && perClass >= 1)) {
    throw new Error(`subsetSplit: perClass ${perClass} must be an integer ≥ 1`);
  }
  const rng = createRng(seed);
  const order = Array.from(split.labels, (_, i) => i);
  rng.shuffle(order);
  const taken = new Array<number>(numClasses).fill(0);
  const keep: number[] = [];
  for (const i of order) {
    const c = split.labels[i];
    if (taken[c] < perClass) {
      taken[c]++;
      keep.push(i);
    }
  }
  const size = sampleSize(split);
  const images = new Uint8Array(keep.length * size);
  keep.forEach((src, dst) =>
    images.set(split.images.subarray(src * size, (src + 1) * size), dst * size)
  );
  return {
    images,
    sampleShape: [...split.sampleShape],
    labels: Int32Array.from(keep, (i) => split.labels[i]),
  };
}

/** A data set with each split cut to a class-balanced subset (null keeps a split whole). */
export function subsetDataset(
  data: ImageDataset,
  perClass: StudyScale["perClass"],
  seed = 0,
): ImageDataset {
  const C = data.classNames.length;
  const cut = (split: ImageSplit, n: number | null, salt: number) =>
    n === null ? split : subsetSplit(split, C, n, seed * 3 + salt);
  return {
    ...data,
    train: cut(data.train, perClass.train, 0),
    val: cut(data.val, perClass.val, 1),
    test: cut(data.test, perClass.test, 2),
    source: `${data.source} (per class: train ${perClass.train ?? "all"}, val ${
      perClass.val ?? "all"
    }, test ${perClass.test ?? "all"})`,
  };
}

/**
 * Loads the inputs of a study: the embedded default data and model (or `spec`; the env vars
 * `DEER_NOTEBOOK_MODEL` and `DEER_NOTEBOOK_PROTOTYPES` point the notebooks at another model),
 * with the splits cut to the scale's class-balanced subsets.
 */
export async function loadStudyInputs(
  scale: StudyScale,
  spec: Partial<InputSpec> = {},
): Promise<Inputs> {
  const env = (name: string) => {
    try {
      return Deno.env.get(name) || undefined;
    } catch {
      return undefined;
    }
  };
  const inputs = await loadInputs({
    dataset: "default",
    rank: scale.rank,
    alpha: scale.alpha,
    modelPath: env("DEER_NOTEBOOK_MODEL"),
    prototypes: env("DEER_NOTEBOOK_PROTOTYPES"),
    ...spec,
  });
  return { ...inputs, data: subsetDataset(inputs.data, scale.perClass) };
}

/** One configuration of a sweep. */
export interface SweepPoint {
  /** Legend and table label. */
  label: string;
  /** The swept parameters of this point (tidy columns), e.g. `{ rank: 4 }`. */
  params: Record<string, string | number | boolean>;
  config: FederatedConfig;
  /** LoRA rank (and alpha) when it differs from the inputs' backbone. */
  lora?: { rank: number; alpha?: number };
}

/** The test metrics of a {@link SummaryRow} (×100). */
export type SummaryMetric = "accuracy" | "recall" | "precision" | "f1" | "auc";
const SUMMARY_METRICS: SummaryMetric[] = ["accuracy", "recall", "precision", "f1", "auc"];

/** One row per sweep point: test metrics (×100) at the best-validation round, mean over seeds. */
export interface SummaryRow {
  label: string;
  params: SweepPoint["params"];
  /** Method label, e.g. `DEeR(m1=1,m2=0)`, and its family (`DEeR`). */
  method: string;
  family: string;
  calibration: "paper" | "strict" | "local" | null;
  accuracy: number;
  /** Population std of the accuracy over seeds (as `train`'s summary). */
  accuracyStd: number;
  recall: number;
  precision: number;
  f1: number;
  auc: number;
  /** The seeds run, and each metric per seed in that order (NaN: the seed has no value). */
  seeds: number[];
  perSeed: Record<SummaryMetric, number[]>;
  /** Each metric's mean over seeds with its 95 % t interval (NaN bounds with one seed). */
  interval: Record<SummaryMetric, MeanInterval>;
  /** Best-validation round of each seed. */
  bestRounds: number[];
  nominalEpsilon: number | null;
  /** Largest client-level ε actually spent over the seeds (δ = the config's δ). */
  spentEpsilon: number | null;
  /** Present (false) when that ε is no guarantee (`ExperimentSummary.spentEpsilonExact`). */
  spentEpsilonExact?: false;
  noiseMultiplier: number | null;
  /** Seeds the budget guard (`dp.maxEpsilon`) stopped, and before which round. */
  stoppedAtBudget: { seed: number; round: number }[];
  seconds: number;
  /** Why the point's run failed (`onError: "record"`), else null. */
  error: string | null;
}

/** One row per point, seed and round. */
export interface RoundRow {
  label: string;
  params: SweepPoint["params"];
  method: string;
  seed: number;
  round: number;
  trainLoss: number;
  valAccuracy: number;
  /** Test accuracy, only on rounds where validation improved (selection: docs/protocol.md). */
  testAccuracy: number | null;
  /** Σ over adapters of the aggregation deviation ‖D‖_F, summed over the round's phases. */
  deviation: number;
  noiseEnergy: number;
  peerSigmaMax: number;
  nominalEpsilon: number | null;
  spentEpsilon: number | null;
  seconds: number;
}

/** One row per aggregation (a phase of a round): what the server released. */
export interface ReleaseRow {
  label: string;
  params: SweepPoint["params"];
  method: string;
  seed: number;
  round: number;
  phase: string;
  /** 1, 2, … over the run's aggregations. */
  release: number;
  /** Noise std / sensitivity of this release (null without DP). */
  effectiveNoiseMultiplier: number | null;
  peerSigmaMax: number;
  deviation: number;
  noiseEnergy: number;
  clippedFraction: number;
  meanUpdateNorm: number;
}

/** What {@link runSweep} returns. */
export interface SweepResult {
  points: SweepPoint[];
  summary: SummaryRow[];
  rounds: RoundRow[];
  releases: ReleaseRow[];
  /** The full experiment results, in point order (null for a recorded failure). */
  results: (ExperimentResult | null)[];
}

/** Options of {@link runSweep}. */
export interface SweepOptions {
  /** Seeds per point (default: each point's `config.seed`). */
  seeds?: number[];
  /** Folder for records (`<outDir>/<label>/…`); nothing is written without it. */
  outDir?: string;
  /** Progress lines (default: `console.log`; pass `() => {}` for silence). */
  log?: (line: string) => void;
  /**
   * A point whose run throws: `throw` (default) stops the sweep; `record` keeps going and
   * records the failure ({@link SummaryRow.error}, metrics NaN, the rounds it completed).
   */
  onError?: "throw" | "record";
}

/**
 * Runs every point on shared inputs and returns tidy rows. All points are validated before the
 * first one runs, so a bad grid fails at once.
 *
 * @example
 * ```ts
 * const scale = studyScale(true);
 * const inputs = await loadStudyInputs(scale);
 * const sweep = await runSweep(inputs, rankPoints(studyConfig(scale), [2, 4]));
 * sweep.summary.length; // 2: one row per point
 * inputs.dispose();
 * ```
 */
export async function runSweep(
  inputs: Inputs,
  points: SweepPoint[],
  opts: SweepOptions = {},
): Promise<SweepResult> {
  const log = opts.log ?? ((line: string) => console.log(line));
  const labels = new Set<string>();
  for (const p of points) {
    if (labels.has(p.label)) throw new Error(`runSweep: two points are labelled "${p.label}"`);
    labels.add(p.label);
    try {
      validateConfig(p.config);
    } catch (err) {
      throw new Error(`sweep point "${p.label}": ${(err as Error).message}`);
    }
  }
  // Each warning kind once per sweep, not once per run (a notebook's ε sweep would otherwise
  // repeat the paper calibration's warning for every point).
  return await onePerKind(() => sweepPoints(inputs, points, opts, log));
}

async function sweepPoints(
  inputs: Inputs,
  points: SweepPoint[],
  opts: SweepOptions,
  log: (line: string) => void,
): Promise<SweepResult> {
  const out: SweepResult = { points, summary: [], rounds: [], releases: [], results: [] };
  for (const [i, point] of points.entries()) {
    const seeds = opts.seeds ?? [point.config.seed];
    const t0 = performance.now();
    // Records as they come, so that a failing point still shows the rounds it completed.
    const records: RoundRecord[] = [];
    let result: ExperimentResult | null = null;
    let error: string | null = null;
    let backbone = inputs.backbone;
    try {
      if (point.lora) {
        backbone = makeBackbone(inputs.backbone.vision, inputs.backbone.prototypes, {
          rank: point.lora.rank,
          alpha: point.lora.alpha ?? inputs.backbone.alpha,
        });
      }
      result = await runExperiment({ ...inputs, backbone }, point.config, seeds, {
        outDir: opts.outDir ? `${opts.outDir}/${safeName(point.label)}` : undefined,
        describe: { sweepLabel: point.label, sweepParams: point.params },
        onRound: (r) => records.push(r),
      });
    } catch (err) {
      if (opts.onError !== "record") {
        throw new Error(`sweep point "${point.label}": ${(err as Error).message}`);
      }
      error = (err as Error).message;
    } finally {
      if (backbone !== inputs.backbone) backbone.prototypes.dispose();
    }
    out.results.push(result);
    out.summary.push(result ? summaryRow(point, result) : failedRow(point, error!, seeds));
    for (const seed of new Set(records.map((r) => r.seed))) {
      const mine = records.filter((r) => r.seed === seed);
      out.rounds.push(...mine.map((r) => roundRow(point, r)));
      out.releases.push(...releaseRows(point, mine));
    }
    const took = `${((performance.now() - t0) / 1000).toFixed(1)} s`;
    if (!result) {
      log(
        `[${i + 1}/${points.length}] ${point.label}: FAILED after ${records.length} round(s) ` +
          `— ${error} — ${took}`,
      );
      continue;
    }
    const s = result.summary;
    const ci = out.summary[i].interval.accuracy;
    log(
      `[${i + 1}/${points.length}] ${point.label}: test acc ${s.test.accuracy.mean.toFixed(1)}% ` +
        (seeds.length > 1
          ? `± ${(ci.high - ci.mean).toFixed(1)} (95 % CI, ${seeds.length} seeds) `
          : "") +
        `(best round ${s.bestRounds.join(",")})` +
        (s.spentEpsilon === null ? "" : `, ε nominal ${s.nominalEpsilon} spent ` +
          `${formatEpsilon(s.spentEpsilon)}${s.spentEpsilonExact === false ? NO_GUARANTEE : ""}`) +
        ` — ${took}`,
    );
  }
  return out;
}

/**
 * Said after an ε computed from a noise-multiplier bound that uses the clients' private factors
 * (docs/privacy.md): a number, but no guarantee.
 */
const NO_GUARANTEE = " (not a guarantee: a bound from the clients' private factors)";

/** ε for humans: 3 significant digits, exponent form past 1e4. */
export function formatEpsilon(e: number | null): string {
  if (e === null) return "–";
  if (!Number.isFinite(e)) return String(e);
  return e >= 1e4 ? e.toExponential(2) : e.toPrecision(3);
}

function safeName(label: string): string {
  return label.replace(/[^A-Za-z0-9.=-]+/g, "_");
}

/** The metrics of each seed's best-validation round, ×100 (NaN for a seed without one). */
function perSeedMetrics(result: ExperimentResult): Record<SummaryMetric, number[]> {
  return Object.fromEntries(SUMMARY_METRICS.map((m) => [
    m,
    result.runs.map((run) => 100 * (run.best.test?.[m] ?? NaN)),
  ])) as Record<SummaryMetric, number[]>;
}

/** Mean and 95 % t interval of each metric over the seeds that have a value. */
function intervals(perSeed: Record<SummaryMetric, number[]>): Record<SummaryMetric, MeanInterval> {
  return Object.fromEntries(SUMMARY_METRICS.map((m) => {
    const values = perSeed[m].filter(Number.isFinite);
    const ci: MeanInterval = values.length
      ? meanInterval(values)
      : { mean: NaN, low: NaN, high: NaN, sd: NaN, n: 0, level: 0.95 };
    return [m, ci];
  })) as Record<SummaryMetric, MeanInterval>;
}

/**
 * The summary row of one experiment run as a sweep point (what {@link runSweep} makes of each
 * point): for callers that run {@link runExperiment} themselves, such as the demo.
 */
export function summaryRow(point: SweepPoint, result: ExperimentResult): SummaryRow {
  const s: ExperimentSummary = result.summary;
  const method = resolveMethod(point.config.method);
  const perSeed = perSeedMetrics(result);
  return {
    label: point.label,
    params: point.params,
    method: s.method,
    family: method.name,
    calibration: point.config.dp?.calibration ?? null,
    accuracy: s.test.accuracy.mean,
    accuracyStd: s.test.accuracy.std,
    recall: s.test.recall.mean,
    precision: s.test.precision.mean,
    f1: s.test.f1.mean,
    auc: s.test.auc.mean,
    seeds: s.seeds,
    perSeed,
    interval: intervals(perSeed),
    bestRounds: s.bestRounds,
    nominalEpsilon: s.nominalEpsilon,
    spentEpsilon: s.spentEpsilon,
    ...(s.spentEpsilonExact === false ? { spentEpsilonExact: false as const } : {}),
    noiseMultiplier: s.noiseMultiplier,
    stoppedAtBudget: s.stoppedAtBudget.map(({ seed, round }) => ({ seed, round })),
    seconds: s.seconds,
    error: null,
  };
}

function failedRow(point: SweepPoint, error: string, seeds: number[]): SummaryRow {
  const method = resolveMethod(point.config.method);
  const perSeed = Object.fromEntries(
    SUMMARY_METRICS.map((m) => [m, seeds.map(() => NaN)]),
  ) as Record<SummaryMetric, number[]>;
  return {
    label: point.label,
    params: point.params,
    method: method.label,
    family: method.name,
    calibration: point.config.dp?.calibration ?? null,
    accuracy: NaN,
    accuracyStd: NaN,
    recall: NaN,
    precision: NaN,
    f1: NaN,
    auc: NaN,
    seeds,
    perSeed,
    interval: intervals(perSeed),
    bestRounds: [],
    nominalEpsilon: point.config.dp?.epsilon ?? null,
    spentEpsilon: null,
    noiseMultiplier: null,
    stoppedAtBudget: [],
    seconds: NaN,
    error,
  };
}

/** The tidy rows of one experiment (e.g. from `runExperiment`), under a label. */
export function experimentRows(
  result: ExperimentResult,
  label: string,
  params: SweepPoint["params"] = {},
): { rounds: RoundRow[]; releases: ReleaseRow[] } {
  const point = { label, params };
  return {
    rounds: result.runs.flatMap((run) => run.records.map((r) => roundRow(point, r))),
    releases: result.runs.flatMap((run) => releaseRows(point, run.records)),
  };
}

function roundRow(point: Pick<SweepPoint, "label" | "params">, r: RoundRecord): RoundRow {
  return {
    label: point.label,
    params: point.params,
    method: r.method,
    seed: r.seed,
    round: r.round,
    trainLoss: r.trainLoss,
    valAccuracy: 100 * r.val.accuracy,
    testAccuracy: r.test ? 100 * r.test.accuracy : null,
    deviation: r.deviation,
    noiseEnergy: r.noiseEnergy,
    peerSigmaMax: r.peerSigmaMax,
    nominalEpsilon: r.epsilon.nominal,
    spentEpsilon: r.epsilon.spent,
    seconds: r.seconds,
  };
}

function releaseRows(
  point: Pick<SweepPoint, "label" | "params">,
  records: RoundRecord[],
): ReleaseRow[] {
  const rows: ReleaseRow[] = [];
  for (const r of records) {
    for (const p of r.phases) {
      rows.push({
        label: point.label,
        params: point.params,
        method: r.method,
        seed: r.seed,
        round: r.round,
        phase: p.phase,
        release: rows.length + 1,
        effectiveNoiseMultiplier: p.effectiveNoiseMultiplier,
        peerSigmaMax: p.peerSigmaMax,
        deviation: p.deviation,
        noiseEnergy: p.noiseEnergy,
        clippedFraction: p.clippedFraction,
        meanUpdateNorm: p.meanUpdateNorm,
      });
    }
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Point builders, one per study. Each takes a base configuration (from studyConfig) and varies
// one thing.

/**
 * DEeR's ablation grid (docs/method.md#deers-ablation-grid): deviation eliminator (module1) × noise
 * regulator (module2), each off or on; (0, 0) is plain LoRA.
 */
export function moduleGridPoints(base: FederatedConfig): SweepPoint[] {
  const points: SweepPoint[] = [];
  for (const m1 of [false, true]) {
    for (const m2 of [false, true]) {
      points.push({
        label: `eliminator ${m1 ? "on" : "off"}, regulator ${m2 ? "on" : "off"}`,
        params: { module1: m1 ? 1 : 0, module2: m2 ? 1 : 0 },
        config: { ...base, method: { method: "DEeR", eliminateDeviation: m1, regulateNoise: m2 } },
      });
    }
  }
  return points;
}

/** A method with a display name (DEeR's switches in `method`). */
export interface MethodChoice {
  name: string;
  method: FederatedConfig["method"];
}

/** The reference's four methods (docs/method.md#the-methods-as-implemented). */
export const PAPER_METHODS: MethodChoice[] = [
  { name: "LoRA", method: { method: "LoRA" } },
  { name: "FFA-LoRA", method: { method: "FFA-LoRA" } },
  { name: "DP-DyLoRA", method: { method: "DP-DyLoRA" } },
  { name: "DEeR", method: { method: "DEeR", eliminateDeviation: true, regulateNoise: true } },
];

/**
 * Privacy budget sweep: every method × calibration × target ε (DP on with the base's clip and δ).
 * Labels read `DEeR · strict · ε=4`.
 */
export function privacyPoints(
  base: FederatedConfig,
  opts: {
    methods: MethodChoice[];
    calibrations: DpSettings["calibration"][];
    epsilons: number[];
  },
): SweepPoint[] {
  const dp = base.dp ?? { calibration: "paper", clip: 0.5, epsilon: 6, delta: 1e-5 };
  return opts.methods.flatMap((m) =>
    opts.calibrations.flatMap((calibration) =>
      opts.epsilons.map((epsilon) => ({
        label: `${m.name} · ${calibration} · ε=${epsilon}`,
        params: { method: m.name, calibration, epsilon },
        config: { ...base, method: m.method, dp: { ...dp, calibration, epsilon } },
      }))
    )
  );
}

/** LoRA rank sweep (alpha fixed at the base backbone's, so the scale alpha/r changes too). */
export function rankPoints(base: FederatedConfig, ranks: number[], alpha?: number): SweepPoint[] {
  return ranks.map((rank) => ({
    label: `r = ${rank}`,
    params: { rank },
    config: base,
    lora: { rank, alpha },
  }));
}

/** Label-skew sweep: Dirichlet α per value, `"iid"` for an equal random split. */
export function heterogeneityPoints(
  base: FederatedConfig,
  alphas: (number | "iid")[],
): SweepPoint[] {
  return alphas.map((a) => ({
    label: a === "iid" ? "IID" : `α = ${a}`,
    params: { dirichletAlpha: a === "iid" ? "IID" : a },
    config: {
      ...base,
      split: a === "iid" ? { iid: true, dirichletAlpha: base.split.dirichletAlpha } : {
        iid: false,
        dirichletAlpha: a,
      },
    },
  }));
}

/**
 * Number-of-clients sweep. The per-client batch stays at the base's, so every K does the same
 * number of local steps per epoch in total; under DP the noise per client is σC/√K.
 */
export function clientCountPoints(base: FederatedConfig, counts: number[]): SweepPoint[] {
  return counts.map((K) => ({
    label: `K = ${K}`,
    params: { numClients: K },
    config: { ...base, numClients: K },
  }));
}

/** One point per method (optionally with its own DP calibration, or `null` for no DP). */
export function methodPoints(
  base: FederatedConfig,
  methods: (MethodChoice & { calibration?: DpSettings["calibration"] | null })[],
): SweepPoint[] {
  const dp = base.dp ?? { calibration: "paper", clip: 0.5, epsilon: 6, delta: 1e-5 };
  return methods.map((m) => ({
    label: m.name,
    params: {
      method: m.name,
      calibration: m.calibration === undefined ? base.dp?.calibration ?? "none" : m.calibration ??
        "none",
    },
    config: {
      ...base,
      method: m.method,
      dp: m.calibration === undefined
        ? base.dp
        : m.calibration === null
        ? null
        : { ...dp, calibration: m.calibration },
    },
  }));
}

/**
 * Every point once per method: labels `DEeR · r = 4`, params merged with `{ method }`.
 *
 * @example
 * ```ts
 * const base = studyConfig(studyScale(true));
 * withMethods(heterogeneityPoints(base, [0.1, "iid"]), PAPER_METHODS.slice(0, 1)).length; // 2 points
 * ```
 */
export function withMethods(points: SweepPoint[], methods: MethodChoice[]): SweepPoint[] {
  return methods.flatMap((m) =>
    points.map((p) => ({
      ...p,
      label: `${m.name} · ${p.label}`,
      params: { ...p.params, method: m.name },
      config: { ...p.config, method: m.method },
    }))
  );
}

/** One line saying what a study runs on: data, model, protocol and mode. */
export function describeStudy(scale: StudyScale, inputs: Inputs): string {
  const d = inputs.data;
  const b = inputs.backbone;
  return `${d.name}: ${d.train.labels.length} train / ${d.val.labels.length} val / ` +
    `${d.test.labels.length} test images, ${d.classNames.length} classes; model ` +
    `${inputs.provenance.model.split("/").slice(-2).join("/")} (width ${b.dims.dIn}, ` +
    `${b.dims.adapters} LoRA adapters, r = ${b.rank}); K = ${scale.numClients}, ` +
    `Dirichlet α = ${scale.dirichletAlpha}, T = ${scale.rounds}, E = ${scale.localEpochs}, ` +
    `batch ${scale.batchSize}, lr ${scale.lr}; DP C = ${scale.clip}, ε = ${scale.epsilon}, ` +
    `δ = ${scale.delta}; seeds ${scale.seeds.join(", ")}; ` +
    `${scale.quick ? "QUICK mode (DEER_NOTEBOOK_QUICK=1)" : "full mode"}`;
}

/**
 * The measured ranking of a sweep in one sentence (highest and lowest of a metric), so that a
 * notebook states what this run showed, whatever it was.
 */
export function describeRanking(
  rows: SummaryRow[],
  metric: "accuracy" | "recall" | "precision" | "f1" | "auc" = "accuracy",
): string {
  const failed = rows.filter((r) => r.error !== null);
  const failures = failed.length
    ? ` Failed: ${
      failed.map((r) => `${r.label} (${r.error!.split("\n")[0].slice(0, 120)})`).join("; ")
    }.`
    : "";
  rows = rows.filter((r) => r.error === null);
  if (rows.length === 0) return `no completed runs.${failures}`;
  const sorted = [...rows].sort((a, b) => b[metric] - a[metric]);
  const best = sorted[0], worst = sorted[sorted.length - 1];
  const order = sorted.map((r) => `${r.label} ${r[metric].toFixed(1)}`).join(" > ");
  const n = Math.max(...rows.map((r) => r.seeds.length));
  const over = n === 1 ? "1 seed" : `mean over ${n} seeds`;
  return `test ${metric} (best-val round, ${over}): highest ${best.label} ` +
    `(${best[metric].toFixed(1)}%), lowest ${worst.label} (${worst[metric].toFixed(1)}%), spread ` +
    `${(best[metric] - worst[metric]).toFixed(1)} points. Order: ${order}. An order of ` +
    `${n === 1 ? "single runs" : "means"} is not evidence of a difference; the paired ` +
    `comparisons say which gaps exceed seed-to-seed noise.${failures}`;
}

/** A paired comparison of one sweep point with another over the seeds both ran. */
export interface PointComparison {
  /** The point compared, and the point it is compared with (difference: label − baseline). */
  label: string;
  baseline: string;
  metric: SummaryMetric;
  /** Seeds with a value on both sides, in the point's order. */
  seeds: number[];
  /** Null when there is nothing to compare (see {@link error}). */
  comparison: PairedComparison | null;
  /** Why there is no comparison (a failed run, no shared seed), else null. */
  error: string | null;
  /** The comparison in one sentence ({@link describeComparison}), or the reason there is none. */
  sentence: string;
}

/**
 * Compares sweep points pairwise over their shared seeds: `[label, baseline]` pairs, difference
 * label − baseline of `metric` (default accuracy), paired by seed.
 *
 * @example
 * ```ts
 * const scale = studyScale(true); // the CI size: 2 rounds, a small subset, one seed
 * const inputs = await loadStudyInputs(scale);
 * const sweep = await runSweep(
 *   inputs,
 *   withMethods(rankPoints(studyConfig(scale), [2]), PAPER_METHODS.filter((m) => ["LoRA", "DEeR"].includes(m.name))),
 * );
 * comparePoints(sweep.summary, [["DEeR · r = 2", "LoRA · r = 2"]])[0].sentence;
 * // "DEeR · r = 2 − LoRA · r = 2 = … points on 1 seed: one seed gives no interval and no test, …"
 * // With three seeds: "DEeR − LoRA = +2.6 points [−0.4, 5.5] over 3 paired seeds (…): not significant at 5 %."
 * inputs.dispose();
 * ```
 */
export function comparePoints(
  rows: SummaryRow[],
  pairs: [string, string][],
  opts: { metric?: SummaryMetric } = {},
): PointComparison[] {
  const metric = opts.metric ?? "accuracy";
  const byLabel = new Map(rows.map((r) => [r.label, r]));
  return pairs.map(([label, baseline]) => {
    const x = byLabel.get(label), y = byLabel.get(baseline);
    const none = (error: string): PointComparison => ({
      label,
      baseline,
      metric,
      seeds: [],
      comparison: null,
      error,
      sentence: `${differenceName({ label, baseline })}: no comparison (${error}).`,
    });
    if (!x || !y) {
      throw new Error(
        `comparePoints: no point labelled "${!x ? label : baseline}"; have ${
          rows.map((r) => `"${r.label}"`).join(", ")
        }`,
      );
    }
    const failed = [x, y].filter((r) => r.error !== null).map((r) => r.label);
    if (failed.length) return none(`${failed.join(" and ")} failed`);
    const value = (r: SummaryRow, seed: number) => r.perSeed[metric][r.seeds.indexOf(seed)];
    const seeds = x.seeds.filter((seed) =>
      y.seeds.includes(seed) && Number.isFinite(value(x, seed)) && Number.isFinite(value(y, seed))
    );
    if (seeds.length === 0) return none("no seed with a value on both sides");
    const comparison = pairedComparison(
      seeds.map((seed) => value(x, seed)),
      seeds.map((seed) => value(y, seed)),
    );
    const unit = metric === "accuracy" ? "points" : `${METRIC_WORDS[metric]} points`;
    return {
      label,
      baseline,
      metric,
      seeds,
      comparison,
      error: null,
      sentence: describeComparison(comparison, termOf(label), termOf(baseline), { unit }),
    };
  });
}

/** "= 0.048" or "< 0.001". */
function pText(p: number): string {
  const s = formatP(p);
  return s.startsWith("<") ? s : `= ${s}`;
}

/** A label as a term of a difference: in parentheses when it holds a comma. */
function termOf(label: string): string {
  return label.includes(",") ? `(${label})` : label;
}

/** "DEeR − LoRA", "(eliminator on, regulator on) − (eliminator off, regulator off)". */
export function differenceName(c: Pick<PointComparison, "label" | "baseline">): string {
  return `${termOf(c.label)} − ${termOf(c.baseline)}`;
}

const METRIC_WORDS: Record<SummaryMetric, string> = {
  accuracy: "accuracy",
  recall: "macro-recall",
  precision: "macro-precision",
  f1: "macro-F1",
  auc: "AUC",
};

/**
 * Compares every point with its baseline, paired by seed: `baseline` is one point's label (every
 * other point is compared with it) or a function giving each row's baseline label (null or the
 * row's own label: no comparison for that row).
 *
 * @example
 * ```ts
 * const scale = studyScale(true); // the CI size: 2 rounds, a small subset, one seed
 * const inputs = await loadStudyInputs(scale);
 * const sweep = await runSweep(
 *   inputs,
 *   withMethods(rankPoints(studyConfig(scale), [2]), PAPER_METHODS.filter((m) => ["LoRA", "DEeR"].includes(m.name))),
 * );
 * compareToBaseline(sweep.summary, "LoRA · r = 2").length; // 1: DEeR against LoRA
 * compareToBaseline(sweep.summary, (r) => r.params.method === "LoRA" ? null : "LoRA · r = 2").length; // 1
 * inputs.dispose();
 * ```
 */
export function compareToBaseline(
  rows: SummaryRow[],
  baseline: string | ((row: SummaryRow) => string | null | undefined),
  opts: { metric?: SummaryMetric } = {},
): PointComparison[] {
  const baselineOf = typeof baseline === "string" ? () => baseline : baseline;
  const pairs: [string, string][] = [];
  for (const r of rows) {
    const b = baselineOf(r);
    if (b !== null && b !== undefined && b !== r.label) pairs.push([r.label, b]);
  }
  return comparePoints(rows, pairs, opts);
}

/**
 * The findings of a set of comparisons as text a notebook prints: one sentence per comparison,
 * then a count of the significant ones (with the multiple-comparison caveat) and what this many
 * seeds can show. Everything in it is computed from the comparisons.
 */
export function describeComparisons(comparisons: PointComparison[], alpha = 0.05): string {
  if (comparisons.length === 0) return "No comparisons.";
  const done = comparisons.filter((c) => c.comparison !== null);
  const lines = comparisons.map((c) => `- ${c.sentence}`);
  const n = Math.max(0, ...done.map((c) => c.comparison!.n));
  const level = `${Number((100 * alpha).toPrecision(3))} %`;
  if (n >= 2) {
    const significant = done.filter((c) => c.comparison!.tTestP < alpha);
    const confirmed = significant.filter((c) => c.comparison!.signFlipP < alpha);
    const names = (cs: PointComparison[]) =>
      cs.map((c) => `${differenceName(c)}, p ${pText(c.comparison!.tTestP)}`).join("; ");
    lines.push(
      significant.length === 0
        ? `No difference is significant at ${level} (paired t-test over ${n} seeds).`
        : `Significant at ${level} by the paired t-test: ${significant.length} of ` +
          `${done.length} (${names(significant)}); confirmed by the exact sign-flip test: ` +
          `${confirmed.length}.` +
          (done.length > 1
            ? ` Each comparison is tested on its own, without correction for the ` +
              `${done.length} made here: where there is no real difference, each still comes out ` +
              `significant with probability ${level} (${(alpha * done.length).toFixed(1)} ` +
              `expected among ${done.length}).`
            : ""),
    );
  }
  lines.push(seedsCaveat(n === 0 ? 1 : n));
  return lines.join("\n");
}

/**
 * The frozen model's test metrics (×100): the pretrained encoder with its prototypes and no LoRA
 * update — the baseline every fine-tuning run should beat. It does not depend on the seed.
 */
export async function frozenModelMetrics(inputs: Inputs): Promise<Record<SummaryMetric, number>> {
  const m = await evaluateSplit(inputs.backbone, null, inputs.data.test);
  return Object.fromEntries(SUMMARY_METRICS.map((k) => [k, 100 * m[k]])) as Record<
    SummaryMetric,
    number
  >;
}

/**
 * The lowest and highest value of a per-round (or per-release) quantity for each point, over its
 * rounds and seeds, in one sentence: what a notebook quotes about a curve, computed from this run.
 *
 * @example
 * ```ts
 * const scale = studyScale(true); // the CI size: 2 rounds, a small subset, one seed
 * const inputs = await loadStudyInputs(scale);
 * const sweep = await runSweep(
 *   inputs,
 *   withMethods(rankPoints(studyConfig(scale), [2]), PAPER_METHODS.filter((m) => ["LoRA", "DEeR"].includes(m.name))),
 * );
 * describeRange(sweep.rounds, (r) => r.deviation, "‖D‖_F per round");
 * // "‖D‖_F per round, lowest–highest over rounds and seeds: LoRA · r = 2 1.12–1.12; DEeR · r = 2 9.6e-16–1.3e-15."
 * inputs.dispose();
 * ```
 */
export function describeRange<R extends { label: string }>(
  rows: R[],
  value: (r: R) => number | null,
  name: string,
): string {
  const labels = [...new Set(rows.map((r) => r.label))];
  const parts = labels.map((label) => {
    const vs = rows.filter((r) => r.label === label).map(value)
      .filter((v): v is number => v !== null && Number.isFinite(v));
    if (vs.length === 0) return `${label} –`;
    const lo = Math.min(...vs), hi = Math.max(...vs);
    return lo === hi
      ? `${label} ${formatValue(lo)}`
      : `${label} ${formatValue(lo)}–${formatValue(hi)}`;
  });
  return `${name}, lowest–highest over rounds and seeds: ${parts.join("; ")}.`;
}

/** 3 significant digits; exponent form below 1e-3 and from 1e4 (0 stays 0). */
function formatValue(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a < 1e-3 || a >= 1e4 ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

/**
 * The client-level ε each point spent (largest over its seeds, δ = the config's) against the
 * nominal ε it targeted, in one sentence.
 */
export function describeSpentEpsilon(rows: SummaryRow[]): string {
  const parts = rows.filter((r) => r.error === null).map((r) =>
    r.spentEpsilon === null
      ? `${r.label} no DP`
      : `${r.label} ${formatEpsilon(r.spentEpsilon)} (nominal ${r.nominalEpsilon}${
        r.spentEpsilonExact === false ? `;${NO_GUARANTEE}` : ""
      })`
  );
  return `Client-level ε spent by the end of the run (largest over seeds): ${parts.join("; ")}.`;
}
