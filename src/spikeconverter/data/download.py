"""Download the official CIFAR releases, verifying their checksum before anything reads them."""

from __future__ import annotations

from pathlib import Path

from ..fetch import download, file_digest
from .datasets import DatasetError

OFFICIAL = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def _md5(path: Path) -> str:
    return file_digest(path, "md5")


def download_cifar(name: str, root: Path, url: str | None = None, md5: str | None = None,
                   progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch the release archive for ``name`` into ``root`` (kept as the .tar.gz; the loader reads
    it directly). ``url``/``md5`` override the official source (mirrors, tests)."""
    if name not in OFFICIAL:
        raise DatasetError(f"download is available for {', '.join(OFFICIAL)}, not {name!r}")
    off_url, off_md5 = OFFICIAL[name]
    url, md5 = url or off_url, md5 or off_md5
    dest = Path(root) / url.rsplit("/", 1)[-1]
    if dest.exists() and _md5(dest) == md5:
        return dest

    def check(path: Path) -> str | None:
        got = _md5(path)
        return None if got == md5 else f"has md5 {got}, expected {md5}"

    try:
        return download(url, dest, check, desc=f"download {name}", progress=progress, timeout=timeout)
    except OSError as e:
        raise DatasetError(str(e)) from None
