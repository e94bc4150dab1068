/**
 * The local executor end to end on a tiny sweep (toy data, tiny model, wasm): a pool of `train`
 * processes finishes every point; a rerun has nothing left to do; Ctrl-C (SIGINT) stops every
 * worker and a rerun continues the unfinished points to the same records as an uninterrupted
 * run; a failing point is reported with its log; `report` merges the points into tables whose
 * values are those of the records, and an HTML page that needs no network.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { REPO, writeToyNpz } from "./helpers/reliability_inputs.ts";
import { tinySweepFile } from "./helpers/tiny_sweep.ts";
import { expandPoints, loadSweep } from "../lib/sweep/spec.ts";
import { findRunDir, pointDir, pointState, readRecords } from "../lib/sweep/state.ts";

const SWEEP_TASK = join(REPO, "tasks/sweep.ts");
const dir = await Deno.makeTempDir({ prefix: "deer-sweep-local-" });
const data = await writeToyNpz(join(dir, "toy.npz"));
const ROUNDS = 30;

async function writeSweep(name: string, extra: Record<string, unknown> = {}): Promise<string> {
  const file = join(dir, `${name}.json`);
  await Deno.writeTextFile(
    file,
    tinySweepFile(name, join(dir, name), data, ROUNDS, extra),
  );
  return file;
}

function sweepCommand(args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SWEEP_TASK, ...args],
    env: { DEER_BACKEND: "wasm", NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

async function sweep(...args: string[]) {
  const out = await sweepCommand(args).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

/** Every point's records, `seconds` (wall clock) set to 0, by point id and seed. */
async function allRecords(file: string) {
  const s = await loadSweep(file);
  const out: Record<string, unknown[]> = {};
  for (const p of expandPoints(s)) {
    const run = await findRunDir(pointDir(s.root, p.id));
    assert.ok(run, `point ${p.id} has a run folder`);
    const seed = p.settings.seeds;
    const recs = await readRecords(join(run, `seed-${seed}`, "records.jsonl"));
    out[`${p.id}/${seed}`] = JSON.parse(JSON.stringify(recs), (k, v) => k === "seconds" ? 0 : v);
  }
  return out;
}

const whole = await writeSweep("whole");

Deno.test("sweep run --executor local runs every point; a rerun has nothing to do", async () => {
  const r = await sweep("run", whole, "--workers", "2");
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /4 points, 0 finished, 4 to run \(local\)/);
  assert.match(r.stderr, /2 worker\(s\)/);
  assert.match(r.stderr, /4 finished, 0 failed in [\d.]+ s/);
  const s = await loadSweep(whole);
  for (const p of expandPoints(s)) {
    const run = (await findRunDir(pointDir(s.root, p.id)))!;
    assert.ok(existsSync(join(run, "summary.json")), `${p.id} finished`);
    const exit = JSON.parse(await Deno.readTextFile(join(pointDir(s.root, p.id), "exit.json")));
    assert.equal(exit.exitCode, 0);
    assert.equal(exit.executor, "local");
    const records = await readRecords(join(run, `seed-${p.settings.seeds}`, "records.jsonl"));
    assert.equal(records.length, ROUNDS);
    const log = await Deno.readTextFile(join(pointDir(s.root, p.id), "train.log"));
    assert.match(log, /=== local attempt/);
    assert.match(log, new RegExp(`results: ${run}`));
  }
  const again = await sweep("run", whole);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /4 points, 4 finished, 0 to run/);
  const st = await sweep("status", whole);
  assert.equal(st.code, 0, st.stderr);
  assert.match(st.stdout, /4 finished, 0 partial, 0 pending, 0 failed of 4/);
  assert.equal(st.stdout.match(new RegExp(`finished ${ROUNDS}/${ROUNDS} rounds`, "g"))?.length, 4);
});

