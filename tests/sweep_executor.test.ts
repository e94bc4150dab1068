/**
 * The sweep executors' edges, with stand-ins for `train` (bash scripts that read the point's
 * `--out`/`--exp_name`) and for Slurm's client tools (`sbatch`, `squeue`, `scontrol` in a PATH
 * folder): a stale `exit.json` does not outlive the start of an attempt; an abort while a point is
 * prepared starts nothing; a point that cannot be run fails alone; Ctrl-C is not passed on a
 * second time to trains that got it; one `sweep run` per results root; flags are checked before
 * sbatch and a failed sbatch leaves nothing behind; a sweep larger than MaxArraySize is split
 * into several arrays; a task Slurm reports FAILED fails its point even without an exit.json,
 * naming its Slurm output file.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { acquireRunLock } from "../lib/io/lock.ts";
import { runLocal, type TrainCommand } from "../lib/sweep/local.ts";
import { expandPoints, parseSweep, type Sweep } from "../lib/sweep/spec.ts";
import { pointDir } from "../lib/sweep/state.ts";
import { withDir } from "./helpers/temp.ts";

const SWEEP_TASK = new URL("../tasks/sweep.ts", import.meta.url).pathname;

/** A bash stand-in for train: `$d` is the point's folder, `$s` its seed. */
async function fakeTrain(dir: string, body: string): Promise<TrainCommand> {
  const path = join(dir, "train.sh");
  await Deno.writeTextFile(
    path,
    `for a; do case $a in --out=*) o=\${a#--out=};; --exp_name=*) e=\${a#--exp_name=};; ` +
      `--seeds=*) s=\${a#--seeds=};; esac; done\nd="$o/$e"\n${body}\n`,
  );
  return { executable: "bash", prefix: [path] };
}

function tinySweep(root: string, seeds: number[]): Sweep {
  return parseSweep(
    { name: "t", results: root, base: { T: 1 }, grid: { seeds } },
    "t.json",
  );
}

const quiet = { onProgress: () => {} };

Deno.test("an attempt starts without the last attempt's exit.json", async () => {
  await withDir(async (dir) => {
    const sweep = tinySweep(join(dir, "r"), [1]);
    const [p] = expandPoints(sweep);
    await Deno.mkdir(pointDir(sweep.root, p.id), { recursive: true });
    await Deno.writeTextFile(join(pointDir(sweep.root, p.id), "exit.json"), '{"exitCode": 1}');
    const command = await fakeTrain(
      dir,
      `[ -e "$d/exit.json" ] && { echo "stale exit.json while running" >&2; exit 3; }; exit 0`,
    );
    const out = await runLocal(sweep, [p], { workers: 1, command, ...quiet });
    assert.deepEqual(
      out.failed,
      [],
      await Deno.readTextFile(join(pointDir(sweep.root, p.id), "train.log")),
    );
    assert.deepEqual(out.finished, [p.id]);
    const exit = JSON.parse(await Deno.readTextFile(join(pointDir(sweep.root, p.id), "exit.json")));
    assert.equal(exit.exitCode, 0);
  }, "deer-sweep-exec-");
});

Deno.test("an abort while the next point is prepared starts no train", async () => {
  await withDir(async (dir) => {
    const sweep = tinySweep(join(dir, "r"), [1, 2, 3, 4]);
    const points = expandPoints(sweep);
    // Point 1 ends at once; the others would train for 5 s unless stopped.
    const command = await fakeTrain(dir, `[ "$s" = 1 ] && exit 0; exec sleep 5`);
    const controller = new AbortController();
    let aborted = false;
    const t0 = performance.now();
    const out = await runLocal(sweep, points, {
      workers: 1,
      command,
      signal: controller.signal,
      // Point 1 has just finished: abort on the next tick, while point 2 is being prepared.
      onProgress: (_text, done) => {
        if (done === 1 && !aborted) {
          aborted = true;
          setTimeout(() => controller.abort("SIGTERM"), 0);
        }
      },
    });
    const seconds = (performance.now() - t0) / 1000;
    assert.ok(seconds < 4, `returned after ${seconds.toFixed(1)} s: point 2's train ran on`);
    assert.equal(out.interrupted, true);
    assert.deepEqual(out.finished, [points[0].id]);
    assert.deepEqual(out.failed, []);
    assert.deepEqual(out.stopped.sort(), points.slice(1).map((p) => p.id).sort());
  }, "deer-sweep-exec-");
});

