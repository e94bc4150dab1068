import assert from "node:assert/strict";
import { join } from "node:path";
import { tf } from "../lib/backend.ts";
import { readSafetensors, writeSafetensors } from "../lib/model/safetensors.ts";
import {
  classPrototypes,
  loadTextEncoder,
  type TextEncoder,
  textEncoderFromTensors,
} from "../lib/model/text.ts";
import { loadTokenizer } from "../lib/model/tokenizers.ts";
import { relativeError } from "./helpers/numeric.ts";

// Tiny checkpoints and PyTorch references: tools/crosscheck/text_make_fixtures.py.
const FIXTURES = new URL("./fixtures/text_tiny/", import.meta.url).pathname;
const refs = (await readSafetensors(`${FIXTURES}references.safetensors`)).tensors;
const LAYOUTS = ["openai", "hf", "bert"] as const;

function ids(name: string): number[][] {
  const t = refs[`${name}_ids`];
  const [n, len] = t.shape;
  return Array.from({ length: n }, (_, i) => Array.from(t.data.subarray(i * len, (i + 1) * len)));
}

function encodeData(encoder: TextEncoder, rows: number[][]): Float32Array {
  const out = encoder.encode(rows);
  const data = out.dataSync() as Float32Array;
  out.dispose();
  return data;
}

/** max |got − want| / max |want|. */
Deno.test("text: the three layouts equal PyTorch (open_clip encode_text, HF text_embeds, HFTextEncoder)", async () => {
  const expected = {
    openai: { layout: "openai", act: "gelu", pool: "argmax", proj: "linear", heads: 2 },
    hf: { layout: "hf", act: "quick_gelu", pool: "eos", proj: "linear", heads: 2 },
    bert: { layout: "bert", act: "gelu", pool: "cls", proj: "mlp", heads: 2 },
  };
  for (const name of LAYOUTS) {
    const before = tf.memory().numTensors;
    // Settings from the sidecars (open_clip_config.json, config.json) and the metadata (bert).
    const encoder = await loadTextEncoder(`${FIXTURES}${name}/model.safetensors`);
    const { layout, act, pool, proj, heads, embedDim } = encoder.config;
    assert.deepEqual({ layout, act, pool, proj, heads }, expected[name]);
    assert.equal(embedDim, 24);
    const err = relativeError(encodeData(encoder, ids(name)), refs[`${name}_features`].data);
    assert.ok(err < 1e-4, `${name}: relative error ${err}`);
    const created = tf.memory().numTensors;
    encodeData(encoder, ids(name));
    assert.equal(tf.memory().numTensors, created, `${name}: encode leaks tensors`);
    encoder.dispose();
    assert.equal(tf.memory().numTensors, before, `${name}: dispose leaves tensors`);
    assert.throws(() => encoder.encode(ids(name)), /disposed/);
  }
});

Deno.test("text: padding beyond what is pooled does not change the features", async () => {
  const clip = await loadTextEncoder(`${FIXTURES}openai/model.safetensors`);
  // Causal tower: the prefix up to the end token gives the same features as the full row.
  const prompt = clip.tokenize(["this is an image of polyps"])[0];
  const end = prompt.indexOf(clip.tokenizer.endId);
  const full = encodeData(clip, [prompt]);
  assert.ok(relativeError(encodeData(clip, [prompt.slice(0, end + 1)]), full) < 1e-6);
  clip.dispose();
  // BERT: rows padded to all 28 positions equal rows padded to the tokenizer's 24.
  const bert = await loadTextEncoder(`${FIXTURES}bert/model.safetensors`);
  assert.equal(bert.config.contextLength, 24); // open_clip_config.json's context_length
  const rows = ids("bert");
  const longer = rows.map((r) => [...r, 0, 0, 0, 0]);
  assert.ok(relativeError(encodeData(bert, longer), encodeData(bert, rows)) < 1e-6);
  bert.dispose();
});

Deno.test("text: class prototypes are unit rows of the encoded prompts", async () => {
  const encoder = await loadTextEncoder(`${FIXTURES}hf/model.safetensors`);
  const before = tf.memory().numTensors;
  const T = classPrototypes(encoder, ["polyps", "image"]);
  assert.deepEqual(T.shape, [2, 24]);
  const norms = tf.tidy(() => tf.norm(T, 2, 1).dataSync());
  for (const n of norms) assert.ok(Math.abs(n - 1) < 1e-5, `norm ${n}`);
  const direct = tf.tidy(() => {
    const f = encoder.encode(encoder.tokenize(["this is an image of polyps"]));
    return f.div(tf.norm(f)).dataSync();
  });
  assert.ok(relativeError(T.dataSync().slice(0, 24), direct) < 1e-6);
  const custom = classPrototypes(encoder, ["polyps"], "{} {}");
  assert.ok(relativeError(custom.dataSync(), T.dataSync().slice(0, 24)) > 1e-3);
  T.dispose();
  custom.dispose();
  assert.equal(tf.memory().numTensors, before);
  // A class name is put in as it is: `$&` or `$$` are not replacement patterns.
  const dollar = classPrototypes(encoder, ["CD34$& cells $$"], "{}");
  const written = tf.tidy(() => {
    const f = encoder.encode(encoder.tokenize(["CD34$& cells $$"]));
    return f.div(tf.norm(f)).dataSync();
  });
  assert.ok(relativeError(dollar.dataSync(), written) < 1e-6);
  dollar.dispose();
  assert.throws(() => classPrototypes(encoder, ["a"], "an image"), /has no "\{\}"/);
  assert.throws(() => classPrototypes(encoder, []), /no class names/);
  encoder.dispose();
});

