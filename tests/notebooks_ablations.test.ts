import assert from "node:assert/strict";
import { tf } from "../lib/backend.ts";
import {
  clientCountPoints,
  compareToBaseline,
  describeComparisons,
  describeRange,
  describeRanking,
  describeSpentEpsilon,
  frozenModelMetrics,
  heterogeneityPoints,
  methodPoints,
  moduleGridPoints,
  notebookQuick,
  PAPER_METHODS,
  privacyPoints,
  rankPoints,
  runSweep,
  studyConfig,
  studyScale,
  subsetSplit,
  type SweepPoint,
  withMethods,
} from "../lib/ablations.ts";
import { meanInterval } from "../lib/metrics/interval.ts";
import { describeComparison, pairedComparison } from "../lib/metrics/paired.ts";
import { writeToyMedMnist } from "./helpers/fl_fixture.ts";
import { loadTinyStudy, TINY_STUDY_SCALE } from "./helpers/tiny_study.ts";

const dir = await Deno.makeTempDir({ prefix: "deer-ablations-" });
const npz = await writeToyMedMnist(dir);

const scale = TINY_STUDY_SCALE;

Deno.test("ablations: a two-point sweep returns tidy summary, round and release rows", async () => {
  const study = await loadTinyStudy(npz);
  const before = tf.memory().numTensors;
  const base = studyConfig(scale);
  const points: SweepPoint[] = [
    { label: "DEeR", params: { method: "DEeR" }, config: base },
    {
      label: "LoRA r=2",
      params: { method: "LoRA", rank: 2 },
      config: { ...base, method: { method: "LoRA" } },
      lora: { rank: 2 },
    },
  ];
  const lines: string[] = [];
  const sweep = await runSweep(study, points, { log: (l) => lines.push(l) });
  assert.equal(tf.memory().numTensors, before, "the rank point's backbone is disposed");
  study.dispose();

  assert.equal(lines.length, 2);
  assert.match(lines[1], /^\[2\/2\] LoRA r=2: test acc [\d.]+% \(best round 1\), ε nominal 6/);
  assert.deepEqual(sweep.summary.map((r) => [r.label, r.method, r.family, r.calibration]), [
    ["DEeR", "DEeR(m1=1,m2=1)", "DEeR", "paper"],
    ["LoRA r=2", "LoRA", "LoRA", "paper"],
  ]);
  for (const r of sweep.summary) {
    for (const k of ["accuracy", "recall", "precision", "f1", "auc"] as const) {
      assert.ok(r[k] >= 0 && r[k] <= 100, `${r.label} ${k} ${r[k]}`);
    }
    assert.equal(r.nominalEpsilon, 6);
    assert.ok(r.spentEpsilon !== null && r.spentEpsilon > 0);
    assert.ok(r.noiseMultiplier !== null && r.noiseMultiplier > 0);
    assert.deepEqual(r.bestRounds, [1]);
  }
  assert.deepEqual(sweep.summary[1].params, { method: "LoRA", rank: 2 });

  assert.deepEqual(sweep.rounds.map((r) => [r.label, r.round, r.seed]), [
    ["DEeR", 1, 10],
    ["LoRA r=2", 1, 10],
  ]);
  const [deer, lora] = sweep.rounds;
  assert.ok(deer.deviation < 1e-10, `DEeR deviation ${deer.deviation}`);
  assert.ok(lora.deviation > 0);
  assert.ok(deer.valAccuracy >= 0 && deer.valAccuracy <= 100);
  assert.equal(deer.testAccuracy, sweep.summary[0].accuracy, "first round is the best so far");
  assert.ok(deer.spentEpsilon !== null && deer.peerSigmaMax > 0);

  assert.deepEqual(sweep.releases.map((r) => [r.label, r.phase, r.release]), [
    ["DEeR", "B", 1],
    ["DEeR", "A", 2],
    ["LoRA r=2", "AB", 1],
  ]);
  for (const r of sweep.releases) {
    assert.ok(r.effectiveNoiseMultiplier !== null && r.effectiveNoiseMultiplier > 0);
  }
  assert.equal(sweep.releases[2].peerSigmaMax, 0, "LoRA's noise is not regulated");
  assert.equal(sweep.results.length, 2);
  assert.match(describeRanking(sweep.summary), /^test accuracy .*highest (DEeR|LoRA r=2)/);
});

