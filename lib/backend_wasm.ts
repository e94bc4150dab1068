/**
 * Registers tfjs' WebAssembly backend (SIMD, single thread) with matrix products that always take
 * its fast path.
 *
 * Why: in tfjs-backend-wasm 4.22 the `BatchMatMul` and `_FusedMatMul` kernels call XNNPACK's GEMM
 * only when neither operand is transposed and both have batch size 1. Every other product falls to
 * a scalar triple loop (`slow_batch_matmul` in `batch_mat_mul_impl.cc`) — ≈ 12× slower on
 * [1024×768] operands — and autodiff builds transposed products for every matmul gradient
 * (`dA = dY·Bᵀ`, `dB = Aᵀ·dY`), while attention multiplies batches of heads. The kernels registered
 * here make the operands explicit instead: a transposed operand is transposed once with the wasm
 * `Transpose` kernel; a batch that shares one right-hand matrix becomes one tall product; any other
 * batch runs matrix by matrix on zero-copy views into the operands. Every product then runs in
 * XNNPACK's GEMM: the same arithmetic as the stock fast path on the explicit operands, within
 * float32 rounding of the cpu backend (tests/backend_wasm.test.ts). `bench/wasm_matmul.bench.ts`
 * and `bench/wasm_vit_step.bench.ts` measure the gain (≈ 3× on a tiny ViT LoRA step).
 *
 * The stock slow loop also adds a fused `_FusedMatMul` bias wrongly (every row after the first gets
 * the bias' last element); the replacement adds it per column, as the cpu backend does. Fused
 * products with `prelu`, a bias of another shape, non-float32 operands or a batch broadcast other
 * than "equal or one side 1" keep the stock kernels.
 *
 * Known gaps of the wasm backend that this module does not fill:
 * - the gradient of `gather` needs `UnsortedSegmentSum`, which the wasm backend lacks: use
 *   `slice` or one-hot matmuls in differentiable code;
 * - threads do not work in Deno (and give nothing on 2 vCPUs), so this is one core.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { installWasmBackend } from "./backend_wasm.ts";
 * await installWasmBackend();
 * await tf.setBackend("wasm");
 * tf.matMul(tf.ones([64, 32]), tf.ones([16, 32]), false, true).print(); // XNNPACK, not the loop
 * ```
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { BackendWasm } from "@tensorflow/tfjs-backend-wasm";
import "@tensorflow/tfjs-backend-wasm";

type TensorInfo = tf.TensorInfo;
type KernelArgs = Parameters<tf.KernelFunc>[0];
/** Emscripten's `cwrap`, which tfjs-backend-wasm's module type leaves out. */
type Cwrap = (name: string, returns: null, args: string[]) => unknown;

/** The C entry points of the wasm module, as `cwrap` exposes them (booleans pass as 0/1). */
type WasmMatMul = (
  aId: number,
  aShape: Uint8Array,
  aRank: number,
  bId: number,
  bShape: Uint8Array,
  bRank: number,
  transposeA: number,
  transposeB: number,
  outId: number,
) => void;
type WasmFusedMatMul = (
  aId: number,
  aShape: Uint8Array,
  aRank: number,
  bId: number,
  bShape: Uint8Array,
  bRank: number,
  transposeA: number,
  transposeB: number,
  activation: number,
  biasId: number,
  preluWeightsId: number,
  leakyreluAlpha: number,
  outId: number,
) => void;

/** One GEMM `out[rows×n] = a[rows×k] · b[k×n]` on wasm tensor ids, row-major, no transposes. */
type Gemm = (aId: number, rows: number, k: number, bId: number, n: number, outId: number) => void;

// `FusableActivation` in tfjs-backend-wasm's cc/fusable_activations.h. Activations applied element
// by element are safe to run per batch; `prelu` (weights broadcast over the output) is left to the
// stock kernel.
const FUSABLE_ACTIVATIONS: Record<string, number> = {
  linear: 0,
  relu: 1,
  relu6: 2,
  leakyrelu: 4,
  sigmoid: 5,
  elu: 6,
};

const stock = new Map<string, tf.KernelConfig>();
const entryPoints = new WeakMap<BackendWasm, { matMul: WasmMatMul; fused: WasmFusedMatMul }>();

function shapeBytes(shape: number[]): Uint8Array {
  return new Uint8Array(new Int32Array(shape).buffer);
}

function wasmId(backend: BackendWasm, t: TensorInfo): number {
  return backend.dataIdMap.get(t.dataId)!.id;
}

