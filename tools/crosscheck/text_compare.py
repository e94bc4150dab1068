"""Reference side of the text-tower cross-check (run text_compare.ts afterwards).

Builds randomly initialised full-size text towers in the three layouts the TypeScript loader
reads, perturbs every 1-D parameter (so norms and biases matter), saves them as .safetensors
with the PyTorch reference features of the same token ids:

* openai_b16.safetensors — open_clip.create_model("ViT-B-16") state_dict (image + text tower).
  References: encode_text with nn.GELU (as built) and with QuickGELU ("ViT-B-16-quickgelu"
  loaded with the same state_dict). Ids: open_clip's tokenizer on the prompts.
* hf_clip/ — transformers CLIPModel(CLIPConfig(default ViT-B text config, a small image tower))
  via save_pretrained. Reference: get_text_features(input_ids).pooler_output, same ids.
* biomedclip/ — open_clip.create_model from BiomedCLIP's model config (timm ViT-B/16 image tower,
  PubMedBERT-sized BERT text tower, hf_proj_type "mlp", hf_pooler_type
  "cls_last_hidden_state_pooler", context 256) with hf_model_pretrained=False. PubMedBERT's
  config and vocabulary cannot be downloaded, so hf_model_name / hf_tokenizer_name point to a
  local folder holding a BertConfig with PubMedBERT's sizes (vocab 30522, 768, 12 layers, 12
  heads, 512 positions) and a synthetic vocab.txt of 30522 entries (PubMedBERT's special-token
  ids, characters, the prompts' words and sub-words, then [unused] filler). Ids: open_clip's
  HFTokenizer (AutoTokenizer on that folder) on the prompts; reference: model.encode_text(ids).
* tokenize.json — open_clip's SimpleTokenizer (shipped bpe_simple_vocab_16e6.txt.gz) and the
  BERT tokenizers (transformers BertTokenizer, BertTokenizerLegacy, open_clip HFTokenizer) on a
  varied list of texts; hf_clip_tok/ holds the same BPE vocabulary as vocab.json + merges.txt and
  tokenizer.json, with Hugging Face CLIPTokenizer's ids for comparison.

The checkpoints are ~0.3–0.6 GB each: keep them out of the repository. Usage:

    python tools/crosscheck/text_compare.py [/tmp/deer_text_crosscheck]
    deno run -A tools/crosscheck/text_compare.ts [/tmp/deer_text_crosscheck]
"""
import gc
import json
import os
import sys
import time

import _setup
import torch
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "/tmp/deer_text_crosscheck"
ROOT = os.path.join(_setup.HERE, "..", "..")

TEXTS = [
    "this is an image of polyps",
    "This is an image of Diabetic macular edema.",
    "",
    "   lots\tof \n whitespace   ",
    "Punctuation!!! ... ?? (brackets) [sq] {curly} <angle> a-b_c/d\\e @#$%^&*~`|",
    "don't it's we're they've I'm you'll he'd DON'T IT'S o'clock rock'n'roll",
    "Numbers: 3.14159, 1,000,000, 2024-01-31, ½ ¾ x² ⁴ ٣ 五",
    "Café naïve résumé coöperate Ångström Ærø Straße İstanbul ΣΊΣΥΦΟΣ",
    "Combining: cafe\u0301 n\u0303 A\u030a (NFD input)",
    "emoji 😀🩺 👩‍⚕️ 🇺🇸 ❤️ 👍🏽 and 🧬",
    "中文医学图像 日本語のテキスト 한국어 텍스트",
    "Arabic: صورة طبية. Hindi: चिकित्सा छवि. Thai: ภาพทางการแพทย์",
    "HTML: &amp; &lt;tag&gt; &quot;q&quot; &#39;s &#x1F600; caf&eacute; &amp;amp;",
    "Curly “double” and ‘single’ quotes, ﬁne ﬂow ligatures, ＦＵＬＬ　ＷＩＤＴＨ",
    "Controls:\x07bell\x1b[31mred\x1b[0m zero\u200bwidth\ufeffbom soft\u00adhyphen",
    "mojibake: sÃ³ cafÃ© â€œquotedâ€\x9d",
    "<start_of_text> and <end_of_text> written in the text",
    "a " * 100,
    "Supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis " * 3,
    "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
    "Tabs\tand\r\nWindows\rline\u2028breaks\u2029here\x85there",
    "ＣＮＶ ＤＭＥ — en–dash … ellipsis • bullet",
]

DESCRIPTIONS = ["Age-related macular degeneration", "Choroidal neovascularization",
                "Central serous retinopathy", "Diabetic macular edema", "Diabetic retinopathy",
                "Choroidal drusen", "Macular hole", "Normal retina", "dyed lifted polyp",
                "dyed resection margin", "esophagitis", "cecum", "pylorus", "Z-line", "polyps",
                "ulcerative colitis"]
