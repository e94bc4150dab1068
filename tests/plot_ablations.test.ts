import assert from "node:assert/strict";
import type { ReleaseRow, RoundRow, SummaryRow } from "../lib/ablations.ts";
import {
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

function summary(over: Partial<SummaryRow>): SummaryRow {
  return {
    label: "x",
    params: {},
    method: "DEeR(m1=1,m2=1)",
    family: "DEeR",
    calibration: "paper",
    accuracy: 50,
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
    ...over,
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
  assert.equal(table.rows[0][7], "120");
  assert.equal(table.rows[2][3], "FAILED: cholesky: boom");

  const lines = linesFigure({ title: "t", xTitle: "x", yTitle: "y", series: [], logX: true });
  assert.equal((lines.layout.xaxis as { type: string }).type, "log");
});
