import assert from "node:assert/strict";
import { join } from "node:path";
import { UsageError } from "../lib/cli.ts";
import { loadInputs, resumeConflicts } from "../lib/experiment.ts";
import { resolveMethod } from "../lib/fl/methods.ts";
import { parseTrainArgs } from "../tasks/train.ts";
import { TINY_MODEL, writeToyNpz } from "./fixtures/reliability_inputs.ts";

// The tiny open_clip fixture records its heads but not its activation: without the flag it is
// read as quick_gelu (with a notice); --model-act says which.
Deno.test("train: --model-act reaches the encoder; a bad value is a usage error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const data = await writeToyNpz(join(dir, "toy.npz"));
    const base = ["--dataset", data, "--model", TINY_MODEL, "--prototypes", "orthonormal"];
    for (const [extra, act] of [[[], "quick_gelu"], [["--model-act", "gelu"], "gelu"]] as const) {
      const args = parseTrainArgs([...base, ...extra])!;
      assert.equal(args.inputs.modelAct, extra.length ? "gelu" : undefined);
      const inputs = await loadInputs(args.inputs);
      try {
        assert.equal(inputs.backbone.vision.config.act, act);
      } finally {
        inputs.dispose();
      }
    }
    assert.equal(
      parseTrainArgs([...base, "--model_act", "quick_gelu"])!.inputs.modelAct,
      "quick_gelu",
    );
    assert.throws(
      () => parseTrainArgs([...base, "--model-act", "relu"]),
      (err: Error) =>
        err instanceof UsageError &&
        /^--model_act relu: expected gelu \(exact, erf\) or quick_gelu$/.test(err.message),
    );
    // A resume with another --model-act is refused, naming the flag.
    const saved = parseTrainArgs(base)!;
    await Deno.writeTextFile(
      join(dir, "config.json"),
      JSON.stringify({
        ...saved.config,
        method: resolveMethod(saved.config.method), // as runExperiment saves it
        seeds: saved.seeds,
        inputs: saved.inputs,
      }),
    );
    const now = parseTrainArgs([...base, "--model-act", "gelu"])!;
    assert.deepEqual(
      await resumeConflicts(dir, { ...now.config, seed: 0 }, now.seeds, now.inputs),
      ['--model_act: unset in the saved run, "gelu" now'],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
