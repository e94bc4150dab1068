/**
 * `deno task default-data` — derives the toolkit's shipped demo data set, `fashion6.npz`, from
 * real Fashion-MNIST (Debian's `dataset-fashion-mnist` package), deterministically: the same
 * source files and seed give byte-identical output.
 *
 * The ten Fashion-MNIST classes are split in two disjoint groups:
 * * the demo task (6 classes): T-shirt/top, Pullover, Coat, Shirt, Sneaker, Ankle boot — four
 *   upper-body garments that Fashion-MNIST's own benchmarks confuse most (Shirt against
 *   T-shirt/top, Pullover and Coat), plus two kinds of shoe, so the task is neither trivial nor
 *   hopeless and methods can differ;
 * * the pretraining classes (4): Trouser, Dress, Sandal, Bag — used only by `deno task pretrain`
 *   to train the small "foundation model", which therefore never sees a demo-task image.
 *
 * Selection (seed {@link DEFAULT_DATA_PLAN}.seed): for each demo class in label order, its
 * indices in the IDX train file (ascending) are shuffled with one seeded generator
 * (`createRng(seed)`, lib/rng.ts), and the first 400 go to train, the next 100 to val, the next
 * 16 to the "prompt" set that `deno task pretrain` averages into the class prototypes (not in
 * the npz). Then, with the same generator, each demo class's indices in the t10k file are
 * shuffled and the first 200 go to test. Each split is stored in ascending source-index order;
 * the source indices are stored too (`{split}_source_index`). Labels are 0..5 in the order of
 * {@link DEMO_CLASS_NAMES}.
 *
 * @example
 * ```sh
 * deno task default-data
 * deno task default-data --source /usr/share/datasets/fashion-mnist --out data/default
 * ```
 * @module
 */
import { join } from "node:path";
import { noPositionals, parseCommandArgs } from "../lib/cli.ts";
import { readIdxImages, readIdxLabels } from "../lib/data/idx.ts";
import { writeNpz } from "../lib/data/npy.ts";
import { writeJsonAtomic } from "../lib/io/atomic.ts";
import { createRng } from "../lib/rng.ts";

/** Fashion-MNIST's labels 0..9 (zalandoresearch/fashion-mnist README). */
export const FASHION_MNIST_CLASSES = [
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
] as const;

/** Fashion-MNIST labels of the demo task, in the order of the demo's labels 0..5. */
export const DEMO_SOURCE_LABELS = [0, 2, 4, 6, 7, 9] as const;
/** Fashion-MNIST labels the foundation model is pretrained on (disjoint from the demo's). */
export const PRETRAIN_SOURCE_LABELS = [1, 3, 5, 8] as const;
/** The demo task's class names, label order 0..5. */
export const DEMO_CLASS_NAMES: string[] = DEMO_SOURCE_LABELS.map((c) => FASHION_MNIST_CLASSES[c]);
/** The pretraining classes' names. */
export const PRETRAIN_CLASS_NAMES: string[] = PRETRAIN_SOURCE_LABELS.map((c) =>
  FASHION_MNIST_CLASSES[c]
);

/** Where Debian's `dataset-fashion-mnist` puts the IDX files. */
export const DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist";
/** The shipped file's name under `data/default/`. */
export const DEFAULT_DATA_FILE = "fashion6.npz";

/** How many images per demo class go where, and the seed of the selection. */
export interface DataPlan {
  seed: number;
  trainPerClass: number;
  valPerClass: number;
  /** Held out of train/val for the class prototypes (`deno task pretrain`), never shipped. */
  promptsPerClass: number;
  testPerClass: number;
}

/** The shipped demo set's plan. */
export const DEFAULT_DATA_PLAN: Readonly<DataPlan> = {
  seed: 20170825, // Fashion-MNIST's release date; any fixed number would do
  trainPerClass: 400,
  valPerClass: 100,
  promptsPerClass: 16,
  testPerClass: 200,
};

/**
 * The four IDX files of Fashion-MNIST under `source`.
 *
 * @example
 * ```ts
 * fashionMnistFiles("/usr/share/datasets/fashion-mnist").testLabels;
 * // "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"
 * ```
 */
export function fashionMnistFiles(source: string) {
  return {
    trainImages: join(source, "train-images-idx3-ubyte.gz"),
    trainLabels: join(source, "train-labels-idx1-ubyte.gz"),
    testImages: join(source, "t10k-images-idx3-ubyte.gz"),
    testLabels: join(source, "t10k-labels-idx1-ubyte.gz"),
  };
}

/** Source indices of every part of the demo set: train/val/prompts in the train file, test in t10k. */
export interface DemoSelection {
  train: number[];
  val: number[];
  prompts: number[];
  test: number[];
}

