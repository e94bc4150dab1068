/**
 * `deno task sweep` — studies across many runs (methods × budgets × seeds × data sets), on a
 * laptop, a workstation or a Slurm cluster. A sweep file (JSON, see lib/sweep/spec.ts) lists the
 * points; every point is one `train --resume` into its own folder, so any executor can continue
 * what another started.
 *
 *   plan FILE                     the points, their settings and the compute they need
 *   run FILE --executor local     a pool of train processes (Ctrl-C stops them; rerun continues)
 *   run FILE --executor slurm     one job array, one point per array task [--wait]
 *   status FILE                   each point's progress (and its Slurm task), failures with logs
 *   report FILE                   tidy CSV/JSON, a paper table and an offline HTML report
 *
 * @module
 */
import { join } from "node:path";
import { parseArgs, UsageError } from "../lib/cli.ts";
import { removeStaleTemporaries, writeJsonAtomic } from "../lib/io/atomic.ts";
import { KNOWN_DATASETS } from "../lib/data/dataset.ts";
import { acquireRunLock, describeHolder, RunLockedError } from "../lib/io/lock.ts";
import {
  expandPoints,
  loadSweep,
  pointLabel,
  type Sweep,
  SweepError,
  type SweepPoint,
} from "../lib/sweep/spec.ts";
import { logTail, pointDir, type PointState, pointState } from "../lib/sweep/state.ts";
import { runLocal, trainCommand } from "../lib/sweep/local.ts";
import {
  ACTIVE_STATES,
  type ArrayTask,
  arrayTasks,
  checkSlurmRoot,
  type PointTask,
  pointTasks,
  slurmStatus,
  submissions,
  submitSweep,
} from "../lib/sweep/slurm.ts";
import type { TrainArgs } from "./train.ts";
import type { resolveMethod as ResolveMethod } from "../lib/fl/methods/mod.ts";

const HELP = `deno task sweep COMMAND FILE [flags]

Commands:
  plan FILE       list the points (id, settings, train command, state) and the compute they need
  run FILE        run the unfinished points
  status FILE     progress of every point; failures with the tail of their log
  report FILE     merge finished points: <root>/report/points.{csv,json}, table.{csv,md}, report.html

Flags:
  --out DIR               results root (default: the file's "results", else results/sweeps/<name>)
  --executor local|slurm  run: where the points run (default local)
  --workers N             local: concurrent train processes (default: cores ÷ threads per run)
  --wait                  slurm: wait for the array, printing progress, and exit 0 only when
                          every point finished
  --poll SECONDS          slurm --wait / status: squeue interval (default 10)
  --step-ms MS            plan: milliseconds of one local SGD step on a CPU at the points'
                          batch size (deno task bench --only b16 measures one at batch 8)
  --gpu-step-ms MS        plan: the same on a GPU
  --train-images N        plan: training images when the data set's size is not known
  -h, --help              this text
`;

/**
 * Imports a module that loads the toolkit's tensor backend (train's parser, the report's figure
 * code) on the pure-JS `cpu` backend: this process only parses flags and reads files, and
 * libtensorflow would add ≈ 300 MB to it (375 → 95 MB measured for plan) on a login node or
 * beside the workers; status imports none of it (52 MB). `DEER_BACKEND` is restored at once, so
 * every `train` chooses its own backend.
 */
async function importLight<T>(load: () => Promise<T>): Promise<T> {
  const chosen = Deno.env.get("DEER_BACKEND");
  Deno.env.set("DEER_BACKEND", "cpu");
  try {
    return await load();
  } finally {
    if (chosen === undefined) Deno.env.delete("DEER_BACKEND");
    else Deno.env.set("DEER_BACKEND", chosen);
  }
}

/** Settings → parsed train arguments; a point the train parser refuses is a sweep error. */
async function validatePoints(sweep: Sweep, points: SweepPoint[]) {
  const { parseTrainArgs, runName } = await importLight(() => import("./train.ts"));
  return points.map((p) => {
    let args: TrainArgs | null;
    try {
      args = parseTrainArgs(p.args);
    } catch (err) {
      throw new SweepError(
        `${sweep.file}: point ${p.index} (${pointLabel(p)}): ${(err as Error).message}`,
      );
    }
    if (args === null) {
      throw new SweepError(`${sweep.file}: point ${p.index}: --help is no setting`);
    }
    return { point: p, args, run: runName(args) };
  });
}

