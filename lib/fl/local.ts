/**
 * Local training of one client (docs/protocol.md#local-training): SGD with momentum and weight
 * decay (PyTorch semantics: `d = g + wd·θ; buf = μ·buf + d; θ ← θ − lr·buf`) on the cross-entropy
 * of the prototype head, training only the factors the phase names plus the local `logit_scale`.
 *
 * The frozen backbone is shared by every client; a client brings only its factors, its data
 * indices and (optionally) its momentum buffers. All tensors made here are disposed before the
 * function returns, so repeated calls do not grow `tf.memory().numTensors`.
 *
 * @example
 * ```ts
 * import { loadInputs } from "../experiment.ts";
 * import { initLora } from "../model/lora.ts";
 * import { createRng } from "../rng.ts";
 * const { backbone, data, dispose } = await loadInputs({ dataset: "default", rank: 8, alpha: 8 });
 * const out = await trainLocal(backbone, {
 *   split: data.train,
 *   indices: [0, 1, 2, 3, 4, 5, 6, 7],
 *   start: initLora(backbone.vision.config, 8, createRng(1)),
 *   train: ["B"],
 *   epochs: 1,
 *   batchSize: 4,
 *   sgd: { lr: 0.01, momentum: 0.9, weightDecay: 5e-4 },
 *   logitScale: Math.log(1 / 0.07),
 *   dynamicRank: false,
 *   rng: createRng(2),
 * });
 * out.loss; // mean over epochs of the mean batch loss
 * dispose();
 * ```
 * @module
 */
import { tf } from "../backend.ts";
import type { Rng } from "../rng.ts";
import type { ImageSplit } from "../data/dataset.ts";
import { batchIndices, makeBatch } from "../data/batches.ts";
import type { Factor } from "./factors.ts";
import { cloneFactors, factorRank, type LoraDims, type LoraFactors } from "./factors.ts";
import { packedLora } from "../model/lora.ts";
import {
  wgslKernelsEnabled,
  wgslPrototypeFits,
  wgslPrototypeLoss,
  wgslSgdStep,
} from "../webgpu_kernels.ts";

/** What local training needs from the model: the frozen encoder and the fixed class prototypes. */
export interface Backbone {
  /** The frozen image encoder; `encode` applies LoRA factors given as tensors. */
  encoder: {
    encode(
      x: tf.Tensor,
      lora?: {
        A: tf.Tensor2D[];
        B: tf.Tensor2D[];
        scale: number;
        residual?: tf.Tensor2D[];
        trainable?: readonly Factor[];
      },
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

/** Optimiser settings of local training (docs/protocol.md#defaults: 0.01, 0.9, 5e-4). */
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
  /** DP-DyLoRA: draw a rank prefix ρ+1 before every epoch (docs/method.md#dp-dylora). */
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
  /**
   * Optimiser steps taken: 0 for a client that holds no images (its `loss` is then 0 and left
   * out of the round's training loss); NaN where unknown (a remote site that did not say).
   */
  steps: number;
}

/**
 * Cross-entropy of `exp(logitScale)·normalize(features)·Tᵀ` against integer labels, averaged
 * over the batch. Differentiable with respect to `features` and `logitScale` through a
 * hand-written gradient (a dozen kernels instead of autodiff's ~50 on small tensors):
 * with p = softmax(logits) and u = f/‖f‖, ∂/∂logits = (p − onehot)/N,
 * ∂/∂logitScale = Σ ∂logits·logits, ∂/∂f = (g − u·⟨g, u⟩)/‖f‖ for g = ∂/∂u.
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const features = tf.tensor2d([[1, 0], [0, 2]]);
 * const prototypes = tf.tensor2d([[1, 0], [0, 1]]); // unit rows
 * const labels = tf.tensor1d([0, 1], "int32");
 * const loss = prototypeLoss(features, prototypes, tf.scalar(Math.log(1 / 0.07)), labels);
 * loss.dataSync()[0]; // ≈ 0: each feature points at its own prototype
 * tf.dispose([features, prototypes, labels, loss]);
 * ```
 */
export function prototypeLoss(
  features: tf.Tensor2D,
  prototypes: tf.Tensor2D,
  logitScale: tf.Scalar,
  labels: tf.Tensor1D,
): tf.Scalar {
  const [n, d] = features.shape;
  // On webgpu the same loss and gradients in three fused kernels (lib/webgpu_kernels.ts).
  if (labels.dtype === "int32" && wgslPrototypeFits(n, prototypes.shape[0], d)) {
    return wgslPrototypeLoss(features, prototypes, logitScale, labels);
  }
  const loss = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [f, ls] = args as tf.Tensor[];
    const save = args[2] as tf.GradSaveFunc;
    const invNorm = tf.rsqrt(tf.sum(tf.square(f), 1, true));
    const unit = tf.mul(f, invNorm);
    const scale = tf.exp(ls);
    const logits = tf.mul(tf.matMul(unit, prototypes, false, true), scale);
    const logProbs = tf.logSoftmax(logits);
    const oneHot = tf.oneHot(labels, prototypes.shape[0]);
    save([unit, invNorm, logits, logProbs, oneHot, scale]);
    return {
      value: tf.div(tf.neg(tf.sum(tf.mul(oneHot, logProbs))), n) as tf.Scalar,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [unit, invNorm, logits, logProbs, oneHot, scale] = saved;
        const dLogits = tf.mul(tf.sub(tf.exp(logProbs), oneHot), tf.div(dy, n));
        const dScale = tf.sum(tf.mul(dLogits, logits));
        const dUnit = tf.matMul(tf.mul(dLogits, scale), prototypes);
        const along = tf.sum(tf.mul(dUnit, unit), 1, true);
        return [tf.mul(tf.sub(dUnit, tf.mul(unit, along)), invNorm), dScale];
      },
    };
  });
  return loss(features, logitScale) as tf.Scalar;
}

