import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/backend.ts";
import { makeBatch } from "../lib/data/batches.ts";
import { writeIdx } from "../lib/data/idx.ts";
import { loadMedMnist } from "../lib/data/medmnist.ts";
import { cosineScores, loadPrototypes } from "../lib/model/head.ts";
import { readSafetensors } from "../lib/model/safetensors.ts";
import { loadVisionEncoder } from "../lib/model/vit_checkpoints.ts";
import { randomVitWeights, saveVisionEncoder } from "../lib/model/vit_init.ts";
import { createVitEncoder, type VitConfig } from "../lib/model/vit.ts";
import { createRng } from "../lib/rng.ts";
import { DEMO_CLASS_NAMES, DEMO_SOURCE_LABELS } from "../tasks/default_data.ts";
import {
  DEFAULT_PRETRAIN,
  MODEL_FILE,
  pretrainVit,
  PROTOTYPES_FILE,
  timeLoraStep,
} from "../tasks/pretrain.ts";
import { withDir } from "./helpers/temp.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const MODEL = join(ROOT, "models/default", MODEL_FILE);
const PROTOTYPES = join(ROOT, "models/default", PROTOTYPES_FILE);
const NPZ = join(ROOT, "data/default/fashion6.npz");

Deno.test("default model: loads without options, agrees with its prototypes, beats chance zero-shot", async () => {
  const encoder = await loadVisionEncoder(MODEL);
  const { config } = encoder;
  assert.equal(config.layout, "openai");
  assert.equal(config.imageSize, 28);
  assert.equal(config.act, "quick_gelu");
  assert.equal(config.heads, DEFAULT_PRETRAIN.heads);
  assert.equal(config.width, DEFAULT_PRETRAIN.width);
  assert.equal(config.layers, DEFAULT_PRETRAIN.layers);
  assert.equal(config.embedDim, DEFAULT_PRETRAIN.embed);
  assert.ok((await Deno.stat(MODEL)).size <= 5e6, "the shipped model must stay ≤ 5 MB");
  const { prototypes, classNames } = await loadPrototypes(PROTOTYPES, {
    numClasses: DEMO_CLASS_NAMES.length,
    embedDim: config.embedDim,
  });
  assert.deepEqual(classNames, DEMO_CLASS_NAMES);

  // 20 test images per class: the frozen model must be clearly better than chance (1/6).
  const ds = await loadMedMnist(NPZ, { classNames });
  const idx: number[] = [];
  const taken = Array(6).fill(0);
  ds.test.labels.forEach((y, i) => {
    if (taken[y] < 20) idx.push(i), taken[y]++;
  });
  const { x, y } = makeBatch(ds.test, idx);
  const predicted = tf.tidy(() =>
    cosineScores(encoder.encode(x as tf.Tensor4D), prototypes).argMax(1)
  );
  const hits = tf.tidy(() => predicted.equal(y).sum().dataSync()[0]);
  tf.dispose([x, y, predicted, prototypes]);
  encoder.dispose();
  assert.ok(hits / idx.length > 0.4, `zero-shot accuracy ${hits / idx.length} on 120 test images`);
});

Deno.test("vit: saveVisionEncoder writes an open_clip file that loads back to the same encoder", async () => {
  await withDir(async (dir) => {
    const config: VitConfig = {
      layout: "openai",
      imageSize: 14,
      patchSize: 7,
      channels: 3,
      width: 16,
      layers: 2,
      heads: 4,
      mlpDim: 32,
      embedDim: 8,
      act: "gelu",
      lnEps: 1e-5,
      preNorm: true,
      patchBias: false,
      proj: true,
      projBias: false,
    };
    const encoder = createVitEncoder(config, randomVitWeights(config, createRng(5)));
    const path = join(dir, "tiny.safetensors");
    await saveVisionEncoder(path, encoder, { note: "test" });
    const { tensors, metadata } = await readSafetensors(path);
    assert.equal(metadata.note, "test");
    assert.deepEqual(tensors["visual.conv1.weight"].shape, [16, 3, 7, 7]);
    assert.deepEqual(tensors["visual.transformer.resblocks.1.attn.in_proj_weight"].shape, [48, 16]);
    assert.deepEqual(tensors["visual.proj"].shape, [16, 8]);
    const again = await loadVisionEncoder(path);
    assert.deepEqual(again.config, config);
    const x = tf.randomNormal([3, 14, 14, 3], 0, 1, "float32", 7) as tf.Tensor4D;
    const [a, b] = [encoder, again].map((e) => tf.tidy(() => e.encode(x)).dataSync());
    assert.deepEqual(Array.from(b), Array.from(a));
    tf.dispose(x);
    encoder.dispose();
    again.dispose();
  });
});

