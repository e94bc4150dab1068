/**
 * Splitting a training set among federated clients (docs/protocol.md#data-split).
 *
 * `dirichletPartition` is the reference's label-skew split (`build_non_iid_by_dirichlet` in the
 * DEeR code), step for step and in the same order of random draws:
 * 1. for each class c = 0..C−1, shuffle the indices of class c;
 * 2. for each class c, draw column c of a K×C matrix P from Dirichlet(α·1_K);
 * 3. client i < K−1 takes the next `round(P[i][c] · n_c)` items of the shuffled class-c list
 *    (consecutive slices); the last client takes what remains;
 * 4. shuffle each client's list.
 * `round` is half-to-even, as numpy's. When the rounded counts of the first clients add up to more
 * than n_c, the slices are clamped at n_c — later clients get fewer (possibly zero) items and
 * nothing is taken twice; this is what the reference's Python slicing does too.
 * The random numbers come from `createRng(seed)` (not numpy's generator): the algorithm is the
 * reference's, the exact split for a given seed is not.
 *
 * @example
 * ```ts
 * const labels = Array.from({ length: 120 }, (_, i) => i % 6); // 6 classes
 * const clients = dirichletPartition(labels, 12, 0.1, 10); // 12 lists of training indices
 * clients.flat().length; // 120: every image goes to exactly one client
 * ```
 * @module
 */
import { createRng } from "../rng.ts";

/** Python/numpy `round`: half to even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function checkClients(numClients: number, fn: string): void {
  if (!Number.isInteger(numClients) || numClients < 1) {
    throw new Error(`${fn}: numClients must be an integer ≥ 1, got ${numClients}`);
  }
}

function checkSeed(seed: number, fn: string): void {
  if (!Number.isSafeInteger(seed)) throw new Error(`${fn}: seed must be an integer, got ${seed}`);
}

/**
 * The most classes labels may imply when the caller does not say how many the data set has: far
 * more than any classification data set this toolkit trains on, and small enough that the
 * per-class lists and Dirichlet draws cost nothing.
 */
export const MAX_IMPLIED_CLASSES = 65536;

/** Options of {@link dirichletPartition} and {@link partitionCounts}. */
export interface PartitionOptions {
  /**
   * The data set's number of classes: every label must be below it. Without it, labels must be
   * below {@link MAX_IMPLIED_CLASSES}.
   */
  numClasses?: number;
}

/**
 * Checks that every label is a class index and returns the number of classes they imply
 * (largest label + 1) — before anything of that size is allocated.
 */
function checkLabels(labels: ArrayLike<number>, fn: string, options: PartitionOptions): number {
  const { numClasses } = options;
  if (numClasses !== undefined && !(Number.isSafeInteger(numClasses) && numClasses >= 1)) {
    throw new Error(`${fn}: numClasses must be an integer ≥ 1, got ${numClasses}`);
  }
  const limit = numClasses ?? MAX_IMPLIED_CLASSES;
  let implied = 0;
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (!Number.isInteger(y) || y < 0) {
      throw new Error(`${fn}: labels[${i}] = ${y}; labels must be integers ≥ 0`);
    }
    if (y >= limit) {
      throw new Error(
        numClasses !== undefined
          ? `${fn}: labels[${i}] = ${y}, but the data set has ${numClasses} classes ` +
            `(labels 0..${numClasses - 1}); the labels are corrupt or belong to another data set`
          : `${fn}: labels[${i}] = ${y} would make ${y + 1} classes; labels must be class ` +
            `indices below ${MAX_IMPLIED_CLASSES} (the labels are corrupt; pass numClasses to ` +
            `check them against the data set's classes)`,
      );
    }
    if (y + 1 > implied) implied = y + 1;
  }
  return implied;
}

/**
 * Label-skewed split of `labels.length` samples among `numClients` clients, Dirichlet(α)
 * proportions per class (see the module doc for the exact algorithm). Returns each client's
 * sample indices; every index appears exactly once. Labels are checked first: integers ≥ 0 and
 * below `options.numClasses` (or {@link MAX_IMPLIED_CLASSES}); the classes are 0..(largest label).
 *
 * @example
 * ```ts
 * const parts = dirichletPartition([0, 0, 1, 1, 2, 2], 2, 0.5, 1);
 * parts.flat().sort(); // [0, 1, 2, 3, 4, 5]
 * ```
 */
export function dirichletPartition(
  labels: ArrayLike<number>,
  numClients: number,
  alpha: number,
  seed: number,
  options: PartitionOptions = {},
): number[][] {
  const fn = "dirichletPartition";
  checkClients(numClients, fn);
  if (!(alpha > 0) || !Number.isFinite(alpha)) {
    throw new Error(`${fn}: alpha must be a finite number > 0, got ${alpha}`);
  }
  checkSeed(seed, fn);
  const numClasses = checkLabels(labels, fn, options);
  const rng = createRng(seed);
  const byClass: number[][] = Array.from({ length: numClasses }, () => []);
  for (let i = 0; i < labels.length; i++) byClass[labels[i]].push(i);
  for (const list of byClass) rng.shuffle(list);
  const alphas = new Array(numClients).fill(alpha);
  const proportions = byClass.map(() => rng.dirichlet(alphas)); // [class][client]

  const clients: number[][] = Array.from({ length: numClients }, () => []);
  for (let c = 0; c < numClasses; c++) {
    const list = byClass[c];
    const n = list.length;
    let start = 0;
    for (let k = 0; k < numClients; k++) {
      // Clamp at n: once earlier clients' rounded counts used the class up, the rest get nothing.
      const end = k === numClients - 1
        ? n
        : Math.min(n, start + roundHalfEven(proportions[c][k] * n));
      for (let j = start; j < end; j++) clients[k].push(list[j]);
      start = Math.max(start, end);
    }
  }
  for (const list of clients) rng.shuffle(list);
  return clients;
}

/**
 * Equal random split (`--iid 1`): the indices `0..n−1` are shuffled and cut into `numClients`
 * consecutive parts whose sizes differ by at most one (the first `n mod K` clients get one more).
 *
 * @example
 * ```ts
 * iidPartition(10, 3, 1).map((p) => p.length); // [4, 3, 3]
 * ```
 */
export function iidPartition(n: number, numClients: number, seed: number): number[][] {
  const fn = "iidPartition";
  checkClients(numClients, fn);
  checkSeed(seed, fn);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${fn}: n must be an integer ≥ 0, got ${n}`);
  const order = createRng(seed).shuffle(Array.from({ length: n }, (_, i) => i));
  const base = Math.floor(n / numClients);
  const extra = n % numClients;
  const out: number[][] = [];
  let start = 0;
  for (let k = 0; k < numClients; k++) {
    const size = base + (k < extra ? 1 : 0);
    out.push(order.slice(start, start + size));
    start += size;
  }
  return out;
}

/**
 * A K×C table: how many samples of each class each client holds (for logs and plots); C is the
 * largest label + 1, or `options.numClasses`. Labels are checked as by {@link dirichletPartition}.
 *
 * @example
 * ```ts
 * partitionCounts([0, 1, 1], [[0], [1, 2]]); // [[1, 0], [0, 2]]
 * ```
 */
export function partitionCounts(
  labels: ArrayLike<number>,
  parts: number[][],
  options: PartitionOptions = {},
): number[][] {
  const implied = checkLabels(labels, "partitionCounts", options);
  const numClasses = options.numClasses ?? implied;
  return parts.map((p) => {
    const row = new Array(numClasses).fill(0);
    for (const i of p) row[labels[i]]++;
    return row;
  });
}