/** What a {@link LocalTrainer} starts from: the factors, what to train, the optimiser. */
export type TrainerJob = Pick<
  LocalJob,
  "start" | "train" | "sgd" | "logitScale" | "momentum" | "residual"
>;

/** DP-DyLoRA's rank masks for one epoch (see {@link rankMasks}). */
export interface RankMasks {
  a: tf.Tensor2D;
  b: tf.Tensor2D;
}

/**
 * One client's trainable state on the device and the SGD step on it — the inner loop of
 * {@link trainLocal}, callable on its own (benchmarks, tests).
 */
export interface LocalTrainer {
  /**
   * One SGD step on the batch (`x` normalised pixels, `y` labels); resolves to the batch loss.
   * The step's kernels are queued and the trainer's state has moved on when it returns: the next
   * step may be called before this promise settles (the batch tensors may be disposed then too).
   */
  step(x: tf.Tensor, y: tf.Tensor1D, masks?: RankMasks | null): Promise<number>;
  /** The factors (start factors with the trained ones replaced) and momentum buffers now. */
  read(): Promise<{ factors: LoraFactors; momentum: Float32Array[] }>;
  /** Frees every tensor the trainer holds. */
  dispose(): void;
}

/**
 * Uploads a client's factors and optimiser state and returns its {@link LocalTrainer}.
 *
 * @example
 * ```ts
 * import { loadInputs } from "../experiment.ts";
 * import { makeBatch } from "../data/batches.ts";
 * import { initLora } from "../model/lora.ts";
 * import { createRng } from "../rng.ts";
 * const { backbone, data, dispose } = await loadInputs({ dataset: "default", rank: 8, alpha: 8 });
 * const trainer = createLocalTrainer(backbone, {
 *   start: initLora(backbone.vision.config, 8, createRng(1)),
 *   train: ["B"],
 *   sgd: { lr: 0.01, momentum: 0.9, weightDecay: 5e-4 },
 *   logitScale: Math.log(1 / 0.07),
 * });
 * const { x, y } = makeBatch(data.train, [0, 1, 2, 3], normalizationFor(backbone, data.train));
 * const loss = await trainer.step(x, y);
 * const { factors } = await trainer.read(); // B trained, A as it started
 * trainer.dispose();
 * x.dispose();
 * y.dispose();
 * dispose();
 * ```
 */
