import assert from "node:assert/strict";
import {
  compareToBaseline,
  describeComparisons,
  type ReleaseRow,
  type RoundRow,
  type SummaryMetric,
  type SummaryRow,
} from "../lib/ablations.ts";
import { meanInterval } from "../lib/metrics/interval.ts";
import { formatP } from "../lib/metrics/paired.ts";
import {
  comparisonFigure,
  comparisonTable,
  epsilonFigure,
  epsilonOverRounds,
  linesFigure,
  moduleHeatmap,
  releaseCurves,
  roundCurves,
  summaryTable,
  sweepFigure,
} from "../lib/plot/ablations.ts";
import { METHOD_COLORS } from "../lib/plot/figures.ts";

/** A summary row; `accuracy` may be given per seed (`seedAccuracy`), other metrics are constant. */
function summary(over: Partial<SummaryRow> & { seedAccuracy?: number[] }): SummaryRow {
  const { seedAccuracy, ...rest } = over;
  const acc = seedAccuracy ?? [over.accuracy ?? 50];
  const seeds = [10, 100, 1000].slice(0, acc.length);
  const values: Record<SummaryMetric, number[]> = {
    accuracy: acc,
    recall: acc.map(() => 50),
    precision: acc.map(() => 50),
    f1: acc.map(() => 50),
    auc: acc.map(() => 70),
  };
  const interval = Object.fromEntries(
    Object.entries(values).map(([k, v]) => [k, meanInterval(v)]),
  ) as SummaryRow["interval"];
  return {
    label: "x",
    params: {},
    method: "DEeR(m1=1,m2=1)",
    family: "DEeR",
    calibration: "paper",
    accuracyStd: 0,
    recall: 50,
    precision: 50,
    f1: 50,
    auc: 70,
    bestRounds: [2],
    nominalEpsilon: 6,
    spentEpsilon: 120,
    noiseMultiplier: 0.5,
    stoppedAtBudget: [],
    seconds: 1,
    error: null,
    seeds,
    perSeed: values,
    interval,
    ...rest,
    accuracy: interval.accuracy.mean,
  };
}

function round(over: Partial<RoundRow>): RoundRow {
  return {
    label: "x",
    params: {},
    method: "DEeR(m1=1,m2=1)",
    seed: 10,
    round: 1,
    trainLoss: 1,
    valAccuracy: 40,
    testAccuracy: null,
    deviation: 0,
    noiseEnergy: 1,
    peerSigmaMax: 1,
    nominalEpsilon: 6,
    spentEpsilon: 10,
    seconds: 1,
    ...over,
  };
}

Deno.test("ablation figures: round curves average seeds and colour distinct families", () => {
  const rows = [
    round({ label: "DEeR", round: 1, valAccuracy: 40, seed: 10 }),
    round({ label: "DEeR", round: 1, valAccuracy: 50, seed: 100 }),
    round({ label: "DEeR", round: 2, valAccuracy: 60 }),
    round({ label: "LoRA", method: "LoRA", round: 1, valAccuracy: 30 }),
    round({ label: "LoRA", method: "LoRA", round: 2, valAccuracy: 35 }),
  ];
  const fig = roundCurves(rows, { title: "acc", yTitle: "%", value: (r) => r.valAccuracy });
  assert.equal(fig.data.length, 2);
  assert.deepEqual(fig.data[0].x, [1, 2]);
  assert.deepEqual(fig.data[0].y, [45, 60]);
  assert.equal((fig.data[0].line as { color: string }).color, METHOD_COLORS.DEeR);
  assert.equal((fig.data[1].line as { color: string }).color, METHOD_COLORS.LoRA);
  assert.equal((fig.layout.xaxis as { dtick: number }).dtick, 1);
});

Deno.test("ablation figures: same-family series use the palette; log axes drop values ≤ 0", () => {
  const rows = [
    round({ label: "m1=0", method: "DEeR(m1=0,m2=0)", deviation: 2 }),
    round({ label: "m1=1", method: "DEeR(m1=1,m2=0)", deviation: 0 }),
  ];
  const fig = roundCurves(rows, { title: "D", yTitle: "D", value: (r) => r.deviation, logY: true });
  assert.equal((fig.data[0].line as { color?: string }).color, undefined);
  assert.deepEqual(fig.data[1].y, [null]);
  assert.equal((fig.layout.yaxis as { type: string }).type, "log");
});

