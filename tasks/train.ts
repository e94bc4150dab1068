/**
 * `deno task train` — federated LoRA fine-tuning with the reference's flags (snake_case as in
 * the reference's `main.py`; kebab-case aliases accepted). Every value is checked before any
 * work; results go to `<out>/<exp_name>/<run>/` (see lib/experiment.ts), written atomically and
 * resumable with `--resume`.
 *
 * With no flags it runs DEeR on the embedded default data and model.
 *
 * @module
 */
import "./threads.ts"; // first: sets the thread count before libtensorflow loads
// second: notes whether SIGHUP is ignored (nohup) before any signal listener resets it
import { ignoresHangup, watchLauncher } from "../lib/io/launcher.ts";
import { join } from "node:path";
import { createProgress, parseArgs, UsageError } from "../lib/cli.ts";
import { existsSync } from "node:fs";
import {
  defaultConfig,
  type FederatedConfig,
  type RoundRecord,
  validateConfig,
} from "../lib/fl/simulation.ts";
import { methodChoices, resolveMethod } from "../lib/fl/methods/mod.ts";
import { accountantOf } from "../lib/privacy/calibration.ts";
import {
  ChangedInputsError,
  loadInputs,
  resumeConflicts,
  resumeRefusal,
  runExperiment,
  SavedRunError,
} from "../lib/experiment.ts";
import { backendName } from "../lib/backend.ts";
import { LOCK_FILE, lockHolder, RunLockedError } from "../lib/io/lock.ts";
import {
  checkOutputPath,
  checkRunName,
  describeFsError,
  hasContent,
  isFsError,
} from "../lib/io/run_folder.ts";
import { DamagedStateError } from "../lib/fl/checkpoint.ts";
import { BudgetOutOfReachError } from "../lib/privacy/rdp.ts";

const HELP = `deno task train [flags]

Reference flags (github.com/CUHK-AIM-Group/DEeR main.py):
  --exp_name NAME         results sub-folder: one folder name of letters, digits and . _ - + = @ ,
                          (default: default)
  --data_dir PATH         data folder or .npz (default per --dataset)
  --dataset NAME          default | Kvasir | OCT | a MedMNIST name (bloodmnist, …) | PATH.npz
  --node_num K            clients (default 12)
  --iid 0|1               1: equal random split; 0: Dirichlet label skew (default 0)
  --dirichlet_alpha A     Dirichlet α (default 0.1)
  --local_model NAME      default | CLIP | BiomedCLIP (CLIP/BiomedCLIP need --model)
  --T ROUNDS              communication rounds (default 50; 8 on the default data)
  --E EPOCHS              local epochs (default 5; 1 on the default data)
  --lr LR                 SGD learning rate (default 0.01)
  --num_classes C         checked against the data
  --lora_r R              LoRA rank (default 8); FLoRA also takes one per client, e.g. 4,8,16
  --method NAME           ${methodChoices()}
  --is_DP 0|1             differential privacy (default 0)
  --C CLIP                clip bound (default 0.5)
  --epsilon EPS           target ε (default 6)
  --module1 0|1           DEeR deviation eliminator (default 1)
  --module2 0|1           DEeR noise regulator (default 1)
  --batchsize B           batch per client (default: Kvasir 128//K, OCT 512//K, else 128//K)
  --device X              accepted for compatibility and ignored (set DEER_BACKEND instead)

Toolkit flags:
  --seeds 10,100,1000     seeds; mean ± population std over them (default 10,100,1000; 10 on the default data)
  --calibration paper|strict|local  paper: as the reference (δ = 1/K, sample-level; NOT a
                          client-level guarantee — the ε actually spent is reported); strict:
                          client-level, the server adds the noise; local: local DP, every client
                          adds its own noise and is accounted on its own (default paper)
  --delta D               δ of client-level accounting (default 1e-5)
  --weights uniform|size  aggregation weights (default uniform)
  --participation Q       fraction of clients per round: each client joins each release
                          independently with probability Q (default 1; strict or local calibration)
  --accountant rdp|pld    the accountant of the client-level ε: pld (privacy loss distributions,
                          exact for full participation; default with --calibration strict or local,
                          whose σ it calibrates) or rdp (as opacus; default with --calibration paper)
  --max_epsilon E         stop before a round whose releases would bring the spent ε above E
                          (strict or local calibration — local: any site's ε; the round is not
                          run, --resume will not pass E)
  --noise seeded|secret   where the DP noise and the sampled cohorts come from: seeded (default)
                          from the run seed, reproducible, so anyone who knows the seed can
                          regenerate the noise and subtract it (studies, not a released model);
                          secret from a random key kept in <seed folder>/noise.key (mode 600)
  --momentum reset|reference  optimiser state between local trainings (default reset)
  --lora_alpha A          LoRA alpha (default 8; scale alpha/r)
  --model PATH            foundation-model weights (.safetensors)
  --model_act gelu|quick_gelu  the model's MLP activation, for weights that do not record it
  --prototypes PATH|orthonormal  class prototypes (default: the model's own for the default model)
  --out DIR               results root (default results)
  --resume                continue a stopped run with the same flags (its inputs must be unchanged)
  --overwrite             replace a run already saved in the results folder
  -h, --help              this text
`;

