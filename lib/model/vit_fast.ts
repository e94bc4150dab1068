/**
 * The transformer blocks of a frozen ViT with LoRA on q, k and v, and their backward pass written
 * out by hand — the path `encoder.encode` takes on the `tensorflow` and `webgpu` backends (the same
 * function as `encodeWithWeights` in `vit.ts`, which stays the general, autodiff reference). On
 * `webgpu` the TensorFlow-only kernels are replaced by portable tfjs ops ({@link portable}).
 *
 * Why: on tfjs-node every kernel costs ~26 µs of dispatch, and tfjs' autodiff of the plain
 * forward pass dispatches ~1,600 kernels for one step of a 4-layer ViT — including gradients for
 * the frozen weights, which nobody needs. Here the whole encoder is one `tf.customGrad` node whose
 * inputs are the stacked LoRA factors, so the backward pass computes only what the factors'
 * gradients need, in plain 2-D matrix products:
 *
 * * q|k|v = h·(W_qkv + Aᵀ·B̃) + b_qkv, with the block's three A's stacked, A [3r, width], and its
 *   three s·B's laid out block-diagonally, B̃ [3r, 3·width]: the adapter is merged into the weight
 *   once per step (a [width, 3·width] sum, no per-token work), and u = h·Aᵀ is formed only for
 *   B's gradient. q|k|v come out head-major from one broadcast product (see
 *   {@link headMajorQkv}); 1/√d_head is folded into the weight; one transpose goes back.
 * * LayerNorm, GELU, the softmax backward and the residual connections run as the toolkit's fused
 *   kernels when `lib/native.ts` loaded them, else as TensorFlow kernels with closed-form
 *   gradients (LayerNorm through `FusedBatchNormV3`; no autodiff bookkeeping either way). The MLP's input is pre-scaled by folding constants into ln_2 and b_fc1 (tiny
 *   vectors), which saves two passes over the widest activation: exact GELU
 *   `a·Φ(a) = z·(1 + erf z)/√2` with `z = a/√2`; QuickGELU `a·σ(1.702a) = z·σ(z)/1.702` with
 *   `z = 1.702a`.
 * * Only the class token reaches the features, so the last block computes its queries, attention
 *   output and MLP for the class token alone (keys and values still use every token).
 * * The first block's input needs no gradient (the embeddings are frozen): its backward pass stops
 *   at the LoRA factors; a factor the caller does not train (`LoraInput.trainable`, DEeR's
 *   phases) is a constant and gets no gradient work either.
 * * Wide MLPs keep their hidden activations transposed (see {@link transposedMlp}).
 *
 * Every value equals the autodiff path up to float32 rounding (`tests/perf_equivalence.test.ts`).
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const { config, weights } = encoder;
 * if (frozenPathAvailable()) {
 *   // What vit.ts' encoder does after the patch and position embeddings: tokens [N·T, width].
 *   const tokens = tf.randomNormal<tf.Rank.R2>([2 * 17, config.width]); // 2 images of 1 + 16 tokens
 *   const features = frozenBlocksForward(config, weights, tokens, 2);
 *   features.shape; // [2, 64]
 *   tf.dispose([tokens, features]);
 * }
 * encoder.dispose();
 * ```
 * @module
 */
import { tf, webgpuAdapter } from "../backend.ts";
import { bindingLimit } from "../backend_webgpu.ts";
import { nativeOps } from "../native.ts";
import {
  materialize,
  type MatMulOperand,
  matrixList,
  operandTensor,
  stackedMatrix,
  wgslBindable,
  wgslBlockDiagonal,
  wgslBlockDiagonalGrad,
  wgslGateBackward,
  wgslGateForward,
  wgslHeadSlot,
  wgslHeadSlots,
  wgslHeadsToRows,
  wgslKernelsEnabled,
  wgslLaidOutUsed,
  wgslLayerNormBackward,
  wgslLayerNormForward,
  wgslMatMul,
  wgslMatMulAdd,
  wgslMatMulToHeads,
  wgslMatMulToRows,
  wgslMatMulUsed,
  wgslResidual,
  wgslRowsFit,
  wgslSoftmaxBackward,
} from "../webgpu_kernels.ts";
import type { Block, LoraInput, Norm, TransformerShape, VitActivation } from "./transformer.ts";

/**
 * The frozen tensors this path reads: the blocks and the head on the class token (a ViT's
 * `VitWeights` has them, with its embedding, which the caller has already applied).
 */
export interface FrozenTower {
  /** Additive attention bias per key token. */
  keyBias?: tf.Tensor1D;
  lnPre?: Norm;
  blocks: Block[];
  lnPost: Norm;
  proj?: tf.Tensor2D;
  projBias?: tf.Tensor1D;
}

/**
 * Whether the active backend runs this path: `tensorflow` (TensorFlow's own kernels called
 * directly), `webgpu` and `wasm` (the same algebra in portable tfjs ops, {@link portable}). On a
 * GPU the number of kernels a step dispatches sets its speed, and this path dispatches about half
 * as many as autodiff; on wasm it keeps far less memory alive (a ViT-B/16 step at batch 1 peaks
 * at 1.3 GiB of wasm heap instead of 3.0 GiB, so batches above 1 fit the 4 GiB heap).
 * `DEER_FAST_PATH=0` sends webgpu and wasm back to the autodiff path. (The `cpu` backend, the
 * reference of several tests, keeps autodiff.)
 */
export function frozenPathAvailable(): boolean {
  const backend = tf.getBackend();
  if (backend === "tensorflow") return true;
  return (backend === "webgpu" || backend === "wasm") && Deno.env.get("DEER_FAST_PATH") !== "0";
}

/** Whether TensorFlow's kernels are out of reach: the path then uses portable tfjs ops. */
function portable(): boolean {
  return tf.getBackend() !== "tensorflow";
}

// ---------------------------------------------------------------------------------------------
// Views of the frozen weights (built once per block and cached)

/** One block's frozen tensors in the layouts the contractions use. */
interface BlockViews {
  act: VitActivation;
  ln1: Norm;
  qkv: tf.Tensor2D;
  /**
   * Per column of q|k|v: 1/√d_head on q's columns, 1 on k's and v's — the attention's score
   * scale, folded into the (adapted) weight and the bias so that queries come out scaled.
   */
  colScale: tf.Tensor1D;
  /** b_qkv · colScale as [3·heads, 1, d_head] (added to the head-major q|k|v). */
  qkvBias: tf.Tensor3D;
  /** `W_out` viewed as [heads, d_head, width]. */
  out: tf.Tensor3D;
  outBias: tf.Tensor1D;
  /** ln_2's weight and bias times the activation's input scale k (see the module doc). */
  ln2: Norm;
  fc1: tf.Tensor2D;
  /** b_fc1 · k, as a row [mlp] or, for the transposed MLP layout, a column [mlp, 1]. */
  fc1Bias: tf.Tensor;
  fc2: tf.Tensor2D;
  fc2Bias: tf.Tensor1D;
  /** The 3×3 identity as [3, 1, 3, 1] (see {@link blockDiagonal}). */
  slots: tf.Tensor;
}

