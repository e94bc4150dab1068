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
 * * Row kernels (one invocation per row of the last axis): LayerNorm statistics `[mean, rstd]`
 *   per row (one kernel instead of about six), its output `(x − mean)·rstd·γ + β` (one instead of
 *   four), its input gradient `rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))` with `dx̂ = dy·γ` (one
 *   instead of about nine), and the softmax backward `y·(g − Σ g·y)` (one instead of four).
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

/**
 * The widest row the row kernels take. One invocation loops over its row, and lavapipe (Mesa's
 * llvmpipe compiler) silently ends a shader's loops after 65,535 iterations in all
 * (`LP_MAX_TGSI_LOOP_ITERATIONS`, shared by every loop of the shader): the LayerNorm statistics
 * loop twice over a row, so from 32,768 wide the variance loop is cut short (measured: exact
 * means, variance 36 % short at 40,000, nothing left of it at 65,536). 16,384 keeps every row
 * kernel (at most two loops over the row) within that budget with room; wider rows are refused
 * ({@link wgslRowsFit}) and take the tfjs composition. A ViT's rows are its width (≤ 1,280) and
 * its token count (≤ 1,025 at 448 px, patch 14).
 */
export const WGSL_MAX_ROW = 16384;

/** Whether the row kernels are in use for rows of `width`. */
export function wgslRowsFit(width: number): boolean {
  return wgslKernelsEnabled() && width <= WGSL_MAX_ROW;
}

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

/** Row bodies: `W` is the row width, `row` the row, `o = row·W` its offset. */
const ROWS: Record<string, { inputs: string[]; body: string; outWidth?: number }> = {
  ln_stats: {
    inputs: ["X"],
    outWidth: 2,
    body: `var m = 0.0;
      for (var j = 0; j < W; j++) { m += X[o + j]; }
      m = m / f32(W);
      var v = 0.0;
      for (var j = 0; j < W; j++) { let c = X[o + j] - m; v += c * c; }
      setOutputAtIndex(row * 2, m);
      setOutputAtIndex(row * 2 + 1, inverseSqrt(v / f32(W) + EPS));`,
  },
  ln_apply: {
    inputs: ["X", "S", "GAMMA", "BETA"],
    body: `let m = S[row * 2];
      let r = S[row * 2 + 1];
      for (var j = 0; j < W; j++) {
        setOutputAtIndex(o + j, (X[o + j] - m) * r * GAMMA[j] + BETA[j]);
      }`,
  },
  ln_grad: {
    inputs: ["DY", "X", "S", "GAMMA"],
    body: `let m = S[row * 2];
      let r = S[row * 2 + 1];
      var a = 0.0;
      var b = 0.0;
      for (var j = 0; j < W; j++) {
        let g = DY[o + j] * GAMMA[j];
        a += g;
        b += g * (X[o + j] - m) * r;
      }
      a = a / f32(W);
      b = b / f32(W);
      for (var j = 0; j < W; j++) {
        let xh = (X[o + j] - m) * r;
        setOutputAtIndex(o + j, r * (DY[o + j] * GAMMA[j] - a - xh * b));
      }`,
  },
  softmax_grad: {
    inputs: ["Y", "G"],
    body: `var s = 0.0;
      for (var j = 0; j < W; j++) { s += G[o + j] * Y[o + j]; }
      for (var j = 0; j < W; j++) { setOutputAtIndex(o + j, Y[o + j] * (G[o + j] - s)); }`,
  },
};

function rowProgram(kind: string, rows: number, width: number, eps: number): Program {
  const { inputs, body, outWidth } = ROWS[kind];
  const outputShape = [rows, outWidth ?? width];
  return {
    variableNames: inputs,
    outputShape,
    // The width and ε are compiled in: one pipeline per (kind, width, ε).
    shaderKey: `deer_${kind}_${width}_${eps}`,
    dispatchLayout: { x: [0, 1] },
    dispatch: [Math.ceil(rows / WORKGROUP), 1, 1],
    workgroupSize: [WORKGROUP, 1, 1],
    size: true,
    getUserCode: () => `
      const W : i32 = ${width};
      const EPS : f32 = ${eps.toExponential()};
      fn main(row : i32) {
        if (row < uniforms.size / ${outWidth ?? width}) {
          let o = row * W;
          ${body}
        }
      }`,
  };
}

function runRows(kind: string, inputs: tf.Tensor[], eps = 0): tf.Tensor {
  const shape = inputs[0].shape;
  const width = shape[shape.length - 1];
  if (width > WGSL_MAX_ROW) {
    throw new Error(`webgpu_kernels ${kind}: rows of ${width} exceed WGSL_MAX_ROW ${WGSL_MAX_ROW}`);
  }
  const rows = inputs[0].size / width;
  return dispatch(kind, inputs, eps, () => rowProgram(kind, rows, width, eps));
}