Deno.test("a point that cannot be run fails alone; the other trains run to their end", async () => {
  await withDir(async (dir) => {
    const sweep = tinySweep(join(dir, "r"), [1, 2, 3]);
    const points = expandPoints(sweep);
    // Point 2's folder cannot be made: a file is in its place.
    await Deno.mkdir(join(sweep.root, "points"), { recursive: true });
    await Deno.writeTextFile(pointDir(sweep.root, points[2].id), "not a folder");
    const command = await fakeTrain(dir, `[ "$s" = 1 ] && sleep 1; touch "$d/done"; exit 0`);
    const out = await runLocal(sweep, points, { workers: 2, command, ...quiet });
    assert.deepEqual(out.failed, [points[2].id]);
    assert.match(out.errors[points[2].id], /exists|not a directory/i);
    assert.deepEqual(out.finished.sort(), [points[0].id, points[1].id].sort());
    // runLocal returned only after the slow train ended.
    assert.ok(existsSync(join(pointDir(sweep.root, points[0].id), "done")));
    assert.equal(out.interrupted, false);
  }, "deer-sweep-exec-");
});

Deno.test("Ctrl-C: a train that got SIGINT is left to stop; one that did not gets SIGTERM", async () => {
  await withDir(async (dir) => {
    const sweep = tinySweep(join(dir, "r"), [1, 2]);
    const points = expandPoints(sweep);
    const command = await fakeTrain(
      dir,
      // Stops 0.3 s after SIGINT, as train finishes its client; a SIGTERM meanwhile is noted.
      `trap 'echo "train: SIGINT; stopping after the client in training" >&2; stop=1' INT
trap 'echo TERM >>"$d/signals"; exit 143' TERM
echo $$ >"$d/pid"
n=0
while :; do sleep 0.05; [ -n "\${stop:-}" ] && n=$((n + 1)) && [ $n -ge 6 ] && exit 130; done`,
    );
    const controller = new AbortController();
    const run = runLocal(sweep, points, {
      workers: 2,
      command,
      signal: controller.signal,
      stopGraceMs: 1000,
      ...quiet,
    });
    const pidFile = (i: number) => join(pointDir(sweep.root, points[i].id), "pid");
    while (!existsSync(pidFile(0)) || !existsSync(pidFile(1))) {
      await new Promise((r) => setTimeout(r, 20));
    }
    // The terminal's Ctrl-C reached train 0 (and the sweep), not train 1.
    Deno.kill(Number((await Deno.readTextFile(pidFile(0))).trim()), "SIGINT");
    await new Promise((r) => setTimeout(r, 150)); // the sweep hears it a moment later
    controller.abort("SIGINT");
    const out = await run;
    assert.equal(out.interrupted, true);
    assert.deepEqual(out.stopped.sort(), points.map((p) => p.id).sort());
    const signals = (i: number) =>
      Deno.readTextFile(join(pointDir(sweep.root, points[i].id), "signals")).catch(() => "");
    assert.equal(await signals(0), "", "train 0 got SIGTERM after its SIGINT");
    assert.equal(await signals(1), "TERM\n", "train 1 never got a signal");
  }, "deer-sweep-exec-");
});

