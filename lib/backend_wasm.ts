/**
 * Registers tfjs' WebAssembly backend (SIMD, single thread).
 * @module
 */
import "@tensorflow/tfjs-backend-wasm";

/** Makes the `wasm` backend available to `tf.setBackend`. */
export async function installWasmBackend(): Promise<void> {
  await Promise.resolve();
}
