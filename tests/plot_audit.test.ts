/**
 * The audit's figure and table: the histograms hold every cosine once in shared bins, the fitted
 * curves are the pooled-variance Gaussians scaled to counts, and the table has a row per run and
 * per combined estimate.
 */
import assert from "node:assert/strict";
import type { AuditedRun, ConfigAudit } from "../lib/fl/audit.ts";
import { estimateEpsilon } from "../lib/privacy/audit.ts";
import { auditTable, canaryFigure, describeAudits } from "../lib/plot/audit.ts";
import { createRng } from "../lib/rng.ts";

function run(seed: number, shift: number): AuditedRun {
  const rng = createRng(seed);
  const held = Array.from({ length: 300 }, () => rng.normal());
  const inserted = Array.from({ length: 200 }, () => shift + rng.normal());
  const estimate = estimateEpsilon({ inserted, held, delta: 1e-5, resamples: 100, seed });
  return {
    seed,
    accountedEpsilon: 6,
    nominalEpsilon: 6,
    estimate,
    separateVariances: { epsilon: estimate.epsilon, interval: estimate.interval },
    verdict: "consistent",
    cosines: { inserted, held },
    testAccuracy: null,
  };
}

Deno.test("audit figure: every cosine in one shared bin; the fits integrate to the sample sizes", () => {
  const r = run(1, 1.3);
  const fig = canaryFigure(r, "LoRA · strict", 25);
  const [held, inserted, heldFit, insertedFit] = fig.data;
  const sum = (ys: unknown[] | undefined) => (ys as number[]).reduce((a, b) => a + b, 0);
  assert.equal(sum(held.y), 300);
  assert.equal(sum(inserted.y), 200);
  assert.deepEqual(held.x, inserted.x, "shared bins");
  const xs = held.x as number[];
  const width = xs[1] - xs[0];
  const all = [...r.cosines.inserted, ...r.cosines.held];
  assert.ok(Math.abs(xs[0] - width / 2 - Math.min(...all)) < 1e-9);
  assert.ok(Math.abs(xs.at(-1)! + width / 2 - Math.max(...all)) < 1e-9);
  // Trapezoid area of a fitted curve over the data range ≈ n·(mass inside the range) — with a
  // shift of 1.3 pooled stds and ±3-std data, nearly all of each Gaussian lies within it.
  const area = (t: typeof heldFit) => {
    const x = t.x as number[], y = t.y as number[];
    let a = 0;
    for (let i = 1; i < x.length; i++) a += (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2;
    return a / width;
  };
  assert.ok(Math.abs(area(heldFit) / 300 - 1) < 0.05, `held fit area ${area(heldFit)}`);
  assert.ok(Math.abs(area(insertedFit) / 200 - 1) < 0.05, `inserted ${area(insertedFit)}`);
  // The curves peak at the fitted means.
  const peak = (t: typeof heldFit) => {
    const y = t.y as number[];
    return (t.x as number[])[y.indexOf(Math.max(...y))];
  };
  assert.ok(Math.abs(peak(heldFit) - r.estimate.held.mean) < 2 * width);
  assert.ok(Math.abs(peak(insertedFit) - r.estimate.inserted.mean) < 2 * width);
  assert.match(
    (fig.layout.title as { text: string }).text,
    /^LoRA · strict, seed 1: empirical ε \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\], accounted 6\.00$/,
  );
});

Deno.test("audit table: a row per run and one for all seeds, with the verdict", () => {
  const runs = [run(1, 1.3), run(2, 1.3)];
  const audit: ConfigAudit = {
    method: "LoRA",
    space: "factor",
    canaries: 200,
    delta: 1e-5,
    runs,
    combined: {
      epsilon: 6.1,
      interval: [5.6, 6.6],
      mu: 1.3,
      muStdErr: 0.05,
      runs: 2,
      delta: 1e-5,
      accountedEpsilon: 6,
      verdict: "consistent",
    },
  };
  const t = auditTable([{ label: "LoRA · strict", audit }]);
  assert.equal(t.rows.length, 3);
  assert.deepEqual(t.rows[2], [
    "LoRA · strict",
    "factor",
    200,
    "all 2",
    "6.000",
    "6.100",
    "[5.600, 6.600]",
    "consistent",
  ]);
  assert.equal(t.rows[0][5], runs[0].estimate.epsilon.toFixed(3));
  assert.equal(t.columns.length, t.rows[0].length);
});

Deno.test("audit in words: the verdict's meaning, and a nominal ε the estimate exceeds", () => {
  const audit = (r: AuditedRun, accounted: number, nominal: number): ConfigAudit => ({
    method: "LoRA",
    space: "factor",
    canaries: 200,
    delta: 1e-5,
    runs: [{ ...r, accountedEpsilon: accounted, nominalEpsilon: nominal }],
    combined: null,
  });
  const r = run(3, 1.3); // μ ≈ 1.3: ε ≈ 6 at δ = 1e-5
  const lo = r.estimate.interval[0], hi = r.estimate.interval[1];
  const text = describeAudits([
    { label: "within", audit: audit(r, (lo + hi) / 2, (lo + hi) / 2) },
    { label: "below", audit: audit(r, hi + 1, hi + 1) },
    { label: "paper", audit: audit({ ...r, verdict: "consistent" }, hi + 20, lo - 1) },
    { label: "leak", audit: audit({ ...r, verdict: "above" }, lo - 1, lo - 1) },
  ]).split("\n");
  assert.equal(text.length, 5);
  assert.match(
    text[1],
    /^- within \(200 canaries in factor space, seed 3\): empirical ε [\d.]+ .*the accounted ε lies within the interval\.$/,
  );
  assert.match(text[2], /below the accounted ε: this attack does not reach it\.$/);
  assert.match(text[3], /does not reach it; and above the nominal ε [\d.]+: the nominal figure/);
  assert.match(text[4], /ABOVE the accounted ε/);
});
