"""Writes the tiny text-tower fixtures of tests/text_encoder.test.ts (tests/fixtures/text_tiny/).

Three randomly initialised tiny text towers (width 32, 2 blocks, 2 heads, MLP 64), one per
checkpoint layout, every 1-D parameter perturbed, with the PyTorch reference features (float64,
from the weights exactly as stored) of a few rows of token ids:

* openai/ — open_clip CLIP (tiny image tower + OpenAI-style text tower, context 16, exact GELU),
  full state_dict, F16; open_clip_config.json (heads, quick_gelu=false); vocab.json + merges.txt.
  Reference: model.encode_text(ids).
* hf/ — transformers CLIPTextModelWithProjection (QuickGELU, eos_token_id = the end token),
  save_pretrained in float16 (model.safetensors + config.json); tokenizer.json written by
  transformers' CLIPTokenizer from the same vocabulary. Reference: text_embeds.
* bert/ — open_clip HFTextEncoder around a transformers BertModel (positions 28), BiomedCLIP's
  pooler ("cls_last_hidden_state_pooler") and MLP projection 32→28→24; keys under "text." as in
  BiomedCLIP's checkpoint (the unused BERT pooler weights included, as in older BiomedCLIP
  files), BF16; heads in the metadata key "deer.text"; open_clip_config.json (pooler, context
  24); vocab.txt. Reference: HFTextEncoder(ids).
* references.safetensors — ids and reference features per layout.
* tokenize.json — the same vocabularies tokenized by transformers (CLIPTokenizer, BertTokenizer)
  and open_clip's HFTokenizer, for the tokenizer tests.

Usage (from the repository root):

    python tools/crosscheck/text_make_fixtures.py [out_dir]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import _setup
import torch
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    _setup.HERE, "..", "..", "tests", "fixtures", "text_tiny")
WIDTH, LAYERS, HEADS, MLP, EMBED = 32, 2, 2, 64, 24
CLIP_CONTEXT, BERT_POSITIONS, BERT_CONTEXT = 16, 28, 24

# A CLIP byte-level BPE vocabulary small enough for a fixture: the 26 letters (alone and with
# "</w>"), a few merges, then the two special tokens — the order open_clip builds its vocabulary in.
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
MERGES = [("i", "s</w>"), ("t", "h"), ("th", "is</w>"), ("o", "f</w>"), ("a", "n</w>"),
          ("i", "m"), ("a", "g"), ("im", "ag"), ("imag", "e</w>"), ("p", "o"), ("l", "y"),
          ("po", "ly"), ("poly", "p"), ("polyp", "s</w>")]
CLIP_VOCAB = LETTERS + [f"{c}</w>" for c in LETTERS] + ["".join(m) for m in MERGES] + [
    "<|startoftext|>", "<|endoftext|>"]
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "this", "is", "an", "image", "of",
              "macular", "hole", "retin", "##al", "##opathy", "cafe", "normal", "polyp", "##s",
              ",", ".", "-", "'", "(", ")", "a", "b", "c", "d", "e", "##a", "##b", "##c", "##d",
              "##e", "dr", "##usen", "choroid", "edema", "x", "##x", "1", "2", "##1", "##2",
              "中", "文", "naive", "resume", "[", "]", "!", "?", "&", "<", ">", "$", "/"]


def round_trip(model, dtype):
    """Rounds every floating tensor to `dtype` (as stored) and back to float32, in place."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(dtype).to(torch.float32))


def write_clip_vocab(folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(CLIP_VOCAB)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))


def clip_ids():
    """Rows of 16 ids: prompts as the tokenizer writes them, and random rows with an end token."""
    sot, eot = len(CLIP_VOCAB) - 2, len(CLIP_VOCAB) - 1
    rows = [[sot, 64, 51, 63, eot], [sot, 62, 65, eot], [sot, eot]]
    g = torch.Generator().manual_seed(3)
    for length in (9, 14):
        rows.append([sot] + torch.randint(0, sot, (length,), generator=g).tolist() + [eot])
    return torch.tensor([r + [0] * (CLIP_CONTEXT - len(r)) for r in rows], dtype=torch.long)


def openai_case(refs):
    import open_clip

    torch.manual_seed(1)
    model = open_clip.CLIP(
        embed_dim=EMBED,
        vision_cfg=dict(image_size=8, patch_size=4, width=8, layers=1, head_width=8, mlp_ratio=2),
        text_cfg=dict(context_length=CLIP_CONTEXT, vocab_size=len(CLIP_VOCAB), width=WIDTH,
                      heads=HEADS, layers=LAYERS, mlp_ratio=MLP / WIDTH),
        quick_gelu=False,
    ).eval()
    _setup.perturb_vectors(model, seed=21)
    round_trip(model, torch.float16)
    folder = os.path.join(OUT, "openai")
    write_clip_vocab(folder)
    state = {k: v.half() for k, v in _setup.contiguous_state(model).items()}
    save_file(state, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": {"embed_dim": EMBED, "quick_gelu": False,
                                 "text_cfg": {"context_length": CLIP_CONTEXT, "width": WIDTH,
                                              "heads": HEADS, "layers": LAYERS}}}, f, indent=1)
    ids = clip_ids()
    with torch.no_grad():
        refs["openai_ids"] = ids
        refs["openai_features"] = model.double().encode_text(ids)


