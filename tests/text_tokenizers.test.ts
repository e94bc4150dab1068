import assert from "node:assert/strict";
import { join } from "node:path";
import {
  cleanText,
  fixText,
  htmlUnescape,
  loadTokenizer,
  type Tokenizer,
} from "../lib/model/tokenizers.ts";

// Tokenizer fixtures of tests/fixtures/text_tiny (tools/crosscheck/text_make_fixtures.py) with
// the ids transformers and open_clip produce on them.
const FIXTURES = new URL("./fixtures/text_tiny/", import.meta.url).pathname;
const REFERENCE = JSON.parse(await Deno.readTextFile(`${FIXTURES}tokenize.json`)) as {
  bpe: { text: string; ids: number[] }[];
  wordpiece: {
    text: string;
    ids: number[];
    transformers: number[];
    transformers_legacy: number[];
  }[];
};

/**
 * A hand-made CLIP BPE vocabulary. "The cat's hat!" is cleaned to "the cat's hat!" and split
 * into "the" "cat" "'s" "hat" "!"; the merges (rank order) h+e</w>, t+he</w>, c+a, ca+t</w>,
 * '+s</w> give the</w> (13), cat</w> (15), 's</w> (16); "hat" has no merge: h (2), a (0),
 * t</w> (8); "!" is !</w> (11).
 */
const BPE_VOCAB = [
  "a",
  "c",
  "h",
  "t",
  "'",
  "s",
  "e",
  "a</w>",
  "t</w>",
  "s</w>",
  "e</w>",
  "!</w>",
  "he</w>",
  "the</w>",
  "ca",
  "cat</w>",
  "'s</w>",
  "<|startoftext|>",
  "<|endoftext|>",
];
const BPE_MERGES = ["h e</w>", "t he</w>", "c a", "ca t</w>", "' s</w>"];
const SOT = 17, EOT = 18;

/**
 * A hand-made WordPiece vocabulary: "The Café, unaffable!" → the (5) cafe (6) , (10)
 * un ##aff ##able (7 8 9) ! (11).
 */
const WP_VOCAB = [
  "[PAD]",
  "[UNK]",
  "[CLS]",
  "[SEP]",
  "[MASK]",
  "the",
  "cafe",
  "un",
  "##aff",
  "##able",
  ",",
  "!",
  "中",
  "$",
  "5",
  "##0",
  "'",
  "s",
];

async function bpeDir(contextLength = 12): Promise<{ dir: string; tok: Tokenizer }> {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(
    join(dir, "vocab.json"),
    JSON.stringify(Object.fromEntries(BPE_VOCAB.map((t, i) => [t, i]))),
  );
  await Deno.writeTextFile(join(dir, "merges.txt"), `#version: 0.2\n${BPE_MERGES.join("\n")}\n`);
  return { dir, tok: await loadTokenizer(join(dir, "vocab.json"), { contextLength }) };
}

async function wordPieceDir(config?: object, contextLength = 12) {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(join(dir, "vocab.txt"), WP_VOCAB.join("\n") + "\n");
  if (config) await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(config));
  return { dir, tok: await loadTokenizer(dir, { contextLength }) };
}

function padded(ids: number[], length: number, pad = 0): number[] {
  return [...ids, ...new Array(length - ids.length).fill(pad)];
}

Deno.test("tokenizers: CLIP BPE gives hand-checked ids, truncates keeping the end token, pads with 0", async () => {
  const { dir, tok } = await bpeDir();
  assert.equal(tok.kind, "bpe");
  assert.deepEqual([tok.startId, tok.endId, tok.padId, tok.vocabSize], [SOT, EOT, 0, 19]);
  assert.deepEqual(tok.encode("The cat's hat!"), [13, 15, 16, 2, 0, 8, 11]);
  assert.deepEqual(tok.tokenize(["The cat's hat!", ""]), [
    padded([SOT, 13, 15, 16, 2, 0, 8, 11, EOT], 12),
    padded([SOT, EOT], 12),
  ]);
  // Cleaning: whitespace runs, HTML entities (twice), curly quotes, full-width letters.
  for (const text of ["  THE\n\tCAT&#39;S  ", "the cat’s", "ＴＨＥ  ＣＡＴ&amp;#39;s"]) {
    assert.deepEqual(tok.encode(text), [13, 15, 16], text);
  }
  // Hugging Face's CLIP vocabulary maps unknown pieces to <|endoftext|>.
  assert.deepEqual(tok.encode("x"), [EOT]);
  const short = await loadTokenizer(dir, { contextLength: 4 });
  assert.deepEqual(short.tokenize(["the cat's hat"]), [[SOT, 13, 15, EOT]]);
  assert.equal(short.source, `${join(dir, "vocab.json")} + merges.txt`);
});