export function createLocalTrainer(backbone: Backbone, job: TrainerJob): LocalTrainer {
  const { dims } = backbone;
  const n = dims.adapters;
  const trainA = job.train.includes("A");
  const trainB = job.train.includes("B");
  // The client's rank comes from its factors (it may differ from the backbone's: FLoRA).
  const rank = factorRank(job.start, dims);
  const shapeOf = (which: Factor): [number, number, number] =>
    which === "A" ? [n, rank, dims.dIn] : [n, dims.dOut, rank];
  // All adapters of one kind as one tensor [adapters, rows, cols]: one SGD update per kind.
  const stack = (list: readonly Float32Array[], which: Factor) => {
    const [, rows, cols] = shapeOf(which);
    const data = new Float32Array(n * rows * cols);
    list.forEach((a, i) => data.set(a, i * rows * cols));
    return tf.tensor3d(data, shapeOf(which));
  };
  const trainedCount = (trainA ? n : 0) + (trainB ? n : 0) + 1;
  if (job.momentum !== undefined && job.momentum.length !== trainedCount) {
    throw new Error(
      `momentum state has ${job.momentum.length} buffers; this phase trains ${trainedCount} tensors`,
    );
  }
  // Trainable parameters in a fixed order: A (all adapters), then B, then logit_scale.
  const kinds: Factor[] = [...(trainA ? ["A" as const] : []), ...(trainB ? ["B" as const] : [])];
  let params: tf.Tensor[] = [
    ...kinds.map((which) => stack(which === "A" ? job.start.A : job.start.B, which)),
    tf.scalar(job.logitScale),
  ];
  // Momentum buffers come and go as one host array per adapter (A's, then B's, then the scale).
  let buffers: tf.Tensor[] = job.momentum
    ? [
      ...kinds.map((which, j) => stack(job.momentum!.slice(j * n, (j + 1) * n), which)),
      tf.scalar(job.momentum[job.momentum.length - 1][0]),
    ]
    : params.map((p) => tf.zerosLike(p));
  const frozenA = trainA ? null : stack(job.start.A, "A");
  const frozenB = trainB ? null : stack(job.start.B, "B");
  const residual = job.residual?.map((r) => tf.tensor2d(r, [dims.dOut, dims.dIn]));
  const { lr, momentum: mu, weightDecay: wd } = job.sgd;
  return {
    async step(x, y, masks) {
      const lossFn = (...ps: tf.Tensor[]) => {
        let A = trainA ? ps[0] : frozenA!;
        let B = trainB ? ps[trainA ? 1 : 0] : frozenB!;
        if (masks) {
          A = tf.mul(A, masks.a);
          B = tf.mul(B, masks.b);
        }
        // Stacked as the parameters are: the fast path takes them without slicing them apart.
        const feats = backbone.encoder.encode(
          x,
          packedLora(A as tf.Tensor3D, B as tf.Tensor3D, {
            scale: backbone.loraScale,
            residual,
            trainable: job.train,
          }),
        );
        return prototypeLoss(feats, backbone.prototypes, ps[ps.length - 1] as tf.Scalar, y);
      };
      const { value, grads } = tf.valueAndGrads(lossFn)(params);
      // PyTorch SGD: d = g + wd·θ; buf = μ·buf + d; θ ← θ − lr·buf (two WGSL kernels on webgpu).
      const next = tf.tidy(() =>
        params.map((p, i) => {
          if (wgslKernelsEnabled()) {
            return wgslSgdStep(p, grads[i], buffers[i], { lr, momentum: mu, weightDecay: wd });
          }
          const d = wd === 0 ? grads[i] : tf.add(grads[i], tf.mul(p, wd));
          // The new buffer must be a tensor of its own: the gradients are disposed below, and
          // with μ = 0 and no weight decay d is the gradient itself.
          const buf = mu === 0
            ? (d === grads[i] ? tf.clone(d) : d)
            : tf.add(tf.mul(buffers[i], mu), d);
          return [tf.sub(p, tf.mul(buf, lr)), buf];
        })
      );
      // The state moves on before the loss is read: every kernel of this step is queued when
      // step() returns its promise, so a caller may queue the next step while a GPU runs this
      // one (trainLocal keeps one step in flight).
      tf.dispose([grads, params, buffers]);
      params = next.map((pb) => pb[0]);
      buffers = next.map((pb) => pb[1]);
      try {
        return (await value.data())[0];
      } finally {
        value.dispose();
      }
    },
    async read() {
      const factors = cloneFactors(job.start);
      const momentum: Float32Array[] = [];
      for (const [j, which] of kinds.entries()) {
        const [, rows, cols] = shapeOf(which);
        const size = rows * cols;
        const values = await params[j].data() as Float32Array;
        const moments = await buffers[j].data() as Float32Array;
        for (let i = 0; i < n; i++) {
          (which === "A" ? factors.A : factors.B)[i] = values.slice(i * size, (i + 1) * size);
          momentum.push(moments.slice(i * size, (i + 1) * size));
        }
      }
      momentum.push((await buffers[buffers.length - 1].data()).slice() as Float32Array);
      return { factors, momentum };
    },
    dispose() {
      tf.dispose([params, buffers, frozenA ?? [], frozenB ?? [], residual ?? []]);
    },
  };
}