Deno.test("ablation figures: strict series are dashed and keep the family colour", () => {
  const rows = [
    round({ label: "DEeR · paper", params: { calibration: "paper" } }),
    round({ label: "DEeR · strict", params: { calibration: "strict" } }),
  ];
  const fig = roundCurves(rows, { title: "ε", yTitle: "ε", value: (r) => r.spentEpsilon });
  const lines = fig.data.map((t) => t.line as { color?: string; dash: string });
  assert.deepEqual(lines.map((l) => l.dash), ["solid", "dash"]);
  assert.deepEqual(lines.map((l) => l.color), [METHOD_COLORS.DEeR, METHOD_COLORS.DEeR]);
});

Deno.test("ablation figures: releases of a two-phase round sit at r − ½ and r", () => {
  const rel = (over: Partial<ReleaseRow>): ReleaseRow => ({
    label: "DEeR",
    params: {},
    method: "DEeR(m1=1,m2=1)",
    seed: 10,
    round: 1,
    phase: "B",
    release: 1,
    effectiveNoiseMultiplier: 0.3,
    peerSigmaMax: 1.2,
    deviation: 0,
    noiseEnergy: 1,
    clippedFraction: 1,
    meanUpdateNorm: 1,
    ...over,
  });
  const rows = [
    rel({ round: 1, phase: "B", release: 1 }),
    rel({ round: 1, phase: "A", release: 2 }),
    rel({ round: 2, phase: "B", release: 3 }),
    rel({ round: 2, phase: "A", release: 4 }),
    rel({ label: "LoRA", method: "LoRA", round: 1, phase: "AB", release: 1 }),
    rel({ label: "LoRA", method: "LoRA", round: 2, phase: "AB", release: 2 }),
  ];
  const fig = releaseCurves(rows, { title: "σ", yTitle: "σ", value: (r) => r.peerSigmaMax });
  assert.deepEqual(fig.data[0].x, [0.5, 1, 1.5, 2]);
  assert.deepEqual(fig.data[1].x, [1, 2]);
  assert.equal(fig.data[0].text![1], "round 1, phase A, release 2");
});

Deno.test("ablation figures: the module heat map puts module1 on rows, module2 on columns", () => {
  const rows = [
    summary({ params: { module1: 0, module2: 0 }, accuracy: 10 }),
    summary({ params: { module1: 0, module2: 1 }, accuracy: 20 }),
    summary({ params: { module1: 1, module2: 0 }, accuracy: 30 }),
    summary({ params: { module1: 1, module2: 1 }, accuracy: 40 }),
  ];
  const fig = moduleHeatmap(rows);
  assert.deepEqual(fig.data[0].z, [[10, 20], [30, 40]]);
  const failed = moduleHeatmap([...rows.slice(0, 3), { ...rows[3], accuracy: NaN, error: "x" }]);
  assert.equal((failed.layout.annotations as { text: string }[])[3].text, "failed");
  assert.deepEqual(fig.data[0].y, ["eliminator off", "eliminator on"]);
  assert.deepEqual(fig.data[0].x, ["regulator off", "regulator on"]);
  // Category axes: on a linear axis Plotly draws nothing for string coordinates.
  assert.equal((fig.layout.xaxis as { type: string }).type, "category");
  assert.equal((fig.layout.yaxis as { type: string }).type, "category");
  const notes = fig.layout.annotations as { text: string }[];
  assert.deepEqual(notes.map((a) => a.text), ["10.0", "20.0", "30.0", "40.0"]);
  assert.throws(() => moduleHeatmap(rows.slice(1)), /module1: 0, module2: 0/);
});

Deno.test("ablation figures: accuracy against nominal and spent ε, per method and calibration", () => {
  const rows = [
    summary({ params: { method: "DEeR" }, nominalEpsilon: 1, spentEpsilon: 50, accuracy: 40 }),
    summary({ params: { method: "DEeR" }, nominalEpsilon: 4, spentEpsilon: 200, accuracy: 50 }),
    summary({
      params: { method: "DEeR" },
      calibration: "strict",
      nominalEpsilon: 1,
      spentEpsilon: 1,
      accuracy: 20,
    }),
  ];
  const nominal = epsilonFigure(rows, "nominal");
  assert.deepEqual(nominal.data.map((t) => t.name), ["DEeR · paper", "DEeR · strict"]);
  assert.deepEqual(nominal.data[0].x, [1, 4]);
  const spent = epsilonFigure(rows, "spent");
  assert.deepEqual(spent.data[0].x, [50, 200]);
  assert.equal((spent.layout.xaxis as { type: string }).type, "log");
  assert.equal((spent.data[1].line as { dash: string }).dash, "dash");
});

