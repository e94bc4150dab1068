/**
 * MedMNIST `.npz` files (v2 and v3, any size) as an {@link ImageDataset}
 * (docs/data.md#medmnist-npz).
 *
 * Keys `train_images, train_labels, val_images, val_labels, test_images, test_labels`; 2D images
 * `[N, H, W]` (grey) or `[N, H, W, 3]` (RGB) uint8, 3D volumes `[N, D, H, W]`; labels `[N, 1]`
 * (or `[N]`) of an integer dtype. Class names come from `datasets.json` when the file's name is
 * a known MedMNIST dataset (`bloodmnist.npz`, `bloodmnist_224.npz`), else from the options, else
 * `"0"…"C-1"` with C = largest label + 1. Multi-label sets (ChestMNIST) are refused.
 *
 * 2D images can be resized once at load time to `imageSize` (Pillow-exact bicubic + centre crop,
 * the CLIP preprocessing) and are returned with 3 channels (grey replicated) unless
 * `channels: 1`. 3D volumes keep `[D, H, W, 1]`.
 *
 * Limits: images must hold at least one pixel (a `[N, 0, 0]` array is refused), and the bytes the
 * resized splits need (N × imageSize² × channels, the three splits together) are checked before
 * anything is allocated against the npz reader's `maxBytes` (16 GiB by default; the `limits`
 * option or `DEER_NPZ_MAX_BYTES`, see lib/data/limits.ts), since a tiny file of 1 × 1 images can
 * ask for any amount of memory once resized.
 *
 * @example
 * ```ts
 * // BloodMNIST (`deno task data bloodmnist`): class names come from the file name.
 * // const blood = await loadMedMnist("datasets/MedMNIST/bloodmnist.npz", { imageSize: 224 });
 * const ds = await loadMedMnist("data/default/fashion6.npz", {
 *   imageSize: 56, // resized once at load time (bicubic + centre crop)
 *   classNames: ["T-shirt/top", "Pullover", "Coat", "Shirt", "Sneaker", "Ankle boot"],
 * });
 * ds.train.sampleShape; // [56, 56, 3]
 * ds.classNames[0];     // "T-shirt/top"
 * ```
 * @module
 */
import { basename } from "node:path";
import { formatBytes, type NpzLimits, npzLimits } from "./limits.ts";
import { listNpz, type NpyArray, readNpz } from "./npy.ts";
import {
  type ImageDataset,
  type ImageSplit,
  KNOWN_DATASETS,
  type MedMnistInfo,
  SPLITS,
} from "./dataset.ts";
import { clipPreprocess, type Image8, toChannels } from "./image.ts";

/** Options of {@link loadMedMnist}. */
export interface MedMnistOptions {
  /** Dataset name (default: from the file name, `bloodmnist_224.npz` → `bloodmnist`). */
  name?: string;
  /** Class names in label order (default: `datasets.json`, else `"0"…`). */
  classNames?: string[];
  /** Number of classes when the name is unknown and no class names are given. */
  numClasses?: number;
  /** 2D only: resize each image once to `imageSize × imageSize` (CLIP preprocessing). */
  imageSize?: number;
  /**
   * When the file turns out to hold 3D volumes: return them as stored instead of refusing an
   * `imageSize` (the caller resamples volumes itself, e.g. lib/data/volume.ts).
   */
  volumesAsStored?: boolean;
  /** 2D only: 3 (default; grey replicated to RGB) or 1 (RGB converted to grey as Pillow's "L"). */
  channels?: 1 | 3;
  /** Print a progress line to stderr every this many resized images (0 = quiet, default). */
  progressEvery?: number;
  /**
   * Size limits of the npz reader (`maxBytes`, `maxRatio`; see lib/data/limits.ts). `maxBytes`
   * (default 16 GiB, else `DEER_NPZ_MAX_BYTES`) also bounds the bytes of the resized images of
   * the three splits together (N × imageSize² × channels).
   */
  limits?: Partial<NpzLimits>;
}

/**
 * The `datasets.json` record of a MedMNIST dataset, or `undefined` for an unknown name.
 *
 * @example
 * ```ts
 * medmnistInfo("bloodmnist")?.classNames.length; // 8
 * ```
 */
export function medmnistInfo(name: string): MedMnistInfo | undefined {
  return KNOWN_DATASETS.medmnist[name];
}

