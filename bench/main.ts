/**
 * `deno task bench` — every benchmark figure, each in a fresh subprocess (`bench/figures.ts`),
 * printed as one JSON line per figure: `{"name": …, "ms": …, "cpu_ms": …, "load": …}` (wall and
 * process CPU time are medians; `load` is the 1-minute load average while it ran), and for the
 * two training steps a `ratio_*_vs_torch` line (medians; `ratio_min` compares the fastest
 * steps, the least disturbed on a shared machine). Before each figure it waits (up to
 * `--max-wait` seconds) for the load average to drop to 1.5 or less, as the machine may be
 * shared.
 *
 * Flags:
 * * `--only tiny,b16,round,memory,tensors` — a subset (default: all).
 * * `--torch PYTHON` — also run the PyTorch reference steps (`bench/vit_lora_torch.py`,
 *   `bench/vit_b16_lora_torch.py`, 2 threads) with that interpreter right after the toolkit's
 *   figure; default: `DEER_TORCH_PYTHON` when set, else `python3` when it imports torch, else
 *   none (`--torch none` turns them off).
 * * `--max-wait S` — longest wait for a low load before a figure (default 120).
 * * `--attempts N` — measure a step figure and its PyTorch reference again, up to N times, while
 *   the load average during them exceeded 1.5; the quietest pair is printed (default 1).
 * * `--backend webgpu|tensorflow|wasm|cpu` — the toolkit's backend for every figure (default:
 *   `DEER_BACKEND`, else the automatic choice). On a real GPU (a WebGPU adapter that is not a
 *   fallback adapter) with `--backend webgpu`, `b16` also measures batches 32 and 64, and the
 *   PyTorch references run on CUDA (`--torch-device cuda`, the default there when torch sees a
 *   CUDA device; `--torch-device cpu` keeps them on the CPU with 2 threads).
 * * `--steps N`, `--warmup N` — steps measured and warm-up steps of every step figure and its
 *   PyTorch reference (default: tiny 20 and 3, ViT-B/16 10 and 2); `--b16-batches 8,32,64` — the
 *   ViT-B/16 batches (default 8, and 8,32,64 on a real GPU under `--backend webgpu`).
 * * `--fallback-gpu` — treat a fallback adapter (lavapipe) as a GPU: the GPU figures are
 *   measured on it. With `--b16-model tiny` the ViT-B/16 figures and their PyTorch references
 *   run the tiny model instead (same names, `"model": "tiny"`). Both only serve a dry run of
 *   `bench/gpu_check.sh` (`GPU_CHECK_DRY=1`) on a software driver.
 *
 * Threads: the figures inherit `TF_NUM_INTRAOP_THREADS` / `TF_NUM_INTEROP_THREADS` when set;
 * otherwise the round figure runs with one intra-op thread, as the demo does (`tasks/threads.ts`),
 * and the others with TensorFlow's default. Each figure reports what it ran with.
 * @module
 */
import { noPositionals, parseCommandArgs, usageExit } from "../lib/cli.ts";
import { waitForLowLoad } from "./measure.ts";
import { probeInChild } from "../lib/backend_webgpu.ts";

const ALL = ["tiny", "b16", "round", "memory", "tensors"] as const;
const here = new URL(".", import.meta.url).pathname;

const USAGE = `Usage: deno task bench [flags]   (one JSON line per figure on stdout)
  --only LIST          a comma list of ${ALL.join(", ")} (default: all)
  --backend NAME       webgpu, tensorflow, wasm or cpu (default: DEER_BACKEND, else automatic)
  --torch PYTHON|none  the PyTorch reference steps with that interpreter (default:
                       DEER_TORCH_PYTHON, else python3 when it imports torch, else none)
  --torch-device D     cpu or cuda (default: cuda on a real GPU under --backend webgpu)
  --steps N --warmup N steps measured and warm-up steps of every step figure
  --b16-batches LIST   the ViT-B/16 batches (default 8; 8,32,64 on a real GPU)
  --max-wait S         longest wait for a load average ≤ 1.5 before a figure (default 120)
  --attempts N         measure a step and its reference again while the load was high (default 1)
  --fallback-gpu, --b16-model tiny   a dry run of bench/gpu_check.sh on a software driver`;
