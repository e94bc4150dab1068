/**
 * Rényi-DP accountant for the (sub)sampled Gaussian mechanism, with the semantics of opacus'
 * `RDPAccountant` and `get_noise_multiplier` (docs/privacy.md#rdp-as-opacus).
 *
 * * {@link rdpSampledGaussian}: RDP of one step at each order α. For q = 1 it is the plain
 *   Gaussian mechanism, `α/(2σ²)`; for 0 < q < 1 it is `log(A_α)/(α − 1)` with `A_α` the series of
 *   Mironov, Talwar & Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism"
 *   (2019, §3.3): a finite binomial sum for integer α, two erfc-weighted series for fractional α,
 *   everything summed in log space.
 * * {@link epsilonFromRdp}: the RDP → (ε, δ) conversion of Balle et al. 2020 (Thm. 21), minimised
 *   over the orders.
 * * {@link composeRdp}: heterogeneous composition — per-order RDP adds up over releases.
 * * {@link rdpEpsilon} / {@link noiseMultiplierForBudget}: the public API of
 *   docs/architecture.md#public-api.
 *
 * Everything here is plain float64 arithmetic; nothing depends on tfjs.
 *
 * @example
 * ```ts
 * import { noiseMultiplierForBudget, rdpEpsilon } from "./rdp.ts";
 * const { epsilon } = rdpEpsilon({ noiseMultiplier: 1.1, sampleRate: 0.01, steps: 1000, delta: 1e-5 });
 * const sigma = noiseMultiplierForBudget({
 *   targetEpsilon: 1, targetDelta: 1e-5, sampleRate: 0.01, steps: 1000,
 * });
 * ```
 * @module
 */

/**
 * The RDP orders opacus uses by default (docs/privacy.md#rdp-as-opacus): `1.1, 1.2, …, 10.9` and
 * `12, 13, …, 63` (151 orders). The integral values among the first group (2, 3, …, 10) take the
 * integer series.
 *
 * @example
 * ```ts
 * DEFAULT_ORDERS.length; // 151
 * DEFAULT_ORDERS[0];     // 1.1
 * ```
 */
export const DEFAULT_ORDERS: readonly number[] = Object.freeze([
  ...Array.from({ length: 99 }, (_, i) => 1 + (i + 1) / 10),
  ...Array.from({ length: 52 }, (_, i) => 12 + i),
]);

/** Opacus' `MAX_SIGMA`: the calibration gives up beyond this noise multiplier (docs/privacy.md). */
export const MAX_NOISE_MULTIPLIER = 1e6;

// ---------------------------------------------------------------------------------------------
// Argument checks: every error names the field and the accepted range.

function checkSampleRate(where: string, q: number): void {
  if (!(q >= 0 && q <= 1)) throw new Error(`${where}: sampleRate ${q} must be in [0, 1]`);
}

function checkNoiseMultiplier(where: string, sigma: number): void {
  if (!(sigma >= 0) || Number.isNaN(sigma)) {
    throw new Error(`${where}: noiseMultiplier ${sigma} must be ≥ 0 (0 means no noise)`);
  }
}

function checkOrders(where: string, orders: readonly number[]): void {
  if (orders.length === 0) throw new Error(`${where}: orders is empty; pass e.g. DEFAULT_ORDERS`);
  for (const a of orders) {
    if (!(a > 1)) throw new Error(`${where}: order ${a} in orders must be > 1`);
  }
}

function checkSteps(where: string, steps: number): void {
  if (!(steps >= 0 && Number.isFinite(steps))) {
    throw new Error(`${where}: steps ${steps} must be a finite number ≥ 0`);
  }
}

function checkDelta(where: string, delta: number): void {
  if (!(delta > 0 && delta < 1)) throw new Error(`${where}: delta ${delta} must be in (0, 1)`);
}

// ---------------------------------------------------------------------------------------------
// Log-space arithmetic.

