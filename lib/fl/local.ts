/**
 * Local training of one client (SPEC §2, §3): SGD with momentum and weight decay (PyTorch
 * semantics: `d = g + wd·θ; buf = μ·buf + d; θ ← θ − lr·buf`) on the cross-entropy of the
 * prototype head, training only the factors the phase names plus the local `logit_scale`.
 *
 * The frozen backbone is shared by every client; a client brings only its factors, its data
 * indices and (optionally) its momentum buffers. All tensors made here are disposed before the
 * function returns, so repeated calls do not grow `tf.memory().numTensors`.
 *
 * @example
 * ```ts
 * const out = trainLocal(backbone, { split, indices, start: global, train: ["B"], ... });
 * out.loss; // mean over epochs of the mean batch loss
 * ```
 * @module
 */
import { tf } from "../backend.ts";
import type { Rng } from "../rng.ts";
import type { ImageSplit } from "../data/dataset.ts";
import { batchIndices, makeBatch } from "../data/batches.ts";
import type { Factor } from "./methods.ts";
import { cloneFactors, type LoraDims, type LoraFactors } from "./factors.ts";

/** What local training needs from the model: the frozen encoder and the fixed class prototypes. */
export interface Backbone {
  /** The frozen image encoder; `encode` applies LoRA factors given as tensors. */
  encoder: {
    encode(
      x: tf.Tensor,
      lora?: { A: tf.Tensor2D[]; B: tf.Tensor2D[]; scale: number; residual?: tf.Tensor2D[] },
    ): tf.Tensor2D;
  };
  /** Class prototypes, C×e, L2-normalised rows. */
  prototypes: tf.Tensor2D;
  /** LoRA scaling `s = alpha/r`. */
  loraScale: number;
  /** Adapter shapes. */
  dims: LoraDims;
  /** Per-channel normalisation applied when a batch is formed. */
  normalize: { mean: readonly number[]; std: readonly number[] };
}

/**
 * The per-channel normalisation for `split`: the backbone's, or its channel average for
 * single-channel data (volumes), which equals normalising the grey value replicated to RGB
 * up to the spread of the three channel statistics.
 */
export function normalizationFor(
  backbone: Backbone,
  split: ImageSplit,
): { mean: number[]; std: number[] } {
  const channels = split.sampleShape[split.sampleShape.length - 1];
  const { mean, std } = backbone.normalize;
  if (channels === mean.length) return { mean: [...mean], std: [...std] };
  if (channels === 1) {
    const avg = (v: readonly number[]) => v.reduce((a, b) => a + b, 0) / v.length;
    return { mean: [avg(mean)], std: [avg(std)] };
  }
  throw new Error(
    `data has ${channels} channels but the model normalises ${mean.length}; use 1 or ${mean.length}`,
  );
}

/** Optimiser settings of local training (SPEC §2 defaults: 0.01, 0.9, 5e-4). */
export interface SgdOptions {
  lr: number;
  momentum: number;
  weightDecay: number;
}

/** One client's local-training job. */
export interface LocalJob {
  split: ImageSplit;
  indices: readonly number[];
  /** The factors the client starts from (the global ones, or its own for kept-local factors). */
  start: LoraFactors;
  /** Factors trained in this phase; the others stay fixed. */
  train: readonly Factor[];
  epochs: number;
  batchSize: number;
  sgd: SgdOptions;
  /** `logit_scale` the server hands out; trained locally, never aggregated. */
  logitScale: number;
  /** DP-DyLoRA: draw a rank prefix ρ+1 before every epoch (SPEC §3). */
  dynamicRank: boolean;
  /** Seeded stream for batch order and DyLoRA ranks. */
  rng: Rng;
  /** Momentum buffers to continue from (reference behaviour for baselines), else zeros. */
  momentum?: Float32Array[];
  /** FedEx-LoRA: dense updates folded into the frozen q/k/v weights (dOut×dIn per adapter). */
  residual?: Float32Array[];
}

/** The result of local training. */
export interface LocalResult {
  factors: LoraFactors;
  /** Mean over epochs of the mean batch loss (as the reference reports it). */
  loss: number;
  /** Momentum buffers after training, one per trained tensor (factors, then logit_scale). */
  momentum: Float32Array[];
  steps: number;
}

/** Cross-entropy of `exp(logitScale)·normalize(features)·Tᵀ` against integer labels. */
export function prototypeLoss(
  features: tf.Tensor2D,
  prototypes: tf.Tensor2D,
  logitScale: tf.Scalar,
  labels: tf.Tensor1D,
): tf.Scalar {
  return tf.tidy(() => {
    const unit = tf.div(features, tf.norm(features, "euclidean", 1, true));
    const logits = tf.mul(tf.exp(logitScale), tf.matMul(unit, prototypes, false, true));
    const oneHot = tf.oneHot(labels, prototypes.shape[0]);
    const logProbs = tf.logSoftmax(logits);
    return tf.neg(tf.mean(tf.sum(tf.mul(oneHot, logProbs), 1))) as tf.Scalar;
  });
}

