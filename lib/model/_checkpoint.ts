/**
 * What the image and text towers' checkpoint readers share: {@link TensorSource} (tensors by name,
 * with errors that name the file and the tensor), PyTorch's `[out, in]` matrices turned into the
 * `x · W` convention, the open_clip and Hugging Face layouts of one transformer block, and the
 * checks and sources of the settings the weights cannot tell (metadata, JSON beside the file).
 * Internal to `lib/model` (`vit_checkpoints.ts`, `text.ts`, `vit_init.ts`).
 *
 * @example
 * ```ts
 * import { readSafetensors } from "./safetensors.ts";
 * const { tensors } = await readSafetensors("models/default/vit_tiny_fashion.safetensors");
 * const src = new TensorSource("vit_tiny_fashion.safetensors", tensors);
 * const block = mapOpenaiBlock(src, "visual.transformer.resblocks.0.", 64);
 * block.qkvWeight.shape; // [64, 192]: x · W, columns q | k | v
 * ```
 * @module
 */
import { join } from "node:path";
import type { SafeTensor } from "./safetensors.ts";
import type { HostBlock, HostNorm, HostTensor, VitActivation } from "./transformer.ts";

// ---------------------------------------------------------------------------------------------
// Tensors by name

/** Looks tensors up by name, remembers which were used, and names the file in its errors. */
export class TensorSource {
  readonly used = new Set<string>();
  constructor(readonly label: string, readonly tensors: Record<string, SafeTensor>) {}
  has(name: string): boolean {
    return name in this.tensors;
  }
  get(name: string, shape?: (number | null)[]): HostTensor {
    const t = this.tensors[name];
    if (!t) {
      throw new Error(
        `${this.label}: tensor "${name}" is missing; the checkpoint is incomplete or not a supported ViT`,
      );
    }
    if (
      shape &&
      (shape.length !== t.shape.length || shape.some((d, i) => d !== null && d !== t.shape[i]))
    ) {
      const want = shape.map((d) => d ?? "*").join(", ");
      throw new Error(`${this.label}: tensor "${name}" has shape [${t.shape}]; expected [${want}]`);
    }
    this.used.add(name);
    return { shape: t.shape, data: t.data };
  }
  optional(name: string, shape?: (number | null)[]): HostTensor | undefined {
    return this.has(name) ? this.get(name, shape) : undefined;
  }
  norm(prefix: string, width: number): HostNorm {
    return {
      weight: this.get(`${prefix}.weight`, [width]),
      bias: this.get(`${prefix}.bias`, [width]),
    };
  }
  /**
   * The transformer blocks under `prefix`: `map` reads block i from its key prefix
   * `${prefix}{i}.`, for every i whose keys exist (they must be 0..L−1).
   */
  blocks(prefix: string, map: (blockPrefix: string) => HostBlock): HostBlock[] {
    const layers = this.countBlocks(prefix);
    return Array.from({ length: layers }, (_, i) => map(`${prefix}${i}.`));
  }
  /** Block indices i for which `${prefix}{i}.` keys exist: must be 0..L−1. */
  private countBlocks(prefix: string): number {
    const seen = new Set<number>();
    for (const name of Object.keys(this.tensors)) {
      if (!name.startsWith(prefix)) continue;
      const i = Number(name.slice(prefix.length).split(".")[0]);
      if (Number.isInteger(i)) seen.add(i);
    }
    for (let i = 0; i < seen.size; i++) {
      if (!seen.has(i)) throw new Error(`${this.label}: blocks under "${prefix}" skip index ${i}`);
    }
    if (seen.size === 0) throw new Error(`${this.label}: no transformer blocks under "${prefix}"`);
    return seen.size;
  }
  /** Fails on tensors under `prefix` that the mapping did not use: a variant we would misread. */
  checkAllUsed(prefix: string, ignore: (name: string) => boolean = () => false): void {
    const left = Object.keys(this.tensors).filter((n) =>
      n.startsWith(prefix) && !this.used.has(n) && !ignore(n)
    );
    if (left.length > 0) {
      throw new Error(
        `${this.label}: tensors ${left.slice(0, 5).map((n) => `"${n}"`).join(", ")}` +
          `${
            left.length > 5 ? ` and ${left.length - 5} more` : ""
          } are not part of the supported ` +
          `ViT architecture (layer scale, attention pooling, extra norms?); this variant cannot be loaded`,
      );
    }
  }
}

/**
 * PyTorch Linear weight [out, in] → [in, out].
 *
 * @example
 * ```ts
 * const w = linear({ shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) });
 * w.shape; // [3, 2]
 * w.data; // [1, 4, 2, 5, 3, 6]
 * ```
 */
