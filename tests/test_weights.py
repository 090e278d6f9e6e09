"""The shipped weights: a registry in the wheel, the files found in the documented order, checked
by hash, downloaded from a base URL when missing (tested against a local server)."""

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from spikeconverter import weights
from spikeconverter.models import available, create

ROOT = Path(__file__).resolve().parent.parent


def test_registry_lists_every_file_of_the_checkout_with_its_hash():
    files = sorted(p for p in weights.CHECKOUT_DIR.iterdir() if p.suffix in (".safetensors", ".snn"))
    if not files:
        pytest.skip("no weights in this checkout")
    assert sorted(p.name for p in files) == sorted(weights.registry())
    for p in files:
        entry = weights.registry()[p.name]
        assert p.stat().st_size == entry["bytes"]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == entry["sha256"], p.name
    assert available()["resnet20"] == ["cifar10"]


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """One small registered file, served by nobody yet; the cache in tmp_path."""
    blob = b"spikeconverter weights " * 1000
    entry = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    monkeypatch.setattr(weights, "registry", lambda: {"tiny.safetensors": entry})
    monkeypatch.setenv("SPIKECONVERTER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(weights.URL_VARIABLE, raising=False)
    monkeypatch.delenv(weights.FOLDER_VARIABLE, raising=False)
    weights._sha256.cache_clear()
    return blob


def test_missing_weights_say_where_they_were_looked_for(fake_registry, tmp_path):
    with pytest.raises(weights.WeightsNotFound) as e:
        weights.fetch("tiny.safetensors")
    msg = str(e.value)
    assert str(weights.CHECKOUT_DIR) in msg and str(tmp_path / "cache" / "weights") in msg
    assert weights.URL_VARIABLE in msg and weights.FOLDER_VARIABLE in msg
    with pytest.raises(weights.WeightsNotFound, match="not a shipped weights file"):
        weights.fetch("other.safetensors")


def test_download_checks_the_hash_and_lands_in_the_cache(fake_registry, http_server, monkeypatch, tmp_path):
    served, base = http_server
    (served / "tiny.safetensors").write_bytes(fake_registry)
    monkeypatch.setenv(weights.URL_VARIABLE, base)
    got = weights.fetch("tiny.safetensors", progress=False)
    assert got == tmp_path / "cache" / "weights" / "tiny.safetensors" and got.read_bytes() == fake_registry
    (served / "tiny.safetensors").unlink()  # found in the cache from now on
    assert weights.fetch("tiny.safetensors", progress=False) == got


def test_a_download_with_the_wrong_hash_is_discarded(fake_registry, http_server, monkeypatch, tmp_path):
    served, base = http_server
    (served / "tiny.safetensors").write_bytes(fake_registry[:-1] + b"X")  # same size, other bytes
    monkeypatch.setenv(weights.URL_VARIABLE, base)
    with pytest.raises(weights.WeightsNotFound, match="sha256"):
        weights.fetch("tiny.safetensors", progress=False)
    assert not list((tmp_path / "cache" / "weights").glob("*"))


def test_a_folder_named_by_the_environment_comes_first_and_is_checked(fake_registry, monkeypatch, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "tiny.safetensors").write_bytes(fake_registry)
    monkeypatch.setenv(weights.FOLDER_VARIABLE, str(folder))
    assert weights.fetch("tiny.safetensors") == folder / "tiny.safetensors"
    (folder / "tiny.safetensors").write_bytes(fake_registry[:100])
    with pytest.raises(OSError, match="bytes"):
        weights.fetch("tiny.safetensors")


def test_pretrained_models_load_from_a_download(http_server, monkeypatch, tmp_path):
    # as from a wheel: nothing in the checkout's folder, the file served
    served, base = http_server
    name = "resnet20-cifar10.safetensors"
    if not (weights.CHECKOUT_DIR / name).exists():
        pytest.skip("no ResNet-20 checkpoint in this checkout")
    shutil.copy(weights.CHECKOUT_DIR / name, served / name)
    monkeypatch.setattr(weights, "CHECKOUT_DIR", tmp_path / "no-checkout")
    monkeypatch.setenv("SPIKECONVERTER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(weights.URL_VARIABLE, base)
    model = create("resnet20", pretrained=True)
    assert (tmp_path / "cache" / "weights" / name).exists() and not model.training


def test_the_wheel_carries_the_registry_not_the_weights(tmp_path):
    try:
        import setuptools  # noqa: F401
    except ImportError:
        pytest.skip("setuptools is needed to build the wheel without network")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    untracked = subprocess.run(["git", "ls-files", "-z", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True).stdout
    src = tmp_path / "src"
    for rel in (tracked.stdout + untracked).decode().split("\0"):
        if rel and (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(out.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "spikeconverter/weights.json" in names
    assert not [n for n in names if n.endswith((".safetensors", ".snn"))]
    assert wheel.stat().st_size < 5 * 2**20
