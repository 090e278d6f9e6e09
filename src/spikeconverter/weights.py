"""The shipped weights (checkpoints and fine-tuned networks): a registry, and where files are found.

The wheel carries only the registry (``weights.json``: file name -> sha256 and size), not the
143 MB of weights. A file is looked for, in order, in

1. ``SPIKECONVERTER_WEIGHTS`` (a folder),
2. the checkout's ``src/spikeconverter/checkpoints`` (a working copy of the repository has them;
   an installed wheel does not -- they stay in the repository where they are versioned),
3. the cache, ``SPIKECONVERTER_CACHE/weights`` (default ``~/.cache/spikeconverter/weights``),
4. and is downloaded into the cache from ``SPIKECONVERTER_WEIGHTS_URL`` (a base URL: the file name
   is appended), when that is set, with a progress bar and checked against the registry's sha256.

A file found anywhere is checked against the registry (size always, sha256 once per process) so
a truncated or altered file is never loaded. A missing file raises ``WeightsNotFound`` saying
every place that was looked in.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from .fetch import download, file_digest

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR / "checkpoints"
REGISTRY_FILE = PACKAGE_DIR / "weights.json"
URL_VARIABLE = "SPIKECONVERTER_WEIGHTS_URL"
FOLDER_VARIABLE = "SPIKECONVERTER_WEIGHTS"


class WeightsNotFound(FileNotFoundError):
    """A registered weights file is in none of the places looked in, and cannot be downloaded."""


@lru_cache(maxsize=1)
def registry() -> dict[str, dict]:
    """file name -> {"sha256": ..., "bytes": ...} of every shipped weights file."""
    return json.loads(REGISTRY_FILE.read_text())["files"]


def cache_dir() -> Path:
    return Path(os.environ.get("SPIKECONVERTER_CACHE", Path.home() / ".cache" / "spikeconverter")) / "weights"


def places() -> list[Path]:
    """The folders looked in, in order."""
    folders = [Path(os.environ[FOLDER_VARIABLE])] if os.environ.get(FOLDER_VARIABLE) else []
    return folders + [CHECKOUT_DIR, cache_dir()]


def _wrong(path: Path, entry: dict) -> str | None:
    """Why ``path`` is not the registered file, or None."""
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"has {size:,} bytes, expected {entry['bytes']:,}"
    got = _sha256(str(path), path.stat().st_mtime_ns, size)
    return None if got == entry["sha256"] else f"has sha256 {got[:16]}..., expected {entry['sha256'][:16]}..."


@lru_cache(maxsize=64)
def _sha256(path: str, mtime_ns: int, size: int) -> str:  # (mtime, size): a changed file is hashed again
    return file_digest(Path(path))


def local(name: str) -> Path | None:
    """The registered file ``name`` where it is on this machine (checked), or None."""
    entry = registry().get(name)
    if entry is None:
        return None
    for folder in places():
        path = folder / name
        if path.is_file():
            wrong = _wrong(path, entry)
            if wrong:
                raise OSError(f"{path} {wrong}: not the shipped {name} (delete it, or point {FOLDER_VARIABLE} "
                              "elsewhere)")
            return path
    return None


def fetch(name: str, progress: bool = True, base_url: str | None = None) -> Path:
    """The registered file ``name``: found locally, else downloaded into the cache (module doc)."""
    if name not in registry():
        raise WeightsNotFound(f"{name} is not a shipped weights file; shipped: {', '.join(sorted(registry()))}")
    path = local(name)
    if path is not None:
        return path
    base_url = base_url or os.environ.get(URL_VARIABLE)
    looked = ", ".join(str(p) for p in places())
    if not base_url:
        raise WeightsNotFound(f"{name} is not on this machine (looked in {looked}); set {URL_VARIABLE} to a base URL "
                              f"that serves it, or {FOLDER_VARIABLE} to a folder that holds it (the repository's "
                              "src/spikeconverter/checkpoints has every shipped file)")
    entry = registry()[name]
    url = base_url.rstrip("/") + "/" + name
    try:
        return download(url, cache_dir() / name, lambda p: _wrong(p, entry), desc=f"download {name}",
                        progress=progress)
    except OSError as e:
        raise WeightsNotFound(f"{name} is not on this machine (looked in {looked}) and {e}") from None


def write_registry(folder: Path = CHECKOUT_DIR, path: Path = REGISTRY_FILE) -> dict:
    """Hash every weights file in ``folder`` into the registry (scripts/weights_registry.py)."""
    files = {p.name: {"sha256": file_digest(p), "bytes": p.stat().st_size}
             for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".snn")}
    path.write_text(json.dumps({"files": files}, indent=1) + "\n")
    registry.cache_clear()
    return files