const STRING_FLAGS = [
  "exp_name",
  "data_dir",
  "dataset",
  "node_num",
  "iid",
  "dirichlet_alpha",
  "local_model",
  "T",
  "E",
  "lr",
  "num_classes",
  "lora_r",
  "method",
  "is_DP",
  "C",
  "epsilon",
  "module1",
  "module2",
  "batchsize",
  "device",
  "seeds",
  "calibration",
  "delta",
  "weights",
  "participation",
  "max_epsilon",
  "accountant",
  "noise",
  "momentum",
  "lora_alpha",
  "model",
  "model_act",
  "prototypes",
  "out",
] as const;

/** Every snake_case flag also answers to its kebab-case spelling (and `--is-dp`). */
function aliases(): Record<string, string[]> {
  const out: Record<string, string[]> = { help: ["h"] };
  for (const f of STRING_FLAGS) {
    const kebab = f.replace(/_/g, "-");
    const extra = new Set([kebab, kebab.toLowerCase()].filter((a) => a !== f));
    if (extra.size) out[f] = [...extra];
  }
  return out;
}

/** A parsed, validated command line. */
export interface TrainArgs {
  expName: string;
  out: string;
  resume: boolean;
  overwrite: boolean;
  seeds: number[];
  inputs: Parameters<typeof loadInputs>[0];
  config: Omit<FederatedConfig, "seed">;
}

function num(
  flags: Record<string, unknown>,
  name: string,
  fallback: number,
  check: (v: number) => boolean,
  want: string,
): number {
  const raw = flags[name];
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (String(raw).trim() === "" || !Number.isFinite(v) || !check(v)) {
    throw new UsageError(`--${name} ${raw}: expected ${want}`);
  }
  return v;
}

const int = (v: number) => Number.isInteger(v);
const flag01 = (v: number) => v === 0 || v === 1;

const BOOLEAN_FLAGS = ["resume", "overwrite", "help"] as const;

/**
 * `--epsilon -1` as `--epsilon=-1`: a value that starts with a dash would otherwise read as a
 * flag, and the range check could not say what is wrong with it.
 */
function attachNegativeValues(args: string[]): string[] {
  const takesValue = new Set(Object.entries(aliases()).flatMap(([k, v]) => [k, ...v]));
  for (const f of STRING_FLAGS) takesValue.add(f);
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i], next = args[i + 1];
    if (
      a.startsWith("--") && !a.includes("=") && takesValue.has(a.slice(2)) &&
      next !== undefined && /^-(\d|\.\d|inf)/i.test(next)
    ) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/** lib/cli.ts words the parser's errors; an unknown flag also points at `--help` here. */
function explainParseError(err: UsageError): UsageError {
  return err.message.startsWith("unknown flag ")
    ? new UsageError(`${err.message}; --help lists the flags`)
    : err;
}

