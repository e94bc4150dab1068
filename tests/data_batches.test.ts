import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/backend.ts";
import { createRng } from "../lib/rng.ts";
import { batchIndices, makeBatch, normalizationTable, numBatches } from "../lib/data/batches.ts";
import { readNpz } from "../lib/data/npy.ts";
import type { ImageSplit } from "../lib/data/dataset.ts";
import { CLIP_MEAN, CLIP_STD } from "../lib/data/image.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;

Deno.test("batchIndices: seeded shuffle, every index once, last batch smaller", () => {
  const idx = Array.from({ length: 23 }, (_, i) => 100 + i);
  const batches = [...batchIndices(idx, 5, { seed: 10 })];
  assert.deepEqual(batches.map((b) => b.length), [5, 5, 5, 5, 3]);
  assert.deepEqual(batches.flat().sort((a, b) => a - b), idx);
  assert.notDeepEqual(batches.flat(), idx);
  assert.deepEqual([...batchIndices(idx, 5, { seed: 10 })], batches);
  assert.notDeepEqual([...batchIndices(idx, 5, { seed: 11 })], batches);
  // One rng across epochs: each epoch a new order.
  const rng = createRng(1);
  const e1 = [...batchIndices(idx, 23, { rng })][0];
  const e2 = [...batchIndices(idx, 23, { rng })][0];
  assert.notDeepEqual(e1, e2);
  assert.deepEqual([...batchIndices([1, 2, 3], 2, { shuffle: false })], [[1, 2], [3]]);
  assert.deepEqual([...batchIndices([1, 2, 3], 2, { shuffle: false, dropLast: true })], [[1, 2]]);
  assert.equal(numBatches(23, 5), 5);
  assert.equal(numBatches(23, 5, true), 4);
  assert.throws(() => [...batchIndices(idx, 0)], /batchSize must be an integer ≥ 1, got 0/);
});

Deno.test("normalisation table equals torchvision's ToTensor + Normalize in float32", async () => {
  const want = (await readNpz(join(FIXTURES, "data_pil_resize.npz"), { keys: ["clip_norm_table"] }))
    .clip_norm_table;
  assert.deepEqual(want.shape, [3, 256]);
  const got = normalizationTable({ mean: CLIP_MEAN, std: CLIP_STD });
  assert.deepEqual(Array.from(got), Array.from(want.data as Float32Array));
});

Deno.test("makeBatch gathers, normalises per channel, one x and one y tensor", () => {
  const split: ImageSplit = {
    images: Uint8Array.from({ length: 4 * 2 * 2 * 3 }, (_, i) => (i * 17) % 256),
    sampleShape: [2, 2, 3],
    labels: new Int32Array([3, 1, 4, 1]),
  };
  const before = tf.memory().numTensors;
  const { x, y } = makeBatch(split, [2, 0]);
  assert.equal(tf.memory().numTensors, before + 2);
  assert.deepEqual(x.shape, [2, 2, 2, 3]);
  assert.equal(x.dtype, "float32");
  assert.equal(y.dtype, "int32");
  assert.deepEqual(Array.from(y.dataSync()), [4, 3]);
  const xs = x.dataSync();
  for (let j = 0; j < 12; j++) {
    const v = split.images[2 * 12 + j];
    const c = j % 3;
    const f = Math.fround;
    assert.equal(xs[j], f(f(f(v / 255) - f(CLIP_MEAN[c])) / f(CLIP_STD[c])));
  }
  tf.dispose([x, y]);
  assert.equal(tf.memory().numTensors, before);

  const grey: ImageSplit = {
    images: new Uint8Array([0, 255, 51, 102]),
    sampleShape: [1, 2, 1],
    labels: new Int32Array([0, 1]),
  };
  assert.throws(() => makeBatch(grey, [0]), /samples have 1 channel\(s\); pass \{ mean, std \}/);
  const g = makeBatch(grey, [1, 0], { mean: [0.5], std: [0.5] });
  const f = Math.fround;
  const norm = (v: number) => f(f(f(v / 255) - 0.5) / 0.5);
  assert.deepEqual(Array.from(g.x.dataSync()), [norm(51), norm(102), -1, 1]);
  tf.dispose([g.x, g.y]);
  assert.throws(() => makeBatch(split, [4]), /index 4 is outside the split \(0\.\.3\)/);
  assert.throws(
    () => makeBatch(split, [0], { mean: [0.5], std: [0.5] }),
    /samples have 3 channel\(s\) but mean\/std have 1/,
  );
});