Deno.test("tokenizers: tokenizer.json and open_clip's .txt.gz give the same pieces", async () => {
  const { dir, tok } = await bpeDir();
  // Hugging Face fast format, merges both as "a b" strings and as pairs.
  for (const merges of [BPE_MERGES, BPE_MERGES.map((m) => m.split(" "))]) {
    const json = {
      added_tokens: [
        { id: SOT, content: "<|startoftext|>", special: true },
        { id: EOT, content: "<|endoftext|>", special: true },
      ],
      model: {
        type: "BPE",
        vocab: Object.fromEntries(BPE_VOCAB.map((t, i) => [t, i])),
        merges,
        end_of_word_suffix: "</w>",
      },
    };
    await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(json));
    const fast = await loadTokenizer(join(dir, "tokenizer.json"), { contextLength: 12 });
    assert.deepEqual(fast.tokenize(["The cat's hat!"]), tok.tokenize(["The cat's hat!"]));
  }
  // open_clip: vocabulary = 256 byte characters, the same with </w>, the merges, the specials.
  // Bytes are ordered "!"…"~" first, so "a" is 64, "h" 71, "t</w>" 256 + 83, "!</w>" 256.
  const text = `"bpe_simple_vocab_16e6.txt#version: 0.2\n${BPE_MERGES.join("\n")}`;
  const gz = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  const gzPath = join(dir, "bpe_simple_vocab_16e6.txt.gz");
  await Deno.writeFile(gzPath, new Uint8Array(await new Response(gz).arrayBuffer()));
  const openClip = await loadTokenizer(gzPath, { contextLength: 12 });
  assert.deepEqual([openClip.startId, openClip.endId, openClip.vocabSize], [517, 518, 519]);
  assert.deepEqual(openClip.tokenize(["The cat's hat!"]), [
    padded([517, 513, 515, 516, 71, 64, 339, 256, 518], 12),
  ]);
  // A literal special token in the text is that token, as in open_clip.
  assert.deepEqual(openClip.encode("<start_of_text>hat"), [517, 71, 64, 339]);
});

Deno.test("tokenizers: the fixture vocabularies tokenize as transformers and open_clip do", async () => {
  for (const source of ["openai/vocab.json", "hf/tokenizer.json"]) {
    const tok = await loadTokenizer(`${FIXTURES}${source}`, { contextLength: 16 });
    for (const { text, ids } of REFERENCE.bpe) {
      assert.deepEqual(tok.tokenize([text])[0], padded(ids, 16), `${source}: ${text}`);
    }
  }
  const tok = await loadTokenizer(`${FIXTURES}bert`, { contextLength: 24 });
  assert.equal(tok.kind, "wordpiece");
  for (const { text, ids, transformers, transformers_legacy } of REFERENCE.wordpiece) {
    assert.deepEqual(tok.tokenize([text])[0], ids, `open_clip HFTokenizer: ${text}`);
    assert.deepEqual(ids, transformers, text);
    assert.deepEqual(ids, transformers_legacy, text);
  }
});