const views = new WeakMap<Block, BlockViews>();

/**
 * Whether the MLP's hidden activations are kept transposed, [mlp, tokens]. libtensorflow's
 * product h·W_fc1 ([tokens, width]·[width, mlp], no transposes) runs at half speed for wide MLPs
 * (measured: 104 ms vs 56 ms for W_fc1ᵀ·hᵀ at ViT-B/16's 1576×768·768×3072); the transposed layout
 * gets every MLP product on a fast path without copying the weights. Narrow MLPs (the tiny
 * models) are as fast either way and keep the plain layout. Portable backends keep the plain
 * layout (on webgpu the layout gains nothing, and a product with both operands transposed gave
 * wrong gradients there).
 */
function transposedMlp(cfg: TransformerShape): boolean {
  return cfg.mlpDim >= 2048 && !portable();
}

/** z = k·a is what the activation reads (k folded into ln_2 and b_fc1). */
function activationScale(act: VitActivation): number {
  return act === "quick_gelu" ? 1.702 : Math.SQRT1_2;
}

/** act(a) = c·z·gate(z): c = 1/1.702 for QuickGELU, 1/√2 for GELU (a·Φ(a) = z·(1 + erf z)/√2). */
function outputScale(act: VitActivation): number {
  return act === "quick_gelu" ? 1 / 1.702 : Math.SQRT1_2;
}

function blockViews(b: Block, cfg: TransformerShape): BlockViews {
  const cached = views.get(b);
  if (cached && cached.act === cfg.act) return cached;
  if (cached) disposeViews(cached);
  const { width, heads } = cfg;
  const dh = width / heads;
  const k = activationScale(cfg.act);
  const colScale = tf.concat([
    tf.fill([width], 1 / Math.sqrt(dh)),
    tf.ones([2 * width]),
  ]) as tf.Tensor1D;
  // Built inside the caller's tidy: the new tensors are kept until disposeBlockViews.
  const v: BlockViews = {
    act: cfg.act,
    ln1: b.ln1,
    qkv: b.qkvWeight,
    colScale,
    qkvBias: tf.reshape(tf.mul(b.qkvBias, colScale), [3 * heads, 1, dh]) as tf.Tensor3D,
    out: b.outWeight.reshape([heads, dh, width]) as tf.Tensor3D,
    outBias: b.outBias,
    ln2: { weight: b.ln2.weight.mul(k) as tf.Tensor1D, bias: b.ln2.bias.mul(k) as tf.Tensor1D },
    fc1: b.fc1Weight,
    fc1Bias: transposedMlp(cfg) ? b.fc1Bias.mul(k).reshape([-1, 1]) : b.fc1Bias.mul(k),
    fc2: b.fc2Weight,
    fc2Bias: b.fc2Bias,
    slots: tf.reshape(tf.eye(3), [3, 1, 3, 1]),
  };
  for (const t of ownedViewTensors(v)) tf.keep(t);
  views.set(b, v);
  return v;
}

/** The tensors a view owns (the others are the block's own). */
function ownedViewTensors(v: BlockViews): tf.Tensor[] {
  return [
    v.colScale,
    v.qkvBias,
    v.out,
    v.ln2.weight,
    v.ln2.bias,
    v.fc1Bias,
    v.slots,
  ];
}

function disposeViews(v: BlockViews): void {
  tf.dispose(ownedViewTensors(v));
}

/**
 * Builds the views of `blocks` now, and on webgpu the stack of their W_qkv
 * ({@link stackedQkvUsed}) when they are a whole tower (the encoder that owns the blocks calls
 * this when it is made, so that its memory does not grow on the first forward pass).
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * prepareBlockViews(encoder.weights.blocks, encoder.config); // the encoder already did: a no-op
 * encoder.dispose(); // frees the views with the blocks
 * ```
 */
export function prepareBlockViews(blocks: readonly Block[], cfg: TransformerShape): void {
  tf.tidy(() => {
    for (const b of blocks) blockViews(b, cfg);
    if (blocks.length === cfg.layers && stackedQkvUsed(cfg)) frozenQkvStack(blocks);
  });
}

/**
 * Frees the cached views of `blocks` (call when disposing the tensors they view).
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * disposeBlockViews(encoder.weights.blocks); // rebuilt on the next forward pass if needed
 * encoder.dispose();
 * ```
 */
export function disposeBlockViews(blocks: readonly Block[]): void {
  for (const b of blocks) {
    const v = views.get(b);
    if (v) disposeViews(v);
    views.delete(b);
    qkvStacks.get(b)?.stack.dispose();
    qkvStacks.delete(b);
  }
}

/** A tower's frozen W_qkv stacked, keyed by its first block, and the blocks it stacks. */
const qkvStacks = new WeakMap<Block, { blocks: readonly Block[]; stack: tf.Tensor3D }>();

/**
 * Whether the adapted weights W_qkv + Aᵀ·B̃ of every block are one product on webgpu: the WGSL
 * kernels are on and the stack of frozen W_qkv, [layers, width, 3·width], which that product
 * binds whole (as it does its output), fits the adapter's binding limits (ViT-B/16's 85 MB does
 * on lavapipe's 128 MiB; ViT-L/14's 302 MB does not, and there each block keeps its own product).
 * `DEER_WGSL_QKV_STACK=0` keeps one product per block (to compare the two).
 */
export function stackedQkvUsed(cfg: TransformerShape): boolean {
  if (!wgslKernelsEnabled() || Deno.env.get("DEER_WGSL_QKV_STACK") === "0") return false;
  const bytes = 4 * cfg.layers * cfg.width * 3 * cfg.width;
  return webgpuAdapter !== null && bytes <= bindingLimit(webgpuAdapter);
}

/**
 * The frozen W_qkv of `blocks` stacked as [layers, width, 3·width], built once and kept until
 * {@link disposeBlockViews} (one copy of those weights, 85 MB for ViT-B/16, on the adapter).
 */
