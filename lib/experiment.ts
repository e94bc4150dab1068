/**
 * Experiments: resolve a data set and a foundation model from names and paths, run a federated
 * configuration over several seeds, and summarise (mean ± population std of the test metrics at
 * the best-validation round, docs/protocol.md#evaluation-and-model-selection; the ε actually spent,
 * docs/privacy.md#what-every-run-reports). `deno task train`, `deno task demo` and the notebooks
 * all go through here.
 *
 * Results layout, written atomically (`outDir/<run>/`):
 * `config.json` (settings, provenance and SHA-256 fingerprints of the input files),
 * `seed-<s>/records.jsonl` (one JSON record per round), `seed-<s>/ledger.json`,
 * `seed-<s>/checkpoints/round-NNNN.safetensors`, `seed-<s>/state.json` (resume), `summary.json`.
 * A run holds the folder's lock (lib/io/lock.ts) from before its first write to its end; a
 * resume is refused when the inputs' fingerprints changed, and the saved state is validated by
 * lib/fl/checkpoint.ts.
 *
 * @example
 * ```ts
 * import { defaultConfig } from "./fl/simulation.ts";
 * const inputs = await loadInputs({ dataset: "default", rank: 8, alpha: 8 });
 * const config = { ...defaultConfig(), numClients: 4, rounds: 1, localEpochs: 1 };
 * const outDir = await Deno.makeTempDir();
 * const result = await runExperiment(inputs, config, [10], { outDir });
 * result.summary.test.accuracy.mean; // test accuracy ×100 at the best-validation round
 * inputs.dispose();
 * ```
 * @module
 */
import { dirname, join } from "node:path";
import { existsSync } from "node:fs";
import type { ImageDataset } from "./data/dataset.ts";
import { KNOWN_DATASETS, SPLITS } from "./data/dataset.ts";
import { resizeVolumes, volumeSide } from "./data/volume.ts";
import { loadMedMnist, medmnistInfo } from "./data/medmnist.ts";
import { loadImageFolder } from "./data/image_folder.ts";
import type { VitActivation } from "./model/transformer.ts";
import { loadVisionEncoder } from "./model/vit_checkpoints.ts";
import { inflateForVolumes } from "./model/vit_volume.ts";
import type { VitEncoder } from "./model/vit.ts";
import { loadPrototypes, orthonormalPrototypes } from "./model/head.ts";
import { makeBackbone, type SharedBackbone } from "./fl/backbone.ts";
import {
  type FederatedConfig,
  type RemoteClients,
  type RoundRecord,
  runFederated,
  type RunResult,
  validateConfig,
} from "./fl/simulation.ts";
import { resolveMethod } from "./fl/methods/mod.ts";
import { meanStd, type Metrics } from "./metrics/classification.ts";
import { removeStaleTemporaries, writeFileAtomic, writeJsonAtomic } from "./io/atomic.ts";
import { ledgerToJson } from "./privacy/ledger.ts";
import { acquireRunLock, describeHolder, LOCK_FILE, type RunLock } from "./io/lock.ts";
import {
  type Fingerprint,
  fingerprint,
  fingerprintChanges,
  inputIdentity,
} from "./io/fingerprint.ts";
import { hasContent, moveAside, removeAside } from "./io/run_folder.ts";
import { DamagedStateError } from "./fl/checkpoint.ts";
import { findNonFinite } from "./model/safetensors.ts";
import { UsageError } from "./cli.ts";

/** Where the toolkit's embedded default data set and foundation model live. */
export const DEFAULTS = {
  data: new URL("../data/default/fashion6.npz", import.meta.url).pathname,
  manifest: new URL("../data/default/fashion6.json", import.meta.url).pathname,
  model: new URL("../models/default/vit_tiny_fashion.safetensors", import.meta.url).pathname,
  prototypes: new URL("../models/default/prototypes.safetensors", import.meta.url).pathname,
} as const;

