/**
 * Where a webgpu step's time goes: per-kernel dispatch overhead, a large matrix product, a large
 * element-wise kernel, and one ViT LoRA training step under `tf.profile` (kernel count, the
 * kernels' own GPU time from timestamp queries where the adapter has them, and the wall time) —
 * with tfjs-webgpu's defaults and with small kernels kept on the GPU (`WEBGPU_CPU_FORWARD=false`);
 * and the host's share of that step (`webgpu_host_*`: the time to record its dispatches before
 * anything reaches the GPU, and the wait for the GPU at the loss read). One JSON line per figure.
 *
 * Run: `DEER_BACKEND=webgpu deno run -A bench/webgpu_probe.ts [b16|tiny] [--batch 8] [--step-only]`
 * (`--step-only`: only the step's figures; `--reps N`: the large product's repetitions, default 30
 * — a dry run on lavapipe takes 2, as each one takes a second there). Each line names whether the toolkit's WGSL kernels
 * (lib/webgpu_kernels.ts) were on: `DEER_WGSL=0` turns them off.
 *
 * `matmul` mode: the ViT-B/16 step's matrix products at `--batch` (default 8; 197 tokens, width
 * 768, MLP 3,072, 12 heads), forward and transposed (backward) variants, as `tf.matMul` and —
 * unless `DEER_WGSL=0` — as `DeerWgsl_MatMul` with each tile (`MATMUL_TILES`: 64×64, 128×64,
 * 128×128) and 128×128 without its register prefetch (`…_128x128_noprefetch`): per shape and
 * implementation the median over `--runs` (3) of the wall time per product of `--reps` (10)
 * products dispatched back to back and read back once at the end, GFLOP/s from it, and the
 * kernels' own GPU time of one product where the adapter has timestamp queries. `--only
 * qkv,fc1,…` picks shapes. `WEBGPU_CPU_FORWARD` is off (everything on the adapter).
 * @module
 */
import { parseCommandArgs, UsageError, usageExit } from "../lib/cli.ts";
import { backendName, tf } from "../lib/backend.ts";
import { randomVitWeights } from "../lib/model/vit_init.ts";
import { createVitEncoder } from "../lib/model/vit.ts";
import { createRng } from "../lib/rng.ts";
import { TINY_VIT, VIT_B16 } from "./figures.ts";
import { emit, median, round } from "./measure.ts";
import { loraStepBench, ownKernels, patternSplit } from "./step.ts";
import { MATMUL_TILES, wgslMatMul } from "../lib/webgpu_kernels.ts";

const USAGE =
  `Usage: DEER_BACKEND=webgpu deno run -A bench/webgpu_probe.ts [b16|tiny|matmul] [flags]
  b16, tiny   where a LoRA step's time goes: dispatch cost, a large product, a large element-wise
              kernel, the step under tf.profile (kernels, dispatches, GPU time) and the host's share
              [--batch 8 (tiny: 32)] [--step-only] [--reps 30]
  matmul      the step's products as tf.matMul and as DeerWgsl_MatMul with each tile, GFLOP/s
              [--batch 8] [--reps 10] [--runs 3] [--only NAME,…]
  DEER_WGSL=0 turns the toolkit's WGSL kernels off.`;
const flags = parseCommandArgs("bench/webgpu_probe.ts", USAGE, Deno.args, {
  string: ["batch", "reps", "runs", "only"],
  boolean: ["step-only"],
}, (f) => {
  if (f._.length > 1 || !["b16", "tiny", "matmul"].includes(f._[0] ?? "b16")) {
    throw new UsageError(`"${f._.join(" ")}": give one mode, b16 (the default), tiny or matmul`);
  }
});
const wgsl = Deno.env.get("DEER_WGSL") !== "0";
const which = String(flags._[0] ?? "b16");
const batch = Number(flags.batch ?? (which === "tiny" ? 32 : 8));
if (backendName !== "webgpu") {
  usageExit("bench/webgpu_probe.ts", `the backend is ${backendName}: run with DEER_BACKEND=webgpu`);
}
if (which === "matmul") {
  await matmulFigures();
  Deno.exit(0);
}

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
  const matmulMs = await perCall(Number(flags.reps ?? 30), () => tf.matMul(a, b));
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

/**
 * The GPU dispatches `run` makes, counted where tfjs-webgpu records each one
 * (`recordAndSubmit`): kernels that only relabel a buffer (Reshape, Identity) or that run on the
 * CPU backend (`WEBGPU_CPU_FORWARD`) dispatch nothing, so `tf.profile`'s kernel list overcounts.
 * `top`: the programs that dispatch most.
 */
async function countDispatches(
  run: () => Promise<void>,
): Promise<{ total: number; top: string[] }> {
  const byProgram = new Map<string, number>();
  let total = 0;
  const undo = intercept(
    webgpuBackend(),
    "recordAndSubmit",
    (stock) =>
      function (this: unknown, ...args: unknown[]) {
        total++;
        const name = (args[0] as object).constructor.name;
        byProgram.set(name, (byProgram.get(name) ?? 0) + 1);
        return stock.apply(this, args);
      },
  );
  try {
    await run();
  } finally {
    undo();
  }
  const top = [...byProgram].sort((p, q) => q[1] - p[1]).slice(0, 12).map(([k, n]) => `${k} ${n}`);
  return { total, top };
}

