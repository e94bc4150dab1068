/**
 * Mini-batches: seeded index batches over a client's samples, and the conversion of one batch
 * from uint8 to a normalised float32 tensor — the only place pixels become floats.
 *
 * `makeBatch` builds the float32 buffer in JavaScript through a 256-entry lookup table per
 * channel and makes one `tf.tensor` for x and one for y. The table reproduces torchvision's
 * `ToTensor` + `Normalize` in float32: `((v / 255) − mean) / std`, each step rounded to float32.
 *
 * @example
 * ```ts
 * import { loadMedMnist } from "./medmnist.ts";
 * import { tf } from "../backend.ts";
 * const ds = await loadMedMnist("data/default/fashion6.npz", {
 *   classNames: ["T-shirt/top", "Pullover", "Coat", "Shirt", "Sneaker", "Ankle boot"],
 * });
 * import { dirichletPartition } from "./partition.ts";
 * import { createRng } from "../rng.ts";
 * const clients = dirichletPartition(Array.from(ds.train.labels), 12, 0.1, 10);
 * const rng = createRng(10);
 * for (const idx of batchIndices(clients[0], 10, { rng })) {
 *   const { x, y } = makeBatch(ds.train, idx);
 *   // ... train step ...
 *   tf.dispose([x, y]);
 * }
 * ```
 * @module
 */
import { tf } from "../backend.ts";
import type { Rng } from "../rng.ts";
import { createRng } from "../rng.ts";
import type { ImageSplit } from "./dataset.ts";
import { CLIP_MEAN, CLIP_STD } from "./image.ts";

/** Options of {@link batchIndices}. */
export interface BatchOptions {
  /** Shuffle before batching (default true). */
  shuffle?: boolean;
  /** The random source for the shuffle (advanced by it; use one per client and epoch stream). */
  rng?: Rng;
  /** Or a seed, when no `rng` is given (default 0). */
  seed?: number;
  /** Drop a last, smaller batch (default false, as PyTorch's DataLoader). */
  dropLast?: boolean;
}

/**
 * Yields the indices of each batch, in order; the last batch may be smaller (`dropLast` false).
 * The input array is not modified.
 *
 * @example
 * ```ts
 * [...batchIndices([5, 6, 7, 8, 9], 2, { shuffle: false })]; // [[5, 6], [7, 8], [9]]
 * ```
 */
export function* batchIndices(
  indices: ArrayLike<number>,
  batchSize: number,
  options: BatchOptions = {},
): Generator<number[]> {
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new Error(`batchIndices: batchSize must be an integer ≥ 1, got ${batchSize}`);
  }
  const order = Array.from(indices);
  if (options.shuffle ?? true) (options.rng ?? createRng(options.seed ?? 0)).shuffle(order);
  const n = options.dropLast ? order.length - (order.length % batchSize) : order.length;
  for (let i = 0; i < n; i += batchSize) yield order.slice(i, Math.min(n, i + batchSize));
}

/**
 * Number of batches {@link batchIndices} yields.
 *
 * @example
 * ```ts
 * numBatches(25, 10); // 3
 * ```
 */
export function numBatches(n: number, batchSize: number, dropLast = false): number {
  return dropLast ? Math.floor(n / batchSize) : Math.ceil(n / batchSize);
}

/** Per-channel normalisation; defaults to CLIP's (3 channels). */
export interface Normalization {
  mean: readonly number[];
  std: readonly number[];
}

/**
 * The float32 value of every uint8 level per channel: `lut[c * 256 + v]`.
 *
 * @example
 * ```ts
 * normalizationTable({ mean: [0.5], std: [0.5] })[255]; // 1
 * ```
 */
export function normalizationTable(norm: Normalization): Float32Array {
  const { mean, std } = norm;
  if (mean.length !== std.length || mean.length === 0) {
    throw new Error(`normalisation: mean (${mean.length}) and std (${std.length}) lengths differ`);
  }
  const f = Math.fround;
  const lut = new Float32Array(mean.length * 256);
  for (let c = 0; c < mean.length; c++) {
    if (!(std[c] > 0)) throw new Error(`normalisation: std[${c}] = ${std[c]} must be > 0`);
    const m = f(mean[c]);
    const s = f(std[c]);
    for (let v = 0; v < 256; v++) lut[c * 256 + v] = f(f(f(v / 255) - m) / s);
  }
  return lut;
}

/**
 * Gathers `indices` of a split into `x` (float32 `[n, ...sampleShape]`, `(v/255 − mean)/std`
 * per channel) and `y` (int32 `[n]`). The caller owns both tensors. `norm` defaults to CLIP's
 * mean/std for 3-channel samples and is required otherwise (one value per channel).
 *
 * @example
 * ```ts
 * import { loadMedMnist } from "./medmnist.ts";
 * import { tf } from "../backend.ts";
 * const ds = await loadMedMnist("data/default/fashion6.npz", {
 *   classNames: ["T-shirt/top", "Pullover", "Coat", "Shirt", "Sneaker", "Ankle boot"],
 * });
 * const { x, y } = makeBatch(ds.train, [0, 1, 2]);
 * x.shape; // [3, 28, 28, 3]: normalised with CLIP's mean and std
 * tf.dispose([x, y]);
 * ```
 */
export function makeBatch(
  split: ImageSplit,
  indices: ArrayLike<number>,
  norm?: Normalization,
): { x: tf.Tensor; y: tf.Tensor1D } {
  const shape = split.sampleShape;
  const C = shape[shape.length - 1];
  if (norm === undefined) {
    if (C !== 3) {
      throw new Error(
        `makeBatch: samples have ${C} channel(s); pass { mean, std } with ${C} value(s) ` +
          `(CLIP's defaults are for 3 channels)`,
      );
    }
    norm = { mean: CLIP_MEAN, std: CLIP_STD };
  }
  if (norm.mean.length !== C) {
    throw new Error(
      `makeBatch: samples have ${C} channel(s) but mean/std have ${norm.mean.length}`,
    );
  }
  const lut = normalizationTable(norm);
  const per = shape.reduce((a, b) => a * b, 1);
  const n = indices.length;
  const total = split.labels.length;
  const x = new Float32Array(n * per);
  const y = new Int32Array(n);
  const src = split.images;
  for (let b = 0; b < n; b++) {
    const i = indices[b];
    if (!(Number.isInteger(i) && i >= 0 && i < total)) {
      throw new Error(`makeBatch: index ${i} is outside the split (0..${total - 1})`);
    }
    y[b] = split.labels[i];
    const s = i * per;
    const d = b * per;
    if (C === 1) {
      for (let j = 0; j < per; j++) x[d + j] = lut[src[s + j]];
    } else if (C === 3) {
      for (let j = 0; j < per; j += 3) {
        x[d + j] = lut[src[s + j]];
        x[d + j + 1] = lut[256 + src[s + j + 1]];
        x[d + j + 2] = lut[512 + src[s + j + 2]];
      }
    } else {
      for (let j = 0; j < per; j++) x[d + j] = lut[(j % C) * 256 + src[s + j]];
    }
  }
  return { x: tf.tensor(x, [n, ...shape], "float32"), y: tf.tensor1d(y, "int32") };
}
