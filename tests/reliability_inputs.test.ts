/**
 * Bad input to `deno run -A tasks/train.ts …`, in a subprocess: every case must end with a
 * message that names the file (or flag), the field and the fix, exit 2 for a flag error or 1 for
 * an input error, and write nothing (no results folder, no half file beside the inputs).
 *
 * The bad files are written in the real formats (npz through `writeNpz`, safetensors through
 * `writeSafetensors`, PNG folders) and each differs from a good file in one way.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { writeSafetensors } from "../lib/model/safetensors.ts";
import { UsageError } from "../lib/cli.ts";
import { loadInputs, resumeConflicts, runExperiment } from "../lib/experiment.ts";
import { tf } from "../lib/backend.ts";
import { loadVisionEncoder } from "../lib/model/vit_checkpoints.ts";
import { makeBackbone } from "../lib/fl/backbone.ts";
import { defaultConfig } from "../lib/fl/simulation.ts";
import { loadMedMnist } from "../lib/data/medmnist.ts";
import { parseTrainArgs } from "../tasks/train.ts";
import {
  listTree,
  runFlags,
  runTrain,
  TINY_MODEL,
  TINY_RUN_BASE,
  type TrainRun,
  writeKvasirFolder,
  writeNpzWithBadNpyMagic,
  writeNpzWithFlippedByte,
  writeTinyModelVariant,
  writeToyNpz,
  writeTruncated,
} from "./helpers/reliability_inputs.ts";

const dir = await Deno.makeTempDir({ prefix: "deer-reliability-inputs-" });
const at = (name: string) => join(dir, name);

// --- inputs -------------------------------------------------------------------------------------
const good = await writeToyNpz(at("good.npz"));
const goodSize = (await Deno.stat(good)).size;
await writeTruncated(good, at("truncated.npz"), Math.floor(goodSize / 2));
await Deno.writeTextFile(at("notzip.npz"), "<html>this download failed</html>\n".repeat(4));
await writeNpzWithBadNpyMagic(at("badmagic.npz"));
await writeNpzWithFlippedByte(at("badcrc.npz"));
await writeToyNpz(at("float.npz"), {
  train_images: { shape: [24, 16, 16, 3], data: new Float32Array(24 * 16 * 16 * 3) },
});
await writeToyNpz(at("flat.npz"), {
  train_images: { shape: [24, 768], data: new Uint8Array(24 * 768) },
  val_images: { shape: [6, 768], data: new Uint8Array(6 * 768) },
  test_images: { shape: [6, 768], data: new Uint8Array(6 * 768) },
});
await writeToyNpz(at("mixed.npz"), {
  val_images: { shape: [6, 8, 8, 3], data: new Uint8Array(6 * 8 * 8 * 3) },
});
await writeToyNpz(at("labels2.npz"), {
  train_labels: { shape: [24, 2], data: new Uint8Array(48) },
});
await writeToyNpz(at("floatlabels.npz"), {
  train_labels: { shape: [24, 1], data: new Float32Array(24) },
});
await writeToyNpz(at("neglabel.npz"), {
  val_labels: { shape: [6, 1], data: Int8Array.from([0, 1, 2, -1, 0, 1]) },
});
await Deno.mkdir(at("named"));
await writeToyNpz(at("named/bloodmnist.npz"), {
  test_labels: { shape: [6, 1], data: Uint8Array.from([0, 1, 2, 9, 0, 1]) },
});
await writeToyNpz(at("nokey.npz"), { val_labels: null });
await writeToyNpz(at("count.npz"), { test_labels: { shape: [5, 1], data: new Uint8Array(5) } });
await writeKvasirFolder(at("kvasir_empty"), "empty-class");
await writeKvasirFolder(at("kvasir_unreadable"), "unreadable-image");

await writeTinyModelVariant(at("notvit.safetensors"), (t) => {
  for (const k of Object.keys(t)) delete t[k];
  t["encoder.layer.0.dense.weight"] = { shape: [4, 4], data: new Float32Array(16) };
  t["encoder.layer.0.dense.bias"] = { shape: [4], data: new Float32Array(4) };
});
await writeTinyModelVariant(at("wrongshape.safetensors"), (t) => {
  t["visual.transformer.resblocks.1.attn.in_proj_weight"] = {
    shape: [96, 16],
    data: new Float32Array(96 * 16),
  };
});
await writeTinyModelVariant(at("nan.safetensors"), (t) => {
  t["visual.transformer.resblocks.1.mlp.c_fc.weight"].data[5] = NaN;
});
await writeTinyModelVariant(at("inf.safetensors"), (t) => {
  t["visual.ln_post.weight"].data[3] = -Infinity;
});
await writeTruncated(TINY_MODEL, at("truncated.safetensors"), 50_000);
const protos = (c: number, e: number, nanRow = -1) => ({
  prototypes: {
    shape: [c, e],
    data: Float32Array.from({ length: c * e }, (_, i) => {
      if (Math.floor(i / e) === nanRow) return NaN;
      return i % e === Math.floor(i / e) ? 1 : 0;
    }),
  },
});
await writeSafetensors(at("protos_5x24.safetensors"), protos(5, 24));
await writeSafetensors(at("protos_3x16.safetensors"), protos(3, 16));
await writeSafetensors(at("protos_nan.safetensors"), protos(3, 24, 1));
const inputsWritten = listTree(dir);

// --- the command lines --------------------------------------------------------------------------
/** The tiny run's flags on the good set, no --out; some replaced (null drops one), then `extra`. */
function flags(over: Record<string, string | null> = {}, extra: string[] = []): string[] {
  return runFlags({ dataset: good, ...TINY_RUN_BASE, ...over }, extra);
}