function num(
  flags: Record<string, unknown>,
  name: string,
  check: (v: number) => boolean,
  want: string,
) {
  const raw = flags[name];
  if (raw === undefined) return undefined;
  const v = Number(raw);
  if (String(raw).trim() === "" || !Number.isFinite(v) || !check(v)) {
    throw new UsageError(`--${name} ${raw}: expected ${want}`);
  }
  return v;
}

/** Training images of a point's data set, when the toolkit knows them. */
function trainImages(args: TrainArgs, override: number | undefined): number | null {
  if (override !== undefined) return override;
  const name = args.inputs.dataset.toLowerCase();
  if (name === "default") return 2400;
  if (name === "oct") return KNOWN_DATASETS.imageFolders["oct-c8"].samples?.train ?? null;
  const med = KNOWN_DATASETS.medmnist[name];
  return med?.samples.train ?? null;
}

/** Local SGD steps a point takes: seeds × T × phases × E × Σ_k ⌈n_k / b⌉ (≈ N/b + K/2). */
function trainingSteps(
  args: TrainArgs,
  images: number | null,
  resolveMethod: typeof ResolveMethod,
): number | null {
  if (images === null) return null;
  const c = args.config;
  const phases = resolveMethod(c.method).phases.length;
  const clients = c.numClients * c.participation;
  const perEpoch = (images * c.participation) / c.batchSize + clients / 2;
  return args.seeds.length * c.rounds * phases * c.localEpochs * perEpoch;
}

async function plan(sweep: Sweep, points: SweepPoint[], flags: Record<string, unknown>) {
  const checked = await validatePoints(sweep, points);
  // The methods load the tensor backend: only plan needs them, on the light backend.
  const { resolveMethod } = await importLight(() => import("../lib/fl/methods/mod.ts"));
  const stepMs = num(flags, "step-ms", (v) => v > 0, "milliseconds > 0");
  const gpuStepMs = num(flags, "gpu-step-ms", (v) => v > 0, "milliseconds > 0");
  const images = num(flags, "train-images", (v) => Number.isInteger(v) && v > 0, "an integer > 0");
  console.log(`sweep ${sweep.name} (${sweep.file}): ${points.length} points → ${sweep.root}`);
  let steps = 0, unknown = 0;
  const rows: string[] = [];
  for (const { point, args, run } of checked) {
    const state = await pointState(sweep.root, point);
    const s = trainingSteps(args, trainImages(args, images), resolveMethod);
    if (s === null) unknown++;
    else steps += s;
    rows.push(
      `${String(point.index).padStart(4)}  ${point.id}  ${state.status.padEnd(8)} ` +
        `${pointLabel(point)}\n      train ${point.args.join(" ")}\n      → ${
          join(pointDir(sweep.root, point.id), run)
        }${s === null ? "" : `  (${Math.round(s).toLocaleString("en")} SGD steps)`}`,
    );
  }
  console.log(rows.join("\n"));
  const fmtH = (ms: number) => `${(steps * ms / 3.6e6).toFixed(1)} h`;
  const known = unknown
    ? ` (${
      points.length - unknown
    } points; ${unknown} with an unknown data set size: give --train-images)`
    : "";
  console.log(`\ntraining steps in all: ${Math.round(steps).toLocaleString("en")}${known}`);
  console.log(
    stepMs === undefined
      ? "CPU time: give --step-ms (one local SGD step, e.g. from deno task bench --only b16)"
      : `CPU time at ${stepMs} ms per step: ${fmtH(stepMs)} of training (evaluation not counted)`,
  );
  if (gpuStepMs !== undefined) {
    console.log(
      `GPU time at ${gpuStepMs} ms per step: ${fmtH(gpuStepMs)} (evaluation not counted)`,
    );
  }
  return 0;
}

function defaultThreads(sweep: Sweep, points: SweepPoint[]): number {
  if (sweep.threadsPerRun !== null) return sweep.threadsPerRun;
  // The embedded default model runs on one thread (tasks/threads.ts); named models use them all.
  const namesModel = points.some((p) => "model" in p.settings || "local_model" in p.settings);
  return namesModel ? navigator.hardwareConcurrency : 1;
}

