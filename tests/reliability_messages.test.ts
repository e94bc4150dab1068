/**
 * What `train` says when the data or the budget cannot do what was asked, or when something
 * degrades silently (issue: misleading messages and silent degradation). Each case runs the real
 * CLI in a subprocess on small npz files it writes.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { listTree, runTrain, tinyRunFlags, writeToyNpz } from "./helpers/reliability_inputs.ts";

const dir = await Deno.makeTempDir({ prefix: "deer-reliability-messages-" });
const at = (name: string) => join(dir, name);
const base = (dataset: string, out: string, over: Record<string, string> = {}) =>
  tinyRunFlags(dataset, out, over);
const empty = (n: number) => ({ shape: [0, 16, 16, 3], data: new Uint8Array(n) });
const noLabels = { shape: [0, 1], data: new Uint8Array(0) };
const oneClass = (n: number) => ({ shape: [n, 1], data: new Uint8Array(n) });

Deno.test("an empty train, val or test split is named before round 1, not '--node_num ≤ 0'", async () => {
  for (const split of ["train", "val", "test"]) {
    const data = await writeToyNpz(at(`empty-${split}.npz`), {
      [`${split}_images`]: empty(0),
      [`${split}_labels`]: noLabels,
    });
    const out = at(`out-empty-${split}`);
    const run = await runTrain(base(data, out));
    assert.equal(run.code, 1, run.stderr);
    assert.match(
      run.stderr,
      new RegExp(`empty-${split}\\.npz: the ${split} split holds no images`),
    );
    assert.match(run.stderr, new RegExp(`give the data set a non-empty ${split} split`));
    assert.doesNotMatch(run.stderr, /node_num ≤ 0|round 1/);
    assert.deepEqual(listTree(out), [], "nothing written");
  }
});

Deno.test("an unreachable strict ε is stated in flags, not in the library's argument names", async () => {
  const data = await writeToyNpz(at("good.npz"));
  // Under RDP, ε = 1e-9 at δ = 1e-5 is below the conversion's floor (the exact PLD accountant
  // reaches it, with σ ≈ 5.6e4).
  const run = await runTrain(
    base(data, at("out-eps"), {
      is_DP: "1",
      calibration: "strict",
      epsilon: "1e-9",
      accountant: "rdp",
    }),
  );
  assert.equal(run.code, 2, run.stderr);
  assert.match(run.stderr, /--epsilon 1e-9 is out of reach/);
  assert.match(
    run.stderr,
    /raise --epsilon or --delta, or lower --T \(releases\) or --participation/,
  );
  assert.doesNotMatch(run.stderr, /targetEpsilon|sampleRate|steps/);
  const huge = await runTrain(
    base(data, at("out-eps"), { is_DP: "1", calibration: "strict", epsilon: "1e15" }),
  );
  assert.equal(huge.code, 2, huge.stderr);
  assert.match(huge.stderr, /--epsilon 1000000000000000 is too large to calibrate/);
  assert.deepEqual(listTree(at("out-eps")), []);
});

Deno.test("one-class val and test splits are said, and the summary shows AUC n/a instead of NaN", async () => {
  const data = await writeToyNpz(at("one-class.npz"), {
    val_labels: oneClass(6),
    test_labels: oneClass(6),
  });
  const run = await runTrain(base(data, at("out-one"), { T: "3" }), { backend: null });
  assert.equal(run.code, 0, run.stderr);
  assert.match(
    run.stderr,
    /the val split of .* holds one class only.*selected on accuracy \+ recall/,
  );
  assert.match(run.stderr, /the test split of .* holds one class only/);
  assert.match(run.stdout, /AUC n\/a \(a test split with one class has no AUC\)/);
  assert.doesNotMatch(run.stdout, /NaN/);
});

Deno.test("excluded clients and empty cohorts are shown on the console", async () => {
  const data = await writeToyNpz(at("good2.npz"));
  // q = 0.3 with 2 clients: seed 10 draws empty cohorts in some of the 4 rounds.
  const run = await runTrain(
    base(data, at("out-q"), {
      T: "4",
      is_DP: "1",
      calibration: "strict",
      epsilon: "8",
      participation: "0.3",
      method: "FFA-LoRA",
    }),
    { backend: null },
  );
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stderr, /phase B: no client sampled; the global factors moved by the noise/);
  assert.match(run.stderr, /loss – \(no client\)/);
});

Deno.test("describeRound shows each excluded client with its reason", async () => {
  const { describeRound } = await import("../tasks/train.ts");
  const { defaultConfig, runFederated } = await import("../lib/fl/simulation.ts");
  const { toySetup } = await import("./helpers/fl_fixture.ts");
  const setup = await toySetup();
  const res = await runFederated(setup.backbone, setup.data, {
    ...defaultConfig(),
    method: { method: "LoRA" },
    numClients: 3,
    rounds: 1,
    localEpochs: 1,
    batchSize: 8,
  }, {
    alterUpdate: ({ client }, update) => {
      if (client === 1) throw new Error("client crashed");
      return update;
    },
  });
  const lines = describeRound(res.records[0]);
  assert.match(lines[0], /^round 1: loss \d\.\d{4} val acc/);
  assert.deepEqual(lines.slice(1), ["  phase AB: client 1 excluded — client crashed"]);
});

Deno.test("an ε computed from private peers (DEeR with module1 off, paper calibration) is reported as no guarantee, in the records, the summary and the round line; with module1 on it is spent", async () => {
  const { describeRound } = await import("../tasks/train.ts");
  const { defaultConfig, runFederated } = await import("../lib/fl/simulation.ts");
  const { summarize } = await import("../lib/experiment.ts");
  const { toySetup } = await import("./helpers/fl_fixture.ts");
  const setup = await toySetup();
  const run = (module1: boolean) =>
    runFederated(setup.backbone, setup.data, {
      ...defaultConfig(),
      method: { method: "DEeR", eliminateDeviation: module1, regulateNoise: true },
      numClients: 3,
      rounds: 1,
      localEpochs: 1,
      batchSize: 8,
      dp: { calibration: "paper", clip: 0.5, epsilon: 6 },
    });
  const off = await run(false);
  assert.deepEqual(off.ledger!.releases.map((r) => r.exact), [false]); // one phase, AB
  assert.equal(off.records[0].epsilon.exact, false);
  assert.equal(off.epsilonExact, false);
  assert.equal(summarize([off]).spentEpsilonExact, false);
  assert.match(describeRound(off.records[0])[0], / ε \d+\.\d{3} \(not a guarantee\)/);
  const on = await run(true);
  assert.ok(on.ledger!.releases.every((r) => r.exact !== false));
  assert.equal("exact" in on.records[0].epsilon, false);
  assert.equal("epsilonExact" in on, false);
  assert.equal("spentEpsilonExact" in summarize([on]), false);
  assert.match(describeRound(on.records[0])[0], / ε spent \d+\.\d{3}/);
});

Deno.test("model selection ignores an undefined AUC instead of freezing at round 1", async () => {
  const { selectionScore } = await import("../lib/metrics/classification.ts");
  const m = { accuracy: 0.5, recall: 0.5, precision: 0.5, f1: 0.5 };
  const better = selectionScore({ ...m, accuracy: 0.6, auc: NaN });
  assert.ok(better > selectionScore({ ...m, auc: NaN }), "a better round counts as better");
  assert.equal(selectionScore({ ...m, auc: 0.9 }), 2.9);
});

Deno.test("diverged updates are named at evaluation, not as a metrics error about probabilities", async () => {
  const data = await writeToyNpz(at("diverge.npz"));
  const run = await runTrain(base(data, at("out-lr"), { lr: "1e8" }), { backend: null });
  assert.equal(run.code, 1, run.stderr);
  assert.match(
    run.stderr,
    /round 1: the model's scores on val are not finite .*the updates diverged — lower the learning rate/,
  );
  assert.doesNotMatch(run.stderr, /probs\[0\]/);
});
