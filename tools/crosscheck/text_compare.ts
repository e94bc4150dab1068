/**
 * TypeScript side of the text-tower cross-check: loads the checkpoints that `text_compare.py`
 * wrote, encodes the same token ids, and reports per layout the largest absolute difference to
 * the PyTorch features relative to the feature scale (max |ref|), target ≤ 1e-4; then tokenizes
 * the varied texts and reports every row that differs from open_clip's tokenizers (SimpleTokenizer
 * with the shipped BPE vocabulary; HFTokenizer / transformers for BERT) and from Hugging Face's
 * CLIPTokenizer (for information: it cleans text differently from open_clip).
 *
 * Writes `report.json` beside the checkpoints; exits non-zero when an encoder misses the target.
 *
 * @example
 * ```sh
 * python tools/crosscheck/text_compare.py /tmp/deer_text_crosscheck
 * deno run -A tools/crosscheck/text_compare.ts /tmp/deer_text_crosscheck
 * ```
 * @module
 */
import { backendName, tf } from "../../lib/backend.ts";
import { writeJsonAtomic } from "../../lib/io/atomic.ts";
import { readSafetensors, type SafeTensor } from "../../lib/model/safetensors.ts";
import { loadTextEncoder, type TextLoadOptions } from "../../lib/model/text.ts";
import { loadTokenizer, type Tokenizer } from "../../lib/model/tokenizers.ts";

const dir = Deno.args[0] ?? "/tmp/deer_text_crosscheck";
const TARGET = 1e-4;

const refs = (await readSafetensors(`${dir}/inputs.safetensors`)).tensors;
const tok = JSON.parse(await Deno.readTextFile(`${dir}/tokenize.json`));

function rows(t: SafeTensor): number[][] {
  const [n, len] = t.shape;
  return Array.from({ length: n }, (_, i) => Array.from(t.data.subarray(i * len, (i + 1) * len)));
}

const cases: {
  name: string;
  file: string;
  tokenizer?: string;
  options: TextLoadOptions;
  ids: string;
  ref: string;
}[] = [
  {
    name: "open_clip ViT-B-16, QuickGELU (default)",
    file: "openai_b16.safetensors",
    tokenizer: tok.gz,
    options: {},
    ids: "clip_ids",
    ref: "openai_quick_gelu",
  },
  {
    name: "open_clip ViT-B-16, GELU",
    file: "openai_b16.safetensors",
    tokenizer: tok.gz,
    options: { act: "gelu" },
    ids: "clip_ids",
    ref: "openai_gelu",
  },
  {
    name: "Hugging Face CLIPModel",
    file: "hf_clip/model.safetensors",
    tokenizer: `${dir}/hf_clip_tok/fast/tokenizer.json`,
    options: {},
    ids: "clip_ids",
    ref: "hf",
  },
  {
    name: "BiomedCLIP-like (BERT, MLP proj)",
    file: "biomedclip/open_clip_model.safetensors",
    tokenizer: tok.bert_vocab,
    options: {},
    ids: "bert_ids",
    ref: "biomedclip",
  },
];

const report: Record<string, unknown> = { backend: backendName, encoders: [], tokenizers: {} };
let failed = false;
for (const c of cases) {
  let t0 = performance.now();
  const encoder = await loadTextEncoder(`${dir}/${c.file}`, c.tokenizer, c.options);
  const loadMs = performance.now() - t0;
  const ids = rows(refs[c.ids]);
  // The prompts tokenized here must be the ids PyTorch encoded (the random full row aside).
  const prompts: string[] = tok.prompts;
  const ours = encoder.tokenize(prompts);
  const idsMatch = ours.every((row, i) => row.every((id, j) => id === ids[i][j]));
  t0 = performance.now();
  const out = encoder.encode(ids);
  const got = await out.data();
  const encodeMs = performance.now() - t0;
  out.dispose();
  encoder.dispose();
  const want = refs[c.ref].data;
  let maxErr = 0, scale = 0;
  for (let i = 0; i < want.length; i++) {
    maxErr = Math.max(maxErr, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  const relative = maxErr / scale;
  const ok = relative <= TARGET && idsMatch;
  failed ||= !ok;
  (report.encoders as unknown[]).push({
    name: c.name,
    rows: ids.length,
    length: ids[0].length,
    maxAbsError: maxErr,
    maxAbsReference: scale,
    relative,
    tokenizeMatchesPython: idsMatch,
    loadMs: Math.round(loadMs),
    encodeMs: Math.round(encodeMs),
  });
  console.log(
    `${ok ? "ok  " : "FAIL"} ${c.name}: max |Δ| ${maxErr.toExponential(2)} / max |ref| ` +
      `${scale.toFixed(3)} = ${relative.toExponential(2)}; tokenize = Python: ${idsMatch} ` +
      `(load ${(loadMs / 1000).toFixed(1)} s, encode ${ids.length}×${ids[0].length} ${
        (encodeMs / 1000).toFixed(2)
      } s)`,
  );
}

function compare(
  name: string,
  tokenizer: Tokenizer,
  entries: Record<string, unknown>[],
  key: string,
  pad = true,
): void {
  const mismatches: unknown[] = [];
  for (const e of entries) {
    const want = e[key] as number[];
    const got = tokenizer.tokenize([e.text as string])[0];
    const full = pad ? [...want, ...new Array(got.length - want.length).fill(0)] : want;
    if (got.length !== full.length || got.some((id, i) => id !== full[i])) {
      mismatches.push({
        text: e.text,
        ours: got.filter((id, i) => id !== 0 || i === 0),
        [key]: want,
      });
    }
  }
  (report.tokenizers as Record<string, unknown>)[name] = {
    texts: entries.length,
    mismatches,
  };
  console.log(`${name}: ${entries.length - mismatches.length}/${entries.length} rows equal`);
  for (const m of mismatches) console.log(`  differs: ${JSON.stringify(m)}`);
}

const gz = await loadTokenizer(tok.gz, { contextLength: 77 });
compare("CLIP BPE (.txt.gz) vs open_clip SimpleTokenizer", gz, tok.bpe, "open_clip");
const vocabJson = await loadTokenizer(`${dir}/hf_clip_tok/vocab.json`, { contextLength: 77 });
compare("CLIP BPE (vocab.json + merges.txt) vs open_clip", vocabJson, tok.bpe, "open_clip");
const fast = await loadTokenizer(`${dir}/hf_clip_tok/fast/tokenizer.json`, { contextLength: 77 });
compare("CLIP BPE (tokenizer.json) vs open_clip", fast, tok.bpe, "open_clip");
compare("CLIP BPE vs Hugging Face CLIPTokenizer (informative)", gz, tok.bpe, "hf");
const bert = await loadTokenizer(tok.bert_vocab, { contextLength: 256 });
compare("BERT WordPiece vs open_clip HFTokenizer", bert, tok.wordpiece, "open_clip", false);
compare("BERT WordPiece vs transformers BertTokenizer", bert, tok.wordpiece, "transformers", false);
compare(
  "BERT WordPiece vs transformers BertTokenizerLegacy",
  bert,
  tok.wordpiece,
  "transformers_legacy",
  false,
);

await writeJsonAtomic(`${dir}/report.json`, report);
tf.disposeVariables();
if (failed) Deno.exit(1);