async function runCommand(sweep: Sweep, points: SweepPoint[], flags: Record<string, unknown>) {
  // Every flag is checked before anything runs or is submitted.
  const executor = String(flags.executor ?? "local");
  if (executor !== "local" && executor !== "slurm") {
    throw new UsageError(`--executor ${executor}: expected local or slurm`);
  }
  const workersFlag = num(flags, "workers", (v) => Number.isInteger(v) && v >= 1, "an integer ≥ 1");
  const poll = num(flags, "poll", (v) => v > 0, "seconds > 0") ?? 10;
  if (executor === "local" && (flags.wait || flags.poll !== undefined)) {
    throw new UsageError("--wait and --poll belong to --executor slurm");
  }
  if (executor === "slurm" && workersFlag !== undefined) {
    throw new UsageError(
      "--workers belongs to --executor local (slurm.max_parallel limits an array)",
    );
  }
  if (executor === "slurm") checkSlurmRoot(sweep);
  await validatePoints(sweep, points);
  // One run of a sweep at a time: two would start the same points and write one train.log.
  let lock;
  try {
    lock = await acquireRunLock(sweep.root, {
      command: `deno task sweep run ${sweep.file} --executor ${executor}`,
    });
  } catch (err) {
    if (!(err instanceof RunLockedError)) throw err;
    throw new UsageError(
      `${sweep.root} is in use by another sweep run (${describeHolder(err.holder)}); wait for ` +
        `it to end or stop it (deno task sweep status ${sweep.file} shows the points)`,
    );
  }
  try {
    return await runLocked(sweep, points, flags, executor, workersFlag, poll);
  } finally {
    lock.release();
  }
}

async function runLocked(
  sweep: Sweep,
  points: SweepPoint[],
  flags: Record<string, unknown>,
  executor: "local" | "slurm",
  workersFlag: number | undefined,
  poll: number,
) {
  const states = await Promise.all(points.map((p) => pointState(sweep.root, p)));
  const todo = points.filter((_, i) => states[i].status !== "finished");
  // A point still queued or running in an earlier job array must not get a second writer.
  const busy = await activeInSlurm(sweep.root);
  const clash = todo.filter((p) => busy.has(p.id));
  if (clash.length > 0) {
    const list = clash.map((p) => `${p.id} (task ${busy.get(p.id)})`).join(", ");
    throw new UsageError(
      `${clash.length} point(s) of ${sweep.file} are still queued or running on Slurm: ${list}; ` +
        `wait for them (deno task sweep status ${sweep.file}) or cancel them with scancel first`,
    );
  }
  // Temporary files of writers killed earlier (this sweep's own files; each point's run folder is
  // cleaned by its train on --resume). One whose writer still lives here is kept.
  for (const dir of [sweep.root, join(sweep.root, "slurm"), join(sweep.root, "report")]) {
    await removeStaleTemporaries(dir);
  }
  for (const p of todo) await removeStaleTemporaries(pointDir(sweep.root, p.id));
  await writeJsonAtomic(join(sweep.root, "sweep.json"), sweep.source);
  const done = points.length - todo.length;
  console.error(
    `sweep ${sweep.name}: ${points.length} points, ${done} finished, ${todo.length} to run ` +
      `(${executor}) → ${sweep.root}`,
  );
  if (todo.length === 0) return 0;
  if (executor === "local") {
    const threads = defaultThreads(sweep, points);
    const workers = workersFlag ??
      Math.max(1, Math.floor(navigator.hardwareConcurrency / threads));
    const env: Record<string, string> = {};
    if (Deno.env.get("TF_NUM_INTRAOP_THREADS") === undefined) {
      env.TF_NUM_INTRAOP_THREADS = String(threads);
    }
    console.error(`sweep: ${workers} worker(s), ${threads} thread(s) per run`);
    const controller = new AbortController();
    // Ctrl-C at a terminal reaches every train as well (one process group): runLocal leaves
    // them to stop on their own; a SIGTERM to the sweep is passed on to each train once.
    const stop = (signal: "SIGINT" | "SIGTERM") => () => {
      if (!controller.signal.aborted) {
        console.error("\nsweep: stopping every worker (their points continue on the next run)");
      }
      controller.abort(signal);
    };
    const onInt = stop("SIGINT"), onTerm = stop("SIGTERM");
    Deno.addSignalListener("SIGINT", onInt);
    Deno.addSignalListener("SIGTERM", onTerm);
    try {
      const out = await runLocal(sweep, todo, {
        workers,
        command: trainCommand(),
        env,
        signal: controller.signal,
      });
      await showFailures(sweep, points, out.failed, { errors: out.errors });
      if (out.interrupted) {
        console.error(
          `sweep: stopped; ${out.stopped.length} point(s) unfinished — rerun the same command ` +
            `to continue them`,
        );
        return 130;
      }
      return out.failed.length ? 1 : 0;
    } finally {
      Deno.removeSignalListener("SIGINT", onInt);
      Deno.removeSignalListener("SIGTERM", onTerm);
    }
  }
  const subs = await submitSweep(sweep, todo, { command: trainCommand(), cwd: Deno.cwd() });
  for (const sub of subs) {
    console.log(sub.jobId);
    console.error(
      `sweep: submitted job array ${sub.jobId} (${sub.points.length} tasks) — ${sub.script}; ` +
        `follow it with deno task sweep status ${sweep.file}`,
    );
  }
  if (!flags.wait) return 0;
  return await waitForJob(sweep, points, subs.map((s) => s.jobId), poll);
}