const flags = parseCommandArgs("bench", USAGE, Deno.args, {
  string: [
    "only",
    "torch",
    "max-wait",
    "attempts",
    "backend",
    "torch-device",
    "steps",
    "warmup",
    "b16-batches",
    "b16-model",
  ],
  boolean: ["fallback-gpu"],
}, noPositionals);
const KNOWN_BACKENDS = ["webgpu", "tensorflow", "wasm", "cpu"];
const backend = flags.backend === undefined ? Deno.env.get("DEER_BACKEND") : String(flags.backend);
if (backend !== undefined && backend !== "" && !KNOWN_BACKENDS.includes(backend)) {
  usageExit(
    "bench",
    `--backend ${backend}: not a backend; use one of ${KNOWN_BACKENDS.join(", ")}`,
  );
}
/** Extra variables of every figure's process. */
const backendEnv: Record<string, string> = backend ? { DEER_BACKEND: backend } : {};
const only = flags.only === undefined
  ? [...ALL]
  : String(flags.only).split(",").map((s) => s.trim());
for (const o of only) {
  if (!(ALL as readonly string[]).includes(o)) {
    usageExit("bench", `--only ${o}: not a figure; use a comma list of ${ALL.join(", ")}`);
  }
}
const maxWait = Number(flags["max-wait"] ?? 120);
if (!(maxWait >= 0)) usageExit("bench", `--max-wait ${flags["max-wait"]}: need seconds ≥ 0`);
const attempts = Number(flags.attempts ?? 1);
if (!(Number.isInteger(attempts) && attempts >= 1)) {
  usageExit("bench", `--attempts ${flags.attempts}: need an integer ≥ 1`);
}
/** `--steps`/`--warmup` when given, else the figure's own default. */
function count(name: "steps" | "warmup", fallback: number): string {
  const v = Number(flags[name] ?? fallback);
  if (!(Number.isInteger(v) && v >= (name === "steps" ? 1 : 0))) {
    usageExit("bench", `--${name} ${flags[name]}: need an integer ≥ ${name === "steps" ? 1 : 0}`);
  }
  return String(v);
}
const b16Model = String(flags["b16-model"] ?? "b16");
if (!["b16", "tiny"].includes(b16Model)) {
  usageExit("bench", `--b16-model ${b16Model}: use b16 (the default) or tiny (a dry run)`);
}

async function hasTorch(python: string): Promise<boolean> {
  try {
    const out = await new Deno.Command(python, { args: ["-c", "import torch"], stderr: "null" })
      .output();
    return out.success;
  } catch {
    return false;
  }
}

const envTorch = Deno.env.get("DEER_TORCH_PYTHON");
let torch: string | undefined;
if (flags.torch === "none") {
  torch = undefined;
} else if (flags.torch !== undefined) {
  torch = String(flags.torch);
  if (!(await hasTorch(torch))) usageExit("bench", `--torch ${torch}: cannot import torch with it`);
} else if (envTorch) {
  torch = envTorch;
  if (!(await hasTorch(torch))) {
    usageExit("bench", `DEER_TORCH_PYTHON=${torch}: cannot import torch`);
  }
} else if (await hasTorch("python3")) {
  torch = "python3";
}

async function torchHasCuda(python: string): Promise<boolean> {
  const out = await new Deno.Command(python, {
    args: ["-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
    stderr: "null",
  }).output().catch(() => ({ success: false }));
  return out.success;
}

/** A real GPU under `--backend webgpu`: the GPU figures and CUDA references are added. */
const adapter = backend === "webgpu" ? await probeInChild() : null;
const gpu = adapter !== null && (!adapter.isFallback || flags["fallback-gpu"] === true);
const b16Batches = String(flags["b16-batches"] ?? (gpu ? "8,32,64" : "8")).split(",").map((s) => {
  const b = Number(s.trim());
  if (!(Number.isInteger(b) && b >= 1)) {
    usageExit("bench", `--b16-batches ${flags["b16-batches"]}: need a comma list of integers ≥ 1`);
  }
  return b;
});
const torchDevice = flags["torch-device"] !== undefined
  ? String(flags["torch-device"])
  : gpu && torch && (await torchHasCuda(torch))
  ? "cuda"
  : "cpu";
if (!["cpu", "cuda"].includes(torchDevice)) {
  usageExit("bench", `--torch-device ${torchDevice}: use cpu or cuda`);
}
if (adapter) {
  console.log(JSON.stringify({
    name: "webgpu_adapter",
    ...adapter,
    real_gpu: !adapter.isFallback,
    gpu_figures: gpu,
    torch_device: torch ? torchDevice : null,
  }));
}

type Figure = Record<string, unknown>;

/** Runs a command and returns the JSON lines it printed. */
async function run(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<Figure[]> {
  await waitForLowLoad(1.5, maxWait);
  const out = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "inherit",
    env: { DEER_QUIET: "1", ...backendEnv, ...env },
  }).output();
  if (!out.success) {
    // One failing figure does not stop the others; it is reported as a line of its own.
    return [{ name: `failed: ${args.join(" ")}`, exit: out.code }];
  }
  const text = new TextDecoder().decode(out.stdout);
  return text.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
}

