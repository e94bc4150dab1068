/**
 * Paired comparison of two methods over shared seeds. The engine derives every random stream
 * (split, initialisation, batches, noise) from the seed, so seed s of method X and seed s of
 * method Y start from the same split and the same initial factors: their difference on seed s
 * is free of that seed's luck, and the comparison works on the per-seed differences d_s = x_s −
 * y_s — the mean difference, its Student t interval, the paired t-test, and the exact sign-flip
 * (permutation) test, which assumes nothing about the distribution of d but cannot give a
 * p-value below 2 / 2ⁿ: 0.25 with 3 seeds, 0.125 with 4, 0.0625 with 5. With 3 seeds a paired
 * test rarely reaches significance; {@link describeComparison} says so instead of hiding it.
 *
 * @example
 * ```ts
 * const c = pairedComparison([58.5, 60.1, 57.2], [55.2, 56.9, 56.0]);
 * [c.mean, c.low, c.high, c.tTestP, c.signFlipP]; // ≈ [2.57, −0.38, 5.51, 0.064, 0.25]
 * describeComparison(c, "DEeR", "LoRA");
 * // "DEeR − LoRA = +2.6 points [−0.4, 5.5] over 3 paired seeds (paired t-test p = 0.064; …):
 * //  not significant at 5 %."
 * ```
 * @module
 */
import { meanInterval, studentTCdf, studentTQuantile } from "./interval.ts";
import { createRng } from "../rng.ts";

/** The comparison of two paired samples (x − y per seed). */
export interface PairedComparison {
  /** Number of pairs (seeds both methods ran). */
  n: number;
  /** x_s − y_s, in the order given. */
  differences: number[];
  /** Mean difference and its `level` t interval (NaN bounds with one pair). */
  mean: number;
  low: number;
  high: number;
  level: number;
  /** Sample standard deviation of the differences (n − 1; NaN with one pair). */
  sd: number;
  /** The paired t statistic mean / (sd / √n), with n − 1 degrees of freedom. */
  t: number;
  /**
   * Two-sided p-value of the paired t-test (NaN with one pair or when every difference is 0;
   * 0 when every difference is the same non-zero value).
   */
  tTestP: number;
  /** Two-sided p-value of the exact sign-flip test (1 when every difference is 0). */
  signFlipP: number;
  /** Whether {@link signFlipP} enumerated every sign pattern (n ≤ 24) or sampled 2¹⁷ of them. */
  signFlipExact: boolean;
  /** The smallest p-value the sign-flip test can give here: 2 / 2ᵐ for the m non-zero differences. */
  smallestSignFlipP: number;
}

/**
 * Compares `x` with `y`, paired by position (entry i of both is seed i).
 *
 * @example
 * ```ts
 * pairedComparison([49.3, 51.0, 47.8], [58.5, 57.0, 59.9]).tTestP; // ≈ 0.035
 * ```
 */
export function pairedComparison(
  x: readonly number[],
  y: readonly number[],
  level = 0.95,
): PairedComparison {
  if (x.length !== y.length) {
    throw new Error(
      `pairedComparison: x has ${x.length} values and y ${y.length}; a paired comparison needs ` +
        `one value of each per seed`,
    );
  }
  if (x.length === 0) throw new Error("pairedComparison: no pairs (no seed both runs share)");
  const differences = x.map((v, i) => v - y[i]);
  const bad = differences.findIndex((d) => !Number.isFinite(d));
  if (bad >= 0) {
    throw new Error(
      `pairedComparison: pair ${bad} is (${x[bad]}, ${y[bad]}); every value must be a finite ` +
        `number (leave out a seed whose run failed from both sides)`,
    );
  }
  const { mean, low, high, sd, n } = meanInterval(differences, level);
  const { t, p } = pairedTTest(differences);
  const exact = n <= MAX_EXACT_PAIRS;
  return {
    n,
    differences,
    mean,
    low,
    high,
    level,
    sd,
    t,
    tTestP: p,
    signFlipP: signFlipPValue(differences),
    signFlipExact: exact,
    // A zero difference is the same under either sign: only the non-zero ones can flip.
    smallestSignFlipP: Math.min(1, 2 / 2 ** differences.filter((d) => d !== 0).length),
  };
}

/**
 * The paired (one-sample) t-test of differences against 0: t = mean / (sd / √n), two-sided
 * p = 2 · P(T_{n−1} ≥ |t|).
 *
 * @example
 * ```ts
 * pairedTTest([3.3, 3.2, 1.2]).p; // ≈ 0.064
 * ```
 */
