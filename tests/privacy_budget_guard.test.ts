/**
 * `--max_epsilon`: a strict run stops before the round whose releases would exceed the budget,
 * records why, keeps its files consistent, and a resume does not go past the budget.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { runTrain, TINY_MODEL, tinyRunFlags, writeToyNpz } from "./helpers/reliability_inputs.ts";

const dir = await Deno.makeTempDir({ prefix: "deer-budget-" });
const data = await writeToyNpz(join(dir, "toy.npz"));
const flags = (out: string, extra: string[]) =>
  tinyRunFlags(data, out, { T: "6", is_DP: "1", epsilon: "3" }, extra);

Deno.test("budget guard: stops before the round that would exceed --max_epsilon; resume does not pass it", async () => {
  const out = join(dir, "guarded");
  const run = await runTrain(flags(out, ["--calibration", "strict", "--max_epsilon", "1.5"]), {
    backend: null,
  });
  assert.equal(run.code, 0, run.stderr);
  const [runDir] = [...Deno.readDirSync(join(out, "default"))].map((e) =>
    join(out, "default", e.name)
  );
  const seedDir = join(runDir, "seed-10");
  const records = (await Deno.readTextFile(join(seedDir, "records.jsonl"))).trim().split("\n")
    .map((l) => JSON.parse(l));
  const stop = JSON.parse(await Deno.readTextFile(join(seedDir, "stop.json")));
  assert.equal(stop.reason, "budget");
  assert.equal(stop.round, records.length + 1, "stopped right after the last recorded round");
  assert.ok(records.length >= 1 && records.length < 6, `${records.length} rounds`);
  assert.ok(records.at(-1).epsilon.spent <= 1.5, "spent within the budget");
  assert.ok(stop.epsilonAfterRound > 1.5, "the next round would have exceeded it");
  assert.equal(stop.spentEpsilon, records.at(-1).epsilon.spent);
  // The ledger holds exactly the releases of the recorded rounds (DEeR: 2 per round).
  const ledger = JSON.parse(await Deno.readTextFile(join(seedDir, "ledger.json")));
  assert.equal(ledger.releases.length, 2 * records.length);
  assert.match(
    run.stdout,
    new RegExp(`seed 10: stopped before round ${stop.round} by --max_epsilon 1\\.5`),
  );
  // A resume stops at once, before any training, and changes nothing.
  const before = await Deno.readTextFile(join(seedDir, "records.jsonl"));
  const resumed = await runTrain(
    flags(out, ["--calibration", "strict", "--max_epsilon", "1.5", "--resume"]),
    { backend: null },
  );
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.doesNotMatch(resumed.stderr, /^round \d/m, "no round ran");
  assert.match(resumed.stdout, /stopped before round/);
  assert.equal(await Deno.readTextFile(join(seedDir, "records.jsonl")), before);
});

Deno.test("budget guard: refused with the paper calibration and without DP", async () => {
  const paper = await runTrain(
    flags(join(dir, "p"), ["--calibration", "paper", "--max_epsilon", "2"]),
  );
  assert.equal(paper.code, 2, paper.stderr);
  assert.match(paper.stderr, /max_epsilon with paper calibration.*use --calibration strict/);
  const noDp = await runTrain(tinyRunFlags(data, join(dir, "n"), { max_epsilon: "2" }));
  assert.equal(noDp.code, 2, noDp.stderr);
  assert.match(noDp.stderr, /--max_epsilon\/--accountant\/--noise only apply with --is_DP 1/);
});

Deno.test("budget guard: a sweep's summary table marks the points it stopped", async () => {
  const { runSweep, studyConfig, studyScale, subsetDataset } = await import("../lib/ablations.ts");
  const { summaryTable } = await import("../lib/plot/ablations.ts");
  const { loadInputs } = await import("../lib/experiment.ts");
  const scale = {
    ...studyScale(true),
    rounds: 4,
    numClients: 2,
    batchSize: 8,
    rank: 2,
    alpha: 2,
    perClass: { train: 8, val: 2, test: 2 },
  };
  const inputs = await loadInputs({
    dataset: data,
    modelPath: TINY_MODEL,
    prototypes: "orthonormal",
    rank: 2,
    alpha: 2,
  });
  const base = studyConfig(scale);
  const dp = { calibration: "strict" as const, clip: 0.5, epsilon: 3 };
  const sweep = await runSweep({ ...inputs, data: subsetDataset(inputs.data, scale.perClass) }, [
    { label: "guarded", params: {}, config: { ...base, dp: { ...dp, maxEpsilon: 1.5 } } },
    { label: "free", params: {}, config: { ...base, dp } },
  ], { log: () => {} });
  inputs.backbone.prototypes.dispose();
  const [guarded, free] = sweep.summary;
  assert.equal(guarded.stoppedAtBudget.length, 1);
  assert.deepEqual(free.stoppedAtBudget, []);
  const table = summaryTable(sweep.summary);
  const spent = table.columns.indexOf("spent ε");
  assert.match(String(table.rows[0][spent]), /stopped at budget before round \d/);
  assert.doesNotMatch(String(table.rows[1][spent]), /stopped/);
});
