/**
 * The transformer both CLIP towers are made of — LayerNorm, the MLP activation, multi-head
 * attention with LoRA on q, k and v, the pre-LN block — and the weights' shapes in host memory
 * and on the device. The image tower (`vit.ts`), the text tower (`text.ts`) and the ViT's fast
 * path (`vit_fast.ts`) build on these.
 *
 * One pre-LN block on the residual stream `x` [N·T, width]
 * (docs/method.md#lora-on-a-frozen-clip-image-tower):
 *
 * ```
 * h        = ln_1(x)
 * q, k, v  = h · W_qkv + b_qkv + s · (h · Aᵀ) · Bᵀ               (LoRA, per q/k/v, s = alpha/r)
 * x       += softmax(q kᵀ / √d_head + bias) v · W_out + b_out       (per head)
 * x       += act(ln_2(x) · W_fc1 + b_fc1) · W_fc2 + b_fc2
 * ```
 *
 * LoRA: the q, k and v projections of one block are one fused [width, 3·width] matmul; the
 * adapters add `s · (h Aᵀ) Bᵀ` through two thin matmuls whose weights are the block's three A's
 * stacked and its three B's laid out block-diagonally ({@link blockLora}), so a block costs two
 * extra matmuls and the gradient with respect to A and B never forms a width×width matrix.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const { width, heads, lnEps, act } = encoder.config;
 * const tokens = tf.randomNormal<tf.Rank.R2>([2 * 5, width]); // 2 sequences of 5 tokens
 * const x = tf.tidy(() => transformerBlock(tokens, encoder.weights.blocks[0], { width, heads, lnEps, act }, 2, 5));
 * x.shape; // [10, 64]
 * tf.dispose([tokens, x]);
 * encoder.dispose();
 * ```
 * @module
 */
import { tf } from "../backend.ts";

// ---------------------------------------------------------------------------------------------
// Configuration

/** `gelu`: x·Φ(x) (erf); `quick_gelu`: x·σ(1.702x) (OpenAI CLIP). */
export type VitActivation = "gelu" | "quick_gelu";

/** The transformer's shape, shared by the image and text towers' configurations. */
export interface TransformerShape {
  width: number;
  layers: number;
  heads: number;
  mlpDim: number;
  /** Output feature size: the projection's output, or `width` when there is no projection. */
  embedDim: number;
  act: VitActivation;
  lnEps: number;
}

/** LoRA tensors for one forward: `A[i]` is r×width, `B[i]` width×r, `i` indexes `adapterNames`. */
export interface LoraInput {
  A: tf.Tensor2D[];
  B: tf.Tensor2D[];
  /** s = alpha / r (docs/method.md#lora-on-a-frozen-clip-image-tower). */
  scale: number;
  /**
   * Optional dense updates folded into the frozen q/k/v weights (FedEx-LoRA's aggregation
   * residual): `residual[i]` is width×width (out×in) for adapter `i`, so that
   * `q = (W_q + R_q) x + b_q + s·B_q A_q x`.
   */
  residual?: tf.Tensor2D[];
  /**
   * The factors gradients are wanted for (default both). On the `tensorflow` backend a factor
   * left out is a constant of the hand-written backward pass, which then skips its gradient.
   */
  trainable?: readonly ("A" | "B")[];
  /**
   * The same factors as one tensor each, when the caller holds them so: `A` [count, r, width] and
   * `B` [count, width, r], adapter `i` at index `i`, one rank for all. The frozen fast path
   * (`vit_fast.ts`) then takes them as they are instead of stacking `A` and `B` (and the caller
   * need not unstack them): count slices and a concatenation fewer per factor in the forward pass,
   * and as many in the backward pass; on `webgpu` each is a kernel dispatch. `A` and `B` must
   * still give the same tensors, for the paths that take them one by one.
   */
  packed?: { A: tf.Tensor3D; B: tf.Tensor3D };
}