export function pairedTTest(differences: readonly number[]): { t: number; df: number; p: number } {
  const n = differences.length;
  if (n < 2) return { t: NaN, df: n - 1, p: NaN };
  const { mean, sd } = meanInterval(differences);
  const t = mean / (sd / Math.sqrt(n));
  if (Number.isNaN(t)) return { t, df: n - 1, p: NaN }; // every difference is 0
  if (!Number.isFinite(t)) return { t, df: n - 1, p: 0 }; // the same non-zero difference
  return { t, df: n - 1, p: Math.min(1, 2 * studentTCdf(-Math.abs(t), n - 1)) };
}

/** Up to this many pairs every sign pattern is enumerated (2²⁴ ≈ 1.7e7 sums, < 0.1 s). */
const MAX_EXACT_PAIRS = 24;
const SAMPLED_PATTERNS = 1 << 17;

/**
 * The two-sided sign-flip (paired permutation) p-value of the mean difference: the share of the
 * 2ⁿ sign patterns ±d_1 … ±d_n whose |sum| is at least the observed |sum| (scipy's
 * `permutation_test(..., permutation_type="samples")`). Exact up to 24 pairs (Gray-code
 * enumeration); beyond, 2¹⁷ patterns drawn with a fixed seed, (hits + 1) / (draws + 1).
 *
 * @example
 * ```ts
 * signFlipPValue([3.3, 3.2, 1.2]); // 0.25: with 3 pairs it cannot be smaller
 * ```
 */
export function signFlipPValue(differences: readonly number[]): number {
  const n = differences.length;
  if (n === 0) throw new Error("signFlipPValue: no differences");
  const observed = Math.abs(differences.reduce((a, b) => a + b, 0));
  // Sums equal to the observed one up to rounding count as "at least as extreme".
  const scale = differences.reduce((a, b) => a + Math.abs(b), 0);
  const threshold = observed - 1e-9 * Math.max(scale, 1e-300);
  if (n <= MAX_EXACT_PAIRS) {
    // Gray code: pattern k differs from pattern k − 1 in one sign, so each sum is one update.
    let sum = -differences.reduce((a, b) => a + b, 0); // all signs negative
    const positive = new Array<boolean>(n).fill(false);
    let hits = Math.abs(sum) >= threshold ? 1 : 0;
    const total = 2 ** n;
    for (let k = 1; k < total; k++) {
      const i = Math.log2(k & -k); // index of the bit that flips
      positive[i] = !positive[i];
      sum += (positive[i] ? 2 : -2) * differences[i];
      if (Math.abs(sum) >= threshold) hits++;
    }
    return hits / total;
  }
  const rng = createRng(0);
  let hits = 0;
  for (let k = 0; k < SAMPLED_PATTERNS; k++) {
    let sum = 0;
    for (const d of differences) sum += rng.uniform() < 0.5 ? -d : d;
    if (Math.abs(sum) >= threshold) hits++;
  }
  return (hits + 1) / (SAMPLED_PATTERNS + 1);
}

/** Options of {@link describeComparison}. */
export interface DescribeOptions {
  /** Unit of the differences (default "points", i.e. percentage points). */
  unit?: string;
  /** Significance level (default 0.05). */
  alpha?: number;
  /** Decimals of the difference and its interval (default 1). */
  digits?: number;
}

/**
 * One honest sentence about a comparison: the difference, its interval, both p-values and
 * whether the difference is significant at `alpha` — by the paired t-test, whose verdict agrees
 * with the interval (it excludes 0 exactly when p < alpha); when the distribution-free
 * sign-flip test cannot reach `alpha` with this few seeds, the sentence says so.
 *
 * @example
 * ```ts
 * describeComparison(pairedComparison([49.3, 51.0, 47.8], [58.5, 57.0, 59.9]), "strict", "paper");
 * // "strict − paper = −9.1 points [−16.7, −1.5] over 3 paired seeds (paired t-test p = 0.035;
 * //  exact sign-flip p = 0.25, the smallest possible with 3 seeds): significant at 5 % by the
 * //  paired t-test (paper higher), which assumes normally distributed differences; the
 * //  distribution-free sign-flip test cannot reach 5 % with 3 seeds."
 * ```
 */
