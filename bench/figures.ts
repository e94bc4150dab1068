/**
 * The toolkit's benchmark figures, one per invocation (so that every figure runs in a fresh
 * process and memory figures are comparable); each prints one JSON line. `bench/main.ts`
 * (`deno task bench`) runs them all in subprocesses.
 *
 * * `tiny` — one LoRA training step of a tiny ViT (28×28×3, patch 4, width
 *   128, 4 heads, 4 layers, MLP 512, exact GELU, r = 8 on q/k/v, s = 2, batch 32) through the
 *   toolkit's own step (bench/step.ts): `makeBatch` from uint8 pixels, then `createLocalTrainer`'s
 *   step (the prototype loss, gradients for every A, B and the logit scale, SGD with momentum
 *   0.9 and weight decay 5e-4 — the step `trainLocal` runs). `bench/vit_lora_torch.py` is the
 *   PyTorch version. Beside the per-step times (each step awaited), `pipelined_ms` is the time
 *   per step of the same steps with one in flight, as `trainLocal` runs them: on a GPU the host
 *   queues the next step's kernels while the device runs this one.
 * * `b16` — the same step on a randomly initialised open_clip ViT-B/16 (224 px, exact GELU,
 *   r = 8, alpha = 8) at batch 8 (`--batch N` for another: the figure is then
 *   `vit_lora_step_b16_batchN`); `bench/vit_b16_lora_torch.py` is the PyTorch version.
 *   `--model tiny` runs the same figure (same name, `"model": "tiny"`) on the tiny ViT instead: a
 *   dry run of the GPU check on a software driver (`GPU_CHECK_DRY=1 bench/gpu_check.sh`), where a
 *   ViT-B/16 step takes minutes.
 * * `round` — one federated round (training of all 12 clients in both DEeR phases, aggregation
 *   with the paper-calibrated DP, evaluation on val and test) of the demo's configuration
 *   (`tasks/demo.ts`) on the embedded default data and model.
 * * `memory --clients K` — RSS and tfjs memory after 3 rounds of DEeR (strict DP) with K clients
 *   (the demo's model, a small generated 3-class set of 600 training images, IID split).
 * * `tensors` — tfjs' live tensor count after each of 50 rounds (tiny fixture model).
 *
 * Run one: `deno run -A bench/figures.ts tiny [--steps 20] [--warmup 3]`.
 * @module
 */
import { parseCommandArgs, UsageError, usageExit } from "../lib/cli.ts";
import { backendName, tf } from "../lib/backend.ts";
import type { ImageDataset, ImageSplit } from "../lib/data/dataset.ts";
import { loadVisionEncoder } from "../lib/model/vit_checkpoints.ts";
import { randomVitWeights } from "../lib/model/vit_init.ts";
import { createVitEncoder, type VitConfig } from "../lib/model/vit.ts";
import { orthonormalPrototypes } from "../lib/model/head.ts";
import { makeBackbone } from "../lib/fl/backbone.ts";
import { type FederatedConfig, runFederated } from "../lib/fl/simulation.ts";
import { DEFAULTS, loadInputs } from "../lib/experiment.ts";
import { createRng } from "../lib/rng.ts";
import { DEMO, DEMO_RUNS, demoConfig as demoRunConfig } from "../tasks/demo.ts";

/** The demo's configuration for DEeR in the paper calibration (`tasks/demo.ts`). */
const demoConfig = (rounds: number): FederatedConfig =>
  demoRunConfig(DEMO_RUNS.find((r) => r.name === "DEeR")!, rounds);
import { cpuMs, emit, loadAverage, median, round, timeRepeated } from "./measure.ts";
import { colourImages, loraStepBench } from "./step.ts";

/** The tiny ViT of the `tiny` figure (as `bench/vit_lora_torch.py` builds it). */
export const TINY_VIT: VitConfig = {
  layout: "openai",
  imageSize: 28,
  patchSize: 4,
  channels: 3,
  width: 128,
  layers: 4,
  heads: 4,
  mlpDim: 512,
  embedDim: 128,
  act: "gelu",
  lnEps: 1e-5,
  preNorm: false,
  patchBias: true,
  proj: false,
  projBias: false,
};

/** open_clip `ViT-B-16` (randomly initialised: exact GELU). */
export const VIT_B16: VitConfig = {
  layout: "openai",
  imageSize: 224,
  patchSize: 16,
  channels: 3,
  width: 768,
  layers: 12,
  heads: 12,
  mlpDim: 3072,
  embedDim: 512,
  act: "gelu",
  lnEps: 1e-5,
  preNorm: true,
  patchBias: false,
  proj: true,
  projBias: false,
};

const TINY_MODEL = new URL("../tests/fixtures/model_tiny/openai.safetensors", import.meta.url)
  .pathname;

