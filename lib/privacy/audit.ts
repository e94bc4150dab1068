/**
 * Empirical privacy estimation from canaries, after Andrew et al., "One-shot Empirical Privacy
 * Estimation for Federated Learning" (ICLR 2024); docs/privacy.md, "Auditing a run".
 *
 * Canary clients release a fixed random direction of norm C instead of a real update. Released
 * canaries leave a trace in the final model update: their directions have a larger cosine with it
 * than directions that were drawn the same way but never inserted. The two cosine samples are fit
 * with Gaussians, and the ε at which an attacker who sees the cosine could tell "inserted" from
 * "not inserted" — the ε of that pair of Gaussians — is the estimate. It comes from outside the
 * mechanism, so it checks the accountant: it should not exceed the accounted ε.
 *
 * @example
 * ```ts
 * import { estimateEpsilon } from "./audit.ts";
 * const est = estimateEpsilon({ inserted: [0.9, 1.1, 1.0, 0.95], held: [0.05, -0.1, 0.0, 0.02], delta: 1e-5 });
 * est.epsilon > 0;
 * ```
 * @module
 */
import { createRng, type Rng } from "../rng.ts";
import { normalCdf, smallestEpsilon } from "./pld.ts";

/** A fitted Gaussian: sample mean and (unbiased) standard deviation. */
export interface GaussianFit {
  mean: number;
  std: number;
}

function fit(xs: readonly number[], what: string): GaussianFit {
  if (xs.length < 2) throw new Error(`estimateEpsilon: ${what} needs at least 2 cosines`);
  for (const x of xs) {
    if (!Number.isFinite(x)) throw new Error(`estimateEpsilon: ${what} holds a non-finite cosine`);
  }
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const v = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1);
  if (!(v > 0)) throw new Error(`estimateEpsilon: the ${what} cosines are all equal`);
  return { mean, std: Math.sqrt(v) };
}

/**
 * δ(ε) of telling P = N(m1, s1²) from Q = N(m0, s0²) (the larger over both directions): the
 * hockey-stick divergence sup_S P(S) − e^ε Q(S), attained on S = {x : log p(x)/q(x) > ε}, which
 * for two Gaussians is where a quadratic in x is positive.
 */
export function gaussianPairDelta(q: GaussianFit, p: GaussianFit, epsilon: number): number {
  const one = (a: GaussianFit, b: GaussianFit) => {
    // log a(x)/b(x) − ε = A x² + B x + C.
    const A = 1 / (2 * b.std ** 2) - 1 / (2 * a.std ** 2);
    const B = a.mean / a.std ** 2 - b.mean / b.std ** 2;
    const C = b.mean ** 2 / (2 * b.std ** 2) - a.mean ** 2 / (2 * a.std ** 2) +
      Math.log(b.std / a.std) - epsilon;
    const mass = (g: GaussianFit, lo: number, hi: number) =>
      normalCdf((hi - g.mean) / g.std) - normalCdf((lo - g.mean) / g.std);
    // The set where A x² + B x + C > 0, as a list of intervals.
    let intervals: [number, number][];
    if (A === 0 && B === 0) {
      intervals = C > 0 ? [[-Infinity, Infinity]] : []; // the same distribution: constant loss
    } else if (Math.abs(A) < 1e-12 * Math.abs(B)) {
      const root = -C / B;
      intervals = B > 0 ? [[root, Infinity]] : [[-Infinity, root]];
    } else {
      const disc = B * B - 4 * A * C;
      if (disc <= 0) intervals = A > 0 ? [[-Infinity, Infinity]] : [];
      else {
        const s = Math.sqrt(disc);
        const r1 = (-B - s) / (2 * A), r2 = (-B + s) / (2 * A);
        const [lo, hi] = r1 < r2 ? [r1, r2] : [r2, r1];
        intervals = A > 0 ? [[-Infinity, lo], [hi, Infinity]] : [[lo, hi]];
      }
    }
    let d = 0;
    for (const [lo, hi] of intervals) d += mass(a, lo, hi) - Math.exp(epsilon) * mass(b, lo, hi);
    return Math.max(0, d);
  };
  return Math.max(one(p, q), one(q, p));
}

/**
 * The smallest ε ≥ 0 at which the pair's δ(ε) ≤ `delta`.
 *
 * @example
 * ```ts
 * // Equal variances: the Gaussian mechanism with μ = 1 (ε ≈ 4.3772 at δ = 1e-5).
 * gaussianPairEpsilon({ mean: 0, std: 1 }, { mean: 1, std: 1 }, 1e-5);
 * ```
 */