/** log(e^x + e^y), exact for −∞ operands. */
function logAdd(x: number, y: number): number {
  const a = Math.min(x, y), b = Math.max(x, y);
  if (a === -Infinity) return b;
  return Math.log1p(Math.exp(a - b)) + b;
}

/** log(e^x − e^y) for x ≥ y. */
function logSub(x: number, y: number): number {
  if (x < y) {
    throw new Error(
      `rdp: log-space subtraction went negative (${x} < ${y}); the fractional-order series ` +
        `diverged for these (sampleRate, noiseMultiplier) — use integer orders`,
    );
  }
  if (y === -Infinity) return x;
  if (x === y) return -Infinity;
  const m = Math.expm1(x - y);
  // Python's math.expm1 raises OverflowError there, and opacus then returns x.
  if (m === Infinity) return x;
  return Math.log(m) + y;
}

// ---------------------------------------------------------------------------------------------
// log(erfc(x)) to near machine precision, for all real x (no underflow for large x).

const LOG_SQRT_PI = 0.5 * Math.log(Math.PI);
const TWO_OVER_SQRT_PI = 2 / Math.sqrt(Math.PI);

/** erf(x) for |x| < 2 by the all-positive series erf x = 2/√π e^{−x²} Σ 2ⁿ x^{2n+1}/(2n+1)!!. */
function erfSeries(x: number): number {
  const x2 = x * x;
  let term = x, sum = x;
  for (let n = 1; n < 500; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
    if (Math.abs(term) <= 1e-17 * Math.abs(sum)) break;
  }
  return TWO_OVER_SQRT_PI * Math.exp(-x2) * sum;
}

/**
 * log(√π e^{x²} erfc(x)) for x ≥ 2 (≤ 60 terms), via the Laplace continued fraction
 * erfc x = e^{−x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …)))) (modified Lentz).
 */
function logScaledErfcCf(x: number): number {
  const tiny = 1e-300;
  let f = x, c = x, d = 0;
  for (let n = 1; n < 10000; n++) {
    const a = n / 2;
    d = x + a * d;
    if (d === 0) d = tiny;
    c = x + a / c;
    if (c === 0) c = tiny;
    d = 1 / d;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return -Math.log(f);
}

/**
 * log(erfc(x)) for any real x, accurate to about 1e-14 relative where erfc is representable and
 * with no underflow for large x (erfc(40) ≈ 1e−697 still has a finite log).
 *
 * @example
 * ```ts
 * logErfc(0);  // log(1) = 0
 * logErfc(30); // ≈ −903.974
 * ```
 */
export function logErfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x >= 2) return -x * x - LOG_SQRT_PI + logScaledErfcCf(x);
  if (x > -2) return Math.log1p(-erfSeries(x));
  if (x === -Infinity) return Math.LN2;
  // erfc(x) = 2 − erfc(−x) with erfc(−x) < 4.7e−3.
  return Math.log(2 - Math.exp(-x * x - LOG_SQRT_PI + logScaledErfcCf(-x)));
}

// ---------------------------------------------------------------------------------------------
// log A_α of Mironov et al. 2019 §3.3.

/** log C(n, k) for integer 0 ≤ k ≤ n, as a sum of logs (no overflow for large n). */
function logBinomInt(n: number, k: number): number {
  const kk = Math.min(k, n - k);
  let s = 0;
  for (let j = 1; j <= kk; j++) s += Math.log((n - kk + j) / j);
  return s;
}

/**
 * Integer α: A_α = Σ_{i=0}^{α} C(α, i) q^i (1 − q)^{α−i} exp((i² − i)/(2σ²)).
 */
function logAIntegerOrder(q: number, sigma: number, alpha: number): number {
  const logQ = Math.log(q), log1mQ = Math.log1p(-q), twoVar = 2 * sigma * sigma;
  let logA = -Infinity;
  for (let i = 0; i <= alpha; i++) {
    const logCoef = logBinomInt(alpha, i) + i * logQ + (alpha - i) * log1mQ;
    logA = logAdd(logA, logCoef + (i * i - i) / twoVar);
  }
  return logA;
}

