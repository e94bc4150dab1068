/**
 * Privacy-loss-distribution (PLD) accounting of the Gaussian mechanism, with and without Poisson
 * subsampling (docs/privacy.md, "Exact accounting"). Tighter than RDP: for full participation it is
 * exact (T Gaussian releases at noise multiplier σ are one Gaussian with μ = √T/σ), and for a
 * sampling rate q < 1 it composes a discretised PLD by FFT, rounding every privacy loss up
 * ("connect the dots", Doroshenko et al. 2022), so the ε it returns is an upper bound on the true
 * one. The matching lower bound (losses rounded down) is returned beside it, so the
 * discretisation error is stated, not assumed.
 *
 * Adjacency is add/remove of one record (a client, in this toolkit): δ(ε) is the larger of the
 * two directions, as in Google's `dp_accounting`.
 *
 * @example
 * ```ts
 * import { pldEpsilon } from "./pld.ts";
 * pldEpsilon({ noiseMultiplier: 2, sampleRate: 1, steps: 10, delta: 1e-5 }).epsilon; // ≈ 7.5113
 * ```
 * @module
 */
import { logErfc } from "./rdp.ts";

/** Discretisation of the loss axis (dp_accounting's default for its PLD accountant). */
export const DEFAULT_DISCRETIZATION = 1e-4;
/** Probability mass each truncation may move to a worse (or better) loss, per side. */
const TAIL_MASS = 1e-15;

const SQRT2 = Math.SQRT2;

/**
 * P(Z > x) for a standard normal Z, accurate far into both tails.
 *
 * @example
 * ```ts
 * normalSf(0); // 0.5
 * ```
 */
export function normalSf(x: number): number {
  if (x === Infinity) return 0;
  if (x === -Infinity) return 1;
  return Math.exp(logErfc(x / SQRT2) - Math.LN2);
}

/**
 * P(Z ≤ x) for a standard normal Z.
 *
 * @example
 * ```ts
 * normalCdf(1.959963984540054); // ≈ 0.975
 * ```
 */
export function normalCdf(x: number): number {
  return normalSf(-x);
}

/**
 * δ(ε) of a Gaussian mechanism whose privacy loss is N(μ²/2, μ²) — μ = sensitivity/std, or
 * √T/σ for T releases at noise multiplier σ: `Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2)`.
 *
 * @example
 * ```ts
 * gaussianDelta(1, 0); // Φ(½) − Φ(−½) ≈ 0.3829
 * ```
 */
export function gaussianDelta(mu: number, epsilon: number): number {
  if (!(mu >= 0)) throw new Error(`gaussianDelta: mu ${mu} must be ≥ 0`);
  if (mu === 0) return 0;
  if (mu === Infinity) return 1;
  const a = normalCdf(-epsilon / mu + mu / 2);
  // e^ε·Φ(−ε/μ − μ/2) in log space: its two factors over- and underflow separately.
  const b = Math.exp(epsilon + Math.log(normalCdf(-epsilon / mu - mu / 2)));
  return Math.max(0, a - b);
}

/**
 * The smallest ε ≥ 0 with `deltaOf(ε) ≤ delta`, for a non-increasing `deltaOf` (bisection to
 * 1e-12 relative; ∞ when even ε = 1e6 does not bring δ down).
 *
 * @example
 * ```ts
 * smallestEpsilon((e) => Math.exp(-e), 1e-3); // ≈ 6.9078 (= ln 1000)
 * ```
 */
export function smallestEpsilon(deltaOf: (eps: number) => number, delta: number): number {
  const d0 = deltaOf(0);
  if (Number.isNaN(d0)) throw new Error("smallestEpsilon: δ(0) is not a number");
  if (d0 <= delta) return 0;
  let hi = 1;
  while (deltaOf(hi) > delta) {
    hi *= 2;
    if (hi > 1e6) return Infinity;
  }
  let lo = 0;
  for (let i = 0; i < 200 && hi - lo > 1e-12 * hi; i++) {
    const mid = (lo + hi) / 2;
    if (deltaOf(mid) > delta) lo = mid;
    else hi = mid;
  }
  return hi;
}

// ---------------------------------------------------------------------------------------------
// Discretised PLDs.

/** Masses on the grid ℓ_j = (offset + j)·h, plus the mass at +∞ (δ that no ε removes). */
interface DiscretePld {
  h: number;
  offset: number;
  probs: Float64Array;
  infinityMass: number;
}

