/**
 * Batches are bounded by what one WebGPU binding can hold: the bound follows the model's largest
 * tensor, and a batch above it fails before any kernel runs, with the tensor, the limit and the
 * largest batch that fits in the message.
 */
import assert from "node:assert/strict";
import {
  activationBytesPerSample,
  checkBatchFits,
  maxBatchFor,
  type WebGpuAdapterSummary,
} from "../lib/backend_webgpu.ts";
import { webgpuGate, webgpuStdout } from "./helpers/webgpu.ts";

const VIT_B16 = { imageSize: 224, patchSize: 16, width: 768, heads: 12, mlpDim: 3072 };
/** lavapipe's limits (measured here). */
const LAVAPIPE: WebGpuAdapterSummary = {
  vendor: "65541",
  architecture: "",
  description: "llvmpipe (LLVM 15.0.6, 256 bits)",
  isFallback: true,
  maxStorageBufferBindingSize: 134217728,
  maxBufferSize: 2147483647,
};

Deno.test("webgpu memory: ViT-B/16's largest tensor is the MLP activation; the bound follows", () => {
  const per = activationBytesPerSample(VIT_B16);
  assert.equal(per.bytes, 4 * 197 * 3072); // 2.42 MB per image
  assert.match(per.what, /MLP activation \[batch·197, 3072\]/);
  assert.equal(maxBatchFor(LAVAPIPE, VIT_B16), Math.floor(134217728 / (4 * 197 * 3072))); // 55
  checkBatchFits(LAVAPIPE, VIT_B16, 55);
  assert.throws(
    () => checkBatchFits(LAVAPIPE, VIT_B16, 64),
    /a batch of 64 does not fit the WebGPU adapter llvmpipe .*: its MLP activation \[batch·197, 3072\] takes 148 MiB, above the adapter's maxStorageBufferBindingSize of 128 MiB; use a batch size of at most 55/,
  );
  // Volumes: 8×16×16 voxels in 2×4×4 patches = 64 tokens + 1; scores win at 4 heads, width 32.
  const volume = {
    imageSize: 16,
    patchSize: 4,
    width: 32,
    heads: 4,
    mlpDim: 64,
    volume: { depth: 8, height: 16, width: 16, depthPatch: 2 },
  };
  assert.equal(activationBytesPerSample(volume).bytes, 4 * 4 * 65 * 65);
  const tiny = { ...LAVAPIPE, maxStorageBufferBindingSize: 1000, maxBufferSize: 1000 };
  assert.throws(() => checkBatchFits(tiny, VIT_B16, 1), /even one sample does not fit/);
});

const { adapter, skip, requireAdapter } = await webgpuGate("webgpu memory tests");

Deno.test({
  name: "webgpu memory: encoding a batch above the adapter's bound fails before any kernel runs",
  ignore: skip,
  async fn() {
    requireAdapter();
    const cfg = { imageSize: 224, patchSize: 16, width: 64, heads: 64, mlpDim: 256 };
    const max = maxBatchFor(adapter!, cfg);
    const source = `
import { tf } from "./lib/backend.ts";
import { randomVitWeights } from "./lib/model/vit_init.ts";
import { createVitEncoder } from "./lib/model/vit.ts";
import { createRng } from "./lib/rng.ts";
const config = { layout: "openai", imageSize: 224, patchSize: 16, channels: 3, width: 64,
  layers: 1, heads: 64, mlpDim: 256, embedDim: 64, act: "gelu", lnEps: 1e-5, preNorm: false,
  patchBias: false, proj: false, projBias: false };
const encoder = createVitEncoder(config, randomVitWeights(config, createRng(1)));
const x = tf.zeros([${max + 1}, 224, 224, 3]);
try {
  encoder.encode(x);
  console.log("no error");
} catch (err) {
  console.log(err.message);
}
`;
    const text = await webgpuStdout(["eval", source]);
    assert.match(
      text,
      new RegExp(
        `a batch of ${
          max + 1
        } does not fit the WebGPU adapter .*use a batch size of at most ${max}`,
      ),
    );
  },
});