/**
 * A tensor id that aliases `size` elements of `parent` from element `start` — no copy. It must be
 * released with {@link releaseView}, never `disposeData` (which would free the parent's memory).
 */
function view(backend: BackendWasm, parent: TensorInfo, start: number, size: number): TensorInfo {
  const offset = backend.dataIdMap.get(parent.dataId)!.memoryOffset + start * 4;
  return backend.makeOutput([size], "float32", offset);
}

function releaseView(backend: BackendWasm, v: TensorInfo): void {
  // Unregisters the id (which also drops any XNNPACK operator cached on it) but frees nothing.
  backend.wasm.tfjs.disposeData(wasmId(backend, v));
  backend.dataIdMap.delete(v.dataId);
}

/** `x` viewed as `[batch, rows, cols]`, transposed to a new `[batch, cols, rows]` tensor. */
function transposeLast2(
  backend: BackendWasm,
  x: TensorInfo,
  batch: number,
  rows: number,
  cols: number,
): TensorInfo {
  const transpose = tf.getKernel("Transpose", "wasm")!.kernelFunc;
  return transpose({
    inputs: { x: { dataId: x.dataId, shape: [batch, rows, cols], dtype: x.dtype } },
    backend,
    attrs: { perm: [0, 2, 1] },
  }) as TensorInfo;
}

/**
 * `a · b` (with the transposes asked for) as GEMMs on the fast path, or `null` when the shapes are
 * outside what this handles (the stock kernel then runs, and reports any shape error itself).
 */
function explicitProduct(
  backend: BackendWasm,
  a: TensorInfo,
  b: TensorInfo,
  transposeA: boolean,
  transposeB: boolean,
  gemm: Gemm,
): TensorInfo | null {
  if (a.dtype !== "float32" || b.dtype !== "float32") return null;
  if (a.shape.length < 2 || b.shape.length < 2) return null;
  const [aRows, aCols] = a.shape.slice(-2);
  const [bRows, bCols] = b.shape.slice(-2);
  const batchA = tf.util.sizeFromShape(a.shape.slice(0, -2));
  const batchB = tf.util.sizeFromShape(b.shape.slice(0, -2));
  const m = transposeA ? aCols : aRows;
  const k = transposeA ? aRows : aCols;
  const n = transposeB ? bRows : bCols;
  if ((transposeB ? bCols : bRows) !== k) return null;
  if (m * n * k === 0) return null;
  // Batches pair up one to one, or one side is shared; other broadcasts keep the stock kernel.
  if (batchA !== batchB && batchA !== 1 && batchB !== 1) return null;
  const outBatchDims = tf.broadcast_util.assertAndGetBroadcastShape(
    a.shape.slice(0, -2),
    b.shape.slice(0, -2),
  );
  const batch = Math.max(batchA, batchB);

  const temps: TensorInfo[] = [];
  const views: TensorInfo[] = [];
  try {
    // Row-major operands: A as [batchA, m, k], B as [batchB, k, n].
    const aRowMajor = transposeA ? transposeLast2(backend, a, batchA, k, m) : a;
    if (aRowMajor !== a) temps.push(aRowMajor);
    const bRowMajor = transposeB ? transposeLast2(backend, b, batchB, n, k) : b;
    if (bRowMajor !== b) temps.push(bRowMajor);
    const out = backend.makeOutput([batch, m, n], "float32");
    if (batchB === 1) {
      // One right-hand matrix for all batches: stack A's batches into one tall product.
      gemm(
        wasmId(backend, aRowMajor),
        batchA * m,
        k,
        wasmId(backend, bRowMajor),
        n,
        wasmId(backend, out),
      );
    } else {
      for (let i = 0; i < batch; i++) {
        const aI = batchA === 1 ? aRowMajor : view(backend, aRowMajor, i * m * k, m * k);
        if (aI !== aRowMajor) views.push(aI);
        const bI = view(backend, bRowMajor, i * k * n, k * n);
        const outI = view(backend, out, i * m * n, m * n);
        views.push(bI, outI);
        gemm(wasmId(backend, aI), m, k, wasmId(backend, bI), n, wasmId(backend, outI));
        for (const v of views.splice(0)) releaseView(backend, v);
      }
    }
    // Like the stock kernel: the data stays registered as [batch, m, n]; the engine sees outShape.
    return { dataId: out.dataId, shape: [...outBatchDims, m, n], dtype: "float32" };
  } finally {
    for (const v of views) releaseView(backend, v);
    for (const t of temps) backend.disposeData(t.dataId);
  }
}

