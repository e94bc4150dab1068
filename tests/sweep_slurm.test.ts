/**
 * The Slurm executor on a real Slurm: a tiny sweep (toy data, tiny model, wasm) submitted as one
 * job array and waited for; one array task is requeued (`scontrol requeue`) while it trains; it
 * continues from its last round, and every point ends with the records of a local-executor run
 * of the same sweep.
 *
 * Needs a reachable cluster (`.ci/slurm.sh start` gives a one-node one on loopback and prints the
 * `SLURM_CONF` to export). Without one the test is skipped with the reason printed; with
 * `DEER_REQUIRE_SLURM=1` (CI) a missing cluster is a failure instead.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { REPO, TINY_MODEL, writeToyNpz } from "./helpers/reliability_inputs.ts";
import { tinySweepFile } from "./helpers/tiny_sweep.ts";
import { expandPoints, loadSweep } from "../lib/sweep/spec.ts";
import { findRunDir, pointDir, readRecords } from "../lib/sweep/state.ts";
import { arrayTasks, submissions } from "../lib/sweep/slurm.ts";

const SWEEP_TASK = join(REPO, "tasks/sweep.ts");
const ROUNDS = 60;

/** Why Slurm cannot be used here, or null when a cluster answers. */
async function slurmMissing(): Promise<string | null> {
  try {
    const out = await new Deno.Command("sinfo", { args: ["-h", "-o", "%t"] }).output();
    if (!out.success) {
      return `no Slurm controller answers (sinfo: ${
        new TextDecoder().decode(out.stderr).trim().split("\n")[0]
      }); start one with .ci/slurm.sh start and export the SLURM_CONF it prints`;
    }
    const states = new TextDecoder().decode(out.stdout).trim();
    if (!/idle|mix|alloc/.test(states)) return `no usable Slurm node (states: ${states || "none"})`;
    return null;
  } catch {
    return "Slurm is not installed (no sinfo); .ci/slurm.sh install && .ci/slurm.sh start";
  }
}

const missing = await slurmMissing();
const required = Deno.env.get("DEER_REQUIRE_SLURM") === "1";
if (missing && !required) console.log(`sweep_slurm: skipped — ${missing}`);

