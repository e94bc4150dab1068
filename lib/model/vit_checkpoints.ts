/**
 * Reading a CLIP image tower from a checkpoint: three layouts map onto the ViT's canonical weights
 * (names in {@link VitHostWeights}, `vit.ts`):
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
 * @example
 * ```ts
 * import { tf } from "../backend.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const features = tf.tidy(() => encoder.encode(tf.zeros<tf.Rank.R4>([2, 28, 28, 3])));
 * features.shape; // [2, 64] (BiomedCLIP or CLIP ViT-B/16: [2, 512] from [2, 224, 224, 3])
 * features.dispose();
 * encoder.dispose();
 * ```
 * @module
 */
import { dirname, join } from "node:path";
import { noteDefaultSetting } from "./_notice.ts";
import {
  type BlockNames,
  checkActivation,
  checkLnEps,
  linear,
  mapBlock,
  mapHfBlock,
  mapOpenaiBlock,
  metadataSettings,
  readJsonIfExists,
  readOpenClipConfig,
  TensorSource,
  type TensorSourceOptions,
} from "./_checkpoint.ts";
import { readSafetensors, readSafetensorsIndex, type SafeTensor } from "./safetensors.ts";
import type { HostTensor, VitActivation } from "./transformer.ts";
import {
  createVitEncoder,
  type VitConfig,
  type VitEncoder,
  type VitHostWeights,
  type VitLayout,
} from "./vit.ts";

/** Overrides for settings the weights cannot tell. */
export interface VitLoadOptions {
  heads?: number;
  act?: VitActivation;
  lnEps?: number;
}

// ---------------------------------------------------------------------------------------------
// Key mapping: checkpoint layouts → canonical host weights

/** PyTorch Conv2d weight [width, C, P, P] → [P·P·C, width], rows ordered (row, column, channel). */
function convToMatrix(t: HostTensor): HostTensor {
  const [width, channels, ph, pw] = t.shape;
  const k = ph * pw * channels;
  const out = new Float32Array(k * width);
  for (let o = 0; o < width; o++) {
    for (let c = 0; c < channels; c++) {
      for (let i = 0; i < ph; i++) {
        for (let j = 0; j < pw; j++) {
          out[((i * pw + j) * channels + c) * width + o] =
            t.data[((o * channels + c) * ph + i) * pw + j];
        }
      }
    }
  }
  return { shape: [k, width], data: out };
}

function flat(t: HostTensor, shape: number[]): HostTensor {
  return { shape, data: t.data };
}

interface Mapped {
  layout: VitLayout;
  weights: VitHostWeights;
  /** Layout defaults for what the weights cannot tell. */
  defaults: { act: VitActivation; lnEps: number };
}

/** open_clip OpenAI-style VisionTransformer (`visual.conv1`, `transformer.resblocks`, …). */
function mapOpenai(src: TensorSource, p: string): Mapped {
  const conv = src.get(`${p}conv1.weight`);
  if (conv.shape.length !== 4) {
    throw new Error(`${src.label}: "${p}conv1.weight" must be 4-D [width, 3, P, P]`);
  }
  const width = conv.shape[0];
  const blocks = src.blocks(`${p}transformer.resblocks.`, (b) => mapOpenaiBlock(src, b, width));
  const proj = src.optional(`${p}proj`, [width, null]); // already [width, embed]
  const weights: VitHostWeights = {
    patchWeight: convToMatrix(conv),
    patchBias: src.optional(`${p}conv1.bias`, [width]),
    classEmbedding: src.get(`${p}class_embedding`, [width]),
    positionEmbedding: src.get(`${p}positional_embedding`, [null, width]),
    lnPre: src.has(`${p}ln_pre.weight`) ? src.norm(`${p}ln_pre`, width) : undefined,
    blocks,
    lnPost: src.norm(`${p}ln_post`, width),
    proj,
  };
  src.checkAllUsed(p);
  return { layout: "openai", weights, defaults: { act: "quick_gelu", lnEps: 1e-5 } };
}

