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
import { writeJsonAtomic } from "../lib/io/atomic.ts";
import { KNOWN_DATASETS } from "../lib/data/dataset.ts";
import { resolveMethod } from "../lib/fl/methods/mod.ts";
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
import { type ArrayTask, arrayTasks, jobScript, submissions, submit } from "../lib/sweep/slurm.ts";
import type { TrainArgs } from "./train.ts";

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
 * libtensorflow would add ≈ 300 MB to it (386 → 86 MB measured) on a login node or beside the
 * workers. `DEER_BACKEND` is restored at once, so every `train` chooses its own backend.
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
function trainingSteps(args: TrainArgs, images: number | null): number | null {
  if (images === null) return null;
  const c = args.config;
  const phases = resolveMethod(c.method).phases.length;
  const clients = c.numClients * c.participation;
  const perEpoch = (images * c.participation) / c.batchSize + clients / 2;
  return args.seeds.length * c.rounds * phases * c.localEpochs * perEpoch;
}

async function plan(sweep: Sweep, points: SweepPoint[], flags: Record<string, unknown>) {
  const checked = await validatePoints(sweep, points);
  const stepMs = num(flags, "step-ms", (v) => v > 0, "milliseconds > 0");
  const gpuStepMs = num(flags, "gpu-step-ms", (v) => v > 0, "milliseconds > 0");
  const images = num(flags, "train-images", (v) => Number.isInteger(v) && v > 0, "an integer > 0");
  console.log(`sweep ${sweep.name} (${sweep.file}): ${points.length} points → ${sweep.root}`);
  let steps = 0, unknown = 0;
  const rows: string[] = [];
  for (const { point, args, run } of checked) {
    const state = await pointState(sweep.root, point);
    const s = trainingSteps(args, trainImages(args, images));
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
  await validatePoints(sweep, points);
  const executor = String(flags.executor ?? "local");
  if (executor !== "local" && executor !== "slurm") {
    throw new UsageError(`--executor ${executor}: expected local or slurm`);
  }
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
  await writeJsonAtomic(join(sweep.root, "sweep.json"), sweep.source);
  const done = points.length - todo.length;
  console.error(
    `sweep ${sweep.name}: ${points.length} points, ${done} finished, ${todo.length} to run ` +
      `(${executor}) → ${sweep.root}`,
  );
  if (todo.length === 0) return 0;
  if (executor === "local") {
    const threads = defaultThreads(sweep, points);
    const workers = num(flags, "workers", (v) => Number.isInteger(v) && v >= 1, "an integer ≥ 1") ??
      Math.max(1, Math.floor(navigator.hardwareConcurrency / threads));
    const env: Record<string, string> = {};
    if (Deno.env.get("TF_NUM_INTRAOP_THREADS") === undefined) {
      env.TF_NUM_INTRAOP_THREADS = String(threads);
    }
    console.error(`sweep: ${workers} worker(s), ${threads} thread(s) per run`);
    const controller = new AbortController();
    const stop = () => {
      if (!controller.signal.aborted) {
        console.error("\nsweep: stopping every worker (their points continue on the next run)");
      }
      controller.abort();
    };
    Deno.addSignalListener("SIGINT", stop);
    Deno.addSignalListener("SIGTERM", stop);
    try {
      const out = await runLocal(sweep, todo, {
        workers,
        command: trainCommand(),
        env,
        signal: controller.signal,
      });
      await showFailures(sweep, points, out.failed);
      if (out.interrupted) {
        console.error(
          `sweep: stopped; ${out.stopped.length} point(s) unfinished — rerun the same command ` +
            `to continue them`,
        );
        return 130;
      }
      return out.failed.length ? 1 : 0;
    } finally {
      Deno.removeSignalListener("SIGINT", stop);
      Deno.removeSignalListener("SIGTERM", stop);
    }
  }
  const script = jobScript(sweep, todo, { command: trainCommand(), cwd: Deno.cwd() });
  const sub = await submit(sweep, script, todo);
  console.log(sub.jobId);
  console.error(
    `sweep: submitted job array ${sub.jobId} (${todo.length} tasks) — ${sub.script}; ` +
      `follow it with deno task sweep status ${sweep.file}`,
  );
  if (!flags.wait) return 0;
  const poll = num(flags, "poll", (v) => v > 0, "seconds > 0") ?? 10;
  return await waitForJob(sweep, points, sub.jobId, poll);
}

const ACTIVE = new Set([
  "PENDING",
  "RUNNING",
  "REQUEUED",
  "REQUEUE_HOLD",
  "REQUEUE_FED",
  "RESIZING",
  "SUSPENDED",
  "CONFIGURING",
  "COMPLETING",
  "PREEMPTED",
  "SIGNALING",
  "STAGE_OUT",
]);

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
    if (!ACTIVE.has(t.state)) continue;
    const id = subs.find((s) => s.jobId === t.jobId)?.points[t.index];
    if (id) busy.set(id, `${t.jobId}_${t.index} ${t.state}`);
  }
  return busy;
}