Deno.test("ablations: three seeds per point; comparisons pair the seeds, not the positions", async () => {
  const study = await loadTinyStudy(npz);
  const base = studyConfig(scale);
  const points = methodPoints(
    base,
    PAPER_METHODS.filter((m) => m.name === "LoRA" || m.name === "DEeR"),
  );
  const quiet = { log: () => {} };
  const sweep = await runSweep(study, points, { ...quiet, seeds: [1, 2, 3] });
  for (const [i, row] of sweep.summary.entries()) {
    assert.deepEqual(row.seeds, [1, 2, 3]);
    const acc = sweep.results[i]!.runs.map((r) => 100 * r.best.test!.accuracy);
    assert.deepEqual(row.perSeed.accuracy, acc);
    assert.deepEqual(row.interval.accuracy, meanInterval(acc));
    assert.ok(Math.abs(row.accuracy - row.interval.accuracy.mean) < 1e-9);
  }
  // A seed alone decides a run: LoRA's seed 3 gives the same result run first or last, so a
  // comparison must pair by seed.
  const again = await runSweep(study, points.slice(0, 1), { ...quiet, seeds: [3, 1] });
  assert.deepEqual(again.summary[0].perSeed.accuracy, [
    sweep.summary[0].perSeed.accuracy[2],
    sweep.summary[0].perSeed.accuracy[0],
  ]);
  const mixed = [{ ...again.summary[0], label: "LoRA (3, 1)" }, sweep.summary[1]];
  const [paired] = compareToBaseline(mixed, (r) => (r.label === "DEeR" ? "LoRA (3, 1)" : null));
  const [lora, deer] = sweep.summary.map((r) => r.perSeed.accuracy);
  assert.deepEqual(paired.seeds, [1, 3], "the seeds both ran, in the point's order");
  assert.deepEqual(paired.comparison!.differences, [deer[0] - lora[0], deer[2] - lora[2]]);

  const comparisons = compareToBaseline(sweep.summary, "LoRA");
  assert.equal(comparisons.length, 1);
  assert.deepEqual(comparisons[0].comparison!.differences, deer.map((d, i) => d - lora[i]));
  assert.equal(
    comparisons[0].sentence,
    describeComparison(pairedComparison(deer, lora), "DEeR", "LoRA"),
  );
  const text = describeComparisons(comparisons);
  assert.ok(text.startsWith(`- ${comparisons[0].sentence}\n`), text);
  assert.match(text, /With 3 seeds the 95 % interval is the mean ± 4\.30 · sd \/ √3/);
  assert.match(describeRanking(sweep.summary), /\(best-val round, mean over 3 seeds\)/);

  const frozen = await frozenModelMetrics(study);
  for (const v of Object.values(frozen)) assert.ok(v >= 0 && v <= 100);
  const rows = sweep.rounds;
  const deviations = rows.filter((r) => r.label === "LoRA").map((r) => r.deviation);
  const range = describeRange(rows, (r) => r.deviation, "‖D‖_F");
  assert.ok(range.startsWith("‖D‖_F, lowest–highest over rounds and seeds: LoRA "), range);
  assert.ok(
    range.includes(`LoRA ${Number(Math.min(...deviations).toPrecision(3))}`),
    `${range} quotes LoRA's smallest deviation ${Math.min(...deviations)}`,
  );
  assert.match(
    describeSpentEpsilon(sweep.summary),
    /^Client-level ε spent .*: LoRA [\d.]+ \(nominal 6\); DEeR [\d.]+ \(nominal 6\)\.$/,
  );
  study.dispose();
});

Deno.test("ablations: a bad point fails before anything runs, naming the point", async () => {
  const bad = methodPoints(studyConfig(scale), [
    { name: "ok", method: { method: "LoRA" } },
    {
      name: "DEeR m1=0 strict",
      method: { method: "DEeR", eliminateDeviation: false },
      calibration: "strict",
    },
  ]);
  const lines: string[] = [];
  await assert.rejects(
    // Inputs are never touched: validation comes first.
    () => runSweep({} as never, bad, { log: (l) => lines.push(l) }),
    /sweep point "DEeR m1=0 strict": .*strict calibration/,
  );
  assert.equal(lines.length, 0);
  const twice = [bad[0], bad[0]];
  await assert.rejects(() => runSweep({} as never, twice), /two points are labelled "ok"/);
});