/** Trains one client for `job.epochs` epochs and returns its new factors (host arrays). */
export function trainLocal(backbone: Backbone, job: LocalJob): LocalResult {
  const { dims } = backbone;
  const trainA = job.train.includes("A");
  const trainB = job.train.includes("B");
  const toTensor = (data: Float32Array, which: Factor) =>
    tf.tensor2d(data, which === "A" ? [dims.rank, dims.dIn] : [dims.dOut, dims.rank]);
  // Trainable parameters in a fixed order: A[0..n), then B[0..n), then logit_scale.
  let params: tf.Tensor[] = [
    ...(trainA ? job.start.A.map((a) => toTensor(a, "A")) : []),
    ...(trainB ? job.start.B.map((b) => toTensor(b, "B")) : []),
    tf.scalar(job.logitScale),
  ];
  const frozenA = trainA ? [] : job.start.A.map((a) => toTensor(a, "A"));
  const frozenB = trainB ? [] : job.start.B.map((b) => toTensor(b, "B"));
  const residual = job.residual?.map((r) => tf.tensor2d(r, [dims.dOut, dims.dIn]));
  if (job.momentum !== undefined && job.momentum.length !== params.length) {
    throw new Error(
      `momentum state has ${job.momentum.length} buffers; this phase trains ${params.length} tensors`,
    );
  }
  let buffers: tf.Tensor[] = params.map((p, i) =>
    job.momentum ? tf.tensor(job.momentum[i], p.shape) : tf.zerosLike(p)
  );
  const n = dims.adapters;
  const { lr, momentum: mu, weightDecay: wd } = job.sgd;
  let lossSum = 0;
  let steps = 0;
  try {
    for (let epoch = 0; epoch < job.epochs; epoch++) {
      // DP-DyLoRA: keep the first ρ+1 rank components, each factor scaled by √(r/(ρ+1)).
      const masks = job.dynamicRank ? rankMasks(dims.rank, job.rng.int(dims.rank)) : null;
      let epochLoss = 0;
      let batches = 0;
      for (const idx of batchIndices(job.indices, job.batchSize, { rng: job.rng })) {
        const { x, y } = makeBatch(job.split, idx, normalizationFor(backbone, job.split));
        const lossFn = (...ps: tf.Tensor[]) => {
          let k = 0;
          let A = trainA ? ps.slice(0, n) as tf.Tensor2D[] : frozenA;
          k = trainA ? n : 0;
          let B = trainB ? ps.slice(k, k + n) as tf.Tensor2D[] : frozenB;
          if (masks) {
            A = A.map((a) => tf.mul(a, masks.a));
            B = B.map((b) => tf.mul(b, masks.b));
          }
          const feats = backbone.encoder.encode(x, { A, B, scale: backbone.loraScale, residual });
          return prototypeLoss(feats, backbone.prototypes, ps[ps.length - 1] as tf.Scalar, y);
        };
        const { value, grads } = tf.valueAndGrads(lossFn)(params);
        const next = tf.tidy(() =>
          params.map((p, i) => {
            const d = wd === 0 ? grads[i] : tf.add(grads[i], tf.mul(p, wd));
            const buf = mu === 0 ? d : tf.add(tf.mul(buffers[i], mu), d);
            return [tf.sub(p, tf.mul(buf, lr)), buf];
          })
        );
        epochLoss += value.dataSync()[0];
        batches++;
        tf.dispose([value, grads, x, y, params, buffers]);
        params = next.map((pb) => pb[0]);
        buffers = next.map((pb) => pb[1]);
        steps++;
      }
      masks?.a.dispose();
      masks?.b.dispose();
      lossSum += batches > 0 ? epochLoss / batches : 0;
    }
    const out = cloneFactors(job.start);
    let k = 0;
    if (trainA) {
      for (let i = 0; i < n; i++) out.A[i] = params[k++].dataSync().slice() as Float32Array;
    }
    if (trainB) {
      for (let i = 0; i < n; i++) out.B[i] = params[k++].dataSync().slice() as Float32Array;
    }
    return {
      factors: out,
      loss: job.epochs > 0 ? lossSum / job.epochs : 0,
      momentum: buffers.map((b) => b.dataSync().slice() as Float32Array),
      steps,
    };
  } finally {
    tf.dispose([params, buffers, frozenA, frozenB, residual ?? []]);
  }
}

/** Masks for a rank prefix of length `rho + 1`, scaled by √(r/(ρ+1)) (SPEC §3, DP-DyLoRA). */
function rankMasks(rank: number, rho: number): { a: tf.Tensor2D; b: tf.Tensor2D } {
  const scale = Math.sqrt(rank / (rho + 1));
  const m = Array.from({ length: rank }, (_, c) => (c <= rho ? scale : 0));
  return { a: tf.tensor2d(m, [rank, 1]), b: tf.tensor2d(m, [1, rank]) };
}