/**
 * The dataset name a MedMNIST file name implies.
 *
 * @example
 * ```ts
 * medmnistNameFromPath("data/organmnist3d_64.npz"); // "organmnist3d"
 * ```
 */
export function medmnistNameFromPath(path: string): string {
  return basename(path).replace(/\.npz$/i, "").replace(/_(28|64|128|224)$/, "");
}

/**
 * The file name MedMNIST publishes for a dataset at a size (`bloodmnist.npz` for 28 px,
 * `bloodmnist_224.npz` otherwise).
 *
 * @example
 * ```ts
 * medmnistFileName("bloodmnist", 64); // "bloodmnist_64.npz"
 * ```
 */
export function medmnistFileName(name: string, size = 28): string {
  return size === 28 ? `${name}.npz` : `${name}_${size}.npz`;
}

interface Layout {
  dims: 2 | 3;
  /** Per-sample shape as stored, with an explicit channel axis. */
  shape: number[];
}

function imageLayout(a: NpyArray, where: string, hint?: 2 | 3): Layout {
  const s = a.shape;
  const bad = () =>
    new Error(
      `${where} has shape [${s}]; expected [N,H,W] or [N,H,W,3] (2D) or [N,D,H,W] (3D)`,
    );
  const layout = shapeLayout(s, hint);
  if (layout === undefined) throw bad();
  if (layout.shape.some((d) => d < 1)) {
    throw new Error(
      `${where} has shape [${s}]: samples of [${layout.shape}] hold no pixels; every image needs ` +
        `at least 1 × 1 pixels (the file is corrupt or not a MedMNIST file)`,
    );
  }
  return layout;
}

function shapeLayout(s: number[], hint?: 2 | 3): Layout | undefined {
  if (s.length === 3) return { dims: 2, shape: [s[1], s[2], 1] };
  if (s.length === 4) {
    if (hint !== 3 && (s[3] === 3 || s[3] === 1)) return { dims: 2, shape: [s[1], s[2], s[3]] };
    if (hint !== 2) return { dims: 3, shape: [s[1], s[2], s[3], 1] };
    return undefined;
  }
  if (s.length === 5 && s[4] === 1 && hint !== 2) {
    return { dims: 3, shape: [s[1], s[2], s[3], 1] };
  }
  return undefined;
}

function readLabels(a: NpyArray, n: number, where: string): Int32Array {
  const s = a.shape;
  if (!(s.length === 1 || (s.length === 2 && s[1] === 1))) {
    const multi = s.length === 2 && s[1] > 1
      ? ` (${s[1]} columns: a multi-label set, which the toolkit does not support)`
      : "";
    throw new Error(
      `labels in ${where} have shape [${s.length === 2 ? `N,${s[1]}` : s}]; expected [N,1]${multi}`,
    );
  }
  if (s[0] !== n) {
    throw new Error(
      `labels in ${where} count ${s[0]} rows but the images count ${n}; give every image one label`,
    );
  }
  const d = a.data;
  if (d instanceof Float32Array || d instanceof Float64Array) {
    throw new Error(
      `labels in ${where} have dtype ${a.dtype}; expected an integer dtype (e.g. uint8)`,
    );
  }
  if (d instanceof Int32Array) return d;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const v = d[i];
    // Checked before the Int32 conversion, which would wrap 4294967295 (<u4) to -1.
    if (v > 0x7fffffff || v < -0x80000000) {
      throw new Error(
        `labels in ${where} hold ${v} at row ${i}; expected class indices 0..C-1 (the file is ` +
          `corrupt, or its labels are not class indices)`,
      );
    }
    out[i] = Number(v);
  }
  return out;
}

/**
 * Loads a MedMNIST `.npz` (see the module doc for layouts, options and errors).
 *
 * @example
 * ```ts
 * import { writeNpz } from "./npy.ts";
 * // A small OrganMNIST3D-shaped file: volumes [N, 28, 28, 28] uint8, labels [N, 1].
 * const path = `${await Deno.makeTempDir()}/organmnist3d.npz`;
 * const split = (n: number) => ({
 *   images: { shape: [n, 28, 28, 28], data: new Uint8Array(n * 28 ** 3) },
 *   labels: { shape: [n, 1], data: new Uint8Array(n).map((_, i) => i % 11) },
 * });
 * const [tr, va, te] = [split(11), split(11), split(11)];
 * await writeNpz(path, {
 *   train_images: tr.images, train_labels: tr.labels,
 *   val_images: va.images, val_labels: va.labels,
 *   test_images: te.images, test_labels: te.labels,
 * });
 * const organ = await loadMedMnist(path); // classes from the file name: OrganMNIST3D's 11
 * organ.train.sampleShape; // [28, 28, 28, 1]
 * ```
 */
