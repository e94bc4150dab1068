/**
 * The CLIP image tower: a ViT with LoRA on q, k and v, written as one forward pass.
 *
 * Forward pass (docs/method.md#lora-on-a-frozen-clip-image-tower), for `x` of shape [N, H, W, 3]
 * (normalised pixels):
 *
 * ```
 * tokens = [cls, patches(x) · W_patch (+ b_patch)] + pos          [N, 1 + G, width]
 * tokens = ln_pre(tokens)                                           (open_clip OpenAI, HF only)
 * repeat `layers` times:
 *   h        = ln_1(tokens)
 *   q, k, v  = h · W_qkv + b_qkv + s · (h · Aᵀ) · Bᵀ               (LoRA, per q/k/v, s = alpha/r)
 *   tokens  += softmax(q kᵀ / √d_head) v · W_out + b_out            (per head)
 *   tokens  += act(ln_2(tokens) · W_fc1 + b_fc1) · W_fc2 + b_fc2
 * features = ln_post(tokens[:, 0]) · W_proj                         [N, embedDim], not normalised
 * ```
 *
 * The block is `transformer.ts`' {@link transformerBlock}, which the text tower shares. Here: the
 * configuration, the weights, the forward pass ({@link encodeWithWeights}, the autodiff reference)
 * and the encoder, which runs the same function through `vit_fast.ts` (a hand-written backward
 * pass for the LoRA factors) where the backend has it. Checkpoint layouts and loading are in
 * `vit_checkpoints.ts`, volume inflation in `vit_volume.ts`, random initialisation and saving in
 * `vit_init.ts`.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { randomVitWeights } from "./vit_init.ts";
 * import { createRng } from "../rng.ts";
 * import { tf } from "../backend.ts";
 * const { config } = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const encoder = createVitEncoder(config, randomVitWeights(config, createRng(0)));
 * const features = tf.tidy(() => encoder.encode(tf.zeros<tf.Rank.R4>([2, 28, 28, 3])));
 * features.shape; // [2, config.embedDim]
 * features.dispose();
 * encoder.dispose();
 * ```
 * @module
 */
import { tf, webgpuAdapter } from "../backend.ts";
import { checkBatchFits } from "../backend_webgpu.ts";
import { wgslKernelsEnabled, wgslTokens } from "../webgpu_kernels.ts";
import {
  blockLora,
  blockToTensors,
  type HostBlock,
  type HostNorm,
  type HostTensor,
  layerNorm,
  loraAdapterNames,
  type LoraInput,
  normToTensors,
  toTensor,
  transformerBlock,
  type TransformerShape,
  weightTensors,
} from "./transformer.ts";
import {
  disposeBlockViews,
  frozenBlocksForward,
  frozenPathAvailable,
  type FrozenTower,
  prepareBlockViews,
} from "./vit_fast.ts";

// ---------------------------------------------------------------------------------------------
// Configuration

/** Which checkpoint layout the weights came from. */
export type VitLayout = "openai" | "hf" | "timm";

/**
 * Set by `inflateForVolumes` (`vit_volume.ts`): the encoder reads [N, depth, height, width, 1]
 * volumes.
 */
export interface VitVolumeConfig {
  depth: number;
  height: number;
  width: number;
  /** Voxels per patch along depth. */
  depthPatch: number;
  /** Depth signal amplitude relative to the RMS of the in-plane position embeddings. */
  depthScale: number;
}

/** Everything the forward pass needs to know; inferred from the weights. */
export interface VitConfig extends TransformerShape {
  layout: VitLayout;
  /** Side of the square input image in pixels. */
  imageSize: number;
  patchSize: number;
  /** Input channels of the 2D patch embedding (3). */
  channels: number;
  /** A LayerNorm before the first block (`ln_pre`). */
  preNorm: boolean;
  patchBias: boolean;
  /** Whether there is a projection after the final norm, and whether it has a bias. */
  proj: boolean;
  projBias: boolean;
  volume?: VitVolumeConfig;
}

// ---------------------------------------------------------------------------------------------
// Weights

