/**
 * Kernel-level checks of the webgpu backend. tfjs-webgpu's matrix products are exact where its split-K program would have been used: a
 * single product with a long inner dimension and few output tiles ([34, 2048]·[2048, 32], the
 * shape of a wide MLP's backward pass on two 16×16 images) against a float64 host product. Before
 * the toolkit re-routed them (lib/backend_webgpu.ts), lavapipe returned errors of ~200.
 */
import assert from "node:assert/strict";
import { lastJsonLine, webgpuGate, webgpuStdout } from "./helpers/webgpu.ts";

const { skip, requireAdapter } = await webgpuGate("webgpu kernel tests");

const SOURCE = `
import { tf } from "./lib/backend.ts";
const a = tf.randomNormal([34, 2048], 0, 1, "float32", 1);
const b = tf.randomNormal([32, 2048], 0, 1, "float32", 2);
const bias = tf.randomNormal([32], 0, 1, "float32", 3);
const [A, B, C] = [await a.data(), await b.data(), await bias.data()];
const product = await tf.matMul(a, b, false, true).data();
const fused = await tf.fused.matMul({ a, b, transposeB: true, bias, activation: "relu" }).data();
let err = 0, fusedErr = 0;
for (let i = 0; i < 34; i++) {
  for (let j = 0; j < 32; j++) {
    let s = 0;
    for (let k = 0; k < 2048; k++) s += A[i * 2048 + k] * B[j * 2048 + k];
    err = Math.max(err, Math.abs(product[i * 32 + j] - s));
    fusedErr = Math.max(fusedErr, Math.abs(fused[i * 32 + j] - Math.max(0, s + C[j])));
  }
}
console.log(JSON.stringify({ err, fusedErr }));
`;

Deno.test({
  name: "webgpu: long-K products with few output tiles are exact (no split-K)",
  ignore: skip,
  async fn() {
    requireAdapter();
    const { err, fusedErr } = lastJsonLine(await webgpuStdout(["eval", SOURCE]));
    // Sums of 2048 products of N(0, 1) values (size ~45): float32 rounding stays below 1e-3.
    assert.ok(err < 1e-3, `matMul differs from the float64 product by ${err}`);
    assert.ok(fusedErr < 1e-3, `fused matMul differs by ${fusedErr}`);
  },
});

const WIDE_SOURCE = `
import { tf } from "./lib/backend.ts";
import { randomVitWeights } from "./lib/model/vit_init.ts";
import { createVitEncoder, encodeWithWeights } from "./lib/model/vit.ts";
import { frozenPathAvailable } from "./lib/model/vit_fast.ts";
import { initLora } from "./lib/model/lora.ts";
import { createRng } from "./lib/rng.ts";
// ViT-B/16's width and heads at 128 px (65 tokens), two blocks: the attention output's
// outer product over heads (tfjs einsum's way) would take 153 MB, beyond a 128 MiB binding.
const cfg = { layout: "openai", imageSize: 128, patchSize: 16, channels: 3, width: 768, layers: 2,
  heads: 12, mlpDim: 3072, embedDim: 512, act: "gelu", lnEps: 1e-5, preNorm: true,
  patchBias: false, proj: true, projBias: false };
const enc = createVitEncoder(cfg, randomVitWeights(cfg, createRng(1)));
const host = initLora(cfg, 8, createRng(2));
const rng = createRng(3);
const A = host.A.map((a) => tf.tensor2d(a, [8, 768]));
const B = host.B.map((b) => tf.tensor2d(b.map(() => rng.normal() * 0.05), [768, 8]));
const x = tf.randomNormal([1, 128, 128, 3], 0, 1, "float32", 2);
const run = (fast) => tf.tidy(() => {
  const f = (l) => fast ? enc.encode(x, l) : encodeWithWeights(cfg, enc.weights, x, l);
  const g = tf.grads((...ps) => tf.sum(f({ A: ps.slice(0, 6), B: ps.slice(6), scale: 1 })))([...A, ...B]);
  return [f({ A, B, scale: 1 }), ...g];
});
const fast = await Promise.all(run(true).map((t) => t.data()));
const ref = await Promise.all(run(false).map((t) => t.data()));
const rel = (a, b) => {
  let e = 0, s = 0;
  for (let i = 0; i < a.length; i++) {
    e = Math.max(e, Math.abs(a[i] - b[i]));
    s = Math.max(s, Math.abs(b[i]));
  }
  return e / s;
};
console.log(JSON.stringify({ fastPath: frozenPathAvailable(), errors: fast.map((a, i) => rel(a, ref[i])) }));
`;

Deno.test({
  name: "webgpu: the fast path equals autodiff on a ViT-B-wide model beyond a binding's size",
  ignore: skip,
  async fn() {
    requireAdapter();
    // By default (its products are below DeerWgsl_MatMul's threshold) and with every product
    // the tiled WGSL kernel takes run by it (lib/webgpu_kernels.ts).
    for (const env of [{}, { DEER_WGSL_MM_MIN_OUTPUTS: "0" }] as Record<string, string>[]) {
      const { fastPath, errors } = lastJsonLine(
        await webgpuStdout(["eval", "--ext=js", WIDE_SOURCE], env),
      );
      const what = JSON.stringify(env);
      assert.equal(fastPath, true, "webgpu takes the fast path by default");
      // Before the attention output stopped going through tfjs' einsum: errors of 1 to 15.
      const [features, ...grads] = errors as number[];
      assert.ok(features < 1e-5, `${what}: features differ by ${features}`);
      grads.forEach((e, i) => assert.ok(e < 1e-4, `${what}: gradient ${i} differs by ${e}`));
    }
  },
});
