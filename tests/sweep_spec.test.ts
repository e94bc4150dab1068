/**
 * Sweep files: validation with messages that name the file, the field and the fix; expansion of
 * base × grid + points; stable point ids; the Slurm job script and `squeue --json` parsing; the
 * t interval of the paper table; the shipped sweeps plan without error.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { expandPoints, loadSweep, parseSweep, pointId, SweepError } from "../lib/sweep/spec.ts";
import {
  jobScript,
  parseSqueue,
  type PointTask,
  pointTasks,
  shellQuote,
  slurmStatus,
} from "../lib/sweep/slurm.ts";
import type { PointState } from "../lib/sweep/state.ts";
import { meanInterval, studentTQuantile } from "../lib/metrics/interval.ts";
import { paperTable, poolSeeds, type SeedRow, sweepFigures, toCsv } from "../lib/sweep/report.ts";

const REPO = new URL("../", import.meta.url).pathname;
const SWEEP_TASK = join(REPO, "tasks/sweep.ts");

function refused(raw: unknown, pattern: RegExp) {
  assert.throws(() => parseSweep(raw, "s.json"), (err: Error) => {
    assert.ok(err instanceof SweepError, `${err}`);
    assert.match(err.message, /^s\.json: /);
    assert.match(err.message, pattern);
    return true;
  });
}

Deno.test("a sweep expands base × grid (last axis fastest), then explicit points", () => {
  const sweep = parseSweep(
    {
      base: { T: 2, is_DP: 1 },
      grid: { method: ["LoRA", "DEeR"], epsilon: [1, 6] },
      points: [{ method: "DEeR", module1: 0, module2: 1, epsilon: 6 }],
    },
    "sweeps/x.json",
    { root: "/tmp/r" },
  );
  assert.equal(sweep.name, "x");
  assert.equal(sweep.root, "/tmp/r");
  const points = expandPoints(sweep);
  assert.deepEqual(
    points.map((p) => p.varied),
    [
      { method: "LoRA", epsilon: "1" },
      { method: "LoRA", epsilon: "6" },
      { method: "DEeR", epsilon: "1" },
      { method: "DEeR", epsilon: "6" },
      { method: "DEeR", module1: "0", module2: "1", epsilon: "6" },
    ],
  );
  assert.deepEqual(points[4].settings, {
    T: "2",
    is_DP: "1",
    method: "DEeR",
    module1: "0",
    module2: "1",
    epsilon: "6",
  });
  assert.deepEqual(points[0].args, ["--T=2", "--epsilon=1", "--is_DP=1", "--method=LoRA"]);
  assert.deepEqual(points.map((p) => p.index), [0, 1, 2, 3, 4]);
});

Deno.test("a point's id is a hash of its settings: independent of order and origin, unique", () => {
  const fromGrid = expandPoints(parseSweep({ base: { T: 2 }, grid: { method: ["LoRA"] } }, "a"));
  const fromPoint = expandPoints(parseSweep({ points: [{ method: "LoRA", T: 2 }] }, "b"));
  assert.equal(fromGrid[0].id, fromPoint[0].id);
  assert.match(fromGrid[0].id, /^[0-9a-f]{12}$/);
  assert.equal(pointId({ a: "1", b: "2" }), pointId({ b: "2", a: "1" }));
  assert.notEqual(pointId({ a: "1" }), pointId({ a: "2" }));
  // "1" as a number and as a string is one setting; a duplicate point is run once.
  const dup = expandPoints(
    parseSweep({ grid: { T: [2] }, points: [{ T: "2" }, { T: 3 }] }, "c"),
  );
  assert.deepEqual(dup.map((p) => p.settings.T), ["2", "3"]);
});

Deno.test("bad sweep files are refused naming the file, the field and the fix", () => {
  refused([], /top level: expected a JSON object/);
  refused({ bse: {} }, /bse: unknown field; the fields are name, results, base/);
  refused({ base: { out: "x" }, grid: { T: [1] } }, /base\.out: --out is set by the sweep/);
  refused({ grid: { exp_name: ["a"] } }, /grid\.exp_name: --exp_name is set by the sweep/);
  refused({ grid: { "node-num": [2] } }, /not a train flag name; write it as --help lists it/);
  refused({ grid: { "--T": [2] } }, /grid\.--T: write the flag without dashes \("T"\)/);
  refused({ grid: { T: [] } }, /grid\.T: expected a non-empty array/);
  refused({ grid: { T: [2, 2] } }, /grid\.T: a value is repeated/);
  refused({ base: { T: 2 }, grid: { T: [3] } }, /grid\.T: also set in base/);
  // An inherited property of objects is not a flag set in base.
  const inherited = expandPoints(parseSweep({ grid: { constructor: [1] } }, "c.json"));
  assert.equal(Object.getOwnPropertyDescriptor(inherited[0].settings, "constructor")?.value, "1");
  // The size of the grid is checked before it is expanded: 6 axes of 10 values are 10⁶ points.
  const axes = Object.fromEntries(
    ["T", "E", "lr", "seed", "lora_r", "node_num"].map((a) => [a, [...Array(10).keys()]]),
  );
  refused(
    { grid: axes },
    /grid: 1000000 points \(T: 10 × E: 10 × lr: 10 × seed: 10 × lora_r: 10 × node_num: 10\), above the 100000 a sweep may have; split it/,
  );
  refused({ grid: { T: [null] } }, /grid\.T\[0\]: null: expected a number or a non-empty/);
  refused({ base: { T: 2 } }, /grid\/points: the sweep has no point/);
  refused({ name: "a b", grid: { T: [1] } }, /name: "a b": expected letters/);
  refused({ grid: { T: [1] }, threads_per_run: 0 }, /threads_per_run: 0: expected an integer ≥ 1/);
  refused({ grid: { T: [1] }, slurm: { partion: "x" } }, /slurm\.partion: unknown option/);
  refused(
    { grid: { T: [1] }, slurm: { time: "2 hours" } },
    /slurm\.time: "2 hours": expected a wall time like "HH:MM:SS" or "D-HH:MM:SS"/,
  );
  refused(
    { grid: { T: [1] }, slurm: { mem: 8 } },
    /slurm\.mem: 8: expected a memory size like "8G"/,
  );
  refused({ grid: { T: [1] }, slurm: { cpus_per_task: 1.5 } }, /slurm\.cpus_per_task: 1\.5/);
  refused(
    { grid: { T: [1] }, slurm: { sbatch: ["--array=0-3"] } },
    /--array is set by the sweep; use max_parallel/,
  );
  refused({ grid: { T: [1] }, slurm: { setup: ["a\nb"] } }, /slurm\.setup: expected an array/);
});

Deno.test("loadSweep names a missing file and a file that is not JSON", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-sweep-spec-" });
  await assert.rejects(loadSweep(join(dir, "none.json")), /none\.json: no such sweep file/);
  await Deno.writeTextFile(join(dir, "bad.json"), "{ grid: }");
  await assert.rejects(loadSweep(join(dir, "bad.json")), /bad\.json: not valid JSON/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("sweep plan refuses a point train would refuse, naming the point and the flag", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-sweep-spec-" });
  const file = join(dir, "s.json");
  await Deno.writeTextFile(
    file,
    JSON.stringify({ base: { T: 2 }, grid: { method: ["LoRA"], epsilon: [1, -2] } }),
  );
  const run = async (json: unknown) => {
    await Deno.writeTextFile(file, JSON.stringify(json));
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", SWEEP_TASK, "plan", file, "--out", join(dir, "r")],
      env: { DEER_BACKEND: "cpu" },
    }).output();
    return { code: out.code, err: new TextDecoder().decode(out.stderr) };
  };
  // --epsilon without --is_DP 1: train's own message, prefixed with the file and the point.
  let r = await run({ base: { T: 2 }, grid: { method: ["LoRA"], epsilon: [1] } });
  assert.equal(r.code, 2, r.err);
  assert.match(
    r.err,
    /s\.json: point 0 \(method=LoRA epsilon=1\): --calibration\/--epsilon\/--C\/--max_epsilon\/--accountant\/--noise only apply with --is_DP 1/,
  );
  r = await run({ base: { T: 2, is_DP: 1 }, grid: { epsilon: [1, -2] } });
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /point 1 \(epsilon=-2\): --epsilon -2: expected a privacy budget ε > 0/);
  r = await run({ grid: { methd: ["LoRA"] } });
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /point 0 \(methd=LoRA\): unknown flag --methd \(did you mean --method\?\)/);
  // Nothing was written for a refused sweep.
  assert.equal(await Deno.stat(join(dir, "r")).catch(() => null), null);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("the shipped sweeps plan: quick has ≥ 4 points, the reproductions 72 each", async () => {
  for (const [name, count] of [["quick", 4], ["oct_c8", 72], ["kvasir_v2", 72]] as const) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", SWEEP_TASK, "plan", join(REPO, "sweeps", `${name}.json`)],
      env: { DEER_BACKEND: "cpu" },
      cwd: await Deno.makeTempDir({ prefix: "deer-sweep-plan-" }),
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.match(text, new RegExp(`sweep ${name} \\(.*\\): ${count} points`));
    assert.equal(text.match(/^ +\d+ {2}[0-9a-f]{12} {2}pending/gm)?.length, count);
  }
  const oct = expandPoints(await loadSweep(join(REPO, "sweeps/oct_c8.json")));
  const eps = new Set(oct.map((p) => p.settings.epsilon));
  assert.deepEqual([...eps], ["0.1", "0.5", "1"]);
  assert.deepEqual(
    [...new Set(oct.map((p) => p.settings.method))],
    ["LoRA", "FFA-LoRA", "DP-DyLoRA", "DEeR"],
  );
  assert.deepEqual([...new Set(oct.map((p) => p.settings.seeds))], ["10", "100", "1000"]);
  assert.deepEqual([...new Set(oct.map((p) => p.settings.calibration))], ["paper", "strict"]);
  assert.ok(oct.every((p) => p.settings.node_num === "12" && p.settings.T === "50"));
  const kvasir = expandPoints(await loadSweep(join(REPO, "sweeps/kvasir_v2.json")));
  assert.deepEqual([...new Set(kvasir.map((p) => p.settings.epsilon))], ["1", "3", "6"]);
});

Deno.test("the job script maps each array index to one point, with the sbatch options", () => {
  const sweep = parseSweep(
    {
      base: { T: 2 },
      grid: { method: ["LoRA", "DEeR"] },
      threads_per_run: 2,
      slurm: {
        partition: "gpu",
        time: "1-00:00:00",
        mem: "16G",
        cpus_per_task: 4,
        gpus_per_task: 1,
        account: "lab",
        max_parallel: 8,
        sbatch: ["--qos=long"],
        setup: ["module load deno"],
      },
    },
    "sweeps/s.json",
    { root: "/data/sweeps/s" },
  );
  const points = expandPoints(sweep);
  const script = jobScript(sweep, points, {
    command: { executable: "/opt/deno", prefix: ["run", "-A", "/repo/tasks/train.ts"] },
    cwd: "/home/u",
  });
  for (
    const line of [
      "#SBATCH --partition=gpu",
      "#SBATCH --time=1-00:00:00",
      "#SBATCH --mem=16G",
      "#SBATCH --cpus-per-task=4",
      "#SBATCH --gpus-per-task=1",
      "#SBATCH --account=lab",
      "#SBATCH --qos=long",
      "#SBATCH --requeue",
      "module load deno",
      "export TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-2}",
    ]
  ) assert.ok(script.includes(line), `missing: ${line}\n${script}`);
  assert.ok(script.includes(
    `  0) id=${points[0].id}; args=(run -A /repo/tasks/train.ts --T=2 --method=LoRA ` +
      `--out=/data/sweeps/s/points --exp_name=${points[0].id} --resume) ;;`,
  ));
  assert.ok(script.includes(`  1) id=${points[1].id};`));
  assert.equal(shellQuote("it's"), `'it'\\''s'`);
  assert.equal(shellQuote("/data/my sweeps"), `'/data/my sweeps'`);
  // The setup lines run without set -u, after the task's header and the removal of exit.json.
  const at = (text: string) => script.indexOf(text);
  assert.ok(at('rm -f "$dir/exit.json"') < at("=== slurm task"), script);
  assert.ok(at("=== slurm task") < at("module load deno"), script);
  assert.ok(at("module load deno") < at("\nset -u\n"), script);
  assert.match(script, /Slurm's output: \$out/);
  assert.ok(script.includes("out=/data/sweeps/s/slurm/$task.out"), script);
});

Deno.test("the results root, --out and the file path: no control characters; Slurm needs a plain root", () => {
  // A line break in the root would end the #SBATCH directive and run the rest as a command.
  refused(
    { results: "/x/rinj\ntouch /x/PWNED\n#", grid: { T: [1] } },
    /^s\.json: results: "\/x\/rinj\\ntouch \/x\/PWNED\\n#": a folder path may not hold control characters/,
  );
  assert.throws(
    () => parseSweep({ grid: { T: [1] } }, "s.json", { root: "/x\ntouch /x/P" }),
    (err: Error) =>
      err instanceof SweepError &&
      /^--out "\/x\\ntouch \/x\/P": expected a folder path without control characters/.test(
        err.message,
      ),
  );
  assert.throws(
    () => parseSweep({ grid: { T: [1] } }, "x\ntouch /tmp/P\n.json"),
    (err: Error) =>
      err instanceof SweepError &&
      /^"x\\ntouch \/tmp\/P\\n\.json": the sweep file's path holds a control character/.test(
        err.message,
      ),
  );
  const command = { executable: "deno", prefix: [] };
  const script = (results: string, root?: string, file = "s.json") => {
    const sweep = parseSweep({ name: "s", results, grid: { T: [1] } }, file, { root });
    return jobScript(sweep, expandPoints(sweep), { command, cwd: "/w" });
  };
  const slurmRefused = (fn: () => unknown, pattern: RegExp) =>
    assert.throws(fn, (err: Error) => {
      assert.ok(err instanceof SweepError, `${err}`);
      assert.match(err.message, pattern);
      return true;
    });
  slurmRefused(
    () => script("/data/my sweeps/s"),
    /^s\.json: results: the results root "\/data\/my sweeps\/s" holds whitespace, which a Slurm job's #SBATCH --output line cannot carry/,
  );
  slurmRefused(() => script("/data/s", "/data/a\tb"), /^--out "\/data\/a\\tb": expected a folder/);
  slurmRefused(
    () => script("/data/s", "/data/a b"),
    /^s\.json: --out: the results root "\/data\/a b" holds whitespace/,
  );
  slurmRefused(() => script("/data/100%"), /results: .* holds '%'/);
  slurmRefused(() => script(`/data/it's`), /results: .* holds quotes or backslashes/);
  // The file path reaches the script only as a JSON string, in comments.
  const text = script("/data/s", undefined, "sweeps/$(touch P) x.json");
  assert.match(text, /^# DEeR toolkit sweep "s" \("sweeps\/\$\(touch P\) x\.json"\): 1 points/m);
  assert.ok(text.includes("#SBATCH --output=/data/s/slurm/%A_%a.out"));
  for (const line of text.split("\n").slice(1, 4)) assert.match(line, /^#/);
});

Deno.test("the job script runs setup lines without set -u and removes the last exit.json", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-sweep-job-" });
  const sweep = parseSweep({
    results: join(dir, "r"),
    grid: { T: [1, 2] },
    // A login script's test of an interactive shell reads PS1, which a batch job does not set.
    slurm: { setup: ['if [ -n "$PS1" ]; then echo interactive; fi', "echo setup ran"] },
  }, "s.json");
  const points = expandPoints(sweep);
  // The fake train fails when its point still has an exit.json while it runs.
  const train =
    `for a; do case $a in --out=*) o=\${a#--out=};; --exp_name=*) e=\${a#--exp_name=};; esac; done
[ -e "$o/$e/exit.json" ] && { echo "stale exit.json" >&2; exit 3; }
echo "train ran"`;
  const file = join(dir, "job.sh");
  await Deno.writeTextFile(
    file,
    jobScript(sweep, points, {
      command: { executable: "bash", prefix: ["-c", train, "x"] },
      cwd: dir,
    }),
  );
  const pointFolder = join(sweep.root, "points", points[1].id);
  await Deno.mkdir(pointFolder, { recursive: true });
  await Deno.writeTextFile(join(pointFolder, "exit.json"), '{"exitCode": 1}');
  const out = await new Deno.Command("bash", {
    args: [file],
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH")!, SLURM_ARRAY_JOB_ID: "41", SLURM_ARRAY_TASK_ID: "1" },
  }).output();
  const err = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, err);
  const log = await Deno.readTextFile(join(pointFolder, "train.log"));
  assert.match(
    log,
    new RegExp(
      `^=== slurm task 41_1 restart 0 on .*; Slurm's output: ${sweep.root}/slurm/41_1\\.out\nsetup ran\ntrain ran\n$`,
    ),
  );
  const exit = JSON.parse(await Deno.readTextFile(join(pointFolder, "exit.json")));
  assert.equal(exit.exitCode, 0);
  assert.equal(exit.job, "41_1");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("squeue --json: array tasks, the pending array split by index, exit codes", () => {
  // Shapes as slurm 22.05 prints them (trimmed to the fields read).
  const json = JSON.stringify({
    jobs: [
      { job_id: 9, array_job_id: 7, array_task_id: 0, job_state: "COMPLETED", exit_code: 0 },
      {
        job_id: 10,
        array_job_id: 7,
        array_task_id: 1,
        job_state: "FAILED",
        exit_code: 768,
        restart_cnt: 1,
      },
      {
        job_id: 7,
        array_job_id: 7,
        array_task_id: null,
        job_state: "PENDING",
        array_task_string: "2-3,5%2",
      },
      { job_id: 3, array_job_id: 3, array_task_id: 0, job_state: "RUNNING", exit_code: 0 },
    ],
  });
  const tasks = parseSqueue(json, ["7"]);
  assert.deepEqual(tasks.map((t) => [t.index, t.state, t.exitCode, t.restarts]), [
    [0, "COMPLETED", 0, 0],
    [1, "FAILED", 3, 1],
    [2, "PENDING", 0, 0],
    [3, "PENDING", 0, 0],
    [5, "PENDING", 0, 0],
  ]);
});

Deno.test("squeue --json of Slurm 23.02 and later: {set, infinite, number}, state arrays", () => {
  // The data_parser shapes (v0.0.39+): integers as uint32_no_val structs, job_state as a list
  // (base state first, then flags), exit_code as process_exit_code_verbose.
  const n = (number: number, set = true) => ({ set, infinite: false, number });
  const exit = (status: string, rc: number, signal = 0) => ({
    status: [status],
    return_code: n(rc),
    signal: { id: n(signal, signal !== 0), name: signal ? "KILL" : "" },
  });
  const json = JSON.stringify({
    jobs: [
      {
        job_id: 9,
        array_job_id: n(7),
        array_task_id: n(0),
        job_state: ["COMPLETED"],
        exit_code: exit("SUCCESS", 0),
        restart_cnt: 0,
        state_reason: "None",
      },
      {
        job_id: 10,
        array_job_id: n(7),
        array_task_id: n(1),
        job_state: ["FAILED"],
        exit_code: exit("ERROR", 3),
        restart_cnt: 1,
        state_reason: "NonZeroExitCode",
      },
      {
        job_id: 11,
        array_job_id: n(7),
        array_task_id: n(4),
        job_state: ["RUNNING", "COMPLETING"],
        exit_code: exit("SIGNALED", 0, 9),
        restart_cnt: 0,
        state_reason: "None",
      },
      {
        job_id: 7,
        array_job_id: n(7),
        array_task_id: n(0, false),
        array_task_string: "2-3,5%2",
        job_state: ["PENDING"],
        exit_code: { status: ["PENDING"], return_code: n(0) },
        restart_cnt: 0,
        state_reason: "Resources",
      },
      { job_id: 3, array_job_id: n(3), array_task_id: n(0), job_state: ["RUNNING"] },
    ],
  });
  const tasks = parseSqueue(json, ["7"]);
  assert.deepEqual(tasks.map((t) => [t.index, t.state, t.exitCode, t.restarts, t.reason]), [
    [0, "COMPLETED", 0, 0, "None"],
    [1, "FAILED", 3, 1, "NonZeroExitCode"],
    [2, "PENDING", 0, 0, "Resources"],
    [3, "PENDING", 0, 0, "Resources"],
    [4, "COMPLETING", 137, 0, "None"],
    [5, "PENDING", 0, 0, "Resources"],
  ]);
  assert.deepEqual(tasks.map((t) => t.jobId), ["7", "7", "7", "7", "7", "7"]);
});

Deno.test("a point's status with its Slurm task: FAILED fails it, a live task beats exit.json", () => {
  const state = (status: PointState["status"], exit: PointState["exit"] = null): PointState => ({
    id: "p",
    status,
    runDir: null,
    roundsDone: status === "partial" ? 2 : 0,
    roundsTotal: null,
    exit,
  });
  const tasks = pointTasks("/r", [
    { jobId: "5", script: "a.sh", points: ["p", "q"], submitted: "" },
    { jobId: "6", script: "b.sh", points: ["q"], submitted: "" },
  ], [
    { jobId: "5", index: 0, state: "FAILED", exitCode: 1, restarts: 0, reason: "" },
    { jobId: "5", index: 1, state: "FAILED", exitCode: 1, restarts: 0, reason: "" },
    { jobId: "6", index: 0, state: "RUNNING", exitCode: 0, restarts: 0, reason: "" },
  ]);
  const p = tasks.get("p")!, q = tasks.get("q")!;
  assert.equal(p.task, "5_0");
  assert.equal(p.out, "/r/slurm/5_0.out");
  assert.equal(q.task, "6_0", "the latest submission of a point names its task");
  // Died before train wrote exit.json (a setup line, set -u): failed all the same.
  assert.equal(slurmStatus(state("pending"), p), "failed");
  assert.equal(slurmStatus(state("partial"), p), "failed");
  assert.equal(slurmStatus(state("finished"), p), "finished");
  // Running again: the last attempt's exit.json is not this one's.
  const stale = { exitCode: 1, executor: "slurm" as const, job: "5_1", at: "" };
  assert.equal(slurmStatus(state("failed", stale), q), "pending");
  assert.equal(slurmStatus(state("partial"), q), "partial");
  // A local attempt came after every Slurm task (a task removes exit.json when it starts).
  const local = { exitCode: 0, executor: "local" as const, job: null, at: "" };
  assert.equal(slurmStatus(state("partial", local), p), "partial");
  const gone: PointTask = { ...p, state: null };
  assert.equal(slurmStatus(state("pending"), gone), "pending");
  assert.equal(slurmStatus(state("pending"), undefined), "pending");
});

Deno.test("the 95 % t interval: t quantiles and the interval of three seeds", () => {
  assert.ok(Math.abs(studentTQuantile(0.975, 1) - 12.7062047) < 1e-6);
  assert.ok(Math.abs(studentTQuantile(0.975, 2) - 4.30265273) < 1e-6);
  assert.ok(Math.abs(studentTQuantile(0.975, 10) - 2.22813885) < 1e-6);
  assert.ok(Math.abs(studentTQuantile(0.975, 1e6) - 1.95996) < 1e-4);
  assert.ok(Math.abs(studentTQuantile(0.025, 2) + 4.30265273) < 1e-6);
  const ci = meanInterval([80, 82, 84]);
  assert.equal(ci.mean, 82);
  assert.equal(ci.sd, 2);
  assert.ok(Math.abs(ci.low - (82 - 4.30265273 * 2 / Math.sqrt(3))) < 1e-6);
  assert.ok(Math.abs(ci.high - (82 + 4.30265273 * 2 / Math.sqrt(3))) < 1e-6);
  const one = meanInterval([70]);
  assert.ok(Number.isNaN(one.low) && Number.isNaN(one.sd));
});

Deno.test("seed rows pool into one row per setting: mean, population std, interval", () => {
  const row = (seed: number, acc: number, method = "LoRA"): SeedRow => ({
    point: `p${seed}`,
    label: `method=${method}`,
    seed,
    settings: { method, T: "2" },
    method,
    family: method,
    calibration: "paper",
    rounds: 2,
    bestRound: 2,
    accuracy: acc,
    recall: acc,
    precision: acc,
    f1: acc,
    auc: acc,
    nominalEpsilon: 1,
    spentEpsilon: seed,
    stoppedAtBudget: seed === 100 ? 2 : null,
    seconds: 1,
  });
  const table = poolSeeds([row(10, 80), row(100, 82), row(10, 50, "DEeR"), row(1000, 84)]);
  assert.deepEqual(table[0].stoppedAtBudget, [{ seed: 100, round: 2 }]);
  assert.deepEqual(table[1].stoppedAtBudget, []);
  const spentColumn = paperTable(table).columns.indexOf("spent ε");
  assert.match(paperTable(table).rows[0][spentColumn], /stopped at budget: 1 of 3 seeds/);
  assert.doesNotMatch(paperTable(table).rows[1][spentColumn], /stopped/);
  assert.equal(table.length, 2);
  assert.deepEqual(table[0].seeds, [10, 100, 1000]);
  assert.equal(table[0].accuracy.mean, 82);
  assert.ok(Math.abs(table[0].accuracy.std - Math.sqrt(8 / 3)) < 1e-12);
  assert.ok(Math.abs(table[0].accuracy.high - 82 - 4.30265273 * 2 / Math.sqrt(3)) < 1e-6);
  assert.equal(table[0].spentEpsilon, 1000);
  assert.deepEqual(table[1].seeds, [10]);
  // A seed run by two points of one setting (seeds: [10, "10,100"]) is pooled once, with a warning.
  const warnings: string[] = [];
  const twice = poolSeeds(
    [{ ...row(10, 80), point: "a" }, { ...row(10, 80), point: "b" }, {
      ...row(100, 84),
      point: "b",
    }],
    undefined,
    (m) => warnings.push(m),
  );
  assert.equal(twice.length, 1);
  assert.deepEqual(twice[0].seeds, [10, 100]);
  assert.deepEqual(twice[0].accuracy.values, [80, 84]);
  assert.equal(twice[0].accuracy.n, 2);
  assert.deepEqual(warnings, [
    "seed 10 of method=LoRA was run by two points (a and b); the table counts it once, from a",
  ]);
  // A metric a seed could not define (AUC of a one-class test split, or a seed stopped before its
  // first round) is NaN, left out of the pool — never a 0 averaged in.
  const undefinedAuc = poolSeeds([{ ...row(10, 80), auc: NaN }, row(100, 84)]);
  assert.deepEqual(undefinedAuc[0].auc.values.map(String), ["NaN", "84"]);
  assert.equal(undefinedAuc[0].auc.mean, 84);
  assert.equal(undefinedAuc[0].auc.n, 1);
  assert.equal(undefinedAuc[0].accuracy.mean, 82);
  const noneAuc = poolSeeds([{ ...row(10, 80), auc: NaN }]);
  assert.ok(Number.isNaN(noneAuc[0].auc.mean) && noneAuc[0].auc.n === 0);
  assert.equal(
    toCsv(["a", "b"], [["x,y", 1.5], ['q"', null]]),
    'a,b\n"x,y",1.5\n"q""",\n',
  );
});

Deno.test("report figures: the module1 × module2 heat map per setting, a numeric axis as lines", () => {
  const sweep = parseSweep({
    base: { method: "DEeR", is_DP: 1, epsilon: 6 },
    grid: { lora_r: [2, 4], module1: [0, 1], module2: [0, 1] },
  }, "ablation.json");
  const rows: SeedRow[] = expandPoints(sweep).map((p, i) => ({
    point: p.id,
    label: p.id,
    seed: 10,
    settings: p.settings,
    method: `DEeR(m1=${p.settings.module1},m2=${p.settings.module2})`,
    family: "DEeR",
    calibration: "paper",
    rounds: 2,
    bestRound: 2,
    accuracy: 50 + i,
    recall: 50,
    precision: 50,
    f1: 50,
    auc: 50,
    nominalEpsilon: 6,
    spentEpsilon: 100 + i,
    stoppedAtBudget: null,
    seconds: 1,
  }));
  const figs = sweepFigures(sweep, poolSeeds(rows));
  const heat = figs.filter((f) => f.data[0].type === "heatmap");
  assert.equal(heat.length, 2, "one heat map per rank");
  // Points 0–3 are rank 2 in the order (m1, m2) = 00, 01, 10, 11.
  assert.deepEqual(heat[0].data[0].z, [[50, 51], [52, 53]]);
  assert.deepEqual(heat[1].data[0].z, [[54, 55], [56, 57]]);
  assert.match(String((heat[0].layout.title as { text: string }).text), /lora_r=2/);
  const overRank = figs.find((f) =>
    /over lora_r/.test(String((f.layout.title as { text: string }).text))
  );
  assert.ok(overRank, "accuracy over lora_r");
  assert.equal(overRank.data.length, 4, "one line per module setting");
  assert.deepEqual(overRank.data[0].x, [2, 4]);
  assert.ok(figs.some((f) => /actually spent/.test(JSON.stringify(f.layout.title))));
  // Two numeric axes: each line varies only its own axis, left to right (not in run order).
  const grid = parseSweep({
    base: { method: "LoRA" },
    grid: { lora_r: [2, 8, 4], node_num: [4, 8] },
  }, "g.json");
  const gridRows: SeedRow[] = expandPoints(grid).map((p) => ({
    ...rows[0],
    point: p.id,
    label: p.id,
    settings: p.settings,
    method: "LoRA",
    family: "LoRA",
    calibration: null,
    accuracy: 10 * Number(p.settings.lora_r) + Number(p.settings.node_num),
    nominalEpsilon: null,
    spentEpsilon: null,
  }));
  const gridFigs = sweepFigures(grid, poolSeeds(gridRows));
  const over = (axis: string) =>
    gridFigs.find((f) => new RegExp(`over ${axis}`).test(JSON.stringify(f.layout.title)))!;
  assert.deepEqual(over("lora_r").data.map((t) => [t.name, t.x, t.y]), [
    ["LoRA node_num=4", [2, 4, 8], [24, 44, 84]],
    ["LoRA node_num=8", [2, 4, 8], [28, 48, 88]],
  ]);
  assert.equal(over("node_num").data.length, 3, "one line per rank");
});