/** Hugging Face CLIPModel / CLIPVisionModel(WithProjection). */
function mapHf(src: TensorSource, p: string): Mapped {
  const v = `${p}vision_model.`;
  const conv = src.get(`${v}embeddings.patch_embedding.weight`);
  if (conv.shape.length !== 4) {
    throw new Error(`${src.label}: patch_embedding.weight must be 4-D [width, 3, P, P]`);
  }
  const width = conv.shape[0];
  const blocks = src.blocks(`${v}encoder.layers.`, (b) => mapHfBlock(src, b, width));
  const proj = src.optional(`${p}visual_projection.weight`, [null, width]);
  const weights: VitHostWeights = {
    patchWeight: convToMatrix(conv),
    patchBias: src.optional(`${v}embeddings.patch_embedding.bias`, [width]),
    classEmbedding: src.get(`${v}embeddings.class_embedding`, [width]),
    positionEmbedding: src.get(`${v}embeddings.position_embedding.weight`, [null, width]),
    lnPre: src.norm(`${v}pre_layrnorm`, width),
    blocks,
    lnPost: src.norm(`${v}post_layernorm`, width),
    proj: proj && linear(proj),
  };
  src.checkAllUsed(v, (n) => n.endsWith("embeddings.position_ids"));
  return { layout: "hf", weights, defaults: { act: "quick_gelu", lnEps: 1e-5 } };
}

/** A timm ViT block's tensors: fused `attn.qkv`, `attn.proj`, `norm1`/`norm2`, `mlp.fc1`/`fc2`. */
const TIMM_BLOCK: BlockNames = {
  ln1: "norm1",
  ln2: "norm2",
  out: "attn.proj",
  fc1: "mlp.fc1",
  fc2: "mlp.fc2",
};

/** timm VisionTransformer trunk (+ open_clip's `head.proj`), as in BiomedCLIP. */
function mapTimm(src: TensorSource, trunk: string, head: string): Mapped {
  const conv = src.get(`${trunk}patch_embed.proj.weight`);
  if (conv.shape.length !== 4) {
    throw new Error(`${src.label}: patch_embed.proj.weight must be 4-D [width, 3, P, P]`);
  }
  const width = conv.shape[0];
  const blocks = src.blocks(`${trunk}blocks.`, (b) =>
    mapBlock(src, b, width, TIMM_BLOCK, {
      weight: src.get(`${b}attn.qkv.weight`, [3 * width, width]),
      bias: src.get(`${b}attn.qkv.bias`, [3 * width]),
    }));
  const cls = src.get(`${trunk}cls_token`, [1, 1, width]);
  const pos = src.get(`${trunk}pos_embed`, [1, null, width]);
  // open_clip's TimmModel projects with `head.proj` (BiomedCLIP: proj="linear"); with proj=""
  // the trunk's own classifier `trunk.head` is the projection. A bare timm checkpoint's `head`
  // is an ImageNet classifier, not part of the image features.
  const inClip = trunk !== "";
  const projPrefix = src.has(`${head}proj.weight`)
    ? `${head}proj.`
    : inClip && src.has(`${trunk}head.weight`)
    ? `${trunk}head.`
    : undefined;
  const proj = projPrefix ? src.get(`${projPrefix}weight`, [null, width]) : undefined;
  const weights: VitHostWeights = {
    patchWeight: convToMatrix(conv),
    patchBias: src.get(`${trunk}patch_embed.proj.bias`, [width]),
    classEmbedding: flat(cls, [width]),
    positionEmbedding: flat(pos, [pos.shape[1], width]),
    lnPre: src.has(`${trunk}norm_pre.weight`) ? src.norm(`${trunk}norm_pre`, width) : undefined,
    blocks,
    lnPost: src.norm(`${trunk}norm`, width),
    proj: proj && linear(proj),
    projBias: proj && src.optional(`${projPrefix}bias`, [proj.shape[0]]),
  };
  src.checkAllUsed(trunk, (n) => !inClip && n.startsWith("head."));
  if (inClip) src.checkAllUsed(head);
  return { layout: "timm", weights, defaults: { act: "gelu", lnEps: 1e-6 } };
}