/** How to find the data and the model of an experiment. */
export interface InputSpec {
  /**
   * `default` (the embedded set), a MedMNIST name (`bloodmnist`, …), `Kvasir` or `OCT` (image
   * folders), or a path to a MedMNIST-layout `.npz`.
   */
  dataset: string;
  /** Folder (or file) holding the data; defaults per data set. */
  dataDir?: string;
  /** `default`, `CLIP` or `BiomedCLIP` (the reference's `--local_model`). */
  localModel?: string;
  /** Weights file (`.safetensors`); required for CLIP and BiomedCLIP. */
  modelPath?: string;
  /** Prototypes file, or `orthonormal` for fixed orthonormal prototypes. */
  prototypes?: string;
  /** The MLP activation of `modelPath`'s weights, for files that do not record it. */
  modelAct?: VitActivation;
  /** Expected number of classes (the reference's `--num_classes`), checked against the data. */
  numClasses?: number;
  rank: number;
  alpha: number;
}

/** Data and a shared backbone ready for {@link runExperiment}. */
export interface Inputs {
  data: ImageDataset;
  backbone: SharedBackbone;
  /** Human-readable provenance of data, model and prototypes. */
  provenance: { data: string; model: string; prototypes: string };
  /**
   * Each input file's identity ({@link inputIdentity}) taken before it was read: the run's
   * fingerprints must be of those same files, unchanged since.
   */
  readAs?: Partial<Record<keyof Inputs["provenance"], string>>;
  dispose(): void;
}

const IMAGE_FOLDERS: Record<string, string> = {
  kvasir: "kvasir-v2",
  "kvasir-v2": "kvasir-v2",
  oct: "oct-c8",
  "oct-c8": "oct-c8",
};

/** Loads the data set and the foundation model an experiment names; errors say what to fix. */
export async function loadInputs(spec: InputSpec): Promise<Inputs> {
  const localModel = (spec.localModel ?? "default").toLowerCase();
  let modelPath = spec.modelPath;
  if (modelPath === undefined) {
    if (localModel !== "default") {
      throw new Error(
        `--local_model ${spec.localModel} needs its weights: pass --model PATH to a .safetensors ` +
          `file (open_clip, Hugging Face or BiomedCLIP layout; tools/crosscheck/to_safetensors.py ` +
          `converts a PyTorch checkpoint offline)`,
      );
    }
    modelPath = DEFAULTS.model;
  }
  if (!existsSync(modelPath)) {
    throw new Error(`model file ${modelPath} does not exist; check --model`);
  }
  const protoFile = spec.prototypes ??
    (modelPath === DEFAULTS.model ? DEFAULTS.prototypes : undefined);
  if (protoFile !== undefined && protoFile !== "orthonormal" && !existsSync(protoFile)) {
    throw new Error(
      `prototypes file ${protoFile} does not exist; check --prototypes (or pass ` +
        `--prototypes orthonormal for fixed orthonormal prototypes)`,
    );
  }
  const readAs: NonNullable<Inputs["readAs"]> = { model: await inputIdentity(modelPath) };
  const encoder: VitEncoder = await loadVisionEncoder(modelPath, { act: spec.modelAct });
  try {
    // What needs only the model is checked before the data, which may take minutes to load.
    const bad = await findNonFinite(modelPath);
    if (bad) {
      throw new Error(
        `${modelPath}: tensor "${bad.tensor}" holds ${bad.value} at index ${bad.index} ` +
          `(${bad.count} non-finite value${bad.count > 1 ? "s" : ""}); the weights are corrupt ` +
          `(a diverged or badly converted checkpoint): convert or download the model again`,
      );
    }
    const width = encoder.config.width;
    if (!(Number.isInteger(spec.rank) && spec.rank >= 1 && spec.rank < width)) {
      throw new UsageError(
        `--lora_r ${spec.rank} does not fit ${modelPath}, a model of width ${width}; ` +
          `use 1 ≤ r < ${width}`,
      );
    }
    const data = await loadData(spec, encoder.config.imageSize, async (path) => {
      readAs.data = await inputIdentity(path);
    });
    if (spec.numClasses !== undefined && spec.numClasses !== data.classNames.length) {
      throw new UsageError(
        `--num_classes ${spec.numClasses} but ${data.source} has ${data.classNames.length} classes ` +
          `(${data.classNames.join(", ")}); fix --num_classes or omit it`,
      );
    }
    // Volumes: resample to a side the cubic patches tile, and inflate the 2D encoder
    // (docs/data.md#3d-volumes).
    let volumeEncoder: VitEncoder | undefined;
    if (data.train.sampleShape.length === 4) {
      const side = volumeSide(data.train.sampleShape[0], encoder.config.patchSize);
      for (const split of SPLITS) data[split] = resizeVolumes(data[split], side);
      volumeEncoder = await inflateForVolumes(encoder, {
        depth: side,
        height: side,
        width: side,
        depthPatch: encoder.config.patchSize,
      });
    }
    const vision = volumeEncoder ?? encoder;
    const C = data.classNames.length;
    let protoPath = spec.prototypes;
    if (protoPath === undefined && modelPath === DEFAULTS.model) protoPath = DEFAULTS.prototypes;
    if (protoPath === undefined) {
      throw new Error(
        `no class prototypes for ${data.name}: pass --prototypes PATH (from \`deno task prototypes\` ` +
          `with the model's text tower), or --prototypes orthonormal for fixed orthonormal ones`,
      );
    }
    if (protoPath !== "orthonormal") readAs.prototypes = await inputIdentity(protoPath);
    const prototypes = protoPath === "orthonormal"
      ? orthonormalPrototypes(C, encoder.config.embedDim, 0)
      : (await loadPrototypes(protoPath, { numClasses: C, embedDim: encoder.config.embedDim }))
        .prototypes;
    const backbone = makeBackbone(vision, prototypes, { rank: spec.rank, alpha: spec.alpha });
    prototypes.dispose();
    return {
      data,
      backbone,
      provenance: { data: data.source, model: modelPath, prototypes: protoPath },
      readAs,
      dispose() {
        backbone.prototypes.dispose();
        volumeEncoder?.dispose();
        encoder.dispose();
      },
    };
  } catch (err) {
    encoder.dispose();
    throw err;
  }
}

