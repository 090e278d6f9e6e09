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
    return f"{cpu}, {os.cpu_count()} cores{mem}, torch {torch.__version__}, {_threads(torch.get_num_threads())}"


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


def with_section(text: str, name: str, block: str, heading: str | None = None, after: str | None = None) -> str:
    """``text`` with ``block`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` -- the one
    section writer of every generated document (results scripts, the README's headline, the op
    list, the training table). ``heading`` (a "## ..." line) goes before the markers; a new section
    goes after the marker line ``after`` if given and present, else at the end."""
    import re

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = (f"{heading}\n\n" if heading else "") + f"{start}\n{block.strip()}\n{end}"
    if start in text:
        pattern = (r"(## [^\n]*\n\n)?" if heading else "") + re.escape(start) + ".*?" + re.escape(end)
        return re.sub(pattern, lambda m: section, text, count=1, flags=re.S)
    if after and after in text:
        return text.replace(after, after + "\n\n" + section, 1)
    return text.rstrip() + "\n\n" + section + "\n"


def replace_section(path: Path, name: str, block: str, heading: str | None = None,
                    after: str | None = None) -> None:
    """Rewrite ``path`` with the section (``with_section``); a results script owns its section,
    paper_table.py keeps the sections it does not produce."""
    path.write_text(with_section(path.read_text(), name, block, heading, after))


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")
