/**
 * The model layer: safetensors I/O; the transformer both CLIP towers share; the image tower (a
 * ViT with LoRA) — its forward pass, checkpoint layouts, volume inflation, random initialisation
 * and saving; the text tower that turns class names into prototypes; LoRA factors and the
 * prototype head. Not re-exported: `vit_fast.ts` (the ViT encoder's hand-written backward pass,
 * which `encode` picks by itself) and the `_`-prefixed modules, internal to this folder.
 *
 * @example
 * ```ts
 * import { initLora, loadVisionEncoder, orthonormalPrototypes } from "./mod.ts";
 * import { createRng } from "../rng.ts";
 * const encoder = await loadVisionEncoder("models/default/vit_tiny_fashion.safetensors");
 * const lora = initLora(encoder.config, 8, createRng(10));
 * const prototypes = orthonormalPrototypes(6, encoder.config.embedDim, 10);
 * lora.A.length; // 9: q, k, v of each of the 3 blocks
 * prototypes.dispose();
 * encoder.dispose();
 * ```
 * @module
 */
export * from "./safetensors.ts";
export * from "./transformer.ts";
export * from "./vit.ts";
export * from "./vit_checkpoints.ts";
export * from "./vit_volume.ts";
export * from "./vit_init.ts";
export * from "./text.ts";
export * from "./lora.ts";
export * from "./head.ts";
