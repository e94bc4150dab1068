/**
 * `deno task pretrain` — pretrains the toolkit's default "foundation model": a small CLIP-style
 * ViT image tower (open_clip OpenAI layout) on the four Fashion-MNIST classes that the demo task
 * does not use (Trouser, Dress, Sandal, Bag; see `tasks/default_data.ts`), then builds the demo
 * task's fixed class prototypes — the analogue of CLIP's text prototypes — from a few held-out
 * "prompt" images per demo class.
 *
 * Recipe (every choice is a flag or a constant below; the seed fixes init, batches and
 * augmentation):
 * * Data: every image of the pretraining classes in the IDX train file (24,000); the t10k file's
 *   images of those classes (4,000) measure the pretraining accuracy. No demo-class image is
 *   used for training.
 * * Views: each image is seen as two augmented views — random resized crop (area 55–100 %,
 *   aspect 3/4–4/3, bilinear), horizontal flip, brightness × U(0.7, 1.15) — grey replicated
 *   to RGB and normalised with CLIP's mean/std, as the toolkit feeds images.
 * * Objective, two CLIP-style cosine losses on L2-normalised features:
 *   1. supervised: cross-entropy of `exp(s₁)·f·Wᵀ` against the class, W the 4 learnable class
 *      embeddings (L2-normalised; a text tower reduced to a table), on both views;
 *   2. instance: CLIP's symmetric InfoNCE between the two views of the batch
 *      (`exp(s₂)·f₁·f₂ᵀ`, targets on the diagonal) — it keeps the features rich within a
 *      class, which is what lets them transfer to unseen classes.
 *   `s₁`, `s₂` are learnable logit scales (init ln(1/0.07), clamped to ln 100, as CLIP).
 * * AdamW (β = 0.9, 0.98; ε = 1e-6; decoupled weight decay 0.05 on matrices), linear warm-up
 *   over 5 % of the steps, then cosine decay to 5 % of the peak learning rate.
 * * All weights are trained: `tf.grads` through {@link encodeWithWeights}.
 *
 * Prototypes: for each demo class, the 16 "prompt" images chosen by `selectDemoIndices`
 * (Fashion-MNIST train file, disjoint from the shipped train/val/test splits) are encoded
 * without augmentation; the prototype is the L2-normalised mean of their L2-normalised
 * features. The frozen model's zero-shot accuracy (cosine to these prototypes) on the demo's
 * val and test splits goes into the README and the log.
 *
 * Outputs in `--out` (default `models/default`), each written atomically:
 * `vit_tiny_fashion.safetensors` (weights, `deer.vision` metadata, the recipe),
 * `prototypes.safetensors`, `pretrain_log.json` (loss curve and metrics) and `README.md`.
 *
 * @example
 * ```sh
 * deno task default-data   # data/default/fashion6.npz first
 * deno task pretrain
 * deno task pretrain --steps 200 --out /tmp/quick
 * ```
 * @module
 */
import { join } from "node:path";
import process from "node:process";
import { tf } from "../lib/backend.ts";
import { noPositionals, parseCommandArgs, usageExit } from "../lib/cli.ts";
import { readIdxImages, readIdxLabels } from "../lib/data/idx.ts";
import { CLIP_MEAN, CLIP_STD } from "../lib/data/image.ts";
import { loadMedMnist } from "../lib/data/medmnist.ts";
import { makeBatch } from "../lib/data/batches.ts";
import type { ImageSplit } from "../lib/data/dataset.ts";
import { makeBackbone } from "../lib/fl/backbone.ts";
import { createLocalTrainer } from "../lib/fl/local.ts";
import { defaultConfig } from "../lib/fl/simulation.ts";
import { writeFileAtomic, writeJsonAtomic } from "../lib/io/atomic.ts";
import { classificationMetrics } from "../lib/metrics/classification.ts";
import { cosineScores, savePrototypes } from "../lib/model/head.ts";
import { initLora } from "../lib/model/lora.ts";
import {
  encodeWithWeights,
  type VisionEncoder,
  type VitConfig,
  type VitWeights,
} from "../lib/model/vit.ts";
import { loadVisionEncoder } from "../lib/model/vit_checkpoints.ts";
import { randomVitWeights, saveVisionEncoder } from "../lib/model/vit_init.ts";
import { createRng, type Rng } from "../lib/rng.ts";
import {
  type DataPlan,
  DEFAULT_DATA_FILE,
  DEFAULT_DATA_PLAN,
  DEFAULT_SOURCE,
  DEMO_CLASS_NAMES,
  DEMO_SOURCE_LABELS,
  fashionMnistFiles,
  fashionMnistPackageVersion,
  PRETRAIN_CLASS_NAMES,
  PRETRAIN_SOURCE_LABELS,
  selectDemoIndices,
} from "./default_data.ts";

/** File names written in the output folder. */
export const MODEL_FILE = "vit_tiny_fashion.safetensors";
export const PROTOTYPES_FILE = "prototypes.safetensors";

