/**
 * The optimised training path equals the straightforward one: `encoder.encode` (on the
 * `tensorflow` backend, `lib/model/vit_fast.ts`: hand-written backward, class-token-only last
 * block, folded constants) against `encodeWithWeights` (the plain forward pass, differentiated by
 * tfjs' autodiff), and `createLocalTrainer` (all adapters of a kind in one tensor, one SGD update
 * per kind) against a test-only copy of the original per-adapter step.
 */
import assert from "node:assert/strict";
import { tf } from "../lib/backend.ts";
import { createRng } from "../lib/rng.ts";
import type { LoraInput } from "../lib/model/transformer.ts";
import { loadVisionEncoder } from "../lib/model/vit_checkpoints.ts";
import { inflateForVolumes } from "../lib/model/vit_volume.ts";
import { randomVitWeights } from "../lib/model/vit_init.ts";
import {
  createVitEncoder,
  encodeWithWeights,
  type VitConfig,
  type VitEncoder,
} from "../lib/model/vit.ts";
import { frozenPathAvailable } from "../lib/model/vit_fast.ts";
import { initLora } from "../lib/model/lora.ts";
import { orthonormalPrototypes } from "../lib/model/head.ts";
import { makeBackbone } from "../lib/fl/backbone.ts";
import {
  type Backbone,
  createLocalTrainer,
  prototypeLoss,
  rankMasks,
  type TrainerJob,
} from "../lib/fl/local.ts";
import type { LoraFactors } from "../lib/fl/factors.ts";
import { relativeError } from "./helpers/numeric.ts";

const FIXTURES = new URL("./fixtures/model_tiny/", import.meta.url).pathname;

/** max |got − want| / max |want|. */
function config(over: Partial<VitConfig>): VitConfig {
  return {
    layout: "openai",
    imageSize: 16,
    patchSize: 4,
    channels: 3,
    width: 32,
    layers: 3,
    heads: 4,
    mlpDim: 64,
    act: "gelu",
    lnEps: 1e-5,
    preNorm: true,
    patchBias: false,
    proj: true,
    projBias: false,
    ...over,
    embedDim: over.proj === false ? over.width ?? 32 : 24,
  };
}

/** LoRA tensors with non-zero B, so that every gradient path carries numbers. */
function randomLora(cfg: VitConfig, rank: number, seed: number) {
  const rng = createRng(seed);
  const host = initLora(cfg, rank, rng);
  const A = host.A.map((a) => tf.tensor2d(a, [rank, cfg.width]));
  const B = host.B.map((b) => tf.tensor2d(b.map(() => rng.normal() * 0.2), [cfg.width, rank]));
  return { A, B };
}

/** Value of Σ w·f(x) and its gradients with respect to every A and B. */
async function valueAndGrads(
  encode: (lora: LoraInput) => tf.Tensor2D,
  lora: { A: tf.Tensor2D[]; B: tf.Tensor2D[] },
  weights: tf.Tensor,
  scale: number,
  residual?: tf.Tensor2D[],
): Promise<{ value: Float32Array; grads: Float32Array[] }> {
  const n = lora.A.length;
  const [value, ...grads] = tf.tidy(() => {
    const value = encode({ ...lora, scale, residual });
    const grads = tf.grads((...ps: tf.Tensor[]) =>
      tf.sum(tf.mul(
        encode({
          A: ps.slice(0, n) as tf.Tensor2D[],
          B: ps.slice(n) as tf.Tensor2D[],
          scale,
          residual,
        }),
        weights,
      ))
    )([...lora.A, ...lora.B]);
    return [value, ...grads];
  });
  const [v, ...gs] = await readAll([value, ...grads]);
  return { value: v, grads: gs };
}

/** Reads tensors back (the only read-back every backend has) and disposes them. */
async function readAll(ts: tf.Tensor[]): Promise<Float32Array[]> {
  const out = await Promise.all(ts.map(async (t) => await t.data() as Float32Array));
  tf.dispose(ts);
  return out;
}