Deno.test("ablations: onError record keeps the sweep going and names the failure", async () => {
  const study = await loadTinyStudy(npz);
  const base = { ...studyConfig(scale), method: { method: "LoRA" }, dp: null };
  // Rank 40 does not fit the tiny model (width 32): that point fails when it starts.
  const points = rankPoints(base, [40, 2]);
  await assert.rejects(
    () => runSweep(study, points, { log: () => {} }),
    /sweep point "r = 40": LoRA rank 40 is invalid/,
  );
  const lines: string[] = [];
  const sweep = await runSweep(study, points, {
    onError: "record",
    log: (l) => lines.push(l),
  });
  study.dispose();
  assert.match(lines[0], /r = 40: FAILED after 0 round\(s\) — LoRA rank 40 is invalid/);
  assert.match(sweep.summary[0].error!, /LoRA rank 40/);
  assert.ok(Number.isNaN(sweep.summary[0].accuracy));
  assert.equal(sweep.results[0], null);
  assert.equal(sweep.summary[1].error, null);
  assert.equal(sweep.rounds.length, 1);
  assert.match(describeRanking(sweep.summary), /highest r = 2 .*Failed: r = 40 \(LoRA rank 40/);
});

Deno.test("ablations: point builders vary one thing each", () => {
  const base = studyConfig(scale);
  const grid = moduleGridPoints(base);
  assert.deepEqual(grid.map((p) => [p.params.module1, p.params.module2]), [
    [0, 0],
    [0, 1],
    [1, 0],
    [1, 1],
  ]);
  assert.deepEqual(grid[2].config.method, {
    method: "DEeR",
    eliminateDeviation: true,
    regulateNoise: false,
  });

  const privacy = privacyPoints(base, {
    methods: PAPER_METHODS.slice(0, 2),
    calibrations: ["paper", "strict"],
    epsilons: [1, 8],
  });
  assert.equal(privacy.length, 8);
  assert.equal(privacy[3].label, "LoRA · strict · ε=8");
  assert.deepEqual(privacy[3].config.dp, {
    calibration: "strict",
    clip: 0.5,
    epsilon: 8,
    delta: 1e-5,
  });

  assert.deepEqual(rankPoints(base, [2, 16]).map((p) => p.lora), [{ rank: 2, alpha: undefined }, {
    rank: 16,
    alpha: undefined,
  }]);
  const het = heterogeneityPoints(base, [0.5, "iid"]);
  assert.deepEqual(het.map((p) => p.config.split), [
    { iid: false, dirichletAlpha: 0.5 },
    { iid: true, dirichletAlpha: 0.1 },
  ]);
  assert.deepEqual(clientCountPoints(base, [4, 24]).map((p) => p.config.numClients), [4, 24]);
  const crossed = withMethods(het, PAPER_METHODS.slice(3));
  assert.deepEqual(crossed.map((p) => p.label), ["DEeR · α = 0.5", "DEeR · IID"]);
  assert.equal(crossed[1].params.method, "DEeR");
  const noDp = methodPoints(base, [{ name: "x", method: { method: "LoRA" }, calibration: null }]);
  assert.equal(noDp[0].config.dp, null);
  assert.equal(noDp[0].params.calibration, "none");
});

Deno.test("ablations: class-balanced subsets are deterministic and keep samples intact", () => {
  const split = {
    images: Uint8Array.from({ length: 12 * 2 }, (_, i) => Math.floor(i / 2)),
    sampleShape: [1, 2, 1],
    labels: Int32Array.from([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]),
  };
  const a = subsetSplit(split, 3, 2, 5);
  assert.deepEqual(a, subsetSplit(split, 3, 2, 5));
  assert.equal(a.labels.length, 6);
  for (let c = 0; c < 3; c++) assert.equal(a.labels.filter((y) => y === c).length, 2);
  for (let i = 0; i < a.labels.length; i++) {
    const original = a.images[2 * i];
    assert.equal(a.images[2 * i + 1], original, "both bytes of a sample move together");
    assert.equal(split.labels[original], a.labels[i], "label follows its image");
  }
  assert.throws(() => subsetSplit(split, 3, 0, 1), /perClass 0/);
});

Deno.test("ablations: DEER_NOTEBOOK_QUICK selects the quick scale", () => {
  const saved = Deno.env.get("DEER_NOTEBOOK_QUICK");
  try {
    Deno.env.set("DEER_NOTEBOOK_QUICK", "1");
    assert.equal(notebookQuick(), true);
    assert.equal(studyScale().quick, true);
    Deno.env.set("DEER_NOTEBOOK_QUICK", "0");
    assert.equal(notebookQuick(), false);
    assert.ok(studyScale().rounds > studyScale(true).rounds);
    assert.ok(studyScale(false).seeds.length >= 3, "full size: at least three seeds");
    assert.equal(studyScale(true).seeds.length, 1, "quick size: one seed");
  } finally {
    if (saved === undefined) Deno.env.delete("DEER_NOTEBOOK_QUICK");
    else Deno.env.set("DEER_NOTEBOOK_QUICK", saved);
  }
});

Deno.test("ablations: cleanup", async () => {
  await Deno.remove(dir, { recursive: true });
});
