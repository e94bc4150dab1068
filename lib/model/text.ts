/**
 * The text towers of CLIP-style models, used once: to turn class prompts into the fixed class
 * prototypes of the classification head (docs/method.md#the-classification-head: "this is an image
 * of {class}").
 *
 * Two architectures, three checkpoint layouts:
 *
 * ```
 * CLIP (causal, pre-LN)                             BERT (bidirectional, post-LN)
 * x = tok[ids] + pos[:T]                             x = LN(tok[ids] + pos[:T] + type[0])
 * repeat: x += attn(ln_1 x, causal mask)             repeat: x = LN(x + attn(x, padding mask))
 *         x += mlp(ln_2 x)                                   x = LN(x + mlp(x))
 * f = ln_final(x[eot]) · W_proj                      f = proj(x[CLS])
 * ```
 *
 * * `openai` — open_clip's own text tower (`token_embedding.weight`, `positional_embedding`,
 *   `transformer.resblocks.{i}.attn.in_proj_weight`, `ln_final`, `text_projection` [width, e]),
 *   at the top level of a CLIP checkpoint or under `text.`. Pooling takes the position of the
 *   largest token id (`argmax`, the end token), as open_clip's default `pool_type`. QuickGELU by
 *   default (OpenAI's weights); a randomly initialised open_clip model uses exact GELU — say so
 *   with `{ act: "gelu" }`, the metadata key `deer.text` or an `open_clip_config.json`.
 * * `hf` — Hugging Face `CLIPModel` / `CLIPTextModelWithProjection` (`text_model.*`, separate
 *   q/k/v, `final_layer_norm`, `text_projection.weight` without bias). transformers 5.x pools the
 *   first position holding `eos_token_id` (the argmax when a config still says `eos_token_id: 2`);
 *   with zero padding both are the end token's position.
 * * `bert` — a Hugging Face `BertModel` under open_clip's `HFTextEncoder` prefix
 *   `text.transformer.*` (BiomedCLIP: PubMedBERT, 768 wide, 12 layers, 12 heads), then
 *   `text.proj`: `mlp` (`proj.0` 768→640, exact GELU, `proj.2` 640→512, no biases — BiomedCLIP)
 *   or `linear` (`proj.weight`). The attention mask hides padding (`ids ≠ pad`), GELU is exact,
 *   LayerNorm ε = 1e-12. Pooling: the `[CLS]` row of the last hidden state (open_clip's
 *   `cls_last_hidden_state_pooler`, BiomedCLIP's `hf_pooler_type`); `cls_pooler` (tanh pooler,
 *   when its weights are in the file) and `mean` are options. Older BiomedCLIP checkpoints carry
 *   `pooler.dense.*` weights; as Microsoft's note for them says, they are not used. A bare
 *   `BertModel` (`embeddings.word_embeddings.weight`, no projection) loads too.
 *
 * Settings the weights cannot tell are resolved as in `vit_checkpoints.ts`: `options` > the
 * file's metadata key `deer.text` (JSON: `heads`, `act`, `lnEps`, `pool`, `contextLength`,
 * `eosId`, `padId`) > a sidecar beside the file (`config.json` for Hugging Face CLIP (`text_config`) and BERT;
 * `open_clip_config.json` for open_clip: `text_cfg.heads`, `pool_type`, `eos_id`, `quick_gelu`,
 * `hf_pooler_type`, `context_length`) > the layout's defaults (heads = width / 64).
 *
 * `encode` only runs the positions that can change the pooled features: for a causal tower the
 * prefix up to the last pooled position, for BERT the prefix up to the last non-padding token.
 * Both are exact (masked positions contribute exactly zero attention weight).
 *
 * @example
 * ```ts
 * // BiomedCLIP: loadTextEncoder("biomedclip/open_clip_model.safetensors") with vocab.txt beside it.
 * const text = await loadTextEncoder("tests/fixtures/text_tiny/bert/model.safetensors");
 * const prototypes = classPrototypes(text, ["macular hole", "normal"]); // [2, e], unit rows
 * prototypes.dispose();
 * text.dispose();
 * ```
 * @module
 */
