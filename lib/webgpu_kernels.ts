/**
 * Fused element-wise WGSL kernels for the `webgpu` fast path (lib/model/vit_fast.ts).
 *
 * On a GPU a ViT step's time is set by how many small kernels it dispatches, not by its large
 * products. These programs replace chains of tfjs element-wise kernels by one dispatch each, through
 * the backend's public `runWebGPUProgram` (the same entry tfjs-webgpu's own kernels use):
 *
 * * `gate`: `1 + erf z` (GELU) or `σ(z)` (QuickGELU); `act`: `z·gate` — one kernel each instead of
 *   two and one (GELU) or one and one (QuickGELU).
 * * `grad`: the gradient at z of `z·gate(z)` given `d`, from the saved gate: GELU
 *   `d·(gate + z·(2/√π)·exp(−z²))` (one kernel instead of six), QuickGELU
 *   `d·gate·(1 + z·(1 − gate))` (one instead of five).
 *
 * `DEER_WGSL=0` turns them off (the fast path then uses the portable tfjs composition), for A/B
 * comparisons; they are used only when the active backend is `webgpu`.
 */
import * as tf from "@tensorflow/tfjs-core";

/** The minimal shape of a tfjs-webgpu program that `runWebGPUProgram` accepts. */
interface Program {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  size: boolean;
  getUserCode(): string;
}

/** The part of tfjs-webgpu's backend these kernels call. */
interface WebGPUBackendLike {
  runWebGPUProgram(program: Program, inputs: tf.TensorInfo[], dtype: tf.DataType): tf.TensorInfo;
}

/** Whether the fused kernels are in use: backend `webgpu` and `DEER_WGSL` not `0`. */
export function wgslKernelsEnabled(): boolean {
  return tf.getBackend() === "webgpu" && Deno.env.get("DEER_WGSL") !== "0";
}

const WORKGROUP = 64;

/** Abramowitz–Stegun 7.1.26, the erf tfjs-webgpu's own `Erf` kernel uses (same constants). */
const ERF = `
fn deerErf(a : f32) -> f32 {
  let p = 0.3275911;
  let a1 = 0.254829592;
  let a2 = -0.284496736;
  let a3 = 1.421413741;
  let a4 = -1.453152027;
  let a5 = 1.061405429;
  let s = sign(a);
  let x = abs(a);
  let t = 1.0 / (1.0 + p * x);
  return s * (1.0 - (((((a5 * t + a4) * t) + a3) * t + a2) * t + a1) * t * exp(-x * x));
}
fn deerSigmoid(a : f32) -> f32 { return 1.0 / (1.0 + exp(-a)); }
`;

/** Per-element bodies; inputs are named by `variableNames`, the result is `r`. */
const BODIES: Record<string, { inputs: string[]; body: string }> = {
  gelu_gate: { inputs: ["Z"], body: "let r = 1.0 + deerErf(Z[index]);" },
  quick_gate: { inputs: ["Z"], body: "let r = deerSigmoid(Z[index]);" },
  act: { inputs: ["Z", "G"], body: "let r = Z[index] * G[index];" },
  gelu_grad: {
    inputs: ["D", "Z", "G"],
    body: `let z = Z[index];
      let r = D[index] * (G[index] + z * exp(${Math.log(2 / Math.sqrt(Math.PI))} - z * z));`,
  },
  quick_grad: {
    inputs: ["D", "Z", "G"],
    body: `let g = G[index];
      let r = D[index] * g * (1.0 + Z[index] * (1.0 - g));`,
  },
};

function program(kind: string, shape: number[]): Program {
  const { inputs, body } = BODIES[kind];
  const size = shape.reduce((a, b) => a * b, 1);
  return {
    variableNames: inputs,
    outputShape: shape,
    shaderKey: `deer_${kind}`,
    dispatchLayout: { x: shape.map((_, i) => i) },
    dispatch: [Math.ceil(size / WORKGROUP), 1, 1],
    workgroupSize: [WORKGROUP, 1, 1],
    size: true,
    getUserCode: () => `
      ${ERF}
      fn main(index : i32) {
        if (index < uniforms.size) {
          ${body}
          setOutputAtIndex(index, r);
        }
      }`,
  };
}

function run(kind: string, inputs: tf.Tensor[]): tf.Tensor {
  for (const t of inputs) {
    if (t.dtype !== "float32") {
      throw new Error(`webgpu_kernels ${kind}: inputs must be float32, got ${t.dtype}`);
    }
  }
  const backend = tf.backend() as unknown as WebGPUBackendLike;
  const shape = inputs[0].shape;
  const info = backend.runWebGPUProgram(program(kind, shape), inputs, "float32");
  return tf.engine().makeTensorFromTensorInfo(info);
}

/**
 * `[act, gate]` of GELU (`gate = 1 + erf z`) or QuickGELU (`gate = σ(z)`) in two kernels.
 *
 * @example
 * ```ts
 * const [act, gate] = wgslGateForward(tf.tensor1d([-1, 0, 1]), "gelu");
 * ```
 */
export function wgslGateForward(z: tf.Tensor, act: "gelu" | "quick_gelu"): [tf.Tensor, tf.Tensor] {
  const gate = run(act === "gelu" ? "gelu_gate" : "quick_gate", [z]);
  return [run("act", [z, gate]), gate];
}

/**
 * The gradient at z of `z·gate(z)` given `d` at it, from the saved gate, in one kernel.
 *
 * @example
 * ```ts
 * const dz = wgslGateBackward(d, z, gate, "gelu");
 * ```
 */
export function wgslGateBackward(
  d: tf.Tensor,
  z: tf.Tensor,
  gate: tf.Tensor,
  act: "gelu" | "quick_gelu",
): tf.Tensor {
  if (!tf.util.arraysEqual(d.shape, z.shape) || !tf.util.arraysEqual(gate.shape, z.shape)) {
    throw new Error(`webgpu_kernels: d ${d.shape}, z ${z.shape}, gate ${gate.shape} must agree`);
  }
  return run(act === "gelu" ? "gelu_grad" : "quick_grad", [d, z, gate]);
}
