/**
 * The one-shot canary estimator on a plain Gaussian mechanism whose ε is known exactly.
 */
import assert from "node:assert/strict";
import {
  auditVerdict,
  canaryDirections,
  combineEstimates,
  cosine,
  estimateEpsilon,
  gaussianPairEpsilon,
} from "../lib/privacy/audit.ts";
import { pldEpsilon } from "../lib/privacy/pld.ts";
import { createRng } from "../lib/rng.ts";

Deno.test("audit: two equal-variance Gaussians one std apart are the μ = 1 Gaussian mechanism", () => {
  const exact = pldEpsilon({ noiseMultiplier: 1, sampleRate: 1, steps: 1, delta: 1e-5 }).epsilon;
  const got = gaussianPairEpsilon({ mean: 0, std: 2 }, { mean: 2, std: 2 }, 1e-5);
  assert.ok(Math.abs(got - exact) < 1e-8, `${got} vs ${exact}`);
  // Unequal variances are at least as distinguishable as the smaller one alone suggests.
  assert.ok(gaussianPairEpsilon({ mean: 0, std: 1 }, { mean: 1, std: 1.5 }, 1e-5) > exact);
  assert.equal(gaussianPairEpsilon({ mean: 0, std: 1 }, { mean: 0, std: 1 }, 1e-5), 0);
});

Deno.test("audit: canaries in one Gaussian release give an interval around the mechanism's ε", () => {
  // Release Σ_i C·c_i + N(0, (σC)² I) of n canaries in dimension d. The cosine of a canary with
  // the release is shifted by C over a spread of √(σ² + (n−1)/d)·C (the other canaries' overlap),
  // so the mechanism each canary faces is a Gaussian with multiplier σ_eff = √(σ² + (n−1)/d).
  const n = 400, d = 40_000, sigma = 1.5, C = 1;
  const rng = createRng(42);
  const release = new Float64Array(d);
  for (const c of canaryDirections(n, d, createRng(7))) {
    for (let j = 0; j < d; j++) release[j] += C * c[j];
  }
  for (let j = 0; j < d; j++) release[j] += sigma * C * rng.normal();
  const inserted = [...canaryDirections(n, d, createRng(7))].map((c) => cosine(release, c));
  const held = [...canaryDirections(n, d, createRng(8))].map((c) => cosine(release, c));
  const est = estimateEpsilon({ inserted, held, delta: 1e-5, resamples: 300 });
  const sigmaEff = Math.sqrt(sigma ** 2 + (n - 1) / d);
  const truth = pldEpsilon({ noiseMultiplier: sigmaEff, sampleRate: 1, steps: 1, delta: 1e-5 })
    .epsilon;
  assert.ok(
    est.interval[0] <= truth && truth <= est.interval[1],
    `true ε ${truth} outside [${est.interval}] (estimate ${est.epsilon})`,
  );
  assert.ok(Math.abs(est.epsilon - truth) < 0.3 * truth, `${est.epsilon} vs ${truth}`);
  assert.ok(est.interval[0] <= est.epsilon && est.epsilon <= est.interval[1]);
});

Deno.test("audit: μ and its error; estimates of several runs combine by their mean μ", () => {
  // Two sets of n values each: inserted = held + 1 exactly, so the pooled std equals each set's
  // std and μ = 1/std.
  const held = [-1.5, -0.5, 0.5, 1.5];
  const inserted = held.map((x) => x + 1);
  const est = estimateEpsilon({ inserted, held, delta: 1e-5, resamples: 50 });
  const sd = Math.sqrt((2 * 1.5 ** 2 + 2 * 0.5 ** 2) / 3);
  assert.ok(Math.abs(est.mu - 1 / sd) < 1e-12, `μ ${est.mu}`);
  assert.ok(Math.abs(est.muStdErr - Math.sqrt(0.5 + est.mu ** 2 / 12)) < 1e-12);
  // Four runs at μ = 1 ± 0.2: the mean μ is 1, its error 0.1, and ε is the μ = 1 mechanism's.
  const exact = pldEpsilon({ noiseMultiplier: 1, sampleRate: 1, steps: 1, delta: 1e-5 }).epsilon;
  const all = combineEstimates(Array(4).fill({ mu: 1, muStdErr: 0.2 }), 1e-5);
  assert.ok(Math.abs(all.epsilon - exact) < 1e-8, `${all.epsilon} vs ${exact}`);
  assert.ok(Math.abs(all.muStdErr - 0.1) < 1e-12);
  const lo = gaussianPairEpsilon(
    { mean: 0, std: 1 },
    { mean: 1 - 1.959963984540054 * 0.1, std: 1 },
    1e-5,
  );
  assert.ok(Math.abs(all.interval[0] - lo) < 1e-6, `${all.interval[0]} vs ${lo}`);
  assert.equal(combineEstimates([{ mu: -0.1, muStdErr: 0.05 }], 1e-5).epsilon, 0);
  assert.throws(() => combineEstimates([], 1e-5), /no estimates/);
  assert.equal(auditVerdict([4, 6], 5), "consistent");
  assert.equal(auditVerdict([5.5, 6], 5), "above");
  assert.equal(auditVerdict([5.5, 6], null), "no accounting");
});

Deno.test("audit: bad inputs are refused with the field", () => {
  assert.throws(
    () => estimateEpsilon({ inserted: [1], held: [0, 1], delta: 1e-5 }),
    /inserted needs at least 2 cosines/,
  );
  assert.throws(
    () => estimateEpsilon({ inserted: [1, NaN], held: [0, 1], delta: 1e-5 }),
    /inserted holds a non-finite cosine/,
  );
  assert.throws(
    () => estimateEpsilon({ inserted: [1, 2], held: [0, 1], delta: 2 }),
    /delta 2 must be in \(0, 1\)/,
  );
});