Deno.test("text: bad ids, missing tokenizers and wrong checkpoints fail clearly", async () => {
  const encoder = await loadTextEncoder(`${FIXTURES}openai/model.safetensors`);
  assert.throws(() => encoder.encode([[1, 2], [1]]), /row 1 has 1 ids but row 0 has 2/);
  assert.throws(() => encoder.encode([[1, 68]]), /holds id 68; ids must be integers in \[0, 68\)/);
  assert.throws(() => encoder.encode([new Array(17).fill(1)]), /expected 1 to 16/);
  assert.throws(() => encoder.encode([]), /no rows/);
  encoder.dispose();

  // Settings open_clip honours and this tower does not implement are refused, not ignored.
  const variant = await Deno.makeTempDir();
  for (const f of ["model.safetensors", "vocab.json", "merges.txt"]) {
    await Deno.copyFile(`${FIXTURES}openai/${f}`, join(variant, f));
  }
  const base = JSON.parse(await Deno.readTextFile(`${FIXTURES}openai/open_clip_config.json`));
  for (const extra of [{ no_causal_mask: true }, { norm_kwargs: { eps: 1e-6 } }]) {
    const cfg = structuredClone(base);
    const model = cfg.model_cfg ?? cfg;
    model.text_cfg = { ...(model.text_cfg ?? {}), ...extra };
    await Deno.writeTextFile(join(variant, "open_clip_config.json"), JSON.stringify(cfg));
    await assert.rejects(
      loadTextEncoder(join(variant, "model.safetensors")),
      new RegExp(`text_cfg\\.${Object.keys(extra)[0]} is .*would give other features`),
    );
  }
  await Deno.remove(variant, { recursive: true });

  // A checkpoint alone in a folder: no tokenizer beside it.
  const dir = await Deno.makeTempDir();
  const lone = join(dir, "model.safetensors");
  await Deno.copyFile(`${FIXTURES}openai/model.safetensors`, lone);
  await assert.rejects(
    loadTextEncoder(lone),
    /no tokenizer beside the checkpoint; looked in .* for tokenizer.json, vocab.json \+ merges.txt, bpe_simple_vocab_16e6.txt.gz/,
  );
  // The folder of another model's tokenizer works when named.
  const settings = { act: "gelu", heads: 2 } as const; // no open_clip_config.json here
  const withTokenizer = await loadTextEncoder(lone, `${FIXTURES}hf/tokenizer.json`, settings);
  withTokenizer.dispose();
  // A BERT tower needs a WordPiece vocabulary; a CLIP one a vocabulary that fits its embedding.
  await assert.rejects(
    loadTextEncoder(`${FIXTURES}bert/model.safetensors`, `${FIXTURES}openai/vocab.json`),
    /is a bpe tokenizer; this model needs BERT's WordPiece/,
  );
  const bigVocab = join(dir, "vocab.json");
  const vocab = JSON.parse(await Deno.readTextFile(`${FIXTURES}openai/vocab.json`));
  vocab["zz"] = 99;
  await Deno.writeTextFile(bigVocab, JSON.stringify(vocab));
  await Deno.copyFile(`${FIXTURES}openai/merges.txt`, join(dir, "merges.txt"));
  await assert.rejects(
    loadTextEncoder(lone, undefined, settings),
    /has 100 ids but the model embeds 68/,
  );
  // BiomedCLIP-style folders name their tokenizer in open_clip_config.json.
  const bertDir = await Deno.makeTempDir();
  await Deno.copyFile(`${FIXTURES}bert/model.safetensors`, join(bertDir, "model.safetensors"));
  await Deno.copyFile(
    `${FIXTURES}bert/open_clip_config.json`,
    join(bertDir, "open_clip_config.json"),
  );
  await assert.rejects(
    loadTextEncoder(join(bertDir, "model.safetensors")),
    /for tokenizer.json, vocab.txt\. .*names the tokenizer "tiny-bert"/,
  );
  // An image tower only (tests/fixtures/model_tiny) has no text tower.
  await assert.rejects(
    loadTextEncoder(new URL("./fixtures/model_tiny/timm.safetensors", import.meta.url).pathname),
    /no known text tower; looked for "token_embedding.weight".*This file holds only an image tower/,
  );
  // Unknown tensors in the text tower (a variant we would misread) and bad settings.
  const { tensors } = await readSafetensors(`${FIXTURES}openai/model.safetensors`);
  const tokenizer = await loadTokenizer(`${FIXTURES}openai/vocab.json`, { contextLength: 16 });
  const extra = { ...tensors, "transformer.resblocks.0.ls_1.gamma": tensors["ln_final.bias"] };
  await assert.rejects(
    textEncoderFromTensors(extra, { tokenizer, options: { act: "gelu" } }),
    /"transformer.resblocks.0.ls_1.gamma" are not part of the supported/,
  );
  await assert.rejects(
    textEncoderFromTensors(tensors, { tokenizer, options: { heads: 5 } }),
    /5 does not divide it/,
  );
  await assert.rejects(
    textEncoderFromTensors(tensors, { tokenizer, options: { ...settings, pool: "cls" } }),
    /pooling "cls" does not apply to a openai text tower/,
  );
  const file = join(dir, "meta.safetensors");
  await writeSafetensors(file, tensors, { "deer.text": "{not json" });
  await assert.rejects(
    loadTextEncoder(file, `${FIXTURES}openai/vocab.json`),
    /metadata "deer.text" is not JSON/,
  );
});
