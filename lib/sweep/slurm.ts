/**
 * The Slurm executor: one job array per submission (`sbatch --parsable --array=0-(n-1)%max`),
 * each array task running exactly one point with `train --resume`, so a requeued or preempted
 * task continues from its last round. A sweep of more points than the cluster's `MaxArraySize`
 * is submitted as several arrays ({@link submitSweep}). The job script is plain bash written to
 * `<root>/slurm/<name>-<time>.sh` (read it, or submit it yourself); submissions are listed in
 * `<root>/slurm/jobs.json`. Task state comes from `squeue --json -t all` (Slurm 22.05's plain
 * values and the `{set, infinite, number}` objects of 23.02 and later), results from the points'
 * own folders.
 *
 * @example
 * ```ts
 * import { expandPoints, parseSweep } from "./spec.ts";
 * const root = await Deno.makeTempDir();
 * const sweep = parseSweep({
 *   name: "tiny",
 *   results: root,
 *   base: { T: 1, E: 1, node_num: 2, seeds: 10 }, // the embedded data and model
 *   grid: { method: ["LoRA"] },
 * }, "tiny.json");
 * const points = expandPoints(sweep);
 * import { trainCommand } from "./local.ts";
 * const script = jobScript(sweep, points, { command: trainCommand(), cwd: Deno.cwd() });
 * script.startsWith("#!/bin/bash"); // true
 * // On a cluster: const submission = await submit(sweep, script, points); // sbatch --parsable
 * ```
 * @module
 */
import { join } from "node:path";
import { writeFileAtomic, writeJsonAtomic } from "../io/atomic.ts";
import { pathExists } from "../io/run_folder.ts";
import { type Sweep, SweepError, type SweepPoint } from "./spec.ts";
import { pointDir, type PointState, type PointStatus, preparePoint } from "./state.ts";
import { pointTrainArgs, type TrainCommand } from "./local.ts";

/** One submission of a sweep (`jobs.json`). */
export interface Submission {
  jobId: string;
  script: string;
  /** Point id of each array index. */
  points: string[];
  submitted: string;
}

/** One array task as `squeue --json` reports it. */
export interface ArrayTask {
  jobId: string;
  index: number;
  state: string;
  /** The task's exit code (Slurm reports the wait status; this is its high byte). */
  exitCode: number;
  restarts: number;
  reason: string;
}