function frozenQkvStack(blocks: readonly Block[]): tf.Tensor3D {
  const cached = qkvStacks.get(blocks[0]);
  if (
    cached && cached.blocks.length === blocks.length &&
    cached.blocks.every((b, i) => b === blocks[i])
  ) {
    return cached.stack;
  }
  cached?.stack.dispose();
  const stack = tf.keep(tf.stack(blocks.map((b) => b.qkvWeight))) as tf.Tensor3D;
  qkvStacks.set(blocks[0], { blocks: [...blocks], stack });
  return stack;
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/**
 * A LayerNorm's output and what its backward pass reads: with the fused kernel, the input and
 * the per-row mean and 1/σ; else the input as [1, rows, width, 1] and the per-row mean, variance
 * and reserve of TensorFlow's `FusedBatchNormV3` (see {@link layerNormForward}).
 */
interface NormState {
  y: tf.Tensor;
  saved: tf.Tensor[];
}

/**
 * How many tensors a {@link NormState} of rows `width` wide saves for the backward pass (fixed
 * per process and width).
 */
function normSaved(width: number): number {
  return nativeOps() ? 3 : wgslRowsFit(width) ? 1 : portable() ? 2 : 4;
}

/** The tfjs-node backend's op runner (this path runs only on `tensorflow`). */
interface TfOpRunner {
  binding: Record<string, number>;
  executeMultipleOutputs(
    name: string,
    attrs: { name: string; type: number; value: unknown }[],
    inputs: tf.Tensor[],
    outputs: number,
  ): tf.Tensor[];
}

/**
 * Runs the TensorFlow op `name` on float32 tensors (`types`: its type attributes) with further
 * attributes.
 */
function runTfOp(
  name: string,
  types: string[],
  attrs: Record<string, number | string | boolean>,
  inputs: tf.Tensor[],
  outputs: number,
): tf.Tensor[] {
  const backend = tf.backend() as unknown as TfOpRunner;
  const b = backend.binding;
  const list = [
    ...types.map((type) => ({ name: type, type: b.TF_ATTR_TYPE, value: b.TF_FLOAT })),
    ...Object.entries(attrs).map(([key, value]) => ({
      name: key,
      type: typeof value === "number"
        ? b.TF_ATTR_FLOAT
        : typeof value === "string"
        ? b.TF_ATTR_STRING
        : b.TF_ATTR_BOOL,
      value,
    })),
  ];
  return backend.executeMultipleOutputs(name, list, inputs, outputs);
}

/**
 * The matrix product a·b (`ta`, `tb`: transpose a, b) of 2-D or batched tensors, with
 * broadcasting over the batch axes: TensorFlow's `BatchMatMulV2` called directly — `tf.matMul`
 * reshapes both operands to 3-D and the result back, three more kernels per product. On webgpu
 * with the WGSL kernels, large products run as the tiled `DeerWgsl_MatMul`
 * (lib/webgpu_kernels.ts, {@link wgslMatMulUsed} says which; always those that read an operand
 * in place from a stack: a block's LoRA factors, the q/k/v slots), the others as `tf.matMul`.
 */
function mm(a: MatMulOperand, b: MatMulOperand, ta = false, tb = false): tf.Tensor {
  if (wgslMatMulUsed(a, b, ta, tb)) return wgslMatMul(a, b, ta, tb);
  const [x, y] = [materialize(a), materialize(b)];
  if (portable()) return tf.matMul(x, y, ta, tb);
  return runTfOp("BatchMatMulV2", ["T"], { adj_x: ta, adj_y: tb }, [x, y], 1)[0];
}

/**
 * `c + a·b` (c the product's shape) on webgpu in one kernel: `DeerWgsl_MatMul` storing with the
 * addend, or tfjs' fused product with c as its bias.
 */
function mmAdd(
  a: MatMulOperand,
  b: MatMulOperand,
  c: tf.Tensor,
  ta = false,
  tb = false,
): tf.Tensor {
  if (wgslMatMulUsed(a, b, ta, tb)) return wgslMatMulAdd(a, b, c, ta, tb);
  const [x, y] = [materialize(a), materialize(b)];
  return tf.fused.matMul({ a: x, b: y, transposeA: ta, transposeB: tb, bias: c });
}

/**
 * LayerNorm over the last axis (biased variance, as PyTorch): the fused `DeerLayerNorm` when
 * loaded; else TensorFlow's `FusedBatchNormV3` in training mode on x viewed as NCHW
 * [1, rows, width, 1] — each row is a channel, normalised over its `width` values — which is one
 * kernel instead of seven passes (mean, centre, square, mean, rsqrt, scale), the affine γ, β
 * following.
 */
function layerNormForward(x: tf.Tensor, p: Norm, eps: number): NormState {
  if (nativeOps()) {
    // DeerLayerNorm (lib/native.ts): statistics, normalisation and affine in one kernel.
    const [y, mean, rstd] = runTfOp(
      "DeerLayerNorm",
      [],
      { epsilon: eps },
      [x, p.weight, p.bias],
      3,
    );
    // A handle of its own on x: the caller may dispose x before the backward pass.
    return { y, saved: [tf.clone(x), mean, rstd] };
  }
  if (wgslRowsFit(x.shape[x.shape.length - 1])) {
    // Fused WGSL (lib/webgpu_kernels.ts), one kernel; the backward pass reads x (a handle of its
    // own) and computes the statistics again.
    const y = wgslLayerNormForward(x, p.weight, p.bias, eps);
    return { y, saved: [tf.clone(x)] };
  }
  if (portable()) {
    // x̂ = (x − mean)·rstd; the backward pass reads x̂ and rstd.
    const { mean, variance } = tf.moments(x, -1, true);
    const rstd = tf.rsqrt(tf.add(variance, eps));
    const xhat = tf.mul(tf.sub(x, mean), rstd);
    tf.dispose([mean, variance]);
    return { y: tf.add(tf.mul(xhat, p.weight), p.bias), saved: [xhat, rstd] };
  }
  const [rows, width] = x.shape as [number, number];
  const x4 = tf.reshape(x, [1, rows, width, 1]);
  const [xhat, batchMean, batchVar, mean, variance, reserve] = runTfOp(
    "FusedBatchNormV3",
    ["T", "U"],
    { epsilon: eps, exponential_avg_factor: 1, data_format: "NCHW", is_training: true },
    [x4, tf.ones([rows]), tf.zeros([rows]), tf.zeros([0]), tf.zeros([0])],
    6,
  );
  tf.dispose([batchMean, batchVar]);
  const y = tf.add(tf.mul(tf.reshape(xhat, [rows, width]), p.weight), p.bias);
  return { y, saved: [x4, mean, variance, reserve] };
}

/**
 * dx of y = x̂·γ + β, (1/σ)·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) with dx̂ = dy·γ: the fused
 * `DeerLayerNormGrad` when loaded, else `FusedBatchNormGradV3` on dx̂ (from the saved input, mean
 * and variance). With `residual`, `residual + dx` (the gradient of a residual connection around
 * the norm's branch), added inside the WGSL kernel on webgpu.
 */
function layerNormBackward(
  dy: tf.Tensor,
  gamma: tf.Tensor,
  saved: tf.Tensor[],
  eps: number,
  residual?: tf.Tensor,
): tf.Tensor {
  if (wgslRowsFit(dy.shape[dy.shape.length - 1])) {
    const [x] = saved;
    return wgslLayerNormBackward(dy, x, gamma, eps, residual);
  }
  const dx = layerNormInputGrad(dy, gamma, saved, eps);
  return residual ? tf.add(residual, dx) : dx;
}

/** {@link layerNormBackward} without the residual, on every backend but the WGSL kernels'. */
function layerNormInputGrad(dy: tf.Tensor, gamma: tf.Tensor, saved: tf.Tensor[], eps: number) {
  if (nativeOps()) {
    const [x, mean, rstd] = saved;
    return runTfOp("DeerLayerNormGrad", [], {}, [dy, x, mean, rstd, gamma], 1)[0];
  }
  if (portable()) {
    const [xhat, rstd] = saved;
    const dxhat = tf.mul(dy, gamma);
    const centred = tf.sub(dxhat, tf.mean(dxhat, -1, true));
    return tf.mul(tf.sub(centred, tf.mul(xhat, tf.mean(tf.mul(dxhat, xhat), -1, true))), rstd);
  }
  const [x4, mean, variance, reserve] = saved;
  const [, rows, width] = x4.shape as [number, number, number, number];
  const dxhat = tf.reshape(tf.mul(dy, gamma), [1, rows, width, 1]);
  const [dx, ...rest] = runTfOp(
    "FusedBatchNormGradV3",
    ["T", "U"],
    { epsilon: eps, data_format: "NCHW", is_training: true },
    [dxhat, x4, tf.ones([rows]), mean, variance, reserve],
    5,
  );
  tf.dispose(rest);
  return tf.reshape(dx, [rows, width]);
}

// ---------------------------------------------------------------------------------------------
// One block

/**
 * One block's LoRA factors: A_q|A_k|A_v [3r, width], s·B block-diagonal B̃ [3r, 3·width] times
 * the column scale D (`BlockViews.colScale`), and the scaled adapted weight
 * (W_qkv (+ Rᵀ) + Aᵀ·B̃)·D [width, 3·width] the forward pass multiplies with. With the WGSL
 * kernels, D is applied to q by the layout kernels instead (`wgslHeadSlot`, and its gradient by
 * `wgslHeadsToRows`): B and W are then without it, B̃ and W_qkv (+ Rᵀ) + Aᵀ·B̃.
 */
interface BlockFactors {
  /** With the WGSL kernels, block i's entry of the stack [layers, 3r, width], read in place. */
  A: MatMulOperand;
  /** B̃·D (B̃ with the WGSL kernels: block i's entry of the stack [layers, 3r, 3·width]). */
  B: MatMulOperand;
  /**
   * (W_qkv + Aᵀ·B̃)·D (W_qkv + Aᵀ·B̃ with the WGSL kernels: block i's entry of the stack
   * [layers, width, 3·width] where {@link stackedQkvUsed}).
   */
  W: MatMulOperand;
}

/** What a block's backward pass reads (both LayerNorms' states, the attention, the MLP). */
interface BlockSaved {
  h: tf.Tensor2D;
  /** h·Aᵀ, kept when B is trained (else `h` stands in). */
  u: tf.Tensor2D;
  /** ln_1's saved state ({@link NormState}). */
  ln1: tf.Tensor[];
  /** q, k, v: with the WGSL kernels, slots of one `wgslHeadSlots` stack (q of the class token
   * alone in the last block: a tensor of its own), read in place. */
  qs: MatMulOperand;
  k: MatMulOperand;
  v: MatMulOperand;
  p: tf.Tensor;
  /** ln_2's saved state. */
  ln2: tf.Tensor[];
  /** The MLP's pre-activation (before b_fc1 is added where the WGSL gate kernels add it). */
  z: tf.Tensor;
  /** 1 + erf z (GELU) or σ(z) (QuickGELU). */
  gate: tf.Tensor;
}

/** The order of a block's single saved tensors (then ln_1's and ln_2's states) for `save`. */
const SAVED_KEYS = ["h", "u", "qs", "k", "v", "p", "z", "gate"] as const;

/** How many tensors one block saves. */
function blockSaved(width: number): number {
  return SAVED_KEYS.length + 2 * normSaved(width);
}

/** The slot (0 q, 1 k, 2 v) a saved key holds, if it is one of them. */
const SLOT: Partial<Record<(typeof SAVED_KEYS)[number], number>> = { qs: 0, k: 1, v: 2 };

function flattenSaved(s: BlockSaved): tf.Tensor[] {
  // A slot read in place is kept as its whole stack (the same tensor for each of its slots).
  return [...SAVED_KEYS.map((key) => operandTensor(s[key])), ...s.ln1, ...s.ln2];
}

function unflattenSaved(t: tf.Tensor[], width: number): BlockSaved {
  // A stack of slots 3 − c..2 ([c, heads, N, T, d_head], rank 5) holds slot j at j − 3 + c.
  const slot = (x: tf.Tensor, j: number | undefined): MatMulOperand =>
    j === undefined || x.rank !== 5 ? x : stackedMatrix(x, j - 3 + x.shape[0]);
  const single = Object.fromEntries(SAVED_KEYS.map((key, i) => [key, slot(t[i], SLOT[key])]));
  const at = SAVED_KEYS.length;
  return {
    ...single,
    ln1: t.slice(at, at + normSaved(width)),
    ln2: t.slice(at + normSaved(width), at + 2 * normSaved(width)),
  } as unknown as BlockSaved;
}

interface BlockContext {
  cfg: TransformerShape;
  n: number;
  t: number;
  keyBias?: tf.Tensor1D;
}

/**
 * q [heads, N, tq, d_head] (the first `tq` tokens of each image: all T, or the class token), k
 * and v [heads, N, T, d_head] of h [N·T, width]: one product of h with the weight viewed per
 * head, [3·heads, width, d_head] (h broadcast over the heads), so that the activations come out
 * head-major with no transpose of their own — only the small weight is transposed. With the WGSL
 * kernels, one plain product h·W [N·T, 3·width] instead, and the bias and the cut into heads of
 * q, k, v one kernel (`wgslHeadSlots`; the products read each slot where it lies), q of the class
 * token alone a second one (`wgslHeadSlot`).
 */
function headMajorQkv(
  h: tf.Tensor,
  weight: MatMulOperand,
  bias: tf.Tensor,
  ctx: BlockContext,
  tq: number,
): MatMulOperand[] {
  const { n, t, cfg } = ctx;
  const dh = cfg.width / cfg.heads;
  if (wgslKernelsEnabled()) {
    // Rows h·W [N·T, 3·width], cut into heads by the kernel. The weight is without D here
    // (BlockFactors): q is scaled by 1/√d_head as it is cut out.
    const rows = mm(h, weight);
    const qScale = 1 / Math.sqrt(dh);
    if (tq === t) {
      const slots = wgslHeadSlots(rows, bias, n, 0, qScale);
      return [0, 1, 2].map((j) => stackedMatrix(slots, j));
    }
    const kv = wgslHeadSlots(rows, bias, n, 1);
    return [wgslHeadSlot(rows, bias, 0, n, tq, qScale), stackedMatrix(kv, 0), stackedMatrix(kv, 1)];
  }
  const perHead = tf.transpose(
    tf.reshape(materialize(weight), [cfg.width, 3 * cfg.heads, dh]),
    [1, 0, 2],
  );
  const product = mm(h, perHead);
  const [q, k, v] = tf.unstack(tf.reshape(tf.add(product, bias), [3, cfg.heads, n, t, dh]));
  return [tq === t ? q : tf.slice(q, [0, 0, 0, 0], [cfg.heads, n, tq, dh]), k, v];
}

/**
 * Σ_h Σ_d o[h, n, t, d]·W_out[h, d, c] → [n, t, c]: TensorFlow's `Einsum`, or on portable
 * backends one product of o laid out as rows [n·t, heads·d_head] with W_out [width, width].
 * (tfjs' own einsum multiplies out the [h, n, t, d, c] outer product before summing: 3.7 GB for
 * ViT-B/16 at batch 8, beyond a WebGPU binding, which then reads garbage.)
 */
function headsTimesOut(o: tf.Tensor, out: tf.Tensor): tf.Tensor {
  if (!portable()) return tf.einsum("hntd,hdc->ntc", o, out);
  const [h, n, t, d] = o.shape;
  const rows = tf.reshape(tf.transpose(o, [1, 2, 0, 3]), [n * t, h * d]);
  return tf.reshape(mm(rows, tf.reshape(out, [h * d, out.shape[2]!])), [n, t, out.shape[2]!]);
}

/**
 * Attention's p [heads, N, t, T] times v [heads, N, T, d_head] through W_out → [N, t, width]:
 * {@link headsTimesOut} of p·v, or with the WGSL product, p·v stored directly as the rows
 * [N·t, heads·d_head] that W_out multiplies (no transpose between the two products).
 */
function attentionTimesOut(p: tf.Tensor, v: MatMulOperand, out: tf.Tensor): tf.Tensor {
  const [h, n, t] = p.shape;
  const [, d, c] = out.shape;
  if (wgslLaidOutUsed(p, v, false, false, { images: n })) {
    const rows = mm(wgslMatMulToRows(p, v, n), tf.reshape(out, [h * d, c]));
    return tf.reshape(rows, [n, t, c]);
  }
  return headsTimesOut(mm(p, v), out);
}

/**
 * Σ_c g[n, t, c]·W_out[h, d, c] → [h, n, t, d], the transpose of {@link headsTimesOut} (with the
 * WGSL product, stored head-major as it is computed, no transpose after it).
 */
function outTransposedToHeads(g: tf.Tensor, out: tf.Tensor): tf.Tensor {
  if (!portable()) return tf.einsum("ntc,hdc->hntd", g, out);
  const [n, t, c] = g.shape;
  const [h, d] = out.shape;
  const [g2, out2] = [tf.reshape(g, [n * t, c]), tf.reshape(out, [h * d, c])];
  if (wgslLaidOutUsed(g2, out2, false, true, { headDim: d })) {
    return tf.reshape(wgslMatMulToHeads(g2, out2, d, false, true), [h, n, t, d]);
  }
  const rows = mm(g2, out2, false, true);
  return tf.transpose(tf.reshape(rows, [n, t, h, d]), [2, 0, 1, 3]);
}

/**
 * The class token's rows of [N·T, width] (a [N, width] tensor, sliced out; with the WGSL kernels
 * the last block reads them where they lie instead, in its residual and its LayerNorm gradient).
 */
function classRows(x: tf.Tensor, ctx: BlockContext): tf.Tensor2D {
  const { n, t, cfg } = ctx;
  return tf.reshape(tf.slice(tf.reshape(x, [n, t, cfg.width]), [0, 0, 0], [n, 1, cfg.width]), [
    n,
    cfg.width,
  ]);
}

/**
 * One pre-LN block on the residual stream `x` [N·T, width]
 * (docs/method.md#lora-on-a-frozen-clip-image-tower; `vit.ts` module doc). With `classOnly`, the
 * output is the class token's row of every image alone, [N, width].
 */
function blockForward(
  x: tf.Tensor2D,
  w: BlockViews,
  qkvWeight: tf.Tensor2D,
  lora: BlockFactors | null,
  ctx: BlockContext,
  classOnly: boolean,
  keep: { saved: boolean; u: boolean },
): { out: tf.Tensor2D; saved: BlockSaved | null } {
  const { cfg, n, t } = ctx;
  const { width } = cfg;
  const ln1 = layerNormForward(x, w.ln1, cfg.lnEps);
  const h = ln1.y as tf.Tensor2D;
  // q | k | v = h·(W_qkv + Aᵀ·B̃) + b_qkv = h·W_qkv + s·(h·Aᵀ)·Bᵀ + b_qkv
  // (docs/method.md#lora-on-a-frozen-clip-image-tower), with q scaled by 1/√d_head through D; the
  // backward pass needs u = h·Aᵀ.
  const u = lora && keep.u ? mm(h, lora.A, false, true) as tf.Tensor2D : null;
  const wgsl = wgslKernelsEnabled();
  const weight = lora?.W ?? (wgsl ? qkvWeight : tf.mul(qkvWeight, w.colScale));
  // qs: q of the rows the block outputs (the class token's alone with `classOnly`).
  const [qs, k, v] = headMajorQkv(h, weight, w.qkvBias, ctx, classOnly ? 1 : t);
  let scores = mm(qs, k, false, true);
  if (ctx.keyBias) scores = tf.add(scores, ctx.keyBias);
  const p = tf.softmax(scores);
  const rows = classOnly ? n : n * t;
  const attended = tf.reshape(attentionTimesOut(p, v, w.out), [rows, width]);
  // With the WGSL kernels the class rows are read where they lie in x (no slice).
  const x1 = classOnly && wgsl
    ? wgslResidual(x, attended, w.outBias, 1, t)
    : residualAdd(classOnly ? classRows(x, ctx) : x, attended, w.outBias, 1);
  // MLP on z = k·(ln_2(x1)·W_fc1 + b_fc1), k folded into ln_2 and b_fc1; z is [rows, mlp], or
  // [mlp, rows] in the transposed layout.
  const ln2 = layerNormForward(x1, w.ln2, cfg.lnEps);
  const t2 = transposedMlp(cfg);
  // The WGSL gate kernels add b_fc1 themselves (z is then kept without it).
  const product = mm(t2 ? w.fc1 : ln2.y, t2 ? ln2.y : w.fc1, t2, t2);
  const z = wgsl ? product : tf.add(product, w.fc1Bias);
  const [gated, gate] = wgsl
    ? wgslGateForward(z, cfg.act === "quick_gelu" ? "quick_gelu" : "gelu", w.fc1Bias)
    : cfg.act === "quick_gelu"
    ? quickGeluForward(z)
    : geluForward(z);
  const mlp = mm(gated, w.fc2, t2, false);
  const out = residualAdd(x1, mlp, w.fc2Bias, outputScale(cfg.act)) as tf.Tensor2D;
  const saved = keep.saved
    ? {
      h,
      u: u ?? h,
      ln1: ln1.saved,
      qs,
      k,
      v,
      p,
      ln2: ln2.saved,
      z,
      gate,
    }
    : null;
  return { out, saved };
}

/**
 * A residual connection `a + (scale·b + bias)` (b a branch's output, bias [width]): one fused
 * kernel (`DeerResidual`, lib/native.ts) or up to three.
 */
function residualAdd(a: tf.Tensor, b: tf.Tensor, bias: tf.Tensor, scale: number): tf.Tensor {
  if (nativeOps()) return runTfOp("DeerResidual", [], { scale }, [a, b, bias], 1)[0];
  if (wgslKernelsEnabled()) return wgslResidual(a, b, bias, scale);
  return tf.add(a, tf.add(scale === 1 ? b : tf.mul(b, scale), bias));
}

/** ln(2/√π): the exact GELU's derivative uses (2/√π)·exp(−z²) = exp(ln(2/√π) − z²). */
const LOG_TWO_OVER_SQRT_PI = Math.log(2 / Math.sqrt(Math.PI));

/** QuickGELU in the scaled form of this path: `gate = σ(z)`, `act = z·gate`. */
function quickGeluForward(z: tf.Tensor): [tf.Tensor, tf.Tensor] {
  const gate = tf.sigmoid(z);
  return [tf.mul(z, gate), gate];
}

/**
 * The exact GELU in the scaled form of this path: `gate = 1 + erf z`, `act = z·gate` — one fused
 * kernel (`DeerGelu`, lib/native.ts) when `fused`, else three TensorFlow kernels.
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const z = tf.tensor1d([-1, 0, 1]);
 * const [act, gate] = geluForward(z, false);
 * await act.data(); // z·(1 + erf z) ≈ [-0.157, 0, 1.843]: 2·GELU(z)
 * tf.dispose([z, act, gate]);
 * ```
 */
export function geluForward(z: tf.Tensor, fused = nativeOps()): [tf.Tensor, tf.Tensor] {
  if (fused) {
    const [act, gate] = runTfOp("DeerGelu", [], {}, [z], 2);
    return [act, gate];
  }
  const gate = tf.add(tf.erf(z), 1);
  return [tf.mul(z, gate), gate];
}

/**
 * The gradient at z of {@link geluForward}'s `act` given `d` at it:
 * `d·(gate + z·(2/√π)·exp(−z²))` — one fused kernel (`DeerGeluGrad`) when `fused`, else six.
 *
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const z = tf.tensor1d([-1, 0, 1]);
 * const [act, gate] = geluForward(z, false);
 * const dz = geluBackward(tf.onesLike(z), z, gate, false);
 * await dz.data(); // d/dz of z·(1 + erf z) ≈ [-0.258, 1, 2.258]
 * tf.dispose([z, act, gate, dz]);
 * ```
 */
export function geluBackward(
  d: tf.Tensor,
  z: tf.Tensor,
  gate: tf.Tensor,
  fused = nativeOps(),
): tf.Tensor {
  if (fused) return runTfOp("DeerGeluGrad", [], {}, [d, z, gate], 1)[0];
  return tf.mul(d, tf.add(gate, tf.mul(z, tf.exp(tf.sub(LOG_TWO_OVER_SQRT_PI, tf.square(z))))));
}

/**
 * Gradients of one block: from `dOut` (the gradient at its output) to the gradient at its input
 * (unless `needInput` is false) and at its LoRA factors (A and the block-diagonal s·B). With
 * `want.deferA`, `dA` is dQkv·B̃ᵀ, whose product with h, (dQkv·B̃ᵀ)ᵀ·h, the caller makes (for
 * every block at once).
 */
function blockBackward(
  dOut: tf.Tensor,
  w: BlockViews,
  lora: BlockFactors,
  s: BlockSaved,
  ctx: BlockContext,
  classOnly: boolean,
  needInput: boolean,
  want: { A: boolean; B: boolean; deferA?: boolean },
): { dx: tf.Tensor | null; dA: tf.Tensor | null; dB: tf.Tensor | null } {
  const { cfg, n, t } = ctx;
  const { width } = cfg;
  // MLP: out = x1 + c·(z·gate(z))·W_fc2 + b_fc2 (the WGSL gate gradient multiplies by c itself).
  const t2 = transposedMlp(cfg);
  const wgsl = wgslKernelsEnabled();
  const dMlp = wgsl ? dOut : tf.mul(dOut, outputScale(cfg.act));
  const dGated = t2 ? mm(w.fc2, dMlp, false, true) : mm(dMlp, w.fc2, false, true);
  const act = cfg.act === "quick_gelu" ? "quick_gelu" : "gelu";
  const dz = wgsl
    ? wgslGateBackward(dGated, s.z, s.gate, act, outputScale(cfg.act), w.fc1Bias)
    : cfg.act === "quick_gelu"
    // d/dz z·σ(z) = σ·(1 + z·(1 − σ))
    ? tf.mul(dGated, tf.mul(s.gate, tf.add(tf.mul(s.z, tf.sub(1, s.gate)), 1)))
    // d/dz z·(1 + erf z) = (1 + erf z) + z·(2/√π)·exp(−z²)
    : geluBackward(dGated, s.z, s.gate);
  const dLn2 = mm(dz, w.fc1, t2, true);
  const dx1 = layerNormBackward(dLn2, w.ln2.weight, s.ln2, cfg.lnEps, dOut);
  // Attention: x1 = x + softmax(qs·kᵀ)·v·W_out + b_out.
  const dAttended = outTransposedToHeads(tf.reshape(dx1, [n, classOnly ? 1 : t, width]), w.out);
  const dp = mm(dAttended, s.v, false, true);
  const dv = mm(s.p, dAttended, true, false);
  // p·(dp − Σ dp·p): one fused kernel (DeerSoftmaxGrad, lib/native.ts) or four.
  const dScores = wgslRowsFit(dp.shape[dp.shape.length - 1])
    ? wgslSoftmaxBackward(s.p, dp)
    : nativeOps()
    ? runTfOp("DeerSoftmaxGrad", [], {}, [s.p, dp], 1)[0]
    : tf.mul(s.p, tf.sub(dp, tf.sum(tf.mul(dp, s.p), -1, true)));
  // Gradients at the scaled q|k|v (D is folded into the factors' gradients below).
  const dq = mm(dScores, s.k);
  const dk = mm(dScores, s.qs, true, false);
  // Back to [N·T, 3·width]: the inverse of the head-major layout (q's rows beyond the class
  // token zero with `classOnly`).
  // With the WGSL kernels, D's scaling of q is applied here: dQkv is then the gradient at the
  // unscaled q|k|v, and B, W are without D (BlockFactors).
  const dQkv = wgsl
    ? wgslHeadsToRows(dq, dk, dv, 1 / Math.sqrt(width / cfg.heads)) as tf.Tensor2D
    : tf.reshape(
      tf.transpose(
        tf.stack([classOnly ? tf.pad(dq, [[0, 0], [0, 0], [0, t - 1], [0, 0]]) : dq, dk, dv]),
        [2, 3, 0, 1, 4],
      ),
      [n * t, 3 * width],
    ) as tf.Tensor2D;
  // (h·Aᵀ)·B̃·D: dB̃ = (uᵀ·dQkv)·D, dA = (dQkv·(B̃D)ᵀ)ᵀ·h (D already in dQkv with the kernels).
  const dB = !want.B
    ? null
    : wgsl
    ? mm(s.u, dQkv, true, false)
    : tf.mul(mm(s.u, dQkv, true, false), w.colScale);
  const dA = !want.A
    ? null
    : want.deferA
    ? mm(dQkv, lora.B, false, true)
    : mm(mm(dQkv, lora.B, false, true), s.h, true, false);
  if (!needInput) return { dx: null, dA, dB };
  const dh1 = mm(dQkv, lora.W, false, true);
  if (classOnly && wgslRowsFit(width)) {
    // The class rows' gradient dx1 [N, width] added to rows 0, T, 2T, … where they lie (no pad).
    const dx = wgslLayerNormBackward(dh1, s.ln1[0], w.ln1.weight, cfg.lnEps, dx1, t);
    return { dx, dA, dB };
  }
  const dResidual = classOnly
    ? tf.reshape(tf.pad(tf.reshape(dx1, [n, 1, width]), [[0, 0], [0, t - 1], [0, 0]]), [
      n * t,
      width,
    ])
    : dx1;
  return { dx: layerNormBackward(dh1, w.ln1.weight, s.ln1, cfg.lnEps, dResidual), dA, dB };
}

// ---------------------------------------------------------------------------------------------
// The encoder after its embedding

/**
 * s·B_q, s·B_k, s·B_v of every block, [3·layers, width, r], as [layers, 3r, 3·width] blocks:
 * broadcasting with `slots`, the identity as [3, 1, 3, 1], puts slot j's rows into columns j.
 */
function blockDiagonal(
  b: tf.Tensor,
  slots: tf.Tensor,
  layers: number,
  width: number,
  rank: number,
): tf.Tensor {
  const rows = tf.reshape(tf.transpose(tf.reshape(b, [layers, 3, width, rank]), [0, 1, 3, 2]), [
    layers,
    3,
    rank,
    1,
    width,
  ]);
  return tf.reshape(tf.mul(rows, slots), [layers, 3 * rank, 3 * width]);
}

/** The gradient of {@link blockDiagonal}: the diagonal blocks back as [3·layers, width, r]. */
function blockDiagonalGrad(
  d: tf.Tensor,
  slots: tf.Tensor,
  layers: number,
  width: number,
  rank: number,
): tf.Tensor {
  const blocks = tf.reshape(d, [layers, 3, rank, 3, width]);
  const diagonal = tf.sum(tf.mul(blocks, slots), 3); // [layers, 3, r, width]
  return tf.reshape(tf.transpose(diagonal, [0, 1, 3, 2]), [3 * layers, width, rank]);
}

/**
 * ln_pre, the transformer blocks, the final norm on the class token and the projection: `tokens`
 * [N·T, width] (patch and position embeddings) → [N, embedDim] features. Differentiable with respect to
 * the LoRA tensors (and only those): the gradient is {@link blockBackward}'s. All LoRA adapters
 * must share one rank (checked by the caller, which otherwise takes the autodiff path).
 */
export function frozenBlocksForward(
  cfg: TransformerShape,
  w: FrozenTower,
  tokens: tf.Tensor2D,
  n: number,
  lora?: LoraInput,
): tf.Tensor2D {
  const t = tokens.shape[0] / n;
  const { width, layers } = cfg;
  const ctx: BlockContext = { cfg, n, t, keyBias: w.keyBias };
  const blockWeights = w.blocks.map((b) => blockViews(b, cfg));
  const { slots } = blockWeights[0];

  /** Runs every block; with `keep` (training), collects what the backward pass needs. */
  const forward = (
    factors: BlockFactors[] | null,
    keep: tf.Tensor[] | null,
    keepU = false,
  ): { features: tf.Tensor2D; head: NormState } => {
    let x: tf.Tensor2D = w.lnPre
      ? layerNormForward(tokens, w.lnPre, cfg.lnEps).y as tf.Tensor2D
      : tokens;
    for (let i = 0; i < layers; i++) {
      const input = x;
      const last = i === layers - 1;
      const outs = tf.tidy(() => {
        const r = blockForward(
          input,
          blockWeights[i],
          // Read only without factors (then there is no residual either).
          blockWeights[i].qkv,
          factors?.[i] ?? null,
          ctx,
          last,
          { saved: keep !== null, u: keepU },
        );
        return keep && r.saved ? [r.out, ...flattenSaved(r.saved)] : [r.out];
      });
      if (input !== tokens) input.dispose();
      x = outs[0] as tf.Tensor2D;
      if (keep) keep.push(...outs.slice(1));
    }
    const head = layerNormForward(x, w.lnPost, cfg.lnEps);
    const normed = head.y as tf.Tensor2D;
    const features = !w.proj
      ? normed
      : w.projBias
      ? tf.add(mm(normed, w.proj), w.projBias)
      : mm(normed, w.proj);
    return { features: features as tf.Tensor2D, head };
  };

  if (!lora) return forward(null, null).features;
  // FedEx-LoRA: W_qkv + Rᵀ with the residuals [out, in] of q, k, v stacked.
  const residual = lora.residual;
  /** Block i's frozen W_qkv (+ Rᵀ). */
  const frozenQkv = (i: number): tf.Tensor2D =>
    residual
      ? tf.add(
        blockWeights[i].qkv,
        tf.transpose(tf.concat(residual.slice(3 * i, 3 * i + 3), 0)),
      ) as tf.Tensor2D
      : blockWeights[i].qkv;
  // With the WGSL kernels and the stack fitting, every block's adapted weight is one product.
  const stacked = stackedQkvUsed(cfg);
  /** The frozen W_qkv (+ Rᵀ) of every block, [layers, width, 3·width], when `stacked`. */
  const frozenStack = (): tf.Tensor => {
    const stack = frozenQkvStack(w.blocks);
    if (!residual) return stack;
    // Rᵀ of each block [width, 3·width]: the residuals [3·layers, out, in] as
    // [layers, 3·width, width], transposed.
    const r = tf.reshape(tf.stack(residual), [layers, 3 * width, width]);
    return tf.add(stack, tf.transpose(r, [0, 2, 1]));
  };

  const rank = lora.packed ? lora.packed.A.shape[1] : lora.A[0].shape[0];
  // The factors as [3·layers, r, width] and [3·layers, width, r]: as the caller packed them, or
  // stacked here.
  const packedOrStacked = (which: "A" | "B"): tf.Tensor =>
    lora.packed ? lora.packed[which] : tf.stack(lora[which]);
  // With the WGSL kernels the product kernel reads each block's A and B̃ where they lie in the
  // stacks (no slice per block and factor: 2·layers dispatches fewer per pass).
  const inPlace = wgslKernelsEnabled();
  /**
   * Per block: A_q|A_k|A_v, the block-diagonal s·B and the adapted W_qkv + Aᵀ·B̃; and the tensors
   * behind them, which a backward pass keeps ({@link keptFactors} reads them back).
   */
  const blockFactors = (
    packedA: tf.Tensor,
    packedB: tf.Tensor,
  ): { factors: BlockFactors[]; tensors: tf.Tensor[] } => {
    const a3 = tf.reshape(packedA, [layers, 3 * rank, width]);
    const b3 = inPlace
      ? wgslBlockDiagonal(packedB, lora.scale)
      : blockDiagonal(tf.mul(packedB, lora.scale), slots, layers, width, rank);
    if (stacked) {
      // Every block's W_qkv + Aᵀ·B̃ in one product, D applied in the layouts, the sum its
      // epilogue; each block reads its own where it lies.
      const adapted = wgslMatMulAdd(a3, b3, frozenStack(), true);
      const factors = blockWeights.map((_, i) => ({
        A: stackedMatrix(a3, i),
        B: stackedMatrix(b3, i),
        W: stackedMatrix(adapted, i),
      }));
      return { factors, tensors: [a3, b3, adapted] };
    }
    if (inPlace) {
      // D is applied in the layouts, and the sum is the product's epilogue.
      const factors = blockWeights.map((_, i) => {
        const [A, B] = [stackedMatrix(a3, i), stackedMatrix(b3, i)];
        return { A, B, W: mmAdd(A, B, frozenQkv(i), true) as tf.Tensor2D };
      });
      return { factors, tensors: [a3, b3, ...factors.map((f) => f.W as tf.Tensor)] };
    }
    const b = tf.unstack(b3);
    const factors = tf.unstack(a3).map((A, i) => {
      const B = b[i] as tf.Tensor2D;
      const D = blockWeights[i].colScale;
      return {
        A,
        B: tf.mul(B, D) as tf.Tensor2D,
        W: tf.mul(tf.add(frozenQkv(i), mm(A, B, true, false)), D) as tf.Tensor2D,
      };
    });
    return {
      factors,
      tensors: factors.flatMap((f) => [f.A as tf.Tensor, f.B as tf.Tensor, f.W as tf.Tensor]),
    };
  };
  /** The block factors from {@link blockFactors}' `tensors`, as a backward pass kept them. */
  const keptFactors = (kept: tf.Tensor[]): BlockFactors[] =>
    Array.from({ length: layers }, (_, i) =>
      inPlace
        ? {
          A: stackedMatrix(kept[0], i),
          B: stackedMatrix(kept[1], i),
          W: stacked ? stackedMatrix(kept[2], i) : kept[2 + i],
        }
        : { A: kept[3 * i], B: kept[3 * i + 1], W: kept[3 * i + 2] as tf.Tensor2D });
  const want = {
    A: lora.trainable?.includes("A") ?? true,
    B: lora.trainable?.includes("B") ?? true,
  };
  // Forward only (evaluation, or no factor to differentiate): nothing is kept for a backward pass.
  if (tf.engine().state.gradientDepth === 0 || !(want.A || want.B)) {
    const { factors } = blockFactors(packedOrStacked("A"), packedOrStacked("B"));
    return forward(factors, null).features;
  }
  // The inputs of the custom-gradient node are the trainable factors, stacked; a factor that is
  // not trainable is a constant inside it.
  const inputs = [
    ...(want.A ? [packedOrStacked("A")] : []),
    ...(want.B ? [packedOrStacked("B")] : []),
  ];
  const encode = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const packedA = want.A ? args[0] as tf.Tensor : packedOrStacked("A");
    const packedB = want.B ? args[want.A ? 1 : 0] as tf.Tensor : packedOrStacked("B");
    const save = args[inputs.length] as tf.GradSaveFunc;
    const { factors, tensors } = blockFactors(packedA, packedB);
    const keep: tf.Tensor[] = [];
    const { features, head } = forward(factors, keep, want.B);
    save([...keep, ...head.saved, ...tensors]);
    return {
      value: features,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const at = blockSaved(width) * layers;
        const headSaved = saved.slice(at, at + normSaved(width));
        const f = keptFactors(saved.slice(at + normSaved(width)));
        let dx: tf.Tensor = tf.tidy(() => {
          const dNormed = w.proj ? mm(dy, w.proj, false, true) : dy;
          return layerNormBackward(dNormed, w.lnPost.weight, headSaved, cfg.lnEps);
        });
        const dA: tf.Tensor[] = [];
        const dB: tf.Tensor[] = [];
        // With the WGSL kernels each block gives dQkv·B̃ᵀ, and every block's dA, its product
        // with h, is made after the loop (below) — where the device binds every block's two
        // tensors, the output and an addend in one kernel; else nothing is gained by waiting.
        const deferA = want.A && inPlace && wgslBindable(2 * layers + 1);
        const h: tf.Tensor[] = [];
        for (let i = layers - 1; i >= 0; i--) {
          const dIn = dx;
          const per = blockSaved(width);
          const s = unflattenSaved(saved.slice(per * i, per * (i + 1)), width);
          let r!: ReturnType<typeof blockBackward>;
          tf.tidy(() => {
            r = blockBackward(dIn, blockWeights[i], f[i], s, ctx, i === layers - 1, i > 0, {
              ...want,
              deferA,
            });
            return [r.dA, r.dB, r.dx].filter((t) => t !== null);
          });
          dIn.dispose();
          if (r.dA) dA.unshift(r.dA);
          if (r.dB) dB.unshift(r.dB);
          if (r.dx) dx = r.dx;
          if (deferA) h.unshift(s.h);
        }
        /** Every block's dA stacked, [layers, 3r, width]. */
        const stackedDA = (): tf.Tensor => {
          if (!deferA) return tf.stack(dA);
          // One batched product reading each block's dQkv·B̃ᵀ and h where they lie (no stack of
          // the blocks' dA after it), where the device binds that many tensors; else a product
          // per block, stacked, as without deferring.
          const [m, hs] = [matrixList(dA), matrixList(h)];
          if (wgslMatMulUsed(m, hs, true, false)) return wgslMatMul(m, hs, true, false);
          return tf.stack(dA.map((mi, i) => mm(mi, h[i], true, false)));
        };
        return tf.tidy(() => [
          ...(want.A ? [tf.reshape(stackedDA(), [3 * layers, rank, width])] : []),
          ...(want.B
            ? [
              inPlace
                // The blocks' gradients read where they lie, unless the device binds too few.
                ? wgslBlockDiagonalGrad(wgslBindable(layers) ? dB : tf.stack(dB), lora.scale)
                : tf.mul(blockDiagonalGrad(tf.stack(dB), slots, layers, width, rank), lora.scale),
            ]
            : []),
        ]);
      },
    };
  });
  return encode(...inputs) as tf.Tensor2D;
}