/** Everything {@link pretrainVit} needs; {@link DEFAULT_PRETRAIN} holds the shipped values. */
export interface PretrainOptions {
  /** Folder with Fashion-MNIST's four IDX `.gz` files. */
  source: string;
  /** The demo npz (MedMNIST layout) for the zero-shot evaluation; `null` skips it. */
  data: string | null;
  /** Output folder. */
  out: string;
  seed: number;
  steps: number;
  /** Images per step (each seen as two views). */
  batch: number;
  lr: number;
  weightDecay: number;
  /** Weight of the instance (view-to-view) InfoNCE loss. */
  instanceWeight: number;
  patch: number;
  width: number;
  layers: number;
  heads: number;
  embed: number;
  mlpRatio: number;
  /** The demo-data plan whose prompt images make the prototypes (tests pass a small one). */
  plan: Readonly<DataPlan>;
  /** Print a progress line every this many steps (0: never). */
  logEvery: number;
  /** Time the federated clients' LoRA step on the result ({@link timeLoraStep}). */
  timeLoraStep: boolean;
}

/** The shipped model's recipe. */
export const DEFAULT_PRETRAIN: PretrainOptions = {
  source: DEFAULT_SOURCE,
  data: join("data/default", DEFAULT_DATA_FILE),
  out: "models/default",
  seed: 1,
  steps: 400,
  batch: 128,
  lr: 2e-3,
  weightDecay: 0.05,
  instanceWeight: 1,
  patch: 7,
  width: 64,
  layers: 3,
  heads: 2,
  embed: 64,
  mlpRatio: 4,
  plan: DEFAULT_DATA_PLAN,
  logEvery: 50,
  timeLoraStep: true,
};

/** What {@link pretrainVit} measured. */
export interface PretrainResult {
  config: VitConfig;
  /** Mean total loss of each logged window of steps, with the step it ends at. */
  losses: { step: number; loss: number; supervised: number; instance: number }[];
  /** The total loss of every step. */
  stepLosses: number[];
  /** Prototype accuracy on the t10k images of the pretraining classes (fraction). */
  pretrainAccuracy: number;
  /** Frozen model + demo prototypes on the demo splits (fractions), when `data` was given. */
  zeroShot?: { val: ZeroShot; test: ZeroShot };
  seconds: number;
  /** Process CPU time (all threads) and the 1-minute load average at the end. */
  cpuSeconds: number;
  load: number;
  /** The clients' LoRA step on this model (when `timeLoraStep` is set). */
  loraStep?: StepTiming;
  files: { model: string; prototypes: string; log: string; readme: string };
}

/** Accuracy and macro F1 of the cosine-to-prototype classifier. */
export interface ZeroShot {
  accuracy: number;
  f1: number;
}

// ---------------------------------------------------------------------------------------------
// Data

interface Subset {
  /** [n, 28·28] uint8 grey images. */
  images: Uint8Array;
  labels: Int32Array;
}

/** The images of `classes` (Fashion-MNIST labels) relabelled 0..classes.length−1. */
function subsetOf(
  images: { shape: number[]; data: Uint8Array },
  labels: Uint8Array,
  classes: readonly number[],
): Subset {
  const per = images.shape[1] * images.shape[2];
  const keep: number[] = [];
  for (let i = 0; i < labels.length; i++) if (classes.includes(labels[i])) keep.push(i);
  const out = new Uint8Array(keep.length * per);
  const y = new Int32Array(keep.length);
  keep.forEach((src, i) => {
    out.set(images.data.subarray(src * per, (src + 1) * per), i * per);
    y[i] = classes.indexOf(labels[src]);
  });
  return { images: out, labels: y };
}

/** Grey [n·784] → an RGB ImageSplit (grey replicated), as the toolkit's loaders produce. */
function toRgbSplit(s: Subset, side: number): ImageSplit {
  const n = s.labels.length;
  const rgb = new Uint8Array(n * side * side * 3);
  for (let i = 0; i < s.images.length; i++) {
    rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = s.images[i];
  }
  return { images: rgb, sampleShape: [side, side, 3], labels: s.labels };
}

/**
 * One augmented view of a grey `side`×`side` image, written as CLIP-normalised RGB into `out`
 * at `offset`: random resized crop (bilinear), horizontal flip, brightness scale.
 */
