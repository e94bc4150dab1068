import assert from "node:assert/strict";
import { tf } from "../lib/backend.ts";
import { createRng } from "../lib/rng.ts";
import { readSafetensors, type SafeTensor, writeSafetensors } from "../lib/model/safetensors.ts";
import type { LoraInput } from "../lib/model/transformer.ts";
import { loadVisionEncoder, visionEncoderFromTensors } from "../lib/model/vit_checkpoints.ts";
import { inflateForVolumes, resizeGridBicubic } from "../lib/model/vit_volume.ts";
import { randomVitWeights, saveVisionEncoder } from "../lib/model/vit_init.ts";
import { createVitEncoder, type VitConfig, type VitEncoder } from "../lib/model/vit.ts";
import { disposeLora, initLora, loraToTensors } from "../lib/model/lora.ts";
import { relativeError } from "./helpers/numeric.ts";
import { capturingStderr } from "./helpers/console.ts";

// Tiny checkpoints and PyTorch references: tools/crosscheck/make_model_fixtures.py.
const FIXTURES = new URL("./fixtures/model_tiny/", import.meta.url).pathname;
const inputs = (await readSafetensors(`${FIXTURES}inputs.safetensors`)).tensors;

function images(): tf.Tensor4D {
  const t = inputs.images;
  return tf.tensor4d(t.data, t.shape as [number, number, number, number]);
}

/** max |got − want| / max |want|. */
function encodeData(
  encoder: VitEncoder,
  x: tf.Tensor4D | tf.Tensor5D,
  lora?: LoraInput,
): Float32Array {
  const out = tf.tidy(() => encoder.encode(x, lora));
  const data = out.dataSync() as Float32Array;
  out.dispose();
  return data;
}

function randomLora(encoder: VitEncoder, rank: number, seed: number, bScale = 0.3) {
  const rng = createRng(seed);
  const host = initLora(encoder.config, rank, rng);
  for (const b of host.B) for (let i = 0; i < b.length; i++) b[i] = rng.normal() * bScale;
  return host;
}

Deno.test("vit: tiny checkpoints match open_clip, Hugging Face and timm to 1e-4", async () => {
  const cases = [
    {
      file: "openai.safetensors",
      options: {},
      ref: "ref_openai_quick_gelu",
      layout: "openai",
      act: "quick_gelu",
    },
    {
      file: "openai.safetensors",
      options: { act: "gelu" as const },
      ref: "ref_openai_gelu",
      layout: "openai",
      act: "gelu",
    },
    { file: "hf/model.safetensors", options: {}, ref: "ref_hf", layout: "hf", act: "quick_gelu" },
    { file: "timm.safetensors", options: {}, ref: "ref_timm", layout: "timm", act: "gelu" },
  ];
  const x = images();
  for (const c of cases) {
    const encoder = await loadVisionEncoder(`${FIXTURES}${c.file}`, c.options);
    const { config } = encoder;
    assert.equal(config.layout, c.layout);
    assert.equal(config.act, c.act);
    assert.deepEqual(
      [
        config.imageSize,
        config.patchSize,
        config.width,
        config.layers,
        config.heads,
        config.mlpDim,
        config.embedDim,
      ],
      [16, 4, 32, 2, 2, 64, 24],
    );
    assert.equal(config.lnEps, c.layout === "timm" ? 1e-6 : 1e-5);
    assert.equal(config.preNorm, c.layout !== "timm");
    assert.equal(config.patchBias, c.layout === "timm");
    assert.deepEqual(encoder.adapterNames, [
      "blocks.0.q",
      "blocks.0.k",
      "blocks.0.v",
      "blocks.1.q",
      "blocks.1.k",
      "blocks.1.v",
    ]);
    const err = relativeError(encodeData(encoder, x), inputs[c.ref].data);
    assert.ok(err <= 1e-4, `${c.file} ${c.act}: relative error ${err}`);
    encoder.dispose();
  }
  // The two activations really differ on these weights, so the test tells them apart.
  assert.ok(relativeError(inputs.ref_openai_gelu.data, inputs.ref_openai_quick_gelu.data) > 1e-3);
  x.dispose();
});