/** δ(ε) = μ_∞ + Σ_j μ_j·(1 − e^{ε − ℓ_j})₊ of a discrete PLD. */
function deltaOfPld(p: DiscretePld, epsilon: number): number {
  let sum = 0;
  const { probs, h, offset } = p;
  for (let j = probs.length - 1; j >= 0; j--) {
    const loss = (offset + j) * h;
    if (loss <= epsilon) break;
    sum += probs[j] * -Math.expm1(epsilon - loss);
  }
  return Math.min(1, p.infinityMass + sum);
}

/** Which way the removed record goes: it is in the first distribution (remove) or the second. */
type Direction = "remove" | "add";

/**
 * The loss curve of one Poisson-subsampled Gaussian release (sensitivity 1, noise σ, rate q < 1)
 * in one direction: δ(ε), the loss's tail P(L ≥ ε), and the range of losses that carries all but
 * `TAIL_MASS` of the probability.
 *
 * remove: P = (1−q)·N(0,σ²) + q·N(1,σ²), Q = N(0,σ²), L(y) = log(1 − q + q·e^{(2y−1)/(2σ²)}),
 *   increasing in y, from log(1−q) to ∞.
 * add: P = N(0,σ²), Q = the mixture, L(y) = −log(1 − q + q·e^{(2y−1)/(2σ²)}), decreasing in y,
 *   from −∞ to −log(1−q).
 */
function subsampledGaussianCurve(sigma: number, q: number, dir: Direction) {
  const s2 = sigma * sigma;
  // y at which L(y) = ε (NaN where no y reaches ε).
  const threshold = (eps: number) => {
    const e = dir === "remove" ? Math.expm1(eps) + q : Math.expm1(-eps) + q;
    return e > 0 ? s2 * Math.log(e / q) + 0.5 : NaN;
  };
  const lossAt = (y: number) => {
    const v = Math.log1p(q * Math.expm1((2 * y - 1) / (2 * s2)));
    return dir === "remove" ? v : -v;
  };
  const delta = (eps: number): number => {
    const y = threshold(eps);
    if (dir === "remove") {
      if (Number.isNaN(y)) return -Math.expm1(eps); // every loss exceeds ε: 1 − e^ε·E_P[e^{−L}]
      const p = (1 - q) * normalSf(y / sigma) + q * normalSf((y - 1) / sigma);
      return Math.max(0, p - Math.exp(eps) * normalSf(y / sigma));
    }
    if (Number.isNaN(y)) return 0; // no loss exceeds ε
    const p = normalCdf(y / sigma);
    const qm = (1 - q) * normalCdf(y / sigma) + q * normalCdf((y - 1) / sigma);
    return Math.max(0, p - Math.exp(eps) * qm);
  };
  const tail = (eps: number): number => {
    const y = threshold(eps);
    if (dir === "remove") {
      if (Number.isNaN(y)) return 1;
      return (1 - q) * normalSf(y / sigma) + q * normalSf((y - 1) / sigma);
    }
    return Number.isNaN(y) ? 0 : normalCdf(y / sigma);
  };
  // Loss range: z such that a normal tail beyond z·σ is below TAIL_MASS.
  const z = 8.3;
  const lo = dir === "remove" ? Math.log1p(-q) : lossAt(1 + z * sigma);
  const hi = dir === "remove" ? lossAt(1 + z * sigma) : -Math.log1p(-q);
  return { delta, tail, lo, hi };
}

/**
 * One release's PLD on the grid. Pessimistic: masses chosen so that δ(ε) equals the true curve at
 * every grid point and lies above it between them (connect the dots; the true δ is convex in e^ε).
 * Optimistic: each loss rounded down to the grid.
 */
