"""Download the official CIFAR releases, verifying their checksum before anything reads them."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from .datasets import DatasetError

OFFICIAL = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_cifar(name: str, root: Path, url: str | None = None, md5: str | None = None,
                   progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch the release archive for ``name`` into ``root`` (kept as the .tar.gz; the loader reads
    it directly). ``url``/``md5`` override the official source (mirrors, tests)."""
    if name not in OFFICIAL:
        raise DatasetError(f"download is available for {', '.join(OFFICIAL)}, not {name!r}")
    off_url, off_md5 = OFFICIAL[name]
    url, md5 = url or off_url, md5 or off_md5
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / url.rsplit("/", 1)[-1]
    if dest.exists() and _md5(dest) == md5:
        return dest
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=f"download {name}")
            while chunk := r.read(1 << 20):
                f.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"download of {url} failed: {e}") from None
    got = _md5(tmp)
    if got != md5:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"download of {url} has md5 {got}, expected {md5}; file discarded")
    os.replace(tmp, dest)
    return dest