/** `n` random uint8 images of `shape` with labels `i mod classes`. */
function randomSplit(n: number, shape: number[], classes: number, seed: number): ImageSplit {
  const rng = createRng(seed);
  const per = shape.reduce((a, b) => a * b, 1);
  const images = new Uint8Array(n * per);
  for (let i = 0; i < images.length; i++) images[i] = Math.floor(rng.uniform() * 256);
  return {
    images,
    sampleShape: shape,
    labels: Int32Array.from({ length: n }, (_, i) => i % classes),
  };
}

/** A 3-class set whose class is the dominant colour channel (learnable, like `bench/soak.ts`). */
function colourSet(sizes: [number, number, number], side: number, seed: number): ImageDataset {
  const rng = createRng(seed);
  const split = (n: number): ImageSplit => ({
    ...colourImages(n, side, rng),
    sampleShape: [side, side, 3],
  });
  return {
    name: "colours",
    classNames: ["r", "g", "b"],
    train: split(sizes[0]),
    val: split(sizes[1]),
    test: split(sizes[2]),
    source: "generated",
  };
}

/** One training step (batch formation + the trainer's step) of `config`, timed. */
async function stepFigure(
  name: string,
  config: VitConfig,
  opts: {
    batch: number;
    rank: number;
    alpha: number;
    classes: number;
    steps: number;
    warmup: number;
    /** Which model the record names (`ViT-B/16`, `tiny`). */
    model: string;
  },
): Promise<void> {
  const encoder = createVitEncoder(config, randomVitWeights(config, createRng(1)));
  const shape = [config.imageSize, config.imageSize, config.channels];
  const bench = loraStepBench(encoder, randomSplit(opts.batch, shape, opts.classes, 5), opts);
  const losses: number[] = [];
  const t = await timeRepeated(async () => {
    losses.push(await bench.step());
  }, { warmup: opts.warmup, reps: opts.steps });
  // The same steps with one in flight, as trainLocal runs them: on a GPU the host queues step
  // k+1 while the device runs step k; on the CPU backends the two figures should agree.
  const t0 = performance.now();
  let inFlight: Promise<number> | null = null;
  for (let i = 0; i < opts.steps; i++) {
    const queued = bench.queue();
    if (inFlight) await inFlight;
    inFlight = queued;
  }
  await inFlight;
  const pipelinedMs = (performance.now() - t0) / opts.steps;
  bench.dispose();
  emit({
    name,
    ms: round(t.ms),
    cpu_ms: round(t.cpuMs),
    load: t.load,
    min_ms: round(t.minMs),
    max_ms: round(t.maxMs),
    pipelined_ms: round(pipelinedMs),
    steps: t.reps,
    batch: opts.batch,
    model: opts.model,
    loss_first: round(losses[0], 4),
    loss_last: round(losses.at(-1)!, 4),
    backend: backendName,
    threads: threadSetting(),
  });
  encoder.dispose();
}

function threadSetting(): string {
  const intra = Deno.env.get("TF_NUM_INTRAOP_THREADS") ?? "default";
  const inter = Deno.env.get("TF_NUM_INTEROP_THREADS") ?? "default";
  return `intra ${intra}, inter ${inter}`;
}

async function roundFigure(reps: number): Promise<void> {
  const inputs = await loadInputs({ dataset: "default", rank: DEMO.rank, alpha: DEMO.alpha });
  const wall: number[] = [];
  const cpu: number[] = [];
  let accuracy = NaN;
  let loss = NaN;
  const load0 = loadAverage();
  // The first run warms kernels and JIT up and is not counted.
  for (let i = 0; i <= reps; i++) {
    const c0 = cpuMs();
    const t0 = performance.now();
    const result = await runFederated(inputs.backbone, inputs.data, demoConfig(1));
    if (i > 0) {
      wall.push(performance.now() - t0);
      cpu.push(cpuMs() - c0);
    }
    accuracy = result.records[0].val.accuracy;
    loss = result.records[0].trainLoss;
  }
  inputs.dispose();
  emit({
    name: "fl_round_demo",
    ms: round(median(wall)),
    cpu_ms: round(median(cpu)),
    load: Math.max(load0, loadAverage()),
    reps,
    method: "DEeR (paper DP)",
    clients: DEMO.numClients,
    train_loss: round(loss, 4),
    val_accuracy: round(accuracy, 4),
    backend: backendName,
    threads: threadSetting(),
  });
}

