/**
 * Matrix products on the wasm backend: tfjs' stock kernels against the explicit fast-path kernels
 * of `lib/backend_wasm.ts`, on the shapes a ViT training step produces.
 *
 * Run: `deno bench -A bench/wasm_matmul.bench.ts` (about a minute; the stock kernel's scalar loop
 * is the slow part).
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { installWasmBackend, useExplicitMatMul } from "../lib/backend_wasm.ts";

tf.enableProdMode();
await installWasmBackend();
await tf.setBackend("wasm");

/** A product of the ViT step: operand shapes, transposes, and where it comes from. */
interface Case {
  name: string;
  a: number[];
  b: number[];
  transposeA?: boolean;
  transposeB?: boolean;
}

const cases: Case[] = [
  { name: "x·W [1024×768]·[768×768] (already fast)", a: [1024, 768], b: [768, 768] },
  { name: "dW = xᵀ·dy [1024×768]ᵀ·[1024×768]", a: [1024, 768], b: [1024, 768], transposeA: true },
  { name: "dx = dy·Wᵀ [1024×768]·[768×768]ᵀ", a: [1024, 768], b: [768, 768], transposeB: true },
  { name: "q·kᵀ [12,50,64]·[12,50,64]ᵀ", a: [12, 50, 64], b: [12, 50, 64], transposeB: true },
  { name: "attn·v [12,50,50]·[12,50,64]", a: [12, 50, 50], b: [12, 50, 64] },
  { name: "x·W batched [32,50,128]·[128,384]", a: [32, 50, 128], b: [128, 384] },
  // The tiny ViT (bench/figures.ts): batch 32 × 4 heads, 50 tokens, head width 32.
  {
    name: "q·kᵀ small heads [128,50,32]·[128,50,32]ᵀ",
    a: [128, 50, 32],
    b: [128, 50, 32],
    transposeB: true,
  },
  {
    name: "dv = attnᵀ·dy [128,50,50]ᵀ·[128,50,32]",
    a: [128, 50, 50],
    b: [128, 50, 32],
    transposeA: true,
  },
];

for (const c of cases) {
  const a = tf.randomNormal(c.a, 0, 1, "float32", 1);
  const b = tf.randomNormal(c.b, 0, 1, "float32", 2);
  for (const explicit of [false, true]) {
    Deno.bench({
      name: `${explicit ? "explicit" : "stock"}: ${c.name}`,
      group: c.name,
      baseline: !explicit,
      // The stock loop needs ~1 s for the large products: few iterations there.
      n: tf.util.sizeFromShape(c.a) > 100_000 ? 5 : 50,
      warmup: 2,
      fn(t) {
        useExplicitMatMul(explicit);
        t.start();
        tf.matMul(a, b, c.transposeA, c.transposeB).dispose();
        t.end();
      },
    });
  }
}