Deno.test("pretrain: a tiny run lowers the loss and writes a loadable model and prototypes", async () => {
  // Tiny IDX files of real images (from the shipped demo set): 48 images under the pretraining
  // labels, 4 per demo class in the train file (prompts), a few of each in t10k.
  const ds = await loadMedMnist(NPZ, { classNames: DEMO_CLASS_NAMES, channels: 1 });
  const per = 28 * 28;
  const pretrainLabel = [1, 3, 5, 8, 1, 3]; // demo class → a pretraining label, so labels mean something
  const pick = (from: number, count: number, label: (demo: number) => number) => {
    const images = new Uint8Array(count * per);
    const labels = new Uint8Array(count);
    for (let i = 0; i < count; i++) {
      images.set(ds.train.images.subarray((from + i) * per, (from + i + 1) * per), i * per);
      labels[i] = label(ds.train.labels[from + i]);
    }
    return { images, labels };
  };
  const concat = (parts: { images: Uint8Array; labels: Uint8Array }[]) => ({
    images: Uint8Array.from(parts.flatMap((p) => Array.from(p.images))),
    labels: Uint8Array.from(parts.flatMap((p) => Array.from(p.labels))),
  });
  const demoPerClass = (from: number, n: number) => {
    const images: number[] = [], labels: number[] = [];
    const taken = Array(6).fill(0);
    for (let i = from; i < ds.train.labels.length && labels.length < 6 * n; i++) {
      const c = ds.train.labels[i];
      if (taken[c] >= n) continue;
      taken[c]++;
      images.push(...ds.train.images.subarray(i * per, (i + 1) * per));
      labels.push(DEMO_SOURCE_LABELS[c]);
    }
    return { images: Uint8Array.from(images), labels: Uint8Array.from(labels) };
  };
  const train = concat([pick(0, 48, (c) => pretrainLabel[c]), demoPerClass(100, 4)]);
  const test = concat([pick(200, 12, (c) => pretrainLabel[c]), demoPerClass(300, 1)]);
  await withDir(async (dir) => {
    const source = join(dir, "fmnist");
    const write = (name: string, a: { images: Uint8Array; labels: Uint8Array }) =>
      Promise.all([
        writeIdx(join(source, `${name}-images-idx3-ubyte.gz`), {
          shape: [a.labels.length, 28, 28],
          data: a.images,
        }, { gzip: true }),
        writeIdx(join(source, `${name}-labels-idx1-ubyte.gz`), {
          shape: [a.labels.length],
          data: a.labels,
        }, { gzip: true }),
      ]);
    await write("train", train);
    await write("t10k", test);
    const out = join(dir, "model");
    const before = tf.memory().numTensors;
    const result = await pretrainVit({
      ...DEFAULT_PRETRAIN,
      source,
      data: null, // the zero-shot report is checked on the shipped model above
      out,
      steps: 20,
      batch: 16,
      lr: 5e-3,
      width: 16,
      layers: 1,
      heads: 2,
      embed: 16,
      plan: { seed: 1, trainPerClass: 1, valPerClass: 1, promptsPerClass: 2, testPerClass: 1 },
      logEvery: 0,
      timeLoraStep: false,
    });
    assert.equal(tf.memory().numTensors, before, "pretrainVit leaks tensors");
    // The loss went down: mean of the first 5 steps against the last 5.
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const early = mean(result.stepLosses.slice(0, 5)), late = mean(result.stepLosses.slice(-5));
    assert.equal(result.stepLosses.length, 20);
    assert.ok(late < early - 0.1, `loss ${early} → ${late}`);
    const encoder = await loadVisionEncoder(result.files.model);
    assert.equal(encoder.config.width, 16);
    assert.equal(encoder.config.heads, 2);
    const { prototypes } = await loadPrototypes(result.files.prototypes, {
      numClasses: 6,
      embedDim: 16,
    });
    assert.equal(result.zeroShot, undefined);
    assert.ok((await Deno.readTextFile(result.files.readme)).includes("deno task pretrain"));
    prototypes.dispose();
    encoder.dispose();
  });
});

Deno.test("pretrain: the LoRA step benchmark times the engine's trainer on the shipped model and frees its tensors", async () => {
  const encoder = await loadVisionEncoder(MODEL);
  const { prototypes } = await loadPrototypes(PROTOTYPES, { numClasses: 6, embedDim: 64 });
  const before = tf.memory().numTensors;
  const timing = await timeLoraStep(encoder, prototypes, { batch: 2, rank: 2 });
  assert.equal(tf.memory().numTensors, before, "timeLoraStep leaks tensors");
  assert.equal(timing.batch, 2);
  assert.equal(timing.rank, 2);
  assert.ok(timing.wallMs > 0 && Number.isFinite(timing.wallMs), `wall ${timing.wallMs} ms`);
  assert.ok(timing.cpuMs >= 0 && Number.isFinite(timing.cpuMs), `cpu ${timing.cpuMs} ms`);
  prototypes.dispose();
  encoder.dispose();
});
