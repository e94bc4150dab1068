/**
 * The fused WGSL kernels of lib/webgpu_kernels.ts against the portable tfjs composition they
 * replace, and the webgpu fast path with them (`DEER_WGSL` unset) against without
 * (`DEER_WGSL=0`). Runs on any WebGPU adapter (lavapipe from `mesa-vulkan-drivers` is enough);
 * skipped with a printed reason without one, failed instead when `DEER_REQUIRE_WEBGPU=1`.
 */
import assert from "node:assert/strict";
import { jsonRelativeError, lastJsonLine, webgpuGate, webgpuStdout } from "./helpers/webgpu.ts";

const { skip } = await webgpuGate("webgpu WGSL kernel tests");

/** `deno ARGS` on webgpu, which must succeed: the JSON its last line prints. */
async function child(args: string[], env: Record<string, string>) {
  return lastJsonLine(await webgpuStdout(args, env));
}

// Odd sizes (not multiples of the 64-wide workgroup), a single element, and a long row.
const SOURCE = `
import { tf } from "./lib/backend.ts";
import {
  wgslGateBackward, wgslGateForward, wgslLayerNormBackward, wgslLayerNormForward,
  wgslSoftmaxBackward,
} from "./lib/webgpu_kernels.ts";
const L = Math.log(2 / Math.sqrt(Math.PI));
const errs = {};
let seed = 1;
for (const shape of [[1], [37, 129], [3, 65537]]) {
  const z = tf.randomNormal(shape, 0, 2, "float32", seed++);
  const d = tf.randomNormal(shape, 0, 1, "float32", seed++);
  for (const act of ["gelu", "quick_gelu"]) {
    const g0 = act === "gelu" ? tf.add(tf.erf(z), 1) : tf.sigmoid(z);
    const a0 = tf.mul(z, g0);
    const dz0 = act === "gelu"
      ? tf.mul(d, tf.add(g0, tf.mul(z, tf.exp(tf.sub(L, tf.square(z))))))
      : tf.mul(d, tf.mul(g0, tf.add(tf.mul(z, tf.sub(1, g0)), 1)));
    const [a, g] = wgslGateForward(z, act);
    const dz = wgslGateBackward(d, z, g, act);
    const pairs = { act: [a, a0], gate: [g, g0], grad: [dz, dz0] };
    for (const [k, [x, y]] of Object.entries(pairs)) {
      const e = (await tf.max(tf.abs(tf.sub(x, y))).data())[0];
      const s = (await tf.max(tf.abs(y)).data())[0];
      errs[act + "." + k + "." + shape.join("x")] = e / Math.max(s, 1e-30);
    }
  }
}
// LayerNorm and the softmax backward: odd widths, one row, and a long row.
for (const shape of [[1, 5], [37, 129], [2, 16384]]) {
  const w = shape[1];
  const x = tf.randomNormal(shape, 1, 2, "float32", seed++);
  const dy = tf.randomNormal(shape, 0, 1, "float32", seed++);
  const gamma = tf.randomNormal([w], 1, 0.5, "float32", seed++);
  const beta = tf.randomNormal([w], 0, 1, "float32", seed++);
  const eps = 1e-5;
  const { mean, variance } = tf.moments(x, -1, true);
  const rstd = tf.rsqrt(tf.add(variance, eps));
  const xhat = tf.mul(tf.sub(x, mean), rstd);
  const y0 = tf.add(tf.mul(xhat, gamma), beta);
  const dxhat = tf.mul(dy, gamma);
  const centred = tf.sub(dxhat, tf.mean(dxhat, -1, true));
  const dx0 = tf.mul(tf.sub(centred, tf.mul(xhat, tf.mean(tf.mul(dxhat, xhat), -1, true))), rstd);
  const { y, stats } = wgslLayerNormForward(x, gamma, beta, eps);
  const dx = wgslLayerNormBackward(dy, x, stats, gamma);
  const p = tf.softmax(tf.mul(x, 3));
  const ds0 = tf.mul(p, tf.sub(dy, tf.sum(tf.mul(dy, p), -1, true)));
  const ds = wgslSoftmaxBackward(p, dy);
  const pairs = { lnY: [y, y0], lnDx: [dx, dx0], softmaxGrad: [ds, ds0] };
  for (const [k, [a, b]] of Object.entries(pairs)) {
    const e = (await tf.max(tf.abs(tf.sub(a, b))).data())[0];
    const s = (await tf.max(tf.abs(b)).data())[0];
    errs[k + "." + shape.join("x")] = e / Math.max(s, 1e-30);
  }
}
console.log(JSON.stringify(errs));
`;

Deno.test({
  name:
    "webgpu WGSL: fused GELU/QuickGELU, LayerNorm and softmax-backward kernels equal the tfjs composition",
  ignore: skip,
  async fn() {
    const errs = await child(["eval", SOURCE], { WEBGPU_CPU_FORWARD: "false" });
    assert.equal(Object.keys(errs).length, 27);
    for (const [k, e] of Object.entries(errs) as [string, number][]) {
      // Row sums in a different order than tfjs's reductions: float32 rounding, ≤ 1e-5.
      assert.ok(e < 1e-5, `${k}: relative error ${e} (tolerance 1e-5)`);
    }
  },
});

Deno.test({
  name: "webgpu WGSL: the fast path with the kernels equals it without (tiny ViT)",
  ignore: skip,
  async fn() {
    const args = ["run", "-A", "tests/helpers/backend_worker.ts", "ops"];
    const [on, off] = [
      await child(args, {}),
      await child(args, { DEER_WGSL: "0" }),
    ];
    // The tolerances tests/webgpu_equivalence.test.ts uses between backends.
    const tolerances: Record<string, number> = {
      features: 1e-5,
      loss: 1e-5,
      stepLosses: 1e-5,
      grads: 1e-4,
      lossGrads: 1e-4,
      factorsA: 1e-4,
      factorsB: 1e-4,
    };
    for (const [key, tol] of Object.entries(tolerances)) {
      const e = jsonRelativeError(on[key], off[key]);
      assert.ok(e < tol, `${key}: with the kernels differs by ${e} (tolerance ${tol})`);
    }
  },
});