async function assertSame(encoder: VitEncoder, x: tf.Tensor4D | tf.Tensor5D, what: string, opts: {
  rank?: number;
  scale?: number;
  residual?: boolean;
} = {}) {
  const cfg = encoder.config;
  const lora = randomLora(cfg, opts.rank ?? 4, 3);
  const weights = tf.randomNormal([x.shape[0], cfg.embedDim], 0, 1, "float32", 4);
  const residual = opts.residual
    ? lora.A.map((_, i) =>
      tf.randomNormal([cfg.width, cfg.width], 0, 0.05, "float32", 10 + i) as tf.Tensor2D
    )
    : undefined;
  const scale = opts.scale ?? 1.5;
  const before = tf.memory().numTensors;
  const fast = await valueAndGrads((l) => encoder.encode(x, l), lora, weights, scale, residual);
  assert.equal(tf.memory().numTensors, before, `${what}: the fast path leaks no tensors`);
  const reference = await valueAndGrads(
    (l) => encodeWithWeights(cfg, encoder.weights, x, l),
    lora,
    weights,
    scale,
    residual,
  );
  const ve = relativeError(fast.value, reference.value);
  assert.ok(ve < 1e-5, `${what}: features differ by ${ve}`);
  fast.grads.forEach((g, i) => {
    const e = relativeError(g, reference.grads[i]);
    assert.ok(e < 1e-4, `${what}: gradient ${i} differs by ${e}`);
  });
  // No adapters: the plain forward pass.
  const [plain, plainRef] = await readAll([
    tf.tidy(() => encoder.encode(x)),
    tf.tidy(() => encodeWithWeights(cfg, encoder.weights, x)),
  ]);
  assert.ok(relativeError(plain, plainRef) < 1e-5, `${what}: features without LoRA`);
  tf.dispose([lora.A, lora.B, weights, residual ?? []]);
}

Deno.test("perf: the frozen path runs on tensorflow, webgpu and wasm (unless DEER_FAST_PATH=0)", () => {
  const portable = ["webgpu", "wasm"].includes(tf.getBackend()) &&
    Deno.env.get("DEER_FAST_PATH") !== "0";
  assert.equal(frozenPathAvailable(), tf.getBackend() === "tensorflow" || portable);
});

Deno.test("perf: encode and its LoRA gradients equal the autodiff reference (checkpoints)", async () => {
  const x = tf.randomNormal([3, 16, 16, 3], 0, 1, "float32", 1) as tf.Tensor4D;
  for (const file of ["openai.safetensors", "hf/model.safetensors", "timm.safetensors"]) {
    const encoder = await loadVisionEncoder(`${FIXTURES}${file}`);
    await assertSame(encoder, x, file);
    encoder.dispose();
  }
  x.dispose();
});

Deno.test("perf: encode equals the reference for GELU/QuickGELU, biases, residuals, ranks", async () => {
  const x = tf.randomNormal([2, 16, 16, 3], 0, 1, "float32", 2) as tf.Tensor4D;
  const cases: [string, Partial<VitConfig>, Parameters<typeof assertSame>[3]][] = [
    ["gelu", { act: "gelu" }, {}],
    ["quick_gelu", { act: "quick_gelu" }, {}],
    ["no proj, no ln_pre, patch bias", { proj: false, preNorm: false, patchBias: true }, {}],
    ["proj bias, eps 1e-6, one layer", { projBias: true, lnEps: 1e-6, layers: 1 }, {}],
    ["rank 1, scale 4", { heads: 2 }, { rank: 1, scale: 4 }],
    ["FedEx residual", {}, { residual: true }],
    ["wide MLP (transposed layout), QuickGELU", { mlpDim: 2048, act: "quick_gelu" }, {}],
    ["wide MLP (transposed layout), GELU", { mlpDim: 2048, layers: 2 }, { residual: true }],
  ];
  for (const [what, over, opts] of cases) {
    const cfg = config(over);
    const encoder = createVitEncoder(cfg, randomVitWeights(cfg, createRng(7)));
    await assertSame(encoder, x, what, opts);
    encoder.dispose();
  }
  x.dispose();
});

