/**
 * Confidence intervals of a mean over a few seeds: Student's t interval, mean ± t(1 − a/2, n − 1)
 * · s / √n with s the sample standard deviation (n − 1). With three seeds t(0.975, 2) = 4.303, so
 * the 95 % interval is much wider than mean ± std — which is why a paper table shows both.
 *
 * @example
 * ```ts
 * const ci = meanInterval([80, 82, 84]); // mean 82, sample sd 2
 * [ci.low, ci.high]; // ≈ [77.03, 86.97]
 * ```
 * @module
 */

/** A mean with its confidence interval. */
export interface MeanInterval {
  mean: number;
  /** Interval bounds (NaN with fewer than two values). */
  low: number;
  high: number;
  /** Sample standard deviation (n − 1; NaN with one value). */
  sd: number;
  n: number;
  level: number;
}

/** The `level` (default 0.95) t interval of the mean of `values`. */
export function meanInterval(values: readonly number[], level = 0.95): MeanInterval {
  if (values.length === 0) throw new Error("meanInterval: values is empty");
  if (!(level > 0 && level < 1)) throw new Error(`meanInterval: level ${level} is not in (0, 1)`);
  const n = values.length;
  const mean = values.reduce((a, b) => a + b, 0) / n;
  if (n < 2) return { mean, low: NaN, high: NaN, sd: NaN, n, level };
  const sd = Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1));
  const half = studentTQuantile(1 - (1 - level) / 2, n - 1) * sd / Math.sqrt(n);
  return { mean, low: mean - half, high: mean + half, sd, n, level };
}

/**
 * The p-quantile of Student's t distribution with `df` degrees of freedom (p in (0, 1)), by
 * bisection on the CDF (regularized incomplete beta, continued fraction). For the degrees of
 * freedom of a few seeds the error is below 1e-9 relative; the CDF is computed as 1 − tail, so it
 * loses precision for p very close to 0.5 at very large df (≥ 1e5) and for p within 1e-12 of 1.
 *
 * @example
 * ```ts
 * studentTQuantile(0.975, 2); // 4.3027
 * ```
 */
export function studentTQuantile(p: number, df: number): number {
  if (!(p > 0 && p < 1) || !(df > 0)) throw new Error(`studentTQuantile: p ${p}, df ${df}`);
  if (p === 0.5) return 0;
  if (p < 0.5) return -studentTQuantile(1 - p, df);
  let lo = 0, hi = 1;
  while (studentTCdf(hi, df) < p) hi *= 2;
  for (let i = 0; i < 200 && hi - lo > 1e-12 * Math.max(1, hi); i++) {
    const mid = (lo + hi) / 2;
    if (studentTCdf(mid, df) < p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/** The CDF of Student's t distribution. */
export function studentTCdf(t: number, df: number): number {
  const x = df / (df + t * t);
  const tail = 0.5 * regularizedBeta(x, df / 2, 0.5);
  return t >= 0 ? 1 - tail : tail;
}

/** I_x(a, b), Numerical Recipes' continued fraction (Lentz), with the symmetry for speed. */
function regularizedBeta(x: number, a: number, b: number): number {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const front = Math.exp(
    logGamma(a + b) - logGamma(a) - logGamma(b) + a * Math.log(x) + b * Math.log(1 - x),
  );
  if (x < (a + 1) / (a + b + 2)) return (front * betaFraction(x, a, b)) / a;
  return 1 - (front * betaFraction(1 - x, b, a)) / b;
}

function betaFraction(x: number, a: number, b: number): number {
  const tiny = 1e-300;
  let c = 1, d = 1 - ((a + b) * x) / (a + 1);
  if (Math.abs(d) < tiny) d = tiny;
  d = 1 / d;
  let h = d;
  for (let m = 1; m <= 300; m++) {
    const m2 = 2 * m;
    let aa = (m * (b - m) * x) / ((a + m2 - 1) * (a + m2));
    d = 1 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    h *= d * c;
    aa = (-(a + m) * (a + b + m) * x) / ((a + m2) * (a + m2 + 1));
    d = 1 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < 1e-15) break;
  }
  return h;
}

/** ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; relative error ~1e-15). */
function logGamma(x: number): number {
  const g = [
    0.99999999999980993,
    676.5203681218851,
    -1259.1392167224028,
    771.32342877765313,
    -176.61502916214059,
    12.507343278686905,
    -0.13857109526572012,
    9.9843695780195716e-6,
    1.5056327351493116e-7,
  ];
  if (x < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * x))) - logGamma(1 - x);
  x -= 1;
  let a = g[0];
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += g[i] / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}
