/**
 * Text tokenizers for the CLIP-style text towers (docs/method.md#the-classification-head): CLIP's
 * byte-level BPE and BERT's WordPiece, read from the files their checkpoints ship with. Both return
 * rows of token ids of a fixed length, as open_clip's tokenizers do.
 *
 * **CLIP BPE** (open_clip `SimpleTokenizer`, OpenAI CLIP): clean the text (below) and lower-case
 * it; split it with the pattern
 * `<start>|<end>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`; map each piece's UTF-8
 * bytes to printable characters (GPT-2's byte encoder); apply the BPE merges (lowest rank first,
 * the last character of a piece carrying `</w>`); look the pieces up. A row is
 * `[start, …ids, end]`, cut to the context length (77) with its last id replaced by the end token,
 * then padded with zeros. Files: `vocab.json` + `merges.txt` (Hugging Face), `tokenizer.json`
 * (Hugging Face fast) or open_clip's `bpe_simple_vocab_16e6.txt.gz` (the vocabulary is built from
 * the first 48,894 merges, as open_clip does; its special tokens are `<start_of_text>` and
 * `<end_of_text>`, Hugging Face's `<|startoftext|>` and `<|endoftext|>`, with the same ids).
 *
 * **BERT WordPiece** (PubMedBERT in BiomedCLIP, through open_clip's `HFTokenizer`): the same text
 * cleaning without lower-casing, then BERT's BasicTokenizer — drop control characters, space out
 * CJK ideographs, split on whitespace, lower-case and strip accents (NFD, drop `Mn`) for uncased
 * vocabularies, split off every punctuation character (ASCII symbols included) — then greedy
 * longest-match WordPiece with `##` continuations; a word longer than 100 characters, or one that
 * cannot be covered, is `[UNK]`. A row is `[CLS] …ids [SEP]`, the ids cut to length − 2, padded
 * with `[PAD]` to the context length (256 for BiomedCLIP): what open_clip's `HFTokenizer` returns
 * (`padding="max_length", truncation=True`). Special tokens written in the text (`[MASK]`) stay
 * single tokens, as in Hugging Face. Files: `vocab.txt` (with `tokenizer_config.json` beside it
 * for `do_lower_case`/`strip_accents`, uncased by default) or `tokenizer.json`.
 *
 * **Cleaning** mirrors open_clip's `basic_clean` + `whitespace_clean`: `ftfy.fix_text`, HTML
 * unescaping twice, whitespace runs to one space. ftfy cannot be run here; {@link fixText}
 * implements the fixes it applies to text that is not mojibake — HTML entities, C1 controls as
 * Windows-1252, Latin ligatures, full-width forms, curly quotes, line breaks, lone surrogates,
 * terminal escapes, control characters, NFC. Not done: ftfy's mojibake repair (`"sÃ³"` stays as
 * it is; ftfy would read `"só"`), its all-caps entity names (`&EACUTE;`), and HTML5-only named
 * entities (`&check;`; the HTML 4 set and numeric references are decoded as Python's
 * `html.unescape` does). Unicode tables are the JavaScript engine's (Python 3.11 uses 14.0), so
 * characters assigned after Unicode 14 may split differently.
 *
 * @example
 * ```ts
 * // With open_clip's bpe_simple_vocab_16e6.txt.gz the ids are open_clip's own:
 * // [49406, 589, 533, 550, 2867, 539, 6833, 814, 49407, 0, …]. A tiny vocabulary:
 * const tokenizer = await loadTokenizer("tests/fixtures/text_tiny/openai/vocab.json", { contextLength: 16 });
 * tokenizer.tokenize(["this is an image of polyps"])[0].slice(0, 10);
 * // [66, 54, 52, 56, 60, 55, 65, 67, 0, 0]
 * ```
 * @module
 */
import { basename, dirname, join } from "node:path";
import { inflateBounded, InflateLimitError } from "../data/_inflate.ts";
import { concatBytes } from "../io/bytes.ts";
import { pathExists } from "../io/run_folder.ts";

// ---------------------------------------------------------------------------------------------
// Text cleaning: open_clip's basic_clean / whitespace_clean and the part of ftfy that applies

/** Characters Python's `str.split()` / `str.strip()` treat as whitespace (`str.isspace`). */
const PY_SPACE = "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029" +
  "\\u202f\\u205f\\u3000";
const PY_SPACE_RUN = new RegExp(`[${PY_SPACE}]+`, "g");

/** Windows-1252 for bytes 0x80–0x9F (undefined bytes keep their value, as Python and ftfy do). */
const CP1252_C1 = [
  0x20ac,
  0x81,
  0x201a,
  0x192,
  0x201e,
  0x2026,
  0x2020,
  0x2021,
  0x2c6,
  0x2030,
  0x160,
  0x2039,
  0x152,
  0x8d,
  0x17d,
  0x8f,
  0x90,
  0x2018,
  0x2019,
  0x201c,
  0x201d,
  0x2022,
  0x2013,
  0x2014,
  0x2dc,
  0x2122,
  0x161,
  0x203a,
  0x153,
  0x9d,
  0x17e,
  0x178,
];