interface Case {
  name: string;
  args: string[];
  /** 2: a flag is wrong; 1: an input is. */
  code: 1 | 2;
  /** Each must match the message (file or flag, field, fix). */
  message: RegExp[];
  /** Results root: default a fresh one that must not come into being. */
  out?: string;
  /**
   * Checked in this process (`parseTrainArgs`, then `loadInputs`, with train's exit-code rule)
   * instead of a subprocess: a further variant of a failure the subprocess cases already cover
   * end to end, kept cheap (each subprocess costs about a second of a shared CPU).
   */
  inProcess?: boolean;
}

const kvasir = (root: string) => flags({ dataset: "Kvasir", data_dir: root });
const model = (path: string) => flags({ model: path });

const INPUT_CASES: Case[] = [
  {
    name: "truncated npz",
    args: flags({ dataset: at("truncated.npz") }),
    code: 1,
    message: [/truncated\.npz is truncated or not an npz \(zip\) archive/, /download or re-save/],
  },
  {
    name: "corrupt npz: not a zip at all",
    args: flags({ dataset: at("notzip.npz") }),
    code: 1,
    message: [/notzip\.npz is truncated or not an npz \(zip\)/, /end-of-central-directory/],
  },
  {
    name: "corrupt npz: entry with a bad npy magic",
    args: flags({ dataset: at("badmagic.npz") }),
    code: 1,
    message: [/badmagic\.npz:train_images\.npy is not an npy array \(bad magic/, /re-save it/],
  },
  {
    name: "corrupt npz: entry fails its CRC-32",
    args: flags({ dataset: at("badcrc.npz") }),
    code: 1,
    message: [/entry train_images\.npy of badcrc\.npz fails its CRC-32 check/, /download it again/],
  },
  {
    name: "images of dtype float32",
    args: flags({ dataset: at("float.npz") }),
    code: 1,
    message: [
      /float\.npz \(train_images\) has dtype <f4; expected uint8/,
      /save the images as uint8/,
    ],
  },
  {
    name: "images of shape [N, 768]",
    args: flags({ dataset: at("flat.npz") }),
    code: 1,
    message: [/flat\.npz \(train_images\) has shape \[24,768\]; expected \[N,H,W\] or \[N,H,W,3\]/],
  },
  {
    name: "splits with different image sizes",
    args: flags({ dataset: at("mixed.npz") }),
    code: 1,
    message: [
      /mixed\.npz \(val_images\) has samples of \[8,8,3\] but train_images has \[16,16,3\]/,
      /all splits must share one size/,
    ],
  },
  {
    name: "labels [N,2]",
    args: flags({ dataset: at("labels2.npz") }),
    code: 1,
    message: [/labels in labels2\.npz \(train_labels\) have shape \[N,2\]; expected \[N,1\]/],
  },
  {
    name: "labels of a float dtype",
    inProcess: true,
    args: flags({ dataset: at("floatlabels.npz") }),
    code: 1,
    message: [/labels in floatlabels\.npz \(train_labels\) have dtype <f4; expected an integer/],
  },
  {
    name: "negative label",
    inProcess: true,
    args: flags({ dataset: at("neglabel.npz") }),
    code: 1,
    message: [/labels in neglabel\.npz \(val_labels\) hold -1 at row 3; expected 0\.\.2/],
  },
  {
    name: "label beyond the data set's classes",
    args: flags({ dataset: at("named/bloodmnist.npz") }),
    code: 1,
    message: [
      /labels in bloodmnist\.npz \(test_labels\) hold 9 at row 3; expected 0\.\.7/,
      /8 classes of bloodmnist/,
    ],
  },
  {
    name: "missing split key",
    args: flags({ dataset: at("nokey.npz") }),
    code: 1,
    message: [/nokey\.npz has no array "val_labels"/, /a MedMNIST-layout file needs train_images/],
  },
  {
    name: "fewer labels than images",
    inProcess: true,
    args: flags({ dataset: at("count.npz") }),
    code: 1,
    message: [/count\.npz \(test_labels\) count 5 rows but the images count 6/, /one label/],
  },
  {
    name: "data file that does not exist",
    args: flags({ dataset: at("absent.npz") }),
    code: 1,
    message: [/--dataset .*absent\.npz: the file does not exist/, /MedMNIST-layout \.npz/],
  },
  {
    name: "empty class folder",
    args: kvasir(at("kvasir_empty")),
    code: 1,
    message: [/class folder .*kvasir_empty\/val\/esophagitis is empty/, /add its images/],
  },
  {
    name: "unreadable image in an image folder",
    args: kvasir(at("kvasir_unreadable")),
    code: 1,
    message: [
      /kvasir_unreadable\/train\/dyed-resection-margins\/img0\.png is neither a JPEG nor a PNG/,
      /replace or remove it/,
    ],
  },
  {
    name: "checkpoint that is not a ViT",
    args: model(at("notvit.safetensors")),
    code: 1,
    message: [/notvit\.safetensors: no known ViT layout; looked for "visual\.conv1\.weight"/],
  },
  {
    name: "checkpoint with a tensor of the wrong shape",
    args: model(at("wrongshape.safetensors")),
    code: 1,
    message: [
      /wrongshape\.safetensors: tensor "visual\.transformer\.resblocks\.1\.attn\.in_proj_weight"/,
      /has shape \[96,16\]; expected \[96, 32\]/,
    ],
  },
  {
    name: "truncated safetensors",
    args: model(at("truncated.safetensors")),
    code: 1,
    message: [
      /truncated\.safetensors: tensor ".*": data_offsets/,
      /the file is truncated; download/,
    ],
  },
  {
    name: "an npz given as the model",
    inProcess: true,
    args: model(good),
    code: 1,
    message: [/good\.npz: header length \d+ exceeds the file/, /not a safetensors file/],
  },
  {
    name: "NaN in the model weights",
    args: model(at("nan.safetensors")),
    code: 1,
    message: [
      /nan\.safetensors: tensor "visual\.transformer\.resblocks\.1\.mlp\.c_fc\.weight" holds NaN/,
      /at index 5 .*convert or download the model again/,
    ],
  },
  {
    name: "-Infinity in the model weights",
    args: model(at("inf.safetensors")),
    code: 1,
    message: [/inf\.safetensors: tensor "visual\.ln_post\.weight" holds -Infinity at index 3/],
  },
  {
    name: "model file that does not exist",
    inProcess: true,
    args: model(at("absent.safetensors")),
    code: 1,
    message: [/model file .*absent\.safetensors does not exist; check --model/],
  },
  {
    name: "prototypes for 5 classes on a 3-class set",
    args: flags({ prototypes: at("protos_5x24.safetensors") }),
    code: 1,
    message: [/protos_5x24\.safetensors: "prototypes" has shape \[5,24\]; expected \[3, 24\]/],
  },
  {
    name: "prototypes of the wrong width",
    inProcess: true,
    args: flags({ prototypes: at("protos_3x16.safetensors") }),
    code: 1,
    message: [/protos_3x16\.safetensors: "prototypes" has shape \[3,16\]; expected \[3, 24\]/],
  },
  {
    name: "prototypes with a NaN row",
    inProcess: true,
    args: flags({ prototypes: at("protos_nan.safetensors") }),
    code: 1,
    message: [/protos_nan\.safetensors: prototype row 1 has norm NaN; rows must be finite/],
  },
  {
    name: "prototypes file that does not exist",
    args: flags({ prototypes: at("absent.safetensors") }),
    code: 1,
    message: [/prototypes file .*absent\.safetensors does not exist; check --prototypes/],
  },
];

const dp = (over: Record<string, string | null> = {}, extra: string[] = []) =>
  flags({ is_DP: "1", ...over }, extra);

const FLAG_CASES: Case[] = [
  {
    name: "ε = 0",
    args: dp({ epsilon: "0" }),
    code: 2,
    message: [/--epsilon 0: expected a privacy budget ε > 0/],
  },
  {
    name: "ε < 0",
    args: dp({ epsilon: "-1" }),
    code: 2,
    message: [/--epsilon -1: expected a privacy budget ε > 0/],
  },
  { name: "C = 0", args: dp({ C: "0" }), code: 2, message: [/--C 0: expected a clip bound > 0/] },
  {
    name: "C < 0",
    inProcess: true,
    args: dp({ C: "-0.5" }),
    code: 2,
    message: [/--C -0\.5: expected a clip bound > 0/],
  },
  {
    name: "K < 1",
    args: flags({ node_num: "0" }),
    code: 2,
    message: [/--node_num 0: expected an integer ≥ 1/],
  },
  {
    name: "Dirichlet α ≤ 0",
    args: flags({ dirichlet_alpha: "0" }),
    code: 2,
    message: [/--dirichlet_alpha 0: expected a number > 0/],
  },
  {
    name: "LoRA α ≤ 0",
    inProcess: true,
    args: flags({ lora_alpha: "-8" }),
    code: 2,
    message: [/--lora_alpha -8: expected a number > 0/],
  },
  {
    name: "rank ≥ the model's width",
    args: flags({ lora_r: "32" }),
    code: 2,
    message: [
      /--lora_r 32 does not fit .*openai\.safetensors, a model of width 32; use 1 ≤ r < 32/,
    ],
  },
  {
    name: "unknown method",
    args: flags({ method: "FedProx" }),
    code: 2,
    message: [/--method unknown method "FedProx"; use one of LoRA \(= FedLoRA\), FFA-LoRA/],
  },
  {
    name: "DEeR's module switches with another method",
    inProcess: true,
    args: flags({ method: "LoRA", module2: "0" }),
    code: 2,
    message: [/--module1\/--module2 switch DEeR's modules; --method LoRA has none/],
  },
  {
    name: "more clients than training images",
    args: flags({ node_num: "100000" }),
    code: 2,
    message: [
      /--node_num 100000 exceeds the \d+ training images of .*: some clients would hold none; use --node_num ≤ \d+/,
    ],
  },
  {
    name: "non-numeric value",
    args: flags({ T: "five" }),
    code: 2,
    message: [/--T five: expected an integer ≥ 1/],
  },
  {
    name: "unknown flag (with a suggestion)",
    args: flags({}, ["--epsilom", "3"]),
    code: 2,
    message: [/unknown flag --epsilom \(did you mean --epsilon\?\); --help lists the flags/],
  },
  {
    name: "flag without its value",
    inProcess: true,
    args: flags({}, ["--lr"]),
    code: 2,
    message: [/--lr needs a value \(--lr VALUE\)/],
  },
  {
    name: "--epsilon without --is_DP 1",
    args: flags({ epsilon: "3" }),
    code: 2,
    message: [
      /--calibration\/--epsilon\/--C\/--max_epsilon\/--accountant\/--noise only apply with --is_DP 1; add --is_DP 1 or drop/,
    ],
  },
  {
    name: "strict calibration with FedEx-LoRA",
    args: dp({ calibration: "strict", method: "FedEx-LoRA" }),
    code: 2,
    message: [/FedEx-LoRA with strict calibration: .*no client-level guarantee; use --calibration/],
  },
  {
    name: "strict calibration with DEeR module1=0 module2=1",
    args: dp({ calibration: "strict", module1: "0", module2: "1" }),
    code: 2,
    message: [
      /DEeR\(m1=0,m2=1\) with strict calibration: .*use --module1 1 or --calibration paper/,
    ],
  },
  {
    name: "paper calibration with client sampling",
    inProcess: true,
    args: dp({ participation: "0.5" }),
    code: 2,
    message: [/participation 0\.5 with paper calibration: .*use --calibration strict/],
  },
  {
    name: "paper calibration with a batch larger than the data",
    args: dp({ batchsize: "1000" }),
    code: 2,
    message: [/--batchsize 1000 exceeds the 24 training images of good; .*--batchsize ≤ 24/],
  },
  {
    name: "--num_classes that the data contradicts",
    inProcess: true,
    args: flags({ num_classes: "4" }),
    code: 2,
    message: [/--num_classes 4 but .*good\.npz has 3 classes .*fix --num_classes or omit it/],
  },
  {
    name: "a repeated seed",
    args: flags({ seeds: "10,10" }),
    code: 2,
    message: [/--seeds 10,10: a seed is repeated; give each seed once/],
  },
  {
    name: "one flag under two spellings",
    inProcess: true,
    args: flags({}, ["--node-num", "3"]),
    code: 2,
    message: [/--node_num was given twice \(as --node_num and --node-num\)/],
  },
  {
    name: "a positional argument",
    inProcess: true,
    args: flags({}, ["bloodmnist"]),
    code: 2,
    message: [/unexpected argument bloodmnist; flags start with --/],
  },
];

// A saved run, then resumes with other settings: refused before anything is loaded or written.
const saved = at("saved");
const RESUME_CASES: Case[] = [
  {
    name: "--resume with another T than the saved run",
    args: flags({ T: "2", out: saved }, ["--resume"]),
    code: 2,
    message: [
      /--resume: .*saved\/default\/DEeR_m1-1_m2-1 holds a run with other settings/,
      /\(--T: 1 in the saved run, 2 now\)/,
      /drop --resume and add --overwrite to start it again/,
    ],
    out: saved,
  },
];

/**
 * What `tasks/train.ts` does up to the first write, in this process: parse, then load the
 * inputs; a {@link UsageError} exits 2, any other error 1 (as train's `main`).
 */
async function trainInProcess(args: string[]): Promise<TrainRun> {
  try {
    const parsed = parseTrainArgs(args);
    if (parsed) (await loadInputs(parsed.inputs)).dispose();
    return { code: 0, stdout: "", stderr: "" };
  } catch (err) {
    return { code: err instanceof UsageError ? 2 : 1, stdout: "", stderr: (err as Error).message };
  }
}

/** Runs `jobs` at most `width` at a time (two cores: the subprocesses are CPU-bound). */
async function pool<T, R>(items: T[], width: number, job: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await job(items[i]);
    }
  }));
  return out;
}