Deno.test("perf: gradients for one trainable factor (the other constant) equal the reference", async () => {
  const cfg = config({});
  const encoder = createVitEncoder(cfg, randomVitWeights(cfg, createRng(6)));
  const x = tf.randomNormal([2, 16, 16, 3], 0, 1, "float32", 2) as tf.Tensor4D;
  const lora = randomLora(cfg, 4, 5);
  const weights = tf.randomNormal([2, cfg.embedDim], 0, 1, "float32", 4);
  for (const which of ["A", "B"] as const) {
    const grads = (encode: (l: LoraInput) => tf.Tensor2D) =>
      tf.tidy(() =>
        tf.grads((...ps: tf.Tensor[]) => {
          const l = { ...lora, scale: 2, trainable: [which] };
          return tf.sum(tf.mul(encode({ ...l, [which]: ps }), weights));
        })(lora[which])
      );
    const before = tf.memory().numTensors;
    const fastT = grads((l) => encoder.encode(x, l));
    assert.equal(tf.memory().numTensors, before + fastT.length);
    const fast = await readAll(fastT);
    const reference = await readAll(grads((l) => encodeWithWeights(cfg, encoder.weights, x, l)));
    fast.forEach((g, i) => {
      const e = relativeError(g, reference[i]);
      assert.ok(e < 1e-4, `trainable ${which}: gradient ${i} differs by ${e}`);
    });
  }
  tf.dispose([lora.A, lora.B, weights, x]);
  encoder.dispose();
});

Deno.test("perf: a volume encoder (per-key attention bias) equals the reference", async () => {
  const encoder = await loadVisionEncoder(`${FIXTURES}hf/model.safetensors`);
  const volume = await inflateForVolumes(encoder, { depth: 8, depthPatch: 2 });
  const x = tf.randomNormal([2, 8, 16, 16, 1], 0, 1, "float32", 3) as tf.Tensor5D;
  await assertSame(volume, x, "volume");
  x.dispose();
  volume.dispose();
  encoder.dispose();
});

Deno.test("perf: adapters of different ranks take the autodiff path and still work", async () => {
  const cfg = config({ layers: 1 });
  const encoder = createVitEncoder(cfg, randomVitWeights(cfg, createRng(8)));
  const x = tf.randomNormal([2, 16, 16, 3], 0, 1, "float32", 5) as tf.Tensor4D;
  const ranks = [2, 3, 1];
  const A = ranks.map((r, i) => tf.randomNormal([r, 32], 0, 0.2, "float32", i) as tf.Tensor2D);
  const B = ranks.map((r, i) => tf.randomNormal([32, r], 0, 0.2, "float32", 9 + i) as tf.Tensor2D);
  const [got, want] = await readAll([
    tf.tidy(() => encoder.encode(x, { A, B, scale: 1 })),
    tf.tidy(() => encodeWithWeights(cfg, encoder.weights, x, { A, B, scale: 1 })),
  ]);
  assert.ok(relativeError(got, want) < 1e-6);
  tf.dispose([A, B, x]);
  encoder.dispose();
});

Deno.test("perf: disposing an encoder frees its cached weight views", () => {
  const before = tf.memory().numTensors;
  const cfg = config({});
  const encoder = createVitEncoder(cfg, randomVitWeights(cfg, createRng(9)));
  const x = tf.zeros([1, 16, 16, 3]) as tf.Tensor4D;
  tf.tidy(() => encoder.encode(x)).dispose();
  x.dispose();
  encoder.dispose();
  assert.equal(tf.memory().numTensors, before);
});

// ---------------------------------------------------------------------------------------------
// The loss and the SGD step

/** The original prototype loss, differentiated by autodiff. */
function referenceLoss(
  features: tf.Tensor2D,
  prototypes: tf.Tensor2D,
  logitScale: tf.Scalar,
  labels: tf.Tensor1D,
): tf.Scalar {
  return tf.tidy(() => {
    const unit = tf.div(features, tf.norm(features, "euclidean", 1, true));
    const logits = tf.mul(tf.exp(logitScale), tf.matMul(unit, prototypes, false, true));
    const oneHot = tf.oneHot(labels, prototypes.shape[0]);
    const logProbs = tf.logSoftmax(logits);
    return tf.neg(tf.mean(tf.sum(tf.mul(oneHot, logProbs), 1))) as tf.Scalar;
  });
}