Deno.test("tokenizers: BERT WordPiece gives hand-checked ids", async () => {
  const { tok } = await wordPieceDir();
  assert.deepEqual([tok.startId, tok.endId, tok.padId], [2, 3, 0]);
  const cases: [string, number[]][] = [
    ["The Café, unaffable!", [5, 6, 10, 7, 8, 9, 11]], // lower-case, accents stripped, ## pieces
    ["中国", [12, 1]], // CJK characters stand alone; 国 is unknown
    ["$50", [13, 14, 15]], // ASCII symbols are punctuation
    ["it's", [1, 16, 17]],
    ["the [MASK] cafe", [5, 4, 6]], // special tokens written in the text stay whole
    ["[mask]", [1, 1, 1]],
    ["thex", [1]], // a word WordPiece cannot cover is one [UNK]
    ["a".repeat(101), [1]], // longer than 100 characters
    ["cafe\u0301\u0000\u200b", [6]], // NFD accent stripped; NUL and format characters dropped
  ];
  for (const [text, ids] of cases) assert.deepEqual(tok.encode(text), ids, text);
  assert.deepEqual(tok.tokenize(["The Café, unaffable!", ""]), [
    padded([2, 5, 6, 10, 7, 8, 9, 11, 3], 12),
    padded([2, 3], 12),
  ]);
  const short = await loadTokenizer(join(await wordPieceDir().then((d) => d.dir), "vocab.txt"), {
    contextLength: 6,
  });
  assert.deepEqual(short.tokenize(["the the the the the"]), [[2, 5, 5, 5, 5, 3]]);
  // A cased vocabulary (tokenizer_config.json) keeps case and accents.
  const cased = (await wordPieceDir({ do_lower_case: false })).tok;
  assert.deepEqual(cased.encode("The cafe Café"), [1, 6, 1]);
});

Deno.test("tokenizers: cleaning follows open_clip's basic_clean and Python's html.unescape", () => {
  const unescape: [string, string][] = [
    ["&amp; &lt;b&gt; &quot;", '& <b> "'],
    ["&ampx &eacute &eacute;", "&x é é"],
    ["&#x1F600; &#128512 &#65;", "😀 😀 A"],
    ["&#128; &#0; &#xD800; &#1; &#x110000;", "€ \ufffd \ufffd  \ufffd"],
    ["&bogus; &notit; &AMP; &apos;", "&bogus; ¬it; & '"],
  ];
  for (const [text, want] of unescape) assert.equal(htmlUnescape(text), want, text);
  assert.equal(fixText("“ﬁne” ＴＥＸＴ\u3000‘ok’"), "\"fine\" TEXT 'ok'");
  assert.equal(fixText("a\r\nb\u2028c\x85d"), "a\nb\nc…d"); // C1 \x85 is Windows-1252 "…"
  assert.equal(fixText("\x1b[31mred\x1b[0m\ufeff\x07"), "red");
  assert.equal(fixText("cafe\u0301"), "café"); // NFC
  assert.equal(fixText("&lt;tag&gt;\n<b>&lt;x&gt;\n&lt;y&gt;"), "<tag>\n<b>&lt;x&gt;\n&lt;y&gt;");
  assert.equal(cleanText("  An  &amp;lt;image&amp;gt;\n", { lowercase: true }), "an <image>");
  assert.equal(cleanText("\tKeep   Case "), "Keep Case");
});

Deno.test("tokenizers: missing or unusable files fail with what was looked for", async () => {
  const dir = await Deno.makeTempDir();
  await assert.rejects(loadTokenizer(join(dir, "nope.json")), /tokenizer path does not exist/);
  await assert.rejects(
    loadTokenizer(dir),
    /no tokenizer in this folder; looked for tokenizer.json, vocab.json \+ merges.txt, bpe_simple_vocab_16e6.txt.gz, vocab.txt/,
  );
  await Deno.writeTextFile(join(dir, "vocab.json"), JSON.stringify({ a: 0 }));
  await assert.rejects(loadTokenizer(join(dir, "vocab.json")), /merges.txt: missing/);
  await Deno.writeTextFile(join(dir, "merges.txt"), "#version: 0.2\n");
  await assert.rejects(loadTokenizer(join(dir, "vocab.json")), /no start token/);
  const { dir: wp } = await wordPieceDir();
  await assert.rejects(loadTokenizer(wp, { kind: "bpe" }), /no tokenizer in this folder/);
  await assert.rejects(
    loadTokenizer(join(wp, "vocab.txt"), { kind: "bpe" }),
    /is a wordpiece tokenizer; this model needs CLIP's BPE/,
  );
  await Deno.writeTextFile(
    join(dir, "tokenizer.json"),
    JSON.stringify({ model: { type: "Unigram", vocab: {} } }),
  );
  await assert.rejects(loadTokenizer(join(dir, "tokenizer.json")), /"Unigram" is not supported/);
});