type Method = (...args: unknown[]) => unknown;

/** The active backend (webgpu) and its queue, as objects whose methods the probe intercepts. */
function webgpuBackend(): Record<string, Method> & { queue: Record<string, Method> } {
  return tf.backend() as unknown as Record<string, Method> & { queue: Record<string, Method> };
}

/**
 * Replaces the method `target[key]` by `wrap(original)` and returns the undo, which puts the
 * original back.
 */
function intercept(
  target: Record<string, Method>,
  key: string,
  wrap: (stock: Method) => Method,
): () => void {
  const stock = target[key];
  if (typeof stock !== "function") throw new Error(`tfjs-webgpu has no ${key} to measure`);
  target[key] = wrap(stock);
  return () => {
    target[key] = stock;
  };
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
  const counted = await countDispatches(step);
  const info = await tf.profile(step);
  const kernels = ownKernels(info.kernels);
  let gpuMs = 0;
  const byKind = new Map<string, number>();
  const countByKind = new Map<string, number>();
  for (const k of kernels) {
    const ms = Number(await k.kernelTimeMs) || 0;
    gpuMs += ms;
    byKind.set(k.name, (byKind.get(k.name) ?? 0) + ms);
    countByKind.set(k.name, (countByKind.get(k.name) ?? 0) + 1);
  }
  emit({
    name: `webgpu_step_${which}`,
    cpu_forward: cpuForward,
    wgsl,
    batch,
    wall_ms: round(wall),
    kernels: kernels.length,
    dispatches: counted.total,
    kernel_gpu_ms: round(gpuMs),
    top: [...byKind].sort((p, q) => q[1] - p[1]).slice(0, 8).map(([k, ms]) => `${k} ${round(ms)}`),
    // Where the dispatches are (each costs host time whatever its size): kinds by count.
    most: [...countByKind].sort((p, q) => q[1] - p[1]).slice(0, 10).map(([k, n]) => `${k} ${n}`),
    programs: counted.top,
  });
  emit({
    name: `webgpu_host_${which}`,
    cpu_forward: cpuForward,
    wgsl,
    batch,
    ...await hostShare(step),
  });
  bench.dispose();
  encoder.dispose();
}

/**
 * The host's share of one step. With every dispatch held in one command buffer
 * (`WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE` raised for the measurement), nothing reaches the GPU
 * until the step reads its loss, so the time until that read (`host_record_ms`) is the host's
 * alone: JavaScript, tfjs' bookkeeping and Deno's WebGPU calls, including the batch's upload.
 * `record_and_submit_ms` is the part inside tfjs-webgpu's `recordAndSubmit` (uniforms, bind
 * group, pipeline, dispatch), `write_buffer_ms` the part in `GPUQueue.writeBuffer` (the
 * uniforms, one per dispatch). Holding submission back makes each `writeBuffer` dearer (in Deno
 * 2.9.6 on this project's CPU: 20–70 µs with thousands pending, 4–6 µs with tfjs' usual
 * submission every 15 dispatches), so `host_record_ms` is an upper bound, by about
 * `write_buffer_ms`. The read then submits everything and waits: `read_wait_ms`, the
 * GPU's time for the whole step plus the copy back. In Deno 2.9.6 that wait blocks the
 * JavaScript thread (its `mapAsync` polls the device with `Maintain::wait`), so host and GPU work
 * overlap only within a step, through tfjs' submissions every 15 dispatches.
 */
async function hostShare(step: () => Promise<void>): Promise<Record<string, number>> {
  const backend = webgpuBackend();
  const t = { record: 0, dispatches: 0, write: 0, writes: 0, readAt: 0 };
  const timed = (target: Record<string, Method>, key: string, add: (ms: number) => void) =>
    intercept(target, key, (stock) =>
      function (this: unknown, ...args: unknown[]) {
        const t0 = performance.now();
        try {
          return stock.apply(this, args);
        } finally {
          add(performance.now() - t0);
        }
      });
  const flag = "WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE";
  const submitBatch = tf.env().get(flag);
  const restore = [
    timed(backend, "recordAndSubmit", (ms) => (t.record += ms, t.dispatches++)),
    timed(backend.queue, "writeBuffer", (ms) => (t.write += ms, t.writes++)),
    intercept(backend, "getBufferData", (stock) =>
      function (this: unknown, ...args: unknown[]) {
        if (t.readAt === 0) t.readAt = performance.now();
        return stock.apply(this, args);
      }),
  ];
  tf.env().set(flag, 1e9);
  const t0 = performance.now();
  try {
    await step();
  } finally {
    tf.env().set(flag, submitBatch);
    for (const undo of restore) undo();
  }
  const end = performance.now();
  const recordMs = (t.readAt || end) - t0;
  return {
    dispatches: t.dispatches,
    host_record_ms: round(recordMs),
    host_us_per_dispatch: round((1000 * recordMs) / Math.max(t.dispatches, 1)),
    record_and_submit_ms: round(t.record),
    write_buffer_ms: round(t.write),
    write_buffer_calls: t.writes,
    read_wait_ms: round(end - (t.readAt || end)),
  };
}