export function describeComparison(
  c: PairedComparison,
  x: string,
  y: string,
  opts: DescribeOptions = {},
): string {
  const unit = opts.unit ?? "points";
  const alpha = opts.alpha ?? 0.05;
  const digits = opts.digits ?? 1;
  const level = `${formatPercent(alpha)} %`;
  const head = `${x} − ${y} = ${signed(c.mean, digits)} ${unit}`;
  if (c.n === 1) {
    return `${head} on 1 seed: one seed gives no interval and no test, so this difference ` +
      `is not evidence either way (run ≥ 3 seeds).`;
  }
  if (c.differences.every((d) => d === 0)) {
    return `${x} and ${y} scored the same on each of the ${c.n} seeds (difference 0 ${unit}).`;
  }
  const zeros = c.differences.filter((d) => d === 0).length;
  const seeds = `${c.n} seeds${zeros > 0 ? ` (${zeros} of them with no difference)` : ""}`;
  const floor = c.smallestSignFlipP <= alpha
    ? ""
    : c.signFlipP <= c.smallestSignFlipP
    ? `, the smallest possible with ${seeds}`
    : `, never below ${c.smallestSignFlipP} with ${seeds}`;
  const signFlip = `exact sign-flip ${pEquals(c.signFlipP)}` +
    (c.signFlipExact ? "" : " (sampled)") + floor;
  const body = `${head} [${plain(c.low, digits)}, ${plain(c.high, digits)}] over ${c.n} ` +
    `paired seeds (paired t-test ${pEquals(c.tTestP)}; ${signFlip})`;
  if (!(c.tTestP < alpha)) return `${body}: not significant at ${level}.`;
  const higher = c.mean > 0 ? x : y;
  if (c.signFlipP < alpha) return `${body}: significant at ${level} (${higher} higher).`;
  const why = c.smallestSignFlipP > alpha
    ? `the distribution-free sign-flip test cannot reach ${level} with ${c.n} seeds`
    : `the distribution-free sign-flip test does not confirm it`;
  return `${body}: significant at ${level} by the paired t-test (${higher} higher), which ` +
    `assumes normally distributed differences; ${why}.`;
}

/**
 * What n seeds can show, in one sentence: the t quantile that sets the interval's width and the
 * smallest sign-flip p-value.
 *
 * @example
 * ```ts
 * seedsCaveat(3);
 * // "With 3 seeds the 95 % interval is the mean ± 4.30 · sd / √3 and the exact sign-flip
 * //  p-value cannot go below 0.25: a paired test rarely reaches significance at 5 %, and
 * //  "not significant" here means "not shown", not "equal"."
 * ```
 */
export function seedsCaveat(n: number, level = 0.95): string {
  if (n < 2) {
    return `With 1 seed there is no interval and no test: differences between methods are ` +
      `not evidence either way (the full-size run uses ≥ 3 seeds).`;
  }
  const alpha = 1 - level;
  const t = studentTQuantile(1 - alpha / 2, n - 1);
  const smallest = 2 / 2 ** n;
  const rare = smallest > alpha
    ? `cannot go below ${smallest}: a paired test rarely reaches significance at ` +
      `${formatPercent(alpha)} %`
    : `can go down to ${Number(smallest.toPrecision(3))}`;
  return `With ${n} seeds the ${formatPercent(level)} % interval is the mean ± ` +
    `${t.toFixed(2)} · sd / √${n} and the exact sign-flip p-value ${rare}, and "not ` +
    `significant" here means "not shown", not "equal".`;
}

/** A p-value for text: two significant digits, "< 0.001" below that. */
export function formatP(p: number): string {
  if (Number.isNaN(p)) return "–";
  if (p < 0.001) return "< 0.001";
  return String(Number(p.toPrecision(2)));
}

/** "p = 0.064" or "p < 0.001". */
function pEquals(p: number): string {
  const s = formatP(p);
  return s.startsWith("<") ? `p ${s}` : `p = ${s}`;
}

/** "+2.1", "−0.5", "0.0": a difference with its sign (Unicode minus). */
export function signed(v: number, digits = 1): string {
  const s = v.toFixed(digits);
  if (Number(s) === 0) return (0).toFixed(digits);
  return v > 0 ? `+${s}` : `−${s.slice(1)}`;
}

/** "−0.5", "4.7": a bound, minus sign only when negative. */
function plain(v: number, digits: number): string {
  const s = v.toFixed(digits);
  if (Number(s) === 0) return (0).toFixed(digits);
  return v < 0 ? `−${s.slice(1)}` : s;
}

function formatPercent(fraction: number): string {
  return String(Number((100 * fraction).toPrecision(3)));
}
