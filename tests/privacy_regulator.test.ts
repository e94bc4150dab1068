// DEeR's noise regulator: tfjs API, host versions, projector identities and noise statistics
// (docs/method.md#the-noise-regulator).
import assert from "node:assert/strict";
import { tf } from "../lib/backend.ts";
import { createRng } from "../lib/rng.ts";
import {
  expectedNoiseEnergyInUpdate,
  isotropicNoise,
  noiseEnergyInUpdate,
  peerForA,
  peerForB,
  peerSigmaMax,
  productSqNorm,
  regulatedNoiseA,
  regulatedNoiseB,
  regulateNoiseForA,
  regulateNoiseForAHost,
  regulateNoiseForB,
  regulateNoiseForBHost,
} from "../lib/privacy/regulator.ts";
import {
  cholesky,
  gramCols,
  gramRows,
  matmul,
  pinvCols,
  pinvRows,
  sigmaMaxOf,
} from "../lib/privacy/linalg.ts";
import { randomMatrix } from "./helpers/numeric.ts";

function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

function std(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return Math.sqrt(s / x.length);
}

const d = 48, r = 4;

Deno.test("regulateNoiseForB/A (tf) equal W·A⁺ and B⁺·W computed in float64", async () => {
  const rng = createRng(11);
  const w = randomMatrix(rng, d, d),
    a = randomMatrix(rng, r, d, 0.15),
    b = randomMatrix(rng, d, r, 0.02);
  const before = tf.memory().numTensors;
  const [wT, aT, bT] = [tf.tensor2d(w, [d, d]), tf.tensor2d(a, [r, d]), tf.tensor2d(b, [d, r])];
  const nB = await regulateNoiseForB(wT, aT), nA = await regulateNoiseForA(wT, bT);
  assert.deepEqual(nB.shape, [d, r]);
  assert.deepEqual(nA.shape, [r, d]);
  const refB = matmul(w, d, d, pinvRows(a, r, d), r), refA = matmul(pinvCols(b, d, r), r, d, w, d);
  assert.ok(relDiff(nB.dataSync(), refB) < 1e-5);
  assert.ok(relDiff(nA.dataSync(), refA) < 1e-5);
  assert.ok(relDiff(regulateNoiseForBHost(w, a, d, r), refB) < 1e-6);
  assert.ok(relDiff(regulateNoiseForAHost(w, b, d, r), refA) < 1e-6);
  assert.ok(Math.abs(await peerSigmaMax(aT) - sigmaMaxOf(a, r, d)) < 1e-12);
  const diag = tf.tensor2d([[3, 0, 0], [0, 1, 0]]);
  assert.ok(Math.abs(await peerSigmaMax(diag) - 3) < 1e-12);
  diag.dispose();
  tf.dispose([wT, aT, bT, nB, nA]);
  assert.equal(tf.memory().numTensors, before, "no tensor leaks");
});

Deno.test("regulator identities: (W A⁺)·A = W P_A, B·(B⁺W) = P_B W, P² = P", async () => {
  const rng = createRng(12);
  const w = randomMatrix(rng, d, d),
    a = randomMatrix(rng, r, d, 0.15),
    b = randomMatrix(rng, d, r, 0.02);
  const pA = matmul(pinvRows(a, r, d), d, r, a, d), pB = matmul(b, d, r, pinvCols(b, d, r), d);
  assert.ok(relDiff(matmul(pA, d, d, pA, d), pA) < 1e-12);
  assert.ok(relDiff(matmul(pB, d, d, pB, d), pB) < 1e-12);
  const [wT, aT, bT] = [tf.tensor2d(w, [d, d]), tf.tensor2d(a, [r, d]), tf.tensor2d(b, [d, r])];
  const [nBt, nAt] = [await regulateNoiseForB(wT, aT), await regulateNoiseForA(wT, bT)];
  const reachB = tf.matMul(nBt, aT), reachA = tf.matMul(bT, nAt);
  assert.ok(relDiff(reachB.dataSync(), matmul(w, d, d, pA, d)) < 1e-5);
  assert.ok(relDiff(reachA.dataSync(), matmul(pB, d, d, w, d)) < 1e-5);
  // The energy reaching ΔW is ‖W P_A‖²: the instrumentation helper agrees.
  const nB = regulateNoiseForBHost(w, a, d, r);
  const energy = noiseEnergyInUpdate({ phase: "B", noise: nB, peer: a, d, r });
  const direct = matmul(w, d, d, pA, d).reduce((s, v) => s + v * v, 0);
  assert.ok(Math.abs(energy - direct) < 1e-6 * direct);
  tf.dispose([wT, aT, bT, nBt, nAt, reachB, reachA]);
});

