import assert from "node:assert/strict";
import { join } from "node:path";
import { resizeVolumes, volumeSide } from "../lib/data/volume.ts";
import { writeNpz } from "../lib/data/npy.ts";
import { loadInputs } from "../lib/experiment.ts";
import { defaultConfig, runFederated } from "../lib/fl/simulation.ts";
import { createRng } from "../lib/rng.ts";
import { TINY_MODEL } from "./helpers/fl_fixture.ts";

Deno.test("resizeVolumes equals PyTorch trilinear (align_corners=False), rounded half-up", () => {
  // Reference: torch 2.13 F.interpolate(v, size=(6,6,6), mode="trilinear", align_corners=False)
  // on v = (arange(60)·4) % 256 shaped [3, 4, 5], then floor(x + 0.5).
  const src = Uint8Array.from({ length: 60 }, (_, i) => (i * 4) % 256);
  const expected = [
    0,
    3,
    6,
    10,
    13,
    16,
    10,
    13,
    16,
    20,
    23,
    26,
    23,
    26,
    30,
    33,
    36,
    39,
    37,
    40,
    43,
    46,
    50,
    53,
    50,
    53,
    56,
    60,
    63,
    66,
    60,
    63,
    66,
    70,
    73,
    76,
    20,
    23,
    26,
    30,
    33,
    36,
    30,
    33,
    36,
    40,
    43,
    46,
    43,
    46,
    50,
    53,
    56,
    59,
    57,
    60,
    63,
    66,
    70,
    73,
    70,
    73,
    76,
    80,
    83,
    86,
    80,
    83,
    86,
    90,
    93,
    96,
    60,
    63,
    66,
    70,
    73,
    76,
    70,
    73,
    76,
    80,
    83,
    86,
    83,
    86,
    90,
    93,
    96,
    99,
    97,
    100,
    103,
    106,
    110,
    113,
    110,
    113,
    116,
    120,
    123,
    126,
    120,
    123,
    126,
    130,
    133,
    136,
    100,
    103,
    106,
    110,
    113,
    116,
    110,
    113,
    116,
    120,
    123,
    126,
    123,
    126,
    130,
    133,
    136,
    139,
    137,
    140,
    143,
    146,
    150,
    153,
    150,
    153,
    156,
    160,
    163,
    166,
    160,
    163,
    166,
    170,
    173,
    176,
    140,
    143,
    146,
    150,
    153,
    156,
    150,
    153,
    156,
    160,
    163,
    166,
    163,
    166,
    170,
    173,
    176,
    179,
    177,
    180,
    183,
    186,
    190,
    193,
    190,
    193,
    196,
    200,
    203,
    206,
    200,
    203,
    206,
    210,
    213,
    216,
    160,
    163,
    166,
    170,
    173,
    176,
    170,
    173,
    176,
    180,
    183,
    186,
    183,
    186,
    190,
    193,
    196,
    199,
    197,
    200,
    203,
    206,
    210,
    213,
    210,
    213,
    216,
    220,
    223,
    226,
    220,
    223,
    226,
    230,
    233,
    236,
  ];
  const out = resizeVolumes(
    { images: src, sampleShape: [3, 4, 5, 1], labels: new Int32Array([0]) },
    6,
  );
  assert.deepEqual(out.sampleShape, [6, 6, 6, 1]);
  assert.deepEqual(Array.from(out.images), expected);
  assert.equal(volumeSide(28, 16), 64);
  assert.equal(volumeSide(28, 4), 28);
  assert.throws(
    () => resizeVolumes({ images: src, sampleShape: [4, 5, 3], labels: new Int32Array([0]) }, 6),
    /expected \[D, H, W, 1\] volumes/,
  );
});

Deno.test("experiment: a MedMNIST-3D npz trains through the inflated encoder", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-3d-" });
  const rng = createRng(3);
  const split = (n: number) => {
    const vox = 10 * 10 * 10;
    const images = new Uint8Array(n * vox);
    const labels = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      labels[i] = i % 2;
      for (let j = 0; j < vox; j++) {
        const bright = labels[i] === 1 && j < vox / 2;
        images[i * vox + j] = Math.max(0, Math.min(255, (bright ? 180 : 70) + rng.normal() * 30));
      }
    }
    return {
      images: { shape: [n, 10, 10, 10], data: images },
      labels: { shape: [n, 1], data: labels },
    };
  };
  const tr = split(24), va = split(8), te = split(8);
  const path = join(dir, "toy3d.npz");
  await writeNpz(path, {
    train_images: tr.images,
    train_labels: tr.labels,
    val_images: va.images,
    val_labels: va.labels,
    test_images: te.images,
    test_labels: te.labels,
  });
  const inputs = await loadInputs({
    dataset: path,
    modelPath: TINY_MODEL,
    prototypes: "orthonormal",
    rank: 2,
    alpha: 2,
  });
  try {
    // The tiny encoder has patch 4: 10³ volumes are resampled to 16³ = 4³ tokens.
    assert.deepEqual(inputs.data.train.sampleShape, [16, 16, 16, 1]);
    const res = await runFederated(inputs.backbone, inputs.data, {
      ...defaultConfig(),
      numClients: 2,
      rounds: 1,
      localEpochs: 1,
      batchSize: 8,
    });
    assert.ok(Number.isFinite(res.records[0].trainLoss));
    assert.ok(res.records[0].deviation < 1e-10);
  } finally {
    inputs.dispose();
  }
});