/**
 * Canonical weights in host memory, every matrix in the `x · W` convention ([in, out]).
 * `patchWeight` is [channels·P·P, width] with rows ordered (row, column, channel) — the order
 * in which the forward pass lays out a patch (`patchify`).
 */
export interface VitHostWeights {
  patchWeight: HostTensor;
  patchBias?: HostTensor;
  classEmbedding: HostTensor;
  /** [1 + G, width]: the class token's row, then the patch grid row-major. */
  positionEmbedding: HostTensor;
  lnPre?: HostNorm;
  blocks: HostBlock[];
  lnPost: HostNorm;
  /** [width, embedDim]. */
  proj?: HostTensor;
  projBias?: HostTensor;
}

/**
 * The encoder's frozen tensors (see {@link VitHostWeights} for the conventions): the embedding,
 * then the tower the blocks run on ({@link FrozenTower}; its `keyBias` only in volume encoders).
 */
export interface VitWeights extends FrozenTower {
  patchWeight: tf.Tensor2D;
  patchBias?: tf.Tensor1D;
  /** [1, 1, width]. */
  classEmbedding: tf.Tensor3D;
  positionEmbedding: tf.Tensor2D;
}

// ---------------------------------------------------------------------------------------------
// Forward

/**
 * Image [N, H, W, C] → [N·(H/P)·(W/P), P·P·C]; volume [N, D, H, W, C] →
 * [N·(D/Pd)·(H/P)·(W/P), Pd·P·P·C]. Rows are patches in (depth, row, column) order, each patch
 * flattened as (depth, row, column, channel) — the layout of `patchWeight`'s rows.
 */
function patchify(x: tf.Tensor4D | tf.Tensor5D, patch: number, depthPatch = 1): tf.Tensor2D {
  if (x.rank === 4) {
    const [n, h, w, c] = x.shape;
    return x.reshape([n, h / patch, patch, w / patch, patch, c]).transpose([0, 1, 3, 2, 4, 5])
      .reshape([n * (h / patch) * (w / patch), patch * patch * c]);
  }
  const [n, d, h, w, c] = x.shape as number[];
  const dt = d / depthPatch, ht = h / patch, wt = w / patch;
  if (c === 1) {
    // Volumes have one channel: the same permutation at rank 6, which the webgpu backend supports
    // (its kernels stop at rank 6).
    return x.reshape([n * dt, depthPatch, ht, patch, wt, patch]).transpose([0, 2, 4, 1, 3, 5])
      .reshape([n * dt * ht * wt, depthPatch * patch * patch]);
  }
  return x.reshape([n * dt, depthPatch, ht, patch, wt, patch, c]).transpose([0, 2, 4, 1, 3, 5, 6])
    .reshape([n * dt * ht * wt, depthPatch * patch * patch * c]);
}

/**
 * Patch embedding, class token, position embeddings and (unless `withLnPre` is false) ln_pre:
 * `x` → the residual stream [N·T, width] entering the first block. With `tokensKernel` (the
 * frozen fast path on webgpu with the WGSL kernels, which differentiates none of this), the class
 * token, the patch embeddings and the position embeddings are put together by one kernel
 * (`wgslTokens`) instead of a broadcast, a concatenation and an addition: the same values.
 */
function embed(
  config: VitConfig,
  w: VitWeights,
  x: tf.Tensor4D | tf.Tensor5D,
  withLnPre = true,
  tokensKernel = false,
): tf.Tensor2D {
  const n = x.shape[0];
  const { width } = config;
  const patches = patchify(x, config.patchSize, config.volume?.depthPatch ?? 1);
  const product = w.patchBias
    ? tf.fused.matMul({ a: patches, b: w.patchWeight, bias: w.patchBias })
    : tf.matMul(patches, w.patchWeight);
  if (tokensKernel) {
    const tokens = wgslTokens(product, w.classEmbedding, w.positionEmbedding, n) as tf.Tensor2D;
    return w.lnPre && withLnPre ? layerNorm(tokens, w.lnPre, config.lnEps) : tokens;
  }
  const embedded = product.reshape([n, -1, width]);
  const t = (embedded.shape[1] as number) + 1;
  const cls = tf.broadcastTo(w.classEmbedding, [n, 1, width]);
  const sequence = tf.concat([cls, embedded], 1).add(w.positionEmbedding);
  // The residual stream stays 2-D, [N·T, width]: LayerNorms and matmuls need no reshapes.
  const tokens = sequence.reshape([n * t, width]) as tf.Tensor2D;
  return w.lnPre && withLnPre ? layerNorm(tokens, w.lnPre, config.lnEps) : tokens;
}