Deno.test("regulator errors name the field and the shape", async () => {
  const w = tf.zeros([4, 4]) as tf.Tensor2D, a = tf.ones([2, 5]) as tf.Tensor2D;
  await assert.rejects(
    () => regulateNoiseForB(w, a),
    /noise has shape \[4, 4\]; expected \[5, 5\]/,
  );
  const b0 = tf.zeros([4, 2]) as tf.Tensor2D;
  await assert.rejects(() => regulateNoiseForA(w, b0), /rank-deficient/);
  tf.dispose([w, a, b0]);
  assert.throws(
    () => regulatedNoiseB(createRng(1), { std: 1, peerA: new Float32Array(3), d: 4, r: 2 }),
    /peer A has 3 values; expected 2×4/,
  );
});

Deno.test("noise statistics: empirical std within 2% of the configured one", () => {
  const rng = createRng(13);
  const s = 0.3, dd = 256, rr = 8;
  assert.ok(Math.abs(std(isotropicNoise(rng, 60000, s)) / s - 1) < 0.02);
  const a = randomMatrix(rng, rr, dd, 0.05), b = randomMatrix(rng, dd, rr, 0.01);
  const lA = cholesky(gramRows(a, rr, dd), rr), lB = cholesky(gramCols(b, dd, rr), rr);
  for (const draw of ["project", "covariance"] as const) {
    // Rows of W·A⁺ are N(0, s²(AAᵀ)⁻¹): whitened by L (AAᵀ = LLᵀ) they are i.i.d. N(0, s²).
    const whiteB: number[] = [], whiteA: number[] = [];
    let energyB = 0, energyA = 0;
    const draws = 16;
    for (let k = 0; k < draws; k++) {
      const nB = regulatedNoiseB(rng, { std: s, peerA: a, d: dd, r: rr, draw });
      whiteB.push(...matmul(nB, dd, rr, lA, rr));
      energyB += noiseEnergyInUpdate({ phase: "B", noise: nB, peer: a, d: dd, r: rr });
      const nA = regulatedNoiseA(rng, { std: s, peerB: b, d: dd, r: rr, draw });
      // Columns of B⁺·W are N(0, s²(BᵀB)⁻¹): Lᵀ·column is i.i.d. N(0, s²).
      const lT = new Float64Array(rr * rr);
      for (let i = 0; i < rr; i++) for (let j = 0; j < rr; j++) lT[i * rr + j] = lB[j * rr + i];
      whiteA.push(...matmul(lT, rr, rr, nA, dd));
      energyA += noiseEnergyInUpdate({ phase: "A", noise: nA, peer: b, d: dd, r: rr });
    }
    assert.ok(Math.abs(std(whiteB) / s - 1) < 0.02, `${draw} B: ${std(whiteB)}`);
    assert.ok(Math.abs(std(whiteA) / s - 1) < 0.02, `${draw} A: ${std(whiteA)}`);
    // Energy reaching ΔW: s²·d·r per draw, independent of the peer's scale.
    const expected = expectedNoiseEnergyInUpdate({ kind: "regulated", std: s, d: dd, r: rr });
    assert.ok(Math.abs(Math.sqrt(energyB / draws / expected) - 1) < 0.02, `${draw} energy B`);
    assert.ok(Math.abs(Math.sqrt(energyA / draws / expected) - 1) < 0.02, `${draw} energy A`);
  }
  // Same seed, same draw.
  const x = regulatedNoiseB(createRng(5), { std: s, peerA: a, d: dd, r: rr, draw: "covariance" });
  const y = regulatedNoiseB(createRng(5), { std: s, peerA: a, d: dd, r: rr, draw: "covariance" });
  assert.deepEqual(x, y);
});

