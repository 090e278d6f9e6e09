"""Every shipped checkpoint: loads through the public API, its metadata is consistent, and the test
accuracy it claims is what the project's evaluate path measures (full test set: slow)."""

import json
from pathlib import Path

import pytest

import spikeconverter as sc
from spikeconverter.models import shipped_checkpoint

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
MODELS = ["resnet20", "vgg16", "mobilenet_v2"]


def shipped(name):
    p = shipped_checkpoint(name, "cifar10")
    if p is None:
        pytest.skip(f"no shipped {name} checkpoint yet")
    return p, json.loads(p.with_suffix(".json").read_text())


def test_at_least_resnet20_is_shipped():
    assert shipped_checkpoint("resnet20", "cifar10") is not None
    assert "cifar10" in sc.models.available()["resnet20"]


@pytest.mark.parametrize("name", MODELS)
def test_loads_with_consistent_metadata(name):
    path, meta = shipped(name)
    m = sc.models.create(name, pretrained=True)
    assert not m.training
    assert meta["arch"] == name and meta["dataset"] == "cifar10" and meta["epochs"] == meta["config"]["epochs"]
    assert meta["storage"] in ("float16", "float32") and 10.0 < meta["test_acc"] <= 100.0
    assert "cifar10-jpeg" in meta["data"]  # trained and measured on the JPEG copy


def _test_set():
    if not SHARED.exists():
        pytest.skip("shared datasets not beside this checkout")
    from spikeconverter.data import load_dataset

    return load_dataset("cifar10", "test", str(SHARED))


@pytest.mark.parametrize("name", MODELS)
def test_sane_on_500_test_images(name):
    """Cheap guard against a broken export (wrong keys, bad fp16 cast): accuracy on 500 random test
    images is within 5 pp of the full-set figure the metadata claims."""
    _, meta = shipped(name)
    from spikeconverter.evaluate import _subset
    from spikeconverter.train import evaluate_accuracy

    acc = evaluate_accuracy(sc.models.create(name, pretrained=True), _subset(_test_set(), 500, 0))
    assert abs(acc - meta["test_acc"]) < 5.0, (acc, meta["test_acc"])


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_claimed_accuracy_reproduces_exactly(name):
    _, meta = shipped(name)
    from spikeconverter.train import evaluate_accuracy

    assert evaluate_accuracy(sc.models.create(name, pretrained=True), _test_set()) == meta["test_acc"]


FINETUNED = [("resnet20", 2), pytest.param("resnet20", 3, marks=pytest.mark.slow)]


def _finetuned(name, T):
    from spikeconverter.models import shipped_network

    path = shipped_network(name, "cifar10", T)
    if path is None:
        pytest.skip(f"no fine-tuned {name} T={T} network shipped yet")
    _test_set()
    return sc.load(path)


def _images(n):
    from spikeconverter.evaluate import _batches, _subset, load_dataset

    return next(_batches(_subset(load_dataset("cifar10", "test"), n, 0), n))


@pytest.mark.parametrize("name,T", FINETUNED)
def test_shipped_finetuned_network_loads_and_is_exact(name, T):
    """The shipped fine-tuned file loads, its simulator equals its fast path (float64, every
    layer's train), and it classifies 500 fixed test images far above chance."""
    import copy

    from test_equivalence import check_identical

    ft = _finetuned(name, T)
    assert ft.timesteps == T and ft.source["model"] == name and ft.source["finetune"]["epoch"] >= 1
    x, y = _images(500)
    check_identical(copy.deepcopy(ft).double(), x[:1].double())
    assert float((ft(x).argmax(1) == y).float().mean()) > 0.7


@pytest.mark.slow
@pytest.mark.parametrize("name,T", [("resnet20", 2), ("resnet20", 3)])
def test_shipped_finetuned_network_beats_post_training(name, T):
    """On 2,000 fixed test images, more accurate than post-training conversion (default calibration)
    of the same ANN at the same T."""
    from spikeconverter.evaluate import calibration_data

    ft = _finetuned(name, T)
    x, y = _images(2000)
    post = sc.convert(sc.models.create(name, pretrained=True), calibration_data("cifar10", 512), timesteps=T)
    acc_ft = float((ft(x).argmax(1) == y).float().mean())
    acc_post = float((post(x).argmax(1) == y).float().mean())
    assert acc_ft > acc_post, (acc_ft, acc_post)