/** Names of the LoRA adapters, in the order `LoraInput` uses. */
export function loraAdapterNames(layers: number): string[] {
  const names: string[] = [];
  for (let i = 0; i < layers; i++) names.push(`blocks.${i}.q`, `blocks.${i}.k`, `blocks.${i}.v`);
  return names;
}

// ---------------------------------------------------------------------------------------------
// Weights

/** A row-major float32 array and its shape. */
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}
/** A LayerNorm's weight and bias in host memory. */
export interface HostNorm {
  weight: HostTensor;
  bias: HostTensor;
}
/**
 * One transformer block's weights in host memory (pre-LN order for the ViT; the BERT text
 * encoder reuses the shape with `ln1`/`ln2` as its post-attention/post-MLP norms).
 */
export interface HostBlock {
  ln1: HostNorm;
  /** [width, 3·width], columns q | k | v (x · W convention). */
  qkvWeight: HostTensor;
  qkvBias: HostTensor;
  outWeight: HostTensor;
  outBias: HostTensor;
  ln2: HostNorm;
  fc1Weight: HostTensor;
  fc1Bias: HostTensor;
  fc2Weight: HostTensor;
  fc2Bias: HostTensor;
}

/** A LayerNorm's weight and bias. */
export interface Norm {
  weight: tf.Tensor1D;
  bias: tf.Tensor1D;
}
/** One transformer block's tensors (see {@link HostBlock}). */
export interface Block {
  ln1: Norm;
  qkvWeight: tf.Tensor2D;
  qkvBias: tf.Tensor1D;
  outWeight: tf.Tensor2D;
  outBias: tf.Tensor1D;
  ln2: Norm;
  fc1Weight: tf.Tensor2D;
  fc1Bias: tf.Tensor1D;
  fc2Weight: tf.Tensor2D;
  fc2Bias: tf.Tensor1D;
}

/**
 * A host tensor as a float32 tf tensor.
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const t = toTensor<tf.Tensor2D>({ shape: [1, 2], data: new Float32Array([1, 2]) });
 * t.shape; // [1, 2]
 * t.dispose();
 * ```
 */
export function toTensor<T extends tf.Tensor>(t: HostTensor): T {
  return tf.tensor(t.data, t.shape, "float32") as T;
}

/**
 * A host LayerNorm as tensors.
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const ln = normToTensors({
 *   weight: { shape: [2], data: new Float32Array([1, 1]) },
 *   bias: { shape: [2], data: new Float32Array([0, 0]) },
 * });
 * tf.dispose([ln.weight, ln.bias]);
 * ```
 */
export function normToTensors(n: HostNorm): Norm {
  return { weight: toTensor(n.weight), bias: toTensor(n.bias) };
}

/**
 * A host block as tensors.
 *
 * @example
 * ```ts
 * import { randomVitWeights } from "./vit_init.ts";
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { createRng } from "../rng.ts";
 * import { tf } from "../backend.ts";
 * const { config } = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const host = randomVitWeights(config, createRng(0));
 * const block = blockToTensors(host.blocks[0]);
 * block.qkvWeight.shape; // [64, 192]
 * tf.dispose(weightTensors(block));
 * ```
 */
export function blockToTensors(b: HostBlock): Block {
  return {
    ln1: normToTensors(b.ln1),
    qkvWeight: toTensor(b.qkvWeight),
    qkvBias: toTensor(b.qkvBias),
    outWeight: toTensor(b.outWeight),
    outBias: toTensor(b.outBias),
    ln2: normToTensors(b.ln2),
    fc1Weight: toTensor(b.fc1Weight),
    fc1Bias: toTensor(b.fc1Bias),
    fc2Weight: toTensor(b.fc2Weight),
    fc2Bias: toTensor(b.fc2Bias),
  };
}

/**
 * Every tensor in a weights object (nested objects and arrays), in property order: what an
 * encoder that made them frees.
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const weights = { a: tf.zeros([2]), nested: [{ b: tf.ones([3]) }] };
 * const owned = weightTensors(weights);
 * owned.length; // 2
 * tf.dispose(owned);
 * ```
 */