/** Points of earlier submissions whose array task is still pending or running → `JOB_INDEX STATE`. */
async function activeInSlurm(root: string): Promise<Map<string, string>> {
  const subs = await submissions(root);
  const busy = new Map<string, string>();
  if (subs.length === 0) return busy;
  let tasks: ArrayTask[];
  try {
    tasks = await arrayTasks(subs.map((s) => s.jobId));
  } catch (err) {
    console.error(
      `sweep: cannot see this sweep's earlier Slurm jobs (${(err as Error).message}); make sure ` +
        `none of them is still running its points`,
    );
    return busy;
  }
  for (const t of tasks) {
    if (!ACTIVE_STATES.has(t.state)) continue;
    const id = subs.find((s) => s.jobId === t.jobId)?.points[t.index];
    if (id) busy.set(id, `${t.jobId}_${t.index} ${t.state}`);
  }
  return busy;
}

/** Each point's state, with its latest Slurm task's state taken into account. */
async function slurmStates(sweep: Sweep, points: SweepPoint[], tasks: ArrayTask[]) {
  const byPoint = pointTasks(sweep.root, await submissions(sweep.root), tasks);
  const states = await Promise.all(points.map(async (p) => {
    const s = await pointState(sweep.root, p);
    return { ...s, status: slurmStatus(s, byPoint.get(p.id)) };
  }));
  return { states, byPoint };
}

async function waitForJob(sweep: Sweep, points: SweepPoint[], jobIds: string[], poll: number) {
  let last = "";
  const started = performance.now();
  const name = jobIds.length === 1 ? `job ${jobIds[0]}` : `jobs ${jobIds.join(", ")}`;
  while (true) {
    const tasks = await arrayTasks(jobIds);
    const { states, byPoint } = await slurmStates(sweep, points, tasks);
    const count = (s: string) => states.filter((x) => x.status === s).length;
    const byState = new Map<string, number>();
    for (const t of tasks) byState.set(t.state, (byState.get(t.state) ?? 0) + 1);
    const line = `${name}: ${[...byState].map(([s, n]) => `${n} ${s}`).join(", ") || "gone"}` +
      ` | points: ${count("finished")} finished, ${count("partial")} partial, ${
        count("failed")
      } failed`;
    if (line !== last) {
      console.error(`${line} (${((performance.now() - started) / 1000).toFixed(0)} s)`);
      last = line;
    }
    if (!tasks.some((t) => ACTIVE_STATES.has(t.state))) {
      const failed = states.filter((s) => s.status !== "finished").map((s) => s.id);
      await showFailures(sweep, points, failed, { slurm: byPoint });
      return failed.length ? 1 : 0;
    }
    await new Promise((r) => setTimeout(r, poll * 1000));
  }
}

async function showFailures(
  sweep: Sweep,
  points: SweepPoint[],
  ids: string[],
  extra: { errors?: Record<string, string>; slurm?: Map<string, PointTask> } = {},
) {
  for (const id of ids) {
    const p = points.find((q) => q.id === id)!;
    const head = `\n✗ point ${p.index} ${id} (${pointLabel(p)})`;
    const error = extra.errors?.[id];
    let state: PointState;
    try {
      state = await pointState(sweep.root, p);
    } catch (err) {
      console.error(`${head}: ${error ?? (err as Error).message}`);
      continue;
    }
    const task = extra.slurm?.get(id);
    const status = slurmStatus(state, task);
    const code = state.exit
      ? `, exit code ${state.exit.exitCode}`
      : task?.exitCode
      ? `, exit code ${task.exitCode} (Slurm)`
      : "";
    const log = join(pointDir(sweep.root, id), "train.log");
    const lines = [
      `${head}: ${status}${code}${error ? ` — ${error}` : ""}; last lines of ${log}:`,
      (await logTail(sweep.root, id).catch(() => "")).replace(/^/gm, "    "),
    ];
    if (task) {
      lines.push(
        `  Slurm task ${task.task}${task.state ? ` ${task.state}` : ""}` +
          `${task.restarts ? ` (restarts ${task.restarts})` : ""}; Slurm's output: ${task.out}`,
      );
      const out = await tail(task.out, 6);
      if (out) lines.push(out.replace(/^/gm, "    "));
    }
    console.error(lines.join("\n"));
  }
}

