"""``--device auto|cpu|cuda|cuda:N|mps``: where a command computes."""

from __future__ import annotations

import torch

CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve(name: str | None) -> torch.device:
    """The torch device for a ``--device`` value; one-line ValueError when it is not available here.
    ``auto``: the first CUDA card, else Apple's MPS, else the CPU."""
    name = (name or "auto").strip().lower()
    if name in ("auto", "cuda") and torch.cuda.is_available():
        from .distributed import local_rank  # torchrun: one card per process on a node

        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    if name == "auto":
        if _mps():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be {CHOICES}, got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device here (this torch is {torch.__version__}; "
                             "a CPU-only build has none)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not _mps():
        raise ValueError(f"--device {name}: MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device must be {CHOICES}, got {name!r}")
    return dev


def device_of(module) -> torch.device:
    """Where a module computes: its parameters' device (the CPU when it has none)."""
    param = next(iter(module.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def dtype_of(module) -> torch.dtype:
    """A module's precision: its parameters' dtype (float32 when it has none)."""
    param = next(iter(module.parameters()), None)
    return param.dtype if param is not None else torch.float32


def _mps() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