function checkCase(c: Case, run: TrainRun, out: string, before?: string[]): void {
  const said = run.stderr;
  assert.equal(run.code, c.code, `${c.name}: exit code (stderr: ${said})`);
  for (const re of c.message) assert.match(said, re, `${c.name}: message`);
  if (before) assert.deepEqual(listTree(out), before, `${c.name}: the saved run is untouched`);
  else assert.ok(!existsSync(out), `${c.name}: no results folder (found ${listTree(out)})`);
}

async function runCases(t: Deno.TestContext, cases: Case[], before?: string[]): Promise<void> {
  const outs = cases.map((c, i) => c.out ?? at(`out-${c.code}-${i}-${c.name.length}`));
  const args = cases.map((c, i) => (c.out ? c.args : ["--out", outs[i], ...c.args]));
  const runs: TrainRun[] = [];
  for (const [i, c] of cases.entries()) if (c.inProcess) runs[i] = await trainInProcess(args[i]);
  const sub = cases.flatMap((c, i) => (c.inProcess ? [] : [i]));
  const subRuns = await pool(sub, 2, (i) => runTrain(args[i]));
  sub.forEach((i, j) => (runs[i] = subRuns[j]));
  for (const [i, c] of cases.entries()) {
    const how = c.inProcess ? "in process" : "subprocess";
    await t.step(
      `${c.name} → exit ${c.code} (${how})`,
      () => checkCase(c, runs[i], outs[i], before),
    );
  }
}