async function loadData(
  spec: InputSpec,
  imageSize: number,
  reading: (path: string) => Promise<void>,
): Promise<ImageDataset> {
  const name = spec.dataset;
  const key = name.toLowerCase();
  if (key === "default") {
    const manifest = JSON.parse(await Deno.readTextFile(DEFAULTS.manifest)) as {
      class_names: string[];
    };
    await reading(spec.dataDir ?? DEFAULTS.data);
    return await loadMedMnist(spec.dataDir ?? DEFAULTS.data, {
      name: "fashion6",
      classNames: manifest.class_names,
    });
  }
  if (key.endsWith(".npz")) {
    if (!existsSync(name)) {
      throw new Error(
        `--dataset ${name}: the file does not exist; give the path of a MedMNIST-layout .npz ` +
          `(train_images, train_labels, val_images, val_labels, test_images, test_labels)`,
      );
    }
    await reading(name);
    return await loadMedMnist(name, { imageSize, volumesAsStored: true });
  }
  const folder = IMAGE_FOLDERS[key];
  if (folder) {
    const dir = spec.dataDir;
    if (!dir) {
      throw new Error(`--dataset ${name} needs --data_dir, the folder with train/ val/ test/`);
    }
    await reading(dir);
    return await loadImageFolder(dir, {
      name: folder,
      classNames: KNOWN_DATASETS.imageFolders[folder].classNames,
      imageSize,
      progressEvery: 1000,
    });
  }
  if (medmnistInfo(key)) {
    const dir = spec.dataDir ?? "datasets/MedMNIST";
    const candidates = dir.endsWith(".npz")
      ? [dir]
      : [`${key}_${imageSize}.npz`, `${key}.npz`].map((f) => join(dir, f));
    const path = candidates.find((p) => existsSync(p));
    if (!path) {
      throw new Error(
        `${key}: none of ${candidates.join(", ")} exists; run \`deno task data ${key}\` or put ` +
          `the file there by hand (--data_dir names the folder)`,
      );
    }
    await reading(path);
    return await loadMedMnist(path, {
      name: key,
      imageSize,
      volumesAsStored: true,
      progressEvery: 2000,
    });
  }
  throw new Error(
    `unknown --dataset ${name}: use default, Kvasir, OCT, a MedMNIST name ` +
      `(${Object.keys(KNOWN_DATASETS.medmnist).slice(0, 4).join(", ")}, …) or a .npz path`,
  );
}