Deno.test("vit: settings come from options, the file's metadata or config.json, else an error", async () => {
  const openai = await readSafetensors(`${FIXTURES}openai.safetensors`);
  const x = images();
  // Metadata `deer.vision` can record the activation.
  const viaMetadata = await visionEncoderFromTensors(openai.tensors, {
    metadata: { "deer.vision": JSON.stringify({ heads: 2, act: "gelu" }) },
  });
  assert.equal(viaMetadata.config.act, "gelu");
  assert.ok(relativeError(encodeData(viaMetadata, x), inputs.ref_openai_gelu.data) <= 1e-4);
  viaMetadata.dispose();
  // Width 32 does not tell the heads (width / 64): the error says how to give them.
  await assert.rejects(
    visionEncoderFromTensors(openai.tensors, { label: "tiny.safetensors" }),
    /tiny\.safetensors: cannot tell the number of attention heads for width 32; pass \{ heads \}/,
  );
  await assert.rejects(
    visionEncoderFromTensors(openai.tensors, { options: { heads: 3 } }),
    /\(3 does not divide it\)/,
  );
  await assert.rejects(
    visionEncoderFromTensors(openai.tensors, { options: { heads: 2, act: "relu" as "gelu" } }),
    /options: activation "relu" is not supported/,
  );
  // An image-tower-only file: the open_clip keys without "visual." (text tower dropped).
  const towerOnly: Record<string, SafeTensor> = {};
  for (const [name, t] of Object.entries(openai.tensors)) {
    if (name.startsWith("visual.")) towerOnly[name.slice("visual.".length)] = t;
  }
  const tower = await visionEncoderFromTensors(towerOnly, { options: { heads: 2 } });
  assert.ok(relativeError(encodeData(tower, x), inputs.ref_openai_quick_gelu.data) <= 1e-4);
  tower.dispose();
  // open_clip: open_clip_config.json beside the weights gives head_width and quick_gelu.
  const dir = await Deno.makeTempDir();
  await writeSafetensors(`${dir}/model.safetensors`, openai.tensors);
  await Deno.writeTextFile(
    `${dir}/open_clip_config.json`,
    JSON.stringify({ model_cfg: { embed_dim: 24, vision_cfg: { head_width: 16 } } }),
  );
  const viaSidecar = await loadVisionEncoder(`${dir}/model.safetensors`);
  assert.deepEqual([viaSidecar.config.heads, viaSidecar.config.act], [2, "gelu"]);
  assert.ok(relativeError(encodeData(viaSidecar, x), inputs.ref_openai_gelu.data) <= 1e-4);
  viaSidecar.dispose();
  // Pooling open_clip can do and this encoder cannot (CLIPA's average pool) is refused, not
  // silently replaced by the class token.
  for (const cfg of [{ pool_type: "avg" }, { final_ln_after_pool: true }]) {
    await Deno.writeTextFile(
      `${dir}/open_clip_config.json`,
      JSON.stringify({ model_cfg: { vision_cfg: { head_width: 16, ...cfg } } }),
    );
    await assert.rejects(
      loadVisionEncoder(`${dir}/model.safetensors`),
      new RegExp(`vision_cfg\\.${Object.keys(cfg)[0]} is .*would give other features`),
    );
  }
  await Deno.remove(dir, { recursive: true });
  // timm: its CLIP trunks (vit_*_clip_*) use LayerNorm ε 1e-5, its other ViTs 1e-6.
  const timm = await readSafetensors(`${FIXTURES}timm.safetensors`);
  const timmDir = await Deno.makeTempDir();
  await writeSafetensors(`${timmDir}/model.safetensors`, timm.tensors);
  const timmConfig = (vision: Record<string, unknown>) =>
    Deno.writeTextFile(
      `${timmDir}/open_clip_config.json`,
      JSON.stringify({ model_cfg: { vision_cfg: vision } }),
    );
  for (
    const [name, eps] of [["vit_base_patch16_clip_224", 1e-5], [
      "vit_base_patch16_224",
      1e-6,
    ]] as const
  ) {
    await timmConfig({ timm_model_name: name });
    const enc = await loadVisionEncoder(`${timmDir}/model.safetensors`, { heads: 2 });
    assert.equal(enc.config.lnEps, eps, name);
    enc.dispose();
  }
  await timmConfig({ timm_model_name: "vit_base_patch16_clip_224", timm_pool: "avg" });
  await assert.rejects(
    loadVisionEncoder(`${timmDir}/model.safetensors`, { heads: 2 }),
    /vision_cfg\.timm_pool is "avg"/,
  );
  await Deno.remove(timmDir, { recursive: true });
  // HF: heads from config.json beside the weights; from memory they must be given.
  const hf = await readSafetensors(`${FIXTURES}hf/model.safetensors`);
  await assert.rejects(
    visionEncoderFromTensors(hf.tensors),
    /cannot tell the number of attention heads/,
  );
  const hfEncoder = await visionEncoderFromTensors(hf.tensors, { options: { heads: 2 } });
  assert.ok(relativeError(encodeData(hfEncoder, x), inputs.ref_hf.data) <= 1e-4);
  hfEncoder.dispose();
  x.dispose();
});