/**
 * LayerNorm over the last axis in two kernels: `stats` `[rows, 2]` (mean, 1/√(var + ε)) and
 * `y = (x − mean)·rstd·γ + β` (x's shape).
 *
 * Only on the `webgpu` backend, e.g. `const { y, stats } = wgslLayerNormForward(x, gamma, beta, 1e-5);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslLayerNormForward(
  x: tf.Tensor,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  eps: number,
): { y: tf.Tensor; stats: tf.Tensor } {
  const stats = runRows("ln_stats", [x], eps);
  const y = tf.reshape(runRows("ln_apply", [x, stats, gamma, beta]), x.shape);
  return { y, stats };
}

/**
 * The input gradient of {@link wgslLayerNormForward}'s `y` given `dy`, from x and its stats, in
 * one kernel: `rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))`, `dx̂ = dy·γ`.
 *
 * Only on the `webgpu` backend, e.g. `const dx = wgslLayerNormBackward(dy, x, stats, gamma);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslLayerNormBackward(
  dy: tf.Tensor,
  x: tf.Tensor,
  stats: tf.Tensor,
  gamma: tf.Tensor,
): tf.Tensor {
  return tf.reshape(runRows("ln_grad", [dy, x, stats, gamma]), x.shape);
}

/**
 * The softmax backward over the last axis, `y·(g − Σ g·y)`, in one kernel.
 *
 * Only on the `webgpu` backend, e.g. `const dScores = wgslSoftmaxBackward(p, dp);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslSoftmaxBackward(y: tf.Tensor, g: tf.Tensor): tf.Tensor {
  if (!tf.util.arraysEqual(y.shape, g.shape)) {
    throw new Error(`webgpu_kernels: softmax y ${y.shape} and g ${g.shape} must agree`);
  }
  return tf.reshape(runRows("softmax_grad", [y, g]), y.shape);
}

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
  return dispatch(kind, inputs, 0, () => program(kind, inputs[0].shape));
}

/** Kernel names registered so far (`DeerWgsl_<kind>`, backend `webgpu`). */
const registered = new Set<string>();

/**
 * Runs `make()`'s program as the registered tfjs kernel `DeerWgsl_<kind>`, so that it is
 * dispatched, counted and profiled (`tf.profile`) like tfjs-webgpu's own kernels.
 */
function dispatch(kind: string, inputs: tf.Tensor[], eps: number, make: () => Program): tf.Tensor {
  for (const t of inputs) {
    if (t.dtype !== "float32") {
      throw new Error(`webgpu_kernels ${kind}: inputs must be float32, got ${t.dtype}`);
    }
  }
  const name = `DeerWgsl_${kind}`;
  if (!registered.has(name)) {
    tf.registerKernel({
      kernelName: name,
      backendName: "webgpu",
      kernelFunc: ({ inputs: named, backend, attrs }) => {
        const list = Object.keys(named).sort().map((k) => named[k] as tf.TensorInfo);
        const prog = (attrs as unknown as { make: () => Program }).make();
        return (backend as unknown as WebGPUBackendLike).runWebGPUProgram(prog, list, "float32");
      },
    });
    registered.add(name);
  }
  // Inputs named i0, i1, … in order (sorted back above; at most 10 inputs).
  const named = Object.fromEntries(inputs.map((t, i) => [`i${i}`, t]));
  return tf.engine().runKernel(
    name,
    named,
    { make, eps } as unknown as tf.NamedAttrMap,
  ) as tf.Tensor;
}

/**
 * `[act, gate]` of GELU (`gate = 1 + erf z`) or QuickGELU (`gate = σ(z)`) in two kernels.
 *
 * Only on the `webgpu` backend, e.g. `const [act, gate] = wgslGateForward(tf.tensor1d([-1, 0, 1]), "gelu");` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslGateForward(z: tf.Tensor, act: "gelu" | "quick_gelu"): [tf.Tensor, tf.Tensor] {
  const gate = run(act === "gelu" ? "gelu_gate" : "quick_gate", [z]);
  return [run("act", [z, gate]), gate];
}

/**
 * The gradient at z of `z·gate(z)` given `d` at it, from the saved gate, in one kernel.
 *
 * Only on the `webgpu` backend, e.g. `const dz = wgslGateBackward(d, z, gate, "gelu");` (see tests/webgpu_wgsl.test.ts).
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
