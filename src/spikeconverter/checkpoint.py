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
    if _is_torch_pickle(path):
        raise ValueError(
            f"{path} is a torch.save (pickle) file; only safetensors checkpoints are read, because unpickling can run "
            f"code. Convert it once: spikeconverter import-checkpoint {path} --out {path.with_suffix('.safetensors')}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a readable safetensors checkpoint: {e}") from None
    return tensors, meta


def _is_torch_pickle(path: Path) -> bool:
    """torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (0x80, then the
    protocol number). A safetensors file starts with its header's length (8 bytes, little-endian),
    whose first byte can be anything -- 0x80 or "PK" included -- so that layout is ruled out first:
    the length fits in the file and the header opens with "{"."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return False
    return head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def import_checkpoint(src: Path, out: Path) -> int:
    """A ``torch.save`` state dict (or {"state_dict": ...} / {"model": ...}) -> a safetensors file,
    read with ``weights_only=True`` (no code runs). Returns the number of tensors written."""
    import pickle

    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch.save(model) pickles the class itself; only a state dict loads without running code
        raise ValueError(
            f"{Path(src).name} holds a pickled Python object (a whole model?), not a state dict of tensors; reading "
            "it would run code. Where the model's class is defined, save its weights with "
            "torch.save(model.state_dict(), 'weights.pt') and import that file") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{src} does not hold a state dict of tensors")
    state = {(k[7:] if k.startswith("module.") else k): v.contiguous() for k, v in obj.items()}
    save_tensors(Path(out), state, {"imported_from": Path(src).name})
    return len(state)


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