/**
 * The most terms {@link logAFractionalOrder} sums before it gives up. opacus has no bound; the
 * series always converges, but near q = 1/2 only polynomially (see there), and it needs up to
 * ≈ 2.8·10⁵ terms (α ≈ 1.08, q = 1/2, any σ ≳ 10⁶; ≈ 1.7·10⁵ at σ = 10⁵ for α = 1.1). The bound
 * leaves a margin of over 30 and guards against a runaway loop (a few seconds per order at most).
 */
const MAX_FRACTIONAL_TERMS = 10_000_000;

/**
 * Fractional α: A_α = A₀ + A₁, the integrals over (−∞, z₀] and [z₀, ∞) with
 * z₀ = σ² log(1/q − 1) + 1/2, each expanded as a binomial series with generalised coefficients
 * C(α, i) (which change sign once i > α + 1) and erfc weights; summed until both terms fall below
 * e^{−30}, as opacus does.
 *
 * The expansion variable is x = q/(1 − q)·e^{(2z − 1)/(2σ²)} (below z₀) or its inverse (above),
 * and the binomial series converges geometrically where |x| < 1 but only like i^{−(α+1)} at
 * |x| = 1, which is z = z₀. For q far from 1/2, or small σ, little of the Gaussian mass lies near
 * z₀ and a few hundred terms suffice; at q = 1/2, z₀ = 1/2 whatever σ, and for large σ
 * (x = e^{(z − z₀)/σ²} within ~1/σ of 1 over nearly all the mass) the terms decay polynomially,
 * so it takes 10⁵ to 3·10⁵ terms, a number that stops growing with σ
 * ({@link MAX_FRACTIONAL_TERMS} bounds it). There A_α − 1 is tiny (≈ α(α − 1)q²/(2σ²)) and the
 * summed value carries float64 rounding of about 1e-13 in log A_α, as opacus' does.
 */
function logAFractionalOrder(q: number, sigma: number, alpha: number): number {
  const logQ = Math.log(q), log1mQ = Math.log1p(-q);
  const twoVar = 2 * sigma * sigma, sqrt2Sigma = Math.SQRT2 * sigma;
  const z0 = sigma * sigma * Math.log(1 / q - 1) + 0.5;
  let logA0 = -Infinity, logA1 = -Infinity;
  // Generalised binomial coefficient C(α, i) tracked as sign · exp(logAbs).
  let logAbsCoef = 0, sign = 1;
  for (let i = 0;; i++) {
    if (i > 0) {
      const factor = (alpha - i + 1) / i;
      if (factor < 0) sign = -sign;
      logAbsCoef += Math.log(Math.abs(factor));
    }
    const j = alpha - i;
    const logT0 = logAbsCoef + i * logQ + j * log1mQ;
    const logT1 = logAbsCoef + j * logQ + i * log1mQ;
    const logE0 = Math.log(0.5) + logErfc((i - z0) / sqrt2Sigma);
    const logE1 = Math.log(0.5) + logErfc((z0 - j) / sqrt2Sigma);
    const logS0 = logT0 + (i * i - i) / twoVar + logE0;
    const logS1 = logT1 + (j * j - j) / twoVar + logE1;
    if (sign > 0) {
      logA0 = logAdd(logA0, logS0);
      logA1 = logAdd(logA1, logS1);
    } else {
      logA0 = logSub(logA0, logS0);
      logA1 = logSub(logA1, logS1);
    }
    if (Math.max(logS0, logS1) < -30) break;
    if (i >= MAX_FRACTIONAL_TERMS || Number.isNaN(logS0) || Number.isNaN(logS1)) {
      throw new Error(
        `rdp: the fractional-order series did not converge (q=${q}, noiseMultiplier=${sigma}, ` +
          `order=${alpha}${
            Number.isNaN(logS0) || Number.isNaN(logS1)
              ? ": a term is not a number"
              : `: ${MAX_FRACTIONAL_TERMS} terms`
          }); use integer orders`,
      );
    }
  }
  return logAdd(logA0, logA1);
}