/**
 * The deterministic selection described in the module doc. `trainLabels`/`testLabels` are the
 * Fashion-MNIST label files' contents.
 *
 * @example
 * ```ts
 * const trainLabels = Array.from({ length: 6000 }, (_, i) => i % 10); // 600 images per class
 * const testLabels = Array.from({ length: 2000 }, (_, i) => i % 10); // 200 per class
 * const sel = selectDemoIndices(trainLabels, testLabels);
 * sel.train.length; // 2400: 400 of each of the 6 demo classes
 * ```
 */
export function selectDemoIndices(
  trainLabels: ArrayLike<number>,
  testLabels: ArrayLike<number>,
  plan: Readonly<DataPlan> = DEFAULT_DATA_PLAN,
): DemoSelection {
  const rng = createRng(plan.seed);
  const byClass = (labels: ArrayLike<number>, c: number) => {
    const out: number[] = [];
    for (let i = 0; i < labels.length; i++) if (labels[i] === c) out.push(i);
    return out;
  };
  const sel: DemoSelection = { train: [], val: [], prompts: [], test: [] };
  const { trainPerClass: nTr, valPerClass: nVa, promptsPerClass: nPr, testPerClass: nTe } = plan;
  for (const c of DEMO_SOURCE_LABELS) {
    const idx = rng.shuffle(byClass(trainLabels, c));
    if (idx.length < nTr + nVa + nPr) {
      throw new Error(
        `train labels hold ${idx.length} images of class ${c} (${FASHION_MNIST_CLASSES[c]}); ` +
          `the plan needs ${nTr + nVa + nPr}`,
      );
    }
    sel.train.push(...idx.slice(0, nTr));
    sel.val.push(...idx.slice(nTr, nTr + nVa));
    sel.prompts.push(...idx.slice(nTr + nVa, nTr + nVa + nPr));
  }
  for (const c of DEMO_SOURCE_LABELS) {
    const idx = rng.shuffle(byClass(testLabels, c));
    if (idx.length < nTe) {
      throw new Error(
        `t10k labels hold ${idx.length} images of class ${c} (${
          FASHION_MNIST_CLASSES[c]
        }); the plan needs ${nTe}`,
      );
    }
    sel.test.push(...idx.slice(0, nTe));
  }
  for (const k of ["train", "val", "prompts", "test"] as const) sel[k].sort((a, b) => a - b);
  return sel;
}

/**
 * Copies the images at `indices` ([N, 28, 28] uint8) and their demo labels (0..5).
 *
 * @example
 * ```ts
 * const trainImages = { shape: [20, 28, 28], data: new Uint8Array(20 * 784) };
 * const trainLabels = Array.from({ length: 20 }, (_, i) => i % 10); // Fashion-MNIST labels
 * const { images, labels } = gatherDemo(trainImages, trainLabels, [0, 9, 19]); // T-shirt, ankle boots
 * Array.from(labels); // [0, 5, 5]: demo labels
 * ```
 */
export function gatherDemo(
  images: { shape: number[]; data: Uint8Array },
  labels: ArrayLike<number>,
  indices: number[],
): { images: Uint8Array; labels: Uint8Array } {
  const per = images.shape[1] * images.shape[2];
  const out = new Uint8Array(indices.length * per);
  const y = new Uint8Array(indices.length);
  indices.forEach((src, i) => {
    out.set(images.data.subarray(src * per, (src + 1) * per), i * per);
    const demo = (DEMO_SOURCE_LABELS as readonly number[]).indexOf(labels[src]);
    if (demo < 0) throw new Error(`source index ${src} has label ${labels[src]}, not a demo class`);
    y[i] = demo;
  });
  return { images: out, labels: y };
}

/**
 * The installed version of Debian's `dataset-fashion-mnist` package, or `"unknown"` (no dpkg,
 * or the files came from elsewhere).
 *
 * @example
 * ```ts
 * await fashionMnistPackageVersion(); // "0.0~git20200523.55506a9-1"
 * ```
 */
export async function fashionMnistPackageVersion(): Promise<string> {
  try {
    const out = await new Deno.Command("dpkg-query", {
      args: ["-W", "-f", "${Version}", "dataset-fashion-mnist"],
      stdout: "piped",
      stderr: "null",
    }).output();
    const version = new TextDecoder().decode(out.stdout).trim();
    return out.success && version ? version : "unknown";
  } catch {
    return "unknown";
  }
}

/**
 * SHA-256 of a file, as hex.
 *
 * @example
 * ```ts
 * await sha256("data/default/fashion6.npz");
 * ```
 */
