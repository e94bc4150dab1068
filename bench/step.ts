/**
 * What the benchmarks build again and again: the LoRA training step they time and profile, the
 * generated images it trains on, and the kernels of a `tf.profile` that count as kernels.
 *
 * @example
 * ```ts
 * const encoder = createVitEncoder(TINY_VIT, randomVitWeights(TINY_VIT, createRng(1)));
 * const split = patternSplit(32, [28, 28, 3], 6);
 * const bench = loraStepBench(encoder, split, { classes: 6, rank: 8, alpha: 16 });
 * const loss = await bench.step();
 * bench.dispose();
 * encoder.dispose();
 * ```
 * @module
 */
import { tf } from "../lib/backend.ts";
import type { ImageSplit } from "../lib/data/dataset.ts";
import { makeBatch } from "../lib/data/batches.ts";
import type { VisionEncoder } from "../lib/model/vit.ts";
import { orthonormalPrototypes } from "../lib/model/head.ts";
import { initLora } from "../lib/model/lora.ts";
import { makeBackbone } from "../lib/fl/backbone.ts";
import type { Factor } from "../lib/fl/factors.ts";
import { createLocalTrainer, normalizationFor } from "../lib/fl/local.ts";
import type { Rng } from "../lib/rng.ts";
import { createRng } from "../lib/rng.ts";

/** One training step on a fixed batch, and what frees its tensors (the encoder stays). */
export interface LoraStepBench {
  /** Batch formation (`makeBatch` from uint8 pixels) and the trainer's step; the loss. */
  step(): Promise<number>;
  /**
   * The same step, queued: returns once its kernels are queued (and its batch freed), with the
   * loss to come — what `trainLocal` does to keep one step in flight.
   */
  queue(): Promise<number>;
  /** Frees the trainer and the prototypes; the caller disposes the encoder. */
  dispose(): void;
}

/**
 * The step `trainLocal` runs, on the whole of `split` as one batch: `classes` orthonormal
 * prototypes, LoRA of `rank`/`alpha` on q/k/v (initialised from seed 2), the prototype loss,
 * gradients for the factors of `train` (default both) and the logit scale, SGD with momentum 0.9
 * and weight decay 5e-4.
 */
export function loraStepBench(
  encoder: VisionEncoder,
  split: ImageSplit,
  opts: { classes: number; rank: number; alpha: number; train?: Factor[] },
): LoraStepBench {
  const protos = orthonormalPrototypes(opts.classes, encoder.config.embedDim, 3);
  const backbone = makeBackbone(encoder, protos, { rank: opts.rank, alpha: opts.alpha });
  protos.dispose();
  const idx = Array.from({ length: split.labels.length }, (_, i) => i);
  const norm = normalizationFor(backbone, split);
  const trainer = createLocalTrainer(backbone, {
    start: initLora(encoder.config, opts.rank, createRng(2)),
    train: opts.train ?? ["A", "B"],
    sgd: { lr: 0.01, momentum: 0.9, weightDecay: 5e-4 },
    logitScale: Math.log(1 / 0.07),
  });
  return {
    async step() {
      const { x, y } = makeBatch(split, idx, norm);
      const loss = await trainer.step(x, y);
      tf.dispose([x, y]);
      return loss;
    },
    queue() {
      const { x, y } = makeBatch(split, idx, norm);
      const loss = trainer.step(x, y);
      tf.dispose([x, y]);
      return loss;
    },
    dispose() {
      trainer.dispose();
      backbone.prototypes.dispose();
    },
  };
}

/** `n` images of `shape` filled with a fixed pattern (no generator), labels `i mod classes`. */
export function patternSplit(n: number, shape: number[], classes: number): ImageSplit {
  const per = shape.reduce((a, b) => a * b, 1);
  return {
    images: Uint8Array.from({ length: n * per }, (_, i) => (i * 2654435761) % 251),
    sampleShape: shape,
    labels: Int32Array.from({ length: n }, (_, i) => i % classes),
  };
}

/**
 * `n` learnable `side`×`side`×3 images of 3 classes: class `i mod 3`, whose colour channel is
 * bright (170) and the others dark (60), plus N(0, 40²) noise from `rng`.
 */
export function colourImages(
  n: number,
  side: number,
  rng: Rng,
): { images: Uint8Array; labels: Int32Array } {
  const per = side * side * 3;
  const images = new Uint8Array(n * per);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % 3;
    for (let p = 0; p < per; p++) {
      const base = p % 3 === i % 3 ? 170 : 60;
      images[i * per + p] = Math.max(0, Math.min(255, base + 40 * rng.normal()));
    }
  }
  return { images, labels };
}

/**
 * The kernels of a `tf.profile` that ran as kernels: composite ops and custom-gradient scopes
 * (`unnamed scope`, `forward`, `…__op`) contain kernels that are listed themselves.
 */
export function ownKernels<K extends { name: string }>(kernels: K[]): K[] {
  return kernels.filter((k) =>
    !(k.name === "unnamed scope" || k.name === "forward" || k.name.endsWith("__op"))
  );
}
