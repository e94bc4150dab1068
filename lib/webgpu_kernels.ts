/**
 * Fused WGSL kernels for the `webgpu` fast path (lib/model/vit_fast.ts): element-wise, per row,
 * and a tiled matrix product.
 *
 * On a GPU a ViT step's time is set by how many small kernels it dispatches and by how fast its
 * large products run. These programs replace chains of tfjs element-wise kernels by one dispatch
 * each, and tfjs' products by a larger-tiled one, through the backend's public
 * `runWebGPUProgram` (the same entry tfjs-webgpu's own kernels use):
 *
 * * `gate`: `1 + erf z` (GELU) or `σ(z)` (QuickGELU); `act`: `z·gate` — one kernel each instead of
 *   two and one (GELU) or one and one (QuickGELU).
 * * `grad`: the gradient at z of `z·gate(z)` given `d`, from the saved gate: GELU
 *   `d·(gate + z·(2/√π)·exp(−z²))` (one kernel instead of six), QuickGELU
 *   `d·gate·(1 + z·(1 − gate))` (one instead of five).
 *
 * * Row kernels (per row of the last axis; one invocation or one workgroup per row,
 *   {@link wgslRowLayout}): LayerNorm, statistics and output
 *   `(x − mean)·rstd·γ + β` in one kernel (instead of about ten), its input gradient
 *   `rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))` with `dx̂ = dy·γ`, the statistics computed again from
 *   x (one instead of about nine; with a residual gradient added, still one), and the softmax
 *   backward `y·(g − Σ g·y)` (one instead of four).
 * * The block's small steps: a residual connection `a + (b·s + bias)` (one kernel instead of two
 *   or three), the gate and its gradient with the fc1 bias added inside and the MLP's output scale
 *   folded in, q, k and v head-major with their bias out of the rows h·W_qkv, q scaled by
 *   1/√d_head there (one kernel each instead of a transpose of the weight, a bias addition and
 *   three slices; the adapted weight and B̃ then need no column scaling), and their gradients back
 *   to rows `[N·T, 3·width]` (one instead of a stack and a transpose), q's scaled back. The layouts
 *   move (and scale) values only.
 * * The matrix product may add a tensor of its output's shape as it stores (`wgslMatMulAdd`): the
 *   adapted weight `W_qkv + Aᵀ·B̃` in one kernel. It also reads an operand where it lies in a
 *   stack ({@link stackedMatrix}): each block's A and B̃ out of the stacks of every block's, with
 *   no slice dispatched per block and factor; and a batch whose entries are tensors of their own
 *   ({@link matrixList}): every block's gradient at A in one product, with no stack after it.
 * * The training loss (`wgslPrototypeLoss`): cross-entropy of the scaled cosine logits against
 *   the class prototypes in one kernel, its gradients at the features and at the logit scale in
 *   two (instead of about 25 kernels for both).
 *
 * * A tiled matrix product (`DeerWgsl_MatMul`, {@link wgslMatMul}) for the step's large products,
 *   where tfjs-webgpu 4.22's `MatMulPackedProgram` (8×8 threads × 4×4 outputs = 32×32 tiles)
 *   reached 2.7 TFLOP/s on an H200 for [1576×768]·[768×3072] (fp32 peak ≈ 60). Built as GPU
 *   SGEMMs are: 64×64 (or 128×64, or the classic large-GPU 128×128) outputs per workgroup of 256
 *   threads, each thread a 4×4 (8×4, 8×8) register block, K-tiles of 16 staged in workgroup
 *   memory (128×128: 16 KiB, exactly WebGPU's default `maxComputeWorkgroupStorageSize`), vec4
 *   loads and stores where the contiguous dimension allows, transposes by indexing, a batch (or one matrix broadcast over
 *   it). The fast path sends it products of at least {@link WGSL_MM_MIN_OUTPUTS} outputs. Its only
 *   loop runs ⌈K/16⌉ times, within lavapipe's loop budget up to {@link WGSL_MM_MAX_K}. Checked
 *   against `tf.matMul` on lavapipe (tests/webgpu_wgsl.test.ts); not yet measured on a GPU:
 *   `bench/webgpu_probe.ts matmul` (and `bench/gpu_check.sh wgsl`) compare the two there.
 *
 * `DEER_WGSL=0` turns them off (the fast path then uses the portable tfjs composition and
 * `tf.matMul`), for A/B comparisons; they are used only when the active backend is `webgpu`.
 */
import * as tf from "@tensorflow/tfjs-core";
import { installedWebGpuAdapter } from "./backend_webgpu.ts";

/** The minimal shape of a tfjs-webgpu program that `runWebGPUProgram` accepts. */
interface Program {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[]; y?: number[]; z?: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  size: boolean;
  /** Extra uniforms, WGSL struct members (`M : i32, …`), filled from the kernel's `uniforms`. */
  uniforms?: string;
  /** Per input: 4 binds it as `array<vec4<f32>>`, 1 (default) as `array<f32>`. */
  variableComponents?: number[];
  /** 4 binds the output as `array<vec4<f32>>`. */
  outputComponent?: number;
  getUserCode(): string;
}

/** A uniform value `runWebGPUProgram` appends after its own (shapes, strides, size). */
interface ProgramUniform {
  type: "int32" | "float32";
  data: number[];
}

/** The part of tfjs-webgpu's backend these kernels call. */
interface WebGPUBackendLike {
  runWebGPUProgram(
    program: Program,
    inputs: tf.TensorInfo[],
    dtype: tf.DataType,
    uniforms?: ProgramUniform[],
  ): tf.TensorInfo;
}

/** Whether the fused kernels are in use: backend `webgpu` and `DEER_WGSL` not `0`. */
export function wgslKernelsEnabled(): boolean {
  return tf.getBackend() === "webgpu" && Deno.env.get("DEER_WGSL") !== "0";
}

const WORKGROUP = 64;

/** Invocations per row in the `group` layout of the row kernels ({@link wgslRowLayout}). */
const ROW_GROUP = 64;

/**
 * The widest row the row kernels take. Lavapipe (Mesa's llvmpipe compiler) silently ends a
 * shader's loops after 65,535 iterations in all (`LP_MAX_TGSI_LOOP_ITERATIONS`, shared by every
 * loop of the shader): when the LayerNorm statistics looped twice over a row, from 32,768 wide the
 * variance loop was cut short (measured: exact means, variance 36 % short at 40,000, nothing left
 * of it at 65,536). In the `thread` layout one invocation makes the LayerNorm gradient's four
 * passes over its row, so rows up to ⌊65,535/4⌋ = 16,383 keep every row kernel within that budget
 * (measured: 17,000 wide gave relative error 1.7). The `group` layout's invocations make ⌈W/64⌉
 * iterations per pass and could take far wider rows; the same cap holds for both, so the layout
 * never decides which path a model takes. Wider rows are refused ({@link wgslRowsFit}) and take
 * the tfjs composition. A ViT's rows are its width (≤ 1,280) and its token count (≤ 1,025 at 448
 * px, patch 14).
 */
export const WGSL_MAX_ROW = 16383;

/** How the row kernels lay a row out over invocations: see {@link wgslRowLayout}. */
export type RowLayout = "thread" | "group";

/**
 * The row kernels' layout: `DEER_WGSL_ROWS` (`thread` or `group`) or, unset, `group` on a GPU and
 * `thread` on a fallback adapter (or before the backend is installed).
 *
 * * `thread`: one invocation per row loops over it; 64 rows per workgroup. Neighbouring
 *   invocations read addresses a row apart, and a ViT-B/16 step at batch 32 has 6,304 LayerNorm
 *   rows, 99 workgroups of 64 (an H100 has 132 multiprocessors). On lavapipe, which runs an
 *   invocation's loop as vector code and pays for every barrier, it is the fast one: the tiny
 *   ViT step's LayerNorm-gradient kernels took 11–13 ms against 48–50 ms for `group`.
 * * `group`: one workgroup of 64 per row, its invocations striding over the row (neighbours read
 *   neighbouring addresses) and summing in workgroup memory, the layout of tfjs-webgpu's own
 *   softmax and of GPU LayerNorm kernels generally. Not yet measured on a GPU:
 *   `bash .gpucarry/gpu_check.sh rows` times the step both ways.
 */
export function wgslRowLayout(): RowLayout {
  const v = Deno.env.get("DEER_WGSL_ROWS");
  if (v === "thread" || v === "group") return v;
  if (v !== undefined && v !== "") {
    throw new Error(`DEER_WGSL_ROWS="${v}": use thread or group (or leave it unset)`);
  }
  return installedWebGpuAdapter()?.isFallback === false ? "group" : "thread";
}

/** Whether the row kernels are in use for rows of `width`. */
export function wgslRowsFit(width: number): boolean {
  return wgslKernelsEnabled() && width <= WGSL_MAX_ROW;
}

/**
 * Whether the kernels are in use and one of them may bind `inputs` tensors on this device:
 * tfjs-webgpu binds each input and the output as a storage buffer, and a device takes
 * `maxStorageBuffersPerShaderStage` of them per shader (WebGPU's default is 8; lib/backend_webgpu.ts
 * asks the adapter for up to 32). The kernels that read one tensor per block
 * ({@link wgslBlockDiagonalGrad} of the blocks' gradients) ask first.
 */
export function wgslBindable(inputs: number): boolean {
  return wgslKernelsEnabled() && inputs + 1 <= storageBuffers();
}

