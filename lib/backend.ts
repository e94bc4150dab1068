/**
 * The tensor backend: WebGPU (`webgpu`) when the machine has a real GPU, then tfjs with
 * libtensorflow (`tensorflow`), then WebAssembly (`wasm`), then pure JavaScript (`cpu`).
 * `DEER_BACKEND=webgpu|tensorflow|wasm|cpu` forces one (an unavailable forced backend is an error,
 * not a silent fallback); `webgpu` on a software (fallback) adapter such as lavapipe is used only
 * when forced. The choice is printed once to stderr, for `webgpu` with the adapter and its limits.
 *
 * Every module of the toolkit imports `tf` from here, so all of them share one engine and one
 * backend.
 *
 * @example
 * ```ts
 * import { backendName, tf } from "./backend.ts";
 * console.log(backendName, await tf.add(1, 2).data());
 * ```
 * @module
 */
import process from "node:process";
import util from "node:util";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
// tfjs-core registers no gradients: the union package does (its ESM `register_all_gradients` uses
// extensionless imports Deno cannot load). tfjs-node imports it too, so without this line `tf.grad`
// fails ("gradient function not found") on wasm and cpu only.
import "@tensorflow/tfjs";
import {
  describeAdapter,
  installWebGpuBackend,
  realGpuInChild,
  type WebGpuAdapterSummary,
} from "./backend_webgpu.ts";

// Production mode: no debug checks and no "install tfjs-node" banner from the cpu backend.
tf.enableProdMode();

export { tf };

/** The backends the toolkit knows, fastest first. */
export const BACKENDS = ["webgpu", "tensorflow", "wasm", "cpu"] as const;
/** One of {@link BACKENDS}. */
export type BackendName = typeof BACKENDS[number];

async function loadTensorflow(): Promise<void> {
  // tfjs-node still calls helpers that Node removed from `util`; Deno's `node:util` lacks them.
  const legacy = util as unknown as Record<string, unknown>;
  legacy.isNullOrUndefined ??= (x: unknown) => x == null;
  legacy.isArray ??= Array.isArray;
  // libtensorflow logs CPU-feature banners at load; keep warnings and errors only. (This works
  // when set here, before the library loads. The "oneDNN custom operations are on" notice is
  // printed through absl before TensorFlow reads the variable and stays; only
  // TF_ENABLE_ONEDNN_OPTS=0 removes it, by turning oneDNN's kernels off.)
  if (Deno.env.get("TF_CPP_MIN_LOG_LEVEL") === undefined) Deno.env.set("TF_CPP_MIN_LOG_LEVEL", "2");
  // node-pre-gyp, which locates the addon, parses process.argv as its own flags: a user's
  // `--C 0.5` reads as its `-C <directory>` and sends the lookup to "0.5/…". Hide the program's
  // arguments while the addon loads.
  const argv = process.argv;
  process.argv = argv.slice(0, 2);
  try {
    await import("@tensorflow/tfjs-node");
  } finally {
    process.argv = argv;
  }
}

async function loadWasm(): Promise<void> {
  const { installWasmBackend } = await import("./backend_wasm.ts");
  await installWasmBackend();
}

/** The WebGPU adapter in use when the backend is `webgpu`, else `null`. */
export let webgpuAdapter: WebGpuAdapterSummary | null = null;

async function activate(name: BackendName): Promise<void> {
  if (name === "webgpu") webgpuAdapter = await installWebGpuBackend();
  if (name === "tensorflow") await loadTensorflow();
  if (name === "wasm") await loadWasm();
  const ok = await tf.setBackend(name);
  if (!ok) throw new Error(`tfjs backend "${name}" registered but failed to initialise`);
  await tf.ready();
}

async function selectBackend(): Promise<BackendName> {
  const forced = Deno.env.get("DEER_BACKEND");
  if (forced !== undefined && forced !== "") {
    if (!(BACKENDS as readonly string[]).includes(forced)) {
      throw new Error(
        `DEER_BACKEND=${forced} is not a backend; use one of ${BACKENDS.join(", ")} or unset it`,
      );
    }
    try {
      await activate(forced as BackendName);
    } catch (err) {
      throw new Error(
        `DEER_BACKEND=${forced} was requested but cannot be loaded: ${(err as Error).message}` +
          (forced === "tensorflow" ? " (run `deno task setup` to build tfjs-node)" : ""),
      );
    }
    return forced as BackendName;
  }
  const failures: string[] = [];
  let gpuDriversLoaded = false;
  for (const name of BACKENDS) {
    // Automatically only on a real GPU: a software adapter is slower than the CPU backends.
    if (name === "webgpu" && !(await realGpuInChild())) continue;
    // A process that has loaded the Vulkan drivers (webgpu tried and failed here) crashes when
    // libtensorflow loads after them (see probeInChild): go on with wasm or cpu instead.
    if (name === "tensorflow" && gpuDriversLoaded) {
      failures.push("tensorflow skipped (the GPU drivers are loaded in this process)");
      continue;
    }
    try {
      if (name === "webgpu") gpuDriversLoaded = true;
      await activate(name);
      if (failures.length > 0) console.error(`deer: ${failures.join("; ")}`);
      return name;
    } catch (err) {
      if (name === "webgpu") webgpuAdapter = null;
      failures.push(`${name} unavailable (${(err as Error).message.split("\n")[0]})`);
    }
  }
  throw new Error(`no tfjs backend could be loaded: ${failures.join("; ")}`);
}

/** The backend in use for this process. */
export const backendName: BackendName = await selectBackend();
if (Deno.env.get("DEER_QUIET") !== "1") {
  const intra = Deno.env.get("TF_NUM_INTRAOP_THREADS");
  const threads = backendName === "tensorflow" && intra !== undefined
    ? ` (TF_NUM_INTRAOP_THREADS=${intra})`
    : "";
  const adapter = webgpuAdapter ? ` (${describeAdapter(webgpuAdapter)})` : "";
  console.error(`deer: tfjs backend ${backendName}${threads}${adapter}`);
}