/** Parses and validates `args`; throws {@link UsageError} with the flag and the fix. */
export function parseTrainArgs(args: string[]): TrainArgs | null {
  let f: ReturnType<typeof parseArgs>;
  try {
    f = parseArgs(attachNegativeValues(args), {
      string: STRING_FLAGS,
      boolean: BOOLEAN_FLAGS,
      alias: aliases(),
    });
  } catch (err) {
    throw err instanceof UsageError ? explainParseError(err) : err;
  }
  if (f.help) return null;
  if (f._.length > 0) throw new UsageError(`unexpected argument ${f._[0]}; flags start with --`);
  const expName = String(f.exp_name ?? "default");
  try {
    checkRunName(expName, "--exp_name");
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (f.resume === true && f.overwrite === true) {
    throw new UsageError(
      `--resume continues the saved run and --overwrite replaces it; give one of them`,
    );
  }
  const dataset = String(f.dataset ?? "default");
  const isDefault = dataset.toLowerCase() === "default";
  const K = num(f, "node_num", 12, (v) => int(v) && v >= 1, "an integer ≥ 1");
  const globalBatch = /^oct/i.test(dataset) ? 512 : 128;
  // One rank, or one per client (FLoRA): the backbone then takes the largest (scale alpha/r_max).
  const rankText = String(f.lora_r ?? "8");
  const clientRanks = rankText.includes(",")
    ? rankText.split(",").map((r) => {
      const v = Number(r.trim());
      if (r.trim() === "" || !int(v) || v < 1) {
        throw new UsageError(`--lora_r ${rankText}: expected integers ≥ 1 separated by commas`);
      }
      return v;
    })
    : undefined;
  const rank = clientRanks
    ? Math.max(...clientRanks)
    : num(f, "lora_r", 8, (v) => int(v) && v >= 1, "an integer ≥ 1");
  const method = String(f.method ?? "DEeR");
  const methodOptions = {
    method,
    eliminateDeviation: num(f, "module1", 1, flag01, "0 or 1") === 1,
    regulateNoise: num(f, "module2", 1, flag01, "0 or 1") === 1,
  };
  let resolved;
  try {
    resolved = resolveMethod(methodOptions);
  } catch (err) {
    throw new UsageError(`--method ${(err as Error).message}`);
  }
  if (resolved.name !== "DEeR" && (f.module1 !== undefined || f.module2 !== undefined)) {
    throw new UsageError(
      `--module1/--module2 switch DEeR's modules; --method ${method} has none. Drop them, or use ` +
        `--method DEeR`,
    );
  }
  const isDP = num(f, "is_DP", 0, flag01, "0 or 1") === 1;
  const calibration = String(f.calibration ?? "paper");
  if (calibration !== "paper" && calibration !== "strict" && calibration !== "local") {
    throw new UsageError(`--calibration ${calibration}: expected paper, strict or local`);
  }
  if (
    !isDP &&
    (f.calibration !== undefined || f.epsilon !== undefined || f.C !== undefined ||
      f.max_epsilon !== undefined || f.accountant !== undefined || f.noise !== undefined)
  ) {
    throw new UsageError(
      `--calibration/--epsilon/--C/--max_epsilon/--accountant/--noise only apply with --is_DP 1; ` +
        `add --is_DP 1 or drop them`,
    );
  }
  const weights = String(f.weights ?? "uniform");
  if (weights !== "uniform" && weights !== "size") {
    throw new UsageError(`--weights ${weights}: expected uniform or size`);
  }
  const momentum = String(f.momentum ?? "reset");
  if (momentum !== "reset" && momentum !== "reference") {
    throw new UsageError(`--momentum ${momentum}: expected reset or reference`);
  }
  const seedText = String(f.seeds ?? (isDefault ? "10" : "10,100,1000"));
  const seedParts = seedText.split(",").map((s) => s.trim());
  const seeds = seedParts.map(Number);
  if (seedParts.some((s) => s === "") || seeds.some((s) => !Number.isSafeInteger(s))) {
    throw new UsageError(`--seeds ${seedText}: expected integers separated by commas`);
  }
  if (new Set(seeds).size !== seeds.length) {
    throw new UsageError(`--seeds ${seedText}: a seed is repeated; give each seed once`);
  }
  const iid = num(f, "iid", 0, flag01, "0 or 1") === 1;
  const config: Omit<FederatedConfig, "seed"> = {
    ...defaultConfig(),
    method: methodOptions,
    numClients: K,
    rounds: num(f, "T", isDefault ? 8 : 50, (v) => int(v) && v >= 1, "an integer ≥ 1"),
    localEpochs: num(f, "E", isDefault ? 1 : 5, (v) => int(v) && v >= 1, "an integer ≥ 1"),
    batchSize: num(
      f,
      "batchsize",
      Math.max(1, Math.floor(globalBatch / K)),
      (v) => int(v) && v >= 1,
      "an integer ≥ 1",
    ),
    sgd: {
      lr: num(f, "lr", 0.01, (v) => v > 0, "a number > 0"),
      momentum: 0.9,
      weightDecay: 5e-4,
    },
    split: { iid, dirichletAlpha: num(f, "dirichlet_alpha", 0.1, (v) => v > 0, "a number > 0") },
    weights,
    participation: num(f, "participation", 1, (v) => v > 0 && v <= 1, "a fraction in (0, 1]"),
    momentum,
    ...(clientRanks ? { clientRanks } : {}),
    dp: isDP
      ? {
        calibration,
        clip: num(f, "C", 0.5, (v) => v > 0, "a clip bound > 0"),
        epsilon: num(f, "epsilon", 6, (v) => v > 0, "a privacy budget ε > 0"),
        delta: num(f, "delta", 1e-5, (v) => v > 0 && v < 1, "0 < δ < 1"),
        ...(f.max_epsilon === undefined ? {} : {
          maxEpsilon: num(f, "max_epsilon", 0, (v) => v > 0, "a privacy budget ε > 0"),
        }),
        ...(f.accountant === undefined ? {} : { accountant: accountantFlag(f.accountant) }),
        ...(f.noise === undefined ? {} : { noise: noiseFlag(f.noise) }),
      }
      : null,
  };
  const numClasses = f.num_classes === undefined
    ? undefined
    : num(f, "num_classes", 0, (v) => int(v) && v >= 2, "an integer ≥ 2");
  // Combinations the engine refuses (strict calibration with FedEx-LoRA or with DEeR's noise
  // regulator on private peers, paper calibration with client sampling): refuse them here, before
  // any work, under the flags' names.
  try {
    validateConfig({ ...config, seed: seeds[0] });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const alpha = num(f, "lora_alpha", 8, (v) => v > 0, "a number > 0");
  const dataDir = f.data_dir === undefined ? undefined : String(f.data_dir);
  const modelAct = f.model_act === undefined ? undefined : String(f.model_act);
  if (modelAct !== undefined && modelAct !== "gelu" && modelAct !== "quick_gelu") {
    throw new UsageError(`--model_act ${modelAct}: expected gelu (exact, erf) or quick_gelu`);
  }
  if (f.device !== undefined) {
    console.error(`deer: --device ${f.device} is ignored; the tfjs backend is ${backendName}`);
  }
  return {
    expName,
    out: outRoot(f.out),
    resume: f.resume === true,
    overwrite: f.overwrite === true,
    seeds,
    inputs: {
      dataset,
      dataDir,
      localModel: f.local_model === undefined ? undefined : String(f.local_model),
      modelPath: f.model === undefined ? undefined : String(f.model),
      modelAct,
      prototypes: f.prototypes === undefined ? undefined : String(f.prototypes),
      numClasses,
      rank,
      alpha,
    },
    config,
  };
}

function noiseFlag(raw: unknown): "seeded" | "secret" {
  const v = String(raw);
  if (v !== "seeded" && v !== "secret") {
    throw new UsageError(`--noise ${v}: expected seeded or secret`);
  }
  return v;
}

function accountantFlag(raw: unknown): "rdp" | "pld" {
  const v = String(raw);
  if (v !== "rdp" && v !== "pld") throw new UsageError(`--accountant ${v}: expected rdp or pld`);
  return v;
}

function outRoot(raw: unknown): string {
  const out = String(raw ?? "results");
  if (out.trim() === "") throw new UsageError(`--out is empty; name the results folder`);
  return out;
}

/** The run's folder name: method label plus the DP setting. */
export function runName(a: TrainArgs): string {
  // "DEeR(m1=1,m2=0)" → "DEeR_m1-1_m2-0"
  const m = resolveMethod(a.config.method).label.replace("(", "_").replace(")", "")
    .replaceAll(",", "_").replaceAll("=", "-");
  const dp = a.config.dp ? `_dp-${a.config.dp.calibration}-eps${a.config.dp.epsilon}` : "";
  return `${m}${dp}`;
}

/** Why a run stopped before its end at the user's (or the system's) request. */
class RunInterrupted extends Error {
  override name = "RunInterrupted";
  constructor(why: string, readonly exitCode: number) {
    super(`stopped by ${why}`);
  }
}

/**
 * Stops the run cleanly on SIGINT, SIGTERM or SIGHUP, and when the process that launched it goes
 * away (`npx … task train` killed: this process would be re-parented and run on unseen;
 * lib/io/launcher.ts). The run abandons the round in progress before the next client trains;
 * every completed round stays saved. A second signal exits at once (the lock is released on
 * exit all the same).
 */
function watchForStop(): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const stop = (why: string, code: number) => {
    if (controller.signal.aborted) {
      console.error(`train: ${why} again; exiting now`);
      Deno.exit(code);
    }
    console.error(`train: ${why}; stopping after the client in training`);
    controller.abort(new RunInterrupted(why, code));
  };
  const signals: [Deno.Signal, number][] = [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]];
  const listeners = signals.map(([sig, code]) => {
    // Under nohup the user asked the run to outlive its terminal: SIGHUP stays ignored (Deno's
    // first listener resets an ignored signal to its default, so it needs one that ignores it).
    const fn = sig === "SIGHUP" && ignoresHangup() ? () => {} : () => stop(sig, code);
    Deno.addSignalListener(sig, fn);
    return [sig, fn] as const;
  });
  const unwatch = watchLauncher((pid) => {
    if (!controller.signal.aborted) stop(`the end of its launcher (process ${pid})`, 129);
  });
  return {
    signal: controller.signal,
    dispose() {
      unwatch();
      for (const [sig, fn] of listeners) Deno.removeSignalListener(sig, fn);
    },
  };
}

