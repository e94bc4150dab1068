/**
 * The frozen CLIP image tower (a ViT) with LoRA on q, k and v — the whole model in one file.
 *
 * Forward pass (SPEC §1), for `x` of shape [N, H, W, 3] (normalised pixels):
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
 * Three checkpoint layouts map onto these canonical weights (names in {@link VitHostWeights}):
 * * `openai` — open_clip's OpenAI-style `VisionTransformer` (`visual.conv1`, `visual.ln_pre`,
 *   `visual.transformer.resblocks.{i}.attn.in_proj_weight`, `mlp.c_fc`, `visual.proj` [width, e]).
 *   Activation: QuickGELU by default, because OpenAI's pretrained weights use it (open_clip's
 *   `ViT-B-16-quickgelu`, `pretrained="openai"`); a randomly initialised open_clip `ViT-B-16`
 *   uses exact GELU — say so with `{ act: "gelu" }` or the file's metadata.
 * * `hf` — Hugging Face `CLIPModel` / `CLIPVisionModelWithProjection` (`vision_model.*`,
 *   `pre_layrnorm` (sic), separate `q_proj`/`k_proj`/`v_proj`, `visual_projection.weight`).
 *   Heads, activation (`hidden_act`, default quick_gelu) and ε come from a `config.json` beside
 *   the weights when there is one.
 * * `timm` — open_clip's timm tower as in BiomedCLIP (`visual.trunk.*`: `patch_embed.proj` with
 *   bias, `cls_token`, `pos_embed`, fused `attn.qkv`, `norm`, then `visual.head.proj.weight`
 *   width→e, no bias). Exact GELU, ε = 1e-6, no ln_pre; pooling takes the class token after the
 *   final norm (timm `global_pool="token"`).
 * Files holding only the image tower (keys without the `visual.` prefix) load too.
 *
 * Settings the weights cannot tell (heads, activation, ε) are resolved in this order:
 * `options` > the file's metadata key `deer.vision` (JSON, e.g. `{"heads": 2, "act": "gelu"}`) >
 * a `config.json` (HF: `num_attention_heads`, `hidden_act`, `layer_norm_eps`) or
 * `open_clip_config.json` (open_clip: `vision_cfg.head_width`; GELU unless `quick_gelu` is set, as
 * open_clip builds it) beside the file > the layout's default (heads = width / 64). A default
 * taken for the activation or the heads of an OpenAI-layout or Hugging Face file is said once
 * per file on stderr, with the ways to override it.
 *
 * LoRA: the q, k and v projections of one block are one fused [width, 3·width] matmul; the
 * adapters add `s · (h Aᵀ) Bᵀ` through two thin matmuls whose weights are the block's three A's
 * stacked and its three B's laid out block-diagonally, so a block costs two extra matmuls and the
 * gradient with respect to A and B never forms a width×width matrix.
 *
 * 3D volumes ({@link inflateForVolumes}) — the scheme:
 * * Patches become cubic-ish: depthPatch × P × P voxels of a one-channel volume. The 2D kernel
 *   is summed over RGB (a gray voxel is the same value in all three channels) and replicated
 *   over depth divided by depthPatch (I3D inflation, Carreira & Zisserman 2017), so a patch that
 *   is constant in depth embeds exactly as its 2D slice.
 * * Position embeddings: the pretrained grid is resampled in-plane to the volume's grid (bicubic,
 *   PyTorch `F.interpolate(align_corners=False)`, as open_clip's `resize_pos_embed`) and a fixed
 *   sinusoidal depth signal is added, centred over depth and scaled to `depthScale` × the RMS of
 *   the in-plane position embeddings (default 1: depth is as visible as a row or a column).
 * * Attention: a volume has D/depthPatch tokens for every in-plane position. Each patch key gets a
 *   bias of −ln(D/depthPatch) so that the class token's attention budget between itself and the
 *   image is what the pretrained model expects. With `depthScale: 0`, a volume that is constant
 *   in depth then gives exactly the features of its 2D slice (tested).
 *
 * @example
 * ```ts
 * const encoder = await loadVisionEncoder("biomedclip.safetensors");
 * const features = tf.tidy(() => encoder.encode(tf.zeros([2, 224, 224, 3])));
 * features.shape; // [2, 512]
 * ```
 * @module
 */
import { tf, webgpuAdapter } from "../backend.ts";
import { checkBatchFits } from "../backend_webgpu.ts";
import type { Rng } from "../rng.ts";
import { linear } from "./_checkpoint.ts";
import { type SafeTensorInput, writeSafetensors } from "./safetensors.ts";
import {
  disposeBlockViews,
  frozenBlocksForward,
  frozenPathAvailable,
  prepareBlockViews,
} from "./vit_fast.ts";
import {
  type Block,
  blockLora,
  blockToTensors,
  type HostBlock,
  type HostNorm,
  type HostTensor,
  layerNorm,
  loraAdapterNames,
  type LoraInput,
  type Norm,
  normToTensors,
  toTensor,
  transformerBlock,
  type TransformerShape,
  weightTensors,
} from "./transformer.ts";