/** HTML 4 named entities (+ `apos`), as Python's `html.entities.html5` decodes them. */
const HTML_ENTITIES: Map<string, string> = new Map(
  ("AElig:c6 Aacute:c1 Acirc:c2 Agrave:c0 Alpha:391 Aring:c5 Atilde:c3 Auml:c4 Beta:392 " +
    "Ccedil:c7 Chi:3a7 Dagger:2021 Delta:394 ETH:d0 Eacute:c9 Ecirc:ca Egrave:c8 Epsilon:395 " +
    "Eta:397 Euml:cb Gamma:393 Iacute:cd Icirc:ce Igrave:cc Iota:399 Iuml:cf Kappa:39a " +
    "Lambda:39b Mu:39c Ntilde:d1 Nu:39d OElig:152 Oacute:d3 Ocirc:d4 Ograve:d2 Omega:3a9 " +
    "Omicron:39f Oslash:d8 Otilde:d5 Ouml:d6 Phi:3a6 Pi:3a0 Prime:2033 Psi:3a8 Rho:3a1 " +
    "Scaron:160 Sigma:3a3 THORN:de Tau:3a4 Theta:398 Uacute:da Ucirc:db Ugrave:d9 Upsilon:3a5 " +
    "Uuml:dc Xi:39e Yacute:dd Yuml:178 Zeta:396 aacute:e1 acirc:e2 acute:b4 aelig:e6 agrave:e0 " +
    "alefsym:2135 alpha:3b1 amp:26 and:2227 ang:2220 aring:e5 asymp:2248 atilde:e3 auml:e4 " +
    "bdquo:201e beta:3b2 brvbar:a6 bull:2022 cap:2229 ccedil:e7 cedil:b8 cent:a2 chi:3c7 " +
    "circ:2c6 clubs:2663 cong:2245 copy:a9 crarr:21b5 cup:222a curren:a4 dArr:21d3 dagger:2020 " +
    "darr:2193 deg:b0 delta:3b4 diams:2666 divide:f7 eacute:e9 ecirc:ea egrave:e8 empty:2205 " +
    "emsp:2003 ensp:2002 epsilon:3b5 equiv:2261 eta:3b7 eth:f0 euml:eb euro:20ac exist:2203 " +
    "fnof:192 forall:2200 frac12:bd frac14:bc frac34:be frasl:2044 gamma:3b3 ge:2265 gt:3e " +
    "hArr:21d4 harr:2194 hearts:2665 hellip:2026 iacute:ed icirc:ee iexcl:a1 igrave:ec " +
    "image:2111 infin:221e int:222b iota:3b9 iquest:bf isin:2208 iuml:ef kappa:3ba lArr:21d0 " +
    "lambda:3bb lang:27e8 laquo:ab larr:2190 lceil:2308 ldquo:201c le:2264 lfloor:230a " +
    "lowast:2217 loz:25ca lrm:200e lsaquo:2039 lsquo:2018 lt:3c macr:af mdash:2014 micro:b5 " +
    "middot:b7 minus:2212 mu:3bc nabla:2207 nbsp:a0 ndash:2013 ne:2260 ni:220b not:ac " +
    "notin:2209 nsub:2284 ntilde:f1 nu:3bd oacute:f3 ocirc:f4 oelig:153 ograve:f2 oline:203e " +
    "omega:3c9 omicron:3bf oplus:2295 or:2228 ordf:aa ordm:ba oslash:f8 otilde:f5 otimes:2297 " +
    "ouml:f6 para:b6 part:2202 permil:2030 perp:22a5 phi:3c6 pi:3c0 piv:3d6 plusmn:b1 pound:a3 " +
    "prime:2032 prod:220f prop:221d psi:3c8 quot:22 rArr:21d2 radic:221a rang:27e9 raquo:bb " +
    "rarr:2192 rceil:2309 rdquo:201d real:211c reg:ae rfloor:230b rho:3c1 rlm:200f rsaquo:203a " +
    "rsquo:2019 sbquo:201a scaron:161 sdot:22c5 sect:a7 shy:ad sigma:3c3 sigmaf:3c2 sim:223c " +
    "spades:2660 sub:2282 sube:2286 sum:2211 sup:2283 sup1:b9 sup2:b2 sup3:b3 supe:2287 " +
    "szlig:df tau:3c4 there4:2234 theta:3b8 thetasym:3d1 thinsp:2009 thorn:fe tilde:2dc " +
    "times:d7 trade:2122 uArr:21d1 uacute:fa uarr:2191 ucirc:fb ugrave:f9 uml:a8 upsih:3d2 " +
    "upsilon:3c5 uuml:fc weierp:2118 xi:3be yacute:fd yen:a5 yuml:ff zeta:3b6 zwj:200d " +
    "zwnj:200c apos:27 AMP:26 COPY:a9 GT:3e LT:3c QUOT:22 REG:ae")
    .split(" ").map((e) => {
      const [name, hex] = e.split(":");
      return [name, String.fromCodePoint(parseInt(hex, 16))];
    }),
);
/** Names HTML5 also decodes without a semicolon (`&amp`, `&eacute`): Latin-1 and six capitals. */
const LEGACY_ENTITIES = new Set(
  [...HTML_ENTITIES].filter(([name, ch]) =>
    ch.codePointAt(0)! < 0x100 && name !== "apos" || /^[A-Z]+$/.test(name) && name.length > 2
  ).map(([name]) => name),
);

/** Numeric references Python's `html.unescape` decodes to nothing. */
function invalidCodepoint(n: number): boolean {
  return (n >= 0x1 && n <= 0x8) || n === 0xb || (n >= 0xe && n <= 0x1f) ||
    (n >= 0x7f && n <= 0x9f) || (n >= 0xfdd0 && n <= 0xfdef) || (n & 0xfffe) === 0xfffe;
}

function numericReference(ref: string): string {
  const hex = ref[1] === "x" || ref[1] === "X";
  const num = parseInt(ref.slice(hex ? 2 : 1).replace(/;$/, ""), hex ? 16 : 10);
  if (num === 0) return "\ufffd";
  if (num === 0x0d) return "\r";
  if (num >= 0x80 && num <= 0x9f) return String.fromCodePoint(CP1252_C1[num - 0x80]);
  if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff) return "\ufffd";
  if (invalidCodepoint(num)) return "";
  return String.fromCodePoint(num);
}

const CHARREF = /&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/gu;

/**
 * Python's `html.unescape`: numeric references (with its replacements for invalid ones) and named
 * entities, including the semicolon-less legacy names and their longest-prefix rule (`&ampx` →
 * `&x`). Named entities cover HTML 4; HTML5-only names are left as written.
 *
 * @example
 * ```ts
 * htmlUnescape("caf&eacute; &lt;3 &#x1F600;"); // "café <3 😀"
 * ```
 */
