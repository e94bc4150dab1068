"""Reference side of the ViT-B/16 cross-check (run vit_compare.ts afterwards).

Builds randomly initialised ViT-B/16 image towers in the three checkpoint layouts the
TypeScript loader reads, perturbs every 1-D parameter (so norms and biases matter), saves them
as .safetensors with the PyTorch reference features of 4 random normalised 224×224 images:

* openai_b16.safetensors — open_clip.create_model("ViT-B-16") state_dict (image + text tower).
  References: encode_image with nn.GELU (as built) and with QuickGELU ("ViT-B-16-quickgelu"
  loaded with the same state_dict, the OpenAI-pretrained configuration).
* hf_b16/ — transformers CLIPModel(CLIPConfig(ViT-B/16 vision config)) via save_pretrained
  (model.safetensors + config.json). Reference: get_image_features(...).pooler_output.
* timm_b16.safetensors — open_clip.CLIP with BiomedCLIP's vision config (timm
  vit_base_patch16_224 trunk, timm_pool="", timm_proj="linear", 512-d). BiomedCLIP's text tower
  is a Hugging Face PubMedBERT that needs a download, so a small open_clip text tower stands in:
  the image tower and its keys (visual.trunk.*, visual.head.proj.weight) are BiomedCLIP's.
* inputs.safetensors — images [4, 224, 224, 3] (NHWC) and ref_* features [4, 512].

The checkpoints are ~0.3–0.6 GB each: keep them out of the repository. Usage:

    python tools/crosscheck/vit_compare.py [/tmp/deer_crosscheck]
    deno run -A tools/crosscheck/vit_compare.ts [/tmp/deer_crosscheck]
"""
import gc
import os
import sys
import time

import _setup
import torch
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "/tmp/deer_crosscheck"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main():
    import open_clip
    from transformers import CLIPConfig, CLIPModel

    os.makedirs(OUT, exist_ok=True)
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    refs = {}

    log("open_clip ViT-B-16 (OpenAI layout)")
    refs.update(_setup.openai_b16_references(OUT, "encode_image", images))

    log("Hugging Face CLIPModel ViT-B/16")
    torch.manual_seed(7)
    cfg = CLIPConfig(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=16,
                           hidden_act="quick_gelu"),
        projection_dim=512,
    )
    hf = CLIPModel(cfg).eval()
    _setup.perturb_vectors(hf, seed=17, scale=0.05)
    hf.save_pretrained(os.path.join(OUT, "hf_b16"), safe_serialization=True)
    with torch.no_grad():
        refs["hf"] = hf.get_image_features(pixel_values=images).pooler_output
    del hf
    gc.collect()

    log("open_clip CLIP with BiomedCLIP's timm image tower")
    torch.manual_seed(8)
    timm_clip = open_clip.CLIP(
        embed_dim=512,
        vision_cfg=dict(timm_model_name="vit_base_patch16_224", timm_model_pretrained=False,
                        timm_pool="", timm_proj="linear", image_size=224),
        text_cfg=dict(context_length=16, vocab_size=1000, width=64, heads=1, layers=1),
    ).eval()
    _setup.perturb_vectors(timm_clip, seed=18, scale=0.05)
    save_file(_setup.contiguous_state(timm_clip), os.path.join(OUT, "timm_b16.safetensors"))
    with torch.no_grad():
        refs["timm"] = timm_clip.encode_image(images)
    del timm_clip
    gc.collect()

    tensors = {"images": _setup.nhwc(images)}
    tensors.update({f"ref_{k}": v.contiguous() for k, v in refs.items()})
    save_file(tensors, os.path.join(OUT, "inputs.safetensors"),
              metadata={"torch": torch.__version__})
    for k, v in refs.items():
        log(f"ref_{k}: shape {list(v.shape)}, max |ref| {v.abs().max().item():.4f}")


if __name__ == "__main__":
    main()