/** The last `n` lines of a file ("" when there is none). */
async function tail(path: string, n: number): Promise<string> {
  try {
    return (await Deno.readTextFile(path)).trimEnd().split("\n").slice(-n).join("\n");
  } catch {
    return "";
  }
}

async function status(sweep: Sweep, points: SweepPoint[]) {
  const subs = await submissions(sweep.root);
  let tasks: ArrayTask[] = [];
  let slurmNote = "";
  if (subs.length > 0) {
    try {
      tasks = await arrayTasks(subs.map((s) => s.jobId));
    } catch (err) {
      slurmNote = ` (squeue: ${(err as Error).message})`;
    }
  }
  const { states, byPoint } = await slurmStates(sweep, points, tasks);
  // The latest submission that ran a point names its array task.
  const taskOf = (id: string) => {
    const t = byPoint.get(id);
    if (!t) return "";
    return `${t.task}${t.state ? ` ${t.state}` : ""}${
      t.restarts ? ` (restarts ${t.restarts})` : ""
    }`;
  };
  console.log(`sweep ${sweep.name}: ${sweep.root}${slurmNote}`);
  points.forEach((p, i) => {
    const s = states[i];
    const rounds = s.roundsTotal ? `${s.roundsDone}/${s.roundsTotal} rounds` : "";
    console.log(
      `${String(p.index).padStart(4)}  ${p.id}  ${s.status.padEnd(8)} ${rounds.padEnd(14)} ` +
        `${taskOf(p.id).padEnd(24)} ${pointLabel(p)}`,
    );
  });
  const count = (st: string) => states.filter((s) => s.status === st).length;
  console.log(
    `${count("finished")} finished, ${count("partial")} partial, ${count("pending")} pending, ` +
      `${count("failed")} failed of ${points.length}`,
  );
  await showFailures(
    sweep,
    points,
    states.filter((s) => s.status === "failed").map((s) => s.id),
    { slurm: byPoint },
  );
  return 0;
}

async function report(sweep: Sweep, points: SweepPoint[]) {
  const { writeReport, paperTable, markdownTable } = await importLight(() =>
    import("../lib/sweep/report.ts")
  );
  const states = await Promise.all(points.map((p) => pointState(sweep.root, p)));
  const finished = states.filter((s) => s.status === "finished").length;
  if (finished === 0) {
    console.error(
      `sweep: no point of ${sweep.file} has finished in ${sweep.root} yet; nothing to report ` +
        `(deno task sweep status ${sweep.file} shows where they are)`,
    );
    return 1;
  }
  const results = await writeReport(sweep, points);
  console.log(markdownTable(paperTable(results.table)));
  const dir = join(sweep.root, "report");
  console.log(
    `\n${finished}/${points.length} points → ${dir}/points.csv, points.json, table.csv, ` +
      `table.md, report.html`,
  );
  return 0;
}

async function main(): Promise<number> {
  const flags = parseArgs(Deno.args, {
    string: ["out", "executor", "workers", "poll", "step-ms", "gpu-step-ms", "train-images"],
    boolean: ["wait", "help"],
    alias: { help: ["h"] },
  });
  if (flags.help) {
    console.log(HELP);
    return 0;
  }
  const [command, file, ...rest] = flags._;
  const commands = ["plan", "run", "status", "report"];
  if (!command || !commands.includes(command)) {
    throw new UsageError(
      `${command ? `unknown command ${command}` : "no command"}; use ${commands.join(", ")}`,
    );
  }
  if (!file) throw new UsageError(`${command} needs a sweep file (e.g. sweeps/quick.json)`);
  if (rest.length) throw new UsageError(`unexpected argument ${rest[0]}`);
  if (command !== "run" && (flags.executor !== undefined || flags.wait || flags.workers)) {
    throw new UsageError("--executor, --workers and --wait belong to sweep run");
  }
  const sweep = await loadSweep(file, { root: flags.out as string | undefined });
  const points = expandPoints(sweep);
  if (command === "plan") return await plan(sweep, points, flags);
  if (command === "run") return await runCommand(sweep, points, flags);
  if (command === "status") return await status(sweep, points);
  return await report(sweep, points);
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (err) {
    if (err instanceof UsageError || err instanceof SweepError) {
      console.error(`sweep: ${err.message}\n(see deno task sweep --help)`);
      Deno.exit(2);
    }
    console.error(`sweep: ${(err as Error).message}`);
    Deno.exit(1);
  }
}