// ---------------------------------------------------------------------------------------------
// Configuration

/** Which checkpoint layout the weights came from. */
export type VitLayout = "openai" | "hf" | "timm";

/** Set by {@link inflateForVolumes}: the encoder reads [N, depth, height, width, 1] volumes. */
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

// ---------------------------------------------------------------------------------------------
// Canonical weights

/**
 * Canonical weights in host memory, every matrix in the `x · W` convention ([in, out]).
 * `patchWeight` is [channels·P·P, width] with rows ordered (row, column, channel) — the order
 * in which {@link patchify} lays out a patch.
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

/** The encoder's frozen tensors (see {@link VitHostWeights} for the conventions). */
export interface VitWeights {
  patchWeight: tf.Tensor2D;
  patchBias?: tf.Tensor1D;
  /** [1, 1, width]. */
  classEmbedding: tf.Tensor3D;
  positionEmbedding: tf.Tensor2D;
  /** Additive attention bias per key token (volume encoders only). */
  keyBias?: tf.Tensor1D;
  lnPre?: Norm;
  blocks: Block[];
  lnPost: Norm;
  proj?: tf.Tensor2D;
  projBias?: tf.Tensor1D;
}

/**
 * Creates the encoder from a config and canonical host weights; the encoder owns the tensors it
 * makes and frees them in `dispose()`.
 *
 * @example
 * ```ts
 * const encoder = createVitEncoder(config, hostWeights);
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

// ---------------------------------------------------------------------------------------------
// Fresh weights and export (used by `tasks/pretrain.ts`)

/**
 * Host weights of a freshly initialised ViT with CLIP's initialisation: patch embedding as
 * PyTorch's Conv2d default (U(−1/√fan_in, 1/√fan_in), fan_in = C·P·P); class and position
 * embeddings and `proj` N(0, width⁻¹ᐟ²) as open_clip's `VisionTransformer`; in each block
 * (OpenAI CLIP's `initialize_parameters`) q/k/v N(0, width⁻¹ᐟ²), the attention output and
 * `c_proj` N(0, width⁻¹ᐟ²·(2·layers)⁻¹ᐟ²), `c_fc` N(0, (2·width)⁻¹ᐟ²); biases 0; LayerNorms
 * 1 and 0. Draws are taken in that order (patch, class, positions, blocks, proj) from `rng`.
 * Optional parts follow `config` (`preNorm`, `patchBias`, `proj`, `projBias`).
 *
 * @example
 * ```ts
 * const host = randomVitWeights({ ...config, layers: 4, width: 64 }, createRng(0));
 * const encoder = createVitEncoder(config, host);
 * ```
 */
export function randomVitWeights(config: VitConfig, rng: Rng): VitHostWeights {
  const { width, layers, mlpDim, channels, patchSize: P, embedDim } = config;
  if (config.volume) throw new Error("randomVitWeights: build a 2D encoder, then inflate it");
  if (width % config.heads !== 0 || config.imageSize % P !== 0) {
    throw new Error(
      `randomVitWeights: heads ${config.heads} must divide width ${width} and patch ${P} the image size ${config.imageSize}`,
    );
  }
  const normal = (shape: number[], std: number): HostTensor => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = rng.normal() * std;
    return { shape, data };
  };
  const filled = (n: number, v: number): HostTensor => ({
    shape: [n],
    data: new Float32Array(n).fill(v),
  });
  const norm = (): HostNorm => ({ weight: filled(width, 1), bias: filled(width, 0) });
  const fanIn = channels * P * P;
  const bound = 1 / Math.sqrt(fanIn);
  const patchWeight: HostTensor = { shape: [fanIn, width], data: new Float32Array(fanIn * width) };
  for (let i = 0; i < patchWeight.data.length; i++) {
    patchWeight.data[i] = (2 * rng.uniform() - 1) * bound;
  }
  const patchBias = config.patchBias ? filled(width, 0) : undefined;
  const scale = 1 / Math.sqrt(width);
  const classEmbedding = normal([width], scale);
  const grid = config.imageSize / P;
  const positionEmbedding = normal([1 + grid * grid, width], scale);
  const projStd = scale / Math.sqrt(2 * layers);
  const fcStd = 1 / Math.sqrt(2 * width);
  const blocks: HostBlock[] = [];
  for (let i = 0; i < layers; i++) {
    blocks.push({
      ln1: norm(),
      qkvWeight: normal([width, 3 * width], scale),
      qkvBias: filled(3 * width, 0),
      outWeight: normal([width, width], projStd),
      outBias: filled(width, 0),
      ln2: norm(),
      fc1Weight: normal([width, mlpDim], fcStd),
      fc1Bias: filled(mlpDim, 0),
      fc2Weight: normal([mlpDim, width], projStd),
      fc2Bias: filled(width, 0),
    });
  }
  return {
    patchWeight,
    patchBias,
    classEmbedding,
    positionEmbedding,
    lnPre: config.preNorm ? norm() : undefined,
    blocks,
    lnPost: norm(),
    proj: config.proj ? normal([width, embedDim], scale) : undefined,
    projBias: config.proj && config.projBias ? filled(embedDim, 0) : undefined,
  };
}

