/**
 * The WebGPU side of the backend choice: what adapter the runtime offers (`navigator.gpu`, built
 * into Deno), and tfjs' `webgpu` backend on it.
 *
 * A real GPU is any adapter that is not a fallback adapter: a software rasteriser such as Mesa's
 * lavapipe (`llvmpipe`) reports `isFallbackAdapter: true` and runs kernels on the CPU, far slower
 * than libtensorflow, so the toolkit picks `webgpu` on its own only for a real GPU and uses a
 * fallback adapter only when `DEER_BACKEND=webgpu` asks for it (tests, CI).
 *
 * Everything the toolkit reads back from a tensor goes through `await t.data()`: tfjs-webgpu's
 * synchronous `dataSync()` reads through a 2D canvas, which Deno lacks, and fails for any tensor a
 * GPU kernel produced.
 *
 * @example
 * ```ts
 * const adapter = await probeWebGpu();
 * if (adapter && !adapter.isFallback) console.log(describeAdapter(adapter));
 * ```
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/** What the toolkit needs to know about a WebGPU adapter. */
export interface WebGpuAdapterSummary {
  vendor: string;
  architecture: string;
  description: string;
  /** A software adapter (lavapipe, SwiftShader, WARP): correct, but slower than the CPU path. */
  isFallback: boolean;
  /** Largest storage buffer one kernel may bind, in bytes (tfjs binds every tensor whole). */
  maxStorageBufferBindingSize: number;
  /** Largest buffer the device may allocate, in bytes. */
  maxBufferSize: number;
}

let probed: Promise<WebGpuAdapterSummary | null> | undefined;

/**
 * Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid" on every adapter request when the
 * variable is unset; a private (0700) directory silences them. An existing value is kept.
 */
function quietMesa(): void {
  if (Deno.env.get("XDG_RUNTIME_DIR") !== undefined) return;
  try {
    Deno.env.set("XDG_RUNTIME_DIR", Deno.makeTempDirSync({ prefix: "deer-xdg-" }));
  } catch {
    // Only a warning is at stake.
  }
}

/**
 * The high-performance adapter `navigator.gpu` offers, or `null` when there is none (no Vulkan,
 * Metal, D3D12 or GL driver, or a runtime without WebGPU). Asked once per process.
 */
export function probeWebGpu(): Promise<WebGpuAdapterSummary | null> {
  probed ??= (async () => {
    const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
    if (!gpu) return null;
    quietMesa();
    let adapter: GPUAdapter | null;
    try {
      adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
    } catch {
      return null;
    }
    if (!adapter) return null;
    const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
    // Deno 2.9 reports the flag on `info` (the current spec); older runtimes on the adapter.
    const fallback = info.isFallbackAdapter ??
      (adapter as GPUAdapter & { isFallbackAdapter?: boolean }).isFallbackAdapter ?? false;
    return {
      vendor: info.vendor,
      architecture: info.architecture,
      description: info.description,
      isFallback: fallback,
      maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
      maxBufferSize: adapter.limits.maxBufferSize,
    };
  })();
  return probed;
}

const PROBE_SOURCE = `
const a = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
const info = a?.info;
console.log(JSON.stringify(a ? {
  vendor: info.vendor, architecture: info.architecture, description: info.description,
  isFallback: info.isFallbackAdapter ?? a.isFallbackAdapter ?? false,
  maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize,
  maxBufferSize: a.limits.maxBufferSize,
} : null));
`;

/** Device nodes a GPU driver exposes on Linux (NVIDIA, DRM render nodes, AMD compute, WSL). */
function linuxGpuNodes(): boolean {
  const exists = (p: string) => {
    try {
      Deno.statSync(p);
      return true;
    } catch {
      return false;
    }
  };
  if (exists("/dev/nvidia0") || exists("/dev/kfd") || exists("/dev/dxg")) return true;
  try {
    for (const e of Deno.readDirSync("/dev/dri")) if (e.name.startsWith("renderD")) return true;
  } catch {
    // no DRM devices
  }
  return false;
}

/**
 * The adapter {@link probeWebGpu} would find, asked in a child process so that this one loads no
 * GPU driver. Why: enumerating adapters loads every Vulkan driver, Mesa's lavapipe among them, and
 * lavapipe's LLVM in the same process as libtensorflow makes the process crash (segmentation
 * fault) when tfjs-node loads afterwards. `null` when there is no adapter (or no runtime support).
 */