def hf_case(refs):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(2)
    cfg = CLIPTextConfig(vocab_size=len(CLIP_VOCAB), hidden_size=WIDTH, intermediate_size=MLP,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         max_position_embeddings=CLIP_CONTEXT, projection_dim=EMBED,
                         hidden_act="quick_gelu", bos_token_id=len(CLIP_VOCAB) - 2,
                         eos_token_id=len(CLIP_VOCAB) - 1, pad_token_id=0)
    model = CLIPTextModelWithProjection(cfg).eval()
    _setup.perturb_vectors(model, seed=22)
    round_trip(model, torch.float16)
    folder = os.path.join(OUT, "hf")
    with tempfile.TemporaryDirectory() as tmp:
        model.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        os.makedirs(folder, exist_ok=True)
        for name in ("model.safetensors", "config.json"):
            shutil.copy(os.path.join(tmp, name), os.path.join(folder, name))
        write_clip_vocab(tmp)
        # transformers 5.x builds its (tokenizers-backed) CLIP tokenizer from the two files.
        tok = CLIPTokenizer.from_pretrained(tmp)
        tok_dir = os.path.join(tmp, "tok")
        tok.save_pretrained(tok_dir)
        shutil.copy(os.path.join(tok_dir, "tokenizer.json"), os.path.join(folder, "tokenizer.json"))
    ids = clip_ids()
    with torch.no_grad():
        refs["hf_ids"] = ids
        refs["hf_features"] = model.double()(input_ids=ids).text_embeds
    return tok


def bert_case(refs):
    from open_clip.hf_model import HFTextEncoder
    from transformers import BertConfig

    torch.manual_seed(3)
    cfg = BertConfig(vocab_size=len(BERT_VOCAB), hidden_size=WIDTH, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=MLP,
                     max_position_embeddings=BERT_POSITIONS, pad_token_id=0, hidden_act="gelu")
    model = HFTextEncoder("bert", EMBED, config=cfg, pooler_type="cls_last_hidden_state_pooler",
                          proj_type="mlp").eval()
    _setup.perturb_vectors(model, seed=23)
    round_trip(model, torch.bfloat16)
    folder = os.path.join(OUT, "bert")
    os.makedirs(folder, exist_ok=True)
    state = {f"text.{k}": v.to(torch.bfloat16) for k, v in _setup.contiguous_state(model).items()
             if not k.endswith("position_ids") and not k.endswith("token_type_ids")}
    save_file(state, os.path.join(folder, "model.safetensors"),
              metadata={"deer.text": json.dumps({"heads": HEADS})})
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": {"embed_dim": EMBED, "text_cfg": {
            "hf_model_name": "tiny-bert", "hf_tokenizer_name": "tiny-bert", "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": BERT_CONTEXT}}}, f, indent=1)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("".join(t + "\n" for t in BERT_VOCAB))
    g = torch.Generator().manual_seed(4)
    rows = [[2, 5, 6, 7, 8, 9, 10, 11, 3], [2, 12, 14, 3], [2, 3]]
    rows.append([2] + torch.randint(5, len(BERT_VOCAB), (BERT_CONTEXT - 2,), generator=g).tolist()
                + [3])
    ids = torch.tensor([r + [0] * (BERT_CONTEXT - len(r)) for r in rows], dtype=torch.long)
    with torch.no_grad():
        refs["bert_ids"] = ids
        refs["bert_features"] = model.double()(ids)


TEXTS = ["This is an image of polyps", "  IMAGE   of\tPolyps ", "this is", "", "polyps " * 20,
         "polyps " * 12, "thisis an imagepolyps"]
BERT_TEXTS = ["This is an image of macular hole.", "Retinal, retinopathy (DRUSEN)!",
              "Café naïve résumé", "中文 text", "  normal   polyps  ", "this [MASK] is",
              "x" * 101, "aaab-ba's $1/2 <e>", "", "this " * 30]


def tokenize_refs(clip_tok):
    from open_clip.tokenizer import HFTokenizer
    from transformers import BertTokenizer, BertTokenizerLegacy

    out = {"bpe": [], "wordpiece": []}
    for text in TEXTS:
        ids = clip_tok(text, truncation=True, max_length=CLIP_CONTEXT)["input_ids"]
        out["bpe"].append({"text": text, "ids": ids})
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(OUT, "bert", "vocab.txt"), os.path.join(tmp, "vocab.txt"))
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": True}, f)
        fast = BertTokenizer.from_pretrained(tmp)
        slow = BertTokenizerLegacy.from_pretrained(tmp)
        wrapped = HFTokenizer(tmp, context_length=BERT_CONTEXT)  # AutoTokenizer, as open_clip
        for text in BERT_TEXTS:
            open_clip_ids = wrapped([text])[0].tolist()
            kw = dict(truncation=True, max_length=BERT_CONTEXT, padding="max_length")
            out["wordpiece"].append({"text": text, "ids": open_clip_ids,
                                     "transformers": fast(text, **kw)["input_ids"],
                                     "transformers_legacy": slow(text, **kw)["input_ids"]})
    with open(os.path.join(OUT, "tokenize.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False)


def main():
    os.makedirs(OUT, exist_ok=True)
    refs = {}
    openai_case(refs)
    clip_tok = hf_case(refs)
    bert_case(refs)
    tokenize_refs(clip_tok)
    save_file({k: v.float().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in refs.items()}, os.path.join(OUT, "references.safetensors"))
    # The repository's `deno fmt --check` covers JSON files: format the ones written here.
    deno = shutil.which("deno")
    if deno:
        subprocess.run([deno, "fmt", "--quiet", OUT], check=True)
    else:
        print("deno is not on PATH: run `deno fmt tests/fixtures/text_tiny` before committing")
    total = 0
    for root, _, files in os.walk(OUT):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
