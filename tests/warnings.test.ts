import assert from "node:assert/strict";
import {
  privacyPoints,
  runSweep,
  studyConfig,
  studyScale,
  subsetDataset,
} from "../lib/ablations.ts";
import { loadInputs } from "../lib/experiment.ts";
import { onePerKind, warn } from "../lib/warnings.ts";
import { TINY_MODEL, writeToyMedMnist } from "./helpers/fl_fixture.ts";

/** Runs `body` with console.error captured (the library's default warning printer). */
async function capturingStderr(body: () => Promise<void>): Promise<string[]> {
  const lines: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => lines.push(args.map(String).join(" "));
  try {
    await body();
  } finally {
    console.error = original;
  }
  return lines;
}

Deno.test("warnings: outside a scope each is printed; inside, each kind once plus a recurrence count", async () => {
  const lines = await capturingStderr(async () => {
    warn("a", "first a");
    warn("a", "second a");
    await onePerKind(() => {
      warn("a", "scoped a 1");
      warn("b", "scoped b");
      warn("a", "scoped a 2");
      warn("a", "scoped a 3");
      return Promise.resolve();
    });
  });
  assert.deepEqual(lines, [
    "deer: first a",
    "deer: second a",
    "deer: scoped a 1",
    "deer: scoped b",
    'deer: (the "a" warning above recurred in 2 more run(s))',
  ]);
});

Deno.test("warnings: a sweep over ε in the paper calibration says the calibration warning once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-warnings-" });
  const scale = {
    ...studyScale(true),
    rounds: 1,
    numClients: 4,
    batchSize: 8,
    rank: 4,
    alpha: 4,
    perClass: { train: 12, val: 6, test: 6 },
  };
  const inputs = await loadInputs({
    dataset: await writeToyMedMnist(dir),
    modelPath: TINY_MODEL,
    prototypes: "orthonormal",
    rank: 4,
    alpha: 4,
  });
  const data = subsetDataset(inputs.data, scale.perClass);
  const points = privacyPoints(studyConfig(scale), {
    methods: [{ name: "FFA-LoRA", method: { method: "FFA-LoRA" } }],
    calibrations: ["paper"],
    epsilons: [1, 3, 6],
  });
  const lines = await capturingStderr(async () => {
    await runSweep({ ...inputs, data }, points, { log: () => {} });
  });
  const paper = lines.filter((l) => l.includes("paper calibration: the nominal ε"));
  assert.equal(paper.length, 1, lines.join("\n"));
  assert.ok(
    lines.includes('deer: (the "paper-calibration" warning above recurred in 2 more run(s))'),
    lines.join("\n"),
  );
  inputs.backbone.prototypes.dispose();
  await Deno.remove(dir, { recursive: true });
});
