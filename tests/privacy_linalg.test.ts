// Float64 linear algebra of the regulator against explicit products
// (docs/method.md#the-noise-regulator).
import assert from "node:assert/strict";
import { createRng, type Rng } from "../lib/rng.ts";
import {
  cholesky,
  choleskySolve,
  frobenius,
  gramCols,
  gramRows,
  lambdaMax,
  matmul,
  pinvCols,
  pinvRows,
  sigmaMax,
  sigmaMaxOf,
  spdInverse,
} from "../lib/privacy/linalg.ts";
import { maxAbsDiff, randomMatrix } from "./helpers/numeric.ts";

function transpose(x: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = x[i * cols + j];
  return t;
}

function identity(n: number): Float64Array {
  const e = new Float64Array(n * n);
  for (let i = 0; i < n; i++) e[i * n + i] = 1;
  return e;
}

/** n×k matrix with orthonormal columns (Gram–Schmidt on a random matrix). */
function orthonormalColumns(rng: Rng, n: number, k: number): Float64Array {
  const q = Float64Array.from(randomMatrix(rng, n, k));
  for (let j = 0; j < k; j++) {
    for (let p = 0; p < j; p++) {
      let dot = 0;
      for (let i = 0; i < n; i++) dot += q[i * k + j] * q[i * k + p];
      for (let i = 0; i < n; i++) q[i * k + j] -= dot * q[i * k + p];
    }
    let nrm = 0;
    for (let i = 0; i < n; i++) nrm += q[i * k + j] ** 2;
    nrm = Math.sqrt(nrm);
    for (let i = 0; i < n; i++) q[i * k + j] /= nrm;
  }
  return q;
}

Deno.test("Gram matrices equal the explicit products", () => {
  const rng = createRng(1);
  const a = randomMatrix(rng, 6, 50), b = randomMatrix(rng, 50, 6);
  assert.ok(maxAbsDiff(gramRows(a, 6, 50), matmul(a, 6, 50, transpose(a, 6, 50), 6)) < 1e-12);
  assert.ok(maxAbsDiff(gramCols(b, 50, 6), matmul(transpose(b, 50, 6), 6, 50, b, 6)) < 1e-12);
});

Deno.test("Cholesky factorises, solves and inverts SPD systems", () => {
  const rng = createRng(2);
  const a = randomMatrix(rng, 8, 40);
  const g = gramRows(a, 8, 40);
  const l = cholesky(g, 8);
  for (let i = 0; i < 8; i++) for (let j = i + 1; j < 8; j++) assert.equal(l[i * 8 + j], 0);
  assert.ok(maxAbsDiff(matmul(l, 8, 8, transpose(l, 8, 8), 8), g) < 1e-10);
  const rhs = randomMatrix(rng, 8, 3);
  const x = choleskySolve(l, 8, rhs, 3);
  assert.ok(maxAbsDiff(matmul(g, 8, 8, x, 3), rhs) < 1e-10);
  assert.ok(maxAbsDiff(matmul(g, 8, 8, spdInverse(g, 8), 8), identity(8)) < 1e-10);
});

Deno.test("a rank-deficient peer is a clear error, not a silent inverse", () => {
  const a = new Float32Array(3 * 10);
  for (let j = 0; j < 10; j++) {
    a[j] = j + 1;
    a[10 + j] = 2 * (j + 1); // row 1 = 2 × row 0
    a[20 + j] = Math.sin(j);
  }
  assert.throws(() => pinvRows(a, 3, 10), /not positive definite.*rank-deficient/s);
  assert.throws(
    () => pinvCols(new Float32Array(10 * 2), 10, 2),
    /Bᵀ B of the peer B.*rank-deficient/s,
  );
  assert.throws(() => cholesky([1, 2, 3, 4], 2), /not symmetric/);
  assert.throws(() => gramRows(new Float32Array(5), 2, 3), /A has 5 values; expected 2×3 = 6/);
});

Deno.test("σ_max by power iteration matches constructed singular values", () => {
  const rng = createRng(3);
  const d = 30, r = 6;
  for (const s of [[5, 3, 2, 1, 0.5, 0.1], [1, 0.999999, 0.5, 0.5, 0.2, 0.1], [2, 2, 2, 1, 1, 1]]) {
    // A = Uᵀ·diag(s)·Vᵀ-like: rows u_i s_i v_iᵀ with orthonormal U (r×r) and V (d×r).
    const u = orthonormalColumns(rng, r, r), v = orthonormalColumns(rng, d, r);
    const us = new Float64Array(r * r);
    for (let i = 0; i < r; i++) for (let j = 0; j < r; j++) us[i * r + j] = u[i * r + j] * s[j];
    const a = matmul(us, r, r, transpose(v, d, r), d); // r×d
    const got = sigmaMax(gramRows(a, r, d), r);
    assert.ok(Math.abs(got - s[0]) <= 1e-12 * s[0], `σ_max ${got} vs ${s[0]}`);
    assert.ok(Math.abs(sigmaMaxOf(transpose(a, r, d), d, r) - s[0]) <= 1e-12 * s[0]);
  }
  assert.ok(Math.abs(lambdaMax([2, 1, 1, 2], 2) - 3) < 1e-14);
  assert.equal(sigmaMax(new Float64Array(4), 2), 0);
});

Deno.test("pseudo-inverses: A A⁺ = I, B⁺ B = I, projectors are idempotent and symmetric", () => {
  const rng = createRng(4);
  const d = 40, r = 5;
  const a = randomMatrix(rng, r, d, 0.2), b = randomMatrix(rng, d, r, 0.05);
  const aPinv = pinvRows(a, r, d), bPinv = pinvCols(b, d, r);
  assert.ok(maxAbsDiff(matmul(a, r, d, aPinv, r), identity(r)) < 1e-10);
  assert.ok(maxAbsDiff(matmul(bPinv, r, d, b, r), identity(r)) < 1e-10);
  for (const p of [matmul(aPinv, d, r, a, d), matmul(b, d, r, bPinv, d)]) {
    assert.ok(maxAbsDiff(matmul(p, d, d, p, d), p) < 1e-10, "P² = P");
    assert.ok(maxAbsDiff(transpose(p, d, d), p) < 1e-10, "Pᵀ = P");
    let trace = 0;
    for (let i = 0; i < d; i++) trace += p[i * d + i];
    assert.ok(Math.abs(trace - r) < 1e-10, "rank r");
  }
  assert.equal(frobenius(new Float32Array([3, 4])), 5);
});
