/**
 * Soak test: many rounds of a small federated run, watching memory. Every `--every` rounds it
 * prints the process RSS (`Deno.memoryUsage().rss`) and tfjs' live tensor count and bytes
 * (`tf.memory()`); at the end one JSON line with the start, end and largest figures and a
 * verdict. "flat" means: the live tensor count and bytes are the same at every sample, and RSS
 * grew by less than `--rss-bound` MiB from the first sample to the last (the first `--every`
 * rounds warm up JIT code and kernel caches and are not judged).
 *
 * The run: the tiny fixture model, a 3-class 16×16 toy set written to a temporary folder
 * (48/12/12 images), K = 4 clients, E = 1, DEeR with strict DP (so that the ledger, the records
 * and the resumable state grow as in a real run), results written to the temporary folder and
 * removed at the end.
 *
 * Run: `deno task soak [--rounds 200] [--every 20] [--rss-bound 64]` (a few minutes for 200);
 * `DEER_BACKEND=wasm|cpu` picks another backend.
 * @module
 */
import { join } from "node:path";
import { noPositionals, parseCommandArgs, usageExit } from "../lib/cli.ts";
import { backendName, tf } from "../lib/backend.ts";
import { writeNpz } from "../lib/data/npy.ts";
import { loadMedMnist } from "../lib/data/medmnist.ts";
import { loadVisionEncoder } from "../lib/model/vit_checkpoints.ts";
import { orthonormalPrototypes } from "../lib/model/head.ts";
import { makeBackbone } from "../lib/fl/backbone.ts";
import { defaultConfig, runFederated } from "../lib/fl/simulation.ts";
import { createRng } from "../lib/rng.ts";
import { colourImages } from "./step.ts";

const TINY_MODEL = new URL("../tests/fixtures/model_tiny/openai.safetensors", import.meta.url)
  .pathname;

const USAGE = `Usage: deno task soak [--rounds 200] [--every 20] [--rss-bound 64]
  Many rounds of a small DEeR run under strict DP, printing RSS and tfjs' live tensors every
  --every rounds, then one JSON line with a verdict: "flat" when the live tensors stay the same
  and RSS grows by less than --rss-bound MiB after the first --every rounds. DEER_BACKEND picks
  the backend.`;
const flags = parseCommandArgs("soak", USAGE, Deno.args, {
  string: ["rounds", "every", "rss-bound"],
}, noPositionals);
const positive = (name: string, fallback: number) => {
  const v = Number(flags[name] ?? fallback);
  if (!(Number.isInteger(v) && v >= 1)) {
    usageExit("soak", `--${name} ${flags[name]}: need an integer ≥ 1`);
  }
  return v;
};
const rounds = positive("rounds", 200);
const every = positive("every", 20);
const rssBoundMiB = positive("rss-bound", 64);

/** A 3-class toy set (class = dominant colour channel + noise) as a MedMNIST-layout npz. */
async function writeToySet(path: string): Promise<void> {
  const rng = createRng(1);
  const S = 16;
  const arrays: Record<string, { shape: number[]; data: Uint8Array }> = {};
  for (const [split, n] of [["train", 48], ["val", 12], ["test", 12]] as const) {
    const { images, labels } = colourImages(n, S, rng);
    arrays[`${split}_images`] = { shape: [n, S, S, 3], data: images };
    arrays[`${split}_labels`] = { shape: [n, 1], data: Uint8Array.from(labels) };
  }
  await writeNpz(path, arrays);
}

interface Sample {
  round: number;
  rssMiB: number;
  /** V8's used heap: tells JavaScript objects from native (tfjs, wasm) memory in RSS. */
  heapMiB: number;
  numTensors: number;
  numBytes: number;
  seconds: number;
}