export async function loadMedMnist(
  path: string,
  options: MedMnistOptions = {},
): Promise<ImageDataset> {
  const file = basename(path);
  const name = options.name ?? medmnistNameFromPath(path);
  const info = medmnistInfo(name);
  if (info !== undefined && info.task.startsWith("multi-label")) {
    throw new Error(
      `${file}: ${name} is a ${info.task} dataset; the toolkit supports single-label ` +
        `classification only (labels [N,1])`,
    );
  }
  const keys = SPLITS.flatMap((s) => [`${s}_images`, `${s}_labels`]);
  const held = await listNpz(path);
  const missing = keys.filter((k) => !held.includes(k));
  if (missing.length > 0) {
    throw new Error(
      `${file} has no array ${missing.map((k) => `"${k}"`).join(", ")} (it holds: ${
        held.join(", ") || "nothing"
      }); a MedMNIST-layout file needs ${keys.join(", ")}`,
    );
  }
  const arrays = await readNpz(path, { keys, ...options.limits });

  const raw: Record<string, { layout: Layout; images: Uint8Array; labels: Int32Array }> = {};
  let first: Layout | undefined;
  for (const split of SPLITS) {
    const imgs = arrays[`${split}_images`];
    const where = `${file} (${split}_images)`;
    if (!(imgs.data instanceof Uint8Array) || imgs.dtype !== "|u1") {
      throw new Error(
        `${where} has dtype ${imgs.dtype}; expected uint8 (|u1) pixels: save the images as ` +
          `uint8 in 0–255 (e.g. (x * 255).round().astype(np.uint8))`,
      );
    }
    const layout = imageLayout(imgs, where, info?.dims);
    if (first === undefined) first = layout;
    else if (layout.shape.join() !== first.shape.join()) {
      throw new Error(
        `${where} has samples of [${layout.shape}] but train_images has [${first.shape}]; ` +
          `all splits must share one size`,
      );
    }
    const labels = readLabels(
      arrays[`${split}_labels`],
      imgs.shape[0],
      `${file} (${split}_labels)`,
    );
    raw[split] = { layout, images: imgs.data, labels };
  }

  // Classes: explicit names, then datasets.json, then numClasses, then inferred.
  let maxLabel = -1;
  for (const split of SPLITS) for (const y of raw[split].labels) if (y > maxLabel) maxLabel = y;
  let classNames = options.classNames ?? info?.classNames;
  if (classNames === undefined) {
    const c = options.numClasses ?? maxLabel + 1;
    classNames = Array.from({ length: c }, (_, i) => String(i));
  }
  if (options.numClasses !== undefined && options.numClasses !== classNames.length) {
    throw new Error(
      `${file}: numClasses ${options.numClasses} disagrees with ${classNames.length} class names`,
    );
  }
  const C = classNames.length;
  for (const split of SPLITS) {
    const labels = raw[split].labels;
    for (let i = 0; i < labels.length; i++) {
      if (labels[i] < 0 || labels[i] >= C) {
        throw new Error(
          `labels in ${file} (${split}_labels) hold ${labels[i]} at row ${i}; expected 0..${
            C - 1
          } ` +
            `(${C} classes${
              info ? ` of ${name}` : ""
            }); pass classNames or numClasses if the file has more`,
        );
      }
    }
  }

  const dims = first!.dims;
  if (dims === 3) {
    if (
      options.imageSize !== undefined && options.imageSize !== first!.shape[1] &&
      !options.volumesAsStored
    ) {
      throw new Error(
        `${file}: imageSize ${options.imageSize} was asked for 3D volumes of [${first!.shape}]; ` +
          `3D volumes are not resized (use the ${name}_64.npz file for 64³)`,
      );
    }
    if (options.channels === 3) {
      throw new Error(`${file}: channels 3 was asked for 3D volumes; 3D volumes keep one channel`);
    }
  }
  if (dims === 2) checkResizeBytes(raw, options, file);
  const out = {} as Record<(typeof SPLITS)[number], ImageSplit>;
  for (const split of SPLITS) {
    const { layout, images, labels } = raw[split];
    out[split] = dims === 3
      ? { images, sampleShape: layout.shape, labels }
      : transform2d(images, labels, layout.shape, options, `${file} ${split}`);
  }
  return { name, classNames, train: out.train, val: out.val, test: out.test, source: path };
}