function discretise(
  curve: ReturnType<typeof subsampledGaussianCurve>,
  h: number,
  pessimistic: boolean,
): DiscretePld {
  const i0 = Math.floor(curve.lo / h), i1 = Math.ceil(curve.hi / h);
  const n = i1 - i0 + 1;
  const probs = new Float64Array(n);
  if (pessimistic) {
    const d = new Float64Array(n);
    for (let i = 0; i < n; i++) d[i] = curve.delta((i0 + i) * h);
    // On [ε_i, ε_{i+1}] the discrete δ is A_i − e^ε·B_i; matching δ at both ends fixes A_i, and
    // the mass at ε_{i+1} is A_i − A_{i+1} (A_i = Σ of the masses above ε_i, ∞ included).
    const A = new Float64Array(n);
    for (let i = 0; i < n - 1; i++) {
      const ei = (i0 + i) * h;
      const B = (d[i] - d[i + 1]) / (Math.exp(ei) * Math.expm1(h));
      A[i] = d[i] + Math.exp(ei) * B;
    }
    const infinityMass = d[n - 1];
    A[n - 1] = infinityMass;
    probs[0] = 1 - A[0];
    for (let i = 1; i < n; i++) probs[i] = A[i - 1] - A[i];
    for (let i = 0; i < n; i++) if (probs[i] < 0) probs[i] = 0;
    return { h, offset: i0, probs, infinityMass };
  }
  // Optimistic: P(ε_i ≤ L < ε_{i+1}) at ε_i; mass below the range dropped, above it at the top.
  let prev = curve.tail(i0 * h);
  for (let i = 0; i < n - 1; i++) {
    const next = curve.tail((i0 + i + 1) * h);
    probs[i] = Math.max(0, prev - next);
    prev = next;
  }
  probs[n - 1] = prev;
  return { h, offset: i0, probs, infinityMass: 0 };
}

// ---------------------------------------------------------------------------------------------
// Composition by FFT.

/** In-place iterative radix-2 FFT of (re, im); `inverse` gives the unscaled inverse. */
function fft(re: Float64Array, im: Float64Array, inverse: boolean): void {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const ang = (inverse ? 2 : -2) * Math.PI / len;
    const wr = Math.cos(ang), wi = Math.sin(ang);
    const half = len >> 1;
    for (let i = 0; i < n; i += len) {
      let cr = 1, ci = 0;
      for (let k = 0; k < half; k++) {
        const a = i + k, b = a + half;
        const xr = re[b] * cr - im[b] * ci, xi = re[b] * ci + im[b] * cr;
        re[b] = re[a] - xr;
        im[b] = im[a] - xi;
        re[a] += xr;
        im[a] += xi;
        const t = cr * wr - ci * wi;
        ci = cr * wi + ci * wr;
        cr = t;
      }
    }
  }
}

/** Linear convolution of two non-negative mass vectors (one complex FFT holds both inputs). */
function convolve(a: Float64Array, b: Float64Array): Float64Array {
  const m = a.length + b.length - 1;
  let n = 1;
  while (n < m) n <<= 1;
  const re = new Float64Array(n), im = new Float64Array(n);
  re.set(a);
  im.set(b);
  fft(re, im, false);
  // X = FFT(a + i·b): A_k = (X_k + conj X_{n−k})/2, B_k = (X_k − conj X_{n−k})/(2i).
  const pr = new Float64Array(n), pi = new Float64Array(n);
  for (let k = 0; k < n; k++) {
    const j = (n - k) & (n - 1);
    const ar = (re[k] + re[j]) / 2, ai = (im[k] - im[j]) / 2;
    const br = (im[k] + im[j]) / 2, bi = -(re[k] - re[j]) / 2;
    pr[k] = ar * br - ai * bi;
    pi[k] = ar * bi + ai * br;
  }
  fft(pr, pi, true);
  const out = new Float64Array(m);
  for (let k = 0; k < m; k++) out[k] = Math.max(0, pr[k] / n);
  return out;
}

/**
 * Composition of two PLDs, then truncation of each tail by at most `TAIL_MASS`: pessimistically
 * the top tail goes to +∞ and the bottom tail up to the first kept loss; optimistically the top
 * tail comes down to the last kept loss and the bottom tail is dropped.
 */
function compose(a: DiscretePld, b: DiscretePld, pessimistic: boolean): DiscretePld {
  const probs = convolve(a.probs, b.probs);
  const infinityMass = 1 - (1 - a.infinityMass) * (1 - b.infinityMass);
  let first = 0, low = 0;
  while (first < probs.length - 1 && low + probs[first] <= TAIL_MASS) low += probs[first++];
  let last = probs.length - 1, high = 0;
  while (last > first && high + probs[last] <= TAIL_MASS) high += probs[last--];
  const kept = probs.slice(first, last + 1);
  if (pessimistic) kept[0] += low;
  else kept[kept.length - 1] += high;
  return {
    h: a.h,
    offset: a.offset + b.offset + first,
    probs: kept,
    infinityMass: pessimistic ? infinityMass + high : infinityMass,
  };
}