Deno.test("peerForB/peerForA: cached Gram, σ_max, product norms and non-square shapes", async () => {
  const rng = createRng(14);
  const dOut = 20, dIn = 12, rr = 3;
  const a = randomMatrix(rng, rr, dIn, 0.3), b = randomMatrix(rng, dOut, rr, 0.1);
  const pB = peerForB(a, rr, dIn, dOut), pA = peerForA(b, dOut, rr, dIn);
  assert.ok(Math.abs(pB.sigmaMax - sigmaMaxOf(a, rr, dIn)) < 1e-12);
  assert.ok(Math.abs(pA.sigmaMax - sigmaMaxOf(b, dOut, rr)) < 1e-12);
  const deltaB = randomMatrix(rng, dOut, rr), deltaA = randomMatrix(rng, rr, dIn);
  const explicitB = matmul(deltaB, dOut, rr, a, dIn).reduce((s, v) => s + v * v, 0);
  const explicitA = matmul(b, dOut, rr, deltaA, dIn).reduce((s, v) => s + v * v, 0);
  assert.ok(Math.abs(productSqNorm(deltaB, pB) - explicitB) < 1e-10 * explicitB);
  assert.ok(Math.abs(productSqNorm(deltaA, pA) - explicitA) < 1e-10 * explicitA);
  assert.throws(() => productSqNorm(deltaA, pB), /the released B is 20×3/);
  // Regulated noise has the released factor's shape, and what reaches ΔW lies in the peer's
  // row space (B) / column space (A): W·P_A·(I − P_A) = 0.
  for (const draw of ["covariance", "project"] as const) {
    const nB = pB.regulatedNoise(rng, 0.5, draw), nA = pA.regulatedNoise(rng, 0.5, draw);
    assert.equal(nB.length, dOut * rr);
    assert.equal(nA.length, rr * dIn);
    const reachB = matmul(nB, dOut, rr, a, dIn);
    const pAproj = matmul(pinvRows(a, rr, dIn), dIn, rr, a, dIn);
    assert.ok(relDiff(matmul(reachB, dOut, dIn, pAproj, dIn), reachB) < 1e-5);
    const reachA = matmul(b, dOut, rr, nA, dIn);
    const pBproj = matmul(b, dOut, rr, pinvCols(b, dOut, rr), dOut);
    assert.ok(relDiff(matmul(pBproj, dOut, dOut, reachA, dIn), reachA) < 1e-5);
  }
  // Non-square W on the tf path: [dOut, dIn]·A⁺ and B⁺·[dOut, dIn].
  const w = randomMatrix(rng, dOut, dIn);
  const [wT, aT, bT] = [
    tf.tensor2d(w, [dOut, dIn]),
    tf.tensor2d(a, [rr, dIn]),
    tf.tensor2d(b, [dOut, rr]),
  ];
  const nBt = await regulateNoiseForB(wT, aT), nAt = await regulateNoiseForA(wT, bT);
  assert.deepEqual(nBt.shape, [dOut, rr]);
  assert.deepEqual(nAt.shape, [rr, dIn]);
  assert.ok(relDiff(nBt.dataSync(), regulateNoiseForBHost(w, a, dIn, rr, dOut)) < 1e-5);
  assert.ok(relDiff(nAt.dataSync(), regulateNoiseForAHost(w, b, dOut, rr, dIn)) < 1e-5);
  tf.dispose([wT, aT, bT, nBt, nAt]);
  // A rank-deficient peer still gives σ_max; only drawing noise against it fails.
  const zero = peerForA(new Float32Array(dOut * rr), dOut, rr, dIn);
  assert.equal(zero.sigmaMax, 0);
  assert.throws(() => zero.regulatedNoise(rng, 1), /rank-deficient/);
});
