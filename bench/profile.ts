/**
 * Kernel profile of one training step (`tf.profile`): how many kernels the step dispatches, the
 * time per kernel kind, and the most expensive kernels by kind and input shapes, averaged over a
 * few steps. On tfjs-node every kernel costs ~26 µs of dispatch on top of its work, so the count
 * matters as much as the time.
 *
 * * `tiny`, `b16` — the steps of `bench/figures.ts`;
 * * `demo` — one step of the demo's local training (the embedded default model, batch 10,
 *   DEeR's B phase).
 *
 * Run: `deno run -A bench/profile.ts [tiny|b16|demo] [--steps 3] [--top 30]`.
 * @module
 */
import { parseCommandArgs, UsageError } from "../lib/cli.ts";
import { tf } from "../lib/backend.ts";
import { loadVisionEncoder } from "../lib/model/vit_checkpoints.ts";
import { randomVitWeights } from "../lib/model/vit_init.ts";
import { createVitEncoder } from "../lib/model/vit.ts";
import { DEFAULTS } from "../lib/experiment.ts";
import { createRng } from "../lib/rng.ts";
import { TINY_VIT, VIT_B16 } from "./figures.ts";
import { loraStepBench, ownKernels, patternSplit } from "./step.ts";

const USAGE = `Usage: deno run -A bench/profile.ts [tiny|b16|demo] [--steps 3] [--top 30]
  tf.profile of a training step: kernel count, time per kernel kind, the costliest kernels.
  tiny, b16: the steps of bench/figures.ts; demo: one step of the demo's local training.`;
const flags = parseCommandArgs("bench/profile.ts", USAGE, Deno.args, {
  string: ["steps", "top"],
}, (f) => {
  if (f._.length > 1 || !["tiny", "b16", "demo"].includes(f._[0] ?? "tiny")) {
    throw new UsageError(`"${f._.join(" ")}": give one step, tiny (the default), b16 or demo`);
  }
  for (const name of ["steps", "top"]) {
    if (f[name] === undefined) continue;
    const v = Number(f[name]);
    if (!(Number.isInteger(v) && v >= 1)) {
      throw new UsageError(`--${name} ${f[name]}: need an integer ≥ 1`);
    }
  }
});
const which = flags._[0] ?? "tiny";
const steps = Number(flags.steps ?? 3);
const top = Number(flags.top ?? 30);
const encoder = which === "demo" ? await loadVisionEncoder(DEFAULTS.model) : createVitEncoder(
  which === "b16" ? VIT_B16 : TINY_VIT,
  randomVitWeights(which === "b16" ? VIT_B16 : TINY_VIT, createRng(1)),
);
const config = encoder.config;
const batch = which === "b16" ? 8 : which === "demo" ? 10 : 32;
const bench = loraStepBench(
  encoder,
  patternSplit(batch, [config.imageSize, config.imageSize, 3], 6),
  {
    classes: 6,
    rank: 8,
    alpha: which === "tiny" ? 16 : 8,
    train: which === "demo" ? ["B"] : undefined,
  },
);
const step = async () => {
  await bench.step();
};
await step();
await step();

const byKind = new Map<string, number>();
const byShape = new Map<string, { count: number; ms: number }>();
let kernels = 0;
for (let s = 0; s < steps; s++) {
  const info = await tf.profile(step);
  for (const k of ownKernels(info.kernels)) {
    kernels++;
    const ms = k.kernelTimeMs as number;
    byKind.set(k.name, (byKind.get(k.name) ?? 0) + ms / steps);
    const key = `${k.name} ${JSON.stringify(k.inputShapes)}`;
    const e = byShape.get(key) ?? { count: 0, ms: 0 };
    e.count += 1 / steps;
    e.ms += ms / steps;
    byShape.set(key, e);
  }
}
const total = [...byKind.values()].reduce((a, b) => a + b, 0);
console.log(`${which}: ${kernels / steps} kernels per step, ${total.toFixed(1)} ms kernel time`);
console.log(
  [...byKind.entries()].sort((a, b) => b[1] - a[1]).map(([k, ms]) => `${k} ${ms.toFixed(1)}`)
    .join(", "),
);
for (const [key, e] of [...byShape.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, top)) {
  console.log(`${e.ms.toFixed(2).padStart(9)} ms ${e.count.toFixed(0).padStart(4)}× ${key}`);
}
bench.dispose();
encoder.dispose();