/**
 * The forward pass as a function of the weights (module doc): `x` [N, H, W, 3] normalised pixels
 * (or [N, D, H, W, 1] for a volume config) → [N, embedDim] unnormalised features. Every weight
 * is an input, so `tf.grads` can differentiate with respect to any of them (pretraining,
 * `tasks/pretrain.ts`) as well as the LoRA tensors. Call it inside the caller's `tf.tidy`.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const x = tf.zeros<tf.Rank.R4>([1, 28, 28, 3]);
 * const f = tf.tidy(() => encodeWithWeights(encoder.config, encoder.weights, x)); // the autodiff path
 * f.shape; // [1, 64]
 * tf.dispose([x, f]);
 * encoder.dispose();
 * ```
 */
export function encodeWithWeights(
  config: VitConfig,
  w: VitWeights,
  x: tf.Tensor4D | tf.Tensor5D,
  lora?: LoraInput,
): tf.Tensor2D {
  checkArguments(config, x, lora);
  return tf.tidy((): tf.Tensor2D => {
    const n = x.shape[0];
    const { width } = config;
    let tokens = embed(config, w, x);
    const t = tokens.shape[0] / n;
    for (let i = 0; i < config.layers; i++) {
      const input = tokens;
      const adapters = lora && blockLora(lora, i);
      // One tidy per block: forward-only calls free each block's intermediates at once.
      tokens = tf.tidy(() =>
        transformerBlock(input, w.blocks[i], config, n, t, adapters, w.keyBias)
      );
    }
    const classToken = tokens.reshape([n, t, width]).slice([0, 0, 0], [n, 1, width]);
    const normed = layerNorm(classToken.reshape([n, width]), w.lnPost, config.lnEps);
    if (!w.proj) {
      return normed;
    }
    return w.projBias
      ? tf.fused.matMul({ a: normed, b: w.proj, bias: w.projBias }) as tf.Tensor2D
      : tf.matMul(normed, w.proj);
  });
}

/** The input's shape and, when given, the LoRA tensors against `cfg` (errors say what to pass). */
function checkArguments(cfg: VitConfig, x: tf.Tensor, lora?: LoraInput): void {
  checkInput(cfg, x);
  if (lora) checkLora(cfg, lora);
}

function checkInput(cfg: VitConfig, x: tf.Tensor): void {
  const vol = cfg.volume;
  const shape = `[${x.shape}]`;
  if (vol) {
    const [, d, h, w, c] = x.shape;
    if (x.rank !== 5 || d !== vol.depth || h !== vol.height || w !== vol.width || c !== 1) {
      throw new Error(
        `encode: input has shape ${shape}; this volume encoder expects [N, ${vol.depth}, ${vol.height}, ${vol.width}, 1]`,
      );
    }
    return;
  }
  const [, h, w, c] = x.shape;
  if (x.rank !== 4 || h !== cfg.imageSize || w !== cfg.imageSize || c !== cfg.channels) {
    throw new Error(
      `encode: input has shape ${shape}; expected [N, ${cfg.imageSize}, ${cfg.imageSize}, ${cfg.channels}] ` +
        `normalised pixels (resize and centre-crop to the encoder's imageSize, docs/data.md; volumes need inflateForVolumes)`,
    );
  }
}