Deno.test("perf: the prototype loss and its gradient equal the autodiff reference", async () => {
  const f = tf.randomNormal([6, 24], 0, 1, "float32", 1) as tf.Tensor2D;
  const protos = orthonormalPrototypes(5, 24, 2);
  const labels = tf.tensor1d([0, 4, 2, 2, 1, 3], "int32");
  const ls = tf.scalar(Math.log(1 / 0.07));
  const before = tf.memory().numTensors;
  const run = async (loss: typeof prototypeLoss) => {
    const [value, ...grads] = tf.tidy(() => {
      const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor) =>
        loss(a as tf.Tensor2D, protos, b as tf.Scalar, labels)
      )([f, ls]);
      return [value, ...grads];
    });
    const [v, ...gs] = await readAll([value, ...grads]);
    return [v[0], ...gs] as const;
  };
  const [v, df, dls] = await run(prototypeLoss);
  const [rv, rdf, rdls] = await run(referenceLoss);
  assert.equal(tf.memory().numTensors, before);
  assert.ok(Math.abs(v - rv) < 1e-5 * Math.abs(rv), `loss ${v} vs ${rv}`);
  assert.ok(relativeError(df, rdf) < 1e-5, `∂/∂features differs by ${relativeError(df, rdf)}`);
  assert.ok(relativeError(dls, rdls) < 1e-5, `∂/∂logitScale ${dls[0]} vs ${rdls[0]}`);
  tf.dispose([f, protos, labels, ls]);
});

/**
 * The original local-training step, kept here as the reference: one tensor per adapter, the
 * plain forward pass differentiated by autodiff, one SGD update per tensor.
 */
async function referenceSteps(
  backbone: Backbone,
  job: TrainerJob,
  batches: { x: tf.Tensor; y: tf.Tensor1D }[],
  masks: { a: tf.Tensor2D; b: tf.Tensor2D } | null,
  encode: (x: tf.Tensor, lora: LoraInput) => tf.Tensor2D,
): Promise<{ losses: number[]; factors: LoraFactors; momentum: Float32Array[] }> {
  const { dims } = backbone;
  const trainA = job.train.includes("A");
  const trainB = job.train.includes("B");
  const toTensor = (data: Float32Array, which: "A" | "B") =>
    tf.tensor2d(data, which === "A" ? [dims.rank, dims.dIn] : [dims.dOut, dims.rank]);
  let params: tf.Tensor[] = [
    ...(trainA ? job.start.A.map((a) => toTensor(a, "A")) : []),
    ...(trainB ? job.start.B.map((b) => toTensor(b, "B")) : []),
    tf.scalar(job.logitScale),
  ];
  const frozenA = trainA ? [] : job.start.A.map((a) => toTensor(a, "A"));
  const frozenB = trainB ? [] : job.start.B.map((b) => toTensor(b, "B"));
  let buffers: tf.Tensor[] = params.map((p, i) =>
    job.momentum ? tf.tensor(job.momentum[i], p.shape) : tf.zerosLike(p)
  );
  const n = dims.adapters;
  const { lr, momentum: mu, weightDecay: wd } = job.sgd;
  const losses: number[] = [];
  for (const { x, y } of batches) {
    const lossFn = (...ps: tf.Tensor[]) => {
      let A = trainA ? ps.slice(0, n) as tf.Tensor2D[] : frozenA;
      let B = trainB ? ps.slice(trainA ? n : 0, (trainA ? n : 0) + n) as tf.Tensor2D[] : frozenB;
      if (masks) {
        A = A.map((a) => tf.mul(a, masks.a));
        B = B.map((b) => tf.mul(b, masks.b));
      }
      const feats = encode(x, { A, B, scale: backbone.loraScale });
      return referenceLoss(feats, backbone.prototypes, ps[ps.length - 1] as tf.Scalar, y);
    };
    const { value, grads } = tf.valueAndGrads(lossFn)(params);
    const next = tf.tidy(() =>
      params.map((p, i) => {
        const d = wd === 0 ? grads[i] : tf.add(grads[i], tf.mul(p, wd));
        const buf = mu === 0 ? d : tf.add(tf.mul(buffers[i], mu), d);
        return [tf.sub(p, tf.mul(buf, lr)), buf];
      })
    );
    losses.push((await value.data())[0]);
    tf.dispose([value, grads, params, buffers]);
    params = next.map((pb) => pb[0]);
    buffers = next.map((pb) => pb[1]);
  }
  const factors: LoraFactors = {
    A: job.start.A.map((a) => a.slice()),
    B: job.start.B.map((b) => b.slice()),
  };
  let k = 0;
  if (trainA) {
    for (let i = 0; i < n; i++) factors.A[i] = (await params[k++].data()).slice() as Float32Array;
  }
  if (trainB) {
    for (let i = 0; i < n; i++) factors.B[i] = (await params[k++].data()).slice() as Float32Array;
  }
  const momentum = await Promise.all(
    buffers.map(async (b) => (await b.data()).slice() as Float32Array),
  );
  tf.dispose([params, buffers, frozenA, frozenB]);
  return { losses, factors, momentum };
}