export async function probeInChild(): Promise<WebGpuAdapterSummary | null> {
  try {
    const env: Record<string, string> = {};
    if (Deno.env.get("XDG_RUNTIME_DIR") === undefined) {
      env.XDG_RUNTIME_DIR = await Deno.makeTempDir({ prefix: "deer-xdg-" });
    }
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-config", PROBE_SOURCE],
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    if (!out.success) return null;
    return JSON.parse(new TextDecoder().decode(out.stdout).trim() || "null");
  } catch {
    return null;
  }
}

/**
 * Whether the machine has a real (non-fallback) GPU adapter, probed in a child process
 * ({@link probeInChild}). On Linux, a machine without GPU device nodes (`/dev/nvidia0`,
 * `/dev/dri/renderD*`, `/dev/kfd`, WSL's `/dev/dxg`) has none and is not probed (no start-up
 * cost).
 */
export async function realGpuInChild(): Promise<boolean> {
  if (Deno.build.os === "linux" && !linuxGpuNodes()) return false;
  const adapter = await probeInChild();
  return adapter !== null && !adapter.isFallback;
}

function mib(bytes: number): string {
  return bytes >= 2 ** 30
    ? `${(bytes / 2 ** 30).toFixed(1)} GiB`
    : `${Math.round(bytes / 2 ** 20)} MiB`;
}

/** One line for the backend banner: the adapter and the limits that bound a batch. */
export function describeAdapter(a: WebGpuAdapterSummary): string {
  const name = a.description || a.architecture || "unnamed adapter";
  return `${name}, vendor ${a.vendor || "unknown"}${a.isFallback ? ", fallback adapter" : ""}; ` +
    `maxStorageBufferBindingSize ${mib(a.maxStorageBufferBindingSize)}, ` +
    `maxBufferSize ${mib(a.maxBufferSize)}`;
}

let installed: WebGpuAdapterSummary | null = null;

/** The adapter {@link installWebGpuBackend} registered the backend on, or `null` before it did. */
export function installedWebGpuAdapter(): WebGpuAdapterSummary | null {
  return installed;
}

/**
 * Registers tfjs' `webgpu` backend (the caller then selects it). Throws, saying what is missing,
 * when the runtime offers no adapter.
 */
export async function installWebGpuBackend(): Promise<WebGpuAdapterSummary> {
  const adapter = await probeWebGpu();
  installed = adapter;
  if (!adapter) {
    throw new Error(
      "no WebGPU adapter: navigator.gpu.requestAdapter() returned none (install a Vulkan driver, " +
        "e.g. the GPU vendor's, or Mesa's lavapipe from `mesa-vulkan-drivers` for a software one)",
    );
  }
  await import("@tensorflow/tfjs-backend-webgpu");
  registerWebGpuFactory();
  avoidSplitK();
  const submitBatch = submitBatchFromEnv();
  if (submitBatch !== undefined) tf.env().set("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE", submitBatch);
  return adapter;
}

/** The largest `DEER_WEBGPU_SUBMIT_BATCH` accepted (one step dispatches a few thousand kernels). */
export const MAX_SUBMIT_BATCH = 100_000;

/**
 * `DEER_WEBGPU_SUBMIT_BATCH`: how many kernel dispatches tfjs-webgpu records into one command
 * buffer before it submits it to the GPU queue (its flag `WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE`,
 * 15 by default). Fewer, larger submissions cost the host less per dispatch; more, smaller ones
 * start the GPU sooner, and the buffers of tensors disposed in between are reused only after a
 * submission. `undefined` when unset (tfjs' default stays); throws, naming the variable and what it
 * takes, for anything but a whole number from 1 to {@link MAX_SUBMIT_BATCH}.
 */
export function submitBatchFromEnv(): number | undefined {
  const raw = Deno.env.get("DEER_WEBGPU_SUBMIT_BATCH");
  if (raw === undefined || raw.trim() === "") return undefined;
  const n = Number(raw.trim());
  if (!Number.isInteger(n) || n < 1 || n > MAX_SUBMIT_BATCH) {
    throw new Error(
      `DEER_WEBGPU_SUBMIT_BATCH=${JSON.stringify(raw)}: expected a whole number of dispatches ` +
        `per command-buffer submission from 1 to ${MAX_SUBMIT_BATCH} (tfjs-webgpu's default is ` +
        `15); unset it to keep the default`,
    );
  }
  return n;
}

/**
 * The storage buffers per shader stage the device is asked for, at most (or the adapter's limit,
 * if lower; WebGPU's default, which tfjs-webgpu 4.22 keeps, is 8).
 */