async function waitForJob(sweep: Sweep, points: SweepPoint[], jobId: string, poll: number) {
  let last = "";
  const started = performance.now();
  while (true) {
    const tasks = await arrayTasks([jobId]);
    const states = await Promise.all(points.map((p) => pointState(sweep.root, p)));
    const count = (s: string) => states.filter((x) => x.status === s).length;
    const byState = new Map<string, number>();
    for (const t of tasks) byState.set(t.state, (byState.get(t.state) ?? 0) + 1);
    const line = `job ${jobId}: ${[...byState].map(([s, n]) => `${n} ${s}`).join(", ") || "gone"}` +
      ` | points: ${count("finished")} finished, ${count("partial")} partial, ${
        count("failed")
      } failed`;
    if (line !== last) {
      console.error(`${line} (${((performance.now() - started) / 1000).toFixed(0)} s)`);
      last = line;
    }
    if (!tasks.some((t) => ACTIVE.has(t.state))) {
      const failed = states.filter((s) => s.status !== "finished").map((s) => s.id);
      await showFailures(sweep, points, failed);
      return failed.length ? 1 : 0;
    }
    await new Promise((r) => setTimeout(r, poll * 1000));
  }
}

async function showFailures(sweep: Sweep, points: SweepPoint[], ids: string[]) {
  for (const id of ids) {
    const p = points.find((q) => q.id === id)!;
    const state = await pointState(sweep.root, p);
    console.error(
      `\n✗ point ${p.index} ${id} (${pointLabel(p)}): ${state.status}` +
        `${state.exit ? `, exit code ${state.exit.exitCode}` : ""}; last lines of ` +
        `${join(pointDir(sweep.root, id), "train.log")}:\n${
          (await logTail(sweep.root, id)).replace(/^/gm, "    ")
        }`,
    );
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
  // The latest submission that ran a point names its array task.
  const taskOf = (id: string) => {
    for (const s of [...subs].reverse()) {
      const i = s.points.indexOf(id);
      if (i < 0) continue;
      const t = tasks.find((t) => t.jobId === s.jobId && t.index === i);
      return t
        ? `${s.jobId}_${i} ${t.state}${t.restarts ? ` (restarts ${t.restarts})` : ""}`
        : `${s.jobId}_${i}`;
    }
    return "";
  };
  const states: PointState[] = [];
  console.log(`sweep ${sweep.name}: ${sweep.root}${slurmNote}`);
  for (const p of points) {
    const s = await pointState(sweep.root, p);
    states.push(s);
    const rounds = s.roundsTotal ? `${s.roundsDone}/${s.roundsTotal} rounds` : "";
    console.log(
      `${String(p.index).padStart(4)}  ${p.id}  ${s.status.padEnd(8)} ${rounds.padEnd(14)} ` +
        `${taskOf(p.id).padEnd(24)} ${pointLabel(p)}`,
    );
  }
  const count = (st: string) => states.filter((s) => s.status === st).length;
  console.log(
    `${count("finished")} finished, ${count("partial")} partial, ${count("pending")} pending, ` +
      `${count("failed")} failed of ${points.length}`,
  );
  await showFailures(sweep, points, states.filter((s) => s.status === "failed").map((s) => s.id));
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