export function weightTensors(w: object): tf.Tensor[] {
  const out: tf.Tensor[] = [];
  const visit = (v: unknown) => {
    if (v instanceof tf.Tensor) out.push(v);
    else if (Array.isArray(v)) v.forEach(visit);
    else if (v && typeof v === "object") Object.values(v).forEach(visit);
  };
  visit(w);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Forward

/**
 * LayerNorm over the last axis (biased variance, as PyTorch).
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const x = tf.tensor2d([[1, 2, 3], [0, 0, 6]]);
 * const p = { weight: tf.ones<tf.Rank.R1>([3]), bias: tf.zeros<tf.Rank.R1>([3]) };
 * const h = layerNorm(x, p, 1e-5); // each row: mean 0, variance 1
 * await h.data(); // ≈ [-1.22, 0, 1.22, -0.71, -0.71, 1.41]
 * tf.dispose([x, h, p.weight, p.bias]);
 * ```
 */
export function layerNorm(x: tf.Tensor2D, p: Norm, eps: number): tf.Tensor2D {
  const { mean, variance } = tf.moments(x, -1, true);
  return x.sub(mean).mul(tf.rsqrt(variance.add(eps))).mul(p.weight).add(p.bias);
}

/**
 * The MLP activation: exact GELU (erf) or QuickGELU x·σ(1.702x).
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const x = tf.tensor2d([[-1, 0, 1]]);
 * const y = activation(x, "quick_gelu"); // x·σ(1.702x)
 * await y.data(); // ≈ [-0.154, 0, 0.846]
 * tf.dispose([x, y]);
 * ```
 */
export function activation(x: tf.Tensor2D, act: VitActivation): tf.Tensor2D {
  if (act === "quick_gelu") return x.mul(tf.sigmoid(x.mul(1.702)));
  return x.mul(tf.erf(x.mul(Math.SQRT1_2)).add(1)).mul(0.5);
}

/** One block's LoRA tensors, laid out for the fused q|k|v matmul. */
export interface BlockLora {
  /** The block's A_q, A_k, A_v stacked and scaled by s: [r_q + r_k + r_v, width]. */
  A: tf.Tensor2D;
  /** B_q, B_k, B_v block-diagonal: [3·width, r_q + r_k + r_v]. */
  B: tf.Tensor2D;
  /** R_q | R_k | R_v stacked: [3·width, width], or undefined. */
  residual?: tf.Tensor2D;
}

/**
 * Block `i`'s LoRA tensors from the whole model's ({@link BlockLora}): its A's stacked and scaled
 * by s, its B's block-diagonal (each padded to the block's total rank), its residuals stacked.
 *
 * @example
 * ```ts
 * import { initLora, loraToTensors } from "./lora.ts";
 * import { createRng } from "../rng.ts";
 * import { tf } from "../backend.ts";
 * const t = loraToTensors(initLora({ width: 4, layers: 1 }, 2, createRng(1)), 4);
 * const adapters = blockLora({ ...t, scale: 1 }, 0);
 * adapters.A.shape; // [6, 4]: A_q, A_k, A_v stacked
 * adapters.B.shape; // [12, 6]: B_q, B_k, B_v block-diagonal
 * tf.dispose([...t.A, ...t.B, adapters.A, adapters.B]);
 * ```
 */
export function blockLora(lora: LoraInput, i: number): BlockLora {
  const As = lora.A.slice(3 * i, 3 * i + 3);
  const Bs = lora.B.slice(3 * i, 3 * i + 3);
  const ranks = As.map((a) => a.shape[0]);
  const total = ranks[0] + ranks[1] + ranks[2];
  let before = 0;
  const padded = Bs.map((b, j) => {
    const p = tf.pad(b, [[0, 0], [before, total - before - ranks[j]]]);
    before += ranks[j];
    return p;
  });
  const residual = lora.residual && tf.concat(lora.residual.slice(3 * i, 3 * i + 3), 0);
  return { A: tf.concat(As, 0).mul(lora.scale), B: tf.concat(padded, 0), residual };
}

/** What {@link transformerBlock} and {@link multiHeadAttention} read from a config. */
export type BlockConfig = Pick<TransformerShape, "width" | "heads" | "lnEps" | "act">;

/**
 * Multi-head self-attention of `h` [N·T, width] with the block's fused q|k|v and output
 * projections (and LoRA on q, k, v when given): `softmax(q kᵀ / √d_head + bias) v · W_out + b_out`.
 * `attnBias` is added to the scores [N, heads, T, T] by broadcasting: a [T] per-key bias, a
 * [T, T] causal mask or an [N, 1, 1, T] padding mask.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const h = tf.randomNormal<tf.Rank.R2>([3 * 4, encoder.config.width]); // 3 sequences of 4 tokens
 * const out = multiHeadAttention(h, encoder.weights.blocks[0], encoder.config, 3, 4);
 * out.shape; // [12, 64]
 * tf.dispose([h, out]);
 * encoder.dispose();
 * ```
 */
export function multiHeadAttention(
  h: tf.Tensor2D,
  b: Pick<Block, "qkvWeight" | "qkvBias" | "outWeight" | "outBias">,
  cfg: Pick<TransformerShape, "width" | "heads">,
  n: number,
  t: number,
  lora?: BlockLora,
  attnBias?: tf.Tensor,
): tf.Tensor2D {
  const { width, heads } = cfg;
  const dh = width / heads;
  // q | k | v = h·W_qkv + b_qkv + s·(h·Aᵀ)·Bᵀ  (docs/method.md#lora-on-a-frozen-clip-image-tower)
  let qkv = tf.fused.matMul({ a: h, b: b.qkvWeight, bias: b.qkvBias }) as tf.Tensor2D;
  if (lora) qkv = qkv.add(tf.matMul(tf.matMul(h, lora.A, false, true), lora.B, false, true));
  if (lora?.residual) qkv = qkv.add(tf.matMul(h, lora.residual, false, true));
  const [q, k, v] = tf.unstack(
    qkv.reshape([n, t, 3, heads, dh]).transpose([2, 0, 3, 1, 4]),
  ) as tf.Tensor4D[];
  let scores = tf.matMul(q, k, false, true).mul(1 / Math.sqrt(dh)) as tf.Tensor4D;
  if (attnBias) scores = scores.add(attnBias);
  const attended = tf.matMul(tf.softmax(scores), v).transpose([0, 2, 1, 3]);
  const merged = attended.reshape([n * t, width]) as tf.Tensor2D;
  return tf.fused.matMul({ a: merged, b: b.outWeight, bias: b.outBias }) as tf.Tensor2D;
}

/**
 * One pre-LN transformer block (module doc) on the residual stream `x` [N·T, width]:
 * `x += attention(ln_1(x))`, `x += mlp(ln_2(x))`. `attnBias` as in {@link multiHeadAttention}.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const { weights, config } = encoder;
 * const y = tf.tidy(() => {
 *   let x = tf.randomNormal<tf.Rank.R2>([2 * 3, config.width]);
 *   for (const block of weights.blocks) x = transformerBlock(x, block, config, 2, 3);
 *   return x;
 * });
 * y.shape; // [6, 64]
 * y.dispose();
 * encoder.dispose();
 * ```
 */
export function transformerBlock(
  x: tf.Tensor2D,
  b: Block,
  cfg: BlockConfig,
  n: number,
  t: number,
  lora?: BlockLora,
  attnBias?: tf.Tensor,
): tf.Tensor2D {
  const h = layerNorm(x, b.ln1, cfg.lnEps);
  x = x.add(multiHeadAttention(h, b, cfg, n, t, lora, attnBias));
  const h2 = layerNorm(x, b.ln2, cfg.lnEps);
  const fc1 = tf.fused.matMul({ a: h2, b: b.fc1Weight, bias: b.fc1Bias }) as tf.Tensor2D;
  return x.add(tf.fused.matMul({ a: activation(fc1, cfg.act), b: b.fc2Weight, bias: b.fc2Bias }));
}
