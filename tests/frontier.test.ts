import assert from "node:assert/strict";
import {
  frozenModelMetrics,
  runSweep,
  studyConfig,
  studyScale,
  type SummaryRow,
} from "../lib/ablations.ts";
import {
  cohortRegime,
  describeFrontier,
  FRONTIER_METHODS,
  frontierFigure,
  frontierFindings,
  frontierPoints,
  frontierTable,
} from "../lib/frontier.ts";
import { pairedComparison } from "../lib/metrics/paired.ts";
import { writeToyMedMnist } from "./helpers/fl_fixture.ts";
import { loadTinyStudy, TINY_STUDY_SCALE } from "./helpers/tiny_study.ts";

Deno.test("frontier: cohortRegime picks q for the expected cohort and names the regime", () => {
  assert.deepEqual(cohortRegime(12, 20), {
    name: "cross-silo K=12",
    numClients: 12,
    participation: 1,
  });
  assert.deepEqual(cohortRegime(100, 20), {
    name: "cross-device K=100, q=0.2",
    numClients: 100,
    participation: 0.2,
  });
  assert.equal(cohortRegime(1000, 20).participation, 0.02);
  assert.equal(cohortRegime(1000, 20).name, "cross-device K=1000, q=0.02");
  assert.throws(() => cohortRegime(1, 20), /numClients 1/);
  assert.throws(() => cohortRegime(10, 0), /cohort 0/);
});

Deno.test("frontier: the grid is regime × method × ε, strict with the PLD accountant", () => {
  const base = studyConfig(studyScale(true), { calibration: "paper" });
  const regimes = [cohortRegime(12, 20), cohortRegime(100, 20)];
  const points = frontierPoints(base, {
    methods: FRONTIER_METHODS.slice(0, 2),
    regimes,
    epsilons: [1, 6],
  });
  assert.equal(points.length, 8);
  assert.deepEqual(points.map((p) => p.label).slice(0, 3), [
    "LoRA · cross-silo K=12 · ε=1",
    "LoRA · cross-silo K=12 · ε=6",
    "FFA-LoRA · cross-silo K=12 · ε=1",
  ]);
  const last = points[7];
  assert.equal(last.label, "FFA-LoRA · cross-device K=100, q=0.2 · ε=6");
  assert.deepEqual(last.params, { method: "FFA-LoRA", regime: regimes[1].name, epsilon: 6 });
  assert.equal(last.config.numClients, 100);
  assert.equal(last.config.participation, 0.2);
  assert.deepEqual(last.config.dp, {
    calibration: "strict",
    clip: base.dp!.clip,
    delta: base.dp!.delta,
    epsilon: 6,
    accountant: "pld",
  });
  assert.deepEqual(FRONTIER_METHODS.map((m) => m.name), ["LoRA", "FFA-LoRA", "DEeR", "FedSVD"]);
});

Deno.test("frontier: a tiny three-seed sweep, its findings, table, figure and conclusion", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-frontier-" });
  const npz = await writeToyMedMnist(dir);
  const study = await loadTinyStudy(npz);
  const frozen = (await frozenModelMetrics(study)).accuracy;
  const regimes = [cohortRegime(4, 4), cohortRegime(4, 2)];
  const sweep = await runSweep(
    study,
    frontierPoints(studyConfig(TINY_STUDY_SCALE, { calibration: "strict" }), {
      methods: FRONTIER_METHODS.filter((m) => m.name === "LoRA"),
      regimes,
      epsilons: [3],
    }),
    { seeds: [1, 2, 3], log: () => {} },
  );
  study.dispose();
  await Deno.remove(dir, { recursive: true });

  assert.equal(sweep.summary.length, 2);
  for (const r of sweep.summary) {
    assert.equal(r.error, null);
    assert.equal(r.calibration, "strict");
    // Strict calibration spends what it targets (within the search's grid, never above).
    assert.ok(r.spentEpsilon! <= 3 + 1e-9 && r.spentEpsilon! > 2.9, `${r.spentEpsilon}`);
  }
  // Subsampling (q = 0.5) allows a smaller σ at the same ε.
  assert.ok(sweep.summary[1].noiseMultiplier! < sweep.summary[0].noiseMultiplier!);

  const findings = frontierFindings(sweep.summary, frozen);
  for (const [i, f] of findings.entries()) {
    const acc = sweep.summary[i].perSeed.accuracy;
    const c = pairedComparison(acc, acc.map(() => frozen));
    assert.equal(f.seeds, 3);
    assert.equal(f.difference, c.mean);
    assert.deepEqual([f.low, f.high, f.tTestP, f.signFlipP], [
      c.low,
      c.high,
      c.tTestP,
      c.signFlipP,
    ]);
  }

  const table = frontierTable(sweep.summary, frozen);
  assert.equal(table.rows.length, 2);
  assert.equal(table.rows[1][0], "cross-device K=4, q=0.5");
  assert.equal(table.rows[0][5], 3);

  const fig = frontierFigure(sweep.summary, regimes[1].name, frozen);
  assert.equal(fig.data.length, 2, "LoRA and the frozen line");
  const line = fig.data[1] as { y: number[]; mode: string; x: number[] };
  assert.deepEqual(line.y, [frozen, frozen]);
  assert.equal(line.mode, "lines");
  const spent = sweep.summary[1].spentEpsilon!;
  assert.ok(Math.abs(line.x[0] - spent / 1.5) < 1e-12 && Math.abs(line.x[1] - spent * 1.5) < 1e-12);

  // The conclusion on rows with known per-seed accuracies: 60, 61, 62 against a frozen 55 is
  // +6 points, t = 6 / (1/√3) = 10.39 on 2 df (p = 0.0091), CI 6 ± 4.303/√3 = [3.52, 8.48];
  // 50, 50.5, 49.5 is −5 with sd 0.5: t = −17.3 (p = 0.0033), CI −5 ± 1.24 = [−6.24, −3.76].
  const row = (r: SummaryRow, acc: number[]): SummaryRow => ({
    ...r,
    accuracy: acc.reduce((a, b) => a + b) / acc.length,
    perSeed: { ...r.perSeed, accuracy: acc },
  });
  const text = describeFrontier(
    [row(sweep.summary[0], [60, 61, 62]), row(sweep.summary[1], [50, 50.5, 49.5])],
    55,
  );
  const lines = text.split("\n");
  assert.equal(lines[0], "Frozen model: 55.00 % test accuracy.");
  assert.match(
    lines[1],
    /^- cross-silo K=4: best LoRA at ε=3 \(spent [\d.]+\), 61\.00 %, \+6\.00 points/,
  );
  assert.match(lines[1], /95 % CI \+3\.52 to \+8\.48/);
  assert.match(lines[1], /Significantly above the frozen model at 5 %: 1 of 1 \(.*p 0\.009/);
  assert.match(
    lines[1],
    /confirmed by the exact sign-flip test: 0\./,
    "3 seeds: sign-flip p ≥ 0.25",
  );
  assert.match(lines[2], /^- cross-device K=4, q=0\.5: best LoRA .*−5\.00 points/);
  assert.match(
    lines[2],
    /No point is significantly above .* Significantly below: 1 of 1 .*CI −6\.24 to −3\.76\), p 0\.0033\)/,
  );
  const one = describeFrontier(
    [row(sweep.summary[0], [60])].map((r) => ({ ...r, perSeed: { ...r.perSeed, accuracy: [60] } })),
    55,
  );
  assert.match(one, /One seed: no interval and no test\./);
});