Deno.test("vit: unknown layouts and unsupported variants fail clearly", async () => {
  const openai = await readSafetensors(`${FIXTURES}openai.safetensors`);
  const extra: Record<string, SafeTensor> = {
    ...openai.tensors,
    "visual.transformer.resblocks.0.ls_1.gamma": {
      dtype: "F32",
      shape: [32],
      data: new Float32Array(32),
    },
  };
  await assert.rejects(
    visionEncoderFromTensors(extra, { options: { heads: 2 }, label: "ls.safetensors" }),
    /ls\.safetensors: tensors "visual\.transformer\.resblocks\.0\.ls_1\.gamma" are not part of the supported/,
  );
  const missing = { ...openai.tensors };
  delete missing["visual.transformer.resblocks.1.mlp.c_fc.bias"];
  await assert.rejects(
    visionEncoderFromTensors(missing, { options: { heads: 2 } }),
    /tensor "visual\.transformer\.resblocks\.1\.mlp\.c_fc\.bias" is missing/,
  );
  await assert.rejects(
    visionEncoderFromTensors({
      "x.weight": { dtype: "F32", shape: [1], data: new Float32Array(1) },
    }, {
      label: "other.safetensors",
    }),
    /other\.safetensors: no known ViT layout; looked for "visual\.conv1\.weight"/,
  );
  const encoder = await loadVisionEncoder(`${FIXTURES}openai.safetensors`);
  assert.throws(
    () => tf.tidy(() => encoder.encode(tf.zeros([1, 224, 224, 3]) as tf.Tensor4D)),
    /input has shape \[1,224,224,3\]; expected \[N, 16, 16, 3\]/,
  );
  const bad: LoraInput = { A: [tf.zeros([4, 32])], B: [tf.zeros([32, 4])], scale: 1 };
  assert.throws(
    () => tf.tidy(() => encoder.encode(tf.zeros([1, 16, 16, 3]) as tf.Tensor4D, bad)),
    /LoRA has 1 A and 1 B tensors; expected 6/,
  );
  encoder.dispose();
});