function setupEntryPoints(backend: BackendWasm): void {
  if (entryPoints.has(backend)) return;
  const cwrap = (backend.wasm as unknown as { cwrap: Cwrap }).cwrap;
  const n = "number";
  const arr = "array";
  entryPoints.set(backend, {
    matMul: cwrap(tf.BatchMatMul, null, [n, arr, n, n, arr, n, n, n, n]) as WasmMatMul,
    fused: cwrap(tf._FusedMatMul, null, [
      n,
      arr,
      n,
      n,
      arr,
      n,
      n,
      n,
      n,
      n,
      n,
      n,
      n,
    ]) as WasmFusedMatMul,
  });
}

function batchMatMul(args: KernelArgs): TensorInfo {
  const backend = args.backend as BackendWasm;
  const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
  const { transposeA, transposeB } = args.attrs as unknown as tf.BatchMatMulAttrs;
  const { matMul } = entryPoints.get(backend)!;
  const gemm: Gemm = (aId, rows, k, bId, n, outId) =>
    matMul(aId, shapeBytes([1, rows, k]), 3, bId, shapeBytes([1, k, n]), 3, 0, 0, outId);
  return explicitProduct(backend, a, b, transposeA, transposeB, gemm) ??
    (stock.get(tf.BatchMatMul)!.kernelFunc(args) as TensorInfo);
}

function fusedMatMul(args: KernelArgs): TensorInfo {
  const backend = args.backend as BackendWasm;
  const { a, b, bias } = args.inputs as { a: TensorInfo; b: TensorInfo; bias?: TensorInfo };
  const { transposeA, transposeB, activation, leakyreluAlpha } = args
    .attrs as unknown as tf._FusedMatMulAttrs;
  const fallback = () => stock.get(tf._FusedMatMul)!.kernelFunc(args) as TensorInfo;
  const code = FUSABLE_ACTIVATIONS[activation];
  const n = transposeB ? b.shape[b.shape.length - 2] : b.shape[b.shape.length - 1];
  // XNNPACK reads the bias as one value per output column.
  if (code === undefined || (bias != null && (bias.shape.length !== 1 || bias.shape[0] !== n))) {
    return fallback();
  }
  const biasId = bias == null ? 0 : wasmId(backend, bias);
  const { fused } = entryPoints.get(backend)!;
  const gemm: Gemm = (aId, rows, k, bId, cols, outId) =>
    fused(
      aId,
      shapeBytes([1, rows, k]),
      3,
      bId,
      shapeBytes([1, k, cols]),
      3,
      0,
      0,
      code,
      biasId,
      0,
      leakyreluAlpha ?? 0,
      outId,
    );
  return explicitProduct(backend, a, b, transposeA, transposeB, gemm) ?? fallback();
}

const explicitKernels: tf.KernelConfig[] = [
  { kernelName: tf.BatchMatMul, kernelFunc: batchMatMul },
  { kernelName: tf._FusedMatMul, kernelFunc: fusedMatMul },
].map(({ kernelName, kernelFunc }) => ({
  kernelName,
  backendName: "wasm",
  kernelFunc: kernelFunc as unknown as tf.KernelFunc,
  setupFunc: (backend: unknown) => {
    stock.get(kernelName)?.setupFunc?.(backend as BackendWasm);
    setupEntryPoints(backend as BackendWasm);
  },
}));

/**
 * Chooses the matrix-product kernels of the wasm backend: `true` (the default after
 * {@link installWasmBackend}) for the explicit fast-path kernels of this module, `false` for tfjs'
 * stock ones — for benchmarks and tests. Takes effect from the next product.
 */
export function useExplicitMatMul(enabled: boolean): void {
  if (stock.size === 0) {
    for (const name of [tf.BatchMatMul, tf._FusedMatMul]) {
      const config = tf.getKernel(name, "wasm");
      if (config === undefined) throw new Error(`tfjs-backend-wasm registers no ${name} kernel`);
      stock.set(name, config);
    }
  }
  for (const config of enabled ? explicitKernels : [...stock.values()]) {
    tf.unregisterKernel(config.kernelName, "wasm");
    tf.registerKernel(config);
  }
  // Kernels registered after the backend started have not had their setup run yet.
  if (enabled && tf.findBackend("wasm") != null) {
    for (const config of explicitKernels) config.setupFunc!(tf.findBackend("wasm")!);
  }
}

/** Makes the `wasm` backend available to `tf.setBackend`, with the explicit matmul kernels. */
export function installWasmBackend(): Promise<void> {
  useExplicitMatMul(true);
  return Promise.resolve();
}
