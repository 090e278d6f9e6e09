"""Shared helpers of the benchmark scripts (machine description, model loading)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def checkpoint_for(model: str, dataset: str = "cifar10", override: str | None = None):
    from spikeconverter.models import shipped_checkpoint

    if override:
        return override
    p = shipped_checkpoint(model, dataset)
    return str(p) if p else None


def best_time(fn, reps: int = 5) -> float:
    """Best wall time of ``reps`` calls after one warm-up call (best-of: the least disturbed run)."""
    import time

    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best