const show = (figures: Figure[]) => figures.forEach((f) => console.log(JSON.stringify(f)));
/** Runs one figure of `bench/figures.ts` in a fresh process (`env`: extra variables). */
const figureWith = (env: Record<string, string>, ...args: string[]) =>
  run(Deno.execPath(), ["run", "-A", `${here}figures.ts`, ...args], env);
const figure = (...args: string[]) => figureWith({}, ...args);
/** The demo runs with one intra-op thread (`tasks/threads.ts`); its round figure does too. */
const demoThreads: Record<string, string> = Deno.env.get("TF_NUM_INTRAOP_THREADS") === undefined
  ? { TF_NUM_INTRAOP_THREADS: "1" }
  : {};

/**
 * A toolkit step figure and, right after it, its PyTorch reference; with `--attempts N`, the
 * pair is measured again (up to N times) while the load average during it exceeded 1.5, and the
 * quietest pair is printed, with the ratio of the two medians.
 */
async function stepPair(
  name: string,
  args: string[],
  script: string,
  steps: string[],
  torchArgs: string[] = [],
) {
  let best: { figures: Figure[]; load: number } | null = null;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const figures = [...await figure(...args)];
    if (torch) {
      figures.push(...await run(torch, [`${here}${script}`, ...steps, "2", ...torchArgs]));
    }
    const load = Math.max(...figures.map((f) => Number(f.load ?? Infinity)));
    figures.forEach((f) => (f.attempt = attempt));
    if (!best || load < best.load) best = { figures, load };
    if (load <= 1.5) break;
  }
  show(best!.figures);
  const [ours, theirs] = best!.figures;
  if (theirs && typeof ours.ms === "number" && typeof theirs.ms === "number") {
    console.log(JSON.stringify({
      name: `ratio_${name}_vs_torch`,
      ratio: Math.round((ours.ms / theirs.ms) * 100) / 100,
      ratio_min: Math.round(((ours.min_ms as number) / (theirs.min_ms as number)) * 100) / 100,
      // On a GPU the target is "within 2× of PyTorch CUDA".
      target: torchArgs.includes("cuda") ? 2 : name === "tiny" ? 1.5 : 1.2,
    }));
  }
}

for (const which of only) {
  if (which === "tiny") {
    const steps = [count("steps", 20), count("warmup", 3)];
    await stepPair(
      "tiny",
      ["tiny", "--steps", steps[0], "--warmup", steps[1]],
      "vit_lora_torch.py",
      steps,
    );
  } else if (which === "b16") {
    const steps = [count("steps", 10), count("warmup", 2)];
    const model = ["--model", b16Model];
    for (const batch of b16Batches) {
      await stepPair(
        batch === 8 ? "b16" : `b16_batch${batch}`,
        ["b16", "--batch", String(batch), "--steps", steps[0], "--warmup", steps[1], ...model],
        "vit_b16_lora_torch.py",
        steps,
        ["--device", torchDevice, "--batch", String(batch), ...model],
      );
    }
  } else if (which === "round") {
    show(await figureWith(demoThreads, "round"));
  } else if (which === "memory") {
    const rss: Record<number, number> = {};
    for (const k of [1, 12, 100]) {
      const figures = await figure("memory", "--clients", String(k));
      show(figures);
      rss[k] = figures[0].rss_mib as number;
    }
    console.log(JSON.stringify({
      name: "memory_ratio_100_vs_1",
      ratio: Math.round((rss[100] / rss[1]) * 1000) / 1000,
      target: 1.3,
    }));
  } else if (which === "tensors") {
    show(await figure("tensors"));
  }
}
