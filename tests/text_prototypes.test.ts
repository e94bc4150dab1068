import assert from "node:assert/strict";
import { join } from "node:path";
import { loadPrototypes } from "../lib/model/head.ts";
import { readSafetensors, writeSafetensors } from "../lib/model/safetensors.ts";
import { datasetPromptClasses, main } from "../tasks/prototypes.ts";

const FIXTURES = new URL("./fixtures/text_tiny/", import.meta.url).pathname;

function capture() {
  const lines = { log: [] as string[], warn: [] as string[] };
  return {
    lines,
    io: { log: (m: string) => lines.log.push(m), warn: (m: string) => lines.warn.push(m) },
  };
}

Deno.test("prototypes task: --classes writes a file loadPrototypes reads", async () => {
  const out = join(await Deno.makeTempDir(), "sub", "p.safetensors");
  const { lines, io } = capture();
  const code = await main(
    ["--model", `${FIXTURES}hf/model.safetensors`, "--classes", "polyps, image", "--out", out],
    io,
  );
  assert.equal(code, 0, lines.warn.join("\n"));
  const { prototypes, classNames } = await loadPrototypes(out, { numClasses: 2, embedDim: 24 });
  assert.deepEqual(classNames, ["polyps", "image"]);
  for (const n of prototypes.norm(2, 1).dataSync()) assert.ok(Math.abs(n - 1) < 1e-5);
  prototypes.dispose();
  assert.match(lines.log.join("\n"), /2 × 24 from the hf text tower/);
  assert.match(lines.log.join("\n"), /polyps: "this is an image of polyps"/);
});

Deno.test("prototypes task: OCT-C8 pairs labels with their own names; --reference-prompts swaps DR and MH", async () => {
  const own = datasetPromptClasses("oct-c8");
  assert.equal(own.promptNames[4], "Diabetic retinopathy");
  assert.equal(own.promptNames[6], "Macular hole");
  assert.equal(own.warning, undefined);
  const ref = datasetPromptClasses("oct-c8", true);
  assert.equal(ref.promptNames[4], "Macular hole");
  assert.match(ref.warning!, /DR, MH/);
  assert.equal(datasetPromptClasses("kvasir-v2", true).warning, undefined);
  assert.deepEqual(datasetPromptClasses("bloodmnist").promptNames.length, 8);

  const dir = await Deno.makeTempDir();
  const files = { own: join(dir, "own.safetensors"), ref: join(dir, "ref.safetensors") };
  const model = `${FIXTURES}bert/model.safetensors`;
  const a = capture(), b = capture();
  assert.equal(await main(["--model", model, "--dataset", "oct-c8", "--out", files.own], a.io), 0);
  const args = ["--model", model, "--dataset", "oct-c8", "--reference-prompts", "--out", files.ref];
  assert.equal(await main(args, b.io), 0);
  assert.equal(a.lines.warn.length, 0);
  assert.match(b.lines.warn.join("\n"), /warning: .*DR → "Macular hole"/);
  const p = await loadPrototypes(files.own), q = await loadPrototypes(files.ref);
  assert.deepEqual(p.classNames, ["AMD", "CNV", "CSR", "DME", "DR", "DRUSEN", "MH", "NORMAL"]);
  assert.deepEqual(q.classNames, p.classNames); // rows stay in label order
  const row = (t: typeof p, i: number) =>
    Array.from(t.prototypes.dataSync().slice(i * 24, i * 24 + 24));
  const gap = (a: number[], b: number[]) => Math.max(...a.map((v, j) => Math.abs(v - b[j])));
  // The same prompt gives the same unit row to float32 rounding: the text tower encodes the
  // prompts as one batch, and a prompt's place in it may change the product's summation order
  // (seen: 9e-8 on an AMD EPYC without AVX-512, bit-identical elsewhere). Different prompts'
  // rows are 1e-3 apart even in this tiny random tower.
  assert.ok(gap(row(p, 4), row(p, 6)) > 1e-4, "DR and MH prompts give distinct rows");
  assert.ok(gap(row(q, 4), row(p, 6)) < 1e-6, `DR's row is MH's: ${gap(row(q, 4), row(p, 6))}`);
  assert.ok(gap(row(q, 6), row(p, 4)) < 1e-6, `MH's row is DR's: ${gap(row(q, 6), row(p, 4))}`);
  assert.ok(gap(row(q, 0), row(p, 0)) < 1e-6, `AMD's row unchanged: ${gap(row(q, 0), row(p, 0))}`);
  p.prototypes.dispose();
  q.prototypes.dispose();
});

