/**
 * The wasm backend's explicit matrix-product kernels (lib/backend_wasm.ts) give the cpu backend's
 * results for every transpose combination, batched and broadcast operands, fused bias and
 * activation, and gradients — and leak no tensor.
 *
 * The backend is chosen once per process, so each backend computes in its own subprocess
 * (`DEER_BACKEND=wasm` / `cpu`) and prints its results as JSON.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const projectRoot = fileURLToPath(new URL("..", import.meta.url));

// Runs in each subprocess: every product on the same deterministic inputs, as plain arrays.
const childSource = `
import { backendName, tf } from ${
  JSON.stringify(new URL("../lib/backend.ts", import.meta.url).href)
};

// Deterministic inputs in [-1, 1), identical on every backend.
function input(shape, seed) {
  const n = shape.reduce((p, d) => p * d, 1);
  const v = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    v[i] = s / 1073741824 - 1;
  }
  return tf.tensor(v, shape);
}

const products = [];
// 2-D, every transpose combination, odd sizes: m=37, k=29, n=23.
for (const [tA, tB] of [[false, false], [true, false], [false, true], [true, true]]) {
  const a = tA ? [29, 37] : [37, 29];
  const b = tB ? [23, 29] : [29, 23];
  products.push({ a, b, tA, tB });
  // Equal batches, one shared right-hand matrix, one shared left-hand matrix, rank 4.
  products.push({ a: [3, ...a], b: [3, ...b], tA, tB });
  products.push({ a: [3, ...a], b, tA, tB });
  products.push({ a, b: [3, ...b], tA, tB });
  products.push({ a: [2, 3, ...a], b: [2, 3, ...b], tA, tB });
}

const out = { backend: backendName, products: [], fused: [], grads: [], leaks: {} };
const tensorsBefore = tf.memory().numTensors;
const dataIdsBefore = tf.engine().backend.numDataIds();
products.forEach((p, i) => {
  tf.tidy(() => {
    const y = tf.matMul(input(p.a, 2 * i + 1), input(p.b, 2 * i + 2), p.tA, p.tB);
    out.products.push({ ...p, shape: y.shape, values: Array.from(y.dataSync()) });
  });
});
for (const activation of ["linear", "relu", "relu6", "leakyrelu", "sigmoid", "elu"]) {
  for (const [tA, tB] of [[false, false], [true, false], [false, true], [true, true]]) {
    tf.tidy(() => {
      const a = input(tA ? [4, 29, 37] : [4, 37, 29], 101);
      const b = input(tB ? [23, 29] : [29, 23], 102);
      const bias = input([23], 103);
      const y = tf.fused.matMul({ a, b, transposeA: tA, transposeB: tB, bias, activation });
      out.fused.push({ activation, tA, tB, shape: y.shape, values: Array.from(y.dataSync()) });
    });
  }
}
// Gradients through transposed and batched products (autodiff builds transposed products).
for (const [tA, tB] of [[false, false], [true, false], [false, true], [true, true]]) {
  tf.tidy(() => {
    const a = input(tA ? [2, 29, 37] : [2, 37, 29], 201);
    const b = input(tB ? [2, 23, 29] : [2, 29, 23], 202);
    const w = input([2, 37, 23], 203);
    const [da, db] = tf.grads((x, y) => tf.sum(tf.mul(tf.matMul(x, y, tA, tB), w)))([a, b]);
    out.grads.push({ tA, tB, da: Array.from(da.dataSync()), db: Array.from(db.dataSync()) });
  });
}
out.leaks = {
  tensors: tf.memory().numTensors - tensorsBefore,
  dataIds: tf.engine().backend.numDataIds() - dataIdsBefore,
};
console.log(JSON.stringify(out));
`;

interface Results {
  backend: string;
  products: {
    a: number[];
    b: number[];
    tA: boolean;
    tB: boolean;
    shape: number[];
    values: number[];
  }[];
  fused: { activation: string; tA: boolean; tB: boolean; shape: number[]; values: number[] }[];
  grads: { tA: boolean; tB: boolean; da: number[]; db: number[] }[];
  leaks: { tensors: number; dataIds: number };
}

async function computeOn(backend: "wasm" | "cpu"): Promise<Results> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=js", childSource],
    cwd: projectRoot,
    env: { DEER_BACKEND: backend, DEER_QUIET: "1" },
    stdin: "null",
  }).output();
  const err = new TextDecoder().decode(stderr);
  assert.equal(code, 0, `DEER_BACKEND=${backend} subprocess failed:\n${err}`);
  return JSON.parse(new TextDecoder().decode(stdout));
}

function assertClose(actual: number[], expected: number[], what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  // Sums of 29–74 products of values in [-1, 1): float32 rounding stays far below 1e-4.
  for (let i = 0; i < actual.length; i++) {
    const tol = 1e-4 * Math.max(1, Math.abs(expected[i]));
    if (!(Math.abs(actual[i] - expected[i]) <= tol)) {
      assert.fail(`${what}: element ${i} is ${actual[i]} on wasm, ${expected[i]} on cpu`);
    }
  }
}

const label = (p: { tA: boolean; tB: boolean }) => `transposeA=${p.tA} transposeB=${p.tB}`;

Deno.test("wasm matmul kernels equal the cpu backend's, and leak nothing", async (t) => {
  const [wasm, cpu] = await Promise.all([computeOn("wasm"), computeOn("cpu")]);
  assert.equal(wasm.backend, "wasm");
  assert.equal(cpu.backend, "cpu");

  await t.step("products: every transpose combination, batched and broadcast", () => {
    assert.equal(wasm.products.length, 20);
    wasm.products.forEach((p, i) => {
      const what = `matMul [${p.a}]·[${p.b}] ${label(p)}`;
      assert.deepEqual(p.shape, cpu.products[i].shape, what);
      assertClose(p.values, cpu.products[i].values, what);
    });
  });

  await t.step("fused products: bias per column, element-wise activations", () => {
    wasm.fused.forEach((p, i) => {
      const what = `fused.matMul ${p.activation} ${label(p)}`;
      assert.deepEqual(p.shape, cpu.fused[i].shape, what);
      assertClose(p.values, cpu.fused[i].values, what);
    });
  });

  await t.step("gradients through transposed batched products", () => {
    wasm.grads.forEach((g, i) => {
      assertClose(g.da, cpu.grads[i].da, `d/da ${label(g)}`);
      assertClose(g.db, cpu.grads[i].db, `d/db ${label(g)}`);
    });
  });

  await t.step("no tensor or wasm buffer outlives its product", () => {
    assert.deepEqual(wasm.leaks, { tensors: 0, dataIds: 0 });
  });
});
