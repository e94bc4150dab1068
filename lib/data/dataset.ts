/**
 * The in-memory dataset every part of the toolkit uses: three splits of uint8 samples with int32
 * labels. Pixels stay uint8 until a batch is formed (`makeBatch` in `batches.ts`), so a 224-px
 * dataset costs one byte per value, not four.
 *
 * Sample layout: `[H, W, C]` for 2D images, `[D, H, W, C]` for 3D volumes (C = 1), samples
 * back to back in `images`.
 *
 * @example
 * ```ts
 * import { loadMedMnist } from "./medmnist.ts";
 * // BloodMNIST: loadMedMnist("datasets/MedMNIST/bloodmnist.npz", { imageSize: 224 }), 11959 train images.
 * const ds = await loadMedMnist("data/default/fashion6.npz", {
 *   classNames: ["T-shirt/top", "Pullover", "Coat", "Shirt", "Sneaker", "Ankle boot"],
 * });
 * splitLength(ds.train);                      // 2400
 * classCounts(ds.train, ds.classNames.length); // [400, 400, 400, 400, 400, 400]
 * ```
 * @module
 */
import datasetsJson from "./datasets.json" with { type: "json" };

/** One split: `images` holds `labels.length` samples of shape `sampleShape`, back to back. */
export interface ImageSplit {
  images: Uint8Array;
  /** `[H, W, C]` for 2D, `[D, H, W, C]` for 3D. */
  sampleShape: number[];
  labels: Int32Array;
}

/** A classification dataset with its train/val/test splits. */
export interface ImageDataset {
  name: string;
  /** Class names in label order. */
  classNames: string[];
  train: ImageSplit;
  val: ImageSplit;
  test: ImageSplit;
  /** Where it was loaded from (a file or folder path). */
  source: string;
}

/** The split names, in the order the toolkit reports them. */
export const SPLITS = ["train", "val", "test"] as const;
/** One of {@link SPLITS}. */
export type SplitName = typeof SPLITS[number];

/** What `datasets.json` records for one MedMNIST dataset. */
export interface MedMnistInfo {
  task: string;
  dims: 2 | 3;
  channels: 1 | 3;
  license: string;
  classNames: string[];
  samples: Record<SplitName, number>;
  samplesV3?: Record<SplitName, number>;
  /** Keyed by `"28"` (v2 file), `"28-v3"`, `"64"`, `"128"`, `"224"`. */
  files: Record<string, { url: string; md5: string }>;
}

/** What `datasets.json` records for an image-folder dataset (Kvasir-v2, OCT-C8). */
export interface ImageFolderInfo {
  classNames: string[];
  /** A text description per label, for prompts ("this is an image of {description}"). */
  descriptions: string[];
  /** The reference code's prompt texts, kept to reproduce it (OCT: DR and MH swapped). */
  referenceDescriptions: string[];
  samples?: Record<SplitName, number>;
}

/** The known datasets, as data (`lib/data/datasets.json`). */
export const KNOWN_DATASETS = datasetsJson as unknown as {
  medmnist: Record<string, MedMnistInfo>;
  imageFolders: Record<string, ImageFolderInfo>;
};

/**
 * Number of samples in a split.
 *
 * @example
 * ```ts
 * splitLength({ images: new Uint8Array(12), sampleShape: [2, 2, 3], labels: new Int32Array([0]) }); // 1
 * ```
 */
export function splitLength(split: ImageSplit): number {
  return split.labels.length;
}

/**
 * Values per sample (product of `sampleShape`).
 *
 * @example
 * ```ts
 * sampleSize({ images: new Uint8Array(0), sampleShape: [28, 28, 3], labels: new Int32Array(0) }); // 2352
 * ```
 */
export function sampleSize(split: ImageSplit): number {
  return split.sampleShape.reduce((a, b) => a * b, 1);
}

/**
 * How many samples of each class a split (or a subset of it, by index) holds.
 *
 * @example
 * ```ts
 * import { loadMedMnist } from "./medmnist.ts";
 * const ds = await loadMedMnist("data/default/fashion6.npz", {
 *   classNames: ["T-shirt/top", "Pullover", "Coat", "Shirt", "Sneaker", "Ankle boot"],
 * });
 * import { dirichletPartition } from "./partition.ts";
 * const clients = dirichletPartition(Array.from(ds.train.labels), 12, 0.1, 10);
 * classCounts(ds.train, 6);             // [400, 400, 400, 400, 400, 400]
 * classCounts(ds.train, 6, clients[0]); // one client's share
 * ```
 */
export function classCounts(split: ImageSplit, numClasses: number, indices?: number[]): number[] {
  const counts = new Array(numClasses).fill(0);
  const n = indices ? indices.length : split.labels.length;
  for (let i = 0; i < n; i++) counts[split.labels[indices ? indices[i] : i]]++;
  return counts;
}

/**
 * Checks that a split is consistent (image bytes match the shape and label count, labels lie in
 * `[0, numClasses)`); throws an error naming `where` otherwise.
 *
 * @example
 * ```ts
 * import { loadMedMnist } from "./medmnist.ts";
 * const ds = await loadMedMnist("data/default/fashion6.npz", {
 *   classNames: ["T-shirt/top", "Pullover", "Coat", "Shirt", "Sneaker", "Ankle boot"],
 * });
 * validateSplit(ds.train, ds.classNames.length, "fashion6.npz train"); // throws naming the field if not
 * ```
 */
export function validateSplit(split: ImageSplit, numClasses: number, where: string): void {
  const per = sampleSize(split);
  if (split.sampleShape.length !== 3 && split.sampleShape.length !== 4) {
    throw new Error(`${where}: sampleShape [${split.sampleShape}] must be [H,W,C] or [D,H,W,C]`);
  }
  if (split.images.length !== per * split.labels.length) {
    throw new Error(
      `${where}: ${split.images.length} image bytes for ${split.labels.length} samples of ` +
        `[${split.sampleShape}] (expected ${per * split.labels.length})`,
    );
  }
  for (let i = 0; i < split.labels.length; i++) {
    const y = split.labels[i];
    if (y < 0 || y >= numClasses) {
      throw new Error(`${where}: label ${y} of sample ${i} is outside 0..${numClasses - 1}`);
    }
  }
}
