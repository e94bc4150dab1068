/**
 * The accountant's searches are bounded and refuse degenerate targets with a message instead of
 * hanging or returning a meaningless σ; zero releases spend exactly ε = 0.
 */
import assert from "node:assert/strict";
import {
  BudgetOutOfReachError,
  epsilonForReleases,
  noiseMultiplierForBudget,
  rdpEpsilon,
  searchNoiseMultiplier,
} from "../lib/privacy/rdp.ts";
import { strictCalibration } from "../lib/privacy/calibration.ts";

const budget = { targetEpsilon: 3, targetDelta: 1e-5, sampleRate: 1, steps: 10 };

Deno.test("σ search: an unreachably large ε target (1e15) is refused at once, not looped on", () => {
  const t0 = performance.now();
  assert.throws(
    () => noiseMultiplierForBudget({ ...budget, targetEpsilon: 1e15 }),
    /tolerance 0\.01 is finer than ε can be resolved at targetEpsilon 1000000000000000/,
  );
  assert.throws(
    () => strictCalibration({ targetEpsilon: 1e15, rounds: 3, releasesPerRound: 2 }),
    /targetEpsilon 1000000000000000/,
  );
  // The bisection itself is bounded: an ε(σ) that jumps across the target is refused once float64
  // can no longer split the interval.
  assert.throws(
    () => searchNoiseMultiplier((s) => (s < 1 ? 10 : 1), 5, 0.01),
    (err: Error) =>
      err instanceof BudgetOutOfReachError && err.targetEpsilon === 5 &&
      /cannot be met within tolerance 0\.01: at noiseMultiplier 1 ε is 1/.test(err.message),
  );
  assert.ok(performance.now() - t0 < 5000, "bounded");
});

Deno.test("σ search at q = 1/2 below the RDP floor ends in the out-of-reach error", () => {
  // The search doubles σ up to 1.31e6; at q = 1/2 the fractional-order series used to give up
  // at σ = 20480 ("did not converge") before the search could say that the target is too small.
  const tooSmall = (err: Error) =>
    err instanceof BudgetOutOfReachError && err.kind === "too-small" &&
    err.reached?.noiseMultiplier === 1310720 && Math.abs(err.reached.epsilon - 0.1029) < 1e-3 &&
    /targetEpsilon 0\.05 is out of reach/.test(err.message);
  assert.throws(
    () =>
      strictCalibration({
        targetEpsilon: 0.05,
        rounds: 2,
        phases: ["AB"],
        sampleRate: 0.5,
        accountant: "rdp",
      }),
    tooSmall,
  );
  assert.throws(
    () => noiseMultiplierForBudget({ ...budget, targetEpsilon: 0.05, sampleRate: 0.5 }),
    tooSmall,
  );
});

Deno.test("σ search: sampleRate 0, steps 0 and a tolerance finer than float64 are refused", () => {
  assert.throws(
    () => noiseMultiplierForBudget({ ...budget, sampleRate: 0 }),
    /sampleRate 0 releases nothing.*nothing to calibrate/,
  );
  assert.throws(
    () => noiseMultiplierForBudget({ ...budget, steps: 0 }),
    /steps 0 releases nothing.*give steps > 0/,
  );
  assert.throws(
    () => noiseMultiplierForBudget({ ...budget, tolerance: 1e-300 }),
    /tolerance 1e-300 is finer than ε can be resolved.*use a tolerance ≥ 3\.0e-12/,
  );
  assert.throws(() => noiseMultiplierForBudget({ ...budget, tolerance: NaN }), /tolerance NaN/);
  // An ordinary target still gives opacus' value (unchanged by the guards).
  const sigma = noiseMultiplierForBudget(budget);
  const eps = rdpEpsilon({ noiseMultiplier: sigma, sampleRate: 1, steps: 10, delta: 1e-5 }).epsilon;
  assert.ok(eps <= 3 && eps > 2.99, `ε ${eps}`);
});

Deno.test("accountant: no release, or releases that include nobody, spend exactly ε = 0", () => {
  const zero = { epsilon: 0, order: NaN };
  assert.deepEqual(rdpEpsilon({ noiseMultiplier: 1, sampleRate: 1, steps: 0, delta: 1e-5 }), zero);
  assert.deepEqual(rdpEpsilon({ noiseMultiplier: 0, sampleRate: 1, steps: 0, delta: 1e-5 }), zero);
  assert.deepEqual(rdpEpsilon({ noiseMultiplier: 1, sampleRate: 0, steps: 9, delta: 1e-5 }), zero);
  assert.deepEqual(epsilonForReleases([], 1e-5), zero);
  assert.deepEqual(
    epsilonForReleases([{ noiseMultiplier: 1, sampleRate: 0.5, count: 0 }], 1e-5),
    zero,
  );
  // One release is more than none.
  assert.ok(rdpEpsilon({ noiseMultiplier: 50, sampleRate: 1, steps: 1, delta: 1e-5 }).epsilon > 0);
});