export const STORAGE_BUFFERS_WANTED = 32;

/**
 * Registers the toolkit's own factory for the `webgpu` backend in place of tfjs-webgpu's, so that
 * the device asks for up to {@link STORAGE_BUFFERS_WANTED} storage buffers per shader stage
 * (lavapipe offers 32), where tfjs asks for none and gets WebGPU's default of 8. tfjs'
 * concatenation binds one buffer per input and the output, so it cut a concatenation of more
 * than `limit − 1` tensors into several (a `tf.stack` of ViT-B/16's 12 per-block gradients took 3
 * dispatches instead of 1), and the fast path's kernels that read every block's tensor from its
 * own binding need the room. Otherwise the device is asked for what tfjs-webgpu 4.22's own factory
 * asks for: the adapter by tfjs' power preference flag, the features `timestamp-query` and
 * `bgra8unorm-storage` where offered, and the adapter's values of the same six limits. Nothing
 * global is patched: other code that requests a device gets WebGPU's defaults. Left alone once
 * the backend exists.
 */
function registerWebGpuFactory(): void {
  const registry = (tf.engine() as unknown as { registry: Record<string, unknown> }).registry;
  const current = tf.findBackendFactory("webgpu") as
    | ((() => Promise<tf.KernelBackend>) & { deerStorageBuffers?: boolean })
    | null;
  if (!current || current.deerStorageBuffers || "webgpu" in registry) return;
  const factory = async (): Promise<tf.KernelBackend> => {
    const { WebGPUBackend } = await import("@tensorflow/tfjs-backend-webgpu");
    const adapter = await navigator.gpu.requestAdapter({
      powerPreference: tf.env().getBool("WEBGPU_USE_LOW_POWER_GPU")
        ? "low-power"
        : "high-performance",
    });
    if (!adapter) throw new Error("navigator.gpu.requestAdapter() returned no adapter");
    const features = (["timestamp-query", "bgra8unorm-storage"] as GPUFeatureName[])
      .filter((f) => adapter.features.has(f));
    const l = adapter.limits;
    const device = await adapter.requestDevice({
      requiredFeatures: features,
      requiredLimits: {
        maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
        maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
        maxStorageBuffersPerShaderStage: Math.min(
          l.maxStorageBuffersPerShaderStage,
          STORAGE_BUFFERS_WANTED,
        ),
      },
    });
    return new WebGPUBackend(device, adapter.info);
  };
  tf.removeBackend("webgpu");
  tf.registerBackend("webgpu", Object.assign(factory, { deerStorageBuffers: true }), 3);
}

/** tfjs-webgpu's `MatMulProgramType` values used here. */
const SPLIT_K = 1, SMALL_OUTPUT = 2;

/**
 * tfjs-webgpu 4.22 multiplies a single product with a long inner dimension (K ≥ 2000) and an output
 * of few 32×32 tiles with `MatMulSplitKProgram`, which sums partial products with float atomics —
 * and returned wrong values here (lavapipe: errors of ~200 on sums of size ~45, for
 * [34, 2048]·[2048, 32]; tests/webgpu_kernels.test.ts). The products it would take are
 * re-routed to `MatMulSmallOutputSizeProgram`, the program it uses for few tiles otherwise.
 */
function avoidSplitK(): void {
  for (const name of ["BatchMatMul", "_FusedMatMul"]) {
    const stock = tf.getKernel(name, "webgpu");
    if (!stock || (stock as { deerSplitKGuard?: boolean }).deerSplitKGuard) continue;
    tf.unregisterKernel(name, "webgpu");
    const guarded = {
      ...stock,
      deerSplitKGuard: true,
      kernelFunc: (args: Parameters<tf.KernelFunc>[0]) => {
        if (!wouldSplitK(args)) return stock.kernelFunc(args);
        const env = tf.env();
        const before = env.getNumber("WEBGPU_MATMUL_PROGRAM_TYPE");
        env.set("WEBGPU_MATMUL_PROGRAM_TYPE", SMALL_OUTPUT);
        try {
          return stock.kernelFunc(args);
        } finally {
          env.set("WEBGPU_MATMUL_PROGRAM_TYPE", before);
        }
      },
    };
    tf.registerKernel(guarded as tf.KernelConfig);
  }
}

