/**
 * The shared frozen backbone of a simulation: one image encoder and one prototype matrix in
 * memory for all K clients (a client is only its LoRA factors, optimiser state and data indices).
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "../model/vit_checkpoints.ts";
 * import { loadPrototypes } from "../model/head.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const { prototypes } = await loadPrototypes("models/default/prototypes.safetensors");
 * const backbone = makeBackbone(encoder, prototypes, { rank: 8, alpha: 8 });
 * backbone.dims; // { adapters: 9, rank: 8, dIn: 64, dOut: 64 }: q, k, v of 3 blocks
 * prototypes.dispose();
 * encoder.dispose();
 * ```
 * @module
 */
import { tf } from "../backend.ts";
import { CLIP_MEAN, CLIP_STD } from "../data/image.ts";
import type { VisionEncoder } from "../model/vit.ts";
import type { Backbone } from "./local.ts";

/** LoRA settings of the backbone (docs/method.md: r = 8, alpha = 8 by default). */
export interface LoraSettings {
  rank: number;
  alpha: number;
}

/** A {@link Backbone} plus the encoder it wraps (for checkpoints and disposal). */
export interface SharedBackbone extends Backbone {
  vision: VisionEncoder;
  rank: number;
  alpha: number;
}

/**
 * Wraps an encoder and its class prototypes (C×e, rows L2-normalised here) for federated
 * training. Validates the prototype width against the encoder's output and the rank against the
 * width.
 */
export function makeBackbone(
  encoder: VisionEncoder,
  prototypes: tf.Tensor2D,
  { rank, alpha }: LoraSettings,
  normalize: { mean: readonly number[]; std: readonly number[] } = {
    mean: CLIP_MEAN,
    std: CLIP_STD,
  },
): SharedBackbone {
  const width = encoder.config.width;
  if (!Number.isInteger(rank) || rank < 1 || rank >= width) {
    throw new Error(
      `LoRA rank ${rank} is invalid for a model of width ${width}; use 1 ≤ r < ${width}`,
    );
  }
  if (!(alpha > 0)) throw new Error(`LoRA alpha ${alpha} must be > 0`);
  const embed = encoder.config.embedDim;
  if (prototypes.shape[1] !== embed) {
    throw new Error(
      `prototypes have width ${prototypes.shape[1]} but the encoder outputs ${embed}-d features; ` +
        `build prototypes for this model (expected shape [C, ${embed}])`,
    );
  }
  const unit = tf.tidy(() => tf.div(prototypes, tf.norm(prototypes, "euclidean", 1, true)));
  return {
    vision: encoder,
    encoder,
    prototypes: unit as tf.Tensor2D,
    loraScale: alpha / rank,
    rank,
    alpha,
    dims: { adapters: encoder.adapterNames.length, rank, dIn: width, dOut: width },
    normalize,
  };
}