Deno.test("prototypes task: usage errors exit 2, load errors exit 1", async () => {
  const model = `${FIXTURES}hf/model.safetensors`;
  const cases: [string[], RegExp][] = [
    [["--model", model, "--out", "x"], /exactly one of --dataset NAME and --classes/],
    [["--model", model, "--classes", "a", "--dataset", "oct-c8", "--out", "x"], /exactly one/],
    [["--classes", "a", "--out", "x"], /--model is required/],
    [["--model", model, "--classes", "a,,b", "--out", "x"], /empty class name/],
    [["--model", model, "--dataset", "nope", "--out", "x"], /unknown; known datasets: pathmnist/],
    [
      ["--model", model, "--dataset", "bloodmnist", "--reference-prompts", "--out", "x"],
      /no reference prompts/,
    ],
    [["--model", model, "--classes", "a", "--template", "no slot", "--out", "x"], /has no "\{\}"/],
    [["--model", model, "--classes", "a", "--out", "x", "--bogus"], /unknown flag --bogus/],
  ];
  for (const [args, message] of cases) {
    const { lines, io } = capture();
    assert.equal(await main(args, io), 2, args.join(" "));
    assert.match(lines.warn.join("\n"), message);
  }
  const { lines, io } = capture();
  const dir = await Deno.makeTempDir();
  const code = await main(
    ["--model", join(dir, "missing.safetensors"), "--classes", "a", "--out", join(dir, "p")],
    io,
  );
  assert.equal(code, 1);
  assert.match(lines.warn.join("\n"), /missing.safetensors/);
});

// An open_clip text tower whose file records its heads but not its activation: it used to be
// read as QuickGELU without a word, for exact-GELU weights such as these.
Deno.test("prototypes task: a defaulted activation is said once; --model-act gives the right one", async () => {
  const dir = await Deno.makeTempDir();
  const errors: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => errors.push(args.map(String).join(" "));
  try {
    const src = `${FIXTURES}openai/`;
    const { tensors } = await readSafetensors(`${src}model.safetensors`);
    for (const name of ["plain-a", "plain-b"]) {
      await Deno.mkdir(join(dir, name));
      await writeSafetensors(join(dir, name, "model.safetensors"), tensors, {
        "deer.text": JSON.stringify({ heads: 2, contextLength: 16 }),
      });
      for (const f of ["vocab.json", "merges.txt"]) {
        await Deno.copyFile(src + f, join(dir, name, f));
      }
    }
    const run = async (model: string, out: string, extra: string[] = []) => {
      const { lines, io } = capture();
      const code = await main(["--model", model, "--classes", "a,b", "--out", out, ...extra], io);
      assert.equal(code, 0, lines.warn.join("\n"));
      const { prototypes } = await loadPrototypes(out, { numClasses: 2, embedDim: 24 });
      const data = prototypes.dataSync() as Float32Array;
      prototypes.dispose();
      return data;
    };
    // The fixture's own open_clip_config.json says exact GELU ("quick_gelu": false).
    const reference = await run(`${src}model.safetensors`, join(dir, "ref.safetensors"));
    const a = join(dir, "plain-a", "model.safetensors");
    const viaFlag = await run(a, join(dir, "a.safetensors"), ["--model-act", "gelu"]);
    assert.deepEqual(Array.from(viaFlag), Array.from(reference));
    assert.deepEqual(errors, []);
    const b = join(dir, "plain-b", "model.safetensors");
    const defaulted = await run(b, join(dir, "b1.safetensors"));
    await run(b, join(dir, "b2.safetensors"));
    assert.equal(errors.length, 1, errors.join("\n"));
    assert.match(
      errors[0],
      /^deer: .*plain-b\/model\.safetensors does not say which activation its text tower's MLP uses; assuming quick_gelu.*\(deno task prototypes: --model-act gelu\), the metadata key "deer\.text" \(\{"act": "gelu"\}\), or an open_clip_config\.json beside the weights$/,
    );
    let diff = 0;
    for (let i = 0; i < reference.length; i++) {
      diff = Math.max(diff, Math.abs(defaulted[i] - reference[i]));
    }
    assert.ok(diff > 1e-4, `quick_gelu prototypes differ from gelu ones by ${diff}`);
    const { lines, io } = capture();
    assert.equal(
      await main(["--model", a, "--classes", "a", "--out", "x", "--model-act", "relu"], io),
      2,
    );
    assert.match(
      lines.warn.join("\n"),
      /--model-act relu: expected gelu \(exact, erf\) or quick_gelu/,
    );
  } finally {
    console.error = original;
    await Deno.remove(dir, { recursive: true });
  }
});