export function gaussianPairEpsilon(q: GaussianFit, p: GaussianFit, delta: number): number {
  return smallestEpsilon((e) => gaussianPairDelta(q, p, e), delta);
}

/** What {@link estimateEpsilon} returns. */
export interface EpsilonEstimate {
  /** The ε of the two fitted Gaussians at `delta`. */
  epsilon: number;
  /** A bootstrap percentile interval of that estimate (default 95 %). */
  interval: [number, number];
  inserted: GaussianFit;
  held: GaussianFit;
  delta: number;
  /**
   * The separation of the two sets in pooled standard deviations, (mean inserted − mean held)/s:
   * the μ of the Gaussian mechanism the estimate describes (pooled variances).
   */
  mu: number;
  /**
   * Its standard error, √(1/n₁ + 1/n₀ + μ²/(2(n₁ + n₀ − 2))) (the large-sample error of a
   * standardised mean difference).
   */
  muStdErr: number;
}

/**
 * Estimates ε from the cosines of the final update with inserted canary directions and with
 * never-inserted ones, with a bootstrap interval (resampling both sets; seeded).
 *
 * @example
 * ```ts
 * const est = estimateEpsilon({
 *   inserted: [1.2, 0.8, 1.1, 0.9, 1.0], held: [0.1, -0.2, 0.0, 0.15, -0.05], delta: 1e-5,
 * });
 * est.interval[0] <= est.epsilon && est.epsilon <= est.interval[1];
 * ```
 */
export function estimateEpsilon(args: {
  inserted: readonly number[];
  held: readonly number[];
  delta: number;
  /** Bootstrap resamples (default 1000). */
  resamples?: number;
  /** Two-sided interval level (default 0.95). */
  level?: number;
  seed?: number;
  /**
   * `pooled` (default): one variance for both sets — a Gaussian mechanism shifts the mean and
   * leaves the spread, and a pooled fit is far steadier with a few hundred canaries, whereas the
   * ε of two Gaussians of different variance at small δ is dominated by their ratio, which
   * sampling noise alone moves by ±10 % at n = 100. `separate`: each set its own variance.
   */
  variance?: "pooled" | "separate";
}): EpsilonEstimate {
  const { inserted, held, delta, resamples = 1000, level = 0.95, seed = 1 } = args;
  const pooled = (args.variance ?? "pooled") === "pooled";
  if (!(delta > 0 && delta < 1)) {
    throw new Error(`estimateEpsilon: delta ${delta} must be in (0, 1)`);
  }
  if (!(level > 0 && level < 1)) {
    throw new Error(`estimateEpsilon: level ${level} must be in (0, 1)`);
  }
  const fi = fit(inserted, "inserted"), fh = fit(held, "held");
  const pair = (i: GaussianFit, h: GaussianFit) => {
    if (!pooled) return gaussianPairEpsilon(h, i, delta);
    const ni = inserted.length, nh = held.length;
    const std = Math.sqrt(((ni - 1) * i.std ** 2 + (nh - 1) * h.std ** 2) / (ni + nh - 2));
    return gaussianPairEpsilon({ mean: h.mean, std }, { mean: i.mean, std }, delta);
  };
  const epsilon = pair(fi, fh);
  const ni = inserted.length, nh = held.length;
  const pooledStd = Math.sqrt(((ni - 1) * fi.std ** 2 + (nh - 1) * fh.std ** 2) / (ni + nh - 2));
  const mu = (fi.mean - fh.mean) / pooledStd;
  const muStdErr = Math.sqrt(1 / ni + 1 / nh + mu * mu / (2 * (ni + nh - 2)));
  const rng = createRng(seed);
  const draw = (xs: readonly number[]) => Array.from(xs, () => xs[rng.int(xs.length)]);
  const boot: number[] = [];
  for (let b = 0; b < resamples; b++) {
    try {
      boot.push(pair(fit(draw(inserted), "inserted"), fit(draw(held), "held")));
    } catch {
      // A resample of identical values has no spread: skip it.
    }
  }
  boot.sort((a, b) => a - b);
  const at = (p: number) =>
    boot[Math.min(boot.length - 1, Math.max(0, Math.floor(p * boot.length)))];
  return {
    epsilon,
    interval: [at((1 - level) / 2), at(1 - (1 - level) / 2)],
    inserted: fi,
    held: fh,
    delta,
    mu,
    muStdErr,
  };
}