function checkLora(cfg: VitConfig, lora: LoraInput): void {
  const count = 3 * cfg.layers;
  // Packed factors are checked as they are: reading the lists would cut them apart.
  if (lora.packed) checkPackedLora(cfg, lora.packed);
  else checkLoraLists(cfg, lora);
  if (lora.residual) {
    const bad = lora.residual.findIndex((r) =>
      r.rank !== 2 || r.shape[0] !== cfg.width || r.shape[1] !== cfg.width
    );
    if (lora.residual.length !== count || bad >= 0) {
      throw new Error(
        `encode: LoRA residual must be ${count} tensors of [${cfg.width}, ${cfg.width}]` +
          (bad >= 0
            ? `; residual ${bad} is [${lora.residual[bad].shape}]`
            : `; got ${lora.residual.length}`),
      );
    }
  }
  if (!Number.isFinite(lora.scale)) {
    throw new Error(`encode: LoRA scale ${lora.scale} must be finite (alpha / r)`);
  }
}

/** `LoraInput.A` and `.B`: 3·layers tensors each, A [r, width] and B [width, r]. */
function checkLoraLists(cfg: VitConfig, lora: LoraInput): void {
  const count = 3 * cfg.layers;
  if (lora.A.length !== count || lora.B.length !== count) {
    throw new Error(
      `encode: LoRA has ${lora.A.length} A and ${lora.B.length} B tensors; expected ${count} each (q, k, v of ${cfg.layers} blocks)`,
    );
  }
  for (let i = 0; i < count; i++) {
    const [ra, da] = lora.A[i].shape;
    const [db, rb] = lora.B[i].shape;
    if (
      da !== cfg.width || db !== cfg.width || ra !== rb || lora.A[i].rank !== 2 ||
      lora.B[i].rank !== 2
    ) {
      const name = loraAdapterNames(cfg.layers)[i];
      const got = `A [${lora.A[i].shape}] and B [${lora.B[i].shape}]`;
      throw new Error(
        `encode: LoRA adapter ${i} (${name}) has ${got}; expected A [r, ${cfg.width}] and B [${cfg.width}, r]`,
      );
    }
  }
}