/** tfjs-webgpu's own choice of `MatMulSplitKProgram` (batchMatMulImpl), reproduced. */
function wouldSplitK(args: Parameters<tf.KernelFunc>[0]): boolean {
  const env = tf.env();
  if (env.getNumber("WEBGPU_MATMUL_PROGRAM_TYPE") >= 0) {
    return env.getNumber("WEBGPU_MATMUL_PROGRAM_TYPE") === SPLIT_K;
  }
  const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
  const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
  const [ra, rb] = [a.shape.length, b.shape.length];
  const inner = transposeB ? b.shape[rb - 1] : b.shape[rb - 2];
  const outerA = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
  const outerB = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
  const batch = Math.max(
    tf.util.sizeFromShape(a.shape.slice(0, -2)),
    tf.util.sizeFromShape(b.shape.slice(0, -2)),
  );
  const flag = env.getNumber("WEBGPU_THRESHOLD_TO_INCREASE_WORKGROUPS_FOR_MATMUL");
  const threshold = flag > 0
    ? flag
    : (args.backend as { thresholdToIncreaseWorkgroups?: number }).thresholdToIncreaseWorkgroups ??
      8;
  const tiles = batch * Math.ceil(outerA / 32) * Math.ceil(outerB / 32);
  const few = tiles <= threshold || (outerA <= 8 && tiles <= threshold * 2);
  return few && batch * outerA * outerB > 128 && batch === 1 && inner >= 2000;
}

/** What {@link checkBatchFits} reads from a ViT config. */
export interface ActivationShape {
  imageSize: number;
  patchSize: number;
  width: number;
  heads: number;
  mlpDim: number;
  volume?: { depth: number; height: number; width: number; depthPatch: number };
}

/**
 * The largest tensors one ViT step makes, per sample, in bytes (float32): the MLP's hidden
 * activations [T, mlp], the attention scores [heads, T, T] and q|k|v [T, 3·width], T tokens.
 */
export function activationBytesPerSample(cfg: ActivationShape): { bytes: number; what: string } {
  const tokens = 1 +
    (cfg.volume
      ? (cfg.volume.depth / cfg.volume.depthPatch) * (cfg.volume.height / cfg.patchSize) *
        (cfg.volume.width / cfg.patchSize)
      : (cfg.imageSize / cfg.patchSize) ** 2);
  const candidates = [
    { bytes: 4 * tokens * cfg.mlpDim, what: `MLP activation [batch·${tokens}, ${cfg.mlpDim}]` },
    {
      bytes: 4 * cfg.heads * tokens * tokens,
      what: `attention scores [batch, ${cfg.heads}, ${tokens}, ${tokens}]`,
    },
    { bytes: 4 * tokens * 3 * cfg.width, what: `q|k|v [batch·${tokens}, ${3 * cfg.width}]` },
  ];
  return candidates.reduce((a, b) => (b.bytes > a.bytes ? b : a));
}

/**
 * The largest tensor, in bytes, the adapter binds whole: tfjs-webgpu binds every tensor as one
 * storage buffer, so none may exceed `maxStorageBufferBindingSize` (nor `maxBufferSize`).
 */
export function bindingLimit(adapter: WebGpuAdapterSummary): number {
  return Math.min(adapter.maxStorageBufferBindingSize, adapter.maxBufferSize);
}

/** The largest batch whose tensors fit the adapter ({@link bindingLimit}). */
export function maxBatchFor(adapter: WebGpuAdapterSummary, cfg: ActivationShape): number {
  const limit = bindingLimit(adapter);
  return Math.floor(limit / activationBytesPerSample(cfg).bytes);
}

/**
 * Throws, naming the tensor, the limit and the largest batch that fits, when a batch of `batch`
 * samples would make a tensor larger than the adapter can bind — where WebGPU would otherwise
 * fail with a validation error deep inside a kernel, or compute on a truncated binding.
 */
export function checkBatchFits(
  adapter: WebGpuAdapterSummary,
  cfg: ActivationShape,
  batch: number,
): void {
  const { bytes, what } = activationBytesPerSample(cfg);
  const limit = bindingLimit(adapter);
  if (batch * bytes <= limit) return;
  const which = adapter.maxStorageBufferBindingSize <= adapter.maxBufferSize
    ? "maxStorageBufferBindingSize"
    : "maxBufferSize";
  const max = maxBatchFor(adapter, cfg);
  throw new Error(
    `a batch of ${batch} does not fit the WebGPU adapter ${
      adapter.description || adapter.vendor
    }: ` +
      `its ${what} takes ${mib(batch * bytes)}, above the adapter's ${which} of ${mib(limit)}; ` +
      (max >= 1
        ? `use a batch size of at most ${max}`
        : `even one sample does not fit; use another backend (DEER_BACKEND=tensorflow)`),
  );
}