/**
 * Saves an encoder's weights as an open_clip OpenAI-layout image tower (`visual.conv1.weight`,
 * `visual.transformer.resblocks.{i}.attn.in_proj_weight`, …, PyTorch [out, in] matrices) that
 * {@link loadVisionEncoder} and open_clip read. Heads, activation and LayerNorm ε go into the
 * metadata key `deer.vision`, so loading needs no options; `metadata` adds more keys. Written
 * atomically. Volume encoders and projection biases (no OpenAI key) are refused.
 *
 * @example
 * ```ts
 * await saveVisionEncoder("models/tiny.safetensors", encoder, { "deer.recipe": "…" });
 * const again = await loadVisionEncoder("models/tiny.safetensors");
 * ```
 */
export async function saveVisionEncoder(
  path: string,
  model: { config: VitConfig; weights: VitWeights },
  metadata: Record<string, string> = {},
): Promise<void> {
  const { config: cfg, weights: w } = model;
  if (cfg.volume || w.keyBias) {
    throw new Error(`${path}: a volume encoder cannot be saved; save the 2D encoder it came from`);
  }
  if (w.projBias) {
    throw new Error(`${path}: the OpenAI layout has no projection bias; this encoder has one`);
  }
  // Read every weight back first (a GPU backend has no synchronous read-back).
  const hostOf = new Map<tf.Tensor, HostTensor>();
  const visit = async (v: unknown): Promise<void> => {
    if (v instanceof tf.Tensor) {
      if (!hostOf.has(v)) {
        hostOf.set(v, { shape: v.shape, data: Float32Array.from(await v.data() as Float32Array) });
      }
    } else if (v !== null && typeof v === "object") {
      for (const x of Object.values(v)) await visit(x);
    }
  };
  await visit(w);
  const host = (t: tf.Tensor): HostTensor => hostOf.get(t)!;
  // [in, out] (x · W) → PyTorch Linear [out, in].
  const torchLinear = (t: tf.Tensor): SafeTensorInput => linear(host(t));
  const { width, channels, patchSize: P } = cfg;
  const patch = host(w.patchWeight);
  const conv = new Float32Array(width * channels * P * P);
  for (let o = 0; o < width; o++) {
    for (let c = 0; c < channels; c++) {
      for (let i = 0; i < P; i++) {
        for (let j = 0; j < P; j++) {
          conv[((o * channels + c) * P + i) * P + j] = patch.data[
            ((i * P + j) * channels + c) *
              width + o
          ];
        }
      }
    }
  }
  const v = "visual.";
  const out: Record<string, SafeTensorInput> = {
    [`${v}conv1.weight`]: { shape: [width, channels, P, P], data: conv },
    [`${v}class_embedding`]: { shape: [width], data: host(w.classEmbedding).data },
    [`${v}positional_embedding`]: host(w.positionEmbedding),
  };
  if (w.patchBias) out[`${v}conv1.bias`] = host(w.patchBias);
  const putNorm = (prefix: string, n: Norm) => {
    out[`${prefix}.weight`] = host(n.weight);
    out[`${prefix}.bias`] = host(n.bias);
  };
  if (w.lnPre) putNorm(`${v}ln_pre`, w.lnPre);
  w.blocks.forEach((b, i) => {
    const p = `${v}transformer.resblocks.${i}.`;
    putNorm(`${p}ln_1`, b.ln1);
    out[`${p}attn.in_proj_weight`] = torchLinear(b.qkvWeight);
    out[`${p}attn.in_proj_bias`] = host(b.qkvBias);
    out[`${p}attn.out_proj.weight`] = torchLinear(b.outWeight);
    out[`${p}attn.out_proj.bias`] = host(b.outBias);
    putNorm(`${p}ln_2`, b.ln2);
    out[`${p}mlp.c_fc.weight`] = torchLinear(b.fc1Weight);
    out[`${p}mlp.c_fc.bias`] = host(b.fc1Bias);
    out[`${p}mlp.c_proj.weight`] = torchLinear(b.fc2Weight);
    out[`${p}mlp.c_proj.bias`] = host(b.fc2Bias);
  });
  putNorm(`${v}ln_post`, w.lnPost);
  if (w.proj) out[`${v}proj`] = host(w.proj); // open_clip keeps proj as [width, embed]
  await writeSafetensors(path, out, {
    "deer.vision": JSON.stringify({ heads: cfg.heads, act: cfg.act, lnEps: cfg.lnEps }),
    ...metadata,
  });
}

