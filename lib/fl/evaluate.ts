/**
 * Evaluation of the global model (docs/method.md#the-classification-head,
 * docs/protocol.md#evaluation-and-model-selection): cosine scores between normalised image features
 * and the class prototypes; the prediction is their argmax, the AUC uses `softmax(cosine)`.
 *
 * @example
 * ```ts
 * import { loadInputs } from "../experiment.ts";
 * const { backbone, data, dispose } = await loadInputs({ dataset: "default", rank: 8, alpha: 8 });
 * const m = await evaluateSplit(backbone, null, data.val); // the frozen model (no LoRA)
 * m.accuracy; // fraction in [0, 1]
 * dispose();
 * ```
 * @module
 */
import { tf } from "../backend.ts";
import type { ImageSplit } from "../data/dataset.ts";
import { makeBatch } from "../data/batches.ts";
import { classificationMetrics, type Metrics } from "../metrics/classification.ts";
import { type Backbone, normalizationFor } from "./local.ts";
import { factorRank, type LoraFactors } from "./factors.ts";

/** Labels and `softmax(cosine)` scores of every sample of `split`. */
export async function predict(
  backbone: Backbone,
  factors: LoraFactors | null,
  split: ImageSplit,
  batchSize = 64,
  residual?: Float32Array[],
): Promise<{ labels: number[]; probs: number[][] }> {
  const { dims } = backbone;
  const rank = factors === null ? dims.rank : factorRank(factors, dims);
  const lora = factors === null ? undefined : {
    A: factors.A.map((a) => tf.tensor2d(a, [rank, dims.dIn])),
    B: factors.B.map((b) => tf.tensor2d(b, [dims.dOut, rank])),
    scale: backbone.loraScale,
    residual: residual?.map((r) => tf.tensor2d(r, [dims.dOut, dims.dIn])),
  };
  const labels: number[] = [];
  const probs: number[][] = [];
  try {
    const n = split.labels.length;
    for (let start = 0; start < n; start += batchSize) {
      const idx = Array.from({ length: Math.min(batchSize, n - start) }, (_, i) => start + i);
      const { x, y } = makeBatch(split, idx, normalizationFor(backbone, split));
      const scores = tf.tidy(() => {
        const f = backbone.encoder.encode(x, lora);
        const unit = tf.mul(f, tf.rsqrt(tf.sum(tf.square(f), 1, true)));
        return tf.softmax(tf.matMul(unit, backbone.prototypes, false, true));
      });
      const flat = await scores.data();
      const C = scores.shape[1] as number;
      for (let i = 0; i < idx.length; i++) {
        probs.push(Array.from(flat.subarray(i * C, (i + 1) * C)));
      }
      labels.push(...await y.data());
      tf.dispose([x, y, scores]);
    }
  } finally {
    if (lora) tf.dispose([lora.A, lora.B, lora.residual ?? []]);
  }
  return { labels, probs };
}

/** Accuracy, macro recall/precision/F1 and macro one-vs-rest AUC of the model on `split`. */
export async function evaluateSplit(
  backbone: Backbone,
  factors: LoraFactors | null,
  split: ImageSplit,
  batchSize = 64,
  residual?: Float32Array[],
): Promise<Metrics> {
  const { labels, probs } = await predict(backbone, factors, split, batchSize, residual);
  return classificationMetrics(labels, probs);
}
