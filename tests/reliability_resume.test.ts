/**
 * No lost work: `tasks/train.ts` killed with SIGKILL in the middle of a run and started again
 * with `--resume` ends with the same records, ledgers, checkpoints and summary as a run that was
 * never interrupted (wall-clock `seconds` aside). Also: every file under lib/ and tasks/ that
 * writes results goes through lib/io/atomic.ts.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ledgerFromJson, ledgerToJson } from "../lib/privacy/ledger.ts";
import {
  listTree,
  REPO,
  runTrain,
  TINY_MODEL,
  trainCommand,
  writeToyNpz,
} from "./helpers/reliability_inputs.ts";

const dir = await Deno.makeTempDir({ prefix: "deer-reliability-resume-" });
const data = await writeToyNpz(join(dir, "toy.npz"));
const ROUNDS = 3;
const SEEDS = [10, 11];
const RUN = "default/DEeR_m1-1_m2-1_dp-strict-eps3";

/**
 * DEeR, strict DP (so that there is a ledger), two seeds, three rounds each; on the wasm
 * backend, the quickest for the tiny model (every run of a comparison uses the same backend).
 */
const args = (out: string) => [
  ...["--dataset", data, "--model", TINY_MODEL, "--prototypes", "orthonormal"],
  ...["--T", String(ROUNDS), "--E", "1", "--node_num", "2", "--lora_r", "2", "--batchsize", "8"],
  ...["--seeds", SEEDS.join(","), "--is_DP", "1", "--calibration", "strict", "--epsilon", "3"],
  ...["--out", out],
];

function lines(path: string): string[] {
  if (!existsSync(path)) return [];
  return Deno.readTextFileSync(path).split("\n").filter((l) => l.trim() !== "");
}

/** A JSON value with every `seconds` field (wall clock) set to 0. */
function withoutClock(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value), (k, v) => (k === "seconds" ? 0 : v));
}

/** Rounds the saved state of seed 10 covers (0 without a state). */
function completedRounds(root: string): number {
  const path = join(root, RUN, "seed-10", "state.json");
  if (!existsSync(path)) return 0;
  try {
    return JSON.parse(Deno.readTextFileSync(path)).completedRounds;
  } catch {
    return 0; // never half-written (atomic), but be safe against a reader race
  }
}

/** Starts train, waits until `ready()` holds, then kills it with SIGKILL. */
async function killWhen(cmdArgs: string[], ready: () => boolean): Promise<void> {
  const child = trainCommand(cmdArgs, { backend: "wasm" }).spawn();
  const ended = child.output();
  const deadline = Date.now() + 120_000;
  while (!ready()) {
    assert.ok(Date.now() < deadline, "the run never got there");
    await new Promise((r) => setTimeout(r, 20));
  }
  child.kill("SIGKILL");
  const status = await ended;
  assert.equal(status.signal, "SIGKILL", "killed, not finished");
}