/** `steps`-fold composition by repeated squaring. */
function selfCompose(p: DiscretePld, steps: number, pessimistic: boolean): DiscretePld {
  let result: DiscretePld | null = null;
  let base = p;
  for (let t = steps; t > 0; t = Math.floor(t / 2)) {
    if (t % 2 === 1) result = result ? compose(result, base, pessimistic) : base;
    if (t > 1) base = compose(base, base, pessimistic);
  }
  return result!;
}

// ---------------------------------------------------------------------------------------------
// Public API.

/** Arguments of {@link pldEpsilon}. */
export interface PldArgs {
  /** σ: noise std ÷ L2 sensitivity of each release. */
  noiseMultiplier: number;
  /** Poisson sampling rate q of each release (1 = every record takes part). */
  sampleRate: number;
  /** Number of releases T (an integer). */
  steps: number;
  delta: number;
  /** Grid spacing of the privacy-loss axis for q < 1 (default 1e-4). */
  discretization?: number;
  /** Skip the optimistic lower bound (`epsilonLower` is then NaN): half the work. */
  upperOnly?: boolean;
}

/** What {@link pldEpsilon} returns. */
export interface PldEpsilon {
  /** An upper bound on the ε the releases spend at `delta` (exact for q = 1). */
  epsilon: number;
  /** A lower bound from the optimistic discretisation (equal to `epsilon` when exact). */
  epsilonLower: number;
  /** `closed-form` (q = 1, exact) or `pld` (discretised, composed by FFT). */
  method: "closed-form" | "pld";
}

function checkArgs(where: string, a: PldArgs): number {
  const h = a.discretization ?? DEFAULT_DISCRETIZATION;
  if (!(a.noiseMultiplier >= 0) || Number.isNaN(a.noiseMultiplier)) {
    throw new Error(`${where}: noiseMultiplier ${a.noiseMultiplier} must be ≥ 0`);
  }
  if (!(a.sampleRate >= 0 && a.sampleRate <= 1)) {
    throw new Error(`${where}: sampleRate ${a.sampleRate} must be in [0, 1]`);
  }
  if (!(Number.isInteger(a.steps) && a.steps >= 0)) {
    throw new Error(`${where}: steps ${a.steps} must be an integer ≥ 0`);
  }
  if (!(a.delta > 0 && a.delta < 1)) {
    throw new Error(`${where}: delta ${a.delta} must be in (0, 1)`);
  }
  if (!(h > 0 && h <= 0.1)) {
    throw new Error(`${where}: discretization ${h} must be in (0, 0.1]`);
  }
  return h;
}

/**
 * ε of `steps` releases of the (Poisson-subsampled) Gaussian mechanism at `delta`, from the
 * privacy loss distribution. Full participation uses the exact closed form; q < 1 the discretised
 * PLD, whose `epsilon` is an upper bound and `epsilonLower` a lower bound on the true value.
 *
 * @example
 * ```ts
 * const r = pldEpsilon({ noiseMultiplier: 1, sampleRate: 0.01, steps: 1000, delta: 1e-5 });
 * r.epsilon;      // ≈ 1.828 (an upper bound)
 * r.epsilonLower; // ≤ r.epsilon
 * ```
 */
export function pldEpsilon(args: PldArgs): PldEpsilon {
  const h = checkArgs("pldEpsilon", args);
  const { noiseMultiplier: sigma, sampleRate: q, steps, delta } = args;
  if (steps === 0 || q === 0) return { epsilon: 0, epsilonLower: 0, method: "closed-form" };
  if (sigma === 0) return { epsilon: Infinity, epsilonLower: Infinity, method: "closed-form" };
  if (q === 1) {
    const mu = Math.sqrt(steps) / sigma;
    const epsilon = smallestEpsilon((e) => gaussianDelta(mu, e), delta);
    return { epsilon, epsilonLower: epsilon, method: "closed-form" };
  }
  const bound = (pessimistic: boolean) =>
    Math.max(
      ...(["remove", "add"] as const).map((dir) => {
        const one = discretise(subsampledGaussianCurve(sigma, q, dir), h, pessimistic);
        const all = selfCompose(one, steps, pessimistic);
        return smallestEpsilon((e) => deltaOfPld(all, e), delta);
      }),
    );
  return {
    epsilon: bound(true),
    epsilonLower: args.upperOnly ? NaN : bound(false),
    method: "pld",
  };
}

