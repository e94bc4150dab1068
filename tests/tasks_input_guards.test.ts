import assert from "node:assert/strict";
import { join } from "node:path";
import { UsageError } from "../lib/cli.ts";
import { loadInputs, resumeConflicts } from "../lib/experiment.ts";
import { resolveMethod } from "../lib/fl/methods/mod.ts";
import { parseTrainArgs } from "../tasks/train.ts";
import { deflateRawSync } from "node:zlib";
import { crc32, encodeNpy } from "../lib/data/npy.ts";
import { TINY_MODEL, toyArrays, writeToyNpz } from "./helpers/reliability_inputs.ts";
import {
  type CraftedEntry,
  craftedNpz,
  deflatedZeros,
  npyHeader,
} from "./helpers/crafted_inputs.ts";

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

/** A MedMNIST-layout npz whose train_images hold 3 GiB of zeros in a 3 MB deflate stream. */
function bombDataset(): Uint8Array {
  const entries: CraftedEntry[] = [];
  for (const [key, array] of Object.entries(toyArrays())) {
    const npy = encodeNpy(array);
    if (key === "train_images") {
      const shape = [3_900_000, 16, 16, 3]; // 2.8 GiB of uint8
      const header = npyHeader(shape);
      const zeros = shape.reduce((a, b) => a * b, 1);
      entries.push({
        name: `${key}.npy`,
        deflated: deflatedZeros(header, zeros),
        declaredSize: header.length + zeros,
      });
    } else {
      entries.push({
        name: `${key}.npy`,
        deflated: deflateRawSync(npy),
        declaredSize: npy.length,
        crc: crc32(npy),
      });
    }
  }
  return craftedNpz(entries);
}

Deno.test("train: a zip-bomb dataset is refused at once; the limits follow the environment", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "bomb.npz");
    await Deno.writeFile(path, bombDataset());
    const args = parseTrainArgs(["--dataset", path, "--model", TINY_MODEL])!;
    const t0 = performance.now();
    await assert.rejects(
      loadInputs(args.inputs),
      /bomb\.npz: the arrays read \(train_images\.npy, .*\) expand 2\.8 MiB to 2\.8 GiB, 1008:1 .* more than the limit of 100:1 .*DEER_NPZ_MAX_RATIO=<ratio>/,
    );
    assert.ok(performance.now() - t0 < 1000, `${performance.now() - t0} ms`);
    Deno.env.set("DEER_NPZ_MAX_RATIO", "Infinity");
    Deno.env.set("DEER_NPZ_MAX_BYTES", "1e9");
    try {
      await assert.rejects(
        loadInputs(args.inputs),
        /bomb\.npz: the arrays read .* declare 2\.8 GiB uncompressed, more than the limit of 953\.7 MiB/,
      );
    } finally {
      Deno.env.delete("DEER_NPZ_MAX_RATIO");
      Deno.env.delete("DEER_NPZ_MAX_BYTES");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