Deno.test("tokenizers: a gzip vocabulary that inflates past 64 MiB is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // 65 MiB of zeros, gzipped by CompressionStream to about 65 KB: a decompression bomb.
    const chunk = new Uint8Array(2 ** 20);
    let left = 65;
    const zeros = new ReadableStream<BufferSource>({
      pull(controller) {
        if (left-- > 0) controller.enqueue(chunk);
        else controller.close();
      },
    });
    const gz = zeros.pipeThrough(new CompressionStream("gzip"));
    const path = join(dir, "bpe_simple_vocab_16e6.txt.gz");
    await Deno.writeFile(path, new Uint8Array(await new Response(gz).arrayBuffer()));
    assert.ok((await Deno.stat(path)).size < 2 ** 20);
    await assert.rejects(
      loadTokenizer(path),
      (err: Error) => {
        assert.match(
          err.message,
          /bpe_simple_vocab_16e6\.txt\.gz: inflates to more than 67108864 bytes \(64 MiB, the limit MAX_GZIP_TEXT_BYTES/,
        );
        assert.ok(err.message.startsWith(path), err.message);
        return true;
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tokenizers: tokenizer.json added_tokens and merges are checked, naming the field", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "tokenizer.json");
    const vocab = Object.fromEntries(WP_VOCAB.map((t, i) => [t, i]));
    const wordPiece = (added: unknown) => ({
      model: { type: "WordPiece", vocab, unk_token: "[UNK]" },
      added_tokens: added,
    });
    const bpe = (merges: unknown) => ({
      model: {
        type: "BPE",
        vocab: Object.fromEntries(BPE_VOCAB.map((t, i) => [t, i])),
        merges,
        end_of_word_suffix: "</w>",
      },
    });
    const cases: [unknown, RegExp][] = [
      [
        wordPiece([{ content: "[MASK]", id: 4 }, { content: "x", id: -7 }]),
        /tokenizer\.json: added_tokens\[1\]\.id \(token "x"\) is number -7; ids must be integers ≥ 0/,
      ],
      [
        wordPiece([{ content: "zz", id: "x" }]),
        /added_tokens\[0\]\.id \(token "zz"\) is string "x"/,
      ],
      [
        wordPiece([{ content: "zz", id: 2.5 }]),
        /added_tokens\[0\]\.id \(token "zz"\) is number 2\.5/,
      ],
      [wordPiece([{ content: "zz" }]), /added_tokens\[0\]\.id \(token "zz"\) is missing/],
      [wordPiece([null]), /tokenizer\.json: added_tokens\[0\] is null; expected an object/],
      [
        wordPiece([{ id: 20 }]),
        /added_tokens\[0\]\.content is missing; expected a non-empty string/,
      ],
      [wordPiece([{ content: 7, id: 20 }]), /added_tokens\[0\]\.content is number 7/],
      [wordPiece({ "[MASK]": 4 }), /tokenizer\.json: added_tokens is an object; expected an array/],
      [
        bpe([...BPE_MERGES, null]),
        /tokenizer\.json: model\.merges\[5\] is null; expected an "a b" string or a pair/,
      ],
      [bpe([["h", "e</w>"], [1, 2]]), /model\.merges\[1\] is \[1,2\]; expected/],
      [bpe([["h", "e</w>", "x"]]), /model\.merges\[0\] is \["h","e<\/w>","x"\]; expected/],
      [bpe(["h e</w>", "the"]), /model\.merges\[1\]: merge "the" is not two tokens/],
      [bpe("h e</w>"), /tokenizer\.json: model\.merges is string "h e<\/w>"; expected an array/],
      [null, /tokenizer\.json: expected a JSON object, got null/],
      [{ model: [] }, /tokenizer\.json: model is an array; expected an object/],
    ];
    for (const [json, error] of cases) {
      await Deno.writeTextFile(path, JSON.stringify(json));
      await assert.rejects(loadTokenizer(path), error, JSON.stringify(json).slice(0, 120));
    }
    // Valid added tokens (ids past the model vocabulary included) still load.
    await Deno.writeTextFile(
      path,
      JSON.stringify(wordPiece([{ content: "[MASK]", id: 4 }, { content: "[NEW]", id: 18 }])),
    );
    const tok = await loadTokenizer(path, { contextLength: 6 });
    assert.equal(tok.vocabSize, 19);
    assert.deepEqual(tok.tokenize(["the [NEW] [MASK]"]), [[2, 5, 18, 4, 3, 0]]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
