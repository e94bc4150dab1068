/**
 * The Slurm executor: one job array per submission (`sbatch --parsable --array=0-(n-1)%max`),
 * each array task running exactly one point with `train --resume`, so a requeued or preempted
 * task continues from its last round. The job script is plain bash written to
 * `<root>/slurm/<name>-<time>.sh` (read it, or submit it yourself); submissions are listed in
 * `<root>/slurm/jobs.json`. Task state comes from `squeue --json -t all`, results from the points'
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
import type { Sweep, SweepPoint } from "./spec.ts";
import { preparePoint } from "./state.ts";
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

/** Quotes one word for bash. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * The bash job script of an array over `points` (array index i runs points[i]). Its `#SBATCH`
 * lines carry the sweep's slurm options; every task appends to its point's `train.log`, runs
 * `train … --resume` from `cwd`, and writes the point's `exit.json`.
 */
export function jobScript(
  sweep: Sweep,
  points: SweepPoint[],
  opts: { command: TrainCommand; cwd: string },
): string {
  const s = sweep.slurm;
  const sb: string[] = [
    `--job-name=deer-${sweep.name}`,
    `--output=${join(sweep.root, "slurm", "%A_%a.out")}`,
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
  return `#!/bin/bash
# DEeR toolkit sweep "${sweep.name}" (${sweep.file}): ${points.length} points, one per array task.
# Submitted by \`deno task sweep run ${sweep.file} --executor slurm\`; each task runs one point
# with train --resume, so a requeued or preempted task continues from its last round.
${sb.map((l) => `#SBATCH ${l}`).join("\n")}
set -u
${(s.setup ?? []).join("\n")}
case "\${SLURM_ARRAY_TASK_ID:?not an array task}" in
${cases.join("\n")}
  *) echo "no point for array index $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;
esac
dir=${shellQuote(join(sweep.root, "points"))}/$id
mkdir -p "$dir"
task="\${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID}"
echo "=== slurm task $task restart \${SLURM_RESTART_COUNT:-0} on $(hostname) at $(date -u +%FT%TZ)" >>"$dir/train.log"
${threads ? `export TF_NUM_INTRAOP_THREADS=\${TF_NUM_INTRAOP_THREADS:-${threads}}` : ""}
cd ${shellQuote(opts.cwd)}
${shellQuote(exe)} "\${args[@]}" >>"$dir/train.log" 2>&1
rc=$?
printf '{"exitCode": %d, "executor": "slurm", "job": "%s", "at": "%s"}\\n' "$rc" "$task" \\
  "$(date -u +%FT%TZ)" >"$dir/.exit.json.$$" && mv -f "$dir/.exit.json.$$" "$dir/exit.json"
exit $rc
`;
}

/**
 * Writes the job script under `<root>/slurm/`, submits it as an array of `count` tasks and
 * records the submission in `jobs.json`; returns the job id.
 */
export async function submit(
  sweep: Sweep,
  script: string,
  points: SweepPoint[],
  opts: { sbatch?: string } = {},
): Promise<Submission> {
  const dir = join(sweep.root, "slurm");
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const path = join(dir, `${sweep.name}-${stamp}.sh`);
  await writeFileAtomic(path, script);
  await Deno.chmod(path, 0o755);
  for (const p of points) await preparePoint(sweep, p);
  const max = sweep.slurm.maxParallel;
  const array = `--array=0-${points.length - 1}${max ? `%${max}` : ""}`;
  const out = await runTool(opts.sbatch ?? "sbatch", ["--parsable", array, path]);
  const jobId = out.trim().split(";")[0];
  if (!/^\d+$/.test(jobId)) throw new Error(`sbatch answered ${JSON.stringify(out)}; no job id`);
  const submission: Submission = {
    jobId,
    script: path,
    points: points.map((p) => p.id),
    submitted: new Date().toISOString(),
  };
  await writeJsonAtomic(join(dir, "jobs.json"), [...await submissions(sweep.root), submission]);
  return submission;
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

/** Parses `squeue --json` output (see {@link arrayTasks}). */
export function parseSqueue(json: string, jobIds: string[]): ArrayTask[] {
  const wanted = new Set(jobIds);
  const data = JSON.parse(json) as { jobs?: Record<string, unknown>[] };
  const tasks: ArrayTask[] = [];
  for (const j of data.jobs ?? []) {
    const arrayJob = String(j.array_job_id ?? "");
    if (!wanted.has(arrayJob)) continue;
    const base = {
      jobId: arrayJob,
      state: String(j.job_state ?? "UNKNOWN"),
      exitCode: Math.floor(Number(j.exit_code ?? 0) / 256),
      restarts: Number(j.restart_cnt ?? 0),
      reason: String(j.state_reason ?? ""),
    };
    if (typeof j.array_task_id === "number") {
      tasks.push({ ...base, index: j.array_task_id });
    } else {
      const text = String(j.array_task_string ?? "").replace(/%\d+$/, "");
      for (const part of text.split(",").filter(Boolean)) {
        const [a, b] = part.split("-").map(Number);
        for (let i = a; i <= (b ?? a); i++) tasks.push({ ...base, index: i });
      }
    }
  }
  return tasks.sort((x, y) => x.index - y.index);
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