Deno.test("perf: the trainer's steps equal the original per-adapter SGD steps", async () => {
  const encoder = await loadVisionEncoder(`${FIXTURES}openai.safetensors`);
  const protos = orthonormalPrototypes(3, encoder.config.embedDim, 7);
  const backbone = makeBackbone(encoder, protos, { rank: 4, alpha: 8 });
  protos.dispose();
  const rng = createRng(11);
  const start = initLora(encoder.config, 4, rng);
  for (const b of start.B) for (let i = 0; i < b.length; i++) b[i] = 0.1 * rng.normal();
  const batches = [0, 1, 2].map((i) => ({
    x: tf.randomNormal([5, 16, 16, 3], 0, 1, "float32", 20 + i),
    y: tf.tensor1d([0, 1, 2, 1, 0], "int32"),
  }));
  const reference = (x: tf.Tensor, l: LoraInput) =>
    encodeWithWeights(encoder.config, encoder.weights, x as tf.Tensor4D, l);
  const cases: { train: ("A" | "B")[]; masks: boolean; momentum: boolean }[] = [
    { train: ["A", "B"], masks: false, momentum: false },
    { train: ["B"], masks: false, momentum: true },
    { train: ["A"], masks: true, momentum: false },
  ];
  for (const c of cases) {
    const trained = c.train.length * backbone.dims.adapters + 1;
    const momentum = c.momentum
      ? Array.from({ length: trained }, (_, i) =>
        Float32Array.from(
          { length: i === trained - 1 ? 1 : 4 * 32 },
          () => 0.01 * rng.normal(),
        ))
      : undefined;
    const job: TrainerJob = {
      start,
      train: c.train,
      sgd: { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 },
      logitScale: Math.log(1 / 0.07),
      momentum,
    };
    const masks = c.masks ? rankMasks(4, 1) : null;
    const before = tf.memory().numTensors;
    const trainer = createLocalTrainer(backbone, job);
    const losses: number[] = [];
    for (const { x, y } of batches) losses.push(await trainer.step(x, y, masks));
    const got = await trainer.read();
    trainer.dispose();
    assert.equal(tf.memory().numTensors, before, "the trainer frees what it made");
    // Steps queued back to back, each batch disposed as soon as its step is queued (trainLocal
    // keeps one step in flight): the same losses and factors, bit for bit.
    const queuedTrainer = createLocalTrainer(backbone, job);
    const pending = batches.map(({ x, y }) => {
      const [xc, yc] = [x.clone(), y.clone()];
      const loss = queuedTrainer.step(xc, yc as tf.Tensor1D, masks);
      tf.dispose([xc, yc]);
      return loss;
    });
    assert.deepEqual(await Promise.all(pending), losses, "queued steps: losses");
    const queued = await queuedTrainer.read();
    queuedTrainer.dispose();
    assert.deepEqual(queued, got, "queued steps: factors and momentum");
    assert.equal(tf.memory().numTensors, before, "the queued trainer frees what it made");
    const want = await referenceSteps(backbone, job, batches, masks, reference);
    const what = `train ${c.train.join("+")}${c.masks ? ", DyLoRA masks" : ""}` +
      `${c.momentum ? ", momentum carried in" : ""}`;
    losses.forEach((l, i) =>
      assert.ok(
        Math.abs(l - want.losses[i]) < 1e-5 * Math.abs(want.losses[i]),
        `${what}: loss ${i}`,
      )
    );
    for (const which of ["A", "B"] as const) {
      got.factors[which].forEach((f, i) => {
        const e = relativeError(f, want.factors[which][i]);
        assert.ok(e < 1e-4, `${what}: ${which}[${i}] differs by ${e}`);
      });
    }
    assert.equal(got.momentum.length, want.momentum.length);
    got.momentum.forEach((m, i) => {
      const e = relativeError(m, want.momentum[i]);
      assert.ok(e < 1e-4, `${what}: momentum ${i} differs by ${e}`);
    });
    if (masks) tf.dispose([masks.a, masks.b]);
  }
  for (const { x, y } of batches) tf.dispose([x, y]);
  backbone.prototypes.dispose();
  encoder.dispose();
});
