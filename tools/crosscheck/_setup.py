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