Deno.test("ablation figures: sweeps over categories, ε over rounds, summary table", () => {
  const rows = [
    summary({ label: "α = 0.1", params: { dirichletAlpha: 0.1 }, accuracy: 30 }),
    summary({ label: "IID", params: { dirichletAlpha: "IID" }, accuracy: 60 }),
  ];
  const fig = sweepFigure(rows, {
    title: "α",
    x: (r) => String(r.params.dirichletAlpha),
    xTitle: "α",
    categorical: true,
  });
  assert.deepEqual(fig.data[0].x, ["0.1", "IID"]);
  assert.equal((fig.layout.xaxis as { type: string }).type, "category");

  const eps = epsilonOverRounds([round({ round: 1 }), round({ round: 3, spentEpsilon: 30 })]);
  const nominal = eps.data.at(-1)!;
  assert.equal(nominal.name, "nominal ε = 6");
  assert.deepEqual(nominal.x, [1, 3]);
  assert.deepEqual(nominal.y, [6, 6]);

  const table = summaryTable([...rows, { ...rows[0], label: "bad", error: "cholesky: boom\nat" }]);
  assert.equal(table.rows.length, 3);
  for (const r of table.rows) assert.equal(r.length, table.columns.length);
  assert.deepEqual(table.columns.slice(3, 5), ["seeds", "acc ± 95 % CI"]);
  assert.equal(table.rows[0][8], "120");
  assert.deepEqual(table.rows[0].slice(3, 5), ["1", "30.00"]);
  assert.equal(table.rows[2][4], "FAILED: cholesky: boom");

  const lines = linesFigure({ title: "t", xTitle: "x", yTitle: "y", series: [], logX: true });
  assert.equal((lines.layout.xaxis as { type: string }).type, "log");
});

Deno.test("ablation figures: with three seeds, bars and tables show the 95 % t interval", () => {
  // Seeds 50/52/54: mean 52, sd 2, half-width t(0.975, 2) · 2 / √3 = 4.9683.
  const rows = [
    summary({ label: "r = 2", params: { rank: 2 }, seedAccuracy: [50, 52, 54] }),
    summary({ label: "r = 8", params: { rank: 8 }, seedAccuracy: [40, 40, 40] }),
  ];
  const half = 4.302652729749462 * 2 / Math.sqrt(3);
  const fig = sweepFigure(rows, { title: "Rank", x: (r) => r.params.rank as number, xTitle: "r" });
  const bars = fig.data[0].error_y!;
  assert.ok(Math.abs(bars.array[0]! - half) < 1e-9);
  assert.equal(bars.array[1], 0);
  assert.deepEqual(fig.data[0].y, [52, 40]);
  assert.match(
    (fig.layout.title as { text: string }).text,
    /<sub>mean over 3 seeds; bars: 95 % t interval<\/sub>/,
  );
  assert.match(fig.data[0].text![0], /r = 2: 52\.0 \[47\.0, 57\.0\] \(3 seeds\)/);
  // One seed: no bars, and the title says so.
  const one = sweepFigure([summary({ params: { rank: 2 } })], {
    title: "Rank",
    x: (r) => r.params.rank as number,
    xTitle: "r",
  });
  assert.equal(one.data[0].error_y, undefined);
  assert.match((one.layout.title as { text: string }).text, /one seed: no interval/);

  const table = summaryTable(rows);
  assert.equal(table.rows[0][4], `52.00 ± ${half.toFixed(2)}`);
  assert.equal(table.rows[1][4], "40.00 ± 0.00");

  const eps = epsilonFigure(rows, "nominal");
  assert.ok(Math.abs(eps.data[0].error_y!.array[0]! - half) < 1e-9);

  const grid = [0, 1].flatMap((m1) =>
    [0, 1].map((m2) =>
      summary({ params: { module1: m1, module2: m2 }, seedAccuracy: [50, 52, 54 + m1 + m2] })
    )
  );
  const notes = moduleHeatmap(grid).layout.annotations as { text: string }[];
  assert.equal(notes[0].text, "52.0<br>[47.0, 57.0]");
});