Deno.test("vit: LoRA with B = 0 changes nothing; with B ≠ 0 it equals merged weights W + s·B·A", async () => {
  const path = `${FIXTURES}openai.safetensors`;
  const encoder = await loadVisionEncoder(path);
  const x = images();
  const base = encodeData(encoder, x);
  const rank = 3, scale = 1.7;

  const zeroB = loraToTensors(initLora(encoder.config, rank, createRng(1)), 32);
  assert.ok(relativeError(encodeData(encoder, x, { ...zeroB, scale }), base) < 1e-6);
  disposeLora(zeroB);

  const host = randomLora(encoder, rank, 2);
  const lora = loraToTensors(host, 32);
  const adapted = encodeData(encoder, x, { ...lora, scale });
  disposeLora(lora);
  assert.ok(relativeError(adapted, base) > 1e-2, "LoRA with B ≠ 0 must change the features");

  // By hand: q = W_q x + s·B_q·A_q x, so in_proj_weight rows [j·w, (j+1)·w) gain s·B_j·A_j.
  const { tensors } = await readSafetensors(path);
  const w = 32;
  for (let layer = 0; layer < 2; layer++) {
    const name = `visual.transformer.resblocks.${layer}.attn.in_proj_weight`;
    const merged = Float32Array.from(tensors[name].data);
    for (let j = 0; j < 3; j++) {
      const A = host.A[3 * layer + j], B = host.B[3 * layer + j];
      for (let o = 0; o < w; o++) {
        for (let i = 0; i < w; i++) {
          let delta = 0;
          for (let k = 0; k < rank; k++) delta += B[o * rank + k] * A[k * w + i];
          merged[(j * w + o) * w + i] += scale * delta;
        }
      }
    }
    tensors[name] = { ...tensors[name], data: merged };
  }
  const mergedEncoder = await visionEncoderFromTensors(tensors, { options: { heads: 2 } });
  const err = relativeError(adapted, encodeData(mergedEncoder, x));
  assert.ok(err < 1e-5, `LoRA vs merged weights: ${err}`);
  mergedEncoder.dispose();
  encoder.dispose();
  x.dispose();
});

Deno.test("vit: gradients w.r.t. A and B are finite, right, and leak no tensors", async () => {
  const encoder = await loadVisionEncoder(`${FIXTURES}timm.safetensors`);
  const x = images();
  const host = randomLora(encoder, 2, 3);
  const lora = loraToTensors(host, 32);
  const weights = tf.randomNormal([2, 24], 0, 1, "float32", 5) as tf.Tensor2D;
  const loss = (...ts: tf.Tensor[]) => {
    const n = ts.length / 2;
    const input = { A: ts.slice(0, n) as tf.Tensor2D[], B: ts.slice(n) as tf.Tensor2D[], scale: 1 };
    return encoder.encode(x, input).mul(weights).sum();
  };
  const all = [...lora.A, ...lora.B];
  const before = tf.memory().numTensors;
  const grads = tf.tidy(() => {
    const g = tf.grads(loss)(all);
    return g.map((t) => t.dataSync() as Float32Array);
  });
  assert.equal(tf.memory().numTensors, before, "a tidy'ed forward + backward leaves no tensors");
  assert.equal(grads.length, 12);
  for (const [i, g] of grads.entries()) {
    assert.equal(g.length, 2 * 32);
    assert.ok(g.every(Number.isFinite), `gradient ${i} finite`);
    assert.ok(g.some((v) => v !== 0), `gradient ${i} non-zero`);
  }
  // Directional derivative along a random direction vs central differences (float32).
  const rng = createRng(9);
  const direction = all.map((t) => Float32Array.from({ length: t.size }, () => rng.normal()));
  const analytic = grads.reduce(
    (acc, g, i) => acc + g.reduce((a, v, j) => a + v * direction[i][j], 0),
    0,
  );
  const shifted = (eps: number) =>
    tf.tidy(() => {
      const moved = all.map((t, i) => t.add(tf.tensor(direction[i], t.shape).mul(eps)));
      return loss(...moved).dataSync()[0];
    });
  const eps = 1e-2;
  const numeric = (shifted(eps) - shifted(-eps)) / (2 * eps);
  assert.ok(
    Math.abs(numeric - analytic) <= 2e-2 * Math.abs(analytic),
    `directional derivative ${analytic} vs finite difference ${numeric}`,
  );
  disposeLora(lora);
  weights.dispose();
  x.dispose();
  encoder.dispose();
});