/** RDP of one sampled Gaussian step at one order (docs/privacy.md#rdp-as-opacus). */
function rdpOneOrder(q: number, sigma: number, alpha: number): number {
  if (q === 0) return 0;
  if (sigma === 0) return Infinity;
  if (sigma === Infinity) return 0; // a release whose sensitivity is 0 reveals nothing
  if (q === 1) return alpha / (2 * sigma * sigma);
  if (alpha === Infinity) return Infinity;
  const logA = Number.isInteger(alpha)
    ? logAIntegerOrder(q, sigma, alpha)
    : logAFractionalOrder(q, sigma, alpha);
  // A_α ≥ 1 for α > 1 (Jensen), so RDP ≥ 0. Where the true value is below float64's resolution
  // of the sum (σ ≳ 10⁵ near q = 1/2), rounding can make log A slightly negative; a negative RDP
  // would lower the composed ε, so it counts as 0 (opacus keeps the negative number).
  return Math.max(0, logA) / (alpha - 1);
}

/**
 * RDP of ONE step of the sampled Gaussian mechanism, at each order (docs/privacy.md#rdp-as-opacus).
 *
 * `q` is the sampling rate (1 = no subsampling, giving α/(2σ²)), `sigma` the noise multiplier
 * (noise std ÷ L2 sensitivity). Returns `Infinity` at every order when `sigma` is 0 and 0 when
 * `q` is 0. Multiply by the step count to compose identical steps.
 *
 * @example
 * ```ts
 * rdpSampledGaussian(1, 2, [2, 4]);           // [0.25, 0.5]
 * rdpSampledGaussian(0.01, 1.1, DEFAULT_ORDERS); // 151 values
 * ```
 */
export function rdpSampledGaussian(
  q: number,
  sigma: number,
  orders: readonly number[] = DEFAULT_ORDERS,
): number[] {
  checkSampleRate("rdpSampledGaussian", q);
  checkNoiseMultiplier("rdpSampledGaussian", sigma);
  checkOrders("rdpSampledGaussian", orders);
  return orders.map((a) => rdpOneOrder(q, sigma, a));
}

/**
 * Converts per-order RDP into (ε, δ)-DP (docs/privacy.md#rdp-as-opacus; Balle et al. 2020,
 * Thm. 21): `ε = min_α [ rdp_α − (log δ + log α)/(α − 1) + log((α − 1)/α) ]`, ignoring orders
 * where the value is not a number. Returns `{ epsilon: Infinity, order: NaN }` when no order gives a
 * number (no privacy), as opacus does.
 *
 * @example
 * ```ts
 * const orders = [2, 8, 32];
 * epsilonFromRdp(rdpSampledGaussian(1, 5, orders), orders, 1e-5); // { epsilon, order }
 * ```
 */
export function epsilonFromRdp(
  rdp: readonly number[],
  orders: readonly number[],
  delta: number,
): { epsilon: number; order: number } {
  checkOrders("epsilonFromRdp", orders);
  checkDelta("epsilonFromRdp", delta);
  if (rdp.length !== orders.length) {
    throw new Error(
      `epsilonFromRdp: rdp has ${rdp.length} values but orders has ${orders.length}; ` +
        `they must be the same length`,
    );
  }
  // Zero divergence at every order: the outputs do not depend on any one record (no release, or
  // releases that include nobody), so ε is exactly 0. The conversion below would instead report
  // its own slack (≈ 0.103 at δ = 1e-5 with the default orders), which opacus also does.
  if (rdp.every((v) => v === 0)) return { epsilon: 0, order: NaN };
  const logDelta = Math.log(delta);
  let best = NaN, bestOrder = NaN;
  for (let k = 0; k < orders.length; k++) {
    const a = orders[k];
    const eps = rdp[k] - (logDelta + Math.log(a)) / (a - 1) + Math.log((a - 1) / a);
    if (Number.isNaN(eps)) continue;
    if (Number.isNaN(best) || eps < best) {
      best = eps;
      bestOrder = a;
    }
  }
  if (Number.isNaN(best)) return { epsilon: Infinity, order: NaN };
  // With a large δ (above ≈ 0.3) the conversion's slack turns negative and, for tiny divergences,
  // so does its minimum; ε ≥ 0 for every mechanism, so the bound is 0 there. opacus returns the
  // negative number; nothing else differs.
  return { epsilon: Math.max(0, best), order: bestOrder };
}