export function htmlUnescape(text: string): string {
  if (!text.includes("&")) return text;
  return text.replace(CHARREF, (whole, ref: string) => {
    if (ref[0] === "#") return numericReference(ref);
    const name = ref.endsWith(";") ? ref.slice(0, -1) : ref;
    if (ref.endsWith(";") && HTML_ENTITIES.has(name)) return HTML_ENTITIES.get(name)!;
    if (LEGACY_ENTITIES.has(ref)) return HTML_ENTITIES.get(ref)!;
    const chars = Array.from(ref);
    for (let x = chars.length - 1; x > 1; x--) {
      const prefix = chars.slice(0, x).join("");
      if (LEGACY_ENTITIES.has(prefix)) return HTML_ENTITIES.get(prefix)! + chars.slice(x).join("");
    }
    return whole;
  });
}

const LIGATURES: Record<string, string> = {
  "Ĳ": "IJ",
  "ĳ": "ij",
  "ŉ": "ʼn",
  "Ǳ": "DZ",
  "ǲ": "Dz",
  "ǳ": "dz",
  "Ǆ": "DŽ",
  "ǅ": "Dž",
  "ǆ": "dž",
  "Ǉ": "LJ",
  "ǈ": "Lj",
  "ǉ": "lj",
  "Ǌ": "NJ",
  "ǋ": "Nj",
  "ǌ": "nj",
  "ﬀ": "ff",
  "ﬁ": "fi",
  "ﬂ": "fl",
  "ﬃ": "ffi",
  "ﬄ": "ffl",
  "ﬅ": "ſt",
  "ﬆ": "st",
};
const LIGATURE_RE = new RegExp(`[${Object.keys(LIGATURES).join("")}]`, "g");
// ftfy: control characters that are removed (whitespace-producing ones and C1 are kept).
// deno-lint-ignore no-control-regex
const CONTROL_RE = /[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g;
// deno-lint-ignore no-control-regex
const ANSI_RE = /\x1b\[((?:\d|;)*)([a-zA-Z])/g;
const ENTITY_RE = /&#?[0-9A-Za-z]{1,24};/g;

/** One pass of ftfy's fixes (`fix_and_explain` without mojibake repair). */
function ftfyPass(text: string, unescape: boolean): string {
  if (unescape) {
    // ftfy decodes only complete references, and a numeric one only when it is all consumed.
    text = text.replace(ENTITY_RE, (ref) => {
      if (HTML_ENTITIES.has(ref.slice(1, -1))) return HTML_ENTITIES.get(ref.slice(1, -1))!;
      if (!ref.startsWith("&#")) return ref;
      const out = htmlUnescape(ref);
      return out.includes(";") ? ref : out;
    });
  }
  text = text.replace(
    /[\x80-\x9f]/g,
    (c) => String.fromCodePoint(CP1252_C1[c.charCodeAt(0) - 0x80]),
  );
  text = text.replace(LIGATURE_RE, (c) => LIGATURES[c]);
  // Full-width and half-width forms to their usual width; the ideographic space to a space.
  text = text.replace(/[\uff01-\uffef\u3000]/g, (c) => c === "\u3000" ? " " : c.normalize("NFKC"));
  text = text.replace(/[\u201c-\u201f]/g, '"').replace(/[\u02bc\u2018-\u201b]/g, "'");
  text = text.replace(/\r\n/g, "\n").replace(/[\r\u2028\u2029\x85]/g, "\n");
  text = text.replace(
    /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g,
    "\ufffd",
  );
  text = text.replace(ANSI_RE, "").replace(CONTROL_RE, "");
  return text.normalize("NFC");
}

/**
 * The fixes `ftfy.fix_text` applies to text that is not mojibake (module doc), line by line,
 * repeated until nothing changes. As in ftfy, HTML entities are decoded only until a line holding
 * `<` is met (it may be markup).
 *
 * @example
 * ```ts
 * fixText("“ﬁne” ＴＥＸＴ"); // "\"fine\" TEXT"
 * ```
 */
export function fixText(text: string): string {
  let unescape = true;
  let out = "";
  for (const segment of text.match(/[^\n]*\n|[^\n]+$/g) ?? []) {
    if (segment.includes("<")) unescape = false;
    let fixed = segment;
    for (;;) {
      const next = ftfyPass(fixed, unescape);
      if (next === fixed) break;
      fixed = next;
    }
    out += fixed;
  }
  return out;
}

/**
 * open_clip's text cleaning: `ftfy.fix_text` ({@link fixText}), `html.unescape` twice, strip,
 * whitespace runs to single spaces; `lowercase` for the CLIP tokenizer ("lower" clean), not for
 * `HFTokenizer` ("whitespace" clean).
 *
 * @example
 * ```ts
 * cleanText("  An  &amp;lt;image&amp;gt;\n", { lowercase: true }); // "an <image>"
 * ```
 */
export function cleanText(text: string, { lowercase = false } = {}): string {
  const unescaped = htmlUnescape(htmlUnescape(fixText(text)));
  const spaced = unescaped.split(PY_SPACE_RUN).filter((w) => w !== "").join(" ");
  return lowercase ? spaced.toLowerCase() : spaced;
}

// ---------------------------------------------------------------------------------------------
// The tokenizer value

/** A tokenizer: text to rows of token ids, as open_clip's tokenizers return them. */
export interface Tokenizer {
  /** `bpe`: CLIP byte-level BPE; `wordpiece`: BERT WordPiece. */
  readonly kind: "bpe" | "wordpiece";
  /** Length of every row {@link Tokenizer.tokenize} returns (77 for CLIP, 256 for BiomedCLIP). */
  readonly contextLength: number;
  /** One more than the largest token id. */
  readonly vocabSize: number;
  /** The start token (`<start_of_text>` / `[CLS]`). */
  readonly startId: number;
  /** The end token (`<end_of_text>` / `[SEP]`). */
  readonly endId: number;
  /** Padding (0 for CLIP, `[PAD]` for BERT). */
  readonly padId: number;
  /** The file(s) the vocabulary came from. */
  readonly source: string;
  /** The ids of one text's tokens, without start/end tokens, truncation or padding. */
  encode(text: string): number[];
  /** One row per text: start, ids, end; truncated (keeping the end token) and padded. */
  tokenize(texts: string[]): number[][];
}

/** Settings shared by the tokenizer constructors. */
export interface TokenizerOptions {
  /** Row length; defaults to 77 (BPE) or 256 (WordPiece). */
  contextLength?: number;
  /** Names the source in errors and in `source`. */
  source?: string;
}

function checkContextLength(source: string, n: number): number {
  if (!Number.isInteger(n) || n < 2) {
    throw new Error(`${source}: context length ${n} must be an integer ≥ 2 (start + end token)`);
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// CLIP byte-level BPE

/** GPT-2's byte encoder: the printable bytes map to themselves, the rest to U+0100 onwards. */
function bytesToUnicode(): { order: number[]; chars: string[] } {
  const order: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) order.push(b);
  for (let b = 0xa1; b <= 0xac; b++) order.push(b);
  for (let b = 0xae; b <= 0xff; b++) order.push(b);
  const codes = [...order];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!order.includes(b)) {
      order.push(b);
      codes.push(256 + n++);
    }
  }
  const chars = new Array<string>(256);
  order.forEach((b, i) => chars[b] = String.fromCharCode(codes[i]));
  return { order, chars };
}
const BYTE_ENCODER = bytesToUnicode();

// Python `regex`'s \s (White_Space), for the split pattern's `[^\s\p{L}\p{N}]`.
const RE_SPACE =
  "\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/** A CLIP BPE vocabulary: token → id, the merges in rank order, and the special tokens. */
export interface BpeVocabulary {
  vocab: Map<string, number>;
  merges: [string, string][];
  /** `<start_of_text>` (open_clip) or `<|startoftext|>` (Hugging Face). */
  startToken: string;
  endToken: string;
  /** Used for a piece missing from `vocab` (Hugging Face's `<|endoftext|>`); else an error. */
  unkToken?: string;
}

/**
 * CLIP's byte-level BPE tokenizer over a vocabulary (module doc).
 *
 * @example
 * ```ts
 * const vocab = bpeVocabularyFromMerges("#version: 0.2\np h\nph o\npho t\nphot o</w>\n");
 * const tok = createBpeTokenizer(vocab, { contextLength: 8 });
 * tok.tokenize(["a photo"]); // [[517, 320, 515, 518, 0, 0, 0, 0]]: start, "a", "photo", end, padding
 * ```
 */
export function createBpeTokenizer(v: BpeVocabulary, options: TokenizerOptions = {}): Tokenizer {
  const source = options.source ?? "<bpe vocabulary>";
  const contextLength = checkContextLength(source, options.contextLength ?? 77);
  const idOf = (token: string, what: string): number => {
    const id = v.vocab.get(token);
    if (id === undefined) throw new Error(`${source}: the vocabulary has no ${what} "${token}"`);
    return id;
  };
  const startId = idOf(v.startToken, "start token");
  const endId = idOf(v.endToken, "end token");
  const unkId = v.unkToken === undefined ? undefined : idOf(v.unkToken, "unknown token");
  const ranks = new Map<string, number>();
  v.merges.forEach(([a, b], i) => {
    const key = `${a} ${b}`;
    if (!ranks.has(key)) ranks.set(key, i);
  });
  const specials = [v.startToken, v.endToken];
  const cache = new Map<string, string[]>(specials.map((s) => [s, [s]]));
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const pattern = new RegExp(
    `${specials.map(escape).join("|")}|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|` +
      `[^${RE_SPACE}\\p{L}\\p{N}]+`,
    "gu",
  );
  const utf8 = new globalThis.TextEncoder();
  let vocabSize = 0;
  for (const id of v.vocab.values()) vocabSize = Math.max(vocabSize, id + 1);

  /** open_clip's `SimpleTokenizer.bpe`: merge the lowest-ranked pair until none applies. */
  const bpe = (token: string): string[] => {
    const hit = cache.get(token);
    if (hit) return hit;
    let word = [...token];
    word[word.length - 1] += "</w>";
    while (word.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < word.length; i++) {
        const r = ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const first = word[best], second = word[best + 1];
      const merged: string[] = [];
      for (let i = 0; i < word.length;) {
        if (word[i] === first && i + 1 < word.length && word[i + 1] === second) {
          merged.push(first + second);
          i += 2;
        } else {
          merged.push(word[i++]);
        }
      }
      word = merged;
    }
    cache.set(token, word);
    return word;
  };

  const encode = (text: string): number[] => {
    const ids: number[] = [];
    for (const [piece] of cleanText(text, { lowercase: true }).matchAll(pattern)) {
      let encoded = "";
      for (const byte of utf8.encode(piece)) encoded += BYTE_ENCODER.chars[byte];
      for (const token of bpe(specials.includes(piece) ? piece : encoded)) {
        const id = v.vocab.get(token) ?? unkId;
        if (id === undefined) {
          throw new Error(`${source}: BPE piece "${token}" of "${piece}" is not in the vocabulary`);
        }
        ids.push(id);
      }
    }
    return ids;
  };

  return {
    kind: "bpe",
    contextLength,
    vocabSize,
    startId,
    endId,
    padId: 0,
    source,
    encode,
    tokenize(texts) {
      return texts.map((text) => {
        const ids = [startId, ...encode(text), endId];
        if (ids.length > contextLength) {
          ids.length = contextLength;
          ids[contextLength - 1] = endId;
        }
        while (ids.length < contextLength) ids.push(0);
        return ids;
      });
    },
  };
}

/**
 * open_clip's vocabulary from `bpe_simple_vocab_16e6.txt.gz`'s text (its merge list).
 *
 * @example
 * ```ts
 * const text = await Deno.readTextFile("tests/fixtures/text_tiny/openai/merges.txt");
 * const tok = createBpeTokenizer(bpeVocabularyFromMerges(text)); // ids as open_clip's
 * tok.tokenize(["this is an image"])[0].length; // 77
 * ```
 */
export function bpeVocabularyFromMerges(text: string): BpeVocabulary {
  // open_clip: merges = lines[1 : 49152 − 256 − 2 + 1]; vocab = bytes, bytes + </w>, merges, specials.
  // A blank line (a short file's final newline) still takes a vocabulary slot there, as "".
  const lines = text.split("\n").slice(1, 49152 - 256 - 2 + 1);
  const merges = lines.filter((l) => l.trim() !== "").map(parseMerge);
  const tokens = BYTE_ENCODER.order.map((b) => BYTE_ENCODER.chars[b]);
  const vocabList = [
    ...tokens,
    ...tokens.map((t) => `${t}</w>`),
    ...lines.map((l) => l.trim() === "" ? "" : parseMerge(l).join("")),
  ];
  vocabList.push("<start_of_text>", "<end_of_text>");
  return {
    vocab: new Map(vocabList.map((t, i) => [t, i])),
    merges,
    startToken: "<start_of_text>",
    endToken: "<end_of_text>",
  };
}

function parseMerge(line: string): [string, string] {
  const parts = line.trim().split(/ +/);
  if (parts.length !== 2) throw new Error(`merge "${line}" is not two tokens separated by a space`);
  return [parts[0], parts[1]];
}

// ---------------------------------------------------------------------------------------------
// BERT WordPiece

/** A WordPiece vocabulary and the BasicTokenizer settings. */
export interface WordPieceVocabulary {
  vocab: Map<string, number>;
  /** Lower-case (uncased vocabularies: PubMedBERT). Default true. */
  lowercase?: boolean;
  /** Strip accents; defaults to `lowercase` (as BERT's `strip_accents=None`). */
  stripAccents?: boolean;
  /** Space out CJK ideographs. Default true. */
  chineseChars?: boolean;
  unkToken?: string;
  clsToken?: string;
  sepToken?: string;
  padToken?: string;
  /** Tokens kept whole when written in the text. Default: the five BERT specials present. */
  specialTokens?: string[];
  /** Longer words are `[UNK]`. Default 100. */
  maxCharsPerWord?: number;
  /** Continuation prefix. Default `##`. */
  prefix?: string;
}

const PUNCT_RE = /^\p{P}$/u;
const CONTROL_CHAR_RE = /^\p{C}$/u;
const ZS_RE = /^\p{Zs}$/u;

function isPunctuation(c: string): boolean {
  const cp = c.codePointAt(0)!;
  return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
    (cp >= 123 && cp <= 126) || PUNCT_RE.test(c);
}

function isCjk(cp: number): boolean {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) || (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

/** BERT's BasicTokenizer (transformers `BasicTokenizer.tokenize`). */
function basicTokenize(
  text: string,
  opts: { lowercase: boolean; stripAccents: boolean; chineseChars: boolean },
): string[] {
  let cleaned = "";
  for (const c of text) {
    const cp = c.codePointAt(0)!;
    if (cp === 0 || cp === 0xfffd) continue;
    if (c === " " || c === "\t" || c === "\n" || c === "\r" || ZS_RE.test(c)) cleaned += " ";
    else if (CONTROL_CHAR_RE.test(c)) continue;
    else if (opts.chineseChars && isCjk(cp)) cleaned += ` ${c} `;
    else cleaned += c;
  }
  const out: string[] = [];
  for (let word of cleaned.normalize("NFC").split(PY_SPACE_RUN)) {
    if (word === "") continue;
    if (opts.lowercase) word = word.toLowerCase();
    if (opts.stripAccents) word = word.normalize("NFD").replace(/\p{Mn}/gu, "");
    let current = "";
    for (const c of word) {
      if (isPunctuation(c)) {
        if (current) out.push(current);
        out.push(c);
        current = "";
      } else current += c;
    }
    if (current) out.push(current);
  }
  // Accent stripping can leave only whitespace behind; re-split as BERT does.
  return out.flatMap((w) => w.split(PY_SPACE_RUN)).filter((w) => w !== "");
}

/**
 * BERT WordPiece tokenizer over a `vocab.txt` vocabulary (module doc); rows are
 * `[CLS] … [SEP] [PAD]…` as open_clip's `HFTokenizer` returns them.
 *
 * @example
 * ```ts
 * const words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "macular", "hole"];
 * const vocab = new Map(words.map((w, i) => [w, i]));
 * const tok = createWordPieceTokenizer({ vocab }, { contextLength: 8 });
 * tok.tokenize(["Macular hole"])[0]; // [2, 5, 6, 3, 0, 0, 0, 0]: [CLS], macular, hole, [SEP], [PAD]…
 * ```
 */
export function createWordPieceTokenizer(
  v: WordPieceVocabulary,
  options: TokenizerOptions = {},
): Tokenizer {
  const source = options.source ?? "<wordpiece vocabulary>";
  const contextLength = checkContextLength(source, options.contextLength ?? 256);
  const lowercase = v.lowercase ?? true;
  const opts = {
    lowercase,
    stripAccents: v.stripAccents ?? lowercase,
    chineseChars: v.chineseChars ?? true,
  };
  const prefix = v.prefix ?? "##";
  const maxChars = v.maxCharsPerWord ?? 100;
  const idOf = (token: string, what: string): number => {
    const id = v.vocab.get(token);
    if (id === undefined) {
      throw new Error(
        `${source}: the vocabulary has no ${what} "${token}"; is it a BERT vocab.txt?`,
      );
    }
    return id;
  };
  const unk = v.unkToken ?? "[UNK]";
  const unkId = idOf(unk, "unknown token");
  const startId = idOf(v.clsToken ?? "[CLS]", "start token");
  const endId = idOf(v.sepToken ?? "[SEP]", "end token");
  const padId = idOf(v.padToken ?? "[PAD]", "padding token");
  const specials = (v.specialTokens ?? ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    .filter((t) => v.vocab.has(t));
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const specialRe = specials.length > 0
    ? new RegExp(`(${specials.map(escape).join("|")})`, "u")
    : undefined;
  let vocabSize = 0;
  for (const id of v.vocab.values()) vocabSize = Math.max(vocabSize, id + 1);

  const wordPiece = (word: string, ids: number[]): void => {
    const chars = Array.from(word);
    if (chars.length > maxChars) {
      ids.push(unkId);
      return;
    }
    const pieces: number[] = [];
    for (let start = 0; start < chars.length;) {
      let end = chars.length;
      let found: number | undefined;
      while (start < end) {
        const sub = (start > 0 ? prefix : "") + chars.slice(start, end).join("");
        found = v.vocab.get(sub);
        if (found !== undefined) break;
        end--;
      }
      if (found === undefined) {
        ids.push(unkId);
        return;
      }
      pieces.push(found);
      start = end;
    }
    ids.push(...pieces);
  };

  const encode = (text: string): number[] => {
    const ids: number[] = [];
    const parts = specialRe ? cleanText(text).split(specialRe) : [cleanText(text)];
    parts.forEach((part, i) => {
      if (i % 2 === 1) ids.push(v.vocab.get(part)!);
      else for (const word of basicTokenize(part, opts)) wordPiece(word, ids);
    });
    return ids;
  };

  return {
    kind: "wordpiece",
    contextLength,
    vocabSize,
    startId,
    endId,
    padId,
    source,
    encode,
    tokenize(texts) {
      return texts.map((text) => {
        const ids = [startId, ...encode(text).slice(0, contextLength - 2), endId];
        while (ids.length < contextLength) ids.push(padId);
        return ids;
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Files

/** Tokenizer files, in the order they are looked for in a folder. */
export const TOKENIZER_FILES = {
  bpe: ["tokenizer.json", "vocab.json + merges.txt", "bpe_simple_vocab_16e6.txt.gz"],
  wordpiece: ["tokenizer.json", "vocab.txt"],
} as const;

/**
 * Largest text a gzip-compressed vocabulary (`*.txt.gz`) may inflate to: open_clip's
 * `bpe_simple_vocab_16e6.txt.gz` is about 1.3 MB compressed and 1.6 MB inflated, so 64 MiB is
 * generous, and a small hostile file (a "decompression bomb") stops there instead of exhausting
 * memory.
 */
export const MAX_GZIP_TEXT_BYTES = 64 * 1024 ** 2;

class GzipLimitError extends Error {}

/** Inflates a gzip file piece by piece, stopping once its output passes `cap` bytes. */
async function gunzipBounded(path: string, cap: number): Promise<Uint8Array> {
  const compressed = await Deno.readFile(path);
  // Deflate cannot make text much larger than itself: a file bigger than the cap inflates past it.
  if (compressed.length > cap) {
    throw new GzipLimitError(
      `${path}: ${compressed.length} compressed bytes, more than the ${cap}-byte limit ` +
        `(MAX_GZIP_TEXT_BYTES) of a gzip-compressed vocabulary; is this a tokenizer file?`,
    );
  }
  const pieces: Uint8Array[] = [];
  try {
    inflateBounded(compressed, "gzip", cap, (piece) => pieces.push(piece.slice()));
  } catch (err) {
    if (!(err instanceof InflateLimitError)) throw err;
    throw new GzipLimitError(
      `${path}: inflates to more than ${cap} bytes (${cap / 1024 ** 2} MiB, the limit ` +
        `MAX_GZIP_TEXT_BYTES of a gzip-compressed vocabulary; open_clip's ` +
        `bpe_simple_vocab_16e6.txt.gz inflates to 1.6 MB); the file is corrupt or hostile ` +
        `(a decompression bomb)`,
    );
  }
  return concatBytes(pieces);
}

async function readText(path: string): Promise<string> {
  try {
    if (path.endsWith(".gz")) {
      return new TextDecoder().decode(await gunzipBounded(path, MAX_GZIP_TEXT_BYTES));
    }
    return await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof GzipLimitError) throw new Error(err.message);
    throw new Error(`${path}: cannot read (${(err as Error).message})`);
  }
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  const text = await readText(path);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: not valid JSON (${(err as Error).message})`);
  }
  if (!json || typeof json !== "object" || Array.isArray(json)) {
    throw new Error(`${path}: expected a JSON object, got ${describe(json)}`);
  }
  return json as Record<string, unknown>;
}

/** A JSON value for a message: its type, and the value itself when it is short. */
function describe(value: unknown): string {
  if (value === undefined) return "missing";
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  const text = JSON.stringify(value) ?? String(value);
  return `${typeof value} ${text.length > 40 ? `${text.slice(0, 40)}…` : text}`;
}

/** A token id: an integer ≥ 0 (safe, so that `id + 1` is exact). */
function isTokenId(id: unknown): id is number {
  return Number.isSafeInteger(id) && (id as number) >= 0;
}

function vocabMap(path: string, raw: unknown): Map<string, number> {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    throw new Error(`${path}: the vocabulary must be a JSON object of token → id`);
  }
  const map = new Map<string, number>();
  for (const [token, id] of Object.entries(raw as Record<string, unknown>)) {
    if (!isTokenId(id)) {
      throw new Error(`${path}: token "${token}" has id ${id}; ids must be integers ≥ 0`);
    }
    map.set(token, id);
  }
  return map;
}

/** `tokenizer.json`'s `added_tokens`: each `{ content: string, id: integer ≥ 0 }`. */
function addedTokens(path: string, raw: unknown): { content: string; id: number }[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) {
    throw new Error(`${path}: added_tokens is ${describe(raw)}; expected an array of tokens`);
  }
  return raw.map((t: unknown, i) => {
    if (!t || typeof t !== "object" || Array.isArray(t)) {
      throw new Error(
        `${path}: added_tokens[${i}] is ${describe(t)}; expected an object { content, id }`,
      );
    }
    const { content, id } = t as Record<string, unknown>;
    if (typeof content !== "string" || content === "") {
      throw new Error(
        `${path}: added_tokens[${i}].content is ${describe(content)}; expected a non-empty string`,
      );
    }
    if (!isTokenId(id)) {
      throw new Error(
        `${path}: added_tokens[${i}].id (token "${content}") is ${describe(id)}; ids must be ` +
          `integers ≥ 0`,
      );
    }
    return { content, id };
  });
}

/** `tokenizer.json`'s `model.merges`: `"a b"` strings or `["a", "b"]` pairs, in rank order. */
function mergeList(path: string, raw: unknown): [string, string][] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) {
    throw new Error(
      `${path}: model.merges is ${describe(raw)}; expected an array of "a b" strings or ` +
        `["a", "b"] pairs`,
    );
  }
  return raw.map((m: unknown, i) => {
    if (typeof m === "string") {
      try {
        return parseMerge(m);
      } catch (err) {
        throw new Error(`${path}: model.merges[${i}]: ${(err as Error).message}`);
      }
    }
    if (
      Array.isArray(m) && m.length === 2 && typeof m[0] === "string" && m[0] !== "" &&
      typeof m[1] === "string" && m[1] !== ""
    ) {
      return [m[0], m[1]] as [string, string];
    }
    throw new Error(
      `${path}: model.merges[${i}] is ${
        Array.isArray(m) ? JSON.stringify(m).slice(0, 60) : describe(m)
      }; expected an "a b" string or a pair of non-empty strings ["a", "b"]`,
    );
  });
}

function pickSpecial(vocab: Map<string, number>, names: string[], path: string, what: string) {
  const found = names.find((n) => vocab.has(n));
  if (!found) {
    throw new Error(
      `${path}: no ${what} token (looked for ${names.join(", ")}); is this a CLIP vocabulary?`,
    );
  }
  return found;
}

const START_NAMES = ["<|startoftext|>", "<start_of_text>"];
const END_NAMES = ["<|endoftext|>", "<end_of_text>"];

async function readBpeFiles(vocabPath: string, mergesPath: string): Promise<BpeVocabulary> {
  const vocab = vocabMap(vocabPath, await readJson(vocabPath));
  const lines = (await readText(mergesPath)).split("\n");
  // Hugging Face's merges.txt starts with a "#version" line; CLIP uses at most 48,894 merges.
  const body = lines[0]?.startsWith("#version") ? lines.slice(1) : lines;
  const merges = body.filter((l) => l.trim() !== "").slice(0, 49152 - 256 - 2).map((l, i) => {
    try {
      return parseMerge(l);
    } catch (err) {
      throw new Error(`${mergesPath}: line ${i + 2}: ${(err as Error).message}`);
    }
  });
  const startToken = pickSpecial(vocab, START_NAMES, vocabPath, "start");
  const endToken = pickSpecial(vocab, END_NAMES, vocabPath, "end");
  return { vocab, merges, startToken, endToken, unkToken: endToken };
}

async function readVocabTxt(path: string): Promise<WordPieceVocabulary> {
  const lines = (await readText(path)).split("\n");
  if (lines.at(-1) === "") lines.pop();
  const vocab = new Map<string, number>();
  lines.forEach((line, i) => {
    const token = line.replace(/\r$/, "");
    if (!vocab.has(token)) vocab.set(token, i);
  });
  const v: WordPieceVocabulary = { vocab };
  const configPath = join(dirname(path), "tokenizer_config.json");
  if (await pathExists(configPath, { kind: "file" })) {
    const cfg = await readJson(configPath);
    if (typeof cfg.do_lower_case === "boolean") v.lowercase = cfg.do_lower_case;
    if (typeof cfg.strip_accents === "boolean") v.stripAccents = cfg.strip_accents;
    if (typeof cfg.tokenize_chinese_chars === "boolean") {
      v.chineseChars = cfg.tokenize_chinese_chars;
    }
    for (const key of ["unk", "cls", "sep", "pad"] as const) {
      const t = cfg[`${key}_token`];
      if (typeof t === "string") v[`${key}Token`] = t;
    }
  }
  return v;
}

function findNormalizer(n: unknown, type: string): Record<string, unknown> | undefined {
  if (!n || typeof n !== "object") return undefined;
  const obj = n as Record<string, unknown>;
  if (obj.type === type) return obj;
  if (Array.isArray(obj.normalizers)) {
    for (const inner of obj.normalizers) {
      const found = findNormalizer(inner, type);
      if (found) return found;
    }
  }
  return undefined;
}

/** A Hugging Face `tokenizer.json`: a CLIP BPE or a BERT WordPiece model. */
async function readTokenizerJson(
  path: string,
  options: TokenizerOptions,
): Promise<Tokenizer> {
  const json = await readJson(path);
  const rawModel = json.model ?? {};
  if (typeof rawModel !== "object" || Array.isArray(rawModel)) {
    throw new Error(`${path}: model is ${describe(rawModel)}; expected an object`);
  }
  const model = rawModel as Record<string, unknown>;
  const added = addedTokens(path, json.added_tokens);
  const vocab = vocabMap(path, model.vocab);
  for (const t of added) if (!vocab.has(t.content)) vocab.set(t.content, t.id);
  if (model.type === "BPE") {
    if (model.end_of_word_suffix !== "</w>") {
      throw new Error(
        `${path}: a BPE tokenizer without the "</w>" end-of-word suffix is not CLIP's (GPT-2 style BPE is not supported)`,
      );
    }
    const merges = mergeList(path, model.merges);
    const startToken = pickSpecial(vocab, START_NAMES, path, "start");
    const endToken = pickSpecial(vocab, END_NAMES, path, "end");
    return createBpeTokenizer(
      { vocab, merges, startToken, endToken, unkToken: endToken },
      { ...options, source: path },
    );
  }
  if (model.type === "WordPiece") {
    const bert = findNormalizer(json.normalizer, "BertNormalizer");
    const lowercase = bert ? bert.lowercase !== false : true;
    const strip = bert?.strip_accents;
    return createWordPieceTokenizer({
      vocab,
      lowercase,
      stripAccents: typeof strip === "boolean" ? strip : lowercase,
      chineseChars: bert ? bert.handle_chinese_chars !== false : true,
      unkToken: typeof model.unk_token === "string" ? model.unk_token : undefined,
      prefix: typeof model.continuing_subword_prefix === "string"
        ? model.continuing_subword_prefix
        : undefined,
      maxCharsPerWord: typeof model.max_input_chars_per_word === "number"
        ? model.max_input_chars_per_word
        : undefined,
      specialTokens: added.map((t) => t.content),
    }, { ...options, source: path });
  }
  throw new Error(
    `${path}: tokenizer model type "${model.type}" is not supported; expected "BPE" (CLIP) or "WordPiece" (BERT)`,
  );
}

/**
 * Finds the tokenizer file(s) in a folder: for `kind` only the files of that kind, in the order
 * of {@link TOKENIZER_FILES}. Returns the path to give {@link loadTokenizer}, or undefined.
 *
 * @example
 * ```ts
 * const path = await findTokenizer("models/biomedclip", "wordpiece"); // ".../vocab.txt"
 * ```
 */
export async function findTokenizer(
  dir: string,
  kind?: Tokenizer["kind"],
): Promise<string | undefined> {
  const candidates = kind === "wordpiece"
    ? ["tokenizer.json", "vocab.txt"]
    : kind === "bpe"
    ? ["tokenizer.json", "vocab.json", "bpe_simple_vocab_16e6.txt.gz"]
    : ["tokenizer.json", "vocab.json", "vocab.txt", "bpe_simple_vocab_16e6.txt.gz"];
  for (const name of candidates) {
    const path = join(dir, name);
    if (!(await pathExists(path, { kind: "file" }))) continue;
    if (name === "vocab.json" && !(await pathExists(join(dir, "merges.txt"), { kind: "file" }))) {
      continue;
    }
    if (name === "tokenizer.json" && kind) {
      const type = ((await readJson(path)).model as Record<string, unknown> | undefined)?.type;
      if ((type === "BPE") !== (kind === "bpe")) continue;
    }
    return path;
  }
  return undefined;
}

/**
 * Loads a tokenizer from a file — `tokenizer.json`, `vocab.json` (with `merges.txt` beside it),
 * `merges.txt` (with `vocab.json`), `vocab.txt`, or open_clip's `*.txt.gz` — or from a folder
 * holding one of them.
 *
 * @example
 * ```ts
 * const tok = await loadTokenizer("tests/fixtures/text_tiny/openai/", { contextLength: 77 });
 * const rows = tok.tokenize(["this is an image of polyps"]);
 * rows[0].length; // 77
 * ```
 */
export async function loadTokenizer(
  path: string,
  options: TokenizerOptions & { kind?: Tokenizer["kind"] } = {},
): Promise<Tokenizer> {
  let file = path;
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch {
    throw new Error(`${path}: tokenizer path does not exist`);
  }
  if (stat.isDirectory) {
    const found = await findTokenizer(path, options.kind);
    if (!found) {
      const names = options.kind
        ? TOKENIZER_FILES[options.kind]
        : [...new Set([...TOKENIZER_FILES.bpe, ...TOKENIZER_FILES.wordpiece])];
      throw new Error(`${path}: no tokenizer in this folder; looked for ${names.join(", ")}`);
    }
    file = found;
  }
  const name = basename(file);
  const { kind, ...rest } = options;
  let tokenizer: Tokenizer;
  if (name.endsWith(".gz")) {
    tokenizer = createBpeTokenizer(bpeVocabularyFromMerges(await readText(file)), {
      ...rest,
      source: file,
    });
  } else if (name === "tokenizer.json" || (name.endsWith(".json") && name !== "vocab.json")) {
    tokenizer = await readTokenizerJson(file, rest);
  } else if (name === "vocab.json" || name === "merges.txt") {
    const dir = dirname(file);
    const vocab = join(dir, "vocab.json"), merges = join(dir, "merges.txt");
    for (const p of [vocab, merges]) {
      if (!(await pathExists(p, { kind: "file" }))) {
        throw new Error(`${p}: missing; a CLIP BPE needs vocab.json and merges.txt`);
      }
    }
    tokenizer = createBpeTokenizer(await readBpeFiles(vocab, merges), {
      ...rest,
      source: `${vocab} + merges.txt`,
    });
  } else if (name.endsWith(".txt")) {
    tokenizer = createWordPieceTokenizer(await readVocabTxt(file), { ...rest, source: file });
  } else {
    throw new Error(
      `${file}: not a tokenizer file; give tokenizer.json, vocab.json + merges.txt, vocab.txt or bpe_simple_vocab_16e6.txt.gz`,
    );
  }
  if (kind && tokenizer.kind !== kind) {
    throw new Error(
      `${tokenizer.source}: is a ${tokenizer.kind} tokenizer; this model needs ${
        kind === "bpe" ? "CLIP's BPE" : "BERT's WordPiece"
      }`,
    );
  }
  return tokenizer;
}
