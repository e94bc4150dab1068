/**
 * tfjs-webgpu's matrix products are exact where its split-K program would have been used: a
 * single product with a long inner dimension and few output tiles ([34, 2048]·[2048, 32], the
 * shape of a wide MLP's backward pass on two 16×16 images) against a float64 host product. Before
 * the toolkit re-routed them (lib/backend_webgpu.ts), lavapipe returned errors of ~200.
 */
import assert from "node:assert/strict";
import { probeInChild } from "../lib/backend_webgpu.ts";

const root = new URL("..", import.meta.url).pathname;
const adapter = await probeInChild();
const required = Deno.env.get("DEER_REQUIRE_WEBGPU") === "1";

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
  ignore: adapter === null && !required,
  async fn() {
    assert.ok(adapter !== null, "no WebGPU adapter (DEER_REQUIRE_WEBGPU=1 asks for one)");
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", SOURCE],
      cwd: root,
      env: { DEER_BACKEND: "webgpu", DEER_QUIET: "1" },
      stdin: "null",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const { err, fusedErr } = JSON.parse(new TextDecoder().decode(out.stdout));
    // Sums of 2048 products of N(0, 1) values (size ~45): float32 rounding stays below 1e-3.
    assert.ok(err < 1e-3, `matMul differs from the float64 product by ${err}`);
    assert.ok(fusedErr < 1e-3, `fused matMul differs by ${fusedErr}`);
  },
});
