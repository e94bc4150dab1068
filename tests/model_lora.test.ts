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

Deno.test("lora: packed factors give the lists' features and gradients, and the fast path never unstacks them", async () => {
  const { createVitEncoder } = await import("../lib/model/vit.ts");
  const { randomVitWeights } = await import("../lib/model/vit_init.ts");
  const { packedLora } = await import("../lib/model/lora.ts");
  const cfg = {
    layout: "openai" as const,
    preNorm: false,
    patchBias: true,
    proj: true,
    projBias: false,
    imageSize: 8,
    patchSize: 4,
    channels: 3,
    width: 16,
    layers: 2,
    heads: 2,
    mlpDim: 32,
    embedDim: 8,
    act: "gelu" as const,
    lnEps: 1e-5,
  };
  const encoder = createVitEncoder(cfg, randomVitWeights(cfg, createRng(3)));
  const rng = createRng(4);
  const host = initLora(cfg, 2, rng);
  host.B = host.B.map((b) => b.map(() => rng.uniform() - 0.5)); // B ≠ 0: both gradients matter
  const lists = loraToTensors(host, cfg.width);
  const A = tf.stack(lists.A) as tf.Tensor3D, B = tf.stack(lists.B) as tf.Tensor3D;
  const x = tf.randomNormal<tf.Rank.R4>([3, 8, 8, 3], 0, 1, "float32", 5);
  const target = tf.randomNormal<tf.Rank.R2>([3, 8], 0, 1, "float32", 6);
  const loss = (f: tf.Tensor2D) => tf.sum(tf.mul(f, target)) as tf.Scalar;
  const scale = loraScale(4, 2);
  const read = (ts: tf.Tensor[]) => Promise.all(ts.map(async (t) => Array.from(await t.data())));

  for (const fastPath of ["1", "0"]) {
    Deno.env.set("DEER_FAST_PATH", fastPath);
    try {
      // The lists, then the packed tensors through the trainer's helper.
      const viaLists = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) =>
        loss(encoder.encode(x, {
          A: tf.unstack(a) as tf.Tensor2D[],
          B: tf.unstack(b) as tf.Tensor2D[],
          scale,
        }))
      )([A, B]);
      let listsRead = 0;
      const viaPacked = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) => {
        const input = packedLora(a as tf.Tensor3D, b as tf.Tensor3D, { scale });
        const counting = {
          ...input,
          get A() {
            listsRead++;
            return input.A;
          },
          get B() {
            listsRead++;
            return input.B;
          },
        };
        return loss(encoder.encode(x, counting));
      })([A, B]);
      const [l1, l2] = await read([viaLists.value, viaPacked.value]);
      const [ga1, gb1, ga2, gb2] = await read([...viaLists.grads, ...viaPacked.grads]);
      const what = `DEER_FAST_PATH=${fastPath} on ${tf.getBackend()}`;
      assert.deepEqual(l2, l1, `loss, ${what}`);
      assert.deepEqual(ga2, ga1, `A's gradient, ${what}`);
      assert.deepEqual(gb2, gb1, `B's gradient, ${what}`);
      assert.ok(ga1.some((v) => v !== 0) && gb1.some((v) => v !== 0), "both gradients non-zero");
      // The fast path (tensorflow always; webgpu and wasm unless DEER_FAST_PATH=0) takes the
      // packed tensors as they are; the autodiff path cuts the lists from them.
      const fast = tf.getBackend() === "tensorflow" || fastPath === "1" &&
          ["webgpu", "wasm"].includes(tf.getBackend());
      if (fast) assert.equal(listsRead, 0, `the lists were read on the fast path (${what})`);
      else assert.ok(listsRead > 0, `the autodiff path reads the lists (${what})`);
      tf.dispose([viaLists.value, viaPacked.value, ...viaLists.grads, ...viaPacked.grads]);
    } finally {
      Deno.env.delete("DEER_FAST_PATH");
    }
  }

  // Packed tensors of the wrong shape are refused, naming what is expected.
  const wrong = tf.zeros<tf.Rank.R3>([5, 2, 16]);
  assert.throws(
    () => encoder.encode(x, packedLora(wrong, B, { scale })),
    /packed LoRA has A \[5,2,16\] and B \[6,16,2\]; expected A \[6, r, 16\] and B \[6, 16, r\]/,
  );
  tf.dispose([A, B, x, target, wrong]);
  disposeLora(lists);
  encoder.dispose();
});