// ---------------------------------------------------------------------------------------------
// Forward

/**
 * Image [N, H, W, C] → [N·(H/P)·(W/P), P·P·C]; volume [N, D, H, W, C] →
 * [N·(D/Pd)·(H/P)·(W/P), Pd·P·P·C]. Rows are patches in (depth, row, column) order, each patch
 * flattened as (depth, row, column, channel) — the layout of `patchWeight`'s rows.
 */
export function patchify(x: tf.Tensor4D | tf.Tensor5D, patch: number, depthPatch = 1): tf.Tensor2D {
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
        `normalised pixels (resize and centre-crop to the encoder's imageSize, SPEC §2; volumes need inflateForVolumes)`,
    );
  }
}

function checkLora(cfg: VitConfig, lora: LoraInput): void {
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

/**
 * Patch embedding, class token, position embeddings and (unless `withLnPre` is false) ln_pre:
 * `x` → the residual stream [N·T, width] entering the first block.
 */
function embed(
  config: VitConfig,
  w: VitWeights,
  x: tf.Tensor4D | tf.Tensor5D,
  withLnPre = true,
): tf.Tensor2D {
  const n = x.shape[0];
  const { width } = config;
  const patches = patchify(x, config.patchSize, config.volume?.depthPatch ?? 1);
  const embedded =
    (w.patchBias
      ? tf.fused.matMul({ a: patches, b: w.patchWeight, bias: w.patchBias })
      : tf.matMul(patches, w.patchWeight)).reshape([n, -1, width]);
  const t = (embedded.shape[1] as number) + 1;
  const cls = tf.broadcastTo(w.classEmbedding, [n, 1, width]);
  const sequence = tf.concat([cls, embedded], 1).add(w.positionEmbedding);
  // The residual stream stays 2-D, [N·T, width]: LayerNorms and matmuls need no reshapes.
  const tokens = sequence.reshape([n * t, width]) as tf.Tensor2D;
  return w.lnPre && withLnPre ? layerNorm(tokens, w.lnPre, config.lnEps) : tokens;
}

/** Whether {@link frozenBlocksForward} can take `lora`: one rank for every adapter. */
function fitsFrozenPath(lora?: LoraInput): boolean {
  if (!frozenPathAvailable()) return false;
  return !lora || lora.A.every((a) => a.shape[0] === lora.A[0].shape[0]);
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
  checkInput(config, x);
  if (lora) checkLora(config, lora);
  return tf.tidy(() =>
    frozenBlocksForward(config, w, embed(config, w, x, false), x.shape[0], lora)
  );
}

/**
 * The forward pass as a function of the weights (module doc): `x` [N, H, W, 3] normalised pixels
 * (or [N, D, H, W, 1] for a volume config) → [N, embedDim] unnormalised features. Every weight
 * is an input, so `tf.grads` can differentiate with respect to any of them (pretraining,
 * `tasks/pretrain.ts`) as well as the LoRA tensors. Call it inside the caller's `tf.tidy`.
 *
 * @example
 * ```ts
 * const f = tf.tidy(() => encodeWithWeights(encoder.config, encoder.weights, x));
 * ```
 */
export function encodeWithWeights(
  config: VitConfig,
  w: VitWeights,
  x: tf.Tensor4D | tf.Tensor5D,
  lora?: LoraInput,
): tf.Tensor2D {
  checkInput(config, x);
  if (lora) checkLora(config, lora);
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

/**
 * An encoder that shares `base`'s tensors but for those in `replaced`, which are new: it owns
 * them and frees them in `dispose()`, and leaves the shared ones to `base`. This is how
 * {@link inflateForVolumes} (`vit_volume.ts`) gives one frozen transformer a second input
 * embedding. Dispose it before, or with, `base`.
 *
 * @example
 * ```ts
 * const wider = deriveVitEncoder(encoder, { ...encoder.config, imageSize: 448 }, { positionEmbedding });
 * ```
 */
export function deriveVitEncoder(
  base: VitEncoder,
  config: VitConfig,
  replaced: Partial<VitWeights>,
): VitEncoder {
  return makeEncoder(config, { ...base.weights, ...replaced }, weightTensors(replaced));
}

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
