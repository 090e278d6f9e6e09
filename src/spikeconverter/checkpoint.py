"""Checkpoints as safetensors files: tensors plus JSON metadata in the header, one file, written
atomically (temp file + rename) so a kill never leaves a half-written checkpoint. Loading never
unpickles code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

META_KEY = "spikeconverter"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    os.replace(tmp, path)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a readable safetensors checkpoint: {e}") from None
    return tensors, meta


def read_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get(META_KEY, "{}"))


def export_weights(model: nn.Module, path: Path, meta: dict, half: bool = False) -> None:
    """The shipped form: the model's state dict (optionally fp16) plus a readable .json beside it."""
    sd = {k: v for k, v in model.state_dict().items()}
    if half:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    meta = dict(meta, storage="float16" if half else "float32")
    save_tensors(path, sd, meta)
    Path(path).with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def load_weights(model: nn.Module, path: Path) -> dict:
    """Load weights (cast to the model's dtypes) and return the metadata."""
    tensors, meta = load_tensors(path)
    weights = {k[len("model."):] if k.startswith("model.") else k: v for k, v in tensors.items()
               if not k.startswith(("optim.", "rng."))}
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit this model (arch {meta.get('arch', '?')}): "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})
    return meta