/** The per-sample shape a 2D split is returned in (options checked), and whether it is new. */
function outputShape(
  shape: number[],
  options: MedMnistOptions,
  where: string,
): { shape: [number, number, 1 | 3]; copy: boolean } {
  const [H, W, Cin] = shape;
  const size = options.imageSize;
  const channels = options.channels ?? 3;
  if (channels !== 1 && channels !== 3) {
    throw new Error(`${where}: channels must be 1 or 3, got ${channels}`);
  }
  if (size !== undefined && !(Number.isInteger(size) && size > 0)) {
    throw new Error(`${where}: imageSize must be a positive integer, got ${size}`);
  }
  const outH = size ?? H;
  const outW = size ?? W;
  return {
    shape: [outH, outW, channels],
    copy: !(outH === H && outW === W && channels === Cin),
  };
}

/**
 * Refuses, before anything is allocated, 2D splits whose resized images (N × imageSize² ×
 * channels, the three splits together) would pass the npz `maxBytes` limit.
 */
function checkResizeBytes(
  raw: Record<string, { layout: Layout; labels: Int32Array }>,
  options: MedMnistOptions,
  file: string,
): void {
  const limit = npzLimits(options.limits).maxBytes;
  let total = 0;
  for (const split of SPLITS) {
    const { layout, labels } = raw[split];
    const { shape, copy } = outputShape(layout.shape, options, `${file} ${split}`);
    if (!copy) continue;
    const n = labels.length;
    const bytes = n * shape[0] * shape[1] * shape[2];
    total += bytes;
    if (total > limit) {
      const before = total > bytes ? ` (${formatBytes(total)} with the splits before it)` : "";
      throw new Error(
        `${file} (${split}_images): ${n} images of [${layout.shape}] resized to [${shape}] need ` +
          `${formatBytes(bytes)}${before}, more than the limit of ${formatBytes(limit)}; the ` +
          `file is corrupt or hostile — or, if it is genuine, ask for a smaller imageSize (or ` +
          `channels: 1), or raise the limit (loadMedMnist option limits.maxBytes, or the ` +
          `environment variable DEER_NPZ_MAX_BYTES=<bytes>)`,
      );
    }
  }
}

function transform2d(
  images: Uint8Array,
  labels: Int32Array,
  shape: number[],
  options: MedMnistOptions,
  where: string,
): ImageSplit {
  const [H, W, Cin] = shape;
  const size = options.imageSize;
  const out = outputShape(shape, options, where);
  const [outH, outW, channels] = out.shape;
  if (!out.copy) return { images, sampleShape: [H, W, Cin], labels };
  const n = labels.length;
  const per = outH * outW * channels;
  let dst: Uint8Array;
  try {
    dst = new Uint8Array(n * per);
  } catch (err) {
    throw new Error(
      `${where}: cannot allocate ${formatBytes(n * per)} for ${n} images resized to ` +
        `[${out.shape}] (${(err as Error).message}); ask for a smaller imageSize, or free memory`,
    );
  }
  const inPer = H * W * Cin;
  const every = options.progressEvery ?? 0;
  for (let i = 0; i < n; i++) {
    let img: Image8 = {
      width: W,
      height: H,
      channels: Cin,
      data: images.subarray(i * inPer, (i + 1) * inPer),
    };
    // Grey → RGB is replicated after the resize (same result per channel, a third of the
    // work); RGB → grey (channels: 1) is converted before it.
    if (channels === 1) img = toChannels(img, 1);
    if (size !== undefined && (size !== H || size !== W)) img = clipPreprocess(img, size);
    img = toChannels(img, channels);
    dst.set(img.data, i * per);
    if (every > 0 && ((i + 1) % every === 0 || i + 1 === n)) {
      console.error(`medmnist: ${where} ${i + 1}/${n} images preprocessed`);
    }
  }
  return { images: dst, sampleShape: [outH, outW, channels], labels };
}