/** The results folder of the run being made, for error messages. */
let runFolder: string | undefined;
/** The run's DP settings, to restate a calibration failure in flags. */
let runDp: FederatedConfig["dp"] = null;
/** Rounds saved per seed so far, for the message of a stopped run. */
const savedRounds = new Map<number, number>();

async function main(): Promise<number> {
  let args: TrainArgs | null;
  try {
    args = parseTrainArgs(Deno.args);
  } catch (err) {
    console.error(`train: ${(err as Error).message}\n(see deno task train --help)`);
    return 2;
  }
  if (args === null) {
    console.log(HELP);
    return 0;
  }
  runDp = args.config.dp;
  const outDir = join(args.out, args.expName, runName(args));
  runFolder = outDir;
  // Where the results go, whether another run holds the folder, and whether a saved run would
  // be replaced: all checked before anything is loaded or written.
  checkOutputPath(outDir, "--out");
  const holder = await lockHolder(outDir);
  if (holder !== null) throw new RunLockedError(outDir, holder === "unknown" ? null : holder);
  const config = { ...args.config, seed: args.seeds[0] };
  if (args.resume) {
    const conflicts = await resumeConflicts(outDir, config, args.seeds, args.inputs);
    if (conflicts.length > 0) throw new UsageError(resumeRefusal(outDir, conflicts));
    if (!existsSync(join(outDir, "config.json"))) {
      console.error(`train: --resume: no saved run in ${outDir}; starting it`);
    }
  } else if (!args.overwrite && await hasContent(outDir, [LOCK_FILE])) {
    throw new UsageError(savedRunRefusal(outDir));
  }
  const stopper = watchForStop();
  try {
    return await train(args, outDir, config, stopper.signal);
  } finally {
    stopper.dispose();
  }
}

