/**
 * A seeded pseudo-random generator for everything the toolkit draws (splits, shuffles, LoRA
 * initialisation, DP noise), so that a run is reproducible from its seed alone.
 *
 * The core is xoshiro128** (Blackman & Vigna) seeded through splitmix32; on top of it: uniform,
 * integers, standard normal (Marsaglia polar method, one cached value), gamma (Marsaglia–Tsang
 * 2000, with the α < 1 boost), Dirichlet (normalised gammas) and Fisher–Yates shuffles.
 *
 * @example
 * ```ts
 * const rng = createRng(10);
 * rng.uniform();            // in [0, 1)
 * rng.dirichlet([0.1, 0.1]); // sums to 1
 * ```
 * @module
 */

/** A seeded random source. Every method advances the same stream. */
export interface Rng {
  /** Uniform in [0, 1): 32 bits of resolution from {@link createRng}, 53 from a secure stream. */
  uniform(): number;
  /** Uniform integer in [0, n). */
  int(n: number): number;
  /** Standard normal N(0, 1). */
  normal(): number;
  /** Gamma(shape, 1). */
  gamma(shape: number): number;
  /** One draw of Dirichlet(alphas). */
  dirichlet(alphas: number[]): number[];
  /** Shuffles `items` in place (Fisher–Yates) and returns it. */
  shuffle<T>(items: T[]): T[];
  /** Fills `out` with i.i.d. N(0, std²) values and returns it. */
  fillNormal(out: Float32Array | Float64Array, std?: number): Float32Array | Float64Array;
  /** An independent generator derived from this one's stream and `label`. */
  fork(label: number): Rng;
  /** The generator's full state, to resume a stream exactly. */
  state(): number[];
}

function splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/**
 * A generator seeded by an integer (any 53-bit safe integer; both halves are mixed in), or
 * restored from `state()`.
 */
export function createRng(seed: number | number[]): Rng {
  let s0: number, s1: number, s2: number, s3: number;
  let spare: number | null = null;
  if (Array.isArray(seed)) {
    if (seed.length !== 5) throw new Error(`rng state has ${seed.length} numbers; expected 5`);
    [s0, s1, s2, s3] = seed.map((x) => x >>> 0);
    spare = Number.isNaN(seed[4]) ? null : seed[4];
  } else {
    if (!Number.isSafeInteger(seed)) throw new Error(`rng seed ${seed} must be a safe integer`);
    const hi = Math.floor(seed / 2 ** 32);
    const sm = splitmix32((seed >>> 0) ^ Math.imul(hi, 0x27d4eb2d));
    s0 = sm();
    s1 = sm();
    s2 = sm();
    s3 = sm();
    if ((s0 | s1 | s2 | s3) === 0) s0 = 1;
  }

  function next(): number {
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 11);
    return result;
  }

  return onUniform({
    uniform: () => next() / 4294967296,
    fork: (label) => createRng(((next() * 2 ** 21) ^ (label >>> 0)) + (next() >>> 11)),
    state: (spare) => [s0 >>> 0, s1 >>> 0, s2 >>> 0, s3 >>> 0, spare === null ? NaN : spare],
  }, spare);
}

/** A uniform source for {@link onUniform}: the generator's core. */
export interface UniformSource {
  /** Uniform in [0, 1). */
  uniform(): number;
  /** An independent generator derived from the source's stream and `label`. */
  fork(label: number): Rng;
  /** The source's state with the normal draw `spare` cached beside it (see {@link Rng.state}). */
  state(spare: number | null): number[];
}

/**
 * The {@link Rng} distributions (integers, normal, gamma, Dirichlet, shuffles) drawn from the
 * uniforms of `source`: the one transform of every generator of the toolkit, whatever its
 * uniform source — {@link createRng}'s xoshiro128** or a site's secret AES-CTR keystream
 * (`lib/privacy/secure_rng.ts`). `spare` is a cached normal draw to resume with (null: none).
 */
export function onUniform(source: UniformSource, spare: number | null = null): Rng {
  const rng: Rng = {
    uniform: () => source.uniform(),
    int(n) {
      if (!(n >= 1) || !Number.isInteger(n)) {
        throw new Error(`rng.int(${n}): n must be an integer ≥ 1`);
      }
      return Math.floor(rng.uniform() * n);
    },
    normal() {
      if (spare !== null) {
        const v = spare;
        spare = null;
        return v;
      }
      let u: number, v: number, s: number;
      do {
        u = 2 * rng.uniform() - 1;
        v = 2 * rng.uniform() - 1;
        s = u * u + v * v;
      } while (s >= 1 || s === 0);
      const m = Math.sqrt((-2 * Math.log(s)) / s);
      spare = v * m;
      return u * m;
    },
    gamma(shape) {
      if (!(shape > 0)) throw new Error(`rng.gamma(${shape}): shape must be > 0`);
      if (shape < 1) {
        // Gamma(a) = Gamma(a + 1) · U^(1/a)
        const g = rng.gamma(shape + 1);
        let u = rng.uniform();
        while (u === 0) u = rng.uniform();
        return g * Math.pow(u, 1 / shape);
      }
      const d = shape - 1 / 3;
      const c = 1 / Math.sqrt(9 * d);
      for (;;) {
        let x: number, v: number;
        do {
          x = rng.normal();
          v = 1 + c * x;
        } while (v <= 0);
        v = v * v * v;
        const u = rng.uniform();
        if (u < 1 - 0.0331 * x * x * x * x) return d * v;
        if (u > 0 && Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
      }
    },
    dirichlet(alphas) {
      const g = alphas.map((a) => rng.gamma(a));
      let sum = g.reduce((a, b) => a + b, 0);
      if (sum === 0) {
        // Every gamma underflowed (tiny α): the limit is a point mass on one coordinate.
        g[rng.int(g.length)] = 1;
        sum = 1;
      }
      return g.map((x) => x / sum);
    },
    shuffle(items) {
      for (let i = items.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [items[i], items[j]] = [items[j], items[i]];
      }
      return items;
    },
    fillNormal(out, std = 1) {
      for (let i = 0; i < out.length; i++) out[i] = rng.normal() * std;
      return out;
    },
    fork: (label) => source.fork(label),
    state: () => source.state(spare),
  };
  return rng;
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
