import assert from "node:assert/strict";
import { join } from "node:path";
import { UsageError } from "../lib/cli.ts";
import { loadInputs } from "../lib/experiment.ts";
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
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