function savedRunRefusal(outDir: string): string {
  return `${outDir} already holds a run; add --resume to continue it, or --overwrite to replace ` +
    `it (the old run is deleted), or choose another --exp_name / --out`;
}

async function train(
  args: TrainArgs,
  outDir: string,
  config: FederatedConfig,
  signal: AbortSignal,
): Promise<number> {
  // Loads and checks the data, the model and the prototypes (and the flags that must fit them,
  // e.g. --lora_r < width) before anything is written.
  const inputs = await loadInputs(args.inputs);
  signal.throwIfAborted();
  const label = resolveMethod(args.config.method).label;
  console.error(
    `train: ${label} on ${inputs.data.name} (${inputs.data.train.labels.length} train images, ` +
      `${inputs.data.classNames.length} classes), K=${args.config.numClients}, T=${args.config.rounds}, ` +
      `E=${args.config.localEpochs}, seeds ${args.seeds.join(",")} → ${outDir}`,
  );
  let progress: ReturnType<typeof createProgress> | null = null;
  const result = await runExperiment(inputs, config, args.seeds, {
    outDir,
    resume: args.resume,
    existing: args.overwrite ? "replace" : "refuse",
    signal,
    describe: { flags: Deno.args, backend: backendName, inputs: args.inputs },
    onClient: ({ round, phase, done, total, seed }) => {
      if (done === 1) {
        progress = createProgress(
          `seed ${seed} round ${round + 1}/${args!.config.rounds} phase ${phase}`,
          total,
        );
      }
      progress?.update(done, `client ${done}/${total}`);
      if (done === total) progress?.done("aggregated");
    },
    onRound: (r) => {
      savedRounds.set(r.seed, r.round);
      for (const line of describeRound(r)) console.error(line);
    },
  });
  inputs.dispose();
  const s = result.summary;
  const fmt = (k: keyof typeof s.test) =>
    Number.isFinite(s.test[k].mean)
      ? `${s.test[k].mean.toFixed(2)} ± ${s.test[k].std.toFixed(2)}`
      : k === "auc"
      ? "n/a (a test split with one class has no AUC)"
      : "n/a";
  console.log(
    `${s.method}: acc ${fmt("accuracy")} | recall ${fmt("recall")} | precision ${
      fmt("precision")
    } | F1 ${fmt("f1")} | AUC ${fmt("auc")}`,
  );
  if (s.calibration) {
    console.log(
      `privacy (${s.calibration}): nominal ε ${s.nominalEpsilon}, ${
        s.calibration === "local" ? "the largest site's ε" : "client-level ε"
      } ${
        s.spentEpsilonExact === false
          ? "NOT a guarantee (a release's noise multiplier is a bound that uses the clients' " +
            "private factors: DEeR with module1 off, docs/privacy.md), computed as"
          : "actually spent"
      } ` +
        `${s.spentEpsilon?.toFixed(3)} at δ ${args.config.dp?.delta} (${
          accountantOf(args.config.dp!).toUpperCase()
        } accountant), σ ${s.noiseMultiplier?.toFixed(4)}; noise ${
          args.config.dp?.noise === "secret"
            ? "secret (keyed by noise.key in the seed folder)"
            : "seeded (reproducible from the seed: simulation, not for a released model)"
        }`,
    );
    if (s.calibration === "paper") {
      console.error(
        `deer: WARNING the nominal ε ${s.nominalEpsilon} is not a client-level guarantee; ${
          s.spentEpsilonExact === false
            ? `neither is the ε = ${s.spentEpsilon?.toFixed(3)} computed for this run (its ` +
              `noise multipliers use the clients' private factors): this run has no client-level ` +
              `guarantee`
            : `this run actually spent ε = ${s.spentEpsilon?.toFixed(3)}`
        } (client level, δ ${args.config.dp?.delta})`,
      );
    }
  }
  for (const stop of s.stoppedAtBudget) {
    console.log(
      `seed ${stop.seed}: stopped before round ${stop.round} by --max_epsilon ` +
        `${args.config.dp?.maxEpsilon}: its releases would have brought the spent ε to ` +
        `${stop.epsilonAfterRound.toFixed(3)}; they were not made (--resume will not go past it)`,
    );
  }
  console.log(`results: ${outDir}`);
  return 0;
}

/**
 * The console lines of a finished round: its summary, then what would otherwise go unseen — a
 * phase whose cohort was empty (the global factors moved by the noise alone) and each client
 * excluded from an aggregation, with the reason.
 */
export function describeRound(r: RoundRecord): string[] {
  const t = r.test ? ` test acc ${(100 * r.test.accuracy).toFixed(2)}` : "";
  const eps = r.epsilon.spent === null
    ? ""
    : r.epsilon.sites
    ? ` ε spent per site ${r.epsilon.sites.map((e) => e.toFixed(3)).join(" ")} (local DP)`
    : r.epsilon.exact === false
    ? ` ε ${r.epsilon.spent.toFixed(3)} (not a guarantee)`
    : ` ε spent ${r.epsilon.spent.toFixed(3)}`;
  // NaN (null once saved) when no client was sampled in any phase of the round, and under local
  // DP, where the server never holds a client's loss.
  const loss = Number.isFinite(r.trainLoss)
    ? r.trainLoss.toFixed(4)
    : r.epsilon.trust === "local"
    ? "– (kept by the sites)"
    : "– (no client)";
  const lines = [
    `round ${r.round}: loss ${loss} val acc ${(100 * r.val.accuracy).toFixed(2)}${t}` +
    ` deviation ${r.deviation.toExponential(2)}${eps} (${r.seconds.toFixed(1)}s)`,
  ];
  for (const p of r.phases) {
    if (p.participants.length === 0) {
      lines.push(`  phase ${p.phase}: no client sampled; the global factors moved by the noise`);
    }
    for (const e of p.excluded) {
      lines.push(`  phase ${p.phase}: client ${e.client} excluded — ${e.reason}`);
    }
  }
  return lines;
}

/** A privacy budget the calibration cannot meet, in the flags that set it. */
function budgetRefusal(err: BudgetOutOfReachError): string {
  const dp = runDp;
  const eps = `--epsilon ${err.targetEpsilon}`;
  if (err.kind === "unresolvable") {
    return `${eps} is too large to calibrate: the noise it allows is so small that the ` +
      `accountant cannot resolve ε to its tolerance, and such a run has no meaningful privacy; ` +
      `give a smaller --epsilon, or --is_DP 0 for a run without DP\n(see deno task train --help)`;
  }
  const what = dp?.calibration === "paper"
    ? `the paper calibration (steps T·E·N/b at δ = 1/K): raise --epsilon, or lower --T or --E, or ` +
      `raise --batchsize`
    : dp?.calibration === "local"
    ? `the local calibration (δ ${dp?.delta ?? 1e-5}, every release of a site at rate 1): raise ` +
      `--epsilon or --delta, or lower --T (releases)`
    : `the strict calibration (δ ${dp?.delta ?? 1e-5}): raise --epsilon or --delta, or lower ` +
      `--T (releases) or --participation`;
  const reached = err.reached
    ? ` (noise multiplier ${err.reached.noiseMultiplier.toPrecision(3)} still spends ε = ` +
      `${err.reached.epsilon.toPrecision(3)})`
    : "";
  return `${eps} is out of reach: even the largest noise multiplier tried spends more over ` +
    `this run's releases${reached}. With ${what}\n(see deno task train --help)`;
}

/** The message and exit code of a run that ended with `err`. */
export function explainFailure(
  err: unknown,
  outDir = runFolder,
): { message: string; code: number } {
  // A flag that does not fit the inputs (--lora_r ≥ width, a resume with other flags, a saved
  // run without --resume or --overwrite) is a usage error (2); anything wrong with the inputs,
  // the saved state, the disk or the run itself is 1; a stopped run exits 128 + the signal.
  if (err instanceof RunInterrupted) {
    const saved = [...savedRounds].map(([seed, n]) =>
      `seed ${seed}: ${n} round${n === 1 ? "" : "s"}`
    )
      .join(", ");
    return {
      message: `${err.message}. ${outDir} keeps every completed round${
        saved ? ` (${saved})` : ""
      }; run the same command with --resume to continue`,
      code: err.exitCode,
    };
  }
  if (err instanceof SavedRunError) {
    return { message: `${savedRunRefusal(err.outDir)}\n(see deno task train --help)`, code: 2 };
  }
  if (err instanceof UsageError) {
    return { message: `${err.message}\n(see deno task train --help)`, code: 2 };
  }
  if (err instanceof BudgetOutOfReachError) {
    return { message: budgetRefusal(err), code: 2 };
  }
  if (err instanceof RunLockedError) {
    return { message: `${err.message}; --resume continues it once it has ended`, code: 1 };
  }
  const text = (err as Error)?.message ?? String(err);
  if (err instanceof DamagedStateError || err instanceof ChangedInputsError) {
    return {
      message: text.replace(
        /start the run again without resume \(this replaces (it|the saved run)\)/,
        "start the run again with --overwrite instead of --resume (this replaces the saved run)",
      ),
      code: 1,
    };
  }
  if (outDir && isFsError(err)) {
    return { message: describeFsError(err, outDir, "--resume"), code: 1 };
  }
  return { message: text, code: 1 };
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (err) {
    const { message, code } = explainFailure(err);
    console.error(`train: ${message}`);
    Deno.exit(code);
  }
}