/** Mean and population std of one metric over seeds, ×100 as the paper reports. */
export interface MeanStd {
  mean: number;
  std: number;
}

/** The summary of an experiment over its seeds. */
export interface ExperimentSummary {
  method: string;
  seeds: number[];
  /** Test metrics at the best-val round, ×100, mean ± population std over seeds. */
  test: Record<keyof Metrics, MeanStd>;
  bestRounds: number[];
  /** Nominal ε the calibration targeted (null without DP). */
  nominalEpsilon: number | null;
  /** Largest client-level ε actually spent over the seeds (null without DP). */
  spentEpsilon: number | null;
  /**
   * Present (false) when a seed's ε is no guarantee: a release's noise multiplier is a bound
   * that uses the clients' private factors (`RunResult.epsilonExact`, docs/privacy.md).
   */
  spentEpsilonExact?: false;
  calibration: string | null;
  noiseMultiplier: number | null;
  /** Seeds whose run the budget guard stopped, and before which round (empty when none). */
  stoppedAtBudget: { seed: number; round: number; epsilonAfterRound: number }[];
  seconds: number;
}

/** The result of {@link runExperiment}. */
export interface ExperimentResult {
  runs: RunResult[];
  summary: ExperimentSummary;
}

/** Options of {@link runExperiment}. */
export interface ExperimentOptions {
  outDir?: string;
  resume?: boolean;
  onRound?: (record: RoundRecord) => void;
  onClient?: (
    info: { round: number; phase: string; done: number; total: number; seed: number },
  ) => void;
  /** Extra fields for `config.json` (data/model provenance, CLI flags). */
  describe?: Record<string, unknown>;
  /**
   * A run already saved in `outDir` when not resuming: `replace` it whole (the default; the old
   * folder is moved aside in one rename, then deleted) or `refuse` ({@link SavedRunError}).
   */
  existing?: "replace" | "refuse";
  /** Stops the run cleanly when aborted (the last completed round stays resumable). */
  signal?: AbortSignal;
  /** Clients in other processes (`deno task federation serve`), per seed. */
  remote?: (seed: number) => RemoteClients;
}

/** Thrown by {@link runExperiment} with `existing: "refuse"` when `outDir` holds a run. */
export class SavedRunError extends Error {
  override name = "SavedRunError";
  constructor(readonly outDir: string) {
    super(`${outDir} holds a saved run; resume it, or replace it, or choose another folder`);
  }
}

/**
 * Thrown when the data, model or prototypes changed: since the saved run (a resume), or while this
 * run was reading them.
 */
export class ChangedInputsError extends Error {
  override name = "ChangedInputsError";
}

/**
 * Runs `config` once per seed on shared inputs and summarises. Everything that can be checked
 * against the inputs is checked before the first file is written; with `resume`, a saved run
 * made with other settings is refused before anything is overwritten; and a run that fails
 * before its first round is recorded removes the folders it created.
 */