/**
 * The loss curve of a Gaussian release without subsampling (sensitivity 1, noise σ):
 * L(y) = (2y − 1)/(2σ²) under P = N(1, σ²); both directions are the same distribution.
 */
function gaussianCurve(sigma: number) {
  const s2 = sigma * sigma;
  const z = 8.3;
  return {
    delta: (eps: number) => gaussianDelta(1 / sigma, eps),
    tail: (eps: number) => normalSf(sigma * eps - 0.5 / sigma),
    lo: (1 - 2 * z * sigma) / (2 * s2),
    hi: (1 + 2 * z * sigma) / (2 * s2),
  };
}

/** One block of identical releases for {@link pldEpsilonForReleases}. */
export interface PldReleases {
  noiseMultiplier: number;
  sampleRate: number;
  /** How many such releases (an integer). */
  count: number;
}

/**
 * ε of a sequence of (possibly different) Gaussian releases at `delta` from their composed PLD:
 * exact by the closed form when every release has full participation (the releases compose to
 * one Gaussian with μ = √(Σ_b count_b/σ_b²)), {@link pldEpsilon} for one block, and otherwise the
 * blocks' discretised PLDs composed by FFT (an upper bound, with the optimistic lower bound).
 *
 * @example
 * ```ts
 * pldEpsilonForReleases([
 *   { noiseMultiplier: 2, sampleRate: 1, count: 6 },
 *   { noiseMultiplier: 2, sampleRate: 1, count: 4 },
 * ], 1e-5).epsilon; // = pldEpsilon({ noiseMultiplier: 2, sampleRate: 1, steps: 10, … })
 * ```
 */
export function pldEpsilonForReleases(
  blocks: readonly PldReleases[],
  delta: number,
  discretization = DEFAULT_DISCRETIZATION,
  options: { upperOnly?: boolean } = {},
): PldEpsilon {
  const live = blocks.filter((b) => b.count > 0 && b.sampleRate > 0);
  for (const [i, b] of live.entries()) {
    checkArgs(`pldEpsilonForReleases: blocks[${i}]`, {
      noiseMultiplier: b.noiseMultiplier,
      sampleRate: b.sampleRate,
      steps: b.count,
      delta,
      discretization,
    });
  }
  if (live.length === 0) return { epsilon: 0, epsilonLower: 0, method: "closed-form" };
  if (live.some((b) => b.noiseMultiplier === 0)) {
    return { epsilon: Infinity, epsilonLower: Infinity, method: "closed-form" };
  }
  const finite = live.filter((b) => Number.isFinite(b.noiseMultiplier));
  if (finite.length === 0) return { epsilon: 0, epsilonLower: 0, method: "closed-form" };
  if (finite.every((b) => b.sampleRate === 1)) {
    const mu = Math.sqrt(finite.reduce((s, b) => s + b.count / b.noiseMultiplier ** 2, 0));
    const epsilon = smallestEpsilon((e) => gaussianDelta(mu, e), delta);
    return { epsilon, epsilonLower: epsilon, method: "closed-form" };
  }
  if (finite.length === 1) {
    const [b] = finite;
    return pldEpsilon({
      noiseMultiplier: b.noiseMultiplier,
      sampleRate: b.sampleRate,
      steps: b.count,
      delta,
      discretization,
      upperOnly: options.upperOnly,
    });
  }
  const bound = (pessimistic: boolean) =>
    Math.max(
      ...(["remove", "add"] as const).map((dir) => {
        let all: DiscretePld | null = null;
        for (const b of finite) {
          const curve = b.sampleRate === 1
            ? gaussianCurve(b.noiseMultiplier)
            : subsampledGaussianCurve(b.noiseMultiplier, b.sampleRate, dir);
          const one = selfCompose(
            discretise(curve, discretization, pessimistic),
            b.count,
            pessimistic,
          );
          all = all ? compose(all, one, pessimistic) : one;
        }
        return smallestEpsilon((e) => deltaOfPld(all!, e), delta);
      }),
    );
  return {
    epsilon: bound(true),
    epsilonLower: options.upperOnly ? NaN : bound(false),
    method: "pld",
  };
}