PROMPTS = [f"this is an image of {d}" for d in DESCRIPTIONS]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_bert_vocab(path):
    """A 30522-entry vocab.txt: PubMedBERT's special ids, characters, prompt words, filler."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()] + list("éèàçñøåæß中文日本")
    vocab += chars + ["##" + c for c in chars if c.isalnum()]
    words = set()
    for text in PROMPTS + TEXTS:
        for w in text.lower().replace("-", " ").split():
            w = "".join(c for c in w if c.isalnum())
            if w:
                words.add(w)
    for w in sorted(words):
        vocab.append(w)
        if len(w) > 5:  # also a prefix and continuation so that WordPiece splits words
            vocab += [w[:4], "##" + w[4:]]
    vocab += ["##ing", "##s", "##ed", "##al", "##ity", "macula", "retin", "##opathy", "polyp"]
    seen, unique = set(), []
    for t in vocab:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    unique += [f"[unused{i}]" for i in range(30522 - len(unique))]
    with open(path, "w") as f:
        f.write("".join(t + "\n" for t in unique))


def main():
    import open_clip
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
    from transformers import (BertConfig, BertTokenizer, BertTokenizerLegacy, CLIPConfig,
                              CLIPModel, CLIPTokenizer)

    os.makedirs(OUT, exist_ok=True)
    refs = {}
    simple = SimpleTokenizer()
    clip_ids = simple(PROMPTS + TEXTS[:6])  # [N, 77]
    refs["clip_ids"] = clip_ids

    log("open_clip ViT-B-16")
    refs.update(_setup.openai_b16_references(OUT, "encode_text", clip_ids))

    log("Hugging Face CLIPModel (ViT-B text tower)")
    torch.manual_seed(7)
    cfg = CLIPConfig(
        text_config=dict(),  # defaults: vocab 49408, 512 wide, 12 layers, 8 heads, 77 positions
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=16),
        projection_dim=512,
    )
    hf = CLIPModel(cfg).eval()
    _setup.perturb_vectors(hf, seed=17, scale=0.05)
    hf.save_pretrained(os.path.join(OUT, "hf_clip"), safe_serialization=True)
    with torch.no_grad():
        refs["hf"] = hf.get_text_features(input_ids=clip_ids).pooler_output
    log(f"  eos_token_id {hf.config.text_config.eos_token_id}")
    del hf
    gc.collect()

    log("BiomedCLIP-like model from BiomedCLIP's open_clip config (offline BERT config)")
    bert_dir = os.path.join(OUT, "pubmedbert_local")
    os.makedirs(bert_dir, exist_ok=True)
    BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
               intermediate_size=3072, max_position_embeddings=512, pad_token_id=0,
               hidden_act="gelu").save_pretrained(bert_dir)
    build_bert_vocab(os.path.join(bert_dir, "vocab.txt"))
    with open(os.path.join(bert_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": True}, f)
    model_cfg = {
        "embed_dim": 512,
        "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": bert_dir, "hf_tokenizer_name": bert_dir,
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": 256, "hf_model_pretrained": False},
    }
    torch.manual_seed(8)
    bio = open_clip.CustomTextCLIP(embed_dim=512, vision_cfg=model_cfg["vision_cfg"],
                                   text_cfg=model_cfg["text_cfg"]).eval()
    _setup.perturb_vectors(bio, seed=18, scale=0.05)
    folder = os.path.join(OUT, "biomedclip")
    os.makedirs(folder, exist_ok=True)
    save_file(_setup.contiguous_state(bio), os.path.join(folder, "open_clip_model.safetensors"))
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg}, f, indent=1)
    bert_tok = HFTokenizer(bert_dir, context_length=256)  # what open_clip.get_tokenizer builds
    bert_ids = bert_tok(PROMPTS + TEXTS[:6])
    g = torch.Generator().manual_seed(9)
    full = torch.cat([torch.tensor([2]), torch.randint(5, 30522, (254,), generator=g),
                      torch.tensor([3])])
    bert_ids = torch.cat([bert_ids, full[None]])  # one row without padding
    refs["bert_ids"] = bert_ids
    with torch.no_grad():
        refs["biomedclip"] = bio.encode_text(bert_ids)
    del bio
    gc.collect()

    log("tokenizers")
    tok_dir = os.path.join(OUT, "hf_clip_tok")
    os.makedirs(tok_dir, exist_ok=True)
    hf_names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    with open(os.path.join(tok_dir, "vocab.json"), "w") as f:
        json.dump({hf_names.get(t, t): i for t, i in simple.encoder.items()}, f,
                  ensure_ascii=False)
    with open(os.path.join(tok_dir, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in simple.bpe_ranks))
    hf_tok = CLIPTokenizer.from_pretrained(tok_dir)
    hf_tok.save_pretrained(os.path.join(tok_dir, "fast"))
    bert_fast = BertTokenizer.from_pretrained(bert_dir)
    bert_slow = BertTokenizerLegacy.from_pretrained(bert_dir)
    kw = dict(truncation=True, max_length=256, padding="max_length")
    out = {
        "gz": os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz"),
        "bert_vocab": os.path.join(bert_dir, "vocab.txt"),
        "bpe": [{"text": t, "open_clip": simple([t])[0].tolist(),
                 "hf": hf_tok(t, truncation=True, max_length=77)["input_ids"]} for t in TEXTS],
        "wordpiece": [{"text": t, "open_clip": bert_tok([t])[0].tolist(),
                       "transformers": bert_fast(t, **kw)["input_ids"],
                       "transformers_legacy": bert_slow(t, **kw)["input_ids"]} for t in TEXTS],
        "prompts": PROMPTS + TEXTS[:6],
    }
    with open(os.path.join(OUT, "tokenize.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False)
    save_file({k: v.float().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in refs.items()}, os.path.join(OUT, "inputs.safetensors"))
    log(f"done: {OUT}")


if __name__ == "__main__":
    main()