/** One homogeneous block of releases for {@link composeRdp}. */
export interface GaussianReleases {
  /** Noise std ÷ L2 sensitivity of each release. */
  noiseMultiplier: number;
  /** Sampling rate of each release (1 = every record / client takes part). */
  sampleRate: number;
  /** How many such releases (may be non-integer to mirror the reference's step count). */
  count: number;
}

/**
 * Heterogeneous composition: the per-order RDP of a sequence of releases with different
 * (q, σ, count) is the sum of each block's `count · rdp(q, σ)` (docs/privacy.md#rdp-as-opacus; RDP
 * composes additively). Blocks with equal (q, σ) are computed once.
 *
 * @example
 * ```ts
 * const rdp = composeRdp([
 *   { noiseMultiplier: 1.0, sampleRate: 1, count: 10 },
 *   { noiseMultiplier: 3.0, sampleRate: 0.01, count: 4 },
 * ]);
 * const { epsilon } = epsilonFromRdp(rdp, DEFAULT_ORDERS, 1e-5);
 * ```
 */
export function composeRdp(
  releases: readonly GaussianReleases[],
  orders: readonly number[] = DEFAULT_ORDERS,
): number[] {
  checkOrders("composeRdp", orders);
  const total = new Array<number>(orders.length).fill(0);
  const cache = new Map<string, number[]>();
  releases.forEach((r, i) => {
    const where = `composeRdp: releases[${i}]`;
    checkSampleRate(where, r.sampleRate);
    checkNoiseMultiplier(where, r.noiseMultiplier);
    checkSteps(`${where} count`, r.count);
    if (r.count === 0) return;
    const key = `${r.sampleRate}|${r.noiseMultiplier}`;
    let one = cache.get(key);
    if (one === undefined) {
      one = orders.map((a) => rdpOneOrder(r.sampleRate, r.noiseMultiplier, a));
      cache.set(key, one);
    }
    for (let k = 0; k < orders.length; k++) total[k] += r.count * one[k];
  });
  return total;
}

/**
 * ε spent by a list of (possibly different) Gaussian releases at `delta`.
 *
 * @example
 * ```ts
 * epsilonForReleases([{ noiseMultiplier: 2, sampleRate: 1, count: 50 }], 1e-5).epsilon;
 * ```
 */
export function epsilonForReleases(
  releases: readonly GaussianReleases[],
  delta: number,
  orders: readonly number[] = DEFAULT_ORDERS,
): { epsilon: number; order: number } {
  return epsilonFromRdp(composeRdp(releases, orders), orders, delta);
}

/**
 * ε of `steps` identical steps of the sampled Gaussian mechanism at `delta` — opacus'
 * `RDPAccountant` with history `[(noiseMultiplier, sampleRate, steps)]`
 * (docs/privacy.md#rdp-as-opacus). `steps` may be non-integer: the reference passes `T·E·N/b`
 * unrounded, and opacus multiplies the per-step RDP by it as is.
 *
 * @example
 * ```ts
 * rdpEpsilon({ noiseMultiplier: 1.1, sampleRate: 256 / 60000, steps: 14070, delta: 1e-5 });
 * ```
 */