export async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Builds `fashion6.npz` and its manifest `fashion6.json` in `out`; returns the npz path.
 *
 * @example
 * ```ts
 * import { writeIdx } from "../lib/data/idx.ts";
 * // Stand-in IDX files in Fashion-MNIST's layout (the real ones: /usr/share/datasets/fashion-mnist):
 * // every class 0..9 in turn, blank 28×28 images.
 * const source = await Deno.makeTempDir();
 * const write = async (name: string, n: number) => {
 *   const labels = Uint8Array.from({ length: n }, (_, i) => i % 10);
 *   await writeIdx(`${source}/${name}-images-idx3-ubyte.gz`, { shape: [n, 28, 28], data: new Uint8Array(n * 784) }, { gzip: true });
 *   await writeIdx(`${source}/${name}-labels-idx1-ubyte.gz`, { shape: [n], data: labels }, { gzip: true });
 * };
 * await write("train", 6000); // 600 per class: enough for 400 train + 100 val + 16 prompt images
 * await write("t10k", 2000); // 200 per class for test
 * const out = await Deno.makeTempDir();
 * const sha = await buildDefaultData(source, out); // writes fashion6.npz and fashion6.json
 * sha.length; // 64: the npz's SHA-256 (the shipped file: `deno task default-data`)
 * ```
 */
export async function buildDefaultData(source: string, out: string): Promise<string> {
  const files = fashionMnistFiles(source);
  const [trImages, trLabels, teImages, teLabels] = await Promise.all([
    readIdxImages(files.trainImages),
    readIdxLabels(files.trainLabels),
    readIdxImages(files.testImages),
    readIdxLabels(files.testLabels),
  ]);
  for (
    const [images, labels, name] of [[trImages, trLabels, "train"], [
      teImages,
      teLabels,
      "t10k",
    ]] as const
  ) {
    if (images.shape[0] !== labels.length || images.shape[1] !== 28 || images.shape[2] !== 28) {
      throw new Error(
        `${source}: ${name} images [${images.shape}] and labels [${labels.length}] do not form ` +
          `a Fashion-MNIST split (expected [N, 28, 28] and [N])`,
      );
    }
  }
  const sel = selectDemoIndices(trLabels, teLabels);
  const arrays: Parameters<typeof writeNpz>[1] = {};
  const counts: Record<string, number[]> = {};
  for (const split of ["train", "val", "test"] as const) {
    const [images, labels] = split === "test" ? [teImages, teLabels] : [trImages, trLabels];
    const part = gatherDemo(images, labels, sel[split]);
    const n = sel[split].length;
    arrays[`${split}_images`] = { shape: [n, 28, 28], data: part.images };
    arrays[`${split}_labels`] = { shape: [n, 1], data: part.labels };
    arrays[`${split}_source_index`] = { shape: [n], data: Int32Array.from(sel[split]) };
    counts[split] = DEMO_CLASS_NAMES.map((_, c) => part.labels.filter((y) => y === c).length);
  }
  const npz = join(out, DEFAULT_DATA_FILE);
  await writeNpz(npz, arrays);
  const sources: Record<string, string> = {};
  for (const [key, path] of Object.entries(files)) sources[key] = await sha256(path);
  await writeJsonAtomic(join(out, DEFAULT_DATA_FILE.replace(/\.npz$/, ".json")), {
    name: "fashion6",
    description: "6-class subset of Fashion-MNIST (Zalando SE, MIT/Expat), MedMNIST npz layout",
    class_names: DEMO_CLASS_NAMES,
    fashion_mnist_labels: DEMO_SOURCE_LABELS,
    pretrain_class_names: PRETRAIN_CLASS_NAMES,
    pretrain_fashion_mnist_labels: PRETRAIN_SOURCE_LABELS,
    plan: DEFAULT_DATA_PLAN,
    counts,
    prompt_source_index: sel.prompts,
    source: {
      package: "dataset-fashion-mnist",
      version: await fashionMnistPackageVersion(),
      upstream: "https://github.com/zalandoresearch/fashion-mnist",
      folder: source,
      sha256: sources,
    },
    sha256: await sha256(npz),
    command: "deno task default-data",
  });
  return npz;
}

const USAGE = `Usage: deno task default-data [--source DIR] [--out DIR]

Derives data/default/fashion6.npz (6 Fashion-MNIST classes, MedMNIST layout) from the IDX files
of Debian's dataset-fashion-mnist package. Deterministic: same input, same bytes.

  --source DIR   folder with the four *-ubyte.gz files (default ${DEFAULT_SOURCE})
  --out DIR      output folder (default data/default)
  --help         this text`;

if (import.meta.main) {
  const flags = parseCommandArgs("default-data", USAGE, Deno.args, {
    string: ["source", "out"],
    default: { source: DEFAULT_SOURCE, out: "data/default" },
  }, noPositionals);
  const t0 = performance.now();
  const npz = await buildDefaultData(flags.source as string, flags.out as string);
  const size = (await Deno.stat(npz)).size;
  console.log(
    `wrote ${npz} (${(size / 1e6).toFixed(2)} MB) in ${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s; classes: ${DEMO_CLASS_NAMES.join(", ")}`,
  );
}
