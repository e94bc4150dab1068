/**
 * The demo's statistics without training: its seeds, its comparisons, its flags and the table it
 * prints (mean ± 95 % t interval over seeds). `deno task demo` itself trains for minutes.
 */
import assert from "node:assert/strict";
import { comparePoints, type SummaryRow } from "../lib/ablations.ts";
import { meanInterval } from "../lib/metrics/interval.ts";
import { UsageError } from "../lib/cli.ts";
import {
  DEMO,
  DEMO_COMPARISONS,
  DEMO_RUNS,
  demoConfig,
  demoTable,
  parseSeeds,
} from "../tasks/demo.ts";

Deno.test("demo: three seeds by default, and every comparison names two of its runs", () => {
  assert.ok(DEMO.seeds.length >= 3);
  assert.equal(new Set(DEMO.seeds).size, DEMO.seeds.length);
  const names = DEMO_RUNS.map((r) => r.name);
  for (const [x, y] of DEMO_COMPARISONS) assert.ok(names.includes(x) && names.includes(y));
  assert.equal(demoConfig(DEMO_RUNS[0], 2).seed, DEMO.seeds[0]);
});

Deno.test("demo: --seeds parses a list and refuses repeats and non-integers", () => {
  assert.deepEqual(parseSeeds("10, 100,1000"), [10, 100, 1000]);
  assert.deepEqual(parseSeeds("7"), [7]);
  assert.throws(
    () => parseSeeds("10,10"),
    (e) => e instanceof UsageError && /repeated/.test(e.message),
  );
  assert.throws(() => parseSeeds("10,,3"), /expected integers separated by commas/);
  assert.throws(() => parseSeeds("1.5"), /expected integers/);
});

Deno.test("demo: the table shows mean ± the 95 % interval's half-width of each metric", () => {
  const row = (label: string, acc: number[]): SummaryRow => {
    const values = { accuracy: acc, recall: acc, precision: acc, f1: acc, auc: acc };
    const interval = {
      accuracy: meanInterval(acc),
      recall: meanInterval(acc),
      precision: meanInterval(acc),
      f1: meanInterval(acc),
      auc: meanInterval(acc),
    };
    return {
      label,
      params: {},
      method: label,
      family: label,
      calibration: "paper",
      accuracy: interval.accuracy.mean,
      accuracyStd: 0,
      recall: 0,
      precision: 0,
      f1: 0,
      auc: 0,
      seeds: [10, 100, 1000],
      perSeed: values,
      interval,
      bestRounds: [5, 5, 5],
      nominalEpsilon: 6,
      spentEpsilon: 123.456,
      noiseMultiplier: 0.5,
      stoppedAtBudget: [],
      seconds: 12.34,
      error: null,
    };
  };
  const rows = [row("LoRA", [55.2, 56.9, 56.0]), row("DEeR", [58.5, 60.1, 57.2])];
  const table = demoTable(rows);
  // Half-width t(0.975, 2) · sd / √3 with sd 0.8505 (LoRA) and 1.4526 (DEeR).
  assert.deepEqual(table.rows[0], [
    "LoRA",
    "paper",
    "3",
    "56.03 ± 2.11",
    "56.03 ± 2.11",
    "56.03 ± 2.11",
    "56.03 ± 2.11",
    "56.03 ± 2.11",
    "6",
    "123.46",
    "12.3",
  ]);
  assert.equal(table.rows[1][3], "58.60 ± 3.61");
  const [c] = comparePoints(rows, [["DEeR", "LoRA"]]);
  // SciPy 1.17.1: ttest_rel([58.5, 60.1, 57.2], [55.2, 56.9, 56.0]).pvalue = 0.06424034178576586
  assert.ok(Math.abs(c.comparison!.tTestP - 0.06424034178576586) < 1e-10);
  assert.match(c.sentence, /: not significant at 5 %\.$/);
});