Deno.test("a SIGTERM to the sweep reaches every train at once", async () => {
  await withDir(async (dir) => {
    const sweep = tinySweep(join(dir, "r"), [1]);
    const [p] = expandPoints(sweep);
    const command = await fakeTrain(
      dir,
      `trap 'echo TERM >>"$d/signals"; exit 143' TERM; touch "$d/up"; while :; do sleep 0.05; done`,
    );
    const controller = new AbortController();
    const run = runLocal(sweep, [p], {
      workers: 1,
      command,
      signal: controller.signal,
      stopGraceMs: 60_000,
      ...quiet,
    });
    while (!existsSync(join(pointDir(sweep.root, p.id), "up"))) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const t0 = performance.now();
    controller.abort("SIGTERM");
    const out = await run;
    assert.ok(performance.now() - t0 < 5000);
    assert.deepEqual(out.stopped, [p.id]);
    assert.equal(
      await Deno.readTextFile(join(pointDir(sweep.root, p.id), "signals")),
      "TERM\n",
    );
  }, "deer-sweep-exec-");
});

// --- the command line, with Slurm's client tools replaced by scripts --------------------------

/** A folder of stand-ins for sbatch, squeue and scontrol; sbatch logs its arguments. */
async function fakeSlurm(dir: string, opts: { maxArraySize?: number; squeue?: unknown } = {}) {
  const bin = join(dir, "bin");
  await Deno.mkdir(bin, { recursive: true });
  const tool = async (name: string, text: string) => {
    await Deno.writeTextFile(join(bin, name), `#!/bin/bash\n${text}\n`);
    await Deno.chmod(join(bin, name), 0o755);
  };
  await tool(
    "sbatch",
    `echo "$*" >>"${dir}/sbatch.log"
[ -n "\${FAKE_SBATCH_FAIL:-}" ] && { echo "sbatch: error: Batch job submission failed" >&2; exit 1; }
n=$(( $(cat "${dir}/counter" 2>/dev/null || echo 100) + 1 )); echo $n >"${dir}/counter"; echo "$n"`,
  );
  await tool(
    "scontrol",
    opts.maxArraySize === undefined
      ? `echo "scontrol: error: no controller" >&2; exit 1`
      : `printf 'Configuration data as of now\\nMaxArraySize            = ${opts.maxArraySize}\\nMaxJobCount = 10000\\n'`,
  );
  await tool("squeue", `cat <<'EOF'\n${JSON.stringify(opts.squeue ?? { jobs: [] })}\nEOF`);
  return bin;
}

async function sweepCli(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SWEEP_TASK, ...args],
    env: { DEER_BACKEND: "cpu", NO_COLOR: "1", ...env },
    stdin: "null",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

async function sweepFile(dir: string, results: string, seeds: number[]): Promise<string> {
  const file = join(dir, "s.json");
  await Deno.writeTextFile(
    file,
    JSON.stringify({
      name: "s",
      results,
      base: { T: 1, E: 1, node_num: 2, method: "LoRA" },
      grid: { seeds },
    }),
  );
  return file;
}

Deno.test("sweep run refuses a results root another sweep run holds, naming the holder", async () => {
  await withDir(async (dir) => {
    const root = join(dir, "r");
    const file = await sweepFile(dir, root, [10]);
    const lock = await acquireRunLock(root, { command: "deno task sweep run s.json" });
    try {
      const r = await sweepCli(["run", file]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `${root} is in use by another sweep run \\(pid ${Deno.pid} on host .*: deno task sweep run s\\.json\\)`,
        ),
      );
      assert.equal(existsSync(join(root, "points")), false, "the second run started a point");
    } finally {
      lock.release();
    }
  }, "deer-sweep-exec-");
});

