/**
 * Where a webgpu step's time goes: per-kernel dispatch overhead, a large matrix product, a large
 * element-wise kernel, and one ViT LoRA training step under `tf.profile` (kernel count, the
 * kernels' own GPU time from timestamp queries where the adapter has them, and the wall time) —
 * with tfjs-webgpu's defaults and with small kernels kept on the GPU (`WEBGPU_CPU_FORWARD=false`).
 * One JSON line per figure.
 *
 * Run: `DEER_BACKEND=webgpu deno run -A bench/webgpu_probe.ts [b16|tiny] [--batch 8] [--step-only]`
 * (`--step-only`: only the step's figures). Each line names whether the toolkit's WGSL kernels
 * (lib/webgpu_kernels.ts) were on: `DEER_WGSL=0` turns them off.
 * @module
 */
import { parseArgs } from "../lib/cli.ts";
import { backendName, tf } from "../lib/backend.ts";
import { randomVitWeights } from "../lib/model/vit_init.ts";
import { createVitEncoder } from "../lib/model/vit.ts";
import { createRng } from "../lib/rng.ts";
import { TINY_VIT, VIT_B16 } from "./figures.ts";
import { emit, round } from "./measure.ts";
import { loraStepBench, ownKernels, patternSplit } from "./step.ts";

const flags = parseArgs(Deno.args, { string: ["batch"], boolean: ["step-only"] });
const wgsl = Deno.env.get("DEER_WGSL") !== "0";
const which = String(flags._[0] ?? "b16");
const batch = Number(flags.batch ?? (which === "b16" ? 8 : 32));
if (backendName !== "webgpu") throw new Error("run with DEER_BACKEND=webgpu");

/** Wall time per call of `fn`, `reps` calls, all awaited at the end (the queue stays full). */
async function perCall(reps: number, fn: () => tf.Tensor): Promise<number> {
  const warm = fn();
  await warm.data();
  warm.dispose();
  const t0 = performance.now();
  const outs: tf.Tensor[] = [];
  for (let i = 0; i < reps; i++) outs.push(fn());
  await outs[outs.length - 1].data();
  const ms = (performance.now() - t0) / reps;
  tf.dispose(outs);
  return ms;
}

for (const cpuForward of [true, false]) {
  tf.env().set("WEBGPU_CPU_FORWARD", cpuForward);
  if (!flags["step-only"]) await kernelFigures(cpuForward);
  await stepFigures(cpuForward);
}

/** Dispatch overhead, a large product and a large element-wise kernel. */
async function kernelFigures(cpuForward: boolean): Promise<void> {
  const tiny = tf.ones([16]);
  const dispatchMs = await perCall(400, () => tf.add(tiny, 1));
  const a = tf.randomNormal([1576, 768]), b = tf.randomNormal([768, 3072]);
  const matmulMs = await perCall(30, () => tf.matMul(a, b));
  const big = tf.randomNormal([1576, 3072]);
  const addMs = await perCall(50, () => tf.add(big, 1));
  emit({
    name: "webgpu_kernels",
    cpu_forward: cpuForward,
    dispatch_ms: round(dispatchMs, 3),
    matmul_1576x768x3072_ms: round(matmulMs, 3),
    matmul_gflops: round((2 * 1576 * 768 * 3072) / (matmulMs * 1e6)),
    add_1576x3072_ms: round(addMs, 3),
    add_gb_s: round((2 * 4 * 1576 * 3072) / (addMs * 1e6)),
  });
  tf.dispose([tiny, a, b, big]);
}

/** One ViT LoRA step under `tf.profile`. */
async function stepFigures(cpuForward: boolean): Promise<void> {
  const config = which === "b16" ? VIT_B16 : TINY_VIT;
  const encoder = createVitEncoder(config, randomVitWeights(config, createRng(1)));
  const shape = [config.imageSize, config.imageSize, 3];
  const bench = loraStepBench(encoder, patternSplit(batch, shape, 10), {
    classes: 10,
    rank: 8,
    alpha: 8,
  });
  const step = async () => {
    await bench.step();
  };
  await step();
  const t0 = performance.now();
  await step();
  const wall = performance.now() - t0;
  const info = await tf.profile(step);
  const kernels = ownKernels(info.kernels);
  let gpuMs = 0;
  const byKind = new Map<string, number>();
  for (const k of kernels) {
    const ms = Number(await k.kernelTimeMs) || 0;
    gpuMs += ms;
    byKind.set(k.name, (byKind.get(k.name) ?? 0) + ms);
  }
  emit({
    name: `webgpu_step_${which}`,
    cpu_forward: cpuForward,
    wgsl,
    batch,
    wall_ms: round(wall),
    kernels: kernels.length,
    kernel_gpu_ms: round(gpuMs),
    top: [...byKind].sort((p, q) => q[1] - p[1]).slice(0, 8).map(([k, ms]) => `${k} ${round(ms)}`),
  });
  bench.dispose();
  encoder.dispose();
}