/** Detects the layout from the tensor names; returns the prefix of the image tower's tensors. */
function detectLayout(label: string, names: string[]): { layout: VitLayout; prefix: string } {
  const has = new Set(names);
  for (const p of ["visual.", ""]) {
    if (has.has(`${p}conv1.weight`)) return { layout: "openai", prefix: p };
  }
  for (const p of ["", "clip."]) {
    if (has.has(`${p}vision_model.embeddings.patch_embedding.weight`)) {
      return { layout: "hf", prefix: p };
    }
  }
  for (const p of ["visual.", ""]) {
    if (has.has(`${p}trunk.patch_embed.proj.weight`)) return { layout: "timm", prefix: p };
  }
  if (has.has("patch_embed.proj.weight")) return { layout: "timm", prefix: "" };
  throw new Error(
    `${label}: no known ViT layout; looked for "visual.conv1.weight" (open_clip OpenAI), ` +
      `"vision_model.embeddings.patch_embedding.weight" (Hugging Face CLIP) and ` +
      `"visual.trunk.patch_embed.proj.weight" (open_clip timm / BiomedCLIP). ` +
      `First keys: ${names.slice(0, 5).join(", ")}`,
  );
}

// ---------------------------------------------------------------------------------------------
// Settings the weights cannot tell

type Settings = Partial<VitLoadOptions>;

function checkSettings(label: string, s: Record<string, unknown>): Settings {
  const out: Settings = {};
  if (s.heads !== undefined) {
    if (!Number.isInteger(s.heads) || (s.heads as number) < 1) {
      throw new Error(`${label}: heads ${s.heads} must be an integer ≥ 1`);
    }
    out.heads = s.heads as number;
  }
  if (s.act !== undefined) out.act = checkActivation(label, s.act);
  if (s.lnEps !== undefined) out.lnEps = checkLnEps(label, s.lnEps);
  return out;
}

function settingsFromMetadata(label: string, metadata: Record<string, string>): Settings {
  return metadataSettings(label, metadata, "deer.vision", checkSettings);
}