/** The storage buffers the webgpu backend's device binds per shader (WebGPU's default: 8). */
function storageBuffers(): number {
  const backend = tf.backend() as unknown as {
    device?: { limits?: { maxStorageBuffersPerShaderStage?: number } };
  };
  return backend.device?.limits?.maxStorageBuffersPerShaderStage ?? 8;
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

/**
 * The gate's bodies, reading z as `z` (`Z[index]`, or with `bias` that plus the row vector C
 * broadcast over Z's rows: the fc1 bias, added here instead of in a kernel of its own).
 * SCALE: a constant factor on d in the gradients (the MLP's output scale, folded in by the fast
 * path).
 */
function gateBodies(suffix: string, z: string, bias: string[]) {
  const log2OverSqrtPi = Math.log(2 / Math.sqrt(Math.PI));
  return {
    [`gelu_gate${suffix}`]: { inputs: ["Z", ...bias], body: `let r = 1.0 + deerErf(${z});` },
    [`quick_gate${suffix}`]: { inputs: ["Z", ...bias], body: `let r = deerSigmoid(${z});` },
    [`act${suffix}`]: { inputs: ["Z", "G", ...bias], body: `let r = ${z} * G[index];` },
    [`gelu_grad${suffix}`]: {
      inputs: ["D", "Z", "G", ...bias],
      body: `let z = ${z};
      let r = (SCALE * D[index]) * (G[index] + z * exp(${log2OverSqrtPi} - z * z));`,
    },
    [`quick_grad${suffix}`]: {
      inputs: ["D", "Z", "G", ...bias],
      body: `let g = G[index];
      let r = (SCALE * D[index]) * g * (1.0 + ${z} * (1.0 - g));`,
    },
  };
}

/** Per-element bodies; inputs are named by `variableNames`, the result is `r`. */
const BODIES: Record<string, { inputs: string[]; body: string }> = {
  ...gateBodies("", "Z[index]", []),
  ...gateBodies("_bias", "(Z[index] + C[index % W])", ["C"]),
  // A row vector C [W] broadcast over the rows of A and B [rows, W] (column `index % W`).
  residual: {
    inputs: ["A", "B", "C"],
    body: "let r = A[index] + (B[index] * SCALE + C[index % W]);",
  },
  // The same with A's rows read every EVERY rows: B's row i with A's row i·EVERY.
  residual_every: {
    inputs: ["A", "B", "C"],
    body: "let r = A[(index / W) * EVERY * W + index % W] + (B[index] * SCALE + C[index % W]);",
  },
};

/**
 * A row's LayerNorm statistics, `m` (mean) and `r` (1/√(biased variance + ε)), two passes over
 * the row, each summed by `deerRowSum`. The forward kernel and the gradient kernel each
 * compute them (the same operations in the same order, so the same values): nothing is saved
 * between the two but x.
 */
const LN_STATS = `var s = 0.0;
      for (var j = t; j < W; j += NT) { s += X[o + j]; }
      let m = deerRowSum(vec2<f32>(s, 0.0), t).x / f32(W);
      var v = 0.0;
      for (var j = t; j < W; j += NT) { let c = X[o + j] - m; v += c * c; }
      let r = inverseSqrt(deerRowSum(vec2<f32>(v, 0.0), t).x / f32(W) + EPS);`;

/** The LayerNorm input gradient of one row, `plus` prefixed to each output value. */
function lnGradBody(plus: string): string {
  return `${LN_STATS}
      var ab = vec2<f32>(0.0, 0.0);
      for (var j = t; j < W; j += NT) {
        let g = DY[o + j] * GAMMA[j];
        ab += vec2<f32>(g, g * (X[o + j] - m) * r);
      }
      ab = deerRowSum(ab, t) / f32(W);
      if (live) {
        for (var j = t; j < W; j += NT) {
          let xh = (X[o + j] - m) * r;
          setOutputAtIndex(o + j, ${plus}r * (DY[o + j] * GAMMA[j] - ab.x - xh * ab.y));
        }
      }`;
}

/**
 * Row bodies: `W` is the row width, `row` the row, `o` its offset (row 0's for an invocation
 * past the last row, which reads but writes nothing: `live`), `NT` the invocations per row (1 or
 * 64, {@link wgslRowLayout}) and `t` this one's place among them; it takes columns t, t + NT, …
 * and `deerRowSum` adds up what the row's invocations hold.
 */
const ROWS: Record<string, { inputs: string[]; body: string }> = {
  ln: {
    inputs: ["X", "GAMMA", "BETA"],
    body: `${LN_STATS}
      if (live) {
        for (var j = t; j < W; j += NT) {
          setOutputAtIndex(o + j, (X[o + j] - m) * r * GAMMA[j] + BETA[j]);
        }
      }`,
  },
  ln_grad: { inputs: ["DY", "X", "GAMMA"], body: lnGradBody("") },
  // The same plus a residual gradient R (x's shape) added to the result.
  ln_grad_res: { inputs: ["DY", "X", "GAMMA", "R"], body: lnGradBody("R[o + j] + ") },
  // With R's rows given for every EVERY-th row only (row i·EVERY gets R's row i), zero elsewhere:
  // what R padded with zero rows would add.
  ln_grad_res_every: {
    inputs: ["DY", "X", "GAMMA", "R"],
    body: lnGradBody("select(0.0, R[(row / EVERY) * W + j], row % EVERY == 0) + "),
  },
  softmax_grad: {
    inputs: ["Y", "G"],
    body: `var p = 0.0;
      for (var j = t; j < W; j += NT) { p += G[o + j] * Y[o + j]; }
      let s = deerRowSum(vec2<f32>(p, 0.0), t).x;
      if (live) {
        for (var j = t; j < W; j += NT) { setOutputAtIndex(o + j, Y[o + j] * (G[o + j] - s)); }
      }`,
  },
};

/**
 * The row sum of each layout, `deerRowSum(v, t)`: in `thread` the invocation's own v (it saw the
 * whole row); in `group` the workgroup's tree reduction in workgroup memory, returned to every
 * invocation (each reaches every barrier: only reads and writes depend on the row).
 */
const ROW_SUM: Record<RowLayout, string> = {
  thread: "fn deerRowSum(v : vec2<f32>, t : i32) -> vec2<f32> { return v; }",
  group: `var<workgroup> deerSums : array<vec2<f32>, ${ROW_GROUP}>;
      fn deerRowSum(v : vec2<f32>, t : i32) -> vec2<f32> {
        deerSums[t] = v;
        workgroupBarrier();
        for (var h = NT / 2; h > 0; h = h / 2) {
          if (t < h) { deerSums[t] = deerSums[t] + deerSums[t + h]; }
          workgroupBarrier();
        }
        let total = deerSums[0];
        workgroupBarrier();
        return total;
      }`,
};

/**
 * A row kernel in either layout, the same body: `thread` runs ⌈rows/64⌉ workgroups of 64 rows
 * (t = 0, NT = 1: each invocation takes its whole row); `group` runs one workgroup per row (tfjs
 * folds a count over the 65,535-per-dimension limit into two dimensions; the few extra workgroups
 * are not `live`).
 */
function rowProgram(
  kind: string,
  rows: number,
  width: number,
  eps: number,
  layout: RowLayout,
  every: number,
): Program {
  const { inputs, body } = ROWS[kind];
  const nt = layout === "group" ? ROW_GROUP : 1;
  return {
    variableNames: inputs,
    outputShape: [rows, width],
    // The layout, width, ε and row stride are compiled in: one pipeline per (kind, layout, width,
    // ε, every).
    shaderKey: `deer_${kind}_${layout}_${width}_${eps}_${every}`,
    dispatchLayout: { x: [0, 1] },
    dispatch: [layout === "group" ? rows : Math.ceil(rows / WORKGROUP), 1, 1],
    workgroupSize: [layout === "group" ? ROW_GROUP : WORKGROUP, 1, 1],
    size: true,
    getUserCode: () => `
      const W : i32 = ${width};
      const NT : i32 = ${nt};
      const EPS : f32 = ${eps.toExponential()};
      const EVERY : i32 = ${every};
      ${ROW_SUM[layout]}
      fn main(index : i32) {
        let t = index % NT;
        let row = index / NT;
        let live = row < uniforms.size / W;
        let o = select(0, row * W, live);
        ${body}
      }`,
  };
}

function runRows(
  kind: string,
  inputs: tf.Tensor[],
  eps = 0,
  every = 1,
  layout = wgslRowLayout(),
): tf.Tensor {
  const shape = inputs[0].shape;
  const width = shape[shape.length - 1];
  if (width > WGSL_MAX_ROW) {
    throw new Error(`webgpu_kernels ${kind}: rows of ${width} exceed WGSL_MAX_ROW ${WGSL_MAX_ROW}`);
  }
  const rows = inputs[0].size / width;
  return dispatch(kind, inputs, eps, () => rowProgram(kind, rows, width, eps, layout, every));
}

/**
 * LayerNorm over the last axis in one kernel: `y = (x − mean)·rstd·γ + β`, rstd = 1/√(var + ε)
 * (biased variance, as PyTorch). The statistics are not kept: {@link wgslLayerNormBackward}
 * computes them again from x.
 *
 * Only on the `webgpu` backend, e.g. `const y = wgslLayerNormForward(x, gamma, beta, 1e-5);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslLayerNormForward(
  x: tf.Tensor,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  eps: number,
): tf.Tensor {
  checkRowVector("ln gamma", x, gamma);
  checkRowVector("ln beta", x, beta);
  return tf.reshape(runRows("ln", [x, gamma, beta], eps), x.shape);
}

/**
 * The input gradient of {@link wgslLayerNormForward}'s `y` given `dy`, from x (the statistics
 * computed again, as the forward kernel computed them) and γ, in one kernel:
 * `rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))`, `dx̂ = dy·γ`; with `residual` (x's shape), that plus
 * the residual branch's gradient, still one kernel. With `residualEvery` > 1, `residual` has
 * rows for every `residualEvery`-th row of x only (x [rows, width], residual
 * [rows / residualEvery, width]; row i·residualEvery gets residual's row i, the others none):
 * the last block's gradient at the class tokens' rows, added where they lie instead of padded
 * with zero rows to every token first (the same values: the others get `0 + dx`).
 *
 * Only on the `webgpu` backend, e.g. `const dx = wgslLayerNormBackward(dy, x, gamma, 1e-5);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslLayerNormBackward(
  dy: tf.Tensor,
  x: tf.Tensor,
  gamma: tf.Tensor,
  eps: number,
  residual?: tf.Tensor,
  residualEvery = 1,
): tf.Tensor {
  if (!tf.util.arraysEqual(dy.shape, x.shape)) {
    throw new Error(`webgpu_kernels ln_grad: dy ${dy.shape} must be x's ${x.shape}`);
  }
  const width = checkRowVector("ln_grad gamma", x, gamma);
  if (!residual) return tf.reshape(runRows("ln_grad", [dy, x, gamma], eps), x.shape);
  if (residualEvery === 1) {
    if (!tf.util.arraysEqual(residual.shape, x.shape)) {
      throw new Error(`webgpu_kernels ln_grad: residual ${residual.shape} must be x's ${x.shape}`);
    }
    return tf.reshape(runRows("ln_grad_res", [dy, x, gamma, residual], eps), x.shape);
  }
  const rows = x.size / width;
  if (
    !Number.isInteger(residualEvery) || residualEvery < 1 || rows % residualEvery !== 0 ||
    residual.rank !== 2 || !tf.util.arraysEqual(residual.shape, [rows / residualEvery, width])
  ) {
    throw new Error(
      `webgpu_kernels ln_grad: residual ${residual.shape} is not [${rows} / ${residualEvery}, ${width}] (one row every ${residualEvery} of x ${x.shape})`,
    );
  }
  const dx = runRows("ln_grad_res_every", [dy, x, gamma, residual], eps, residualEvery);
  return tf.reshape(dx, x.shape);
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

/**
 * Compile-time constants of an element-wise body: `SCALE` (f32), `W` (i32, a row's width) and
 * `EVERY` (i32, a row stride).
 */
interface Constants {
  scale?: number;
  width?: number;
  every?: number;
}

function program(
  kind: string,
  shape: number[],
  { scale = 1, width = 1, every = 1 }: Constants,
): Program {
  const { inputs, body } = BODIES[kind];
  // The constants are compiled in: one pipeline per (kind, scale, width, every).
  return elementProgram(`${kind}_${scale}_${width}_${every}`, inputs, shape, body, {
    prelude: `${ERF}
      const SCALE : f32 = ${scale.toExponential()};
      const W : i32 = ${width};
      const EVERY : i32 = ${every};`,
  });
}

/**
 * An element-wise program over `outputShape` whose `code` sets `r` from `index` (and from
 * `uniforms`, WGSL struct members such as `N : i32,`), after a `prelude` of functions and
 * constants.
 */
function elementProgram(
  key: string,
  inputs: string[],
  outputShape: number[],
  code: string,
  { uniforms, prelude = "" }: { uniforms?: string; prelude?: string } = {},
): Program {
  const size = outputShape.reduce((a, b) => a * b, 1);
  return {
    variableNames: inputs,
    outputShape,
    shaderKey: `deer_${key}`,
    dispatchLayout: { x: outputShape.map((_, i) => i) },
    dispatch: [Math.ceil(size / WORKGROUP), 1, 1],
    workgroupSize: [WORKGROUP, 1, 1],
    size: true,
    ...(uniforms ? { uniforms } : {}),
    getUserCode: () => `
      ${prelude}
      fn main(index : i32) {
        if (index < uniforms.size) {
          ${code}
          setOutputAtIndex(index, r);
        }
      }`,
  };
}

/** Runs an element-wise body over the shape of `shape` (default: the first input's). */
function run(
  kind: string,
  inputs: tf.Tensor[],
  constants: Constants = {},
  shape = inputs[0].shape,
): tf.Tensor {
  return dispatch(kind, inputs, 0, () => program(kind, shape, constants));
}

/** Kernel names registered so far (`DeerWgsl_<kind>`, backend `webgpu`). */
const registered = new Set<string>();

/**
 * Runs `make()`'s program as the registered tfjs kernel `DeerWgsl_<kind>`, so that it is
 * dispatched, counted and profiled (`tf.profile`) like tfjs-webgpu's own kernels.
 */
function dispatch(
  kind: string,
  inputs: tf.Tensor[],
  eps: number,
  make: () => Program,
  uniforms?: ProgramUniform[],
  ints: number[] = [],
): tf.Tensor {
  inputs.forEach((t, i) => {
    const want = ints.includes(i) ? "int32" : "float32";
    if (t.dtype !== want) {
      throw new Error(`webgpu_kernels ${kind}: input ${i} must be ${want}, got ${t.dtype}`);
    }
  });
  const name = `DeerWgsl_${kind}`;
  if (!registered.has(name)) {
    tf.registerKernel({
      kernelName: name,
      backendName: "webgpu",
      kernelFunc: ({ inputs: named, backend, attrs }) => {
        // In the order given: i0, i1, …, i10, … (by number, not as strings).
        const list = Object.keys(named)
          .sort((x, y) => Number(x.slice(1)) - Number(y.slice(1)))
          .map((k) => named[k] as tf.TensorInfo);
        const { make, uniforms } = attrs as unknown as {
          make: () => Program;
          uniforms?: ProgramUniform[];
        };
        return (backend as unknown as WebGPUBackendLike).runWebGPUProgram(
          make(),
          list,
          "float32",
          uniforms,
        );
      },
    });
    registered.add(name);
  }
  // Inputs named i0, i1, … in order (sorted back above); as many as the device binds
  // ({@link wgslBindable}).
  const named = Object.fromEntries(inputs.map((t, i) => [`i${i}`, t]));
  return tf.engine().runKernel(
    name,
    named,
    { make, eps, uniforms } as unknown as tf.NamedAttrMap,
  ) as tf.Tensor;
}

/**
 * `[act, gate]` of GELU (`gate = 1 + erf z`) or QuickGELU (`gate = σ(z)`) in two kernels; with
 * `bias` ([width], broadcast over z's rows), of `z + bias`, added inside both kernels.
 *
 * Only on the `webgpu` backend, e.g. `const [act, gate] = wgslGateForward(tf.tensor1d([-1, 0, 1]), "gelu");` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslGateForward(
  z: tf.Tensor,
  act: "gelu" | "quick_gelu",
  bias?: tf.Tensor,
): [tf.Tensor, tf.Tensor] {
  const kind = act === "gelu" ? "gelu_gate" : "quick_gate";
  if (!bias) {
    const gate = run(kind, [z]);
    return [run("act", [z, gate]), gate];
  }
  const width = checkRowVector("gate", z, bias);
  const gate = run(`${kind}_bias`, [z, bias], { width });
  return [run("act_bias", [z, gate, bias], { width }), gate];
}

/**
 * The gradient at z of `scale·z·gate(z)` given `d` at it, from the saved gate, in one kernel;
 * with `bias`, at `z + bias` (z as {@link wgslGateForward} took it).
 *
 * Only on the `webgpu` backend, e.g. `const dz = wgslGateBackward(d, z, gate, "gelu");` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslGateBackward(
  d: tf.Tensor,
  z: tf.Tensor,
  gate: tf.Tensor,
  act: "gelu" | "quick_gelu",
  scale = 1,
  bias?: tf.Tensor,
): tf.Tensor {
  if (!tf.util.arraysEqual(d.shape, z.shape) || !tf.util.arraysEqual(gate.shape, z.shape)) {
    throw new Error(`webgpu_kernels: d ${d.shape}, z ${z.shape}, gate ${gate.shape} must agree`);
  }
  const kind = act === "gelu" ? "gelu_grad" : "quick_grad";
  if (!bias) return run(kind, [d, z, gate], { scale });
  return run(`${kind}_bias`, [d, z, gate, bias], { scale, width: checkRowVector("gate", z, bias) });
}

/** Checks that `v` is a vector as long as the last axis of `x`, for the row-vector kernels. */
function checkRowVector(what: string, x: tf.Tensor, v: tf.Tensor): number {
  const width = x.shape[x.rank - 1];
  if (v.rank !== 1 || v.shape[0] !== width) {
    throw new Error(`webgpu_kernels ${what}: vector ${v.shape} must be [${width}] for ${x.shape}`);
  }
  return width;
}

/**
 * A residual connection `a + (b·scale + bias)` with `bias` [width] broadcast over the rows of a
 * and b, in one kernel (instead of two or three). With `aEvery` > 1, a has `aEvery` times b's
 * rows and only every `aEvery`-th is read (b's row i with a's row i·aEvery): the class tokens'
 * rows of the residual stream [N·T, width] with `aEvery` = T, read where they lie instead of
 * sliced out first (the last block's residual); the result has b's shape.
 *
 * Only on the `webgpu` backend, e.g. `const x1 = wgslResidual(x, attended, outBias, 1);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslResidual(
  a: tf.Tensor,
  b: tf.Tensor,
  bias: tf.Tensor,
  scale: number,
  aEvery = 1,
): tf.Tensor {
  const width = checkRowVector("residual", b, bias);
  if (aEvery === 1) {
    if (!tf.util.arraysEqual(a.shape, b.shape)) {
      throw new Error(`webgpu_kernels residual: a ${a.shape} and b ${b.shape} must agree`);
    }
    return run("residual", [a, b, bias], { scale, width });
  }
  const rows = b.size / width;
  if (
    !Number.isInteger(aEvery) || aEvery < 1 || a.rank !== 2 || b.rank !== 2 ||
    !tf.util.arraysEqual(a.shape, [rows * aEvery, width])
  ) {
    throw new Error(
      `webgpu_kernels residual: a ${a.shape} is not [${aEvery}·${rows}, ${width}] for b ${b.shape} (every ${aEvery} rows)`,
    );
  }
  return run("residual_every", [a, b, bias], { scale, width, every: aEvery }, b.shape);
}

// ---------------------------------------------------------------------------------------------
// The attention's layouts

const int32 = (v: number): ProgramUniform => ({ type: "int32", data: [v] });
const float32 = (v: number): ProgramUniform => ({ type: "float32", data: [v] });

/**
 * Slot `j` (0 q, 1 k, 2 v) of the rows `qkv` [N·T, 3·width] (h·W_qkv, q | k | v side by side)
 * times `scale` plus its bias [3·heads, 1, d_head], head-major as [heads, N, tq, d_head]: the first
 * `tq` tokens of each of the `n` images (T for all of them, 1 for the class token alone). One
 * kernel per slot instead of a transpose of the weight to heads (for a batched product), the bias
 * addition and a slice per slot (and the class token's slice of q); the fast path scales q by
 * 1/√d_head here rather than in its weight. {@link wgslHeadSlots} cuts several slots at once.
 *
 * Only on the `webgpu` backend, e.g. `const k = wgslHeadSlot(qkv, bias, 1, n, t);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslHeadSlot(
  qkv: tf.Tensor,
  bias: tf.Tensor,
  j: number,
  n: number,
  tq: number,
  scale = 1,
): tf.Tensor {
  const slot = headSlots(qkv, bias, j, 1, n, tq, j, scale);
  return tf.reshape(slot, slot.shape.slice(1));
}

/**
 * Slots `from`..2 of the rows `qkv` [N·T, 3·width] with their bias [3·heads, 1, d_head], q (slot
 * 0) times `qScale`, head-major in one tensor [3 − from, heads, N, T, d_head]: what
 * {@link wgslHeadSlot} gives slot by slot, in one kernel. The products read each slot where it
 * lies ({@link stackedMatrix}(slots, j)), so the block's q, k and v (k and v in the last block,
 * whose q is the class token's alone) cost one dispatch instead of three (two).
 *
 * Only on the `webgpu` backend, e.g. `const kv = wgslHeadSlots(qkv, bias, n, 1);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslHeadSlots(
  qkv: tf.Tensor,
  bias: tf.Tensor,
  n: number,
  from = 0,
  qScale = 1,
): tf.Tensor {
  const t = qkv.shape[0] / n;
  return headSlots(qkv, bias, from, 3 - from, n, t, 0, qScale);
}

/** The output shape [count, heads, N, tq, d_head] of slots `from`.. of `qkv`, checked. */
function headSlotsShape(
  qkv: tf.Tensor,
  bias: tf.Tensor,
  from: number,
  n: number,
  tq: number,
  count = 1,
): number[] {
  const [h3, one, dh] = bias.shape as number[];
  if (bias.rank !== 3 || one !== 1 || h3 % 3 !== 0) {
    throw new Error(`webgpu_kernels head_slot: bias ${bias.shape} is not [3·heads, 1, d_head]`);
  }
  const [rows, cols] = qkv.shape as number[];
  const t = rows / n;
  if (qkv.rank !== 2 || cols !== h3 * dh || !Number.isInteger(t)) {
    throw new Error(
      `webgpu_kernels head_slot: qkv ${qkv.shape} is not [${n}·T, ${h3 * dh}] (bias ${bias.shape})`,
    );
  }
  if (
    ![0, 1, 2].includes(from) || count < 1 || from + count > 3 || !Number.isInteger(tq) ||
    tq < 1 || tq > t || (count > 1 && tq !== t)
  ) {
    throw new Error(
      `webgpu_kernels head_slot: slot ${from} (0..2), ${count} slots or ${tq} tokens (1..${t}; all of them for several slots) out of range`,
    );
  }
  return [count, h3 / 3, n, tq, dh];
}

/**
 * Slots `from`..`from + count − 1` of `qkv`, the first `tq` tokens of each image, slot `scaled`
 * times `scale`, as [count, heads, N, tq, d_head] (one kernel).
 */
function headSlots(
  qkv: tf.Tensor,
  bias: tf.Tensor,
  from: number,
  count: number,
  n: number,
  tq: number,
  scaled: number,
  scale: number,
): tf.Tensor {
  const shape = headSlotsShape(qkv, bias, from, n, tq, count);
  const [, heads, , , dh] = shape;
  const t = qkv.shape[0] / n;
  const make = () =>
    elementProgram(
      `head_slots_${heads}_${dh}`,
      ["X", "C"],
      shape,
      `let d = index % ${dh};
          let r1 = index / ${dh};
          let tt = r1 % uniforms.TQ;
          let r2 = r1 / uniforms.TQ;
          let nn = r2 % uniforms.N;
          let r3 = r2 / uniforms.N;
          let slot = uniforms.J + r3 / ${heads};
          let col = (slot * ${heads} + r3 % ${heads}) * ${dh} + d;
          let x = X[(nn * uniforms.T + tt) * ${3 * heads * dh} + col];
          var s = 1.0;
          if (slot == uniforms.SJ) { s = uniforms.S; }
          let r = x * s + C[col];`,
      { uniforms: "N : i32, T : i32, TQ : i32, J : i32, SJ : i32, S : f32," },
    );
  const uniforms = [...[n, t, tq, from, scaled].map(int32), float32(scale)];
  return dispatch("HeadSlot", [qkv, bias], 0, make, uniforms);
}

/**
 * The gradients at q [heads, N, tq, d_head] (tq = T, or 1: the class token's rows alone, the
 * other rows' gradients zero) times `qScale`, at k and v [heads, N, T, d_head] as rows
 * [N·T, 3·width] (width = heads·d_head), q | k | v side by side: the inverse of the head-major
 * layout, in one kernel instead of a stack and a transpose (and the zero padding of q).
 * `qScale` carries the gradient through {@link wgslHeadSlot}'s scaling of q.
 *
 * Only on the `webgpu` backend, e.g. `const dQkv = wgslHeadsToRows(dq, dk, dv);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslHeadsToRows(
  dq: tf.Tensor,
  dk: tf.Tensor,
  dv: tf.Tensor,
  qScale = 1,
): tf.Tensor {
  const [heads, n, t, dh] = dk.shape as number[];
  const tq = dq.shape[2] as number;
  if (
    dk.rank !== 4 || !tf.util.arraysEqual(dv.shape, dk.shape) ||
    !tf.util.arraysEqual(dq.shape, [heads, n, tq, dh]) || (tq !== t && tq !== 1)
  ) {
    throw new Error(
      `webgpu_kernels heads_to_rows: dq ${dq.shape}, dk ${dk.shape}, dv ${dv.shape} must be [heads, N, T (or 1 for dq), d_head]`,
    );
  }
  const width = heads * dh;
  const make = () =>
    elementProgram(
      `heads_to_rows_${heads}_${dh}`,
      ["Q", "K", "V"],
      [n * t, 3 * width],
      `let col = index % ${3 * width};
          let row = index / ${3 * width};
          let slot = col / ${width};
          let h = (col % ${width}) / ${dh};
          let d = col % ${dh};
          let nn = row / uniforms.T;
          let tt = row % uniforms.T;
          let at = (h * uniforms.N + nn) * uniforms.T + tt;
          var r = 0.0;
          if (slot == 0) {
            if (tt < uniforms.TQ) {
              r = Q[((h * uniforms.N + nn) * uniforms.TQ + tt) * ${dh} + d] * uniforms.QS;
            }
          } else if (slot == 1) {
            r = K[at * ${dh} + d];
          } else {
            r = V[at * ${dh} + d];
          }`,
      { uniforms: "N : i32, T : i32, TQ : i32, QS : f32," },
    );
  const uniforms = [...[n, t, tq].map(int32), float32(qScale)];
  return dispatch("HeadsToRows", [dq, dk, dv], 0, make, uniforms);
}

// ---------------------------------------------------------------------------------------------
// The LoRA factors' block-diagonal layout

/**
 * Every block's `scale`·B_q, B_k, B_v ([3·layers, width, r], stacked per block q, k, v) laid out
 * block-diagonally as B̃ [layers, 3r, 3·width]: slot j's Bᵀ in rows j·r.., columns j·width..,
 * zeros elsewhere (Aᵀ·B̃ is then A_qᵀB_qᵀ | A_kᵀB_kᵀ | A_vᵀB_vᵀ side by side). One kernel
 * instead of a product by the scale, a transpose and a product by the identity's slots.
 *
 * Only on the `webgpu` backend, e.g. `const bTilde = wgslBlockDiagonal(packedB, 2);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslBlockDiagonal(b: tf.Tensor, scale: number): tf.Tensor {
  const [l3, width, rank] = b.shape as number[];
  if (b.rank !== 3 || l3 % 3 !== 0 || l3 === 0 || width === 0 || rank === 0) {
    throw new Error(`webgpu_kernels block_diagonal: B ${b.shape} is not [3·layers, width, r]`);
  }
  const layers = l3 / 3;
  const make = () =>
    elementProgram(
      `block_diagonal_${width}_${rank}`,
      ["B"],
      [layers, 3 * rank, 3 * width],
      `let col = index % ${3 * width};
          let row = (index / ${3 * width}) % ${3 * rank};
          let l = index / ${9 * rank * width};
          let j = row / ${rank};
          var r = 0.0;
          if (col / ${width} == j) {
            r = B[((3 * l + j) * ${width} + col % ${width}) * ${rank} + row % ${rank}] * uniforms.S;
          }`,
      { uniforms: "S : f32," },
    );
  return dispatch("BlockDiagonal", [b], 0, make, [float32(scale)]);
}

/**
 * The gradient of {@link wgslBlockDiagonal}: `scale` times the diagonal blocks of `d`
 * [layers, 3r, 3·width], transposed back to [3·layers, width, r]. One kernel instead of a product by
 * the slots, a sum, a transpose and a product by the scale. `d` may also be the layers' entries
 * of that stack, [3r, 3·width] each (the blocks' gradients as the backward pass makes them), read
 * each where it lies: the stack is then not built (one concatenation fewer), and the kernel binds
 * one buffer per layer, as many as {@link wgslBindable} allows. Either way, the same values.
 *
 * Only on the `webgpu` backend, e.g. `const dB = wgslBlockDiagonalGrad(dBTilde, 2);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslBlockDiagonalGrad(
  d: tf.Tensor | readonly tf.Tensor[],
  scale: number,
): tf.Tensor {
  const list = Array.isArray(d) ? d as readonly tf.Tensor[] : null;
  const entry = list ? list[0]?.shape ?? [] : (d as tf.Tensor).shape.slice(1);
  const layers = list ? list.length : (d as tf.Tensor).shape[0];
  const [r3, w3] = entry as number[];
  if (
    entry.length !== 2 || r3 % 3 !== 0 || w3 % 3 !== 0 || layers === 0 || r3 === 0 || w3 === 0 ||
    (list !== null && list.some((t) => !tf.util.arraysEqual(t.shape, entry))) ||
    (list === null && (d as tf.Tensor).rank !== 3)
  ) {
    const what = list
      ? `[${list.map((t) => `[${t.shape}]`).join(", ")}]`
      : `${(d as tf.Tensor).shape}`;
    throw new Error(
      `webgpu_kernels block_diagonal_grad: ${what} is not [layers, 3r, 3·width] (or layers × [3r, 3·width])`,
    );
  }
  if (list && !wgslBindable(layers)) {
    throw new Error(
      `webgpu_kernels block_diagonal_grad: ${layers} tensors are more than this device binds in one kernel (see wgslBindable)`,
    );
  }
  const [rank, width] = [r3 / 3, w3 / 3];
  // Entry l's row j·r + ρ, column j·width + c: in the stack at D's row l·3r + j·r + ρ; in a list
  // at row j·r + ρ of D<l> (a switch on l: one binding per layer).
  const at = `(j * ${rank} + rho) * ${w3} + j * ${width} + c`;
  const read = list
    ? `var x = 0.0;
          switch (s3 / 3) {
            ${list.map((_, l) => `case ${l}: { x = D${l}[${at}]; }`).join("\n            ")}
            default: {}
          }`
    : `let x = D[(s3 / 3) * ${r3 * w3} + ${at}];`;
  const make = () =>
    elementProgram(
      `block_diagonal_grad_${width}_${rank}${list ? `_of_${layers}` : ""}`,
      list ? list.map((_, l) => `D${l}`) : ["D"],
      [3 * layers, width, rank],
      `let rho = index % ${rank};
          let c = (index / ${rank}) % ${width};
          let s3 = index / ${rank * width};
          let j = s3 % 3;
          ${read}
          let r = x * uniforms.S;`,
      { uniforms: "S : f32," },
    );
  return dispatch("BlockDiagonalGrad", list ? [...list] : [d as tf.Tensor], 0, make, [
    float32(scale),
  ]);
}

// ---------------------------------------------------------------------------------------------
// The embedding's tokens

/**
 * The residual stream entering the first block, [N·T, width]: per image its class token, the
 * class embedding `cls` ([width] elements, any shape), then its T − 1 ≥ 1 rows of `patches`
 * [N·(T − 1), width] (the patch embeddings), every token plus its row of the position embedding
 * `position` [T, width]:
 * `concat([cls, patches], 1) + position` in one kernel instead of a broadcast of the class
 * embedding (tfjs' `Tile`), a concatenation and an addition. The same single addition per value,
 * so the same values as that composition.
 *
 * Only on the `webgpu` backend, e.g. `const tokens = wgslTokens(patches, cls, position, n);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslTokens(
  patches: tf.Tensor,
  cls: tf.Tensor,
  position: tf.Tensor,
  n: number,
): tf.Tensor {
  const [t, width] = position.shape as number[];
  const [rows, cols] = patches.shape as number[];
  if (
    position.rank !== 2 || patches.rank !== 2 || cols !== width || cls.size !== width ||
    !Number.isInteger(n) || n < 1 || t < 2 || rows !== n * (t - 1) || width === 0
  ) {
    throw new Error(
      `webgpu_kernels tokens: patches ${patches.shape}, class embedding ${cls.shape} and position ` +
        `embedding ${position.shape} are not [${n}·(T − 1), width], [width] and [T, width] ` +
        `(T ≥ 2: at least one patch)`,
    );
  }
  const make = () =>
    elementProgram(
      `tokens_${width}`,
      ["E", "CLS", "P"],
      [n * t, width],
      `let c = index % ${width};
          let row = index / ${width};
          let tt = row % uniforms.T;
          var x = CLS[c];
          if (tt > 0) {
            x = E[((row / uniforms.T) * (uniforms.T - 1) + tt - 1) * ${width} + c];
          }
          let r = x + P[tt * ${width} + c];`,
      { uniforms: "T : i32," },
    );
  return dispatch("Tokens", [patches, cls, position], 0, make, [int32(t)]);
}

// ---------------------------------------------------------------------------------------------
// The optimiser

/**
 * One step of PyTorch's SGD on a parameter in two kernels (instead of six): `buf' = μ·buf + d`
 * with `d = g + wd·p`, then `p' = p − lr·buf'`. Returns `[p', buf']`. The rates are uniforms, so
 * a learning-rate schedule compiles nothing new.
 *
 * Only on the `webgpu` backend, e.g. `const [p1, buf1] = wgslSgdStep(p, g, buf, { lr: 0.01, momentum: 0.9, weightDecay: 0 });` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslSgdStep(
  p: tf.Tensor,
  g: tf.Tensor,
  buf: tf.Tensor,
  rates: { lr: number; momentum: number; weightDecay: number },
): [tf.Tensor, tf.Tensor] {
  if (!tf.util.arraysEqual(p.shape, g.shape) || !tf.util.arraysEqual(p.shape, buf.shape)) {
    throw new Error(`webgpu_kernels sgd: p ${p.shape}, g ${g.shape}, buf ${buf.shape} must agree`);
  }
  const { lr, momentum, weightDecay } = rates;
  // Flat: the kernels are element-wise, and a scalar parameter (the logit scale) is one element.
  const original = p.shape;
  const shape = [p.size];
  [p, g, buf] = [p, g, buf].map((t) => tf.reshape(t, shape));
  const momentumProgram = () =>
    elementProgram(
      "sgd_momentum",
      ["P", "G", "M"],
      shape,
      "let r = M[index] * uniforms.MU + (G[index] + P[index] * uniforms.WD);",
      { uniforms: "MU : f32, WD : f32," },
    );
  const next = dispatch("SgdMomentum", [p, g, buf], 0, momentumProgram, [
    float32(momentum),
    float32(weightDecay),
  ]);
  const stepProgram = () =>
    elementProgram(
      "sgd_step",
      ["P", "M"],
      shape,
      "let r = P[index] - M[index] * uniforms.LR;",
      { uniforms: "LR : f32," },
    );
  const stepped = dispatch("SgdStep", [p, next], 0, stepProgram, [float32(lr)]);
  return [tf.reshape(stepped, original), tf.reshape(next, original)];
}

// ---------------------------------------------------------------------------------------------
// The prototype loss

/**
 * The loop iterations one invocation of the prototype-loss kernels makes, counted generously, for
 * rows of width `d` against `c` classes: the gradient kernel's per row (the norm, the logits, two
 * passes of `dû = Σ_c ∂l_c·T_c` over the row); the sum kernels' per invocation, ⌈N/64⌉ rows each
 * costing the row loop itself, the norm (d), the logits (c·(d + 1)), the softmax sum (c) and the
 * ∂/∂s kernel's pass over the classes (c), plus the six steps of the final tree sum. On lavapipe
 * the count that runs out also depends on how LLVM unrolls the loops: a naive count of 64,288
 * (d 64, c 2, N 20,992) already returned a loss 97 % off, so {@link prototypeBounded} keeps a
 * margin below the 65,535 budget.
 */
function prototypeIterations(n: number, c: number, d: number): number {
  return Math.max(
    d + c * d + 3 * c + 2 * c * d + 2 * d,
    Math.ceil(n / ROW_GROUP) * (1 + d + c * (d + 1) + 2 * c) + 6,
  );
}

/** The iterations {@link prototypeBounded} allows: lavapipe's 65,535, less a margin. */
const PROTOTYPE_ITERATION_BUDGET = 60_000;

/** The most classes the prototype-loss kernels keep in a private array per invocation. */
export const WGSL_MAX_CLASSES = 256;

/**
 * Whether {@link wgslPrototypeLoss} takes `n` features of width `d` against `c` prototypes: the
 * fused kernels in use, at most {@link WGSL_MAX_CLASSES} classes, and every invocation within
 * 60,000 of lavapipe's 65,535 loop iterations as {@link prototypeIterations} counts them (see
 * {@link WGSL_MAX_ROW}; ViT-B/16's 512-wide features against 8 classes make about 13,900).
 * Otherwise the loss keeps the tfjs composition.
 */
export function wgslPrototypeFits(n: number, c: number, d: number): boolean {
  return wgslKernelsEnabled() && prototypeBounded(n, c, d);
}

/** The bounds of {@link wgslPrototypeFits}, backend aside. */
function prototypeBounded(n: number, c: number, d: number): boolean {
  return c >= 1 && c <= WGSL_MAX_CLASSES &&
    prototypeIterations(n, c, d) <= PROTOTYPE_ITERATION_BUDGET;
}

/**
 * A row's logits `l_c = e^s·⟨f/‖f‖, T_c⟩` (`s` the logit-scale parameter), their maximum `mx` and
 * `lz = log Σ exp(l − mx)`, as tfjs' `logSoftmax` takes them: log p_c = l_c − mx − lz.
 */
const PROTO_LOGITS = `var ss = 0.0;
        for (var j = 0; j < D; j++) { ss += F[o + j] * F[o + j]; }
        let inv = inverseSqrt(ss);
        let scale = exp(LS[0]);
        var logits : array<f32, C>;
        var mx = -3.402823e+38;
        for (var c = 0; c < C; c++) {
          var dot = 0.0;
          for (var j = 0; j < D; j++) { dot += F[o + j] * inv * T[c * D + j]; }
          logits[c] = dot * scale;
          mx = max(mx, logits[c]);
        }
        var se = 0.0;
        for (var c = 0; c < C; c++) { se += exp(logits[c] - mx); }
        let lz = log(se);`;

/**
 * A sum over the batch's rows in one workgroup of 64 (invocation t takes rows t, t + 64, …, and
 * the row kernels' `group` sum adds up what they hold), `term` the row's share given its logits
 * and label `y`; the result, times `factor`, is the output's single element.
 */
function protoSumProgram(
  kind: string,
  n: number,
  c: number,
  d: number,
  term: string,
  factor: string,
): Program {
  return {
    variableNames: kind === "proto_loss" ? ["F", "T", "LS", "Y"] : ["F", "T", "LS", "Y", "DY"],
    outputShape: [1],
    shaderKey: `deer_${kind}_${n}_${c}_${d}`,
    dispatchLayout: { x: [0] },
    dispatch: [1, 1, 1],
    workgroupSize: [ROW_GROUP, 1, 1],
    size: true,
    getUserCode: () => `
      const N : i32 = ${n};
      const C : i32 = ${c};
      const D : i32 = ${d};
      const NT : i32 = ${ROW_GROUP};
      ${ROW_SUM.group}
      fn main(index : i32) {
        let t = index % NT;
        var acc = 0.0;
        for (var i = t; i < N; i += NT) {
          let o = i * D;
          let y = Y[i];
          ${PROTO_LOGITS}
          ${term}
        }
        let total = deerRowSum(vec2<f32>(acc, 0.0), t).x;
        // The output's one element (uniforms.size is 1; tfjs binds the uniforms only where the
        // shader reads them).
        if (t < uniforms.size) { setOutputAtIndex(t, total * ${factor}); }
      }`,
  };
}

/**
 * The prototype loss of lib/fl/local.ts `prototypeLoss` — the mean over the batch of
 * `−log softmax(e^s·normalize(f)·Tᵀ)_y` — in one kernel, and its gradients in two: ∂/∂f per row
 * (`(dû − û·⟨dû, û⟩)/‖f‖`, `dû = Σ_c ∂l_c·e^s·T_c`, `∂l = (p − onehot)·dy/N`) and ∂/∂s (`Σ ∂l·l`,
 * a sum over the batch). Nothing is saved: the gradient kernels compute the logits again from f.
 * Three dispatches where the tfjs composition takes about 25. `labels` int32 [N], `prototypes`
 * [C, D] (unit rows), `logitScale` the scalar s.
 *
 * Only on the `webgpu` backend and where {@link wgslPrototypeFits}, e.g. `const loss = wgslPrototypeLoss(f, protos, s, y);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslPrototypeLoss(
  features: tf.Tensor2D,
  prototypes: tf.Tensor2D,
  logitScale: tf.Scalar,
  labels: tf.Tensor1D,
): tf.Scalar {
  const [n, d] = features.shape;
  const [c, dp] = prototypes.shape;
  if (dp !== d || labels.shape[0] !== n || logitScale.size !== 1) {
    throw new Error(
      `webgpu_kernels prototype loss: features ${features.shape}, prototypes ${prototypes.shape}, ` +
        `labels ${labels.shape}, scale ${logitScale.shape} do not fit ([N, D], [C, D], [N], [])`,
    );
  }
  if (labels.dtype !== "int32") {
    throw new Error(`webgpu_kernels prototype loss: labels must be int32, got ${labels.dtype}`);
  }
  if (!prototypeBounded(n, c, d)) {
    throw new Error(
      `webgpu_kernels prototype loss: ${n}×${d} features against ${c} classes exceed the ` +
        `kernels' bounds (wgslPrototypeFits)`,
    );
  }
  const ls = tf.reshape(logitScale, [1]);
  const loss = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [f, s] = args as tf.Tensor[];
    (args[2] as tf.GradSaveFunc)([f, s]);
    const value = dispatch(
      "proto_loss",
      [f, prototypes, s, labels],
      0,
      () =>
        protoSumProgram(
          "proto_loss",
          n,
          c,
          d,
          // A label outside 0..C−1 matches no class: the row adds nothing, as in the tf.oneHot
          // composition (WGSL would clamp the index and read another class's logit).
          "acc += select(0.0, lz + mx - logits[clamp(y, 0, C - 1)], y >= 0 && y < C);",
          `${1 / n}`,
        ),
      undefined,
      [3],
    );
    return {
      value: tf.reshape(value, []),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [f, s] = saved;
        const g = tf.reshape(dy, [1]);
        const inputs = [f, prototypes, s, labels, g];
        const dScale = dispatch(
          "proto_dscale",
          inputs,
          0,
          () =>
            protoSumProgram(
              "proto_dscale",
              n,
              c,
              d,
              `for (var c = 0; c < C; c++) {
            acc += select(0.0, (exp(logits[c] - mx - lz) - select(0.0, 1.0, c == y)) * logits[c],
              y >= 0 && y < C);
          }`,
              `DY[0] * ${1 / n}`,
            ),
          undefined,
          [3],
        );
        const dF = dispatch(
          "proto_dfeatures",
          inputs,
          0,
          () => ({
            variableNames: ["F", "T", "LS", "Y", "DY"],
            outputShape: [n, d],
            shaderKey: `deer_proto_dfeatures_${n}_${c}_${d}`,
            dispatchLayout: { x: [0, 1] },
            dispatch: [Math.ceil(n / WORKGROUP), 1, 1],
            workgroupSize: [WORKGROUP, 1, 1],
            size: true,
            getUserCode: () => `
            const C : i32 = ${c};
            const D : i32 = ${d};
            fn main(i : i32) {
              if (i < uniforms.size / D) {
                let o = i * D;
                let y = Y[i];
                ${PROTO_LOGITS}
                // ∂l_c·e^s: the logits' gradient, times the scale the product carries.
                var dl : array<f32, C>;
                for (var c = 0; c < C; c++) {
                  let p = exp(logits[c] - mx - lz);
                  // A row whose label matches no class has no loss, so no gradient.
                  dl[c] = select(0.0, (p - select(0.0, 1.0, c == y)) * (DY[0] * ${1 / n}) * scale,
                    y >= 0 && y < C);
                }
                var along = 0.0;
                for (var j = 0; j < D; j++) {
                  var du = 0.0;
                  for (var c = 0; c < C; c++) { du += dl[c] * T[c * D + j]; }
                  along += du * F[o + j] * inv;
                }
                for (var j = 0; j < D; j++) {
                  var du = 0.0;
                  for (var c = 0; c < C; c++) { du += dl[c] * T[c * D + j]; }
                  setOutputAtIndex(o + j, (du - F[o + j] * inv * along) * inv);
                }
              }
            }`,
          }),
          undefined,
          [3],
        );
        return [dF, tf.reshape(dScale, s.shape)];
      },
    };
  });
  return loss(features, ls) as tf.Scalar;
}

// ---------------------------------------------------------------------------------------------
// The matrix product

/** Output tile shapes of {@link wgslMatMul}: rows × columns of C per workgroup of 16×16 threads. */
export type MatMulTile = "64x64" | "128x64" | "128x128";

/** Every {@link MatMulTile}, in order of size (the microbenchmark runs each). */
export const MATMUL_TILES: readonly MatMulTile[] = ["64x64", "128x64", "128x128"];

/** Depth of one K-tile staged in workgroup memory (unrolled in the inner loop). */
const MM_TK = 16;

/**
 * The smallest product {@link wgslMatMulUsed} hands to the kernel: batch·M·N ≥ 2^18 outputs
 * (64 tiles of 64×64), and M, N ≥ 32. Below that a product is a few workgroups either way, and
 * tfjs-webgpu's own programs for small outputs (and its split-K guard, lib/backend_webgpu.ts) fit
 * better. A first choice, not tuned on a GPU: `DEER_WGSL_MM_MIN_OUTPUTS` overrides the count (0
 * sends every product the kernel takes to it; the tests use that).
 */
export const WGSL_MM_MIN_OUTPUTS = 2 ** 18;

/**
 * The longest inner dimension the kernel takes: its only loop runs ⌈K/16⌉ times (everything
 * inside is unrolled), and lavapipe ends a shader's loops after 65,535 iterations in all (see
 * {@link WGSL_MAX_ROW}): 16·65,535 = 1,048,560 keeps ⌈K/16⌉ ≤ 65,535. Measured on lavapipe:
 * a [1×1,048,560]·[1,048,560×1] product sums every term (524,316.6 against 524,313.1 in float64,
 * float32 rounding of a sequential sum). Longer products stay `tf.matMul`.
 */
export const WGSL_MM_MAX_K = 16 * 65535;

/**
 * Matrix `index` of a stack (a tensor [count, …], the entry's shape `stack.shape.slice(1)`, at
 * least 2-D), which the product kernels read where it lies: a slice would be one more dispatch
 * and a copy. The fast path keeps every block's LoRA factors stacked, [layers, 3r, width], and
 * multiplies block i's in place ({@link stackedMatrix}).
 */
export interface StackedMatrix {
  readonly kind: "stacked";
  readonly stack: tf.Tensor;
  readonly index: number;
}

/**
 * A batch of matrices that are tensors of their own, entry i `tensors[i]` (2-D, all of one
 * shape), which the product kernels read each where it lies (one binding per entry): a batched
 * product of per-block operands without stacking them first, which would be a concatenation.
 */
export interface MatrixList {
  readonly kind: "list";
  readonly tensors: readonly tf.Tensor[];
}

/**
 * An operand of the product kernels: a tensor, one matrix of a stack read in place, or a batch of
 * matrices in tensors of their own.
 */
export type MatMulOperand = tf.Tensor | StackedMatrix | MatrixList;

/**
 * Matrix `index` of `stack` as an operand of {@link wgslMatMul} and {@link wgslMatMulAdd},
 * checked: `stack` of rank ≥ 3, an integer index within its first axis (the dtype is the
 * product's to check: only float32 runs as the kernel).
 *
 * Only on the `webgpu` backend, e.g. `wgslMatMul(h, stackedMatrix(factors, 3), false, true)` (see tests/webgpu_wgsl.test.ts).
 */
export function stackedMatrix(stack: tf.Tensor, index: number): StackedMatrix {
  if (stack.rank < 3) {
    throw new Error(
      `webgpu_kernels stackedMatrix: a stack of matrices has rank ≥ 3, got shape ${stack.shape}`,
    );
  }
  if (!Number.isInteger(index) || index < 0 || index >= stack.shape[0]) {
    throw new Error(
      `webgpu_kernels stackedMatrix: index ${index} is outside 0..${
        stack.shape[0] - 1
      } (stack ${stack.shape})`,
    );
  }
  return { kind: "stacked", stack, index };
}

/**
 * The matrices `tensors` as one batched operand of {@link wgslMatMul} and {@link wgslMatMulAdd}
 * (batch entry i is `tensors[i]`), checked: at least one, all 2-D and of one shape. The product
 * binds each tensor (one storage buffer each: {@link wgslMatMulUsed} says whether this device
 * takes that many) and reads each where it lies.
 *
 * Only on the `webgpu` backend, e.g. `wgslMatMul(matrixList(m), matrixList(h), true)` (see tests/webgpu_wgsl.test.ts).
 */
export function matrixList(tensors: readonly tf.Tensor[]): MatrixList {
  const shape = tensors[0]?.shape ?? [];
  if (shape.length !== 2 || tensors.some((t) => !tf.util.arraysEqual(t.shape, shape))) {
    throw new Error(
      `webgpu_kernels matrixList: the matrices must be 2-D and of one shape, got ${
        tensors.map((t) => `[${t.shape}]`).join(", ") || "none"
      }`,
    );
  }
  return { kind: "list", tensors: [...tensors] };
}

/** Whether an operand is a {@link StackedMatrix} (a tensor has a `stack` method: not that). */
function isStacked(o: MatMulOperand): o is StackedMatrix {
  return (o as Partial<StackedMatrix>).kind === "stacked";
}

/** Whether an operand is a {@link MatrixList}. */
function isList(o: MatMulOperand): o is MatrixList {
  return (o as Partial<MatrixList>).kind === "list";
}

/** The shape an operand has as a matrix (a stacked matrix: its entry's; a list: [count, …]). */
function operandShape(o: MatMulOperand): number[] {
  if (isList(o)) return [o.tensors.length, ...o.tensors[0].shape];
  return isStacked(o) ? o.stack.shape.slice(1) : o.shape;
}

/**
 * The tensor a kernel binds for an operand (a stacked matrix: the whole stack; a
 * {@link MatrixList} is several, and refused).
 */
export function operandTensor(o: MatMulOperand): tf.Tensor {
  if (isList(o)) throw new Error("webgpu_kernels operandTensor: a matrix list is several tensors");
  return isStacked(o) ? o.stack : o;
}

/** The tensors a kernel binds for an operand, in order. */
function boundTensors(o: MatMulOperand): tf.Tensor[] {
  return isList(o) ? [...o.tensors] : [operandTensor(o)];
}

/** Where an operand's elements start in the tensor bound for it. */
function operandBase(o: MatMulOperand): number {
  return isStacked(o) ? o.index * tf.util.sizeFromShape(operandShape(o)) : 0;
}

/**
 * An operand as a tensor of its own: a stacked matrix sliced out (one dispatch), a matrix list
 * stacked (one), for the paths that cannot read it in place.
 */
export function materialize(o: MatMulOperand): tf.Tensor {
  if (isList(o)) return tf.stack([...o.tensors]);
  if (!isStacked(o)) return o;
  const shape = operandShape(o);
  const begin = [o.index, ...shape.map(() => 0)];
  return tf.reshape(tf.slice(o.stack, begin, [1, ...shape]), shape);
}

/** The kernel's view of a product: batch sizes, M×K·K×N, and whether it takes it at all. */
interface MatMulPlan {
  m: number;
  n: number;
  k: number;
  batch: number;
  /** Elements between consecutive batch entries of a and b (0: broadcast, one matrix). */
  strideA: number;
  strideB: number;
  /** Where a's and b's first elements lie in the tensors bound (non-zero for stacked matrices). */
  baseA: number;
  baseB: number;
  outShape: number[];
}

/** How the kernel would run `a·b` (`ta`, `tb`: transposed), or why it cannot. */
function matMulPlan(
  a: MatMulOperand,
  b: MatMulOperand,
  ta: boolean,
  tb: boolean,
): MatMulPlan | string {
  const bound = [...boundTensors(a), ...boundTensors(b)];
  if (bound.some((t) => t.dtype !== "float32")) return "not float32";
  // The operands' tensors, the output and an addend (where there is one) are a storage buffer
  // each.
  if ((isList(a) || isList(b)) && bound.length + 2 > storageBuffers()) {
    return `${bound.length} tensors, the output and an addend are more than the ${storageBuffers()} storage buffers this device binds in one kernel`;
  }
  const [sa, sb] = [operandShape(a), operandShape(b)];
  if (sa.length < 2 || sb.length < 2) return "rank below 2";
  const [ra, rb] = [sa.length, sb.length];
  const m = ta ? sa[ra - 1] : sa[ra - 2];
  const ka = ta ? sa[ra - 2] : sa[ra - 1];
  const kb = tb ? sb[rb - 1] : sb[rb - 2];
  const n = tb ? sb[rb - 2] : sb[rb - 1];
  if (ka !== kb) return `inner dimensions ${ka} and ${kb} differ`;
  const batchA = sa.slice(0, -2), batchB = sb.slice(0, -2);
  let batchShape: number[];
  try {
    batchShape = tf.backend_util.assertAndGetBroadcastShape(batchA, batchB);
  } catch {
    return `batch shapes ${batchA} and ${batchB} do not broadcast`;
  }
  const size = (s: number[]) => s.reduce((x, y) => x * y, 1);
  const [na, nb, batch] = [size(batchA), size(batchB), size(batchShape)];
  // One flat batch index serves both when each is either the whole batch or a single matrix.
  if ((na !== batch && na !== 1) || (nb !== batch && nb !== 1)) {
    return `batch shapes ${batchA} and ${batchB} broadcast along an inner batch axis`;
  }
  if (m === 0 || n === 0 || ka === 0 || batch === 0) return "empty";
  if (ka > WGSL_MM_MAX_K) return `inner dimension ${ka} above ${WGSL_MM_MAX_K}`;
  if (Math.ceil(n / 64) > 65535 || Math.ceil(m / 64) > 65535 || batch > 65535) {
    return "more workgroups along one axis than WebGPU's default limit of 65,535";
  }
  return {
    m,
    n,
    k: ka,
    batch,
    // A list's entries are each bound at their own start.
    strideA: na === 1 || isList(a) ? 0 : m * ka,
    strideB: nb === 1 || isList(b) ? 0 : ka * n,
    baseA: operandBase(a),
    baseB: operandBase(b),
    outShape: [...batchShape, m, n],
  };
}

/**
 * Whether the fast path's products go to {@link wgslMatMul}: the WGSL kernels are on
 * ({@link wgslKernelsEnabled}), the kernel takes the shapes, and the product is large enough
 * ({@link WGSL_MM_MIN_OUTPUTS}) or reads a {@link StackedMatrix} or a {@link MatrixList} (which
 * only the kernel reads in place: any size then, where the device binds a list's tensors).
 */
export function wgslMatMulUsed(
  a: MatMulOperand,
  b: MatMulOperand,
  ta = false,
  tb = false,
): boolean {
  return usedPlan(a, b, ta, tb) !== null;
}

/** The kernel's plan for `a·b` when {@link wgslMatMulUsed} says yes, else null. */
function usedPlan(
  a: MatMulOperand,
  b: MatMulOperand,
  ta: boolean,
  tb: boolean,
): MatMulPlan | null {
  if (!wgslKernelsEnabled()) return null;
  const plan = matMulPlan(a, b, ta, tb);
  if (typeof plan === "string") return null;
  if (isStacked(a) || isStacked(b) || isList(a) || isList(b)) return plan;
  const flag = Deno.env.get("DEER_WGSL_MM_MIN_OUTPUTS");
  const min = flag !== undefined && flag !== "" ? Number(flag) : WGSL_MM_MIN_OUTPUTS;
  if (!Number.isFinite(min)) {
    throw new Error(`DEER_WGSL_MM_MIN_OUTPUTS=${flag} is not a number (e.g. 0, 262144)`);
  }
  const large = plan.batch * plan.m * plan.n >= min && plan.m >= 32 && plan.n >= 32;
  return min === 0 || large ? plan : null;
}

/**
 * The WGSL source of the tiled product. Each workgroup of 16×16 threads computes a TM×TN tile of
 * C (TM = 16·RM, TN = 64·CN); thread (tx, ty) owns RM rows × 4·CN columns, RM/4 row groups of 4
 * rows (`ty·4 + 64·g + i`) and CN column groups of 4 columns (`tx·4 + 64·h + j`), accumulated in
 * RM·CN `vec4` registers (64×64: RM 4, CN 1; 128×64: 8, 1; 128×128: 8, 2, an 8×8 block). Per
 * K-tile of 16, the threads stage A's TM×16 and B's 16×TN in workgroup memory (A stored k-major,
 * so that a thread reads its 4 rows as one vec4, as it reads its 4 columns of B), with vec4 global
 * loads where the contiguous dimension is a multiple of 4 (and vec4 stores of C where N is), then
 * run 16 unrolled steps of RM/4 vec4 loads of A, CN of B, and RM·CN vec4 multiply-adds:
 * 16·RM·CN·4 multiply-adds per 16·(RM/4 + CN) reads of workgroup memory. The 128×128 tile stages
 * (128·16 + 16·128)·4 B = 16 KiB, exactly WebGPU's default (and guaranteed minimum)
 * `maxComputeWorkgroupStorageSize`, so it keeps the K-tile of 16 (a K-tile of 8 would double the
 * loop's trips and halve {@link WGSL_MM_MAX_K}). The 128×128 tile also prefetches: each thread
 * reads its share of the next K-tile (four vec4 or sixteen scalars) into registers before this
 * K-tile's multiply-adds and writes them to workgroup memory after the barrier that ends them, so
 * the global reads are in flight during the arithmetic (`DEER_WGSL_MM_PREFETCH=0`: without, for
 * an A/B comparison). Out-of-range rows, columns and depths load zeros and store nothing.
 */
function matMulSource(
  rm: number,
  cn: number,
  ta: boolean,
  tb: boolean,
  va: boolean,
  vb: boolean,
  vo: boolean,
  prefetch: boolean,
  addend: boolean,
  layout: OutputLayout = "plain",
  lists: [number, number] = [0, 0],
): string {
  const tm = 16 * rm, groups = rm / 4, tmq = tm / 4, tn = 64 * cn, tnq = tn / 4;
  // One load per entry: its position in the tile (`pos`, from localIndex), its global position
  // (`glob`, from k0), whether that is in range, the read, and how `v` is put in the tile.
  interface Load {
    pos: string;
    glob: string;
    vec: boolean;
    cond: string;
    read: string;
    put: string;
  }
  const loads: Load[] = [];
  // A tile → As[kk·tmq + row/4][row%4].
  const loadsA = (tm * MM_TK) / (va ? 4 : 1) / 256;
  for (let l = 0; l < loadsA; l++) {
    const e = `(i32(localIndex) + ${l * 256})`;
    const cond = "gm < uniforms.M && gk < uniforms.K";
    if (!ta && va) {
      // [M, K] rows, 4 depths per load (K % 4 == 0).
      loads.push({
        pos: `let row = ${e} / 4; let kq = ${e} % 4;`,
        glob: "let gm = m0 + row; let gk = k0 + kq * 4;",
        vec: true,
        cond,
        read: "A[(aOff + gm * uniforms.K + gk) / 4]",
        put: `As[(kq * 4) * ${tmq} + row / 4][row % 4] = v.x;
        As[(kq * 4 + 1) * ${tmq} + row / 4][row % 4] = v.y;
        As[(kq * 4 + 2) * ${tmq} + row / 4][row % 4] = v.z;
        As[(kq * 4 + 3) * ${tmq} + row / 4][row % 4] = v.w;`,
      });
    } else if (!ta) {
      loads.push({
        pos: `let row = ${e} / ${MM_TK}; let kk = ${e} % ${MM_TK};`,
        glob: "let gm = m0 + row; let gk = k0 + kk;",
        vec: false,
        cond,
        read: "A[aOff + gm * uniforms.K + gk]",
        put: `As[kk * ${tmq} + row / 4][row % 4] = v;`,
      });
    } else if (va) {
      // [K, M] rows (a transposed), 4 rows of C per load (M % 4 == 0).
      loads.push({
        pos: `let kk = ${e} / ${tmq}; let mq = ${e} % ${tmq};`,
        glob: "let gm = m0 + mq * 4; let gk = k0 + kk;",
        vec: true,
        cond,
        read: "A[(aOff + gk * uniforms.M + gm) / 4]",
        put: `As[kk * ${tmq} + mq] = v;`,
      });
    } else {
      loads.push({
        pos: `let kk = ${e} / ${tm}; let row = ${e} % ${tm};`,
        glob: "let gm = m0 + row; let gk = k0 + kk;",
        vec: false,
        cond,
        read: "A[aOff + gk * uniforms.M + gm]",
        put: `As[kk * ${tmq} + row / 4][row % 4] = v;`,
      });
    }
  }
  // B tile → Bs[kk·tnq + col/4][col%4].
  const loadsB = (tn * MM_TK) / (vb ? 4 : 1) / 256;
  for (let l = 0; l < loadsB; l++) {
    const e = `(i32(localIndex) + ${l * 256})`;
    const cond = "gn < uniforms.N && gk < uniforms.K";
    if (!tb && vb) {
      // [K, N] rows, 4 columns per load (N % 4 == 0).
      loads.push({
        pos: `let kk = ${e} / ${tnq}; let nq = ${e} % ${tnq};`,
        glob: "let gn = n0 + nq * 4; let gk = k0 + kk;",
        vec: true,
        cond,
        read: "B[(bOff + gk * uniforms.N + gn) / 4]",
        put: `Bs[kk * ${tnq} + nq] = v;`,
      });
    } else if (!tb) {
      loads.push({
        pos: `let kk = ${e} / ${tn}; let col = ${e} % ${tn};`,
        glob: "let gn = n0 + col; let gk = k0 + kk;",
        vec: false,
        cond,
        read: "B[bOff + gk * uniforms.N + gn]",
        put: `Bs[kk * ${tnq} + col / 4][col % 4] = v;`,
      });
    } else if (vb) {
      // [N, K] rows (b transposed), 4 depths per load (K % 4 == 0).
      loads.push({
        pos: `let col = ${e} / 4; let kq = ${e} % 4;`,
        glob: "let gn = n0 + col; let gk = k0 + kq * 4;",
        vec: true,
        cond,
        read: "B[(bOff + gn * uniforms.K + gk) / 4]",
        put: `Bs[(kq * 4) * ${tnq} + col / 4][col % 4] = v.x;
        Bs[(kq * 4 + 1) * ${tnq} + col / 4][col % 4] = v.y;
        Bs[(kq * 4 + 2) * ${tnq} + col / 4][col % 4] = v.z;
        Bs[(kq * 4 + 3) * ${tnq} + col / 4][col % 4] = v.w;`,
      });
    } else {
      loads.push({
        pos: `let col = ${e} / ${MM_TK}; let kk = ${e} % ${MM_TK};`,
        glob: "let gn = n0 + col; let gk = k0 + kk;",
        vec: false,
        cond,
        read: "B[bOff + gn * uniforms.K + gk]",
        put: `Bs[kk * ${tnq} + col / 4][col % 4] = v;`,
      });
    }
  }
  // A matrix list's entries are bindings A0, A1, … (B0, …): its reads go through readA (readB),
  // which picks the batch entry's binding.
  for (const d of loads) {
    const [, name, at] = d.read.match(/^([AB])\[(.*)\]$/)!;
    if (lists[name === "A" ? 0 : 1] > 0) d.read = `read${name}(${at})`;
  }
  const readers = (["A", "B"] as const).map((name, i) => {
    const count = lists[i];
    if (count === 0) return "";
    const type = (i === 0 ? va : vb) ? "vec4<f32>" : "f32";
    const cases = Array.from(
      { length: count - 1 },
      (_, e) => `case ${e + 1}: { v = ${name}${e + 1}[i]; }`,
    );
    return `
    fn read${name}(i : i32) -> ${type} {
      var v : ${type};
      switch (i32(workgroupId.z)) {
        ${cases.join("\n        ")}
        default: { v = ${name}0[i]; }
      }
      return v;
    }`;
  }).join("");
  const zero = (d: Load) => d.vec ? "vec4<f32>(0.0)" : "0.0";
  // Without prefetch: read into v and put it in the tile, per K-tile. With it: the next K-tile's
  // reads go to registers p0, p1, … (`fetch`, issued before this K-tile's multiply-adds) and are
  // put in the tile after the barrier that ends them (`stash`).
  const lines = loads.map((d) =>
    `{
        ${d.pos}
        ${d.glob}
        var v = ${zero(d)};
        if (${d.cond}) { v = ${d.read}; }
        ${d.put}
      }`
  );
  const prefetchDecl = loads.map((d, l) => `var p${l} = ${zero(d)};`);
  const fetch = loads.map((d, l) =>
    `{
        ${d.pos}
        ${d.glob}
        p${l} = ${zero(d)};
        if (${d.cond}) { p${l} = ${d.read}; }
      }`
  );
  const stash = loads.map((d, l) =>
    `{
        ${d.pos}
        let v = p${l};
        ${d.put}
      }`
  );
  // acc[r][h]: row r of the thread's block, column group h.
  const acc = Array.from(
    { length: rm },
    (_, r) => Array.from({ length: cn }, (_, h) => `acc${r}_${h}`),
  );
  const inner: string[] = [];
  for (let kk = 0; kk < MM_TK; kk++) {
    for (let h = 0; h < cn; h++) inner.push(`b${h} = Bs[${kk * tnq + h * 16} + tx];`);
    for (let g = 0; g < groups; g++) {
      inner.push(`a = As[${kk * tmq + g * 16} + ty];`);
      ["x", "y", "z", "w"].forEach((c, i) => {
        for (let h = 0; h < cn; h++) inner.push(`${acc[4 * g + i][h]} += a.${c} * b${h};`);
      });
    }
  }
  const stores: string[] = [];
  for (let g = 0; g < groups; g++) {
    for (let i = 0; i < 4; i++) {
      const row = [`let gm = m0 + ${g * 64 + i} + ty * 4;`];
      for (let h = 0; h < cn; h++) {
        const [col, value] = [`gn + ${h * 64}`, acc[4 * g + i][h]];
        row.push(
          layout === "heads"
            ? `storeHeads(gm, ${col}, ${value});`
            : layout === "rows"
            ? `store(((nn * uniforms.M + gm) * uniforms.H + hh) * uniforms.N, ${col}, ${value});`
            : `store(oOff + gm * uniforms.N, ${col}, ${value});`,
        );
      }
      stores.push(`if (m0 + ${g * 64 + i} + ty * 4 < uniforms.M) {
        ${row.join("\n        ")}
      }`);
    }
  }
  return `
    var<workgroup> As : array<vec4<f32>, ${MM_TK * tmq}>;
    var<workgroup> Bs : array<vec4<f32>, ${MM_TK * tnq}>;
${readers}

    fn store(rowOff : i32, gn : i32, v : vec4<f32>) {
      ${
    vo
      ? `if (gn < uniforms.N) { result[(rowOff + gn) / 4] = v${
        addend ? " + C[(rowOff + gn) / 4]" : ""
      }; }`
      : [0, 1, 2, 3].map((j) =>
        `if (gn + ${j} < uniforms.N) { result[rowOff + gn + ${j}] = v[${j}]${
          addend ? ` + C[rowOff + gn + ${j}]` : ""
        }; }`
      ).join("\n      ")
  }
    }
${
    layout === "heads"
      ? `
    // Column gn of row gm goes to head gn / DH: [heads, M, DH] (vec4 stores stay in one head).
    fn storeHeads(gm : i32, gn : i32, v : vec4<f32>) {
      if (gn < uniforms.N) {
        result[((gn / uniforms.DH) * uniforms.M * uniforms.DH + gm * uniforms.DH + gn % uniforms.DH) / 4] = v;
      }
    }`
      : ""
  }
    fn main() {
      let tx = i32(localId.x);
      let ty = i32(localId.y);
      let batch = i32(workgroupId.z);
      let m0 = i32(workgroupId.y) * ${tm};
      let n0 = i32(workgroupId.x) * ${tn};
      let aOff = uniforms.baseA + batch * uniforms.strideA;
      let bOff = uniforms.baseB + batch * uniforms.strideB;
      let oOff = batch * uniforms.M * uniforms.N;${
    layout === "rows"
      ? `
      // Batch entry hh·IMG + nn (head hh, image nn) goes to rows nn·M + gm, columns hh·N + gn.
      let hh = batch / uniforms.IMG;
      let nn = batch % uniforms.IMG;`
      : ""
  }
      ${acc.flat().map((v) => `var ${v} = vec4<f32>(0.0);`).join("\n      ")}
      var a : vec4<f32>;
      ${Array.from({ length: cn }, (_, h) => `var b${h} : vec4<f32>;`).join("\n      ")}
      let tiles = (uniforms.K + ${MM_TK - 1}) / ${MM_TK};
      ${
    prefetch
      ? `${prefetchDecl.join("\n      ")}
      {
        let k0 = 0;
        ${fetch.join("\n        ")}
      }
      for (var t = 0; t < tiles; t++) {
        ${stash.join("\n        ")}
        workgroupBarrier();
        if (t + 1 < tiles) {
          let k0 = (t + 1) * ${MM_TK};
          ${fetch.join("\n          ")}
        }
        ${inner.join("\n        ")}
        workgroupBarrier();
      }`
      : `for (var t = 0; t < tiles; t++) {
        let k0 = t * ${MM_TK};
        ${lines.join("\n        ")}
        workgroupBarrier();
        ${inner.join("\n        ")}
        workgroupBarrier();
      }`
  }
      let gn = n0 + tx * 4;
      ${stores.join("\n      ")}
    }`;
}

/**
 * The matrix product a·b (`ta`, `tb`: transpose a, b, by indexing) of 2-D or batched float32
 * tensors as one `DeerWgsl_MatMul` kernel: a register-blocked, workgroup-memory tiled SGEMM
 * (see {@link matMulSource}). Batch axes broadcast as `tf.matMul`'s do where each operand has
 * either the whole batch or a single matrix (`[N·T, w]·[H, w, d]`, `[H, N, T, d]·[H, N, T, d]`);
 * other broadcasts, empty or over-long products throw (use {@link wgslMatMulUsed} to ask first).
 * `tile` picks 64×64 (default, 4×4 outputs per thread), 128×64 (8×4) or 128×128 (8×8), each
 * for 256 threads; `DEER_WGSL_MM_TILE` sets the default. `prefetch` (128×128 only; default on,
 * `DEER_WGSL_MM_PREFETCH=0` off) reads the next K-tile into registers during this one's
 * arithmetic. Forward only (no gradient is registered): the fast path calls it inside its
 * hand-written backward, which needs none.
 *
 * Only on the `webgpu` backend, e.g. `const c = wgslMatMul(a, b, false, true);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslMatMul(
  a: MatMulOperand,
  b: MatMulOperand,
  ta = false,
  tb = false,
  tile: MatMulTile = defaultTile(),
  prefetch: boolean = defaultPrefetch(),
): tf.Tensor {
  return matMulKernel(a, b, null, ta, tb, tile, prefetch);
}

/**
 * `c + a·b` in one `DeerWgsl_MatMul` kernel: {@link wgslMatMul} with `c` (the product's shape)
 * added as each output is stored, instead of in an element-wise kernel after it.
 *
 * Only on the `webgpu` backend, e.g. `const w = wgslMatMulAdd(lora, factor, frozen, true);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslMatMulAdd(
  a: MatMulOperand,
  b: MatMulOperand,
  c: tf.Tensor,
  ta = false,
  tb = false,
  tile: MatMulTile = defaultTile(),
  prefetch: boolean = defaultPrefetch(),
): tf.Tensor {
  return matMulKernel(a, b, c, ta, tb, tile, prefetch);
}

/**
 * A batch of products, heads × images (head-major: entry h·images + n), stored as rows
 * [images·M, heads·N], the heads' columns side by side: attention's p·v [heads, N, T, T]·
 * [heads, N, T, d_head] as the rows [N·T, width] the output projection multiplies, with no
 * transpose after it. N must be a multiple of 4 ({@link wgslLaidOutUsed} asks first).
 *
 * Only on the `webgpu` backend, e.g. `const rows = wgslMatMulToRows(p, v, n);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslMatMulToRows(
  a: MatMulOperand,
  b: MatMulOperand,
  images: number,
  ta = false,
  tb = false,
): tf.Tensor {
  const layout = { kind: "rows" as const, images };
  return matMulKernel(a, b, null, ta, tb, defaultTile(), defaultPrefetch(), layout);
}

/**
 * One product `a·b` [M, N] with its columns cut into heads of `headDim`, stored head-major as
 * [N / headDim, M, headDim]: the output projection's gradient rows [N·T, width]·W_outᵀ as the
 * per-head [heads, N·T, d_head] the attention's backward multiplies, with no transpose after it.
 *
 * Only on the `webgpu` backend, e.g. `const g = wgslMatMulToHeads(rows, out, 64, false, true);` (see tests/webgpu_wgsl.test.ts).
 */
export function wgslMatMulToHeads(
  a: tf.Tensor,
  b: tf.Tensor,
  headDim: number,
  ta = false,
  tb = false,
): tf.Tensor {
  const layout = { kind: "heads" as const, headDim };
  return matMulKernel(a, b, null, ta, tb, defaultTile(), defaultPrefetch(), layout);
}

/**
 * Whether the fast path hands a product to {@link wgslMatMulToRows} (`images`) or
 * {@link wgslMatMulToHeads} (`headDim`): the WGSL kernels are on, the kernel takes the shapes and
 * the layout fits — at any size, below {@link WGSL_MM_MIN_OUTPUTS} too (as a product that reads a
 * stacked operand): the alternative is tfjs' product and a transpose after it, two dispatches for
 * one (ViT-B/16 at batch 1: the output projection's gradient, 12 transposes per step).
 */
export function wgslLaidOutUsed(
  a: MatMulOperand,
  b: MatMulOperand,
  ta: boolean,
  tb: boolean,
  layout: { images: number } | { headDim: number },
): boolean {
  if (!wgslKernelsEnabled()) return false;
  const plan = matMulPlan(a, b, ta, tb);
  if (typeof plan === "string") return false;
  const kind = "images" in layout ? "rows" as const : "heads" as const;
  return typeof laidOutShape(plan, { kind, ...layout }) !== "string";
}

function defaultTile(): MatMulTile {
  return (Deno.env.get("DEER_WGSL_MM_TILE") as MatMulTile | undefined) ?? "64x64";
}

function defaultPrefetch(): boolean {
  return Deno.env.get("DEER_WGSL_MM_PREFETCH") !== "0";
}

/** The output shape and extra uniforms of a layout, or why the product cannot take it. */
function laidOutShape(
  plan: MatMulPlan,
  layout: { kind: OutputLayout; images?: number; headDim?: number },
): { shape: number[]; uniforms: string; values: number[] } | string {
  const { m, n, batch, outShape } = plan;
  if (layout.kind === "plain") return { shape: outShape, uniforms: "", values: [] };
  // The layouts store whole vec4s: N (and the head width) must be multiples of 4.
  if (n % 4 !== 0) return `N = ${n} is not a multiple of 4`;
  if (layout.kind === "rows") {
    const images = layout.images ?? 0;
    if (!Number.isInteger(images) || images < 1 || batch % images !== 0) {
      return `a batch of ${batch} is not heads × ${images} images`;
    }
    const heads = batch / images;
    return {
      shape: [images * m, heads * n],
      uniforms: " IMG : i32, H : i32,",
      values: [images, heads],
    };
  }
  const dh = layout.headDim ?? 0;
  if (batch !== 1 || !Number.isInteger(dh) || dh < 4 || dh % 4 !== 0 || n % dh !== 0) {
    return `cannot cut ${batch} × ${m}×${n} into heads of ${dh} (one product, a multiple of 4)`;
  }
  return { shape: [n / dh, m, dh], uniforms: " DH : i32,", values: [dh] };
}

/**
 * Where the product's outputs go: `plain`, the product's own [batch…, M, N]; `rows`, a batch of
 * heads × images (head-major, `images` of them) stored as rows [images·M, heads·N] (the heads'
 * columns side by side); `heads`, a single product's columns cut into heads of `headDim`, stored
 * head-major as [N / headDim, M, headDim].
 */
type OutputLayout = "plain" | "rows" | "heads";

function matMulKernel(
  a: MatMulOperand,
  b: MatMulOperand,
  c: tf.Tensor | null,
  ta: boolean,
  tb: boolean,
  tile: MatMulTile,
  prefetch: boolean,
  layout: { kind: OutputLayout; images?: number; headDim?: number } = { kind: "plain" },
): tf.Tensor {
  const plan = matMulPlan(a, b, ta, tb);
  const [sa, sb] = [operandShape(a), operandShape(b)];
  if (typeof plan === "string") {
    throw new Error(`webgpu_kernels matMul of ${sa} and ${sb} (ta ${ta}, tb ${tb}): ${plan}`);
  }
  if (!MATMUL_TILES.includes(tile)) {
    throw new Error(
      `webgpu_kernels matMul: tile "${tile}" is not one of ${
        MATMUL_TILES.join(", ")
      } (argument or DEER_WGSL_MM_TILE)`,
    );
  }
  // Rows per thread (4 or 8) and column groups of 4 per thread (1 or 2).
  const rm = tile === "64x64" ? 4 : 8, cn = tile === "128x128" ? 2 : 1;
  // Only 128×128 prefetches (the other tiles are unchanged by the flag).
  const pf = cn === 2 && prefetch;
  const { m, n, k, batch, strideA, strideB, baseA, baseB, outShape } = plan;
  if (c && !tf.util.arraysEqual(c.shape, outShape)) {
    throw new Error(
      `webgpu_kernels matMul: the addend ${c.shape} must have the product's shape ${outShape}`,
    );
  }
  // vec4 bindings where every vec4 lies inside one row of the contiguous dimension (a stacked
  // matrix then starts on a vec4 too: its base is a multiple of that row's length).
  const va = (ta ? m : k) % 4 === 0, vb = (tb ? k : n) % 4 === 0, vo = n % 4 === 0;
  const laid = laidOutShape(plan, layout);
  if (typeof laid === "string") {
    throw new Error(`webgpu_kernels matMul of ${sa} and ${sb} as ${layout.kind}: ${laid}`);
  }
  if (c && layout.kind !== "plain") {
    throw new Error("webgpu_kernels matMul: an addend needs the plain layout");
  }
  const r = outShape.length;
  // A matrix list binds one tensor per entry, named A0, A1, … (B0, …).
  const lists: [number, number] = [a, b].map((o) => isList(o) ? o.tensors.length : 0) as [
    number,
    number,
  ];
  const names = (name: string, count: number) =>
    count === 0 ? [name] : Array.from({ length: count }, (_, e) => `${name}${e}`);
  const [namesA, namesB] = [names("A", lists[0]), names("B", lists[1])];
  const make = (): Program => ({
    variableNames: [...namesA, ...namesB, ...(c ? ["C"] : [])],
    outputShape: laid.shape,
    shaderKey: `deer_matmul_${rm}x${cn}${pf ? "p" : ""}_${+ta}${+tb}_${+va}${+vb}${+vo}${
      c ? "_add" : ""
    }_${layout.kind}${lists[0] + lists[1] > 0 ? `_list${lists[0]}x${lists[1]}` : ""}`,
    dispatchLayout: { x: [r - 1], y: [r - 2], z: Array.from({ length: r - 2 }, (_, i) => i) },
    dispatch: [Math.ceil(n / (64 * cn)), Math.ceil(m / (16 * rm)), batch],
    workgroupSize: [16, 16, 1],
    size: false,
    uniforms:
      `M : i32, N : i32, K : i32, strideA : i32, strideB : i32, baseA : i32, baseB : i32,${laid.uniforms}`,
    // The addend is read as the output is written.
    variableComponents: [
      ...namesA.map(() => va ? 4 : 1),
      ...namesB.map(() => vb ? 4 : 1),
      ...(c ? [vo ? 4 : 1] : []),
    ],
    outputComponent: vo ? 4 : 1,
    getUserCode: () => matMulSource(rm, cn, ta, tb, va, vb, vo, pf, c !== null, layout.kind, lists),
  });
  const uniforms: ProgramUniform[] = [m, n, k, strideA, strideB, baseA, baseB, ...laid.values]
    .map(int32);
  const inputs = [...boundTensors(a), ...boundTensors(b), ...(c ? [c] : [])];
  return dispatch("MatMul", inputs, 0, make, uniforms);
}