Deno.test("vit: bicubic grid resampling equals PyTorch F.interpolate", () => {
  const grid = inputs.grid.data; // [4, 4, 5]
  assert.ok(relativeError(resizeGridBicubic(grid, [4, 4], 5, [6, 6]), inputs.grid_6x6.data) < 1e-6);
  assert.ok(relativeError(resizeGridBicubic(grid, [4, 4], 5, [3, 3]), inputs.grid_3x3.data) < 1e-6);
  assert.deepEqual(resizeGridBicubic(grid, [4, 4], 5, [4, 4]), grid);
});

Deno.test("vit: volume encoder — shapes, depth-constant volumes equal 2D, gradients flow", async () => {
  const encoder = await loadVisionEncoder(`${FIXTURES}hf/model.safetensors`);
  const before = tf.memory().numTensors;
  // A gray image, as RGB for the 2D encoder and as a depth-constant volume for the 3D one.
  const gray = tf.randomNormal([2, 16, 16, 1], 0, 1, "float32", 7) as tf.Tensor4D;
  const rgb = tf.tile(gray, [1, 1, 1, 3]) as tf.Tensor4D;
  const volume = tf.tidy(() =>
    tf.tile(gray.reshape([2, 1, 16, 16, 1]), [1, 8, 1, 1, 1])
  ) as tf.Tensor5D;

  const exact = await inflateForVolumes(encoder, { depth: 8, depthPatch: 2, depthScale: 0 });
  assert.deepEqual(exact.config.volume, {
    depth: 8,
    height: 16,
    width: 16,
    depthPatch: 2,
    depthScale: 0,
  });
  const flat = encodeData(encoder, rgb);
  const err = relativeError(encodeData(exact, volume), flat);
  assert.ok(err < 1e-5, `depth-constant volume vs its 2D slice: ${err}`);

  // Default: a depth signal makes depth visible; other in-plane sizes resample the positions.
  const withDepth = await inflateForVolumes(encoder, { depth: 8, depthPatch: 2 });
  const f = encodeData(withDepth, volume);
  assert.equal(f.length, 2 * 24);
  assert.ok(f.every(Number.isFinite));
  assert.ok(relativeError(f, flat) > 1e-3);
  const wide = await inflateForVolumes(encoder, { depth: 4, height: 12, width: 20, depthPatch: 4 });
  const wideVolume = tf.randomNormal([3, 4, 12, 20, 1], 0, 1, "float32", 8) as tf.Tensor5D;
  assert.equal(encodeData(wide, wideVolume).length, 3 * 24);

  // Gradients flow to the LoRA tensors through the volume path, and nothing leaks.
  const lora = loraToTensors(randomLora(encoder, 2, 4), 32);
  const all = [...lora.A, ...lora.B];
  const inside = tf.memory().numTensors;
  const norms = tf.tidy(() =>
    tf.grads((...ts: tf.Tensor[]) =>
      withDepth.encode(volume, {
        A: ts.slice(0, 6) as tf.Tensor2D[],
        B: ts.slice(6) as tf.Tensor2D[],
        scale: 1,
      })
        .square().sum()
    )(all).map((g) => g.norm().dataSync()[0])
  );
  assert.equal(tf.memory().numTensors, inside);
  assert.ok(norms.every((n) => Number.isFinite(n) && n > 0));

  assert.throws(() => withDepth.encode(rgb), /expects \[N, 8, 16, 16, 1\]/);
  await assert.rejects(
    () => inflateForVolumes(encoder, { depth: 7, depthPatch: 2 }),
    /depth 7 must be a positive multiple/,
  );
  await assert.rejects(
    () => inflateForVolumes(encoder, { depth: 8, height: 10 }),
    /multiples of the patch size 4/,
  );
  await assert.rejects(() => inflateForVolumes(withDepth, { depth: 8 }), /already reads volumes/);

  disposeLora(lora);
  for (const t of [gray, rgb, volume, wideVolume]) t.dispose();
  for (const e of [exact, withDepth, wide]) e.dispose();
  assert.equal(tf.memory().numTensors, before, "volume encoders free only what they own");
  encoder.dispose();
});

