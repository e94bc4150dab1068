"""Writes the tiny model fixtures of tests/model_vit.test.ts (tests/fixtures/model_tiny/).

Three randomly initialised tiny image towers (width 32, 2 blocks, 2 heads, MLP 64, patch 4,
image 16, output 24), one per checkpoint layout, every 1-D parameter perturbed, and the
PyTorch reference outputs on two random normalised images:

* openai.safetensors — open_clip CLIP (OpenAI-style VisionTransformer + a tiny text tower), F32,
  full state_dict; references with QuickGELU and with exact GELU (same weights).
* hf/model.safetensors + hf/config.json — transformers CLIPVisionModelWithProjection,
  save_pretrained in float16 (so the loader's F16 path and config.json reading are exercised).
* timm.safetensors — a timm VisionTransformer trunk + a bias-free projection, keys as in
  open_clip's TimmModel without the "visual." prefix (an image-tower-only file), BF16.
* inputs.safetensors — images [2, 16, 16, 3] (NHWC) and the reference features, plus a bicubic
  resampling check of a [4, 4, 5] grid (PyTorch F.interpolate, align_corners=False).

References are computed in float64 from the weights exactly as stored (rounded to F16/BF16
where stored so). Usage (from the repository root):

    python tools/crosscheck/make_model_fixtures.py [out_dir]
"""
import json
import os
import shutil
import sys
import tempfile

import _setup
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    _setup.HERE, "..", "..", "tests", "fixtures", "model_tiny")
WIDTH, LAYERS, HEADS, MLP, PATCH, IMAGE, EMBED = 32, 2, 2, 64, 4, 16, 24


def openai_models():
    import open_clip

    def build(quick_gelu):
        torch.manual_seed(1)
        return open_clip.CLIP(
            embed_dim=EMBED,
            vision_cfg=dict(image_size=IMAGE, patch_size=PATCH, width=WIDTH, layers=LAYERS,
                            head_width=WIDTH // HEADS, mlp_ratio=MLP / WIDTH),
            text_cfg=dict(context_length=4, vocab_size=16, width=8, heads=1, layers=1),
            quick_gelu=quick_gelu,
        ).eval()

    gelu = build(False)
    _setup.perturb_vectors(gelu, seed=11)
    quick = build(True)
    quick.load_state_dict(gelu.state_dict())
    return gelu, quick


def hf_model():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(2)
    cfg = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, image_size=IMAGE, patch_size=PATCH,
                           projection_dim=EMBED, hidden_act="quick_gelu")
    model = CLIPVisionModelWithProjection(cfg).eval()
    _setup.perturb_vectors(model, seed=12)
    return model


class TimmTower(torch.nn.Module):
    """open_clip's TimmModel for proj="linear", pool="": trunk → class token → head.proj."""

    def __init__(self):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH,
                                       depth=LAYERS, num_heads=HEADS, mlp_ratio=MLP / WIDTH,
                                       num_classes=0, global_pool="token")
        self.head = torch.nn.Sequential()
        self.head.add_module("proj", torch.nn.Linear(WIDTH, EMBED, bias=False))

    def forward(self, x):
        return self.head(self.trunk(x))


def main():
    os.makedirs(os.path.join(OUT, "hf"), exist_ok=True)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, IMAGE, IMAGE, generator=g)
    x64 = images.double()
    refs = {}

    gelu, quick = openai_models()
    save_file(_setup.contiguous_state(gelu), os.path.join(OUT, "openai.safetensors"),
              metadata={"deer.vision": json.dumps({"heads": HEADS})})
    with torch.no_grad():
        refs["openai_gelu"] = gelu.double().encode_image(x64)
        refs["openai_quick_gelu"] = quick.double().encode_image(x64)

    hf = hf_model().half()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        for name in ("model.safetensors", "config.json"):
            shutil.copy(os.path.join(tmp, name), os.path.join(OUT, "hf", name))
    with torch.no_grad():
        refs["hf"] = hf.double()(pixel_values=x64).image_embeds

    torch.manual_seed(4)
    timm_tower = TimmTower().eval()
    _setup.perturb_vectors(timm_tower, seed=13)
    state = {k: v.to(torch.bfloat16) for k, v in _setup.contiguous_state(timm_tower).items()}
    save_file(state, os.path.join(OUT, "timm.safetensors"),
              metadata={"deer.vision": json.dumps({"heads": HEADS})})
    timm_tower.load_state_dict({k: v.float() for k, v in state.items()})
    with torch.no_grad():
        refs["timm"] = timm_tower.double()(x64)

    grid = torch.randn(1, 5, 4, 4, generator=g, dtype=torch.float64)
    up = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    down = F.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=False)
    hwc = lambda t: t[0].permute(1, 2, 0).contiguous().float()  # noqa: E731

    tensors = {"images": _setup.nhwc(images).float(), "grid": hwc(grid), "grid_6x6": hwc(up),
               "grid_3x3": hwc(down)}
    tensors.update({f"ref_{k}": v.float().contiguous() for k, v in refs.items()})
    save_file(tensors, os.path.join(OUT, "inputs.safetensors"),
              metadata={"made_by": "tools/crosscheck/make_model_fixtures.py",
                        "torch": torch.__version__})
    total = 0
    for root, _, files in os.walk(OUT):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    print(f"wrote {OUT}: {total / 1024:.1f} KiB")
    for k, v in refs.items():
        print(f"  {k}: shape {list(v.shape)}, max |ref| {v.abs().max().item():.4f}")


if __name__ == "__main__":
    main()