/** ε of the Gaussian mechanism with separation μ (0 for μ ≤ 0). */
function muEpsilon(mu: number, delta: number): number {
  return mu > 0 ? gaussianPairEpsilon({ mean: 0, std: 1 }, { mean: mu, std: 1 }, delta) : 0;
}

/** The standard normal quantile at `p` (bisection on {@link normalCdf}). */
function normalQuantile(p: number): number {
  let lo = -40, hi = 40;
  for (let i = 0; i < 200; i++) {
    const mid = (lo + hi) / 2;
    if (normalCdf(mid) < p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/** What {@link combineEstimates} returns. */
export interface CombinedEstimate {
  /** The ε of the mean separation μ̄ over the runs. */
  epsilon: number;
  /** ε at μ̄ ∓ z·SE, SE = √(Σ SE_i²)/n (normal interval on μ̄, mapped through ε(μ)). */
  interval: [number, number];
  mu: number;
  muStdErr: number;
  runs: number;
  delta: number;
}

/**
 * One estimate from several audited runs of the same mechanism (seeds of one configuration: the
 * same σ, C, rounds and canary count): the mean of their separations μ_i, whose error shrinks as
 * 1/√runs, turned into ε at `delta` with a normal interval. With pooled variances a run's cosines
 * are a Gaussian mechanism of separation μ, so averaging μ over independent runs estimates the
 * common μ without the small-sample bias of averaging the ε's themselves.
 *
 * @example
 * ```ts
 * import { combineEstimates } from "./audit.ts";
 * const one = { mu: 1, muStdErr: 0.1 };
 * combineEstimates([one, one, one, one], 1e-5).epsilon; // ≈ 4.377, the ε of μ = 1
 * ```
 */
export function combineEstimates(
  runs: readonly Pick<EpsilonEstimate, "mu" | "muStdErr">[],
  delta: number,
  level = 0.95,
): CombinedEstimate {
  if (runs.length === 0) throw new Error("combineEstimates: no estimates to combine");
  for (const r of runs) {
    if (!Number.isFinite(r.mu) || !(r.muStdErr > 0)) {
      throw new Error(`combineEstimates: a run has μ ${r.mu} ± ${r.muStdErr}; expected finite`);
    }
  }
  const n = runs.length;
  const mu = runs.reduce((a, r) => a + r.mu, 0) / n;
  const muStdErr = Math.sqrt(runs.reduce((a, r) => a + r.muStdErr ** 2, 0)) / n;
  const z = normalQuantile(1 - (1 - level) / 2);
  return {
    epsilon: muEpsilon(mu, delta),
    interval: [muEpsilon(mu - z * muStdErr, delta), muEpsilon(mu + z * muStdErr, delta)],
    mu,
    muStdErr,
    runs: n,
    delta,
  };
}

/**
 * How an estimate's interval stands to the accounted ε: `consistent` when the interval reaches
 * down to it (an estimate cannot prove a mechanism private, only fail to find a leak), `above`
 * when the whole interval lies above it — the mechanism leaks more than accounted, or a sampling
 * tail (one in 40 for a 95 % interval on one run: rerun with more canaries or seeds).
 */
export function auditVerdict(
  interval: readonly [number, number],
  accounted: number | null,
): "consistent" | "above" | "no accounting" {
  if (accounted === null) return "no accounting";
  return interval[0] <= accounted ? "consistent" : "above";
}

/**
 * `n` directions drawn uniformly on the unit sphere of dimension `dim` from `rng` (normalised
 * Gaussian vectors), generated one at a time so that a large audit never holds them all.
 */
export function* canaryDirections(n: number, dim: number, rng: Rng): Generator<Float64Array> {
  for (let i = 0; i < n; i++) yield unitVector(rng, dim);
}

/** One direction drawn uniformly on the unit sphere of dimension `dim` (a normalised Gaussian). */
export function unitVector(rng: Rng, dim: number): Float64Array {
  const v = new Float64Array(dim);
  let sq = 0;
  for (let j = 0; j < dim; j++) {
    v[j] = rng.normal();
    sq += v[j] * v[j];
  }
  const inv = 1 / Math.sqrt(sq);
  for (let j = 0; j < dim; j++) v[j] *= inv;
  return v;
}

/** cos(update, direction) for a unit `direction`. */
export function cosine(update: ArrayLike<number>, direction: ArrayLike<number>): number {
  let dot = 0, sq = 0;
  for (let j = 0; j < update.length; j++) {
    dot += update[j] * direction[j];
    sq += update[j] * update[j];
  }
  return sq > 0 ? dot / Math.sqrt(sq) : 0;
}