export function linear(t: HostTensor): HostTensor {
  const [rows, cols] = t.shape;
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = t.data[r * cols + c];
  }
  return { shape: [cols, rows], data: out };
}

/**
 * Stacks host tensors along their first axis.
 *
 * @example
 * ```ts
 * const row = (a: number, b: number) => ({ shape: [1, 2], data: new Float32Array([a, b]) });
 * const qkv = concatRows([row(1, 2), row(3, 4), row(5, 6)]);
 * qkv.shape; // [3, 2]
 * ```
 */
export function concatRows(parts: HostTensor[]): HostTensor {
  const data = new Float32Array(parts.reduce((a, p) => a + p.data.length, 0));
  let at = 0;
  for (const p of parts) {
    data.set(p.data, at);
    at += p.data.length;
  }
  return { shape: [parts.reduce((a, p) => a + p.shape[0], 0), ...parts[0].shape.slice(1)], data };
}

// ---------------------------------------------------------------------------------------------
// One transformer block in a checkpoint layout

/** The names of one block's tensors in a checkpoint layout (after the block's prefix). */
export interface BlockNames {
  ln1: string;
  ln2: string;
  out: string;
  fc1: string;
  fc2: string;
}

/**
 * One block from its tensors' names: the fused q/k/v weight [3·width, width] and bias come from
 * the caller (stored fused or as three projections, depending on the layout).
 *
 * @example
 * ```ts
 * import { readSafetensors } from "./safetensors.ts";
 * const { tensors } = await readSafetensors("tests/fixtures/model_tiny/timm.safetensors");
 * const src = new TensorSource("timm.safetensors", tensors);
 * const b = "trunk.blocks.0.";
 * const timmNames = { ln1: "norm1", ln2: "norm2", out: "attn.proj", fc1: "mlp.fc1", fc2: "mlp.fc2" };
 * const block = mapBlock(src, b, 32, timmNames, {
 *   weight: src.get(`${b}attn.qkv.weight`, [96, 32]),
 *   bias: src.get(`${b}attn.qkv.bias`, [96]),
 * });
 * block.fc1Weight.shape[0]; // 32
 * ```
 */
export function mapBlock(
  src: TensorSource,
  b: string,
  width: number,
  names: BlockNames,
  qkv: { weight: HostTensor; bias: HostTensor },
): HostBlock {
  const fc1 = src.get(`${b}${names.fc1}.weight`, [null, width]);
  const mlp = fc1.shape[0];
  return {
    ln1: src.norm(`${b}${names.ln1}`, width),
    qkvWeight: linear(qkv.weight),
    qkvBias: qkv.bias,
    outWeight: linear(src.get(`${b}${names.out}.weight`, [width, width])),
    outBias: src.get(`${b}${names.out}.bias`, [width]),
    ln2: src.norm(`${b}${names.ln2}`, width),
    fc1Weight: linear(fc1),
    fc1Bias: src.get(`${b}${names.fc1}.bias`, [mlp]),
    fc2Weight: linear(src.get(`${b}${names.fc2}.weight`, [width, mlp])),
    fc2Bias: src.get(`${b}${names.fc2}.bias`, [width]),
  };
}

/**
 * One open_clip OpenAI-style residual block under prefix `b` (`….resblocks.{i}.`): fused
 * `attn.in_proj_weight`, `mlp.c_fc`/`c_proj`, `ln_1`/`ln_2` (image and text towers alike).
 *
 * @example
 * ```ts
 * import { readSafetensors } from "./safetensors.ts";
 * const { tensors } = await readSafetensors("tests/fixtures/model_tiny/openai.safetensors");
 * const src = new TensorSource("openai.safetensors", tensors);
 * const block = mapOpenaiBlock(src, "transformer.resblocks.0.", 8); // the text tower's first block
 * block.qkvWeight.shape; // [8, 24]
 * ```
 */
export function mapOpenaiBlock(src: TensorSource, b: string, width: number): HostBlock {
  return mapBlock(
    src,
    b,
    width,
    { ln1: "ln_1", ln2: "ln_2", out: "attn.out_proj", fc1: "mlp.c_fc", fc2: "mlp.c_proj" },
    {
      weight: src.get(`${b}attn.in_proj_weight`, [3 * width, width]),
      bias: src.get(`${b}attn.in_proj_bias`, [3 * width]),
    },
  );
}