/** Job states of a task that is queued or running (or about to run again). */
export const ACTIVE_STATES: ReadonlySet<string> = new Set([
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

/**
 * Job states of a task that ended without its point finishing through no choice of the user:
 * the point failed even when the task died before `train` could write its `exit.json` (a `setup`
 * line that exits, a node failure, the time limit).
 */
export const FAILED_STATES: ReadonlySet<string> = new Set([
  "FAILED",
  "TIMEOUT",
  "OUT_OF_MEMORY",
  "NODE_FAIL",
  "BOOT_FAIL",
  "DEADLINE",
]);

/** The `MaxArraySize` Slurm uses when its configuration does not say (and when it cannot be read). */
export const DEFAULT_MAX_ARRAY_SIZE = 1001;

/** Quotes one word for bash. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * Refuses a results root that an `#SBATCH --output=` line cannot carry: sbatch splits a directive
 * at whitespace, reads `%` as a file name pattern and quotes and backslashes as its own syntax,
 * and a line break would end the directive (and start a command). The message names the field
 * the root came from (`results` or `--out`).
 */
export function checkSlurmRoot(sweep: Sweep): void {
  // deno-lint-ignore no-control-regex
  const bad = /[\s%"'\\\x00-\x1f\x7f]/.exec(sweep.root);
  if (!bad) return;
  const what = /\s/.test(bad[0])
    ? "whitespace"
    : bad[0] === "%"
    ? "'%'"
    : /["'\\]/.test(bad[0])
    ? "quotes or backslashes"
    : "a control character";
  throw new SweepError(
    `${sweep.file}: ${sweep.rootFrom ?? "results"}: the results root ${
      JSON.stringify(sweep.root)
    } holds ${what}, which a Slurm job's #SBATCH --output line cannot carry; choose a folder ` +
      `path of letters, digits and / . _ - (or run with --executor local)`,
  );
}

/**
 * The bash job script of an array over `points` (array index i runs points[i]). Its `#SBATCH`
 * lines carry the sweep's slurm options; every task removes its point's last `exit.json`, appends
 * a header naming the task and its Slurm output file to the point's `train.log`, runs the `setup`
 * lines (without `set -u`: login scripts read unset variables such as `PS1`; their output goes to
 * the log too), runs `train … --resume` from `cwd`, and writes the point's `exit.json`.
 */
export function jobScript(
  sweep: Sweep,
  points: SweepPoint[],
  opts: { command: TrainCommand; cwd: string },
): string {
  checkSlurmRoot(sweep);
  const s = sweep.slurm;
  const slurmDir = join(sweep.root, "slurm");
  const sb: string[] = [
    `--job-name=deer-${sweep.name}`,
    `--output=${join(slurmDir, "%A_%a.out")}`,
    "--requeue",
    "--open-mode=append",
    "--ntasks=1",
  ];
  if (s.partition) sb.push(`--partition=${s.partition}`);
  if (s.time) sb.push(`--time=${s.time}`);
  if (s.mem) sb.push(`--mem=${s.mem}`);
  if (s.cpusPerTask) sb.push(`--cpus-per-task=${s.cpusPerTask}`);
  if (s.gpusPerTask) sb.push(`--gpus-per-task=${s.gpusPerTask}`);
  if (s.account) sb.push(`--account=${s.account}`);
  sb.push(...(s.sbatch ?? []));
  const exe = s.deno ?? opts.command.executable;
  const threads = sweep.threadsPerRun ?? s.cpusPerTask;
  const cases = points.map((p, i) => {
    const args = [...opts.command.prefix, ...pointTrainArgs(sweep.root, p)].map(shellQuote);
    return `  ${i}) id=${p.id}; args=(${args.join(" ")}) ;;`;
  });
  const setup = s.setup ?? [];
  const file = JSON.stringify(sweep.file);
  return `#!/bin/bash
# DEeR toolkit sweep ${
    JSON.stringify(sweep.name)
  } (${file}): ${points.length} points, one per array task.
# Submitted by \`deno task sweep run ${file} --executor slurm\`; each task runs one point
# with train --resume, so a requeued or preempted task continues from its last round.
${sb.map((l) => `#SBATCH ${l}`).join("\n")}
case "\${SLURM_ARRAY_TASK_ID:?not an array task}" in
${cases.join("\n")}
  *) echo "no point for array index $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;
esac
dir=${shellQuote(join(sweep.root, "points"))}/$id
task="\${SLURM_ARRAY_JOB_ID:?not an array task}_\${SLURM_ARRAY_TASK_ID}"
finish() {
  printf '{"exitCode": %d, "executor": "slurm", "job": "%s", "at": "%s"}\\n' "$1" "$task" \\
    "$(date -u +%FT%TZ)" >"$dir/.exit.json.$$" && mv -f "$dir/.exit.json.$$" "$dir/exit.json"
  exit "$1"
}
mkdir -p "$dir" || exit 1
# A new attempt: the last one's exit code says nothing about this one.
rm -f "$dir/exit.json"
out=${shellQuote(slurmDir)}/$task.out
echo "=== slurm task $task restart \${SLURM_RESTART_COUNT:-0} on $(hostname) at $(date -u +%FT%TZ); Slurm's output: $out" >>"$dir/train.log"
${
    setup.length
      ? `# slurm.setup, run without set -u (login and conda scripts read unset variables)
{
${setup.join("\n")}
} >>"$dir/train.log" 2>&1
`
      : ""
  }set -u
${threads ? `export TF_NUM_INTRAOP_THREADS=\${TF_NUM_INTRAOP_THREADS:-${threads}}\n` : ""}cd ${
    shellQuote(opts.cwd)
  } || finish 1
${shellQuote(exe)} "\${args[@]}" >>"$dir/train.log" 2>&1
finish $?
`;
}

/**
 * The cluster's `MaxArraySize` from `scontrol show config` (array indices run from 0 to one
 * less); {@link DEFAULT_MAX_ARRAY_SIZE}, Slurm's default, when it cannot be read.
 */
export async function maxArraySize(scontrol = "scontrol"): Promise<number> {
  try {
    const out = await runTool(scontrol, ["show", "config"]);
    const m = /^\s*MaxArraySize\s*=\s*(\d+)/m.exec(out);
    if (m && Number(m[1]) >= 1) return Number(m[1]);
  } catch {
    // not readable here: Slurm's default
  }
  return DEFAULT_MAX_ARRAY_SIZE;
}

/**
 * Writes the job script under `<root>/slurm/`, submits it as an array of `points.length` tasks
 * and records the submission in `jobs.json`; returns it. When sbatch (or anything before it)
 * fails, the script and the point folders this call created are removed again.
 * `dependency` is passed as `--dependency`; `suffix` is added to the script's name.
 */
export async function submit(
  sweep: Sweep,
  script: string,
  points: SweepPoint[],
  opts: { sbatch?: string; dependency?: string; suffix?: string } = {},
): Promise<Submission> {
  const dir = join(sweep.root, "slurm");
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const path = join(dir, `${sweep.name}-${stamp}${opts.suffix ?? ""}.sh`);
  const made: string[] = [];
  let jobId: string;
  try {
    await writeFileAtomic(path, script);
    await Deno.chmod(path, 0o755);
    for (const p of points) {
      const pd = pointDir(sweep.root, p.id);
      if (!await pathExists(pd, { follow: false })) made.push(pd);
      await preparePoint(sweep, p);
    }
    const max = sweep.slurm.maxParallel;
    const args = ["--parsable", `--array=0-${points.length - 1}${max ? `%${max}` : ""}`];
    if (opts.dependency) args.push(`--dependency=${opts.dependency}`);
    const out = await runTool(opts.sbatch ?? "sbatch", [...args, path]);
    jobId = out.trim().split(";")[0];
    if (!/^\d+$/.test(jobId)) throw new Error(`sbatch answered ${JSON.stringify(out)}; no job id`);
  } catch (err) {
    // Nothing was submitted: leave no script and no point folder that nothing will fill.
    await Deno.remove(path).catch(() => {});
    for (const pd of made) {
      await Deno.remove(join(pd, "point.json")).catch(() => {});
      await Deno.remove(pd).catch(() => {}); // only when empty
    }
    throw err;
  }
  const submission: Submission = {
    jobId,
    script: path,
    points: points.map((p) => p.id),
    submitted: new Date().toISOString(),
  };
  try {
    await writeJsonAtomic(join(dir, "jobs.json"), [...await submissions(sweep.root), submission]);
  } catch (err) {
    throw new Error(
      `job ${jobId} was submitted but could not be recorded in ${join(dir, "jobs.json")} ` +
        `(${(err as Error).message}); status cannot follow it — cancel it with scancel ${jobId}`,
    );
  }
  return submission;
}

/**
 * Submits `points` as job arrays of at most the cluster's `MaxArraySize` tasks each (one job
 * script per array), recording each in `jobs.json`. With `slurm.max_parallel`, each array waits
 * for the one before it (`--dependency=afterany:`), so that no more than `max_parallel` tasks run
 * at once. When a later array cannot be submitted, the error names the arrays already submitted.
 */
export async function submitSweep(
  sweep: Sweep,
  points: SweepPoint[],
  opts: {
    command: TrainCommand;
    cwd: string;
    sbatch?: string;
    scontrol?: string;
    /** Tasks per array; default: the cluster's MaxArraySize. */
    arraySize?: number;
  },
): Promise<Submission[]> {
  checkSlurmRoot(sweep);
  const size = Math.max(1, opts.arraySize ?? await maxArraySize(opts.scontrol));
  const chunks: SweepPoint[][] = [];
  for (let i = 0; i < points.length; i += size) chunks.push(points.slice(i, i + size));
  const done: Submission[] = [];
  for (const [k, chunk] of chunks.entries()) {
    const script = jobScript(sweep, chunk, { command: opts.command, cwd: opts.cwd });
    const previous = done.at(-1);
    try {
      done.push(
        await submit(sweep, script, chunk, {
          sbatch: opts.sbatch,
          suffix: chunks.length > 1 ? `-part${k + 1}of${chunks.length}` : "",
          dependency: sweep.slurm.maxParallel && previous
            ? `afterany:${previous.jobId}`
            : undefined,
        }),
      );
    } catch (err) {
      if (done.length === 0) throw err;
      throw new Error(
        `${(err as Error).message}; array ${k + 1} of ${chunks.length} was not submitted, ` +
          `arrays ${done.map((d) => d.jobId).join(", ")} were (submit again later for the rest)`,
      );
    }
  }
  return done;
}

/** The sweep's submissions so far (`<root>/slurm/jobs.json`), oldest first. */
export async function submissions(root: string): Promise<Submission[]> {
  try {
    return JSON.parse(await Deno.readTextFile(join(root, "slurm", "jobs.json")));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
}

/**
 * The array tasks of `jobIds` from `squeue --json -t all` (finished tasks stay listed until the
 * cluster's MinJobAge passes). A pending array that has not been split yet is reported once
 * per index of its `array_task_string` (`0-3`, `2,5-7`, `0-9%2`).
 */
export async function arrayTasks(jobIds: string[], squeue = "squeue"): Promise<ArrayTask[]> {
  if (jobIds.length === 0) return [];
  const out = await runTool(squeue, ["--json", "-t", "all"]);
  return parseSqueue(out, jobIds);
}

/**
 * State flags that Slurm 22.05 reports instead of the base state (as `squeue` does); Slurm 23.02
 * and later list them after the base state in the `job_state` array.
 */
const FLAG_STATES = new Set([
  "COMPLETING",
  "CONFIGURING",
  "RESIZING",
  "REQUEUED",
  "REQUEUE_FED",
  "REQUEUE_HOLD",
  "SIGNALING",
  "STAGE_OUT",
]);

/** A plain value of `squeue --json`: 23.02+'s `{set, infinite, number}` unwrapped (unset: undefined). */
function plain(v: unknown): unknown {
  if (Array.isArray(v)) return v.length === 1 ? plain(v[0]) : v;
  if (v !== null && typeof v === "object" && "number" in v) {
    const o = v as { set?: boolean; infinite?: boolean; number?: unknown };
    return o.set === false || o.infinite === true ? undefined : o.number;
  }
  return v;
}

function jobState(v: unknown): string {
  if (Array.isArray(v)) {
    const list = v.map(String);
    return list.find((s) => FLAG_STATES.has(s)) ?? list[0] ?? "UNKNOWN";
  }
  return v === undefined || v === null ? "UNKNOWN" : String(v);
}

function exitCode(v: unknown): number {
  if (v !== null && typeof v === "object" && !Array.isArray(v) && !("number" in v)) {
    // 23.02+: { status: ["FAILED"], return_code: {…}, signal: { id: {…}, name } }
    const o = v as { return_code?: unknown; signal?: { id?: unknown } };
    const rc = Number(plain(o.return_code) ?? 0);
    const sig = Number(plain(o.signal?.id) ?? 0);
    return rc ? rc : sig ? 128 + sig : 0;
  }
  // 22.05: the wait status
  const w = Number(plain(v) ?? 0);
  if (!Number.isFinite(w)) return 0;
  return (w & 0x7f) !== 0 ? 128 + (w & 0x7f) : Math.floor(w / 256);
}

/**
 * Parses `squeue --json` output (see {@link arrayTasks}): Slurm 22.05's plain numbers and
 * strings, and 23.02+'s `{set, infinite, number}` objects, state arrays and exit-code objects.
 */
export function parseSqueue(json: string, jobIds: string[]): ArrayTask[] {
  const wanted = new Set(jobIds);
  const data = JSON.parse(json) as { jobs?: Record<string, unknown>[] };
  const tasks: ArrayTask[] = [];
  for (const j of data.jobs ?? []) {
    const arrayJob = String(plain(j.array_job_id) ?? "");
    if (!wanted.has(arrayJob)) continue;
    const base = {
      jobId: arrayJob,
      state: jobState(plain(j.job_state)),
      exitCode: exitCode(j.exit_code),
      restarts: Number(plain(j.restart_cnt) ?? 0),
      reason: String(plain(j.state_reason) ?? ""),
    };
    const index = plain(j.array_task_id);
    if (typeof index === "number") {
      tasks.push({ ...base, index });
    } else {
      const text = String(plain(j.array_task_string) ?? "").replace(/%\d+$/, "");
      for (const part of text.split(",").filter(Boolean)) {
        const [a, b] = part.split("-").map(Number);
        for (let i = a; i <= (b ?? a); i++) tasks.push({ ...base, index: i });
      }
    }
  }
  return tasks.sort((x, y) => x.index - y.index);
}

/** The array task that last ran a point, as far as Slurm still lists it. */
export interface PointTask {
  /** `JOBID_INDEX`. */
  task: string;
  jobId: string;
  index: number;
  /** Its Slurm state, or null when squeue no longer lists it. */
  state: string | null;
  restarts: number;
  exitCode: number | null;
  /** The task's Slurm output file (`<root>/slurm/JOBID_INDEX.out`). */
  out: string;
}

/** Each point's array task in its latest submission (point id → task). */
export function pointTasks(
  root: string,
  subs: Submission[],
  tasks: ArrayTask[],
): Map<string, PointTask> {
  const out = new Map<string, PointTask>();
  for (const s of subs) {
    s.points.forEach((id, index) => {
      const t = tasks.find((t) => t.jobId === s.jobId && t.index === index);
      const task = `${s.jobId}_${index}`;
      out.set(id, {
        task,
        jobId: s.jobId,
        index,
        state: t?.state ?? null,
        restarts: t?.restarts ?? 0,
        exitCode: t ? t.exitCode : null,
        out: join(root, "slurm", `${task}.out`),
      });
    });
  }
  return out;
}

/**
 * A point's status with its Slurm task's state taken into account: a task still queued or running
 * is live evidence against an old `exit.json`; a task Slurm reports FAILED (or timed out, out of
 * memory, lost with its node) failed its point even when nothing wrote an `exit.json`. An
 * `exit.json` of the local executor is newer than any Slurm task (a task removes it when it
 * starts), so it stands.
 */
export function slurmStatus(state: PointState, task: PointTask | undefined): PointStatus {
  if (state.status === "finished" || !task?.state) return state.status;
  if (state.exit?.executor === "local") return state.status;
  if (ACTIVE_STATES.has(task.state)) return state.roundsDone > 0 ? "partial" : "pending";
  if (FAILED_STATES.has(task.state)) return "failed";
  return state.status;
}

async function runTool(cmd: string, args: string[]): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, stdin: "null" }).output();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new Error(
        `${cmd} not found: the Slurm client tools are not installed here (run the sweep on a ` +
          `cluster login node, or use the local executor)`,
      );
    }
    throw err;
  }
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`${cmd} ${args.join(" ")} failed (exit ${out.code}): ${err || text}`);
  }
  return text;
}