/** Reads `config.json` (HF) or `open_clip_config.json` beside the weights, if present. */
async function settingsFromSidecar(
  path: string,
  layout: VitLayout,
  width: number,
): Promise<Settings> {
  const dir = dirname(path);
  if (layout === "hf") {
    const file = join(dir, "config.json");
    const cfg = await readJsonIfExists(file);
    if (!cfg) return {};
    const vision = (cfg.vision_config ?? cfg) as Record<string, unknown>;
    if (vision.hidden_size !== undefined && vision.hidden_size !== width) {
      throw new Error(
        `${file}: hidden_size ${vision.hidden_size} does not match the weights' width ${width}; is it the right config?`,
      );
    }
    return checkSettings(file, {
      heads: vision.num_attention_heads,
      act: vision.hidden_act ?? "quick_gelu",
      lnEps: vision.layer_norm_eps,
    });
  }
  if (layout === "timm") {
    const { file, model } = await readOpenClipConfig(dir);
    if (!model) return {};
    const vision = (model.vision_cfg ?? {}) as Record<string, unknown>;
    const pool = vision.timm_pool;
    if (pool !== undefined && pool !== "" && pool !== "token") {
      throw new Error(
        `${file}: vision_cfg.timm_pool is ${JSON.stringify(pool)}; this toolkit's encoder pools ` +
          `the class token ("token" or ""), and would give other features than open_clip here`,
      );
    }
    // timm builds its CLIP trunks (vit_*_clip_*) with PyTorch's LayerNorm default, ε = 1e-5;
    // its other ViTs use 1e-6 (the layout's default).
    const name = String(vision.timm_model_name ?? "");
    return checkSettings(file, {
      ...(/_clip_/.test(name) ? { lnEps: 1e-5 } : {}),
      ...(/_clip_quickgelu_/.test(name) ? { act: "quick_gelu" } : {}),
    });
  }
  if (layout === "openai") {
    const { file, model } = await readOpenClipConfig(dir);
    if (!model) return {};
    const vision = (model.vision_cfg ?? {}) as Record<string, unknown>;
    for (const [key, ok] of [["pool_type", "tok"], ["final_ln_after_pool", false]] as const) {
      if (vision[key] !== undefined && vision[key] !== ok) {
        throw new Error(
          `${file}: vision_cfg.${key} is ${JSON.stringify(vision[key])}; this toolkit's encoder ` +
            `pools the class token after ln_post (pool_type "tok"), and would give other ` +
            `features than open_clip for this model`,
        );
      }
    }
    const headWidth = typeof vision.head_width === "number" ? vision.head_width : 64;
    return checkSettings(file, {
      heads: width % headWidth === 0 ? width / headWidth : undefined,
      // open_clip builds nn.GELU unless the config sets quick_gelu (OpenAI's own weights do).
      act: model.quick_gelu ? "quick_gelu" : "gelu",
    });
  }
  return {};
}

