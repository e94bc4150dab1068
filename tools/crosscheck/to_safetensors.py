"""Converts a PyTorch checkpoint (pickle: .bin / .pt / .pth) to .safetensors, offline.

The toolkit reads weights only from .safetensors (no pickle, docs/data.md#model-weights). Some checkpoints ship
only as pickles — BiomedCLIP's `open_clip_pytorch_model.bin`, for one. Convert them once, in
Python, with `weights_only=True` (no arbitrary code runs while loading):

    python tools/crosscheck/to_safetensors.py open_clip_pytorch_model.bin \
        biomedclip.safetensors

A `state_dict` wrapper and a DataParallel `module.` prefix are removed; non-tensor entries are
dropped (and listed).
"""
import sys

import _setup  # noqa: F401
import torch
from safetensors.torch import save_file


def main(src: str, dst: str) -> None:
    state = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors, dropped = {}, []
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            dropped.append(name)
            continue
        key = name[len("module."):] if name.startswith("module.") else name
        tensors[key] = value.detach().contiguous().clone()
    save_file(tensors, dst, metadata={"converted_from": src.rsplit("/", 1)[-1]})
    print(f"{dst}: {len(tensors)} tensors" + (f"; dropped non-tensors {dropped}" if dropped else ""))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: to_safetensors.py <checkpoint.bin|.pt> <out.safetensors>")
    main(sys.argv[1], sys.argv[2])