export function rdpEpsilon(
  args: {
    noiseMultiplier: number;
    sampleRate: number;
    steps: number;
    delta: number;
    orders?: readonly number[];
  },
): { epsilon: number; order: number } {
  const { noiseMultiplier, sampleRate, steps, delta, orders = DEFAULT_ORDERS } = args;
  checkNoiseMultiplier("rdpEpsilon", noiseMultiplier);
  checkSampleRate("rdpEpsilon", sampleRate);
  checkSteps("rdpEpsilon", steps);
  checkDelta("rdpEpsilon", delta);
  // No step releases nothing, whatever σ (0 · ∞ would otherwise give NaN for σ = 0).
  if (steps === 0) return epsilonFromRdp(orders.map(() => 0), orders, delta);
  const rdp = rdpSampledGaussian(sampleRate, noiseMultiplier, orders).map((v) => v * steps);
  return epsilonFromRdp(rdp, orders, delta);
}

/**
 * The search of opacus' `get_noise_multiplier`, over any ε(σ) (docs/privacy.md#rdp-as-opacus):
 * σ_low = 0, σ_high = 10; double σ_high and evaluate until ε(σ_high) ≤ target (the first σ
 * evaluated is 20; past {@link MAX_NOISE_MULTIPLIER} it fails); then bisect — σ = (σ_low +
 * σ_high)/2, σ_high ← σ when ε(σ) < target, else σ_low ← σ — until target − ε(σ_high) ≤ tolerance.
 * Returns σ_high, so ε(result) ≤ target always.
 *
 * @example
 * ```ts
 * // ε(σ) = 10/σ: the smallest σ within 0.01 of ε = 1 from below.
 * searchNoiseMultiplier((s) => 10 / s, 1, 0.01); // ≈ 10.0
 * ```
 */
export function searchNoiseMultiplier(
  epsilonOf: (noiseMultiplier: number) => number,
  targetEpsilon: number,
  tolerance = 0.01,
): number {
  if (!(targetEpsilon > 0) || !Number.isFinite(targetEpsilon)) {
    throw new Error(`noiseMultiplierForBudget: targetEpsilon ${targetEpsilon} must be > 0`);
  }
  if (!(tolerance > 0) || !Number.isFinite(tolerance)) {
    throw new Error(`noiseMultiplierForBudget: tolerance ${tolerance} must be a finite number > 0`);
  }
  // float64 resolves ε only to ~1e-16 relative: a finer tolerance can never be met.
  const finest = targetEpsilon * 1e-12;
  if (tolerance < finest) {
    throw new BudgetOutOfReachError(
      targetEpsilon,
      "unresolvable",
      `noiseMultiplierForBudget: tolerance ${tolerance} is finer than ε can be resolved at ` +
        `targetEpsilon ${targetEpsilon}; use a tolerance ≥ ${finest.toPrecision(2)}`,
    );
  }
  let sigmaLow = 0, sigmaHigh = 10, epsHigh = Infinity;
  while (epsHigh > targetEpsilon) {
    sigmaHigh = 2 * sigmaHigh;
    epsHigh = epsilonOf(sigmaHigh);
    if (sigmaHigh > MAX_NOISE_MULTIPLIER) {
      throw new BudgetOutOfReachError(
        targetEpsilon,
        "too-small",
        `noiseMultiplierForBudget: targetEpsilon ${targetEpsilon} is out of reach — even ` +
          `noiseMultiplier ${sigmaHigh} (> ${MAX_NOISE_MULTIPLIER}) gives ε = ${epsHigh}; ` +
          `raise targetEpsilon or targetDelta, or lower steps or sampleRate`,
        { noiseMultiplier: sigmaHigh, epsilon: epsHigh },
      );
    }
  }
  // Bisection. Each step halves [σ_low, σ_high]; when the midpoint is no longer strictly inside
  // (float64 exhausted) ε(σ) jumps by more than the tolerance between adjacent σ, so the target
  // cannot be met: refuse instead of looping forever (e.g. targetEpsilon 1e15).
  while (targetEpsilon - epsHigh > tolerance) {
    const sigma = (sigmaLow + sigmaHigh) / 2;
    if (!(sigma > sigmaLow && sigma < sigmaHigh)) {
      throw new BudgetOutOfReachError(
        targetEpsilon,
        "unresolvable",
        `noiseMultiplierForBudget: targetEpsilon ${targetEpsilon} cannot be met within ` +
          `tolerance ${tolerance}: at noiseMultiplier ${sigmaHigh} ε is ${epsHigh}, and no ` +
          `representable noise multiplier comes closer — the target is degenerate; use a ` +
          `smaller targetEpsilon (or a larger tolerance)`,
      );
    }
    const eps = epsilonOf(sigma);
    if (eps < targetEpsilon) {
      sigmaHigh = sigma;
      epsHigh = eps;
    } else {
      sigmaLow = sigma;
    }
  }
  return sigmaHigh;
}