/** `LoraInput.packed`: A [3·layers, r, width] and B [3·layers, width, r], one rank. */
function checkPackedLora(cfg: VitConfig, packed: { A: tf.Tensor; B: tf.Tensor }): void {
  const count = 3 * cfg.layers;
  const [na, ra, da] = packed.A.shape;
  const [nb, db, rb] = packed.B.shape;
  if (
    packed.A.rank !== 3 || packed.B.rank !== 3 || na !== count || nb !== count ||
    da !== cfg.width || db !== cfg.width || ra !== rb
  ) {
    throw new Error(
      `encode: packed LoRA has A [${packed.A.shape}] and B [${packed.B.shape}]; expected ` +
        `A [${count}, r, ${cfg.width}] and B [${count}, ${cfg.width}, r] (q, k, v of ${cfg.layers} blocks)`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// The encoder

/** A frozen image encoder with optional LoRA on q, k, v of every block. */
export interface VisionEncoder {
  config: VitConfig;
  /** `blocks.{i}.q`, `blocks.{i}.k`, `blocks.{i}.v` for i = 0..layers−1, in that order. */
  adapterNames: string[];
  /**
   * [N, H, W, 3] normalised pixels (or [N, D, H, W, 1] for a volume encoder) → [N, embedDim]
   * unnormalised features. Differentiable with respect to the LoRA tensors; call it inside the
   * caller's `tf.tidy`.
   */
  encode(x: tf.Tensor4D | tf.Tensor5D, lora?: LoraInput): tf.Tensor2D;
  /** Frees the tensors this encoder owns. */
  dispose(): void;
}

/** The encoder this module builds: a {@link VisionEncoder} that also exposes its weights. */
export interface VitEncoder extends VisionEncoder {
  readonly weights: VitWeights;
}

/**
 * Creates the encoder from a config and canonical host weights; the encoder owns the tensors it
 * makes and frees them in `dispose()`.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { randomVitWeights } from "./vit_init.ts";
 * import { createRng } from "../rng.ts";
 * const { config } = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const hostWeights = randomVitWeights(config, createRng(1));
 * const encoder = createVitEncoder(config, hostWeights);
 * encoder.adapterNames[0]; // "blocks.0.q"
 * encoder.dispose();
 * ```
 */
export function createVitEncoder(config: VitConfig, host: VitHostWeights): VitEncoder {
  const weights: VitWeights = {
    patchWeight: toTensor(host.patchWeight),
    patchBias: host.patchBias && toTensor(host.patchBias),
    classEmbedding: toTensor({ shape: [1, 1, config.width], data: host.classEmbedding.data }),
    positionEmbedding: toTensor(host.positionEmbedding),
    lnPre: host.lnPre && normToTensors(host.lnPre),
    blocks: host.blocks.map(blockToTensors),
    lnPost: normToTensors(host.lnPost),
    proj: host.proj && toTensor(host.proj),
    projBias: host.projBias && toTensor(host.projBias),
  };
  return makeEncoder(config, weights, weightTensors(weights));
}

/**
 * An encoder that shares `base`'s tensors but for those in `replaced`, which are new: it owns
 * them and frees them in `dispose()`, and leaves the shared ones to `base`. This is how
 * `inflateForVolumes` (`vit_volume.ts`) gives one frozen transformer a second input
 * embedding. Dispose it before, or with, `base`.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * // Same transformer, a new (here: zero) position embedding; the derived encoder owns only that.
 * const positionEmbedding = tf.zerosLike(encoder.weights.positionEmbedding);
 * const variant = deriveVitEncoder(encoder, encoder.config, { positionEmbedding });
 * variant.dispose(); // frees positionEmbedding, not the shared blocks
 * encoder.dispose();
 * ```
 */
export function deriveVitEncoder(
  base: VitEncoder,
  config: VitConfig,
  replaced: Partial<VitWeights>,
): VitEncoder {
  return makeEncoder(config, { ...base.weights, ...replaced }, weightTensors(replaced));
}

/**
 * The encoder over `weights`: it frees the tensors in `owned` (and the fast path's views of the
 * blocks it owns) when disposed, and sends `encode` down the fast path when the backend and the
 * LoRA input allow, else through {@link encodeWithWeights}.
 */
function makeEncoder(config: VitConfig, weights: VitWeights, owned: tf.Tensor[]): VitEncoder {
  let disposed = false;
  const mine = new Set(owned);
  const ownBlocks = weights.blocks.filter((b) => mine.has(b.qkvWeight));
  if (frozenPathAvailable()) prepareBlockViews(ownBlocks, config);
  const encode = (x: tf.Tensor4D | tf.Tensor5D, lora?: LoraInput): tf.Tensor2D => {
    if (disposed) throw new Error("encode: this encoder was disposed");
    if (webgpuAdapter) checkBatchFits(webgpuAdapter, config, x.shape[0]);
    return fitsFrozenPath(lora)
      ? encodeFrozen(config, weights, x, lora)
      : encodeWithWeights(config, weights, x, lora);
  };
  return {
    config,
    adapterNames: loraAdapterNames(config.layers),
    weights,
    encode,
    dispose() {
      if (disposed) return;
      disposed = true;
      disposeBlockViews(ownBlocks);
      for (const t of owned) t.dispose();
    },
  };
}

/** Whether {@link frozenBlocksForward} can take `lora`: one rank for every adapter. */
function fitsFrozenPath(lora?: LoraInput): boolean {
  if (!frozenPathAvailable()) return false;
  return !lora || lora.packed !== undefined ||
    lora.A.every((a) => a.shape[0] === lora.A[0].shape[0]);
}

/**
 * {@link encodeWithWeights} for frozen weights: the same function, with the blocks run by
 * `vit_fast.ts` (hand-written gradient for the LoRA tensors only).
 */
function encodeFrozen(
  config: VitConfig,
  w: VitWeights,
  x: tf.Tensor4D | tf.Tensor5D,
  lora?: LoraInput,
): tf.Tensor2D {
  checkArguments(config, x, lora);
  return tf.tidy(() =>
    frozenBlocksForward(
      config,
      w,
      embed(config, w, x, false, wgslKernelsEnabled()),
      x.shape[0],
      lora,
    )
  );
}