function inferConfig(label: string, mapped: Mapped, settings: Settings): VitConfig {
  const w = mapped.weights;
  const [k, width] = w.patchWeight.shape;
  const channels = 3;
  const patchSize = Math.round(Math.sqrt(k / channels));
  if (patchSize * patchSize * channels !== k) {
    throw new Error(
      `${label}: patch embedding has ${k} inputs; expected 3·P·P (RGB, square patches)`,
    );
  }
  const tokens = w.positionEmbedding.shape[0] - 1;
  const grid = Math.round(Math.sqrt(tokens));
  if (grid * grid !== tokens) {
    throw new Error(
      `${label}: position embedding has ${tokens} patch rows; expected a square grid plus one class row`,
    );
  }
  const heads = settings.heads ?? (width % 64 === 0 ? width / 64 : undefined);
  if (heads === undefined || width % heads !== 0) {
    throw new Error(
      `${label}: cannot tell the number of attention heads for width ${width}` +
        `${heads ? ` (${heads} does not divide it)` : ""}; pass { heads } to loadVisionEncoder ` +
        `or store {"heads": H} in the file's metadata key "deer.vision"`,
    );
  }
  return {
    layout: mapped.layout,
    imageSize: grid * patchSize,
    patchSize,
    channels,
    width,
    layers: w.blocks.length,
    heads,
    mlpDim: w.blocks[0].fc1Weight.shape[1],
    embedDim: w.proj ? w.proj.shape[1] : width,
    act: settings.act ?? mapped.defaults.act,
    lnEps: settings.lnEps ?? mapped.defaults.lnEps,
    preNorm: w.lnPre !== undefined,
    patchBias: w.patchBias !== undefined,
    proj: w.proj !== undefined,
    projBias: w.projBias !== undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// Loading

/**
 * Loads the image tower of a CLIP checkpoint (`.safetensors`; open_clip OpenAI, Hugging Face
 * CLIP or open_clip timm/BiomedCLIP layout) as a frozen encoder. Only the image tower's tensors
 * are read. `encode` equals open_clip `encode_image` / HF `get_image_features` on the same
 * weights (docs/architecture.md#public-api).
 *
 * @example
 * ```ts
 * const encoder = await loadVisionEncoder("tests/fixtures/model_tiny/timm.safetensors", { act: "gelu" });
 * encoder.config.embedDim; // 24 (ViT-B/16: 512)
 * encoder.dispose();
 * ```
 */
export async function loadVisionEncoder(
  path: string,
  options: VitLoadOptions = {},
): Promise<VitEncoder> {
  const index = await readSafetensorsIndex(path);
  const { layout, prefix } = detectLayout(path, Object.keys(index.tensors));
  const keep = layout === "hf"
    ? (n: string) =>
      n.startsWith(`${prefix}vision_model.`) || n === `${prefix}visual_projection.weight`
    : (n: string) => n.startsWith(prefix);
  const { tensors, metadata } = await readSafetensors(path, { include: keep });
  return visionEncoderFromTensors(tensors, { metadata, options, label: path, sidecarPath: path });
}

/** Where {@link visionEncoderFromTensors} takes its settings from. */
export type FromTensorsOptions = TensorSourceOptions<VitLoadOptions>;

/**
 * Builds an encoder from tensors already in memory (e.g. a modified checkpoint in a test).
 *
 * @example
 * ```ts
 * import { readSafetensors } from "./safetensors.ts";
 * const { tensors, metadata } = await readSafetensors("models/default/vit_tiny_fashion.safetensors");
 * const encoder = await visionEncoderFromTensors(tensors, { metadata });
 * encoder.config.layers; // 3
 * encoder.dispose();
 * ```
 */
export async function visionEncoderFromTensors(
  tensors: Record<string, SafeTensor>,
  from: FromTensorsOptions = {},
): Promise<VitEncoder> {
  const label = from.label ?? "<tensors>";
  const { layout, prefix } = detectLayout(label, Object.keys(tensors));
  const src = new TensorSource(label, tensors);
  const mapped = layout === "openai"
    ? mapOpenai(src, prefix)
    : layout === "hf"
    ? mapHf(src, prefix)
    : mapTimm(
      src,
      prefix === "" && !src.has("trunk.patch_embed.proj.weight") ? "" : `${prefix}trunk.`,
      `${prefix}head.`,
    );
  const width = mapped.weights.patchWeight.shape[1];
  const settings: Settings = {
    ...(from.sidecarPath ? await settingsFromSidecar(from.sidecarPath, layout, width) : {}),
    ...settingsFromMetadata(label, from.metadata ?? {}),
    ...checkSettings("options", (from.options ?? {}) as Record<string, unknown>),
  };
  const config = inferConfig(label, mapped, settings);
  noteDefaults(label, layout, settings, config);
  return createVitEncoder(config, mapped.weights);
}

/**
 * Says, once per file, which settings the weights could not tell came from the layout's default
 * (open_clip's OpenAI layout and Hugging Face's; timm's towers are always exact GELU), and how
 * to override each.
 */
function noteDefaults(label: string, layout: VitLayout, settings: Settings, config: VitConfig) {
  if (layout === "timm") return;
  const sidecar = layout === "hf" ? "a config.json" : "an open_clip_config.json";
  if (settings.act === undefined) {
    noteDefaultSetting(
      label,
      "act",
      `${label} does not say which activation its MLP uses; assuming ${config.act}, as ` +
        `OpenAI's CLIP weights use. Weights trained elsewhere (e.g. open_clip's LAION ` +
        `"ViT-B-16", without "-quickgelu") use exact GELU, and read this way give wrong ` +
        `features without any error: say which with the loader option act (deno task train: --model-act gelu), ` +
        `the metadata key "deer.vision" ({"act": "gelu"}), or ${sidecar} beside the weights`,
    );
  }
  if (settings.heads === undefined) {
    noteDefaultSetting(
      label,
      "heads",
      `${label} does not say how many attention heads it has; assuming ${config.heads} ` +
        `(64 channels each, as in CLIP ViT-B and ViT-L; ViT-g and ViT-bigG differ): say so ` +
        `with the loader option heads, the metadata key "deer.vision" ({"heads": H}), or ` +
        `${sidecar} beside the weights`,
    );
  }
}