import { dirname, join } from "node:path";
import { tf } from "../backend.ts";
import { noteDefaultSetting } from "./_notice.ts";
import { readSafetensors, readSafetensorsIndex, type SafeTensor } from "./safetensors.ts";
import { findTokenizer, loadTokenizer, type Tokenizer, TOKENIZER_FILES } from "./tokenizers.ts";
import {
  activation,
  type Block,
  blockToTensors,
  type HostBlock,
  type HostNorm,
  type HostTensor,
  layerNorm,
  multiHeadAttention,
  type Norm,
  normToTensors,
  toTensor,
  transformerBlock,
  type TransformerShape,
  type VitActivation,
  weightTensors,
} from "./transformer.ts";
import {
  type BlockNames,
  checkActivation,
  checkLnEps,
  concatRows,
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
import type { VitLoadOptions } from "./vit_checkpoints.ts";

// ---------------------------------------------------------------------------------------------
// Configuration

/** Which checkpoint layout the text tower came from (module doc). */
export type TextLayout = "openai" | "hf" | "bert";

/**
 * How token features become one vector: `argmax` (position of the largest id: open_clip),
 * `eos` (first position of `eosId`: Hugging Face CLIP), `first`, `last`, `cls` (BERT's `[CLS]`
 * row), `cls_pooler` (BERT's tanh pooler on `[CLS]`), `mean` (mean over non-padding tokens).
 */
export type TextPooling = "argmax" | "eos" | "first" | "last" | "cls" | "cls_pooler" | "mean";

/** Everything the forward pass needs; inferred from the weights and the settings. */
export interface TextConfig extends TransformerShape {
  layout: TextLayout;
  /** Rows of the token embedding. */
  vocabSize: number;
  /** Rows of the position embedding: the longest sequence `encode` accepts. */
  maxPositions: number;
  /** Row length of `tokenize` (77 for CLIP; 256 for BiomedCLIP). */
  contextLength: number;
  /** Causal attention (CLIP); BERT masks padding instead. */
  causal: boolean;
  pool: TextPooling;
  /** The id `eos` pooling looks for (the tokenizer's end token unless set). */
  eosId: number;
  /** The id BERT's attention mask hides (`ids ≠ padId`). */
  padId: number;
  proj: "none" | "linear" | "mlp";
  projBias: boolean;
}

/** Overrides for settings the weights cannot tell (also the metadata key `deer.text`). */
export interface TextLoadOptions extends VitLoadOptions {
  pool?: TextPooling;
  /** Row length of `tokenize`; at most the position embedding's rows. */
  contextLength?: number;
  eosId?: number;
  padId?: number;
}

/** A frozen text encoder with its tokenizer (docs/architecture.md#public-api). */
export interface TextEncoder {
  config: TextConfig;
  tokenizer: Tokenizer;
  /** Texts → rows of `config.contextLength` token ids (open_clip's tokenizer). */
  tokenize(texts: string[]): number[][];
  /**
   * Rows of token ids (equal lengths, at most `maxPositions`) → [N, embedDim] unnormalised
   * features, equal to open_clip `encode_text` / HF `get_text_features` on the same ids. The
   * caller owns the result.
   */
  encode(ids: number[][]): tf.Tensor2D;
  /** Frees the tensors this encoder owns. */
  dispose(): void;
}

// ---------------------------------------------------------------------------------------------
// Canonical weights

/** Text-tower weights in host memory, matrices in the `x · W` convention ([in, out]). */
export interface TextHostWeights {
  /** [vocab, width]. */
  tokenEmbedding: HostTensor;
  /** [maxPositions, width]; for BERT the token-type-0 row is already added. */
  positionEmbedding: HostTensor;
  /** BERT's embedding LayerNorm. */
  embedNorm?: HostNorm;
  /** CLIP: pre-LN blocks. BERT: `ln1`/`ln2` are the post-attention and post-MLP norms. */
  blocks: HostBlock[];
  /** CLIP's `ln_final`. */
  finalNorm?: HostNorm;
  /** BERT's pooler dense layer [width, width] and bias (`cls_pooler` only). */
  pooler?: { weight: HostTensor; bias: HostTensor };
  /** [width, e] (linear) or [width, hidden] (the MLP's first layer). */
  proj?: HostTensor;
  projBias?: HostTensor;
  /** The MLP projection's second layer [hidden, e]. */
  proj2?: HostTensor;
  proj2Bias?: HostTensor;
}

interface TextWeights {
  tokenEmbedding: tf.Tensor2D;
  positionEmbedding: tf.Tensor2D;
  embedNorm?: Norm;
  blocks: Block[];
  finalNorm?: Norm;
  pooler?: { weight: tf.Tensor2D; bias: tf.Tensor1D };
  proj?: tf.Tensor2D;
  projBias?: tf.Tensor1D;
  proj2?: tf.Tensor2D;
  proj2Bias?: tf.Tensor1D;
}

// ---------------------------------------------------------------------------------------------
// Key mapping

interface Mapped {
  layout: TextLayout;
  weights: TextHostWeights;
  /** Layout defaults for what the weights cannot tell. */
  defaults: { act: VitActivation; lnEps: number; pool: TextPooling; causal: boolean };
}

/** open_clip's text tower, at the top level (`prefix` "") or under `text.`. */
function mapOpenaiText(src: TensorSource, p: string): Mapped {
  const tok = src.get(`${p}token_embedding.weight`);
  if (tok.shape.length !== 2) {
    throw new Error(`${src.label}: "${p}token_embedding.weight" must be 2-D [vocab, width]`);
  }
  const width = tok.shape[1];
  const blocks = src.blocks(`${p}transformer.resblocks.`, (b) => mapOpenaiBlock(src, b, width));
  let proj: HostTensor | undefined, projBias: HostTensor | undefined;
  if (src.has(`${p}text_projection.weight`)) { // open_clip proj_type="linear" as nn.Linear
    proj = linear(src.get(`${p}text_projection.weight`, [null, width]));
    projBias = src.optional(`${p}text_projection.bias`, [proj.shape[1]]);
  } else {
    proj = src.optional(`${p}text_projection`, [width, null]); // nn.Parameter [width, e]
  }
  const weights: TextHostWeights = {
    tokenEmbedding: tok,
    positionEmbedding: src.get(`${p}positional_embedding`, [null, width]),
    blocks,
    finalNorm: src.norm(`${p}ln_final`, width),
    proj,
    projBias,
  };
  // The image tower, the temperature and the (recomputed) causal mask are not the text tower's.
  const other = new Set(["logit_scale", "logit_bias", "attn_mask", `${p}attn_mask`]);
  src.checkAllUsed(p, (n) => other.has(n) || (p === "" && n.startsWith("visual.")));
  return {
    layout: "openai",
    weights,
    defaults: { act: "quick_gelu", lnEps: 1e-5, pool: "argmax", causal: true },
  };
}

/** Hugging Face CLIPModel / CLIPTextModel(WithProjection). */
function mapHfText(src: TensorSource, p: string): Mapped {
  const v = `${p}text_model.`;
  const tok = src.get(`${v}embeddings.token_embedding.weight`);
  const width = tok.shape[1];
  const blocks = src.blocks(`${v}encoder.layers.`, (b) => mapHfBlock(src, b, width));
  const proj = src.optional(`${p}text_projection.weight`, [null, width]);
  const weights: TextHostWeights = {
    tokenEmbedding: tok,
    positionEmbedding: src.get(`${v}embeddings.position_embedding.weight`, [null, width]),
    blocks,
    finalNorm: src.norm(`${v}final_layer_norm`, width),
    proj: proj && linear(proj),
  };
  src.checkAllUsed(v, (n) => n.endsWith("embeddings.position_ids"));
  return {
    layout: "hf",
    weights,
    defaults: { act: "quick_gelu", lnEps: 1e-5, pool: "eos", causal: true },
  };
}

/**
 * A BERT layer's tensors: `ln1`/`ln2` are its post-attention and post-MLP norms (see
 * {@link HostBlock}).
 */
const BERT_BLOCK: BlockNames = {
  ln1: "attention.output.LayerNorm",
  ln2: "output.LayerNorm",
  out: "attention.output.dense",
  fc1: "intermediate.dense",
  fc2: "output.dense",
};

/** A Hugging Face BertModel under `p`, and open_clip's `text.proj` when `p` is `text.transformer.`. */
function mapBert(src: TensorSource, p: string): Mapped {
  const tok = src.get(`${p}embeddings.word_embeddings.weight`);
  const width = tok.shape[1];
  const pos = src.get(`${p}embeddings.position_embeddings.weight`, [null, width]);
  const types = src.optional(`${p}embeddings.token_type_embeddings.weight`, [null, width]);
  // HFTextEncoder passes no token_type_ids: every token adds type 0's row.
  const positionEmbedding = { shape: pos.shape, data: Float32Array.from(pos.data) };
  if (types) {
    for (let i = 0; i < positionEmbedding.data.length; i++) {
      positionEmbedding.data[i] += types.data[i % width];
    }
  }
  const blocks = src.blocks(`${p}encoder.layer.`, (b) => {
    const qkv = ["query", "key", "value"].map((n) =>
      src.get(`${b}attention.self.${n}.weight`, [width, width])
    );
    const qkvBias = ["query", "key", "value"].map((n) =>
      src.get(`${b}attention.self.${n}.bias`, [width])
    );
    return mapBlock(src, b, width, BERT_BLOCK, {
      weight: concatRows(qkv),
      bias: concatRows(qkvBias),
    });
  });
  const pooler = src.has(`${p}pooler.dense.weight`)
    ? {
      weight: linear(src.get(`${p}pooler.dense.weight`, [width, width])),
      bias: src.get(`${p}pooler.dense.bias`, [width]),
    }
    : undefined;
  const weights: TextHostWeights = {
    tokenEmbedding: tok,
    positionEmbedding,
    embedNorm: src.norm(`${p}embeddings.LayerNorm`, width),
    blocks,
    pooler,
  };
  const inClip = p === "text.transformer.";
  if (inClip && src.has("text.proj.weight")) { // proj_type "linear"
    weights.proj = linear(src.get("text.proj.weight", [null, width]));
    weights.projBias = src.optional("text.proj.bias", [weights.proj.shape[1]]);
  } else if (inClip && src.has("text.proj.0.weight")) { // proj_type "mlp": Linear, GELU, Linear
    weights.proj = linear(src.get("text.proj.0.weight", [null, width]));
    const hidden = weights.proj.shape[1];
    weights.projBias = src.optional("text.proj.0.bias", [hidden]);
    weights.proj2 = linear(src.get("text.proj.2.weight", [null, hidden]));
    weights.proj2Bias = src.optional("text.proj.2.bias", [weights.proj2.shape[1]]);
  }
  const buffers = (n: string) =>
    n.endsWith("embeddings.position_ids") || n.endsWith("embeddings.token_type_ids");
  src.checkAllUsed(p, buffers);
  if (inClip) src.checkAllUsed("text.", buffers);
  return {
    layout: "bert",
    weights,
    defaults: { act: "gelu", lnEps: 1e-12, pool: "cls", causal: false },
  };
}

/** Detects the text tower's layout from the tensor names. */
function detectTextLayout(label: string, names: string[]): { layout: TextLayout; prefix: string } {
  const has = new Set(names);
  for (const p of ["text.", ""]) {
    if (has.has(`${p}token_embedding.weight`)) return { layout: "openai", prefix: p };
  }
  for (const p of ["", "clip."]) {
    if (has.has(`${p}text_model.embeddings.token_embedding.weight`)) {
      return { layout: "hf", prefix: p };
    }
  }
  for (const p of ["text.transformer.", "", "bert."]) {
    if (has.has(`${p}embeddings.word_embeddings.weight`)) return { layout: "bert", prefix: p };
  }
  const visionOnly = names.some((n) =>
    n.startsWith("visual.") || n.startsWith("vision_model.") || n.startsWith("trunk.") ||
    n.startsWith("conv1.") || n.startsWith("patch_embed.")
  );
  throw new Error(
    `${label}: no known text tower; looked for "token_embedding.weight" (open_clip), ` +
      `"text_model.embeddings.token_embedding.weight" (Hugging Face CLIP) and ` +
      `"text.transformer.embeddings.word_embeddings.weight" (open_clip HF text tower, BiomedCLIP). ` +
      (visionOnly
        ? "This file holds only an image tower: build prototypes from the full CLIP checkpoint, or use orthonormal prototypes (docs/method.md). "
        : "") +
      `First keys: ${names.slice(0, 5).join(", ")}`,
  );
}

function keepTextKeys(layout: TextLayout, prefix: string): (name: string) => boolean {
  if (layout === "hf") {
    return (n) => n.startsWith(`${prefix}text_model.`) || n === `${prefix}text_projection.weight`;
  }
  if (layout === "bert" && prefix === "text.transformer.") return (n) => n.startsWith("text.");
  if (prefix === "") return (n) => !n.startsWith("visual.");
  return (n) => n.startsWith(prefix);
}

// ---------------------------------------------------------------------------------------------
// Settings the weights cannot tell

const POOLINGS: TextPooling[] = ["argmax", "eos", "first", "last", "cls", "cls_pooler", "mean"];

function checkTextSettings(label: string, s: Record<string, unknown>): TextLoadOptions {
  const out: TextLoadOptions = {};
  const int = (key: "heads" | "contextLength" | "eosId" | "padId", min: number) => {
    const value = s[key];
    if (value === undefined || value === null) return;
    if (!Number.isInteger(value) || (value as number) < min) {
      throw new Error(`${label}: ${key} ${value} must be an integer ≥ ${min}`);
    }
    out[key] = value as number;
  };
  int("heads", 1);
  int("contextLength", 2);
  int("eosId", 0);
  int("padId", 0);
  if (s.act !== undefined && s.act !== null) out.act = checkActivation(label, s.act);
  if (s.lnEps !== undefined && s.lnEps !== null) out.lnEps = checkLnEps(label, s.lnEps);
  if (s.pool !== undefined && s.pool !== null) {
    if (!POOLINGS.includes(s.pool as TextPooling)) {
      throw new Error(`${label}: pool "${s.pool}" is not one of ${POOLINGS.join(", ")}`);
    }
    out.pool = s.pool as TextPooling;
  }
  return out;
}

function settingsFromMetadata(label: string, metadata: Record<string, string>): TextLoadOptions {
  return metadataSettings(label, metadata, "deer.text", checkTextSettings);
}

/** open_clip's pooler names for HF text towers → ours. */
function hfPooler(file: string, name: unknown, legacyKey: boolean): TextPooling | undefined {
  if (name === undefined || name === null) return undefined;
  // Older open_clip configs (key "pooler_type") said "cls_pooler" for BiomedCLIP's [CLS] row.
  if (name === "cls_last_hidden_state_pooler" || (legacyKey && name === "cls_pooler")) return "cls";
  if (name === "cls_pooler") return "cls_pooler";
  if (name === "mean_pooler") return "mean";
  throw new Error(
    `${file}: text pooler "${name}" is not supported; use cls_last_hidden_state_pooler, cls_pooler or mean_pooler`,
  );
}

/** Reads `config.json` / `open_clip_config.json` beside the weights, if present. */
async function settingsFromSidecar(
  path: string,
  layout: TextLayout,
  width: number,
): Promise<TextLoadOptions> {
  const dir = dirname(path);
  const checkWidth = (file: string, hidden: unknown) => {
    if (hidden !== undefined && hidden !== width) {
      throw new Error(
        `${file}: hidden_size ${hidden} does not match the text tower's width ${width}; is it the right config?`,
      );
    }
  };
  if (layout === "hf" || layout === "bert") {
    const file = join(dir, "config.json");
    const cfg = await readJsonIfExists(file);
    if (cfg && (layout === "hf" || cfg.model_type === "bert")) {
      const text = (layout === "hf" ? cfg.text_config ?? cfg : cfg) as Record<string, unknown>;
      checkWidth(file, text.hidden_size);
      const act = text.hidden_act ?? (layout === "hf" ? "quick_gelu" : "gelu");
      const eos = text.eos_token_id;
      return checkTextSettings(file, {
        heads: text.num_attention_heads,
        act,
        lnEps: text.layer_norm_eps,
        // transformers: eos_token_id 2 is the legacy config; it then pools the argmax.
        ...(layout === "hf" && eos === 2 ? { pool: "argmax" } : { eosId: eos }),
        padId: layout === "bert" ? text.pad_token_id : undefined,
      });
    }
  }
  if (layout === "openai" || layout === "bert") {
    const { file, model } = await readOpenClipConfig(dir);
    if (!model) return {};
    const text = (model.text_cfg ?? {}) as Record<string, unknown>;
    if (layout === "bert") {
      return checkTextSettings(file, {
        pool: text.hf_pooler_type !== undefined
          ? hfPooler(file, text.hf_pooler_type, false)
          : hfPooler(file, text.pooler_type, true),
        contextLength: text.context_length,
      });
    }
    if (text.width !== undefined) checkWidth(file, text.width);
    // Settings open_clip honours that this tower does not implement: refused, not ignored.
    for (
      const [key, ok] of [
        ["no_causal_mask", false],
        ["norm_kwargs", undefined],
        ["act_kwargs", undefined],
      ] as const
    ) {
      const empty = typeof text[key] === "object" && text[key] !== null &&
        Object.keys(text[key] as object).length === 0;
      if (text[key] !== undefined && text[key] !== ok && !empty) {
        throw new Error(
          `${file}: text_cfg.${key} is ${JSON.stringify(text[key])}; this toolkit's text tower ` +
            `is causal with default LayerNorm and activation settings, and would give other ` +
            `features than open_clip for this model`,
        );
      }
    }
    return checkTextSettings(file, {
      heads: text.heads,
      // open_clip builds nn.GELU unless the config sets quick_gelu (OpenAI's own weights do).
      act: model.quick_gelu ? "quick_gelu" : "gelu",
      pool: text.pool_type,
      eosId: text.eos_id,
    });
  }
  return {};
}

function inferConfig(
  label: string,
  mapped: Mapped,
  settings: TextLoadOptions,
  tokenizer: Tokenizer,
): TextConfig {
  const w = mapped.weights;
  const [vocabSize, width] = w.tokenEmbedding.shape;
  const maxPositions = w.positionEmbedding.shape[0];
  const heads = settings.heads ?? (width % 64 === 0 ? width / 64 : undefined);
  if (heads === undefined || width % heads !== 0) {
    throw new Error(
      `${label}: cannot tell the number of attention heads for text width ${width}` +
        `${heads ? ` (${heads} does not divide it)` : ""}; pass { heads } to loadTextEncoder ` +
        `or store {"heads": H} in the file's metadata key "deer.text"`,
    );
  }
  const pool = settings.pool ?? mapped.defaults.pool;
  const isBert = mapped.layout === "bert";
  if (isBert !== ["cls", "cls_pooler", "mean"].includes(pool)) {
    throw new Error(`${label}: pooling "${pool}" does not apply to a ${mapped.layout} text tower`);
  }
  if (pool === "cls_pooler" && !w.pooler) {
    throw new Error(`${label}: pool "cls_pooler" needs the BERT pooler weights (pooler.dense.*)`);
  }
  if (tokenizer.vocabSize > vocabSize) {
    throw new Error(
      `${label}: the tokenizer ${tokenizer.source} has ${tokenizer.vocabSize} ids but the model embeds ` +
        `${vocabSize}; is it the model's own tokenizer?`,
    );
  }
  const contextLength = tokenizer.contextLength;
  if (contextLength > maxPositions) {
    throw new Error(
      `${label}: context length ${contextLength} exceeds the model's ${maxPositions} positions`,
    );
  }
  const proj = w.proj2 ? "mlp" : w.proj ? "linear" : "none";
  return {
    layout: mapped.layout,
    vocabSize,
    maxPositions,
    contextLength,
    width,
    layers: w.blocks.length,
    heads,
    mlpDim: w.blocks[0].fc1Weight.shape[1],
    embedDim: (w.proj2 ?? w.proj)?.shape[1] ?? width,
    act: settings.act ?? mapped.defaults.act,
    lnEps: settings.lnEps ?? mapped.defaults.lnEps,
    causal: mapped.defaults.causal,
    pool,
    eosId: settings.eosId ?? tokenizer.endId,
    padId: settings.padId ?? tokenizer.padId,
    proj,
    projBias: w.projBias !== undefined || w.proj2Bias !== undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// Loading

/** The tokenizer a layout needs. */
function tokenizerKind(layout: TextLayout): Tokenizer["kind"] {
  return layout === "bert" ? "wordpiece" : "bpe";
}

/**
 * Loads the text tower of a CLIP checkpoint (`.safetensors`; open_clip, Hugging Face CLIP, or
 * open_clip's HF/BERT text tower as in BiomedCLIP) and its tokenizer. The tokenizer comes from
 * `tokenizerPath` (a file or a folder) or from the checkpoint's folder: `tokenizer.json`,
 * `vocab.json` + `merges.txt` or `bpe_simple_vocab_16e6.txt.gz` for CLIP, `tokenizer.json` or
 * `vocab.txt` for BERT. Only the text tower's tensors are read.
 *
 * @example
 * ```ts
 * const text = await loadTextEncoder(
 *   "tests/fixtures/text_tiny/openai/model.safetensors",
 *   "tests/fixtures/text_tiny/openai/vocab.json", // open_clip: bpe_simple_vocab_16e6.txt.gz
 * );
 * const f = text.encode(text.tokenize(["this is an image of polyps"]));
 * f.shape; // [1, 24] (CLIP ViT-B/16: [1, 512])
 * f.dispose();
 * text.dispose();
 * ```
 */
export async function loadTextEncoder(
  path: string,
  tokenizerPath?: string,
  options: TextLoadOptions = {},
): Promise<TextEncoder> {
  const index = await readSafetensorsIndex(path);
  const { layout, prefix } = detectTextLayout(path, Object.keys(index.tensors));
  const { tensors, metadata } = await readSafetensors(path, {
    include: keepTextKeys(layout, prefix),
  });
  const kind = tokenizerKind(layout);
  let tokPath = tokenizerPath;
  if (tokPath === undefined) {
    tokPath = await findTokenizer(dirname(path), kind);
    if (tokPath === undefined) {
      // BiomedCLIP's files name their tokenizer (a separate Hugging Face repository).
      const { model } = await readOpenClipConfig(dirname(path));
      const textCfg = (model?.text_cfg ?? {}) as Record<string, unknown>;
      const named = typeof textCfg.hf_tokenizer_name === "string"
        ? `; open_clip_config.json names the tokenizer "${textCfg.hf_tokenizer_name}" (its vocab.txt)`
        : "";
      throw new Error(
        `${path}: no tokenizer beside the checkpoint; looked in ${dirname(path)} for ` +
          `${TOKENIZER_FILES[kind].join(", ")}. Pass the tokenizer's path` +
          (kind === "bpe"
            ? " (open_clip ships bpe_simple_vocab_16e6.txt.gz inside its Python package)"
            : " (the BERT model's vocab.txt or tokenizer.json)") +
          named,
      );
    }
  }
  return textEncoderFromTensors(tensors, {
    metadata,
    options,
    label: path,
    sidecarPath: path,
    tokenizer: tokPath,
  });
}

/** Where {@link textEncoderFromTensors} takes its tokenizer and settings from. */
export interface TextFromTensorsOptions extends TensorSourceOptions<TextLoadOptions> {
  /** A loaded tokenizer, or the path of one. */
  tokenizer: Tokenizer | string;
}

/**
 * Builds a text encoder from tensors already in memory.
 *
 * @example
 * ```ts
 * import { readSafetensors } from "./safetensors.ts";
 * const path = "tests/fixtures/text_tiny/openai/model.safetensors";
 * const { tensors, metadata } = await readSafetensors(path);
 * const text = await textEncoderFromTensors(tensors, {
 *   metadata,
 *   sidecarPath: path, // open_clip_config.json beside it gives the settings
 *   tokenizer: "tests/fixtures/text_tiny/openai/vocab.json",
 * });
 * text.dispose();
 * ```
 */
export async function textEncoderFromTensors(
  tensors: Record<string, SafeTensor>,
  from: TextFromTensorsOptions,
): Promise<TextEncoder> {
  const label = from.label ?? "<tensors>";
  const { layout, prefix } = detectTextLayout(label, Object.keys(tensors));
  const src = new TensorSource(label, tensors);
  const mapped = layout === "openai"
    ? mapOpenaiText(src, prefix)
    : layout === "hf"
    ? mapHfText(src, prefix)
    : mapBert(src, prefix);
  const width = mapped.weights.tokenEmbedding.shape[1];
  const settings: TextLoadOptions = {
    ...(from.sidecarPath ? await settingsFromSidecar(from.sidecarPath, layout, width) : {}),
    ...settingsFromMetadata(label, from.metadata ?? {}),
    ...checkTextSettings("options", (from.options ?? {}) as Record<string, unknown>),
  };
  const kind = tokenizerKind(layout);
  const maxPositions = mapped.weights.positionEmbedding.shape[0];
  const contextLength = settings.contextLength ??
    (layout === "bert" ? Math.min(256, maxPositions) : maxPositions);
  let tokenizer: Tokenizer;
  if (typeof from.tokenizer === "string") {
    tokenizer = await loadTokenizer(from.tokenizer, { kind, contextLength });
  } else {
    tokenizer = from.tokenizer;
    if (tokenizer.kind !== kind) {
      throw new Error(
        `${tokenizer.source}: is a ${tokenizer.kind} tokenizer; the ${layout} text tower in ${label} needs ${kind}`,
      );
    }
  }
  const config = inferConfig(label, mapped, settings, tokenizer);
  if (settings.act === undefined && layout !== "bert") {
    noteDefaultSetting(
      label,
      "text act",
      `${label} does not say which activation its text tower's MLP uses; assuming ` +
        `${config.act}, as OpenAI's CLIP weights use. Weights trained elsewhere (e.g. open_clip's ` +
        `LAION "ViT-B-16", without "-quickgelu") use exact GELU: say which with the loader ` +
        `option act (deno task prototypes: --model-act gelu), the metadata key "deer.text" ` +
        `({"act": "gelu"}), or ${
          layout === "hf" ? "a config.json" : "an open_clip_config.json"
        } beside the weights`,
    );
  }
  return createTextEncoder(config, mapped.weights, tokenizer);
}

/**
 * Creates the encoder from a config, host weights and a tokenizer; the encoder owns the tensors
 * it makes and frees them in `dispose()`.
 *
 * @example
 * ```ts
 * const text = await loadTextEncoder("tests/fixtures/text_tiny/openai/model.safetensors");
 * // createTextEncoder(config, hostWeights, tokenizer) is what the loaders call after mapping a layout.
 * text.config.width; // 32
 * text.dispose();
 * ```
 */
export function createTextEncoder(
  config: TextConfig,
  host: TextHostWeights,
  tokenizer: Tokenizer,
): TextEncoder {
  const optional = <T extends tf.Tensor>(t?: HostTensor) => t && toTensor<T>(t);
  const weights: TextWeights = {
    tokenEmbedding: toTensor(host.tokenEmbedding),
    positionEmbedding: toTensor(host.positionEmbedding),
    embedNorm: host.embedNorm && normToTensors(host.embedNorm),
    blocks: host.blocks.map(blockToTensors),
    finalNorm: host.finalNorm && normToTensors(host.finalNorm),
    pooler: host.pooler &&
      { weight: toTensor(host.pooler.weight), bias: toTensor(host.pooler.bias) },
    proj: optional(host.proj),
    projBias: optional(host.projBias),
    proj2: optional(host.proj2),
    proj2Bias: optional(host.proj2Bias),
  };
  const owned = weightTensors(weights);
  let disposed = false;
  return {
    config,
    tokenizer,
    tokenize: (texts) => tokenizer.tokenize(texts),
    encode(ids) {
      if (disposed) throw new Error("encode: this text encoder was disposed");
      return encodeText(config, weights, ids);
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      for (const t of owned) t.dispose();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Forward

function checkIds(cfg: TextConfig, ids: number[][]): void {
  if (ids.length === 0) throw new Error("encode: no rows of token ids");
  const t = ids[0].length;
  if (t < 1 || t > cfg.maxPositions) {
    throw new Error(
      `encode: rows have ${t} ids; expected 1 to ${cfg.maxPositions} (the model's positions)`,
    );
  }
  ids.forEach((row, i) => {
    if (row.length !== t) {
      throw new Error(
        `encode: row ${i} has ${row.length} ids but row 0 has ${t}; pad rows to one length (tokenize does)`,
      );
    }
    for (const id of row) {
      if (!Number.isInteger(id) || id < 0 || id >= cfg.vocabSize) {
        throw new Error(
          `encode: row ${i} holds id ${id}; ids must be integers in [0, ${cfg.vocabSize})`,
        );
      }
    }
  });
}

/** The position each row is pooled from (CLIP layouts), as open_clip / transformers pick it. */
function poolPositions(cfg: TextConfig, ids: number[][]): number[] {
  return ids.map((row) => {
    switch (cfg.pool) {
      case "argmax": // torch.argmax: the first of equal maxima
        return row.reduce((best, id, i) => (id > row[best] ? i : best), 0);
      case "eos": // (ids == eos).argmax(): the first match, or 0 when there is none
        return Math.max(row.indexOf(cfg.eosId), 0);
      case "first":
        return 0;
      default:
        return row.length - 1;
    }
  });
}

/** A BERT post-LN layer: `x = LN(x + attn(x))`, `x = LN(x + mlp(x))`. */
function bertBlock(
  x: tf.Tensor2D,
  b: Block,
  cfg: TextConfig,
  n: number,
  t: number,
  mask: tf.Tensor,
): tf.Tensor2D {
  const attended = multiHeadAttention(x, b, cfg, n, t, undefined, mask);
  const h = layerNorm(x.add(attended), b.ln1, cfg.lnEps);
  const fc1 = tf.fused.matMul({ a: h, b: b.fc1Weight, bias: b.fc1Bias }) as tf.Tensor2D;
  const out = tf.fused.matMul({ a: activation(fc1, cfg.act), b: b.fc2Weight, bias: b.fc2Bias });
  return layerNorm(h.add(out), b.ln2, cfg.lnEps);
}

// Masked scores get this added: exp(−1e9) is exactly 0 in float32, and a row that is all masked
// stays finite (uniform) instead of NaN.
const MASKED = -1e9;

function encodeText(cfg: TextConfig, w: TextWeights, ids: number[][]): tf.Tensor2D {
  checkIds(cfg, ids);
  const n = ids.length;
  const bert = cfg.layout === "bert";
  const positions = bert ? [] : poolPositions(cfg, ids);
  // Run only the positions that reach the pooled features (exact; module doc).
  let t = ids[0].length;
  if (bert) {
    let last = 0;
    for (const row of ids) {
      for (let j = row.length - 1; j > last; j--) {
        if (row[j] !== cfg.padId) {
          last = j;
          break;
        }
      }
    }
    t = last + 1;
  } else if (cfg.causal && cfg.pool !== "last") {
    t = Math.max(...positions) + 1;
  }
  const width = cfg.width;
  return tf.tidy((): tf.Tensor2D => {
    const flat = new Int32Array(n * t);
    ids.forEach((row, i) => flat.set(row.slice(0, t), i * t));
    const tokens = tf.gather(w.tokenEmbedding, tf.tensor1d(flat, "int32"));
    const positional = w.positionEmbedding.slice([0, 0], [t, width]);
    let x = tokens.reshape([n, t, width]).add(positional).reshape([n * t, width]) as tf.Tensor2D;
    let mask: tf.Tensor | undefined;
    if (bert) {
      x = layerNorm(x, w.embedNorm!, cfg.lnEps);
      const bias = new Float32Array(n * t);
      flat.forEach((id, k) => bias[k] = id === cfg.padId ? MASKED : 0);
      mask = tf.tensor4d(bias, [n, 1, 1, t]);
    } else if (cfg.causal) {
      const bias = new Float32Array(t * t);
      for (let i = 0; i < t; i++) for (let j = i + 1; j < t; j++) bias[i * t + j] = MASKED;
      mask = tf.tensor2d(bias, [t, t]);
    }
    for (const block of w.blocks) {
      const input = x;
      // One tidy per block frees its intermediates at once.
      x = tf.tidy(() =>
        bert
          ? bertBlock(input, block, cfg, n, t, mask!)
          : transformerBlock(input, block, cfg, n, t, undefined, mask)
      );
    }
    let pooled: tf.Tensor2D;
    if (cfg.pool === "mean") {
      const keep = tf.tensor2d(Float32Array.from(flat, (id) => (id === cfg.padId ? 0 : 1)), [n, t]);
      const summed = x.reshape([n, t, width]).mul(keep.expandDims(2)).sum(1);
      pooled = summed.div(keep.sum(1, true)) as tf.Tensor2D;
    } else {
      const rows = bert ? ids.map((_, i) => i * t) : positions.map((p, i) => i * t + p);
      pooled = tf.gather(x, tf.tensor1d(rows, "int32"));
    }
    // ln_final acts on each token alone: pooling first gives the same rows.
    if (w.finalNorm) pooled = layerNorm(pooled, w.finalNorm, cfg.lnEps);
    if (cfg.pool === "cls_pooler") {
      const dense = tf.fused.matMul({ a: pooled, b: w.pooler!.weight, bias: w.pooler!.bias });
      pooled = tf.tanh(dense) as tf.Tensor2D;
    }
    if (!w.proj) return pooled;
    let out = (w.projBias
      ? tf.fused.matMul({ a: pooled, b: w.proj, bias: w.projBias })
      : tf.matMul(pooled, w.proj)) as tf.Tensor2D;
    if (w.proj2) {
      out = activation(out, "gelu"); // open_clip's mlp projection uses nn.GELU()
      out = (w.proj2Bias
        ? tf.fused.matMul({ a: out, b: w.proj2, bias: w.proj2Bias })
        : tf.matMul(out, w.proj2)) as tf.Tensor2D;
    }
    return out;
  });
}

// ---------------------------------------------------------------------------------------------
// Prototypes

/** The reference's prompt (docs/method.md#the-classification-head). */
export const DEFAULT_TEMPLATE = "this is an image of {}";

/**
 * Class prototypes from prompts: every `{}` in `template` is replaced by the class name, the
 * prompts are tokenized and encoded, and each row is L2-normalised
 * (docs/method.md#the-classification-head). [C, embedDim].
 *
 * @example
 * ```ts
 * import { savePrototypes } from "./head.ts";
 * const text = await loadTextEncoder("tests/fixtures/text_tiny/openai/model.safetensors");
 * const T = classPrototypes(text, ["polyps", "normal"]); // [2, e], unit rows
 * T.shape; // [2, 24]
 * await savePrototypes(await Deno.makeTempFile({ suffix: ".safetensors" }), T, ["polyps", "normal"]);
 * T.dispose();
 * text.dispose();
 * ```
 */
export function classPrototypes(
  encoder: TextEncoder,
  classNames: string[],
  template: string = DEFAULT_TEMPLATE,
): tf.Tensor2D {
  if (!template.includes("{}")) {
    throw new Error(`classPrototypes: template "${template}" has no "{}" for the class name`);
  }
  if (classNames.length === 0) throw new Error("classPrototypes: no class names");
  // A function replacement: a string one would expand `$&`, `$$` … in a class name.
  const ids = encoder.tokenize(classNames.map((name) => template.replaceAll("{}", () => name)));
  return tf.tidy(() => {
    const batches: tf.Tensor2D[] = [];
    for (let i = 0; i < ids.length; i += 64) batches.push(encoder.encode(ids.slice(i, i + 64)));
    const features = batches.length === 1 ? batches[0] : tf.concat(batches, 0);
    // F.normalize: rows divided by max(‖row‖, 1e-12).
    return features.div(tf.maximum(tf.norm(features, 2, 1, true), 1e-12)) as tf.Tensor2D;
  });
}