/**
 * A privacy budget no noise multiplier can meet: `too-small` (even σ = 1e6 spends more, e.g.
 * below the RDP conversion's floor of ≈ 0.1 at δ = 1e-5) or `unresolvable` (so large that ε(σ)
 * cannot be resolved to the tolerance). `targetEpsilon` and `kind` let a caller (a CLI task)
 * restate the problem in its own terms (flags) instead of the library's arguments.
 */
export class BudgetOutOfReachError extends Error {
  constructor(
    readonly targetEpsilon: number,
    readonly kind: "too-small" | "unresolvable",
    message: string,
    /** The largest noise multiplier tried and the ε it still spends (`too-small`). */
    readonly reached?: { noiseMultiplier: number; epsilon: number },
  ) {
    super(message);
    this.name = "BudgetOutOfReachError";
  }
}

/**
 * The noise multiplier that spends at most `targetEpsilon` at `targetDelta` over `steps` steps
 * of the sampled Gaussian mechanism with rate `sampleRate` — exactly opacus'
 * `get_noise_multiplier(..., accountant="rdp", epsilon_tolerance=tolerance)`
 * (docs/privacy.md#rdp-as-opacus).
 *
 * @example
 * ```ts
 * const sigma = noiseMultiplierForBudget({
 *   targetEpsilon: 1, targetDelta: 1e-5, sampleRate: 1, steps: 100,
 * });
 * rdpEpsilon({ noiseMultiplier: sigma, sampleRate: 1, steps: 100, delta: 1e-5 }).epsilon; // ≤ 1
 * ```
 */
export function noiseMultiplierForBudget(
  args: {
    targetEpsilon: number;
    targetDelta: number;
    sampleRate: number;
    steps: number;
    tolerance?: number;
    orders?: readonly number[];
  },
): number {
  const { targetEpsilon, targetDelta, sampleRate, steps, tolerance = 0.01 } = args;
  const orders = args.orders ?? DEFAULT_ORDERS;
  checkSampleRate("noiseMultiplierForBudget", sampleRate);
  checkSteps("noiseMultiplierForBudget", steps);
  checkDelta("noiseMultiplierForBudget (targetDelta)", targetDelta);
  checkOrders("noiseMultiplierForBudget", orders);
  // Degenerate mechanisms: with no step, or a rate at which no record is ever included, any σ
  // (even 0) spends ε = 0, so there is no noise multiplier to calibrate.
  if (steps === 0 || sampleRate === 0) {
    throw new Error(
      `noiseMultiplierForBudget: ${steps === 0 ? "steps 0" : "sampleRate 0"} releases nothing ` +
        `about any record, so every noise multiplier spends ε = 0; there is nothing to ` +
        `calibrate — give steps > 0 and sampleRate > 0`,
    );
  }
  return searchNoiseMultiplier(
    (sigma) =>
      rdpEpsilon({ noiseMultiplier: sigma, sampleRate, steps, delta: targetDelta, orders }).epsilon,
    targetEpsilon,
    tolerance,
  );
}
