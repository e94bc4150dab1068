/**
 * The model layer: safetensors I/O, the CLIP image tower with LoRA (ViT), LoRA factors and the
 * prototype head.
 *
 * @example
 * ```ts
 * import { loadVisionEncoder, initLora, orthonormalPrototypes } from "./lib/model/mod.ts";
 * ```
 * @module
 */
export * from "./safetensors.ts";
export * from "./transformer.ts";
export * from "./vit.ts";
export * from "./vit_checkpoints.ts";
export * from "./vit_volume.ts";
export * from "./vit_init.ts";
export * from "./lora.ts";
export * from "./head.ts";