const dir = await Deno.makeTempDir({ prefix: "deer-soak-" });
try {
  await writeToySet(join(dir, "toy.npz"));
  const data = await loadMedMnist(join(dir, "toy.npz"), { classNames: ["r", "g", "b"] });
  const encoder = await loadVisionEncoder(TINY_MODEL);
  const protos = orthonormalPrototypes(3, encoder.config.embedDim, 7);
  const backbone = makeBackbone(encoder, protos, { rank: 4, alpha: 4 });
  protos.dispose();

  const started = performance.now();
  // With `--v8-flags=--expose-gc`, collect before each sample: the heap figure is then what is
  // retained, not what the collector has not come round to yet.
  const gc = (globalThis as { gc?: () => void }).gc;
  const sample = (round: number): Sample => {
    gc?.();
    const m = tf.memory();
    return {
      round,
      rssMiB: Deno.memoryUsage().rss / 2 ** 20,
      heapMiB: Deno.memoryUsage().heapUsed / 2 ** 20,
      numTensors: m.numTensors,
      numBytes: m.numBytes,
      seconds: (performance.now() - started) / 1000,
    };
  };
  const show = (s: Sample) =>
    console.log(
      `round ${String(s.round).padStart(4)}: rss ${s.rssMiB.toFixed(1)} MiB ` +
        `(JS heap ${s.heapMiB.toFixed(1)} MiB), ` +
        `tensors ${s.numTensors}, tensor bytes ${s.numBytes} (${s.seconds.toFixed(0)} s)`,
    );
  console.log(
    `soak: ${rounds} rounds, DEeR + strict DP, K = 4, E = 1, tiny model, backend ${backendName}`,
  );
  const samples: Sample[] = [sample(0)];
  show(samples[0]);
  await runFederated(backbone, data, {
    ...defaultConfig(),
    numClients: 4,
    rounds,
    localEpochs: 1,
    batchSize: 6,
    split: { iid: true, dirichletAlpha: 0.1 },
    dp: { calibration: "strict", clip: 0.5, epsilon: 8 },
  }, {
    outDir: join(dir, "run"),
    onRound: (r) => {
      if (r.round % every === 0 || r.round === rounds) {
        samples.push(sample(r.round));
        show(samples.at(-1)!);
      }
    },
  });
  backbone.prototypes.dispose();
  encoder.dispose();

  // Judged from the first sample after warm-up (round `every`) to the last.
  const judged = samples.filter((s) => s.round >= Math.min(every, rounds));
  const first = judged[0], last = judged.at(-1)!;
  const max = {
    rssMiB: Math.max(...samples.map((s) => s.rssMiB)),
    numTensors: Math.max(...samples.map((s) => s.numTensors)),
    numBytes: Math.max(...samples.map((s) => s.numBytes)),
  };
  const tensorsFlat = judged.every((s) => s.numTensors === first.numTensors) &&
    judged.every((s) => s.numBytes === first.numBytes);
  const rssGrowthMiB = last.rssMiB - first.rssMiB;
  // Least-squares slope of RSS over the judged samples: a leak shows as a steady climb even where
  // the allocator's ups and downs make two single samples disagree.
  const mr = judged.reduce((a, s) => a + s.round, 0) / judged.length;
  const mm = judged.reduce((a, s) => a + s.rssMiB, 0) / judged.length;
  const sxx = judged.reduce((a, s) => a + (s.round - mr) ** 2, 0);
  const slope = sxx > 0
    ? judged.reduce((a, s) => a + (s.round - mr) * (s.rssMiB - mm), 0) / sxx
    : 0;
  const flat = tensorsFlat && rssGrowthMiB < rssBoundMiB;
  const pick = ({ round, rssMiB, heapMiB, numTensors, numBytes }: Sample) => ({
    round,
    rssMiB: Number(rssMiB.toFixed(1)),
    heapMiB: Number(heapMiB.toFixed(1)),
    numTensors,
    numBytes,
  });
  console.log(JSON.stringify({
    rounds,
    backend: backendName,
    seconds: Number(last.seconds.toFixed(1)),
    start: pick(samples[0]),
    afterWarmup: pick(first),
    end: pick(last),
    max: { ...max, rssMiB: Number(max.rssMiB.toFixed(1)) },
    rssGrowthMiB: Number(rssGrowthMiB.toFixed(1)),
    rssSlopeKiBPerRound: Number((slope * 1024).toFixed(1)),
    rssBoundMiB,
    tensorsFlat,
    verdict: flat ? "flat" : "growing",
  }));
  if (!flat) Deno.exitCode = 1;
} finally {
  await Deno.remove(dir, { recursive: true });
}
