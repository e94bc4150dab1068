import assert from "node:assert/strict";
import { tf } from "../lib/backend.ts";
import { createRng } from "../lib/rng.ts";
import {
  disposeLora,
  initLora,
  loraFromTensors,
  loraRank,
  loraScale,
  loraToTensors,
} from "../lib/model/lora.ts";

Deno.test("lora: init draws A from U(−1/√d, 1/√d), B zeros, one pair per q/k/v of each block", () => {
  const config = { width: 64, layers: 3 };
  const { A, B } = initLora(config, 4, createRng(10));
  assert.equal(A.length, 9);
  assert.equal(B.length, 9);
  const bound = 1 / Math.sqrt(64);
  let sum = 0, sumSq = 0, n = 0, max = 0;
  for (const a of A) {
    assert.equal(a.length, 4 * 64);
    for (const v of a) {
      assert.ok(Math.abs(v) <= bound);
      max = Math.max(max, Math.abs(v));
      sum += v;
      sumSq += v * v;
      n++;
    }
  }
  // Uniform(−b, b): mean 0, variance b²/3 (2,304 draws: loose bounds).
  assert.ok(Math.abs(sum / n) < 0.1 * bound);
  assert.ok(Math.abs(sumSq / n / (bound * bound / 3) - 1) < 0.1);
  assert.ok(max > 0.95 * bound);
  for (const b of B) {
    assert.equal(b.length, 64 * 4);
    assert.ok(b.every((v) => v === 0));
  }
  // Seeded: the same seed gives the same factors, another seed other ones.
  assert.deepEqual(initLora(config, 4, createRng(10)).A, A);
  assert.notDeepEqual(initLora(config, 4, createRng(11)).A[0], A[0]);
  assert.throws(
    () => initLora(config, 0, createRng(1)),
    /rank 0 must be an integer in \[1, width = 64\]/,
  );
});

Deno.test("lora: scale is alpha / r", () => {
  assert.equal(loraScale(8, 8), 1);
  assert.equal(loraScale(16, 4), 4);
  assert.throws(() => loraScale(8, 0), /rank 0 > 0/);
});

Deno.test("lora: host factors ↔ tensors round-trip with [r, d] and [d, r] shapes", async () => {
  const host = initLora({ width: 16, layers: 1 }, 2, createRng(3));
  host.B[1][5] = 0.25;
  const before = tf.memory().numTensors;
  const t = loraToTensors(host, 16);
  assert.deepEqual(t.A[0].shape, [2, 16]);
  assert.deepEqual(t.B[0].shape, [16, 2]);
  assert.equal(t.B[1].dataSync()[5], 0.25);
  assert.deepEqual(await loraFromTensors(t), host);
  disposeLora(t);
  assert.equal(tf.memory().numTensors, before);
  assert.equal(loraRank(host, 16), 2);
  assert.throws(
    () => loraToTensors(host, 12),
    /LoRA A\[0\] has 32 values; expected r × width \(width 12\)/,
  );
  const broken = { A: host.A, B: [host.B[0], host.B[1], new Float32Array(3)] };
  assert.throws(
    () => loraRank(broken, 16),
    /LoRA adapter 2: A has 32 and B 3 values; expected 2×16 each/,
  );
});
