import assert from "node:assert/strict";
import { join } from "node:path";
import { decodeIdx, encodeIdx, readIdxImages, readIdxLabels, writeIdx } from "../lib/data/idx.ts";
import { loadMedMnist } from "../lib/data/medmnist.ts";
import { readNpz } from "../lib/data/npy.ts";
import { classCounts } from "../lib/data/dataset.ts";
import {
  DEFAULT_DATA_PLAN,
  DEMO_CLASS_NAMES,
  DEMO_SOURCE_LABELS,
  PRETRAIN_SOURCE_LABELS,
  selectDemoIndices,
  sha256,
} from "../tasks/default_data.ts";
import { withDir } from "./helpers/temp.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const NPZ = join(ROOT, "data/default/fashion6.npz");
const MANIFEST = join(ROOT, "data/default/fashion6.json");

Deno.test("default data: fashion6.npz loads as a 6-class MedMNIST file with the planned counts", async () => {
  const ds = await loadMedMnist(NPZ, { classNames: DEMO_CLASS_NAMES });
  assert.deepEqual(ds.classNames, [
    "T-shirt/top",
    "Pullover",
    "Coat",
    "Shirt",
    "Sneaker",
    "Ankle boot",
  ]);
  const plan = DEFAULT_DATA_PLAN;
  for (
    const [split, per] of [
      ["train", plan.trainPerClass],
      ["val", plan.valPerClass],
      ["test", plan.testPerClass],
    ] as const
  ) {
    assert.deepEqual(ds[split].sampleShape, [28, 28, 3], split);
    assert.equal(ds[split].labels.length, 6 * per, split);
    assert.deepEqual(classCounts(ds[split], 6), Array(6).fill(per), split);
  }
  // The raw layout: [N, 28, 28] uint8 images, [N, 1] uint8 labels, int32 source indices.
  const raw = await readNpz(NPZ);
  assert.deepEqual(raw.train_images.shape, [2400, 28, 28]);
  assert.equal(raw.train_images.dtype, "|u1");
  assert.deepEqual(raw.test_labels.shape, [1200, 1]);
  assert.deepEqual(raw.val_source_index.shape, [600]);
  // Real images, not blank: mean pixel of Fashion-MNIST is ≈ 73.
  const px = raw.train_images.data as Uint8Array;
  const mean = px.reduce((a, b) => a + b, 0) / px.length;
  assert.ok(mean > 40 && mean < 110, `mean pixel ${mean}`);
});

Deno.test("default data: splits are disjoint, match the manifest, and the prompt images are held out", async () => {
  const raw = await readNpz(NPZ);
  const train = Array.from(raw.train_source_index.data as Int32Array);
  const val = Array.from(raw.val_source_index.data as Int32Array);
  const manifest = JSON.parse(await Deno.readTextFile(MANIFEST));
  const prompts: number[] = manifest.prompt_source_index;
  const seen = new Set<number>();
  for (const i of [...train, ...val, ...prompts]) {
    assert.ok(!seen.has(i), `train-file index ${i} is used twice`);
    seen.add(i);
  }
  assert.equal(prompts.length, 6 * DEFAULT_DATA_PLAN.promptsPerClass);
  assert.equal(manifest.sha256, await sha256(NPZ), "fashion6.json does not describe fashion6.npz");
  assert.deepEqual(manifest.class_names, DEMO_CLASS_NAMES);
  // The demo and pretraining classes partition Fashion-MNIST's ten.
  const all = [...DEMO_SOURCE_LABELS, ...PRETRAIN_SOURCE_LABELS].sort((a, b) => a - b);
  assert.deepEqual(all, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
});

Deno.test("default data: the selection is deterministic and follows the plan", () => {
  // 10 classes × 30 train images, 10 × 5 test images, labels cycling.
  const trainLabels = Uint8Array.from({ length: 300 }, (_, i) => i % 10);
  const testLabels = Uint8Array.from({ length: 50 }, (_, i) => i % 10);
  const plan = { seed: 3, trainPerClass: 5, valPerClass: 2, promptsPerClass: 3, testPerClass: 4 };
  const a = selectDemoIndices(trainLabels, testLabels, plan);
  assert.deepEqual(a, selectDemoIndices(trainLabels, testLabels, plan));
  assert.equal(a.train.length, 30);
  assert.equal(a.test.length, 24);
  for (const i of [...a.train, ...a.val, ...a.prompts]) {
    assert.ok((DEMO_SOURCE_LABELS as readonly number[]).includes(trainLabels[i]));
  }
  assert.notDeepEqual(a, selectDemoIndices(trainLabels, testLabels, { ...plan, seed: 4 }));
  assert.throws(
    () => selectDemoIndices(trainLabels, testLabels, { ...plan, trainPerClass: 30 }),
    /hold 30 images of class 0 \(T-shirt\/top\); the plan needs 35/,
  );
});

Deno.test("idx: reads gzip and plain files it wrote; rejects truncated and foreign files clearly", async () => {
  await withDir(async (dir) => {
    const images = Uint8Array.from({ length: 3 * 4 * 5 }, (_, i) => (i * 7) % 256);
    const labels = Uint8Array.from([9, 0, 3]);
    const imgPath = join(dir, "x-images-idx3-ubyte.gz");
    const lblPath = join(dir, "x-labels-idx1-ubyte");
    await writeIdx(imgPath, { shape: [3, 4, 5], data: images }, { gzip: true });
    await writeIdx(lblPath, { shape: [3], data: labels });
    const read = await readIdxImages(imgPath);
    assert.deepEqual(read.shape, [3, 4, 5]);
    assert.deepEqual(read.data, images);
    assert.deepEqual(await readIdxLabels(lblPath), labels);

    // Wrong rank for the helper.
    await assert.rejects(() => readIdxImages(lblPath), /holds uint8 \[3\]; expected uint8 images/);

    // A truncated gzip stream.
    const gz = await Deno.readFile(imgPath);
    const cut = join(dir, "cut-images-idx3-ubyte.gz");
    await Deno.writeFile(cut, gz.subarray(0, gz.length - 12));
    await assert.rejects(
      () => readIdxImages(cut),
      /cut-images-idx3-ubyte\.gz: gzip stream is corrupt or truncated/,
    );

    // A complete gzip stream of a truncated IDX payload.
    const plain = encodeIdx({ shape: [3, 4, 5], data: images });
    const short = join(dir, "short-images-idx3-ubyte");
    await Deno.writeFile(short, plain.subarray(0, plain.length - 7));
    await assert.rejects(
      () => readIdxImages(short),
      /the file is truncated: shape \[3,4,5\] of uint8 needs 76 bytes \(after decompression\), found 69/,
    );

    await assert.rejects(() => readIdxImages(join(dir, "missing.gz")), /no such file/);
  });
  assert.throws(
    () => decodeIdx(new Uint8Array([1, 2, 8, 1, 0, 0, 0, 0]), "a.idx"),
    /not an IDX file/,
  );
  assert.throws(
    () => decodeIdx(new Uint8Array([0, 0, 7, 1]), "b.idx"),
    /unknown IDX dtype code 0x07/,
  );
  // Big-endian int32 values come back in host order.
  const int32 = new Uint8Array([0, 0, 0x0c, 1, 0, 0, 0, 2, 0, 0, 1, 0, 0xff, 0xff, 0xff, 0xfe]);
  assert.deepEqual(Array.from(decodeIdx(int32).data), [256, -2]);
});