/**
 * One Hugging Face CLIP encoder layer under prefix `b` (`….encoder.layers.{i}.`): separate
 * q/k/v projections fused into one, `layer_norm1`/`layer_norm2`, `mlp.fc1`/`fc2`.
 *
 * @example
 * ```ts
 * import { readSafetensors } from "./safetensors.ts";
 * const { tensors } = await readSafetensors("tests/fixtures/model_tiny/hf/model.safetensors");
 * const src = new TensorSource("model.safetensors", tensors);
 * const block = mapHfBlock(src, "vision_model.encoder.layers.0.", 32);
 * block.qkvWeight.shape; // [32, 96]
 * ```
 */
export function mapHfBlock(src: TensorSource, b: string, width: number): HostBlock {
  const proj = (n: string, kind: "weight" | "bias") =>
    src.get(`${b}self_attn.${n}_proj.${kind}`, kind === "weight" ? [width, width] : [width]);
  return mapBlock(
    src,
    b,
    width,
    {
      ln1: "layer_norm1",
      ln2: "layer_norm2",
      out: "self_attn.out_proj",
      fc1: "mlp.fc1",
      fc2: "mlp.fc2",
    },
    {
      weight: concatRows(["q", "k", "v"].map((n) => proj(n, "weight"))),
      bias: concatRows(["q", "k", "v"].map((n) => proj(n, "bias"))),
    },
  );
}

// ---------------------------------------------------------------------------------------------
// Settings the weights cannot tell

/**
 * A setting's `act` checked: "gelu" or "quick_gelu" (shared with the text tower's settings).
 *
 * @example
 * ```ts
 * checkActivation("m.safetensors", "gelu"); // "gelu"
 * ```
 */
export function checkActivation(label: string, act: unknown): VitActivation {
  if (act !== "gelu" && act !== "quick_gelu") {
    throw new Error(
      `${label}: activation "${act}" is not supported; use "gelu" (erf) or "quick_gelu"`,
    );
  }
  return act;
}

/**
 * A setting's `lnEps` checked: a number > 0 (shared with the text tower's settings).
 *
 * @example
 * ```ts
 * checkLnEps("m.safetensors", 1e-5); // 1e-5
 * ```
 */
export function checkLnEps(label: string, lnEps: unknown): number {
  if (typeof lnEps !== "number" || !(lnEps > 0)) {
    throw new Error(`${label}: lnEps ${lnEps} must be a number > 0`);
  }
  return lnEps;
}

/**
 * The settings a safetensors file stores as JSON under metadata `key` (`deer.vision`,
 * `deer.text`), checked by `check`; `{}` when the key is absent.
 *
 * @example
 * ```ts
 * const s = metadataSettings("m.safetensors", { "deer.vision": '{"act":"gelu"}' }, "deer.vision", (_, o) => o);
 * ```
 */
export function metadataSettings<T>(
  label: string,
  metadata: Record<string, string>,
  key: string,
  check: (where: string, parsed: Record<string, unknown>) => T,
): T | Record<never, never> {
  const raw = metadata[key];
  if (raw === undefined) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new Error(`${label}: metadata "${key}" is not JSON: ${raw.slice(0, 80)}`);
  }
  return check(`${label}: metadata "${key}"`, parsed as Record<string, unknown>);
}

/**
 * Reads a JSON file; `undefined` when it does not exist, an error naming the file otherwise.
 *
 * @example
 * ```ts
 * const cfg = await readJsonIfExists("models/clip/config.json"); // object or undefined
 * ```
 */
export async function readJsonIfExists(path: string): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw new Error(`${path}: cannot read (${(err as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: not valid JSON (${(err as Error).message})`);
  }
}

/**
 * The model section of the `open_clip_config.json` in `dir` (its `model_cfg`, or the whole file
 * where it holds the model config itself) and the file's path; `model` is undefined when there is
 * no such file.
 *
 * @example
 * ```ts
 * const { file, model } = await readOpenClipConfig("models/biomedclip");
 * const vision = (model?.vision_cfg ?? {}) as Record<string, unknown>;
 * ```
 */
export async function readOpenClipConfig(
  dir: string,
): Promise<{ file: string; model?: Record<string, unknown> }> {
  const file = join(dir, "open_clip_config.json");
  const cfg = await readJsonIfExists(file);
  return { file, model: (cfg?.model_cfg ?? cfg) as Record<string, unknown> | undefined };
}

/**
 * Where an encoder built from in-memory tensors takes its settings from (the vision tower's
 * `visionEncoderFromTensors`, and the text tower's with a tokenizer added).
 */
export interface TensorSourceOptions<O> {
  metadata?: Record<string, string>;
  options?: O;
  /** Names the source in errors. */
  label?: string;
  /** A weights path whose folder may hold `config.json` / `open_clip_config.json`. */
  sidecarPath?: string;
}
