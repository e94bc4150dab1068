/**
 * One LoRA training step of the tiny ViT (`TINY_VIT`, bench/figures.ts) on the wasm backend, with tfjs' stock
 * matrix-product kernels and with the explicit ones of `lib/backend_wasm.ts`: image 28×28×3,
 * patch 4, width 128, 4 heads, 4 layers, MLP 512, LoRA r = 8 on q/k/v, batch 32 — forward and
 * gradients with respect to every A and B.
 *
 * Run: `DEER_BACKEND=wasm deno bench -A bench/wasm_vit_step.bench.ts` (about half a minute).
 * @module
 */
import { backendName, tf } from "../lib/backend.ts";
import { useExplicitMatMul } from "../lib/backend_wasm.ts";
import { randomVitWeights } from "../lib/model/vit_init.ts";
import { createVitEncoder, type VitConfig } from "../lib/model/vit.ts";
import { initLora, loraScale } from "../lib/model/lora.ts";
import { createRng } from "../lib/rng.ts";
import { TINY_VIT } from "./figures.ts";

if (backendName !== "wasm") {
  throw new Error(`this benchmark measures the wasm backend: run it with DEER_BACKEND=wasm`);
}

// The tiny ViT (`bench/figures.ts`), in the variant this benchmark has always
// measured: QuickGELU, pre-norm, no patch bias, a projection to 64.
const config: VitConfig = {
  ...TINY_VIT,
  embedDim: 64,
  act: "quick_gelu",
  preNorm: true,
  patchBias: false,
  proj: true,
};
const encoder = createVitEncoder(config, randomVitWeights(config, createRng(1)));
const factors = initLora(config, 8, createRng(2));
const A = factors.A.map((a) => tf.tensor2d(a, [8, config.width]));
// Non-zero B, so that every gradient path carries numbers.
const B = factors.B.map((_, i) =>
  tf.randomNormal([config.width, 8], 0, 0.02, "float32", i) as tf.Tensor2D
);
const images = tf.randomNormal([32, 28, 28, 3], 0, 1, "float32", 7) as tf.Tensor4D;

function step(): void {
  tf.tidy(() => {
    const loss = (...ab: tf.Tensor[]) => {
      const lora = {
        A: ab.slice(0, A.length) as tf.Tensor2D[],
        B: ab.slice(A.length) as tf.Tensor2D[],
        scale: loraScale(8, 8),
      };
      return tf.mean(tf.square(encoder.encode(images, lora))) as tf.Scalar;
    };
    const { value, grads } = tf.valueAndGrads(loss)([...A, ...B]);
    // The wasm backend reads synchronously (this bench runs on wasm only).
    value.dataSync();
    grads.forEach((g) => g.dataSync());
  });
}

for (const explicit of [false, true]) {
  Deno.bench({
    name: explicit ? "explicit matmul kernels" : "stock matmul kernels",
    group: "tiny ViT LoRA step, batch 32",
    baseline: !explicit,
    n: 3,
    warmup: 1,
    fn(t) {
      useExplicitMatMul(explicit);
      t.start();
      step();
      t.end();
    },
  });
}