async function memoryFigure(clients: number): Promise<void> {
  const data = colourSet([600, 60, 60], 28, 11);
  const encoder = await loadVisionEncoder(DEFAULTS.model);
  const protos = orthonormalPrototypes(3, encoder.config.embedDim, 7);
  const backbone = makeBackbone(encoder, protos, { rank: 8, alpha: 8 });
  protos.dispose();
  const rounds = 3;
  const t0 = performance.now();
  // Strict DP: the paper calibration's δ = 1/K is not defined for K = 1.
  await runFederated(backbone, data, {
    ...demoConfig(rounds),
    numClients: clients,
    split: { iid: true, dirichletAlpha: 0.1 },
    dp: { calibration: "strict", clip: DEMO.clip, epsilon: DEMO.epsilon, delta: 1e-5 },
  });
  const seconds = (performance.now() - t0) / 1000;
  const m = tf.memory();
  emit({
    name: `memory_clients_${clients}`,
    rss_mib: round(Deno.memoryUsage().rss / 2 ** 20),
    tensor_bytes: m.numBytes,
    tensors: m.numTensors,
    rounds,
    clients,
    seconds: round(seconds),
    load: loadAverage(),
  });
  backbone.prototypes.dispose();
  encoder.dispose();
}

async function tensorsFigure(rounds: number): Promise<void> {
  const data = colourSet([96, 24, 24], 16, 1);
  const encoder = await loadVisionEncoder(TINY_MODEL);
  const protos = orthonormalPrototypes(3, encoder.config.embedDim, 7);
  const backbone = makeBackbone(encoder, protos, { rank: 4, alpha: 4 });
  protos.dispose();
  const counts: number[] = [];
  const bytes: number[] = [];
  const t0 = performance.now();
  await runFederated(backbone, data, {
    ...demoConfig(rounds),
    numClients: 4,
    batchSize: 6,
    split: { iid: true, dirichletAlpha: 0.1 },
    dp: { calibration: "strict", clip: 0.5, epsilon: 8 },
  }, {
    onRound: () => {
      const m = tf.memory();
      counts.push(m.numTensors);
      bytes.push(m.numBytes);
    },
  });
  emit({
    name: `live_tensors_${rounds}_rounds`,
    first: counts[0],
    last: counts.at(-1),
    min: Math.min(...counts),
    max: Math.max(...counts),
    bytes_min: Math.min(...bytes),
    bytes_max: Math.max(...bytes),
    flat: counts.every((c) => c === counts[0]) && bytes.every((b) => b === bytes[0]),
    seconds: round((performance.now() - t0) / 1000),
    load: loadAverage(),
  });
  backbone.prototypes.dispose();
  encoder.dispose();
}

const FIGURES = ["tiny", "b16", "round", "memory", "tensors"];
const FIGURES_USAGE =
  `Usage: deno run -A bench/figures.ts FIGURE [flags]   (one JSON line; deno task bench runs all)
  tiny     the tiny ViT's LoRA step at batch 32        [--steps 20] [--warmup 3]
  b16      the ViT-B/16 LoRA step                      [--batch 8] [--steps 10] [--warmup 2]
                                                       [--model b16|tiny] (tiny: a dry run)
  round    one round of the demo's configuration        [--reps 3]
  memory   RSS and tfjs memory after 3 DEeR rounds     [--clients 1]
  tensors  tfjs' live tensor count after each round    [--rounds 50]`;

if (import.meta.main) {
  const flags = parseCommandArgs("bench/figures.ts", FIGURES_USAGE, Deno.args, {
    string: ["steps", "warmup", "clients", "reps", "rounds", "batch", "model"],
  }, (f) => {
    if (f._.length !== 1 || !FIGURES.includes(f._[0])) {
      throw new UsageError(`give one figure: ${FIGURES.join(", ")}`);
    }
  });
  const int = (name: string, fallback: number) => {
    const v = Number(flags[name] ?? fallback);
    if (!(Number.isInteger(v) && v >= 0)) {
      usageExit("bench/figures.ts", `--${name} ${flags[name]}: need an integer ≥ 0`);
    }
    return v;
  };
  const which = flags._[0];
  if (which === "tiny") {
    await stepFigure("vit_lora_step_tiny", TINY_VIT, {
      batch: 32,
      rank: 8,
      alpha: 16,
      classes: 8,
      steps: int("steps", 20),
      warmup: int("warmup", 3),
      model: "tiny",
    });
  } else if (which === "b16") {
    const batch = int("batch", 8);
    const model = String(flags.model ?? "b16");
    if (!["b16", "tiny"].includes(model)) {
      usageExit("bench/figures.ts", `--model ${model}: use b16 (ViT-B/16, the default) or tiny`);
    }
    await stepFigure(
      batch === 8 ? "vit_lora_step_b16" : `vit_lora_step_b16_batch${batch}`,
      model === "tiny" ? TINY_VIT : VIT_B16,
      {
        batch,
        rank: 8,
        alpha: 8,
        classes: 10,
        steps: int("steps", 10),
        warmup: int("warmup", 2),
        model: model === "tiny" ? "tiny" : "ViT-B/16",
      },
    );
  } else if (which === "round") {
    await roundFigure(int("reps", 3));
  } else if (which === "memory") {
    await memoryFigure(int("clients", 1));
  } else if (which === "tensors") {
    await tensorsFigure(int("rounds", 50));
  }
}
