/**
 * Computes the same results on whatever backend `DEER_BACKEND` selects and prints them as one
 * JSON object, so that a test can run it on two backends and compare (tests/webgpu_*.test.ts).
 *
 * * `ops` — on the tiny open_clip checkpoint (tests/fixtures/model_tiny): the encoder's features
 *   with LoRA and their gradients with respect to every A and B; the prototype loss and its
 *   gradient; three steps of the local trainer (losses, factors, momentum); a volume encoder's
 *   features; class probabilities from `predict`.
 * * `fl` — a short federated run on the toy MedMNIST file: DEeR with strict client-level DP,
 *   K = 4 clients, T = 2 rounds; its round records without the wall-clock fields.
 *
 * Usage: `DEER_BACKEND=webgpu deno run -A tests/helpers/backend_worker.ts ops|fl`
 */
import { backendName, tf } from "../../lib/backend.ts";
import { createRng } from "../../lib/rng.ts";
import { loadVisionEncoder } from "../../lib/model/vit_checkpoints.ts";
import { inflateForVolumes } from "../../lib/model/vit_volume.ts";
import { initLora } from "../../lib/model/lora.ts";
import { orthonormalPrototypes } from "../../lib/model/head.ts";
import { makeBackbone } from "../../lib/fl/backbone.ts";
import { createLocalTrainer, prototypeLoss } from "../../lib/fl/local.ts";
import { predict } from "../../lib/fl/evaluate.ts";
import { runFederated } from "../../lib/fl/simulation.ts";
import { TINY_MODEL, toyConfig, toySetup } from "./fl_fixture.ts";

const read = async (t: tf.Tensor) => Array.from(await t.data() as Float32Array);

async function ops(): Promise<Record<string, unknown>> {
  const encoder = await loadVisionEncoder(TINY_MODEL);
  const cfg = encoder.config;
  const rank = 4;
  const rng = createRng(5);
  const host = initLora(cfg, rank, rng);
  const A = host.A.map((a) => tf.tensor2d(a, [rank, cfg.width]));
  const B = host.B.map((b) => tf.tensor2d(b.map(() => rng.normal() * 0.2), [cfg.width, rank]));
  const side = cfg.imageSize;
  const x = tf.randomNormal([3, side, side, 3], 0, 1, "float32", 2) as tf.Tensor4D;
  const weights = tf.randomNormal([3, cfg.embedDim], 0, 1, "float32", 4);
  const n = A.length;
  const features = tf.tidy(() => encoder.encode(x, { A, B, scale: 1.5 }));
  const grads = tf.grads((...ps: tf.Tensor[]) =>
    tf.sum(tf.mul(
      encoder.encode(x, {
        A: ps.slice(0, n) as tf.Tensor2D[],
        B: ps.slice(n) as tf.Tensor2D[],
        scale: 1.5,
      }),
      weights,
    ))
  )([...A, ...B]);

  const protos = orthonormalPrototypes(3, cfg.embedDim, 7);
  const labels = tf.tensor1d([0, 2, 1], "int32");
  const logitScale = tf.scalar(Math.log(1 / 0.07));
  const { value: loss, grads: lossGrads } = tf.valueAndGrads((f: tf.Tensor, s: tf.Tensor) =>
    prototypeLoss(f as tf.Tensor2D, protos, s as tf.Scalar, labels)
  )([features, logitScale]);

  const backbone = makeBackbone(encoder, protos, { rank, alpha: rank });
  const trainer = createLocalTrainer(backbone, {
    start: { A: host.A, B: host.B.map((b) => b.map(() => rng.normal() * 0.1)) },
    train: ["A", "B"],
    sgd: { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 },
    logitScale: Math.log(1 / 0.07),
  });
  const norm = tf.clipByValue(x, -2, 2);
  const losses: number[] = [];
  for (let s = 0; s < 3; s++) losses.push(await trainer.step(norm, labels));
  const state = await trainer.read();
  trainer.dispose();

  const volume = await inflateForVolumes(encoder, { depth: 8, depthPatch: 2 });
  const vx = tf.randomNormal([2, 8, side, side, 1], 0, 1, "float32", 3) as tf.Tensor5D;
  const volumeFeatures = tf.tidy(() => volume.encode(vx));

  const images = new Uint8Array(5 * side * side * 3);
  for (let i = 0; i < images.length; i++) images[i] = (i * 2654435761) % 251;
  const split = { images, sampleShape: [side, side, 3], labels: Int32Array.from([0, 1, 2, 0, 1]) };
  const probs = await predict(backbone, state.factors, split, 2);

  const out = {
    backend: backendName,
    features: await read(features),
    grads: await Promise.all(grads.map(read)),
    loss: (await loss.data())[0],
    lossGrads: await Promise.all(lossGrads.map(read)),
    stepLosses: losses,
    factorsA: state.factors.A.map((a) => Array.from(a)),
    factorsB: state.factors.B.map((b) => Array.from(b)),
    momentum: state.momentum.map((m) => Array.from(m)),
    volumeFeatures: await read(volumeFeatures),
    probs: probs.probs.flat(),
  };
  tf.dispose([A, B, x, weights, features, grads, protos, labels, logitScale, loss, lossGrads]);
  tf.dispose([norm, vx, volumeFeatures]);
  volume.dispose();
  encoder.dispose();
  return out;
}

async function fl(): Promise<Record<string, unknown>> {
  const setup = await toySetup();
  const res = await runFederated(
    setup.backbone,
    setup.data,
    toyConfig({ dp: { calibration: "strict", clip: 0.5, epsilon: 3 } }),
  );
  await Deno.remove(setup.dir, { recursive: true });
  return {
    backend: backendName,
    records: res.records.map((r) => ({ ...r, seconds: 0 })),
  };
}

const which = Deno.args[0];
if (which === "ops") console.log(JSON.stringify(await ops()));
else if (which === "fl") console.log(JSON.stringify(await fl()));
else throw new Error(`backend_worker: "${which}" is not a case; use ops or fl`);
