/**
 * The wasm fallback takes the frozen-encoder path (portable ops, hand-written backward): its
 * equivalence tests pass on wasm, and a ViT-B/16 training step at batch 2 — which aborted on the
 * autodiff path ("RuntimeError: Aborted()", the 4 GiB wasm heap exhausted: a batch-1 step alone
 * peaked at 3.0 GiB) — now runs. Each in a child process on `DEER_BACKEND=wasm`.
 */
import assert from "node:assert/strict";

const root = new URL("..", import.meta.url).pathname;

async function run(args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: root,
    env: { DEER_BACKEND: "wasm", DEER_QUIET: "1", NO_COLOR: "1" },
    stdin: "null",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("wasm: the optimised-path equivalence tests pass on wasm", async () => {
  const r = await run(["test", "-A", "--no-check", "tests/perf_equivalence.test.ts"]);
  assert.equal(r.code, 0, `perf_equivalence on wasm failed:\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /ok \| \d+ passed \| 0 failed/);
});

const STEP_SOURCE = `
import { tf } from "./lib/backend.ts";
import { randomVitWeights } from "./lib/model/vit_init.ts";
import { createVitEncoder } from "./lib/model/vit.ts";
import { initLora } from "./lib/model/lora.ts";
import { orthonormalPrototypes } from "./lib/model/head.ts";
import { makeBackbone } from "./lib/fl/backbone.ts";
import { createLocalTrainer } from "./lib/fl/local.ts";
import { createRng } from "./lib/rng.ts";
import { VIT_B16 } from "./bench/figures.ts";
const encoder = createVitEncoder(VIT_B16, randomVitWeights(VIT_B16, createRng(1)));
const backbone = makeBackbone(encoder, orthonormalPrototypes(10, 512, 3), { rank: 8, alpha: 8 });
const trainer = createLocalTrainer(backbone, {
  start: initLora(VIT_B16, 8, createRng(2)),
  train: ["A", "B"],
  sgd: { lr: 0.01, momentum: 0.9, weightDecay: 5e-4 },
  logitScale: Math.log(1 / 0.07),
});
const x = tf.randomNormal([2, 224, 224, 3], 0, 1, "float32", 5);
const loss = await trainer.step(x, tf.tensor1d([0, 1], "int32"));
const heapMiB = tf.backend().wasm.HEAPU8.length / 2 ** 20;
console.log(JSON.stringify({ loss, heapMiB }));
`;

Deno.test("wasm: a ViT-B/16 training step at batch 2 runs within the wasm heap", async () => {
  const r = await run(["eval", "--ext=js", STEP_SOURCE]);
  assert.equal(r.code, 0, `the step failed (exit ${r.code}):\n${r.stderr.slice(-2000)}`);
  const { loss, heapMiB } = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
  assert.ok(Number.isFinite(loss) && loss > 0, `loss ${loss}`);
  assert.ok(heapMiB < 4096, `wasm heap ${heapMiB} MiB`);
});