function augmentInto(
  src: Uint8Array,
  side: number,
  rng: Rng,
  out: Float32Array,
  offset: number,
): void {
  const area = 0.55 + 0.45 * rng.uniform();
  const aspect = Math.exp(Math.log(3 / 4) + (Math.log(4 / 3) - Math.log(3 / 4)) * rng.uniform());
  const cw = Math.min(side, side * Math.sqrt(area * aspect));
  const ch = Math.min(side, side * Math.sqrt(area / aspect));
  const x0 = (side - cw) * rng.uniform();
  const y0 = (side - ch) * rng.uniform();
  const flip = rng.uniform() < 0.5;
  const gain = 0.7 + 0.45 * rng.uniform();
  const m = CLIP_MEAN, sd = CLIP_STD;
  for (let r = 0; r < side; r++) {
    // Pixel centres of the output mapped into the crop (align_corners = false).
    const sy = Math.min(Math.max(y0 + ((r + 0.5) * ch) / side - 0.5, 0), side - 1);
    const r0 = Math.floor(sy), r1 = Math.min(r0 + 1, side - 1), fy = sy - r0;
    for (let c = 0; c < side; c++) {
      const cc = flip ? side - 1 - c : c;
      const sx = Math.min(Math.max(x0 + ((cc + 0.5) * cw) / side - 0.5, 0), side - 1);
      const c0 = Math.floor(sx), c1 = Math.min(c0 + 1, side - 1), fx = sx - c0;
      const v = (1 - fy) * ((1 - fx) * src[r0 * side + c0] + fx * src[r0 * side + c1]) +
        fy * ((1 - fx) * src[r1 * side + c0] + fx * src[r1 * side + c1]);
      const g = Math.min(255, v * gain) / 255;
      const o = offset + (r * side + c) * 3;
      out[o] = (g - m[0]) / sd[0];
      out[o + 1] = (g - m[1]) / sd[1];
      out[o + 2] = (g - m[2]) / sd[2];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Trainable state

/** The encoder's weights as variables, in a fixed order, plus the head's parameters. */
interface Trainable {
  weights: VitWeights;
  /** Every variable, in a fixed order; `decay[i]` says whether weight decay applies. */
  variables: tf.Variable[];
  decay: boolean[];
  classEmbeddings: tf.Variable;
  supervisedScale: tf.Variable;
  instanceScale: tf.Variable;
}

function makeTrainable(config: VitConfig, rng: Rng, numClasses: number): Trainable {
  const host = randomVitWeights(config, rng);
  const variables: tf.Variable[] = [];
  const decay: boolean[] = [];
  const v = <T extends tf.Tensor>(t: { shape: number[]; data: Float32Array }, wd = false): T => {
    const initial = tf.tensor(t.data, t.shape);
    const variable = tf.variable(initial); // a new tensor sharing the data: free the first
    initial.dispose();
    variables.push(variable);
    decay.push(wd);
    return variable as unknown as T;
  };
  const norm = (n: { weight: { shape: number[]; data: Float32Array }; bias: typeof n.weight }) => ({
    weight: v<tf.Tensor1D>(n.weight),
    bias: v<tf.Tensor1D>(n.bias),
  });
  const weights: VitWeights = {
    patchWeight: v<tf.Tensor2D>(host.patchWeight, true),
    classEmbedding: v<tf.Tensor3D>({
      shape: [1, 1, config.width],
      data: host.classEmbedding.data,
    }),
    positionEmbedding: v<tf.Tensor2D>(host.positionEmbedding),
    lnPre: host.lnPre && norm(host.lnPre),
    blocks: host.blocks.map((b) => ({
      ln1: norm(b.ln1),
      qkvWeight: v<tf.Tensor2D>(b.qkvWeight, true),
      qkvBias: v<tf.Tensor1D>(b.qkvBias),
      outWeight: v<tf.Tensor2D>(b.outWeight, true),
      outBias: v<tf.Tensor1D>(b.outBias),
      ln2: norm(b.ln2),
      fc1Weight: v<tf.Tensor2D>(b.fc1Weight, true),
      fc1Bias: v<tf.Tensor1D>(b.fc1Bias),
      fc2Weight: v<tf.Tensor2D>(b.fc2Weight, true),
      fc2Bias: v<tf.Tensor1D>(b.fc2Bias),
    })),
    lnPost: norm(host.lnPost),
    proj: host.proj && v<tf.Tensor2D>(host.proj, true),
  };
  const table = new Float32Array(numClasses * config.embedDim);
  rng.fillNormal(table);
  const classEmbeddings = v<tf.Variable>({ shape: [numClasses, config.embedDim], data: table });
  const init = Math.log(1 / 0.07);
  const supervisedScale = v<tf.Variable>({ shape: [], data: Float32Array.of(init) });
  const instanceScale = v<tf.Variable>({ shape: [], data: Float32Array.of(init) });
  return { weights, variables, decay, classEmbeddings, supervisedScale, instanceScale };
}

function unit(x: tf.Tensor2D): tf.Tensor2D {
  return tf.div(x, tf.maximum(tf.norm(x, "euclidean", 1, true), 1e-12));
}

/** Cross-entropy of `logits` [n, C] against integer `labels` [n]. */
function crossEntropy(logits: tf.Tensor2D, labels: tf.Tensor1D): tf.Scalar {
  const logProbs = tf.logSoftmax(logits);
  return tf.neg(tf.mean(tf.sum(tf.mul(tf.oneHot(labels, logits.shape[1]), logProbs), 1)));
}

/** AdamW with the schedule in the module doc; the moments live in plain tensors. */
function makeAdamW(variables: tf.Variable[], decay: boolean[], weightDecay: number) {
  const b1 = 0.9, b2 = 0.98, eps = 1e-6;
  let m: tf.Tensor[] = variables.map((x) => tf.zerosLike(x));
  let s: tf.Tensor[] = variables.map((x) => tf.zerosLike(x));
  let t = 0;
  return {
    apply(grads: tf.Tensor[], lr: number) {
      t++;
      const c1 = 1 - b1 ** t, c2 = 1 - b2 ** t;
      const next = tf.tidy(() =>
        variables.map((x, i) => {
          const g = grads[i];
          const mi = tf.add(tf.mul(m[i], b1), tf.mul(g, 1 - b1));
          const si = tf.add(tf.mul(s[i], b2), tf.mul(tf.square(g), 1 - b2));
          let update = tf.div(tf.div(mi, c1), tf.add(tf.sqrt(tf.div(si, c2)), eps));
          if (decay[i]) update = tf.add(update, tf.mul(x, weightDecay));
          x.assign(tf.sub(x, tf.mul(update, lr)));
          return [mi, si];
        })
      );
      tf.dispose([m, s]);
      m = next.map((p) => p[0]);
      s = next.map((p) => p[1]);
    },
    dispose() {
      tf.dispose([m, s]);
    },
  };
}

function learningRate(step: number, steps: number, peak: number): number {
  const warm = Math.max(1, Math.round(0.05 * steps));
  if (step < warm) return (peak * (step + 1)) / warm;
  const p = (step - warm) / Math.max(1, steps - warm);
  return peak * (0.05 + 0.95 * 0.5 * (1 + Math.cos(Math.PI * p)));
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/** Unnormalised features of every sample of `split` (CLIP-normalised), in batches. */
function features(config: VitConfig, weights: VitWeights, split: ImageSplit): tf.Tensor2D {
  const n = split.labels.length;
  const parts: tf.Tensor2D[] = [];
  for (let i = 0; i < n; i += 250) {
    const idx = Array.from({ length: Math.min(250, n - i) }, (_, k) => i + k);
    const { x, y } = makeBatch(split, idx);
    parts.push(tf.tidy(() => encodeWithWeights(config, weights, x as tf.Tensor4D)));
    tf.dispose([x, y]);
  }
  const all = tf.concat(parts, 0);
  tf.dispose(parts);
  return all;
}

/** Accuracy and macro F1 of `argmax cosine(f(x), prototypes)` on `split`. */
async function evaluate(
  config: VitConfig,
  weights: VitWeights,
  prototypes: tf.Tensor2D,
  split: ImageSplit,
): Promise<ZeroShot> {
  const f = features(config, weights, split);
  const probs = tf.tidy(() => tf.softmax(cosineScores(f, prototypes)));
  const rows = await probs.array() as number[][];
  tf.dispose([f, probs]);
  const m = classificationMetrics(Array.from(split.labels), rows);
  return { accuracy: m.accuracy, f1: m.f1 };
}

/** The L2-normalised mean of the L2-normalised features of each class's samples. */
function meanPrototypes(
  config: VitConfig,
  weights: VitWeights,
  split: ImageSplit,
  numClasses: number,
): tf.Tensor2D {
  const f = features(config, weights, split);
  try {
    return tf.tidy(() => {
      const oneHot = tf.oneHot(tf.tensor1d(split.labels, "int32"), numClasses).toFloat();
      return unit(tf.matMul(oneHot, unit(f), true, false));
    });
  } finally {
    f.dispose();
  }
}

/** Wall and CPU time of one LoRA training step, and the machine's load while it was measured. */
export interface StepTiming {
  batch: number;
  rank: number;
  /** Median over 5 rounds of 10 steps. */
  wallMs: number;
  /** Process CPU time per step (all threads), same rounds. */
  cpuMs: number;
  /** 1-minute load average before and after (contention inflates wall time). */
  load: [number, number];
}

/**
 * Times the federated clients' step on this model with the engine's own trainer
 * ({@link createLocalTrainer}, lib/fl/local.ts): encode a batch with LoRA (rank `rank`,
 * alpha = rank) on q, k and v of every block, the prototype cross-entropy, gradients with
 * respect to every A, B and the logit scale, and an SGD-with-momentum update with the engine's
 * default settings (docs/protocol.md#defaults). The encoder takes the path a client's does (the
 * hand-written backward pass on the `tensorflow`, `webgpu` and `wasm` backends).
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "../lib/model/vit_checkpoints.ts";
 * import { loadPrototypes } from "../lib/model/head.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const { prototypes } = await loadPrototypes("models/default/prototypes.safetensors");
 * const t = await timeLoraStep(encoder, prototypes); // t.wallMs, t.cpuMs
 * t.wallMs > 0; // true
 * prototypes.dispose();
 * encoder.dispose();
 * ```
 */
export async function timeLoraStep(
  encoder: VisionEncoder,
  prototypes: tf.Tensor2D,
  { batch = defaultConfig().batchSize, rank = 8 } = {},
): Promise<StepTiming> {
  const { sgd, logitScale } = defaultConfig();
  const backbone = makeBackbone(encoder, prototypes, { rank, alpha: rank });
  const trainer = createLocalTrainer(backbone, {
    start: initLora(encoder.config, rank, createRng(0)),
    train: ["A", "B"],
    sgd,
    logitScale,
  });
  const side = encoder.config.imageSize;
  const x = tf.randomNormal([batch, side, side, 3], 0, 1, "float32", 1) as tf.Tensor4D;
  const y = tf.tensor1d(Array.from({ length: batch }, (_, i) => i % prototypes.shape[0]), "int32");
  const rounds: { wall: number; cpu: number }[] = [];
  const before = Deno.loadavg()[0];
  try {
    for (let i = 0; i < 5; i++) await trainer.step(x, y);
    for (let r = 0; r < 5; r++) {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      for (let i = 0; i < 10; i++) await trainer.step(x, y);
      const cpu = process.cpuUsage(c0);
      rounds.push({ wall: (performance.now() - t0) / 10, cpu: (cpu.user + cpu.system) / 1e4 });
    }
  } finally {
    trainer.dispose();
    tf.dispose([backbone.prototypes, x, y]);
  }
  rounds.sort((p, q) => p.wall - q.wall);
  return {
    batch,
    rank,
    wallMs: rounds[2].wall,
    cpuMs: rounds[2].cpu,
    load: [before, Deno.loadavg()[0]],
  };
}

// ---------------------------------------------------------------------------------------------
// The task

/**
 * Pretrains the ViT, builds the demo prototypes and writes the model folder (module doc).
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
 * const result = await pretrainVit({
 *   ...DEFAULT_PRETRAIN, // the shipped recipe: 400 steps of a width-64 ViT on the real files
 *   source,
 *   data: null, // no zero-shot report
 *   out: await Deno.makeTempDir(),
 *   steps: 5,
 *   batch: 16,
 *   width: 16,
 *   layers: 1,
 *   embed: 16,
 *   logEvery: 0,
 *   timeLoraStep: false,
 * });
 * result.stepLosses.length; // 5
 * ```
 */
export async function pretrainVit(options: PretrainOptions): Promise<PretrainResult> {
  const o = options;
  const started = performance.now();
  const cpuStart = process.cpuUsage();
  const files = fashionMnistFiles(o.source);
  const [trImages, trLabels, teImages, teLabels] = await Promise.all([
    readIdxImages(files.trainImages),
    readIdxLabels(files.trainLabels),
    readIdxImages(files.testImages),
    readIdxLabels(files.testLabels),
  ]);
  const side = trImages.shape[1];
  if (trImages.shape[2] !== side || teImages.shape[1] !== side || teImages.shape[2] !== side) {
    throw new Error(
      `${o.source}: images are [${trImages.shape}] and [${teImages.shape}]; expected square, equal sizes`,
    );
  }
  const train = subsetOf(trImages, trLabels, PRETRAIN_SOURCE_LABELS);
  const heldOut = toRgbSplit(subsetOf(teImages, teLabels, PRETRAIN_SOURCE_LABELS), side);
  if (train.labels.length < o.batch) {
    throw new Error(
      `${files.trainImages}: ${train.labels.length} images of the pretraining classes; ` +
        `need at least --batch ${o.batch}`,
    );
  }
  const config: VitConfig = {
    layout: "openai",
    imageSize: side,
    patchSize: o.patch,
    channels: 3,
    width: o.width,
    layers: o.layers,
    heads: o.heads,
    mlpDim: o.mlpRatio * o.width,
    embedDim: o.embed,
    act: "quick_gelu",
    lnEps: 1e-5,
    preNorm: true,
    patchBias: false,
    proj: true,
    projBias: false,
  };
  if (side % o.patch !== 0 || o.width % o.heads !== 0) {
    throw new Error(
      `--patch ${o.patch} must divide the image side ${side} and --heads ${o.heads} the width ${o.width}`,
    );
  }
  const rng = createRng(o.seed);
  const numClasses = PRETRAIN_SOURCE_LABELS.length;
  const state = makeTrainable(config, rng.fork(1), numClasses);
  const optimizer = makeAdamW(state.variables, state.decay, o.weightDecay);
  const dataRng = rng.fork(2);
  const augRng = rng.fork(3);
  const per = side * side;
  const n = train.labels.length;
  let order: number[] = [];
  let cursor = n;
  const losses: PretrainResult["losses"] = [];
  const stepLosses: number[] = [];
  let window = { total: 0, supervised: 0, instance: 0, count: 0 };
  const maxScale = Math.log(100);
  try {
    for (let step = 0; step < o.steps; step++) {
      if (cursor + o.batch > n) {
        order = dataRng.shuffle(Array.from({ length: n }, (_, i) => i));
        cursor = 0;
      }
      const idx = order.slice(cursor, cursor + o.batch);
      cursor += o.batch;
      // Views 1 are rows 0..B−1, views 2 rows B..2B−1.
      const x = new Float32Array(2 * o.batch * per * 3);
      const y = new Int32Array(2 * o.batch);
      idx.forEach((src, b) => {
        const img = train.images.subarray(src * per, (src + 1) * per);
        augmentInto(img, side, augRng, x, b * per * 3);
        augmentInto(img, side, augRng, x, (o.batch + b) * per * 3);
        y[b] = y[o.batch + b] = train.labels[src];
      });
      const xs = tf.tensor4d(x, [2 * o.batch, side, side, 3]);
      const ys = tf.tensor1d(y, "int32");
      const diagonal = tf.range(0, o.batch, 1, "int32") as tf.Tensor1D;
      let parts: tf.Scalar[] = [];
      const { value, grads } = tf.variableGrads(() => {
        const f = unit(encodeWithWeights(config, state.weights, xs));
        const table = unit(state.classEmbeddings as tf.Tensor2D);
        const s1 = tf.exp(tf.minimum(state.supervisedScale, maxScale));
        const supervised = crossEntropy(tf.mul(tf.matMul(f, table, false, true), s1), ys);
        const f1 = f.slice([0, 0], [o.batch, -1]);
        const f2 = f.slice([o.batch, 0], [o.batch, -1]);
        const s2 = tf.exp(tf.minimum(state.instanceScale, maxScale));
        const logits = tf.mul(tf.matMul(f1, f2, false, true), s2) as tf.Tensor2D;
        const instance = tf.mul(
          tf.add(
            crossEntropy(logits, diagonal),
            crossEntropy(logits.transpose<tf.Tensor2D>(), diagonal),
          ),
          0.5,
        );
        parts = [tf.keep(supervised), tf.keep(instance as tf.Scalar)];
        return tf.add(supervised, tf.mul(instance, o.instanceWeight)) as tf.Scalar;
      }, state.variables);
      optimizer.apply(state.variables.map((v) => grads[v.name]), learningRate(step, o.steps, o.lr));
      const total = (await value.data())[0];
      const [supervisedLoss, instanceLoss] = await Promise.all(
        parts.map(async (t) => (await t.data())[0]),
      );
      tf.dispose([value, grads, xs, ys, diagonal, parts]);
      if (!Number.isFinite(total)) {
        throw new Error(`pretrain: loss became ${total} at step ${step}; lower --lr`);
      }
      stepLosses.push(total);
      window.total += total;
      window.supervised += supervisedLoss;
      window.instance += instanceLoss;
      window.count++;
      const last = step + 1 === o.steps;
      if ((o.logEvery > 0 && (step + 1) % o.logEvery === 0) || last) {
        const c = window.count;
        const entry = {
          step: step + 1,
          loss: window.total / c,
          supervised: window.supervised / c,
          instance: window.instance / c,
        };
        losses.push(entry);
        window = { total: 0, supervised: 0, instance: 0, count: 0 };
        if (o.logEvery > 0) {
          const secs = (performance.now() - started) / 1000;
          console.error(
            `pretrain: step ${entry.step}/${o.steps} loss ${entry.loss.toFixed(4)} ` +
              `(supervised ${entry.supervised.toFixed(4)}, instance ${
                entry.instance.toFixed(4)
              }) ` +
              `lr ${learningRate(step, o.steps, o.lr).toExponential(2)} ${secs.toFixed(0)} s`,
          );
        }
      }
    }
    optimizer.dispose();

    // Pretraining accuracy: the learned class embeddings as prototypes, on held-out t10k images.
    const table = tf.tidy(() => unit(state.classEmbeddings as tf.Tensor2D));
    const pretrainAccuracy = (await evaluate(config, state.weights, table, heldOut)).accuracy;
    table.dispose();

    // Demo prototypes from the prompt images (never in the shipped splits).
    const selection = selectDemoIndices(trLabels, teLabels, o.plan);
    const promptSplit = toRgbSplit(
      subsetOf(
        {
          shape: [selection.prompts.length, side, side],
          data: gather(trImages.data, selection.prompts, per),
        },
        Uint8Array.from(selection.prompts, (i) => trLabels[i]),
        DEMO_SOURCE_LABELS,
      ),
      side,
    );
    const prototypes = meanPrototypes(config, state.weights, promptSplit, DEMO_CLASS_NAMES.length);

    let zeroShot: PretrainResult["zeroShot"];
    if (o.data !== null) {
      const demo = await loadMedMnist(o.data, { classNames: DEMO_CLASS_NAMES }).catch((err) => {
        throw new Error(
          `${o.data}: cannot load the demo data for the zero-shot evaluation ` +
            `(run \`deno task default-data\` first): ${(err as Error).message}`,
        );
      });
      zeroShot = {
        val: await evaluate(config, state.weights, prototypes, demo.val),
        test: await evaluate(config, state.weights, prototypes, demo.test),
      };
    }

    const seconds = (performance.now() - started) / 1000;
    const cpu = process.cpuUsage(cpuStart);
    const cpuSeconds = (cpu.user + cpu.system) / 1e6;
    const load = Deno.loadavg()[0];
    const recipe = { ...o, plan: undefined, logEvery: undefined, out: undefined };
    const out = {
      model: join(o.out, MODEL_FILE),
      prototypes: join(o.out, PROTOTYPES_FILE),
      log: join(o.out, "pretrain_log.json"),
      readme: join(o.out, "README.md"),
    };
    await saveVisionEncoder(out.model, { config, weights: state.weights }, {
      "deer.recipe": JSON.stringify(recipe),
      "deer.pretrain_classes": JSON.stringify(PRETRAIN_CLASS_NAMES),
      "deer.command": "deno task pretrain",
    });
    // The clients' step, timed on the saved model as a federated run loads it.
    let loraStep: StepTiming | undefined;
    if (o.timeLoraStep) {
      const encoder = await loadVisionEncoder(out.model);
      try {
        loraStep = await timeLoraStep(encoder, prototypes);
      } finally {
        encoder.dispose();
      }
    }
    await savePrototypes(out.prototypes, prototypes, DEMO_CLASS_NAMES);
    prototypes.dispose();
    const result: PretrainResult = {
      config,
      losses,
      stepLosses,
      pretrainAccuracy,
      zeroShot,
      seconds,
      cpuSeconds,
      load,
      loraStep,
      files: out,
    };
    await writeJsonAtomic(out.log, {
      recipe,
      config,
      backend: tf.getBackend(),
      seconds,
      cpuSeconds,
      load,
      pretrainAccuracy,
      zeroShot,
      loraStep,
      losses,
      stepLosses: stepLosses.map((x) => Number(x.toFixed(4))),
      promptSourceIndex: selection.prompts,
    });
    const params = state.variables.slice(0, -3).reduce((a, v) => a + v.size, 0);
    await writeFileAtomic(
      out.readme,
      await formatMarkdown(readme(result, o, {
        params,
        bytes: (await Deno.stat(out.model)).size,
        packageVersion: await fashionMnistPackageVersion(),
        promptCount: o.plan.promptsPerClass,
      })),
    );
    return result;
  } finally {
    tf.dispose(state.variables);
  }
}

function gather(data: Uint8Array, indices: number[], per: number): Uint8Array {
  const out = new Uint8Array(indices.length * per);
  indices.forEach((src, i) => out.set(data.subarray(src * per, (src + 1) * per), i * per));
  return out;
}

/**
 * `text` formatted as `deno fmt` formats Markdown under this repository's settings, so that the
 * generated README passes `deno fmt --check`; unchanged if the formatter cannot run.
 */
async function formatMarkdown(text: string): Promise<string> {
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["fmt", "--ext", "md", "-"],
      cwd: new URL("..", import.meta.url).pathname,
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(text));
    await writer.close();
    const { success, stdout } = await child.output();
    return success ? new TextDecoder().decode(stdout) : text;
  } catch {
    return text;
  }
}

function pct(x: number): string {
  return `${(100 * x).toFixed(1)} %`;
}

function readme(
  r: PretrainResult,
  o: PretrainOptions,
  info: { params: number; bytes: number; packageVersion: string; promptCount: number },
): string {
  const c = r.config;
  const grid = c.imageSize / c.patchSize;
  const last = r.losses[r.losses.length - 1];
  const z = r.zeroShot;
  const flags =
    (["seed", "steps", "batch", "lr", "patch", "width", "layers", "heads", "embed"] as const)
      .filter((k) => o[k] !== DEFAULT_PRETRAIN[k]).map((k) => ` --${k} ${o[k]}`).join("");
  return `# Default foundation model: \`${MODEL_FILE}\`

A small CLIP-style ViT image tower, pretrained by \`deno task pretrain\` on four Fashion-MNIST
classes (${PRETRAIN_CLASS_NAMES.join(", ")}) so that the toolkit's demo — the six *other* classes
(${DEMO_CLASS_NAMES.join(", ")}; \`data/default/\`) — runs out of the box on a backbone that has
never seen a demo-task image. It plays the part BiomedCLIP plays in the paper; \`${PROTOTYPES_FILE}\`
plays the part of its text prototypes. This file is written by the task; do not edit it by hand.

## Files

| file | content |
|---|---|
| \`${MODEL_FILE}\` | image tower, open_clip OpenAI layout (\`visual.conv1.weight\`, \`visual.transformer.resblocks.{i}.attn.in_proj_weight\`, …, \`visual.proj\`), float32, ${
    (info.bytes / 1e6).toFixed(2)
  } MB; metadata \`deer.vision\` = heads/act/ε, so \`loadVisionEncoder(path)\` needs no options; \`deer.recipe\` = the flags below |
| \`${PROTOTYPES_FILE}\` | demo class prototypes [${DEMO_CLASS_NAMES.length}, ${c.embedDim}], L2-normalised rows, class names in label order (\`loadPrototypes\`) |
| \`pretrain_log.json\` | recipe, loss curve, metrics, the prompt images' source indices |

## Architecture

| | |
|---|---|
| input | ${c.imageSize}×${c.imageSize}×3: the grey image replicated to RGB, CLIP mean/std normalisation (as the toolkit feeds every image) |
| patch embedding | ${c.patchSize}×${c.patchSize} patches (conv1, no bias) → ${grid}×${grid} = ${
    grid * grid
  } tokens + class token, learned position embeddings |
| transformer | ln_pre, ${c.layers} pre-LN blocks, width ${c.width}, ${c.heads} heads of ${
    c.width / c.heads
  }, MLP ${c.mlpDim}, ${
    c.act === "quick_gelu" ? "QuickGELU (x·σ(1.702x), as OpenAI CLIP)" : "GELU"
  }, LayerNorm ε ${c.lnEps} |
| output | ln_post on the class token, then \`proj\` ${c.width}→${c.embedDim} (embedDim ${c.embedDim}) |
| parameters | ${info.params.toLocaleString("en-US")} |

## Pretraining recipe

* Data: every image of ${
    PRETRAIN_CLASS_NAMES.join(", ")
  } in \`train-images-idx3-ubyte.gz\` of Debian's
  \`dataset-fashion-mnist\` (${info.packageVersion}; upstream github.com/zalandoresearch/fashion-mnist,
  © 2017 Zalando SE, MIT/Expat licence — see \`data/default/LICENSE\`). Accuracy is measured on
  the same classes' images in \`t10k-images-idx3-ubyte.gz\`. No image of a demo class is trained on.
* Two augmented views per image: random resized crop (area 55–100 %, aspect 3/4–4/3, bilinear),
  horizontal flip, brightness × U(0.7, 1.15).
* Loss = supervised + ${o.instanceWeight} × instance. Supervised: cross-entropy of
  \`exp(s₁)·normalize(f(x))·normalize(W)ᵀ\` with W the ${PRETRAIN_CLASS_NAMES.length} learnable class embeddings (a
  "text tower" reduced to a table). Instance: CLIP's symmetric InfoNCE between the two views of
  the batch (\`exp(s₂)·f₁·f₂ᵀ\`, diagonal targets) — it keeps within-class detail in the features,
  which is what transfers to unseen classes. s₁, s₂ learnable, init ln(1/0.07), clamped at ln 100.
* All weights trained (\`tf.grads\` through \`encodeWithWeights\`), CLIP-style initialisation
  (\`randomVitWeights\`). AdamW β = (0.9, 0.98), ε = 1e-6, weight decay ${o.weightDecay} on matrices,
  peak lr ${o.lr}, 5 % linear warm-up then cosine to 5 %. ${o.steps} steps × ${o.batch} images
  (two views each); seed ${o.seed} (initialisation, batch order, augmentation).
* Final training loss ${last ? last.loss.toFixed(3) : "n/a"} (supervised ${
    last ? last.supervised.toFixed(3) : "n/a"
  }, instance ${last ? last.instance.toFixed(3) : "n/a"}).

## Demo prototypes (the analogue of CLIP's text prototypes)

For each demo class, ${info.promptCount} "prompt" images from \`train-images-idx3-ubyte.gz\`, chosen by
\`selectDemoIndices\` in \`tasks/default_data.ts\` (seed ${o.plan.seed}: after the class's shuffled
indices give 400 train and 100 val images, the next ${o.plan.promptsPerClass}), so they are disjoint from
every shipped split (the test split comes from the t10k file). Each prompt image is encoded
without augmentation; the prototype is the L2-normalised mean of the L2-normalised features.
Their source indices are in \`pretrain_log.json\` and \`data/default/fashion6.json\`.

## Measured

The whole task took ${r.seconds.toFixed(0)} s wall time and ${
    r.cpuSeconds.toFixed(0)
  } s of process CPU time on the
\`${tf.getBackend()}\` backend (2-core machine; 1-minute load average ${
    r.load.toFixed(1)
  } at the end — other processes
sharing the cores stretch the wall time).

| | accuracy | macro F1 |
|---|---|---|
| pretraining classes, t10k held-out (${PRETRAIN_CLASS_NAMES.length}-way, learned class embeddings) | ${
    pct(r.pretrainAccuracy)
  } | |
| demo val, frozen model + prototypes (zero-shot, ${DEMO_CLASS_NAMES.length}-way) | ${
    z ? pct(z.val.accuracy) : "n/a"
  } | ${z ? pct(z.val.f1) : "n/a"} |
| demo test, frozen model + prototypes (zero-shot, ${DEMO_CLASS_NAMES.length}-way) | ${
    z ? pct(z.test.accuracy) : "n/a"
  } | ${z ? pct(z.test.f1) : "n/a"} |

## Speed

${
    r.loraStep
      ? `One federated client step on this model — batch ${r.loraStep.batch}, LoRA r = ${r.loraStep.rank} on q, k, v of all
${c.layers} blocks, gradients w.r.t. every A, B and the logit scale, SGD with momentum — took
${r.loraStep.wallMs.toFixed(1)} ms wall (median of 5 × 10 steps) and ${
        r.loraStep.cpuMs.toFixed(1)
      } ms of process CPU time
on the machine that trained it (1-minute load average ${r.loraStep.load[0].toFixed(1)} → ${
        r.loraStep.load[1].toFixed(1)
      };
wall time grows with the load of other processes).`
      : "Not measured (`timeLoraStep` off)."
  }

## Reproduce

\`\`\`sh
deno task default-data   # data/default/fashion6.npz, byte-identical
deno task pretrain${flags}
\`\`\`

The run is seeded; the weights are reproducible on the same backend and machine type (float
round-off in libtensorflow's kernels can differ across CPUs and thread counts, and with it the
last digits of the metrics).
`;
}

// ---------------------------------------------------------------------------------------------
// Command line

const USAGE = `Usage: deno task pretrain [flags]

Pretrains the default CLIP-style ViT on Fashion-MNIST's Trouser, Dress, Sandal and Bag images
and builds the demo task's class prototypes. Writes models/default/.

  --source DIR    Fashion-MNIST IDX folder (default ${DEFAULT_PRETRAIN.source})
  --data FILE     demo npz for the zero-shot report (default ${DEFAULT_PRETRAIN.data}; "none" skips)
  --out DIR       output folder (default ${DEFAULT_PRETRAIN.out})
  --seed N        (default ${DEFAULT_PRETRAIN.seed})
  --steps N       optimiser steps (default ${DEFAULT_PRETRAIN.steps})
  --batch N       images per step, two views each (default ${DEFAULT_PRETRAIN.batch})
  --lr X          peak learning rate (default ${DEFAULT_PRETRAIN.lr})
  --patch N --width N --layers N --heads N --embed N
                  architecture (default ${DEFAULT_PRETRAIN.patch}, ${DEFAULT_PRETRAIN.width}, ${DEFAULT_PRETRAIN.layers}, ${DEFAULT_PRETRAIN.heads}, ${DEFAULT_PRETRAIN.embed})
  --help          this text`;

const NUMERIC = [
  "seed",
  "steps",
  "batch",
  "lr",
  "patch",
  "width",
  "layers",
  "heads",
  "embed",
] as const;

if (import.meta.main) {
  const flags = parseCommandArgs("pretrain", USAGE, Deno.args, {
    string: ["source", "data", "out", ...NUMERIC],
  }, noPositionals);
  const options: PretrainOptions = { ...DEFAULT_PRETRAIN };
  if (flags.source !== undefined) options.source = flags.source as string;
  if (flags.out !== undefined) options.out = flags.out as string;
  if (flags.data !== undefined) options.data = flags.data === "none" ? null : flags.data as string;
  for (const key of NUMERIC) {
    if (flags[key] === undefined) continue;
    const value = Number(flags[key]);
    if (!Number.isFinite(value) || value <= 0 || (key !== "lr" && !Number.isInteger(value))) {
      usageExit(
        "pretrain",
        `--${key} ${flags[key]} must be a positive ${key === "lr" ? "number" : "integer"}`,
      );
    }
    options[key] = value;
  }
  const r = await pretrainVit(options);
  console.log(
    `pretrained in ${r.seconds.toFixed(0)} s: pretraining accuracy ${pct(r.pretrainAccuracy)}` +
      (r.zeroShot
        ? `; zero-shot demo val ${pct(r.zeroShot.val.accuracy)}, test ${
          pct(r.zeroShot.test.accuracy)
        }`
        : "") +
      `\nwrote ${Object.values(r.files).join(", ")}`,
  );
}