export async function runExperiment(
  inputs: Inputs,
  config: FederatedConfig,
  seeds: number[],
  opts: ExperimentOptions = {},
): Promise<ExperimentResult> {
  if (seeds.length === 0) throw new Error("runExperiment: give at least one seed");
  if (new Set(seeds).size !== seeds.length) {
    throw new UsageError(`--seeds ${seeds.join(",")}: a seed is repeated; give each seed once`);
  }
  for (const seed of seeds) validateConfig({ ...config, seed });
  checkConfigAgainstData(config, inputs.data);
  const method = resolveMethod(config.method);
  const out = opts.outDir;
  let created: string | undefined;
  let lock: RunLock | undefined;
  if (out) {
    const fingerprints = await fingerprintInputs(inputs.provenance);
    await checkReadAs(inputs);
    created = firstMissingFolder(out);
    // Held for the whole run: no second run (or resume) writes into this folder meanwhile.
    lock = await acquireRunLock(out);
    try {
      if (lock.takenOver) {
        console.error(
          `deer: ${out}: took over the lock left by ${describeHolder(lock.takenOver)}, which ` +
            `ended without releasing it`,
        );
      }
      const savedConfig = join(out, "config.json");
      if (opts.resume) {
        const conflicts = await resumeConflicts(out, config, seeds, opts.describe?.inputs);
        if (conflicts.length > 0) throw new Error(resumeRefusal(out, conflicts));
        await checkFingerprints(savedConfig, fingerprints);
        // The folder is locked by this run: every temporary file in it is a killed writer's.
        await removeStaleTemporaries(out, { recursive: true, writers: "any" });
      } else if (await hasContent(out, [LOCK_FILE])) {
        if (opts.existing === "refuse") throw new SavedRunError(out);
        // Replace the old run whole: one rename takes all of it (other seeds, later rounds'
        // checkpoints, state files) out of the way; the new run takes the new folder's lock
        // before the old lock goes.
        await moveAside(out);
        const fresh = await acquireRunLock(out);
        lock.release();
        lock = fresh;
        await removeAside(out);
        created ??= out;
      }
      if (!(opts.resume && existsSync(savedConfig))) {
        await writeJsonAtomic(savedConfig, {
          ...config,
          seed: undefined,
          seeds,
          method: { ...config.method, label: method.label, aggregates: method.aggregates },
          provenance: inputs.provenance,
          fingerprints,
          ...opts.describe,
        });
      }
    } catch (err) {
      lock.release();
      throw err;
    }
  }
  try {
    const runs: RunResult[] = [];
    for (const seed of seeds) {
      const outDir = out ? join(out, `seed-${seed}`) : undefined;
      // A lock found lost (its file removed or replaced) aborts the run at its next client, and
      // every write checks it first.
      const held = lock;
      const run = await runFederated(inputs.backbone, inputs.data, { ...config, seed }, {
        outDir,
        resume: opts.resume,
        signal: held
          ? (opts.signal ? AbortSignal.any([opts.signal, held.signal]) : held.signal)
          : opts.signal,
        ...(held ? { beforeWrite: () => held.assertHeld() } : {}),
        onRound: opts.onRound,
        onClient: opts.onClient && ((info) => opts.onClient!({ ...info, seed })),
        remote: opts.remote?.(seed),
      });
      // ledgerToJson keeps ∞ (no noise) and NaN (no RDP order, PLD) that plain JSON cannot hold.
      if (outDir && run.ledger) {
        held?.assertHeld();
        await writeFileAtomic(join(outDir, "ledger.json"), ledgerToJson(run.ledger));
      }
      runs.push(run);
    }
    const summary = summarize(runs);
    if (out) {
      lock?.assertHeld();
      await writeJsonAtomic(join(out, "summary.json"), summary);
    }
    return { runs, summary };
  } catch (err) {
    // Nothing of value was recorded: leave no results folder behind
    // (docs/architecture.md#conventions).
    if (created && !seeds.some((s) => existsSync(join(out!, `seed-${s}`, "records.jsonl")))) {
      await removeCreated(out!, created);
    }
    throw err;
  } finally {
    lock?.release();
  }
}

/** SHA-256 fingerprints of the files (or folders) the inputs came from, by role. */
export async function fingerprintInputs(
  provenance: Inputs["provenance"],
): Promise<Record<string, Fingerprint | null>> {
  const out: Record<string, Fingerprint | null> = {};
  for (const [role, path] of Object.entries(provenance)) {
    out[role] = path && path !== "orthonormal" && existsSync(path) ? await fingerprint(path) : null;
  }
  return out;
}

/**
 * Throws, naming the input, when a file was replaced or edited between the time the run read it
 * and its fingerprint ({@link Inputs.readAs}): the fingerprint saved would not be of what the run
 * trains on.
 */
async function checkReadAs(inputs: Inputs): Promise<void> {
  for (const [role, before] of Object.entries(inputs.readAs ?? {})) {
    const path = inputs.provenance[role as keyof Inputs["provenance"]];
    const now = await inputIdentity(path).catch(() => "gone");
    if (now !== before) {
      throw new ChangedInputsError(
        `the ${role} ${path} changed while the run was reading it (a file replaced, edited, added ` +
          `or removed since it was loaded), so its fingerprint would not be of what the run ` +
          `trains on; make sure nothing writes the inputs while a run starts, and start it again`,
      );
    }
  }
}