// A plain open_clip state dict used to be read as QuickGELU without a word; for exact-GELU
// weights (LAION's) that puts every feature off by the amount measured below.
Deno.test("vit: an activation taken from the default is said once per file, with the override", async () => {
  const openai = await readSafetensors(`${FIXTURES}openai.safetensors`);
  const dir = await Deno.makeTempDir();
  const path = `${dir}/plain-open-clip.safetensors`;
  await writeSafetensors(path, openai.tensors); // no "deer.vision" metadata, no sidecar
  const x = images();
  try {
    let quick: Float32Array = new Float32Array(0);
    const first = await capturingStderr(async () => {
      for (let i = 0; i < 2; i++) { // the second load of the same file says nothing
        const encoder = await loadVisionEncoder(path, { heads: 2 });
        assert.equal(encoder.config.act, "quick_gelu");
        quick = encodeData(encoder, x);
        encoder.dispose();
      }
    });
    assert.equal(first.length, 1, first.join("\n"));
    assert.match(
      first[0],
      /^deer: .*plain-open-clip\.safetensors does not say which activation its MLP uses; assuming quick_gelu, as OpenAI's CLIP weights use\..*loader option act \(deno task train: --model-act gelu\), the metadata key "deer\.vision" \(\{"act": "gelu"\}\), or an open_clip_config\.json beside the weights$/,
    );
    // What the notice is about: the same weights with exact GELU (PyTorch reference).
    const off = relativeError(quick, inputs.ref_openai_gelu.data);
    assert.ok(off > 1e-3, `quick_gelu vs gelu features differ by ${off}`);
    // Saying which (option or metadata) silences it and gives the GELU reference.
    const copy = `${dir}/with-metadata.safetensors`;
    await writeSafetensors(copy, openai.tensors, {
      "deer.vision": JSON.stringify({ act: "gelu", heads: 2 }),
    });
    const quiet = await capturingStderr(async () => {
      for (
        const [file, options] of [[path, { act: "gelu" as const, heads: 2 }], [copy, {}]] as const
      ) {
        const encoder = await loadVisionEncoder(file, options);
        assert.equal(encoder.config.act, "gelu");
        assert.ok(relativeError(encodeData(encoder, x), inputs.ref_openai_gelu.data) <= 1e-4);
        encoder.dispose();
      }
    });
    assert.deepEqual(quiet, []);
    // A width-64 file without metadata: heads (64 channels each) and activation both defaulted.
    const config: VitConfig = {
      layout: "openai",
      imageSize: 14,
      patchSize: 7,
      channels: 3,
      width: 64,
      layers: 1,
      heads: 1,
      mlpDim: 32,
      embedDim: 8,
      act: "gelu",
      lnEps: 1e-5,
      preNorm: true,
      patchBias: false,
      proj: true,
      projBias: false,
    };
    const saved = createVitEncoder(config, randomVitWeights(config, createRng(3)));
    const withMeta = `${dir}/w64-meta.safetensors`;
    await saveVisionEncoder(withMeta, saved);
    saved.dispose();
    const plain = `${dir}/w64.safetensors`;
    await writeSafetensors(plain, (await readSafetensors(withMeta)).tensors);
    const notices = await capturingStderr(async () => {
      for (const file of [withMeta, plain, plain]) (await loadVisionEncoder(file)).dispose();
    });
    assert.equal(notices.length, 2, notices.join("\n"));
    assert.match(
      notices[0],
      /w64\.safetensors does not say which activation .* assuming quick_gelu/,
    );
    assert.match(
      notices[1],
      /w64\.safetensors does not say how many attention heads it has; assuming 1 \(64 channels each.*loader option heads, the metadata key "deer\.vision"/,
    );
  } finally {
    x.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});