Deno.test("reliability: a run killed mid-way resumes to the uninterrupted results", async () => {
  const whole = join(dir, "whole");
  const broken = join(dir, "broken");
  const records10 = join(broken, RUN, "seed-10", "records.jsonl");
  // The uninterrupted run and the one to kill run side by side (same backend, same seeds).
  const uninterrupted = runTrain(args(whole), { backend: "wasm" });
  // Kill 1: as soon as the first round's record appears — inside the round's commit (record,
  // checkpoint, state), where a torn round must be dropped and redone.
  await killWhen(args(broken), () => lines(records10).length >= 1);
  const atFirstKill = lines(records10).length;
  assert.ok(atFirstKill >= 1 && atFirstKill < ROUNDS, `mid-run (${atFirstKill} of ${ROUNDS})`);
  // Kill 2: a resumed run, once two rounds are committed — the next resume restores that state.
  await killWhen([...args(broken), "--resume"], () => completedRounds(broken) >= 2);
  assert.ok(completedRounds(broken) < ROUNDS, "killed before seed 10 finished");
  assert.ok(!existsSync(join(broken, RUN, "summary.json")), "no summary yet");
  assert.ok(!existsSync(join(broken, RUN, "seed-11")), "second seed not started");

  const resumed = await runTrain([...args(broken), "--resume"], { backend: "wasm" });
  assert.equal(resumed.code, 0, resumed.stderr);
  const reference = await uninterrupted;
  assert.equal(reference.code, 0, reference.stderr);

  for (const seed of SEEDS) {
    const a = join(whole, RUN, `seed-${seed}`), b = join(broken, RUN, `seed-${seed}`);
    const recA = lines(join(a, "records.jsonl")).map((l) => withoutClock(JSON.parse(l)));
    const recB = lines(join(b, "records.jsonl")).map((l) => withoutClock(JSON.parse(l)));
    assert.equal(recB.length, ROUNDS, `seed ${seed}: one record per round`);
    assert.deepEqual(recB, recA, `seed ${seed}: records.jsonl`);
    // The privacy ledger: saved with the results, identical after the resume, never decreasing.
    const ledgerA = JSON.parse(Deno.readTextFileSync(join(a, "ledger.json")));
    const ledgerB = JSON.parse(Deno.readTextFileSync(join(b, "ledger.json")));
    assert.deepEqual(ledgerB, ledgerA, `seed ${seed}: ledger.json`);
    const text = Deno.readTextFileSync(join(b, "ledger.json"));
    const replayed = ledgerFromJson(text, "ledger.json");
    assert.equal(ledgerToJson(replayed), text, "ledger.json replays (every stored ε recomputed)");
    assert.equal(ledgerB.releases.length, 2 * ROUNDS, "DEeR: two releases per round");
    const spent = ledgerB.rounds.map((r: { epsilon: number }) => r.epsilon);
    for (let i = 1; i < spent.length; i++) assert.ok(spent[i] >= spent[i - 1], "ε never decreases");
    assert.deepEqual(
      recB.map((r) => (r as { epsilon: { spent: number } }).epsilon.spent),
      spent,
      "records and ledger agree",
    );
    // Checkpoints: byte for byte.
    const ckA = listTree(join(a, "checkpoints")), ckB = listTree(join(b, "checkpoints"));
    assert.equal(ckB.length, ROUNDS);
    assert.deepEqual(ckB, ckA);
    for (const f of ckB) {
      assert.deepEqual(
        Deno.readFileSync(join(b, "checkpoints", f)),
        Deno.readFileSync(join(a, "checkpoints", f)),
        `seed ${seed}: checkpoints/${f}`,
      );
    }
    // Nothing half-written or stale is left: only the last round's state tensors remain.
    const files = listTree(b);
    assert.deepEqual(files.filter((f) => /\.tmp$|\.part$/.test(f)), [], "no temporary files");
    assert.deepEqual(files.filter((f) => f.startsWith("state-round-")), [
      `state-round-${String(ROUNDS).padStart(4, "0")}.safetensors`,
    ]);
  }
  const summary = (root: string) =>
    withoutClock(JSON.parse(Deno.readTextFileSync(join(root, RUN, "summary.json"))));
  assert.deepEqual(summary(broken), summary(whole), "summary.json");
  await Deno.remove(dir, { recursive: true });
});

/** Files that write with Deno's raw calls, and why that is not a results file. */
const RAW_WRITERS_ALLOWED: Record<string, string> = {
  "lib/io/atomic.ts": "the atomic writer itself",
  "lib/data/download.ts": "streams to a .part file, checks its MD5, then renames it",
  "lib/plot/png.ts": "a scratch page in a fresh temporary folder, read by Chromium",
  "lib/data/image_folder.ts":
    "only its @examples write: a PNG into the temporary folder the example builds as input",
  "lib/io/lock.ts": "the lock file: its holder record is rewritten in place under the lock",
  "lib/federation/pki.ts": "openssl's extension file, a scratch file in the throw-away CA's folder",
  "lib/federation/server.ts":
    "site credentials created with mode 0600 in the launcher's own fresh folder, and its PID file",
  "lib/privacy/noise_key.ts":
    "a noise key (a site's, a secret-noise run's): created once with mode 0600 (createNew, never rewritten)",
};

Deno.test("reliability: lib/ and tasks/ write results only through lib/io/atomic.ts", () => {
  const raw =
    /Deno\.(writeFile|writeTextFile|writeFileSync|writeTextFileSync|create|createSync|truncate)\(|Deno\.open(Sync)?\([^)]*write|appendFile/;
  const offenders: string[] = [];
  for (const root of ["lib", "tasks"]) {
    for (const rel of listTree(join(REPO, root))) {
      if (!rel.endsWith(".ts")) continue;
      const path = `${root}/${rel}`;
      const text = Deno.readTextFileSync(join(REPO, path));
      if (raw.test(text) && !(path in RAW_WRITERS_ALLOWED)) offenders.push(path);
    }
  }
  assert.deepEqual(offenders, [], "write through writeFileAtomic / writeJsonAtomic instead");
});