/**
 * One product of the ViT-B/16 step: a [..., M, K]·[..., K, N] (stored transposed where `ta`,
 * `tb`), as `mm` in lib/model/vit_fast.ts calls it.
 */
interface ProductShape {
  name: string;
  a: number[];
  b: number[];
  ta: boolean;
  tb: boolean;
}

/** The products of a ViT-B/16 LoRA step at `n` images (rows = n·197). */
function b16Products(n: number): ProductShape[] {
  const rows = n * 197, w = 768, mlp = 3072, heads = 12;
  return [
    // Forward: q|k|v as one product and per head (h broadcast over 3·heads), the MLP.
    { name: "qkv", a: [rows, w], b: [w, 3 * w], ta: false, tb: false },
    { name: "qkv_heads", a: [rows, w], b: [3 * heads, w, 64], ta: false, tb: false },
    { name: "scores", a: [heads, n, 197, 64], b: [heads, n, 197, 64], ta: false, tb: true },
    { name: "attend", a: [heads, n, 197, 197], b: [heads, n, 197, 64], ta: false, tb: false },
    { name: "fc1", a: [rows, w], b: [w, mlp], ta: false, tb: false },
    { name: "fc2", a: [rows, mlp], b: [mlp, w], ta: false, tb: false },
    // Backward: products with a transposed operand.
    { name: "fc2_grad", a: [rows, w], b: [mlp, w], ta: false, tb: true },
    { name: "fc1_grad", a: [rows, mlp], b: [w, mlp], ta: false, tb: true },
    { name: "dv", a: [heads, n, 197, 197], b: [heads, n, 197, 64], ta: true, tb: false },
    { name: "weight_grad", a: [rows, w], b: [rows, mlp], ta: true, tb: false },
  ];
}

/** Multiply-adds ×2 of one product. */
function flops(p: ProductShape, out: tf.Tensor): number {
  const k = p.ta ? p.a[p.a.length - 2] : p.a[p.a.length - 1];
  return 2 * out.size * k;
}

/** tf.matMul against DeerWgsl_MatMul on the ViT-B/16 step's products. */
async function matmulFigures(): Promise<void> {
  tf.env().set("WEBGPU_CPU_FORWARD", false);
  const reps = Number(flags.reps ?? 10), runs = Number(flags.runs ?? 3);
  const only = flags.only ? String(flags.only).split(",") : null;
  const impls: [string, (a: tf.Tensor, b: tf.Tensor, p: ProductShape) => tf.Tensor][] = [
    ["tf.matMul", (a, b, p) => tf.matMul(a, b, p.ta, p.tb)],
  ];
  if (wgsl) {
    for (const tile of MATMUL_TILES) {
      impls.push([
        `DeerWgsl_MatMul_${tile}`,
        (a, b, p) => wgslMatMul(a, b, p.ta, p.tb, tile, true),
      ]);
    }
    // 128×128 without its register prefetch, for the A/B comparison.
    impls.push([
      "DeerWgsl_MatMul_128x128_noprefetch",
      (a, b, p) => wgslMatMul(a, b, p.ta, p.tb, "128x128", false),
    ]);
  }
  for (const p of b16Products(batch)) {
    if (only && !only.includes(p.name)) continue;
    const a = tf.randomNormal(p.a, 0, 1, "float32", 1),
      b = tf.randomNormal(p.b, 0, 1, "float32", 2);
    for (const [impl, fn] of impls) {
      const warm = fn(a, b, p);
      await warm.data();
      const work = flops(p, warm);
      const shape = warm.shape;
      warm.dispose();
      const times: number[] = [];
      for (let r = 0; r < runs; r++) {
        const t0 = performance.now();
        const outs: tf.Tensor[] = [];
        for (let i = 0; i < reps; i++) outs.push(fn(a, b, p));
        await outs[outs.length - 1].data();
        times.push((performance.now() - t0) / reps);
        tf.dispose(outs);
      }
      const info = await tf.profile(async () => {
        const out = fn(a, b, p);
        await out.data();
        out.dispose();
      });
      let kernelMs = 0;
      for (const k of ownKernels(info.kernels)) kernelMs += Number(await k.kernelTimeMs) || 0;
      const ms = median(times);
      emit({
        name: "webgpu_matmul",
        product: p.name,
        wgsl,
        impl,
        batch,
        a: p.a,
        b: p.b,
        ta: p.ta,
        tb: p.tb,
        out: shape,
        ms: round(ms, 3),
        gflops: round(work / (ms * 1e6)),
        kernel_ms: round(kernelMs, 3),
        kernel_gflops: kernelMs > 0 ? round(work / (kernelMs * 1e6)) : null,
        runs,
        reps,
      });
    }
    tf.dispose([a, b]);
  }
}
