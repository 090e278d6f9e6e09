"""Provenance is portable: no absolute path of the machine that made a file appears in what the
project ships or what its tools write."""

import json
import re
from pathlib import Path

import pytest

from spikeconverter.checkpoint import read_metadata
from spikeconverter.cli import main

ROOT = Path(__file__).resolve().parent.parent
# an absolute POSIX path (/x/y) or a Windows drive path inside a string
ABSOLUTE = re.compile(r"""(?:^|["'\s:(=-])(/(?:[A-Za-z0-9_.-]+/)+[A-Za-z0-9_.-]*|[A-Za-z]:\\\\)""")
ALLOWED = ("/usr/share/datasets/", "/path/to/", "/etc/xdg/", "/dev/", "/data/imagenet")


def absolute_paths(text: str) -> list[str]:
    return [m for m in ABSOLUTE.findall(text) if not m.startswith(ALLOWED) and not m.startswith("//")]


def shipped_files():
    for pattern in ("docs/**/*.json", "docs/**/*.md", "src/spikeconverter/checkpoints/*.json", "README.md",
                    "scripts/*.sh"):
        yield from ROOT.glob(pattern)


@pytest.mark.parametrize("path", sorted(shipped_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_absolute_path_in_shipped_text(path):
    assert absolute_paths(path.read_text()) == []


def test_no_absolute_path_in_checkpoint_metadata():
    for ck in (ROOT / "src" / "spikeconverter" / "checkpoints").glob("*.safetensors"):
        assert absolute_paths(json.dumps(read_metadata(ck))) == [], ck.name


def test_evaluate_json_names_files_not_paths(tmp_path):
    out = tmp_path / "e.json"
    assert main(["--threads", "1", "evaluate", "--limit", "20", "--calibration", "16", "--json", str(out),
                 "--quiet", "--no-compile"]) == 0
    text = out.read_text()
    assert absolute_paths(text) == [], absolute_paths(text)
    d = json.loads(text)
    assert d["checkpoint"].startswith("resnet20-cifar10.safetensors (sha256 ")


def test_the_detector_finds_what_it_must():
    assert absolute_paths('"data": "folder-archive:/work/shared/datasets/c.tar.gz"')
    assert absolute_paths('RUNS=${RUNS:-/home/me/runs}')
    assert not absolute_paths('"data": "folder-archive:cifar10-jpeg.tar.gz", "url": "https://example.org/a/b"')
