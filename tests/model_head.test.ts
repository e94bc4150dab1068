import assert from "node:assert/strict";
import { tf } from "../lib/backend.ts";
import {
  cosineScores,
  DEFAULT_LOGIT_SCALE,
  loadPrototypes,
  orthonormalPrototypes,
  prototypeLogits,
  savePrototypes,
} from "../lib/model/head.ts";
import { writeSafetensors } from "../lib/model/safetensors.ts";

function close(got: ArrayLike<number>, want: number[], tol = 1e-5): void {
  assert.equal(got.length, want.length);
  for (let i = 0; i < want.length; i++) {
    assert.ok(Math.abs(got[i] - want[i]) <= tol, `[${i}] ${got[i]} vs ${want[i]}`);
  }
}

Deno.test("head: logits are exp(logit_scale) · normalize(f) · Tᵀ; cosine scores without the scale", () => {
  const before = tf.memory().numTensors;
  const features = tf.tensor2d([[3, 4, 0], [0, 0, -2]]);
  const prototypes = tf.tensor2d([[1, 0, 0], [0, 0.6, 0.8]]);
  // normalize: [0.6, 0.8, 0] and [0, 0, −1]
  const cosine = [0.6, 0.48, 0, -0.8];
  const scores = cosineScores(features, prototypes);
  close(scores.dataSync(), cosine);
  assert.ok(Math.abs(DEFAULT_LOGIT_SCALE - Math.log(1 / 0.07)) < 1e-12);
  const logits = prototypeLogits(features, prototypes);
  close(logits.dataSync(), cosine.map((c) => c / 0.07), 1e-4);
  const scale = tf.scalar(Math.log(2));
  const scaled = prototypeLogits(features, prototypes, scale);
  close(scaled.dataSync(), cosine.map((c) => 2 * c));
  // A scalar logit scale is trainable: d/ds sum(exp(s)·cos) = exp(s)·sum(cos).
  const g = tf.grad((s: tf.Tensor) => prototypeLogits(features, prototypes, s as tf.Scalar).sum())(
    scale,
  );
  close(g.dataSync(), [2 * cosine.reduce((a, b) => a + b, 0)]);
  assert.throws(
    () => cosineScores(features, tf.zeros([2, 4]) as tf.Tensor2D),
    /must be \[N, e\] and \[C, e\]/,
  );
  for (const t of [features, prototypes, scores, logits, scale, scaled, g]) t.dispose();
  assert.equal(tf.memory().numTensors, before + 1); // the tf.zeros of the failed call
});

Deno.test("head: orthonormal prototypes are orthonormal and seeded", () => {
  const T = orthonormalPrototypes(11, 24, 10);
  assert.deepEqual(T.shape, [11, 24]);
  const gram = tf.matMul(T, T, false, true).dataSync();
  for (let i = 0; i < 11; i++) {
    for (let j = 0; j < 11; j++) assert.ok(Math.abs(gram[i * 11 + j] - (i === j ? 1 : 0)) < 1e-5);
  }
  assert.deepEqual(orthonormalPrototypes(11, 24, 10).dataSync(), T.dataSync());
  assert.notDeepEqual(orthonormalPrototypes(11, 24, 11).dataSync(), T.dataSync());
  assert.throws(() => orthonormalPrototypes(25, 24, 1), /numClasses \(25\) ≤ embedDim \(24\)/);
});

Deno.test("head: prototypes save and load with class names; wrong files fail clearly", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/protos.safetensors`;
  const T = orthonormalPrototypes(3, 8, 1);
  await savePrototypes(path, T, ["a", "b", "c"]);
  const loaded = await loadPrototypes(path, { numClasses: 3, embedDim: 8 });
  assert.deepEqual(loaded.classNames, ["a", "b", "c"]);
  close(loaded.prototypes.dataSync(), [...T.dataSync()]);
  await assert.rejects(
    loadPrototypes(path, { numClasses: 8, embedDim: 8 }),
    /protos\.safetensors: "prototypes" has shape \[3,8\]; expected \[8, 8\]/,
  );
  await assert.rejects(
    loadPrototypes(path, { embedDim: 512 }),
    /has shape \[3,8\]; expected \[C, 512\]/,
  );
  await assert.rejects(
    savePrototypes(path, T, ["a"]),
    /there are 1 class names; expected \[1, e\]/,
  );
  // Rows are normalised on load; a zero row is an error naming the class.
  const raw = `${dir}/raw.safetensors`;
  await writeSafetensors(raw, { prototypes: { shape: [2, 2], data: [3, 4, 0, 0] } }, {
    class_names: JSON.stringify(["x", "y"]),
  });
  await assert.rejects(loadPrototypes(raw), /raw\.safetensors: prototype row 1 \("y"\) has norm 0/);
  await writeSafetensors(raw, { other: { shape: [1], data: [1] } });
  await assert.rejects(loadPrototypes(raw), /raw\.safetensors: no tensor "prototypes"/);
  await writeSafetensors(raw, { prototypes: { shape: [1, 2], data: [3, 4] } });
  const unnamed = await loadPrototypes(raw);
  close(unnamed.prototypes.dataSync(), [0.6, 0.8]);
  assert.deepEqual(unnamed.classNames, []);
  for (const t of [T, loaded.prototypes, unnamed.prototypes]) t.dispose();
  await Deno.remove(dir, { recursive: true });
});