Deno.test("Ctrl-C stops every worker; a rerun continues to the records of an unbroken run", async () => {
  const broken = await writeSweep("broken");
  const s = await loadSweep(broken);
  // Its own process group (setsid), so that Ctrl-C can be sent as a terminal sends it: to the
  // sweep and every train at once.
  const child = new Deno.Command("setsid", {
    args: [Deno.execPath(), "run", "-A", SWEEP_TASK, "run", broken, "--workers", "2"],
    env: { DEER_BACKEND: "wasm", NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const stdout = new Response(child.stdout).text();
  // Wait until some point has recorded a round, then interrupt.
  const first = pointDir(s.root, expandPoints(s)[0].id);
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    const run = await findRunDir(first);
    if (run && (await readRecords(join(run, "seed-10", "records.jsonl"))).length >= 2) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  Deno.kill(-child.pid, "SIGINT");
  const status = await child.status;
  const err = await stderr;
  await stdout;
  assert.equal(status.code, 130, err);
  assert.match(err, /stopping every worker/);
  assert.match(err, /unfinished — rerun the same command to continue them/);
  // No train of this sweep is left running.
  const ps = await new Deno.Command("ps", { args: ["-eo", "args"] }).output();
  assert.ok(
    !new TextDecoder().decode(ps.stdout).includes(join(s.root, "points")),
    "a train lives on",
  );
  // Each train got the terminal's SIGINT once and stopped cleanly: the sweep did not signal it
  // a second time ("again; exiting now" skips the clean stop).
  for (const p of expandPoints(s)) {
    const log = await Deno.readTextFile(join(pointDir(s.root, p.id), "train.log")).catch(() => "");
    assert.doesNotMatch(log, /again; exiting now/, `${p.id}: a second signal\n${log}`);
  }
  const mid = await sweep("status", broken);
  assert.match(mid.stdout, /partial/);
  assert.doesNotMatch(mid.stdout, /[1-9]\d* failed of/);

  // What writers killed mid-write leave behind: the rerun removes the sweep's own (a dead process
  // id in the name), and keeps one whose writer is alive (this test's process).
  const unfinished = [];
  for (const p of expandPoints(s)) {
    const started = existsSync(pointDir(s.root, p.id));
    if (!started || (await pointState(s.root, p)).status === "finished") continue;
    unfinished.push(pointDir(s.root, p.id));
    await Deno.writeTextFile(
      join(pointDir(s.root, p.id), ".exit.json.999999998.00c0ffee.tmp"),
      "{",
    );
  }
  const dead = join(s.root, ".sweep.json.999999999.0badf00d.tmp");
  const live = join(s.root, `.sweep.json.${Deno.pid}.0123abcd.tmp`);
  await Deno.writeTextFile(dead, "{");
  await Deno.writeTextFile(live, "{");
  const rerun = await sweep("run", broken, "--workers", "2");
  assert.equal(rerun.code, 0, rerun.stderr);
  assert.match(rerun.stderr, /4 points, \d finished, [1-4] to run/);
  assert.ok(unfinished.length > 0);
  for (const d of unfinished) assert.ok(!existsSync(join(d, ".exit.json.999999998.00c0ffee.tmp")));
  assert.ok(!existsSync(dead), "a dead writer's temporary file is removed");
  assert.ok(existsSync(live), "a live writer's is kept");
  await Deno.remove(live);
  assert.deepEqual(await allRecords(broken), await allRecords(whole));
});

Deno.test("a failing point: exit code 1, its log tail shown; the others still finish", async () => {
  const file = await writeSweep("failing", {
    grid: { method: ["LoRA"], seeds: [10] },
    points: [{ method: "LoRA", seeds: 10, dataset: join(dir, "missing.npz") }],
  });
  const r = await sweep("run", file);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /1 finished, 1 failed/);
  assert.match(
    r.stderr,
    /✗ point 1 [0-9a-f]{12} \(method=LoRA seeds=10 dataset=.*missing\.npz\): failed, exit code 1; last lines of .*train\.log:/,
  );
  assert.match(r.stderr, /missing\.npz/);
  const st = await sweep("status", file);
  assert.match(st.stdout, /1 finished, 0 partial, 0 pending, 1 failed of 2/);
  assert.match(st.stderr, /✗ point 1 .*: failed, exit code 1/);
  const rep = await sweep("report", file);
  assert.equal(rep.code, 0, rep.stderr);
  const html = await Deno.readTextFile(join(dir, "failing", "report", "report.html"));
  assert.match(html, /Unfinished points/);
  assert.match(html, /exit code 1/);
});

Deno.test("sweep report: tidy and paper tables hold the records' values; HTML works offline", async () => {
  const r = await sweep("report", whole);
  assert.equal(r.code, 0, r.stderr);
  const out = join(dir, "whole", "report");
  const rows = JSON.parse(await Deno.readTextFile(join(out, "points.json")));
  assert.equal(rows.length, 4);
  const s = await loadSweep(whole);
  for (const p of expandPoints(s)) {
    const seed = Number(p.settings.seeds);
    const run = (await findRunDir(pointDir(s.root, p.id)))!;
    const records = await readRecords(join(run, `seed-${seed}`, "records.jsonl"));
    const bestRound = records.at(-1)!.bestRound;
    const best = records.find((x) => x.round === bestRound)!;
    const row = rows.find((x: { point: string }) => x.point === p.id);
    assert.equal(row.seed, seed);
    assert.equal(row.accuracy, 100 * (best.test as { accuracy: number }).accuracy);
    assert.equal(row.auc, 100 * (best.test as { auc: number }).auc);
    assert.equal(row.spentEpsilon, (records.at(-1)!.epsilon as { spent: number }).spent);
    assert.equal(row.bestRound, bestRound);
  }
  const csv = (await Deno.readTextFile(join(out, "points.csv"))).trim().split("\n");
  assert.equal(csv.length, 5);
  assert.match(csv[0], /^point,seed,E,T,batchsize,dataset,epsilon,is_DP,lora_r,method,model,/);
  const table = (await Deno.readTextFile(join(out, "table.csv"))).trim().split("\n");
  assert.equal(table.length, 3, "one row per method, pooled over two seeds");
  assert.match(table[1], /^method=LoRA,LoRA,paper,10 11,3,/);
  const lora = rows.filter((x: { method: string }) => x.method === "LoRA");
  const mean = (lora[0].accuracy + lora[1].accuracy) / 2;
  assert.match(
    r.stdout,
    new RegExp(`\\| method=LoRA \\| LoRA \\| paper \\| 2 \\| ${mean.toFixed(2)} ± `),
  );
  const html = await Deno.readTextFile(join(out, "report.html"));
  assert.match(html, /Plotly\.newPlot/);
  assert.match(html, /against the client-level ε actually spent/);
  assert.doesNotMatch(html, /<script[^>]+src=/, "no external script");
});

Deno.test("sweep report with no finished point: exit 1, says so, writes nothing", async () => {
  const file = await writeSweep("unrun");
  const r = await sweep("report", file);
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    /no point of .*unrun\.json has finished in .*unrun yet; nothing to report/,
  );
  assert.equal(existsSync(join(dir, "unrun")), false);
});