/** Refuses a resume whose inputs' fingerprints differ from those saved in `configPath`. */
async function checkFingerprints(
  configPath: string,
  now: Record<string, Fingerprint | null>,
): Promise<void> {
  let saved: { fingerprints?: Record<string, Fingerprint | null> };
  try {
    saved = JSON.parse(await Deno.readTextFile(configPath));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return; // nothing saved: a fresh start
    throw err; // resumeConflicts has named the damage already
  }
  if (saved.fingerprints === undefined) {
    console.error(
      `deer: ${configPath} holds no input fingerprints (a run saved by an older version); the ` +
        `resume cannot verify that the data, model and prototypes are unchanged`,
    );
    return;
  }
  if (saved.fingerprints === null || typeof saved.fingerprints !== "object") {
    throw new DamagedStateError(
      `${configPath}: "fingerprints" is ${JSON.stringify(saved.fingerprints)}; the file is ` +
        `damaged: start the run again without resume (this replaces it)`,
    );
  }
  const changes = fingerprintChanges(saved.fingerprints, now);
  if (changes.length > 0) {
    throw new ChangedInputsError(
      `the inputs changed since the run saved in ${configPath} started (${changes.join("; ")}); ` +
        `a resumed run must train on the same files: put the original files back, or start the ` +
        `run again without resume (this replaces it)`,
    );
  }
}

/** Checks of the settings that need the data (before any file is written). */
function checkConfigAgainstData(config: FederatedConfig, data: ImageDataset): void {
  const n = data.train.labels.length;
  // Every split is used: train by the clients, val to select a round every round, test at the
  // selected rounds. An empty one is a data problem, found before round 1.
  for (
    const [split, role] of [
      ["train", "the clients train on it"],
      ["val", "every round is evaluated on it to select the best one"],
      ["test", "the selected rounds are evaluated on it"],
    ] as const
  ) {
    if (data[split].labels.length === 0) {
      throw new Error(
        `${data.source}: the ${split} split holds no images, but ${role}; give the data set a ` +
          `non-empty ${split} split`,
      );
    }
  }
  if (config.numClients > n) {
    throw new UsageError(
      `--node_num ${config.numClients} exceeds the ${n} training images of ${data.name}: some ` +
        `clients would hold none; use --node_num ≤ ${n}`,
    );
  }
  if (config.dp?.calibration === "paper" && config.batchSize > n) {
    throw new UsageError(
      `--batchsize ${config.batchSize} exceeds the ${n} training images of ${data.name}; paper ` +
        `calibration samples b/N of them per step: use --batchsize ≤ ${n}`,
    );
  }
}

/** Flags that set each saved field, to name them when a resume is refused. */
const FLAG_OF: Record<string, string> = {
  method: "--method/--module1/--module2",
  numClients: "--node_num",
  rounds: "--T",
  localEpochs: "--E",
  batchSize: "--batchsize",
  sgd: "--lr",
  split: "--iid/--dirichlet_alpha",
  weights: "--weights",
  participation: "--participation",
  momentum: "--momentum",
  dp: "--is_DP/--C/--epsilon/--calibration/--delta/--max_epsilon",
  seeds: "--seeds",
  dataset: "--dataset",
  dataDir: "--data_dir",
  localModel: "--local_model",
  modelPath: "--model",
  modelAct: "--model_act",
  prototypes: "--prototypes",
  numClasses: "--num_classes",
  rank: "--lora_r",
  alpha: "--lora_alpha",
};

/**
 * How the settings of a run differ from those saved in `outDir/config.json` (one line per
 * field: `--T: 3 in the saved run, 5 now`); [] when they agree or nothing is saved there.
 * `inputs` (the {@link InputSpec}) is compared when both it and the saved run have one.
 *
 * @example
 * ```ts
 * import { defaultConfig } from "./fl/simulation.ts";
 * const config = { ...defaultConfig(), rounds: 2 };
 * const diff = await resumeConflicts(await Deno.makeTempDir(), config, [10]);
 * diff; // []: nothing saved there, so nothing conflicts
 * ```
 */