Deno.test({
  name: "slurm: a job array with one task requeued mid-run ends with the local run's records",
  ignore: missing !== null && !required,
  async fn() {
    if (missing) throw new Error(`DEER_REQUIRE_SLURM=1 but ${missing}`);
    const dir = await Deno.makeTempDir({ prefix: "deer-sweep-slurm-" });
    const data = await writeToyNpz(join(dir, "toy.npz"));
    const file = join(dir, "tiny.json");
    await Deno.writeTextFile(
      file,
      tinySweepFile("tiny", join(dir, "slurm-run"), data, ROUNDS, {
        slurm: { cpus_per_task: 1, mem: "1G", time: "00:10:00" },
      }),
    );
    const env = { DEER_BACKEND: "wasm", NO_COLOR: "1" };
    const command = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", SWEEP_TASK, ...args],
        env,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      });
    const started = performance.now();
    const child = command(["run", file, "--executor", "slurm", "--wait", "--poll", "1"]).spawn();
    const stderr = new Response(child.stderr).text();
    const stdout = new Response(child.stdout).text();

    // Requeue array task 0 once its point has recorded a round (it is then mid-run).
    const sweep = await loadSweep(file);
    const points = expandPoints(sweep);
    const first = pointDir(sweep.root, points[0].id);
    let requeuedAt = -1;
    const deadline = Date.now() + 180_000;
    while (Date.now() < deadline) {
      const run = await findRunDir(first).catch(() => null);
      const done = run ? (await readRecords(join(run, "seed-10", "records.jsonl"))).length : 0;
      if (done >= 1) {
        const [sub] = await submissions(sweep.root);
        const rq = await new Deno.Command("scontrol", { args: ["requeue", `${sub.jobId}_0`] })
          .output();
        assert.ok(rq.success, new TextDecoder().decode(rq.stderr));
        requeuedAt = done;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(requeuedAt >= 1 && requeuedAt < ROUNDS, `requeued after round ${requeuedAt}`);
    const status = await child.status;
    const err = await stderr;
    const jobId = (await stdout).trim();
    console.log(
      `sweep_slurm: job ${jobId}, task 0 requeued after round ${requeuedAt}; ` +
        `${((performance.now() - started) / 1000).toFixed(1)} s end to end`,
    );
    assert.equal(status.code, 0, err);
    assert.match(err, new RegExp(`submitted job array ${jobId} \\(4 tasks\\)`));
    assert.match(err, /4 COMPLETED \| points: 4 finished/);

    // The requeued task restarted and ran only the rounds that were missing.
    const log = await Deno.readTextFile(join(first, "train.log"));
    const attempts = log.split(/^=== slurm task /m).slice(1);
    assert.equal(attempts.length, 2, log);
    assert.match(attempts[1], /restart 1 /);
    assert.match(attempts[0], /^round 1:/m);
    assert.doesNotMatch(attempts[1], /^round 1:/m, "the restart began again at round 1");
    assert.match(attempts[1], new RegExp(`^round ${ROUNDS}:`, "m"));
    const st = await command(["status", file]).output();
    const stText = new TextDecoder().decode(st.stdout);
    assert.match(stText, new RegExp(`${jobId}_0 COMPLETED \\(restarts 1\\)`));
    assert.match(stText, /4 finished, 0 partial, 0 pending, 0 failed of 4/);

    // The same sweep on the local executor: identical records (wall-clock seconds aside).
    const local = await command(["run", file, "--out", join(dir, "local-run")]).output();
    assert.equal(local.code, 0, new TextDecoder().decode(local.stderr));
    const records = async (root: string) => {
      const out: Record<string, unknown> = {};
      for (const p of points) {
        const run = (await findRunDir(pointDir(root, p.id)))!;
        const recs = await readRecords(join(run, `seed-${p.settings.seeds}`, "records.jsonl"));
        assert.equal(recs.length, ROUNDS);
        out[p.id] = JSON.parse(JSON.stringify(recs), (k, v) => k === "seconds" ? 0 : v);
        out[`${p.id} ledger`] = JSON.parse(
          await Deno.readTextFile(join(run, `seed-${p.settings.seeds}`, "ledger.json")),
        );
      }
      return out;
    };
    assert.deepEqual(await records(sweep.root), await records(join(dir, "local-run")));
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "slurm: a failing task is shown with its log; a second writer is refused; resubmission " +
    "takes only the unfinished points",
  ignore: missing !== null && !required,
  async fn() {
    if (missing) throw new Error(`DEER_REQUIRE_SLURM=1 but ${missing}`);
    const dir = await Deno.makeTempDir({ prefix: "deer-sweep-slurm-fail-" });
    const data = await writeToyNpz(join(dir, "toy.npz"));
    const file = join(dir, "failing.json");
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        name: "failing",
        results: join(dir, "run"),
        base: {
          model: TINY_MODEL,
          prototypes: "orthonormal",
          node_num: 2,
          lora_r: 2,
          batchsize: 8,
          T: 2,
          E: 1,
          seeds: 10,
        },
        grid: { dataset: [data, join(dir, "missing.npz")] },
        slurm: { cpus_per_task: 1, mem: "1G" },
      }),
    );
    const sweep = (...args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", SWEEP_TASK, ...args],
        env: { DEER_BACKEND: "wasm", NO_COLOR: "1" },
        stdin: "null",
      }).output();
    const text = (b: Uint8Array) => new TextDecoder().decode(b);
    const submitted = await sweep("run", file, "--executor", "slurm");
    assert.equal(submitted.code, 0, text(submitted.stderr));
    const jobId = text(submitted.stdout).trim();
    assert.match(jobId, /^\d+$/);
    // While the array is queued or running, the local executor may not take its points.
    const second = await sweep("run", file, "--executor", "local");
    assert.equal(second.code, 2, text(second.stderr));
    assert.match(
      text(second.stderr),
      new RegExp(`still queued or running on Slurm: [0-9a-f]{12} \\(task ${jobId}_0 `),
    );
    // Wait for the array to end.
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline) {
      const tasks = await arrayTasks([jobId]);
      if (tasks.length === 2 && tasks.every((t) => ["COMPLETED", "FAILED"].includes(t.state))) {
        assert.deepEqual(tasks.map((t) => [t.state, t.exitCode]), [["COMPLETED", 0], [
          "FAILED",
          1,
        ]]);
        break;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    const st = await sweep("status", file);
    assert.match(text(st.stdout), new RegExp(`${jobId}_1 FAILED`));
    assert.match(text(st.stdout), /1 finished, 0 partial, 0 pending, 1 failed of 2/);
    assert.match(
      text(st.stderr),
      /✗ point 1 [0-9a-f]{12} \(dataset=.*missing\.npz\): failed, exit code 1/,
    );
    assert.match(text(st.stderr), /missing\.npz/);
    // Submitting again sends only the failed point; --wait exits 1 and shows its log.
    const again = await sweep("run", file, "--executor", "slurm", "--wait", "--poll", "1");
    assert.equal(again.code, 1, text(again.stderr));
    assert.match(text(again.stderr), /2 points, 1 finished, 1 to run \(slurm\)/);
    assert.match(text(again.stderr), /submitted job array \d+ \(1 tasks\)/);
    assert.match(text(again.stderr), /✗ point 1 .*: failed, exit code 1; last lines of/);
    await Deno.remove(dir, { recursive: true });
  },
});
