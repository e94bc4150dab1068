// Clipping of client updates: per-tensor, whole-release and product-space
// (docs/privacy.md#paper-calibration, #strict-calibration).
import assert from "node:assert/strict";
import { createRng } from "../lib/rng.ts";
import {
  clipPerTensor,
  clipProductSpace,
  clipRelease,
  clipUpdate,
  productNormA,
  productNormB,
} from "../lib/privacy/clip.ts";
import { frobenius, matmul, sigmaMaxOf } from "../lib/privacy/linalg.ts";
import { randomMatrix } from "./helpers/numeric.ts";

Deno.test("productNorm equals ‖ΔB·A‖_F and ‖B·ΔA‖_F of the explicit product", () => {
  const rng = createRng(5);
  const d = 48, r = 4;
  for (let k = 0; k < 5; k++) {
    const deltaB = randomMatrix(rng, d, r, 0.1), a = randomMatrix(rng, r, d, 0.3);
    const explicitB = frobenius(matmul(deltaB, d, r, a, d));
    assert.ok(Math.abs(productNormB(deltaB, a, d, r) - explicitB) <= 1e-12 * explicitB);
    const b = randomMatrix(rng, d, r, 0.3), deltaA = randomMatrix(rng, r, d, 0.1);
    const explicitA = frobenius(matmul(b, d, r, deltaA, d));
    assert.ok(Math.abs(productNormA(b, deltaA, d, r) - explicitA) <= 1e-12 * explicitA);
    // The bound behind the paper mechanism's sensitivity: ‖ΔB·A‖ ≤ σ_max(A)·‖ΔB‖.
    assert.ok(explicitB <= sigmaMaxOf(a, r, d) * frobenius(deltaB) * (1 + 1e-12));
  }
  assert.throws(
    () => productNormB(new Float32Array(3), new Float32Array(4), 2, 2),
    /deltaB has 3 values/,
  );
});

Deno.test("per-tensor clipping bounds each tensor; the release can reach C·√m", () => {
  const rng = createRng(6);
  const tensors = [
    randomMatrix(rng, 10, 4, 2),
    randomMatrix(rng, 4, 10, 2),
    new Float32Array([0.1, 0.1]),
  ];
  const { tensors: out, norms, scales } = clipPerTensor(tensors, 1);
  out.forEach((t, i) => {
    assert.ok(frobenius(t) <= 1 + 1e-6);
    assert.ok(Math.abs(norms[i] - frobenius(tensors[i])) < 1e-12);
  });
  assert.equal(scales[2], 1); // below the clip norm: untouched
  assert.deepEqual(out[2], tensors[2]);
  assert.notEqual(out[0], tensors[0]); // copies unless inPlace
  const big = [new Float32Array([3, 4]), new Float32Array([0, 6]), new Float32Array([8, 0])];
  const whole = Math.sqrt(clipPerTensor(big, 1).tensors.reduce((s, t) => s + frobenius(t) ** 2, 0));
  assert.ok(Math.abs(whole - Math.sqrt(3)) < 1e-6); // C·√m with m = 3
});

Deno.test("whole-release clipping bounds the concatenated update by C", () => {
  const t = [new Float32Array([3, 0]), new Float32Array([0, 4])];
  const { tensors, norm, scale } = clipRelease(t, 1);
  assert.equal(norm, 5);
  assert.equal(scale, 0.2);
  assert.ok(Math.abs(Math.hypot(frobenius(tensors[0]), frobenius(tensors[1])) - 1) < 1e-7);
  const inPlace = [new Float32Array([6, 8])];
  clipUpdate(inPlace, { clip: 5, mode: "release", inPlace: true });
  assert.deepEqual([...inPlace[0]], [3, 4]);
  assert.deepEqual(clipUpdate([new Float32Array([0, 0])], { clip: 1, mode: "per-tensor" }).scales, [
    1,
  ]);
  assert.throws(() => clipRelease(t, 0), /clip 0 must be a finite number > 0/);
});

Deno.test("product-space clipping bounds Σ‖ΔB_t·A_t‖² ≤ C² whatever the peers' norms", () => {
  const rng = createRng(7);
  const d = 32, r = 4, clip = 0.5;
  for (const peerStd of [0.01, 1, 30]) {
    const deltas = [0, 1, 2].map(() => randomMatrix(rng, d, r, 0.2));
    const peers = [0, 1, 2].map(() => randomMatrix(rng, r, d, peerStd));
    const { tensors, norm, scale } = clipProductSpace({ phase: "B", deltas, peers, d, r }, clip);
    const after = Math.sqrt(
      tensors.reduce((s, t, i) => s + productNormB(t, peers[i], d, r) ** 2, 0),
    );
    assert.ok(after <= clip * (1 + 1e-6), `‖ΔB·A‖ = ${after} > C at peer std ${peerStd}`);
    if (norm > clip) assert.ok(Math.abs(after - clip) < 1e-5 * clip);
    else assert.equal(scale, 1);
    // Phase A: ‖B_t·ΔA_t‖.
    const dA = [0, 1].map(() => randomMatrix(rng, r, d, 0.2));
    const pB = [0, 1].map(() => randomMatrix(rng, d, r, peerStd));
    const resA = clipProductSpace({ phase: "A", deltas: dA, peers: pB, d, r }, clip);
    const afterA = Math.sqrt(
      resA.tensors.reduce((s, t, i) => s + productNormA(pB[i], t, d, r) ** 2, 0),
    );
    assert.ok(afterA <= clip * (1 + 1e-6));
  }
  assert.throws(
    () => clipProductSpace({ phase: "B", deltas: [new Float32Array(8)], peers: [], d: 4, r: 2 }, 1),
    /deltas has 1 tensors but peers has 0/,
  );
});