Deno.test("ablation figures: round curves carry the per-round interval over seeds", () => {
  const rows = [10, 100, 1000].flatMap((seed, i) => [
    round({ label: "DEeR", seed, round: 1, valAccuracy: 40 + 2 * i }),
    round({ label: "DEeR", seed, round: 2, valAccuracy: 50 }),
  ]);
  const fig = roundCurves(rows, { title: "acc", yTitle: "%", value: (r) => r.valAccuracy });
  assert.deepEqual(fig.data[0].y, [42, 50]);
  const half = 4.302652729749462 * 2 / Math.sqrt(3);
  assert.ok(Math.abs(fig.data[0].error_y!.array[0]! - half) < 1e-9);
  assert.equal(fig.data[0].error_y!.array[1], 0);
  const log = roundCurves(rows, {
    title: "D",
    yTitle: "D",
    value: (r) => r.valAccuracy,
    logY: true,
  });
  assert.equal(log.data[0].error_y, undefined, "no symmetric bars on a log axis by default");
});

Deno.test("ablation figures: the comparison table and figure show differences and verdicts", () => {
  const rows = [
    summary({ label: "LoRA", seedAccuracy: [55.2, 56.9, 56.0] }),
    summary({ label: "DEeR", seedAccuracy: [58.5, 60.1, 57.2] }),
    summary({ label: "strict", seedAccuracy: [45.2, 46.0, 44.0] }),
    summary({ label: "broken", seedAccuracy: [NaN, NaN, NaN], error: "boom" }),
  ];
  const comparisons = compareToBaseline(rows, "LoRA");
  const table = comparisonTable(comparisons);
  assert.deepEqual(table.rows[0], [
    "DEeR",
    "LoRA",
    "3",
    "+2.57",
    "[-0.38, 5.51]",
    "0.064",
    "0.25",
    "not significant",
  ]);
  assert.equal(table.rows[1][7], "lower (t-test only)");
  assert.deepEqual(table.rows[2], ["broken", "LoRA", "", "", "", "", "", "broken failed"]);
  const fig = comparisonFigure(comparisons);
  assert.deepEqual(fig.data[0].y, ["DEeR − LoRA", "strict − LoRA"]);
  const half = 5.509435097903827 - 2.5666666666666678;
  assert.ok(Math.abs(fig.data[0].error_x!.array[0]! - half) < 1e-8);
  assert.deepEqual((fig.data[0].marker as { color: string[] }).color, ["#555", "#d62728"]);
  assert.equal(fig.data[0].text![0], comparisons[0].sentence);

  const text = describeComparisons(comparisons);
  const p = formatP(comparisons[1].comparison!.tTestP);
  assert.equal(
    text.split("\n")[3],
    `Significant at 5 % by the paired t-test: 1 of 2 (strict − LoRA, p = ${p}); confirmed by ` +
      "the exact sign-flip test: 0. Each comparison is tested on its own, without correction " +
      "for the 2 made here: where there is no real difference, each still comes out " +
      "significant with probability 5 % (0.1 expected among 2).",
  );
  assert.deepEqual(text.split("\n").slice(0, 3), comparisons.map((c) => `- ${c.sentence}`));
  assert.match(text.split("\n")[4], /^With 3 seeds the 95 % interval/);

  // Labels that hold a comma are parenthesised as terms of the difference.
  const grid = [
    summary({ label: "eliminator off, regulator off", seedAccuracy: [55.2, 56.9, 56.0] }),
    summary({ label: "eliminator on, regulator on", seedAccuracy: [58.5, 60.1, 57.2] }),
  ];
  const [c] = compareToBaseline(grid, "eliminator off, regulator off");
  assert.match(
    c.sentence,
    /^\(eliminator on, regulator on\) − \(eliminator off, regulator off\) = \+2\.6 points/,
  );
  assert.deepEqual(comparisonFigure([c]).data[0].y, [
    "(eliminator on, regulator on) − (eliminator off, regulator off)",
  ]);
});
