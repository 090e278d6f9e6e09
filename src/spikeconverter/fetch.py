"""Fetching a file over HTTP(S) into place: a partial file never takes the final name, and the
file is checked (checksum) before anything can read it. Shared by dataset and weights downloads."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, check: Callable[[Path], str | None], desc: str, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest``. ``check(path)`` returns why the fetched file is wrong, or None;
    a wrong file is discarded. Raises OSError with the reason (the URL named)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=desc)
            while chunk := r.read(1 << 20):
                f.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f"download of {url} failed: {e}") from None
    wrong = check(tmp)
    if wrong:
        tmp.unlink(missing_ok=True)
        raise OSError(f"download of {url}: {wrong}; file discarded")
    os.replace(tmp, dest)
    return dest
