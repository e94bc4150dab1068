/**
 * The toolkit's fused TensorFlow kernels (`lib/native/deer_ops.c`: `DeerGelu`, `DeerGeluGrad`,
 * `DeerLayerNorm`, `DeerLayerNormGrad`, `DeerSoftmaxGrad`, `DeerResidual`, used by `lib/model/vit_fast.ts`),
 * which `deno task setup` compiles into `.tools/native/libdeer_ops.so`. On the `tensorflow`
 * backend they are loaded into the process's libtensorflow with `TF_LoadLibrary` (through Deno's
 * FFI) the first time {@link nativeOps} is asked, and then run like any TensorFlow op.
 *
 * They are an optimisation only: where the library is missing, cannot load, the CPU lacks AVX2,
 * FFI is not permitted, or `DEER_NATIVE=0`, {@link nativeOps} is false and the callers compute the
 * same values with TensorFlow's own kernels (`tests/native_ops.test.ts` checks the two agree).
 *
 * @example
 * ```ts
 * import { nativeOps, nativeOpsStatus } from "./native.ts";
 * if (!nativeOps()) console.log(nativeOpsStatus());
 * ```
 * @module
 */
import { existsSync } from "node:fs";
import { backendName } from "./backend.ts";

/** Where `deno task setup` puts the compiled kernels. */
export const NATIVE_LIBRARY = new URL("../.tools/native/libdeer_ops.so", import.meta.url).pathname;
/** The C source of the kernels. */
export const NATIVE_SOURCE = new URL("./native/deer_ops.c", import.meta.url).pathname;
/** tfjs-node's libtensorflow (the C API, `TF_LoadLibrary`). */
const LIBTENSORFLOW = new URL(
  "../node_modules/@tensorflow/tfjs-node/deps/lib/libtensorflow.so",
  import.meta.url,
).pathname;

let loaded: boolean | undefined;
let status = "not loaded yet";

/**
 * Whether the fused kernels are loaded and fast on this machine (loads them on the first call).
 *
 * @example
 * ```ts
 * const fused = nativeOps();
 * ```
 */
export function nativeOps(): boolean {
  if (loaded === undefined) loaded = load();
  return loaded;
}

/**
 * Why {@link nativeOps} is what it is, in one line.
 *
 * @example
 * ```ts
 * console.log(nativeOpsStatus()); // "loaded from …/.tools/native/libdeer_ops.so"
 * ```
 */
export function nativeOpsStatus(): string {
  nativeOps();
  return status;
}

function load(): boolean {
  if (backendName !== "tensorflow") {
    status = `not used: the backend is ${backendName}, not tensorflow`;
    return false;
  }
  if (Deno.env.get("DEER_NATIVE") === "0") {
    status = "not used: DEER_NATIVE=0";
    return false;
  }
  if (!existsSync(NATIVE_LIBRARY)) {
    status = `not built: ${NATIVE_LIBRARY} is missing (deno task setup builds it)`;
    return false;
  }
  try {
    const tf = Deno.dlopen(LIBTENSORFLOW, {
      TF_NewStatus: { parameters: [], result: "pointer" },
      TF_DeleteStatus: { parameters: ["pointer"], result: "void" },
      TF_GetCode: { parameters: ["pointer"], result: "i32" },
      TF_Message: { parameters: ["pointer"], result: "pointer" },
      TF_LoadLibrary: { parameters: ["buffer", "pointer"], result: "pointer" },
    });
    const st = tf.symbols.TF_NewStatus();
    tf.symbols.TF_LoadLibrary(new TextEncoder().encode(NATIVE_LIBRARY + "\0"), st);
    const code = tf.symbols.TF_GetCode(st);
    if (code !== 0) {
      const message = tf.symbols.TF_Message(st);
      status = `cannot load ${NATIVE_LIBRARY}: ${
        message ? Deno.UnsafePointerView.getCString(message) : `TF code ${code}`
      }`;
      tf.symbols.TF_DeleteStatus(st);
      return false;
    }
    tf.symbols.TF_DeleteStatus(st);
    const ops = Deno.dlopen(NATIVE_LIBRARY, {
      deer_ops_vectorized: { parameters: [], result: "i32" },
    });
    const vectorized = ops.symbols.deer_ops_vectorized() === 1;
    if (!vectorized) {
      status = "not used: this CPU lacks AVX2/FMA, and the scalar loops are slower than " +
        "TensorFlow's own kernels";
      return false;
    }
    status = `loaded from ${NATIVE_LIBRARY}`;
    return true;
  } catch (err) {
    status = `cannot load ${NATIVE_LIBRARY}: ${(err as Error).message}`;
    return false;
  }
}