/** Trains one client for `job.epochs` epochs and returns its new factors (host arrays). */
export async function trainLocal(backbone: Backbone, job: LocalJob): Promise<LocalResult> {
  const { dims } = backbone;
  const trainer = createLocalTrainer(backbone, job);
  const norm = normalizationFor(backbone, job.split);
  let lossSum = 0;
  let steps = 0;
  try {
    for (let epoch = 0; epoch < job.epochs; epoch++) {
      // DP-DyLoRA: keep the first ρ+1 rank components, each factor scaled by √(r/(ρ+1)).
      const rank = factorRank(job.start, dims);
      const masks = job.dynamicRank ? rankMasks(rank, job.rng.int(rank)) : null;
      let epochLoss = 0;
      let batches = 0;
      // One step in flight: step k+1 is queued before step k's loss is awaited, so that on a GPU
      // the host dispatches the next step's kernels while the device runs this one (on the CPU
      // backends the loss is ready at once). Losses are summed in step order, as before.
      let inFlight: Promise<number> | null = null;
      try {
        for (const idx of batchIndices(job.indices, job.batchSize, { rng: job.rng })) {
          const { x, y } = makeBatch(job.split, idx, norm);
          let queued: Promise<number>;
          try {
            queued = trainer.step(x, y, masks);
            // Handled here, awaited below: a failure surfaces at its await, not as an
            // unhandled rejection while the previous step is awaited.
            queued.catch(() => {});
          } finally {
            tf.dispose([x, y]);
          }
          const previous = inFlight;
          inFlight = queued;
          if (previous) epochLoss += await previous;
          batches++;
          steps++;
        }
        if (inFlight) epochLoss += await inFlight;
        inFlight = null;
      } finally {
        // A step that failed while another was in flight: settle it before the tensors go.
        await inFlight?.catch(() => {});
        masks?.a.dispose();
        masks?.b.dispose();
      }
      lossSum += batches > 0 ? epochLoss / batches : 0;
    }
    const { factors, momentum } = await trainer.read();
    return { factors, loss: job.epochs > 0 ? lossSum / job.epochs : 0, momentum, steps };
  } finally {
    trainer.dispose();
  }
}

/** Masks for a rank prefix of length `rho + 1`, scaled by √(r/(ρ+1)) (docs/method.md#dp-dylora). */
export function rankMasks(rank: number, rho: number): RankMasks {
  const scale = Math.sqrt(rank / (rho + 1));
  const m = Array.from({ length: rank }, (_, c) => (c <= rho ? scale : 0));
  return { a: tf.tensor2d(m, [rank, 1]), b: tf.tensor2d(m, [1, rank]) };
}