Deno.test("reliability: bad data, model and prototype files exit 1 and write nothing", async (t) => {
  await runCases(t, INPUT_CASES);
});

Deno.test("reliability: invalid and contradictory flags exit 2 and write nothing", async (t) => {
  await runCases(t, FLAG_CASES);
});

Deno.test("reliability: --resume with other flags is refused and the saved run kept", async (t) => {
  const first = await runTrain(flags({ out: saved }));
  assert.equal(first.code, 0, first.stderr);
  const before = listTree(saved);
  const config = join(saved, "default/DEeR_m1-1_m2-1/config.json");
  const bytes = await Deno.readFile(config);
  await runCases(t, RESUME_CASES, before);
  assert.deepEqual(await Deno.readFile(config), bytes, "config.json is not rewritten");
  // The comparison also covers what is not in the engine's config (the rank, the files).
  const other = parseTrainArgs(flags({ lora_r: "4", model: at("nan.safetensors") }))!;
  const diff = await resumeConflicts(
    join(saved, "default/DEeR_m1-1_m2-1"),
    { ...other.config, seed: 10 },
    other.seeds,
    other.inputs,
  );
  assert.equal(diff.length, 2, diff.join("; "));
  assert.match(
    diff.join("; "),
    /--model: ".*openai\.safetensors" in the saved run, ".*nan\.safetensors" now/,
  );
  assert.match(diff.join("; "), /--lora_r: 2 in the saved run, 4 now/);
});

