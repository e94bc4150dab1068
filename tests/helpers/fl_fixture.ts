/**
 * Shared fixtures for the federated-engine tests: the tiny open_clip-layout checkpoint that the
 * model tests verify against PyTorch, and a small 3-class image set written as a real MedMNIST
 * `.npz` file and read back through the toolkit's loader.
 */
import { join } from "node:path";
import { writeNpz } from "../../lib/data/npy.ts";
import { loadMedMnist } from "../../lib/data/medmnist.ts";
import type { ImageDataset } from "../../lib/data/dataset.ts";
import { loadVisionEncoder } from "../../lib/model/vit_checkpoints.ts";
import type { VitEncoder } from "../../lib/model/vit.ts";
import { orthonormalPrototypes } from "../../lib/model/head.ts";
import { makeBackbone, type SharedBackbone } from "../../lib/fl/backbone.ts";
import { defaultConfig, type FederatedConfig } from "../../lib/fl/simulation.ts";
import { createRng } from "../../lib/rng.ts";

export const TINY_MODEL = new URL("../fixtures/model_tiny/openai.safetensors", import.meta.url)
  .pathname;

/** Writes a 3-class 16×16 RGB image set (class = dominant colour channel + noise) as npz. */
export async function writeToyMedMnist(dir: string, seed = 1): Promise<string> {
  const rng = createRng(seed);
  const S = 16;
  const split = (n: number) => {
    const images = new Uint8Array(n * S * S * 3);
    const labels = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const c = i % 3;
      labels[i] = c;
      for (let p = 0; p < S * S; p++) {
        for (let ch = 0; ch < 3; ch++) {
          const base = ch === c ? 170 : 60;
          images[(i * S * S + p) * 3 + ch] = Math.max(0, Math.min(255, base + rng.normal() * 40));
        }
      }
    }
    return {
      images: { shape: [n, S, S, 3], data: images },
      labels: { shape: [n, 1], data: labels },
    };
  };
  const parts = { train: split(96), val: split(24), test: split(24) };
  const path = join(dir, "toymnist.npz");
  await writeNpz(path, {
    train_images: parts.train.images,
    train_labels: parts.train.labels,
    val_images: parts.val.images,
    val_labels: parts.val.labels,
    test_images: parts.test.images,
    test_labels: parts.test.labels,
  });
  return path;
}

/** The toy data set loaded through `loadMedMnist`, and a backbone on the tiny checkpoint. */
export async function toySetup(
  rank = 4,
): Promise<{ data: ImageDataset; backbone: SharedBackbone; encoder: VitEncoder; dir: string }> {
  const dir = await Deno.makeTempDir({ prefix: "deer-fl-" });
  const data = await loadMedMnist(await writeToyMedMnist(dir), { classNames: ["r", "g", "b"] });
  const encoder = await loadVisionEncoder(TINY_MODEL);
  const protos = orthonormalPrototypes(3, encoder.config.embedDim, 7);
  const backbone = makeBackbone(encoder, protos, { rank, alpha: rank });
  protos.dispose();
  return { data, backbone, encoder, dir };
}

/**
 * A small run's configuration on the toy set: 4 clients, 2 rounds of 1 local epoch, batch 8,
 * SGD at lr 0.05 with momentum 0.9 (the engine's defaults otherwise); `over` wins.
 */
export function toyConfig(over: Partial<FederatedConfig> = {}): FederatedConfig {
  return {
    ...defaultConfig(),
    numClients: 4,
    rounds: 2,
    localEpochs: 1,
    batchSize: 8,
    sgd: { lr: 0.05, momentum: 0.9, weightDecay: 5e-4 },
    ...over,
  };
}
