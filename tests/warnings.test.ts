import assert from "node:assert/strict";
import { privacyPoints, runSweep, studyConfig } from "../lib/ablations.ts";
import { onePerKind, warn } from "../lib/warnings.ts";
import { capturingStderr } from "./helpers/console.ts";
import { writeToyMedMnist } from "./helpers/fl_fixture.ts";
import { loadTinyStudy, TINY_STUDY_SCALE } from "./helpers/tiny_study.ts";

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
  const study = await loadTinyStudy(await writeToyMedMnist(dir));
  const points = privacyPoints(studyConfig(TINY_STUDY_SCALE), {
    methods: [{ name: "FFA-LoRA", method: { method: "FFA-LoRA" } }],
    calibrations: ["paper"],
    epsilons: [1, 3, 6],
  });
  const lines = await capturingStderr(async () => {
    await runSweep(study, points, { log: () => {} });
  });
  const paper = lines.filter((l) => l.includes("paper calibration: the nominal ε"));
  assert.equal(paper.length, 1, lines.join("\n"));
  assert.ok(
    lines.includes('deer: (the "paper-calibration" warning above recurred in 2 more run(s))'),
    lines.join("\n"),
  );
  study.backbone.prototypes.dispose();
  await Deno.remove(dir, { recursive: true });
});
