/**
 * A ViT from scratch, and keeping it: CLIP's random initialisation ({@link randomVitWeights}) and
 * saving an encoder as an open_clip OpenAI-layout image tower ({@link saveVisionEncoder}) that
 * `loadVisionEncoder` (`vit_checkpoints.ts`) and open_clip read back. `tasks/pretrain.ts` makes the
 * toolkit's default model with them.
 *
 * @example
 * ```ts
 * import { createVitEncoder } from "./vit.ts";
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { createRng } from "../rng.ts";
 * const { config } = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const encoder = createVitEncoder(config, randomVitWeights(config, createRng(0)));
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await saveVisionEncoder(path, encoder);
 * encoder.dispose();
 * ```
 * @module
 */
import { tf } from "../backend.ts";
import type { Rng } from "../rng.ts";
import { linear } from "./_checkpoint.ts";
import { type SafeTensorInput, writeSafetensors } from "./safetensors.ts";
import {
  type HostBlock,
  type HostNorm,
  type HostTensor,
  type Norm,
  weightTensors,
} from "./transformer.ts";
import type { VitConfig, VitHostWeights, VitWeights } from "./vit.ts";

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
 * import { createVitEncoder } from "./vit.ts";
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * import { createRng } from "../rng.ts";
 * const { config } = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const host = randomVitWeights({ ...config, layers: 2 }, createRng(0));
 * host.blocks.length; // 2
 * const encoder = createVitEncoder({ ...config, layers: 2 }, host);
 * encoder.dispose();
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
 * `loadVisionEncoder` and open_clip read. Heads, activation and LayerNorm ε go into the
 * metadata key `deer.vision`, so loading needs no options; `metadata` adds more keys. Written
 * atomically. Volume encoders and projection biases (no OpenAI key) are refused.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder } from "./vit_checkpoints.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await saveVisionEncoder(path, encoder, { "deer.recipe": "…" });
 * const again = await loadVisionEncoder(path);
 * again.config.width; // 64
 * again.dispose();
 * encoder.dispose();
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
  for (const t of weightTensors(w)) {
    if (!hostOf.has(t)) {
      hostOf.set(t, { shape: t.shape, data: Float32Array.from(await t.data() as Float32Array) });
    }
  }
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
