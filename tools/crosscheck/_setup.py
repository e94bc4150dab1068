"""Shared set-up for the cross-check scripts: one CPU thread, and the torchvision stand-in.

Import this module before torch-dependent packages:

    import _setup  # noqa: F401  (side effects: sys.path, torch threads)
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# open_clip and timm import torchvision at load; the venv's torchvision does not match its torch.
sys.path.insert(0, os.path.join(HERE, "torchvision_stub"))

import torch  # noqa: E402

torch.set_num_threads(1)


def perturb_vectors(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Adds noise to every 1-D parameter (norm weights, biases, class embedding).

    Random initialisation leaves LayerNorms at (1, 0) and most biases at 0; a loader that
    swapped or dropped them would still match. Perturbed, every tensor counts.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def contiguous_state(model: torch.nn.Module) -> dict:
    """state_dict() as contiguous float tensors, ready for safetensors.torch.save_file."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] → [N, H, W, C] (the TypeScript encoder's input layout)."""
    return x.permute(0, 2, 3, 1).contiguous()


def openai_b16_references(out_dir: str, encode: str, inputs: torch.Tensor) -> dict:
    """open_clip ViT-B-16 (OpenAI layout) with perturbed vectors, saved to
    out_dir/openai_b16.safetensors; returns `model.<encode>(inputs)` with exact GELU
    ("openai_gelu") and, from the same weights, QuickGELU ("openai_quick_gelu")."""
    import gc

    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(6)
    model = open_clip.create_model("ViT-B-16").eval()
    perturb_vectors(model, seed=16, scale=0.05)
    state = contiguous_state(model)
    save_file(state, os.path.join(out_dir, "openai_b16.safetensors"))
    refs = {}
    with torch.no_grad():
        refs["openai_gelu"] = getattr(model, encode)(inputs)
    del model
    quick = open_clip.create_model("ViT-B-16-quickgelu").eval()
    quick.load_state_dict(state)
    with torch.no_grad():
        refs["openai_quick_gelu"] = getattr(quick, encode)(inputs)
    del quick, state
    gc.collect()
    return refs