Deno.test("sweep run --executor slurm: flags and the root are checked before sbatch; a failed sbatch leaves nothing", async () => {
  await withDir(async (dir) => {
    const bin = await fakeSlurm(dir);
    const env = { PATH: `${bin}:${Deno.env.get("PATH")}` };
    const root = join(dir, "r");
    const file = await sweepFile(dir, root, [10, 11]);
    let r = await sweepCli(["run", file, "--executor", "slurm", "--wait", "--poll", "0"], env);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--poll 0: expected seconds > 0/);
    assert.equal(
      existsSync(join(dir, "sbatch.log")),
      false,
      "sbatch ran before --poll was checked",
    );
    // A root that an #SBATCH line cannot carry: refused before anything is written.
    r = await sweepCli(["run", file, "--executor", "slurm", "--out", join(dir, "a b")], env);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--out: the results root ".*\/a b" holds whitespace/);
    assert.equal(existsSync(join(dir, "a b")), false);
    assert.equal(existsSync(join(dir, "sbatch.log")), false);
    // sbatch refuses: no job script, no point folder is left.
    r = await sweepCli(["run", file, "--executor", "slurm"], { ...env, FAKE_SBATCH_FAIL: "1" });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /Batch job submission failed/);
    assert.ok(existsSync(join(dir, "sbatch.log")), "sbatch was called");
    const left = [...Deno.readDirSync(join(root, "slurm"))].map((e) => e.name);
    assert.deepEqual(left, [], `left in slurm/: ${left}`);
    assert.deepEqual([...Deno.readDirSync(join(root, "points"))], []);
  }, "deer-sweep-exec-");
});

Deno.test("sweep run --executor slurm --wait: arrays of at most MaxArraySize; FAILED tasks fail their points", async () => {
  await withDir(async (dir) => {
    const task = (job: number, index: number) => ({
      job_id: job * 10 + index,
      array_job_id: job,
      array_task_id: index,
      job_state: "FAILED",
      exit_code: 256,
      restart_cnt: 0,
    });
    const bin = await fakeSlurm(dir, {
      maxArraySize: 2,
      squeue: { jobs: [task(101, 0), task(101, 1), task(102, 0)] },
    });
    const env = { PATH: `${bin}:${Deno.env.get("PATH")}` };
    const root = join(dir, "r");
    const file = await sweepFile(dir, root, [10, 11, 12]);
    const r = await sweepCli(["run", file, "--executor", "slurm", "--wait", "--poll", "0.1"], env);
    assert.equal(r.code, 1, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n"), ["101", "102"]);
    const calls = (await Deno.readTextFile(join(dir, "sbatch.log"))).trim().split("\n");
    assert.equal(calls.length, 2);
    assert.match(calls[0], /^--parsable --array=0-1 .*-part1of2\.sh$/);
    assert.match(calls[1], /^--parsable --array=0-0 .*-part2of2\.sh$/);
    const jobs = JSON.parse(await Deno.readTextFile(join(root, "slurm", "jobs.json")));
    const points = expandPoints(parseSweep(JSON.parse(await Deno.readTextFile(file)), file));
    assert.deepEqual(jobs.map((j: { jobId: string }) => j.jobId), ["101", "102"]);
    assert.deepEqual(jobs.map((j: { points: string[] }) => j.points), [
      [points[0].id, points[1].id],
      [points[2].id],
    ]);
    // No train ran, so no exit.json: Slurm's FAILED is what fails each point.
    assert.match(r.stderr, /jobs 101, 102: 3 FAILED \| points: 0 finished, 0 partial, 3 failed/);
    assert.match(
      r.stderr,
      new RegExp(
        `✗ point 2 ${points[2].id} \\(seeds=12\\): failed, exit code 1 \\(Slurm\\); last lines`,
      ),
    );
    assert.ok(r.stderr.includes(`Slurm task 102_0 FAILED; Slurm's output: `), r.stderr);
    assert.ok(r.stderr.includes(join(root, "slurm", "102_0.out")), r.stderr);

    // status says the same, with the tail of the task's Slurm output.
    await Deno.writeTextFile(
      join(root, "slurm", "101_0.out"),
      "/etc/profile.d/x.sh: line 3: PS1: unbound variable\n",
    );
    const st = await sweepCli(["status", file], env);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, new RegExp(`${points[0].id}  failed .* 101_0 FAILED`));
    assert.match(st.stdout, /0 finished, 0 partial, 0 pending, 3 failed of 3/);
    assert.match(
      st.stderr,
      /Slurm task 101_0 FAILED; Slurm's output: .*101_0\.out\n.*PS1: unbound variable/,
    );
  }, "deer-sweep-exec-");
});