export async function resumeConflicts(
  outDir: string,
  config: FederatedConfig,
  seeds: number[],
  inputs?: unknown,
): Promise<string[]> {
  const path = join(outDir, "config.json");
  let saved: Record<string, unknown>;
  try {
    saved = JSON.parse(await Deno.readTextFile(path));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw new DamagedStateError(
      `${path} cannot be read (${(err as Error).message}); it is damaged: start the run again ` +
        `without resume (this replaces it), or choose another results folder`,
    );
  }
  if (saved === null || typeof saved !== "object" || Array.isArray(saved)) {
    throw new DamagedStateError(
      `${path} does not hold a JSON object; it is damaged: start the run again without resume ` +
        `(this replaces it), or choose another results folder`,
    );
  }
  const show = (v: unknown) => (v === undefined ? "unset" : JSON.stringify(v));
  const diff: string[] = [];
  const compare = (key: string, then: unknown, now: unknown) => {
    if (JSON.stringify(then) !== JSON.stringify(now)) {
      diff.push(`${FLAG_OF[key] ?? key}: ${show(then)} in the saved run, ${show(now)} now`);
    }
  };
  for (const [key, now] of Object.entries(config)) {
    if (key === "seed") continue;
    if (key === "method") {
      const label = (saved.method as { label?: string } | undefined)?.label;
      compare(key, label, resolveMethod(config.method).label);
    } else compare(key, saved[key], now);
  }
  compare("seeds", saved.seeds, seeds);
  const savedInputs = saved.inputs as Record<string, unknown> | undefined;
  if (savedInputs && inputs && typeof inputs === "object") {
    for (const [key, now] of Object.entries(inputs as Record<string, unknown>)) {
      compare(key, savedInputs[key], now);
    }
  }
  return diff;
}

/** The error text of a refused resume. */
export function resumeRefusal(outDir: string, conflicts: string[]): string {
  return `--resume: ${outDir} holds a run with other settings (${conflicts.join("; ")}); ` +
    `resume with the saved run's flags, or drop --resume and add --overwrite to start it again ` +
    `(this replaces it), or choose another --exp_name / --out`;
}

/** The outermost folder of `path` that does not exist yet (the one a write would create). */
function firstMissingFolder(path: string): string | undefined {
  let missing: string | undefined;
  for (let p = path; !existsSync(p); p = dirname(p)) {
    missing = p;
    if (dirname(p) === p) break;
  }
  return missing;
}

/** Removes `outDir` and then its parents up to `created` while they are empty. */
async function removeCreated(outDir: string, created: string): Promise<void> {
  await Deno.remove(outDir, { recursive: true }).catch(() => {});
  for (let p = dirname(outDir); p.length >= created.length && p !== dirname(p); p = dirname(p)) {
    // Non-recursive: a folder another run has written into meanwhile stays.
    try {
      await Deno.remove(p);
    } catch {
      break;
    }
  }
}

/** Mean ± population std (×100) of the best-val test metrics, and the privacy spent. */
export function summarize(runs: RunResult[]): ExperimentSummary {
  const keys: (keyof Metrics)[] = ["accuracy", "recall", "precision", "f1", "auc"];
  const test = Object.fromEntries(keys.map((k) => {
    const values = runs.map((r) => 100 * (r.best.test?.[k] ?? NaN));
    return [k, meanStd(values, { nonFinite: "propagate" })];
  })) as Record<keyof Metrics, MeanStd>;
  const spent = runs.map((r) => r.epsilonSpent).filter((e): e is number => e !== null);
  const cal = runs[0].calibration;
  return {
    method: runs[0].method,
    seeds: runs.map((r) => r.config.seed),
    test,
    bestRounds: runs.map((r) => r.best.round),
    nominalEpsilon: cal?.nominalEpsilon ?? null,
    spentEpsilon: spent.length ? Math.max(...spent) : null,
    ...(runs.some((r) => r.epsilonExact === false) ? { spentEpsilonExact: false as const } : {}),
    calibration: cal?.calibration ?? null,
    noiseMultiplier: cal?.noiseMultiplier ?? null,
    stoppedAtBudget: runs.filter((r) => r.stopped).map((r) => ({
      seed: r.config.seed,
      round: r.stopped!.round,
      epsilonAfterRound: r.stopped!.epsilonAfterRound,
    })),
    seconds: runs.reduce((s, r) => s + r.seconds, 0),
  };
}
