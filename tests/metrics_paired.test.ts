/**
 * The statistics of the ablations against textbook values. Reference numbers come from SciPy
 * 1.17.1 (python3, offline): `scipy.stats.t.ppf` / `t.cdf` for the t distribution,
 * `scipy.stats.ttest_rel(x, y)` and its `.confidence_interval(0.95)` for the paired t-test, and
 * `scipy.stats.permutation_test((x, y), lambda x, y, axis: np.mean(x - y, axis=axis),
 * permutation_type="samples", alternative="two-sided", n_resamples=np.inf)` for the exact
 * sign-flip p-value.
 */
import assert from "node:assert/strict";
import { meanInterval, studentTCdf, studentTQuantile } from "../lib/metrics/interval.ts";
import {
  describeComparison,
  formatP,
  pairedComparison,
  pairedTTest,
  seedsCaveat,
  signed,
  signFlipPValue,
} from "../lib/metrics/paired.ts";

const close = (actual: number, expected: number, tol: number, what: string) =>
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual}, expected ${expected}`);

Deno.test("t quantiles are computed, not tabled: they match scipy.stats.t.ppf", () => {
  // [p, df, scipy.stats.t.ppf(p, df)]
  const reference: [number, number, number][] = [
    [0.975, 1, 12.706204736174694],
    [0.975, 2, 4.302652729749462],
    [0.975, 3, 3.1824463052837078],
    [0.975, 4, 2.7764451051977934],
    [0.975, 5, 2.5705818356363146],
    [0.975, 9, 2.262157162798205],
    [0.975, 29, 2.045229642132703],
    [0.995, 2, 9.924843200918287],
    [0.9, 7.5, 1.4052118464159533],
    [0.6, 2, 0.2886751345948128],
  ];
  for (const [p, df, q] of reference) close(studentTQuantile(p, df), q, 1e-8, `t(${p}, ${df})`);
  // The two values the ablations use most: 3 and 5 seeds.
  assert.equal(studentTQuantile(0.975, 2).toFixed(6), "4.302653");
  assert.equal(studentTQuantile(0.975, 4).toFixed(6), "2.776445");
});

Deno.test("the t CDF matches scipy.stats.t.cdf", () => {
  // [t, df, scipy.stats.t.cdf(t, df)]
  const reference: [number, number, number][] = [
    [-2.5, 3, 0.04385332350403278],
    [0.7, 2, 0.7218034876835673],
    [4.0, 4, 0.9919349550499538],
    [12.0, 2, 0.9965635331614208],
    [-1.2, 9.5, 0.1296044101421904],
  ];
  for (const [t, df, p] of reference) close(studentTCdf(t, df), p, 1e-12, `F(${t}; ${df})`);
});

/** x, y and scipy's mean difference, t, p, 95 % interval and exact sign-flip p. */
const CASES = {
  threeSeeds: {
    x: [58.5, 60.1, 57.2],
    y: [55.2, 56.9, 56.0],
    mean: 2.5666666666666678,
    t: 3.752750376980068,
    p: 0.06424034178576586,
    low: -0.37610176457049116,
    high: 5.509435097903827,
    signFlip: 0.25,
  },
  threeSeedsNegative: {
    x: [49.3, 51.0, 47.8],
    y: [58.5, 57.0, 59.9],
    mean: -9.100000000000001,
    t: -5.16567619255367,
    p: 0.03549223468247901,
    low: -16.679673673150646,
    high: -1.520326326849358,
    signFlip: 0.25,
  },
  fiveSeeds: {
    x: [71.2, 69.8, 73.5, 70.1, 72.0],
    y: [68.0, 67.5, 70.2, 68.8, 69.1],
    mean: 2.6,
    t: 7.05023987910631,
    p: 0.002134133519664097,
    low: 1.5760976367758264,
    high: 3.6239023632241736,
    signFlip: 0.0625,
  },
  sixSeeds: {
    x: [61.0, 59.5, 62.3, 60.8, 61.7, 60.2],
    y: [58.1, 57.9, 59.0, 58.8, 58.5, 57.6],
    mean: 2.6,
    t: 9.390096540690008,
    p: 0.00023098192892855618,
    low: 1.8882381194173221,
    high: 3.311761880582678,
    signFlip: 0.03125,
  },
  eightSeedsMixedSigns: {
    x: [50.1, 52.3, 49.8, 51.0, 53.2, 48.7, 50.5, 52.0],
    y: [50.5, 51.0, 50.2, 49.9, 52.0, 49.5, 49.0, 51.8],
    mean: 0.46250000000000036,
    t: 1.4274577232883172,
    p: 0.19649914157503887,
    low: -0.30364438278587835,
    high: 1.228644382785879,
    signFlip: 0.203125,
  },
  aTie: {
    x: [55.0, 56.0, 57.0, 54.0],
    y: [55.0, 55.0, 55.0, 55.0],
    mean: 0.5,
    t: 0.7745966692414834,
    p: 0.4950253460597111,
    low: -1.5542602567605206,
    high: 2.5542602567605206,
    signFlip: 0.75,
  },
};

Deno.test("paired comparison: mean difference, t interval, t-test and sign-flip match scipy", () => {
  for (const [name, r] of Object.entries(CASES)) {
    const c = pairedComparison(r.x, r.y);
    assert.equal(c.n, r.x.length, name);
    close(c.mean, r.mean, 1e-10, `${name} mean`);
    close(c.t, r.t, 1e-9, `${name} t`);
    close(c.tTestP, r.p, 1e-10, `${name} p`);
    close(c.low, r.low, 1e-8, `${name} low`);
    close(c.high, r.high, 1e-8, `${name} high`);
    assert.equal(c.signFlipP, r.signFlip, `${name} sign-flip p`);
    assert.equal(c.signFlipExact, true);
    // Only the non-zero differences can flip sign ("aTie" has one zero).
    assert.equal(c.smallestSignFlipP, 2 / 2 ** c.differences.filter((d) => d !== 0).length);
    // The interval excludes 0 exactly when the t-test rejects at 5 %.
    assert.equal(c.low > 0 || c.high < 0, c.tTestP < 0.05, name);
  }
});

Deno.test("sign-flip: with 3 seeds the p-value is never below 0.25, whatever the data", () => {
  assert.equal(signFlipPValue([3.3, 3.2, 1.2]), 0.25);
  assert.equal(signFlipPValue([100, 100, 100]), 0.25);
  assert.equal(signFlipPValue([1e-9, 2e-9, 3e-9]), 0.25);
  assert.equal(signFlipPValue([1, -1, 0.5]), 1);
  assert.equal(signFlipPValue([0, 0, 0]), 1);
  assert.equal(signFlipPValue([4]), 1, "one pair: both signs are as extreme");
  // Beyond 24 pairs the patterns are sampled with a fixed seed: close to exact, deterministic.
  const many = Array.from({ length: 30 }, (_, i) => Math.sin(i) + 0.3);
  const sampled = signFlipPValue(many);
  assert.equal(sampled, signFlipPValue(many));
  assert.ok(sampled > 0.005 && sampled < 0.03, `sampled p ${sampled}`);
  assert.equal(pairedComparison(many, many.map(() => 0)).signFlipExact, false);
  // Zero differences cannot flip: with [0, 2, 0] the smallest possible p is 1, not 0.25.
  const zeros = pairedComparison([1, 5, 3], [1, 3, 3]);
  assert.equal(zeros.signFlipP, 1);
  assert.equal(zeros.smallestSignFlipP, 1);
  assert.match(
    describeComparison(zeros, "A", "B"),
    /exact sign-flip p = 1, the smallest possible with 3 seeds \(2 of them with no difference\)\)/,
  );
});

Deno.test("paired t-test edge cases: one pair, all zero, a constant non-zero difference", () => {
  assert.ok(Number.isNaN(pairedTTest([2]).p));
  assert.ok(Number.isNaN(pairedTTest([0, 0, 0]).p));
  assert.deepEqual(pairedTTest([1.5, 1.5, 1.5]), { t: Infinity, df: 2, p: 0 });
  assert.throws(() => pairedComparison([1, 2], [1]), /x has 2 values and y 1/);
  assert.throws(() => pairedComparison([], []), /no pairs/);
  assert.throws(() => pairedComparison([1, NaN], [1, 2]), /pair 1 is \(NaN, 2\)/);
});

Deno.test("the sentence says what the numbers support, and no more", () => {
  const c = CASES;
  const say = (k: keyof typeof CASES, x = "DEeR", y = "LoRA") =>
    describeComparison(pairedComparison(c[k].x, c[k].y), x, y);
  assert.equal(
    say("threeSeeds"),
    "DEeR − LoRA = +2.6 points [−0.4, 5.5] over 3 paired seeds (paired t-test p = 0.064; exact " +
      "sign-flip p = 0.25, the smallest possible with 3 seeds): not significant at 5 %.",
  );
  assert.equal(
    say("threeSeedsNegative", "DEeR strict", "DEeR paper"),
    "DEeR strict − DEeR paper = −9.1 points [−16.7, −1.5] over 3 paired seeds (paired t-test " +
      "p = 0.035; exact sign-flip p = 0.25, the smallest possible with 3 seeds): significant at " +
      "5 % by the paired t-test (DEeR paper higher), which assumes normally distributed " +
      "differences; the distribution-free sign-flip test cannot reach 5 % with 3 seeds.",
  );
  assert.equal(
    say("sixSeeds"),
    "DEeR − LoRA = +2.6 points [1.9, 3.3] over 6 paired seeds (paired t-test p < 0.001; exact " +
      "sign-flip p = 0.031): significant at 5 % (DEeR higher).",
  );
  assert.match(
    say("aTie"),
    /p = 0\.75, never below 0\.25 with 4 seeds \(1 of them with no difference\)\): not significant/,
  );
  assert.equal(
    describeComparison(pairedComparison([58], [55]), "DEeR", "LoRA"),
    "DEeR − LoRA = +3.0 points on 1 seed: one seed gives no interval and no test, so this " +
      "difference is not evidence either way (run ≥ 3 seeds).",
  );
  assert.equal(
    describeComparison(pairedComparison([58, 57], [58, 57]), "A", "B"),
    "A and B scored the same on each of the 2 seeds (difference 0 points).",
  );
  assert.match(
    describeComparison(pairedComparison(c.threeSeeds.x, c.threeSeeds.y), "A", "B", {
      unit: "AUC points",
      digits: 2,
      alpha: 0.1,
    }),
    /^A − B = \+2\.57 AUC points \[−0\.38, 5\.51\] .*: significant at 10 % by the paired t-test/,
  );
});

Deno.test("what n seeds can show: the caveat is computed from n", () => {
  assert.equal(
    seedsCaveat(3),
    "With 3 seeds the 95 % interval is the mean ± 4.30 · sd / √3 and the exact sign-flip " +
      'p-value cannot go below 0.25: a paired test rarely reaches significance at 5 %, and "not ' +
      'significant" here means "not shown", not "equal".',
  );
  assert.match(seedsCaveat(5), /± 2\.78 · sd \/ √5 .* cannot go below 0\.0625/);
  assert.match(seedsCaveat(6), /can go down to 0\.0313/);
  assert.match(seedsCaveat(1), /^With 1 seed there is no interval and no test/);
});

Deno.test("formatting: p-values, signed differences", () => {
  assert.deepEqual([0.06424, 0.25, 0.0004, NaN, 1].map(formatP), [
    "0.064",
    "0.25",
    "< 0.001",
    "–",
    "1",
  ]);
  assert.deepEqual([2.14, -0.5, 0.04, -0.04].map((v) => signed(v)), ["+2.1", "−0.5", "0.0", "0.0"]);
  // meanInterval (reused, not duplicated) is the same interval the comparison gives for x − 0.
  const mi = meanInterval([3.3, 3.2, 1.2]);
  const pc = pairedComparison([3.3, 3.2, 1.2], [0, 0, 0]);
  assert.deepEqual([pc.low, pc.high], [mi.low, mi.high]);
});
