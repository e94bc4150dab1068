import assert from "node:assert/strict";
import * as deer from "../mod.ts";

Deno.test("mod.ts: the public API of docs/architecture.md exists and works on small inputs", async () => {
  const { tf } = deer;
  assert.equal(typeof tf.matMul, "function");
  assert.ok(["webgpu", "tensorflow", "wasm", "cpu"].includes(deer.backendName));

  const { epsilon } = deer.rdpEpsilon({
    noiseMultiplier: 2,
    sampleRate: 1,
    steps: 10,
    delta: 1e-5,
  });
  assert.ok(epsilon > 0 && Number.isFinite(epsilon));
  const sigma = deer.noiseMultiplierForBudget({
    targetEpsilon: epsilon,
    targetDelta: 1e-5,
    sampleRate: 1,
    steps: 10,
  });
  assert.ok(Math.abs(sigma - 2) < 0.02, `σ ${sigma} recovers 2`);

  const m = deer.classificationMetrics([0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]);
  assert.ok(Math.abs(m.accuracy - 2 / 3) < 1e-12);
  assert.equal(m.auc, 1);
  const paired = deer.pairedComparison([60, 61, 59], [58, 58, 59]);
  assert.equal(paired.signFlipP, 0.5);
  assert.match(deer.describeComparison(paired, "DEeR", "LoRA"), /^DEeR − LoRA = \+1\.7 points/);

  const parts = deer.dirichletPartition([0, 0, 1, 1, 2, 2, 0, 1], 3, 0.5, 10);
  assert.deepEqual(parts.flat().sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7]);

  const A = tf.tensor2d([[2, 0, 0], [0, 1, 0]]);
  const W = tf.eye(3) as deer.tf.Tensor2D;
  const nB = await deer.regulateNoiseForB(W, A);
  assert.deepEqual(nB.shape, [3, 2]);
  const B = tf.tensor2d([[1, 0], [0, 2], [0, 0]]);
  const nA = await deer.regulateNoiseForA(W, B);
  assert.deepEqual(nA.shape, [2, 3]);
  assert.equal(await deer.aggregationDeviation([B, B], [A, A], [0.5, 0.5]), 0);
  tf.dispose([A, W, nB, B, nA]);

  const dir = await Deno.makeTempDir();
  const path = `${dir}/a.npz`;
  await deer.writeNpz(path, { x: { shape: [2], data: new Float32Array([1, 2]) } });
  const read = await deer.readNpz(path);
  assert.deepEqual(Array.from(read.x.data as Float32Array), [1, 2]);
  assert.equal(typeof deer.loadVisionEncoder, "function");
});