Deno.test("reliability: a run that fails before its first round leaves no folder", async () => {
  // Prototypes with a NaN row (past loadPrototypes' check) make every client's update NaN: the
  // engine excludes them all and stops in round 1, after runExperiment wrote config.json.
  const encoder = await loadVisionEncoder(TINY_MODEL);
  const nanRow = tf.tensor2d(protos(3, 24, 1).prototypes.data, [3, 24]);
  const backbone = makeBackbone(encoder, nanRow, { rank: 2, alpha: 2 });
  nanRow.dispose();
  const data = await loadMedMnist(good);
  const inputs = {
    data,
    backbone,
    provenance: { data: good, model: TINY_MODEL, prototypes: "nan" },
    dispose: () => (backbone.prototypes.dispose(), encoder.dispose()),
  };
  const root = at("failing");
  const config = { ...defaultConfig(), numClients: 2, rounds: 1, localEpochs: 1, batchSize: 8 };
  await assert.rejects(
    runExperiment(inputs, config, [10], { outDir: join(root, "exp", "run") }),
    /round 1 phase B: every client failed \(client 0: non-finite/,
  );
  inputs.dispose();
  assert.ok(!existsSync(root), `the folders it created are gone (found ${listTree(root)})`);
  assert.ok(existsSync(dir), "the folder that was there before stays");
});

Deno.test("reliability: no case left a file beside the inputs", () => {
  const now = listTree(dir).filter((p) => !p.startsWith("saved"));
  assert.deepEqual(now, inputsWritten, "no temporary or half-written files");
});

globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(dir, { recursive: true });
  } catch {
    // already gone
  }
});
